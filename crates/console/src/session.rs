//! Console sessions and cross-site request protection.
//!
//! Signing in checks an API key once and keeps it in an `HttpOnly`, `SameSite=Strict`
//! cookie; every page authenticates the key again (through the service's key cache), so a
//! revoked or expired key ends its console sessions within the cache's lifetime, and any
//! replica can serve any session: nothing about a session lives in one process.
//!
//! Forms carry a CSRF token derived from the session's key (a hash only a holder of the key
//! can compute), and every POST is refused when the browser says it comes from another site
//! (`Sec-Fetch-Site: cross-site`) or names another `Origin` than the console's host.

use axum::http::{HeaderMap, header};
use neocloud_service::auth::sha256_hex;

/// Name of the session cookie.
pub const COOKIE: &str = "neocloud_session";

/// How long a console session lasts, seconds (12 hours).
pub const SESSION_SECS: u32 = 12 * 3600;

/// The API key in the request's session cookie, if any.
pub fn session_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 200)
}

/// Whether the request arrived over HTTPS at a proxy in front of the console, so that the
/// cookie may be marked `Secure`.
fn behind_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that starts a session holding `key`.
pub fn set_cookie(headers: &HeaderMap, key: &str) -> String {
    let secure = if behind_https(headers) {
        "; Secure"
    } else {
        ""
    };
    format!("{COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{secure}")
}

/// The `Set-Cookie` value that ends the session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The CSRF token of a session: a keyed hash of the session's key.
pub fn csrf_token(key: &str) -> String {
    let mut h = sha256_hex(format!("neocloud-console-csrf\n{key}").as_bytes());
    h.truncate(40);
    h
}

/// Constant-time comparison of a presented token with the session's.
pub fn csrf_ok(key: &str, presented: &str) -> bool {
    let want = csrf_token(key);
    want.len() == presented.len()
        && want
            .bytes()
            .zip(presented.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Why a POST is refused as cross-site, or `None` when it may proceed.
pub fn cross_site(headers: &HeaderMap) -> Option<&'static str> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if get("sec-fetch-site").is_some_and(|v| v.eq_ignore_ascii_case("cross-site")) {
        return Some("the form was posted from another site");
    }
    if let Some(origin) = get("origin")
        && origin != "null"
    {
        let host = get("x-forwarded-host")
            .or_else(|| get("host"))
            .unwrap_or("");
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if !origin_host.eq_ignore_ascii_case(host) {
            return Some("the form was posted from another origin");
        }
    }
    None
}

/// A local path to return to after signing in; anything else (another host, a scheme)
/// falls back to the home page, so the sign-in page cannot be used as an open redirect.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.starts_with("/sign-")
                && n.len() <= 500
                && n.chars().all(|c| c.is_ascii_graphic()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; neocloud_session=nck_x_y ; b=2"),
        );
        assert_eq!(session_key(&h).as_deref(), Some("nck_x_y"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("neocloud_session="),
        );
        assert_eq!(session_key(&h), None);
    }

    #[test]
    fn csrf_tokens_depend_on_the_key() {
        assert!(csrf_ok("k1", &csrf_token("k1")));
        assert!(!csrf_ok("k2", &csrf_token("k1")));
        assert!(!csrf_ok("k1", ""));
    }

    #[test]
    fn cross_site_posts_are_named() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(cross_site(&h), None);
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:8080"));
        assert_eq!(cross_site(&h), None);
        h.insert("origin", HeaderValue::from_static("http://evil.example"));
        assert!(cross_site(&h).is_some());
        h.remove("origin");
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&h).is_some());
    }

    #[test]
    fn next_stays_local() {
        assert_eq!(safe_next(Some("/instances?x=1")), "/instances?x=1");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(Some("/sign-in")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
