//! Slice and block arithmetic of one artifact at one block size, shared by sender and
//! receiver so that both cut the artifact the same way.
//!
//! An artifact of `size` bytes is cut into blocks of `block_size` bytes (the last one may
//! be shorter) and blocks into slices of [`BLOCKS_PER_SLICE`] (the last slice may have
//! fewer blocks). Offsets agree with [`shelfboot_proto::data::block_offset`], which the
//! data frame decoder checks. This module does not validate frames (proto does) and holds
//! no per-block state.

use shelfboot_proto::data::{BLOCK_ALIGN, BLOCKS_PER_SLICE, SliceBitmap};
use shelfboot_proto::msg::{ArtifactRef, Digest};
use thiserror::Error;

/// What the engine needs to know about an artifact: a name for messages, its sha256 and
/// its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactInfo {
    /// Human name (`linecard-kernel 6.1.0`), used in errors and logs only.
    pub name: String,
    /// sha256 of the whole artifact (from the signed plan).
    pub sha256: Digest,
    /// Size in bytes.
    pub size: u64,
}

impl From<&ArtifactRef> for ArtifactInfo {
    fn from(a: &ArtifactRef) -> Self {
        ArtifactInfo {
            name: format!("{} {}", a.name, a.version),
            sha256: a.sha256,
            size: a.size,
        }
    }
}

/// Invalid block size or artifact size.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GeometryError {
    /// Block size zero or not a multiple of 64.
    #[error(
        "block size {block_size} is not a non-zero multiple of {BLOCK_ALIGN}: derive it with data::block_size_for_mtu"
    )]
    BadBlockSize { block_size: u16 },
    /// More slices than a u32 slice index can name.
    #[error(
        "an artifact of {size} bytes has more than 2^32 slices at block size {block_size}: use a larger block size (MTU)"
    )]
    TooLarge { size: u64, block_size: u16 },
}

/// The slice layout of one artifact at one block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    size: u64,
    block_size: u16,
    slices: u32,
}

impl Geometry {
    /// Layout of `size` bytes in blocks of `block_size`.
    pub fn new(size: u64, block_size: u16) -> Result<Geometry, GeometryError> {
        if block_size == 0 || !block_size.is_multiple_of(BLOCK_ALIGN) {
            return Err(GeometryError::BadBlockSize { block_size });
        }
        let slices = shelfboot_proto::data::slice_count(size, block_size);
        let slices =
            u32::try_from(slices).map_err(|_| GeometryError::TooLarge { size, block_size })?;
        Ok(Geometry {
            size,
            block_size,
            slices,
        })
    }

    /// Artifact size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Block size.
    pub fn block_size(&self) -> u16 {
        self.block_size
    }

    /// Number of slices (0 for an empty artifact).
    pub fn slices(&self) -> u32 {
        self.slices
    }

    /// Bytes of a full slice.
    pub fn slice_bytes(&self) -> u64 {
        u64::from(self.block_size) * u64::from(BLOCKS_PER_SLICE)
    }

    /// First byte of slice `s` (may be past the end for `s >= slices`).
    pub fn slice_start(&self, s: u32) -> u64 {
        u64::from(s).saturating_mul(self.slice_bytes())
    }

    /// Bytes of slice `s` (0 past the end).
    pub fn slice_len(&self, s: u32) -> u64 {
        let start = self.slice_start(s);
        self.size.saturating_sub(start).min(self.slice_bytes())
    }

    /// Blocks of slice `s` (0 past the end).
    pub fn blocks_in_slice(&self, s: u32) -> u16 {
        let blocks = self.slice_len(s).div_ceil(u64::from(self.block_size));
        // At most BLOCKS_PER_SLICE by construction of slice_len.
        u16::try_from(blocks).unwrap_or(BLOCKS_PER_SLICE)
    }

    /// Byte offset of block `b` of slice `s`.
    pub fn block_offset(&self, s: u32, b: u16) -> u64 {
        self.slice_start(s)
            .saturating_add(u64::from(b) * u64::from(self.block_size))
    }

