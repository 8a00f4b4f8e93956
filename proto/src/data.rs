//! Data frames: one block of artifact bytes behind a fixed 20-byte binary header (no CBOR
//! on the hot path), and the slice / NACK bitmap scheme.
//!
//! ```text
//!  payload of a Data frame (frame header: type 0x40, session = transfer id)
//!  0        4        6          8                 16       18         20
//!  +--------+--------+----------+-----------------+--------+----------+----------------+
//!  | slice  | block  |block_size|  byte offset    |data len| reserved |  data ...      |
//!  |  u32   |  u16   |   u16    |      u64        |  u16   |  u16 = 0 |  (data len)    |
//!  +--------+--------+----------+-----------------+--------+----------+----------------+
//! ```
//!
//! An artifact of `size` bytes is cut into blocks of `block_size` bytes (the last one may be
//! shorter), and blocks are grouped into slices of [`BLOCKS_PER_SLICE`]. Block `b` of slice
//! `s` starts at byte `(s * BLOCKS_PER_SLICE + b) * block_size`; the decoder checks that the
//! carried offset says exactly that. A receiver reports the missing blocks of a slice as a
//! [`SliceBitmap`] of [`NACK_BITMAP_LEN`] bytes in one small Nack frame.
//!
//! This module does not reassemble artifacts or track sessions; the card does that.

use thiserror::Error;

use crate::frame::{
    self, FRAME_OVERHEAD, Frame, FrameError, Header, Link, MessageType, array_at, payload_area,
};
use crate::{MAX_MTU, MIN_MTU};

/// Offset of the slice index (u32).
pub const SLICE_OFF: usize = 0;
/// Offset of the block index within the slice (u16).
pub const BLOCK_OFF: usize = 4;
/// Offset of the session's block size (u16).
pub const BLOCK_SIZE_OFF: usize = 6;
/// Offset of the byte offset of this block within the artifact (u64).
pub const OFFSET_OFF: usize = 8;
/// Offset of the length of the data that follows (u16).
pub const DATA_LEN_OFF: usize = 16;
/// Offset of the reserved field (u16, zero in version 1).
pub const RESERVED_OFF: usize = 18;
/// Length of the data header.
pub const DATA_HDR_LEN: usize = 20;

/// Blocks per slice. 128 keeps a slice's NACK bitmap at 16 bytes, and a slice at 176 KiB
/// (MTU 1500) or 1.1 MiB (MTU 9000): small enough that one lost frame costs one short
/// repair, large enough that NACK traffic stays under 0.1 % of the data.
pub const BLOCKS_PER_SLICE: u16 = 128;
/// Bytes of a slice's NACK bitmap.
pub const NACK_BITMAP_LEN: usize = BLOCKS_PER_SLICE as usize / 8;
/// Block sizes are multiples of this.
pub const BLOCK_ALIGN: u16 = 64;
/// Bytes a data frame adds around its block: frame overhead (32) + data header (20).
pub const DATA_OVERHEAD: usize = FRAME_OVERHEAD + DATA_HDR_LEN;

/// Errors of data frame encoding and decoding.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DataError {
    /// The frame around the block was rejected.
    #[error("data frame rejected")]
    Frame(#[from] FrameError),
    /// A control frame was handed to the data decoder.
    #[error("{msg_type} is not a data frame: decode it with msg::decode_message")]
    NotData { msg_type: MessageType },
    /// Payload shorter than the data header.
    #[error(
        "data payload of {len} bytes is shorter than the {DATA_HDR_LEN}-byte data header: dropped"
    )]
    TooShort { len: usize },
    /// `data len` disagrees with the payload.
    #[error("data header says {declared} data bytes but the frame carries {carried}: dropped")]
    LengthMismatch { declared: usize, carried: usize },
    /// A header field is out of range.
    #[error("data header field {field} = {value} is invalid ({rule}): dropped")]
    BadField {
        field: &'static str,
        value: u64,
        rule: &'static str,
    },
    /// The offset is not where slice and block say the block starts.
    #[error(
        "data offset {offset} disagrees with slice {slice} block {block} at block size {block_size} (expected {expected:?}): dropped"
    )]
    OffsetMismatch {
        offset: u64,
        slice: u32,
        block: u16,
        block_size: u16,
        expected: Option<u64>,
    },
    /// MTU outside the supported range.
    #[error(
        "link MTU {mtu} is outside the supported {MIN_MTU}..={MAX_MTU}: set the backplane MTU accordingly"
    )]
    UnsupportedMtu { mtu: u16 },
}

