//! The simulation's event loop: admits cards, moves frames through the simulated
//! backplane, drives senders and receivers, starts catch-up sessions, and builds the
//! report. Types and construction are in the parent module.

use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use shelfboot_proto::data::DataView;
use shelfboot_proto::frame::Frame;
use shelfboot_proto::msg::{Join, Message};

use super::{Card, CardReport, Disturbance, Session, Sim, SimError, SimReport, SimSink};
use crate::receiver::{DataOutcome, Receiver, ReceiverState, Resume};
use crate::sender::{Admission, SendStep, Sender, SenderEvent, SenderStats};

/// Far future, for "no wake-up needed".
const NEVER: Duration = Duration::from_secs(u64::MAX / 4);

impl Sim {
    /// Runs until every card completed (or was given up), or a limit is hit.
    pub fn run(mut self) -> Result<SimReport, SimError> {
        let mut now = Duration::ZERO;
        let mut steps = 0u64;
        loop {
            steps += 1;
            self.apply_script(now)?;
            self.admit_waiting(now)?;
            self.deliver_data(now)?;
            self.deliver_control(now);
            self.sender_events();
            self.admit_waiting(now)?;
            self.poll_cards(now);
            self.poll_sessions(now)?;
            self.sender_events();
            if self.settled() || steps >= self.cfg.max_steps || now >= self.cfg.max_time {
                break;
            }
            match self.next_time() {
                Some(t) => now = t.max(now),
                None => break,
            }
        }
        Ok(self.report(now, steps))
    }

    fn apply_script(&mut self, now: Duration) -> Result<(), SimError> {
        while self.script.first().is_some_and(|(t, _)| *t <= now) {
            let (_, what) = self.script.remove(0);
            match what {
                Disturbance::Mute(i) => self.cards[i].muted = true,
                Disturbance::Unmute(i) => {
                    self.cards[i].muted = false;
                    self.cards[i].wake = now;
                }
                Disturbance::Restart { card, down } => {
                    let c = &mut self.cards[card];
                    if let Some(rx) = c.rx.take() {
                        c.high_water = c.high_water.max(rx.stats().buffered_high_water);
                        let sink = rx.into_sink();
                        if matches!(sink, SimSink::Count(_)) {
                            return Err(SimError::RestartWithoutBytes { card });
                        }
                        c.parked_sink = Some(sink);
                    }
                    c.session = None;
                    c.ring.clear();
                    c.ring_bytes = 0;
                    c.down_until = Some(now + down);
                    c.waiting = false;
                }
                Disturbance::MasterRestart { down } => {
                    for s in &mut self.sessions {
                        s.done = true;
                    }
                    self.data.clear();
                    self.control.clear();
                    self.master_down_until = Some(now + down);
                    for c in &mut self.cards {
                        if c.session.take().is_some() {
                            // It notices the stall and asks the new master from where it is.
                            c.waiting = true;
                        }
                    }
                }
            }
        }
        if self.master_down_until.is_some_and(|t| t <= now) {
            self.master_down_until = None;
        }
        for c in &mut self.cards {
            if c.down_until.is_some_and(|t| t <= now) {
                c.down_until = None;
                c.waiting = true;
            }
            if !c.joined && c.spec.start_at <= now {
                c.joined = true;
                c.waiting = true;
            }
        }
        Ok(())
    }

    fn card_can_fetch(&self, i: usize) -> bool {
        let c = &self.cards[i];
        c.waiting
            && !c.muted
            && c.down_until.is_none()
            && c.completed_at.is_none()
            && c.sessions < self.cfg.max_sessions_per_card
    }

    /// Admits every card that has a Fetch outstanding: into the newest open session if it
    /// takes it, else into one new (catch-up) session started for all of them.
    fn admit_waiting(&mut self, now: Duration) -> Result<(), SimError> {
        if self.master_down_until.is_some() {
            return Ok(());
        }
        let mut created = false;
        for i in 0..self.cards.len() {
            if !self.card_can_fetch(i) {
                continue;
            }
            let have = self.have_slices(i);
            let mac = self.cards[i].mac;
            let mut admitted = None;
            if let Some(s) = self.sessions.iter().rposition(|s| !s.done)
                && let Admission::Joined(join) = self.sessions[s].tx.join(mac, have, now)
            {
                admitted = Some((s, join));
            }
            if admitted.is_none() && !created {
                created = true;
                self.new_session(now)?;
                let s = self.sessions.len() - 1;
                if let Admission::Joined(join) = self.sessions[s].tx.join(mac, have, now) {
                    admitted = Some((s, join));
                }
            }
            if let Some((s, join)) = admitted {
                self.attach(i, s, &join, now)?;
            }
        }
        Ok(())
    }

