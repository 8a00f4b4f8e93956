//! The master's databases behind one operation-sized trait.
//!
//! *Package database*: trusted vendor keys, releases (with their signed manifests),
//! artifacts (boot images, packages) and which blobs they use. *Node database*: cards,
//! assignments (class/node/default → release and pinned versions) and the event history.
//! The blob bytes live in [`crate::blobs`]; the store only records digests.
//!
//! [`Store`] is sized to operations ("import this release", "record this Solicit"), not
//! to tables, so that a replicated backend can implement it later. [`sqlite::SqliteStore`]
//! is the embedded implementation. Nothing here resolves plans or touches blob files.

pub mod sqlite;
mod types;

pub use types::*;

use std::collections::BTreeSet;

use crate::image::manifest::{Manifest, ReleaseId};
use shelfboot_proto::id::MacAddr;
use shelfboot_proto::id::{Arch, Digest};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database at {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database operation '{op}' failed")]
    Sql {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database holds data this master cannot read ({what})")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "duplicate version with different content: {what} is already imported (from release {existing_release}) with different content; give the new build a new version"
    )]
    DuplicateVersion {
        what: String,
        existing_release: String,
    },
    #[error(
        "release {0} is already imported with a different manifest; give the new release a new version"
    )]
    DuplicateRelease(ReleaseId),
    #[error("unknown node {0} (register it with `master node add` or let it boot)")]
    UnknownNode(MacAddr),
    #[error("unknown release {0} (see `master releases`)")]
    UnknownRelease(String),
    #[error("unknown key {0} (see `master trust list`)")]
    UnknownKey(String),
    /// A replicated write the databases refused (the same on every master): the refusal's
    /// message.
    #[error("{0}")]
    Refused(String),
    #[error("the write was not made on the masters' cluster")]
    Cluster(#[source] Box<crate::cluster::ClusterError>),
    #[error("{what} {name} {version} ({arch}) is not imported")]
    UnknownArtifact {
        what: &'static str,
        name: String,
        version: String,
        arch: Arch,
    },
}

/// Shorthand for store results.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The master's databases.
pub trait Store {
    // ---- trust ----
    /// Adds a trusted vendor key; false if it was already trusted.
    fn trust_key(&mut self, key: &TrustedKey) -> Result<bool>;
    /// Removes a trusted key by id.
    fn untrust_key(&mut self, key_id: &str, now: i64) -> Result<()>;
    /// All trusted keys, by id.
    fn trusted_keys(&self) -> Result<Vec<TrustedKey>>;

