//! Rows read as text records, many to a value, for the reads that rebuild the scheduler.
//!
//! Through the driver a value costs far more than its bytes (each is copied out of the
//! database, converted and freed on its own) and a row more again (each is handed from the
//! database's thread to the reader), so a restart that read 100,000 instances of 29 columns
//! and 400,000 GPU rows spent most of its time on values and rows, not on data. Here the
//! database writes each row as one record, `=a,=b,-,=d` (each field `=` and its text, or `-`
//! for NULL), and joins the records of a bucket of rows into one value, `rec;rec;…`
//! ([`batched_sql`]); [`Fields`] splits them again. Ids, enum names and integers never
//! contain the separators; free text is escaped ([`Col::Text`]). No field is empty: SQLite's
//! `concat_ws` leaves out empty arguments as well as NULL ones, PostgreSQL's only NULL ones.
//! Everything is written in the SQL both backends understand (`string_agg` and `concat_ws`
//! are in PostgreSQL and in SQLite from 3.44).

use std::borrow::Cow;
use std::str::FromStr;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, StoreError};

/// Separates the fields of a record.
const FIELD: char = ',';
/// Separates the records of a batch.
const RECORD: char = ';';
/// Starts a field that holds a value.
const VALUE: char = '=';
/// A field that is NULL.
const NULL: &str = "-";

/// One field of a record: an SQL expression and what it holds.
#[derive(Clone, Copy)]
pub(super) enum Col {
    /// An id, an enum name or an integer (or NULL): never a separator, written as it is.
    Plain(&'static str),
    /// Free text (or NULL): written with `%`, `,` and `;` escaped as `%25`, `%2C` and `%3B`.
    Text(&'static str),
}

impl Col {
    /// The SQL expression.
    fn expr(&self) -> &'static str {
        match self {
            Col::Plain(e) | Col::Text(e) => e,
        }
    }
}

/// The SQL expression of one record of `cols`, in this order.
pub(super) fn record_sql(cols: &[Col]) -> String {
    let fields: Vec<String> = cols
        .iter()
        .map(|c| match c {
            Col::Plain(e) => format!("COALESCE('{VALUE}' || CAST({e} AS TEXT), '{NULL}')"),
            Col::Text(e) => format!(
                "COALESCE('{VALUE}' || REPLACE(REPLACE(REPLACE(CAST({e} AS TEXT), '%', '%25'), \
                 '{FIELD}', '%2C'), '{RECORD}', '%3B'), '{NULL}')"
            ),
        })
        .collect();
    // One call rather than a chain of `||`, which copies the record so far at each step.
    // Every field is a text that is neither NULL nor empty, which `concat_ws` may skip.
    format!("concat_ws('{FIELD}', {})", fields.join(", "))
}

/// A query whose rows are batches (column `batch`) of the records `record` (an expression of
/// [`record_sql`]) of the rows `from` selects (`FROM … WHERE …`), in no order: the rows are
/// bucketed by the last two characters of `key` (an id, so about 256 buckets).
pub(super) fn batched_sql(record: &str, from: &str, key: &str) -> String {
    format!(
        "SELECT string_agg(r, '{RECORD}') AS batch FROM
           (SELECT {record} AS r, substr({key}, length({key}) - 1) AS b {from}) x
         GROUP BY b"
    )
}

/// A query whose one row is one batch (column `batch`) of the records `record` of the rows
/// `from` selects (`FROM … WHERE … [GROUP BY …]`): for reads of a few thousand records, where
/// buckets would only add rows. No row selected gives a NULL batch.
pub(super) fn one_batch_sql(record: &str, from: &str) -> String {
    format!("SELECT string_agg(r, '{RECORD}') AS batch FROM (SELECT {record} AS r {from}) x")
}

/// The records of a batch row of [`batched_sql`] or [`one_batch_sql`] (none for a NULL
/// batch).
pub(super) fn records(row: &AnyRow) -> Result<impl Iterator<Item = &str>> {
    let batch: Option<&str> = row.try_get("batch")?;
    Ok(batch.into_iter().flat_map(|b| b.split(RECORD)))
}

/// The fields of one record, read in the order they were written.
pub(super) struct Fields<'a> {
    parts: std::str::Split<'a, char>,
    cols: &'static [Col],
    at: usize,
}

