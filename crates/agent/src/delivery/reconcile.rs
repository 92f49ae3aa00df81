//! The reconciler: one task that converges the node on the latest desired workloads.
//!
//! Each pass (at once when a new desired list arrives, else every second): workloads no
//! longer listed, or listed with `stop`, are stopped and cleaned; listed ones that the agent
//! does not run yet are provisioned; running ones get their preemption notice and key
//! changes; then every running workload is checked (exited? sshd alive?) and its output
//! converted. The pass is idempotent: what exists is found again (container names, pid
//! files, account markers), never started twice. On start the reconciler adopts what an
//! earlier agent left (see [`Reconciler::adopt`]). With no desired list yet (an old control
//! plane) workloads are only watched, never started or stopped.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use neocloud_types::{
    Access, Delivery as Mode_, DesiredWorkloads, InstanceId, Timestamp, Workload, WorkloadPhase,
    WorkloadReport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::logs::{Converter, Format};
use super::podman::{AGENT_LABEL, NODE_LABEL, Podman};
use super::ssh::Login;
use super::{Config, Entry, RuntimeKind, SharedTable, bare, cdi, lock, process, ssh, write_atomic};
use crate::backend::GpuBackend;

/// Time between passes when nothing changes.
const TICK: Duration = Duration::from_secs(1);

type SharedBackend = Arc<Mutex<Box<dyn GpuBackend>>>;

/// How an instance is realised on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Container,
    Process,
    Bare,
    /// A container workload on a node with `--runtime none`.
    Refused,
}

/// What the agent did for an instance so far (`meta.json`), for adoption after a restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    kind: Option<Kind>,
    /// The workload was started (container started, process spawned, account handed over).
    started: bool,
    port: Option<u16>,
    /// The preemption notice written, if any.
    notice: Option<Timestamp>,
    /// When it started running.
    since: Option<Timestamp>,
}

struct Local {
    spec: Workload,
    dir: PathBuf,
    meta: Meta,
    phase: WorkloadPhase,
    log: Option<Converter>,
}

impl Local {
    fn terminal(&self) -> bool {
        matches!(self.phase, WorkloadPhase::Stopped | WorkloadPhase::Failed)
    }

    fn save_meta(&self) {
        match serde_json::to_vec(&self.meta) {
            Ok(data) => {
                if let Err(e) = write_atomic(&self.dir.join("meta.json"), &data, 0o600) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot save meta.json");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode meta.json"),
        }
    }

    fn pump(&mut self, last: bool) {
        if let Some(log) = &mut self.log
            && let Err(e) = log.pump(last)
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read workload output");
        }
    }
}

pub(crate) struct Reconciler {
    cfg: Arc<Config>,
    /// Notified when a workload's phase changes (the daemon then sends a heartbeat soon).
    changed: Arc<tokio::sync::Notify>,
    table: SharedTable,
    backend: SharedBackend,
    podman: Podman,
    local: BTreeMap<InstanceId, Local>,
    prepared: bool,
    host_key: Option<PathBuf>,
    /// Containers of this node that belong to no instance directory; removed once the
    /// control plane has said what it wants.
    orphans: Vec<String>,
}

fn container_name(id: &InstanceId) -> String {
    format!("nc-{id}")
}

