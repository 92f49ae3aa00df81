//! The price book, the usage ledger, downtime and invoices.

use neocloud_types::{
    Class, ContractId, InstanceId, Money, Price, SiteId, TenantId, Timestamp, UsageRecord,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::tenancy::paginate;
use crate::{
    Page, Result, Store, StoreError, WriteTx, enum_col, id_col, is_unique_violation, opt_id_col,
    u32_col,
};

const USAGE_COLS: &str = "instance_id, start_at, end_at, tenant_id, class, gpu_model, site_id, \
     contract_id, gpus, month, gpu_seconds, rate_micros, amount_micros, gpu_milli";

fn usage_from_row(r: &AnyRow) -> Result<UsageRecord> {
    Ok(UsageRecord {
        instance_id: id_col(r, "instance_id")?,
        tenant_id: id_col(r, "tenant_id")?,
        class: enum_col::<Class>(r, "class")?,
        gpu_model: r.try_get("gpu_model")?,
        site_id: id_col(r, "site_id")?,
        contract_id: opt_id_col(r, "contract_id")?,
        gpus: u32_col(r, "gpus")?,
        gpu_milli: r
            .try_get::<Option<i64>, _>("gpu_milli")?
            .map(|m| u64::try_from(m).map_err(|_| StoreError::Corrupt("gpu_milli".into())))
            .transpose()?,
        month: r.try_get("month")?,
        start_at: Timestamp::from_micros(r.try_get("start_at")?),
        end_at: Timestamp::from_micros(r.try_get("end_at")?),
        gpu_seconds: r.try_get("gpu_seconds")?,
        rate: Money::from_micros(r.try_get("rate_micros")?),
        amount: Money::from_micros(r.try_get("amount_micros")?),
    })
}

/// Filters for reading the ledger.
#[derive(Clone, Debug, Default)]
pub struct UsageFilter {
    /// Only this tenant's.
    pub tenant_id: Option<TenantId>,
    /// Only this month (`YYYY-MM`).
    pub month: Option<String>,
    /// Only this instance's.
    pub instance_id: Option<InstanceId>,
    /// Only this class.
    pub class: Option<Class>,
}

/// A downtime record: GPUs of a contract unavailable over an interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DowntimeRow {
    /// Contract.
    pub contract_id: ContractId,
    /// Start.
    pub start_at: Timestamp,
    /// End (exclusive).
    pub end_at: Timestamp,
    /// GPUs unavailable.
    pub gpus: u32,
}

impl Store {
    /// Adds a price to the book. Two prices for the same model, site, kind and effective
    /// time are refused as overlapping.
    pub async fn price_insert(tx: &mut WriteTx, p: &Price) -> Result<()> {
        sqlx::query(
            "INSERT INTO prices (gpu_model, site_key, kind, price_micros, effective_from, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&p.gpu_model)
        .bind(p.site_id.map(|s| s.to_string()).unwrap_or_default())
        .bind(&p.kind)
        .bind(p.price_per_gpu_hour.micros())
        .bind(p.effective_from.micros())
        .bind(tx.now().micros())
        .execute(tx.conn())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!(
                    "a {} price for {} effective {} already exists (overlapping validity)",
                    p.kind, p.gpu_model, p.effective_from
                ))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    /// The whole price book, by model, site, kind and time.
    pub async fn price_list(&self) -> Result<Vec<Price>> {
        let rows = sqlx::query(
            "SELECT gpu_model, site_key, kind, price_micros, effective_from FROM prices
             ORDER BY gpu_model, site_key, kind, effective_from",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let site: String = r.try_get("site_key")?;
                Ok(Price {
                    gpu_model: r.try_get("gpu_model")?,
                    site_id: if site.is_empty() {
                        None
                    } else {
                        Some(site.parse().map_err(|e: neocloud_types::IdParseError| {
                            StoreError::Corrupt(e.to_string())
                        })?)
                    },
                    kind: r.try_get("kind")?,
                    price_per_gpu_hour: Money::from_micros(r.try_get("price_micros")?),
                    effective_from: Timestamp::from_micros(r.try_get("effective_from")?),
                })
            })
            .collect()
    }

