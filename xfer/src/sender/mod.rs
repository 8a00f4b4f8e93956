//! The master side of one transfer session: one artifact, one transfer id, a group of
//! receivers (members) identified by their MAC.
//!
//! Life of a session: created at `now` with a join window; cards admitted by
//! [`Sender::join`] (the caller turns their Fetch into a join and sends back the returned
//! `Join`). When the window closes the first pass starts at the lowest resume point of the
//! members and walks the slices in order, paced by a [`TokenBucket`]; NACKs queue exactly
//! the missing blocks of their slice, and queued repairs go before new data. Members that
//! fall more than `max_lag_bytes` behind the first pass, or are silent past
//! `silence_timeout`, are dropped and reported ([`SenderEvent::Dropped`]) with their resume
//! point: the caller starts a catch-up session for them later. The session finishes when
//! every member completed or was dropped.
//!
//! Flow control: the first pass never runs `flow_window` (the receivers' window) or more
//! past the slowest active member's reported position, so a card that stores more slowly
//! than the session could send is sent what it can hold, not everything to be dropped and
//! repaired. A member that holds the pass back while the median member is ahead of it, and
//! has kept the pass under the rate floor for `flow_hold`, is dropped to catch-up, where it
//! is alone and paced by its own reports; a session of one is never split.
//!
//! Memory: per member a few counters, per queued repair slice one 16-byte bitmap (the queue
//! is capped), a short ring of recent repairs, one block of scratch. Never the artifact.
//!
//! This module does not open sockets, read clocks, choose transfer ids or group MACs, or
//! decode frames: the caller hands it decoded `Nack`/`Progress` messages and the source MAC.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use shelfboot_proto::data::{
    BLOCKS_PER_SLICE, DataError, DataHeader, SliceBitmap, encode_data_frame,
};
use shelfboot_proto::frame::{Flags, Header, MacAddr, MessageType};
use shelfboot_proto::msg::{Join, Nack, Progress};

use crate::geometry::{ArtifactInfo, Geometry};
use crate::pacing::{RateControl, TokenBucket};
use crate::source::BlockSource;

mod types;

pub use types::{
    Admission, ControlOutcome, DropCause, IgnoreReason, LaterReason, MemberState, MemberStatus,
    SendStep, SenderConfig, SenderError, SenderEvent, SenderStats,
};

#[derive(Debug)]
struct Member {
    state: MemberState,
    /// Missing blocks it reported in the current rate interval.
    interval_missing: u64,
    /// Flow control fairness: when and at which first-pass slice it was first seen holding
    /// the pass back since it was last level with the median member (`None`: it is not).
    holding_since: Option<(Duration, u32)>,
}

/// One transfer session (master side). See the module docs.
#[derive(Debug)]
pub struct Sender<S> {
    cfg: SenderConfig,
    transfer: u32,
    artifact: ArtifactInfo,
    geo: Geometry,
    source: S,
    start_at: Duration,
    /// When the last member joined before the first pass (see `SenderConfig::join_quiet`).
    last_join: Option<Duration>,
    /// Members the caller expects at most ([`Sender::expect_members`]); once that many
    /// have joined, the first pass starts without waiting out the join window.
    expected: Option<usize>,
    started: bool,
    finished: bool,
    /// First-pass position: next block to send for the first time.
    cur_slice: u32,
    cur_block: u16,
    max_lag_slices: u32,
    late_join_slices: u32,
    /// Flow control window in slices (`u32::MAX`: off).
    window_slices: u32,
    /// When the first pass was last seen stopped by flow control (`None`: it is not).
    flow_stopped_at: Option<Duration>,
    repairs: BTreeMap<u32, SliceBitmap>,
    recent: VecDeque<(Duration, u32, SliceBitmap)>,
    members: BTreeMap<MacAddr, Member>,
    events: VecDeque<SenderEvent>,
    bucket: TokenBucket,
    rate: RateControl,
    interval_start: Duration,
    interval_sent: u64,
    sequence: u32,
    scratch: Vec<u8>,
    /// The first pass's current slice, read with one `read_at` when the pass enters it
    /// (one read per slice instead of one per block); `None` until then.
    slice_cache: Option<u32>,
    slice_buf: Vec<u8>,
    stats: SenderStats,
}

