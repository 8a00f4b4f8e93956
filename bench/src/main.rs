//! `shelfboot-bench`: runs the benchmark scenarios and prints a table, saves JSON and an
//! SVG chart under `bench/results/`. The hidden `serve-child` and `card-child`
//! subcommands are the master and simulated-card processes it starts inside the
//! namespaces. Needs root. See docs/benchmarks.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shelfboot_bench::backplane::Backplane;
use shelfboot_bench::failover;
use shelfboot_bench::lab::{self, LabPlan};
use shelfboot_bench::peers::{self, Peer};
use shelfboot_bench::plot;
use shelfboot_bench::proc::loadavg;
use shelfboot_bench::release;
use shelfboot_bench::report::{self, Report};
use shelfboot_bench::scenarios::{self, Plan};
use shelfboot_bench::shelfboot::{self, CardChild, ReleaseShape, ServeChild};
use shelfboot_bench::sockbuf::RaisedCaps;
use shelfboot_proto::report::error_chain;

/// Benchmarks shelfboot against TFTP, HTTP, udpcast and uftp on a namespace backplane.
#[derive(Debug, Parser)]
#[command(name = "shelfboot-bench", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    child: Option<Child>,
    /// Artifact size in MiB.
    #[arg(long, default_value_t = 256)]
    size: u64,
    /// Runs per figure (median, min, max).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Smoke test: 8 MiB, 1 run, 1 and 8 cards, shaped only, 200 warm cards, 64 MiB RSS,
    /// a release of 40 packages (5.5 MB) instead of 200, one QEMU run with a 16 MiB flash
    /// file.
    #[arg(long)]
    quick: bool,
    /// Links: shaped (tbf 1 Gbit/s on the master port), unshaped, or both.
    #[arg(long, default_value = "both")]
    links: String,
    /// Card counts of the transfer scenarios (1 is always included).
    #[arg(long, default_value = "8,16", value_delimiter = ',')]
    cards: Vec<usize>,
    /// Peers: shelfboot,uftp,http,udpcast,tftp.
    #[arg(
        long,
        default_value = "shelfboot,uftp,http,udpcast,tftp",
        value_delimiter = ','
    )]
    peers: Vec<String>,
    /// Loss percentage of the loss scenario (8 cards, shaped link); 0 skips it.
    #[arg(long, default_value_t = 1)]
    loss: u8,
    /// Simulated cards of the warm-boot scenario; 0 skips it.
    #[arg(long, default_value_t = 1000)]
    warm_cards: usize,
    /// Artifact of the card-RSS scenario in MiB; 0 skips it.
    #[arg(long, default_value_t = 1024)]
    rss_size: u64,
    /// Runs of the QEMU scenarios (boot path: full boots; flash: rounds in one boot); 0
    /// skips both.
    #[arg(long, default_value_t = 3)]
    qemu_runs: usize,
    /// Size of the file the flash scenario writes to nandsim, MiB.
    #[arg(long, default_value_t = 32)]
    flash_size: u64,
    /// Scenarios to run: transfers (items 1-3), warm, rss, flash, boot, release (200
    /// packages to 16 cards, then an update of 20; --quick: 40 smaller packages), failover
    /// (three cluster masters, the serving one killed mid-burn; not in the default set).
    #[arg(
        long,
        default_value = "transfers,warm,rss,flash,boot,release",
        value_delimiter = ','
    )]
    only: Vec<String>,
    /// Induced failures of the failover scenario (the serving master killed mid-burn,
    /// one per round).
    #[arg(long, default_value_t = 10)]
    failovers: usize,
    /// MTU of every backplane port (1280-9000; 9000 = jumbo frames). The ceiling rows
    /// stay at 1514-byte frames.
    #[arg(long, default_value_t = 1500)]
    mtu: u16,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Scratch directory (artifacts, received copies, logs); emptied at the end.
    #[arg(long)]
    work: Option<PathBuf>,
    /// Keep the scratch directory (logs of every child) for inspection.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Subcommand)]
