//! One method per API operation.

use neocloud_types::{
    ApiKey, Block, Contract, Event, GpuModel, HealthEvent, ImportReport, Instance, Invoice,
    MaintenanceState, MaintenanceWindow, Node, Outage, PlacedNode, Price, Quota, Site, SshKey,
    Tenant, UsageRecord, Webhook, WebhookDelivery, WebhookDeliveryState,
};
use reqwest::Method;

use crate::model::{
    AmendContract, ApiKeyCreated, BacklogReport, CapacityLine, ContractTerms, CreateApiKey,
    CreateGpuModel, CreateSshKey, CreateTenant, CreateWebhook, EventFilter, GenerateInvoice,
    GpuHistory, InstanceFilter, InstanceLogs, LaunchInstance, List, MarginRow, NodeFilter, NodeOp,
    NodeOperation, Page, PageRequest, PowerRow, Quote, RevenueRow, ScheduleMaintenance,
    SetPowerCap, SetPrice, SetQuota, SetXidRule, UpdateTenant, UsageFilter, UtilizationRow,
    WebhookCreated, XidRule,
};
use crate::{Body, Client, Idem, Result, opt, seg};

/// A report that the API also writes as CSV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CsvReport {
    /// Utilization of a month (`YYYY-MM`).
    Utilization {
        /// Month.
        month: String,
    },
    /// Gross margin of a month (`YYYY-MM`).
    Margin {
        /// Month.
        month: String,
    },
    /// Revenue from one month to another (`YYYY-MM`).
    Revenue {
        /// First month.
        from: String,
        /// Last month.
        to: String,
    },
}

impl Client {
    // ----- fleet -----

    /// `POST /v1/fleet/import`: validates a fleet file (TOML) and applies it, or with
    /// `dry_run` only reports what would change.
    pub async fn fleet_import(&self, toml: &str, dry_run: bool) -> Result<ImportReport> {
        self.call(
            Method::POST,
            "/v1/fleet/import",
            &[("dry_run", dry_run.to_string())],
            Body::Toml(toml),
            Idem::None,
        )
        .await
    }

    /// `GET /v1/gpu-models`: the catalog.
    pub async fn gpu_models(&self) -> Result<Vec<GpuModel>> {
        Ok(self
            .get::<List<GpuModel>>("/v1/gpu-models", &[])
            .await?
            .items)
    }

    /// `GET /v1/gpu-models/{name}`.
    pub async fn gpu_model(&self, name: &str) -> Result<GpuModel> {
        self.get(&format!("/v1/gpu-models/{}", seg(name)), &[])
            .await
    }

    /// `POST /v1/gpu-models`: adds a model.
    pub async fn create_gpu_model(
        &self,
        body: &CreateGpuModel,
        idempotency_key: Option<&str>,
    ) -> Result<GpuModel> {
        self.with_body(
            Method::POST,
            "/v1/gpu-models",
            body,
            Idem::Create(idempotency_key),
        )
        .await
    }

    /// `GET /v1/sites`.
    pub async fn sites(&self) -> Result<Vec<Site>> {
        Ok(self.get::<List<Site>>("/v1/sites", &[]).await?.items)
    }

    /// `GET /v1/sites/{site}` (id or name).
    pub async fn site(&self, site: &str) -> Result<Site> {
        self.get(&format!("/v1/sites/{}", seg(site)), &[]).await
    }

    /// `PUT /v1/sites/{site}/power-cap`: caps a site's power, or removes the cap (`None`).
    pub async fn set_power_cap(&self, site: &str, watts: Option<i64>) -> Result<Site> {
        self.with_body(
            Method::PUT,
            &format!("/v1/sites/{}/power-cap", seg(site)),
            &SetPowerCap { watts },
            Idem::None,
        )
        .await
    }

    /// `GET /v1/blocks`, of one site or all.
    pub async fn blocks(&self, site: Option<&str>) -> Result<Vec<Block>> {
        let q: Vec<(&'static str, String)> =
            site.map(|s| ("site", s.to_string())).into_iter().collect();
        Ok(self.get::<List<Block>>("/v1/blocks", &q).await?.items)
    }

    /// `GET /v1/blocks/{id}`.
    pub async fn block(&self, id: &str) -> Result<Block> {
        self.get(&format!("/v1/blocks/{}", seg(id)), &[]).await
    }

    fn node_query(filter: &NodeFilter) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        opt(
            &mut q,
            &[
                ("site", &filter.site),
                ("block", &filter.block),
                ("state", &filter.state),
                ("gpu_model", &filter.gpu_model),
            ],
        );
        q
    }

