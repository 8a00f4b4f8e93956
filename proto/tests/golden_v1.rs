//! Golden bytes of protocol version 1.
//!
//! IF THIS FAILS, YOUR CHANGE BROKE THE WIRE FORMAT: FIX THE CHANGE, NOT THE TEST.
//!
//! Every control message, every error reason, the frame header, the data header, the set
//! digest and the signatures are pinned here as hex. Cards in the field run older builds;
//! a byte that moves here is a card that stops booting. A deliberate format change bumps
//! `version::CURRENT` and adds `golden_v2.rs` next to this file (which stays, unchanged,
//! for as long as version 1 is in `MIN..=CURRENT`).
//!
//! Since version 2 this build encodes version 2 by default, so the frames here are
//! encoded with an explicit version-1 header (what the master sends a v1 card), and the
//! v1 unsupported-version reply is built as a v1 peer builds it. No expected byte changed.

#[cfg(test)]
mod v1 {
    use shelfboot_proto::data::{
        BLOCKS_PER_SLICE, DataHeader, SliceBitmap, block_size_for_mtu, encode_data_frame,
    };
    use shelfboot_proto::frame::{Flags, Header, Link, MacAddr, MessageType};
    use shelfboot_proto::msg::*;
    use shelfboot_proto::sign::{SigningKey, TrustAnchor};
    use shelfboot_proto::{DEFAULT_ETHERTYPE, MAX_FRAME_LEN, version};

    /// Compares and, on mismatch, prints the actual hex so a *deliberate* new version's file
    /// can be written; never paste it over a v1 value.
    fn check(what: &str, actual: &[u8], expected_hex: &str) {
        let expected_hex: String = expected_hex.split_whitespace().collect();
        let actual_hex = hex::encode(actual);
        assert_eq!(
            actual_hex, expected_hex,
            "golden v1 mismatch for {what}: the wire format changed (see the file header)"
        );
    }

    fn kernel() -> ArtifactRef {
        ArtifactRef {
            kind: ArtifactKind::BootImage,
            name: "kernel".into(),
            version: "6.1.0".into(),
            sha256: Digest([0x11; 32]),
            size: 8_000_000,
        }
    }

    fn base() -> ArtifactRef {
        ArtifactRef {
            kind: ArtifactKind::Package,
            name: "base".into(),
            version: "1.0".into(),
            sha256: Digest([0x22; 32]),
            size: 20_000_000,
        }
    }

    const CMDLINE: &str = "console=ttyS0";
    const NONCE: [u8; 16] = [0xa5; 16];

    fn key() -> SigningKey {
        SigningKey::from_seed(&[0x42; 32])
    }

    fn body(msg: Message) -> Vec<u8> {
        let bytes = msg.encode_body().unwrap();
        // Golden bytes must also decode back to the same value.
        assert_eq!(Message::decode_body(msg.msg_type(), &bytes).unwrap(), msg);
        bytes
    }

