//! One transfer of the artifact from the master namespace to N card namespaces, by one
//! peer, each run with the options its own documentation gives for speed
//! (docs/benchmarks.md has the table with the references):
//!
//! - TFTP: tftpd-hpa `in.tftpd -L -s` + `curl --tftp-blksize 1468` (in.tftpd(8),
//!   `--blocksize`: 1468 on a 1500-byte MTU).
//! - HTTP: `busybox httpd` + `curl`, as they come.
//! - udpcast: `udp-sender --full-duplex --slice-size 1024 --rexmit-hello-interval 100`
//!   (+ `--min-wait 2` when the bridge drops frames) and `udp-receiver --rcvbuf 4194304`,
//!   both with `--mcast-rdv-address` off the all-hosts group.
//! - uftp: `uftp -R -1 -b 1436 -B 4194304` + `uftpd -q -B 4194304`.
//! - shelfboot: `serve-child` + one `card-child` per card.
//!
//! The buffer options take effect only with the host's `net.core.rmem_max`/`wmem_max`
//! at least as large; `sockbuf` raises them for the run. Every peer's client writes the
//! artifact into the same directory, on the same filesystem, as a shelfboot card keeps
//! its file-backed flash in (`<work>/xfer/c<N>`).
//!
//! Every server runs inside the master's namespace, every client inside its card's; no
//! process touches the host network. Each transfer has a deadline: a client still
//! running then is killed and the transfer is reported as hung. Each received file's
//! sha256 is checked after the clock stops. This module measures one transfer; medians
//! and ratios are `scenarios`' job.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backplane::{Backplane, BackplaneError};
use crate::cpuacct::Sides;
use crate::proc::{Ended, Proc, ProcError, wait_all};
use crate::shelfboot::{CardChild, CardChildReport, ShelfState, file_sha, mono};

/// The contenders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    Tftp,
    Http,
    Udpcast,
    Uftp,
    Shelfboot,
}

impl Peer {
    pub const ALL: [Peer; 5] = [
        Peer::Shelfboot,
        Peer::Uftp,
        Peer::Http,
        Peer::Udpcast,
        Peer::Tftp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Tftp => "tftp",
            Peer::Http => "http",
            Peer::Udpcast => "udpcast",
            Peer::Uftp => "uftp",
            Peer::Shelfboot => "shelfboot",
        }
    }

    pub fn parse(s: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Failures of the harness (not of a peer: those are outcomes).
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("backplane")]
    Backplane(#[from] BackplaneError),
    #[error("child process")]
    Proc(#[from] ProcError),
    #[error("preparing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How one transfer went.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// "ok", "hung" or "failed".
    pub status: &'static str,
    /// Why, when not ok.
    pub detail: String,
    /// Seconds from the start until the last card had the whole artifact.
    pub last_secs: f64,
    /// Seconds until each card was done (cards that finished).
    pub card_secs: Vec<f64>,
    /// Bytes the master's interface sent during the transfer (headers included).
    pub master_tx_bytes: u64,
    /// Cards whose received artifact has the right sha256.
    pub verified: usize,
    /// Retransmitted bytes as the peer itself counts them (shelfboot only).
    pub own_retransmit_bytes: Option<u64>,
    /// CPU seconds of every process on the master's side (servers, senders, their
    /// children) during the transfer; `None` without CPU accounting.
    pub master_cpu_s: Option<f64>,
    /// The same for the cards' side, all cards together.
    pub card_cpu_s: Option<f64>,
    /// shelfboot only: seconds from the start until the first card stored its first data
    /// block (process start, discovery, plan, join window).
    pub to_first_block_s: Option<f64>,
    /// shelfboot only: the longest time a card took from its last data block to its end
    /// (last LEB, sha256, commit, decision).
    pub after_last_block_s: Option<f64>,
}

/// What a transfer needs.
#[derive(Debug)]
pub struct Env<'a> {
    pub bp: &'a Backplane,
    /// Scratch directory for this transfer (created and emptied here).
    pub work: PathBuf,
    /// Directory served by TFTP/HTTP, holding `artifact.bin`.
    pub srv: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub shelf: Option<&'a ShelfState>,
    pub exe: PathBuf,
    pub timeout: Duration,
    /// Percentage of frames the bridge drops during this transfer (0: none). udpcast's
    /// rendezvous options for lossy networks depend on it.
    pub loss_percent: u8,
    /// Control groups that count each side's CPU; `None` runs without CPU figures.
    pub cpu: Option<&'a Sides>,
}

