//! Command-line parsing and the client subcommands (`neocloud <resource> <verb>`), one
//! module per group of resources, each calling the typed API client.

mod billing;
mod contracts;
mod fleet;
mod instances;
mod maintenance;
mod nodes;
pub(crate) mod out;
mod tenants;
mod webhooks;

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use neocloud_client::Client;

pub(crate) use out::{Cx, report, report_parse_error, write_stdout};

use crate::serve::{self, ServeArgs};

/// neocloud — the control plane of a GPU cloud.
///
/// `neocloud serve` runs the control plane; every other command is a client of its API.
/// Client settings come from flags, then the environment (NEOCLOUD_URL, NEOCLOUD_API_KEY),
/// then the config file (~/.config/neocloud/config.toml with `url` and `api_key`), then
/// ./neocloud-data/operator.key when present.
#[derive(Parser, Debug)]
#[command(
    name = "neocloud",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: Global,
}

#[derive(clap::Args, Debug)]
pub(crate) struct Global {
    /// API address of the control plane.
    #[arg(long, global = true, env = "NEOCLOUD_URL", value_name = "URL")]
    url: Option<String>,
    /// API key (sent as a Bearer token).
    #[arg(
        long,
        global = true,
        env = "NEOCLOUD_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// Output format. Under `json`, errors are JSON on standard error too.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Print only ids (names for GPU models), one per line, for scripts; API key creation
    /// prints the secret.
    #[arg(short = 'q', long, global = true)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Human-readable tables.
    Table,
    /// JSON, as the API returns it.
    Json,
}

// Parsed once per process; boxing the agent's arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane: API on --listen, database in --data-dir or --database-url.
    Serve(ServeArgs),
    /// Import fleet files, or print the demo fleet.
    #[command(subcommand)]
    Fleet(fleet::FleetCmd),
    /// The GPU model catalog.
    #[command(subcommand, name = "gpu-models")]
    GpuModels(fleet::GpuModelCmd),
    /// Sites (data centers) and their capacity.
    #[command(subcommand)]
    Sites(fleet::SiteCmd),
    /// Topology blocks: pods, leaf groups, NVLink domains.
    #[command(subcommand)]
    Blocks(fleet::BlockCmd),
    /// Nodes (servers) and their GPUs: list, show, cordon, drain, repair, health history.
    #[command(subcommand)]
    Nodes(nodes::NodeCmd),
    /// GPUs by UUID: their health history across nodes.
    #[command(subcommand)]
    Gpus(nodes::GpuCmd),
    /// The health policy: what each NVIDIA XID code does to a node.
    #[command(subcommand)]
    Health(nodes::HealthCmd),
    /// Planned maintenance: announce a window over nodes or a block; gangs move off, other
    /// work gets notice and stops when it begins; tenants hear of it.
    #[command(subcommand)]
    Maintenance(maintenance::MaintenanceCmd),
    /// Run the node agent on a GPU server: registers the node, sends heartbeats with GPU
    /// telemetry and health events (NVML, or simulated GPUs with --backend sim).
    Agent(neocloud_agent::AgentArgs),
    /// Run a heartbeat relay for the agents of a rack or a row: it passes their heartbeats
    /// on to the control plane in batches (one request for hundreds of nodes) and
    /// everything else unchanged; agents point --server at it.
    Relay(neocloud_agent::relay::RelayArgs),

    /// Tenants: customers and the operator's own lab.
    #[command(subcommand)]
    Tenants(tenants::TenantCmd),
    /// API keys.
    #[command(subcommand)]
    Keys(tenants::KeyCmd),
    /// The audit trail.
    #[command(subcommand)]
    Events(tenants::EventCmd),
    /// Webhooks: URLs subscribed to events (preemption notices, replaced gang nodes, failed
    /// instances, finalized invoices, …), with signed, retried, ordered deliveries.
    #[command(subcommand)]
    Webhooks(webhooks::WebhookCmd),
    /// Instances: GPUs a tenant runs.
    #[command(subcommand)]
    Instances(instances::InstanceCmd),
    /// SSH public keys tenants log into their instances with.
    #[command(subcommand, name = "ssh-keys")]
    SshKeys(instances::SshKeyCmd),
    /// Open a shell in a running instance over SSH (runs the system's `ssh`), or run a
    /// command there: `neocloud ssh INSTANCE -- nvidia-smi`.
    Ssh(instances::SshArgs),
    /// Print a shell completion script: `neocloud completion bash > /etc/bash_completion.d/neocloud`
    /// or `source <(neocloud completion bash)`; zsh, fish, elvish and powershell too.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Per-tenant quotas (max GPUs held at once per model and class).
    #[command(subcommand)]
    Quotas(instances::QuotaCmd),
    /// Ask what reserved capacity fits, when, and at what price.
    #[command(subcommand)]
    Quotes(contracts::QuoteCmd),
    /// Contracts: reserved capacity on the calendar.
    #[command(subcommand)]
    Contracts(contracts::ContractCmd),
    /// The price book.
    #[command(subcommand)]
    Prices(billing::PriceCmd),
    /// The usage ledger (metered to the second).
    #[command(subcommand)]
    Usage(billing::UsageCmd),
    /// Monthly invoices.
    #[command(subcommand)]
    Invoices(billing::InvoiceCmd),
    /// Reports: contracted backlog, revenue.
    #[command(subcommand)]
    Reports(billing::ReportCmd),
    /// The capacity planner: replay demand against a fleet, contracts and policy with the
    /// production allocator and billing code, and compare scenarios (docs/planning.md).
    #[command(subcommand)]
    Sim(crate::sim::SimCmd),
    /// Operator chores on the data directory: backup and restore of the SQLite database
    /// (docs/deployment.md). Runs on the server's host, not through the API.
    #[command(subcommand)]
    Admin(crate::admin::AdminCmd),
    /// Capacity per site and model: sellable, committed, allocated, fragmentation, power.
    Capacity {
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
        /// Only this GPU model.
        #[arg(long)]
        gpu_model: Option<String>,
    },
}

