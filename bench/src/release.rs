//! The release scenario: a multi-package release ([`ReleaseShape::FULL`]: 200 packages
//! of 1 KiB to 4 MiB in two archs, three card types) to 16 simulated cards, then an
//! update that changes 20 of the packages, taken by the same cards. The real master
//! service (`serve-child`) runs in the master namespace on the tbf-shaped 1 Gbit/s port;
//! each card is its own `card-child` process (the real simulated card, file-backed
//! flash) in its own card namespace, type `(i - 1) % 3` of [`RELEASE_TYPES`].
//!
//! Every run starts from a fresh master state (the release imported) and pristine flash,
//! and measures per step:
//! - the time from starting the card processes until the last card's simulation
//!   returned (plan received, every artifact fetched, staged with its hash checked, set
//!   committed);
//! - master bytes (everything the master's eth0 sent: data, plans in fragments, control,
//!   headers) ÷ the bytes the cards need: one copy of every distinct artifact (by
//!   sha256) in at least one card's plan as the master resolved it; for the update, of
//!   every artifact of a card's new plan that was not in that card's old plan;
//! - the sessions the master ran, and its own count of artifact bytes sent.
//!
//! After the clock stops each card process reads back every artifact of its committed
//! set and checks its sha256; here each set's digest is compared with the master's plan
//! for that card. A run in which any card did not boot or did not verify is a failed
//! run. Nothing here judges the figures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use shelfboot_master::resolve::Plan as CardPlan;
use shelfboot_master::state::Master;
use shelfboot_proto::msg::Digest;
use shelfboot_testkit::netns::Tbf;

use crate::backplane::Backplane;
use crate::proc::{Ended, Proc, wait_all};
use crate::report::{Fig, Row};
use crate::scenarios::{Plan, start_master, stop_master, timeout};
use crate::shelfboot::{
    self, CardChild, CardChildReport, RELEASE_TYPES, ReleaseImages, ReleaseShape, ShelfState, mono,
};

/// Cards of the scenario.
pub const CARDS: usize = 16;

/// What one step (the release, or the update) of one run measured.
#[derive(Debug, Default)]
struct Step {
    /// Seconds from starting the card processes to each card's simulation returning.
    card_secs: Vec<f64>,
    /// Bytes the master's eth0 sent during the step.
    master_tx: u64,
    /// The master's statistics (`ServeStats` as JSON), if it wrote them.
    stats: Option<serde_json::Value>,
    /// Each card's committed set digest as its process verified it (`None`: did not).
    digests: Vec<Option<String>>,
    /// Artifacts the card processes read back from flash and found intact, all cards.
    artifacts_verified: usize,
    /// Why the step failed, empty if every card booted and verified.
    problems: Vec<String>,
}

