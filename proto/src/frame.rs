//! Framing: the Ethernet view, our versioned header and the CRC-32 trailer.
//!
//! ```text
//!  0      6      12   14  15  16     18        22        26     28            28+L   32+L
//!  +------+------+----+---+---+------+---------+---------+------+--------------+------+-----------+
//!  | dst  | src  |type|ver|msg|flags | session | sequence | len L| payload (L)  | CRC  | zero pad  |
//!  +------+------+----+---+---+------+---------+---------+------+--------------+------+-----------+
//!  '---- Ethernet ----''------------- our header (14) ----------''--- body ---''-CRC-' up to 60 B
//! ```
//!
//! All integers are big-endian. The CRC-32 (IEEE, `crc32fast`) covers our header and the
//! payload (bytes 14..28+L), not the Ethernet addresses. [`Frame::decode`] checks, in this
//! order: length bounds, EtherType, the declared payload length, the CRC, the padding, and
//! only then interprets version, message type and flags. Short frames are padded with
//! zeros after the CRC up to the 60-byte Ethernet minimum; any other byte after the CRC is
//! rejected as trailing garbage.
//!
//! No 802.1Q: a VLAN tag is reported as a wrong EtherType. The frame FCS is not included
//! (AF_PACKET neither delivers nor expects it). This module does not look inside the
//! payload: see [`crate::msg`] and [`crate::data`].

use std::fmt;

use thiserror::Error;

use crate::{MAX_FRAME_LEN, MAX_PAYLOAD_LEN, version};

/// Offset of the destination MAC.
pub const ETH_DST_OFF: usize = 0;
/// Offset of the source MAC.
pub const ETH_SRC_OFF: usize = 6;
/// Offset of the EtherType.
pub const ETH_TYPE_OFF: usize = 12;
/// Length of the Ethernet header (no 802.1Q tag).
pub const ETH_HDR_LEN: usize = 14;
/// Offset of the protocol version (frozen forever).
pub const VERSION_OFF: usize = 14;
/// Offset of the message type.
pub const MSG_TYPE_OFF: usize = 15;
/// Offset of the flags (u16).
pub const FLAGS_OFF: usize = 16;
/// Offset of the session / transfer id (u32).
pub const SESSION_OFF: usize = 18;
/// Offset of the sequence number (u32).
pub const SEQUENCE_OFF: usize = 22;
/// Offset of the payload length (u16).
pub const PAYLOAD_LEN_OFF: usize = 26;
/// Offset of the payload.
pub const PAYLOAD_OFF: usize = 28;
/// Length of our header.
pub const PROTO_HDR_LEN: usize = PAYLOAD_OFF - VERSION_OFF;
/// Length of the CRC-32 trailer.
pub const CRC_LEN: usize = 4;
/// Bytes a frame adds around its payload: Ethernet header, our header, CRC.
pub const FRAME_OVERHEAD: usize = PAYLOAD_OFF + CRC_LEN;
/// Minimum Ethernet frame length without FCS; shorter frames are zero-padded to it.
pub const MIN_ETH_FRAME_LEN: usize = 60;

pub use crate::id::MacAddr;

/// Message types (the byte at [`MSG_TYPE_OFF`]). Only ever appended; see [`crate::version`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Card → broadcast: who I am, what my flash holds.
    Solicit = 0x01,
    /// Master → card: I serve this backplane.
    Advertise = 0x02,
    /// Master → all: I am alive.
    Heartbeat = 0x03,
    /// Master → card: signed plan.
    Plan = 0x04,
    /// Card → master: send me this artifact.
    Fetch = 0x05,
    /// Master → card: receive this artifact in this transfer session.
    Join = 0x06,
    /// Card → master: blocks missing in a slice.
    Nack = 0x07,
    /// Card → master: how far I am.
    Progress = 0x08,
    /// Card → master: set committed, handing off.
    Ready = 0x09,
    /// Either way: structured failure.
    Error = 0x0a,
    /// Master → card(s): signed command.
    Command = 0x0b,
    /// Card → master: the full flash inventory, when the master asks (version 2).
    Inventory = 0x0c,
    /// Card (resident agent, after hand-off) → master: I run this set, this healthy.
    Alive = 0x0d,
    /// Master → card(s): one block of artifact data ([`crate::data`]), no CBOR.
    Data = 0x40,
}

