//! Reading the document into checked sites, groups, blocks and nodes, and the checks that
//! need no expansion (size guard, power budget).

use std::collections::HashMap;
use std::ops::Range;
use std::str::FromStr;

use neocloud_types::{BlockKind, BoardTopology, GpuModel, Money, SiteKind};
use toml::de::{DeTable, DeValue};

use crate::errors::{Diag, FleetErrors, thousands};
use crate::pattern::{Pattern, Var, check_name};
use crate::read::{At, Table, article};
use crate::{FleetSpec, GpuModelSpec, MAX_GPUS, MAX_NODES};

pub(crate) const MAX_GPUS_PER_NODE: u32 = 64;
pub(crate) const MAX_CPU_CORES: u32 = 4096;
pub(crate) const MAX_RAM_GIB: u32 = 65_536;
const MAX_NODE_WATTS: u32 = 1_000_000;
const MAX_MEMORY_GIB: u32 = 16_384;
const MAX_TDP_WATTS: u32 = 10_000;
const MAX_LAYOUT_COUNT: u64 = 100_000;
const MAX_POWER_MW: f64 = 100_000.0;
const MAX_ENERGY_USD: u64 = 1_000_000_000;

/// Peak power of a node whose file does not give it: the GPUs' TDP, plus 250 W per GPU for
/// the host CPUs, memory and NICs that scale with it, plus 1 kW for the chassis and fans.
pub(crate) fn default_peak_watts(gpus: u64, tdp_watts: u64) -> u64 {
    gpus.saturating_mul(tdp_watts.saturating_add(250))
        .saturating_add(1000)
}

const ORDER: &str = "pod → leaf_group → nvlink_domain";

const MODEL_KEYS: &[&str] = &["name", "vendor", "memory_gib", "tdp_watts", "topology"];
const SITE_KEYS: &[&str] = &[
    "name",
    "region",
    "kind",
    "power_mw",
    "pue",
    "energy_usd_per_mwh",
    "node_groups",
    "blocks",
    "nodes",
];
const GROUP_KEYS: &[&str] = &[
    "name",
    "count",
    "gpu_model",
    "gpus",
    "cpu_cores",
    "ram_gib",
    "idle_watts",
    "peak_watts",
    "parent_block",
    "nodes_per_block",
    "layout",
    "burn_in",
];
const LEVEL_KEYS: &[&str] = &["kind", "count", "name"];
const BLOCK_KEYS: &[&str] = &["name", "kind", "parent"];
const NODE_KEYS: &[&str] = &[
    "name",
    "block",
    "gpu_model",
    "gpus",
    "cpu_cores",
    "ram_gib",
    "idle_watts",
    "peak_watts",
    "burn_in",
];

/// The hardware of one node, defaults filled in.
#[derive(Clone, Debug)]
pub(crate) struct Hardware {
    pub gpu_model: String,
    pub gpus: u32,
    pub cpu_cores: u32,
    pub ram_gib: u32,
    pub idle_watts: u32,
    pub peak_watts: u32,
    /// New nodes start in `provisioning` and enter service only after their agent's burn-in
    /// check passes.
    pub burn_in: bool,
}

/// One level of a node group's layout.
pub(crate) struct Level {
    pub kind: BlockKind,
    pub count: u64,
    pub pattern: Pattern,
    /// Where generated-name errors point: the `name` value, or the level when defaulted.
    pub name_at: Range<usize>,
    pub name_field: String,
}

/// A node group without errors.
pub(crate) struct Group {
    pub span: Range<usize>,
    pub hw: Hardware,
    pub pattern: Pattern,
    pub name_at: Range<usize>,
    pub name_field: String,
    /// Wide enough for any layout's capacity, so that the size guard sees true totals.
    pub count: u128,
    pub count_at: Range<usize>,
    pub path: String,
    pub parent_block: Option<String>,
    pub levels: Vec<Level>,
    pub nodes_per_block: u64,
}

/// An explicit node without errors.
pub(crate) struct Node {
    pub name: At<String>,
    pub block: Option<String>,
    pub hw: Hardware,
    pub path: String,
}

/// Something that produces nodes, in file order.
pub(crate) enum Item {
    Group(Group),
    Node(Node),
}

