//! The client against a scripted HTTP server: headers it sends, paging, error bodies.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use neocloud_client::model::{CreateTenant, PageRequest};
use neocloud_client::{Client, ClientError, ErrorClass};
use neocloud_types::TenantKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TENANT: &str = r#"{"id":"ten_01890000000070008000000000000001","name":"acme","display_name":"acme","kind":"external","status":"active","credit_limit":null,"created_at":"2030-01-01T00:00:00Z","updated_at":"2030-01-01T00:00:00Z"}"#;

/// Serves each request with `answer(request head) -> (status, body)`; records the heads.
async fn serve(answer: fn(&str) -> (u16, String)) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head = loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if n == 0 || text.contains("\r\n\r\n") {
                    break text;
                }
            };
            log.lock().unwrap().push(head.clone());
            let (status, body) = answer(&head);
            let ctype = if status >= 400 {
                "application/problem+json"
            } else {
                "application/json"
            };
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        }
    });
    (url, seen)
}

#[tokio::test]
async fn creates_send_an_idempotency_key_and_the_bearer_token() {
    let (url, seen) = serve(|_| (201, TENANT.to_string())).await;
    let api = Client::new(&url, Some("nck_secret".into())).unwrap();
    let body = CreateTenant {
        name: "acme".into(),
        display_name: None,
        kind: TenantKind::External,
        credit_limit: None,
    };
    let t = api.create_tenant(&body, Some("mine-1")).await.unwrap();
    assert_eq!(t.name, "acme");
    api.create_tenant(&body, None).await.unwrap();
    api.create_tenant(&body, None).await.unwrap();
    let heads = seen.lock().unwrap().clone();
    let key = |h: &str| {
        h.lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("idempotency-key: ")
                    .map(str::to_string)
            })
            .unwrap()
    };
    assert_eq!(key(&heads[0]), "mine-1");
    assert_eq!(key(&heads[1]).len(), 32);
    assert_ne!(key(&heads[1]), key(&heads[2]), "a fresh key per call");
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("authorization: bearer nck_secret")
    );
}

#[tokio::test]
async fn all_pages_follows_the_cursor() {
    let (url, seen) = serve(|head| {
        let body = if head.contains("cursor=p2") {
            format!(r#"{{"items":[{TENANT}]}}"#)
        } else {
            format!(r#"{{"items":[{TENANT}],"next_cursor":"p2"}}"#)
        };
        (200, body)
    })
    .await;
    let api = Client::new(&url, None).unwrap();
    assert_eq!(api.tenants_all().await.unwrap().len(), 2);
    assert_eq!(seen.lock().unwrap().len(), 2);
    let first = api.tenants(&PageRequest::first(1)).await.unwrap();
    assert_eq!(first.next_cursor.as_deref(), Some("p2"));
    assert!(seen.lock().unwrap()[2].contains("limit=1"));
}

#[tokio::test]
async fn errors_carry_the_problem_and_a_class() {
    let (url, _) = serve(|_| {
        (
            404,
            r#"{"type":"urn:neocloud:problem:not_found","title":"Not found","status":404,"detail":"tenant 'x' not found","code":"not_found"}"#.to_string(),
        )
    })
    .await;
    let api = Client::new(&url, None).unwrap();
    let e = api.tenant("x").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::NotFound);
    assert_eq!(e.problem().unwrap().code, "not_found");
    assert_eq!(e.to_string(), "tenant 'x' not found (not_found, HTTP 404)");

    let api = Client::new("http://127.0.0.1:9", None).unwrap();
    let e = api.sites().await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Network);
}
