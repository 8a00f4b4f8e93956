//! The failover scenario: three masters in one cluster (`STATE/cluster.toml`, Raft over
//! the lab namespace's loopback), the serving one killed (SIGKILL) in the middle of a
//! burn, once per round.
//!
//! ```text
//!  lab namespace (testkit Lab, bridge br0; p0-p2 tbf-shaped)
//!    p0  serve-child, member 1  ┐
//!    p1  serve-child, member 2  ├─ Raft on 127.0.0.1:7511-7513
//!    p2  serve-child, member 3  ┘
//!    p3-p10  card-child, one simulated card each (fresh MACs and flash every round)
//!    p11     AF_PACKET capture in this process (every shelfboot frame, CLOCK_MONOTONIC)
//! ```
//!
//! Member 1 starts from a prepared single-master state (the benchmark release imported,
//! `shelfboot::prepare`); members 2 and 3 start empty and receive its databases and blobs.
//! Every member signs with member 1's plan key (`serve-child --key`), the one the cards
//! trust. Each round:
//! 1. waits until the cluster is settled: every member answers `cluster status` on its
//!    control socket with three voters, the same applied index and no missing blob, and
//!    exactly one serves;
//! 2. starts the cards (a fresh set) and, once the serving master's `serve-stats.json`
//!    counts [`KILL_AFTER`] bytes of artifact sent in this round, SIGKILLs it;
//! 3. measures (a) the kill → the first frame any *other* master sent on the backplane
//!    (seen on p11), the kill → its first data frame (the cards continue), and (b) the
//!    kill → the last card's decision (the card-child's `decided_mono`); all
//!    CLOCK_MONOTONIC;
//! 4. checks that every card booted (no reset, no autonomous boot) and that every
//!    artifact read back from its flash matches its set and the artifact's sha256;
//! 5. restarts the killed member and waits until it has caught up (step 1 again).
//!
//! A round that fails (a check, a deadline) is reported as failed with the reason; if
//! the cluster does not settle again, the remaining rounds are reported as not run. Every
//! wait has a deadline; the processes are reaped and the namespace removed on return,
//! also on an error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shelfboot_master::cluster::{ClusterConfig, ClusterStatus, MemberConfig};
use shelfboot_master::control::{self, Client, Reply, Request};
use shelfboot_master::serve::ServeStats;
use shelfboot_netio::{MacAddr, PacketSocket, Path as IoPath, PathChoice, SocketConfig};
use shelfboot_proto::DEFAULT_ETHERTYPE;
use shelfboot_proto::frame::{Frame, MessageType};
use shelfboot_proto::report::error_chain;
use shelfboot_testkit::netns::{Lab, Tbf};

use crate::proc::{Ended, Proc, wait_all};
use crate::report::{Fig, Row};
use crate::shelfboot::{self, CardChild, CardChildReport, ServeChild, ShelfState, mono};

/// Cluster members (all voters, all serve-capable).
pub const MEMBERS: usize = 3;
/// Simulated cards per round (one card-child process).
pub const CARDS: usize = 8;
/// The artifact the cards burn (the release's boot image).
pub const ARTIFACT: u64 = 96 << 20;
/// Each master's port: 160 Mbit/s, so the burn lasts about five seconds.
pub const LINK: Tbf = Tbf {
    rate_bits_per_sec: 160_000_000,
    burst_bytes: 256 << 10,
    latency: Duration::from_millis(20),
};
/// The serving master is killed once it has sent this much artifact in the round, half
/// (its statistics file is rewritten every second, so the kill comes up to a second, some
/// 20 MB, later).
pub const KILL_AFTER: u64 = ARTIFACT / 2;
/// The goal for (a): a complete backup serves within 3 s of the loss.
pub const GOAL_FIRST_FRAME_S: f64 = 3.0;
/// The goal for the cards: one in the middle of a transfer continues from the new master
/// within 5 s (measured as the new master's first data frame) and, the stricter reading,
/// the last card has finished within 5 s of the kill (which includes sending what was
/// left of the artifact).
pub const GOAL_CARDS_S: f64 = 5.0;
/// Ports of the cards (one each) and of the capture; the masters are ports 0..MEMBERS.
const FIRST_CARD_PORT: usize = MEMBERS;
const CAPTURE_PORT: usize = MEMBERS + CARDS;
/// Bound on the cluster settling (made, or caught up after a restart).
const SETTLE: Duration = Duration::from_secs(90);
/// Bound on the burn reaching [`KILL_AFTER`].
const BURN_START: Duration = Duration::from_secs(60);
/// The card-child's own limit; its process gets [`CARD_MARGIN`] more (the read-back).
const CARD_TIMEOUT: Duration = Duration::from_secs(120);
const CARD_MARGIN: Duration = Duration::from_secs(60);
/// Bound on one `cluster status` answer.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// What the scenario runs.
#[derive(Debug, Clone)]
pub struct FailoverPlan {
    /// Rounds, one induced failure each.
    pub rounds: usize,
    /// Scratch directory (states, flash, logs).
    pub work: PathBuf,
    /// This program (the serve-child and card-child processes).
    pub exe: PathBuf,
}

