//! What `master watch` prints, as pure functions of a [`View`]: the in-place terminal
//! frame (ANSI), the plain change lines for a pipe or a log, and the JSON lines.
//!
//! Nothing here reads files, clocks or terminals: the caller passes the view, the
//! terminal height and the records it printed last.

use std::collections::HashMap;
use std::fmt::Write as _;

use indicatif::HumanBytes;
use serde::{Deserialize, Serialize};
use shelfboot_proto::frame::MacAddr;

use crate::serve::{CardStage, CardStats, SessionStats};

/// One snapshot of the shelf, as `master watch` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// A `master serve` is running and wrote this recently.
    pub serving: bool,
    /// Milliseconds since the stats file was written.
    pub age_ms: u64,
    /// The serve's epoch and interface.
    pub epoch: u64,
    pub iface: String,
    /// Service time of the snapshot, plus its age while serving (the clock of
    /// `stage_since_ms`).
    pub now_ms: u64,
    /// Artifact bytes sent by all sessions.
    pub artifact_bytes: u64,
    /// Cards heard but not tracked (over the serve's limit).
    pub cards_untracked: u64,
    pub cards: Vec<CardStats>,
    /// Sessions, each with its send rate since the previous snapshot (None on the
    /// first).
    pub sessions: Vec<(SessionStats, Option<u64>)>,
}

impl View {
    /// Milliseconds `card` has been in its stage.
    pub fn stage_ms(&self, card: &CardStats) -> u64 {
        self.now_ms.saturating_sub(card.stage_since_ms)
    }

    /// Cards per stage, in stage order.
    fn stage_counts(&self) -> Vec<(CardStage, usize)> {
        let mut counts: Vec<(CardStage, usize)> = Vec::new();
        for c in &self.cards {
            match counts.iter_mut().find(|(s, _)| *s == c.stage) {
                Some((_, n)) => *n += 1,
                None => counts.push((c.stage, 1)),
            }
        }
        counts.sort_by_key(|(s, _)| *s as u8);
        counts
    }

    /// The summary line at the top.
    pub fn header(&self) -> String {
        let mut h = if self.serving {
            format!(
                "master serve epoch {} on {}: up {}",
                self.epoch,
                self.iface,
                duration(self.now_ms)
            )
        } else {
            format!(
                "master serve is NOT running (last run: epoch {} on {}, stats written {} ago)",
                self.epoch,
                self.iface,
                duration(self.age_ms)
            )
        };
        let counts: Vec<String> = self
            .stage_counts()
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        let _ = write!(h, " | {} cards", self.cards.len());
        if !counts.is_empty() {
            let _ = write!(h, ": {}", counts.join(", "));
        }
        if self.cards_untracked > 0 {
            let _ = write!(h, " (+{} not shown)", self.cards_untracked);
        }
        let live = self.sessions.iter().filter(|(s, _)| !s.finished).count();
        let _ = write!(
            h,
            " | {} sessions ({live} running), {} sent",
            self.sessions.len(),
            HumanBytes(self.artifact_bytes)
        );
        h
    }
}

/// `1.2s`, `42s`, `3m05s`, `2h10m`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    if s < 10 {
        format!("{}.{}s", s, (ms % 1000) / 100)
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn rate(bps: u64) -> String {
    format!("{}/s", HumanBytes(bps))
}

const CARD_HEAD: [&str; 11] = [
    "SLOT",
    "TYPE",
    "MAC",
    "STAGE",
    "BYTES",
    "%",
    "RATE",
    "IN STAGE",
    "SEEN",
    "HEALTH",
    "LAST ERROR",
];
const SESSION_HEAD: [&str; 8] = [
    "SESSION",
    "ARTIFACT",
    "SIZE",
    "MEMBERS",
    "DONE",
    "DROPPED",
    "RATE",
    "SENT + REPAIRED",
];

fn card_cells(v: &View, c: &CardStats) -> Vec<String> {
    let bytes = if c.total_bytes > 0 {
        format!("{}/{}", HumanBytes(c.done_bytes), HumanBytes(c.total_bytes))
    } else {
        "-".into()
    };
    vec![
        format!("{}/{}", c.shelf, c.slot),
        if c.card_type.is_empty() {
            "?".into()
        } else {
            c.card_type.clone()
        },
        c.mac.to_string(),
        c.stage.to_string(),
        bytes,
        c.percent().map_or_else(|| "-".into(), |p| format!("{p}%")),
        if c.rate_bps > 0 && !c.stage.is_final() {
            rate(c.rate_bps)
        } else {
            "-".into()
        },
        duration(v.stage_ms(c)),
        seen(v, c),
        c.health.clone().unwrap_or_else(|| "-".into()),
        c.error.clone().unwrap_or_else(|| "-".into()),
    ]
}

