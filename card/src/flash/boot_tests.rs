//! Boot counting, Ready and rollback against [`FakeVolumes`]: behaviour, and power cuts
//! at every step of each (helpers shared with `tests.rs`).

use super::artifact::Digest;
use super::fake::FakeVolumes;
use super::store::{Store, StoreError};
use super::tests::{LEB, cfg, check_consistent, fresh, set_a, set_b};
use super::volumes::Volumes as _;
use super::{BootDecision, RollbackReason};

#[test]
fn boot_counting_rolls_back_after_k_failures_and_ready_resets() {
    let dev = fresh(64, &[&set_a(), &set_b()]);
    let boot = |dev: &FakeVolumes| {
        Store::open(dev.clone(), cfg())
            .unwrap()
            .0
            .begin_boot()
            .unwrap()
    };
    assert!(matches!(boot(&dev), BootDecision::Boot { attempt: 1, .. }));
    // Ready resets the counter.
    Store::open(dev.clone(), cfg())
        .unwrap()
        .0
        .mark_ready()
        .unwrap();
    assert!(matches!(boot(&dev), BootDecision::Boot { attempt: 1, .. }));
    assert!(matches!(boot(&dev), BootDecision::Boot { attempt: 2, .. }));
    match boot(&dev) {
        BootDecision::RolledBack { set, from, reason } => {
            assert_eq!(set.digest, set_a().digest());
            assert_eq!(from, set_b().digest());
            assert_eq!(reason, RollbackReason::Attempts(2));
        }
        other => panic!("expected rollback, got {other:?}"),
    }
    let (s, _) = Store::open(dev.clone(), cfg()).unwrap();
    let inv = s.inventory().unwrap();
    assert_eq!(
        (inv.attempts, inv.rolled_back_from),
        (1, Some(set_b().digest()))
    );
    assert!(inv.previous.is_none());
    check_consistent(&dev, &[set_a().digest()], "after rollback");
    // No previous any more: an exhausted set is booted anyway.
    assert!(matches!(boot(&dev), BootDecision::Boot { attempt: 2, .. }));
    assert!(matches!(
        boot(&dev),
        BootDecision::Exhausted { attempt: 3, .. }
    ));
}

#[test]
fn damaged_set_rolls_back_at_once_and_explicit_rollback_works() {
    let dev = fresh(64, &[&set_a(), &set_b()]);
    {
        let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
        assert_eq!(s.rollback().unwrap().digest, set_a().digest());
        assert!(matches!(s.rollback(), Err(StoreError::NoPrevious)));
    }
    let dev = fresh(64, &[&set_a(), &set_b()]);
    // B's own segment (its kernel is there; its base is in A's).
    let victim = Store::inspect(&mut dev.clone())
        .unwrap()
        .unwrap()
        .set
        .artifacts[0]
        .volume
        .clone();
    let mut d = dev.clone();
    let id = d
        .list()
        .unwrap()
        .into_iter()
        .find(|v| v.name == victim)
        .unwrap()
        .id;
    d.remove(id).unwrap();
    let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
    assert!(matches!(
        s.begin_boot().unwrap(),
        BootDecision::RolledBack {
            reason: RollbackReason::Damaged(_),
            ..
        }
    ));
    let mut pristine = Store::open(FakeVolumes::new(LEB, 8), cfg()).unwrap().0;
    assert!(matches!(
        pristine.begin_boot(),
        Err(StoreError::NothingCommitted)
    ));
}

#[test]
fn boot_count_and_rollback_survive_power_cut_at_every_step() {
    let (a, b) = (set_a(), set_b());
    let base = fresh(64, &[&a, &b]);
    // Boots 1..=3: the third rolls back (K = 2). Cut each boot at each of its ops.
    for boot in 0..3 {
        let probe = base.power_cycle();
        for _ in 0..boot {
            Store::open(probe.clone(), cfg())
                .unwrap()
                .0
                .begin_boot()
                .unwrap();
        }
        let before = probe.power_cycle();
        let run = before.power_cycle();
        Store::open(run.clone(), cfg())
            .unwrap()
            .0
            .begin_boot()
            .unwrap();
        let n_ops = run.ops().len() as u64;
        assert!(n_ops > 0);
        for n in 0..=n_ops {
            let dev = before.power_cycle();
            dev.cut_power_after(n);
            if let Ok((mut s, _)) = Store::open(dev.clone(), cfg()) {
                let _ = s.begin_boot();
            }
            let ctx = format!("boot {boot}, cut before op {n}/{n_ops}");
            let got = check_consistent(&dev.power_cycle(), &[a.digest(), b.digest()], &ctx);
            if boot < 2 {
                assert_eq!(got, b.digest(), "{ctx}: no rollback before K failures");
            }
        }
    }
}

