//! Tests of `parse`: the format, its defaults, and every check with the line it reports.

use neocloud_types::{BlockKind, GpuModel, Money, SiteKind, builtin_gpu_models};

use crate::{FleetError, FleetSpec, MAX_ERRORS, parse};

/// Test sources start with a newline so that line 1 is the first line written.
fn src(s: &str) -> &str {
    s.strip_prefix('\n').unwrap_or(s)
}

fn ok(s: &str) -> FleetSpec {
    match parse(src(s), &builtin_gpu_models()) {
        Ok(spec) => spec,
        Err(e) => panic!("expected success, got:\n{e}"),
    }
}

fn errors(s: &str) -> Vec<FleetError> {
    match parse(src(s), &builtin_gpu_models()) {
        Ok(spec) => panic!("expected errors, got {spec:?}"),
        Err(e) => e.0,
    }
}

/// Asserts that the file has exactly one error, at `line`, on `field`, whose message
/// contains `message`.
#[track_caller]
fn one_error(s: &str, line: usize, field: &str, message: &str) -> FleetError {
    let errs = errors(s);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let e = errs.into_iter().next().unwrap();
    assert_eq!((e.line, e.field.as_str()), (line, field), "{e}");
    assert!(
        e.message.contains(message),
        "message {:?} lacks {message:?}",
        e.message
    );
    e
}

/// A site header taking lines 1–4.
const SITE: &str = "[[sites]]\nname = \"s1\"\nregion = \"us-south\"\npower_mw = 100\n";

