//! Artifact references and the shared *set digest*.
//!
//! An [`ArtifactRef`] names one content-addressed artifact (a boot image or a package) by
//! name, version, sha256 and size. [`set_digest`] condenses a set of them plus the boot
//! command line into 32 bytes; the master computes it for a plan (`Plan.d`) and the card for
//! its flash inventory (`Solicit.id`), with this one function, so that a warm-booted card
//! whose flash already matches is validated from a single frame.
//!
//! This module does not verify artifacts' bytes (the card hashes what it downloads) and does
//! not know which artifacts a card should run (the master's resolver does).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A sha256 digest: the one shared type, re-exported where the messages use it.
pub use crate::id::Digest;

/// What an artifact is for. CBOR: text `"b"` or `"p"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ArtifactKind {
    /// A kernel (+ initramfs) image the card kexecs into.
    #[serde(rename = "b")]
    BootImage,
    /// A package that becomes part of the root the card switches into.
    #[serde(rename = "p")]
    Package,
}

impl ArtifactKind {
    /// Byte used for this kind in [`set_digest`]'s canonical encoding. Frozen.
    pub const fn code(self) -> u8 {
        match self {
            ArtifactKind::BootImage => 1,
            ArtifactKind::Package => 2,
        }
    }
}

/// One content-addressed artifact. CBOR map keys: `k` kind, `n` name, `v` version,
/// `h` sha256 (32-byte string), `z` size in bytes.
///
/// The derived order (kind, name, version, sha256, size) is the canonical order used by
/// [`set_digest`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRef {
    /// Boot image or package.
    #[serde(rename = "k")]
    pub kind: ArtifactKind,
    /// Artifact name, e.g. `linecard-kernel` or `routing-daemon`.
    #[serde(rename = "n")]
    pub name: String,
    /// Version string as recorded in the master's package database.
    #[serde(rename = "v")]
    pub version: String,
    /// sha256 of the artifact's bytes.
    #[serde(rename = "h")]
    pub sha256: Digest,
    /// Size of the artifact in bytes.
    #[serde(rename = "z")]
    pub size: u64,
}

/// Domain separator of the set digest. Changing it changes every digest: frozen.
pub const SET_DIGEST_DOMAIN: &[u8] = b"shelfboot/set-digest/v1\0";

/// The set digest: sha256 over a canonical encoding of `artifacts` (in any order; they are
/// sorted here) and the boot command line.
///
/// Canonical encoding (all integers big-endian, every length a u64 so nothing truncates):
///
/// ```text
/// "shelfboot/set-digest/v1\0"
/// count:u64
/// for each artifact, sorted by (kind, name, version, sha256, size):
///     kind:u8 (1 boot image, 2 package)
///     len(name):u64 name   len(version):u64 version
///     sha256:[32]  size:u64
/// len(cmdline):u64 cmdline
/// ```
///
/// The command line is part of the set because a card whose flash holds the right
/// artifacts but an old command line must not be told "Continue". The persist flag is not:
/// it says where a set goes (flash or RAM), not what the set is. Duplicates are kept, so
/// the digest of a list with a repeated entry differs from the list without it.
pub fn set_digest(artifacts: &[ArtifactRef], cmdline: &str) -> Digest {
    let mut sorted: Vec<&ArtifactRef> = artifacts.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    h.update(SET_DIGEST_DOMAIN);
    h.update(len_u64(sorted.len()).to_be_bytes());
    for a in sorted {
        h.update([a.kind.code()]);
        h.update(len_u64(a.name.len()).to_be_bytes());
        h.update(a.name.as_bytes());
        h.update(len_u64(a.version.len()).to_be_bytes());
        h.update(a.version.as_bytes());
        h.update(a.sha256.as_bytes());
        h.update(a.size.to_be_bytes());
    }
    h.update(len_u64(cmdline.len()).to_be_bytes());
    h.update(cmdline.as_bytes());
    Digest(h.finalize().into())
}

/// `usize` to `u64`; lossless on every platform Rust supports (usize is at most 64 bits).
fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::artifact;

    fn sample() -> Vec<ArtifactRef> {
        vec![
            ArtifactRef {
                version: "6.1.0".into(),
                size: 8_000_000,
                ..artifact(ArtifactKind::BootImage, "kernel", 0x11)
            },
            ArtifactRef {
                version: "2.3.1".into(),
                size: 1_200_000,
                ..artifact(ArtifactKind::Package, "routing", 0x22)
            },
            ArtifactRef {
                version: "1.0".into(),
                size: 20_000_000,
                ..artifact(ArtifactKind::Package, "base", 0x33)
            },
        ]
    }

    #[test]
    fn set_digest_ignores_order() {
        let a = sample();
        let mut b = sample();
        b.reverse();
        assert_eq!(
            set_digest(&a, "console=ttyS0"),
            set_digest(&b, "console=ttyS0")
        );
    }

    #[test]
    fn set_digest_sees_every_field() {
        let base = set_digest(&sample(), "c");
        assert_ne!(base, set_digest(&sample(), "d"), "cmdline");
        let edits: [fn(&mut ArtifactRef); 5] = [
            |a| a.kind = ArtifactKind::Package,
            |a| a.name.push('x'),
            |a| a.version.push('x'),
            |a| a.sha256.0[31] ^= 1,
            |a| a.size += 1,
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut s = sample();
            edit(&mut s[0]);
            assert_ne!(base, set_digest(&s, "c"), "edit {i} not seen");
        }
        let mut dup = sample();
        dup.push(dup[1].clone());
        assert_ne!(base, set_digest(&dup, "c"), "duplicate not seen");
    }

    #[test]
    fn set_digest_is_length_prefixed() {
        // Moving bytes between name and version must change the digest.
        let a = [ArtifactRef {
            version: "c".into(),
            size: 1,
            ..artifact(ArtifactKind::Package, "ab", 0)
        }];
        let b = [ArtifactRef {
            version: "bc".into(),
            size: 1,
            ..artifact(ArtifactKind::Package, "a", 0)
        }];
        assert_ne!(set_digest(&a, ""), set_digest(&b, ""));
    }

    // The digest's exact bytes are pinned in tests/golden_v1.rs (and were checked against an
    // independent Python implementation of the encoding documented above).
}
