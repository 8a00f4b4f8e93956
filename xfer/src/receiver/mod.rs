//! The card side of one artifact transfer: accepts data frames of its transfer id, keeps a
//! bounded window of slices buffered out of order, delivers bytes strictly in order to a
//! [`ByteSink`] while hashing them, says which blocks are missing (NACK bitmaps) and how far
//! it is (Progress), and verifies size and sha256 at the end (unless the sink verifies the
//! sha256 itself: [`ReceiverConfig::verify_digest`]).
//!
//! Window: slices `[next, next + W)` where `next` is the first slice not yet delivered and
//! `W = window_bytes / slice_bytes`. Blocks of later slices are dropped (counted) and fetched
//! again by NACK once the window reaches them. Buffers are pooled: at most `W` slice buffers
//! exist at any time, so memory never exceeds `window_bytes` ([`ReceiverStats::buffered_high_water`]).
//!
//! NACK policy: an incomplete slice in the window is NACKed once the sender has moved past
//! it (a data frame of a later slice arrived), or once no data frame arrived for
//! `idle_nack` (the tail was lost, the sender waits for us, or the Join said its first
//! pass is already past us and nothing came since); at most `max_nacks_per_poll` per poll. A slice is NACKed again
//! no sooner than `nack_retry` later, and that interval doubles (up to 32 ×) for every
//! NACK that brought none of its blocks: a card that is slower than the repairs (its
//! queue holds them, unread) or cut off does not ask for the same blocks every 30 ms, each
//! ask costing a full resend. A block of the slice arriving resets the interval.
//!
//! Resume: a receiver may start with `delivered` bytes already in the sink and a hasher
//! that absorbed exactly those bytes ([`Resume`]); it then only writes what follows.
//! Invalid, foreign, duplicate or out-of-window frames are counted and dropped, never a
//! panic. This module does not decode frames (give it [`DataView`]s), encode control
//! messages (it returns `Message`s), or commit anything to flash.

use std::time::Duration;

use sha2::{Digest as _, Sha256};
use shelfboot_proto::data::{DataView, SliceBitmap};
use shelfboot_proto::msg::{Digest, Fetch, Join, Message, Nack, Progress, Stage};
use thiserror::Error;

use crate::geometry::{ArtifactInfo, Geometry, GeometryError};

use crate::source::ByteSink;

/// Tunables of a receiver. [`ReceiverConfig::default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Most bytes of slice buffers held at once. Default 4 MiB. Must hold one slice.
    pub window_bytes: u64,
    /// A slice is NACKed again no sooner than this (doubled, up to 32 ×, for every NACK
    /// of it that brought none of its blocks). Default 30 ms.
    pub nack_retry: Duration,
    /// With no data frame for this long, incomplete slices are NACKed. Default 50 ms.
    pub idle_nack: Duration,
    /// Progress is reported at least this often (it is also the heartbeat the sender
    /// watches). Default 100 ms.
    pub progress_interval: Duration,
    /// ... and whenever this many more bytes were delivered. Default 2 MiB. The sender's
    /// flow control never runs more than its window (4 MiB) past the position we
    /// reported: reported only at the next timed poll (up to 50-100 ms later), this step
    /// held the first pass at ~40 MB/s, so the caller polls as soon as
    /// [`Receiver::report_due`] says so. A 512 KiB step was faster for one card but let
    /// the session outrun a 16-card simulator process (more repairs in the netns
    /// conversation test).
    pub progress_bytes: u64,
    /// After completion, the final Progress is sent this many times, `progress_interval`
    /// apart (it may be lost). Default 3.
    pub final_reports: u32,
    /// Most NACKs produced by one poll. Default 32.
    pub max_nacks_per_poll: usize,
    /// Hash the delivered bytes and check them against the artifact's sha256 at the end.
    /// Default true. Turn it off only when the sink itself verifies the sha256 of what it
    /// holds before anything can use it (the card's store hashes each staged volume as
    /// read back): the stream is then hashed once, not twice. Without it, completion
    /// means every byte was delivered, not that they are the artifact.
    pub verify_digest: bool,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            window_bytes: 4 << 20,
            nack_retry: Duration::from_millis(30),
            idle_nack: Duration::from_millis(50),
            progress_interval: Duration::from_millis(100),
            progress_bytes: 2 << 20,
            final_reports: 3,
            max_nacks_per_poll: 32,
            verify_digest: true,
        }
    }
}

