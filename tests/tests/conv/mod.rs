//! Shared fixture of the conversation tests: a master state directory with a signed
//! release of 3 card types imported, the master service and simulated cards run in
//! threads inside a test-kit [`Lab`] namespace, and checks against the master's blobs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::ScopedJoinHandle;
use std::time::Duration;

use shelfboot_card::agent::Timers;
use shelfboot_card::flash::{FileVolumes, Store, StoreConfig, Volumes};
use shelfboot_card::sim::{CardReport, SimCard, SimConfig};
use shelfboot_master::serve::{self, ServeConfig, ServeStats};
use shelfboot_master::state::Master;
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::{Arch, BootPhase, Digest};
use shelfboot_proto::sign::TrustAnchor;
use shelfboot_testkit::netns::Lab;

/// Card types of the fixture release: (type, arch, boot image name).
pub const TYPES: [(&str, Arch, &str); 3] = [
    ("lc100", Arch::X86_64, "lc-kernel"),
    ("lc200", Arch::Aarch64, "lc-kernel"),
    ("fab10", Arch::X86_64, "fab-kernel"),
];

/// Deterministic pseudo-random bytes (xorshift), so artifacts do not compress.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A master state directory with the fixture release imported.
pub struct Fixture {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub anchor: TrustAnchor,
}

impl Fixture {
    /// Builds and imports a release whose artifacts are `unit` bytes × a small factor:
    /// boot images 3 units, `base` (every card) 4 units, `routing` (line cards) 2 units,
    /// `fabric-mgr` (fabric cards) 1 unit.
    pub fn new(dir: &Path, unit: usize) -> Fixture {
        Fixture::with_packages(dir, unit, 0)
    }

    /// Like [`Fixture::new`], plus `extra` small packages (2-6 KiB, names of 64 bytes) that
    /// every card takes: a plan of 3 + `extra` artifacts.
    pub fn with_packages(dir: &Path, unit: usize, extra: usize) -> Fixture {
        let files = dir.join("files");
        std::fs::create_dir_all(&files).unwrap();
        let mut toml = String::from("[release]\nname = \"shelf-os\"\nversion = \"1.0.0\"\n\n");
        let boots = [
            ("lc-kernel", "lc100", "x86_64", 1),
            ("lc-kernel", "lc200", "aarch64", 2),
            ("fab-kernel", "fab10", "x86_64", 3),
        ];
        for (name, ct, arch, seed) in boots {
            let file = format!("{name}-{ct}.img");
            std::fs::write(files.join(&file), bytes(seed, 3 * unit)).unwrap();
            toml.push_str(&format!(
                "[[boot]]\nname = \"{name}\"\nversion = \"6.1.0\"\ncard_type = \"{ct}\"\n\
                 arch = \"{arch}\"\nimage = \"files/{file}\"\ncmdline = \"console=ttyS0\"\n\n"
            ));
        }
        let pkgs = [
            ("base", 4, &[][..]),
            ("routing", 2, &[("base", "^1")][..]),
            ("fabric-mgr", 1, &[("base", "^1")][..]),
        ];
        for (arch_i, arch) in ["x86_64", "aarch64"].iter().enumerate() {
            for (i, (name, units, deps)) in pkgs.iter().enumerate() {
                let file = format!("{name}-{arch}.sqfs");
                let seed = 100 + (arch_i * 10 + i) as u64;
                std::fs::write(files.join(&file), bytes(seed, units * unit)).unwrap();
                let deps: Vec<String> =
                    deps.iter().map(|(d, r)| format!("{d} = \"{r}\"")).collect();
                toml.push_str(&format!(
                    "[[package]]\nname = \"{name}\"\nversion = \"1.0.0\"\narch = \"{arch}\"\n\
                     file = \"files/{file}\"\nprovides = []\ndepends = {{ {} }}\n\n",
                    deps.join(", ")
                ));
            }
        }
        let mut defaults = vec!["base = \"^1\"".to_string()];
        for i in 0..extra {
            let name = format!("pkg-{i:0>60}");
            defaults.push(format!("\"{name}\" = \"^1\""));
            for (arch_i, arch) in ["x86_64", "aarch64"].iter().enumerate() {
                let file = format!("{name}-{arch}.sqfs");
                let len = 2048 + (i * 61 + arch_i * 17) % 4096;
                std::fs::write(
                    files.join(&file),
                    bytes(1000 + (i * 2 + arch_i) as u64, len),
                )
                .unwrap();
                toml.push_str(&format!(
                    "[[package]]\nname = \"{name}\"\nversion = \"1.0.0\"\narch = \"{arch}\"\n\
                     file = \"files/{file}\"\nprovides = []\ndepends = {{}}\n\n"
                ));
            }
        }
        toml.push_str(&format!(
            "[[class]]\nname = \"linecards\"\nmatch = {{ card_types = [\"lc100\", \"lc200\"] }}\n\
             boot = \"lc-kernel\"\npackages = {{ routing = \"^1\" }}\n\n\
             [[class]]\nname = \"fabric\"\nmatch = {{ card_types = [\"fab10\"] }}\n\
             boot = \"fab-kernel\"\npackages = {{ fabric-mgr = \"^1\" }}\n\n\
             [defaults]\npackages = {{ {} }}\n",
            defaults.join(", ")
        ));
        Fixture::from_toml(dir, &toml)
    }

