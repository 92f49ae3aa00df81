//! The client crate's wire types against the server's own: every request body the client
//! sends is accepted by the server's type (which refuses unknown fields), and every answer
//! the server's type writes reads back unchanged through the client's.

use neocloud_client::model as c;
use neocloud_service as s;
use neocloud_types::{Class, GangLevel, Role, Shape, TenantKind, TenantStatus, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The server's type accepts what the client sends, field for field.
fn accepted<C: Serialize, S: DeserializeOwned + std::fmt::Debug>(body: &C) -> S {
    let v = serde_json::to_value(body).unwrap();
    serde_json::from_value::<S>(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// `sample` (every field of the server's type, none null) reads and writes back unchanged
/// through both the server's type and the client's.
fn same_answer<S: Serialize + DeserializeOwned, C: Serialize + DeserializeOwned>(sample: Value) {
    let server: S = serde_json::from_value(sample.clone()).unwrap();
    assert_eq!(
        serde_json::to_value(&server).unwrap(),
        sample,
        "server type"
    );
    let client: C = serde_json::from_value(sample.clone()).unwrap();
    assert_eq!(
        serde_json::to_value(&client).unwrap(),
        sample,
        "client type"
    );
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

#[test]
fn request_bodies_are_the_servers() {
    let _: s::CreateGpuModel = accepted(&c::CreateGpuModel {
        name: "MI325X".into(),
        vendor: Some("AMD".into()),
        memory_gib: 256,
        tdp_watts: 1000,
        topology: Some("groups:2,4".into()),
    });
    let b: s::CreateTenant = accepted(&c::CreateTenant {
        name: "acme".into(),
        display_name: Some("Acme".into()),
        kind: TenantKind::Internal,
        credit_limit: Some("12.5".parse().unwrap()),
    });
    assert_eq!(b.kind, TenantKind::Internal);
    let u: s::UpdateTenant = accepted(&c::UpdateTenant {
        display_name: None,
        status: Some(TenantStatus::Suspended),
        credit_limit: Some(None),
    });
    assert_eq!(u.credit_limit, Some(None), "null removes the limit");
    let u: s::UpdateTenant = accepted(&c::UpdateTenant::default());
    assert_eq!(u.credit_limit, None, "absent leaves it");
    let _: s::CreateApiKey = accepted(&c::CreateApiKey {
        name: "ci".into(),
        role: Role::TenantMember,
        tenant_id: Some("acme".into()),
        expires_at: Some(t("2030-01-01T00:00:00Z")),
        node: Some("n1".into()),
    });
    let mut launch = c::LaunchInstance::new("H100-SXM-80GB", Class::Spot);
    launch.tenant_id = Some("acme".into());
    launch.name = Some("x".into());
    launch.gpus = Some(8);
    launch.nodes = Some(2);
    launch.gang_level = Some(GangLevel::Pod);
    launch.site = Some("memphis-1".into());
    launch.wait_seconds = Some(5);
    launch.shape = Some(Shape::Share { milli: 250 });
    launch.cpu_milli = Some(1000);
    launch.memory_mib = Some(1024);
    launch.delivery = Some(neocloud_types::Delivery::BareMetal { user_data: None });
    launch.ssh_key_names = vec!["laptop".into()];
    let _: s::LaunchInstance = accepted(&launch);
    let _: s::CreateSshKey = accepted(&c::CreateSshKey {
        tenant_id: Some("acme".into()),
        name: "laptop".into(),
        public_key: "ssh-ed25519 AAAA".into(),
    });
    let q: s::SetQuota = accepted(&c::SetQuota {
        tenant_id: "acme".into(),
        gpu_model: "GB200".into(),
        class: Class::OnDemand,
        max_gpus: None,
    });
    assert_eq!(q.max_gpus, None);
    let _: s::ContractTerms = accepted(&c::ContractTerms {
        tenant_id: Some("acme".into()),
        gpu_model: "GB200".into(),
        gpu_count: 4,
        start_at: t("2030-01-01T00:00:00Z"),
        end_at: t("2031-01-01T00:00:00Z"),
        site: Some("memphis-2".into()),
        single_block: Some(GangLevel::NvlinkDomain),
        sla_percent: Some("99.9".into()),
    });
    let _: s::SetPowerCap = accepted(&c::SetPowerCap { watts: None });
    let _: s::AmendContract = accepted(&c::AmendContract {
        gpu_count: Some(8),
        end_at: Some(t("2032-01-01T00:00:00Z")),
    });
    let _: s::SetPrice = accepted(&c::SetPrice {
        gpu_model: "GB200".into(),
        site: Some("memphis-2".into()),
        kind: "on-demand".into(),
        price_per_gpu_hour: "2.85".parse().unwrap(),
        effective_from: Some(t("2030-01-01T00:00:00Z")),
    });
    let _: s::GenerateInvoice = accepted(&c::GenerateInvoice {
        tenant_id: "acme".into(),
        month: "2030-01".into(),
    });
    let _: s::NodeOperation = accepted(&c::NodeOperation {
        reason: Some("fan".into()),
    });
    let _: s::SetXidRule = accepted(&c::SetXidRule {
        action: c::HealthAction::Drain,
        note: Some("why".into()),
    });
    let w: s::CreateWebhook = accepted(&c::CreateWebhook {
        tenant_id: Some("acme".into()),
        url: "https://hooks.example.com/x".into(),
        events: Some(vec!["instance.*".into()]),
    });
    assert_eq!(w.events, Some(vec!["instance.*".to_string()]));
    let w: s::CreateWebhook = accepted(&c::CreateWebhook {
        url: "https://hooks.example.com/x".into(),
        ..Default::default()
    });
    assert_eq!(w.events, None, "absent means every event");
    let start: neocloud_types::Timestamp = "2026-12-06T10:00:00Z".parse().unwrap();
    let end: neocloud_types::Timestamp = "2026-12-06T12:00:00Z".parse().unwrap();
    let m: s::ScheduleMaintenance = accepted(&c::ScheduleMaintenance {
        block: Some("pod-01/leaf-02".into()),
        site: Some("memphis-1".into()),
        start_at: start,
        end_at: end,
        reason: "switch firmware".into(),
        ..Default::default()
    });
    assert!(m.nodes.is_empty());
    assert_eq!(m.block.as_deref(), Some("pod-01/leaf-02"));
    assert_eq!((m.start_at, m.end_at), (start, end));
    let m: s::ScheduleMaintenance = accepted(&c::ScheduleMaintenance {
        nodes: vec!["n1".into(), "n2".into()],
        start_at: start,
        end_at: end,
        reason: "PSU".into(),
        ..Default::default()
    });
    assert_eq!(m.nodes, ["n1", "n2"]);
}

#[test]
fn answers_are_the_servers() {
    let site = "site_01890000000070008000000000000001";
    let tenant = "ten_01890000000070008000000000000001";
    let contract = "ctr_01890000000070008000000000000001";
    let at = "2030-01-01T00:00:00Z";
    same_answer::<s::Quote, c::Quote>(json!({
        "fits": false, "site_id": site, "site": "memphis-2", "gpu_model": "GB200",
        "gpu_count": 4, "start_at": at, "end_at": at, "earliest_start": at,
        "max_gpus_in_window": 0, "sellable_gpus": 64, "price_per_gpu_hour": "2.85",
        "total_value": "99868.8", "reason": "full",
    }));
    same_answer::<s::CapacityLine, c::CapacityLine>(json!({
        "site_id": site, "site": "memphis-2", "gpu_model": "GB200", "total_gpus": 72,
        "spare_buffer_gpus": 8, "spare_nodes": 1, "spare_nodes_wanted": 1, "sellable_gpus": 64, "committed_gpus_now": 4,
        "committed": [{"at": at, "gpus": 4}], "allocated": [{"class": "spot", "gpus": 2}],
        "free_gpus": 60, "stranded_free_gpus": 2, "stranded_share": 0.5,
        "largest_gang": [{"level": "pod", "nodes": 3}], "site_power_watts": 1000,
        "site_power_limit_watts": 2000, "placement_policy": "pack",
    }));
    same_answer::<s::XidRule, c::XidRule>(json!({
        "code": 79, "action": "fail", "meaning": "fell off the bus", "source": "builtin",
    }));
    same_answer::<s::InstanceLogs, c::InstanceLogs>(json!({
        "instance_id": "inst_01890000000070008000000000000001", "offset": 0, "next_offset": 5,
        "truncated": false, "data": "hello",
    }));
    same_answer::<s::GpuHistory, c::GpuHistory>(json!({
        "uuid": "GPU-1", "node": "n1", "index": 0, "health": "healthy", "failures": 0,
        "events": [],
    }));
    same_answer::<s::BacklogReport, c::BacklogReport>(json!({
        "as_of": at, "total": "10", "by_year": [{"year": 2030, "value": "10"}],
        "contracts": [{"contract_id": contract, "tenant_id": tenant, "remaining_value": "10"}],
    }));
    same_answer::<s::RevenueRow, c::RevenueRow>(json!({
        "month": "2030-01", "tenant_id": tenant, "class": "spot", "site_id": site,
        "amount": "1.5",
    }));
    same_answer::<s::UtilizationRow, c::UtilizationRow>(json!({
        "month": "2030-01", "site_id": site, "gpu_model": "GB200", "class": "spot",
        "gpu_seconds": 10, "sellable_gpu_seconds": 100, "utilization_milli_percent": 10000,
    }));
    same_answer::<s::PowerRow, c::PowerRow>(json!({
        "site_id": site, "site": "memphis-2", "allocated_watts": 1, "budget_watts": 2,
        "cap_watts": 2, "energy_usd_per_mwh": "80", "energy_cost_per_hour": "0.5",
    }));
    same_answer::<s::WebhookCreated, c::WebhookCreated>(json!({
        "id": "whk_01890000000070008000000000000001", "tenant_id": tenant,
        "url": "https://hooks.example.com/x", "events": ["instance.*"], "created_at": at,
        "pending_deliveries": 0, "secret": "whsec_00",
    }));
    same_answer::<s::MarginRow, c::MarginRow>(json!({
        "month": "2030-01", "site_id": site, "revenue": "10", "energy_kwh": 3,
        "energy_cost": "1", "gross_margin": "9", "internal_share_milli_percent": 0,
    }));
}
