//! `neocloud serve`: opens the database, loads the fleet, and serves the API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use neocloud_service::Service;
use neocloud_types::TenantKind;

/// Options of `neocloud serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "NEOCLOUD_LISTEN")]
    pub listen: SocketAddr,
    /// Log format on standard error: `text` (colour only on a terminal) or `json` (one
    /// object per line, for log collectors).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "NEOCLOUD_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Directory for the embedded database and the operator key.
    #[arg(long, default_value = "./neocloud-data", env = "NEOCLOUD_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Use this database instead of the embedded one (postgres://user:pass@host/db).
    #[arg(long, env = "NEOCLOUD_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Apply this fleet file at start (skipped when it is the file applied last time).
    #[arg(long, value_name = "FLEET.toml")]
    pub fleet: Option<PathBuf>,
    /// Load the Memphis demo: two sites (220,000 H100 + 72,000 GB200) and two tenants.
    #[arg(long)]
    pub demo: bool,
    /// Shrink the demo fleet by this factor (0 < F <= 1), e.g. 0.01 for a laptop.
    #[arg(long, value_name = "F", default_value_t = 1.0, requires = "demo")]
    pub demo_scale: f64,
    /// Who wins when capacity is short: the operator's lab (lab-first) or on-demand
    /// customers (cloud-first). Reserved always wins; spot always yields.
    #[arg(long, default_value = "lab-first", value_parser = parse_policy)]
    pub fleet_policy: neocloud_types::FleetPolicy,
    /// Notice, in seconds, that a preempted instance gets before its GPUs are taken.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub preemption_grace: u32,
    /// Let different tenants share a node (sub-node shapes). Off by default: an external
    /// tenant never shares a node with another tenant.
    #[arg(long)]
    pub shared_nodes: bool,
    /// Sell whole GPUs only: no shares of a GPU (`{"kind": "share"}`) and no MIG instances.
    /// By default every node takes both (MIG on GPUs that have it: A100, H100, H200, B200).
    #[arg(long)]
    pub no_gpu_slices: bool,
    /// Let slices of different tenants share one GPU (time-shared shares of one GPU, or MIG
    /// instances of one GPU). Off by default: each GPU's slices belong to one tenant.
    /// Needs --shared-nodes.
    #[arg(long, requires = "shared_nodes")]
    pub tenants_share_gpus: bool,
    /// Allow CPU-only instances (`{"kind": "cpu"}`, which name their cpu_milli) on GPU
    /// nodes. Off by default: a GPU node's CPUs and memory serve its GPUs.
    #[arg(long)]
    pub cpu_only_instances: bool,
    /// How placements are chosen: best-fit (fill used nodes first, keep whole nodes free),
    /// fragmentation (least growth of fragmentation, for fleets that sell slices),
    /// first-fit or worst-fit (baselines for measurement).
    #[arg(long, default_value = "best-fit", value_parser = parse_placement)]
    pub placement: neocloud_service::PlacementPolicy,
    /// How often node agents send heartbeats, in seconds (told to each agent).
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub heartbeat_interval: u32,
    /// Heartbeats in a row a node may miss before it is marked unreachable (it takes no new
    /// work; what runs there keeps running).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub missed_heartbeats: u32,
    /// Seconds after its last heartbeat that a silent node is marked failed (its work then
    /// fails, a contract pool gets a spare); also the longest an agent that announced a
    /// restart is waited for. 0 (or anything up to the missed-heartbeat limit) fails a
    /// silent node at that limit, skipping `unreachable`.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(0..=604_800))]
    pub unreachable_grace: u32,
    /// Idle nodes whose last burn-in is older than this run it again, in seconds
    /// (default 7 days); 0 turns re-verification off.
    #[arg(long, value_name = "SECONDS", default_value_t = 604_800)]
    pub reverify_idle: u32,
    /// A delivered instance (container or bare-metal) still provisioning after this many
    /// seconds fails: its image could not be fetched, its node's agent is not running, ...
    #[arg(long, value_name = "SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u32).range(5..=86_400))]
    pub provision_timeout: u32,
    /// A delivered instance being stopped whose agents have not confirmed the stop (and the
    /// scrub of its GPUs) after this many seconds ends anyway and its GPUs are sold again.
    #[arg(long, value_name = "SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u32).range(5..=86_400))]
    pub stop_timeout: u32,
    /// The URL other replicas reach this one at, to forward writes when it leads
    /// (default: http://LISTEN-ADDRESS). Needed when listening on 0.0.0.0 with several
    /// replicas.
    #[arg(long, value_name = "URL", env = "NEOCLOUD_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Seconds the allocator lease lasts unless its holder renews it (once a second):
    /// how long a dead leader's replicas wait before one takes over.
    #[arg(long, value_name = "SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(2..=300))]
    pub lease_ttl: u32,
    /// Seconds between a follower's reloads of the allocator from the database, when it
    /// changed (reads on a follower are at most this stale).
    #[arg(long, value_name = "SECONDS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub follower_refresh: u32,
    /// Container image of instances launched through the Lambda-Cloud-compatible API
    /// (`/lambda/api/v1`).
    #[arg(long, value_name = "IMAGE", default_value = neocloud_api::lambda::DEFAULT_IMAGE)]
    pub lambda_image: String,
    /// Command of those containers, split on whitespace (default `sleep infinity`: a Lambda
    /// instance lives until terminated); an empty string runs the image's own command.
    #[arg(long, value_name = "COMMAND")]
    pub lambda_command: Option<String>,
    /// Launch whole-node Lambda instance types (`gpu_8x_…` on 8-GPU nodes) as bare-metal
    /// accounts on their node rather than containers.
    #[arg(long)]
    pub lambda_bare_metal: bool,
    /// Let webhooks deliver to loopback and private addresses (127.0.0.0/8, 10.0.0.0/8,
    /// 192.168.0.0/16, link-local, `localhost`, …): receivers inside the operator's own
    /// network, tests and demos. Off by default, so a tenant cannot make the control plane
    /// call into the network it runs in.
    #[arg(long, env = "NEOCLOUD_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
}