impl Item {
    fn start(&self) -> usize {
        match self {
            Item::Group(g) => g.span.start,
            Item::Node(n) => n.name.span.start,
        }
    }

    fn nodes(&self) -> u128 {
        match self {
            Item::Group(g) => g.count,
            Item::Node(_) => 1,
        }
    }

    fn hw(&self) -> &Hardware {
        match self {
            Item::Group(g) => &g.hw,
            Item::Node(n) => &n.hw,
        }
    }

    fn at(&self) -> (Range<usize>, &str) {
        match self {
            Item::Group(g) => (g.count_at.clone(), &g.path),
            Item::Node(n) => (n.name.span.clone(), &n.path),
        }
    }
}

/// An explicit block without errors; `path` is filled in once parents are known.
pub(crate) struct ExplicitBlock {
    pub name: String,
    pub kind: BlockKind,
    pub parent: Option<String>,
    pub path: String,
}

/// A site as read. Fields that failed their checks hold placeholders: the site is only
/// turned into output when the whole file is free of errors.
pub(crate) struct Site {
    pub name: String,
    pub region: String,
    pub kind: SiteKind,
    pub power: Option<At<i64>>,
    pub power_field: String,
    pub pue_milli: Option<u32>,
    pub energy: Money,
    /// Parents before children.
    pub blocks: Vec<ExplicitBlock>,
    pub items: Vec<Item>,
}

/// GPU models nodes may use: the catalog's and the file's.
struct Models {
    /// TDP by name; `None` for a model of the file whose figures are wrong (already
    /// reported), so that its nodes do not also get "unknown model" errors.
    tdp: HashMap<String, Option<u32>>,
    names: Vec<String>,
    file: Vec<GpuModelSpec>,
}

pub(crate) fn parse(source: &str, catalog: &[GpuModel]) -> Result<FleetSpec, FleetErrors> {
    let mut d = Diag::new(source);
    let (doc, syntax) = DeTable::parse_recoverable(source);
    if !syntax.is_empty() {
        // The recovered document would only produce follow-on errors.
        for e in &syntax {
            d.push(
                &e.span().unwrap_or(0..0),
                "",
                format!("TOML syntax error: {}", e.message()),
            );
        }
        return Err(d.into_errors());
    }
    let root = Table::new(doc.get_ref(), 0..0, String::new());
    root.check_keys(&mut d, &["gpu_models", "sites"]);
    let models = read_models(&mut d, &root, catalog);

    let mut sites = Vec::new();
    let mut site_names: HashMap<String, usize> = HashMap::new();
    for t in root.tables(&mut d, "sites") {
        let site = read_site(&mut d, &t, &models, &mut site_names);
        sites.push(site);
    }

    if !size_guard(&mut d, &sites) {
        return Err(d.into_errors());
    }
    for site in &sites {
        power_check(&mut d, site);
    }
    let spec = crate::expand::expand(&mut d, &sites, models.file);
    if d.count() > 0 {
        Err(d.into_errors())
    } else {
        Ok(spec)
    }
}