/// Errors of a receiver. After [`ReceiverError::Sink`] or [`ReceiverError::DigestMismatch`]
/// the receiver is [`ReceiverState::Failed`]: what the sink holds must not be committed.
#[derive(Debug, Error)]
pub enum ReceiverError {
    /// The artifact cannot be cut at the session's block size.
    #[error("artifact {artifact}: invalid session geometry")]
    Geometry {
        artifact: String,
        #[source]
        source: GeometryError,
    },
    /// The window cannot hold one slice.
    #[error(
        "artifact {artifact}: receive window of {window_bytes} bytes cannot hold one {slice_bytes}-byte slice: raise window_bytes"
    )]
    WindowTooSmall {
        artifact: String,
        window_bytes: u64,
        slice_bytes: u64,
    },
    /// The Join is for another artifact than the one this receiver was made for.
    #[error(
        "artifact {artifact}: Join for transfer {transfer} announces {field} {got}, the plan says {expected}: ignore that Join"
    )]
    SessionMismatch {
        artifact: String,
        transfer: u32,
        field: &'static str,
        expected: String,
        got: String,
    },
    /// The resume point lies past the end of the artifact.
    #[error(
        "artifact {artifact}: resume point {delivered} is past its size {size}: discard the partial copy and start over"
    )]
    ResumePastEnd {
        artifact: String,
        delivered: u64,
        size: u64,
    },
    /// The sink refused bytes.
    #[error("artifact {artifact}: writing {len} bytes at offset {offset} to the sink failed")]
    Sink {
        artifact: String,
        offset: u64,
        len: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// All bytes arrived but their sha256 is not the expected one.
    #[error(
        "artifact {artifact}: sha256 mismatch after receiving {size} bytes: expected {expected}, got {actual}; do not commit it, fetch it again"
    )]
    DigestMismatch {
        artifact: String,
        size: u64,
        expected: Digest,
        actual: Digest,
    },
}

/// Where a receiver starts: bytes already delivered to the sink, and the sha256 state
/// over exactly those bytes.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    delivered: u64,
    hasher: Sha256,
}

impl Resume {
    /// Nothing held yet.
    pub fn fresh() -> Resume {
        Resume::default()
    }

    /// `delivered` bytes are in the sink and `hasher` absorbed exactly them (the card
    /// re-reads its partial copy from flash to rebuild it).
    pub fn new(delivered: u64, hasher: Sha256) -> Resume {
        Resume { delivered, hasher }
    }

    /// Bytes held.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Whole slices held at `block_size` (the Fetch `have_slices`).
    pub fn have_slices(&self, size: u64, block_size: u16) -> u32 {
        Geometry::new(size, block_size).map_or(0, |g| g.slices_within(self.delivered))
    }
}

/// Where a receiver stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverState {
    /// Receiving data.
    Receiving,
    /// Every byte delivered and the sha256 matched.
    Complete,
    /// The sink failed or the sha256 did not match.
    Failed,
}

/// What became of a data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOutcome {
    /// Stored (and possibly delivered).
    Accepted,
    /// Stored, and it completed the artifact: sha256 verified.
    Completed,
    /// Not used.
    Dropped(DropReason),
}

/// Why a data frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Another transfer id.
    WrongTransfer,
    /// Block size differs from the session's.
    BlockSizeMismatch,
    /// Slice or block past the end of the artifact.
    OutOfRange,
    /// Data length differs from the block's.
    BadLength,
    /// Already held.
    Duplicate,
    /// Past the receive window (it will be NACKed when the window gets there).
    BeyondWindow,
    /// The receiver completed or failed.
    NotReceiving,
}

/// Counters of a receiver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Frames stored.
    pub accepted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Frames of other transfers dropped.
    pub wrong_transfer: u64,
    /// Frames with a foreign block size dropped.
    pub block_size_mismatch: u64,
    /// Frames past the artifact's end dropped.
    pub out_of_range: u64,
    /// Frames with a wrong data length dropped.
    pub bad_length: u64,
    /// Frames past the window dropped.
    pub beyond_window: u64,
    /// Frames after completion or failure dropped.
    pub not_receiving: u64,
    /// NACKs produced.
    pub nacks_sent: u64,
    /// Blocks asked for by those NACKs.
    pub nacked_blocks: u64,
    /// Progress messages produced.
    pub progress_sent: u64,
    /// Bytes delivered to the sink (including the resumed prefix).
    pub delivered_bytes: u64,
    /// Bytes of slice buffers currently allocated.
    pub buffered_bytes: u64,
    /// Most bytes of slice buffers ever allocated at once.
    pub buffered_high_water: u64,
}

