//! Simulated cards: N card agents with distinct MACs on one interface, each with its flash
//! as [`FileVolumes`] in its own directory, in one process (binary `simcard`, and tests).
//!
//! One AF_PACKET socket (netio) serves all cards: a received frame goes to the card whose
//! MAC it is addressed to, to every card for broadcast, and to the cards in a transfer
//! group for multicast. Because the cards' MACs are not the interface's, the interface is
//! put in promiscuous mode (`ip link set IF promisc on`) when there is more than one card
//! or the MAC differs. Each card's state is reported as [`CardReport`] (and written as
//! JSON to `report` if set, whenever something changes).
//!
//! This module does not decide anything a card does (the [`crate::agent`] does); the loop
//! that moves frames and keeps time is [`crate::driver`]'s, the one init uses too; this
//! module opens the flash of each card and the socket, and records outcomes. A card's
//! hand-off in the report is the agent's, [`crate::boot::handoff_of`] its set: a
//! simulated card does not boot, so it counts no boot ([`crate::boot::choose`] is not
//! called; its flash would otherwise roll back after `max_attempts` runs that never
//! reach Ready).

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use shelfboot_netio::{PacketSocket, SocketConfig};
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::{Arch, BootPhase, Handoff};
use shelfboot_proto::sign::TrustAnchor;

use crate::agent::{Agent, AgentConfig, Counters, Decision, Identity, Phase, Timeline, Timers};
use crate::driver::{Driver, Seat};
use crate::flash::{FileVolumes, Store, StoreConfig};

/// One simulated card.
#[derive(Debug, Clone)]
pub struct SimCard {
    /// Backplane MAC.
    pub mac: MacAddr,
    /// Card type.
    pub card_type: String,
    /// Architecture.
    pub arch: Arch,
    /// Shelf.
    pub shelf: u16,
    /// Slot.
    pub slot: u16,
    /// Features asked for.
    pub features: Vec<String>,
    /// Directory of its simulated flash.
    pub dir: PathBuf,
}

/// Settings of a simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Interface.
    pub iface: String,
    /// EtherType.
    pub ethertype: u16,
    /// Trust anchor of every card.
    pub anchor: TrustAnchor,
    /// The cards.
    pub cards: Vec<SimCard>,
    /// Flash geometry of a fresh card: LEB size in bytes.
    pub leb_size: u64,
    /// Flash geometry of a fresh card: number of LEBs.
    pub total_lebs: u64,
    /// Boot phase of the first Solicit.
    pub phase: BootPhase,
    /// Timers of each agent.
    pub timers: Timers,
    /// Give up after this long.
    pub timeout: Duration,
    /// Write the reports here (JSON) as they change.
    pub report: Option<PathBuf>,
}

/// Where one card ended up.
#[derive(Debug, Clone, Serialize)]
pub struct CardReport {
    /// MAC.
    pub mac: String,
    /// Slot.
    pub slot: u16,
    /// Card type.
    pub card_type: String,
    /// Agent phase.
    pub phase: Phase,
    /// `kexec`, `switch_root`, `reset`, or empty while undecided.
    pub decision: String,
    /// Decided without fetching anything (warm boot).
    pub validated_only: bool,
    /// Booted without a master.
    pub autonomous: bool,
    /// Committed set digest (hex), empty if pristine.
    pub digest: String,
    /// Bytes staged / to fetch in the current fetch.
    pub progress: Option<(u64, u64)>,
    /// Last error from the master or to the master.
    pub error: Option<String>,
    /// Agent counters.
    pub counters: Counters,
    /// Seconds from the start of the conversations (every card solicits at once, once
    /// all flash stores are open) to this card's decision; `None` while undecided.
    pub decided_after_s: Option<f64>,
    /// Seconds from the call of [`run`] until the conversations started (the socket and
    /// every card's flash store opened).
    pub setup_s: f64,
    /// Seconds from the start of the conversations to the plan, the first stored data block and the last
    /// one (the agent's [`Timeline`]); `None` for what did not happen.
    pub plan_after_s: Option<f64>,
    /// See `plan_after_s`.
    pub first_block_after_s: Option<f64>,
    /// See `plan_after_s`.
    pub last_block_after_s: Option<f64>,
}

