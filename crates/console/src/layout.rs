//! The page shell (header, navigation, sign-out), the sign-in and error pages, the headers
//! every page carries, and the formatting of numbers, money and times.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use neocloud_types::{Money, Timestamp};

use crate::Session;

/// The console's content security policy: nothing from elsewhere, no inline script or
/// style, no framing, forms only to the console itself.
const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// An HTML response with the console's security headers.
pub fn html(status: StatusCode, body: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        body.into_string(),
    )
        .into_response()
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · neocloud" }
            link rel="stylesheet" href="/assets/console.css";
            script src="/assets/console.js" defer {}
        }
    }
}

/// A page of the signed-in console.
pub struct Page<'a> {
    session: &'a Session,
    title: String,
    active: &'static str,
}

impl<'a> Page<'a> {
    /// A page titled `title`, with `active` the navigation entry it belongs to.
    pub fn new(session: &'a Session, active: &'static str, title: impl Into<String>) -> Self {
        Page {
            session,
            title: title.into(),
            active,
        }
    }

    /// The page with `body`, status 200.
    pub fn render(self, body: Markup) -> Response {
        self.render_status(StatusCode::OK, body)
    }

    /// The page with `body` and a status.
    pub fn render_status(self, status: StatusCode, body: Markup) -> Response {
        let s = self.session;
        let nav: &[(&str, &str, &str)] = if s.is_operator() {
            &[
                ("overview", "/", "Fleet"),
                ("problems", "/problems", "Problems"),
                ("tenants", "/tenants", "Tenants"),
                ("contracts", "/contracts", "Contracts"),
                ("instances", "/instances", "Instances"),
                ("reports", "/reports", "Revenue"),
                ("invoices", "/invoices", "Invoices"),
                ("events", "/events", "Events"),
            ]
        } else {
            &[
                ("instances", "/instances", "Instances"),
                ("contracts", "/contracts", "Contracts"),
                ("usage", "/usage", "Usage"),
                ("invoices", "/invoices", "Invoices"),
                ("events", "/events", "Events"),
            ]
        };
        let who = match &s.tenant_name {
            Some(t) => format!("{t} · {}", s.principal.role),
            None => s.principal.role.to_string(),
        };
        html(
            status,
            html! {
                (DOCTYPE)
                html lang="en" {
                    (head(&self.title))
                    body {
                        header.top {
                            a.brand href="/" { "neocloud" }
                            nav {
                                @for (key, href, label) in nav {
                                    a href=(href) class=[(*key == self.active).then_some("active")] { (label) }
                                }
                            }
                            div.who {
                                span #who { (who) }
                                form method="post" action="/sign-out" {
                                    input type="hidden" name="csrf" value=(s.csrf);
                                    button type="submit" #sign-out { "Sign out" }
                                }
                            }
                        }
                        main {
                            h1 { (self.title) }
                            (body)
                        }
                    }
                }
            },
        )
    }
}

/// The sign-in page.
pub fn sign_in(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    html(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                (head("Sign in"))
                body.signin {
                    main {
                        h1 { "neocloud" }
                        p { "Sign in with an API key: an operator key for the fleet, or your tenant's key for your instances and invoices." }
                        @if let Some(e) = error {
                            p.error role="alert" { (e) }
                        }
                        form method="post" action="/sign-in" {
                            input type="hidden" name="next" value=(next);
                            label for="key" { "API key" }
                            input #key type="password" name="key" autocomplete="off" required placeholder="nck_…";
                            button type="submit" #sign-in { "Sign in" }
                        }
                        p.muted { "The key is kept in a cookie only this console can read, for 12 hours or until you sign out." }
                    }
                }
            }
        },
    )
}

/// A page for an error, signed in or not.
pub fn error_page(status: StatusCode, title: &str, message: &str, hint: Option<&str>) -> Response {
    html(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    header.top { a.brand href="/" { "neocloud" } }
                    main {
                        h1 { (title) }
                        p.error role="alert" { (message) }
                        @if let Some(h) = hint { p.muted { (h) } }
                        p { a href="/" { "Back to the console" } }
                    }
                }
            }
        },
    )
}

/// An inline message above a form that failed.
pub fn alert(message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message { p.error role="alert" { (m) } }
    }
}

