//! The boot flow of a line card, from kernel filesystems to hand-off, and the seam where
//! the master conversation plugs in.
//!
//! ```text
//! mount table → logger on /dev/kmsg → config (/proc/cmdline) → modules (load.list)
//!   → link up (rtnetlink) → attach UBI (format if pristine) → open card's Store
//!   → Provisioner (the master conversation: card's agent)     ← the seam
//!   → hand-off: kexec the committed boot image, or switch_root into its packages,
//!               or (test mode) kexec the test set's boot image from RAM carrying the RAM
//!               store, or switch_root into test-mode packages in tmpfs
//! ```
//!
//! The [`Session`] owns the flash store for the whole boot. The [`Provisioner`] gets the
//! session (configuration, link, store); it may lend the store to card's agent, which
//! fetches, stages and commits through it (card's commit protocol), and it returns what
//! the agent decided. The product's is [`crate::provision::AgentProvisioner`]; a build
//! without a master conversation uses [`NoAgent`], which says so on the console and
//! reports "no master", which is exactly the autonomous path: boot the last committed
//! set. What is booted from flash (proven set, stored flag, boot counting with rollback
//! after K boots without Ready, kexec or switch_root) is card's one boot choice,
//! [`shelfboot_card::boot::choose`], called once per boot cycle right before the
//! hand-off. Marking the set Ready (`Store::mark_ready`) is the provisioner's job, after
//! the master saw Ready. Not here: PID-1 process duties (see [`crate::pid1`]).

use std::path::PathBuf;
use std::time::Duration;

use shelfboot_card::boot::{self, BootFacts, Counting, Target};
use shelfboot_card::flash::artifact::ArtifactKind;
use shelfboot_card::flash::{
    BootDecision, Inventory, SetRecord, Store, StoreConfig, StoreError, Volumes,
};

use crate::boottime;
use crate::config::{Config, ConfigError};
use crate::flash::UbiVolumes;
use crate::flash::attach::{self, AttachError};
use crate::handoff::{self, HandoffError, Layer, Paths};
use crate::kernel::{Forked, Kernel};
use crate::modules::{self, ModuleEntry, ModuleError};
use crate::mounts::{self, MountError};
use crate::net::{self, Link, LinkJob};
use crate::resident::Seed;
use crate::sys::sysfs::Sysfs;

/// What the provisioner decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    /// Boot the committed set: a master validated it (Continue) or it was just fetched
    /// and committed. `set` is the set the agent decided on.
    Committed {
        /// The agent's set (what flash held when it decided).
        set: SetRecord,
    },
    /// A RAM set (test mode, a RAM-first plan, a card without usable flash): boot these
    /// squashfs packages kept in tmpfs (bottom first); flash untouched.
    RamSet {
        /// The set, as the RAM store committed it.
        set: SetRecord,
        /// Packages in tmpfs ([`Layer::File`] or [`Layer::FileExtent`]).
        packages: Vec<Layer>,
        /// The test set's boot image, if it has one: kexec'd (`shelfboot.test=1`) unless
        /// this init already runs it.
        boot: Option<RamBoot>,
    },
    /// No master answered within `shelfboot.master_timeout`.
    NoMaster {
        /// How long the provisioner waited.
        waited: Duration,
    },
}

/// A test set's boot image in the RAM store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBoot {
    /// The boot-image container file (in the RAM store's directory).
    pub image: PathBuf,
    /// (offset, size) of the image in `image`, if it is one artifact of a segment;
    /// `None`: the whole file.
    pub range: Option<(u64, u64)>,
    /// The set's command line (the plan's).
    pub cmdline: String,
    /// The RAM store directory, carried in the next kernel's initramfs.
    pub ram_dir: PathBuf,
}

/// What a provisioner works with. The session owns the flash store: a provisioner lends
/// it to the agent and puts it back (with whatever the agent committed) before it
/// returns; the hand-off boots from it.
pub struct Session<'a, V: Volumes> {
    /// The configuration.
    pub config: &'a Config,
    /// The backplane link, if it came up.
    pub link: Option<&'a Link>,
    /// The flash store, if the flash could be opened.
    pub store: Option<Store<V>>,
    /// What the resident agent needs after the hand-off (set by a provisioner that
    /// reached the backplane with a trust anchor); none: no agent after the hand-off.
    pub resident: Option<Seed>,
}

impl<V: Volumes> std::fmt::Debug for Session<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("config", self.config)
            .field("link", &self.link)
            .field("store", &self.store.as_ref().map(|s| s.digest()))
            .field("resident", &self.resident.as_ref().map(|r| r.mac))
            .finish()
    }
}

