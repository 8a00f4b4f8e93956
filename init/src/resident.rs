//! The resident agent on a real card: a child of PID 1, forked at the hand-off after
//! the new root is entered and before its `/sbin/init` is exec'd, so it lives on in the
//! package root (its binary stays mapped; the initramfs files are gone). It drives card's
//! sans-IO [`Resident`] over a packet socket on the backplane, feeds the watchdog,
//! runs the set's health command and acts on what the master orders.
//!
//! ```text
//!  loop (every ≤ 200 ms):
//!    feed the watchdog (crate::watchdog)
//!    Resident::tick → Alive due → send
//!    health: run `shelfboot.health` (from the set's command line) every 2 s until it
//!            exits 0 → Store::mark_ready, Alive(healthy)
//!            deadline passed → Store::rollback_running, Alive(rolled back) × 3,
//!            sync, reboot  (no previous set: Alive(unhealthy), keep running)
//!    order (a verified command) → Store::record_command(stamp), sync, reboot;
//!            an Upgrade instead: stage the plan in service, commit, kexec (see
//!            `upgrade`; on failure the running set runs on)
//!    receive frames (up to the next deadline) → Resident::handle_frame
//! ```
//!
//! It shields itself from the package root: `oom_score_adj = -1000` (never the OOM
//! killer's choice), its own session, no file or socket of the new root's. If it dies
//! anyway, the watchdog stops being fed and the card resets: that is the point of
//! feeding it here. It never returns.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shelfboot_card::agent::{Agent, AgentConfig, Decision, Timers};
use shelfboot_card::boot::{self, BootFacts, Target};
use shelfboot_card::driver::Seat;
use shelfboot_card::flash::{SetRecord, Store, StoreError, Volumes};
use shelfboot_card::resident::{Order, Resident, ResidentConfig, flush, turn};
use shelfboot_netio::{PacketSocket, RingGeometry, SocketConfig};
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::{Action, BootPhase, Health};
use shelfboot_proto::report::error_chain;
use shelfboot_proto::sign::TrustAnchor;

use crate::config::{Config, Hardware};
use crate::handoff::Paths;
use crate::kernel::Linux;
use crate::provision::{drive, identity, random, transfer_socket};
use crate::sys::power::{Leave, sync_and_leave};

/// What the conversation leaves for the resident agent (see [`crate::flow::Session`]).
#[derive(Debug, Clone)]
pub struct Seed {
    /// The trust anchor of the initramfs.
    pub anchor: TrustAnchor,
    /// Backplane interface.
    pub iface: String,
    /// Our MAC on it.
    pub mac: MacAddr,
    /// The master whose plan we run, and its epoch (none: booted on our own).
    pub obeyed: Option<(MacAddr, u64)>,
    /// (epoch, serial) of the last command executed in this boot.
    pub last_command: Option<(u64, u64)>,
}

/// The longest a health command may run before it counts as failed and is killed.
const HEALTH_RUN_LIMIT: Duration = Duration::from_secs(10);
/// Pause between two runs of a failing health command.
const HEALTH_RETRY: Duration = Duration::from_secs(2);
/// Longest wait for frames in one turn (the watchdog and the health check are polled).
const MAX_WAIT: Duration = Duration::from_millis(200);
/// Longest an upgrade in service may take to stage and commit before the card gives up
/// and runs on with its set.
const UPGRADE_LIMIT: Duration = Duration::from_secs(600);

/// The health check of a set: its command and deadline, from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Absolute path of the command (in the package root).
    pub command: PathBuf,
    /// Time from the hand-off to the first success, at most.
    pub deadline: Duration,
}

impl HealthCheck {
    /// The check a set's command line names (`shelfboot.health=`,
    /// `shelfboot.health_deadline=`), if any. A command line that does not parse names
    /// none (init already refused to boot a kexec'd image whose command line is bad).
    pub fn of(set: &SetRecord) -> Option<HealthCheck> {
        let cfg = Config::parse(&set.cmdline, &Hardware::default()).ok()?;
        cfg.health.map(|c| HealthCheck {
            command: PathBuf::from(c),
            deadline: cfg.health_deadline,
        })
    }
}

