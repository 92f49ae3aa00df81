//! The committed OpenAPI document matches the code, and the server serves it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ctx::{Db, TestContext, temp_dir};

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/neocloud.json");

/// Fails when the API changed without regenerating `openapi/neocloud.json`. To regenerate:
/// `NEOCLOUD_UPDATE_OPENAPI=1 cargo test -p neocloud --test integration openapi`.
#[test]
fn committed_openapi_document_matches_the_code() {
    let generated = neocloud_api::openapi_json() + "\n";
    if std::env::var("NEOCLOUD_UPDATE_OPENAPI").as_deref() == Ok("1") {
        std::fs::create_dir_all(std::path::Path::new(COMMITTED).parent().unwrap()).unwrap();
        std::fs::write(COMMITTED, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/neocloud.json is out of date: run \
         NEOCLOUD_UPDATE_OPENAPI=1 cargo test -p neocloud --test integration openapi"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
}

#[tokio::test]
async fn server_serves_the_document() {
    let ctx = TestContext::start(Db::Sqlite).await;
    let served = ctx
        .send(reqwest::Method::GET, "/v1/openapi.json", None, None, &[])
        .await
        .expect(200);
    let generated: serde_json::Value = serde_json::from_str(&neocloud_api::openapi_json()).unwrap();
    assert_eq!(served, generated);
    for path in [
        "/v1/nodes",
        "/v1/tenants/{tenant}",
        "/v1/api-keys",
        "/v1/fleet/import",
        "/v1/events",
    ] {
        assert!(served["paths"].get(path).is_some(), "{path} missing");
    }
}

/// The Python tools that check the document the way tenants' tools read it:
/// `openapi-spec-validator` and `openapi-python-client`, in the virtualenv named by
/// `NEOCLOUD_TEST_PYTOOLS` (by default `target/pytools`, where `scripts/test.sh` installs
/// them). Without them a test says so and passes, unless `NEOCLOUD_TEST_REQUIRE_PYTOOLS=1`
/// (set by `scripts/test.sh`) makes that a failure.
fn pytools() -> Option<PathBuf> {
    let dir = std::env::var_os("NEOCLOUD_TEST_PYTOOLS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pytools"),
        PathBuf::from,
    );
    let missing: Vec<&str> = ["python", "openapi-spec-validator", "openapi-python-client"]
        .into_iter()
        .filter(|tool| !dir.join("bin").join(tool).exists())
        .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let why = format!("{} not installed in {}", missing.join(", "), dir.display());
    assert!(
        std::env::var("NEOCLOUD_TEST_REQUIRE_PYTOOLS").is_err(),
        "the Python tools are required here: {why}"
    );
    eprintln!("skipping: {why} (scripts/test.sh installs them)");
    None
}

/// Runs a command; its output, or the failure with everything it printed.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The document as the server serves it, saved to a file.
async fn served_document(ctx: &TestContext, dir: &Path) -> PathBuf {
    let text = reqwest::get(ctx.url("/v1/openapi.json"))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let file = dir.join("openapi.json");
    std::fs::write(&file, text).unwrap();
    file
}

#[tokio::test]
async fn the_served_document_is_valid_openapi() {
    let Some(tools) = pytools() else { return };
    let ctx = TestContext::start(Db::Sqlite).await;
    let doc = served_document(&ctx, &temp_dir()).await;
    let out = run(Command::new(tools.join("bin/openapi-spec-validator")).arg(&doc));
    assert!(out.contains(": OK"), "{out}");
}

/// The fleet the generated client reads: 4 nodes of 8 H100 in `east` (2 leaf groups), 2 of
/// 4 GB200 in `west` (one NVLink rack).
const FLEET: &str = r#"
[[sites]]
name = "east"
region = "us-east"
power_mw = 1
pue = 1.2
[[sites.node_groups]]
gpu_model = "H100-SXM-80GB"
gpus = 8
peak_watts = 10000
idle_watts = 2000
nodes_per_block = 2
layout = [
  { kind = "pod", count = 1, name = "e-p{n}" },
  { kind = "leaf_group", count = 2, name = "{parent}-l{n}" },
]
name = "{block}-n{n}"

[[sites]]
name = "west"
region = "us-west"
power_mw = 1
pue = 1.1
[[sites.node_groups]]
gpu_model = "GB200"
gpus = 4
peak_watts = 7000
idle_watts = 1800
nodes_per_block = 2
layout = [ { kind = "nvlink_domain", count = 1, name = "w-rack{n}" } ]
name = "{block}-n{n}"
"#;

/// A client generated from the served document by `openapi-python-client` works against the
/// real server: the operator imports the fleet and lists nodes with filters, a tenant reads a
/// site, launches instances with a class and reads them back, and every answer parses into
/// the generated models and matches the document (see `tests/python/generated_client.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_works() {
    let Some(tools) = pytools() else { return };
    let ctx = TestContext::start(Db::Sqlite).await;
    let dir = temp_dir();
    let doc = served_document(&ctx, &dir).await;
    let fleet = dir.join("fleet.toml");
    std::fs::write(&fleet, FLEET).unwrap();
    let bin = tools.join("bin");
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let generated = run(Command::new(bin.join("openapi-python-client"))
        .args(["generate", "--meta", "none", "--overwrite", "--path"])
        .arg(&doc)
        .arg("--output-path")
        .arg(dir.join("neocloud_client"))
        .env("PATH", &path)
        .current_dir(&dir));
    // Every operation and every schema is generated; the one note allowed is that the
    // TOML form of a fleet file is sent as bytes.
    for line in generated.lines() {
        assert!(
            !line.contains("will not be generated")
                && !line.contains("Unable to")
                && !line.contains("Failure to process"),
            "openapi-python-client skipped part of the document:\n{generated}"
        );
    }
    let tenant = ctx.tenant("acme").await;
    let (tenant_key, _) = ctx.key("tenant-admin", tenant["id"].as_str()).await;
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/generated_client.py");
    let (url, operator_key) = (ctx.url(""), ctx.operator_key.clone());
    let out = tokio::task::spawn_blocking(move || {
        run(Command::new(bin.join("python"))
            .arg(driver)
            .env("PYTHONPATH", &dir)
            .env("PATH", &path)
            .env("NEOCLOUD_URL", url)
            .env("NEOCLOUD_OPERATOR_KEY", operator_key)
            .env("NEOCLOUD_TENANT_KEY", &tenant_key)
            .env("NEOCLOUD_DOC", &doc)
            .env("NEOCLOUD_FLEET_FILE", &fleet))
    })
    .await
    .unwrap();
    eprintln!("{out}");
}
