//! The embedded store: one SQLite file (`<state>/master.db`, WAL, foreign keys on).
//!
//! Split: [`packages`] (trust, releases, artifacts, gc) and [`nodes`] (cards, assignments,
//! events) hold the operations, [`rows`] the row helpers both use; this file holds the
//! connection, transactions, helpers and the dump.
//!
//! Every mutating operation is one transaction and records its event in the same
//! transaction, so the history never disagrees with the state. Schema: `store/schema.sql`
//! and docs/master.md.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Params, Row, Transaction, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod nodes;
mod packages;
mod rows;

use super::{
    Assignment, BootRecord, Event, ImportOutcome, Inventory, NewRelease, NodeHealth, NodeIdentity,
    NodeRecord, NodeState, PackageRecord, ReleaseInfo, Result, Store, StoreError, Target, TestMode,
    TrustedKey,
};
use crate::image::manifest::{Manifest, ReleaseId};
use shelfboot_proto::id::Digest;
use shelfboot_proto::id::MacAddr;

/// How long a statement waits for another connection's write lock before it fails.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Schema version stored in `meta`.
pub const SCHEMA_VERSION: i64 = 2;
const SCHEMA: &str = include_str!("../schema.sql");

pub(super) fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { op, source }
}

pub(super) fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing our own plain data types to a String cannot fail (no maps with
    // non-string keys, no I/O); fall back to "null" rather than panic.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

pub(super) fn from_json<T: DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|source| StoreError::Decode {
        what: what.to_owned(),
        source,
    })
}

/// SQLite implementation of [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    /// Where the batch of [`Store::begin_batch`] stands.
    batch: Batch,
}

/// A batch is begun lazily: `BEGIN IMMEDIATE` at its first write, so that a loop turn of
/// the service that writes nothing (most of them while a transfer runs) costs no
/// transaction, no lock and no commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batch {
    Off,
    /// Asked for; no write yet.
    Pending,
    /// `BEGIN IMMEDIATE` done.
    Open,
}

impl SqliteStore {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::init(conn)
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(sql("open in-memory database"))?;
        Self::init(conn)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("enable WAL"))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(sql("enable foreign keys"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("set synchronous"))?;
        // Another connection holding the write lock (a test or tool reading the state next
        // to its owner, which writes) makes us wait up to this long instead of failing at
        // once. Every write transaction begins IMMEDIATE, so it waits here too.
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql("set busy timeout"))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.execute_batch(SCHEMA).map_err(sql("create schema"))?;
        migrate_node_states(&conn)?;
        conn.exec(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION.to_string()],
        )
        .map_err(sql("write schema version"))?;
        Ok(Self {
            conn,
            batch: Batch::Off,
        })
    }

    /// One operation's transaction. Inside a batch it is a savepoint (its commit is a
    /// RELEASE and the batch's COMMIT makes it durable); outside one it is a transaction
    /// of its own, begun IMMEDIATE. Dropped without commit, it rolls back.
    pub(super) fn tx(&mut self) -> Result<Tx<'_>> {
        if self.batch == Batch::Pending {
            self.conn
                .exec("BEGIN IMMEDIATE", [])
                .map_err(sql("begin batch"))?;
            self.batch = Batch::Open;
        }
        if self.batch == Batch::Open {
            return Nested::begin(&self.conn)
                .map(Tx::Nested)
                .map_err(sql("begin savepoint"));
        }
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map(Tx::Outer)
            .map_err(sql("begin transaction"))
    }
}

/// Schema 1 → 2: the `nodes` table's state CHECK gains `'ram'`. SQLite cannot change a
/// CHECK in place, so the table is rebuilt as its documentation describes for other
/// schema changes (new table, copy, drop, rename; sqlite.org/lang_altertable.html), with
/// foreign keys off so the tables that cascade from `nodes` keep their rows. The new
/// table's definition is the one in `schema.sql`. One transaction: a crash leaves the old
/// table, and the next open migrates again.
fn migrate_node_states(conn: &Connection) -> Result<()> {
    let current: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'nodes'",
            [],
            |r| r.get(0),
        )
        .map_err(sql("read the nodes table's definition"))?;
    if current.contains("'ram'") {
        return Ok(());
    }
    let start = SCHEMA
        .find("CREATE TABLE IF NOT EXISTS nodes (")
        .ok_or_else(|| missing_definition("nodes"))?;
    let len = SCHEMA[start..]
        .find(");")
        .ok_or_else(|| missing_definition("nodes"))?;
    let create = SCHEMA[start..start + len + 2].replacen(
        "CREATE TABLE IF NOT EXISTS nodes (",
        "CREATE TABLE nodes_v2 (",
        1,
    );
    log::info!("master database: migrating the nodes table to schema version 2 (state 'ram')");
    conn.pragma_update(None, "foreign_keys", false)
        .map_err(sql("disable foreign keys for the migration"))?;
    let rebuilt = conn
        .execute_batch(&format!(
            "BEGIN IMMEDIATE;
             {create}
             INSERT INTO nodes_v2 SELECT * FROM nodes;
             DROP TABLE nodes;
             ALTER TABLE nodes_v2 RENAME TO nodes;
             COMMIT;"
        ))
        .map_err(sql("migrate the nodes table"));
    if rebuilt.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(sql("enable foreign keys"))?;
    rebuilt
}

