//! Demand traces: one request per row, as CSV (with a header) or JSON Lines.
//!
//! Columns (any order in CSV; keys in JSONL): `arrival_s` (seconds after the scenario's
//! start), `tenant`, `class` (`reserved`, `internal`, `on-demand`, `spot`), `gpu_model`,
//! `shape` (`gpus:N` or `nodes:N[:level]`), `duration_s`, `max_wait_s`, and optionally `site`.
//! CSV fields are plain: no quoting, no commas inside a field. Rows need not be sorted.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "floats here are workload figures (hours, rates, counts) checked finite and in range before they become integers, and `as` saturates; money never passes through a float"
)]

use std::fmt::Write as _;
use std::path::Path;

use neocloud_types::{Class, Shape};
use serde::Deserialize;

use crate::error::SimError;
use crate::scenario::{parse_shape, shape_str};

/// One request of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRow {
    /// 1-based line of the file it came from.
    pub row: usize,
    /// Seconds after the scenario's start.
    pub arrival_s: i64,
    /// Tenant name.
    pub tenant: String,
    /// Class of service.
    pub class: Class,
    /// GPU model asked for.
    pub gpu_model: String,
    /// Shape.
    pub shape: Shape,
    /// How long it runs once placed, seconds.
    pub duration_s: i64,
    /// How long it may wait in the queue, seconds (0: placed at once or refused).
    pub max_wait_s: i64,
    /// Site asked for, if any.
    pub site: Option<String>,
}

const COLUMNS: [&str; 7] = [
    "arrival_s",
    "tenant",
    "class",
    "gpu_model",
    "shape",
    "duration_s",
    "max_wait_s",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    arrival_s: f64,
    tenant: String,
    class: String,
    gpu_model: String,
    shape: String,
    duration_s: f64,
    max_wait_s: f64,
    #[serde(default)]
    site: Option<String>,
}

/// Reads a trace file: JSON Lines when its name ends in `.jsonl`, CSV otherwise.
pub fn read_trace(path: &Path) -> Result<Vec<TraceRow>, SimError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
        what: "trace",
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |row: usize, message: String| SimError::TraceRow {
        path: path.to_path_buf(),
        row,
        message,
    };
    if path.extension().is_some_and(|e| e == "jsonl") {
        parse_jsonl(&text).map_err(|(row, m)| bad(row, m))
    } else {
        parse_csv(&text).map_err(|(row, m)| bad(row, m))
    }
}

fn seconds(name: &str, s: &str) -> Result<i64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{name} '{s}' is not a number"))?;
    seconds_f(name, v)
}

fn seconds_f(name: &str, v: f64) -> Result<i64, String> {
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{name} must be a number of seconds ≥ 0, got {v}"));
    }
    if v > 1e12 {
        return Err(format!("{name} {v} is too large"));
    }
    Ok(v.round() as i64)
}

#[allow(clippy::too_many_arguments)]
fn row_of(
    row: usize,
    arrival: i64,
    tenant: &str,
    class: &str,
    model: &str,
    shape: &str,
    duration: i64,
    wait: i64,
    site: Option<&str>,
) -> Result<TraceRow, String> {
    if tenant.trim().is_empty() {
        return Err("tenant is empty".to_string());
    }
    if model.trim().is_empty() {
        return Err("gpu_model is empty".to_string());
    }
    if duration == 0 {
        return Err("duration_s must be more than 0".to_string());
    }
    Ok(TraceRow {
        row,
        arrival_s: arrival,
        tenant: tenant.trim().to_string(),
        class: class
            .trim()
            .parse()
            .map_err(|e: String| format!("class: {e}"))?,
        gpu_model: model.trim().to_string(),
        shape: parse_shape(shape)?,
        duration_s: duration,
        max_wait_s: wait,
        site: site
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    })
}

/// Parses CSV trace text; an error names the 1-based line.
pub fn parse_csv(text: &str) -> Result<Vec<TraceRow>, (usize, String)> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((hline, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut at = [0usize; 7];
    for (k, name) in COLUMNS.iter().enumerate() {
        at[k] = cols.iter().position(|c| c == name).ok_or_else(|| {
            (
                hline + 1,
                format!(
                    "the header lacks column '{name}' (expected {})",
                    COLUMNS.join(",")
                ),
            )
        })?;
    }
    let site_at = cols.iter().position(|c| *c == "site");
    let mut out = Vec::new();
    for (i, line) in lines {
        let row = i + 1;
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != cols.len() {
            return Err((
                row,
                format!("{} fields, the header has {}", f.len(), cols.len()),
            ));
        }
        let r = (|| {
            row_of(
                row,
                seconds("arrival_s", f[at[0]])?,
                f[at[1]],
                f[at[2]],
                f[at[3]],
                f[at[4]],
                seconds("duration_s", f[at[5]])?,
                seconds("max_wait_s", f[at[6]])?,
                site_at.map(|s| f[s]),
            )
        })()
        .map_err(|m| (row, m))?;
        out.push(r);
    }
    Ok(out)
}

/// Parses JSON Lines trace text; an error names the 1-based line.
pub fn parse_jsonl(text: &str) -> Result<Vec<TraceRow>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let row = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let j: JsonRow = serde_json::from_str(line).map_err(|e| (row, e.to_string()))?;
        let r = (|| {
            row_of(
                row,
                seconds_f("arrival_s", j.arrival_s)?,
                &j.tenant,
                &j.class,
                &j.gpu_model,
                &j.shape,
                seconds_f("duration_s", j.duration_s)?,
                seconds_f("max_wait_s", j.max_wait_s)?,
                j.site.as_deref(),
            )
        })()
        .map_err(|m| (row, m))?;
        out.push(r);
    }
    Ok(out)
}

/// Writes rows as CSV trace text (with the `site` column), the format [`parse_csv`] reads.
pub fn write_csv(rows: &[TraceRow]) -> String {
    let mut s = String::from("arrival_s,tenant,class,gpu_model,shape,duration_s,max_wait_s,site\n");
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{}",
            r.arrival_s,
            r.tenant,
            r.class,
            r.gpu_model,
            shape_str(&r.shape),
            r.duration_s,
            r.max_wait_s,
            r.site.as_deref().unwrap_or("")
        );
    }
    s
}