    fn new_session(&mut self, now: Duration) -> Result<(), SimError> {
        let transfer = u32::try_from(self.sessions.len() + 1).unwrap_or(u32::MAX);
        let tx = Sender::new(
            self.cfg.sender.clone(),
            transfer,
            self.info.clone(),
            self.source.clone(),
            now,
        )
        .map_err(|source| SimError::Sender { transfer, source })?;
        self.sessions.push(Session {
            tx,
            wake: now,
            done: false,
        });
        Ok(())
    }

    fn have_slices(&self, i: usize) -> u32 {
        let c = &self.cards[i];
        let delivered = match (&c.rx, &c.parked_sink) {
            (Some(rx), _) => rx.delivered(),
            (None, Some(SimSink::Keep(v))) => v.len() as u64,
            (None, Some(SimSink::Count(n))) => *n,
            (None, None) => 0,
        };
        Resume::new(delivered, Sha256::new())
            .have_slices(self.info.size, self.cfg.sender.block_size)
    }

    /// Hands card `i` the Join of session `s`.
    fn attach(&mut self, i: usize, s: usize, join: &Join, now: Duration) -> Result<(), SimError> {
        let card_err = |source| SimError::Receiver { card: i, source };
        let c = &mut self.cards[i];
        c.waiting = false;
        c.session = Some(s);
        c.sessions += 1;
        c.wake = now;
        match &mut c.rx {
            Some(rx) => rx.set_session(join, now).map_err(card_err)?,
            None => {
                let sink = c.parked_sink.take().unwrap_or(SimSink::Count(0));
                let resume = match &sink {
                    SimSink::Keep(v) => Resume::new(v.len() as u64, Sha256::new_with_prefix(v)),
                    SimSink::Count(_) => Resume::fresh(),
                };
                let rx = Receiver::new(
                    self.cfg.receiver.clone(),
                    self.info.clone(),
                    join,
                    resume,
                    sink,
                    now,
                )
                .map_err(card_err)?;
                c.rx = Some(rx);
            }
        }
        if c.rx
            .as_ref()
            .is_some_and(|rx| rx.state() == ReceiverState::Complete)
        {
            c.completed_at.get_or_insert(now);
        }
        Ok(())
    }

    fn deliver_data(&mut self, now: Duration) -> Result<(), SimError> {
        let ethertype = self.cfg.sender.link.ethertype;
        while self.data.front().is_some_and(|(t, _, _)| *t <= now) {
            let Some((_, s, frame)) = self.data.pop_front() else {
                break;
            };
            for (i, c) in self.cards.iter_mut().enumerate() {
                if c.session != Some(s) || c.muted || c.down_until.is_some() || c.rx.is_none() {
                    continue;
                }
                if self.rng.chance(c.spec.loss) {
                    continue;
                }
                if let Some(cap) = c.spec.capacity {
                    let len = frame.len() as u64;
                    if let Some(ring) = c.spec.ring {
                        // Queued in the ring, taken in at `cap` by `drain_rings`.
                        if c.ring_bytes + len > ring {
                            c.ring_drops += 1;
                        } else {
                            c.ring_bytes += len;
                            c.ring_high_water = c.ring_high_water.max(c.ring_bytes);
                            c.ring.push_back(frame.clone());
                        }
                        continue;
                    }
                    refill(c, cap, now);
                    if c.budget < frame.len() as f64 {
                        continue;
                    }
                    c.budget -= frame.len() as f64;
                }
                take_in(c, i, &frame, ethertype, now, &mut self.receiver_cpu)?;
            }
        }
        self.drain_rings(now)
    }