#[test]
fn ready_and_explicit_rollback_survive_power_cut_at_every_step() {
    let (a, b) = (set_a(), set_b());
    let base = fresh(64, &[&a, &b]);
    Store::open(base.clone(), cfg())
        .unwrap()
        .0
        .begin_boot()
        .unwrap();
    let base = base.power_cycle();
    type Act = fn(&mut Store<FakeVolumes>) -> Result<(), StoreError>;
    let acts: [(&str, Act, Digest); 2] = [
        ("mark_ready", |s| s.mark_ready(), b.digest()),
        ("rollback", |s| s.rollback().map(drop), a.digest()),
    ];
    for (what, act, target) in acts {
        let probe = base.power_cycle();
        act(&mut Store::open(probe.clone(), cfg()).unwrap().0).unwrap();
        let n_ops = probe.ops().len() as u64;
        for n in 0..=n_ops {
            let dev = base.power_cycle();
            dev.cut_power_after(n);
            if let Ok((mut s, _)) = Store::open(dev.clone(), cfg()) {
                let _ = act(&mut s);
            }
            let ctx = format!("{what}, cut before op {n}/{n_ops}");
            let rebooted = dev.power_cycle();
            let got = check_consistent(&rebooted, &[b.digest(), target], &ctx);
            let inv = Store::open(rebooted, cfg())
                .unwrap()
                .0
                .inventory()
                .cloned()
                .unwrap();
            if n == n_ops {
                assert_eq!(got, target, "{ctx}");
            }
            if what == "mark_ready" {
                assert!(inv.attempts <= 1, "{ctx}: {}", inv.attempts);
            }
        }
    }
}

#[test]
fn a_running_set_rolls_back_without_touching_its_volumes_until_the_next_open() {
    let dev = fresh(64, &[&set_a(), &set_b()]);
    let volumes = |dev: &FakeVolumes| {
        let mut names: Vec<String> = dev
            .clone()
            .list()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        names.sort();
        names
    };
    let before = volumes(&dev);
    {
        let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
        s.begin_boot().unwrap();
        assert_eq!(s.rollback_running().unwrap().digest, set_a().digest());
        let inv = s.inventory().unwrap();
        assert_eq!(
            (inv.set.digest, inv.attempts, inv.rolled_back_from),
            (set_a().digest(), 0, Some(set_b().digest()))
        );
        // set B runs on: none of its volumes was removed.
        let mut after = volumes(&dev);
        after.retain(|n| !n.contains("new"));
        assert_eq!(after, before);
        assert!(matches!(s.rollback_running(), Err(StoreError::NoPrevious)));
    }
    // The next boot's open collects set B's volumes.
    Store::open(dev.clone(), cfg()).unwrap();
    check_consistent(&dev, &[set_a().digest()], "after the next open");
}

#[test]
fn a_recorded_command_stamp_survives_commit_boot_and_rollback_and_never_goes_back() {
    let dev = fresh(64, &[&set_a(), &set_b()]);
    let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
    assert_eq!(s.last_command(), None);
    s.record_command((3, 7)).unwrap();
    let generation = s.inventory().unwrap().generation;
    // An older or equal stamp writes nothing.
    s.record_command((3, 7)).unwrap();
    s.record_command((2, 99)).unwrap();
    assert_eq!(s.inventory().unwrap().generation, generation);
    s.begin_boot().unwrap();
    s.mark_ready().unwrap();
    s.rollback().unwrap();
    drop(s);
    let (s, _) = Store::open(dev.clone(), cfg()).unwrap();
    assert_eq!(s.last_command(), Some((3, 7)));
}
