//! The Memphis scenario: the demo fleet of `serve --demo`.

use crate::check::{megawatts, round_to_i64};

/// The demo fleet at full scale; `@…@` marks what [`demo_fleet_toml`] fills in. Written as
/// fleet-file text so that the demo goes through the same parser as an operator's file.
const TEMPLATE: &str = r#"# The Memphis scenario: the demo fleet of `serve --demo`, at scale @SCALE@.
#
# memphis-1: HGX H100 nodes (8 GPUs each), 55 per leaf group, 20 leaf groups per pod,
#            25 pods: 27,500 nodes and 220,000 GPUs at full scale.
# memphis-2: GB200 NVL72 racks (18 trays of 4 GPUs), 10 racks per leaf group, 10 leaf groups
#            per pod, 10 pods: 1,000 racks, 18,000 trays and 72,000 GPUs at full scale.
# A smaller scale keeps a prefix of each layout and scales the power budget with it.

[[sites]]
name = "memphis-1"
region = "us-south"
kind = "terrestrial"
power_mw = @M1_POWER@
pue = 1.05
energy_usd_per_mwh = "55"

[[sites.node_groups]]
name = "{block}-n{n:02}"
count = @M1_COUNT@
gpu_model = "H100-SXM-80GB"
gpus = 8
cpu_cores = 112
ram_gib = 2048
idle_watts = 2500
peak_watts = 10200
nodes_per_block = 55
layout = [
  { kind = "pod", count = 25, name = "m1-pod{n:02}" },
  { kind = "leaf_group", count = 20, name = "{parent}-leaf{n:02}" },
]

[[sites]]
name = "memphis-2"
region = "us-south"
kind = "terrestrial"
power_mw = @M2_POWER@
pue = 1.1
energy_usd_per_mwh = "55"

[[sites.node_groups]]
name = "{block}-n{n:02}"
count = @M2_COUNT@
gpu_model = "GB200"
gpus = 4
cpu_cores = 72
ram_gib = 960
idle_watts = 1800
peak_watts = 7000
nodes_per_block = 18
layout = [
  { kind = "pod", count = 10, name = "m2-pod{n:02}" },
  { kind = "leaf_group", count = 10, name = "{parent}-leaf{n:02}" },
  { kind = "nvlink_domain", count = 10, name = "{parent}-rack{n:02}" },
]
"#;

const M1_NODES: u32 = 27_500;
const M1_POWER_WATTS: u64 = 300_000_000;
const M2_NODES: u32 = 18_000;
const M2_POWER_WATTS: u64 = 150_000_000;

/// The Memphis demo fleet as fleet-file text, at `scale` (more than 0, at most 1) of its
/// full size: two us-south sites, 27,500 H100 nodes and 18,000 GB200 trays at scale 1.
///
/// Each site keeps `max(1, round(full × scale))` nodes, and its power budget shrinks in
/// proportion, so a scaled fleet passes the same power check.
pub fn demo_fleet_toml(scale: f64) -> Result<String, String> {
    if !(scale > 0.0 && scale <= 1.0) {
        return Err(format!(
            "demo scale must be more than 0 and at most 1, got {scale}"
        ));
    }
    let m1 = scaled(M1_NODES, scale);
    let m2 = scaled(M2_NODES, scale);
    Ok(TEMPLATE
        .replace("@SCALE@", &scale.to_string())
        .replace("@M1_COUNT@", &m1.to_string())
        .replace("@M1_POWER@", &power_mw(M1_POWER_WATTS, m1, M1_NODES))
        .replace("@M2_COUNT@", &m2.to_string())
        .replace("@M2_POWER@", &power_mw(M2_POWER_WATTS, m2, M2_NODES)))
}

fn scaled(full: u32, scale: f64) -> u64 {
    round_to_i64(f64::from(full) * scale)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(1)
        .max(1)
}

