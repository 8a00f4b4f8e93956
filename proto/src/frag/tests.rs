//! Fragment and reassembly tests: every split, duplicates, reorder, loss, inconsistent
//! overlap, eviction, expiry, and the memory bound measured.

// Test data generators narrow integers on purpose.
#![allow(clippy::cast_possible_truncation)]

use proptest::prelude::*;

use super::*;
use crate::msg::{ArtifactKind, ErrorMsg, ErrorReason, Plan, PlanBody, Signature, Verdict};
use crate::samples::artifact;
use crate::{DEFAULT_ETHERTYPE, frame::MessageType};

fn link(src: u8) -> Link {
    Link {
        dst: MacAddr([2, 0, 0, 0, 0, 7]),
        src: MacAddr([2, 0, 0, 0, 0, src]),
        ethertype: DEFAULT_ETHERTYPE,
    }
}

/// A plan of `n` artifacts with 64-byte names.
fn big_plan(n: usize) -> Message {
    let artifacts: Vec<_> = (0..n)
        .map(|i| {
            let name = format!("{:0>64}", format!("package-{i}"));
            artifact(ArtifactKind::Package, &name, (i % 251) as u8)
        })
        .collect();
    Message::Plan(Plan {
        body: PlanBody {
            digest: crate::msg::set_digest(&artifacts, "quiet"),
            artifacts,
            cmdline: "quiet".into(),
            persist: true,
            verdict: Verdict::Fetch,
            nonce: [1; 16],
            epoch: 3,
            artifacts_omitted: false,
            report_inventory: false,
        },
        signature: Signature([7; 64]),
        cert: None,
    })
}

fn frames_of(msg: &Message, src: u8, seq: u32) -> Vec<Vec<u8>> {
    let h = Header::new(msg.msg_type(), 0x55, seq);
    encode_frames(&link(src), &h, msg).unwrap()
}

/// Pushes `frames[1..]`; returns what the last one gave.
fn finish(r: &mut Reassembler, now: Instant, frames: &[Vec<u8>]) -> Option<Reassembled> {
    let mut last = None;
    for f in &frames[1..] {
        last = push(r, now, f).unwrap();
    }
    last
}

fn push(r: &mut Reassembler, now: Instant, f: &[u8]) -> Result<Option<Reassembled>, FragError> {
    let frame = Frame::decode(f, DEFAULT_ETHERTYPE).unwrap();
    r.push(now, &frame)
}

#[test]
fn a_plan_of_200_artifacts_with_64_byte_names_is_fragmented_and_comes_back() {
    let msg = big_plan(200);
    let frames = frames_of(&msg, 1, 9);
    assert!(frames.len() > 10, "{} frames", frames.len());
    for f in &frames {
        assert!(
            f.len() <= 1514,
            "every fragment fits a 1500-byte MTU: {}",
            f.len()
        );
        let fr = Frame::decode(f, DEFAULT_ETHERTYPE).unwrap();
        assert!(fr.header().flags.contains(Flags::FRAGMENT));
        assert!(matches!(
            crate::msg::decode_message(&fr),
            Err(MsgError::Fragment { .. })
        ));
    }
    let mut r = Reassembler::new(Limits::CARD);
    let now = Instant::now();
    let (last, rest) = frames.split_last().unwrap();
    for f in rest {
        assert_eq!(push(&mut r, now, f).unwrap(), None);
    }
    let done = push(&mut r, now, last).unwrap().unwrap();
    assert_eq!(done.header.flags, Flags::NONE);
    assert_eq!(done.header.sequence, 9);
    assert_eq!(done.header.session, 0x55);
    assert_eq!(done.link, link(1));
    assert_eq!(done.decode().unwrap(), msg);
    assert_eq!(r.partials(), 0);
    let c = r.counters();
    assert_eq!((c.fragments, c.completed), (frames.len() as u64, 1));
}

