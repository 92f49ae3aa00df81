//! Delivery: what runs for an instance on its node, and how the tenant reaches it.
//!
//! An instance launched with a [`Delivery`] is realised by the agent of each of its nodes:
//! a `container` (an OCI image started by podman with exactly the instance's GPUs, given
//! through CDI device names) or a `bare-metal` hand-off (a tenant account with the tenant's
//! SSH keys on a whole node). The control plane tells each agent what should run on its node
//! in every heartbeat answer ([`DesiredWorkloads`]); the agent converges and reports what
//! really runs in its next heartbeat ([`WorkloadReport`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{InstanceId, TenantId, Timestamp};

/// Longest image reference, bytes.
pub const MAX_IMAGE_LEN: usize = 512;
/// Most arguments of a container command.
pub const MAX_COMMAND_ARGS: usize = 256;
/// Most environment variables of a container.
pub const MAX_ENV_VARS: usize = 256;
/// Longest command argument or environment value, bytes.
pub const MAX_ARG_LEN: usize = 8192;
/// Longest first-boot user data, bytes.
pub const MAX_USER_DATA_LEN: usize = 64 * 1024;

/// How an instance is delivered to its tenant, chosen at launch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "mode", deny_unknown_fields)]
pub enum Delivery {
    /// An OCI image started by podman with the instance's GPUs (CDI), CPU and memory
    /// limits; for shapes that fit in one node.
    #[serde(rename = "container")]
    Container {
        /// Image reference, e.g. `docker.io/library/ubuntu:24.04` or an image already on
        /// the node (`localhost/trainer:1`).
        image: String,
        /// Command and arguments; the image's own command when empty.
        #[serde(default)]
        command: Vec<String>,
        /// Environment variables given to the workload.
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// The whole node is handed to the tenant: an account with its SSH keys, optional
    /// first-boot user data run once; for whole nodes and gangs.
    #[serde(rename = "bare-metal")]
    BareMetal {
        /// A script run once, as the tenant's account, when the node is handed over.
        #[serde(default)]
        user_data: Option<String>,
    },
}

impl Delivery {
    /// The mode's name as the API spells it.
    pub fn mode(&self) -> &'static str {
        match self {
            Delivery::Container { .. } => "container",
            Delivery::BareMetal { .. } => "bare-metal",
        }
    }

    /// Checks sizes and characters; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Delivery::Container {
                image,
                command,
                env,
            } => {
                let image = image.trim();
                if image.is_empty() {
                    return Err("delivery.image is empty".into());
                }
                if image.len() > MAX_IMAGE_LEN
                    || image
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '\'' || c == '"')
                {
                    return Err(format!(
                        "delivery.image must be an image reference of at most {MAX_IMAGE_LEN} characters without spaces or quotes"
                    ));
                }
                if image.starts_with('-') {
                    return Err("delivery.image must not start with '-'".into());
                }
                if command.len() > MAX_COMMAND_ARGS {
                    return Err(format!(
                        "delivery.command has more than {MAX_COMMAND_ARGS} arguments"
                    ));
                }
                if command
                    .iter()
                    .any(|a| a.len() > MAX_ARG_LEN || a.contains('\0'))
                {
                    return Err(format!(
                        "delivery.command arguments must be at most {MAX_ARG_LEN} bytes, without NUL"
                    ));
                }
                if env.len() > MAX_ENV_VARS {
                    return Err(format!(
                        "delivery.env has more than {MAX_ENV_VARS} variables"
                    ));
                }
                for (k, v) in env {
                    let good_name = !k.is_empty()
                        && k.len() <= 256
                        && !k.starts_with(|c: char| c.is_ascii_digit())
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !good_name {
                        return Err(format!(
                            "delivery.env: {k:?} is not a variable name (letters, digits and '_', not starting with a digit)"
                        ));
                    }
                    if k.starts_with("NEOCLOUD_")
                        || k.starts_with("NVIDIA_")
                        || k.starts_with("CUDA_MPS_")
                    {
                        return Err(format!(
                            "delivery.env: {k} is set by the platform and cannot be given"
                        ));
                    }
                    if v.len() > MAX_ARG_LEN || v.contains('\0') {
                        return Err(format!(
                            "delivery.env: the value of {k} must be at most {MAX_ARG_LEN} bytes, without NUL"
                        ));
                    }
                }
                Ok(())
            }
            Delivery::BareMetal { user_data } => match user_data {
                Some(u) if u.len() > MAX_USER_DATA_LEN => Err(format!(
                    "delivery.user_data is larger than {MAX_USER_DATA_LEN} bytes"
                )),
                Some(u) if u.contains('\0') => Err("delivery.user_data contains NUL".into()),
                _ => Ok(()),
            },
        }
    }
}

