//! Agent tests of protocol version 2: plans in fragments, the one-frame warm boot of a
//! set too large for one frame, the inventory the master asks for, and falling back to a
//! version-1 master.

use std::time::{Duration, Instant};

use shelfboot_proto::frag::{Limits, Reassembler, encode_frames};
use shelfboot_proto::frame::{Frame, Header, Link, MessageType};
use shelfboot_proto::msg::{
    ArtifactKind, ArtifactRef, BootPhase, ErrorMsg, ErrorReason, Message, PlanBody, Verdict,
    set_digest,
};

use super::tests::{CARD, ET, MASTER, artifact, config, content, frames, key, solicit_of, store};
use super::*;
use crate::flash::FakeVolumes;

const CMDLINE: &str = "console=ttyS0";

/// `n` packages with 64-byte names and small contents.
fn many(n: usize) -> (Vec<ArtifactRef>, Vec<Vec<u8>>) {
    let data: Vec<Vec<u8>> = (0..n)
        .map(|i| content(u8::try_from(i % 256).unwrap_or(0), 100 + i))
        .collect();
    let refs = data
        .iter()
        .enumerate()
        .map(|(i, d)| artifact(ArtifactKind::Package, &format!("{:0>64}", i), d))
        .collect();
    (refs, data)
}

/// A device holding the `n`-package set, committed.
fn provisioned_many(n: usize) -> (FakeVolumes, Vec<ArtifactRef>) {
    let vols = FakeVolumes::new(4096, 1024);
    let mut st = store(&vols);
    let (refs, data) = many(n);
    st.begin(&refs, CMDLINE).unwrap();
    for (a, d) in refs.iter().zip(&data) {
        st.stage(a, d.as_slice()).unwrap();
    }
    st.commit().unwrap();
    (vols, refs)
}

/// The master's frames for `msg` to the card: one, or its fragments.
fn master_frames(session: u32, msg: &Message) -> Vec<Vec<u8>> {
    let link = Link {
        dst: CARD,
        src: MASTER,
        ethertype: ET,
    };
    encode_frames(&link, &Header::new(msg.msg_type(), session, 5), msg).unwrap()
}

fn sent(outs: &[Output]) -> Vec<&Vec<u8>> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send(f) => Some(f),
            _ => None,
        })
        .collect()
}

#[test]
fn a_plan_in_fragments_is_reassembled_verified_and_acted_on() {
    let vols = FakeVolumes::new(4096, 1024);
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    assert_eq!(h.version, version::CURRENT);
    let (refs, _) = many(60);
    let body = PlanBody {
        digest: set_digest(&refs, CMDLINE),
        artifacts: refs,
        cmdline: CMDLINE.into(),
        persist: true,
        verdict: Verdict::Fetch,
        nonce: s.nonce,
        epoch: 1,
        artifacts_omitted: false,
        report_inventory: false,
    };
    let fs = master_frames(h.session, &Message::Plan(key().sign_plan(body).unwrap()));
    assert!(fs.len() > 3, "{} fragments", fs.len());
    // Reversed, with a duplicate: still one plan.
    let mut outs = Vec::new();
    outs.extend(agent.handle_frame(t0, &fs[1]));
    for f in fs.iter().rev() {
        outs.extend(agent.handle_frame(t0, f));
    }
    assert_eq!(agent.counters().plans_accepted, 1);
    assert_eq!(agent.phase(), Phase::Fetch);
    let r = agent.reassembly();
    assert_eq!((r.completed, r.duplicates), (1, 1));
    assert!(
        frames(&outs)
            .iter()
            .any(|(_, m, dst)| matches!(m, Message::Fetch(_)) && *dst == MASTER)
    );
}

#[test]
fn a_forged_plan_in_fragments_is_dropped_like_a_one_frame_one() {
    let vols = FakeVolumes::new(4096, 1024);
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    let (refs, _) = many(60);
    let body = PlanBody {
        digest: set_digest(&refs, CMDLINE),
        artifacts: refs,
        cmdline: CMDLINE.into(),
        persist: true,
        verdict: Verdict::Fetch,
        nonce: s.nonce,
        epoch: 1,
        artifacts_omitted: false,
        report_inventory: false,
    };
    let rogue = shelfboot_proto::sign::SigningKey::from_seed(&[9; 32]);
    for f in master_frames(h.session, &Message::Plan(rogue.sign_plan(body).unwrap())) {
        agent.handle_frame(t0, &f);
    }
    assert_eq!(agent.counters().dropped_forged, 1);
    assert_eq!(agent.phase(), Phase::Discover);
    assert!(agent.store().inventory().is_none(), "nothing written");
}

