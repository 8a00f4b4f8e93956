//! Receiver tests: frame validation and drops, ordering and the window bound, NACK timing,
//! resume, verification failures, and a property test over arbitrary frame sequences.

// Test data generators cut integers to bytes on purpose.
#![allow(clippy::cast_possible_truncation)]

use std::time::Duration;

use proptest::prelude::*;
use sha2::{Digest as _, Sha256};
use shelfboot_proto::data::{DataHeader, DataView, encode_data_payload};
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::{Join, Message};

use super::*;
use crate::geometry::{ArtifactInfo, Geometry};

const BS: u16 = 128;
const MS: Duration = Duration::from_millis(1);

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn info(d: &[u8]) -> ArtifactInfo {
    ArtifactInfo {
        name: "test-pkg 1.0".to_owned(),
        sha256: Digest::of(d),
        size: d.len() as u64,
    }
}

fn join(i: &ArtifactInfo, transfer: u32, block_size: u16) -> Join {
    Join {
        transfer,
        artifact: i.sha256,
        size: i.size,
        group: MacAddr([3, 0, 0, 0, 0, 1]),
        block_size,
        first_slice: 0,
    }
}

/// The payload of block `b` of slice `s` of `d`.
fn payload(d: &[u8], s: u32, b: u16, bs: u16) -> Vec<u8> {
    let g = Geometry::new(d.len() as u64, bs).unwrap();
    let off = g.block_offset(s, b) as usize;
    let len = g.block_len(s, b).unwrap();
    let mut out = vec![0; 64 + usize::from(bs)];
    let n = encode_data_payload(
        &mut out,
        &DataHeader::new(s, b, bs).unwrap(),
        &d[off..off + len],
    )
    .unwrap();
    out.truncate(n);
    out
}

fn feed(rx: &mut Receiver<Vec<u8>>, p: &[u8], transfer: u32, now: Duration) -> DataOutcome {
    let view = DataView::from_payload(transfer, p).unwrap();
    rx.on_data(&view, now).unwrap()
}

fn cfg(window_slices: u64) -> ReceiverConfig {
    ReceiverConfig {
        window_bytes: window_slices * u64::from(BS) * 128,
        ..ReceiverConfig::default()
    }
}

fn nacks(msgs: &[Message]) -> Vec<(u32, Vec<u16>)> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Nack(n) => Some((n.slice, SliceBitmap(n.missing).missing().collect())),
            _ => None,
        })
        .collect()
}

#[test]
fn in_order_blocks_complete_and_verify() {
    let d = data(3 * 128 * 128 + 100);
    let i = info(&d);
    let mut rx = Receiver::new(
        cfg(2),
        i.clone(),
        &join(&i, 9, BS),
        Resume::fresh(),
        Vec::new(),
        MS,
    )
    .unwrap();
    let g = rx.geometry();
    let mut last = DataOutcome::Accepted;
    for s in 0..g.slices() {
        for b in 0..g.blocks_in_slice(s) {
            last = feed(&mut rx, &payload(&d, s, b, BS), 9, MS);
        }
    }
    assert_eq!(last, DataOutcome::Completed);
    assert_eq!(rx.state(), ReceiverState::Complete);
    assert_eq!(rx.stats().buffered_bytes, 0, "buffers released");
    assert!(rx.stats().buffered_high_water <= 2 * 128 * 128);
    assert_eq!(rx.into_sink(), d);
}