    /// A master state directory under `dir` that trusts a new vendor key and has imported
    /// the release `toml` describes (its files already under `dir`).
    pub fn from_toml(dir: &Path, toml: &str) -> Fixture {
        let (_, public, _) = shelfboot_master::keys::keygen(&dir.join("vendor")).unwrap();
        let state = dir.join("state");
        let mut m = Master::open(&state).unwrap();
        m.trust_add(&public, "test vendor").unwrap();
        drop(m);
        Fixture::import_toml_into(dir, &state, toml)
    }

    /// Packs `toml` (files under `self.dir`) with the fixture's vendor key and imports it;
    /// it becomes the default release.
    pub fn import_toml(&self, toml: &str) {
        Fixture::import_toml_into(&self.dir, &self.state, toml);
    }

    fn import_toml_into(dir: &Path, state: &Path, toml: &str) -> Fixture {
        let n = std::fs::read_dir(dir).map_or(0, |d| d.count());
        let spec = dir.join(format!("system-{n}.toml"));
        std::fs::write(&spec, toml).unwrap();
        let key = shelfboot_master::keys::read_signing_key(&dir.join("vendor.key")).unwrap();
        let packed = shelfboot_master::image::pack::prepare(&spec).unwrap();
        let image = dir.join(format!("release-{n}.img"));
        shelfboot_master::image::pack::write_image(&packed, &key, &image).unwrap();
        let mut m = Master::open(state).unwrap();
        m.import_file(&image, true, &mut |_, _| {}).unwrap();
        drop(m);
        let state = state.to_path_buf();
        let cfg = ServeConfig::new("unused", &state);
        let key = serve::load_key(&cfg).unwrap();
        let anchor = TrustAnchor::new(vec![key.public_key()]);
        Fixture {
            dir: dir.to_path_buf(),
            state,
            anchor,
        }
    }

    /// The master's serve settings for `iface` in tests (rate capped so that one
    /// simulation process keeps up without kernel drops).
    pub fn serve_config(&self, iface: &str) -> ServeConfig {
        let mut c = ServeConfig::new(iface, &self.state);
        c.max_rate = 6_000_000;
        c.join_window = Duration::from_millis(300);
        c
    }

    /// `n` cards, types round robin, MACs 02:5c:00:00:00:i, flash under `dir/cards`.
    pub fn cards(&self, n: usize) -> Vec<SimCard> {
        (1..=n)
            .map(|i| {
                let (ct, arch, _) = TYPES[(i - 1) % TYPES.len()];
                let b = u16::try_from(i).unwrap().to_be_bytes();
                SimCard {
                    mac: MacAddr([0x02, 0x5c, 0, 0, b[0], b[1]]),
                    card_type: ct.into(),
                    arch,
                    shelf: 1,
                    slot: u16::try_from(i).unwrap(),
                    features: vec![],
                    dir: self.dir.join("cards").join(format!("card-{i}")),
                }
            })
            .collect()
    }

