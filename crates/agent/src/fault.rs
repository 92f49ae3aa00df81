//! Fault specs: the small language used to inject faults into the simulated backend, from
//! `--sim-fault` and from the lines of `--sim-fault-file`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One fault to inject, optionally after a delay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    /// What to inject.
    pub fault: Fault,
    /// How long after the agent started to inject it (`@SECS`); `None` means now.
    pub delay: Option<Duration>,
}

/// What a fault spec injects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `xid:CODE:GPU`: an XID error with this code on this GPU.
    Xid {
        /// The XID code.
        code: u32,
        /// GPU index.
        gpu: u32,
    },
    /// `dbe:GPU`: a double-bit ECC error (uncorrected count + 1, and XID 48).
    Dbe {
        /// GPU index.
        gpu: u32,
    },
    /// `remap-pending:GPU`: rows wait to be remapped (and XID 63).
    RemapPending {
        /// GPU index.
        gpu: u32,
    },
    /// `remap-failed:GPU`: a row remapping failed (and XID 64).
    RemapFailed {
        /// GPU index.
        gpu: u32,
    },
    /// `thermal:GPU`: thermal slowdown at 92 °C (and a thermal-slowdown event).
    Thermal {
        /// GPU index.
        gpu: u32,
    },
    /// `clear:GPU`: reset the GPU's fault flags (error counters keep their values).
    Clear {
        /// GPU index.
        gpu: u32,
    },
    /// `miss:SECS`: send no heartbeat for this many seconds (events keep buffering).
    Miss {
        /// How long to stay silent.
        secs: u64,
    },
    /// `burn-in:pass|fail`: the result of the following burn-in checks.
    BurnIn {
        /// Whether they pass.
        pass: bool,
    },
}

impl Fault {
    /// The GPU index the fault concerns, if it concerns one.
    pub fn gpu(&self) -> Option<u32> {
        match *self {
            Fault::Xid { gpu, .. }
            | Fault::Dbe { gpu }
            | Fault::RemapPending { gpu }
            | Fault::RemapFailed { gpu }
            | Fault::Thermal { gpu }
            | Fault::Clear { gpu } => Some(gpu),
            Fault::Miss { .. } | Fault::BurnIn { .. } => None,
        }
    }
}

impl FaultSpec {
    /// Checks that the GPU index, if any, names one of `gpus` GPUs.
    pub fn check_gpu(&self, gpus: u32) -> Result<(), String> {
        match self.fault.gpu() {
            Some(gpu) if gpu >= gpus => Err(format!(
                "fault '{self}' names GPU {gpu}, but there are only {gpus} GPUs (0..={})",
                gpus.saturating_sub(1)
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fault {
            Fault::Xid { code, gpu } => write!(f, "xid:{code}:{gpu}")?,
            Fault::Dbe { gpu } => write!(f, "dbe:{gpu}")?,
            Fault::RemapPending { gpu } => write!(f, "remap-pending:{gpu}")?,
            Fault::RemapFailed { gpu } => write!(f, "remap-failed:{gpu}")?,
            Fault::Thermal { gpu } => write!(f, "thermal:{gpu}")?,
            Fault::Clear { gpu } => write!(f, "clear:{gpu}")?,
            Fault::Miss { secs } => write!(f, "miss:{secs}")?,
            Fault::BurnIn { pass } => write!(f, "burn-in:{}", if *pass { "pass" } else { "fail" })?,
        }
        match self.delay {
            Some(d) => write!(f, "@{}", d.as_secs()),
            None => Ok(()),
        }
    }
}

/// The grammar, for error messages and `--help`.
pub const FAULT_GRAMMAR: &str = "xid:CODE:GPU | dbe:GPU | remap-pending:GPU | remap-failed:GPU | \
     thermal:GPU | clear:GPU | miss:SECS | burn-in:pass|fail, each optionally followed by @SECS";

/// Parses one fault spec.
///
/// Grammar (GPU is a 0-based index, SECS and CODE are non-negative integers):
///
/// - `xid:CODE:GPU` — XID error CODE on GPU (e.g. `xid:79:3`: fallen off the bus).
/// - `dbe:GPU` — double-bit ECC error: uncorrected ECC count + 1 and XID 48.
/// - `remap-pending:GPU` — rows pending remap from now on, and XID 63.
/// - `remap-failed:GPU` — row remapping failure from now on, and XID 64.
/// - `thermal:GPU` — thermal slowdown at 92 °C, and a thermal-slowdown event.
/// - `clear:GPU` — reset the GPU's fault flags.
/// - `miss:SECS` — send no heartbeat for SECS seconds.
/// - `burn-in:pass` / `burn-in:fail` — the result of the next burn-in checks.
///
/// Any spec may end in `@SECS` to apply it SECS seconds after the agent started
/// (`xid:79:3@30`). Whitespace around the spec is ignored.
impl FromStr for FaultSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("bad fault spec '{s}': {why} (expected {FAULT_GRAMMAR})");
        let s = s.trim();
        let (body, delay) = match s.split_once('@') {
            Some((body, secs)) => {
                let secs = secs
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| bad("bad @SECS delay"))?;
                (body.trim(), Some(Duration::from_secs(secs)))
            }
            None => (s, None),
        };
        let parts: Vec<&str> = body.split(':').map(str::trim).collect();
        let num = |p: &str, what: &str| -> Result<u32, String> {
            p.parse::<u32>()
                .map_err(|_| bad(&format!("'{p}' is not a valid {what}")))
        };
        let fault = match parts.as_slice() {
            ["xid", code, gpu] => Fault::Xid {
                code: num(code, "XID code")?,
                gpu: num(gpu, "GPU index")?,
            },
            ["dbe", gpu] => Fault::Dbe {
                gpu: num(gpu, "GPU index")?,
            },
            ["remap-pending", gpu] => Fault::RemapPending {
                gpu: num(gpu, "GPU index")?,
            },
            ["remap-failed", gpu] => Fault::RemapFailed {
                gpu: num(gpu, "GPU index")?,
            },
            ["thermal", gpu] => Fault::Thermal {
                gpu: num(gpu, "GPU index")?,
            },
            ["clear", gpu] => Fault::Clear {
                gpu: num(gpu, "GPU index")?,
            },
            ["miss", secs] => Fault::Miss {
                secs: secs
                    .parse()
                    .map_err(|_| bad(&format!("'{secs}' is not a number of seconds")))?,
            },
            ["burn-in", "pass"] => Fault::BurnIn { pass: true },
            ["burn-in", "fail"] => Fault::BurnIn { pass: false },
            [kind, ..] if KINDS.contains(kind) => return Err(bad("wrong number of fields")),
            _ => return Err(bad("unknown fault")),
        };
        Ok(FaultSpec { fault, delay })
    }
}

