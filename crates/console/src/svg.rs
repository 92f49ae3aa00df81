//! Server-rendered SVG charts: stacked bars, step lines and a meter. Colours come from CSS
//! classes (`c0`…`c9` and named ones in `console.css`), so the charts follow the page's
//! style and no inline style is needed (the console's CSP forbids them).
//!
//! Values are plotted from `f64`; that is geometry only — every figure printed next to a
//! chart comes from the exact amounts.

use std::fmt::Write;

use maud::{Markup, PreEscaped};

/// Escapes text for SVG and HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One series of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// CSS class that colours it.
    pub class: String,
    /// One value per category (bars) or per point (lines).
    pub values: Vec<f64>,
}

/// A round step for an axis that covers `max` in about four ticks.
fn nice_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    step * mag
}

/// A compact label for an axis value: 1.2k, 3.4M, 5.6B.
pub fn short(v: f64) -> String {
    let a = v.abs();
    let (x, suffix) = if a >= 1e9 {
        (v / 1e9, "B")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    // One decimal only where it says something: 300M, 2.5k, 12.
    let text = format!("{x:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text}{suffix}")
}

/// A value with its unit as people write it: `$300M`, `12k GPUs`, `40%`.
pub fn with_unit(v: f64, unit: &str) -> String {
    match unit {
        "" => short(v),
        "$" => {
            if v < 0.0 {
                format!("-${}", short(-v))
            } else {
                format!("${}", short(v))
            }
        }
        "%" => format!("{}%", short(v)),
        u => format!("{} {u}", short(v)),
    }
}

const W: f64 = 760.0;
const H: f64 = 260.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 36.0;

fn legend(out: &mut String, series: &[(&str, &str)]) {
    let mut x = LEFT;
    for (name, class) in series {
        let _ = write!(
            out,
            r#"<rect x="{x:.0}" y="6" width="10" height="10" class="{}"/><text x="{:.0}" y="15" class="legend">{}</text>"#,
            esc(class),
            x + 14.0,
            esc(name)
        );
        x += 24.0 + 7.0 * name.chars().count() as f64;
    }
}

fn y_axis(out: &mut String, max: f64, unit: &str) -> f64 {
    let step = nice_step(max);
    let top = (max / step).ceil().max(1.0) * step;
    let plot_h = H - TOP - BOTTOM;
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        let y = TOP + plot_h - v / top * plot_h;
        let _ = write!(
            out,
            r#"<line x1="{LEFT}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{:.0}" y="{:.1}" class="axis" text-anchor="end">{}</text>"#,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            esc(&with_unit(v, unit)),
        );
        v += step;
    }
    top
}

/// The opening of a chart: the `<svg>` element with its title, and the legend.
fn open_chart<'a>(title: &str, series: impl Iterator<Item = &'a Series>) -> String {
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{}"><title>{}</title>"#,
        esc(title),
        esc(title)
    );
    let named: Vec<(&str, &str)> = series
        .map(|s| (s.name.as_str(), s.class.as_str()))
        .collect();
    legend(&mut out, &named);
    out
}

/// A stacked bar chart: one bar per category, one segment per series.
pub fn stacked_bars(title: &str, categories: &[String], series: &[Series], unit: &str) -> Markup {
    let mut out = open_chart(title, series.iter());
    let totals: Vec<f64> = (0..categories.len())
        .map(|i| {
            series
                .iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0.0).max(0.0))
                .sum()
        })
        .collect();
    let max = totals.iter().copied().fold(0.0, f64::max);
    let top = y_axis(&mut out, max, unit);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let n = categories.len().max(1) as f64;
    let slot = plot_w / n;
    let bar = (slot * 0.7).min(60.0);
    for (i, cat) in categories.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let mut base = TOP + plot_h;
        for s in series {
            let v = s.values.get(i).copied().unwrap_or(0.0).max(0.0);
            if v <= 0.0 {
                continue;
            }
            let h = v / top * plot_h;
            base -= h;
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="{base:.1}" width="{bar:.1}" height="{h:.1}" class="{}"><title>{} {}: {}</title></rect>"#,
                esc(&s.class),
                esc(cat),
                esc(&s.name),
                esc(&with_unit(v, unit))
            );
        }
        // Label every category when they fit, else every few.
        let every = categories.len().div_ceil(12).max(1);
        if i % every == 0 {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.0}" class="axis" text-anchor="middle">{}</text>"#,
                x + bar / 2.0,
                H - BOTTOM + 16.0,
                esc(cat)
            );
        }
    }
    out.push_str("</svg>");
    PreEscaped(out)
}