impl Env<'_> {
    /// Starts `argv` in namespace `ns`, in the CPU group of its side of the backplane.
    fn spawn(
        &self,
        ns: &str,
        argv: &[&str],
        log: &Path,
        cwd: Option<&Path>,
    ) -> Result<Proc, ProcError> {
        let group = self.cpu.map(|c| {
            if ns == self.bp.master_ns() {
                c.master.procs_file()
            } else {
                c.cards.procs_file()
            }
        });
        Proc::spawn_accounted(ns, argv, log, cwd, group.as_deref())
    }
}

const ART: &str = "artifact.bin";
/// Socket buffer the peers with a buffer option ask for, in bytes: uftp's and uftpd's `-B`
/// (uftp(1), uftpd(1), and uftp's ReadMe, "Tuning": on server and clients), and
/// udp-receiver's `--rcvbuf` (its usage text; udp-sender(1) on receivers that drop
/// packets). 4 MiB, the same as a shelfboot card's receive window. The host's
/// `net.core.rmem_max`/`wmem_max` must be at least this for it to take effect (`sockbuf`).
pub const SOCKET_BUFFER: u64 = 4 << 20;
/// udpcast's slice size in blocks (`--slice-size`; at most 1024, udp-sender(1) "Tuning
/// options"): in full-duplex mode the sender keeps it fixed, and it waits for every
/// receiver's acknowledgement once per slice.
const UDPCAST_SLICE: &str = "1024";
/// udpcast's rendezvous group. Its default (224.0.0.1, all-hosts) never connected sender
/// and receiver across our veths (both wait forever); any ordinary group works.
const RDV: &str = "239.1.1.1";

fn mkdir(p: &Path) -> Result<(), PeerError> {
    std::fs::create_dir_all(p).map_err(|source| PeerError::Io {
        path: p.to_path_buf(),
        source,
    })
}

