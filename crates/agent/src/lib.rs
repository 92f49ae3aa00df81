//! `neocloud agent`: the daemon that runs on every GPU server.
//!
//! It registers the server with the control plane (host name, CPU, memory and the inventory
//! of its GPUs), then sends a heartbeat every few seconds with the telemetry of each GPU and
//! the health events seen since the last acknowledged beat (XID errors, thermal slowdown,
//! burn-in results). Events are numbered and buffered until the control plane acknowledges
//! them, so a control plane outage loses none (up to `--max-buffered-events`).
//!
//! Parts:
//!
//! - [`AgentArgs`] and [`run`]: the command line and the daemon (module `daemon`);
//! - [`backend::GpuBackend`]: where GPU facts come from — [`nvml`] (real GPUs) or [`sim`]
//!   (simulated GPUs with injectable [`fault`]s);
//! - [`relay`]: `neocloud relay`, which passes many agents' heartbeats on in one request;
//! - [`buffer`], [`backoff`], [`client`], [`host`]: the event buffer, retry delays, the HTTP
//!   client of the control plane, and facts about the host.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;

pub mod backend;
pub mod backoff;
pub mod buffer;
pub mod client;
mod daemon;
pub mod delivery;
pub mod fault;
pub mod host;
pub mod nvml;
pub mod relay;
pub mod sim;

pub use delivery::{PortRange, PullPolicy, RuntimeKind};
pub use fault::{Fault, FaultSpec};

/// Which GPU backend the agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Real NVIDIA GPUs through NVML (needs the NVIDIA driver).
    Nvml,
    /// Simulated GPUs, with faults injected on request.
    Sim,
}

/// The result of simulated burn-ins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SimBurnIn {
    /// Burn-ins pass.
    Pass,
    /// Burn-ins fail.
    Fail,
}

/// An API key; its `Debug` form hides the value so that it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// The key itself, to send to the control plane.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl FromStr for SecretKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the key is empty".to_string());
        }
        Ok(SecretKey(s.to_string()))
    }
}

