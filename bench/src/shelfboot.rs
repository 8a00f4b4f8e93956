//! shelfboot in the benchmark: a master state directory whose release holds the
//! benchmark artifact as the boot image of card type `bench`, or a multi-package release
//! of three card types ([`ReleaseShape`], built and signed with the master's own `pack`
//! and `import`), and the two child processes the benchmark starts inside the namespaces: `serve-child` (the real
//! `master serve` service, `shelfboot_master::serve::run`) and `card-child` (the real
//! simulated-card runner, `shelfboot_card::sim::run`, with file-backed flash).
//!
//! The children are this binary re-executed with a hidden subcommand: `master` has no
//! `serve` subcommand yet, and separate processes give the master's CPU time
//! (`/proc/PID/stat`) and the card's peak RSS (`VmHWM`) without the harness in them.
//! This module does not judge the results; `scenarios` does.

use std::fmt::Write as _;
use std::io::Read as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shelfboot_card::agent::Timers;
use shelfboot_card::flash::{FileVolumes, Store, StoreConfig, Volumes as _};
use shelfboot_card::sim::{self, SimCard, SimConfig};
use shelfboot_master::serve::{self, ServeConfig};
use shelfboot_master::state::Master;
use shelfboot_master::store::NodeIdentity;
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::{Arch, BootPhase, Digest, set_digest};
use shelfboot_proto::sign::TrustAnchor;

/// Card type of the benchmark release.
pub const CARD_TYPE: &str = "bench";
/// LEB size of the simulated cards' flash.
pub const LEB: u64 = 128 * 1024;

/// Failures while preparing or running shelfboot.
#[derive(Debug, thiserror::Error)]
pub enum ShelfError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the benchmark release in {dir}: {step}")]
    Release {
        dir: PathBuf,
        step: &'static str,
        #[source]
        source: anyhow::Error,
    },
    #[error("reading the trust anchor {path}")]
    Anchor {
        path: PathBuf,
        #[source]
        source: anyhow::Error,
    },
    #[error("master serve on {iface}")]
    Serve {
        iface: String,
        #[source]
        source: Box<serve::ServeError>,
    },
    #[error("simulated cards on {iface}")]
    Sim {
        iface: String,
        #[source]
        source: Box<sim::SimError>,
    },
    #[error("flash of simulated card {mac} in {dir}: {step}")]
    Flash {
        mac: String,
        dir: PathBuf,
        step: &'static str,
        #[source]
        source: anyhow::Error,
    },
}

/// A master state with the artifact imported.
#[derive(Debug, Clone)]
pub struct ShelfState {
    pub state: PathBuf,
    pub anchor: PathBuf,
    pub size: u64,
}

fn write(path: &Path, data: &[u8]) -> Result<(), ShelfError> {
    std::fs::write(path, data).map_err(|source| ShelfError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Builds `dir/state`: a signed release whose class `benchcards` (card type `bench`)
/// boots `artifact` and needs no package; imported and made the default.
pub fn prepare(dir: &Path, artifact: &Path, size: u64) -> Result<ShelfState, ShelfError> {
    let rel = |step: &'static str| {
        let dir = dir.to_path_buf();
        move |e: anyhow::Error| ShelfError::Release {
            dir: dir.clone(),
            step,
            source: e,
        }
    };
    let spec = dir.join("system.toml");
    let toml = format!(
        "[release]\nname = \"bench-os\"\nversion = \"1.0.0\"\n\n\
         [[boot]]\nname = \"bench-kernel\"\nversion = \"1.0.0\"\ncard_type = \"{CARD_TYPE}\"\n\
         arch = \"x86_64\"\nimage = \"{}\"\ncmdline = \"console=ttyS0\"\n\n\
         [[class]]\nname = \"benchcards\"\nmatch = {{ card_types = [\"{CARD_TYPE}\"] }}\n\
         boot = \"bench-kernel\"\npackages = {{}}\n",
        artifact.display()
    );
    write(&spec, toml.as_bytes())?;
    let (secret, public, _) =
        shelfboot_master::keys::keygen(&dir.join("vendor")).map_err(|e| rel("keygen")(e.into()))?;
    let image = dir.join("release.img");
    pack(dir, &spec, &secret, &image)?;
    // The image holds a copy of the artifact; the blob store gets another.
    let st = new_state(&dir.join("state"), &public, &image, size)?;
    let _ = std::fs::remove_file(&image);
    Ok(st)
}

/// Packs the release `spec` describes into the signed image `image` with the vendor key
/// `secret` (the master's `pack`).
fn pack(dir: &Path, spec: &Path, secret: &Path, image: &Path) -> Result<(), ShelfError> {
    let rel = |step: &'static str| {
        let dir = dir.to_path_buf();
        move |e: anyhow::Error| ShelfError::Release {
            dir: dir.clone(),
            step,
            source: e,
        }
    };
    let key = shelfboot_master::keys::read_signing_key(secret)
        .map_err(|e| rel("reading the vendor key")(e.into()))?;
    let packed = shelfboot_master::image::pack::prepare(spec).map_err(|e| rel("pack")(e.into()))?;
    shelfboot_master::image::pack::write_image(&packed, &key, image)
        .map_err(|e| rel("write image")(e.into()))?;
    Ok(())
}