/// `argv` run through `env` with info logging: the logs show when a master led and
/// served and when each card heard the new epoch. `env` execs the program, so the PID
/// stays the program's own (SIGKILL reaches it).
fn logged(argv: Vec<String>) -> Vec<String> {
    let mut a = vec!["env".to_owned(), "RUST_LOG=info,pubgrub=warn".to_owned()];
    a.extend(argv);
    a
}

/// Raft address of member `id` on the namespace's loopback.
fn raft_addr(id: u64) -> String {
    format!("127.0.0.1:{}", 7510 + id)
}

/// One cluster member: a serve-child process of its own (so that it can be SIGKILLed).
#[derive(Debug)]
struct Member {
    id: u64,
    state: PathBuf,
    port: usize,
    proc: Option<Proc>,
    /// How often it was started (each start logs to a file of its own).
    starts: usize,
}

impl Member {
    fn log(&self, start: usize) -> PathBuf {
        self.state
            .with_file_name(format!("serve-{}-{start}.log", self.id))
    }

    fn start(&mut self, p: &FailoverPlan, lab: &Lab, key: &Path) -> Result<(), String> {
        self.starts += 1;
        let child = ServeChild {
            state: self.state.clone(),
            iface: lab.port(self.port),
            stop_file: self.state.with_file_name(format!("stop-{}", self.id)),
            stats_out: self
                .state
                .with_file_name(format!("stats-{}-{}.json", self.id, self.starts)),
            key: Some(key.to_path_buf()),
        };
        let argv = logged(child.argv(&p.exe));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let log = self.log(self.starts);
        let proc = Proc::spawn(lab.netns(), &argv, &log)
            .map_err(|e| format!("starting master {}: {}", self.id, error_chain(&e)))?;
        self.proc = Some(proc);
        Ok(())
    }

    /// SIGKILL (the whole process group) and reap.
    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Asks it to stop (its stop file), then kills it after a grace period.
    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let stop = self.state.with_file_name(format!("stop-{}", self.id));
            let _ = std::fs::write(&stop, b"stop");
            let _ = p.wait_until(Instant::now() + Duration::from_secs(10));
            let _ = std::fs::remove_file(&stop);
        }
    }

    fn stats(&self) -> Option<ServeStats> {
        serde_json::from_slice(&std::fs::read(self.state.join("serve-stats.json")).ok()?).ok()
    }
}

