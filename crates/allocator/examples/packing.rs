//! Packing quality on a real GPU cluster trace: Alibaba's cluster-trace-gpu-v2023, the trace
//! of the FGD paper (Weng et al., "Beware of Fragmentation", USENIX ATC '23).
//!
//! The node list is the fleet (1,213 nodes, 6,212 GPUs of 12 kinds, with their CPU and
//! memory); the task list is the demand (8,152 tasks: CPU-only, shares of one GPU, whole
//! GPUs). The method is the paper's simulator's: per seed, shuffle the tasks, then tune the
//! list to 130 % of the cluster's GPU capacity (append random copies while under, drop
//! random tasks while over), place the tasks in order through the production allocator,
//! never release anything, skip a task that does not fit. Reported: the share of the
//! cluster's GPU capacity allocated at the end (and when 100 % had arrived), over seeds.
//!
//! ```text
//! cargo run --release -p neocloud-allocator --example packing -- DIR [SEEDS] [MIX]
//! ```
//!
//! A task whose gpu_spec lists models is one decision among them
//! (`Allocator::place_among`); with `PACKING_PER_MODEL` set it is tried model by model.
//!
//! `MIX` (default `default`, the trace's task list) resamples the task list before each
//! seed's tuning, to measure the policy on other mixes: `multi-gpu`, `sharing`,
//! `constrained` (tasks that accept only some GPU models) and `cpu` (see [`MIXES`]).
//!
//! `DIR` holds `openb_node_list_gpu_node.csv` and `openb_pod_list_default.csv` (read by
//! `common/openb.rs`: a malformed row stops the run with its file and line); `SEEDS`
//! (default 10) seeds 42, 43, … are run for every policy.

use std::time::Instant;

use neocloud_allocator::synthetic::{Rng, instance_id, node_id, site_id, tenant_id};
use neocloud_allocator::{
    Allocator, FleetPolicy, NodeSpec, PlacementPolicy, Request, Shape, Sharing, SiteSpec,
};
use neocloud_types::Class;

#[path = "common/openb.rs"]
mod openb;

use openb::{Node, Task};