/// A new master state directory `state` that trusts the vendor key `public` and has
/// imported `image` as its default release, with the plan-signing key generated
/// (`STATE/plan.anchor` is the cards' trust anchor). `size` is what a card must hold.
fn new_state(
    state: &Path,
    public: &Path,
    image: &Path,
    size: u64,
) -> Result<ShelfState, ShelfError> {
    let rel = |step: &'static str| {
        let dir = state.to_path_buf();
        move |e: anyhow::Error| ShelfError::Release {
            dir: dir.clone(),
            step,
            source: e,
        }
    };
    let mut m = Master::open(state).map_err(|e| rel("open state")(e.into()))?;
    m.trust_add(public, "bench vendor")
        .map_err(|e| rel("trust add")(e.into()))?;
    m.import_file(image, true, &mut |_, _| {})
        .map_err(|e| rel("import")(e.into()))?;
    drop(m);
    let cfg = ServeConfig::new("unused", state);
    // Generates STATE/plan.key and writes STATE/plan.anchor (the cards' trust anchor).
    serve::load_key(&cfg).map_err(|e| rel("plan key")(e.into()))?;
    Ok(ShelfState {
        state: state.to_path_buf(),
        anchor: state.join("plan.anchor"),
        size,
    })
}

/// Card types of the multi-package release: (card type, arch, boot image name), the
/// three types of the conversation tests' release. Card `i` (1-based) is type
/// `(i - 1) % 3`.
pub const RELEASE_TYPES: [(&str, Arch, &str); 3] = [
    ("lc100", Arch::X86_64, "lc-kernel"),
    ("lc200", Arch::Aarch64, "lc-kernel"),
    ("fab10", Arch::X86_64, "fab-kernel"),
];

/// Size and update of the multi-package release: packages `0..large` are `large_bytes`,
/// the next `medium` are `medium_bytes`, the rest 1 KiB plus up to `small_spread` bytes;
/// each package is built for both archs with different bytes; every card takes every
/// package of its arch and its type's boot image (`boot_bytes`). The update changes the
/// packages in `changed` (new version, new bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseShape {
    pub packages: usize,
    pub large: usize,
    pub large_bytes: u64,
    pub medium: usize,
    pub medium_bytes: u64,
    pub small_spread: u64,
    pub boot_bytes: u64,
    pub changed: Range<usize>,
}

impl ReleaseShape {
    /// The real-size release of the conversation tests: 200 packages of 1 KiB to 4 MiB
    /// (six of 4 MiB, five of 1.5 MiB), 33 MiB per arch; the update changes 20 small ones.
    pub const FULL: ReleaseShape = ReleaseShape {
        packages: 200,
        large: 6,
        large_bytes: 4 << 20,
        medium: 5,
        medium_bytes: 3 << 19,
        small_spread: 15 * 1024,
        boot_bytes: 96 * 1024,
        changed: 100..120,
    };

    /// The smoke-test release: 40 packages of 1 KiB to 1 MiB, 2.9 MiB per arch; the
    /// update changes 4.
    pub const QUICK: ReleaseShape = ReleaseShape {
        packages: 40,
        large: 2,
        large_bytes: 1 << 20,
        medium: 2,
        medium_bytes: 256 * 1024,
        small_spread: 3 * 1024,
        boot_bytes: 32 * 1024,
        changed: 20..24,
    };

    /// Bytes of package `i` built for arch number `arch_i` (0 x86_64, 1 aarch64).
    pub fn size(&self, i: usize, arch_i: usize) -> u64 {
        if i < self.large {
            self.large_bytes
        } else if i < self.large + self.medium {
            self.medium_bytes
        } else {
            1024 + (i as u64 * 977 + arch_i as u64 * 131) % self.small_spread.max(1)
        }
    }

