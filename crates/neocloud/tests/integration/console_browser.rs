//! The console in a real browser: headless Chromium (Debian's package) driven through
//! chromedriver by our WebDriver client, against the real `neocloud serve --demo` binary.
//!
//! A tenant signs in, launches an instance from the form, sees it running, terminates it
//! and sees its usage; an operator signs in, reads the fleet overview, opens the memphis-1
//! topology map and clicks a node on it. Screenshots of each step are saved under
//! `target/test-artifacts/console/` (or `$NEOCLOUD_TEST_ARTIFACTS`).
//!
//! Without Chromium the test says so and passes, unless `NEOCLOUD_TEST_REQUIRE_BROWSER=1`
//! (set by `scripts/test.sh`, which installs it) makes that a failure.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::ctx::temp_dir;
use crate::webdriver::{Driver, find_browser};

const BIN: &str = env!("CARGO_BIN_EXE_neocloud");

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// axe-core's `axe.min.js`: `NEOCLOUD_TEST_AXE_JS`, or where scripts/test.sh installs it
/// (target/npmtools). Without it the checks are skipped, unless the browser test is
/// required (scripts/test.sh), where that is a failure.
fn axe_source() -> Option<String> {
    let path = std::env::var("NEOCLOUD_TEST_AXE_JS").map_or_else(
        |_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/npmtools/node_modules/axe-core/axe.min.js")
        },
        PathBuf::from,
    );
    match std::fs::read_to_string(&path) {
        Ok(s) => Some(s),
        Err(e) => {
            assert!(
                std::env::var("NEOCLOUD_TEST_REQUIRE_BROWSER").is_err(),
                "axe-core must be installed for the browser test ({}: {e})",
                path.display()
            );
            eprintln!("skipping the accessibility checks: {}: {e}", path.display());
            None
        }
    }
}

/// Adds axe-core's serious and critical violations on the page now open to `found`.
async fn audit(d: &Driver, axe: Option<&str>, page: &str, found: &mut Vec<String>) {
    if let Some(src) = axe {
        for v in d.axe(src).await {
            found.push(format!("{page}: {v}"));
        }
    }
}

