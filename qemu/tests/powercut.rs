//! Tier-3 power-cut scenario: power is cut at random points while a card
//! downloads and commits a new set, and every time the card then holds, and boots, a whole
//! old set or a whole new set: never a mix, never nothing.
//!
//! `power_cut_during_download_and_commit` (QEMU tier): one card (lc100,
//! block2mtd flash on a raw image that persists across power cycles). Three releases are
//! imported: 1.0 (the lab release), 1.1 (heartbeat 1.1.0 plus an incompressible `bulk`
//! package, so there is something to download) and 1.2 (heartbeat 1.2.0 plus 60 small
//! packages `lab-pkg-NN`: a plan of 64 artifacts in fragments, one segment of 61 new
//! artifacts, every package mounted in the Ready line). The card
//! installs 1.0 from erased flash to Ready. Then each trial:
//!
//! ```text
//! target = the release that is neither the committed set nor the kept previous set
//!          (so every trial downloads and commits something; rotation 1.0→1.1→1.2→1.0…)
//! stop master, Master::assign/rollback(default → target), start master, power cycle
//! cut kind: when the target is 1.2 (the 60-package commit), a download cut at a staged
//!   package until three cuts landed before its commit line, then download and
//!   commit-window in turn; otherwise trial % 5. The test runs until those three cuts
//!   (more trials than asked if needed, at most 6 more). Delay from the seeded RNG:
//!   download      release 1.2: at the line "staged lab-pkg-K" (or a later package's,
//!                 or "resuming"), K = U(0, 56), the commit at least 4 packages away;
//!                 other releases: plan line + U(0, stage time seen so far)
//!   commit-window last "staged" line + U(0, staged→commit gap seen so far): the rename
//!   after-commit  card's "committed set" line + U(0, 1.5 s): begin_boot, kexec load
//!   kexec         "kexec: loading" + U(0, 4 s): kexec_file_load, reboot, new kernel
//!   validate      stored image's "config: stored true" + U(0, 3 s): before mark_ready
//! power cut (SIGKILL of QEMU: the guest's unsynced page cache is lost too)
//! check boot, master absent on every third trial (i % 3 == 2), present on the others:
//!   init's inventory line: digest and artifact list equal one of {old, target}, whole
//!   absent  → "no master answered" → Ready line = exactly that set's packages
//!   present → that set is the target: Ready = target's packages;
//!             it is the old set: the card fetches the target again, and this boot is
//!             the next trial's install boot (chained)
//! ```
//!
//! Every trial logs the seed, the cut point (kind, delay, last milestone before the cut),
//! what the flash held, what booted, and the times. Replay with SHELFBOOT_POWERCUT_SEED=N
//! (decimal or 0x hex), more trials with SHELFBOOT_POWERCUT_TRIALS=N (default 10).
//! After the trials, a busybox VM with mtd-utils attaches a copy of the card's flash and
//! runs `ubinfo -a`: it must succeed and list `sb.inventory` (static) and the `sb.seg.*`
//! segments (dynamic).
//!
//! Consoles: `$CARGO_TARGET_TMPDIR/lab-logs/powercut/`.
//!
//! What this does not prove: block2mtd keeps writes in the guest page cache until a sync
//! or writeback, so a cut loses recent writes in any order (real NAND does not reorder);
//! that is harsher than NAND for the last seconds before a cut, and it says nothing about
//! torn NAND pages (nandsim + UBI's power-cut emulation would).
//!
//! `power_cut_on_aarch64_card` (QEMU tier): the same machinery on an aarch64 card (the
//! lab's own arm64 kernel under `qemu-system-aarch64 -M virt`, block2mtd built in), three
//! trials (SHELFBOOT_POWERCUT_TRIALS), every cut during a download or in the commit
//! window (commit window, then release 1.2's download, then commit window again), each
//! checked as above. Consoles: `lab-logs/powercut-aarch64/`.
//!
//! The init binaries: SHELFBOOT_INIT_BIN (x86_64) and SHELFBOOT_INIT_BIN_AARCH64, else
//! built here with cargo (init-release, musl).

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use regex::Regex;
    use shelfboot_master::resolve::Plan;
    use shelfboot_master::state::{Master, parse_release};
    use shelfboot_master::store::Target;
    use shelfboot_proto::id::Arch;
    use shelfboot_qemu::card::{Card, Pattern};
    use shelfboot_qemu::release::{self, Derived};
    use shelfboot_qemu::scenario::Prelude;
    use shelfboot_qemu::scenario::{self, FlashInventory, MasterRun};
    use shelfboot_qemu::shelf::{Shelf, card_mac};

    /// Small packages release 1.2 adds (`lab-pkg-00`…): its plan holds 64 artifacts, goes
    /// in fragments, commits as one segment and mounts 63 overlay layers.
    const EXTRA_PACKAGES: usize = 60;
    /// Seconds a card waits for a master before booting alone (short: every third check
    /// boot has no master, and each of its two stages waits this long).
    const MASTER_TIMEOUT_S: u32 = 6;
    /// Deadline for a milestone line (generous: the 2-core host is shared).
    const STEP: Duration = Duration::from_secs(240);
    /// Deadline for Ready after a power-on.
    const READY: Duration = Duration::from_secs(360);

    /// SplitMix64: small, seedable, the same sequence on every machine.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn env_u64(name: &str) -> Option<u64> {
        let v = std::env::var(name).ok()?;
        let v = v.trim();
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Cut {
        Download,
        CommitWindow,
        AfterCommit,
        Kexec,
        Validate,
    }

    /// Cuts during the 60-package release's download and commit the test makes at least.
    const BIG_CUTS: usize = 3;
    /// Cut kinds while the 60-package release downloads and commits, in turn.
    const BIG_CUT_KINDS: [Cut; 2] = [Cut::Download, Cut::CommitWindow];

    const CUTS: [Cut; 5] = [
        Cut::Download,
        Cut::CommitWindow,
        Cut::AfterCommit,
        Cut::Kexec,
        Cut::Validate,
    ];

    /// What the card must show for one release.
    #[derive(Debug, Clone)]
    struct Expect {
        version: String,
        digest: String,
        /// `KIND NAME VERSION`, sorted.
        artifacts: Vec<String>,
        /// The Ready line's package list (`base-1.0.0 heartbeat-1.0.0`).
        packages: String,
        /// `name version` of every package (for "staged" lines).
        package_refs: Vec<(String, String)>,
    }

    fn expect_of(version: &str, plan: &Plan) -> Expect {
        let mut artifacts = vec![format!("boot {} {}", plan.boot.name, plan.boot.version)];
        let mut pk: Vec<(String, String)> = plan
            .packages
            .iter()
            .map(|p| (p.name.clone(), p.version.to_string()))
            .collect();
        artifacts.extend(pk.iter().map(|(n, v)| format!("package {n} {v}")));
        artifacts.sort();
        let package_refs = pk.clone();
        pk.sort();
        Expect {
            version: version.into(),
            digest: plan.digest.to_string(),
            artifacts,
            packages: pk
                .iter()
                .map(|(n, v)| format!("{n}-{v}"))
                .collect::<Vec<_>>()
                .join(" "),
            package_refs,
        }
    }

    /// Which release an inventory line shows, checking that it is that release whole.
    fn which(inv: &FlashInventory, rels: &[Expect], allowed: &[usize]) -> usize {
        let Some(r) = allowed
            .iter()
            .copied()
            .find(|&r| rels[r].digest == inv.digest)
        else {
            panic!(
                "flash holds set {} ({:?}), which is none of the allowed sets {:?}: a mix or a foreign set",
                inv.digest,
                inv.artifacts,
                allowed
                    .iter()
                    .map(|&r| (&rels[r].version, &rels[r].digest))
                    .collect::<Vec<_>>()
            );
        };
        let mut got = inv.artifacts.clone();
        got.sort();
        assert_eq!(
            got, rels[r].artifacts,
            "flash set {} claims release {} but lists other artifacts: a mix",
            inv.digest, rels[r].version
        );
        r
    }

    fn digest_release(d: &Option<String>, rels: &[Expect]) -> Option<usize> {
        let d = d.as_ref()?;
        let r = rels.iter().position(|e| &e.digest == d);
        assert!(r.is_some(), "previous set {d} is none of the releases");
        r
    }

    fn inventory_pattern() -> Pattern {
        Regex::new(scenario::INVENTORY_PATTERN).unwrap().into()
    }

    /// Waits for the inventory line of this boot and parses it.
    fn flash_now(card: &mut Card) -> FlashInventory {
        let m = card.wait_for(inventory_pattern(), STEP).unwrap();
        scenario::flash_inventory(&m.line).unwrap()
    }

    /// The last milestone of the current boot's console (where the cut landed).
    fn last_milestone(console: &str) -> String {
        let keys = [
            "agent: soliciting",
            ": plan ",
            "agent: fetched",
            ": staged ",
            "flash: resuming",
            "flash: committed set",
            "agent: decided",
            "booting committed set",
            "kexec: loading",
            "kexec: sync and reboot",
            "starting as PID 1",
            "config: stored",
            "flash matches the plan",
            "agent: set marked ready",
            "switch_root: exec",
            release::READY_LINE,
        ];
        console
            .lines()
            .rev()
            .find(|l| keys.iter().any(|k| l.contains(k)))
            .map(|l| {
                let l = l.split("shelfboot-init: ").last().unwrap_or(l);
                l.chars().take(110).collect()
            })
            .unwrap_or_else(|| "kernel (no init line yet)".into())
    }

    /// Sets the default release with the Master library while serve is stopped.
    fn set_target(state: &Path, rels: &[Expect], target: usize, mac: &str) {
        let mut m = Master::open(state).unwrap();
        let id = parse_release(&format!("lab-os@{}", rels[target].version)).unwrap();
        let plans = if target == 0 {
            m.rollback(Target::Default, id).unwrap()
        } else {
            m.assign(Target::Default, Some(id), BTreeMap::new(), "assign")
                .unwrap()
        };
        let plan = plans
            .iter()
            .find(|p| p.node.to_string() == mac)
            .unwrap_or_else(|| {
                panic!("no plan for {mac} after assigning {}", rels[target].version)
            });
        let e = expect_of(&rels[target].version, plan);
        assert_eq!(
            e.digest, rels[target].digest,
            "plan digest of {}",
            e.version
        );
    }

    /// One power-cut run: which card, how many trials, which cuts.
    struct Run {
        /// Log directory name.
        name: &'static str,
        /// The card's architecture.
        arch: Arch,
        /// Trials unless SHELFBOOT_POWERCUT_TRIALS says otherwise.
        trials: u64,
        /// Cuts during release 1.2's download and commit the run makes at least.
        big_cuts: usize,
        /// Cut kinds of the other trials, in turn (trial index modulo their number).
        kinds: &'static [Cut],
    }

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn power_cut_during_download_and_commit() {
        power_cuts(&Run {
            name: "powercut",
            arch: Arch::X86_64,
            trials: 10,
            big_cuts: BIG_CUTS,
            kinds: &CUTS,
        });
    }

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn power_cut_on_aarch64_card() {
        power_cuts(&Run {
            name: "powercut-aarch64",
            arch: Arch::Aarch64,
            trials: 3,
            big_cuts: 1,
            kinds: &[Cut::CommitWindow, Cut::Download],
        });
    }

    fn power_cuts(run: &Run) {
        let seed = env_u64("SHELFBOOT_POWERCUT_SEED").unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()))
        });
        let trials =
            usize::try_from(env_u64("SHELFBOOT_POWERCUT_TRIALS").unwrap_or(run.trials)).unwrap();
        let min_big = run.big_cuts;
        eprintln!(
            "powercut ({}): seed {seed:#x}, {trials} trials (replay: SHELFBOOT_POWERCUT_SEED={seed:#x})",
            run.arch
        );
        let mut rng = Rng(seed);
        let p = Prelude::start_arches(env!("CARGO_TARGET_TMPDIR"), run.name, &[run.arch]).unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
        let state = lab.state.clone();
        for d in [
            Derived {
                version: "1.1.0".into(),
                heartbeat: Some("1.1.0".into()),
                bulk_bytes: 3 << 20,
                extra_packages: 0,
                health_deadline_s: None,
                heartbeat_broken: false,
                kernel_hangs: false,
                ram_first: vec![],
            },
            Derived {
                version: "1.2.0".into(),
                heartbeat: Some("1.2.0".into()),
                bulk_bytes: 0,
                extra_packages: EXTRA_PACKAGES,
                health_deadline_s: None,
                heartbeat_broken: false,
                kernel_hangs: false,
                ram_first: vec![],
            },
        ] {
            scenario::import_derived(&lab, &d).unwrap();
        }
        let versions = ["1.0.0", "1.1.0", "1.2.0"];
        // Pristine install of 1.0 (the derived imports made 1.2 the default).
        {
            let mut m = Master::open(&state).unwrap();
            m.rollback(Target::Default, parse_release("lab-os@1.0.0").unwrap())
                .unwrap();
        }
        eprintln!(
            "powercut: releases built and imported in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        let mac = shelfboot_qemu::backplane::mac_string(&card_mac(0));
        let mut shelf = Shelf::start(1, |i| {
            let mut c = scenario::card_config(&lab, i, &logs).unwrap();
            c.append = release::card_append(
                c.arch,
                scenario::card_type(i),
                u16::try_from(i + 1).unwrap(),
                &[],
                MASTER_TIMEOUT_S,
            );
            c
        })
        .unwrap();
        let mut master = MasterRun::start(shelf.backplane(), &state).unwrap();
        let t1 = Instant::now();
        let r = shelf.wait_all(release::READY_LINE, READY).unwrap();
        eprintln!(
            "powercut: pristine 1.0 Ready after {:.1} s: {}",
            t1.elapsed().as_secs_f64(),
            r[0].line
        );
        master.stop().unwrap();

        // Each release's plan for this card (digest, artifacts, packages), from the master.
        let mut rels: Vec<Expect> = Vec::new();
        {
            let mut m = Master::open(&state).unwrap();
            for v in versions {
                let plans = m
                    .assign(
                        Target::Default,
                        Some(parse_release(&format!("lab-os@{v}")).unwrap()),
                        BTreeMap::new(),
                        "assign",
                    )
                    .unwrap();
                let p = plans
                    .iter()
                    .find(|p| p.node.to_string() == mac)
                    .expect("the card is in the node DB after its first boot");
                rels.push(expect_of(v, p));
            }
        }
        for e in &rels {
            eprintln!(
                "powercut: release {} = set {}: {}",
                e.version, e.digest, e.packages
            );
        }
        assert_eq!(
            scenario::ready_packages(&r[0].line).as_deref(),
            Some(rels[0].packages.as_str())
        );
        let card = shelf.card(0).unwrap();
        let first = scenario::last_flash_inventory(&card.console());
        assert!(first.is_some(), "no inventory line in the pristine boot");

        let mut cur = 0usize;
        let mut prev: Option<usize> = None;
        // Learned windows: plan → last staged (per release), last staged → commit.
        let mut stage_time: BTreeMap<usize, f64> = BTreeMap::new();
        let mut commit_gap: f64 = 0.3;
        let mut chained = false;
        let mut summary = Vec::new();
        let ready_re = || Pattern::from(release::READY_LINE);
        let stored_re = Pattern::from(Regex::new(r"config: stored\s+true").unwrap());
        // Release 1.2's index in `rels` (the 60-package one).
        const BIG: usize = 2;
        let mut big_cuts = 0usize;
        let mut i = 0usize;
        while i < trials || big_cuts < min_big {
            assert!(
                i < trials + 6,
                "{big_cuts} cuts during release 1.2's commit after {i} trials: the rotation never reaches it"
            );
            let tt = Instant::now();
            let target = (0..3).find(|&r| r != cur && Some(r) != prev).unwrap_or(0);
            if !chained {
                master.stop().unwrap();
                set_target(&state, &rels, target, &mac);
                master = MasterRun::start(shelf.backplane(), &state).unwrap();
                shelf.card(0).unwrap().power_cycle().unwrap();
            }
            let card = shelf.card(0).unwrap();
            let kind = if target == BIG && big_cuts < min_big {
                Cut::Download
            } else if target == BIG {
                BIG_CUT_KINDS[i % BIG_CUT_KINDS.len()]
            } else {
                run.kinds[i % run.kinds.len()]
            };
            let frac = rng.unit();
            let t = &rels[target];
            let plan = card
                .wait_for(
                    Regex::new(&format!(r"plan {} from .*Fetch", t.digest)).unwrap(),
                    STEP,
                )
                .unwrap();
            // The packages this transition stages: the target's that neither kept set has.
            let have: Vec<&(String, String)> = [Some(cur), prev]
                .into_iter()
                .flatten()
                .flat_map(|r| rels[r].package_refs.iter())
                .collect();
            let last_staged = t
                .package_refs
                .iter()
                .rev()
                .find(|p| !have.contains(p))
                .cloned()
                .expect("every release changes heartbeat");
            // Staged now, or kept staged from a cut trial and resumed.
            let staged_re = Pattern::from(
                Regex::new(&format!(
                    r"(: staged {n} {v} |flash: resuming with {n} {v} already staged)",
                    n = regex::escape(&last_staged.0),
                    v = regex::escape(&last_staged.1)
                ))
                .unwrap(),
            );
            let commit_re = Pattern::from(
                Regex::new(&format!(
                    r"flash: committed set {} \(generation \d+, \d+ artifacts\)",
                    t.digest
                ))
                .unwrap(),
            );
            let delay = match kind {
                // Release 1.2 downloads 60 small packages in a blink: a delay after the
                // plan would often land after the commit. Cut at a staged package instead.
                Cut::Download if target == BIG => {
                    let span = u64::try_from(EXTRA_PACKAGES - 4).unwrap_or(1);
                    let from = usize::try_from(rng.next_u64() % span).unwrap_or(0);
                    let names: Vec<String> = (from..EXTRA_PACKAGES)
                        .map(|k| regex::escape(&release::extra_package_name(k)))
                        .collect();
                    let at = Pattern::from(
                        Regex::new(&format!(
                            r"(: staged ({}) |flash: resuming with )",
                            names.join("|")
                        ))
                        .unwrap(),
                    );
                    card.wait_for(at, STEP).unwrap();
                    0.0
                }
                Cut::Download => frac * stage_time.get(&target).copied().unwrap_or(2.0),
                Cut::CommitWindow => {
                    let s = card.wait_for(staged_re.clone(), STEP).unwrap();
                    stage_time.insert(target, (s.elapsed - plan.elapsed).as_secs_f64());
                    frac * commit_gap
                }
                Cut::AfterCommit | Cut::Kexec | Cut::Validate => {
                    let s = card.wait_for(staged_re.clone(), STEP).unwrap();
                    let c = card.wait_for(commit_re.clone(), STEP).unwrap();
                    stage_time.insert(target, (s.elapsed - plan.elapsed).as_secs_f64());
                    commit_gap = commit_gap.max(1.5 * (c.elapsed - s.elapsed).as_secs_f64());
                    match kind {
                        Cut::AfterCommit => frac * 1.5,
                        Cut::Kexec => {
                            card.wait_for("kexec: loading", STEP).unwrap();
                            frac * 4.0
                        }
                        _ => {
                            card.wait_for(stored_re.clone(), STEP).unwrap();
                            frac * 3.0
                        }
                    }
                }
            };
            std::thread::sleep(Duration::from_secs_f64(delay));
            card.power_cut();
            let console = card.console();
            // A cut counts as "during the 60-package commit" if this boot had not logged
            // that set's commit yet (a resumed download can finish before the delay ends).
            if target == BIG && !console.lines().any(|l| commit_re.matches(l)) {
                big_cuts += 1;
            }
            let last = i + 1 >= trials && big_cuts >= min_big;
            let at = last_milestone(&console);
            let install_s = tt.elapsed().as_secs_f64();

            // Check boot.
            let alone = i % 3 == 2;
            if alone {
                master.stop().unwrap();
            }
            let tc = Instant::now();
            card.power_cycle().unwrap();
            let inv = flash_now(card);
            let held = which(&inv, &rels, &[cur, target]);
            let booted;
            if alone {
                card.wait_for("no master answered", STEP).unwrap();
                let rd = card.wait_for(ready_re(), READY).unwrap();
                let console = card.console();
                let expected = if console.contains("committed set rolled back") {
                    digest_release(&inv.previous, &rels).expect("rolled back to no previous set")
                } else {
                    held
                };
                assert_eq!(
                    scenario::ready_packages(&rd.line).as_deref(),
                    Some(rels[expected].packages.as_str()),
                    "trial {i}: booted root is not the whole set {} the flash held",
                    rels[expected].version
                );
                assert!(
                    !console.contains("agent: fetched"),
                    "trial {i}: fetched without a master"
                );
                booted = format!("alone: Ready {}", rels[expected].version);
                let last = scenario::last_flash_inventory(&console).unwrap();
                cur = which(&last, &rels, &[0, 1, 2]);
                prev = digest_release(&last.previous, &rels);
                chained = false;
            } else if held == target || last {
                let rd = card.wait_for(ready_re(), READY).unwrap();
                assert_eq!(
                    scenario::ready_packages(&rd.line).as_deref(),
                    Some(t.packages.as_str()),
                    "trial {i}: with the master, the card must end on the whole target set {}",
                    t.version
                );
                booted = format!("master: Ready {}", t.version);
                let last = scenario::last_flash_inventory(&card.console()).unwrap();
                cur = which(&last, &rels, &[target]);
                prev = digest_release(&last.previous, &rels);
                chained = false;
            } else {
                // Old set kept: the card now fetches the target again; that is the next
                // trial's install boot.
                booted = format!("master: refetching {} (next trial)", t.version);
                chained = true;
            }
            let line = format!(
                "trial {i}: seed {seed:#x} cut {kind:?} +{delay:.2} s (U={frac:.3}) at \"{at}\" after {install_s:.1} s; flash then held {} whole (gen {}, attempts {}); {booted}; check boot {:.1} s; trial {:.1} s",
                rels[held].version,
                inv.generation,
                inv.attempts,
                tc.elapsed().as_secs_f64(),
                tt.elapsed().as_secs_f64()
            );
            eprintln!("powercut: {line}");
            summary.push(line);
            if !alone && !chained {
                master.stop().unwrap();
            }
            i += 1;
        }
        master.stop().unwrap();
        eprintln!(
            "powercut: {i} trials ({big_cuts} during release 1.2's download and commit), seed {seed:#x}, whole test {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        drop(shelf);
        // mtd-utils still reads what init wrote: `ubinfo -a` over the card's flash (its
        // inventory, static; its segments, dynamic).
        let image = lab.dir.join("flash-0.img");
        let out = shelfboot_qemu::busybox::ubinfo_of_image(&p.kernel, p.work.path(), &image, &logs)
            .unwrap();
        eprintln!("powercut: ubinfo -a of the card's flash:\n{out}");
        assert!(
            out.contains("sb.inventory") && out.contains("sb.seg."),
            "ubinfo -a does not list the store's volumes:\n{out}"
        );
        assert!(out.contains("dynamic") && out.contains("static"), "{out}");
    }
}
