//! Store tests against [`FakeVolumes`]: behaviour, and power cuts at every step.
//!
//! The power-cut tests run a scenario once to count its mutating operations, then again
//! with the power cut before each one (and in the middle of each write), reboot the fake
//! device, reopen the store and require: the inventory is valid; the committed set is
//! exactly the old or exactly the new one; every artifact of it (and of the recorded
//! previous set) is present and hashes to its recorded sha256; no `sb.new.*` survives the
//! reopen; and the card can still install the new set afterwards with no space leaked.

// Test data sizes are tiny; truncating casts cannot bite here.
#![allow(clippy::cast_possible_truncation)]

use shelfboot_proto::samples::artifact_of;

use super::artifact::{ArtifactKind, ArtifactRef, Digest, set_digest};
use super::fake::{FakeOp, FakeVolumes};
use super::layout;
use super::store::{Store, StoreConfig, StoreError};
use super::volumes::Volumes;

pub(super) const LEB: u64 = 1024;

#[derive(Clone)]
pub(super) struct Art {
    pub(super) r: ArtifactRef,
    pub(super) data: Vec<u8>,
}

pub(super) fn art(kind: ArtifactKind, name: &str, version: &str, len: usize) -> Art {
    let seed = name.len() as u8 ^ version.bytes().fold(0u8, |a, b| a.wrapping_mul(31) ^ b);
    let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
    Art {
        r: artifact_of(kind, name, version, &data),
        data,
    }
}

pub(super) struct Set {
    pub(super) arts: Vec<Art>,
    pub(super) cmdline: &'static str,
}

impl Set {
    pub(super) fn refs(&self) -> Vec<ArtifactRef> {
        self.arts.iter().map(|a| a.r.clone()).collect()
    }
    pub(super) fn digest(&self) -> Digest {
        set_digest(&self.refs(), self.cmdline)
    }
}

pub(super) fn set_a() -> Set {
    Set {
        arts: vec![
            art(ArtifactKind::BootImage, "kernel", "1", 3000),
            art(ArtifactKind::Package, "base", "1", 2500),
            art(ArtifactKind::Package, "app", "1", 700),
        ],
        cmdline: "console=ttyS0",
    }
}

/// Shares `base` with set A.
pub(super) fn set_b() -> Set {
    Set {
        arts: vec![
            art(ArtifactKind::BootImage, "kernel", "2", 3100),
            art(ArtifactKind::Package, "base", "1", 2500),
            art(ArtifactKind::Package, "app", "2", 900),
        ],
        cmdline: "console=ttyS0 quiet",
    }
}

/// Shares nothing with set A.
pub(super) fn disjoint_b() -> Set {
    Set {
        arts: vec![
            art(ArtifactKind::BootImage, "kernel", "2", 3100),
            art(ArtifactKind::Package, "base", "2", 2500),
            art(ArtifactKind::Package, "app", "2", 900),
        ],
        cmdline: "console=ttyS0 quiet",
    }
}

pub(super) fn cfg() -> StoreConfig {
    StoreConfig {
        max_attempts: 2,
        ..StoreConfig::default()
    }
}

/// Open, begin, stage what is missing (in two writes each, after what an interrupted run
/// left on flash), commit.
pub(super) fn install(dev: &FakeVolumes, set: &Set) -> Result<(), StoreError> {
    let (mut s, _) = Store::open(dev.clone(), cfg())?;
    let check = s.begin(&set.refs(), set.cmdline)?;
    for a in &set.arts {
        if check.fetch.contains(&a.r) {
            s.start(&a.r)?;
            let rest = &a.data[s.written(&a.r)? as usize..];
            let mid = rest.len() / 2;
            s.write(&a.r, &rest[..mid])?;
            s.write(&a.r, &rest[mid..])?;
            s.finish(&a.r)?;
        }
    }
    s.commit()?;
    Ok(())
}

pub(super) fn fresh(total_lebs: u64, sets: &[&Set]) -> FakeVolumes {
    let dev = FakeVolumes::new(LEB, total_lebs);
    for s in sets {
        install(&dev, s).unwrap();
    }
    dev.power_cycle()
}