fn parse_placement(s: &str) -> Result<neocloud_service::PlacementPolicy, String> {
    use neocloud_service::PlacementPolicy::*;
    match s {
        "best-fit" => Ok(BestFit),
        "first-fit" => Ok(FirstFit),
        "worst-fit" => Ok(WorstFit),
        "fragmentation" => Ok(Fragmentation),
        _ => Err(format!(
            "unknown placement policy '{s}': best-fit, fragmentation, first-fit or worst-fit"
        )),
    }
}

fn parse_policy(s: &str) -> Result<neocloud_types::FleetPolicy, String> {
    s.parse()
}

fn write_operator_key(dir: &Path, secret: &str) -> Result<PathBuf> {
    use std::io::Write;
    let path = dir.join("operator.key");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{secret}")?;
    Ok(path)
}

/// How `serve` writes its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether to colour what goes to standard error: only on a terminal, and never with
/// `NO_COLOR` set.
pub fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Runs the control plane until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into());
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => log.with_ansi(colour_on_stderr()).init(),
        LogFormat::Json => log.json().with_ansi(false).init(),
    }
    if args.demo && !(args.demo_scale > 0.0 && args.demo_scale <= 1.0) {
        bail!(
            "--demo-scale must be greater than 0 and at most 1 (got {})",
            args.demo_scale
        );
    }
    // Checked as every launch would check it, before anything starts.
    neocloud_types::Delivery::Container {
        image: args.lambda_image.clone(),
        command: Vec::new(),
        env: Default::default(),
    }
    .validate()
    .map_err(|e| anyhow::anyhow!("--lambda-image: {e}"))?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => format!(
            "sqlite://{}?mode=rwc",
            args.data_dir.join("neocloud.db").display()
        ),
    };
    // Held while serving: `admin restore` and a second `serve` on this file refuse to run.
    let _db_lock = crate::admin::lock_for_serve(&url).await?;
    let started = std::time::Instant::now();
    let config = neocloud_service::SchedulerConfig {
        fleet_policy: args.fleet_policy,
        preemption_grace_secs: i64::from(args.preemption_grace),
        shared_nodes: args.shared_nodes,
        placement: args.placement,
        sharing: neocloud_service::Sharing {
            slices: !args.no_gpu_slices,
            tenants_per_gpu: args.tenants_share_gpus,
            cpu_only: args.cpu_only_instances,
        },
        heartbeat_interval_secs: args.heartbeat_interval,
        missed_heartbeats: args.missed_heartbeats,
        unreachable_grace_secs: i64::from(args.unreachable_grace),
        reverify_idle_secs: i64::from(args.reverify_idle),
        provision_timeout_secs: i64::from(args.provision_timeout),
        stop_timeout_secs: i64::from(args.stop_timeout),
        ..Default::default()
    };
    let svc = Service::open_with(&url, config)
        .await
        .map_err(|e| crate::admin::open_error(e, &url))
        .with_context(|| format!("opening the database {}", neocloud_store_redact(&url)))?;
    raise_open_files_limit();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Leadership among replicas on one database: only the lease holder writes; the others
    // forward writes to it. A single `serve` takes the lease at once.
    let advertise = match &args.advertise_url {
        Some(u) if u.contains("://0.0.0.0") || u.contains("://[::]") => {
            bail!("--advertise-url must be an address other replicas can reach, not '{u}'")
        }
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
            u.trim_end_matches('/').to_string()
        }
        Some(u) => bail!("--advertise-url must be an http:// or https:// URL (got '{u}')"),
        // Listening on every interface: the host's name is what other replicas can reach
        // (and two hosts never advertise the same URL, which would make them take the lease
        // from each other).
        None if addr.ip().is_unspecified() => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".to_string());
            format!("http://{host}:{}", addr.port())
        }
        None => format!("http://{addr}"),
    };
    let replica = neocloud_service::ReplicaConfig {
        id: format!(
            "rep-{}-{}",
            std::process::id(),
            neocloud_types::Timestamp::now().micros()
        ),
        url: advertise.clone(),
        lease_ttl: std::time::Duration::from_secs(u64::from(args.lease_ttl)),
        refresh: std::time::Duration::from_secs(u64::from(args.follower_refresh)),
    };
    // With SQLite this process holds the database alone (the lock file): it takes the lease
    // whatever the lease says.
    svc.enable_replication(replica, _db_lock.is_some())
        .await
        .map_err(svc_err)?;
    // The lease is renewed (or taken over) every second from now on, also while the
    // start-up work below runs.
    let leasing = svc.clone();
    let lease_task = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match leasing
                .leadership_tick(neocloud_types::Timestamp::now())
                .await
            {
                Ok(neocloud_service::RoleChange::BecameLeader) => {
                    tracing::info!("took over as leader");
                }
                Ok(neocloud_service::RoleChange::SteppedDown) => {
                    tracing::warn!("lost the lease; following");
                }
                Ok(neocloud_service::RoleChange::Same) => {}
                Err(e) => {
                    tracing::warn!(error = %e.internal.unwrap_or(e.message), "leadership tick failed");
                }
            }
        }
    });
    let leader = svc.is_leader();
    if !leader {
        let at = svc
            .role()
            .and_then(|r| r.leader_url)
            .unwrap_or_else(|| "(unknown)".into());
        tracing::info!(leader = %at, "another replica leads; this one follows and forwards writes");
        if args.demo || args.fleet.is_some() {
            tracing::info!(
                "start-up writes (operator key, demo, fleet file) are the leader's; skipped here"
            );
        }
    }
    if leader {
        if let Some(secret) = svc.bootstrap_operator_key().await.map_err(svc_err)? {
            let path = write_operator_key(&args.data_dir, &secret)?;
            println!(
                "Created the operator-admin API key (shown once, also written to {}):",
                path.display()
            );
            println!("  {secret}");
        }
        if args.demo {
            let toml =
                neocloud_fleet::demo_fleet_toml(args.demo_scale).map_err(anyhow::Error::msg)?;
            if let Some(r) = svc.fleet_import_at_start(&toml).await.map_err(svc_err)? {
                tracing::info!(
                    nodes_added = r.nodes_added,
                    gpus_added = r.gpus_added,
                    "loaded demo fleet"
                );
            }
            svc.tenant_ensure("frontier-lab", "Frontier Lab", TenantKind::External)
                .await
                .map_err(svc_err)?;
            svc.tenant_ensure(
                "home-lab",
                "Home Lab (operator's own)",
                TenantKind::Internal,
            )
            .await
            .map_err(svc_err)?;
        }
        if let Some(path) = &args.fleet {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading fleet file {}", path.display()))?;
            match svc.fleet_import_at_start(&text).await {
                Ok(Some(r)) => tracing::info!(
                    file = %path.display(), nodes_added = r.nodes_added,
                    nodes_updated = r.nodes_updated, nodes_removed = r.nodes_removed,
                    "applied fleet file"),
                Ok(None) => {}
                Err(e) => {
                    // An internal error's detail is what the operator needs here: there is
                    // no other log to read when start-up fails.
                    let what = e.internal.as_deref().unwrap_or(&e.message);
                    let mut msg = format!("{}: {what}", path.display());
                    for f in e.field_errors.iter().skip(1).take(20) {
                        msg.push_str(&format!(
                            "\n  line {}, column {}: {}: {}",
                            f.line.unwrap_or(0),
                            f.column.unwrap_or(0),
                            f.field,
                            f.message
                        ));
                    }
                    bail!(msg);
                }
            }
        }
    }

    tracing::info!(%addr, startup_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "neocloud is serving");
    println!(
        "neocloud is serving on http://{addr} (API under /v1, description at /v1/openapi.json; {})",
        if svc.is_leader() {
            "leader"
        } else {
            "follower"
        }
    );
    // The scheduler's clock: preemption notices run out and queued instances start here.
    let ticker = svc.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // Only the leader runs the scheduler and the health work; a follower only
            // writes the last-used times of the keys it saw, when it heard from the agents
            // it answered, and their telemetry.
            if !ticker.is_leader() {
                if let Err(e) = ticker.flush_key_use().await {
                    tracing::debug!(error = %e.internal.unwrap_or(e.message), "could not record key use");
                }
                if let Err(e) = ticker.follower_agent_flush(ticker.now()).await {
                    tracing::warn!(error = %e.internal.unwrap_or(e.message), "could not record which agents were heard");
                }
                continue;
            }
            // A round that took seconds (the database paused) could not see what the
            // followers heard meanwhile: the health monitor waits before judging silence.
            let began = std::time::Instant::now();
            if let Err(e) = ticker.tick(ticker.now()).await {
                tracing::warn!(error = %e.internal.unwrap_or(e.message), "scheduler tick failed");
            }
            if began.elapsed() > std::time::Duration::from_secs(2) {
                ticker.health_stalled(began.elapsed());
            }
            let began = std::time::Instant::now();
            if let Err(e) = ticker.health_tick(ticker.now()).await {
                tracing::warn!(error = %e.internal.unwrap_or(e.message), "health tick failed");
            }
            if began.elapsed() > std::time::Duration::from_secs(2) {
                ticker.health_stalled(began.elapsed());
            }
        }
    });
    // Webhooks: the dispatcher delivers while this replica leads.
    svc.set_webhook_allow_private(args.webhook_allow_private);
    neocloud_api::webhooks::spawn(svc.clone(), neocloud_api::DispatcherConfig::default());
    let lambda = neocloud_api::LambdaConfig {
        image: args.lambda_image.clone(),
        command: match &args.lambda_command {
            Some(c) => c.split_whitespace().map(str::to_string).collect(),
            None => neocloud_api::LambdaConfig::default().command,
        },
        bare_metal_whole_nodes: args.lambda_bare_metal,
    };
    neocloud_api::serve_with(listener, svc.clone(), lambda, shutdown_signal()).await?;
    if svc.is_leader()
        && let Err(e) = svc.health_flush(svc.now(), true).await
    {
        tracing::warn!(error = %e.internal.unwrap_or(e.message), "could not write the last telemetry");
    }
    // Hand the lease over now rather than make the other replicas wait for it to expire
    // (and stop renewing it first, so no renewal in flight takes it back).
    lease_task.abort();
    let _ = lease_task.await;
    if let Err(e) = svc.resign().await {
        tracing::warn!(error = %e.internal.unwrap_or(e.message), "could not give up the lease");
    }
    tracing::info!("stopped");
    Ok(())
}

