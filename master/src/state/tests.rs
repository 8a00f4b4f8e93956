//! End-to-end tests of import, resolution, assignments and gc on a real state directory.

use std::collections::BTreeMap;

use proptest::prelude::*;
use shelfboot_proto::id::{Arch, Digest, MacAddr};
use shelfboot_proto::msg::set_digest;

use super::fixture::{self, N1, N2, N3, N4};
use super::*;
use crate::image::manifest::{BlobRef, BootImage, MANIFEST_FORMAT, Package};
use crate::image::manifest::{Manifest, ReleaseId};
use crate::image::pack;
use crate::policy::Defaults;
use crate::resolve::{self, Plan};
use crate::store::{ImportOutcome, Store, Target};

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn summary(p: &Plan) -> Vec<String> {
    let mut out = vec![format!(
        "{} {} {} boot {} {}",
        p.release, p.class, p.arch, p.boot.name, p.boot.version
    )];
    out.extend(
        p.packages
            .iter()
            .map(|a| format!("{} {}", a.name, a.version)),
    );
    out
}

fn import(m: &mut Master, bytes: &[u8]) -> Result<ImportReport, ImportError> {
    m.import_from(bytes, true, &mut |_, _| {})
}

/// Imports `bytes`, expects failure mentioning `expect`, and checks nothing changed.
fn assert_rejected(m: &mut Master, bytes: &[u8], expect: &str) -> String {
    let before = fixture::state_dump(m);
    let err = import(m, bytes).expect_err("import must fail");
    let text = shelfboot_proto::report::error_chain(&err);
    assert!(
        text.contains(expect),
        "error '{text}' should mention '{expect}'"
    );
    assert_eq!(
        fixture::state_dump(m),
        before,
        "state changed after: {text}"
    );
    text
}

#[test]
fn fixture_imports_and_resolves_expected_plans() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture::image(dir.path(), "1.0.0", "", &fixture::vendor_key());
    let mut m = fixture::master(dir.path());
    let report = import(&mut m, &img).unwrap();
    assert_eq!(report.outcome, ImportOutcome::Imported);
    assert_eq!(report.blobs_stored, 21);
    fixture::add_nodes(&mut m);

    let expect: [(&str, &[&str]); 4] = [
        (
            N1,
            &[
                "shelf-os@1.0.0 linecards x86_64 boot lc-kernel 6.1.0",
                "base 1.1.0",
                "libnet 2.0.0",
                "routing 3.0.0",
            ],
        ),
        (
            N2,
            &[
                "shelf-os@1.0.0 linecards x86_64 boot lc-kernel 6.1.0",
                "base 1.1.0",
                "debug-tools 0.9.0",
                "libnet 2.0.0",
                "routing 3.0.0",
            ],
        ),
        (
            N3,
            &[
                "shelf-os@1.0.0 linecards aarch64 boot lc-kernel 6.1.0",
                "base 1.1.0",
                "bgpd 1.0.0",
                "libnet 2.0.0",
                "routing 3.0.0",
            ],
        ),
        (
            N4,
            &[
                "shelf-os@1.0.0 fabric aarch64 boot fab-kernel 6.1.0",
                "base 1.1.0",
                "fabric-mgr 1.0.0",
            ],
        ),
    ];
    for (node, want) in expect {
        let plan = m.plan(&mac(node)).unwrap();
        assert_eq!(summary(&plan), want, "plan of {node}");
        assert!(plan.persist);
        // Each card gets its arch's build.
        let manifest = m.store().release_manifest(&plan.release).unwrap().unwrap();
        for a in &plan.packages {
            let build = manifest
                .packages
                .iter()
                .find(|p| p.name == a.name && p.version == a.version && p.arch == plan.arch)
                .unwrap();
            assert_eq!(build.payload, a.blob);
        }
        // The digest is proto's set digest, and resolution is deterministic.
        assert_eq!(
            plan.digest,
            set_digest(&plan.artifact_refs(), "console=ttyS0 quiet")
        );
        assert_eq!(m.plan(&mac(node)).unwrap(), plan);
    }
    // Same packages, different arch: different digests.
    assert_ne!(
        m.plan(&mac(N1)).unwrap().digest,
        m.plan(&mac(N3)).unwrap().digest
    );

    let rules: BTreeMap<String, String> = m
        .plan(&mac(N3))
        .unwrap()
        .explain
        .into_iter()
        .map(|r| (r.subject, r.rule))
        .collect();
    assert_eq!(
        rules["class linecards"],
        "first matching class: card type lc200 in [lc100, lc200], slot 3 in 1-8"
    );
    assert_eq!(
        rules["package libnet 2.0.0 (aarch64)"],
        "dependency of routing 3.0.0 (requires ^2)"
    );
    assert_eq!(
        rules["package base 1.1.0 (aarch64)"],
        "^1 defaults of release shelf-os@1.0.0"
    );
    assert_eq!(
        rules["package bgpd 1.0.0 (aarch64)"],
        "* provides feature bgp (requested by the card)"
    );
    let n2 = m.plan(&mac(N2)).unwrap();
    let dbg = n2
        .packages
        .iter()
        .find(|p| p.name == "debug-tools")
        .unwrap();
    assert_eq!(dbg.rule, "* per-node override in release shelf-os@1.0.0");
}