#[derive(Debug, Default)]
struct Slot {
    slice: Option<u32>,
    missing: SliceBitmap,
    nacked_at: Option<Duration>,
    /// NACKs of this slice since a block of it last arrived (the retry backoff).
    unanswered: u32,
    buf: Option<Vec<u8>>,
}

impl Slot {
    /// When this slice may be NACKed again: `retry` after the last NACK, doubled for
    /// every NACK that brought none of its blocks, at most [`NACK_BACKOFF_MAX`] times.
    fn retry_at(&self, retry: Duration) -> Option<Duration> {
        let factor = 1u32 << self.unanswered.saturating_sub(1).min(NACK_BACKOFF_MAX);
        self.nacked_at.map(|t| t + retry * factor)
    }
}

/// Most doublings of a slice's NACK retry interval (30 ms × 2⁵ = 960 ms by default).
const NACK_BACKOFF_MAX: u32 = 5;

/// One artifact being received (card side). See the module docs.
#[derive(Debug)]
pub struct Receiver<W> {
    cfg: ReceiverConfig,
    artifact: ArtifactInfo,
    geo: Geometry,
    transfer: u32,
    sink: W,
    hasher: Sha256,
    delivered: u64,
    next: u32,
    window: u32,
    slots: Vec<Slot>,
    pool: Vec<Vec<u8>>,
    highest_seen: Option<u32>,
    /// The last Join said the session's first pass was already past our next slice.
    joined_behind: bool,
    last_data: Duration,
    last_progress: Option<(Duration, u64)>,
    final_left: u32,
    state: ReceiverState,
    stats: ReceiverStats,
}

impl<W: ByteSink> Receiver<W> {
    /// A receiver for `artifact` in the session announced by `join`, starting from
    /// `resume` (the sink already holds those bytes), at `now`. An artifact that `resume`
    /// already covers completes (and is verified) here.
    pub fn new(
        cfg: ReceiverConfig,
        artifact: ArtifactInfo,
        join: &Join,
        resume: Resume,
        sink: W,
        now: Duration,
    ) -> Result<Receiver<W>, ReceiverError> {
        if resume.delivered > artifact.size {
            return Err(ReceiverError::ResumePastEnd {
                artifact: artifact.name,
                delivered: resume.delivered,
                size: artifact.size,
            });
        }
        let mut r = Receiver {
            geo: Geometry::new(artifact.size, 64).map_err(|source| ReceiverError::Geometry {
                artifact: artifact.name.clone(),
                source,
            })?,
            cfg,
            artifact,
            transfer: join.transfer,
            sink,
            hasher: resume.hasher,
            delivered: resume.delivered,
            next: 0,
            window: 0,
            slots: Vec::new(),
            pool: Vec::new(),
            highest_seen: None,
            joined_behind: false,
            last_data: now,
            last_progress: None,
            final_left: 0,
            state: ReceiverState::Receiving,
            stats: ReceiverStats {
                delivered_bytes: resume.delivered,
                ..ReceiverStats::default()
            },
        };
        r.set_session(join, now)?;
        Ok(r)
    }