impl Reconciler {
    pub(crate) fn new(
        cfg: Arc<Config>,
        table: SharedTable,
        backend: SharedBackend,
        changed: Arc<tokio::sync::Notify>,
    ) -> Self {
        Reconciler {
            changed,
            podman: Podman::new(cfg.clone()),
            cfg,
            table,
            backend,
            local: BTreeMap::new(),
            prepared: false,
            host_key: None,
            orphans: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self, mut rx: watch::Receiver<Option<DesiredWorkloads>>) {
        self.adopt().await;
        loop {
            let desired = rx.borrow_and_update().clone();
            self.pass(desired.as_ref()).await;
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Writes what workloads need once: the state directory, `containers.conf`, the CDI
    /// spec of simulated GPUs and the SSH host key.
    async fn prepare(&mut self) -> anyhow::Result<()> {
        use anyhow::Context;
        use std::os::unix::fs::PermissionsExt;
        let cfg = &self.cfg;
        std::fs::create_dir_all(cfg.instances_dir())
            .with_context(|| format!("cannot create {}", cfg.instances_dir().display()))?;
        std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o711))?;
        if cfg.runtime == RuntimeKind::Podman {
            if cfg.own_containers_conf {
                // podman's default ulimits (nofile, nproc) break some OCI runtimes here.
                write_atomic(
                    &cfg.containers_conf,
                    b"# Written by neocloud-agent.\n[containers]\ndefault_ulimits = []\n",
                    0o644,
                )
                .context("cannot write containers.conf")?;
            }
            if cfg.sim {
                let path = cdi::write_sim_spec(
                    &cfg.cdi_dir,
                    &cfg.cdi_kind,
                    &cfg.hostname,
                    &cfg.state_dir,
                    &cfg.inventory,
                )
                .await?;
                tracing::info!(spec = %path.display(), kind = %cfg.cdi_kind, "wrote the CDI spec of the simulated GPUs");
            }
        }
        match ssh::host_key(&cfg.state_dir).await {
            Ok(k) => self.host_key = Some(k),
            Err(e) => tracing::error!("no SSH host key; workloads cannot start: {e:#}"),
        }
        self.prepared = true;
        Ok(())
    }

    /// Sets the report of a workload (its `since` moves when the phase changes).
    fn report(
        &self,
        id: InstanceId,
        phase: WorkloadPhase,
        reason: Option<String>,
        exit_code: Option<i32>,
        access: Option<Access>,
    ) -> WorkloadReport {
        let mut t = lock(&self.table);
        let log_path = self.cfg.instance_dir(&id).join("output.log");
        let new = !t.entries.contains_key(&id);
        let entry = t.entries.entry(id).or_insert_with(|| Entry {
            report: WorkloadReport {
                instance_id: id,
                phase,
                since: Timestamp::now(),
                reason: None,
                exit_code: None,
                access: None,
                log_offset: 0,
                log: String::new(),
            },
            log_path,
            acked: 0,
            terminal_acked: false,
        });
        if entry.report.phase != phase {
            entry.report.since = Timestamp::now();
            entry.report.phase = phase;
            entry.terminal_acked = false;
            self.changed.notify_one();
        } else if new {
            self.changed.notify_one();
        }
        entry.report.reason = reason;
        entry.report.exit_code = exit_code;
        entry.report.access = access;
        entry.report.clone()
    }

    fn access(&self, port: u16, user: &str) -> Access {
        Access {
            host: self.cfg.ssh_host.clone(),
            port,
            user: user.to_string(),
        }
    }

    async fn pass(&mut self, desired: Option<&DesiredWorkloads>) {
        self.drop_forgotten();
        if let Some(d) = desired {
            if !self.prepared
                && let Err(e) = self.prepare().await
            {
                tracing::error!("cannot prepare the node for workloads: {e:#}");
                for w in &d.workloads {
                    if !self.local.contains_key(&w.instance_id) {
                        let reason = format!("waiting: the node cannot run workloads: {e:#}");
                        self.report(
                            w.instance_id,
                            WorkloadPhase::Provisioning,
                            Some(reason),
                            None,
                            None,
                        );
                    }
                }
                self.monitor().await;
                return;
            }
            for name in std::mem::take(&mut self.orphans) {
                tracing::warn!(container = %name, "removing a container of no known instance");
                if let Err(e) = self.podman.remove(&name).await {
                    tracing::warn!("{e:#}");
                }
            }
            let grace = d.stop_grace_secs;
            let ids: Vec<InstanceId> = self.local.keys().copied().collect();
            for id in ids {
                if self.local.get(&id).is_none_or(Local::terminal) {
                    continue;
                }
                match d.workloads.iter().find(|w| w.instance_id == id) {
                    None => {
                        self.stop(id, grace, "stopped: the control plane no longer lists it")
                            .await;
                    }
                    Some(w) if w.stop => self.stop(id, grace, "stopped on request").await,
                    Some(w) => self.update(w),
                }
            }
            for w in &d.workloads {
                let id = w.instance_id;
                if self.local.contains_key(&id) {
                    continue;
                }
                if w.stop {
                    if !lock(&self.table).entries.contains_key(&id) {
                        let reason = "stopped on request (it was not running on this node)";
                        self.report(id, WorkloadPhase::Stopped, Some(reason.into()), None, None);
                    }
                    continue;
                }
                self.provision(w).await;
                if self.local.get(&id).is_some_and(|l| !l.terminal()) {
                    self.update(w);
                }
            }
            lock(&self.table).generation = Some(d.generation);
        }
        self.monitor().await;
    }

    /// Instances whose end the control plane has seen and dropped: their last files go.
    fn drop_forgotten(&mut self) {
        let gone: Vec<InstanceId> = {
            let t = lock(&self.table);
            self.local
                .iter()
                .filter(|(id, l)| l.terminal() && !t.entries.contains_key(id))
                .map(|(id, _)| *id)
                .collect()
        };
        for id in gone {
            if let Some(l) = self.local.remove(&id)
                && let Err(e) = std::fs::remove_dir_all(&l.dir)
            {
                tracing::warn!(dir = %l.dir.display(), error = %e, "cannot remove an instance directory");
            }
        }
    }

    /// The environment every workload gets (the tenant's, then the platform's).
    fn workload_env(&self, w: &Workload, notice: &Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = match &w.delivery {
            Mode_::Container { env, .. } => env
                .iter()
                .filter(|(k, _)| !k.starts_with("NEOCLOUD_") && !k.starts_with("CUDA_MPS_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Mode_::BareMetal { .. } => Vec::new(),
        };
        env.push(("NEOCLOUD_INSTANCE_ID".into(), w.instance_id.to_string()));
        env.push((
            "NEOCLOUD_NOTICE_FILE".into(),
            notice.to_string_lossy().into_owned(),
        ));
        if let Some(milli) = w.share_milli {
            env.push((
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(),
                milli.div_ceil(10).min(100).to_string(),
            ));
            let gpu_mib = w
                .gpus
                .first()
                .and_then(|g| self.cfg.inventory.iter().find(|i| i.index == *g))
                .map_or(0, |g| g.memory_mib);
            let mib = gpu_mib * u64::from(milli.min(1000)) / 1000;
            env.push((
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(),
                format!("0={mib}M"),
            ));
        }
        env
    }

    async fn provision(&mut self, w: &Workload) {
        let id = w.instance_id;
        let dir = self.cfg.instance_dir(&id);
        let kind = match (&w.delivery, self.cfg.runtime) {
            (Mode_::BareMetal { .. }, _) => Kind::Bare,
            (Mode_::Container { .. }, RuntimeKind::Podman) => Kind::Container,
            (Mode_::Container { .. }, RuntimeKind::Process) => Kind::Process,
            (Mode_::Container { .. }, RuntimeKind::None) => Kind::Refused,
        };
        tracing::info!(instance = %id, mode = w.delivery.mode(), "provisioning");
        let local = Local {
            spec: w.clone(),
            dir: dir.clone(),
            meta: Meta {
                kind: Some(kind),
                ..Meta::default()
            },
            phase: WorkloadPhase::Provisioning,
            log: None,
        };
        let setup = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(dir.join("run"))?;
            for f in [
                "output.log",
                "output.pos",
                "raw.log",
                "ctr.log",
                "terminal.json",
            ] {
                let _ = std::fs::remove_file(dir.join(f));
            }
            let spec = serde_json::to_vec_pretty(w).map_err(std::io::Error::other)?;
            write_atomic(&dir.join("workload.json"), &spec, 0o600)
        })();
        local.save_meta();
        self.local.insert(id, local);
        self.report(id, WorkloadPhase::Provisioning, None, None, None);
        let result = match setup {
            Err(e) => Err(format!("cannot prepare the instance directory: {e}")),
            Ok(()) => match kind {
                Kind::Container => self.provision_container(id).await,
                Kind::Process => self.provision_process(id).await,
                Kind::Bare => self.provision_bare(id).await,
                Kind::Refused => {
                    Err("this node's agent runs no workloads (--runtime none)".to_string())
                }
            },
        };
        match result {
            Ok(access) => {
                let since = Timestamp::now();
                if let Some(l) = self.local.get_mut(&id) {
                    l.phase = WorkloadPhase::Running;
                    l.meta.since = Some(since);
                    l.save_meta();
                }
                tracing::info!(instance = %id, port = access.port, user = %access.user, "running");
                self.report(id, WorkloadPhase::Running, None, None, Some(access));
            }
            Err(reason) => {
                tracing::warn!(instance = %id, %reason, "workload failed to start");
                self.finish(id, WorkloadPhase::Failed, reason, None).await;
            }
        }
    }

    fn local_mut(&mut self, id: &InstanceId) -> Result<&mut Local, String> {
        self.local
            .get_mut(id)
            .ok_or_else(|| "internal error: instance state lost".to_string())
    }

    async fn provision_container(&mut self, id: InstanceId) -> Result<Access, String> {
        let (spec, dir) = {
            let l = self.local_mut(&id)?;
            (l.spec.clone(), l.dir.clone())
        };
        let Mode_::Container { image, command, .. } = &spec.delivery else {
            return Err("internal error: not a container workload".into());
        };
        let devices = cdi::device_names(
            &self.cfg.cdi_kind,
            &spec,
            self.cfg.inventory.len(),
            self.cfg.sim,
        )?;
        match self.podman.image_exists(image).await {
            Ok(true) => {}
            Ok(false) => match self.cfg.pull {
                super::PullPolicy::Never => {
                    return Err(format!(
                        "image not found: {image} (this node does not pull images: --pull never)"
                    ));
                }
                super::PullPolicy::Missing => {
                    tracing::info!(instance = %id, image, "pulling the image");
                    self.podman
                        .pull(image)
                        .await
                        .map_err(|e| format!("image not found: {image} (pull failed: {e})"))?;
                }
            },
            Err(e) => return Err(format!("cannot run podman: {e:#}")),
        }
        let name = container_name(&id);
        self.podman
            .remove(&name)
            .await
            .map_err(|e| format!("cannot remove a stale container: {e:#}"))?;
        let mut args: Vec<OsString> = Vec::new();
        let mut arg = |a: String| args.push(a.into());
        arg("--name".into());
        arg(name.clone());
        for label in [
            format!("neocloud.instance={id}"),
            format!("neocloud.tenant={}", spec.tenant_id),
            AGENT_LABEL.to_string(),
            format!("{NODE_LABEL}={}", self.cfg.hostname),
        ] {
            arg("--label".into());
            arg(label);
        }
        if let Some(r) = &self.cfg.oci_runtime {
            arg("--runtime".into());
            arg(r.clone());
        }
        for d in devices {
            arg("--device".into());
            arg(d);
        }
        if let Some(milli) = spec.cpu_milli.filter(|m| *m > 0) {
            arg("--cpus".into());
            arg(format!("{}.{:03}", milli / 1000, milli % 1000));
        }
        if let Some(mib) = spec.memory_mib.filter(|m| *m > 0) {
            arg("--memory".into());
            arg(format!("{mib}m"));
        }
        for (k, v) in self.workload_env(&spec, Path::new("/run/neocloud/notice")) {
            arg("--env".into());
            arg(format!("{k}={v}"));
        }
        arg("--volume".into());
        arg(format!("{}:/run/neocloud:ro", dir.join("run").display()));
        arg("--log-driver".into());
        arg("k8s-file".into());
        arg("--log-opt".into());
        arg(format!("path={}", dir.join("ctr.log").display()));
        arg("--pull".into());
        arg("never".into());
        arg(image.clone());
        for c in command {
            arg(c.clone());
        }
        self.podman
            .create(args)
            .await
            .map_err(|e| format!("cannot create the container: {e}"))?;
        self.podman
            .start(&name)
            .await
            .map_err(|e| format!("cannot start the container: {e}"))?;
        {
            let l = self.local_mut(&id)?;
            l.meta.started = true;
            l.save_meta();
            l.log = Some(Converter::new(
                dir.join("ctr.log"),
                dir.join("output.log"),
                Format::Cri,
            ));
        }
        self.write_exec_env(&id, &dir).await?;
        let port = self
            .start_ssh(
                &id,
                Login::Forced {
                    wrapper: dir.join("enter.sh"),
                },
            )
            .await?;
        Ok(self.access(port, "root"))
    }

    /// `podman exec` does not get the environment that CDI devices add: the login wrapper
    /// passes the container's whole environment from this file.
    async fn write_exec_env(&self, id: &InstanceId, dir: &Path) -> Result<(), String> {
        let name = container_name(id);
        let env = match self.podman.inspect(&name).await {
            Ok(Some(c)) => c.config.env,
            Ok(None) => return Err("the container disappeared right after it started".into()),
            Err(e) => return Err(format!("cannot inspect the container: {e:#}")),
        };
        let text: String = env
            .iter()
            .filter(|v| v.contains('=') && !v.starts_with("HOSTNAME="))
            .map(|v| format!("{v}\n"))
            .collect();
        write_atomic(&dir.join("exec.env"), text.as_bytes(), 0o600)
            .map_err(|e| format!("cannot write exec.env: {e}"))
    }

    async fn provision_process(&mut self, id: InstanceId) -> Result<Access, String> {
        let (spec, dir) = {
            let l = self.local_mut(&id)?;
            (l.spec.clone(), l.dir.clone())
        };
        let Mode_::Container { image, command, .. } = &spec.delivery else {
            return Err("internal error: not a container workload".into());
        };
        if spec.mig_start.is_some() {
            return Err("MIG workloads need a container runtime (--runtime podman)".into());
        }
        let mut env = self.workload_env(&spec, &dir.join("run").join("notice"));
        let uuids: Vec<String> = spec
            .gpus
            .iter()
            .filter_map(|g| self.cfg.inventory.iter().find(|i| i.index == *g))
            .map(|g| g.uuid.clone())
            .collect();
        for (g, uuid) in spec.gpus.iter().zip(&uuids) {
            env.push((cdi::gpu_env(*g), uuid.clone()));
        }
        env.push(("CUDA_VISIBLE_DEVICES".into(), uuids.join(",")));
        let note = format!(
            "[neocloud] process runtime: the image {image} is ignored and this workload is \
             NOT isolated from the host\n"
        );
        let _ = std::fs::write(dir.join("raw.log"), note);
        process::spawn(&dir, command, &env, spec.memory_mib)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let env_sh: String = env
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", super::shell_quote(v)))
            .collect();
        write_atomic(&dir.join("env.sh"), env_sh.as_bytes(), 0o600)
            .map_err(|e| format!("cannot write env.sh: {e}"))?;
        {
            let l = self.local_mut(&id)?;
            l.meta.started = true;
            l.save_meta();
            l.log = Some(Converter::new(
                dir.join("raw.log"),
                dir.join("output.log"),
                Format::Raw,
            ));
        }
        let port = self
            .start_ssh(
                &id,
                Login::Forced {
                    wrapper: dir.join("enter.sh"),
                },
            )
            .await?;
        Ok(self.access(port, "root"))
    }

    async fn provision_bare(&mut self, id: InstanceId) -> Result<Access, String> {
        let (spec, dir) = {
            let l = self.local_mut(&id)?;
            (l.spec.clone(), l.dir.clone())
        };
        let name = bare::account_name(&spec.tenant_id);
        let keys = ssh::authorized_keys(
            &spec.authorized_keys,
            &Login::Account { name: name.clone() },
        );
        let account = bare::ensure(&name, &id, &keys)
            .await
            .map_err(|e| format!("{e:#}"))?;
        {
            let l = self.local_mut(&id)?;
            l.meta.started = true;
            l.save_meta();
            l.log = Some(Converter::new(
                dir.join("raw.log"),
                dir.join("output.log"),
                Format::Raw,
            ));
        }
        if let Mode_::BareMetal {
            user_data: Some(script),
        } = &spec.delivery
        {
            bare::run_user_data(&dir, &name, &account.home, script)
                .await
                .map_err(|e| format!("cannot run the user data: {e:#}"))?;
        }
        let port = self
            .start_ssh(&id, Login::Account { name: name.clone() })
            .await?;
        Ok(self.access(port, &name))
    }

    /// Writes the instance's keys, wrapper and sshd config, and starts its sshd on its port
    /// (the one it had, else a free one).
    async fn start_ssh(&mut self, id: &InstanceId, login: Login) -> Result<u16, String> {
        if !self.cfg.sshd.is_file() {
            return Err(format!(
                "no SSH server on this node ({} not found)",
                self.cfg.sshd.display()
            ));
        }
        let Some(host_key) = self.host_key.clone() else {
            return Err("this node has no SSH host key (is ssh-keygen installed?)".into());
        };
        let taken: Vec<u16> = self
            .local
            .iter()
            .filter(|(i, l)| *i != id && !l.terminal())
            .filter_map(|(_, l)| l.meta.port)
            .collect();
        let (spec, dir, old_port) = {
            let l = self.local_mut(id)?;
            (l.spec.clone(), l.dir.clone(), l.meta.port)
        };
        let keys = ssh::authorized_keys(&spec.authorized_keys, &login);
        write_atomic(&dir.join("authorized_keys"), keys.as_bytes(), 0o600)
            .map_err(|e| format!("cannot write authorized_keys: {e}"))?;
        if let Login::Forced { wrapper } = &login {
            let script = match self.cfg.runtime {
                RuntimeKind::Process => ssh::process_wrapper(&dir),
                _ => ssh::container_wrapper(&self.cfg, &dir, &container_name(id)),
            };
            write_atomic(wrapper, script.as_bytes(), 0o700)
                .map_err(|e| format!("cannot write the login wrapper: {e}"))?;
        }
        ssh::stop(&dir).await;
        let mut last_error = String::from("no free port");
        for attempt in 0..3 {
            let port = match old_port.filter(|_| attempt == 0) {
                Some(p) => p,
                None => match ssh::free_port(&self.cfg, &taken) {
                    Some(p) => p,
                    None => {
                        return Err(format!(
                            "no free SSH port in {} on this node",
                            self.cfg.ssh_ports
                        ));
                    }
                },
            };
            ssh::write_config(&self.cfg, &dir, port, &host_key, &login)
                .map_err(|e| format!("{e:#}"))?;
            match ssh::start(&self.cfg, &dir, port).await {
                Ok(()) => {
                    let l = self.local_mut(id)?;
                    l.meta.port = Some(port);
                    l.save_meta();
                    return Ok(port);
                }
                Err(e) => {
                    tracing::warn!(instance = %id, port, "sshd did not start: {e:#}");
                    last_error = format!("{e:#}");
                }
            }
        }
        Err(format!("cannot start the SSH server: {last_error}"))
    }

    /// Applies changes of a running workload: the preemption notice, the keys.
    fn update(&mut self, w: &Workload) {
        let Some(l) = self.local.get_mut(&w.instance_id) else {
            return;
        };
        if l.terminal() {
            return;
        }
        if let Some(at) = w.preempt_at.filter(|at| l.meta.notice != Some(*at)) {
            let notice = serde_json::json!({"action": "preempt", "at": at.to_string()});
            let path = l.dir.join("run").join("notice");
            match write_atomic(&path, format!("{notice}\n").as_bytes(), 0o644) {
                Ok(()) => {
                    tracing::info!(instance = %w.instance_id, %at, "preemption notice written");
                    l.meta.notice = Some(at);
                    l.save_meta();
                }
                Err(e) => tracing::warn!(error = %e, "cannot write the preemption notice"),
            }
        }
        if w.authorized_keys != l.spec.authorized_keys {
            let login = match &l.spec.delivery {
                Mode_::BareMetal { .. } => Login::Account {
                    name: bare::account_name(&l.spec.tenant_id),
                },
                Mode_::Container { .. } => Login::Forced {
                    wrapper: l.dir.join("enter.sh"),
                },
            };
            let keys = ssh::authorized_keys(&w.authorized_keys, &login);
            if let Err(e) = write_atomic(&l.dir.join("authorized_keys"), keys.as_bytes(), 0o600) {
                tracing::warn!(error = %e, "cannot update authorized_keys");
            }
            if let Login::Account { name } = &login
                && let Some(account) = bare::lookup(name)
                && let Err(e) = bare::write_keys(&account, &keys)
            {
                tracing::warn!("cannot update the account's keys: {e:#}");
            }
            tracing::info!(instance = %w.instance_id, "authorized keys updated");
        }
        if *w != l.spec {
            l.spec = w.clone();
            if let Ok(spec) = serde_json::to_vec_pretty(w) {
                let _ = write_atomic(&l.dir.join("workload.json"), &spec, 0o600);
            }
        }
    }

    /// Stops a running workload (SIGTERM, SIGKILL after `grace`), then cleans it up.
    async fn stop(&mut self, id: InstanceId, grace: u32, reason: &str) {
        let Some(l) = self.local.get(&id) else { return };
        let (kind, dir) = (l.meta.kind, l.dir.clone());
        tracing::info!(instance = %id, grace, "stopping: {reason}");
        let mut exit_code = None;
        match kind {
            Some(Kind::Container) => {
                let name = container_name(&id);
                if let Err(e) = self.podman.stop(&name, grace).await {
                    tracing::warn!(instance = %id, "{e:#}");
                }
                if let Ok(Some(c)) = self.podman.inspect(&name).await {
                    exit_code = Some(c.state.exit_code);
                }
            }
            Some(Kind::Process) => {
                process::stop(&dir, &id.to_string(), grace).await;
                exit_code = process::exit_code(&dir);
            }
            _ => {}
        }
        self.finish(id, WorkloadPhase::Stopped, reason.to_string(), exit_code)
            .await;
    }

    /// Ends a workload: takes its last output, removes whatever of it is left (container,
    /// process, sshd, account), scrubs its GPUs when it ran, keeps only its output and its
    /// final report, and reports the final phase.
    async fn finish(
        &mut self,
        id: InstanceId,
        phase: WorkloadPhase,
        reason: String,
        exit_code: Option<i32>,
    ) {
        let Some(l) = self.local.get_mut(&id) else {
            return;
        };
        l.pump(true);
        l.log = None;
        let (kind, dir, spec, started) =
            (l.meta.kind, l.dir.clone(), l.spec.clone(), l.meta.started);
        let mut reason = reason;
        match kind {
            Some(Kind::Container) => {
                if let Err(e) = self.podman.remove(&container_name(&id)).await {
                    tracing::warn!(instance = %id, "{e:#}");
                    reason.push_str(&format!("; the container could not be removed: {e:#}"));
                }
            }
            Some(Kind::Process) => process::stop(&dir, &id.to_string(), 0).await,
            Some(Kind::Bare) => {
                let name = bare::account_name(&spec.tenant_id);
                if let Err(e) = bare::remove(&name, &id).await {
                    tracing::warn!(instance = %id, "{e:#}");
                    reason.push_str(&format!("; {e:#}"));
                }
            }
            Some(Kind::Refused) | None => {}
        }
        ssh::stop(&dir).await;
        if started {
            let outcome = self.scrub(&id, &spec).await;
            if !outcome.is_empty() {
                reason.push_str("; ");
                reason.push_str(&outcome);
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name() == "output.log" {
                    continue;
                }
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        if let Some(l) = self.local.get_mut(&id) {
            l.phase = phase;
        }
        let report = self.report(id, phase, Some(reason.clone()), exit_code, None);
        if let Ok(data) = serde_json::to_vec(&report) {
            let _ = write_atomic(&dir.join("terminal.json"), &data, 0o600);
        }
        tracing::info!(instance = %id, phase = ?phase, %reason, "workload ended");
    }

    /// Scrubs the workload's GPUs through the backend; one line for the report, also
    /// appended to `<state-dir>/scrub.log`.
    async fn scrub(&self, id: &InstanceId, spec: &Workload) -> String {
        if spec.gpus.is_empty() {
            return String::new();
        }
        let gpus = spec.gpus.clone();
        let shared = spec.mig_start.is_some() || spec.share_milli.is_some();
        let backend = self.backend.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut b = backend.lock().unwrap_or_else(PoisonError::into_inner);
            b.scrub(&gpus, shared)
        })
        .await
        .unwrap_or_else(|e| format!("GPUs not scrubbed: {e}"));
        tracing::info!(instance = %id, "scrub: {outcome}");
        let line = format!("{} {id} {outcome}\n", Timestamp::now());
        let log = self.cfg.state_dir.join("scrub.log");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(path = %log.display(), error = %e, "cannot record the scrub");
        }
        outcome
    }