    /// Cards with a receive ring take in what their capacity allows by `now`.
    fn drain_rings(&mut self, now: Duration) -> Result<(), SimError> {
        let ethertype = self.cfg.sender.link.ethertype;
        for (i, c) in self.cards.iter_mut().enumerate() {
            if c.ring.is_empty() || c.muted || c.down_until.is_some() {
                continue;
            }
            refill(c, c.spec.capacity.unwrap_or(u64::MAX), now);
            while let Some(len) = c.ring.front().map(Vec::len) {
                if c.budget < len as f64 {
                    break;
                }
                c.budget -= len as f64;
                c.ring_bytes -= len as u64;
                if let Some(frame) = c.ring.pop_front() {
                    take_in(c, i, &frame, ethertype, now, &mut self.receiver_cpu)?;
                }
            }
        }
        Ok(())
    }

    fn deliver_control(&mut self, now: Duration) {
        while self.control.front().is_some_and(|(t, _, _)| *t <= now) {
            let Some((_, i, msg)) = self.control.pop_front() else {
                break;
            };
            let mac = self.cards[i].mac;
            // The master routes by the card's MAC to the session it is in.
            let Some(s) = self.cards[i].session else {
                continue;
            };
            let tx = &mut self.sessions[s].tx;
            let t0 = Instant::now();
            match &msg {
                Message::Nack(n) => {
                    tx.handle_nack(mac, n, now);
                }
                Message::Progress(p) => {
                    tx.handle_progress(mac, p, now);
                }
                _ => {}
            }
            self.sender_cpu += t0.elapsed();
        }
    }

    fn sender_events(&mut self) {
        for s in 0..self.sessions.len() {
            while let Some(ev) = self.sessions[s].tx.next_event() {
                match ev {
                    SenderEvent::Dropped { member, .. } => {
                        if let Some(c) = self.cards.iter_mut().find(|c| c.mac == member)
                            && c.session == Some(s)
                        {
                            c.waiting = true;
                            c.session = None;
                        }
                    }
                    SenderEvent::Finished => self.sessions[s].done = true,
                    SenderEvent::Completed { .. } => {}
                }
            }
        }
    }

    fn poll_cards(&mut self, now: Duration) {
        let mut msgs = Vec::new();
        for (i, c) in self.cards.iter_mut().enumerate() {
            if c.muted || c.down_until.is_some() || !(c.poll_now || c.wake <= now) {
                continue;
            }
            let Some(rx) = c.rx.as_mut() else { continue };
            let t0 = Instant::now();
            // Like the card agent (card/src/agent/fetch.rs), a timer wakes the receiver at
            // most once per millisecond: once `idle_nack` has passed without data (a first
            // pass held back by flow control) the receiver asks for `now + 1 µs`, which
            // would otherwise step the simulation by microseconds.
            c.wake = rx
                .poll(now, &mut msgs)
                .map_or(NEVER, |t| t.max(now + Duration::from_millis(1)));
            self.receiver_cpu += t0.elapsed();
            c.poll_now = false;
            for m in msgs.drain(..) {
                if !self.rng.chance(self.cfg.control_loss) {
                    self.control.push_back((now + self.cfg.latency, i, m));
                }
            }
        }
    }