fn neocloud_store_redact(url: &str) -> String {
    neocloud_service::redact_database_url(url)
}

fn svc_err(e: neocloud_service::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", e.internal.unwrap_or(e.message))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Open files (connections among them) a server of a large fleet needs at least: each agent
/// keeps a connection open, and 125,000 nodes over three replicas are 42,000 each.
const OPEN_FILES_WANTED: u64 = 65_536;

/// Raises the soft limit on open files to the hard limit. The usual soft limit (1,024) is
/// below what one replica's agents need; past it new connections are refused. Warns when
/// even the hard limit is below [`OPEN_FILES_WANTED`].
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (lim.current, lim.maximum) else {
        return; // already unlimited
    };
    let mut now = soft;
    if hard.is_none_or(|h| h > soft) {
        // An unlimited hard limit still has the kernel's ceiling (fs.nr_open): ask for that.
        let target = hard.unwrap_or(1 << 20);
        let mut want = rustix::process::Rlimit {
            current: Some(target),
            maximum: hard,
        };
        if setrlimit(Resource::Nofile, want).is_err() && hard.is_none() {
            want.current = Some(OPEN_FILES_WANTED.max(soft));
            let _ = setrlimit(Resource::Nofile, want);
        }
        now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        if now != soft {
            tracing::info!(from = soft, to = now, "raised the open-files limit");
        }
    }
    if now < OPEN_FILES_WANTED {
        tracing::warn!(
            limit = now,
            wanted = OPEN_FILES_WANTED,
            "the open-files limit is low for a large fleet (each agent keeps a connection \
             open); raise it (systemd: LimitNOFILE=, a shell: ulimit -Hn) before serving \
             thousands of nodes"
        );
    }
}
