//! Flash layout: how the store names its UBI volumes.
//!
//! Every volume the store owns starts with `sb.`; anything else on the device (a UBIFS data
//! volume, say) is never touched and counts as used space.
//!
//! | volume                              | holds                                          |
//! |-------------------------------------|------------------------------------------------|
//! | `sb.inventory`                      | the committed inventory (two copies, CRC-32)   |
//! | `sb.seg.<generation>`               | a committed segment: the artifacts one commit wrote, each at its own LEB-aligned extent (dynamic volume) |
//! | `sb.new.seg.<16 hex>`               | the segment being written (not yet committed); the hex names the plan and its extents |
//! | `sb.new.inventory`                  | the inventory being written (not yet committed)|
//! | `sb.boot.<name>.<sha256[..16] hex>` | legacy: one committed boot image (written by earlier versions; still read) |
//! | `sb.pkg.<name>.<sha256[..16] hex>`  | legacy: one committed package (still read)      |
//! | `sb.new.boot.…`, `sb.new.pkg.…`     | legacy staging volume: garbage                  |
//!
//! An artifact is found at (volume, offset, size), all three from the inventory; a legacy
//! volume is the case offset 0. A set is whatever the inventory lists, so an artifact
//! shared by the current set, the previous set and a new plan is stored once and never
//! re-downloaded, and a rollback is one inventory swap. A segment or legacy volume that no
//! inventory lists is garbage and is removed; a `sb.new.*` volume is never part of a set.
//!
//! This module does not create or rename anything; it only computes and parses names.

use super::artifact::{ArtifactKind, ArtifactRef};
use super::volumes::UBI_MAX_VOLUME_NAME;

/// Prefix of every volume the store owns.
pub const PREFIX: &str = "sb.";
/// The committed inventory volume.
pub const INVENTORY: &str = "sb.inventory";
/// The inventory volume being written, renamed onto [`INVENTORY`] to commit.
pub const STAGING_INVENTORY: &str = "sb.new.inventory";
/// Prefix of volumes being written.
pub const STAGING_PREFIX: &str = "sb.new.";
/// Prefix of committed segments (`sb.seg.<generation>`).
pub const SEGMENT_PREFIX: &str = "sb.seg.";
/// Prefix of the segment being written (`sb.new.seg.<16 hex>`).
pub const STAGING_SEGMENT_PREFIX: &str = "sb.new.seg.";
/// Longest artifact name the layout accepts (keeps every name within UBI's 127 bytes).
pub const MAX_ARTIFACT_NAME: usize = 64;
/// Hex digits of the sha256 kept in a volume name (128 bits).
const DIGEST_HEX: usize = 32;

/// An artifact name that cannot become a volume name.
#[derive(Debug, thiserror::Error)]
#[error(
    "artifact name \"{name}\" cannot name a volume: it must be 1..={MAX_ARTIFACT_NAME} bytes of \
     [A-Za-z0-9._+-], not starting with '.'"
)]
pub struct BadArtifactName {
    /// The rejected name.
    pub name: String,
}

/// What a volume name means to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeClass {
    /// `sb.inventory`.
    Inventory,
    /// `sb.new.inventory`.
    StagingInventory,
    /// A committed-name artifact volume.
    Artifact,
    /// A legacy `sb.new.` artifact volume; carries the committed name it would get.
    Staging(String),
    /// A committed segment `sb.seg.<generation>`.
    Segment,
    /// The segment being written, `sb.new.seg.<16 hex>`.
    StagingSegment,
    /// Starts with `sb.` but matches no rule: left over by another version; garbage.
    Unknown,
    /// Not ours; never touched.
    Foreign,
}

fn kind_tag(kind: ArtifactKind) -> &'static str {
    match kind {
        ArtifactKind::BootImage => "boot",
        ArtifactKind::Package => "pkg",
    }
}

/// Check that an artifact name can be part of a volume name.
pub fn check_artifact_name(name: &str) -> Result<(), BadArtifactName> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ARTIFACT_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BadArtifactName {
            name: name.to_owned(),
        })
    }
}

/// The committed volume name of an artifact: `sb.<boot|pkg>.<name>.<32 hex>`.
pub fn artifact_volume(a: &ArtifactRef) -> Result<String, BadArtifactName> {
    check_artifact_name(&a.name)?;
    let hex = hex::encode(&a.sha256.as_bytes()[..DIGEST_HEX / 2]);
    Ok(format!("{PREFIX}{}.{}.{hex}", kind_tag(a.kind), a.name))
}