enum Check {
    /// No health command, or it succeeded, or it failed for good.
    Done,
    /// Waiting to run it again.
    Idle { next: Instant, last: String },
    /// Running since `since`.
    Running { child: Child, since: Instant },
}

/// Runs the resident agent. `set`: what the card runs (`None` for a RAM-only test set);
/// `store`: the flash store, if the card has one.
pub fn run<V: Volumes>(
    seed: &Seed,
    cfg: &Config,
    set: Option<&SetRecord>,
    persisted: bool,
    store: Option<&mut Store<V>>,
) -> ! {
    let started = Instant::now();
    shield();
    crate::watchdog::feed();
    // A store of the agent's own (its own descriptors, read fresh): init's is only
    // borrowed, and the agent outlives it.
    let mut store = store.and_then(|s| match s.reopen() {
        Ok((own, _)) => Some(own),
        Err(e) => {
            log::error!(
                "resident: cannot open the flash again: {}; running without it (no health mark, no command stamp, no upgrade)",
                error_chain(&e)
            );
            None
        }
    });
    let health = set.and_then(HealthCheck::of);
    let (rolled_back_from, detail) = match store.as_ref().and_then(|s| s.inventory()) {
        Some(inv) if inv.rolled_back_from.is_some() => (
            inv.rolled_back_from,
            "it did not come up on this card (not Ready within its boot attempts, or its health check failed)".to_string(),
        ),
        _ => (None, String::new()),
    };
    let rcfg = ResidentConfig {
        mac: seed.mac,
        ethertype: cfg.ethertype,
        anchor: seed.anchor.clone(),
        running: set.map(|s| s.digest),
        persisted,
        epoch: seed.obeyed.map_or(0, |o| o.1),
        master: seed.obeyed.map(|o| o.0),
        last_command: seed
            .last_command
            .max(store.as_ref().and_then(|s| s.last_command())),
        alive_every: cfg.alive,
        health: if health.is_some() {
            Health::Checking
        } else {
            Health::Unchecked
        },
        rolled_back_from,
        detail,
    };
    log::info!(
        "resident: listening on {} as {} (Alive every {:?}, watchdog {}, health {})",
        seed.iface,
        seed.mac,
        cfg.alive,
        if crate::watchdog::armed() {
            "fed"
        } else {
            "none"
        },
        health.as_ref().map_or_else(
            || "none".to_string(),
            |h| format!("{} within {:?}", h.command.display(), h.deadline)
        )
    );
    let mut agent = Resident::new(rcfg, started);
    let mut checker = health.clone().map(|h| Checker::new(h, started));
    let mut sock: Option<PacketSocket> = None;
    let mut next_open = started;
    loop {
        crate::watchdog::feed();
        let now = Instant::now();
        if sock.is_none() && now >= next_open {
            sock = open(&seed.iface, cfg.ethertype);
            next_open = now + Duration::from_secs(5);
        }
        if let Some(c) = checker.as_mut() {
            if c.advance() {
                healthy(&mut agent, store.as_mut(), persisted);
                checker = None;
            } else if let Some(why) = c.overdue() {
                unhealthy(&why, &mut agent, store.as_mut(), persisted, sock.as_mut());
                checker = None;
            }
        }
        if let Some(order) = agent.take_order() {
            if order.action == Action::Upgrade
                && let Some(s) = store.as_mut()
            {
                // Returns only if the card still runs its set.
                if let Some(why) = upgrade(seed, cfg, s, order, &mut sock) {
                    log::error!(
                        "SHELFBOOT: upgrade in service failed: {why}; the running set runs on"
                    );
                    let health = agent.health();
                    agent.set_health(Instant::now(), health, &format!("upgrade failed: {why}"));
                }
                agent.resume();
                next_open = Instant::now();
                continue;
            }
            obey(order, store.as_mut(), sock.as_mut(), &mut agent);
        }
        let wait = agent
            .next_deadline()
            .saturating_duration_since(Instant::now())
            .min(MAX_WAIT);
        match sock.as_mut() {
            Some(s) => {
                if let Err(e) = turn(s, &mut agent, wait) {
                    log::error!(
                        "resident: the backplane socket on {} failed: {}; reopening",
                        seed.iface,
                        error_chain(&e)
                    );
                    sock = None;
                }
            }
            None => {
                // No socket: time goes on, what is due is dropped.
                agent.tick(Instant::now());
                agent.drain();
                std::thread::sleep(wait);
            }
        }
    }
}

