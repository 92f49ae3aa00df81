//! The store on both backends: migrations, restart, schema equality.

use neocloud_service::Service;

use crate::ctx::{Db, fresh_database_url};

async fn migrations_apply_once(db: Db) {
    let Some(url) = fresh_database_url(db).await else {
        return;
    };
    let svc = Service::open(&url).await.unwrap();
    let applied = svc.store().migrations_applied().await.unwrap();
    let expected: Vec<i64> = neocloud_store::MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(applied, expected);
    let key = svc.bootstrap_operator_key().await.unwrap();
    assert!(key.is_some());
    svc.store().pool().close().await;
    // Reopening applies nothing new, keeps the data, and makes no second bootstrap key.
    let svc = Service::open(&url).await.unwrap();
    assert_eq!(svc.store().migrations_applied().await.unwrap(), expected);
    assert!(svc.bootstrap_operator_key().await.unwrap().is_none());
    let models = svc.store().gpu_model_list().await.unwrap();
    assert_eq!(models.len(), neocloud_types::builtin_gpu_models().len());
}

#[tokio::test]
async fn migrations_apply_once_sqlite() {
    migrations_apply_once(Db::Sqlite).await;
}

#[tokio::test]
async fn migrations_apply_once_postgres() {
    migrations_apply_once(Db::Postgres).await;
}

/// The full demo fleet loads, and a restart on the same database skips the re-import.
async fn demo_fleet_round_trip(db: Db) {
    let Some(url) = fresh_database_url(db).await else {
        return;
    };
    let svc = Service::open(&url).await.unwrap();
    let toml = neocloud_fleet::demo_fleet_toml(0.05).unwrap();
    let r = svc.fleet_import_at_start(&toml).await.unwrap().unwrap();
    assert_eq!(r.nodes_added, 1375 + 900);
    assert_eq!(r.gpus_added, 1375 * 8 + 900 * 4);
    svc.store().pool().close().await;
    let svc = Service::open(&url).await.unwrap();
    assert!(
        svc.fleet_import_at_start(&toml).await.unwrap().is_none(),
        "same file: skipped"
    );
    let sites = svc.store().site_list().await.unwrap();
    assert_eq!(
        sites.iter().map(|s| s.gpu_count).sum::<i64>(),
        1375 * 8 + 900 * 4
    );
    for s in &sites {
        assert!(s.peak_power_watts <= s.power_budget_watts, "{s:?}");
    }
}

#[tokio::test]
async fn demo_fleet_round_trip_sqlite() {
    demo_fleet_round_trip(Db::Sqlite).await;
}

#[tokio::test]
async fn demo_fleet_round_trip_postgres() {
    demo_fleet_round_trip(Db::Postgres).await;
}
