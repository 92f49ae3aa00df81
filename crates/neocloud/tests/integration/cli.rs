//! The real `neocloud` binary: client subcommands against a live server, and `serve` itself.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use crate::ctx::{Db, TestContext, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_neocloud");

/// Runs the binary with `args` against `ctx` (off the async runtime's threads).
pub(crate) async fn neocloud(ctx: &TestContext, key: &str, args: &[&str]) -> Output {
    let url = ctx.url("");
    let key = key.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env("NEOCLOUD_URL", url)
            .env("NEOCLOUD_API_KEY", key)
            .env("NEOCLOUD_CONFIG", "/nonexistent/neocloud.toml")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_tenants_and_keys_and_reports_errors() {
    let ctx = TestContext::start(Db::Sqlite).await;
    let op = ctx.operator_key.clone();

    let o = neocloud(
        &ctx,
        &op,
        &[
            "tenants",
            "create",
            "acme",
            "--kind",
            "internal",
            "--credit-limit",
            "1000",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("acme"));

    let o = neocloud(&ctx, &op, &["-o", "json", "tenants", "list"]).await;
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["items"][0]["name"], "acme");
    assert_eq!(v["items"][0]["kind"], "internal");

    let o = neocloud(
        &ctx,
        &op,
        &[
            "keys",
            "create",
            "--name",
            "ci",
            "--role",
            "tenant-member",
            "--tenant",
            "acme",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("nck_"), "the secret is printed once");
    assert!(stderr(&o).contains("not shown again"));

    // Errors: one clear line and an exit code by class (docs/cli.md).
    let o = neocloud(&ctx, &op, &["tenants", "show", "nope"]).await;
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        stderr(&o).trim(),
        "error: tenant 'nope' not found (not_found, HTTP 404)"
    );
    let o = neocloud(
        &ctx,
        "nck_000000000000_000000000000000000000000000000000000000000000000",
        &["sites", "list"],
    )
    .await;
    assert_eq!(o.status.code(), Some(5));
    assert!(
        stderr(&o).contains("invalid API key (unauthenticated, HTTP 401)"),
        "{}",
        stderr(&o)
    );
    let o = neocloud(&ctx, &op, &["tenants", "create", "Bad Name"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid_request"));
    // Usage errors come from the argument parser (exit 2).
    let o = neocloud(&ctx, &op, &["tenants", "frobnicate"]).await;
    assert_eq!(o.status.code(), Some(2));
    // An unreachable server.
    let o = tokio::task::spawn_blocking(|| {
        Command::new(BIN)
            .args([
                "--url",
                "http://127.0.0.1:9",
                "--api-key",
                "x",
                "sites",
                "list",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(6));
    assert!(
        stderr(&o).contains("cannot reach neocloud"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_imports_fleet_files_and_lists_nodes() {
    let ctx = TestContext::start(Db::Sqlite).await;
    let op = ctx.operator_key.clone();
    let dir = temp_dir();
    let demo = neocloud(&ctx, &op, &["fleet", "demo", "--scale", "0.002"]).await;
    assert!(demo.status.success());
    let file = dir.join("fleet.toml");
    std::fs::write(&file, &demo.stdout).unwrap();
    let o = neocloud(&ctx, &op, &["fleet", "import", file.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("nodes +91"), "{}", stdout(&o));

    let o = neocloud(&ctx, &op, &["sites", "list"]).await;
    let out = stdout(&o);
    assert!(
        out.contains("memphis-1") && out.contains("440×H100-SXM-80GB"),
        "{out}"
    );

    let o = neocloud(
        &ctx,
        &op,
        &[
            "nodes",
            "list",
            "--site",
            "memphis-2",
            "--all",
            "--limit",
            "10",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).lines().filter(|l| l.contains("GB200")).count(),
        36
    );

    // Reports, as a table and as CSV.
    let month = neocloud_types::Timestamp::now().to_string()[..7].to_string();
    let o = neocloud(
        &ctx,
        &op,
        &["reports", "margin", "--month", &month, "--csv"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.lines().next().unwrap_or("").contains("gross_margin"),
        "{out}"
    );
    assert_eq!(
        out.lines().count(),
        3,
        "a header and one row per site: {out}"
    );
    let o = neocloud(&ctx, &op, &["reports", "power"]).await;
    assert!(stdout(&o).contains("memphis-1"), "{}", stdout(&o));

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[sites]]\nname = \"s\"\nregion = \"r\"\npower_mw = 1\n[[sites.nodes]]\nname = \"n\"\ngpu_model = \"H900\"\ngpus = 8\n").unwrap();
    let o = neocloud(&ctx, &op, &["fleet", "import", bad.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("line 7"), "{}", stderr(&o));
    assert!(stderr(&o).contains("H900"));
}

/// `neocloud serve` as an operator runs it: first start makes and stores the operator key,
/// a restart reuses the database and prints no new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_bootstraps_an_operator_key_and_restarts_cleanly() {
    let dir = temp_dir();
    let start = |dir: std::path::PathBuf| {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--demo",
                "--demo-scale",
                "0.01",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = Vec::new();
        let addr = loop {
            let line = lines.next().expect("serve exited early").unwrap();
            if let Some(rest) = line.strip_prefix("neocloud is serving on http://") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
            printed.push(line);
        };
        (child, addr, printed)
    };
    let (mut child, addr, printed) = {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || start(d)).await.unwrap()
    };
    let key_file = dir.join("operator.key");
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        printed.iter().any(|l| l.contains(&key)),
        "the key is printed once: {printed:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let run = |addr: String, key: String, args: Vec<&'static str>| {
        Command::new(BIN)
            .args(["--url", &format!("http://{addr}"), "--api-key", &key])
            .args(args)
            .output()
            .unwrap()
    };
    let (a, k) = (addr.clone(), key.clone());
    let o = tokio::task::spawn_blocking(move || run(a, k, vec!["sites", "list"]))
        .await
        .unwrap();
    let out = stdout(&o);
    assert!(out.contains("memphis-1") && out.contains("2200"), "{out}");
    let (a, k) = (addr.clone(), key.clone());
    let o = tokio::task::spawn_blocking(move || run(a, k, vec!["tenants", "list"]))
        .await
        .unwrap();
    assert!(stdout(&o).contains("frontier-lab") && stdout(&o).contains("home-lab"));
    // SIGTERM stops it cleanly.
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());

    let (mut child, addr, printed) = {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || start(d)).await.unwrap()
    };
    assert!(
        printed.iter().all(|l| !l.contains("nck_")),
        "no second key: {printed:?}"
    );
    let o = tokio::task::spawn_blocking(move || run(addr, key, vec!["sites", "list"]))
        .await
        .unwrap();
    assert!(o.status.success());
    assert!(stdout(&o).contains("2200"));
    child.kill().unwrap();
    let _ = child.wait();
}

/// The README's placing-and-billing tour through the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_places_sells_and_bills() {
    let ctx = TestContext::start(Db::Sqlite).await;
    let op = ctx.operator_key.clone();
    ctx.import(&neocloud_fleet::demo_fleet_toml(0.002).unwrap())
        .await
        .expect(200);
    let ok = |o: &Output| assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    ok(&neocloud(&ctx, &op, &["tenants", "create", "acme"]).await);
    let o = neocloud(
        &ctx,
        &op,
        &[
            "-o",
            "json",
            "instances",
            "launch",
            "--tenant",
            "acme",
            "--gpu-model",
            "H100-SXM-80GB",
            "--gpus",
            "8",
        ],
    )
    .await;
    ok(&o);
    let inst: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(inst["state"], "running");
    let o = neocloud(&ctx, &op, &["instances", "list", "--tenant", "acme"]).await;
    ok(&o);
    assert!(stdout(&o).contains("running"));
    let o = neocloud(
        &ctx,
        &op,
        &[
            "quotes",
            "create",
            "--gpu-model",
            "GB200",
            "--gpus",
            "4",
            "--years",
            "1",
            "--site",
            "memphis-2",
        ],
    )
    .await;
    ok(&o);
    assert!(
        stdout(&o).contains("fits") && stdout(&o).contains("true"),
        "{}",
        stdout(&o)
    );
    let o = neocloud(
        &ctx,
        &op,
        &[
            "contracts",
            "sign",
            "--tenant",
            "acme",
            "--gpu-model",
            "GB200",
            "--gpus",
            "4",
            "--years",
            "1",
            "--site",
            "memphis-2",
        ],
    )
    .await;
    ok(&o);
    assert!(stdout(&o).contains("active"), "{}", stdout(&o));
    let o = neocloud(&ctx, &op, &["contracts", "list", "--tenant", "acme"]).await;
    assert!(stdout(&o).contains("GB200"));
    let o = neocloud(&ctx, &op, &["capacity", "--site", "memphis-2"]).await;
    ok(&o);
    assert!(stdout(&o).contains("memphis-2"));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    ok(&neocloud(
        &ctx,
        &op,
        &["instances", "terminate", inst["id"].as_str().unwrap()],
    )
    .await);
    let o = neocloud(&ctx, &op, &["usage", "list", "--tenant", "acme"]).await;
    ok(&o);
    assert!(stdout(&o).contains("on-demand"), "{}", stdout(&o));
    let month = neocloud_types::Timestamp::now().to_string()[..7].to_string();
    let o = neocloud(
        &ctx,
        &op,
        &[
            "invoices", "generate", "--tenant", "acme", "--month", &month,
        ],
    )
    .await;
    ok(&o);
    assert!(
        stdout(&o).contains("draft") && stdout(&o).contains("commitment"),
        "{}",
        stdout(&o)
    );
    let o = neocloud(&ctx, &op, &["reports", "backlog"]).await;
    ok(&o);
    assert!(stdout(&o).contains("contracted backlog"));
    // A refusal is one clear line and the usage exit code.
    let o = neocloud(
        &ctx,
        &op,
        &[
            "instances",
            "launch",
            "--tenant",
            "acme",
            "--gpu-model",
            "H100-SXM-80GB",
            "--gpus",
            "3",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("gpus must be 1, 2, 4 or 8"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_launches_and_shows_shares_and_mig_instances() {
    let ctx = TestContext::start(Db::Sqlite).await;
    let op = ctx.operator_key.clone();
    ctx.import(
        r#"
[[sites]]
name = "east"
region = "us-east"
power_mw = 1
[[sites.nodes]]
name = "e1"
gpu_model = "H100-SXM-80GB"
gpus = 8
"#,
    )
    .await
    .expect(200);
    ctx.tenant("acme").await;
    let base = [
        "instances",
        "launch",
        "--gpu-model",
        "H100-SXM-80GB",
        "--tenant",
        "acme",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v: Vec<&'static str> = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let o = neocloud(
        &ctx,
        &op,
        &with(&["--share", "250", "--cpu", "2.5", "--memory", "16G"]),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("0.250 GPU"), "{}", stdout(&o));
    let o = neocloud(&ctx, &op, &with(&["--mig", "1g.10gb"])).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("MIG 1g.10gb"), "{}", stdout(&o));
    let o = neocloud(&ctx, &op, &["-o", "json", "instances", "list"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let share = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["shape"]["kind"] == "share")
        .unwrap();
    assert_eq!(share["cpu_milli"], 2500);
    assert_eq!(share["memory_mib"], 16384);
    let mig_id = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["shape"]["kind"] == "mig")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = neocloud(&ctx, &op, &["instances", "list"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("0.250 GPU") && out.contains("MIG 1g.10gb"),
        "{out}"
    );
    let o = neocloud(&ctx, &op, &["instances", "show", &mig_id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("MIG SLOT"), "{}", stdout(&o));
    // Bad input: a clear message, a non-zero exit, nothing created.
    for (args, says) in [
        (with(&["--share", "0"]), "1 to 1000"),
        (with(&["--share", "1001"]), "1 to 1000"),
        (with(&["--mig", "1g.18gb"]), "1g.10gb"),
        (with(&["--cpu-only", "--cpu", "4"]), "CPU-only"),
        (with(&["--cpu-only"]), "--cpu"),
        (with(&["--share", "100", "--cpu", "-1"]), "-1"),
        (
            with(&["--share", "100", "--mig", "1g.10gb"]),
            "cannot be used with",
        ),
        (with(&[]), "--share"),
    ] {
        let o = neocloud(&ctx, &op, &args).await;
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    let o = neocloud(&ctx, &op, &["-o", "json", "instances", "list"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
}

/// Runs the binary with `args`, reads only the first line of its output, then closes the
/// pipe as `| head -1` does; gives its exit status and standard error.
async fn neocloud_head(ctx: &TestContext, key: &str, args: &[&str]) -> (Option<i32>, String) {
    let url = ctx.url("");
    let key = key.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(&args)
            .env("NEOCLOUD_URL", url)
            .env("NEOCLOUD_API_KEY", key)
            .env("NEOCLOUD_CONFIG", "/nonexistent/neocloud.toml")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        // The reader is dropped here: the rest of the output goes to a closed pipe.
        let o = child.wait_with_output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    })
    .await
    .unwrap()
}

/// The CLI's habits for scripts and shells (docs/cli.md): exit codes by class, errors as
/// JSON, a closed pipe, completion, --quiet, names beside ids, money as money.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_habits_for_scripts_and_shells() {
    let ctx = TestContext::start(Db::Sqlite).await;
    let op = ctx.operator_key.clone();
    ctx.import(&neocloud_fleet::demo_fleet_toml(0.002).unwrap())
        .await
        .expect(200);
    let ok = |o: &Output| assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    let o = neocloud(
        &ctx,
        &op,
        &["tenants", "create", "acme", "--credit-limit", "1234567.891"],
    )
    .await;
    ok(&o);

    // Exit codes by class.
    let code = |o: &Output| o.status.code();
    assert_eq!(
        code(&neocloud(&ctx, &op, &["tenants", "show", "nope"]).await),
        Some(3)
    );
    let o = neocloud(&ctx, &op, &["tenants", "create", "acme"]).await;
    assert_eq!(code(&o), Some(4), "a second tenant acme: {}", stderr(&o));
    let o = neocloud(
        &ctx,
        &op,
        &[
            "-q",
            "keys",
            "create",
            "--name",
            "m",
            "--role",
            "tenant-member",
            "--tenant",
            "acme",
        ],
    )
    .await;
    ok(&o);
    let member = stdout(&o).trim().to_string();
    assert!(
        member.starts_with("nck_"),
        "--quiet prints the secret: {member}"
    );
    let o = neocloud(&ctx, &member, &["tenants", "create", "other"]).await;
    assert_eq!(code(&o), Some(5), "forbidden: {}", stderr(&o));
    let o = neocloud(
        &ctx,
        &op,
        &[
            "instances",
            "launch",
            "--gpu-model",
            "H100-SXM-80GB",
            "--gpus",
            "1",
            "--class",
            "bogus",
        ],
    )
    .await;
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--class"), "{}", stderr(&o));
    assert_eq!(code(&neocloud(&ctx, &op, &["tenants"]).await), Some(2));

    // Errors as JSON under -o json, on standard error; nothing on standard output.
    let o = neocloud(&ctx, &op, &["-o", "json", "tenants", "show", "nope"]).await;
    assert_eq!(code(&o), Some(3));
    assert!(stdout(&o).is_empty());
    let e: serde_json::Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(e["error"]["class"], "not_found");
    assert_eq!(e["error"]["exit_code"], 3);
    assert_eq!(e["error"]["problem"]["status"], 404);
    assert_eq!(e["error"]["problem"]["code"], "not_found");
    assert_eq!(
        e["error"]["problem"]["type"],
        "urn:neocloud:problem:not_found"
    );
    let o = neocloud(&ctx, &op, &["-o", "json", "tenants", "frobnicate"]).await;
    assert_eq!(code(&o), Some(2));
    let e: serde_json::Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(e["error"]["class"], "usage");

    // A reader that stops early (`| head -1`): no panic, exit 0.
    for args in [
        &["-o", "json", "nodes", "list", "--all"][..],
        &["blocks", "list"][..],
        &["completion", "bash"][..],
    ] {
        let (status, err) = neocloud_head(&ctx, &op, args).await;
        assert_eq!(status, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }

    // Shell completion.
    for (shell, says) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef neocloud"),
        ("fish", "complete -c neocloud"),
    ] {
        let o = neocloud(&ctx, &op, &["completion", shell]).await;
        ok(&o);
        let out = stdout(&o);
        assert!(
            out.contains(says) && out.contains("instances"),
            "{shell}: {out:.200}"
        );
    }

    // --quiet: ids, one per line.
    let o = neocloud(
        &ctx,
        &op,
        &[
            "-q",
            "instances",
            "launch",
            "--tenant",
            "acme",
            "--gpu-model",
            "H100-SXM-80GB",
            "--gpus",
            "8",
            "--name",
            "trainer",
        ],
    )
    .await;
    ok(&o);
    let inst = stdout(&o).trim().to_string();
    assert!(inst.starts_with("inst_") && !inst.contains(' '), "{inst}");
    let o = neocloud(&ctx, &op, &["-q", "instances", "list"]).await;
    assert_eq!(stdout(&o).trim(), inst);
    let o = neocloud(&ctx, &op, &["-o", "json", "tenants", "list"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ids: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    let o = neocloud(&ctx, &op, &["--quiet", "tenants", "list"]).await;
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), ids);

    // Names beside ids: the instance's name and its tenant's.
    let o = neocloud(&ctx, &op, &["instances", "list"]).await;
    let out = stdout(&o);
    let header = out.lines().next().unwrap();
    assert!(
        header.contains("NAME") && header.contains("TENANT"),
        "{out}"
    );
    let row = out.lines().find(|l| l.contains(&inst)).unwrap();
    assert!(row.contains("trainer") && row.contains("acme"), "{out}");

    // Money: 2 decimals and thousands in tables, exact in JSON.
    let o = neocloud(&ctx, &op, &["tenants", "list"]).await;
    assert!(stdout(&o).contains("1,234,567.89"), "{}", stdout(&o));
    let o = neocloud(&ctx, &op, &["-o", "json", "tenants", "show", "acme"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["credit_limit"], "1234567.891");
    let terms = [
        "--tenant",
        "acme",
        "--gpu-model",
        "GB200",
        "--gpus",
        "4",
        "--years",
        "1",
        "--site",
        "memphis-2",
    ];
    let mut sign = vec!["-o", "json", "contracts", "sign"];
    sign.extend_from_slice(&terms);
    let o = neocloud(&ctx, &op, &sign).await;
    ok(&o);
    let k: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let exact = k["total_value"].as_str().unwrap().to_string();
    let micros: i64 = {
        let (w, f) = exact.split_once('.').unwrap_or((&exact, ""));
        w.parse::<i64>().unwrap() * 1_000_000 + format!("{f:0<6}").parse::<i64>().unwrap()
    };
    let cents = (micros + 5_000) / 10_000;
    let whole = (cents / 100).to_string();
    let mut grouped = String::new();
    for (i, ch) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    let shown = format!("{grouped}.{:02}", cents % 100);
    let o = neocloud(&ctx, &op, &["contracts", "list"]).await;
    let out = stdout(&o);
    assert!(out.contains(&shown), "{shown} in {out}");
    let row = out
        .lines()
        .find(|l| l.contains(k["id"].as_str().unwrap()))
        .unwrap();
    assert!(
        row.contains("acme") && row.contains("memphis-2"),
        "names beside ids: {row}"
    );
    assert!(!row.contains(k["tenant_id"].as_str().unwrap()), "{row}");
    let o = neocloud(&ctx, &op, &["-o", "json", "contracts", "list"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["items"][0]["total_value"], exact.as_str());
}

/// `serve --log-format json` writes one JSON object per line; text logs carry no colour
/// codes when standard error is not a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_json_or_plain_text() {
    for (format, check) in [
        (
            "json",
            (|l: &str| serde_json::from_str::<serde_json::Value>(l).is_ok()) as fn(&str) -> bool,
        ),
        ("text", |l: &str| !l.contains('\u{1b}')),
    ] {
        let dir = temp_dir();
        let o = tokio::task::spawn_blocking(move || {
            // An address in use makes serve log and stop at once.
            let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = taken.local_addr().unwrap().to_string();
            let o = Command::new(BIN)
                .args([
                    "serve",
                    "--log-format",
                    format,
                    "--listen",
                    &addr,
                    "--data-dir",
                ])
                .arg(&dir)
                .env("RUST_LOG", "info")
                .output()
                .unwrap();
            drop(taken);
            o
        })
        .await
        .unwrap();
        let err = stderr(&o);
        let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("error:")).collect();
        assert!(!lines.is_empty(), "{format}: no log lines: {err}");
        assert!(lines.iter().all(|l| check(l)), "{format}: {err}");
    }
}

/// `instances show` of a gang on more than 128 nodes, whose answer counts its nodes by
/// block: the CLI reads every node page by page and lists them with the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_shows_every_node_of_a_large_gang() {
    let ctx = TestContext::start(Db::Sqlite).await;
    let op = ctx.operator_key.clone();
    ctx.import(crate::api_instances::BIG_POD).await.expect(200);
    let a = ctx.tenant("acme").await;
    let g = ctx
        .post(
            "/v1/instances",
            &op,
            &serde_json::json!({"tenant_id": a["id"], "gpu_model": "H100-SXM-80GB",
                                "nodes": 140, "gang_level": "pod"}),
        )
        .await
        .expect(201);
    assert!(g["placement_summary"].is_object(), "{g}");
    let id = g["id"].as_str().unwrap();
    let o = neocloud(&ctx, &op, &["-o", "json", "instances", "show", id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let nodes = v["placement"].as_array().unwrap();
    assert_eq!(nodes.len(), 140, "{v}");
    let mut names: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 140);
    assert_eq!(v["placement_summary"]["nodes"], 140);
    let o = neocloud(&ctx, &op, &["instances", "show", id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("140 nodes, 1120 GPUs"), "{out}");
    for name in names {
        assert!(out.contains(name), "{name} missing: {out}");
    }
}
