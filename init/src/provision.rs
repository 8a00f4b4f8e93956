//! The agent-backed [`Provisioner`]: card's sans-IO agent driven by card's driver over a
//! netio [`PacketSocket`] on the backplane link, with the session's flash store (the
//! card's UBI volumes) as its store.
//!
//! ```text
//! trust anchor (/etc/shelfboot/trust/*) + nonce (/dev/urandom) + identity (config, link)
//!   → the session's Store, lent to the Agent
//!   → card's driver: tick at the agent's deadline, feed received frames, send,
//!     join/leave groups
//!   → Decision::Boot → finish the Ready repeats → the store back to the session,
//!     the decision to the flow
//! ```
//!
//! The session owns the flash store; the agent takes it by value for one conversation
//! and gives it back (with what it committed) when it has decided, or when the
//! conversation fails, so the flow can still boot the committed set. A stored image (`shelfboot.stored=1`) that a
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
//! A card without usable flash (the session has no store): the RAM store is the agent's
//! only store ([`Agent::in_ram`]), kept here across the master's resets; every decision
//! is a RAM set, handed off as test mode's below. No RAM store either: an error.
//!
//! Test mode: the agent also gets a RAM store ([`crate::ram`]: fresh on tmpfs, or the
//! one a kexec'd test image finds carried in its initramfs). A `persist = false` plan is
//! fetched there; its decision becomes [`Provisioned::RamSet`] with the package files
//! and the boot image file of the RAM store. Flash is neither written nor marked Ready,
//! and the boot counter is left alone. Without a RAM store (no memory to spare) the agent
//! refuses such plans with an error to the master.
//!
//! Not here: the protocol itself (card's agent), the frame loop (card's driver), what is
//! booted (card's boot choice, called by the flow), attaching UBI (crate::flash::attach).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::handoff::Layer;
use shelfboot_card::agent::{Agent, AgentConfig, Decision, Identity, Phase, Timers};
use shelfboot_card::driver::{Driver, Seat};
use shelfboot_card::flash::artifact::ArtifactKind;
use shelfboot_card::flash::{FileVolumes, SetRecord, Store, StoreError, Volumes};
use shelfboot_netio::{PacketSocket, SocketConfig, SocketError};
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::{Arch, BootPhase};
use shelfboot_proto::sign::{SignError, TrustAnchor};

use crate::flow::{ProvisionError, Provisioned, Provisioner, RamBoot, Session};
use crate::resident::{HealthCheck, Seed};

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
    /// The conversation did not reach a decision in the time it was given.
    #[error("no decision before the deadline: no master answered, or the transfer stalled")]
    NoDecision,
}

