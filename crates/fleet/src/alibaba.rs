//! Conversion of the Alibaba GPU cluster trace's node list into a fleet file.

use std::collections::HashMap;
use std::fmt::Write;

use crate::check::{MAX_CPU_CORES, MAX_GPUS_PER_NODE, MAX_RAM_GIB, default_peak_watts, megawatts};
use crate::errors::thousands;
use crate::pattern::check_name;

/// What the trace's model codes stand for. G1–G3 are not disclosed by Alibaba; their
/// figures are a guess at a data-center GPU of the V100 class.
struct Model {
    code: &'static str,
    vendor: &'static str,
    memory_gib: u32,
    tdp_watts: u32,
    note: &'static str,
    /// How a board's GPUs connect (see `BoardTopology`), and why.
    topology: (&'static str, &'static str),
}

const PCIE: (&str, &str) = (
    "groups:2,4",
    "PCIe cards: GPUs in pairs behind a PCIe switch, quads per NUMA node",
);
const CUBE_MESH: (&str, &str) = (
    "groups:4",
    "SXM2 boards: NVLink hybrid cube-mesh, each quad all-to-all",
);
const UNKNOWN_BOARD: (&str, &str) = (
    "aligned",
    "board undisclosed: aligned groups, the rule for a board not known",
);

const MODELS: &[Model] = &[
    Model {
        code: "T4",
        vendor: "NVIDIA",
        memory_gib: 16,
        tdp_watts: 70,
        note: "Tesla T4",
        topology: PCIE,
    },
    Model {
        code: "P100",
        vendor: "NVIDIA",
        memory_gib: 16,
        tdp_watts: 250,
        note: "Tesla P100 16 GB",
        topology: PCIE,
    },
    Model {
        code: "V100M16",
        vendor: "NVIDIA",
        memory_gib: 16,
        tdp_watts: 300,
        note: "Tesla V100 16 GB",
        topology: CUBE_MESH,
    },
    Model {
        code: "V100M32",
        vendor: "NVIDIA",
        memory_gib: 32,
        tdp_watts: 300,
        note: "Tesla V100 32 GB",
        topology: CUBE_MESH,
    },
    Model {
        code: "A10",
        vendor: "NVIDIA",
        memory_gib: 24,
        tdp_watts: 150,
        note: "A10",
        topology: PCIE,
    },
    Model {
        code: "G1",
        vendor: "unknown",
        memory_gib: 32,
        tdp_watts: 300,
        note: ASSUMED,
        topology: UNKNOWN_BOARD,
    },
    Model {
        code: "G2",
        vendor: "unknown",
        memory_gib: 32,
        tdp_watts: 300,
        note: ASSUMED,
        topology: UNKNOWN_BOARD,
    },
    Model {
        code: "G3",
        vendor: "unknown",
        memory_gib: 32,
        tdp_watts: 300,
        note: ASSUMED,
        topology: UNKNOWN_BOARD,
    },
];

const ASSUMED: &str =
    "Model undisclosed by Alibaba: memory_gib and tdp_watts are assumed, not published.";

const COLUMNS: [&str; 5] = ["sn", "cpu_milli", "memory_mib", "gpu", "model"];

/// PUE written into the generated site, in thousandths (the fleet file's default).
const PUE_MILLI: u64 = 1200;

struct Row<'a> {
    sn: &'a str,
    model: &'a Model,
    gpus: u64,
    cpu_cores: u64,
    ram_gib: u64,
}