impl MessageType {
    /// Every message type, in wire order.
    pub const ALL: [MessageType; 14] = [
        MessageType::Solicit,
        MessageType::Advertise,
        MessageType::Heartbeat,
        MessageType::Plan,
        MessageType::Fetch,
        MessageType::Join,
        MessageType::Nack,
        MessageType::Progress,
        MessageType::Ready,
        MessageType::Error,
        MessageType::Command,
        MessageType::Inventory,
        MessageType::Alive,
        MessageType::Data,
    ];

    /// The type with wire code `code`, if any.
    pub fn from_code(code: u8) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// Wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The first protocol version that has this type; a frame of an older version that
    /// carries it is rejected as [`FrameError::UnknownMessageType`].
    pub const fn since_version(self) -> u8 {
        match self {
            MessageType::Inventory | MessageType::Alive => version::FRAGMENTS,
            _ => 1,
        }
    }

    /// Whether the payload is a CBOR control message (everything except [`MessageType::Data`]).
    pub const fn is_control(self) -> bool {
        !matches!(self, MessageType::Data)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}(0x{:02x})", self.code())
    }
}

/// Header flags. Unknown bits are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u16);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// Data: this block is a repair (answer to a NACK), not first transmission.
    pub const RETRANSMIT: Flags = Flags(1 << 0);
    /// Data: this is the last block of the artifact.
    pub const LAST: Flags = Flags(1 << 1);
    /// Control (version 2): the payload is one fragment of a larger message
    /// ([`crate::frag`]), not a whole CBOR body.
    pub const FRAGMENT: Flags = Flags(1 << 2);
    const KNOWN_V1: u16 = Flags::RETRANSMIT.0 | Flags::LAST.0;
    const KNOWN: u16 = Flags::KNOWN_V1 | Flags::FRAGMENT.0;

    /// Flags from wire bits, `None` if an unknown bit is set.
    pub const fn from_bits(bits: u16) -> Option<Flags> {
        if bits & !Flags::KNOWN == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// Flags from the wire bits of a frame of protocol `version`, `None` if a bit is
    /// unknown to that version (`FRAGMENT` is version 2's).
    pub const fn from_bits_in(bits: u16, version: u8) -> Option<Flags> {
        let known = if version >= version::FRAGMENTS {
            Flags::KNOWN
        } else {
            Flags::KNOWN_V1
        };
        if bits & !known == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// Wire bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union.
    #[must_use]
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// Our header, decoded and validated (the payload length lives in [`Frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Protocol version.
    pub version: u8,
    /// Message type.
    pub msg_type: MessageType,
    /// Flags.
    pub flags: Flags,
    /// Control: the card's conversation id (echoed in replies). Data: the transfer id.
    pub session: u32,
    /// Per-sender counter, for duplicate and reorder detection.
    pub sequence: u32,
}

impl Header {
    /// A header of the current version with no flags.
    pub const fn new(msg_type: MessageType, session: u32, sequence: u32) -> Header {
        Header {
            version: version::CURRENT,
            msg_type,
            flags: Flags::NONE,
            session,
            sequence,
        }
    }

    /// The same header in protocol `version` (to answer a peer of an older version).
    #[must_use]
    pub const fn in_version(self, version: u8) -> Header {
        Header { version, ..self }
    }
}

/// Our header as raw fields, before version and type are validated. Carried by the
/// [`FrameError::UnsupportedVersion`] and [`FrameError::UnknownMessageType`] errors so that
/// the caller can answer (see [`crate::msg::unsupported_version_reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawHeader {
    /// Version byte as received.
    pub version: u8,
    /// Message type byte as received.
    pub msg_type: u8,
    /// Flag bits as received.
    pub flags: u16,
    /// Session / transfer id.
    pub session: u32,
    /// Sequence number.
    pub sequence: u32,
}