fn read_models(d: &mut Diag<'_>, root: &Table<'_, '_>, catalog: &[GpuModel]) -> Models {
    let mut models = Models {
        tdp: HashMap::new(),
        names: Vec::new(),
        file: Vec::new(),
    };
    for m in catalog {
        if models
            .tdp
            .insert(m.name.clone(), Some(m.tdp_watts))
            .is_none()
        {
            models.names.push(m.name.clone());
        }
    }
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for t in root.tables(d, "gpu_models") {
        t.check_keys(d, MODEL_KEYS);
        let before = d.count();
        let name = valid_name(d, &t, "name");
        let vendor = match t.opt_str(d, "vendor") {
            Some(v)
                if v.value.is_empty()
                    || v.value.chars().count() > 63
                    || v.value.contains(char::is_control) =>
            {
                d.push(&v.span, t.field("vendor"), "must be 1–63 characters");
                None
            }
            Some(v) => Some(v.value),
            None => Some("unknown".to_string()),
        };
        let memory = t.req_u32(d, "memory_gib", 1, MAX_MEMORY_GIB);
        let tdp = t.req_u32(d, "tdp_watts", 1, MAX_TDP_WATTS);
        let topology = match t.opt_str(d, "topology") {
            Some(v) => match v.value.parse::<BoardTopology>() {
                Ok(topology) => Some(topology),
                Err(e) => {
                    d.push(&v.span, t.field("topology"), e);
                    None
                }
            },
            None => None,
        };
        let Some(name) = name else { continue };
        if let Some(line) = first_line.get(&name.value) {
            d.push(
                &name.span,
                t.field("name"),
                format!(
                    "duplicate GPU model '{}' (first defined on line {line})",
                    name.value
                ),
            );
            continue;
        }
        first_line.insert(name.value.clone(), d.line_of(name.span.start));
        let (Some(vendor), Some(memory), Some(tdp)) = (vendor, memory, tdp) else {
            models.tdp.entry(name.value.clone()).or_insert(None);
            continue;
        };
        if d.count() != before {
            continue;
        }
        let builtin_topology = BoardTopology::of_model(&name.value);
        let spec = GpuModelSpec {
            name: name.value.clone(),
            vendor,
            memory_gib: memory.value,
            tdp_watts: tdp.value,
            topology: topology.unwrap_or(builtin_topology),
        };
        match catalog.iter().find(|c| c.name == spec.name) {
            Some(c)
                if c.builtin
                    && (c.vendor != spec.vendor
                        || c.memory_gib != spec.memory_gib
                        || c.tdp_watts != spec.tdp_watts
                        || spec.topology != builtin_topology) =>
            {
                d.push(
                    &name.span,
                    t.field("name"),
                    format!(
                        "GPU model '{}' is built in as {}, {} GiB, {} W, topology {}; a fleet \
                         file may only repeat it identically",
                        c.name, c.vendor, c.memory_gib, c.tdp_watts, builtin_topology
                    ),
                );
            }
            found => {
                // A model added earlier (by a previous import or the API) takes the file's
                // figures: the importer updates it, so nodes must be checked against them.
                if found.is_none() {
                    models.names.push(spec.name.clone());
                }
                models.tdp.insert(spec.name.clone(), Some(spec.tdp_watts));
                models.file.push(spec);
            }
        }
    }
    models
}

/// A required string field that must follow the naming rule.
fn valid_name(d: &mut Diag<'_>, t: &Table<'_, '_>, key: &str) -> Option<At<String>> {
    let name = t.req_str(d, key)?;
    match check_name(&name.value) {
        Ok(()) => Some(name),
        Err(e) => {
            d.push(&name.span, t.field(key), e);
            None
        }
    }
}

fn read_site(
    d: &mut Diag<'_>,
    t: &Table<'_, '_>,
    models: &Models,
    site_names: &mut HashMap<String, usize>,
) -> Site {
    t.check_keys(d, SITE_KEYS);
    let name = valid_name(d, t, "name");
    if let Some(name) = &name {
        if let Some(line) = site_names.get(&name.value) {
            d.push(
                &name.span,
                t.field("name"),
                format!(
                    "duplicate site name '{}' (first defined on line {line})",
                    name.value
                ),
            );
        } else {
            site_names.insert(name.value.clone(), d.line_of(name.span.start));
        }
    }
    let name = name.map(|n| n.value).unwrap_or_default();
    let region = valid_name(d, t, "region")
        .map(|r| r.value)
        .unwrap_or_default();
    let kind = match t.opt_str(d, "kind") {
        None => SiteKind::Terrestrial,
        Some(k) => SiteKind::from_str(&k.value).unwrap_or_else(|e| {
            d.push(&k.span, t.field("kind"), e);
            SiteKind::Terrestrial
        }),
    };
    let power = read_power(d, t);
    let pue_milli = read_pue(d, t);
    let energy = read_energy(d, t);

    let (blocks, block_kinds) = read_blocks(d, t, &name);
    let mut items = Vec::new();
    for g in t.tables(d, "node_groups") {
        if let Some(g) = read_group(d, &g, models, &block_kinds) {
            items.push(Item::Group(g));
        }
    }
    for n in t.tables(d, "nodes") {
        if let Some(n) = read_node(d, &n, models, &block_kinds, &name) {
            items.push(Item::Node(n));
        }
    }
    items.sort_by_key(Item::start);
    Site {
        name,
        region,
        kind,
        power,
        power_field: t.field("power_mw"),
        pue_milli,
        energy,
        blocks,
        items,
    }
}

