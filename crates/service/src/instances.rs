//! Instances: launch, read, terminate; quotas; the periodic tick.

use neocloud_store::{InstanceFilter, Page, Store};
use neocloud_types::{
    Class, Instance, InstanceId, InstanceState, Quota, TenantKind, TenantStatus, Timestamp,
};

use crate::auth::{self, Action, Principal};
use crate::error::OrNotFound;
use crate::error::{Error, ErrorCode, Result};
use crate::scheduler::{self, Queued, request_of};
use crate::{Created, Idempotency, LaunchInstance, Service, SetQuota, page_limit};

/// How often spot prices are recomputed from utilization.
pub const SPOT_REPRICE_SECS: i64 = 60;

impl Service {
    /// Launches an instance: places it now, queues it (when it asked to wait, or when
    /// lower-priority work is being preempted for it), or refuses with the reason.
    pub async fn instance_launch(
        &self,
        p: &Principal,
        req: LaunchInstance,
        idem: Option<&Idempotency>,
    ) -> Result<Created<Instance>> {
        auth::authorize(p, Action::WriteInstances)?;
        let shape = req.shape()?;
        if matches!(shape, neocloud_types::Shape::Nodes { .. })
            && (req.cpu_milli.is_some() || req.memory_mib.is_some())
        {
            return Err(Error::invalid(
                "a gang holds whole nodes: cpu_milli and memory_mib do not apply",
            ));
        }
        let tenant = match (&req.tenant_id, p.tenant_scope()) {
            (Some(t), _) => self.visible_tenant(p, t).await?,
            (None, Some(own)) => self.store.tenant_get(&own.to_string()).await?,
            (None, None) => {
                return Err(Error::invalid(
                    "tenant_id is required when an operator key launches",
                ));
            }
        };
        if tenant.status == TenantStatus::Suspended {
            return Err(Error::forbidden(format!(
                "tenant '{}' is suspended",
                tenant.name
            )));
        }
        match (req.class, tenant.kind) {
            (Class::Internal, TenantKind::External) => {
                return Err(Error::invalid(
                    "class internal is only for internal tenants",
                ));
            }
            (Class::Reserved, _) if req.contract_id.is_none() => {
                return Err(Error::invalid("class reserved needs contract_id"));
            }
            (c, _) if c != Class::Reserved && req.contract_id.is_some() => {
                return Err(Error::invalid("contract_id is only for class reserved"));
            }
            _ => {}
        }
        self.store
            .gpu_model_get(&req.gpu_model)
            .await
            .map_err(|_| Error::invalid(format!("unknown GPU model '{}'", req.gpu_model)))?;
        let site = match &req.site {
            Some(s) => Some(
                self.store
                    .site_id_of(s)
                    .await?
                    .parse()
                    .map_err(|_| Error::not_found("site", s))?,
            ),
            None => None,
        };
        if let Some(c) = req.contract_id {
            let contract = self
                .store
                .contract_get(c)
                .await
                .map_err(|_| Error::not_found("contract", &c.to_string()))?;
            if contract.tenant_id != tenant.id {
                return Err(Error::not_found("contract", &c.to_string()));
            }
        }
        let now = Timestamp::now();
        let mut inst = Instance {
            id: InstanceId::new(),
            tenant_id: tenant.id,
            name: req.name.clone(),
            class: req.class,
            gpu_model: req.gpu_model.clone(),
            shape,
            gpu_count: 0,
            cpu_milli: req.cpu_milli,
            memory_mib: req.memory_mib,
            requested_site_id: site,
            site_id: None,
            contract_id: req.contract_id,
            state: InstanceState::Pending,
            reason: None,
            placement: Vec::new(),
            created_at: now,
            started_at: None,
            ended_at: None,
            preempt_at: None,
            wait_until: req.wait_seconds.map(|w| now.plus_seconds(i64::from(w))),
        };
        // A replay answers before any capacity is looked at.
        if let Some(idem) = idem
            && let Some(rec) = self
                .store
                .idempotency_find(&p.key_id.to_string(), &idem.key)
                .await?
        {
            return Self::replay(rec, idem);
        }
        let mut sched = self.sched.lock().await;
        check_sharing(&sched, &inst)?;
        let request = request_of(&inst);
        let placed = scheduler::place_checked(&mut sched, &request, now).await?;
        // A malformed request is refused, never queued: waiting cannot fix it.
        if let Err((
            r @ (neocloud_allocator::Refusal::BadShape { .. }
            | neocloud_allocator::Refusal::UnknownModel { .. }
            | neocloud_allocator::Refusal::UnknownSite { .. }),
            _,
        )) = &placed
        {
            return Err(scheduler::refusal_error(r.clone()));
        }
        // GPUs this instance will hold: known from the placement, or from the shape and the
        // node size of the model.
        inst.gpu_count = match &placed {
            Ok(a) => u32::try_from(a.gpu_count()).unwrap_or(u32::MAX),
            Err(_) => self.shape_gpus(&inst).await?,
        };
        if let Err(e) = self.check_quota(&sched.quotas, &inst).await {
            if let Ok(a) = &placed {
                sched.release(a.id);
            }
            return Err(e);
        }
        match placed {
            Ok(a) => {
                inst.state = InstanceState::Running;
                inst.site_id = Some(a.site);
                inst.started_at = Some(now);
                inst.wait_until = None;
                let mut view = inst.clone();
                view.placement = scheduler::placed_nodes(&a, &sched.node_names);
                let idem_rec = match idem {
                    Some(i) => Some((
                        p.key_id.to_string(),
                        i.key.clone(),
                        neocloud_store::IdempotencyRecord {
                            fingerprint: i.fingerprint.clone(),
                            status: 201,
                            body: serde_json::to_string(&view)
                                .map_err(|e| Error::internal(e.to_string()))?,
                        },
                    )),
                    None => None,
                };
                // Decided: hand the records to the group-commit writer and let the next
                // launch decide while this one is written.
                let settled = self.inflight.clone().read_owned().await;
                let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                let job = crate::writer::LaunchWrite {
                    inst: inst.clone(),
                    gpus: a.gpus.clone(),
                    held: scheduler::held_of(&a),
                    actor: p.key_id,
                    idem: idem_rec,
                    done: done_tx,
                };
                if self.writer.send(job).await.is_err() {
                    sched.release(inst.id);
                    return Err(Error::internal("the launch writer has stopped"));
                }
                drop(sched);
                let written = done_rx
                    .await
                    .unwrap_or_else(|_| Err(Error::internal("the launch writer has stopped")));
                drop(settled);
                match written {
                    Ok(()) => Ok(Created {
                        value: view,
                        replayed: false,
                    }),
                    Err(e) => {
                        self.sched.lock().await.release(inst.id);
                        Err(e)
                    }
                }
            }
            Err((refusal, preemption_may_help)) => {
                let victims = if req.class != Class::Spot && preemption_may_help {
                    sched
                        .alloc
                        .preemption_plan(&request)
                        .filter(|v| !v.is_empty())
                } else {
                    None
                };
                if victims.is_none() && inst.wait_until.is_none() {
                    return Err(scheduler::refusal_error(refusal));
                }
                inst.reason = Some(match &victims {
                    Some(v) => format!(
                        "waiting for {} lower-priority instance(s) to be preempted (notice {} s)",
                        v.len(),
                        sched.config.preemption_grace_secs
                    ),
                    None => format!("queued: {refusal}"),
                });
                if let Some(v) = &victims {
                    let deadline = sched.notify_victims(&self.store, v, inst.id, now).await?;
                    // It waits at least until the victims are gone.
                    let need = deadline.plus_seconds(60);
                    inst.wait_until = Some(inst.wait_until.map_or(need, |w| w.max(need)));
                }
                let mut tx = self.store.begin_write().await?;
                Store::instance_insert(&mut tx, &inst).await?;
                scheduler::event(
                    &mut tx,
                    Some(p.key_id),
                    &inst,
                    "instance.pending",
                    None,
                    None,
                )
                .await?;
                Self::idem_store(&mut tx, p, idem, &inst).await?;
                tx.commit().await?;
                let prio = inst.class.priority(sched.config.fleet_policy);
                sched.queue.insert(
                    (std::cmp::Reverse(prio), inst.id),
                    Queued {
                        request,
                        wait_until: inst.wait_until,
                        since: inst.created_at,
                    },
                );
                Ok(Created {
                    value: inst,
                    replayed: false,
                })
            }
        }
    }

