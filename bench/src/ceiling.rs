//! The raw AF_PACKET ceiling as a library call: in a [`Lab`] whose port 0 sends and
//! ports 1..=R receive, blast N max-size frames to a multicast group every receiver has
//! joined, with one I/O path on both ends, and report times, losses and CPU.
//!
//! The same measurement as the `netio-ceiling` binary (which prints tables); this module
//! exists so that the benchmark command (`shelfboot-bench`) can put the ceiling next to
//! the peers in one run. It is a measurement, not a protocol: no acknowledgements, no
//! retransmission, no pacing beyond what the socket buffer and a tbf impose. Needs root.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use shelfboot_netio::{MacAddr, PacketSocket, Path, PathChoice, SocketConfig};
use shelfboot_testkit::netns::Lab;

/// The group every receiver joins.
pub const GROUP: MacAddr = MacAddr([0x03, 0x5b, 0, 0, 0, 0x01]);
/// Whole frame bytes (MTU 1500 + Ethernet header).
pub const FRAME_LEN: usize = 1514;

/// One ceiling run's settings.
#[derive(Debug, Clone, Copy)]
pub struct CeilingRun {
    /// Receiving ports 1..=receivers of the lab.
    pub receivers: usize,
    /// Frames the sender blasts.
    pub frames: u32,
    /// I/O path on both ends.
    pub path: Path,
    /// Qdisc bypass off (so a tbf on port 0 applies) when true; on when false.
    pub shaped: bool,
    /// Frames per `send_batch`.
    pub batch: usize,
}

/// One run's numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct CeilingSample {
    /// Sender: first frame to flush done.
    pub send_secs: f64,
    /// Slowest receiver: seconds from the sender's start to its last frame.
    pub last_rx_secs: f64,
    /// Distinct frames received, summed over receivers.
    pub received: u64,
    /// `PACKET_STATISTICS` drops, summed over receivers.
    pub kernel_drops: u64,
    /// CPU seconds of the sender and all receiver threads.
    pub cpu_secs: f64,
}

/// Why a ceiling run failed.
#[derive(Debug, thiserror::Error)]
pub enum CeilingError {
    #[error("ceiling run with {receivers} receivers on the {path} path failed: {detail}")]
    Run {
        receivers: usize,
        path: &'static str,
        detail: String,
    },
}

#[derive(Debug, Default)]
struct RxResult {
    unique: u64,
    last: Option<Instant>,
    kernel_drops: u64,
    cpu_secs: f64,
}

/// CPU time the calling thread has used, in seconds.
fn thread_cpu() -> f64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