/// Link-level addressing of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Link {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// EtherType ([`crate::DEFAULT_ETHERTYPE`] unless configured otherwise).
    pub ethertype: u16,
}

/// Errors of [`Frame::decode`] and the frame encoders.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than the fixed headers plus CRC.
    #[error(
        "frame of {len} bytes is shorter than the {min}-byte minimum: dropped (truncated in transit?)"
    )]
    TooShort { len: usize, min: usize },
    /// Longer than any frame we send.
    #[error("frame of {len} bytes exceeds the {max}-byte maximum (jumbo MTU 9000): dropped")]
    TooLong { len: usize, max: usize },
    /// Not our EtherType (or 802.1Q tagged).
    #[error(
        "EtherType 0x{got:04x} is not ours (0x{expected:04x}): dropped; check the configured EtherType on both ends"
    )]
    WrongEtherType { got: u16, expected: u16 },
    /// Declared payload length is over the cap.
    #[error("header declares a {len}-byte payload, over the {max}-byte cap: dropped")]
    PayloadTooLong { len: usize, max: usize },
    /// Declared payload (plus CRC) runs past the end of the frame.
    #[error(
        "header declares a {declared}-byte payload but the frame has only {available} bytes after the header (CRC included): dropped"
    )]
    Truncated { declared: usize, available: usize },
    /// The CRC-32 trailer does not match.
    #[error(
        "CRC-32 mismatch (carried 0x{carried:08x}, computed 0x{computed:08x}): frame corrupted, dropped; the sender retransmits"
    )]
    BadCrc { carried: u32, computed: u32 },
    /// Bytes after the CRC beyond the 60-byte minimum frame.
    #[error(
        "{extra} bytes after the CRC trailer beyond the 60-byte Ethernet minimum: dropped as trailing garbage"
    )]
    TrailingGarbage { extra: usize },
    /// A padding byte (after the CRC, within the 60-byte minimum) is not zero.
    #[error("padding byte at offset {offset} is 0x{value:02x}, not zero: dropped")]
    NonZeroPadding { offset: usize, value: u8 },
    /// A protocol version outside `MIN..=CURRENT`.
    #[error("protocol version {} is not supported (this build speaks {}..={}): answer with msg::unsupported_version_reply", header.version, version::MIN, version::CURRENT)]
    UnsupportedVersion { header: RawHeader },
    /// A message type this version does not know.
    #[error("message type 0x{:02x} is unknown to protocol version {}: answer with msg::unknown_type_reply", header.msg_type, header.version)]
    UnknownMessageType { header: RawHeader },
    /// Flag bits this version does not know.
    #[error("flags 0x{flags:04x} contain bits unknown to this version: dropped")]
    UnknownFlags { flags: u16 },
    /// Encoding: the caller's buffer cannot hold the frame.
    #[error(
        "frame needs {needed} bytes but the buffer holds {available}: pass a buffer of MAX_FRAME_LEN bytes"
    )]
    BufferTooSmall { needed: usize, available: usize },
}

/// A view of an Ethernet frame (no 802.1Q): destination, source, EtherType, payload.
#[derive(Debug, Clone, Copy)]
pub struct EthernetView<'a> {
    bytes: &'a [u8],
}

impl<'a> EthernetView<'a> {
    /// A view over `bytes`, which must hold at least the 14-byte header.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<EthernetView<'a>, FrameError> {
        if bytes.len() < ETH_HDR_LEN {
            return Err(FrameError::TooShort {
                len: bytes.len(),
                min: ETH_HDR_LEN,
            });
        }
        Ok(EthernetView { bytes })
    }

    /// Destination MAC.
    pub fn dst(&self) -> MacAddr {
        MacAddr(array_at(self.bytes, ETH_DST_OFF))
    }

    /// Source MAC.
    pub fn src(&self) -> MacAddr {
        MacAddr(array_at(self.bytes, ETH_SRC_OFF))
    }

    /// EtherType.
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes(array_at(self.bytes, ETH_TYPE_OFF))
    }

    /// Everything after the Ethernet header.
    pub fn payload(&self) -> &'a [u8] {
        self.bytes.get(ETH_HDR_LEN..).unwrap_or(&[])
    }
}