enum Child {
    /// (internal) the master service inside the master namespace.
    #[command(hide = true)]
    ServeChild {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        iface: String,
        #[arg(long)]
        stop_file: PathBuf,
        #[arg(long)]
        stats_out: PathBuf,
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// (internal) simulated cards inside a card namespace.
    #[command(hide = true)]
    CardChild {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        anchor: PathBuf,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        base_mac: String,
        #[arg(long, default_value_t = 1)]
        cards: usize,
        #[arg(long)]
        warm: bool,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        timeout: u64,
        #[arg(long)]
        sha256: Option<String>,
        #[arg(long, default_value = shelfboot::CARD_TYPE)]
        card_type: String,
        #[arg(long, default_value = "x86_64")]
        arch: String,
        #[arg(long)]
        verify_set: bool,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_micros()
        .init();
    let cli = Cli::parse();
    let res = match &cli.child {
        Some(c) => child(c),
        None => bench(&cli),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shelfboot-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn child(c: &Child) -> anyhow::Result<()> {
    match c {
        Child::ServeChild {
            state,
            iface,
            stop_file,
            stats_out,
            key,
        } => Ok(shelfboot::serve_child(&ServeChild {
            state: state.clone(),
            iface: iface.clone(),
            stop_file: stop_file.clone(),
            stats_out: stats_out.clone(),
            key: key.clone(),
        })?),
        Child::CardChild {
            iface,
            anchor,
            dir,
            base_mac,
            cards,
            warm,
            size,
            timeout,
            sha256,
            card_type,
            arch,
            verify_set,
            out,
        } => {
            let base_mac = shelfboot::parse_mac(base_mac)
                .with_context(|| format!("--base-mac {base_mac:?} is not a MAC address"))?;
            let arch = arch
                .parse()
                .with_context(|| format!("--arch {arch:?}: want x86_64 or aarch64"))?;
            let rep = shelfboot::card_child(&CardChild {
                iface: iface.clone(),
                anchor: anchor.clone(),
                dir: dir.clone(),
                base_mac,
                cards: *cards,
                warm: *warm,
                size: *size,
                timeout: Duration::from_secs(*timeout),
                sha256: sha256.clone(),
                card_type: card_type.clone(),
                arch,
                verify_set: *verify_set,
            })?;
            std::fs::write(out, serde_json::to_vec_pretty(&rep)?)
                .with_context(|| format!("writing the card report {}", out.display()))?;
            Ok(())
        }
    }
}

fn utc_stamp() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-time".into())
}

fn bench(cli: &Cli) -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "shelfboot-bench needs root (network namespaces, AF_PACKET); run it with sudo"
    );
    anyhow::ensure!(
        (shelfboot_proto::MIN_MTU..=shelfboot_proto::MAX_MTU).contains(&cli.mtu),
        "--mtu {}: want {} to {}",
        cli.mtu,
        shelfboot_proto::MIN_MTU,
        shelfboot_proto::MAX_MTU
    );
    let quick = cli.quick;
    let size = if quick { 8 } else { cli.size }.max(1) << 20;
    let runs = if quick { 1 } else { cli.runs.max(1) };
    let mut cards = vec![1];
    cards.extend(cli.cards.iter().copied().filter(|&c| c > 1 && c <= 64));
    if quick {
        cards.retain(|&c| c <= 8);
    }
    cards.dedup();
    let shaped = match (quick, cli.links.as_str()) {
        (true, _) | (_, "shaped") => vec![true],
        (_, "unshaped") => vec![false],
        (_, "both") => vec![true, false],
        (_, other) => anyhow::bail!("--links {other:?}: want shaped, unshaped or both"),
    };
    let peers = cli
        .peers
        .iter()
        .map(|s| Peer::parse(s).with_context(|| format!("--peers: unknown peer {s:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let work = cli
        .work
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("sbbench-{}", std::process::id())));
    let plan = Plan {
        size,
        runs,
        shaped,
        cards: cards.clone(),
        peers: peers.clone(),
        loss_percent: cli.loss,
        warm_cards: if quick {
            cli.warm_cards.min(200)
        } else {
            cli.warm_cards
        },
        rss_size: if quick {
            cli.rss_size.min(64)
        } else {
            cli.rss_size
        } << 20,
        work: work.clone(),
        exe: std::env::current_exe().context("finding this program's path")?,
    };
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let srv = work.join("srv");
    std::fs::create_dir_all(&srv).with_context(|| format!("creating {}", srv.display()))?;
    let only = |s: &str| cli.only.iter().any(|o| o == s);
    for o in &cli.only {
        anyhow::ensure!(
            [
                "transfers",
                "warm",
                "rss",
                "flash",
                "boot",
                "release",
                "failover"
            ]
            .contains(&o.as_str()),
            "--only {o:?}: want transfers, warm, rss, flash, boot, release or failover"
        );
    }
    // The transfer artifact (and its master state) only for the transfer scenarios.
    let art = srv.join("artifact.bin");
    let sha = if only("transfers") {
        eprintln!(
            "writing the {} MiB artifact to {}",
            size >> 20,
            art.display()
        );
        scenarios::write_artifact(&art, size, 42)
            .with_context(|| format!("writing {}", art.display()))?;
        shelfboot::file_sha(&art).with_context(|| format!("hashing {}", art.display()))?
    } else {
        String::new()
    };
    let load_before = loadavg();
    let started_utc = utc_stamp();
    let mut rows = Vec::new();
    let mut notes = vec![
        "the machine is shared with other engineers' builds and tests: throughput figures are \
         noisy; compare ratios within a run"
            .to_owned(),
        "ceiling = netio::ceiling (ring path, whole 1514-byte frames, no acks) in a netio Lab \
         with the same bridge/veth/tbf shape, built fresh for each measurement"
            .to_owned(),
    ];
    let (shelf, shelf_why) = if !only("transfers") {
        (None, "the transfer scenarios were not selected".into())
    } else if peers.contains(&Peer::Shelfboot) {
        let dir = work.join("shelf");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        match shelfboot::prepare(&dir, &art, size) {
            Ok(s) => (Some(s), String::new()),
            Err(e) => {
                let why = error_chain(&e);
                eprintln!("shelfboot is not available: {why}");
                (None, why)
            }
        }
    } else {
        (None, "not selected".into())
    };
    if only("transfers") || only("warm") || only("rss") || only("release") {
        let mut max_cards = cards.iter().copied().max().unwrap_or(1).max(8);
        if only("release") {
            max_cards = max_cards.max(release::CARDS);
        }
        // The peers' socket-buffer options are capped by the host's rmem_max/wmem_max
        // (see `sockbuf`); raised for the run, restored when `_caps` drops (after `bp`).
        let _caps = if only("transfers") {
            match RaisedCaps::raise(peers::SOCKET_BUFFER) {
                Ok(c) => {
                    eprintln!("{}", c.describe());
                    notes.push(c.describe());
                    Some(c)
                }
                Err(e) => {
                    let why = format!(
                        "socket-buffer caps not raised ({}): the peers' -B/--rcvbuf are capped \
                         at the host's net.core.rmem_max/wmem_max",
                        error_chain(&e)
                    );
                    eprintln!("{why}");
                    notes.push(why);
                    None
                }
            }
        } else {
            None
        };
        let bp = Backplane::new(max_cards).context("building the backplane")?;
        if cli.mtu != shelfboot_proto::STANDARD_MTU {
            bp.set_mtu(cli.mtu)
                .with_context(|| format!("setting MTU {} on the backplane", cli.mtu))?;
            notes.push(format!(
                "every backplane port at MTU {} (the ceiling rows still send 1514-byte frames)",
                cli.mtu
            ));
        }
        if only("transfers") {
            // Each side's CPU, whole process trees, in a control group of its own.
            let cpu = match shelfboot_bench::cpuacct::Sides::create() {
                Ok(c) => Some(c),
                Err(e) => {
                    let why = format!("CPU per GB not measured: {e}");
                    eprintln!("{why}");
                    notes.push(why);
                    None
                }
            };
            scenarios::transfers(
                &plan,
                &bp,
                &srv,
                &sha,
                shelf.as_ref().ok_or(shelf_why.as_str()),
                cpu.as_ref(),
                &mut rows,
            )
            .context("transfer scenarios")?;
        }
        if only("warm")
            && plan.warm_cards > 0
            && let Err(e) = scenarios::warm_boot(&plan, &bp, &mut rows)
        {
            notes.push(format!("warm boot not measured: {e}"));
        }
        if only("rss")
            && plan.rss_size > 0
            && let Err(e) = scenarios::card_rss(&plan, &bp, &mut rows)
        {
            notes.push(format!("card RSS not measured: {e}"));
        }
        if only("release") {
            let (shape, label) = if quick {
                (
                    ReleaseShape::QUICK,
                    format!(
                        " (quick: {:.1} MB in both archs, not the 200-package release)",
                        ReleaseShape::QUICK.release_bytes() as f64 / 1e6
                    ),
                )
            } else {
                (ReleaseShape::FULL, String::new())
            };
            match release::release(&plan, &bp, &shape, &label, &mut rows) {
                Ok(()) => notes.push(
                    "release rows: master bytes / artifact = everything the master's eth0 sent \
                     (data, plans in fragments, control, headers) / the bytes of one copy of \
                     every distinct artifact at least one card's plan holds (update: of every \
                     artifact of a card's new plan that card's old plan lacked); \
                     artifact_bytes_ratio is the master's own count of artifact bytes sent over \
                     the same; MB/s per card = that card's own plan bytes / its time"
                        .into(),
                ),
                Err(e) => notes.push(format!("release not measured: {e}")),
            }
        }
    }
    if only("failover") {
        let fp = failover::FailoverPlan {
            rounds: cli.failovers.max(1),
            work: work.join("failover"),
            exe: plan.exe.clone(),
        };
        if let Err(e) = failover::failover(&fp, &mut rows, &mut notes) {
            notes.push(format!("failover not measured: {e}"));
        }
    }
    let qemu_runs = if quick {
        cli.qemu_runs.min(1)
    } else {
        cli.qemu_runs
    };
    if qemu_runs > 0 && (only("flash") || only("boot")) {
        let lp = LabPlan {
            runs: qemu_runs,
            flash_rounds: if quick { 3 } else { qemu_runs.max(5) },
            flash_bytes: if quick {
                cli.flash_size.min(16)
            } else {
                cli.flash_size
            }
            .max(1)
                << 20,
            work: work.join("lab"),
        };
        match lab::lab_kernel() {
            Err(e) => notes.push(format!("QEMU scenarios not run: {}", error_chain(&e))),
            Ok(k) => {
                if only("flash")
                    && let Err(e) = lab::flash(&lp, &k, &mut rows)
                {
                    notes.push(format!("flash (item 6) not measured: {}", error_chain(&e)));
                }
                if only("boot")
                    && let Err(e) = lab::boot_path(&lp, &k, &mut rows)
                {
                    notes.push(format!(
                        "boot path (item 7) not measured: {}",
                        error_chain(&e)
                    ));
                }
            }
        }
    }
    let report = Report {
        started_utc: started_utc.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        artifact_bytes: size,
        runs,
        quick,
        load_before,
        load_after: loadavg(),
        host: format!(
            "{} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        rows,
        notes,
    };
    print!("{}", report::table(&report));
    let base = cli.out.join(&started_utc);
    let json = base.with_extension("json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let svg = base.with_extension("svg");
    std::fs::write(&svg, report::svg(&report))
        .with_context(|| format!("writing {}", svg.display()))?;
    eprintln!("saved {} and {}", json.display(), svg.display());
    let bars = plot::bars(&report.rows);
    if !bars.is_empty() {
        let tsvg = cli.out.join(format!("{started_utc}-targets.svg"));
        let title = format!(
            "shelfboot issue 7 items 4-7 vs targets, {} ({} run(s), load {} / {})",
            started_utc, runs, report.load_before, report.load_after
        );
        std::fs::write(&tsvg, plot::svg(&title, &bars))
            .with_context(|| format!("writing {}", tsvg.display()))?;
        eprintln!("saved {}", tsvg.display());
    }
    if !cli.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shelfboot_proto::id::{Arch, MacAddr};

    /// `ServeChild::argv` writes what `serve-child` parses, with and without a key.
    #[test]
    fn serve_child_argv_parses_back_into_the_same_settings() {
        for key in [None, Some(PathBuf::from("/s1/plan.key"))] {
            let c = ServeChild {
                state: "/w/m2".into(),
                iface: "p1".into(),
                stop_file: "/w/m2.stop".into(),
                stats_out: "/w/m2.json".into(),
                key,
            };
            let argv = c.argv(std::path::Path::new("/x/shelfboot-bench"));
            let cli = Cli::try_parse_from(&argv).unwrap();
            let Some(Child::ServeChild {
                state,
                iface,
                stop_file,
                stats_out,
                key,
            }) = cli.child
            else {
                panic!("not a serve-child command line: {argv:?}");
            };
            let back = ServeChild {
                state,
                iface,
                stop_file,
                stats_out,
                key,
            };
            assert_eq!(back, c);
        }
    }

    /// `CardChild::argv` writes what `card-child` parses: every setting comes back.
    #[test]
    fn card_child_argv_parses_back_into_the_same_settings() {
        let mut c = CardChild::new(
            std::path::Path::new("/s/plan.anchor"),
            std::path::Path::new("/w/c3"),
            MacAddr([2, 0x5c, 0, 0, 0, 3]),
            2,
            4096,
        );
        c.timeout = Duration::from_secs(77);
        c.warm = true;
        c.sha256 = Some("ab".repeat(32));
        c.card_type = "lc200".into();
        c.arch = Arch::Aarch64;
        c.verify_set = true;
        let argv = c.argv(
            std::path::Path::new("/x/shelfboot-bench"),
            std::path::Path::new("/w/r.json"),
        );
        let cli = Cli::try_parse_from(&argv).unwrap();
        let Some(Child::CardChild {
            iface,
            anchor,
            dir,
            base_mac,
            cards,
            warm,
            size,
            timeout,
            sha256,
            card_type,
            arch,
            verify_set,
            out,
        }) = cli.child
        else {
            panic!("not a card-child command line: {argv:?}");
        };
        assert_eq!(iface, c.iface);
        assert_eq!(anchor, c.anchor);
        assert_eq!(dir, c.dir);
        assert_eq!(shelfboot::parse_mac(&base_mac), Some(c.base_mac));
        assert_eq!((cards, warm, size, timeout), (2, true, 4096, 77));
        assert_eq!(sha256, c.sha256);
        assert_eq!((card_type.as_str(), arch.as_str()), ("lc200", "aarch64"));
        assert!(verify_set);
        assert_eq!(out, std::path::PathBuf::from("/w/r.json"));
        let plain = CardChild::new(
            std::path::Path::new("/a"),
            std::path::Path::new("/d"),
            c.base_mac,
            1,
            1,
        );
        let argv = plain.argv(std::path::Path::new("/x/b"), std::path::Path::new("/o"));
        assert!(
            !argv
                .iter()
                .any(|a| a == "--warm" || a == "--verify-set" || a == "--sha256")
        );
    }
}
