//! Transfer sessions of `master serve`: one xfer [`Sender`] per (artifact, session),
//! reading the blob file with positional reads (never loading it whole), sending to a
//! locally administered group MAC.
//!
//! A card's Fetch joins the live session of that artifact while that costs little: its
//! first pass has not gone past the card's resume point, or by at most the sender's
//! `late_join_bytes` (8 MiB), which the card gets by NACK, merged with everyone's repairs.
//! Otherwise (session finished or too far past the card, card dropped from it for lagging,
//! slowness or silence) a new session starts for it, counted as a catch-up session. Cards
//! that ask within the same join window, or a little after it (a Plan or Fetch lost and
//! asked again), therefore share one session: each artifact crosses the wire once per
//! session, not once per card. (Before late joins, one card whose Fetch came 0.1-0.4 s
//! late at 1 % loss got a whole pass of its own: 2.3 × the artifact for 8 cards.)
//!
//! A Fetch from a card that is already an active member is a re-Fetch: it saw no progress
//! for its stall time. It is admitted again; its Join carries the first pass's position,
//! so the card NACKs what it lacks at once and the session repairs exactly that (merged
//! with the others' NACKs). If the same card re-Fetches again without having gained a
//! slice, the session is not serving it: it is removed and gets a fresh session from its
//! resume point. So a card in a live session is never left without data for more than
//! two of its stall periods.
//!
//! Each session's sender keeps its first pass within the cards' receive window of the
//! slowest member's reported position (xfer flow control); every Progress or Nack wakes the
//! session at once, so the pass resumes one report after the card stored a slice. A member
//! the sender drops for holding the pass under its rate floor (`DropCause::Slow`) re-Fetches
//! when it stalls and gets a catch-up session of its own, like any dropped card.
//!
//! This module does not check that a card may have an artifact (the service does) and
//! does not touch the node database.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use shelfboot_proto::data::block_size_for_mtu;
use shelfboot_proto::frame::{Link, MacAddr};
use shelfboot_proto::msg::{ArtifactRef, Fetch, Join, Nack, Progress};
use shelfboot_xfer::{
    Admission, ArtifactInfo, MemberStatus, SendStep, Sender, SenderConfig, SenderError, SenderEvent,
};

use super::config::ServiceConfig;
use super::stats::SessionStats;
use crate::blobs::BlobDir;

/// Why a Fetch could not be served.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The artifact's blob file cannot be opened.
    #[error(
        "cannot open blob {path} of artifact {name}: re-import its release or run `master gc` checks"
    )]
    Blob {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The sender refused the session (geometry).
    #[error("cannot start a transfer session for artifact {name}")]
    Sender {
        name: String,
        #[source]
        source: SenderError,
    },
    /// The MTU both ports take has no block size (outside the protocol's range).
    #[error("no data block size for card {card}: MTU {mtu}")]
    Mtu {
        card: MacAddr,
        mtu: u16,
        #[source]
        source: shelfboot_proto::data::DataError,
    },
    /// A fresh session did not admit the card (a bug).
    #[error("a fresh session for artifact {name} did not admit card {card}")]
    NotAdmitted { name: String, card: MacAddr },
}

struct Session {
    sender: Sender<File>,
    /// Its data block size: only a card whose port takes such frames joins it.
    block_size: u16,
    stats: SessionStats,
    wake: Duration,
    /// Slices each member held at its last re-Fetch into this session.
    refetched: BTreeMap<MacAddr, u32>,
}

/// Who sends a Fetch, as the sessions need to know it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Asker {
    pub card: MacAddr,
    /// What the card's Solicit said of its port (`None`: 1500, or not heard since this
    /// master started).
    pub mtu: Option<u16>,
    /// How many cards may ask for this artifact now (those planned with it that are
    /// fetching, this one included).
    pub expected: usize,
}

/// All sessions of one service run.
pub struct Sessions {
    ethertype: u16,
    link_mtu: u16,
    join_window: Duration,
    max_rate: u64,
    mac: MacAddr,
    next_transfer: u32,
    live: BTreeMap<u32, Session>,
    finished: Vec<SessionStats>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("live", &self.live.len())
            .field("finished", &self.finished.len())
            .finish_non_exhaustive()
    }
}

/// The group MAC of transfer `t`: locally administered multicast `03:5b:tt:tt:tt:tt`.
pub fn group_mac(t: u32) -> MacAddr {
    let b = t.to_be_bytes();
    MacAddr([0x03, 0x5b, b[0], b[1], b[2], b[3]])
}