fn read_power(d: &mut Diag<'_>, t: &Table<'_, '_>) -> Option<At<i64>> {
    if !t.require(d, "power_mw", "") {
        return None;
    }
    let mw = t.opt_number(d, "power_mw")?;
    let watts = round_to_i64(mw.value * 1e6).filter(|w| *w >= 1);
    match watts {
        Some(watts) if mw.value <= MAX_POWER_MW => Some(At {
            value: watts,
            span: mw.span,
        }),
        _ => {
            d.push(
                &mw.span,
                t.field("power_mw"),
                format!(
                    "must be more than 0 and at most {} (megawatts), got {}",
                    thousands(100_000u32),
                    mw.value
                ),
            );
            None
        }
    }
}

fn read_pue(d: &mut Diag<'_>, t: &Table<'_, '_>) -> Option<u32> {
    let Some(pue) = t.opt_number(d, "pue") else {
        return (!t.has("pue")).then_some(1200);
    };
    if !(1.0..=3.0).contains(&pue.value) {
        d.push(
            &pue.span,
            t.field("pue"),
            format!("must be between 1.0 and 3.0, got {}", pue.value),
        );
        return None;
    }
    round_to_i64(pue.value * 1000.0).and_then(|m| u32::try_from(m).ok())
}

fn read_energy(d: &mut Diag<'_>, t: &Table<'_, '_>) -> Money {
    const KEY: &str = "energy_usd_per_mwh";
    let bad = |d: &mut Diag<'_>, span: &Range<usize>, msg: String| {
        d.push(span, t.field(KEY), msg);
        Money::ZERO
    };
    match t.raw(KEY) {
        None => Money::ZERO,
        Some((DeValue::String(s), span)) => match Money::from_str(s) {
            Ok(m) if m.micros() >= 0 => m,
            Ok(_) => bad(d, &span, "must not be negative".into()),
            Err(e) => bad(d, &span, e.to_string()),
        },
        Some((DeValue::Integer(_), _)) => t
            .opt_uint(d, KEY, 0, MAX_ENERGY_USD)
            .and_then(|v| i64::try_from(v.value).ok())
            .and_then(Money::from_dollars)
            .unwrap_or(Money::ZERO),
        Some((DeValue::Float(_), span)) => {
            let Some(f) = t.opt_number(d, KEY) else {
                return Money::ZERO;
            };
            // Rust prints the shortest decimal that reads back as the same float, so
            // 55.1 becomes "55.1", not 55.100000000000001.
            let text = format!("{}", f.value);
            if f.value.is_nan() || f.value < 0.0 {
                return bad(d, &span, "must not be negative".into());
            }
            match Money::from_str(&text) {
                Ok(m) => m,
                Err(_) => bad(
                    d,
                    &span,
                    format!(
                        "the float {text} is not an exact price with at most 6 decimals; \
                         write the price as a string, e.g. \"55.25\""
                    ),
                ),
            }
        }
        Some((other, span)) => bad(
            d,
            &span,
            format!(
                "expected a decimal string such as \"55.25\" or a number, found {}",
                article(other.type_str())
            ),
        ),
    }
}