    async fn shape_gpus(&self, inst: &Instance) -> Result<u32> {
        Ok(match inst.shape {
            neocloud_types::Shape::Gpus { gpus } => gpus,
            neocloud_types::Shape::Share { .. } | neocloud_types::Shape::Mig { .. } => 1,
            neocloud_types::Shape::Cpu => 0,
            neocloud_types::Shape::Nodes { count, .. } => {
                let per_node = self
                    .store
                    .gpu_model_node_size(&inst.gpu_model)
                    .await?
                    .unwrap_or(8);
                count.saturating_mul(per_node)
            }
        })
    }

    async fn check_quota(&self, quotas: &[Quota], inst: &Instance) -> Result<()> {
        let Some(q) = quotas.iter().find(|q| {
            q.tenant_id == inst.tenant_id && q.gpu_model == inst.gpu_model && q.class == inst.class
        }) else {
            return Ok(());
        };
        // Thousandths of a GPU: a share counts its share, a MIG instance its compute slices
        // out of 7, CPU-only nothing; the sum, rounded up to whole GPUs, is held to the quota.
        let used: i64 = self
            .store
            .instance_usage(inst.tenant_id)
            .await?
            .into_iter()
            .filter(|(m, c, _)| *m == inst.gpu_model && *c == inst.class)
            .map(|(_, _, g)| g)
            .sum();
        let asks = i64::try_from(inst.shape.gpu_milli(inst.gpu_count)).unwrap_or(i64::MAX);
        if asks > 0 && (used + asks + 999) / 1000 > i64::from(q.max_gpus) {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "quota for {} {} GPUs is {}; {} are in use and this asks for {}",
                    inst.class,
                    inst.gpu_model,
                    q.max_gpus,
                    gpus_text(used),
                    gpus_text(asks)
                ),
            ));
        }
        Ok(())
    }

    async fn visible_instance(&self, p: &Principal, id: &str) -> Result<Instance> {
        let not_found = || Error::not_found("instance", id);
        let iid: InstanceId = id.parse().map_err(|_| not_found())?;
        let inst = self.store.instance_get(iid).await.or_not_found(not_found)?;
        match p.tenant_scope() {
            Some(own) if own != inst.tenant_id => Err(not_found()),
            _ => Ok(inst),
        }
    }

    /// Reads an instance.
    pub async fn instance_get(&self, p: &Principal, id: &str) -> Result<Instance> {
        auth::authorize(p, Action::ReadInstances)?;
        self.visible_instance(p, id).await
    }

    /// Lists instances, newest first (a tenant key sees its own).
    pub async fn instance_list(
        &self,
        p: &Principal,
        tenant: Option<&str>,
        state: Option<InstanceState>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Instance>> {
        auth::authorize(p, Action::ReadInstances)?;
        let limit = page_limit(limit)?;
        let tenant_id = self.scoped_tenant(p, tenant).await?;
        Ok(self
            .store
            .instance_list(&InstanceFilter { tenant_id, state }, cursor, limit)
            .await?)
    }

    /// Terminates an instance: its GPUs are freed at once and the queue is served.
    pub async fn instance_terminate(&self, p: &Principal, id: &str) -> Result<Instance> {
        auth::authorize(p, Action::WriteInstances)?;
        let mut inst = self.visible_instance(p, id).await?;
        if inst.state.is_final() {
            return Ok(inst);
        }
        let mut sched = self.sched.lock().await;
        let now = Timestamp::now();
        let before = serde_json::to_value(&inst).ok();
        let held = inst.state.holds_gpus();
        inst.state = InstanceState::Terminated;
        inst.ended_at = Some(now);
        if !held {
            inst.reason = Some("terminated before it was placed".into());
        }
        let book = self.price_book().await?;
        let metered = self.store.instance_metered_until(inst.id).await?;
        let mut tx = self.store.begin_write().await?;
        Store::instance_update(&mut tx, &inst).await?;
        if held {
            crate::billing::meter(&self.store, &mut tx, &book, &inst, metered, now).await?;
        }
        Store::instance_release_gpus(&mut tx, inst.id).await?;
        scheduler::event(
            &mut tx,
            Some(p.key_id),
            &inst,
            "instance.terminated",
            before,
            None,
        )
        .await?;
        tx.commit().await?;
        sched.release(inst.id);
        sched.queue.retain(|(_, qid), _| *qid != inst.id);
        sched.tick(&self.store, &book, now).await?;
        drop(sched);
        Ok(self.store.instance_get(inst.id).await?)
    }

    /// Runs the scheduler's periodic work at `now`: ends preemption notices that ran out,
    /// expires queued instances past their deadline, and starts queued instances that fit.
    pub async fn tick(&self, now: Timestamp) -> Result<usize> {
        let book = self.price_book().await?;
        let mut sched = self.sched.lock().await;
        self.contracts_advance(&mut sched, now).await?;
        let changed = sched.tick(&self.store, &book, now).await?;
        // Spot prices follow utilization, recomputed once a minute.
        if sched
            .spot_repriced_at
            .is_none_or(|t| t.plus_seconds(SPOT_REPRICE_SECS) <= now)
        {
            self.spot_reprice(&sched, &book, now).await?;
            sched.spot_repriced_at = Some(now);
        }
        Ok(changed)
    }

    /// Sets or removes a quota.
    pub async fn quota_set(&self, p: &Principal, req: SetQuota) -> Result<Vec<Quota>> {
        auth::authorize(p, Action::WriteQuotas)?;
        if let Some(m) = req.max_gpus
            && m > crate::MAX_GPUS
        {
            return Err(Error::invalid(format!(
                "max_gpus must be at most {} (got {m})",
                crate::MAX_GPUS
            )));
        }
        let tenant = self.visible_tenant(p, &req.tenant_id).await?;
        self.store.gpu_model_get(&req.gpu_model).await?;
        // Same lock order as launches: scheduler first, then the write transaction.
        let mut sched = self.sched.lock().await;
        let mut tx = self.store.begin_write().await?;
        Store::quota_put(&mut tx, tenant.id, &req.gpu_model, req.class, req.max_gpus).await?;
        Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor: Some(p.key_id),
                tenant_id: Some(tenant.id),
                action: "quota.set",
                resource_kind: "quota",
                resource_id: format!("{}/{}/{}", tenant.id, req.gpu_model, req.class),
                before: None,
                after: Some(serde_json::json!({"max_gpus": req.max_gpus})),
            },
        )
        .await?;
        tx.commit().await?;
        sched.quotas = self.store.quota_list(None).await?;
        drop(sched);
        Ok(self.store.quota_list(Some(tenant.id)).await?)
    }

    /// Lists quotas (a tenant key sees its own).
    pub async fn quota_list(&self, p: &Principal, tenant: Option<&str>) -> Result<Vec<Quota>> {
        auth::authorize(p, Action::ReadQuotas)?;
        let t = self.scoped_tenant(p, tenant).await?;
        Ok(self.store.quota_list(t).await?)
    }
}

