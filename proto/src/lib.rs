//! shelfboot wire protocol: framing, CBOR control messages, data frames, signatures.
//!
//! This crate is sans-IO: it never opens a socket, reads a clock or touches flash. It turns
//! bytes into typed values and back, and every decoder is total: any input yields either a
//! value or an error, never a panic (fuzzed by `fuzz/`, see `docs/protocol.md`).
//!
//! Layers, outermost first:
//! - [`id`]: the shared identities: [`id::MacAddr`], [`id::Arch`], [`id::Digest`].
//! - [`frame`]: the Ethernet view, our versioned header and the CRC-32 trailer.
//! - [`msg`]: control messages (CBOR bodies) and the shared [`msg::set_digest`].
//! - [`frag`]: control messages larger than one frame: fragments and the bounded
//!   [`frag::Reassembler`].
//! - [`data`]: data frames (fixed binary header, no CBOR), slices and NACK bitmaps.
//! - [`sign`]: Ed25519 signatures over plans, commands and manifests; the trust anchor.
//! - [`report`]: how an error and its causes print ([`report::error_chain`]), for every crate.
//! - [`describe`]: a human-readable dump of a frame and its check, for `master decode HEX`.
//! - [`samples`]: deterministic example messages and frames (tests, fuzz seeds, docs).
//!
//! It does not choose addresses, retransmit, time out or resolve plans: that is the
//! business of the card state machine and the master.

pub mod data;
pub mod describe;
pub mod frag;
pub mod frame;
pub mod id;
pub mod msg;
pub mod report;
pub mod samples;
pub mod sign;

pub use describe::{Rejection, check_frame, describe_frame};

/// Protocol versions. The rule, from `docs/protocol.md`:
///
/// - Message variants, message types, error reasons and struct fields are only ever
///   **appended**; nothing is renamed, reordered, re-keyed or removed. A new field is
///   optional (absent means the old behaviour) so that a newer peer still decodes the older
///   version's messages.
/// - Any change to what goes on the wire bumps [`crate::version::CURRENT`], and gets a new
///   `proto/tests/golden_vN.rs` that pins its bytes; the older golden files stay.
/// - The first 14 bytes of our header (see [`crate::frame`]) and the layout of the
///   `Error`/`UnsupportedVersion` reply are frozen forever, so that any two versions can
///   at least tell each other which versions they speak.
/// - A peer decodes every version in `MIN..=CURRENT` and answers anything else with
///   [`crate::msg::unsupported_version_reply`].
pub mod version {
    /// Oldest protocol version this build decodes.
    pub const MIN: u8 = 1;
    /// Version this build encodes.
    pub const CURRENT: u8 = 2;
    /// First version with fragmented control messages (the `FRAGMENT` flag), the
    /// Inventory message and the digest-only Continue.
    pub const FRAGMENTS: u8 = 2;

    /// Whether `v` is a version this build decodes.
    pub const fn is_supported(v: u8) -> bool {
        v >= MIN && v <= CURRENT
    }
}

/// Largest link MTU we support (jumbo frames).
pub const MAX_MTU: u16 = 9000;
/// Smallest link MTU we support (IPv6's minimum; any real backplane is larger).
pub const MIN_MTU: u16 = 1280;
/// The MTU two ports both take: the smaller of the two, a port that did not say (`None`)
/// taken at the standard 1500, and the result kept within [`MIN_MTU`]..=[`MAX_MTU`]. What
/// the master uses for a card's fragment grid ([`frag::Grid::for_mtu`]) and data block
/// size ([`data::block_size_for_mtu`]).
pub fn common_mtu(a: Option<u16>, b: Option<u16>) -> u16 {
    a.unwrap_or(STANDARD_MTU)
        .min(b.unwrap_or(STANDARD_MTU))
        .clamp(MIN_MTU, MAX_MTU)
}
/// A port's MTU as the protocol uses it: kept within [`MIN_MTU`]..=[`MAX_MTU`] (a larger
/// port takes our largest frames; a smaller one is refused where the block size is
/// chosen, [`data::block_size_for_mtu`]).
pub fn protocol_mtu(port_mtu: u32) -> u16 {
    u16::try_from(port_mtu.min(u32::from(MAX_MTU))).unwrap_or(MAX_MTU)
}
/// The Ethernet MTU every port is assumed to take unless it says otherwise.
pub const STANDARD_MTU: u16 = 1500;
/// Largest Ethernet frame (without FCS) we ever encode or accept: header + [`MAX_MTU`].
pub const MAX_FRAME_LEN: usize = frame::ETH_HDR_LEN + MAX_MTU as usize;
/// Largest payload behind our header: a jumbo MTU minus our header and CRC trailer.
pub const MAX_PAYLOAD_LEN: usize = MAX_MTU as usize - frame::PROTO_HDR_LEN - frame::CRC_LEN;
/// Largest CBOR body of a control message sent in one frame. Control messages are
/// broadcast before anyone knows the link MTU, so a one-frame message always fits a
/// 1500-byte MTU; a larger body is split into fragments ([`frag`], protocol version 2),
/// on the jumbo grid where both ports take 9000-byte frames.
pub const MAX_CONTROL_BODY_LEN: usize = 1500 - frame::PROTO_HDR_LEN - frame::CRC_LEN;
/// Largest CBOR body of a control message of any size (reassembled from fragments): 64 KiB,
/// room for a plan of about 400 artifacts with 64-byte names. Larger ones fail to encode.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Default EtherType (IEEE 802 local experimental 1); configurable per deployment.
pub const DEFAULT_ETHERTYPE: u16 = 0x88B5;
