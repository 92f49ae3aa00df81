//! The HTTP client of the control plane's agent endpoints.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// A client of the control plane: one server, or several replicas it fails over between.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    http: reqwest::Client,
    servers: Arc<[String]>,
    /// The server calls go to now (an index into `servers`): the next one after a call
    /// that could not reach it or was answered 502, 503 or 504.
    at: Arc<AtomicUsize>,
}

impl ControlPlane {
    /// A client of the control plane at `server` (e.g. `http://cp.example:8080`, or several
    /// replicas' URLs separated by commas), with a 10 s limit per call.
    pub fn new(server: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("neocloud-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self::with_client(http, server))
    }

    /// A client of the control plane at `server` (one URL or several, comma-separated)
    /// sharing an existing HTTP client.
    pub fn with_client(http: reqwest::Client, server: &str) -> Self {
        let mut servers: Vec<String> = server
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            servers.push(String::new());
        }
        ControlPlane {
            http,
            servers: servers.into(),
            at: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The same servers, starting at one chosen by `seed` (the host name): a fleet of
    /// agents given the same list spreads evenly over it. The copy keeps its own place.
    #[must_use]
    pub fn starting_at(self, seed: &str) -> Self {
        // FNV-1a: stable across builds and platforms, unlike the standard library's hasher.
        let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let n = self.servers.len() as u64;
        let start = usize::try_from(hash % n).unwrap_or(0);
        ControlPlane {
            at: Arc::new(AtomicUsize::new(start)),
            ..self
        }
    }

    /// The servers, in the order they are tried.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The server calls go to now.
    pub fn current(&self) -> &str {
        let i = self.at.load(Ordering::Relaxed) % self.servers.len();
        &self.servers[i]
    }

    /// After a failed call to `servers[used]`: whether to try another, and if so the next
    /// call goes to the next server (unless another call already moved on).
    fn after_failure(&self, used: usize, e: &CallError) {
        let moves = match e {
            CallError::Transport(_) => true,
            CallError::Status { status, .. } => matches!(status, 502..=504),
        };
        if moves && self.servers.len() > 1 {
            let next = (used + 1) % self.servers.len();
            if self
                .at
                .compare_exchange(used, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                tracing::info!(
                    from = %self.servers[used],
                    to = %self.servers[next],
                    error = %e,
                    "control-plane replica failed; trying the next"
                );
            }
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
        let used = self.at.load(Ordering::Relaxed) % self.servers.len();
        let mut url = format!(
            "{}/v1/agent/workloads?wait_secs={wait_secs}",
            self.servers[used]
        );
        if let Some(g) = generation {
            url.push_str(&format!("&generation={g}"));
        }
        let request = self
            .http
            .get(url)
            .bearer_auth(key)
            .timeout(Duration::from_secs(u64::from(wait_secs) + 10));
        let r = Self::answer(request).await;
        if let Err(e) = &r {
            self.after_failure(used, e);
        }
        r
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
        body: &B,
    ) -> Result<R, CallError> {
        let used = self.at.load(Ordering::Relaxed) % self.servers.len();
        let request = self
            .http
            .post(format!("{}{path}", self.servers[used]))
            .bearer_auth(key)
            .json(body);
        let r = Self::answer(request).await;
        if let Err(e) = &r {
            self.after_failure(used, e);
        }
        r
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
    fn fails_over_between_servers() {
        let http = reqwest::Client::new();
        let cp = ControlPlane::with_client(http, " http://a:1/ ,http://b:2,, http://c:3");
        assert_eq!(cp.servers(), ["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(cp.current(), "http://a:1");
        // Host names spread over the list, each always to the same start.
        let starts: std::collections::BTreeSet<String> = (0..64)
            .map(|i| {
                cp.clone()
                    .starting_at(&format!("gpu-{i:03}"))
                    .current()
                    .to_string()
            })
            .collect();
        assert_eq!(starts.len(), 3);
        let one = cp.clone().starting_at("gpu-007");
        assert_eq!(one.current(), cp.clone().starting_at("gpu-007").current());
        // Unreachable or 502-504: the next; a refusal (4xx) or 500 stays.
        let at = |c: &ControlPlane| c.servers().iter().position(|s| s == c.current()).unwrap();
        let i = at(&one);
        one.after_failure(
            i,
            &CallError::Status {
                status: 404,
                detail: String::new(),
            },
        );
        one.after_failure(
            i,
            &CallError::Status {
                status: 500,
                detail: String::new(),
            },
        );
        assert_eq!(at(&one), i);
        one.after_failure(i, &CallError::Transport("refused".into()));
        assert_eq!(at(&one), (i + 1) % 3);
        // A failure of a call made before the move does not move it again.
        one.after_failure(
            i,
            &CallError::Status {
                status: 503,
                detail: String::new(),
            },
        );
        assert_eq!(at(&one), (i + 1) % 3);
        one.after_failure(
            (i + 1) % 3,
            &CallError::Status {
                status: 503,
                detail: String::new(),
            },
        );
        assert_eq!(at(&one), (i + 2) % 3);
    }

    #[test]
    fn reads_problem_detail() {
        let body = r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no node named n9","code":"not_found"}"#;
        assert_eq!(problem_detail(body), "no node named n9");
        assert_eq!(problem_detail(r#"{"title":"Conflict"}"#), "Conflict");
        assert_eq!(problem_detail("bad gateway"), "bad gateway");
        assert_eq!(problem_detail(""), "(no detail)");
    }
}
