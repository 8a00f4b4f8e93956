//! The Raft log and vote on this master's disk: `STATE/raft.db`, an SQLite file of its
//! own (WAL, `synchronous=FULL`), so that appending entries never waits on the databases'
//! write lock. Entries are stored as CBOR by index; the vote, the committed id and the
//! last purged id as JSON in `meta`. Every write is one transaction, made durable before
//! openraft is told it is flushed.

// openraft's `StorageError` is the error type its storage traits return; its size is not
// ours to choose.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Entry, NodeId, TypeConfig};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log(idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// The log store; clones share one connection (openraft's log reader is a clone).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Mutex<Connection>>,
}

type SResult<T> = Result<T, StorageError<NodeId>>;

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Opens or creates the log at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            db: Arc::new(Mutex::new(conn)),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A poisoned lock means a panic while holding it; SQLite's own transaction kept the
        // file consistent, so the connection is still usable.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get<T: DeserializeOwned>(c: &Connection, key: &str) -> SResult<Option<T>> {
        let v: Option<String> = c
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(read_err)?;
        v.map(|s| serde_json::from_str(&s).map_err(read_err))
            .transpose()
    }

    fn put<T: Serialize>(c: &Connection, key: &str, v: &T) -> SResult<()> {
        let s = serde_json::to_string(v).map_err(write_err)?;
        c.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![key, s],
        )
        .map_err(write_err)?;
        Ok(())
    }

    fn decode(bytes: &[u8]) -> SResult<Entry> {
        ciborium::from_reader(bytes).map_err(read_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry>> {
        let lo = match range.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => match n.checked_sub(1) {
                Some(n) => n,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => u64::MAX,
        };
        // SQLite integers are i64; indexes above that do not occur.
        let hi = i64::try_from(hi).unwrap_or(i64::MAX);
        let lo = i64::try_from(lo).unwrap_or(i64::MAX);
        let c = self.conn();
        let mut stmt = c
            .prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx")
            .map_err(read_err)?;
        let rows = stmt
            .query_map(params![lo, hi], |r| r.get::<_, Vec<u8>>(0))
            .map_err(read_err)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(Self::decode(&row.map_err(read_err)?)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let c = self.conn();
        let last_purged: Option<LogId<NodeId>> = Self::get(&c, "last_purged")?;
        let last: Option<Vec<u8>> = c
            .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(read_err)?;
        let last_log_id = match last {
            Some(bytes) => Some(Self::decode(&bytes)?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> SResult<()> {
        Self::put(&self.conn(), "vote", vote).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<NodeId>>> {
        Self::get(&self.conn(), "vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> SResult<()> {
        Self::put(&self.conn(), "committed", &committed)
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<NodeId>>> {
        Ok(Self::get::<Option<LogId<NodeId>>>(&self.conn(), "committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut c = self.conn();
        let tx = c.transaction().map_err(write_err)?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR REPLACE INTO log(idx, entry) VALUES (?1, ?2)")
                .map_err(write_err)?;
            for e in entries {
                let mut buf = Vec::new();
                ciborium::into_writer(&e, &mut buf).map_err(write_err)?;
                let idx = i64::try_from(e.log_id.index).map_err(write_err)?;
                stmt.execute(params![idx, buf]).map_err(write_err)?;
            }
        }
        tx.commit().map_err(write_err)?;
        // Committed with synchronous=FULL: on disk.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        let idx = i64::try_from(log_id.index).map_err(write_err)?;
        self.conn()
            .execute("DELETE FROM log WHERE idx >= ?1", [idx])
            .map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        let idx = i64::try_from(log_id.index).map_err(write_err)?;
        let mut c = self.conn();
        let tx = c.transaction().map_err(write_err)?;
        Self::put(&tx, "last_purged", &log_id)?;
        tx.execute("DELETE FROM log WHERE idx <= ?1", [idx])
            .map_err(write_err)?;
        tx.commit().map_err(write_err)?;
        Ok(())
    }
}
