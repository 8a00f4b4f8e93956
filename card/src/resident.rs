//! The resident agent: what listens on a card's backplane after the hand-off, while the
//! package root runs. A sans-IO state machine like [`crate::agent`]: frames and "time
//! is now T" in, frames and at most one [`Order`] out.
//!
//! ```text
//!   hand-off ──► RUNNING ── every `alive_every`: Alive (running set, health, uptime,
//!                  │          epoch, rolled-back-from, dropped commands) to the master
//!                  │        health change (caller): Alive at once
//!                  │        master Heartbeat/Advertise: Alives go to its MAC
//!                  │
//!                  └── signed Command, for us or for all, (epoch, serial) newer
//!                      (crate::command::admit) ──► ORDERED: the caller records the stamp
//!                      on flash, syncs and resets the card; nothing more is obeyed
//! ```
//!
//! Forged, foreign, replayed and malformed frames are counted and dropped; every
//! dropped command is also counted in the Alive (`x`), so the master sees an attack.
//! The caller (init's resident loop, a simulated card) owns the socket, the clock, the
//! health command, the watchdog and the reset itself.

use std::time::{Duration, Instant};

use serde::Serialize;
use shelfboot_netio::FrameIo;
use shelfboot_proto::frame::{Header, Link, MacAddr, MessageType};
use shelfboot_proto::msg::{self, Action, Alive, Command, Digest, Health, Message};
use shelfboot_proto::report::error_chain;
use shelfboot_proto::sign::TrustAnchor;
use shelfboot_proto::version;

use crate::command::{Refused, admit};

/// What the resident agent is told at hand-off.
#[derive(Debug, Clone)]
pub struct ResidentConfig {
    /// The card's backplane MAC.
    pub mac: MacAddr,
    /// Our EtherType.
    pub ethertype: u16,
    /// Keys whose signatures on commands we accept (the initramfs's anchor).
    pub anchor: TrustAnchor,
    /// The set the card runs (`None`: from RAM, nothing of flash).
    pub running: Option<Digest>,
    /// True if the running set is committed on flash.
    pub persisted: bool,
    /// Epoch of the master whose plan the card runs (0: it booted on its own).
    pub epoch: u64,
    /// That master's MAC, if a master planned this boot.
    pub master: Option<MacAddr>,
    /// (epoch, serial) of the last command executed (this boot's, or the one on flash).
    pub last_command: Option<(u64, u64)>,
    /// Interval of the Alive messages.
    pub alive_every: Duration,
    /// Health at hand-off: [`Health::Checking`] if the set names a health command,
    /// [`Health::Unchecked`] otherwise.
    pub health: Health,
    /// A set this card rolled back from, still on flash's record.
    pub rolled_back_from: Option<Digest>,
    /// Text for the master about the rollback.
    pub detail: String,
}

/// A command the resident agent admitted: the caller records `stamp` on flash, then
/// resets the card (every action ends in a reset after the hand-off: the next boot's
/// conversation does what the master asked, see `docs/service.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    /// What the master ordered.
    pub action: Action,
    /// The command's (epoch, serial).
    pub stamp: (u64, u64),
}

/// Counters of the resident agent since the hand-off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResidentCounters {
    /// Frames handed to the agent.
    pub frames_in: u64,
    /// Alive messages sent.
    pub alives: u64,
    /// Commands admitted (at most one takes effect: it resets the card).
    pub commands: u64,
    /// Commands no trusted key signed.
    pub dropped_forged: u64,
    /// Frames and commands for another card.
    pub dropped_not_for_us: u64,
    /// Commands not newer than the last executed one.
    pub dropped_replayed: u64,
    /// Frames that did not decode.
    pub dropped_malformed: u64,
    /// Valid messages that mean nothing after the hand-off (plans, joins, data).
    pub dropped_unexpected: u64,
}

impl ResidentCounters {
    /// Commands dropped for any reason (what the Alive reports).
    pub fn dropped_commands(&self) -> u64 {
        self.dropped_forged + self.dropped_replayed
    }
}

