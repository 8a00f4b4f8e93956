//! [`ReplicatedStore`]: the [`Store`] a master in a cluster runs on. Reads go to this
//! master's own `master.db` (a connection of their own); every write is an [`Op`] made
//! through the cluster ([`Cluster::write`]) and returns once applied here too.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::sync::Arc;

use super::Cluster;
use super::op::{Op, OpResult};
use crate::blobs::BlobDir;
use crate::image::manifest::{Manifest, ReleaseId};
use crate::store::sqlite::SqliteStore;
use crate::store::{
    Assignment, BootRecord, Event, ImportOutcome, Inventory, NewRelease, NodeHealth, NodeIdentity,
    NodeRecord, NodeState, PackageRecord, ReleaseInfo, Result, Store, StoreError, Target, TestMode,
    TrustedKey,
};
use shelfboot_proto::id::{Digest, MacAddr};

/// The databases of a master in a cluster.
#[derive(Debug)]
pub struct ReplicatedStore {
    local: SqliteStore,
    cluster: Arc<Cluster>,
    blobs: BlobDir,
    /// Applied operations accounted for by [`Store::changed_elsewhere`], and this store's
    /// own writes since.
    seen: Cell<u64>,
    own: Cell<u64>,
    /// Between [`Store::begin_batch`] and [`Store::end_batch`]: card reports whose
    /// result nothing reads back (state, inventory, presence, health, events) wait here and go to
    /// the cluster as one [`Op::Batch`], before any read or any other write, and at the
    /// end of the batch. What a caller reads therefore always includes them.
    batching: Cell<bool>,
    queue: RefCell<Vec<Op>>,
}

impl ReplicatedStore {
    /// Reads from `local` (this master's `master.db`), writes through `cluster`; an
    /// import copies its blobs from `blobs` to the other members first.
    pub fn new(local: SqliteStore, cluster: Arc<Cluster>, blobs: BlobDir) -> Self {
        let seen = Cell::new(cluster.applied_ops());
        Self {
            local,
            cluster,
            blobs,
            seen,
            own: Cell::new(0),
            batching: Cell::new(false),
            queue: RefCell::new(Vec::new()),
        }
    }

