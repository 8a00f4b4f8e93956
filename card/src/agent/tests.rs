//! Unit tests of the agent against an in-memory flash ([`FakeVolumes`]) and a scripted
//! master: plans signed here, data sent by a real xfer `Sender` from a `Vec<u8>`.

// Test data generators narrow integers on purpose.
#![allow(clippy::cast_possible_truncation)]

use std::time::{Duration, Instant};

use shelfboot_proto::frame::{Header, Link, MacAddr};
use shelfboot_proto::msg::{
    Action, Arch, ArtifactKind, ArtifactRef, BootPhase, CommandBody, Digest, ErrorReason, Handoff,
    Join, Message, PlanBody, Solicit, Verdict, decode_frame, encode_message, set_digest,
};
use shelfboot_proto::sign::{MasterSigner, SigningKey, TrustAnchor};
use shelfboot_xfer::{Admission, ArtifactInfo, SendStep, Sender, SenderConfig};

use super::rng::SplitMix;
use super::*;
use crate::flash::{FakeVolumes, StoreConfig};

pub(super) const CARD: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
pub(super) const MASTER: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xaa]);
pub(super) const ET: u16 = shelfboot_proto::DEFAULT_ETHERTYPE;

pub(super) fn key() -> SigningKey {
    SigningKey::from_seed(&[1u8; 32])
}

pub(super) fn config() -> AgentConfig {
    AgentConfig {
        identity: Identity {
            mac: CARD,
            card_type: "lc100".into(),
            arch: Arch::X86_64,
            shelf: 1,
            slot: 1,
            hw_rev: "A".into(),
            features: vec![],
        },
        phase: BootPhase::PowerOn,
        ethertype: ET,
        link_mtu: shelfboot_proto::STANDARD_MTU,
        anchor: TrustAnchor::new(vec![key().public_key()]),
        nonce: [7u8; 16],
        seed: 1,
        timers: Timers::default(),
    }
}

pub(super) fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A version-1.0 artifact reference of `data` (its real sha256 and length).
pub(super) fn artifact(kind: ArtifactKind, name: &str, data: &[u8]) -> ArtifactRef {
    shelfboot_proto::samples::artifact_of(kind, name, "1.0", data)
}

/// The fixture set: a boot image and a package.
fn set() -> (Vec<ArtifactRef>, Vec<Vec<u8>>) {
    let data = vec![content(1, 40_000), content(2, 9_000)];
    let refs = vec![
        artifact(ArtifactKind::BootImage, "kernel", &data[0]),
        artifact(ArtifactKind::Package, "base", &data[1]),
    ];
    (refs, data)
}

pub(super) fn store(vols: &FakeVolumes) -> Store<FakeVolumes> {
    Store::open(vols.clone(), StoreConfig::default()).unwrap().0
}

pub(super) fn frames(outs: &[Output]) -> Vec<(Header, Message, MacAddr)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send(f) => {
                let (h, m) = decode_frame(f, ET).ok()?;
                let dst = MacAddr(f[..6].try_into().ok()?);
                Some((h, m, dst))
            }
            _ => None,
        })
        .collect()
}

pub(super) fn solicit_of(outs: &[Output]) -> (Header, Solicit) {
    frames(outs)
        .into_iter()
        .find_map(|(h, m, _)| match m {
            Message::Solicit(s) => Some((h, s)),
            _ => None,
        })
        .expect("a Solicit")
}

pub(super) fn encode(dst: MacAddr, session: u32, m: &Message) -> Vec<u8> {
    let link = Link {
        dst,
        src: MASTER,
        ethertype: ET,
    };
    let mut buf = vec![0u8; shelfboot_proto::MAX_FRAME_LEN];
    let n = encode_message(&mut buf, &link, session, 1, m).unwrap();
    buf.truncate(n);
    buf
}

pub(super) fn plan_frame(
    k: &SigningKey,
    h: &Header,
    s: &Solicit,
    refs: &[ArtifactRef],
    verdict: Verdict,
) -> Vec<u8> {
    plan_frame_persist(k, h, s, refs, verdict, true)
}

fn plan_frame_persist(
    k: &SigningKey,
    h: &Header,
    s: &Solicit,
    refs: &[ArtifactRef],
    verdict: Verdict,
    persist: bool,
) -> Vec<u8> {
    let body = PlanBody {
        artifacts: refs.to_vec(),
        cmdline: "console=ttyS0".into(),
        persist,
        verdict,
        digest: set_digest(refs, "console=ttyS0"),
        nonce: s.nonce,
        epoch: 1,
        artifacts_omitted: false,
        report_inventory: false,
    };
    encode(CARD, h.session, &Message::Plan(k.sign_plan(body).unwrap()))
}

fn decision(outs: &[Output]) -> Option<Decision> {
    outs.iter().find_map(|o| match o {
        Output::Decision(d) => Some(d.clone()),
        _ => None,
    })
}

/// Drives `agent` against a scripted master serving `refs`/`data` until it decides.
/// Returns the decision and every message the card sent.
fn serve<V: Volumes>(
    agent: &mut Agent<V>,
    t0: Instant,
    refs: &[ArtifactRef],
    data: &[Vec<u8>],
    drop_every: usize,
    initial: Vec<Output>,
) -> (Decision, Vec<Message>) {
    let (d, sent, _) = serve_until(agent, t0, refs, data, drop_every, initial, |_| false);
    (d.expect("stopped without a decision"), sent)
}