impl Sessions {
    pub(super) fn new(cfg: &ServiceConfig, mac: MacAddr, seed: u64) -> Self {
        // Transfer ids differ between runs (epochs), so a card never mixes up a session
        // of a master it talked to before a restart with a new one.
        let first = u32::try_from(seed & 0xffff).unwrap_or(0) << 16 | 1;
        Self {
            ethertype: cfg.ethertype,
            link_mtu: cfg.link_mtu,
            join_window: cfg.join_window,
            max_rate: cfg.max_rate,
            mac,
            next_transfer: first,
            live: BTreeMap::new(),
            finished: Vec::new(),
            buf: vec![0u8; shelfboot_proto::MAX_FRAME_LEN],
        }
    }

    /// Set the first transfer id (the service derives it from its epoch).
    /// True when no session is sending: the loop has nothing to pace, so Solicits need
    /// not wait for a data budget.
    pub(super) fn is_idle(&self) -> bool {
        self.live.is_empty()
    }

    pub(super) fn set_first_transfer(&mut self, t: u32) {
        self.next_transfer = t.max(1);
    }

    /// Stats of every session, oldest first.
    pub(super) fn stats(&self) -> Vec<SessionStats> {
        let mut all = self.finished.clone();
        for s in self.live.values() {
            let mut st = s.stats.clone();
            fill(&mut st, &s.sender);
            all.push(st);
        }
        all.sort_by_key(|s| s.transfer);
        all
    }

    /// A card's Fetch of `artifact`: the Join to send it. The card joins only a session
    /// whose blocks fit the MTU both ports take, and a new session for it uses that MTU's
    /// block size; a session that has every card `asker.expected` counts starts its first
    /// pass at once.
    pub(super) fn on_fetch(
        &mut self,
        asker: Asker,
        artifact: &ArtifactRef,
        fetch: &Fetch,
        now: Duration,
        blobs: &BlobDir,
    ) -> Result<Join, SessionError> {
        let Asker {
            card,
            mtu: card_mtu,
            expected,
        } = asker;
        let mtu = shelfboot_proto::common_mtu(Some(self.link_mtu), card_mtu);
        let block_size =
            block_size_for_mtu(mtu).map_err(|source| SessionError::Mtu { card, mtu, source })?;
        let mut existed = false;
        for s in self.live.values_mut() {
            if s.sender.artifact().sha256 != artifact.sha256 || s.block_size > block_size {
                continue;
            }
            existed = true;
            let status = s
                .sender
                .members()
                .find_map(|(m, st)| (m == card).then_some(st.status));
            let was_member = status.is_some();
            // A non-member is admitted by the sender's own rule: before the first pass, or
            // at most `late_join_bytes` behind it (the gap comes by NACK; flow control holds
            // the pass until the card is within its window). Further behind, or dropped from
            // this session before: its own (catch-up) session below.
            if status == Some(MemberStatus::Active) {
                let before = s.refetched.insert(card, fetch.have_slices);
                if before.is_some_and(|b| fetch.have_slices <= b) {
                    // Twice without gaining a slice: this session is not serving the card.
                    log::info!(
                        "master: session {}: {card} re-fetched twice at slice {} without progress: moved to a new session",
                        s.sender.transfer(),
                        fetch.have_slices
                    );
                    s.sender.remove(card, now);
                    s.stats.dropped += 1;
                    s.wake = now;
                    continue;
                }
            }
            s.sender.expect_members(expected);
            if let Admission::Joined(j) = s.sender.join(card, fetch.have_slices, now) {
                if !was_member {
                    s.stats.members += 1;
                }
                s.wake = now;
                return Ok(j);
            }
        }
        let transfer = self.next_transfer;
        self.next_transfer = self.next_transfer.wrapping_add(1).max(1);
        let path = blobs.path(&artifact.sha256);
        let name = format!("{} {}", artifact.name, artifact.version);
        let file = File::open(&path).map_err(|source| SessionError::Blob {
            name: name.clone(),
            path: path.clone(),
            source,
        })?;
        let group = group_mac(transfer);
        let link = Link {
            dst: group,
            src: self.mac,
            ethertype: self.ethertype,
        };
        let mut cfg = SenderConfig::new(link, block_size);
        cfg.join_window = self.join_window;
        cfg.rate.max_rate = self.max_rate.max(cfg.rate.min_rate);
        cfg.rate.min_rate = cfg.rate.min_rate.min(cfg.rate.max_rate);
        let mut sender = Sender::new(cfg, transfer, ArtifactInfo::from(artifact), file, now)
            .map_err(|source| SessionError::Sender {
                name: name.clone(),
                source,
            })?;
        sender.expect_members(expected);
        let Admission::Joined(join) = sender.join(card, fetch.have_slices, now) else {
            return Err(SessionError::NotAdmitted { name, card });
        };
        log::info!(
            "master: session {transfer} for {name} ({} bytes, {block_size}-byte blocks) to {group}{}",
            artifact.size,
            if existed { " (catch-up)" } else { "" }
        );
        let stats = SessionStats {
            transfer,
            artifact: artifact.sha256,
            name,
            size: artifact.size,
            group: group.to_string(),
            block_size,
            catch_up: existed,
            members: 1,
            ..SessionStats::default()
        };
        self.live.insert(
            transfer,
            Session {
                sender,
                block_size,
                stats,
                wake: now,
                refetched: BTreeMap::new(),
            },
        );
        Ok(join)
    }

