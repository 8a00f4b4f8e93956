//! Runs the in-memory transfer simulation (one master, N cards, optional loss) and prints
//! the CPU time the engine itself spends per GB on each side, to show it is not the
//! bottleneck at line rate (≈ 122 MB/s on 1 Gbit/s).
//!
//! ```text
//! cargo run -p shelfboot-xfer --release --example simulate -- [--mib 256] [--cards 8] [--loss 0.0] [--mtu 1500] [--seed 1]
//! ```
//!
//! Sender CPU is the time inside `Sender::poll` (block read from memory, frame encode, CRC)
//! and NACK/Progress handling; receiver CPU is the time inside frame decode (CRC),
//! `Receiver::on_data` (copy, reassembly, sha256, sink) and `Receiver::poll`, summed over
//! cards. The simulated channel's own work (copying frames into queues, loss draws) is not
//! counted. Both are wall-clock time inside the engine's calls, so on a loaded machine
//! they include time the thread was preempted; the process CPU time (user + system, from
//! `/proc/self/stat`, covering everything: artifact generation, channel, both sides) is
//! printed as a load-independent upper bound.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shelfboot_proto::DEFAULT_ETHERTYPE;
use shelfboot_proto::data::block_size_for_mtu;
use shelfboot_proto::frame::{Link, MacAddr};
use shelfboot_xfer::sim::{CardSpec, Sim, SimConfig, SimRng};
use shelfboot_xfer::{ReceiverConfig, SenderConfig};

struct Args {
    mib: usize,
    cards: usize,
    loss: f64,
    mtu: u16,
    seed: u64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        mib: 256,
        cards: 8,
        loss: 0.0,
        mtu: 1500,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--mib" => a.mib = value.parse().map_err(|e| bad(&e))?,
            "--cards" => a.cards = value.parse().map_err(|e| bad(&e))?,
            "--loss" => a.loss = value.parse().map_err(|e| bad(&e))?,
            "--mtu" => a.mtu = value.parse().map_err(|e| bad(&e))?,
            "--seed" => a.seed = value.parse().map_err(|e| bad(&e))?,
            _ => {
                return Err(format!(
                    "unknown flag {flag}; see the header of examples/simulate.rs"
                ));
            }
        }
    }
    Ok(a)
}

/// User + system CPU time of this process so far, from `/proc/self/stat` (fields 14 and 15,
/// in clock ticks of 10 ms on Linux).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn per_gb(cpu: Duration, bytes: u64) -> f64 {
    if bytes == 0 {
        return 0.0;
    }
    cpu.as_secs_f64() / (bytes as f64 / 1e9)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("simulate: {e}");
            return ExitCode::from(2);
        }
    };
    let block_size = match block_size_for_mtu(args.mtu) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("simulate: {e}");
            return ExitCode::from(2);
        }
    };
    let size = args.mib << 20;
    let mut rng = SimRng::new(args.seed);
    let mut artifact = Vec::with_capacity(size + 8);
    while artifact.len() < size {
        artifact.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    artifact.truncate(size);
    let link = Link {
        dst: MacAddr([0x03, 0x5b, 0, 0, 0, 1]),
        src: MacAddr([0x02, 0x5b, 0, 0, 0, 0xfe]),
        ethertype: DEFAULT_ETHERTYPE,
    };
    let cfg = SimConfig {
        seed: args.seed,
        latency: Duration::from_micros(100),
        control_loss: 0.0,
        sender: SenderConfig::new(link, block_size),
        receiver: ReceiverConfig::default(),
        max_time: Duration::from_secs(3600),
        max_steps: u64::MAX,
        max_sessions_per_card: 8,
    };
    let cards = (0..args.cards)
        .map(|_| CardSpec {
            loss: args.loss,
            keep_bytes: false,
            ..CardSpec::default()
        })
        .collect();
    let wall = Instant::now();
    let report = match Sim::new(cfg, artifact, cards).run() {
        Ok(r) => r,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("simulate: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let wall = wall.elapsed();
    let cpu_total = process_cpu();
    let sent = report.sender.data_bytes + report.sender.retransmit_bytes;
    let received = size as u64 * args.cards as u64;
    let high_water = report
        .cards
        .iter()
        .map(|c| c.buffered_high_water)
        .max()
        .unwrap_or(0);
    println!(
        "artifact {} MiB, {} cards, loss {}, MTU {} (block {block_size})",
        args.mib, args.cards, args.loss, args.mtu
    );
    println!(
        "all complete and verified: {}; sessions {}; simulated time {:.3} s ({:.1} MB/s per card)",
        report.all_complete,
        report.sessions,
        report.sim_time.as_secs_f64(),
        size as f64 / 1e6 / report.sim_time.as_secs_f64()
    );
    println!(
        "master sent {} bytes = {:.4} x artifact ({} retransmitted, {} frames, {} NACKs)",
        sent,
        sent as f64 / size as f64,
        report.sender.retransmit_bytes,
        report.sender.frames,
        report.sender.nacks
    );
    println!(
        "sender   CPU {:8.3} s = {:6.3} s per GB sent      (line rate needs < 8.2 s/GB)",
        report.sender_cpu.as_secs_f64(),
        per_gb(report.sender_cpu, sent)
    );
    println!(
        "receiver CPU {:8.3} s = {:6.3} s per GB per card  (line rate needs < 8.2 s/GB)",
        report.receiver_cpu.as_secs_f64(),
        per_gb(report.receiver_cpu, received)
    );
    if let Some(cpu) = cpu_total {
        println!(
            "process CPU {:8.3} s = {:6.3} s per GB received by all cards (whole run, upper bound)",
            cpu.as_secs_f64(),
            per_gb(cpu, received)
        );
    }
    println!(
        "card buffer high-water {} KiB; wall time {:.2} s",
        high_water >> 10,
        wall.as_secs_f64()
    );
    if report.all_complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