fn frame(seq: u32, src: MacAddr) -> Vec<u8> {
    let mut f = vec![0u8; FRAME_LEN];
    f[..6].copy_from_slice(&GROUP.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

fn receive(
    lab: &Lab,
    port: usize,
    cfg: SocketConfig,
    n: u32,
    barrier: &Barrier,
    done: &AtomicBool,
) -> Result<RxResult, String> {
    let ready = lab.enter().map_err(|e| e.to_string());
    let sock = ready.and_then(|()| {
        let mut sock = PacketSocket::open(&lab.port(port), cfg).map_err(|e| e.to_string())?;
        sock.join(GROUP).map_err(|e| e.to_string())?;
        Ok(sock)
    });
    barrier.wait();
    let cpu0 = thread_cpu();
    let mut sock = sock?;
    let mut seen = vec![false; n as usize];
    let mut out = RxResult::default();
    let hard_end = Instant::now() + Duration::from_secs(120);
    let mut idle_since = Instant::now();
    while out.unique < u64::from(n) && Instant::now() < hard_end {
        let got = sock
            .recv_batch(
                &mut |f: &[u8], _| {
                    let seq = f
                        .get(14..18)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    if let Some(slot) = seq.and_then(|q| seen.get_mut(q as usize))
                        && !*slot
                    {
                        *slot = true;
                        out.unique += 1;
                    }
                },
                Duration::from_millis(20),
            )
            .map_err(|e| e.to_string())?;
        if got > 0 {
            out.last = Some(Instant::now());
            idle_since = Instant::now();
        } else if done.load(Ordering::Acquire) && idle_since.elapsed() > Duration::from_millis(300)
        {
            break;
        }
    }
    out.kernel_drops = sock.stats().map_err(|e| e.to_string())?.kernel_drops;
    out.cpu_secs = thread_cpu() - cpu0;
    Ok(out)
}

/// Runs one ceiling measurement in `lab` (which needs at least `receivers + 1` ports;
/// shape port 0 beforehand for a shaped run). Bounded: receivers give up 120 s after
/// the start or 300 ms after the sender finished and nothing arrives.
pub fn run(lab: &Lab, run: CeilingRun) -> Result<CeilingSample, CeilingError> {
    let fail = |detail: String| CeilingError::Run {
        receivers: run.receivers,
        path: run.path.name(),
        detail,
    };
    let n = run.frames;
    let cfg = SocketConfig {
        tx: PathChoice::Force(run.path),
        rx: PathChoice::Force(run.path),
        qdisc_bypass: !run.shaped,
        batch: run.batch,
        send_timeout: Duration::from_secs(5),
        ..SocketConfig::default()
    };
    let barrier = Barrier::new(run.receivers + 1);
    let sender_done = AtomicBool::new(false);
    let start: Mutex<Option<Instant>> = Mutex::new(None);
    let results: Mutex<Vec<Result<RxResult, String>>> = Mutex::new(Vec::new());
    let mut send_result: Result<(f64, f64), String> = Err("sender did not run".into());
    std::thread::scope(|s| {
        for r in 0..run.receivers {
            let (cfg, barrier, done, results) = (cfg.clone(), &barrier, &sender_done, &results);
            s.spawn(move || {
                let res = receive(lab, r + 1, cfg, n, barrier, done);
                if let Ok(mut v) = results.lock() {
                    v.push(res);
                }
            });
        }
        let (barrier, done, start) = (&barrier, &sender_done, &start);
        let sender = s.spawn(move || -> Result<(f64, f64), String> {
            let ready = lab.enter().map_err(|e| e.to_string());
            let sock = ready
                .and_then(|()| PacketSocket::open(&lab.port(0), cfg).map_err(|e| e.to_string()));
            let frames: Vec<Vec<u8>> = match &sock {
                Ok(s) => (0..n).map(|q| frame(q, s.mac())).collect(),
                Err(_) => Vec::new(),
            };
            barrier.wait();
            let cpu0 = thread_cpu();
            let mut sock = sock.inspect_err(|_| done.store(true, Ordering::Release))?;
            std::thread::sleep(Duration::from_millis(50));
            let t0 = Instant::now();
            if let Ok(mut s) = start.lock() {
                *s = Some(t0);
            }
            let mut sent = 0usize;
            let result = (|| {
                for chunk in frames.chunks(run.batch.max(1)) {
                    let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                    let k = sock.send_batch(&refs).map_err(|e| e.to_string())?;
                    sent += k;
                    if k < refs.len() {
                        return Err(format!("sender stalled after {sent} frames"));
                    }
                }
                sock.flush().map_err(|e| e.to_string())
            })();
            let secs = t0.elapsed().as_secs_f64();
            done.store(true, Ordering::Release);
            result.map(|()| (secs, thread_cpu() - cpu0))
        });
        send_result = sender
            .join()
            .unwrap_or_else(|_| Err("sender panicked".into()));
    });
    let (send_secs, send_cpu) = send_result.map_err(fail)?;
    let t0 = start
        .lock()
        .ok()
        .and_then(|s| *s)
        .ok_or_else(|| fail("no start time".into()))?;
    let mut sample = CeilingSample {
        send_secs,
        cpu_secs: send_cpu,
        ..CeilingSample::default()
    };
    let results = std::mem::take(
        &mut *results
            .lock()
            .map_err(|_| fail("receiver lock poisoned".into()))?,
    );
    for r in results {
        let r = r.map_err(fail)?;
        sample.received += r.unique;
        sample.kernel_drops += r.kernel_drops;
        sample.cpu_secs += r.cpu_secs;
        let last = r
            .last
            .map_or(0.0, |l| l.saturating_duration_since(t0).as_secs_f64());
        sample.last_rx_secs = sample.last_rx_secs.max(last);
    }
    Ok(sample)
}