#[test]
fn a_jumbo_grid_plan_is_fewer_frames_that_fit_a_9000_byte_mtu_and_comes_back() {
    let msg = big_plan(200);
    let h = Header::new(msg.msg_type(), 0x55, 9);
    let standard = encode_frames(&link(1), &h, &msg).unwrap();
    let jumbo = encode_frames_on(Grid::Jumbo, &link(1), &h, &msg).unwrap();
    let body = msg.encode_long_body().unwrap().len();
    assert_eq!(jumbo.len(), body.div_ceil(JUMBO_FRAGMENT_DATA_LEN));
    assert_eq!(standard.len(), body.div_ceil(FRAGMENT_DATA_LEN));
    assert!(
        jumbo.len() * 5 < standard.len(),
        "{} vs {}",
        jumbo.len(),
        standard.len()
    );
    assert!(jumbo.iter().all(|f| f.len() <= crate::MAX_FRAME_LEN));
    assert!(
        jumbo[..jumbo.len() - 1]
            .iter()
            .all(|f| f.len() == crate::MAX_FRAME_LEN)
    );
    let mut r = Reassembler::new(Limits::CARD);
    let now = Instant::now();
    let mut got = None;
    for f in jumbo.iter().rev() {
        got = push(&mut r, now, f).unwrap().or(got);
    }
    assert_eq!(got.unwrap().decode().unwrap(), msg);
    assert_eq!(r.counters().completed, 1);
}

