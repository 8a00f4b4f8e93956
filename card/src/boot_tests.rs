//! The boot choice ([`super::choose`]) over a fake flash holding one or two sets.

use shelfboot_proto::msg::{ArtifactKind, ArtifactRef, Digest, Handoff};

use super::{BootFacts, Counting, Target, choose, handoff_of};
use crate::flash::{BootDecision, FakeVolumes, Store, StoreConfig, StoreError, Volumes as _};

const LEB: u64 = 1024;

/// Artifacts with their contents, and the command line.
type TestSet = (Vec<(ArtifactRef, Vec<u8>)>, String);

/// A set of a boot image and two packages; `v` makes the contents and versions differ.
fn set(v: u8) -> TestSet {
    let arts = [
        (ArtifactKind::BootImage, "kernel"),
        (ArtifactKind::Package, "base"),
        (ArtifactKind::Package, "app"),
    ]
    .into_iter()
    .map(|(kind, name)| {
        let data: Vec<u8> = (0..2000u32)
            .map(|i| i.to_le_bytes()[0] ^ v ^ name.as_bytes()[0])
            .collect();
        let r = shelfboot_proto::samples::artifact_of(kind, name, &v.to_string(), &data);
        (r, data)
    })
    .collect();
    (arts, format!("console=ttyS0 v{v}"))
}

fn digest(s: &TestSet) -> Digest {
    let refs: Vec<ArtifactRef> = s.0.iter().map(|(r, _)| r.clone()).collect();
    shelfboot_proto::msg::set_digest(&refs, &s.1)
}

fn set_a() -> TestSet {
    set(1)
}

fn set_b() -> TestSet {
    set(2)
}

fn cfg() -> StoreConfig {
    StoreConfig {
        max_attempts: 2,
        ..StoreConfig::default()
    }
}

/// A fake flash with `sets` committed in order (the last one current).
fn fresh(total_lebs: u64, sets: &[&TestSet]) -> FakeVolumes {
    let dev = FakeVolumes::new(LEB, total_lebs);
    for (arts, cmdline) in sets {
        let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
        let refs: Vec<ArtifactRef> = arts.iter().map(|(r, _)| r.clone()).collect();
        let check = s.begin(&refs, cmdline).unwrap();
        for (r, data) in arts {
            if check.fetch.contains(r) {
                s.stage(r, data.as_slice()).unwrap();
            }
        }
        s.commit().unwrap();
    }
    dev
}

const POWER_ON: BootFacts = BootFacts {
    stored: false,
    autonomous: false,
};

fn open(dev: &FakeVolumes) -> Store<FakeVolumes> {
    Store::open(dev.clone(), cfg()).unwrap().0
}

#[test]
fn a_set_with_a_boot_image_is_counted_then_kexeced() {
    let dev = fresh(64, &[&set_a()]);
    let mut s = open(&dev);
    let c = choose(&mut s, POWER_ON).unwrap();
    assert_eq!(c.set.digest, digest(&set_a()));
    assert!(matches!(
        c.counting,
        Counting::Counted(BootDecision::Boot { attempt: 1, .. })
    ));
    assert!(
        matches!(&c.target, Target::Kexec { volume, .. } if volume == &c.set.boot_image().unwrap().volume)
    );
    assert_eq!(c.handoff(), Handoff::Kexec);
    assert_eq!(handoff_of(&c.set), Handoff::Kexec);
    assert_eq!(open(&dev).inventory().unwrap().attempts, 1);
}

#[test]
fn a_stored_image_switches_root_into_the_packages_uncounted() {
    let dev = fresh(64, &[&set_a()]);
    let mut s = open(&dev);
    let c = choose(
        &mut s,
        BootFacts {
            stored: true,
            autonomous: false,
        },
    )
    .unwrap();
    assert_eq!(c.counting, Counting::Stored);
    let Target::SwitchRoot { layers } = &c.target else {
        panic!("{:?}", c.target)
    };
    let names: Vec<(&str, u64, u64)> = layers
        .iter()
        .map(|l| (l.volume.as_str(), l.offset, l.size))
        .collect();
    let want: Vec<(&str, u64, u64)> = c
        .set
        .packages()
        .map(|p| (p.volume.as_str(), p.offset, p.artifact.size))
        .collect();
    assert_eq!(names, want, "packages in plan order, bottom first");
    for l in layers {
        assert_eq!(s.volume_id(&l.volume).unwrap(), Some(l.id));
        assert!(l.in_segment, "new sets are written into segments");
    }
    assert_eq!(c.handoff(), Handoff::SwitchRoot);
    assert_eq!(open(&dev).inventory().unwrap().attempts, 0);
}

#[test]
fn master_less_boots_count_only_sets_not_proven() {
    let dev = fresh(64, &[&set_a(), &set_b()]);
    let alone = BootFacts {
        stored: false,
        autonomous: true,
    };
    for _ in 0..4 {
        let c = choose(&mut open(&dev), alone).unwrap();
        assert_eq!(c.counting, Counting::Proven);
        assert_eq!(
            c.set.digest,
            digest(&set_b()),
            "a proven set never rolls back"
        );
    }
    assert_eq!(open(&dev).inventory().unwrap().attempts, 0);
    // Booted once with a master but not Ready yet: counted, then rolled back.
    choose(&mut open(&dev), POWER_ON).unwrap();
    choose(&mut open(&dev), alone).unwrap();
    let c = choose(&mut open(&dev), alone).unwrap();
    assert!(
        matches!(
            c.counting,
            Counting::Counted(BootDecision::RolledBack { .. })
        ),
        "{:?}",
        c.counting
    );
    assert_eq!(c.set.digest, digest(&set_a()));
}

#[test]
fn nothing_committed_or_a_lost_volume_is_an_error_naming_it() {
    let dev = FakeVolumes::new(LEB, 64);
    let mut s = Store::open(dev, StoreConfig::default()).unwrap().0;
    for stored in [false, true] {
        let e = choose(
            &mut s,
            BootFacts {
                stored,
                autonomous: false,
            },
        )
        .unwrap_err();
        assert!(matches!(e, StoreError::NothingCommitted), "{e}");
    }
    let dev = fresh(64, &[&set_a()]);
    let mut s = open(&dev);
    let pkg = s
        .inventory()
        .unwrap()
        .set
        .packages()
        .next()
        .unwrap()
        .volume
        .clone();
    let id = s.volume_id(&pkg).unwrap().unwrap();
    s.volumes_mut().remove(id).unwrap();
    let e = choose(
        &mut s,
        BootFacts {
            stored: true,
            autonomous: false,
        },
    )
    .unwrap_err();
    assert!(
        matches!(&e, StoreError::SetDamaged { missing } if missing == &vec![pkg.clone()]),
        "{e}"
    );
}