/// Keeps the package root from taking the agent down: never the OOM killer's victim,
/// a session of its own (no job-control signal of a console shell reaches it).
fn shield() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        log::warn!("resident: cannot set oom_score_adj: {e}");
    }
    if let Err(e) = nix::unistd::setsid() {
        log::debug!("resident: setsid: {e}");
    }
}

fn open(iface: &str, ethertype: u16) -> Option<PacketSocket> {
    let cfg = SocketConfig {
        ethertype,
        rx_ring: RingGeometry {
            block_nr: 4,
            ..RingGeometry::RX_DEFAULT
        },
        ..SocketConfig::default()
    };
    match PacketSocket::open(iface, cfg) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!(
                "resident: cannot open the backplane socket on {iface}: {}; retrying in 5 s",
                error_chain(&e)
            );
            None
        }
    }
}

fn send(sock: Option<&mut PacketSocket>, agent: &mut Resident) {
    match sock {
        Some(s) => {
            if let Err(e) = flush(s, agent) {
                log::warn!("resident: send failed: {}", error_chain(&e));
            }
        }
        None => {
            agent.drain();
        }
    }
}

/// The health command of the running set, run until it passes or its deadline passes.
struct Checker {
    check: HealthCheck,
    started: Instant,
    state: Check,
}

impl Checker {
    fn new(check: HealthCheck, started: Instant) -> Self {
        Self {
            check,
            started,
            state: Check::Idle {
                next: started,
                last: "not run yet".into(),
            },
        }
    }

    /// Starts, polls or retries the command; true once it passed (then never again).
    fn advance(&mut self) -> bool {
        let now = Instant::now();
        self.state = match std::mem::replace(&mut self.state, Check::Done) {
            Check::Done => Check::Done,
            Check::Idle { next, last } if now < next => Check::Idle { next, last },
            Check::Idle { .. } => match Command::new(&self.check.command)
                .stdin(Stdio::null())
                .spawn()
            {
                Ok(child) => Check::Running { child, since: now },
                Err(e) => Check::Idle {
                    next: now + HEALTH_RETRY,
                    last: format!("cannot start: {e}"),
                },
            },
            Check::Running { mut child, since } => match child.try_wait() {
                Ok(Some(status)) if status.success() => {
                    log::info!(
                        "SHELFBOOT: health check {} passed after {:.1} s: the set is good",
                        self.check.command.display(),
                        self.started.elapsed().as_secs_f64()
                    );
                    return true;
                }
                Ok(Some(status)) => Check::Idle {
                    next: now + HEALTH_RETRY,
                    last: format!("{status}"),
                },
                Ok(None) if now.duration_since(since) < HEALTH_RUN_LIMIT => {
                    Check::Running { child, since }
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Check::Idle {
                        next: now + HEALTH_RETRY,
                        last: format!("still running after {HEALTH_RUN_LIMIT:?}: killed"),
                    }
                }
                Err(e) => Check::Idle {
                    next: now + HEALTH_RETRY,
                    last: format!("cannot wait for it: {e}"),
                },
            },
        };
        false
    }

    /// Past the deadline without a success: why (once; the check is over).
    fn overdue(&mut self) -> Option<String> {
        if self.started.elapsed() < self.check.deadline {
            return None;
        }
        let last = match std::mem::replace(&mut self.state, Check::Done) {
            Check::Done => return None,
            Check::Idle { last, .. } => last,
            Check::Running { mut child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
                "still running".into()
            }
        };
        Some(format!(
            "health check {} did not succeed within {:?} of the hand-off (last run: {last})",
            self.check.command.display(),
            self.check.deadline
        ))
    }
}