impl<'a> Fields<'a> {
    /// The fields of `record`, a record of `cols` ([`record_sql`]).
    pub(super) fn new(record: &'a str, cols: &'static [Col]) -> Fields<'a> {
        Fields {
            parts: record.split(FIELD),
            cols,
            at: 0,
        }
    }

    /// The fields of a row's record of `cols`, selected as column `packed`.
    pub(super) fn of(row: &'a AnyRow, cols: &'static [Col]) -> Result<Fields<'a>> {
        Ok(Fields::new(row.try_get("packed")?, cols))
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> StoreError {
        let name = self.cols.get(self.at).map_or("record", Col::expr);
        StoreError::Corrupt(format!("{name}: {what}"))
    }

    /// An error naming the field read last.
    fn corrupt_prev(&self, what: impl std::fmt::Display) -> StoreError {
        let name = self
            .at
            .checked_sub(1)
            .and_then(|i| self.cols.get(i))
            .map_or("record", Col::expr);
        StoreError::Corrupt(format!("{name}: {what}"))
    }

    /// The next field of a [`Col::Plain`], `None` for NULL.
    pub(super) fn opt(&mut self) -> Result<Option<&'a str>> {
        if matches!(self.cols.get(self.at), Some(Col::Text(_))) {
            return Err(self.corrupt("a text field read as plain"));
        }
        self.raw()
    }

    /// The next field as written, `None` for NULL.
    fn raw(&mut self) -> Result<Option<&'a str>> {
        if self.at >= self.cols.len() {
            return Err(self.corrupt("more fields than columns"));
        }
        let Some(v) = self.parts.next() else {
            return Err(self.corrupt("missing"));
        };
        self.at += 1;
        if v == NULL {
            return Ok(None);
        }
        match v.strip_prefix(VALUE) {
            Some(v) => Ok(Some(v)),
            None => Err(self.corrupt_prev(format!("'{v}' is not a field"))),
        }
    }

    /// The next field, which must not be NULL.
    pub(super) fn text(&mut self) -> Result<&'a str> {
        self.opt()?.ok_or_else(|| self.corrupt_prev("NULL"))
    }

    /// The next field parsed as `T` (an id, an enum or a number), `None` for NULL.
    pub(super) fn opt_parse<T: FromStr>(&mut self) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.opt()? {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e| self.corrupt_prev(e)),
        }
    }

    /// The next field parsed as `T`; it must not be NULL.
    pub(super) fn parse<T: FromStr>(&mut self) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.opt_parse()?.ok_or_else(|| self.corrupt_prev("NULL"))
    }

    /// The next field written as [`Col::Text`], unescaped; `None` for NULL.
    pub(super) fn opt_text(&mut self) -> Result<Option<Cow<'a, str>>> {
        if matches!(self.cols.get(self.at), Some(Col::Plain(_))) {
            return Err(self.corrupt("a plain field read as text"));
        }
        let Some(v) = self.raw()? else {
            return Ok(None);
        };
        if !v.contains('%') {
            return Ok(Some(Cow::Borrowed(v)));
        }
        let mut out = String::with_capacity(v.len());
        let mut rest = v;
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            let c = match rest.get(i..i + 3) {
                Some("%25") => '%',
                Some("%2C") => FIELD,
                Some("%3B") => RECORD,
                _ => return Err(self.corrupt_prev("a bad escape")),
            };
            out.push(c);
            rest = &rest[i + 3..];
        }
        out.push_str(rest);
        Ok(Some(Cow::Owned(out)))
    }

    /// The next field written as [`Col::Text`]; it must not be NULL.
    pub(super) fn owned_text(&mut self) -> Result<String> {
        Ok(self
            .opt_text()?
            .ok_or_else(|| self.corrupt_prev("NULL"))?
            .into_owned())
    }

    /// Checks that every field was read and none is left over.
    pub(super) fn end(mut self) -> Result<()> {
        if self.at != self.cols.len() || self.parts.next().is_some() {
            return Err(self.corrupt("the fields do not match the columns"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_every_column_in_order() {
        assert_eq!(
            record_sql(&[Col::Plain("a"), Col::Plain("n.b")]),
            "concat_ws(',', COALESCE('=' || CAST(a AS TEXT), '-'), \
             COALESCE('=' || CAST(n.b AS TEXT), '-'))"
        );
    }

    #[test]
    fn fields_split_and_unescape() {
        const NAMES: &[Col] = &[
            Col::Plain("id"),
            Col::Plain("n"),
            Col::Plain("gone"),
            Col::Text("name"),
            Col::Text("none"),
            Col::Text("empty"),
            Col::Plain("negative"),
        ];
        let mut f = Fields::new("=x_1,=42,-,=a%2Cb%3Bc%25d,-,=,=-7", NAMES);
        assert_eq!(f.text().unwrap(), "x_1");
        assert_eq!(f.parse::<u32>().unwrap(), 42);
        assert_eq!(f.opt().unwrap(), None);
        assert_eq!(f.opt_text().unwrap().as_deref(), Some("a,b;c%d"));
        assert_eq!(f.opt_text().unwrap(), None);
        assert_eq!(f.opt_text().unwrap().as_deref(), Some(""));
        assert_eq!(f.parse::<i64>().unwrap(), -7);
        f.end().unwrap();
    }

    #[test]
    fn fields_that_do_not_match_are_corrupt() {
        const NAMES: &[Col] = &[Col::Plain("a"), Col::Text("b")];
        // One field too many, one too few.
        let mut f = Fields::new("=1,=2,=3", NAMES);
        f.text().unwrap();
        f.owned_text().unwrap();
        assert!(f.end().is_err());
        let mut f = Fields::new("=1", NAMES);
        f.text().unwrap();
        assert!(f.opt_text().is_err());
        // Not a number; an empty field; a field without its mark.
        let mut f = Fields::new("=x,=b", NAMES);
        assert!(f.parse::<u32>().is_err());
        let mut f = Fields::new(",=b", NAMES);
        assert!(f.opt().is_err());
        let mut f = Fields::new("1,=b", NAMES);
        assert!(f.opt().is_err());
        // Bad escapes.
        let mut f = Fields::new("=1,=%zz", NAMES);
        f.text().unwrap();
        assert!(f.opt_text().is_err());
        let mut f = Fields::new("=1,=%2", NAMES);
        f.text().unwrap();
        assert!(f.opt_text().is_err());
        // A text field read as plain, a plain one as text.
        let mut f = Fields::new("=1,=b", NAMES);
        assert!(f.opt_text().is_err());
        let mut f = Fields::new("=1,=b", NAMES);
        f.text().unwrap();
        assert!(f.opt().is_err());
    }
}