#[derive(serde::Deserialize, Default)]
struct ConfigFile {
    url: Option<String>,
    api_key: Option<String>,
}

fn config_file() -> Result<ConfigFile> {
    let path = match std::env::var_os("NEOCLOUD_CONFIG") {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("XDG_CONFIG_HOME") {
            Some(d) => PathBuf::from(d).join("neocloud/config.toml"),
            None => match std::env::var_os("HOME") {
                Some(h) => PathBuf::from(h).join(".config/neocloud/config.toml"),
                None => return Ok(ConfigFile::default()),
            },
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml_config(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Reads `key = "value"` lines of the config file (a TOML subset: two string keys).
fn toml_config(text: &str) -> Result<ConfigFile> {
    let mut c = ConfigFile::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| anyhow!("line {}: expected key = \"value\"", i + 1))?;
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "url" => c.url = Some(v),
            "api_key" => c.api_key = Some(v),
            other => return Err(anyhow!("line {}: unknown setting '{other}'", i + 1)),
        }
    }
    Ok(c)
}

/// The API client the global flags, the environment and the config file name.
fn client(g: &Global) -> Result<Client> {
    let file = config_file()?;
    let url = g
        .url
        .clone()
        .or(file.url)
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
    let key = g.api_key.clone().or(file.api_key).or_else(|| {
        std::fs::read_to_string("neocloud-data/operator.key")
            .ok()
            .map(|s| s.trim().to_string())
    });
    Ok(Client::new(&url, key)?)
}

impl Cli {
    /// Whether errors are to be written as JSON.
    pub fn json_errors(&self) -> bool {
        self.global.output == Output::Json
    }
}

/// Logs of a long-running daemon (the agent, the relay) to stderr, `info` unless RUST_LOG
/// says otherwise.
fn daemon_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(crate::serve::colour_on_stderr())
        .with_writer(std::io::stderr)
        .init();
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let cx = Cx::new(&cli.global);
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Agent(args) => {
            daemon_logs();
            neocloud_agent::run(args).await
        }
        Command::Relay(args) => {
            daemon_logs();
            neocloud_agent::relay::run(args).await
        }
        Command::Sim(cmd) => crate::sim::run(cmd, cx.json()),
        Command::Admin(cmd) => crate::admin::run(cmd, cx.json()).await,
        Command::Completion { shell } => {
            let mut buf: Vec<u8> = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "neocloud", &mut buf);
            out::write_stdout(&buf)
        }
        Command::Fleet(cmd) => fleet::fleet(&cx, cmd).await,
        Command::GpuModels(cmd) => fleet::gpu_models(&cx, cmd).await,
        Command::Sites(cmd) => fleet::sites(&cx, cmd).await,
        Command::Blocks(cmd) => fleet::blocks(&cx, cmd).await,
        Command::Nodes(cmd) => nodes::nodes(&cx, cmd).await,
        Command::Gpus(cmd) => nodes::gpus(&cx, cmd).await,
        Command::Health(cmd) => nodes::health(&cx, cmd).await,
        Command::Maintenance(cmd) => maintenance::maintenance(&cx, cmd).await,
        Command::Tenants(cmd) => tenants::tenants(&cx, cmd).await,
        Command::Keys(cmd) => tenants::keys(&cx, cmd).await,
        Command::Events(cmd) => tenants::events(&cx, cmd).await,
        Command::Webhooks(cmd) => webhooks::webhooks(&cx, cmd).await,
        Command::Instances(cmd) => instances::instances(&cx, cmd).await,
        Command::SshKeys(cmd) => instances::ssh_keys(&cx, cmd).await,
        Command::Ssh(args) => instances::ssh(&cx, args).await,
        Command::Quotas(cmd) => instances::quotas(&cx, cmd).await,
        Command::Quotes(cmd) => contracts::quotes(&cx, cmd).await,
        Command::Contracts(cmd) => contracts::contracts(&cx, cmd).await,
        Command::Capacity { site, gpu_model } => contracts::capacity(&cx, site, gpu_model).await,
        Command::Prices(cmd) => billing::prices(&cx, cmd).await,
        Command::Usage(cmd) => billing::usage(&cx, cmd).await,
        Command::Invoices(cmd) => billing::invoices(&cx, cmd).await,
        Command::Reports(cmd) => billing::reports(&cx, cmd).await,
    }
}