#[test]
fn empty_file_and_models_only_are_valid() {
    assert_eq!(
        ok(""),
        FleetSpec {
            gpu_models: vec![],
            sites: vec![]
        }
    );
    let spec = ok(r#"
[[gpu_models]]
name = "T4"
vendor = "NVIDIA"
memory_gib = 16
tdp_watts = 70

[[gpu_models]]
name = "X1"
memory_gib = 8
tdp_watts = 50
"#);
    assert_eq!(spec.gpu_models.len(), 2);
    assert_eq!(spec.gpu_models[0].vendor, "NVIDIA");
    assert_eq!(spec.gpu_models[1].vendor, "unknown");
    assert_eq!(
        (spec.gpu_models[1].memory_gib, spec.gpu_models[1].tdp_watts),
        (8, 50)
    );
    assert_eq!(spec.node_count(), 0);
}

#[test]
fn explicit_blocks_and_nodes_with_defaults() {
    let spec = ok(r#"
[[sites]]
name = "lab"
region = "eu-west"
power_mw = 1

[[sites.blocks]]
name = "rack-1"
kind = "nvlink_domain"
parent = "leaf-1"

[[sites.blocks]]
name = "leaf-1"
kind = "leaf_group"
parent = "hall"

[[sites.blocks]]
name = "hall"
kind = "pod"

[[sites.nodes]]
name = "gpu-001"
block = "rack-1"
gpu_model = "A100-SXM-80GB"
gpus = 8

[[sites.nodes]]
name = "gpu-002"
gpu_model = "H100-SXM-80GB"
gpus = 4
cpu_cores = 96
ram_gib = 1024
idle_watts = 900
peak_watts = 5000
"#);
    let site = &spec.sites[0];
    assert_eq!(site.kind, SiteKind::Terrestrial);
    assert_eq!(site.pue_milli, 1200);
    assert_eq!(site.energy_usd_per_mwh, Money::ZERO);
    assert_eq!(site.power_budget_watts, 1_000_000);
    // Parents first, whatever the file order.
    let blocks: Vec<(&str, &str, Option<&str>)> = site
        .blocks
        .iter()
        .map(|b| (b.name.as_str(), b.path.as_str(), b.parent.as_deref()))
        .collect();
    assert_eq!(
        blocks,
        [
            ("hall", "hall", None),
            ("leaf-1", "hall/leaf-1", Some("hall")),
            ("rack-1", "hall/leaf-1/rack-1", Some("leaf-1")),
        ]
    );
    assert_eq!(site.blocks[2].kind, BlockKind::NvlinkDomain);
    let n1 = &site.nodes[0];
    assert_eq!(n1.block.as_deref(), Some("rack-1"));
    assert_eq!(n1.block_path, "hall/leaf-1/rack-1");
    // Defaults: 14 cores and 256 GiB per GPU; peak = 8 × (400 + 250) + 1000; idle = peak / 4.
    assert_eq!((n1.cpu_cores, n1.ram_gib), (112, 2048));
    assert_eq!((n1.peak_watts, n1.idle_watts), (6200, 1550));
    let n2 = &site.nodes[1];
    assert_eq!((n2.block.as_deref(), n2.block_path.as_str()), (None, ""));
    assert_eq!(
        (
            n2.gpu_count,
            n2.cpu_cores,
            n2.ram_gib,
            n2.idle_watts,
            n2.peak_watts
        ),
        (4, 96, 1024, 900, 5000)
    );
    assert_eq!(spec.gpu_count(), 12);
}

#[test]
fn site_fields_are_read() {
    let spec = ok(r#"
[[sites]]
name = "leo-1"
region = "leo"
kind = "orbital"
power_mw = 2.5
pue = 1.0555
energy_usd_per_mwh = "12.345"
"#);
    let s = &spec.sites[0];
    assert_eq!(s.kind, SiteKind::Orbital);
    assert_eq!(s.power_budget_watts, 2_500_000);
    assert_eq!(s.pue_milli, 1056);
    assert_eq!(s.energy_usd_per_mwh, "12.345".parse().unwrap());
}

#[test]
fn energy_price_forms() {
    for (value, want) in [
        ("55", "55"),
        ("\"55.00\"", "55"),
        ("55.1", "55.1"),
        ("0.000001", "0.000001"),
    ] {
        let spec = ok(&format!("{SITE}energy_usd_per_mwh = {value}\n"));
        assert_eq!(
            spec.sites[0].energy_usd_per_mwh.to_string(),
            want,
            "{value}"
        );
    }
    for (value, message) in [
        ("\"-1\"", "must not be negative"),
        ("-1.5", "must not be negative"),
        ("-3", "must be between 0 and"),
        ("\"1.2.3\"", "not a valid amount"),
        ("0.0000001", "write the price as a string"),
        ("true", "expected a decimal string"),
    ] {
        one_error(
            &format!("{SITE}energy_usd_per_mwh = {value}\n"),
            5,
            "sites[0].energy_usd_per_mwh",
            message,
        );
    }
}

#[test]
fn node_group_without_layout() {
    let spec = ok(&format!(
        "{SITE}[[sites.node_groups]]\ncount = 3\ngpu_model = \"L40S\"\ngpus = 2\n"
    ));
    let names: Vec<&str> = spec.sites[0]
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(names, ["s1-n00001", "s1-n00002", "s1-n00003"]);
    assert!(spec.sites[0].blocks.is_empty());
    assert!(spec.sites[0].nodes.iter().all(|n| n.block.is_none()));
    // 2 × (350 + 250) + 1000
    assert_eq!(spec.sites[0].nodes[0].peak_watts, 2200);
}

#[test]
fn layout_prefix_creates_only_blocks_with_nodes() {
    let spec = ok(&format!(
        r#"{SITE}
[[sites.node_groups]]
count = 7
gpu_model = "B200"
gpus = 8
nodes_per_block = 3
layout = [
  {{ kind = "pod", count = 2 }},
  {{ kind = "leaf_group", count = 2 }},
  {{ kind = "nvlink_domain", count = 5, name = "{{parent}}-r{{n:02}}-{{i}}" }},
]
"#
    ));
    let site = &spec.sites[0];
    let blocks: Vec<&str> = site.blocks.iter().map(|b| b.path.as_str()).collect();
    assert_eq!(
        blocks,
        [
            "s1-pod1",
            "s1-pod1/s1-pod1-leaf1",
            "s1-pod1/s1-pod1-leaf1/s1-pod1-leaf1-r01-1",
            "s1-pod1/s1-pod1-leaf1/s1-pod1-leaf1-r02-2",
            "s1-pod1/s1-pod1-leaf1/s1-pod1-leaf1-r03-3",
        ]
    );
    let nodes: Vec<(&str, &str)> = site
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.block.as_deref().unwrap()))
        .collect();
    assert_eq!(
        nodes,
        [
            ("s1-pod1-leaf1-r01-1-n001", "s1-pod1-leaf1-r01-1"),
            ("s1-pod1-leaf1-r01-1-n002", "s1-pod1-leaf1-r01-1"),
            ("s1-pod1-leaf1-r01-1-n003", "s1-pod1-leaf1-r01-1"),
            ("s1-pod1-leaf1-r02-2-n001", "s1-pod1-leaf1-r02-2"),
            ("s1-pod1-leaf1-r02-2-n002", "s1-pod1-leaf1-r02-2"),
            ("s1-pod1-leaf1-r02-2-n003", "s1-pod1-leaf1-r02-2"),
            ("s1-pod1-leaf1-r03-3-n001", "s1-pod1-leaf1-r03-3"),
        ]
    );
    assert_eq!(site.blocks[1].parent.as_deref(), Some("s1-pod1"));
    assert_eq!(site.blocks[0].parent, None);
}

#[test]
fn layout_without_count_fills_it_and_numbers_siblings() {
    let spec = ok(&format!(
        r#"{SITE}
[[sites.node_groups]]
name = "{{site}}-{{i}}-{{n}}"
gpu_model = "B200"
gpus = 1
nodes_per_block = 2
layout = [
  {{ kind = "pod", count = 2, name = "p{{n}}" }},
  {{ kind = "nvlink_domain", count = 2, name = "{{parent}}-d{{n}}-{{i}}" }},
]
"#
    ));
    let site = &spec.sites[0];
    let blocks: Vec<&str> = site.blocks.iter().map(|b| b.name.as_str()).collect();
    // {n} restarts under each parent, {i} counts across the level.
    assert_eq!(
        blocks,
        ["p1", "p1-d1-1", "p1-d2-2", "p2", "p2-d1-3", "p2-d2-4"]
    );
    let nodes: Vec<&str> = site.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        nodes,
        [
            "s1-1-1", "s1-2-2", "s1-3-1", "s1-4-2", "s1-5-1", "s1-6-2", "s1-7-1", "s1-8-2"
        ]
    );
}