    fn poll_sessions(&mut self, now: Duration) -> Result<(), SimError> {
        for (s, session) in self.sessions.iter_mut().enumerate() {
            if session.done {
                continue;
            }
            loop {
                let t0 = Instant::now();
                let step = session.tx.poll(now, &mut self.buf);
                self.sender_cpu += t0.elapsed();
                let step = step.map_err(|source| SimError::Sender {
                    transfer: session.tx.transfer(),
                    source,
                })?;
                match step {
                    SendStep::Frame { len, .. } => {
                        let frame = self.buf[..len].to_vec();
                        self.data.push_back((now + self.cfg.latency, s, frame));
                    }
                    SendStep::Wait { until } => {
                        session.wake = until;
                        break;
                    }
                    SendStep::Done => {
                        session.done = true;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every card completed, or is given up (out of sessions while waiting).
    fn settled(&self) -> bool {
        self.cards.iter().all(|c| {
            c.completed_at.is_some() || (c.waiting && c.sessions >= self.cfg.max_sessions_per_card)
        }) && self.control.is_empty()
    }

    fn next_time(&self) -> Option<Duration> {
        let cards = self.cards.iter().flat_map(|c| {
            let active = c.rx.is_some() && !c.muted && c.down_until.is_none();
            [
                active.then_some(c.wake),
                active.then(|| ring_ready(c)).flatten(),
                (!c.joined).then_some(c.spec.start_at),
                c.down_until,
            ]
        });
        let sessions = self
            .sessions
            .iter()
            .filter(|s| !s.done)
            .map(|s| Some(s.wake));
        [
            self.data.front().map(|d| d.0),
            self.control.front().map(|d| d.0),
            self.script.first().map(|d| d.0),
            self.master_down_until,
        ]
        .into_iter()
        .chain(cards)
        .chain(sessions)
        .flatten()
        .filter(|t| *t < NEVER)
        .min()
    }

    fn report(self, now: Duration, steps: u64) -> SimReport {
        let mut sender = SenderStats::default();
        for s in &self.sessions {
            let st = s.tx.stats();
            sender.frames += st.frames;
            sender.wire_bytes += st.wire_bytes;
            sender.data_bytes += st.data_bytes;
            sender.retransmit_bytes += st.retransmit_bytes;
            sender.retransmit_frames += st.retransmit_frames;
            sender.nacks += st.nacks;
            sender.nacked_blocks += st.nacked_blocks;
            sender.holdoff_suppressed += st.holdoff_suppressed;
            sender.ignored_control += st.ignored_control;
            sender.repair_queue_high_water = sender
                .repair_queue_high_water
                .max(st.repair_queue_high_water);
            sender.rate_decreases += st.rate_decreases;
            sender.flow_stops += st.flow_stops;
            sender.flow_blocked += st.flow_blocked;
        }
        let first_session = self
            .sessions
            .first()
            .map(|s| s.tx.stats())
            .unwrap_or_default();
        let cards: Vec<CardReport> = self
            .cards
            .into_iter()
            .map(|c| {
                let stats = c.rx.as_ref().map(|rx| rx.stats()).unwrap_or_default();
                let complete =
                    c.rx.as_ref()
                        .is_some_and(|rx| rx.state() == ReceiverState::Complete);
                CardReport {
                    complete,
                    completed_at: c.completed_at,
                    delivered: c.rx.as_ref().map_or(0, |rx| rx.delivered()),
                    sessions: c.sessions,
                    buffered_high_water: c.high_water.max(stats.buffered_high_water),
                    ring_drops: c.ring_drops,
                    ring_high_water: c.ring_high_water,
                    stats,
                    sink: c.rx.map(|rx| rx.into_sink()).or(c.parked_sink),
                }
            })
            .collect();
        SimReport {
            all_complete: cards.iter().all(|c| c.complete),
            sim_time: now,
            steps,
            sessions: u32::try_from(self.sessions.len()).unwrap_or(u32::MAX),
            sender,
            first_session,
            cards,
            sender_cpu: self.sender_cpu,
            receiver_cpu: self.receiver_cpu,
        }
    }
}

/// Adds the capacity credit a card gained since it was last refilled (at most 64 KiB).
fn refill(c: &mut Card, cap: u64, now: Duration) {
    let dt = now.saturating_sub(c.budget_at).as_secs_f64();
    c.budget = (c.budget + dt * cap as f64).min(65536.0);
    c.budget_at = now;
}

/// When card `c` can take in the head of its ring (`None`: empty ring or no capacity).
fn ring_ready(c: &Card) -> Option<Duration> {
    let len = c.ring.front()?.len() as f64;
    let cap = c.spec.capacity? as f64;
    let need = (len - c.budget).max(0.0);
    // One nanosecond late, so that float rounding never leaves it a hair short then.
    Some(c.budget_at + Duration::from_secs_f64(need / cap.max(1.0)) + Duration::from_nanos(1))
}

/// Card `i` takes in one data frame (decode, CRC, receiver).
fn take_in(
    c: &mut Card,
    i: usize,
    frame: &[u8],
    ethertype: u16,
    now: Duration,
    cpu: &mut Duration,
) -> Result<(), SimError> {
    let Some(rx) = c.rx.as_mut() else {
        return Ok(());
    };
    let t0 = Instant::now();
    let outcome = match Frame::decode(frame, ethertype) {
        Ok(f) => match DataView::from_frame(&f) {
            Ok(view) => Some(rx.on_data(&view, now)),
            Err(_) => None,
        },
        Err(_) => None,
    };
    *cpu += t0.elapsed();
    match outcome {
        Some(Err(source)) => return Err(SimError::Receiver { card: i, source }),
        Some(Ok(DataOutcome::Completed)) => {
            c.completed_at.get_or_insert(now);
        }
        _ => {}
    }
    c.poll_now = true;
    Ok(())
}