/// The resident agent of one card. See the module docs.
#[derive(Debug)]
pub struct Resident {
    cfg: ResidentConfig,
    started: Instant,
    next_alive: Instant,
    health: Health,
    detail: String,
    master: Option<MacAddr>,
    /// Highest master epoch heard (Heartbeat/Advertise: only where Alives go).
    heard_epoch: u64,
    last_command: Option<(u64, u64)>,
    order: Option<Order>,
    /// A command was admitted: the card is resetting, nothing more is obeyed.
    ordered: bool,
    counters: ResidentCounters,
    sequence: u32,
    out: Vec<Vec<u8>>,
}

impl Resident {
    /// The agent at hand-off; its first Alive goes out at the first [`Resident::tick`].
    pub fn new(cfg: ResidentConfig, now: Instant) -> Self {
        Self {
            health: cfg.health,
            detail: bounded(&cfg.detail),
            master: cfg.master,
            heard_epoch: cfg.epoch,
            last_command: cfg.last_command,
            cfg,
            started: now,
            next_alive: now,
            order: None,
            ordered: false,
            counters: ResidentCounters::default(),
            sequence: 0,
            out: Vec::new(),
        }
    }

    /// Our MAC.
    pub fn mac(&self) -> MacAddr {
        self.cfg.mac
    }

    /// The counters.
    pub fn counters(&self) -> &ResidentCounters {
        &self.counters
    }

    /// Health as last set.
    pub fn health(&self) -> Health {
        self.health
    }

    /// The (epoch, serial) of the last admitted command.
    pub fn last_command(&self) -> Option<(u64, u64)> {
        self.last_command
    }

    /// When [`Resident::tick`] wants to be called next.
    pub fn next_deadline(&self) -> Instant {
        self.next_alive
    }

    /// The admitted command, once (the caller resets the card).
    pub fn take_order(&mut self) -> Option<Order> {
        self.order.take()
    }

