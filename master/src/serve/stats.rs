//! Counters of `master serve`, written as JSON to `STATE/serve-stats.json` (atomically,
//! about once a second and at exit) so that `master stats --json` and tests can read
//! them while the service runs.
//!
//! This module only counts and stores; it decides nothing.

use std::io;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shelfboot_proto::frag::FragCounters;
use shelfboot_proto::frame::MessageType;
use shelfboot_proto::id::Digest;

use super::cards::CardStats;

/// File name of the stats inside the state directory.
pub const STATS_FILE: &str = "serve-stats.json";

/// One transfer session, as counted by its sender.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStats {
    /// Transfer id.
    pub transfer: u32,
    /// sha256 of the artifact.
    pub artifact: Digest,
    /// Artifact name and version.
    pub name: String,
    /// Artifact size in bytes.
    pub size: u64,
    /// Destination MAC of the data frames.
    pub group: String,
    /// Data block size (from the MTU the master's and the members' ports take).
    #[serde(default)]
    pub block_size: u16,
    /// A catch-up session (started for cards dropped from, or too late for, another).
    pub catch_up: bool,
    /// Cards admitted.
    pub members: u32,
    /// Cards that completed.
    pub completed: u32,
    /// Cards dropped to catch-up.
    pub dropped: u32,
    /// Artifact bytes sent in the first pass.
    pub data_bytes: u64,
    /// Artifact bytes sent again as repairs.
    pub retransmit_bytes: u64,
    /// Data frames sent.
    pub frames: u64,
    /// NACKs accepted.
    pub nacks: u64,
    /// Times the first pass stopped because a member lacked receive window (flow control).
    #[serde(default)]
    pub flow_stops: u64,
    /// Milliseconds the first pass spent stopped by flow control.
    #[serde(default)]
    pub flow_blocked_ms: u64,
    /// Finished (every member completed or was dropped).
    pub finished: bool,
}

impl SessionStats {
    /// Artifact bytes this session put on the wire (first pass + repairs).
    pub fn artifact_bytes(&self) -> u64 {
        self.data_bytes + self.retransmit_bytes
    }
}

