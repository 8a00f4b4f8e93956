//! A resolved plan: what one card should hold, why, and the set digest the card compares
//! with its inventory digest. The digest is the protocol crate's
//! [`shelfboot_proto::msg::set_digest`]; there is no second definition here.

use serde::{Deserialize, Serialize};
use shelfboot_proto::msg::{ArtifactKind, ArtifactRef, set_digest};

use crate::image::manifest::{BlobRef, ReleaseId};
use shelfboot_proto::id::MacAddr;
use shelfboot_proto::id::{Arch, Digest};

/// One artifact in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedArtifact {
    /// `boot` or `package`.
    pub kind: String,
    pub name: String,
    pub version: semver::Version,
    pub arch: Arch,
    pub blob: BlobRef,
    /// Which rule chose it.
    pub rule: String,
}

impl PlannedArtifact {
    /// The protocol's view of this artifact.
    pub fn to_ref(&self) -> ArtifactRef {
        ArtifactRef {
            kind: if self.kind == "boot" {
                ArtifactKind::BootImage
            } else {
                ArtifactKind::Package
            },
            name: self.name.clone(),
            version: self.version.to_string(),
            sha256: self.blob.sha256,
            size: self.blob.size,
        }
    }
}

/// One step of the explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub subject: String,
    pub rule: String,
}

/// A card's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub node: MacAddr,
    pub release: ReleaseId,
    pub class: String,
    pub arch: Arch,
    pub boot: PlannedArtifact,
    pub cmdline: String,
    /// Sorted by name.
    pub packages: Vec<PlannedArtifact>,
    /// false in test mode and for RAM-first cards: RAM only, gone on reboot.
    pub persist: bool,
    /// Test mode: the operator's trial pins (RAM only).
    #[serde(default)]
    pub test: bool,
    /// `set_digest(artifacts, cmdline)`.
    pub digest: Digest,
    /// The decisions in order: release, class, boot image, packages.
    pub explain: Vec<Reason>,
}

impl Plan {
    /// All artifacts as protocol references (boot image first).
    pub fn artifact_refs(&self) -> Vec<ArtifactRef> {
        std::iter::once(&self.boot)
            .chain(&self.packages)
            .map(PlannedArtifact::to_ref)
            .collect()
    }

    /// Whether the artifact with sha256 `sha` is in this plan.
    pub fn has_artifact(&self, sha: &Digest) -> bool {
        std::iter::once(&self.boot)
            .chain(&self.packages)
            .any(|a| a.blob.sha256 == *sha)
    }

    /// Computes the digest from the artifacts and command line.
    pub fn compute_digest(&self) -> Digest {
        set_digest(&self.artifact_refs(), &self.cmdline)
    }

    /// Bytes of this plan's signed Plan message on the wire, at its largest (a Fetch
    /// verdict with every artifact listed, the widest nonce and epoch), or the encoder's
    /// refusal when it is over [`shelfboot_proto::MAX_MESSAGE_LEN`]. A plan over
    /// [`shelfboot_proto::MAX_CONTROL_BODY_LEN`] goes in fragments, which a card whose
    /// initramfs speaks only protocol version 1 cannot take.
    pub fn wire_len(&self) -> Result<usize, shelfboot_proto::msg::MsgError> {
        let body = shelfboot_proto::msg::PlanBody {
            artifacts: self.artifact_refs(),
            cmdline: self.cmdline.clone(),
            persist: self.persist,
            verdict: shelfboot_proto::msg::Verdict::Fetch,
            digest: self.digest,
            nonce: [0xff; 16],
            epoch: u64::MAX,
            artifacts_omitted: false,
            report_inventory: false,
        };
        let msg = shelfboot_proto::msg::Message::Plan(shelfboot_proto::msg::Plan {
            body,
            signature: shelfboot_proto::msg::Signature([0xff; shelfboot_proto::msg::SIGNATURE_LEN]),
            // A certified master's plans carry its certificate too: 111 bytes more.
            cert: None,
        });
        msg.encode_long_body().map(|b| b.len())
    }

    /// Every blob the plan references.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        std::iter::once(&self.boot.blob).chain(self.packages.iter().map(|p| &p.blob))
    }
}