/// Failures of the simulation itself (not of a card's conversation).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("opening the flash of card {mac} in {dir}")]
    Flash {
        mac: MacAddr,
        dir: PathBuf,
        #[source]
        source: crate::flash::VolumeError,
    },
    #[error("opening the flash store of card {mac} in {dir}")]
    Store {
        mac: MacAddr,
        dir: PathBuf,
        #[source]
        source: crate::flash::StoreError,
    },
    #[error("interface {iface}: run as root in the namespace that has it")]
    Socket {
        iface: String,
        #[source]
        source: shelfboot_netio::SocketError,
    },
    #[error("`ip link set {iface} promisc on` failed: the cards' unicast frames would not arrive")]
    Promisc {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading /dev/urandom for the cards' nonces")]
    Random(#[source] std::io::Error),
    #[error("writing the report {path}")]
    Report {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A simulated card's seat: its spec and the start of the conversations.
/// A seat's tag: the card, when its conversation started, and how long the setup before
/// it took (socket and flash stores opened).
type Sim = Seat<FileVolumes, (SimCard, Instant, Duration)>;

fn report_of(s: &Sim) -> CardReport {
    let (decision, validated_only, autonomous) = match &s.decision {
        None => (String::new(), false, false),
        Some(Decision::Boot {
            handoff,
            validated_only,
            autonomous,
            ..
        }) => (
            match handoff {
                Handoff::Kexec => "kexec".to_owned(),
                Handoff::SwitchRoot => "switch_root".to_owned(),
            },
            *validated_only,
            *autonomous,
        ),
        Some(Decision::Reset { .. }) => ("reset".to_owned(), false, false),
    };
    let timeline = *s.agent.timeline();
    let error = s
        .agent
        .last_error_sent()
        .or(s.agent.last_master_error())
        .map(|e| format!("{:?}: {}", e.reason, e.detail));
    CardReport {
        mac: s.tag.0.mac.to_string(),
        slot: s.tag.0.slot,
        card_type: s.tag.0.card_type.clone(),
        phase: s.agent.phase(),
        decision,
        validated_only,
        autonomous,
        digest: s
            .agent
            .store()
            .digest()
            .map(|d| d.to_string())
            .unwrap_or_default(),
        progress: s.agent.fetch_progress(),
        error,
        counters: *s.agent.counters(),
        setup_s: s.tag.2.as_secs_f64(),
        decided_after_s: Timeline::secs_since(s.tag.1, s.decided_at),
        plan_after_s: Timeline::secs_since(s.tag.1, timeline.plan),
        first_block_after_s: Timeline::secs_since(s.tag.1, timeline.first_block),
        last_block_after_s: Timeline::secs_since(s.tag.1, timeline.last_block),
    }
}

fn random_bytes(buf: &mut [u8]) -> Result<(), SimError> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(SimError::Random)
}

/// Receive-ring blocks (64 KiB each) per simulated card: enough for a whole receiver
/// window of data frames. The sender's flow control never runs more than that window
/// (`ReceiverConfig::window_bytes`, 4 MiB) past what the card reported, so a card whose
/// ring holds the window loses no first-pass frame however long it is not scheduled;
/// with 64 blocks (4 MiB of ring for ~3.6 MB of payload) it did, and the repairs then
/// filled the receiver's window buffers too (docs/benchmarks.md, "Card receive path").
/// A full-size data frame takes 1600 bytes of a V3 block (header, address, frame, padding),
/// 40 frames of 1408 payload bytes per 64 KiB block: 74 blocks hold the window; 88 (5.5 MiB)
/// leave room for blocks the retire timer hands over part-filled and for control frames.
pub(crate) const RING_BLOCKS_PER_CARD: u32 = 88;

/// Receive-ring blocks for a simulator playing `cards` cards: [`RING_BLOCKS_PER_CARD`]
/// each, at most 512 (32 MiB).
fn sim_ring_blocks(cards: usize) -> u32 {
    u32::try_from(cards.saturating_mul(RING_BLOCKS_PER_CARD as usize))
        .map_or(512, |b| b.clamp(RING_BLOCKS_PER_CARD, 512))
}

/// Run the cards until each has decided and finished sending, `timeout` passes, or `stop`
/// is set. Returns every card's report.
pub fn run(cfg: &SimConfig, stop: &AtomicBool) -> Result<Vec<CardReport>, SimError> {
    let called = Instant::now();
    let mut sock = PacketSocket::open(
        &cfg.iface,
        SocketConfig {
            ethertype: cfg.ethertype,
            // One process plays many cards and stalls while they hash and write flash:
            // a receive ring that holds each card's receiver window (5.5 MiB per card,
            // at most 32 MiB) rides that out instead of dropping frames. The ring is
            // mapped memory, all of it resident from the start: it is the largest part
            // of a one-card process's RSS (docs/benchmarks.md, card RSS).
            rx_ring: shelfboot_netio::RingGeometry {
                block_nr: sim_ring_blocks(cfg.cards.len()),
                ..shelfboot_netio::RingGeometry::RX_DEFAULT
            },
            rcvbuf: Some(32 << 20),
            ..SocketConfig::default()
        },
    )
    .map_err(|source| SimError::Socket {
        iface: cfg.iface.clone(),
        source,
    })?;
    let own = MacAddr(sock.mac().0);
    let link_mtu = shelfboot_proto::protocol_mtu(sock.mtu());
    if cfg.cards.iter().any(|c| c.mac != own) {
        let status = std::process::Command::new("ip")
            .args(["link", "set", &cfg.iface, "promisc", "on"])
            .status()
            .map_err(|source| SimError::Promisc {
                iface: cfg.iface.clone(),
                source,
            })?;
        if !status.success() {
            return Err(SimError::Promisc {
                iface: cfg.iface.clone(),
                source: std::io::Error::other(format!("ip exited with {status}")),
            });
        }
    }
    let now = Instant::now();
    let mut sims = Vec::with_capacity(cfg.cards.len());
    for spec in &cfg.cards {
        let vols = FileVolumes::open_or_format(&spec.dir, cfg.leb_size, cfg.total_lebs).map_err(
            |source| SimError::Flash {
                mac: spec.mac,
                dir: spec.dir.clone(),
                source,
            },
        )?;
        let (store, _) =
            Store::open(vols, StoreConfig::default()).map_err(|source| SimError::Store {
                mac: spec.mac,
                dir: spec.dir.clone(),
                source,
            })?;
        let mut nonce = [0u8; 16];
        random_bytes(&mut nonce)?;
        let mut seed = [0u8; 8];
        random_bytes(&mut seed)?;
        let acfg = AgentConfig {
            identity: Identity {
                mac: spec.mac,
                card_type: spec.card_type.clone(),
                arch: spec.arch,
                shelf: spec.shelf,
                slot: spec.slot,
                hw_rev: "sim".into(),
                features: spec.features.clone(),
            },
            phase: cfg.phase,
            ethertype: cfg.ethertype,
            link_mtu,
            anchor: cfg.anchor.clone(),
            nonce,
            seed: u64::from_be_bytes(seed),
            timers: cfg.timers.clone(),
        };
        sims.push(Seat::new(
            Agent::new(acfg, store, now),
            (spec.clone(), now, Duration::ZERO),
        ));
    }
    let started = Instant::now();
    for s in &mut sims {
        s.tag.1 = started;
        s.tag.2 = started.saturating_duration_since(called);
    }
    let deadline = now + cfg.timeout;
    let mut driver = Driver::new(&mut sock);
    let mut dirty = true;
    let mut next_report = now;
    loop {
        let now = Instant::now();
        let all_done = sims.iter().all(|s| s.agent.phase() == Phase::Done);
        if all_done || now >= deadline || stop.load(Ordering::Relaxed) {
            break;
        }
        dirty |= driver.tick(&mut sims);
        // Frames: drain what the socket holds (bounded) before the next timers.
        let mut wait = Driver::<PacketSocket>::wait(&sims, now, Duration::from_millis(10));
        for _ in 0..16 {
            match driver.receive(&mut sims, wait) {
                Ok((0, changed)) => {
                    dirty |= changed;
                    break;
                }
                Ok((_, changed)) => dirty |= changed,
                Err(e) => {
                    log::error!("simcard: receive on {}: {e}", cfg.iface);
                    std::thread::sleep(Duration::from_millis(5));
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        let now = Instant::now();
        if let Some(path) = &cfg.report
            && (dirty && now >= next_report)
        {
            dirty = false;
            next_report = now + Duration::from_millis(200);
            write_report(path, &sims)?;
        }
    }
    if let Some(path) = &cfg.report {
        write_report(path, &sims)?;
    }
    Ok(sims.iter().map(report_of).collect())
}

fn write_report(path: &PathBuf, sims: &[Sim]) -> Result<(), SimError> {
    let reports: Vec<CardReport> = sims.iter().map(report_of).collect();
    let text = serde_json::to_vec_pretty(&reports).map_err(|e| SimError::Report {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| SimError::Report {
            path: path.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_holds_a_receiver_window_per_card_capped_at_32_mib() {
        assert_eq!(sim_ring_blocks(0), 88);
        assert_eq!(sim_ring_blocks(1), 88);
        assert_eq!(sim_ring_blocks(3), 264);
        assert_eq!(sim_ring_blocks(8), 512);
        assert_eq!(sim_ring_blocks(1000), 512);
        // The window's data frames fit one card's ring, with room to spare.
        let window = shelfboot_xfer::ReceiverConfig::default().window_bytes;
        let block = u64::from(shelfboot_netio::RingGeometry::RX_DEFAULT.block_size);
        let frames_per_block = (block - 48) / 1600;
        let payload = frames_per_block * 1408;
        let needed = window.div_ceil(payload);
        assert!(
            u64::from(RING_BLOCKS_PER_CARD) >= needed + needed / 10,
            "{needed} blocks needed"
        );
    }
}