#[test]
fn bad_frames_are_counted_and_dropped() {
    let d = data(2 * 128 * 128 + 50);
    let i = info(&d);
    let mut rx = Receiver::new(
        cfg(1),
        i.clone(),
        &join(&i, 9, BS),
        Resume::fresh(),
        Vec::new(),
        MS,
    )
    .unwrap();
    let drop = |r| DataOutcome::Dropped(r);
    assert_eq!(
        feed(&mut rx, &payload(&d, 0, 0, BS), 8, MS),
        drop(DropReason::WrongTransfer)
    );
    // Another block size: a valid frame of a session cut differently.
    assert_eq!(
        feed(&mut rx, &payload(&d, 0, 0, 192), 9, MS),
        drop(DropReason::BlockSizeMismatch)
    );
    // Past the end: the last slice has one 50-byte block; block 1 does not exist.
    let mut big = d.clone();
    big.resize(4 * 128 * 128 + 10, 0);
    assert_eq!(
        feed(&mut rx, &payload(&big, 2, 1, BS), 9, MS),
        drop(DropReason::OutOfRange)
    );
    assert_eq!(
        feed(&mut rx, &payload(&big, 3, 0, BS), 9, MS),
        drop(DropReason::OutOfRange)
    );
    // The last block with a full block's length.
    assert_eq!(
        feed(&mut rx, &payload(&big, 2, 0, BS), 9, MS),
        drop(DropReason::BadLength)
    );
    // Slice 1 is past a one-slice window.
    assert_eq!(
        feed(&mut rx, &payload(&d, 1, 0, BS), 9, MS),
        drop(DropReason::BeyondWindow)
    );
    assert_eq!(
        feed(&mut rx, &payload(&d, 0, 5, BS), 9, MS),
        DataOutcome::Accepted
    );
    assert_eq!(
        feed(&mut rx, &payload(&d, 0, 5, BS), 9, MS),
        drop(DropReason::Duplicate)
    );
    let st = rx.stats();
    assert_eq!(
        (
            st.wrong_transfer,
            st.block_size_mismatch,
            st.out_of_range,
            st.bad_length
        ),
        (1, 1, 2, 1)
    );
    assert_eq!((st.beyond_window, st.duplicates, st.accepted), (1, 1, 1));
    assert!(rx.sink().is_empty());
}

#[test]
fn out_of_order_slices_are_delivered_in_order_within_the_window() {
    let d = data(4 * 128 * 128);
    let i = info(&d);
    let mut rx = Receiver::new(
        cfg(4),
        i.clone(),
        &join(&i, 1, BS),
        Resume::fresh(),
        Vec::new(),
        MS,
    )
    .unwrap();
    for s in (0..4).rev() {
        for b in (0..128).rev() {
            feed(&mut rx, &payload(&d, s, b, BS), 1, MS);
            if s > 0 {
                assert!(rx.sink().is_empty(), "nothing before slice 0 is whole");
            }
        }
    }
    assert_eq!(rx.state(), ReceiverState::Complete);
    assert_eq!(rx.stats().buffered_high_water, 4 * 128 * 128);
    assert_eq!(rx.into_sink(), d);
}