/// A validated frame of ours: CRC checked, version supported, type and flags known.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    eth: EthernetView<'a>,
    header: Header,
    payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Validates `bytes` as one of our frames with EtherType `ethertype`.
    pub fn decode(bytes: &'a [u8], ethertype: u16) -> Result<Frame<'a>, FrameError> {
        let len = bytes.len();
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLong {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        if len < FRAME_OVERHEAD {
            return Err(FrameError::TooShort {
                len,
                min: FRAME_OVERHEAD,
            });
        }
        let eth = EthernetView::from_bytes(bytes)?;
        if eth.ethertype() != ethertype {
            return Err(FrameError::WrongEtherType {
                got: eth.ethertype(),
                expected: ethertype,
            });
        }
        let payload_len = usize::from(u16::from_be_bytes(array_at(bytes, PAYLOAD_LEN_OFF)));
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(FrameError::PayloadTooLong {
                len: payload_len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        let crc_off = PAYLOAD_OFF + payload_len;
        let end = crc_off + CRC_LEN;
        let (Some(covered), Some(trailer)) =
            (bytes.get(VERSION_OFF..crc_off), bytes.get(crc_off..end))
        else {
            return Err(FrameError::Truncated {
                declared: payload_len,
                available: len - PAYLOAD_OFF,
            });
        };
        let carried = u32::from_be_bytes(array_at(trailer, 0));
        let computed = crc32fast::hash(covered);
        if carried != computed {
            return Err(FrameError::BadCrc { carried, computed });
        }
        if len > end.max(MIN_ETH_FRAME_LEN) {
            return Err(FrameError::TrailingGarbage {
                extra: len - end.max(MIN_ETH_FRAME_LEN),
            });
        }
        if let Some((i, &value)) = bytes.iter().enumerate().skip(end).find(|(_, b)| **b != 0) {
            return Err(FrameError::NonZeroPadding { offset: i, value });
        }
        let raw = RawHeader {
            version: bytes[VERSION_OFF],
            msg_type: bytes[MSG_TYPE_OFF],
            flags: u16::from_be_bytes(array_at(bytes, FLAGS_OFF)),
            session: u32::from_be_bytes(array_at(bytes, SESSION_OFF)),
            sequence: u32::from_be_bytes(array_at(bytes, SEQUENCE_OFF)),
        };
        if !version::is_supported(raw.version) {
            return Err(FrameError::UnsupportedVersion { header: raw });
        }
        let msg_type = MessageType::from_code(raw.msg_type)
            .filter(|t| t.since_version() <= raw.version)
            .ok_or(FrameError::UnknownMessageType { header: raw })?;
        let flags = Flags::from_bits_in(raw.flags, raw.version)
            .ok_or(FrameError::UnknownFlags { flags: raw.flags })?;
        if flags.contains(Flags::FRAGMENT) && !msg_type.is_control() {
            return Err(FrameError::UnknownFlags { flags: raw.flags });
        }
        Ok(Frame {
            eth,
            header: Header {
                version: raw.version,
                msg_type,
                flags,
                session: raw.session,
                sequence: raw.sequence,
            },
            payload: bytes.get(PAYLOAD_OFF..crc_off).unwrap_or(&[]),
        })
    }

    /// The Ethernet view.
    pub fn ethernet(&self) -> EthernetView<'a> {
        self.eth
    }

    /// Link addressing (dst, src, EtherType).
    pub fn link(&self) -> Link {
        Link {
            dst: self.eth.dst(),
            src: self.eth.src(),
            ethertype: self.eth.ethertype(),
        }
    }

    /// Our header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// The payload (CBOR body or data header + block), without CRC and padding.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// Length of the frame carrying a `payload_len`-byte payload, padding included.
pub const fn frame_len(payload_len: usize) -> usize {
    let n = FRAME_OVERHEAD + payload_len;
    if n < MIN_ETH_FRAME_LEN {
        MIN_ETH_FRAME_LEN
    } else {
        n
    }
}

/// The part of `buf` where a payload goes, for encoding in place with [`finish_frame`].
pub fn payload_area(buf: &mut [u8]) -> &mut [u8] {
    let end = buf
        .len()
        .min(MAX_FRAME_LEN)
        .saturating_sub(CRC_LEN)
        .max(PAYLOAD_OFF);
    buf.get_mut(PAYLOAD_OFF..end).unwrap_or(&mut [])
}

/// Writes Ethernet header, our header, CRC and padding around a `payload_len`-byte payload
/// that the caller already wrote at `buf[PAYLOAD_OFF..]` (see [`payload_area`]). Returns the
/// frame length.
pub fn finish_frame(
    buf: &mut [u8],
    link: &Link,
    header: &Header,
    payload_len: usize,
) -> Result<usize, FrameError> {
    let wire_len = u16::try_from(payload_len)
        .ok()
        .filter(|_| payload_len <= MAX_PAYLOAD_LEN)
        .ok_or(FrameError::PayloadTooLong {
            len: payload_len,
            max: MAX_PAYLOAD_LEN,
        })?;
    let len = frame_len(payload_len);
    let Some(frame) = buf.get_mut(..len) else {
        return Err(FrameError::BufferTooSmall {
            needed: len,
            available: buf.len(),
        });
    };
    frame[ETH_DST_OFF..ETH_SRC_OFF].copy_from_slice(&link.dst.0);
    frame[ETH_SRC_OFF..ETH_TYPE_OFF].copy_from_slice(&link.src.0);
    frame[ETH_TYPE_OFF..ETH_HDR_LEN].copy_from_slice(&link.ethertype.to_be_bytes());
    frame[VERSION_OFF] = header.version;
    frame[MSG_TYPE_OFF] = header.msg_type.code();
    frame[FLAGS_OFF..SESSION_OFF].copy_from_slice(&header.flags.bits().to_be_bytes());
    frame[SESSION_OFF..SEQUENCE_OFF].copy_from_slice(&header.session.to_be_bytes());
    frame[SEQUENCE_OFF..PAYLOAD_LEN_OFF].copy_from_slice(&header.sequence.to_be_bytes());
    frame[PAYLOAD_LEN_OFF..PAYLOAD_OFF].copy_from_slice(&wire_len.to_be_bytes());
    let crc_off = PAYLOAD_OFF + payload_len;
    let crc = crc32fast::hash(&frame[VERSION_OFF..crc_off]);
    frame[crc_off..crc_off + CRC_LEN].copy_from_slice(&crc.to_be_bytes());
    frame[crc_off + CRC_LEN..].fill(0);
    Ok(len)
}

/// Encodes a complete frame carrying `payload` into `buf`; returns the frame length.
pub fn encode_frame(
    buf: &mut [u8],
    link: &Link,
    header: &Header,
    payload: &[u8],
) -> Result<usize, FrameError> {
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(FrameError::PayloadTooLong {
            len: payload.len(),
            max: MAX_PAYLOAD_LEN,
        });
    }
    let needed = frame_len(payload.len());
    let Some(area) = buf.get_mut(PAYLOAD_OFF..PAYLOAD_OFF + payload.len()) else {
        return Err(FrameError::BufferTooSmall {
            needed,
            available: buf.len(),
        });
    };
    area.copy_from_slice(payload);
    finish_frame(buf, link, header, payload.len())
}

/// `N` bytes of `bytes` at `off`, zeros where `bytes` is too short. Callers check lengths
/// first; the zero fill only keeps this total.
pub(crate) fn array_at<const N: usize>(bytes: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(off..off.saturating_add(N)) {
        out.copy_from_slice(src);
    }
    out
}

#[cfg(test)]
mod tests;
