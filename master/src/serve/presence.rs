//! Which cards are on the backplane, and what their resident agents last reported: the
//! service's side of presence and health. One record per card (at most [`MAX_CARDS`]).
//!
//! - A card is *heard* at any frame it sends (Solicit, Progress, Alive, ...).
//! - A card the node database records present and that is not heard for the absence
//!   interval becomes *absent*. Aged are the cards heard since the service started and
//!   the cards the database recorded present when it started: those count as heard at the
//!   start, so a just-started master gives every card one whole interval to speak before
//!   it marks it absent. A card recorded absent is not aged again.
//! - An absent card heard again is *present again*.
//! - The absence check runs at most once per [`CHECK_EVERY`] and looks only at the cards
//!   heard longest ago (kept in order), marking at most [`MAX_ABSENT_PER_CHECK`] at a time.
//! - An agent's report (Alive) is to be written when it differs from the one last written
//!   or read (health, running set, rolled-back set, text); a changed count of dropped
//!   commands alone at most once per [`DROPPED_REFRESH`]. Cards send one every few
//!   seconds; an unchanged one costs no write.
//! - Cards the node database does not know (a card that has not solicited yet) are heard
//!   but nothing is written for them.
//!
//! This module decides; it writes nothing (the service writes what it is told) and reads no
//! clock: time is the service's monotonic time since it started, passed in.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use shelfboot_proto::frame::MacAddr;

use crate::store::{NodeHealth, NodeRecord};

/// Cards kept at most (as the card view, [`super::cards::MAX_CARDS`]); one beyond it is
/// served as usual but not aged.
pub const MAX_CARDS: usize = super::cards::MAX_CARDS;
/// The absence check runs at most this often.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Cards marked absent per check at most (the rest at the next check).
pub const MAX_ABSENT_PER_CHECK: usize = 256;
/// A report that differs from the written one only in its count of dropped commands is
/// written at most this often per card.
pub const DROPPED_REFRESH: Duration = Duration::from_secs(60);

/// What hearing a card means for the node database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Nothing to write.
    Present,
    /// It was recorded absent: record it present again.
    Returned,
    /// First sight of a card the database did not hold at the last read: look it up and
    /// call [`Presence::identify`].
    New,
}

/// One card.
#[derive(Debug)]
struct Seen {
    /// When it was last heard (none: not since the service started).
    heard: Option<Duration>,
    /// What the absence check counts from: the last hearing, or when the database said
    /// it was present.
    since: Duration,
    /// The node database holds it.
    registered: bool,
    /// Present, as the node database records it (as written or read).
    present: bool,
    /// The agent's report as the node database holds it, and when it was written.
    report: Option<NodeHealth>,
    written: Duration,
}

/// The presence and reports of every card. See the module docs.
#[derive(Debug)]
pub struct Presence {
    absence: Duration,
    cards: HashMap<MacAddr, Seen>,
    /// Registered cards recorded present, by `since`, oldest first.
    aging: BTreeSet<(Duration, MacAddr)>,
    /// The node database must be read before the next use (at the start, and after a
    /// batch of writes was lost).
    stale: bool,
    next_check: Duration,
}

impl Presence {
    /// Cards not heard for `absence` become absent.
    pub fn new(absence: Duration) -> Self {
        Self {
            absence,
            cards: HashMap::new(),
            aging: BTreeSet::new(),
            stale: true,
            next_check: Duration::ZERO,
        }
    }

    /// The absence interval.
    pub fn absence(&self) -> Duration {
        self.absence
    }

    /// True if [`Presence::load`] is due.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// What the node database says of every card, read at `now`: whether it is present
    /// and its last report. A card recorded present and not heard yet counts as heard
    /// now; a card no longer in the list is not written for.
    pub fn load(&mut self, nodes: &[NodeRecord], now: Duration) {
        self.stale = false;
        for s in self.cards.values_mut() {
            s.registered = false;
        }
        for n in nodes {
            let mac = n.identity.mac;
            if !self.cards.contains_key(&mac) && self.cards.len() >= MAX_CARDS {
                continue;
            }
            let s = self.cards.entry(mac).or_insert(Seen {
                heard: None,
                since: now,
                registered: true,
                present: false,
                report: None,
                written: now,
            });
            s.registered = true;
            s.present = n.present;
            s.report.clone_from(&n.health);
        }
        self.aging = self
            .cards
            .iter()
            .filter(|(_, s)| s.registered && s.present)
            .map(|(mac, s)| (s.since, *mac))
            .collect();
    }