const KINDS: &[&str] = &[
    "xid",
    "dbe",
    "remap-pending",
    "remap-failed",
    "thermal",
    "clear",
    "miss",
    "burn-in",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<FaultSpec, String> {
        s.parse()
    }

    #[test]
    fn parses_good_specs() {
        assert_eq!(
            p("xid:79:3").unwrap().fault,
            Fault::Xid { code: 79, gpu: 3 }
        );
        assert_eq!(p(" dbe:0 ").unwrap().fault, Fault::Dbe { gpu: 0 });
        assert_eq!(
            p("remap-pending:2").unwrap().fault,
            Fault::RemapPending { gpu: 2 }
        );
        assert_eq!(
            p("remap-failed:7").unwrap().fault,
            Fault::RemapFailed { gpu: 7 }
        );
        assert_eq!(p("thermal:1").unwrap().fault, Fault::Thermal { gpu: 1 });
        assert_eq!(p("clear:1").unwrap().fault, Fault::Clear { gpu: 1 });
        assert_eq!(p("miss:45").unwrap().fault, Fault::Miss { secs: 45 });
        assert_eq!(
            p("burn-in:fail").unwrap().fault,
            Fault::BurnIn { pass: false }
        );
        let delayed = p("xid:79:3@30").unwrap();
        assert_eq!(delayed.delay, Some(Duration::from_secs(30)));
        assert_eq!(delayed.to_string(), "xid:79:3@30");
        assert_eq!(p("burn-in:pass").unwrap().to_string(), "burn-in:pass");
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "",
            "xid",
            "xid:79",
            "xid:x:1",
            "xid:79:-1",
            "dbe:",
            "dbe:1:2",
            "boom:1",
            "miss:soon",
            "burn-in:maybe",
            "thermal:1@",
            "thermal:1@x",
            "XID:79:1",
        ] {
            let err = p(bad).unwrap_err();
            assert!(err.contains("bad fault spec"), "{bad}: {err}");
        }
    }

    #[test]
    fn checks_gpu_index() {
        assert!(p("xid:79:7").unwrap().check_gpu(8).is_ok());
        let err = p("xid:79:8").unwrap().check_gpu(8).unwrap_err();
        assert!(err.contains("only 8 GPUs"), "{err}");
        assert!(p("miss:10").unwrap().check_gpu(1).is_ok());
    }
}
