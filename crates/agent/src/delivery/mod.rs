//! Delivery: the node side of instances that run.
//!
//! The control plane says what should run on the node in every heartbeat answer
//! ([`DesiredWorkloads`]). The heartbeat loop hands the latest list to a background
//! reconciler task through a watch channel (so slow podman calls never delay a heartbeat);
//! the reconciler converges the node and keeps a shared table of [`WorkloadReport`]s that the
//! heartbeat loop sends with every beat, together with new output of each workload.
//!
//! Parts:
//!
//! - `reconcile`: the reconciler (provision, monitor, stop, adopt after a restart);
//! - `podman`, `process`, `bare`: the container runtime (podman with CDI devices), the
//!   process fallback (isolates nothing) and bare-metal tenant accounts;
//! - `ssh`: one dedicated `sshd` per running instance;
//! - `cdi`: the CDI spec of simulated GPUs, and CDI device names of a workload;
//! - `logs`: workload output turned into an append-only UTF-8 file read by byte offset.
//!
//! Every instance has a directory `<state-dir>/instances/<instance id>/` holding its spec
//! (`workload.json`), what the agent did so far (`meta.json`), its output (`output.log`),
//! its `sshd_config`, `authorized_keys`, login wrapper and the `run/` directory mounted
//! read-only at `/run/neocloud` in its container (the preemption notice). When a workload
//! ends, only `output.log` and `terminal.json` (its last report) are kept, until the control
//! plane drops it from the desired list.

mod bare;
mod cdi;
mod logs;
mod podman;
mod process;
mod reconcile;
mod ssh;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use neocloud_types::{DesiredWorkloads, GpuInventory, InstanceId, WorkloadReport};
use tokio::sync::watch;

use crate::BackendKind;
use crate::backend::GpuBackend;

/// Most new output sent for one workload in one heartbeat, bytes.
pub const MAX_LOG_CHUNK: usize = 64 * 1024;
/// Most new output sent for all workloads together in one heartbeat, bytes.
pub const MAX_LOG_PER_BEAT: usize = 512 * 1024;

/// Which runtime starts container workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// podman with an OCI runtime (runc), GPUs given through CDI device names.
    Podman,
    /// A plain child process running the workload's command: isolates nothing, ignores the
    /// image. For development machines without podman.
    Process,
    /// No container workloads: each is reported failed. Bare-metal hand-offs still work.
    None,
}

impl RuntimeKind {
    /// The name as the flag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Podman => "podman",
            RuntimeKind::Process => "process",
            RuntimeKind::None => "none",
        }
    }
}

/// Whether podman may pull a missing image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Never pull: an image not already on the node fails the workload.
    Never,
    /// Pull an image that is not on the node (a failed pull fails the workload).
    Missing,
}

/// An inclusive range of TCP ports, written `FIRST-LAST` (or one port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (included).
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port range such as 2200-2299");
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The delivery settings, checked at start.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub runtime: RuntimeKind,
    pub state_dir: PathBuf,
    pub hostname: String,
    pub ssh_host: String,
    pub ssh_listen: IpAddr,
    pub ssh_ports: PortRange,
    pub sshd: PathBuf,
    pub oci_runtime: Option<String>,
    pub containers_conf: PathBuf,
    /// The agent writes `containers_conf` itself (no `--containers-conf`).
    pub own_containers_conf: bool,
    pub cdi_dir: PathBuf,
    pub cdi_kind: String,
    /// The backend is `sim`: the agent writes the CDI spec of its GPUs.
    pub sim: bool,
    pub pull: PullPolicy,
    pub podman: PathBuf,
    /// Hold the long poll for desired workloads open (not with `--no-long-poll`).
    pub long_poll: bool,
    pub inventory: Vec<GpuInventory>,
}

