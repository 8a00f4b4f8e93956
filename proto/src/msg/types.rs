//! The control message bodies and their CBOR keys.
//!
//! Every struct is a CBOR map with short text keys (named in each field's doc and in
//! `docs/protocol.md`); enums are text strings (unit variants) or one-entry maps (variants
//! with fields). Optional fields are omitted when absent. Unknown keys are rejected.
//! Fields are only ever appended (see [`crate::version`]).
//!
//! This module holds data only: the codec is in [`crate::msg`], signing in [`crate::sign`].

use serde::{Deserialize, Serialize};

use super::artifact::{ArtifactRef, Digest};
use super::signature::Signature;
use crate::data::NACK_BITMAP_LEN;
use crate::frame::MacAddr;

/// A card's per-boot random nonce; a plan is only valid with the nonce of its Solicit.
pub type Nonce = [u8; 16];

pub use crate::id::Arch;

/// Why the card is soliciting. CBOR: text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BootPhase {
    /// Power-on or unexplained reset.
    #[serde(rename = "on")]
    PowerOn,
    /// System-wide warm boot ordered by the master: the card expects to validate only.
    #[serde(rename = "warm")]
    WarmBoot,
    /// Reset ordered by the master (Reset or BurnNow): the card expects to fetch and burn.
    #[serde(rename = "reset")]
    AfterReset,
    /// The last handoff failed; the card runs from the initramfs only.
    #[serde(rename = "rec")]
    Recovery,
}

/// Card → broadcast: identity, flash inventory and a fresh nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Solicit {
    /// `m`: the card's backplane MAC.
    #[serde(rename = "m")]
    pub mac: MacAddr,
    /// `ct`: card type, e.g. `lc-100g`.
    #[serde(rename = "ct")]
    pub card_type: String,
    /// `ar`: processor architecture.
    #[serde(rename = "ar")]
    pub arch: Arch,
    /// `sh`: shelf number.
    #[serde(rename = "sh")]
    pub shelf: u16,
    /// `sl`: slot number.
    #[serde(rename = "sl")]
    pub slot: u16,
    /// `hw`: hardware revision.
    #[serde(rename = "hw")]
    pub hw_rev: String,
    /// `f`: features the card asks for (e.g. `mpls`).
    #[serde(rename = "f")]
    pub features: Vec<String>,
    /// `ph`: boot phase.
    #[serde(rename = "ph")]
    pub phase: BootPhase,
    /// `inv`: artifacts committed on flash.
    #[serde(rename = "inv")]
    pub inventory: Vec<ArtifactRef>,
    /// `id`: [`crate::msg::set_digest`] of the committed set; absent = pristine flash.
    #[serde(rename = "id", default, skip_serializing_if = "Option::is_none")]
    pub inventory_digest: Option<Digest>,
    /// `n`: fresh random nonce of this boot.
    #[serde(rename = "n", with = "serde_bytes")]
    pub nonce: Nonce,
    /// `io` (version 2): true = the inventory is left out (`inv` is empty) because it
    /// does not fit one frame; `id` stands for it, and the master asks for the list with
    /// [`PlanBody::report_inventory`] when it needs it. Absent = false.
    #[serde(rename = "io", default, skip_serializing_if = "is_false")]
    pub inventory_omitted: bool,
    /// `mt` (version 2): the MTU of the card's backplane port, when it is not 1500. The
    /// master sends this card jumbo-grid fragments and data blocks only up to the MTU
    /// both ports take ([`crate::common_mtu`]). Absent = 1500.
    #[serde(rename = "mt", default, skip_serializing_if = "Option::is_none")]
    pub link_mtu: Option<u16>,
}

/// Whether `b` is false (optional flags are omitted when false).
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

/// Card → master (version 2): the full flash inventory, sent when a plan asks for it
/// ([`PlanBody::report_inventory`]), fragmented if it does not fit one frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// `inv`: artifacts committed on flash.
    #[serde(rename = "inv")]
    pub inventory: Vec<ArtifactRef>,
    /// `id`: [`crate::msg::set_digest`] of the committed set; absent = pristine flash.
    #[serde(rename = "id", default, skip_serializing_if = "Option::is_none")]
    pub inventory_digest: Option<Digest>,
    /// `n`: the nonce of the Solicit (and plan) this completes.
    #[serde(rename = "n", with = "serde_bytes")]
    pub nonce: Nonce,
}