#[test]
fn conflicting_pin_names_packages_and_constraints() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture::image(dir.path(), "1.0.0", "", &fixture::vendor_key());
    let mut m = fixture::master(dir.path());
    import(&mut m, &img).unwrap();
    fixture::add_nodes(&mut m);
    let before = fixture::state_dump(&m);
    let pins = parse_pins(&["base=1.0.0".to_owned()]).unwrap();
    let err = m
        .assign(Target::Node(mac(N1)), None, pins, "assign")
        .unwrap_err();
    let text = chain_lines(&err).join("\n");
    assert!(
        text.contains("unsatisfiable dependency for node 02:00:00:00:00:01"),
        "{text}"
    );
    assert!(text.contains("base, libnet, routing"), "{text}");
    assert!(
        text.contains("routing 3.0.0 depends on libnet >=2.0.0, <3.0.0,"),
        "{text}"
    );
    assert!(
        text.contains("base =1.0.0: pinned for this node by the operator"),
        "{text}"
    );
    assert!(text.contains("routing ^3: class linecards"), "{text}");
    assert_eq!(fixture::state_dump(&m), before);

    // A class pin that one card of the class (aarch64) cannot satisfy is refused.
    let pins = parse_pins(&["debug-tools=0.9.0".to_owned()]).unwrap();
    let err = m
        .assign(Target::Class("linecards".into()), None, pins, "assign")
        .unwrap_err();
    let text = chain_lines(&err).join("\n");
    assert!(
        text.contains("cannot make a plan for node 02:00:00:00:00:03"),
        "{text}"
    );
    assert!(text.contains("not imported for arch aarch64"), "{text}");
    assert_eq!(fixture::state_dump(&m), before);

    // A compatible pin is accepted and shows up in explain; the solver picks libnet 1.x.
    let pins = parse_pins(&["routing=2.5.0".to_owned()]).unwrap();
    m.assign(Target::Node(mac(N1)), None, pins, "assign")
        .unwrap();
    let plan = m.plan(&mac(N1)).unwrap();
    assert_eq!(
        summary(&plan)[1..],
        ["base 1.1.0", "libnet 1.4.0", "routing 2.5.0"]
    );
}

#[test]
fn test_mode_is_ram_only_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture::image(dir.path(), "1.0.0", "", &fixture::vendor_key());
    let mut m = fixture::master(dir.path());
    import(&mut m, &img).unwrap();
    fixture::add_nodes(&mut m);
    let pins = parse_pins(&["debug-tools=0.9.0".to_owned()]).unwrap();
    let plan = m.test_mode(&mac(N1), Some(pins)).unwrap().unwrap();
    assert!(!plan.persist);
    assert!(plan.packages.iter().any(|p| p.name == "debug-tools"));
    // No aarch64 build: refused, nothing recorded.
    let pins = parse_pins(&["debug-tools=0.9.0".to_owned()]).unwrap();
    let err = m.test_mode(&mac(N3), Some(pins)).unwrap_err();
    assert!(
        chain_lines(&err)
            .join(" ")
            .contains("not imported for arch aarch64")
    );
    assert!(
        m.store()
            .node(&mac(N3))
            .unwrap()
            .unwrap()
            .test_mode
            .is_none()
    );
    m.test_mode(&mac(N1), None).unwrap();
    assert!(m.plan(&mac(N1)).unwrap().persist);
}

