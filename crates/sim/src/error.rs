//! The simulator's one error type. Every message names the file, row or field at fault so
//! that a planner can fix the input without reading code.

use std::path::PathBuf;

/// Why a scenario could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A file named by the scenario (or the scenario itself) could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// What the file is for ("scenario", "fleet file", "trace").
        what: &'static str,
        /// The path as resolved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The scenario file is not valid TOML or does not have the expected fields.
    #[error("scenario {path}: {message}")]
    Scenario {
        /// The scenario file.
        path: PathBuf,
        /// What is wrong, with the TOML parser's line and column when it has them.
        message: String,
    },
    /// A value of the scenario is out of range or inconsistent.
    #[error("scenario: {field}: {message}")]
    Invalid {
        /// The field, as written in the file (`failures.node_afr`, `contracts[0].gpus`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The fleet file named by the scenario does not parse.
    #[error("fleet file {path}: {message}")]
    Fleet {
        /// The fleet file.
        path: PathBuf,
        /// The fleet parser's errors, one per line.
        message: String,
    },
    /// A row of a demand trace is malformed.
    #[error("trace {path}, row {row}: {message}")]
    TraceRow {
        /// The trace file.
        path: PathBuf,
        /// 1-based line number in the file (the header is row 1 of a CSV).
        row: usize,
        /// What is wrong with the row.
        message: String,
    },
    /// The production billing code refused the simulated usage (e.g. no price in force).
    #[error("billing: {0}")]
    Billing(#[from] neocloud_billing::BillingError),
    /// The scheduler refused a command the simulator gave it, or could not be built from
    /// the fleet: a bug, or a scenario it cannot run.
    #[error("scheduler: {0}")]
    Scheduler(String),
    /// Writing an output failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The output path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Shorthand for an [`SimError::Invalid`].
pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> SimError {
    SimError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}
