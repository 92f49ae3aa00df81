//! Delivery: tenants' SSH keys, what a launch asks its agents to run, what agents report
//! of it, and the workloads' output.
//!
//! The agents are told what should run on their node in every heartbeat answer and report
//! what runs in the next heartbeat; the scheduler turns those reports into the instance's
//! lifecycle (see `neocloud_scheduler`'s delivery module). Output arrives with the reports
//! and is kept in memory, the last [`LOG_KEEP_BYTES`] of each instance, for
//! `GET /v1/instances/{id}/logs`.
//!
//! An agent need not wait for its next heartbeat to learn of a change: it may hold
//! `GET /v1/agent/workloads?generation=G&wait_secs=S` open, answered as soon as a committed
//! decision changes what should run on its node (or after `S` seconds, unchanged).

use std::collections::HashMap;
use std::sync::Mutex;

use neocloud_store::Store;
use neocloud_types::{
    Delivery, DesiredWorkloads, Instance, InstanceId, NodeId, Shape, SshKey, SshKeyId, TenantId,
    WorkloadReport,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use utoipa::ToSchema;

use crate::auth::{self, Action, Principal};
use crate::error::{Error, OrNotFound, Result};
use crate::scheduler::lock;
use crate::{Created, Idempotency, Service};

/// Output kept per instance, bytes (the oldest is dropped beyond it).
pub const LOG_KEEP_BYTES: usize = 1 << 20;
/// Instances whose output is kept at once (the least recently written is dropped beyond it).
pub const LOG_INSTANCES: usize = 4096;
/// Most output one report may carry, bytes.
pub const MAX_LOG_CHUNK: usize = 256 * 1024;
/// Most workload reports in one heartbeat.
pub const MAX_REPORTS: usize = 1024;
/// Most SSH keys named at launch.
pub const MAX_LAUNCH_KEYS: usize = 32;
/// Most SSH keys a tenant may keep.
pub const MAX_TENANT_KEYS: usize = 256;
/// Seconds between SIGTERM and SIGKILL when a workload is stopped.
pub const STOP_GRACE_SECS: u32 = 10;
/// The longest an agent's `GET /v1/agent/workloads` may wait for a change, seconds.
pub const MAX_WORKLOADS_WAIT_SECS: u32 = 55;

/// Agents waiting for what should run on their node to change, by node.
#[derive(Default)]
pub(crate) struct Waiters(Mutex<HashMap<NodeId, std::sync::Arc<tokio::sync::Notify>>>);

impl Waiters {
    fn of(&self, node: NodeId) -> std::sync::Arc<tokio::sync::Notify> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(node)
            .or_default()
            .clone()
    }

    /// Wakes the agents of every node where a committed decision changed a delivered
    /// instance (placed, told to stop, or ended).
    pub(crate) fn wake(&self, effects: &[neocloud_scheduler::Effect]) {
        use neocloud_scheduler::Effect;
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.is_empty() {
            return;
        }
        for fx in effects {
            let inst = match fx {
                Effect::Insert { inst, .. } => inst,
                Effect::Start { after, .. }
                | Effect::Update { after, .. }
                | Effect::Reshape { after, .. } => after,
                _ => continue,
            };
            if inst.delivery.is_none() {
                continue;
            }
            for p in inst.placement.iter() {
                if let Some(n) = map.get(&p.node_id) {
                    n.notify_waiters();
                }
            }
        }
    }
}

/// Body of `POST /v1/ssh-keys`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSshKey {
    /// Tenant id or name; tenant keys add to their own tenant and may leave it out.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Name, unique within the tenant: 1-64 letters, digits, `.`, `_` or `-`.
    pub name: String,
    /// One OpenSSH public key line, as in `~/.ssh/id_ed25519.pub`: `TYPE BASE64 [COMMENT]`.
    /// Types: `ssh-ed25519`, `ecdsa-sha2-nistp256/384/521`, `ssh-rsa` (2048 bits or more),
    /// and the `sk-` security-key types.
    pub public_key: String,
}

