//! Sender tests: join window, slice order, NACK repairs (exactly the missing blocks, before
//! new data, once per holdoff), completion, silence and lag drops, late joins, pacing,
//! flow control (window past the slowest member, slow members dropped, lone ones kept).

// Test data generators cut integers to bytes on purpose.
#![allow(clippy::cast_possible_truncation)]

use std::time::Duration;

use shelfboot_proto::data::DataView;
use shelfboot_proto::frame::{Flags, Frame, Link, MacAddr};
use shelfboot_proto::msg::{Digest, Nack, Progress, Stage};
use shelfboot_proto::{DEFAULT_ETHERTYPE, MAX_FRAME_LEN};

use super::*;

const BS: u16 = 128;
const MS: Duration = Duration::from_millis(1);
const SLICE: u64 = 128 * 128;

fn mac(i: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, i])
}

fn config() -> SenderConfig {
    let link = Link {
        dst: MacAddr([3, 0, 0, 0, 0, 1]),
        src: mac(0xfe),
        ethertype: DEFAULT_ETHERTYPE,
    };
    let mut c = SenderConfig::new(link, BS);
    c.join_window = 10 * MS;
    c.max_lag_bytes = 4 * SLICE;
    c.late_join_bytes = 2 * SLICE;
    c.silence_timeout = 100 * MS;
    c
}

fn sender(len: usize) -> Sender<Vec<u8>> {
    let d: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let info = ArtifactInfo {
        name: "pkg 2".to_owned(),
        sha256: Digest([7; 32]),
        size: len as u64,
    };
    Sender::new(config(), 5, info, d, Duration::ZERO).unwrap()
}

/// Polls at `now` until a frame comes; returns (slice, block, flags).
fn next(tx: &mut Sender<Vec<u8>>, now: &mut Duration) -> (u32, u16, Flags) {
    let mut buf = vec![0; MAX_FRAME_LEN];
    for _ in 0..1000 {
        match tx.poll(*now, &mut buf).unwrap() {
            SendStep::Frame { len, .. } => {
                let f = Frame::decode(&buf[..len], DEFAULT_ETHERTYPE).unwrap();
                let v = DataView::from_frame(&f).unwrap();
                assert_eq!(v.transfer(), 5);
                let h = v.header();
                let off = h.offset as usize;
                assert!(
                    v.data()
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == (off + i) as u8)
                );
                return (h.slice, h.block, f.header().flags);
            }
            SendStep::Wait { until } => *now = until,
            SendStep::Done => panic!("done"),
        }
    }
    panic!("no frame");
}

fn progress(tx: &Sender<Vec<u8>>, done: u64) -> Progress {
    Progress {
        stage: Stage::Fetching,
        artifact: Some(tx.artifact().sha256),
        done,
        total: tx.artifact().size,
    }
}

fn nack(slice: u32, blocks: &[u16]) -> Nack {
    let mut m = SliceBitmap::default();
    blocks.iter().for_each(|b| m.set(*b, true));
    Nack {
        transfer: 5,
        slice,
        missing: m.0,
    }
}

#[test]
fn waits_for_the_join_window_then_sends_in_slice_order() {
    let mut tx = sender(3 * SLICE as usize);
    let mut buf = vec![0; MAX_FRAME_LEN];
    let Admission::Joined(j) = tx.join(mac(1), 0, MS) else {
        panic!("not admitted")
    };
    assert_eq!((j.transfer, j.block_size, j.size), (5, BS, 3 * SLICE));
    assert_eq!(
        tx.poll(2 * MS, &mut buf).unwrap(),
        SendStep::Wait { until: 10 * MS }
    );
    let mut now = 10 * MS;
    for s in 0..3 {
        for b in 0..128 {
            let (fs, fb, flags) = next(&mut tx, &mut now);
            assert_eq!((fs, fb), (s, b));
            assert_eq!(flags.contains(Flags::LAST), s == 2 && b == 127);
        }
    }
    assert_eq!(tx.stats().data_bytes, 3 * SLICE);
}

