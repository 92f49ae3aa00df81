//! Exact money: an integer count of micro-dollars (10⁻⁶ USD).
//!
//! Money is never a float (invariant 6 in docs/architecture.md). The store keeps it as a 64-bit integer of
//! micro-units, which every SQL backend handles exactly; the API writes it as a decimal
//! string ("1234.5", "0.000001") so that no JSON parser turns it into a float.

use std::fmt;
use std::str::FromStr;

/// An exact amount of US dollars, in micro-dollars.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money {
    micros: i64,
}

/// Why a string is not a valid amount of money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid amount (expected a decimal like \"12.50\" with at most 6 decimals)")]
pub struct MoneyParseError(pub String);

impl Money {
    /// Zero dollars.
    pub const ZERO: Money = Money { micros: 0 };

    /// An amount from micro-dollars.
    pub const fn from_micros(micros: i64) -> Self {
        Self { micros }
    }

    /// The amount in micro-dollars.
    pub const fn micros(self) -> i64 {
        self.micros
    }

    /// Whole dollars, checked against overflow.
    pub fn from_dollars(dollars: i64) -> Option<Self> {
        dollars.checked_mul(1_000_000).map(Self::from_micros)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.micros < 0 { "-" } else { "" };
        let abs = self.micros.unsigned_abs();
        let whole = abs / 1_000_000;
        let frac = abs % 1_000_000;
        if frac == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${self}")
    }
}

impl FromStr for Money {
    type Err = MoneyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MoneyParseError(s.to_string());
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
        if whole.is_empty() || frac.len() > 6 || (body.contains('.') && frac.is_empty()) {
            return Err(err());
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let whole: i64 = whole.parse().map_err(|_| err())?;
        let frac_micros: i64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<6}").parse().map_err(|_| err())?
        };
        let micros = whole
            .checked_mul(1_000_000)
            .and_then(|w| w.checked_add(frac_micros))
            .ok_or_else(err)?;
        Ok(Money::from_micros(if neg { -micros } else { micros }))
    }
}

impl serde::Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Money {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^-?[0-9]+(\.[0-9]{1,6})?$"))
            .description(Some(
                "US dollars as an exact decimal string (at most 6 decimals).",
            ))
            .examples([serde_json::json!("2.85")])
            .into()
    }
}

impl utoipa::ToSchema for Money {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_exactly() {
        for (s, micros, back) in [
            ("0", 0, "0"),
            ("12.5", 12_500_000, "12.5"),
            ("12.50", 12_500_000, "12.5"),
            ("0.000001", 1, "0.000001"),
            ("-3.25", -3_250_000, "-3.25"),
            ("9000000000000", 9_000_000_000_000_000_000, "9000000000000"),
        ] {
            let m: Money = s.parse().unwrap();
            assert_eq!(m.micros(), micros, "{s}");
            assert_eq!(m.to_string(), back);
        }
    }

    #[test]
    fn rejects_garbage_and_overflow() {
        for s in [
            "",
            ".",
            "1.",
            ".5",
            "1.0000001",
            "1e3",
            "abc",
            "--1",
            "1,5",
            "99999999999999",
        ] {
            assert!(s.parse::<Money>().is_err(), "{s} should be rejected");
        }
    }
}
