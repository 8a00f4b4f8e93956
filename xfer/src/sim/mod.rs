//! A deterministic in-memory simulation of one master and many cards: [`Sender`] sessions
//! and [`Receiver`]s exchanging real encoded frames over a simulated broadcast backplane,
//! in simulated time, with a seeded random number generator.
//!
//! The backplane has a constant one-way latency, independent Bernoulli loss per receiver
//! for data frames (and optionally for control messages), no reordering and no bandwidth
//! limit besides the sender's own pacing; a receiver may have a processing capacity
//! (bytes/s) past which it drops frames (a slow card), or, with a receive ring, queues them
//! in a ring of bounded size that it drains at that capacity and drops only what overflows
//! the ring (a card blocked in flash writes behind its socket ring). Data frames are encoded by the
//! sender and decoded by every receiver (CRC included); control messages are passed as
//! values. The harness plays the master's part: it admits cards, and starts a catch-up
//! session for cards a session dropped (at once, with all cards waiting).
//!
//! Used by the tests and by `examples/simulate.rs` (which times the engine's CPU). It is not
//! a network emulator and not part of the product's I/O path.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use shelfboot_proto::MAX_FRAME_LEN;
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::{Digest, Message};
use thiserror::Error;

use crate::geometry::ArtifactInfo;
use crate::receiver::{Receiver, ReceiverConfig, ReceiverError, ReceiverStats};
use crate::sender::{Sender, SenderConfig, SenderError, SenderStats};
use crate::source::{BlockSource, ByteSink};

/// splitmix64: small, seedable, good enough for loss decisions.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64) < p * (1u64 << 53) as f64
    }
}

/// The artifact, shared by every session without copying.
#[derive(Debug, Clone)]
pub struct MemSource(pub Rc<[u8]>);

impl BlockSource for MemSource {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        (&*self.0).read_at(offset, buf)
    }
}

/// Where a simulated card puts the artifact.
pub enum SimSink {
    /// Keeps the bytes (tests compare them; needed for restarts).
    Keep(Vec<u8>),
    /// Counts them only (the receiver still hashes and verifies them).
    Count(u64),
}

impl std::fmt::Debug for SimSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimSink::Keep(v) => write!(f, "Keep({} bytes)", v.len()),
            SimSink::Count(n) => write!(f, "Count({n} bytes)"),
        }
    }
}

impl ByteSink for SimSink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        match self {
            SimSink::Keep(v) => v.extend_from_slice(bytes),
            SimSink::Count(n) => *n += bytes.len() as u64,
        }
        Ok(())
    }
}

/// One simulated card.
#[derive(Debug, Clone)]
pub struct CardSpec {
    /// Data frame loss probability on its link.
    pub loss: f64,
    /// When it sends its Fetch.
    pub start_at: Duration,
    /// Most bytes/s it can take in (frames past it are dropped, or queued with `ring`);
    /// `None`: unlimited.
    pub capacity: Option<u64>,
    /// With `capacity`: frames wait in a receive ring of this many frame bytes and are
    /// taken in at `capacity`; only frames that do not fit in the ring are dropped.
    /// `None`: no ring, frames past `capacity` are dropped at once.
    pub ring: Option<u64>,
    /// Keep the received bytes (else only count them).
    pub keep_bytes: bool,
}

impl Default for CardSpec {
    fn default() -> Self {
        CardSpec {
            loss: 0.0,
            start_at: Duration::ZERO,
            capacity: None,
            ring: None,
            keep_bytes: true,
        }
    }
}

/// Simulation parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random decision.
    pub seed: u64,
    /// One-way latency of every frame.
    pub latency: Duration,
    /// Loss probability of control messages (card → master and Join).
    pub control_loss: f64,
    /// Sender tunables (every session).
    pub sender: SenderConfig,
    /// Receiver tunables (every card).
    pub receiver: ReceiverConfig,
    /// Stop after this much simulated time.
    pub max_time: Duration,
    /// Stop after this many steps.
    pub max_steps: u64,
    /// Most sessions a card may take part in before the harness gives up on it.
    pub max_sessions_per_card: u32,
}

/// Scripted disturbances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disturbance {
    /// The card stops receiving and sending.
    Mute(usize),
    /// The card resumes receiving and sending.
    Unmute(usize),
    /// The card restarts: its buffered slices are lost, it is down for `down`, then it
    /// resumes from the bytes its sink holds with a new Fetch.
    Restart {
        /// Card index.
        card: usize,
        /// Down time.
        down: Duration,
    },
    /// The master restarts: every session and every frame in flight is lost; it is down for
    /// `down`, then answers the cards' new Fetches (with their resume points).
    MasterRestart {
        /// Down time.
        down: Duration,
    },
}

/// A fatal error of the engine inside the simulation.
#[derive(Debug, Error)]
pub enum SimError {
    /// A sender failed.
    #[error("simulated master: session {transfer} failed")]
    Sender {
        transfer: u32,
        #[source]
        source: SenderError,
    },
    /// A receiver failed.
    #[error("simulated card {card}: receiver failed")]
    Receiver {
        card: usize,
        #[source]
        source: ReceiverError,
    },
    /// A restart was scripted for a card that does not keep its bytes.
    #[error("simulated card {card}: restart needs keep_bytes = true")]
    RestartWithoutBytes { card: usize },
}

