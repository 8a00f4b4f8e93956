//! The public vocabulary of a session: configuration, what `poll` returns, events, member
//! states, admission answers, counters and errors. The logic is in the parent module.

use std::time::Duration;

use shelfboot_proto::data::DataError;
use shelfboot_proto::frame::{Link, MacAddr};
use shelfboot_proto::msg::Join;
use thiserror::Error;

use crate::geometry::GeometryError;
use crate::pacing::RateLimits;

/// Tunables of a session. [`SenderConfig::new`] gives the defaults documented per field.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Addressing of data frames: `dst` is the session's group MAC (or one card's MAC).
    pub link: Link,
    /// Block size (from `data::block_size_for_mtu`).
    pub block_size: u16,
    /// Rate ceiling/floor and AIMD steps (frame bytes per second). Default: 125 MB/s
    /// ceiling, 5 MB/s floor, +15 MB/s per clean interval (a halved rate is back at the
    /// ceiling in about 0.2 s: a burst of loss from a receiver that was not scheduled for a
    /// while must not cost a second at half rate), back off above 5 % loss, at most halve
    /// per interval.
    pub rate: RateLimits,
    /// Token bucket depth in bytes (how many frames may go back to back), at most: the
    /// bucket holds 16 ms of sending at the current rate, at least one `batch`, at most
    /// this. Default 256 KiB (2 ms at 125 MB/s, 180 full frames; more than the 1 ms the
    /// serve loop sleeps per batch): some catch-up after the caller was not scheduled for
    /// a while, while a burst stays well inside a veth's backlog queue and what a card
    /// absorbs (2 MiB overflowed an unshaped veth in the 16-card conversation test, and
    /// 512 KiB made the one-card test's card drop and NACK). The long-run rate stays exact.
    pub burst: u64,
    /// Once the bucket is empty, [`SendStep::Wait`] asks the caller to come back when this
    /// many bytes of credit have built up (at most `burst`), so that it wakes once per batch
    /// and sends the batch with one kernel call. Default 64 KiB (about 45 full frames,
    /// 0.5 ms at 125 MB/s).
    pub batch: u64,
    /// Time from creation until the first data frame; cards joining within it share the
    /// first pass. Default 200 ms.
    pub join_window: Duration,
    /// The first pass starts before the end of the join window once this long has passed
    /// since the last card joined: cards that ask together (a shelf powered on at once)
    /// arrive within a few milliseconds of each other, and a lone card should not wait
    /// the whole window. Default 100 ms; `Duration::MAX` (or anything ≥ `join_window`)
    /// always waits the full window.
    pub join_quiet: Duration,
    /// After the window, a card is still admitted if its resume point is at most this many
    /// bytes behind the first pass (it repairs the gap by NACK). Default 8 MiB.
    pub late_join_bytes: u64,
    /// Once every member the caller expects has joined (`Sender::expect_members`), the
    /// first pass starts this long after the last join: the time for its Join to reach
    /// the card and the card's port to join the group. Frames sent sooner miss that card,
    /// which must then buffer what follows until they are repaired. Default 20 ms.
    pub join_grace: Duration,
    /// A member whose reported position falls more than this many bytes behind the first
    /// pass is dropped to catch-up. Judged when its Progress or Nack arrives. Must exceed
    /// the receivers' window (a card holding a hole at the start of a full window is that far
    /// behind while healthy) plus the data in flight. Default 32 MiB.
    pub max_lag_bytes: u64,
    /// A member that sends nothing (Progress, Nack) for this long is dropped. Default 2 s.
    pub silence_timeout: Duration,
    /// Rate controller interval. Default 50 ms.
    pub adjust_interval: Duration,
    /// A block repaired within this time is not repaired again for another NACK (the
    /// NACK probably crossed the repair). Keep it below the receivers' NACK retry.
    /// Default 10 ms.
    pub repair_holdoff: Duration,
    /// Most slices with queued repairs; NACKs for further slices are ignored (their
    /// senders NACK again). Default 1024 (16 KiB of bitmaps).
    pub max_repair_slices: usize,
    /// Flow control: the receivers' window in bytes (`ReceiverConfig::window_bytes`). The
    /// first pass never sends a slice `window_bytes / slice_bytes` or more slices past the
    /// position (whole slices delivered, from its Progress, lowered by its NACKs) of the
    /// slowest active member: what a card that stores more slowly than the session sends
    /// (a TCG guest writing flash, a descheduled process) cannot hold is not sent, rather
    /// than dropped, NACKed and sent again. Repairs are never held back. Default 4 MiB (the
    /// receiver's default); 0 turns flow control off.
    pub flow_window: u64,
    /// Fairness of flow control: a member that holds the first pass back (it lacks the
    /// window) while the median member is ahead of it, and has kept the first pass below
    /// `rate.min_rate` for longer than this since it was last level with the median, is
    /// dropped to catch-up ([`DropCause::Slow`]): one slow card (a TCG guest writing flash)
    /// must not hold back the shelf, while a card a little slower than the others, or one
    /// descheduled for a moment, stays in the shared pass (dropping it would send its rest
    /// once more). A session of one member never drops it for this. Default 750 ms: the
    /// fast cards it holds see no new block meanwhile, and a card that re-Fetches twice
    /// without progress (after 400 ms, then 800 ms more) is moved to a session of its own
    /// by `master serve`; the slow card must be gone well before that.
    pub flow_hold: Duration,
}

