//! The signed manifest of a composite image: the release, every blob with its sha256 and
//! size, the artifacts (boot images and packages) and the policy (classes, overrides,
//! defaults). Serialized as JSON; the signature covers the exact bytes.
//!
//! [`Manifest::validate`] checks everything that can be checked without the blobs or the
//! databases (names, versions, requirements, references, duplicates). Dependency
//! satisfiability is checked by the importer with the real solver.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use shelfboot_proto::id::{Arch, Digest};

use crate::policy::{self, ClassSpec, Defaults, OverrideSpec, PolicyError};

/// Manifest format version (inside the JSON; the container has its own).
pub const MANIFEST_FORMAT: u32 = 1;

/// A blob by digest and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    pub sha256: Digest,
    pub size: u64,
}

/// Release identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseId {
    pub name: String,
    pub version: semver::Version,
}

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// A boot image for one card type and arch: one blob holding kernel + initramfs (the
/// `SHBOOTIM` container mkinitramfs builds; opaque here) and the command line the plan
/// carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootImage {
    pub name: String,
    pub version: semver::Version,
    pub card_type: String,
    pub arch: Arch,
    pub image: BlobRef,
    #[serde(default)]
    pub cmdline: String,
}

/// A package: one payload image (e.g. squashfs) for one arch, with features and deps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    pub version: semver::Version,
    pub arch: Arch,
    #[serde(default)]
    pub provides: Vec<String>,
    /// Package name → semver requirement.
    #[serde(default)]
    pub depends: BTreeMap<String, String>,
    pub payload: BlobRef,
}

/// The signed manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub release: ReleaseId,
    /// Every blob in the image, in the order the bytes follow the manifest.
    pub blobs: Vec<BlobRef>,
    pub boot: Vec<BootImage>,
    pub packages: Vec<Package>,
    pub classes: Vec<ClassSpec>,
    #[serde(default)]
    pub overrides: Vec<OverrideSpec>,
    #[serde(default)]
    pub defaults: Defaults,
}

/// Problems with a manifest's content.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest format {0} is not supported (this master reads format {MANIFEST_FORMAT})")]
    Format(u32),
    #[error("in {what}")]
    Policy {
        what: String,
        #[source]
        source: PolicyError,
    },
    #[error(
        "missing blob: {what} references sha256 {sha256} ({size} bytes), which the image does not contain"
    )]
    MissingBlob {
        what: String,
        sha256: Digest,
        size: u64,
    },
    #[error("blob {0} is listed twice in the manifest")]
    DuplicateBlob(Digest),
    #[error("blob {0} is listed in the manifest but no artifact uses it")]
    UnusedBlob(Digest),
    #[error("{0} is defined twice in this release")]
    Duplicate(String),
    #[error("{what} refers to {kind} '{name}', which this release does not define")]
    UnknownReference {
        what: String,
        kind: &'static str,
        name: String,
    },
}