/// Reopen after a reboot and check every invariant; returns the committed digest.
pub(super) fn check_consistent(dev: &FakeVolumes, allowed: &[Digest], ctx: &str) -> Digest {
    let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
    let inv = s
        .inventory()
        .cloned()
        .unwrap_or_else(|| panic!("{ctx}: pristine after cut"));
    assert!(allowed.contains(&inv.set.digest), "{ctx}: unexpected set");
    let bad = s.verify_set(&inv.set).unwrap();
    assert!(bad.is_empty(), "{ctx}: committed set damaged: {bad:?}");
    if let Some(p) = &inv.previous {
        let bad = s.verify_set(p).unwrap();
        assert!(bad.is_empty(), "{ctx}: previous set damaged: {bad:?}");
    }
    for v in s.volumes_mut().list().unwrap() {
        match layout::classify(&v.name) {
            layout::VolumeClass::Inventory => {}
            // The staging segment is kept for resumption (LEBs changed atomically).
            layout::VolumeClass::StagingSegment => {}
            _ => assert!(
                inv.referenced().any(|r| r == v.name),
                "{ctx}: unreferenced volume {} survived open",
                v.name
            ),
        }
    }
    inv.set.digest
}

/// The name of the staging segment on `dev` (there must be one).
pub(super) fn staging_segment(dev: &FakeVolumes) -> String {
    dev.clone()
        .list()
        .unwrap()
        .into_iter()
        .find(|v| layout::classify(&v.name) == layout::VolumeClass::StagingSegment)
        .expect("a staging segment")
        .name
}

pub(super) fn free_lebs(dev: &FakeVolumes) -> u64 {
    dev.clone().geometry().unwrap().free_lebs
}

/// Run `scenario` with a power cut at every mutating op and mid every write; after each
/// reboot, check consistency, then run `scenario` again without a cut: it must reach the
/// same state (same set, same free space) as the uninterrupted run.
pub(super) fn exhaust(
    base: &FakeVolumes,
    old: Digest,
    new: Digest,
    scenario: impl Fn(&FakeVolumes),
) {
    exhaust_from(base, old, new, scenario, |_| true);
}

/// [`exhaust`], cutting only before the operations `pick` selects (and at the end).
fn exhaust_from(
    base: &FakeVolumes,
    old: Digest,
    new: Digest,
    scenario: impl Fn(&FakeVolumes),
    pick: impl Fn(&FakeOp) -> bool,
) {
    let clean = base.power_cycle();
    scenario(&clean);
    let ops = clean.ops();
    assert!(!clean.is_dead());
    let free_clean = free_lebs(&clean);
    let mut cases: Vec<(u64, Option<usize>)> = (0..=ops.len() as u64)
        .filter(|&n| ops.get(n as usize).is_none_or(&pick))
        .map(|n| (n, None))
        .collect();
    for (i, op) in ops.iter().enumerate() {
        if let FakeOp::Write { len, .. } = op
            && *len > 1
            && pick(op)
        {
            cases.push((i as u64, Some(len / 2)));
        }
    }
    for (n, torn) in cases {
        let dev = base.power_cycle();
        match torn {
            None => dev.cut_power_after(n),
            Some(b) => dev.cut_power_mid_write(n, b),
        }
        scenario(&dev);
        let ctx = format!(
            "cut before op {n} of {} (torn {torn:?}): {:?}",
            ops.len(),
            ops.get(n as usize)
        );
        let rebooted = dev.power_cycle();
        let got = check_consistent(&rebooted, &[old, new], &ctx);
        if n as usize >= ops.len() {
            assert_eq!(got, new, "{ctx}: completed run must show the new set");
        }
        scenario(&rebooted);
        assert!(!rebooted.is_dead());
        let again = check_consistent(&rebooted.power_cycle(), &[new], &format!("{ctx}, redo"));
        assert_eq!(again, new);
        assert_eq!(
            free_lebs(&rebooted),
            free_clean,
            "{ctx}: space leaked after recovery"
        );
    }
}

#[test]
fn commit_survives_power_cut_at_every_step() {
    let (a, b) = (set_a(), set_b());
    let base = fresh(64, &[&a]);
    exhaust(&base, a.digest(), b.digest(), |d| {
        drop(install(d, &set_b()))
    });
}

