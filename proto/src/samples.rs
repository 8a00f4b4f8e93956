//! Deterministic example values: one control message of every type and one data frame.
//!
//! Used by the unit tests, the fuzz seed corpus (`examples/fuzz_seeds.rs`) and the examples
//! in `docs/protocol.md`. The golden tests do NOT use these: they spell their values out, so
//! that editing a sample cannot silently move a pinned encoding.

use crate::data::{DataHeader, encode_data_frame};
use crate::frame::{Header, Link, MacAddr, MessageType};
use crate::msg::*;
use crate::sign::Signature;
use crate::{DEFAULT_ETHERTYPE, MAX_FRAME_LEN};

/// An artifact of 4096 bytes, version 1.0, whose sha256 is `fill` repeated.
pub fn artifact(kind: ArtifactKind, name: &str, fill: u8) -> ArtifactRef {
    ArtifactRef {
        kind,
        name: name.into(),
        version: "1.0".into(),
        sha256: [fill; 32],
        size: 4096,
    }
}

/// The artifact reference of `data`: version 1.0, its sha256 and length (for tests that
/// stage real bytes, which the card's store verifies against the reference).
pub fn artifact_of(kind: ArtifactKind, name: &str, data: &[u8]) -> ArtifactRef {
    use sha2::Digest as _;
    ArtifactRef {
        kind,
        name: name.into(),
        version: "1.0".into(),
        sha256: sha2::Sha256::digest(data).into(),
        size: data.len() as u64,
    }
}

/// One message of every type.
pub fn every_message() -> Vec<Message> {
    let inv = vec![
        artifact(ArtifactKind::BootImage, "kernel", 1),
        artifact(ArtifactKind::Package, "base", 2),
    ];
    vec![
        Message::Solicit(Solicit {
            mac: MacAddr([2, 0, 0, 0, 0, 7]),
            card_type: "lc".into(),
            arch: Arch::Aarch64,
            shelf: 1,
            slot: 4,
            hw_rev: "B".into(),
            features: vec!["mpls".into()],
            phase: BootPhase::WarmBoot,
            inventory_digest: Some(set_digest(&inv, "")),
            inventory: inv.clone(),
            nonce: [3; 16],
        }),
        Message::Advertise(Advertise {
            master_id: 1,
            epoch: 2,
        }),
        Message::Heartbeat(Heartbeat {
            master_id: 1,
            epoch: 2,
        }),
        Message::Plan(Plan {
            body: PlanBody {
                digest: set_digest(&inv, "quiet"),
                artifacts: inv,
                cmdline: "quiet".into(),
                persist: true,
                verdict: Verdict::Continue,
                nonce: [3; 16],
                epoch: 2,
            },
            signature: Signature([9; 64]),
        }),
        Message::Fetch(Fetch {
            artifact: [1; 32],
            have_slices: 5,
        }),
        Message::Join(Join {
            transfer: 9,
            artifact: [1; 32],
            size: 1 << 20,
            group: MacAddr([1, 0, 0x5e, 0, 0, 9]),
            block_size: 1408,
            first_slice: 0,
        }),
        Message::Nack(Nack {
            transfer: 9,
            slice: 2,
            missing: [0x81; 16],
        }),
        Message::Progress(Progress {
            stage: Stage::Writing,
            artifact: None,
            done: 10,
            total: 20,
        }),
        Message::Ready(Ready {
            digest: [4; 32],
            persisted: true,
            handoff: Handoff::Kexec,
        }),
        Message::Error(ErrorMsg {
            reason: ErrorReason::NoSpace {
                needed: 10,
                available: 5,
            },
            detail: "ubi0 full".into(),
        }),
        Message::Command(Command {
            body: CommandBody {
                action: Action::BurnNow,
                target: Some(MacAddr([2, 0, 0, 0, 0, 7])),
                epoch: 2,
                serial: 1,
            },
            signature: Signature([8; 64]),
        }),
    ]
}

/// The link every sample frame uses: 02:00:00:00:00:07 → broadcast, default EtherType.
pub fn link() -> Link {
    Link {
        dst: MacAddr::BROADCAST,
        src: MacAddr([2, 0, 0, 0, 0, 7]),
        ethertype: DEFAULT_ETHERTYPE,
    }
}

/// Every sample message as a complete frame (session 11, sequence = index), followed by
/// two data frames (a full 64-byte block and a 5-byte last block).
pub fn every_frame() -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for (i, msg) in every_message().iter().enumerate() {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let seq = u32::try_from(i).unwrap_or(u32::MAX);
        if let Ok(n) = encode_message(&mut buf, &link(), 11, seq, msg) {
            buf.truncate(n);
            frames.push(buf);
        }
    }
    for (slice, block, len) in [(0u32, 1u16, 64usize), (2, 127, 5)] {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let data: Vec<u8> = (0..len).map(|i| i.to_le_bytes()[0]).collect();
        if let Some(hdr) = DataHeader::new(slice, block, 64) {
            let h = Header::new(MessageType::Data, 9, 100);
            if let Ok(n) = encode_data_frame(&mut buf, &link(), &h, &hdr, &data) {
                buf.truncate(n);
                frames.push(buf);
            }
        }
    }
    frames
}
