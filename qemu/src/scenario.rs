//! End-to-end building blocks shared by the QEMU scenario tests and `shelfboot-lab demo`:
//! a master state with the lab release imported, `master serve` on the backplane's master
//! port (a thread inside the namespace), card configurations, and a console parser that
//! says where a card is in its boot.
//!
//! ```text
//! prepare: vendor key → Master::open + trust → plan key (plan.anchor) → release::build
//!          (anchor baked into the initramfs) → pack (signed) → import
//! spawn_master: setns(backplane) → serve::run until stop → ServeStats
//! ```
//!
//! It also holds what every QEMU test file needs around a scenario: the prelude
//! ([`Prelude::start`]: tier gate, logging, kernel, work and log directories, init, the
//! prepared release), an
//! emptied console-log directory ([`fresh_log_dir`]) and a card's record in the node DB
//! ([`node_view`]).
//!
//! Not here: booting (crate::shelf), assertions (the tests), the live display (main.rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Instant;

use shelfboot_master::serve::{self, ServeConfig, ServeStats};
use shelfboot_master::state::{Master, NodeView};
use shelfboot_testkit::tier::{self, Tier};

use crate::backplane::{Backplane, MASTER_IF};
use crate::card::{CardConfig, create_erased_image};
use shelfboot_proto::id::Arch;

use crate::kernel::Kernel;
use crate::release::{self, ArchBuild, Release, ReleaseSpec};
use crate::shelf::card_mac;

/// Card types of the lab release.
pub const TYPES: [&str; 2] = ["lc100", "fab10"];
/// Flash size of a lab card (block2mtd over a raw image).
pub const FLASH: u64 = 64 << 20;
/// Seconds a card waits for a master before booting alone.
pub const MASTER_TIMEOUT_S: u32 = 60;

/// A failed scenario step.
#[derive(Debug, thiserror::Error)]
#[error("lab scenario step failed: {step}")]
pub struct ScenarioError {
    /// What was being done.
    pub step: String,
    /// The cause.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

fn step<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> ScenarioError {
    let step = what.into();
    move |e| ScenarioError {
        step,
        source: Box::new(e),
    }
}

/// What every QEMU scenario test sets up before its first boot, in one call: the QEMU
/// tier is required (a missing prerequisite fails the test, see
/// `shelfboot_testkit::tier`), test logging is on, the clock starts, the Debian kernel is
/// at hand, a work directory exists (removed when the prelude's `work` drops: keep it
/// bound), the console-log directory `lab-logs/<name>` is empty, the static init is built,
/// and the lab release is built and imported into a fresh master state ([`prepare`]).
/// Tests destructure it and go on explicitly.
#[derive(Debug)]
pub struct Prelude {
    /// When the test started.
    pub t0: Instant,
    /// The Debian amd64 kernel (also the one of the lab's busybox tool VMs, whatever the
    /// cards' architecture).
    pub kernel: Kernel,
    /// The test's work directory (holds the release and the master state).
    pub work: tempfile::TempDir,
    /// Emptied console-log directory ([`fresh_log_dir`]).
    pub logs: PathBuf,
    /// The static init of the first card architecture ([`init_binary`]).
    pub init: PathBuf,
    /// The master state with the lab release imported.
    pub lab: Lab,
}

impl Prelude {
    /// Runs the prelude; `logs_base` is the test's `env!("CARGO_TARGET_TMPDIR")` (so the
    /// logs outlive the run) and `name` names its log directory.
    pub fn start(logs_base: impl AsRef<Path>, name: &str) -> Result<Prelude, ScenarioError> {
        Self::start_arches(logs_base, name, &[Arch::X86_64])
    }