/// A failed provisioning conversation.
#[derive(Debug, thiserror::Error)]
#[error("provisioning failed: {what}")]
pub struct ProvisionError {
    /// What failed.
    pub what: String,
    /// The cause.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// The master conversation, between "link up" and "hand-off".
pub trait Provisioner<V: Volumes> {
    /// Talks to the master (or not) and says what to boot.
    fn provision(&mut self, s: &mut Session<'_, V>) -> Result<Provisioned, ProvisionError>;
}

/// The provisioner of a build without the card agent: it does not talk to any master and
/// says so; the flow then boots the committed set autonomously.
#[derive(Debug, Default)]
pub struct NoAgent;

impl<V: Volumes> Provisioner<V> for NoAgent {
    fn provision(&mut self, _: &mut Session<'_, V>) -> Result<Provisioned, ProvisionError> {
        log::warn!(
            "this init has no master conversation (no card agent): not contacting any master"
        );
        Ok(Provisioned::NoMaster {
            waited: Duration::ZERO,
        })
    }
}

/// Why the flow stopped before a hand-off.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// A required kernel filesystem could not be mounted.
    #[error("bring-up failed")]
    Mounts(#[source] MountError),
    /// The command line is invalid.
    #[error("configuration failed")]
    Config(#[source] ConfigError),
    /// A module could not be loaded.
    #[error("module loading failed")]
    Modules(#[source] ModuleError),
    /// Nothing is committed and no test set was given: nothing to boot.
    #[error("nothing to boot: no committed set on flash and no test set from a master")]
    NothingToBoot,
    /// The store could not decide what to boot.
    #[error("cannot decide what to boot from flash")]
    Store(#[source] StoreError),
    /// The hand-off failed.
    #[error("hand-off failed")]
    Handoff(#[source] HandoffError),
}

/// Where the PID-1 flow finds things (all injectable for tests).
#[derive(Debug, Clone)]
pub struct Roots {
    /// `/` of the initramfs.
    pub root: PathBuf,
    /// The kernel command line.
    pub cmdline: PathBuf,
    /// sysfs.
    pub sys: PathBuf,
    /// procfs.
    pub proc: PathBuf,
    /// devtmpfs.
    pub dev: PathBuf,
    /// The module load list.
    pub load_list: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            root: "/".into(),
            cmdline: "/proc/cmdline".into(),
            sys: "/sys".into(),
            proc: "/proc".into(),
            dev: "/dev".into(),
            load_list: modules::LOAD_LIST.into(),
        }
    }
}

/// Reads the module list and loads what the boot path needs, calling `progress` before
/// the first load and after each one; returns the modules deferred to the hand-off
/// ([`modules::split_deferred`]). No list means a kernel with its drivers built in (the
/// lab's arm64 kernel; mkinitramfs writes none without modules): nothing to load, said
/// once at info level.
pub fn load_modules(
    k: &mut dyn Kernel,
    roots: &Roots,
    progress: &mut dyn FnMut(),
) -> Result<Vec<ModuleEntry>, FlowError> {
    let text = match std::fs::read_to_string(&roots.load_list) {
        Ok(t) => t,
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
            log::info!(
                "no module list at {}: the kernel has its drivers built in; loading none",
                roots.load_list.display()
            );
            progress();
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(FlowError::Modules(ModuleError::ReadList {
                path: roots.load_list.clone(),
                source,
            }));
        }
    };
    let entries =
        modules::parse_list(&text, &roots.load_list, &roots.root).map_err(FlowError::Modules)?;
    let (now, later) = modules::split_deferred(entries);
    let n = modules::load_entries_then(k, &now, progress).map_err(FlowError::Modules)?;
    log::info!(
        "{n} modules loaded; {} wait for the hand-off{}",
        later.len(),
        later
            .iter()
            .filter_map(|e| e.path.file_name())
            .fold(String::new(), |acc, f| format!(
                "{acc}{} {}",
                if acc.is_empty() { ":" } else { "," },
                f.to_string_lossy()
            ))
    );
    Ok(later)
}

/// Loads the modules [`load_modules`] deferred, right before a switch_root needs them.
fn load_deferred(k: &mut dyn Kernel, deferred: &[ModuleEntry]) -> Result<(), FlowError> {
    if deferred.is_empty() {
        return Ok(());
    }
    let t = boottime::now();
    modules::load_entries(k, deferred).map_err(FlowError::Modules)?;
    boottime::step("hand-off modules", t);
    Ok(())
}

/// Attaches the flash and opens the store; failures are logged and give `None` (the card
/// can still boot a test set, and the master learns the flash is unusable).
pub fn open_store(
    k: &mut dyn Kernel,
    roots: &Roots,
    cfg: &Config,
) -> Option<(u32, Store<UbiVolumes>)> {
    let t = boottime::now();
    let sysfs = Sysfs::new(&roots.sys);
    let opened = attach::resolve_mtd(&sysfs, &cfg.mtd)
        .and_then(|mtd| attach::attach(k, &sysfs, mtd, cfg.format_pristine))
        .map_err(|e: AttachError| shelfboot_proto::report::error_chain(&e))
        .and_then(|ubi| {
            UbiVolumes::open(ubi, &roots.dev, sysfs.clone())
                .map(|v| (ubi, v))
                .map_err(|e| shelfboot_proto::report::error_chain(&e))
        });
    boottime::step("flash attach", t);
    let (ubi, vols) = match opened {
        Ok(x) => x,
        Err(e) => {
            log::error!("flash unavailable: {e}");
            return None;
        }
    };
    let t = boottime::now();
    let scfg = StoreConfig {
        max_attempts: cfg.maxtries,
        ..StoreConfig::default()
    };
    let opened = Store::open(vols, scfg);
    boottime::step("inventory", t);
    match opened {
        Ok((store, report)) => {
            for v in &report.removed {
                log::info!("flash: removed leftover volume {v}");
            }
            if let Some(d) = &report.inventory_damaged {
                log::warn!("flash: one inventory copy was damaged ({d}); the other one was used");
            }
            log::info!("flash: {}", describe_inventory(store.inventory()));
            Some((ubi, store))
        }
        Err(e) => {
            log::error!(
                "flash store unusable: {}",
                shelfboot_proto::report::error_chain(&e)
            );
            None
        }
    }
}

/// One line saying what the flash holds, for the console: the committed set (digest,
/// generation, boot attempts, each artifact as kind, name, version) and the previous set's
/// digest; `nothing committed` for a pristine store. The QEMU power-cut scenario reads it.
pub fn describe_inventory(inv: Option<&Inventory>) -> String {
    let Some(inv) = inv else {
        return "nothing committed".into();
    };
    let arts: Vec<String> = inv
        .set
        .artifacts
        .iter()
        .map(|s| {
            let kind = match s.artifact.kind {
                ArtifactKind::BootImage => "boot",
                ArtifactKind::Package => "package",
            };
            format!("{kind} {} {}", s.artifact.name, s.artifact.version)
        })
        .collect();
    format!(
        "committed set {} (generation {}, {} boot attempts since Ready): {}; previous set {}",
        inv.set.digest,
        inv.generation,
        inv.attempts,
        arts.join(", "),
        inv.previous
            .as_ref()
            .map_or_else(|| "none".to_string(), |p| p.digest.to_string()),
    )
}

/// Boots what `provisioned` says: the only way out of this function is an error.
pub fn hand_off<V: Volumes>(
    k: &mut dyn Kernel,
    paths: &Paths,
    cfg: &Config,
    flash: Option<(u32, &mut Store<V>)>,
    provisioned: Provisioned,
    deferred: &[ModuleEntry],
    resident: Option<&Seed>,
) -> FlowError {
    let decided = match provisioned {
        Provisioned::RamSet {
            set,
            packages,
            boot,
        } => {
            match boot {
                Some(b) if !cfg.test => {
                    log::info!("RAM set: kexec into its boot image from RAM; flash untouched");
                    let cmdline = cfg.carried_cmdline(&b.cmdline);
                    return FlowError::Handoff(handoff::kexec_test(
                        k, paths, &b.image, b.range, &cmdline, &b.ram_dir,
                    ));
                }
                Some(_) => log::info!(
                    "RAM set: this is its boot image (shelfboot.test=1): no second kexec"
                ),
                None => {}
            }
            log::info!(
                "RAM set: booting {} packages from RAM; flash untouched",
                packages.len()
            );
            let layers = packages;
            if let Err(e) = load_deferred(k, deferred) {
                return e;
            }
            // A RAM set: the resident agent runs without the flash (a RAM set never
            // writes it, not even a command stamp) and reports the set as not persisted.
            let mut start =
                |k: &mut dyn Kernel| start_resident::<V>(k, resident, cfg, Some(&set), false, None);
            return FlowError::Handoff(handoff::switch_root(k, paths, &layers, &mut start));
        }
        Provisioned::NoMaster { waited } => {
            log::warn!(
                "no master answered (waited {waited:?}): booting the last committed set on my own"
            );
            None
        }
        Provisioned::Committed { set } => Some(set.digest),
    };
    let Some((ubi, store)) = flash else {
        return FlowError::NothingToBoot;
    };
    let facts = BootFacts {
        stored: cfg.stored,
        autonomous: decided.is_none(),
    };
    let choice = match boot::choose(store, facts) {
        Ok(c) => c,
        Err(StoreError::NothingCommitted) => return FlowError::NothingToBoot,
        Err(e) => return FlowError::Store(e),
    };
    match &choice.counting {
        // Counted before the kexec that started this image: validate, do not count again.
        Counting::Stored => {}
        Counting::Proven => log::info!(
            "the committed set reached Ready on its last boot: this boot without a master is not counted"
        ),
        Counting::Counted(BootDecision::Boot { attempt, .. }) => log::info!(
            "booting committed set, attempt {attempt} of {}",
            cfg.maxtries
        ),
        Counting::Counted(BootDecision::RolledBack { reason, .. }) => {
            log::warn!("committed set rolled back ({reason:?}): booting the previous set")
        }
        Counting::Counted(BootDecision::Exhausted { attempt, .. }) => {
            log::warn!("set failed {attempt} boots and there is no previous set: booting it anyway")
        }
    }
    if let Some(d) = decided.filter(|d| *d != choice.set.digest) {
        log::warn!(
            "the agent decided set {d}, flash boots set {}",
            choice.set.digest
        );
    }
    match choice.target {
        Target::Kexec {
            volume,
            id,
            offset,
            size,
        } => {
            let vols = store.volumes_mut();
            let read = handoff::extent_reader(offset, size, |off: u64, buf: &mut [u8]| {
                vols.read(id, off, buf)
            });
            FlowError::Handoff(handoff::kexec(
                k,
                paths,
                &volume,
                read,
                &cfg.carried_cmdline(&choice.set.cmdline),
            ))
        }
        Target::SwitchRoot { layers } => {
            let layers: Vec<Layer> = layers
                .into_iter()
                .map(|p| {
                    if p.in_segment {
                        Layer::UbiExtent {
                            ubi,
                            vol: p.id.0,
                            name: p.volume,
                            offset: p.offset,
                            size: p.size,
                        }
                    } else {
                        Layer::Ubi {
                            ubi,
                            vol: p.id.0,
                            name: p.volume,
                        }
                    }
                })
                .collect();
            if let Err(e) = load_deferred(k, deferred) {
                return e;
            }
            let set = choice.set.clone();
            let mut start = |k: &mut dyn Kernel| {
                start_resident(k, resident, cfg, Some(&set), true, Some(&mut *store))
            };
            FlowError::Handoff(handoff::switch_root(k, paths, &layers, &mut start))
        }
    }
}

/// Forks the resident agent (in the new root, before its init is exec'd): the child runs
/// it for good; the parent goes on to exec. `set`/`store`: the flash set it runs, none for
/// a RAM test set. Without a seed (no backplane or no trust anchor) there is no agent.
fn start_resident<V: Volumes>(
    k: &mut dyn Kernel,
    seed: Option<&Seed>,
    cfg: &Config,
    set: Option<&SetRecord>,
    persisted: bool,
    store: Option<&mut Store<V>>,
) {
    let Some(seed) = seed else {
        log::warn!(
            "no resident agent after the hand-off (no backplane link or trust anchor): the master cannot reach this card until it resets"
        );
        return;
    };
    match k.fork() {
        Ok(Forked::Child) => crate::resident::run(seed, cfg, set, persisted, store),
        Ok(Forked::Parent(pid)) => log::info!("resident agent started as pid {pid}"),
        Err(e) => log::error!(
            "cannot start the resident agent: {}; the master cannot reach this card until it resets{}",
            shelfboot_proto::report::error_chain(&e),
            if crate::watchdog::armed() {
                ", and the unfed watchdog will reset it"
            } else {
                ""
            }
        ),
    }
}

/// The whole PID-1 flow on the real system; returns only when no hand-off happened.
pub fn run(k: &mut dyn Kernel, roots: &Roots, prov: &mut dyn Provisioner<UbiVolumes>) -> FlowError {
    let t = boottime::now();
    if let Err(e) = mounts::mount_all(k, mounts::MOUNTS, &roots.root) {
        return FlowError::Mounts(e);
    }
    crate::logger::attach_kernel(&roots.dev, &roots.proc);
    boottime::step("mounts", t);
    boottime::cpu_baseline();
    // The agent's nonce needs an initialized CRNG: start waiting for it now.
    crate::entropy::start(&roots.dev.join("urandom"));
    let t = boottime::now();
    let cfg = match Config::load(&roots.cmdline, &roots.sys, &roots.proc) {
        Ok(c) => c,
        Err(e) => return FlowError::Config(e),
    };
    boottime::step("config", t);
    for line in cfg.to_string().lines() {
        log::info!("config: {line}");
    }
    if !cfg.unknown_keys.is_empty() {
        log::warn!(
            "ignoring unknown command-line keys: {}",
            cfg.unknown_keys.join(" ")
        );
    }
    // The link comes up on its own thread as soon as the NIC exists (the NIC driver is
    // loaded first when it is listed first), while the flash modules load and UBI
    // attaches.
    let t = boottime::now();
    let mut link_job = None;
    let deferred = match load_modules(k, roots, &mut || {
        if link_job.is_none() && net::present(&roots.sys, cfg.iface.as_deref()) {
            link_job = Some(LinkJob::start(
                cfg.iface.clone(),
                cfg.mtu,
                cfg.carrier_timeout,
            ));
        }
    }) {
        Ok(d) => d,
        Err(e) => return e,
    };
    boottime::step("modules", t);
    // The watchdog's driver is one of the modules just loaded.
    if let Some(seconds) = cfg.watchdog {
        crate::watchdog::arm(&roots.dev.join("watchdog"), seconds);
    }
    let link_job =
        link_job.unwrap_or_else(|| LinkJob::start(cfg.iface.clone(), cfg.mtu, cfg.carrier_timeout));
    let (ubi, store) = match open_store(k, roots, &cfg) {
        Some((u, s)) => (Some(u), Some(s)),
        None => (None, None),
    };
    let link = match link_job.wait() {
        Ok(l) => Some(l),
        Err(e) => {
            log::error!(
                "backplane link unavailable, no master can be reached: {}",
                shelfboot_proto::report::error_chain(&e)
            );
            None
        }
    };
    let mut session = Session {
        config: &cfg,
        link: link.as_ref(),
        store,
        resident: None,
    };
    let provisioned = match prov.provision(&mut session) {
        Ok(p) => p,
        Err(e) => {
            // The conversation failed before any master answered: autonomy.
            log::error!("{}", shelfboot_proto::report::error_chain(&e));
            Provisioned::NoMaster {
                waited: Duration::ZERO,
            }
        }
    };
    let paths = Paths::default();
    let flash = ubi.zip(session.store.as_mut());
    hand_off(
        k,
        &paths,
        &cfg,
        flash,
        provisioned,
        &deferred,
        session.resident.as_ref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{Call, Recorder};
    use crate::sys::power::Leave;
    use shelfboot_card::flash::FakeVolumes;
    use shelfboot_card::flash::artifact::{ArtifactKind, ArtifactRef};

    /// Version "1": the inventory line below names it.
    fn art(kind: ArtifactKind, name: &str, data: &[u8]) -> ArtifactRef {
        shelfboot_proto::samples::artifact_of(kind, name, "1", data)
    }
    fn deferred_squashfs() -> ModuleEntry {
        ModuleEntry {
            line: 9,
            path: "/lib/modules/6.1.0-56-amd64/kernel/fs/squashfs/squashfs.ko".into(),
            params: String::new(),
        }
    }

    /// A fake flash with one committed set: a boot image and two packages.
    fn committed() -> (FakeVolumes, Store<FakeVolumes>) {
        let dev = FakeVolumes::new(4096, 256);
        let boot = shelfboot_mkinitramfs::bootimage::build(
            b"bzImage-bytes",
            b"cpio-bytes",
            "console=ttyS0",
        )
        .unwrap();
        let arts = [
            (art(ArtifactKind::BootImage, "kernel", &boot), boot.clone()),
            (
                art(ArtifactKind::Package, "base", b"squashfs-base"),
                b"squashfs-base".to_vec(),
            ),
            (
                art(ArtifactKind::Package, "app", b"squashfs-app"),
                b"squashfs-app".to_vec(),
            ),
        ];
        let refs: Vec<ArtifactRef> = arts.iter().map(|(r, _)| r.clone()).collect();
        let (mut s, _) = Store::open(dev.clone(), StoreConfig::default()).unwrap();
        s.begin(&refs, "console=ttyS0 quiet").unwrap();
        for (r, data) in &arts {
            s.stage(r, data.as_slice()).unwrap();
        }
        s.commit().unwrap();
        (dev, s)
    }

    fn cfg(stored: bool) -> Config {
        Config {
            stored,
            ..Config::default()
        }
    }

    #[test]
    fn inventory_line_names_every_artifact_of_the_committed_set() {
        assert_eq!(describe_inventory(None), "nothing committed");
        let (_, s) = committed();
        let inv = s.inventory().unwrap();
        let line = describe_inventory(Some(inv));
        let digest = hex::encode(inv.set.digest);
        assert!(
            line.starts_with(&format!("committed set {digest} (generation ")),
            "{line}"
        );
        assert!(
            line.contains(
                "boot attempts since Ready): boot kernel 1, package base 1, package app 1; previous set none"
            ),
            "{line}"
        );
    }

    #[test]
    fn committed_boot_image_is_counted_then_kexeced_with_the_marker() {
        let (_dev, mut store) = committed();
        let t = tempfile::tempdir().unwrap();
        let paths = Paths {
            stage: t.path().into(),
            ..Paths::default()
        };
        std::fs::create_dir_all(t.path().join("kexec")).unwrap();
        let mut k = Recorder::default();
        let decided = store.inventory().unwrap().set.clone();
        let err = hand_off(
            &mut k,
            &paths,
            &cfg(false),
            Some((0, &mut store)),
            Provisioned::Committed { set: decided },
            // A kexec needs no filesystem module: the deferred ones are never loaded.
            &[deferred_squashfs()],
            None,
        );
        assert!(
            matches!(err, FlowError::Handoff(HandoffError::Final(_))),
            "{err}"
        );
        let dir = t.path().join("kexec");
        assert_eq!(
            k.calls,
            vec![
                Call::Mkdir(dir.clone()),
                Call::KexecLoad(
                    dir.join("kernel"),
                    dir.join("initramfs"),
                    "console=ttyS0 quiet shelfboot.stored=1".into()
                ),
                Call::Leave(Leave::Kexec),
            ]
        );
        assert_eq!(std::fs::read(dir.join("initramfs")).unwrap(), b"cpio-bytes");
        assert_eq!(
            store.inventory().unwrap().attempts,
            1,
            "boot counted before the kexec"
        );
    }

    /// Found by the QEMU autonomy scenario: every master-less boot was counted, so a card
    /// whose master stayed away for `maxtries` power cycles rolled its proven set back to
    /// the previous one (or, without one, booted it calling it failed).
    #[test]
    fn master_less_boots_of_a_proven_set_are_not_counted_and_never_roll_back() {
        let (_dev, mut store) = committed();
        let first = store.inventory().unwrap().set.digest;
        // A second set on top (the first becomes the previous set, a rollback target)...
        let boot = shelfboot_mkinitramfs::bootimage::build(
            b"bzImage-bytes-2",
            b"cpio-bytes-2",
            "console=ttyS0",
        )
        .unwrap();
        let arts = [
            (art(ArtifactKind::BootImage, "kernel", &boot), boot.clone()),
            (
                art(ArtifactKind::Package, "base", b"squashfs-base"),
                b"squashfs-base".to_vec(),
            ),
        ];
        let refs: Vec<ArtifactRef> = arts.iter().map(|(r, _)| r.clone()).collect();
        store.begin(&refs, "console=ttyS0 quiet").unwrap();
        // Only the new boot image is fetched: base is on flash already.
        store.stage(&arts[0].0, arts[0].1.as_slice()).unwrap();
        store.commit().unwrap();
        // ...booted once with the master and Ready.
        store.begin_boot().unwrap();
        store.mark_ready().unwrap();
        let second = store.inventory().unwrap().set.digest;
        assert_eq!(
            store.inventory().unwrap().previous.as_ref().unwrap().digest,
            first
        );
        let t = tempfile::tempdir().unwrap();
        let paths = Paths {
            stage: t.path().into(),
            ..Paths::default()
        };
        let dir = t.path().join("kexec");
        let no_master = || Provisioned::NoMaster {
            waited: Duration::from_secs(30),
        };
        for boot_no in 1..=cfg(false).maxtries + 2 {
            std::fs::create_dir_all(&dir).unwrap();
            let mut k = Recorder::default();
            let err = hand_off(
                &mut k,
                &paths,
                &cfg(false),
                Some((0, &mut store)),
                no_master(),
                &[],
                None,
            );
            assert!(
                matches!(err, FlowError::Handoff(HandoffError::Final(_))),
                "{err}"
            );
            assert!(
                k.calls.contains(&Call::Leave(Leave::Kexec)),
                "{:?}",
                k.calls
            );
            assert_eq!(
                std::fs::read(dir.join("initramfs")).unwrap(),
                b"cpio-bytes-2"
            );
            let inv = store.inventory().unwrap();
            assert_eq!(
                inv.set.digest, second,
                "boot {boot_no} without a master rolled back"
            );
            assert_eq!(
                inv.attempts, 0,
                "boot {boot_no} without a master was counted"
            );
        }
        // A set that has not reached Ready since its last boot is still counted.
        store.begin_boot().unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let mut k = Recorder::default();
        hand_off(
            &mut k,
            &paths,
            &cfg(false),
            Some((0, &mut store)),
            no_master(),
            &[],
            None,
        );
        assert_eq!(store.inventory().unwrap().attempts, 2);
    }

    #[test]
    fn stored_image_switches_root_into_the_packages_without_counting_again() {
        let (_dev, mut store) = committed();
        let name = store
            .inventory()
            .unwrap()
            .set
            .packages()
            .next()
            .unwrap()
            .volume
            .clone();
        let base = store.volume_id(&name).unwrap().unwrap();
        let squashfs = deferred_squashfs();
        let mut k = Recorder {
            ubi_num: 0,
            existing: vec!["/newroot/sbin/init".into(), squashfs.path.clone()],
            ..Recorder::default()
        };
        let decided = store.inventory().unwrap().set.clone();
        let err = hand_off(
            &mut k,
            &Paths::default(),
            &cfg(true),
            Some((2, &mut store)),
            Provisioned::Committed { set: decided },
            std::slice::from_ref(&squashfs),
            None,
        );
        assert!(
            matches!(err, FlowError::Handoff(HandoffError::Final(_))),
            "{err}"
        );
        assert_eq!(
            k.calls[0],
            Call::LoadModule(squashfs.path.clone(), String::new()),
            "modules deferred to the hand-off load before the switch_root"
        );
        let blocks: Vec<&Call> = k
            .calls
            .iter()
            .filter(|c| matches!(c, Call::UbiblockCreate(..)))
            .collect();
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            *blocks[0],
            Call::UbiblockCreate(2, base.0),
            "first package is the bottom layer"
        );
        assert!(!k.calls.iter().any(|c| matches!(c, Call::KexecLoad(..))));
        assert!(matches!(k.calls.last(), Some(Call::ExecInit(..))));
        assert!(
            !k.calls.contains(&Call::Fork),
            "no seed (no backplane): no resident agent"
        );
        assert_eq!(store.inventory().unwrap().attempts, 0);
    }

    #[test]
    fn switch_root_forks_the_resident_agent_in_the_new_root_right_before_exec() {
        let (_dev, mut store) = committed();
        let mut k = Recorder {
            existing: vec!["/newroot/sbin/init".into()],
            ..Recorder::default()
        };
        let seed = Seed {
            anchor: shelfboot_proto::sign::TrustAnchor::new(vec![
                shelfboot_proto::sign::SigningKey::from_seed(&[3; 32]).public_key(),
            ]),
            iface: "eth0".into(),
            mac: shelfboot_proto::frame::MacAddr([2, 0, 0, 0, 0, 1]),
            obeyed: None,
            last_command: None,
        };
        let decided = store.inventory().unwrap().set.clone();
        let err = hand_off(
            &mut k,
            &Paths::default(),
            &cfg(true),
            Some((0, &mut store)),
            Provisioned::Committed { set: decided },
            &[],
            Some(&seed),
        );
        assert!(
            matches!(err, FlowError::Handoff(HandoffError::Final(_))),
            "{err}"
        );
        let tail = &k.calls[k.calls.len() - 4..];
        assert!(matches!(tail[0], Call::CleanInitramfs), "{tail:?}");
        assert!(matches!(tail[1], Call::EnterRoot(_)), "{tail:?}");
        assert_eq!(
            tail[2],
            Call::Fork,
            "forked inside the new root, before its init"
        );
        assert!(matches!(tail[3], Call::ExecInit(..)), "{tail:?}");
    }

    #[test]
    fn nothing_committed_means_nothing_to_boot_and_no_kernel_calls() {
        let (mut store, _) =
            Store::open(FakeVolumes::new(4096, 64), StoreConfig::default()).unwrap();
        let mut k = Recorder::default();
        // The agent's set, which this flash does not hold.
        let decided = committed().1.inventory().unwrap().set.clone();
        let err = hand_off(
            &mut k,
            &Paths::default(),
            &cfg(false),
            Some((0, &mut store)),
            Provisioned::Committed { set: decided },
            &[],
            None,
        );
        assert!(matches!(err, FlowError::NothingToBoot), "{err}");
        let err = hand_off::<FakeVolumes>(
            &mut k,
            &Paths::default(),
            &cfg(false),
            None,
            Provisioned::NoMaster {
                waited: Duration::ZERO,
            },
            &[],
            None,
        );
        assert!(matches!(err, FlowError::NothingToBoot), "{err}");
        assert!(k.calls.is_empty());
    }

    #[test]
    fn test_mode_boots_tmpfs_packages_and_leaves_flash_alone() {
        let (dev, mut store) = committed();
        let before = dev.ops().len();
        let mut k = Recorder {
            existing: vec!["/newroot/sbin/init".into()],
            ..Recorder::default()
        };
        let packages = [
            PathBuf::from("/run/shelfboot/test/0.sqfs"),
            PathBuf::from("/run/shelfboot/test/1.sqfs"),
        ];
        let set = store.inventory().unwrap().set.clone();
        let err = hand_off(
            &mut k,
            &Paths::default(),
            &cfg(false),
            Some((0, &mut store)),
            Provisioned::RamSet {
                set,
                packages: packages.iter().cloned().map(Layer::File).collect(),
                boot: None,
            },
            &[],
            None,
        );
        assert!(
            matches!(err, FlowError::Handoff(HandoffError::Final(_))),
            "{err}"
        );
        let loops: Vec<&Call> = k
            .calls
            .iter()
            .filter(|c| matches!(c, Call::LoopAttach(_)))
            .collect();
        assert_eq!(
            loops,
            [
                &Call::LoopAttach(packages[0].clone()),
                &Call::LoopAttach(packages[1].clone())
            ]
        );
        assert!(
            !k.calls
                .iter()
                .any(|c| matches!(c, Call::UbiblockCreate(..)))
        );
        assert_eq!(dev.ops().len(), before, "no flash operation in test mode");
        assert_eq!(store.inventory().unwrap().attempts, 0);
    }

    #[test]
    fn no_agent_reports_no_master_without_touching_anything() {
        let (dev, store) = committed();
        let before = dev.ops().len();
        let c = Config::default();
        let mut s = Session {
            config: &c,
            link: None,
            store: Some(store),
            resident: None,
        };
        let p = Provisioner::<FakeVolumes>::provision(&mut NoAgent, &mut s).unwrap();
        assert_eq!(
            p,
            Provisioned::NoMaster {
                waited: Duration::ZERO
            }
        );
        assert_eq!(dev.ops().len(), before);
    }

    /// A test set in a RAM store: a boot image and two packages, as files.
    fn ram_set(dir: &std::path::Path) -> RamBoot {
        let boot =
            shelfboot_mkinitramfs::bootimage::build(b"bz-test", b"initrd-test", "quiet").unwrap();
        std::fs::create_dir_all(dir.join("ram/blobs")).unwrap();
        std::fs::write(dir.join("ram/table"), b"table").unwrap();
        std::fs::write(dir.join("ram/blobs/v0-0"), &boot).unwrap();
        RamBoot {
            image: dir.join("ram/blobs/v0-0"),
            range: None,
            cmdline: "console=ttyS0 quiet".into(),
            ram_dir: dir.join("ram"),
        }
    }

    #[test]
    fn test_set_with_a_boot_image_is_kexeced_from_ram_carrying_the_store() {
        let (dev, mut store) = committed();
        let before = dev.ops().len();
        let inv_before = store.inventory().cloned();
        let t = tempfile::tempdir().unwrap();
        let boot = ram_set(t.path());
        let paths = Paths {
            stage: t.path().join("stage"),
            ..Paths::default()
        };
        std::fs::create_dir_all(t.path().join("stage/kexec")).unwrap();
        let mut k = Recorder::default();
        let c = Config {
            slot: Some(4),
            ..Config::default()
        };
        let set = store.inventory().unwrap().set.clone();
        let err = hand_off(
            &mut k,
            &paths,
            &c,
            Some((0, &mut store)),
            Provisioned::RamSet {
                set,
                packages: vec![Layer::File(t.path().join("ram/blobs/v1-0"))],
                boot: Some(boot),
            },
            &[],
            None,
        );
        assert!(
            matches!(err, FlowError::Handoff(HandoffError::Final(_))),
            "{err}"
        );
        let dir = t.path().join("stage/kexec");
        assert_eq!(
            k.calls[1..],
            [
                Call::KexecLoad(
                    dir.join("kernel"),
                    dir.join("initramfs"),
                    "console=ttyS0 quiet shelfboot.slot=4 shelfboot.test=1".into()
                ),
                Call::Leave(Leave::Kexec),
            ]
        );
        let initrd = std::fs::read(dir.join("initramfs")).unwrap();
        assert!(
            initrd.starts_with(b"initrd-test"),
            "image's initramfs first"
        );
        let carried = String::from_utf8_lossy(&initrd[11..]).to_string();
        assert!(carried.contains("shelfboot-test/ram/table"), "{carried}");
        assert!(
            carried.contains("shelfboot-test/ram/blobs/v0-0"),
            "{carried}"
        );
        assert_eq!(dev.ops().len(), before, "flash untouched");
        assert_eq!(
            store.inventory().cloned(),
            inv_before,
            "boot counter untouched"
        );
    }

    /// The hand-off went into `pkg` over a loop device, without a kexec.
    fn assert_switched_root_over_ram(err: &FlowError, k: &Recorder, pkg: &std::path::Path) {
        assert!(
            matches!(err, FlowError::Handoff(HandoffError::Final(_))),
            "{err}"
        );
        assert!(!k.calls.iter().any(|c| matches!(c, Call::KexecLoad(..))));
        assert!(k.calls.contains(&Call::LoopAttach(pkg.to_path_buf())));
        assert!(matches!(k.calls.last(), Some(Call::ExecInit(..))));
    }

    #[test]
    fn kexeced_test_image_switches_root_into_ram_packages_without_counting() {
        let (dev, mut store) = committed();
        let before = dev.ops().len();
        let t = tempfile::tempdir().unwrap();
        let boot = ram_set(t.path());
        let mut k = Recorder {
            existing: vec!["/newroot/sbin/init".into()],
            ..Recorder::default()
        };
        let c = Config {
            test: true,
            ..Config::default()
        };
        let pkgs = [PathBuf::from("/shelfboot-test/ram/blobs/v1-0")];
        let set = store.inventory().unwrap().set.clone();
        let err = hand_off(
            &mut k,
            &Paths::default(),
            &c,
            Some((0, &mut store)),
            Provisioned::RamSet {
                set,
                packages: pkgs.iter().cloned().map(Layer::File).collect(),
                boot: Some(boot),
            },
            &[],
            None,
        );
        assert_switched_root_over_ram(&err, &k, &pkgs[0]);
        assert_eq!(dev.ops().len(), before);
        assert_eq!(store.inventory().unwrap().attempts, 0);
    }

    #[test]
    fn card_without_flash_kexecs_and_switches_root_into_its_ram_set() {
        let (_, store) = committed();
        let set = store.inventory().unwrap().set.clone();
        let t = tempfile::tempdir().unwrap();
        let boot = ram_set(t.path());
        let pkgs = [PathBuf::from("/run/shelfboot/ram/blobs/v1-0")];
        let ram_set = |boot| Provisioned::RamSet {
            set: set.clone(),
            packages: pkgs.iter().cloned().map(Layer::File).collect(),
            boot: Some(boot),
        };
        // Cold boot: the set's boot image is kexec'd from RAM (no flash to stage it on).
        let paths = Paths {
            stage: t.path().join("stage"),
            ..Paths::default()
        };
        std::fs::create_dir_all(t.path().join("stage/kexec")).unwrap();
        let mut k = Recorder::default();
        let err = hand_off::<FakeVolumes>(
            &mut k,
            &paths,
            &Config::default(),
            None,
            ram_set(boot.clone()),
            &[],
            None,
        );
        assert!(
            matches!(err, FlowError::Handoff(HandoffError::Final(_))),
            "{err}"
        );
        assert!(matches!(k.calls.last(), Some(Call::Leave(Leave::Kexec))));
        // The kexec'd image: the packages from RAM, no second kexec.
        let mut k = Recorder {
            existing: vec!["/newroot/sbin/init".into()],
            ..Recorder::default()
        };
        let c = Config {
            test: true,
            ..Config::default()
        };
        let err = hand_off::<FakeVolumes>(
            &mut k,
            &Paths::default(),
            &c,
            None,
            ram_set(boot),
            &[],
            None,
        );
        assert_switched_root_over_ram(&err, &k, &pkgs[0]);
    }
}