#[test]
fn ram_first_by_class_or_node_makes_ram_plans_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[override]]
mac = "02:00:00:00:00:01"
ram = true

[[override]]
mac = "02:00:00:00:00:03"
class = "diskless"

[[class]]
name = "diskless"
match = { card_types = ["lc300"] }
boot = "lc-kernel"
packages = { routing = "^3" }
ram = true
"#;
    let img = fixture::image(dir.path(), "1.0.0", extra, &fixture::vendor_key());
    let mut m = fixture::master(dir.path());
    import(&mut m, &img).unwrap();
    fixture::add_nodes(&mut m);
    let rule = |p: &Plan| {
        p.explain
            .iter()
            .find(|r| r.subject.starts_with("RAM-first"))
            .map(|r| r.rule.clone())
    };
    // By node: the same packages as its class mates, run from RAM.
    let (one, two) = (m.plan(&mac(N1)).unwrap(), m.plan(&mac(N2)).unwrap());
    assert!(!one.persist && !one.test);
    assert_eq!(
        rule(&one).as_deref(),
        Some("per-node override in release shelf-os@1.0.0")
    );
    assert!(two.persist && rule(&two).is_none(), "only the named node");
    assert_eq!(
        one.packages.len() + 1,
        two.packages.len(),
        "N2 adds debug-tools"
    );
    // By class.
    let three = m.plan(&mac(N3)).unwrap();
    assert_eq!(three.class, "diskless");
    assert!(!three.persist && !three.test);
    assert_eq!(rule(&three).as_deref(), Some("class diskless"));
    // Test mode on a RAM-first node: still RAM, and now a test.
    let pins = parse_pins(&["debug-tools=0.9.0".to_owned()]).unwrap();
    let trial = m.test_mode(&mac(N1), Some(pins)).unwrap().unwrap();
    assert!(!trial.persist && trial.test);
}

