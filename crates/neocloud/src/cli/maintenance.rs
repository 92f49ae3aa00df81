//! Planned maintenance windows (operator).

use anyhow::Result;
use clap::Subcommand;
use neocloud_client::model::{List, ScheduleMaintenance};
use neocloud_types::Timestamp;
use serde_json::Value;

use super::out::{Buf, Cx, Ids, field, items, parse, record, table, usage};

#[derive(Subcommand, Debug)]
pub(crate) enum MaintenanceCmd {
    /// Announce a maintenance window over nodes or a block.
    ///
    /// From now on the nodes take no new work. Gangs that can (on_node_failure=replace)
    /// move off at once to healthy nodes of their block; other work there gets a notice
    /// (state preempting) that runs out when the window begins, and is stopped then.
    /// Each tenant concerned gets a maintenance.scheduled event (and webhook). At --start
    /// the nodes go to `maintenance`; at the end to burn-in (nodes with an agent) or
    /// straight back to service.
    ///
    /// Examples:
    ///   neocloud maintenance schedule --site memphis-1 --block m1-pod01/m1-pod01-leaf02 \
    ///       --start +1h --for 4h --reason "leaf switch firmware"
    ///   neocloud maintenance schedule --node m1-pod01-leaf01-n01 --node m1-pod01-leaf01-n02 \
    ///       --start 2026-12-24T02:00:00Z --end 2026-12-24T06:00:00Z --reason "PSU swap"
    #[command(verbatim_doc_comment)]
    Schedule {
        /// A node (id or name), repeatable; or give --block.
        #[arg(long = "node", value_name = "NODE", conflicts_with = "block")]
        nodes: Vec<String>,
        /// A block (id, name or path such as m1-pod01/m1-pod01-leaf02): every node inside
        /// it.
        #[arg(long)]
        block: Option<String>,
        /// The block's site (id or name), needed with a block name or path.
        #[arg(long)]
        site: Option<String>,
        /// When it begins: RFC 3339, `now`, or `+DURATION` from now (+90m, +2h, +1d).
        #[arg(long)]
        start: String,
        /// When it ends, RFC 3339 (at most 30 days after the start); or give --for.
        #[arg(long, conflicts_with = "duration")]
        end: Option<String>,
        /// How long it lasts: 90m, 4h, 2d (or seconds: 3600s).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Why: tenants read it in their notices.
        #[arg(long)]
        reason: String,
        /// Makes a retry safe: the same key never schedules twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List maintenance windows, latest start first.
    List {
        /// Only windows in this state: scheduled, in_progress, completed or cancelled.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one window, with its nodes.
    #[command(visible_alias = "show")]
    Get {
        /// Window id (mnt_…).
        id: String,
    },
    /// Call off a window that has not begun (its nodes take work again, its notices are
    /// withdrawn), or end one in progress early.
    Cancel {
        /// Window id (mnt_…).
        id: String,
    },
}

/// Parses `90m`, `4h`, `2d`, `3600s` (or a bare number of seconds) into seconds.
fn seconds(flag: &str, s: &str) -> Result<i64> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = digits.parse().map_err(|_| {
        usage(format!(
            "{flag}: `{s}` is not a duration such as 90m, 4h or 2d"
        ))
    })?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(usage(format!(
                "{flag}: unknown unit in `{s}` (use s, m, h or d)"
            )));
        }
    };
    n.checked_mul(unit)
        .filter(|&secs| secs > 0)
        .ok_or_else(|| usage(format!("{flag}: `{s}` is not a positive duration")))
}

fn start_at(s: &str) -> Result<Timestamp> {
    let now = Timestamp::now().floor_to_second();
    match s.strip_prefix('+') {
        _ if s == "now" => Ok(now),
        Some(d) => Ok(now.plus_seconds(seconds("--start", d)?)),
        None => parse("--start", s),
    }
}

