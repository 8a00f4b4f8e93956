//! Results: a figure is a median with min and max over runs; a row is one peer in one
//! scenario. Printed as a table, saved as JSON, drawn as an SVG bar chart (MB/s per card
//! for each peer and scenario). Pure formatting: nothing here measures anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// Median, min and max of a set of runs.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Fig {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Fig {
    /// `None` for no values. The median of an even count is the mean of the middle two.
    pub fn of(values: &[f64]) -> Option<Fig> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Fig {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    fn show(f: Option<Fig>, prec: usize) -> String {
        match f {
            None => "-".into(),
            Some(f) if f.n == 1 => format!("{:.prec$}", f.median),
            Some(f) => format!("{:.prec$} [{:.prec$}-{:.prec$}]", f.median, f.min, f.max),
        }
    }
}

/// One peer in one scenario.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Row {
    pub scenario: String,
    pub link: String,
    pub peer: String,
    pub cards: usize,
    pub runs: usize,
    pub runs_ok: usize,
    /// "ok", or what went wrong in how many runs, or "not available: why".
    pub status: String,
    /// Seconds until the last card was done.
    pub time_s: Option<Fig>,
    /// MB/s (10^6 bytes of artifact per second) per card, mean over cards per run.
    pub mbps_per_card: Option<Fig>,
    /// Per-card goodput ÷ the raw ceiling's per-receiver MB/s, per run.
    pub vs_ceiling: Option<Fig>,
    /// Bytes the master interface sent ÷ artifact size.
    pub master_bytes_ratio: Option<Fig>,
    /// Bytes the master sent beyond the loss-free run of the same peer (loss rows).
    pub retransmitted_bytes: Option<Fig>,
    /// Scenario-specific figures (CPU seconds, RSS, ...).
    pub extra: BTreeMap<String, Fig>,
}

/// A whole benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_utc: String,
    pub command: String,
    pub artifact_bytes: u64,
    pub runs: usize,
    pub quick: bool,
    pub load_before: String,
    pub load_after: String,
    pub host: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// The table printed on stdout.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "artifact {} bytes, {} run(s) each, median [min-max]; MB = 10^6 bytes; load before {} after {}",
        r.artifact_bytes, r.runs, r.load_before, r.load_after
    );
    let _ = writeln!(
        s,
        "| scenario | link | peer | time s | MB/s per card | vs ceiling | master bytes / artifact | retransmitted MB | other | status |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for row in &r.rows {
        let other: Vec<String> = row
            .extra
            .iter()
            .map(|(k, v)| format!("{k} {}", Fig::show(Some(*v), 3)))
            .collect();
        let retr = row.retransmitted_bytes.map(|f| Fig {
            median: f.median / 1e6,
            min: f.min / 1e6,
            max: f.max / 1e6,
            n: f.n,
        });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.link,
            row.peer,
            Fig::show(row.time_s, 2),
            Fig::show(row.mbps_per_card, 1),
            Fig::show(row.vs_ceiling, 2),
            Fig::show(row.master_bytes_ratio, 2),
            Fig::show(retr, 1),
            other.join(", "),
            row.status
        );
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A grouped bar chart: one group per (scenario, link), one bar per peer, height = median
/// MB/s per card, a whisker for min-max. Rows without a goodput are left out.
pub fn svg(r: &Report) -> String {
    let mut groups: Vec<(String, Vec<&Row>)> = Vec::new();
    for row in r.rows.iter().filter(|row| row.mbps_per_card.is_some()) {
        let key = format!("{} · {}", row.scenario, row.link);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(row),
            None => groups.push((key, vec![row])),
        }
    }
    let peers = ["ceiling", "shelfboot", "uftp", "http", "udpcast", "tftp"];
    let colors = [
        "#888888", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e",
    ];
    let max = r
        .rows
        .iter()
        .filter_map(|x| x.mbps_per_card.map(|f| f.max))
        .fold(1.0, f64::max);
    let (bar, gap, h, left, top) = (14.0, 24.0, 300.0, 60.0, 40.0);
    let gw = bar * peers.len() as f64 + gap;
    let width = left + gw * groups.len().max(1) as f64 + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{:.0}" font-family="sans-serif" font-size="11">"#,
        h + top + 130.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="20" font-size="14">MB/s per card (median, whisker min-max), artifact {} MiB, {} run(s)</text>"#,
        r.artifact_bytes >> 20,
        r.runs
    );
    for t in 0..=4 {
        let v = max * f64::from(t) / 4.0;
        let y = top + h - h * f64::from(t) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{width:.0}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            left - 4.0,
            y + 4.0
        );
    }
    for (gi, (name, rows)) in groups.iter().enumerate() {
        let gx = left + gw * gi as f64 + gap / 2.0;
        for (pi, peer) in peers.iter().enumerate() {
            let Some(f) = rows
                .iter()
                .find(|x| x.peer == *peer)
                .and_then(|x| x.mbps_per_card)
            else {
                continue;
            };
            let x = gx + bar * pi as f64;
            let y = |v: f64| top + h - h * v / max;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {:.1} MB/s</title></rect>"#,
                y(f.median),
                bar - 2.0,
                h * f.median / max,
                colors[pi],
                esc(name),
                peer,
                f.median
            );
            let cx = x + bar / 2.0 - 1.0;
            let _ = writeln!(
                s,
                r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/>"#,
                y(f.min),
                y(f.max)
            );
        }
        let lx = gx + bar * peers.len() as f64 / 2.0;
        let _ = writeln!(
            s,
            r#"<text x="{lx:.1}" y="{:.1}" transform="rotate(30 {lx:.1} {:.1})">{}</text>"#,
            top + h + 14.0,
            top + h + 14.0,
            esc(name)
        );
    }
    for (pi, peer) in peers.iter().enumerate() {
        let x = left + 90.0 * pi as f64;
        let y = top + h + 115.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.0}" y="{:.0}" width="10" height="10" fill="{}"/><text x="{:.0}" y="{y:.0}">{peer}</text>"#,
            y - 9.0,
            colors[pi],
            x + 14.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_odd_and_even() {
        let f = Fig::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((f.median, f.min, f.max, f.n), (2.0, 1.0, 3.0, 3));
        let f = Fig::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(f.median, 2.5);
        assert!(Fig::of(&[]).is_none());
        assert!(Fig::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn svg_has_a_bar_per_measured_row_and_escapes_names() {
        let row = |peer: &str, v: f64| Row {
            scenario: "1 card <x>".into(),
            link: "1gbit-tbf".into(),
            peer: peer.into(),
            mbps_per_card: Fig::of(&[v]),
            ..Row::default()
        };
        let r = Report {
            started_utc: String::new(),
            command: String::new(),
            artifact_bytes: 1 << 20,
            runs: 1,
            quick: true,
            load_before: String::new(),
            load_after: String::new(),
            host: String::new(),
            rows: vec![row("uftp", 50.0), row("shelfboot", 100.0), Row::default()],
            notes: vec![],
        };
        let s = svg(&r);
        assert_eq!(s.matches("<rect").count(), 2 + 6, "2 bars + 6 legend boxes");
        assert!(s.contains("1 card &lt;x&gt;"));
        assert!(table(&r).contains("| 1 card <x> | 1gbit-tbf | uftp |"));
    }
}