/// [`serve`], stopping early (no decision) once `stop` says so. Also returns the data
/// frames the scripted master sent.
fn serve_until<V: Volumes>(
    agent: &mut Agent<V>,
    t0: Instant,
    refs: &[ArtifactRef],
    data: &[Vec<u8>],
    drop_every: usize,
    initial: Vec<Output>,
    stop: impl Fn(&Agent<V>) -> bool,
) -> (Option<Decision>, Vec<Message>, usize) {
    let mut pending = initial;
    let mut now = t0;
    let mut sent = Vec::new();
    let mut sender: Option<Sender<Vec<u8>>> = None;
    let mut buf = vec![0u8; shelfboot_proto::MAX_FRAME_LEN];
    let mut inbox: Vec<Vec<u8>> = Vec::new();
    let mut n = 0usize;
    for _ in 0..200_000 {
        let mut outs = std::mem::take(&mut pending);
        outs.extend(agent.tick(now));
        for f in inbox.drain(..) {
            outs.extend(agent.handle_frame(now, &f));
        }
        if let Some(d) = decision(&outs) {
            sent.extend(frames(&outs).into_iter().map(|(_, m, _)| m));
            return (Some(d), sent, n);
        }
        if stop(agent) {
            return (None, sent, n);
        }
        let origin = t0;
        let since = now - origin;
        for (h, m, _) in frames(&outs) {
            match &m {
                Message::Fetch(f) => {
                    let i = refs.iter().position(|a| a.sha256 == f.artifact).unwrap();
                    let rejoin = sender
                        .as_ref()
                        .is_some_and(|s| s.artifact().sha256 == f.artifact);
                    if !rejoin {
                        let link = Link {
                            dst: MacAddr([0x03, 0x5b, 0, 0, 0, i as u8]),
                            src: MASTER,
                            ethertype: ET,
                        };
                        let mut cfg = SenderConfig::new(link, 1408);
                        cfg.join_window = Duration::from_millis(1);
                        let info = ArtifactInfo::from(&refs[i]);
                        sender = Some(
                            Sender::new(cfg, 100 + i as u32, info, data[i].clone(), since).unwrap(),
                        );
                    }
                    let s = sender.as_mut().unwrap();
                    if let Admission::Joined(j) = s.join(CARD, f.have_slices, since) {
                        inbox.push(encode(CARD, h.session, &Message::Join(j)));
                    }
                }
                Message::Nack(k) => {
                    if let Some(s) = sender.as_mut() {
                        s.handle_nack(CARD, k, since);
                    }
                }
                Message::Progress(p) => {
                    if let Some(s) = sender.as_mut() {
                        s.handle_progress(CARD, p, since);
                    }
                }
                _ => {}
            }
            sent.push(m);
        }
        if let Some(s) = sender.as_mut() {
            for _ in 0..64 {
                match s.poll(since, &mut buf).unwrap() {
                    SendStep::Frame { len, .. } => {
                        n += 1;
                        if drop_every == 0 || !n.is_multiple_of(drop_every) {
                            inbox.push(buf[..len].to_vec());
                        }
                    }
                    _ => break,
                }
            }
        }
        now += Duration::from_micros(500);
    }
    panic!("no decision; card counters {:?}", agent.counters());
}

fn pristine_to_ready(drop_every: usize) {
    let vols = FakeVolumes::new(4096, 256);
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let outs = agent.tick(t0);
    let (h, s) = solicit_of(&outs);
    assert_eq!(s.inventory_digest, None, "pristine");
    let (refs, data) = set();
    let plan = plan_frame(&key(), &h, &s, &refs, Verdict::Fetch);
    let outs = agent.handle_frame(t0, &plan);
    assert_eq!(agent.phase(), Phase::Fetch);
    assert!(
        frames(&outs)
            .iter()
            .any(|(_, m, dst)| matches!(m, Message::Fetch(_)) && *dst == MASTER)
    );
    let (d, sent) = serve(&mut agent, t0, &refs, &data, drop_every, outs);
    let Decision::Boot {
        set,
        handoff,
        autonomous,
        validated_only,
        persisted,
    } = d
    else {
        panic!("expected a boot decision");
    };
    assert_eq!(handoff, Handoff::Kexec);
    assert!(!autonomous && !validated_only && persisted);
    assert_eq!(set.digest, set_digest(&refs, "console=ttyS0"));
    assert!(
        sent.iter()
            .any(|m| matches!(m, Message::Ready(r) if r.digest == set.digest))
    );
    if drop_every > 0 {
        assert!(agent.counters().nacks > 0, "{:?}", agent.counters());
    }
    let mut st = agent.into_store();
    assert!(
        st.verify_set(&set).unwrap().is_empty(),
        "every byte as sent"
    );
    assert_eq!(st.digest(), Some(set.digest));
    // And the next Solicit reports the committed set.
    let agent = Agent::new(config(), store(&vols), t0);
    assert_eq!(agent.solicit().inventory_digest, Some(set.digest));
}

#[test]
fn pristine_card_fetches_commits_and_decides_kexec() {
    pristine_to_ready(0);
}

#[test]
fn lost_data_frames_are_nacked_and_repaired() {
    pristine_to_ready(7);
}

/// A card killed in the middle of a large artifact (power cut: nothing is aborted) asks,
/// after the restart, only for what follows the LEBs already on flash.
#[test]
fn a_card_killed_mid_artifact_resumes_where_it_was() {
    let vols = FakeVolumes::new(4096, 1024);
    let (refs, data) = big_set();
    let size = refs[0].size;
    let t0 = Instant::now();
    let run = |vols: &FakeVolumes, stop: &dyn Fn(&Agent<FakeVolumes>) -> bool| {
        let mut agent = Agent::new(config(), store(vols), t0);
        let outs = agent.tick(t0);
        let (h, s) = solicit_of(&outs);
        let plan = plan_frame(&key(), &h, &s, &refs, Verdict::Fetch);
        let outs = agent.handle_frame(t0, &plan);
        let (d, sent, frames) = serve_until(&mut agent, t0, &refs, &data, 0, outs, stop);
        (d, sent, frames, agent.counters().bytes_written)
    };
    // First attempt: killed once 80 % of the kernel is on flash.
    let (d, _, first_frames, first_bytes) =
        run(&vols, &|a| a.counters().bytes_written > size * 4 / 5);
    assert!(d.is_none());
    assert!(
        first_bytes > size * 4 / 5 && first_bytes < size,
        "{first_bytes} of {size}"
    );
    let vols = vols.power_cycle();
    // Second attempt, after the restart: the same plan.
    let (d, sent, frames, bytes) = run(&vols, &|_| false);
    let Some(Decision::Boot { set, .. }) = d else {
        panic!("expected a boot decision, got {d:?}")
    };
    assert_resumed(&sent, &refs[0]);
    // Bytes written and data frames moved on the second attempt: the rest of the
    // kernel (plus the small package), far less than the kernel.
    assert!(
        bytes < size / 5,
        "second attempt wrote {bytes} of a {size}-byte kernel"
    );
    assert!(
        frames * 4 < first_frames,
        "second attempt moved {frames} data frames, the first {first_frames}"
    );
    let mut st = store(&vols);
    assert!(
        st.verify_set(&set).unwrap().is_empty(),
        "every byte as sent"
    );
    assert_eq!(st.digest(), Some(set.digest));
}

/// A 2 MB boot image and a small package: large enough that the agent's spool (flushed
/// every 256 KiB) writes most of the kernel before a transfer is cut.
fn big_set() -> (Vec<ArtifactRef>, Vec<Vec<u8>>) {
    let data = vec![content(5, 2_000_000), content(6, 5000)];
    let refs = vec![
        artifact(ArtifactKind::BootImage, "kernel", &data[0]),
        artifact(ArtifactKind::Package, "base", &data[1]),
    ];
    (refs, data)
}

/// The card's Fetch of `artifact` in `sent` asks for the rest: it resumed.
fn assert_resumed(sent: &[Message], artifact: &ArtifactRef) {
    let fetch = sent
        .iter()
        .find_map(|m| match m {
            Message::Fetch(f) if f.artifact == artifact.sha256 => Some(f.clone()),
            _ => None,
        })
        .expect("a Fetch of the artifact");
    assert!(
        fetch.have_slices > 0,
        "the Fetch asks for the rest: {fetch:?}"
    );
}