#[test]
fn an_unknown_arch_is_refused_naming_the_file_and_the_accepted_values() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    std::fs::write(dir.path().join("files/armpkg"), "arm payload").unwrap();
    let extra = "[[package]]\nname = \"armpkg\"\nversion = \"1.0.0\"\narch = \"armv7\"\n\
                 file = \"files/armpkg\"\n";
    let spec = fixture::write_spec(dir.path(), "1.0.0", extra);
    let err = pack::prepare(&spec).unwrap_err();
    let text = shelfboot_proto::report::error_chain(&err);
    assert!(text.contains(&spec.display().to_string()), "{text}");
    for want in ["armv7", "x86_64", "aarch64"] {
        assert!(text.contains(want), "{want} missing from: {text}");
    }

    // A manifest naming an unknown arch does not parse either.
    let good = pack::prepare(&fixture::write_spec(dir.path(), "1.0.0", "")).unwrap();
    let json = serde_json::to_string(&good.manifest).unwrap();
    assert!(json.contains(r#""arch":"aarch64""#), "{json}");
    let bad = json.replacen(r#""arch":"aarch64""#, r#""arch":"armv7""#, 1);
    let err = serde_json::from_str::<Manifest>(&bad)
        .unwrap_err()
        .to_string();
    for want in ["armv7", "x86_64", "aarch64"] {
        assert!(err.contains(want), "{want} missing from: {err}");
    }
    assert_eq!(
        serde_json::from_str::<Manifest>(&json).unwrap(),
        good.manifest
    );
}

#[test]
fn bad_images_are_rejected_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = fixture::vendor_key();
    let good = fixture::image(dir.path(), "1.0.0", "", &key);
    let mut m = fixture::master(dir.path());

    // Header and stream damage, on an empty database.
    assert_rejected(&mut m, &good[..good.len() - 5], "image is truncated");
    assert_rejected(&mut m, &good[..60], "image is truncated: the header");
    assert_rejected(&mut m, &good[..200], "image is truncated: the manifest");
    let mut bad = good.clone();
    bad[0] = b'X';
    assert_rejected(&mut m, &bad, "not a shelfboot composite image");
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    assert_rejected(&mut m, &bad, "blob is corrupt");
    let mut bad = good.clone();
    bad[crate::image::format::HEADER_LEN + 20] ^= 1;
    assert_rejected(&mut m, &bad, "bad signature");
    let mut bad = good.clone();
    bad.extend_from_slice(b"junk");
    assert_rejected(&mut m, &bad, "4 unexpected bytes after the last blob");
    let rogue = fixture::image(dir.path(), "1.0.0", "", &fixture::rogue_key());
    let text = assert_rejected(&mut m, &rogue, "untrusted key");
    assert!(text.contains(&crate::keys::key_id(&fixture::rogue_key().verifying_key())));

    // Unsatisfiable dependency.
    std::fs::write(dir.path().join("files/broken"), "broken").unwrap();
    let extra = "[[package]]\nname = \"broken\"\nversion = \"1.0.0\"\narch = \"x86_64\"\n\
                 file = \"files/broken\"\ndepends = { libnet = \"^9\" }\n";
    let img = fixture::image(dir.path(), "1.0.0", extra, &key);
    let text = assert_rejected(&mut m, &img, "unsatisfiable dependency");
    assert!(text.contains("libnet"), "{text}");

    // Missing blob: the signed manifest names a blob the image does not carry.
    let spec = fixture::write_spec(dir.path(), "1.0.0", "");
    let mut packed = pack::prepare(&spec).unwrap();
    let dropped = packed.manifest.blobs.remove(3);
    let blobs: BTreeMap<_, _> = packed
        .sources
        .iter()
        .map(|(d, p)| (*d, std::fs::read(p).unwrap()))
        .collect();
    let img = pack::write_image_bytes(&packed.manifest, &blobs, &key).unwrap();
    let text = assert_rejected(&mut m, &img, "missing blob");
    assert!(text.contains(&dropped.sha256.to_string()), "{text}");
    packed.manifest.blobs.insert(3, dropped);

    // Now with a release in the database.
    import(&mut m, &good).unwrap();
    fixture::add_nodes(&mut m);
    assert_rejected(&mut m, &good[..good.len() / 2], "image is truncated");

    // Duplicate version with different content: base 1.1.0 x86_64 rebuilt in 1.1.0.
    let spec = fixture::write_spec(dir.path(), "1.1.0", "");
    std::fs::write(dir.path().join("files/base-1.1.0-x86_64.sqfs"), "rebuilt!").unwrap();
    let packed = pack::prepare(&spec).unwrap();
    let out = dir.path().join("dup.img");
    pack::write_image(&packed, &key, &out).unwrap();
    let text = assert_rejected(
        &mut m,
        &std::fs::read(&out).unwrap(),
        "duplicate version with different content",
    );
    assert!(text.contains("package base 1.1.0 (x86_64)"), "{text}");
    assert!(text.contains("shelf-os@1.0.0"), "{text}");

    // Same release name and version, different manifest.
    std::fs::write(
        dir.path().join("files/base-1.1.0-x86_64.sqfs"),
        "payload base 1.1.0 x86_64",
    )
    .unwrap();
    let img = fixture::image(
        dir.path(),
        "1.0.0",
        "[[class]]\nname = \"spare\"\nmatch = { card_types = [\"none\"] }\n",
        &key,
    );
    assert_rejected(&mut m, &img, "already imported with a different manifest");
}

#[test]
fn truncation_at_every_offset_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let key = fixture::vendor_key();
    let blob = |b: &[u8]| BlobRef {
        sha256: Digest::of(b),
        size: b.len() as u64,
    };
    let (k, p1, p2) = (&b"kern"[..], &b"base!"[..], &b"app"[..]);
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        release: ReleaseId {
            name: "tiny".into(),
            version: "1.0.0".parse().unwrap(),
        },
        blobs: vec![blob(k), blob(p1), blob(p2)],
        boot: vec![BootImage {
            name: "k".into(),
            version: "1.0.0".parse().unwrap(),
            card_type: "lc".into(),
            arch: Arch::X86_64,
            image: blob(k),
            cmdline: String::new(),
        }],
        packages: vec![
            Package {
                name: "base".into(),
                version: "1.0.0".parse().unwrap(),
                arch: Arch::X86_64,
                provides: vec![],
                depends: BTreeMap::new(),
                payload: blob(p1),
            },
            Package {
                name: "app".into(),
                version: "1.0.0".parse().unwrap(),
                arch: Arch::X86_64,
                provides: vec![],
                depends: [("base".to_owned(), "^1".to_owned())].into(),
                payload: blob(p2),
            },
        ],
        classes: vec![],
        overrides: vec![],
        defaults: Defaults::default(),
    };
    let blobs: BTreeMap<_, _> = [k, p1, p2]
        .iter()
        .map(|b| (Digest::of(b), b.to_vec()))
        .collect();
    let img = pack::write_image_bytes(&manifest, &blobs, &key).unwrap();
    let mut m = fixture::master(dir.path());
    let before = fixture::state_dump(&m);
    for cut in 0..img.len() {
        let err = import(&mut m, &img[..cut]).expect_err("truncated import must fail");
        assert!(
            shelfboot_proto::report::error_chain(&err).contains("image is truncated"),
            "cut {cut}: {}",
            shelfboot_proto::report::error_chain(&err)
        );
        assert_eq!(
            fixture::state_dump(&m),
            before,
            "state changed at cut {cut}"
        );
    }
    assert_eq!(
        import(&mut m, &img).unwrap().outcome,
        ImportOutcome::Imported
    );
}

