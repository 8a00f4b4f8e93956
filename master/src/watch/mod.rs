//! `master watch`: a live view of the shelf from the stats a running `master serve`
//! writes (`STATE/serve-stats.json`, about once a second: counters, sessions and one
//! record per card, see [`crate::serve::cards`]).
//!
//! Each refresh (every `--interval-ms`, 200 ms to 5 s) reads the file and prints:
//! on a terminal, the whole view redrawn in place (ANSI, see [`render::terminal`]);
//! into a pipe, a plain line per card or session that changed; with `--json`, a JSON
//! object per changed record (the schema is in `docs/master.md` and
//! [`render::WatchLine`]). `--once` prints the whole view one time and exits.
//!
//! Whether a serve runs is read from the file: the serve's final write says it stopped,
//! and a file older than [`STALE`] means nothing updates it. The view says so in its
//! header (`"serving": false` in JSON); a state directory where no serve ever ran is an
//! error. A closed pipe or a stop request (SIGINT, SIGTERM) ends the watch with success.
//!
//! This module does not talk to the serve (reading the file needs no control socket and
//! no state lock, so watching never slows the backplane) and takes no lock.

pub mod render;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::serve::{ServeStats, stats};
use render::{Printed, View};

/// A stats file older than this is not being written: no serve runs.
pub const STALE: Duration = Duration::from_secs(3);

/// `master watch` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Print the view once and exit.
    #[arg(long)]
    pub once: bool,
    /// Time between two refreshes, in milliseconds (200-5000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(200..=5000))]
    pub interval_ms: u64,
}

/// How the view is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Redrawn in place (stdout is a terminal).
    Terminal,
    /// Plain lines (stdout is a pipe or a file).
    Plain,
    /// JSON lines.
    Json,
}

/// Failures of `master watch`.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "no `master serve` has run on {state}: {path} does not exist (start `master serve --iface IFACE --state {state}`)"
    )]
    NoServe { state: PathBuf, path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the view")]
    Write(#[source] io::Error),
}

/// The stats file and how old it is.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub stats: ServeStats,
    pub age: Duration,
}

impl Snapshot {
    /// A serve runs and writes this.
    pub fn serving(&self) -> bool {
        !self.stats.stopped && self.age <= STALE
    }
}

/// Reads the stats of the serve on `state`.
pub fn read(state: &Path) -> Result<Snapshot, WatchError> {
    let path = stats::stats_path(state);
    let stats = stats::read(state).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => WatchError::NoServe {
            state: state.to_path_buf(),
            path: path.clone(),
        },
        _ => WatchError::Read {
            path: path.clone(),
            source,
        },
    })?;
    // The file's age; a clock step backwards counts as fresh.
    let age = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    Ok(Snapshot { stats, age })
}

/// The view of `snap`; session rates from the bytes each session sent since `prev`.
pub fn view(snap: &Snapshot, prev: Option<&ServeStats>) -> View {
    let st = &snap.stats;
    let serving = snap.serving();
    let age_ms = u64::try_from(snap.age.as_millis()).unwrap_or(u64::MAX);
    let now_ms = if serving {
        st.uptime_ms.saturating_add(age_ms)
    } else {
        st.uptime_ms
    };
    let sessions = st
        .sessions
        .iter()
        .map(|s| {
            let rate = prev.and_then(|p| {
                let before = p.sessions.iter().find(|o| o.transfer == s.transfer)?;
                let dt = st.uptime_ms.checked_sub(p.uptime_ms).filter(|d| *d > 0)?;
                let bytes = s.artifact_bytes().saturating_sub(before.artifact_bytes());
                Some(bytes.saturating_mul(1000) / dt)
            });
            (s.clone(), rate)
        })
        .collect();
    View {
        serving,
        age_ms,
        epoch: st.epoch,
        iface: st.iface.clone(),
        now_ms,
        artifact_bytes: st.artifact_bytes,
        cards_untracked: st.cards_untracked,
        cards: st.cards.clone(),
        sessions,
    }
}

