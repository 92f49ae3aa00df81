//! Instances: launch, read, terminate; quotas; the periodic tick.

use neocloud_store::{InstanceFilter, Page, Store};
use neocloud_types::{
    Class, Instance, InstanceId, InstanceState, NodeId, PlacedNode, Quota, TenantKind,
    TenantStatus, Timestamp,
};

use crate::auth::{self, Action, Principal};
use crate::error::OrNotFound;
use crate::error::{Error, ErrorCode, Result};
use crate::{Created, IdemStart, Idempotency, LaunchInstance, Service, SetQuota, page_limit};

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
        let on_node_failure = req.failure_policy(&shape)?;
        if matches!(shape, neocloud_types::Shape::Nodes { .. })
            && (req.cpu_milli.is_some() || req.memory_mib.is_some())
        {
            return Err(Error::invalid(
                "a gang holds whole nodes: cpu_milli and memory_mib do not apply",
            ));
        }
        let tenant = match (&req.tenant_id, p.tenant_scope()) {
            (Some(t), _) => self.visible_tenant(p, t).await?,
            (None, Some(own)) => self.tenant_cached(&own.to_string()).await?,
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
        let (gpu_model, gpu_models) = req.models()?;
        if !gpu_models.is_empty() {
            let one = match shape {
                neocloud_types::Shape::Nodes { .. } => Some("a gang runs on one GPU model"),
                neocloud_types::Shape::Mig { .. } => {
                    Some("a MIG profile is a partition of one GPU model's GPU")
                }
                _ if req.class == Class::Reserved => {
                    Some("a reserved instance runs on its contract's GPU model")
                }
                _ => None,
            };
            if let Some(why) = one {
                return Err(Error::invalid(format!(
                    "{why}: give gpu_model, not gpu_models"
                )));
            }
        }
        for m in std::iter::once(&gpu_model).chain(gpu_models.iter().skip(1)) {
            if !self.gpu_model_known(m).await? {
                return Err(Error::invalid(format!("unknown GPU model '{m}'")));
            }
        }
        let site = match &req.site {
            Some(s) => Some(crate::error::stored_id(
                "site",
                &self.store.site_id_of(s).await?,
            )?),
            None => None,
        };
        if let Some(c) = req.contract_id {
            let contract = self
                .store
                .contract_get(c)
                .await
                .or_not_found(|| Error::not_found("contract", &c.to_string()))?;
            if contract.tenant_id != tenant.id {
                return Err(Error::not_found("contract", &c.to_string()));
            }
        }
        let prepared = self
            .prepare_delivery(
                tenant.id,
                &shape,
                req.delivery.clone(),
                req.ssh_key_names.clone(),
            )
            .await?;
        let now = self.now();
        let inst = Instance {
            id: InstanceId::new(),
            tenant_id: tenant.id,
            name: req.name.clone(),
            class: req.class,
            gpu_model,
            gpu_models,
            shape,
            gpu_count: 0,
            cpu_milli: req.cpu_milli,
            memory_mib: req.memory_mib,
            requested_site_id: site,
            site_id: None,
            contract_id: req.contract_id,
            state: InstanceState::Pending,
            reason: None,
            placement: Default::default(),
            placement_summary: None,
            created_at: now,
            started_at: None,
            ended_at: None,
            preempt_at: None,
            wait_until: req.wait_seconds.map(|w| now.plus_seconds(i64::from(w))),
            delivery: prepared.delivery,
            ssh_key_names: prepared.names,
            authorized_keys: prepared.keys,
            access: None,
            ends_as: None,
            on_node_failure,
        };
        // A replay answers before any capacity is looked at.
        let _claim = match self.idem_start(p, idem).await? {
            IdemStart::Replay(c) => return Ok(c),
            IdemStart::Decide(claim) => claim,
        };
        let id = inst.id;
        let p2 = p.clone();
        let idem = idem.cloned();
        // The answer as shown (a large gang summarised), made under the scheduler's lock.
        let answer = std::sync::OnceLock::new();
        let slot = &answer;
        self.decide(
            neocloud_scheduler::Command::Launch(inst),
            now,
            Some(p.key_id),
            move |s, effects| {
                let Some(view) = launched(effects, id) else {
                    return Ok(None);
                };
                let view = view.clone().summarised(|n| s.node_block(n));
                let _ = slot.set(view.clone());
                // The answer, recorded with the launch so a retry replays it.
                let Some(idem) = idem else {
                    return Ok(None);
                };
                // Serialised by the writer, not under the scheduler's lock.
                Ok(Some(crate::writer::extra_deferred(move |_, tx| {
                    Box::pin(async move {
                        match Self::idem_put(&p2, Some(&idem), 201, &view)? {
                            Some(put) => put.write(tx).await,
                            None => Ok(()),
                        }
                    })
                })))
            },
        )
        .await?;
        let value = answer
            .into_inner()
            .ok_or_else(|| Error::internal("the launch recorded no instance"))?;
        Ok(Created {
            value,
            replayed: false,
        })
    }

    pub(crate) async fn visible_instance(&self, p: &Principal, id: &str) -> Result<Instance> {
        self.visible_instance_read(p, id, true).await
    }

    /// [`Self::visible_instance`], without its placement unless `placed`.
    async fn visible_instance_read(
        &self,
        p: &Principal,
        id: &str,
        placed: bool,
    ) -> Result<Instance> {
        let not_found = || Error::not_found("instance", id);
        let iid: InstanceId = id.parse().map_err(|_| not_found())?;
        let read = if placed {
            self.store.instance_get(iid).await
        } else {
            self.store.instance_get_unplaced(iid).await
        };
        let inst = read.or_not_found(not_found)?;
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

    /// An instance as the API shows it: on more than [`neocloud_types::LISTED_NODES`]
    /// nodes, its nodes counted by block in `placement_summary` instead of listed
    /// ([`Instance::summarised`]; [`Self::instance_nodes`] pages through them).
    pub fn instance_shown(&self, inst: Instance) -> Instance {
        crate::scheduler::shown(&self.sched, inst)
    }

    /// A page of an instance's nodes, by node id: what its `placement` lists, for an
    /// instance too large to list them all in its answer.
    pub async fn instance_nodes(
        &self,
        p: &Principal,
        id: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<PlacedNode>> {
        auth::authorize(p, Action::ReadInstances)?;
        let limit = page_limit(limit)? as usize;
        let after = cursor
            .map(|c| {
                c.parse::<NodeId>()
                    .map_err(|_| Error::invalid("cursor is not one this list gave"))
            })
            .transpose()?;
        let mut nodes = self.visible_instance(p, id).await?.placement.to_vec();
        nodes.sort_unstable_by_key(|n| n.node_id);
        let from = after.map_or(0, |a| nodes.partition_point(|n| n.node_id <= a));
        let to = nodes.len().min(from.saturating_add(limit));
        let next_cursor = (to < nodes.len()).then(|| nodes[to - 1].node_id.to_string());
        nodes.truncate(to);
        nodes.drain(..from);
        Ok(Page {
            items: nodes,
            next_cursor,
        })
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
        // Its tenant and state are all it takes (an ended instance holds nothing): a
        // large gang's placement is not read twice.
        let inst = self.visible_instance_read(p, id, false).await?;
        if inst.state.is_final() {
            return Ok(inst);
        }
        let now = self.now();
        match self
            .decide(
                neocloud_scheduler::Command::Terminate { id: inst.id },
                now,
                Some(p.key_id),
                |_, _| Ok(None),
            )
            .await
        {
            Ok(_) => return Ok(self.store.instance_get(inst.id).await?),
            // Ended meanwhile (a preemption, a failure, another terminate): it reads as it
            // ended.
            Err(e) if e.code == ErrorCode::Conflict => {}
            Err(e) => return Err(e),
        }
        // Ended by a decision whose write may still be on its way: read it once written.
        self.writes_settled().await?;
        let after = self.store.instance_get(inst.id).await?;
        if !after.state.is_final() {
            // Refused as ended, yet not ended in the database: the scheduler is catching
            // up with a failed write. Never answer a terminate with a running instance.
            return Err(Error::new(
                ErrorCode::Unavailable,
                "the instance is being terminated; retry the request",
            ));
        }
        Ok(after)
    }

    /// Runs the scheduler's periodic work at `now`: ends preemption notices that ran out,
    /// starts and ends contracts, refills pools, expires queued instances past their
    /// deadline, and starts queued instances that fit.
    pub async fn tick(&self, now: Timestamp) -> Result<usize> {
        let effects = self
            .decide(neocloud_scheduler::Command::Tick, now, None, |_, _| {
                Ok(None)
            })
            .await?;
        let changed = effects
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    neocloud_scheduler::Effect::Start { .. }
                        | neocloud_scheduler::Effect::Update { .. }
                )
            })
            .count();
        // Spot prices follow utilization, recomputed once a minute.
        let due = {
            let mut at = lock_ignoring_poison(&self.spot_repriced_at);
            if at.is_none_or(|t| t.plus_seconds(SPOT_REPRICE_SECS) <= now) {
                *at = Some(now);
                true
            } else {
                false
            }
        };
        if due {
            let book = self.price_book().await?;
            self.spot_reprice(&book, now).await?;
        }
        Ok(changed)
    }

    /// Sets or removes a quota.
    pub async fn quota_set(
        &self,
        p: &Principal,
        req: SetQuota,
        idem: Option<&Idempotency>,
    ) -> Result<Created<Vec<Quota>>> {
        auth::authorize(p, Action::WriteQuotas)?;
        if let Some(m) = req.max_gpus
            && m > crate::MAX_GPUS
        {
            return Err(Error::invalid(format!(
                "max_gpus must be at most {} (got {m})",
                crate::MAX_GPUS
            )));
        }
        if let Some(c) = self.idem_replay(p, idem).await? {
            return Ok(c);
        }
        let tenant = self.visible_tenant(p, &req.tenant_id).await?;
        self.store.gpu_model_get(&req.gpu_model).await?;
        // The quota is written in order with the launches it limits, and the scheduler
        // holds it from the moment it is decided.
        let _claim = match self.idem_start(p, idem).await? {
            IdemStart::Replay(c) => return Ok(c),
            IdemStart::Decide(claim) => claim,
        };
        let actor = p.key_id;
        let tenant_id = tenant.id;
        let (model, class, max) = (req.gpu_model.clone(), req.class, req.max_gpus);
        let put = Self::idem_put(p, idem, 200, &serde_json::Value::Null)?;
        self.decide(
            neocloud_scheduler::Command::SetQuota {
                tenant: tenant.id,
                gpu_model: req.gpu_model.clone(),
                class: req.class,
                max_gpus: req.max_gpus,
            },
            self.now(),
            Some(actor),
            move |_, _| {
                Ok(Some(crate::writer::extra(move |_, tx| {
                    Box::pin(async move {
                        Store::quota_put(tx, tenant_id, &model, class, max).await?;
                        Store::event_insert(
                            tx,
                            neocloud_store::NewEvent {
                                actor: Some(actor),
                                tenant_id: Some(tenant_id),
                                action: "quota.set",
                                resource_kind: "quota",
                                resource_id: format!("{tenant_id}/{model}/{class}"),
                                before: None,
                                after: Some(serde_json::json!({"max_gpus": max})),
                            },
                        )
                        .await?;
                        if let Some(put) = put {
                            put.write(tx).await?;
                        }
                        Ok(())
                    })
                })))
            },
        )
        .await?;
        let quotas = self.store.quota_list(Some(tenant.id)).await?;
        self.idem_settle(p, idem, 200, &quotas).await;
        Ok(Created {
            value: quotas,
            replayed: false,
        })
    }

    /// Lists quotas (a tenant key sees its own).
    pub async fn quota_list(&self, p: &Principal, tenant: Option<&str>) -> Result<Vec<Quota>> {
        auth::authorize(p, Action::ReadQuotas)?;
        let t = self.scoped_tenant(p, tenant).await?;
        Ok(self.store.quota_list(t).await?)
    }
}

/// The instance a launch created, from its effects.
fn launched(effects: &[neocloud_scheduler::Effect], id: InstanceId) -> Option<&Instance> {
    effects.iter().find_map(|e| match e {
        neocloud_scheduler::Effect::Insert { inst, .. } if inst.id == id => Some(inst),
        _ => None,
    })
}

pub(crate) fn lock_ignoring_poison<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
