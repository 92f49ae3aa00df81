//! The test context: a whole control plane (store + service + HTTP server on port 0) and
//! request helpers, so a test reads like a user story.

use std::net::SocketAddr;
use std::path::PathBuf;

use neocloud_service::Service;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs a test body on SQLite and on PostgreSQL: `both_backends!(name, |ctx| async move {…})`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let ctx = $crate::ctx::TestContext::start($crate::ctx::Db::Sqlite).await;
                ($body)(ctx).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(ctx) = $crate::ctx::TestContext::start_postgres().await else {
                    return;
                };
                ($body)(ctx).await;
            }
        }
    };
}

/// Runs tests written as `async fn name(db: Db)` (which start their own context) on SQLite
/// and on PostgreSQL: `on_both!(name_a, name_b)` makes `name_a::sqlite`, `name_a::postgres`, …
#[macro_export]
macro_rules! on_both {
    ($($name:ident),+ $(,)?) => {
        $(mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::ctx::Db::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::ctx::Db::Postgres).await;
            }
        })+
    };
}

/// A unique, lowercase suffix for names of temporary things.
pub fn unique() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh temporary directory (left behind for inspection on failure; under the OS temp dir).
pub fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("neocloud-test-{}", unique()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh database URL for `db`.
pub async fn fresh_database_url(db: Db) -> Option<String> {
    match db {
        Db::Sqlite => Some(format!(
            "sqlite://{}?mode=rwc",
            temp_dir().join("neocloud.db").display()
        )),
        Db::Postgres => {
            let admin = match std::env::var("NEOCLOUD_TEST_POSTGRES_URL") {
                Ok(u) => u,
                Err(_) if std::env::var("NEOCLOUD_TEST_SKIP_POSTGRES").as_deref() == Ok("1") => {
                    eprintln!("skipping the PostgreSQL variant (NEOCLOUD_TEST_SKIP_POSTGRES=1)");
                    return None;
                }
                Err(_) => panic!(
                    "NEOCLOUD_TEST_POSTGRES_URL is not set: run scripts/test.sh, which starts \
                     PostgreSQL, or set NEOCLOUD_TEST_SKIP_POSTGRES=1 to skip these variants"
                ),
            };
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to the test PostgreSQL");
            let name = format!("nc_test_{}", unique());
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                .await
                .unwrap();
            let (base, _) = admin.rsplit_once('/').unwrap();
            Some(format!("{base}/{name}"))
        }
    }
}

/// A running control plane and an HTTP client for it.
pub struct TestContext {
    pub addr: SocketAddr,
    pub svc: Service,
    database_url: String,
    /// The operator-admin key created on first start.
    pub operator_key: String,
    http: reqwest::Client,
}

/// A response: status, headers and the body as JSON (or a JSON string for text bodies).
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            serde_json::to_string_pretty(&self.body).unwrap()
        );
        self.body
    }

    /// Asserts a problem+json error with this status and code; returns the body.
    #[track_caller]
    pub fn problem(self, status: u16, code: &str) -> Value {
        let ct = self
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = self.expect(status);
        assert_eq!(ct, "application/problem+json", "body: {body}");
        assert_eq!(body["code"], code, "body: {body}");
        assert_eq!(body["status"], status, "body: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "body: {body}"
        );
        body
    }
}

impl TestContext {
    pub async fn start(db: Db) -> TestContext {
        Self::start_with(db).await.expect("backend available")
    }

    pub async fn start_postgres() -> Option<TestContext> {
        Self::start_with(Db::Postgres).await
    }

    async fn start_with(db: Db) -> Option<TestContext> {
        Self::start_configured(db, neocloud_service::SchedulerConfig::default()).await
    }

    /// A control plane with these scheduling settings (`None`: PostgreSQL is skipped).
    pub async fn start_configured(
        db: Db,
        config: neocloud_service::SchedulerConfig,
    ) -> Option<TestContext> {
        Self::start_clocked(db, config, neocloud_service::Clock::system()).await
    }

