//! Real-size sets: hundreds of artifacts on a device with UBI's limits (128 volumes, 32
//! renames per request), many commits, power cuts during a 200-artifact commit, and
//! resumption of a torn large artifact.

// Test data sizes are tiny; truncating casts cannot bite here.
#![allow(clippy::cast_possible_truncation)]

use super::artifact::ArtifactKind;
use super::fake::{FakeOp, FakeVolumes};
use super::file::FileVolumes;
use super::layout::{self, VolumeClass};
use super::store::{MAX_SEGMENTS, Store, StoreError};
use super::tests::{Set, art, cfg, check_consistent, exhaust, install};
use super::volumes::{UBI_MAX_RNVOL, Volumes};

/// A release of `n` packages (100 to ~2,100 bytes) plus a kernel; package `i` at
/// `versions[i]`.
fn release(n: usize, versions: &[u32]) -> Set {
    let mut arts = vec![art(ArtifactKind::BootImage, "kernel", "1", 5000)];
    for i in 0..n {
        let v = versions.get(i).copied().unwrap_or(1);
        arts.push(art(
            ArtifactKind::Package,
            &format!("pkg-{i:03}-{}", "x".repeat(50)),
            &v.to_string(),
            100 + (i * 37) % 2000,
        ));
    }
    Set {
        arts,
        cmdline: "console=ttyS0",
    }
}

/// Bytes the device was asked to store since its last power cycle (LEB changes and
/// volume writes).
fn bytes_written(dev: &FakeVolumes) -> u64 {
    dev.ops()
        .iter()
        .map(|o| match o {
            FakeOp::ChangeLeb { len, .. } | FakeOp::Write { len, .. } => *len as u64,
            _ => 0,
        })
        .sum()
}

/// Volumes the committed current set references, and all volumes on the device.
fn counts(vols: &mut impl Volumes) -> (usize, usize) {
    let inv = Store::inspect(vols).unwrap().unwrap();
    let mut used: Vec<&str> = inv
        .set
        .artifacts
        .iter()
        .map(|s| s.volume.as_str())
        .collect();
    used.sort_unstable();
    used.dedup();
    (used.len(), vols.list().unwrap().len())
}