    /// Bytes of every package build of both archs and every boot image.
    pub fn release_bytes(&self) -> u64 {
        let pkgs: u64 = (0..self.packages)
            .map(|i| self.size(i, 0) + self.size(i, 1))
            .sum();
        pkgs + RELEASE_TYPES.len() as u64 * self.boot_bytes
    }

    /// The most one card holds: the packages of the larger arch and a boot image.
    pub fn card_bytes(&self) -> u64 {
        let arch = |a| (0..self.packages).map(|i| self.size(i, a)).sum::<u64>();
        arch(0).max(arch(1)) + self.boot_bytes
    }

    /// Name of package `i`: 64 bytes, as in a real release's longest names.
    pub fn package_name(i: usize) -> String {
        format!("p{i:03}-{}", "x".repeat(59))
    }

    /// Writes the artifact files of release `version` under `dir/files` (a file already
    /// there is kept: the update reuses the unchanged packages' files) and returns its
    /// `system.toml` text. With `update`, the packages in `changed` are version 1.0.1
    /// with other bytes.
    pub fn write_files(&self, dir: &Path, version: &str, update: bool) -> std::io::Result<String> {
        let files = dir.join("files");
        std::fs::create_dir_all(&files)?;
        let mut toml = format!("[release]\nname = \"shelf-os\"\nversion = \"{version}\"\n\n");
        for (i, (ct, arch, boot)) in RELEASE_TYPES.iter().enumerate() {
            let file = format!("{boot}-{ct}.img");
            let path = files.join(&file);
            if !path.exists() {
                crate::scenarios::write_artifact(&path, self.boot_bytes, 1 + i as u64)?;
            }
            let _ = write!(
                toml,
                "[[boot]]\nname = \"{boot}\"\nversion = \"6.1.0\"\ncard_type = \"{ct}\"\n\
                 arch = \"{arch}\"\nimage = \"files/{file}\"\ncmdline = \"console=ttyS0\"\n\n"
            );
        }
        let mut wanted = Vec::new();
        for i in 0..self.packages {
            let name = Self::package_name(i);
            let changed = update && self.changed.contains(&i);
            let v = if changed { "1.0.1" } else { "1.0.0" };
            wanted.push(format!("\"{name}\" = \"^1\""));
            for (arch_i, arch) in ["x86_64", "aarch64"].iter().enumerate() {
                let file = format!("{name}-{v}-{arch}.sqfs");
                let path = files.join(&file);
                if !path.exists() {
                    let seed = (i * 2 + arch_i) as u64 + if changed { 20_000 } else { 10_000 };
                    crate::scenarios::write_artifact(&path, self.size(i, arch_i), seed)?;
                }
                let _ = write!(
                    toml,
                    "[[package]]\nname = \"{name}\"\nversion = \"{v}\"\narch = \"{arch}\"\n\
                     file = \"files/{file}\"\n\n"
                );
            }
        }
        let _ = write!(
            toml,
            "[[class]]\nname = \"linecards\"\nmatch = {{ card_types = [\"lc100\", \"lc200\"] }}\n\
             boot = \"lc-kernel\"\n\n\
             [[class]]\nname = \"fabric\"\nmatch = {{ card_types = [\"fab10\"] }}\n\
             boot = \"fab-kernel\"\n\n\
             [defaults]\npackages = {{ {} }}\n",
            wanted.join(", ")
        );
        Ok(toml)
    }
}

/// The two signed images of a multi-package release and its update, packed once per
/// benchmark run; each measured round imports them into a fresh state.
#[derive(Debug, Clone)]
pub struct ReleaseImages {
    /// The vendor's public key (the master trusts it).
    pub public: PathBuf,
    /// The release.
    pub first: PathBuf,
    /// The release with the shape's `changed` packages replaced.
    pub update: PathBuf,
    /// The most one card holds (its flash is sized from it).
    pub card_bytes: u64,
}