    /// [`Prelude::start`] with a release for the card architectures `arches` (cards
    /// take them in turn: [`Lab::card_arch`]); for aarch64 this builds the lab's arm64
    /// kernel once (cached) and fetches Debian's arm64 busybox once.
    pub fn start_arches(
        logs_base: impl AsRef<Path>,
        name: &str,
        arches: &[Arch],
    ) -> Result<Prelude, ScenarioError> {
        tier::require(&[Tier::Qemu]);
        let _ = env_logger::builder().is_test(true).try_init();
        let t0 = Instant::now();
        let kernel = crate::kernel::acquire(&crate::kernel::cache_dir(), false)
            .map_err(step("acquire the Debian kernel"))?;
        let work = tempfile::tempdir().map_err(step("create the work directory"))?;
        let logs = fresh_log_dir(logs_base.as_ref(), name)?;
        let builds = arches
            .iter()
            .map(|&a| arch_build(a))
            .collect::<Result<Vec<_>, _>>()?;
        let init = builds
            .first()
            .map(|b| b.init.clone())
            .ok_or_else(|| ScenarioError {
                step: "choose the card architectures".into(),
                source: Box::new(std::io::Error::other("no architecture given")),
            })?;
        let lab = prepare(&builds, work.path())?;
        Ok(Prelude {
            t0,
            kernel,
            work,
            logs,
            init,
            lab,
        })
    }
}

/// An emptied directory `base/lab-logs/name` for a test's console logs (tests pass
/// `env!("CARGO_TARGET_TMPDIR")` as `base`, so the logs outlive the run).
pub fn fresh_log_dir(base: &Path, name: &str) -> Result<PathBuf, ScenarioError> {
    let dir = base.join("lab-logs").join(name);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(step(format!("empty the log directory {}", dir.display()))(
            e,
        ));
    }
    std::fs::create_dir_all(&dir)
        .map_err(step(format!("create the log directory {}", dir.display())))?;
    Ok(dir)
}

/// The node DB's view of the card with backplane MAC `mac` (`52:54:00:5b:00:01`).
pub fn node_by_mac(state: &Path, mac: &str) -> Result<NodeView, ScenarioError> {
    let what = || format!("find card {mac} in the node DB of {}", state.display());
    let m = Master::open(state).map_err(step(what()))?;
    m.nodes()
        .map_err(step(what()))?
        .into_iter()
        .find(|v| v.node.identity.mac.to_string() == mac)
        .ok_or_else(|| ScenarioError {
            step: what(),
            source: Box::new(std::io::Error::other(
                "no such node: the card never reached this master",
            )),
        })
}

/// The node DB's view of card `i` of a shelf (MAC [`card_mac`]).
pub fn node_view(state: &Path, i: usize) -> Result<NodeView, ScenarioError> {
    node_by_mac(state, &crate::backplane::mac_string(&card_mac(i)))
}

/// A master state with the lab release imported.
#[derive(Debug, Clone)]
pub struct Lab {
    /// One build per card architecture of the release (kernel, init, busybox).
    pub builds: Vec<ArchBuild>,
    /// Work directory.
    pub dir: PathBuf,
    /// Master state directory.
    pub state: PathBuf,
    /// The release.
    pub release: Release,
}

impl Lab {
    /// The architecture of card `i`: the release's architectures in turn (a one-arch
    /// lab: always that one).
    pub fn card_arch(&self, i: usize) -> Arch {
        self.builds
            .get(i % self.builds.len().max(1))
            .map_or(Arch::X86_64, ArchBuild::arch)
    }

    /// The build of `arch`.
    pub fn build(&self, arch: Arch) -> Option<&ArchBuild> {
        self.builds.iter().find(|b| b.arch() == arch)
    }
}

/// The musl target of `arch`'s static init.
pub fn musl_target(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-unknown-linux-musl",
        Arch::Aarch64 => "aarch64-unknown-linux-musl",
    }
}

