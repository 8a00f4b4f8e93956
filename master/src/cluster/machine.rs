//! The state machine: this master's `master.db`, written only by applying committed log
//! entries. A batch of entries is one SQLite transaction that also records the last
//! applied log id (and the membership) in `meta`, so after a crash the databases and the
//! point of the log they reflect never disagree.
//!
//! Snapshots are the database itself: `VACUUM INTO` a file, sent whole; installing one
//! copies it over the live database with SQLite's backup API, in place, so connections
//! that read it (the control socket's, the service's) stay valid.

// openraft's `StorageError` is the error type its storage traits return; its size is not
// ours to choose.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::op::OpResult;
use super::{Entry, Member, NodeId, TypeConfig};
use crate::store::Store;
use crate::store::sqlite::SqliteStore;

/// `meta` keys of the databases that belong to replication.
pub const META_APPLIED: &str = "raft_applied";
pub const META_MEMBERSHIP: &str = "raft_membership";

/// What applying one entry gave: its log index and the operation's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub index: u64,
    pub result: OpResult,
}

type SResult<T> = Result<T, StorageError<NodeId>>;
/// The last applied log id and the membership: what the databases reflect of the log.
type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, Member>);
/// The last snapshot made or installed: its description and the database copy.
type Built = (SnapshotMeta<NodeId, Member>, Vec<u8>);

/// The state machine over `master.db` (its own write connection).
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: Arc<Mutex<SqliteStore>>,
    /// Where snapshot files are made and received (`STATE/raft-snapshot/`).
    dir: PathBuf,
    current: Arc<Mutex<Option<Built>>>,
    /// Operations applied since start (writes of every member, this one's included).
    ops: Arc<AtomicU64>,
    /// Where the log index of the last applied import goes (the blob keeper's cue).
    view: Arc<super::blobs::LocalView>,
}

fn sm_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, &e).into()
}

impl StateMachine {
    /// The state machine of `db` (the databases' write connection), snapshots in `dir`.
    /// Counts applied operations in `ops`; notes applied imports in `view`.
    pub fn new(
        db: SqliteStore,
        dir: PathBuf,
        ops: Arc<AtomicU64>,
        view: Arc<super::blobs::LocalView>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        // The log (`raft.db`) is the durable record: an apply need not wait for the disk.
        // A snapshot makes the databases durable before the log behind it is purged.
        let mut db = db;
        db.relax_sync().map_err(std::io::Error::other)?;
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
            dir,
            current: Arc::new(Mutex::new(None)),
            ops,
            view,
        })
    }

    fn db(&self) -> MutexGuard<'_, SqliteStore> {
        // SQLite's transaction keeps the file consistent whatever a panicking holder did.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(db: &SqliteStore) -> SResult<AppliedState> {
        let applied = match db.meta(META_APPLIED).map_err(sm_read)? {
            Some(s) => serde_json::from_str(&s).map_err(sm_read)?,
            None => None,
        };
        let membership = match db.meta(META_MEMBERSHIP).map_err(sm_read)? {
            Some(s) => serde_json::from_str(&s).map_err(sm_read)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    fn set(db: &mut SqliteStore, key: &str, v: &impl Serialize) -> SResult<()> {
        let s = serde_json::to_string(v).map_err(sm_write)?;
        db.set_meta(key, &s).map_err(sm_write)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        let (bytes, meta) = {
            let db = self.db();
            let (applied, membership) = Self::state(&db)?;
            let file = self.dir.join("build.db");
            let _ = std::fs::remove_file(&file);
            // What the snapshot holds must be on disk before openraft purges the log
            // entries it replaces.
            db.checkpoint().map_err(snap_err)?;
            db.copy_to(&file).map_err(snap_err)?;
            let bytes = std::fs::read(&file).map_err(snap_err)?;
            let _ = std::fs::remove_file(&file);
            let id = match applied {
                Some(l) => format!("{}-{}", l.leader_id, l.index),
                None => "empty".to_owned(),
            };
            let meta = SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id: id,
            };
            (bytes, meta)
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> SResult<AppliedState> {
        Self::state(&self.db())
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut db = self.db();
        db.begin_batch().map_err(sm_write)?;
        let mut out = Vec::new();
        let mut last = None;
        let mut ops = 0u64;
        let mut imported = None;
        for e in entries {
            let result = match &e.payload {
                EntryPayload::Blank => OpResult::Done,
                EntryPayload::Normal(op) => match op.apply(&mut db) {
                    Ok(r) => {
                        ops += 1;
                        if matches!(op, super::op::Op::ImportRelease { .. }) {
                            imported = Some(e.log_id.index);
                        }
                        r
                    }
                    Err(err) => {
                        // Nothing of this batch may stay: the log id it would record
                        // would claim entries this database does not hold.
                        db.abort_batch();
                        return Err(StorageIOError::apply(e.log_id, &err).into());
                    }
                },
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(e.log_id), m.clone());
                    if let Err(err) = Self::set(&mut db, META_MEMBERSHIP, &stored) {
                        db.abort_batch();
                        return Err(err);
                    }
                    OpResult::Done
                }
            };
            out.push(Applied {
                index: e.log_id.index,
                result,
            });
            last = Some(e.log_id);
        }
        if let Some(l) = last
            && let Err(err) = Self::set(&mut db, META_APPLIED, &Some(l))
        {
            db.abort_batch();
            return Err(err);
        }
        db.end_batch().map_err(sm_write)?;
        self.ops.fetch_add(ops, Ordering::Relaxed);
        if let Some(i) = imported {
            self.view.import_at.fetch_max(i, Ordering::Relaxed);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let bytes = snapshot.into_inner();
        let file = self.dir.join("received.db");
        std::fs::write(&file, &bytes).map_err(snap_err)?;
        {
            let mut db = self.db();
            db.restore_from(&file).map_err(snap_err)?;
            // The copy holds the applied id and membership it was built at; write them
            // as the leader describes them all the same.
            Self::set(&mut db, META_APPLIED, &meta.last_log_id)?;
            Self::set(&mut db, META_MEMBERSHIP, &meta.last_membership)?;
            // The log before the snapshot goes next: the copy must be on disk first.
            db.checkpoint().map_err(snap_err)?;
        }
        let _ = std::fs::remove_file(&file);
        // The copy may reference blobs this member has not looked for.
        self.view
            .import_at
            .fetch_max(meta.last_log_id.map_or(0, |l| l.index), Ordering::Relaxed);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        Ok(self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(meta, bytes)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(bytes.clone())),
            }))
    }
}