#[test]
fn first_install_survives_power_cut_at_every_step() {
    // From pristine, "old" is no set: the reopened card must be pristine or have A.
    let a = set_a();
    let clean = FakeVolumes::new(LEB, 64);
    install(&clean, &a).unwrap();
    let n_ops = clean.ops().len() as u64;
    for n in 0..=n_ops {
        let dev = FakeVolumes::new(LEB, 64);
        dev.cut_power_after(n);
        let _ = install(&dev, &a);
        let rebooted = dev.power_cycle();
        let (mut s, _) = Store::open(rebooted.clone(), cfg()).unwrap();
        match s.digest() {
            None => {
                // Pristine: only the staging segment (kept for resumption) may remain.
                for v in s.volumes_mut().list().unwrap() {
                    assert!(
                        matches!(
                            layout::classify(&v.name),
                            layout::VolumeClass::StagingSegment
                        ),
                        "cut {n}: pristine card kept {v:?}"
                    );
                }
            }
            Some(_) => {
                check_consistent(&rebooted, &[a.digest()], &format!("cut {n}"));
            }
        }
        install(&rebooted, &a).unwrap();
        check_consistent(
            &rebooted.power_cycle(),
            &[a.digest()],
            &format!("cut {n}, redo"),
        );
        assert_eq!(
            free_lebs(&rebooted),
            free_lebs(&clean),
            "cut {n}: space leaked"
        );
    }
}

#[test]
fn commit_dropping_previous_survives_power_cut_at_every_step() {
    // A (previous) and B (current) share nothing, so A's segment is the previous set's
    // alone; C shares B's base. The device is sized so that C fits only once A is dropped.
    let (a, b) = (set_a(), disjoint_b());
    let c = Set {
        arts: vec![
            art(ArtifactKind::BootImage, "kernel", "3", 5000),
            art(ArtifactKind::Package, "base", "2", 2500),
            art(ArtifactKind::Package, "app", "3", 3000),
        ],
        cmdline: "console=ttyS0",
    };
    let probe = fresh(200, &[&a, &b]);
    let used = 200 - free_lebs(&probe);
    let needed = {
        let (mut s, _) = Store::open(probe.clone(), cfg()).unwrap();
        s.check(&c.refs(), c.cmdline).unwrap().needed / LEB
    };
    let base = fresh(used + needed - 1, &[&a, &b]);
    {
        let (mut s, _) = Store::open(base.power_cycle(), cfg()).unwrap();
        let check = s.check(&c.refs(), c.cmdline).unwrap();
        assert!(check.drops_previous, "{check:?}");
        assert_eq!(check.present.len(), 1);
    }
    let c2 = c.digest();
    exhaust(&base, b.digest(), c2, |d| {
        let c = Set {
            arts: c.arts.clone(),
            cmdline: c.cmdline,
        };
        drop(install(d, &c));
    });
}

#[test]
fn many_artifacts_commit_in_one_rename_and_survive_cuts() {
    let mk = |v: &str| Set {
        arts: (0..40)
            .map(|i| art(ArtifactKind::Package, &format!("p{i}"), v, 10 + i))
            .collect(),
        cmdline: "",
    };
    let base = fresh(400, &[&mk("1")]);
    let renames_of = |dev: &FakeVolumes| {
        dev.ops()
            .iter()
            .filter(|o| matches!(o, FakeOp::Rename(_)))
            .count()
    };
    let probe = base.power_cycle();
    install(&probe, &mk("2")).unwrap();
    assert_eq!(
        renames_of(&probe),
        1,
        "40 artifacts in one segment + inventory: one rename"
    );
    let Some(FakeOp::Rename(r)) = probe.ops().last().cloned() else {
        unreachable!()
    };
    assert_eq!(r.len(), 2, "segment and inventory");
    // Staging 40 artifacts is the same code as staging 2 (covered above): cut at every
    // rename, remove and inventory step.
    exhaust_from(
        &base,
        mk("1").digest(),
        mk("2").digest(),
        |d| drop(install(d, &mk("2"))),
        |op| match op {
            FakeOp::Create { name, .. } => name == layout::STAGING_INVENTORY,
            FakeOp::Rename(_) | FakeOp::Remove { .. } => true,
            FakeOp::Update { .. } | FakeOp::Write { .. } | FakeOp::ChangeLeb { .. } => false,
        },
    );
}

