//! The Fetch phase of the agent: for each artifact the flash lacks, ask the master
//! (Fetch), join the transfer it announces (Join), drive an xfer [`Receiver`] whose bytes
//! go, in order, into the store's staging writer, then finish (sha256 checked once: by the
//! store over the volume read back, which covers the stream too; by the receiver over the
//! stream only if the store does not read back); when all are staged, commit atomically
//! and go Ready.
//!
//! Artifacts are fetched one at a time, in plan order. A transfer that stops progressing
//! (no new block stored for `timers.stall`) is asked for again from its resume point
//! (`Fetch.have_slices`): that is how a card survives a master restart, being moved to a
//! catch-up session, or a session that forgot it.
//!
//! Recovery is bounded by construction (docs/transfer.md, "Stalls"): only a newly stored
//! block counts as progress (not a Join, not a duplicate frame), so every Fetch that is
//! not followed by progress counts as an attempt; the wait before the next one doubles
//! (`stall` or `fetch_retry`, × 1, 2, 4, then 4), and after `timers.fetch_attempts`
//! attempts without progress the staging is aborted and the card solicits again. A card
//! therefore never waits on one transfer without progress for more than about
//! `fetch_attempts` × 4 × `stall` of its own running time. When the agent itself did not
//! run for a while (blocked in a flash write, or a descheduled VM) the frames that came
//! meanwhile are read before a stall is judged: the stall clock restarts.
//!
//! This module does not decode frames (the agent does) or verify plans.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use shelfboot_proto::data::DataView;
use shelfboot_proto::frame::{Frame, MacAddr};
use shelfboot_proto::msg::{
    ArtifactRef, ErrorReason, Fetch, Join, Message, PlanBody, Progress, Stage,
};
use shelfboot_xfer::{
    ArtifactInfo, DataOutcome, Receiver, ReceiverConfig, ReceiverError, ReceiverState, Resume,
};

use shelfboot_proto::report::error_chain;

use super::{Agent, Output, State};
use crate::flash::Volumes;

/// Bytes gathered before they go to the store in one write: a few slices, so that the
/// store sees large writes (one syscall per ~256 KiB on files and UBI) instead of one per
/// slice.
const SPOOL_FLUSH: usize = 256 * 1024;
/// Writes to the store are whole multiples of this (a multiple of every page size), except
/// the artifact's last one.
const SPOOL_ALIGN: usize = 64 * 1024;

/// The receiver's sink: bytes delivered in order, drained into the store by the agent
/// after every call into the receiver, in aligned chunks of at least [`SPOOL_FLUSH`]
/// bytes (all of them when the artifact is complete). The buffer is kept and reused, so
/// it costs at most `SPOOL_FLUSH` + one slice of memory and no allocation per slice.
#[derive(Debug, Clone, Default)]
pub(super) struct Spool(Rc<RefCell<Vec<u8>>>);

impl shelfboot_xfer::ByteSink for Spool {
    fn write(&mut self, bytes: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.borrow_mut().extend_from_slice(bytes);
        Ok(())
    }
}

impl Spool {
    /// How many bytes of `pending` to write now: everything with `all`, else the aligned
    /// prefix once at least [`SPOOL_FLUSH`] bytes are pending, else none.
    fn due(pending: usize, all: bool) -> usize {
        if all {
            pending
        } else if pending >= SPOOL_FLUSH {
            pending - pending % SPOOL_ALIGN
        } else {
            0
        }
    }

    /// Hand the bytes due (see [`Self::due`]) to `write`; they leave the spool only if it
    /// succeeds. Returns how many were written.
    fn drain_with<E>(
        &self,
        all: bool,
        write: impl FnOnce(&[u8]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut buf = self.0.borrow_mut();
        let n = Self::due(buf.len(), all);
        if n == 0 {
            return Ok(0);
        }
        write(&buf[..n])?;
        // Moves the unaligned rest (less than SPOOL_ALIGN) to the front; capacity stays.
        buf.drain(..n);
        Ok(n)
    }
}

/// The artifact being fetched.
struct Current {
    artifact: ArtifactRef,
    /// What the store already holds of the artifact (a torn earlier attempt's prefix):
    /// the receiver starts after it.
    resume: Resume,
    receiver: Option<Receiver<Spool>>,
    spool: Spool,
    group: Option<MacAddr>,
    /// Fetches sent since the last progress (a newly stored block).
    attempts: u32,
    /// Start of the current wait for progress: the last progress, Fetch, Join, or the
    /// agent's return from a long block.
    waiting_since: Instant,
    /// When the agent last ran for this transfer (a tick or a data frame).
    seen_at: Instant,
    /// When the receiver wants to be polled again.
    poll_at: Instant,
}

impl Current {
    /// How long to wait for progress after the current attempt: `base` × 1, 2, 4, 4, ...
    fn patience(&self, base: Duration) -> Duration {
        base * (1u32 << self.attempts.saturating_sub(1).min(2))
    }

