//! The master's side of the boot conversation: frames in
//! ([`Service::handle_frame`]), frames out ([`Service::tick`] and the reply of each
//! handled frame), time passed in as an argument.
//!
//! - **Solicit** is queued, one entry per card (a newer Solicit replaces the queued one and
//!   keeps its place), and served round-robin: at most `solicit_budget` per tick while a
//!   transfer runs, every queued one when none does (a warm boot of the whole shelf), so
//!   that a discovery storm of hundreds of cards is served fairly while transfers keep
//!   flowing.
//!   Serving one costs constant work whatever the fleet size: record the identity and
//!   inventory, resolve the plan, sign it. Verdict Continue if the card's inventory
//!   digest equals the plan digest (no artifact byte moves), else Fetch. A card without a
//!   plan gets Error UnknownCard (it is recorded as seen).
//! - **Fetch**, **Nack** and transfer **Progress** go to [`super::sessions`].
//! - **Progress** (overall), **Error** and **Ready** update the node database.
//! - **Alive** (a card's resident agent, every few seconds): the card is present; its
//!   report (health, running set, a rollback of its own, dropped commands) is written when
//!   it changes ([`super::presence`]).
//! - **Presence**: any frame of a card means it is there; [`Service::tick`] records absent
//!   the cards not heard for the absence interval, and a card heard again is present
//!   again ([`super::presence`] decides which).
//! - **Advertise** at start and **Heartbeat** every `heartbeat` carry our epoch.
//! - **Command**: a fleet order of the operator ([`Service::command`]) is signed with the
//!   plan key, (epoch, serial) stamped, and sent [`COMMAND_COPIES`] times
//!   [`COMMAND_SPACING`] apart (cards execute a serial once; the copies ride out a lost
//!   frame).
//! - **Prepare**: a card marked "prepare pending" (`master prepare`) gets a signed unicast
//!   BurnNow before its plan (it burns or validates, reports Ready and holds); its Ready
//!   clears the mark and records it `ready` ("prepared, holding for warm boot").
//!
//! This module does not open sockets or read a clock of its own (see [`super::run`]):
//! monotonic time is the `now` argument; the node database is the state's [`Store`] and
//! its timestamps come from the state's [`crate::state::Clock`], both given with the
//! [`Master`]; the transfer sessions read blob files ([`super::sessions`]).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use shelfboot_proto::frag::{self, EncodeError, Grid, Reassembler};
use shelfboot_proto::frame::{Flags, Frame, FrameError, Header, Link, MacAddr};
use shelfboot_proto::id::Digest;
use shelfboot_proto::msg::{
    self, Action, Advertise, CommandBody, ErrorMsg, ErrorReason, Heartbeat, Message, PlanBody,
    Solicit, Stage, Verdict,
};
use shelfboot_proto::sign::MasterSigner;
use shelfboot_proto::{MAX_CONTROL_BODY_LEN, version};

use super::cards::Cards;
use super::config::ServiceConfig;
use super::presence::{Heard, Presence};
use super::sessions::{Asker, Sessions};
use super::stats::ServeStats;
use crate::resolve::Plan;
use crate::state::{CatalogSnapshot, FleetAction, FleetOrder, Master, MasterError};
use crate::store::{Health, Inventory, InventoryItem, NodeHealth, NodeIdentity, NodeState, Store};

/// Longest agent text recorded per card (the rest is cut).
pub const MAX_DETAIL_LEN: usize = 400;
/// Copies of each fleet Command (the card executes a serial once).
pub const COMMAND_COPIES: u32 = 3;
/// Time between two copies of a fleet Command.
pub const COMMAND_SPACING: Duration = Duration::from_millis(200);

/// A queued Solicit.
struct Pending {
    header: Header,
    solicit: Solicit,
}

/// The master service. See the module docs.
pub struct Service<S: Store> {
    cfg: ServiceConfig,
    master: Master<S>,
    key: MasterSigner,
    mac: MacAddr,
    master_id: u64,
    epoch: u64,
    origin: Instant,
    queue: VecDeque<MacAddr>,
    pending: HashMap<MacAddr, Pending>,
    /// Artifacts of each card's last plan (to check its Fetches).
    plans: HashMap<MacAddr, Plan>,
    /// The answer (a signed Plan, in fragments if large, or an Error) to each card's last
    /// served Solicit, by nonce: a repeated Solicit (the card's retry crossed our answer,
    /// or a fragment was lost) gets the same frames again at no cost, so a discovery storm
    /// does not multiply the work and a partial plan at the card completes.
    answered: HashMap<MacAddr, (msg::Nonce, Vec<Vec<u8>>)>,
    /// Frames of the answer [`Service::serve_solicit`] just sent (for `answered`).
    answer: Vec<Vec<u8>>,
    /// Protocol version each card spoke last (its frames' version byte): what we answer it
    /// in.
    versions: HashMap<MacAddr, u8>,
    /// The port MTU each card's last Solicit said (absent: 1500).
    mtus: HashMap<MacAddr, u16>,
    /// Messages cards send in fragments (inventories); bounded, see [`frag::Limits::MASTER`].
    reasm: Reassembler,
    /// Last node state recorded per card (avoid a database write per Progress).
    states: HashMap<MacAddr, NodeState>,
    /// Cards recorded "prepared, holding": their next boot's Ready is written (it clears
    /// that reason) even though the cached state is already ready.
    prepared: std::collections::HashSet<MacAddr>,
    /// Inventory digest last written per card (a warm boot's Ready repeats what its
    /// Solicit reported: not written twice).
    inventories: HashMap<MacAddr, Option<Digest>>,
    /// Cards whose last Solicit found no prepare mark: their Ready has none to clear.
    unmarked: std::collections::HashSet<MacAddr>,
    /// Cards told to Fetch that have not reported Ready or an error since: who may ask for
    /// an artifact of their plan (a session expects them before its first pass).
    fetchers: std::collections::HashSet<MacAddr>,
    /// The catalog plans are resolved against, read at the first Solicit and again after
    /// every operator request (nothing else changes it: serve holds the state lock).
    catalog: Option<CatalogSnapshot>,
    sessions: Sessions,
    /// What each card is doing now (the `cards` of the stats, for `master watch`).
    cards: Cards,
    /// Which cards are present, and what their agents reported last.
    presence: Presence,
    /// Service time of the last call that passed the time in (the stats' `uptime_ms`).
    last_now: Duration,
    next_heartbeat: Instant,
    sequence: u32,
    stats: ServeStats,
    out: Vec<Vec<u8>>,
    /// Serial of the last fleet Command of this epoch.
    command_serial: u64,
    /// Copies of fleet Commands still to send: (when, frame, copies left).
    command_copies: Vec<(Instant, Vec<u8>, u32)>,
}