/// The fields of a data header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataHeader {
    /// Slice index.
    pub slice: u32,
    /// Block index within the slice (`< BLOCKS_PER_SLICE`).
    pub block: u16,
    /// Block size of the session (every block but the last is this long).
    pub block_size: u16,
    /// Byte offset of the block in the artifact.
    pub offset: u64,
}

impl DataHeader {
    /// The header of block `block` of slice `slice`; `None` if the offset overflows u64.
    pub fn new(slice: u32, block: u16, block_size: u16) -> Option<DataHeader> {
        Some(DataHeader {
            slice,
            block,
            block_size,
            offset: block_offset(slice, block, block_size)?,
        })
    }
}

/// Byte offset of block `block` of slice `slice`.
pub fn block_offset(slice: u32, block: u16, block_size: u16) -> Option<u64> {
    u64::from(slice)
        .checked_mul(u64::from(BLOCKS_PER_SLICE))?
        .checked_add(u64::from(block))?
        .checked_mul(u64::from(block_size))
}

/// Number of slices of an artifact of `size` bytes (0 for an empty artifact).
pub fn slice_count(size: u64, block_size: u16) -> u64 {
    let slice_bytes = u64::from(block_size) * u64::from(BLOCKS_PER_SLICE);
    if slice_bytes == 0 {
        return 0;
    }
    size.div_ceil(slice_bytes)
}

/// Block size for a link MTU: the largest multiple of [`BLOCK_ALIGN`] such that a data
/// frame's payload (our header + data header + block + CRC) fits the MTU.
/// 1500 → 1408, 9000 → 8960.
pub fn block_size_for_mtu(mtu: u16) -> Result<u16, DataError> {
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(DataError::UnsupportedMtu { mtu });
    }
    // Bytes of a data frame counted against the MTU besides the block (38).
    const MTU_OVERHEAD: u16 = 38;
    const _: () = assert!(MTU_OVERHEAD as usize == DATA_OVERHEAD - frame::ETH_HDR_LEN);
    let room = mtu - MTU_OVERHEAD;
    Ok(room - room % BLOCK_ALIGN)
}

/// A validated view of a data frame.
#[derive(Debug, Clone, Copy)]
pub struct DataView<'a> {
    transfer: u32,
    header: DataHeader,
    data: &'a [u8],
}