/// Runs the node agent: registers this server with the control plane and reports GPU
/// telemetry and health events until stopped (SIGTERM or Ctrl-C).
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// URL of the control plane, e.g. `http://neocloud.internal:8080`, or the URLs of
    /// several replicas separated by commas: the agent starts at one chosen by its host
    /// name (so a fleet given the same list spreads over it) and moves to the next when one
    /// cannot be reached or answers 502, 503 or 504. Any replica answers heartbeats.
    #[arg(long, env = "NEOCLOUD_AGENT_SERVER", value_name = "URL[,URL...]")]
    pub server: String,

    /// Node-agent API key: an enrollment key, or a key bound to this node. When the control
    /// plane answers the registration with a key of its own, the agent uses that one from
    /// then on.
    #[arg(
        long,
        env = "NEOCLOUD_AGENT_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub key: SecretKey,

    /// Where GPU facts come from: `nvml` (real GPUs; needs the NVIDIA driver) or `sim`
    /// (simulated GPUs).
    #[arg(long, value_enum, value_name = "BACKEND", default_value_t = BackendKind::Nvml)]
    pub backend: BackendKind,

    /// Host name to register as; must match a node of the fleet [default: this machine's host
    /// name].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Number of simulated GPUs (1 to 16).
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub sim_gpus: u32,

    /// GPU model to simulate, a catalog name such as `H100-SXM-80GB`, `H200-SXM-141GB`, `B200`
    /// (unknown names are simulated as 80 GiB, 700 W GPUs).
    #[arg(long, value_name = "MODEL", default_value = "H100-SXM-80GB")]
    pub sim_model: String,

    /// Fault to inject into the simulated GPUs (repeatable).
    ///
    /// SPEC is one of: `xid:CODE:GPU` (XID error CODE on GPU index GPU, e.g. `xid:79:3`),
    /// `dbe:GPU` (double-bit ECC error: uncorrected count + 1 and XID 48), `remap-pending:GPU`
    /// (rows pending remap, XID 63), `remap-failed:GPU` (row remap failure, XID 64),
    /// `thermal:GPU` (thermal slowdown at 92 °C), `clear:GPU` (reset the GPU's fault flags),
    /// `miss:SECS` (send no heartbeat for SECS seconds), `burn-in:pass|fail` (result of the
    /// next burn-ins). Append `@SECS` to apply it SECS seconds after start (`xid:79:3@30`).
    #[arg(long = "sim-fault", value_name = "SPEC")]
    pub sim_faults: Vec<FaultSpec>,

    /// File polled every 500 ms for more faults: when it exists, each line is read as a
    /// fault SPEC (as for `--sim-fault`; `@SECS` counts from when the file is read; empty
    /// lines and lines starting with `#` are skipped) and the file is deleted. Write it
    /// elsewhere and rename it into place, so it is never read half-written.
    #[arg(long, value_name = "PATH")]
    pub sim_fault_file: Option<PathBuf>,

    /// Result of simulated burn-in checks, unless a `burn-in:` fault says otherwise.
    #[arg(long, value_enum, value_name = "RESULT", default_value_t = SimBurnIn::Pass)]
    pub sim_burn_in: SimBurnIn,

    /// How long a simulated burn-in check takes, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    pub sim_burn_in_secs: u64,

    /// Burn-in check to run (with `sh -c`) when the control plane asks for one: exit status 0
    /// passes, and the last 4 KiB of its output go to the operator. Without it the nvml
    /// backend checks that every registered GPU is still visible, with no row remapping
    /// failure and no uncorrected ECC error. Not used by the sim backend.
    #[arg(long, value_name = "CMD")]
    pub burn_in_cmd: Option<String>,

    /// Longest a burn-in check may run before it counts as failed, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    pub burn_in_timeout_secs: u64,

    /// Seconds within which the agent, stopped with SIGTERM or SIGINT, expects to be started
    /// again (an upgrade, a restart of its service). Said in its last heartbeat: the control
    /// plane does not mark the node unreachable until then (waiting at most its grace
    /// period), and what runs on the node keeps running meanwhile.
    #[arg(long, value_name = "SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub back_within_secs: u32,

    /// Most health events kept while the control plane cannot be reached; beyond it the
    /// oldest are dropped.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_buffered_events: usize,

    /// CPU cores to report [default: from /proc/cpuinfo].
    #[arg(long, value_name = "N")]
    pub cpu_cores: Option<u32>,

    /// Host memory to report, GiB [default: from /proc/meminfo].
    #[arg(long, value_name = "GIB")]
    pub ram_gib: Option<u32>,

    /// What starts container workloads: `podman` (OCI containers, GPUs through CDI),
    /// `process` (the command as a plain process: isolates nothing, ignores the image; for
    /// development only) or `none` (container workloads are refused; bare-metal hand-offs
    /// still work) [default: podman when the podman binary is found, else process].
    #[arg(long, value_enum, value_name = "RUNTIME")]
    pub runtime: Option<RuntimeKind>,

    /// Directory of the agent's own state: one directory per instance (spec, output, sshd
    /// config, login wrapper, notice), the SSH host key, containers.conf, simulated device
    /// nodes. Workloads are found again from it after a restart.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/neocloud-agent")]
    pub state_dir: PathBuf,

    /// Host name or address tenants connect to over SSH, as reported in each workload's
    /// access [default: the registered host name].
    #[arg(long, value_name = "HOST")]
    pub ssh_host: Option<String>,

    /// Address the per-instance SSH servers listen on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    pub ssh_listen: std::net::IpAddr,

    /// TCP ports for the per-instance SSH servers (one port per running instance).
    #[arg(long, value_name = "FIRST-LAST", default_value = "2200-2299")]
    pub ssh_ports: PortRange,

    /// The OpenSSH server binary (Debian: openssh-server).
    #[arg(long, value_name = "PATH", default_value = "/usr/sbin/sshd")]
    pub sshd: PathBuf,

    /// OCI runtime podman starts containers with (`podman --runtime`) [default: runc when
    /// it is installed, else podman's default].
    #[arg(long, value_name = "NAME")]
    pub oci_runtime: Option<String>,

    /// containers.conf for podman [default: one the agent writes in the state directory,
    /// dropping podman's default ulimits].
    #[arg(long, value_name = "PATH")]
    pub containers_conf: Option<PathBuf>,

    /// Where CDI specs are read by podman; the sim backend writes the spec of its GPUs here
    /// (`neocloud-sim-<host>.json`).
    #[arg(long, value_name = "DIR", default_value = "/var/run/cdi")]
    pub cdi_dir: PathBuf,

    /// CDI kind of the GPUs (`vendor/class`) [default: nvidia.com/gpu with NVML, as
    /// `nvidia-ctk cdi generate` writes it; sim.neocloud.dev/<host> with the sim backend].
    #[arg(long, value_name = "KIND")]
    pub cdi_kind: Option<String>,

    /// Whether podman may pull an image that is not on the node: `missing` pulls it (a
    /// failed pull fails the workload), `never` fails the workload at once.
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,

    /// The podman binary.
    #[arg(long, value_name = "PATH", default_value = "podman")]
    pub podman: String,

    /// Learn what to run from heartbeat answers only, without holding a long poll
    /// (`GET /v1/agent/workloads`) open: for networks whose proxies cut requests that wait.
    /// Launches and terminates then reach the node at its next heartbeat.
    #[arg(long)]
    pub no_long_poll: bool,
}

/// Runs the agent until SIGTERM or SIGINT, then sends a last heartbeat with the events still
/// waiting and `leaving` (it expects to be back within `--back-within-secs`), waiting at
/// most 5 s for it, and returns `Ok(())`. Workloads keep running; a restarted agent adopts
/// them.
///
/// Fails at start when the backend cannot start (NVML missing), the host name cannot be
/// found, or a fault spec names a GPU that does not exist.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    run_until(args, shutdown_signal()).await
}

/// Like [`run`], but stops when `shutdown` completes instead of on a signal (for embedding
/// and tests).
pub async fn run_until(
    args: AgentArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    daemon::Daemon::start(args).await?.run(shutdown).await
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("received SIGINT");
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                () = ctrl_c => {}
                _ = term.recv() => tracing::info!("received SIGTERM"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stop the agent with SIGINT");
                ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