#[test]
fn warm_boot_of_a_set_too_large_for_one_frame_is_one_frame_each_way() {
    let (vols, refs) = provisioned_many(40);
    let digest = set_digest(&refs, CMDLINE);
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.phase = BootPhase::WarmBoot;
    let mut agent = Agent::new(cfg, store(&vols), t0);
    let outs = agent.tick(t0);
    assert_eq!(sent(&outs).len(), 1, "one Solicit frame");
    let (h, s) = solicit_of(&outs);
    assert!(s.inventory_omitted && s.inventory.is_empty());
    assert_eq!(s.inventory_digest, Some(digest));
    // The master answers with a digest-only Continue: one frame.
    let body = PlanBody {
        artifacts: vec![],
        cmdline: String::new(),
        persist: true,
        verdict: Verdict::Continue,
        digest,
        nonce: s.nonce,
        epoch: 1,
        artifacts_omitted: true,
        report_inventory: false,
    };
    let fs = master_frames(h.session, &Message::Plan(key().sign_plan(body).unwrap()));
    assert_eq!(fs.len(), 1);
    let outs = agent.handle_frame(t0, &fs[0]);
    let Some(Output::Decision(Decision::Boot {
        set,
        validated_only,
        ..
    })) = outs.iter().find(|o| matches!(o, Output::Decision(_)))
    else {
        panic!("a boot decision: {outs:?}");
    };
    assert!(validated_only);
    assert_eq!(set.digest, digest);
    assert_eq!(agent.counters().bytes_written, 0);
}

#[test]
fn a_digest_only_continue_for_another_set_is_refused_and_nothing_written() {
    let (vols, refs) = provisioned_many(40);
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    let body = PlanBody {
        artifacts: vec![],
        cmdline: String::new(),
        persist: true,
        verdict: Verdict::Continue,
        digest: set_digest(&refs[1..], CMDLINE),
        nonce: s.nonce,
        epoch: 1,
        artifacts_omitted: true,
        report_inventory: false,
    };
    let fs = master_frames(h.session, &Message::Plan(key().sign_plan(body).unwrap()));
    let outs = agent.handle_frame(t0, &fs[0]);
    assert!(frames(&outs).iter().any(|(_, m, _)| matches!(
        m,
        Message::Error(ErrorMsg {
            reason: ErrorReason::Malformed,
            ..
        })
    )));
    assert_eq!(agent.phase(), Phase::Discover);
    assert_eq!(agent.counters().bytes_written, 0);
}

#[test]
fn a_plan_asking_for_the_inventory_gets_it_in_fragments_twice() {
    let (vols, refs) = provisioned_many(40);
    let digest = set_digest(&refs, CMDLINE);
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    let body = PlanBody {
        artifacts: vec![],
        cmdline: String::new(),
        persist: true,
        verdict: Verdict::Continue,
        digest,
        nonce: s.nonce,
        epoch: 1,
        artifacts_omitted: true,
        report_inventory: true,
    };
    let fs = master_frames(h.session, &Message::Plan(key().sign_plan(body).unwrap()));
    let outs = agent.handle_frame(t0, &fs[0]);
    let inv: Vec<&Vec<u8>> = sent(&outs)
        .into_iter()
        .filter(|f| f[shelfboot_proto::frame::MSG_TYPE_OFF] == MessageType::Inventory.code())
        .collect();
    assert!(
        inv.len() >= 4 && inv.len().is_multiple_of(2),
        "{}",
        inv.len()
    );
    let mut r = Reassembler::new(Limits::MASTER);
    let mut got = Vec::new();
    for f in inv {
        if let Some(m) = r.push(t0, &Frame::decode(f, ET).unwrap()).unwrap() {
            got.push(m.decode().unwrap());
        }
    }
    assert_eq!(got.len(), 1, "the second copy is a late duplicate");
    let Message::Inventory(i) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(i.inventory_digest, Some(digest));
    assert_eq!(i.inventory.len(), 40);
    assert_eq!(i.nonce, s.nonce);
}

#[test]
fn a_version_1_master_makes_the_card_fall_back_to_version_1() {
    let (vols, refs) = provisioned_many(40);
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, _) = solicit_of(&agent.tick(t0));
    assert_eq!(h.version, 2);
    // What a version-1 master answers to a version-2 frame.
    let reply = Message::Error(ErrorMsg {
        reason: ErrorReason::UnsupportedVersion { min: 1, max: 1 },
        detail: "protocol version 2 not supported; this peer speaks 1..=1".into(),
    });
    let link = Link {
        dst: CARD,
        src: MASTER,
        ethertype: ET,
    };
    let hdr = Header::new(MessageType::Error, h.session, h.sequence).in_version(1);
    let f = encode_frames(&link, &hdr, &reply).unwrap();
    agent.handle_frame(t0, &f[0]);
    assert_eq!(agent.protocol_version(), 1);
    assert_eq!(agent.counters().version_fallbacks, 1);
    // It solicits again at once, in version 1, without the list that does not fit.
    let outs = agent.tick(t0 + Duration::from_millis(1));
    let (h, s) = solicit_of(&outs);
    assert_eq!(h.version, 1);
    assert!(!s.inventory_omitted && s.inventory.is_empty());
    assert_eq!(s.inventory_digest, Some(set_digest(&refs, CMDLINE)));
    // A v1 error does not make it fall back further, nor crash.
    agent.handle_frame(t0, &f[0]);
    assert_eq!(agent.protocol_version(), 1);
}