/// How long ago the card's last frame was, and whether the serve counts it absent.
fn seen(v: &View, c: &CardStats) -> String {
    let ago = duration(v.now_ms.saturating_sub(c.last_seen_ms));
    if c.absent {
        format!("absent {ago}")
    } else {
        format!("{ago} ago")
    }
}

fn session_cells(s: &SessionStats, r: Option<u64>) -> Vec<String> {
    vec![
        format!(
            "{}{}",
            s.transfer,
            if s.catch_up { " (catch-up)" } else { "" }
        ),
        s.name.clone(),
        HumanBytes(s.size).to_string(),
        s.members.to_string(),
        s.completed.to_string(),
        s.dropped.to_string(),
        if s.finished {
            "finished".into()
        } else {
            r.map_or_else(|| "-".into(), rate)
        },
        format!(
            "{} + {}",
            HumanBytes(s.data_bytes),
            HumanBytes(s.retransmit_bytes)
        ),
    ]
}

/// ANSI colour of a stage in the terminal view.
fn stage_colour(s: CardStage) -> &'static str {
    match s {
        CardStage::Ready | CardStage::Ram => "\x1b[32m",
        CardStage::Failed | CardStage::Unknown => "\x1b[31m",
        CardStage::Soliciting | CardStage::Validating => "\x1b[36m",
        CardStage::Fetching | CardStage::Verifying | CardStage::Writing | CardStage::Committing => {
            "\x1b[33m"
        }
    }
}

/// Lays out rows under `head` in columns (the last column is not padded). With
/// `colour`, the cell in column `col` of each row is wrapped in the colour it gives.
fn columns(
    head: &[&str],
    rows: &[Vec<String>],
    colour: Option<(usize, &dyn Fn(usize) -> &'static str)>,
) -> Vec<String> {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>, row: Option<usize>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = if i == last {
                String::new()
            } else {
                " ".repeat(w.saturating_sub(c.chars().count()) + 2)
            };
            match (colour, row) {
                (Some((col, f)), Some(r)) if col == i => {
                    let _ = write!(l, "{}{c}\x1b[0m{pad}", f(r));
                }
                _ => {
                    let _ = write!(l, "{c}{pad}");
                }
            }
        }
        l.trim_end().to_owned()
    };
    let mut out = vec![line(head.iter().map(|h| (*h).to_owned()).collect(), None)];
    for (i, r) in rows.iter().enumerate() {
        out.push(line(r.clone(), Some(i)));
    }
    out
}

