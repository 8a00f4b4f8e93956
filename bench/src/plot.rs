//! The second chart of a run: issue 7 items 4-7 against their targets, one horizontal
//! bar per figure (median, whisker min-max, a dashed line at the target), each bar on
//! its own scale because the units differ (seconds, MiB, ratios). Written as
//! `<stamp>-targets.svg` next to the JSON. Pure formatting of the rows; rows that are
//! missing are left out.

use std::fmt::Write as _;

use crate::report::{Fig, Row};

/// One bar of the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// What is measured.
    pub label: String,
    /// The figure.
    pub fig: Fig,
    /// Unit shown after the numbers.
    pub unit: &'static str,
    /// The target and whether the figure must be at most (`true`) or at least it.
    pub target: Option<(f64, bool)>,
}

fn extra(r: &Row, key: &str) -> Option<Fig> {
    r.extra.get(key).copied()
}

/// The bars of items 4-7 found in `rows`.
pub fn bars(rows: &[Row]) -> Vec<Bar> {
    let mut out = Vec::new();
    let mut push = |label: String, fig: Option<Fig>, unit, target| {
        if let Some(fig) = fig {
            out.push(Bar {
                label,
                fig,
                unit,
                target,
            });
        }
    };
    for r in rows {
        if r.scenario.starts_with("warm boot") {
            push(
                format!("{}: wall", r.scenario),
                r.time_s,
                "s",
                Some((2.0, true)),
            );
            push(
                format!("{}: master CPU", r.scenario),
                extra(r, "master_cpu_s"),
                "s",
                Some((0.5, true)),
            );
        } else if r.scenario.starts_with("card RSS") {
            push(
                format!("{}: card VmHWM", r.scenario),
                extra(r, "vm_hwm_MiB"),
                "MiB",
                Some((16.0, true)),
            );
        } else if r.scenario.starts_with("flash") {
            push(
                format!("{}: {}", r.scenario, r.peer),
                extra(r, "write_MB_per_s"),
                "MB/s",
                None,
            );
            push(
                format!("{}: writer speed ÷ ubiupdatevol", r.scenario),
                extra(r, "ubiupdatevol_time_over_writer_time"),
                "×",
                Some((0.9, false)),
            );
        } else if r.scenario.starts_with("boot path") {
            let to_ms = |f: Fig| Fig {
                median: f.median * 1e3,
                min: f.min * 1e3,
                max: f.max * 1e3,
                n: f.n,
            };
            if r.peer.starts_with("/init") {
                push(
                    r.peer.clone(),
                    r.time_s.map(to_ms),
                    "ms",
                    Some((100.0, true)),
                );
            } else {
                push(format!("QEMU {}", r.peer), r.time_s, "s", None);
            }
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart.
pub fn svg(title: &str, bars: &[Bar]) -> String {
    let (left, bar_w, row_h, top) = (330.0, 420.0, 34.0, 44.0);
    let width = left + bar_w + 190.0;
    let height = top + row_h * bars.len().max(1) as f64 + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="14">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="{:.0}" fill="#555">bar = median, whisker = min-max, dashed = target (green bar: target met, red: not met; each bar on its own scale)</text>"##,
        height - 12.0
    );
    for (i, b) in bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let scale = b
            .target
            .map_or(b.fig.max, |(t, _)| t.max(b.fig.max))
            .max(f64::MIN_POSITIVE)
            * 1.15;
        let x = |v: f64| left + bar_w * (v / scale).clamp(0.0, 1.0);
        let color = match b.target {
            Some((t, true)) if b.fig.median <= t => "#2ca02c",
            Some((t, false)) if b.fig.median >= t => "#2ca02c",
            Some(_) => "#d62728",
            None => "#1f77b4",
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 17.0,
            esc(&b.label)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{left:.1}" y="{:.1}" width="{:.1}" height="18" fill="{color}"/>"#,
            y + 4.0,
            x(b.fig.median) - left
        );
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
            x(b.fig.min),
            y + 13.0,
            x(b.fig.max),
            y + 13.0
        );
        let mut text = format!("{:.3} {}", b.fig.median, b.unit);
        if b.fig.n > 1 {
            let _ = write!(text, " [{:.3}-{:.3}] n={}", b.fig.min, b.fig.max, b.fig.n);
        }
        if let Some((t, le)) = b.target {
            let tx = x(t);
            let _ = writeln!(
                s,
                r#"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="black" stroke-dasharray="3,2"/>"#,
                y + 1.0,
                y + 25.0
            );
            let _ = write!(text, " (target {} {t})", if le { "≤" } else { "≥" });
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            left + bar_w + 8.0,
            y + 17.0,
            esc(&text)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scenario: &str, peer: &str, t: f64) -> Row {
        Row {
            scenario: scenario.into(),
            peer: peer.into(),
            time_s: Fig::of(&[t, t * 2.0, t * 3.0]),
            ..Row::default()
        }
    }

    #[test]
    fn bars_pick_items_4_to_7_and_colour_by_target() {
        let mut warm = row("warm boot, 1000 cards", "shelfboot", 1.0);
        warm.extra
            .insert("master_cpu_s".into(), Fig::of(&[0.9]).unwrap());
        let rows = vec![
            row("1 card", "uftp", 9.0),
            warm,
            row(
                "boot path, 1 QEMU card",
                "/init to first Solicit (warm boot)",
                0.05,
            ),
            row("boot path, 1 QEMU card", "warm to Ready", 20.0),
        ];
        let b = bars(&rows);
        let labels: Vec<&str> = b.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "warm boot, 1000 cards: wall",
                "warm boot, 1000 cards: master CPU",
                "/init to first Solicit (warm boot)",
                "QEMU warm to Ready"
            ]
        );
        assert_eq!(b[2].fig.median, 100.0, "seconds shown as ms");
        let s = svg("t <1>", &b);
        // wall 2.0 s ≤ 2: met; CPU 0.9 > 0.5: not met; 100 ms ≤ 100: met; no target.
        assert_eq!(s.matches("#2ca02c").count(), 2);
        assert_eq!(s.matches("#d62728").count(), 1);
        assert_eq!(s.matches("#1f77b4").count(), 1);
        assert!(s.contains("t &lt;1&gt;"));
    }
}
