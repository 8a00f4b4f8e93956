//! The card agent: the whole boot conversation of one card as a sans-IO state machine.
//!
//! ```text
//!  Discover --(verified Plan, Continue, flash matches)------------------> Ready
//!     |  ^  \--(verified Plan, Fetch)--> Fetch --(all staged, commit)--> Ready
//!     |  |                                 |                               |
//!     |  +---(Error sent / master lost)----+                         Handoff(decision)
//!     +--(no plan for `autonomy`, committed set on flash)--> Handoff(autonomous)
//!
//!  after a BurnNow ("prepare"), Ready does not hand off but holds:
//!  ... --> Held --(verified WarmBoot)--> Reset(WarmBoot): solicit again, validate, boot
//!            \----(no WarmBoot within `hold`)--> Handoff (logged)
//! ```
//!
//! Inputs are events: [`Agent::handle_frame`] (a received Ethernet frame) and
//! [`Agent::tick`] (time passes; call it by [`Agent::next_deadline`]). Outputs are
//! [`Output`]s: frames to send, multicast groups to join or leave, and at the end one
//! [`Decision`]. Flash sits behind the [`Volumes`] trait through the [`Store`], so the
//! same agent runs as PID 1 over UBI, as a simulated card over files, and in unit tests
//! over an in-memory fake.
//!
//! Security rules (see `docs/conversation.md`): a plan is acted on only if a key of the
//! trust anchor signed it, it echoes this boot's nonce and its digest is the digest of its
//! contents; commands need a trusted signature, our MAC or no target, and an (epoch,
//! serial) above every one executed; Join and data frames are taken only from the master
//! whose plan we accepted and only for the artifact we asked for. Every artifact is
//! verified (sha256 against the signed plan) by the store before it can be committed.
//! Everything else is counted in [`Counters`] and dropped; nothing here panics on input.
//!
//! Test mode (a plan with `persist = false`): the plan is applied to a RAM store the
//! caller provides ([`Agent::with_ram_store`], a [`FileVolumes`] directory on tmpfs,
//! bounded by free RAM): fetched, verified and committed there exactly as on flash, and the
//! decision says `persisted: false`. The flash store sees no operation at all (no volume
//! created, renamed or removed; inventory and boot counter unchanged). Without a RAM store
//! such a plan is refused with an Error and nothing is written. Solicit always reports
//! the flash inventory, and autonomy always boots the flash set.
//!
//! A card without usable flash ([`Agent::in_ram`]) has its RAM store as its only store:
//! every plan goes there, as a flash plan would, but Ready, Alive and the decision say
//! `persisted: false`, and its Solicit reports nothing installed (a RAM set is not: the
//! master answers with the full plan, which the carried store of a kexec'd boot image
//! then only validates). Without a master, a kexec'd boot image boots the carried set.
//!
//! This module does not open sockets, read clocks, draw random numbers, kexec or
//! switch_root: the caller does, from the outputs.

mod config;
mod counters;
mod fetch;
mod rng;
mod stores;

#[cfg(test)]
mod frag_tests;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

pub use config::{AgentConfig, Identity, Timers};
pub use counters::{Counters, Timeline};

use shelfboot_proto::frag::{self, FragCounters, Reassembler};
use shelfboot_proto::frame::{Flags, Frame, FrameError, Header, Link, MacAddr, MessageType};
use shelfboot_proto::msg::{
    self, Action, Command, Digest, ErrorMsg, ErrorReason, Handoff, Inventory, Message, Plan,
    PlanBody, Ready, Solicit,
};
use shelfboot_proto::report::error_chain;
use shelfboot_proto::sign::SignError;
use shelfboot_proto::version;

use crate::boot::handoff_of;
use crate::command::Refused;
use crate::flash::inventory::SetRecord;
use crate::flash::{FileVolumes, Store, StoreError, VolumeErrorKind, Volumes};
use fetch::Fetching;
use rng::SplitMix;
use stores::{Medium, Stores};

/// What the agent asks its caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Transmit this complete Ethernet frame.
    Send(Vec<u8>),
    /// Receive frames sent to this multicast group (a transfer session).
    JoinGroup(MacAddr),
    /// Stop receiving this group.
    LeaveGroup(MacAddr),
    /// The conversation is over: do this. Emitted once; the agent is then finished.
    Decision(Decision),
}

/// How the conversation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Boot the committed set.
    Boot {
        /// The set to boot (as committed in the inventory).
        set: SetRecord,
        /// kexec into its boot image, or switch_root into its packages.
        handoff: Handoff,
        /// True if no master validated it (none answered within the autonomy timer).
        autonomous: bool,
        /// True if nothing was fetched (a warm boot that only validated).
        validated_only: bool,
        /// False for a test-mode set: it is in the RAM store
        /// ([`Agent::into_stores`]), flash was not touched.
        persisted: bool,
    },
    /// A signed command ordered a reset: restart the conversation with this phase.
    Reset {
        /// Phase of the next Solicit.
        phase: msg::BootPhase,
    },
}

