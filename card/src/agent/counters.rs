//! Counters of the card agent: what it sent, what it accepted, and every frame it dropped,
//! by reason. Read by the simulated-card runner's state report and by tests; init logs
//! them on hand-off.
//!
//! This module only counts; it decides nothing.

use serde::Serialize;

/// Counters of one agent (one boot conversation). All start at zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Frames handed to the agent.
    pub frames_in: u64,
    /// Frames the agent asked to send.
    pub frames_out: u64,
    /// Solicits sent.
    pub solicits: u64,
    /// Plans verified and acted on.
    pub plans_accepted: u64,
    /// Frames that did not decode (bad CRC, truncated, bad CBOR, unknown version/type).
    pub dropped_malformed: u64,
    /// Frames addressed to another card or to a group we did not join.
    pub dropped_not_for_us: u64,
    /// Plans or commands whose signature no trusted key verifies, or whose digest is
    /// not the digest of their contents.
    pub dropped_forged: u64,
    /// Plans answering another Solicit (nonce) and commands of an old epoch or serial.
    pub dropped_replayed: u64,
    /// Valid frames that make no sense now (a Join we did not ask for, a Plan while
    /// fetching, a control message only a card sends, a frame from another master).
    pub dropped_unexpected: u64,
    /// Data frames of a transfer we are not in, or that the receiver rejected.
    pub dropped_data: u64,
    /// Data blocks accepted by the receiver.
    pub data_blocks: u64,
    /// Artifact bytes written to staging.
    pub bytes_written: u64,
    /// Fetches sent (first requests and resumes).
    pub fetches: u64,
    /// NACK frames sent.
    pub nacks: u64,
    /// Commands verified and executed.
    pub commands: u64,
    /// Error messages received from a master.
    pub master_errors: u64,
    /// Error messages sent to the master.
    pub errors_sent: u64,
    /// Holds entered (a BurnNow, then the set committed or validated: Ready sent, waiting
    /// for the master's WarmBoot).
    pub holds: u64,
    /// Holds that ended without a WarmBoot (the hold timer ran out: handed off alone).
    pub hold_timeouts: u64,
    /// Announcements of a higher master epoch acted on (another master took over, or the
    /// master restarted): the card asked for a plan again at once, keeping what it staged.
    pub epoch_changes: u64,
    /// Times the agent fell back to an older protocol version (the master speaks only
    /// that).
    pub version_fallbacks: u64,
}

impl Counters {
    /// Frames dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_malformed
            + self.dropped_not_for_us
            + self.dropped_forged
            + self.dropped_replayed
            + self.dropped_unexpected
            + self.dropped_data
    }
}

/// When the milestones of one conversation happened (the agent's own clock, the `now` it
/// is driven with), for profiling where a card's time goes: before the first data block,
/// during the stream, after the last (until the driver's decision). Each is the first
/// (for `last_block`, the latest) occurrence; `None` until it happens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeline {
    /// A verified plan was accepted.
    pub plan: Option<std::time::Instant>,
    /// The first data block was stored.
    pub first_block: Option<std::time::Instant>,
    /// The latest new data block was stored.
    pub last_block: Option<std::time::Instant>,
}

impl Timeline {
    /// Seconds from `origin` to `at`, if it happened.
    pub fn secs_since(origin: std::time::Instant, at: Option<std::time::Instant>) -> Option<f64> {
        at.map(|t| t.saturating_duration_since(origin).as_secs_f64())
    }
}