/// Converts `openb_node_list_gpu_node.csv` of the Alibaba GPU cluster trace (columns
/// `sn,cpu_milli,memory_mib,gpu,model`) into fleet-file text: one GPU model per model code
/// seen, one site `alibaba-openb` with a power budget that fits its nodes, and one node per
/// row (`cpu_milli / 1000` cores and `memory_mib / 1024` GiB, both rounded up).
///
/// Rows with `gpu = 0` are left out (a fleet-file node has at least one GPU) and counted in
/// a comment. A malformed row is an error naming its line.
pub fn alibaba_nodes_to_fleet_toml(csv: &str) -> Result<String, String> {
    let mut lines = csv.lines().enumerate().map(|(k, l)| (k + 1, l));
    let Some((_, header)) = lines.next() else {
        return Err("the CSV is empty".into());
    };
    let header: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut col = [0usize; 5];
    for (slot, name) in col.iter_mut().zip(COLUMNS) {
        *slot = header.iter().position(|h| *h == name).ok_or_else(|| {
            format!(
                "line 1: missing column '{name}' (expected {})",
                COLUMNS.join(",")
            )
        })?;
    }

    let mut rows = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut cpu_only = 0u64;
    for (line, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        if fields.len() != header.len() {
            return Err(format!(
                "line {line}: expected {} fields, found {}",
                header.len(),
                fields.len()
            ));
        }
        let [sn, cpu_milli, memory_mib, gpu, model] = col.map(|c| fields[c]);
        check_name(sn).map_err(|e| format!("line {line}: sn: {e}"))?;
        if let Some(first) = seen.insert(sn, line) {
            return Err(format!(
                "line {line}: duplicate sn '{sn}' (first on line {first})"
            ));
        }
        let number = |name: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("line {line}: {name}: '{v}' is not a non-negative integer"))
        };
        let cpu_milli = number("cpu_milli", cpu_milli)?;
        let memory_mib = number("memory_mib", memory_mib)?;
        let gpus = number("gpu", gpu)?;
        let model = MODELS.iter().find(|m| m.code == model).ok_or_else(|| {
            let known: Vec<&str> = MODELS.iter().map(|m| m.code).collect();
            format!(
                "line {line}: unknown GPU model code '{model}' (known: {})",
                known.join(", ")
            )
        })?;
        if gpus == 0 {
            cpu_only += 1;
            continue;
        }
        let cpu_cores = cpu_milli.div_ceil(1000);
        let ram_gib = memory_mib.div_ceil(1024);
        for (name, v, max) in [
            ("gpu", gpus, u64::from(MAX_GPUS_PER_NODE)),
            ("cpu_milli / 1000", cpu_cores, u64::from(MAX_CPU_CORES)),
            ("memory_mib / 1024", ram_gib, u64::from(MAX_RAM_GIB)),
        ] {
            if !(1..=max).contains(&v) {
                return Err(format!(
                    "line {line}: {name} must be between 1 and {max}, got {v}"
                ));
            }
        }
        rows.push(Row {
            sn,
            model,
            gpus,
            cpu_cores,
            ram_gib,
        });
    }
    if rows.is_empty() {
        return Err("the CSV lists no GPU nodes".into());
    }
    Ok(render(&rows, cpu_only))
}

