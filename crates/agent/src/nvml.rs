//! The NVML backend: real NVIDIA GPUs through the NVIDIA Management Library, loaded at run
//! time (`libnvidia-ml.so.1`), so the same binary starts on machines without a driver.
//!
//! What is read:
//!
//! - inventory: index, UUID, product name, board serial (when reported), total memory (MiB)
//!   and PCI bus id of every device; the driver version;
//! - each sample: GPU die temperature (°C), power draw (mW, reported in W), GPU utilization
//!   (%), memory used (MiB), volatile ECC error counts (corrected and uncorrected), the row
//!   remapping flags (pending, failure; field values 144 and 145) and whether the current
//!   clock-event (throttle) reasons include hardware or software thermal slowdown;
//! - events: critical XID errors of every device, from an NVML event set polled by a
//!   dedicated thread (500 ms waits), plus a thermal-slowdown event when a GPU starts to slow
//!   down for heat.
//!
//! A field a device does not support reads as a neutral value (0, `false`) instead of
//! failing the sample; a device that cannot be reached at all is left out of the sample.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use neocloud_types::{AgentEventKind, GpuInventory, GpuSample, Timestamp};
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::FieldValueSample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_REMAPPED_FAILURE, NVML_FI_DEV_REMAPPED_PENDING,
};
use nvml_wrapper::{Device, Nvml};

use crate::backend::{BackendEvent, BurnInOutcome, GpuBackend};

const MIB: u64 = 1024 * 1024;

/// Real GPUs through NVML.
pub struct NvmlBackend {
    nvml: Arc<Nvml>,
    uuids: Vec<String>,
    thermal: HashSet<String>,
    pending: Vec<BackendEvent>,
    xids: mpsc::Receiver<BackendEvent>,
    stop: Arc<AtomicBool>,
}

impl NvmlBackend {
    /// Loads NVML, takes the inventory and starts watching XID errors of every device.
    pub fn new() -> Result<Self> {
        let nvml = Nvml::init().map_err(|e| {
            anyhow::anyhow!(
                "NVML is not available on this machine ({e}); is the NVIDIA driver installed? \
                 Use --backend sim to simulate GPUs."
            )
        })?;
        let (tx, xids) = mpsc::channel();
        let mut backend = NvmlBackend {
            nvml: Arc::new(nvml),
            uuids: Vec::new(),
            thermal: HashSet::new(),
            pending: Vec::new(),
            xids,
            stop: Arc::new(AtomicBool::new(false)),
        };
        backend.uuids = backend.inventory()?.into_iter().map(|g| g.uuid).collect();
        let (nvml, stop) = (backend.nvml.clone(), backend.stop.clone());
        std::thread::Builder::new()
            .name("nvml-events".into())
            .spawn(move || watch_xids(&nvml, &tx, &stop))
            .context("starting the NVML event thread")?;
        Ok(backend)
    }

    fn sample_one(&mut self, device: &Device<'_>, uuid: &str) -> GpuSample {
        let ecc = |kind| {
            device
                .total_ecc_errors(kind, EccCounter::Volatile)
                .unwrap_or(0)
        };
        let (remap_pending, remap_failed) = remap_flags(device);
        let hot = ThrottleReasons::HW_THERMAL_SLOWDOWN | ThrottleReasons::SW_THERMAL_SLOWDOWN;
        let thermal_slowdown = device
            .current_throttle_reasons()
            .is_ok_and(|r| r.intersects(hot));
        if !thermal_slowdown {
            self.thermal.remove(uuid);
        } else if self.thermal.insert(uuid.to_string()) {
            let event = (
                Some(uuid.to_string()),
                AgentEventKind::ThermalSlowdown,
                Timestamp::now(),
            );
            self.pending.push(event);
        }
        GpuSample {
            uuid: uuid.to_string(),
            temperature_c: device
                .temperature(TemperatureSensor::Gpu)
                .ok()
                .and_then(|t| i32::try_from(t).ok())
                .unwrap_or(0),
            power_watts: device.power_usage().map(|mw| mw / 1000).unwrap_or(0),
            utilization_pct: device.utilization_rates().map(|u| u.gpu).unwrap_or(0),
            memory_used_mib: device.memory_info().map(|m| m.used / MIB).unwrap_or(0),
            ecc_corrected: ecc(MemoryError::Corrected),
            ecc_uncorrected: ecc(MemoryError::Uncorrected),
            remap_pending,
            remap_failed,
            thermal_slowdown,
        }
    }
}