    /// Switches to the session announced by `join` (a catch-up session after this card
    /// was dropped, or a new master after a restart). Delivered bytes are kept; buffered
    /// slices are kept if the block size is unchanged.
    pub fn set_session(&mut self, join: &Join, now: Duration) -> Result<(), ReceiverError> {
        let mismatch = |field, expected: String, got: String| ReceiverError::SessionMismatch {
            artifact: self.artifact.name.clone(),
            transfer: join.transfer,
            field,
            expected,
            got,
        };
        if join.artifact != self.artifact.sha256 {
            return Err(mismatch(
                "sha256",
                self.artifact.sha256.to_string(),
                join.artifact.to_string(),
            ));
        }
        if join.size != self.artifact.size {
            return Err(mismatch(
                "size",
                self.artifact.size.to_string(),
                join.size.to_string(),
            ));
        }
        let geo = Geometry::new(self.artifact.size, join.block_size).map_err(|source| {
            ReceiverError::Geometry {
                artifact: self.artifact.name.clone(),
                source,
            }
        })?;
        let window = self.cfg.window_bytes / geo.slice_bytes();
        if window == 0 {
            return Err(ReceiverError::WindowTooSmall {
                artifact: self.artifact.name.clone(),
                window_bytes: self.cfg.window_bytes,
                slice_bytes: geo.slice_bytes(),
            });
        }
        if geo != self.geo || self.slots.is_empty() {
            self.geo = geo;
            self.window = u32::try_from(window)
                .unwrap_or(u32::MAX)
                .min(geo.slices().max(1));
            self.slots = (0..self.window).map(|_| Slot::default()).collect();
            self.pool.clear();
            self.stats.buffered_bytes = 0;
            self.next = u32::try_from(self.delivered / geo.slice_bytes()).unwrap_or(u32::MAX);
        }
        for slot in &mut self.slots {
            slot.nacked_at = None;
            slot.unanswered = 0;
        }
        self.transfer = join.transfer;
        // A session whose first pass is already past our next slice (a re-Fetch into a
        // running session, a late join) may never send us a frame by itself: if none comes
        // within `idle_nack`, the window is NACKed. Without this a receiver that saw no
        // frame of the session after its Join never NACKed at all. Not at once: a slow
        // card may still hold that pass, unread, in its queue.
        self.highest_seen = None;
        self.joined_behind = join.first_slice > self.next;
        self.last_data = now;
        if self.state == ReceiverState::Receiving {
            self.deliver()?;
        }
        Ok(())
    }

    /// Transfer id of the current session.
    pub fn transfer(&self) -> u32 {
        self.transfer
    }

    /// Slice layout of the current session.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// State.
    pub fn state(&self) -> ReceiverState {
        self.state
    }

    /// Counters.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// Bytes delivered to the sink so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// A Progress is due because `progress_bytes` more were delivered since the last one:
    /// call [`Self::poll`] now, not at the time it last returned (the sender holds its first
    /// pass within its flow window of our reported position). Cheap: call it per frame.
    pub fn report_due(&self) -> bool {
        self.state == ReceiverState::Receiving
            && self
                .last_progress
                .is_some_and(|(_, at)| self.delivered >= at.saturating_add(self.cfg.progress_bytes))
    }

    /// The Fetch to send to ask (again) for this artifact from where it stands.
    pub fn fetch(&self) -> Fetch {
        Fetch {
            artifact: self.artifact.sha256,
            have_slices: self.geo.slices_within(self.delivered),
        }
    }

    /// The sink.
    pub fn sink(&self) -> &W {
        &self.sink
    }

    /// Gives the sink back.
    pub fn into_sink(self) -> W {
        self.sink
    }

    fn slot_index(&self, s: u32) -> usize {
        (s % self.window) as usize
    }

    /// Blocks of slice `s` not yet delivered.
    fn needed(&self, s: u32) -> SliceBitmap {
        let mut bits = self.geo.all_missing(s);
        if self.geo.slice_start(s) < self.delivered {
            for b in 0..self.geo.blocks_in_slice(s) {
                let end =
                    self.geo.block_offset(s, b) + self.geo.block_len(s, b).unwrap_or(0) as u64;
                if end <= self.delivered {
                    bits.set(b, false);
                }
            }
        }
        bits
    }

    /// The slot index of slice `s` (which must be in the window), reset if it held another.
    fn slot(&mut self, s: u32) -> usize {
        let idx = self.slot_index(s);
        if self.slots[idx].slice != Some(s) {
            let missing = self.needed(s);
            let slot = &mut self.slots[idx];
            if let Some(buf) = slot.buf.take() {
                self.pool.push(buf);
            }
            *slot = Slot {
                slice: Some(s),
                missing,
                nacked_at: None,
                unanswered: 0,
                buf: None,
            };
        }
        idx
    }

    fn drop_frame(&mut self, why: DropReason) -> DataOutcome {
        let c = match why {
            DropReason::WrongTransfer => &mut self.stats.wrong_transfer,
            DropReason::BlockSizeMismatch => &mut self.stats.block_size_mismatch,
            DropReason::OutOfRange => &mut self.stats.out_of_range,
            DropReason::BadLength => &mut self.stats.bad_length,
            DropReason::Duplicate => &mut self.stats.duplicates,
            DropReason::BeyondWindow => &mut self.stats.beyond_window,
            DropReason::NotReceiving => &mut self.stats.not_receiving,
        };
        *c += 1;
        DataOutcome::Dropped(why)
    }