    // ---- package database ----
    /// Checks, without writing, whether importing would clash with what is stored.
    /// Returns `true` if this exact release is already imported (re-import is a no-op).
    fn check_import(&self, manifest: &Manifest, manifest_sha256: &Digest) -> Result<bool>;
    /// Records a release, its artifacts and blobs in one transaction (all or nothing).
    /// Blobs must already be in the blob directory. Re-importing the identical release
    /// changes nothing.
    fn import_release(&mut self, rel: &NewRelease<'_>) -> Result<ImportOutcome>;
    /// Releases in import order.
    fn releases(&self) -> Result<Vec<ReleaseInfo>>;
    /// A release's manifest.
    fn release_manifest(&self, id: &ReleaseId) -> Result<Option<Manifest>>;
    /// Every imported package build, sorted by name, version, arch.
    fn packages(&self) -> Result<Vec<PackageRecord>>;
    /// Every imported boot image build.
    fn boot_images(&self) -> Result<Vec<BootRecord>>;
    /// Removes releases and every artifact no remaining release or pin references.
    fn delete_releases(&mut self, ids: &[ReleaseId], now: i64) -> Result<()>;
    /// Every blob digest a stored artifact uses.
    fn referenced_blobs(&self) -> Result<BTreeSet<Digest>>;

    // ---- node database ----
    /// Registers or updates a card's identity (a Solicit, or `master node add`) and marks
    /// it present. Returns whether the card was new.
    fn record_identity(&mut self, id: &NodeIdentity, now: i64) -> Result<bool>;
    /// Forces a card into a class (`None`: first matching class).
    fn set_node_class(&mut self, mac: &MacAddr, class: Option<&str>, now: i64) -> Result<()>;
    /// Records a state change, with the reason for failures.
    fn record_state(
        &mut self,
        mac: &MacAddr,
        state: NodeState,
        reason: Option<&str>,
        now: i64,
    ) -> Result<()>;
    /// Records the inventory a card reported.
    fn record_inventory(&mut self, mac: &MacAddr, inv: &Inventory, now: i64) -> Result<()>;
    /// Marks a present card absent: not heard for `silent_secs` (its `last_seen` becomes
    /// `now - silent_secs`), with the event "absent". Nothing is written for a card
    /// already absent.
    fn mark_absent(&mut self, mac: &MacAddr, silent_secs: u64, now: i64) -> Result<()>;
    /// Marks an absent card present again, with the event "present again". Nothing is
    /// written for a card already present.
    fn mark_present(&mut self, mac: &MacAddr, now: i64) -> Result<()>;
    /// Records what the card's resident agent reports of the set it runs. Nothing is
    /// written when the record holds this report already. A change of health is an
    /// event; a `rolled_back_from` other than the recorded one is an event "rollback"
    /// and becomes the node's state reason.
    fn record_health(&mut self, mac: &MacAddr, health: &NodeHealth, now: i64) -> Result<()>;
    /// Enters (`Some`) or leaves (`None`) test mode.
    fn set_test_mode(&mut self, mac: &MacAddr, test: Option<&TestMode>, now: i64) -> Result<()>;
    /// Marks one card, or every known card, "prepare pending" (`master prepare`): each
    /// is told to burn and hold at its next Solicit. Returns the cards marked.
    fn mark_prepare(&mut self, mac: Option<&MacAddr>, now: i64) -> Result<Vec<MacAddr>>;
    /// True if the card has a prepare mark.
    fn prepare_pending(&self, mac: &MacAddr) -> Result<bool>;
    /// The marked card reported Ready: clears the mark and records it `ready` with the
    /// reason "prepared, holding for warm boot". False (nothing written) without a mark.
    fn record_prepared(&mut self, mac: &MacAddr, now: i64) -> Result<bool>;
    /// One card.
    fn node(&self, mac: &MacAddr) -> Result<Option<NodeRecord>>;
    /// All cards, by shelf, slot, MAC.
    fn nodes(&self) -> Result<Vec<NodeRecord>>;

    // ---- assignments and history ----
    /// Sets what a target runs; `kind` names the event ("assign", "rollback", "import").
    fn set_assignment(&mut self, a: &Assignment, kind: &str, now: i64) -> Result<()>;
    /// Removes an assignment.
    fn clear_assignment(&mut self, target: &Target, now: i64) -> Result<()>;
    /// All assignments.
    fn assignments(&self) -> Result<Vec<Assignment>>;
    /// Events, newest last; optionally for one card only; at most `limit`.
    fn events(&self, node: Option<&MacAddr>, limit: u32) -> Result<Vec<Event>>;
    /// Events with an id above `after`, oldest first; optionally for one card only; at
    /// most `limit` (`master events --follow` reads on from the last id it printed).
    fn events_after(&self, node: Option<&MacAddr>, after: i64, limit: u32) -> Result<Vec<Event>>;
    /// Records an event that no other write records (a fleet order).
    fn record_event(
        &mut self,
        node: Option<&MacAddr>,
        kind: &str,
        detail: &str,
        now: i64,
    ) -> Result<()>;

    // ---- batching ----
    /// Groups the following operations into one transaction until [`Store::end_batch`]
    /// (the backplane service: one commit, one fsync, per loop iteration instead of one
    /// per card report). Each operation stays atomic on its own inside the batch. A no-op
    /// when a batch is already open, and for stores that do not batch.
    fn begin_batch(&mut self) -> Result<()> {
        Ok(())
    }
    /// Commits the batch opened by [`Store::begin_batch`]; a no-op when none is open. On
    /// failure the batch's writes are rolled back and lost.
    fn end_batch(&mut self) -> Result<()> {
        Ok(())
    }

    /// A complete, deterministic text dump of every table (tests compare these).
    fn dump(&self) -> Result<String>;

    /// The masters' cluster this store is replicated in; `None` for a store of its own
    /// (the embedded default).
    fn cluster(&self) -> Option<&std::sync::Arc<crate::cluster::Cluster>> {
        None
    }

    /// Whether the databases changed by other hands than this store's since the last
    /// call (another master's writes, replicated here): a cache of them must be dropped.
    /// Never for a store of its own: its owner makes every write.
    fn changed_elsewhere(&self) -> bool {
        false
    }
}