/// Where the agent is (for reports and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Soliciting a plan.
    Discover,
    /// Fetching and staging artifacts.
    Fetch,
    /// Ready sent (repeats may be pending); decision emitted.
    Ready,
    /// Ready sent after a BurnNow: holding, waiting for the master's WarmBoot (no decision
    /// yet; it comes with the WarmBoot, a Reset, or at the end of the hold).
    Held,
    /// Finished (decision emitted, nothing more to send).
    Done,
}

/// Errors the agent reports to its caller (besides the structured Error it sends the
/// master): a flash failure that is not the plan's fault.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Encoding one of our own messages failed (a bug: our messages are bounded).
    #[error("encoding our {what} message failed")]
    Encode {
        what: &'static str,
        #[source]
        source: frag::EncodeError,
    },
}

enum State {
    Discover {
        attempt: u32,
        next: Instant,
    },
    Fetch(Box<Fetching>),
    Ready {
        frame: Vec<u8>,
        left: u32,
        next: Instant,
    },
    Held {
        frame: Vec<u8>,
        left: u32,
        next: Instant,
        /// The hold ends here: hand off with `decision`.
        until: Instant,
        decision: Box<Decision>,
    },
    Done,
}

/// One card's boot conversation. See the module docs.
pub struct Agent<V: Volumes> {
    cfg: AgentConfig,
    store: Stores<V>,
    state: State,
    started: Instant,
    session: u32,
    sequence: u32,
    rng: SplitMix,
    counters: Counters,
    timeline: Timeline,
    /// Highest master epoch seen in a verified plan or command.
    epoch: u64,
    /// Highest epoch an (unsigned) Advertise or Heartbeat announced that the card acted on
    /// ([`Agent::on_master_epoch`]).
    announced: u64,
    /// (epoch, serial) of the last executed command.
    last_command: Option<(u64, u64)>,
    /// The master whose plan we accepted last (Alives go there after the hand-off).
    obeyed: Option<MacAddr>,
    /// A BurnNow was heard: after Ready, hold for the master's WarmBoot.
    hold: bool,
    /// Last structured error a master sent us (for reports).
    last_master_error: Option<ErrorMsg>,
    /// Last structured error we sent (for reports).
    last_error_sent: Option<ErrorMsg>,
    /// Protocol version we speak: [`version::CURRENT`], or older after a master answered
    /// that it speaks only that.
    speak: u8,
    /// Plans (and any other message) in fragments; two partial messages at most.
    reasm: Reassembler,
    outputs: Vec<Output>,
}

impl<V: Volumes> std::fmt::Debug for Agent<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("mac", &self.cfg.identity.mac)
            .field("phase", &self.phase())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Agent<FileVolumes> {
    /// A conversation of a card without usable flash: `ram` (a [`FileVolumes`] directory
    /// on tmpfs, or the one carried into a kexec'd boot image) is its only store. Every
    /// plan, `persist` or not, is fetched, verified and committed there; Ready, Alive and
    /// the decision say `persisted: false`, so the master records nothing as installed
    /// and the card fetches its set again on its next cold boot.
    pub fn in_ram(cfg: AgentConfig, ram: Store<FileVolumes>, now: Instant) -> Self {
        let mut a = Agent::new(cfg, ram, now);
        a.store = Stores::new(a.store.flash, true);
        a
    }
}

impl<V: Volumes> Agent<V> {
    /// A new conversation over an opened store. The first Solicit goes out at the first
    /// [`Agent::tick`] (call it at once).
    pub fn new(cfg: AgentConfig, store: Store<V>, now: Instant) -> Self {
        let session = u32::from_be_bytes([cfg.nonce[0], cfg.nonce[1], cfg.nonce[2], cfg.nonce[3]]);
        let rng = SplitMix::new(cfg.seed ^ u64::from(session));
        Self {
            cfg,
            store: Stores::new(store, false),
            state: State::Discover {
                attempt: 0,
                next: now,
            },
            started: now,
            session,
            sequence: 0,
            rng,
            counters: Counters::default(),
            timeline: Timeline::default(),
            epoch: 0,
            announced: 0,
            last_command: None,
            obeyed: None,
            hold: false,
            last_master_error: None,
            last_error_sent: None,
            speak: version::CURRENT,
            reasm: Reassembler::new(frag::Limits::CARD),
            outputs: Vec::new(),
        }
    }

    /// The protocol version this agent speaks now (lower than [`version::CURRENT`] after
    /// falling back to an older master).
    pub fn protocol_version(&self) -> u8 {
        self.speak
    }

    /// Counters of the reassembly of fragmented messages (plans larger than one frame).
    pub fn reassembly(&self) -> FragCounters {
        self.reasm.counters()
    }

