//! The one loop between card agents and a frame port: it calls the agents' timers, hands
//! them the frames addressed to them, sends what they output and keeps the port's
//! multicast memberships. Init drives one agent with it over the backplane socket;
//! `simcard` drives N agents (distinct MACs) over one socket.
//!
//! ```text
//! loop (the caller's):  driver.tick(seats)          due timers → frames out
//!                       (the caller logs, reports, decides whether to stop)
//!                       driver.receive(seats, wait) frames in → agents → frames out
//! ```
//!
//! A received frame goes to the agent whose MAC it is addressed to, to every agent for
//! broadcast, and to the agents in a transfer group for multicast; frames for nobody are
//! dropped here. A group is joined on the port when its first agent joins and left when
//! its last one leaves. Frames are handed to the agents straight from the port's receive
//! batch (no copy), each stamped when it is handled, so that an agent busy with flash
//! does not mistake queued frames for silence. Each agent's [`crate::agent::Decision`] is
//! kept in its [`Seat`].
//!
//! Not here: what an agent decides ([`crate::agent`]), what is booted ([`crate::boot`]),
//! opening the port (the callers do, with the ring sizes they need).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shelfboot_netio::FrameIo;
use shelfboot_proto::frame::MacAddr;

use crate::agent::{Agent, Decision, Output};
use crate::flash::Volumes;

/// One agent and what the driver keeps for it. `T` is the caller's own data (a simulated
/// card's spec; nothing for init).
#[derive(Debug)]
pub struct Seat<V: Volumes, T = ()> {
    /// The agent.
    pub agent: Agent<V>,
    /// The caller's data.
    pub tag: T,
    /// The agent's decision, once it made one.
    pub decision: Option<Decision>,
    /// When the decision came.
    pub decided_at: Option<Instant>,
    groups: Vec<MacAddr>,
}

impl<V: Volumes, T> Seat<V, T> {
    /// A seat for `agent`, undecided.
    pub fn new(agent: Agent<V>, tag: T) -> Self {
        Self {
            agent,
            tag,
            decision: None,
            decided_at: None,
            groups: Vec::new(),
        }
    }

    /// Give the agent back (to take its stores).
    pub fn into_agent(self) -> Agent<V> {
        self.agent
    }
}

/// A card joined (true) or left (false) a multicast group; the port follows in
/// [`Driver::sync_groups`].
type GroupChange = (bool, MacAddr);

/// The loop's state over one port (see the module docs).
#[derive(Debug)]
pub struct Driver<'a, F: FrameIo> {
    io: &'a mut F,
    /// Seat index by MAC, built at the first [`Driver::receive`] and again only when the
    /// seats change (a seat's MAC is fixed for its agent's life): one lookup per frame,
    /// not a map of every seat per receive call.
    by_mac: HashMap<MacAddr, usize>,
    group_refs: HashMap<MacAddr, usize>,
    changes: Vec<GroupChange>,
    out: Vec<Vec<u8>>,
    sent: u64,
}

impl<'a, F: FrameIo> Driver<'a, F> {
    /// A driver over `io`, with no group joined.
    pub fn new(io: &'a mut F) -> Self {
        Self {
            io,
            by_mac: HashMap::new(),
            group_refs: HashMap::new(),
            changes: Vec::new(),
            out: Vec::new(),
            sent: 0,
        }
    }

    /// Frames handed to the port so far.
    pub fn frames_sent(&self) -> u64 {
        self.sent
    }

    /// How long [`Driver::receive`] may wait: until the seats' nearest deadline, at most
    /// `cap`.
    pub fn wait<V: Volumes, T>(seats: &[Seat<V, T>], now: Instant, cap: Duration) -> Duration {
        seats
            .iter()
            .filter_map(|s| s.agent.next_deadline())
            .min()
            .map_or(cap, |d| d.saturating_duration_since(now))
            .min(cap)
    }

    /// Calls the timers that are due and sends what they output. Returns whether a
    /// seat's reportable state changed (a decision, or frames sent).
    pub fn tick<V: Volumes, T>(&mut self, seats: &mut [Seat<V, T>]) -> bool {
        let now = Instant::now();
        let mut changed = false;
        for s in seats.iter_mut() {
            if s.agent.next_deadline().is_some_and(|d| d <= now) {
                let o = s.agent.tick(now);
                changed |= apply(s, o, &mut self.out, &mut self.changes);
            }
        }
        self.flush();
        changed
    }