/// Writes the files of `shape`'s release and its update under `dir` and packs both
/// with a new vendor key.
pub fn release_images(dir: &Path, shape: &ReleaseShape) -> Result<ReleaseImages, ShelfError> {
    let (secret, public, _) =
        shelfboot_master::keys::keygen(&dir.join("vendor")).map_err(|e| ShelfError::Release {
            dir: dir.to_path_buf(),
            step: "keygen",
            source: e.into(),
        })?;
    let image = |version: &str, update: bool| -> Result<PathBuf, ShelfError> {
        let toml = shape
            .write_files(dir, version, update)
            .map_err(|source| ShelfError::Write {
                path: dir.join("files"),
                source,
            })?;
        let spec = dir.join(format!("system-{version}.toml"));
        write(&spec, toml.as_bytes())?;
        let image = dir.join(format!("release-{version}.img"));
        pack(dir, &spec, &secret, &image)?;
        Ok(image)
    };
    let first = image("1.0.0", false)?;
    let update = image("1.1.0", true)?;
    // The images hold every artifact; the files are not needed any more.
    let _ = std::fs::remove_dir_all(dir.join("files"));
    Ok(ReleaseImages {
        public,
        first,
        update,
        card_bytes: shape.card_bytes(),
    })
}

/// A fresh master state `state` with the release (not the update) of `im` imported.
pub fn release_state(state: &Path, im: &ReleaseImages) -> Result<ShelfState, ShelfError> {
    new_state(state, &im.public, &im.first, im.card_bytes)
}

/// Imports the update of `im` into `st` and makes it the default release.
pub fn import_update(st: &ShelfState, im: &ReleaseImages) -> Result<(), ShelfError> {
    let rel = |step: &'static str| {
        let dir = st.state.clone();
        move |e: anyhow::Error| ShelfError::Release {
            dir: dir.clone(),
            step,
            source: e,
        }
    };
    let mut m = Master::open(&st.state).map_err(|e| rel("open state")(e.into()))?;
    m.import_file(&im.update, true, &mut |_, _| {})
        .map_err(|e| rel("import the update")(e.into()))?;
    Ok(())
}

/// Flash geometry for a card that must hold `size` bytes (the set, plus headroom).
pub fn lebs_for(size: u64) -> u64 {
    size.div_ceil(LEB) * 2 + 64
}

fn card(mac: MacAddr, slot: u16, dir: PathBuf, card_type: &str, arch: Arch) -> SimCard {
    SimCard {
        mac,
        card_type: card_type.into(),
        arch,
        shelf: 1,
        slot,
        features: vec![],
        dir,
    }
}

/// MAC `base` + `i`.
fn mac_plus(base: MacAddr, i: u64) -> MacAddr {
    let b = base.0;
    let n = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]) + i;
    let x = n.to_be_bytes();
    MacAddr([x[2], x[3], x[4], x[5], x[6], x[7]])
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<MacAddr> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    Some(MacAddr(v.try_into().ok()?))
}

/// Factory state for a warm boot: `n` cards (MACs `base`+0..n) registered with the
/// master and their flash burned with their plan from the blobs, as after a provisioning.
pub fn burn_warm(st: &ShelfState, dir: &Path, base: MacAddr, n: usize) -> Result<(), ShelfError> {
    let mut m = Master::open(&st.state).map_err(|e| ShelfError::Release {
        dir: st.state.clone(),
        step: "open state",
        source: e.into(),
    })?;
    for i in 0..n {
        let mac = mac_plus(base, i as u64);
        let cdir = dir.join(format!("card-{}", i + 1));
        let fl = |step: &'static str| {
            let (mac, cdir) = (mac.to_string(), cdir.clone());
            move |e: anyhow::Error| ShelfError::Flash {
                mac: mac.clone(),
                dir: cdir.clone(),
                step,
                source: e,
            }
        };
        let mmac = mac
            .to_string()
            .parse()
            .map_err(|e| fl("MAC")(anyhow::anyhow!("{e:?}")))?;
        let id = NodeIdentity {
            mac: mmac,
            card_type: CARD_TYPE.into(),
            arch: shelfboot_proto::id::Arch::X86_64,
            shelf: 1,
            slot: u32::try_from(i + 1).unwrap_or(u32::MAX),
            hw_rev: "sim".into(),
            features: vec![],
        };
        m.add_node(&id, None)
            .map_err(|e| fl("add node")(e.into()))?;
        let plan = m.plan(&id.mac).map_err(|e| fl("plan")(e.into()))?;
        let vols = FileVolumes::open_or_format(&cdir, LEB, lebs_for(st.size))
            .map_err(|e| fl("format")(e.into()))?;
        let (mut store, _) =
            Store::open(vols, StoreConfig::default()).map_err(|e| fl("open store")(e.into()))?;
        let refs = plan.artifact_refs();
        store
            .begin(&refs, &plan.cmdline)
            .map_err(|e| fl("begin")(e.into()))?;
        for a in &refs {
            let f = std::fs::File::open(m.blobs().path(&a.sha256))
                .map_err(|e| fl("open blob")(e.into()))?;
            store.stage(a, f).map_err(|e| fl("stage")(e.into()))?;
        }
        store.commit().map_err(|e| fl("commit")(e.into()))?;
    }
    Ok(())
}