/// Reads the explicit blocks of a site; returns the valid ones with parents first and paths
/// filled in, and the kind of every named block (`None` where the kind is wrong) for
/// references from nodes and groups.
fn read_blocks(
    d: &mut Diag<'_>,
    site_table: &Table<'_, '_>,
    site: &str,
) -> (Vec<ExplicitBlock>, HashMap<String, Option<BlockKind>>) {
    struct Raw {
        name: At<String>,
        kind: Option<At<BlockKind>>,
        parent: Option<At<String>>,
        parent_field: String,
        ok: bool,
    }
    let mut raw = Vec::new();
    let mut kinds: HashMap<String, Option<BlockKind>> = HashMap::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for t in site_table.tables(d, "blocks") {
        t.check_keys(d, BLOCK_KEYS);
        let before = d.count();
        let name = valid_name(d, &t, "name");
        let kind = read_kind(d, &t, "kind");
        let parent = t.opt_str(d, "parent");
        let Some(name) = name else { continue };
        if let Some(line) = first_line.get(&name.value) {
            d.push(
                &name.span,
                t.field("name"),
                format!(
                    "duplicate block name '{}' in site '{site}' (first defined on line {line})",
                    name.value
                ),
            );
            continue;
        }
        first_line.insert(name.value.clone(), d.line_of(name.span.start));
        kinds.insert(name.value.clone(), kind.as_ref().map(|k| k.value));
        raw.push(Raw {
            name,
            kind,
            parent,
            parent_field: t.field("parent"),
            ok: d.count() == before,
        });
    }
    for b in &mut raw {
        let Some(parent) = &b.parent else { continue };
        match kinds.get(&parent.value) {
            None => {
                d.push(
                    &parent.span,
                    b.parent_field.clone(),
                    format!("unknown parent block '{}' in site '{site}'", parent.value),
                );
                b.ok = false;
            }
            Some(Some(pk)) => {
                if let Some(k) = &b.kind
                    && pk.depth() >= k.value.depth()
                {
                    d.push(
                        &parent.span,
                        b.parent_field.clone(),
                        format!(
                            "parent block '{}' is a {pk}, which is not shallower than \
                             this {} (blocks nest {ORDER})",
                            parent.value, k.value
                        ),
                    );
                    b.ok = false;
                }
            }
            Some(None) => b.ok = false,
        }
    }
    let mut blocks: Vec<ExplicitBlock> = raw
        .into_iter()
        .filter(|b| b.ok)
        .filter_map(|b| {
            Some(ExplicitBlock {
                kind: b.kind?.value,
                name: b.name.value,
                parent: b.parent.map(|p| p.value),
                path: String::new(),
            })
        })
        .collect();
    // A parent is always of a shallower kind, so sorting by depth puts parents first.
    blocks.sort_by_key(|b| b.kind.depth());
    let mut paths: HashMap<String, String> = HashMap::new();
    for b in &mut blocks {
        b.path = match b.parent.as_ref().and_then(|p| paths.get(p)) {
            Some(parent_path) => format!("{parent_path}/{}", b.name),
            None => b.name.clone(),
        };
        paths.insert(b.name.clone(), b.path.clone());
    }
    (blocks, kinds)
}

fn read_kind(d: &mut Diag<'_>, t: &Table<'_, '_>, key: &str) -> Option<At<BlockKind>> {
    let k = t.req_str(d, key)?;
    match BlockKind::from_str(&k.value) {
        Ok(value) => Some(At {
            value,
            span: k.span,
        }),
        Err(e) => {
            d.push(&k.span, t.field(key), e);
            None
        }
    }
}

fn read_hardware(d: &mut Diag<'_>, t: &Table<'_, '_>, models: &Models) -> Option<Hardware> {
    let before = d.count();
    let model = t.req_str(d, "gpu_model");
    let tdp = model.as_ref().and_then(|m| match models.tdp.get(&m.value) {
        Some(tdp) => *tdp,
        None => {
            d.push(
                &m.span,
                t.field("gpu_model"),
                format!(
                    "unknown GPU model '{}' (known: {})",
                    m.value,
                    models.names.join(", ")
                ),
            );
            None
        }
    });
    let gpus = t.req_u32(d, "gpus", 1, MAX_GPUS_PER_NODE);
    let cpu = t.opt_u32(d, "cpu_cores", 1, MAX_CPU_CORES);
    let ram = t.opt_u32(d, "ram_gib", 1, MAX_RAM_GIB);
    let idle = t.opt_u32(d, "idle_watts", 1, MAX_NODE_WATTS);
    let peak = t.opt_u32(d, "peak_watts", 1, MAX_NODE_WATTS);
    let burn_in = t.opt_bool(d, "burn_in").is_some_and(|b| b.value);
    if d.count() != before {
        return None;
    }
    let (model, tdp, gpus) = (model?.value, tdp?, gpus?.value);
    let peak_watts = match peak {
        Some(p) => p.value,
        None => {
            let default = default_peak_watts(gpus.into(), tdp.into());
            match u32::try_from(default) {
                Ok(w) if w <= MAX_NODE_WATTS => w,
                _ => {
                    d.push(
                        &t.span,
                        t.field("peak_watts"),
                        format!(
                            "the default peak power ({} W) is over the limit of {} W; \
                             set peak_watts",
                            thousands(default),
                            thousands(MAX_NODE_WATTS)
                        ),
                    );
                    return None;
                }
            }
        }
    };
    let idle_watts = match idle {
        Some(i) if i.value > peak_watts => {
            d.push(
                &i.span,
                t.field("idle_watts"),
                format!(
                    "idle_watts ({}) is more than peak_watts ({peak_watts})",
                    i.value
                ),
            );
            return None;
        }
        Some(i) => i.value,
        None => (peak_watts / 4).max(1),
    };
    Some(Hardware {
        gpu_model: model,
        gpus,
        cpu_cores: cpu.map_or(14 * gpus, |c| c.value),
        ram_gib: ram.map_or(256 * gpus, |r| r.value),
        idle_watts,
        peak_watts,
        burn_in,
    })
}