/// Outcome of one card.
#[derive(Debug)]
pub struct CardReport {
    /// Completed and verified.
    pub complete: bool,
    /// When it completed.
    pub completed_at: Option<Duration>,
    /// Bytes delivered.
    pub delivered: u64,
    /// Sessions it was admitted to.
    pub sessions: u32,
    /// Counters of its last receiver instance.
    pub stats: ReceiverStats,
    /// Most slice buffer bytes over all its receiver instances.
    pub buffered_high_water: u64,
    /// Frames dropped because its receive ring was full.
    pub ring_drops: u64,
    /// Most frame bytes its receive ring ever held.
    pub ring_high_water: u64,
    /// Its sink.
    pub sink: Option<SimSink>,
}

/// Outcome of a run.
#[derive(Debug)]
pub struct SimReport {
    /// Every card completed.
    pub all_complete: bool,
    /// Simulated time at the end.
    pub sim_time: Duration,
    /// Steps taken.
    pub steps: u64,
    /// Sessions started.
    pub sessions: u32,
    /// Sender counters summed over sessions.
    pub sender: SenderStats,
    /// Counters of the first session alone.
    pub first_session: SenderStats,
    /// Per card.
    pub cards: Vec<CardReport>,
    /// Wall-clock CPU spent in the sender (poll, NACK/Progress handling).
    pub sender_cpu: Duration,
    /// Wall-clock CPU spent in receivers (frame decode, on_data, poll), all cards.
    pub receiver_cpu: Duration,
}

struct Session {
    tx: Sender<MemSource>,
    wake: Duration,
    done: bool,
}

struct Card {
    spec: CardSpec,
    mac: MacAddr,
    rx: Option<Receiver<SimSink>>,
    parked_sink: Option<SimSink>,
    session: Option<usize>,
    joined: bool,
    muted: bool,
    down_until: Option<Duration>,
    waiting: bool,
    wake: Duration,
    poll_now: bool,
    completed_at: Option<Duration>,
    sessions: u32,
    high_water: u64,
    budget: f64,
    budget_at: Duration,
    /// Receive ring (with `spec.ring`): frames waiting to be taken in, and their bytes.
    ring: VecDeque<Vec<u8>>,
    ring_bytes: u64,
    ring_drops: u64,
    ring_high_water: u64,
}

/// A simulation: build with [`Sim::new`], add [`Sim::disturb`]ances, then [`Sim::run`].
pub struct Sim {
    cfg: SimConfig,
    info: ArtifactInfo,
    source: MemSource,
    rng: SimRng,
    cards: Vec<Card>,
    sessions: Vec<Session>,
    script: Vec<(Duration, Disturbance)>,
    master_down_until: Option<Duration>,
    data: VecDeque<(Duration, usize, Vec<u8>)>,
    control: VecDeque<(Duration, usize, Message)>,
    sender_cpu: Duration,
    receiver_cpu: Duration,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("artifact", &self.info)
            .field("cards", &self.cards.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// A simulation of `cards` fetching `artifact`.
    pub fn new(cfg: SimConfig, artifact: Vec<u8>, cards: Vec<CardSpec>) -> Sim {
        let sha256 = Digest::of(&artifact);
        let info = ArtifactInfo {
            name: "sim-artifact 1".to_owned(),
            sha256,
            size: artifact.len() as u64,
        };
        let cards = cards
            .into_iter()
            .enumerate()
            .map(|(i, spec)| Card {
                mac: {
                    let [.., hi, lo] = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
                    MacAddr([2, 0, 0, 0, hi, lo])
                },
                wake: spec.start_at,
                parked_sink: Some(if spec.keep_bytes {
                    SimSink::Keep(Vec::new())
                } else {
                    SimSink::Count(0)
                }),
                spec,
                rx: None,
                session: None,
                joined: false,
                muted: false,
                down_until: None,
                waiting: false,
                poll_now: false,
                completed_at: None,
                sessions: 0,
                high_water: 0,
                budget: 0.0,
                budget_at: Duration::ZERO,
                ring: VecDeque::new(),
                ring_bytes: 0,
                ring_drops: 0,
                ring_high_water: 0,
            })
            .collect();
        Sim {
            rng: SimRng::new(cfg.seed),
            cfg,
            info,
            source: MemSource(artifact.into()),
            cards,
            sessions: Vec::new(),
            script: Vec::new(),
            master_down_until: None,
            data: VecDeque::new(),
            control: VecDeque::new(),
            sender_cpu: Duration::ZERO,
            receiver_cpu: Duration::ZERO,
            buf: vec![0; MAX_FRAME_LEN],
        }
    }

    /// The artifact's description (name, sha256, size).
    pub fn artifact(&self) -> &ArtifactInfo {
        &self.info
    }

    /// Schedules `what` at simulated time `at`.
    pub fn disturb(&mut self, at: Duration, what: Disturbance) {
        self.script.push((at, what));
        self.script.sort_by_key(|(t, _)| *t);
    }
}

mod run;
#[cfg(test)]
mod tests;