    /// The cluster this store writes through.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    fn write(&self, op: Op) -> Result<OpResult> {
        self.flush()?;
        let name = op.name();
        let r = self.cluster.write(op);
        if r.is_ok() {
            self.own.set(self.own.get() + 1);
        }
        match r {
            Ok(OpResult::Refused(message)) => Err(StoreError::Refused(message)),
            Ok(r) => Ok(r),
            Err(e) => {
                ::log::warn!(
                    "cluster: write '{name}': {}",
                    shelfboot_proto::report::error_chain(&e)
                );
                Err(StoreError::Cluster(Box::new(e)))
            }
        }
    }

    fn done(&self, op: Op) -> Result<()> {
        self.write(op).map(|_| ())
    }

    /// A write whose result nothing reads back: queued while a batch is open.
    fn later(&self, op: Op) -> Result<()> {
        if self.batching.get() {
            self.queue.borrow_mut().push(op);
            Ok(())
        } else {
            self.done(op)
        }
    }

    /// Sends the queued writes, as one entry. A refusal among them is returned (the
    /// others stand: each is atomic on its own).
    fn flush(&self) -> Result<()> {
        let ops = std::mem::take(&mut *self.queue.borrow_mut());
        match ops.len() {
            0 => Ok(()),
            1 => self.done(ops.into_iter().next().expect("one op")),
            _ => match self.write(Op::Batch(ops))? {
                OpResult::Batch(results) => {
                    let refused: Vec<String> = results
                        .into_iter()
                        .filter_map(|r| match r {
                            OpResult::Refused(m) => Some(m),
                            _ => None,
                        })
                        .collect();
                    if refused.is_empty() {
                        Ok(())
                    } else {
                        Err(StoreError::Refused(refused.join("; ")))
                    }
                }
                other => Err(unexpected(other)),
            },
        }
    }

    fn flag(&self, op: Op) -> Result<bool> {
        match self.write(op)? {
            OpResult::Flag(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }
}

/// An operation answered with another kind of result: the masters run different
/// versions.
fn unexpected(r: OpResult) -> StoreError {
    StoreError::Refused(format!(
        "the cluster answered {r:?}, not what this master expects; run one shelfboot version on every master"
    ))
}

impl Store for ReplicatedStore {
    fn trust_key(&mut self, key: &TrustedKey) -> Result<bool> {
        self.flag(Op::TrustKey(key.clone()))
    }

    fn untrust_key(&mut self, key_id: &str, now: i64) -> Result<()> {
        self.done(Op::UntrustKey {
            key_id: key_id.to_owned(),
            now,
        })
    }

    fn trusted_keys(&self) -> Result<Vec<TrustedKey>> {
        self.flush()?;
        self.local.trusted_keys()
    }

    fn check_import(&self, manifest: &Manifest, manifest_sha256: &Digest) -> Result<bool> {
        self.flush()?;
        self.local.check_import(manifest, manifest_sha256)
    }

    fn import_release(&mut self, rel: &NewRelease<'_>) -> Result<ImportOutcome> {
        let list: Vec<(Digest, u64)> = rel
            .manifest
            .blobs
            .iter()
            .map(|b| (b.sha256, b.size))
            .collect();
        self.cluster
            .push_blobs(&self.blobs, &list)
            .map_err(|e| StoreError::Cluster(Box::new(e)))?;
        match self.write(Op::ImportRelease {
            manifest: Box::new(rel.manifest.clone()),
            manifest_sha256: rel.manifest_sha256,
            signer_key_id: rel.signer_key_id.clone(),
            now: rel.now,
            activate: rel.activate,
        })? {
            OpResult::Imported(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    fn releases(&self) -> Result<Vec<ReleaseInfo>> {
        self.flush()?;
        self.local.releases()
    }

    fn release_manifest(&self, id: &ReleaseId) -> Result<Option<Manifest>> {
        self.flush()?;
        self.local.release_manifest(id)
    }

    fn packages(&self) -> Result<Vec<PackageRecord>> {
        self.flush()?;
        self.local.packages()
    }

    fn boot_images(&self) -> Result<Vec<BootRecord>> {
        self.flush()?;
        self.local.boot_images()
    }

    fn delete_releases(&mut self, ids: &[ReleaseId], now: i64) -> Result<()> {
        self.done(Op::DeleteReleases {
            ids: ids.to_vec(),
            now,
        })
    }

    fn referenced_blobs(&self) -> Result<BTreeSet<Digest>> {
        self.flush()?;
        self.local.referenced_blobs()
    }

    fn record_identity(&mut self, id: &NodeIdentity, now: i64) -> Result<bool> {
        self.flag(Op::RecordIdentity {
            id: id.clone(),
            now,
        })
    }

    fn set_node_class(&mut self, mac: &MacAddr, class: Option<&str>, now: i64) -> Result<()> {
        self.done(Op::SetNodeClass {
            mac: *mac,
            class: class.map(str::to_owned),
            now,
        })
    }

    fn record_state(
        &mut self,
        mac: &MacAddr,
        state: NodeState,
        reason: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.later(Op::RecordState {
            mac: *mac,
            state,
            reason: reason.map(str::to_owned),
            now,
        })
    }

    fn record_inventory(&mut self, mac: &MacAddr, inv: &Inventory, now: i64) -> Result<()> {
        self.later(Op::RecordInventory {
            mac: *mac,
            inventory: inv.clone(),
            now,
        })
    }

    fn mark_absent(&mut self, mac: &MacAddr, silent_secs: u64, now: i64) -> Result<()> {
        self.later(Op::MarkAbsent {
            mac: *mac,
            silent_secs,
            now,
        })
    }

    fn mark_present(&mut self, mac: &MacAddr, now: i64) -> Result<()> {
        self.later(Op::MarkPresent { mac: *mac, now })
    }

    fn record_health(&mut self, mac: &MacAddr, health: &NodeHealth, now: i64) -> Result<()> {
        self.later(Op::RecordHealth {
            mac: *mac,
            health: health.clone(),
            now,
        })
    }

    fn set_test_mode(&mut self, mac: &MacAddr, test: Option<&TestMode>, now: i64) -> Result<()> {
        self.done(Op::SetTestMode {
            mac: *mac,
            test: test.cloned(),
            now,
        })
    }

    fn mark_prepare(&mut self, mac: Option<&MacAddr>, now: i64) -> Result<Vec<MacAddr>> {
        match self.write(Op::MarkPrepare {
            mac: mac.copied(),
            now,
        })? {
            OpResult::Macs(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    fn prepare_pending(&self, mac: &MacAddr) -> Result<bool> {
        self.flush()?;
        self.local.prepare_pending(mac)
    }

    fn record_prepared(&mut self, mac: &MacAddr, now: i64) -> Result<bool> {
        self.flag(Op::RecordPrepared { mac: *mac, now })
    }

    fn node(&self, mac: &MacAddr) -> Result<Option<NodeRecord>> {
        self.flush()?;
        self.local.node(mac)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.flush()?;
        self.local.nodes()
    }

    fn set_assignment(&mut self, a: &Assignment, kind: &str, now: i64) -> Result<()> {
        self.done(Op::SetAssignment {
            assignment: a.clone(),
            kind: kind.to_owned(),
            now,
        })
    }

    fn clear_assignment(&mut self, target: &Target, now: i64) -> Result<()> {
        self.done(Op::ClearAssignment {
            target: target.clone(),
            now,
        })
    }

    fn assignments(&self) -> Result<Vec<Assignment>> {
        self.flush()?;
        self.local.assignments()
    }

    fn events(&self, node: Option<&MacAddr>, limit: u32) -> Result<Vec<Event>> {
        self.flush()?;
        self.local.events(node, limit)
    }

    fn events_after(&self, node: Option<&MacAddr>, after: i64, limit: u32) -> Result<Vec<Event>> {
        self.flush()?;
        self.local.events_after(node, after, limit)
    }

    fn record_event(
        &mut self,
        node: Option<&MacAddr>,
        kind: &str,
        detail: &str,
        now: i64,
    ) -> Result<()> {
        self.later(Op::RecordEvent {
            node: node.copied(),
            kind: kind.to_owned(),
            detail: detail.to_owned(),
            now,
        })
    }

    fn dump(&self) -> Result<String> {
        self.flush()?;
        self.local.dump()
    }

    fn begin_batch(&mut self) -> Result<()> {
        self.batching.set(true);
        Ok(())
    }

    fn end_batch(&mut self) -> Result<()> {
        self.batching.set(false);
        self.flush()
    }

    fn changed_elsewhere(&self) -> bool {
        let now = self.cluster.applied_ops();
        let foreign = now > self.seen.get() + self.own.get();
        self.seen.set(now);
        self.own.set(0);
        foreign
    }

    fn cluster(&self) -> Option<&Arc<Cluster>> {
        Some(&self.cluster)
    }
}