/// Moves the artifact to `cards` cards with `peer`; cleans up the received copies.
pub fn transfer(env: &Env, peer: Peer, cards: usize) -> Result<Outcome, PeerError> {
    let _ = std::fs::remove_dir_all(&env.work);
    mkdir(&env.work)?;
    let logs = env.work.join("logs");
    mkdir(&logs)?;
    let ns = env.bp.master_ns();
    let tx0 = env.bp.master_tx_bytes()?;
    let cpu0 = env.cpu.and_then(Sides::usage);
    let log = |name: String| logs.join(name);
    let outs: Vec<PathBuf> = (1..=cards)
        .map(|i| env.work.join(format!("c{i}")))
        .collect();
    for o in &outs {
        mkdir(o)?;
    }
    let mut servers: Vec<Proc> = Vec::new();
    let mut clients: Vec<Proc> = Vec::new();
    let mut sender: Option<Proc> = None;
    let settle = Duration::from_millis(300);
    let t0_mono;
    match peer {
        Peer::Tftp | Peer::Http => {
            let srv = env.srv.display().to_string();
            let argv: Vec<&str> = if peer == Peer::Tftp {
                vec![
                    "in.tftpd",
                    "-L",
                    "-s",
                    "-u",
                    "root",
                    "-a",
                    "10.77.0.1:69",
                    &srv,
                ]
            } else {
                vec!["busybox", "httpd", "-f", "-p", "10.77.0.1:8080", "-h", &srv]
            };
            servers.push(env.spawn(&ns, &argv, &log("server.log".into()), None)?);
            std::thread::sleep(settle);
            t0_mono = mono();
            for (i, o) in outs.iter().enumerate() {
                let out = o.join(ART).display().to_string();
                let url = if peer == Peer::Tftp {
                    format!("tftp://10.77.0.1/{ART}")
                } else {
                    format!("http://10.77.0.1:8080/{ART}")
                };
                let mut argv = vec!["curl", "-sS", "--fail", "-o", &out];
                if peer == Peer::Tftp {
                    argv.extend(["--tftp-blksize", "1468"]);
                }
                argv.push(&url);
                clients.push(env.spawn(
                    &env.bp.card_ns(i + 1),
                    &argv,
                    &log(format!("c{}.log", i + 1)),
                    None,
                )?);
            }
        }
        Peer::Udpcast => {
            let buf = SOCKET_BUFFER.to_string();
            for (i, o) in outs.iter().enumerate() {
                let out = o.join(ART).display().to_string();
                let argv = [
                    "udp-receiver",
                    "--interface",
                    "eth0",
                    "--nokbd",
                    "--mcast-rdv-address",
                    RDV,
                    "--rcvbuf",
                    &buf,
                    "--file",
                    &out,
                ];
                clients.push(env.spawn(
                    &env.bp.card_ns(i + 1),
                    &argv,
                    &log(format!("c{}.log", i + 1)),
                    None,
                )?);
            }
            std::thread::sleep(settle);
            t0_mono = mono();
            let file = env.srv.join(ART).display().to_string();
            let n = cards.to_string();
            let mut argv = vec![
                "udp-sender",
                "--interface",
                "eth0",
                "--nokbd",
                "--min-receivers",
                &n,
                "--mcast-rdv-address",
                RDV,
                "--full-duplex",
                "--slice-size",
                UDPCAST_SLICE,
                // The sender checks `--min-receivers` only when its wait for a message
                // times out: after 2 s of silence by default, after this interval (ms) with
                // it (udps-negotiate.c). It also repeats the HELLO at that interval.
                "--rexmit-hello-interval",
                "100",
            ];
            if env.loss_percent > 0 {
                // A receiver whose HELLO or CONNECT_REPLY is lost waits for ever, and so
                // does the sender (seen at 1 % loss). A repeated HELLO makes it ask again,
                // but the sender only repeats it until it starts; `--min-wait` keeps it
                // waiting 1-2 s (whole seconds counted from the first connection).
                argv.extend(["--min-wait", "2"]);
            }
            argv.extend(["--file", &file]);
            sender = Some(env.spawn(&ns, &argv, &log("sender.log".into()), None)?);
        }
        Peer::Uftp => {
            let buf = SOCKET_BUFFER.to_string();
            for (i, o) in outs.iter().enumerate() {
                let out = o.display().to_string();
                let uid = format!("0x{:08x}", i + 1);
                // `-q`: no DNS lookup of the server's address (uftpd(1)); in a backplane
                // namespace it waits 10 s for a resolver it cannot reach.
                let argv = [
                    "uftpd", "-d", "-x", "1", "-q", "-I", "eth0", "-B", &buf, "-D", &out, "-U",
                    &uid,
                ];
                servers.push(env.spawn(
                    &env.bp.card_ns(i + 1),
                    &argv,
                    &log(format!("c{}.log", i + 1)),
                    None,
                )?);
            }
            std::thread::sleep(settle);
            t0_mono = mono();
            let hosts: Vec<String> = (1..=cards).map(|i| format!("0x{i:08x}")).collect();
            let hosts = hosts.join(",");
            // `-R -1`: as fast as the interface allows, which uftp(1) recommends where the
            // path to every client is as fast as the server's own interface: here the
            // master's (shaped) port is the narrowest link.
            let argv = [
                "uftp", "-x", "1", "-I", "eth0", "-R", "-1", "-b", "1436", "-B", &buf, "-H",
                &hosts, ART,
            ];
            sender = Some(env.spawn(&ns, &argv, &log("sender.log".into()), Some(&env.srv))?);
        }
        Peer::Shelfboot => {
            return shelfboot(env, cards, tx0, &outs, &logs);
        }
    }
    let deadline = Instant::now() + env.timeout;
    let mut ended = wait_all(&mut clients, deadline)?;
    if let Some(s) = sender.as_mut() {
        let e = s.wait_until(deadline)?;
        if peer == Peer::Uftp {
            // uftpd never exits: the sender's end is every card's end.
            ended = vec![e; cards];
        } else if let Ended::Hung(_) | Ended::Failed(_) = e {
            ended.push(e);
        }
    }
    for s in servers.iter_mut() {
        s.kill();
    }
    let tx1 = env.bp.master_tx_bytes()?;
    let elapsed = mono() - t0_mono;
    let mut outcome = judge(&ended, elapsed, tx1.saturating_sub(tx0));
    if let Some(((m0, c0), (m1, c1))) = cpu0.zip(env.cpu.and_then(Sides::usage)) {
        outcome.master_cpu_s = Some(m1 - m0);
        outcome.card_cpu_s = Some(c1 - c0);
    }
    for o in &outs {
        if file_sha(&o.join(ART)).is_ok_and(|s| s == env.sha256) {
            outcome.verified += 1;
        }
    }
    check_verified(&mut outcome, cards);
    for o in &outs {
        let _ = std::fs::remove_dir_all(o);
    }
    Ok(outcome)
}

fn judge(ended: &[Ended], elapsed: f64, tx: u64) -> Outcome {
    let mut o = Outcome {
        status: "ok",
        detail: String::new(),
        last_secs: 0.0,
        card_secs: Vec::new(),
        master_tx_bytes: tx,
        verified: 0,
        own_retransmit_bytes: None,
        master_cpu_s: None,
        card_cpu_s: None,
        to_first_block_s: None,
        after_last_block_s: None,
    };
    for e in ended {
        match e {
            Ended::Ok(d) => o.card_secs.push(d.as_secs_f64()),
            Ended::Hung(d) => {
                o.status = "hung";
                o.detail = format!("still running after {:.1} s, killed", d.as_secs_f64());
            }
            Ended::Failed(msg) if o.status == "ok" => {
                o.status = "failed";
                o.detail = msg.clone();
            }
            Ended::Failed(_) => {}
        }
    }
    o.last_secs = o.card_secs.iter().copied().fold(0.0, f64::max);
    if o.status != "ok" {
        o.last_secs = elapsed;
    }
    o
}