/// The static init for `arch`: `SHELFBOOT_INIT_BIN` (x86_64) or
/// `SHELFBOOT_INIT_BIN_AARCH64`, else built with cargo (init-release, musl).
pub fn init_binary_for(arch: Arch) -> Result<PathBuf, ScenarioError> {
    let var = match arch {
        Arch::X86_64 => "SHELFBOOT_INIT_BIN",
        Arch::Aarch64 => "SHELFBOOT_INIT_BIN_AARCH64",
    };
    if let Ok(p) = std::env::var(var) {
        return Ok(p.into());
    }
    let target = musl_target(arch);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = std::process::Command::new(cargo);
    c.args([
        "build",
        "-q",
        "-p",
        "shelfboot-init",
        "--profile",
        "init-release",
        "--target",
        target,
    ]);
    crate::cmd::run(&mut c).map_err(step(
        "build the static init (cargo build -p shelfboot-init)",
    ))?;
    let dir = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    Ok(dir.join(target).join("init-release/shelfboot-init"))
}

/// The x86_64 static init ([`init_binary_for`]).
pub fn init_binary() -> Result<PathBuf, ScenarioError> {
    init_binary_for(Arch::X86_64)
}

/// Everything a release needs for `arch`: its lab kernel, static init and busybox.
pub fn arch_build(arch: Arch) -> Result<ArchBuild, ScenarioError> {
    let cache = crate::kernel::cache_dir();
    let kernel = crate::kernel::acquire_arch(&cache, arch, false)
        .map_err(step(format!("acquire the {arch} lab kernel")))?;
    let init = init_binary_for(arch)?;
    let busybox = crate::busybox::binary(arch, &cache).map_err(|e| ScenarioError {
        step: format!("get Debian's static busybox for {arch}"),
        source: e.into(),
    })?;
    Ok(ArchBuild {
        kernel,
        init,
        busybox,
    })
}

/// Builds the release for `builds` into `dir` and imports it into a fresh master state
/// `dir/state`.
pub fn prepare(builds: &[ArchBuild], dir: &Path) -> Result<Lab, ScenarioError> {
    let state = dir.join("state");
    let (secret, public, _) = shelfboot_master::keys::keygen(&dir.join("vendor"))
        .map_err(step("generate the vendor key"))?;
    let mut m = Master::open(&state).map_err(step(format!("open {}", state.display())))?;
    m.trust_add(&public, "lab vendor")
        .map_err(step("trust the vendor key"))?;
    serve::load_key(&ServeConfig::new(MASTER_IF, &state))
        .map_err(step("create the plan-signing key"))?;
    let rel = release::build(
        &ReleaseSpec {
            card_types: TYPES.iter().map(|t| t.to_string()).collect(),
            builds: builds.to_vec(),
            anchor: state.join("plan.anchor"),
        },
        &dir.join("release"),
    )
    .map_err(step("build the lab release"))?;
    let key =
        shelfboot_master::keys::read_signing_key(&secret).map_err(step("read the vendor key"))?;
    let packed = shelfboot_master::image::pack::prepare(&rel.system_toml)
        .map_err(step(format!("pack {}", rel.system_toml.display())))?;
    let image = dir.join("release.img");
    shelfboot_master::image::pack::write_image(&packed, &key, &image)
        .map_err(step("write the release image"))?;
    m.import_file(&image, true, &mut |_, _| {})
        .map_err(step("import the release"))?;
    Ok(Lab {
        builds: builds.to_vec(),
        dir: dir.to_path_buf(),
        state,
        release: rel,
    })
}

/// Type of card `i` (alternating).
pub fn card_type(i: usize) -> &'static str {
    TYPES[i % TYPES.len()]
}

/// Features card `i` asks for: every third card asks `diag`.
pub fn card_features(i: usize) -> &'static [&'static str] {
    if i % 3 == 2 { &["diag"] } else { &[] }
}

