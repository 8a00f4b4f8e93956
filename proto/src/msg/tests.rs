//! Codec tests: round trips, strictness, reply helpers, property tests.

use proptest::prelude::*;

use super::*;
use crate::frame::{Flags, MacAddr};
use crate::{DEFAULT_ETHERTYPE, MAX_FRAME_LEN};

fn link() -> Link {
    Link {
        dst: MacAddr::BROADCAST,
        src: MacAddr([2, 0, 0, 0, 0, 7]),
        ethertype: DEFAULT_ETHERTYPE,
    }
}

use crate::samples::every_message;

#[test]
fn every_type_round_trips_through_a_frame() {
    let msgs = every_message();
    let control = MessageType::ALL.iter().filter(|t| t.is_control()).count();
    assert_eq!(msgs.len(), control, "a message type has no sample");
    for msg in msgs {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = encode_message(&mut buf, &link(), 11, 12, &msg).unwrap();
        let (hdr, back) = decode_frame(&buf[..n], DEFAULT_ETHERTYPE).unwrap();
        assert_eq!(back, msg);
        assert_eq!(
            (hdr.msg_type, hdr.session, hdr.sequence),
            (msg.msg_type(), 11, 12)
        );
    }
}

#[test]
fn with_header_keeps_flags_and_forces_type() {
    let msg = &every_message()[1];
    let mut buf = [0u8; 256];
    let hdr = Header {
        flags: Flags::RETRANSMIT,
        ..Header::new(MessageType::Data, 1, 2)
    };
    let n = encode_message_with_header(&mut buf, &link(), &hdr, msg).unwrap();
    let (h, back) = decode_frame(&buf[..n], DEFAULT_ETHERTYPE).unwrap();
    assert_eq!(h.msg_type, MessageType::Advertise);
    assert_eq!(h.flags, Flags::RETRANSMIT);
    assert_eq!(&back, msg);
    assert!(matches!(
        encode_message_with_header(&mut buf[..40], &link(), &hdr, msg),
        Err(MsgError::Frame(FrameError::BufferTooSmall { .. }))
    ));
}

#[test]
fn trailing_bytes_rejected() {
    for msg in every_message() {
        let mut body = msg.encode_body().unwrap();
        body.push(0);
        assert!(
            matches!(
                Message::decode_body(msg.msg_type(), &body),
                Err(MsgError::TrailingBytes { extra: 1, .. })
            ),
            "{:?}",
            msg.msg_type()
        );
    }
}

#[test]
fn truncated_bodies_error() {
    for msg in every_message() {
        let body = msg.encode_body().unwrap();
        for cut in 0..body.len() {
            assert!(Message::decode_body(msg.msg_type(), &body[..cut]).is_err());
        }
    }
}

#[test]
fn oversize_body_rejected_before_decoding() {
    let body = vec![0u8; MAX_CONTROL_BODY_LEN + 1];
    assert!(matches!(
        Message::decode_body(MessageType::Solicit, &body),
        Err(MsgError::TooLarge { len, .. }) if len == MAX_CONTROL_BODY_LEN + 1
    ));
    let huge = Message::Error(ErrorMsg {
        reason: ErrorReason::Malformed,
        detail: "x".repeat(MAX_CONTROL_BODY_LEN),
    });
    assert!(matches!(huge.encode_body(), Err(MsgError::TooLarge { .. })));
}

#[test]
fn data_type_is_not_control() {
    assert!(matches!(
        Message::decode_body(MessageType::Data, &[0xa0]),
        Err(MsgError::NotControl { .. })
    ));
}

#[test]
fn non_canonical_rejected() {
    // Heartbeat {mi: 1, e: 2} with `1` encoded as a one-byte-argument integer (0x18 0x01).
    let canonical = hex::decode("a2626d690161650 2".replace(' ', "")).unwrap();
    assert!(Message::decode_body(MessageType::Heartbeat, &canonical).is_ok());
    let long_int = hex::decode("a2626d6918016165 02".replace(' ', "")).unwrap();
    assert!(matches!(
        Message::decode_body(MessageType::Heartbeat, &long_int),
        Err(MsgError::NonCanonical { .. })
    ));
    // Same map with keys swapped.
    let swapped = hex::decode("a2616502626d6901").unwrap();
    assert!(matches!(
        Message::decode_body(MessageType::Heartbeat, &swapped),
        Err(MsgError::NonCanonical { .. })
    ));
    // Indefinite-length map.
    let indefinite = hex::decode("bf626d6901616502ff").unwrap();
    assert!(Message::decode_body(MessageType::Heartbeat, &indefinite).is_err());
}