#[test]
fn first_pass_starts_when_joins_go_quiet_but_never_after_the_window() {
    let mut c = config();
    c.join_window = 300 * MS;
    c.join_quiet = 50 * MS;
    c.silence_timeout = Duration::from_secs(10);
    let info = ArtifactInfo {
        name: "pkg 2".to_owned(),
        sha256: Digest([7; 32]),
        size: 3 * SLICE,
    };
    let mut buf = vec![0; MAX_FRAME_LEN];
    let data = vec![0u8; 3 * SLICE as usize];
    // A lone card: 50 ms after its join, not 300 ms after the session was made.
    let mut tx = Sender::new(c.clone(), 5, info.clone(), data.clone(), Duration::ZERO).unwrap();
    tx.join(mac(1), 0, 10 * MS);
    assert_eq!(
        tx.poll(20 * MS, &mut buf).unwrap(),
        SendStep::Wait { until: 60 * MS }
    );
    // Each join within the quiet time pushes the start back ...
    tx.join(mac(2), 0, 40 * MS);
    assert_eq!(
        tx.poll(60 * MS, &mut buf).unwrap(),
        SendStep::Wait { until: 90 * MS }
    );
    assert!(matches!(
        tx.poll(90 * MS, &mut buf).unwrap(),
        SendStep::Frame { .. }
    ));
    // ... but never past the join window.
    let mut tx = Sender::new(c, 5, info, data, Duration::ZERO).unwrap();
    for (i, t) in (0..300u32).step_by(40).enumerate() {
        assert!(matches!(
            tx.join(mac(1 + i as u8), 0, t * MS),
            Admission::Joined(_)
        ));
    }
    assert_eq!(
        tx.poll(290 * MS, &mut buf).unwrap(),
        SendStep::Wait { until: 300 * MS }
    );
    assert!(matches!(
        tx.poll(300 * MS, &mut buf).unwrap(),
        SendStep::Frame { .. }
    ));
}

#[test]
fn first_pass_starts_at_once_when_every_expected_member_has_joined() {
    let mut c = config();
    c.join_window = 300 * MS;
    c.join_quiet = 50 * MS;
    c.silence_timeout = Duration::from_secs(10);
    let info = ArtifactInfo {
        name: "pkg 3".to_owned(),
        sha256: Digest([8; 32]),
        size: 3 * SLICE,
    };
    let mut buf = vec![0; MAX_FRAME_LEN];
    let data = vec![0u8; 3 * SLICE as usize];
    // A lone card the caller expected alone: data `join_grace` after its join, no quiet
    // time.
    c.join_grace = 5 * MS;
    let mut tx = Sender::new(c.clone(), 5, info.clone(), data.clone(), Duration::ZERO).unwrap();
    tx.expect_members(1);
    tx.join(mac(1), 0, 10 * MS);
    assert_eq!(
        tx.poll(10 * MS, &mut buf).unwrap(),
        SendStep::Wait { until: 15 * MS }
    );
    assert!(matches!(
        tx.poll(15 * MS, &mut buf).unwrap(),
        SendStep::Frame { .. }
    ));
    // Two expected: the first join waits (quiet time), the second starts it.
    let mut tx = Sender::new(c, 5, info, data, Duration::ZERO).unwrap();
    tx.expect_members(2);
    tx.join(mac(1), 0, 10 * MS);
    assert_eq!(
        tx.poll(20 * MS, &mut buf).unwrap(),
        SendStep::Wait { until: 60 * MS }
    );
    tx.join(mac(2), 0, 30 * MS);
    assert!(matches!(
        tx.poll(35 * MS, &mut buf).unwrap(),
        SendStep::Frame { .. }
    ));
}