    /// Takes one data frame received at `now`. Errors are fatal (sink failure, digest
    /// mismatch); everything wrong with the frame itself is a counted drop.
    pub fn on_data(
        &mut self,
        view: &DataView<'_>,
        now: Duration,
    ) -> Result<DataOutcome, ReceiverError> {
        if self.state != ReceiverState::Receiving {
            return Ok(self.drop_frame(DropReason::NotReceiving));
        }
        if view.transfer() != self.transfer {
            return Ok(self.drop_frame(DropReason::WrongTransfer));
        }
        let hdr = view.header();
        if hdr.block_size != self.geo.block_size() {
            return Ok(self.drop_frame(DropReason::BlockSizeMismatch));
        }
        let data = view.data();
        match self.geo.block_len(hdr.slice, hdr.block) {
            None => return Ok(self.drop_frame(DropReason::OutOfRange)),
            Some(len) if len != data.len() => return Ok(self.drop_frame(DropReason::BadLength)),
            Some(_) => {}
        }
        self.last_data = now;
        // The artifact's final block means the sender has been past every slice.
        let last = self.geo.slices().saturating_sub(1);
        let past = if hdr.slice == last && hdr.block + 1 == self.geo.blocks_in_slice(last) {
            self.geo.slices()
        } else {
            hdr.slice
        };
        self.highest_seen = Some(self.highest_seen.map_or(past, |h| h.max(past)));
        if hdr.offset + data.len() as u64 <= self.delivered || hdr.slice < self.next {
            return Ok(self.drop_frame(DropReason::Duplicate));
        }
        if hdr.slice - self.next >= self.window {
            return Ok(self.drop_frame(DropReason::BeyondWindow));
        }
        let slice_bytes = usize::try_from(self.geo.slice_bytes()).unwrap_or(usize::MAX);
        let at = usize::from(hdr.block) * usize::from(self.geo.block_size());
        let idx = self.slot(hdr.slice);
        if !self.slots[idx].missing.is_missing(hdr.block) {
            return Ok(self.drop_frame(DropReason::Duplicate));
        }
        let mut allocated = 0;
        if self.slots[idx].buf.is_none() {
            let buf = self.pool.pop().unwrap_or_else(|| {
                allocated = slice_bytes as u64;
                vec![0; slice_bytes]
            });
            self.slots[idx].buf = Some(buf);
        }
        let slot = &mut self.slots[idx];
        let Some(dst) = slot
            .buf
            .as_mut()
            .and_then(|b| b.get_mut(at..at + data.len()))
        else {
            return Ok(self.drop_frame(DropReason::OutOfRange));
        };
        dst.copy_from_slice(data);
        slot.missing.set(hdr.block, false);
        slot.unanswered = 0;
        let complete = slot.missing.count() == 0;
        self.stats.accepted += 1;
        self.stats.buffered_bytes += allocated;
        self.stats.buffered_high_water = self
            .stats
            .buffered_high_water
            .max(self.stats.buffered_bytes);
        if complete && hdr.slice == self.next {
            self.deliver()?;
            if self.state == ReceiverState::Complete {
                return Ok(DataOutcome::Completed);
            }
        }
        Ok(DataOutcome::Accepted)
    }

    /// Delivers every complete slice at the head of the window; verifies at the end.
    fn deliver(&mut self) -> Result<(), ReceiverError> {
        while self.delivered < self.artifact.size {
            let s = self.next;
            let idx = self.slot_index(s);
            let live = self.slots[idx].slice == Some(s);
            let done = if live {
                self.slots[idx].missing.count() == 0
            } else {
                self.needed(s).count() == 0
            };
            if !done {
                return Ok(());
            }
            let start = self.geo.slice_start(s);
            let end = start + self.geo.slice_len(s);
            let skip = usize::try_from(self.delivered.saturating_sub(start)).unwrap_or(0);
            let len = usize::try_from(end - start).unwrap_or(0);
            let buf = self.slots[idx].buf.take();
            if let Some(bytes) = buf.as_ref().and_then(|b| b.get(skip..len))
                && !bytes.is_empty()
            {
                let offset = self.delivered;
                self.sink.write(bytes).map_err(|source| {
                    self.state = ReceiverState::Failed;
                    ReceiverError::Sink {
                        artifact: self.artifact.name.clone(),
                        offset,
                        len: bytes.len(),
                        source,
                    }
                })?;
                if self.cfg.verify_digest {
                    self.hasher.update(bytes);
                }
            }
            if let Some(b) = buf {
                self.pool.push(b);
            }
            self.slots[idx] = Slot::default();
            self.delivered = end;
            self.stats.delivered_bytes = end;
            self.next = s + 1;
        }
        self.finish()
    }