/// `cluster status` from a member's control socket (the running serve-child answers),
/// bounded by `within`: a member that does not answer is an error, not a hang.
fn status(state: &Path, within: Duration) -> Result<ClusterStatus, String> {
    let (tx, rx) = mpsc::channel();
    let st = state.to_path_buf();
    // A call that never returns leaves this thread blocked; the process ends it.
    std::thread::spawn(move || {
        let r = Client::try_connect(&st)
            .map_err(|e| format!("connecting to {}: {e}", control::socket_path(&st).display()))
            .and_then(|c| {
                c.call(&Request::ClusterStatus, &mut |_, _| {})
                    .map_err(|e| error_chain(&e))
            })
            .and_then(|r| match r {
                Reply::Cluster(s) => Ok(s),
                other => Err(format!("cluster status answered {other:?}")),
            });
        let _ = tx.send(r);
    });
    rx.recv_timeout(within)
        .map_err(|_| {
            format!(
                "no cluster status from {} within {within:?}",
                state.display()
            )
        })
        .and_then(|r| r)
}

/// Waits until every member runs and answers with three voters, no missing blob and the
/// same applied index, and exactly one serves; returns that one's id and status. Two
/// serving at once is an error at once.
fn settle(members: &[Member], deadline: Instant) -> Result<(u64, ClusterStatus), String> {
    loop {
        let st: Vec<Result<ClusterStatus, String>> = members
            .iter()
            .map(|m| {
                if m.proc.is_none() {
                    return Err(format!("master {} is not running", m.id));
                }
                status(&m.state, STATUS_WAIT).map_err(|e| format!("master {}: {e}", m.id))
            })
            .collect();
        let serving: Vec<&ClusterStatus> = st.iter().flatten().filter(|s| s.serving).collect();
        if serving.len() > 1 {
            return Err(format!(
                "masters {:?} serve at once",
                serving.iter().map(|s| s.id).collect::<Vec<_>>()
            ));
        }
        let ok: Vec<&ClusterStatus> = st.iter().flatten().collect();
        let applied: Vec<Option<u64>> = ok.iter().map(|s| s.applied_index).collect();
        if ok.len() == members.len()
            && ok.iter().all(|s| {
                s.missing_blobs == 0 && s.members.iter().filter(|m| m.voter).count() == MEMBERS
            })
            && applied[0].is_some()
            && applied.iter().all(|a| *a == applied[0])
            && let [s] = serving.as_slice()
        {
            return Ok((s.id, (*s).clone()));
        }
        let last = st
            .iter()
            .map(|r| match r {
                Ok(s) => format!(
                    "master {}: {} term {} applied {:?} missing blobs {} serving {}",
                    s.id, s.role, s.term, s.applied_index, s.missing_blobs, s.serving
                ),
                Err(e) => e.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        if Instant::now() >= deadline {
            return Err(format!("the cluster did not settle: {last}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Frames seen on the capture port: for each master (by its port's MAC), the
/// CLOCK_MONOTONIC time each of its frames was received and whether it was a data frame
/// (a block of artifact) rather than control.
#[derive(Debug, Default)]
struct Seen {
    frames: Vec<Vec<(f64, bool)>>,
}

impl Seen {
    /// The first frame (only data frames with `data`) after `t` of any master other than
    /// `killed` (index): (time, index).
    fn first_other_after(&self, killed: usize, t: f64, data: bool) -> Option<(f64, usize)> {
        self.frames
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != killed)
            .filter_map(|(i, v)| {
                v.iter()
                    .find(|(x, d)| *x > t && (*d || !data))
                    .map(|(x, _)| (*x, i))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }
}

/// Most frame times kept per master (a round's burn is far fewer frames).
const MAX_FRAMES: usize = 2_000_000;

/// Captures every shelfboot frame on the capture port until `stop` or `deadline`,
/// noting when each master's frames arrive. `ready` is set once the socket is open.
fn capture(
    lab: &Lab,
    macs: &[MacAddr],
    ready: &AtomicBool,
    stop: &AtomicBool,
    deadline: Instant,
) -> Result<Seen, String> {
    lab.enter()
        .map_err(|e| format!("capture: entering {}: {}", lab.netns(), error_chain(&e)))?;
    let iface = lab.port(CAPTURE_PORT);
    let cfg = SocketConfig {
        // One frame per call: the time taken is the frame's own arrival, not a block's.
        rx: PathChoice::Force(IoPath::Plain),
        filter_multicast: false,
        ..SocketConfig::default()
    };
    let mut sock = PacketSocket::open(&iface, cfg)
        .map_err(|e| format!("capture: opening {iface}: {}", error_chain(&e)))?;
    ready.store(true, Ordering::Relaxed);
    let mut seen = Seen {
        frames: vec![Vec::new(); macs.len()],
    };
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        sock.recv_batch(
            &mut |frame: &[u8], src: MacAddr| {
                let now = mono();
                if let Some(i) = macs.iter().position(|m| *m == src)
                    && seen.frames[i].len() < MAX_FRAMES
                {
                    let data = Frame::decode(frame, DEFAULT_ETHERTYPE)
                        .is_ok_and(|f| f.header().msg_type == MessageType::Data);
                    seen.frames[i].push((now, data));
                }
            },
            Duration::from_millis(20),
        )
        .map_err(|e| format!("capture: receiving on {iface}: {}", error_chain(&e)))?;
    }
    Ok(seen)
}

/// What one successful round measured.
#[derive(Debug, Clone)]
struct Measured {
    killed: u64,
    epoch_before: u64,
    /// Artifact bytes the killed master had sent in the round when it was killed (its
    /// last statistics).
    sent_before_kill: u64,
    /// The member whose frame came first after the kill, and the serving one after.
    first_sender: u64,
    serving_after: u64,
    epoch_after: u64,
    first_frame_s: f64,
    /// Kill → the first data frame of another master: the cards continue.
    first_data_s: f64,
    last_card_s: f64,
    /// Restart of the killed member → the cluster settled again.
    catch_up_s: f64,
}

/// The scenario: `p.rounds` induced failures; two rows and a note per round.
pub fn failover(
    p: &FailoverPlan,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(&p.work);
    std::fs::create_dir_all(&p.work).map_err(|e| format!("creating {}: {e}", p.work.display()))?;
    let art = p.work.join("artifact.bin");
    crate::scenarios::write_artifact(&art, ARTIFACT, 4242)
        .map_err(|e| format!("writing {}: {e}", art.display()))?;
    let sha = shelfboot::file_sha(&art).map_err(|e| format!("hashing {}: {e}", art.display()))?;
    let m1 = p.work.join("m1");
    std::fs::create_dir_all(&m1).map_err(|e| format!("creating {}: {e}", m1.display()))?;
    let st = shelfboot::prepare(&m1, &art, ARTIFACT).map_err(|e| error_chain(&e))?;
    let _ = std::fs::remove_file(&art);
    // Made first, so dropped last: the members' processes go before their namespace.
    let lab = Lab::new("failover", MEMBERS + CARDS + 1)
        .map_err(|e| format!("building the lab namespace: {}", error_chain(&e)))?;
    for i in 0..MEMBERS {
        lab.shape_port(i, LINK)
            .map_err(|e| format!("shaping port {i}: {}", error_chain(&e)))?;
    }
    let mut members: Vec<Member> = (1..=MEMBERS as u64)
        .map(|id| Member {
            id,
            state: if id == 1 {
                st.state.clone()
            } else {
                p.work.join(format!("m{id}")).join("state")
            },
            port: usize::try_from(id - 1).unwrap_or(0),
            proc: None,
            starts: 0,
        })
        .collect();
    let initial: Vec<MemberConfig> = members
        .iter()
        .map(|m| MemberConfig {
            id: m.id,
            addr: raft_addr(m.id),
        })
        .collect();
    for m in &members {
        std::fs::create_dir_all(&m.state)
            .map_err(|e| format!("creating {}: {e}", m.state.display()))?;
        // The prepared state never served: its cards remember no epoch, the base is 0.
        ClusterConfig {
            id: m.id,
            listen: raft_addr(m.id),
            epoch_base: 0,
            witness: false,
            members: initial.clone(),
        }
        .save(&m.state)
        .map_err(|e| error_chain(&e))?;
    }
    let key = st.state.join("plan.key");
    let res = run_rounds(p, &lab, &st, &sha, &key, &mut members);
    for m in &mut members {
        m.stop();
    }
    let results = res?;
    report(p, &results, rows, notes);
    Ok(())
}

/// Starts the members, then runs the rounds; one entry per round (`Err`: why it failed
/// or was not run).
fn run_rounds(
    p: &FailoverPlan,
    lab: &Lab,
    st: &ShelfState,
    sha: &str,
    key: &Path,
    members: &mut [Member],
) -> Result<Vec<Result<Measured, String>>, String> {
    for m in members.iter_mut() {
        m.start(p, lab, key)?;
    }
    let t = Instant::now();
    let (mut serving, mut status) =
        settle(members, Instant::now() + SETTLE).map_err(|e| format!("making the cluster: {e}"))?;
    eprintln!(
        "failover: cluster of {MEMBERS} made in {:.1} s; master {serving} serves with epoch {}",
        t.elapsed().as_secs_f64(),
        status.epoch
    );
    let mut out = Vec::new();
    for r in 1..=p.rounds {
        let res = round(p, lab, st, sha, key, members, r, serving, &status);
        match &res {
            Ok(m) => eprintln!(
                "failover round {r}: master {} killed; master {} sent after {:.3} s, data after \
                 {:.3} s, last card decided after {:.3} s; caught up in {:.1} s",
                m.killed,
                m.first_sender,
                m.first_frame_s,
                m.first_data_s,
                m.last_card_s,
                m.catch_up_s
            ),
            Err(e) => eprintln!("failover round {r}: failed: {e}"),
        }
        out.push(res);
        // Every member runs again (a failed round may have left one down), then the
        // cluster must settle before the next round.
        for m in members.iter_mut() {
            if m.proc.is_none() {
                m.start(p, lab, key)?;
            }
        }
        match settle(members, Instant::now() + SETTLE) {
            Ok((s, st)) => (serving, status) = (s, st),
            Err(e) => {
                for rest in r + 1..=p.rounds {
                    out.push(Err(format!(
                        "round {rest} not run: after round {r} the cluster did not settle: {e}"
                    )));
                }
                break;
            }
        }
    }
    Ok(out)
}

/// One round: fresh cards, the serving master killed mid-burn, the killed member
/// restarted and caught up.
#[allow(clippy::too_many_arguments)]
fn round(
    p: &FailoverPlan,
    lab: &Lab,
    st: &ShelfState,
    sha: &str,
    key: &Path,
    members: &mut [Member],
    r: usize,
    serving: u64,
    before: &ClusterStatus,
) -> Result<Measured, String> {
    let k = usize::try_from(serving - 1).map_err(|e| e.to_string())?;
    let dir = p.work.join(format!("round-{r}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // Artifact bytes the serving master had sent before this round (in its epoch).
    let base = members[k]
        .stats()
        .filter(|s| s.epoch == before.epoch)
        .map_or(0, |s| s.artifact_bytes);
    let macs: Vec<MacAddr> = (0..MEMBERS).map(Lab::port_mac).collect();
    let (ready, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    let limit = Instant::now() + BURN_START + CARD_TIMEOUT + CARD_MARGIN;
    std::thread::scope(|s| {
        let cap = s.spawn(|| capture(lab, &macs, &ready, &stop, limit));
        let res = burn_and_kill(p, lab, st, sha, members, k, base, before, &dir, r, &ready);
        stop.store(true, Ordering::Relaxed);
        let seen = cap
            .join()
            .map_err(|_| "the capture thread panicked".to_owned())?;
        let (t_kill, sent, decided) = res?;
        let seen = seen?;
        let (first, sender) = seen.first_other_after(k, t_kill, false).ok_or_else(|| {
            format!(
                "no other master sent a frame on the backplane after master {serving} was killed"
            )
        })?;
        let (first_data, _) = seen.first_other_after(k, t_kill, true).ok_or_else(|| {
            format!("no other master sent a data frame after master {serving} was killed")
        })?;
        if decided <= t_kill {
            return Err(format!(
                "the cards had decided {:.3} s before the kill: the burn was over",
                t_kill - decided
            ));
        }
        // The killed member comes back and catches up.
        let t = Instant::now();
        members[k].start(p, lab, key)?;
        let (now_serving, after) = settle(members, Instant::now() + SETTLE)
            .map_err(|e| format!("master {serving} restarted: {e}"))?;
        let catch_up_s = t.elapsed().as_secs_f64();
        if after.epoch <= before.epoch {
            return Err(format!(
                "master {now_serving} serves with epoch {}, not above {}",
                after.epoch, before.epoch
            ));
        }
        let _ = std::fs::remove_dir_all(dir.join("cards"));
        Ok(Measured {
            killed: serving,
            epoch_before: before.epoch,
            sent_before_kill: sent,
            first_sender: sender as u64 + 1,
            serving_after: now_serving,
            epoch_after: after.epoch,
            first_frame_s: first - t_kill,
            first_data_s: first_data - t_kill,
            last_card_s: decided - t_kill,
            catch_up_s,
        })
    })
}

/// Starts the round's cards, kills the serving member (index `k`) once it has sent
/// [`KILL_AFTER`] beyond `base`, waits for the cards and checks them. Returns the kill
/// time and the last card's decision (CLOCK_MONOTONIC) and the bytes sent in the round by
/// the kill.
#[allow(clippy::too_many_arguments)]
fn burn_and_kill(
    p: &FailoverPlan,
    lab: &Lab,
    st: &ShelfState,
    sha: &str,
    members: &mut [Member],
    k: usize,
    base: u64,
    before: &ClusterStatus,
    dir: &Path,
    r: usize,
    ready: &AtomicBool,
) -> Result<(f64, u64, f64), String> {
    let until = Instant::now() + Duration::from_secs(10);
    while !ready.load(Ordering::Relaxed) {
        if Instant::now() >= until {
            return Err("the capture socket did not open within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // A fresh set of cards: MACs of their own each round, pristine flash; one process
    // and one port per card, so that cards work side by side as real ones do (in one
    // process they take their turns, e.g. re-reading what they had staged).
    let rb = u8::try_from(r % 256).unwrap_or(0);
    let mut cards = Vec::new();
    for i in 0..CARDS {
        let cdir = dir.join("cards").join(format!("c{}", i + 1));
        let n = u8::try_from(i + 1).unwrap_or(u8::MAX);
        let mut child = CardChild::new(
            &st.anchor,
            &cdir,
            MacAddr([0x02, 0x5c, 0xfa, rb, 0, n]),
            1,
            st.size,
        );
        child.iface = lab.port(FIRST_CARD_PORT + i);
        child.timeout = CARD_TIMEOUT;
        child.sha256 = Some(sha.to_owned());
        child.verify_set = true;
        let argv = logged(child.argv(&p.exe, &card_report(dir, i)));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let proc = Proc::spawn(lab.netns(), &argv, &card_log(dir, i))
            .map_err(|e| format!("starting card {}: {}", i + 1, error_chain(&e)))?;
        cards.push(proc);
    }
    let m = &mut members[k];
    let until = Instant::now() + BURN_START;
    let sent = loop {
        if let Some(s) = m.stats().filter(|s| s.epoch == before.epoch)
            && s.artifact_bytes >= base + KILL_AFTER
        {
            break s.artifact_bytes - base;
        }
        for (i, c) in cards.iter_mut().enumerate() {
            if let Some(e) = c.poll().map_err(|e| error_chain(&e))? {
                return Err(format!(
                    "card {} ended ({e:?}) before master {} had sent {KILL_AFTER} bytes (see {})",
                    i + 1,
                    m.id,
                    card_log(dir, i).display()
                ));
            }
        }
        if Instant::now() >= until {
            return Err(format!(
                "master {} had not sent {KILL_AFTER} bytes within {BURN_START:?} (see {})",
                m.id,
                m.log(m.starts).display(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let t_kill = mono();
    m.kill();
    // The wall clock too: the masters' logs are stamped with it.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    eprintln!(
        "failover round {r}: master {} killed at {t_kill:.3} (CLOCK_MONOTONIC), {wall:.3} \
         (Unix time), {:.1} MB sent in the round",
        m.id,
        sent as f64 / 1e6
    );
    let ended = wait_all(&mut cards, Instant::now() + CARD_TIMEOUT + CARD_MARGIN)
        .map_err(|e| error_chain(&e))?;
    let mut reports = Vec::new();
    let mut problems = Vec::new();
    for (i, e) in ended.iter().enumerate() {
        let log = card_log(dir, i);
        if !matches!(e, Ended::Ok(_)) {
            problems.push(format!("card {}: {e:?} (see {})", i + 1, log.display()));
            continue;
        }
        let path = card_report(dir, i);
        match std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<CardChildReport>(&b).ok())
        {
            Some(rep) => {
                if let Err(e) = check_card(&rep) {
                    problems.push(format!("card {}: {e} (see {})", i + 1, log.display()));
                }
                reports.push(rep);
            }
            None => problems.push(format!(
                "card {}: no report {} (see {})",
                i + 1,
                path.display(),
                log.display()
            )),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let decided = reports
        .iter()
        .map(|r| r.decided_mono)
        .collect::<Option<Vec<f64>>>()
        .ok_or("a card report has no decision time")?
        .into_iter()
        .fold(f64::NEG_INFINITY, f64::max);
    Ok((t_kill, sent, decided))
}

/// Report and log of card `i` (from 0) of a round.
fn card_report(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("card-{}.json", i + 1))
}

fn card_log(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("card-{}.log", i + 1))
}

/// The card booted from the master (not reset, not autonomous), its boot image has the
/// artifact's sha256, and every artifact of its committed set read back intact.
fn check_card(rep: &CardChildReport) -> Result<(), String> {
    let set_ok = rep.set_digests.len() == 1 && rep.set_digests.iter().all(Option::is_some);
    if rep.booted == 1
        && rep.verified == 1
        && rep.artifacts_verified >= 1
        && set_ok
        && rep.problems.is_empty()
    {
        return Ok(());
    }
    Err(format!(
        "booted {}, boot image verified {}, artifacts verified {}, set verified {}: {}",
        rep.booted == 1,
        rep.verified == 1,
        rep.artifacts_verified,
        set_ok,
        rep.problems.join("; ")
    ))
}

/// The two rows (kill → first frame, kill → last card) and a note per round.
fn report(
    p: &FailoverPlan,
    results: &[Result<Measured, String>],
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) {
    let ok: Vec<&Measured> = results.iter().flatten().collect();
    let failed: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("round {}: {e}", i + 1)))
        .collect();
    let status = if failed.is_empty() {
        "ok".to_owned()
    } else {
        format!(
            "failed in {} of {} rounds: {}",
            failed.len(),
            p.rounds,
            failed.join(" | ")
        )
    };
    let link = format!("{}mbit-tbf", LINK.rate_bits_per_sec / 1_000_000);
    let row = |what: &str, values: Vec<f64>, goal: f64, extra: Vec<(&str, Vec<f64>)>| {
        let within = values.iter().filter(|v| **v <= goal).count() as f64;
        let mut r = Row {
            scenario: format!(
                "failover ({MEMBERS} masters, {} MiB): kill → {what}",
                ARTIFACT >> 20
            ),
            link: link.clone(),
            peer: "shelfboot".into(),
            cards: CARDS,
            runs: p.rounds,
            runs_ok: ok.len(),
            status: status.clone(),
            time_s: Fig::of(&values),
            ..Row::default()
        };
        r.extra.insert(
            "goal_s".into(),
            Fig::of(&[goal]).unwrap_or(Fig {
                median: goal,
                min: goal,
                max: goal,
                n: 1,
            }),
        );
        if let Some(f) = Fig::of(&[within]) {
            r.extra.insert("rounds_within_goal".into(), f);
        }
        for (k, v) in extra {
            if let Some(f) = Fig::of(&v) {
                r.extra.insert(k.into(), f);
            }
        }
        r
    };
    rows.push(row(
        "new master's first frame",
        ok.iter().map(|m| m.first_frame_s).collect(),
        GOAL_FIRST_FRAME_S,
        vec![(
            "killed_at_MB",
            ok.iter().map(|m| m.sent_before_kill as f64 / 1e6).collect(),
        )],
    ));
    rows.push(row(
        "new master's first data frame",
        ok.iter().map(|m| m.first_data_s).collect(),
        GOAL_CARDS_S,
        vec![],
    ));
    rows.push(row(
        "last card decided",
        ok.iter().map(|m| m.last_card_s).collect(),
        GOAL_CARDS_S,
        vec![(
            "restart_to_caught_up_s",
            ok.iter().map(|m| m.catch_up_s).collect(),
        )],
    ));
    notes.push(format!(
        "failover rows: {MEMBERS} masters (serve-child processes, one cluster, Raft on the lab \
         namespace's loopback, each on a {link} port), {CARDS} fresh simulated cards per round \
         (each a card-child process on a port of its own) burning one {} MiB artifact; the serving master SIGKILLed once its serve-stats.json \
         counted {} MiB sent in the round; first frame = the first shelfboot frame from any \
         other master's port seen by an AF_PACKET socket on a spare port (its Advertise), \
         first data frame = the first block of artifact from it (the cards continue); last \
         card = the latest card decision (set committed and checked), which includes sending \
         the rest of the artifact; all CLOCK_MONOTONIC from the kill. Every card booted and every artifact read back intact, or the round failed. \
         The killed master restarted and caught up before the next round",
        ARTIFACT >> 20,
        KILL_AFTER >> 20
    ));
    for (i, r) in results.iter().enumerate() {
        notes.push(match r {
            Ok(m) => format!(
                "failover round {}: master {} (epoch {}) killed at {:.1} MB; master {} first \
                 frame after {:.3} s, first data frame after {:.3} s, master {} serves with \
                 epoch {}; last card decided after {:.3} s; the killed master caught up {:.1} s \
                 after its restart",
                i + 1,
                m.killed,
                m.epoch_before,
                m.sent_before_kill as f64 / 1e6,
                m.first_sender,
                m.first_frame_s,
                m.first_data_s,
                m.serving_after,
                m.epoch_after,
                m.last_card_s,
                m.catch_up_s
            ),
            Err(e) => format!("failover round {}: failed: {e}", i + 1),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_frame_after_the_kill_is_the_earliest_of_the_other_masters() {
        let seen = Seen {
            frames: vec![
                vec![(1.0, true), (2.0, true), (10.5, true)],
                vec![(9.0, false), (11.2, true), (12.0, true)],
                vec![(11.0, false)],
            ],
        };
        // Master index 0 was killed at 10.0: its own later frame does not count, nor do
        // frames of the others from before the kill.
        assert_eq!(seen.first_other_after(0, 10.0, false), Some((11.0, 2)));
        assert_eq!(seen.first_other_after(2, 10.0, false), Some((10.5, 0)));
        assert_eq!(seen.first_other_after(0, 12.0, false), None);
        // The first data frame: master 2 sent only control.
        assert_eq!(seen.first_other_after(0, 10.0, true), Some((11.2, 1)));
        assert_eq!(seen.first_other_after(1, 12.0, true), None);
    }

    #[test]
    fn a_card_report_short_of_a_boot_or_an_artifact_fails_the_round() {
        let good = CardChildReport {
            booted: 1,
            verified: 1,
            artifacts_verified: 1,
            set_digests: vec![Some("ab".into())],
            ..CardChildReport::default()
        };
        assert!(check_card(&good).is_ok());
        let mut reset = good.clone();
        reset.booted = 0;
        reset.problems.push("card x: decision \"reset\"".into());
        assert!(check_card(&reset).unwrap_err().contains("reset"));
        let mut bad_set = good.clone();
        bad_set.set_digests = vec![None];
        assert!(check_card(&bad_set).is_err());
        let mut bad_image = good;
        bad_image.verified = 0;
        assert!(check_card(&bad_image).is_err());
    }
}
