//! Output: JSON, tables, `--quiet` ids; money as money, names beside ids; errors by class
//! with their exit codes; a closed pipe is not an error.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::Write as _;

use anyhow::Result;
use neocloud_client::{Client, ClientError, ErrorClass};
use neocloud_types::Money;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Global, Output};

/// What every subcommand needs: the output settings and how to reach the API.
pub(crate) struct Cx<'a> {
    g: &'a Global,
}

impl<'a> Cx<'a> {
    pub(crate) fn new(g: &'a Global) -> Cx<'a> {
        Cx { g }
    }

    /// The API client.
    pub(crate) fn client(&self) -> Result<Client> {
        super::client(self.g)
    }

    /// Whether the output is JSON.
    pub(crate) fn json(&self) -> bool {
        self.g.output == Output::Json
    }

    /// Whether only ids are printed.
    pub(crate) fn quiet(&self) -> bool {
        self.g.quiet && !self.json()
    }

    /// Whether a human view (a table or a record) is printed: names are looked up only then.
    pub(crate) fn human(&self) -> bool {
        !self.json() && !self.g.quiet
    }

    /// Prints `value` as JSON (`-o json`), the ids `ids` finds in it (`--quiet`), or the
    /// human view `human` writes.
    pub(crate) fn show<T: Serialize>(
        &self,
        value: &T,
        ids: Ids,
        human: impl FnOnce(&Value, &mut Buf),
    ) -> Result<()> {
        let v = serde_json::to_value(value)?;
        let mut b = Buf::default();
        if self.json() {
            b.0 = serde_json::to_string_pretty(&v)?;
            b.0.push('\n');
        } else if self.quiet() {
            for id in ids.of(&v) {
                b.0.push_str(&id);
                b.0.push('\n');
            }
        } else {
            human(&v, &mut b);
        }
        write_stdout(b.0.as_bytes())
    }

    /// A hint for people on standard error (not under `--quiet` or `-o json`).
    pub(crate) fn hint(&self, text: &str) {
        if self.human() {
            eprintln!("{text}");
        }
    }
}

/// Where the ids of an answer are, for `--quiet`.
#[derive(Clone, Copy)]
pub(crate) enum Ids {
    /// This field of the object, or of each item of a list (`items` or a bare array).
    Field(&'static str),
    /// Nothing to print.
    None,
}

impl Ids {
    fn of(self, v: &Value) -> Vec<String> {
        let Ids::Field(k) = self else {
            return Vec::new();
        };
        let one = |x: &Value| x.get(k).map(cell).filter(|s| s != "-");
        match (v.get("items").and_then(Value::as_array), v.as_array()) {
            (Some(items), _) | (None, Some(items)) => items.iter().filter_map(one).collect(),
            _ => one(v).into_iter().collect(),
        }
    }
}

/// Text being written for people.
#[derive(Default)]
pub(crate) struct Buf(pub(crate) String);

impl Buf {
    /// Appends a line.
    pub(crate) fn line(&mut self, s: impl fmt::Display) {
        let _ = writeln!(self.0, "{s}");
    }
}

/// Writes to standard output; a reader that went away (`| head`) ends the command quietly.
pub(crate) fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ClosedPipe.into()),
        Err(e) => Err(e.into()),
    }
}

/// Standard output was closed by its reader: not a failure.
#[derive(Debug)]
pub(crate) struct ClosedPipe;

impl fmt::Display for ClosedPipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for ClosedPipe {}

/// Bad arguments found by the CLI itself (exit 2, like the argument parser's).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error.
pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// Parses `value` of option `flag` with `FromStr`, or fails as a usage error naming it.
pub(crate) fn parse<T>(flag: &str, value: &str) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    value.parse().map_err(|e| usage(format!("{flag}: {e}")))
}

/// Exit codes, by class of error (docs/cli.md).
pub(crate) mod exit {
    /// Something else failed (a local file, the ssh program).
    pub const OTHER: u8 = 1;
    /// Bad arguments, or a request the API refused as invalid.
    pub const USAGE: u8 = 2;
    /// What the command names does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// Refused as things stand: a conflict, no capacity, a quota.
    pub const CONFLICT: u8 = 4;
    /// The API key is missing, invalid or not allowed to do this.
    pub const AUTH: u8 = 5;
    /// The server failed, or could not be reached.
    pub const SERVER: u8 = 6;
}

fn class_exit(c: ErrorClass) -> u8 {
    match c {
        ErrorClass::Usage => exit::USAGE,
        ErrorClass::NotFound => exit::NOT_FOUND,
        ErrorClass::Conflict => exit::CONFLICT,
        ErrorClass::Auth => exit::AUTH,
        ErrorClass::Server | ErrorClass::Network => exit::SERVER,
    }
}