#[test]
fn nacks_when_the_sender_moved_on_and_when_idle() {
    let d = data(3 * 128 * 128);
    let i = info(&d);
    let c = cfg(3);
    let (retry, idle) = (c.nack_retry, c.idle_nack);
    let mut rx = Receiver::new(
        c,
        i.clone(),
        &join(&i, 1, BS),
        Resume::fresh(),
        Vec::new(),
        MS,
    )
    .unwrap();
    let mut out = Vec::new();
    for b in (0..128).filter(|b| *b != 3 && *b != 77) {
        feed(&mut rx, &payload(&d, 0, b, BS), 1, MS);
    }
    rx.poll(MS, &mut out);
    assert!(nacks(&out).is_empty(), "sender may still be in slice 0");
    feed(&mut rx, &payload(&d, 1, 0, BS), 1, 2 * MS);
    out.clear();
    rx.poll(2 * MS, &mut out);
    assert_eq!(nacks(&out), vec![(0, vec![3, 77])]);
    out.clear();
    rx.poll(3 * MS, &mut out);
    assert!(nacks(&out).is_empty(), "not again before the retry time");
    out.clear();
    let wake = rx.poll(2 * MS + retry - MS, &mut out).unwrap();
    assert!(wake <= 2 * MS + retry, "wake {wake:?} after the retry time");
    out.clear();
    rx.poll(2 * MS + retry, &mut out);
    assert_eq!(nacks(&out), vec![(0, vec![3, 77])]);
    // Idle: slices 1 (127 blocks missing) and 2 (all missing) are NACKed too; slice 0
    // not yet: its second NACK brought none of its blocks, so its retry time doubled.
    out.clear();
    rx.poll(2 * MS + idle + retry, &mut out);
    let n = nacks(&out);
    assert_eq!(n.len(), 2, "{n:?}");
    assert_eq!((n[0].0, n[0].1.len()), (1, 127));
    assert_eq!((n[1].0, n[1].1.len()), (2, 128));
    out.clear();
    let wake = rx.poll(2 * MS + retry + 2 * retry - MS, &mut out).unwrap();
    assert!(nacks(&out).is_empty(), "{out:?}");
    assert!(wake <= 2 * MS + 3 * retry, "wake {wake:?}");
    out.clear();
    rx.poll(2 * MS + 3 * retry, &mut out);
    assert_eq!(
        nacks(&out),
        vec![(0, vec![3, 77])],
        "backed off, not given up"
    );
    // A block of slice 0 arriving resets its interval.
    feed(&mut rx, &payload(&d, 0, 3, BS), 1, 2 * MS + 3 * retry);
    out.clear();
    rx.poll(2 * MS + 4 * retry, &mut out);
    assert!(nacks(&out).iter().any(|n| *n == (0, vec![77])), "{out:?}");
    // Repairs complete it.
    feed(&mut rx, &payload(&d, 0, 77, BS), 1, 100 * MS);
    for s in 1..3 {
        for b in 0..128 {
            feed(&mut rx, &payload(&d, s, b, BS), 1, 100 * MS);
        }
    }
    assert_eq!(rx.state(), ReceiverState::Complete);
    out.clear();
    rx.poll(100 * MS, &mut out);
    assert!(matches!(&out[..], [Message::Progress(p)] if p.done == p.total));
}

/// A Join into a session whose first pass is already past us (a re-Fetch after a stall,
/// a late join): no frame of the session may ever come by itself, so if none arrives
/// within `idle_nack` the whole window is NACKed. Not at once (a slow card may hold that
/// pass unread in its queue), and a Join within the join window (first pass not
/// started) NACKs nothing before data arrives.
#[test]
fn join_past_the_first_pass_nacks_without_any_frame() {
    let d = data(3 * 128 * 128);
    let i = info(&d);
    let c = cfg(3);
    let idle = c.idle_nack;
    let fresh = |first_slice| {
        let j = Join {
            first_slice,
            ..join(&i, 1, BS)
        };
        Receiver::new(c.clone(), i.clone(), &j, Resume::fresh(), Vec::new(), MS).unwrap()
    };
    let mut out = Vec::new();
    let mut waiting = fresh(0);
    waiting.poll(MS + idle, &mut out);
    assert!(nacks(&out).is_empty(), "{out:?}");
    let mut late = fresh(2);
    out.clear();
    let wake = late.poll(MS, &mut out).unwrap();
    assert!(nacks(&out).is_empty(), "not before idle_nack: {out:?}");
    assert!(wake <= MS + idle, "wake {wake:?}");
    out.clear();
    let wake = late.poll(MS + idle, &mut out).unwrap();
    // Idle and NACKed: the next wake is a retry time, not "poll me again at once".
    assert!(wake >= MS + idle + c.nack_retry / 2, "wake {wake:?}");
    let n = nacks(&out);
    assert_eq!(
        n.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![0, 1, 2],
        "{n:?}"
    );
    assert!(n.iter().all(|x| x.1.len() == 128));
    // A frame of the pass read from the queue meanwhile: the normal rules apply.
    let mut queued = fresh(3);
    feed(&mut queued, &payload(&d, 0, 0, BS), 1, 2 * MS);
    out.clear();
    queued.poll(2 * MS + idle / 2, &mut out);
    assert!(nacks(&out).is_empty(), "{out:?}");
    // The same through set_session (the card re-Fetched into its running session).
    let mut rejoined = fresh(0);
    rejoined
        .set_session(
            &Join {
                first_slice: 3,
                ..join(&i, 1, BS)
            },
            2 * MS,
        )
        .unwrap();
    out.clear();
    rejoined.poll(2 * MS + idle, &mut out);
    assert_eq!(nacks(&out).len(), 3, "{out:?}");
}