/// Output of an instance's workload, from `offset` on.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceLogs {
    /// The instance.
    pub instance_id: InstanceId,
    /// Byte offset (since the workload started) of the first byte of `data`.
    pub offset: u64,
    /// Offset to ask for next (`?offset=`) to read only what is new.
    pub next_offset: u64,
    /// Output was dropped before `offset` (older than what is kept, or asked for from
    /// before the kept part).
    pub truncated: bool,
    /// The output (UTF-8, invalid bytes replaced).
    pub data: String,
}

/// One instance's kept output.
#[derive(Default)]
struct LogBuf {
    /// Offset of `data[0]`.
    start: u64,
    data: Vec<u8>,
    /// Last write, for eviction.
    touched: u64,
}

impl LogBuf {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }

    /// Appends the part of `chunk` (at `offset`) that is not here yet.
    fn put(&mut self, offset: u64, chunk: &[u8]) {
        let end = self.end();
        let chunk_end = offset + chunk.len() as u64;
        if chunk_end <= end {
            return;
        }
        if offset > end {
            // Output was lost between (the agent dropped it): start again after the gap.
            self.data.clear();
            self.start = offset;
            self.data.extend_from_slice(chunk);
        } else {
            let skip = usize::try_from(end - offset).unwrap_or(usize::MAX);
            self.data
                .extend_from_slice(chunk.get(skip..).unwrap_or_default());
        }
        if self.data.len() > LOG_KEEP_BYTES {
            let drop = self.data.len() - LOG_KEEP_BYTES;
            self.data.drain(..drop);
            self.start += drop as u64;
        }
    }
}

/// Workloads' output kept in memory.
#[derive(Default)]
pub(crate) struct Logs {
    bufs: Mutex<(u64, HashMap<InstanceId, LogBuf>)>,
}

impl Logs {
    fn put(&self, id: InstanceId, offset: u64, chunk: &[u8]) {
        let mut g = self
            .bufs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (clock, bufs) = &mut *g;
        *clock += 1;
        if !bufs.contains_key(&id)
            && bufs.len() >= LOG_INSTANCES
            && let Some(oldest) = bufs.iter().min_by_key(|(_, b)| b.touched).map(|(k, _)| *k)
        {
            bufs.remove(&oldest);
        }
        let b = bufs.entry(id).or_default();
        b.touched = *clock;
        b.put(offset, chunk);
    }

    fn read(&self, id: InstanceId, offset: u64, limit: usize) -> InstanceLogs {
        let g = self
            .bufs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(b) = g.1.get(&id) else {
            return InstanceLogs {
                instance_id: id,
                offset,
                next_offset: offset,
                truncated: false,
                data: String::new(),
            };
        };
        let from = offset.clamp(b.start, b.end());
        let at = usize::try_from(from - b.start).unwrap_or(0);
        let until = at.saturating_add(limit).min(b.data.len());
        let bytes = b.data.get(at..until).unwrap_or_default();
        InstanceLogs {
            instance_id: id,
            offset: from,
            next_offset: from + bytes.len() as u64,
            truncated: offset < b.start,
            data: String::from_utf8_lossy(bytes).into_owned(),
        }
    }
}

