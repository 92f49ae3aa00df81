//! The committed OpenAPI document matches the code, and the server serves it.

use crate::ctx::{Db, TestContext};

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
