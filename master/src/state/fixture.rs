//! Test fixture: a small composite release with 3 card types, 2 archs, a 3-deep
//! dependency chain (routing → libnet → base), a feature-selected package (bgpd provides
//! `bgp`) and a per-node override (debug-tools on one card). Written as a real
//! `system.toml` plus files and packed with the real `pack` code.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use super::Master;
use crate::image::pack;
use crate::store::NodeIdentity;

/// MACs of the fixture's cards.
pub const N1: &str = "02:00:00:00:00:01"; // lc100 x86_64 slot 1
pub const N2: &str = "02:00:00:00:00:02"; // lc100 x86_64 slot 2, per-node override
pub const N3: &str = "02:00:00:00:00:03"; // lc200 aarch64 slot 3, wants feature bgp
pub const N4: &str = "02:00:00:00:00:10"; // fab10 aarch64 slot 10

/// (name, version, arch, depends, provides)
type PkgDef = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

const ARCHS: [&str; 2] = ["x86_64", "aarch64"];

fn packages() -> Vec<PkgDef> {
    let mut out: Vec<PkgDef> = Vec::new();
    for arch in ARCHS {
        out.push(("base", "1.0.0", arch, &[], &[]));
        out.push(("base", "1.1.0", arch, &[], &[]));
        out.push(("libnet", "1.4.0", arch, &[("base", "^1.0")], &[]));
        out.push(("libnet", "2.0.0", arch, &[("base", "^1.1")], &[]));
        out.push(("routing", "2.5.0", arch, &[("libnet", "^1")], &[]));
        out.push(("routing", "3.0.0", arch, &[("libnet", "^2")], &[]));
        out.push(("bgpd", "1.0.0", arch, &[("routing", "^3")], &["bgp"]));
        out.push(("fabric-mgr", "1.0.0", arch, &[("base", "^1")], &[]));
    }
    out.push(("debug-tools", "0.9.0", "x86_64", &[], &["debug"]));
    out
}

/// Writes `system.toml` and its files for release `version` into `dir`. `extra_toml` is
/// appended (extra classes, packages). Returns the spec path.
pub fn write_spec(dir: &Path, version: &str, extra_toml: &str) -> PathBuf {
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let mut toml = format!("[release]\nname = \"shelf-os\"\nversion = \"{version}\"\n\n");
    let boots = [
        ("lc-kernel", "lc100", "x86_64"),
        ("lc-kernel", "lc200", "aarch64"),
        ("fab-kernel", "fab10", "x86_64"),
        ("fab-kernel", "fab10", "aarch64"),
    ];
    for (name, ct, arch) in boots {
        let file = format!("{name}-{ct}-{arch}.img");
        std::fs::write(files.join(&file), format!("SHBOOTIM {name} {ct} {arch}")).unwrap();
        toml.push_str(&format!(
            "[[boot]]\nname = \"{name}\"\nversion = \"6.1.0\"\ncard_type = \"{ct}\"\n\
             arch = \"{arch}\"\nimage = \"files/{file}\"\ncmdline = \"console=ttyS0 quiet\"\n\n"
        ));
    }
    for (name, ver, arch, deps, provides) in packages() {
        let file = format!("{name}-{ver}-{arch}.sqfs");
        std::fs::write(files.join(&file), format!("payload {name} {ver} {arch}")).unwrap();
        let deps: Vec<String> = deps.iter().map(|(d, r)| format!("{d} = \"{r}\"")).collect();
        let provides: Vec<String> = provides.iter().map(|p| format!("\"{p}\"")).collect();
        toml.push_str(&format!(
            "[[package]]\nname = \"{name}\"\nversion = \"{ver}\"\narch = \"{arch}\"\n\
             file = \"files/{file}\"\nprovides = [{}]\ndepends = {{ {} }}\n\n",
            provides.join(", "),
            deps.join(", ")
        ));
    }
    toml.push_str(
        r#"[[class]]
name = "linecards"
match = { card_types = ["lc100", "lc200"], slots = ["1-8"] }
boot = "lc-kernel"
packages = { routing = "^3" }

[[class]]
name = "fabric"
match = { card_types = ["fab10"] }
boot = "fab-kernel"
packages = { fabric-mgr = "^1" }

[[override]]
mac = "02:00:00:00:00:02"
packages = { debug-tools = "*" }

[defaults]
packages = { base = "^1" }

"#,
    );
    toml.push_str(extra_toml);
    let path = dir.join(format!("system-{version}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

/// A fixed vendor key (tests are deterministic).
pub fn vendor_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// Another key, never trusted.
pub fn rogue_key() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32])
}

/// Packs the fixture release and returns the image bytes.
pub fn image(dir: &Path, version: &str, extra_toml: &str, key: &SigningKey) -> Vec<u8> {
    let spec = write_spec(dir, version, extra_toml);
    let packed = pack::prepare(&spec).unwrap();
    let out = dir.join(format!("release-{version}.img"));
    pack::write_image(&packed, key, &out).unwrap();
    std::fs::read(out).unwrap()
}

/// Writes the vendor key's public file, `dir/vendor.pub`.
pub fn vendor_pub(dir: &Path) -> PathBuf {
    let pubfile = dir.join("vendor.pub");
    std::fs::write(
        &pubfile,
        format!(
            "shelfboot-ed25519-public {}\n",
            hex::encode(vendor_key().verifying_key().as_bytes())
        ),
    )
    .unwrap();
    pubfile
}

/// A master in `dir/state` that trusts the vendor key.
pub fn master(dir: &Path) -> Master {
    let mut m = Master::open(&dir.join("state")).unwrap();
    m.trust_add(&vendor_pub(dir), "test vendor").unwrap();
    m
}

/// Registers the four fixture cards.
pub fn add_nodes(m: &mut Master) {
    let cards = [
        (N1, "lc100", "x86_64", 1, vec![]),
        (N2, "lc100", "x86_64", 2, vec![]),
        (N3, "lc200", "aarch64", 3, vec!["bgp".to_owned()]),
        (N4, "fab10", "aarch64", 10, vec![]),
    ];
    for (mac, ct, arch, slot, features) in cards {
        m.add_node(
            &NodeIdentity {
                mac: mac.parse().unwrap(),
                card_type: ct.into(),
                arch: arch.parse().unwrap(),
                shelf: 1,
                slot,
                hw_rev: "A".into(),
                features,
            },
            None,
        )
        .unwrap();
    }
}

/// Database dump plus blob directory listing: "the state" for before/after comparisons.
pub fn state_dump(m: &Master) -> String {
    use crate::store::Store;
    let mut s = m.store().dump().unwrap();
    s.push_str("## blob directory\n");
    let mut files = Vec::new();
    list_tree(m.blobs().root(), m.blobs().root(), &mut files);
    files.sort();
    for f in files {
        s.push_str(&f);
        s.push('\n');
    }
    s
}

fn list_tree(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if p.is_dir() {
            out.push(format!("{rel}/"));
            list_tree(root, &p, out);
        } else {
            let len = std::fs::metadata(&p).unwrap().len();
            out.push(format!("{rel} {len}"));
        }
    }
}
