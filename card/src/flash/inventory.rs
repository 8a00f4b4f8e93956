//! The inventory: what a card's flash holds, as stored in the `sb.inventory` volume.
//!
//! An [`Inventory`] records the committed set (every artifact with name, version, kind,
//! sha256, size and where it is: volume and offset, the boot command line and the set digest), a
//! generation number, the boot-attempt counter, and the previous set for rollback.
//!
//! On flash it is CBOR framed with a header and a CRC-32, written **twice**, each copy
//! padded to whole LEBs so that one bad eraseblock cannot take both (the same idea as UBI's
//! own duplicated volume table):
//!
//! ```text
//! copy:   "SBIV" | format u16 BE | 0u16 | len u32 BE | CBOR payload (len bytes) | crc32 BE
//!         (crc32 covers everything before it)
//! volume: copy A, 0xFF padding to stride | copy B, 0xFF padding to stride
//!         stride = copy length rounded up to the LEB size (the volume is 2 × stride;
//!         decoding finds copy B at the first LEB boundary holding a valid copy)
//! ```
//!
//! Decoding checks magic, format, length, CRC, the CBOR, that every set's digest is the
//! [`set_digest`] of its artifacts and command line, and that every location is a segment
//! (`sb.seg.<n>`, any offset, no two different artifacts of a set at the same place) or the legacy
//! volume the layout gives that artifact (offset 0). Format 1 (one volume per artifact,
//! no offsets) is still read; format 2 adds the offset and is what this build writes.
//! This module does no I/O.

use serde::{Deserialize, Serialize};

use super::artifact::{ArtifactKind, ArtifactRef, Digest, set_digest};
use super::layout::{self, BadArtifactName, artifact_volume};

/// Current inventory format. Fields are only appended (optional, `serde(default)`).
/// 2 added artifact offsets inside segments; an older build refuses it by this number
/// rather than misreading a segment as a volume.
pub const FORMAT: u16 = 2;
/// Oldest format this build reads (1: one volume per artifact).
pub const OLDEST_FORMAT: u16 = 1;
const MAGIC: [u8; 4] = *b"SBIV";
const HEADER: usize = 12;
/// Largest payload accepted (bounds memory when reading a damaged volume).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// One artifact of a set and the volume that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredArtifact {
    /// The artifact.
    #[serde(rename = "a")]
    pub artifact: ArtifactRef,
    /// The committed volume holding its bytes (see [`super::layout`]).
    #[serde(rename = "v")]
    pub volume: String,
    /// Where its bytes start in `volume` (0 for a legacy one-artifact volume).
    #[serde(rename = "o", default, skip_serializing_if = "is_zero")]
    pub offset: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A complete software set: artifacts, command line and their digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRecord {
    /// The artifacts, in the order the plan gave them.
    #[serde(rename = "a")]
    pub artifacts: Vec<StoredArtifact>,
    /// Kernel command line for the boot image.
    #[serde(rename = "c")]
    pub cmdline: String,
    /// `set_digest(artifacts, cmdline)`.
    #[serde(rename = "d")]
    pub digest: Digest,
}

impl SetRecord {
    /// Build the record of a set, naming each artifact's volume and computing the digest.
    pub fn new(artifacts: &[ArtifactRef], cmdline: &str) -> Result<Self, InventoryError> {
        let mut out = Vec::with_capacity(artifacts.len());
        for a in artifacts {
            let volume = artifact_volume(a)?;
            if out.iter().any(|s: &StoredArtifact| s.volume == volume) {
                return Err(InventoryError::Duplicate { volume });
            }
            out.push(StoredArtifact {
                artifact: a.clone(),
                volume,
                offset: 0,
            });
        }
        Ok(Self {
            artifacts: out,
            cmdline: cmdline.to_owned(),
            digest: set_digest(artifacts, cmdline),
        })
    }

    /// The artifacts as plain references.
    pub fn refs(&self) -> Vec<ArtifactRef> {
        self.artifacts.iter().map(|s| s.artifact.clone()).collect()
    }