impl Config {
    /// Checks the flags and picks the runtime; logs which one and why.
    pub(crate) fn from_args(
        args: &crate::AgentArgs,
        hostname: &str,
        inventory: Vec<GpuInventory>,
    ) -> Result<Config> {
        if !args.state_dir.is_absolute() {
            bail!(
                "--state-dir must be an absolute path (got {})",
                args.state_dir.display()
            );
        }
        let podman = find_program(&args.podman);
        let runtime = match (args.runtime, &podman) {
            (Some(RuntimeKind::Podman), None) => bail!(
                "--runtime podman: the podman binary {:?} was not found; install podman or \
                 choose --runtime process|none",
                args.podman
            ),
            (Some(r), _) => {
                tracing::info!(
                    runtime = r.as_str(),
                    "container runtime chosen by --runtime"
                );
                r
            }
            (None, Some(p)) => {
                tracing::info!(
                    runtime = "podman",
                    podman = %p.display(),
                    "container runtime: podman (found; pass --runtime to choose another)"
                );
                RuntimeKind::Podman
            }
            (None, None) => {
                tracing::warn!(
                    runtime = "process",
                    "podman not found ({:?}): container workloads run as PLAIN PROCESSES on this \
                     host, isolating nothing and ignoring their image; install podman or pass \
                     --runtime none to refuse them",
                    args.podman
                );
                RuntimeKind::Process
            }
        };
        if runtime == RuntimeKind::Process {
            tracing::warn!(
                "the process runtime isolates nothing: workloads run as root on this host"
            );
        }
        let oci_runtime = match &args.oci_runtime {
            Some(r) if r.trim().is_empty() || r.starts_with('-') => {
                bail!("--oci-runtime must name an OCI runtime such as runc or crun")
            }
            Some(r) => Some(r.clone()),
            None if Path::new("/usr/bin/runc").exists() || find_program("runc").is_some() => {
                Some("runc".to_string())
            }
            None => {
                if runtime == RuntimeKind::Podman {
                    tracing::warn!("runc not found; podman uses its default OCI runtime");
                }
                None
            }
        };
        let (containers_conf, own_containers_conf) = match &args.containers_conf {
            Some(p) => {
                if !p.is_file() {
                    bail!("--containers-conf {}: no such file", p.display());
                }
                (p.clone(), false)
            }
            None => (args.state_dir.join("containers.conf"), true),
        };
        let sim = args.backend == BackendKind::Sim;
        let cdi_kind = match &args.cdi_kind {
            Some(k) => {
                cdi::check_kind(k).map_err(|e| anyhow::anyhow!("--cdi-kind: {e}"))?;
                k.clone()
            }
            None if sim => cdi::sim_kind(hostname),
            None => "nvidia.com/gpu".to_string(),
        };
        if !args.cdi_dir.is_absolute() {
            bail!("--cdi-dir must be an absolute path");
        }
        let sshd = args.sshd.clone();
        if !sshd.is_file() {
            tracing::warn!(
                sshd = %sshd.display(),
                "sshd not found (--sshd): workloads will fail until openssh-server is installed"
            );
        }
        Ok(Config {
            runtime,
            state_dir: args.state_dir.clone(),
            hostname: hostname.to_string(),
            ssh_host: args
                .ssh_host
                .clone()
                .unwrap_or_else(|| hostname.to_string()),
            ssh_listen: args.ssh_listen,
            ssh_ports: args.ssh_ports,
            sshd,
            oci_runtime,
            containers_conf,
            own_containers_conf,
            cdi_dir: args.cdi_dir.clone(),
            cdi_kind,
            sim,
            pull: args.pull,
            podman: podman.unwrap_or_else(|| PathBuf::from(&args.podman)),
            inventory,
            long_poll: !args.no_long_poll,
        })
    }

    pub(crate) fn instances_dir(&self) -> PathBuf {
        self.state_dir.join("instances")
    }

    pub(crate) fn instance_dir(&self, id: &InstanceId) -> PathBuf {
        self.instances_dir().join(id.to_string())
    }
}

/// A program by name on `PATH` (and the sbin directories), or the path itself when it
/// names a file.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One workload as the heartbeat loop sees it.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The report without its log fields.
    pub report: WorkloadReport,
    /// Its output so far (`output.log`).
    pub log_path: PathBuf,
    /// Bytes of output the control plane has acknowledged.
    pub acked: u64,
    /// A beat carrying its final phase was acknowledged.
    pub terminal_acked: bool,
}