    /// `GET /v1/nodes`: one page.
    pub async fn nodes(&self, filter: &NodeFilter, page: &PageRequest) -> Result<Page<Node>> {
        let mut q = Client::node_query(filter);
        page.push(&mut q);
        self.get("/v1/nodes", &q).await
    }

    /// `GET /v1/nodes`: every page.
    pub async fn nodes_all(&self, filter: &NodeFilter) -> Result<Vec<Node>> {
        self.all_pages("/v1/nodes", &Client::node_query(filter))
            .await
    }

    /// `GET /v1/nodes/{node}` (id or name), with its GPUs.
    pub async fn node(&self, node: &str) -> Result<Node> {
        self.get(&format!("/v1/nodes/{}", seg(node)), &[]).await
    }

    /// `POST /v1/nodes/{node}/{op}`: cordon, uncordon, drain or repair-complete.
    pub async fn node_operation(
        &self,
        node: &str,
        op: NodeOp,
        reason: Option<String>,
    ) -> Result<Node> {
        self.with_body(
            Method::POST,
            &format!("/v1/nodes/{}/{}", seg(node), op.as_str()),
            &NodeOperation { reason },
            Idem::None,
        )
        .await
    }

    /// `GET /v1/nodes/{node}/health`: newest first.
    pub async fn node_health(&self, node: &str, limit: u32) -> Result<Vec<HealthEvent>> {
        self.get(
            &format!("/v1/nodes/{}/health", seg(node)),
            &[("limit", limit.to_string())],
        )
        .await
    }

    /// `GET /v1/gpus/{uuid}/history`.
    pub async fn gpu_history(&self, uuid: &str, limit: u32) -> Result<GpuHistory> {
        self.get(
            &format!("/v1/gpus/{}/history", seg(uuid)),
            &[("limit", limit.to_string())],
        )
        .await
    }

    /// `GET /v1/health/rules`: the XID policy.
    pub async fn health_rules(&self) -> Result<Vec<XidRule>> {
        self.get("/v1/health/rules", &[]).await
    }

    /// `PUT /v1/health/rules/{code}`: overrides what an XID code does.
    pub async fn set_health_rule(&self, code: u32, body: &SetXidRule) -> Result<Vec<XidRule>> {
        self.with_body(
            Method::PUT,
            &format!("/v1/health/rules/{code}"),
            body,
            Idem::None,
        )
        .await
    }

    /// `DELETE /v1/health/rules/{code}`: the built-in rule applies again.
    pub async fn reset_health_rule(&self, code: u32) -> Result<Vec<XidRule>> {
        self.call(
            Method::DELETE,
            &format!("/v1/health/rules/{code}"),
            &[],
            Body::None,
            Idem::None,
        )
        .await
    }

    // ----- tenancy -----

    /// `GET /v1/tenants`: one page.
    pub async fn tenants(&self, page: &PageRequest) -> Result<Page<Tenant>> {
        let mut q = Vec::new();
        page.push(&mut q);
        self.get("/v1/tenants", &q).await
    }

    /// `GET /v1/tenants`: every page.
    pub async fn tenants_all(&self) -> Result<Vec<Tenant>> {
        self.all_pages("/v1/tenants", &[]).await
    }

    /// `GET /v1/tenants/{tenant}` (id or name).
    pub async fn tenant(&self, tenant: &str) -> Result<Tenant> {
        self.get(&format!("/v1/tenants/{}", seg(tenant)), &[]).await
    }

    /// `POST /v1/tenants`.
    pub async fn create_tenant(
        &self,
        body: &CreateTenant,
        idempotency_key: Option<&str>,
    ) -> Result<Tenant> {
        self.with_body(
            Method::POST,
            "/v1/tenants",
            body,
            Idem::Create(idempotency_key),
        )
        .await
    }

    /// `PATCH /v1/tenants/{tenant}`.
    pub async fn update_tenant(&self, tenant: &str, body: &UpdateTenant) -> Result<Tenant> {
        self.with_body(
            Method::PATCH,
            &format!("/v1/tenants/{}", seg(tenant)),
            body,
            Idem::None,
        )
        .await
    }

