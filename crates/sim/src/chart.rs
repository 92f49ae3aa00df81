//! SVG charts, drawn by hand: a stacked area of GPUs by class over time, monthly revenue by
//! line kind, and a comparison of variants with their spread. Plain SVG 1.1, no scripts, so
//! any browser or document viewer shows them.

use std::fmt::Write as _;

use crate::compare::Comparison;
use crate::report::RunResult;

const W: f64 = 900.0;
const H: f64 = 420.0;
const L: f64 = 80.0;
const R: f64 = 160.0;
const T: f64 = 40.0;
const B: f64 = 50.0;
const COLORS: [&str; 5] = ["#3b6ea5", "#6aa84f", "#e69138", "#a64d79", "#999999"];

fn header(title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{L}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn axes(s: &mut String, ymax: f64, ylabel: &str, xlabel: &str, xmax: f64) {
    let (x0, y0, x1, y1) = (L, H - B, W - R, T);
    let _ = writeln!(
        s,
        r#"<path d="M{x0} {y1} L{x0} {y0} L{x1} {y0}" stroke="black" fill="none"/>"#
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let y = y0 - (y0 - y1) * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 6.0,
            y + 4.0,
            short(v)
        );
    }
    if xmax > 0.0 {
        for i in 0..=4 {
            let v = xmax * f64::from(i) / 4.0;
            let x = x0 + (x1 - x0) * f64::from(i) / 4.0;
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                y0 + 16.0,
                short(v)
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        H - 10.0,
        escape(xlabel)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(ylabel)
    );
}

fn legend(s: &mut String, names: &[&str]) {
    for (i, n) in names.iter().enumerate() {
        let y = T + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            W - R + 14.0,
            y - 10.0,
            COLORS[i % COLORS.len()],
            W - R + 32.0,
            y,
            escape(n)
        );
    }
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}B", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// GPUs allocated by class over time, stacked, with the fleet size as the top line.
pub fn utilization_svg(r: &RunResult) -> String {
    let mut s = header(&format!(
        "{} / {}: GPUs allocated by class (seed {})",
        r.scenario, r.variant, r.seed
    ));
    let ymax = r.fleet_gpus as f64;
    let xmax = r.horizon_days * 24.0;
    axes(&mut s, ymax, "GPUs", "hours", xmax);
    let px = |h: f64| L + (W - R - L) * h / xmax.max(1.0);
    let py = |g: f64| H - B - (H - B - T) * g / ymax.max(1.0);
    // Stacked from the bottom: reserved, internal, on-demand, spot.
    let mut below = vec![0.0f64; r.series.len()];
    for (c, color) in COLORS.iter().enumerate().take(4) {
        let top: Vec<f64> = r
            .series
            .iter()
            .zip(&below)
            .map(|(p, b)| b + p.allocated[c] as f64)
            .collect();
        if r.series.is_empty() {
            break;
        }
        let mut d = String::new();
        for (i, p) in r.series.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1} {:.1} ",
                if i == 0 { "M" } else { "L" },
                px(p.hour),
                py(top[i])
            );
        }
        for (i, p) in r.series.iter().enumerate().rev() {
            let _ = write!(d, "L{:.1} {:.1} ", px(p.hour), py(below[i]));
        }
        let _ = writeln!(s, r#"<path d="{}Z" fill="{}" stroke="none"/>"#, d, color);
        below = top;
    }
    // Down GPUs on top, in grey.
    let mut d = String::new();
    for (i, p) in r.series.iter().enumerate() {
        let _ = write!(
            d,
            "{}{:.1} {:.1} ",
            if i == 0 { "M" } else { "L" },
            px(p.hour),
            py(ymax - p.down as f64)
        );
    }
    let _ = writeln!(
        s,
        r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1"/>"#,
        COLORS[4]
    );
    legend(
        &mut s,
        &["reserved", "internal", "on-demand", "spot", "fleet − down"],
    );
    s.push_str("</svg>\n");
    s
}