/// The provisioner that runs card's agent (see the module docs).
#[derive(Debug)]
pub struct AgentProvisioner {
    /// Directory of trust anchor files.
    pub trust_dir: PathBuf,
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

impl<V: Volumes> Provisioner<V> for AgentProvisioner {
    fn provision(&mut self, s: &mut Session<'_, V>) -> Result<Provisioned, ProvisionError> {
        let Some(link) = s.link else {
            return Ok(Provisioned::NoMaster {
                waited: Duration::ZERO,
            });
        };
        // A card without usable flash runs every set from RAM: its only store is the
        // RAM store (fresh, or the one a kexec'd boot image finds carried).
        let mut in_ram = match s.store {
            Some(_) => None,
            None => {
                let ram = crate::ram::open(&self.carried_dir, &self.ram_dir, &self.proc)
                    .map_err(|e| ProvisionError {
                        what: "the flash is unusable (see the flash error above) and no RAM store could be made, so no plan can be stored: mend the card's flash or give it more memory".into(),
                        source: Some(Box::new(e)),
                    })?;
                log::warn!(
                    "SHELFBOOT: no usable flash: this card runs its set from RAM and fetches it again on every cold boot"
                );
                Some(ram)
            }
        };
        let t = crate::boottime::now();
        let anchor = load_anchor(&self.trust_dir).map_err(|e| failed("no trust anchor", e))?;
        let cfg = s.config;
        let mut sock =
            PacketSocket::open(&link.name, transfer_socket(cfg.ethertype)).map_err(|source| {
                failed(
                    "backplane",
                    AgentRunError::Socket {
                        iface: link.name.clone(),
                        source,
                    },
                )
            })?;
        let link_mtu = shelfboot_proto::protocol_mtu(sock.mtu());
        let identity = identity(cfg, MacAddr(link.mac));
        crate::boottime::step("socket", t);
        let mut setup = Some(crate::boottime::now());
        let started = Instant::now();
        let mut phase = BootPhase::PowerOn;
        let mut last_command = None;
        for _ in 0..=MAX_RESETS {
            let mut nonce = [0u8; 16];
            let mut seed = [0u8; 8];
            random(&mut nonce)
                .and_then(|()| random(&mut seed))
                .map_err(|e| failed("nonce", e))?;
            let acfg = AgentConfig {
                identity: identity.clone(),
                phase,
                ethertype: cfg.ethertype,
                link_mtu,
                anchor: anchor.clone(),
                nonce,
                seed: u64::from_be_bytes(seed),
                timers: Timers {
                    autonomy: Some(cfg.master_timeout),
                    hold: cfg.hold,
                    alive: cfg.alive,
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
            let first = setup.take();
            let (ended, ram) = match in_ram.take() {
                Some(main) => {
                    let agent =
                        Agent::in_ram(acfg, main, Instant::now()).with_last_command(last_command);
                    if let Some(t) = first {
                        crate::boottime::step("agent store", t);
                    }
                    let e = converse(agent, &mut sock, &link.name, cfg.hold);
                    in_ram = Some(e.main);
                    (e.end, None)
                }
                None => {
                    let Some(store) = s.store.take() else {
                        return Err(ProvisionError {
                            what: "the flash store was not given back by the previous conversation"
                                .into(),
                            source: None,
                        });
                    };
                    let mut agent =
                        Agent::new(acfg, store, Instant::now()).with_last_command(last_command);
                    match crate::ram::open(&self.carried_dir, &self.ram_dir, &self.proc) {
                        Ok(ram) => agent = agent.with_ram_store(ram),
                        Err(e) => log::warn!(
                            "agent: no RAM store, test-mode plans will be refused: {}",
                            shelfboot_proto::report::error_chain(&e)
                        ),
                    }
                    if let Some(t) = first {
                        crate::boottime::step("agent store", t);
                    }
                    let e = converse(agent, &mut sock, &link.name, cfg.hold);
                    // The session keeps the flash store, whatever the decision: the flow
                    // boots the committed set from it.
                    s.store = Some(e.main);
                    (e.end, e.ram)
                }
            };
            last_command = ended.last_command;
            // What the resident agent needs if this conversation ends in a hand-off.
            let seed = Seed {
                anchor: anchor.clone(),
                iface: link.name.clone(),
                mac: identity.mac,
                obeyed: ended.obeyed,
                last_command,
            };
            let decision = ended.decided.map_err(|e| failed("agent", e))?;
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
                        "agent: decided {handoff:?} of RAM set {} ({} artifacts), validated_only={validated_only}; flash untouched",
                        set.digest,
                        set.artifacts.len()
                    );
                    s.resident = Some(seed);
                    let ram = ram.or(in_ram);
                    return ram_hand_off(ram, &set, &self.carried_dir, &self.ram_dir)
                        .map_err(|e| failed("RAM set", e));
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
                        set.digest,
                        set.artifacts.len()
                    );
                    let health = HealthCheck::of(&set);
                    if let Some(h) = &health {
                        log::info!(
                            "agent: the set names a health command ({}): it is marked good when that passes, not at Ready",
                            h.command.display()
                        );
                    }
                    if !autonomous
                        && (cfg.stored || set.boot_image().is_none())
                        && health.is_none()
                        && let Some(fresh) = s.store.as_mut()
                    {
                        match fresh.mark_ready() {
                            Ok(()) => {
                                // block2mtd and some MTD drivers buffer in the page cache.
                                nix::unistd::sync();
                                log::info!("agent: set marked ready on flash");
                            }
                            Err(e) => log::error!(
                                "agent: marking the set ready failed: {}",
                                shelfboot_proto::report::error_chain(&e)
                            ),
                        }
                    }
                    s.resident = Some(seed);
                    return Ok(if autonomous {
                        Provisioned::NoMaster {
                            waited: started.elapsed(),
                        }
                    } else {
                        Provisioned::Committed { set }
                    });
                }
            }
        }
        Err(failed("agent", AgentRunError::TooManyResets))
    }
}

/// What one conversation leaves besides its stores.
struct End {
    decided: Result<Decision, AgentRunError>,
    last_command: Option<(u64, u64)>,
    obeyed: Option<(MacAddr, u64)>,
}

/// One conversation's end with the stores the agent gives back: its main store (flash,
/// or a flash-less card's RAM store) and the RAM store of a test-mode set.
struct Ended<W: Volumes> {
    end: End,
    main: Store<W>,
    ram: Option<Store<FileVolumes>>,
}

/// Drives `agent` to a decision over the backplane and takes it apart.
fn converse<W: Volumes>(
    agent: Agent<W>,
    sock: &mut PacketSocket,
    iface: &str,
    hold: Duration,
) -> Ended<W> {
    let mut seat = [Seat::new(agent, ())];
    let decided = drive(&mut seat, sock, iface, hold, None);
    let [seat] = seat;
    let agent = seat.into_agent();
    log::info!("agent: counters {:?}", agent.counters());
    let end = End {
        decided,
        last_command: agent.last_command(),
        obeyed: agent.obeyed(),
    };
    let (main, ram) = agent.into_stores();
    Ended { end, main, ram }
}

