//! `shelfboot-flash-bench` (feature `lab`): a QEMU-lab PID 1 that times init's UBI writer
//! against mtd-utils' `ubiupdatevol` writing the same file into the same kind of volume on
//! the same flash, inside one boot (driven by shelfboot-bench's `flash`
//! scenario, docs/benchmarks.md). It is never shipped and never talks to the network.
//!
//! It runs init's own flow (mounts, load.list modules, UBI attach of mtd0, card's Store
//! over [`UbiVolumes`]) with a provisioner that, instead of provisioning, does `runs`
//! rounds of `writer` and `ubiupdatevol` (alternating which goes first), then one
//! `stage`:
//!
//! - `writer`: `UbiVolumes::update` + `UbiWriter::write` in `chunk`-byte pieces + `finish`
//!   (the product's write path, without hashing);
//! - `ubiupdatevol`: `/usr/sbin/ubiupdatevol /dev/ubi0_N FILE` (process start included);
//! - `stage`: card's `Store::begin` + `stage` (sha256 while writing, then the read-back
//!   re-hash the store does by default) + `abort`: what a card really pays per artifact.
//!
//! Each timed write goes to a fresh static volume created (untimed) just before and
//! removed just after; before each, a `sync` and a 500 ms pause let UBI's background
//! erasure of the previous volume settle, so that no method pays for another's. Results are log lines (console)
//! `FLASHBENCH <method> run <k> bytes <n> secs <s>`, then `FLASHBENCH done`, then the
//! card powers off. Input: `/lab/flashbench/data` and its sha256 (hex) in
//! `/lab/flashbench/data.sha256`; `flashbench.runs=N` and `flashbench.chunk=BYTES` on
//! the kernel command line (defaults 3 and 65536).

use std::io::Read as _;
use std::path::Path;
use std::time::Instant;

use shelfboot_card::flash::artifact::{ArtifactKind, ArtifactRef, Digest};
use shelfboot_card::flash::{Store, VolumeWriter as _, Volumes as _};
use shelfboot_init::flash::UbiVolumes;
use shelfboot_init::flow::{ProvisionError, Provisioned, Provisioner, Session};

const DATA: &str = "/lab/flashbench/data";
const DATA_SHA: &str = "/lab/flashbench/data.sha256";
const UBIUPDATEVOL: &str = "/usr/sbin/ubiupdatevol";

fn perr(what: String, e: impl std::error::Error + Send + Sync + 'static) -> ProvisionError {
    ProvisionError {
        what,
        source: Some(Box::new(e)),
    }
}

fn plain(what: String) -> ProvisionError {
    ProvisionError { what, source: None }
}

/// `flashbench.<key>=N` from the kernel command line.
fn cmdline_num(key: &str, default: usize) -> usize {
    let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let prefix = format!("flashbench.{key}=");
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Writer,
    Ubiupdatevol,
    Stage,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Writer => "writer",
            Method::Ubiupdatevol => "ubiupdatevol",
            Method::Stage => "stage",
        }
    }
}

struct Bench {
    size: u64,
    sha256: Digest,
    chunk: usize,
}