    /// Forgets what was written: the node database is read again before the next use (a
    /// batch of writes was lost).
    pub fn forget_written(&mut self) {
        self.stale = true;
    }

    /// Cards the node database did not know are looked up again at their next frame (an
    /// operator may have registered them).
    pub fn forget_unregistered(&mut self) {
        self.cards.retain(|_, s| s.registered);
    }

    /// The lookup of a card met for the first time failed: it is looked up again at its
    /// next frame.
    pub fn forget_new(&mut self, mac: &MacAddr) {
        if self.cards.get(mac).is_some_and(|s| !s.registered) {
            self.cards.remove(mac);
        }
    }

    /// Any frame of `mac` at `now`.
    pub fn heard(&mut self, mac: MacAddr, now: Duration) -> Heard {
        let Some(s) = self.cards.get_mut(&mac) else {
            if self.cards.len() >= MAX_CARDS {
                return Heard::Present;
            }
            self.cards.insert(
                mac,
                Seen {
                    heard: Some(now),
                    since: now,
                    registered: false,
                    present: false,
                    report: None,
                    written: now,
                },
            );
            return Heard::New;
        };
        let before = s.since;
        s.heard = Some(now);
        s.since = now;
        if !s.registered {
            return Heard::Present;
        }
        if s.present {
            self.aging.remove(&(before, mac));
            self.aging.insert((now, mac));
            return Heard::Present;
        }
        s.present = true;
        self.aging.insert((now, mac));
        Heard::Returned
    }

    /// The database's record of a card met for the first time ([`Heard::New`]): `None`
    /// if it does not hold it. Returns what hearing it means.
    pub fn identify(&mut self, mac: MacAddr, node: Option<&NodeRecord>, now: Duration) -> Heard {
        let Some(n) = node else {
            return Heard::Present;
        };
        if let Some(s) = self.cards.get_mut(&mac) {
            s.registered = true;
            s.present = n.present;
            s.report.clone_from(&n.health);
        }
        self.heard(mac, now)
    }

    /// A Solicit registered the card (which records it present).
    pub fn registered(&mut self, mac: MacAddr, now: Duration) {
        if let Some(s) = self.cards.get_mut(&mac) {
            if s.registered && s.present {
                return;
            }
            s.registered = true;
            s.present = true;
            self.aging.remove(&(s.since, mac));
            s.since = now;
            self.aging.insert((now, mac));
        }
    }

    /// Whether the agent's report `r` of `mac` is to be written.
    pub fn report_due(&self, mac: &MacAddr, r: &NodeHealth, now: Duration) -> bool {
        let Some(s) = self.cards.get(mac).filter(|s| s.registered) else {
            return false;
        };
        match &s.report {
            None => true,
            Some(w) if w == r => false,
            Some(w) => {
                let same_but_dropped = w.health == r.health
                    && w.running == r.running
                    && w.rolled_back_from == r.rolled_back_from
                    && w.detail == r.detail;
                !same_but_dropped || now.saturating_sub(s.written) >= DROPPED_REFRESH
            }
        }
    }

    /// The report `r` of `mac` was written.
    pub fn reported(&mut self, mac: &MacAddr, r: &NodeHealth, now: Duration) {
        if let Some(s) = self.cards.get_mut(mac) {
            s.report = Some(r.clone());
            s.written = now;
        }
    }

    /// The cards that have become absent at `now`, with how long each was not heard;
    /// they are recorded absent here. Empty until [`CHECK_EVERY`] after the last check.
    pub fn expired(&mut self, now: Duration) -> Vec<(MacAddr, Duration)> {
        if now < self.next_check || self.stale {
            return Vec::new();
        }
        self.next_check = now + CHECK_EVERY;
        let mut gone = Vec::new();
        while gone.len() < MAX_ABSENT_PER_CHECK {
            let Some(&(since, mac)) = self.aging.first() else {
                break;
            };
            if since + self.absence > now {
                break;
            }
            self.aging.pop_first();
            if let Some(s) = self.cards.get_mut(&mac) {
                s.present = false;
            }
            gone.push((mac, now.saturating_sub(since)));
        }
        gone
    }