/// Master → card / broadcast: "I serve this backplane".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advertise {
    /// `mi`: master id.
    #[serde(rename = "mi")]
    pub master_id: u64,
    /// `e`: master epoch (bumped on every master start or failover).
    #[serde(rename = "e")]
    pub epoch: u64,
}

/// Master → broadcast: liveness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// `mi`: master id.
    #[serde(rename = "mi")]
    pub master_id: u64,
    /// `e`: master epoch.
    #[serde(rename = "e")]
    pub epoch: u64,
}

/// What the card must do with a plan. CBOR: text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// Flash already holds the set: validate and boot, no bytes move.
    #[serde(rename = "c")]
    Continue,
    /// Fetch what is missing, then commit.
    #[serde(rename = "f")]
    Fetch,
}

/// The signed part of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    /// `a`: the set: at most one boot image plus packages.
    #[serde(rename = "a")]
    pub artifacts: Vec<ArtifactRef>,
    /// `c`: boot image command line.
    #[serde(rename = "c")]
    pub cmdline: String,
    /// `p`: true = commit to flash; false = RAM only (test mode).
    #[serde(rename = "p")]
    pub persist: bool,
    /// `v`: Continue or Fetch.
    #[serde(rename = "v")]
    pub verdict: Verdict,
    /// `d`: [`crate::msg::set_digest`] of `artifacts` and `cmdline`.
    #[serde(rename = "d")]
    pub digest: Digest,
    /// `n`: the nonce of the Solicit this answers.
    #[serde(rename = "n", with = "serde_bytes")]
    pub nonce: Nonce,
    /// `e`: master epoch.
    #[serde(rename = "e")]
    pub epoch: u64,
    /// `ao` (version 2): true = a digest-only Continue: `a` is empty and `d` is the digest
    /// of the card's committed set, which the card checks itself (the whole set would not
    /// fit one frame, and the warm boot stays one frame each way). Absent = false.
    #[serde(rename = "ao", default, skip_serializing_if = "is_false")]
    pub artifacts_omitted: bool,
    /// `ri` (version 2): true = the master does not know the card's inventory: send it in
    /// an [`Inventory`] message. Absent = false.
    #[serde(rename = "ri", default, skip_serializing_if = "is_false")]
    pub report_inventory: bool,
}

impl PlanBody {
    /// The boot image, if the plan has one.
    pub fn boot_image(&self) -> Option<&ArtifactRef> {
        self.artifacts
            .iter()
            .find(|a| a.kind == super::ArtifactKind::BootImage)
    }
}

/// Master → card: the signed plan. CBOR: `{"b": PlanBody, "s": signature}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// `b`: what is signed.
    #[serde(rename = "b")]
    pub body: PlanBody,
    /// `s`: Ed25519 signature (see [`crate::sign`]).
    #[serde(rename = "s")]
    pub signature: Signature,
    /// `mc`: the certificate of the key that made `s`, when that key is not itself in the
    /// card's trust anchor but certified by one that is (a master of a cluster). Not
    /// covered by `s`: the certificate carries its own signature. Absent = `s` is by an
    /// anchor key.
    #[serde(rename = "mc", default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<MasterCert>,
}

/// Card → master: send me this artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fetch {
    /// `h`: sha256 of the artifact.
    #[serde(rename = "h")]
    pub artifact: Digest,
    /// `r`: slices 0..r are already received and verified (resume point).
    #[serde(rename = "r")]
    pub have_slices: u32,
}

/// Master → card: receive an artifact in a (usually multicast) transfer session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// `t`: transfer id; data frames carry it in the header's session field.
    #[serde(rename = "t")]
    pub transfer: u32,
    /// `h`: sha256 of the artifact.
    #[serde(rename = "h")]
    pub artifact: Digest,
    /// `z`: artifact size in bytes.
    #[serde(rename = "z")]
    pub size: u64,
    /// `g`: destination MAC of the session's data frames (group or the card's own).
    #[serde(rename = "g")]
    pub group: MacAddr,
    /// `b`: block size of the session.
    #[serde(rename = "b")]
    pub block_size: u16,
    /// `f`: first slice this session sends (earlier ones come by NACK or catch-up).
    #[serde(rename = "f")]
    pub first_slice: u32,
}

/// Card → master: blocks missing from one slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nack {
    /// `t`: transfer id.
    #[serde(rename = "t")]
    pub transfer: u32,
    /// `s`: slice index.
    #[serde(rename = "s")]
    pub slice: u32,
    /// `m`: bitmap, bit i (byte i/8, bit i%8, LSB first) set = block i missing.
    #[serde(rename = "m", with = "serde_bytes")]
    pub missing: [u8; NACK_BITMAP_LEN],
}

