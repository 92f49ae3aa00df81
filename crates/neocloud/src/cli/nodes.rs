//! Nodes and their GPUs: listing, operations, health history, the XID policy.

use anyhow::Result;
use clap::Subcommand;
use neocloud_client::model::{NodeFilter, NodeOp, PageRequest, SetXidRule};
use serde_json::{Value, json};

use super::out::{Buf, Cx, Ids, cell, field, items, parse, record, table};

#[derive(Subcommand, Debug)]
pub(crate) enum NodeCmd {
    /// List nodes (by name), filtered.
    List {
        /// Only nodes of this site.
        #[arg(long)]
        site: Option<String>,
        /// Only nodes inside this block (id, name or path within --site).
        #[arg(long)]
        block: Option<String>,
        /// Only nodes in this state (available, allocated, cordoned, draining, unreachable, …).
        #[arg(long)]
        state: Option<String>,
        /// Only nodes with this GPU model.
        #[arg(long)]
        gpu_model: Option<String>,
        /// Nodes per page (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this cursor (from a previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
    },
    /// Show one node (id or name) with its GPUs and their latest telemetry.
    Show { node: String },
    /// Take a node out of new placements; what runs there stays (operator-admin).
    Cordon {
        /// Node id or name.
        node: String,
        /// Why (kept in the event log and the node's state reason).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Return a cordoned or draining node to service (operator-admin).
    Uncordon {
        /// Node id or name.
        node: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Drain a node: no new work; when its work has ended it goes to maintenance, and a
    /// contract pool it belongs to gets a spare (operator-admin).
    Drain {
        /// Node id or name.
        node: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Mark a repair done: the node runs its burn-in check and returns to service when it
    /// passes (operator-admin).
    RepairComplete {
        /// Node id or name.
        node: String,
        /// What was repaired.
        #[arg(long)]
        reason: Option<String>,
    },
    /// A node's health history: faults, what the policy did, state changes (newest first).
    Health {
        /// Node id or name.
        node: String,
        /// Entries to show (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum GpuCmd {
    /// A GPU's history by UUID, across every node it has been in (repairs, RMA).
    History {
        /// GPU UUID (GPU-…).
        uuid: String,
        /// Entries to show (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum HealthCmd {
    /// The XID policy: what each code does (built-in rules and overrides).
    Rules,
    /// Override what an XID code does (operator-admin).
    SetRule {
        /// XID code, e.g. 31.
        code: u32,
        /// ignore, record, drain or fail.
        #[arg(long)]
        action: String,
        /// Why.
        #[arg(long)]
        note: Option<String>,
    },
    /// Remove an override: the built-in rule applies again (operator-admin).
    ResetRule {
        /// XID code.
        code: u32,
    },
}

fn node_table(b: &mut Buf, rows: &[Value]) {
    table(
        b,
        rows,
        &[
            ("NAME", &field("name")),
            ("SITE", &field("site")),
            ("BLOCK", &field("block_path")),
            ("MODEL", &field("gpu_model")),
            ("GPUS", &field("gpu_count")),
            ("STATE", &field("state")),
        ],
    );
}

/// `neocloud nodes …`.
pub(crate) async fn nodes(cx: &Cx<'_>, cmd: NodeCmd) -> Result<()> {
    let c = cx.client()?;
    let ids = Ids::Field("name");
    match cmd {
        NodeCmd::List {
            site,
            block,
            state,
            gpu_model,
            limit,
            cursor,
            all,
        } => {
            let filter = NodeFilter {
                site,
                block,
                state,
                gpu_model,
            };
            let mut page = PageRequest {
                limit: Some(limit),
                cursor,
            };
            let mut rows = Vec::new();
            let next = loop {
                let p = c.nodes(&filter, &page).await?;
                rows.extend(p.items);
                match p.next_cursor {
                    Some(n) if all && Some(&n) != page.cursor.as_ref() => page.cursor = Some(n),
                    next => break next,
                }
            };
            let page = neocloud_client::model::Page {
                items: rows,
                next_cursor: next.clone(),
            };
            cx.show(&page, ids, |v, b| node_table(b, items(v)))?;
            if let Some(n) = &next {
                cx.hint(&format!("(more nodes: add --cursor {n}, or --all)"));
            }
            Ok(())
        }
        NodeCmd::Show { node } => cx.show(&c.node(&node).await?, ids, |v, b| {
            record(v, b);
            if let Some(gpus) = v.get("gpus").and_then(Value::as_array) {
                b.line("");
                table(
                    b,
                    gpus,
                    &[
                        ("GPU", &field("index")),
                        ("UUID", &field("uuid")),
                        ("HEALTH", &field("health")),
                        ("TEMP °C", &|v: &Value| telemetry(v, "temperature_c")),
                        ("POWER W", &|v: &Value| telemetry(v, "power_watts")),
                        ("UTIL %", &|v: &Value| telemetry(v, "utilization_pct")),
                        ("ECC UNCORR", &|v: &Value| telemetry(v, "ecc_uncorrected")),
                    ],
                );
            }
        }),
        NodeCmd::Cordon { node, reason } => node_op(cx, &c, &node, NodeOp::Cordon, reason).await,
        NodeCmd::Uncordon { node, reason } => {
            node_op(cx, &c, &node, NodeOp::Uncordon, reason).await
        }
        NodeCmd::Drain { node, reason } => node_op(cx, &c, &node, NodeOp::Drain, reason).await,
        NodeCmd::RepairComplete { node, reason } => {
            node_op(cx, &c, &node, NodeOp::RepairComplete, reason).await
        }
        NodeCmd::Health { node, limit } => {
            let events = c.node_health(&node, limit).await?;
            cx.show(&events, Ids::None, health_table)
        }
    }
}

fn telemetry(v: &Value, key: &str) -> String {
    v.get("telemetry")
        .and_then(|t| t.get(key))
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

fn health_table(v: &Value, b: &mut Buf) {
    table(
        b,
        items(v),
        &[
            ("AT", &field("at")),
            ("NODE", &field("node")),
            ("GPU", &field("gpu_index")),
            ("KIND", &field("kind")),
            ("CODE", &field("code")),
            ("ACTION", &field("action")),
            ("DETAIL", &field("detail")),
        ],
    );
}

async fn node_op(
    cx: &Cx<'_>,
    c: &neocloud_client::Client,
    node: &str,
    op: NodeOp,
    reason: Option<String>,
) -> Result<()> {
    let n = c.node_operation(node, op, reason).await?;
    cx.show(&n, Ids::Field("name"), |v, b| {
        node_table(b, std::slice::from_ref(v));
        if let Some(r) = v.get("state_reason").and_then(Value::as_str) {
            b.line(format_args!("reason: {r}"));
        }
    })
}

/// `neocloud gpus …`.
pub(crate) async fn gpus(cx: &Cx<'_>, cmd: GpuCmd) -> Result<()> {
    let c = cx.client()?;
    match cmd {
        GpuCmd::History { uuid, limit } => {
            let h = c.gpu_history(&uuid, limit).await?;
            cx.show(&h, Ids::Field("uuid"), |v, b| {
                for k in ["uuid", "node", "index", "health", "failures"] {
                    b.line(format_args!(
                        "{k:<9} {}",
                        cell(v.get(k).unwrap_or(&Value::Null))
                    ));
                }
                b.line("");
                health_table(v.get("events").unwrap_or(&json!([])), b);
            })
        }
    }
}

/// `neocloud health …`.
pub(crate) async fn health(cx: &Cx<'_>, cmd: HealthCmd) -> Result<()> {
    let c = cx.client()?;
    let rules = match cmd {
        HealthCmd::Rules => c.health_rules().await?,
        HealthCmd::SetRule { code, action, note } => {
            let body = SetXidRule {
                action: parse("--action", &action)?,
                note,
            };
            c.set_health_rule(code, &body).await?
        }
        HealthCmd::ResetRule { code } => c.reset_health_rule(code).await?,
    };
    cx.show(&rules, Ids::Field("code"), |v, b| {
        table(
            b,
            items(v),
            &[
                ("XID", &field("code")),
                ("ACTION", &field("action")),
                ("SOURCE", &field("source")),
                ("MEANING", &field("meaning")),
            ],
        );
    })
}