#[test]
fn parent_block_nests_the_layout_or_holds_the_nodes() {
    let spec = ok(&format!(
        r#"{SITE}
[[sites.blocks]]
name = "hall-a"
kind = "pod"

[[sites.node_groups]]
count = 2
gpu_model = "H200-SXM-141GB"
gpus = 8
parent_block = "hall-a"
nodes_per_block = 1
layout = [{{ kind = "leaf_group", count = 4 }}]

[[sites.node_groups]]
name = "{{block}}-x{{n}}"
count = 2
gpu_model = "H200-SXM-141GB"
gpus = 8
parent_block = "hall-a"
"#
    ));
    let site = &spec.sites[0];
    let blocks: Vec<(&str, &str)> = site
        .blocks
        .iter()
        .map(|b| (b.name.as_str(), b.path.as_str()))
        .collect();
    assert_eq!(
        blocks,
        [
            ("hall-a", "hall-a"),
            ("hall-a-leaf1", "hall-a/hall-a-leaf1"),
            ("hall-a-leaf2", "hall-a/hall-a-leaf2"),
        ]
    );
    assert_eq!(site.blocks[1].parent.as_deref(), Some("hall-a"));
    let nodes: Vec<(&str, &str)> = site
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.block_path.as_str()))
        .collect();
    assert_eq!(
        nodes,
        [
            ("hall-a-leaf1-n001", "hall-a/hall-a-leaf1"),
            ("hall-a-leaf2-n001", "hall-a/hall-a-leaf2"),
            ("hall-a-x1", "hall-a"),
            ("hall-a-x2", "hall-a"),
        ]
    );
}

#[test]
fn nodes_keep_file_order_across_groups_and_explicit_nodes() {
    let spec = ok(&format!(
        r#"{SITE}
[[sites.nodes]]
name = "first"
gpu_model = "B200"
gpus = 1

[[sites.node_groups]]
name = "mid-{{i}}"
count = 2
gpu_model = "B200"
gpus = 1

[[sites.nodes]]
name = "last"
gpu_model = "B200"
gpus = 1
"#
    ));
    let nodes: Vec<&str> = spec.sites[0]
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(nodes, ["first", "mid-1", "mid-2", "last"]);
}

#[test]
fn syntax_errors_have_lines() {
    let errs = errors("[[sites]]\nname = \"a\nregion = 1.2.3\n");
    assert!(!errs.is_empty());
    // The string runs to the end of line 2 ("name = \"a" is 9 characters).
    assert_eq!((errs[0].line, errs[0].column), (2, 10));
    assert_eq!(errs[0].field, "");
    assert!(
        errs[0].message.starts_with("TOML syntax error: "),
        "{}",
        errs[0].message
    );

    let errs = errors("[[sites]]\nname = \"a\"\nname = \"b\"\n");
    assert_eq!(errs[0].line, 3);
    assert!(errs[0].message.contains("duplicate key"));
}

#[test]
fn wrong_types_have_lines() {
    one_error(
        &format!("{SITE}pue = \"1.2\"\n"),
        5,
        "sites[0].pue",
        "expected a number, found a string",
    );
    one_error(
        "[[sites]]\nname = 5\nregion = \"r\"\npower_mw = 1\n",
        2,
        "sites[0].name",
        "expected a string, found an integer",
    );
    one_error(
        &format!("{SITE}[[sites.nodes]]\nname = \"n\"\ngpu_model = \"B200\"\ngpus = 2.0\n"),
        8,
        "sites[0].nodes[0].gpus",
        "expected an integer, found a float",
    );
    one_error(
        "sites = 3\n",
        1,
        "sites",
        "expected an array of tables ([[sites]]), found an integer",
    );
    one_error("[sites]\nname = \"x\"\n", 1, "sites", "found a table");
    one_error(
        &format!("{SITE}[sites.nodes]\nname = \"x\"\n"),
        5,
        "sites[0].nodes",
        "expected an array of tables ([[sites.nodes]]), found a table",
    );
    one_error(
        "sites = [1]\n",
        1,
        "sites[0]",
        "expected a table, found an integer",
    );
    one_error(
        &format!(
            "{SITE}[[sites.nodes]]\nname = \"n\"\ngpu_model = \"B200\"\ngpus = 99999999999999999999\n"
        ),
        8,
        "sites[0].nodes[0].gpus",
        "integer out of range",
    );
}

#[test]
fn unknown_fields_are_rejected() {
    one_error(
        "color = 1\n",
        1,
        "color",
        "unknown field 'color' (expected one of: gpu_models, sites)",
    );
    one_error(
        &format!("{SITE}power = 3\n"),
        5,
        "sites[0].power",
        "unknown field 'power'",
    );
    one_error(
        &format!(
            "{SITE}[[sites.node_groups]]\ncount = 1\ngpu_model = \"B200\"\ngpus = 1\ngpu = 1\n"
        ),
        9,
        "sites[0].node_groups[0].gpu",
        "unknown field 'gpu'",
    );
    one_error(
        &format!(
            "{SITE}[[sites.node_groups]]\ngpu_model = \"B200\"\ngpus = 1\nnodes_per_block = 1\nlayout = [{{ kind = \"pod\", count = 1, size = 2 }}]\n"
        ),
        9,
        "sites[0].node_groups[0].layout[0].size",
        "unknown field 'size'",
    );
}

#[test]
fn missing_fields_point_at_the_table() {
    let errs = errors("\n\n[[sites]]\nname = \"a\"\n");
    let got: Vec<(usize, &str, &str)> = errs
        .iter()
        .map(|e| (e.line, e.field.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (2, "sites[0].region", "missing required field 'region'"),
            (2, "sites[0].power_mw", "missing required field 'power_mw'"),
        ]
    );
    one_error(
        &format!("{SITE}[[sites.nodes]]\nname = \"n\"\ngpus = 1\n"),
        5,
        "sites[0].nodes[0].gpu_model",
        "missing required field 'gpu_model'",
    );
    one_error(
        "[[gpu_models]]\nname = \"x\"\nmemory_gib = 1\n",
        1,
        "gpu_models[0].tdp_watts",
        "missing required field",
    );
    one_error(
        &format!("{SITE}[[sites.node_groups]]\ngpu_model = \"B200\"\ngpus = 1\n"),
        5,
        "sites[0].node_groups[0].count",
        "missing required field 'count' (required when there is no layout)",
    );
    one_error(
        &format!(
            "{SITE}[[sites.node_groups]]\ngpu_model = \"B200\"\ngpus = 1\nlayout = [{{ kind = \"pod\", count = 1 }}]\n"
        ),
        5,
        "sites[0].node_groups[0].nodes_per_block",
        "missing required field 'nodes_per_block' (required with a layout)",
    );
    one_error(
        &format!(
            "{SITE}[[sites.node_groups]]\ngpu_model = \"B200\"\ngpus = 1\nnodes_per_block = 1\nlayout = [\n  {{ count = 1 }},\n]\n"
        ),
        10,
        "sites[0].node_groups[0].layout[0].kind",
        "missing required field 'kind'",
    );
}

