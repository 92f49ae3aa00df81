//! The simulated backend: N GPUs of one model with plausible, slowly varying telemetry and
//! faults injected on request (see [`crate::fault`]). Used for development, demos and tests,
//! and by the load generator.

use anyhow::{Context, Result};
use neocloud_types::{AgentEventKind, GpuInventory, GpuSample, Timestamp, builtin_gpu_models};

use crate::backend::{BackendEvent, BurnInOutcome, GpuBackend};
use crate::fault::Fault;

/// Memory (GiB) and power (W) assumed for a model the catalog does not know.
const DEFAULT_FIGURES: (u32, u32) = (80, 700);

/// 64-bit FNV-1a over some bytes, continuing from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Deterministic UUID (`GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`) and serial of simulated
/// GPU `index` of `hostname`.
pub fn sim_identity(hostname: &str, index: u32) -> (String, String) {
    let seed = fnv1a(fnv1a(FNV_OFFSET, hostname.as_bytes()), &index.to_le_bytes());
    let hi = fnv1a(seed, b"hi");
    let lo = fnv1a(seed, b"lo");
    let uuid = format!(
        "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    );
    (uuid, format!("SIM{:010}", lo % 10_000_000_000))
}

/// Memory (GiB) and TDP (W) of a catalog model, `None` when the catalog lacks it.
pub fn model_figures(model: &str) -> Option<(u32, u32)> {
    builtin_gpu_models()
        .into_iter()
        .find(|m| m.name == model)
        .map(|m| (m.memory_gib, m.tdp_watts))
}

struct SimGpu {
    inventory: GpuInventory,
    rng: u64,
    utilization: u32,
    ecc_corrected: u64,
    ecc_uncorrected: u64,
    remap_pending: bool,
    remap_failed: bool,
    thermal: bool,
}

impl SimGpu {
    /// xorshift64*: cheap, deterministic per GPU.
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n`.
    fn below(&mut self, n: u32) -> u32 {
        u32::try_from(self.next() % u64::from(n.max(1))).unwrap_or(0)
    }
}

/// Simulated GPUs.
pub struct SimBackend {
    gpus: Vec<SimGpu>,
    tdp_watts: u32,
    events: Vec<BackendEvent>,
    burn_in_pass: bool,
    scrubs: u64,
}

impl SimBackend {
    /// `count` GPUs of `model` on `hostname`; burn-ins pass when `burn_in_pass`. An unknown
    /// model is accepted with the figures of an 80 GiB, 700 W GPU (and a warning).
    pub fn new(hostname: &str, count: u32, model: &str, burn_in_pass: bool) -> Self {
        let (memory_gib, tdp_watts) = model_figures(model).unwrap_or_else(|| {
            tracing::warn!(
                model,
                "unknown GPU model; simulating {} GiB and {} W",
                DEFAULT_FIGURES.0,
                DEFAULT_FIGURES.1
            );
            DEFAULT_FIGURES
        });
        let gpus = (0..count)
            .map(|index| {
                let (uuid, serial) = sim_identity(hostname, index);
                let rng = fnv1a(FNV_OFFSET, uuid.as_bytes()) | 1;
                SimGpu {
                    inventory: GpuInventory {
                        index,
                        uuid,
                        name: format!("NVIDIA {model} (simulated)"),
                        serial: Some(serial),
                        memory_mib: u64::from(memory_gib) * 1024,
                        pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + index * 0x0e),
                    },
                    rng,
                    utilization: 0,
                    ecc_corrected: 0,
                    ecc_uncorrected: 0,
                    remap_pending: false,
                    remap_failed: false,
                    thermal: false,
                }
            })
            .collect::<Vec<_>>();
        let mut sim = SimBackend {
            gpus,
            tdp_watts,
            events: Vec::new(),
            burn_in_pass,
            scrubs: 0,
        };
        for gpu in &mut sim.gpus {
            gpu.utilization = gpu.below(101);
        }
        sim
    }

    /// GPU scrubs recorded so far (one per GPU).
    pub fn scrubs(&self) -> u64 {
        self.scrubs
    }

    fn gpu(&mut self, index: u32) -> Result<&mut SimGpu> {
        let count = self.gpus.len();
        usize::try_from(index)
            .ok()
            .and_then(|i| self.gpus.get_mut(i))
            .with_context(|| format!("no simulated GPU {index} (there are {count})"))
    }

    fn event(&mut self, uuid: String, kind: AgentEventKind) {
        self.events.push((Some(uuid), kind, Timestamp::now()));
    }

    fn xid(&mut self, index: u32, code: u32, detail: &str) -> Result<()> {
        let uuid = self.gpu(index)?.inventory.uuid.clone();
        let detail = Some(format!("{detail} (injected)"));
        self.event(uuid, AgentEventKind::Xid { code, detail });
        Ok(())
    }
}

impl GpuBackend for SimBackend {
    fn inventory(&mut self) -> Result<Vec<GpuInventory>> {
        Ok(self.gpus.iter().map(|g| g.inventory.clone()).collect())
    }

    fn driver_version(&self) -> Option<String> {
        None
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>> {
        let tdp = self.tdp_watts;
        Ok(self
            .gpus
            .iter_mut()
            .map(|g| {
                // Utilization drifts by at most 8 points per sample.
                let step = g.below(17);
                g.utilization = (g.utilization + step).saturating_sub(8).min(100);
                let u = g.utilization;
                if g.below(64) == 0 {
                    g.ecc_corrected += 1;
                }
                let noise = i32::try_from(g.below(5)).unwrap_or(2) - 2;
                let temp = 30 + i32::try_from(45 * u / 100).unwrap_or(0) + noise;
                let mem = g.inventory.memory_mib;
                GpuSample {
                    uuid: g.inventory.uuid.clone(),
                    temperature_c: if g.thermal { 92 } else { temp.clamp(30, 75) },
                    power_watts: tdp * (10 + 85 * u / 100) / 100,
                    utilization_pct: u,
                    memory_used_mib: mem * (5 + 85 * u64::from(u) / 100) / 100,
                    ecc_corrected: g.ecc_corrected,
                    ecc_uncorrected: g.ecc_uncorrected,
                    remap_pending: g.remap_pending,
                    remap_failed: g.remap_failed,
                    thermal_slowdown: g.thermal,
                }
            })
            .collect())
    }

    fn take_events(&mut self) -> Vec<BackendEvent> {
        std::mem::take(&mut self.events)
    }

    fn name(&self) -> &'static str {
        "sim"
    }

    fn burn_in_check(&mut self, registered: &[GpuInventory]) -> BurnInOutcome {
        let verdict = if self.burn_in_pass {
            "passed"
        } else {
            "failed"
        };
        BurnInOutcome {
            passed: self.burn_in_pass,
            output: format!("simulated burn-in of {} GPUs: {verdict}", registered.len()),
        }
    }

    fn scrub(&mut self, gpus: &[u32], shared: bool) -> String {
        self.scrubs += gpus.len() as u64;
        let what = if shared {
            "scrubbed (simulated; a shared GPU is not reset)"
        } else {
            "scrubbed (simulated reset)"
        };
        tracing::info!(
            gpus = %crate::backend::list(gpus),
            total = self.scrubs,
            "simulated GPU scrub"
        );
        format!("GPUs {} {what}", crate::backend::list(gpus))
    }

    fn inject(&mut self, fault: &Fault) -> Result<()> {
        match *fault {
            Fault::Xid { code, gpu } => self.xid(gpu, code, "XID error")?,
            Fault::Dbe { gpu } => {
                self.gpu(gpu)?.ecc_uncorrected += 1;
                self.xid(gpu, 48, "double-bit ECC error")?;
            }
            Fault::RemapPending { gpu } => {
                self.gpu(gpu)?.remap_pending = true;
                self.xid(gpu, 63, "row remapping pending")?;
            }
            Fault::RemapFailed { gpu } => {
                self.gpu(gpu)?.remap_failed = true;
                self.xid(gpu, 64, "row remapping failed")?;
            }
            Fault::Thermal { gpu } => {
                let g = self.gpu(gpu)?;
                g.thermal = true;
                let uuid = g.inventory.uuid.clone();
                self.event(uuid, AgentEventKind::ThermalSlowdown);
            }
            Fault::Clear { gpu } => {
                let g = self.gpu(gpu)?;
                (g.remap_pending, g.remap_failed, g.thermal) = (false, false, false);
            }
            Fault::BurnIn { pass } => self.burn_in_pass = pass,
            Fault::Miss { .. } => anyhow::bail!("miss faults are handled by the daemon"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_deterministic_and_distinct() {
        let (a, sa) = sim_identity("gpu-node-001", 0);
        assert_eq!(sim_identity("gpu-node-001", 0), (a.clone(), sa.clone()));
        assert_ne!(sim_identity("gpu-node-001", 1).0, a);
        assert_ne!(sim_identity("gpu-node-002", 0).0, a);
        assert_eq!(a.len(), 40, "{a}");
        let groups: Vec<usize> = a
            .trim_start_matches("GPU-")
            .split('-')
            .map(str::len)
            .collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(sa.starts_with("SIM") && sa.len() == 13);
    }

    #[test]
    fn inventory_matches_model() {
        let mut sim = SimBackend::new("n1", 16, "H200-SXM-141GB", true);
        let inv = sim.inventory().unwrap();
        assert_eq!(inv.len(), 16);
        assert_eq!(inv[0].memory_mib, 141 * 1024);
        assert_eq!(inv[0].pci_bus_id, "00000000:18:00.0");
        assert_eq!(inv[15].index, 15);
        assert_eq!(inv[1].name, "NVIDIA H200-SXM-141GB (simulated)");
        let unknown = SimBackend::new("n1", 1, "X9000", true).inventory().unwrap();
        assert_eq!(unknown[0].memory_mib, 80 * 1024);
    }

    #[test]
    fn telemetry_stays_in_bounds_and_ecc_only_grows() {
        let mut sim = SimBackend::new("n1", 8, "H100-SXM-80GB", true);
        let mut last = sim.sample().unwrap();
        for _ in 0..2000 {
            let now = sim.sample().unwrap();
            for (s, prev) in now.iter().zip(&last) {
                assert!((30..=75).contains(&s.temperature_c), "{s:?}");
                assert!((70..=665).contains(&s.power_watts), "{s:?}");
                assert!(s.utilization_pct <= 100);
                assert!(s.memory_used_mib <= 80 * 1024);
                assert!(s.utilization_pct.abs_diff(prev.utilization_pct) <= 8);
                assert!(s.ecc_corrected >= prev.ecc_corrected);
                assert!(s.ecc_uncorrected >= prev.ecc_uncorrected);
                assert!(!s.remap_pending && !s.remap_failed && !s.thermal_slowdown);
            }
            last = now;
        }
        assert!(last.iter().any(|s| s.ecc_corrected > 0));
    }

    #[test]
    fn faults_change_samples_and_emit_events() {
        let mut sim = SimBackend::new("n1", 4, "H100-SXM-80GB", true);
        sim.inject(&Fault::Dbe { gpu: 1 }).unwrap();
        sim.inject(&Fault::RemapFailed { gpu: 2 }).unwrap();
        sim.inject(&Fault::Thermal { gpu: 3 }).unwrap();
        sim.inject(&Fault::Xid { code: 79, gpu: 0 }).unwrap();
        assert!(sim.inject(&Fault::Xid { code: 79, gpu: 4 }).is_err());
        let s = sim.sample().unwrap();
        assert_eq!(s[1].ecc_uncorrected, 1);
        assert!(s[2].remap_failed);
        assert!(s[3].thermal_slowdown && s[3].temperature_c == 92);
        let kinds: Vec<_> = sim.take_events().into_iter().map(|e| e.1).collect();
        assert!(matches!(kinds[0], AgentEventKind::Xid { code: 48, .. }));
        assert!(matches!(kinds[1], AgentEventKind::Xid { code: 64, .. }));
        assert_eq!(kinds[2], AgentEventKind::ThermalSlowdown);
        assert!(matches!(kinds[3], AgentEventKind::Xid { code: 79, .. }));
        assert!(sim.take_events().is_empty());
        sim.inject(&Fault::Clear { gpu: 3 }).unwrap();
        sim.inject(&Fault::Clear { gpu: 2 }).unwrap();
        let s = sim.sample().unwrap();
        assert!(!s[3].thermal_slowdown && !s[2].remap_failed && s[1].ecc_uncorrected == 1);
        sim.inject(&Fault::BurnIn { pass: false }).unwrap();
        assert!(!sim.burn_in_check(&[]).passed);
    }
}