/// Monthly revenue by line kind, stacked bars (SLA credits below zero).
pub fn revenue_svg(r: &RunResult) -> String {
    let mut s = header(&format!(
        "{} / {}: revenue by month (seed {})",
        r.scenario, r.variant, r.seed
    ));
    let kinds = ["reserved", "on-demand", "spot"];
    let ymax = r
        .months
        .iter()
        .map(|m| {
            kinds
                .iter()
                .map(|k| {
                    m.revenue_by_class
                        .get(*k)
                        .map_or(0.0, |v| v.micros() as f64 / 1e6)
                })
                .sum::<f64>()
        })
        .fold(1.0f64, f64::max);
    axes(&mut s, ymax, "US dollars", "month", 0.0);
    let n = r.months.len().max(1) as f64;
    let slot = (W - R - L) / n;
    let py = |v: f64| (H - B - T) * v / ymax;
    for (i, m) in r.months.iter().enumerate() {
        let x = L + slot * i as f64 + slot * 0.15;
        let mut base = H - B;
        for (c, k) in kinds.iter().enumerate() {
            let v = m
                .revenue_by_class
                .get(*k)
                .map_or(0.0, |v| v.micros() as f64 / 1e6);
            let h = py(v);
            base -= h;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{base:.1}" width="{:.1}" height="{h:.1}" fill="{}"/>"#,
                slot * 0.7,
                COLORS[[0, 2, 3][c]]
            );
        }
        if i % (r.months.len() / 12).max(1) == 0 {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                x + slot * 0.35,
                H - B + 16.0,
                m.month
            );
        }
    }
    legend(
        &mut s,
        &["reserved", "(internal: not billed)", "on-demand", "spot"],
    );
    s.push_str("</svg>\n");
    s
}

/// Revenue and gross margin of each variant: mean bars with min–max whiskers.
pub fn compare_svg(c: &Comparison) -> String {
    let mut s = header(&format!(
        "{}: revenue, gross margin and internal value by variant (mean, min–max over seeds)",
        c.scenario
    ));
    let ymax = c
        .variants
        .iter()
        .flat_map(|v| {
            [
                v.revenue_usd.max,
                v.gross_margin_usd.max,
                v.internal_value_usd.max,
            ]
        })
        .fold(1.0f64, f64::max);
    axes(&mut s, ymax, "US dollars", "variant", 0.0);
    let n = c.variants.len().max(1) as f64;
    let slot = (W - R - L) / n;
    let py = |v: f64| H - B - (H - B - T) * v.max(0.0) / ymax;
    for (i, v) in c.variants.iter().enumerate() {
        let x0 = L + slot * i as f64 + slot * 0.1;
        let bw = slot * 0.8 / 3.0;
        for (k, sp) in [&v.revenue_usd, &v.gross_margin_usd, &v.internal_value_usd]
            .iter()
            .enumerate()
        {
            let x = x0 + bw * k as f64;
            let y = py(sp.mean);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                bw * 0.9,
                H - B - y,
                COLORS[k]
            );
            let cx = x + bw * 0.45;
            let _ = writeln!(
                s,
                r#"<path d="M{cx:.1} {:.1} L{cx:.1} {:.1} M{:.1} {:.1} L{:.1} {:.1} M{:.1} {:.1} L{:.1} {:.1}" stroke="black"/>"#,
                py(sp.min),
                py(sp.max),
                cx - 5.0,
                py(sp.min),
                cx + 5.0,
                py(sp.min),
                cx - 5.0,
                py(sp.max),
                cx + 5.0,
                py(sp.max)
            );
        }
        let name: String = v.variant.chars().take(40).collect();
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
            L + slot * (i as f64 + 0.5),
            H - B + 16.0,
            escape(&name)
        );
    }
    legend(&mut s, &["revenue", "gross margin", "internal value"]);
    s.push_str("</svg>\n");
    s
}