#[test]
fn unknown_gpu_model_lists_the_known_ones() {
    let e = one_error(
        &format!(
            "[[gpu_models]]\nname = \"T4\"\nmemory_gib = 16\ntdp_watts = 70\n{SITE}[[sites.nodes]]\nname = \"n\"\ngpu_model = \"H900\"\ngpus = 1\n"
        ),
        11,
        "sites[0].nodes[0].gpu_model",
        "unknown GPU model 'H900' (known: A100-SXM-80GB, H100-SXM-80GB,",
    );
    assert!(e.message.ends_with("MI300X, T4)"), "{}", e.message);
    assert_eq!(e.column, 13);
    assert!(
        e.to_string().starts_with(
            "line 11, column 13: sites[0].nodes[0].gpu_model: unknown GPU model 'H900'"
        )
    );
}

#[test]
fn catalog_models_built_in_may_only_be_repeated_identically() {
    let spec = ok(
        "[[gpu_models]]\nname = \"B200\"\nvendor = \"NVIDIA\"\nmemory_gib = 180\ntdp_watts = 1000\n",
    );
    assert_eq!(spec.gpu_models.len(), 1);
    one_error(
        "[[gpu_models]]\nname = \"B200\"\nvendor = \"NVIDIA\"\nmemory_gib = 192\ntdp_watts = 1000\n",
        2,
        "gpu_models[0].name",
        "GPU model 'B200' is built in as NVIDIA, 180 GiB, 1000 W, topology nvswitch; a fleet file may only repeat it identically",
    );
}

#[test]
fn gpu_models_say_how_their_boards_connect() {
    use neocloud_types::BoardTopology;
    let spec = ok(
        "[[gpu_models]]\nname = \"L4X\"\nmemory_gib = 24\ntdp_watts = 72\n\
         topology = \"groups:2,4\"\n[[gpu_models]]\nname = \"Y\"\nmemory_gib = 8\n\
         tdp_watts = 8\n[[gpu_models]]\nname = \"H100-SXM-80GB\"\nvendor = \"NVIDIA\"\n\
         memory_gib = 80\ntdp_watts = 700\ntopology = \"nvswitch\"\n",
    );
    assert_eq!(
        spec.gpu_models[0].topology,
        BoardTopology::groups(&[2, 4]).unwrap()
    );
    // Not said: the rule for a board not known.
    assert_eq!(spec.gpu_models[1].topology, BoardTopology::ALIGNED);
    // A built-in model may repeat its own topology, not another.
    assert_eq!(spec.gpu_models[2].topology, BoardTopology::NVSWITCH);
    one_error(
        "[[gpu_models]]\nname = \"H100-SXM-80GB\"\nvendor = \"NVIDIA\"\nmemory_gib = 80\n\
         tdp_watts = 700\ntopology = \"aligned\"\n",
        2,
        "gpu_models[0].name",
        "is built in as NVIDIA, 80 GiB, 700 W, topology nvswitch",
    );
}

#[test]
fn catalog_models_added_earlier_take_the_files_figures() {
    // The catalog is whatever the caller passes: here one model added by an earlier import.
    let mut catalog = builtin_gpu_models();
    catalog.push(GpuModel {
        name: "T4".into(),
        vendor: "NVIDIA".into(),
        memory_gib: 16,
        tdp_watts: 70,
        builtin: false,
        topology: neocloud_types::BoardTopology::of_model("T4"),
    });
    let node = "[[sites.nodes]]\nname = \"n\"\ngpu_model = \"T4\"\ngpus = 1\n";
    let file = format!("{SITE}{node}");
    let spec = parse(&file, &catalog).unwrap();
    assert!(spec.gpu_models.is_empty());
    // 70 + 250 + 1000
    assert_eq!(spec.sites[0].nodes[0].peak_watts, 1320);
    assert!(parse(&file, &builtin_gpu_models()).is_err());

    let redefined =
        format!("[[gpu_models]]\nname = \"T4\"\nmemory_gib = 16\ntdp_watts = 80\n{SITE}{node}");
    let spec = parse(&redefined, &catalog).unwrap();
    assert_eq!(spec.gpu_models[0].tdp_watts, 80);
    assert_eq!(spec.sites[0].nodes[0].peak_watts, 1330);
}

