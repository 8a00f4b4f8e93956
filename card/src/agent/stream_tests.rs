//! Tests of the agent's receive path under a frozen clock: Progress by bytes goes out as
//! the bytes arrive (the sender's flow control waits for it), and the store's single hash
//! (over the volume read back) still catches a block that changed on flash after the
//! receiver verified the stream.

// Test data generators narrow integers on purpose.
#![allow(clippy::cast_possible_truncation)]

use std::time::{Duration, Instant};

use shelfboot_proto::frame::Link;
use shelfboot_proto::msg::{ArtifactKind, Message, Stage, Verdict};
use shelfboot_xfer::{Admission, ArtifactInfo, SendStep, Sender, SenderConfig};

use super::tests::{
    CARD, ET, MASTER, artifact, config, content, encode, frames, key, plan_frame, solicit_of, store,
};
use super::*;
use crate::flash::{FakeVolumes, Volumes as _};

/// A card in Fetch for one `len`-byte artifact, joined to a real sender. Returns the
/// agent, the sender, the artifact and the agent's (frozen) clock.
fn joined(vols: &FakeVolumes, len: usize) -> (Agent<FakeVolumes>, Sender<Vec<u8>>, Instant) {
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(vols), t0);
    let outs = agent.tick(t0);
    let (h, s) = solicit_of(&outs);
    let data = content(9, len);
    let refs = vec![artifact(ArtifactKind::BootImage, "kernel", &data)];
    let plan = plan_frame(&key(), &h, &s, &refs, Verdict::Fetch);
    let outs = agent.handle_frame(t0, &plan);
    let fetch = frames(&outs).into_iter().find_map(|(h, m, _)| match m {
        Message::Fetch(f) => Some((h, f)),
        _ => None,
    });
    let (h, f) = fetch.expect("the card asks for the artifact");
    let link = Link {
        dst: MacAddr([0x03, 0x5b, 0, 0, 0, 1]),
        src: MASTER,
        ethertype: ET,
    };
    let mut cfg = SenderConfig::new(link, 1408);
    cfg.join_window = Duration::from_millis(1);
    let mut sender =
        Sender::new(cfg, 7, ArtifactInfo::from(&refs[0]), data, Duration::ZERO).unwrap();
    let Admission::Joined(j) = sender.join(CARD, f.have_slices, Duration::ZERO) else {
        panic!("not admitted");
    };
    agent.handle_frame(t0, &encode(CARD, h.session, &Message::Join(j)));
    (agent, sender, t0)
}

/// Runs the sender (its own clock advancing) into the agent (clock frozen at `now`),
/// calling `between(agent, frames so far)` after each frame; returns the card's messages.
fn pump(
    agent: &mut Agent<FakeVolumes>,
    sender: &mut Sender<Vec<u8>>,
    now: Instant,
    mut between: impl FnMut(&mut Agent<FakeVolumes>, usize),
) -> Vec<Message> {
    let mut buf = vec![0u8; shelfboot_proto::MAX_FRAME_LEN];
    let mut sent = Vec::new();
    let mut n = 0;
    for step in 0..20_000u64 {
        let since = Duration::from_millis(2) + Duration::from_micros(100) * step as u32;
        match sender.poll(since, &mut buf).unwrap() {
            SendStep::Frame { len, .. } => {
                let outs = agent.handle_frame(now, &buf[..len]);
                n += 1;
                for (_, m, _) in frames(&outs) {
                    if let Message::Progress(p) = &m {
                        sender.handle_progress(CARD, p, since);
                    }
                    sent.push(m);
                }
                between(agent, n);
            }
            _ if agent.phase() != Phase::Fetch => break,
            _ => {}
        }
    }
    sent
}

#[test]
fn progress_by_bytes_goes_out_as_the_bytes_arrive() {
    let vols = FakeVolumes::new(4096, 2048);
    let step = shelfboot_xfer::ReceiverConfig::default().progress_bytes;
    let (mut agent, mut sender, t1) = joined(&vols, 3 * step as usize);
    let sent = pump(&mut agent, &mut sender, t1, |_, _| {});
    let steps: Vec<u64> = sent
        .iter()
        .filter_map(|m| match m {
            Message::Progress(p) if p.stage == Stage::Fetching && p.artifact.is_some() => {
                Some(p.done)
            }
            _ => None,
        })
        .collect();
    // With the clock frozen no timer fires: every report after the first is a byte step.
    assert!(steps.len() >= 3, "reports: {steps:?}");
    assert!(steps.windows(2).all(|w| w[1] >= w[0] + step), "{steps:?}");
    assert_eq!(
        agent.phase(),
        Phase::Ready,
        "counters {:?}",
        agent.counters()
    );
}

#[test]
fn a_block_that_lands_corrupted_on_flash_is_caught_before_commit() {
    let vols = FakeVolumes::new(4096, 1024);
    let (mut agent, mut sender, t1) = joined(&vols, 1 << 20);
    let mut armed = false;
    let sent = pump(&mut agent, &mut sender, t1, |agent, _| {
        // Once the store holds some bytes, a later LEB lands with a bit flipped while its
        // change reports success (a silent program failure).
        if !armed && agent.counters().bytes_written > 300_000 {
            let mut v = vols.clone();
            let staging = v
                .list()
                .unwrap()
                .into_iter()
                .find(|v| v.name.starts_with("sb.new."));
            let staging = staging.expect("a staging volume is being written");
            vols.flip_on_change(&staging.name, 600_000);
            armed = true;
        }
    });
    assert!(armed, "counters {:?}", agent.counters());
    // The receiver verified the stream; the store's read-back hash refuses the volume.
    let refused = sent
        .iter()
        .any(|m| matches!(m, Message::Error(e) if e.detail.contains("as read back")));
    assert!(refused, "{sent:?}");
    assert!(!sent.iter().any(|m| matches!(m, Message::Ready(_))));
    assert_eq!(agent.store().digest(), None, "nothing was committed");
}
