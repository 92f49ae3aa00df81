//! Expansion of checked sites into blocks and nodes, with the checks that need the
//! generated names (duplicates, length).

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use crate::check::{Group, Hardware, Item, Node, Site};
use crate::errors::{Diag, thousands};
use crate::pattern::{Values, check_name};
use crate::{BlockSpec, FleetSpec, GpuModelSpec, NodeSpec, SiteSpec};

pub(crate) fn expand(d: &mut Diag<'_>, sites: &[Site], gpu_models: Vec<GpuModelSpec>) -> FleetSpec {
    // Node names are unique in the whole file; the value is where the name was defined.
    let mut node_names: HashMap<String, usize> = HashMap::new();
    let sites = sites
        .iter()
        .map(|s| expand_site(d, s, &mut node_names))
        .collect();
    FleetSpec { gpu_models, sites }
}

fn expand_site(d: &mut Diag<'_>, site: &Site, node_names: &mut HashMap<String, usize>) -> SiteSpec {
    let mut out = SiteSpec {
        name: site.name.clone(),
        region: site.region.clone(),
        kind: site.kind,
        power_budget_watts: site.power.as_ref().map_or(0, |p| p.value),
        pue_milli: site.pue_milli.unwrap_or(0),
        energy_usd_per_mwh: site.energy,
        blocks: Vec::new(),
        nodes: Vec::new(),
    };
    let mut block_names: HashSet<String> = HashSet::new();
    let mut paths: HashMap<&str, &str> = HashMap::new();
    for b in &site.blocks {
        block_names.insert(b.name.clone());
        paths.insert(&b.name, &b.path);
        out.blocks.push(BlockSpec {
            name: b.name.clone(),
            kind: b.kind,
            parent: b.parent.clone(),
            path: b.path.clone(),
        });
    }
    for item in &site.items {
        match item {
            Item::Node(n) => {
                let block_path = n.block.as_deref().and_then(|b| paths.get(b)).copied();
                explicit_node(d, n, block_path.unwrap_or(""), node_names, &mut out.nodes);
            }
            Item::Group(g) => {
                let parent = g
                    .parent_block
                    .as_deref()
                    .map(|p| (p, paths.get(p).copied().unwrap_or(p)));
                let mut generator = Generator {
                    d: &mut *d,
                    site: &site.name,
                    group: g,
                    node_names: &mut *node_names,
                    block_names: &mut block_names,
                    out: &mut out,
                    node_problems: Problems::default(),
                    block_problems: (0..g.levels.len()).map(|_| Problems::default()).collect(),
                };
                generator.run(parent);
                generator.report();
            }
        }
    }
    out
}

fn explicit_node(
    d: &mut Diag<'_>,
    n: &Node,
    block_path: &str,
    node_names: &mut HashMap<String, usize>,
    nodes: &mut Vec<NodeSpec>,
) {
    if let Some(first) = node_names.get(&n.name.value) {
        let line = d.line_of(*first);
        d.push(
            &n.name.span,
            format!("{}.name", n.path),
            format!(
                "duplicate node name '{}' (first defined on line {line})",
                n.name.value
            ),
        );
        return;
    }
    node_names.insert(n.name.value.clone(), n.name.span.start);
    nodes.push(node_spec(
        n.name.value.clone(),
        n.block.clone(),
        block_path.to_string(),
        &n.hw,
    ));
}

fn node_spec(name: String, block: Option<String>, block_path: String, hw: &Hardware) -> NodeSpec {
    NodeSpec {
        name,
        block,
        block_path,
        gpu_model: hw.gpu_model.clone(),
        gpu_count: hw.gpus,
        cpu_cores: hw.cpu_cores,
        ram_gib: hw.ram_gib,
        idle_watts: hw.idle_watts,
        peak_watts: hw.peak_watts,
        burn_in: hw.burn_in,
    }
}

/// Problems with generated names, summed up per pattern: one message for thousands of
/// clashing names is more useful than thousands of messages.
#[derive(Default)]
struct Problems {
    first: Option<String>,
    count: u64,
}

impl Problems {
    fn add(&mut self, message: impl FnOnce() -> String) {
        if self.first.is_none() {
            self.first = Some(message());
        }
        self.count += 1;
    }

    fn report(self, d: &mut Diag<'_>, span: &Range<usize>, field: &str, what: &str) {
        let Some(first) = self.first else { return };
        let message = if self.count > 1 {
            format!(
                "{first} ({} {what} of this pattern have problems)",
                thousands(self.count)
            )
        } else {
            first
        };
        d.push(span, field, message);
    }
}