    /// `GET /v1/api-keys`: every page, of one tenant or all.
    pub async fn api_keys_all(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let q: Vec<(&'static str, String)> = tenant
            .map(|t| ("tenant", t.to_string()))
            .into_iter()
            .collect();
        self.all_pages("/v1/api-keys", &q).await
    }

    /// `GET /v1/api-keys/{id}`.
    pub async fn api_key(&self, id: &str) -> Result<ApiKey> {
        self.get(&format!("/v1/api-keys/{}", seg(id)), &[]).await
    }

    /// `POST /v1/api-keys`: the answer holds the secret, this once.
    pub async fn create_api_key(
        &self,
        body: &CreateApiKey,
        idempotency_key: Option<&str>,
    ) -> Result<ApiKeyCreated> {
        self.with_body(
            Method::POST,
            "/v1/api-keys",
            body,
            Idem::Create(idempotency_key),
        )
        .await
    }

    /// `DELETE /v1/api-keys/{id}`: revokes a key at once.
    pub async fn revoke_api_key(&self, id: &str) -> Result<ApiKey> {
        self.call(
            Method::DELETE,
            &format!("/v1/api-keys/{}", seg(id)),
            &[],
            Body::None,
            Idem::None,
        )
        .await
    }

    /// `GET /v1/events`: one page, newest first.
    pub async fn events(&self, filter: &EventFilter, page: &PageRequest) -> Result<Page<Event>> {
        let mut q = Vec::new();
        opt(
            &mut q,
            &[
                ("tenant", &filter.tenant),
                ("resource_id", &filter.resource_id),
                ("action", &filter.action),
                ("cursor", &page.cursor),
            ],
        );
        if let Some(l) = page.limit {
            q.push(("limit", l.to_string()));
        }
        self.get("/v1/events", &q).await
    }

    // ----- instances -----

    /// `GET /v1/instances`: one page, newest first.
    pub async fn instances(
        &self,
        filter: &InstanceFilter,
        page: &PageRequest,
    ) -> Result<Page<Instance>> {
        let mut q = Vec::new();
        opt(
            &mut q,
            &[
                ("tenant", &filter.tenant),
                ("state", &filter.state),
                ("cursor", &page.cursor),
            ],
        );
        if let Some(l) = page.limit {
            q.push(("limit", l.to_string()));
        }
        self.get("/v1/instances", &q).await
    }

    /// `POST /v1/instances`: launches an instance.
    pub async fn launch_instance(
        &self,
        body: &LaunchInstance,
        idempotency_key: Option<&str>,
    ) -> Result<Instance> {
        self.with_body(
            Method::POST,
            "/v1/instances",
            body,
            Idem::Create(idempotency_key),
        )
        .await
    }

    /// `GET /v1/instances/{id}`.
    pub async fn instance(&self, id: &str) -> Result<Instance> {
        self.get(&format!("/v1/instances/{}", seg(id)), &[]).await
    }

    /// `GET /v1/instances/{id}/nodes`: one page of its nodes, by node id.
    pub async fn instance_nodes(&self, id: &str, page: &PageRequest) -> Result<Page<PlacedNode>> {
        let mut q = Vec::new();
        page.push(&mut q);
        self.get(&format!("/v1/instances/{}/nodes", seg(id)), &q)
            .await
    }

    /// Every node of an instance: its `placement`, read page by page where its answer
    /// summarises them (`placement_summary`, an instance on more than 128 nodes).
    pub async fn instance_all_nodes(&self, id: &str) -> Result<Vec<PlacedNode>> {
        self.all_pages(&format!("/v1/instances/{}/nodes", seg(id)), &[])
            .await
    }

    /// `POST /v1/instances/{id}/terminate`.
    pub async fn terminate_instance(&self, id: &str) -> Result<Instance> {
        self.call(
            Method::POST,
            &format!("/v1/instances/{}/terminate", seg(id)),
            &[],
            Body::None,
            Idem::None,
        )
        .await
    }

    /// `GET /v1/instances/{id}/logs`: its output from byte `offset` on.
    pub async fn instance_logs(&self, id: &str, offset: u64) -> Result<InstanceLogs> {
        self.get(
            &format!("/v1/instances/{}/logs", seg(id)),
            &[("offset", offset.to_string())],
        )
        .await
    }

    /// `GET /v1/ssh-keys`, of one tenant (operator keys) or the caller's.
    pub async fn ssh_keys(&self, tenant: Option<&str>) -> Result<Vec<SshKey>> {
        let q: Vec<(&'static str, String)> = tenant
            .map(|t| ("tenant", t.to_string()))
            .into_iter()
            .collect();
        self.get("/v1/ssh-keys", &q).await
    }

    /// `POST /v1/ssh-keys`.
    pub async fn add_ssh_key(
        &self,
        body: &CreateSshKey,
        idempotency_key: Option<&str>,
    ) -> Result<SshKey> {
        self.with_body(
            Method::POST,
            "/v1/ssh-keys",
            body,
            Idem::Create(idempotency_key),
        )
        .await
    }

    /// `DELETE /v1/ssh-keys/{key}` (name or id).
    pub async fn delete_ssh_key(&self, key: &str, tenant: Option<&str>) -> Result<SshKey> {
        let q: Vec<(&'static str, String)> = tenant
            .map(|t| ("tenant", t.to_string()))
            .into_iter()
            .collect();
        self.call(
            Method::DELETE,
            &format!("/v1/ssh-keys/{}", seg(key)),
            &q,
            Body::None,
            Idem::None,
        )
        .await
    }

    // ----- maintenance -----

    /// `GET /v1/maintenance`: windows, latest start first (operator), optionally in one
    /// state.
    pub async fn maintenance_windows(
        &self,
        state: Option<MaintenanceState>,
    ) -> Result<Vec<MaintenanceWindow>> {
        let q: Vec<(&'static str, String)> = state
            .map(|s| ("state", s.as_str().to_string()))
            .into_iter()
            .collect();
        Ok(self
            .get::<List<MaintenanceWindow>>("/v1/maintenance", &q)
            .await?
            .items)
    }

    /// `GET /v1/maintenance/{id}`.
    pub async fn maintenance_window(&self, id: &str) -> Result<MaintenanceWindow> {
        self.get(&format!("/v1/maintenance/{}", seg(id)), &[]).await
    }

    /// `POST /v1/maintenance`: announces a window; its nodes are cordoned at once.
    pub async fn schedule_maintenance(
        &self,
        body: &ScheduleMaintenance,
        idempotency_key: Option<&str>,
    ) -> Result<MaintenanceWindow> {
        self.with_body(
            Method::POST,
            "/v1/maintenance",
            body,
            Idem::Create(idempotency_key),
        )
        .await
    }

    /// `POST /v1/maintenance/{id}/cancel`: calls off a window not begun, or ends one in
    /// progress early.
    pub async fn cancel_maintenance(&self, id: &str) -> Result<MaintenanceWindow> {
        self.call(
            Method::POST,
            &format!("/v1/maintenance/{}/cancel", seg(id)),
            &[],
            Body::None,
            Idem::Create(None),
        )
        .await
    }

    // ----- webhooks -----

    /// `GET /v1/webhooks`: the caller's tenant's, or for operator keys every one (or one
    /// tenant's).
    pub async fn webhooks(&self, tenant: Option<&str>) -> Result<Vec<Webhook>> {
        let q: Vec<(&'static str, String)> = tenant
            .map(|t| ("tenant", t.to_string()))
            .into_iter()
            .collect();
        Ok(self.get::<List<Webhook>>("/v1/webhooks", &q).await?.items)
    }

    /// `GET /v1/webhooks/{id}`.
    pub async fn webhook(&self, id: &str) -> Result<Webhook> {
        self.get(&format!("/v1/webhooks/{}", seg(id)), &[]).await
    }

    /// `POST /v1/webhooks`: the answer holds the signing secret, this once.
    pub async fn create_webhook(
        &self,
        body: &CreateWebhook,
        idempotency_key: Option<&str>,
    ) -> Result<WebhookCreated> {
        self.with_body(
            Method::POST,
            "/v1/webhooks",
            body,
            Idem::Create(idempotency_key),
        )
        .await
    }

    /// `DELETE /v1/webhooks/{id}`.
    pub async fn delete_webhook(&self, id: &str) -> Result<Webhook> {
        self.call(
            Method::DELETE,
            &format!("/v1/webhooks/{}", seg(id)),
            &[],
            Body::None,
            Idem::None,
        )
        .await
    }

    /// `POST /v1/webhooks/{id}/test`: queues a `webhook.test` event for it; the answer is
    /// the event.
    pub async fn test_webhook(&self, id: &str) -> Result<Event> {
        self.call(
            Method::POST,
            &format!("/v1/webhooks/{}/test", seg(id)),
            &[],
            Body::None,
            Idem::Create(None),
        )
        .await
    }

    /// `GET /v1/webhooks/{id}/deliveries`: one page of its delivery log, newest first.
    pub async fn webhook_deliveries(
        &self,
        id: &str,
        state: Option<WebhookDeliveryState>,
        page: &PageRequest,
    ) -> Result<Page<WebhookDelivery>> {
        let mut q = Vec::new();
        if let Some(s) = state {
            q.push(("state", s.as_str().to_string()));
        }
        page.push(&mut q);
        self.get(&format!("/v1/webhooks/{}/deliveries", seg(id)), &q)
            .await
    }

    /// `GET /v1/quotas`, of one tenant or all.
    pub async fn quotas(&self, tenant: Option<&str>) -> Result<Vec<Quota>> {
        let q: Vec<(&'static str, String)> = tenant
            .map(|t| ("tenant", t.to_string()))
            .into_iter()
            .collect();
        Ok(self.get::<List<Quota>>("/v1/quotas", &q).await?.items)
    }

    /// `PUT /v1/quotas`: sets or removes a quota; answers the tenant's quotas.
    pub async fn set_quota(&self, body: &SetQuota) -> Result<Vec<Quota>> {
        Ok(self
            .with_body::<List<Quota>, _>(Method::PUT, "/v1/quotas", body, Idem::None)
            .await?
            .items)
    }

    // ----- contracts -----

    /// `POST /v1/quotes`: what reserved capacity fits, when, at what price.
    pub async fn quote(&self, terms: &ContractTerms) -> Result<Quote> {
        self.with_body(Method::POST, "/v1/quotes", terms, Idem::None)
            .await
    }

    /// `POST /v1/contracts`: signs a contract.
    pub async fn sign_contract(
        &self,
        terms: &ContractTerms,
        idempotency_key: Option<&str>,
    ) -> Result<Contract> {
        self.with_body(
            Method::POST,
            "/v1/contracts",
            terms,
            Idem::Create(idempotency_key),
        )
        .await
    }

    /// `GET /v1/contracts`: every page, of one tenant or all.
    pub async fn contracts_all(&self, tenant: Option<&str>) -> Result<Vec<Contract>> {
        let q: Vec<(&'static str, String)> = tenant
            .map(|t| ("tenant", t.to_string()))
            .into_iter()
            .collect();
        self.all_pages("/v1/contracts", &q).await
    }

    /// `GET /v1/contracts/{id}`.
    pub async fn contract(&self, id: &str) -> Result<Contract> {
        self.get(&format!("/v1/contracts/{}", seg(id)), &[]).await
    }

    /// `POST /v1/contracts/{id}/cancel`.
    pub async fn cancel_contract(&self, id: &str) -> Result<Contract> {
        self.call(
            Method::POST,
            &format!("/v1/contracts/{}/cancel", seg(id)),
            &[],
            Body::None,
            Idem::None,
        )
        .await
    }

    /// `POST /v1/contracts/{id}/amend`: more GPUs and/or a later end.
    pub async fn amend_contract(&self, id: &str, body: &AmendContract) -> Result<Contract> {
        self.with_body(
            Method::POST,
            &format!("/v1/contracts/{}/amend", seg(id)),
            body,
            Idem::None,
        )
        .await
    }

    /// `GET /v1/contracts/{id}/outages`.
    pub async fn contract_outages(&self, id: &str) -> Result<Vec<Outage>> {
        self.get(&format!("/v1/contracts/{}/outages", seg(id)), &[])
            .await
    }

    /// `GET /v1/capacity`, of one site and/or model or all.
    pub async fn capacity(
        &self,
        site: Option<&str>,
        gpu_model: Option<&str>,
    ) -> Result<Vec<CapacityLine>> {
        let mut q: Vec<(&'static str, String)> = Vec::new();
        if let Some(s) = site {
            q.push(("site", s.to_string()));
        }
        if let Some(m) = gpu_model {
            q.push(("gpu_model", m.to_string()));
        }
        Ok(self
            .get::<List<CapacityLine>>("/v1/capacity", &q)
            .await?
            .items)
    }

    // ----- billing -----

    /// `GET /v1/prices`, of one model or all.
    pub async fn prices(&self, gpu_model: Option<&str>) -> Result<Vec<Price>> {
        let q: Vec<(&'static str, String)> = gpu_model
            .map(|m| ("gpu_model", m.to_string()))
            .into_iter()
            .collect();
        Ok(self.get::<List<Price>>("/v1/prices", &q).await?.items)
    }

    /// `POST /v1/prices`: adds a price.
    pub async fn set_price(&self, body: &SetPrice, idempotency_key: Option<&str>) -> Result<Price> {
        self.with_body(
            Method::POST,
            "/v1/prices",
            body,
            Idem::Create(idempotency_key),
        )
        .await
    }

    fn usage_query(filter: &UsageFilter) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        opt(
            &mut q,
            &[
                ("tenant", &filter.tenant),
                ("month", &filter.month),
                ("instance", &filter.instance),
                ("class", &filter.class),
            ],
        );
        q
    }

    /// `GET /v1/usage`: one page.
    pub async fn usage(
        &self,
        filter: &UsageFilter,
        page: &PageRequest,
    ) -> Result<Page<UsageRecord>> {
        let mut q = Client::usage_query(filter);
        page.push(&mut q);
        self.get("/v1/usage", &q).await
    }

    /// `GET /v1/usage?format=csv`: one page as CSV.
    pub async fn usage_csv(&self, filter: &UsageFilter, page: &PageRequest) -> Result<String> {
        let mut q = Client::usage_query(filter);
        page.push(&mut q);
        q.push(("format", "csv".to_string()));
        self.get_text("/v1/usage", &q).await
    }

    /// `GET /v1/invoices`, of one tenant or all.
    pub async fn invoices(&self, tenant: Option<&str>) -> Result<Vec<Invoice>> {
        let q: Vec<(&'static str, String)> = tenant
            .map(|t| ("tenant", t.to_string()))
            .into_iter()
            .collect();
        Ok(self.get::<List<Invoice>>("/v1/invoices", &q).await?.items)
    }

    /// `GET /v1/invoices/{id}`.
    pub async fn invoice(&self, id: &str) -> Result<Invoice> {
        self.get(&format!("/v1/invoices/{}", seg(id)), &[]).await
    }

    /// `POST /v1/invoices`: generates (or regenerates) a draft invoice.
    pub async fn generate_invoice(
        &self,
        body: &GenerateInvoice,
        idempotency_key: Option<&str>,
    ) -> Result<Invoice> {
        self.with_body(
            Method::POST,
            "/v1/invoices",
            body,
            Idem::Create(idempotency_key),
        )
        .await
    }

    /// `POST /v1/invoices/{id}/finalize`.
    pub async fn finalize_invoice(&self, id: &str) -> Result<Invoice> {
        self.call(
            Method::POST,
            &format!("/v1/invoices/{}/finalize", seg(id)),
            &[],
            Body::None,
            Idem::None,
        )
        .await
    }

    /// `GET /v1/reports/backlog`.
    pub async fn backlog(&self) -> Result<BacklogReport> {
        self.get("/v1/reports/backlog", &[]).await
    }

    /// `GET /v1/reports/utilization` for a month (`YYYY-MM`).
    pub async fn utilization(&self, month: &str) -> Result<Vec<UtilizationRow>> {
        Ok(self
            .get::<List<UtilizationRow>>("/v1/reports/utilization", &[("month", month.to_string())])
            .await?
            .items)
    }

    /// `GET /v1/reports/power`.
    pub async fn power(&self) -> Result<Vec<PowerRow>> {
        Ok(self
            .get::<List<PowerRow>>("/v1/reports/power", &[])
            .await?
            .items)
    }

    /// `GET /v1/reports/margin` for a month (`YYYY-MM`).
    pub async fn margin(&self, month: &str) -> Result<Vec<MarginRow>> {
        Ok(self
            .get::<List<MarginRow>>("/v1/reports/margin", &[("month", month.to_string())])
            .await?
            .items)
    }

    /// `GET /v1/reports/revenue` from one month to another (`YYYY-MM`).
    pub async fn revenue(&self, from: &str, to: &str) -> Result<Vec<RevenueRow>> {
        Ok(self
            .get::<List<RevenueRow>>(
                "/v1/reports/revenue",
                &[("from", from.to_string()), ("to", to.to_string())],
            )
            .await?
            .items)
    }

    /// A report as CSV (`?format=csv`).
    pub async fn report_csv(&self, report: &CsvReport) -> Result<String> {
        let (path, mut q): (&str, Vec<(&'static str, String)>) = match report {
            CsvReport::Utilization { month } => {
                ("/v1/reports/utilization", vec![("month", month.clone())])
            }
            CsvReport::Margin { month } => ("/v1/reports/margin", vec![("month", month.clone())]),
            CsvReport::Revenue { from, to } => (
                "/v1/reports/revenue",
                vec![("from", from.clone()), ("to", to.clone())],
            ),
        };
        q.push(("format", "csv".to_string()));
        self.get_text(path, &q).await
    }
}