/// The bucket holds at most this much time of sending at the current rate (and at most
/// `cfg.burst` bytes, and at least one batch).
const BURST_TIME_MS: u64 = 16;

/// Token bucket depth at `rate`: `BURST_TIME_MS` worth, within `[batch, burst]`. A slow
/// session (a 5 MB/s cap, or after a back-off) must not send a large part of its artifact
/// in one burst.
fn bucket_depth(cfg: &SenderConfig, rate: u64) -> u64 {
    let floor = cfg.batch.min(cfg.burst).max(1);
    (rate.saturating_mul(BURST_TIME_MS) / 1000).clamp(floor, cfg.burst.max(floor))
}

/// Most entries in the recent-repairs ring (bounds memory whatever the holdoff).
const RECENT_CAP: usize = 4096;

impl<S: BlockSource> Sender<S> {
    /// A session for `artifact` under transfer id `transfer`, created at `now`; data
    /// starts at `now + cfg.join_window`.
    pub fn new(
        cfg: SenderConfig,
        transfer: u32,
        artifact: ArtifactInfo,
        source: S,
        now: Duration,
    ) -> Result<Sender<S>, SenderError> {
        let geo = Geometry::new(artifact.size, cfg.block_size).map_err(|source| {
            SenderError::Geometry {
                transfer,
                artifact: artifact.name.clone(),
                source,
            }
        })?;
        let per_slice = geo.slice_bytes();
        let slices = |bytes: u64| u32::try_from(bytes / per_slice).unwrap_or(u32::MAX);
        let rate = RateControl::new(cfg.rate);
        Ok(Sender {
            start_at: now + cfg.join_window,
            last_join: None,
            expected: None,
            started: false,
            finished: false,
            cur_slice: 0,
            cur_block: 0,
            max_lag_slices: slices(cfg.max_lag_bytes).max(1),
            late_join_slices: slices(cfg.late_join_bytes),
            window_slices: match cfg.flow_window {
                0 => u32::MAX,
                w => slices(w).max(1),
            },
            flow_stopped_at: None,
            repairs: BTreeMap::new(),
            recent: VecDeque::new(),
            members: BTreeMap::new(),
            events: VecDeque::new(),
            bucket: TokenBucket::new(rate.rate(), bucket_depth(&cfg, rate.rate()), now),
            stats: SenderStats {
                rate: rate.rate(),
                ..SenderStats::default()
            },
            rate,
            interval_start: now,
            interval_sent: 0,
            sequence: 0,
            scratch: vec![0; usize::from(cfg.block_size)],
            slice_cache: None,
            slice_buf: Vec::new(),
            cfg,
            transfer,
            artifact,
            geo,
            source,
        })
    }

    /// Transfer id.
    pub fn transfer(&self) -> u32 {
        self.transfer
    }

    /// The artifact.
    pub fn artifact(&self) -> &ArtifactInfo {
        &self.artifact
    }