/// A window as a record, its node list cut short (`-o json` has every node).
fn window(v: &Value, b: &mut Buf) {
    let mut v = v.clone();
    if let Some(nodes) = v.get("nodes").and_then(Value::as_array) {
        let names: Vec<&str> = nodes.iter().filter_map(Value::as_str).collect();
        let mut text = format!(
            "{}: {}",
            names.len(),
            names[..names.len().min(4)].join(", ")
        );
        if names.len() > 4 {
            text.push_str(", … (-o json lists them all)");
        }
        v["nodes"] = Value::String(text);
    }
    record(&v, b);
}

/// `neocloud maintenance …`.
pub(crate) async fn maintenance(cx: &Cx<'_>, cmd: MaintenanceCmd) -> Result<()> {
    let c = cx.client()?;
    let ids = Ids::Field("id");
    match cmd {
        MaintenanceCmd::Schedule {
            nodes,
            block,
            site,
            start,
            end,
            duration,
            reason,
            idempotency_key,
        } => {
            if nodes.is_empty() && block.is_none() {
                return Err(usage("give the nodes (--node, repeatable) or a --block"));
            }
            let start_at = start_at(&start)?;
            let end_at = match (end, duration) {
                (Some(e), _) => parse("--end", &e)?,
                (None, Some(d)) => start_at.plus_seconds(seconds("--for", &d)?),
                (None, None) => return Err(usage("give --end or --for")),
            };
            let body = ScheduleMaintenance {
                nodes,
                block,
                site,
                start_at,
                end_at,
                reason,
            };
            let w = c
                .schedule_maintenance(&body, idempotency_key.as_deref())
                .await?;
            cx.show(&w, ids, window)?;
            let plural = |n: usize, one: &str| {
                if n == 1 {
                    format!("1 {one}")
                } else {
                    format!("{n} {one}s")
                }
            };
            cx.hint(&format!(
                "\n{} cordoned; {} notified. Call it off: neocloud maintenance cancel {}",
                plural(w.nodes.len(), "node"),
                plural(w.notified_instances as usize, "instance"),
                w.id
            ));
            Ok(())
        }
        MaintenanceCmd::List { state } => {
            let state = state.map(|s| parse("--state", &s)).transpose()?;
            let list = List {
                items: c.maintenance_windows(state).await?,
            };
            let count = |v: &Value| {
                v.get("nodes")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
                    .to_string()
            };
            let scope = |v: &Value| match v.get("block").and_then(Value::as_str) {
                Some(b) => b.to_string(),
                None => "(nodes)".to_string(),
            };
            cx.show(&list, ids, |v, b| {
                table(
                    b,
                    items(v),
                    &[
                        ("ID", &field("id")),
                        ("STATE", &field("state")),
                        ("START", &field("start_at")),
                        ("END", &field("end_at")),
                        ("BLOCK", &scope),
                        ("NODES", &count),
                        ("NOTIFIED", &field("notified_instances")),
                        ("REASON", &field("reason")),
                    ],
                )
            })
        }
        MaintenanceCmd::Get { id } => cx.show(&c.maintenance_window(&id).await?, ids, window),
        MaintenanceCmd::Cancel { id } => cx.show(&c.cancel_maintenance(&id).await?, ids, window),
    }
}

#[cfg(test)]
mod tests {
    use super::seconds;

    #[test]
    fn durations() {
        assert_eq!(seconds("--for", "90m").unwrap(), 5400);
        assert_eq!(seconds("--for", "4h").unwrap(), 14_400);
        assert_eq!(seconds("--for", "2d").unwrap(), 172_800);
        assert_eq!(seconds("--for", "3600").unwrap(), 3600);
        assert_eq!(seconds("--for", "3600s").unwrap(), 3600);
        for bad in ["", "h", "0h", "-1h", "2w", "1.5h", "99999999999999999999d"] {
            let e = seconds("--for", bad).unwrap_err().to_string();
            assert!(e.contains("--for"), "{bad}: {e}");
        }
    }
}
