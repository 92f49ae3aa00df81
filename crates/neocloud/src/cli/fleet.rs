//! Fleet: fleet files, the GPU model catalog, sites and blocks.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use neocloud_client::model::CreateGpuModel;
use serde_json::Value;

use super::out::{Buf, Column, Cx, Ids, cell, field, items, mw, record, table, usage};

#[derive(Subcommand, Debug)]
pub(crate) enum FleetCmd {
    /// Validate and apply a fleet file (see docs/fleet-file.md).
    Import {
        /// The fleet file (TOML); `-` reads standard input.
        file: PathBuf,
        /// Only report what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the Memphis demo fleet as a fleet file.
    Demo {
        /// Shrink factor, 0 < F <= 1.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum GpuModelCmd {
    /// List the catalog.
    List,
    /// Show one model.
    Show { name: String },
    /// Add a model (operator-admin).
    Create {
        /// Catalog name, e.g. MI325X.
        name: String,
        /// Maker.
        #[arg(long)]
        vendor: Option<String>,
        /// Device memory, GiB.
        #[arg(long)]
        memory_gib: u32,
        /// Power at full load, watts.
        #[arg(long)]
        tdp_watts: u32,
        /// How one board's GPUs connect: nvswitch, groups:N,M,… (e.g. groups:2,4 for PCIe
        /// pairs and quads) or aligned; by default the rule for the name.
        #[arg(long)]
        topology: Option<String>,
        /// Makes a retry safe: the same key never creates twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum SiteCmd {
    /// List sites with node, GPU and power totals.
    List,
    /// Show one site (id or name).
    Show { site: String },
    /// Cap a site's power below its budget (operator-admin); new placements stay under it.
    PowerCap {
        /// Site id or name.
        site: String,
        /// Facility watts, or `none` to remove the cap.
        #[arg(long)]
        watts: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum BlockCmd {
    /// List blocks.
    List {
        /// Only blocks of this site.
        #[arg(long)]
        site: Option<String>,
    },
    /// Show one block.
    Show { id: String },
}

/// `neocloud fleet …`.
pub(crate) async fn fleet(cx: &Cx<'_>, cmd: FleetCmd) -> Result<()> {
    match cmd {
        FleetCmd::Demo { scale } => {
            let toml = neocloud_fleet::demo_fleet_toml(scale).map_err(usage)?;
            super::out::write_stdout(toml.as_bytes())
        }
        FleetCmd::Import { file, dry_run } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let report = cx.client()?.fleet_import(&text, dry_run).await?;
            cx.show(&report, Ids::None, |v, b| {
                let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                let verb = if dry_run { "would change" } else { "changed" };
                b.line(format_args!(
                    "fleet import {verb}: sites +{} ~{}, blocks +{} ~{} -{}, nodes +{} ~{} -{} ({} unchanged), GPUs +{} -{}, GPU models +{} ~{}",
                    n("sites_added"),
                    n("sites_updated"),
                    n("blocks_added"),
                    n("blocks_updated"),
                    n("blocks_removed"),
                    n("nodes_added"),
                    n("nodes_updated"),
                    n("nodes_removed"),
                    n("nodes_unchanged"),
                    n("gpus_added"),
                    n("gpus_removed"),
                    n("gpu_models_added"),
                    n("gpu_models_updated")
                ));
            })
        }
    }
}

/// `neocloud gpu-models …`.
pub(crate) async fn gpu_models(cx: &Cx<'_>, cmd: GpuModelCmd) -> Result<()> {
    let c = cx.client()?;
    let cols: &[Column] = &[
        ("NAME", &field("name")),
        ("VENDOR", &field("vendor")),
        ("MEMORY GiB", &field("memory_gib")),
        ("TDP W", &field("tdp_watts")),
        ("BUILT-IN", &field("builtin")),
        ("TOPOLOGY", &field("topology")),
    ];
    let ids = Ids::Field("name");
    match cmd {
        GpuModelCmd::List => {
            let list = neocloud_client::model::List {
                items: c.gpu_models().await?,
            };
            cx.show(&list, ids, |v, b| table(b, items(v), cols))
        }
        GpuModelCmd::Show { name } => cx.show(&c.gpu_model(&name).await?, ids, record),
        GpuModelCmd::Create {
            name,
            vendor,
            memory_gib,
            tdp_watts,
            topology,
            idempotency_key,
        } => {
            let body = CreateGpuModel {
                name,
                vendor,
                memory_gib,
                tdp_watts,
                topology,
            };
            let m = c
                .create_gpu_model(&body, idempotency_key.as_deref())
                .await?;
            cx.show(&m, ids, record)
        }
    }
}

fn gpus_by_model(v: &Value) -> String {
    v.get("gpus_by_model")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| format!("{}×{}", cell(&m["gpus"]), cell(&m["gpu_model"])))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// `neocloud sites …`.
pub(crate) async fn sites(cx: &Cx<'_>, cmd: SiteCmd) -> Result<()> {
    let c = cx.client()?;
    let power = |v: &Value| {
        format!(
            "{} / {}",
            mw(&v["peak_power_watts"]),
            mw(&v["power_budget_watts"])
        )
    };
    let cols: &[Column] = &[
        ("NAME", &field("name")),
        ("REGION", &field("region")),
        ("KIND", &field("kind")),
        ("NODES", &field("node_count")),
        ("GPUS", &field("gpu_count")),
        ("MODELS", &gpus_by_model),
        ("PEAK/BUDGET MW", &power),
    ];
    let ids = Ids::Field("id");
    match cmd {
        SiteCmd::List => {
            let list = neocloud_client::model::List {
                items: c.sites().await?,
            };
            cx.show(&list, ids, |v, b| table(b, items(v), cols))
        }
        SiteCmd::PowerCap { site, watts } => {
            let w = if watts == "none" {
                None
            } else {
                Some(
                    watts
                        .parse::<i64>()
                        .map_err(|_| usage("--watts must be a number or `none`"))?,
                )
            };
            cx.show(&c.set_power_cap(&site, w).await?, ids, record)
        }
        SiteCmd::Show { site } => cx.show(&c.site(&site).await?, ids, |v, b: &mut Buf| {
            record(v, b);
            b.line(format_args!("{:18}  {}", "gpus_by_model", gpus_by_model(v)));
        }),
    }
}

/// `neocloud blocks …`.
pub(crate) async fn blocks(cx: &Cx<'_>, cmd: BlockCmd) -> Result<()> {
    let c = cx.client()?;
    let cols: &[Column] = &[
        ("PATH", &field("path")),
        ("KIND", &field("kind")),
        ("NODES", &field("node_count")),
        ("GPUS", &field("gpu_count")),
        ("ID", &field("id")),
    ];
    let ids = Ids::Field("id");
    match cmd {
        BlockCmd::List { site } => {
            let list = neocloud_client::model::List {
                items: c.blocks(site.as_deref()).await?,
            };
            cx.show(&list, ids, |v, b| table(b, items(v), cols))
        }
        BlockCmd::Show { id } => cx.show(&c.block(&id).await?, ids, record),
    }
}