#[test]
fn progress_reports_position_and_doubles_as_heartbeat() {
    let d = data(2 * 128 * 128);
    let i = info(&d);
    let c = cfg(2);
    let every = c.progress_interval;
    let mut rx = Receiver::new(
        c,
        i.clone(),
        &join(&i, 1, BS),
        Resume::fresh(),
        Vec::new(),
        MS,
    )
    .unwrap();
    let mut out = Vec::new();
    rx.poll(MS, &mut out);
    assert!(matches!(&out[..], [Message::Progress(p)] if p.done == 0 && p.total == i.size));
    out.clear();
    assert_eq!(rx.poll(2 * MS, &mut out), Some(MS + every));
    assert!(out.is_empty());
    rx.poll(MS + every, &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn progress_by_bytes_is_due_at_once_not_at_the_next_timed_poll() {
    let d = data(8 * 128 * 128);
    let i = info(&d);
    let c = ReceiverConfig {
        progress_bytes: 2 * 128 * 128,
        ..cfg(4)
    };
    let mut rx = Receiver::new(
        c,
        i.clone(),
        &join(&i, 1, BS),
        Resume::fresh(),
        Vec::new(),
        MS,
    )
    .unwrap();
    let mut out = Vec::new();
    let wake = rx.poll(MS, &mut out).unwrap();
    assert_eq!(out.len(), 1, "first report: {out:?}");
    out.clear();
    // One slice delivered: not yet a step.
    for b in 0..128 {
        feed(&mut rx, &payload(&d, 0, b, BS), 1, 2 * MS);
    }
    assert!(!rx.report_due());
    // The second slice completes the step, long before the timed wake-up.
    for b in 0..128 {
        feed(&mut rx, &payload(&d, 1, b, BS), 1, 3 * MS);
        if b < 127 {
            assert!(!rx.report_due(), "block {b}");
        }
    }
    assert!(rx.report_due());
    assert!(3 * MS < wake);
    rx.poll(3 * MS, &mut out);
    assert!(
        matches!(&out[..], [Message::Progress(p)] if p.done == 2 * 128 * 128),
        "{out:?}"
    );
    assert!(!rx.report_due());
}

/// Without `verify_digest` (the sink checks the sha256 of what it holds) the stream is
/// not hashed: a transfer whose bytes are not the artifact completes, and it is the
/// sink's check that must refuse it.
#[test]
fn without_verify_digest_the_sink_is_trusted_to_check() {
    let d = data(1000);
    let mut i = info(&d);
    i.sha256.0[0] ^= 1;
    let c = ReceiverConfig {
        verify_digest: false,
        ..cfg(1)
    };
    let mut rx = Receiver::new(
        c,
        i.clone(),
        &join(&i, 1, BS),
        Resume::fresh(),
        Vec::new(),
        MS,
    )
    .unwrap();
    let mut last = DataOutcome::Accepted;
    for b in 0..8 {
        last = feed(&mut rx, &payload(&d, 0, b, BS), 1, MS);
    }
    assert_eq!(last, DataOutcome::Completed);
    assert_eq!(rx.state(), ReceiverState::Complete);
    assert_eq!(rx.into_sink(), d);
}

#[test]
fn digest_mismatch_names_artifact_and_both_digests() {
    let d = data(1000);
    let mut i = info(&d);
    i.sha256.0[0] ^= 1;
    let mut rx = Receiver::new(
        cfg(1),
        i.clone(),
        &join(&i, 1, BS),
        Resume::fresh(),
        Vec::new(),
        MS,
    )
    .unwrap();
    for b in 0..8 {
        let p = payload(&d, 0, b, BS);
        let view = DataView::from_payload(1, &p).unwrap();
        match rx.on_data(&view, MS) {
            Ok(DataOutcome::Accepted) => {}
            Err(e @ ReceiverError::DigestMismatch { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("test-pkg 1.0"), "{msg}");
                assert!(msg.contains(&i.sha256.to_string()), "{msg}");
                let actual = Digest::of(&d);
                assert!(msg.contains(&actual.to_string()), "{msg}");
            }
            other => panic!("block {b}: {other:?}"),
        }
    }
    assert_eq!(rx.state(), ReceiverState::Failed);
    let p = payload(&d, 0, 0, BS);
    let view = DataView::from_payload(1, &p).unwrap();
    assert_eq!(
        rx.on_data(&view, MS).unwrap(),
        DataOutcome::Dropped(DropReason::NotReceiving)
    );
}

struct FailingSink;

impl ByteSink for FailingSink {
    fn write(&mut self, _: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err("volume full".into())
    }
}

#[test]
fn sink_failure_stops_the_receiver() {
    let d = data(300);
    let i = info(&d);
    let mut rx = Receiver::new(
        cfg(1),
        i.clone(),
        &join(&i, 1, BS),
        Resume::fresh(),
        FailingSink,
        MS,
    )
    .unwrap();
    let mut res = Ok(DataOutcome::Accepted);
    for b in 0..3 {
        let p = payload(&d, 0, b, BS);
        res = rx.on_data(&DataView::from_payload(1, &p).unwrap(), MS);
    }
    assert!(
        matches!(
            res,
            Err(ReceiverError::Sink {
                offset: 0,
                len: 300,
                ..
            })
        ),
        "{res:?}"
    );
    assert_eq!(rx.state(), ReceiverState::Failed);
    assert_eq!(rx.poll(MS, &mut Vec::new()), None);
}

#[test]
fn resume_writes_only_what_follows_the_prefix() {
    let d = data(5 * 128 * 128 + 9);
    let i = info(&d);
    // An unaligned prefix, as after a block size change.
    let held = 128 * 128 + 1000;
    let resume = Resume::new(held as u64, Sha256::new_with_prefix(&d[..held]));
    assert_eq!(resume.have_slices(i.size, BS), 1);
    let mut rx = Receiver::new(
        cfg(2),
        i.clone(),
        &join(&i, 4, BS),
        resume,
        d[..held].to_vec(),
        MS,
    )
    .unwrap();
    assert_eq!(rx.fetch().have_slices, 1);
    // The session starts at slice 1; blocks wholly inside the prefix are duplicates.
    let g = rx.geometry();
    assert_eq!(
        feed(&mut rx, &payload(&d, 1, 0, BS), 4, MS),
        DataOutcome::Dropped(DropReason::Duplicate)
    );
    for s in 1..g.slices() {
        for b in 0..g.blocks_in_slice(s) {
            feed(&mut rx, &payload(&d, s, b, BS), 4, MS);
        }
    }
    assert_eq!(rx.state(), ReceiverState::Complete);
    assert_eq!(rx.into_sink(), d);
}

#[test]
fn resume_past_the_end_and_wrong_join_are_refused() {
    let d = data(100);
    let i = info(&d);
    let r = Resume::new(101, Sha256::new());
    assert!(matches!(
        Receiver::new(cfg(1), i.clone(), &join(&i, 1, BS), r, Vec::new(), MS),
        Err(ReceiverError::ResumePastEnd { .. })
    ));
    let mut j = join(&i, 1, BS);
    j.size += 1;
    let e = Receiver::new(cfg(1), i.clone(), &j, Resume::fresh(), Vec::new(), MS).unwrap_err();
    assert!(e.to_string().contains("size"), "{e}");
    let small = ReceiverConfig {
        window_bytes: 1000,
        ..ReceiverConfig::default()
    };
    assert!(matches!(
        Receiver::new(
            small,
            i.clone(),
            &join(&i, 1, BS),
            Resume::fresh(),
            Vec::new(),
            MS
        ),
        Err(ReceiverError::WindowTooSmall { .. })
    ));
}

#[test]
fn a_resumed_complete_artifact_verifies_at_once() {
    let d = data(1000);
    let i = info(&d);
    let r = Resume::new(1000, Sha256::new_with_prefix(&d));
    let rx = Receiver::new(cfg(1), i.clone(), &join(&i, 1, BS), r, d.clone(), MS).unwrap();
    assert_eq!(rx.state(), ReceiverState::Complete);
}

#[test]
fn new_session_with_another_block_size_keeps_delivered_bytes() {
    let d = data(3 * 128 * 128);
    let i = info(&d);
    let mut rx = Receiver::new(
        cfg(4),
        i.clone(),
        &join(&i, 1, BS),
        Resume::fresh(),
        Vec::new(),
        MS,
    )
    .unwrap();
    for b in 0..128 {
        feed(&mut rx, &payload(&d, 0, b, BS), 1, MS);
    }
    feed(&mut rx, &payload(&d, 1, 0, BS), 1, MS);
    assert_eq!(rx.delivered(), 128 * 128);
    rx.set_session(&join(&i, 2, 192), 2 * MS).unwrap();
    let g = rx.geometry();
    assert_eq!(
        feed(&mut rx, &payload(&d, 0, 0, 192), 1, MS),
        DataOutcome::Dropped(DropReason::WrongTransfer)
    );
    for s in 0..g.slices() {
        for b in 0..g.blocks_in_slice(s) {
            feed(&mut rx, &payload(&d, s, b, 192), 2, 3 * MS);
        }
    }
    assert_eq!(rx.state(), ReceiverState::Complete);
    assert_eq!(rx.into_sink(), d);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any interleaving, duplication and loss of valid frames, mixed with foreign ones:
    /// the receiver is either complete with the exact bytes, or still receiving with a
    /// correct prefix in the sink, within its window, and its NACKs name only missing blocks.
    #[test]
    fn any_frame_sequence_is_complete_or_pending_never_corrupt(
        len in 1usize..40_000,
        window in 1u64..4,
        picks in proptest::collection::vec((any::<u32>(), any::<u16>(), 0u8..10), 0..1500),
    ) {
        let d = data(len);
        let i = info(&d);
        let g = Geometry::new(len as u64, BS).unwrap();
        let mut rx = Receiver::new(cfg(window), i.clone(), &join(&i, 1, BS), Resume::fresh(), Vec::new(), MS).unwrap();
        let mut other = d.clone();
        other.iter_mut().for_each(|b| *b ^= 0x5a);
        let mut now = MS;
        let mut out = Vec::new();
        for (s, b, kind) in picks {
            now += Duration::from_micros(300);
            let s = s % (g.slices() + 1);
            let b = b % 128;
            let (src, transfer) = match kind {
                0 => (&other, 2),           // a foreign transfer with other bytes
                _ => (&d, 1),
            };
            let Some(_) = g.block_len(s, b) else { continue };
            let p = payload(src, s, b, BS);
            let view = DataView::from_payload(transfer, &p).unwrap();
            prop_assert!(rx.on_data(&view, now).is_ok());
            if kind == 9 {
                out.clear();
                rx.poll(now, &mut out);
                for m in &out {
                    if let Message::Nack(n) = m {
                        for blk in SliceBitmap(n.missing).missing() {
                            let end = g.block_offset(n.slice, blk) + g.block_len(n.slice, blk).unwrap() as u64;
                            prop_assert!(end > rx.delivered(), "NACK for a delivered block");
                        }
                    }
                }
            }
        }
        prop_assert!(rx.stats().buffered_high_water <= window * u64::from(BS) * 128);
        let sink = rx.sink().clone();
        match rx.state() {
            ReceiverState::Complete => prop_assert_eq!(sink, d),
            ReceiverState::Receiving => prop_assert_eq!(&sink[..], &d[..sink.len()]),
            ReceiverState::Failed => prop_assert!(false, "failed"),
        }
    }
}