impl<'a> DataView<'a> {
    /// Validates the payload of a data frame.
    pub fn from_frame(frame: &Frame<'a>) -> Result<DataView<'a>, DataError> {
        let msg_type = frame.header().msg_type;
        if msg_type != MessageType::Data {
            return Err(DataError::NotData { msg_type });
        }
        DataView::from_payload(frame.header().session, frame.payload())
    }

    /// Validates `payload` (everything after our frame header) of transfer `transfer`.
    pub fn from_payload(transfer: u32, payload: &'a [u8]) -> Result<DataView<'a>, DataError> {
        let Some(data) = payload.get(DATA_HDR_LEN..) else {
            return Err(DataError::TooShort { len: payload.len() });
        };
        let slice = u32::from_be_bytes(array_at(payload, SLICE_OFF));
        let block = u16::from_be_bytes(array_at(payload, BLOCK_OFF));
        let block_size = u16::from_be_bytes(array_at(payload, BLOCK_SIZE_OFF));
        let offset = u64::from_be_bytes(array_at(payload, OFFSET_OFF));
        let data_len = usize::from(u16::from_be_bytes(array_at(payload, DATA_LEN_OFF)));
        let reserved = u16::from_be_bytes(array_at(payload, RESERVED_OFF));
        if reserved != 0 {
            return Err(DataError::BadField {
                field: "reserved",
                value: u64::from(reserved),
                rule: "must be zero in version 1",
            });
        }
        if block >= BLOCKS_PER_SLICE {
            return Err(DataError::BadField {
                field: "block",
                value: u64::from(block),
                rule: "must be below BLOCKS_PER_SLICE (128)",
            });
        }
        if block_size == 0 || !block_size.is_multiple_of(BLOCK_ALIGN) {
            return Err(DataError::BadField {
                field: "block_size",
                value: u64::from(block_size),
                rule: "must be a non-zero multiple of 64",
            });
        }
        if data_len != data.len() {
            return Err(DataError::LengthMismatch {
                declared: data_len,
                carried: data.len(),
            });
        }
        if data_len == 0 || data_len > usize::from(block_size) {
            return Err(DataError::BadField {
                field: "data_len",
                value: data_len as u64,
                rule: "must be 1..=block_size",
            });
        }
        let expected = block_offset(slice, block, block_size);
        if expected != Some(offset) || offset.checked_add(data_len as u64).is_none() {
            return Err(DataError::OffsetMismatch {
                offset,
                slice,
                block,
                block_size,
                expected,
            });
        }
        Ok(DataView {
            transfer,
            header: DataHeader {
                slice,
                block,
                block_size,
                offset,
            },
            data,
        })
    }

    /// Transfer id (the frame header's session field).
    pub fn transfer(&self) -> u32 {
        self.transfer
    }

    /// The data header.
    pub fn header(&self) -> DataHeader {
        self.header
    }

    /// The block's bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

/// Writes the data header and `data` into a frame payload area. Returns the payload length.
pub fn encode_data_payload(
    out: &mut [u8],
    hdr: &DataHeader,
    data: &[u8],
) -> Result<usize, DataError> {
    let len = DATA_HDR_LEN + data.len();
    let data_len = u16::try_from(data.len())
        .ok()
        .filter(|n| *n != 0 && *n <= hdr.block_size)
        .ok_or(DataError::BadField {
            field: "data_len",
            value: data.len() as u64,
            rule: "must be 1..=block_size",
        })?;
    if block_offset(hdr.slice, hdr.block, hdr.block_size) != Some(hdr.offset)
        || hdr.block >= BLOCKS_PER_SLICE
        || hdr.block_size == 0
        || !hdr.block_size.is_multiple_of(BLOCK_ALIGN)
    {
        return Err(DataError::OffsetMismatch {
            offset: hdr.offset,
            slice: hdr.slice,
            block: hdr.block,
            block_size: hdr.block_size,
            expected: block_offset(hdr.slice, hdr.block, hdr.block_size),
        });
    }
    let Some(out) = out.get_mut(..len) else {
        return Err(FrameError::BufferTooSmall {
            needed: len + FRAME_OVERHEAD,
            available: out.len() + FRAME_OVERHEAD,
        }
        .into());
    };
    out[SLICE_OFF..BLOCK_OFF].copy_from_slice(&hdr.slice.to_be_bytes());
    out[BLOCK_OFF..BLOCK_SIZE_OFF].copy_from_slice(&hdr.block.to_be_bytes());
    out[BLOCK_SIZE_OFF..OFFSET_OFF].copy_from_slice(&hdr.block_size.to_be_bytes());
    out[OFFSET_OFF..DATA_LEN_OFF].copy_from_slice(&hdr.offset.to_be_bytes());
    out[DATA_LEN_OFF..RESERVED_OFF].copy_from_slice(&data_len.to_be_bytes());
    out[RESERVED_OFF..DATA_HDR_LEN].fill(0);
    out[DATA_HDR_LEN..].copy_from_slice(data);
    Ok(len)
}

/// Encodes a complete data frame into `buf`; `header.msg_type` is forced to Data and
/// `header.session` is the transfer id. Returns the frame length.
pub fn encode_data_frame(
    buf: &mut [u8],
    link: &Link,
    header: &Header,
    hdr: &DataHeader,
    data: &[u8],
) -> Result<usize, DataError> {
    let payload_len = encode_data_payload(payload_area(buf), hdr, data)?;
    let header = Header {
        msg_type: MessageType::Data,
        ..*header
    };
    Ok(frame::finish_frame(buf, link, &header, payload_len)?)
}

/// Missing-block bitmap of one slice: bit `i` (byte `i / 8`, bit `i % 8`, LSB first) set
/// means block `i` is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SliceBitmap(pub [u8; NACK_BITMAP_LEN]);

impl SliceBitmap {
    /// Every block of a slice of `blocks` blocks missing (the rest of the bitmap clear).
    pub fn all_missing(blocks: u16) -> SliceBitmap {
        let mut b = SliceBitmap::default();
        for i in 0..blocks.min(BLOCKS_PER_SLICE) {
            b.set(i, true);
        }
        b
    }

    /// Whether block `i` is marked missing (false past the slice).
    pub fn is_missing(&self, i: u16) -> bool {
        self.0
            .get(usize::from(i / 8))
            .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
    }

    /// Marks block `i` missing or present (ignored past the slice).
    pub fn set(&mut self, i: u16, missing: bool) {
        if let Some(byte) = self.0.get_mut(usize::from(i / 8)) {
            if missing {
                *byte |= 1 << (i % 8);
            } else {
                *byte &= !(1 << (i % 8));
            }
        }
    }

    /// Missing block indices, ascending.
    pub fn missing(&self) -> impl Iterator<Item = u16> + '_ {
        (0..BLOCKS_PER_SLICE).filter(|i| self.is_missing(*i))
    }

    /// Number of missing blocks.
    pub fn count(&self) -> u32 {
        self.0.iter().map(|b| b.count_ones()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MacAddr;
    use crate::{DEFAULT_ETHERTYPE, MAX_FRAME_LEN};

    fn link() -> Link {
        Link {
            dst: MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]),
            src: MacAddr([2, 0, 0, 0, 0, 0xfe]),
            ethertype: DEFAULT_ETHERTYPE,
        }
    }

    #[test]
    fn block_sizes_fit_the_mtu() {
        assert_eq!(block_size_for_mtu(1500), Ok(1408));
        assert_eq!(block_size_for_mtu(9000), Ok(8960));
        for mtu in [MIN_MTU, 1500, 4000, 9000] {
            let bs = block_size_for_mtu(mtu).unwrap();
            let frame = DATA_OVERHEAD + usize::from(bs);
            assert!(frame - frame::ETH_HDR_LEN <= usize::from(mtu), "mtu {mtu}");
            assert_eq!(bs % BLOCK_ALIGN, 0);
        }
        assert!(block_size_for_mtu(1279).is_err());
        assert!(block_size_for_mtu(9001).is_err());
    }

    #[test]
    fn round_trip_full_block_at_9000() {
        let bs = block_size_for_mtu(9000).unwrap();
        let data: Vec<u8> = (0..bs).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let hdr = DataHeader::new(3, 127, bs).unwrap();
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let n = encode_data_frame(
            &mut buf,
            &link(),
            &Header::new(MessageType::Data, 77, 1),
            &hdr,
            &data,
        )
        .unwrap();
        assert_eq!(n, MAX_FRAME_LEN - (9000 - 8960 - 38));
        let frame = Frame::decode(&buf[..n], DEFAULT_ETHERTYPE).unwrap();
        let view = DataView::from_frame(&frame).unwrap();
        assert_eq!(view.transfer(), 77);
        assert_eq!(view.header(), hdr);
        assert_eq!(view.data(), &data[..]);
    }

    fn payload(
        slice: u32,
        block: u16,
        bs: u16,
        off: u64,
        len: u16,
        res: u16,
        data: usize,
    ) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&slice.to_be_bytes());
        p.extend_from_slice(&block.to_be_bytes());
        p.extend_from_slice(&bs.to_be_bytes());
        p.extend_from_slice(&off.to_be_bytes());
        p.extend_from_slice(&len.to_be_bytes());
        p.extend_from_slice(&res.to_be_bytes());
        p.extend(std::iter::repeat_n(0xab, data));
        p
    }

