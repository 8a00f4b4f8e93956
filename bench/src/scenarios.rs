//! The benchmark's scenarios (issue 7, items 1-5) on one backplane:
//!
//! 1. one card: each peer's goodput and time, vs the raw AF_PACKET ceiling of the same run;
//! 2. 8 and 16 cards at once: time until the last card is verified, per-card goodput,
//!    master bytes ÷ artifact;
//! 3. 1 % random loss on the bridge, 8 cards: time, goodput, retransmitted bytes (master
//!    bytes beyond the same peer's loss-free 8-card run of the same round);
//! 4. warm boot of many simulated cards: wall time, master CPU seconds, artifact bytes;
//! 5. card agent peak RSS while streaming a large artifact.
//!
//! Each round (run) measures the ceiling and then every peer, so that ratios come from
//! the same round. Items 6 and 7 (flash writer, boot path) need the QEMU lab and are not
//! here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ceiling::{self, CeilingRun, FRAME_LEN};
use shelfboot_netio::Path as IoPath;
use shelfboot_testkit::netns::{Lab, Tbf};

use crate::backplane::Backplane;
use crate::peers::{Env, Outcome, Peer, transfer};
use crate::proc::{Proc, cpu_secs};
use crate::report::{Fig, Row};
use crate::shelfboot::{self, CardChild, CardChildReport, ServeChild, ShelfState, mono};
use shelfboot_proto::id::MacAddr;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub size: u64,
    pub runs: usize,
    pub shaped: Vec<bool>,
    pub cards: Vec<usize>,
    pub peers: Vec<Peer>,
    pub loss_percent: u8,
    pub warm_cards: usize,
    pub rss_size: u64,
    pub work: PathBuf,
    pub exe: PathBuf,
}

fn link_name(shaped: bool) -> &'static str {
    if shaped { "1gbit-tbf" } else { "unshaped" }
}

/// Deadline of one transfer: generous for the slowest peer at 2 MB/s per card.
pub(crate) fn timeout(size: u64, cards: usize) -> Duration {
    let per_card = size as f64 / 2e6;
    Duration::from_secs_f64(20.0 + per_card * (1.0 + cards as f64 / 8.0))
}