    /// Appends ledger records; a record already there (same instance and start) is skipped,
    /// so replaying a state change adds nothing. Returns how many were new.
    pub async fn usage_append(tx: &mut WriteTx, records: &[UsageRecord]) -> Result<u64> {
        let mut added = 0;
        let now = tx.now().micros();
        for u in records {
            added += sqlx::query(&format!(
                "INSERT INTO usage_records ({USAGE_COLS}, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                 ON CONFLICT (instance_id, start_at) DO NOTHING"
            ))
            .bind(u.instance_id.to_string())
            .bind(u.start_at.micros())
            .bind(u.end_at.micros())
            .bind(u.tenant_id.to_string())
            .bind(u.class.as_str())
            .bind(&u.gpu_model)
            .bind(u.site_id.to_string())
            .bind(u.contract_id.map(|c| c.to_string()))
            .bind(i64::from(u.gpus))
            .bind(&u.month)
            .bind(u.gpu_seconds)
            .bind(u.rate.micros())
            .bind(u.amount.micros())
            .bind(u.gpu_milli.map(|m| i64::try_from(m).unwrap_or(i64::MAX)))
            .bind(now)
            .execute(tx.conn())
            .await?
            .rows_affected();
        }
        Ok(added)
    }

    /// Reads the ledger, ordered by start, a page at a time.
    pub async fn usage_list(
        &self,
        f: &UsageFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<UsageRecord>> {
        // The cursor is "start_at:instance_id" of the last record returned.
        let (c_start, c_inst) = match cursor.and_then(|c| c.split_once(':')) {
            Some((s, i)) => (s.parse::<i64>().unwrap_or(i64::MIN), i.to_string()),
            None => (i64::MIN, String::new()),
        };
        let rows = sqlx::query(&format!(
            "SELECT {USAGE_COLS} FROM usage_records
             WHERE ($1 = '' OR tenant_id = $1) AND ($2 = '' OR month = $2)
               AND ($3 = '' OR instance_id = $3) AND ($4 = '' OR class = $4)
               AND (start_at > $5 OR (start_at = $5 AND instance_id > $6))
             ORDER BY start_at, instance_id LIMIT $7"
        ))
        .bind(f.tenant_id.map(|t| t.to_string()).unwrap_or_default())
        .bind(f.month.clone().unwrap_or_default())
        .bind(f.instance_id.map(|i| i.to_string()).unwrap_or_default())
        .bind(f.class.map(|c| c.as_str()).unwrap_or(""))
        .bind(c_start)
        .bind(c_inst)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows
            .iter()
            .map(usage_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(&mut items, limit, |u| {
            format!("{}:{}", u.start_at.micros(), u.instance_id)
        }))
    }

    /// Records how far an instance has been metered.
    pub async fn instance_set_metered_until(
        tx: &mut WriteTx,
        id: InstanceId,
        until: Timestamp,
    ) -> Result<()> {
        sqlx::query("UPDATE instances SET metered_until = $1 WHERE id = $2")
            .bind(until.micros())
            .bind(id.to_string())
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    /// How far an instance has been metered, if at all.
    pub async fn instance_metered_until(&self, id: InstanceId) -> Result<Option<Timestamp>> {
        let row = sqlx::query("SELECT metered_until FROM instances WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r
                .try_get::<Option<i64>, _>("metered_until")?
                .map(Timestamp::from_micros),
            None => None,
        })
    }

    /// How far an instance has been metered, read inside a write transaction (so a meter
    /// written earlier in the same transaction counts).
    pub async fn instance_metered_until_tx(
        tx: &mut WriteTx,
        id: InstanceId,
    ) -> Result<Option<Timestamp>> {
        let row = sqlx::query("SELECT metered_until FROM instances WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(tx.conn())
            .await?;
        Ok(match row {
            Some(r) => r
                .try_get::<Option<i64>, _>("metered_until")?
                .map(Timestamp::from_micros),
            None => None,
        })
    }

    /// Records downtime of a contract's GPUs.
    pub async fn downtime_insert(tx: &mut WriteTx, d: &DowntimeRow, note: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO downtime (id, contract_id, start_at, end_at, gpus, note, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(format!(
            "dt_{}",
            neocloud_types::EventId::new().uuid().simple()
        ))
        .bind(d.contract_id.to_string())
        .bind(d.start_at.micros())
        .bind(d.end_at.micros())
        .bind(i64::from(d.gpus))
        .bind(note)
        .bind(tx.now().micros())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Downtime of the given contracts overlapping `[from, to)`.
    pub async fn downtime_list(&self, from: Timestamp, to: Timestamp) -> Result<Vec<DowntimeRow>> {
        let rows = sqlx::query(
            "SELECT contract_id, start_at, end_at, gpus FROM downtime
             WHERE start_at < $1 AND end_at > $2 ORDER BY contract_id, start_at",
        )
        .bind(to.micros())
        .bind(from.micros())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DowntimeRow {
                    contract_id: id_col(r, "contract_id")?,
                    start_at: Timestamp::from_micros(r.try_get("start_at")?),
                    end_at: Timestamp::from_micros(r.try_get("end_at")?),
                    gpus: u32_col(r, "gpus")?,
                })
            })
            .collect()
    }
}

fn invoice_from_row(r: &AnyRow) -> Result<neocloud_types::Invoice> {
    let lines: String = r.try_get("lines_json")?;
    Ok(neocloud_types::Invoice {
        id: r.try_get("id")?,
        tenant_id: id_col(r, "tenant_id")?,
        month: r.try_get("month")?,
        state: r.try_get("state")?,
        lines: serde_json::from_str(&lines).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        total: Money::from_micros(r.try_get("total_micros")?),
        shadow_total: Money::from_micros(r.try_get("shadow_total_micros")?),
        created_at: Timestamp::from_micros(r.try_get("created_at")?),
        finalized_at: r
            .try_get::<Option<i64>, _>("finalized_at")?
            .map(Timestamp::from_micros),
    })
}

const INVOICE_COLS: &str = "id, tenant_id, month, state, total_micros, shadow_total_micros, \
     lines_json, created_at, finalized_at";

impl Store {
    /// A tenant's ledger for a month summed per (class, GPU model, site): GPU-seconds and
    /// amount. Invoice lines are sums per (class, model, site), so these totals give the same
    /// lines as the records one by one, without reading a million rows.
    pub async fn usage_month_totals(
        &self,
        tenant: TenantId,
        month: &str,
    ) -> Result<Vec<(Class, String, SiteId, i64, Money)>> {
        let rows = sqlx::query(
            "SELECT class, gpu_model, site_id, CAST(SUM(gpu_seconds) AS BIGINT) AS gs,
                    CAST(SUM(amount_micros) AS BIGINT) AS amount
             FROM usage_records WHERE tenant_id = $1 AND month = $2
             GROUP BY class, gpu_model, site_id ORDER BY class, gpu_model, site_id",
        )
        .bind(tenant.to_string())
        .bind(month)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    enum_col::<Class>(r, "class")?,
                    r.try_get("gpu_model")?,
                    id_col(r, "site_id")?,
                    r.try_get("gs")?,
                    Money::from_micros(r.try_get("amount")?),
                ))
            })
            .collect()
    }

    /// Writes a draft invoice (replacing an earlier draft of the same tenant and month); a
    /// finalized invoice is never touched.
    pub async fn invoice_put_draft(tx: &mut WriteTx, inv: &neocloud_types::Invoice) -> Result<()> {
        let lines =
            serde_json::to_string(&inv.lines).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(&format!(
            "INSERT INTO invoices ({INVOICE_COLS}) VALUES ($1, $2, $3, 'draft', $4, $5, $6, $7, NULL)
             ON CONFLICT (tenant_id, month) DO UPDATE SET total_micros = excluded.total_micros,
               shadow_total_micros = excluded.shadow_total_micros, lines_json = excluded.lines_json,
               created_at = excluded.created_at
             WHERE invoices.state = 'draft'"
        ))
        .bind(&inv.id)
        .bind(inv.tenant_id.to_string())
        .bind(&inv.month)
        .bind(inv.total.micros())
        .bind(inv.shadow_total.micros())
        .bind(lines)
        .bind(inv.created_at.micros())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Reads the invoice of a tenant for a month.
    pub async fn invoice_for(
        &self,
        tenant: TenantId,
        month: &str,
    ) -> Result<Option<neocloud_types::Invoice>> {
        let row = sqlx::query(&format!(
            "SELECT {INVOICE_COLS} FROM invoices WHERE tenant_id = $1 AND month = $2"
        ))
        .bind(tenant.to_string())
        .bind(month)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| invoice_from_row(&r)).transpose()
    }

    /// Reads an invoice by id.
    pub async fn invoice_get(&self, id: &str) -> Result<neocloud_types::Invoice> {
        let row = sqlx::query(&format!(
            "SELECT {INVOICE_COLS} FROM invoices WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => invoice_from_row(&r),
            None => Err(StoreError::NotFound {
                kind: "invoice",
                id: id.to_string(),
            }),
        }
    }

    /// Lists invoices (of one tenant, or all), newest month first.
    pub async fn invoice_list(
        &self,
        tenant: Option<TenantId>,
    ) -> Result<Vec<neocloud_types::Invoice>> {
        let rows = sqlx::query(&format!(
            "SELECT {INVOICE_COLS} FROM invoices WHERE ($1 = '' OR tenant_id = $1)
             ORDER BY month DESC, tenant_id LIMIT 1000"
        ))
        .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(invoice_from_row).collect()
    }

    /// Finalizes a draft invoice.
    pub async fn invoice_finalize(tx: &mut WriteTx, id: &str, at: Timestamp) -> Result<()> {
        sqlx::query("UPDATE invoices SET state = 'finalized', finalized_at = $1 WHERE id = $2 AND state = 'draft'")
            .bind(at.micros())
            .bind(id)
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

impl Store {
    /// Records a spot price in force from `at` (skipped if one is already recorded then).
    pub async fn spot_price_insert(
        tx: &mut WriteTx,
        model: &str,
        site: SiteId,
        at: Timestamp,
        price: Money,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO spot_prices (gpu_model, site_id, effective_from, price_micros)
             VALUES ($1, $2, $3, $4) ON CONFLICT (gpu_model, site_id, effective_from) DO NOTHING",
        )
        .bind(model)
        .bind(site.to_string())
        .bind(at.micros())
        .bind(price.micros())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// The spot price series of a pool, oldest first: each price holds until the next.
    pub async fn spot_price_series(
        &self,
        model: &str,
        site: SiteId,
    ) -> Result<Vec<(Timestamp, Money)>> {
        let rows = sqlx::query(
            "SELECT effective_from, price_micros FROM spot_prices
             WHERE gpu_model = $1 AND site_id = $2 ORDER BY effective_from",
        )
        .bind(model)
        .bind(site.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    Timestamp::from_micros(r.try_get("effective_from")?),
                    Money::from_micros(r.try_get("price_micros")?),
                ))
            })
            .collect()
    }
}

impl Store {
    /// Per (site, GPU model): Σ idle watts, Σ peak watts and Σ GPUs of the nodes — what the
    /// energy estimate of a month is built from.
    pub async fn node_power_totals(&self) -> Result<Vec<(SiteId, String, i64, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT site_id, gpu_model, CAST(SUM(idle_watts) AS BIGINT) AS idle,
                    CAST(SUM(peak_watts) AS BIGINT) AS peak, CAST(SUM(gpu_count) AS BIGINT) AS gpus
             FROM nodes GROUP BY site_id, gpu_model ORDER BY site_id, gpu_model",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    id_col(r, "site_id")?,
                    r.try_get("gpu_model")?,
                    r.try_get("idle")?,
                    r.try_get("peak")?,
                    r.try_get("gpus")?,
                ))
            })
            .collect()
    }
}