/// `schema.sql` compiled into this master lacks a table it migrates: a broken build.
fn missing_definition(table: &str) -> StoreError {
    StoreError::Refused(format!(
        "this master's built-in schema has no definition of table '{table}' to migrate to: the build is broken; install a released master"
    ))
}

/// Replication's hooks: the `meta` values a replicated master keeps beside the data, and
/// whole-database copies (its snapshots). Only `crate::cluster` uses these.
impl SqliteStore {
    /// A value of the `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(sql("read meta"))
    }

    /// Sets a `meta` value, inside the open batch if there is one (so it commits with the
    /// batch's operations).
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        let tx = self.tx()?;
        tx.exec(
            "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![key, value],
        )
        .map_err(sql("write meta"))?;
        tx.commit().map_err(sql("commit"))
    }

    /// Commits without waiting for the disk (`synchronous=NORMAL`): for a database whose
    /// writes are all replayed from a durable log after a crash (a cluster member's, whose
    /// applied log index is stored in the same transactions). The file stays consistent;
    /// a power cut may take the last transactions, which the log then applies again.
    pub fn relax_sync(&mut self) -> Result<()> {
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql("set synchronous"))
    }

    /// Makes everything committed so far durable (a full WAL checkpoint, which syncs the
    /// log and then the database file).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .map_err(sql("checkpoint"))
    }

    /// Drops the open batch and every write in it.
    pub fn abort_batch(&mut self) {
        if self.batch == Batch::Open {
            let _ = self.conn.exec("ROLLBACK", []);
        }
        self.batch = Batch::Off;
    }

    /// Writes a consistent copy of the whole database to `path` (which must not exist).
    pub fn copy_to(&self, path: &Path) -> Result<()> {
        self.conn
            .execute("VACUUM INTO ?1", [path.to_string_lossy()])
            .map(|_| ())
            .map_err(sql("copy the database"))
    }

    /// Replaces the whole database, in place, by the copy at `path` (made by
    /// [`SqliteStore::copy_to`]). Other connections to the file see the new content at
    /// their next read.
    pub fn restore_from(&mut self, path: &Path) -> Result<()> {
        let src = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let backup = rusqlite::backup::Backup::new(&src, &mut self.conn)
            .map_err(sql("restore the database"))?;
        backup
            .run_to_completion(1024, std::time::Duration::ZERO, None)
            .map_err(sql("restore the database"))
    }
}

/// A write transaction ([`SqliteStore::tx`]).
///
/// Every write transaction takes the write lock when it begins (`BEGIN IMMEDIATE`), not
/// at its first write: a transaction that read first and then found another connection
/// writing would fail at once with "database is locked" (SQLite cannot wait there without
/// risking a deadlock), whereas one that waits for the lock at BEGIN waits up to the
/// busy timeout.
pub(super) enum Tx<'c> {
    /// A transaction of its own.
    Outer(Transaction<'c>),
    /// A savepoint inside the open batch.
    Nested(Nested<'c>),
}

/// A savepoint inside the open batch, through cached statements (rusqlite's own
/// `Savepoint` parses its SAVEPOINT and RELEASE anew each time: a tenth of the master's
/// CPU in a warm boot of thousands of cards). Dropped without [`Nested::commit`], it rolls
/// back to where it began and is released, so the batch goes on without its writes.
pub(super) struct Nested<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Nested<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.exec("SAVEPOINT op", [])?;
        Ok(Nested { conn, open: true })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.open = false;
        self.conn.exec("RELEASE op", []).map(drop)
    }
}

impl Drop for Nested<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.exec("ROLLBACK TO op", []);
            let _ = self.conn.exec("RELEASE op", []);
        }
    }
}