impl Drop for NvmlBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether rows are pending remap, and whether a remapping failed; `false` where the device
/// does not report it.
fn remap_flags(device: &Device<'_>) -> (bool, bool) {
    let ids = [
        FieldId(NVML_FI_DEV_REMAPPED_PENDING),
        FieldId(NVML_FI_DEV_REMAPPED_FAILURE),
    ];
    let set = |v: Option<&Result<FieldValueSample, NvmlError>>| match v {
        Some(Ok(FieldValueSample {
            value: Ok(value), ..
        })) => match value {
            SampleValue::U32(x) => *x != 0,
            SampleValue::U64(x) => *x != 0,
            SampleValue::I64(x) => *x != 0,
            SampleValue::F64(x) => *x != 0.0,
        },
        _ => false,
    };
    match device.field_values_for(&ids) {
        Ok(values) => (set(values.first()), set(values.get(1))),
        Err(_) => (false, false),
    }
}

/// Registers every device for critical XID errors and forwards them until `stop` is set.
fn watch_xids(nvml: &Nvml, tx: &mpsc::Sender<BackendEvent>, stop: &AtomicBool) {
    let count = nvml.device_count().unwrap_or(0);
    let mut watched: Vec<Device<'_>> = Vec::new();
    let Ok(mut set) = nvml.create_event_set() else {
        tracing::warn!("cannot create an NVML event set; XID errors will not be reported");
        return;
    };
    for index in 0..count {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        let supported = device
            .supported_event_types()
            .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
        if !supported {
            tracing::warn!(index, "GPU does not report XID errors");
            continue;
        }
        match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(s) => {
                set = s;
                watched.push(device);
            }
            Err(e) => {
                // A failed registration frees the set: build it again from the devices that
                // registered before.
                tracing::warn!(index, error = %e.error, "cannot watch XID errors of GPU");
                let rebuilt = nvml
                    .create_event_set()
                    .map_err(Into::into)
                    .and_then(|mut s| {
                        for d in &watched {
                            s = d.register_events(EventTypes::CRITICAL_XID_ERROR, s)?;
                        }
                        Ok::<_, nvml_wrapper::error::NvmlErrorWithSource>(s)
                    });
                match rebuilt {
                    Ok(s) => set = s,
                    Err(e) => {
                        tracing::warn!(error = %e.error, "XID errors will not be reported");
                        return;
                    }
                }
            }
        }
    }
    tracing::debug!(gpus = watched.len(), "watching XID errors");
    while !stop.load(Ordering::Relaxed) {
        match set.wait(500) {
            Ok(data) => {
                let uuid = data.device.uuid().ok();
                let (code, detail) = match data.event_data {
                    Some(XidError::Value(v)) => (u32::try_from(v).unwrap_or(u32::MAX), None),
                    Some(XidError::Unknown) | None => (999, Some("unknown XID".to_string())),
                };
                tracing::warn!(gpu = ?uuid, code, "XID error");
                let kind = AgentEventKind::Xid { code, detail };
                if tx.send((uuid, kind, Timestamp::now())).is_err() {
                    return;
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => {
                tracing::warn!(error = %e, "waiting for NVML events failed");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

impl GpuBackend for NvmlBackend {
    fn inventory(&mut self) -> Result<Vec<GpuInventory>> {
        let count = self.nvml.device_count().context("counting GPUs")?;
        (0..count)
            .map(|index| {
                let d = self
                    .nvml
                    .device_by_index(index)
                    .with_context(|| format!("GPU {index}"))?;
                Ok(GpuInventory {
                    index,
                    uuid: d.uuid().with_context(|| format!("UUID of GPU {index}"))?,
                    name: d.name().unwrap_or_else(|_| "NVIDIA GPU".to_string()),
                    serial: d.serial().ok().filter(|s| !s.is_empty()),
                    memory_mib: d.memory_info().map(|m| m.total / MIB).unwrap_or(0),
                    pci_bus_id: d.pci_info().map(|p| p.bus_id).unwrap_or_default(),
                })
            })
            .collect()
    }

    fn driver_version(&self) -> Option<String> {
        self.nvml.sys_driver_version().ok()
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>> {
        let nvml = self.nvml.clone();
        let mut samples = Vec::with_capacity(self.uuids.len());
        for uuid in self.uuids.clone() {
            match nvml.device_by_uuid(uuid.as_str()) {
                Ok(device) => samples.push(self.sample_one(&device, &uuid)),
                Err(e) => tracing::warn!(gpu = %uuid, error = %e, "GPU cannot be reached"),
            }
        }
        Ok(samples)
    }

    fn take_events(&mut self) -> Vec<BackendEvent> {
        let mut events = std::mem::take(&mut self.pending);
        events.extend(self.xids.try_iter());
        events.sort_by_key(|e| e.2);
        events
    }

    fn name(&self) -> &'static str {
        "nvml"
    }

    fn burn_in_check(&mut self, registered: &[GpuInventory]) -> BurnInOutcome {
        let nvml = self.nvml.clone();
        let mut passed = true;
        let mut output = String::new();
        for gpu in registered {
            let line = match nvml.device_by_uuid(gpu.uuid.as_str()) {
                Err(e) => format!("GPU {} {}: not visible ({e})", gpu.index, gpu.uuid),
                Ok(device) => {
                    let s = self.sample_one(&device, &gpu.uuid);
                    if s.remap_failed || s.ecc_uncorrected > 0 {
                        format!(
                            "GPU {} {}: FAILED (remap failure: {}, uncorrected ECC errors: {})",
                            gpu.index, gpu.uuid, s.remap_failed, s.ecc_uncorrected
                        )
                    } else {
                        output.push_str(&format!("GPU {} {}: ok\n", gpu.index, gpu.uuid));
                        continue;
                    }
                }
            };
            passed = false;
            output.push_str(&line);
            output.push('\n');
        }
        output.push_str(if passed {
            "burn-in passed"
        } else {
            "burn-in failed"
        });
        BurnInOutcome { passed, output }
    }

    /// Resets each GPU with `nvidia-smi --gpu-reset` (NVML has no reset call), after
    /// resetting its application and locked clocks. A shared GPU (MIG, shares) is not reset:
    /// that would end its other workloads. A reset the driver refuses (processes still on
    /// the GPU, NVLink peers, no permission) is recorded, not retried.
    fn scrub(&mut self, gpus: &[u32], shared: bool) -> String {
        let mut lines = Vec::new();
        for &index in gpus {
            if let Ok(mut d) = self.nvml.device_by_index(index) {
                let _ = d.reset_applications_clocks();
                let _ = d.reset_gpu_locked_clocks();
            }
            if shared {
                lines.push(format!(
                    "GPU {index} not reset (shared with other workloads)"
                ));
                continue;
            }
            let out = std::process::Command::new("nvidia-smi")
                .args(["--gpu-reset", "-i", &index.to_string()])
                .output();
            lines.push(match out {
                Ok(o) if o.status.success() => format!("GPU {index} reset"),
                Ok(o) => {
                    let text = String::from_utf8_lossy(&o.stdout).into_owned()
                        + &String::from_utf8_lossy(&o.stderr);
                    let why = text.lines().map(str::trim).find(|l| !l.is_empty());
                    format!(
                        "GPU {index} could not be reset: {}",
                        why.unwrap_or("failed")
                    )
                }
                Err(e) => format!("GPU {index} could not be reset: nvidia-smi: {e}"),
            });
        }
        lines.join("; ")
    }
}