#[test]
fn nack_repairs_exactly_the_missing_blocks_before_new_data() {
    let mut tx = sender(4 * SLICE as usize);
    tx.join(mac(1), 0, Duration::ZERO);
    let mut now = 10 * MS;
    for _ in 0..130 {
        next(&mut tx, &mut now);
    }
    // Blocks 3 and 77 of slice 0 were sent; slice 1 block 5 was not yet.
    assert_eq!(
        tx.handle_nack(mac(1), &nack(0, &[3, 77]), now),
        ControlOutcome::Accepted
    );
    tx.handle_nack(mac(1), &nack(1, &[1, 5]), now);
    let got: Vec<_> = (0..4).map(|_| next(&mut tx, &mut now)).collect();
    assert_eq!((got[0].0, got[0].1), (0, 3));
    assert_eq!((got[1].0, got[1].1), (0, 77));
    assert_eq!(
        (got[2].0, got[2].1),
        (1, 1),
        "slice 1 block 1 was sent, block 5 not yet"
    );
    assert!(got[..3].iter().all(|f| f.2.contains(Flags::RETRANSMIT)));
    assert_eq!(
        (got[3].0, got[3].1, got[3].2),
        (1, 2, Flags::NONE),
        "first pass resumes"
    );
    let st = tx.stats();
    assert_eq!(
        (st.retransmit_frames, st.retransmit_bytes),
        (3, 3 * u64::from(BS))
    );
    // The same NACK right after the repair crossed it: suppressed within the holdoff.
    tx.handle_nack(mac(1), &nack(0, &[3]), now);
    assert_eq!(tx.stats().holdoff_suppressed, 1);
    assert_eq!(next(&mut tx, &mut now).2, Flags::NONE);
    // After the holdoff it is repaired again.
    now += 20 * MS;
    tx.handle_nack(mac(1), &nack(0, &[3]), now);
    let f = next(&mut tx, &mut now);
    assert_eq!((f.0, f.1), (0, 3));
}

#[test]
fn completion_of_every_member_finishes_the_session() {
    let mut tx = sender(SLICE as usize + 10);
    tx.join(mac(1), 0, Duration::ZERO);
    tx.join(mac(2), 0, Duration::ZERO);
    let mut now = 10 * MS;
    for _ in 0..129 {
        next(&mut tx, &mut now);
    }
    let size = tx.artifact().size;
    tx.handle_progress(mac(1), &progress(&tx, size), now);
    assert_eq!(
        tx.next_event(),
        Some(SenderEvent::Completed { member: mac(1) })
    );
    assert!(!tx.is_finished());
    // The repeated final report is taken quietly: no second event, not counted as ignored.
    tx.handle_progress(mac(1), &progress(&tx, size), now);
    assert_eq!(tx.next_event(), None);
    assert_eq!(tx.stats().ignored_control, 0);
    tx.handle_progress(mac(2), &progress(&tx, size), now);
    assert_eq!(
        tx.next_event(),
        Some(SenderEvent::Completed { member: mac(2) })
    );
    assert_eq!(tx.next_event(), Some(SenderEvent::Finished));
    assert_eq!(
        tx.poll(now, &mut vec![0; MAX_FRAME_LEN]).unwrap(),
        SendStep::Done
    );
    assert_eq!(
        tx.join(mac(3), 0, now),
        Admission::Later(LaterReason::Finished)
    );
}

