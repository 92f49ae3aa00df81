//! Instances: launching, listing, logs and SSH access; SSH keys; quotas.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use neocloud_client::model::{
    CreateSshKey, InstanceFilter, LaunchInstance, List, PageRequest, SetQuota,
};
use neocloud_types::{Delivery, InstanceState, Shape};
use serde_json::Value;

use super::out::{
    Buf, Column, Cx, Ids, Names, Need, cell, field, items, parse, record, table, usage,
    write_stdout,
};

/// Options of `instances launch`.
#[derive(clap::Args, Debug)]
pub(crate) struct LaunchArgs {
    /// GPU model, e.g. H100-SXM-80GB (for --cpu-only: the model of the nodes to run on).
    /// Several (repeated, or a comma list: H100-SXM-80GB,H200-SXM-141GB) accept any of
    /// them: the instance runs on, and is billed and counted in quotas as, the one it is
    /// placed on.
    #[arg(long, required = true, value_delimiter = ',', value_name = "MODEL")]
    gpu_model: Vec<String>,
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
    /// For gangs, when a node fails: replace (default: a healthy node of the same block
    /// takes its place), shrink (drop it, bill fewer GPUs) or fail (end the instance).
    #[arg(long, requires = "nodes", value_name = "POLICY")]
    on_node_failure: Option<String>,
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
pub(crate) enum InstanceCmd {
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
pub(crate) enum SshKeyCmd {
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
pub(crate) enum QuotaCmd {
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

/// Options of `ssh`.
#[derive(clap::Args, Debug)]
pub(crate) struct SshArgs {
    /// Instance id.
    pub(crate) instance: String,
    /// The private key to log in with (passed to ssh -i).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub(crate) identity: Option<PathBuf>,
    /// An ssh option, NAME=VALUE, passed as `ssh -o NAME=VALUE` (repeatable), e.g.
    /// StrictHostKeyChecking=accept-new.
    #[arg(long = "ssh-option", value_name = "NAME=VALUE")]
    pub(crate) ssh_options: Vec<String>,
    /// Print the ssh command instead of running it.
    #[arg(long)]
    pub(crate) print: bool,
    /// A command to run instead of a shell, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

fn placement_cell(v: &Value) -> String {
    // A large instance's answer counts its nodes by block instead of listing them.
    if let Some(s) = v.get("placement_summary").filter(|s| s.is_object()) {
        let blocks = s["blocks"].as_array().map_or(0, Vec::len);
        return format!(
            "{} nodes, {} GPUs in {blocks} block{}",
            cell(&s["nodes"]),
            cell(&s["gpus"]),
            if blocks == 1 { "" } else { "s" }
        );
    }
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

/// `neocloud instances …`.
pub(crate) async fn instances(cx: &Cx<'_>, cmd: InstanceCmd) -> Result<()> {
    let c = cx.client()?;
    let ids = Ids::Field("id");
    match cmd {
        InstanceCmd::Launch(args) => {
            let (body, key) = launch_body(*args)?;
            let inst = c.launch_instance(&body, key.as_deref()).await?;
            cx.show(&inst, ids, |v, b| {
                record(v, b);
                b.line(format_args!("{:18}  {}", "holds", shape_cell(v)));
                b.line(format_args!("{:18}  {}", "placement", placement_cell(v)));
            })
        }
        InstanceCmd::List {
            tenant,
            state,
            limit,
        } => {
            let page = c
                .instances(
                    &InstanceFilter { tenant, state },
                    &PageRequest::first(limit),
                )
                .await?;
            let names = Names::load(
                cx,
                &c,
                Need {
                    tenants: true,
                    ..Need::default()
                },
            )
            .await;
            let cols: &[Column] = &[
                ("ID", &field("id")),
                ("NAME", &field("name")),
                ("TENANT", &names.field("tenant_id")),
                ("CLASS", &field("class")),
                ("MODEL", &field("gpu_model")),
                ("SHAPE", &shape_cell),
                ("STATE", &field("state")),
                ("PLACEMENT", &placement_cell),
                ("REASON", &field("reason")),
            ];
            cx.show(&page, ids, |v, b| table(b, items(v), cols))
        }
        InstanceCmd::Show { id } => {
            let mut inst = c.instance(&id).await?;
            // A large instance's answer counts its nodes by block: list them all here.
            if inst.placement_summary.is_some() {
                inst.placement = c.instance_all_nodes(&id).await?.into();
            }
            cx.show(&inst, ids, |v, b| {
                record(v, b);
                b.line(format_args!("holds  {}", shape_cell(v)));
                if let Some(d) = v.pointer("/delivery/mode").and_then(Value::as_str) {
                    b.line(format_args!("delivery  {d}"));
                }
                if let Some(a) = access_of(v) {
                    b.line(format_args!("ssh  {}", a.join(" ")));
                }
                if let Some(s) = v.get("placement_summary").filter(|s| s.is_object()) {
                    b.line(format_args!("placement  {}", placement_cell(v)));
                    if let Some(blocks) = s["blocks"].as_array() {
                        b.line("");
                        table(
                            b,
                            blocks,
                            &[
                                ("BLOCK", &field("block_id")),
                                ("NODES", &field("nodes")),
                                ("GPUS", &field("gpus")),
                            ],
                        );
                    }
                }
                if let Some(p) = v.get("placement").and_then(Value::as_array) {
                    b.line("");
                    table(
                        b,
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
            let mut offset: u64 = 0;
            loop {
                let logs = c.instance_logs(&id, offset).await?;
                if cx.json() {
                    write_stdout(format!("{}\n", serde_json::to_string(&logs)?).as_bytes())?;
                } else {
                    write_stdout(logs.data.as_bytes())?;
                }
                offset = logs.next_offset.max(offset);
                if !follow {
                    return Ok(());
                }
                let inst = c.instance(&id).await?;
                if matches!(
                    inst.state,
                    InstanceState::Terminated | InstanceState::Preempted | InstanceState::Failed
                ) {
                    // What arrived with the last reports.
                    let last = c.instance_logs(&id, offset).await?;
                    if !cx.json() {
                        write_stdout(last.data.as_bytes())?;
                    }
                    eprintln!("instance {id} is {}", inst.state);
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        InstanceCmd::Terminate { id } => cx.show(&c.terminate_instance(&id).await?, ids, record),
    }
}

/// The launch request the options describe, and the idempotency key to send.
fn launch_body(args: LaunchArgs) -> Result<(LaunchInstance, Option<String>)> {
    let LaunchArgs {
        gpu_model,
        gpus,
        nodes,
        gang_level,
        on_node_failure,
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
    } = args;
    let shape = match (share, mig, cpu_only) {
        (Some(milli), _, _) => Some(Shape::Share { milli }),
        (_, Some(profile), _) => Some(Shape::Mig {
            profile: parse("--mig", &profile)?,
        }),
        (_, _, true) => Some(Shape::Cpu),
        _ => None,
    };
    if gpus.is_none() && nodes.is_none() && shape.is_none() {
        return Err(usage("give --gpus, --nodes, --share, --mig or --cpu-only"));
    }
    let delivery = if let Some(image) = image {
        let mut vars = neocloud_client::model::Env::new();
        for e in env {
            let Some((k, v)) = e.split_once('=') else {
                return Err(usage(format!("--env takes NAME=VALUE (got '{e}')")));
            };
            vars.insert(k.to_string(), v.to_string());
        }
        Some(Delivery::Container {
            image,
            command,
            env: vars,
        })
    } else if bare_metal {
        let user_data = match user_data_file {
            Some(f) => Some(
                std::fs::read_to_string(&f)
                    .with_context(|| format!("reading --user-data-file {}", f.display()))?,
            ),
            None => None,
        };
        Some(Delivery::BareMetal { user_data })
    } else {
        None
    };
    let class = parse("--class", &class)?;
    let mut body = match <[String; 1]>::try_from(gpu_model) {
        Ok([one]) => LaunchInstance::new(one, class),
        Err(several) => LaunchInstance::among(several, class),
    };
    body.gpus = gpus;
    body.nodes = nodes;
    body.gang_level = gang_level.map(|l| parse("--gang-level", &l)).transpose()?;
    body.on_node_failure = on_node_failure
        .map(|p| parse("--on-node-failure", &p))
        .transpose()?;
    body.shape = shape;
    body.cpu_milli = cpu;
    body.memory_mib = memory;
    body.tenant_id = tenant;
    body.site = site;
    body.contract_id = contract.map(|c| parse("--contract", &c)).transpose()?;
    body.wait_seconds = wait;
    body.name = name;
    body.delivery = delivery;
    body.ssh_key_names = ssh_keys;
    Ok((body, idempotency_key))
}

/// `neocloud ssh …`.
pub(crate) async fn ssh(cx: &Cx<'_>, args: SshArgs) -> Result<()> {
    let SshArgs {
        instance,
        identity,
        ssh_options,
        print,
        command,
    } = args;
    let c = cx.client()?;
    let inst = c.instance(&instance).await?;
    let v = serde_json::to_value(&inst)?;
    let state = inst.state;
    let Some(access) = access_of(&v) else {
        if inst.delivery.is_none() {
            bail!(
                "instance {instance} was launched without a delivery (--image or --bare-metal): nothing runs on it to log into"
            );
        }
        bail!(
            "instance {instance} is {state}: it has no SSH access yet (wait until it is running)"
        );
    };
    if !matches!(state, InstanceState::Running | InstanceState::Preempting) {
        bail!("instance {instance} is {state}; only a running instance can be reached");
    }
    let mut argv: Vec<String> = Vec::new();
    if let Some(i) = identity {
        argv.push("-i".into());
        argv.push(i.display().to_string());
    }
    for o in ssh_options {
        if !o.contains('=') {
            return Err(usage(format!("--ssh-option takes NAME=VALUE (got '{o}')")));
        }
        argv.push("-o".into());
        argv.push(o);
    }
    argv.extend(access);
    if !command.is_empty() {
        argv.push("--".into());
        argv.extend(command);
    }
    if print {
        return write_stdout(format!("ssh {}\n", argv.join(" ")).as_bytes());
    }
    let status = std::process::Command::new("ssh")
        .args(&argv)
        .status()
        .context("running ssh (install OpenSSH's client)")?;
    std::process::exit(status.code().unwrap_or(255));
}

/// `neocloud ssh-keys …`.
pub(crate) async fn ssh_keys(cx: &Cx<'_>, cmd: SshKeyCmd) -> Result<()> {
    let c = cx.client()?;
    let cols: &[Column] = &[
        ("NAME", &field("name")),
        ("FINGERPRINT", &field("fingerprint")),
        ("ID", &field("id")),
        ("ADDED", &field("created_at")),
    ];
    let ids = Ids::Field("id");
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
            let body = CreateSshKey {
                tenant_id: tenant,
                name,
                public_key: key.trim().to_string(),
            };
            cx.show(&c.add_ssh_key(&body, None).await?, ids, record)
        }
        SshKeyCmd::List { tenant } => {
            let keys = c.ssh_keys(tenant.as_deref()).await?;
            cx.show(&keys, ids, |v, b| table(b, items(v), cols))
        }
        SshKeyCmd::Delete { name, tenant } => cx.show(
            &c.delete_ssh_key(&name, tenant.as_deref()).await?,
            ids,
            record,
        ),
    }
}

/// `neocloud quotas …`.
pub(crate) async fn quotas(cx: &Cx<'_>, cmd: QuotaCmd) -> Result<()> {
    let c = cx.client()?;
    let quotas = match cmd {
        QuotaCmd::List { tenant } => c.quotas(tenant.as_deref()).await?,
        QuotaCmd::Set {
            tenant,
            gpu_model,
            class,
            max_gpus,
        } => {
            let max_gpus = if max_gpus == "none" {
                None
            } else {
                Some(
                    max_gpus
                        .parse::<u32>()
                        .map_err(|_| usage("--max-gpus must be a number or `none`"))?,
                )
            };
            let body = SetQuota {
                tenant_id: tenant,
                gpu_model,
                class: parse("--class", &class)?,
                max_gpus,
            };
            c.set_quota(&body).await?
        }
    };
    let names = Names::load(
        cx,
        &c,
        Need {
            tenants: true,
            ..Need::default()
        },
    )
    .await;
    cx.show(&List { items: quotas }, Ids::None, |v, b: &mut Buf| {
        table(
            b,
            items(v),
            &[
                ("TENANT", &names.field("tenant_id")),
                ("MODEL", &field("gpu_model")),
                ("CLASS", &field("class")),
                ("MAX GPUS", &field("max_gpus")),
            ],
        )
    })
}
