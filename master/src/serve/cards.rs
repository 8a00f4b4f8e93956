//! What `master serve` knows of each card right now: stage, bytes done of the bytes it
//! fetches, rate, time in stage, last error. One record per card (at most
//! [`MAX_CARDS`]), published in the stats file as `cards` for `master watch`.
//!
//! Sources, all messages the service already handles: a Solicit (identity, stage
//! `soliciting`), the Plan served (`validating` for verdict Continue, `fetching` for
//! Fetch, with the bytes of the plan the card lacks), UnknownCard (`unknown`), a card's
//! Progress (overall: stage, done and total of what it fetches; per artifact: done of
//! that artifact), Ready (`ready`, or `test` for a RAM-only set) and Error (`failed`, the
//! reason kept as the last error).
//!
//! This module only keeps records; it sends nothing and writes no database. Time is the
//! service's monotonic time since it started, passed in.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::id::Digest;
use shelfboot_proto::msg::{Progress, Stage};

/// Cards tracked at most; a card beyond it is left out of the view (it is served as
/// usual).
pub const MAX_CARDS: usize = 16_384;
/// Artifacts tracked per card at most (a plan is bounded by the message limit; this
/// bounds a card that reports artifacts outside its plan).
pub const MAX_ARTIFACTS: usize = 512;
/// Longest last-error text kept.
pub const MAX_ERROR_LEN: usize = 240;
/// The rate is measured over at least this long.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Where a card is, as the master sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CardStage {
    /// A Solicit is queued; no plan sent yet.
    #[default]
    Soliciting,
    /// No plan for this card (answered UnknownCard).
    Unknown,
    /// Plan verdict Continue: the card checks what it holds, no byte moves.
    Validating,
    /// Receiving artifact data.
    Fetching,
    /// Hashing a received artifact.
    Verifying,
    /// Writing to flash.
    Writing,
    /// Atomic commit of the set.
    Committing,
    /// Committed set, handing off.
    Ready,
    /// Ready with a set in RAM (test mode, RAM-first, a card without usable flash).
    Ram,
    /// The card reported an error, or its plan could not be delivered.
    Failed,
}

impl CardStage {
    /// The name shown (`fetching`, `ready`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CardStage::Soliciting => "soliciting",
            CardStage::Unknown => "unknown",
            CardStage::Validating => "validating",
            CardStage::Fetching => "fetching",
            CardStage::Verifying => "verifying",
            CardStage::Writing => "writing",
            CardStage::Committing => "committing",
            CardStage::Ready => "ready",
            CardStage::Ram => "ram",
            CardStage::Failed => "failed",
        }
    }

    /// The card is done with this boot (nothing more moves until it solicits again).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CardStage::Ready | CardStage::Ram | CardStage::Failed | CardStage::Unknown
        )
    }
}