    /// The agent runs for this transfer at `now`. If it runs more than half `stall` after
    /// the wake-up it asked for (`poll_at`: it was blocked in a flash write or
    /// descheduled, so frames may be waiting to be read), the stall clock restarts: only
    /// time the agent runs counts as waiting. A planned sleep until `poll_at` is not a
    /// gap: measuring from the last run instead restarted the clock at every planned
    /// retry, and a card whose Fetch or Join was lost never asked again.
    fn wake(&mut self, now: Instant, stall: Duration) {
        if now.saturating_duration_since(self.poll_at) > stall / 2 {
            self.waiting_since = self.waiting_since.max(now);
        }
        self.seen_at = now;
    }

    /// A new block was stored.
    fn progressed(&mut self, now: Instant) {
        self.attempts = 0;
        self.waiting_since = now;
    }
}

/// State of the Fetch phase.
pub(super) struct Fetching {
    master: MacAddr,
    plan: PlanBody,
    queue: VecDeque<ArtifactRef>,
    total: u64,
    finished_bytes: u64,
    current: Option<Current>,
    progress_at: Instant,
}

impl Fetching {
    pub(super) fn new(
        master: MacAddr,
        plan: PlanBody,
        fetch: Vec<ArtifactRef>,
        now: Instant,
    ) -> Self {
        let total = fetch.iter().map(|a| a.size).sum();
        Self {
            master,
            plan,
            queue: fetch.into(),
            total,
            finished_bytes: 0,
            current: None,
            progress_at: now,
        }
    }

    /// The multicast group we are in, if any.
    pub(super) fn group(&self) -> Option<MacAddr> {
        self.current.as_ref().and_then(|c| c.group)
    }

    /// (bytes staged, bytes to fetch).
    pub(super) fn progress(&self) -> (u64, u64) {
        let cur = self
            .current
            .as_ref()
            .and_then(|c| c.receiver.as_ref())
            .map_or(0, Receiver::delivered);
        (self.finished_bytes + cur, self.total)
    }