#[test]
fn gc_keeps_what_plans_and_assignments_reference() {
    let dir = tempfile::tempdir().unwrap();
    let key = fixture::vendor_key();
    let r1 = fixture::image(dir.path(), "1.0.0", "", &key);
    let mut m = fixture::master(dir.path());
    import(&mut m, &r1).unwrap();
    fixture::add_nodes(&mut m);
    // Release 1.1.0 adds routing 3.1.0 everywhere (new blobs).
    let mut extra = String::new();
    for arch in ["x86_64", "aarch64"] {
        let f = format!("files/routing-3.1.0-{arch}");
        std::fs::write(dir.path().join(&f), format!("routing 3.1 {arch}")).unwrap();
        extra.push_str(&format!(
            "[[package]]\nname = \"routing\"\nversion = \"3.1.0\"\narch = \"{arch}\"\n\
             file = \"{f}\"\ndepends = {{ libnet = \"^2\" }}\n\n"
        ));
    }
    let r2 = fixture::image(dir.path(), "1.1.0", &extra, &key);
    import(&mut m, &r2).unwrap();
    let plan = m.plan(&mac(N1)).unwrap();
    assert_eq!(summary(&plan)[3], "routing 3.1.0");

    // Roll the fabric class back to 1.0.0: gc --keep 1 must keep both releases.
    let r1_id = parse_release("shelf-os@1.0.0").unwrap();
    m.rollback(Target::Class("fabric".into()), r1_id.clone())
        .unwrap();
    assert_eq!(m.plan(&mac(N4)).unwrap().release, r1_id);
    let report = m.gc(1).unwrap();
    assert!(report.deleted_releases.is_empty());
    assert_eq!(report.removed_blobs, 0);

    // Rolling the line cards back to a release without routing 3.1.0 is fine, but
    // pinning the default to a release that does not exist is refused.
    let err = m
        .assign(
            Target::Default,
            Some(parse_release("shelf-os@9.9.9").unwrap()),
            BTreeMap::new(),
            "assign",
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown release shelf-os@9.9.9"),
        "{err}"
    );

    // Drop the rollback: 1.0.0 is now unreferenced and goes, with its unique blobs only.
    m.unassign(&Target::Class("fabric".into())).unwrap();
    let report = m.gc(1).unwrap();
    assert_eq!(report.deleted_releases, vec![r1_id]);
    assert_eq!(
        report.removed_blobs, 0,
        "1.1.0 holds every blob of 1.0.0 too"
    );
    for node in [N1, N2, N3, N4] {
        let plan = m.plan(&mac(node)).unwrap();
        for b in plan.blobs() {
            assert!(m.blobs().contains(&b.sha256), "{node} lost a blob");
        }
    }
    let history = m.history(None, 100).unwrap();
    assert!(history.iter().any(|e| e.kind == "rollback"));
    assert!(
        history
            .iter()
            .any(|e| e.detail == "deleted release shelf-os@1.0.0")
    );
}