/// A store that holds the fixture set, committed.
fn provisioned() -> FakeVolumes {
    let vols = FakeVolumes::new(4096, 256);
    let mut st = store(&vols);
    let (refs, data) = set();
    st.begin(&refs, "console=ttyS0").unwrap();
    for (a, d) in refs.iter().zip(&data) {
        st.stage(a, d.as_slice()).unwrap();
    }
    st.commit().unwrap();
    vols
}

#[test]
fn the_solicit_says_a_jumbo_port_mtu_and_a_join_too_large_for_the_port_is_ignored() {
    let (refs, _) = set();
    for (mtu, said) in [(1500, None), (9000, Some(9000)), (4000, Some(4000))] {
        let vols = FakeVolumes::new(4096, 256);
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.link_mtu = mtu;
        let mut agent = Agent::new(cfg, store(&vols), t0);
        let (h, s) = solicit_of(&agent.tick(t0));
        assert_eq!(s.link_mtu, said, "port MTU {mtu}");
        let outs = agent.handle_frame(t0, &plan_frame(&key(), &h, &s, &refs, Verdict::Fetch));
        let Some(Message::Fetch(f)) = frames(&outs)
            .into_iter()
            .map(|(_, m, _)| m)
            .find(|m| matches!(m, Message::Fetch(_)))
        else {
            panic!("no Fetch at MTU {mtu}");
        };
        // A Join of 8960-byte blocks: only a 9000-MTU port takes its frames.
        let join = Join {
            transfer: 5,
            artifact: f.artifact,
            size: refs.iter().find(|a| a.sha256 == f.artifact).unwrap().size,
            group: MacAddr([0x03, 0x5b, 0, 0, 0, 5]),
            block_size: 8960,
            first_slice: 0,
        };
        let before = agent.counters().dropped_unexpected;
        agent.handle_frame(t0, &encode(CARD, h.session, &Message::Join(join)));
        let dropped = agent.counters().dropped_unexpected - before;
        assert_eq!(dropped, u64::from(mtu < 9000), "port MTU {mtu}");
    }
}

#[test]
fn a_fetch_that_gets_no_join_is_asked_again_on_schedule() {
    // The master never answers the Fetch (it or its Join was lost): driven only at its
    // own deadlines, the card must Fetch again with backoff and, after
    // `fetch_attempts`, solicit again. Regression: the agent took its own planned sleep
    // for a block and restarted its clock at every retry, so it never asked again.
    let vols = FakeVolumes::new(4096, 256);
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    let (refs, _) = set();
    let mut fetches =
        frames(&agent.handle_frame(t0, &plan_frame(&key(), &h, &s, &refs, Verdict::Fetch)))
            .iter()
            .filter(|(_, m, _)| matches!(m, Message::Fetch(_)))
            .count();
    let mut now = t0;
    let mut solicited_again = false;
    for _ in 0..10_000 {
        let Some(next) = agent.next_deadline() else {
            break;
        };
        now = next.max(now);
        if now > t0 + Duration::from_secs(60) {
            break;
        }
        let outs = agent.tick(now);
        for (_, m, _) in frames(&outs) {
            match m {
                Message::Fetch(_) => fetches += 1,
                Message::Solicit(_) => solicited_again = true,
                _ => {}
            }
        }
        if solicited_again {
            break;
        }
    }
    let attempts = Timers::default().fetch_attempts as usize;
    assert!(
        fetches >= attempts,
        "{fetches} Fetches in {:?} without a Join",
        now - t0
    );
    assert!(
        solicited_again,
        "no Solicit after {fetches} unanswered Fetches"
    );
    assert!(
        now - t0 < Duration::from_secs(30),
        "took {:?} to give up",
        now - t0
    );
}

#[test]
fn warm_boot_continue_validates_without_writing() {
    let vols = provisioned();
    let ops = vols.ops().len();
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    let (refs, _) = set();
    assert_eq!(s.inventory_digest, Some(set_digest(&refs, "console=ttyS0")));
    let outs = agent.handle_frame(t0, &plan_frame(&key(), &h, &s, &refs, Verdict::Continue));
    match decision(&outs) {
        Some(Decision::Boot { validated_only, .. }) => assert!(validated_only),
        other => panic!("expected a boot decision, got {other:?}"),
    }
    assert!(
        frames(&outs)
            .iter()
            .any(|(_, m, d)| matches!(m, Message::Ready(_)) && *d == MASTER)
    );
    assert_eq!(vols.ops().len(), ops, "validation writes nothing");
    // The Ready repeats, then the agent is done.
    let mut now = t0;
    for _ in 0..10 {
        now += Duration::from_millis(150);
        agent.tick(now);
    }
    assert_eq!(agent.phase(), Phase::Done);
}

#[test]
fn forged_replayed_and_foreign_plans_are_dropped_and_never_written() {
    let vols = FakeVolumes::new(4096, 256);
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    let (refs, _) = set();
    let rogue = SigningKey::from_seed(&[9u8; 32]);
    agent.handle_frame(t0, &plan_frame(&rogue, &h, &s, &refs, Verdict::Fetch));
    let mut old = s.clone();
    old.nonce = [8u8; 16];
    agent.handle_frame(t0, &plan_frame(&key(), &h, &old, &refs, Verdict::Fetch));
    // Digest that does not match the contents, validly signed.
    let mut body = PlanBody {
        artifacts: refs.clone(),
        cmdline: "x".into(),
        persist: true,
        verdict: Verdict::Fetch,
        digest: Digest([0u8; 32]),
        nonce: s.nonce,
        epoch: 1,
        artifacts_omitted: false,
        report_inventory: false,
    };
    agent.handle_frame(
        t0,
        &encode(
            CARD,
            h.session,
            &Message::Plan(key().sign_plan(body.clone()).unwrap()),
        ),
    );
    // Addressed to another card.
    body.digest = set_digest(&refs, "x");
    let other = MacAddr([2, 0, 0, 0, 0, 2]);
    agent.handle_frame(
        t0,
        &encode(
            other,
            h.session,
            &Message::Plan(key().sign_plan(body).unwrap()),
        ),
    );
    // An unsolicited Join and a data frame.
    let join = Join {
        transfer: 5,
        artifact: refs[0].sha256,
        size: refs[0].size,
        group: CARD,
        block_size: 1408,
        first_slice: 0,
    };
    agent.handle_frame(t0, &encode(CARD, h.session, &Message::Join(join)));
    let c = *agent.counters();
    assert_eq!(c.dropped_forged, 2, "{c:?}");
    assert_eq!(c.dropped_replayed, 1, "{c:?}");
    assert_eq!(c.dropped_not_for_us, 1, "{c:?}");
    assert_eq!(c.dropped_unexpected, 1, "{c:?}");
    assert_eq!(c.plans_accepted, 0);
    assert_eq!(agent.phase(), Phase::Discover);
    assert!(vols.ops().is_empty(), "nothing written: {:?}", vols.ops());
}