/// The health command passed: the set is good on flash (attempt counter 0).
fn healthy<V: Volumes>(agent: &mut Resident, store: Option<&mut Store<V>>, persisted: bool) {
    if persisted && let Some(s) = store {
        match s.mark_ready() {
            Ok(()) => nix::unistd::sync(),
            Err(e) => log::error!("resident: marking the set good failed: {}", error_chain(&e)),
        }
    }
    agent.set_health(Instant::now(), Health::Healthy, "");
}

/// The health command did not pass in time: roll back and reset, or (nothing to roll
/// back to) report unhealthy and keep running.
fn unhealthy<V: Volumes>(
    why: &str,
    agent: &mut Resident,
    store: Option<&mut Store<V>>,
    persisted: bool,
    sock: Option<&mut PacketSocket>,
) {
    let now = Instant::now();
    let rolled = match store {
        Some(s) if persisted => {
            let from = s.digest();
            match s.rollback_running() {
                Ok(prev) => Some((from, prev)),
                Err(StoreError::NoPrevious) => None,
                Err(e) => {
                    log::error!("resident: rolling back failed: {}", error_chain(&e));
                    None
                }
            }
        }
        _ => None,
    };
    match rolled {
        Some((Some(from), prev)) => {
            log::error!(
                "SHELFBOOT: {why}: rolled back to set {} on flash; resetting",
                prev.digest
            );
            agent.rolled_back(now, from, why);
            announce_and_reset(agent, sock);
        }
        _ => {
            log::error!("SHELFBOOT: {why}; no previous set to roll back to: running on, unhealthy");
            agent.set_health(
                now,
                Health::Unhealthy,
                &format!("{why}; no previous set to roll back to"),
            );
        }
    }
}

