//! Frame tests: layout, every rejection path, truncation, padding, property round trips.

use proptest::prelude::*;

use super::*;
use crate::DEFAULT_ETHERTYPE;

fn link() -> Link {
    Link {
        dst: MacAddr::BROADCAST,
        src: MacAddr([2, 0, 0, 0, 0, 1]),
        ethertype: DEFAULT_ETHERTYPE,
    }
}

fn encode(payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = encode_frame(
        &mut buf,
        &link(),
        &Header::new(MessageType::Fetch, 0x0102_0304, 0x0a0b_0c0d),
        payload,
    )
    .unwrap();
    buf.truncate(n);
    buf
}

/// Re-computes the CRC after a test edits the header.
fn fix_crc(f: &mut [u8]) {
    let len = usize::from(u16::from_be_bytes([
        f[PAYLOAD_LEN_OFF],
        f[PAYLOAD_LEN_OFF + 1],
    ]));
    let crc_off = PAYLOAD_OFF + len;
    let crc = crc32fast::hash(&f[VERSION_OFF..crc_off]);
    f[crc_off..crc_off + CRC_LEN].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn small_frames_are_padded_to_60() {
    let f = encode(b"abc");
    assert_eq!(f.len(), MIN_ETH_FRAME_LEN);
    assert!(f[FRAME_OVERHEAD + 3..].iter().all(|b| *b == 0));
    let frame = Frame::decode(&f, DEFAULT_ETHERTYPE).unwrap();
    assert_eq!(frame.payload(), b"abc");
    assert_eq!(frame.header().session, 0x0102_0304);
    assert_eq!(frame.header().sequence, 0x0a0b_0c0d);
    assert_eq!(frame.link(), link());
    // Padding may also be absent (e.g. over veth, which does not pad).
    assert!(Frame::decode(&f[..FRAME_OVERHEAD + 3], DEFAULT_ETHERTYPE).is_ok());
    // Partial padding is fine too.
    assert!(Frame::decode(&f[..FRAME_OVERHEAD + 10], DEFAULT_ETHERTYPE).is_ok());
}

#[test]
fn large_frames_are_not_padded() {
    let f = encode(&[7u8; 100]);
    assert_eq!(f.len(), FRAME_OVERHEAD + 100);
}

#[test]
fn configurable_ethertype() {
    let mut buf = [0u8; 64];
    let l = Link {
        ethertype: 0x88b6,
        ..link()
    };
    let n = encode_frame(&mut buf, &l, &Header::new(MessageType::Ready, 1, 1), b"x").unwrap();
    assert!(Frame::decode(&buf[..n], 0x88b6).is_ok());
    assert_eq!(
        Frame::decode(&buf[..n], DEFAULT_ETHERTYPE).unwrap_err(),
        FrameError::WrongEtherType {
            got: 0x88b6,
            expected: DEFAULT_ETHERTYPE
        }
    );
}

#[test]
fn vlan_tagged_frames_are_wrong_ethertype() {
    let mut f = encode(b"abc");
    f[ETH_TYPE_OFF..ETH_HDR_LEN].copy_from_slice(&0x8100u16.to_be_bytes());
    assert!(matches!(
        Frame::decode(&f, DEFAULT_ETHERTYPE),
        Err(FrameError::WrongEtherType { got: 0x8100, .. })
    ));
}

#[test]
fn bad_crc_rejected_before_header_fields() {
    // A corrupted version byte must be reported as a CRC error, not a version error.
    let mut f = encode(b"abc");
    f[VERSION_OFF] = 0xee;
    assert!(matches!(
        Frame::decode(&f, DEFAULT_ETHERTYPE),
        Err(FrameError::BadCrc { .. })
    ));
    let mut f = encode(b"abc");
    f[PAYLOAD_OFF + 1] ^= 0x40;
    assert!(matches!(
        Frame::decode(&f, DEFAULT_ETHERTYPE),
        Err(FrameError::BadCrc { .. })
    ));
    let mut f = encode(b"abc");
    f[PAYLOAD_OFF + 3] ^= 1; // the CRC itself
    assert!(matches!(
        Frame::decode(&f, DEFAULT_ETHERTYPE),
        Err(FrameError::BadCrc { .. })
    ));
}

#[test]
fn padding_rules() {
    let mut f = encode(b"abc");
    f[MIN_ETH_FRAME_LEN - 1] = 1;
    assert_eq!(
        Frame::decode(&f, DEFAULT_ETHERTYPE).unwrap_err(),
        FrameError::NonZeroPadding {
            offset: MIN_ETH_FRAME_LEN - 1,
            value: 1
        }
    );
    let mut f = encode(b"abc");
    f.push(0);
    assert_eq!(
        Frame::decode(&f, DEFAULT_ETHERTYPE).unwrap_err(),
        FrameError::TrailingGarbage { extra: 1 }
    );
    let mut f = encode(&[1u8; 100]);
    f.push(0);
    assert_eq!(
        Frame::decode(&f, DEFAULT_ETHERTYPE).unwrap_err(),
        FrameError::TrailingGarbage { extra: 1 }
    );
}

#[test]
fn length_rejections() {
    assert!(matches!(
        Frame::decode(&[0u8; FRAME_OVERHEAD - 1], DEFAULT_ETHERTYPE),
        Err(FrameError::TooShort { .. })
    ));
    assert!(matches!(
        Frame::decode(&vec![0u8; MAX_FRAME_LEN + 1], DEFAULT_ETHERTYPE),
        Err(FrameError::TooLong { .. })
    ));
    let mut f = encode(b"abc");
    f[PAYLOAD_LEN_OFF..PAYLOAD_OFF].copy_from_slice(&40u16.to_be_bytes());
    assert!(matches!(
        Frame::decode(&f, DEFAULT_ETHERTYPE),
        Err(FrameError::Truncated { declared: 40, .. })
    ));
    f[PAYLOAD_LEN_OFF..PAYLOAD_OFF].copy_from_slice(&u16::MAX.to_be_bytes());
    assert!(matches!(
        Frame::decode(&f, DEFAULT_ETHERTYPE),
        Err(FrameError::PayloadTooLong { .. })
    ));
}

#[test]
fn header_field_rejections_after_crc() {
    let mut f = encode(b"abc");
    f[VERSION_OFF] = 0;
    fix_crc(&mut f);
    assert!(matches!(
        Frame::decode(&f, DEFAULT_ETHERTYPE),
        Err(FrameError::UnsupportedVersion { header }) if header.version == 0 && header.session == 0x0102_0304
    ));
    let mut f = encode(b"abc");
    f[MSG_TYPE_OFF] = 0x7f;
    fix_crc(&mut f);
    assert!(matches!(
        Frame::decode(&f, DEFAULT_ETHERTYPE),
        Err(FrameError::UnknownMessageType { header }) if header.msg_type == 0x7f
    ));
    let mut f = encode(b"abc");
    f[FLAGS_OFF] = 0x80;
    fix_crc(&mut f);
    assert_eq!(
        Frame::decode(&f, DEFAULT_ETHERTYPE).unwrap_err(),
        FrameError::UnknownFlags { flags: 0x8000 }
    );
}

#[test]
fn truncation_at_every_offset_errors() {
    for payload_len in [0usize, 3, 100] {
        let f = encode(&vec![0x5a; payload_len]);
        let end = FRAME_OVERHEAD + payload_len;
        for cut in 0..end {
            assert!(
                Frame::decode(&f[..cut], DEFAULT_ETHERTYPE).is_err(),
                "payload {payload_len}, cut at {cut} accepted"
            );
        }
    }
}

#[test]
fn encoder_rejects_small_buffers_and_huge_payloads() {
    let mut small = [0u8; 59];
    assert!(matches!(
        encode_frame(
            &mut small,
            &link(),
            &Header::new(MessageType::Ready, 0, 0),
            b""
        ),
        Err(FrameError::BufferTooSmall { needed: 60, .. })
    ));
    let mut buf = vec![0u8; MAX_FRAME_LEN + 100];
    let huge = vec![0u8; MAX_PAYLOAD_LEN + 1];
    assert!(matches!(
        encode_frame(
            &mut buf,
            &link(),
            &Header::new(MessageType::Ready, 0, 0),
            &huge
        ),
        Err(FrameError::PayloadTooLong { .. })
    ));
    assert!(matches!(
        finish_frame(
            &mut buf,
            &link(),
            &Header::new(MessageType::Ready, 0, 0),
            usize::MAX
        ),
        Err(FrameError::PayloadTooLong { .. })
    ));
    let max = vec![0u8; MAX_PAYLOAD_LEN];
    let n = encode_frame(
        &mut buf,
        &link(),
        &Header::new(MessageType::Ready, 0, 0),
        &max,
    )
    .unwrap();
    assert_eq!(n, MAX_FRAME_LEN);
    assert!(Frame::decode(&buf[..n], DEFAULT_ETHERTYPE).is_ok());
}

#[test]
fn message_type_codes_are_unique_and_stable() {
    for (i, t) in MessageType::ALL.iter().enumerate() {
        assert_eq!(MessageType::from_code(t.code()), Some(*t));
        for u in &MessageType::ALL[i + 1..] {
            assert_ne!(t.code(), u.code());
        }
    }
    assert_eq!(MessageType::from_code(0), None);
}

#[test]
fn mac_display() {
    assert_eq!(
        MacAddr([0xde, 0xad, 0, 1, 2, 0xff]).to_string(),
        "de:ad:00:01:02:ff"
    );
    assert!(MacAddr::BROADCAST.is_multicast());
    assert!(!MacAddr([2, 0, 0, 0, 0, 1]).is_multicast());
}

proptest! {
    #[test]
    fn round_trip(
        payload in proptest::collection::vec(any::<u8>(), 0..600),
        session: u32, sequence: u32, flags in 0u16..4, dst: [u8; 6], src: [u8; 6], t in 0usize..12,
    ) {
        let l = Link { dst: MacAddr(dst), src: MacAddr(src), ethertype: DEFAULT_ETHERTYPE };
        let h = Header {
            flags: Flags::from_bits(flags).unwrap(),
            ..Header::new(MessageType::ALL[t], session, sequence)
        };
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let n = encode_frame(&mut buf, &l, &h, &payload).unwrap();
        let f = Frame::decode(&buf[..n], DEFAULT_ETHERTYPE).unwrap();
        prop_assert_eq!(f.header(), h);
        prop_assert_eq!(f.link(), l);
        prop_assert_eq!(f.payload(), &payload[..]);
    }

    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Frame::decode(&bytes, DEFAULT_ETHERTYPE);
    }

    #[test]
    fn single_bit_flips_are_caught(payload in proptest::collection::vec(any::<u8>(), 0..64), bit in 0usize..8) {
        let f = encode(&payload);
        let end = FRAME_OVERHEAD + payload.len();
        for i in VERSION_OFF..end {
            let mut g = f.clone();
            g[i] ^= 1 << bit;
            prop_assert!(Frame::decode(&g, DEFAULT_ETHERTYPE).is_err(), "flip at {} accepted", i);
        }
    }
}
