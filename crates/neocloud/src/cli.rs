//! Command-line parsing and the client subcommands (`neocloud <resource> <verb>`).

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Body, Client};
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
struct Global {
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
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
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
    Fleet(FleetCmd),
    /// The GPU model catalog.
    #[command(subcommand, name = "gpu-models")]
    GpuModels(GpuModelCmd),
    /// Sites (data centers) and their capacity.
    #[command(subcommand)]
    Sites(SiteCmd),
    /// Topology blocks: pods, leaf groups, NVLink domains.
    #[command(subcommand)]
    Blocks(BlockCmd),
    /// Nodes (servers) and their GPUs: list, show, cordon, drain, repair, health history.
    #[command(subcommand)]
    Nodes(NodeCmd),
    /// GPUs by UUID: their health history across nodes.
    #[command(subcommand)]
    Gpus(GpuCmd),
    /// The health policy: what each NVIDIA XID code does to a node.
    #[command(subcommand)]
    Health(HealthCmd),
    /// Run the node agent on a GPU server: registers the node, sends heartbeats with GPU
    /// telemetry and health events (NVML, or simulated GPUs with --backend sim).
    Agent(neocloud_agent::AgentArgs),

    /// Tenants: customers and the operator's own lab.
    #[command(subcommand)]
    Tenants(TenantCmd),
    /// API keys.
    #[command(subcommand)]
    Keys(KeyCmd),
    /// The audit trail.
    #[command(subcommand)]
    Events(EventCmd),
    /// Instances: GPUs a tenant runs.
    #[command(subcommand)]
    Instances(InstanceCmd),
    /// SSH public keys tenants log into their instances with.
    #[command(subcommand, name = "ssh-keys")]
    SshKeys(SshKeyCmd),
    /// Open a shell in a running instance over SSH (runs the system's `ssh`), or run a
    /// command there: `neocloud ssh INSTANCE -- nvidia-smi`.
    Ssh {
        /// Instance id.
        instance: String,
        /// The private key to log in with (passed to ssh -i).
        #[arg(long, short = 'i', value_name = "FILE")]
        identity: Option<PathBuf>,
        /// An ssh option, NAME=VALUE, passed as `ssh -o NAME=VALUE` (repeatable), e.g.
        /// StrictHostKeyChecking=accept-new.
        #[arg(long = "ssh-option", value_name = "NAME=VALUE")]
        ssh_options: Vec<String>,
        /// Print the ssh command instead of running it.
        #[arg(long)]
        print: bool,
        /// A command to run instead of a shell, after `--`.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Per-tenant quotas (max GPUs held at once per model and class).
    #[command(subcommand)]
    Quotas(QuotaCmd),
    /// Ask what reserved capacity fits, when, and at what price.
    #[command(subcommand)]
    Quotes(QuoteCmd),
    /// Contracts: reserved capacity on the calendar.
    #[command(subcommand)]
    Contracts(ContractCmd),
    /// The price book.
    #[command(subcommand)]
    Prices(PriceCmd),
    /// The usage ledger (metered to the second).
    #[command(subcommand)]
    Usage(UsageCmd),
    /// Monthly invoices.
    #[command(subcommand)]
    Invoices(InvoiceCmd),
    /// Reports: contracted backlog, revenue.
    #[command(subcommand)]
    Reports(ReportCmd),
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

/// Terms of a quote or a contract.
#[derive(clap::Args, Debug)]
struct TermsArgs {
    /// Tenant id or name.
    #[arg(long)]
    tenant: Option<String>,
    /// GPU model.
    #[arg(long)]
    gpu_model: String,
    /// GPUs (a multiple of the model's GPUs per node).
    #[arg(long)]
    gpus: u32,
    /// Start, RFC 3339 (e.g. 2027-01-01T00:00:00Z), or `now`.
    #[arg(long, default_value = "now")]
    start: String,
    /// End, RFC 3339; or give --years.
    #[arg(long, conflicts_with = "years")]
    end: Option<String>,
    /// Length of the term in calendar years: it ends on the same date and time (UTC).
    #[arg(long)]
    years: Option<u32>,
    /// Site id or name.
    #[arg(long)]
    site: Option<String>,
    /// Keep the pool in one block of this level: nvlink_domain, leaf_group or pod.
    #[arg(long)]
    single_block: Option<String>,
    /// Availability promised, percent (default 99.5).
    #[arg(long)]
    sla: Option<String>,
}

impl TermsArgs {
    fn body(&self) -> Result<Value> {
        let now = neocloud_types::Timestamp::now();
        // Whole seconds, as the server counts a term.
        let start: neocloud_types::Timestamp = if self.start == "now" {
            now.floor_to_second()
        } else {
            self.start.parse().map_err(|e| anyhow!("--start: {e}"))?
        };
        let end: neocloud_types::Timestamp = match (&self.end, self.years) {
            (Some(e), _) => e.parse().map_err(|e| anyhow!("--end: {e}"))?,
            (None, Some(y)) => i32::try_from(y)
                .ok()
                .and_then(|y| y.checked_mul(12))
                .and_then(|m| start.plus_months(m))
                .ok_or_else(|| anyhow!("--years {y} is too long"))?,
            (None, None) => return Err(anyhow!("give --end or --years")),
        };
        Ok(json!({
            "tenant_id": self.tenant, "gpu_model": self.gpu_model, "gpu_count": self.gpus,
            "start_at": start.to_string(), "end_at": end.to_string(), "site": self.site,
            "single_block": self.single_block, "sla_percent": self.sla,
        }))
    }
}

#[derive(Subcommand, Debug)]
enum PriceCmd {
    /// List the price book.
    List {
        /// Only this GPU model.
        #[arg(long)]
        gpu_model: Option<String>,
    },
    /// Add a price, effective now or later (operator-admin).
    Set {
        /// GPU model.
        #[arg(long)]
        gpu_model: String,
        /// on-demand, reserved-lt-1y, reserved-1-3y, reserved-ge-3y, spot-floor,
        /// spot-ceiling or internal-shadow.
        #[arg(long)]
        kind: String,
        /// US dollars per GPU-hour, e.g. 2.85.
        #[arg(long)]
        price: String,
        /// Site (all sites by default).
        #[arg(long)]
        site: Option<String>,
        /// When it takes effect, RFC 3339 (now by default).
        #[arg(long)]
        effective_from: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ReportCmd {
    /// Remaining committed value of signed and active contracts, by year.
    Backlog,
    /// Utilization by site, model and class for a month.
    Utilization {
        /// Month, YYYY-MM.
        #[arg(long)]
        month: String,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Power by site now: allocated vs budget, energy cost per hour.
    Power,
    /// Gross margin per site for a month: revenue − energy cost.
    Margin {
        /// Month, YYYY-MM.
        #[arg(long)]
        month: String,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Revenue by month, tenant, class and site.
    Revenue {
        /// First month, YYYY-MM.
        #[arg(long)]
        from: String,
        /// Last month, YYYY-MM.
        #[arg(long)]
        to: String,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Subcommand, Debug)]
enum InvoiceCmd {
    /// List invoices.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show an invoice and its lines.
    Show { id: String },
    /// Generate (or regenerate) a draft invoice (operator-admin).
    Generate {
        /// Tenant id or name.
        #[arg(long)]
        tenant: String,
        /// Month, YYYY-MM.
        #[arg(long)]
        month: String,
    },
    /// Finalize an invoice of a month that is over.
    Finalize { id: String },
}

#[derive(Subcommand, Debug)]
enum UsageCmd {
    /// List metered usage.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this month, YYYY-MM.
        #[arg(long)]
        month: Option<String>,
        /// Only this instance's.
        #[arg(long)]
        instance: Option<String>,
        /// Only this class.
        #[arg(long)]
        class: Option<String>,
        /// Records to show (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print CSV (for spreadsheets) instead of a table.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Subcommand, Debug)]
enum QuoteCmd {
    /// Quote reserved capacity.
    Create(TermsArgs),
}

#[derive(Subcommand, Debug)]
enum ContractCmd {
    /// Sign a contract (re-checked atomically against the calendar).
    Sign(TermsArgs),
    /// List contracts.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show a contract.
    Show { id: String },
    /// Cancel a contract.
    Cancel { id: String },
    /// Outages of a contract's reserved capacity (failed pool nodes and their replacement).
    Outages { id: String },
    /// Amend a contract: more GPUs and/or a later end (a renewal).
    Amend {
        /// Contract id.
        id: String,
        /// New GPU count (at least the current one).
        #[arg(long)]
        gpus: Option<u32>,
        /// New end, RFC 3339 (at or after the current end).
        #[arg(long)]
        end: Option<String>,
    },
}

/// Options of `instances launch`.
#[derive(clap::Args, Debug)]
struct LaunchArgs {
    /// GPU model, e.g. H100-SXM-80GB (for --cpu-only: the model of the nodes to run on).
    #[arg(long)]
    gpu_model: String,
    /// GPUs in one node: 1, 2, 4 or 8.
    #[arg(long, conflicts_with_all = ["nodes", "share", "mig", "cpu_only"])]
    gpus: Option<u32>,
    /// A gang of this many whole nodes.
    #[arg(long, conflicts_with_all = ["share", "mig", "cpu_only", "cpu", "memory"])]
    nodes: Option<u32>,
    /// A share of one GPU, time-sliced with other shares, in thousandths: 1 to 1000
    /// (250 = a quarter of a GPU). Billed as that part of a GPU-hour.
    #[arg(long, value_name = "MILLI", conflicts_with_all = ["mig", "cpu_only"])]
    share: Option<u32>,
    /// A MIG instance of one GPU, by profile, e.g. 1g.10gb or 3g.40gb on an 80 GB GPU,
    /// 1g.18gb on an H200. Billed as its compute slices out of 7 of a GPU-hour.
    #[arg(long, value_name = "PROFILE", conflicts_with = "cpu_only")]
    mig: Option<String>,
    /// No GPU: CPU cores and memory of one node only (needs --cpu; the operator must
    /// allow CPU-only instances). Not billed per GPU-hour.
    #[arg(long, requires = "cpu")]
    cpu_only: bool,
    /// CPU cores to hold on the node, e.g. 4 or 0.5 (default: in proportion to the GPUs).
    #[arg(long, value_name = "CORES", value_parser = parse_cores)]
    cpu: Option<u64>,
    /// Memory to hold on the node: 64G (GiB, also a bare number), 512M (MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    memory: Option<u64>,
    /// For gangs: nvlink_domain, leaf_group, pod or site (default).
    #[arg(long, requires = "nodes")]
    gang_level: Option<String>,
    /// on-demand (default), spot, internal or reserved.
    #[arg(long, default_value = "on-demand")]
    class: String,
    /// Tenant (operator keys must name one).
    #[arg(long)]
    tenant: Option<String>,
    /// Site to run in.
    #[arg(long)]
    site: Option<String>,
    /// Contract whose reserved pool to use (class reserved).
    #[arg(long)]
    contract: Option<String>,
    /// Wait up to this many seconds for capacity instead of failing at once.
    #[arg(long)]
    wait: Option<u32>,
    /// A label.
    #[arg(long)]
    name: Option<String>,
    /// Makes a retry safe: the same key never launches twice.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Run this OCI image in a container with the instance's GPUs, CPU and memory (shapes
    /// within one node), e.g. docker.io/library/ubuntu:24.04 or an image on the node.
    #[arg(long, value_name = "IMAGE", conflicts_with = "bare_metal")]
    image: Option<String>,
    /// Hand the whole nodes over to the tenant: an account with its SSH keys on each (gangs
    /// of --nodes).
    #[arg(long, requires = "nodes")]
    bare_metal: bool,
    /// For --bare-metal: a script run once on each node as the tenant's account.
    #[arg(long, value_name = "FILE", requires = "bare_metal")]
    user_data_file: Option<PathBuf>,
    /// For --image: an environment variable of the workload, NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", requires = "image")]
    env: Vec<String>,
    /// One of the tenant's SSH keys (see `neocloud ssh-keys`) allowed to log in
    /// (repeatable).
    #[arg(long = "ssh-key", value_name = "NAME")]
    ssh_keys: Vec<String>,
    /// For --image: the command and its arguments, after `--` (default: the image's own).
    #[arg(last = true, value_name = "COMMAND", requires = "image")]
    command: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum InstanceCmd {
    /// Launch an instance: GPUs in one node (--gpus), a gang of whole nodes (--nodes), a
    /// share of one GPU (--share), a MIG instance (--mig) or no GPU (--cpu-only).
    Launch(Box<LaunchArgs>),
    /// List instances, newest first.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Only in this state (pending, running, preempting, terminated, …).
        #[arg(long)]
        state: Option<String>,
        /// Instances to show (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one instance and where it runs.
    Show { id: String },
    /// Terminate an instance. A delivered one is `stopping` until its agents confirm that
    /// its workload is stopped and its GPUs scrubbed.
    Terminate { id: String },
    /// Show a delivered instance's output (its container's stdout and stderr).
    Logs {
        /// Instance id.
        id: String,
        /// Keep printing new output until the instance ends (Ctrl-C stops).
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SshKeyCmd {
    /// Add an SSH public key to the tenant.
    Add {
        /// Name to give it at launch (--ssh-key NAME).
        name: String,
        /// The public key file, e.g. ~/.ssh/id_ed25519.pub; `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        public_key_file: PathBuf,
        /// Tenant (operator keys must name one).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List the tenant's SSH keys.
    List {
        /// Only this tenant's (operator keys).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Delete an SSH key by name or id; running instances keep the keys they were given.
    Delete {
        /// Key name or id.
        name: String,
        /// Tenant (operator keys must name one).
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum QuotaCmd {
    /// List quotas.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Set a quota (operator-admin); --max-gpus none removes it.
    Set {
        /// Tenant id or name.
        #[arg(long)]
        tenant: String,
        /// GPU model.
        #[arg(long)]
        gpu_model: String,
        /// Class: reserved, internal, on-demand or spot.
        #[arg(long)]
        class: String,
        /// Most GPUs held at once, or `none`.
        #[arg(long)]
        max_gpus: String,
    },
}

#[derive(Subcommand, Debug)]
enum FleetCmd {
    /// Validate and apply a fleet file (see docs/fleet-file.md).
    Import {
        /// The fleet file (TOML); `-` reads standard input.
        file: PathBuf,
        /// Only report what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the Memphis demo fleet as a fleet file.
    Demo {
        /// Shrink factor, 0 < F <= 1.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
}

#[derive(Subcommand, Debug)]
enum GpuModelCmd {
    /// List the catalog.
    List,
    /// Show one model.
    Show { name: String },
    /// Add a model (operator-admin).
    Create {
        /// Catalog name, e.g. MI325X.
        name: String,
        /// Maker.
        #[arg(long)]
        vendor: Option<String>,
        /// Device memory, GiB.
        #[arg(long)]
        memory_gib: u32,
        /// Power at full load, watts.
        #[arg(long)]
        tdp_watts: u32,
        /// Makes a retry safe: the same key never creates twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum SiteCmd {
    /// List sites with node, GPU and power totals.
    List,
    /// Show one site (id or name).
    Show { site: String },
    /// Cap a site's power below its budget (operator-admin); new placements stay under it.
    PowerCap {
        /// Site id or name.
        site: String,
        /// Facility watts, or `none` to remove the cap.
        #[arg(long)]
        watts: String,
    },
}

#[derive(Subcommand, Debug)]
enum BlockCmd {
    /// List blocks.
    List {
        /// Only blocks of this site.
        #[arg(long)]
        site: Option<String>,
    },
    /// Show one block.
    Show { id: String },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// List nodes (by name), filtered.
    List {
        /// Only nodes of this site.
        #[arg(long)]
        site: Option<String>,
        /// Only nodes inside this block (id, name or path within --site).
        #[arg(long)]
        block: Option<String>,
        /// Only nodes in this state (available, allocated, cordoned, draining, …).
        #[arg(long)]
        state: Option<String>,
        /// Only nodes with this GPU model.
        #[arg(long)]
        gpu_model: Option<String>,
        /// Nodes per page (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this cursor (from a previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
    },
    /// Show one node (id or name) with its GPUs and their latest telemetry.
    Show { node: String },
    /// Take a node out of new placements; what runs there stays (operator-admin).
    Cordon {
        /// Node id or name.
        node: String,
        /// Why (kept in the event log and the node's state reason).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Return a cordoned or draining node to service (operator-admin).
    Uncordon {
        /// Node id or name.
        node: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Drain a node: no new work; when its work has ended it goes to maintenance, and a
    /// contract pool it belongs to gets a spare (operator-admin).
    Drain {
        /// Node id or name.
        node: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Mark a repair done: the node runs its burn-in check and returns to service when it
    /// passes (operator-admin).
    RepairComplete {
        /// Node id or name.
        node: String,
        /// What was repaired.
        #[arg(long)]
        reason: Option<String>,
    },
    /// A node's health history: faults, what the policy did, state changes (newest first).
    Health {
        /// Node id or name.
        node: String,
        /// Entries to show (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
enum GpuCmd {
    /// A GPU's history by UUID, across every node it has been in (repairs, RMA).
    History {
        /// GPU UUID (GPU-…).
        uuid: String,
        /// Entries to show (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
enum HealthCmd {
    /// The XID policy: what each code does (built-in rules and overrides).
    Rules,
    /// Override what an XID code does (operator-admin).
    SetRule {
        /// XID code, e.g. 31.
        code: u32,
        /// ignore, record, drain or fail.
        #[arg(long)]
        action: String,
        /// Why.
        #[arg(long)]
        note: Option<String>,
    },
    /// Remove an override: the built-in rule applies again (operator-admin).
    ResetRule {
        /// XID code.
        code: u32,
    },
}

#[derive(Subcommand, Debug)]
enum TenantCmd {
    /// List tenants.
    List,
    /// Show one tenant (id or name).
    Show { tenant: String },
    /// Create a tenant (operator-admin).
    Create {
        /// Unique name: lowercase letters, digits and '-'.
        name: String,
        /// Display name.
        #[arg(long)]
        display_name: Option<String>,
        /// internal (the operator's lab) or external (a customer).
        #[arg(long, default_value = "external")]
        kind: String,
        /// Credit limit in US dollars, e.g. 250000.
        #[arg(long)]
        credit_limit: Option<String>,
        /// Makes a retry safe: the same key never creates twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Change a tenant.
    Update {
        /// Tenant id or name.
        tenant: String,
        /// New display name.
        #[arg(long)]
        display_name: Option<String>,
        /// active or suspended.
        #[arg(long)]
        status: Option<String>,
        /// New credit limit in US dollars; `none` removes it.
        #[arg(long)]
        credit_limit: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// List keys (never their secrets).
    List {
        /// Only keys of this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one key.
    Show { id: String },
    /// Create a key; its secret is printed once.
    Create {
        /// Label, e.g. ci-pipeline.
        #[arg(long)]
        name: String,
        /// operator-admin, operator-viewer, tenant-admin, tenant-member or node-agent.
        #[arg(long)]
        role: String,
        /// Tenant id or name (tenant roles).
        #[arg(long)]
        tenant: Option<String>,
        /// Node id or name a node-agent key speaks for. A node-agent key without --node is
        /// an enrollment key: agents register with it and each gets a key of its own node.
        #[arg(long)]
        node: Option<String>,
        /// Expiry, RFC 3339 (e.g. 2027-01-01T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
        /// Makes a retry safe: the same key never creates twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Revoke a key at once.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
enum EventCmd {
    /// List audit events, newest first.
    List {
        /// Only events of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only events about this resource id.
        #[arg(long)]
        resource: Option<String>,
        /// Only actions starting with this, e.g. `tenant.`.
        #[arg(long)]
        action: Option<String>,
        /// Events to show (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
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
    Client::new(&url, key)
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Agent(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            neocloud_agent::run(args).await
        }
        Command::Sim(cmd) => crate::sim::run(cmd, g.output == Output::Json),
        Command::Admin(cmd) => crate::admin::run(cmd, g.output == Output::Json).await,
        Command::Fleet(FleetCmd::Demo { scale }) => {
            print!(
                "{}",
                neocloud_fleet::demo_fleet_toml(scale).map_err(anyhow::Error::msg)?
            );
            Ok(())
        }
        Command::Fleet(FleetCmd::Import { file, dry_run }) => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let v = client(g)?
                .call(
                    Method::POST,
                    "/v1/fleet/import",
                    &[("dry_run", dry_run.to_string())],
                    Some(Body::Toml(text)),
                    None,
                )
                .await?;
            show(g, &v, |v| {
                let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                let verb = if dry_run { "would change" } else { "changed" };
                println!(
                    "fleet import {verb}: sites +{} ~{}, blocks +{} ~{} -{}, nodes +{} ~{} -{} ({} unchanged), GPUs +{} -{}, GPU models +{} ~{}",
                    n("sites_added"),
                    n("sites_updated"),
                    n("blocks_added"),
                    n("blocks_updated"),
                    n("blocks_removed"),
                    n("nodes_added"),
                    n("nodes_updated"),
                    n("nodes_removed"),
                    n("nodes_unchanged"),
                    n("gpus_added"),
                    n("gpus_removed"),
                    n("gpu_models_added"),
                    n("gpu_models_updated")
                );
            })
        }
        Command::GpuModels(cmd) => gpu_models(g, cmd).await,
        Command::Sites(cmd) => sites(g, cmd).await,
        Command::Blocks(cmd) => blocks(g, cmd).await,
        Command::Nodes(cmd) => nodes(g, cmd).await,
        Command::Gpus(cmd) => gpus(g, cmd).await,
        Command::Health(cmd) => health(g, cmd).await,
        Command::Tenants(cmd) => tenants(g, cmd).await,
        Command::Keys(cmd) => keys(g, cmd).await,
        Command::Events(cmd) => events(g, cmd).await,
        Command::Instances(cmd) => instances(g, cmd).await,
        Command::SshKeys(cmd) => ssh_keys(g, cmd).await,
        Command::Ssh {
            instance,
            identity,
            ssh_options,
            print,
            command,
        } => ssh(g, &instance, identity, &ssh_options, print, command).await,
        Command::Quotas(cmd) => quotas(g, cmd).await,
        Command::Quotes(cmd) => quotes(g, cmd).await,
        Command::Contracts(cmd) => contracts(g, cmd).await,
        Command::Capacity { site, gpu_model } => capacity(g, site, gpu_model).await,
        Command::Prices(cmd) => prices(g, cmd).await,
        Command::Usage(cmd) => usage(g, cmd).await,
        Command::Invoices(cmd) => invoices(g, cmd).await,
        Command::Reports(cmd) => reports(g, cmd).await,
    }
}

/// Prints JSON when asked, else the table that `human` prints.
fn show(g: &Global, v: &Value, human: impl FnOnce(&Value)) -> Result<()> {
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Table => human(v),
    }
    Ok(())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A table column: its header and how to render a cell from an item.
type Column<'a> = (&'a str, &'a dyn Fn(&Value) -> String);

/// Prints `items` as a table with the given (header, field) columns.
fn table(items: &[Value], cols: &[Column]) {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(cols.iter().map(|(h, _)| *h));
    for item in items {
        t.add_row(cols.iter().map(|(_, f)| f(item)));
    }
    println!("{t}");
}

fn field(name: &'static str) -> impl Fn(&Value) -> String {
    move |v: &Value| cell(v.get(name).unwrap_or(&Value::Null))
}

fn items(v: &Value) -> &[Value] {
    v.get("items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Prints one object as `key: value` lines.
fn record(v: &Value) {
    if let Some(obj) = v.as_object() {
        let width = obj.keys().map(String::len).max().unwrap_or(0);
        for (k, val) in obj {
            if val.is_array()
                && val
                    .as_array()
                    .is_some_and(|a| a.iter().any(Value::is_object))
            {
                continue;
            }
            println!("{k:width$}  {}", cell(val));
        }
    }
}

fn mw(watts: &Value) -> String {
    match watts.as_i64() {
        Some(w) => format!("{:.1}", w as f64 / 1e6),
        None => "-".into(),
    }
}

async fn gpu_models(g: &Global, cmd: GpuModelCmd) -> Result<()> {
    let c = client(g)?;
    let cols: &[Column] = &[
        ("NAME", &field("name")),
        ("VENDOR", &field("vendor")),
        ("MEMORY GiB", &field("memory_gib")),
        ("TDP W", &field("tdp_watts")),
        ("BUILT-IN", &field("builtin")),
    ];
    match cmd {
        GpuModelCmd::List => {
            let v = c
                .call(Method::GET, "/v1/gpu-models", &[], None, None)
                .await?;
            show(g, &v, |v| table(items(v), cols))
        }
        GpuModelCmd::Show { name } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/gpu-models/{}", enc(&name)),
                    &[],
                    None,
                    None,
                )
                .await?;
            show(g, &v, record)
        }
        GpuModelCmd::Create {
            name,
            vendor,
            memory_gib,
            tdp_watts,
            idempotency_key,
        } => {
            let body = json!({"name": name, "vendor": vendor, "memory_gib": memory_gib, "tdp_watts": tdp_watts});
            let v = c
                .call(
                    Method::POST,
                    "/v1/gpu-models",
                    &[],
                    Some(Body::Json(body)),
                    idempotency_key.as_deref(),
                )
                .await?;
            show(g, &v, record)
        }
    }
}

/// Percent-encodes a path segment.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn sites(g: &Global, cmd: SiteCmd) -> Result<()> {
    let c = client(g)?;
    let models = |v: &Value| {
        v.get("gpus_by_model")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|m| format!("{}×{}", cell(&m["gpus"]), cell(&m["gpu_model"])))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let power = |v: &Value| {
        format!(
            "{} / {}",
            mw(&v["peak_power_watts"]),
            mw(&v["power_budget_watts"])
        )
    };
    let cols: &[Column] = &[
        ("NAME", &field("name")),
        ("REGION", &field("region")),
        ("KIND", &field("kind")),
        ("NODES", &field("node_count")),
        ("GPUS", &field("gpu_count")),
        ("MODELS", &models),
        ("PEAK/BUDGET MW", &power),
    ];
    match cmd {
        SiteCmd::List => {
            let v = c.call(Method::GET, "/v1/sites", &[], None, None).await?;
            show(g, &v, |v| table(items(v), cols))
        }
        SiteCmd::PowerCap { site, watts } => {
            let w: Value = if watts == "none" {
                Value::Null
            } else {
                json!(
                    watts
                        .parse::<i64>()
                        .map_err(|_| anyhow!("--watts must be a number or `none`"))?
                )
            };
            let path = format!("/v1/sites/{}/power-cap", enc(&site));
            let v = c
                .call(
                    Method::PUT,
                    &path,
                    &[],
                    Some(Body::Json(json!({"watts": w}))),
                    None,
                )
                .await?;
            show(g, &v, record)
        }
        SiteCmd::Show { site } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/sites/{}", enc(&site)),
                    &[],
                    None,
                    None,
                )
                .await?;
            show(g, &v, |v| {
                record(v);
                println!("{:18}  {}", "gpus_by_model", models(v));
            })
        }
    }
}

async fn blocks(g: &Global, cmd: BlockCmd) -> Result<()> {
    let c = client(g)?;
    let cols: &[Column] = &[
        ("PATH", &field("path")),
        ("KIND", &field("kind")),
        ("NODES", &field("node_count")),
        ("GPUS", &field("gpu_count")),
        ("ID", &field("id")),
    ];
    match cmd {
        BlockCmd::List { site } => {
            let q: Vec<(&str, String)> = site.into_iter().map(|s| ("site", s)).collect();
            let v = c.call(Method::GET, "/v1/blocks", &q, None, None).await?;
            show(g, &v, |v| table(items(v), cols))
        }
        BlockCmd::Show { id } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/blocks/{}", enc(&id)),
                    &[],
                    None,
                    None,
                )
                .await?;
            show(g, &v, record)
        }
    }
}

async fn nodes(g: &Global, cmd: NodeCmd) -> Result<()> {
    let c = client(g)?;
    let cols: &[Column] = &[
        ("NAME", &field("name")),
        ("SITE", &field("site")),
        ("BLOCK", &field("block_path")),
        ("MODEL", &field("gpu_model")),
        ("GPUS", &field("gpu_count")),
        ("STATE", &field("state")),
    ];
    match cmd {
        NodeCmd::List {
            site,
            block,
            state,
            gpu_model,
            limit,
            cursor,
            all,
        } => {
            let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            for (k, v) in [
                ("site", site),
                ("block", block),
                ("state", state),
                ("gpu_model", gpu_model),
            ] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            let mut cursor = cursor;
            let mut all_items: Vec<Value> = Vec::new();
            let mut next;
            loop {
                let mut page_q = q.clone();
                if let Some(cur) = &cursor {
                    page_q.push(("cursor", cur.clone()));
                }
                let v = c
                    .call(Method::GET, "/v1/nodes", &page_q, None, None)
                    .await?;
                all_items.extend(items(&v).iter().cloned());
                next = v
                    .get("next_cursor")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if !all || next.is_none() {
                    break;
                }
                cursor = next.clone();
            }
            let mut v = json!({"items": all_items});
            if let Some(n) = &next {
                v["next_cursor"] = json!(n);
            }
            show(g, &v, |v| {
                table(items(v), cols);
                if let Some(n) = &next {
                    eprintln!("(more nodes: add --cursor {n}, or --all)");
                }
            })
        }
        NodeCmd::Show { node } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/nodes/{}", enc(&node)),
                    &[],
                    None,
                    None,
                )
                .await?;
            show(g, &v, |v| {
                record(v);
                if let Some(gpus) = v.get("gpus").and_then(Value::as_array) {
                    println!();
                    table(
                        gpus,
                        &[
                            ("GPU", &field("index")),
                            ("UUID", &field("uuid")),
                            ("HEALTH", &field("health")),
                            ("TEMP °C", &|v: &Value| telemetry(v, "temperature_c")),
                            ("POWER W", &|v: &Value| telemetry(v, "power_watts")),
                            ("UTIL %", &|v: &Value| telemetry(v, "utilization_pct")),
                            ("ECC UNCORR", &|v: &Value| telemetry(v, "ecc_uncorrected")),
                        ],
                    );
                }
            })
        }
        NodeCmd::Cordon { node, reason } => node_op(g, &c, &node, "cordon", reason, cols).await,
        NodeCmd::Uncordon { node, reason } => node_op(g, &c, &node, "uncordon", reason, cols).await,
        NodeCmd::Drain { node, reason } => node_op(g, &c, &node, "drain", reason, cols).await,
        NodeCmd::RepairComplete { node, reason } => {
            node_op(g, &c, &node, "repair-complete", reason, cols).await
        }
        NodeCmd::Health { node, limit } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/nodes/{}/health", enc(&node)),
                    &[("limit", limit.to_string())],
                    None,
                    None,
                )
                .await?;
            show(g, &v, health_table)
        }
    }
}

fn telemetry(v: &Value, key: &str) -> String {
    v.get("telemetry")
        .and_then(|t| t.get(key))
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

fn health_table(v: &Value) {
    let rows = v.as_array().cloned().unwrap_or_default();
    table(
        &rows,
        &[
            ("AT", &field("at")),
            ("NODE", &field("node")),
            ("GPU", &field("gpu_index")),
            ("KIND", &field("kind")),
            ("CODE", &field("code")),
            ("ACTION", &field("action")),
            ("DETAIL", &field("detail")),
        ],
    );
}

async fn node_op(
    g: &Global,
    c: &crate::client::Client,
    node: &str,
    op: &str,
    reason: Option<String>,
    cols: &[Column<'_>],
) -> Result<()> {
    let v = c
        .call(
            Method::POST,
            &format!("/v1/nodes/{}/{op}", enc(node)),
            &[],
            Some(Body::Json(json!({ "reason": reason }))),
            None,
        )
        .await?;
    show(g, &v, |v| {
        table(std::slice::from_ref(v), cols);
        if let Some(r) = v.get("state_reason").and_then(Value::as_str) {
            println!("reason: {r}");
        }
    })
}

async fn gpus(g: &Global, cmd: GpuCmd) -> Result<()> {
    let c = client(g)?;
    match cmd {
        GpuCmd::History { uuid, limit } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/gpus/{}/history", enc(&uuid)),
                    &[("limit", limit.to_string())],
                    None,
                    None,
                )
                .await?;
            show(g, &v, |v| {
                for k in ["uuid", "node", "index", "health", "failures"] {
                    println!("{k:<9} {}", field(k)(v));
                }
                println!();
                health_table(v.get("events").unwrap_or(&Value::Null));
            })
        }
    }
}

async fn health(g: &Global, cmd: HealthCmd) -> Result<()> {
    let c = client(g)?;
    let v = match cmd {
        HealthCmd::Rules => {
            c.call(Method::GET, "/v1/health/rules", &[], None, None)
                .await?
        }
        HealthCmd::SetRule { code, action, note } => {
            c.call(
                Method::PUT,
                &format!("/v1/health/rules/{code}"),
                &[],
                Some(Body::Json(json!({"action": action, "note": note}))),
                None,
            )
            .await?
        }
        HealthCmd::ResetRule { code } => {
            c.call(
                Method::DELETE,
                &format!("/v1/health/rules/{code}"),
                &[],
                None,
                None,
            )
            .await?
        }
    };
    show(g, &v, |v| {
        let rows = v.as_array().cloned().unwrap_or_default();
        table(
            &rows,
            &[
                ("XID", &field("code")),
                ("ACTION", &field("action")),
                ("SOURCE", &field("source")),
                ("MEANING", &field("meaning")),
            ],
        );
    })
}

async fn tenants(g: &Global, cmd: TenantCmd) -> Result<()> {
    let c = client(g)?;
    let cols: &[Column] = &[
        ("NAME", &field("name")),
        ("KIND", &field("kind")),
        ("STATUS", &field("status")),
        ("CREDIT LIMIT $", &field("credit_limit")),
        ("ID", &field("id")),
    ];
    match cmd {
        TenantCmd::List => {
            let v = c
                .call(
                    Method::GET,
                    "/v1/tenants",
                    &[("limit", "1000".into())],
                    None,
                    None,
                )
                .await?;
            show(g, &v, |v| table(items(v), cols))
        }
        TenantCmd::Show { tenant } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/tenants/{}", enc(&tenant)),
                    &[],
                    None,
                    None,
                )
                .await?;
            show(g, &v, record)
        }
        TenantCmd::Create {
            name,
            display_name,
            kind,
            credit_limit,
            idempotency_key,
        } => {
            let body = json!({"name": name, "display_name": display_name, "kind": kind, "credit_limit": credit_limit});
            let v = c
                .call(
                    Method::POST,
                    "/v1/tenants",
                    &[],
                    Some(Body::Json(body)),
                    idempotency_key.as_deref(),
                )
                .await?;
            show(g, &v, record)
        }
        TenantCmd::Update {
            tenant,
            display_name,
            status,
            credit_limit,
        } => {
            let mut body = json!({});
            if let Some(d) = display_name {
                body["display_name"] = json!(d);
            }
            if let Some(s) = status {
                body["status"] = json!(s);
            }
            if let Some(cl) = credit_limit {
                body["credit_limit"] = if cl == "none" { Value::Null } else { json!(cl) };
            }
            let v = c
                .call(
                    Method::PATCH,
                    &format!("/v1/tenants/{}", enc(&tenant)),
                    &[],
                    Some(Body::Json(body)),
                    None,
                )
                .await?;
            show(g, &v, record)
        }
    }
}

async fn keys(g: &Global, cmd: KeyCmd) -> Result<()> {
    let c = client(g)?;
    let cols: &[Column] = &[
        ("ID", &field("id")),
        ("NAME", &field("name")),
        ("ROLE", &field("role")),
        ("TENANT", &field("tenant_id")),
        ("PREFIX", &field("prefix")),
        ("EXPIRES", &field("expires_at")),
        ("REVOKED", &field("revoked_at")),
        ("LAST USED", &field("last_used_at")),
    ];
    match cmd {
        KeyCmd::List { tenant } => {
            let mut q: Vec<(&str, String)> = vec![("limit", "1000".into())];
            if let Some(t) = tenant {
                q.push(("tenant", t));
            }
            let v = c.call(Method::GET, "/v1/api-keys", &q, None, None).await?;
            show(g, &v, |v| table(items(v), cols))
        }
        KeyCmd::Show { id } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/api-keys/{}", enc(&id)),
                    &[],
                    None,
                    None,
                )
                .await?;
            show(g, &v, record)
        }
        KeyCmd::Create {
            name,
            role,
            tenant,
            node,
            expires_at,
            idempotency_key,
        } => {
            let body = json!({"name": name, "role": role, "tenant_id": tenant,
                              "expires_at": expires_at, "node": node});
            let v = c
                .call(
                    Method::POST,
                    "/v1/api-keys",
                    &[],
                    Some(Body::Json(body)),
                    idempotency_key.as_deref(),
                )
                .await?;
            show(g, &v, |v| {
                record(v);
                if v.get("secret").is_some_and(|s| !s.is_null()) {
                    eprintln!("\nStore the secret now: it is not shown again.");
                }
            })
        }
        KeyCmd::Revoke { id } => {
            let v = c
                .call(
                    Method::DELETE,
                    &format!("/v1/api-keys/{}", enc(&id)),
                    &[],
                    None,
                    None,
                )
                .await?;
            show(g, &v, record)
        }
    }
}

async fn events(g: &Global, cmd: EventCmd) -> Result<()> {
    let c = client(g)?;
    let EventCmd::List {
        tenant,
        resource,
        action,
        limit,
    } = cmd;
    let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
    for (k, v) in [
        ("tenant", tenant),
        ("resource_id", resource),
        ("action", action),
    ] {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    let v = c.call(Method::GET, "/v1/events", &q, None, None).await?;
    show(g, &v, |v| {
        table(
            items(v),
            &[
                ("AT", &field("at")),
                ("ACTION", &field("action")),
                ("RESOURCE", &field("resource_id")),
                ("TENANT", &field("tenant_id")),
                ("ACTOR KEY", &field("actor_key_id")),
            ],
        )
    })
}

fn placement_cell(v: &Value) -> String {
    v.get("placement")
        .and_then(Value::as_array)
        .map(|a| {
            let nodes: Vec<String> = a
                .iter()
                .map(|p| {
                    let gpus = p["gpus"].as_array().map(|g| g.len()).unwrap_or(0);
                    format!("{}[{}]", cell(&p["node"]), gpus)
                })
                .collect();
            if nodes.len() > 3 {
                format!("{} … (+{} nodes)", nodes[..3].join(" "), nodes.len() - 3)
            } else {
                nodes.join(" ")
            }
        })
        .unwrap_or_default()
}

fn shape_cell(v: &Value) -> String {
    let s = &v["shape"];
    match s["kind"].as_str() {
        Some("gpus") => format!("{} GPU", cell(&s["gpus"])),
        Some("nodes") => format!("{} nodes in {}", cell(&s["count"]), cell(&s["level"])),
        Some("share") => match s["milli"].as_u64() {
            Some(m) => format!("{}.{:03} GPU", m / 1000, m % 1000),
            None => "-".into(),
        },
        Some("mig") => format!("MIG {}", cell(&s["profile"])),
        Some("cpu") => "CPU only".into(),
        _ => "-".into(),
    }
}

/// CPU held on a node, in cores.
fn cores_cell(p: &Value) -> String {
    match p["cpu_milli"].as_u64() {
        Some(m) if m % 1000 == 0 => format!("{}", m / 1000),
        Some(m) => format!("{}.{:03}", m / 1000, m % 1000),
        None => "-".into(),
    }
}

/// `--cpu`: cores, up to three decimals, into thousandths of a core.
fn parse_cores(s: &str) -> std::result::Result<u64, String> {
    let bad = || format!("'{s}' is not a number of CPU cores (e.g. 4 or 0.5)");
    let (whole, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if frac.len() > 3
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || (whole.is_empty() && frac.is_empty())
    {
        return Err(bad());
    }
    let w: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let f: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    let milli = w
        .checked_mul(1000)
        .and_then(|m| m.checked_add(f))
        .ok_or_else(bad)?;
    if milli == 0 {
        return Err("--cpu must be more than 0 cores".into());
    }
    Ok(milli)
}

/// `--memory`: 64G or 64GiB or 64 (GiB), 512M or 512MiB (MiB), into MiB.
fn parse_memory(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("GiB").or_else(|| t.strip_suffix('G')) {
        (n, 1024)
    } else if let Some(n) = t.strip_suffix("MiB").or_else(|| t.strip_suffix('M')) {
        (n, 1)
    } else {
        (t, 1024)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a memory size (e.g. 64G or 512M)"))?;
    match n.checked_mul(mult) {
        Some(0) => Err("--memory must be more than 0".into()),
        Some(m) => Ok(m),
        None => Err(format!("'{s}' is too large")),
    }
}

async fn instances(g: &Global, cmd: InstanceCmd) -> Result<()> {
    let c = client(g)?;
    let cols: &[Column] = &[
        ("ID", &field("id")),
        ("CLASS", &field("class")),
        ("MODEL", &field("gpu_model")),
        ("SHAPE", &shape_cell),
        ("STATE", &field("state")),
        ("PLACEMENT", &placement_cell),
        ("REASON", &field("reason")),
    ];
    match cmd {
        InstanceCmd::Launch(args) => {
            let LaunchArgs {
                gpu_model,
                gpus,
                nodes,
                gang_level,
                share,
                mig,
                cpu_only,
                cpu,
                memory,
                class,
                tenant,
                site,
                contract,
                wait,
                name,
                idempotency_key,
                image,
                bare_metal,
                user_data_file,
                env,
                ssh_keys,
                command,
            } = *args;
            let shape = match (share, mig, cpu_only) {
                (Some(milli), _, _) => json!({"kind": "share", "milli": milli}),
                (_, Some(profile), _) => json!({"kind": "mig", "profile": profile}),
                (_, _, true) => json!({"kind": "cpu"}),
                _ => Value::Null,
            };
            let mut body = json!({
                "gpu_model": gpu_model, "gpus": gpus, "nodes": nodes, "gang_level": gang_level,
                "class": class, "tenant_id": tenant, "site": site, "contract_id": contract,
                "wait_seconds": wait, "name": name, "cpu_milli": cpu, "memory_mib": memory,
            });
            if !shape.is_null() {
                body["shape"] = shape;
            }
            if let Some(image) = image {
                let mut vars = serde_json::Map::new();
                for e in env {
                    let Some((k, v)) = e.split_once('=') else {
                        bail!("--env takes NAME=VALUE (got '{e}')");
                    };
                    vars.insert(k.to_string(), Value::String(v.to_string()));
                }
                body["delivery"] = json!({
                    "mode": "container", "image": image, "command": command, "env": vars,
                });
            } else if bare_metal {
                let user_data = match user_data_file {
                    Some(f) => Some(
                        std::fs::read_to_string(&f)
                            .with_context(|| format!("reading --user-data-file {}", f.display()))?,
                    ),
                    None => None,
                };
                body["delivery"] = json!({"mode": "bare-metal", "user_data": user_data});
            }
            if !ssh_keys.is_empty() {
                body["ssh_key_names"] = json!(ssh_keys);
            }
            if gpus.is_none() && nodes.is_none() && body.get("shape").is_none() {
                bail!("give --gpus, --nodes, --share, --mig or --cpu-only");
            }
            let v = c
                .call(
                    Method::POST,
                    "/v1/instances",
                    &[],
                    Some(Body::Json(body)),
                    idempotency_key.as_deref(),
                )
                .await?;
            show(g, &v, |v| {
                record(v);
                println!("{:18}  {}", "holds", shape_cell(v));
                println!("{:18}  {}", "placement", placement_cell(v));
            })
        }
        InstanceCmd::List {
            tenant,
            state,
            limit,
        } => {
            let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            if let Some(t) = tenant {
                q.push(("tenant", t));
            }
            if let Some(s) = state {
                q.push(("state", s));
            }
            let v = c.call(Method::GET, "/v1/instances", &q, None, None).await?;
            show(g, &v, |v| table(items(v), cols))
        }
        InstanceCmd::Show { id } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/instances/{}", enc(&id)),
                    &[],
                    None,
                    None,
                )
                .await?;
            show(g, &v, |v| {
                record(v);
                println!("holds  {}", shape_cell(v));
                if let Some(d) = v.pointer("/delivery/mode").and_then(Value::as_str) {
                    println!("delivery  {d}");
                }
                if let Some(a) = access_of(v) {
                    println!("ssh  {}", a.join(" "));
                }
                if let Some(p) = v.get("placement").and_then(Value::as_array) {
                    println!();
                    table(
                        p,
                        &[
                            ("NODE", &field("node")),
                            ("GPUS", &field("gpus")),
                            ("MIG SLOT", &field("mig_start")),
                            ("CPU", &cores_cell),
                            ("MEMORY MIB", &field("memory_mib")),
                        ],
                    );
                }
            })
        }
        InstanceCmd::Logs { id, follow } => {
            let path = format!("/v1/instances/{}/logs", enc(&id));
            let mut offset: u64 = 0;
            loop {
                let v = c
                    .call(
                        Method::GET,
                        &path,
                        &[("offset", offset.to_string())],
                        None,
                        None,
                    )
                    .await?;
                if g.output == Output::Json {
                    println!("{v}");
                } else if let Some(d) = v.get("data").and_then(Value::as_str) {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    out.write_all(d.as_bytes())?;
                    out.flush()?;
                }
                offset = v
                    .get("next_offset")
                    .and_then(Value::as_u64)
                    .unwrap_or(offset);
                if !follow {
                    return Ok(());
                }
                let inst = c
                    .call(
                        Method::GET,
                        &format!("/v1/instances/{}", enc(&id)),
                        &[],
                        None,
                        None,
                    )
                    .await?;
                let state = inst.get("state").and_then(Value::as_str).unwrap_or("");
                if matches!(state, "terminated" | "preempted" | "failed") {
                    // What arrived with the last reports.
                    let v = c
                        .call(
                            Method::GET,
                            &path,
                            &[("offset", offset.to_string())],
                            None,
                            None,
                        )
                        .await?;
                    if let Some(d) = v.get("data").and_then(Value::as_str) {
                        print!("{d}");
                    }
                    eprintln!("instance {id} is {state}");
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        InstanceCmd::Terminate { id } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/instances/{}/terminate", enc(&id)),
                    &[],
                    None,
                    None,
                )
                .await?;
            show(g, &v, record)
        }
    }
}

async fn quotas(g: &Global, cmd: QuotaCmd) -> Result<()> {
    let c = client(g)?;
    let cols: &[Column] = &[
        ("TENANT", &field("tenant_id")),
        ("MODEL", &field("gpu_model")),
        ("CLASS", &field("class")),
        ("MAX GPUS", &field("max_gpus")),
    ];
    let v = match cmd {
        QuotaCmd::List { tenant } => {
            let q: Vec<(&str, String)> = tenant.into_iter().map(|t| ("tenant", t)).collect();
            c.call(Method::GET, "/v1/quotas", &q, None, None).await?
        }
        QuotaCmd::Set {
            tenant,
            gpu_model,
            class,
            max_gpus,
        } => {
            let max: Value = if max_gpus == "none" {
                Value::Null
            } else {
                json!(
                    max_gpus
                        .parse::<u32>()
                        .map_err(|_| anyhow!("--max-gpus must be a number or `none`"))?
                )
            };
            let body = json!({"tenant_id": tenant, "gpu_model": gpu_model, "class": class, "max_gpus": max});
            c.call(Method::PUT, "/v1/quotas", &[], Some(Body::Json(body)), None)
                .await?
        }
    };
    show(g, &v, |v| table(items(v), cols))
}

async fn quotes(g: &Global, cmd: QuoteCmd) -> Result<()> {
    let c = client(g)?;
    let QuoteCmd::Create(terms) = cmd;
    let v = c
        .call(
            Method::POST,
            "/v1/quotes",
            &[],
            Some(Body::Json(terms.body()?)),
            None,
        )
        .await?;
    show(g, &v, record)
}

async fn contracts(g: &Global, cmd: ContractCmd) -> Result<()> {
    let c = client(g)?;
    let cols: &[Column] = &[
        ("ID", &field("id")),
        ("TENANT", &field("tenant_id")),
        ("MODEL", &field("gpu_model")),
        ("GPUS", &field("gpu_count")),
        ("START", &field("start_at")),
        ("END", &field("end_at")),
        ("$/GPU-H", &field("price_per_gpu_hour")),
        ("VALUE $", &field("total_value")),
        ("STATE", &field("state")),
    ];
    match cmd {
        ContractCmd::Sign(terms) => {
            let v = c
                .call(
                    Method::POST,
                    "/v1/contracts",
                    &[],
                    Some(Body::Json(terms.body()?)),
                    None,
                )
                .await?;
            show(g, &v, record)
        }
        ContractCmd::List { tenant } => {
            let mut q: Vec<(&str, String)> = vec![("limit", "1000".into())];
            if let Some(t) = tenant {
                q.push(("tenant", t));
            }
            let v = c.call(Method::GET, "/v1/contracts", &q, None, None).await?;
            show(g, &v, |v| table(items(v), cols))
        }
        ContractCmd::Show { id } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/contracts/{}", enc(&id)),
                    &[],
                    None,
                    None,
                )
                .await?;
            show(g, &v, record)
        }
        ContractCmd::Amend { id, gpus, end } => {
            let body = json!({"gpu_count": gpus, "end_at": end});
            let path = format!("/v1/contracts/{}/amend", enc(&id));
            let v = c
                .call(Method::POST, &path, &[], Some(Body::Json(body)), None)
                .await?;
            show(g, &v, record)
        }
        ContractCmd::Cancel { id } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/contracts/{}/cancel", enc(&id)),
                    &[],
                    None,
                    None,
                )
                .await?;
            show(g, &v, record)
        }
        ContractCmd::Outages { id } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/contracts/{}/outages", enc(&id)),
                    &[],
                    None,
                    None,
                )
                .await?;
            show(g, &v, |v| {
                let rows = v.as_array().cloned().unwrap_or_default();
                table(
                    &rows,
                    &[
                        ("START", &field("start_at")),
                        ("END", &field("end_at")),
                        ("NODE", &field("node_id")),
                        ("GPUS", &field("gpus")),
                        ("REASON", &field("reason")),
                    ],
                );
            })
        }
    }
}

async fn capacity(g: &Global, site: Option<String>, gpu_model: Option<String>) -> Result<()> {
    let c = client(g)?;
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(s) = site {
        q.push(("site", s));
    }
    if let Some(m) = gpu_model {
        q.push(("gpu_model", m));
    }
    let v = c.call(Method::GET, "/v1/capacity", &q, None, None).await?;
    let allocated = |v: &Value| {
        v["allocated"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| format!("{}={}", cell(&c["class"]), cell(&c["gpus"])))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let gang = |v: &Value| {
        v["largest_gang"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| format!("{}:{}", cell(&c["level"]), cell(&c["nodes"])))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let power = |v: &Value| {
        format!(
            "{} / {}",
            mw(&v["site_power_watts"]),
            mw(&v["site_power_limit_watts"])
        )
    };
    show(g, &v, |v| {
        table(
            items(v),
            &[
                ("SITE", &field("site")),
                ("MODEL", &field("gpu_model")),
                ("TOTAL", &field("total_gpus")),
                ("SELLABLE", &field("sellable_gpus")),
                ("COMMITTED", &field("committed_gpus_now")),
                ("ALLOCATED", &allocated),
                ("FREE", &field("free_gpus")),
                ("STRANDED", &field("stranded_free_gpus")),
                ("LARGEST GANG (nodes)", &gang),
                ("POWER MW", &power),
            ],
        )
    })
}

async fn prices(g: &Global, cmd: PriceCmd) -> Result<()> {
    let c = client(g)?;
    let cols: &[Column] = &[
        ("MODEL", &field("gpu_model")),
        ("SITE", &field("site_id")),
        ("KIND", &field("kind")),
        ("$/GPU-H", &field("price_per_gpu_hour")),
        ("FROM", &field("effective_from")),
    ];
    match cmd {
        PriceCmd::List { gpu_model } => {
            let q: Vec<(&str, String)> = gpu_model.into_iter().map(|m| ("gpu_model", m)).collect();
            let v = c.call(Method::GET, "/v1/prices", &q, None, None).await?;
            show(g, &v, |v| table(items(v), cols))
        }
        PriceCmd::Set {
            gpu_model,
            kind,
            price,
            site,
            effective_from,
        } => {
            let body = json!({"gpu_model": gpu_model, "kind": kind, "price_per_gpu_hour": price,
                              "site": site, "effective_from": effective_from});
            let v = c
                .call(
                    Method::POST,
                    "/v1/prices",
                    &[],
                    Some(Body::Json(body)),
                    None,
                )
                .await?;
            show(g, &v, record)
        }
    }
}

async fn usage(g: &Global, cmd: UsageCmd) -> Result<()> {
    let c = client(g)?;
    let UsageCmd::List {
        tenant,
        month,
        instance,
        class,
        limit,
        csv,
    } = cmd;
    let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
    for (k, v) in [
        ("tenant", tenant),
        ("month", month),
        ("instance", instance),
        ("class", class),
    ] {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    if csv {
        q.push(("format", "csv".into()));
        let v = c.call(Method::GET, "/v1/usage", &q, None, None).await?;
        print!("{}", v.as_str().unwrap_or_default());
        return Ok(());
    }
    let v = c.call(Method::GET, "/v1/usage", &q, None, None).await?;
    show(g, &v, |v| {
        table(
            items(v),
            &[
                ("INSTANCE", &field("instance_id")),
                ("CLASS", &field("class")),
                ("MODEL", &field("gpu_model")),
                ("GPUS", &field("gpus")),
                ("MONTH", &field("month")),
                ("START", &field("start_at")),
                ("END", &field("end_at")),
                ("GPU-S", &field("gpu_seconds")),
                ("$/GPU-H", &field("rate")),
                ("AMOUNT $", &field("amount")),
            ],
        )
    })
}

async fn invoices(g: &Global, cmd: InvoiceCmd) -> Result<()> {
    let c = client(g)?;
    let print_invoice = |v: &Value| {
        println!(
            "{}  {}  {}  total ${}  (shadow ${})",
            cell(&v["id"]),
            cell(&v["month"]),
            cell(&v["state"]),
            cell(&v["total"]),
            cell(&v["shadow_total"])
        );
        if let Some(lines) = v.get("lines").and_then(Value::as_array) {
            table(
                lines,
                &[
                    ("KIND", &field("kind")),
                    ("DESCRIPTION", &field("description")),
                    ("GPU-S", &field("quantity_gpu_seconds")),
                    ("AMOUNT $", &field("amount")),
                    ("BILLED", &field("billed")),
                ],
            );
        }
    };
    let v = match cmd {
        InvoiceCmd::List { tenant } => {
            let q: Vec<(&str, String)> = tenant.into_iter().map(|t| ("tenant", t)).collect();
            let v = c.call(Method::GET, "/v1/invoices", &q, None, None).await?;
            return show(g, &v, |v| {
                table(
                    items(v),
                    &[
                        ("ID", &field("id")),
                        ("TENANT", &field("tenant_id")),
                        ("MONTH", &field("month")),
                        ("STATE", &field("state")),
                        ("TOTAL $", &field("total")),
                    ],
                )
            });
        }
        InvoiceCmd::Show { id } => {
            c.call(
                Method::GET,
                &format!("/v1/invoices/{}", enc(&id)),
                &[],
                None,
                None,
            )
            .await?
        }
        InvoiceCmd::Generate { tenant, month } => {
            let body = json!({"tenant_id": tenant, "month": month});
            c.call(
                Method::POST,
                "/v1/invoices",
                &[],
                Some(Body::Json(body)),
                None,
            )
            .await?
        }
        InvoiceCmd::Finalize { id } => {
            let path = format!("/v1/invoices/{}/finalize", enc(&id));
            c.call(Method::POST, &path, &[], None, None).await?
        }
    };
    show(g, &v, print_invoice)
}

async fn reports(g: &Global, cmd: ReportCmd) -> Result<()> {
    let c = client(g)?;
    let csv_of = |path: &str, mut q: Vec<(&'static str, String)>| {
        q.push(("format", "csv".to_string()));
        let path = path.to_string();
        let c = &c;
        async move {
            let v = c.call(Method::GET, &path, &q, None, None).await?;
            print!("{}", v.as_str().unwrap_or_default());
            Ok::<(), anyhow::Error>(())
        }
    };
    match cmd {
        ReportCmd::Utilization { month, csv: true } => {
            csv_of("/v1/reports/utilization", vec![("month", month)]).await
        }
        ReportCmd::Margin { month, csv: true } => {
            csv_of("/v1/reports/margin", vec![("month", month)]).await
        }
        ReportCmd::Revenue {
            from,
            to,
            csv: true,
        } => csv_of("/v1/reports/revenue", vec![("from", from), ("to", to)]).await,
        ReportCmd::Backlog => {
            let v = c
                .call(Method::GET, "/v1/reports/backlog", &[], None, None)
                .await?;
            show(g, &v, |v| {
                println!(
                    "contracted backlog as of {}: ${}",
                    cell(&v["as_of"]),
                    cell(&v["total"])
                );
                if let Some(years) = v["by_year"].as_array() {
                    table(
                        years,
                        &[("YEAR", &field("year")), ("VALUE $", &field("value"))],
                    );
                }
            })
        }
        ReportCmd::Utilization { month, .. } => {
            let v = c
                .call(
                    Method::GET,
                    "/v1/reports/utilization",
                    &[("month", month)],
                    None,
                    None,
                )
                .await?;
            let pct = |v: &Value| {
                v["utilization_milli_percent"]
                    .as_i64()
                    .map(|m| format!("{:.3}%", m as f64 / 1000.0))
                    .unwrap_or_default()
            };
            show(g, &v, |v| {
                table(
                    items(v),
                    &[
                        ("MONTH", &field("month")),
                        ("SITE", &field("site_id")),
                        ("MODEL", &field("gpu_model")),
                        ("CLASS", &field("class")),
                        ("GPU-S", &field("gpu_seconds")),
                        ("UTILIZATION", &pct),
                    ],
                )
            })
        }
        ReportCmd::Margin { month, .. } => {
            let v = c
                .call(
                    Method::GET,
                    "/v1/reports/margin",
                    &[("month", month)],
                    None,
                    None,
                )
                .await?;
            show(g, &v, |v| {
                table(
                    items(v),
                    &[
                        ("MONTH", &field("month")),
                        ("SITE", &field("site_id")),
                        ("REVENUE $", &field("revenue")),
                        ("ENERGY KWH", &field("energy_kwh")),
                        ("ENERGY $", &field("energy_cost")),
                        ("MARGIN $", &field("gross_margin")),
                    ],
                )
            })
        }
        ReportCmd::Power => {
            let v = c
                .call(Method::GET, "/v1/reports/power", &[], None, None)
                .await?;
            let used = |v: &Value| mw(&v["allocated_watts"]);
            let budget = |v: &Value| mw(&v["budget_watts"]);
            show(g, &v, |v| {
                table(
                    items(v),
                    &[
                        ("SITE", &field("site")),
                        ("ALLOCATED MW", &used),
                        ("BUDGET MW", &budget),
                        ("$/MWH", &field("energy_usd_per_mwh")),
                        ("ENERGY $/H", &field("energy_cost_per_hour")),
                    ],
                )
            })
        }
        ReportCmd::Revenue { from, to, .. } => {
            let v = c
                .call(
                    Method::GET,
                    "/v1/reports/revenue",
                    &[("from", from), ("to", to)],
                    None,
                    None,
                )
                .await?;
            show(g, &v, |v| {
                table(
                    items(v),
                    &[
                        ("MONTH", &field("month")),
                        ("TENANT", &field("tenant_id")),
                        ("CLASS", &field("class")),
                        ("SITE", &field("site_id")),
                        ("AMOUNT $", &field("amount")),
                    ],
                )
            })
        }
    }
}

/// The ssh arguments that reach an instance: `-p PORT USER@HOST`.
fn access_of(v: &Value) -> Option<Vec<String>> {
    let a = v.get("access")?;
    let host = a.get("host")?.as_str()?;
    let port = a.get("port")?.as_u64()?;
    let user = a.get("user")?.as_str()?;
    Some(vec![
        "-p".into(),
        port.to_string(),
        format!("{user}@{host}"),
    ])
}

async fn ssh(
    g: &Global,
    instance: &str,
    identity: Option<PathBuf>,
    options: &[String],
    print: bool,
    command: Vec<String>,
) -> Result<()> {
    let c = client(g)?;
    let v = c
        .call(
            Method::GET,
            &format!("/v1/instances/{}", enc(instance)),
            &[],
            None,
            None,
        )
        .await?;
    let state = v.get("state").and_then(Value::as_str).unwrap_or("unknown");
    let Some(access) = access_of(&v) else {
        if v.get("delivery").is_none_or(Value::is_null) {
            bail!(
                "instance {instance} was launched without a delivery (--image or --bare-metal): nothing runs on it to log into"
            );
        }
        bail!(
            "instance {instance} is {state}: it has no SSH access yet (wait until it is running)"
        );
    };
    if state != "running" && state != "preempting" {
        bail!("instance {instance} is {state}; only a running instance can be reached");
    }
    let mut args: Vec<String> = Vec::new();
    if let Some(i) = identity {
        args.push("-i".into());
        args.push(i.display().to_string());
    }
    for o in options {
        if !o.contains('=') {
            bail!("--ssh-option takes NAME=VALUE (got '{o}')");
        }
        args.push("-o".into());
        args.push(o.clone());
    }
    args.extend(access);
    if !command.is_empty() {
        args.push("--".into());
        args.extend(command);
    }
    if print {
        println!("ssh {}", args.join(" "));
        return Ok(());
    }
    let status = std::process::Command::new("ssh")
        .args(&args)
        .status()
        .context("running ssh (install OpenSSH's client)")?;
    std::process::exit(status.code().unwrap_or(255));
}

async fn ssh_keys(g: &Global, cmd: SshKeyCmd) -> Result<()> {
    let c = client(g)?;
    let cols: &[Column] = &[
        ("NAME", &field("name")),
        ("FINGERPRINT", &field("fingerprint")),
        ("ID", &field("id")),
        ("ADDED", &field("created_at")),
    ];
    match cmd {
        SshKeyCmd::Add {
            name,
            public_key_file,
            tenant,
        } => {
            let key = if public_key_file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&public_key_file)
                    .with_context(|| format!("reading {}", public_key_file.display()))?
            };
            let body = json!({"name": name, "public_key": key.trim(), "tenant_id": tenant});
            let v = c
                .call(
                    Method::POST,
                    "/v1/ssh-keys",
                    &[],
                    Some(Body::Json(body)),
                    None,
                )
                .await?;
            show(g, &v, record)
        }
        SshKeyCmd::List { tenant } => {
            let q: Vec<(&str, String)> = tenant.map(|t| ("tenant", t)).into_iter().collect();
            let v = c.call(Method::GET, "/v1/ssh-keys", &q, None, None).await?;
            show(g, &v, |v| {
                table(v.as_array().map_or(&[][..], Vec::as_slice), cols)
            })
        }
        SshKeyCmd::Delete { name, tenant } => {
            let q: Vec<(&str, String)> = tenant.map(|t| ("tenant", t)).into_iter().collect();
            let v = c
                .call(
                    Method::DELETE,
                    &format!("/v1/ssh-keys/{}", enc(&name)),
                    &q,
                    None,
                    None,
                )
                .await?;
            show(g, &v, record)
        }
    }
}