/// Statements of this store's connection go through its statement cache: each SQL text
/// is parsed once per connection, not once per call (parsing was a third of the master's
/// CPU in a warm boot of thousands of cards).
pub(super) trait Cached {
    /// [`Connection::execute`], cached.
    fn exec<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    /// [`Connection::query_row`], cached.
    fn one<T, P: Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn one<T, P: Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Statements kept parsed: every distinct SQL text of the store fits.
const STATEMENT_CACHE: usize = 128;

impl Tx<'_> {
    /// Commits (or releases the savepoint).
    pub(super) fn commit(self) -> rusqlite::Result<()> {
        match self {
            Tx::Outer(t) => t.commit(),
            Tx::Nested(s) => s.commit(),
        }
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Tx::Outer(t) => t,
            Tx::Nested(s) => s.conn,
        }
    }
}

pub(super) fn event(
    tx: &Connection,
    now: i64,
    node: Option<&MacAddr>,
    kind: &str,
    detail: &str,
) -> Result<()> {
    tx.exec(
        "INSERT INTO events(at, node, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now, node.map(ToString::to_string), kind, detail],
    )
    .map(drop)
    .map_err(sql("record event"))
}

impl Store for SqliteStore {
    fn trust_key(&mut self, key: &TrustedKey) -> Result<bool> {
        self.do_trust_key(key)
    }

    fn untrust_key(&mut self, key_id: &str, now: i64) -> Result<()> {
        self.do_untrust_key(key_id, now)
    }

    fn trusted_keys(&self) -> Result<Vec<TrustedKey>> {
        self.do_trusted_keys()
    }

    fn check_import(&self, manifest: &Manifest, sha: &Digest) -> Result<bool> {
        self.do_check_import(manifest, sha)
    }

    fn import_release(&mut self, rel: &NewRelease<'_>) -> Result<ImportOutcome> {
        self.do_import_release(rel)
    }

    fn releases(&self) -> Result<Vec<ReleaseInfo>> {
        self.do_releases()
    }

    fn release_manifest(&self, id: &ReleaseId) -> Result<Option<Manifest>> {
        self.do_release_manifest(id)
    }

    fn packages(&self) -> Result<Vec<PackageRecord>> {
        self.do_packages()
    }

    fn boot_images(&self) -> Result<Vec<BootRecord>> {
        self.do_boot_images()
    }

    fn delete_releases(&mut self, ids: &[ReleaseId], now: i64) -> Result<()> {
        self.do_delete_releases(ids, now)
    }

    fn referenced_blobs(&self) -> Result<BTreeSet<Digest>> {
        self.do_referenced_blobs()
    }

    fn record_identity(&mut self, id: &NodeIdentity, now: i64) -> Result<bool> {
        self.do_record_identity(id, now)
    }

    fn set_node_class(&mut self, mac: &MacAddr, class: Option<&str>, now: i64) -> Result<()> {
        self.do_set_node_class(mac, class, now)
    }

    fn record_state(
        &mut self,
        mac: &MacAddr,
        state: NodeState,
        reason: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.do_record_state(mac, state, reason, now)
    }

    fn record_inventory(&mut self, mac: &MacAddr, inv: &Inventory, now: i64) -> Result<()> {
        self.do_record_inventory(mac, inv, now)
    }

    fn mark_absent(&mut self, mac: &MacAddr, silent_secs: u64, now: i64) -> Result<()> {
        self.do_mark_absent(mac, silent_secs, now)
    }

    fn mark_present(&mut self, mac: &MacAddr, now: i64) -> Result<()> {
        self.do_mark_present(mac, now)
    }

    fn record_health(&mut self, mac: &MacAddr, health: &NodeHealth, now: i64) -> Result<()> {
        self.do_record_health(mac, health, now)
    }

    fn set_test_mode(&mut self, mac: &MacAddr, test: Option<&TestMode>, now: i64) -> Result<()> {
        self.do_set_test_mode(mac, test, now)
    }

    fn mark_prepare(&mut self, mac: Option<&MacAddr>, now: i64) -> Result<Vec<MacAddr>> {
        self.do_mark_prepare(mac, now)
    }

    fn prepare_pending(&self, mac: &MacAddr) -> Result<bool> {
        self.do_prepare_pending(mac)
    }

    fn record_prepared(&mut self, mac: &MacAddr, now: i64) -> Result<bool> {
        self.do_record_prepared(mac, now)
    }

    fn node(&self, mac: &MacAddr) -> Result<Option<NodeRecord>> {
        self.do_node(mac)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.do_nodes()
    }