/// A whole number with thousands separators.
pub fn num(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if v < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Money to the cent (half away from zero), with separators: `$1,234.57`.
pub fn money(m: Money) -> String {
    let micros = i128::from(m.micros());
    let cents = (micros + if micros < 0 { -5_000 } else { 5_000 }) / 10_000;
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    let whole = i64::try_from(abs / 100).unwrap_or(i64::MAX);
    format!("{sign}${}.{:02}", num(whole), abs % 100)
}

/// Money as recorded, to the micro-dollar without trailing zeros (at least cents):
/// `$0.005`, `$12.50`. Usage records are exact below the cent; invoices round their sums,
/// so a record shown rounded could disagree with the invoice that bills it.
pub fn money_exact(m: Money) -> String {
    let micros = i128::from(m.micros());
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let whole = i64::try_from(abs / 1_000_000).unwrap_or(i64::MAX);
    let mut frac = format!("{:06}", abs % 1_000_000);
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!("{sign}${}.{frac}", num(whole))
}

/// Money in millions for headline figures: `$1,234.6M`.
pub fn money_m(m: Money) -> String {
    let tenths = m.micros() / 100_000_000_000;
    format!("${}.{}M", num(tenths / 10), (tenths % 10).abs())
}

/// A time to the minute, UTC.
pub fn ts(t: Timestamp) -> String {
    let s = t.to_string();
    // RFC 3339 `2026-12-01T19:37:41.123456Z` → `2026-12-01 19:37 UTC`.
    match (s.get(0..10), s.get(11..16)) {
        (Some(d), Some(hm)) => format!("{d} {hm} UTC"),
        _ => s,
    }
}

/// How long ago `t` was, from `now`, to the second under a minute: `12 s ago`,
/// `4 min ago`, `3 h 05 min ago`, `2 d 4 h ago`; `in the future` for clock skew.
pub fn ago(now: Timestamp, t: Timestamp) -> String {
    let secs = (now.micros() - t.micros()) / 1_000_000;
    match secs {
        s if s < 0 => "in the future".to_string(),
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min {:02} s ago", s / 60, s % 60),
        s if s < 86_400 => format!("{} h {:02} min ago", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h ago", s / 86_400, s % 86_400 / 3600),
    }
}

/// An optional time, or a dash.
pub fn ts_opt(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "—".to_string(), ts)
}

/// A share as a percentage with one decimal.
pub fn pct(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.1}%", part / whole * 100.0)
    } else {
        "—".to_string()
    }
}

/// GPU-seconds as GPU-hours with two decimals.
pub fn gpu_hours(gpu_seconds: i64) -> String {
    format!(
        "{}.{:02}",
        num(gpu_seconds / 3600),
        (gpu_seconds % 3600).abs() * 100 / 3600
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_like_figures() {
        assert_eq!(num(0), "0");
        assert_eq!(num(220_000), "220,000");
        assert_eq!(num(-1_234_567), "-1,234,567");
        assert_eq!(money(Money::from_micros(1_234_565_000)), "$1,234.57");
        assert_eq!(money(Money::from_micros(-10_000)), "-$0.01");
        assert_eq!(
            money_m(Money::from_micros(1_234_560_000_000_000)),
            "$1,234.5M"
        );
        assert_eq!(gpu_hours(5400), "1.50");
        assert_eq!(money_exact(Money::from_micros(5_000)), "$0.005");
        assert_eq!(money_exact(Money::from_micros(12_500_000)), "$12.50");
        assert_eq!(
            money_exact(Money::from_micros(1_234_567_891)),
            "$1,234.567891"
        );
        assert_eq!(money_exact(Money::from_micros(-10_000)), "-$0.01");
        assert_eq!(ts(Timestamp::from_micros(0)), "1970-01-01 00:00 UTC");
        let t = Timestamp::from_micros(1_000_000_000_000);
        assert_eq!(ago(t.plus_seconds(12), t), "12 s ago");
        assert_eq!(ago(t.plus_seconds(245), t), "4 min 05 s ago");
        assert_eq!(ago(t.plus_seconds(3 * 3600 + 300), t), "3 h 05 min ago");
        assert_eq!(ago(t.plus_seconds(2 * 86_400 + 4 * 3600), t), "2 d 4 h ago");
        assert_eq!(ago(t, t.plus_seconds(5)), "in the future");
    }
}
