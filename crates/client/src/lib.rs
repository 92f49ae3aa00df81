//! A typed async client of the neocloud API.
//!
//! Every operation is one method that takes and returns the API's own types: the domain
//! entities of `neocloud-types` ([`Tenant`](neocloud_types::Tenant),
//! [`Instance`](neocloud_types::Instance), …) and the request bodies and reports of
//! [`model`]. Errors are a [`ClientError`] that carries the API's problem+json body and an
//! [`ErrorClass`] a program can act on. Creating `POST`s send an `Idempotency-Key`: yours
//! when given, else a fresh random one per call.
//!
//! ```no_run
//! use neocloud_client::{Client, ErrorClass, model::PageRequest};
//!
//! # async fn demo() -> Result<(), neocloud_client::ClientError> {
//! let api = Client::new("http://127.0.0.1:8080", Some("nck_…".to_string()))?;
//! for tenant in api.tenants_all().await? {
//!     println!("{} {}", tenant.id, tenant.name);
//! }
//! let first = api.tenants(&PageRequest::first(10)).await?;
//! println!("more: {}", first.next_cursor.is_some());
//! match api.tenant("nope").await {
//!     Err(e) if e.class() == ErrorClass::NotFound => println!("no such tenant"),
//!     other => println!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```

mod error;
pub mod model;
mod ops;

pub use ops::CsvReport;

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::{ClientError, ErrorClass, FieldError, Problem, Result};

/// A client of one neocloud API server, with one API key.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// A request body.
enum Body<'a> {
    None,
    Json(serde_json::Value),
    Toml(&'a str),
}

/// Whether a call sends an `Idempotency-Key`.
#[derive(Clone, Copy)]
enum Idem<'a> {
    /// No key.
    None,
    /// This key, or a random one when none is given.
    Create(Option<&'a str>),
}

impl Client {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:8080`), sending `key` as a
    /// Bearer token. Calls time out after 300 seconds (see [`Client::with_timeout`]).
    pub fn new(base: &str, key: Option<String>) -> Result<Client> {
        Client::with_timeout(base, key, Duration::from_secs(300))
    }

    /// A client whose calls time out after `timeout`.
    pub fn with_timeout(base: &str, key: Option<String>, timeout: Duration) -> Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Invalid(format!(
                "--url must start with http:// or https:// (got '{base}')"
            )));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("neocloud-client/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .build()
            .map_err(|e| ClientError::Invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { http, base, key })
    }

    /// The API's base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A fresh random idempotency key (32 hex digits).
    pub fn random_idempotency_key() -> String {
        let mut b = [0u8; 16];
        if getrandom::fill(&mut b).is_err() {
            // No randomness from the system: fall back to the clock, still unique enough
            // for one client's retries.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            b = t.to_le_bytes();
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&'static str, String)],
        body: Body<'_>,
        idem: Idem<'_>,
    ) -> Result<(u16, String)> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).query(query);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        if let Idem::Create(k) = idem {
            let key = match k {
                Some(k) => k.to_string(),
                None => Client::random_idempotency_key(),
            };
            req = req.header("Idempotency-Key", key);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Toml(t) => req
                .header("Content-Type", "application/toml")
                .body(t.to_string()),
        };
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                ClientError::Unreachable {
                    base: self.base.clone(),
                }
            } else if e.is_builder() {
                ClientError::Invalid(format!("cannot send a request to {url}: {e}"))
            } else {
                ClientError::Transport {
                    url: url.clone(),
                    message: e.to_string(),
                }
            }
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| ClientError::Transport {
            url: url.clone(),
            message: e.to_string(),
        })?;
        if (200..300).contains(&status) {
            Ok((status, text))
        } else {
            Err(ClientError::from_answer(status, &text))
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&'static str, String)],
        body: Body<'_>,
        idem: Idem<'_>,
    ) -> Result<T> {
        let (_, text) = self.send(method, path, query, body, idem).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Decode {
            url: format!("{}{}", self.base, path),
            message: e.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&'static str, String)],
    ) -> Result<T> {
        self.call(Method::GET, path, query, Body::None, Idem::None)
            .await
    }

    async fn get_text(&self, path: &str, query: &[(&'static str, String)]) -> Result<String> {
        Ok(self
            .send(Method::GET, path, query, Body::None, Idem::None)
            .await?
            .1)
    }

    async fn with_body<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        idem: Idem<'_>,
    ) -> Result<T> {
        let v = serde_json::to_value(body)
            .map_err(|e| ClientError::Invalid(format!("cannot encode the request: {e}")))?;
        self.call(method, path, &[], Body::Json(v), idem).await
    }

    /// Follows `next_cursor` from the first page to the last, collecting every item.
    async fn all_pages<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&'static str, String)],
    ) -> Result<Vec<T>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = query.to_vec();
            q.push(("limit", "1000".to_string()));
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let page: model::Page<T> = self.get(path, &q).await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(c) if Some(&c) != cursor.as_ref() => cursor = Some(c),
                _ => return Ok(all),
            }
        }
    }
}

/// Percent-encodes one path segment.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Pushes `(name, value)` for each value that is set.
fn opt(q: &mut Vec<(&'static str, String)>, pairs: &[(&'static str, &Option<String>)]) {
    for &(k, v) in pairs {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(seg("H100-SXM-80GB"), "H100-SXM-80GB");
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(matches!(
            Client::new("localhost:8080", None),
            Err(ClientError::Invalid(_))
        ));
        let c = Client::new("http://127.0.0.1:8080/", None).unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:8080");
    }

    #[test]
    fn idempotency_keys_are_random() {
        let a = Client::random_idempotency_key();
        assert_eq!(a.len(), 32);
        assert_ne!(a, Client::random_idempotency_key());
    }
}
