//! Name patterns such as `{parent}-leaf{n:02}`.

use std::fmt::Write;

/// A placeholder that a pattern may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Var {
    /// The site's name.
    Site,
    /// The enclosing block's name (layout levels).
    Parent,
    /// The innermost block's name (node names).
    Block,
    /// 1-based index among siblings.
    N,
    /// 1-based index within the group (or within the layout level, for blocks).
    I,
}

impl Var {
    fn name(self) -> &'static str {
        match self {
            Var::Site => "site",
            Var::Parent => "parent",
            Var::Block => "block",
            Var::N => "n",
            Var::I => "i",
        }
    }

    fn from_name(s: &str) -> Option<Var> {
        [Var::Site, Var::Parent, Var::Block, Var::N, Var::I]
            .into_iter()
            .find(|v| v.name() == s)
    }

    fn is_number(self) -> bool {
        matches!(self, Var::N | Var::I)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var, usize),
}

/// A compiled name pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    pieces: Vec<Piece>,
}

/// What the placeholders stand for when one name is rendered.
pub(crate) struct Values<'a> {
    pub site: &'a str,
    pub parent: &'a str,
    pub block: &'a str,
    pub n: u64,
    pub i: u64,
}

/// Widest zero padding; wider would only make names too long.
const MAX_WIDTH: usize = 20;

impl Pattern {
    /// Compiles `src`, allowing only the placeholders in `allowed` (the others are not
    /// defined where the pattern is used, e.g. `{block}` for nodes outside any block).
    pub(crate) fn compile(src: &str, allowed: &[Var]) -> Result<Pattern, String> {
        if src.is_empty() {
            return Err("empty name pattern".into());
        }
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = src;
        while let Some(c) = rest.chars().next() {
            match c {
                '{' => {
                    let Some(end) = rest.find('}') else {
                        return Err(format!("unclosed '{{' in pattern '{src}'"));
                    };
                    let inner = &rest[1..end];
                    if inner.contains('{') {
                        return Err(format!("unclosed '{{' in pattern '{src}'"));
                    }
                    let var = compile_placeholder(inner, allowed)?;
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(var);
                    rest = &rest[end + 1..];
                }
                '}' => return Err(format!("unbalanced '}}' in pattern '{src}'")),
                c if is_name_char(c) => {
                    text.push(c);
                    rest = &rest[c.len_utf8()..];
                }
                c => {
                    return Err(format!(
                        "'{c}' is not allowed in names (use A–Z, a–z, 0–9, '.', '_', '-')"
                    ));
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Pattern { pieces })
    }

    /// Appends the rendered name to `out`.
    pub(crate) fn render_into(&self, v: &Values<'_>, out: &mut String) {
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(Var::Site, _) => out.push_str(v.site),
                Piece::Var(Var::Parent, _) => out.push_str(v.parent),
                Piece::Var(Var::Block, _) => out.push_str(v.block),
                // Writing to a String cannot fail.
                Piece::Var(Var::N, w) => _ = write!(out, "{:0w$}", v.n, w = *w),
                Piece::Var(Var::I, w) => _ = write!(out, "{:0w$}", v.i, w = *w),
            }
        }
    }

    /// The rendered name.
    pub(crate) fn render(&self, v: &Values<'_>) -> String {
        let mut out = String::new();
        self.render_into(v, &mut out);
        out
    }
}

fn compile_placeholder(inner: &str, allowed: &[Var]) -> Result<Piece, String> {
    let (name, width) = match inner.split_once(':') {
        Some((name, width)) => (name, Some(width)),
        None => (inner, None),
    };
    let Some(var) = Var::from_name(name) else {
        return Err(format!(
            "unknown placeholder '{{{inner}}}' (allowed here: {})",
            list(allowed)
        ));
    };
    if !allowed.contains(&var) {
        return Err(format!(
            "placeholder '{{{name}}}' is not available here (allowed here: {})",
            list(allowed)
        ));
    }
    let width = match width {
        None => 0,
        Some(w) => {
            if !var.is_number() {
                return Err(format!(
                    "'{{{inner}}}': padding applies only to {{n}} and {{i}}"
                ));
            }
            let digits = !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
            match w.parse::<usize>() {
                Ok(w) if digits && w <= MAX_WIDTH => w,
                _ => {
                    return Err(format!(
                        "'{{{inner}}}': padding must be a width of at most {MAX_WIDTH}, \
                         like {{{name}:03}}"
                    ));
                }
            }
        }
    };
    Ok(Piece::Var(var, width))
}

fn list(allowed: &[Var]) -> String {
    allowed
        .iter()
        .map(|v| format!("{{{}}}", v.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Checks the naming rule shared by sites, blocks, nodes, regions and GPU models.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 || !name.chars().all(is_name_char) {
        Err(format!(
            "'{name}' is not a valid name (1–63 characters of A–Z, a–z, 0–9, '.', '_', '-')"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Var] = &[Var::Site, Var::Parent, Var::Block, Var::N, Var::I];

    fn values() -> Values<'static> {
        Values {
            site: "memphis-1",
            parent: "m1-pod03",
            block: "m1-pod03-leaf07",
            n: 7,
            i: 1234,
        }
    }

    #[test]
    fn renders_placeholders_and_padding() {
        for (src, want) in [
            ("{site}-n{i:05}", "memphis-1-n01234"),
            ("{parent}-leaf{n:02}", "m1-pod03-leaf07"),
            ("{block}-n{n:03}", "m1-pod03-leaf07-n007"),
            ("x{n}y{i}", "x7y1234"),
            ("{i:2}", "1234"),
            ("{n:0}", "7"),
            ("plain", "plain"),
        ] {
            let p = Pattern::compile(src, ALL).unwrap();
            assert_eq!(p.render(&values()), want, "{src}");
        }
    }

    #[test]
    fn rejects_bad_patterns() {
        for (src, allowed, want) in [
            ("{site", ALL, "unclosed '{'"),
            ("a{b{n}}", ALL, "unclosed '{'"),
            ("a}b", ALL, "unbalanced '}'"),
            ("{node}", ALL, "unknown placeholder '{node}'"),
            ("{}", ALL, "unknown placeholder '{}'"),
            (
                "{block}-x",
                &[Var::Site, Var::N, Var::I][..],
                "placeholder '{block}' is not available",
            ),
            ("{site:03}", ALL, "padding applies only to {n} and {i}"),
            ("{n:}", ALL, "padding must be a width"),
            ("{n:x}", ALL, "padding must be a width"),
            ("{n:-3}", ALL, "padding must be a width"),
            ("{n:99}", ALL, "padding must be a width"),
            ("a/b{n}", ALL, "'/' is not allowed in names"),
            ("a b", ALL, "' ' is not allowed in names"),
            ("", ALL, "empty name pattern"),
        ] {
            let err = Pattern::compile(src, allowed).unwrap_err();
            assert!(err.contains(want), "{src}: {err}");
        }
    }

    #[test]
    fn name_rule() {
        assert!(check_name("gpu-001.rack_2").is_ok());
        assert!(check_name(&"a".repeat(63)).is_ok());
        for bad in ["", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