#[test]
fn one_message_on_two_grids_is_inconsistent_and_dropped() {
    let msg = big_plan(200);
    let h = Header::new(msg.msg_type(), 0x55, 9);
    let standard = encode_frames(&link(1), &h, &msg).unwrap();
    let jumbo = encode_frames_on(Grid::Jumbo, &link(1), &h, &msg).unwrap();
    let mut r = Reassembler::new(Limits::CARD);
    let now = Instant::now();
    assert_eq!(push(&mut r, now, &jumbo[1]).unwrap(), None);
    let e = push(&mut r, now, &standard[1]).unwrap_err();
    assert!(
        matches!(
            e,
            FragError::Inconsistent {
                what: "another fragment grid",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(r.partials(), 0);
    assert_eq!(r.counters().inconsistent, 1);
}

#[test]
fn the_grid_of_a_fragment_is_never_ambiguous() {
    // Below the message limit no offset but 0 is on both grids, and at offset 0 the two
    // pieces differ (a fragmented message is longer than one standard cell).
    let both = FRAGMENT_DATA_LEN * JUMBO_FRAGMENT_DATA_LEN
        / gcd(FRAGMENT_DATA_LEN, JUMBO_FRAGMENT_DATA_LEN);
    assert!(both > MAX_MESSAGE_LEN, "{both}");
    for total in [MAX_CONTROL_BODY_LEN + 1, 5000, 8970, 8971, MAX_MESSAGE_LEN] {
        assert_eq!(Grid::of(0, FRAGMENT_DATA_LEN, total), Some(Grid::Standard));
        assert_eq!(
            Grid::of(0, JUMBO_FRAGMENT_DATA_LEN.min(total), total),
            Some(Grid::Jumbo)
        );
    }
    assert_eq!(Grid::of(1470, 100, 1570), Some(Grid::Standard));
    assert_eq!(Grid::of(8970, 100, 9070), Some(Grid::Jumbo));
    assert_eq!(Grid::of(2000, 100, 2100), None);
    assert_eq!(Grid::for_mtu(1500), Grid::Standard);
    assert_eq!(Grid::for_mtu(8999), Grid::Standard);
    assert_eq!(Grid::for_mtu(9000), Grid::Jumbo);
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[test]
fn a_message_that_fits_one_frame_is_one_plain_frame() {
    let msg = big_plan(2);
    let frames = frames_of(&msg, 1, 1);
    assert_eq!(frames.len(), 1);
    let (h, back) = crate::msg::decode_frame(&frames[0], DEFAULT_ETHERTYPE).unwrap();
    assert_eq!(h.flags, Flags::NONE);
    assert_eq!(back, msg);
}

#[test]
fn a_version_1_peer_gets_no_fragments_but_a_clear_error() {
    let msg = big_plan(40);
    let h = Header::new(MessageType::Plan, 1, 1).in_version(1);
    let e = encode_frames(&link(1), &h, &msg).unwrap_err();
    assert!(matches!(e, EncodeError::NeedsFragments { version: 1, .. }));
    assert!(e.to_string().contains("needs protocol version 2"), "{e}");
    // Small messages still go to a v1 peer, in v1.
    let f = encode_frames(&link(1), &h, &big_plan(2)).unwrap();
    assert_eq!(f[0][crate::frame::VERSION_OFF], 1);
}

#[test]
fn a_message_over_the_limit_fails_to_encode_naming_size_and_limit() {
    let e = encode_frames(
        &link(1),
        &Header::new(MessageType::Error, 1, 1),
        &Message::Error(ErrorMsg {
            reason: ErrorReason::Malformed,
            detail: "x".repeat(MAX_MESSAGE_LEN),
        }),
    )
    .unwrap_err();
    let text = crate::report::error_chain(&e);
    assert!(
        text.contains(&format!("{MAX_MESSAGE_LEN}-byte cap")),
        "{text}"
    );
    assert!(text.contains("Error(0x0a) body of 655"), "{text}");
}

#[test]
fn a_v1_frame_cannot_carry_a_fragment_or_an_inventory() {
    let frames = frames_of(&big_plan(40), 1, 1);
    let mut f = frames[0].clone();
    f[crate::frame::VERSION_OFF] = 1;
    let crc_off = f.len() - crate::frame::CRC_LEN;
    let crc = crc32fast::hash(&f[crate::frame::VERSION_OFF..crc_off]);
    f[crc_off..].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        Frame::decode(&f, DEFAULT_ETHERTYPE),
        Err(crate::frame::FrameError::UnknownFlags { .. })
    ));
    let mut buf = vec![0u8; 128];
    let h = Header::new(MessageType::Inventory, 1, 1).in_version(1);
    let n = crate::frame::encode_frame(&mut buf, &link(1), &h, &[0xa0]).unwrap();
    assert!(matches!(
        Frame::decode(&buf[..n], DEFAULT_ETHERTYPE),
        Err(crate::frame::FrameError::UnknownMessageType { .. })
    ));
}

#[test]
fn duplicates_are_counted_and_late_ones_ignored() {
    let frames = frames_of(&big_plan(60), 1, 2);
    let mut r = Reassembler::new(Limits::CARD);
    let now = Instant::now();
    let mut done = 0;
    for f in &frames {
        for _ in 0..2 {
            if push(&mut r, now, f).unwrap().is_some() {
                done += 1;
            }
        }
    }
    assert_eq!(done, 1);
    let c = r.counters();
    assert_eq!(c.duplicates, frames.len() as u64 - 1);
    assert_eq!(c.late_duplicates, 1);
    // The whole message again (a cached re-send) completes nothing new.
    for f in &frames {
        assert_eq!(push(&mut r, now, f).unwrap(), None);
    }
    assert_eq!(r.counters().completed, 1);
    assert_eq!(r.partials(), 0);
}

#[test]
fn a_lost_fragment_times_out_and_a_resend_completes_the_partial() {
    let msg = big_plan(60);
    let frames = frames_of(&msg, 1, 2);
    let mut r = Reassembler::new(Limits::CARD);
    let t0 = Instant::now();
    for f in frames.iter().skip(1) {
        assert_eq!(push(&mut r, t0, f).unwrap(), None);
    }
    assert_eq!(r.partials(), 1);
    assert_eq!(r.next_deadline(), Some(t0 + Limits::CARD.timeout));
    // Within the timeout the missing piece (from a re-sent copy) completes it.
    let got = push(&mut r, t0 + Duration::from_secs(1), &frames[0]).unwrap();
    assert_eq!(got.unwrap().decode().unwrap(), msg);
    // Past the timeout the partial is gone.
    let frames = frames_of(&msg, 1, 3);
    for f in frames.iter().skip(1) {
        push(&mut r, t0, f).unwrap();
    }
    r.expire(t0 + Limits::CARD.timeout + Duration::from_millis(1));
    assert_eq!(r.partials(), 0);
    assert_eq!(r.counters().expired, 1);
    assert_eq!(
        r.memory_bytes(),
        std::mem::size_of::<Key>(),
        "only the recent key"
    );
}

#[test]
fn an_inconsistent_overlap_drops_the_partial_message() {
    let frames = frames_of(&big_plan(60), 1, 2);
    let mut r = Reassembler::new(Limits::CARD);
    let now = Instant::now();
    push(&mut r, now, &frames[0]).unwrap();
    // Same cell, other bytes (a forged or corrupted piece with a valid CRC).
    let mut other = frames[0].clone();
    let pos = crate::frame::PAYLOAD_OFF + FRAGMENT_HDR_LEN + 5;
    other[pos] ^= 0xff;
    let crc_off = other.len() - crate::frame::CRC_LEN;
    let crc = crc32fast::hash(&other[crate::frame::VERSION_OFF..crc_off]);
    other[crc_off..].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        push(&mut r, now, &other),
        Err(FragError::Inconsistent { .. })
    ));
    assert_eq!(r.partials(), 0);
    assert_eq!(r.counters().inconsistent, 1);
    // Another total under the same key.
    push(&mut r, now, &frames[1]).unwrap();
    let other_total = frames_of(&big_plan(80), 1, 2);
    assert!(matches!(
        push(&mut r, now, &other_total[0]),
        Err(FragError::Inconsistent { .. })
    ));
    assert_eq!(r.counters().inconsistent, 2);
}

