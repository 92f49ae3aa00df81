//! Timestamps: UTC instants with microsecond precision.
//!
//! Stored as a 64-bit count of microseconds since the Unix epoch (portable across SQLite and
//! PostgreSQL), written in the API as RFC 3339 (`2026-11-24T15:04:05.123456Z`).

use std::fmt;
use std::str::FromStr;

/// A UTC instant, microsecond precision.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

/// Why a string is not a valid RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid RFC 3339 timestamp (e.g. 2026-11-24T15:00:00Z)")]
pub struct TimestampParseError(pub String);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self(jiff::Timestamp::now().as_microsecond())
    }

    /// An instant from microseconds since the Unix epoch.
    pub const fn from_micros(us: i64) -> Self {
        Self(us)
    }

    /// Microseconds since the Unix epoch.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// This instant with its fraction of a second dropped (rounded toward the past).
    pub const fn floor_to_second(self) -> Self {
        Self(self.0 - self.0.rem_euclid(1_000_000))
    }

    /// The same wall-clock time (UTC) `months` calendar months later: a term of N months or
    /// years ends exactly on its calendar date (the 31st becomes the last day of a shorter
    /// month, February 29th becomes February 28th). `None` past the year 9999.
    pub fn plus_months(self, months: i32) -> Option<Self> {
        let ts = jiff::Timestamp::from_microsecond(self.0).ok()?;
        let later = ts
            .to_zoned(jiff::tz::TimeZone::UTC)
            .checked_add(jiff::Span::new().try_months(months).ok()?)
            .ok()?;
        Some(Self(later.timestamp().as_microsecond()))
    }

    /// This instant plus a number of seconds (saturating).
    pub fn plus_seconds(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs.saturating_mul(1_000_000)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::Timestamp::from_microsecond(self.0) {
            Ok(ts) => write!(f, "{ts}"),
            Err(_) => write!(f, "invalid-timestamp({})", self.0),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Timestamp {
    type Err = TimestampParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<jiff::Timestamp>()
            .map(|t| Self(t.as_microsecond()))
            .map_err(|_| TimestampParseError(s.to_string()))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .description(Some("A UTC instant in RFC 3339 format."))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc3339() {
        let t: Timestamp = "2026-11-24T15:04:05.123456Z".parse().unwrap();
        assert_eq!(t.to_string(), "2026-11-24T15:04:05.123456Z");
        assert_eq!(t.plus_seconds(1).micros() - t.micros(), 1_000_000);
        assert!("yesterday".parse::<Timestamp>().is_err());
    }

    #[test]
    fn whole_seconds_and_calendar_months() {
        let t: Timestamp = "2026-11-24T15:04:05.999999Z".parse().unwrap();
        assert_eq!(t.floor_to_second().to_string(), "2026-11-24T15:04:05Z");
        let before: Timestamp = "1969-12-31T23:59:59.5Z".parse().unwrap();
        assert_eq!(before.floor_to_second().to_string(), "1969-12-31T23:59:59Z");
        let s = t.floor_to_second();
        assert_eq!(
            s.plus_months(36).unwrap().to_string(),
            "2029-11-24T15:04:05Z"
        );
        let leap: Timestamp = "2028-02-29T00:00:00Z".parse().unwrap();
        assert_eq!(
            leap.plus_months(12).unwrap().to_string(),
            "2029-02-28T00:00:00Z"
        );
        let jan31: Timestamp = "2027-01-31T12:00:00Z".parse().unwrap();
        assert_eq!(
            jan31.plus_months(1).unwrap().to_string(),
            "2027-02-28T12:00:00Z"
        );
        assert!(s.plus_months(12 * 10_000).is_none());
    }
}