/// What a card is busy with. CBOR: text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// Receiving artifact data.
    #[serde(rename = "f")]
    Fetching,
    /// Hashing a received artifact.
    #[serde(rename = "v")]
    Verifying,
    /// Writing to flash.
    #[serde(rename = "w")]
    Writing,
    /// Atomic commit (UBI rename).
    #[serde(rename = "c")]
    Committing,
}

/// Card → master: progress report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// `st`: stage.
    #[serde(rename = "st")]
    pub stage: Stage,
    /// `h`: artifact concerned, if any.
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Digest>,
    /// `d`: bytes done.
    #[serde(rename = "d")]
    pub done: u64,
    /// `z`: bytes total.
    #[serde(rename = "z")]
    pub total: u64,
}

/// How the card hands off. CBOR: text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Handoff {
    /// kexec into the boot image.
    #[serde(rename = "k")]
    Kexec,
    /// switch_root into the root assembled from packages.
    #[serde(rename = "s")]
    SwitchRoot,
}

/// Card → master: set committed (or staged in RAM), handing off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    /// `d`: set digest of what the card is about to boot.
    #[serde(rename = "d")]
    pub digest: Digest,
    /// `p`: true = committed to flash, false = RAM only.
    #[serde(rename = "p")]
    pub persisted: bool,
    /// `ho`: handoff kind.
    #[serde(rename = "ho")]
    pub handoff: Handoff,
}

/// Structured failure reasons. CBOR: text (unit) or one-entry map (with fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ErrorReason {
    /// `{"ns": {"n": needed, "a": available}}`: flash too small for the set.
    #[serde(rename = "ns")]
    NoSpace {
        /// Bytes needed.
        #[serde(rename = "n")]
        needed: u64,
        /// Bytes available.
        #[serde(rename = "a")]
        available: u64,
    },
    /// `{"bb": {"c": count}}`: too many bad eraseblocks to go on.
    #[serde(rename = "bb")]
    BadBlocks {
        /// Bad eraseblocks seen.
        #[serde(rename = "c")]
        count: u32,
    },
    /// `{"vf": {"n": name, "e": expected, "g": got}}`: sha256 mismatch after download.
    #[serde(rename = "vf")]
    VerificationFailed {
        /// Artifact name.
        #[serde(rename = "n")]
        artifact: String,
        /// Digest from the signed plan.
        #[serde(rename = "e")]
        expected: Digest,
        /// Digest of the received bytes.
        #[serde(rename = "g")]
        got: Digest,
    },
    /// `"uc"`: the master has no record of this card.
    #[serde(rename = "uc")]
    UnknownCard,
    /// `{"uv": {"lo": min, "hi": max}}`: frame version unsupported; I speak `min..=max`.
    /// Frozen in every version.
    #[serde(rename = "uv")]
    UnsupportedVersion {
        /// Lowest version the sender of this error speaks.
        #[serde(rename = "lo")]
        min: u8,
        /// Highest version the sender of this error speaks.
        #[serde(rename = "hi")]
        max: u8,
    },
    /// `{"ut": {"t": type}}`: message type unknown to the sender of this error.
    #[serde(rename = "ut")]
    UnknownMessageType {
        /// The type byte received.
        #[serde(rename = "t")]
        msg_type: u8,
    },
    /// `"bad"`: the body did not decode (detail says why).
    #[serde(rename = "bad")]
    Malformed,
    /// `{"tl": {"n": len, "m": max}}` (version 2): the message the sender had for us (a
    /// plan) is `len` bytes, over the `max`-byte message limit; it cannot be delivered.
    #[serde(rename = "tl")]
    MessageTooLarge {
        /// Encoded length of the message.
        #[serde(rename = "n")]
        len: u64,
        /// The limit.
        #[serde(rename = "m")]
        max: u64,
    },
    /// `{"rb": {"d": digest}}` (version 2): the card rolled back from this set on its
    /// own (its health command never succeeded, or it did not boot) and will not fetch it
    /// again; it boots the set it rolled back to.
    #[serde(rename = "rb")]
    RolledBack {
        /// The set rolled back from.
        #[serde(rename = "d")]
        set: Digest,
    },
}

/// Either way: a structured error. CBOR: `{"r": reason, "t": detail}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorMsg {
    /// `r`: reason.
    #[serde(rename = "r")]
    pub reason: ErrorReason,
    /// `t`: free-text detail for logs and operators.
    #[serde(rename = "t")]
    pub detail: String,
}