    #[test]
    fn rejections() {
        assert!(DataView::from_payload(1, &payload(0, 1, 64, 64, 10, 0, 10)).is_ok());
        let cases: [(Vec<u8>, &str); 8] = [
            (payload(0, 1, 64, 64, 10, 0, 10)[..19].to_vec(), "short"),
            (payload(0, 1, 64, 64, 10, 1, 10), "reserved"),
            (payload(0, 128, 64, 128 * 64, 10, 0, 10), "block index"),
            (payload(0, 1, 0, 0, 10, 0, 10), "zero block size"),
            (payload(0, 1, 100, 100, 10, 0, 10), "unaligned block size"),
            (payload(0, 1, 64, 64, 11, 0, 10), "length mismatch"),
            (payload(0, 1, 64, 64, 0, 0, 0), "empty block"),
            (payload(0, 1, 64, 65, 10, 0, 10), "offset"),
        ];
        for (p, what) in cases {
            assert!(DataView::from_payload(1, &p).is_err(), "{what} accepted");
        }
        assert!(DataView::from_payload(1, &payload(0, 1, 64, 64, 65, 0, 65)).is_err());
        // The largest slice index with a wrong offset is rejected, not wrapped.
        let big = payload(u32::MAX, 127, 0xffc0, 0, 10, 0, 10);
        assert!(matches!(
            DataView::from_payload(1, &big),
            Err(DataError::OffsetMismatch { .. })
        ));
    }