/// Environment variable that overrides the master's Solicits-per-tick budget in
/// `serve-child` (an experiment knob; reported in the warm-boot row when set).
pub const SOLICIT_BUDGET_ENV: &str = "SHELFBOOT_BENCH_SOLICIT_BUDGET";

/// Settings of a `serve-child`: the master service on `iface` with the state `state`
/// until `stop_file` exists, then its statistics (JSON) to `stats_out`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeChild {
    pub state: PathBuf,
    pub iface: String,
    pub stop_file: PathBuf,
    pub stats_out: PathBuf,
    /// Plan-signing key file; `None`: `STATE/plan.key` (generated if missing). Masters of
    /// one cluster all sign with the one key the cards trust.
    pub key: Option<PathBuf>,
}

impl ServeChild {
    /// The command line that runs these settings: `exe serve-child ...` (the one writer
    /// of what `main`'s `serve-child` parses).
    pub fn argv(&self, exe: &Path) -> Vec<String> {
        let mut a: Vec<String> = vec![
            exe.display().to_string(),
            "serve-child".into(),
            "--state".into(),
            self.state.display().to_string(),
            "--iface".into(),
            self.iface.clone(),
            "--stop-file".into(),
            self.stop_file.display().to_string(),
            "--stats-out".into(),
            self.stats_out.display().to_string(),
        ];
        if let Some(k) = &self.key {
            a.extend(["--key".into(), k.display().to_string()]);
        }
        a
    }
}