#[test]
fn random_and_corrupted_frames_are_counted_never_acted_on() {
    let vols = FakeVolumes::new(4096, 256);
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    let (refs, _) = set();
    let good = plan_frame(&key(), &h, &s, &refs, Verdict::Fetch);
    let mut rng = SplitMix::new(99);
    for i in 0..3000 {
        let mut f = if i % 2 == 0 {
            good.clone()
        } else {
            let len = (rng.next() % 1600) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        };
        if i % 2 == 0 {
            let at = 14 + (rng.next() as usize) % (f.len() - 14);
            f[at] ^= 1 << (rng.next() % 8);
        }
        let outs = agent.handle_frame(t0, &f);
        assert!(decision(&outs).is_none());
    }
    let c = *agent.counters();
    assert_eq!(c.plans_accepted, 0, "{c:?}");
    assert!(c.dropped_malformed > 1000, "{c:?}");
    assert!(vols.ops().is_empty());
    // The genuine plan still works afterwards.
    agent.handle_frame(t0, &good);
    assert_eq!(agent.phase(), Phase::Fetch);
}

#[test]
fn no_space_is_reported_and_the_committed_set_stays() {
    let vols = provisioned();
    let before = store(&vols).inventory().cloned();
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    let big = content(9, 2_000_000);
    let refs = vec![artifact(ArtifactKind::BootImage, "huge", &big)];
    let outs = agent.handle_frame(t0, &plan_frame(&key(), &h, &s, &refs, Verdict::Fetch));
    let err = frames(&outs)
        .into_iter()
        .find_map(|(_, m, d)| match m {
            Message::Error(e) if d == MASTER => Some(e),
            _ => None,
        })
        .expect("an Error to the master");
    assert!(matches!(err.reason, ErrorReason::NoSpace { needed, available } if needed > available));
    assert_eq!(agent.phase(), Phase::Discover);
    assert_eq!(agent.store().inventory().cloned(), before);
    assert_eq!(
        store(&vols).inventory().cloned(),
        before,
        "committed set untouched"
    );
}

#[test]
fn signed_commands_execute_once_forged_and_replayed_ones_do_not() {
    let vols = FakeVolumes::new(4096, 256);
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    agent.tick(t0);
    let body = CommandBody {
        action: Action::Reset,
        target: Some(CARD),
        epoch: 1,
        serial: 1,
    };
    let forged = SigningKey::from_seed(&[9u8; 32])
        .sign_command(body.clone())
        .unwrap();
    assert!(
        decision(&agent.handle_frame(t0, &encode(CARD, 0, &Message::Command(forged)))).is_none()
    );
    let other = CommandBody {
        target: Some(MacAddr([2, 0, 0, 0, 0, 9])),
        ..body.clone()
    };
    let other = key().sign_command(other).unwrap();
    assert!(
        decision(&agent.handle_frame(t0, &encode(MacAddr::BROADCAST, 0, &Message::Command(other))))
            .is_none()
    );
    let cmd = Message::Command(key().sign_command(body).unwrap());
    let outs = agent.handle_frame(t0, &encode(CARD, 0, &cmd));
    assert_eq!(
        decision(&outs),
        Some(Decision::Reset {
            phase: BootPhase::AfterReset
        })
    );
    agent.handle_frame(t0, &encode(CARD, 0, &cmd));
    let c = *agent.counters();
    assert_eq!(
        (
            c.commands,
            c.dropped_forged,
            c.dropped_replayed,
            c.dropped_not_for_us
        ),
        (1, 1, 1, 1)
    );
}

#[test]
fn solicits_back_off_exponentially_with_jitter_then_boot_autonomously() {
    let vols = provisioned();
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let mut now = t0;
    let mut times = Vec::new();
    for _ in 0..40 {
        let outs = agent.tick(now);
        if let Some(d) = decision(&outs) {
            assert!(
                matches!(
                    d,
                    Decision::Boot {
                        autonomous: true,
                        ..
                    }
                ),
                "{d:?}"
            );
            break;
        }
        if frames(&outs)
            .iter()
            .any(|(_, m, _)| matches!(m, Message::Solicit(_)))
        {
            times.push(now - t0);
        }
        now = agent.next_deadline().unwrap();
    }
    assert!(now - t0 >= Duration::from_secs(60), "autonomy after 60 s");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let t = Timers::default();
    for (i, g) in gaps.iter().enumerate() {
        let base = t
            .solicit_initial
            .saturating_mul(1 << i.min(16))
            .min(t.solicit_max);
        assert!(
            *g >= base.mul_f64(0.74) && *g <= base.mul_f64(1.26),
            "gap {i}: {g:?} vs {base:?}"
        );
    }
    assert!(
        gaps.iter().any(|g| *g >= Duration::from_secs(5)),
        "reached the cap: {gaps:?}"
    );
}

/// The test-mode set: the fixture's boot image and base plus a test package.
fn test_set() -> (Vec<ArtifactRef>, Vec<Vec<u8>>) {
    let (mut refs, mut data) = set();
    let t = content(5, 7_000);
    refs.push(artifact(ArtifactKind::Package, "testpkg", &t));
    data.push(t);
    (refs, data)
}

/// A RAM store (FileVolumes in a temporary directory) of `lebs` LEBs of 4 KiB.
fn ram(dir: &std::path::Path, lebs: u64) -> Store<FileVolumes> {
    let v = FileVolumes::open_or_format(dir, 4096, lebs).unwrap();
    Store::open(v, StoreConfig::default()).unwrap().0
}

/// The plan was only validated, from RAM: no Fetch, Ready and decision not persisted.
fn assert_validated_in_ram(outs: &[Output]) {
    let sent: Vec<Message> = frames(outs).into_iter().map(|(_, m, _)| m).collect();
    assert!(!sent.iter().any(|m| matches!(m, Message::Fetch(_))));
    assert!(!ready_of(&sent).unwrap().persisted);
    assert!(matches!(
        decision(outs),
        Some(Decision::Boot {
            validated_only: true,
            persisted: false,
            ..
        })
    ));
}

fn ready_of(outs: &[Message]) -> Option<&Ready> {
    outs.iter().find_map(|m| match m {
        Message::Ready(r) => Some(r),
        _ => None,
    })
}