/// Counters of one `master serve` run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeStats {
    /// Epoch of this run.
    pub epoch: u64,
    /// Interface served.
    pub iface: String,
    /// Frames received and handed to the service.
    pub frames_in: u64,
    /// Frames sent (control and data).
    pub frames_out: u64,
    /// Solicits received (before de-duplication).
    pub solicits: u64,
    /// Solicits answered (Plan or Error).
    pub solicits_served: u64,
    /// Solicits repeating one already answered (same nonce): the answer is re-sent.
    pub solicits_repeated: u64,
    /// Solicits replaced in the queue by a newer one from the same card.
    pub solicits_coalesced: u64,
    /// Longest the Solicit queue ever was.
    pub solicit_queue_high_water: u64,
    /// Plans sent with verdict Continue.
    pub plans_continue: u64,
    /// Plans sent with verdict Fetch.
    pub plans_fetch: u64,
    /// Solicits answered with Error UnknownCard.
    pub unknown_cards: u64,
    /// Fetch requests received.
    pub fetches: u64,
    /// Fetches refused (artifact not in the card's plan, or blob missing).
    pub fetches_refused: u64,
    /// Joins sent.
    pub joins: u64,
    /// Catch-up sessions started.
    pub catch_up_sessions: u64,
    /// Ready messages received.
    pub ready: u64,
    /// Error messages received from cards.
    pub card_errors: u64,
    /// Signed fleet Commands sent (each copy counted; [`super::service::COMMAND_COPIES`] per order).
    #[serde(default)]
    pub commands_sent: u64,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// Alives received (cards' resident agents).
    #[serde(default)]
    pub alives: u64,
    /// Agents' reports written to the node database (only those that changed).
    #[serde(default)]
    pub health_writes: u64,
    /// Cards recorded absent (not heard for the absence interval).
    #[serde(default)]
    pub cards_absent: u64,
    /// Absent cards heard again.
    #[serde(default)]
    pub cards_returned: u64,
    /// Frames dropped: did not decode.
    pub dropped_malformed: u64,
    /// Frames dropped: not addressed to us (or our own).
    pub dropped_not_for_us: u64,
    /// Frames dropped: a message only a master sends, or one no session wants.
    pub dropped_unexpected: u64,
    /// Node-database writes that failed (logged).
    pub db_errors: u64,
    /// Artifact bytes sent by all sessions (first pass + repairs).
    pub artifact_bytes: u64,
    /// Operator requests served on the control socket.
    #[serde(default)]
    pub control_requests: u64,
    /// CPU time of the serve loop's thread so far, in milliseconds.
    #[serde(default)]
    pub cpu_ms: u64,
    /// Frames received for us that passed the frame check, by message type name
    /// (fragments counted one by one).
    #[serde(default)]
    pub frames_in_by_type: BTreeMap<String, u64>,
    /// Frames sent, by message type name (fragments and data frames one by one).
    #[serde(default)]
    pub frames_out_by_type: BTreeMap<String, u64>,
    /// Messages sent in fragments (larger than one frame).
    #[serde(default)]
    pub messages_fragmented: u64,
    /// Continues sent digest-only (the set would not fit one frame).
    #[serde(default)]
    pub plans_digest_only: u64,
    /// Plans that could not be delivered (over the message limit, or a version-1 card
    /// and a plan larger than one frame): the card got an Error, the node is failed.
    #[serde(default)]
    pub plans_undeliverable: u64,
    /// Inventories received (the card's list, asked for in its plan).
    #[serde(default)]
    pub inventories: u64,
    /// Reassembly of the fragments cards send.
    #[serde(default)]
    pub reassembly: FragCounters,
    /// Every session of this run, oldest first.
    pub sessions: Vec<SessionStats>,
    /// Milliseconds the service had run when these counters were taken (the clock of the
    /// cards' `stage_since_ms` and `last_seen_ms`).
    #[serde(default)]
    pub uptime_ms: u64,
    /// The service stopped: this is its final write.
    #[serde(default)]
    pub stopped: bool,
    /// Every card heard in this run, by shelf, slot, MAC (see [`super::cards`]).
    #[serde(default)]
    pub cards: Vec<CardStats>,
    /// Cards heard but left out of `cards` (more than [`super::cards::MAX_CARDS`]).
    #[serde(default)]
    pub cards_untracked: u64,
}

impl ServeStats {
    /// Counts one received frame of type `t`.
    pub fn count_in(&mut self, t: MessageType) {
        *self.frames_in_by_type.entry(type_name(t)).or_insert(0) += 1;
    }

    /// Counts one frame about to be sent (its type read from its header).
    pub fn count_out(&mut self, frame: &[u8]) {
        self.frames_out += 1;
        let name = frame
            .get(shelfboot_proto::frame::MSG_TYPE_OFF)
            .and_then(|c| MessageType::from_code(*c))
            .map_or_else(|| "unknown".to_string(), type_name);
        *self.frames_out_by_type.entry(name).or_insert(0) += 1;
    }
}

/// `Solicit`, `Plan`, ... (the key of the by-type counters).
fn type_name(t: MessageType) -> String {
    format!("{t:?}")
}

/// Path of the stats file in `state`.
pub fn stats_path(state: &Path) -> PathBuf {
    state.join(STATS_FILE)
}

/// Writes `stats` to the state directory atomically (temp file + rename).
pub fn write(state: &Path, stats: &ServeStats) -> io::Result<()> {
    let tmp = state.join(format!("{STATS_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(stats).map_err(io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, stats_path(state))
}

/// Reads the stats of the last (or running) `master serve` on `state`.
pub fn read(state: &Path) -> io::Result<ServeStats> {
    let bytes = std::fs::read(stats_path(state))?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