fn read_node(
    d: &mut Diag<'_>,
    t: &Table<'_, '_>,
    models: &Models,
    blocks: &HashMap<String, Option<BlockKind>>,
    site: &str,
) -> Option<Node> {
    t.check_keys(d, NODE_KEYS);
    let before = d.count();
    let name = valid_name(d, t, "name");
    let block = t.opt_str(d, "block");
    if let Some(b) = &block
        && !blocks.contains_key(&b.value)
    {
        d.push(
            &b.span,
            t.field("block"),
            format!(
                "unknown block '{}' (no [[sites.blocks]] of site '{site}' has that name)",
                b.value
            ),
        );
    }
    let hw = read_hardware(d, t, models);
    if d.count() != before {
        return None;
    }
    Some(Node {
        name: name?,
        block: block.map(|b| b.value),
        hw: hw?,
        path: t.path.clone(),
    })
}

fn read_group(
    d: &mut Diag<'_>,
    t: &Table<'_, '_>,
    models: &Models,
    blocks: &HashMap<String, Option<BlockKind>>,
) -> Option<Group> {
    t.check_keys(d, GROUP_KEYS);
    let before = d.count();
    let hw = read_hardware(d, t, models);
    let parent_block = t.opt_str(d, "parent_block");
    let parent_kind = parent_block
        .as_ref()
        .and_then(|p| match blocks.get(&p.value) {
            Some(kind) => *kind,
            None => {
                d.push(
                    &p.span,
                    t.field("parent_block"),
                    format!(
                        "unknown block '{}' (parent_block must name one of the site's \
                         [[sites.blocks]])",
                        p.value
                    ),
                );
                None
            }
        });

    let levels = read_layout(d, t, parent_block.as_ref(), parent_kind);
    let has_layout = t.has("layout");
    let nodes_per_block = if has_layout {
        t.require(d, "nodes_per_block", " (required with a layout)");
        t.opt_uint(d, "nodes_per_block", 1, MAX_LAYOUT_COUNT)
    } else {
        if let Some((_, span)) = t.raw("nodes_per_block") {
            d.push(
                &span,
                t.field("nodes_per_block"),
                "nodes_per_block applies only with a layout",
            );
        }
        None
    };

    // Only a layout whose levels are all valid has a capacity worth comparing with.
    let capacity = match &nodes_per_block {
        Some(npb) if !levels.is_empty() => {
            Some(levels.iter().fold(u128::from(npb.value), |acc, l| {
                acc.saturating_mul(l.count.into())
            }))
        }
        _ => None,
    };
    let count = if has_layout {
        t.opt_uint(d, "count", 1, MAX_NODES)
    } else {
        t.require(d, "count", " (required when there is no layout)");
        t.opt_uint(d, "count", 1, MAX_NODES)
    };
    if let (Some(count), Some(capacity), Some(npb)) = (&count, capacity, &nodes_per_block)
        && u128::from(count.value) > capacity
    {
        let factors: Vec<String> = levels
            .iter()
            .map(|l| thousands(l.count))
            .chain(std::iter::once(thousands(npb.value)))
            .collect();
        d.push(
            &count.span,
            t.field("count"),
            format!(
                "count {} is more than the layout holds ({} = {} nodes)",
                thousands(count.value),
                factors.join(" × "),
                thousands(capacity)
            ),
        );
    }

    let in_block = has_layout || parent_block.is_some();
    let (allowed, default): (&[Var], &str) = if in_block {
        (&[Var::Site, Var::Block, Var::N, Var::I], "{block}-n{n:03}")
    } else {
        (&[Var::Site, Var::N, Var::I], "{site}-n{i:05}")
    };
    let (pattern, name_at) = compile_pattern(d, t, "name", default, allowed);

    if d.count() != before {
        return None;
    }
    let count_at = count
        .as_ref()
        .map_or_else(|| t.span.clone(), |c| c.span.clone());
    Some(Group {
        span: t.span.clone(),
        hw: hw?,
        pattern: pattern?,
        name_at,
        name_field: t.field("name"),
        count: count.map(|c| u128::from(c.value)).or(capacity)?,
        count_at,
        path: t.path.clone(),
        parent_block: parent_block.map(|p| p.value),
        levels,
        nodes_per_block: nodes_per_block.map_or(1, |n| n.value),
    })
}