#[test]
fn test_mode_plan_goes_to_ram_and_flash_sees_no_operation() {
    let vols = provisioned();
    let flash_before = store(&vols).inventory().cloned().unwrap();
    let ops = vols.ops().len();
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0).with_ram_store(ram(dir.path(), 64));
    let (h, s) = solicit_of(&agent.tick(t0));
    assert_eq!(
        s.inventory_digest,
        Some(flash_before.set.digest),
        "Solicit reports the flash set"
    );
    let (refs, data) = test_set();
    let plan = plan_frame_persist(&key(), &h, &s, &refs, Verdict::Fetch, false);
    let outs = agent.handle_frame(t0, &plan);
    assert_eq!(agent.phase(), Phase::Fetch);
    let (d, sent) = serve(&mut agent, t0, &refs, &data, 0, outs);
    let Decision::Boot {
        set,
        handoff,
        autonomous,
        validated_only,
        persisted,
    } = d
    else {
        panic!("expected a boot decision, got {d:?}");
    };
    assert!(!persisted && !autonomous && !validated_only);
    assert_eq!(handoff, Handoff::Kexec);
    assert_eq!(set.digest, set_digest(&refs, "console=ttyS0"));
    let r = ready_of(&sent).expect("Ready sent");
    assert!(!r.persisted, "Ready says RAM-only");
    assert_eq!(r.digest, set.digest);
    // Flash: not one create, update, write, rename or remove; same inventory, counter.
    assert_eq!(
        vols.ops().len(),
        ops,
        "flash touched: {:?}",
        &vols.ops()[ops..]
    );
    assert_eq!(agent.store().inventory(), Some(&flash_before));
    assert_eq!(store(&vols).inventory(), Some(&flash_before));
    // RAM: the set, byte for byte, one file per artifact (what init loop-mounts).
    let (_, ram_store) = agent.into_stores();
    let mut ram_store = ram_store.unwrap();
    assert!(ram_store.verify_set(&set).unwrap().is_empty());
    let files = FileVolumes::open(dir.path()).unwrap();
    for ((a, id), d) in ram_store.resolve(&set).unwrap().iter().zip(&data) {
        let blob = std::fs::read(files.blob_path(*id).unwrap()).unwrap();
        let at = a.offset as usize;
        assert_eq!(&blob[at..at + d.len()], &d[..]);
    }
    drop(ram_store);

    // The same RAM directory seen again (a kexec'd test image carries it): the same
    // test plan only validates, nothing is fetched, flash still untouched.
    let mut agent = Agent::new(config(), store(&vols), t0).with_ram_store(ram(dir.path(), 64));
    let (h, s) = solicit_of(&agent.tick(t0));
    let outs = agent.handle_frame(
        t0,
        &plan_frame_persist(&key(), &h, &s, &refs, Verdict::Fetch, false),
    );
    assert_validated_in_ram(&outs);
    assert_eq!(vols.ops().len(), ops);

    // Test mode left on the master: the next plan is the flash set again (Continue).
    let mut agent = Agent::new(config(), store(&vols), t0).with_ram_store(ram(dir.path(), 64));
    let (h, s) = solicit_of(&agent.tick(t0));
    let (flash_refs, _) = super::tests::set();
    let outs = agent.handle_frame(
        t0,
        &plan_frame(&key(), &h, &s, &flash_refs, Verdict::Continue),
    );
    assert!(matches!(
        decision(&outs),
        Some(Decision::Boot {
            validated_only: true,
            persisted: true,
            ..
        })
    ));
    assert!(
        ready_of(
            &frames(&outs)
                .into_iter()
                .map(|(_, m, _)| m)
                .collect::<Vec<_>>()
        )
        .unwrap()
        .persisted
    );
    assert_eq!(vols.ops().len(), ops);
}

#[test]
fn test_mode_plan_too_big_for_ram_is_no_space_and_flash_untouched() {
    let vols = provisioned();
    let flash_before = store(&vols).inventory().cloned();
    let ops = vols.ops().len();
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    // 8 LEBs of 4 KiB: the 40 kB boot image alone does not fit.
    let mut agent = Agent::new(config(), store(&vols), t0).with_ram_store(ram(dir.path(), 8));
    let (h, s) = solicit_of(&agent.tick(t0));
    let (refs, _) = test_set();
    let outs = agent.handle_frame(
        t0,
        &plan_frame_persist(&key(), &h, &s, &refs, Verdict::Fetch, false),
    );
    let err = frames(&outs)
        .into_iter()
        .find_map(|(_, m, d)| match m {
            Message::Error(e) if d == MASTER => Some(e),
            _ => None,
        })
        .expect("an Error to the master");
    assert!(
        matches!(err.reason, ErrorReason::NoSpace { needed, available } if needed > available),
        "{err:?}"
    );
    assert!(
        !frames(&outs)
            .iter()
            .any(|(_, m, _)| matches!(m, Message::Fetch(_)))
    );
    assert_eq!(agent.phase(), Phase::Discover);
    assert_eq!(
        vols.ops().len(),
        ops,
        "flash touched: {:?}",
        &vols.ops()[ops..]
    );
    assert_eq!(store(&vols).inventory().cloned(), flash_before);
}

#[test]
fn test_mode_plan_without_ram_store_is_refused_without_writing() {
    let vols = provisioned();
    let ops = vols.ops().len();
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    let (refs, _) = test_set();
    let outs = agent.handle_frame(
        t0,
        &plan_frame_persist(&key(), &h, &s, &refs, Verdict::Fetch, false),
    );
    assert!(frames(&outs).iter().any(
        |(_, m, d)| matches!(m, Message::Error(e) if e.detail.contains("no RAM store"))
            && *d == MASTER
    ));
    assert!(decision(&outs).is_none());
    assert_eq!(agent.phase(), Phase::Discover);
    assert_eq!(vols.ops().len(), ops);
}

fn command_frame(k: &SigningKey, action: Action, target: Option<MacAddr>, serial: u64) -> Vec<u8> {
    let body = CommandBody {
        action,
        target,
        epoch: 1,
        serial,
    };
    let dst = target.unwrap_or(MacAddr::BROADCAST);
    encode(dst, 0, &Message::Command(k.sign_command(body).unwrap()))
}

fn readies(outs: &[Output]) -> usize {
    frames(outs)
        .iter()
        .filter(|(_, m, d)| matches!(m, Message::Ready(_)) && *d == MASTER)
        .count()
}

