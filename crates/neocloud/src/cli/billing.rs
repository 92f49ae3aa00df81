//! Billing: the price book, the usage ledger, invoices and reports.

use anyhow::Result;
use clap::Subcommand;
use neocloud_client::CsvReport;
use neocloud_client::model::{GenerateInvoice, List, PageRequest, SetPrice, UsageFilter};
use serde_json::Value;

use super::out::{
    Buf, Column, Cx, Ids, Names, Need, field, fmt_money, items, money_field, mw, parse, rate_field,
    table, write_stdout,
};

#[derive(Subcommand, Debug)]
pub(crate) enum PriceCmd {
    /// List the price book.
    List {
        /// Only this GPU model.
        #[arg(long)]
        gpu_model: Option<String>,
    },
    /// Add a price, effective now or later (operator-admin).
    Set {
        /// GPU model.
        #[arg(long)]
        gpu_model: String,
        /// on-demand, reserved-lt-1y, reserved-1-3y, reserved-ge-3y, spot-floor,
        /// spot-ceiling or internal-shadow.
        #[arg(long)]
        kind: String,
        /// US dollars per GPU-hour, e.g. 2.85.
        #[arg(long)]
        price: String,
        /// Site (all sites by default).
        #[arg(long)]
        site: Option<String>,
        /// When it takes effect, RFC 3339 (now by default).
        #[arg(long)]
        effective_from: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum UsageCmd {
    /// List metered usage.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this month, YYYY-MM.
        #[arg(long)]
        month: Option<String>,
        /// Only this instance's.
        #[arg(long)]
        instance: Option<String>,
        /// Only this class.
        #[arg(long)]
        class: Option<String>,
        /// Records to show (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print CSV (for spreadsheets) instead of a table.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum InvoiceCmd {
    /// List invoices.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show an invoice and its lines.
    Show { id: String },
    /// Generate (or regenerate) a draft invoice (operator-admin).
    Generate {
        /// Tenant id or name.
        #[arg(long)]
        tenant: String,
        /// Month, YYYY-MM.
        #[arg(long)]
        month: String,
    },
    /// Finalize an invoice of a month that is over.
    Finalize { id: String },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ReportCmd {
    /// Remaining committed value of signed and active contracts, by year.
    Backlog,
    /// Utilization by site, model and class for a month.
    Utilization {
        /// Month, YYYY-MM.
        #[arg(long)]
        month: String,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Power by site now: allocated vs budget, energy cost per hour.
    Power,
    /// Gross margin per site for a month: revenue − energy cost.
    Margin {
        /// Month, YYYY-MM.
        #[arg(long)]
        month: String,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Revenue by month, tenant, class and site.
    Revenue {
        /// First month, YYYY-MM.
        #[arg(long)]
        from: String,
        /// Last month, YYYY-MM.
        #[arg(long)]
        to: String,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
}

const SITES: Need = Need {
    tenants: false,
    sites: true,
    keys: false,
};
const TENANTS_AND_SITES: Need = Need {
    tenants: true,
    sites: true,
    keys: false,
};

/// `neocloud prices …`.
pub(crate) async fn prices(cx: &Cx<'_>, cmd: PriceCmd) -> Result<()> {
    let c = cx.client()?;
    let names = Names::load(cx, &c, SITES).await;
    let site = |v: &Value| match v.get("site_id") {
        Some(Value::Null) | None => "(all)".to_string(),
        Some(_) => names.of(v, "site_id"),
    };
    let cols: &[Column] = &[
        ("MODEL", &field("gpu_model")),
        ("SITE", &site),
        ("KIND", &field("kind")),
        ("$/GPU-H", &rate_field("price_per_gpu_hour")),
        ("FROM", &field("effective_from")),
    ];
    match cmd {
        PriceCmd::List { gpu_model } => {
            let list = List {
                items: c.prices(gpu_model.as_deref()).await?,
            };
            cx.show(&list, Ids::None, |v, b| table(b, items(v), cols))
        }
        PriceCmd::Set {
            gpu_model,
            kind,
            price,
            site,
            effective_from,
        } => {
            let body = SetPrice {
                gpu_model,
                site,
                kind,
                price_per_gpu_hour: parse("--price", &price)?,
                effective_from: effective_from
                    .map(|e| parse("--effective-from", &e))
                    .transpose()?,
            };
            let p = c.set_price(&body, None).await?;
            cx.show(&p, Ids::None, super::out::record)
        }
    }
}

/// `neocloud usage …`.
pub(crate) async fn usage(cx: &Cx<'_>, cmd: UsageCmd) -> Result<()> {
    let c = cx.client()?;
    let UsageCmd::List {
        tenant,
        month,
        instance,
        class,
        limit,
        csv,
    } = cmd;
    let filter = UsageFilter {
        tenant,
        month,
        instance,
        class,
    };
    let page = PageRequest::first(limit);
    if csv {
        return write_stdout(c.usage_csv(&filter, &page).await?.as_bytes());
    }
    let records = c.usage(&filter, &page).await?;
    let names = Names::load(cx, &c, TENANTS_AND_SITES).await;
    cx.show(&records, Ids::Field("instance_id"), |v, b| {
        table(
            b,
            items(v),
            &[
                ("INSTANCE", &field("instance_id")),
                ("TENANT", &names.field("tenant_id")),
                ("SITE", &names.field("site_id")),
                ("CLASS", &field("class")),
                ("MODEL", &field("gpu_model")),
                ("GPUS", &field("gpus")),
                ("MONTH", &field("month")),
                ("START", &field("start_at")),
                ("END", &field("end_at")),
                ("GPU-S", &field("gpu_seconds")),
                ("$/GPU-H", &rate_field("rate")),
                ("AMOUNT $", &money_field("amount")),
            ],
        )
    })
}

fn money_of(v: &Value, k: &str) -> String {
    match v.get(k).and_then(Value::as_str).map(str::parse) {
        Some(Ok(m)) => fmt_money(m),
        _ => "-".into(),
    }
}

/// `neocloud invoices …`.
pub(crate) async fn invoices(cx: &Cx<'_>, cmd: InvoiceCmd) -> Result<()> {
    let c = cx.client()?;
    let names = Names::load(cx, &c, TENANTS_AND_SITES).await;
    let print_invoice = |v: &Value, b: &mut Buf| {
        b.line(format_args!(
            "{}  {}  {}  {}  total ${}  (shadow ${})",
            field("id")(v),
            names.of(v, "tenant_id"),
            field("month")(v),
            field("state")(v),
            money_of(v, "total"),
            money_of(v, "shadow_total"),
        ));
        if let Some(lines) = v.get("lines").and_then(Value::as_array) {
            table(
                b,
                lines,
                &[
                    ("KIND", &field("kind")),
                    ("DESCRIPTION", &field("description")),
                    ("GPU-S", &field("quantity_gpu_seconds")),
                    ("AMOUNT $", &money_field("amount")),
                    ("BILLED", &field("billed")),
                ],
            );
        }
    };
    let ids = Ids::Field("id");
    let invoice = match cmd {
        InvoiceCmd::List { tenant } => {
            let list = List {
                items: c.invoices(tenant.as_deref()).await?,
            };
            return cx.show(&list, ids, |v, b| {
                table(
                    b,
                    items(v),
                    &[
                        ("ID", &field("id")),
                        ("TENANT", &names.field("tenant_id")),
                        ("MONTH", &field("month")),
                        ("STATE", &field("state")),
                        ("TOTAL $", &money_field("total")),
                    ],
                )
            });
        }
        InvoiceCmd::Show { id } => c.invoice(&id).await?,
        InvoiceCmd::Generate { tenant, month } => {
            c.generate_invoice(
                &GenerateInvoice {
                    tenant_id: tenant,
                    month,
                },
                None,
            )
            .await?
        }
        InvoiceCmd::Finalize { id } => c.finalize_invoice(&id).await?,
    };
    cx.show(&invoice, ids, print_invoice)
}

/// `neocloud reports …`.
pub(crate) async fn reports(cx: &Cx<'_>, cmd: ReportCmd) -> Result<()> {
    let c = cx.client()?;
    let csv = match &cmd {
        ReportCmd::Utilization { month, csv: true } => Some(CsvReport::Utilization {
            month: month.clone(),
        }),
        ReportCmd::Margin { month, csv: true } => Some(CsvReport::Margin {
            month: month.clone(),
        }),
        ReportCmd::Revenue {
            from,
            to,
            csv: true,
        } => Some(CsvReport::Revenue {
            from: from.clone(),
            to: to.clone(),
        }),
        _ => None,
    };
    if let Some(r) = csv {
        return write_stdout(c.report_csv(&r).await?.as_bytes());
    }
    match cmd {
        ReportCmd::Backlog => {
            let r = c.backlog().await?;
            cx.show(&r, Ids::None, |v, b| {
                b.line(format_args!(
                    "contracted backlog as of {}: ${}",
                    field("as_of")(v),
                    money_of(v, "total")
                ));
                if let Some(years) = v["by_year"].as_array() {
                    table(
                        b,
                        years,
                        &[("YEAR", &field("year")), ("VALUE $", &money_field("value"))],
                    );
                }
            })
        }
        ReportCmd::Utilization { month, .. } => {
            let rows = List {
                items: c.utilization(&month).await?,
            };
            let names = Names::load(cx, &c, SITES).await;
            let pct = |v: &Value| {
                v["utilization_milli_percent"]
                    .as_i64()
                    .map(|m| format!("{:.3}%", m as f64 / 1000.0))
                    .unwrap_or_default()
            };
            cx.show(&rows, Ids::None, |v, b| {
                table(
                    b,
                    items(v),
                    &[
                        ("MONTH", &field("month")),
                        ("SITE", &names.field("site_id")),
                        ("MODEL", &field("gpu_model")),
                        ("CLASS", &field("class")),
                        ("GPU-S", &field("gpu_seconds")),
                        ("UTILIZATION", &pct),
                    ],
                )
            })
        }
        ReportCmd::Margin { month, .. } => {
            let rows = List {
                items: c.margin(&month).await?,
            };
            let names = Names::load(cx, &c, SITES).await;
            cx.show(&rows, Ids::None, |v, b| {
                table(
                    b,
                    items(v),
                    &[
                        ("MONTH", &field("month")),
                        ("SITE", &names.field("site_id")),
                        ("REVENUE $", &money_field("revenue")),
                        ("ENERGY KWH", &field("energy_kwh")),
                        ("ENERGY $", &money_field("energy_cost")),
                        ("MARGIN $", &money_field("gross_margin")),
                    ],
                )
            })
        }
        ReportCmd::Power => {
            let rows = List {
                items: c.power().await?,
            };
            let used = |v: &Value| mw(&v["allocated_watts"]);
            let budget = |v: &Value| mw(&v["budget_watts"]);
            cx.show(&rows, Ids::None, |v, b| {
                table(
                    b,
                    items(v),
                    &[
                        ("SITE", &field("site")),
                        ("ALLOCATED MW", &used),
                        ("BUDGET MW", &budget),
                        ("$/MWH", &rate_field("energy_usd_per_mwh")),
                        ("ENERGY $/H", &money_field("energy_cost_per_hour")),
                    ],
                )
            })
        }
        ReportCmd::Revenue { from, to, .. } => {
            let rows = List {
                items: c.revenue(&from, &to).await?,
            };
            let names = Names::load(cx, &c, TENANTS_AND_SITES).await;
            cx.show(&rows, Ids::None, |v, b| {
                table(
                    b,
                    items(v),
                    &[
                        ("MONTH", &field("month")),
                        ("TENANT", &names.field("tenant_id")),
                        ("CLASS", &field("class")),
                        ("SITE", &names.field("site_id")),
                        ("AMOUNT $", &money_field("amount")),
                    ],
                )
            })
        }
    }
}
