//! A small client for the neocloud API, used by the CLI subcommands.

use anyhow::{Result, anyhow};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where the API is and how to authenticate.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, key: Option<String>) -> Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!(
                "--url must start with http:// or https:// (got '{base}')"
            ));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("neocloud-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(300))
            .build()?;
        Ok(Client { http, base, key })
    }

    /// Sends a request and returns the JSON body, or an error line made from the
    /// problem+json body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Body>,
        idempotency_key: Option<&str>,
    ) -> Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).query(query);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        req = match body {
            Some(Body::Json(v)) => req.json(&v),
            Some(Body::Toml(t)) => req.header("Content-Type", "application/toml").body(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach neocloud at {}: is `neocloud serve` running? (set --url or NEOCLOUD_URL)",
                    self.base
                )
            } else {
                anyhow!("request to {url} failed: {e}")
            }
        })?;
        let status = resp.status();
        let text = resp.text().await?;
        if status.is_success() {
            if text.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).or_else(|_| Ok(Value::String(text.clone())));
        }
        Err(problem_error(status, &text))
    }
}

/// A request body.
pub enum Body {
    /// JSON.
    Json(Value),
    /// A TOML document (fleet files).
    Toml(String),
}

fn problem_error(status: StatusCode, text: &str) -> anyhow::Error {
    let Ok(p) = serde_json::from_str::<Value>(text) else {
        return anyhow!("HTTP {status}: {}", text.trim());
    };
    let detail = p
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or("request failed");
    let code = p.get("code").and_then(Value::as_str).unwrap_or("unknown");
    let mut msg = format!("{detail} ({code}, HTTP {})", status.as_u16());
    if let Some(errors) = p.get("errors").and_then(Value::as_array) {
        for e in errors.iter().take(50) {
            let line = e.get("line").and_then(Value::as_u64).unwrap_or(0);
            let col = e.get("column").and_then(Value::as_u64).unwrap_or(0);
            let field = e.get("field").and_then(Value::as_str).unwrap_or("");
            let m = e.get("message").and_then(Value::as_str).unwrap_or("");
            msg.push_str(&format!("\n  line {line}, column {col}: {field}: {m}"));
        }
    }
    anyhow!(msg)
}