/// The committed name of the segment written by the commit of inventory `generation`.
pub fn segment(generation: u64) -> String {
    format!("{SEGMENT_PREFIX}{generation}")
}

/// The staging name of a segment, from the digest of what it will hold.
pub fn staging_segment(id: &[u8; 32]) -> String {
    format!("{STAGING_SEGMENT_PREFIX}{}", hex::encode(&id[..8]))
}

/// Whether `name` is a committed segment name.
pub fn is_segment(name: &str) -> bool {
    name.strip_prefix(SEGMENT_PREFIX).is_some_and(|g| {
        !g.is_empty()
            && g.len() <= 20
            && g.bytes().all(|b| b.is_ascii_digit())
            && !g.starts_with('0')
    })
}

fn is_staging_segment(name: &str) -> bool {
    name.strip_prefix(STAGING_SEGMENT_PREFIX).is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// The staging name of a committed volume name: `sb.X` becomes `sb.new.X`.
pub fn staging_of(committed: &str) -> String {
    let rest = committed.strip_prefix(PREFIX).unwrap_or(committed);
    format!("{STAGING_PREFIX}{rest}")
}

fn is_artifact_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let Some(rest) = rest
        .strip_prefix("boot.")
        .or_else(|| rest.strip_prefix("pkg."))
    else {
        return false;
    };
    let Some((art, hex)) = rest.rsplit_once('.') else {
        return false;
    };
    hex.len() == DIGEST_HEX
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && check_artifact_name(art).is_ok()
        && name.len() <= UBI_MAX_VOLUME_NAME
}

/// Classify a volume name.
pub fn classify(name: &str) -> VolumeClass {
    if name == INVENTORY {
        VolumeClass::Inventory
    } else if name == STAGING_INVENTORY {
        VolumeClass::StagingInventory
    } else if is_segment(name) {
        VolumeClass::Segment
    } else if is_staging_segment(name) {
        VolumeClass::StagingSegment
    } else if let Some(rest) = name.strip_prefix(STAGING_PREFIX) {
        let committed = format!("{PREFIX}{rest}");
        if is_artifact_name(&committed) {
            VolumeClass::Staging(committed)
        } else {
            VolumeClass::Unknown
        }
    } else if is_artifact_name(name) {
        VolumeClass::Artifact
    } else if name.starts_with(PREFIX) {
        VolumeClass::Unknown
    } else {
        VolumeClass::Foreign
    }
}

#[cfg(test)]
mod tests {
    use shelfboot_proto::samples::artifact;

    use super::*;

    #[test]
    fn names_round_trip_through_classify() {
        let v = artifact_volume(&artifact(ArtifactKind::Package, "routing-2.x", 0xab)).unwrap();
        assert_eq!(v, format!("sb.pkg.routing-2.x.{}", "ab".repeat(16)));
        assert_eq!(classify(&v), VolumeClass::Artifact);
        let s = staging_of(&v);
        assert!(s.starts_with("sb.new.pkg."));
        assert_eq!(classify(&s), VolumeClass::Staging(v));
        assert_eq!(classify(INVENTORY), VolumeClass::Inventory);
        assert_eq!(classify(STAGING_INVENTORY), VolumeClass::StagingInventory);
        assert_eq!(classify("data"), VolumeClass::Foreign);
        assert_eq!(classify("sb.old.boot"), VolumeClass::Unknown);
        assert_eq!(classify("sb.pkg.x.ABAB"), VolumeClass::Unknown);
        assert_eq!(classify(&segment(17)), VolumeClass::Segment);
        assert_eq!(classify("sb.seg.017"), VolumeClass::Unknown);
        assert_eq!(classify("sb.seg.x"), VolumeClass::Unknown);
        let st = staging_segment(&[0xab; 32]);
        assert_eq!(st, "sb.new.seg.abababababababab");
        assert_eq!(classify(&st), VolumeClass::StagingSegment);
    }

    #[test]
    fn longest_names_fit_ubi() {
        let long = "n".repeat(MAX_ARTIFACT_NAME);
        let v = artifact_volume(&artifact(ArtifactKind::BootImage, &long, 0xab)).unwrap();
        assert!(staging_of(&v).len() <= UBI_MAX_VOLUME_NAME);
        assert!(
            artifact_volume(&artifact(
                ArtifactKind::BootImage,
                &format!("{long}n"),
                0xab
            ))
            .is_err()
        );
        for bad in ["", ".hidden", "a/b", "a b", "ü"] {
            assert!(check_artifact_name(bad).is_err(), "{bad:?}");
        }
    }
}