    /// A control plane with these scheduling settings that reads the time from `clock`
    /// (`None`: PostgreSQL is skipped).
    pub async fn start_clocked(
        db: Db,
        config: neocloud_service::SchedulerConfig,
        clock: neocloud_service::Clock,
    ) -> Option<TestContext> {
        let url = fresh_database_url(db).await?;
        let svc = Service::open_with_clock(&url, config, clock).await.unwrap();
        let operator_key = svc.bootstrap_operator_key().await.unwrap().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_svc = svc.clone();
        tokio::spawn(async move {
            neocloud_api::serve(listener, server_svc, std::future::pending())
                .await
                .unwrap();
        });
        Some(TestContext {
            addr,
            svc,
            database_url: url,
            operator_key,
            http: reqwest::Client::new(),
        })
    }

    /// Starts the webhook dispatcher, as `serve` does, sending with this per-request
    /// timeout; webhooks may point at loopback addresses (the tests' receivers).
    pub fn start_webhooks(&self, timeout: std::time::Duration) -> tokio::task::JoinHandle<()> {
        self.svc.set_webhook_allow_private(true);
        neocloud_api::webhooks::spawn(
            self.svc.clone(),
            neocloud_api::DispatcherConfig {
                timeout,
                poll: std::time::Duration::from_millis(100),
                ..Default::default()
            },
        )
    }

    /// The database this control plane runs on.
    pub fn database_url(&self) -> String {
        self.database_url.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a request with an optional key, body and extra headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.request(method, self.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some((ct, bytes)) = body {
            req = req.header("content-type", ct).body(bytes);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, key: &str) -> Resp {
        self.send(Method::GET, path, Some(key), None, &[]).await
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Resp {
        self.send(
            Method::POST,
            path,
            Some(key),
            Some(("application/json", serde_json::to_vec(body).unwrap())),
            &[],
        )
        .await
    }

    pub async fn patch(&self, path: &str, key: &str, body: &Value) -> Resp {
        self.send(
            Method::PATCH,
            path,
            Some(key),
            Some(("application/json", serde_json::to_vec(body).unwrap())),
            &[],
        )
        .await
    }

    pub async fn delete(&self, path: &str, key: &str) -> Resp {
        self.send(Method::DELETE, path, Some(key), None, &[]).await
    }

    /// Imports a fleet file as the operator.
    pub async fn import(&self, toml: &str) -> Resp {
        self.send(
            Method::POST,
            "/v1/fleet/import",
            Some(&self.operator_key),
            Some(("application/toml", toml.as_bytes().to_vec())),
            &[],
        )
        .await
    }

    /// Creates a tenant as the operator and returns it.
    pub async fn tenant(&self, name: &str) -> Value {
        self.post(
            "/v1/tenants",
            &self.operator_key,
            &serde_json::json!({"name": name}),
        )
        .await
        .expect(201)
    }

    /// Creates a key with `role` (for `tenant`, if given) as the operator; returns the secret
    /// and the key's id.
    pub async fn key(&self, role: &str, tenant: Option<&str>) -> (String, String) {
        let v = self
            .post(
                "/v1/api-keys",
                &self.operator_key,
                &serde_json::json!({"name": format!("{role} key"), "role": role, "tenant_id": tenant}),
            )
            .await
            .expect(201);
        (
            v["secret"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        )
    }
}

/// Runs `promtool` with `args`, `stdin` on its input, if it is installed (scripts/test.sh
/// installs it and requires it: `NEOCLOUD_TEST_REQUIRE_PROMTOOL`); fails the test on a
/// non-zero exit. Returns what it printed, or None without promtool.
pub fn promtool(args: &[&str], stdin: &str) -> Option<String> {
    use std::io::Write;
    let have = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        have || std::env::var("NEOCLOUD_TEST_REQUIRE_PROMTOOL").is_err(),
        "promtool is required but not installed"
    );
    if !have {
        return None;
    }
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "promtool {args:?}: {out}");
    Some(out)
}