#[test]
fn unknown_and_missing_keys_rejected() {
    // {mi: 1, e: 2, x: 0}
    let extra = hex::decode("a3626d690161650261780 0".replace(' ', "")).unwrap();
    assert!(matches!(
        Message::decode_body(MessageType::Heartbeat, &extra),
        Err(MsgError::Decode { .. })
    ));
    // {mi: 1}
    let missing = hex::decode("a1626d6901").unwrap();
    assert!(matches!(
        Message::decode_body(MessageType::Heartbeat, &missing),
        Err(MsgError::Decode { .. })
    ));
}

#[test]
fn rule_violations_rejected() {
    let mut plan = match &every_message()[3] {
        Message::Plan(p) => p.clone(),
        _ => unreachable!(),
    };
    plan.body
        .artifacts
        .push(crate::samples::artifact(ArtifactKind::BootImage, "k2", 7));
    let msg = Message::Plan(plan);
    assert!(matches!(msg.encode_body(), Err(MsgError::Invalid { .. })));
}

#[test]
fn replies_for_unknown_version_and_type() {
    let raw = RawHeader {
        version: 9,
        msg_type: 0x01,
        flags: 0,
        session: 77,
        sequence: 3,
    };
    let (hdr, msg) = reply_for(&FrameError::UnsupportedVersion { header: raw }).unwrap();
    assert_eq!((hdr.session, hdr.sequence), (77, 3));
    assert_eq!(hdr.version, version::CURRENT);
    match msg {
        Message::Error(ErrorMsg {
            reason: ErrorReason::UnsupportedVersion { min, max },
            ..
        }) => assert_eq!((min, max), (version::MIN, version::CURRENT)),
        other => panic!("unexpected reply {other:?}"),
    }
    let raw = RawHeader {
        version: 1,
        msg_type: 0x33,
        ..raw
    };
    let (_, msg) = reply_for(&FrameError::UnknownMessageType { header: raw }).unwrap();
    assert!(matches!(
        msg,
        Message::Error(ErrorMsg {
            reason: ErrorReason::UnknownMessageType { msg_type: 0x33 },
            ..
        })
    ));
    assert!(
        reply_for(&FrameError::BadCrc {
            carried: 0,
            computed: 1
        })
        .is_none()
    );
}

#[test]
fn frame_version_from_the_future_gets_a_reply() {
    let mut buf = [0u8; 256];
    let n = encode_message(&mut buf, &link(), 5, 6, &every_message()[1]).unwrap();
    // Rewrite the version and fix the CRC, as a v2 peer would send it.
    buf[crate::frame::VERSION_OFF] = version::CURRENT + 1;
    let payload_len = usize::from(u16::from_be_bytes([buf[26], buf[27]]));
    let crc_off = PAYLOAD_OFF + payload_len;
    let crc = crc32fast::hash(&buf[crate::frame::VERSION_OFF..crc_off]);
    buf[crc_off..crc_off + 4].copy_from_slice(&crc.to_be_bytes());
    let err = decode_frame(&buf[..n], DEFAULT_ETHERTYPE).unwrap_err();
    let MsgError::Frame(fe) = err else {
        panic!("expected a frame error, got {err:?}")
    };
    assert!(reply_for(&fe).is_some());
}

fn arb_digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn arb_artifact() -> impl Strategy<Value = ArtifactRef> {
    (
        prop_oneof![Just(ArtifactKind::BootImage), Just(ArtifactKind::Package)],
        "[a-z0-9-]{0,16}",
        "[0-9.]{0,8}",
        arb_digest(),
        any::<u64>(),
    )
        .prop_map(|(kind, name, version, sha256, size)| ArtifactRef {
            kind,
            name,
            version,
            sha256,
            size,
        })
}

fn arb_inventory() -> impl Strategy<Value = Vec<ArtifactRef>> {
    proptest::collection::vec(arb_artifact(), 0..6).prop_map(|mut v| {
        // At most one boot image.
        let mut seen = false;
        for a in &mut v {
            if a.kind == ArtifactKind::BootImage {
                if seen {
                    a.kind = ArtifactKind::Package;
                }
                seen = true;
            }
        }
        v
    })
}

fn arb_mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

fn arb_cert() -> impl Strategy<Value = Option<MasterCert>> {
    proptest::option::of(
        (any::<[u8; 32]>(), arb_sig()).prop_map(|(key, signature)| MasterCert {
            body: MasterCertBody { key },
            signature,
        }),
    )
}

fn arb_sig() -> impl Strategy<Value = Signature> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
        let mut s = [0u8; 64];
        s[..32].copy_from_slice(&a);
        s[32..].copy_from_slice(&b);
        Signature(s)
    })
}

