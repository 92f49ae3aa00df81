//! Request extractors that turn every malformed input into a problem+json 400, never a
//! plain-text rejection.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use neocloud_service::{Action, Idempotency, Principal, auth};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;

/// The authenticated caller.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v.to_str().map_err(|_| {
                    ApiError(neocloud_service::Error::unauthenticated("invalid API key"))
                })?;
                let token = v
                    .strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .ok_or_else(|| {
                        ApiError(neocloud_service::Error::unauthenticated(
                            "the Authorization header must be 'Bearer KEY'",
                        ))
                    })?;
                Some(token.trim().to_string())
            }
        };
        Ok(Auth(state.svc.authenticate(presented.as_deref()).await?))
    }
}

/// Checks the caller's role before anything else of the request is read: a caller who may
/// not do this gets 403, never a 400 about a body or query it may not send.
pub fn allow(p: &Principal, action: Action) -> Result<(), ApiError> {
    auth::authorize(p, action).map_err(ApiError)
}

/// Query parameters; a bad one is a problem+json 400 naming it. The error waits in [`Q::get`]
/// so that the handler can check the caller's role first.
pub struct Q<T>(Result<T, ApiError>);

impl<T> Q<T> {
    /// The parameters, or the 400 that parsing them gave.
    pub fn get(self) -> Result<T, ApiError> {
        self.0
    }
}

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Q(
            match Query::<T>::from_request_parts(parts, state).await {
                Ok(Query(v)) => Ok(v),
                Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => Err(
                    ApiError::invalid(format!("invalid query string: {}", e.body_text())),
                ),
                Err(e) => Err(ApiError::invalid(e.body_text())),
            },
        ))
    }
}

/// Parses a JSON request body, requiring a JSON content type and naming what is wrong.
pub fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(ApiError::invalid(
            "the request body must be JSON with 'Content-Type: application/json'",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, (String, serde_json::Error)> = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| (e.path().to_string(), e.into_inner()))
        // Trailing data after the value is malformed JSON too.
        .and_then(|v| de.end().map(|()| v).map_err(|e| (String::new(), e)));
    parsed.map_err(|(path, e)| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "malformed JSON".to_string()
            }
            // The field that is wrong, e.g. "shape.milli", when there is one.
            _ if path != "." && !path.is_empty() => format!("invalid request body: {path}"),
            _ => "invalid request body".to_string(),
        };
        ApiError::invalid(format!("{what}: {e}"))
    })
}

/// The Idempotency-Key header of a create, with a fingerprint of the request.
pub fn idempotency(
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<Option<Idempotency>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::invalid("Idempotency-Key must be 1-255 printable ASCII characters")
        })?;
    let mut data = Vec::with_capacity(body.len() + path.len() + 8);
    data.extend_from_slice(method.as_str().as_bytes());
    data.push(b' ');
    data.extend_from_slice(path.as_bytes());
    data.push(b'\n');
    data.extend_from_slice(body);
    Ok(Some(Idempotency {
        key: key.to_string(),
        fingerprint: auth::sha256_hex(&data),
    }))
}

/// The raw request body; a body over the route's limit is a problem+json 413.
pub struct RawBody(pub axum::body::Bytes);

impl axum::extract::FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, ApiError> {
        match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => Ok(RawBody(b)),
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError(neocloud_service::Error::new(
                    neocloud_service::ErrorCode::PayloadTooLarge,
                    "the request body is too large",
                )))
            }
            Err(e) => Err(ApiError::invalid(format!(
                "could not read the request body: {}",
                e.body_text()
            ))),
        }
    }
}