fn check_verified(o: &mut Outcome, cards: usize) {
    if o.status == "ok" && o.verified != cards {
        o.status = "failed";
        o.detail = format!("only {} of {cards} copies had the right sha256", o.verified);
    }
}

fn shelfboot(
    env: &Env,
    cards: usize,
    tx0: u64,
    outs: &[PathBuf],
    logs: &Path,
) -> Result<Outcome, PeerError> {
    let Some(st) = env.shelf else {
        return Ok(Outcome {
            status: "failed",
            detail: "no shelfboot state was prepared".into(),
            last_secs: 0.0,
            card_secs: vec![],
            master_tx_bytes: 0,
            verified: 0,
            own_retransmit_bytes: None,
            master_cpu_s: None,
            card_cpu_s: None,
            to_first_block_s: None,
            after_last_block_s: None,
        });
    };
    let cpu0 = env.cpu.and_then(Sides::usage);
    let exe = env.exe.display().to_string();
    let stop = env.work.join("stop");
    let stats = env.work.join("serve-stats.json");
    let (state, stop_s, stats_s) = (
        st.state.display().to_string(),
        stop.display().to_string(),
        stats.display().to_string(),
    );
    let mut master = env.spawn(
        &env.bp.master_ns(),
        &[
            &exe,
            "serve-child",
            "--state",
            &state,
            "--iface",
            "eth0",
            "--stop-file",
            &stop_s,
            "--stats-out",
            &stats_s,
        ],
        &logs.join("master.log"),
        None,
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let t0 = mono();
    let mut clients = Vec::new();
    for (i, o) in outs.iter().enumerate() {
        let mut child = CardChild::new(&st.anchor, o, Backplane::card_mac_addr(i + 1), 1, st.size);
        child.timeout = env.timeout;
        child.sha256 = Some(env.sha256.clone());
        let argv = child.argv(&env.exe, &o.join("report.json"));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        clients.push(env.spawn(
            &env.bp.card_ns(i + 1),
            &argv,
            &logs.join(format!("c{}.log", i + 1)),
            None,
        )?);
    }
    let ended = wait_all(
        &mut clients,
        Instant::now() + env.timeout + Duration::from_secs(5),
    )?;
    let elapsed = mono() - t0;
    let _ = std::fs::write(&stop, b"stop");
    let _ = master.wait_until(Instant::now() + Duration::from_secs(10))?;
    let tx1 = env.bp.master_tx_bytes()?;
    let mut o = judge(&ended, elapsed, tx1.saturating_sub(tx0));
    o.card_secs.clear();
    // The master's CPU from its group; each card's from its own report, taken when its
    // simulation returned (before card-child's read-back check, which is the benchmark's
    // own verification, like the hashing of the other peers' copies).
    o.master_cpu_s = cpu0
        .zip(env.cpu.and_then(Sides::usage))
        .map(|(a, b)| b.0 - a.0);
    let mut card_cpu = Some(0.0);
    let (mut first, mut after) = (None::<f64>, None::<f64>);
    for (i, out) in outs.iter().enumerate() {
        let rep: Option<CardChildReport> = std::fs::read(out.join("report.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match rep {
            Some(r) => {
                o.verified += r.verified;
                card_cpu = card_cpu.zip(r.cpu_s).map(|(a, b)| a + b);
                if let Some((f, a)) = r.stream_edges(t0) {
                    first = Some(first.map_or(f, |x| x.min(f)));
                    after = Some(after.map_or(a, |x| x.max(a)));
                }
                if r.booted == 1 {
                    o.card_secs.push(r.end_mono() - t0);
                } else if o.status == "ok" {
                    o.status = "failed";
                    o.detail = format!("card {}: {}", i + 1, r.problems.join("; "));
                }
            }
            None if o.status == "ok" => {
                o.status = "failed";
                o.detail = format!("card {} wrote no report; see {}", i + 1, logs.display());
            }
            None => {}
        }
    }
    if o.status == "ok" {
        o.last_secs = o.card_secs.iter().copied().fold(0.0, f64::max);
    }
    o.card_cpu_s = card_cpu;
    o.to_first_block_s = first;
    o.after_last_block_s = after;
    let sv: Option<serde_json::Value> = std::fs::read(&stats)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    o.own_retransmit_bytes = sv.as_ref().and_then(|v| {
        v.get("sessions")?
            .as_array()?
            .iter()
            .map(|s| {
                s.get("retransmit_bytes")
                    .and_then(serde_json::Value::as_u64)
            })
            .sum::<Option<u64>>()
    });
    check_verified(&mut o, cards);
    for out in outs {
        let _ = std::fs::remove_dir_all(out);
    }
    Ok(o)
}
