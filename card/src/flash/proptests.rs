//! Property test: random histories (installs of overlapping sets, boots, Ready, rollbacks)
//! on one fake device, with the power cut at a random operation (or torn mid-write). After
//! the reboot the store must open, the committed set must be the one committed before the
//! interrupted step or the one that step was producing, every artifact must re-hash, and
//! the card must still accept a new install.

// Test data sizes are tiny; truncating casts cannot bite here.
#![allow(clippy::cast_possible_truncation)]

use proptest::prelude::*;

use super::artifact::{ArtifactKind, Digest};
use super::fake::FakeVolumes;
use super::layout;
use super::store::Store;
use super::tests::{LEB, Set, art, cfg, check_consistent, install, set_a, set_b};
use super::volumes::Volumes as _;

fn pool() -> Vec<Set> {
    vec![
        set_a(),
        set_b(),
        Set {
            arts: vec![
                art(ArtifactKind::BootImage, "kernel", "3", 4000),
                art(ArtifactKind::Package, "base", "1", 2500),
                art(ArtifactKind::Package, "app", "3", 1500),
            ],
            cmdline: "console=ttyS0",
        },
        Set {
            arts: vec![
                art(ArtifactKind::BootImage, "kernel", "1", 3000),
                art(ArtifactKind::Package, "base", "2", 2600),
            ],
            cmdline: "",
        },
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Install(usize),
    Boot,
    Ready,
    Rollback,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..4).prop_map(Step::Install),
        Just(Step::Boot),
        Just(Step::Ready),
        Just(Step::Rollback),
    ]
}

/// Run one step in a fresh store (as after a clean reboot); errors such as `NoSpace` or
/// `NoPrevious` are part of the history.
fn run_step(dev: &FakeVolumes, st: &Step, sets: &[Set]) {
    if let Step::Install(i) = st {
        drop(install(dev, &sets[*i]));
        return;
    }
    if let Ok((mut s, _)) = Store::open(dev.clone(), cfg()) {
        match st {
            Step::Boot => drop(s.begin_boot()),
            Step::Ready => drop(s.mark_ready()),
            _ => drop(s.rollback()),
        }
    }
}

fn run(dev: &FakeVolumes, steps: &[Step], sets: &[Set]) {
    for st in steps {
        run_step(dev, st, sets);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_with_a_power_cut_stay_consistent(
        first in 0usize..4,
        rest in prop::collection::vec(step(), 2..10),
        cut_pick in 0u64..10_000,
        torn in prop::option::of(1usize..3000),
    ) {
        // Histories start from a committed set, so most cuts hit a card with one.
        let steps: Vec<Step> = std::iter::once(Step::Install(first)).chain(rest).collect();
        let sets = pool();
        let all: Vec<Digest> = sets.iter().map(Set::digest).collect();
        // Everything is deterministic: count the history's operations on a twin device,
        // then cut at a uniformly chosen one of them.
        let twin = FakeVolumes::new(LEB, 48);
        run(&twin, &steps, &sets);
        let total = twin.ops().len();
        let cut = cut_pick * (total as u64 + 1) / 10_000;
        let dev = FakeVolumes::new(LEB, 48);
        match torn {
            Some(b) => dev.cut_power_mid_write(cut, b),
            None => dev.cut_power_after(cut),
        }
        // Digests the reopened card may show: what was committed before the step that
        // was cut, and what that step was producing.
        let mut allowed: Vec<Option<Digest>> = vec![None];
        for st in &steps {
            let Ok((s, _)) = Store::open(dev.clone(), cfg()) else { break };
            let before = s.digest();
            let prev = s.inventory().and_then(|i| i.previous.as_ref()).map(|p| p.digest);
            let target = match st {
                Step::Install(i) => Some(all[*i]),
                Step::Boot | Step::Rollback => prev,
                Step::Ready => before,
            };
            drop(s);
            run_step(&dev, st, &sets);
            if dev.is_dead() {
                allowed = vec![before, target];
                break;
            }
            allowed = vec![Store::open(dev.clone(), cfg()).ok().and_then(|(s, _)| s.digest())];
        }
        let rebooted = dev.power_cycle();
        let (mut s, _) = Store::open(rebooted.clone(), cfg())
            .map_err(|e| TestCaseError::fail(format!("open after cut: {e}")))?;
        let got = s.digest();
        prop_assert!(allowed.contains(&got), "committed {got:?}, allowed {allowed:?}");
        match got {
            Some(_) => {
                let digests: Vec<Digest> = allowed.iter().flatten().copied().collect();
                check_consistent(&rebooted, &digests, &format!("{steps:?} cut {cut} torn {torn:?}"));
            }
            None => {
                for v in s.volumes_mut().list().unwrap() {
                    prop_assert!(
                        matches!(layout::classify(&v.name), layout::VolumeClass::StagingSegment),
                        "pristine card kept {v:?}"
                    );
                }
            }
        }
        drop(s);
        install(&rebooted, &sets[2]).map_err(|e| TestCaseError::fail(format!("install after cut: {e}")))?;
        check_consistent(&rebooted.power_cycle(), &[all[2]], "install after recovery");
    }
}