    /// Simulation settings for `cards` on `iface`.
    pub fn sim_config(&self, iface: &str, cards: Vec<SimCard>, timeout: Duration) -> SimConfig {
        SimConfig {
            iface: iface.into(),
            ethertype: shelfboot_proto::DEFAULT_ETHERTYPE,
            anchor: self.anchor.clone(),
            cards,
            leb_size: 64 * 1024,
            total_lebs: 1024,
            phase: BootPhase::PowerOn,
            timers: Timers::default(),
            timeout,
            report: None,
        }
    }

    /// Blob bytes of the master for `sha`.
    pub fn blob(&self, sha: &Digest) -> Vec<u8> {
        let m = Master::open(&self.state).unwrap();
        std::fs::read(m.blobs().path(sha)).unwrap()
    }

    /// Checks that `card`'s committed flash holds its plan's artifacts, each byte-identical
    /// to the master's blob. Returns the number of artifacts compared.
    pub fn check_card(&self, card: &SimCard) -> usize {
        let vols = FileVolumes::open(&card.dir).unwrap();
        let (mut store, _) = Store::open(vols, StoreConfig::default()).unwrap();
        let inv = store.inventory().cloned().expect("card committed a set");
        let m = Master::open(&self.state).unwrap();
        let plan = m.plan(&card.mac).expect("card has a plan");
        assert_eq!(
            inv.set.digest, plan.digest,
            "card {} holds its plan",
            card.mac
        );
        for a in &inv.set.artifacts {
            let id = store.volume_id(&a.volume).unwrap().expect("volume exists");
            let want = std::fs::read(m.blobs().path(&a.artifact.sha256)).unwrap();
            let mut got = vec![0u8; want.len()];
            let mut off = 0;
            while off < got.len() {
                let n = store
                    .volumes_mut()
                    .read(id, a.offset + off as u64, &mut got[off..])
                    .unwrap();
                assert!(n > 0, "short volume {}", a.volume);
                off += n;
            }
            assert!(
                got == want,
                "card {} artifact {} differs from the blob",
                card.mac,
                a.volume
            );
        }
        inv.set.artifacts.len()
    }
}

/// Runs the master service on port 0 of `lab` in a scoped thread until `stop`.
pub fn spawn_master<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    lab: &'s Lab,
    cfg: ServeConfig,
    stop: Arc<AtomicBool>,
) -> ScopedJoinHandle<'s, ServeStats> {
    scope.spawn(move || {
        lab.enter().unwrap();
        serve::run(&cfg, &stop).unwrap()
    })
}

/// Runs the simulation in a scoped thread inside `lab`.
pub fn spawn_cards<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    lab: &'s Lab,
    cfg: SimConfig,
    stop: Arc<AtomicBool>,
) -> ScopedJoinHandle<'s, Vec<CardReport>> {
    scope.spawn(move || {
        lab.enter().unwrap();
        shelfboot_card::sim::run(&cfg, &stop).unwrap()
    })
}

/// Sets `stop` after `d` (bounded wait helper).
pub fn stop_after(stop: &AtomicBool, d: Duration) {
    std::thread::sleep(d);
    stop.store(true, Ordering::Relaxed);
}

/// Every card decided to boot after fetching (not validated-only, not autonomous).
pub fn assert_all_fetched(reports: &[CardReport]) {
    for r in reports {
        assert!(
            r.decision == "kexec" && !r.autonomous,
            "card {} did not finish: {r:?}",
            r.mac
        );
    }
}

/// Logs of the library crates to stderr when RUST_LOG is set.
pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// Tests of one binary run one at a time (cargo runs them on parallel threads): they are
/// CPU-bound simulations and the byte-count bounds assume the simulator keeps up.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