#[test]
fn malformed_fragments_are_rejected_by_rule() {
    let ok = |total: u32, offset: u32, len: usize| {
        let mut p = Vec::new();
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&offset.to_be_bytes());
        p.extend(std::iter::repeat_n(0u8, len));
        parse(MessageType::Plan, &p, MAX_MESSAGE_LEN).map(|(h, d)| (h, d.len()))
    };
    assert!(ok(3000, 0, 1470).is_ok());
    assert!(ok(3000, 2940, 60).is_ok());
    assert!(matches!(
        ok(3000, 1, 1470),
        Err(FragError::Malformed { .. })
    ));
    assert!(matches!(
        ok(3000, 2940, 61),
        Err(FragError::Malformed { .. })
    ));
    assert!(matches!(
        ok(3000, 4410, 0),
        Err(FragError::Malformed { .. })
    ));
    assert!(matches!(
        ok(1000, 0, 1000),
        Err(FragError::Malformed { .. })
    ));
    assert!(matches!(
        ok(MAX_MESSAGE_LEN as u32 + 1, 0, 1470),
        Err(FragError::TooLarge { .. })
    ));
    assert!(matches!(
        parse(MessageType::Plan, &[0; 11], MAX_MESSAGE_LEN),
        Err(FragError::Malformed { .. })
    ));
}

