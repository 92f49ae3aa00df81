//! Reserved capacity: quotes, contracts, their outages, and the capacity view.

use anyhow::Result;
use clap::Subcommand;
use neocloud_client::model::{AmendContract, ContractTerms, List};
use neocloud_types::Timestamp;
use serde_json::Value;

use super::out::{
    Column, Cx, Ids, Names, Need, cell, field, items, money_field, mw, parse, rate_field, record,
    table, usage,
};

/// Terms of a quote or a contract.
#[derive(clap::Args, Debug)]
pub(crate) struct TermsArgs {
    /// Tenant id or name.
    #[arg(long)]
    tenant: Option<String>,
    /// GPU model.
    #[arg(long)]
    gpu_model: String,
    /// GPUs (a multiple of the model's GPUs per node).
    #[arg(long)]
    gpus: u32,
    /// Start, RFC 3339 (e.g. 2027-01-01T00:00:00Z), or `now`.
    #[arg(long, default_value = "now")]
    start: String,
    /// End, RFC 3339; or give --years.
    #[arg(long, conflicts_with = "years")]
    end: Option<String>,
    /// Length of the term in calendar years: it ends on the same date and time (UTC).
    #[arg(long)]
    years: Option<u32>,
    /// Site id or name.
    #[arg(long)]
    site: Option<String>,
    /// Keep the pool in one block of this level: nvlink_domain, leaf_group or pod.
    #[arg(long)]
    single_block: Option<String>,
    /// Availability promised, percent (default 99.5).
    #[arg(long)]
    sla: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum QuoteCmd {
    /// Quote reserved capacity.
    Create(TermsArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum ContractCmd {
    /// Sign a contract (re-checked atomically against the calendar).
    Sign(TermsArgs),
    /// List contracts.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show a contract.
    Show { id: String },
    /// Cancel a contract.
    Cancel { id: String },
    /// Outages of a contract's reserved capacity (failed pool nodes and their replacement).
    Outages { id: String },
    /// Amend a contract: more GPUs and/or a later end (a renewal).
    Amend {
        /// Contract id.
        id: String,
        /// New GPU count (at least the current one).
        #[arg(long)]
        gpus: Option<u32>,
        /// New end, RFC 3339 (at or after the current end).
        #[arg(long)]
        end: Option<String>,
    },
}

impl TermsArgs {
    fn terms(&self) -> Result<ContractTerms> {
        // Whole seconds, as the server counts a term.
        let start: Timestamp = if self.start == "now" {
            Timestamp::now().floor_to_second()
        } else {
            parse("--start", &self.start)?
        };
        let end: Timestamp = match (&self.end, self.years) {
            (Some(e), _) => parse("--end", e)?,
            (None, Some(y)) => i32::try_from(y)
                .ok()
                .and_then(|y| y.checked_mul(12))
                .and_then(|m| start.plus_months(m))
                .ok_or_else(|| usage(format!("--years {y} is too long")))?,
            (None, None) => return Err(usage("give --end or --years")),
        };
        Ok(ContractTerms {
            tenant_id: self.tenant.clone(),
            gpu_model: self.gpu_model.clone(),
            gpu_count: self.gpus,
            start_at: start,
            end_at: end,
            site: self.site.clone(),
            single_block: self
                .single_block
                .as_deref()
                .map(|b| parse("--single-block", b))
                .transpose()?,
            sla_percent: self.sla.clone(),
        })
    }
}

/// `neocloud quotes …`.
pub(crate) async fn quotes(cx: &Cx<'_>, cmd: QuoteCmd) -> Result<()> {
    let QuoteCmd::Create(terms) = cmd;
    let q = cx.client()?.quote(&terms.terms()?).await?;
    cx.show(&q, Ids::None, record)
}

/// `neocloud contracts …`.
pub(crate) async fn contracts(cx: &Cx<'_>, cmd: ContractCmd) -> Result<()> {
    let c = cx.client()?;
    let ids = Ids::Field("id");
    match cmd {
        ContractCmd::Sign(terms) => {
            let k = c.sign_contract(&terms.terms()?, None).await?;
            cx.show(&k, ids, record)
        }
        ContractCmd::List { tenant } => {
            let list = List {
                items: c.contracts_all(tenant.as_deref()).await?,
            };
            let names = Names::load(
                cx,
                &c,
                Need {
                    tenants: true,
                    sites: true,
                    keys: false,
                },
            )
            .await;
            let cols: &[Column] = &[
                ("ID", &field("id")),
                ("TENANT", &names.field("tenant_id")),
                ("SITE", &names.field("site_id")),
                ("MODEL", &field("gpu_model")),
                ("GPUS", &field("gpu_count")),
                ("START", &field("start_at")),
                ("END", &field("end_at")),
                ("$/GPU-H", &rate_field("price_per_gpu_hour")),
                ("VALUE $", &money_field("total_value")),
                ("STATE", &field("state")),
            ];
            cx.show(&list, ids, |v, b| table(b, items(v), cols))
        }
        ContractCmd::Show { id } => cx.show(&c.contract(&id).await?, ids, record),
        ContractCmd::Amend { id, gpus, end } => {
            let body = AmendContract {
                gpu_count: gpus,
                end_at: end.map(|e| parse("--end", &e)).transpose()?,
            };
            cx.show(&c.amend_contract(&id, &body).await?, ids, record)
        }
        ContractCmd::Cancel { id } => cx.show(&c.cancel_contract(&id).await?, ids, record),
        ContractCmd::Outages { id } => {
            let outages = c.contract_outages(&id).await?;
            let mut names = Names::default();
            if cx.human() {
                let mut seen = std::collections::BTreeSet::new();
                for o in &outages {
                    let node = o.node_id.to_string();
                    if seen.insert(node.clone())
                        && let Ok(n) = c.node(&node).await
                    {
                        names.insert(node, n.name);
                    }
                }
            }
            cx.show(&outages, Ids::Field("id"), |v, b| {
                table(
                    b,
                    items(v),
                    &[
                        ("START", &field("start_at")),
                        ("END", &field("end_at")),
                        ("NODE", &names.field("node_id")),
                        ("GPUS", &field("gpus")),
                        ("REASON", &field("reason")),
                    ],
                );
            })
        }
    }
}

/// `neocloud capacity`.
pub(crate) async fn capacity(
    cx: &Cx<'_>,
    site: Option<String>,
    gpu_model: Option<String>,
) -> Result<()> {
    let lines = cx
        .client()?
        .capacity(site.as_deref(), gpu_model.as_deref())
        .await?;
    let allocated = |v: &Value| {
        v["allocated"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| format!("{}={}", cell(&c["class"]), cell(&c["gpus"])))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let gang = |v: &Value| {
        v["largest_gang"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| format!("{}:{}", cell(&c["level"]), cell(&c["nodes"])))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let power = |v: &Value| {
        format!(
            "{} / {}",
            mw(&v["site_power_watts"]),
            mw(&v["site_power_limit_watts"])
        )
    };
    cx.show(&List { items: lines }, Ids::None, |v, b| {
        table(
            b,
            items(v),
            &[
                ("SITE", &field("site")),
                ("MODEL", &field("gpu_model")),
                ("TOTAL", &field("total_gpus")),
                ("SELLABLE", &field("sellable_gpus")),
                ("COMMITTED", &field("committed_gpus_now")),
                ("ALLOCATED", &allocated),
                ("FREE", &field("free_gpus")),
                ("STRANDED", &field("stranded_free_gpus")),
                ("LARGEST GANG (nodes)", &gang),
                ("POWER MW", &power),
            ],
        )
    })
}