fn arb_release() -> impl Strategy<Value = (Manifest, BTreeMap<Digest, Vec<u8>>)> {
    let pkg = (
        prop::sample::select(vec!["a", "b", "c"]),
        0u64..3,
        0u64..3,
        prop::sample::select(vec!["x86_64", "aarch64"]),
        prop::collection::vec(any::<u8>(), 0..12),
    );
    (prop::collection::vec(pkg, 1..6), 0u64..4).prop_map(|(pkgs, rel)| {
        let mut blobs = BTreeMap::new();
        let mut packages: Vec<Package> = Vec::new();
        for (name, major, minor, arch, bytes) in pkgs {
            let version = semver::Version::new(major, minor, 0);
            if packages
                .iter()
                .any(|p| p.name == name && p.version == version && p.arch.as_str() == arch)
            {
                continue;
            }
            let d = Digest::of(&bytes);
            packages.push(Package {
                name: name.into(),
                version,
                arch: arch.parse().unwrap(),
                provides: vec![],
                depends: BTreeMap::new(),
                payload: BlobRef {
                    sha256: d,
                    size: bytes.len() as u64,
                },
            });
            blobs.insert(d, bytes);
        }
        let mut refs: Vec<BlobRef> = packages.iter().map(|p| p.payload).collect();
        refs.sort();
        refs.dedup();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            release: ReleaseId {
                name: "prop".into(),
                version: semver::Version::new(rel, 0, 0),
            },
            blobs: refs,
            boot: vec![],
            packages,
            classes: vec![],
            overrides: vec![],
            defaults: Defaults::default(),
        };
        (manifest, blobs)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn reimport_is_a_no_op((manifest, blobs) in arb_release()) {
        let dir = tempfile::tempdir().unwrap();
        let img = pack::write_image_bytes(&manifest, &blobs, &fixture::vendor_key()).unwrap();
        let mut m = fixture::master(dir.path());
        let first = import(&mut m, &img).unwrap();
        prop_assert_eq!(first.outcome, ImportOutcome::Imported);
        let after_first = fixture::state_dump(&m);
        for _ in 0..2 {
            let again = import(&mut m, &img).unwrap();
            prop_assert_eq!(again.outcome, ImportOutcome::AlreadyPresent);
            prop_assert_eq!(again.blobs_stored, 0);
            prop_assert_eq!(&fixture::state_dump(&m), &after_first);
        }
    }
}

#[test]
fn shipped_example_packs_and_resolves() {
    // master/testdata/shelf is the example the README and docs/master.md use.
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/shelf/system.toml");
    let dir = tempfile::tempdir().unwrap();
    let packed = pack::prepare(&spec).unwrap();
    resolve::check_release(&packed.manifest).unwrap();
    let out = dir.path().join("release.img");
    pack::write_image(&packed, &fixture::vendor_key(), &out).unwrap();
    let mut m = fixture::master(dir.path());
    m.import_file(&out, true, &mut |_, _| {}).unwrap();
    fixture::add_nodes(&mut m);
    let n3 = m.plan(&mac(N3)).unwrap();
    assert_eq!(
        summary(&n3),
        [
            "shelf-os@1.0.0 linecards aarch64 boot lc-kernel 6.1.0",
            "base 1.1.0",
            "bgpd 1.0.0",
            "libnet 2.0.0",
            "routing 3.0.0"
        ]
    );
    assert_eq!(n3.cmdline, "console=ttyAMA0 quiet");
    let n2 = m.plan(&mac(N2)).unwrap();
    assert!(n2.packages.iter().any(|p| p.name == "debug-tools"));
    assert_eq!(summary(&m.plan(&mac(N4)).unwrap())[2], "fabric-mgr 1.0.0");
}

/// The messages of `err` and its causes, outermost first.
fn chain_lines(err: &dyn std::error::Error) -> Vec<String> {
    shelfboot_proto::report::causes(err)
        .map(|c| c.to_string())
        .collect()
}

/// `count` x86_64 packages with 64-byte names and a class `bulk` (lc100, slots 20-24)
/// that takes them all, as extra `system.toml`.
fn bulk_class_toml(dir: &Path, count: usize) -> String {
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let mut toml = String::new();
    let mut wanted = Vec::new();
    for i in 0..count {
        let name = format!("pkg-{}-{i:03}", "x".repeat(56));
        assert_eq!(name.len(), 64);
        let file = format!("{name}.sqfs");
        std::fs::write(files.join(&file), format!("payload {i}")).unwrap();
        toml.push_str(&format!(
            "[[package]]\nname = \"{name}\"\nversion = \"1.0.0\"\narch = \"x86_64\"\nfile = \"files/{file}\"\n\n"
        ));
        wanted.push(format!("\"{name}\" = \"^1\""));
    }
    toml.push_str(&format!(
        "[[class]]\nname = \"bulk\"\nmatch = {{ card_types = [\"lc100\"], slots = [\"20-24\"] }}\nboot = \"lc-kernel\"\npackages = {{ {} }}\n\n",
        wanted.join(", ")
    ));
    toml
}

#[test]
fn import_notes_classes_whose_plans_need_fragments() {
    let dir = tempfile::tempdir().unwrap();
    let extra = bulk_class_toml(dir.path(), 30);
    let img = fixture::image(dir.path(), "1.0.0", &extra, &fixture::vendor_key());
    let mut m = fixture::master(dir.path());
    let report = import(&mut m, &img).unwrap();
    // Only the bulk class is over one frame: 30 long names plus base and the kernel.
    assert_eq!(report.fragmented.len(), 1, "{:#?}", report.fragmented);
    let f = &report.fragmented[0];
    assert_eq!((f.class.as_str(), f.card_type.as_str()), ("bulk", "lc100"));
    assert_eq!(f.artifacts, 32);
    assert!(f.bytes > shelfboot_proto::MAX_CONTROL_BODY_LEN, "{f}");
    assert!(f.bytes <= shelfboot_proto::MAX_MESSAGE_LEN, "{f}");
    assert!(f.to_string().contains("protocol version 1"), "{f}");
}

#[test]
fn import_refuses_a_release_whose_plan_cannot_go_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    // 600 packages with 64-byte names: about 70 KB of plan, over the 64 KiB limit.
    let extra = bulk_class_toml(dir.path(), 600);
    let img = fixture::image(dir.path(), "1.0.0", &extra, &fixture::vendor_key());
    let mut m = fixture::master(dir.path());
    let text = assert_rejected(&mut m, &img, "cannot be served");
    assert!(
        text.contains("class bulk (lc100 on x86_64): a plan of 602 artifacts is")
            && text.contains("over the 65536-byte limit"),
        "{text}"
    );
}