/// Writes `size` deterministic pseudo-random bytes (xorshift: incompressible).
pub fn write_artifact(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut left = size;
    let mut buf = Vec::with_capacity(1 << 16);
    while left > 0 {
        buf.clear();
        while buf.len() < (1 << 16) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    f.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// One ceiling measurement: ring path, `receivers` receivers, frames covering the size.
fn ceiling_mbps(size: u64, receivers: usize, shaped: bool) -> Result<f64, String> {
    let lab = Lab::new("bench-ceiling", receivers + 1).map_err(|e| format!("{e:#}"))?;
    if shaped {
        lab.shape_port(0, Tbf::GIGABIT)
            .map_err(|e| format!("{e:#}"))?;
    }
    let frames = u32::try_from(size.div_ceil(1500).clamp(1000, 400_000)).unwrap_or(400_000);
    let s = ceiling::run(
        &lab,
        CeilingRun {
            receivers,
            frames,
            path: IoPath::Ring,
            shaped,
            batch: 64,
        },
    )
    .map_err(|e| e.to_string())?;
    let per_rx = s.received as f64 / receivers as f64 * FRAME_LEN as f64;
    Ok(per_rx / s.last_rx_secs.max(1e-9) / 1e6)
}

/// Collects per-round outcomes of one peer in one scenario into a row.
fn row(
    scenario: &str,
    link: &str,
    peer: &str,
    cards: usize,
    size: u64,
    outs: &[Option<Outcome>],
    ceil: &[Option<f64>],
) -> Row {
    let mut r = Row {
        scenario: scenario.into(),
        link: link.into(),
        peer: peer.into(),
        cards,
        runs: outs.len(),
        ..Row::default()
    };
    let (mut t, mut g, mut vc, mut mb) = (vec![], vec![], vec![], vec![]);
    let mut bad: BTreeMap<String, usize> = BTreeMap::new();
    for (k, o) in outs.iter().enumerate() {
        let Some(o) = o else { continue };
        if o.status != "ok" {
            let why = if o.status == "hung" {
                "hung".to_owned()
            } else {
                format!("failed ({})", o.detail)
            };
            *bad.entry(why).or_default() += 1;
            continue;
        }
        r.runs_ok += 1;
        t.push(o.last_secs);
        let per: Vec<f64> = o.card_secs.iter().map(|s| size as f64 / s / 1e6).collect();
        let mean = per.iter().sum::<f64>() / per.len().max(1) as f64;
        g.push(mean);
        if let Some(Some(c)) = ceil.get(k) {
            vc.push(mean / c);
        }
        mb.push(o.master_tx_bytes as f64 / size as f64);
    }
    r.time_s = Fig::of(&t);
    r.mbps_per_card = Fig::of(&g);
    r.vs_ceiling = Fig::of(&vc);
    r.master_bytes_ratio = Fig::of(&mb);
    r.status = if bad.is_empty() {
        "ok".into()
    } else {
        bad.iter()
            .map(|(why, n)| format!("{why} in {n} of {} runs", outs.len()))
            .collect::<Vec<_>>()
            .join("; ")
    };
    r
}

fn ceiling_row(scenario: &str, link: &str, cards: usize, ceil: &[Option<f64>]) -> Row {
    let v: Vec<f64> = ceil.iter().flatten().copied().collect();
    Row {
        scenario: scenario.into(),
        link: link.into(),
        peer: "ceiling".into(),
        cards,
        runs: ceil.len(),
        runs_ok: v.len(),
        status: if v.len() == ceil.len() {
            "ok (whole 1514-byte frames, ring path, no acks)".into()
        } else {
            format!("failed in {} of {} runs", ceil.len() - v.len(), ceil.len())
        },
        mbps_per_card: Fig::of(&v),
        ..Row::default()
    }
}

/// Runs scenarios 1-3 on `bp`; returns the rows.
pub fn transfers(
    p: &Plan,
    bp: &Backplane,
    srv: &Path,
    sha: &str,
    shelf: Result<&ShelfState, &str>,
    cpu: Option<&crate::cpuacct::Sides>,
    rows: &mut Vec<Row>,
) -> Result<(), crate::peers::PeerError> {
    let mut env = Env {
        cpu,
        bp,
        work: p.work.join("xfer"),
        srv: srv.to_path_buf(),
        size: p.size,
        sha256: sha.into(),
        shelf: shelf.ok(),
        exe: p.exe.clone(),
        timeout: Duration::from_secs(60),
        loss_percent: 0,
    };
    for &shaped in &p.shaped {
        let link = link_name(shaped);
        bp.shape_master(shaped.then_some(Tbf::GIGABIT))?;
        let mut scen: Vec<(usize, u8)> = p.cards.iter().map(|&c| (c, 0)).collect();
        if shaped && p.loss_percent > 0 {
            scen.push((8.min(bp.cards()), p.loss_percent));
        }
        let mut lossfree_tx: BTreeMap<(Peer, usize), Vec<Option<u64>>> = BTreeMap::new();
        for (cards, loss) in scen {
            let name = match (cards, loss) {
                (1, 0) => "1 card".to_owned(),
                (c, 0) => format!("{c} cards"),
                (c, l) => format!("{c} cards, {l}% loss"),
            };
            bp.set_loss(loss)?;
            env.loss_percent = loss;
            env.timeout = timeout(p.size, cards);
            let mut ceil = Vec::new();
            let mut outs: BTreeMap<Peer, Vec<Option<Outcome>>> = BTreeMap::new();
            for run in 0..p.runs {
                if loss == 0 {
                    let c = ceiling_mbps(p.size, cards, shaped);
                    if let Err(e) = &c {
                        eprintln!("ceiling {name} {link} run {run}: {e}");
                    }
                    ceil.push(c.ok());
                }
                for &peer in &p.peers {
                    if peer == Peer::Shelfboot && shelf.is_err() {
                        continue;
                    }
                    if peer == Peer::Tftp && loss > 0 {
                        continue;
                    }
                    eprintln!("{name} {link} run {}/{}: {}", run + 1, p.runs, peer.name());
                    let o = transfer(&env, peer, cards)?;
                    eprintln!(
                        "  -> {} {:.2} s {}",
                        o.status,
                        o.last_secs,
                        if o.detail.is_empty() { "" } else { &o.detail }
                    );
                    outs.entry(peer).or_default().push(Some(o));
                }
            }
            if loss == 0 {
                rows.push(ceiling_row(&name, link, cards, &ceil));
            }
            for &peer in &p.peers {
                if peer == Peer::Tftp && loss > 0 {
                    rows.push(Row {
                        scenario: name.clone(),
                        link: link.into(),
                        peer: peer.name().into(),
                        cards,
                        status: "not run: lock-step TFTP waits a retransmit timeout per lost \
                                 block, beyond the time bound"
                            .into(),
                        ..Row::default()
                    });
                    continue;
                }
                let Some(o) = outs.get(&peer) else {
                    rows.push(Row {
                        scenario: name.clone(),
                        link: link.into(),
                        peer: peer.name().into(),
                        cards,
                        status: format!("not available: {}", shelf.err().unwrap_or_default()),
                        ..Row::default()
                    });
                    continue;
                };
                let mut r = row(&name, link, peer.name(), cards, p.size, o, &ceil);
                let tx: Vec<Option<u64>> = o
                    .iter()
                    .map(|x| {
                        x.as_ref()
                            .filter(|x| x.status == "ok")
                            .map(|x| x.master_tx_bytes)
                    })
                    .collect();
                if loss == 0 {
                    lossfree_tx.insert((peer, cards), tx);
                } else if let Some(base) = lossfree_tx.get(&(peer, cards)) {
                    let extra: Vec<f64> = tx
                        .iter()
                        .zip(base)
                        .filter_map(|(a, b)| Some(a.as_ref()?.saturating_sub(*b.as_ref()?) as f64))
                        .collect();
                    r.retransmitted_bytes = Fig::of(&extra);
                }
                let own: Vec<f64> = o
                    .iter()
                    .flatten()
                    .filter_map(|x| x.own_retransmit_bytes.map(|b| b as f64))
                    .collect();
                if let Some(f) = Fig::of(&own) {
                    r.extra.insert("own_retransmit_MB".into(), scale(f, 1e-6));
                }
                let ok = || o.iter().flatten().filter(|x| x.status == "ok");
                // CPU per GB: the master's per GB its port sent, the cards' per GB of
                // artifact they received (all cards together).
                let per_gb = |cpu: Option<f64>, bytes: f64| cpu.map(|c| c / (bytes / 1e9));
                let m: Vec<f64> = ok()
                    .filter_map(|x| per_gb(x.master_cpu_s, x.master_tx_bytes as f64))
                    .collect();
                let c: Vec<f64> = ok()
                    .filter_map(|x| per_gb(x.card_cpu_s, (p.size * cards as u64) as f64))
                    .collect();
                let first: Vec<f64> = ok().filter_map(|x| x.to_first_block_s).collect();
                let after: Vec<f64> = ok().filter_map(|x| x.after_last_block_s).collect();
                for (k, v) in [
                    ("master_cpu_s_per_GB_sent", m),
                    ("card_cpu_s_per_GB", c),
                    ("to_first_block_s", first),
                    ("after_last_block_s", after),
                ] {
                    if let Some(f) = Fig::of(&v) {
                        r.extra.insert(k.into(), f);
                    }
                }
                rows.push(r);
            }
        }
        bp.set_loss(0)?;
    }
    Ok(())
}

fn scale(f: Fig, k: f64) -> Fig {
    Fig {
        median: f.median * k,
        min: f.min * k,
        max: f.max * k,
        n: f.n,
    }
}

pub(crate) fn start_master(
    p: &Plan,
    bp: &Backplane,
    st: &ShelfState,
    work: &Path,
) -> Result<Proc, crate::proc::ProcError> {
    let argv = ServeChild {
        state: st.state.clone(),
        iface: "eth0".into(),
        stop_file: work.join("stop"),
        stats_out: work.join("serve-stats.json"),
        key: None,
    }
    .argv(&p.exe);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let m = Proc::spawn(&bp.master_ns(), &argv, &work.join("master.log"))?;
    std::thread::sleep(Duration::from_millis(700));
    Ok(m)
}

pub(crate) fn stop_master(m: &mut Proc, work: &Path) -> Option<serde_json::Value> {
    let _ = std::fs::write(work.join("stop"), b"stop");
    let _ = m.wait_until(Instant::now() + Duration::from_secs(10));
    let _ = std::fs::remove_file(work.join("stop"));
    std::fs::read(work.join("serve-stats.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

#[allow(clippy::too_many_arguments)]
fn run_cards(
    p: &Plan,
    bp: &Backplane,
    st: &ShelfState,
    dir: &Path,
    base_mac: MacAddr,
    cards: usize,
    warm: bool,
    sha: Option<&str>,
    log: &Path,
) -> Result<(CardChildReport, f64, Option<u32>), String> {
    let rep = dir.join("report.json");
    let mut child = CardChild::new(&st.anchor, dir, base_mac, cards, st.size);
    child.timeout = timeout(st.size, 1);
    child.warm = warm;
    child.sha256 = sha.map(str::to_owned);
    let argv = child.argv(&p.exe, &rep);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let t0 = mono();
    let mut c = Proc::spawn(&bp.card_ns(1), &argv, log).map_err(|e| format!("{e:#}"))?;
    let pid = Some(c.child.id());
    let deadline = Instant::now() + timeout(st.size, 1) + Duration::from_secs(30);
    let ended = c.wait_until(deadline).map_err(|e| format!("{e:#}"))?;
    let rep: CardChildReport = std::fs::read(&rep)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            format!(
                "card-child ended {ended:?} without a report; see {}",
                log.display()
            )
        })?;
    Ok((rep, t0, pid))
}

/// Scenario 4: warm boot of `p.warm_cards` simulated cards (one process on card 1's
/// port, each card its own MAC), flash burned beforehand as after provisioning.
pub fn warm_boot(p: &Plan, bp: &Backplane, rows: &mut Vec<Row>) -> Result<(), String> {
    let work = p.work.join("warm");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let art = work.join("boot.img");
    let size = 64 * 1024;
    write_artifact(&art, size, 7).map_err(|e| format!("{}: {e}", art.display()))?;
    let st = shelfboot::prepare(&work, &art, size).map_err(|e| format!("{e:#}"))?;
    let cards_dir = work.join("cards");
    // The warm cards' MACs: 02:5d:00:00:00:01 onwards (apart from the transfer cards').
    let base = MacAddr([0x02, 0x5d, 0, 0, 0, 1]);
    let t = Instant::now();
    shelfboot::burn_warm(&st, &cards_dir, base, p.warm_cards).map_err(|e| format!("{e:#}"))?;
    eprintln!(
        "warm boot: burned {} cards in {:.1} s",
        p.warm_cards,
        t.elapsed().as_secs_f64()
    );
    bp.shape_master(Some(Tbf::GIGABIT))
        .map_err(|e| format!("{e:#}"))?;
    let (mut wall, mut proc_wall, mut cpu, mut card_cpu, mut bytes, mut bad) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    // The master's Solicit counters: repeats mean cards re-sent before their answer.
    let mut counters: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for run in 0..p.runs {
        eprintln!(
            "warm boot of {} cards, run {}/{}",
            p.warm_cards,
            run + 1,
            p.runs
        );
        let mut m = start_master(p, bp, &st, &work).map_err(|e| format!("{e:#}"))?;
        let cpu0 = cpu_secs(m.child.id());
        let res = run_cards(
            p,
            bp,
            &st,
            &cards_dir,
            base,
            p.warm_cards,
            true,
            None,
            &work.join(format!("cards-{run}.log")),
        );
        let cpu1 = cpu_secs(m.child.id());
        let stats = stop_master(&mut m, &work);
        match res {
            Ok((rep, t0, _)) if rep.validated_only == p.warm_cards => {
                // Until every card decided (Continue received, validated), counted from
                // the moment all cards solicit; the process wall adds exec, opening
                // every card's flash store and the cards' Ready repeats.
                wall.push(rep.last_decided_s.unwrap_or(f64::NAN));
                proc_wall.push(rep.done_mono - t0);
                card_cpu.extend(rep.cpu_s);
                if let (Some(a), Some(b)) = (cpu0, cpu1) {
                    cpu.push(b - a);
                }
                let ab = stats
                    .as_ref()
                    .and_then(|s| s.get("artifact_bytes")?.as_u64())
                    .unwrap_or(u64::MAX);
                bytes.push(ab as f64);
                for k in ["solicits", "solicits_repeated", "solicit_queue_high_water"] {
                    if let Some(v) = stats.as_ref().and_then(|s| s.get(k)?.as_u64()) {
                        counters.entry(k).or_default().push(v as f64);
                    }
                }
            }
            Ok((rep, _, _)) => bad.push(format!(
                "{} of {} validated only ({})",
                rep.validated_only,
                p.warm_cards,
                rep.problems.first().cloned().unwrap_or_default()
            )),
            Err(e) => bad.push(e),
        }
    }
    let budget = std::env::var(shelfboot::SOLICIT_BUDGET_ENV).ok();
    let mut r = Row {
        scenario: match &budget {
            Some(b) => format!("warm boot, {} cards, solicit budget {b}", p.warm_cards),
            None => format!("warm boot, {} cards", p.warm_cards),
        },
        link: "1gbit-tbf".into(),
        peer: "shelfboot".into(),
        cards: p.warm_cards,
        runs: p.runs,
        runs_ok: wall.len(),
        status: if bad.is_empty() {
            "ok".into()
        } else {
            bad.join("; ")
        },
        time_s: Fig::of(&wall),
        ..Row::default()
    };
    if let Some(f) = Fig::of(&cpu) {
        r.extra.insert("master_cpu_s".into(), f);
    }
    if let Some(f) = Fig::of(&proc_wall) {
        r.extra.insert("card_process_wall_s".into(), f);
    }
    if let Some(f) = Fig::of(&card_cpu) {
        r.extra.insert("card_process_cpu_s".into(), f);
    }
    for (k, v) in counters {
        if let Some(f) = Fig::of(&v) {
            r.extra.insert(format!("master_{k}"), f);
        }
    }
    if let Some(f) = Fig::of(&bytes) {
        r.extra.insert("artifact_bytes".into(), f);
    }
    rows.push(r);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Scenario 5: one card streams a `p.rss_size` artifact; its process's VmHWM.
pub fn card_rss(p: &Plan, bp: &Backplane, rows: &mut Vec<Row>) -> Result<(), String> {
    let work = p.work.join("rss");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let art = work.join("big.img");
    write_artifact(&art, p.rss_size, 11).map_err(|e| format!("{}: {e}", art.display()))?;
    let sha = shelfboot::file_sha(&art).map_err(|e| format!("{}: {e}", art.display()))?;
    let st = shelfboot::prepare(&work, &art, p.rss_size).map_err(|e| format!("{e:#}"))?;
    let _ = std::fs::remove_file(&art);
    bp.shape_master(Some(Tbf::GIGABIT))
        .map_err(|e| format!("{e:#}"))?;
    let mut m = start_master(p, bp, &st, &work).map_err(|e| format!("{e:#}"))?;
    let cards_dir = work.join("card");
    let res = run_cards(
        p,
        bp,
        &st,
        &cards_dir,
        Backplane::card_mac_addr(1),
        1,
        false,
        Some(&sha),
        &work.join("card.log"),
    );
    let stats = stop_master(&mut m, &work);
    // Repairs the master sent: a receive ring too small for the card shows up here.
    let retransmit: Option<f64> = stats.as_ref().and_then(|s| {
        let v = s.get("sessions")?.as_array()?;
        Some(
            v.iter()
                .filter_map(|x| x.get("retransmit_bytes")?.as_u64())
                .sum::<u64>() as f64,
        )
    });
    let mut r = Row {
        scenario: format!("card RSS, {} MiB", p.rss_size >> 20),
        link: "1gbit-tbf".into(),
        peer: "shelfboot".into(),
        cards: 1,
        runs: 1,
        ..Row::default()
    };
    match res {
        Ok((rep, t0, _)) if rep.verified == 1 => {
            r.runs_ok = 1;
            r.status = "ok".into();
            let secs = rep.end_mono() - t0;
            r.time_s = Fig::of(&[secs]);
            r.mbps_per_card = Fig::of(&[p.rss_size as f64 / secs / 1e6]);
            if let Some(f) = retransmit.and_then(|b| Fig::of(&[b / 1e6])) {
                r.extra.insert("own_retransmit_MB".into(), f);
            }
            r.extra.insert(
                "vm_hwm_MiB".into(),
                Fig::of(&[rep.vm_hwm_kib as f64 / 1024.0]).unwrap_or(Fig {
                    median: 0.0,
                    min: 0.0,
                    max: 0.0,
                    n: 0,
                }),
            );
        }
        Ok((rep, _, _)) => r.status = format!("failed: {}", rep.problems.join("; ")),
        Err(e) => r.status = format!("failed: {e}"),
    }
    rows.push(r);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