#[test]
fn duplicate_names_are_rejected() {
    one_error(
        "[[gpu_models]]\nname = \"X\"\nmemory_gib = 1\ntdp_watts = 1\n[[gpu_models]]\nname = \"X\"\nmemory_gib = 1\ntdp_watts = 1\n",
        6,
        "gpu_models[1].name",
        "duplicate GPU model 'X' (first defined on line 2)",
    );
    one_error(
        &format!("{SITE}{SITE}"),
        6,
        "sites[1].name",
        "duplicate site name 's1' (first defined on line 2)",
    );
    one_error(
        &format!(
            "{SITE}[[sites.blocks]]\nname = \"b\"\nkind = \"pod\"\n[[sites.blocks]]\nname = \"b\"\nkind = \"pod\"\n"
        ),
        9,
        "sites[0].blocks[1].name",
        "duplicate block name 'b' in site 's1' (first defined on line 6)",
    );
    // Block names are per site; node names are per file.
    let two_sites = |node2: &str| {
        format!(
            "{SITE}[[sites.blocks]]\nname = \"b\"\nkind = \"pod\"\n[[sites.nodes]]\nname = \"n1\"\ngpu_model = \"B200\"\ngpus = 1\n\
             [[sites]]\nname = \"s2\"\nregion = \"r\"\npower_mw = 1\n[[sites.blocks]]\nname = \"b\"\nkind = \"pod\"\n\
             [[sites.nodes]]\nname = \"{node2}\"\ngpu_model = \"B200\"\ngpus = 1\n"
        )
    };
    assert_eq!(ok(&two_sites("n2")).node_count(), 2);
    one_error(
        &two_sites("n1"),
        20,
        "sites[1].nodes[0].name",
        "duplicate node name 'n1' (first defined on line 9)",
    );
}

#[test]
fn generated_names_may_not_clash() {
    // Two groups with the default "{site}-n{i:05}" pattern produce the same names.
    let group = "[[sites.node_groups]]\ncount = 3\ngpu_model = \"B200\"\ngpus = 1\n";
    let e = one_error(
        &format!("{SITE}{group}{group}"),
        9,
        "sites[0].node_groups[1].name",
        "generates node name 's1-n00001', already used (line 5)",
    );
    assert!(
        e.message
            .contains("(3 node names of this pattern have problems)"),
        "{}",
        e.message
    );
    // A pattern without an index repeats itself.
    one_error(
        &format!(
            "{SITE}[[sites.node_groups]]\nname = \"same\"\ncount = 2\ngpu_model = \"B200\"\ngpus = 1\n"
        ),
        6,
        "sites[0].node_groups[0].name",
        "generates node name 'same', already used (line 6)",
    );
    // A generated block may not take an explicit block's name.
    one_error(
        &format!(
            "{SITE}[[sites.blocks]]\nname = \"s1-pod1\"\nkind = \"pod\"\n[[sites.node_groups]]\ngpu_model = \"B200\"\ngpus = 1\nnodes_per_block = 1\nlayout = [{{ kind = \"pod\", count = 1 }}]\n"
        ),
        12,
        "sites[0].node_groups[0].layout[0].name",
        "generates block name 's1-pod1', already used in site 's1'",
    );
    // Too long once rendered.
    one_error(
        &format!(
            "{SITE}[[sites.node_groups]]\nname = \"{}{{i}}\"\ncount = 1\ngpu_model = \"B200\"\ngpus = 1\n",
            "x".repeat(63)
        ),
        6,
        "sites[0].node_groups[0].name",
        "generates an invalid node name",
    );
}

#[test]
fn bad_names_and_patterns() {
    one_error(
        "[[sites]]\nname = \"a b\"\nregion = \"r\"\npower_mw = 1\n",
        2,
        "sites[0].name",
        "not a valid name",
    );
    one_error(
        &format!("{SITE}[[sites.nodes]]\nname = \"\"\ngpu_model = \"B200\"\ngpus = 1\n"),
        6,
        "sites[0].nodes[0].name",
        "not a valid name",
    );
    one_error(
        &format!(
            "{SITE}[[sites.node_groups]]\nname = \"{{block}}-{{n}}\"\ncount = 1\ngpu_model = \"B200\"\ngpus = 1\n"
        ),
        6,
        "sites[0].node_groups[0].name",
        "placeholder '{block}' is not available here (allowed here: {site}, {n}, {i})",
    );
    one_error(
        &format!(
            "{SITE}[[sites.node_groups]]\nname = \"n{{x}}\"\ncount = 1\ngpu_model = \"B200\"\ngpus = 1\n"
        ),
        6,
        "sites[0].node_groups[0].name",
        "unknown placeholder '{x}'",
    );
    one_error(
        &format!(
            "{SITE}[[sites.node_groups]]\ngpu_model = \"B200\"\ngpus = 1\nnodes_per_block = 1\nlayout = [\n  {{ kind = \"pod\", count = 1, name = \"p{{n\" }},\n]\n"
        ),
        10,
        "sites[0].node_groups[0].layout[0].name",
        "unclosed '{'",
    );
    // {parent} has nothing to refer to at the top without parent_block.
    one_error(
        &format!(
            "{SITE}[[sites.node_groups]]\ngpu_model = \"B200\"\ngpus = 1\nnodes_per_block = 1\nlayout = [\n  {{ kind = \"pod\", count = 1, name = \"{{parent}}-p\" }},\n]\n"
        ),
        10,
        "sites[0].node_groups[0].layout[0].name",
        "placeholder '{parent}' is not available here",
    );
    one_error(
        &format!("{SITE}kind = \"lunar\"\n"),
        5,
        "sites[0].kind",
        "'lunar' is not one of: terrestrial, orbital",
    );
}