/// The whole view as lines: header, card table, session table. `ansi` colours the
/// stages.
pub fn table(v: &View, ansi: bool) -> Vec<String> {
    let mut lines = vec![v.header(), String::new()];
    let rows: Vec<Vec<String>> = v.cards.iter().map(|c| card_cells(v, c)).collect();
    let stage_of = |i: usize| v.cards.get(i).map_or("", |c| stage_colour(c.stage));
    let colour: Option<(usize, &dyn Fn(usize) -> &'static str)> =
        if ansi { Some((3, &stage_of)) } else { None };
    if v.cards.is_empty() {
        lines.push("no card heard yet".into());
    } else {
        lines.extend(columns(&CARD_HEAD, &rows, colour));
    }
    if !v.sessions.is_empty() {
        lines.push(String::new());
        let rows: Vec<Vec<String>> = v
            .sessions
            .iter()
            .map(|(s, r)| session_cells(s, *r))
            .collect();
        lines.extend(columns(&SESSION_HEAD, &rows, None));
    }
    lines
}

/// One terminal frame: cursor home, every line cleared to its end, the rest of the
/// screen cleared. At most `rows` lines (the terminal's height): the cards that do not
/// fit are counted on the last line.
pub fn terminal(v: &View, rows: Option<usize>) -> String {
    let mut lines = table(v, true);
    if let Some(rows) = rows
        && rows > 1
        && lines.len() > rows
    {
        let hidden = lines.len() - (rows - 1);
        lines.truncate(rows - 1);
        lines.push(format!(
            "... {hidden} more lines (a taller terminal shows them)"
        ));
    }
    let mut out = String::from("\x1b[H");
    for l in lines {
        out.push_str(&l);
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

/// One card as a plain line (`master watch` into a pipe).
pub fn card_line(v: &View, c: &CardStats) -> String {
    let cells = card_cells(v, c);
    let mut l = format!(
        "[{}] card {} {} {} {}",
        duration(v.now_ms),
        cells[0],
        cells[1],
        cells[2],
        cells[3]
    );
    if c.total_bytes > 0 {
        let _ = write!(l, " {} {}", cells[4], cells[5]);
    }
    if c.rate_bps > 0 && !c.stage.is_final() {
        let _ = write!(l, " at {}", cells[6]);
    }
    if c.absent {
        let _ = write!(l, " absent");
    }
    if let Some(h) = &c.health {
        let _ = write!(l, " health: {h}");
    }
    if let Some(e) = &c.error {
        let _ = write!(l, " error: {e}");
    }
    l
}

/// One session as a plain line.
pub fn session_line(v: &View, s: &SessionStats, r: Option<u64>) -> String {
    let mut l = format!(
        "[{}] session {}{} {} ({}): {} members, {} done, {} dropped, sent {} + {} repaired",
        duration(v.now_ms),
        s.transfer,
        if s.catch_up { " catch-up" } else { "" },
        s.name,
        HumanBytes(s.size),
        s.members,
        s.completed,
        s.dropped,
        HumanBytes(s.data_bytes),
        HumanBytes(s.retransmit_bytes)
    );
    if s.finished {
        l.push_str(", finished");
    } else if let Some(r) = r {
        let _ = write!(l, ", {}", rate(r));
    }
    l
}

/// What was printed last, so that the plain and JSON streams carry changes only.
#[derive(Debug, Default)]
pub struct Printed {
    header: Option<SummaryLine>,
    cards: HashMap<MacAddr, CardStats>,
    sessions: HashMap<u32, SessionStats>,
}

/// What changed: the summary, cards, sessions.
type Changes<'v> = (
    Option<SummaryLine>,
    Vec<&'v CardStats>,
    Vec<&'v (SessionStats, Option<u64>)>,
);

/// The records of `v` that changed since `printed` (which is updated): the summary if
/// its counts changed, each card whose record changed (its last-seen time aside), each
/// session whose counters changed.
fn changes<'v>(v: &'v View, printed: &mut Printed) -> Changes<'v> {
    let summary = SummaryLine::of(v);
    let header = (printed.header.as_ref() != Some(&summary)).then(|| summary.clone());
    printed.header = Some(summary);
    let mut cards = Vec::new();
    for c in &v.cards {
        let key = CardStats {
            last_seen_ms: 0,
            ..c.clone()
        };
        if printed.cards.get(&c.mac) != Some(&key) {
            printed.cards.insert(c.mac, key);
            cards.push(c);
        }
    }
    let mut sessions = Vec::new();
    for s in &v.sessions {
        if printed.sessions.get(&s.0.transfer) != Some(&s.0) {
            printed.sessions.insert(s.0.transfer, s.0.clone());
            sessions.push(s);
        }
    }
    (header, cards, sessions)
}

/// Plain lines of what changed since the last call (all of it on the first).
pub fn plain(v: &View, printed: &mut Printed) -> Vec<String> {
    let (header, cards, sessions) = changes(v, printed);
    let mut out = Vec::new();
    if header.is_some() {
        out.push(format!("[{}] {}", duration(v.now_ms), v.header()));
    }
    out.extend(cards.into_iter().map(|c| card_line(v, c)));
    out.extend(sessions.into_iter().map(|(s, r)| session_line(v, s, *r)));
    out
}

/// The summary object of the JSON stream (`"type": "serve"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryLine {
    pub serving: bool,
    pub epoch: u64,
    pub iface: String,
    pub cards: usize,
    pub ready: usize,
    pub failed: usize,
    pub sessions: usize,
    pub cards_untracked: u64,
}

impl SummaryLine {
    fn of(v: &View) -> Self {
        let count = |f: &dyn Fn(CardStage) -> bool| v.cards.iter().filter(|c| f(c.stage)).count();
        SummaryLine {
            serving: v.serving,
            epoch: v.epoch,
            iface: v.iface.clone(),
            cards: v.cards.len(),
            ready: count(&|s| matches!(s, CardStage::Ready | CardStage::Ram)),
            failed: count(&|s| matches!(s, CardStage::Failed | CardStage::Unknown)),
            sessions: v.sessions.len(),
            cards_untracked: v.cards_untracked,
        }
    }
}