fn arb_reason() -> impl Strategy<Value = ErrorReason> {
    prop_oneof![
        (any::<u64>(), any::<u64>())
            .prop_map(|(needed, available)| ErrorReason::NoSpace { needed, available }),
        any::<u32>().prop_map(|count| ErrorReason::BadBlocks { count }),
        ("[a-z]{0,12}", arb_digest(), arb_digest()).prop_map(|(artifact, expected, got)| {
            ErrorReason::VerificationFailed {
                artifact,
                expected,
                got,
            }
        }),
        Just(ErrorReason::UnknownCard),
        (any::<u8>(), any::<u8>())
            .prop_map(|(min, max)| ErrorReason::UnsupportedVersion { min, max }),
        any::<u8>().prop_map(|msg_type| ErrorReason::UnknownMessageType { msg_type }),
        Just(ErrorReason::Malformed),
    ]
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Reset),
        Just(Action::WarmBoot),
        Just(Action::BurnNow),
        Just(Action::EnterTestMode),
        Just(Action::LeaveTestMode),
    ]
}

pub(crate) fn arb_message() -> impl Strategy<Value = Message> {
    let solicit = (
        (
            arb_mac(),
            "[a-z0-9-]{0,12}",
            any::<bool>(),
            any::<u16>(),
            any::<u16>(),
        ),
        (
            "[A-Z0-9]{0,4}",
            proptest::collection::vec("[a-z]{1,8}", 0..4),
            0..4u8,
            arb_inventory(),
            proptest::option::of(arb_digest()),
            any::<[u8; 16]>(),
        ),
    )
        .prop_map(
            |((mac, card_type, arm, shelf, slot), (hw_rev, features, ph, inventory, d, nonce))| {
                Message::Solicit(Solicit {
                    mac,
                    card_type,
                    arch: if arm { Arch::Aarch64 } else { Arch::X86_64 },
                    shelf,
                    slot,
                    hw_rev,
                    features,
                    phase: [
                        BootPhase::PowerOn,
                        BootPhase::WarmBoot,
                        BootPhase::AfterReset,
                        BootPhase::Recovery,
                    ][usize::from(ph)],
                    inventory,
                    inventory_digest: d,
                    nonce,
                    inventory_omitted: false,
                    link_mtu: None,
                })
            },
        );
    let plan = (
        arb_inventory(),
        "[ -~]{0,40}",
        any::<bool>(),
        any::<bool>(),
        arb_digest(),
        any::<[u8; 16]>(),
        any::<u64>(),
        (arb_sig(), arb_cert()),
    )
        .prop_map(
            |(artifacts, cmdline, persist, fetch, digest, nonce, epoch, (signature, cert))| {
                Message::Plan(Plan {
                    body: PlanBody {
                        artifacts,
                        cmdline,
                        persist,
                        verdict: if fetch {
                            Verdict::Fetch
                        } else {
                            Verdict::Continue
                        },
                        digest,
                        nonce,
                        epoch,
                        artifacts_omitted: false,
                        report_inventory: false,
                    },
                    signature,
                    cert,
                })
            },
        );
    prop_oneof![
        solicit,
        (any::<u64>(), any::<u64>())
            .prop_map(|(master_id, epoch)| Message::Advertise(Advertise { master_id, epoch })),
        (any::<u64>(), any::<u64>())
            .prop_map(|(master_id, epoch)| Message::Heartbeat(Heartbeat { master_id, epoch })),
        plan,
        (arb_digest(), any::<u32>()).prop_map(|(artifact, have_slices)| Message::Fetch(Fetch {
            artifact,
            have_slices
        })),
        (
            any::<u32>(),
            arb_digest(),
            any::<u64>(),
            arb_mac(),
            1..u16::MAX,
            any::<u32>()
        )
            .prop_map(
                |(transfer, artifact, size, group, block_size, first_slice)| {
                    Message::Join(Join {
                        transfer,
                        artifact,
                        size,
                        group,
                        block_size,
                        first_slice,
                    })
                }
            ),
        (any::<u32>(), any::<u32>(), any::<[u8; 16]>()).prop_map(|(transfer, slice, missing)| {
            Message::Nack(Nack {
                transfer,
                slice,
                missing,
            })
        }),
        (
            0..4u8,
            proptest::option::of(arb_digest()),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(st, artifact, done, total)| Message::Progress(Progress {
                stage: [
                    Stage::Fetching,
                    Stage::Verifying,
                    Stage::Writing,
                    Stage::Committing
                ][usize::from(st)],
                artifact,
                done,
                total,
            })),
        (arb_digest(), any::<bool>(), any::<bool>()).prop_map(|(digest, persisted, k)| {
            Message::Ready(Ready {
                digest,
                persisted,
                handoff: if k {
                    Handoff::Kexec
                } else {
                    Handoff::SwitchRoot
                },
            })
        }),
        (arb_reason(), "[ -~]{0,60}")
            .prop_map(|(reason, detail)| Message::Error(ErrorMsg { reason, detail })),
        (
            arb_action(),
            proptest::option::of(arb_mac()),
            any::<u64>(),
            any::<u64>(),
            arb_sig(),
            arb_cert()
        )
            .prop_map(|(action, target, epoch, serial, signature, cert)| {
                Message::Command(Command {
                    body: CommandBody {
                        action,
                        target,
                        epoch,
                        serial,
                    },
                    signature,
                    cert,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_message_round_trips(msg in arb_message(), session: u32, seq: u32) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = encode_message(&mut buf, &link(), session, seq, &msg).unwrap();
        let (hdr, back) = decode_frame(&buf[..n], DEFAULT_ETHERTYPE).unwrap();
        prop_assert_eq!(back, msg);
        prop_assert_eq!((hdr.session, hdr.sequence), (session, seq));
    }

    #[test]
    fn random_bodies_never_panic(t in 1u8..=0x0b, body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let t = MessageType::from_code(t).unwrap();
        if let Ok(m) = Message::decode_body(t, &body) {
            prop_assert_eq!(m.encode_body().unwrap(), body);
        }
    }
}

#[test]
fn every_sample_frame_truncated_anywhere_errors() {
    for frame in crate::samples::every_frame() {
        let len = usize::from(u16::from_be_bytes([frame[26], frame[27]]));
        let end = crate::frame::FRAME_OVERHEAD + len;
        for cut in 0..end {
            let bytes = &frame[..cut];
            assert!(
                Frame::decode(bytes, DEFAULT_ETHERTYPE).is_err(),
                "cut {cut}"
            );
            assert!(decode_frame(bytes, DEFAULT_ETHERTYPE).is_err(), "cut {cut}");
            let _ = crate::describe_frame(bytes);
        }
        // Cutting only zero padding keeps the frame valid (veth does not pad).
        for cut in end..=frame.len() {
            assert!(
                Frame::decode(&frame[..cut], DEFAULT_ETHERTYPE).is_ok(),
                "cut {cut}"
            );
        }
    }
}

fn realistic_artifacts() -> Vec<ArtifactRef> {
    (0..16u8)
        .map(|i| ArtifactRef {
            kind: if i == 0 {
                ArtifactKind::BootImage
            } else {
                ArtifactKind::Package
            },
            name: format!("package-name-{i:03}"),
            version: "10.20.300".into(),
            sha256: Digest([i; 32]),
            size: 200_000_000,
        })
        .collect()
}

#[test]
fn a_solicit_with_16_realistic_artifacts_fits_one_frame() {
    let inventory = realistic_artifacts();
    let msg = Message::Solicit(Solicit {
        mac: MacAddr([2, 0, 0, 0, 0, 7]),
        card_type: "linecard-100g-x".into(),
        arch: Arch::X86_64,
        shelf: u16::MAX,
        slot: u16::MAX,
        hw_rev: "rev-B2".into(),
        features: vec!["mpls".into(), "macsec".into()],
        phase: BootPhase::AfterReset,
        inventory_digest: Some(set_digest(&inventory, "")),
        inventory,
        nonce: [0; 16],
        inventory_omitted: false,
        link_mtu: None,
    });
    let len = msg.encode_body().unwrap().len();
    assert!(len <= MAX_CONTROL_BODY_LEN, "{len}");
}

#[test]
fn a_plan_of_16_realistic_artifacts_fits_one_frame() {
    let artifacts = realistic_artifacts();
    let body = PlanBody {
        digest: set_digest(&artifacts, ""),
        artifacts,
        cmdline: "console=ttyS0,115200 root=/dev/ubiblock0_1 ro quiet panic=10".into(),
        persist: true,
        verdict: Verdict::Fetch,
        nonce: [0; 16],
        epoch: u64::MAX,
        artifacts_omitted: false,
        report_inventory: false,
    };
    let plan = Message::Plan(Plan {
        body: body.clone(),
        signature: Signature([0; 64]),
        cert: None,
    });
    let len = plan.encode_body().unwrap().len();
    assert!(len <= MAX_CONTROL_BODY_LEN, "{len}");
    let mut bigger = body;
    for i in 16..24u8 {
        bigger.artifacts.push(crate::samples::artifact(
            ArtifactKind::Package,
            &format!("package-name-{i:03}"),
            i,
        ));
    }
    let too_big = Message::Plan(Plan {
        body: bigger,
        signature: Signature([0; 64]),
        cert: None,
    });
    assert!(matches!(
        too_big.encode_body(),
        Err(MsgError::TooLarge { .. })
    ));
}