/// `serve-child`: runs the master service until the stop file exists, then writes its
/// statistics. With `STATE/cluster.toml` the service is a cluster member and serves only
/// while it leads (`serve::run`).
pub fn serve_child(c: &ServeChild) -> Result<(), ShelfError> {
    let (state, iface, stop_file, stats_out) =
        (&c.state, c.iface.as_str(), &c.stop_file, &c.stats_out);
    let mut cfg = ServeConfig::new(iface, state);
    cfg.key.clone_from(&c.key);
    // Experiments only (docs/benchmarks.md, item 4): the product default otherwise.
    if let Some(b) = std::env::var(SOLICIT_BUDGET_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        log::warn!("serve-child: solicit budget {b} per tick (from {SOLICIT_BUDGET_ENV})");
        cfg.solicit_budget = b;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, f) = (stop.clone(), stop_file.to_path_buf());
        std::thread::spawn(move || {
            // Bounded: a benchmark run never lasts a day.
            for _ in 0..(24 * 3600 * 20) {
                if f.exists() || stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let res = serve::run(&cfg, &stop);
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let stats = res.map_err(|source| ShelfError::Serve {
        iface: iface.into(),
        source: Box::new(source),
    })?;
    let json = serde_json::to_vec_pretty(&stats).unwrap_or_default();
    write(stats_out, &json)
}

/// What a `card-child` reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CardChildReport {
    /// CLOCK_MONOTONIC seconds when the simulation returned.
    pub done_mono: f64,
    /// Cards that decided to boot (fetched or validated).
    pub booted: usize,
    /// Cards that only validated (warm boot).
    pub validated_only: usize,
    /// Artifact bytes the cards wrote.
    pub bytes_written: u64,
    /// Cards whose committed boot image has the expected sha256 (0 if not checked).
    pub verified: usize,
    /// Peak RSS of this process (VmHWM), KiB.
    pub vm_hwm_kib: u64,
    /// Per-card problems.
    pub problems: Vec<String>,
    /// Seconds from the start of the conversations (all stores open, every card
    /// solicits) until the last card decided (sim's `decided_after_s`).
    #[serde(default)]
    pub last_decided_s: Option<f64>,
    /// CPU seconds (user + system) of this process when the simulation returned.
    #[serde(default)]
    pub cpu_s: Option<f64>,
    /// Per card (in card order), with `verify_set`: the digest (hex) of its committed
    /// set, recomputed from the set's artifacts and command line and equal to the
    /// recorded one; `None` if the set did not verify (the reason is in `problems`).
    #[serde(default)]
    pub set_digests: Vec<Option<String>>,
    /// With `verify_set`: artifacts read back from the cards' flash whose bytes hash to
    /// the sha256 their set names, over all cards.
    #[serde(default)]
    pub artifacts_verified: usize,
    /// CLOCK_MONOTONIC seconds when card-child started.
    #[serde(default)]
    pub entered_mono: Option<f64>,
    /// CLOCK_MONOTONIC seconds when the last card decided (its set committed and checked);
    /// `None` if none did. The simulation returns later: a card sends its Ready twice
    /// more, 100 ms apart, before its conversation is over.
    #[serde(default)]
    pub decided_mono: Option<f64>,
    /// Seconds from card-child's start to the start of the conversations (reading the
    /// trust anchor, opening the socket and every flash store).
    #[serde(default)]
    pub setup_s: Option<f64>,
    /// Seconds from the start of the conversations until the first card stored its
    /// first data block.
    #[serde(default)]
    pub first_block_s: Option<f64>,
    /// Seconds from the start of the conversations until the last card stored its last
    /// data block.
    #[serde(default)]
    pub last_block_s: Option<f64>,
}

impl CardChildReport {
    /// When the cards were done: the last decision, else the simulation's return.
    pub fn end_mono(&self) -> f64 {
        self.decided_mono.unwrap_or(self.done_mono)
    }

    /// (start → first data block, last data block → end) in seconds, `t0` being the
    /// benchmark's start (CLOCK_MONOTONIC); `None` if the report lacks the timeline.
    pub fn stream_edges(&self, t0: f64) -> Option<(f64, f64)> {
        let origin = self.entered_mono? + self.setup_s?;
        Some((
            origin + self.first_block_s? - t0,
            self.end_mono() - (origin + self.last_block_s?),
        ))
    }
}

/// CLOCK_MONOTONIC now, in seconds (the same clock in every process).
pub fn mono() -> f64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

/// VmHWM of this process, KiB.
pub fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Settings of a `card-child`.
#[derive(Debug, Clone)]
pub struct CardChild {
    pub iface: String,
    pub anchor: PathBuf,
    pub dir: PathBuf,
    pub base_mac: MacAddr,
    pub cards: usize,
    pub warm: bool,
    pub size: u64,
    pub timeout: Duration,
    /// Expected sha256 (hex) of the boot image; checked after the timing if given.
    pub sha256: Option<String>,
    /// Card type and arch every card of this process reports.
    pub card_type: String,
    pub arch: Arch,
    /// After the timing, read back every artifact of each card's committed set and
    /// check it against the set (see [`CardChildReport::set_digests`]).
    pub verify_set: bool,
}

impl CardChild {
    /// The settings of one card process: `cards` cards of card type `bench` (x86_64) on
    /// `eth0`, nothing else asked.
    pub fn new(anchor: &Path, dir: &Path, base_mac: MacAddr, cards: usize, size: u64) -> Self {
        CardChild {
            iface: "eth0".into(),
            anchor: anchor.to_path_buf(),
            dir: dir.to_path_buf(),
            base_mac,
            cards,
            warm: false,
            size,
            timeout: Duration::from_secs(60),
            sha256: None,
            card_type: CARD_TYPE.into(),
            arch: Arch::X86_64,
            verify_set: false,
        }
    }

    /// The command line that runs these settings: `exe card-child ...`, writing its
    /// report to `out` (the one writer of what `main`'s `card-child` parses).
    pub fn argv(&self, exe: &Path, out: &Path) -> Vec<String> {
        let mut a: Vec<String> = vec![
            exe.display().to_string(),
            "card-child".into(),
            "--iface".into(),
            self.iface.clone(),
            "--anchor".into(),
            self.anchor.display().to_string(),
            "--dir".into(),
            self.dir.display().to_string(),
            "--base-mac".into(),
            self.base_mac.to_string(),
            "--cards".into(),
            self.cards.to_string(),
            "--size".into(),
            self.size.to_string(),
            "--timeout".into(),
            self.timeout.as_secs().to_string(),
            "--card-type".into(),
            self.card_type.clone(),
            "--arch".into(),
            self.arch.to_string(),
        ];
        if self.warm {
            a.push("--warm".into());
        }
        if let Some(s) = &self.sha256 {
            a.extend(["--sha256".into(), s.clone()]);
        }
        if self.verify_set {
            a.push("--verify-set".into());
        }
        a.extend(["--out".into(), out.display().to_string()]);
        a
    }
}

/// `card-child`: runs `cards` simulated cards, then checks their flash.
pub fn card_child(c: &CardChild) -> Result<CardChildReport, ShelfError> {
    let entered = Instant::now();
    let entered_mono = mono();
    let bytes = std::fs::read(&c.anchor).map_err(|e| ShelfError::Anchor {
        path: c.anchor.clone(),
        source: e.into(),
    })?;
    let anchor = TrustAnchor::from_bytes(&bytes).map_err(|e| ShelfError::Anchor {
        path: c.anchor.clone(),
        source: anyhow::anyhow!("{e}"),
    })?;
    let cards: Vec<SimCard> = (0..c.cards)
        .map(|i| {
            let slot = u16::try_from(i + 1).unwrap_or(u16::MAX);
            card(
                mac_plus(c.base_mac, i as u64),
                slot,
                c.dir.join(format!("card-{}", i + 1)),
                &c.card_type,
                c.arch,
            )
        })
        .collect();
    let cfg = SimConfig {
        iface: c.iface.clone(),
        ethertype: shelfboot_proto::DEFAULT_ETHERTYPE,
        anchor,
        cards: cards.clone(),
        leb_size: LEB,
        total_lebs: lebs_for(c.size),
        phase: if c.warm {
            BootPhase::WarmBoot
        } else {
            BootPhase::PowerOn
        },
        timers: Timers::default(),
        timeout: c.timeout,
        report: None,
    };
    let pre_run = entered.elapsed().as_secs_f64();
    let reports = sim::run(&cfg, &AtomicBool::new(false)).map_err(|source| ShelfError::Sim {
        iface: c.iface.clone(),
        source: Box::new(source),
    })?;
    let mut out = CardChildReport {
        done_mono: mono(),
        entered_mono: Some(entered_mono),
        vm_hwm_kib: vm_hwm_kib(),
        cpu_s: crate::proc::cpu_secs(std::process::id()),
        ..CardChildReport::default()
    };
    for r in &reports {
        let booted = !r.decision.is_empty() && r.decision != "reset" && !r.autonomous;
        if booted {
            out.booted += 1;
        } else {
            out.problems.push(format!(
                "card {}: decision {:?}, error {:?}",
                r.mac, r.decision, r.error
            ));
        }
        out.validated_only += usize::from(r.validated_only);
        if let Some(d) = r.decided_after_s {
            out.last_decided_s = Some(out.last_decided_s.map_or(d, |x: f64| x.max(d)));
        }
        out.bytes_written += r.counters.bytes_written;
        let (lo, hi) = (
            |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        );
        out.first_block_s = lo(out.first_block_s, r.first_block_after_s);
        out.last_block_s = hi(out.last_block_s, r.last_block_after_s);
        // The setup ends when the conversations start: one moment for all cards.
        out.setup_s = Some(pre_run + r.setup_s);
        if let Some(d) = r.decided_after_s {
            let at = entered_mono + pre_run + r.setup_s + d;
            out.decided_mono = Some(out.decided_mono.map_or(at, |x: f64| x.max(at)));
        }
    }
    if let Some(want) = &c.sha256 {
        for sc in &cards {
            match boot_image_sha(&sc.dir) {
                Ok(got) if &got == want => out.verified += 1,
                Ok(got) => out.problems.push(format!(
                    "card {}: boot image sha256 {got}, want {want}",
                    sc.mac
                )),
                Err(e) => out.problems.push(format!("card {}: {e:#}", sc.mac)),
            }
        }
    }
    if c.verify_set {
        for sc in &cards {
            match verify_set(&sc.dir) {
                Ok((digest, n)) => {
                    out.set_digests.push(Some(digest.to_string()));
                    out.artifacts_verified += n;
                }
                Err(e) => {
                    out.set_digests.push(None);
                    out.problems.push(format!("card {}: {e:#}", sc.mac));
                }
            }
        }
    }
    Ok(out)
}

/// Reads back every artifact of the committed set in a simulated card's flash: each
/// one's bytes must hash to the sha256 the set names, and the set's digest must be the
/// one recomputed from its artifacts and command line. Returns that digest and the
/// number of artifacts.
fn verify_set(dir: &Path) -> anyhow::Result<(Digest, usize)> {
    let vols = FileVolumes::open(dir)?;
    let (mut store, _) = Store::open(vols, StoreConfig::default())?;
    let inv = store
        .inventory()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no committed set in {}", dir.display()))?;
    let refs: Vec<_> = inv
        .set
        .artifacts
        .iter()
        .map(|a| a.artifact.clone())
        .collect();
    let digest = set_digest(&refs, &inv.set.cmdline);
    anyhow::ensure!(
        digest == inv.set.digest,
        "committed set digest {} differs from {digest}, recomputed from its {} artifacts",
        inv.set.digest,
        refs.len()
    );
    let mut buf = vec![0u8; 1 << 20];
    for a in &inv.set.artifacts {
        let id = store
            .volume_id(&a.volume)?
            .ok_or_else(|| anyhow::anyhow!("volume {} missing", a.volume))?;
        let mut h = Sha256::new();
        let (mut off, size) = (0u64, a.artifact.size);
        while off < size {
            let want = usize::try_from((size - off).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = store
                .volumes_mut()
                .read(id, a.offset + off, &mut buf[..want])?;
            anyhow::ensure!(n > 0, "volume {} short at {}", a.volume, a.offset + off);
            h.update(&buf[..n]);
            off += n as u64;
        }
        let got = Digest(h.finalize().into());
        anyhow::ensure!(
            got == a.artifact.sha256,
            "artifact {} {} in volume {} at {}: sha256 {got}, the set says {}",
            a.artifact.name,
            a.artifact.version,
            a.volume,
            a.offset,
            a.artifact.sha256
        );
    }
    Ok((digest, refs.len()))
}

/// sha256 (hex) of the committed boot image in a simulated card's flash.
fn boot_image_sha(dir: &Path) -> anyhow::Result<String> {
    let vols = FileVolumes::open(dir)?;
    let (mut store, _) = Store::open(vols, StoreConfig::default())?;
    let inv = store
        .inventory()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no committed set"))?;
    let a = inv
        .set
        .artifacts
        .first()
        .ok_or_else(|| anyhow::anyhow!("committed set is empty"))?;
    let id = store
        .volume_id(&a.volume)?
        .ok_or_else(|| anyhow::anyhow!("volume {} missing", a.volume))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut off, size) = (0u64, a.artifact.size);
    while off < size {
        let want = usize::try_from((size - off).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = store
            .volumes_mut()
            .read(id, a.offset + off, &mut buf[..want])?;
        anyhow::ensure!(n > 0, "volume {} short at {off}", a.volume);
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(Digest(h.finalize().into()).to_string())
}

/// sha256 (hex) of a file.
pub fn file_sha(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Digest(h.finalize().into()).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_release_is_200_packages_of_1_kib_to_4_mib_at_least_64_mib_in_all() {
        let s = ReleaseShape::FULL;
        let sizes: Vec<u64> = (0..s.packages)
            .flat_map(|i| [s.size(i, 0), s.size(i, 1)])
            .collect();
        assert_eq!(sizes.len(), 400);
        assert!(sizes.iter().all(|&b| (1024..=4 << 20).contains(&b)));
        assert!(s.release_bytes() >= 64 << 20, "{}", s.release_bytes());
        assert_eq!(s.changed.len(), 20);
        assert!(s.card_bytes() < s.release_bytes() / 2 + s.boot_bytes * 3);
        assert_eq!(ReleaseShape::package_name(7).len(), 64);
        assert!(ReleaseShape::QUICK.release_bytes() < s.release_bytes() / 8);
    }

    #[test]
    fn release_files_and_spec_name_every_package_and_the_update_only_the_changed_ones() {
        let dir = std::env::temp_dir().join(format!("sbbench-shape-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = ReleaseShape {
            packages: 5,
            large: 1,
            large_bytes: 4096,
            medium: 1,
            medium_bytes: 2048,
            small_spread: 512,
            boot_bytes: 1024,
            changed: 1..3,
        };
        let first = s.write_files(&dir, "1.0.0", false).unwrap();
        let update = s.write_files(&dir, "1.1.0", true).unwrap();
        assert_eq!(first.matches("[[package]]").count(), 10);
        assert_eq!(first.matches("[[boot]]").count(), 3);
        assert_eq!(update.matches("version = \"1.0.1\"").count(), 4);
        let files = dir.join("files");
        let len = |f: String| std::fs::metadata(files.join(f)).unwrap().len();
        let p0 = ReleaseShape::package_name(0);
        assert_eq!(len(format!("{p0}-1.0.0-x86_64.sqfs")), 4096);
        let p1 = ReleaseShape::package_name(1);
        assert_ne!(
            std::fs::read(files.join(format!("{p1}-1.0.0-aarch64.sqfs"))).unwrap(),
            std::fs::read(files.join(format!("{p1}-1.0.1-aarch64.sqfs"))).unwrap()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
