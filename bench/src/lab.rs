//! The benchmark's QEMU scenarios (flash write speed and the boot path), on the QEMU lab
//! (`shelfboot_qemu`: the Debian kernel, TCG, docs/lab.md):
//!
//! 6. **flash**: one boot of `shelfboot-flash-bench` (init's flow with a provisioner that
//!    times writes, `init/src/bin/lab_flash_bench.rs`) on a 128 MiB nandsim: init's UBI
//!    writer and mtd-utils `ubiupdatevol` write the same file into fresh static volumes,
//!    `flash_rounds` rounds, alternating which goes first, then card's full
//!    `Store::stage` once; the ratio ubiupdatevol time ÷ writer time (= writer speed ÷
//!    ubiupdatevol speed) is taken per round.
//! 7. **boot path**: one card of the lab release (`scenario::prepare`, block2mtd flash,
//!    `master serve` on the backplane): pristine (erased flash) to Ready, then a power
//!    cycle to Ready (validation only), per run; and from init's console stamps
//!    (`starting as PID 1 (monotonic T)`, `first Solicit sent (monotonic T)`, CLOCK_MONOTONIC
//!    of the guest) the time from /init starting to the first Solicit of each boot.
//!
//! The guest binaries are built with cargo (static, musl, `init-release`) unless
//! `SHELFBOOT_INIT_BIN` / `SHELFBOOT_FLASH_BENCH_BIN` name them. This module reports
//! what it measured (and failures as row statuses); it asserts nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shelfboot_mkinitramfs::build::{self, BuildSpec, ModuleSpec};
use shelfboot_mkinitramfs::compress::Compression;
use shelfboot_qemu::card::{Card, CardConfig};
use shelfboot_qemu::flash::Nandsim;
use shelfboot_qemu::kernel::{self, Kernel};
use shelfboot_qemu::shelf::Shelf;
use shelfboot_qemu::{hostbin, release, scenario};

use crate::report::{Fig, Row};

/// Where `ubiupdatevol` is on the host (Debian's mtd-utils) and in the guest.
pub const UBIUPDATEVOL: &str = "/usr/sbin/ubiupdatevol";

/// What the QEMU scenarios run.
#[derive(Debug, Clone)]
pub struct LabPlan {
    /// Boot path: full QEMU runs.
    pub runs: usize,
    /// Flash: rounds of writer + ubiupdatevol inside one boot (stage runs once).
    pub flash_rounds: usize,
    /// Size of the file the flash scenario writes, bytes.
    pub flash_bytes: u64,
    /// Scratch directory.
    pub work: PathBuf,
}