#[test]
fn silent_and_lagging_members_are_dropped_with_their_resume_point() {
    let mut tx = sender(20 * SLICE as usize);
    for i in 1..=3 {
        tx.join(mac(i), 0, Duration::ZERO);
    }
    let mut now = 10 * MS;
    for i in 0..(8 * 128) {
        next(&mut tx, &mut now);
        // Member 1 keeps up, member 2 is stuck at slice 1, member 3 says nothing.
        if i % 128 == 127 {
            tx.handle_progress(
                mac(1),
                &progress(&tx, u64::from(tx.position()) * SLICE),
                now,
            );
        }
    }
    tx.handle_progress(mac(1), &progress(&tx, 7 * SLICE), now);
    assert_eq!(
        tx.handle_progress(mac(2), &progress(&tx, SLICE + 5), now),
        ControlOutcome::MemberDropped
    );
    assert_eq!(
        tx.next_event(),
        Some(SenderEvent::Dropped {
            member: mac(2),
            cause: DropCause::Lagging { behind: 7 },
            resume_slices: 1
        })
    );
    assert_eq!(
        tx.join(mac(2), 1, now),
        Admission::Later(LaterReason::WasDropped)
    );
    // Silence: member 3 was last heard at its join.
    let later = Duration::from_millis(101).max(now + MS);
    tx.handle_progress(mac(1), &progress(&tx, 8 * SLICE), later);
    let _ = tx.poll(later, &mut vec![0; MAX_FRAME_LEN]).unwrap();
    match tx.next_event() {
        Some(SenderEvent::Dropped {
            member,
            cause: DropCause::Silent { .. },
            resume_slices: 0,
        }) => {
            assert_eq!(member, mac(3));
        }
        other => panic!("{other:?}"),
    }
    // NACKs from dropped members are ignored.
    assert_eq!(
        tx.handle_nack(mac(3), &nack(0, &[1]), later),
        ControlOutcome::Ignored(IgnoreReason::NotActive)
    );
}

#[test]
fn late_joiners_are_admitted_only_close_to_the_first_pass() {
    let mut tx = sender(10 * SLICE as usize);
    tx.join(mac(1), 0, Duration::ZERO);
    let mut now = 10 * MS;
    for _ in 0..(3 * 128) {
        next(&mut tx, &mut now);
    }
    assert_eq!(tx.position(), 3);
    assert!(matches!(tx.join(mac(2), 1, now), Admission::Joined(j) if j.first_slice == 3));
    assert_eq!(
        tx.join(mac(3), 0, now),
        Admission::Later(LaterReason::TooFarBehind { behind: 3 })
    );
}

#[test]
fn foreign_control_messages_are_ignored() {
    let mut tx = sender(2 * SLICE as usize);
    tx.join(mac(1), 0, Duration::ZERO);
    let mut wrong = nack(0, &[1]);
    wrong.transfer = 6;
    assert_eq!(
        tx.handle_nack(mac(1), &wrong, MS),
        ControlOutcome::Ignored(IgnoreReason::WrongTransfer)
    );
    assert_eq!(
        tx.handle_nack(mac(9), &nack(0, &[1]), MS),
        ControlOutcome::Ignored(IgnoreReason::NotMember)
    );
    assert_eq!(
        tx.handle_nack(mac(1), &nack(2, &[1]), MS),
        ControlOutcome::Ignored(IgnoreReason::OutOfRange)
    );
    let mut p = progress(&tx, 0);
    p.artifact = Some(Digest([0; 32]));
    assert_eq!(
        tx.handle_progress(mac(1), &p, MS),
        ControlOutcome::Ignored(IgnoreReason::WrongArtifact)
    );
    assert_eq!(tx.stats().ignored_control, 4);
}

#[test]
fn pacing_holds_the_configured_rate() {
    let mut tx = sender(1000 * SLICE as usize);
    tx.join(mac(1), 0, Duration::ZERO);
    let mut now = 10 * MS;
    let end = now + Duration::from_millis(100);
    let mut buf = vec![0; MAX_FRAME_LEN];
    loop {
        match tx.poll(now, &mut buf).unwrap() {
            SendStep::Frame { .. } => {}
            SendStep::Wait { until } if until < end => now = until,
            _ => break,
        }
        // Keep the member alive.
        if tx.stats().frames.is_multiple_of(1000) {
            let done = u64::from(tx.position()) * SLICE;
            tx.handle_progress(mac(1), &progress(&tx, done), now);
        }
    }
    // 125 MB/s for 100 ms plus the burst; the last batch may not have been due yet.
    let wire = tx.stats().wire_bytes;
    let c = config();
    let expect = 12_500_000 + c.burst;
    assert!(
        wire <= expect + 1500 && wire + c.batch + 1500 >= expect,
        "{wire} bytes in 100 ms"
    );
}

struct Broken;