/// Runs the 16 card processes against the master once, with flash under `dir`.
fn step(
    p: &Plan,
    bp: &Backplane,
    st: &ShelfState,
    dir: &Path,
    limit: Duration,
) -> Result<Step, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut master = start_master(p, bp, st, dir).map_err(|e| format!("{e:#}"))?;
    let tx0 = bp.master_tx_bytes().map_err(|e| format!("{e:#}"))?;
    let t0 = mono();
    let mut procs = Vec::new();
    for i in 1..=CARDS {
        let (ct, arch, _) = RELEASE_TYPES[(i - 1) % RELEASE_TYPES.len()];
        let cdir = dir.join(format!("c{i}"));
        let mut child = CardChild::new(&st.anchor, &cdir, Backplane::card_mac_addr(i), 1, st.size);
        child.timeout = limit;
        child.card_type = ct.into();
        child.arch = arch;
        child.verify_set = true;
        let argv = child.argv(&p.exe, &cdir.join("report.json"));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let log = dir.join(format!("c{i}.log"));
        match Proc::spawn(&bp.card_ns(i), &argv, &log) {
            Ok(c) => procs.push(c),
            Err(e) => {
                let _ = stop_master(&mut master, dir);
                return Err(format!("starting card {i}: {e:#}"));
            }
        }
    }
    // The card processes give up at `limit` themselves; the margin covers the read-back.
    let ended = wait_all(&mut procs, Instant::now() + limit + Duration::from_secs(30));
    let stats = stop_master(&mut master, dir);
    let tx1 = bp.master_tx_bytes().map_err(|e| format!("{e:#}"))?;
    let ended = ended.map_err(|e| format!("waiting for the card processes: {e:#}"))?;
    let mut s = Step {
        master_tx: tx1.saturating_sub(tx0),
        stats,
        ..Step::default()
    };
    for (k, e) in ended.iter().enumerate() {
        let i = k + 1;
        let log = dir.join(format!("c{i}.log"));
        match e {
            Ended::Ok(_) => {}
            Ended::Hung(d) => s.problems.push(format!(
                "card {i} still running after {:.0} s, killed (see {})",
                d.as_secs_f64(),
                log.display()
            )),
            Ended::Failed(why) => s.problems.push(format!("card {i}: {why}")),
        }
        let rep: Option<CardChildReport> = std::fs::read(dir.join(format!("c{i}/report.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(r) = rep else {
            s.problems
                .push(format!("card {i} wrote no report (see {})", log.display()));
            s.digests.push(None);
            continue;
        };
        if r.booted != 1 {
            s.problems
                .push(format!("card {i} did not boot: {}", r.problems.join("; ")));
        } else {
            s.card_secs.push(r.end_mono() - t0);
        }
        if let Some(why) = r.problems.first().filter(|_| r.booted == 1) {
            s.problems.push(format!("card {i}: {why}"));
        }
        s.digests.push(r.set_digests.first().cloned().flatten());
        s.artifacts_verified += r.artifacts_verified;
    }
    Ok(s)
}

/// Each card's plan as the master resolves it now (cards registered by their Solicit).
fn plans(st: &ShelfState) -> Result<Vec<CardPlan>, String> {
    let m = Master::open(&st.state)
        .map_err(|e| format!("opening the master state {}: {e}", st.state.display()))?;
    (1..=CARDS)
        .map(|i| {
            let mac = Backplane::card_mac(i)
                .parse()
                .map_err(|e| format!("card {i} MAC: {e:?}"))?;
            m.plan(&mac)
                .map_err(|e| format!("plan of card {i}: {}", error_chain(&e)))
        })
        .collect()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    shelfboot_proto::report::error_chain(e)
}

/// Every distinct artifact (sha256 → size) of `plans`.
pub fn needed(plans: &[CardPlan]) -> BTreeMap<Digest, u64> {
    plans
        .iter()
        .flat_map(|p| p.blobs())
        .map(|b| (b.sha256, b.size))
        .collect()
}

/// Every distinct artifact of a card's `new` plan that the same card's `old` plan did
/// not have (what the update must move), sha256 → size.
pub fn changed(old: &[CardPlan], new: &[CardPlan]) -> BTreeMap<Digest, u64> {
    let mut out = BTreeMap::new();
    for (o, n) in old.iter().zip(new) {
        let had: BTreeSet<Digest> = o.blobs().map(|b| b.sha256).collect();
        out.extend(
            n.blobs()
                .filter(|b| !had.contains(&b.sha256))
                .map(|b| (b.sha256, b.size)),
        );
    }
    out
}

/// Checks the cards' verified set digests against their plans; the problems found.
fn check_digests(s: &Step, plans: &[CardPlan]) -> Vec<String> {
    let mut bad = Vec::new();
    for (k, (got, plan)) in s.digests.iter().zip(plans).enumerate() {
        match got {
            Some(d) if *d == plan.digest.to_string() => {}
            Some(d) => bad.push(format!(
                "card {}: committed set {d}, its plan is {}",
                k + 1,
                plan.digest
            )),
            None => bad.push(format!("card {}: no verified set", k + 1)),
        }
    }
    bad
}

/// The figures of one step of one run, for its row.
#[derive(Debug, Default)]
struct Figures {
    time: Vec<f64>,
    mbps: Vec<f64>,
    ratio: Vec<f64>,
    extra: BTreeMap<&'static str, Vec<f64>>,
    failed: Vec<String>,
}

impl Figures {
    /// Adds a step whose cards needed `need` (distinct artifacts) and each card
    /// `per_card[i]` bytes.
    fn add(&mut self, s: &Step, need: &BTreeMap<Digest, u64>, per_card: &[u64]) {
        if !s.problems.is_empty() {
            self.failed.push(s.problems.join("; "));
            return;
        }
        let need_bytes: u64 = need.values().sum();
        self.time
            .push(s.card_secs.iter().copied().fold(0.0, f64::max));
        self.extra
            .entry("first_card_s")
            .or_default()
            .push(s.card_secs.iter().copied().fold(f64::INFINITY, f64::min));
        let per: Vec<f64> = s
            .card_secs
            .iter()
            .zip(per_card)
            .map(|(t, b)| *b as f64 / t / 1e6)
            .collect();
        self.mbps
            .push(per.iter().sum::<f64>() / per.len().max(1) as f64);
        self.ratio.push(s.master_tx as f64 / need_bytes as f64);
        let mut put = |k: &'static str, v: f64| self.extra.entry(k).or_default().push(v);
        put("need_MB", need_bytes as f64 / 1e6);
        put("artifacts", need.len() as f64);
        put("card_artifacts_verified", s.artifacts_verified as f64);
        if let Some(st) = &s.stats {
            let sessions = st.get("sessions").and_then(|v| v.as_array());
            if let Some(v) = sessions {
                put("sessions", v.len() as f64);
                let count = |k: &str| -> u64 { v.iter().filter_map(|x| x.get(k)?.as_u64()).sum() };
                // Cards per session: how many cards took each artifact's one pass.
                put(
                    "members_per_session",
                    count("members") as f64 / v.len().max(1) as f64,
                );
                let catch_up = v
                    .iter()
                    .filter(|x| x.get("catch_up").and_then(|c| c.as_bool()) == Some(true))
                    .count();
                put("catch_up_sessions", catch_up as f64);
                let retr: u64 = v
                    .iter()
                    .filter_map(|x| x.get("retransmit_bytes")?.as_u64())
                    .sum();
                put("own_retransmit_MB", retr as f64 / 1e6);
            }
            if let Some(b) = st.get("artifact_bytes").and_then(|v| v.as_u64()) {
                put("artifact_bytes_ratio", b as f64 / need_bytes as f64);
            }
            if let Some(ms) = st.get("cpu_ms").and_then(|v| v.as_u64()) {
                put("master_cpu_s", ms as f64 / 1e3);
            }
        }
    }

    fn row(self, scenario: String, runs: usize) -> Row {
        let mut r = Row {
            scenario,
            link: "1gbit-tbf".into(),
            peer: "shelfboot".into(),
            cards: CARDS,
            runs,
            runs_ok: self.time.len(),
            status: if self.failed.is_empty() {
                "ok".into()
            } else {
                format!(
                    "failed in {} of {runs} runs: {}",
                    self.failed.len(),
                    self.failed.join(" | ")
                )
            },
            time_s: Fig::of(&self.time),
            mbps_per_card: Fig::of(&self.mbps),
            master_bytes_ratio: Fig::of(&self.ratio),
            ..Row::default()
        };
        for (k, v) in self.extra {
            if let Some(f) = Fig::of(&v) {
                r.extra.insert(k.into(), f);
            }
        }
        r
    }
}

/// Bytes of each card's plan.
fn per_card(plans: &[CardPlan]) -> Vec<u64> {
    plans
        .iter()
        .map(|p| p.blobs().map(|b| b.size).sum())
        .collect()
}

/// The release and the update of `shape`, `p.runs` times; one row for each step.
/// `label` names a reduced release in the rows (e.g. the `--quick` one).
pub fn release(
    p: &Plan,
    bp: &Backplane,
    shape: &ReleaseShape,
    label: &str,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    if bp.cards() < CARDS {
        return Err(format!(
            "the backplane has {} card namespaces, the release scenario needs {CARDS}",
            bp.cards()
        ));
    }
    let work = p.work.join("release");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let t = Instant::now();
    let images: ReleaseImages =
        shelfboot::release_images(&work, shape).map_err(|e| error_chain(&e))?;
    eprintln!(
        "release: {} packages, {:.1} MB in both archs, and the update packed in {:.1} s",
        shape.packages,
        shape.release_bytes() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    bp.shape_master(Some(Tbf::GIGABIT))
        .map_err(|e| format!("shaping the master port: {e:#}"))?;
    let limit = timeout(shape.release_bytes(), CARDS);
    let (mut first, mut update) = (Figures::default(), Figures::default());
    for run in 0..p.runs {
        let dir = work.join(format!("run-{run}"));
        let st =
            shelfboot::release_state(&dir.join("state"), &images).map_err(|e| error_chain(&e))?;
        eprintln!("release to {CARDS} cards, run {}/{}", run + 1, p.runs);
        let mut s1 = step(p, bp, &st, &dir.join("first"), limit)?;
        let plans1 = plans(&st);
        match &plans1 {
            Ok(pl) => s1.problems.extend(check_digests(&s1, pl)),
            Err(e) => s1.problems.push(e.clone()),
        }
        eprintln!(
            "  -> {} cards done, last {:.2} s {}",
            s1.card_secs.len(),
            s1.card_secs.iter().copied().fold(0.0, f64::max),
            s1.problems.join("; ")
        );
        // A failed run's directory (logs, flash, state) is left for `--keep`.
        let Ok(plans1) = plans1 else {
            first.failed.push(s1.problems.join("; "));
            update.failed.push("the release step failed".into());
            continue;
        };
        first.add(&s1, &needed(&plans1), &per_card(&plans1));
        if !s1.problems.is_empty() {
            update.failed.push("the release step failed".into());
            continue;
        }
        shelfboot::import_update(&st, &images).map_err(|e| error_chain(&e))?;
        eprintln!("update to {CARDS} cards, run {}/{}", run + 1, p.runs);
        // The same flash: each card holds the release and fetches what changed.
        let dir2 = dir.join("update");
        std::fs::create_dir_all(&dir2).map_err(|e| format!("creating {}: {e}", dir2.display()))?;
        for i in 1..=CARDS {
            let (from, to) = (dir.join(format!("first/c{i}")), dir2.join(format!("c{i}")));
            std::fs::rename(&from, &to)
                .map_err(|e| format!("moving {} to {}: {e}", from.display(), to.display()))?;
            let _ = std::fs::remove_file(to.join("report.json"));
        }
        let mut s2 = step(p, bp, &st, &dir2, limit)?;
        let ok = match plans(&st) {
            Ok(plans2) => {
                s2.problems.extend(check_digests(&s2, &plans2));
                let ch = changed(&plans1, &plans2);
                let per: Vec<u64> = plans1
                    .iter()
                    .zip(&plans2)
                    .map(|(o, n)| changed(std::slice::from_ref(o), std::slice::from_ref(n)))
                    .map(|m| m.values().sum())
                    .collect();
                eprintln!(
                    "  -> {} cards done, last {:.2} s {}",
                    s2.card_secs.len(),
                    s2.card_secs.iter().copied().fold(0.0, f64::max),
                    s2.problems.join("; ")
                );
                update.add(&s2, &ch, &per);
                s2.problems.is_empty()
            }
            Err(e) => {
                update.failed.push(e);
                false
            }
        };
        if !ok {
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("release: could not remove {}: {e}", dir.display());
        }
    }
    if first.failed.is_empty() && update.failed.is_empty() {
        let _ = std::fs::remove_dir_all(&work);
    }
    let n_changed = shape.changed.len();
    rows.push(first.row(
        format!(
            "release of {} packages to {CARDS} cards{label}",
            shape.packages
        ),
        p.runs,
    ));
    rows.push(update.row(
        format!("update of {n_changed} packages to {CARDS} cards{label}"),
        p.runs,
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shelfboot_master::image::manifest::{BlobRef, ReleaseId};
    use shelfboot_master::resolve::PlannedArtifact;

    fn art(name: &str, byte: u8, size: u64) -> PlannedArtifact {
        PlannedArtifact {
            kind: "package".into(),
            name: name.into(),
            version: "1.0.0".parse().unwrap(),
            arch: shelfboot_proto::id::Arch::X86_64,
            blob: BlobRef {
                sha256: Digest([byte; 32]),
                size,
            },
            rule: String::new(),
        }
    }

    fn plan(boot: PlannedArtifact, packages: Vec<PlannedArtifact>) -> CardPlan {
        let mut p = CardPlan {
            node: "02:5c:00:00:00:01".parse().unwrap(),
            release: ReleaseId {
                name: "shelf-os".into(),
                version: "1.0.0".parse().unwrap(),
            },
            class: "linecards".into(),
            arch: shelfboot_proto::id::Arch::X86_64,
            boot,
            cmdline: String::new(),
            packages,
            persist: true,
            test: false,
            digest: Digest([0; 32]),
            explain: vec![],
        };
        p.digest = p.compute_digest();
        p
    }

    #[test]
    fn needed_counts_an_artifact_shared_by_cards_once_and_changed_only_what_a_card_lacked() {
        let a = plan(art("k", 1, 100), vec![art("p", 2, 10), art("q", 3, 20)]);
        let b = plan(art("k2", 4, 50), vec![art("p", 2, 10), art("q", 3, 20)]);
        let need = needed(&[a.clone(), a.clone(), b.clone()]);
        assert_eq!(need.values().sum::<u64>(), 100 + 10 + 20 + 50);
        assert_eq!(need.len(), 4);
        // The update replaces q on both cards: one new artifact, counted once.
        let a2 = plan(art("k", 1, 100), vec![art("p", 2, 10), art("q", 9, 25)]);
        let b2 = plan(art("k2", 4, 50), vec![art("p", 2, 10), art("q", 9, 25)]);
        let ch = changed(&[a, b], &[a2, b2]);
        assert_eq!(
            ch.into_iter().collect::<Vec<_>>(),
            vec![(Digest([9; 32]), 25)]
        );
    }

    #[test]
    fn a_card_whose_set_is_not_its_plan_fails_the_run_and_a_good_run_gives_the_ratio() {
        let a = plan(art("k", 1, 100), vec![art("p", 2, 900)]);
        let b = plan(art("k", 1, 100), vec![art("q", 3, 1000)]);
        let good = Step {
            card_secs: vec![1.0, 2.0],
            master_tx: 4000,
            digests: vec![Some(a.digest.to_string()), Some(b.digest.to_string())],
            ..Step::default()
        };
        let plans = [a.clone(), b.clone()];
        assert!(check_digests(&good, &plans).is_empty());
        let mut bad = Step {
            digests: vec![Some(b.digest.to_string()), None],
            ..Step::default()
        };
        bad.problems = check_digests(&bad, &plans);
        assert_eq!(bad.problems.len(), 2, "{:?}", bad.problems);
        let mut f = Figures::default();
        f.add(&good, &needed(&plans), &per_card(&plans));
        f.add(&bad, &needed(&plans), &per_card(&plans));
        let r = f.row("release".into(), 2);
        assert_eq!(r.runs_ok, 1);
        assert!(
            r.status
                .starts_with("failed in 1 of 2 runs: card 1: committed set"),
            "{}",
            r.status
        );
        // 4000 bytes sent for 100 + 900 + 1000 needed; the slower card sets the time.
        assert_eq!(r.master_bytes_ratio.unwrap().median, 2.0);
        assert_eq!(r.time_s.unwrap().median, 2.0);
    }
}
