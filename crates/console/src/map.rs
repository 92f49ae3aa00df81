//! The topology map of a site: one small square per node, a row per innermost block (leaf
//! group or NVLink domain), a panel per outermost block (pod), coloured by node state or by
//! the tenant a node works for.
//!
//! It has to stay small and fast at 27,500 nodes, so nodes are not elements: each colour is
//! one `<path>` of squares (about 16 bytes a node), and each row carries one transparent
//! rectangle whose `<title>` names the block. A click is turned into a node by the server
//! ([`Layout::locate`]) from the same deterministic layout, so the page ships no node list.

use std::collections::BTreeMap;
use std::fmt::Write;

use neocloud_service::MapCell;
use neocloud_types::{NodeState, TenantId};

use crate::svg::esc;

/// Side of a node's square plus the gap to the next, in SVG units.
pub const CELL: u32 = 5;
const SQUARE: u32 = 4;
/// Nodes in one row before it wraps.
const MAX_COLS: u32 = 60;
/// Width the panels flow in before they wrap to the next line.
const FLOW_WIDTH: u32 = 1400;
const LABEL_H: u32 = 14;
const PAD: u32 = 12;
/// Extra space between the rows of two blocks (leaf groups, NVLink domains), so that a
/// block's wrapped rows read as one and blocks stand apart.
const BLOCK_GAP: u32 = 3;

/// A panel (outermost block) of the map.
#[derive(Clone, Debug)]
pub struct Panel {
    /// Block name.
    pub label: String,
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
}

/// One row of squares (an innermost block, or a wrapped part of one).
#[derive(Clone, Debug)]
pub struct Row {
    /// The block path.
    pub path: String,
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Squares in the row.
    pub len: u32,
}

/// Where every node of a site is drawn.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// Total width.
    pub width: u32,
    /// Total height.
    pub height: u32,
    /// Panels.
    pub panels: Vec<Panel>,
    /// Rows.
    pub rows: Vec<Row>,
    /// Top-left corner of each node's square, in the order of the cells.
    pub pos: Vec<(u32, u32)>,
}

/// A count as a map coordinate (a site has far fewer than 4 billion nodes).
fn u(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn top_block(path: &str) -> &str {
    path.split('/').next().unwrap_or("")
}

impl Layout {
    /// Lays out the cells (already in block-path order).
    pub fn of(cells: &[MapCell]) -> Layout {
        let mut l = Layout::default();
        // Group consecutive cells by pod, then by row path.
        let mut start = 0;
        let (mut cx, mut cy, mut line_h) = (0u32, 0u32, 0u32);
        while start < cells.len() {
            let pod = top_block(&cells[start].block_path);
            let mut end = start;
            while end < cells.len() && top_block(&cells[end].block_path) == pod {
                end += 1;
            }
            // Rows of this panel: (path, first, count).
            let mut rows: Vec<(usize, usize)> = Vec::new();
            let mut i = start;
            while i < end {
                let mut j = i;
                while j < end && cells[j].block_path == cells[i].block_path {
                    j += 1;
                }
                let mut k = i;
                while k < j {
                    let n = (j - k).min(MAX_COLS as usize);
                    rows.push((k, n));
                    k += n;
                }
                i = j;
            }
            let cols = u(rows.iter().map(|r| r.1).max().unwrap_or(0));
            let pw = (cols * CELL).max(60);
            // Each row's offset in the panel: a gap where a new block begins.
            let mut offsets = Vec::with_capacity(rows.len());
            let mut y = LABEL_H;
            for (r, (first, _)) in rows.iter().enumerate() {
                if r > 0 && cells[*first].block_path != cells[rows[r - 1].0].block_path {
                    y += BLOCK_GAP;
                }
                offsets.push(y);
                y += CELL;
            }
            let ph = y;
            if cx > 0 && cx + pw > FLOW_WIDTH {
                cx = 0;
                cy += line_h + PAD;
                line_h = 0;
            }
            l.panels.push(Panel {
                label: if pod.is_empty() {
                    "(no block)".to_string()
                } else {
                    pod.to_string()
                },
                x: cx,
                y: cy,
            });
            for ((first, n), off) in rows.iter().zip(&offsets) {
                let y = cy + off;
                l.rows.push(Row {
                    path: cells[*first].block_path.clone(),
                    x: cx,
                    y,
                    len: u(*n),
                });
                for c in 0..u(*n) {
                    l.pos.push((cx + c * CELL, y));
                }
            }
            l.width = l.width.max(cx + pw);
            line_h = line_h.max(ph);
            cx += pw + PAD;
            start = end;
        }
        l.height = cy + line_h;
        l
    }

    /// The cell drawn at a point, if any.
    pub fn locate(&self, x: u32, y: u32) -> Option<usize> {
        self.pos
            .iter()
            .position(|&(px, py)| x >= px && x < px + CELL && y >= py && y < py + CELL)
    }
}

/// What the map is coloured by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorBy {
    /// Node state (available, partly allocated, allocated, cordoned, …).
    State,
    /// The tenant a node works for.
    Tenant,
}