/// A card object of the JSON stream (`"type": "card"`): the serve's record plus what
/// `master watch` derives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardLine {
    #[serde(flatten)]
    pub card: CardStats,
    /// Milliseconds in the stage at this snapshot.
    pub stage_ms: u64,
    /// `done_bytes` as a percent of `total_bytes` (absent when the card fetches nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u64>,
}

/// A session object of the JSON stream (`"type": "session"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLine {
    #[serde(flatten)]
    pub session: SessionStats,
    /// Artifact bytes per second since the previous snapshot (absent on the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<u64>,
}

/// One line of `master watch --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WatchLine {
    Serve {
        #[serde(flatten)]
        summary: SummaryLine,
        /// Milliseconds the serve has run.
        uptime_ms: u64,
    },
    Card(CardLine),
    Session(SessionLine),
}

/// JSON lines of what changed since the last call (all of it on the first), each
/// ending in a newline.
pub fn json(v: &View, printed: &mut Printed) -> String {
    let (header, cards, sessions) = changes(v, printed);
    let mut lines: Vec<WatchLine> = Vec::new();
    if let Some(summary) = header {
        lines.push(WatchLine::Serve {
            summary,
            uptime_ms: v.now_ms,
        });
    }
    for c in cards {
        lines.push(WatchLine::Card(CardLine {
            card: c.clone(),
            stage_ms: v.stage_ms(c),
            percent: c.percent(),
        }));
    }
    for (s, r) in sessions {
        lines.push(WatchLine::Session(SessionLine {
            session: s.clone(),
            rate_bps: *r,
        }));
    }
    let mut out = String::new();
    for l in lines {
        // These types serialize without fail (plain fields, string map keys).
        if let Ok(text) = serde_json::to_string(&l) {
            out.push_str(&text);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(slot: u32, stage: CardStage, done: u64, total: u64) -> CardStats {
        CardStats {
            mac: MacAddr([2, 0x5c, 0, 0, 0, u8::try_from(slot).unwrap()]),
            shelf: 1,
            slot,
            card_type: "lc100".into(),
            stage,
            stage_since_ms: 1000,
            done_bytes: done,
            total_bytes: total,
            plan_bytes: total,
            rate_bps: if stage == CardStage::Fetching {
                1_500_000
            } else {
                0
            },
            last_seen_ms: 4000,
            absent: false,
            health: None,
            error: None,
        }
    }

    fn view() -> View {
        let mut failed = card(3, CardStage::Failed, 0, 0);
        failed.error = Some("NoSpace: flash full".into());
        (failed.absent, failed.last_seen_ms) = (true, 1200);
        let mut ready = card(2, CardStage::Ready, 4 << 20, 4 << 20);
        ready.health = Some("healthy".into());
        View {
            serving: true,
            age_ms: 200,
            epoch: 7,
            iface: "p0".into(),
            now_ms: 4200,
            artifact_bytes: 3 << 20,
            cards_untracked: 0,
            cards: vec![
                card(1, CardStage::Fetching, 1 << 20, 4 << 20),
                ready,
                failed,
            ],
            sessions: vec![(
                SessionStats {
                    transfer: 65537,
                    name: "base 1.0.0".into(),
                    size: 2 << 20,
                    members: 2,
                    completed: 1,
                    data_bytes: 2 << 20,
                    retransmit_bytes: 4096,
                    ..SessionStats::default()
                },
                Some(6_000_000),
            )],
        }
    }

    #[test]
    fn the_table_shows_every_column() {
        let lines = table(&view(), false);
        assert_eq!(
            lines[0],
            "master serve epoch 7 on p0: up 4.2s | 3 cards: 1 fetching, 1 ready, 1 failed | 1 sessions (1 running), 3.00 MiB sent"
        );
        assert_eq!(
            lines[2],
            "SLOT  TYPE   MAC                STAGE     BYTES              %     RATE        IN STAGE  SEEN         HEALTH   LAST ERROR"
        );
        assert_eq!(
            lines[3],
            "1/1   lc100  02:5c:00:00:00:01  fetching  1.00 MiB/4.00 MiB  25%   1.43 MiB/s  3.2s      0.2s ago     -        -"
        );
        assert_eq!(
            lines[4],
            "1/2   lc100  02:5c:00:00:00:02  ready     4.00 MiB/4.00 MiB  100%  -           3.2s      0.2s ago     healthy  -"
        );
        assert_eq!(
            lines[5],
            "1/3   lc100  02:5c:00:00:00:03  failed    -                  -     -           3.2s      absent 3.0s  -        NoSpace: flash full"
        );
        assert_eq!(
            lines[8],
            "65537    base 1.0.0  2.00 MiB  2        1     0        5.72 MiB/s  2.00 MiB + 4.00 KiB"
        );
        assert!(
            lines.iter().all(|l| !l.contains('\x1b')),
            "plain: no escapes"
        );
    }

    #[test]
    fn the_terminal_frame_redraws_in_place_and_fits_the_screen() {
        let v = view();
        let f = terminal(&v, Some(40));
        assert!(f.starts_with("\x1b[H") && f.ends_with("\x1b[J"));
        assert_eq!(f.matches("\x1b[K\n").count(), table(&v, true).len());
        assert!(f.contains("\x1b[32mready\x1b[0m"), "{f}");
        assert!(f.contains("\x1b[31mfailed\x1b[0m"));
        // Columns stay aligned around the colour codes.
        let strip = |s: &str| s.replace("\x1b[32m", "").replace("\x1b[0m", "");
        assert!(
            f.lines()
                .any(|l| strip(l).starts_with(&table(&v, false)[4]))
        );
        let small = terminal(&v, Some(4));
        assert_eq!(small.matches('\n').count(), 4);
        assert!(small.contains("... 6 more lines"), "{small}");
    }

    #[test]
    fn a_stopped_serve_is_said_plainly() {
        let mut v = view();
        v.serving = false;
        v.age_ms = 95_000;
        assert!(
            v.header().starts_with(
                "master serve is NOT running (last run: epoch 7 on p0, stats written 1m35s ago)"
            ),
            "{}",
            v.header()
        );
    }

    #[test]
    fn plain_and_json_streams_carry_changes_only() {
        let mut v = view();
        let mut printed = Printed::default();
        let first = plain(&v, &mut printed);
        assert_eq!(first.len(), 1 + 3 + 1, "{first:#?}");
        assert_eq!(
            first[1],
            "[4.2s] card 1/1 lc100 02:5c:00:00:00:01 fetching 1.00 MiB/4.00 MiB 25% at 1.43 MiB/s"
        );
        assert_eq!(
            first[3],
            "[4.2s] card 1/3 lc100 02:5c:00:00:00:03 failed absent error: NoSpace: flash full"
        );
        assert!(first[4].starts_with("[4.2s] session 65537 base 1.0.0 (2.00 MiB): 2 members"));
        v.now_ms = 5000;
        v.cards[1].last_seen_ms = 4900;
        assert!(
            plain(&v, &mut printed).is_empty(),
            "time alone is no change"
        );
        v.cards[0].done_bytes = 2 << 20;
        let again = plain(&v, &mut printed);
        assert_eq!(again.len(), 1);
        assert!(again[0].contains("2.00 MiB/4.00 MiB 50%"));

        let mut printed = Printed::default();
        let text = json(&v, &mut printed);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0]["type"], "serve");
        assert_eq!(lines[0]["serving"], true);
        assert_eq!(lines[0]["ready"], 1);
        assert_eq!(lines[0]["uptime_ms"], 5000);
        let c = &lines[1];
        assert_eq!(c["type"], "card");
        assert_eq!(c["mac"], "02:5c:00:00:00:01");
        assert_eq!(c["stage"], "fetching");
        assert_eq!(c["done_bytes"], 2 << 20);
        assert_eq!(c["total_bytes"], 4 << 20);
        assert_eq!(c["percent"], 50);
        assert_eq!(c["stage_ms"], 4000);
        assert_eq!(lines[3]["error"], "NoSpace: flash full");
        assert_eq!(lines[3]["absent"], true);
        assert_eq!(lines[2]["health"], "healthy");
        assert!(lines[1].get("absent").is_none() && lines[1].get("health").is_none());
        assert!(lines[3].get("percent").is_none());
        assert_eq!(lines[4]["type"], "session");
        assert_eq!(lines[4]["rate_bps"], 6_000_000);
        assert_eq!(lines[4]["name"], "base 1.0.0");
        // Every line reads back as the documented type.
        for l in text.lines() {
            let _: WatchLine = serde_json::from_str(l).unwrap();
        }
        assert!(json(&v, &mut printed).is_empty());
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0), "0.0s");
        assert_eq!(duration(9_999), "9.9s");
        assert_eq!(duration(42_000), "42s");
        assert_eq!(duration(185_000), "3m05s");
        assert_eq!(duration(7_800_000), "2h10m");
    }
}