struct Generator<'g, 'd> {
    d: &'g mut Diag<'d>,
    site: &'g str,
    group: &'g Group,
    node_names: &'g mut HashMap<String, usize>,
    block_names: &'g mut HashSet<String>,
    out: &'g mut SiteSpec,
    node_problems: Problems,
    block_problems: Vec<Problems>,
}

impl Generator<'_, '_> {
    /// Generates blocks depth-first (so parents come first) and fills them in order; only
    /// blocks that receive a node are created.
    fn run(&mut self, parent: Option<(&str, &str)>) {
        let g = self.group;
        let (parent_name, parent_path) = parent.unwrap_or(("", ""));
        // The size guard has passed, so the count is at most MAX_NODES.
        let count = u64::try_from(g.count).unwrap_or(0);
        if g.levels.is_empty() {
            for i in 1..=count {
                self.node(parent_name, parent_path, i, i);
            }
            return;
        }
        // blocks_below[k]: innermost blocks inside one block of level k.
        let mut blocks_below = vec![1u64; g.levels.len()];
        for k in (0..g.levels.len().saturating_sub(1)).rev() {
            blocks_below[k] = blocks_below[k + 1].saturating_mul(g.levels[k + 1].count);
        }
        let innermost = count.div_ceil(g.nodes_per_block);
        // The current block at each level: (name, path).
        let mut current: Vec<(String, String)> =
            vec![(String::new(), String::new()); g.levels.len()];
        for b in 0..innermost {
            for (k, level) in g.levels.iter().enumerate() {
                if b % blocks_below[k] != 0 {
                    continue;
                }
                let index = b / blocks_below[k];
                let (up_name, up_path) = match k {
                    0 => (parent_name, parent_path),
                    _ => (current[k - 1].0.as_str(), current[k - 1].1.as_str()),
                };
                let name = level.pattern.render(&Values {
                    site: self.site,
                    parent: up_name,
                    block: "",
                    n: index % level.count + 1,
                    i: index + 1,
                });
                let path = if up_path.is_empty() {
                    name.clone()
                } else {
                    format!("{up_path}/{name}")
                };
                if let Err(e) = check_name(&name) {
                    self.block_problems[k].add(|| format!("generates an invalid block name: {e}"));
                } else if !self.block_names.insert(name.clone()) {
                    let site = self.site;
                    self.block_problems[k].add(|| {
                        format!("generates block name '{name}', already used in site '{site}'")
                    });
                }
                self.out.blocks.push(BlockSpec {
                    name: name.clone(),
                    kind: level.kind,
                    parent: (!up_name.is_empty()).then(|| up_name.to_string()),
                    path: path.clone(),
                });
                current[k] = (name, path);
            }
            let first = b * g.nodes_per_block;
            let last = (first + g.nodes_per_block).min(count);
            let (block, block_path) = current.last().map_or(("", ""), |(n, p)| (n, p));
            // Cloned so that `self` can be borrowed mutably while generating.
            let (block, block_path) = (block.to_string(), block_path.to_string());
            for j in first..last {
                self.node(&block, &block_path, j - first + 1, j + 1);
            }
        }
    }

    fn node(&mut self, block: &str, block_path: &str, n: u64, i: u64) {
        let g = self.group;
        let name = g.pattern.render(&Values {
            site: self.site,
            parent: "",
            block,
            n,
            i,
        });
        if let Err(e) = check_name(&name) {
            self.node_problems
                .add(|| format!("generates an invalid node name: {e}"));
        } else if let Some(first) = self.node_names.get(&name) {
            let line = self.d.line_of(*first);
            self.node_problems
                .add(|| format!("generates node name '{name}', already used (line {line})"));
        } else {
            self.node_names.insert(name.clone(), g.name_at.start);
        }
        self.out.nodes.push(node_spec(
            name,
            (!block.is_empty()).then(|| block.to_string()),
            block_path.to_string(),
            &g.hw,
        ));
    }

    fn report(self) {
        let g = self.group;
        for (problems, level) in self.block_problems.into_iter().zip(&g.levels) {
            problems.report(self.d, &level.name_at, &level.name_field, "block names");
        }
        self.node_problems
            .report(self.d, &g.name_at, &g.name_field, "node names");
    }
}