/// Reports a failed command on standard error (as JSON when `json`) and gives its exit
/// code; a closed standard output is success, silently.
pub(crate) fn report(e: &anyhow::Error, json: bool) -> u8 {
    if e.chain().any(|c| c.is::<ClosedPipe>()) {
        return 0;
    }
    if let Some(io) = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>())
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        return 0;
    }
    let client = e.chain().find_map(|c| c.downcast_ref::<ClientError>());
    let (class, code) = if let Some(c) = client {
        (c.class().as_str(), class_exit(c.class()))
    } else if e.chain().any(|c| c.is::<UsageError>()) {
        ("usage", exit::USAGE)
    } else {
        ("other", exit::OTHER)
    };
    let message = format!("{e:#}");
    if json {
        let mut body = json!({"class": class, "exit_code": code, "message": message});
        if let Some(p) = client.and_then(ClientError::problem) {
            body["problem"] = serde_json::to_value(p).unwrap_or(Value::Null);
        }
        eprintln!("{}", json!({ "error": body }));
    } else {
        eprintln!("error: {message}");
    }
    code
}

/// Reports an argument-parser error: its own text, or JSON under `-o json`.
pub(crate) fn report_parse_error(e: &clap::Error, json: bool) -> u8 {
    use clap::error::ErrorKind;
    let code = u8::try_from(e.exit_code()).unwrap_or(exit::USAGE);
    let informational = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if json && !informational {
        let text = e.render().to_string();
        let message = text
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ")
            .to_string();
        eprintln!(
            "{}",
            json!({"error": {"class": "usage", "exit_code": code, "message": message}})
        );
    } else if e.print().is_err() {
        return code;
    }
    code
}

/// A cell: `-` for nothing, lists joined by commas.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A table column: its header and how to render a cell from an item.
pub(crate) type Column<'a> = (&'a str, &'a dyn Fn(&Value) -> String);

/// Writes `items` as a table with the given columns.
pub(crate) fn table(b: &mut Buf, items: &[Value], cols: &[Column]) {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(cols.iter().map(|(h, _)| *h));
    for item in items {
        t.add_row(cols.iter().map(|(_, f)| f(item)));
    }
    b.line(t);
}

/// A column of one field.
pub(crate) fn field(name: &'static str) -> impl Fn(&Value) -> String {
    move |v: &Value| cell(v.get(name).unwrap_or(&Value::Null))
}

/// A column of an amount of money in a field (2 decimals, thousands separated).
pub(crate) fn money_field(name: &'static str) -> impl Fn(&Value) -> String {
    move |v: &Value| money_cell(v.get(name).unwrap_or(&Value::Null), false)
}

/// A column of a rate in a field ($ per GPU-hour, per MWh: 2 to 6 decimals).
pub(crate) fn rate_field(name: &'static str) -> impl Fn(&Value) -> String {
    move |v: &Value| money_cell(v.get(name).unwrap_or(&Value::Null), true)
}

fn money_cell(v: &Value, rate: bool) -> String {
    match v.as_str().and_then(|s| s.parse::<Money>().ok()) {
        Some(m) if rate => fmt_rate(m),
        Some(m) => fmt_money(m),
        None => cell(v),
    }
}

