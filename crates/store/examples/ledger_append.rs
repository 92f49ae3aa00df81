//! Ledger append throughput on SQLite (and PostgreSQL with `DATABASE_URL`): appends
//! `RECORDS` usage records (default 200,000) in transactions of 1,000, then appends the same
//! records again — the idempotent replay path, where every row is skipped — as the baseline
//! in the same run.
//!
//! `cargo run --release -p neocloud-store --example ledger_append`

use std::time::Instant;

use neocloud_store::Store;
use neocloud_types::{Class, InstanceId, Money, SiteId, TenantId, Timestamp, UsageRecord};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let url = match std::env::var("DATABASE_URL") {
        Ok(u) => u,
        Err(_) => {
            let dir = std::env::temp_dir().join(format!("neocloud-ledger-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            format!("sqlite://{}?mode=rwc", dir.join("ledger.db").display())
        }
    };
    let store = Store::open(&url).await?;
    let (tenant, site) = (TenantId::new(), SiteId::new());
    let start = Timestamp::now();
    let records: Vec<UsageRecord> = (0..n)
        .map(|i| {
            let s = start.plus_seconds(i64::try_from(i).unwrap_or(0));
            UsageRecord {
                instance_id: InstanceId::new(),
                tenant_id: tenant,
                class: Class::OnDemand,
                gpu_model: "H100-SXM-80GB".into(),
                site_id: site,
                contract_id: None,
                gpus: 8,
                gpu_milli: None,
                month: "2026-11".into(),
                start_at: s,
                end_at: s.plus_seconds(3600),
                gpu_seconds: 28_800,
                rate: Money::from_micros(3_000_000),
                amount: Money::from_micros(24_000_000),
            }
        })
        .collect();
    for (label, expect_new) in [("append", true), ("replay (all skipped, baseline)", false)] {
        let t = Instant::now();
        let mut added = 0;
        for chunk in records.chunks(1_000) {
            let mut tx = store.begin_write().await?;
            added += Store::usage_append(&mut tx, chunk).await?;
            tx.commit().await?;
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(added > 0, expect_new);
        println!(
            "{label}: {n} records in {secs:.2} s = {:.0} records/s ({added} new)",
            n as f64 / secs
        );
    }
    Ok(())
}