/// Reads `layout`; returns the levels only when all of them are valid.
fn read_layout(
    d: &mut Diag<'_>,
    t: &Table<'_, '_>,
    parent_block: Option<&At<String>>,
    parent_kind: Option<BlockKind>,
) -> Vec<Level> {
    let Some((_, layout_span)) = t.raw("layout") else {
        return Vec::new();
    };
    let before = d.count();
    let tables = t.tables(d, "layout");
    if tables.is_empty() && d.count() == before {
        d.push(
            &layout_span,
            t.field("layout"),
            "a layout needs at least one level",
        );
    }
    let mut levels = Vec::new();
    let mut above = parent_kind;
    for (k, lt) in tables.iter().enumerate() {
        lt.check_keys(d, LEVEL_KEYS);
        let kind = read_kind(d, lt, "kind");
        let count = lt.req_uint(d, "count", 1, MAX_LAYOUT_COUNT);
        if let (Some(kind), Some(above)) = (&kind, above)
            && kind.value.depth() <= above.depth()
        {
            let what = match (k, parent_block) {
                (0, Some(p)) => format!("parent_block '{}' ({above})", p.value),
                _ => format!("the level above it ({above})"),
            };
            d.push(
                &kind.span,
                lt.field("kind"),
                format!(
                    "layout level '{}' is not deeper than {what}; levels go {ORDER}",
                    kind.value
                ),
            );
        }
        if let Some(kind) = &kind {
            above = Some(kind.value);
        }
        let has_parent = k > 0 || parent_block.is_some();
        let short = match kind.as_ref().map(|k| k.value) {
            Some(BlockKind::Pod) | None => "pod",
            Some(BlockKind::LeafGroup) => "leaf",
            Some(BlockKind::NvlinkDomain) => "nvl",
        };
        let (allowed, default): (&[Var], String) = if has_parent {
            (
                &[Var::Site, Var::Parent, Var::N, Var::I],
                format!("{{parent}}-{short}{{n}}"),
            )
        } else {
            (
                &[Var::Site, Var::N, Var::I],
                format!("{{site}}-{short}{{n}}"),
            )
        };
        let (pattern, name_at) = compile_pattern(d, lt, "name", &default, allowed);
        if let (Some(kind), Some(count), Some(pattern)) = (kind, count, pattern) {
            levels.push(Level {
                kind: kind.value,
                count: count.value,
                pattern,
                name_at,
                name_field: lt.field("name"),
            });
        }
    }
    if d.count() != before {
        levels.clear();
    }
    levels
}

/// Compiles the pattern in `key`, or `default` when absent; returns where errors about the
/// generated names should point.
fn compile_pattern(
    d: &mut Diag<'_>,
    t: &Table<'_, '_>,
    key: &str,
    default: &str,
    allowed: &[Var],
) -> (Option<Pattern>, Range<usize>) {
    let (src, span) = match t.opt_str(d, key) {
        Some(s) => (s.value, s.span),
        None if t.has(key) => return (None, t.span.clone()),
        None => (default.to_string(), t.span.clone()),
    };
    match Pattern::compile(&src, allowed) {
        Ok(p) => (Some(p), span),
        Err(e) => {
            d.push(&span, t.field(key), e);
            (None, span)
        }
    }
}

/// Rejects files that would expand beyond [`MAX_NODES`] or [`MAX_GPUS`], before anything
/// is allocated for them.
fn size_guard(d: &mut Diag<'_>, sites: &[Site]) -> bool {
    let nodes_ok = within_limit(d, sites, MAX_NODES, "nodes", Item::nodes);
    let gpus_ok = within_limit(d, sites, MAX_GPUS, "GPUs", |i| {
        i.nodes().saturating_mul(i.hw().gpus.into())
    });
    nodes_ok && gpus_ok
}