    /// Our MAC.
    pub fn mac(&self) -> MacAddr {
        self.cfg.identity.mac
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// When this conversation's milestones happened.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// Give the agent a RAM store for test-mode plans (`persist = false`): a
    /// [`FileVolumes`] directory on tmpfs, its capacity bounded by the caller (free RAM).
    /// Without one, such plans are refused.
    #[must_use]
    pub fn with_ram_store(mut self, ram: Store<FileVolumes>) -> Self {
        self.store.ram = Some(ram);
        self
    }

    /// Carry the (epoch, serial) of the last command executed in this boot into a
    /// restarted conversation (after a [`Decision::Reset`]): the command's remaining
    /// copies, and any replay of it, are then not executed a second time.
    #[must_use]
    pub fn with_last_command(mut self, stamp: Option<(u64, u64)>) -> Self {
        if let Some(s) = stamp {
            self.last_command = Some(s);
            self.epoch = self.epoch.max(s.0);
        }
        self
    }

    /// (epoch, serial) of the last command executed (see [`Agent::with_last_command`]).
    pub fn last_command(&self) -> Option<(u64, u64)> {
        self.last_command
    }

    /// The master whose plan this conversation accepted, with the highest epoch obeyed.
    pub fn obeyed(&self) -> Option<(MacAddr, u64)> {
        self.obeyed.map(|m| (m, self.epoch))
    }

    /// True once a BurnNow was heard: Ready holds for the master's WarmBoot.
    pub fn holding_ordered(&self) -> bool {
        self.hold
    }

    /// The flash store.
    pub fn store(&self) -> &Store<V> {
        &self.store.flash
    }

    /// The RAM store, if one was given.
    pub fn ram_store(&self) -> Option<&Store<FileVolumes>> {
        self.store.ram.as_ref()
    }

    /// Give the flash store back (after the decision, to boot from it).
    pub fn into_store(self) -> Store<V> {
        self.store.flash
    }

    /// Give both stores back: flash, and the RAM store holding a test-mode set.
    pub fn into_stores(self) -> (Store<V>, Option<Store<FileVolumes>>) {
        (self.store.flash, self.store.ram)
    }

    /// Where the conversation is.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Discover { .. } => Phase::Discover,
            State::Fetch(_) => Phase::Fetch,
            State::Ready { .. } => Phase::Ready,
            State::Held { .. } => Phase::Held,
            State::Done => Phase::Done,
        }
    }

    /// The last structured error a master sent us.
    pub fn last_master_error(&self) -> Option<&ErrorMsg> {
        self.last_master_error.as_ref()
    }

    /// The last structured error we sent a master.
    pub fn last_error_sent(&self) -> Option<&ErrorMsg> {
        self.last_error_sent.as_ref()
    }

    /// Progress of the current fetch: (bytes staged, bytes to fetch in total).
    pub fn fetch_progress(&self) -> Option<(u64, u64)> {
        match &self.state {
            State::Fetch(f) => Some(f.progress()),
            _ => None,
        }
    }

    /// When [`Agent::tick`] must be called next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let autonomy = self.autonomy_deadline();
        let own = match &self.state {
            State::Discover { next, .. } => Some(*next),
            State::Fetch(f) => Some(f.deadline()),
            State::Ready { next, .. } => Some(*next),
            State::Held { next, until, .. } => Some((*next).min(*until)),
            State::Done => None,
        };
        match (own, autonomy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn autonomy_deadline(&self) -> Option<Instant> {
        match (
            &self.state,
            self.cfg.timers.autonomy,
            self.store.inventory(),
        ) {
            (State::Discover { .. }, Some(t), Some(_)) => Some(self.started + t),
            _ => None,
        }
    }

    /// Time passes: send what is due. Returns the outputs.
    pub fn tick(&mut self, now: Instant) -> Vec<Output> {
        if let Some(at) = self.autonomy_deadline()
            && now >= at
        {
            self.boot_autonomously();
            return std::mem::take(&mut self.outputs);
        }
        match &mut self.state {
            State::Discover { attempt, next } if now >= *next => {
                let a = *attempt;
                let interval = self.backoff(a);
                if let State::Discover { attempt, next } = &mut self.state {
                    *attempt += 1;
                    *next = now + interval;
                }
                self.send_solicit();
            }
            State::Fetch(_) => self.fetch_tick(now),
            State::Ready { frame, left, next } if now >= *next => {
                let f = frame.clone();
                *left = left.saturating_sub(1);
                *next = now + self.cfg.timers.ready_spacing;
                let finished = *left == 0;
                self.emit_frame(f);
                if finished {
                    self.state = State::Done;
                }
            }
            State::Held { until, .. } if now >= *until => {
                let waited = self.cfg.timers.hold;
                if let State::Held { decision, .. } =
                    std::mem::replace(&mut self.state, State::Done)
                {
                    self.counters.hold_timeouts += 1;
                    log::warn!(
                        "card {}: no warm boot from the master within {waited:?} of holding: handing off on our own",
                        self.mac()
                    );
                    self.outputs.push(Output::Decision(*decision));
                }
            }
            State::Held {
                frame, left, next, ..
            } if now >= *next => {
                if *left > 0 {
                    let f = frame.clone();
                    *left -= 1;
                    *next = now
                        + if *left > 0 {
                            self.cfg.timers.ready_spacing
                        } else {
                            self.cfg.timers.alive
                        };
                    self.emit_frame(f);
                } else {
                    // Held for minutes: say we are here, as a running card's agent does.
                    *next = now + self.cfg.timers.alive;
                    self.send_held_alive(now);
                }
            }
            _ => {}
        }
        std::mem::take(&mut self.outputs)
    }

    /// A frame arrived (complete Ethernet frame as received). Returns the outputs.
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) -> Vec<Output> {
        self.counters.frames_in += 1;
        match Frame::decode(bytes, self.cfg.ethertype) {
            Ok(frame) => self.handle_decoded(now, &frame),
            Err(FrameError::WrongEtherType { .. }) => self.counters.dropped_not_for_us += 1,
            Err(e) => {
                log::debug!("card {}: dropped frame: {e}", self.mac());
                self.counters.dropped_malformed += 1;
            }
        }
        std::mem::take(&mut self.outputs)
    }

    fn handle_decoded(&mut self, now: Instant, frame: &Frame<'_>) {
        let dst = frame.link().dst;
        let src = frame.link().src;
        let for_us = dst == self.mac() || dst == MacAddr::BROADCAST || self.in_group(dst);
        if !for_us || src == self.mac() {
            self.counters.dropped_not_for_us += 1;
            return;
        }
        if frame.header().msg_type == MessageType::Data {
            self.on_data(now, frame);
            return;
        }
        let (header, decoded) = if frame.header().flags.contains(Flags::FRAGMENT) {
            match self.reasm.push(now, frame) {
                Ok(None) => return,
                Ok(Some(whole)) => (whole.header, whole.decode()),
                Err(e) => {
                    log::debug!("card {}: dropped fragment from {src}: {e}", self.mac());
                    self.counters.dropped_malformed += 1;
                    return;
                }
            }
        } else {
            (frame.header(), msg::decode_message(frame))
        };
        let message = match decoded {
            Ok(m) => m,
            Err(e) => {
                log::debug!("card {}: dropped control frame from {src}: {e}", self.mac());
                self.counters.dropped_malformed += 1;
                return;
            }
        };
        match message {
            Message::Plan(p) => self.on_plan(now, src, header, p),
            Message::Join(j) => self.on_join(now, src, j),
            Message::Command(c) => self.on_command(now, c),
            Message::Error(e) => self.on_master_error(now, src, e),
            Message::Advertise(a) => self.on_master_epoch(now, src, a.epoch),
            Message::Heartbeat(h) => self.on_master_epoch(now, src, h.epoch),
            Message::Solicit(_)
            | Message::Fetch(_)
            | Message::Nack(_)
            | Message::Progress(_)
            | Message::Ready(_)
            | Message::Inventory(_)
            | Message::Alive(_) => self.counters.dropped_unexpected += 1,
        }
    }

    fn in_group(&self, dst: MacAddr) -> bool {
        match &self.state {
            State::Fetch(f) => f.group() == Some(dst),
            _ => false,
        }
    }

    /// Solicit retry interval after `attempt` unanswered Solicits, with jitter.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let t = &self.cfg.timers;
        let base = t
            .solicit_initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(t.solicit_max);
        let jitter = u64::from(t.jitter_percent.min(100));
        let span = u64::try_from(base.as_micros()).unwrap_or(u64::MAX) * jitter / 100;
        let offset = if span == 0 {
            0
        } else {
            self.rng.next() % (2 * span + 1)
        };
        let micros = u64::try_from(base.as_micros()).unwrap_or(u64::MAX) - span + offset;
        Duration::from_micros(micros)
    }

    /// The largest data block our port takes (`None`: its MTU is below the protocol's
    /// minimum, so no session can serve us).
    fn own_block_size(&self) -> Option<u16> {
        shelfboot_proto::data::block_size_for_mtu(self.cfg.link_mtu).ok()
    }

    fn solicit(&self) -> Solicit {
        let id = &self.cfg.identity;
        Solicit {
            mac: id.mac,
            card_type: id.card_type.clone(),
            arch: id.arch,
            shelf: id.shelf,
            slot: id.slot,
            hw_rev: id.hw_rev.clone(),
            features: id.features.clone(),
            phase: self.cfg.phase,
            inventory: self.inventory_refs(),
            inventory_digest: self.store.reported().map(|i| i.set.digest),
            nonce: self.cfg.nonce,
            inventory_omitted: false,
            // Said only when it is not the standard 1500, and only in version 2.
            link_mtu: (self.cfg.link_mtu != shelfboot_proto::STANDARD_MTU
                && self.speak >= version::FRAGMENTS)
                .then_some(self.cfg.link_mtu),
        }
    }

    /// The artifacts of the committed set, as the protocol names them (none when pristine).
    fn inventory_refs(&self) -> Vec<shelfboot_proto::msg::ArtifactRef> {
        self.store
            .reported()
            .map(|i| i.set.refs())
            .unwrap_or_default()
    }

    /// Sends a Solicit, always one frame: when the inventory would not fit, it is left out
    /// and the set digest stands for it (version 2 says so with `io`; the master asks for
    /// the list when it needs it).
    fn send_solicit(&mut self) {
        self.counters.solicits += 1;
        let mut s = self.solicit();
        let full = Message::Solicit(s.clone());
        let fits = full
            .encode_long_body()
            .is_ok_and(|b| b.len() <= shelfboot_proto::MAX_CONTROL_BODY_LEN);
        let m = if fits {
            full
        } else {
            s.inventory.clear();
            s.inventory_omitted = self.speak >= version::FRAGMENTS;
            Message::Solicit(s)
        };
        self.send(MacAddr::BROADCAST, &m);
    }

    /// Sends our flash inventory to `master` (it asked, in its plan), fragmented if it
    /// does not fit one frame. The frames go twice: a fragment lost once still arrives.
    fn send_inventory(&mut self, master: MacAddr) {
        let inv = Message::Inventory(Inventory {
            inventory: self.inventory_refs(),
            inventory_digest: self.store.reported().map(|i| i.set.digest),
            nonce: self.cfg.nonce,
        });
        let before = self.outputs.len();
        self.send(master, &inv);
        let copies: Vec<Output> = self.outputs[before..].to_vec();
        for o in copies {
            if let Output::Send(f) = o {
                self.emit_frame(f);
            }
        }
    }

    /// Encode and queue `m` to `dst`.
    fn send(&mut self, dst: MacAddr, m: &Message) {
        let link = Link {
            dst,
            src: self.mac(),
            ethertype: self.cfg.ethertype,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let header = Header::new(m.msg_type(), self.session, self.sequence).in_version(self.speak);
        match frag::encode_frames(&link, &header, m) {
            Ok(frames) => {
                for f in frames {
                    self.emit_frame(f);
                }
            }
            Err(source) => {
                let e = AgentError::Encode {
                    what: match m.msg_type() {
                        MessageType::Solicit => "Solicit",
                        MessageType::Fetch => "Fetch",
                        MessageType::Nack => "Nack",
                        MessageType::Progress => "Progress",
                        MessageType::Ready => "Ready",
                        MessageType::Error => "Error",
                        MessageType::Inventory => "Inventory",
                        _ => "control",
                    },
                    source,
                };
                log::error!("card {}: {}", self.mac(), error_chain(&e));
            }
        }
    }

    fn emit_frame(&mut self, frame: Vec<u8>) {
        self.counters.frames_out += 1;
        self.outputs.push(Output::Send(frame));
    }

    /// Send a structured error to `master` and remember it.
    fn send_error(&mut self, master: MacAddr, reason: ErrorReason, detail: String) {
        let e = ErrorMsg { reason, detail };
        log::warn!("card {}: reporting to {master}: {}", self.mac(), e.detail);
        self.counters.errors_sent += 1;
        self.send(master, &Message::Error(e.clone()));
        self.last_error_sent = Some(e);
    }

    fn on_master_error(&mut self, now: Instant, src: MacAddr, e: ErrorMsg) {
        self.counters.master_errors += 1;
        match e.reason {
            ErrorReason::UnsupportedVersion { min, max }
                if max < self.speak
                    && version::is_supported(max)
                    && matches!(self.state, State::Discover { .. }) =>
            {
                // An older master: speak its version (a set too large for one frame then
                // goes without its inventory list; the master answers what it can).
                log::error!(
                    "card {}: master {src} speaks protocol versions {min}..={max} only, this card {}: falling back to version {max}",
                    self.mac(),
                    self.speak
                );
                self.speak = max;
                self.counters.version_fallbacks += 1;
                if let State::Discover { next, .. } = &mut self.state {
                    *next = now;
                }
            }
            ErrorReason::UnsupportedVersion { .. } | ErrorReason::MessageTooLarge { .. } => {
                log::error!(
                    "card {}: master {src} cannot deliver our plan ({:?}): {}",
                    self.mac(),
                    e.reason,
                    e.detail
                );
            }
            _ => log::warn!(
                "card {}: master {src} reports {:?}: {}",
                self.mac(),
                e.reason,
                e.detail
            ),
        }
        self.last_master_error = Some(e);
    }

    fn on_plan(&mut self, now: Instant, src: MacAddr, header: Header, plan: Plan) {
        if !matches!(self.state, State::Discover { .. }) {
            self.counters.dropped_unexpected += 1;
            return;
        }
        if let Err(e) = self.cfg.anchor.verify_plan(&plan, &self.cfg.nonce) {
            match e {
                SignError::NonceMismatch => self.counters.dropped_replayed += 1,
                _ => self.counters.dropped_forged += 1,
            }
            log::warn!(
                "card {}: dropped plan from {src}: {}",
                self.mac(),
                error_chain(&e)
            );
            return;
        }
        if header.session != self.session {
            self.counters.dropped_replayed += 1;
            return;
        }
        if plan.body.epoch < self.epoch {
            // A master of a higher epoch was obeyed: this one was deposed (another master
            // took over) and is ignored.
            self.counters.dropped_replayed += 1;
            log::warn!(
                "card {}: dropped plan of epoch {} from {src}: a master of epoch {} was obeyed",
                self.mac(),
                plan.body.epoch,
                self.epoch
            );
            return;
        }
        self.counters.plans_accepted += 1;
        self.timeline.plan.get_or_insert(now);
        self.epoch = self.epoch.max(plan.body.epoch);
        self.obeyed = Some(src);
        if plan.body.report_inventory {
            self.send_inventory(src);
        }
        log::info!(
            "card {}: plan {} from {src} (epoch {}, {:?}, {} artifacts)",
            self.mac(),
            plan.body.digest,
            plan.body.epoch,
            plan.body.verdict,
            plan.body.artifacts.len()
        );
        self.apply_plan(now, src, plan.body);
    }

    /// A verified plan: validate (Continue) or start fetching, on flash or (test mode) in
    /// the RAM store.
    fn apply_plan(&mut self, now: Instant, master: MacAddr, mut plan: PlanBody) {
        let medium = self.store.medium_for(plan.persist);
        let rolled_back = self
            .store
            .flash
            .inventory()
            .and_then(|i| i.rolled_back_from)
            .filter(|d| *d == plan.digest && plan.persist);
        if let Some(from) = rolled_back {
            return self.refuse_rolled_back(master, from);
        }
        if !self.store.select(medium) {
            // No RAM store: a test-mode set has nowhere to go but flash, which it must
            // not touch.
            self.send_error(
                master,
                ErrorReason::Malformed,
                "test-mode (persist = false) plan refused: this card has no RAM store; flash untouched".into(),
            );
            self.back_to_discovery(now);
            return;
        }
        if plan.artifacts_omitted {
            // A digest-only Continue: the set is ours if the digest is our committed set's.
            let ours = self.store.active_inventory().map(|i| i.set.clone());
            match ours {
                Some(set) if set.digest == plan.digest => {
                    plan.artifacts = set.refs();
                    plan.cmdline = set.cmdline;
                }
                other => {
                    let have = other.map_or_else(|| "none".to_string(), |s| s.digest.to_string());
                    self.send_error(
                        master,
                        ErrorReason::Malformed,
                        format!(
                            "digest-only Continue for set {}, but the committed set is {have}: soliciting again",
                            plan.digest
                        ),
                    );
                    self.back_to_discovery(now);
                    return;
                }
            }
        }
        let intact = match self.store.holds(&plan.artifacts, &plan.cmdline) {
            Ok(h) => h,
            Err(e) => return self.flash_refused(now, master, &e),
        };
        if intact {
            match medium {
                Medium::Flash if self.store.main_persists() => {
                    log::info!("card {}: flash matches the plan: validated", self.mac())
                }
                Medium::Flash => log::info!(
                    "card {}: the RAM store (no flash) holds the plan: validated",
                    self.mac()
                ),
                Medium::Ram => log::info!(
                    "card {}: the RAM store holds the RAM-only plan: validated",
                    self.mac()
                ),
            }
            return self.become_ready(now, master, true);
        }
        if medium == Medium::Ram {
            log::info!(
                "card {}: RAM-only plan (persist = false): fetching into RAM, flash untouched",
                self.mac()
            );
        } else if !self.store.main_persists() {
            log::info!(
                "card {}: no usable flash: fetching the plan into RAM",
                self.mac()
            );
        }
        match self.store.begin(&plan.artifacts, &plan.cmdline) {
            Ok(fetch) => {
                let f = Fetching::new(master, plan, fetch, now);
                self.state = State::Fetch(Box::new(f));
                self.fetch_tick(now);
            }
            Err(e) => self.flash_refused(now, master, &e),
        }
    }

    /// The store refused the plan (space, bad blocks, flash error): tell the master, keep
    /// the committed set, solicit again later.
    fn flash_refused(&mut self, now: Instant, master: MacAddr, e: &StoreError) {
        let reason = match e {
            StoreError::NoSpace { needed, available } => ErrorReason::NoSpace {
                needed: *needed,
                available: *available,
            },
            // tmpfs (the RAM store) full in the middle of a write.
            StoreError::Volume { source, .. } if source.kind == VolumeErrorKind::NoSpace => {
                ErrorReason::NoSpace {
                    needed: 0,
                    available: 0,
                }
            }
            StoreError::BadBlocks { bad_pebs, .. } => ErrorReason::BadBlocks {
                count: u32::try_from(*bad_pebs).unwrap_or(u32::MAX),
            },
            // The bytes (as read back) are not the planned artifact: what the receiver's
            // own check would have said when it hashes the stream.
            StoreError::DigestMismatch {
                name,
                expected,
                actual,
                ..
            } => ErrorReason::VerificationFailed {
                artifact: name.clone(),
                expected: **expected,
                got: **actual,
            },
            _ => ErrorReason::Malformed,
        };
        let detail = error_chain(e);
        self.send_error(master, reason, detail);
        if let Err(e) = self.store.abort() {
            log::error!("card {}: {}", self.mac(), error_chain(&e));
        }
        self.back_to_discovery(now);
    }

    /// An Advertise or Heartbeat: a master announcing its epoch. Unsigned, so only a
    /// hint: an epoch above any a signed plan or command showed means another master took
    /// over (or the master restarted), and the sessions of the old one are gone. A card
    /// fetching, or waiting for a plan, asks again at once; what it staged stays on flash
    /// and the new plan resumes it. Acted on once per announced epoch, so a forged
    /// announcement costs at most one Solicit; the epoch the card obeys still comes only
    /// from signed plans and commands.
    ///
    /// A card that has obeyed no master yet (epoch 0) has nobody to be taken over from:
    /// its Solicit is already on its way to whoever serves.
    fn on_master_epoch(&mut self, now: Instant, src: MacAddr, epoch: u64) {
        if self.epoch == 0 || epoch <= self.epoch || epoch <= self.announced {
            return;
        }
        let fetching = match &self.state {
            State::Fetch(_) => true,
            State::Discover { .. } => false,
            State::Ready { .. } | State::Held { .. } | State::Done => return,
        };
        self.announced = epoch;
        self.counters.epoch_changes += 1;
        log::info!(
            "card {}: master {src} announces epoch {epoch} (the plan's was {}): asking for a plan again{}",
            self.mac(),
            self.epoch,
            if fetching {
                ", keeping what is staged"
            } else {
                ""
            }
        );
        if fetching {
            self.store.suspend();
        }
        self.restart_discovery(0, now);
    }

    /// Start soliciting again, at the longest interval (the master was just heard from;
    /// it answers when the operator fixed the cause).
    fn back_to_discovery(&mut self, now: Instant) {
        let attempt = 16;
        let next = now + self.backoff(attempt);
        self.restart_discovery(attempt, next);
    }

    /// Discovery again from `attempt`, the next Solicit at `next`, with a fresh nonce (a
    /// plan answering an earlier Solicit no longer matches).
    fn restart_discovery(&mut self, attempt: u32, next: Instant) {
        if let State::Fetch(f) = &self.state
            && let Some(g) = f.group()
        {
            self.outputs.push(Output::LeaveGroup(g));
        }
        self.cfg.nonce = self.next_nonce();
        self.session = u32::from_be_bytes([
            self.cfg.nonce[0],
            self.cfg.nonce[1],
            self.cfg.nonce[2],
            self.cfg.nonce[3],
        ]);
        self.state = State::Discover { attempt, next };
    }

    /// A fresh nonce for a new round of discovery (derived from the boot nonce and the
    /// jitter generator; a replayed plan of the earlier round no longer matches).
    fn next_nonce(&mut self) -> msg::Nonce {
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&self.rng.next().to_be_bytes());
        n[8..].copy_from_slice(&self.rng.next().to_be_bytes());
        for (a, b) in n.iter_mut().zip(self.cfg.nonce.iter()) {
            *a ^= b.rotate_left(3);
        }
        n
    }

    /// The committed set (of the active store) is the plan's set: send Ready and decide
    /// the hand-off.
    fn become_ready(&mut self, now: Instant, master: MacAddr, validated_only: bool) {
        let Some(inv) = self.store.active_inventory() else {
            return self.back_to_discovery(now);
        };
        let set = inv.set.clone();
        let handoff = handoff_of(&set);
        let persisted = self.store.persists();
        let ready = Message::Ready(Ready {
            digest: set.digest,
            persisted,
            handoff,
        });
        let before = self.outputs.len();
        self.send(master, &ready);
        let frame = match self.outputs.get(before) {
            Some(Output::Send(f)) => f.clone(),
            _ => Vec::new(),
        };
        let left = self.cfg.timers.ready_repeats.saturating_sub(1);
        let decision = Decision::Boot {
            set,
            handoff,
            autonomous: false,
            validated_only,
            persisted,
        };
        if self.hold {
            // "Prepare": the set is in place; the master boots the whole system at once.
            self.counters.holds += 1;
            log::info!(
                "card {}: set committed; holding for the master's warm boot (up to {} s)",
                self.mac(),
                self.cfg.timers.hold.as_secs()
            );
            self.state = State::Held {
                left: if frame.is_empty() { 0 } else { left },
                frame,
                next: now + self.cfg.timers.ready_spacing,
                until: now + self.cfg.timers.hold,
                decision: Box::new(decision),
            };
            return;
        }
        self.state = if left == 0 || frame.is_empty() {
            State::Done
        } else {
            State::Ready {
                frame,
                left,
                next: now + self.cfg.timers.ready_spacing,
            }
        };
        self.outputs.push(Output::Decision(decision));
    }

    /// An Alive while held: the committed set, waiting for the master's warm boot.
    fn send_held_alive(&mut self, now: Instant) {
        let dropped = self.counters.dropped_forged + self.counters.dropped_replayed;
        let alive = msg::Alive {
            running: self.store.flash.digest(),
            persisted: self.store.main_persists(),
            health: msg::Health::Unchecked,
            uptime: now.saturating_duration_since(self.started).as_secs(),
            epoch: self.epoch,
            rolled_back_from: None,
            dropped: u32::try_from(dropped).unwrap_or(u32::MAX),
            detail: "in init, holding for the master's warm boot".into(),
        };
        let dst = self.obeyed.unwrap_or(MacAddr::BROADCAST);
        self.send(dst, &Message::Alive(alive));
    }

    /// The plan is the set this card rolled back from on its own: tell the master and
    /// boot the set it rolled back to, without fetching the failed one again.
    fn refuse_rolled_back(&mut self, master: MacAddr, from: Digest) {
        let Some(set) = self.store.flash.inventory().map(|i| i.set.clone()) else {
            return;
        };
        self.send_error(
            master,
            ErrorReason::RolledBack { set: from },
            format!(
                "this card rolled back from set {from} on its own (see its last Alive); booting set {} instead; assign a fixed release",
                set.digest
            ),
        );
        log::warn!(
            "card {}: the plan is set {from}, which this card rolled back from: booting set {} instead",
            self.mac(),
            set.digest
        );
        self.decide_committed(set);
    }

    /// Decide to boot the committed flash set without a master's validation.
    fn decide_committed(&mut self, set: SetRecord) {
        let handoff = handoff_of(&set);
        self.state = State::Done;
        self.outputs.push(Output::Decision(Decision::Boot {
            set,
            handoff,
            autonomous: true,
            validated_only: false,
            persisted: self.store.main_persists(),
        }));
    }

    fn boot_autonomously(&mut self) {
        let Some(inv) = self.store.inventory() else {
            return;
        };
        let set = inv.set.clone();
        log::warn!(
            "card {}: no master answered within {:?}: booting the committed set {} on our own",
            self.mac(),
            self.cfg.timers.autonomy,
            set.digest
        );
        self.decide_committed(set);
    }

    fn on_command(&mut self, now: Instant, cmd: Command) {
        let stamp = match crate::command::admit(
            &self.cfg.anchor,
            self.mac(),
            self.epoch,
            self.last_command,
            &cmd,
        ) {
            Ok(s) => s,
            Err(e) => {
                match e {
                    Refused::Forged(_) => {
                        self.counters.dropped_forged += 1;
                        log::warn!("card {}: dropped command: {}", self.mac(), error_chain(&e));
                    }
                    Refused::NotForUs(_) => self.counters.dropped_not_for_us += 1,
                    Refused::Replayed { .. } => self.counters.dropped_replayed += 1,
                }
                return;
            }
        };
        let b = &cmd.body;
        self.last_command = Some(stamp);
        self.epoch = stamp.0;
        self.counters.commands += 1;
        log::info!(
            "card {}: command {:?} (epoch {}, serial {})",
            self.mac(),
            b.action,
            b.epoch,
            b.serial
        );
        match b.action {
            Action::Reset | Action::WarmBoot | Action::Upgrade => {
                let phase = if b.action != Action::WarmBoot {
                    msg::BootPhase::AfterReset
                } else {
                    msg::BootPhase::WarmBoot
                };
                if let Err(e) = self.store.abort() {
                    log::error!("card {}: {}", self.mac(), error_chain(&e));
                }
                if let State::Fetch(f) = &self.state
                    && let Some(g) = f.group()
                {
                    self.outputs.push(Output::LeaveGroup(g));
                }
                self.state = State::Done;
                self.outputs
                    .push(Output::Decision(Decision::Reset { phase }));
            }
            Action::BurnNow => {
                // Burn this boot's set, report Ready and hold for the WarmBoot. Still
                // discovering: solicit again at once (unless a BurnNow already did).
                let first = !self.hold;
                self.hold = true;
                match &mut self.state {
                    State::Discover { next, .. } if first => *next = now,
                    State::Ready { .. } | State::Done => log::warn!(
                        "card {}: BurnNow after this boot's hand-off was decided: not holding",
                        self.mac()
                    ),
                    _ => {}
                }
            }
            Action::EnterTestMode | Action::LeaveTestMode => {
                // Test mode lives in the master's plan (persist = false); nothing to
                // remember on the card beyond this boot.
            }
        }
    }
}