    /// Checks every running workload: ended on its own? sshd alive? new output?
    async fn monitor(&mut self) {
        let running: Vec<InstanceId> = self
            .local
            .iter()
            .filter(|(_, l)| l.phase == WorkloadPhase::Running)
            .map(|(id, _)| *id)
            .collect();
        if running.is_empty() {
            return;
        }
        let containers = if self.cfg.runtime == RuntimeKind::Podman
            && running
                .iter()
                .any(|id| self.local.get(id).and_then(|l| l.meta.kind) == Some(Kind::Container))
        {
            match self.podman.list().await {
                Ok(list) => Some(list),
                Err(e) => {
                    tracing::warn!("cannot list containers: {e:#}");
                    None
                }
            }
        } else {
            None
        };
        for id in running {
            let Some(l) = self.local.get_mut(&id) else {
                continue;
            };
            l.pump(false);
            let (kind, dir) = (l.meta.kind, l.dir.clone());
            let ended = match kind {
                Some(Kind::Container) => containers.as_ref().and_then(|list| {
                    let name = container_name(&id);
                    match list.iter().find(|c| c.names.contains(&name)) {
                        None => Some(Err("the container disappeared".to_string())),
                        Some(c) if ["exited", "stopped", "dead"].contains(&c.state.as_str()) => {
                            Some(Ok(c.exit_code))
                        }
                        Some(_) => None,
                    }
                }),
                Some(Kind::Process) => {
                    if process::running(&dir, &id.to_string()).is_some() {
                        None
                    } else {
                        Some(
                            process::exit_code(&dir)
                                .ok_or_else(|| "the workload was killed by a signal".to_string()),
                        )
                    }
                }
                _ => None,
            };
            match ended {
                Some(Ok(0)) => {
                    self.finish(
                        id,
                        WorkloadPhase::Stopped,
                        "the workload exited (code 0)".into(),
                        Some(0),
                    )
                    .await;
                }
                Some(Ok(code)) => {
                    let reason = format!("the workload exited (code {code})");
                    self.finish(id, WorkloadPhase::Failed, reason, Some(code))
                        .await;
                }
                Some(Err(reason)) => {
                    self.finish(id, WorkloadPhase::Failed, reason, None).await;
                }
                None => {
                    if ssh::running(&dir).is_none() {
                        self.restart_ssh(id).await;
                    }
                }
            }
        }
    }