    #[test]
    fn constants() {
        // Version 1 is still spoken (decoded, and encoded for v1 peers).
        assert_eq!(version::MIN, 1);
        assert!(version::is_supported(1));
        assert_eq!(DEFAULT_ETHERTYPE, 0x88b5);
        assert_eq!(BLOCKS_PER_SLICE, 128);
        assert_eq!(block_size_for_mtu(1500).unwrap(), 1408);
        assert_eq!(block_size_for_mtu(9000).unwrap(), 8960);
        let codes: Vec<u8> = MessageType::ALL
            .iter()
            .filter(|t| t.since_version() <= 1)
            .map(|t| t.code())
            .collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x40]);
        assert_eq!(Flags::RETRANSMIT.bits(), 1);
        assert_eq!(Flags::LAST.bits(), 2);
    }

    #[test]
    fn set_digest_v1() {
        check(
            "set_digest(empty)",
            set_digest(&[], "").as_bytes(),
            "d4ac3a8bdbb5789e6f44879958637ec1206de66b986d486c1a48bc456cca623a",
        );
        check(
            "set_digest(kernel, base)",
            set_digest(&[kernel(), base()], CMDLINE).as_bytes(),
            "6f60aeae853a101159629859dca99be2ae81a342f8163203a893955a040d36ce",
        );
    }

    #[test]
    fn frame_header_v1() {
        let link = Link {
            dst: MacAddr::BROADCAST,
            src: MacAddr([0x02, 0, 0, 0, 0x01, 0x04]),
            ethertype: DEFAULT_ETHERTYPE,
        };
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = encode_message_with_header(
            &mut buf,
            &link,
            &Header::new(MessageType::Heartbeat, 0x0102_0304, 0x0506_0708).in_version(1),
            &Message::Heartbeat(Heartbeat {
                master_id: 7,
                epoch: 3,
            }),
        )
        .unwrap();
        check(
            "heartbeat frame (padded to 60)",
            &buf[..n],
            "
        ffffffffffff02000000010488b50103000001020304050607080008a2626d69
        076165038c4858650000000000000000000000000000000000000000
    ",
        );
    }

    #[test]
    fn data_frame_v1() {
        let link = Link {
            dst: MacAddr([0x03, 0x5b, 0, 0, 0, 0x01]),
            src: MacAddr([0x02, 0, 0, 0, 0, 0xfe]),
            ethertype: DEFAULT_ETHERTYPE,
        };
        let mut buf = [0u8; MAX_FRAME_LEN];
        let header = Header {
            flags: Flags::RETRANSMIT.with(Flags::LAST),
            ..Header::new(MessageType::Data, 0x1000_0001, 42).in_version(1)
        };
        let n = encode_data_frame(
            &mut buf,
            &link,
            &header,
            &DataHeader::new(2, 5, 64).unwrap(),
            b"last",
        )
        .unwrap();
        check(
            "data frame",
            &buf[..n],
            "
        035b000000010200000000fe88b501400003100000010000002a001800000002
        000500400000000000004140000400006c617374862e0bf100000000
    ",
        );
    }

    #[test]
    fn solicit_v1() {
        let inv = vec![kernel(), base()];
        check(
            "solicit",
            &body(Message::Solicit(Solicit {
                mac: MacAddr([0x02, 0, 0, 0, 0x01, 0x04]),
                card_type: "lc-100g".into(),
                arch: Arch::X86_64,
                shelf: 1,
                slot: 4,
                hw_rev: "B2".into(),
                features: vec!["mpls".into()],
                phase: BootPhase::PowerOn,
                inventory_digest: Some(set_digest(&inv, CMDLINE)),
                inventory: inv,
                nonce: NONCE,
                inventory_omitted: false,
                link_mtu: None,
            })),
            "
            ab616d46020000000104626374676c632d31303067626172667838365f363462
            73680162736c04626877624232616681646d706c73627068626f6e63696e7682
            a5616b6162616e666b65726e656c617665362e312e3061685820111111111111
            1111111111111111111111111111111111111111111111111111617a1a007a12
            00a5616b6170616e6462617365617663312e3061685820222222222222222222
            2222222222222222222222222222222222222222222222617a1a01312d006269
            6458206f60aeae853a101159629859dca99be2ae81a342f8163203a893955a04
            0d36ce616e50a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5
        ",
        );
        check(
            "solicit (pristine)",
            &body(Message::Solicit(Solicit {
                mac: MacAddr([0x02, 0, 0, 0, 0x01, 0x05]),
                card_type: "lc-100g".into(),
                arch: Arch::Aarch64,
                shelf: 1,
                slot: 5,
                hw_rev: "B2".into(),
                features: vec![],
                phase: BootPhase::Recovery,
                inventory: vec![],
                inventory_digest: None,
                nonce: NONCE,
                inventory_omitted: false,
                link_mtu: None,
            })),
            "
            aa616d46020000000105626374676c632d313030676261726761617263683634
            6273680162736c056268776242326166806270686372656363696e7680616e50
            a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5
        ",
        );
    }

    #[test]
    fn advertise_heartbeat_v1() {
        check(
            "advertise",
            &body(Message::Advertise(Advertise {
                master_id: 7,
                epoch: 3,
            })),
            "a2626d6907616503",
        );
        check(
            "heartbeat",
            &body(Message::Heartbeat(Heartbeat {
                master_id: 7,
                epoch: 3,
            })),
            "a2626d6907616503",
        );
    }

    #[test]
    fn plan_v1() {
        let artifacts = vec![kernel(), base()];
        let plan = key()
            .sign_plan(PlanBody {
                digest: set_digest(&artifacts, CMDLINE),
                artifacts,
                cmdline: CMDLINE.into(),
                persist: true,
                verdict: Verdict::Fetch,
                nonce: NONCE,
                epoch: 3,
                artifacts_omitted: false,
                report_inventory: false,
            })
            .unwrap();
        TrustAnchor::new(vec![key().public_key()])
            .verify_plan(&plan, &NONCE)
            .unwrap();
        check(
            "signing public key",
            &key().public_key().to_bytes(),
            "2152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed30097960e069881db12",
        );
        check(
            "plan",
            &body(Message::Plan(plan)),
            "
        a26162a7616182a5616b6162616e666b65726e656c617665362e312e30616858
        2011111111111111111111111111111111111111111111111111111111111111
        11617a1a007a1200a5616b6170616e6462617365617663312e30616858202222
        222222222222222222222222222222222222222222222222222222222222617a
        1a01312d0061636d636f6e736f6c653d74747953306170f56176616661645820
        6f60aeae853a101159629859dca99be2ae81a342f8163203a893955a040d36ce
        616e50a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a561650361735840f65e958c5806
        984be56970f3f3e62873354fa5f3f76a790f4002bfed0c5dfa03dc8edee9f83d
        390c678be4fd6c11df740b6ee70349b1b4a32f5ba5b1ab80f80c
    ",
        );
    }

    #[test]
    fn transfer_messages_v1() {
        check(
            "fetch",
            &body(Message::Fetch(Fetch {
                artifact: Digest([0x22; 32]),
                have_slices: 3,
            })),
            "
            a261685820222222222222222222222222222222222222222222222222222222
            2222222222617203
        ",
        );
        check(
            "join",
            &body(Message::Join(Join {
                transfer: 0x1000_0001,
                artifact: Digest([0x22; 32]),
                size: 20_000_000,
                group: MacAddr([0x03, 0x5b, 0, 0, 0, 0x01]),
                block_size: 1408,
                first_slice: 0,
            })),
            "
            a661741a10000001616858202222222222222222222222222222222222222222
            222222222222222222222222617a1a01312d00616746035b0000000161621905
            80616600
        ",
        );
        let mut missing = SliceBitmap::default();
        for b in [0, 9, 127] {
            missing.set(b, true);
        }
        check(
            "nack",
            &body(Message::Nack(Nack {
                transfer: 0x1000_0001,
                slice: 2,
                missing: missing.0,
            })),
            "a361741a10000001617302616d5001020000000000000000000000000080",
        );
        check(
            "progress",
            &body(Message::Progress(Progress {
                stage: Stage::Fetching,
                artifact: Some(Digest([0x22; 32])),
                done: 1_000_000,
                total: 20_000_000,
            })),
            "
            a462737461666168582022222222222222222222222222222222222222222222
            2222222222222222222261641a000f4240617a1a01312d00
        ",
        );
        check(
            "ready",
            &body(Message::Ready(Ready {
                digest: set_digest(&[kernel(), base()], CMDLINE),
                persisted: true,
                handoff: Handoff::Kexec,
            })),
            "
            a3616458206f60aeae853a101159629859dca99be2ae81a342f8163203a89395
            5a040d36ce6170f562686f616b
        ",
        );
    }

    #[test]
    fn error_reasons_v1() {
        let cases = [
            (
                "no space",
                ErrorReason::NoSpace {
                    needed: 28_000_000,
                    available: 16_000_000,
                },
                "a26172a1626e73a2616e1a01ab3f0061611a00f4240061746164",
            ),
            (
                "bad blocks",
                ErrorReason::BadBlocks { count: 21 },
                "a26172a1626262a161631561746164",
            ),
            (
                "verification failed",
                ErrorReason::VerificationFailed {
                    artifact: "base".into(),
                    expected: Digest([0x22; 32]),
                    got: Digest([0x23; 32]),
                },
                "
                a26172a1627666a3616e64626173656165582022222222222222222222222222
                2222222222222222222222222222222222222261675820232323232323232323
                232323232323232323232323232323232323232323232361746164
            ",
            ),
            (
                "unknown card",
                ErrorReason::UnknownCard,
                "a2617262756361746164",
            ),
            (
                "unsupported version",
                ErrorReason::UnsupportedVersion { min: 1, max: 1 },
                "a26172a1627576a2626c6f016268690161746164",
            ),
            (
                "unknown message type",
                ErrorReason::UnknownMessageType { msg_type: 0x33 },
                "a26172a1627574a16174183361746164",
            ),
            (
                "malformed",
                ErrorReason::Malformed,
                "a261726362616461746164",
            ),
        ];
        for (what, reason, hex) in cases {
            check(
                what,
                &body(Message::Error(ErrorMsg {
                    reason,
                    detail: "d".into(),
                })),
                hex,
            );
        }
    }

    #[test]
    fn unsupported_version_reply_v1() {
        // The reply a v1 peer sends to any other version: frozen forever.
        let raw = shelfboot_proto::frame::RawHeader {
            version: 2,
            msg_type: 1,
            flags: 0,
            session: 9,
            sequence: 4,
        };
        // As a v1 peer builds it: version 1 header, it speaks 1..=1.
        let (hdr, mut msg) = unsupported_version_reply(&raw);
        let hdr = hdr.in_version(1);
        if let Message::Error(e) = &mut msg {
            e.reason = ErrorReason::UnsupportedVersion { min: 1, max: 1 };
            e.detail = "protocol version 2 not supported; this peer speaks 1..=1".into();
        }
        let link = Link {
            dst: MacAddr([0x02, 0, 0, 0, 0x01, 0x04]),
            src: MacAddr([0x02, 0, 0, 0, 0, 0xfe]),
            ethertype: DEFAULT_ETHERTYPE,
        };
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = encode_message_with_header(&mut buf, &link, &hdr, &msg).unwrap();
        check(
            "unsupported version reply frame",
            &buf[..n],
            "
        0200000001040200000000fe88b5010a00000000000900000004004ca26172a1
        627576a2626c6f01626869016174783870726f746f636f6c2076657273696f6e
        2032206e6f7420737570706f727465643b207468697320706565722073706561
        6b7320312e2e3d317c8f551c
    ",
        );
    }

    #[test]
    fn command_v1() {
        let k = key();
        check(
            "command (all cards)",
            &body(Message::Command(
                k.sign_command(CommandBody {
                    action: Action::WarmBoot,
                    target: None,
                    epoch: 3,
                    serial: 1,
                })
                .unwrap(),
            )),
            "
            a26162a36161647761726d6165036171016173584055fd9d58ad1336b049ef2f
            80444960ca30f34e2d64a94c3fb8b219892e8f3e6b8f7bd52385a54a6488e8eb
            2578a1225f6eb0f81c75c120fb3535b2e903916f0c
        ",
        );
        let actions = [
            (
                Action::Reset,
                "
            a26162a4616165726573657461744602000000010461650361710261735840b6
            dee98439820f6cec9df56bbac18f24854a4d2d1c41c185a253a8c399dceb7ee7
            223e82b247044ce3b0a4ee46b36f6afd28444b600afa1e8a70eda5098aa901
        ",
            ),
            (
                Action::WarmBoot,
                "
            a26162a46161647761726d61744602000000010461650361710261735840af51
            a6ced81717dde49eaa36e3ea0e60424bc15452b1e076dde7256892de47e6dfa3
            11b6fb2160078e4f3f119ad2b06d4b1dedc9d0b1ebc4f143fbba52c4e100
        ",
            ),
            (
                Action::BurnNow,
                "
            a26162a46161646275726e61744602000000010461650361710261735840f06c
            757d4ae9fe245f5ef48b1c488adf8b4597b6a7ca595d7907a223c6fb745b4868
            36b4ae181646055796edfc144f1a2bcbbb11fa8d9f909513f08edc99810f
        ",
            ),
            (
                Action::EnterTestMode,
                "
            a26162a4616167746573742d6f6e617446020000000104616503617102617358
            403a6de945abb159244f25f16d6f5aeb562c74c22e42f605fef5deaa4bd1feb0
            cf62c442299ac7517ab6723b53aac2792eeb22a6681420fbbb7a2055238b2faa
            01
        ",
            ),
            (
                Action::LeaveTestMode,
                "
            a26162a4616168746573742d6f66666174460200000001046165036171026173
            584060222e0dbfd0d04011f9ec283237f4d2d71c81c848a64539364c053ef897
            bc82dd8113c9e8ff3afd208139fd833145d084480787ea7f3ff5618a141dcb1c
            060a
        ",
            ),
        ];
        for (action, hex) in actions {
            let cmd = k
                .sign_command(CommandBody {
                    action,
                    target: Some(MacAddr([0x02, 0, 0, 0, 0x01, 0x04])),
                    epoch: 3,
                    serial: 2,
                })
                .unwrap();
            TrustAnchor::new(vec![k.public_key()])
                .verify_command(&cmd)
                .unwrap();
            check(
                &format!("command {action:?}"),
                &body(Message::Command(cmd)),
                hex,
            );
        }
    }
}