/// The colour key of a cell when coloured by state.
pub fn state_key(c: &MapCell) -> &'static str {
    match c.state {
        NodeState::Available if c.held_gpus > 0 => "partial",
        NodeState::Available => "available",
        NodeState::Allocated => "allocated",
        NodeState::Cordoned => "cordoned",
        NodeState::Draining => "draining",
        NodeState::Maintenance => "maintenance",
        NodeState::Failed => "failed",
        NodeState::Unreachable => "unreachable",
        NodeState::Provisioning | NodeState::BurnIn => "provisioning",
    }
}

/// The states a map legend lists, in order, with their labels.
pub const STATE_KEYS: &[(&str, &str)] = &[
    ("available", "available"),
    ("partial", "partly allocated"),
    ("allocated", "allocated"),
    ("cordoned", "cordoned"),
    ("draining", "draining"),
    ("unreachable", "unreachable (agent silent)"),
    ("maintenance", "maintenance"),
    ("failed", "failed"),
    ("provisioning", "provisioning / burn-in"),
];

/// Tenants in the order their colours are given: most nodes first, then by id. Only the
/// first ten get their own colour; the rest share one.
pub fn tenant_order(cells: &[MapCell]) -> Vec<(TenantId, usize)> {
    let mut count: BTreeMap<TenantId, usize> = BTreeMap::new();
    for c in cells {
        if let Some(t) = c.tenant {
            *count.entry(t).or_default() += 1;
        }
    }
    let mut v: Vec<(TenantId, usize)> = count.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// The SVG of the map.
pub fn render(
    cells: &[MapCell],
    layout: &Layout,
    by: ColorBy,
    tenants: &[(TenantId, usize)],
) -> String {
    let tenant_class: BTreeMap<TenantId, String> = tenants
        .iter()
        .enumerate()
        .map(|(i, (t, _))| (*t, format!("t{}", i.min(10))))
        .collect();
    let mut paths: BTreeMap<String, String> = BTreeMap::new();
    for (c, (x, y)) in cells.iter().zip(&layout.pos) {
        let class = match by {
            ColorBy::State => format!("st-{}", state_key(c)),
            ColorBy::Tenant => c
                .tenant
                .and_then(|t| tenant_class.get(&t).cloned())
                .unwrap_or_else(|| "t-none".to_string()),
        };
        let d = paths.entry(class).or_default();
        let _ = write!(d, "M{x} {y}h{SQUARE}v{SQUARE}h-{SQUARE}z");
    }
    let mut out = String::with_capacity(cells.len() * 18 + layout.rows.len() * 90 + 1024);
    // Small sites are drawn at twice the size; the viewBox keeps click coordinates the same.
    let zoom = if layout.width * 2 <= FLOW_WIDTH && layout.height * 2 <= 1200 {
        2
    } else {
        1
    };
    let _ = write!(
        out,
        r#"<svg id="topology" class="topology" viewBox="0 0 {} {}" width="{}" height="{}" role="img" aria-label="topology map">"#,
        layout.width,
        layout.height,
        layout.width * zoom,
        layout.height * zoom
    );
    for p in &layout.panels {
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" class="panel">{}</text>"#,
            p.x,
            p.y + 10,
            esc(&p.label)
        );
    }
    for (class, d) in &paths {
        let _ = write!(out, r#"<path class="{class}" d="{d}"/>"#);
    }
    for r in &layout.rows {
        let _ = write!(
            out,
            r#"<rect class="row" x="{}" y="{}" width="{}" height="{CELL}"><title>{}</title></rect>"#,
            r.x,
            r.y,
            r.len * CELL,
            esc(&r.path)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use neocloud_types::NodeId;

    fn cell(path: &str, name: &str) -> MapCell {
        MapCell {
            id: NodeId::new(),
            name: name.to_string(),
            block_path: path.to_string(),
            state: NodeState::Available,
            gpus: 8,
            held_gpus: 0,
            tenant: None,
        }
    }

    #[test]
    fn every_cell_is_located_where_it_is_drawn() {
        let mut cells = Vec::new();
        for pod in 0..3 {
            for leaf in 0..4 {
                for n in 0..70 {
                    cells.push(cell(&format!("p{pod}/p{pod}-l{leaf}"), &format!("n{n}")));
                }
            }
        }
        let l = Layout::of(&cells);
        assert_eq!(l.pos.len(), cells.len());
        assert_eq!(l.panels.len(), 3);
        // 70 nodes wrap into rows of 60 and 10.
        assert_eq!(l.rows.len(), 3 * 4 * 2);
        for (i, (x, y)) in l.pos.iter().enumerate() {
            assert_eq!(l.locate(x + 1, y + 1), Some(i));
        }
        assert_eq!(l.locate(l.width + 10, 0), None);
        let svg = render(&cells, &l, ColorBy::State, &[]);
        assert!(svg.contains(r#"class="st-available""#));
        assert!(svg.contains("<title>p2/p2-l3</title>"));
    }
}
