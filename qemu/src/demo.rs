//! `shelfboot-lab demo`: a small shelf (default 3 cards, 2 card types) boots the lab
//! release from erased flash with live per-card progress, then one warm power cycle of
//! the whole shelf, and a closing table. Ctrl-C (SIGINT) or SIGTERM at any point stops
//! the master and drops the shelf: QEMUs killed, namespace, bridge and taps removed.
//!
//! Signals are taken through a signalfd (blocked in every thread, read between display
//! refreshes), so no handler code runs asynchronously. Not here: assertions (the QEMU
//! scenario test `qemu/tests/e2e.rs` checks the same path).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use shelfboot_proto::id::Arch;
use shelfboot_qemu::scenario::{self, Stage, card_type, stage_of};
use shelfboot_qemu::shelf::Shelf;

/// Per-card result of one phase.
#[derive(Debug, Clone)]
struct PhaseResult {
    to_ready: Option<Duration>,
    packages: String,
    fetched: u64,
}

struct Interrupt(SignalFd);

impl Interrupt {
    /// Blocks SIGINT/SIGTERM in this thread (and in every thread it starts later) and
    /// opens a non-blocking signalfd for them.
    fn install() -> Result<Self> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block().context("cannot block SIGINT/SIGTERM")?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("cannot open a signalfd")?;
        Ok(Self(fd))
    }

    fn fired(&mut self) -> bool {
        matches!(self.0.read_signal(), Ok(Some(_)))
    }
}

/// Watches the shelf until every card is Ready, printing each change of stage.
fn watch(
    shelf: &mut Shelf,
    phase: &str,
    started: Instant,
    timeout: Duration,
    intr: &mut Interrupt,
    out: &mut dyn Write,
) -> Result<Vec<PhaseResult>> {
    let n = shelf.cards().len();
    let mut last: Vec<Option<Stage>> = vec![None; n];
    let mut res: Vec<PhaseResult> = vec![
        PhaseResult {
            to_ready: None,
            packages: String::new(),
            fetched: 0,
        };
        n
    ];
    loop {
        if intr.fired() {
            bail!("interrupted: stopping the master and tearing the shelf down");
        }
        for (i, card) in shelf.cards().iter_mut().enumerate() {
            let text = card.console();
            let st = stage_of(&text);
            if last[i].as_ref() != Some(&st) {
                writeln!(
                    out,
                    "[{phase} {:6.1} s] card{i} {:<6} {:<7} {st}",
                    started.elapsed().as_secs_f64(),
                    card_type(i),
                    card.config().arch.to_string()
                )?;
                if let Stage::Ready(p) = &st {
                    res[i].to_ready = Some(started.elapsed());
                    res[i].packages.clone_from(p);
                    res[i].fetched = scenario::bytes_to_fetch(&text);
                }
                last[i] = Some(st);
            }
            if !card.is_running() {
                bail!(
                    "card{i} stopped (QEMU exited); console in {}",
                    card.config().console_log().display()
                );
            }
        }
        if res.iter().all(|r| r.to_ready.is_some()) {
            return Ok(res);
        }
        if started.elapsed() > timeout {
            bail!(
                "not every card was Ready after {} s; consoles in {}",
                timeout.as_secs(),
                shelf
                    .cards()
                    .first()
                    .map(|c| c.config().log_dir.display().to_string())
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs the demo with `n` cards of the architectures `arches` (in turn), work files
/// under `work` (removed at the end).
pub fn run(n: usize, arches: &[Arch], work: &Path, out: &mut dyn Write) -> Result<()> {
    let mut intr = Interrupt::install()?;
    let t0 = Instant::now();
    writeln!(
        out,
        "shelfboot demo: {n} cards, types {:?}, architectures {}",
        scenario::TYPES,
        arches
            .iter()
            .map(Arch::to_string)
            .collect::<Vec<_>>()
            .join(" and ")
    )?;
    let builds = arches
        .iter()
        .map(|&a| scenario::arch_build(a))
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    let lab = scenario::prepare(&builds, work)?;
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    writeln!(
        out,
        "release lab-os 1.0.0 built and imported in {:.1} s ({} artifacts); consoles in {}",
        t0.elapsed().as_secs_f64(),
        lab.release.sizes.len(),
        logs.display()
    )?;
    let mut cfgs = Vec::with_capacity(n);
    for i in 0..n {
        cfgs.push(scenario::card_config(&lab, i, &logs)?);
    }
    let t1 = Instant::now();
    let mut shelf = Shelf::start(n, |i| cfgs[i].clone())?;
    let stop = Arc::new(AtomicBool::new(false));
    let master = scenario::spawn_master(shelf.backplane(), &lab.state, stop.clone())?;
    let timeout = Duration::from_secs(150 + 30 * n as u64);
    let result = (|| -> Result<_> {
        writeln!(out, "\n== pristine boot (erased flash)")?;
        let cold = watch(&mut shelf, "pristine", t1, timeout, &mut intr, out)?;
        writeln!(out, "\n== warm boot (power cycle of the whole shelf)")?;
        let t2 = Instant::now();
        shelf.power_cycle_all()?;
        let warm = watch(&mut shelf, "warm", t2, timeout, &mut intr, out)?;
        Ok((cold, warm))
    })();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let stats = master.join();
    drop(shelf);
    let (cold, warm) = result?;
    let stats = match stats {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            writeln!(out, "master serve failed: {e}")?;
            None
        }
        Err(_) => None,
    };
    writeln!(
        out,
        "\n{:<6} {:<6} {:<7} {:<44} {:>12} {:>10} {:>10}",
        "card", "type", "arch", "versions", "fetched B", "pristine", "warm"
    )?;
    for i in 0..n {
        let c = &cold[i];
        let w = &warm[i];
        writeln!(
            out,
            "{:<6} {:<6} {:<7} {:<44} {:>12} {:>9.1}s {:>9.1}s   (warm fetched {} B)",
            format!("card{i}"),
            card_type(i),
            lab.card_arch(i).to_string(),
            w.packages,
            c.fetched,
            c.to_ready.unwrap_or_default().as_secs_f64(),
            w.to_ready.unwrap_or_default().as_secs_f64(),
            w.fetched
        )?;
    }
    if let Some(s) = stats {
        writeln!(
            out,
            "\nmaster: {} artifact bytes sent in all, {} Fetch and {} Continue plans, {} Ready messages",
            s.artifact_bytes, s.plans_fetch, s.plans_continue, s.ready
        )?;
    }
    writeln!(out, "demo done in {:.1} s", t0.elapsed().as_secs_f64())?;
    Ok(())
}