/// The items of a list answer.
pub(crate) fn items(v: &Value) -> &[Value] {
    v.get("items")
        .and_then(Value::as_array)
        .or_else(|| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Fields that hold amounts of money, and those that hold rates, in the API's answers.
const MONEY_FIELDS: &[&str] = &[
    "credit_limit",
    "total_value",
    "total",
    "shadow_total",
    "amount",
    "revenue",
    "energy_cost",
    "gross_margin",
    "remaining_value",
    "energy_cost_per_hour",
    "value",
];
const RATE_FIELDS: &[&str] = &["price_per_gpu_hour", "rate", "energy_usd_per_mwh"];

/// Writes one object as `key  value` lines (money as money; lists of objects left out).
pub(crate) fn record(v: &Value, b: &mut Buf) {
    if let Some(obj) = v.as_object() {
        let width = obj.keys().map(String::len).max().unwrap_or(0);
        for (k, val) in obj {
            if val
                .as_array()
                .is_some_and(|a| a.iter().any(Value::is_object))
            {
                continue;
            }
            let text = if MONEY_FIELDS.contains(&k.as_str()) {
                money_cell(val, false)
            } else if RATE_FIELDS.contains(&k.as_str()) {
                money_cell(val, true)
            } else {
                cell(val)
            };
            b.line(format_args!("{k:width$}  {text}"));
        }
    }
}

/// Megawatts, one decimal, from watts.
pub(crate) fn mw(watts: &Value) -> String {
    match watts.as_i64() {
        Some(w) => format!("{:.1}", w as f64 / 1e6),
        None => "-".into(),
    }
}

fn group_thousands(whole: u64) -> String {
    let digits = whole.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// An amount for people: rounded to the cent (half away from zero), thousands separated,
/// e.g. `409,968.00`. JSON output keeps the exact amount.
pub(crate) fn fmt_money(m: Money) -> String {
    let micros = i128::from(m.micros());
    let neg = micros < 0;
    let abs = micros.unsigned_abs();
    let cents = (abs + 5_000) / 10_000;
    let whole = u64::try_from(cents / 100).unwrap_or(u64::MAX);
    format!(
        "{}{}.{:02}",
        if neg && cents > 0 { "-" } else { "" },
        group_thousands(whole),
        cents % 100
    )
}

/// A rate for people: at least 2 decimals, more only where the rate has them (up to 6),
/// thousands separated, e.g. `2.85`, `0.0125`, `1,200.00`.
pub(crate) fn fmt_rate(m: Money) -> String {
    let micros = i128::from(m.micros());
    let abs = micros.unsigned_abs();
    let whole = u64::try_from(abs / 1_000_000).unwrap_or(u64::MAX);
    let mut frac = format!("{:06}", abs % 1_000_000);
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!(
        "{}{}.{frac}",
        if micros < 0 { "-" } else { "" },
        group_thousands(whole)
    )
}

/// Names of the things answers refer to by id, looked up once per command (best effort:
/// a key that may not list them shows the ids).
#[derive(Default)]
pub(crate) struct Names {
    map: HashMap<String, String>,
}

/// What to look up.
#[derive(Clone, Copy, Default)]
pub(crate) struct Need {
    pub tenants: bool,
    pub sites: bool,
    pub keys: bool,
}

impl Names {
    /// Looks up what `need` asks for, only when a human view is printed.
    pub(crate) async fn load(cx: &Cx<'_>, c: &Client, need: Need) -> Names {
        let mut map = HashMap::new();
        if !cx.human() {
            return Names { map };
        }
        if need.tenants
            && let Ok(ts) = c.tenants_all().await
        {
            map.extend(ts.into_iter().map(|t| (t.id.to_string(), t.name)));
        }
        if need.sites
            && let Ok(ss) = c.sites().await
        {
            map.extend(ss.into_iter().map(|s| (s.id.to_string(), s.name)));
        }
        if need.keys
            && let Ok(ks) = c.api_keys_all(None).await
        {
            map.extend(ks.into_iter().map(|k| (k.id.to_string(), k.name)));
        }
        Names { map }
    }

    /// Adds one name.
    pub(crate) fn insert(&mut self, id: String, name: String) {
        self.map.insert(id, name);
    }

    /// The name of the id in `v`'s field, else the id.
    pub(crate) fn of(&self, v: &Value, name: &str) -> String {
        let id = cell(v.get(name).unwrap_or(&Value::Null));
        self.map.get(&id).cloned().unwrap_or(id)
    }

    /// A column of the name of the id in a field.
    pub(crate) fn field<'n>(&'n self, name: &'static str) -> impl Fn(&Value) -> String + 'n {
        move |v: &Value| self.of(v, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Money {
        s.parse().unwrap()
    }

    #[test]
    fn money_has_two_decimals_and_thousands() {
        assert_eq!(fmt_money(m("409967.999995")), "409,968.00");
        assert_eq!(fmt_money(m("3")), "3.00");
        assert_eq!(fmt_money(m("1234567.891")), "1,234,567.89");
        assert_eq!(fmt_money(m("-12.345")), "-12.35");
        assert_eq!(fmt_money(m("-0.001")), "0.00");
        assert_eq!(fmt_money(m("999.995")), "1,000.00");
        assert_eq!(fmt_money(m("0")), "0.00");
    }

    #[test]
    fn rates_keep_their_decimals() {
        assert_eq!(fmt_rate(m("2.85")), "2.85");
        assert_eq!(fmt_rate(m("3")), "3.00");
        assert_eq!(fmt_rate(m("0.0125")), "0.0125");
        assert_eq!(fmt_rate(m("1200.5")), "1,200.50");
    }

    #[test]
    fn quiet_ids_come_from_lists_and_objects() {
        let list = json!({"items": [{"id": "a"}, {"id": "b"}]});
        assert_eq!(Ids::Field("id").of(&list), ["a", "b"]);
        assert_eq!(Ids::Field("id").of(&json!([{"id": "c"}])), ["c"]);
        assert_eq!(Ids::Field("id").of(&json!({"id": "d"})), ["d"]);
        assert!(Ids::None.of(&list).is_empty());
    }
}
