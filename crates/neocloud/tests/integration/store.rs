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

/// Instances read back as written, whatever their free text holds: the reads that rebuild the
/// scheduler write each row as one record of fields, so text with the separators (`,` `;`),
/// the escape (`%`) and the marks of a field (`=` `-`), an empty text and a missing one must
/// all come back as they were, through one read and through the read of every live one.
async fn instance_text_round_trips(db: Db) {
    use neocloud_store::Store;
    use neocloud_types::{
        Class, Instance, InstanceId, InstanceState, NodeFailurePolicy, Shape, TenantKind, Timestamp,
    };
    let Some(url) = fresh_database_url(db).await else {
        return;
    };
    let svc = Service::open(&url).await.unwrap();
    let mut tx = svc.store().begin_write().await.unwrap();
    let tenant = Store::tenant_create(&mut tx, "acme", "Acme", TenantKind::External, None)
        .await
        .unwrap();
    let base = |name: Option<&str>, reason: Option<&str>, shape: Shape| Instance {
        id: InstanceId::new(),
        tenant_id: tenant.id,
        name: name.map(str::to_string),
        class: Class::OnDemand,
        gpu_model: "H100-SXM-80GB".into(),
        gpu_models: Vec::new(),
        shape,
        gpu_count: 8,
        cpu_milli: Some(16_000),
        memory_mib: None,
        requested_site_id: None,
        site_id: None,
        contract_id: None,
        state: InstanceState::Pending,
        reason: reason.map(str::to_string),
        placement: Default::default(),
        placement_summary: None,
        created_at: Timestamp::from_micros(1_800_000_000_123_456),
        started_at: None,
        ended_at: None,
        preempt_at: None,
        wait_until: Some(Timestamp::from_micros(1_800_000_060_000_000)),
        delivery: None,
        ssh_key_names: Vec::new(),
        authorized_keys: Vec::new(),
        access: None,
        ends_as: None,
        on_node_failure: NodeFailurePolicy::Fail,
    };
    let odd = "a,b;c%d%2C=e-f,,;;%%";
    let written = vec![
        base(Some(odd), Some(odd), Shape::Gpus { gpus: 8 }),
        base(Some("-"), Some(""), Shape::Gpus { gpus: 8 }),
        base(None, Some("="), Shape::Gpus { gpus: 8 }),
        Instance {
            on_node_failure: NodeFailurePolicy::Replace,
            ..base(
                None,
                None,
                Shape::Nodes {
                    count: 2,
                    level: neocloud_types::GangLevel::Pod,
                },
            )
        },
    ];
    for i in &written {
        Store::instance_insert(&mut tx, i).await.unwrap();
    }
    tx.commit().await.unwrap();
    for i in &written {
        assert_eq!(&svc.store().instance_get(i.id).await.unwrap(), i);
    }
    let mut live = svc.store().instance_list_live().await.unwrap();
    let mut want = written.clone();
    live.sort_by_key(|i| i.id);
    want.sort_by_key(|i| i.id);
    assert_eq!(live, want);
}

#[tokio::test]
async fn instance_text_round_trips_sqlite() {
    instance_text_round_trips(Db::Sqlite).await;
}

#[tokio::test]
async fn instance_text_round_trips_postgres() {
    instance_text_round_trips(Db::Postgres).await;
}