    /// Every card heard since the service started, with how long ago (whole seconds).
    pub fn heard_ago(&self, now: Duration) -> impl Iterator<Item = (MacAddr, u64)> + '_ {
        self.cards
            .iter()
            .filter_map(move |(mac, s)| s.heard.map(|h| (*mac, now.saturating_sub(h).as_secs())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Health, NodeIdentity, NodeState};

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn node(mac: MacAddr, present: bool) -> NodeRecord {
        NodeRecord {
            identity: NodeIdentity {
                mac,
                card_type: "lc100".into(),
                arch: shelfboot_proto::id::Arch::X86_64,
                shelf: 1,
                slot: 1,
                hw_rev: "A".into(),
                features: vec![],
            },
            class: None,
            present,
            last_seen: Some(1),
            state: NodeState::Ready,
            state_reason: None,
            inventory: None,
            test_mode: None,
            registered_at: 1,
            health: None,
        }
    }

    #[test]
    fn the_absence_check_takes_the_oldest_only_and_at_most_a_bounded_number() {
        let mut p = Presence::new(s(10));
        let many: Vec<NodeRecord> = (0..(MAX_ABSENT_PER_CHECK + 10))
            .map(|i| {
                let b = u16::try_from(i).unwrap().to_be_bytes();
                node(MacAddr([2, 0, 0, 0, b[0], b[1]]), true)
            })
            .collect();
        p.load(&many, s(0));
        assert!(p.expired(s(9)).is_empty());
        let first = p.expired(s(11));
        assert_eq!(first.len(), MAX_ABSENT_PER_CHECK);
        assert!(first.iter().all(|(_, d)| *d == s(11)));
        assert!(
            p.expired(s(11) + Duration::from_millis(500)).is_empty(),
            "checked at most once a second"
        );
        assert_eq!(p.expired(s(12)).len(), 10, "the rest at the next check");
        assert!(
            p.expired(s(13)).is_empty(),
            "absent cards are not aged again"
        );
    }

    #[test]
    fn a_card_heard_is_aged_from_its_last_frame_and_returns() {
        let mut p = Presence::new(s(10));
        p.load(&[node(A, true), node(B, false)], s(0));
        assert_eq!(p.heard(A, s(5)), Heard::Present);
        assert_eq!(p.expired(s(11)), vec![], "heard 6 s ago");
        assert_eq!(p.expired(s(15)), vec![(A, s(10))]);
        assert_eq!(p.heard(A, s(20)), Heard::Returned);
        assert_eq!(p.heard(A, s(21)), Heard::Present);
        assert_eq!(p.heard(B, s(21)), Heard::Returned, "absent in the database");
        let ago: std::collections::BTreeMap<_, _> = p.heard_ago(s(23)).collect();
        assert_eq!(ago.get(&A), Some(&2));
    }

    #[test]
    fn unknown_cards_are_heard_but_not_aged_until_registered() {
        let mut p = Presence::new(s(10));
        p.load(&[], s(0));
        assert_eq!(p.heard(A, s(1)), Heard::New);
        assert_eq!(p.identify(A, None, s(1)), Heard::Present);
        let r = NodeHealth {
            health: Health::Healthy,
            running: None,
            rolled_back_from: None,
            dropped: 0,
            detail: String::new(),
        };
        assert!(!p.report_due(&A, &r, s(1)), "nothing is written for it");
        assert!(p.expired(s(30)).is_empty());
        p.registered(A, s(31));
        assert!(p.report_due(&A, &r, s(31)));
        assert_eq!(p.expired(s(41)), vec![(A, s(10))]);
    }

    #[test]
    fn a_report_is_due_on_change_and_a_dropped_count_alone_rarely() {
        let mut p = Presence::new(s(10));
        p.load(&[node(A, true)], s(0));
        let mut r = NodeHealth {
            health: Health::Checking,
            running: None,
            rolled_back_from: None,
            dropped: 0,
            detail: String::new(),
        };
        assert!(p.report_due(&A, &r, s(1)));
        p.reported(&A, &r, s(1));
        assert!(!p.report_due(&A, &r, s(2)));
        r.dropped = 1;
        assert!(!p.report_due(&A, &r, s(3)));
        assert!(p.report_due(&A, &r, s(1) + DROPPED_REFRESH));
        r.health = Health::Healthy;
        assert!(p.report_due(&A, &r, s(4)));
    }
}