/// Configuration of card `i` (its flash image is created erased if missing), of
/// architecture [`Lab::card_arch`].
pub fn card_config(lab: &Lab, i: usize, logs: &Path) -> Result<CardConfig, ScenarioError> {
    let disk = lab.dir.join(format!("flash-{i}.img"));
    if !disk.exists() {
        create_erased_image(&disk, FLASH)
            .map_err(step(format!("create flash image {}", disk.display())))?;
    }
    let arch = lab.card_arch(i);
    let missing = || ScenarioError {
        step: format!("configure card{i}"),
        source: Box::new(std::io::Error::other(format!(
            "the lab release has no {arch} build"
        ))),
    };
    let kernel = &lab.build(arch).ok_or_else(missing)?.kernel;
    let initramfs = lab.release.initramfs(arch).ok_or_else(missing)?;
    let mut c = CardConfig::new(&format!("card{i}"), &kernel.qemu_kernel, initramfs, logs);
    c.arch = arch;
    c.append = release::card_append(
        arch,
        card_type(i),
        u16::try_from(i + 1).unwrap_or(u16::MAX),
        card_features(i),
        MASTER_TIMEOUT_S,
    );
    c.disk = Some(disk);
    Ok(c)
}

/// Runs `master serve` on the backplane's master port until `stop`.
pub fn spawn_master(
    bp: &Backplane,
    state: &Path,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<Result<ServeStats, String>>, ScenarioError> {
    let path = format!("/run/netns/{}", bp.netns());
    let ns = std::fs::File::open(&path).map_err(step(format!("open {path}")))?;
    let cfg = ServeConfig::new(MASTER_IF, state);
    Ok(std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering the backplane namespace: {e}"))?;
        serve::run(&cfg, &stop).map_err(|e| shelfboot_proto::report::error_chain(&e))
    }))
}

/// Where a card is in its boot, judged from its console (the last matching line wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Kernel booting (nothing from init yet).
    Kernel,
    /// init runs (modules, link, flash).
    Init,
    /// Soliciting a plan.
    Soliciting,
    /// Fetching: (bytes done, bytes in total).
    Fetching(u64, u64),
    /// kexec into the stored image.
    Kexec,
    /// The stored image validates with the master.
    Validating,
    /// switch_root into the packages.
    SwitchRoot,
    /// Ready, with the package list.
    Ready(String),
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Kernel => write!(f, "kernel booting"),
            Stage::Init => write!(f, "init: modules, link, flash"),
            Stage::Soliciting => write!(f, "asking the master for a plan"),
            Stage::Fetching(d, t) => write!(
                f,
                "fetching {:.1} of {:.1} MB",
                *d as f64 / 1e6,
                *t as f64 / 1e6
            ),
            Stage::Kexec => write!(f, "committed; kexec into the stored image"),
            Stage::Validating => write!(f, "stored image: validating with the master"),
            Stage::SwitchRoot => write!(f, "switch_root into the packages"),
            Stage::Ready(p) => write!(f, "READY ({p})"),
        }
    }
}

/// The stage shown by a console text (one boot's worth).
pub fn stage_of(console: &str) -> Stage {
    let mut st = Stage::Kernel;
    let mut stored = false;
    for l in console.lines() {
        if let Some(rest) = l.split(release::READY_LINE).nth(1) {
            let pk = rest.split(" uptime").next().unwrap_or("").trim();
            st = Stage::Ready(pk.to_string());
        } else if l.contains("starting as PID 1") {
            st = Stage::Init;
        } else if l.contains("config: stored") {
            stored = l.trim_end().ends_with("true");
        } else if l.contains("agent: soliciting") {
            st = if stored {
                Stage::Validating
            } else {
                Stage::Soliciting
            };
        } else if let Some((d, t)) = fetched(l) {
            st = Stage::Fetching(d, t);
        } else if l.contains("kexec: sync and reboot") {
            st = Stage::Kexec;
        } else if l.contains("switch_root: exec") {
            st = Stage::SwitchRoot;
        }
    }
    st
}

/// Parses `agent: fetched D of T bytes`.
pub fn fetched(line: &str) -> Option<(u64, u64)> {
    let rest = line.split("agent: fetched ").nth(1)?;
    let mut w = rest.split_whitespace();
    let d = w.next()?.parse().ok()?;
    let _of = w.next()?;
    let t = w.next()?.parse().ok()?;
    Some((d, t))
}