/// Runs the watch on `state` until `stop` is set, the output closes, or (with
/// `--once`) after one view. `rows` gives the terminal height for [`Mode::Terminal`].
pub fn run(
    state: &Path,
    args: &WatchArgs,
    mode: Mode,
    out: &mut dyn Write,
    stop: &AtomicBool,
    rows: &dyn Fn() -> Option<usize>,
) -> Result<(), WatchError> {
    let mut prev: Option<ServeStats> = None;
    let mut printed = Printed::default();
    let mut first = true;
    let interval = Duration::from_millis(args.interval_ms.clamp(200, 5000));
    loop {
        let started = Instant::now();
        let snap = read(state)?;
        // A new serve run starts its sessions afresh: no rate across runs.
        let before = prev.as_ref().filter(|p| p.epoch == snap.stats.epoch);
        let v = view(&snap, before);
        let text = match (mode, args.once) {
            (Mode::Json, _) => render::json(&v, &mut printed),
            (Mode::Terminal | Mode::Plain, true) => {
                let mut t = render::table(&v, mode == Mode::Terminal).join("\n");
                t.push('\n');
                t
            }
            (Mode::Terminal, false) => {
                let mut t = String::new();
                if first {
                    t.push_str("\x1b[2J");
                }
                t.push_str(&render::terminal(&v, rows()));
                t
            }
            (Mode::Plain, false) => {
                let mut t = render::plain(&v, &mut printed).join("\n");
                if !t.is_empty() {
                    t.push('\n');
                }
                t
            }
        };
        first = false;
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            // The reader went away (`| head`): done.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(WatchError::Write(e)),
        }
        // Rates need two different snapshots: keep the older one while the file has
        // not been rewritten since (it is written once a second).
        if prev
            .as_ref()
            .is_none_or(|p| p.uptime_ms != snap.stats.uptime_ms)
        {
            prev = Some(snap.stats);
        }
        if args.once {
            return Ok(());
        }
        while started.elapsed() < interval {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20).min(interval));
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::{CardStage, CardStats, SessionStats};

    fn stats(uptime_ms: u64, sent: u64) -> ServeStats {
        ServeStats {
            epoch: 3,
            iface: "p0".into(),
            uptime_ms,
            cards: vec![CardStats {
                slot: 1,
                stage: CardStage::Fetching,
                total_bytes: 100,
                done_bytes: 50,
                ..CardStats::default()
            }],
            sessions: vec![SessionStats {
                transfer: 9,
                data_bytes: sent,
                ..SessionStats::default()
            }],
            ..ServeStats::default()
        }
    }

    #[test]
    fn a_missing_stats_file_says_no_serve_ran() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(matches!(e, WatchError::NoServe { .. }), "{e}");
        assert!(e.to_string().contains("master serve --iface"));
    }

    #[test]
    fn session_rates_come_from_two_snapshots() {
        let a = stats(1000, 0);
        let b = Snapshot {
            stats: stats(3000, 4_000_000),
            age: Duration::from_millis(100),
        };
        let v = view(&b, Some(&a));
        assert!(v.serving);
        assert_eq!(v.now_ms, 3100);
        assert_eq!(v.sessions[0].1, Some(2_000_000));
        assert_eq!(view(&b, None).sessions[0].1, None);
        let stopped = Snapshot {
            stats: ServeStats {
                stopped: true,
                ..b.stats.clone()
            },
            age: Duration::ZERO,
        };
        assert!(!stopped.serving());
        let old = Snapshot {
            age: STALE + Duration::from_secs(1),
            ..b
        };
        assert!(!old.serving());
    }

    #[test]
    fn once_prints_the_view_from_the_file_and_a_closed_pipe_ends_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        stats::write(dir.path(), &stats(5000, 10)).unwrap();
        let args = WatchArgs {
            once: true,
            interval_ms: 200,
        };
        let stop = AtomicBool::new(false);
        let mut out = Vec::new();
        run(dir.path(), &args, Mode::Plain, &mut out, &stop, &|| None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("master serve epoch 3 on p0: up 5.0s"),
            "{text}"
        );
        assert!(text.contains("fetching  50 B/100 B"), "{text}");

        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let live = WatchArgs {
            once: false,
            interval_ms: 200,
        };
        run(dir.path(), &live, Mode::Json, &mut Closed, &stop, &|| None).unwrap();
        // A stop request ends a live watch after its current view.
        stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        run(dir.path(), &live, Mode::Terminal, &mut out, &stop, &|| {
            Some(30)
        })
        .unwrap();
        assert!(out.starts_with(b"\x1b[2J\x1b[H"));
    }
}