/// Points at the node group (or node) where the running total crosses the limit.
fn within_limit(
    d: &mut Diag<'_>,
    sites: &[Site],
    limit: u64,
    what: &str,
    per_item: impl Fn(&Item) -> u128,
) -> bool {
    let items = || sites.iter().flat_map(|s| &s.items);
    let total = items().fold(0u128, |acc, i| acc.saturating_add(per_item(i)));
    let limit = u128::from(limit);
    if total <= limit {
        return true;
    }
    let mut running = 0u128;
    let crossing = items().find(|i| {
        running = running.saturating_add(per_item(i));
        running > limit
    });
    if let Some(item) = crossing {
        let (span, path) = item.at();
        d.push(
            &span,
            path,
            format!(
                "the file would expand to {} {what}, more than the limit of {} \
                 (this entry alone: {})",
                thousands(total),
                thousands(limit),
                thousands(per_item(item))
            ),
        );
    }
    false
}

/// Checks that the site can power every node at full load.
fn power_check(d: &mut Diag<'_>, site: &Site) {
    let (Some(budget), Some(pue_milli)) = (&site.power, site.pue_milli) else {
        return;
    };
    let peak: u128 = site
        .items
        .iter()
        .map(|i| i.nodes().saturating_mul(i.hw().peak_watts.into()))
        .fold(0u128, u128::saturating_add);
    let draw = peak.saturating_mul(pue_milli.into()).div_ceil(1000);
    let budget_w = u128::try_from(budget.value).unwrap_or(0);
    if draw <= budget_w {
        return;
    }
    // One decimal reads best, unless it would hide how close to the budget the draw is.
    let places = if draw - budget_w < 100_000 { 6 } else { 1 };
    d.push(
        &budget.span,
        site.power_field.clone(),
        format!(
            "site '{}' would draw {} MW at full load (Σ node peak watts × PUE {}), over its \
             power budget of {} MW",
            site.name,
            megawatts(draw, places),
            milli(pue_milli),
            megawatts(budget_w, 6)
        ),
    );
}

/// Watts as megawatts with at most `places` decimals, rounded up, trailing zeros dropped.
pub(crate) fn megawatts(watts: u128, places: u32) -> String {
    let unit = 10u128.pow(6 - places.min(6));
    let scaled = watts.div_ceil(unit);
    let scale = 10u128.pow(places.min(6));
    trim_decimal(scaled / scale, scaled % scale, places.min(6))
}

/// Thousandths as a decimal: 1050 → "1.05".
fn milli(v: u32) -> String {
    trim_decimal(u128::from(v / 1000), u128::from(v % 1000), 3)
}

fn trim_decimal(whole: u128, frac: u128, places: u32) -> String {
    if places == 0 || frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0width$}", width = places as usize);
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Rounds a float to the nearest integer if it fits an `i64`.
pub(crate) fn round_to_i64(x: f64) -> Option<i64> {
    let r = x.round();
    // 2^63 itself does not fit, and NaN fails both comparisons.
    let limit = 9_223_372_036_854_775_808.0_f64;
    if r >= -limit && r < limit {
        // In range and integral, so the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        Some(r as i64)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn megawatts_formatting() {
        assert_eq!(megawatts(300_000_000, 6), "300");
        assert_eq!(megawatts(312_400_000, 1), "312.4");
        assert_eq!(megawatts(312_400_001, 1), "312.5");
        assert_eq!(megawatts(10_909_091, 6), "10.909091");
        assert_eq!(megawatts(1, 6), "0.000001");
    }

    #[test]
    fn milli_formatting() {
        assert_eq!(milli(1000), "1");
        assert_eq!(milli(1050), "1.05");
        assert_eq!(milli(1234), "1.234");
    }

    #[test]
    fn rounding_to_i64() {
        assert_eq!(round_to_i64(2.5), Some(3));
        assert_eq!(round_to_i64(-2.4), Some(-2));
        assert_eq!(round_to_i64(f64::NAN), None);
        assert_eq!(round_to_i64(f64::INFINITY), None);
        assert_eq!(round_to_i64(1e19), None);
    }
}