    fn finish(&mut self) -> Result<(), ReceiverError> {
        self.pool.clear();
        self.slots.iter_mut().for_each(|s| *s = Slot::default());
        self.stats.buffered_bytes = 0;
        let actual = if self.cfg.verify_digest {
            Digest(self.hasher.clone().finalize().into())
        } else {
            self.artifact.sha256
        };
        if actual != self.artifact.sha256 {
            self.state = ReceiverState::Failed;
            return Err(ReceiverError::DigestMismatch {
                artifact: self.artifact.name.clone(),
                size: self.artifact.size,
                expected: self.artifact.sha256,
                actual,
            });
        }
        self.state = ReceiverState::Complete;
        self.final_left = self.cfg.final_reports.max(1);
        self.last_progress = None;
        Ok(())
    }

    fn progress(&mut self, now: Duration, stage: Stage, out: &mut Vec<Message>) {
        out.push(Message::Progress(Progress {
            stage,
            artifact: Some(self.artifact.sha256),
            done: self.delivered,
            total: self.artifact.size,
        }));
        self.stats.progress_sent += 1;
        self.last_progress = Some((now, self.delivered));
    }

    /// Pushes the control messages due at `now` (Nack, Progress) to `out`; returns when to
    /// call again at the latest (`None`: nothing more to say, the transfer is over).
    pub fn poll(&mut self, now: Duration, out: &mut Vec<Message>) -> Option<Duration> {
        let interval = self.cfg.progress_interval;
        let report_due = |last: Option<(Duration, u64)>, delivered: u64, step: u64| {
            last.is_none_or(|(t, d)| now >= t + interval || delivered >= d.saturating_add(step))
        };
        match self.state {
            ReceiverState::Failed => None,
            ReceiverState::Complete => {
                if self.final_left > 0 && report_due(self.last_progress, 0, u64::MAX) {
                    self.progress(now, Stage::Verifying, out);
                    self.final_left -= 1;
                }
                (self.final_left > 0).then(|| now + interval)
            }
            ReceiverState::Receiving => {
                self.nacks(now, out);
                if report_due(self.last_progress, self.delivered, self.cfg.progress_bytes) {
                    self.progress(now, Stage::Fetching, out);
                }
                let mut wake = self.last_progress.map_or(now, |(t, _)| t + interval);
                // The idle NACK is due once, at `last_data + idle_nack`; after it the
                // NACKed slices' own retry times (below) say when to ask again. Taking the
                // past idle instant as the wake time made an idle receiver ask to be polled
                // every microsecond.
                let idle_at = self.last_data + self.cfg.idle_nack;
                if (self.highest_seen.is_some() || self.joined_behind) && idle_at > now {
                    wake = wake.min(idle_at);
                }
                for slot in &self.slots {
                    if let (Some(_), Some(t)) = (slot.slice, slot.retry_at(self.cfg.nack_retry))
                        && slot.missing.count() > 0
                    {
                        wake = wake.min(t);
                    }
                }
                Some(wake.max(now + Duration::from_micros(1)))
            }
        }
    }

    fn nacks(&mut self, now: Duration, out: &mut Vec<Message>) {
        let idle = now.saturating_sub(self.last_data) >= self.cfg.idle_nack;
        let highest = match self.highest_seen {
            Some(h) => h,
            // Nothing since a Join into a session already past us: everything is due.
            None if self.joined_behind && idle => self.geo.slices(),
            None => return,
        };
        let end = self.next.saturating_add(self.window).min(self.geo.slices());
        let mut sent = 0;
        for s in self.next..end {
            if sent >= self.cfg.max_nacks_per_poll || (!idle && s >= highest) {
                break;
            }
            let retry = self.cfg.nack_retry;
            let transfer = self.transfer;
            let idx = self.slot(s);
            let slot = &mut self.slots[idx];
            let count = slot.missing.count();
            if count == 0 || slot.retry_at(retry).is_some_and(|t| now < t) {
                continue;
            }
            slot.nacked_at = Some(now);
            slot.unanswered = slot.unanswered.saturating_add(1);
            out.push(Message::Nack(Nack {
                transfer,
                slice: s,
                missing: slot.missing.0,
            }));
            sent += 1;
            self.stats.nacks_sent += 1;
            self.stats.nacked_blocks += u64::from(count);
        }
    }
}

#[cfg(test)]
mod tests;
