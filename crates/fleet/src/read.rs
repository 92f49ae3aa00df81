//! Typed access to the parsed TOML document, reporting every wrong type, missing field and
//! unknown field instead of stopping at the first (which is what serde deserialization does).

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::errors::Diag;

/// A value and where it was written.
#[derive(Clone, Debug)]
pub(crate) struct At<T> {
    pub value: T,
    pub span: Range<usize>,
}

/// One TOML table of the file, with the field path that leads to it.
pub(crate) struct Table<'a, 'i> {
    entries: &'a DeTable<'i>,
    /// For an `[[array]]` entry, the span of its header line.
    pub span: Range<usize>,
    pub path: String,
}

impl<'a, 'i> Table<'a, 'i> {
    pub(crate) fn new(entries: &'a DeTable<'i>, span: Range<usize>, path: String) -> Self {
        Table {
            entries,
            span,
            path,
        }
    }

    /// Reports every key not in `allowed`.
    pub(crate) fn check_keys(&self, d: &mut Diag<'_>, allowed: &[&str]) {
        for (key, _) in self.entries.iter() {
            let name: &str = key.get_ref();
            if !allowed.contains(&name) {
                d.push(
                    &key.span(),
                    self.field(name),
                    format!(
                        "unknown field '{name}' (expected one of: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    /// Path of a field of this table.
    pub(crate) fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.entries.get(key)
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn missing(&self, d: &mut Diag<'_>, key: &str, why: &str) {
        d.push(
            &self.span,
            self.field(key),
            format!("missing required field '{key}'{why}"),
        );
    }

    fn wrong_type(&self, d: &mut Diag<'_>, key: &str, v: &Spanned<DeValue<'_>>, expected: &str) {
        d.push(
            &v.span(),
            self.field(key),
            format!(
                "expected {expected}, found {}",
                article(v.get_ref().type_str())
            ),
        );
    }

    /// Reports a required field that is absent; `why` is appended to the message.
    pub(crate) fn require(&self, d: &mut Diag<'_>, key: &str, why: &str) -> bool {
        let present = self.has(key);
        if !present {
            self.missing(d, key, why);
        }
        present
    }

    pub(crate) fn opt_str(&self, d: &mut Diag<'_>, key: &str) -> Option<At<String>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(At {
                value: s.to_string(),
                span: v.span(),
            }),
            _ => {
                self.wrong_type(d, key, v, "a string");
                None
            }
        }
    }

    pub(crate) fn opt_bool(&self, d: &mut Diag<'_>, key: &str) -> Option<At<bool>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(At {
                value: *b,
                span: v.span(),
            }),
            _ => {
                self.wrong_type(d, key, v, "true or false");
                None
            }
        }
    }

    pub(crate) fn req_str(&self, d: &mut Diag<'_>, key: &str) -> Option<At<String>> {
        if self.require(d, key, "") {
            self.opt_str(d, key)
        } else {
            None
        }
    }

    fn opt_i64(&self, d: &mut Diag<'_>, key: &str) -> Option<At<i64>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(value) => Some(At {
                    value,
                    span: v.span(),
                }),
                Err(_) => {
                    d.push(&v.span(), self.field(key), "integer out of range");
                    None
                }
            },
            _ => {
                self.wrong_type(d, key, v, "an integer");
                None
            }
        }
    }

    /// An optional integer that must lie in `lo..=hi`.
    pub(crate) fn opt_uint(
        &self,
        d: &mut Diag<'_>,
        key: &str,
        lo: u64,
        hi: u64,
    ) -> Option<At<u64>> {
        let At { value, span } = self.opt_i64(d, key)?;
        match u64::try_from(value) {
            Ok(v) if (lo..=hi).contains(&v) => Some(At { value: v, span }),
            _ => {
                d.push(
                    &span,
                    self.field(key),
                    format!(
                        "must be between {lo} and {hi}, got {value}",
                        lo = crate::errors::thousands(lo),
                        hi = crate::errors::thousands(hi)
                    ),
                );
                None
            }
        }
    }

    pub(crate) fn req_uint(
        &self,
        d: &mut Diag<'_>,
        key: &str,
        lo: u64,
        hi: u64,
    ) -> Option<At<u64>> {
        if self.require(d, key, "") {
            self.opt_uint(d, key, lo, hi)
        } else {
            None
        }
    }

    /// Like [`Table::opt_uint`] for fields stored as `u32` (`hi` must fit).
    pub(crate) fn opt_u32(&self, d: &mut Diag<'_>, key: &str, lo: u32, hi: u32) -> Option<At<u32>> {
        let At { value, span } = self.opt_uint(d, key, lo.into(), hi.into())?;
        // Cannot fail: the value was checked against a u32 bound.
        let value = u32::try_from(value).ok()?;
        Some(At { value, span })
    }

    pub(crate) fn req_u32(&self, d: &mut Diag<'_>, key: &str, lo: u32, hi: u32) -> Option<At<u32>> {
        if self.require(d, key, "") {
            self.opt_u32(d, key, lo, hi)
        } else {
            None
        }
    }

    /// An integer or a float, as a float (range checks are the caller's).
    pub(crate) fn opt_number(&self, d: &mut Diag<'_>, key: &str) -> Option<At<f64>> {
        let v = self.get(key)?;
        let value = match v.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(_) => {
                // Integers go through the integer path so that 0x… and overflow are handled.
                return self.opt_i64(d, key).map(|At { value, span }| At {
                    // Exact up to 2^53, far beyond any sensible megawatts or PUE.
                    value: value as f64,
                    span,
                });
            }
            _ => {
                self.wrong_type(d, key, v, "a number");
                return None;
            }
        };
        match value {
            Some(value) => Some(At {
                value,
                span: v.span(),
            }),
            None => {
                d.push(&v.span(), self.field(key), "invalid float");
                None
            }
        }
    }

    /// The raw value of a field that may have one of several types.
    pub(crate) fn raw(&self, key: &str) -> Option<(&'a DeValue<'i>, Range<usize>)> {
        self.get(key).map(|v| (v.get_ref(), v.span()))
    }

    /// An array of tables (`[[key]]` sections, or an inline array of inline tables).
    pub(crate) fn tables(&self, d: &mut Diag<'_>, key: &str) -> Vec<Table<'a, 'i>> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            // The header an operator would write: sites[0].nodes → [[sites.nodes]].
            let field = self.field(key);
            let header: Vec<&str> = field
                .split('.')
                .map(|part| part.split('[').next().unwrap_or(part))
                .collect();
            let expected = format!("an array of tables ([[{}]])", header.join("."));
            self.wrong_type(d, key, v, &expected);
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, item) in items.iter().enumerate() {
            let path = format!("{}[{k}]", self.field(key));
            match item.get_ref() {
                DeValue::Table(t) => out.push(Table::new(t, item.span(), path)),
                other => d.push(
                    &item.span(),
                    path,
                    format!("expected a table, found {}", article(other.type_str())),
                ),
            }
        }
        out
    }
}

/// "integer" → "an integer", for messages.
pub(crate) fn article(type_name: &str) -> String {
    let vowel = type_name.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {type_name}", if vowel { "an" } else { "a" })
}