/// A checked public key: the line to put in `authorized_keys` and its fingerprint.
pub fn parse_public_key(line: &str) -> std::result::Result<(String, String), String> {
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    let line = line.trim();
    if line.contains('\n') || line.contains('\r') {
        return Err("public_key must be one line (one key)".into());
    }
    if line.len() > 16 * 1024 {
        return Err("public_key is longer than 16 KiB".into());
    }
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
        return Err(
            "public_key must be an OpenSSH public key line: TYPE BASE64 [COMMENT], e.g. the contents of ~/.ssh/id_ed25519.pub"
                .into(),
        );
    };
    if !TYPES.contains(&kind) {
        return Err(format!(
            "public_key: '{}' is not a supported key type (one of {}; options before the key are not accepted)",
            kind.chars().take(40).collect::<String>(),
            TYPES.join(", ")
        ));
    }
    let comment: Vec<&str> = parts.collect();
    let comment = comment.join(" ");
    if comment.len() > 256 || comment.chars().any(char::is_control) {
        return Err("public_key: the comment must be at most 256 printable characters".into());
    }
    let blob = base64_decode(b64).ok_or("public_key: the key data is not valid base64")?;
    let mut r = Reader(&blob);
    let inner = r.string().ok_or("public_key: the key data is truncated")?;
    if inner != kind.as_bytes() {
        return Err(format!(
            "public_key: the key data is not a {kind} key (the type inside says otherwise)"
        ));
    }
    match kind {
        "ssh-ed25519" => {
            let k = r.string().ok_or("public_key: the key data is truncated")?;
            if k.len() != 32 {
                return Err("public_key: an ed25519 key is 32 bytes".into());
            }
        }
        "ssh-rsa" => {
            let _e = r.string().ok_or("public_key: the key data is truncated")?;
            let n = r.string().ok_or("public_key: the key data is truncated")?;
            let n = n.strip_prefix(&[0u8][..]).unwrap_or(n);
            if n.len() * 8 < 2048 {
                return Err(format!(
                    "public_key: RSA keys must have at least 2048 bits (this one has {})",
                    n.len() * 8
                ));
            }
        }
        _ => {
            r.string().ok_or("public_key: the key data is truncated")?;
            r.string().ok_or("public_key: the key data is truncated")?;
        }
    }
    let digest = sha2::Sha256::digest(&blob);
    let fingerprint = format!("SHA256:{}", base64_encode(&digest, false));
    let mut normalized = format!("{kind} {b64}");
    if !comment.is_empty() {
        normalized.push(' ');
        normalized.push_str(&comment);
    }
    Ok((normalized, fingerprint))
}

