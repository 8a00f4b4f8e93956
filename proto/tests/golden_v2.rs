//! Golden bytes of protocol version 2.
//!
//! IF THIS FAILS, YOUR CHANGE BROKE THE WIRE FORMAT: FIX THE CHANGE, NOT THE TEST.
//!
//! Version 2 keeps every version-1 body (pinned in `golden_v1.rs`, which still passes) and
//! adds: the version byte 2, the `FRAGMENT` flag and the fragment header, the Inventory
//! message (0x0c), the Solicit's `io`, the plan's `ao` and `ri`, and the error reason
//! MessageTooLarge; later, within version 2, the master certificate (`mc`) of plans and
//! commands, absent unless the master's plan key is certified by a shelf key. Those, and a
//! v2 frame of every message type, are pinned here.

#[cfg(test)]
mod v2 {
    use shelfboot_proto::frag::{
        FRAGMENT_DATA_LEN, FRAGMENT_HDR_LEN, Grid, Limits, Reassembler, encode_frames,
        encode_frames_on,
    };
    use shelfboot_proto::frame::{Flags, Frame, Header, Link, MacAddr, MessageType};
    use shelfboot_proto::msg::*;
    use shelfboot_proto::sign::{Domain, MasterSigner, SigningKey, TrustAnchor};
    use shelfboot_proto::{
        DEFAULT_ETHERTYPE, MAX_CONTROL_BODY_LEN, MAX_FRAME_LEN, MAX_MESSAGE_LEN, samples, version,
    };

    fn check(what: &str, actual: &[u8], expected_hex: &str) {
        let expected_hex: String = expected_hex.split_whitespace().collect();
        let actual_hex = hex::encode(actual);
        assert_eq!(
            actual_hex, expected_hex,
            "golden v2 mismatch for {what}: the wire format changed (see the file header)"
        );
    }

    fn body(msg: Message) -> Vec<u8> {
        let bytes = msg.encode_body().unwrap();
        assert_eq!(Message::decode_body(msg.msg_type(), &bytes).unwrap(), msg);
        bytes
    }

    const NONCE: [u8; 16] = [0xa5; 16];

    fn link() -> Link {
        Link {
            dst: MacAddr([0x02, 0, 0, 0, 0x01, 0x04]),
            src: MacAddr([0x02, 0, 0, 0, 0, 0xfe]),
            ethertype: DEFAULT_ETHERTYPE,
        }
    }

    fn pkg(i: u8) -> ArtifactRef {
        ArtifactRef {
            kind: ArtifactKind::Package,
            name: format!("{:0>64}", i),
            version: "1.0".into(),
            sha256: Digest([i; 32]),
            size: 1000 + u64::from(i),
        }
    }