/// Bytes card's plan needed fetched in this console (0 if it only validated).
pub fn bytes_to_fetch(console: &str) -> u64 {
    console
        .lines()
        .filter_map(fetched)
        .map(|(_, t)| t)
        .max()
        .unwrap_or(0)
}

/// Builds release `d` beside the lab's release ([`release::derive`]), packs it with the
/// lab's vendor key and imports it as the default release: through the control socket
/// when a master serves (as an operator would), else in-process.
pub fn import_derived(lab: &Lab, d: &release::Derived) -> Result<Release, ScenarioError> {
    let types: Vec<String> = TYPES.iter().map(|t| t.to_string()).collect();
    let rel = release::derive(&lab.release, &types, d)
        .map_err(step(format!("build release {}", d.version)))?;
    let key = shelfboot_master::keys::read_signing_key(&lab.dir.join("vendor.key"))
        .map_err(step("read the vendor key"))?;
    let packed = shelfboot_master::image::pack::prepare(&rel.system_toml)
        .map_err(step(format!("pack {}", rel.system_toml.display())))?;
    let image = lab.dir.join(format!("release-{}.img", d.version));
    shelfboot_master::image::pack::write_image(&packed, &key, &image)
        .map_err(step(format!("write {}", image.display())))?;
    shelfboot_master::cli::run_request(
        &lab.state,
        shelfboot_master::control::Request::Import {
            path: image.clone(),
            activate: true,
        },
    )
    .map_err(step(format!("import {}", image.display())))?;
    Ok(rel)
}

/// Sends a fleet order (to `target`, or every card) through the serving master's control
/// socket, retrying for up to 30 s while a serve run that was just started has not bound
/// it yet. Returns the reply, printed.
pub fn fleet_order(
    state: &Path,
    action: shelfboot_master::state::FleetAction,
    target: Option<shelfboot_proto::id::MacAddr>,
) -> Result<String, ScenarioError> {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let req = shelfboot_master::control::Request::Fleet { action, target };
        match shelfboot_master::cli::run_request(state, req) {
            Ok(r) => return Ok(format!("{r:?}")),
            Err(e) if Instant::now() < deadline => {
                log::info!("{action}: not yet ({e}); retrying");
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(e) => return Err(step(format!("order {action}"))(e)),
        }
    }
}

/// The `master` CLI binary: `SHELFBOOT_MASTER_BIN`, else built with cargo (debug).
pub fn master_binary() -> Result<PathBuf, ScenarioError> {
    if let Ok(p) = std::env::var("SHELFBOOT_MASTER_BIN") {
        return Ok(p.into());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = std::process::Command::new(cargo);
    c.args(["build", "-q", "-p", "shelfboot-master", "--bin", "master"]);
    crate::cmd::run(&mut c).map_err(step(
        "build the master CLI (cargo build -p shelfboot-master --bin master)",
    ))?;
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    Ok(target.join("debug/master"))
}

/// Runs the operator CLI, `master --state STATE ARGS...`, and returns what it printed.
/// With a master serving, the CLI goes through its control socket.
pub fn master_cli(state: &Path, args: &[&str]) -> Result<String, ScenarioError> {
    let bin = master_binary()?;
    let mut c = std::process::Command::new(&bin);
    c.arg("--state").arg(state).args(args);
    crate::cmd::run(&mut c).map_err(step(format!("master {}", args.join(" "))))
}

/// What init says the flash holds when it opens the store (init's
/// `flow::describe_inventory`): `flash: committed set D (generation G, A boot attempts
/// since Ready): boot NAME VER, package NAME VER, ...; previous set P|none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashInventory {
    /// Set digest (hex).
    pub digest: String,
    /// Inventory generation.
    pub generation: u64,
    /// Boots of the set since it was committed or last Ready.
    pub attempts: u32,
    /// `KIND NAME VERSION` per artifact (`boot lab-kernel 6.1.0`, `package base 1.0.0`).
    pub artifacts: Vec<String>,
    /// Digest of the previous set kept for rollback.
    pub previous: Option<String>,
}