impl<S: Store> std::fmt::Debug for Service<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("mac", &self.mac)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Service<S> {
    /// A service for `master`, signing plans and commands with `key` (a plan key, or a
    /// plan key and its certificate, attached to each), sending from `mac`.
    pub fn new(
        cfg: ServiceConfig,
        master: Master<S>,
        key: impl Into<MasterSigner>,
        mac: MacAddr,
        epoch: u64,
        now: Instant,
    ) -> Self {
        let key = key.into();
        let pk = key.public_key().to_bytes();
        let master_id =
            u64::from_be_bytes([pk[0], pk[1], pk[2], pk[3], pk[4], pk[5], pk[6], pk[7]]);
        let mut sessions = Sessions::new(&cfg, mac, master_id);
        let presence = Presence::new(cfg.absence);
        // Transfer ids differ between runs, so a card never takes a new session's frames
        // for an old one's.
        sessions.set_first_transfer((u32::try_from(epoch & 0x7fff).unwrap_or(0) << 16) | 1);
        let mut s = Self {
            cfg,
            master,
            key,
            mac,
            master_id,
            epoch,
            origin: now,
            queue: VecDeque::new(),
            pending: HashMap::new(),
            plans: HashMap::new(),
            answered: HashMap::new(),
            answer: Vec::new(),
            versions: HashMap::new(),
            mtus: HashMap::new(),
            reasm: Reassembler::new(frag::Limits::MASTER),
            states: HashMap::new(),
            prepared: std::collections::HashSet::new(),
            inventories: HashMap::new(),
            unmarked: std::collections::HashSet::new(),
            fetchers: std::collections::HashSet::new(),
            catalog: None,
            sessions,
            cards: Cards::default(),
            presence,
            last_now: Duration::ZERO,
            next_heartbeat: now,
            sequence: 0,
            stats: ServeStats {
                epoch,
                ..ServeStats::default()
            },
            out: Vec::new(),
            command_serial: 0,
            command_copies: Vec::new(),
        };
        let adv = Message::Advertise(Advertise { master_id, epoch });
        s.send(MacAddr::BROADCAST, 0, &adv);
        s
    }

    /// The counters (sessions included).
    pub fn stats(&self) -> ServeStats {
        let mut st = self.stats.clone();
        st.sessions = self.sessions.stats();
        st.artifact_bytes = st.sessions.iter().map(|s| s.artifact_bytes()).sum();
        st.catch_up_sessions = st.sessions.iter().filter(|s| s.catch_up).count() as u64;
        st.reassembly = self.reasm.counters();
        st.cards = self.cards.snapshot();
        st.cards_untracked = self.cards.untracked;
        st.uptime_ms = u64::try_from(self.last_now.as_millis()).unwrap_or(u64::MAX);
        st
    }

