//! The HTTP client of the control plane's agent endpoints.

use std::fmt;
use std::time::Duration;

use neocloud_types::{AgentRegister, AgentRegistered, DesiredWorkloads, Heartbeat, HeartbeatAck};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a call to the control plane failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The control plane answered with an error status; `detail` is the problem's `detail`
    /// (or `title`, or the start of the body).
    Status {
        /// HTTP status code.
        status: u16,
        /// What the control plane said.
        detail: String,
    },
    /// The control plane could not be reached, or its answer could not be read.
    Transport(String),
}

impl CallError {
    /// The HTTP status, when the control plane answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            CallError::Transport(_) => None,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Status { status, detail } => write!(f, "HTTP {status}: {detail}"),
            CallError::Transport(cause) => f.write_str(cause),
        }
    }
}

impl std::error::Error for CallError {}

/// An error with its chain of causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A client of one control plane.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    http: reqwest::Client,
    base: String,
}

impl ControlPlane {
    /// A client of the control plane at `server` (e.g. `http://cp.example:8080`), with a
    /// 10 s limit per call.
    pub fn new(server: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("neocloud-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self::with_client(http, server))
    }

    /// A client of the control plane at `server` sharing an existing HTTP client.
    pub fn with_client(http: reqwest::Client, server: &str) -> Self {
        ControlPlane {
            http,
            base: server.trim_end_matches('/').to_string(),
        }
    }

    /// `POST /v1/agent/register`.
    pub async fn register(
        &self,
        key: &str,
        body: &AgentRegister,
    ) -> Result<AgentRegistered, CallError> {
        self.post("/v1/agent/register", key, body).await
    }

    /// `POST /v1/agent/heartbeat`.
    pub async fn heartbeat(&self, key: &str, body: &Heartbeat) -> Result<HeartbeatAck, CallError> {
        self.post("/v1/agent/heartbeat", key, body).await
    }

    /// `GET /v1/agent/workloads`: what should run on the node, once it differs from
    /// `generation` or after `wait_secs` seconds.
    pub async fn workloads(
        &self,
        key: &str,
        generation: Option<u64>,
        wait_secs: u32,
    ) -> Result<DesiredWorkloads, CallError> {
        let mut url = format!("{}/v1/agent/workloads?wait_secs={wait_secs}", self.base);
        if let Some(g) = generation {
            url.push_str(&format!("&generation={g}"));
        }
        let request = self
            .http
            .get(url)
            .bearer_auth(key)
            .timeout(Duration::from_secs(u64::from(wait_secs) + 10));
        Self::answer(request).await
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
        body: &B,
    ) -> Result<R, CallError> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(body);
        Self::answer(request).await
    }

    async fn answer<R: DeserializeOwned>(request: reqwest::RequestBuilder) -> Result<R, CallError> {
        let transport = |e: reqwest::Error| CallError::Transport(error_chain(&e));
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(transport);
        }
        let text = response.text().await.unwrap_or_default();
        Err(CallError::Status {
            status: status.as_u16(),
            detail: problem_detail(&text),
        })
    }
}

/// The `detail` (else `title`) of a problem+json body, else the start of the body.
pub fn problem_detail(body: &str) -> String {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    field("detail")
        .or_else(|| field("title"))
        .unwrap_or_else(|| {
            let text: String = body.trim().chars().take(200).collect();
            if text.is_empty() {
                "(no detail)".to_string()
            } else {
                text
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_problem_detail() {
        let body = r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no node named n9","code":"not_found"}"#;
        assert_eq!(problem_detail(body), "no node named n9");
        assert_eq!(problem_detail(r#"{"title":"Conflict"}"#), "Conflict");
        assert_eq!(problem_detail("bad gateway"), "bad gateway");
        assert_eq!(problem_detail(""), "(no detail)");
    }
}