fn shape(t: &Task) -> Shape {
    match (t.gpus, t.gpu_milli) {
        (0, _) | (_, 0) => Shape::Cpu,
        (1, m) if m < 1000 => Shape::Share { milli: m },
        (k, _) => Shape::Gpus { gpus: k },
    }
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

fn load(dir: &str) -> Result<(Vec<Node>, Vec<Task>), String> {
    let path = format!("{dir}/openb_node_list_gpu_node.csv");
    let nodes = openb::read_nodes(&path, &read(&path)?)?;
    let mut models: Vec<&str> = nodes.iter().map(|n| n.model.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    let path = format!("{dir}/openb_pod_list_default.csv");
    let tasks = openb::read_tasks(&path, &read(&path)?, &models)?;
    Ok((nodes, tasks))
}

/// A task list resampled from the trace's: `name` and what it changes.
const MIXES: [(&str, &str); 5] = [
    ("default", "the trace's task list as it is"),
    (
        "multi-gpu",
        "multi-GPU tasks (2, 4, 8 GPUs) drawn 8× as often: about 40 % of the GPUs asked",
    ),
    (
        "sharing",
        "tasks sharing one GPU drawn 3× as often: about half the GPUs asked",
    ),
    (
        "constrained",
        "half the GPU tasks accept only 1 or 2 models (gpu_spec), drawn by GPU capacity among those with a node they fit",
    ),
    (
        "cpu",
        "CPU-only tasks drawn 2× as often: the tasks ask about 120 % of the cores per GPU asked",
    ),
];

/// Which kind of task: CPU only, a share of one GPU, one GPU, several GPUs.
fn kind(t: &Task) -> usize {
    match (t.gpus, t.gpu_milli) {
        (0, _) => 0,
        (1, m) if m < 1000 => 1,
        (1, _) => 2,
        _ => 3,
    }
}

/// The trace's task list resampled for a mix (as many tasks, drawn with replacement, each
/// kind weighted by the mix), for one seed. `default` is the list itself.
fn resample(tasks: &[Task], nodes: &[Node], mix: &str, seed: u64) -> Vec<Task> {
    let weights: [u64; 4] = match mix {
        "multi-gpu" => [1, 1, 1, 8],
        "sharing" => [1, 3, 1, 1],
        "cpu" => [2, 1, 1, 1],
        "constrained" => [1, 1, 1, 1],
        _ => return tasks.to_vec(),
    };
    let mut rng = Rng::new(seed ^ 0x0005_eed0_fa11_7a5c);
    let by_kind: Vec<Vec<&Task>> = (0..4)
        .map(|k| tasks.iter().filter(|t| kind(t) == k).collect())
        .collect();
    let total: u64 = (0..4).map(|k| by_kind[k].len() as u64 * weights[k]).sum();
    let mut models: Vec<(&str, u64)> = Vec::new();
    for n in nodes {
        match models.iter_mut().find(|(m, _)| *m == n.model) {
            Some(m) => m.1 += u64::from(n.gpus),
            None => models.push((&n.model, u64::from(n.gpus))),
        }
    }
    let mut out = Vec::with_capacity(tasks.len());
    while out.len() < tasks.len() {
        let mut pick = rng.below(total.max(1));
        let Some(k) = (0..4).find(|&k| {
            let w = by_kind[k].len() as u64 * weights[k];
            if pick < w {
                true
            } else {
                pick -= w;
                false
            }
        }) else {
            break;
        };
        let list = &by_kind[k];
        let mut t = list[usize::try_from(rng.below(list.len() as u64)).unwrap_or(0)].clone();
        if mix == "constrained" && t.gpus > 0 && rng.chance(0.5) {
            // Models with a node the task fits, by GPU capacity; one, or two half the time.
            let fits: Vec<(&str, u64)> = models
                .iter()
                .filter(|(m, _)| {
                    nodes.iter().any(|n| {
                        n.model == *m
                            && n.gpus >= t.gpus
                            && n.cpu_milli >= t.cpu_milli
                            && n.memory_mib >= t.memory_mib
                    })
                })
                .copied()
                .collect();
            let draw = |rng: &mut Rng, except: Option<&str>| {
                let pool: Vec<&(&str, u64)> =
                    fits.iter().filter(|(m, _)| Some(*m) != except).collect();
                let sum: u64 = pool.iter().map(|(_, g)| g).sum();
                let mut p = rng.below(sum.max(1));
                pool.iter()
                    .find(|(_, g)| {
                        if p < *g {
                            true
                        } else {
                            p -= g;
                            false
                        }
                    })
                    .map(|(m, _)| m.to_string())
            };
            if let Some(first) = draw(&mut rng, None) {
                let second = if rng.chance(0.5) {
                    draw(&mut rng, Some(&first))
                } else {
                    None
                };
                t.models = std::iter::once(first).chain(second).collect();
            }
        }
        out.push(t);
    }
    out
}

/// The task list of one seed: shuffled, then tuned to `ratio` of the GPU capacity.
fn tuned(tasks: &[Task], capacity_milli: u64, ratio_pct: u64, seed: u64) -> Vec<Task> {
    let mut rng = Rng::new(seed);
    let mut list: Vec<Task> = tasks.to_vec();
    for i in (1..list.len()).rev() {
        let j = usize::try_from(rng.below(i as u64 + 1)).unwrap_or(0);
        list.swap(i, j);
    }
    let target = capacity_milli * ratio_pct / 100;
    let mut total: u64 = list.iter().map(Task::gpu_demand).sum();
    while total < target {
        let t = &tasks[usize::try_from(rng.below(tasks.len() as u64)).unwrap_or(0)];
        if total + t.gpu_demand() > target {
            break;
        }
        total += t.gpu_demand();
        list.push(t.clone());
    }
    while total > target && !list.is_empty() {
        let i = usize::try_from(rng.below(list.len() as u64)).unwrap_or(0);
        total -= list[i].gpu_demand();
        list.remove(i);
    }
    list
}

fn build(nodes: &[Node], placement: PlacementPolicy) -> Result<Allocator, String> {
    let mut a = Allocator::new(FleetPolicy::LabFirst, placement);
    // The boards' topologies: the allocator's default for the trace's model codes (V100:
    // NVLink quads; T4, P100, A10 and the undisclosed G1–G3: aligned groups), or as
    // PACKING_TOPOLOGY says (`MODEL=TOPOLOGY,…`, e.g. `G2=nvswitch`).
    if let Ok(list) = std::env::var("PACKING_TOPOLOGY") {
        for item in list.split(',').filter(|s| !s.trim().is_empty()) {
            let (model, topology) = item
                .split_once('=')
                .ok_or_else(|| format!("PACKING_TOPOLOGY: '{item}' is not MODEL=TOPOLOGY"))?;
            let topology = topology
                .parse()
                .map_err(|e| format!("PACKING_TOPOLOGY: {model}: {e}"))?;
            a.set_model_topology(model.trim(), topology)?;
        }
    }
    let site = site_id(1);
    a.add_site(SiteSpec {
        id: site,
        power_limit_watts: i64::MAX,
        pue_milli: 1000,
    });
    for (i, n) in nodes.iter().enumerate() {
        a.add_node(NodeSpec {
            id: node_id(i as u64 + 1),
            site,
            gpu_model: n.model.clone(),
            gpus: n.gpus,
            blocks: Vec::new(),
            idle_watts: 0,
            peak_watts: 0,
            shareable: true,
            cpu_milli: n.cpu_milli,
            memory_mib: n.memory_mib,
            mig: None,
            sharing: Sharing {
                slices: true,
                tenants_per_gpu: true,
                cpu_only: true,
            },
        })?;
    }
    Ok(a)
}

/// (allocated share at the end, allocated share when 100 % had arrived, decisions/s).
fn run(
    nodes: &[Node],
    list: &[Task],
    placement: PlacementPolicy,
) -> Result<(f64, f64, f64), String> {
    let mut a = build(nodes, placement)?;
    let capacity: u64 = nodes.iter().map(|n| u64::from(n.gpus) * 1000).sum();
    let (mut arrived, mut allocated, mut at_full) = (0u64, 0u64, None);
    let mut fails = [(0u64, 0u64, 0u64); 4];
    let per_model = std::env::var("PACKING_PER_MODEL").is_ok();
    let started = Instant::now();
    for (i, t) in list.iter().enumerate() {
        arrived += t.gpu_demand();
        let req = Request {
            id: instance_id(i as u64 + 1),
            tenant: tenant_id(1),
            class: Class::OnDemand,
            gpu_model: String::new(),
            shape: shape(t),
            site: None,
            pool: None,
            cpu_milli: Some(t.cpu_milli),
            memory_mib: Some(t.memory_mib),
        };
        // A task that accepts some models is one decision among them (an empty gpu_model
        // is any model).
        let placed = if t.models.is_empty() {
            a.place(&req).map(|_| ()).map_err(|e| e.to_string())
        } else if per_model {
            // As measured before: model by model, each try a request of its own.
            let mut tried = Err(String::new());
            for m in &t.models {
                let r = Request {
                    gpu_model: m.clone(),
                    ..req.clone()
                };
                tried = a.place(&r).map_err(|e| e.to_string());
                if tried.is_ok() {
                    break;
                }
            }
            tried.map(|_| ())
        } else {
            a.place_among(&req, &t.models)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match placed {
            Ok(_) => allocated += t.gpu_demand(),
            Err(_) => {
                let k = match shape(t) {
                    Shape::Cpu => 0,
                    Shape::Share { .. } => 1,
                    Shape::Gpus { gpus: 1 } => 2,
                    _ => 3,
                };
                fails[k].0 += 1;
                fails[k].1 += t.gpu_demand();
                if arrived < capacity {
                    fails[k].2 += 1;
                }
            }
        }
        if at_full.is_none() && arrived >= capacity {
            at_full = Some(allocated);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    a.check_invariants()?;
    if std::env::var("PACKING_DEBUG").is_ok() {
        eprintln!("failed (count, gpu milli, before 100%) cpu/share/1gpu/multi: {fails:?}");
        diagnose(&a, nodes, list);
    }
    let share = |x: u64| x as f64 * 100.0 / capacity as f64;
    Ok((
        share(allocated),
        share(at_full.unwrap_or(allocated)),
        list.len() as f64 / secs.max(1e-9),
    ))
}

/// Where the free GPU capacity is at the end, and why the remaining tasks cannot use it.
fn diagnose(a: &Allocator, nodes: &[Node], list: &[Task]) {
    use std::collections::BTreeMap;
    let mut cpu = vec![0u64; nodes.len()];
    let mut mem = vec![0u64; nodes.len()];
    let mut gpu: Vec<BTreeMap<u32, u64>> = vec![BTreeMap::new(); nodes.len()];
    for al in a.allocations() {
        for (n, idx) in &al.gpus {
            let i = nodes
                .iter()
                .enumerate()
                .position(|(k, _)| node_id(k as u64 + 1) == *n)
                .unwrap_or(0);
            cpu[i] += al.cpu_milli;
            mem[i] += al.memory_mib;
            for g in idx {
                let m = match al.shape {
                    Shape::Share { milli } => u64::from(milli),
                    _ => 1000,
                };
                *gpu[i].entry(*g).or_default() += m;
            }
        }
    }
    let min_cpu_gpu_task = list
        .iter()
        .filter(|t| t.gpus > 0)
        .map(|t| t.cpu_milli)
        .min()
        .unwrap_or(0);
    let (mut cpu_short, mut mem_short, mut partial, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut by_model: BTreeMap<String, u64> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        let free: u64 = (0..n.gpus)
            .map(|g| 1000 - gpu[i].get(&g).copied().unwrap_or(0).min(1000))
            .sum();
        if free == 0 {
            continue;
        }
        *by_model.entry(n.model.clone()).or_default() += free;
        let cpu_free = n.cpu_milli - cpu[i];
        let mem_free = n.memory_mib - mem[i];
        // Could any task of the list use some of this node's free GPU?
        let usable = list.iter().any(|t| {
            t.gpus > 0
                && t.cpu_milli <= cpu_free
                && t.memory_mib <= mem_free
                && (0..n.gpus)
                    .filter(|g| {
                        1000 - gpu[i].get(g).copied().unwrap_or(0) >= u64::from(t.gpu_milli)
                    })
                    .count()
                    >= t.gpus as usize
        });
        if cpu_free < min_cpu_gpu_task {
            cpu_short += free;
        } else if !usable
            && list
                .iter()
                .any(|t| t.gpus > 0 && t.cpu_milli <= cpu_free && t.memory_mib > mem_free)
        {
            mem_short += free;
        } else if !usable {
            partial += free;
        } else {
            other += free;
        }
    }
    eprintln!(
        "free GPU milli: cpu exhausted {cpu_short}, memory short {mem_short}, \
         pieces too small {partial}, usable {other}; by model {by_model:?}"
    );
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn main() {
    if let Err(e) = packing() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn packing() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: packing DIR [SEEDS] [MIX] (DIR: the trace's csv files)")?;
    let seeds: u64 = match args.next() {
        Some(s) => s
            .parse()
            .map_err(|_| format!("SEEDS: '{s}' is not a count"))?,
        None => 10,
    };
    let mix = args.next().unwrap_or_else(|| "default".to_string());
    let Some((_, about)) = MIXES.iter().find(|(m, _)| *m == mix) else {
        let names: Vec<&str> = MIXES.iter().map(|(m, _)| *m).collect();
        return Err(format!("MIX: '{mix}' is not one of {}", names.join(", ")));
    };
    let (nodes, tasks) = load(&dir)?;
    let capacity: u64 = nodes.iter().map(|n| u64::from(n.gpus) * 1000).sum();
    println!(
        "{} nodes, {} GPUs; {} tasks asking {:.1} GPUs; tuned to 130 % per seed",
        nodes.len(),
        capacity / 1000,
        tasks.len(),
        tasks.iter().map(Task::gpu_demand).sum::<u64>() as f64 / 1000.0
    );
    if mix != "default" {
        let sample = resample(&tasks, &nodes, &mix, 42);
        let demand = |k: usize| -> f64 {
            sample
                .iter()
                .filter(|t| kind(t) == k)
                .map(Task::gpu_demand)
                .sum::<u64>() as f64
        };
        let all: f64 = (0..4).map(demand).sum::<f64>().max(1.0);
        println!(
            "mix {mix}: {about}; seed 42's sample: GPUs asked by shares {:.0} %, one GPU \
             {:.0} %, several {:.0} %; {:.0} % of GPU tasks name models",
            demand(1) * 100.0 / all,
            demand(2) * 100.0 / all,
            demand(3) * 100.0 / all,
            sample.iter().filter(|t| !t.models.is_empty()).count() as f64 * 100.0
                / sample.iter().filter(|t| t.gpus > 0).count().max(1) as f64
        );
    }
    let policies = [
        ("first-fit", PlacementPolicy::FirstFit),
        ("best-fit", PlacementPolicy::BestFit),
        ("fragmentation (ours)", PlacementPolicy::Fragmentation),
    ];
    println!(
        "{:<22} {:>16} {:>15} {:>14} {:>14} {:>10}",
        "policy", "allocated (end)", "min … max", "unallocated", "at 100 %", "tasks/s"
    );
    for (name, p) in policies {
        let mut end = Vec::new();
        let mut full = Vec::new();
        let mut speed = Vec::new();
        for s in 0..seeds {
            let base = resample(&tasks, &nodes, &mix, 42 + s);
            let list = tuned(&base, capacity, 130, 42 + s);
            let (e, f, v) = run(&nodes, &list, p)?;
            end.push(e);
            full.push(f);
            speed.push(v);
        }
        let (m, sd) = mean_sd(&end);
        let (fm, fsd) = mean_sd(&full);
        let unalloc = (100.0 - m) * capacity as f64 / 100_000.0;
        let lo = end.iter().copied().fold(f64::MAX, f64::min);
        let hi = end.iter().copied().fold(f64::MIN, f64::max);
        println!(
            "{name:<22} {m:>8.2} % ±{sd:>4.2} {lo:>6.2} … {hi:>5.2} {unalloc:>8.1} GPUs \
             {fm:>7.2} % ±{fsd:>4.2} {:>10.0}",
            mean_sd(&speed).0
        );
    }
    Ok(())
}