    /// Every card heard since the service started, with how many seconds ago.
    pub fn heard_ago(&self) -> impl Iterator<Item = (MacAddr, u64)> + '_ {
        self.presence.heard_ago(self.last_now)
    }

    /// The master state (e.g. for a test to look at the node database).
    pub fn master(&self) -> &Master<S> {
        &self.master
    }

    /// Stops the service and gives its master state back (a cluster member that no longer
    /// leads keeps answering the control socket with it).
    pub fn into_master(self) -> Master<S> {
        self.master
    }

    /// Groups the node-database writes of what is handled until [`Service::commit`] into
    /// one transaction (one fsync per loop iteration instead of one per card report).
    pub fn begin_batch(&mut self) {
        if let Err(e) = self.master.begin_batch() {
            self.stats.db_errors += 1;
            log::error!("master: {}", shelfboot_proto::report::error_chain(&e));
        }
    }

    /// Commits the writes grouped since [`Service::begin_batch`]. Call it before sending
    /// the replies, so that nothing a card is told rests on an uncommitted write.
    pub fn commit(&mut self) {
        if let Err(e) = self.master.end_batch() {
            self.stats.db_errors += 1;
            log::error!("master: {}", shelfboot_proto::report::error_chain(&e));
            // The batch's writes are lost: what the caches say was written may not be.
            self.forget_written();
            self.presence.forget_written();
        }
    }

    /// Drops the caches of what was written to the node database, so that the next
    /// report of each card is written again.
    fn forget_written(&mut self) {
        self.states.clear();
        self.inventories.clear();
        self.unmarked.clear();
    }

    /// The master state, for an operator request on the control socket. The request may
    /// change assignments, test mode or node states behind the service's back, so the
    /// caches of what each card last reported are dropped (the next report is written).
    /// Presence and agents' reports are written by this service alone: their cache
    /// stays, except for cards the database did not know (the request may register them).
    /// The master is told when each card was last heard, for `master nodes`.
    pub fn master_mut(&mut self) -> &mut Master<S> {
        self.forget_written();
        self.catalog = None;
        self.presence.forget_unregistered();
        let heard: Vec<(MacAddr, u64)> = self.heard_ago().collect();
        self.master.set_heard(heard);
        &mut self.master
    }

    /// Counts operator requests served on the control socket.
    pub fn count_control_requests(&mut self, served: u32) {
        self.stats.control_requests += u64::from(served);
    }

    fn since(&mut self, now: Instant) -> Duration {
        let d = now.saturating_duration_since(self.origin);
        self.last_now = self.last_now.max(d);
        d
    }

    /// The protocol version to speak to `dst`: the card's own for unicast; for broadcast
    /// the oldest spoken ([`version::MIN`]: those bodies are the same in every version, and
    /// every card must hear them).
    fn version_for(&self, dst: MacAddr) -> u8 {
        if dst.is_multicast() {
            version::MIN
        } else {
            self.versions.get(&dst).copied().unwrap_or(version::CURRENT)
        }
    }

    /// The fragment grid for `dst`: jumbo only to a card whose port, like ours, takes
    /// 9000-byte frames; broadcasts on the standard grid.
    fn grid_for(&self, dst: MacAddr) -> Grid {
        if dst.is_multicast() {
            return Grid::Standard;
        }
        let card = self.mtus.get(&dst).copied();
        Grid::for_mtu(u32::from(shelfboot_proto::common_mtu(
            Some(self.cfg.link_mtu),
            card,
        )))
    }

    /// Encode `m` to `dst` with `session` echoed (logs a failure).
    fn send(&mut self, dst: MacAddr, session: u32, m: &Message) {
        if let Err(e) = self.try_send(dst, session, m) {
            log::error!(
                "master: encoding {} to {dst} failed: {}",
                m.msg_type(),
                shelfboot_proto::report::error_chain(&e)
            );
        }
    }

    /// Encode `m` to `dst` in the card's version, in fragments if it does not fit one
    /// frame; queue the frames. Returns how many.
    fn try_send(&mut self, dst: MacAddr, session: u32, m: &Message) -> Result<usize, EncodeError> {
        let link = Link {
            dst,
            src: self.mac,
            ethertype: self.cfg.ethertype,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let header =
            Header::new(m.msg_type(), session, self.sequence).in_version(self.version_for(dst));
        let frames = frag::encode_frames_on(self.grid_for(dst), &link, &header, m)?;
        let n = frames.len();
        if n > 1 {
            self.stats.messages_fragmented += 1;
        }
        for f in frames {
            self.push_out(f);
        }
        Ok(n)
    }

    /// Queue one frame to send, counted by type.
    fn push_out(&mut self, frame: Vec<u8>) {
        self.stats.count_out(&frame);
        self.out.push(frame);
    }

    /// A frame arrived. Returns the frames to send now.
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.stats.frames_in += 1;
        let frame = match Frame::decode(bytes, self.cfg.ethertype) {
            Ok(f) => f,
            Err(FrameError::WrongEtherType { .. }) => {
                self.stats.dropped_not_for_us += 1;
                return Vec::new();
            }
            Err(e) => {
                self.stats.dropped_malformed += 1;
                if let (Some((h, m)), Some(src)) = (msg::reply_for(&e), netio_src(bytes)) {
                    self.send(src, h.session, &m);
                }
                return std::mem::take(&mut self.out);
            }
        };
        let link = frame.link();
        if link.src == self.mac || !(link.dst == self.mac || link.dst == MacAddr::BROADCAST) {
            self.stats.dropped_not_for_us += 1;
            return Vec::new();
        }
        self.stats.count_in(frame.header().msg_type);
        self.versions.insert(link.src, frame.header().version);
        let (header, decoded) = if frame.header().flags.contains(Flags::FRAGMENT) {
            match self.reasm.push(now, &frame) {
                Ok(None) => return std::mem::take(&mut self.out),
                Ok(Some(whole)) => (whole.header, whole.decode()),
                Err(e) => {
                    log::debug!("master: dropped fragment from {}: {e}", link.src);
                    self.stats.dropped_malformed += 1;
                    return Vec::new();
                }
            }
        } else {
            (frame.header(), msg::decode_message(&frame))
        };
        let message = match decoded {
            Ok(m) => m,
            Err(e) => {
                log::debug!("master: dropped frame from {}: {e}", link.src);
                self.stats.dropped_malformed += 1;
                return Vec::new();
            }
        };
        let src = link.src;
        let since = self.since(now);
        // Messages only a master sends do not make a card record.
        if !matches!(
            message,
            Message::Advertise(_)
                | Message::Heartbeat(_)
                | Message::Plan(_)
                | Message::Join(_)
                | Message::Command(_)
        ) {
            self.note_card(src, since);
        }
        match message {
            Message::Solicit(s) => self.on_solicit(src, header, s),
            Message::Fetch(f) => {
                self.stats.fetches += 1;
                let allowed = self.entitled(src, &f.artifact);
                match allowed {
                    Some(a) => {
                        let session = header.session;
                        let mtu = self.mtus.get(&src).copied();
                        let expected = self.fetching_with(&a.sha256).max(1);
                        let asker = Asker {
                            card: src,
                            mtu,
                            expected,
                        };
                        let joins =
                            self.sessions
                                .on_fetch(asker, &a, &f, since, self.master.blobs());
                        match joins {
                            Ok(join) => {
                                self.stats.joins += 1;
                                self.send(src, session, &Message::Join(join));
                            }
                            Err(e) => {
                                self.stats.fetches_refused += 1;
                                log::error!(
                                    "master: cannot serve {src}: {}",
                                    shelfboot_proto::report::error_chain(&e)
                                );
                            }
                        }
                    }
                    None => {
                        self.stats.fetches_refused += 1;
                        log::warn!(
                            "master: {src} asked for artifact {} that is not in its plan: refused",
                            f.artifact
                        );
                    }
                }
            }
            Message::Nack(n) => {
                if !self.sessions.on_nack(src, &n, since) {
                    self.stats.dropped_unexpected += 1;
                }
            }
            Message::Progress(p) => {
                self.cards.progress(src, &p, since);
                if p.artifact.is_some() {
                    self.sessions.on_progress(src, &p, since);
                }
                let state = match p.stage {
                    Stage::Committing => NodeState::Committing,
                    _ => NodeState::Fetching,
                };
                self.set_state(src, state, None);
            }
            Message::Ready(r) => {
                self.stats.ready += 1;
                self.cards.ready(src, r.persisted, since);
                self.fetchers.remove(&src);
                self.on_ready(src, r.digest, r.persisted);
            }
            Message::Error(e) => {
                self.stats.card_errors += 1;
                self.sessions.forget(src, since);
                log::warn!("master: card {src} reports {:?}: {}", e.reason, e.detail);
                let text = format!("{:?}: {}", e.reason, e.detail);
                self.cards.failed(src, false, &text, since);
                self.fetchers.remove(&src);
                self.set_state(src, NodeState::Failed, Some(&text));
            }
            Message::Advertise(_)
            | Message::Heartbeat(_)
            | Message::Plan(_)
            | Message::Join(_)
            | Message::Command(_) => self.stats.dropped_unexpected += 1,
            Message::Alive(a) => self.on_alive(src, &a, since),
            Message::Inventory(i) => {
                self.stats.inventories += 1;
                let inv = Inventory {
                    digest: i.inventory_digest,
                    items: inventory_items(&i.inventory),
                };
                if let Err(e) = self.master.record_inventory(&src, &inv) {
                    self.stats.db_errors += 1;
                    log::error!(
                        "master: inventory of {src}: {}",
                        shelfboot_proto::report::error_chain(&e)
                    );
                }
            }
        }
        std::mem::take(&mut self.out)
    }

    /// The artifact with sha256 `sha` if it is in the plan of `card`.
    fn entitled(&mut self, card: MacAddr, sha: &Digest) -> Option<msg::ArtifactRef> {
        if !self.plans.contains_key(&card) {
            // After a master restart a card resumes with Fetch without soliciting again.
            let plan = self.master.plan(&card).ok()?;
            self.plans.insert(card, plan);
        }
        self.plans
            .get(&card)?
            .artifact_refs()
            .into_iter()
            .find(|a| &a.sha256 == sha)
    }

    /// Cards fetching now whose plan has the artifact `sha`: who may ask for it soon.
    fn fetching_with(&self, sha: &Digest) -> usize {
        self.fetchers
            .iter()
            .filter(|card| self.plans.get(card).is_some_and(|p| p.has_artifact(sha)))
            .count()
    }

    fn on_solicit(&mut self, src: MacAddr, header: Header, s: Solicit) {
        self.stats.solicits += 1;
        if s.mac != src {
            // A card speaks for itself only.
            self.stats.dropped_unexpected += 1;
            return;
        }
        match s.link_mtu {
            Some(mtu) => self.mtus.insert(src, mtu),
            None => self.mtus.remove(&src),
        };
        if let Some((nonce, frame)) = self.answered.get(&src)
            && *nonce == s.nonce
        {
            self.stats.solicits_repeated += 1;
            for f in frame.clone() {
                self.push_out(f);
            }
            return;
        }
        let since = self.last_now;
        self.cards.identify(
            src,
            u32::from(s.shelf),
            u32::from(s.slot),
            &s.card_type,
            since,
        );
        self.cards.solicited(src, since);
        let p = Pending { header, solicit: s };
        if self.pending.insert(src, p).is_some() {
            self.stats.solicits_coalesced += 1;
        } else {
            self.queue.push_back(src);
            self.stats.solicit_queue_high_water = self
                .stats
                .solicit_queue_high_water
                .max(self.queue.len() as u64);
        }
    }

    /// Serve one queued Solicit.
    fn serve_solicit(&mut self, src: MacAddr, p: Pending) {
        self.stats.solicits_served += 1;
        let s = &p.solicit;
        if self.prepared.remove(&src) {
            self.states.remove(&src);
        }
        let id = NodeIdentity {
            mac: src,
            card_type: s.card_type.clone(),
            arch: s.arch,
            shelf: u32::from(s.shelf),
            slot: u32::from(s.slot),
            hw_rev: s.hw_rev.clone(),
            features: s.features.clone(),
        };
        if self.catalog.is_none() {
            match self.master.catalog() {
                Ok(c) => self.catalog = Some(c),
                Err(e) => {
                    self.stats.db_errors += 1;
                    log::error!(
                        "master: reading the catalog for {src}: {}",
                        shelfboot_proto::report::error_chain(&e)
                    );
                    return;
                }
            }
        }
        let Some(catalog) = &self.catalog else { return };
        let recorded = self.master.record_solicit_in(catalog, &id);
        if matches!(recorded, Ok(_) | Err(MasterError::Plan { .. })) {
            // The card is registered now, and recorded present.
            self.presence.registered(src, self.last_now);
        }
        let plan = match recorded {
            Ok(plan) => plan,
            Err(MasterError::Plan { source, .. }) => {
                self.stats.unknown_cards += 1;
                let detail = format!(
                    "no plan for card {src} ({} slot {}): {}",
                    s.card_type,
                    s.slot,
                    shelfboot_proto::report::error_chain(&source)
                );
                log::warn!("master: {detail}");
                self.cards.failed(src, true, &detail, self.last_now);
                let e = Message::Error(ErrorMsg {
                    reason: ErrorReason::UnknownCard,
                    detail: truncate(detail, 400),
                });
                let before = self.out.len();
                self.send(src, p.header.session, &e);
                self.answer = self.out[before..].to_vec();
                return;
            }
            Err(e) => {
                self.stats.db_errors += 1;
                log::error!(
                    "master: Solicit of {src}: {}",
                    shelfboot_proto::report::error_chain(&e)
                );
                return;
            }
        };
        let peer = self.versions.get(&src).copied().unwrap_or(version::CURRENT);
        // The inventory: as reported; or, when the Solicit left the list out, the plan's
        // items if the digest says it is the plan's set, the recorded items if the
        // database already has that digest, else the card is asked for it.
        let mut ask_inventory = false;
        let inv = if !s.inventory_omitted {
            Some(Inventory {
                digest: s.inventory_digest,
                items: inventory_items(&s.inventory),
            })
        } else if s.inventory_digest == Some(plan.digest) {
            Some(Inventory {
                digest: s.inventory_digest,
                items: inventory_items(&plan.artifact_refs()),
            })
        } else {
            let known = self
                .master
                .store()
                .node(&src)
                .ok()
                .flatten()
                .and_then(|n| n.inventory)
                .is_some_and(|i| i.digest == s.inventory_digest);
            ask_inventory = !known && s.inventory_digest.is_some();
            None
        };
        if let Some(inv) = inv {
            self.record_inventory(src, &inv);
        }
        let refs = plan.artifact_refs();
        let plan_bytes: u64 = refs.iter().map(|a| a.size).sum();
        let verdict = if s.inventory_digest == Some(plan.digest) {
            self.stats.plans_continue += 1;
            self.fetchers.remove(&src);
            Verdict::Continue
        } else {
            self.stats.plans_fetch += 1;
            self.fetchers.insert(src);
            // A card that reported a failure (NoSpace, say) and asks again keeps its
            // failure and reason until it actually moves (Progress, Ready): otherwise
            // `master nodes` would say "fetching" for a card that cannot fetch.
            // The cache is empty after an operator request or a restart: ask the database.
            let last = match self.states.get(&src) {
                Some(st) => Some(*st),
                None => self
                    .master
                    .store()
                    .node(&src)
                    .ok()
                    .flatten()
                    .map(|n| n.state),
            };
            if last == Some(NodeState::Failed) {
                self.states.insert(src, NodeState::Failed);
            } else {
                self.set_state(src, NodeState::Fetching, None);
            }
            Verdict::Fetch
        };
        // What the card lacks: the artifacts its inventory does not list (all of them
        // when it left the list out); its own Progress reports correct this.
        let fetch_bytes = match verdict {
            Verdict::Continue => 0,
            Verdict::Fetch if s.inventory_omitted => plan_bytes,
            Verdict::Fetch => refs
                .iter()
                .filter(|a| !s.inventory.iter().any(|i| i.sha256 == a.sha256))
                .map(|a| a.size)
                .sum(),
        };
        let since = self.last_now;
        self.cards.planned(src, plan_bytes, fetch_bytes, since);
        let mut body = PlanBody {
            artifacts: plan.artifact_refs(),
            cmdline: plan.cmdline.clone(),
            persist: plan.persist,
            verdict,
            digest: plan.digest,
            nonce: s.nonce,
            epoch: self.epoch,
            artifacts_omitted: false,
            report_inventory: ask_inventory && peer >= version::FRAGMENTS,
        };
        self.plans.insert(src, plan);
        // Whether the card must clear a prepare mark when it is Ready: only if its Solicit
        // found one (or the lookup failed and it is not known).
        let marked = match self.master.prepare_pending(&src) {
            Ok(m) => {
                if m {
                    self.unmarked.remove(&src);
                } else {
                    self.unmarked.insert(src);
                }
                m
            }
            Err(e) => {
                self.stats.db_errors += 1;
                log::error!(
                    "master: prepare mark of {src}: {}",
                    shelfboot_proto::report::error_chain(&e)
                );
                self.unmarked.remove(&src);
                false
            }
        };
        if marked {
            // `master prepare`: burn (or validate) and hold for the warm boot, whatever
            // the verdict. The BurnNow goes first, so the card holds before it acts.
            self.burn_now(src, p.header.session);
        }
        let whole_len = Message::Plan(msg::Plan {
            body: body.clone(),
            signature: msg::Signature([0; msg::SIGNATURE_LEN]),
            cert: self.key.cert().copied(),
        })
        .encode_long_body()
        .map(|b| b.len());
        if verdict == Verdict::Continue
            && body.persist
            && peer >= version::FRAGMENTS
            && whole_len
                .as_ref()
                .map_or(true, |n| *n > MAX_CONTROL_BODY_LEN)
        {
            // The warm boot stays one frame: the digest stands for the set, the card
            // checks it against its committed set.
            self.stats.plans_digest_only += 1;
            body.artifacts.clear();
            body.cmdline.clear();
            body.artifacts_omitted = true;
        }
        let signed = match self.key.sign_plan(body) {
            Ok(signed) => signed,
            Err(e) => {
                return log::error!(
                    "master: signing the plan of {src}: {}",
                    shelfboot_proto::report::error_chain(&e)
                );
            }
        };
        let before = self.out.len();
        match self.try_send(src, p.header.session, &Message::Plan(signed)) {
            Ok(_) => self.answer = self.out[before..].to_vec(),
            Err(e) => self.undeliverable(src, p.header.session, peer, &e),
        }
    }

    /// The plan of `src` cannot go on the wire (over the message limit, or a version-1
    /// card and a plan larger than one frame): tell the card (an Error it logs on its
    /// console) and record the reason so that `master nodes` shows it.
    fn undeliverable(&mut self, src: MacAddr, session: u32, peer: u8, e: &EncodeError) {
        self.stats.plans_undeliverable += 1;
        let (reason, detail) = match e {
            EncodeError::NeedsFragments { len, .. } => (
                ErrorReason::UnsupportedVersion {
                    min: version::FRAGMENTS,
                    max: version::CURRENT,
                },
                format!(
                    "the plan of this card is {len} bytes, more than one frame ({MAX_CONTROL_BODY_LEN}); protocol version {peer} has no fragments: the card needs protocol version {} (update its initramfs)",
                    version::FRAGMENTS
                ),
            ),
            EncodeError::Msg(msg::MsgError::TooLarge { len, max, .. }) => (
                ErrorReason::MessageTooLarge {
                    len: *len as u64,
                    max: *max as u64,
                },
                format!(
                    "the plan of this card is {len} bytes, over the {max}-byte message limit: split the release (fewer or shorter-named packages for this class)"
                ),
            ),
            EncodeError::Msg(other) => (
                ErrorReason::Malformed,
                format!(
                    "the plan of this card cannot be encoded: {}",
                    shelfboot_proto::report::error_chain(other)
                ),
            ),
        };
        // A version-1 card does not know MessageTooLarge: it gets UnsupportedVersion.
        let reason = match reason {
            ErrorReason::MessageTooLarge { .. } if peer < version::FRAGMENTS => {
                ErrorReason::UnsupportedVersion {
                    min: version::FRAGMENTS,
                    max: version::CURRENT,
                }
            }
            r => r,
        };
        log::error!("master: cannot deliver the plan of {src}: {detail}");
        let text = format!("plan undeliverable: {detail}");
        self.cards.failed(src, false, &text, self.last_now);
        self.states.remove(&src);
        self.set_state(src, NodeState::Failed, Some(&text));
        let before = self.out.len();
        self.send(
            src,
            session,
            &Message::Error(ErrorMsg {
                reason,
                detail: truncate(detail, 400),
            }),
        );
        self.answer = self.out[before..].to_vec();
    }

    fn on_ready(&mut self, src: MacAddr, digest: Digest, persisted: bool) {
        let state = match self.plans.get(&src) {
            _ if persisted => NodeState::Ready,
            Some(p) if !p.test => NodeState::Ram,
            _ => NodeState::Test,
        };
        // `master prepare`: the card holds now; `master nodes` says so.
        if persisted && !self.unmarked.contains(&src) {
            match self.master.record_prepared(&src) {
                Ok(true) => {
                    log::info!("master: {src} prepared, holding for the warm boot");
                    self.states.insert(src, state);
                    self.prepared.insert(src);
                }
                Ok(false) => {}
                Err(e) => {
                    self.stats.db_errors += 1;
                    log::error!(
                        "master: prepare mark of {src}: {}",
                        shelfboot_proto::report::error_chain(&e)
                    );
                }
            }
        }
        let Some(plan) = self.plans.get(&src) else {
            return self.set_state(src, state, None);
        };
        if plan.digest != digest {
            log::warn!(
                "master: {src} is ready with set {digest} but its plan is {}",
                plan.digest
            );
        }
        // A set in RAM (persisted = false: test mode, RAM-first, no usable flash) is gone
        // at the next reset: the inventory the node database records is what the card's
        // Solicit reported.
        if persisted && plan.digest == digest {
            let inv = Inventory {
                digest: Some(digest),
                items: inventory_items(&plan.artifact_refs()),
            };
            self.record_inventory(src, &inv);
        }
        self.set_state(src, state, None);
    }

    /// Record a card's inventory (only when it differs from the one last written: a
    /// committed set is known by its digest; one without a digest, a pristine card's
    /// partial holdings, is always written).
    fn record_inventory(&mut self, src: MacAddr, inv: &Inventory) {
        if inv.digest.is_some() && self.inventories.get(&src) == Some(&inv.digest) {
            return;
        }
        match self.master.record_inventory(&src, inv) {
            Ok(()) => {
                self.inventories.insert(src, inv.digest);
            }
            Err(e) => {
                self.stats.db_errors += 1;
                log::error!(
                    "master: inventory of {src}: {}",
                    shelfboot_proto::report::error_chain(&e)
                );
            }
        }
    }

    /// Record a node state (only on change, except failures which carry a reason).
    fn set_state(&mut self, src: MacAddr, state: NodeState, reason: Option<&str>) {
        if reason.is_none() && self.states.get(&src) == Some(&state) {
            return;
        }
        let r = match reason {
            Some(text) => self.master.record_error(&src, text),
            None => self.master.record_state(&src, state),
        };
        match r {
            Ok(()) => {
                self.states.insert(src, state);
            }
            Err(e) => {
                self.stats.db_errors += 1;
                log::debug!(
                    "master: state of {src}: {}",
                    shelfboot_proto::report::error_chain(&e)
                );
            }
        }
    }

    /// Sends a fleet order as a signed Command: to its target card, or broadcast. The
    /// first copy goes out with the next frames returned; the rest from [`Service::tick`].
    pub fn command(&mut self, now: Instant, order: &FleetOrder) {
        self.command_serial += 1;
        let action = match order.action {
            FleetAction::Prepare => Action::BurnNow,
            FleetAction::WarmBoot => Action::WarmBoot,
            FleetAction::Reset => Action::Reset,
            FleetAction::Upgrade => Action::Upgrade,
        };
        let target = order.target;
        let body = CommandBody {
            action,
            target,
            epoch: self.epoch,
            serial: self.command_serial,
        };
        let signed = match self.key.sign_command(body) {
            Ok(c) => c,
            Err(e) => {
                return log::error!(
                    "master: signing the {} command: {}",
                    order.action,
                    shelfboot_proto::report::error_chain(&e)
                );
            }
        };
        let dst = target.unwrap_or(MacAddr::BROADCAST);
        let before = self.out.len();
        self.send(dst, 0, &Message::Command(signed));
        if let Some(frame) = self.out.get(before).cloned() {
            self.stats.commands_sent += 1;
            log::info!(
                "master: {} ordered: Command {action:?} serial {} (epoch {}) to {dst}",
                order.action,
                self.command_serial,
                self.epoch
            );
            self.command_copies
                .push((now + COMMAND_SPACING, frame, COMMAND_COPIES - 1));
        }
    }

    /// A signed unicast BurnNow to a card marked "prepare pending", sent with its plan.
    fn burn_now(&mut self, card: MacAddr, session: u32) {
        self.command_serial += 1;
        let body = CommandBody {
            action: Action::BurnNow,
            target: Some(card),
            epoch: self.epoch,
            serial: self.command_serial,
        };
        match self.key.sign_command(body) {
            Ok(c) => {
                self.stats.commands_sent += 1;
                log::info!(
                    "master: {card} is to prepare: BurnNow serial {} before its plan",
                    self.command_serial
                );
                self.send(card, session, &Message::Command(c));
            }
            Err(e) => log::error!(
                "master: signing the BurnNow of {card}: {}",
                shelfboot_proto::report::error_chain(&e)
            ),
        }
    }

    /// A frame of `card` arrived: keep its last-seen time, and record it present again if
    /// it was absent. A card first heard without a Solicit (it resumes a transfer after a
    /// master restart, or its agent reports) is looked up in the node database once, for
    /// its shelf, slot and type and its presence.
    fn note_card(&mut self, card: MacAddr, since: Duration) {
        self.load_presence(since);
        let heard = self.presence.heard(card, since);
        let identify = !self.cards.knows(&card) && !self.cards.is_full();
        let mut node = None;
        if identify || heard == Heard::New {
            match self.master.store().node(&card) {
                Ok(n) => node = n,
                Err(e) => {
                    self.stats.db_errors += 1;
                    log::error!(
                        "master: looking up {card}: {}",
                        shelfboot_proto::report::error_chain(&e)
                    );
                    if heard == Heard::New {
                        // Not known to be unregistered: looked up again at its next frame.
                        self.presence.forget_new(&card);
                        return self.cards.seen(card, since);
                    }
                }
            }
        }
        match &node {
            Some(n) if identify => self.cards.identify(
                card,
                n.identity.shelf,
                n.identity.slot,
                &n.identity.card_type,
                since,
            ),
            _ => self.cards.seen(card, since),
        }
        let heard = match heard {
            Heard::New => self.presence.identify(card, node.as_ref(), since),
            h => h,
        };
        if heard == Heard::Returned {
            self.stats.cards_returned += 1;
            log::info!("master: {card} is present again");
            if let Err(e) = self.master.mark_present(&card) {
                self.stats.db_errors += 1;
                // What the database holds is read again before the next decision.
                self.presence.forget_written();
                log::error!(
                    "master: presence of {card}: {}",
                    shelfboot_proto::report::error_chain(&e)
                );
            }
        }
    }

    /// Reads what the node database says of every card's presence and report, when due
    /// (at the start, and after a batch of writes was lost).
    fn load_presence(&mut self, since: Duration) {
        if !self.presence.is_stale() {
            return;
        }
        match self.master.store().nodes() {
            Ok(nodes) => self.presence.load(&nodes, since),
            Err(e) => {
                self.stats.db_errors += 1;
                log::error!(
                    "master: reading the node database for presence: {}",
                    shelfboot_proto::report::error_chain(&e)
                );
            }
        }
    }

    /// An Alive of a card's resident agent: its report is written if it changed.
    fn on_alive(&mut self, src: MacAddr, a: &msg::Alive, since: Duration) {
        self.stats.alives += 1;
        let report = NodeHealth {
            health: match a.health {
                msg::Health::Unchecked => Health::None,
                msg::Health::Checking => Health::Checking,
                msg::Health::Healthy => Health::Healthy,
                msg::Health::Unhealthy => Health::Unhealthy,
            },
            running: a.running,
            rolled_back_from: a.rolled_back_from,
            dropped: u64::from(a.dropped),
            detail: truncate(a.detail.clone(), MAX_DETAIL_LEN),
        };
        self.cards.health(src, report.summary(), since);
        if !self.presence.report_due(&src, &report, since) {
            return;
        }
        if let Some(from) = report.rolled_back_from {
            log::warn!(
                "master: {src} reports it rolled back on its own from set {}: {}",
                from.short(),
                report.detail
            );
        } else if report.health == Health::Unhealthy {
            log::warn!("master: {src} reports its set unhealthy: {}", report.detail);
        }
        match self.master.record_health(&src, &report) {
            Ok(()) => {
                self.stats.health_writes += 1;
                self.presence.reported(&src, &report, since);
            }
            Err(e) => {
                self.stats.db_errors += 1;
                log::error!(
                    "master: health report of {src}: {}",
                    shelfboot_proto::report::error_chain(&e)
                );
            }
        }
    }

    /// Records absent the cards not heard for the absence interval (at most once a
    /// second, a bounded number at a time).
    fn check_presence(&mut self, since: Duration) {
        self.load_presence(since);
        for (card, silent) in self.presence.expired(since) {
            self.stats.cards_absent += 1;
            self.cards.absent(&card);
            log::warn!(
                "master: {card} not heard for {} s: absent",
                silent.as_secs()
            );
            if let Err(e) = self.master.mark_absent(&card, silent.as_secs()) {
                self.stats.db_errors += 1;
                self.presence.forget_written();
                log::error!(
                    "master: absence of {card}: {}",
                    shelfboot_proto::report::error_chain(&e)
                );
            }
        }
    }

    /// Time passes: serve queued Solicits, heartbeat. Returns control frames to send.
    pub fn tick(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let since = self.since(now);
        self.check_presence(since);
        for (at, frame, left) in &mut self.command_copies {
            if now >= *at && *left > 0 {
                *left -= 1;
                *at = now + COMMAND_SPACING;
                self.stats.commands_sent += 1;
                let f = frame.clone();
                self.stats.count_out(&f);
                self.out.push(f);
            }
        }
        self.command_copies.retain(|(_, _, left)| *left > 0);
        // The budget keeps Solicits from delaying a running transfer's frames; with no
        // session sending (a warm boot of the whole shelf) every queued Solicit is
        // answered now, so 1000 cards do not wait 1000/budget loop turns.
        let budget = if self.sessions.is_idle() {
            self.queue.len().max(self.cfg.solicit_budget)
        } else {
            self.cfg.solicit_budget
        };
        for _ in 0..budget {
            let Some(src) = self.queue.pop_front() else {
                break;
            };
            if let Some(p) = self.pending.remove(&src) {
                let nonce = p.solicit.nonce;
                self.answer.clear();
                self.serve_solicit(src, p);
                if !self.answer.is_empty() {
                    let frames = std::mem::take(&mut self.answer);
                    self.answered.insert(src, (nonce, frames));
                }
            }
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.cfg.heartbeat;
            self.stats.heartbeats += 1;
            let hb = Message::Heartbeat(Heartbeat {
                master_id: self.master_id,
                epoch: self.epoch,
            });
            self.send(MacAddr::BROADCAST, 0, &hb);
        }
        std::mem::take(&mut self.out)
    }

    /// Solicits waiting to be served.
    pub fn queued_solicits(&self) -> usize {
        self.queue.len()
    }

    /// Data frames due at `now`, at most `max`, appended to `out`. Returns when to call
    /// again at the latest.
    pub fn poll_data(&mut self, now: Instant, max: usize, out: &mut Vec<Vec<u8>>) -> Instant {
        let since = self.since(now);
        let before = out.len();
        let wake = self.sessions.poll(since, max, out);
        for f in &out[before..] {
            self.stats.count_out(f);
        }
        let next_control = if self.queue.is_empty() {
            self.next_heartbeat
        } else {
            now
        };
        (self.origin + wake).min(next_control)
    }
}

/// Source MAC of a raw frame, if it has an Ethernet header.
fn netio_src(bytes: &[u8]) -> Option<MacAddr> {
    let b = bytes.get(6..12)?;
    let mut m = [0u8; 6];
    m.copy_from_slice(b);
    Some(MacAddr(m))
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The node database's record of a set of artifacts (what a card reports or was planned).
fn inventory_items(refs: &[msg::ArtifactRef]) -> Vec<InventoryItem> {
    refs.iter()
        .map(|a| InventoryItem {
            kind: match a.kind {
                msg::ArtifactKind::BootImage => "boot".into(),
                msg::ArtifactKind::Package => "package".into(),
            },
            name: a.name.clone(),
            version: a.version.clone(),
            sha256: a.sha256,
        })
        .collect()
}