/// Console pattern of init's inventory line for a card with a committed set.
pub const INVENTORY_PATTERN: &str = r"flash: committed set [0-9a-f]{64} \(generation \d+, \d+ boot attempts since Ready\): .*; previous set (none|[0-9a-f]{64})\s*$";

/// Parses init's inventory line (see [`FlashInventory`]); `None` for any other line,
/// including `flash: nothing committed`.
pub fn flash_inventory(line: &str) -> Option<FlashInventory> {
    let rest = line.split("flash: committed set ").nth(1)?;
    let (digest, rest) = rest.split_once(" (generation ")?;
    let (generation, rest) = rest.split_once(", ")?;
    let (attempts, rest) = rest.split_once(" boot attempts since Ready): ")?;
    let (arts, prev) = rest.rsplit_once("; previous set ")?;
    let prev = prev.trim();
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(FlashInventory {
        digest: digest.to_string(),
        generation: generation.parse().ok()?,
        attempts: attempts.parse().ok()?,
        artifacts: arts.split(", ").map(str::to_string).collect(),
        previous: (prev != "none").then(|| prev.to_string()),
    })
}

/// The last inventory line in a console text.
pub fn last_flash_inventory(console: &str) -> Option<FlashInventory> {
    console.lines().rev().find_map(flash_inventory)
}

/// The package list of a Ready line (`base-1.0.0 heartbeat-1.0.0`), `None` for other lines.
pub fn ready_packages(line: &str) -> Option<String> {
    let rest = line.split(release::READY_LINE).nth(1)?;
    Some(
        rest.split(" uptime")
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
    )
}

/// `master serve` that a scenario stops and starts again around operator changes made
/// with the `Master` library (serve reads its catalog once, so a change made beside a
/// running serve would not be seen). Dropping it stops the serve thread.
#[derive(Debug)]
pub struct MasterRun {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<ServeStats, String>>>,
}