fn artifacts() -> PathBuf {
    let dir = std::env::var("NEOCLOUD_TEST_ARTIFACTS").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts/console"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn api(http: &reqwest::Client, base: &str, key: &str, path: &str, body: Value) -> Value {
    let r = http
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "POST {path}: {status} {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_and_an_operator_in_a_real_browser() {
    let (chromium, driver) = match find_browser() {
        Ok(b) => b,
        Err(why) => {
            assert!(
                std::env::var("NEOCLOUD_TEST_REQUIRE_BROWSER").is_err(),
                "the browser test must run here: {why}"
            );
            eprintln!("skipping the browser test: {why}");
            return;
        }
    };
    let scale = std::env::var("NEOCLOUD_TEST_CONSOLE_SCALE").unwrap_or_else(|_| "0.02".into());
    let dir = temp_dir();
    // NEOCLOUD_TEST_SERVE_BIN runs another build (e.g. release, for the docs' full-size
    // screenshots); the test's own binary by default.
    let bin = std::env::var("NEOCLOUD_TEST_SERVE_BIN").unwrap_or_else(|_| BIN.to_string());
    let mut child = Command::new(bin)
        .args(["serve", "--demo", "--demo-scale", &scale])
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _serve = Serve(child);
    let addr = loop {
        let line = lines.next().expect("serve exited early").unwrap();
        if let Some(rest) = line.strip_prefix("neocloud is serving on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let base = format!("http://{addr}");
    let operator = std::fs::read_to_string(dir.join("data/operator.key"))
        .unwrap()
        .trim()
        .to_string();

    // Some business on the demo fleet: a lease of part of memphis-1 and the lab's gang on
    // memphis-2, so the map has tenants and the calendar has a contract.
    let http = reqwest::Client::new();
    let now = neocloud_types::Timestamp::now();
    let m1: Value = http
        .get(format!("{base}/v1/sites/memphis-1"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Lease 45% of memphis-1 in whole nodes, and run a gang on half of the lease.
    let lease = m1["gpu_count"].as_u64().unwrap() * 45 / 100 / 8 * 8;
    let c = api(
        &http,
        &base,
        &operator,
        "/v1/contracts",
        json!({
        "tenant_id": "frontier-lab", "gpu_model": "H100-SXM-80GB", "gpu_count": lease,
        "start_at": now.to_string(), "end_at": now.plus_seconds(3 * 365 * 86_400).to_string(),
        "site": "memphis-1", "sla_percent": "99.9"}),
    )
    .await;
    let gang = api(
        &http,
        &base,
        &operator,
        "/v1/instances",
        json!({
        "tenant_id": "frontier-lab", "class": "reserved", "contract_id": c["id"],
        "gpu_model": "H100-SXM-80GB", "nodes": lease / 16, "gang_level": "site"}),
    )
    .await;
    api(
        &http,
        &base,
        &operator,
        "/v1/instances",
        json!({
        "tenant_id": "home-lab", "class": "internal", "gpu_model": "GB200",
        "nodes": 18, "gang_level": "nvlink_domain"}),
    )
    .await;
    let tenant = api(
        &http,
        &base,
        &operator,
        "/v1/tenants",
        json!({"name": "acme-ai", "display_name": "Acme AI"}),
    )
    .await;
    let key = api(
        &http,
        &base,
        &operator,
        "/v1/api-keys",
        json!({"name": "acme browser", "role": "tenant-admin", "tenant_id": tenant["id"]}),
    )
    .await;
    let tenant_key = key["secret"].as_str().unwrap().to_string();

    let shots = artifacts();
    let d = Driver::start(&chromium, &driver, dir.join("profile")).await;

    // Without a session every page sends the browser to sign-in, and back afterwards.
    d.goto(&format!("{base}/instances")).await;
    d.wait_path("/sign-in").await;
    d.screenshot(&shots.join("01-sign-in.png")).await;
    let axe = axe_source();
    let mut a11y: Vec<String> = Vec::new();
    audit(&d, axe.as_deref(), "/sign-in", &mut a11y).await;
    d.type_into("#key", &tenant_key).await;
    d.click("#sign-in").await;
    d.wait_path("/instances").await;
    assert!(d.text("#who").await.contains("Acme AI"));

    // Launch from the form.
    d.type_into("#f-name", "browser-job").await;
    d.select("#f-model", "H100-SXM-80GB").await;
    d.select("#f-gpus", "8").await;
    d.select("#f-site", "memphis-1").await;
    d.click("#launch-submit").await;
    let path = d.wait_path("/instances/inst_").await;
    let id = path.trim_start_matches("/instances/").to_string();
    assert_eq!(d.text("#instance-state").await, "running");
    d.screenshot(&shots.join("02-instance-running.png")).await;
    audit(&d, axe.as_deref(), "/instances/{id} (tenant)", &mut a11y).await;

    // Let it run for whole seconds, then terminate it through the confirm dialog.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    d.click("#terminate").await;
    d.accept_dialog().await;
    let mut state = String::new();
    for _ in 0..50 {
        state = d.text("#instance-state").await;
        if state == "terminated" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "terminated");

    // Its usage: one record of 8 GPUs for at least two seconds each.
    d.goto(&format!("{base}/usage")).await;
    d.find("#usage").await;
    let row = d
        .script(&format!(
            "const r = [...document.querySelectorAll('#usage tbody tr')].find(tr => tr.textContent.includes('{id}')); \
             return r ? Number(r.querySelector('.gpu-seconds').dataset.gpuSeconds) : -1;"
        ))
        .await;
    let gpu_seconds = row.as_i64().unwrap();
    assert!(
        gpu_seconds >= 16,
        "usage of {id}: {gpu_seconds} GPU-seconds"
    );
    d.screenshot(&shots.join("03-usage.png")).await;
    audit(&d, axe.as_deref(), "/usage (tenant)", &mut a11y).await;
    d.goto(&format!("{base}/instances")).await;
    assert!(d.count(&format!("tr[data-instance='{id}']")).await == 1);
    d.screenshot(&shots.join("04-instances.png")).await;
    audit(&d, axe.as_deref(), "/instances (tenant)", &mut a11y).await;
    d.goto(&format!("{base}/events")).await;
    d.find("#events").await;
    audit(&d, axe.as_deref(), "/events (tenant)", &mut a11y).await;

    // Sign out; the operator signs in and opens the fleet and the memphis-1 map.
    d.click("#sign-out").await;
    d.wait_path("/sign-in").await;
    d.goto(&format!("{base}/instances")).await;
    d.wait_path("/sign-in").await;
    d.type_into("#key", &operator).await;
    d.click("#sign-in").await;
    d.wait_path("/instances").await;
    d.goto(&format!("{base}/")).await;
    d.find("section.card[data-site='memphis-1']").await;
    d.screenshot(&shots.join("05-fleet.png")).await;
    d.goto(&format!("{base}/sites/memphis-1?color=tenant"))
        .await;
    d.find("svg#topology").await;
    assert!(
        d.count("#topology path").await >= 2,
        "tenant colours on the map"
    );
    d.screenshot(&shots.join("06-topology-by-tenant.png")).await;
    d.goto(&format!("{base}/sites/memphis-1")).await;
    d.find("svg#topology").await;
    d.screenshot(&shots.join("07-topology-by-state.png")).await;
    // Zoom in and back: the map grows and shrinks, and a click still finds its node.
    let width = async || {
        d.script("return Number(document.querySelector('#topology').getAttribute('width'));")
            .await
            .as_f64()
            .unwrap()
    };
    let w0 = width().await;
    d.click("#zoom-in").await;
    let w1 = width().await;
    assert!((w1 - w0 * 1.5).abs() <= 1.0, "zoomed {w0} -> {w1}");
    d.click("#zoom-out").await;
    assert!((width().await - w0).abs() <= 1.0);
    // A click on the first square opens that node (the script clicks where it is drawn).
    d.script(
        "const s = document.querySelector('#topology'); \
         const p = new DOMPoint(2, 16).matrixTransform(s.getScreenCTM()); \
         s.dispatchEvent(new MouseEvent('click', {clientX: p.x, clientY: p.y, bubbles: true})); \
         return true;",
    )
    .await;
    d.wait_path("/nodes/").await;
    assert!(d.text("h1").await.starts_with("Node m1-pod01-leaf01-n"));
    d.screenshot(&shots.join("08-node.png")).await;
    d.goto(&format!("{base}/contracts")).await;
    d.find("#contracts").await;
    d.screenshot(&shots.join("09-contracts.png")).await;
    d.goto(&format!("{base}/reports")).await;
    d.find("#backlog-total").await;
    d.screenshot(&shots.join("10-revenue.png")).await;
    d.goto(&format!("{base}/events")).await;
    d.find("#events").await;
    d.screenshot(&shots.join("11-events.png")).await;

    // The operator walks every page: each shows what it is for, by name, and passes
    // axe-core's checks (no serious or critical violation).
    let gang_id = gang["id"].as_str().unwrap().to_string();
    // A gang on more than 128 nodes is answered with a summary: its nodes are paged.
    let gang_nodes: Value = http
        .get(format!("{base}/v1/instances/{gang_id}/nodes?limit=2"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let gang_nodes = gang_nodes["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{gang_nodes}"));
    let worked = gang_nodes[0]["node"].as_str().unwrap().to_string();
    let cordoned = gang_nodes[1]["node"].as_str().unwrap().to_string();
    api(
        &http,
        &base,
        &operator,
        &format!("/v1/nodes/{cordoned}/cordon"),
        json!({"reason": "fan replaced"}),
    )
    .await;
    let cid = c["id"].as_str().unwrap().to_string();
    let pages: Vec<(String, &str, Vec<String>)> = vec![
        (
            "/".into(),
            "section.card[data-site='memphis-1']",
            vec!["sellable".into(), "Sold".into()],
        ),
        (
            "/problems".into(),
            "#problem-nodes",
            vec![cordoned.clone(), "fan replaced".into()],
        ),
        ("/sites/memphis-1".into(), "svg#topology", vec![]),
        (
            format!("/nodes/{worked}"),
            "#work",
            vec![gang_id.clone(), "frontier-lab".into()],
        ),
        (
            format!("/instances/{gang_id}"),
            "#placement-blocks",
            vec!["frontier-lab".into()],
        ),
        (
            "/contracts".into(),
            "#contracts",
            vec!["frontier-lab".into()],
        ),
        (
            format!("/contracts/{cid}"),
            "#contract-calendar",
            vec!["frontier-lab".into(), gang_id.clone()],
        ),
        ("/tenants".into(), "#tenants", vec!["Acme AI".into()]),
        (
            "/tenants/acme-ai".into(),
            "#keys",
            vec!["acme browser".into()],
        ),
        ("/reports".into(), "#backlog-total", vec![]),
        ("/invoices".into(), "main", vec![]),
        ("/usage".into(), "main", vec![]),
        ("/instances".into(), "#instances", vec![gang_id.clone()]),
        ("/events".into(), "#events", vec!["acme browser".into()]),
    ];
    for (page, css, shows) in &pages {
        d.goto(&format!("{base}{page}")).await;
        d.find(css).await;
        let text = d.text("main").await;
        for want in shows {
            assert!(
                text.contains(want.as_str()),
                "{page} does not show '{want}'"
            );
        }
        audit(&d, axe.as_deref(), page, &mut a11y).await;
    }
    d.screenshot(&shots.join("12-problems-walked.png")).await;
    assert!(
        a11y.is_empty(),
        "axe-core finds serious or critical violations:\n{}",
        a11y.join("\n")
    );

    // At phone width (390 CSS pixels) no page is wider than the screen: the navigation
    // wraps below the title, and a wide table scrolls inside itself.
    d.resize(390, 844).await;
    for (page, table) in [
        ("/", None),
        ("/problems", None),
        ("/instances", Some("table.grid")),
        ("/events", Some("table.grid")),
        ("/contracts", Some("table.grid")),
    ] {
        d.goto(&format!("{base}{page}")).await;
        let inner = d.script("return window.innerWidth").await;
        let wide = d
            .script("return document.documentElement.scrollWidth")
            .await;
        let (inner, wide) = (inner.as_f64().unwrap(), wide.as_f64().unwrap());
        assert!(inner <= 400.0, "the window did not shrink: {inner}");
        if wide > inner + 1.0 {
            // Name what sticks out, for the failure message.
            let culprits = d
                .script(
                    "return [...document.querySelectorAll('body *')]
                       .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
                       .slice(0, 8)
                       .map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className)
                       .join(' ')",
                )
                .await;
            panic!("{page} is {wide} px wide on a {inner} px screen: {culprits}");
        }
        // Every link of the navigation is on screen (it wrapped rather than ran off).
        let off = d
            .script(
                "return [...document.querySelectorAll('header.top nav a')]
                   .filter(a => a.getBoundingClientRect().right > window.innerWidth + 1).length",
            )
            .await;
        assert_eq!(off.as_u64(), Some(0), "{page}: navigation links off screen");
        if let Some(css) = table {
            let scrolls = d
                .script(&format!(
                    "const t = document.querySelector('{css}');
                     return t ? getComputedStyle(t).overflowX : 'none'"
                ))
                .await;
            assert_eq!(scrolls, "auto", "{page}: its table does not scroll");
        }
    }
    d.screenshot(&shots.join("13-phone-contracts.png")).await;
    d.quit().await;
}
