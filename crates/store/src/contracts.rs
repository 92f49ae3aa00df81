//! Contracts: reserved capacity on the calendar.

use neocloud_types::{
    Contract, ContractId, ContractState, GangLevel, Money, NodeId, TenantId, Timestamp,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::tenancy::paginate;
use crate::{Page, Result, Store, StoreError, WriteTx, enum_col, id_col, u32_col};

const COLS: &str = "id, tenant_id, gpu_model, gpu_count, site_id, block_level, start_at, end_at, \
     rate_micros, sla_milli, state, created_at, updated_at";

/// Value of `gpus` GPUs for `[start, end)` at `rate` per GPU-hour, exact to the cent:
/// GPUs × microseconds × micro-dollars per hour computed exactly, then rounded half to even
/// to a whole cent, as a contract is priced and invoiced. Saturates at the largest amount.
pub fn contract_value(gpus: u32, start: Timestamp, end: Timestamp, rate: Money) -> Money {
    let micros_of_time = i128::from((end.micros() - start.micros()).max(0));
    let num = i128::from(rate.micros()) * i128::from(gpus) * micros_of_time;
    // Microseconds per hour × micro-dollars per cent.
    let den: i128 = 3_600_000_000 * 10_000;
    let q = num / den;
    let r = num % den;
    let cents = if r * 2 > den || (r * 2 == den && q % 2 != 0) {
        q + 1
    } else {
        q
    };
    Money::from_micros(
        cents
            .checked_mul(10_000)
            .and_then(|m| i64::try_from(m).ok())
            .unwrap_or(i64::MAX),
    )
}

fn sla_text(milli: i64) -> String {
    // 99_900 → "99.9"
    let whole = milli / 1000;
    let frac = milli % 1000;
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", format!("{frac:03}").trim_end_matches('0'))
    }
}

fn from_row(r: &AnyRow) -> Result<Contract> {
    let start = Timestamp::from_micros(r.try_get("start_at")?);
    let end = Timestamp::from_micros(r.try_get("end_at")?);
    let rate = Money::from_micros(r.try_get("rate_micros")?);
    let gpu_count = u32_col(r, "gpu_count")?;
    Ok(Contract {
        id: id_col(r, "id")?,
        tenant_id: id_col(r, "tenant_id")?,
        gpu_model: r.try_get("gpu_model")?,
        gpu_count,
        site_id: id_col(r, "site_id")?,
        single_block: r
            .try_get::<Option<String>, _>("block_level")?
            .map(|s| s.parse::<GangLevel>().map_err(StoreError::Corrupt))
            .transpose()?,
        start_at: start,
        end_at: end,
        price_per_gpu_hour: rate,
        sla_percent: sla_text(r.try_get("sla_milli")?),
        state: enum_col::<ContractState>(r, "state")?,
        total_value: contract_value(gpu_count, start, end, rate),
        created_at: Timestamp::from_micros(r.try_get("created_at")?),
        updated_at: Timestamp::from_micros(r.try_get("updated_at")?),
    })
}

impl Store {
    /// Inserts a signed contract. `sla_milli` is the SLA in thousandths of a percent.
    pub async fn contract_insert(tx: &mut WriteTx, c: &Contract, sla_milli: i64) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO contracts ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(c.id.to_string())
        .bind(c.tenant_id.to_string())
        .bind(&c.gpu_model)
        .bind(i64::from(c.gpu_count))
        .bind(c.site_id.to_string())
        .bind(c.single_block.map(|l| l.as_str()))
        .bind(c.start_at.micros())
        .bind(c.end_at.micros())
        .bind(c.price_per_gpu_hour.micros())
        .bind(sla_milli)
        .bind(c.state.as_str())
        .bind(c.created_at.micros())
        .bind(c.updated_at.micros())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Changes a contract's state.
    pub async fn contract_set_state(
        tx: &mut WriteTx,
        id: ContractId,
        state: ContractState,
    ) -> Result<()> {
        sqlx::query("UPDATE contracts SET state = $1, updated_at = $2 WHERE id = $3")
            .bind(state.as_str())
            .bind(tx.now().micros())
            .bind(id.to_string())
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    /// Changes a contract's GPU count and end (amendment or renewal).
    pub async fn contract_update_terms(
        tx: &mut WriteTx,
        id: ContractId,
        gpu_count: u32,
        end_at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE contracts SET gpu_count = $1, end_at = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(i64::from(gpu_count))
        .bind(end_at.micros())
        .bind(tx.now().micros())
        .bind(id.to_string())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Reads a contract.
    pub async fn contract_get(&self, id: ContractId) -> Result<Contract> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM contracts WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => from_row(&r),
            None => Err(StoreError::NotFound {
                kind: "contract",
                id: id.to_string(),
            }),
        }
    }

    /// Lists contracts, newest first.
    pub async fn contract_list(
        &self,
        tenant: Option<TenantId>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Contract>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM contracts WHERE ($1 = '' OR tenant_id = $1) AND ($2 = '' OR id < $2)
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
        .bind(cursor.unwrap_or(""))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(&mut items, limit, |c| c.id.to_string()))
    }

    /// Every signed or active contract (the calendar is rebuilt from these).
    pub async fn contract_list_live(&self) -> Result<Vec<Contract>> {
        let sql =
            format!("SELECT {COLS} FROM contracts WHERE state IN ('signed', 'active') ORDER BY id");
        let rows = self.fetch_all_viewed(sqlx::query(&sql)).await?;
        rows.iter().map(from_row).collect()
    }

    /// Nodes pinned to a contract's pool.
    pub async fn contract_pool_nodes(&self, id: ContractId) -> Result<Vec<NodeId>> {
        let rows = sqlx::query("SELECT id FROM nodes WHERE pool_contract_id = $1 ORDER BY id")
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| id_col(r, "id")).collect()
    }

    /// GPUs per node of a model (the largest node of that model), if any node has it.
    pub async fn gpu_model_node_size(&self, model: &str) -> Result<Option<u32>> {
        let row = sqlx::query("SELECT MAX(gpu_count) AS n FROM nodes WHERE gpu_model = $1")
            .bind(model)
            .fetch_one(&self.pool)
            .await?;
        Ok(row
            .try_get::<Option<i64>, _>("n")?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_value_is_exact() {
        let start: Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
        let end = start.plus_seconds(3600 * 24 * 365 * 3);
        let v = contract_value(216_000, start, end, "2.10".parse().unwrap());
        // 216,000 GPUs × 26,280 h × $2.10
        assert_eq!(v.to_string(), "11920608000");
        let half = contract_value(1, start, start.plus_seconds(1), "0.0018".parse().unwrap());
        assert_eq!(half.micros(), 0); // half a micro-dollar is no cent
        // One GPU for 30 minutes at $0.01 is half a cent: to the even cent, 0.
        let half_cent = contract_value(1, start, start.plus_seconds(1800), "0.01".parse().unwrap());
        assert_eq!(half_cent.micros(), 0);
        // At $0.03, 1.5 cents: to the even cent, 2.
        let cents = contract_value(1, start, start.plus_seconds(1800), "0.03".parse().unwrap());
        assert_eq!(cents.to_string(), "0.02");
        // Three calendar years from 2027 (1,096 days: 2028 is a leap year) at $2.85 for 8 GPUs.
        let v = contract_value(
            8,
            start,
            start.plus_months(36).unwrap(),
            "2.85".parse().unwrap(),
        );
        assert_eq!(v.to_string(), "599731.2");
        assert_eq!(sla_text(99_900), "99.9");
        assert_eq!(sla_text(99_000), "99");
    }
}