    fn set_assignment(&mut self, a: &Assignment, kind: &str, now: i64) -> Result<()> {
        self.do_set_assignment(a, kind, now)
    }

    fn clear_assignment(&mut self, target: &Target, now: i64) -> Result<()> {
        self.do_clear_assignment(target, now)
    }

    fn assignments(&self) -> Result<Vec<Assignment>> {
        self.do_assignments()
    }

    fn events(&self, node: Option<&MacAddr>, limit: u32) -> Result<Vec<Event>> {
        self.do_events(node, limit)
    }

    fn events_after(&self, node: Option<&MacAddr>, after: i64, limit: u32) -> Result<Vec<Event>> {
        self.do_events_after(node, after, limit)
    }

    fn record_event(
        &mut self,
        node: Option<&MacAddr>,
        kind: &str,
        detail: &str,
        now: i64,
    ) -> Result<()> {
        let tx = self.tx()?;
        event(&tx, now, node, kind, detail)?;
        tx.commit().map_err(sql("commit"))
    }

    fn begin_batch(&mut self) -> Result<()> {
        if self.batch == Batch::Off {
            self.batch = Batch::Pending;
        }
        Ok(())
    }

    fn end_batch(&mut self) -> Result<()> {
        let open = self.batch == Batch::Open;
        self.batch = Batch::Off;
        if !open {
            return Ok(());
        }
        if let Err(source) = self.conn.exec("COMMIT", []) {
            // Leave no transaction open behind a failed commit: its writes are lost.
            let _ = self.conn.exec("ROLLBACK", []);
            return Err(StoreError::Sql {
                op: "commit batch",
                source,
            });
        }
        Ok(())
    }

    fn dump(&self) -> Result<String> {
        let mut out = String::new();
        let tables: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .map_err(sql("dump"))?;
            stmt.query_map([], |r| r.get(0))
                .map_err(sql("dump"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(sql("dump"))?
        };
        for t in tables {
            let _ = writeln!(out, "## {t}");
            let mut stmt = self
                .conn
                .prepare(&format!("SELECT * FROM \"{t}\""))
                .map_err(sql("dump"))?;
            let ncol = stmt.column_count();
            let mut rows: Vec<String> = stmt
                .query_map([], |r| {
                    let mut line = String::new();
                    for i in 0..ncol {
                        let v = match r.get_ref(i)? {
                            ValueRef::Null => "NULL".to_owned(),
                            ValueRef::Integer(n) => n.to_string(),
                            ValueRef::Real(f) => f.to_string(),
                            ValueRef::Text(s) => format!("{:?}", String::from_utf8_lossy(s)),
                            ValueRef::Blob(b) => hex::encode(b),
                        };
                        line.push_str(&v);
                        line.push('|');
                    }
                    Ok(line)
                })
                .map_err(sql("dump"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(sql("dump"))?;
            rows.sort();
            for r in rows {
                out.push_str(&r);
                out.push('\n');
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    #[test]
    fn a_schema_1_database_gains_the_ram_state_and_keeps_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.db");
        {
            // A database as schema version 1 made it: no 'ram' in the state CHECK.
            let old = SCHEMA.replace(", 'test', 'ram')", ", 'test')");
            assert_ne!(old, SCHEMA);
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "foreign_keys", true).unwrap();
            c.execute_batch(&old).unwrap();
            c.execute_batch(
                "INSERT INTO meta VALUES ('schema_version', '1');
                 INSERT INTO nodes (mac, card_type, arch, shelf, slot, hw_rev, features,
                   present, state, registered_at)
                   VALUES ('02:00:00:00:00:01', 'lc100', 'x86_64', 1, 1, 'A', '[]', 1,
                           'ready', 5);
                 INSERT INTO node_health VALUES ('02:00:00:00:00:01', 'healthy', NULL, NULL,
                   0, '');",
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let refused = c.execute(
                "UPDATE nodes SET state = 'ram' WHERE mac = '02:00:00:00:00:01'",
                [],
            );
            assert!(refused.is_err(), "the old CHECK refuses 'ram'");
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let n = s.node(&mac).unwrap().expect("the node survived");
        assert_eq!(n.state, NodeState::Ready);
        assert!(n.health.is_some(), "the cascading table kept its row");
        s.record_state(&mac, NodeState::Ram, None, 7).unwrap();
        assert_eq!(s.node(&mac).unwrap().unwrap().state, NodeState::Ram);
        let v: String = s
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, "2");
        drop(s);
        // Opening again is a no-op.
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.node(&mac).unwrap().unwrap().state, NodeState::Ram);
    }
}