impl MasterRun {
    /// Starts `master serve` on the backplane's master port.
    pub fn start(bp: &Backplane, state: &Path) -> Result<Self, ScenarioError> {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = spawn_master(bp, state, stop.clone())?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the serve thread and returns its counters (`None` if it was not running).
    pub fn stop(&mut self) -> Result<Option<ServeStats>, ScenarioError> {
        let Some(h) = self.handle.take() else {
            return Ok(None);
        };
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match h.join() {
            Ok(Ok(stats)) => Ok(Some(stats)),
            Ok(Err(e)) => Err(ScenarioError {
                step: "master serve".into(),
                source: Box::new(std::io::Error::other(e)),
            }),
            Err(_) => Err(ScenarioError {
                step: "master serve".into(),
                source: Box::new(std::io::Error::other("the serve thread panicked")),
            }),
        }
    }

    /// Stops it if running, then starts a fresh serve (which reads the catalog again).
    pub fn restart(&mut self, bp: &Backplane, state: &Path) -> Result<(), ScenarioError> {
        self.stop()?;
        *self = Self::start(bp, state)?;
        Ok(())
    }

    /// True while the serve thread runs.
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for MasterRun {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_the_console() {
        let mut c = String::from("[ 1.0] Linux\n");
        assert_eq!(stage_of(&c), Stage::Kernel);
        c.push_str("shelfboot-init: INFO  shelfboot-init 0.1.0 starting as PID 1\n");
        c.push_str("shelfboot-init: INFO  config: stored          false\n");
        assert_eq!(stage_of(&c), Stage::Init);
        c.push_str("shelfboot-init: INFO  agent: soliciting a plan on eth0\n");
        assert_eq!(stage_of(&c), Stage::Soliciting);
        c.push_str("shelfboot-init: INFO  agent: fetched 5 of 10 bytes\n");
        assert_eq!(stage_of(&c), Stage::Fetching(5, 10));
        c.push_str("shelfboot-init: INFO  kexec: sync and reboot into the stored image\n");
        assert_eq!(stage_of(&c), Stage::Kexec);
        c.push_str("shelfboot-init: INFO  config: stored          true\n");
        c.push_str("shelfboot-init: INFO  agent: soliciting a plan on eth0\n");
        assert_eq!(stage_of(&c), Stage::Validating);
        c.push_str("SHELFBOOT-READY packages: base-1.0.0 heartbeat-1.0.0 uptime 8.5\n");
        assert_eq!(
            stage_of(&c),
            Stage::Ready("base-1.0.0 heartbeat-1.0.0".into())
        );
        assert_eq!(bytes_to_fetch(&c), 10);
        assert_eq!(bytes_to_fetch("nothing"), 0);
    }

    #[test]
    fn log_dir_and_node_lookup() {
        let d = tempfile::tempdir().unwrap();
        let logs = fresh_log_dir(d.path(), "t").unwrap();
        assert_eq!(logs, d.path().join("lab-logs/t"));
        std::fs::write(logs.join("old.console.log"), "x").unwrap();
        let again = fresh_log_dir(d.path(), "t").unwrap();
        assert_eq!(std::fs::read_dir(&again).unwrap().count(), 0);
        let state = d.path().join("state");
        Master::open(&state).unwrap();
        let e = node_view(&state, 0).unwrap_err().to_string();
        assert!(e.contains("52:54:00:5b:00:01"), "{e}");
    }

    #[test]
    fn every_third_card_asks_diag_and_types_alternate() {
        assert_eq!(card_type(0), "lc100");
        assert_eq!(card_type(1), "fab10");
        assert!(card_features(2).contains(&"diag"));
        assert!(card_features(0).is_empty());
    }

    #[test]
    fn inventory_and_ready_lines_parse() {
        let d = "ab".repeat(32);
        let p = "cd".repeat(32);
        let line = format!(
            "shelfboot-init: INFO  flash: committed set {d} (generation 7, 2 boot attempts since Ready): boot lab-kernel 6.1.0, package base 1.0.0, package heartbeat 1.1.0; previous set {p}"
        );
        assert!(
            regex::Regex::new(INVENTORY_PATTERN)
                .unwrap()
                .is_match(&line)
        );
        let inv = flash_inventory(&line).unwrap();
        assert_eq!(inv.digest, d);
        assert_eq!(inv.generation, 7);
        assert_eq!(inv.attempts, 2);
        assert_eq!(
            inv.artifacts,
            [
                "boot lab-kernel 6.1.0",
                "package base 1.0.0",
                "package heartbeat 1.1.0"
            ]
        );
        assert_eq!(inv.previous.as_deref(), Some(p.as_str()));
        let none = line.replace(&format!("previous set {p}"), "previous set none");
        assert_eq!(flash_inventory(&none).unwrap().previous, None);
        // The card's commit line is not the inventory line.
        let commit = format!("flash: committed set {d} (generation 1, 3 artifacts)");
        assert_eq!(flash_inventory(&commit), None);
        assert!(
            !regex::Regex::new(INVENTORY_PATTERN)
                .unwrap()
                .is_match(&commit)
        );
        assert_eq!(flash_inventory("flash: nothing committed"), None);
        let console = format!("{line}\nx\n{none}\n");
        assert_eq!(last_flash_inventory(&console).unwrap().previous, None);
        assert_eq!(
            ready_packages("SHELFBOOT-READY packages: base-1.0.0 heartbeat-1.0.0 uptime 9.1")
                .as_deref(),
            Some("base-1.0.0 heartbeat-1.0.0")
        );
        assert_eq!(ready_packages("HEARTBEAT 1"), None);
    }
}