impl SenderConfig {
    /// The defaults for `link` and `block_size`.
    pub fn new(link: Link, block_size: u16) -> SenderConfig {
        SenderConfig {
            link,
            block_size,
            rate: RateLimits {
                max_rate: 125_000_000,
                min_rate: 5_000_000,
                increase: 15_000_000,
                loss_threshold: 0.05,
                min_factor: 0.5,
            },
            burst: 256 * 1024,
            batch: 64 * 1024,
            join_window: Duration::from_millis(200),
            join_quiet: Duration::from_millis(100),
            late_join_bytes: 8 << 20,
            join_grace: Duration::from_millis(20),
            max_lag_bytes: 32 << 20,
            silence_timeout: Duration::from_secs(2),
            adjust_interval: Duration::from_millis(50),
            repair_holdoff: Duration::from_millis(10),
            max_repair_slices: 1024,
            flow_window: 4 << 20,
            flow_hold: Duration::from_millis(750),
        }
    }
}

/// Errors of a session. Each stops the session's sending; the caller reports it.
#[derive(Debug, Error)]
pub enum SenderError {
    /// The artifact cannot be cut at the configured block size.
    #[error("transfer {transfer} of artifact {artifact}: invalid session geometry")]
    Geometry {
        transfer: u32,
        artifact: String,
        #[source]
        source: GeometryError,
    },
    /// The block source failed.
    #[error(
        "transfer {transfer}: reading {len} bytes at offset {offset} of artifact {artifact} failed: check the blob file"
    )]
    Read {
        transfer: u32,
        artifact: String,
        offset: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    /// The data frame could not be encoded (e.g. the caller's buffer is too small).
    #[error(
        "transfer {transfer}: encoding slice {slice} block {block} of artifact {artifact} failed"
    )]
    Encode {
        transfer: u32,
        artifact: String,
        slice: u32,
        block: u16,
        #[source]
        source: DataError,
    },
}

/// What [`Sender::poll`](super::Sender::poll) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStep {
    /// A data frame of `len` bytes is in the buffer: send it to `link.dst`.
    Frame {
        /// Frame length.
        len: usize,
        /// Whether it is a repair (NACK answer) rather than first-pass data.
        retransmit: bool,
    },
    /// Nothing may or must be sent before `until` (pacing, join window, or nothing queued:
    /// then `until` is the next timeout check). Call again at `until` or when a control
    /// message arrives.
    Wait {
        /// When to call again.
        until: Duration,
    },
    /// Every member completed or was dropped: the session is over.
    Done,
}