/// A failed QEMU scenario step.
#[derive(Debug, thiserror::Error)]
#[error("QEMU scenario step failed: {step}")]
pub struct LabError {
    /// What was being done.
    pub step: String,
    /// The cause.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

fn step<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> LabError {
    let step = what.into();
    move |e| LabError {
        step,
        source: e.into(),
    }
}

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// The flash-bench guest PID 1: `SHELFBOOT_FLASH_BENCH_BIN`, else built with cargo.
pub fn flash_bench_binary() -> Result<PathBuf, LabError> {
    if let Ok(p) = std::env::var("SHELFBOOT_FLASH_BENCH_BIN") {
        return Ok(p.into());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = std::process::Command::new(&cargo)
        .args([
            "build",
            "-q",
            "-p",
            "shelfboot-init",
            "--features",
            "lab",
            "--bin",
            "shelfboot-flash-bench",
            "--profile",
            "init-release",
            "--target",
            "x86_64-unknown-linux-musl",
        ])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .status()
        .map_err(step(format!(
            "run `{cargo} build -p shelfboot-init --features lab` (is cargo on PATH under sudo?)"
        )))?;
    if !st.success() {
        return Err(step("build shelfboot-flash-bench (musl, init-release)")(
            format!("cargo exited with {st}"),
        ));
    }
    Ok(target_dir().join("x86_64-unknown-linux-musl/init-release/shelfboot-flash-bench"))
}

/// `(method, seconds)` of every `FLASHBENCH <method> run <k> bytes <n> secs <s>` line,
/// with the round number.
pub fn parse_flash(console: &str) -> Vec<(String, usize, f64)> {
    let mut out = Vec::new();
    for l in console.lines() {
        let Some(rest) = l.split("FLASHBENCH ").nth(1) else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        if let [m, "run", k, "bytes", _, "secs", s, ..] = w.as_slice()
            && let (Ok(k), Ok(s)) = (k.parse(), s.parse())
        {
            out.push(((*m).to_owned(), k, s));
        }
    }
    out
}

/// init's `boot timing:` summary lines (one per init that reached its first Solicit,
/// in console order) as `(name, seconds)` pairs: each step (`modules`, `link`,
/// `flash attach`, `inventory`, ...), then `first Solicit`, `kernel to /init` and, when
/// printed, `init CPU user` / `init CPU system`: init's own parser
/// (`shelfboot_init::boottime::parse_summary`), in seconds.
pub fn parse_step_timings(console: &str) -> Vec<Vec<(String, f64)>> {
    console
        .lines()
        .filter_map(shelfboot_init::boottime::parse_summary)
        .map(|steps| {
            steps
                .into_iter()
                .map(|(name, ms)| (name, ms as f64 / 1e3))
                .collect()
        })
        .collect()
}

/// Adds the first init's step timings of each console as `step_<name>_s` extras.
fn step_extras(row: &mut Row, consoles: &[Vec<(String, f64)>]) {
    let mut by: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for steps in consoles {
        for (name, secs) in steps {
            by.entry(format!(
                "step_{}_s",
                name.replace('/', "").replace(' ', "_")
            ))
            .or_default()
            .push(*secs);
        }
    }
    for (k, v) in by {
        if let Some(f) = Fig::of(&v) {
            row.extra.insert(k, f);
        }
    }
}

/// Guest CLOCK_MONOTONIC stamps `(init start, first Solicit)` of each boot in a console
/// (a stamp pair per init that reached its first Solicit; kexec'd stages included).
pub fn parse_stamps(console: &str) -> Vec<(f64, f64)> {
    let stamp = |l: &str, key: &str| -> Option<f64> {
        let rest = l.split(key).nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    };
    let mut out = Vec::new();
    let mut start = None;
    for l in console.lines() {
        if l.contains("starting as PID 1") {
            start = stamp(l, "(monotonic ");
        } else if l.contains("agent: first Solicit sent")
            && let (Some(s), Some(f)) = (start.take(), stamp(l, "(monotonic "))
        {
            out.push((s, f));
        }
    }
    out
}

/// Item 6: init's UBI writer vs `ubiupdatevol` on nandsim, one boot.
pub fn flash(p: &LabPlan, k: &Kernel, rows: &mut Vec<Row>) -> Result<(), LabError> {
    let dir = p.work.join("flash");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(step(format!("create {}", dir.display())))?;
    let bin = flash_bench_binary()?;
    let data = dir.join("data");
    crate::scenarios::write_artifact(&data, p.flash_bytes, 13)
        .map_err(step(format!("write {}", data.display())))?;
    let sha =
        crate::shelfboot::file_sha(&data).map_err(step(format!("hash {}", data.display())))?;
    let sha_file = dir.join("data.sha256");
    std::fs::write(&sha_file, &sha).map_err(step(format!("write {}", sha_file.display())))?;
    let nand = Nandsim::default();
    let mut add = vec![
        (data.clone(), "/lab/flashbench/data".to_owned()),
        (sha_file, "/lab/flashbench/data.sha256".to_owned()),
    ];
    add.extend(
        hostbin::with_libraries(Path::new(UBIUPDATEVOL)).map_err(step(format!(
            "find {UBIUPDATEVOL} and its libraries (apt-get install mtd-utils)"
        )))?,
    );
    let spec = BuildSpec {
        init: Some(bin),
        modules: Some(ModuleSpec {
            root: k.root.clone(),
            kver: k.version.clone(),
            wanted: vec![
                ("nandsim".into(), nand.params()),
                ("ubi".into(), String::new()),
            ],
        }),
        add,
        // The data is incompressible and TCG pays for in-guest decompression.
        compression: Compression::None,
        ..BuildSpec::default()
    };
    let built = build::build(&spec).map_err(step("build the flash-bench initramfs"))?;
    let initramfs = dir.join("initramfs.cpio");
    std::fs::write(&initramfs, &built.archive)
        .map_err(step(format!("write {}", initramfs.display())))?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(step(format!("create {}", logs.display())))?;
    let mut cfg = CardConfig::new("flashbench", &k.qemu_kernel, &initramfs, &logs);
    // nandsim keeps its data in guest RAM; the initramfs holds the file (twice while
    // unpacking).
    cfg.memory_mib = nand.memory_mib() + 2 * u32::try_from(p.flash_bytes >> 20).unwrap_or(0) + 64;
    cfg.append = format!("quiet flashbench.runs={}", p.flash_rounds);
    let timeout =
        Duration::from_secs(180 + 30 * (p.flash_rounds as u64 + 2) * (p.flash_bytes >> 24).max(1));
    let mut card = Card::start(cfg).map_err(step("start the flash-bench QEMU card"))?;
    let done = card.wait_for("FLASHBENCH done", timeout);
    let console = card.console();
    let _ = card.wait_exit(Duration::from_secs(20));
    drop(card);
    let res = parse_flash(&console);
    let failed: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("FLASHBENCH") && l.contains("FAILED"))
        .collect();
    if let Err(e) = done
        && res.is_empty()
    {
        return Err(step("flash-bench guest did not finish")(e));
    }
    let secs = |m: &str| -> Vec<(usize, f64)> {
        res.iter()
            .filter(|(x, _, _)| x == m)
            .map(|(_, k, s)| (*k, *s))
            .collect()
    };
    let (w, u, s) = (secs("writer"), secs("ubiupdatevol"), secs("stage"));
    let ratio: Vec<f64> = w
        .iter()
        .filter_map(|(k, ws)| Some(u.iter().find(|(j, _)| j == k)?.1 / ws))
        .collect();
    let mb = p.flash_bytes as f64 / 1e6;
    let status = if failed.is_empty() {
        "ok".to_owned()
    } else {
        format!("failed: {}", failed.join(" | "))
    };
    for (name, v) in [
        ("init writer", &w),
        ("ubiupdatevol", &u),
        ("init store stage", &s),
    ] {
        let t: Vec<f64> = v.iter().map(|(_, s)| *s).collect();
        let mut r = Row {
            scenario: format!("flash, {} MiB on nandsim", p.flash_bytes >> 20),
            link: "qemu-tcg".into(),
            peer: name.into(),
            cards: 1,
            runs: if name == "init store stage" {
                1
            } else {
                p.flash_rounds
            },
            runs_ok: t.len(),
            status: status.clone(),
            time_s: Fig::of(&t),
            ..Row::default()
        };
        let rate: Vec<f64> = t.iter().map(|s| mb / s).collect();
        if let Some(f) = Fig::of(&rate) {
            r.extra.insert("write_MB_per_s".into(), f);
        }
        if name == "init writer"
            && let Some(f) = Fig::of(&ratio)
        {
            r.extra
                .insert("ubiupdatevol_time_over_writer_time".into(), f);
        }
        rows.push(r);
    }
    eprintln!(
        "flash: {} results, initramfs {} bytes, console {}",
        res.len(),
        built.archive.len(),
        logs.join("flashbench.console.log").display()
    );
    Ok(())
}

/// Item 7: one card, pristine to Ready and warm (power cycle) to Ready, `runs` times;
/// /init start to first Solicit from the console stamps of every boot.
pub fn boot_path(p: &LabPlan, k: &Kernel, rows: &mut Vec<Row>) -> Result<(), LabError> {
    let dir = p.work.join("boot");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(step(format!("create {}", dir.display())))?;
    let init = scenario::init_binary().map_err(step("get the static init"))?;
    let build = shelfboot_qemu::release::ArchBuild {
        kernel: k.clone(),
        init,
        busybox: "/bin/busybox".into(),
    };
    let lab = scenario::prepare(&[build], &dir).map_err(step("prepare the lab release"))?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(step(format!("create {}", logs.display())))?;
    let (mut pristine, mut warm, mut first_pristine, mut first_warm, mut kernel_to_init) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut steps_pristine, mut steps_warm) = (vec![], vec![]);
    let mut problems = Vec::new();
    for run in 0..p.runs {
        eprintln!("boot path, run {}/{}", run + 1, p.runs);
        let _ = std::fs::remove_file(lab.dir.join("flash-0.img"));
        match boot_run(&lab, &logs, run) {
            Ok(r) => {
                pristine.push(r.pristine_s);
                warm.push(r.warm_s);
                if let Some((s, f)) = r.pristine_stamps.first() {
                    first_pristine.push(f - s);
                    kernel_to_init.push(*s);
                }
                if let Some((s, f)) = r.warm_stamps.first() {
                    first_warm.push(f - s);
                    kernel_to_init.push(*s);
                }
                steps_pristine.extend(r.pristine_steps.into_iter().next());
                steps_warm.extend(r.warm_steps.into_iter().next());
                if r.warm_artifact_bytes != 0 {
                    problems.push(format!(
                        "run {run}: warm boot moved {} artifact bytes",
                        r.warm_artifact_bytes
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "run {run}: {}",
                shelfboot_proto::report::error_chain(&e)
            )),
        }
    }
    let status = if problems.is_empty() {
        "ok".to_owned()
    } else {
        problems.join("; ")
    };
    let row = |peer: &str, t: &[f64]| Row {
        scenario: "boot path, 1 QEMU card".into(),
        link: "qemu-tcg".into(),
        peer: peer.into(),
        cards: 1,
        runs: p.runs,
        runs_ok: t.len(),
        status: status.clone(),
        time_s: Fig::of(t),
        ..Row::default()
    };
    rows.push(row("pristine to Ready", &pristine));
    rows.push(row("warm to Ready", &warm));
    let mut first = row("/init to first Solicit (pristine boot)", &first_pristine);
    if let Some(f) = Fig::of(&kernel_to_init) {
        first.extra.insert("kernel_start_to_init_s".into(), f);
    }
    step_extras(&mut first, &steps_pristine);
    rows.push(first);
    let mut first = row("/init to first Solicit (warm boot)", &first_warm);
    step_extras(&mut first, &steps_warm);
    rows.push(first);
    Ok(())
}

struct BootRun {
    pristine_s: f64,
    warm_s: f64,
    pristine_stamps: Vec<(f64, f64)>,
    warm_stamps: Vec<(f64, f64)>,
    pristine_steps: Vec<Vec<(String, f64)>>,
    warm_steps: Vec<Vec<(String, f64)>>,
    warm_artifact_bytes: u64,
}

fn boot_run(lab: &scenario::Lab, logs: &Path, run: usize) -> Result<BootRun, LabError> {
    let run_logs = logs.join(format!("run{run}"));
    std::fs::create_dir_all(&run_logs).map_err(step(format!("create {}", run_logs.display())))?;
    let configure = |i: usize| scenario::card_config(lab, i, &run_logs);
    let cfg = configure(0).map_err(step("configure the card"))?;
    let mut shelf = Shelf::start(1, |_| cfg.clone()).map_err(step("start the shelf"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let master = scenario::spawn_master(shelf.backplane(), &lab.state, stop.clone())
        .map_err(step("start master serve"))?;
    let ready = shelf.wait_all(release::READY_LINE, Duration::from_secs(300));
    let pristine_console = shelf.card(0).map(|c| c.console()).unwrap_or_default();
    let stop_master = |stop: &AtomicBool, m: std::thread::JoinHandle<_>| {
        stop.store(true, Ordering::Relaxed);
        m.join()
    };
    let ready = match ready {
        Ok(r) => r,
        Err(e) => {
            let _ = stop_master(&stop, master);
            return Err(step("pristine boot to Ready")(e));
        }
    };
    let pristine_s = ready.first().map_or(f64::NAN, |m| m.elapsed.as_secs_f64());
    // The stored image repeats Ready until the master has it; let it land.
    std::thread::sleep(Duration::from_secs(2));
    let _ = stop_master(&stop, master);
    let stop = Arc::new(AtomicBool::new(false));
    let master = scenario::spawn_master(shelf.backplane(), &lab.state, stop.clone())
        .map_err(step("start master serve again"))?;
    let warm = shelf
        .power_cycle_all()
        .map_err(step("power-cycle the card"))
        .and_then(|()| {
            shelf
                .wait_all(release::READY_LINE, Duration::from_secs(200))
                .map_err(step("warm boot to Ready"))
        });
    let warm_console = shelf.card(0).map(|c| c.console()).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(500));
    let stats = stop_master(&stop, master);
    let warm = warm?;
    let warm_artifact_bytes = match stats {
        Ok(Ok(s)) => s.artifact_bytes,
        Ok(Err(e)) => return Err(step("master serve (warm boot)")(e)),
        Err(_) => {
            return Err(step("master serve (warm boot)")(
                "the serve thread panicked",
            ));
        }
    };
    drop(shelf);
    Ok(BootRun {
        pristine_s,
        warm_s: warm.first().map_or(f64::NAN, |m| m.elapsed.as_secs_f64()),
        pristine_stamps: parse_stamps(&pristine_console),
        warm_stamps: parse_stamps(&warm_console),
        pristine_steps: parse_step_timings(&pristine_console),
        warm_steps: parse_step_timings(&warm_console),
        warm_artifact_bytes,
    })
}

/// The kernel from the lab cache (acquired on first use).
pub fn lab_kernel() -> Result<Kernel, LabError> {
    kernel::acquire(&kernel::cache_dir(), false).map_err(step("acquire the Debian kernel"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_lines_parse() {
        let c = "shelfboot-init: INFO  FLASHBENCH start bytes 10 chunk 65536 runs 2\n\
                 shelfboot-init: INFO  FLASHBENCH writer run 0 bytes 10 secs 1.500000\n\
                 shelfboot-init: INFO  FLASHBENCH ubiupdatevol run 0 bytes 10 secs 1.2\n\
                 shelfboot-init: ERROR FLASHBENCH stage run 0 FAILED no space\n";
        assert_eq!(
            parse_flash(c),
            vec![
                ("writer".to_owned(), 0, 1.5),
                ("ubiupdatevol".to_owned(), 0, 1.2)
            ]
        );
    }

    #[test]
    fn step_timing_lines_parse_and_become_extras() {
        let c = "shelfboot-init: INFO  boot timing: mounts 17 ms, entropy 1488 ms (parallel), \
                 modules 1879 ms (parallel), flash attach 279 ms; first Solicit at 2597 ms after \
                 /init; kernel start to /init 5394 ms; init CPU user 150 ms, system 2100 ms\n\
                 shelfboot-init: INFO  boot timing: modules 700 ms; first Solicit at 900 ms after \
                 /init; kernel start to /init 5000 ms\n\
                 shelfboot-init: INFO  boot timing: garbage\n";
        let t = parse_step_timings(c);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0][0], ("mounts".to_owned(), 0.017));
        assert_eq!(t[0][3], ("flash attach".to_owned(), 0.279));
        assert_eq!(t[0][4], ("first Solicit".to_owned(), 2.597));
        assert_eq!(t[0][7], ("init CPU system".to_owned(), 2.1));
        assert_eq!(t[1].len(), 3);
        let mut row = Row::default();
        step_extras(&mut row, &t);
        assert_eq!(row.extra["step_modules_s"].n, 2);
        assert!((row.extra["step_modules_s"].median - 1.2895).abs() < 1e-9);
        assert_eq!(row.extra["step_kernel_to_init_s"].n, 2);
        assert_eq!(row.extra["step_flash_attach_s"].n, 1);
    }

    #[test]
    fn stamps_pair_each_init_with_its_first_solicit() {
        let c = "shelfboot-init: INFO  shelfboot-init 0.1.0 starting as PID 1 (monotonic 1.250000 s)\n\
                 shelfboot-init: INFO  agent: first Solicit sent (monotonic 1.400000 s)\n\
                 [    5.0] kexec\n\
                 shelfboot-init: INFO  shelfboot-init 0.1.0 starting as PID 1 (monotonic 1.100000 s)\n\
                 shelfboot-init: INFO  shelfboot-init 0.1.0 starting as PID 1 (monotonic 0.900000 s)\n\
                 shelfboot-init: INFO  agent: first Solicit sent (monotonic 1.000000 s)\n";
        let s = parse_stamps(c);
        assert_eq!(s.len(), 2);
        assert!((s[0].1 - s[0].0 - 0.15).abs() < 1e-9);
        assert!((s[1].0 - 0.9).abs() < 1e-9);
    }
}
