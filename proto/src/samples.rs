//! Deterministic example values: one control message of every type and one data frame,
//! and the artifact references that unit tests across the crates build theirs from.
//!
//! Used by the unit tests, the fuzz seed corpus (`examples/fuzz_seeds.rs`) and the examples
//! in `docs/protocol.md`. The golden tests do NOT use these: they spell their values out, so
//! that editing a sample cannot silently move a pinned encoding.

use crate::data::{DataHeader, encode_data_frame};
use crate::frame::{Header, Link, MacAddr, MessageType};
use crate::msg::*;
use crate::{DEFAULT_ETHERTYPE, MAX_FRAME_LEN};

/// An artifact of 4096 bytes, version 1.0, whose sha256 is `fill` repeated.
pub fn artifact(kind: ArtifactKind, name: &str, fill: u8) -> ArtifactRef {
    ArtifactRef {
        kind,
        name: name.into(),
        version: "1.0".into(),
        sha256: Digest([fill; 32]),
        size: 4096,
    }
}

/// An artifact whose sha256 and size are those of `data`, for tests that store or hash
/// the bytes.
pub fn artifact_of(kind: ArtifactKind, name: &str, version: &str, data: &[u8]) -> ArtifactRef {
    ArtifactRef {
        version: version.into(),
        sha256: Digest::of(data),
        size: u64::try_from(data.len()).unwrap_or(u64::MAX),
        ..artifact(kind, name, 0)
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
            inventory_omitted: false,
            link_mtu: None,
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
                artifacts_omitted: false,
                report_inventory: false,
            },
            signature: Signature([9; 64]),
            cert: None,
        }),
        Message::Fetch(Fetch {
            artifact: Digest([1; 32]),
            have_slices: 5,
        }),
        Message::Join(Join {
            transfer: 9,
            artifact: Digest([1; 32]),
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
            digest: Digest([4; 32]),
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
            cert: None,
        }),
        Message::Inventory(Inventory {
            inventory: vec![artifact(ArtifactKind::Package, "base", 2)],
            inventory_digest: Some(Digest([5; 32])),
            nonce: [3; 16],
        }),
        Message::Alive(Alive {
            running: Some(Digest([5; 32])),
            persisted: true,
            health: Health::Healthy,
            uptime: 42,
            epoch: 7,
            rolled_back_from: None,
            dropped: 0,
            detail: String::new(),
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