impl std::fmt::Display for CardStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One card in the stats file (`cards`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardStats {
    /// Card MAC.
    pub mac: MacAddr,
    /// Shelf and slot (0 until the card solicited in this run).
    pub shelf: u32,
    pub slot: u32,
    /// Card type (empty until the card solicited in this run).
    pub card_type: String,
    /// Stage.
    pub stage: CardStage,
    /// Service time (ms since `master serve` started) when the card entered its stage.
    pub stage_since_ms: u64,
    /// Bytes of its plan the card has received in this boot.
    pub done_bytes: u64,
    /// Bytes of its plan the card fetches in this boot (what it lacks; 0 for Continue).
    pub total_bytes: u64,
    /// Size of the card's whole planned set.
    pub plan_bytes: u64,
    /// Receive rate over the last second or more of progress, bytes per second.
    pub rate_bps: u64,
    /// Service time (ms) of the card's last frame.
    pub last_seen_ms: u64,
    /// Not heard for the serve's absence interval (its next frame clears it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absent: bool,
    /// What the card's resident agent last reported of its set (`healthy`, `rolled
    /// back`, ...: `master nodes`' HEALTH), if it sent an Alive in this serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// The last error the card reported, or why it has no plan (kept until it is Ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CardStats {
    /// Percent of `total_bytes` done, if the card fetches anything.
    pub fn percent(&self) -> Option<u64> {
        (self.total_bytes > 0)
            .then(|| (self.done_bytes.min(self.total_bytes) * 100) / self.total_bytes)
    }
}

/// One card's record and what its rate and bytes are computed from.
#[derive(Debug, Clone, Default)]
struct Track {
    card: CardStats,
    /// Overall progress the card reported (done).
    overall_done: u64,
    /// Per-artifact progress (done), for the artifact the card fetches now and those it
    /// finished.
    artifacts: Vec<(Digest, u64)>,
    /// Start of the current rate window: (time, bytes done then).
    window: Option<(Duration, u64)>,
}

impl Track {
    fn enter(&mut self, stage: CardStage, now: Duration) {
        if self.card.stage != stage {
            self.card.stage = stage;
            self.card.stage_since_ms = ms(now);
        }
    }

    fn update_done(&mut self, now: Duration) {
        let per_artifact: u64 = self.artifacts.iter().map(|(_, d)| *d).sum();
        let done = self.overall_done.max(per_artifact);
        self.card.done_bytes = done;
        match self.window {
            None => self.window = Some((now, done)),
            Some((t0, d0)) if now >= t0 + RATE_WINDOW => {
                let dt = (now - t0).as_secs_f64();
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let rate = (done.saturating_sub(d0) as f64 / dt) as u64;
                self.card.rate_bps = rate;
                self.window = Some((now, done));
            }
            Some(_) => {}
        }
    }
}

/// The records of every card heard in this run.
#[derive(Debug, Default)]
pub struct Cards {
    tracks: HashMap<MacAddr, Track>,
    /// Cards left out because [`MAX_CARDS`] were tracked already.
    pub untracked: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Cards {
    /// The record of `mac`, made on first sight (None when full).
    fn track(&mut self, mac: MacAddr, now: Duration) -> Option<&mut Track> {
        if !self.tracks.contains_key(&mac) {
            if self.tracks.len() >= MAX_CARDS {
                self.untracked += 1;
                return None;
            }
            let t = Track {
                card: CardStats {
                    mac,
                    stage_since_ms: ms(now),
                    ..CardStats::default()
                },
                ..Track::default()
            };
            self.tracks.insert(mac, t);
        }
        let t = self.tracks.get_mut(&mac)?;
        t.card.last_seen_ms = ms(now);
        t.card.absent = false;
        Some(t)
    }

    /// `mac` was not heard for the absence interval.
    pub fn absent(&mut self, mac: &MacAddr) {
        if let Some(t) = self.tracks.get_mut(mac) {
            t.card.absent = true;
        }
    }

    /// `mac`'s resident agent reports `health` (an Alive, also a frame heard).
    pub fn health(&mut self, mac: MacAddr, health: &str, now: Duration) {
        if let Some(t) = self.track(mac, now)
            && t.card.health.as_deref() != Some(health)
        {
            t.card.health = Some(health.to_owned());
        }
    }

    /// True if no more cards can be tracked.
    pub fn is_full(&self) -> bool {
        self.tracks.len() >= MAX_CARDS
    }

    /// True if `mac` has a record.
    pub fn knows(&self, mac: &MacAddr) -> bool {
        self.tracks.contains_key(mac)
    }

    /// Any frame of `mac` (keeps its last-seen time).
    pub fn seen(&mut self, mac: MacAddr, now: Duration) {
        let _ = self.track(mac, now);
    }

    /// Fills in where a card sits (from a Solicit, or the node database for a card that
    /// resumes without soliciting after a master restart).
    pub fn identify(
        &mut self,
        mac: MacAddr,
        shelf: u32,
        slot: u32,
        card_type: &str,
        now: Duration,
    ) {
        if let Some(t) = self.track(mac, now) {
            t.card.shelf = shelf;
            t.card.slot = slot;
            if t.card.card_type != card_type {
                t.card.card_type = card_type.to_owned();
            }
        }
    }

    /// A new Solicit: the card starts a boot; its bytes of the last one are forgotten.
    pub fn solicited(&mut self, mac: MacAddr, now: Duration) {
        if let Some(t) = self.track(mac, now) {
            if t.card.stage == CardStage::Soliciting {
                return;
            }
            t.enter(CardStage::Soliciting, now);
            t.overall_done = 0;
            t.artifacts.clear();
            t.window = None;
            t.card.done_bytes = 0;
            t.card.total_bytes = 0;
            t.card.rate_bps = 0;
        }
    }

    /// The plan went out: `plan_bytes` is the whole set, `fetch_bytes` what the card
    /// lacks of it (0 for verdict Continue).
    pub fn planned(&mut self, mac: MacAddr, plan_bytes: u64, fetch_bytes: u64, now: Duration) {
        if let Some(t) = self.track(mac, now) {
            t.card.plan_bytes = plan_bytes;
            t.card.total_bytes = fetch_bytes;
            let stage = if fetch_bytes == 0 {
                CardStage::Validating
            } else {
                CardStage::Fetching
            };
            t.enter(stage, now);
        }
    }

    /// A Progress of the card: overall (no artifact) or of one artifact.
    pub fn progress(&mut self, mac: MacAddr, p: &Progress, now: Duration) {
        let Some(t) = self.track(mac, now) else {
            return;
        };
        match p.artifact {
            None => {
                // A Committing report carries no bytes.
                if p.stage != Stage::Committing {
                    t.overall_done = p.done;
                    t.card.total_bytes = p.total;
                }
            }
            Some(a) => {
                let full = t.artifacts.len() >= MAX_ARTIFACTS;
                match t.artifacts.iter_mut().find(|(d, _)| *d == a) {
                    Some((_, done)) => *done = (*done).max(p.done),
                    None if !full => t.artifacts.push((a, p.done)),
                    None => {}
                }
            }
        }
        let stage = match p.stage {
            Stage::Fetching => CardStage::Fetching,
            Stage::Verifying => CardStage::Verifying,
            Stage::Writing => CardStage::Writing,
            Stage::Committing => CardStage::Committing,
        };
        // The card's stage is what its overall reports say; a report of one artifact
        // (each ends with a Verifying one) only moves a card that had not started into
        // fetching, so that the time in stage is the time of the whole fetch.
        if p.artifact.is_none()
            || !matches!(
                t.card.stage,
                CardStage::Fetching | CardStage::Verifying | CardStage::Writing
            )
        {
            let stage = if p.artifact.is_some() {
                CardStage::Fetching
            } else {
                stage
            };
            t.enter(stage, now);
        }
        t.update_done(now);
    }

    /// The card is Ready (`persisted`: committed to flash; else a set in RAM).
    pub fn ready(&mut self, mac: MacAddr, persisted: bool, now: Duration) {
        if let Some(t) = self.track(mac, now) {
            t.enter(
                if persisted {
                    CardStage::Ready
                } else {
                    CardStage::Ram
                },
                now,
            );
            t.card.rate_bps = 0;
            t.window = None;
            t.card.error = None;
        }
    }

    /// The card failed (`unknown`: it has no plan), with the reason.
    pub fn failed(&mut self, mac: MacAddr, unknown: bool, reason: &str, now: Duration) {
        if let Some(t) = self.track(mac, now) {
            let stage = if unknown {
                CardStage::Unknown
            } else {
                CardStage::Failed
            };
            t.enter(stage, now);
            t.card.rate_bps = 0;
            t.window = None;
            let mut text = reason.to_owned();
            if text.len() > MAX_ERROR_LEN {
                let mut cut = MAX_ERROR_LEN;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            t.card.error = Some(text);
        }
    }

    /// Every record, by shelf, slot, MAC.
    pub fn snapshot(&self) -> Vec<CardStats> {
        let mut v: Vec<CardStats> = self.tracks.values().map(|t| t.card.clone()).collect();
        v.sort_by_key(|c| (c.shelf, c.slot, c.mac));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

    fn p(stage: Stage, artifact: Option<u8>, done: u64, total: u64) -> Progress {
        Progress {
            stage,
            artifact: artifact.map(|b| Digest([b; 32])),
            done,
            total,
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_burn_counts_bytes_rate_and_stages() {
        let mut c = Cards::default();
        c.identify(A, 1, 3, "lc100", s(0));
        c.solicited(A, s(0));
        c.planned(A, 3000, 3000, s(1));
        let card = &c.snapshot()[0];
        assert_eq!(
            (card.stage, card.stage_since_ms),
            (CardStage::Fetching, 1000)
        );
        assert_eq!((card.slot, card.card_type.as_str()), (3, "lc100"));
        c.progress(A, &p(Stage::Fetching, Some(1), 500, 1000), s(2));
        c.progress(A, &p(Stage::Fetching, Some(1), 1000, 1000), s(3));
        assert_eq!(c.snapshot()[0].rate_bps, 500, "500 bytes in one second");
        c.progress(A, &p(Stage::Verifying, Some(1), 1000, 1000), s(3));
        let card = &c.snapshot()[0];
        assert_eq!(
            (card.stage, card.stage_since_ms),
            (CardStage::Fetching, 1000),
            "one artifact verified: the card still fetches its plan"
        );
        c.progress(A, &p(Stage::Fetching, Some(2), 2000, 2000), s(4));
        // An overall report behind the per-artifact ones does not take bytes back.
        c.progress(A, &p(Stage::Fetching, None, 1500, 3000), s(4));
        let card = &c.snapshot()[0];
        assert_eq!((card.done_bytes, card.total_bytes), (3000, 3000));
        assert_eq!(card.percent(), Some(100));
        assert_eq!(card.stage, CardStage::Fetching);
        c.progress(A, &p(Stage::Committing, None, 0, 0), s(5));
        assert_eq!(
            c.snapshot()[0].total_bytes,
            3000,
            "Committing carries no bytes"
        );
        c.ready(A, true, s(6));
        let card = &c.snapshot()[0];
        assert_eq!(
            (card.stage, card.rate_bps, card.done_bytes),
            (CardStage::Ready, 0, 3000)
        );
        // The next boot starts from zero.
        c.solicited(A, s(9));
        let card = &c.snapshot()[0];
        assert_eq!(
            (card.stage, card.done_bytes, card.stage_since_ms),
            (CardStage::Soliciting, 0, 9000)
        );
    }

    #[test]
    fn errors_are_kept_short_and_cleared_by_ready() {
        let mut c = Cards::default();
        c.failed(A, false, &"x".repeat(1000), s(1));
        let card = &c.snapshot()[0];
        assert_eq!(card.stage, CardStage::Failed);
        assert_eq!(card.error.as_ref().map(String::len), Some(MAX_ERROR_LEN));
        c.failed(A, true, "no plan", s(2));
        assert_eq!(c.snapshot()[0].stage, CardStage::Unknown);
        c.ready(A, false, s(3));
        let card = &c.snapshot()[0];
        assert_eq!((card.stage, card.error.clone()), (CardStage::Ram, None));
        c.planned(A, 100, 0, s(4));
        assert_eq!(c.snapshot()[0].stage, CardStage::Validating);
    }

    #[test]
    fn records_are_bounded() {
        let mut c = Cards::default();
        for i in 0..(MAX_CARDS + 5) {
            let b = u32::try_from(i).unwrap().to_be_bytes();
            c.seen(MacAddr([2, 0, b[0], b[1], b[2], b[3]]), s(0));
        }
        assert_eq!(c.snapshot().len(), MAX_CARDS);
        assert_eq!(c.untracked, 5);
        for i in 0..(MAX_ARTIFACTS + 5) {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let pr = Progress {
                stage: Stage::Fetching,
                artifact: Some(Digest(d)),
                done: 1,
                total: 1,
            };
            c.progress(A, &pr, s(1));
        }
        // A is not tracked (the table is full); a tracked card stops at MAX_ARTIFACTS.
        let first = c.snapshot()[0].mac;
        for i in 0..(MAX_ARTIFACTS + 5) {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let pr = Progress {
                stage: Stage::Fetching,
                artifact: Some(Digest(d)),
                done: 1,
                total: 1,
            };
            c.progress(first, &pr, s(1));
        }
        let card = c.snapshot().into_iter().find(|x| x.mac == first).unwrap();
        assert_eq!(card.done_bytes, MAX_ARTIFACTS as u64);
    }
}