    /// When the agent must tick next.
    pub(super) fn deadline(&self) -> Instant {
        let mut at = self.progress_at;
        if let Some(c) = &self.current {
            at = at.min(c.poll_at);
        }
        at
    }
}

impl<V: Volumes> Agent<V> {
    fn since_start(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    fn fetching(&mut self) -> Option<&mut Fetching> {
        match &mut self.state {
            State::Fetch(f) => Some(f),
            _ => None,
        }
    }

    /// Time passes in the Fetch phase.
    pub(super) fn fetch_tick(&mut self, now: Instant) {
        let timers = self.cfg.timers.clone();
        let Some(f) = self.fetching() else { return };
        let master = f.master;
        if now >= f.progress_at {
            f.progress_at = now + timers.progress;
            // Overall progress (no artifact: transfer sessions get the receiver's own).
            let (done, total) = f.progress();
            let m = Message::Progress(Progress {
                stage: Stage::Fetching,
                artifact: None,
                done,
                total,
            });
            self.send(master, &m);
        }
        let Some(f) = self.fetching() else { return };
        if f.current.is_none() {
            let Some(next) = f.queue.pop_front() else {
                return self.commit_fetched(now, master);
            };
            if let Err(e) = self.store.start(&next) {
                return self.flash_refused(now, master, &e);
            }
            // A torn earlier attempt left a prefix on flash: fetch only the rest.
            let resume = match self.store.written(&next) {
                Ok(0) => Ok(Resume::fresh()),
                Ok(held) => self.store.held_hasher(&next).map(|h| Resume::new(held, h)),
                Err(e) => Err(e),
            };
            let resume = match resume {
                Ok(r) => r,
                Err(e) => return self.flash_refused(now, master, &e),
            };
            // The session's block size is known only from its Join: estimate the slices
            // held at our own port's block size. The master's blocks are never larger
            // (it uses the MTU both ports take), so the estimate never claims more bytes
            // than we hold; the Join corrects it if the blocks are smaller.
            let have_slices = self
                .own_block_size()
                .map_or(0, |bs| resume.have_slices(next.size, bs));
            if resume.delivered() > 0 {
                log::info!(
                    "card {}: resuming {} {} after the {} of {} bytes already on flash",
                    self.mac(),
                    next.name,
                    next.version,
                    resume.delivered(),
                    next.size
                );
            }
            let Some(f) = self.fetching() else { return };
            f.current = Some(Current {
                artifact: next.clone(),
                resume,
                receiver: None,
                spool: Spool::default(),
                group: None,
                attempts: 1,
                waiting_since: now,
                seen_at: now,
                poll_at: now + timers.fetch_retry,
            });
            self.counters.fetches += 1;
            let m = Message::Fetch(Fetch {
                artifact: next.sha256,
                have_slices,
            });
            return self.send(master, &m);
        }
        let since = self.since_start(now);
        let started = self.started;
        let mac = self.mac();
        let own_block = self.own_block_size();
        let State::Fetch(f) = &mut self.state else {
            return;
        };
        let Some(cur) = f.current.as_mut() else {
            return;
        };
        cur.wake(now, timers.stall);
        let mut msgs = Vec::new();
        let mut refetch = None;
        let retry_at = cur.waiting_since + cur.patience(timers.fetch_retry);
        let stall_at = cur.waiting_since + cur.patience(timers.stall);
        match cur.receiver.as_mut() {
            None => {
                // No Join yet: ask again.
                if now >= retry_at {
                    refetch = Some(Fetch {
                        artifact: cur.artifact.sha256,
                        have_slices: own_block
                            .map_or(0, |bs| cur.resume.have_slices(cur.artifact.size, bs)),
                    });
                } else {
                    cur.poll_at = retry_at;
                }
            }
            Some(rx) => {
                let wake = rx.poll(since, &mut msgs);
                // No new block for the patience: the session is not serving us (we were
                // dropped, the master restarted, or it forgot us): ask again from where we
                // stand.
                if now >= stall_at {
                    refetch = Some(rx.fetch());
                }
                cur.poll_at = match wake {
                    Some(w) => (started + w).min(stall_at),
                    None => stall_at,
                };
                cur.poll_at = cur.poll_at.max(now + Duration::from_millis(1));
            }
        }
        if let Some(fetch) = refetch {
            cur.attempts += 1;
            cur.waiting_since = now;
            cur.poll_at = now + timers.fetch_retry.min(timers.stall);
            if cur.attempts > timers.fetch_attempts {
                log::warn!(
                    "card {mac}: no progress on artifact {} from master {master} after {} Fetches: soliciting again",
                    cur.artifact.name,
                    timers.fetch_attempts
                );
                // Keep what is on flash: the next plan from a master resumes it.
                self.store.suspend();
                return self.back_to_discovery(now);
            }
            self.counters.fetches += 1;
            msgs.push(Message::Fetch(fetch));
        }
        for m in msgs {
            if matches!(m, Message::Nack(_)) {
                self.counters.nacks += 1;
            }
            self.send(master, &m);
        }
    }

    /// A Join from a master.
    pub(super) fn on_join(&mut self, now: Instant, src: MacAddr, join: Join) {
        let since = self.since_start(now);
        // The store hashes what it reads back against the plan: the stream need not be
        // hashed on the way as well (one sha256 pass per artifact, not two).
        let rx_cfg = ReceiverConfig {
            verify_digest: !self.store.verifies_readback(),
            ..ReceiverConfig::default()
        };
        let mac = self.mac();
        let own_block = self.own_block_size();
        let link_mtu = self.cfg.link_mtu;
        let Some(f) = self.fetching() else {
            self.counters.dropped_unexpected += 1;
            return;
        };
        let master = f.master;
        if own_block.is_none_or(|bs| join.block_size > bs) {
            // Its data frames would not fit our port: the NIC would drop every one.
            log::warn!(
                "card {mac}: ignored Join from {src}: session {} sends {}-byte blocks, larger than our port (MTU {link_mtu}) takes",
                join.transfer,
                join.block_size
            );
            self.counters.dropped_unexpected += 1;
            return;
        }
        let Some(cur) = f
            .current
            .as_mut()
            .filter(|c| c.artifact.sha256 == join.artifact)
        else {
            self.counters.dropped_unexpected += 1;
            return;
        };
        // Data comes to our own MAC or to a locally administered multicast group.
        let group_ok = join.group == mac
            || (join.group.0[0] & 0x03 == 0x03 && join.group != MacAddr::BROADCAST);
        if src != master || !group_ok {
            self.counters.dropped_unexpected += 1;
            return;
        }
        let mut correct = None;
        let result = match cur.receiver.as_mut() {
            Some(rx) => rx.set_session(&join, since),
            None => Receiver::new(
                rx_cfg,
                ArtifactInfo::from(&cur.artifact),
                &join,
                cur.resume.clone(),
                cur.spool.clone(),
                since,
            )
            .map(|rx| {
                // Resuming: if the session's slices differ from the estimate in our
                // Fetch, tell it exactly where we stand.
                let estimate =
                    own_block.map_or(0, |bs| cur.resume.have_slices(cur.artifact.size, bs));
                if cur.resume.delivered() > 0 && rx.fetch().have_slices != estimate {
                    correct = Some(rx.fetch());
                }
                cur.receiver = Some(rx);
            }),
        };
        if let Err(e) = result {
            log::warn!("card {mac}: ignored Join from {src}: {}", error_chain(&e));
            self.counters.dropped_unexpected += 1;
            return;
        }
        let old = cur.group.take();
        if join.group.is_multicast() && join.group != MacAddr::BROADCAST {
            cur.group = Some(join.group);
        }
        // A Join is not progress (a session may admit us and never serve us): only a
        // stored block resets the attempts. It starts a new wait.
        cur.seen_at = now;
        cur.waiting_since = cur.waiting_since.max(now);
        cur.poll_at = now;
        let new = cur.group;
        if old != new {
            if let Some(g) = old {
                self.outputs.push(Output::LeaveGroup(g));
            }
            if let Some(g) = new {
                self.outputs.push(Output::JoinGroup(g));
            }
        }
        if let Some(fetch) = correct {
            self.counters.fetches += 1;
            self.send(master, &Message::Fetch(fetch));
        }
        self.drain_spool(now, false);
    }

    /// A data frame addressed to us or a group we joined.
    pub(super) fn on_data(&mut self, now: Instant, frame: &Frame<'_>) {
        let since = self.since_start(now);
        let src = frame.link().src;
        let view = match DataView::from_frame(frame) {
            Ok(v) => v,
            Err(_) => {
                self.counters.dropped_malformed += 1;
                return;
            }
        };
        let State::Fetch(f) = &mut self.state else {
            self.counters.dropped_data += 1;
            return;
        };
        let master = f.master;
        let Some(cur) = f.current.as_mut() else {
            self.counters.dropped_data += 1;
            return;
        };
        if src != master
            || cur
                .receiver
                .as_ref()
                .is_none_or(|rx| rx.transfer() != view.transfer())
        {
            self.counters.dropped_data += 1;
            return;
        }
        cur.wake(now, self.cfg.timers.stall);
        let Some(rx) = cur.receiver.as_mut() else {
            return;
        };
        let outcome = rx.on_data(&view, since);
        // Progress by bytes is due now: the sender's flow control waits for it.
        let report = rx.report_due();
        match outcome {
            Ok(DataOutcome::Accepted | DataOutcome::Completed) => {
                cur.progressed(now);
                self.counters.data_blocks += 1;
                self.timeline.first_block.get_or_insert(now);
                self.timeline.last_block = Some(now);
            }
            // A duplicate or out-of-window frame is no progress for us.
            Ok(DataOutcome::Dropped(_)) => self.counters.dropped_data += 1,
            Err(e) => return self.transfer_failed(now, master, e),
        }
        let due = cur.poll_at;
        if !self.drain_spool(now, false) {
            return;
        }
        let complete = self
            .fetching()
            .and_then(|f| f.current.as_ref())
            .and_then(|c| c.receiver.as_ref())
            .is_some_and(|rx| rx.state() == ReceiverState::Complete);
        if complete {
            self.finish_current(now);
        } else if now >= due || report {
            self.fetch_tick(now);
        }
    }

    /// Move the bytes the receiver delivered into the staging volume: the aligned chunks
    /// that are due, or with `all` everything (before the artifact is finished). False if
    /// the store failed (the failure is handled).
    fn drain_spool(&mut self, now: Instant, all: bool) -> bool {
        let State::Fetch(f) = &self.state else {
            return false;
        };
        let master = f.master;
        let Some(cur) = f.current.as_ref() else {
            return false;
        };
        let spool = cur.spool.clone();
        let artifact = &cur.artifact;
        let store = &mut self.store;
        match spool.drain_with(all, |bytes| store.write(artifact, bytes)) {
            Ok(n) => {
                self.counters.bytes_written += n as u64;
                true
            }
            Err(e) => {
                self.flash_refused(now, master, &e);
                false
            }
        }
    }

    /// The receiver verified the artifact: finish its staging volume, go on.
    fn finish_current(&mut self, now: Instant) {
        if !self.drain_spool(now, true) {
            return;
        }
        let Some(f) = self.fetching() else { return };
        let master = f.master;
        let Some(cur) = f.current.take() else { return };
        f.finished_bytes += cur.artifact.size;
        if let Some(g) = cur.group {
            self.outputs.push(Output::LeaveGroup(g));
        }
        // Tell the session at once that we hold every byte (the receiver's own final
        // reports may not be due yet, and it is dropped here).
        let done = Message::Progress(Progress {
            stage: Stage::Verifying,
            artifact: Some(cur.artifact.sha256),
            done: cur.artifact.size,
            total: cur.artifact.size,
        });
        self.send(master, &done);
        self.send(master, &done);
        if let Err(e) = self.store.finish(&cur.artifact) {
            return self.flash_refused(now, master, &e);
        }
        log::info!(
            "card {}: staged {} {} ({} bytes, sha256 verified)",
            self.mac(),
            cur.artifact.name,
            cur.artifact.version,
            cur.artifact.size
        );
        self.fetch_tick(now);
    }

    fn transfer_failed(&mut self, now: Instant, master: MacAddr, e: ReceiverError) {
        let reason = match (&e, self.fetching().and_then(|f| f.current.as_ref())) {
            (ReceiverError::DigestMismatch { actual, .. }, Some(cur)) => {
                ErrorReason::VerificationFailed {
                    artifact: cur.artifact.name.clone(),
                    expected: cur.artifact.sha256,
                    got: *actual,
                }
            }
            _ => ErrorReason::Malformed,
        };
        self.send_error(master, reason, error_chain(&e));
        if let Err(e) = self.store.abort() {
            log::error!("card {}: {}", self.mac(), error_chain(&e));
        }
        self.back_to_discovery(now);
    }

    /// Everything staged: commit in one atomic rename, then Ready.
    fn commit_fetched(&mut self, now: Instant, master: MacAddr) {
        let digest = match self.fetching() {
            Some(f) => f.plan.digest,
            None => return,
        };
        let m = Message::Progress(Progress {
            stage: Stage::Committing,
            artifact: None,
            done: 0,
            total: 0,
        });
        self.send(master, &m);
        match self.store.commit() {
            Ok(inv) if inv.set.digest == digest => self.become_ready(now, master, false),
            Ok(inv) => {
                log::error!(
                    "card {}: committed set {} is not the plan's {}",
                    self.mac(),
                    inv.set.digest,
                    digest
                );
                self.back_to_discovery(now);
            }
            Err(e) => self.flash_refused(now, master, &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shelfboot_xfer::ByteSink as _;

    #[test]
    fn spool_writes_aligned_chunks_and_keeps_the_rest() {
        let mut spool = Spool::default();
        let slice: Vec<u8> = (0..90_112u32)
            .map(|i| u8::try_from(i % 253).unwrap())
            .collect();
        let mut stored: Vec<u8> = Vec::new();
        let mut sent = Vec::new();
        let mut writes = Vec::new();
        for _ in 0..7 {
            spool.write(&slice).unwrap();
            sent.extend_from_slice(&slice);
            let n = spool
                .drain_with(false, |b| {
                    writes.push(b.len());
                    stored.extend_from_slice(b);
                    Ok::<(), ()>(())
                })
                .unwrap();
            assert!(n == 0 || (n >= SPOOL_FLUSH && n % SPOOL_ALIGN == 0), "{n}");
        }
        assert!(writes.len() >= 2, "{writes:?}");
        // Nothing is written twice or lost: the rest goes with the final flush.
        assert!(spool.0.borrow().len() < SPOOL_FLUSH);
        spool
            .drain_with(true, |b| {
                stored.extend_from_slice(b);
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(stored, sent);
        assert!(spool.0.borrow().is_empty());
    }

    #[test]
    fn spool_keeps_bytes_the_store_refused() {
        let mut spool = Spool::default();
        spool.write(&vec![5u8; SPOOL_FLUSH + 10]).unwrap();
        assert_eq!(
            spool.drain_with(false, |_| Err("flash full")),
            Err("flash full")
        );
        assert_eq!(spool.0.borrow().len(), SPOOL_FLUSH + 10);
        assert_eq!(Spool::due(10, false), 0);
        assert_eq!(Spool::due(10, true), 10);
        assert_eq!(Spool::due(SPOOL_FLUSH + 10, false), SPOOL_FLUSH);
    }
}