    /// Waits up to `wait` for frames, hands every one received to the seats it is
    /// addressed to and sends what they output. Returns (frames received, whether a seat's
    /// reportable state changed). Pass the same seats, in the same order, at every call
    /// (the loop's own): their index by MAC is kept between calls.
    pub fn receive<V: Volumes, T>(
        &mut self,
        seats: &mut [Seat<V, T>],
        wait: Duration,
    ) -> Result<(usize, bool), F::Error> {
        let at = |i: usize| seats.get(i).map(|s| (s.agent.mac(), i));
        let stale = self.by_mac.len() != seats.len()
            || [at(0), seats.len().checked_sub(1).and_then(at)]
                .into_iter()
                .flatten()
                .any(|(mac, i)| self.by_mac.get(&mac) != Some(&i));
        if stale {
            self.by_mac = seats
                .iter()
                .enumerate()
                .map(|(i, s)| (s.agent.mac(), i))
                .collect();
        }
        let by_mac = &self.by_mac;
        let mut changed = false;
        let out = &mut self.out;
        let changes = &mut self.changes;
        let r = self.io.recv_batch(
            &mut |f: &[u8], _| changed |= dispatch(seats, by_mac, f, out, changes),
            wait,
        );
        self.flush();
        r.map(|n| (n, changed))
    }

    /// Group changes to the port, then the queued frames.
    fn flush(&mut self) {
        self.sync_groups();
        if self.out.is_empty() {
            return;
        }
        let refs: Vec<&[u8]> = self.out.iter().map(Vec::as_slice).collect();
        match self.io.send_batch(&refs) {
            Ok(n) => self.sent += n as u64,
            Err(e) => log::error!(
                "card driver: send: {}",
                shelfboot_proto::report::error_chain(&e)
            ),
        }
        self.out.clear();
    }

    /// Join or leave groups on the port as the seats' membership counts cross zero.
    fn sync_groups(&mut self) {
        for (join, g) in self.changes.drain(..) {
            let port_group = shelfboot_netio::MacAddr(g.0);
            if join {
                let n = self.group_refs.entry(g).or_insert(0);
                *n += 1;
                if *n == 1
                    && let Err(e) = self.io.join(port_group)
                {
                    log::error!(
                        "card driver: joining group {g}: {}",
                        shelfboot_proto::report::error_chain(&e)
                    );
                }
            } else if let Some(n) = self.group_refs.get_mut(&g) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.group_refs.remove(&g);
                    if let Err(e) = self.io.leave(port_group) {
                        log::warn!(
                            "card driver: leaving group {g}: {}",
                            shelfboot_proto::report::error_chain(&e)
                        );
                    }
                }
            }
        }
    }
}

/// Hand one received frame to the seats it is addressed to. Returns whether a seat's
/// reportable state changed.
fn dispatch<V: Volumes, T>(
    seats: &mut [Seat<V, T>],
    by_mac: &HashMap<MacAddr, usize>,
    f: &[u8],
    out: &mut Vec<Vec<u8>>,
    changes: &mut Vec<GroupChange>,
) -> bool {
    let now = Instant::now();
    let Some(dst) = f.get(..6) else { return false };
    let mut d = [0u8; 6];
    d.copy_from_slice(dst);
    let dst = MacAddr(d);
    let mut changed = false;
    if dst == MacAddr::BROADCAST {
        for s in seats.iter_mut() {
            let o = s.agent.handle_frame(now, f);
            changed |= apply(s, o, out, changes);
        }
    } else if dst.is_multicast() {
        for s in seats.iter_mut().filter(|s| s.groups.contains(&dst)) {
            let o = s.agent.handle_frame(now, f);
            changed |= apply(s, o, out, changes);
        }
    } else if let Some(s) = by_mac.get(&dst).and_then(|&i| seats.get_mut(i)) {
        let o = s.agent.handle_frame(now, f);
        changed |= apply(s, o, out, changes);
    }
    changed
}