#[test]
fn cards_alike_share_one_solve_and_get_their_own_plan() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture::image(dir.path(), "1.0.0", "", &fixture::vendor_key());
    let mut m = fixture::master(dir.path());
    import(&mut m, &img).unwrap();
    fixture::add_nodes(&mut m);
    // A second lc100 like N1 in another slot, and N2 (same type, but a per-node override).
    let n5: MacAddr = "02:00:00:00:00:05".parse().unwrap();
    m.add_node(
        &crate::store::NodeIdentity {
            mac: n5,
            card_type: "lc100".into(),
            arch: Arch::X86_64,
            shelf: 1,
            slot: 5,
            hw_rev: "A".into(),
            features: vec![],
        },
        None,
    )
    .unwrap();
    let cat = m.catalog().unwrap();
    let p1 = m.plan_in(&cat, &mac(N1)).unwrap();
    let p5 = m.plan_in(&cat, &n5).unwrap();
    assert_eq!(cat.cached_plans(), 1, "N5 took N1's solve");
    let p2 = m.plan_in(&cat, &mac(N2)).unwrap();
    assert_eq!(
        cat.cached_plans(),
        1,
        "a card with an override is solved on its own"
    );
    // Each equals the plan resolved without the cache, explain included (slot rules differ).
    for (node, cached) in [(mac(N1), &p1), (n5, &p5), (mac(N2), &p2)] {
        assert_eq!(cached, &m.plan(&node).unwrap(), "{node}");
    }
    assert_eq!(p5.node, n5);
    assert!(p5.explain[1].rule.contains("slot 5"), "{:?}", p5.explain[1]);
    assert_eq!(p1.digest, p5.digest);
    assert_ne!(p2.digest, p1.digest, "the override adds debug-tools");
}