/// The master orders an upgrade in service: the card's conversation runs again here,
/// while the package root runs (at nice 10): the plan is staged into new volumes beside
/// the running set, committed (the running set becomes the previous one, kept for
/// rollback), counted, and the card kexecs into the new boot image: no firmware reset,
/// down only for the kexec and the validation. A set without a boot image cannot be
/// entered without a reset: the card resets into it. Returns why, if the card still runs
/// its old set.
fn upgrade<V: Volumes>(
    seed: &Seed,
    cfg: &Config,
    store: &mut Store<V>,
    order: Order,
    resident_sock: &mut Option<PacketSocket>,
) -> Option<String> {
    let t = Instant::now();
    log::info!(
        "SHELFBOOT: upgrade ordered by the master (epoch {}, serial {}): staging the plan while running",
        order.stamp.0,
        order.stamp.1
    );
    if let Err(e) = store.record_command(order.stamp) {
        return Some(format!("recording the command stamp: {}", error_chain(&e)));
    }
    nix::unistd::sync();
    if let Err(e) = crate::sys::process::set_nice(10) {
        log::warn!("resident: staging at normal priority: {}", error_chain(&e));
    }
    let running = store.digest();
    let mut nonce = [0u8; 16];
    let mut rng = [0u8; 8];
    if let Err(e) = random(&mut nonce).and_then(|()| random(&mut rng)) {
        return Some(error_chain(&e));
    }
    let own = match store.reopen() {
        Ok((s, _)) => s,
        Err(e) => {
            return Some(format!(
                "opening the flash for staging: {}",
                error_chain(&e)
            ));
        }
    };
    let mut sock = match PacketSocket::open(&seed.iface, transfer_socket(cfg.ethertype)) {
        Ok(s) => s,
        Err(e) => {
            return Some(format!(
                "opening the transfer socket on {}: {}",
                seed.iface,
                error_chain(&e)
            ));
        }
    };
    // The resident's own socket would only fill up meanwhile.
    *resident_sock = None;
    let acfg = AgentConfig {
        identity: identity(cfg, seed.mac),
        phase: BootPhase::AfterReset,
        ethertype: cfg.ethertype,
        link_mtu: shelfboot_proto::protocol_mtu(sock.mtu()),
        anchor: seed.anchor.clone(),
        nonce,
        seed: u64::from_be_bytes(rng),
        timers: Timers {
            autonomy: None,
            ..Timers::default()
        },
    };
    let agent = Agent::new(acfg, own, Instant::now()).with_last_command(Some(order.stamp));
    let mut seat = [Seat::new(agent, ())];
    let decided = drive(
        &mut seat,
        &mut sock,
        &seed.iface,
        cfg.hold,
        Some(Instant::now() + UPGRADE_LIMIT),
    );
    let [seat] = seat;
    let own = seat.into_agent().into_store();
    if let Err(e) = crate::sys::process::set_nice(0) {
        log::debug!("resident: {}", error_chain(&e));
    }
    let set = match decided {
        Ok(Decision::Boot {
            set,
            persisted: true,
            autonomous: false,
            validated_only,
            ..
        }) => {
            if validated_only && Some(set.digest) == running {
                log::info!("SHELFBOOT: upgrade: the card already runs its plan; nothing to do");
                return None;
            }
            set
        }
        Ok(Decision::Boot {
            persisted: false, ..
        })
        | Ok(Decision::Reset { .. }) => {
            log::info!(
                "SHELFBOOT: the master's plan needs a reset (test set, or a reset ordered): resetting"
            );
            reset()
        }
        Ok(other) => {
            return Some(format!(
                "the conversation ended without a plan to run: {other:?}"
            ));
        }
        Err(e) => return Some(error_chain(&e)),
    };
    log::info!(
        "SHELFBOOT: set {} staged and committed in service in {:.1} s",
        set.digest,
        t.elapsed().as_secs_f64()
    );
    // From now on the agent's store is the one that committed (ours holds the older
    // inventory and must never write it again).
    *store = own;
    if set.boot_image().is_none() {
        log::info!("SHELFBOOT: the new set has no boot image: resetting into it");
        reset()
    }
    let facts = BootFacts {
        stored: false,
        autonomous: false,
    };
    let choice = match boot::choose(store, facts) {
        Ok(c) => c,
        Err(e) => return Some(format!("choosing what to boot: {}", error_chain(&e))),
    };
    let Target::Kexec {
        volume,
        id,
        offset,
        size,
    } = choice.target
    else {
        reset()
    };
    let vols = store.volumes_mut();
    let read = crate::handoff::extent_reader(offset, size, |off: u64, buf: &mut [u8]| {
        vols.read(id, off, buf)
    });
    log::info!(
        "SHELFBOOT: kexec into the upgraded set {}",
        choice.set.digest
    );
    let e = crate::handoff::kexec(
        &mut Linux::default(),
        &Paths::default(),
        &volume,
        read,
        &cfg.carried_cmdline(&choice.set.cmdline),
    );
    Some(format!("kexec: {}", error_chain(&e)))
}

/// Sync and reboot (a reset into init); never returns.
fn reset() -> ! {
    let e = sync_and_leave(Leave::Reboot);
    log::error!("resident: {}", error_chain(&e));
    crate::pid1::sleep_forever()
}

/// The master orders something: after the hand-off every order is a reset (the next
/// boot's conversation does what it asked). The stamp goes to flash first.
fn obey<V: Volumes>(
    order: Order,
    store: Option<&mut Store<V>>,
    sock: Option<&mut PacketSocket>,
    agent: &mut Resident,
) -> ! {
    if let Some(s) = store {
        match s.record_command(order.stamp) {
            Ok(()) => nix::unistd::sync(),
            Err(e) => log::error!(
                "resident: recording command stamp {:?} failed (a replay could reset the card once more): {}",
                order.stamp,
                error_chain(&e)
            ),
        }
    }
    log::info!(
        "SHELFBOOT: {:?} ordered by the master (epoch {}, serial {}): resetting into init",
        order.action,
        order.stamp.0,
        order.stamp.1
    );
    announce_and_reset(agent, sock)
}

/// Sends what is queued (and two more Alives, 100 ms apart, for a lossy backplane),
/// then syncs and reboots.
fn announce_and_reset(agent: &mut Resident, mut sock: Option<&mut PacketSocket>) -> ! {
    for i in 0..3 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
            agent.announce(Instant::now());
        }
        send(sock.as_deref_mut(), agent);
    }
    if let Some(s) = sock {
        let _ = s.flush();
    }
    reset()
}
