//! The one conversion from service errors to HTTP: `application/problem+json` (RFC 9457)
//! with a stable `code`. Internal detail goes to the log, never to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use neocloud_service::{Error, ErrorCode, FieldError};
use serde::Serialize;
use utoipa::ToSchema;

/// An error response body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// URI naming the kind of problem: `urn:neocloud:problem:<code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// Stable code, for programs.
    pub code: ErrorCode,
    /// Problems with individual fields (fleet files), if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// A service error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    /// 400 with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError(Error::invalid(message))
    }
}

fn title(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidRequest => "Invalid request",
        ErrorCode::Unauthenticated => "Unauthenticated",
        ErrorCode::Forbidden => "Forbidden",
        ErrorCode::NotFound => "Not found",
        ErrorCode::MethodNotAllowed => "Method not allowed",
        ErrorCode::Conflict => "Conflict",
        ErrorCode::InsufficientCapacity => "Insufficient capacity",
        ErrorCode::QuotaExceeded => "Quota exceeded",
        ErrorCode::IdempotencyKeyReused => "Idempotency key reused",
        ErrorCode::InvalidFleetFile => "Invalid fleet file",
        ErrorCode::PayloadTooLarge => "Payload too large",
        ErrorCode::Internal => "Internal error",
        ErrorCode::Unavailable => "Service unavailable",
        ErrorCode::StorageFull => "Insufficient storage",
        ErrorCode::StorageReadOnly => "Storage read-only",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.into_response_with_status(status)
    }
}

impl ApiError {
    /// The problem+json answer with `status` in place of the one that goes with the code (a
    /// forwarded write whose answer was lost is `unavailable` but a 502 or 504); the body's
    /// `status` always equals the answer's.
    pub fn into_response_with_status(self, status: StatusCode) -> Response {
        let e = self.0;
        if let Some(internal) = &e.internal {
            tracing::error!(code = e.code.as_str(), detail = %internal, "request failed");
        }
        let body = Problem {
            type_uri: format!("urn:neocloud:problem:{}", e.code.as_str()),
            title: title(e.code).to_string(),
            status: status.as_u16(),
            detail: e.message,
            code: e.code,
            errors: e.field_errors,
        };
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (status, json).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if e.code == ErrorCode::Unauthenticated {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // The rest of a body that was too large is never read: the connection cannot carry
        // another request, so the client must not reuse it.
        if e.code == ErrorCode::PayloadTooLarge {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // Unavailable is transient (the database, or leadership changing): say when to retry.
        if e.code == ErrorCode::Unavailable {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