/// Thousandths of GPUs in words: "3" for whole GPUs, "0.250" for parts.
fn gpus_text(milli: i64) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{}.{:03}", milli / 1000, milli % 1000)
    }
}

/// Refuses what the operator's sharing policy does not allow, and CPU or memory no node of
/// the model has, before anything is placed.
fn check_sharing(sched: &scheduler::Sched, inst: &Instance) -> Result<()> {
    use neocloud_types::Shape;
    let sharing = sched.config.sharing;
    match inst.shape {
        Shape::Share { .. } | Shape::Mig { .. } if !sharing.slices => {
            return Err(Error::invalid(format!(
                "this cloud does not sell parts of a GPU ({} asked); ask for whole GPUs",
                inst.shape.describe()
            )));
        }
        Shape::Cpu if !sharing.cpu_only => {
            return Err(Error::invalid(
                "this cloud's GPU nodes do not run CPU-only instances; ask for a GPU shape",
            ));
        }
        _ => {}
    }
    if let Some(&(cpu, mem)) = sched.node_host.get(&inst.gpu_model) {
        if let Some(c) = inst.cpu_milli
            && cpu > 0
            && c > cpu
        {
            return Err(Error::invalid(format!(
                "cpu_milli {c} is more than any {} node has ({cpu} thousandths of a core)",
                inst.gpu_model
            )));
        }
        if let Some(m) = inst.memory_mib
            && mem > 0
            && m > mem
        {
            return Err(Error::invalid(format!(
                "memory_mib {m} is more than any {} node has ({mem} MiB)",
                inst.gpu_model
            )));
        }
    }
    Ok(())
}
