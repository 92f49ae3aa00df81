//! Converting a public GPU cluster trace into the simulator's trace format.
//!
//! Supported: Alibaba's `cluster-trace-gpu-v2020` (the PAI trace), from its task table
//! `pai_task_table.csv` (columns `job_name, task_name, inst_num, status, start_time,
//! end_time, plan_cpu, plan_mem, plan_gpu, gpu_type`) and, optionally, its job table
//! `pai_job_table.csv` (`job_name, inst_id, user, status, start_time, end_time`), which gives
//! each task its user (the tenant) and its job's submission time. The published files have no
//! header row; a first row starting with `job_name` is taken as a header and skipped.
//!
//! How a task becomes a request:
//! - `plan_gpu` is a percentage of one GPU per instance (50 = half a GPU, 200 = two); a
//!   fraction rounds up, since neocloud does not split a GPU. Tasks without GPUs are skipped.
//! - GPUs of the task = `inst_num` × GPUs per instance; up to 8 they become one node's aligned
//!   group (`gpus:1|2|4|8`, rounded up to the next size); above 8, a gang of whole 8-GPU nodes
//!   anywhere in the site (`nodes:⌈GPUs/8⌉:site`).
//! - Arrival is the job's submission time (the task's start without the job table), shifted
//!   so that the earliest arrival is 0; duration is the task's end − start. Tasks without
//!   both times (never ran, still running) are skipped.
//! - The GPU model, class and queue patience are the caller's: the trace's GPU types
//!   (V100, P100, T4, MISC) are older than the fleets neocloud plans for.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "floats here are workload figures (hours, rates, counts) checked finite and in range before they become integers, and `as` saturates; money never passes through a float"
)]

use std::collections::BTreeMap;

use neocloud_types::{Class, GangLevel, Shape};

use crate::trace::TraceRow;

/// Choices the trace does not make.
#[derive(Clone, Debug)]
pub struct AlibabaOptions {
    /// GPU model every request asks for.
    pub gpu_model: String,
    /// Class of every request.
    pub class: Class,
    /// Seconds a request may wait.
    pub max_wait_s: i64,
    /// One tenant for every request, instead of the job table's users.
    pub tenant: Option<String>,
}

/// What a conversion did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Task rows read.
    pub rows: usize,
    /// Requests written.
    pub converted: usize,
    /// Tasks without GPUs.
    pub skipped_no_gpu: usize,
    /// Tasks without a start and an end.
    pub skipped_unfinished: usize,
}

fn fields(line: &str) -> Vec<&str> {
    line.split(',').map(str::trim).collect()
}

fn is_header(line: &str) -> bool {
    line.trim_start().starts_with("job_name")
}

fn time(s: &str) -> Option<i64> {
    let v: f64 = s.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| v.round() as i64)
}

/// Converts Alibaba v2020 task (and optionally job) table text into trace rows. Errors name
/// the table and the 1-based line.
pub fn alibaba_v2020(
    tasks_csv: &str,
    jobs_csv: Option<&str>,
    opts: &AlibabaOptions,
) -> Result<(Vec<TraceRow>, ConvertStats), String> {
    // Job name → (user, submission time).
    let mut jobs: BTreeMap<&str, (&str, Option<i64>)> = BTreeMap::new();
    if let Some(text) = jobs_csv {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || (i == 0 && is_header(line)) {
                continue;
            }
            let f = fields(line);
            if f.len() != 6 {
                return Err(format!(
                    "job table, line {}: expected 6 fields (job_name, inst_id, user, status, start_time, end_time), got {}",
                    i + 1,
                    f.len()
                ));
            }
            if f[0].is_empty() {
                return Err(format!("job table, line {}: job_name is empty", i + 1));
            }
            jobs.insert(f[0], (f[2], time(f[4])));
        }
    }
    let mut stats = ConvertStats::default();
    let mut raw: Vec<(i64, String, Shape, i64, usize)> = Vec::new();
    for (i, line) in tasks_csv.lines().enumerate() {
        let row = i + 1;
        if line.trim().is_empty() || (i == 0 && is_header(line)) {
            continue;
        }
        stats.rows += 1;
        let f = fields(line);
        if f.len() != 10 {
            return Err(format!(
                "task table, line {row}: expected 10 fields (job_name, task_name, inst_num, status, start_time, end_time, plan_cpu, plan_mem, plan_gpu, gpu_type), got {}",
                f.len()
            ));
        }
        let plan_gpu: f64 = if f[8].is_empty() {
            0.0
        } else {
            f[8].parse().map_err(|_| {
                format!(
                    "task table, line {row}: plan_gpu '{}' is not a number",
                    f[8]
                )
            })?
        };
        if !plan_gpu.is_finite() || plan_gpu < 0.0 {
            return Err(format!(
                "task table, line {row}: plan_gpu must be ≥ 0, got {}",
                f[8]
            ));
        }
        let inst: f64 = if f[2].is_empty() {
            1.0
        } else {
            f[2].parse().map_err(|_| {
                format!(
                    "task table, line {row}: inst_num '{}' is not a number",
                    f[2]
                )
            })?
        };
        if !inst.is_finite() || inst < 0.0 {
            return Err(format!(
                "task table, line {row}: inst_num must be ≥ 0, got {}",
                f[2]
            ));
        }
        if plan_gpu == 0.0 || inst == 0.0 {
            stats.skipped_no_gpu += 1;
            continue;
        }
        let (Some(start), Some(end)) = (time(f[4]), time(f[5])) else {
            stats.skipped_unfinished += 1;
            continue;
        };
        if end <= start {
            stats.skipped_unfinished += 1;
            continue;
        }
        let per_inst = (plan_gpu / 100.0).ceil().max(1.0);
        let total = (per_inst * inst.round().max(1.0)).min(1e6) as u32;
        let shape = if total <= 8 {
            Shape::Gpus {
                gpus: total.next_power_of_two(),
            }
        } else {
            Shape::Nodes {
                count: total.div_ceil(8),
                level: GangLevel::Site,
            }
        };
        let job = jobs.get(f[0]);
        let arrival = job.and_then(|j| j.1).map_or(start, |t| t.min(start));
        let tenant = match (&opts.tenant, job) {
            (Some(t), _) => t.clone(),
            (None, Some((user, _))) if !user.is_empty() => (*user).to_string(),
            _ => "alibaba".to_string(),
        };
        raw.push((arrival, tenant, shape, end - start, row));
        stats.converted += 1;
    }
    let t0 = raw.iter().map(|r| r.0).min().unwrap_or(0);
    raw.sort_by_key(|r| (r.0, r.4));
    let rows = raw
        .into_iter()
        .map(|(arrival, tenant, shape, duration, row)| TraceRow {
            row,
            arrival_s: arrival - t0,
            tenant,
            class: opts.class,
            gpu_model: opts.gpu_model.clone(),
            shape,
            duration_s: duration,
            max_wait_s: opts.max_wait_s,
            site: None,
        })
        .collect();
    Ok((rows, stats))
}