impl Entry {
    fn terminal(&self) -> bool {
        use neocloud_types::WorkloadPhase::{Failed, Stopped};
        matches!(self.report.phase, Stopped | Failed)
    }
}

/// What the heartbeat loop and the reconciler share.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// The generation of desired workloads last applied.
    pub generation: Option<u64>,
    pub entries: BTreeMap<InstanceId, Entry>,
}

pub(crate) type SharedTable = Arc<Mutex<Table>>;

pub(crate) fn lock(table: &SharedTable) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The workload part of one heartbeat, and what to mark acknowledged once it is.
#[derive(Debug, Default)]
pub(crate) struct Beat {
    pub generation: Option<u64>,
    pub workloads: Vec<WorkloadReport>,
    sent: Vec<Sent>,
}

#[derive(Debug)]
struct Sent {
    id: InstanceId,
    /// The offset after the chunk sent.
    end: u64,
    /// The whole output was sent.
    complete: bool,
    terminal: bool,
}

/// Aborts the reconciler when the daemon goes away; never touches the workloads.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Seconds each `GET /v1/agent/workloads` waits for a change.
pub const POLL_WAIT_SECS: u32 = 25;

/// What the heartbeat loop, the long poll and the reconciler share.
struct Shared {
    table: SharedTable,
    desired: watch::Sender<Option<DesiredWorkloads>>,
    /// The long poll's last call succeeded: it alone then says what should run (a heartbeat
    /// answer computed before its answer could arrive after it and undo a change).
    polling: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Takes a desired list: forgets workloads whose end was delivered and that are no
    /// longer listed, and hands the list to the reconciler if it changed.
    fn take(&self, d: DesiredWorkloads) {
        let mut forget = Vec::new();
        lock(&self.table).entries.retain(|id, e| {
            let listed = d.workloads.iter().any(|w| w.instance_id == *id);
            let keep = listed || !e.terminal_acked;
            if !keep {
                forget.push(*id);
            }
            keep
        });
        for id in forget {
            tracing::info!(instance = %id, "workload dropped by the control plane; forgotten");
        }
        self.desired.send_if_modified(|cur| {
            if cur.as_ref() == Some(&d) {
                false
            } else {
                *cur = Some(d);
                true
            }
        });
    }
}

/// The delivery side of the daemon: the reconciler task, the long poll for desired
/// workloads, and the shared report table.
pub(crate) struct Delivery {
    shared: Arc<Shared>,
    /// Notified when a workload's phase changes (worth a heartbeat now).
    changed: Arc<tokio::sync::Notify>,
    /// Whether to poll: this node runs workloads (not `--runtime none`) and long polls are
    /// allowed (not `--no-long-poll`).
    polls: bool,
    _task: AbortOnDrop,
    poller: Option<AbortOnDrop>,
}

impl Delivery {
    /// Starts the reconciler; it first adopts what earlier runs of the agent left.
    pub(crate) fn start(config: Config, backend: Arc<Mutex<Box<dyn GpuBackend>>>) -> Delivery {
        let table = SharedTable::default();
        let (desired, rx) = watch::channel(None);
        let changed = Arc::new(tokio::sync::Notify::new());
        let polls = config.runtime != RuntimeKind::None && config.long_poll;
        let reconciler =
            reconcile::Reconciler::new(Arc::new(config), table.clone(), backend, changed.clone());
        let task = tokio::spawn(reconciler.run(rx));
        Delivery {
            shared: Arc::new(Shared {
                table,
                desired,
                polling: std::sync::atomic::AtomicBool::new(false),
            }),
            changed,
            polls,
            _task: AbortOnDrop(task),
            poller: None,
        }
    }

    /// Notified whenever a workload's phase changes.
    pub(crate) fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// Starts the long poll for desired workloads (once; a node without a runtime has
    /// nothing to poll for). `key` carries the key to call with, `None` until registered.
    pub(crate) fn start_polling(
        &mut self,
        cp: crate::client::ControlPlane,
        key: watch::Receiver<Option<String>>,
    ) {
        if self.poller.is_some() || !self.polls {
            return;
        }
        let shared = self.shared.clone();
        self.poller = Some(AbortOnDrop(tokio::spawn(poll(shared, cp, key))));
    }