#[test]
fn counts_and_figures_out_of_range() {
    let group = |body: &str| format!("{SITE}[[sites.node_groups]]\ngpu_model = \"B200\"\n{body}");
    for (body, line, field, message) in [
        (
            "gpus = 1\ncount = 0\n",
            8,
            "count",
            "must be between 1 and 2,000,000, got 0",
        ),
        ("gpus = 1\ncount = -5\n", 8, "count", "got -5"),
        (
            "gpus = 1\ncount = 2000001\n",
            8,
            "count",
            "must be between 1 and 2,000,000",
        ),
        (
            "gpus = 0\ncount = 1\n",
            7,
            "gpus",
            "must be between 1 and 64, got 0",
        ),
        (
            "gpus = 65\ncount = 1\n",
            7,
            "gpus",
            "must be between 1 and 64, got 65",
        ),
        (
            "gpus = 1\ncount = 1\ncpu_cores = 0\n",
            9,
            "cpu_cores",
            "must be between 1 and 4,096",
        ),
        (
            "gpus = 1\ncount = 1\nram_gib = 0\n",
            9,
            "ram_gib",
            "must be between 1 and 65,536",
        ),
        (
            "gpus = 1\ncount = 1\nidle_watts = 0\n",
            9,
            "idle_watts",
            "must be between 1 and 1,000,000",
        ),
        (
            "gpus = 1\ncount = 1\npeak_watts = 2000000\n",
            9,
            "peak_watts",
            "must be between 1 and 1,000,000",
        ),
        (
            "gpus = 1\nnodes_per_block = 0\nlayout = [{ kind = \"pod\", count = 1 }]\n",
            8,
            "nodes_per_block",
            "must be between 1 and 100,000",
        ),
        (
            "gpus = 1\nnodes_per_block = 1\nlayout = [{ kind = \"pod\", count = 0 }]\n",
            9,
            "layout[0].count",
            "must be between 1 and 100,000, got 0",
        ),
        (
            "gpus = 1\nnodes_per_block = 1\nlayout = []\n",
            9,
            "layout",
            "a layout needs at least one level",
        ),
        (
            "gpus = 1\ncount = 1\nnodes_per_block = 4\n",
            9,
            "nodes_per_block",
            "nodes_per_block applies only with a layout",
        ),
        (
            "gpus = 1\ncount = 1\nidle_watts = 3000\npeak_watts = 2000\n",
            9,
            "idle_watts",
            "idle_watts (3000) is more than peak_watts (2000)",
        ),
        // Default peak for B200 × 1 is 2,250 W.
        (
            "gpus = 1\ncount = 1\nidle_watts = 2251\n",
            9,
            "idle_watts",
            "is more than peak_watts (2250)",
        ),
        (
            "gpus = 1\ncount = 7\nnodes_per_block = 3\nlayout = [{ kind = \"pod\", count = 2 }]\n",
            8,
            "count",
            "count 7 is more than the layout holds (2 × 3 = 6 nodes)",
        ),
    ] {
        one_error(
            &group(body),
            line,
            &format!("sites[0].node_groups[0].{field}"),
            message,
        );
    }
    for (line5, message) in [
        (
            "power_mw = 0",
            "must be more than 0 and at most 100,000 (megawatts), got 0",
        ),
        ("power_mw = -3.5", "got -3.5"),
        ("power_mw = 1e9", "got 1000000000"),
        ("power_mw = nan", "got NaN"),
    ] {
        let file = format!("[[sites]]\nname = \"s\"\nregion = \"r\"\n\n{line5}\n");
        one_error(&file, 5, "sites[0].power_mw", message);
    }
    for pue in ["0.99", "3.01", "0", "inf"] {
        one_error(
            &format!("{SITE}pue = {pue}\n"),
            5,
            "sites[0].pue",
            "must be between 1.0 and 3.0",
        );
    }
    for (field, value, message) in [
        ("memory_gib", "0", "must be between 1 and 16,384"),
        ("tdp_watts", "20000", "must be between 1 and 10,000"),
        ("vendor", "\"\"", "must be 1–63 characters"),
        (
            "topology",
            "\"groups:3\"",
            "a group of GPUs is a power of two",
        ),
        (
            "topology",
            "\"mesh\"",
            "is not one of nvswitch, aligned, groups:N,M,…",
        ),
    ] {
        let mut model = vec![
            "name = \"X\"".to_string(),
            "memory_gib = 8".into(),
            "tdp_watts = 8".into(),
        ];
        model.retain(|l| !l.starts_with(field));
        model.push(format!("{field} = {value}"));
        let line = model.len() + 1;
        one_error(
            &format!("[[gpu_models]]\n{}\n", model.join("\n")),
            line,
            &format!("gpu_models[0].{field}"),
            message,
        );
    }
}

#[test]
fn layout_levels_must_go_deeper() {
    let layout = |parent: &str, levels: &str| {
        format!(
            "{SITE}[[sites.blocks]]\nname = \"hall\"\nkind = \"leaf_group\"\n\
             [[sites.node_groups]]\ngpu_model = \"B200\"\ngpus = 1\nnodes_per_block = 1\n{parent}layout = [\n{levels}]\n"
        )
    };
    one_error(
        &layout(
            "",
            "{ kind = \"pod\", count = 1 },\n{ kind = \"pod\", count = 1 },\n",
        ),
        14,
        "sites[0].node_groups[0].layout[1].kind",
        "layout level 'pod' is not deeper than the level above it (pod); levels go pod → leaf_group → nvlink_domain",
    );
    one_error(
        &layout(
            "",
            "{ kind = \"nvlink_domain\", count = 1 },\n{ kind = \"leaf_group\", count = 1 },\n",
        ),
        14,
        "sites[0].node_groups[0].layout[1].kind",
        "not deeper than the level above it (nvlink_domain)",
    );
    one_error(
        &layout(
            "parent_block = \"hall\"\n",
            "{ kind = \"pod\", count = 1 },\n",
        ),
        14,
        "sites[0].node_groups[0].layout[0].kind",
        "layout level 'pod' is not deeper than parent_block 'hall' (leaf_group)",
    );
    // Skipping a level is fine.
    let spec = ok(&layout(
        "parent_block = \"hall\"\n",
        "{ kind = \"nvlink_domain\", count = 2 },\n",
    ));
    assert_eq!(spec.sites[0].blocks[1].path, "hall/hall-nvl1");
    one_error(
        &layout(
            "parent_block = \"nowhere\"\n",
            "{ kind = \"nvlink_domain\", count = 1 },\n",
        ),
        12,
        "sites[0].node_groups[0].parent_block",
        "unknown block 'nowhere'",
    );
    one_error(
        &layout("", "{ kind = \"rack\", count = 1 },\n"),
        13,
        "sites[0].node_groups[0].layout[0].kind",
        "'rack' is not one of: pod, leaf_group, nvlink_domain",
    );
}