/// How a tenant reaches a running instance (over SSH).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// Host name or address to connect to.
    pub host: String,
    /// TCP port of its SSH server.
    pub port: u16,
    /// User to log in as.
    pub user: String,
}

/// What should run on one node: sent to its agent in every heartbeat answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DesiredWorkloads {
    /// Changes whenever the list changes; the agent reports the generation it applied.
    pub generation: u64,
    /// Every instance that should exist on the node. One that the agent runs and that is
    /// not listed here (or is listed with `stop`) is stopped, removed and scrubbed.
    pub workloads: Vec<Workload>,
    /// Seconds between SIGTERM and SIGKILL when a workload is stopped.
    pub stop_grace_secs: u32,
}

/// One instance's part on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The instance.
    pub instance_id: InstanceId,
    /// Its tenant (accounts and labels are named after it).
    pub tenant_id: TenantId,
    /// What to run.
    pub delivery: Delivery,
    /// GPU indexes on this node given to it (the one GPU of a share or MIG instance).
    pub gpus: Vec<u32>,
    /// For a MIG instance: the first memory slice of its GPU instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_start: Option<u32>,
    /// For a MIG instance: the profile, e.g. `1g.10gb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_profile: Option<String>,
    /// For a share of a GPU: thousandths of it (CUDA MPS limits are set from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_milli: Option<u32>,
    /// CPU limit, thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_milli: Option<u64>,
    /// Memory limit, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// OpenSSH public keys allowed to log in (one `authorized_keys` line each).
    pub authorized_keys: Vec<String>,
    /// When the workload will be stopped by preemption, if it has notice of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempt_at: Option<Timestamp>,
    /// Stop it now (SIGTERM, then SIGKILL after the grace period), remove and scrub.
    #[serde(default)]
    pub stop: bool,
}

/// Where a workload stands on its node, as its agent saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadPhase {
    /// Being prepared (image, account, SSH).
    Provisioning,
    /// Live: the container runs, or the node is handed over.
    Running,
    /// Stopped, removed and its GPUs scrubbed: nothing of it is left on the node.
    Stopped,
    /// Could not be started, or ended on its own; `reason` says why. Nothing of it is left.
    Failed,
}

/// What an agent reports of one workload in a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadReport {
    /// The instance.
    pub instance_id: InstanceId,
    /// Where it stands.
    pub phase: WorkloadPhase,
    /// When it entered that phase (the agent's clock).
    pub since: Timestamp,
    /// Why it failed or stopped, for the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The workload's exit code, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// How to reach it, once running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// New output of the workload: `log` holds its bytes from `log_offset` on (the offset
    /// counts bytes since the workload started), so a chunk sent twice is stored once.
    #[serde(default)]
    pub log_offset: u64,
    /// New output (lossy UTF-8), at most a bounded amount per heartbeat.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log: String,
}

/// A tenant's SSH public key, named at launch by `ssh_key_names`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SshKey {
    /// Key id.
    pub id: crate::SshKeyId,
    /// Owner.
    pub tenant_id: TenantId,
    /// Name, unique within the tenant.
    pub name: String,
    /// The public key, one OpenSSH `authorized_keys` line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
    /// SHA-256 fingerprint as `ssh-keygen -l` prints it (`SHA256:…`).
    pub fingerprint: String,
    /// When it was added.
    pub created_at: Timestamp,
}