/// The socket of a conversation that fetches: the same thread hashes and writes flash
/// between receives, so a deep ring (16 MiB) rides out a slow UBI write instead of
/// dropping the stream.
pub(crate) fn transfer_socket(ethertype: u16) -> SocketConfig {
    SocketConfig {
        ethertype,
        rx_ring: shelfboot_netio::RingGeometry {
            block_nr: 256,
            ..shelfboot_netio::RingGeometry::RX_DEFAULT
        },
        rcvbuf: Some(8 << 20),
        ..SocketConfig::default()
    }
}

/// The card as its Solicits say: type, shelf, slot and features from the command line,
/// the architecture of this build.
pub(crate) fn identity(cfg: &crate::config::Config, mac: MacAddr) -> Identity {
    Identity {
        mac,
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
    }
}

/// The hand-off of a RAM set the agent committed in `ram`: its package files (plan
/// order) and boot image file.
fn ram_hand_off(
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
        // A segment holds other artifacts too: hand off only this one's bytes.
        let in_segment = shelfboot_card::flash::layout::is_segment(&a.volume);
        match a.artifact.kind {
            ArtifactKind::BootImage => {
                image = Some((path, in_segment.then_some((a.offset, a.artifact.size))));
            }
            ArtifactKind::Package if in_segment => packages.push(Layer::FileExtent {
                path,
                offset: a.offset,
                size: a.artifact.size,
            }),
            ArtifactKind::Package => packages.push(Layer::File(path)),
        }
    }
    let ram_dir = if carried.join("table").exists() {
        carried
    } else {
        fresh
    };
    Ok(Provisioned::RamSet {
        set: set.clone(),
        packages,
        boot: image.map(|(image, range)| RamBoot {
            image,
            range,
            cmdline: set.cmdline.clone(),
            ram_dir: ram_dir.to_path_buf(),
        }),
    })
}

/// Runs the agent (card's driver over the backplane socket) until it decided and
/// finished its sends (a held agent is driven until the master's WarmBoot or the end of
/// its hold), or `deadline` passed. Returns the decision. Feeds the watchdog: the
/// resident agent's staging runs here too, without init's feeder thread.
pub(crate) fn drive<V: Volumes>(
    seat: &mut [Seat<V>; 1],
    sock: &mut PacketSocket,
    iface: &str,
    hold: Duration,
    deadline: Option<Instant>,
) -> Result<Decision, AgentRunError> {
    let mut driver = Driver::new(sock);
    let mut last_progress = None;
    let mut held = false;
    let mut first_sent = false;
    loop {
        crate::watchdog::feed();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(AgentRunError::NoDecision);
        }
        driver.tick(seat);
        if !first_sent && driver.frames_sent() > 0 {
            first_sent = true;
            log::info!(
                "agent: first Solicit sent (monotonic {:.6} s)",
                crate::boottime::monotonic_secs()
            );
            crate::boottime::first_solicit();
        }
        let [s] = &mut *seat;
        if !held && s.agent.phase() == Phase::Held {
            held = true;
            log::info!(
                "SHELFBOOT: set committed; holding for the master's warm boot (up to {} s)",
                hold.as_secs()
            );
        }
        if let Some(p) = s.agent.fetch_progress()
            && last_progress
                .is_none_or(|(at, _): (Instant, u64)| at.elapsed() >= Duration::from_secs(2))
        {
            log::info!("agent: fetched {} of {} bytes", p.0, p.1);
            last_progress = Some((Instant::now(), p.0));
        }
        if (s.agent.phase() == Phase::Done || s.agent.next_deadline().is_none())
            && let Some(d) = s.decision.take()
        {
            return Ok(d);
        }
        let wait = Driver::<PacketSocket>::wait(&seat[..], Instant::now(), MAX_WAIT);
        driver
            .receive(seat, wait)
            .map_err(|source| AgentRunError::Receive {
                iface: iface.to_string(),
                source,
            })?;
    }
}

pub(crate) fn random(buf: &mut [u8]) -> Result<(), AgentRunError> {
    // Drawn early in the background by the flow (crate::entropy), else /dev/urandom.
    crate::entropy::fill(buf).map_err(AgentRunError::Random)
}

/// The bytes of a key file's hex field; `None` if it is not hex.
fn unhex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
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
            format!("shelfboot-ed25519-public {}\n", hex::encode(key())),
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
    fn hex_round_trip() {
        assert_eq!(unhex(&hex::encode(key())).unwrap(), key().to_vec());
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
