//! Runs the in-memory transfer simulation (one master, N cards, optional loss) and prints
//! the CPU time the engine itself spends per GB on each side, to show it is not the
//! bottleneck at line rate (≈ 122 MB/s on 1 Gbit/s).
//!
//! ```text
//! cargo run -p shelfboot-xfer --release --example simulate -- [--mib 256] [--cards 8] [--loss 0.0] [--mtu 1500] [--seed 1]
//! ```
//!
//! Two parts:
//!
//! 1. **Engine CPU**: one sender and N receivers driven back to back in this thread, no
//!    channel, no loss; the on-CPU time of the thread (`/proc/thread-self/schedstat`, in
//!    nanoseconds, unaffected by other load on the machine) is split between the sender
//!    (`Sender::poll`: block read, frame encode, CRC) and the receivers (frame decode with
//!    CRC check, `Receiver::on_data`: copy, reassembly, sha256; `Receiver::poll`).
//! 2. **Simulation**: the same artifact through [`shelfboot_xfer::sim`] (latency, loss,
//!    NACKs, repairs): completion, bytes on the wire, simulated time, buffer high-water, and
//!    the process CPU time of the whole run.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shelfboot_proto::DEFAULT_ETHERTYPE;
use shelfboot_proto::MAX_FRAME_LEN;
use shelfboot_proto::data::DataView;
use shelfboot_proto::data::block_size_for_mtu;
use shelfboot_proto::frame::Frame;
use shelfboot_proto::frame::{Link, MacAddr};
use shelfboot_proto::msg::Digest;
use shelfboot_proto::report::error_chain;
use shelfboot_xfer::sim::{CardSpec, Sim, SimConfig, SimRng, SimSink};
use shelfboot_xfer::{
    Admission, ArtifactInfo, Receiver, ReceiverConfig, ReceiverState, Resume, SendStep, Sender,
    SenderConfig,
};

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

/// On-CPU time of the calling thread (first field of `/proc/thread-self/schedstat`, ns).
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Part 1: sender and `cards` receivers back to back; returns (sender CPU, receivers CPU).
fn engine_cpu(
    artifact: &[u8],
    cards: usize,
    link: Link,
    block_size: u16,
) -> Result<(Duration, Duration), String> {
    let info = ArtifactInfo {
        name: "bench-artifact 1".to_owned(),
        sha256: Digest::of(artifact),
        size: artifact.len() as u64,
    };
    let mut cfg = SenderConfig::new(link, block_size);
    cfg.join_window = Duration::from_nanos(1);
    cfg.silence_timeout = Duration::from_secs(86_400);
    let mut tx =
        Sender::new(cfg, 1, info.clone(), artifact, Duration::ZERO).map_err(|e| e.to_string())?;
    let mut rxs = Vec::new();
    for i in 0..cards {
        let mac = MacAddr([2, 0, 0, 0, 0, u8::try_from(i % 256).unwrap_or(0)]);
        let Admission::Joined(join) = tx.join(mac, 0, Duration::ZERO) else {
            return Err("bench: card not admitted".to_owned());
        };
        let rx = Receiver::new(
            ReceiverConfig::default(),
            info.clone(),
            &join,
            Resume::fresh(),
            SimSink::Count(0),
            Duration::ZERO,
        )
        .map_err(|e| e.to_string())?;
        rxs.push(rx);
    }
    let slices = tx.geometry().slices();
    let mut bufs = vec![vec![0u8; MAX_FRAME_LEN]; 128];
    let mut lens = vec![0usize; 128];
    let mut msgs = Vec::new();
    let (mut sender, mut receivers) = (Duration::ZERO, Duration::ZERO);
    let mut now = Duration::ZERO;
    let cpu = || thread_cpu().ok_or("bench: /proc/thread-self/schedstat unreadable".to_owned());
    loop {
        let t0 = cpu()?;
        let mut n = 0;
        while n < bufs.len() {
            match tx.poll(now, &mut bufs[n]).map_err(|e| e.to_string())? {
                SendStep::Frame { len, .. } => {
                    lens[n] = len;
                    n += 1;
                }
                SendStep::Wait { .. } if tx.position() >= slices => break,
                SendStep::Wait { until } => now = until,
                SendStep::Done => break,
            }
        }
        let t1 = cpu()?;
        for (buf, len) in bufs.iter().zip(&lens).take(n) {
            for rx in &mut rxs {
                let frame =
                    Frame::decode(&buf[..*len], link.ethertype).map_err(|e| e.to_string())?;
                let view = DataView::from_frame(&frame).map_err(|e| e.to_string())?;
                rx.on_data(&view, now).map_err(|e| e.to_string())?;
            }
        }
        for rx in &mut rxs {
            rx.poll(now, &mut msgs);
            msgs.clear();
        }
        let t2 = cpu()?;
        sender += t1 - t0;
        receivers += t2 - t1;
        if n == 0 {
            break;
        }
    }
    if rxs.iter().any(|rx| rx.state() != ReceiverState::Complete) {
        return Err("bench: a receiver did not complete".to_owned());
    }
    Ok((sender, receivers))
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
    println!(
        "artifact {} MiB, {} cards, loss {}, MTU {} (block {block_size})",
        args.mib, args.cards, args.loss, args.mtu
    );
    let received = size as u64 * args.cards as u64;
    match engine_cpu(&artifact, args.cards, link, block_size) {
        Ok((sender, receivers)) => {
            println!(
                "engine CPU (thread on-CPU time): sender {:.3} s = {:.3} s/GB sent; receivers {:.3} s = {:.3} s/GB per card",
                sender.as_secs_f64(),
                per_gb(sender, size as u64),
                receivers.as_secs_f64(),
                per_gb(receivers, received)
            );
            println!(
                "  at 122 MB/s that is {:.1} % of a core for the sender and {:.1} % per card",
                per_gb(sender, size as u64) * 12.2,
                per_gb(receivers, received) * 12.2
            );
        }
        Err(e) => {
            eprintln!("simulate: {e}");
            return ExitCode::FAILURE;
        }
    }
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
    let cpu_before = process_cpu();
    let wall = Instant::now();
    let report = match Sim::new(cfg, artifact, cards).run() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("simulate: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let wall = wall.elapsed();
    let cpu_total = process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let sent = report.sender.data_bytes + report.sender.retransmit_bytes;
    let high_water = report
        .cards
        .iter()
        .map(|c| c.buffered_high_water)
        .max()
        .unwrap_or(0);
    println!(
        "simulation: all complete and verified: {}; sessions {}; simulated time {:.3} s ({:.1} MB/s per card)",
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
    if let Some(cpu) = cpu_total {
        println!(
            "simulation process CPU {:.3} s = {:.3} s per GB received by all cards (engine + channel, upper bound)",
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
