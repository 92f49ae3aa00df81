//! Errors that point at a line, a column and a field.

use std::fmt;
use std::ops::Range;

/// Most errors reported for one file; the last slot says how many more were found.
pub const MAX_ERRORS: usize = 100;

/// One problem in a fleet file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetError {
    /// 1-based line of the offending value, or of the table's header when a value is missing.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Path of the field, e.g. `sites[0].node_groups[1].gpu_model`; empty for TOML syntax
    /// errors and for the note that more errors were left out.
    pub field: String,
    /// What is wrong, for an operator.
    pub message: String,
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: ", self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for FleetError {}

/// Every problem found in a fleet file, in file order, at most [`MAX_ERRORS`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetErrors(pub Vec<FleetError>);

impl fmt::Display for FleetErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, e) in self.0.iter().enumerate() {
            if k > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FleetErrors {}

/// Collects errors by byte offset while the file is checked; line and column are worked
/// out once at the end, when the errors are also put in file order.
pub(crate) struct Diag<'s> {
    src: &'s str,
    line_starts: Vec<usize>,
    found: Vec<(usize, String, String)>,
}

impl<'s> Diag<'s> {
    pub(crate) fn new(src: &'s str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(k, _)| k + 1))
            .collect();
        Diag {
            src,
            line_starts,
            found: Vec::new(),
        }
    }

    pub(crate) fn push(
        &mut self,
        span: &Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.found.push((span.start, field.into(), message.into()));
    }

    pub(crate) fn count(&self) -> usize {
        self.found.len()
    }

    /// 1-based line of a byte offset, for messages that refer to another place in the file.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.line_col(offset).0
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        // A span never starts inside a character, but counting bytes is a safe fallback.
        let column = self
            .src
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, column + 1)
    }

    pub(crate) fn into_errors(mut self) -> FleetErrors {
        // Stable, so that two errors at one place keep the order they were found in.
        self.found.sort_by_key(|(offset, _, _)| *offset);
        let total = self.found.len();
        let mut errors = Vec::with_capacity(total.min(MAX_ERRORS));
        for (k, (offset, field, message)) in self.found.iter().enumerate() {
            let (line, column) = self.line_col(*offset);
            if total > MAX_ERRORS && k == MAX_ERRORS - 1 {
                errors.push(FleetError {
                    line,
                    column,
                    field: String::new(),
                    message: format!(
                        "{} more errors not shown (fix the ones above first)",
                        total - k
                    ),
                });
                break;
            }
            errors.push(FleetError {
                line,
                column,
                field: field.clone(),
                message: message.clone(),
            });
        }
        FleetErrors(errors)
    }
}

/// `1234567` → `1,234,567`: counts in messages are read by people.
pub(crate) fn thousands(n: impl Into<u128>) -> String {
    let digits = n.into().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let d = Diag::new("a = 1\nbé = \"x\"\n\nz");
        assert_eq!(d.line_col(0), (1, 1));
        assert_eq!(d.line_col(4), (1, 5));
        assert_eq!(d.line_col(6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(d.line_col(11), (2, 5));
        assert_eq!(d.line_col(16), (3, 1));
        assert_eq!(d.line_col(17), (4, 1));
        assert_eq!(d.line_col(999), (4, 2));
    }

    #[test]
    fn errors_come_out_sorted_and_capped() {
        let src = "x\n".repeat(300);
        let mut d = Diag::new(&src);
        for k in (0..250).rev() {
            d.push(&(k * 2..k * 2 + 1), format!("f{k}"), "bad");
        }
        let errors = d.into_errors().0;
        assert_eq!(errors.len(), MAX_ERRORS);
        assert_eq!(errors[0].line, 1);
        assert_eq!(errors[0].field, "f0");
        assert_eq!(errors[98].line, 99);
        let last = &errors[99];
        assert_eq!(last.line, 100);
        assert_eq!(
            last.message,
            "151 more errors not shown (fix the ones above first)"
        );
    }

    #[test]
    fn display_puts_one_error_per_line() {
        let e = FleetErrors(vec![
            FleetError {
                line: 12,
                column: 5,
                field: "sites[0].nodes[3].gpu_model".into(),
                message: "unknown GPU model 'H900'".into(),
            },
            FleetError {
                line: 1,
                column: 2,
                field: String::new(),
                message: "syntax error".into(),
            },
        ]);
        assert_eq!(
            e.to_string(),
            "line 12, column 5: sites[0].nodes[3].gpu_model: unknown GPU model 'H900'\n\
             line 1, column 2: syntax error"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0u32), "0");
        assert_eq!(thousands(999u32), "999");
        assert_eq!(thousands(1000u32), "1,000");
        assert_eq!(thousands(2_000_000u32), "2,000,000");
        assert_eq!(
            thousands(u128::from(u64::MAX) * 10),
            "184,467,440,737,095,516,150"
        );
    }
}