fn render(rows: &[Row<'_>], cpu_only: u64) -> String {
    let gpus: u64 = rows.iter().map(|r| r.gpus).sum();
    let peak: u64 = rows
        .iter()
        .map(|r| default_peak_watts(r.gpus, r.model.tdp_watts.into()))
        .sum();
    let draw = u128::from(peak * PUE_MILLI).div_ceil(1000);
    let budget_mw = draw.div_ceil(1_000_000);

    let mut out = String::new();
    // Writing to a String cannot fail.
    let mut w = |s: std::fmt::Arguments<'_>| _ = out.write_fmt(s);
    w(format_args!(
        "# The GPU nodes of Alibaba's \"openb\" cluster: {} nodes, {} GPUs.\n\
         #\n\
         # Source: the Alibaba Cluster Trace Program, cluster-trace-gpu-v2023,\n\
         # csv/openb_node_list_gpu_node.csv (https://github.com/alibaba/clusterdata), the trace\n\
         # of the USENIX ATC '23 paper \"Beware of Fragmentation: Scheduling GPU-Sharing\n\
         # Workloads with Fragmentation Gradient Descent\".\n\
         #\n\
         # Generated by neocloud_fleet::alibaba_nodes_to_fleet_toml; do not edit by hand. To\n\
         # regenerate, point NEOCLOUD_ALIBABA_NODES at the CSV and run:\n\
         # UPDATE_EXAMPLES=1 cargo test -p neocloud-fleet alibaba\n\
         #\n\
         # Per node: cpu_cores = cpu_milli / 1000 and ram_gib = memory_mib / 1024, rounded up.\n\
         # Idle and peak power are the fleet-file defaults (peak = GPUs × (TDP + 250 W) + 1 kW).\n",
        thousands(rows.len() as u64),
        thousands(gpus)
    ));
    if cpu_only > 0 {
        w(format_args!(
            "# {cpu_only} CPU-only rows (gpu = 0) are left out: a fleet-file node has a GPU.\n"
        ));
    }
    for m in MODELS {
        if !rows.iter().any(|r| r.model.code == m.code) {
            continue;
        }
        w(format_args!(
            "\n# {}\n[[gpu_models]]\nname = \"{}\"\nvendor = \"{}\"\nmemory_gib = {}\ntdp_watts = {}\n\
             # {}\ntopology = \"{}\"\n",
            m.note, m.code, m.vendor, m.memory_gib, m.tdp_watts, m.topology.1, m.topology.0
        ));
    }
    w(format_args!(
        "\n[[sites]]\n\
         name = \"alibaba-openb\"\n\
         region = \"unknown\"  # the trace does not say where the cluster is\n\
         kind = \"terrestrial\"\n\
         # Σ node peak watts × PUE = {} MW, rounded up.\n\
         power_mw = {budget_mw}\n\
         pue = {}\n",
        megawatts(draw, 3),
        megawatts(u128::from(PUE_MILLI) * 1000, 3),
    ));
    for r in rows {
        w(format_args!(
            "\n[[sites.nodes]]\nname = \"{}\"\ngpu_model = \"{}\"\ngpus = {}\ncpu_cores = {}\nram_gib = {}\n",
            r.sn, r.model.code, r.gpus, r.cpu_cores, r.ram_gib
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;
    use neocloud_types::builtin_gpu_models;
    use std::path::PathBuf;

    const HEADER: &str = "sn,cpu_milli,memory_mib,gpu,model\n";

    #[test]
    fn alibaba_model_topologies_are_the_allocators_defaults() {
        // The packing measurement reads the trace's CSV, not this file: the allocator's
        // default for each code must be what the file says.
        for m in MODELS {
            let t: neocloud_types::BoardTopology = m.topology.0.parse().unwrap();
            assert_eq!(
                t,
                neocloud_types::BoardTopology::of_model(m.code),
                "{}",
                m.code
            );
        }
    }

    fn example_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/alibaba-gpu-v2023.fleet.toml")
    }

    #[test]
    fn converts_a_small_node_list() {
        let csv = format!(
            "{HEADER}a-0,64000,262144,2,P100\r\na-1,95500,393217,8,G2\nc-0,8000,1024,0,T4\n\n"
        );
        let text = alibaba_nodes_to_fleet_toml(&csv).unwrap();
        assert!(text.contains("1 CPU-only rows (gpu = 0) are left out"));
        assert!(text.contains(ASSUMED));
        let spec = parse(&text, &builtin_gpu_models()).unwrap();
        let names: Vec<&str> = spec.gpu_models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["P100", "G2"]);
        let site = &spec.sites[0];
        assert_eq!(site.name, "alibaba-openb");
        assert_eq!(site.nodes.len(), 2);
        let g2 = &site.nodes[1];
        assert_eq!((g2.cpu_cores, g2.ram_gib, g2.gpu_count), (96, 385, 8));
        // (2 × (250 + 250) + 1000 + 8 × (300 + 250) + 1000) × 1.2 = 10.08 kW → 1 MW.
        assert_eq!(site.power_budget_watts, 1_000_000);
    }

    #[test]
    fn malformed_rows_name_their_line() {
        for (csv, want) in [
            ("", "the CSV is empty"),
            (
                "sn,cpu_milli,gpu,model\n",
                "line 1: missing column 'memory_mib'",
            ),
            (
                "sn,cpu_milli,memory_mib,gpu,model\na,1000,1024,1\n",
                "line 2: expected 5 fields, found 4",
            ),
            (
                "sn,cpu_milli,memory_mib,gpu,model\na,1000,1024,1,T4\nb,1k,1024,1,T4\n",
                "line 3: cpu_milli: '1k'",
            ),
            (
                "sn,cpu_milli,memory_mib,gpu,model\na,1000,-1,1,T4\n",
                "line 2: memory_mib: '-1'",
            ),
            (
                "sn,cpu_milli,memory_mib,gpu,model\na,1000,1024,1,H100\n",
                "line 2: unknown GPU model code 'H100'",
            ),
            (
                "sn,cpu_milli,memory_mib,gpu,model\na b,1000,1024,1,T4\n",
                "line 2: sn: 'a b' is not a valid name",
            ),
            (
                "sn,cpu_milli,memory_mib,gpu,model\na,1000,1024,1,T4\n\na,1000,1024,1,T4\n",
                "line 4: duplicate sn 'a' (first on line 2)",
            ),
            (
                "sn,cpu_milli,memory_mib,gpu,model\na,0,1024,1,T4\n",
                "line 2: cpu_milli / 1000 must be between 1",
            ),
            (
                "sn,cpu_milli,memory_mib,gpu,model\na,1000,1024,65,T4\n",
                "line 2: gpu must be between 1 and 64",
            ),
            (
                "sn,cpu_milli,memory_mib,gpu,model\na,1000,1024,0,T4\n",
                "no GPU nodes",
            ),
        ] {
            let err = alibaba_nodes_to_fleet_toml(csv).unwrap_err();
            assert!(err.contains(want), "{csv:?}: {err}");
        }
    }

    #[test]
    fn committed_example_parses_to_the_trace_figures() {
        let text = std::fs::read_to_string(example_path()).unwrap();
        let spec = parse(&text, &builtin_gpu_models()).unwrap();
        assert_eq!(spec.node_count(), 1213);
        assert_eq!(spec.gpu_count(), 6212);
        let mut gpus_by_model: HashMap<&str, u64> = HashMap::new();
        let mut nodes_by_model: HashMap<&str, u64> = HashMap::new();
        for n in &spec.sites[0].nodes {
            *gpus_by_model.entry(&n.gpu_model).or_default() += u64::from(n.gpu_count);
            *nodes_by_model.entry(&n.gpu_model).or_default() += 1;
        }
        // Counted from the CSV.
        for (model, nodes, gpus) in [
            ("G2", 549, 4392),
            ("T4", 404, 842),
            ("P100", 134, 265),
            ("V100M16", 55, 195),
            ("G3", 39, 312),
            ("V100M32", 30, 204),
            ("A10", 2, 2),
        ] {
            assert_eq!(nodes_by_model.get(model), Some(&nodes), "{model}");
            assert_eq!(gpus_by_model.get(model), Some(&gpus), "{model}");
        }
        assert_eq!(spec.gpu_models.len(), 7);
    }

    #[test]
    fn committed_example_matches_the_trace() {
        // The trace's openb_node_list_gpu_node.csv, where it was downloaded to.
        let Some(csv_path) = std::env::var_os("NEOCLOUD_ALIBABA_NODES").map(PathBuf::from) else {
            eprintln!("note: NEOCLOUD_ALIBABA_NODES is not set; skipping the comparison");
            return;
        };
        let Ok(csv) = std::fs::read_to_string(&csv_path) else {
            eprintln!(
                "note: {} not found; skipping the comparison",
                csv_path.display()
            );
            return;
        };
        let generated = alibaba_nodes_to_fleet_toml(&csv).unwrap();
        if std::env::var_os("UPDATE_EXAMPLES").is_some() {
            std::fs::write(example_path(), &generated).unwrap();
        }
        let committed = std::fs::read_to_string(example_path()).unwrap();
        assert!(
            committed == generated,
            "examples/alibaba-gpu-v2023.fleet.toml is out of date; regenerate it with \
             UPDATE_EXAMPLES=1 cargo test -p neocloud-fleet alibaba"
        );
    }
}