    /// Frames to send, in order.
    pub fn drain(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.out)
    }

    /// Time passes: an Alive when it is due.
    pub fn tick(&mut self, now: Instant) {
        if now >= self.next_alive {
            self.send_alive(now);
        }
    }

    /// The caller's health check changed its verdict: say so at once.
    pub fn set_health(&mut self, now: Instant, health: Health, detail: &str) {
        let detail = bounded(detail);
        if self.health == health && self.detail == detail {
            return;
        }
        self.health = health;
        self.detail = detail;
        self.send_alive(now);
    }

    /// The card rolled back from the running set on its own (before resetting): the
    /// next Alives say so.
    pub fn rolled_back(&mut self, now: Instant, from: Digest, detail: &str) {
        self.cfg.rolled_back_from = Some(from);
        self.health = Health::Unhealthy;
        self.detail = bounded(detail);
        self.send_alive(now);
    }

    /// An admitted order was not carried out (an upgrade that failed): obey the next one.
    pub fn resume(&mut self) {
        self.ordered = false;
    }

    /// Send an Alive now (a repeat before the card resets, on a lossy backplane).
    pub fn announce(&mut self, now: Instant) {
        self.send_alive(now);
    }

    /// A received frame.
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) {
        self.counters.frames_in += 1;
        let (message, link) = match shelfboot_proto::frame::Frame::decode(bytes, self.cfg.ethertype)
        {
            Ok(f) => {
                let link = f.link();
                if link.src == self.mac()
                    || (link.dst != self.mac() && link.dst != MacAddr::BROADCAST)
                {
                    self.counters.dropped_not_for_us += 1;
                    return;
                }
                if f.header().msg_type == MessageType::Data {
                    self.counters.dropped_unexpected += 1;
                    return;
                }
                match msg::decode_message(&f) {
                    Ok(m) => (m, link),
                    Err(e) => {
                        log::debug!(
                            "resident {}: dropped frame from {}: {e}",
                            self.mac(),
                            link.src
                        );
                        self.counters.dropped_malformed += 1;
                        return;
                    }
                }
            }
            Err(_) => {
                self.counters.dropped_malformed += 1;
                return;
            }
        };
        match message {
            Message::Command(c) => self.on_command(now, &c),
            Message::Heartbeat(h) => self.on_master(link.src, h.epoch),
            Message::Advertise(a) => self.on_master(link.src, a.epoch),
            _ => self.counters.dropped_unexpected += 1,
        }
    }

    /// An unsigned announcement of a master: it decides only where Alives go, never
    /// what the card does, and only an epoch at least the one we run under counts.
    fn on_master(&mut self, src: MacAddr, epoch: u64) {
        if epoch >= self.heard_epoch {
            self.heard_epoch = epoch;
            self.master = Some(src);
        }
    }

    fn on_command(&mut self, now: Instant, cmd: &Command) {
        if self.ordered {
            // Already resetting: the rest are copies or late orders.
            return;
        }
        match admit(
            &self.cfg.anchor,
            self.mac(),
            self.cfg.epoch,
            self.last_command,
            cmd,
        ) {
            Ok(stamp) => {
                self.counters.commands += 1;
                self.last_command = Some(stamp);
                self.ordered = true;
                log::info!(
                    "resident {}: command {:?} (epoch {}, serial {}): resetting the card",
                    self.mac(),
                    cmd.body.action,
                    stamp.0,
                    stamp.1
                );
                self.order = Some(Order {
                    action: cmd.body.action,
                    stamp,
                });
            }
            Err(e) => {
                match e {
                    Refused::Forged(_) => self.counters.dropped_forged += 1,
                    Refused::NotForUs(_) => self.counters.dropped_not_for_us += 1,
                    Refused::Replayed { .. } => self.counters.dropped_replayed += 1,
                }
                if !matches!(e, Refused::NotForUs(_)) {
                    log::warn!(
                        "resident {}: dropped command: {}",
                        self.mac(),
                        error_chain(&e)
                    );
                    // The master hears of it at once.
                    self.send_alive(now);
                }
            }
        }
    }

    fn send_alive(&mut self, now: Instant) {
        self.next_alive = now + self.cfg.alive_every;
        let alive = Alive {
            running: self.cfg.running,
            persisted: self.cfg.persisted,
            health: self.health,
            uptime: now.saturating_duration_since(self.started).as_secs(),
            epoch: self.cfg.epoch,
            rolled_back_from: self.cfg.rolled_back_from,
            dropped: u32::try_from(self.counters.dropped_commands()).unwrap_or(u32::MAX),
            detail: self.detail.clone(),
        };
        let link = Link {
            dst: self.master.unwrap_or(MacAddr::BROADCAST),
            src: self.mac(),
            ethertype: self.cfg.ethertype,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let header = Header::new(MessageType::Alive, 0, self.sequence).in_version(version::CURRENT);
        let mut buf = vec![0u8; shelfboot_proto::MAX_FRAME_LEN];
        match msg::encode_message_with_header(&mut buf, &link, &header, &Message::Alive(alive)) {
            Ok(n) => {
                buf.truncate(n);
                self.counters.alives += 1;
                self.out.push(buf);
            }
            // Our Alive is bounded (the detail is ours); a failure is a bug, logged.
            Err(e) => log::error!(
                "resident {}: encoding Alive: {}",
                self.mac(),
                error_chain(&e)
            ),
        }
    }
}

/// One turn of a resident agent over a frame port: what is due goes out, frames are
/// received for up to `wait` and handed to it, its answers go out. The one I/O turn of
/// init's resident loop and of simulated running cards; the caller adds what is its own
/// between turns (the watchdog, the health command, obeying an [`Order`]).
pub fn turn<F: FrameIo>(io: &mut F, agent: &mut Resident, wait: Duration) -> Result<(), F::Error> {
    agent.tick(Instant::now());
    flush(io, agent)?;
    io.recv_batch(
        &mut |frame: &[u8], _src| agent.handle_frame(Instant::now(), frame),
        wait,
    )?;
    flush(io, agent)
}

/// Sends what the agent has queued.
pub fn flush<F: FrameIo>(io: &mut F, agent: &mut Resident) -> Result<(), F::Error> {
    let frames = agent.drain();
    if frames.is_empty() {
        return Ok(());
    }
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    io.send_batch(&refs).map(|_| ())
}

/// Longest detail text an Alive carries (it stays one frame).
pub const MAX_DETAIL: usize = 400;

/// `text` cut to [`MAX_DETAIL`] bytes at a character boundary.
fn bounded(text: &str) -> String {
    let mut end = text.len().min(MAX_DETAIL);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests;