    #[test]
    fn bitmap_bits_are_lsb_first() {
        let mut b = SliceBitmap::default();
        b.set(0, true);
        b.set(9, true);
        b.set(127, true);
        b.set(128, true); // ignored
        assert_eq!(b.0[0], 0x01);
        assert_eq!(b.0[1], 0x02);
        assert_eq!(b.0[15], 0x80);
        assert_eq!(b.missing().collect::<Vec<_>>(), vec![0, 9, 127]);
        assert_eq!(b.count(), 3);
        b.set(9, false);
        assert!(!b.is_missing(9));
        assert_eq!(SliceBitmap::all_missing(10).count(), 10);
        assert_eq!(SliceBitmap::all_missing(500).count(), 128);
    }

    #[test]
    fn slice_arithmetic() {
        assert_eq!(slice_count(0, 1408), 0);
        assert_eq!(slice_count(1, 1408), 1);
        assert_eq!(slice_count(1408 * 128, 1408), 1);
        assert_eq!(slice_count(1408 * 128 + 1, 1408), 2);
        assert_eq!(block_offset(2, 5, 64), Some((2 * 128 + 5) * 64));
        assert_eq!(block_offset(u32::MAX, 127, u16::MAX).map(|_| ()), Some(()));
    }

    proptest::proptest! {
        #[test]
        fn data_frames_round_trip(
            slice in 0u32..1_000_000,
            block in 0u16..BLOCKS_PER_SLICE,
            mtu in MIN_MTU..=MAX_MTU,
            len_frac in 1u16..=1000,
            transfer: u32,
            seq: u32,
        ) {
            let bs = block_size_for_mtu(mtu).unwrap();
            let len = (usize::from(bs) * usize::from(len_frac) / 1000).max(1);
            let data = vec![0x5au8; len];
            let hdr = DataHeader::new(slice, block, bs).unwrap();
            let mut buf = vec![0u8; MAX_FRAME_LEN];
            let n = encode_data_frame(&mut buf, &link(), &Header::new(MessageType::Data, transfer, seq), &hdr, &data).unwrap();
            proptest::prop_assert!(n - frame::ETH_HDR_LEN <= usize::from(mtu).max(frame::MIN_ETH_FRAME_LEN));
            let frame = Frame::decode(&buf[..n], DEFAULT_ETHERTYPE).unwrap();
            let view = DataView::from_frame(&frame).unwrap();
            proptest::prop_assert_eq!(view.header(), hdr);
            proptest::prop_assert_eq!(view.transfer(), transfer);
            proptest::prop_assert_eq!(view.data(), &data[..]);
        }

        #[test]
        fn any_payload_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            let _ = DataView::from_payload(0, &bytes);
        }
    }
}