#[test]
fn explicit_block_references_are_checked() {
    let block = |name: &str, kind: &str, parent: &str| {
        format!("[[sites.blocks]]\nname = \"{name}\"\nkind = \"{kind}\"\nparent = \"{parent}\"\n")
    };
    one_error(
        &format!("{SITE}{}", block("a", "pod", "zz")),
        8,
        "sites[0].blocks[0].parent",
        "unknown parent block 'zz' in site 's1'",
    );
    // A cycle is reported on both ends.
    let errs = errors(&format!(
        "{SITE}{}{}",
        block("a", "leaf_group", "b"),
        block("b", "leaf_group", "a")
    ));
    let got: Vec<(usize, &str, &str)> = errs
        .iter()
        .map(|e| (e.line, e.field.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                8,
                "sites[0].blocks[0].parent",
                "parent block 'b' is a leaf_group, which is not shallower than this leaf_group (blocks nest pod → leaf_group → nvlink_domain)"
            ),
            (
                12,
                "sites[0].blocks[1].parent",
                "parent block 'a' is a leaf_group, which is not shallower than this leaf_group (blocks nest pod → leaf_group → nvlink_domain)"
            ),
        ]
    );
    one_error(
        &format!(
            "{SITE}[[sites.blocks]]\nname = \"p\"\nkind = \"pod\"\n{}",
            block("a", "pod", "p")
        ),
        11,
        "sites[0].blocks[1].parent",
        "not shallower",
    );
    one_error(
        &format!(
            "{SITE}[[sites.nodes]]\nname = \"n\"\nblock = \"ghost\"\ngpu_model = \"B200\"\ngpus = 1\n"
        ),
        7,
        "sites[0].nodes[0].block",
        "unknown block 'ghost'",
    );
}

#[test]
fn power_budget_is_checked() {
    // 10 nodes × 10,200 W × 1.05 = 107,100 W.
    let file = |mw: &str| {
        format!(
            "[[sites]]\nname = \"x\"\nregion = \"r\"\npower_mw = {mw}\npue = 1.05\n\
             [[sites.node_groups]]\ncount = 10\ngpu_model = \"H100-SXM-80GB\"\ngpus = 8\npeak_watts = 10200\n"
        )
    };
    assert_eq!(ok(&file("0.1071")).node_count(), 10);
    one_error(
        &file("0.1"),
        4,
        "sites[0].power_mw",
        "site 'x' would draw 0.1071 MW at full load (Σ node peak watts × PUE 1.05), over its power budget of 0.1 MW",
    );
    one_error(
        &file("0.107099"),
        4,
        "sites[0].power_mw",
        "would draw 0.1071 MW",
    );
    // Explicit nodes count too, at the site's default PUE of 1.2.
    let e = one_error(
        "[[sites]]\nname = \"y\"\nregion = \"r\"\npower_mw = 0.001\n\
         [[sites.nodes]]\nname = \"a\"\ngpu_model = \"B200\"\ngpus = 8\n",
        4,
        "sites[0].power_mw",
        "PUE 1.2",
    );
    // 8 × 1,250 + 1,000 = 11,000 W × 1.2 = 13,200 W.
    assert!(e.message.contains("would draw 0.0132 MW"), "{}", e.message);

    let big = "[[sites]]\nname = \"big\"\nregion = \"r\"\npower_mw = 300\npue = 1.05\n\
               [[sites.node_groups]]\ncount = 29172\ngpu_model = \"H100-SXM-80GB\"\ngpus = 8\npeak_watts = 10200\n";
    one_error(
        big,
        4,
        "sites[0].power_mw",
        "would draw 312.5 MW at full load (Σ node peak watts × PUE 1.05), over its power budget of 300 MW",
    );
}

