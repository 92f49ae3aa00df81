//! Where GPU facts come from: the [`GpuBackend`] trait, implemented by the NVML backend
//! (real GPUs) and the simulated one.

use anyhow::Result;
use neocloud_types::{AgentEventKind, GpuInventory, GpuSample, Timestamp};

use crate::fault::Fault;

/// A health event seen by a backend: the GPU it concerns (UUID), what happened, and when.
pub type BackendEvent = (Option<String>, AgentEventKind, Timestamp);

/// The result of a burn-in check: whether it passed, and its output for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BurnInOutcome {
    /// Whether the check passed.
    pub passed: bool,
    /// What the check found, human-readable.
    pub output: String,
}

/// A source of GPU inventory, telemetry and health events.
///
/// Calls may block briefly (NVML queries); the daemon calls them from a blocking thread.
pub trait GpuBackend: Send {
    /// Every GPU, by index.
    fn inventory(&mut self) -> Result<Vec<GpuInventory>>;

    /// The NVIDIA driver version, when there is one.
    fn driver_version(&self) -> Option<String>;

    /// The current telemetry of every GPU of the inventory.
    fn sample(&mut self) -> Result<Vec<GpuSample>>;

    /// Health events seen since the last call, oldest first.
    fn take_events(&mut self) -> Vec<BackendEvent>;

    /// The backend's name as sent at registration: `nvml` or `sim`.
    fn name(&self) -> &'static str;

    /// The built-in burn-in check against the GPUs registered with the control plane.
    fn burn_in_check(&mut self, registered: &[GpuInventory]) -> BurnInOutcome;

    /// Scrubs GPUs after a workload ended, so that nothing of it is left for the next
    /// tenant (a GPU reset where the driver allows it). `shared` says the GPUs are shared
    /// with other workloads (MIG instances, shares), which a reset would disturb. Returns
    /// one line saying what was done, for the workload's report and the agent's log.
    fn scrub(&mut self, gpus: &[u32], shared: bool) -> String {
        let _ = shared;
        format!(
            "GPUs {} not scrubbed: the {} backend cannot reset GPUs",
            list(gpus),
            self.name()
        )
    }

    /// Injects a fault (simulated backends only). `Fault::Miss` is handled by the daemon.
    fn inject(&mut self, fault: &Fault) -> Result<()> {
        anyhow::bail!(
            "the {} backend cannot inject faults ({fault:?})",
            self.name()
        )
    }
}

/// GPU indexes as `0, 1, 2`.
pub fn list(gpus: &[u32]) -> String {
    gpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