/// Why a member was dropped from the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Nothing heard from it for `silent_for`.
    Silent {
        /// Time since the last message.
        silent_for: Duration,
    },
    /// Its position is `behind` slices behind the first pass.
    Lagging {
        /// Slices behind.
        behind: u32,
    },
    /// It held the first pass below the rate floor (flow control) for `held` while the
    /// median member was ahead of it.
    Slow {
        /// Time since it was last level with the median member.
        held: Duration,
        /// First-pass rate over that time, bytes/s.
        rate: u64,
    },
    /// The caller removed it ([`Sender::remove`](super::Sender::remove)).
    Removed,
}

/// A member's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberStatus {
    /// Receiving.
    Active,
    /// Reported all bytes received.
    Complete,
    /// Dropped; needs a catch-up session from `have_slices`.
    Dropped(DropCause),
}

/// What the session knows about one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberState {
    /// Standing.
    pub status: MemberStatus,
    /// Contiguous slices it holds, from its last Progress (lowered by its NACKs).
    pub have_slices: u32,
    /// When it was last heard from.
    pub last_heard: Duration,
    /// NACKs received from it.
    pub nacks: u64,
    /// Missing blocks it reported, summed over its NACKs.
    pub nacked_blocks: u64,
}

/// Something the caller must act on, from [`Sender::next_event`](super::Sender::next_event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderEvent {
    /// `member` has every byte.
    Completed {
        /// The member.
        member: MacAddr,
    },
    /// `member` left the session; start a catch-up session for it from `resume_slices`.
    Dropped {
        /// The member.
        member: MacAddr,
        /// Why.
        cause: DropCause,
        /// Contiguous slices it reported holding.
        resume_slices: u32,
    },
    /// Every member completed or was dropped.
    Finished,
}

/// Answer to [`Sender::join`](super::Sender::join).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admitted: send this Join to the card.
    Joined(Join),
    /// Not admitted: serve the card in a later (catch-up) session.
    Later(LaterReason),
}

/// Why a card is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaterReason {
    /// The session has finished.
    Finished,
    /// The card's resume point is `behind` slices behind the first pass.
    TooFarBehind {
        /// Slices behind.
        behind: u32,
    },
    /// The card was dropped from this session before.
    WasDropped,
}

/// What became of a control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlOutcome {
    /// Used.
    Accepted,
    /// Used, and it showed the member too far behind: it was dropped (see the event).
    MemberDropped,
    /// Not used (counted in [`SenderStats::ignored_control`]).
    Ignored(IgnoreReason),
}

/// Why a control message was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// For another transfer id.
    WrongTransfer,
    /// About another artifact.
    WrongArtifact,
    /// From a MAC that is not a member.
    NotMember,
    /// From a member that completed or was dropped.
    NotActive,
    /// For a slice past the end of the artifact.
    OutOfRange,
    /// The repair queue is full.
    RepairQueueFull,
}

/// Counters of a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Data frames sent (first pass and repairs).
    pub frames: u64,
    /// Bytes of frames sent (what the token bucket charges).
    pub wire_bytes: u64,
    /// Artifact bytes sent in the first pass.
    pub data_bytes: u64,
    /// Artifact bytes sent again as repairs.
    pub retransmit_bytes: u64,
    /// Repair frames sent.
    pub retransmit_frames: u64,
    /// NACKs accepted.
    pub nacks: u64,
    /// Missing blocks reported by accepted NACKs.
    pub nacked_blocks: u64,
    /// Blocks not queued because they were repaired within the holdoff.
    pub holdoff_suppressed: u64,
    /// Control messages ignored.
    pub ignored_control: u64,
    /// Most slices ever queued for repair at once.
    pub repair_queue_high_water: usize,
    /// Rate decreases.
    pub rate_decreases: u64,
    /// Current rate, bytes/s.
    pub rate: u64,
    /// Times the first pass stopped because a member lacked window (flow control).
    pub flow_stops: u64,
    /// Time the first pass spent stopped by flow control (with nothing to repair).
    pub flow_blocked: Duration,
}