impl Manifest {
    /// Checks names, requirements, references and duplicates.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format(self.format));
        }
        let policy = |what: String| move |source| ManifestError::Policy { what, source };
        policy::check_name(&self.release.name).map_err(policy("release name".into()))?;
        let mut blobs = BTreeSet::new();
        for b in &self.blobs {
            if !blobs.insert(*b) {
                return Err(ManifestError::DuplicateBlob(b.sha256));
            }
        }
        let need = |what: String, r: &BlobRef| {
            if blobs.contains(r) {
                Ok(())
            } else {
                Err(ManifestError::MissingBlob {
                    what,
                    sha256: r.sha256,
                    size: r.size,
                })
            }
        };
        let mut seen = BTreeSet::new();
        let mut boot_names = BTreeSet::new();
        for b in &self.boot {
            let what = format!(
                "boot image {} {} for {}/{}",
                b.name, b.version, b.card_type, b.arch
            );
            for n in [&b.name, &b.card_type] {
                policy::check_name(n).map_err(policy(what.clone()))?;
            }
            need(what.clone(), &b.image)?;
            if !seen.insert(("boot", b.name.clone(), b.card_type.clone(), b.arch)) {
                return Err(ManifestError::Duplicate(format!(
                    "boot image {} for {}/{}",
                    b.name, b.card_type, b.arch
                )));
            }
            boot_names.insert(b.name.as_str());
        }
        let mut pkg_names = BTreeSet::new();
        for p in &self.packages {
            let what = format!("package {} {} ({})", p.name, p.version, p.arch);
            policy::check_name(&p.name).map_err(policy(what.clone()))?;
            for f in &p.provides {
                policy::check_name(f).map_err(policy(what.clone()))?;
            }
            for (dep, req) in &p.depends {
                policy::check_name(dep).map_err(policy(what.clone()))?;
                policy::parse_req(dep, req).map_err(policy(what.clone()))?;
            }
            need(what.clone(), &p.payload)?;
            if !seen.insert(("package", p.name.clone(), p.version.to_string(), p.arch)) {
                return Err(ManifestError::Duplicate(what));
            }
            pkg_names.insert(p.name.as_str());
        }
        let mut class_names = BTreeSet::new();
        let check_reqs = |what: &str, reqs: &BTreeMap<String, String>| {
            for (name, req) in reqs {
                policy::parse_req(name, req).map_err(policy(what.to_owned()))?;
                if !pkg_names.contains(name.as_str()) {
                    return Err(ManifestError::UnknownReference {
                        what: what.to_owned(),
                        kind: "package",
                        name: name.clone(),
                    });
                }
            }
            Ok(())
        };
        let check_boot = |what: &str, boot: &Option<String>| match boot {
            Some(b) if !boot_names.contains(b.as_str()) => Err(ManifestError::UnknownReference {
                what: what.to_owned(),
                kind: "boot image",
                name: b.clone(),
            }),
            _ => Ok(()),
        };
        for c in &self.classes {
            let what = format!("class {}", c.name);
            policy::check_name(&c.name).map_err(policy(what.clone()))?;
            if !class_names.insert(c.name.as_str()) {
                return Err(ManifestError::Duplicate(what));
            }
            check_reqs(&what, &c.packages)?;
            check_boot(&what, &c.boot)?;
        }
        let class_ref = |what: &str, class: &Option<String>| match class {
            Some(c) if !class_names.contains(c.as_str()) => Err(ManifestError::UnknownReference {
                what: what.to_owned(),
                kind: "class",
                name: c.clone(),
            }),
            _ => Ok(()),
        };
        let mut macs = BTreeSet::new();
        for o in &self.overrides {
            let what = format!("override for {}", o.mac);
            if !macs.insert(o.mac) {
                return Err(ManifestError::Duplicate(what));
            }
            class_ref(&what, &o.class)?;
            check_reqs(&what, &o.packages)?;
            check_boot(&what, &o.boot)?;
        }
        let used: BTreeSet<BlobRef> = self
            .boot
            .iter()
            .map(|b| b.image)
            .chain(self.packages.iter().map(|p| p.payload))
            .collect();
        if let Some(unused) = blobs.difference(&used).next() {
            return Err(ManifestError::UnusedBlob(unused.sha256));
        }
        class_ref("defaults", &self.defaults.class)?;
        check_reqs("defaults", &self.defaults.packages)?;
        check_boot("defaults", &self.defaults.boot)?;
        Ok(())
    }

    /// Total bytes of all blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ClassSpec;

    fn blob(n: u8) -> BlobRef {
        BlobRef {
            sha256: Digest([n; 32]),
            size: u64::from(n),
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            release: ReleaseId {
                name: "r".into(),
                version: semver::Version::new(1, 0, 0),
            },
            blobs: vec![blob(1), blob(2)],
            boot: vec![BootImage {
                name: "k".into(),
                version: semver::Version::new(1, 0, 0),
                card_type: "lc".into(),
                arch: Arch::X86_64,
                image: blob(1),
                cmdline: String::new(),
            }],
            packages: vec![Package {
                name: "base".into(),
                version: semver::Version::new(1, 0, 0),
                arch: Arch::X86_64,
                provides: vec![],
                depends: BTreeMap::new(),
                payload: blob(2),
            }],
            classes: vec![ClassSpec {
                name: "c".into(),
                rule: Default::default(),
                boot: Some("k".into()),
                packages: [("base".to_owned(), "^1".to_owned())].into(),
                features: vec![],
                ram: false,
            }],
            overrides: vec![],
            defaults: Defaults::default(),
        }
    }

    #[test]
    fn validation_names_the_problem() {
        manifest().validate().unwrap();
        let check = |f: &dyn Fn(&mut Manifest), want: &str| {
            let mut m = manifest();
            f(&mut m);
            let err = m.validate().unwrap_err();
            let text = shelfboot_proto::report::error_chain(&err);
            assert!(text.contains(want), "'{text}' should contain '{want}'");
        };
        check(&|m| m.blobs.push(blob(3)), "no artifact uses it");
        check(&|m| m.blobs.push(blob(1)), "listed twice");
        check(&|m| m.blobs.truncate(1), "missing blob: package base 1.0.0");
        check(&|m| m.packages.push(m.packages[0].clone()), "defined twice");
        check(
            &|m| m.classes[0].boot = Some("nope".into()),
            "boot image 'nope'",
        );
        check(
            &|m| {
                m.classes[0].packages.insert("ghost".into(), "*".into());
            },
            "package 'ghost'",
        );
        check(
            &|m| {
                m.packages[0].depends.insert("x".into(), "not a req".into());
            },
            "'not a req' for x is not a semver requirement",
        );
        check(&|m| m.defaults.class = Some("nope".into()), "class 'nope'");
        check(&|m| m.format = 2, "manifest format 2");
    }
}
