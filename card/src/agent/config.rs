//! What the agent is told at boot: the card's identity, its trust anchor, the per-boot
//! nonce and the timers. Pure data; the caller (init on a real card, the simulated-card
//! runner in a process) fills it in.
//!
//! This module does not read the kernel command line or sysfs (init does) and does not
//! draw random numbers (the caller passes the nonce and seed, so the agent stays
//! deterministic under test).

use std::time::Duration;

use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::{Arch, BootPhase, Nonce};
use shelfboot_proto::sign::TrustAnchor;

/// Who the card is, as it says in its Solicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Backplane MAC (the source of every frame the agent sends).
    pub mac: MacAddr,
    /// Card type, e.g. `lc100`.
    pub card_type: String,
    /// Processor architecture.
    pub arch: Arch,
    /// Shelf number.
    pub shelf: u16,
    /// Slot number.
    pub slot: u16,
    /// Hardware revision.
    pub hw_rev: String,
    /// Features the card asks for.
    pub features: Vec<String>,
}

/// Timers of the conversation (see `docs/conversation.md`, "Timers").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timers {
    /// First Solicit retry interval; doubles on every unanswered Solicit.
    pub solicit_initial: Duration,
    /// Cap of the Solicit retry interval.
    pub solicit_max: Duration,
    /// Jitter, in percent of the interval, added or removed at random (0..=100).
    pub jitter_percent: u8,
    /// With a committed set and no valid plan after this long, boot the committed set on
    /// our own ("autonomous"). `None`: wait for a master forever.
    pub autonomy: Option<Duration>,
    /// Re-send a Fetch that got no Join after this long.
    pub fetch_retry: Duration,
    /// Give up on a transfer (back to discovery) after this many unanswered Fetches.
    pub fetch_attempts: u32,
    /// No data frame for this long during a transfer: report missing blocks, then
    /// re-Fetch from the resume point (the master restarted, or we were dropped).
    pub stall: Duration,
    /// Interval of Progress reports to the master during a fetch.
    pub progress: Duration,
    /// Ready is sent this many times, `ready_spacing` apart (it is not acknowledged).
    pub ready_repeats: u32,
    /// Spacing of the Ready repeats.
    pub ready_spacing: Duration,
    /// Longest hold after a BurnNow ("prepare"): with the set committed and Ready sent,
    /// the card waits this long for the master's WarmBoot, then hands off on its own.
    pub hold: Duration,
    /// While held: an Alive this often, so the master keeps the card present.
    pub alive: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            solicit_initial: Duration::from_millis(250),
            solicit_max: Duration::from_secs(8),
            jitter_percent: 25,
            autonomy: Some(Duration::from_secs(60)),
            fetch_retry: Duration::from_millis(150),
            fetch_attempts: 12,
            stall: Duration::from_millis(400),
            progress: Duration::from_secs(1),
            ready_repeats: 3,
            ready_spacing: Duration::from_millis(100),
            hold: Duration::from_secs(600),
            alive: Duration::from_secs(2),
        }
    }
}

/// Everything the agent needs to start a boot conversation.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Who we are.
    pub identity: Identity,
    /// Why we are booting.
    pub phase: BootPhase,
    /// Our EtherType ([`shelfboot_proto::DEFAULT_ETHERTYPE`] unless configured).
    pub ethertype: u16,
    /// MTU of our backplane port ([`shelfboot_proto::STANDARD_MTU`] on most backplanes).
    /// Said in the Solicit when it is not 1500, so the master sends jumbo frames only to
    /// a card that takes them; a session whose blocks would not fit it is not joined.
    pub link_mtu: u16,
    /// Keys whose signatures on plans and commands we accept.
    pub anchor: TrustAnchor,
    /// Fresh random nonce of this boot (a plan is accepted only if it echoes it).
    pub nonce: Nonce,
    /// Seed of the backoff jitter (any random value; distinct per card).
    pub seed: u64,
    /// Timers.
    pub timers: Timers,
}
