//! shelfboot in the benchmark: a master state directory whose release holds the
//! benchmark artifact as the boot image of card type `bench`, and the two child
//! processes the benchmark starts inside the namespaces: `serve-child` (the real
//! `master serve` service, `shelfboot_master::serve::run`) and `card-child` (the real
//! simulated-card runner, `shelfboot_card::sim::run`, with file-backed flash).
//!
//! The children are this binary re-executed with a hidden subcommand: `master` has no
//! `serve` subcommand yet, and separate processes give the master's CPU time
//! (`/proc/PID/stat`) and the card's peak RSS (`VmHWM`) without the harness in them.
//! This module does not judge the results; `scenarios` does.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shelfboot_card::agent::Timers;
use shelfboot_card::flash::{FileVolumes, Store, StoreConfig, Volumes as _};
use shelfboot_card::sim::{self, SimCard, SimConfig};
use shelfboot_master::serve::{self, ServeConfig};
use shelfboot_master::state::Master;
use shelfboot_master::store::NodeIdentity;
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::{Arch, BootPhase, Digest};
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
    let key = shelfboot_master::keys::read_signing_key(&secret)
        .map_err(|e| rel("reading the vendor key")(e.into()))?;
    let packed =
        shelfboot_master::image::pack::prepare(&spec).map_err(|e| rel("pack")(e.into()))?;
    let image = dir.join("release.img");
    shelfboot_master::image::pack::write_image(&packed, &key, &image)
        .map_err(|e| rel("write image")(e.into()))?;
    // The image holds a copy of the artifact; the blob store gets another.
    let state = dir.join("state");
    let mut m = Master::open(&state).map_err(|e| rel("open state")(e.into()))?;
    m.trust_add(&public, "bench vendor")
        .map_err(|e| rel("trust add")(e.into()))?;
    m.import_file(&image, true, &mut |_, _| {})
        .map_err(|e| rel("import")(e.into()))?;
    drop(m);
    let _ = std::fs::remove_file(&image);
    let cfg = ServeConfig::new("unused", &state);
    // Generates STATE/plan.key and writes STATE/plan.anchor (the cards' trust anchor).
    serve::load_key(&cfg).map_err(|e| rel("plan key")(e.into()))?;
    let anchor = state.join("plan.anchor");
    Ok(ShelfState {
        state,
        anchor,
        size,
    })
}

/// Flash geometry for a card that must hold `size` bytes (the set, plus headroom).
pub fn lebs_for(size: u64) -> u64 {
    size.div_ceil(LEB) * 2 + 64
}

fn card(mac: MacAddr, slot: u16, dir: PathBuf) -> SimCard {
    SimCard {
        mac,
        card_type: CARD_TYPE.into(),
        arch: Arch::X86_64,
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

/// `serve-child`: runs the master service on `iface` until `stop_file` exists, then
/// writes its statistics (JSON) to `stats_out`.
pub fn serve_child(
    state: &Path,
    iface: &str,
    stop_file: &Path,
    stats_out: &Path,
) -> Result<(), ShelfError> {
    let mut cfg = ServeConfig::new(iface, state);
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
}

/// `card-child`: runs `cards` simulated cards, then checks their flash.
pub fn card_child(c: &CardChild) -> Result<CardChildReport, ShelfError> {
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
    let reports = sim::run(&cfg, &AtomicBool::new(false)).map_err(|source| ShelfError::Sim {
        iface: c.iface.clone(),
        source: Box::new(source),
    })?;
    let mut out = CardChildReport {
        done_mono: mono(),
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
    Ok(out)
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