    /// Length of block `b` of slice `s`, `None` if the block is not part of the artifact.
    pub fn block_len(&self, s: u32, b: u16) -> Option<usize> {
        if s >= self.slices || b >= self.blocks_in_slice(s) {
            return None;
        }
        let rest = self.size - self.block_offset(s, b);
        let len = rest.min(u64::from(self.block_size));
        usize::try_from(len).ok()
    }

    /// Number of whole slices inside the first `bytes` bytes (a resume point in slices).
    /// The last, possibly short, slice counts once `bytes` reaches the end.
    pub fn slices_within(&self, bytes: u64) -> u32 {
        if bytes >= self.size {
            return self.slices;
        }
        u32::try_from(bytes / self.slice_bytes()).unwrap_or(self.slices)
    }

    /// The bitmap with every block of slice `s` missing.
    pub fn all_missing(&self, s: u32) -> SliceBitmap {
        SliceBitmap::all_missing(self.blocks_in_slice(s))
    }

    /// `bitmap` with the bits past the end of slice `s` cleared.
    pub fn clamp(&self, s: u32, bitmap: SliceBitmap) -> SliceBitmap {
        let all = self.all_missing(s);
        let mut out = SliceBitmap::default();
        for (o, (a, b)) in out.0.iter_mut().zip(all.0.iter().zip(bitmap.0.iter())) {
            *o = a & b;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn rejects_bad_block_sizes() {
        assert!(Geometry::new(10, 0).is_err());
        assert!(Geometry::new(10, 100).is_err());
        assert!(Geometry::new(u64::MAX, 64).is_err());
        assert!(Geometry::new(1 << 40, 8960).is_ok());
        assert!(Geometry::new(u64::MAX / 2, 8960).is_err());
    }

    #[test]
    fn empty_artifact_has_no_slices() {
        let g = Geometry::new(0, 1408).unwrap();
        assert_eq!(g.slices(), 0);
        assert_eq!(g.block_len(0, 0), None);
        assert_eq!(g.slices_within(0), 0);
    }

    proptest! {
        #[test]
        fn blocks_tile_the_artifact(size in 0u64..3_000_000, k in 1u16..=140) {
            let bs = k * BLOCK_ALIGN;
            let g = Geometry::new(size, bs).unwrap();
            let mut next = 0u64;
            for s in 0..g.slices() {
                prop_assert!(g.blocks_in_slice(s) >= 1);
                prop_assert_eq!(g.slice_start(s), next);
                for b in 0..g.blocks_in_slice(s) {
                    let off = g.block_offset(s, b);
                    prop_assert_eq!(Some(off), shelfboot_proto::data::block_offset(s, b, bs));
                    prop_assert_eq!(off, next);
                    let len = g.block_len(s, b).unwrap();
                    prop_assert!(len >= 1 && len <= usize::from(bs));
                    next += len as u64;
                }
                prop_assert_eq!(g.block_len(s, g.blocks_in_slice(s)), None);
                prop_assert_eq!(g.all_missing(s).count(), u32::from(g.blocks_in_slice(s)));
            }
            prop_assert_eq!(next, size);
            prop_assert_eq!(g.slice_len(g.slices()), 0);
            prop_assert_eq!(g.slices_within(size), g.slices());
        }

        #[test]
        fn resume_points_never_overstate(size in 1u64..3_000_000, bytes in 0u64..3_000_000, k in 1u16..=140) {
            let g = Geometry::new(size, k * BLOCK_ALIGN).unwrap();
            let s = g.slices_within(bytes);
            prop_assert!(s <= g.slices());
            // Every slice counted as held lies entirely within the held bytes.
            if s > 0 {
                let end = g.slice_start(s - 1) + g.slice_len(s - 1);
                prop_assert!(end <= bytes.max(size.min(bytes)) || bytes >= size);
            }
        }

        #[test]
        fn clamp_keeps_only_real_blocks(size in 1u64..400_000, bits in any::<[u8; 16]>(), k in 1u16..=20) {
            let g = Geometry::new(size, k * BLOCK_ALIGN).unwrap();
            let last = g.slices() - 1;
            let c = g.clamp(last, SliceBitmap(bits));
            for i in c.missing() {
                prop_assert!(i < g.blocks_in_slice(last));
                prop_assert!(SliceBitmap(bits).is_missing(i));
            }
        }
    }
}