impl BlockSource for Broken {
    fn read_at(&mut self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("EIO"))
    }
}

#[test]
fn read_errors_name_the_artifact_and_offset() {
    let info = ArtifactInfo {
        name: "kernel 6.1".to_owned(),
        sha256: Digest([0; 32]),
        size: 1000,
    };
    let mut tx = Sender::new(config(), 1, info, Broken, Duration::ZERO).unwrap();
    tx.join(mac(1), 0, Duration::ZERO);
    let err = tx.poll(10 * MS, &mut vec![0; MAX_FRAME_LEN]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("kernel 6.1") && msg.contains("offset 0"),
        "{msg}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Any sequence of joins, NACKs (any transfer, slice, bitmap) and Progress reports
    /// (any position) from any MAC, at any times: never a panic, every frame is a valid
    /// data frame of this transfer, repairs only for blocks already sent, queue bounded.
    #[test]
    fn any_control_sequence_is_safe(
        len in 1usize..200_000,
        ops in proptest::collection::vec(
            (0u8..4, 0u8..6, proptest::prelude::any::<u32>(), proptest::prelude::any::<[u8; 16]>(), 0u64..3000),
            1..200,
        ),
    ) {
        let mut c = config();
        c.max_repair_slices = 3;
        let d: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let info = ArtifactInfo { name: "p 1".to_owned(), sha256: Digest([1; 32]), size: len as u64 };
        let mut tx = Sender::new(c, 5, info, d, Duration::ZERO).unwrap();
        let slices = tx.geometry().slices();
        let mut now = Duration::ZERO;
        let mut buf = vec![0; MAX_FRAME_LEN];
        for (op, who, x, bits, dt) in ops {
            now += Duration::from_micros(dt);
            match op {
                0 => {
                    let _ = tx.join(mac(who), x % (slices + 2), now);
                }
                1 => {
                    let n = Nack { transfer: if x % 7 == 0 { 6 } else { 5 }, slice: x % (slices + 2), missing: bits };
                    let _ = tx.handle_nack(mac(who), &n, now);
                }
                2 => {
                    let p = Progress {
                        stage: Stage::Fetching,
                        artifact: Some(Digest([1; 32])),
                        done: u64::from(x) % (len as u64 + 10),
                        total: len as u64,
                    };
                    let _ = tx.handle_progress(mac(who), &p, now);
                }
                _ => {
                    let cursor = (tx.position(), tx.cur_block);
                    for _ in 0..50 {
                        match tx.poll(now, &mut buf).unwrap() {
                            SendStep::Frame { len: n, retransmit } => {
                                let f = Frame::decode(&buf[..n], DEFAULT_ETHERTYPE).unwrap();
                                let v = DataView::from_frame(&f).unwrap();
                                proptest::prop_assert_eq!(v.transfer(), 5);
                                let h = v.header();
                                proptest::prop_assert!(h.slice < slices);
                                if retransmit {
                                    proptest::prop_assert!((h.slice, h.block) < cursor);
                                }
                            }
                            SendStep::Wait { until } => proptest::prop_assert!(until > now),
                            SendStep::Done => break,
                        }
                    }
                }
            }
            while tx.next_event().is_some() {}
            proptest::prop_assert!(tx.stats().repair_queue_high_water <= 3);
        }
    }
}

/// Polls at `now` once: `Some((slice, block, retransmit))` if a frame went.
fn try_next(tx: &mut Sender<Vec<u8>>, now: Duration) -> Option<(u32, u16, bool)> {
    let mut buf = vec![0; MAX_FRAME_LEN];
    match tx.poll(now, &mut buf).unwrap() {
        SendStep::Frame { len, retransmit } => {
            let f = Frame::decode(&buf[..len], DEFAULT_ETHERTYPE).unwrap();
            let h = DataView::from_frame(&f).unwrap().header();
            Some((h.slice, h.block, retransmit))
        }
        SendStep::Wait { .. } | SendStep::Done => None,
    }
}

/// A sender of `slices` slices with a flow window of two slices, no pacing limit to speak of.
fn flow_sender(slices: u64, hold: Duration) -> Sender<Vec<u8>> {
    let len = (slices * SLICE) as usize;
    let d: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let info = ArtifactInfo {
        name: "pkg 2".to_owned(),
        sha256: Digest([7; 32]),
        size: len as u64,
    };
    let mut c = config();
    c.flow_window = 2 * SLICE;
    c.flow_hold = hold;
    c.max_lag_bytes = 100 * SLICE;
    c.silence_timeout = Duration::from_secs(10);
    c.burst = 1 << 30;
    Sender::new(c, 5, info, d, Duration::ZERO).unwrap()
}

#[test]
fn first_pass_stops_a_window_past_the_slowest_member_but_repairs_go() {
    let mut tx = flow_sender(6, Duration::from_secs(1));
    let _ = tx.join(mac(1), 0, Duration::ZERO);
    let now = 20 * MS;
    let mut sent = Vec::new();
    while let Some(f) = try_next(&mut tx, now) {
        sent.push(f);
        assert!(sent.len() <= 256, "ran past the window");
    }
    assert_eq!(sent.len(), 256, "two slices, then the window is full");
    assert_eq!(tx.flow_limit(), 2);
    assert_eq!(tx.stats().flow_stops, 1);
    // A repair is not held back by the window.
    tx.handle_nack(mac(1), &nack(1, &[7]), now);
    assert_eq!(try_next(&mut tx, now), Some((1, 7, true)));
    assert_eq!(try_next(&mut tx, now), None);
    // The member reports one slice stored: one more slice may go, and no more.
    tx.handle_progress(mac(1), &progress(&tx, SLICE), now + MS);
    let mut more = 0;
    while let Some((s, _, r)) = try_next(&mut tx, now + MS) {
        assert_eq!((s, r), (2, false));
        more += 1;
    }
    assert_eq!(more, 128);
}

#[test]
fn a_member_that_keeps_the_pass_under_the_floor_is_dropped_but_a_lone_one_never() {
    // Two members: mac 2 stores everything at once, mac 1 nothing.
    let mut tx = flow_sender(8, 100 * MS);
    let _ = tx.join(mac(1), 0, Duration::ZERO);
    let _ = tx.join(mac(2), 0, Duration::ZERO);
    let mut now = 20 * MS;
    let mut dropped = None;
    while now < Duration::from_secs(1) && dropped.is_none() {
        while try_next(&mut tx, now).is_some() {}
        let done = u64::from(tx.position()) * SLICE;
        tx.handle_progress(mac(2), &progress(&tx, done), now);
        tx.handle_progress(mac(1), &progress(&tx, 0), now);
        while try_next(&mut tx, now).is_some() {}
        while let Some(ev) = tx.next_event() {
            if let SenderEvent::Dropped { member, cause, .. } = ev {
                dropped = Some((member, cause, now));
            }
        }
        now += 10 * MS;
    }
    let (member, cause, at) = dropped.expect("the slow member was never dropped");
    assert_eq!(member, mac(1));
    assert!(matches!(cause, DropCause::Slow { rate, .. } if rate < 5_000_000));
    assert!(at > 100 * MS && at < 300 * MS, "dropped at {at:?}");
    // Then the pass runs on for the fast member.
    while try_next(&mut tx, now).is_some() {}
    assert!(tx.position() > 2);

    // Alone, the same member is only flow-controlled, never dropped for it.
    let mut tx = flow_sender(8, 100 * MS);
    let _ = tx.join(mac(1), 0, Duration::ZERO);
    let mut now = 20 * MS;
    while now < Duration::from_secs(2) {
        while try_next(&mut tx, now).is_some() {}
        tx.handle_progress(mac(1), &progress(&tx, 0), now);
        now += 10 * MS;
    }
    assert_eq!(tx.next_event(), None);
    assert_eq!(tx.position(), 2);
    assert_eq!(tx.members().next().unwrap().1.status, MemberStatus::Active);
}
