//! The service's error type: a stable code for programs, a message for people, and the
//! internal detail for logs only.

use neocloud_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// Stable error codes. Clients may match on them; their spelling never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a field is invalid.
    InvalidRequest,
    /// No valid API key was given.
    Unauthenticated,
    /// The key is valid but its role may not do this.
    Forbidden,
    /// The resource does not exist, or belongs to someone else.
    NotFound,
    /// The endpoint exists but not with this HTTP method.
    MethodNotAllowed,
    /// The change conflicts with the current state (e.g. a name already taken).
    Conflict,
    /// No capacity fits the request now (the message says why).
    InsufficientCapacity,
    /// The request would take the tenant over a quota.
    QuotaExceeded,
    /// An Idempotency-Key was reused with a different request.
    IdempotencyKeyReused,
    /// The fleet file is invalid or cannot be applied.
    InvalidFleetFile,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// The server failed; the detail is in its logs.
    Internal,
    /// A dependency (the database) is not reachable.
    Unavailable,
    /// The database's disk is full: the change was not made. Reads still work.
    StorageFull,
    /// The database cannot be written (read-only file, directory or disk): the change was
    /// not made. Reads still work.
    StorageReadOnly,
}

impl ErrorCode {
    /// The stable spelling of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::InsufficientCapacity => "insufficient_capacity",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::InvalidFleetFile => "invalid_fleet_file",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::StorageReadOnly => "storage_read_only",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict | ErrorCode::InsufficientCapacity | ErrorCode::QuotaExceeded => 409,
            ErrorCode::IdempotencyKeyReused | ErrorCode::InvalidFleetFile => 422,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable | ErrorCode::StorageReadOnly => 503,
            ErrorCode::StorageFull => 507,
        }
    }
}

/// One problem found in a fleet file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// 1-based column in the file, when known.
    pub column: Option<usize>,
    /// Path of the field, e.g. `sites[0].nodes[3].gpu_model`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// An error of the service layer.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Stable code.
    pub code: ErrorCode,
    /// What a user should read.
    pub message: String,
    /// Details for individual fields, if any.
    pub field_errors: Vec<FieldError>,
    /// What only the logs should see.
    pub internal: Option<String>,
}

impl Error {
    /// An error with a code and a user-facing message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            field_errors: Vec::new(),
            internal: None,
        }
    }

    /// 400 invalid request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// 404 for a resource kind and the id that was asked for.
    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{kind} '{id}' not found"))
    }

    /// 403 forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// 401 unauthenticated.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    /// The same error with advice on what to do appended to its message.
    pub fn with_hint(mut self, hint: &str) -> Self {
        self.message = format!("{}; {hint}", self.message);
        self
    }

    /// 500 with internal detail kept for the logs.
    pub fn internal(detail: impl Into<String>) -> Self {
        Error {
            code: ErrorCode::Internal,
            message: "internal error; the server log has the details".into(),
            field_errors: Vec::new(),
            internal: Some(detail.into()),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => Error::not_found(kind, &id),
            StoreError::Conflict(m) => Error::new(ErrorCode::Conflict, m),
            StoreError::Invalid(m) => Error::new(ErrorCode::InvalidFleetFile, m),
            StoreError::Database(sqlx_err) => {
                let detail = sqlx_err.to_string();
                let unavailable = matches!(
                    sqlx_err,
                    neocloud_store::sqlx_error::PoolTimedOut
                        | neocloud_store::sqlx_error::Io(_)
                        | neocloud_store::sqlx_error::PoolClosed
                );
                if unavailable {
                    Error {
                        code: ErrorCode::Unavailable,
                        message: "the database is unavailable; retry shortly".into(),
                        field_errors: Vec::new(),
                        internal: Some(detail),
                    }
                } else {
                    Error::internal(detail)
                }
            }
            StoreError::Corrupt(m) => Error::internal(m),
            StoreError::StorageFull(e) => Error {
                code: ErrorCode::StorageFull,
                message: "the database's disk is full, so nothing was changed; reads still \
                          work — the operator must free space in the data directory"
                    .into(),
                field_errors: Vec::new(),
                internal: Some(e.to_string()),
            },
            StoreError::ReadOnly(e) => Error {
                code: ErrorCode::StorageReadOnly,
                message: "the database is read-only, so nothing was changed; the operator must \
                          make the data directory and its database file writable by the user \
                          running neocloud (or remount the disk read-write)"
                    .into(),
                field_errors: Vec::new(),
                internal: Some(e.to_string()),
            },
            StoreError::NotLeader => Error::new(
                ErrorCode::Unavailable,
                "this control-plane replica is not the leader (leadership is changing); retry shortly",
            ),
        }
    }
}

/// Result of a service call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
/// Maps a store "not found" to a caller's own error (a 404, or a 400 "unknown …") while every
/// other store failure keeps its meaning: a pool timeout stays a 503 and a broken query a
/// 500 with its detail logged, never "not found".
pub trait OrNotFound<T> {
    /// `err()` if the store found nothing; the store's own error otherwise.
    fn or_not_found(self, err: impl FnOnce() -> Error) -> Result<T>;
}

impl<T> OrNotFound<T> for Result<T, StoreError> {
    fn or_not_found(self, err: impl FnOnce() -> Error) -> Result<T> {
        self.map_err(|e| match e {
            StoreError::NotFound { .. } => err(),
            other => Error::from(other),
        })
    }
}

/// Reads an id the store itself returned; one that does not parse is corruption (500), not
/// a missing resource.
pub(crate) fn stored_id<T: std::str::FromStr>(kind: &str, s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| Error::internal(format!("stored {kind} id '{s}' does not parse: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_not_found_becomes_the_callers_error() {
        let missing: Result<(), StoreError> = Err(StoreError::NotFound {
            kind: "GPU model",
            id: "H900".into(),
        });
        let e = missing
            .or_not_found(|| Error::invalid("unknown GPU model 'H900'"))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(e.message, "unknown GPU model 'H900'");

        // A pool timeout is the database being unavailable, not an unknown model.
        let timeout: Result<(), StoreError> = Err(StoreError::Database(
            neocloud_store::sqlx_error::PoolTimedOut,
        ));
        let e = timeout
            .or_not_found(|| Error::invalid("unknown GPU model 'H100'"))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(e.code.http_status(), 503);
        assert!(e.internal.is_some());

        // Any other database failure is a 500 whose detail goes to the log only.
        let broken: Result<(), StoreError> = Err(StoreError::Database(
            neocloud_store::sqlx_error::Protocol("bad packet".into()),
        ));
        let e = broken
            .or_not_found(|| Error::not_found("tenant", "acme"))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(
            e.internal
                .as_deref()
                .is_some_and(|d| d.contains("bad packet"))
        );
        assert!(!e.message.contains("bad packet"));

        let corrupt: Result<(), StoreError> = Err(StoreError::Corrupt("row 7".into()));
        let e = corrupt
            .or_not_found(|| Error::not_found("contract", "c"))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);

        let ok: Result<u32, StoreError> = Ok(7);
        assert_eq!(ok.or_not_found(|| Error::invalid("x")).unwrap(), 7);

        let id: Result<neocloud_types::SiteId> = stored_id("site", "not-an-id");
        assert_eq!(id.unwrap_err().code, ErrorCode::Internal);
    }
}