#[test]
fn no_space_and_bad_blocks_touch_nothing() {
    let dev = fresh(12, &[&set_a()]);
    let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
    let big = Set {
        arts: vec![art(ArtifactKind::BootImage, "kernel", "9", 9000)],
        cmdline: "",
    };
    match s.begin(&big.refs(), big.cmdline) {
        Err(StoreError::NoSpace { needed, available }) => {
            assert_eq!(needed, 11 * LEB);
            assert!(available < needed);
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    dev.set_bad_blocks(3, 0);
    assert!(matches!(
        s.begin(&set_b().refs(), set_b().cmdline),
        Err(StoreError::BadBlocks {
            bad_pebs: 3,
            reserved_for_bad: 0
        })
    ));
    assert!(
        dev.ops().is_empty(),
        "a refused plan wrote: {:?}",
        dev.ops()
    );
    dev.set_bad_blocks(0, 20);
    // A's segment + inventory, then a staging segment + staging inventory: 4.
    dev.set_max_volumes(3);
    let mut small = set_a();
    small.arts[2] = art(ArtifactKind::Package, "app", "9", 10);
    assert!(matches!(
        s.begin(&small.refs(), small.cmdline),
        Err(StoreError::TooManyVolumes { needed: 4, max: 3 })
    ));
    assert!(dev.ops().is_empty());
}

#[test]
fn shared_artifacts_are_not_fetched_again_and_up_to_date_is_free() {
    let dev = fresh(64, &[&set_a()]);
    let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
    let check = s.check(&set_b().refs(), set_b().cmdline).unwrap();
    let fetched: Vec<&str> = check.fetch.iter().map(|a| a.version.as_str()).collect();
    assert_eq!(fetched, ["2", "2"]);
    assert_eq!(check.present.len(), 1);
    let same = s.check(&set_a().refs(), set_a().cmdline).unwrap();
    assert!(same.up_to_date && same.fetch.is_empty() && same.needed == 0);
}

#[test]
fn bad_stream_is_refused_and_can_be_restarted() {
    let dev = fresh(64, &[&set_a()]);
    let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
    let b = set_b();
    s.begin(&b.refs(), b.cmdline).unwrap();
    let k = &b.arts[0];
    s.start(&k.r).unwrap();
    let mut wrong = k.data.clone();
    wrong[10] ^= 1;
    s.write(&k.r, &wrong).unwrap();
    assert!(matches!(
        s.write(&k.r, b"x"),
        Err(StoreError::TooLong { .. })
    ));
    assert!(matches!(
        s.finish(&k.r),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(matches!(s.commit(), Err(StoreError::Incomplete { .. })));
    s.start(&k.r).unwrap();
    s.write(&k.r, &k.data[..5]).unwrap();
    assert_eq!(s.written(&k.r).unwrap(), 5);
    assert!(matches!(
        s.finish(&k.r),
        Err(StoreError::TooShort { got: 5, .. })
    ));
    let other = art(ArtifactKind::Package, "stranger", "1", 5);
    assert!(matches!(
        s.start(&other.r),
        Err(StoreError::NotInPlan { .. })
    ));
    s.abort().unwrap();
    let names: Vec<String> = dev
        .clone()
        .list()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("sb.new.")), "{names:?}");
    assert_eq!(s.digest(), Some(set_a().digest()));
    install(&dev, &b).unwrap();
}

/// A fresh device and store, set A begun, its first artifact started.
fn streaming_set_a() -> (FakeVolumes, Set, Store<FakeVolumes>) {
    let dev = FakeVolumes::new(LEB, 64);
    let a = set_a();
    let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
    s.begin(&a.refs(), a.cmdline).unwrap();
    s.start(&a.arts[0].r).unwrap();
    (dev, a, s)
}

/// Writes of every alignment (inside a LEB, ending on one, starting on one, several
/// LEBs at once, with and without buffered bytes before them) store the same bytes.
#[test]
fn writes_of_any_size_and_alignment_store_the_artifact() {
    let (_dev, a, mut s) = streaming_set_a();
    let k = &a.arts[0];
    let leb = LEB as usize;
    let mut at = 0;
    for n in [1, leb - 1, leb, 2 * leb + 5, leb - 5, 3] {
        let n = n.min(k.data.len() - at);
        s.write(&k.r, &k.data[at..at + n]).unwrap();
        at += n;
    }
    s.write(&k.r, &k.data[at..]).unwrap();
    s.finish(&k.r).unwrap();
    for rest in &a.arts[1..] {
        s.stage(&rest.r, &rest.data[..]).unwrap();
    }
    let inv = s.commit().unwrap();
    assert!(s.verify_set(&inv.set).unwrap().is_empty());
}

#[test]
fn readback_catches_corruption_on_flash() {
    let (dev, a, mut s) = streaming_set_a();
    let k = &a.arts[0];
    // The write "lands" differently than sent (a program failure the driver did not
    // report): only reading the LEB back shows it.
    let staging = staging_segment(&dev);
    dev.flip_on_change(&staging, 100);
    s.write(&k.r, &k.data).unwrap();
    match s.finish(&k.r) {
        Err(StoreError::DigestMismatch { what, .. }) => assert_eq!(what, "as read back"),
        other => panic!("expected read-back mismatch, got {other:?}"),
    }
}

#[test]
fn damaged_inventory_copy_falls_back_and_total_loss_is_an_error() {
    let dev = fresh(64, &[&set_a()]);
    assert!(dev.corrupt(layout::INVENTORY, 30));
    let (s, report) = Store::open(dev.clone(), cfg()).unwrap();
    assert_eq!(s.digest(), Some(set_a().digest()));
    assert!(report.inventory_damaged.is_some());
    // Open rewrote both copies: damage to copy A alone is harmless again.
    let (_, report) = Store::open(dev.clone(), cfg()).unwrap();
    assert!(report.inventory_damaged.is_none());
    assert!(dev.corrupt(layout::INVENTORY, 30));
    assert!(dev.corrupt(layout::INVENTORY, LEB as usize + 30));
    let err = Store::open(dev.clone(), cfg()).unwrap_err();
    assert!(matches!(err, StoreError::Inventory { .. }), "{err}");
    assert!(err.to_string().contains("sb.inventory"));
    let s = Store::wipe(dev.clone(), cfg()).unwrap();
    assert_eq!(s.digest(), None);
    assert_eq!(free_lebs(&dev), 64);
}

#[test]
fn inspect_reads_without_writing() {
    let dev = fresh(64, &[&set_a()]);
    let mut d = dev.clone();
    let leftover = layout::staging_of(&layout::artifact_volume(&set_b().arts[0].r).unwrap());
    d.create(&leftover, 10).unwrap();
    let before = dev.ops().len();
    let inv = Store::inspect(&mut d).unwrap().unwrap();
    assert_eq!(inv.set.digest, set_a().digest());
    assert_eq!(dev.ops().len(), before, "inspect wrote to flash");
    assert_eq!(Store::inspect(&mut FakeVolumes::new(LEB, 4)).unwrap(), None);
}

#[test]
fn commit_and_boot_do_exactly_these_flash_operations() {
    let dev = fresh(64, &[&set_a()]);
    install(&dev, &set_b()).unwrap();
    let kinds: Vec<String> = dev
        .ops()
        .iter()
        .map(|o| match o {
            FakeOp::Create { name, .. } => format!(
                "create {}",
                name.split('.').take(3).collect::<Vec<_>>().join(".")
            ),
            FakeOp::Update { .. } => "update".into(),
            FakeOp::Write { .. } => "write".into(),
            FakeOp::ChangeLeb { .. } => "change leb".into(),
            FakeOp::Rename(r) => format!("rename x{}", r.len()),
            FakeOp::Remove { .. } => "remove".into(),
        })
        .collect();
    // kernel 3100 bytes = 4 LEBs, app 900 bytes = 1 LEB, each LEB changed once.
    let expect = [
        "create sb.new.seg",
        "change leb",
        "change leb",
        "change leb",
        "change leb",
        "change leb",
        "create sb.new.inventory",
        "update",
        "write",
        "rename x2",
    ];
    assert_eq!(kinds, expect);
    // The one rename carries the segment (both staged artifacts) and the inventory.
    let Some(FakeOp::Rename(r)) = dev.ops().last().cloned() else {
        unreachable!()
    };
    assert_eq!(r.last().unwrap().new_name, layout::INVENTORY);
    let dev = dev.power_cycle();
    Store::open(dev.clone(), cfg())
        .unwrap()
        .0
        .begin_boot()
        .unwrap();
    assert_eq!(
        dev.ops().len(),
        4,
        "a boot count is create+update+write+rename: {:?}",
        dev.ops()
    );
}

#[test]
fn restart_resumes_completely_staged_artifacts_after_a_rehash() {
    for corrupt in [false, true] {
        let dev = fresh(64, &[&set_a()]);
        let b = set_b();
        let (kernel, app) = (&b.arts[0], &b.arts[2]);
        {
            let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
            s.begin(&b.refs(), b.cmdline).unwrap();
            s.stage(&kernel.r, &kernel.data[..]).unwrap();
            s.start(&app.r).unwrap();
            s.write(&app.r, &app.data[..100]).unwrap();
        } // the card restarts here
        let dev = dev.power_cycle();
        let seg = staging_segment(&dev);
        if corrupt {
            // The kernel is the segment's first extent.
            assert!(dev.corrupt(&seg, 7));
        }
        let (mut s, report) = Store::open(dev.clone(), cfg()).unwrap();
        assert!(
            report.removed.is_empty(),
            "the staging segment is kept: {:?}",
            report.removed
        );
        assert_eq!(s.digest(), Some(set_a().digest()));
        let check = s.check(&b.refs(), b.cmdline).unwrap();
        assert_eq!((check.resumable.len(), check.fetch.len()), (1, 1));
        let check = s.begin(&b.refs(), b.cmdline).unwrap();
        let fetch: Vec<&str> = check.fetch.iter().map(|a| a.name.as_str()).collect();
        if corrupt {
            assert!(check.resumable.is_empty());
            assert_eq!(fetch, ["kernel", "app"]);
        } else {
            assert_eq!(check.resumable, vec![kernel.r.clone()]);
            assert_eq!(fetch, ["app"]);
            assert!(matches!(
                s.start(&kernel.r),
                Err(StoreError::WrongState { .. })
            ));
        }
        for a in &b.arts {
            if check.fetch.contains(&a.r) {
                s.stage(&a.r, &a.data[..]).unwrap();
            }
        }
        s.commit().unwrap();
        check_consistent(&dev.power_cycle(), &[b.digest()], "after resume");
    }
}

#[test]
fn recommitting_the_committed_set_writes_nothing_and_keeps_the_counter() {
    let dev = fresh(64, &[&set_a()]);
    let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
    s.begin_boot().unwrap();
    let before = dev.ops().len();
    let check = s.begin(&set_a().refs(), set_a().cmdline).unwrap();
    assert!(check.up_to_date && check.fetch.is_empty());
    let inv = s.commit().unwrap();
    assert_eq!(inv.attempts, 1);
    assert_eq!(dev.ops().len(), before, "{:?}", &dev.ops()[before..]);
}

#[test]
fn a_failed_write_returns_the_artifact_to_not_started() {
    let dev = fresh(64, &[&set_a()]);
    let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
    let b = set_b();
    let k = &b.arts[0];
    s.begin(&b.refs(), b.cmdline).unwrap();
    s.start(&k.r).unwrap();
    // The next LEB change (op n) fails: simulate with a cut, then "restore power" by
    // reopening on a power-cycled device, which is what a real card would do.
    dev.cut_power_after(dev.ops().len() as u64);
    let e = s.write(&k.r, &k.data[..LEB as usize + 10]).unwrap_err();
    assert!(e.to_string().contains("start it again"), "{e}");
    assert_eq!(s.written(&k.r).unwrap(), 0);
    assert!(matches!(
        s.write(&k.r, b"x"),
        Err(StoreError::WrongState { .. })
    ));
}

#[test]
fn an_unreadable_inventory_leb_falls_back_to_the_other_copy() {
    let dev = fresh(64, &[&set_a()]);
    dev.fail_reads(layout::INVENTORY, 0);
    let (s, report) = Store::open(dev.clone(), cfg()).unwrap();
    assert_eq!(s.digest(), Some(set_a().digest()));
    let what = report.inventory_damaged.unwrap();
    assert!(
        what.contains("LEB 0") && what.contains("I/O error"),
        "{what}"
    );
    // Both LEBs unreadable: a clear error that names the read failures.
    dev.fail_reads(layout::INVENTORY, 1);
    dev.fail_reads(layout::INVENTORY, 0);
    let err = Store::open(dev, cfg()).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("read errors"), "{chain}");
}