    #[test]
    fn constants_v2() {
        assert_eq!(version::MIN, 1);
        assert_eq!(version::CURRENT, 2);
        assert_eq!(version::FRAGMENTS, 2);
        assert_eq!(Flags::FRAGMENT.bits(), 4);
        assert_eq!(MessageType::Inventory.code(), 0x0c);
        assert_eq!(MessageType::Inventory.since_version(), 2);
        let codes: Vec<u8> = MessageType::ALL.iter().map(|t| t.code()).collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0x40]);
        assert_eq!(MessageType::Alive.since_version(), 2);
        assert_eq!(MAX_CONTROL_BODY_LEN, 1482);
        assert_eq!(MAX_MESSAGE_LEN, 65536);
        assert_eq!(FRAGMENT_HDR_LEN, 12);
        assert_eq!(FRAGMENT_DATA_LEN, 1470);
        assert_eq!(Limits::CARD.max_partials, 2);
        assert_eq!(Limits::MASTER.max_partials, 64);
    }

    /// A v2 frame of every message type (the samples), session 11, sequence = index.
    #[test]
    fn every_message_frame_v2() {
        let expected = [
            "
            ffffffffffff02000000000788b5020100000000000b0000000000edab616d46
            020000000007626374626c6362617267616172636836346273680162736c0462
            68776142616681646d706c73627068647761726d63696e7682a5616b6162616e
            666b65726e656c617663312e3061685820010101010101010101010101010101
            0101010101010101010101010101010101617a191000a5616b6170616e646261
            7365617663312e30616858200202020202020202020202020202020202020202
            020202020202020202020202617a1910006269645820f28ee952afd678ac1c67
            015d6b257768ff13b496a821af6688cc5156c96cc82c616e5003030303030303
            03030303030303030310ef0e01
            ",
            "
            ffffffffffff02000000000788b5020200000000000b000000010008a2626d69
            01616502153b2e020000000000000000000000000000000000000000
            ",
            "
            ffffffffffff02000000000788b5020300000000000b000000020008a2626d69
            016165021303cb9d0000000000000000000000000000000000000000
            ",
            "
            ffffffffffff02000000000788b5020400000000000b00000003010ca26162a7
            616182a5616b6162616e666b65726e656c617663312e30616858200101010101
            010101010101010101010101010101010101010101010101010101617a191000
            a5616b6170616e6462617365617663312e306168582002020202020202020202
            02020202020202020202020202020202020202020202617a1910006163657175
            6965746170f56176616361645820a279f5201cde5172a87800068ef407d20fa7
            89e2b3c84d2dbf9264b571d57222616e50030303030303030303030303030303
            0361650261735840090909090909090909090909090909090909090909090909
            0909090909090909090909090909090909090909090909090909090909090909
            0909090909090909d775711d
            ",
            "
            ffffffffffff02000000000788b5020500000000000b000000040028a2616858
            2001010101010101010101010101010101010101010101010101010101010101
            016172054e1a5dcf
            ",
            "
            ffffffffffff02000000000788b5020600000000000b000000050040a6617409
            6168582001010101010101010101010101010101010101010101010101010101
            01010101617a1a0010000061674601005e0000096162190580616600e4d5951f
            ",
            "
            ffffffffffff02000000000788b5020700000000000b00000006001aa3617409
            617302616d5081818181818181818181818181818181f51a3cb10000
            ",
            "
            ffffffffffff02000000000788b5020800000000000b00000007000ca3627374
            617761640a617a14f936e9f400000000000000000000000000000000
            ",
            "
            ffffffffffff02000000000788b5020900000000000b00000008002da3616458
            2004040404040404040404040404040404040404040404040404040404040404
            046170f562686f616b5ba3f5af
            ",
            "
            ffffffffffff02000000000788b5020a00000000000b00000009001aa26172a1
            626e73a2616e0a616105617469756269302066756c6c76c482580000
            ",
            "
            ffffffffffff02000000000788b5020b00000000000b0000000a005ea26162a4
            6161646275726e61744602000000000761650261710161735840080808080808
            0808080808080808080808080808080808080808080808080808080808080808
            0808080808080808080808080808080808080808080808080808f405d524
            ",
            "
            ffffffffffff02000000000788b5020c00000000000b0000000b0079a363696e
            7681a5616b6170616e6462617365617663312e30616858200202020202020202
            020202020202020202020202020202020202020202020202617a191000626964
            5820050505050505050505050505050505050505050505050505050505050505
            0505616e5003030303030303030303030303030303ce528ad0
            ",
            // Alive (0x0d), appended in version 2 for the card's resident agent.
            "
            ffffffffffff02000000000788b5020d00000000000b0000000c0038a6616458
            2005050505050505050505050505050505050505050505050505050505050505
            056170f5626873626f6b6175182a61650761780025c28c3a
            ",
        ];
        let frames = samples::every_frame();
        let control = &frames[..samples::every_message().len()];
        assert_eq!(control.len(), expected.len());
        for (i, (f, e)) in control.iter().zip(expected).enumerate() {
            assert_eq!(f[14], 2, "version byte");
            check(&format!("sample frame {i}"), f, e);
        }
    }

    #[test]
    fn new_fields_v2() {
        check(
            "solicit, inventory omitted",
            &body(Message::Solicit(Solicit {
                mac: MacAddr([0x02, 0, 0, 0, 0x01, 0x04]),
                card_type: "lc".into(),
                arch: Arch::X86_64,
                shelf: 1,
                slot: 4,
                hw_rev: "B2".into(),
                features: vec![],
                phase: BootPhase::WarmBoot,
                inventory: vec![],
                inventory_digest: Some(Digest([0x33; 32])),
                nonce: NONCE,
                inventory_omitted: true,
                link_mtu: None,
            })),
            "
            ac616d46020000000104626374626c63626172667838365f3634627368016273
            6c04626877624232616680627068647761726d63696e76806269645820333333
            3333333333333333333333333333333333333333333333333333333333616e50
            a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a562696ff5
            ",
        );
        let k = SigningKey::from_seed(&[0x42; 32]);
        let plan = k
            .sign_plan(PlanBody {
                artifacts: vec![],
                cmdline: "quiet".into(),
                persist: true,
                verdict: Verdict::Continue,
                digest: Digest([0x33; 32]),
                nonce: NONCE,
                epoch: 3,
                artifacts_omitted: true,
                report_inventory: true,
            })
            .unwrap();
        check(
            "digest-only Continue, inventory asked",
            &body(Message::Plan(plan)),
            "
            a26162a961618061636571756965746170f56176616361645820333333333333
            3333333333333333333333333333333333333333333333333333616e50a5a5a5
            a5a5a5a5a5a5a5a5a5a5a5a5a561650362616ff5627269f561735840ae1e4283
            3ce1e852f48dc936eb66ecedecc2b0d6316333355824783fbfd08085566b3b67
            995dd0680511573928ccc5af4433625883c5e6c2fa216d6b4b578b04
            ",
        );
        check(
            "inventory",
            &body(Message::Inventory(Inventory {
                inventory: vec![pkg(1)],
                inventory_digest: Some(Digest([0x33; 32])),
                nonce: NONCE,
            })),
            "
            a363696e7681a5616b6170616e78403030303030303030303030303030303030
            3030303030303030303030303030303030303030303030303030303030303030
            303030303030303030303030303031617663312e306168582001010101010101
            01010101010101010101010101010101010101010101010101617a1903e96269
            6458203333333333333333333333333333333333333333333333333333333333
            333333616e50a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5
            ",
        );
        check(
            "error message too large",
            &body(Message::Error(ErrorMsg {
                reason: ErrorReason::MessageTooLarge {
                    len: 70000,
                    max: 65536,
                },
                detail: "plan".into(),
            })),
            "
            a26172a162746ca2616e1a00011170616d1a00010000617464706c616e
            ",
        );
    }

    /// A 30-package Inventory in fragments: three frames, pinned, and reassembled.
    #[test]
    fn fragments_v2() {
        let msg = Message::Inventory(Inventory {
            inventory: (1..=30).map(pkg).collect(),
            inventory_digest: None,
            nonce: NONCE,
        });
        let h = Header::new(MessageType::Inventory, 9, 0x77);
        let frames = encode_frames(&link(), &h, &msg).unwrap();
        assert_eq!(frames.len(), 3);
        // Header and fragment header of each, and the whole of the last one.
        check(
            "fragment 0 head",
            &frames[0][..40],
            "
            0200000001040200000000fe88b5020c0004000000090000007705ca00000077
            00000e2a00000000
            ",
        );
        check(
            "fragment 1 head",
            &frames[1][..40],
            "
            0200000001040200000000fe88b5020c0004000000090000007705ca00000077
            00000e2a000005be
            ",
        );
        check(
            "fragment 2",
            &frames[2],
            "
            0200000001040200000000fe88b5020c0004000000090000007702ba00000077
            00000e2a00000b7c303030303030303030303030303030303030323561766331
            2e30616858201919191919191919191919191919191919191919191919191919
            191919191919617a190401a5616b6170616e7840303030303030303030303030
            3030303030303030303030303030303030303030303030303030303030303030
            3030303030303030303030303030303030303236617663312e30616858201a1a
            1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a617a
            190402a5616b6170616e78403030303030303030303030303030303030303030
            3030303030303030303030303030303030303030303030303030303030303030
            303030303030303030303237617663312e30616858201b1b1b1b1b1b1b1b1b1b
            1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b617a190403a5616b6170
            616e784030303030303030303030303030303030303030303030303030303030
            3030303030303030303030303030303030303030303030303030303030303030
            30303238617663312e30616858201c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c
            1c1c1c1c1c1c1c1c1c1c1c1c1c1c617a190404a5616b6170616e784030303030
            3030303030303030303030303030303030303030303030303030303030303030
            3030303030303030303030303030303030303030303030303030323961766331
            2e30616858201d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d
            1d1d1d1d1d1d617a190405a5616b6170616e7840303030303030303030303030
            3030303030303030303030303030303030303030303030303030303030303030
            3030303030303030303030303030303030303330617663312e30616858201e1e
            1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e617a
            190406616e50a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5725f3f32
            ",
        );
        let mut r = Reassembler::new(Limits::MASTER);
        let now = std::time::Instant::now();
        let mut got = None;
        for f in frames.iter().rev() {
            got = r
                .push(now, &Frame::decode(f, DEFAULT_ETHERTYPE).unwrap())
                .unwrap();
        }
        assert_eq!(got.unwrap().decode().unwrap(), msg);
    }

    /// The same Inventory on the jumbo grid: one fragment (offset 0, the whole body).
    #[test]
    fn jumbo_grid_fragment_v2() {
        let msg = Message::Inventory(Inventory {
            inventory: (1..=30).map(pkg).collect(),
            inventory_digest: None,
            nonce: NONCE,
        });
        let h = Header::new(MessageType::Inventory, 9, 0x77);
        let frames = encode_frames_on(Grid::Jumbo, &link(), &h, &msg).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].len(), 14 + 14 + 12 + 0x0e2a + 4);
        check(
            "jumbo fragment head",
            &frames[0][..40],
            "
            0200000001040200000000fe88b5020c000400000009000000770e3600000077
            00000e2a00000000
            ",
        );
        let mut r = Reassembler::new(Limits::CARD);
        let got = r
            .push(
                std::time::Instant::now(),
                &Frame::decode(&frames[0], DEFAULT_ETHERTYPE).unwrap(),
            )
            .unwrap();
        assert_eq!(got.unwrap().decode().unwrap(), msg);
    }

    #[test]
    fn unsupported_version_reply_v2() {
        let raw = shelfboot_proto::frame::RawHeader {
            version: 3,
            msg_type: 1,
            flags: 0,
            session: 9,
            sequence: 4,
        };
        let (hdr, msg) = unsupported_version_reply(&raw);
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = encode_message_with_header(&mut buf, &link(), &hdr, &msg).unwrap();
        check(
            "unsupported version reply frame",
            &buf[..n],
            "
            0200000001040200000000fe88b5020a00000000000900000004004ca26172a1
            627576a2626c6f01626869026174783870726f746f636f6c2076657273696f6e
            2033206e6f7420737570706f727465643b207468697320706565722073706561
            6b7320312e2e3d32d320878e
            ",
        );
    }

    /// The master certificate: its domain tag, its bytes, a plan and a command carrying it.
    #[test]
    fn master_cert_v2() {
        let shelf = SigningKey::from_seed(&[0x51; 32]);
        let master = SigningKey::from_seed(&[0x42; 32]);
        assert_eq!(Domain::MasterCert.tag(), b"shelfboot/master-cert/v1\0");
        check(
            "shelf public key",
            &shelf.public_key().to_bytes(),
            "
            c050c5637a44fa8629fff3cccce2300cb362a63d99d95fc54145266f4332445a
            ",
        );
        let cert = shelf.certify(&master.public_key()).unwrap();
        check(
            "master certificate",
            &cert.to_bytes().unwrap(),
            "
            a26162a1616b58202152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed300
            97960e069881db1261735840fd0012da3e7a955880c13b1b5fd7c25ec5b25525
            96ff320623706e26a5a48c9c3e47618b4a401e0547bbc8d0a50384797cd2e04b
            91b1d96fc40476ae9fbe1c01
            ",
        );
        let signer = MasterSigner::certified(master, cert).unwrap();
        let anchor = TrustAnchor::new(vec![shelf.public_key()]);
        let artifacts = vec![pkg(1)];
        let plan = signer
            .sign_plan(PlanBody {
                digest: set_digest(&artifacts, "quiet"),
                artifacts,
                cmdline: "quiet".into(),
                persist: true,
                verdict: Verdict::Fetch,
                nonce: NONCE,
                epoch: 7,
                artifacts_omitted: false,
                report_inventory: false,
            })
            .unwrap();
        anchor.verify_plan(&plan, &NONCE).unwrap();
        check(
            "plan with a master certificate",
            &body(Message::Plan(plan)),
            "
            a36162a7616181a5616b6170616e784030303030303030303030303030303030
            3030303030303030303030303030303030303030303030303030303030303030
            30303030303030303030303030303031617663312e3061685820010101010101
            0101010101010101010101010101010101010101010101010101617a1903e961
            636571756965746170f561766166616458202a1dabee9fa119a39129435ce21a
            80b72eb3828280dba4a9ea2a6b52205afcc1616e50a5a5a5a5a5a5a5a5a5a5a5
            a5a5a5a5a5616507617358405774358f093bcb976330ad262a19324f50f70190
            7ea6ba77134e5e88416379082a35558fec52bb7e6792f1720d69af4668bd0be1
            1ba645ce465b58367fd20a0b626d63a26162a1616b58202152f8d19b791d2445
            3242e15f2eab6cb7cffa7b6a5ed30097960e069881db1261735840fd0012da3e
            7a955880c13b1b5fd7c25ec5b2552596ff320623706e26a5a48c9c3e47618b4a
            401e0547bbc8d0a50384797cd2e04b91b1d96fc40476ae9fbe1c01
            ",
        );
        let cmd = signer
            .sign_command(CommandBody {
                action: Action::Reset,
                target: None,
                epoch: 7,
                serial: 1,
            })
            .unwrap();
        anchor.verify_command(&cmd).unwrap();
        check(
            "command with a master certificate",
            &body(Message::Command(cmd)),
            "
            a36162a3616165726573657461650761710161735840ab1358c9c9c45469c42f
            7bbdfcb915840e8773f925cf8520eded23fdecb799f1ee46ac8db1627484a1d5
            d1e54ec50595fa2d8266728f0d2ed86597d2f884d00a626d63a26162a1616b58
            202152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed30097960e069881db
            1261735840fd0012da3e7a955880c13b1b5fd7c25ec5b2552596ff320623706e
            26a5a48c9c3e47618b4a401e0547bbc8d0a50384797cd2e04b91b1d96fc40476
            ae9fbe1c01
            ",
        );
    }
}