    /// The boot image, if the set has one.
    pub fn boot_image(&self) -> Option<&StoredArtifact> {
        self.artifacts
            .iter()
            .find(|s| s.artifact.kind == ArtifactKind::BootImage)
    }

    /// The packages, in plan order (the order init stacks them).
    pub fn packages(&self) -> impl Iterator<Item = &StoredArtifact> {
        self.artifacts
            .iter()
            .filter(|s| s.artifact.kind == ArtifactKind::Package)
    }

    /// Whether `volume` belongs to this set.
    pub fn uses(&self, volume: &str) -> bool {
        self.artifacts.iter().any(|s| s.volume == volume)
    }

    fn validate(&self) -> Result<(), InventoryError> {
        let fresh = Self::new(&self.refs(), &self.cmdline)?;
        if fresh.digest != self.digest {
            return Err(InventoryError::DigestMismatch);
        }
        for (i, (a, b)) in fresh.artifacts.iter().zip(&self.artifacts).enumerate() {
            let legacy = a.volume == b.volume && b.offset == 0;
            if !legacy && !layout::is_segment(&b.volume) {
                return Err(InventoryError::WrongVolume {
                    volume: b.volume.clone(),
                });
            }
            // Two artifacts at one place must be the same bytes (two names of one
            // content may share an extent).
            if self.artifacts[..i].iter().any(|o| {
                o.volume == b.volume
                    && o.offset == b.offset
                    && (o.artifact.sha256, o.artifact.size) != (b.artifact.sha256, b.artifact.size)
            }) {
                return Err(InventoryError::Duplicate {
                    volume: format!("{} at offset {}", b.volume, b.offset),
                });
            }
        }
        Ok(())
    }
}

/// The committed state of a card's flash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Incremented by every write of the inventory (commit, boot count, rollback).
    #[serde(rename = "g")]
    pub generation: u64,
    /// The set the card boots.
    #[serde(rename = "s")]
    pub set: SetRecord,
    /// Boots of `set` started since it last reached Ready (or was committed).
    #[serde(rename = "n")]
    pub attempts: u32,
    /// The set committed before `set`, still on flash, for rollback.
    #[serde(rename = "p", default)]
    pub previous: Option<SetRecord>,
    /// Digest of a set this card rolled back from, for reporting to the master.
    #[serde(rename = "r", default)]
    pub rolled_back_from: Option<Digest>,
    /// (epoch, serial) of the last master command the card's resident agent executed:
    /// a replay of it (or of an older one) is refused after the reset it caused too.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub last_command: Option<(u64, u64)>,
}