/// Step lines over a time axis: each series holds its value from its point's time until the
/// next point. `xs` are the points' times in seconds since `x0`; `x_labels` mark the axis.
pub fn step_lines(
    title: &str,
    span: f64,
    lines: &[(Series, Vec<f64>)],
    x_labels: &[(f64, String)],
    unit: &str,
) -> Markup {
    let mut out = open_chart(title, lines.iter().map(|(s, _)| s));
    let max = lines
        .iter()
        .flat_map(|(s, _)| s.values.iter().copied())
        .fold(0.0, f64::max);
    let top = y_axis(&mut out, max, unit);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let span = if span > 0.0 { span } else { 1.0 };
    let px = |t: f64| LEFT + (t / span).clamp(0.0, 1.0) * plot_w;
    let py = |v: f64| TOP + plot_h - (v / top).clamp(0.0, 1.0) * plot_h;
    for (s, xs) in lines {
        if s.values.is_empty() {
            continue;
        }
        let mut d = String::new();
        for (i, v) in s.values.iter().enumerate() {
            let t = xs.get(i).copied().unwrap_or(0.0);
            if i == 0 {
                let _ = write!(d, "M{:.1} {:.1}", px(t), py(*v));
            } else {
                let _ = write!(d, "H{:.1}V{:.1}", px(t), py(*v));
            }
        }
        let _ = write!(d, "H{:.1}", px(span));
        let _ = write!(
            out,
            r#"<path d="{d}" class="line {}"><title>{}</title></path>"#,
            esc(&s.class),
            esc(&s.name)
        );
    }
    for (t, label) in x_labels {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.0}" class="axis" text-anchor="middle">{}</text>"#,
            px(*t),
            H - BOTTOM + 16.0,
            esc(label)
        );
    }
    out.push_str("</svg>");
    PreEscaped(out)
}

/// A horizontal meter: `used` of `limit`, with the share printed.
pub fn meter(label: &str, used: f64, limit: f64) -> Markup {
    let share = if limit > 0.0 { used / limit } else { 0.0 };
    let w = 300.0;
    let fill = (share.clamp(0.0, 1.0) * w).round();
    let class = if share > 0.95 {
        "hot"
    } else if share > 0.8 {
        "warm"
    } else {
        "ok"
    };
    PreEscaped(format!(
        r#"<svg class="meter" viewBox="0 0 {w} 14" role="img" aria-label="{label}: {pct:.1}%"><rect width="{w}" height="14" class="track"/><rect width="{fill}" height="14" class="{class}"/></svg>"#,
        label = esc(label),
        pct = share * 100.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(100.0), 25.0);
        assert_eq!(nice_step(220_000.0), 100_000.0);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn figures_carry_their_unit() {
        assert_eq!(short(300_000_000.0), "300M");
        assert_eq!(short(2_500.0), "2.5k");
        assert_eq!(short(12.0), "12");
        assert_eq!(with_unit(300_000_000.0, "$"), "$300M");
        assert_eq!(with_unit(-1_500.0, "$"), "-$1.5k");
        assert_eq!(with_unit(215_600.0, "GPUs"), "215.6k GPUs");
        assert_eq!(with_unit(40.0, "%"), "40%");
    }

    #[test]
    fn labels_are_escaped() {
        let s = stacked_bars(
            "<t>",
            &["a&b".to_string()],
            &[Series {
                name: "x\"y".into(),
                class: "c0".into(),
                values: vec![1.0],
            }],
            "",
        )
        .into_string();
        assert!(s.contains("&lt;t&gt;") && s.contains("a&amp;b") && s.contains("x&quot;y"));
        assert!(!s.contains("<t>"));
    }
}
