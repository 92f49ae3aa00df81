//! CDI (Container Device Interface): the device names a workload's container gets, and the
//! spec of simulated GPUs.
//!
//! With real GPUs, NVIDIA's container toolkit writes the spec (`nvidia-ctk cdi generate
//! --output=/var/run/cdi/nvidia.yaml`) of kind `nvidia.com/gpu`, naming whole GPUs by index
//! (`nvidia.com/gpu=0`) and MIG devices `<gpu>:<mig device index>`. With the sim backend the
//! agent writes its own spec, of kind `sim.neocloud.dev/<host>` (one kind per host, so that
//! several simulated nodes on one machine do not collide), naming GPUs by index, `all`, and
//! MIG devices `<gpu>:<start slice>` for every start slice 0–6; each device has a device
//! node (a copy of `/dev/null`, char 1:3) and an environment variable with its UUID.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use neocloud_types::{GpuInventory, Workload};
use serde_json::json;

/// The CDI kind of the simulated GPUs of `hostname`.
pub(crate) fn sim_kind(hostname: &str) -> String {
    let mut class: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    class = class
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if class.is_empty() {
        class = "node".to_string();
    }
    format!("sim.neocloud.dev/{class}")
}

/// Checks a CDI kind: `vendor/class`, the vendor a domain-like name, the class letters,
/// digits, `_`, `.` and `-` starting and ending with a letter or digit.
pub(crate) fn check_kind(kind: &str) -> Result<(), String> {
    let Some((vendor, class)) = kind.split_once('/') else {
        return Err(format!("{kind:?} is not vendor/class, e.g. nvidia.com/gpu"));
    };
    let part_ok = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    if !part_ok(vendor, &['.', '-']) || !part_ok(class, &['_', '.', '-']) {
        return Err(format!("{kind:?} is not a valid CDI kind (vendor/class)"));
    }
    Ok(())
}

/// The spec file of the simulated GPUs of `hostname`.
pub(crate) fn sim_spec_path(cdi_dir: &Path, hostname: &str) -> PathBuf {
    let kind = sim_kind(hostname);
    let class = kind.rsplit('/').next().unwrap_or("node");
    cdi_dir.join(format!("neocloud-sim-{class}.json"))
}

/// The environment variable naming simulated GPU `index`.
pub(crate) fn gpu_env(index: u32) -> String {
    format!("NEOCLOUD_GPU_{index}")
}

/// Writes the CDI spec of simulated GPUs, with device nodes under `<state>/cdi-dev`.
pub(crate) async fn write_sim_spec(
    cdi_dir: &Path,
    kind: &str,
    hostname: &str,
    state_dir: &Path,
    gpus: &[GpuInventory],
) -> Result<PathBuf> {
    let dev_dir = state_dir.join("cdi-dev");
    std::fs::create_dir_all(&dev_dir)
        .with_context(|| format!("cannot create {}", dev_dir.display()))?;
    std::fs::create_dir_all(cdi_dir)
        .with_context(|| format!("cannot create the CDI directory {}", cdi_dir.display()))?;
    let node = |name: &str| -> Result<String> {
        let path = dev_dir.join(name);
        if !path.exists() {
            let out = std::process::Command::new("mknod")
                .arg(&path)
                .args(["c", "1", "3"])
                .output()
                .context("cannot run mknod")?;
            if !out.status.success() {
                anyhow::bail!(
                    "mknod {} failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(path.to_string_lossy().into_owned())
    };
    let mut devices = Vec::new();
    let mut all_nodes = Vec::new();
    let mut all_env = Vec::new();
    for g in gpus {
        let i = g.index;
        let host = node(&format!("nvidia{i}"))?;
        let dev = json!({"path": format!("/dev/nvidia{i}"), "hostPath": host});
        let env = format!("{}={}", gpu_env(i), g.uuid);
        devices.push(json!({
            "name": i.to_string(),
            "containerEdits": {"env": [env], "deviceNodes": [dev]},
        }));
        for start in 0..7 {
            let cap = node(&format!("nvidia-cap-{i}-{start}"))?;
            let uuid = g.uuid.trim_start_matches("GPU-");
            devices.push(json!({
                "name": format!("{i}:{start}"),
                "containerEdits": {
                    "env": [format!("NEOCLOUD_MIG_{i}_{start}=MIG-{uuid}/{start}")],
                    "deviceNodes": [
                        dev,
                        {"path": format!("/dev/nvidia-caps/nvidia-cap-{i}-{start}"), "hostPath": cap},
                    ],
                },
            }));
        }
        all_nodes.push(dev);
        all_env.push(env);
    }
    devices.push(json!({
        "name": "all",
        "containerEdits": {"env": all_env, "deviceNodes": all_nodes},
    }));
    let spec = json!({
        "cdiVersion": "0.5.0",
        "kind": kind,
        "devices": devices,
        "containerEdits": {"env": [format!("NEOCLOUD_SIM_NODE={hostname}")]},
    });
    let path = sim_spec_path(cdi_dir, hostname);
    let text = serde_json::to_vec_pretty(&spec)?;
    super::write_atomic(&path, &text, 0o644)
        .with_context(|| format!("cannot write the CDI spec {}", path.display()))?;
    Ok(path)
}

/// The CDI device names (`kind=name`) of a workload's GPUs. `mig_by_start` says whether MIG
/// devices are named by start slice (the sim spec); with NVIDIA's spec they are named by
/// MIG device index, which the agent cannot map from a start slice yet.
pub(crate) fn device_names(
    kind: &str,
    w: &Workload,
    gpu_count: usize,
    mig_by_start: bool,
) -> Result<Vec<String>, String> {
    for g in &w.gpus {
        if usize::try_from(*g).map_or(true, |g| g >= gpu_count) {
            return Err(format!(
                "GPU {g} does not exist on this node ({gpu_count} GPUs)"
            ));
        }
    }
    match w.mig_start {
        Some(start) => {
            let [gpu] = w.gpus[..] else {
                return Err("a MIG workload must have exactly one GPU".into());
            };
            if start > 6 {
                return Err(format!("MIG start slice {start} is not 0-6"));
            }
            if !mig_by_start {
                // TODO-correctness: map the start slice to the MIG device index through
                // NVML's GPU instance placements (nvmlGpuInstanceGetInfo).
                return Err(
                    "MIG workloads are not supported with NVIDIA's CDI spec yet (its MIG \
                     devices are named by MIG device index, not start slice)"
                        .into(),
                );
            }
            Ok(vec![format!("{kind}={gpu}:{start}")])
        }
        None => Ok(w.gpus.iter().map(|g| format!("{kind}={g}")).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_per_host_and_valid() {
        assert_eq!(sim_kind("gpu-node-001"), "sim.neocloud.dev/gpu-node-001");
        assert_eq!(sim_kind("a b!c."), "sim.neocloud.dev/a-b-c");
        assert_eq!(sim_kind("--"), "sim.neocloud.dev/node");
        assert!(check_kind(&sim_kind("x y")).is_ok());
        assert!(check_kind("nvidia.com/gpu").is_ok());
        assert!(check_kind("nvidia.com").is_err());
        assert!(check_kind("nvidia.com/gpu!").is_err());
    }
}