#[test]
fn burn_now_then_fetch_commits_reports_ready_and_holds_until_the_hold_timer() {
    let vols = FakeVolumes::new(4096, 256);
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.timers.hold = Duration::from_secs(20);
    let mut agent = Agent::new(cfg, store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    // The master answers a prepare-pending card with a unicast BurnNow, then the plan.
    let outs = agent.handle_frame(t0, &command_frame(&key(), Action::BurnNow, Some(CARD), 1));
    assert!(decision(&outs).is_none() && agent.holding_ordered());
    let (refs, data) = set();
    let outs = agent.handle_frame(t0, &plan_frame(&key(), &h, &s, &refs, Verdict::Fetch));
    assert_eq!(agent.phase(), Phase::Fetch);
    let (d, sent) = serve(&mut agent, t0, &refs, &data, 0, outs);
    // The only decision is the hold timer's: Ready went out long before it.
    assert!(matches!(
        d,
        Decision::Boot {
            autonomous: false,
            validated_only: false,
            persisted: true,
            ..
        }
    ));
    let c = *agent.counters();
    assert_eq!((c.holds, c.hold_timeouts), (1, 1), "{c:?}");
    let ready = sent
        .iter()
        .filter(
            |m| matches!(m, Message::Ready(r) if r.digest == set_digest(&refs, "console=ttyS0")),
        )
        .count();
    assert_eq!(ready, 3, "Ready and its repeats before the hold ended");
    // Held for 20 s: an Alive every 2 s keeps the card present on the master.
    let alives: Vec<&msg::Alive> = sent
        .iter()
        .filter_map(|m| match m {
            Message::Alive(a) => Some(a),
            _ => None,
        })
        .collect();
    assert!((8..=11).contains(&alives.len()), "{} Alives", alives.len());
    assert!(
        alives
            .iter()
            .all(|a| a.running == Some(set_digest(&refs, "console=ttyS0"))
                && a.detail.contains("holding"))
    );
    assert_eq!(agent.phase(), Phase::Done);
    assert_eq!(
        agent.into_store().digest(),
        Some(set_digest(&refs, "console=ttyS0"))
    );
}

#[test]
fn held_card_waits_for_a_verified_warm_boot_and_ignores_forged_and_replayed_ones() {
    let vols = provisioned();
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    // A broadcast BurnNow (`master prepare`) while discovering: solicit again at once.
    agent.handle_frame(t0, &command_frame(&key(), Action::BurnNow, None, 1));
    let again = agent.tick(t0);
    assert_eq!(solicit_of(&again).1.nonce, s.nonce);
    let (refs, _) = set();
    let outs = agent.handle_frame(t0, &plan_frame(&key(), &h, &s, &refs, Verdict::Continue));
    assert_eq!(readies(&outs), 1);
    assert!(decision(&outs).is_none(), "no hand-off while held");
    assert_eq!(agent.phase(), Phase::Held);
    // The Ready repeats go out; then the card just listens, for minutes.
    let mut now = t0;
    let mut repeats = 0;
    for _ in 0..300 {
        now += Duration::from_secs(1);
        let outs = agent.tick(now);
        repeats += readies(&outs);
        assert!(decision(&outs).is_none());
    }
    assert_eq!(repeats, 2);
    assert_eq!(agent.phase(), Phase::Held);
    // Forged, foreign, replayed (the BurnNow's serial) WarmBoots change nothing.
    let forged = command_frame(
        &SigningKey::from_seed(&[9u8; 32]),
        Action::WarmBoot,
        None,
        2,
    );
    assert!(decision(&agent.handle_frame(now, &forged)).is_none());
    let foreign = command_frame(
        &key(),
        Action::WarmBoot,
        Some(MacAddr([2, 0, 0, 0, 0, 9])),
        2,
    );
    assert!(decision(&agent.handle_frame(now, &foreign)).is_none());
    let replayed = command_frame(&key(), Action::WarmBoot, None, 1);
    assert!(decision(&agent.handle_frame(now, &replayed)).is_none());
    assert_eq!(agent.phase(), Phase::Held);
    let c = *agent.counters();
    assert_eq!(
        (c.dropped_forged, c.dropped_not_for_us, c.dropped_replayed),
        (1, 1, 1)
    );
    // The master's warm boot: restart the conversation in phase WarmBoot.
    let warm = command_frame(&key(), Action::WarmBoot, None, 2);
    let outs = agent.handle_frame(now, &warm);
    assert_eq!(
        decision(&outs),
        Some(Decision::Reset {
            phase: BootPhase::WarmBoot
        })
    );
    assert_eq!(agent.phase(), Phase::Done);
    // The restarted conversation carries the stamp: the WarmBoot's other copies (and
    // replays) do not reset it again.
    let stamp = agent.last_command();
    assert_eq!(stamp, Some((1, 2)));
    let mut cfg = config();
    cfg.phase = BootPhase::WarmBoot;
    let mut next = Agent::new(cfg, store(&vols), now).with_last_command(stamp);
    next.tick(now);
    assert!(decision(&next.handle_frame(now, &warm)).is_none());
    assert_eq!(next.counters().dropped_replayed, 1);
    assert!(!next.holding_ordered());
}

/// A plan of `refs` answering `s`, signed with the fixture key, of master epoch `epoch`.
fn plan_of_epoch(h: &Header, s: &Solicit, refs: &[ArtifactRef], epoch: u64) -> Vec<u8> {
    let body = PlanBody {
        artifacts: refs.to_vec(),
        cmdline: "console=ttyS0".into(),
        persist: true,
        verdict: Verdict::Fetch,
        digest: set_digest(refs, "console=ttyS0"),
        nonce: s.nonce,
        epoch,
        artifacts_omitted: false,
        report_inventory: false,
    };
    encode(
        CARD,
        h.session,
        &Message::Plan(key().sign_plan(body).unwrap()),
    )
}

/// A Heartbeat of master epoch `epoch` from `src`, broadcast.
fn heartbeat_from(src: MacAddr, epoch: u64) -> Vec<u8> {
    let link = Link {
        dst: MacAddr::BROADCAST,
        src,
        ethertype: ET,
    };
    let m = Message::Heartbeat(shelfboot_proto::msg::Heartbeat {
        master_id: 9,
        epoch,
    });
    let mut buf = vec![0u8; shelfboot_proto::MAX_FRAME_LEN];
    let n = encode_message(&mut buf, &link, 0, 1, &m).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn a_fetching_card_follows_a_higher_epoch_at_once_and_resumes_what_it_staged() {
    let vols = FakeVolumes::new(4096, 1024);
    let (refs, data) = big_set();
    let size = refs[0].size;
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    let outs = agent.handle_frame(t0, &plan_of_epoch(&h, &s, &refs, 1));
    // The first master goes silent once 80 % of the kernel is staged.
    let (d, _, first_frames) = serve_until(&mut agent, t0, &refs, &data, 0, outs, |a| {
        a.counters().bytes_written > size * 4 / 5
    });
    assert!(d.is_none());
    let staged = agent.counters().bytes_written;

    // Its own epoch again, or a lower one, is no news.
    let now = t0 + Duration::from_millis(10);
    let other = MacAddr([0x02, 0, 0, 0, 0, 0xbb]);
    for e in [0, 1] {
        let outs = agent.handle_frame(now, &heartbeat_from(other, e));
        assert!(frames(&outs).is_empty());
    }
    assert_eq!(agent.counters().epoch_changes, 0);
    // Another master announces epoch 2: the card leaves the transfer and asks at once.
    let mut outs = agent.handle_frame(now, &heartbeat_from(other, 2));
    outs.extend(agent.tick(now));
    assert!(
        outs.iter().any(|o| matches!(o, Output::LeaveGroup(_))),
        "{outs:?}"
    );
    let (h2, s2) = solicit_of(&outs);
    assert_ne!(
        s2.nonce, s.nonce,
        "a fresh nonce: the old plan no longer matches"
    );
    assert_eq!(agent.counters().epoch_changes, 1);
    // The same announcement again (or forged copies of it) costs nothing more.
    let later = now + Duration::from_millis(1);
    let mut outs = agent.handle_frame(later, &heartbeat_from(other, 2));
    outs.extend(agent.tick(later));
    assert!(frames(&outs).is_empty(), "{outs:?}");
    assert_eq!(agent.counters().epoch_changes, 1);

    // The new master's plan resumes the kernel where the card stands.
    let outs = agent.handle_frame(later, &plan_of_epoch(&h2, &s2, &refs, 2));
    let (d, sent, frames_after) = serve_until(&mut agent, later, &refs, &data, 0, outs, |_| false);
    let Some(Decision::Boot { set, .. }) = d else {
        panic!("expected a boot decision, got {d:?}")
    };
    assert_resumed(&sent, &refs[0]);
    assert!(
        agent.counters().bytes_written - staged < size / 5,
        "after the takeover the card wrote {} more bytes of a {size}-byte kernel",
        agent.counters().bytes_written - staged
    );
    assert!(
        frames_after * 4 < first_frames,
        "{frames_after} vs {first_frames}"
    );
    let mut st = store(&vols);
    assert!(
        st.verify_set(&set).unwrap().is_empty(),
        "every byte as sent"
    );
}

#[test]
fn a_plan_of_a_lower_epoch_than_one_obeyed_is_dropped() {
    let vols = FakeVolumes::new(4096, 256);
    let t0 = Instant::now();
    // A command of epoch 5 was obeyed earlier in this boot.
    let mut agent = Agent::new(config(), store(&vols), t0).with_last_command(Some((5, 1)));
    let (h, s) = solicit_of(&agent.tick(t0));
    let (refs, _) = set();
    let outs = agent.handle_frame(t0, &plan_of_epoch(&h, &s, &refs, 4));
    assert!(frames(&outs).is_empty(), "{outs:?}");
    assert_eq!(agent.counters().plans_accepted, 0);
    assert_eq!(agent.counters().dropped_replayed, 1);
    assert_eq!(agent.phase(), Phase::Discover);
    // The master of epoch 5 (or a later one) is obeyed.
    let outs = agent.handle_frame(t0, &plan_of_epoch(&h, &s, &refs, 5));
    assert_eq!(agent.counters().plans_accepted, 1, "{outs:?}");
}

#[test]
fn a_card_that_obeyed_no_master_yet_ignores_epoch_announcements() {
    let vols = FakeVolumes::new(4096, 256);
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), store(&vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    // The master that starts serving announces itself while the first Solicit is out.
    let now = t0 + Duration::from_millis(1);
    let mut outs = agent.handle_frame(now, &heartbeat_from(MASTER, 7));
    outs.extend(agent.tick(now));
    assert!(frames(&outs).is_empty(), "no second Solicit: {outs:?}");
    assert_eq!(agent.counters().epoch_changes, 0);
    // Its plan, answering the first Solicit, is taken.
    let (refs, _) = set();
    let _ = agent.handle_frame(now, &plan_of_epoch(&h, &s, &refs, 7));
    assert_eq!(agent.counters().plans_accepted, 1);
}

/// A plan of `set()` for the Solicit `h`/`s`, signed by `signer` (which attaches its
/// certificate, if it has one).
fn certified_plan_frame(signer: &MasterSigner, h: &Header, s: &Solicit) -> Vec<u8> {
    let (refs, _) = set();
    let body = PlanBody {
        digest: set_digest(&refs, "console=ttyS0"),
        artifacts: refs,
        cmdline: "console=ttyS0".into(),
        persist: true,
        verdict: Verdict::Fetch,
        nonce: s.nonce,
        epoch: 1,
        artifacts_omitted: false,
        report_inventory: false,
    };
    encode(
        CARD,
        h.session,
        &Message::Plan(signer.sign_plan(body).unwrap()),
    )
}

/// A card whose anchor holds only the shelf key (seed 20), and its first Solicit.
fn shelf_anchored_card(vols: &FakeVolumes, t0: Instant) -> (Agent<FakeVolumes>, Header, Solicit) {
    let cfg = AgentConfig {
        anchor: TrustAnchor::new(vec![SigningKey::from_seed(&[20u8; 32]).public_key()]),
        ..config()
    };
    let mut agent = Agent::new(cfg, store(vols), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    (agent, h, s)
}

#[test]
fn a_plan_from_a_master_key_certified_by_the_shelf_key_is_accepted() {
    let vols = FakeVolumes::new(4096, 256);
    let t0 = Instant::now();
    let (mut agent, h, s) = shelf_anchored_card(&vols, t0);
    let shelf = SigningKey::from_seed(&[20u8; 32]);
    let cert = shelf.certify(&key().public_key()).unwrap();
    let signer = MasterSigner::certified(key(), cert).unwrap();
    // The same master key without its certificate is not trusted by this card.
    agent.handle_frame(
        t0,
        &certified_plan_frame(&MasterSigner::from(key()), &h, &s),
    );
    assert_eq!(agent.counters().dropped_forged, 1);
    assert_eq!(agent.phase(), Phase::Discover);
    let outs = agent.handle_frame(t0, &certified_plan_frame(&signer, &h, &s));
    assert_eq!(agent.counters().plans_accepted, 1, "{outs:?}");
    assert_eq!(agent.phase(), Phase::Fetch);
    // Its commands are obeyed too.
    let body = CommandBody {
        action: Action::Reset,
        target: Some(CARD),
        epoch: 1,
        serial: 1,
    };
    let cmd = Message::Command(signer.sign_command(body).unwrap());
    assert_eq!(
        decision(&agent.handle_frame(t0, &encode(CARD, 0, &cmd))),
        Some(Decision::Reset {
            phase: BootPhase::AfterReset
        })
    );
}

#[test]
fn a_plan_whose_certificate_is_signed_by_an_untrusted_key_is_dropped_as_forged() {
    let vols = FakeVolumes::new(4096, 256);
    let t0 = Instant::now();
    let (mut agent, h, s) = shelf_anchored_card(&vols, t0);
    let rogue_shelf = SigningKey::from_seed(&[21u8; 32]);
    let cert = rogue_shelf.certify(&key().public_key()).unwrap();
    let signer = MasterSigner::certified(key(), cert).unwrap();
    let outs = agent.handle_frame(t0, &certified_plan_frame(&signer, &h, &s));
    assert!(frames(&outs).is_empty(), "{outs:?}");
    let c = *agent.counters();
    assert_eq!((c.dropped_forged, c.plans_accepted), (1, 0), "{c:?}");
    assert_eq!(agent.phase(), Phase::Discover);
    // Nor is a command carrying it obeyed.
    let body = CommandBody {
        action: Action::Reset,
        target: Some(CARD),
        epoch: 1,
        serial: 1,
    };
    let cmd = Message::Command(signer.sign_command(body).unwrap());
    assert!(decision(&agent.handle_frame(t0, &encode(CARD, 0, &cmd))).is_none());
    assert_eq!(agent.counters().dropped_forged, 2);
    assert!(vols.ops().is_empty(), "nothing written: {:?}", vols.ops());
}

#[test]
fn a_plan_signed_by_another_key_than_the_certified_one_is_dropped_as_forged() {
    let vols = FakeVolumes::new(4096, 256);
    let t0 = Instant::now();
    let (mut agent, h, s) = shelf_anchored_card(&vols, t0);
    let shelf = SigningKey::from_seed(&[20u8; 32]);
    // A genuine certificate of the master key, attached to a plan signed by another key.
    let cert = shelf.certify(&key().public_key()).unwrap();
    let (refs, _) = set();
    let body = PlanBody {
        digest: set_digest(&refs, "console=ttyS0"),
        artifacts: refs,
        cmdline: "console=ttyS0".into(),
        persist: true,
        verdict: Verdict::Fetch,
        nonce: s.nonce,
        epoch: 1,
        artifacts_omitted: false,
        report_inventory: false,
    };
    let mut plan = SigningKey::from_seed(&[22u8; 32]).sign_plan(body).unwrap();
    plan.cert = Some(cert);
    let outs = agent.handle_frame(t0, &encode(CARD, h.session, &Message::Plan(plan)));
    assert!(frames(&outs).is_empty(), "{outs:?}");
    let c = *agent.counters();
    assert_eq!((c.dropped_forged, c.plans_accepted), (1, 0), "{c:?}");
    assert_eq!(agent.phase(), Phase::Discover);
    assert!(vols.ops().is_empty(), "nothing written: {:?}", vols.ops());
}

#[test]
fn a_plan_for_the_set_the_card_rolled_back_from_is_refused_and_the_committed_set_boots() {
    // Set 1 committed, then set 2 over it; set 2's health check failed and the card
    // rolled back while it ran.
    let vols = provisioned();
    let (refs1, _) = set();
    let data2 = vec![content(7, 30_000), content(8, 5_000)];
    let refs2 = vec![
        artifact(ArtifactKind::BootImage, "kernel2", &data2[0]),
        artifact(ArtifactKind::Package, "base2", &data2[1]),
    ];
    {
        let mut st = store(&vols);
        st.begin(&refs2, "console=ttyS0").unwrap();
        for (a, d) in refs2.iter().zip(&data2) {
            st.stage(a, d.as_slice()).unwrap();
        }
        st.commit().unwrap();
        st.rollback_running().unwrap();
    }
    // The open collects the failed set's volumes, left while it ran.
    let opened = store(&vols);
    let ops = vols.ops().len();
    let t0 = Instant::now();
    let mut agent = Agent::new(config(), opened, t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    assert_eq!(
        s.inventory_digest,
        Some(set_digest(&refs1, "console=ttyS0"))
    );
    let outs = agent.handle_frame(t0, &plan_frame(&key(), &h, &s, &refs2, Verdict::Fetch));
    match decision(&outs) {
        Some(Decision::Boot { set, .. }) => {
            assert_eq!(set.digest, set_digest(&refs1, "console=ttyS0"));
        }
        other => panic!("expected the committed set to boot, got {other:?}"),
    }
    let refused = frames(&outs).into_iter().find_map(|(_, m, d)| match m {
        Message::Error(e) => Some((e, d)),
        _ => None,
    });
    let (e, dst) = refused.expect("an Error to the master");
    assert_eq!(dst, MASTER);
    assert_eq!(
        e.reason,
        ErrorReason::RolledBack {
            set: set_digest(&refs2, "console=ttyS0")
        }
    );
    assert!(
        !frames(&outs)
            .iter()
            .any(|(_, m, _)| matches!(m, Message::Fetch(_))),
        "nothing of the failed set is fetched again"
    );
    assert_eq!(vols.ops().len(), ops, "flash untouched");
    assert_eq!(agent.obeyed(), Some((MASTER, 1)));
}

#[test]
fn card_without_flash_runs_every_plan_from_ram_and_never_claims_it_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    // Cold boot: nothing in RAM; a plain (persist = true) plan is fetched there.
    let mut agent = Agent::in_ram(config(), ram(dir.path(), 64), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    assert_eq!(s.inventory_digest, None, "nothing survives in RAM");
    let (refs, data) = set();
    let plan = plan_frame(&key(), &h, &s, &refs, Verdict::Fetch);
    let outs = agent.handle_frame(t0, &plan);
    assert_eq!(agent.phase(), Phase::Fetch);
    let (d, sent) = serve(&mut agent, t0, &refs, &data, 0, outs);
    let Decision::Boot { set, persisted, .. } = d else {
        panic!("expected a boot decision, got {d:?}");
    };
    assert!(!persisted, "a RAM set is not persisted");
    assert!(!ready_of(&sent).expect("Ready sent").persisted);
    let mut main = agent.into_store();
    assert!(main.verify_set(&set).unwrap().is_empty());
    drop(main);

    // The kexec'd boot image finds the directory carried: the Solicit still reports
    // nothing installed, the master's full plan only validates.
    let mut agent = Agent::in_ram(config(), ram(dir.path(), 64), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    assert_eq!(s.inventory_digest, None);
    assert!(s.inventory.is_empty());
    let outs = agent.handle_frame(t0, &plan_frame(&key(), &h, &s, &refs, Verdict::Fetch));
    assert_validated_in_ram(&outs);

    // A test-mode plan (persist = false) goes to the same store: there is no other.
    let mut agent = Agent::in_ram(config(), ram(dir.path(), 64), t0);
    let (h, s) = solicit_of(&agent.tick(t0));
    let (trefs, tdata) = test_set();
    let outs = agent.handle_frame(
        t0,
        &plan_frame_persist(&key(), &h, &s, &trefs, Verdict::Fetch, false),
    );
    let (d, _) = serve(&mut agent, t0, &trefs, &tdata, 0, outs);
    assert!(matches!(
        d,
        Decision::Boot {
            persisted: false,
            ..
        }
    ));
    assert_eq!(
        agent.store().digest(),
        Some(set_digest(&trefs, "console=ttyS0"))
    );
}