    /// Starts a dead sshd again, on its port when it can.
    async fn restart_ssh(&mut self, id: InstanceId) {
        let Some(l) = self.local.get(&id) else { return };
        let login = match l.meta.kind {
            Some(Kind::Bare) => Login::Account {
                name: bare::account_name(&l.spec.tenant_id),
            },
            _ => Login::Forced {
                wrapper: l.dir.join("enter.sh"),
            },
        };
        let user = match &login {
            Login::Account { name } => name.clone(),
            Login::Forced { .. } => "root".to_string(),
        };
        tracing::warn!(instance = %id, port = ?l.meta.port, "sshd not running; starting it again");
        match self.start_ssh(&id, login).await {
            Ok(port) => {
                let access = self.access(port, &user);
                self.report(id, WorkloadPhase::Running, None, None, Some(access));
            }
            Err(e) => tracing::warn!(instance = %id, "cannot restart sshd: {e}"),
        }
    }

    /// Finds what an earlier run of the agent left: instance directories (spec, meta,
    /// final report), containers of this node, sshd pid files, accounts. A running
    /// workload is adopted as it is (nothing restarted but a dead sshd, on its port); one
    /// that ended meanwhile is reported and cleaned at the next pass; one whose provisioning
    /// was cut short is undone, to be provisioned again if still wanted; containers of no
    /// instance are removed once the control plane has said what it wants.
    pub(crate) async fn adopt(&mut self) {
        let dirs: Vec<PathBuf> = match std::fs::read_dir(self.cfg.instances_dir()) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect(),
            Err(_) => Vec::new(),
        };
        // podman is asked below what containers exist: its containers.conf must be there.
        if (!dirs.is_empty() || self.cfg.runtime == RuntimeKind::Podman)
            && let Err(e) = self.prepare().await
        {
            tracing::error!("cannot prepare the node for workloads: {e:#}");
        }
        for dir in dirs {
            if let Err(e) = self.adopt_dir(&dir).await {
                tracing::warn!(dir = %dir.display(), "not adopted: {e}");
            }
        }
        if self.cfg.runtime == RuntimeKind::Podman {
            match self.podman.list().await {
                Ok(list) => {
                    for c in list {
                        let Some(name) = c.names.first() else {
                            continue;
                        };
                        let known = self.local.keys().any(|id| container_name(id) == *name);
                        if !known {
                            tracing::info!(container = %name, id = %c.id, "container of no known instance");
                            self.orphans.push(name.clone());
                        }
                    }
                }
                Err(e) => tracing::warn!("cannot list containers: {e:#}"),
            }
        }
        let n = self.local.len();
        if n > 0 {
            tracing::info!(workloads = n, "adopted workloads left by an earlier run");
        }
    }

    async fn adopt_dir(&mut self, dir: &Path) -> Result<(), String> {
        let read = |f: &str| std::fs::read(dir.join(f));
        let spec: Workload = read("workload.json")
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .ok_or("no readable workload.json")?;
        let id = spec.instance_id;
        if dir != self.cfg.instance_dir(&id) {
            return Err("directory name does not match its instance".into());
        }
        if let Some(report) = read("terminal.json")
            .ok()
            .and_then(|d| serde_json::from_slice::<WorkloadReport>(&d).ok())
        {
            let phase = report.phase;
            lock(&self.table).entries.insert(
                id,
                Entry {
                    report,
                    log_path: dir.join("output.log"),
                    acked: 0,
                    terminal_acked: false,
                },
            );
            self.local.insert(
                id,
                Local {
                    spec,
                    dir: dir.to_path_buf(),
                    meta: Meta::default(),
                    phase,
                    log: None,
                },
            );
            return Ok(());
        }
        let meta: Meta = read("meta.json")
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default();
        let mut local = Local {
            spec: spec.clone(),
            dir: dir.to_path_buf(),
            meta: meta.clone(),
            phase: WorkloadPhase::Running,
            log: None,
        };
        let alive = match meta.kind {
            Some(Kind::Container) => {
                let name = container_name(&id);
                let c = self
                    .podman
                    .inspect(&name)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                match c {
                    Some(c)
                        if ["running", "paused", "exited", "stopped"]
                            .contains(&c.state.status.as_str()) =>
                    {
                        tracing::info!(instance = %id, container = %c.id, state = %c.state.status, "adopting a container");
                        local.log = Some(Converter::new(
                            dir.join("ctr.log"),
                            dir.join("output.log"),
                            Format::Cri,
                        ));
                        true
                    }
                    Some(c) => {
                        tracing::warn!(instance = %id, state = %c.state.status, "removing a container whose start was cut short");
                        self.podman
                            .remove(&name)
                            .await
                            .map_err(|e| format!("{e:#}"))?;
                        false
                    }
                    // Ended and removed while the agent was away: reported failed below.
                    None => meta.started,
                }
            }
            Some(Kind::Process) => {
                let alive = process::running(dir, &id.to_string()).is_some();
                if alive || meta.started {
                    local.log = Some(Converter::new(
                        dir.join("raw.log"),
                        dir.join("output.log"),
                        Format::Raw,
                    ));
                }
                alive || meta.started
            }
            Some(Kind::Bare) => {
                let name = bare::account_name(&spec.tenant_id);
                let ours = bare::lookup(&name).is_some_and(|a| a.comment == bare::marker(&id));
                if ours {
                    local.log = Some(Converter::new(
                        dir.join("raw.log"),
                        dir.join("output.log"),
                        Format::Raw,
                    ));
                } else if bare::lookup(&name).is_none() {
                    return Err("its account is gone; provisioned again if still wanted".into());
                }
                ours
            }
            Some(Kind::Refused) | None => false,
        };
        if !alive {
            // Cut short before it ran: nothing of it is kept; provisioned again if wanted.
            ssh::stop(dir).await;
            if meta.kind == Some(Kind::Bare) {
                let _ = bare::remove(&bare::account_name(&spec.tenant_id), &id).await;
            }
            let _ = std::fs::remove_dir_all(dir);
            return Ok(());
        }
        let user = match meta.kind {
            Some(Kind::Bare) => bare::account_name(&spec.tenant_id),
            _ => "root".to_string(),
        };
        let since = meta.since;
        local.phase = WorkloadPhase::Running;
        self.local.insert(id, local);
        let port = match (ssh::running(dir), meta.port) {
            (Some(_), Some(port)) => Some(port),
            _ => None,
        };
        let access = port.map(|p| self.access(p, &user));
        self.report(id, WorkloadPhase::Running, None, None, access);
        if let Some(since) = since
            && let Some(e) = lock(&self.table).entries.get_mut(&id)
        {
            e.report.since = since;
        }
        if meta.kind == Some(Kind::Container) && !dir.join("exec.env").exists() {
            let _ = self.write_exec_env(&id, dir).await;
        }
        if port.is_none() && self.host_key.is_some() {
            // The monitor of the first pass restarts it (on its port), or finds it ended.
            tracing::info!(instance = %id, "its sshd is not running");
        }
        Ok(())
    }
}
