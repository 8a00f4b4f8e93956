//! netio-ceiling: the raw AF_PACKET ceiling of this machine, per I/O path.
//!
//! In a fresh network namespace (bridge + 1 sender port + R receiver ports; optionally
//! the sender port tbf-shaped to 1 Gbit/s), the sender blasts a fixed number of
//! max-size frames to a multicast group every receiver has joined, once per path
//! (plain, mmsg, ring: the same path on both ends), and the tool prints frames/s, MB/s
//! and losses per path as a table. Medians of `--runs` runs, with min and max.
//!
//! It is a measurement, not a protocol: no acknowledgements, no retransmission, no pacing
//! beyond what the kernel's socket buffer and the tbf impose. Needs root. The measurement
//! itself is `shelfboot_bench::ceiling::run` (shared with the benchmark command); this
//! binary parses arguments, builds the labs and prints the table.

use std::process::ExitCode;
use std::time::Duration;

use shelfboot_bench::ceiling::{self, CeilingRun, FRAME_LEN};
use shelfboot_netio::Path;
use shelfboot_testkit::netns::{Lab, Tbf};

const USAGE: &str = "\
usage: netio-ceiling [--frames N] [--receivers 1,8] [--shape both|shaped|unshaped]
                     [--paths plain,mmsg,ring] [--runs 3] [--batch 64]
                     [--tbf-burst BYTES] [--tbf-latency-ms MS]

Blasts N max-size (MTU 1500 -> 1514-byte) frames per path to a multicast group joined
by every receiver, inside a throwaway network namespace, and prints a table. 'shaped'
puts tbf 1 Gbit/s on the sender port (and turns PACKET_QDISC_BYPASS off, which would
skip it); 'unshaped' uses qdisc bypass. Needs root.";

#[derive(Debug, Clone)]
struct Args {
    frames: u32,
    receivers: Vec<usize>,
    shaped: Vec<bool>,
    paths: Vec<Path>,
    runs: usize,
    batch: usize,
    tbf: Tbf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        frames: 100_000,
        receivers: vec![1, 8],
        shaped: vec![true, false],
        paths: Path::ALL.to_vec(),
        runs: 3,
        batch: 64,
        tbf: Tbf::GIGABIT,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--frames" => a.frames = val()?.parse().map_err(|e| format!("--frames: {e}"))?,
            "--runs" => a.runs = val()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--batch" => a.batch = val()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--receivers" => {
                a.receivers = val()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--receivers {s}: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--shape" => {
                a.shaped = match val()?.as_str() {
                    "both" => vec![true, false],
                    "shaped" => vec![true],
                    "unshaped" => vec![false],
                    other => return Err(format!("--shape {other}: want both|shaped|unshaped")),
                }
            }
            "--paths" => {
                a.paths = val()?
                    .split(',')
                    .map(|s| match s.trim() {
                        "plain" => Ok(Path::Plain),
                        "mmsg" => Ok(Path::Mmsg),
                        "ring" => Ok(Path::Ring),
                        other => Err(format!("--paths: unknown path {other:?}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--tbf-burst" => {
                a.tbf.burst_bytes = val()?.parse().map_err(|e| format!("--tbf-burst: {e}"))?
            }
            "--tbf-latency-ms" => {
                let ms: u64 = val()?
                    .parse()
                    .map_err(|e| format!("--tbf-latency-ms: {e}"))?;
                a.tbf.latency = Duration::from_millis(ms);
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.frames == 0 || a.runs == 0 || a.batch == 0 || a.receivers.iter().any(|&r| r == 0 || r > 64)
    {
        return Err(format!(
            "frames, runs and batch must be > 0, receivers 1..=64\n{USAGE}"
        ));
    }
    Ok(a)
}

fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    (v[n / 2], v[0], v[n - 1])
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match measure(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Run every scenario and print the table; Ok(false) if some run failed.
fn measure(args: &Args) -> Result<bool, String> {
    println!(
        "netio-ceiling: {} frames x {FRAME_LEN} B per run, {} runs (median [min-max]); \
         MB = 10^6 bytes of whole frames",
        args.frames, args.runs
    );
    println!("load average before: {}", loadavg());
    if args.shaped.contains(&true) {
        println!("tbf on the sender port: {:?}", args.tbf);
    }
    println!(
        "{:<9} {:>3} {:<6} {:>22} {:>22} {:>24} {:>8} {:>8} {:>18}",
        "link",
        "rx",
        "path",
        "send frames/s",
        "send MB/s",
        "MB/s per receiver",
        "lost %",
        "k-drops",
        "CPU us/frame"
    );
    let mut failed = false;
    for &shaped in &args.shaped {
        for &receivers in &args.receivers {
            let lab =
                Lab::new("ceiling", receivers + 1).map_err(|e| format!("building the lab: {e}"))?;
            if shaped {
                lab.shape_port(0, args.tbf)
                    .map_err(|e| format!("shaping the sender port: {e}"))?;
            }
            for &path in &args.paths {
                let mut samples = Vec::new();
                for _ in 0..args.runs {
                    let run = CeilingRun {
                        receivers,
                        frames: args.frames,
                        path,
                        shaped,
                        batch: args.batch,
                    };
                    match ceiling::run(&lab, run) {
                        Ok(s) => samples.push(s),
                        Err(e) => {
                            eprintln!(
                                "error: {} rx={receivers} path={}: {e}",
                                if shaped { "shaped" } else { "unshaped" },
                                path.name()
                            );
                            failed = true;
                        }
                    }
                }
                if samples.is_empty() {
                    continue;
                }
                let n = f64::from(args.frames);
                let bytes = n * FRAME_LEN as f64;
                let fps = median_min_max(samples.iter().map(|s| n / s.send_secs).collect());
                let smb =
                    median_min_max(samples.iter().map(|s| bytes / s.send_secs / 1e6).collect());
                let rmb = median_min_max(
                    samples
                        .iter()
                        .map(|s| {
                            s.received as f64 / receivers as f64 * FRAME_LEN as f64
                                / s.last_rx_secs.max(1e-9)
                                / 1e6
                        })
                        .collect(),
                );
                let lost = median_min_max(
                    samples
                        .iter()
                        .map(|s| 100.0 * (1.0 - s.received as f64 / (n * receivers as f64)))
                        .collect(),
                );
                let kd = median_min_max(samples.iter().map(|s| s.kernel_drops as f64).collect());
                let cpu = median_min_max(samples.iter().map(|s| s.cpu_secs / n * 1e6).collect());
                let fmt =
                    |t: (f64, f64, f64), p: usize| format!("{:.p$} [{:.p$}-{:.p$}]", t.0, t.1, t.2);
                println!(
                    "{:<9} {:>3} {:<6} {:>22} {:>22} {:>24} {:>8.2} {:>8.0} {:>18}",
                    if shaped { "1gbit-tbf" } else { "unshaped" },
                    receivers,
                    path.name(),
                    fmt(fps, 0),
                    fmt(smb, 1),
                    fmt(rmb, 1),
                    lost.0,
                    kd.0,
                    fmt(cpu, 1)
                );
            }
        }
    }
    println!("load average after: {}", loadavg());
    Ok(!failed)
}

/// The 1/5/15-minute load averages: other work on these shared 2-core machines skews
/// every number, so the table says how busy the machine was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