#[test]
fn two_hundred_artifacts_commit_and_a_hundred_one_package_commits_stay_within_ubi_limits() {
    // 128 volume slots (UBI's maximum), LEB 1 KiB.
    let mut dev = FakeVolumes::new(1024, 4000);
    let mut versions = vec![1u32; 200];
    let first = release(200, &versions);
    install(&dev, &first).unwrap();
    let renames: Vec<Vec<_>> = dev
        .ops()
        .into_iter()
        .filter_map(|o| match o {
            FakeOp::Rename(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(renames.len(), 1, "one rename commits 201 artifacts");
    assert_eq!(renames[0].len(), 2, "segment and inventory");
    let mut max_volumes = 0;
    let mut compactions = 0;
    for c in 0..100 {
        let i = (c * 7) % 200;
        versions[i] += 1;
        let next = release(200, &versions);
        let changed = &next.arts[i + 1];
        // Each commit after a reboot, so that the operation log is the commit's own.
        dev = dev.power_cycle();
        let dev_c = dev.clone();
        let (mut s, _) = Store::open(dev_c.clone(), cfg()).unwrap();
        let check = s.begin(&next.refs(), next.cmdline).unwrap();
        assert_eq!(
            check.fetch,
            vec![changed.r.clone()],
            "commit {c}: only the change"
        );
        s.stage(&changed.r, &changed.data[..]).unwrap();
        let inv = s.commit().unwrap();
        assert_eq!(inv.set.digest, next.digest());
        // Only the changed package was written (plus, when compacting, copies made on
        // flash; never anything from the network besides the change).
        let copied: u64 = check.copies.iter().map(|a| a.size).sum();
        let inventory_bytes: u64 = dev_c
            .ops()
            .iter()
            .filter_map(|o| match o {
                FakeOp::Write { len, .. } => Some(*len as u64),
                _ => None,
            })
            .sum();
        assert_eq!(
            bytes_written(&dev_c) - inventory_bytes,
            changed.r.size + copied,
            "commit {c}: bytes stored besides the inventory"
        );
        if !check.copies.is_empty() {
            compactions += 1;
        }
        for o in dev_c.ops() {
            if let FakeOp::Rename(r) = o {
                assert!(r.len() <= 2 && r.len() <= UBI_MAX_RNVOL);
            }
        }
        let (refd, total) = counts(&mut dev_c.clone());
        assert!(
            refd <= MAX_SEGMENTS,
            "commit {c}: set references {refd} volumes"
        );
        assert!(total <= 2 * MAX_SEGMENTS + 3, "commit {c}: {total} volumes");
        max_volumes = max_volumes.max(total);
    }
    assert!(compactions > 0, "100 one-package commits must compact");
    assert!(max_volumes <= 128);
    let last = check_consistent(
        &dev.power_cycle(),
        &[release(200, &versions).digest()],
        "end",
    );
    assert_eq!(last, release(200, &versions).digest());
}

#[test]
fn two_hundred_artifacts_on_file_volumes_stay_within_ubi_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dev = FileVolumes::format(tmp.path(), 1024, 4000).unwrap();
    let mut versions = vec![1u32; 200];
    let stage_all = |dev: &FileVolumes, set: &Set| {
        let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
        let check = s.begin(&set.refs(), set.cmdline).unwrap();
        for a in &set.arts {
            if check.fetch.contains(&a.r) {
                s.stage(&a.r, &a.data[..]).unwrap();
            }
        }
        s.commit().unwrap()
    };
    stage_all(&dev, &release(200, &versions));
    for c in 0..40 {
        versions[(c * 11) % 200] += 1;
        let set = release(200, &versions);
        let inv = stage_all(&dev, &set);
        assert_eq!(inv.set.digest, set.digest());
        let (refd, total) = counts(&mut dev);
        assert!(
            refd <= MAX_SEGMENTS && total <= 2 * MAX_SEGMENTS + 3,
            "{refd} {total}"
        );
    }
    // Reopened from the directory, both sets are whole.
    let dev = FileVolumes::open(tmp.path()).unwrap();
    let (mut s, _) = Store::open(dev, cfg()).unwrap();
    let inv = s.inventory().cloned().unwrap();
    assert!(s.verify_set(&inv.set).unwrap().is_empty());
    assert!(
        s.verify_set(inv.previous.as_ref().unwrap())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn power_cuts_at_every_step_of_a_two_hundred_artifact_commit_leave_one_whole_set() {
    let old = release(200, &[]);
    let new = release(200, &vec![2; 200]);
    let base = FakeVolumes::new(1024, 4000);
    install(&base, &old).unwrap();
    let base = base.power_cycle();
    exhaust(&base, old.digest(), new.digest(), |d| {
        drop(install(d, &release(200, &vec![2; 200])))
    });
}

#[test]
fn a_torn_large_artifact_resumes_after_its_written_lebs() {
    let leb = 4096;
    let dev = FakeVolumes::new(leb, 1024);
    let small = release(3, &[]);
    install(&dev, &small).unwrap();
    let mut big = release(3, &[2, 1, 1]);
    big.arts[1] = art(ArtifactKind::Package, "big", "1", 1 << 20);
    let a = big.arts[1].clone();
    // First attempt: the power goes while the big package streams in.
    let dev = dev.power_cycle();
    {
        let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
        let check = s.begin(&big.refs(), big.cmdline).unwrap();
        assert!(check.fetch.contains(&a.r));
        dev.cut_power_after(dev.ops().len() as u64 + 230);
        let e = s.stage(&a.r, &a.data[..]).unwrap_err();
        assert!(matches!(e, StoreError::Volume { .. }), "{e}");
    }
    let dev = dev.power_cycle();
    let (mut s, report) = Store::open(dev.clone(), cfg()).unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(s.digest(), Some(small.digest()), "the old set is committed");
    let check = s.begin(&big.refs(), big.cmdline).unwrap();
    let held = check
        .partial
        .iter()
        .find(|(x, _)| *x == a.r)
        .map(|(_, h)| *h)
        .expect("the torn package is partial");
    assert!(held >= 220 * leb && held % leb == 0, "held {held}");
    s.start(&a.r).unwrap();
    assert_eq!(s.written(&a.r).unwrap(), held);
    let before = bytes_written(&dev);
    s.write(&a.r, &a.data[held as usize..]).unwrap();
    s.finish(&a.r).unwrap();
    for x in &big.arts {
        if check.fetch.contains(&x.r) && x.r != a.r {
            s.stage(&x.r, &x.data[..]).unwrap();
        }
    }
    s.commit().unwrap();
    let moved = bytes_written(&dev) - before;
    assert!(
        moved < a.r.size / 5,
        "second attempt stored {moved} bytes of a {} byte artifact",
        a.r.size
    );
    check_consistent(&dev.power_cycle(), &[big.digest()], "after resume");
    // A staging segment of another plan is not resumed into: it is removed.
    let names: Vec<String> = dev
        .clone()
        .list()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| layout::classify(n) == VolumeClass::StagingSegment),
        "{names:?}"
    );
}

#[test]
fn a_torn_artifact_whose_prefix_went_bad_is_caught_by_the_whole_hash() {
    let leb = 1024;
    let dev = FakeVolumes::new(leb, 256);
    let set = release(1, &[]);
    let a = art(ArtifactKind::Package, "big", "1", 40_000);
    let mut big = release(1, &[]);
    big.arts.push(a.clone());
    install(&dev, &set).unwrap();
    let dev = dev.power_cycle();
    {
        let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
        s.begin(&big.refs(), big.cmdline).unwrap();
        s.start(&a.r).unwrap();
        s.write(&a.r, &a.data[..20_000]).unwrap();
    } // killed
    let dev = dev.power_cycle();
    let seg = super::tests::staging_segment(&dev);
    let (mut s, _) = Store::open(dev.clone(), cfg()).unwrap();
    let check = s.begin(&big.refs(), big.cmdline).unwrap();
    // The prefix on flash (the segment's only extent, at 0) flips a bit before the rest
    // arrives.
    assert!(dev.corrupt(&seg, 10));
    assert_eq!(check.partial.len(), 1);
    s.start(&a.r).unwrap();
    let held = s.written(&a.r).unwrap() as usize;
    s.write(&a.r, &a.data[held..]).unwrap();
    assert!(matches!(
        s.finish(&a.r),
        Err(StoreError::DigestMismatch { .. })
    ));
    // Started again, it is written from byte 0 and commits.
    s.start(&a.r).unwrap();
    assert_eq!(s.written(&a.r).unwrap(), 0);
    s.write(&a.r, &a.data[..]).unwrap();
    s.finish(&a.r).unwrap();
    s.commit().unwrap();
    check_consistent(&dev.power_cycle(), &[big.digest()], "after refetch");
}

/// A card in the field: one static volume per artifact and a format-1 inventory (no
/// offsets), as earlier versions wrote them. It opens, boots, and a new set reuses its
/// volumes where the bytes are the same.
#[test]
fn a_format_one_card_with_one_volume_per_artifact_is_read_and_updated() {
    use super::inventory::{self, Inventory, SetRecord};
    let leb = 1024;
    let mut dev = FakeVolumes::new(leb, 256);
    let a = super::tests::set_a();
    for x in &a.arts {
        let name = layout::artifact_volume(&x.r).unwrap();
        let id = dev.create(&name, x.r.size).unwrap();
        let mut w = dev.update(id, x.r.size).unwrap();
        super::volumes::VolumeWriter::write(&mut w, &x.data).unwrap();
        super::volumes::VolumeWriter::finish(w).unwrap();
    }
    let inv = Inventory {
        generation: 4,
        set: SetRecord::new(&a.refs(), a.cmdline).unwrap(),
        attempts: 0,
        previous: None,
        rolled_back_from: None,
        last_command: None,
    };
    let mut bytes = inventory::encode(&inv, leb).unwrap();
    assert!(
        !bytes.windows(2).any(|w| w == [0x61, b'o']),
        "offset 0 is not encoded: format 1's shape"
    );
    let stride = bytes.len() / 2;
    for copy in [0, stride] {
        let c = &mut bytes[copy..copy + stride];
        c[4..6].copy_from_slice(&1u16.to_be_bytes());
        let len = u32::from_be_bytes([c[8], c[9], c[10], c[11]]) as usize;
        let crc = crc32fast::hash(&c[..12 + len]);
        c[12 + len..16 + len].copy_from_slice(&crc.to_be_bytes());
    }
    let id = dev.create(layout::INVENTORY, bytes.len() as u64).unwrap();
    let mut w = dev.update(id, bytes.len() as u64).unwrap();
    super::volumes::VolumeWriter::write(&mut w, &bytes).unwrap();
    super::volumes::VolumeWriter::finish(w).unwrap();

    let dev = dev.power_cycle();
    let (mut s, report) = Store::open(dev.clone(), cfg()).unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(s.inventory(), Some(&inv));
    assert!(s.verify_set(&inv.set).unwrap().is_empty());
    // B shares base with A: base stays in its legacy volume, the rest goes to a segment.
    let b = super::tests::set_b();
    let check = s.begin(&b.refs(), b.cmdline).unwrap();
    assert_eq!(check.present.len(), 1);
    for x in &b.arts {
        if check.fetch.contains(&x.r) {
            s.stage(&x.r, &x.data[..]).unwrap();
        }
    }
    let next = s.commit().unwrap();
    let base = &next.set.artifacts[1];
    assert_eq!(base.volume, layout::artifact_volume(&b.arts[1].r).unwrap());
    assert_eq!(base.offset, 0);
    assert!(layout::is_segment(&next.set.artifacts[0].volume));
    assert_eq!(next.previous.as_ref(), Some(&inv.set));
    check_consistent(&dev.power_cycle(), &[b.digest()], "after the update");
}
