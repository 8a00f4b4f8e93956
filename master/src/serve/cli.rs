//! The `master serve` and `master stats` subcommands: argument types and the code that
//! runs them (the dispatch in [`crate::cli`] only calls in here).
//!
//! `serve` owns the state for its whole run (like `master daemon`, see [`super::run`]), blocks SIGINT and
//! SIGTERM in every thread and waits for them in one thread, which sets the stop flag: the
//! service writes its final stats and exits 0. It does not daemonize. It serves the
//! control socket like `master daemon`, so the operator CLI works while it runs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use super::{ServeConfig, ServeError, stats};

/// `master serve` arguments.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Backplane interface to serve.
    #[arg(long)]
    pub iface: String,
    /// Plan-signing key (default: STATE/plan.key, generated on first start; cards trust
    /// STATE/plan.anchor).
    #[arg(long)]
    pub key: Option<std::path::PathBuf>,
    /// Rate ceiling per transfer session, in MB/s.
    #[arg(long, default_value_t = 125)]
    pub max_rate_mbs: u64,
    /// Join window of a new transfer session, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub join_window_ms: u64,
    /// Also allow this group on the control socket (mode 0660), as `master daemon --group`.
    #[arg(long)]
    pub group: Option<String>,
    /// Stop after this many seconds (default: until SIGINT/SIGTERM).
    #[arg(long)]
    pub for_secs: Option<u64>,
}

/// Failures of the serve subcommands.
#[derive(Debug, thiserror::Error)]
pub enum ServeCliError {
    #[error("blocking SIGINT/SIGTERM to stop cleanly")]
    Signals(#[source] nix::Error),
    #[error("master serve")]
    Serve(#[from] ServeError),
    #[error("no stats in {path}: has `master serve` run on this state directory?")]
    Stats {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `master serve` until SIGINT/SIGTERM (or `--for-secs`).
pub fn serve(state: &Path, args: &ServeArgs) -> Result<(), ServeCliError> {
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.thread_block().map_err(ServeCliError::Signals)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        if sigs.wait().is_ok() {
            s.store(true, Ordering::Relaxed);
        }
    });
    if let Some(secs) = args.for_secs {
        let s = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            s.store(true, Ordering::Relaxed);
        });
    }
    let mut cfg = ServeConfig::new(&args.iface, state);
    cfg.key = args.key.clone();
    cfg.control_group = args.group.clone();
    cfg.max_rate = args.max_rate_mbs.saturating_mul(1_000_000);
    cfg.join_window = Duration::from_millis(args.join_window_ms);
    let st = super::run(&cfg, &stop)?;
    eprintln!(
        "master serve: epoch {} stopped: {} Solicits, {} Continue, {} Fetch, {} Ready, {} sessions, {} artifact bytes",
        st.epoch,
        st.solicits,
        st.plans_continue,
        st.plans_fetch,
        st.ready,
        st.sessions.len(),
        st.artifact_bytes
    );
    Ok(())
}

/// `master stats`: the counters of the running (or last) `master serve`, as JSON or text.
pub fn print_stats(
    state: &Path,
    json: bool,
    out: &mut dyn std::io::Write,
) -> Result<(), ServeCliError> {
    let st = stats::read(state).map_err(|source| ServeCliError::Stats {
        path: stats::stats_path(state),
        source,
    })?;
    let text = if json {
        serde_json::to_string_pretty(&st).unwrap_or_default() + "\n"
    } else {
        let mut t = format!(
            "epoch {} on {}: {} frames in, {} out; Solicits {} (served {}, coalesced {}, repeats {}); \
             plans Continue {} Fetch {}; unknown cards {}; Ready {}; card errors {}\n\
             dropped: malformed {}, not for us {}, unexpected {}; artifact bytes {}; \
             control requests {}; CPU {} ms\n",
            st.epoch,
            st.iface,
            st.frames_in,
            st.frames_out,
            st.solicits,
            st.solicits_served,
            st.solicits_coalesced,
            st.solicits_repeated,
            st.plans_continue,
            st.plans_fetch,
            st.unknown_cards,
            st.ready,
            st.card_errors,
            st.dropped_malformed,
            st.dropped_not_for_us,
            st.dropped_unexpected,
            st.artifact_bytes,
            st.control_requests,
            st.cpu_ms
        );
        let r = &st.reassembly;
        t.push_str(&format!(
            "large messages: {} sent in fragments, {} digest-only Continues, {} plans undeliverable,              {} inventories; reassembly: {} fragments, {} completed, {} duplicates, {} inconsistent,              {} malformed, {} too large, {} evicted, {} expired
",
            st.messages_fragmented,
            st.plans_digest_only,
            st.plans_undeliverable,
            st.inventories,
            r.fragments,
            r.completed,
            r.duplicates + r.late_duplicates,
            r.inconsistent,
            r.malformed,
            r.too_large,
            r.evicted,
            r.expired
        ));
        let by_type = |m: &std::collections::BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        t.push_str(&format!(
            "frames in by type: {}
frames out by type: {}
",
            by_type(&st.frames_in_by_type),
            by_type(&st.frames_out_by_type)
        ));
        for s in &st.sessions {
            t.push_str(&format!(
                "session {:>6} {:<22} {:>9} B to {} cards {:>2} (done {}, dropped {}){}: sent {} + {} repaired\n",
                s.transfer,
                s.name,
                s.size,
                s.group,
                s.members,
                s.completed,
                s.dropped,
                if s.catch_up { " catch-up" } else { "" },
                s.data_bytes,
                s.retransmit_bytes
            ));
        }
        t
    };
    out.write_all(text.as_bytes())
        .map_err(|source| ServeCliError::Stats {
            path: stats::stats_path(state),
            source,
        })
}