#[test]
fn a_storm_of_half_finished_messages_stays_within_the_stated_bound() {
    for limits in [Limits::CARD, Limits::MASTER] {
        let mut r = Reassembler::new(limits);
        let now = Instant::now();
        let mut peak = 0;
        // Hostile senders: every message the largest allowed, one fragment each, never
        // finished; many sources and ids.
        for i in 0..(limits.max_partials as u32 * 3) {
            let mut p = Vec::new();
            p.extend_from_slice(&i.to_be_bytes());
            p.extend_from_slice(&(MAX_MESSAGE_LEN as u32).to_be_bytes());
            p.extend_from_slice(&0u32.to_be_bytes());
            p.extend(std::iter::repeat_n(0xeeu8, FRAGMENT_DATA_LEN));
            let h = Header {
                flags: Flags::FRAGMENT,
                ..Header::new(MessageType::Inventory, i, i)
            };
            let mut buf = vec![0u8; crate::MAX_FRAME_LEN];
            let n = crate::frame::encode_frame(&mut buf, &link((i % 200) as u8), &h, &p).unwrap();
            push(&mut r, now, &buf[..n]).unwrap();
            peak = peak.max(r.memory_bytes());
        }
        assert!(r.partials() <= limits.max_partials);
        assert!(
            peak <= limits.memory_bound(),
            "peak {peak} over the bound {}",
            limits.memory_bound()
        );
        assert_eq!(
            r.counters().evicted,
            u64::from(limits.max_partials as u32 * 2)
        );
        assert_eq!(r.counters().completed, 0);
    }
    assert!(
        Limits::CARD.memory_bound() < 140 * 1024,
        "card: about 128 KiB"
    );
    assert!(
        Limits::MASTER.memory_bound() < 4300 * 1024,
        "master: about 4 MiB"
    );
}

#[test]
fn eviction_drops_the_oldest_partial() {
    let mut r = Reassembler::new(Limits::CARD);
    let now = Instant::now();
    let a = frames_of(&big_plan(30), 1, 1);
    let b = frames_of(&big_plan(30), 2, 1);
    let c = frames_of(&big_plan(30), 3, 1);
    push(&mut r, now, &a[0]).unwrap();
    push(&mut r, now, &b[0]).unwrap();
    push(&mut r, now, &c[0]).unwrap();
    assert_eq!(r.counters().evicted, 1);
    // b and c still complete; a lost its first piece.
    assert!(finish(&mut r, now, &b).is_some());
    assert!(finish(&mut r, now, &c).is_some());
    assert_eq!(finish(&mut r, now, &a), None);
}