impl Bench {
    /// Writes the file with init's writer into a fresh volume; returns the seconds.
    fn writer(&self, store: &mut Store<UbiVolumes>) -> Result<f64, ProvisionError> {
        let vols = store.volumes_mut();
        let id = vols
            .create("fb.writer", self.size)
            .map_err(|e| perr("create volume fb.writer".into(), e))?;
        let mut f = std::fs::File::open(DATA).map_err(|e| perr(format!("open {DATA}"), e))?;
        let mut buf = vec![0u8; self.chunk];
        let t = Instant::now();
        let mut w = vols
            .update(id, self.size)
            .map_err(|e| perr("start the update of fb.writer".into(), e))?;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| perr(format!("read {DATA}"), e))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n])
                .map_err(|e| perr("write fb.writer".into(), e))?;
        }
        w.finish()
            .map_err(|e| perr("finish the update of fb.writer".into(), e))?;
        let secs = t.elapsed().as_secs_f64();
        vols.remove(id)
            .map_err(|e| perr("remove fb.writer".into(), e))?;
        Ok(secs)
    }

    /// Writes the file with `ubiupdatevol` into a fresh volume; returns the seconds.
    fn ubiupdatevol(&self, store: &mut Store<UbiVolumes>) -> Result<f64, ProvisionError> {
        let vols = store.volumes_mut();
        let id = vols
            .create("fb.ubiupdatevol", self.size)
            .map_err(|e| perr("create volume fb.ubiupdatevol".into(), e))?;
        let dev = format!("/dev/ubi{}_{}", vols.ubi_num(), id.0);
        let t = Instant::now();
        let out = std::process::Command::new(UBIUPDATEVOL)
            .args([dev.as_str(), DATA])
            .output()
            .map_err(|e| perr(format!("run {UBIUPDATEVOL} {dev} {DATA}"), e))?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(plain(format!(
                "{UBIUPDATEVOL} {dev} {DATA} exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        vols.remove(id)
            .map_err(|e| perr("remove fb.ubiupdatevol".into(), e))?;
        Ok(secs)
    }

    /// Stages the file through card's store (sha256, read-back), then aborts.
    fn stage(&self, store: &mut Store<UbiVolumes>) -> Result<f64, ProvisionError> {
        let a = ArtifactRef {
            kind: ArtifactKind::Package,
            name: "fbstage".into(),
            version: "1".into(),
            sha256: self.sha256,
            size: self.size,
        };
        store
            .begin(std::slice::from_ref(&a), "")
            .map_err(|e| perr("begin a set for fbstage".into(), e))?;
        let f = std::fs::File::open(DATA).map_err(|e| perr(format!("open {DATA}"), e))?;
        let t = Instant::now();
        store
            .stage(&a, f)
            .map_err(|e| perr("stage fbstage".into(), e))?;
        let secs = t.elapsed().as_secs_f64();
        store
            .abort()
            .map_err(|e| perr("abort the fbstage set".into(), e))?;
        Ok(secs)
    }
}

#[derive(Debug)]
struct FlashBench;

impl Provisioner<UbiVolumes> for FlashBench {
    fn provision(
        &mut self,
        s: &mut Session<'_, UbiVolumes>,
    ) -> Result<Provisioned, ProvisionError> {
        let store = s
            .store
            .as_mut()
            .ok_or_else(|| plain("no flash store (is nandsim in load.list?)".into()))?;
        let size = std::fs::metadata(DATA)
            .map_err(|e| perr(format!("stat {DATA}"), e))?
            .len();
        let hexsum =
            std::fs::read_to_string(DATA_SHA).map_err(|e| perr(format!("read {DATA_SHA}"), e))?;
        let hexsum = hexsum.trim();
        let sha256: Digest = hexsum
            .parse()
            .map_err(|e| perr(format!("{DATA_SHA} does not hold a sha256"), e))?;
        let b = Bench {
            size,
            sha256,
            chunk: cmdline_num("chunk", 64 * 1024).max(512),
        };
        let runs = cmdline_num("runs", 3).clamp(1, 20);
        log::info!(
            "FLASHBENCH start bytes {size} chunk {} runs {runs} tool {UBIUPDATEVOL}",
            b.chunk
        );
        let mut order = Vec::new();
        for run in 0..runs {
            // Alternate which goes first so that neither always follows the other.
            let pair = if run % 2 == 0 {
                [Method::Writer, Method::Ubiupdatevol]
            } else {
                [Method::Ubiupdatevol, Method::Writer]
            };
            order.extend(pair.map(|m| (run, m)));
        }
        order.push((0, Method::Stage));
        for (run, m) in order {
            {
                nix::unistd::sync();
                std::thread::sleep(std::time::Duration::from_millis(500));
                let r = match m {
                    Method::Writer => b.writer(store),
                    Method::Ubiupdatevol => b.ubiupdatevol(store),
                    Method::Stage => b.stage(store),
                };
                match r {
                    Ok(secs) => log::info!(
                        "FLASHBENCH {} run {run} bytes {size} secs {secs:.6}",
                        m.name()
                    ),
                    Err(e) => log::error!(
                        "FLASHBENCH {} run {run} FAILED {}",
                        m.name(),
                        shelfboot_proto::report::error_chain(&e)
                    ),
                }
            }
        }
        log::info!("FLASHBENCH done");
        nix::unistd::sync();
        match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
            Ok(never) => match never {},
            Err(e) => Err(perr("power off after the flash benchmark".into(), e)),
        }
    }
}

fn main() -> std::process::ExitCode {
    if std::process::id() == 1 {
        shelfboot_init::pid1::main(&mut FlashBench)
    }
    eprintln!(
        "shelfboot-flash-bench is a QEMU-lab PID 1 (see {}); it does nothing elsewhere",
        Path::new(file!()).display()
    );
    std::process::ExitCode::from(2)
}
