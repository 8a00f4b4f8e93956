//! The `master serve` and `master stats` subcommands: argument types and the code that
//! runs them (the dispatch in [`crate::cli`] only calls in here).
//!
//! `serve` owns the state for its whole run (like `master daemon`, see [`super::run`]), blocks SIGINT and
//! SIGTERM in every thread and waits for them in one thread, which sets the stop flag: the
//! service finishes the loop iteration it is in (its node-database batch is committed),
//! tells systemd it is stopping, closes the control socket, writes its final stats and
//! exits 0. It does not daemonize. It serves the control socket like `master daemon`, so
//! the operator CLI works while it runs.
//!
//! Its settings come from the flags, then the configuration file ([`crate::config`]),
//! then the defaults ([`settings`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use super::{ServeConfig, ServeError, metrics, stats};
use crate::config::FileConfig;

/// Rate ceiling per session without a flag or a configuration key, MB/s.
pub const DEFAULT_MAX_RATE_MBS: u64 = 125;
/// Join window without a flag or a configuration key, ms.
pub const DEFAULT_JOIN_WINDOW_MS: u64 = 300;
/// Absence interval without a flag or a configuration key, s.
pub const DEFAULT_ABSENCE_SECS: u64 = 10;

/// `master serve` arguments. Each one given overrides the configuration file's key of the
/// same meaning.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Backplane interface to serve [config: iface].
    #[arg(long)]
    pub iface: Option<String>,
    /// Plan-signing key (default: STATE/plan.key, generated on first start; cards trust
    /// STATE/plan.anchor) [config: key].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Rate ceiling per transfer session, in MB/s [config: max_rate_mbs; default: 125].
    #[arg(long)]
    pub max_rate_mbs: Option<u64>,
    /// Join window of a new transfer session, in milliseconds [config: join_window_ms;
    /// default: 300].
    #[arg(long)]
    pub join_window_ms: Option<u64>,
    /// A card recorded present and not heard for this many seconds is recorded absent
    /// [config: absence_secs; default: 10].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub absence_secs: Option<u64>,
    /// Also allow this group on the control socket (mode 0660), as `master daemon --group`
    /// [config: control_group].
    #[arg(long)]
    pub group: Option<String>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (loopback only unless
    /// --metrics-allow-remote) [config: metrics].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Allow a metrics address that is not loopback [config: metrics_allow_remote].
    #[arg(long)]
    pub metrics_allow_remote: bool,
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
    #[error("no backplane interface: give --iface or set `iface` in {config}")]
    NoIface { config: String },
    #[error("master serve --metrics")]
    Metrics(#[source] metrics::MetricsError),
    #[error("no stats in {path}: has `master serve` run on this state directory?")]
    Stats {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The settings of `master serve` on `state`: each flag given, else the configuration
/// file's key, else the default.
pub fn settings(
    state: &Path,
    args: &ServeArgs,
    file: &FileConfig,
) -> Result<ServeConfig, ServeCliError> {
    let iface = args
        .iface
        .clone()
        .or_else(|| file.iface.clone())
        .ok_or_else(|| ServeCliError::NoIface {
            config: file.path.as_ref().map_or_else(
                || format!("the configuration file ({})", crate::config::DEFAULT_PATH),
                |p| p.display().to_string(),
            ),
        })?;
    let mut cfg = ServeConfig::new(&iface, state);
    cfg.key = args.key.clone().or_else(|| file.key.clone());
    cfg.control_group = args.group.clone().or_else(|| file.control_group.clone());
    let rate = args
        .max_rate_mbs
        .or(file.max_rate_mbs)
        .unwrap_or(DEFAULT_MAX_RATE_MBS);
    cfg.max_rate = rate.saturating_mul(1_000_000);
    let join = args
        .join_window_ms
        .or(file.join_window_ms)
        .unwrap_or(DEFAULT_JOIN_WINDOW_MS);
    cfg.join_window = Duration::from_millis(join);
    let absence = args
        .absence_secs
        .or(file.absence_secs)
        .unwrap_or(DEFAULT_ABSENCE_SECS);
    cfg.absence = Duration::from_secs(absence);
    cfg.metrics = args.metrics.or(file.metrics);
    cfg.metrics_allow_remote =
        args.metrics_allow_remote || file.metrics_allow_remote.unwrap_or(false);
    if let Some(addr) = cfg.metrics {
        metrics::check_addr(addr, cfg.metrics_allow_remote).map_err(ServeCliError::Metrics)?;
    }
    cfg.systemd = true;
    Ok(cfg)
}

/// Runs `master serve` until SIGINT/SIGTERM (or `--for-secs`).
pub fn serve(state: &Path, args: &ServeArgs, file: &FileConfig) -> Result<(), ServeCliError> {
    let cfg = settings(state, args, file)?;
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
        t.push_str(&format!(
            "presence: {} Alives, {} reports written, {} cards recorded absent, {} present again\n",
            st.alives, st.health_writes, st.cards_absent, st.cards_returned
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> FileConfig {
        FileConfig {
            path: Some("/etc/shelfboot/master.toml".into()),
            state: Some("/srv/shelfboot".into()),
            iface: Some("bp0".into()),
            key: Some("/etc/shelfboot/plan.key".into()),
            max_rate_mbs: Some(40),
            join_window_ms: Some(500),
            absence_secs: Some(30),
            control_group: Some("shelfboot".into()),
            metrics: Some("127.0.0.1:9464".parse().unwrap()),
            metrics_allow_remote: None,
        }
    }

    #[test]
    fn without_flags_the_file_applies() {
        let c = settings(Path::new("/s"), &ServeArgs::default(), &file()).unwrap();
        assert_eq!(c.iface, "bp0");
        assert_eq!(c.state, Path::new("/s"));
        assert_eq!(c.key.as_deref(), Some(Path::new("/etc/shelfboot/plan.key")));
        assert_eq!(c.max_rate, 40_000_000);
        assert_eq!(c.join_window, Duration::from_millis(500));
        assert_eq!(c.absence, Duration::from_secs(30));
        assert_eq!(c.control_group.as_deref(), Some("shelfboot"));
        assert_eq!(c.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(!c.metrics_allow_remote);
        assert!(c.systemd);
    }

    #[test]
    fn flags_override_the_file() {
        let args = ServeArgs {
            iface: Some("bp1".into()),
            key: Some("/k".into()),
            max_rate_mbs: Some(7),
            join_window_ms: Some(0),
            absence_secs: Some(4),
            group: Some("ops".into()),
            metrics: Some("[::1]:9000".parse().unwrap()),
            metrics_allow_remote: false,
            for_secs: None,
        };
        let c = settings(Path::new("/s"), &args, &file()).unwrap();
        assert_eq!(
            (
                c.iface.as_str(),
                c.key.as_deref(),
                c.max_rate,
                c.join_window
            ),
            ("bp1", Some(Path::new("/k")), 7_000_000, Duration::ZERO)
        );
        assert_eq!(c.absence, Duration::from_secs(4));
        assert_eq!(c.control_group.as_deref(), Some("ops"));
        assert_eq!(c.metrics, Some("[::1]:9000".parse().unwrap()));
    }

    #[test]
    fn without_either_the_defaults_apply_and_the_interface_is_required() {
        let args = ServeArgs {
            iface: Some("bp2".into()),
            ..ServeArgs::default()
        };
        let c = settings(Path::new("/s"), &args, &FileConfig::default()).unwrap();
        assert_eq!(c.max_rate, DEFAULT_MAX_RATE_MBS * 1_000_000);
        assert_eq!(c.join_window, Duration::from_millis(DEFAULT_JOIN_WINDOW_MS));
        assert_eq!(c.absence, Duration::from_secs(DEFAULT_ABSENCE_SECS));
        assert_eq!((c.key, c.control_group, c.metrics), (None, None, None));
        let e = settings(
            Path::new("/s"),
            &ServeArgs::default(),
            &FileConfig::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "give --iface or set `iface` in the configuration file (/etc/shelfboot/master.toml)"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_remote_metrics_address_needs_the_flag_or_the_key() {
        let mut f = file();
        f.metrics = Some("0.0.0.0:9464".parse().unwrap());
        let e = settings(Path::new("/s"), &ServeArgs::default(), &f).unwrap_err();
        assert!(matches!(e, ServeCliError::Metrics(_)), "{e}");
        let args = ServeArgs {
            metrics_allow_remote: true,
            ..ServeArgs::default()
        };
        assert!(
            settings(Path::new("/s"), &args, &f)
                .unwrap()
                .metrics_allow_remote
        );
        f.metrics_allow_remote = Some(true);
        assert!(settings(Path::new("/s"), &ServeArgs::default(), &f).is_ok());
    }
}