#[test]
fn the_same_id_from_two_sources_or_two_types_are_two_messages() {
    let mut r = Reassembler::new(Limits::MASTER);
    let now = Instant::now();
    let a = frames_of(&big_plan(30), 1, 7);
    let b = frames_of(&big_plan(31), 2, 7);
    push(&mut r, now, &a[0]).unwrap();
    push(&mut r, now, &b[0]).unwrap();
    assert_eq!(r.partials(), 2);
    assert_eq!(
        finish(&mut r, now, &a).unwrap().decode().unwrap(),
        big_plan(30)
    );
    assert_eq!(
        finish(&mut r, now, &b).unwrap().decode().unwrap(),
        big_plan(31)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any message size, any arrival order, any duplicates, any one lost piece made up
    /// by a later copy: the message comes back exactly, once.
    #[test]
    fn any_order_duplicates_and_loss_reassemble_exactly(
        n in 12usize..220,
        order in proptest::collection::vec(any::<u32>(), 1..200),
        lose in any::<u16>(),
    ) {
        let msg = big_plan(n);
        let frames = frames_of(&msg, 9, 4);
        let count = frames.len();
        let lost = usize::from(lose) % count;
        let mut seq: Vec<usize> = (0..count).filter(|&i| i != lost).collect();
        // Shuffle and duplicate by the random order.
        for (k, x) in order.iter().enumerate() {
            let i = (*x as usize) % seq.len().max(1);
            let j = k % seq.len().max(1);
            seq.swap(i, j);
            if x % 3 == 0 {
                seq.push(seq[i]);
            }
        }
        let mut r = Reassembler::new(Limits::CARD);
        let now = Instant::now();
        for &i in &seq {
            prop_assert_eq!(push(&mut r, now, &frames[i]).unwrap(), None);
        }
        prop_assert_eq!(r.partials(), 1);
        let done = push(&mut r, now, &frames[lost]).unwrap().unwrap();
        prop_assert_eq!(done.decode().unwrap(), msg);
        prop_assert!(r.memory_bytes() <= Limits::CARD.memory_bound());
    }

    /// Every split point on either grid: a body of every length around the grid
    /// round-trips.
    #[test]
    fn every_length_splits_and_joins(extra in 0usize..20000, jumbo in any::<bool>()) {
        let grid = if jumbo { Grid::Jumbo } else { Grid::Standard };
        let msg = Message::Error(ErrorMsg {
            reason: ErrorReason::Malformed,
            detail: "d".repeat(MAX_CONTROL_BODY_LEN - 10 + extra),
        });
        let frames = encode_frames_on(grid, &link(3), &Header::new(msg.msg_type(), 0x55, 1), &msg).unwrap();
        let body_len = msg.encode_long_body().unwrap().len();
        let expect = if body_len <= MAX_CONTROL_BODY_LEN { 1 } else { body_len.div_ceil(grid.data_len()) };
        prop_assert_eq!(frames.len(), expect);
        if body_len <= MAX_CONTROL_BODY_LEN {
            let (_, back) = crate::msg::decode_frame(&frames[0], DEFAULT_ETHERTYPE).unwrap();
            prop_assert_eq!(back, msg);
        } else {
            let mut r = Reassembler::new(Limits::CARD);
            let now = Instant::now();
            let mut got = None;
            for f in frames.iter().rev() {
                if let Some(m) = push(&mut r, now, f).unwrap() {
                    got = Some(m);
                }
            }
            prop_assert_eq!(got.unwrap().decode().unwrap(), msg);
        }
    }

    /// Random bytes as fragment payloads never panic and never exceed the bound.
    #[test]
    fn hostile_fragments_never_panic(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1482), 1..40)) {
        let mut r = Reassembler::new(Limits::CARD);
        let now = Instant::now();
        for (i, p) in payloads.iter().enumerate() {
            let h = Header { flags: Flags::FRAGMENT, ..Header::new(MessageType::Plan, 1, i as u32) };
            let mut buf = vec![0u8; crate::MAX_FRAME_LEN];
            let n = crate::frame::encode_frame(&mut buf, &link(1), &h, p).unwrap();
            if let Ok(Some(m)) = push(&mut r, now, &buf[..n]) {
                let _ = m.decode();
            }
            prop_assert!(r.memory_bytes() <= Limits::CARD.memory_bound());
        }
    }
}

#[test]
fn describe_shows_a_fragment_and_check_accepts_it() {
    let frames = frames_of(&big_plan(30), 1, 6);
    let text = crate::describe_frame(&frames[1]);
    assert!(
        text.contains("fragment: message 6 bytes 1470..2940 of"),
        "{text}"
    );
    crate::check_frame(&frames[1]).unwrap();
}

#[test]
fn a_version_2_field_in_a_version_1_frame_is_rejected_both_ways() {
    let msg = Message::Error(ErrorMsg {
        reason: ErrorReason::MessageTooLarge {
            len: 70_000,
            max: 65_536,
        },
        detail: "plan".into(),
    });
    let h = Header::new(MessageType::Error, 1, 1).in_version(1);
    assert!(matches!(
        encode_frames(&link(1), &h, &msg),
        Err(EncodeError::Msg(MsgError::Invalid { .. }))
    ));
    let mut buf = vec![0u8; crate::MAX_FRAME_LEN];
    let body = msg.encode_body().unwrap();
    let n = crate::frame::encode_frame(&mut buf, &link(1), &h, &body).unwrap();
    assert!(matches!(
        crate::msg::decode_frame(&buf[..n], DEFAULT_ETHERTYPE),
        Err(MsgError::Invalid { .. })
    ));
    let v2 = frames_of(&msg, 1, 1);
    assert!(crate::msg::decode_frame(&v2[0], DEFAULT_ETHERTYPE).is_ok());
}