/// Why an inventory could not be built, encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// An artifact name cannot be part of a volume name.
    #[error("the set cannot be stored")]
    Name(#[from] BadArtifactName),
    /// Two artifacts of one set would share a volume.
    #[error("the set lists the artifact of volume \"{volume}\" twice")]
    Duplicate {
        /// The duplicated volume name.
        volume: String,
    },
    /// Encoding the CBOR payload failed.
    #[error("cannot encode the inventory as CBOR")]
    Encode(#[source] ciborium::ser::Error<std::io::Error>),
    /// The payload would exceed [`MAX_PAYLOAD`].
    #[error("the inventory is {len} bytes, more than the {MAX_PAYLOAD} allowed")]
    TooLarge {
        /// Encoded length.
        len: usize,
    },
    /// Neither copy is intact.
    #[error("both inventory copies are damaged (copy A: {a}; copy B: {b}); reprovision the card")]
    Corrupt {
        /// What was wrong with copy A.
        a: String,
        /// What was wrong with copy B.
        b: String,
    },
    /// A set's digest does not match its contents.
    #[error("a set's recorded digest does not match its artifacts and command line")]
    DigestMismatch,
    /// A volume name differs from the one the layout gives its artifact.
    #[error("volume \"{volume}\" is not the volume the layout assigns to its artifact")]
    WrongVolume {
        /// The unexpected name.
        volume: String,
    },
}

impl Inventory {
    /// Validate the sets' digests and volume names.
    pub fn validate(&self) -> Result<(), InventoryError> {
        self.set.validate()?;
        if let Some(p) = &self.previous {
            p.validate()?;
        }
        Ok(())
    }

    /// Volumes referenced by the current or the previous set.
    pub fn referenced(&self) -> impl Iterator<Item = &str> {
        self.set
            .artifacts
            .iter()
            .chain(self.previous.iter().flat_map(|p| p.artifacts.iter()))
            .map(|s| s.volume.as_str())
    }
}

fn encode_copy(inv: &Inventory) -> Result<Vec<u8>, InventoryError> {
    let mut payload = Vec::new();
    ciborium::into_writer(inv, &mut payload).map_err(InventoryError::Encode)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l as usize <= MAX_PAYLOAD)
        .ok_or(InventoryError::TooLarge { len: payload.len() })?;
    let mut out = Vec::with_capacity(HEADER + payload.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Encode `inv` as the full content of an inventory volume on a device with `leb_size`.
pub fn encode(inv: &Inventory, leb_size: u64) -> Result<Vec<u8>, InventoryError> {
    let copy = encode_copy(inv)?;
    let leb = usize::try_from(leb_size.max(1)).unwrap_or(usize::MAX);
    let stride = copy.len().div_ceil(leb).saturating_mul(leb);
    let mut out = vec![0xFF; stride.saturating_mul(2)];
    out[..copy.len()].copy_from_slice(&copy);
    out[stride..stride + copy.len()].copy_from_slice(&copy);
    Ok(out)
}

fn decode_copy(b: &[u8]) -> Result<Inventory, String> {
    if b.len() < HEADER + 4 {
        return Err(format!("{} bytes, shorter than a header", b.len()));
    }
    if b[..4] != MAGIC {
        return Err("bad magic".into());
    }
    let format = u16::from_be_bytes([b[4], b[5]]);
    if !(OLDEST_FORMAT..=FORMAT).contains(&format) {
        return Err(format!(
            "format {format}, this build reads {OLDEST_FORMAT} to {FORMAT}"
        ));
    }
    let len = u32::from_be_bytes([b[8], b[9], b[10], b[11]]) as usize;
    if len > MAX_PAYLOAD || HEADER + len + 4 > b.len() {
        return Err(format!("payload length {len} does not fit the copy"));
    }
    let end = HEADER + len;
    let crc = u32::from_be_bytes([b[end], b[end + 1], b[end + 2], b[end + 3]]);
    let actual = crc32fast::hash(&b[..end]);
    if crc != actual {
        return Err(format!("CRC-32 {actual:08x}, recorded {crc:08x}"));
    }
    let inv: Inventory =
        ciborium::from_reader(&b[HEADER..end]).map_err(|e| format!("CBOR: {e}"))?;
    inv.validate().map_err(|e| e.to_string())?;
    Ok(inv)
}

/// What [`decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The inventory (from copy A if intact, else copy B).
    pub inventory: Inventory,
    /// Description of the damaged copy, if one was.
    pub damaged: Option<String>,
}

/// Decode the content of an inventory volume on a device with `leb_size`: copy A at
/// offset 0, else copy B at the first LEB boundary where one decodes (the volume may read
/// longer than written: UBI pads dynamic volumes with 0xFF to their reserved size).
pub fn decode(volume: &[u8], leb_size: u64) -> Result<Decoded, InventoryError> {
    let a = match decode_copy(volume) {
        Ok(inventory) => {
            return Ok(Decoded {
                inventory,
                damaged: None,
            });
        }
        Err(a) => a,
    };
    let leb = usize::try_from(leb_size.max(1)).unwrap_or(usize::MAX);
    let mut b = String::from("no copy found");
    for off in (leb..volume.len()).step_by(leb) {
        if volume[off..].starts_with(&MAGIC) {
            match decode_copy(&volume[off..]) {
                Ok(inventory) => {
                    return Ok(Decoded {
                        inventory,
                        damaged: Some(format!("copy A: {a}")),
                    });
                }
                Err(e) => b = e,
            }
        }
    }
    Err(InventoryError::Corrupt { a, b })
}

#[cfg(test)]
mod tests {
    use shelfboot_proto::samples::artifact;

    use super::*;

    pub(crate) fn sample() -> Inventory {
        let set = SetRecord::new(
            &[
                artifact(ArtifactKind::BootImage, "kernel", 1),
                artifact(ArtifactKind::Package, "base", 2),
            ],
            "console=ttyS0",
        )
        .unwrap();
        let previous =
            SetRecord::new(&[artifact(ArtifactKind::BootImage, "kernel", 3)], "").unwrap();
        Inventory {
            generation: 7,
            set,
            attempts: 2,
            previous: Some(previous),
            rolled_back_from: Some(Digest([9; 32])),
            last_command: None,
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let inv = sample();
        let bytes = encode(&inv, 4096).unwrap();
        assert_eq!(bytes.len(), 2 * 4096);
        assert_eq!(&bytes[..4], b"SBIV");
        assert_eq!(&bytes[4096..4100], b"SBIV");
        let d = decode(&bytes, 4096).unwrap();
        assert_eq!(d.inventory, inv);
        assert_eq!(d.damaged, None);
    }

    #[test]
    fn falls_back_to_second_copy_then_fails() {
        let mut bytes = encode(&sample(), 4096).unwrap();
        bytes[20] ^= 0x40;
        let d = decode(&bytes, 4096).unwrap();
        assert_eq!(d.inventory, sample());
        assert!(d.damaged.unwrap().contains("CRC"));
        bytes[4096 + 20] ^= 0x40;
        let e = decode(&bytes, 4096).unwrap_err();
        assert!(matches!(e, InventoryError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn every_single_byte_flip_in_a_copy_is_detected() {
        let bytes = encode(&sample(), 64).unwrap();
        let stride = bytes.len() / 2;
        let copy_len = encode_copy(&sample()).unwrap().len();
        for i in 0..copy_len {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            b[stride + i] ^= 0x01;
            assert!(decode(&b, 64).is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn rejects_forged_digest_and_wrong_volume() {
        let mut inv = sample();
        inv.set.digest.0[0] ^= 1;
        let e = decode(&encode(&inv, 64).unwrap(), 64).unwrap_err();
        assert!(e.to_string().contains("digest"), "{e}");
        let mut inv = sample();
        inv.set.artifacts[0].volume = "sb.inventory".into();
        let e = decode(&encode(&inv, 64).unwrap(), 64).unwrap_err();
        assert!(e.to_string().contains("not the volume"), "{e}");
    }

    #[test]
    fn two_artifacts_share_a_place_only_if_they_are_the_same_bytes() {
        let mut set = SetRecord::new(
            &[
                artifact(ArtifactKind::Package, "a", 2),
                artifact(ArtifactKind::Package, "b", 2),
                artifact(ArtifactKind::Package, "c", 3),
            ],
            "",
        )
        .unwrap();
        for s in &mut set.artifacts {
            s.volume = layout::segment(5);
        }
        let inv = |set: &SetRecord| Inventory {
            generation: 1,
            set: set.clone(),
            attempts: 0,
            previous: None,
            rolled_back_from: None,
            last_command: None,
        };
        set.artifacts[2].offset = 4096;
        // a and b: same bytes at offset 0.
        assert!(decode(&encode(&inv(&set), 64).unwrap(), 64).is_ok());
        set.artifacts[2].offset = 0;
        let e = decode(&encode(&inv(&set), 64).unwrap(), 64).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }

    #[test]
    fn duplicate_artifacts_are_rejected() {
        let a = artifact(ArtifactKind::Package, "base", 2);
        assert!(matches!(
            SetRecord::new(&[a.clone(), a], ""),
            Err(InventoryError::Duplicate { .. })
        ));
    }
}