    /// The workload reports for the next heartbeat, with output from the last acknowledged
    /// offset on (at most [`MAX_LOG_CHUNK`] per workload and [`MAX_LOG_PER_BEAT`] in all).
    pub(crate) fn beat(&self) -> Beat {
        let (generation, entries): (Option<u64>, Vec<Entry>) = {
            let t = lock(&self.shared.table);
            (t.generation, t.entries.values().cloned().collect())
        };
        let mut budget = MAX_LOG_PER_BEAT;
        let mut beat = Beat {
            generation,
            ..Beat::default()
        };
        for e in entries {
            let mut report = e.report.clone();
            report.log_offset = e.acked;
            let max = budget.min(MAX_LOG_CHUNK);
            let (text, complete) = logs::read_chunk(&e.log_path, e.acked, max);
            budget = budget.saturating_sub(text.len());
            let end = e.acked + text.len() as u64;
            report.log = text;
            beat.sent.push(Sent {
                id: report.instance_id,
                end,
                complete,
                terminal: e.terminal(),
            });
            beat.workloads.push(report);
        }
        beat
    }

    /// A heartbeat was accepted: its output counts as delivered, its final phases as seen;
    /// the answer's desired list goes to the reconciler unless the long poll, fresher,
    /// is working. A workload whose final phase and whole output were delivered and that
    /// the control plane no longer lists is forgotten.
    pub(crate) fn acked(&self, beat: Beat, desired: Option<DesiredWorkloads>) {
        {
            let mut t = lock(&self.shared.table);
            for s in &beat.sent {
                if let Some(e) = t.entries.get_mut(&s.id) {
                    e.acked = e.acked.max(s.end);
                    if s.terminal && s.complete && e.terminal() {
                        e.terminal_acked = true;
                    }
                }
            }
        }
        let polling = self
            .shared
            .polling
            .load(std::sync::atomic::Ordering::SeqCst);
        if let Some(d) = desired
            && !polling
        {
            self.shared.take(d);
        }
    }
}

/// The long poll: holds `GET /v1/agent/workloads` open with the generation last received,
/// so that a launch or a terminate reaches the node as soon as it is decided.
async fn poll(
    shared: Arc<Shared>,
    cp: crate::client::ControlPlane,
    mut key: watch::Receiver<Option<String>>,
) {
    let mut delay = Duration::from_secs(1);
    let mut failing = false;
    loop {
        let Some(k) = key.borrow_and_update().clone() else {
            if key.changed().await.is_err() {
                return;
            }
            continue;
        };
        let generation = shared.desired.borrow().as_ref().map(|d| d.generation);
        match cp.workloads(&k, generation, POLL_WAIT_SECS).await {
            Ok(d) => {
                if failing {
                    tracing::info!("long poll for workloads works again");
                    failing = false;
                }
                delay = Duration::from_secs(1);
                shared.take(d);
                shared
                    .polling
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Err(e) => {
                shared
                    .polling
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                if !failing {
                    tracing::warn!(error = %e, "long poll for workloads failed; heartbeats carry them meanwhile");
                    failing = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Runs a command to completion with a time limit; `Err` when it cannot start or times out.
pub(crate) async fn run_cmd(
    cmd: &mut tokio::process::Command,
    limit: Duration,
) -> Result<std::process::Output> {
    let what = format!("{:?}", cmd.as_std().get_program());
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.with_context(|| format!("{what} failed")),
        Err(_) => bail!("{what} did not finish within {} s", limit.as_secs()),
    }
}

/// The last non-empty line of a command's error output (or its status).
pub(crate) fn last_line(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.trim_start_matches("Error: ").to_string());
    line.unwrap_or_else(|| out.status.to_string())
}

/// `s` quoted for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Writes a file through a temporary file and a rename, with the given mode.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, data)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_port_ranges() {
        assert_eq!(
            "2200-2299".parse::<PortRange>(),
            Ok(PortRange {
                first: 2200,
                last: 2299
            })
        );
        assert_eq!(
            "2222".parse::<PortRange>().map(|r| (r.first, r.last)),
            Ok((2222, 2222))
        );
        assert!("2299-2200".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("a-b".parse::<PortRange>().is_err());
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
