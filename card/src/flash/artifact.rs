//! The artifact vocabulary the flash model stores: which type names an artifact, and the
//! one set-digest function.
//!
//! INTERIM: `shelfboot-proto` defines `ArtifactRef`, `ArtifactKind` and `set_digest` (in
//! `proto/src/msg/artifact.rs`), but that module has not landed in git yet. Until it does,
//! this file mirrors its types field for field and its digest byte for byte, so that the
//! switch is a one-line change to `pub use shelfboot_proto::msg::{...}`. Nothing else in
//! the card names these types except through this module.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A sha256 digest.
pub type Digest = [u8; 32];

/// What an artifact is for (mirror of `shelfboot_proto::msg::ArtifactKind`).
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
    /// Byte used for this kind in [`set_digest`]'s canonical encoding.
    pub const fn code(self) -> u8 {
        match self {
            ArtifactKind::BootImage => 1,
            ArtifactKind::Package => 2,
        }
    }
}

/// One content-addressed artifact (mirror of `shelfboot_proto::msg::ArtifactRef`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRef {
    /// Boot image or package.
    #[serde(rename = "k")]
    pub kind: ArtifactKind,
    /// Artifact name.
    #[serde(rename = "n")]
    pub name: String,
    /// Version string.
    #[serde(rename = "v")]
    pub version: String,
    /// sha256 of the artifact's bytes.
    #[serde(rename = "h", with = "serde_bytes")]
    pub sha256: Digest,
    /// Size in bytes.
    #[serde(rename = "z")]
    pub size: u64,
}

const SET_DIGEST_DOMAIN: &[u8] = b"shelfboot/set-digest/v1\0";

/// The set digest (mirror of `shelfboot_proto::msg::set_digest`; see there).
pub fn set_digest(artifacts: &[ArtifactRef], cmdline: &str) -> Digest {
    let mut sorted: Vec<&ArtifactRef> = artifacts.iter().collect();
    sorted.sort();
    let len = |n: usize| u64::try_from(n).unwrap_or(u64::MAX).to_be_bytes();
    let mut h = Sha256::new();
    h.update(SET_DIGEST_DOMAIN);
    h.update(len(sorted.len()));
    for a in sorted {
        h.update([a.kind.code()]);
        h.update(len(a.name.len()));
        h.update(a.name.as_bytes());
        h.update(len(a.version.len()));
        h.update(a.version.as_bytes());
        h.update(a.sha256);
        h.update(a.size.to_be_bytes());
    }
    h.update(len(cmdline.len()));
    h.update(cmdline.as_bytes());
    h.finalize().into()
}