/// Reads SSH wire strings (a 32-bit big-endian length, then the bytes).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn string(&mut self) -> Option<&'a [u8]> {
        let len = self.0.get(..4)?;
        let n = usize::try_from(u32::from_be_bytes([len[0], len[1], len[2], len[3]])).ok()?;
        let s = self.0.get(4..4usize.checked_add(n)?)?;
        self.0 = self.0.get(4 + n..)?;
        Some(s)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648) with padding; `None` for anything else.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.is_empty() || !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (ci, chunk) in s.chunks(4).enumerate() {
        let last = ci == s.len() / 4 - 1;
        let mut v = [0u32; 4];
        let mut pad = 0;
        for (i, &c) in chunk.iter().enumerate() {
            if c == b'=' {
                // Padding only at the end of the last group.
                if !last || i < 2 {
                    return None;
                }
                pad += 1;
                continue;
            }
            if pad > 0 {
                return None;
            }
            v[i] = u32::try_from(B64.iter().position(|&b| b == c)?).ok()?;
        }
        let n = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// Standard base64, with or without padding.
fn base64_encode(b: &[u8], pad: bool) -> String {
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

fn check_key_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "name must be 1-64 letters, digits, '.', '_' or '-' (got {:?})",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// What a launch asks to deliver, checked against its shape and resolved to public keys.
pub(crate) struct Prepared {
    pub(crate) delivery: Option<Delivery>,
    pub(crate) names: Vec<String>,
    pub(crate) keys: Vec<String>,
}

impl Service {
    /// Adds an SSH public key to a tenant.
    pub async fn ssh_key_create(
        &self,
        p: &Principal,
        req: CreateSshKey,
        idem: Option<&Idempotency>,
    ) -> Result<Created<SshKey>> {
        auth::authorize(p, Action::WriteInstances)?;
        let tenant = self.acting_tenant(p, req.tenant_id.as_deref()).await?;
        self.refuse_suspended(tenant).await?;
        check_key_name(&req.name)?;
        let (public_key, fingerprint) =
            parse_public_key(&req.public_key).map_err(Error::invalid)?;
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        if self.store.ssh_key_list(Some(tenant)).await?.len() >= MAX_TENANT_KEYS {
            return Err(Error::invalid(format!(
                "a tenant keeps at most {MAX_TENANT_KEYS} SSH keys; delete one first"
            )));
        }
        let key = SshKey {
            id: SshKeyId::new(),
            tenant_id: tenant,
            name: req.name,
            public_key,
            fingerprint,
            created_at: self.now(),
        };
        Store::ssh_key_insert(&mut tx, &key).await?;
        Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor: Some(p.key_id),
                tenant_id: Some(tenant),
                action: "ssh_key.created",
                resource_kind: "ssh_key",
                resource_id: key.id.to_string(),
                before: None,
                after: serde_json::to_value(&key).ok(),
            },
        )
        .await?;
        Self::idem_store(&mut tx, p, idem, &key).await?;
        tx.commit().await?;
        Ok(Created {
            value: key,
            replayed: false,
        })
    }

    /// Lists SSH keys (a tenant key sees its own tenant's).
    pub async fn ssh_key_list(&self, p: &Principal, tenant: Option<&str>) -> Result<Vec<SshKey>> {
        auth::authorize(p, Action::ReadInstances)?;
        let tenant = self.scoped_tenant(p, tenant).await?;
        Ok(self.store.ssh_key_list(tenant).await?)
    }

    /// Deletes one of a tenant's SSH keys, by id or name. Running instances keep the keys
    /// they were launched with.
    pub async fn ssh_key_delete(
        &self,
        p: &Principal,
        id_or_name: &str,
        tenant: Option<&str>,
        idem: Option<&Idempotency>,
    ) -> Result<Created<SshKey>> {
        auth::authorize(p, Action::WriteInstances)?;
        let tenant = self.acting_tenant(p, tenant).await?;
        let mut tx = self.store.begin_write().await?;
        if let Some(c) = Self::idem_lookup(&mut tx, p, idem).await? {
            return Ok(c);
        }
        let key = self
            .store
            .ssh_key_get(tenant, id_or_name)
            .await
            .or_not_found(|| Error::not_found("SSH key", id_or_name))?;
        Store::ssh_key_delete(&mut tx, key.id).await?;
        Store::event_insert(
            &mut tx,
            neocloud_store::NewEvent {
                actor: Some(p.key_id),
                tenant_id: Some(tenant),
                action: "ssh_key.deleted",
                resource_kind: "ssh_key",
                resource_id: key.id.to_string(),
                before: serde_json::to_value(&key).ok(),
                after: None,
            },
        )
        .await?;
        Self::idem_store(&mut tx, p, idem, &key).await?;
        tx.commit().await?;
        Ok(Created {
            value: key,
            replayed: false,
        })
    }

    /// The tenant a change is for: the one named (if the caller may see it), else the
    /// caller's own; an operator must name one.
    async fn acting_tenant(&self, p: &Principal, tenant: Option<&str>) -> Result<TenantId> {
        match (tenant, p.tenant_scope()) {
            (Some(t), _) => Ok(self.visible_tenant(p, t).await?.id),
            (None, Some(own)) => Ok(own),
            (None, None) => Err(Error::invalid(
                "tenant_id is required when an operator key acts",
            )),
        }
    }

    /// Checks a launch's delivery against its shape and resolves its SSH key names to the
    /// tenant's public keys.
    pub(crate) async fn prepare_delivery(
        &self,
        tenant: TenantId,
        shape: &Shape,
        delivery: Option<Delivery>,
        names: Vec<String>,
    ) -> Result<Prepared> {
        if names.len() > MAX_LAUNCH_KEYS {
            return Err(Error::invalid(format!(
                "ssh_key_names: at most {MAX_LAUNCH_KEYS} keys"
            )));
        }
        let Some(d) = delivery else {
            if !names.is_empty() {
                return Err(Error::invalid(
                    "ssh_key_names needs a delivery (container or bare-metal): a bare allocation runs nothing to log into",
                ));
            }
            return Ok(Prepared {
                delivery: None,
                names,
                keys: Vec::new(),
            });
        };
        d.validate().map_err(Error::invalid)?;
        match (&d, shape) {
            (Delivery::Container { .. }, Shape::Nodes { .. }) => {
                return Err(Error::invalid(
                    "a container runs within one node: use gpus, a share, a MIG profile or cpu; gangs of whole nodes use delivery mode bare-metal",
                ));
            }
            (Delivery::BareMetal { .. }, s) if !matches!(s, Shape::Nodes { .. }) => {
                return Err(Error::invalid(
                    "bare-metal hands over whole nodes: launch with nodes (a gang of whole nodes); shapes within one node use delivery mode container",
                ));
            }
            (Delivery::BareMetal { .. }, _) if names.is_empty() => {
                return Err(Error::invalid(
                    "a bare-metal instance needs ssh_key_names: nobody could log in otherwise",
                ));
            }
            _ => {}
        }
        let mut keys = Vec::with_capacity(names.len());
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            if !seen.insert(n.as_str()) {
                return Err(Error::invalid(format!(
                    "ssh_key_names: '{n}' is named twice"
                )));
            }
            let k = self
                .store
                .ssh_key_get(tenant, n)
                .await
                .or_not_found(|| {
                    Error::invalid(format!(
                        "ssh_key_names: the tenant has no SSH key named '{n}' (add it with POST /v1/ssh-keys)"
                    ))
                })?;
            keys.push(k.public_key);
        }
        Ok(Prepared {
            delivery: Some(d),
            names,
            keys,
        })
    }

    /// Takes what an agent reports of its workloads and answers what should run on its
    /// node.
    pub(crate) async fn agent_workloads(
        &self,
        node: NodeId,
        reports: Vec<WorkloadReport>,
    ) -> Result<DesiredWorkloads> {
        if !reports.is_empty() {
            // Output only of workloads placed on this node.
            {
                let s = lock(&self.sched);
                for r in &reports {
                    if r.log.is_empty() {
                        continue;
                    }
                    let placed = s
                        .instance(r.instance_id)
                        .is_some_and(|i| i.placement.iter().any(|p| p.node_id == node));
                    if placed {
                        self.logs.put(r.instance_id, r.log_offset, r.log.as_bytes());
                    }
                }
            }
            let reports: Vec<WorkloadReport> = reports
                .into_iter()
                .map(|mut r| {
                    r.log = String::new();
                    r
                })
                .collect();
            self.decide(
                neocloud_scheduler::Command::Reports { node, reports },
                self.now(),
                None,
                |_, _| Ok(None),
            )
            .await?;
        }
        Ok(lock(&self.sched).desired(node, STOP_GRACE_SECS))
    }

    /// What should run on the caller's node (node-agent key), answered once its generation
    /// differs from `generation` or after `wait_secs` seconds (0: at once; at most
    /// [`MAX_WORKLOADS_WAIT_SECS`]).
    pub async fn agent_desired(
        &self,
        p: &Principal,
        generation: Option<u64>,
        wait_secs: u32,
    ) -> Result<DesiredWorkloads> {
        auth::authorize(p, Action::AgentHeartbeat)?;
        let node = crate::health::heartbeat_node(p)?;
        if wait_secs > MAX_WORKLOADS_WAIT_SECS {
            return Err(Error::invalid(format!(
                "wait_secs must be 0 to {MAX_WORKLOADS_WAIT_SECS} (got {wait_secs})"
            )));
        }
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_secs(u64::from(wait_secs));
        let notify = self.waiters.of(node);
        loop {
            // Registered before reading, so a change committed in between still wakes us.
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let d = lock(&self.sched).desired(node, STOP_GRACE_SECS);
            if generation != Some(d.generation) || tokio::time::Instant::now() >= deadline {
                return Ok(d);
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// An instance's workload output from `offset` on (at most `limit` bytes).
    pub async fn instance_logs(
        &self,
        p: &Principal,
        id: &str,
        offset: Option<u64>,
        limit: Option<u32>,
    ) -> Result<InstanceLogs> {
        auth::authorize(p, Action::ReadInstances)?;
        let limit = match limit {
            None => LOG_KEEP_BYTES,
            Some(l) if l >= 1 && usize::try_from(l).is_ok_and(|l| l <= LOG_KEEP_BYTES) => {
                usize::try_from(l).unwrap_or(LOG_KEEP_BYTES)
            }
            Some(l) => {
                return Err(Error::invalid(format!(
                    "limit must be 1 to {LOG_KEEP_BYTES} bytes (got {l})"
                )));
            }
        };
        let inst: Instance = self.visible_instance(p, id).await?;
        if inst.delivery.is_none() {
            return Err(Error::invalid(format!(
                "instance {} runs nothing of ours (it was launched without a delivery), so it has no output",
                inst.id
            )));
        }
        Ok(self.logs.read(inst.id, offset.unwrap_or(0), limit))
    }
}

/// Checks the workload part of a heartbeat.
pub(crate) fn validate_reports(reports: &[WorkloadReport]) -> Result<()> {
    if reports.len() > MAX_REPORTS {
        return Err(Error::invalid(format!(
            "workloads: at most {MAX_REPORTS} per heartbeat"
        )));
    }
    for (i, r) in reports.iter().enumerate() {
        if r.log.len() > MAX_LOG_CHUNK {
            return Err(Error::invalid(format!(
                "workloads[{i}].log: at most {MAX_LOG_CHUNK} bytes per heartbeat"
            )));
        }
        if r.log_offset > i64::MAX.unsigned_abs() {
            return Err(Error::invalid(format!(
                "workloads[{i}].log_offset is too large"
            )));
        }
        if r.reason.as_ref().is_some_and(|s| s.len() > 4096) {
            return Err(Error::invalid(format!(
                "workloads[{i}].reason: at most 4096 bytes"
            )));
        }
        if let Some(a) = &r.access {
            let host_ok = !a.host.is_empty()
                && a.host.len() <= 253
                && a.host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            let user_ok = !a.user.is_empty()
                && a.user.len() <= 32
                && a.user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !host_ok || !user_ok || a.port == 0 {
                return Err(Error::invalid(format!(
                    "workloads[{i}].access must name a host, a port and a user"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII2X/bUI99dqvdvtyPNXdL1arQrCRlcT63YEUGYfnH8q test@host";
    const RSA_1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC93MVJZJeLm5SHr5Q2JXJrS+EKszeevPkgbfbv2B4xTsfs+L99Tphq3WbeyZz73jt8vSmotX4huk8lSnm4kYpi0SGMQDRiM9b92b4033V1sHzw28MqgPo4CqDikgnA7LAQqnAgbm4h3FFDajWb3iROjotBsFrBK45GTR7x62bpDw== root@vm";

    #[test]
    fn base64_round_trips() {
        for n in 1..40usize {
            let data: Vec<u8> = (0..n)
                .map(|i| u8::try_from(i * 37 % 256).unwrap_or(0))
                .collect();
            let enc = base64_encode(&data, true);
            assert_eq!(base64_decode(&enc).as_deref(), Some(&data[..]), "{enc}");
        }
        assert!(base64_decode("abc").is_none());
        assert!(base64_decode("a=bc").is_none());
        assert!(base64_decode("ab!c").is_none());
    }

    #[test]
    fn keys_are_checked() {
        let (line, fp) = parse_public_key(ED).expect("valid key");
        assert!(line.starts_with("ssh-ed25519 AAAA"));
        // As `ssh-keygen -l` prints it.
        assert_eq!(fp, "SHA256:WAoHRhdP0FWJ/ttsfLS51FhJ0KZ+GtoxAjbU5BKQ8ZI");
        assert!(
            parse_public_key(RSA_1024)
                .expect_err("short RSA")
                .contains("2048")
        );
        assert!(parse_public_key("ssh-ed25519").is_err());
        assert!(parse_public_key("ssh-dss AAAAB3NzaC1kc3M=").is_err());
        assert!(parse_public_key("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAAAgQ==").is_err());
        assert!(parse_public_key(&format!("command=\"x\" {ED}")).is_err());
        assert!(parse_public_key(&format!("{ED}\n{ED}")).is_err());
        assert!(parse_public_key("ssh-ed25519 !!!!").is_err());
    }

    #[test]
    fn logs_take_each_byte_once() {
        let mut b = LogBuf::default();
        b.put(0, b"hello ");
        b.put(0, b"hello ");
        b.put(3, b"lo world");
        assert_eq!(b.data, b"hello world");
        b.put(20, b"!");
        assert_eq!((b.start, &b.data[..]), (20, &b"!"[..]));
    }
}