/// The full budget × count / full count, rounded up to the watt so that it never falls
/// below what the nodes draw.
fn power_mw(full_watts: u64, count: u64, full_count: u32) -> String {
    let watts = (u128::from(full_watts) * u128::from(count)).div_ceil(u128::from(full_count));
    megawatts(watts, 6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;
    use neocloud_types::{BlockKind, builtin_gpu_models};

    fn count_kind(site: &crate::SiteSpec, kind: BlockKind) -> usize {
        site.blocks.iter().filter(|b| b.kind == kind).count()
    }

    #[test]
    fn full_demo_expands_to_the_memphis_scenario() {
        let text = demo_fleet_toml(1.0).unwrap();
        let spec = parse(&text, &builtin_gpu_models()).unwrap();
        assert_eq!(spec.node_count(), 27_500 + 18_000);
        assert_eq!(spec.gpu_count(), 220_000 + 72_000);
        assert!(spec.gpu_models.is_empty());

        let m1 = &spec.sites[0];
        assert_eq!(m1.name, "memphis-1");
        assert_eq!(m1.power_budget_watts, 300_000_000);
        assert_eq!(m1.pue_milli, 1050);
        assert_eq!(m1.energy_usd_per_mwh.to_string(), "55");
        assert_eq!(m1.nodes.len(), 27_500);
        assert_eq!(count_kind(m1, BlockKind::Pod), 25);
        assert_eq!(count_kind(m1, BlockKind::LeafGroup), 25 * 20);
        assert_eq!(m1.blocks.len(), 25 + 500);
        assert_eq!(m1.nodes[0].name, "m1-pod01-leaf01-n01");
        assert_eq!(m1.nodes[0].block_path, "m1-pod01/m1-pod01-leaf01");
        let last = m1.nodes.last().unwrap();
        assert_eq!(last.name, "m1-pod25-leaf20-n55");
        assert_eq!(last.block.as_deref(), Some("m1-pod25-leaf20"));

        let m2 = &spec.sites[1];
        assert_eq!(m2.power_budget_watts, 150_000_000);
        assert_eq!(m2.pue_milli, 1100);
        assert_eq!(m2.nodes.len(), 18_000);
        assert!(
            m2.nodes
                .iter()
                .all(|n| n.gpu_model == "GB200" && n.gpu_count == 4)
        );
        assert_eq!(count_kind(m2, BlockKind::Pod), 10);
        assert_eq!(count_kind(m2, BlockKind::LeafGroup), 100);
        assert_eq!(count_kind(m2, BlockKind::NvlinkDomain), 1000);
        assert_eq!(
            m2.nodes[17].block_path,
            "m2-pod01/m2-pod01-leaf01/m2-pod01-leaf01-rack01"
        );
        assert_eq!(m2.nodes[18].name, "m2-pod01-leaf01-rack02-n01");
    }

    #[test]
    fn scaled_demo_keeps_a_prefix_and_passes_the_power_check() {
        let spec = parse(&demo_fleet_toml(0.01).unwrap(), &builtin_gpu_models()).unwrap();
        let (m1, m2) = (&spec.sites[0], &spec.sites[1]);
        assert_eq!(m1.nodes.len(), 275);
        assert_eq!(m2.nodes.len(), 180);
        // 275 nodes fill 5 leaf groups of the first pod; 180 trays fill 10 racks.
        assert_eq!(count_kind(m1, BlockKind::Pod), 1);
        assert_eq!(count_kind(m1, BlockKind::LeafGroup), 5);
        assert_eq!(count_kind(m2, BlockKind::NvlinkDomain), 10);
        assert_eq!(m1.power_budget_watts, 3_000_000);
        assert_eq!(m2.power_budget_watts, 1_500_000);
    }

    #[test]
    fn tiny_scales_keep_one_node_per_site() {
        for scale in [1e-9, f64::MIN_POSITIVE, 0.00001] {
            let spec = parse(&demo_fleet_toml(scale).unwrap(), &builtin_gpu_models()).unwrap();
            assert_eq!(spec.node_count(), 2, "{scale}");
        }
        for scale in [0.123, 0.5, 0.999] {
            let spec = parse(&demo_fleet_toml(scale).unwrap(), &builtin_gpu_models());
            assert!(spec.is_ok(), "{scale}: {spec:?}");
        }
    }

    #[test]
    fn rejects_scales_outside_zero_to_one() {
        for scale in [0.0, -0.0, -1.0, 1.0001, 2.0, f64::NAN, f64::INFINITY] {
            let err = demo_fleet_toml(scale).unwrap_err();
            assert!(err.contains("scale"), "{scale}: {err}");
        }
    }
}
