//! The agent-backed [`Provisioner`]: card's sans-IO agent driven over a netio
//! [`PacketSocket`] on the backplane link, with the card's UBI flash as its store.
//!
//! ```text
//! trust anchor (/etc/shelfboot/trust/*) + nonce (/dev/urandom) + identity (config, link)
//!   → second UbiVolumes on the attached UBI device → Store → Agent
//!   → loop: tick at the agent's deadline, feed received frames, send, join/leave groups
//!   → Decision::Boot → finish the Ready repeats → give the agent's store to the flow
//! ```
//!
//! The flow's store is borrowed, the agent needs one by value: the agent gets its own
//! [`UbiVolumes`] on the same UBI device, and when it has decided, its store (which saw
//! the commit) replaces the flow's stale one. A stored image (`shelfboot.stored=1`) that a
//! master validated marks its set Ready (resets the boot counter); so does a set without
//! a boot image. A master that orders a reset restarts the conversation (bounded); the
//! executed command's stamp is carried, so its other copies do not reset us again.
//!
//! "Prepare" (a master's BurnNow): the agent commits (or validates) its set, sends Ready
//! and holds, so this loop keeps driving it: the console says
//! `SHELFBOOT: set committed; holding for the master's warm boot (up to N s)`; the
//! master's WarmBoot restarts the conversation in phase WarmBoot (the console says
//! `SHELFBOOT: warm boot ordered by the master`), which only validates and hands off.
//! Without a WarmBoot within `shelfboot.hold` the agent hands off on its own.
//!
//! Test mode: the agent also gets a RAM store ([`crate::ram`]: fresh on tmpfs, or the
//! one a kexec'd test image finds carried in its initramfs). A `persist = false` plan is
//! fetched there; its decision becomes [`Provisioned::TestSet`] with the package files
//! and the boot image file of the RAM store. Flash is neither written nor marked Ready,
//! and the boot counter is left alone. Without a RAM store (no memory to spare) the agent
//! refuses such plans with an error to the master.
//!
//! Not here: the protocol itself (card's agent), attaching UBI (crate::flash::attach).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shelfboot_card::agent::{Agent, AgentConfig, Decision, Identity, Output, Phase, Timers};
use shelfboot_card::flash::artifact::ArtifactKind;
use shelfboot_card::flash::{FileVolumes, SetRecord, Store, StoreConfig, StoreError};
use shelfboot_netio::{PacketSocket, SocketConfig, SocketError};
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::{Arch, BootPhase};
use shelfboot_proto::sign::{SignError, TrustAnchor};

use crate::config::{Config, Source};
use crate::flash::UbiVolumes;
use crate::flow::{ProvisionError, Provisioned, Provisioner, Session, TestBoot};
use crate::sys::SysError;
use crate::sys::sysfs::Sysfs;

/// Where mkinitramfs puts the trust anchors.
pub const TRUST_DIR: &str = "/etc/shelfboot/trust";
/// Most resets a master may order in one boot before we stop listening to it.
const MAX_RESETS: u32 = 8;
/// Longest single wait for frames (the agent's deadlines are usually sooner).
const MAX_WAIT: Duration = Duration::from_millis(50);