/// Carry out one seat's outputs (frames to `out`, group changes to `changes`). Returns
/// whether its reportable state changed.
fn apply<V: Volumes, T>(
    s: &mut Seat<V, T>,
    outputs: Vec<Output>,
    out: &mut Vec<Vec<u8>>,
    changes: &mut Vec<GroupChange>,
) -> bool {
    let mut changed = false;
    for o in outputs {
        match o {
            Output::Send(f) => out.push(f),
            Output::JoinGroup(g) => {
                s.groups.push(g);
                changes.push((true, g));
            }
            Output::LeaveGroup(g) => {
                s.groups.retain(|x| *x != g);
                changes.push((false, g));
            }
            Output::Decision(d) => {
                log::debug!("card {}: decided {d:?}", s.agent.mac());
                s.decision = Some(d);
                s.decided_at.get_or_insert_with(Instant::now);
                changed = true;
            }
        }
    }
    changed || !out.is_empty()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use shelfboot_proto::msg::{Arch, BootPhase, Message, decode_frame};
    use shelfboot_proto::sign::{SigningKey, TrustAnchor};

    use super::*;
    use crate::agent::{AgentConfig, Identity, Timers};
    use crate::flash::{FakeVolumes, Store, StoreConfig};

    /// A port that delivers queued frames and records what is sent and joined.
    #[derive(Debug, Default)]
    struct Port {
        incoming: VecDeque<Vec<u8>>,
        sent: Vec<Vec<u8>>,
        joined: Vec<MacAddr>,
    }

    impl FrameIo for Port {
        type Error = std::io::Error;
        fn mac(&self) -> shelfboot_netio::MacAddr {
            shelfboot_netio::MacAddr([2, 0, 0, 0, 0, 0xee])
        }
        fn max_frame_len(&self) -> usize {
            shelfboot_proto::MAX_FRAME_LEN
        }
        fn send_batch(&mut self, frames: &[&[u8]]) -> Result<usize, Self::Error> {
            self.sent.extend(frames.iter().map(|f| f.to_vec()));
            Ok(frames.len())
        }
        fn recv_batch(
            &mut self,
            out: &mut dyn FnMut(&[u8], shelfboot_netio::MacAddr),
            _: Duration,
        ) -> Result<usize, Self::Error> {
            let n = self.incoming.len();
            for f in self.incoming.drain(..) {
                out(&f, shelfboot_netio::MacAddr([0; 6]));
            }
            Ok(n)
        }
        fn join(&mut self, g: shelfboot_netio::MacAddr) -> Result<(), Self::Error> {
            self.joined.push(MacAddr(g.0));
            Ok(())
        }
        fn leave(&mut self, g: shelfboot_netio::MacAddr) -> Result<(), Self::Error> {
            self.joined.retain(|x| x.0 != g.0);
            Ok(())
        }
    }

    fn seat(last: u8) -> Seat<FakeVolumes> {
        let cfg = AgentConfig {
            identity: Identity {
                mac: MacAddr([2, 0, 0, 0, 0, last]),
                card_type: "lc100".into(),
                arch: Arch::X86_64,
                shelf: 1,
                slot: u16::from(last),
                hw_rev: "A".into(),
                features: vec![],
            },
            phase: BootPhase::PowerOn,
            ethertype: shelfboot_proto::DEFAULT_ETHERTYPE,
            link_mtu: shelfboot_proto::STANDARD_MTU,
            anchor: TrustAnchor::new(vec![SigningKey::from_seed(&[1; 32]).public_key()]),
            nonce: [last; 16],
            seed: u64::from(last),
            timers: Timers::default(),
        };
        let (store, _) = Store::open(FakeVolumes::new(1024, 64), StoreConfig::default()).unwrap();
        Seat::new(Agent::new(cfg, store, Instant::now()), ())
    }

    /// A frame of our EtherType to `dst` that no agent can act on (counted, dropped).
    fn frame_to(dst: MacAddr) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xaa]);
        f[12..14].copy_from_slice(&shelfboot_proto::DEFAULT_ETHERTYPE.to_be_bytes());
        f
    }

    #[test]
    fn tick_sends_every_due_solicit_through_the_port_once() {
        let mut port = Port::default();
        let mut seats = [seat(1), seat(2)];
        let mut d = Driver::new(&mut port);
        assert!(d.tick(&mut seats), "frames sent count as a change");
        assert_eq!(d.frames_sent(), 2);
        assert!(!d.tick(&mut seats), "nothing due right after");
        assert_eq!(d.frames_sent(), 2);
        let macs: Vec<MacAddr> = port
            .sent
            .iter()
            .map(|f| {
                let (_, m) = decode_frame(f, shelfboot_proto::DEFAULT_ETHERTYPE).unwrap();
                assert_eq!(&f[..6], &MacAddr::BROADCAST.0, "Solicit is broadcast");
                match m {
                    Message::Solicit(s) => s.mac,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(macs, [seats[0].agent.mac(), seats[1].agent.mac()]);
    }

    #[test]
    fn frames_reach_the_agents_they_are_addressed_to_only() {
        let mut port = Port::default();
        let mut seats = [seat(1), seat(2)];
        let a = seats[0].agent.mac();
        port.incoming.push_back(frame_to(a));
        port.incoming.push_back(frame_to(MacAddr::BROADCAST));
        port.incoming
            .push_back(frame_to(MacAddr([2, 0, 0, 0, 0, 9])));
        port.incoming
            .push_back(frame_to(MacAddr([1, 0, 0x5e, 0, 0, 7])));
        let mut d = Driver::new(&mut port);
        let (n, changed) = d.receive(&mut seats, Duration::ZERO).unwrap();
        assert_eq!((n, changed), (4, false));
        assert_eq!(
            seats[0].agent.counters().frames_in,
            2,
            "its own and broadcast"
        );
        assert_eq!(seats[1].agent.counters().frames_in, 1, "broadcast only");
        assert!(seats.iter().all(|s| s.decision.is_none()));
        assert_eq!(
            Driver::<Port>::wait(&seats, Instant::now(), Duration::from_millis(7)),
            Duration::ZERO
        );
    }
}
