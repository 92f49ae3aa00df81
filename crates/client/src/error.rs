//! What can go wrong with a call: the API's problem+json answer, or no answer at all.

use serde::{Deserialize, Serialize};

/// The API's error body (`application/problem+json`, RFC 9457).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// URI naming the kind of problem: `urn:neocloud:problem:<code>`.
    #[serde(rename = "type", default)]
    pub type_uri: String,
    /// Short summary of the kind of problem.
    #[serde(default)]
    pub title: String,
    /// HTTP status.
    #[serde(default)]
    pub status: u16,
    /// What went wrong, for people.
    #[serde(default)]
    pub detail: String,
    /// Stable code, for programs (`not_found`, `invalid_request`, …).
    #[serde(default)]
    pub code: String,
    /// Problems with individual fields (fleet files), if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// One problem with one field of a request (a line of a fleet file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// 1-based line in the file, when known.
    #[serde(default)]
    pub line: Option<u64>,
    /// 1-based column in the file, when known.
    #[serde(default)]
    pub column: Option<u64>,
    /// Path of the field, e.g. `sites[0].nodes[3].gpu_model`.
    #[serde(default)]
    pub field: String,
    /// What is wrong.
    #[serde(default)]
    pub message: String,
}

/// The kind of an error, for a program to act on (the CLI maps it to its exit code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The request itself is wrong: bad arguments, an invalid body, a malformed fleet file.
    Usage,
    /// What the request names does not exist.
    NotFound,
    /// The request is valid but refused as things stand: a conflict, no capacity, a quota.
    Conflict,
    /// The key is missing, invalid or not allowed to do this.
    Auth,
    /// The server failed or is unavailable.
    Server,
    /// No answer: the server cannot be reached, or the connection failed.
    Network,
}

impl ErrorClass {
    /// The class's name as written in JSON (`not_found`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Usage => "usage",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Conflict => "conflict",
            ErrorClass::Auth => "auth",
            ErrorClass::Server => "server",
            ErrorClass::Network => "network",
        }
    }

    /// The class of an API error `code`, or of its HTTP `status` when the code is unknown.
    pub fn of(code: &str, status: u16) -> ErrorClass {
        match code {
            "invalid_request"
            | "invalid_fleet_file"
            | "payload_too_large"
            | "idempotency_key_reused"
            | "method_not_allowed" => ErrorClass::Usage,
            "not_found" => ErrorClass::NotFound,
            "conflict" | "insufficient_capacity" | "quota_exceeded" => ErrorClass::Conflict,
            "unauthenticated" | "forbidden" => ErrorClass::Auth,
            "internal" | "unavailable" | "storage_full" | "storage_read_only" => ErrorClass::Server,
            _ => match status {
                401 | 403 => ErrorClass::Auth,
                404 => ErrorClass::NotFound,
                400 | 405 | 413 | 414 | 415 | 422 | 431 => ErrorClass::Usage,
                500.. => ErrorClass::Server,
                _ => ErrorClass::Conflict,
            },
        }
    }
}

/// An error of a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error (its problem+json body).
    #[error("{}", problem_line(.0))]
    Api(Box<Problem>),
    /// The API answered with an error status but no problem+json body.
    #[error("HTTP {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The body, as text (trimmed, at most 2000 characters).
        body: String,
    },
    /// The server could not be reached.
    #[error(
        "cannot reach neocloud at {base}: is `neocloud serve` running? (set --url or NEOCLOUD_URL)"
    )]
    Unreachable {
        /// The base URL tried.
        base: String,
    },
    /// The request failed on the way (timeout, connection reset, …).
    #[error("request to {url} failed: {message}")]
    Transport {
        /// The URL asked for.
        url: String,
        /// What failed.
        message: String,
    },
    /// A success answer that is not what the operation returns.
    #[error("unexpected answer from {url}: {message}")]
    Decode {
        /// The URL asked for.
        url: String,
        /// What did not match.
        message: String,
    },
    /// The client was given something it cannot send (a bad base URL, a bad header value).
    #[error("{0}")]
    Invalid(String),
}

