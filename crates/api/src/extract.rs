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
pub fn json_body<'a, T: serde::Deserialize<'a>>(
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(ApiError::invalid(
            "the request body must be JSON with 'Content-Type: application/json'",
        ));
    }
    // The plain parse first: most bodies are good, and tracking the path costs as much
    // again (a heartbeat's samples). Only a bad body is parsed a second time, for the path.
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
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

/// Longest Idempotency-Key accepted.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;

/// The request of a state-changing operation: its `Idempotency-Key` (validated, with a
/// fingerprint of method, path, query and body) and its raw body. Every POST, PUT, PATCH
/// and DELETE handler takes this one extractor, so none can forget the header.
pub struct Idem {
    /// The key and the request's fingerprint, when the header was given; a bad header's
    /// 400 waits in [`Idem::key`] so that the handler can check the caller's role first.
    key: Result<Option<Idempotency>, String>,
    /// The request's headers (the body's content type).
    pub headers: HeaderMap,
    /// The raw body; a body over the route's limit is a problem+json 413.
    pub body: axum::body::Bytes,
}

impl Idem {
    /// A request without an Idempotency-Key made of its headers and body: one heartbeat of
    /// a relayed batch.
    pub(crate) fn without_key(headers: HeaderMap, body: axum::body::Bytes) -> Self {
        Idem {
            key: Ok(None),
            headers,
            body,
        }
    }

    /// The key, for the service, or the 400 a malformed header gets.
    pub fn key(&self) -> Result<Option<&Idempotency>, ApiError> {
        match &self.key {
            Ok(k) => Ok(k.as_ref()),
            Err(m) => Err(ApiError::invalid(m.clone())),
        }
    }

    /// The body as JSON (with a JSON content type); a bad Idempotency-Key is reported
    /// first.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        self.key()?;
        json_body(&self.headers, &self.body)
    }

    /// The body as JSON, or the defaults when it is empty.
    pub fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            self.key()?;
            Ok(T::default())
        } else {
            self.json()
        }
    }
}

impl axum::extract::FromRequest<AppState> for Idem {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, ApiError> {
        // The headers are moved out, not copied: reading the body needs none of them.
        let (mut parts, body) = req.into_parts();
        let headers = std::mem::take(&mut parts.headers);
        let key = idempotency_key(&headers);
        // Method and path as the client sent them (also under a nested router), for the
        // fingerprint of a request with a key.
        let target = matches!(key, Ok(Some(_))).then(|| {
            let uri = parts
                .extensions
                .get::<axum::extract::OriginalUri>()
                .map_or_else(|| parts.uri.clone(), |o| o.0.clone());
            (parts.method.clone(), uri)
        });
        let req = axum::extract::Request::from_parts(parts, body);
        let RawBody(body) = RawBody::from_request(req, state).await?;
        let key = match key {
            Ok(k) => Ok(k.map(|key| Idempotency {
                fingerprint: target
                    .as_ref()
                    .map(|(method, uri)| fingerprint(method, uri, &body))
                    .unwrap_or_default(),
                key,
            })),
            Err(e) => Err(e.0.message),
        };
        Ok(Idem { key, headers, body })
    }
}

/// The Idempotency-Key header, if given: 1-255 printable ASCII characters, else a 400.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::invalid(
            "give one Idempotency-Key header, not several",
        ));
    }
    let bytes = v.as_bytes();
    if bytes.is_empty()
        || bytes.len() > IDEMPOTENCY_KEY_MAX
        || !bytes.iter().all(|b| (0x20..=0x7e).contains(b))
    {
        return Err(ApiError::invalid(format!(
            "Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} printable ASCII characters"
        )));
    }
    // Checked above: printable ASCII is UTF-8.
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// Hash of what makes two requests the same: method, path, query and body. The same key
/// with another fingerprint is refused (`idempotency_key_reused`).
fn fingerprint(method: &Method, target: &axum::http::Uri, body: &[u8]) -> String {
    let path = target.path();
    let mut data = Vec::with_capacity(body.len() + path.len() + 64);
    data.extend_from_slice(method.as_str().as_bytes());
    data.push(b' ');
    data.extend_from_slice(path.as_bytes());
    if let Some(q) = target.query() {
        data.push(b'?');
        data.extend_from_slice(q.as_bytes());
    }
    data.push(b'\n');
    data.extend_from_slice(body);
    auth::sha256_hex(&data)
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