/// How the running system is, as the card's resident agent sees it. CBOR: text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Health {
    /// The set names no health command: nothing to check.
    #[serde(rename = "none")]
    Unchecked,
    /// The set's health command has not succeeded yet; its deadline has not passed.
    #[serde(rename = "chk")]
    Checking,
    /// The health command succeeded: the set is marked good on flash.
    #[serde(rename = "ok")]
    Healthy,
    /// The deadline passed without success: the card rolls back (or, with no previous set,
    /// keeps running and says so).
    #[serde(rename = "bad")]
    Unhealthy,
}

/// Card → master, sent by the card's resident agent after hand-off, every few seconds and
/// at once when something changes: presence, the running set and its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alive {
    /// `d`: set digest of what the card runs; absent = nothing from flash (a flash-less
    /// or test-mode boot from RAM).
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Digest>,
    /// `p`: true = the running set is committed on flash, false = RAM only.
    #[serde(rename = "p")]
    pub persisted: bool,
    /// `hs`: health of the running set.
    #[serde(rename = "hs")]
    pub health: Health,
    /// `u`: seconds since the hand-off.
    #[serde(rename = "u")]
    pub uptime: u64,
    /// `e`: epoch of the master whose plan the card runs (0: it booted on its own).
    #[serde(rename = "e")]
    pub epoch: u64,
    /// `rb`: the set this card rolled back from on its own, if it did.
    #[serde(rename = "rb", default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<Digest>,
    /// `x`: commands dropped since the hand-off (forged, not for us, replayed).
    #[serde(rename = "x")]
    pub dropped: u32,
    /// `t`: free text for operators: why unhealthy, what was rolled back. Absent = empty.
    #[serde(rename = "t", default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What a [`Command`] orders. CBOR: text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Reset now and solicit with phase AfterReset.
    #[serde(rename = "reset")]
    Reset,
    /// System-wide warm boot: reset and solicit with phase WarmBoot.
    #[serde(rename = "warm")]
    WarmBoot,
    /// Fetch and commit the current plan now, then report Ready.
    #[serde(rename = "burn")]
    BurnNow,
    /// Enter test mode (plans become RAM-only).
    #[serde(rename = "test-on")]
    EnterTestMode,
    /// Leave test mode.
    #[serde(rename = "test-off")]
    LeaveTestMode,
    /// A running card stages its current plan while it runs, commits it and kexecs
    /// into it (no firmware reset); a card still in init takes it as a Reset.
    #[serde(rename = "up")]
    Upgrade,
}

/// The signed part of a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    /// `a`: action.
    #[serde(rename = "a")]
    pub action: Action,
    /// `t`: the one card this is for; absent = every card that receives it.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<MacAddr>,
    /// `e`: master epoch.
    #[serde(rename = "e")]
    pub epoch: u64,
    /// `q`: command serial within the epoch; cards ignore serials they already executed.
    #[serde(rename = "q")]
    pub serial: u64,
}

/// Master → card(s): signed command. CBOR: `{"b": CommandBody, "s": signature}`, plus
/// `"mc": MasterCert` when the signing key is certified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// `b`: what is signed.
    #[serde(rename = "b")]
    pub body: CommandBody,
    /// `s`: Ed25519 signature (see [`crate::sign`]).
    #[serde(rename = "s")]
    pub signature: Signature,
    /// `mc`: the certificate of the signing key, as in [`Plan::cert`]. Absent = `s` is by
    /// an anchor key.
    #[serde(rename = "mc", default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<MasterCert>,
}

/// The signed part of a [`MasterCert`]: the master plan key a shelf key vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterCertBody {
    /// `k`: the master's Ed25519 plan public key (32 bytes).
    #[serde(rename = "k", with = "serde_bytes")]
    pub key: [u8; 32],
}

/// A shelf key's statement "this master plan key may sign plans and commands for my
/// cards", carried in [`Plan::cert`] and [`Command::cert`] and stored by the master in its
/// `plan.cert` file. CBOR: `{"b": {"k": key}, "s": signature}`; the signature is by a
/// key of the card's trust anchor over the `shelfboot/master-cert/v1\0` domain (see
/// [`crate::sign`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterCert {
    /// `b`: what is signed.
    #[serde(rename = "b")]
    pub body: MasterCertBody,
    /// `s`: the shelf key's Ed25519 signature.
    #[serde(rename = "s")]
    pub signature: Signature,
}