fn problem_line(p: &Problem) -> String {
    let detail = if p.detail.is_empty() {
        "request failed"
    } else {
        &p.detail
    };
    let code = if p.code.is_empty() {
        "unknown"
    } else {
        &p.code
    };
    let mut msg = format!("{detail} ({code}, HTTP {})", p.status);
    for e in p.errors.iter().take(50) {
        let line = match (e.line, e.column) {
            (Some(l), Some(c)) => format!("line {l}, column {c}: {}: {}", e.field, e.message),
            _ => format!("{}: {}", e.field, e.message),
        };
        // A single error is often the detail itself: say it once.
        if line != detail {
            msg.push_str(&format!("\n  {line}"));
        }
    }
    msg
}

impl ClientError {
    /// The kind of error, for a program to act on.
    pub fn class(&self) -> ErrorClass {
        match self {
            ClientError::Api(p) => ErrorClass::of(&p.code, p.status),
            ClientError::Status { status, .. } => ErrorClass::of("", *status),
            ClientError::Unreachable { .. } | ClientError::Transport { .. } => ErrorClass::Network,
            ClientError::Decode { .. } => ErrorClass::Server,
            ClientError::Invalid(_) => ErrorClass::Usage,
        }
    }

    /// The problem+json body, when the API sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Api(p) => Some(p),
            _ => None,
        }
    }

    /// The HTTP status, when the API answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(p) => Some(p.status),
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether this is the API's "not found".
    pub fn is_not_found(&self) -> bool {
        self.class() == ErrorClass::NotFound
    }

    /// Reads an error answer: problem+json when the body is one, else the status and text.
    pub(crate) fn from_answer(status: u16, body: &str) -> ClientError {
        match serde_json::from_str::<Problem>(body) {
            Ok(mut p) if !p.code.is_empty() || !p.detail.is_empty() => {
                if p.status == 0 {
                    p.status = status;
                }
                ClientError::Api(Box::new(p))
            }
            _ => ClientError::Status {
                status,
                body: body.trim().chars().take(2000).collect(),
            },
        }
    }
}

/// The result of a call.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_parsed_and_classed() {
        let e = ClientError::from_answer(
            404,
            r#"{"type":"urn:neocloud:problem:not_found","title":"Not found","status":404,"detail":"tenant 'x' not found","code":"not_found"}"#,
        );
        assert_eq!(e.class(), ErrorClass::NotFound);
        assert_eq!(e.to_string(), "tenant 'x' not found (not_found, HTTP 404)");
        assert_eq!(e.problem().map(|p| p.title.as_str()), Some("Not found"));
        for (code, status, class) in [
            ("invalid_request", 400, ErrorClass::Usage),
            ("invalid_fleet_file", 422, ErrorClass::Usage),
            ("conflict", 409, ErrorClass::Conflict),
            ("insufficient_capacity", 409, ErrorClass::Conflict),
            ("quota_exceeded", 409, ErrorClass::Conflict),
            ("unauthenticated", 401, ErrorClass::Auth),
            ("forbidden", 403, ErrorClass::Auth),
            ("internal", 500, ErrorClass::Server),
            ("unavailable", 503, ErrorClass::Server),
            ("something_new", 418, ErrorClass::Conflict),
            ("something_new", 502, ErrorClass::Server),
        ] {
            assert_eq!(ErrorClass::of(code, status), class, "{code}");
        }
    }

    #[test]
    fn field_errors_are_listed() {
        let e = ClientError::from_answer(
            422,
            r#"{"status":422,"detail":"bad fleet file","code":"invalid_fleet_file","errors":[{"line":7,"column":13,"field":"sites[0].nodes[0].gpu_model","message":"unknown GPU model 'H900'"}]}"#,
        );
        let s = e.to_string();
        assert!(
            s.contains("line 7, column 13: sites[0].nodes[0].gpu_model"),
            "{s}"
        );
        assert_eq!(e.class(), ErrorClass::Usage);
    }

    #[test]
    fn a_body_that_is_not_a_problem_keeps_its_status() {
        let e = ClientError::from_answer(502, "<html>bad gateway</html>");
        assert_eq!(e.status(), Some(502));
        assert_eq!(e.class(), ErrorClass::Server);
        assert!(e.problem().is_none());
    }
}