/// Why the agent could not be started or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentRunError {
    /// No trust anchor file could be read.
    #[error("cannot read trust anchor {path}")]
    ReadAnchor {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A trust anchor file is not 32-byte keys nor a `master keygen` `.pub` file.
    #[error("trust anchor {path} holds no valid public key")]
    BadAnchor {
        /// The file.
        path: PathBuf,
        /// The cause, if the key bytes were rejected.
        #[source]
        source: Option<SignError>,
    },
    /// No key at all: nothing a master signs could be trusted.
    #[error("no trust anchor in {dir}: rebuild the initramfs with --trust")]
    NoAnchor {
        /// The directory searched.
        dir: PathBuf,
    },
    /// The nonce could not be drawn.
    #[error("cannot read /dev/urandom for the boot nonce")]
    Random(#[source] std::io::Error),
    /// The backplane socket could not be opened.
    #[error("cannot open the backplane socket on {iface}")]
    Socket {
        /// Interface.
        iface: String,
        /// The cause.
        #[source]
        source: SocketError,
    },
    /// The second handle on the UBI device could not be opened.
    #[error("cannot open /dev/ubi{ubi} for the agent")]
    Ubi {
        /// UBI device number.
        ubi: u32,
        /// The cause.
        #[source]
        source: SysError,
    },
    /// The agent's store could not be opened.
    #[error("cannot open the flash store of ubi{ubi} for the agent")]
    Store {
        /// UBI device number.
        ubi: u32,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// Receiving from the backplane failed.
    #[error("receive on {iface} failed")]
    Receive {
        /// Interface.
        iface: String,
        /// The cause.
        #[source]
        source: SocketError,
    },
    /// A test-mode decision without a RAM store (cannot happen: the agent refuses such
    /// plans without one).
    #[error("the agent decided a test-mode boot but has no RAM store")]
    NoRamStore,
    /// The RAM store does not hold the set the agent committed there.
    #[error("the test-mode set in the RAM store cannot be resolved to files")]
    RamSet {
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// Too many resets ordered in one boot.
    #[error("the master ordered {MAX_RESETS} resets in this boot: booting what is committed")]
    TooManyResets,
}

/// The provisioner that runs card's agent (see the module docs).
#[derive(Debug)]
pub struct AgentProvisioner {
    /// Directory of trust anchor files.
    pub trust_dir: PathBuf,
    /// devtmpfs root (for `/dev/ubiN`).
    pub dev: PathBuf,
    /// sysfs root.
    pub sys: PathBuf,
    /// procfs root (`meminfo` bounds the RAM store).
    pub proc: PathBuf,
    /// Where a fresh RAM store for test mode is made (tmpfs).
    pub ram_dir: PathBuf,
    /// Where a kexec'd test image finds the RAM store carried in its initramfs.
    pub carried_dir: PathBuf,
}

impl Default for AgentProvisioner {
    fn default() -> Self {
        Self {
            trust_dir: TRUST_DIR.into(),
            dev: "/dev".into(),
            sys: "/sys".into(),
            proc: "/proc".into(),
            ram_dir: crate::ram::RAM_DIR.into(),
            carried_dir: crate::ram::CARRIED_DIR.into(),
        }
    }
}

fn failed(what: &str, e: AgentRunError) -> ProvisionError {
    ProvisionError {
        what: what.to_string(),
        source: Some(Box::new(e)),
    }
}

impl Provisioner<UbiVolumes> for AgentProvisioner {
    fn provision(
        &mut self,
        s: &mut Session<'_, UbiVolumes>,
    ) -> Result<Provisioned, ProvisionError> {
        let Some(link) = s.link else {
            return Ok(Provisioned::NoMaster {
                waited: Duration::ZERO,
            });
        };
        let Some(store) = s.store.as_deref_mut() else {
            return Err(ProvisionError {
                what: "the flash is unusable, so no plan can be stored (see the flash error above)"
                    .into(),
                source: None,
            });
        };
        let t = crate::boottime::now();
        let anchor = load_anchor(&self.trust_dir).map_err(|e| failed("no trust anchor", e))?;
        let ubi = store.volumes_mut().ubi_num();
        let cfg = s.config;
        let mut sock = PacketSocket::open(
            &link.name,
            SocketConfig {
                ethertype: cfg.ethertype,
                // The same thread hashes and writes flash between receives: a deep ring
                // (16 MiB) rides out a slow UBI write instead of dropping the stream.
                rx_ring: shelfboot_netio::RingGeometry {
                    block_nr: 256,
                    ..shelfboot_netio::RingGeometry::RX_DEFAULT
                },
                rcvbuf: Some(8 << 20),
                ..SocketConfig::default()
            },
        )
        .map_err(|source| {
            failed(
                "backplane",
                AgentRunError::Socket {
                    iface: link.name.clone(),
                    source,
                },
            )
        })?;
        let identity = Identity {
            mac: MacAddr(link.mac),
            card_type: cfg.card.clone(),
            arch: if cfg!(target_arch = "aarch64") {
                Arch::Aarch64
            } else {
                Arch::X86_64
            },
            shelf: cfg.shelf.unwrap_or(0),
            slot: cfg.slot.unwrap_or(0),
            hw_rev: "unknown".into(),
            features: cfg.features.clone(),
        };
        crate::boottime::step("socket", t);
        let mut setup = Some(crate::boottime::now());
        let started = Instant::now();
        let mut phase = BootPhase::PowerOn;
        let mut last_command = None;
        for _ in 0..=MAX_RESETS {
            let vols = UbiVolumes::open(ubi, &self.dev, Sysfs::new(&self.sys))
                .map_err(|source| failed("flash", AgentRunError::Ubi { ubi, source }))?;
            let scfg = StoreConfig {
                max_attempts: cfg.maxtries,
                ..StoreConfig::default()
            };
            let (astore, _) = Store::open(vols, scfg)
                .map_err(|source| failed("flash", AgentRunError::Store { ubi, source }))?;
            let mut nonce = [0u8; 16];
            let mut seed = [0u8; 8];
            random(&mut nonce)
                .and_then(|()| random(&mut seed))
                .map_err(|e| failed("nonce", e))?;
            let acfg = AgentConfig {
                identity: identity.clone(),
                phase,
                ethertype: cfg.ethertype,
                anchor: anchor.clone(),
                nonce,
                seed: u64::from_be_bytes(seed),
                timers: Timers {
                    autonomy: Some(cfg.master_timeout),
                    hold: cfg.hold,
                    ..Timers::default()
                },
            };
            log::info!(
                "agent: soliciting a plan on {} as {} ({}, slot {}), phase {phase:?}",
                link.name,
                identity.mac,
                identity.card_type,
                identity.slot
            );
            let mut agent =
                Agent::new(acfg, astore, Instant::now()).with_last_command(last_command);
            match crate::ram::open(&self.carried_dir, &self.ram_dir, &self.proc) {
                Ok(ram) => agent = agent.with_ram_store(ram),
                Err(e) => log::warn!(
                    "agent: no RAM store, test-mode plans will be refused: {}",
                    crate::error_chain(&e)
                ),
            }
            if let Some(t) = setup.take() {
                crate::boottime::step("agent store", t);
            }
            let decision = drive(&mut agent, &mut sock, &link.name, cfg.hold)
                .map_err(|e| failed("agent", e))?;
            let c = *agent.counters();
            log::info!("agent: counters {c:?}");
            last_command = agent.last_command();
            let (mut fresh, ram) = agent.into_stores();
            match decision {
                Decision::Reset { phase: p } => {
                    if p == BootPhase::WarmBoot {
                        log::info!(
                            "SHELFBOOT: warm boot ordered by the master: soliciting again to validate the committed set"
                        );
                    }
                    log::info!("agent: the master ordered a reset ({p:?}): soliciting again");
                    phase = p;
                }
                Decision::Boot {
                    set,
                    handoff,
                    validated_only,
                    persisted: false,
                    ..
                } => {
                    log::info!(
                        "agent: test mode: {handoff:?} of RAM set {} ({} artifacts), validated_only={validated_only}; flash untouched",
                        hex(&set.digest),
                        set.artifacts.len()
                    );
                    *store = fresh;
                    return test_set(ram, &set, &self.carried_dir, &self.ram_dir)
                        .map_err(|e| failed("test mode", e));
                }
                Decision::Boot {
                    set,
                    handoff,
                    autonomous,
                    validated_only,
                    persisted: true,
                } => {
                    log::info!(
                        "agent: decided {handoff:?} of set {} ({} artifacts), autonomous={autonomous}, validated_only={validated_only}",
                        hex(&set.digest),
                        set.artifacts.len()
                    );
                    if !autonomous && (cfg.stored || set.boot_image().is_none()) {
                        match fresh.mark_ready() {
                            Ok(()) => {
                                // block2mtd and some MTD drivers buffer in the page cache.
                                nix::unistd::sync();
                                log::info!("agent: set marked ready on flash");
                            }
                            Err(e) => log::error!(
                                "agent: marking the set ready failed: {}",
                                crate::error_chain(&e)
                            ),
                        }
                    }
                    *store = fresh;
                    return Ok(if autonomous {
                        Provisioned::NoMaster {
                            waited: started.elapsed(),
                        }
                    } else {
                        Provisioned::Committed
                    });
                }
            }
        }
        Err(failed("agent", AgentRunError::TooManyResets))
    }
}

/// The hand-off of a test set the agent committed in `ram`: its package files (plan
/// order) and boot image file.
fn test_set(
    ram: Option<Store<FileVolumes>>,
    set: &SetRecord,
    carried: &Path,
    fresh: &Path,
) -> Result<Provisioned, AgentRunError> {
    let mut ram = ram.ok_or(AgentRunError::NoRamStore)?;
    let resolved = ram
        .resolve(set)
        .map_err(|source| AgentRunError::RamSet { source })?;
    let mut packages = Vec::new();
    let mut image = None;
    for (a, id) in resolved {
        let path = ram
            .volumes_mut()
            .blob_path(id)
            .ok_or_else(|| AgentRunError::RamSet {
                source: StoreError::SetDamaged {
                    missing: vec![a.volume.clone()],
                },
            })?;
        match a.artifact.kind {
            ArtifactKind::BootImage => image = Some(path),
            ArtifactKind::Package => packages.push(path),
        }
    }
    let ram_dir = if carried.join("table").exists() {
        carried
    } else {
        fresh
    };
    Ok(Provisioned::TestSet {
        packages,
        boot: image.map(|image| TestBoot {
            image,
            cmdline: set.cmdline.clone(),
            ram_dir: ram_dir.to_path_buf(),
        }),
    })
}

/// Runs the agent until it decided and finished its sends (a held agent is driven until
/// the master's WarmBoot or the end of its hold). Returns the decision.
fn drive(
    agent: &mut Agent<UbiVolumes>,
    sock: &mut PacketSocket,
    iface: &str,
    hold: Duration,
) -> Result<Decision, AgentRunError> {
    let mut decision = None;
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut last_progress = None;
    let mut held = false;
    let mut first_sent = false;
    loop {
        let now = Instant::now();
        if agent.next_deadline().is_some_and(|d| d <= now) {
            let o = agent.tick(now);
            apply(o, sock, &mut out, &mut decision);
        }
        if !first_sent && !out.is_empty() {
            first_sent = true;
            send_all(sock, &mut out);
            log::info!(
                "agent: first Solicit sent (monotonic {:.6} s)",
                crate::pid1::monotonic_secs()
            );
            crate::boottime::first_solicit();
        }
        send_all(sock, &mut out);
        if !held && agent.phase() == Phase::Held {
            held = true;
            log::info!(
                "SHELFBOOT: set committed; holding for the master's warm boot (up to {} s)",
                hold.as_secs()
            );
        }
        if let Some(p) = agent.fetch_progress()
            && last_progress
                .is_none_or(|(at, _): (Instant, u64)| at.elapsed() >= Duration::from_secs(2))
        {
            log::info!("agent: fetched {} of {} bytes", p.0, p.1);
            last_progress = Some((Instant::now(), p.0));
        }
        if (agent.phase() == Phase::Done || agent.next_deadline().is_none())
            && let Some(d) = decision.take()
        {
            return Ok(d);
        }
        let wait = agent
            .next_deadline()
            .map_or(MAX_WAIT, |d| d.saturating_duration_since(Instant::now()))
            .min(MAX_WAIT);
        let n = sock
            .recv_batch(&mut |f: &[u8], _| frames.push(f.to_vec()), wait)
            .map_err(|source| AgentRunError::Receive {
                iface: iface.to_string(),
                source,
            })?;
        if n == 0 {
            continue;
        }
        for f in frames.drain(..) {
            let o = agent.handle_frame(Instant::now(), &f);
            apply(o, sock, &mut out, &mut decision);
        }
        send_all(sock, &mut out);
    }
}

fn apply(
    outputs: Vec<Output>,
    sock: &mut PacketSocket,
    out: &mut Vec<Vec<u8>>,
    decision: &mut Option<Decision>,
) {
    for o in outputs {
        match o {
            Output::Send(f) => out.push(f),
            Output::JoinGroup(g) => {
                if let Err(e) = sock.join(shelfboot_netio::MacAddr(g.0)) {
                    log::error!("agent: joining group {g}: {}", crate::error_chain(&e));
                }
            }
            Output::LeaveGroup(g) => {
                if let Err(e) = sock.leave(shelfboot_netio::MacAddr(g.0)) {
                    log::warn!("agent: leaving group {g}: {}", crate::error_chain(&e));
                }
            }
            Output::Decision(d) => *decision = Some(d),
        }
    }
}

fn send_all(sock: &mut PacketSocket, out: &mut Vec<Vec<u8>>) {
    if out.is_empty() {
        return;
    }
    let refs: Vec<&[u8]> = out.iter().map(Vec::as_slice).collect();
    if let Err(e) = sock.send_batch(&refs) {
        log::error!("agent: send: {}", crate::error_chain(&e));
    }
    out.clear();
}

/// The command line a stored image is kexec'd with: the plan's, plus this card's own
/// keys the plan cannot know (type from the command line, shelf, slot, features,
/// interface, master timeout, prepare hold), each unless the plan sets it already.
pub fn carried_cmdline(cfg: &Config, plan: &str) -> String {
    let mut keys: Vec<(&str, String)> = Vec::new();
    if cfg.card_source == Source::Cmdline {
        keys.push(("card", cfg.card.clone()));
    }
    if let Some(s) = cfg.shelf {
        keys.push(("shelf", s.to_string()));
    }
    if let Some(s) = cfg.slot {
        keys.push(("slot", s.to_string()));
    }
    if !cfg.features.is_empty() {
        keys.push(("features", cfg.features.join(",")));
    }
    if let Some(i) = &cfg.iface {
        keys.push(("iface", i.clone()));
    }
    if cfg.master_timeout != Config::default().master_timeout {
        keys.push((
            "master_timeout",
            format!("{}ms", cfg.master_timeout.as_millis()),
        ));
    }
    if cfg.hold != Config::default().hold {
        keys.push(("hold", format!("{}ms", cfg.hold.as_millis())));
    }
    let mut out = plan.trim().to_string();
    for (k, v) in keys {
        let prefix = format!("shelfboot.{k}=");
        if !plan.split_whitespace().any(|w| w.starts_with(&prefix)) {
            out.push_str(&format!(" {prefix}{v}"));
        }
    }
    out
}

fn random(buf: &mut [u8]) -> Result<(), AgentRunError> {
    // Drawn early in the background by the flow (crate::entropy), else /dev/urandom.
    crate::entropy::fill(buf).map_err(AgentRunError::Random)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Parses one anchor file: concatenated raw 32-byte keys, or text lines `TAG HEX` (the
/// `.pub` files of `master keygen`; the last word of each line is the key).
pub fn parse_anchor(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, AgentRunError> {
    let bad = |source| AgentRunError::BadAnchor {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(text) = std::str::from_utf8(bytes)
        && text.split_whitespace().count() > 0
        && let Some(keys) = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().last().and_then(unhex))
            .collect::<Option<Vec<Vec<u8>>>>()
    {
        let raw: Vec<u8> = keys.concat();
        TrustAnchor::from_bytes(&raw).map_err(|e| bad(Some(e)))?;
        return Ok(raw);
    }
    TrustAnchor::from_bytes(bytes).map_err(|e| bad(Some(e)))?;
    if bytes.is_empty() {
        return Err(bad(None));
    }
    Ok(bytes.to_vec())
}

/// Reads every file in `dir` as trust anchor keys (sorted by name).
pub fn load_anchor(dir: &Path) -> Result<TrustAnchor, AgentRunError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AgentRunError::ReadAnchor { path, source }
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut raw = Vec::new();
    for p in &names {
        let bytes = std::fs::read(p).map_err(read_err(p))?;
        raw.extend(parse_anchor(p, &bytes)?);
    }
    if raw.is_empty() {
        return Err(AgentRunError::NoAnchor {
            dir: dir.to_path_buf(),
        });
    }
    TrustAnchor::from_bytes(&raw).map_err(|e| AgentRunError::BadAnchor {
        path: dir.to_path_buf(),
        source: Some(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> [u8; 32] {
        shelfboot_proto::sign::SigningKey::from_seed(&[7; 32])
            .public_key()
            .to_bytes()
    }

    #[test]
    fn anchor_files_raw_and_text_give_the_same_key() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a.bin"), key()).unwrap();
        let one = load_anchor(t.path()).unwrap();
        assert_eq!(one.to_bytes(), key().to_vec());
        std::fs::write(
            t.path().join("b.pub"),
            format!("shelfboot-ed25519-public {}\n", hex(&key())),
        )
        .unwrap();
        let two = load_anchor(t.path()).unwrap();
        assert_eq!(two.keys().len(), 2);
        assert_eq!(two.keys()[0], two.keys()[1]);
    }

    #[test]
    fn empty_or_garbage_anchor_is_an_error_naming_the_file() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_anchor(t.path()),
            Err(AgentRunError::NoAnchor { .. })
        ));
        std::fs::write(t.path().join("x.pub"), "key zz\n").unwrap();
        let e = load_anchor(t.path()).unwrap_err();
        assert!(e.to_string().contains("x.pub"), "{e}");
        assert!(matches!(
            load_anchor(&t.path().join("missing")),
            Err(AgentRunError::ReadAnchor { .. })
        ));
    }

    #[test]
    fn stored_cmdline_carries_the_card_identity_but_not_over_the_plan() {
        let cfg = Config {
            card: "lc100".into(),
            card_source: Source::Cmdline,
            slot: Some(3),
            features: vec!["diag".into(), "x".into()],
            ..Config::default()
        };
        let t = Config {
            master_timeout: Duration::from_secs(60),
            ..cfg.clone()
        };
        assert!(carried_cmdline(&t, "").ends_with(" shelfboot.master_timeout=60000ms"));
        let h = Config {
            hold: Duration::from_secs(90),
            ..cfg.clone()
        };
        assert!(carried_cmdline(&h, "").ends_with(" shelfboot.hold=90000ms"));
        assert!(!carried_cmdline(&h, "shelfboot.hold=5").contains("90000ms"));
        let c = carried_cmdline(&cfg, "console=ttyS0 shelfboot.slot=9");
        assert_eq!(
            c,
            "console=ttyS0 shelfboot.slot=9 shelfboot.card=lc100 shelfboot.features=diag,x"
        );
        let dmi = Config {
            card_source: Source::Dmi,
            ..cfg
        };
        assert!(!carried_cmdline(&dmi, "").contains("shelfboot.card="));
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(unhex(&hex(&key())).unwrap(), key().to_vec());
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