#[test]
fn huge_files_are_rejected_before_expansion() {
    // 100,000³ × 100,000 nodes would never fit in memory; the guard must answer at once,
    // without a power check on numbers that large.
    let errs = errors(&format!(
        "{SITE}[[sites.node_groups]]\ngpu_model = \"B200\"\ngpus = 1\nnodes_per_block = 100000\n\
         layout = [\n  {{ kind = \"pod\", count = 100000 }},\n  {{ kind = \"leaf_group\", count = 100000 }},\n  {{ kind = \"nvlink_domain\", count = 100000 }},\n]\n"
    ));
    let got: Vec<(usize, &str, &str)> = errs
        .iter()
        .map(|e| (e.line, e.field.as_str(), e.message.as_str()))
        .collect();
    let huge = "100,000,000,000,000,000,000";
    assert_eq!(
        got,
        [
            (5, "sites[0].node_groups[0]", format!("the file would expand to {huge} nodes, more than the limit of 2,000,000 (this entry alone: {huge})").as_str()),
            (5, "sites[0].node_groups[0]", format!("the file would expand to {huge} GPUs, more than the limit of 10,000,000 (this entry alone: {huge})").as_str()),
        ]
    );

    // Under the node limit, over the GPU limit: 1,500,000 × 8 = 12,000,000 GPUs.
    let group = |count: u32| {
        format!(
            "[[sites.node_groups]]\nname = \"g{count}-{{i}}\"\ncount = {count}\ngpu_model = \"B200\"\ngpus = 8\n"
        )
    };
    let gpus = format!(
        "[[sites]]\nname = \"s\"\nregion = \"r\"\npower_mw = 100000\n{}{}",
        group(1_000_000),
        group(500_000)
    );
    let e = one_error(
        &gpus,
        12,
        "sites[0].node_groups[1]",
        "the file would expand to 12,000,000 GPUs, more than the limit of 10,000,000 (this entry alone: 4,000,000)",
    );
    assert_eq!(e.column, 9);

    // Over both limits through many groups: each limit is reported once.
    let many: String = (0..3).map(|k| group(900_000 + k)).collect();
    let errs = errors(&format!(
        "[[sites]]\nname = \"s\"\nregion = \"r\"\npower_mw = 100000\n{many}"
    ));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, [12, 17], "{errs:#?}");
    assert!(
        errs[0].message.contains("21,600,024 GPUs"),
        "{}",
        errs[0].message
    );
    assert!(
        errs[1].message.contains("2,700,003 nodes"),
        "{}",
        errs[1].message
    );
}

#[test]
fn all_errors_are_collected_in_file_order() {
    let errs = errors(&format!(
        "{SITE}pue = 9\n[[sites.nodes]]\nname = \"a\"\ngpu_model = \"nope\"\ngpus = 0\n\
         [[sites]]\nname = \"s1\"\nregion = \"r\"\npower_mw = 1\nextra = true\n"
    ));
    let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        got,
        [
            (5, "sites[0].pue"),
            (8, "sites[0].nodes[0].gpu_model"),
            (9, "sites[0].nodes[0].gpus"),
            (11, "sites[1].name"),
            (14, "sites[1].extra"),
        ]
    );
}

#[test]
fn errors_are_capped() {
    let mut file = String::from(SITE);
    for k in 0..150 {
        file.push_str(&format!(
            "[[sites.nodes]]\nname = \"n{k}\"\ngpu_model = \"B200\"\ngpus = 0\n"
        ));
    }
    let errs = errors(&file);
    assert_eq!(errs.len(), MAX_ERRORS);
    assert_eq!(errs[98].line, 4 + 98 * 4 + 4);
    assert_eq!(
        errs[99].message,
        "51 more errors not shown (fix the ones above first)"
    );
}

#[test]
fn errors_display_one_per_line() {
    let e = parse("[[sites]]\nname = \"s\"\n", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 1, column 1: sites[0].region: missing required field 'region'\n\
         line 1, column 1: sites[0].power_mw: missing required field 'power_mw'"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert!(boxed.to_string().contains("region"));
}

#[test]
fn every_prefix_of_a_layout_creates_exactly_the_blocks_it_fills() {
    for pods in 1..=3u64 {
        for leaves in 1..=3u64 {
            for per_block in 1..=3u64 {
                for count in 1..=pods * leaves * per_block {
                    let spec = ok(&format!(
                        "{SITE}[[sites.node_groups]]\ncount = {count}\ngpu_model = \"B200\"\n\
                         gpus = 1\nnodes_per_block = {per_block}\nlayout = [\n\
                         {{ kind = \"pod\", count = {pods} }},\n\
                         {{ kind = \"leaf_group\", count = {leaves} }},\n]\n"
                    ));
                    let site = &spec.sites[0];
                    let case = format!("{pods}×{leaves}×{per_block}, count {count}");
                    assert_eq!(site.nodes.len() as u64, count, "{case}");
                    let of = |kind| site.blocks.iter().filter(|b| b.kind == kind).count() as u64;
                    assert_eq!(
                        of(BlockKind::LeafGroup),
                        count.div_ceil(per_block),
                        "{case}"
                    );
                    assert_eq!(
                        of(BlockKind::Pod),
                        count.div_ceil(per_block * leaves),
                        "{case}"
                    );
                    for b in &site.blocks {
                        let prefix = format!("{}/", b.path);
                        let filled = site
                            .nodes
                            .iter()
                            .any(|n| n.block_path == b.path || n.block_path.starts_with(&prefix));
                        assert!(filled, "{case}: empty block {}", b.path);
                    }
                    // Blocks fill in order: node k sits in leaf block k / per_block.
                    for (k, n) in site.nodes.iter().enumerate() {
                        let leaf = k as u64 / per_block;
                        let want = format!(
                            "s1-pod{}/s1-pod{}-leaf{}",
                            leaf / leaves + 1,
                            leaf / leaves + 1,
                            leaf % leaves + 1
                        );
                        assert_eq!(n.block_path, want, "{case}: node {k}");
                    }
                }
            }
        }
    }
}

#[test]
fn the_documented_example_is_valid() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/fleet-file.md");
    let doc = std::fs::read_to_string(doc_path).unwrap();
    let start = doc.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let spec = ok(&doc[start..end]);
    assert_eq!(spec.node_count(), 27_501);
    assert_eq!(spec.gpu_count(), 220_004);
    assert_eq!(spec.sites[0].blocks.len(), 1 + 25 + 500);
    assert_eq!(spec.sites[0].nodes[0].name, "m1-pod01-leaf01-n001");
}