    /// Slice layout.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Counters.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// Every member and its state, in MAC order.
    pub fn members(&self) -> impl Iterator<Item = (MacAddr, MemberState)> + '_ {
        self.members.iter().map(|(mac, m)| (*mac, m.state))
    }

    /// First-pass position: the next slice to be sent for the first time.
    pub fn position(&self) -> u32 {
        self.cur_slice
    }

    /// Whether the session is over.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next event to act on, oldest first.
    pub fn next_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// Admits `member`, which holds `have_slices` contiguous slices (its Fetch), at `now`.
    /// A member that re-joins (card restarted) gets its position reset.
    pub fn join(&mut self, member: MacAddr, have_slices: u32, now: Duration) -> Admission {
        self.housekeeping(now);
        if self.finished {
            return Admission::Later(LaterReason::Finished);
        }
        let have = have_slices.min(self.geo.slices());
        if let Some(m) = self.members.get(&member)
            && matches!(m.state.status, MemberStatus::Dropped(_))
        {
            return Admission::Later(LaterReason::WasDropped);
        }
        let behind = self.cur_slice.saturating_sub(have);
        if self.started && behind > self.late_join_slices {
            return Admission::Later(LaterReason::TooFarBehind { behind });
        }
        if !self.started {
            self.last_join = Some(now);
        }
        let state = MemberState {
            status: MemberStatus::Active,
            have_slices: have,
            last_heard: now,
            nacks: 0,
            nacked_blocks: 0,
        };
        self.members.insert(
            member,
            Member {
                state,
                interval_missing: 0,
                holding_since: None,
            },
        );
        Admission::Joined(Join {
            transfer: self.transfer,
            artifact: self.artifact.sha256,
            size: self.artifact.size,
            group: self.cfg.link.dst,
            block_size: self.geo.block_size(),
            first_slice: if self.started { self.cur_slice } else { have },
        })
    }

    /// Removes `member` (it reported an error, or the caller moves it elsewhere). No event.
    pub fn remove(&mut self, member: MacAddr, now: Duration) {
        if let Some(m) = self.members.get_mut(&member)
            && m.state.status == MemberStatus::Active
        {
            m.state.status = MemberStatus::Dropped(DropCause::Removed);
        }
        self.housekeeping(now);
    }

    fn ignore(&mut self, why: IgnoreReason) -> ControlOutcome {
        self.stats.ignored_control += 1;
        ControlOutcome::Ignored(why)
    }

    fn active_member(&mut self, from: MacAddr) -> Result<&mut Member, IgnoreReason> {
        match self.members.get_mut(&from) {
            None => Err(IgnoreReason::NotMember),
            Some(m) if m.state.status != MemberStatus::Active => Err(IgnoreReason::NotActive),
            Some(m) => Ok(m),
        }
    }

    /// Whether block `b` of slice `s` went out in the first pass already.
    fn behind_cursor(&self, s: u32, b: u16) -> bool {
        s < self.cur_slice || (s == self.cur_slice && b < self.cur_block)
    }

    /// A NACK from `from`: queues the missing blocks that were sent already and were not
    /// repaired within the holdoff.
    pub fn handle_nack(&mut self, from: MacAddr, nack: &Nack, now: Duration) -> ControlOutcome {
        if nack.transfer != self.transfer {
            return self.ignore(IgnoreReason::WrongTransfer);
        }
        if nack.slice >= self.geo.slices() {
            return self.ignore(IgnoreReason::OutOfRange);
        }
        let wanted = self.geo.clamp(nack.slice, SliceBitmap(nack.missing));
        let count = wanted.count();
        let member = match self.active_member(from) {
            Ok(m) => m,
            Err(why) => return self.ignore(why),
        };
        member.state.last_heard = now;
        member.state.nacks += 1;
        member.state.nacked_blocks += u64::from(count);
        member.state.have_slices = member.state.have_slices.min(nack.slice);
        self.stats.nacks += 1;
        self.stats.nacked_blocks += u64::from(count);
        if self.drop_if_lagging(from) {
            return ControlOutcome::MemberDropped;
        }
        // Blocks of this slice repaired within the holdoff: one pass over the ring.
        let mut recent = SliceBitmap::default();
        for (at, s, bits) in &self.recent {
            if *s == nack.slice && *at + self.cfg.repair_holdoff > now {
                for (d, b) in recent.0.iter_mut().zip(bits.0) {
                    *d |= b;
                }
            }
        }
        let mut queue = SliceBitmap::default();
        let mut missing = 0;
        for b in wanted.missing() {
            if !self.behind_cursor(nack.slice, b) {
                continue;
            }
            missing += 1;
            if recent.is_missing(b) {
                self.stats.holdoff_suppressed += 1;
            } else {
                queue.set(b, true);
            }
        }
        if let Some(m) = self.members.get_mut(&from) {
            m.interval_missing += missing;
        }
        if queue.count() == 0 {
            return ControlOutcome::Accepted;
        }
        let full = self.repairs.len() >= self.cfg.max_repair_slices;
        match self.repairs.get_mut(&nack.slice) {
            Some(q) => {
                for (d, s) in q.0.iter_mut().zip(queue.0) {
                    *d |= s;
                }
            }
            None if full => return self.ignore(IgnoreReason::RepairQueueFull),
            None => {
                self.repairs.insert(nack.slice, queue);
            }
        }
        self.stats.repair_queue_high_water =
            self.stats.repair_queue_high_water.max(self.repairs.len());
        ControlOutcome::Accepted
    }

    /// A Progress from `from`: updates its position; `done >= size` completes it.
    pub fn handle_progress(
        &mut self,
        from: MacAddr,
        progress: &Progress,
        now: Duration,
    ) -> ControlOutcome {
        if progress.artifact != Some(self.artifact.sha256) || progress.total != self.artifact.size {
            return self.ignore(IgnoreReason::WrongArtifact);
        }
        let have = self.geo.slices_within(progress.done);
        let complete = progress.done >= self.artifact.size;
        if let Some(m) = self.members.get_mut(&from)
            && m.state.status == MemberStatus::Complete
            && complete
        {
            // A repeated final report (cards send it more than once, as it may be lost).
            m.state.last_heard = now;
            return ControlOutcome::Accepted;
        }
        let member = match self.active_member(from) {
            Ok(m) => m,
            Err(why) => return self.ignore(why),
        };
        member.state.last_heard = now;
        member.state.have_slices = have;
        if complete {
            member.state.status = MemberStatus::Complete;
            self.events
                .push_back(SenderEvent::Completed { member: from });
            self.check_finished();
            return ControlOutcome::Accepted;
        }
        if self.median_have().is_some_and(|median| have >= median)
            && let Some(m) = self.members.get_mut(&from)
        {
            // Level with the group again: whatever held it back (flow control) has passed.
            m.holding_since = None;
        }
        if self.drop_if_lagging(from) {
            return ControlOutcome::MemberDropped;
        }
        ControlOutcome::Accepted
    }

    fn drop_member(&mut self, mac: MacAddr, cause: DropCause) {
        if let Some(m) = self.members.get_mut(&mac) {
            m.state.status = MemberStatus::Dropped(cause);
            self.events.push_back(SenderEvent::Dropped {
                member: mac,
                cause,
                resume_slices: m.state.have_slices,
            });
        }
        self.check_finished();
    }

    fn drop_if_lagging(&mut self, mac: MacAddr) -> bool {
        let Some(m) = self.members.get(&mac) else {
            return false;
        };
        let behind = self.cur_slice.saturating_sub(m.state.have_slices);
        if self.started && m.state.status == MemberStatus::Active && behind > self.max_lag_slices {
            self.drop_member(mac, DropCause::Lagging { behind });
            return true;
        }
        false
    }

    fn check_finished(&mut self) {
        if self.finished || !self.started {
            return;
        }
        let all_done = self
            .members
            .values()
            .all(|m| m.state.status != MemberStatus::Active);
        if all_done {
            self.finished = true;
            self.repairs.clear();
            self.events.push_back(SenderEvent::Finished);
        }
    }

    /// Timeouts, the join window, rate intervals. Idempotent at a given `now`.
    fn housekeeping(&mut self, now: Duration) {
        if self.finished {
            return;
        }
        if !self.started && now >= self.first_pass_at() {
            self.started = true;
            self.cur_slice = self
                .members
                .values()
                .filter(|m| m.state.status == MemberStatus::Active)
                .map(|m| m.state.have_slices)
                .min()
                .unwrap_or(0);
            self.interval_start = now;
        }
        if self.started && now.saturating_sub(self.interval_start) >= self.cfg.adjust_interval {
            // Judge only intervals with a slice's worth of frames: a handful of repairs
            // at the end of a session with a late NACK is no loss ratio. Small intervals
            // are carried over into the next.
            if self.interval_sent >= u64::from(BLOCKS_PER_SLICE) {
                // The median member's loss drives the rate: one slow or lossy card must not
                // slow the group (it is dropped to catch-up instead); in a catch-up session
                // of one card, the median is that card.
                let mut missing: Vec<u64> = self
                    .members
                    .values()
                    .filter(|m| m.state.status == MemberStatus::Active)
                    .map(|m| m.interval_missing)
                    .collect();
                missing.sort_unstable();
                let median = missing.get(missing.len().saturating_sub(1) / 2).copied();
                let before = self.rate.decreases();
                let rate = self
                    .rate
                    .end_interval(self.interval_sent, median.unwrap_or(0));
                self.stats.rate_decreases += self.rate.decreases() - before;
                self.stats.rate = rate;
                self.bucket.set_rate(rate, now);
                self.bucket.set_burst(bucket_depth(&self.cfg, rate), now);
                self.interval_sent = 0;
                self.members
                    .values_mut()
                    .for_each(|m| m.interval_missing = 0);
            }
            self.interval_start = now;
        }
        while let Some((at, _, _)) = self.recent.front() {
            if *at + self.cfg.repair_holdoff > now {
                break;
            }
            self.recent.pop_front();
        }
        let mut drops = Vec::new();
        for (mac, m) in &self.members {
            if m.state.status != MemberStatus::Active {
                continue;
            }
            // Lag is judged when a report arrives (handle_progress / handle_nack), when the
            // position is fresh; between reports only silence counts.
            let silent_for = now.saturating_sub(m.state.last_heard);
            if silent_for > self.cfg.silence_timeout {
                drops.push((*mac, DropCause::Silent { silent_for }));
            }
        }
        for (mac, cause) in drops {
            self.drop_member(mac, cause);
        }
        self.check_finished();
    }

    /// When the first pass starts: the end of the join window, or `join_quiet` after the
    /// last join if that is sooner, or `join_grace` after the last join once every expected
    /// member is in.
    fn first_pass_at(&self) -> Duration {
        match self.last_join {
            Some(t) if self.expected.is_some_and(|n| self.members.len() >= n) => {
                self.start_at.min(t.saturating_add(self.cfg.join_grace))
            }
            Some(t) => self.start_at.min(t.saturating_add(self.cfg.join_quiet)),
            None => self.start_at,
        }
    }

    /// The caller knows that at most `n` receivers are about to ask for this artifact (the
    /// cards it planned it for that are fetching now): once `n` have joined, the first
    /// pass starts at once instead of waiting out the join window, so a lone card waits
    /// for nobody. A card the caller did not count still joins late (within
    /// `late_join_bytes`) and gets what it missed by NACK. Call it again when the count
    /// changes; it has no effect after the first pass started. The pass still waits
    /// `join_grace` after that join, for the Join to reach the card and its port to join
    /// the group (frames sent before that are lost to it and must be repaired).
    pub fn expect_members(&mut self, n: usize) {
        self.expected = Some(n);
    }

    /// The next block to send: the lowest queued repair, else the first-pass block.
    fn peek(&self) -> Option<(u32, u16, bool)> {
        if let Some((s, bits)) = self.repairs.first_key_value()
            && let Some(b) = bits.missing().next()
        {
            return Some((*s, b, true));
        }
        (self.cur_slice < self.geo.slices()).then_some((self.cur_slice, self.cur_block, false))
    }

    /// The (upper) median of the active members' positions; `None` without members.
    fn median_have(&self) -> Option<u32> {
        let mut have: Vec<u32> = self
            .members
            .values()
            .filter(|m| m.state.status == MemberStatus::Active)
            .map(|m| m.state.have_slices)
            .collect();
        have.sort_unstable();
        have.get(have.len() / 2).copied()
    }

    /// The first slice the first pass may not send yet: the slowest active member's
    /// position plus the window (`u32::MAX` without members or with flow control off).
    pub fn flow_limit(&self) -> u32 {
        self.members
            .values()
            .filter(|m| m.state.status == MemberStatus::Active)
            .map(|m| m.state.have_slices.saturating_add(self.window_slices))
            .min()
            .unwrap_or(u32::MAX)
    }

    /// The first pass is stopped by flow control at `now`: counts the stop, and drops the
    /// members that hold it back while the median member is ahead of them and have kept it
    /// below the rate floor for longer than `flow_hold` (see `SenderConfig::flow_hold`).
    /// True if it dropped one (the limit moved).
    fn flow_stopped(&mut self, now: Duration) -> bool {
        match self.flow_stopped_at {
            Some(t) => self.stats.flow_blocked += now.saturating_sub(t),
            None => self.stats.flow_stops += 1,
        }
        self.flow_stopped_at = Some(now);
        let active = self
            .members
            .values()
            .filter(|m| m.state.status == MemberStatus::Active)
            .count();
        let Some(median) = self.median_have() else {
            return false;
        };
        if active < 2 {
            return false;
        }
        let (cur, window, hold) = (self.cur_slice, self.window_slices, self.cfg.flow_hold);
        let (slice_bytes, floor) = (self.geo.slice_bytes(), self.cfg.rate.min_rate);
        let mut drops = Vec::new();
        for (mac, m) in &mut self.members {
            let have = m.state.have_slices;
            if m.state.status != MemberStatus::Active {
                continue;
            }
            if have.saturating_add(window) > cur || have >= median {
                m.holding_since = None;
                continue;
            }
            let (since, at) = *m.holding_since.get_or_insert((now, cur));
            let held = now.saturating_sub(since);
            if held <= hold {
                continue;
            }
            let sent = u64::from(cur.saturating_sub(at)).saturating_mul(slice_bytes);
            let rate = u64::try_from(u128::from(sent) * 1_000_000 / held.as_micros().max(1))
                .unwrap_or(u64::MAX);
            if rate < floor {
                drops.push((*mac, DropCause::Slow { held, rate }));
            }
        }
        let dropped = !drops.is_empty();
        for (mac, cause) in drops {
            self.drop_member(mac, cause);
        }
        dropped
    }

    /// The earliest time something must be checked when nothing is queued.
    fn next_deadline(&self, now: Duration) -> Duration {
        let silence = self
            .members
            .values()
            .filter(|m| m.state.status == MemberStatus::Active)
            .map(|m| m.state.last_heard + self.cfg.silence_timeout)
            .min();
        let mut t = self.interval_start + self.cfg.adjust_interval;
        if let Some(s) = silence {
            t = t.min(s + Duration::from_nanos(1));
        }
        t.max(now + Duration::from_micros(1))
    }

    /// Produces the next data frame into `buf` (give it `MAX_FRAME_LEN` bytes) if one may
    /// go at `now`, else says when to call again. Call in a loop to fill a send batch.
    pub fn poll(&mut self, now: Duration, buf: &mut [u8]) -> Result<SendStep, SenderError> {
        self.housekeeping(now);
        if self.finished {
            return Ok(SendStep::Done);
        }
        if !self.started {
            return Ok(SendStep::Wait {
                until: self.first_pass_at(),
            });
        }
        let Some((slice, block, retransmit)) = self.peek() else {
            return Ok(SendStep::Wait {
                until: self.next_deadline(now),
            });
        };
        if !retransmit {
            if slice >= self.flow_limit() && !(self.flow_stopped(now) && slice < self.flow_limit())
            {
                // Wait for a report (the caller polls again when one arrives) or the next
                // timeout check.
                if self.finished {
                    return Ok(SendStep::Done);
                }
                return Ok(SendStep::Wait {
                    until: self.next_deadline(now),
                });
            }
            self.flow_stopped_at = None;
        }
        let ready = self.bucket.ready_for_batch(now, self.cfg.batch);
        if ready > now {
            return Ok(SendStep::Wait { until: ready });
        }
        let len = self.encode(slice, block, retransmit, buf)?;
        self.bucket.consume(len as u64, now);
        let data_len = self.geo.block_len(slice, block).unwrap_or(0) as u64;
        self.stats.frames += 1;
        self.stats.wire_bytes += len as u64;
        self.interval_sent += 1;
        if retransmit {
            self.stats.retransmit_frames += 1;
            self.stats.retransmit_bytes += data_len;
            self.mark_repaired(slice, block, now);
        } else {
            self.stats.data_bytes += data_len;
            self.cur_block += 1;
            if self.cur_block >= self.geo.blocks_in_slice(self.cur_slice) {
                self.cur_slice += 1;
                self.cur_block = 0;
            }
        }
        Ok(SendStep::Frame { len, retransmit })
    }

    fn encode(
        &mut self,
        slice: u32,
        block: u16,
        retransmit: bool,
        buf: &mut [u8],
    ) -> Result<usize, SenderError> {
        let offset = self.geo.block_offset(slice, block);
        let len = self.geo.block_len(slice, block).unwrap_or(0);
        let read_err = |offset, len| {
            let (transfer, artifact) = (self.transfer, self.artifact.name.clone());
            move |source| SenderError::Read {
                transfer,
                artifact,
                offset,
                len,
                source,
            }
        };
        if !retransmit && self.slice_cache != Some(slice) {
            // The first pass enters a new slice: read all of it at once.
            let start = self.geo.slice_start(slice);
            let slice_len = usize::try_from(self.geo.slice_len(slice)).unwrap_or(0);
            self.slice_cache = None;
            self.slice_buf.resize(slice_len, 0);
            self.source
                .read_at(start, &mut self.slice_buf)
                .map_err(read_err(start, slice_len))?;
            self.slice_cache = Some(slice);
        }
        let cached = (self.slice_cache == Some(slice))
            .then(|| {
                let from = usize::try_from(offset - self.geo.slice_start(slice)).ok()?;
                self.slice_buf.get(from..from.checked_add(len)?)
            })
            .flatten();
        let data: &[u8] = match cached {
            Some(d) => d,
            None => {
                let d = &mut self.scratch[..len];
                self.source
                    .read_at(offset, d)
                    .map_err(read_err(offset, len))?;
                d
            }
        };
        let encode_err = |source| SenderError::Encode {
            transfer: self.transfer,
            artifact: self.artifact.name.clone(),
            slice,
            block,
            source,
        };
        let hdr = DataHeader::new(slice, block, self.geo.block_size()).ok_or_else(|| {
            encode_err(DataError::OffsetMismatch {
                offset,
                slice,
                block,
                block_size: self.geo.block_size(),
                expected: None,
            })
        })?;
        let mut flags = Flags::NONE;
        if retransmit {
            flags = flags.with(Flags::RETRANSMIT);
        }
        if offset + len as u64 == self.artifact.size {
            flags = flags.with(Flags::LAST);
        }
        // The data frame layout is the same in every protocol version: data frames go in
        // the oldest version spoken, so that every card of a session decodes them.
        let header = Header {
            flags,
            ..Header::new(MessageType::Data, self.transfer, self.sequence)
                .in_version(shelfboot_proto::version::MIN)
        };
        self.sequence = self.sequence.wrapping_add(1);
        encode_data_frame(buf, &self.cfg.link, &header, &hdr, data).map_err(encode_err)
    }

    fn mark_repaired(&mut self, slice: u32, block: u16, now: Duration) {
        if let Some(bits) = self.repairs.get_mut(&slice) {
            bits.set(block, false);
            if bits.count() == 0 {
                self.repairs.remove(&slice);
            }
        }
        match self.recent.back_mut() {
            // Repairs of one slice go out back to back: one entry per run (the holdoff then
            // counts from the run's last block, slightly longer for its first ones).
            Some((at, s, bits)) if *s == slice => {
                bits.set(block, true);
                *at = now;
            }
            _ => {
                let mut bits = SliceBitmap::default();
                bits.set(block, true);
                self.recent.push_back((now, slice, bits));
                if self.recent.len() > RECENT_CAP {
                    self.recent.pop_front();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
