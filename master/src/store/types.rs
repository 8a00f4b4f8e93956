//! Records the store reads and writes. Plain data, serde-able for `--json` output and the
//! control socket.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::image::manifest::{BlobRef, Manifest, ReleaseId};
use shelfboot_proto::id::MacAddr;
use shelfboot_proto::id::{Arch, Digest};

/// A trusted vendor key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKey {
    pub key_id: String,
    /// 64 hex digits.
    pub public_key: String,
    pub comment: String,
    pub added_at: i64,
}

/// A release to record.
#[derive(Debug)]
pub struct NewRelease<'a> {
    pub manifest: &'a Manifest,
    pub manifest_sha256: Digest,
    pub signer_key_id: String,
    pub now: i64,
    /// Also make it the default release for cards without another assignment.
    pub activate: bool,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportOutcome {
    Imported,
    AlreadyPresent,
}

/// A stored release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub release: ReleaseId,
    pub manifest_sha256: Digest,
    pub signer: String,
    pub imported_at: i64,
    pub boot_images: u32,
    pub packages: u32,
    pub classes: Vec<String>,
}

/// A stored package build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    pub name: String,
    pub version: semver::Version,
    pub arch: Arch,
    pub provides: Vec<String>,
    pub depends: BTreeMap<String, String>,
    pub payload: BlobRef,
    /// Releases that contain it.
    pub releases: Vec<String>,
}

/// A stored boot image build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    pub name: String,
    pub version: semver::Version,
    pub card_type: String,
    pub arch: Arch,
    pub image: BlobRef,
    pub cmdline: String,
    pub releases: Vec<String>,
}

/// Card life cycle as the master sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Pristine,
    Fetching,
    Committing,
    Ready,
    Failed,
    /// Ready on a test-mode set (RAM only).
    Test,
    /// Ready on a set run from RAM: a RAM-first plan, or a card without usable flash.
    Ram,
}

impl NodeState {
    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pristine => "pristine",
            Self::Fetching => "fetching",
            Self::Committing => "committing",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Test => "test",
            Self::Ram => "ram",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pristine" => Self::Pristine,
            "fetching" => Self::Fetching,
            "committing" => Self::Committing,
            "ready" => Self::Ready,
            "failed" => Self::Failed,
            "test" => Self::Test,
            "ram" => Self::Ram,
            other => return Err(format!("unknown node state '{other}'")),
        })
    }
}

/// Who a card is (from a Solicit or `master node add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub mac: MacAddr,
    pub card_type: String,
    pub arch: Arch,
    pub shelf: u32,
    pub slot: u32,
    pub hw_rev: String,
    /// Features the card asks for.
    pub features: Vec<String>,
}

/// One artifact a card reports holding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryItem {
    pub kind: String,
    pub name: String,
    pub version: String,
    pub sha256: Digest,
}

/// What a card reported its flash holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The card's inventory digest (compared with the plan digest).
    pub digest: Option<Digest>,
    pub items: Vec<InventoryItem>,
}

/// RAM-only trial packages for one card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestMode {
    /// Package name → exact version.
    pub packages: BTreeMap<String, semver::Version>,
    pub since: i64,
}

/// A card as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub identity: NodeIdentity,
    /// Class forced by the operator (otherwise the first matching class).
    pub class: Option<String>,
    pub present: bool,
    pub last_seen: Option<i64>,
    pub state: NodeState,
    pub state_reason: Option<String>,
    pub inventory: Option<Inventory>,
    pub test_mode: Option<TestMode>,
    pub registered_at: i64,
    /// What the card's resident agent last reported of the set it runs (none: it has
    /// not reported since it was registered, or it runs no agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<NodeHealth>,
}

/// Health of the set a card runs, as its resident agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The set names no health command: nothing is checked.
    None,
    /// The health command has not succeeded yet; its deadline has not passed.
    Checking,
    /// The health command succeeded: the set is marked good on the card.
    Healthy,
    /// The deadline passed without success.
    Unhealthy,
}

impl Health {
    /// The lowercase name stored in the database and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Checking => "checking",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Health {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => Self::None,
            "checking" => Self::Checking,
            "healthy" => Self::Healthy,
            "unhealthy" => Self::Unhealthy,
            other => return Err(format!("unknown health '{other}'")),
        })
    }
}

/// A card's report of the set it runs (its resident agent's Alive), as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    pub health: Health,
    /// Set digest of what the card runs, from flash or RAM (none: its agent does not know).
    pub running: Option<Digest>,
    /// The set the card rolled back from on its own, if it did.
    pub rolled_back_from: Option<Digest>,
    /// Commands the agent dropped (forged, replayed, not for it) since its hand-off.
    pub dropped: u64,
    /// The agent's text: why unhealthy, what was rolled back (may be empty).
    pub detail: String,
}

impl NodeHealth {
    /// What `master nodes` shows: `rolled back` once the card rolled back on its own,
    /// else the health.
    pub fn summary(&self) -> &'static str {
        if self.rolled_back_from.is_some() {
            "rolled back"
        } else {
            self.health.as_str()
        }
    }
}

/// What an assignment applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Target {
    /// Every card without a class or node assignment.
    Default,
    Class(String),
    Node(MacAddr),
}

impl Target {
    /// (kind, name) as stored.
    pub fn key(&self) -> (&'static str, String) {
        match self {
            Self::Default => ("default", String::new()),
            Self::Class(c) => ("class", c.clone()),
            Self::Node(m) => ("node", m.to_string()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Class(c) => write!(f, "class {c}"),
            Self::Node(m) => write!(f, "node {m}"),
        }
    }
}

/// What a target runs: a release and/or pinned package versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub target: Target,
    pub release: Option<ReleaseId>,
    /// Package name → exact version (any imported build).
    pub pins: BTreeMap<String, semver::Version>,
    pub set_at: i64,
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at: i64,
    pub node: Option<MacAddr>,
    pub kind: String,
    pub detail: String,
}