    /// A Nack; false if no live session has that transfer id.
    pub(super) fn on_nack(&mut self, card: MacAddr, nack: &Nack, now: Duration) -> bool {
        match self.live.get_mut(&nack.transfer) {
            Some(s) => {
                s.sender.handle_nack(card, nack, now);
                s.wake = now;
                true
            }
            None => false,
        }
    }

    /// A per-artifact Progress: to every live session of that artifact the card is in.
    pub(super) fn on_progress(&mut self, card: MacAddr, p: &Progress, now: Duration) {
        for s in self.live.values_mut() {
            if Some(s.sender.artifact().sha256) == p.artifact
                && s.sender.members().any(|(m, _)| m == card)
            {
                s.sender.handle_progress(card, p, now);
                s.wake = now;
            }
        }
    }

    /// The card gave up (Error): take it out of every session.
    pub(super) fn forget(&mut self, card: MacAddr, now: Duration) {
        for s in self.live.values_mut() {
            if s.sender.members().any(|(m, _)| m == card) {
                s.sender.remove(card, now);
                s.wake = now;
            }
        }
    }

    /// Data frames due at `now` (at most `max`) appended to `out`; returns when to poll
    /// again at the latest.
    pub(super) fn poll(&mut self, now: Duration, max: usize, out: &mut Vec<Vec<u8>>) -> Duration {
        let mut wake = now + Duration::from_millis(50);
        let mut done = Vec::new();
        let live = self.live.len().max(1);
        let share = (max / live).max(1);
        for (t, s) in self.live.iter_mut() {
            let mut sent = 0;
            if s.wake <= now {
                loop {
                    if sent >= share {
                        s.wake = now;
                        break;
                    }
                    match s.sender.poll(now, &mut self.buf) {
                        Ok(SendStep::Frame { len, .. }) => {
                            out.push(self.buf[..len].to_vec());
                            sent += 1;
                        }
                        Ok(SendStep::Wait { until }) => {
                            s.wake = until;
                            break;
                        }
                        Ok(SendStep::Done) => {
                            done.push(*t);
                            break;
                        }
                        Err(e) => {
                            log::error!(
                                "master: session {t}: {}",
                                shelfboot_proto::report::error_chain(&e)
                            );
                            done.push(*t);
                            break;
                        }
                    }
                }
            }
            while let Some(ev) = s.sender.next_event() {
                match ev {
                    SenderEvent::Completed { member } => {
                        s.stats.completed += 1;
                        log::debug!("master: session {t}: {member} complete");
                    }
                    SenderEvent::Dropped { member, cause, .. } => {
                        s.stats.dropped += 1;
                        log::info!("master: session {t}: {member} dropped to catch-up ({cause:?})");
                    }
                    SenderEvent::Finished => {}
                }
            }
            wake = wake.min(s.wake);
        }
        for t in done {
            if let Some(mut s) = self.live.remove(&t) {
                fill(&mut s.stats, &s.sender);
                s.stats.finished = true;
                log::info!(
                    "master: session {t} ({}) finished: {} artifact bytes for {} card(s), {} NACKs, flow control stopped it {} times for {} ms",
                    s.stats.name,
                    s.stats.artifact_bytes(),
                    s.stats.members,
                    s.stats.nacks,
                    s.stats.flow_stops,
                    s.stats.flow_blocked_ms
                );
                self.finished.push(s.stats);
            }
        }
        wake.max(now)
    }
}

fn fill(st: &mut SessionStats, sender: &Sender<File>) {
    let x = sender.stats();
    st.data_bytes = x.data_bytes;
    st.retransmit_bytes = x.retransmit_bytes;
    st.frames = x.frames;
    st.nacks = x.nacks;
    st.flow_stops = x.flow_stops;
    st.flow_blocked_ms = u64::try_from(x.flow_blocked.as_millis()).unwrap_or(u64::MAX);
}
