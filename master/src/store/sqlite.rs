//! The embedded store: one SQLite file (`<state>/master.db`, WAL, foreign keys on).
//!
//! Every mutating operation is one transaction and records its event in the same
//! transaction, so the history never disagrees with the state. Schema: see
//! `schema.sql` next to this file and docs/master.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    Assignment, BootRecord, Event, ImportOutcome, Inventory, NewRelease, NodeIdentity, NodeRecord,
    NodeState, PackageRecord, ReleaseInfo, Result, Store, StoreError, Target, TestMode, TrustedKey,
};
use crate::image::manifest::{BlobRef, HexDigest, Manifest, ReleaseId};
use crate::policy::Mac;

/// Schema version stored in `meta`.
pub const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = include_str!("schema.sql");

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { op, source }
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing our own plain data types to a String cannot fail (no maps with
    // non-string keys, no I/O); fall back to "null" rather than panic.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

fn from_json<T: DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|source| StoreError::Decode {
        what: what.to_owned(),
        source,
    })
}

/// SQLite implementation of [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
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
        conn.execute_batch(SCHEMA).map_err(sql("create schema"))?;
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION.to_string()],
        )
        .map_err(sql("write schema version"))?;
        Ok(Self { conn })
    }

    fn tx(&mut self) -> Result<Transaction<'_>> {
        self.conn.transaction().map_err(sql("begin transaction"))
    }
}

fn event(tx: &Connection, now: i64, node: Option<&Mac>, kind: &str, detail: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO events(at, node, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now, node.map(Mac::as_str), kind, detail],
    )
    .map(drop)
    .map_err(sql("record event"))
}

fn release_row_id(c: &Connection, id: &ReleaseId) -> Result<Option<i64>> {
    c.query_row(
        "SELECT id FROM releases WHERE name = ?1 AND version = ?2",
        params![id.name, id.version.to_string()],
        |r| r.get(0),
    )
    .optional()
    .map_err(sql("look up release"))
}

/// One artifact of a manifest, flattened to its table key and content.
struct ArtifactRow {
    kind: &'static str,
    name: String,
    version: String,
    arch: String,
    card_type: String,
    content: String,
    blobs: Vec<(&'static str, BlobRef)>,
    what: String,
}

fn artifact_rows(m: &Manifest) -> Vec<ArtifactRow> {
    let boots = m.boot.iter().map(|b| ArtifactRow {
        kind: "boot",
        name: b.name.clone(),
        version: b.version.to_string(),
        arch: b.arch.clone(),
        card_type: b.card_type.clone(),
        content: to_json(b),
        blobs: vec![("image", b.image)],
        what: format!(
            "boot image {} {} for {}/{}",
            b.name, b.version, b.card_type, b.arch
        ),
    });
    let pkgs = m.packages.iter().map(|p| ArtifactRow {
        kind: "package",
        name: p.name.clone(),
        version: p.version.to_string(),
        arch: p.arch.clone(),
        card_type: String::new(),
        content: to_json(p),
        blobs: vec![("payload", p.payload)],
        what: format!("package {} {} ({})", p.name, p.version, p.arch),
    });
    boots.chain(pkgs).collect()
}

/// Checks for clashes; Ok(true) if this exact release is already stored.
fn check_clashes(c: &Connection, m: &Manifest, sha: &HexDigest) -> Result<bool> {
    let existing: Option<String> = c
        .query_row(
            "SELECT manifest_sha256 FROM releases WHERE name = ?1 AND version = ?2",
            params![m.release.name, m.release.version.to_string()],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("look up release"))?;
    match existing {
        Some(s) if s == sha.to_string() => return Ok(true),
        Some(_) => return Err(StoreError::DuplicateRelease(m.release.clone())),
        None => {}
    }
    let mut stmt = c
        .prepare_cached(
            "SELECT a.content, (SELECT r.name || '@' || r.version FROM release_artifacts ra
               JOIN releases r ON r.id = ra.release_id WHERE ra.artifact_id = a.id
               ORDER BY r.seq LIMIT 1)
             FROM artifacts a WHERE kind = ?1 AND name = ?2 AND version = ?3 AND arch = ?4
               AND card_type = ?5",
        )
        .map_err(sql("prepare artifact lookup"))?;
    for row in artifact_rows(m) {
        let found: Option<(String, Option<String>)> = stmt
            .query_row(
                params![row.kind, row.name, row.version, row.arch, row.card_type],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("look up artifact"))?;
        if let Some((content, rel)) = found
            && content != row.content
        {
            return Err(StoreError::DuplicateVersion {
                what: row.what,
                existing_release: rel.unwrap_or_else(|| "a pinned build".to_owned()),
            });
        }
    }
    Ok(false)
}

const NODE_COLS: &str = "mac, card_type, arch, hw_rev, features, class, state, state_reason, \
     inventory, test_mode, shelf, slot, present, last_seen, registered_at";

/// A `nodes` row as read, before decoding.
struct NodeRow {
    text: [Option<String>; 10],
    nums: [i64; 3],
    last_seen: Option<i64>,
    registered: i64,
}

fn node_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeRow> {
    let mut text: [Option<String>; 10] = Default::default();
    for (i, slot) in text.iter_mut().enumerate() {
        *slot = r.get(i)?;
    }
    Ok(NodeRow {
        text,
        nums: [r.get(10)?, r.get(11)?, r.get(12)?],
        last_seen: r.get(13)?,
        registered: r.get(14)?,
    })
}

fn decode_node(row: NodeRow) -> Result<NodeRecord> {
    let [
        mac,
        card_type,
        arch,
        hw_rev,
        features,
        class,
        state,
        reason,
        inventory,
        test_mode,
    ] = row.text;
    let (nums, last_seen) = (row.nums, row.last_seen);
    let mac_s = mac.unwrap_or_default();
    let mac: Mac = mac_s.parse().map_err(|_| StoreError::Decode {
        what: format!("node MAC '{mac_s}'"),
        source: serde::de::Error::custom("bad MAC"),
    })?;
    let state_s = state.unwrap_or_default();
    let state: NodeState = state_s.parse().map_err(|e: String| StoreError::Decode {
        what: format!("state of node {mac}"),
        source: serde::de::Error::custom(e),
    })?;
    let u32_of = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(NodeRecord {
        identity: NodeIdentity {
            mac: mac.clone(),
            card_type: card_type.unwrap_or_default(),
            arch: arch.unwrap_or_default(),
            shelf: u32_of(nums[0]),
            slot: u32_of(nums[1]),
            hw_rev: hw_rev.unwrap_or_default(),
            features: from_json(
                &format!("features of node {mac}"),
                &features.unwrap_or_else(|| "[]".into()),
            )?,
        },
        class,
        present: nums[2] != 0,
        last_seen,
        state,
        state_reason: reason,
        inventory: inventory
            .map(|s| from_json(&format!("inventory of node {mac}"), &s))
            .transpose()?,
        test_mode: test_mode
            .map(|s| from_json(&format!("test mode of node {mac}"), &s))
            .transpose()?,
        registered_at: row.registered,
    })
}

fn require_node(c: &Connection, mac: &Mac) -> Result<()> {
    let n: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM nodes WHERE mac = ?1",
            params![mac.as_str()],
            |r| r.get(0),
        )
        .map_err(sql("look up node"))?;
    if n == 0 {
        return Err(StoreError::UnknownNode(mac.clone()));
    }
    Ok(())
}

impl Store for SqliteStore {
    fn trust_key(&mut self, key: &TrustedKey) -> Result<bool> {
        let tx = self.tx()?;
        let n = tx
            .execute(
                "INSERT OR IGNORE INTO trusted_keys(key_id, public_key, comment, added_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![key.key_id, key.public_key, key.comment, key.added_at],
            )
            .map_err(sql("add trusted key"))?;
        if n > 0 {
            let detail = format!("trusted vendor key {} ({})", key.key_id, key.comment);
            event(&tx, key.added_at, None, "trust", &detail)?;
        }
        tx.commit().map_err(sql("commit"))?;
        Ok(n > 0)
    }

    fn untrust_key(&mut self, key_id: &str, now: i64) -> Result<()> {
        let tx = self.tx()?;
        let n = tx
            .execute(
                "DELETE FROM trusted_keys WHERE key_id = ?1",
                params![key_id],
            )
            .map_err(sql("remove trusted key"))?;
        if n == 0 {
            return Err(StoreError::UnknownKey(key_id.to_owned()));
        }
        event(&tx, now, None, "untrust", &format!("removed key {key_id}"))?;
        tx.commit().map_err(sql("commit"))
    }

    fn trusted_keys(&self) -> Result<Vec<TrustedKey>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key_id, public_key, comment, added_at FROM trusted_keys ORDER BY key_id",
            )
            .map_err(sql("list keys"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(TrustedKey {
                    key_id: r.get(0)?,
                    public_key: r.get(1)?,
                    comment: r.get(2)?,
                    added_at: r.get(3)?,
                })
            })
            .map_err(sql("list keys"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql("list keys"))
    }

    fn check_import(&self, manifest: &Manifest, sha: &HexDigest) -> Result<bool> {
        check_clashes(&self.conn, manifest, sha)
    }

    fn import_release(&mut self, rel: &NewRelease<'_>) -> Result<ImportOutcome> {
        let m = rel.manifest;
        let tx = self.tx()?;
        if check_clashes(&tx, m, &rel.manifest_sha256)? {
            return Ok(ImportOutcome::AlreadyPresent);
        }
        tx.execute(
            "INSERT INTO releases(name, version, manifest_sha256, signer, imported_at, seq, manifest)
             VALUES (?1, ?2, ?3, ?4, ?5, (SELECT COALESCE(MAX(seq), 0) + 1 FROM releases), ?6)",
            params![
                m.release.name,
                m.release.version.to_string(),
                rel.manifest_sha256.to_string(),
                rel.signer_key_id,
                rel.now,
                to_json(m)
            ],
        )
        .map_err(sql("insert release"))?;
        let release_id = tx.last_insert_rowid();
        for b in &m.blobs {
            tx.execute(
                "INSERT OR IGNORE INTO blobs(sha256, size) VALUES (?1, ?2)",
                params![b.sha256.to_string(), b.size],
            )
            .map_err(sql("insert blob"))?;
        }
        for row in artifact_rows(m) {
            tx.execute(
                "INSERT OR IGNORE INTO artifacts(kind, name, version, arch, card_type, content)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.kind,
                    row.name,
                    row.version,
                    row.arch,
                    row.card_type,
                    row.content
                ],
            )
            .map_err(sql("insert artifact"))?;
            let aid: i64 = tx
                .query_row(
                    "SELECT id FROM artifacts WHERE kind = ?1 AND name = ?2 AND version = ?3
                       AND arch = ?4 AND card_type = ?5",
                    params![row.kind, row.name, row.version, row.arch, row.card_type],
                    |r| r.get(0),
                )
                .map_err(sql("look up artifact"))?;
            for (role, blob) in &row.blobs {
                tx.execute(
                    "INSERT OR IGNORE INTO artifact_blobs(artifact_id, role, sha256)
                     VALUES (?1, ?2, ?3)",
                    params![aid, role, blob.sha256.to_string()],
                )
                .map_err(sql("insert artifact blob"))?;
            }
            tx.execute(
                "INSERT OR IGNORE INTO release_artifacts(release_id, artifact_id) VALUES (?1, ?2)",
                params![release_id, aid],
            )
            .map_err(sql("link release artifact"))?;
        }
        let detail = format!(
            "imported release {} signed by {} ({} boot images, {} packages, {} bytes)",
            m.release,
            rel.signer_key_id,
            m.boot.len(),
            m.packages.len(),
            m.blob_bytes()
        );
        event(&tx, rel.now, None, "import", &detail)?;
        if rel.activate {
            upsert_assignment(
                &tx,
                &Target::Default,
                Some(release_id),
                &BTreeMap::new(),
                rel.now,
            )?;
            let detail = format!("default release is now {}", m.release);
            event(&tx, rel.now, None, "assign", &detail)?;
        }
        tx.commit().map_err(sql("commit import"))?;
        Ok(ImportOutcome::Imported)
    }

    fn releases(&self) -> Result<Vec<ReleaseInfo>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT manifest_sha256, signer, imported_at, manifest FROM releases ORDER BY seq",
            )
            .map_err(sql("list releases"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(sql("list releases"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql("list releases"))?;
        rows.into_iter()
            .map(|(sha, signer, at, json)| {
                let m: Manifest = from_json("release manifest", &json)?;
                Ok(ReleaseInfo {
                    manifest_sha256: sha,
                    signer,
                    imported_at: at,
                    boot_images: u32::try_from(m.boot.len()).unwrap_or(u32::MAX),
                    packages: u32::try_from(m.packages.len()).unwrap_or(u32::MAX),
                    classes: m.classes.iter().map(|c| c.name.clone()).collect(),
                    release: m.release,
                })
            })
            .collect()
    }

    fn release_manifest(&self, id: &ReleaseId) -> Result<Option<Manifest>> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT manifest FROM releases WHERE name = ?1 AND version = ?2",
                params![id.name, id.version.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("load release"))?;
        json.map(|j| from_json(&format!("manifest of {id}"), &j))
            .transpose()
    }

    fn packages(&self) -> Result<Vec<PackageRecord>> {
        let mut out: Vec<PackageRecord> = artifacts_of(&self.conn, "package")?
            .into_iter()
            .map(|(content, releases)| {
                let p: crate::image::manifest::Package = from_json("package", &content)?;
                Ok(PackageRecord {
                    name: p.name,
                    version: p.version,
                    arch: p.arch,
                    provides: p.provides,
                    depends: p.depends,
                    payload: p.payload,
                    releases,
                })
            })
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| (&a.name, &a.version, &a.arch).cmp(&(&b.name, &b.version, &b.arch)));
        Ok(out)
    }

    fn boot_images(&self) -> Result<Vec<BootRecord>> {
        let mut out: Vec<BootRecord> = artifacts_of(&self.conn, "boot")?
            .into_iter()
            .map(|(content, releases)| {
                let b: crate::image::manifest::BootImage = from_json("boot image", &content)?;
                Ok(BootRecord {
                    name: b.name,
                    version: b.version,
                    card_type: b.card_type,
                    arch: b.arch,
                    image: b.image,
                    cmdline: b.cmdline,
                    releases,
                })
            })
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| {
            (&a.name, &a.version, &a.card_type, &a.arch).cmp(&(
                &b.name,
                &b.version,
                &b.card_type,
                &b.arch,
            ))
        });
        Ok(out)
    }

    fn delete_releases(&mut self, ids: &[ReleaseId], now: i64) -> Result<()> {
        let pinned = pinned_packages(&self.conn)?;
        let tx = self.tx()?;
        for id in ids {
            let n = tx
                .execute(
                    "DELETE FROM releases WHERE name = ?1 AND version = ?2",
                    params![id.name, id.version.to_string()],
                )
                .map_err(sql("delete release"))?;
            if n == 0 {
                return Err(StoreError::UnknownRelease(id.to_string()));
            }
            event(&tx, now, None, "gc", &format!("deleted release {id}"))?;
        }
        // Artifacts that no release holds any more, unless pinned by name and version.
        let orphans: Vec<(i64, String, String, String)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT id, kind, name, version FROM artifacts WHERE id NOT IN
                     (SELECT artifact_id FROM release_artifacts) ORDER BY id",
                )
                .map_err(sql("find orphan artifacts"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(sql("find orphan artifacts"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(sql("find orphan artifacts"))?
        };
        for (aid, kind, name, version) in orphans {
            if kind == "package" && pinned.contains(&(name.clone(), version.clone())) {
                continue;
            }
            tx.execute("DELETE FROM artifacts WHERE id = ?1", params![aid])
                .map_err(sql("delete artifact"))?;
            event(
                &tx,
                now,
                None,
                "gc",
                &format!("deleted {kind} {name} {version}"),
            )?;
        }
        tx.execute(
            "DELETE FROM blobs WHERE sha256 NOT IN (SELECT sha256 FROM artifact_blobs)",
            [],
        )
        .map_err(sql("delete unreferenced blobs"))?;
        tx.commit().map_err(sql("commit gc"))
    }

    fn referenced_blobs(&self) -> Result<BTreeSet<HexDigest>> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT sha256 FROM artifact_blobs")
            .map_err(sql("list referenced blobs"))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sql("list referenced blobs"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql("list referenced blobs"))?;
        rows.into_iter()
            .map(|s| {
                HexDigest::try_from(s).map_err(|e| StoreError::Decode {
                    what: "blob digest".into(),
                    source: serde::de::Error::custom(e),
                })
            })
            .collect()
    }

    fn record_identity(&mut self, id: &NodeIdentity, now: i64) -> Result<bool> {
        let tx = self.tx()?;
        let existing: Option<(String, String, i64, i64)> = tx
            .query_row(
                "SELECT card_type, arch, shelf, slot FROM nodes WHERE mac = ?1",
                params![id.mac.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(sql("look up node"))?;
        let features = to_json(&id.features);
        let new = existing.is_none();
        if new {
            tx.execute(
                "INSERT INTO nodes(mac, card_type, arch, shelf, slot, hw_rev, features, present,
                   last_seen, state, registered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, 'pristine', ?8)",
                params![
                    id.mac.as_str(),
                    id.card_type,
                    id.arch,
                    id.shelf,
                    id.slot,
                    id.hw_rev,
                    features,
                    now
                ],
            )
            .map_err(sql("insert node"))?;
            let detail = format!(
                "registered {} card ({}), shelf {} slot {}",
                id.card_type, id.arch, id.shelf, id.slot
            );
            event(&tx, now, Some(&id.mac), "identity", &detail)?;
        } else {
            tx.execute(
                "UPDATE nodes SET card_type = ?2, arch = ?3, shelf = ?4, slot = ?5, hw_rev = ?6,
                   features = ?7, present = 1, last_seen = ?8 WHERE mac = ?1",
                params![
                    id.mac.as_str(),
                    id.card_type,
                    id.arch,
                    id.shelf,
                    id.slot,
                    id.hw_rev,
                    features,
                    now
                ],
            )
            .map_err(sql("update node"))?;
            if let Some((ct, arch, shelf, slot)) = existing {
                let moved = (ct.as_str(), arch.as_str(), shelf, slot)
                    != (
                        id.card_type.as_str(),
                        id.arch.as_str(),
                        i64::from(id.shelf),
                        i64::from(id.slot),
                    );
                if moved {
                    let detail = format!(
                        "identity changed: {ct} ({arch}) shelf {shelf} slot {slot} -> {} ({}) shelf {} slot {}",
                        id.card_type, id.arch, id.shelf, id.slot
                    );
                    event(&tx, now, Some(&id.mac), "identity", &detail)?;
                }
            }
        }
        tx.commit().map_err(sql("commit node"))?;
        Ok(new)
    }

    fn set_node_class(&mut self, mac: &Mac, class: Option<&str>, now: i64) -> Result<()> {
        let tx = self.tx()?;
        require_node(&tx, mac)?;
        tx.execute(
            "UPDATE nodes SET class = ?2 WHERE mac = ?1",
            params![mac.as_str(), class],
        )
        .map_err(sql("set node class"))?;
        let detail = match class {
            Some(c) => format!("class forced to {c}"),
            None => "class chosen by match rules".to_owned(),
        };
        event(&tx, now, Some(mac), "class", &detail)?;
        tx.commit().map_err(sql("commit"))
    }

    fn record_state(
        &mut self,
        mac: &Mac,
        state: NodeState,
        reason: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let tx = self.tx()?;
        require_node(&tx, mac)?;
        tx.execute(
            "UPDATE nodes SET state = ?2, state_reason = ?3, last_seen = ?4, present = 1
             WHERE mac = ?1",
            params![mac.as_str(), state.as_str(), reason, now],
        )
        .map_err(sql("set node state"))?;
        let detail = match reason {
            Some(r) => format!("{state}: {r}"),
            None => state.to_string(),
        };
        let kind = if state == NodeState::Failed {
            "error"
        } else {
            "state"
        };
        event(&tx, now, Some(mac), kind, &detail)?;
        tx.commit().map_err(sql("commit"))
    }

    fn record_inventory(&mut self, mac: &Mac, inv: &Inventory, now: i64) -> Result<()> {
        let tx = self.tx()?;
        require_node(&tx, mac)?;
        tx.execute(
            "UPDATE nodes SET inventory = ?2, last_seen = ?3 WHERE mac = ?1",
            params![mac.as_str(), to_json(inv), now],
        )
        .map_err(sql("set inventory"))?;
        let detail = format!("inventory of {} artifacts", inv.items.len());
        event(&tx, now, Some(mac), "inventory", &detail)?;
        tx.commit().map_err(sql("commit"))
    }

    fn mark_absent(&mut self, mac: &Mac, now: i64) -> Result<()> {
        let tx = self.tx()?;
        require_node(&tx, mac)?;
        tx.execute(
            "UPDATE nodes SET present = 0 WHERE mac = ?1",
            params![mac.as_str()],
        )
        .map_err(sql("mark absent"))?;
        event(&tx, now, Some(mac), "absent", "not heard from")?;
        tx.commit().map_err(sql("commit"))
    }

    fn set_test_mode(&mut self, mac: &Mac, test: Option<&TestMode>, now: i64) -> Result<()> {
        let tx = self.tx()?;
        require_node(&tx, mac)?;
        tx.execute(
            "UPDATE nodes SET test_mode = ?2 WHERE mac = ?1",
            params![mac.as_str(), test.map(to_json)],
        )
        .map_err(sql("set test mode"))?;
        let detail = match test {
            Some(t) => {
                let pkgs: Vec<String> =
                    t.packages.iter().map(|(n, v)| format!("{n}={v}")).collect();
                format!("test mode on: {}", pkgs.join(", "))
            }
            None => "test mode off".to_owned(),
        };
        event(&tx, now, Some(mac), "test-mode", &detail)?;
        tx.commit().map_err(sql("commit"))
    }

    fn node(&self, mac: &Mac) -> Result<Option<NodeRecord>> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {NODE_COLS} FROM nodes WHERE mac = ?1"),
                params![mac.as_str()],
                node_from_row,
            )
            .optional()
            .map_err(sql("load node"))?;
        row.map(decode_node).transpose()
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {NODE_COLS} FROM nodes ORDER BY shelf, slot, mac"
            ))
            .map_err(sql("list nodes"))?;
        let rows = stmt
            .query_map([], node_from_row)
            .map_err(sql("list nodes"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql("list nodes"))?;
        rows.into_iter().map(decode_node).collect()
    }

    fn set_assignment(&mut self, a: &Assignment, kind: &str, now: i64) -> Result<()> {
        let tx = self.tx()?;
        let rid = match &a.release {
            Some(r) => Some(
                release_row_id(&tx, r)?.ok_or_else(|| StoreError::UnknownRelease(r.to_string()))?,
            ),
            None => None,
        };
        if let Target::Node(mac) = &a.target {
            require_node(&tx, mac)?;
        }
        upsert_assignment(&tx, &a.target, rid, &a.pins, now)?;
        let mut detail = format!("{} ->", a.target);
        if let Some(r) = &a.release {
            let _ = write!(detail, " release {r}");
        }
        for (n, v) in &a.pins {
            let _ = write!(detail, " {n}={v}");
        }
        let node = match &a.target {
            Target::Node(m) => Some(m),
            _ => None,
        };
        event(&tx, now, node, kind, &detail)?;
        tx.commit().map_err(sql("commit"))
    }

    fn clear_assignment(&mut self, target: &Target, now: i64) -> Result<()> {
        let tx = self.tx()?;
        let (k, n) = target.key();
        tx.execute(
            "DELETE FROM assignments WHERE target_kind = ?1 AND target = ?2",
            params![k, n],
        )
        .map_err(sql("clear assignment"))?;
        let node = match target {
            Target::Node(m) => Some(m),
            _ => None,
        };
        event(
            &tx,
            now,
            node,
            "assign",
            &format!("{target}: assignment cleared"),
        )?;
        tx.commit().map_err(sql("commit"))
    }

    fn assignments(&self) -> Result<Vec<Assignment>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT a.target_kind, a.target, r.name, r.version, a.pins, a.set_at
                 FROM assignments a LEFT JOIN releases r ON r.id = a.release_id
                 ORDER BY a.target_kind, a.target",
            )
            .map_err(sql("list assignments"))?;
        type Row = (String, String, Option<String>, Option<String>, String, i64);
        let rows: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(sql("list assignments"))?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql("list assignments"))?;
        rows.into_iter()
            .map(|(kind, name, rname, rver, pins, set_at)| {
                let bad = |what: String| StoreError::Decode {
                    what,
                    source: serde::de::Error::custom("invalid value"),
                };
                let target = match kind.as_str() {
                    "default" => Target::Default,
                    "class" => Target::Class(name),
                    _ => Target::Node(name.parse().map_err(|_| bad(format!("target {name}")))?),
                };
                let release = match (rname, rver) {
                    (Some(n), Some(v)) => Some(ReleaseId {
                        version: v.parse().map_err(|_| bad(format!("version {v}")))?,
                        name: n,
                    }),
                    _ => None,
                };
                Ok(Assignment {
                    target,
                    release,
                    pins: from_json("assignment pins", &pins)?,
                    set_at,
                })
            })
            .collect()
    }

    fn events(&self, node: Option<&Mac>, limit: u32) -> Result<Vec<Event>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, at, node, kind, detail FROM (
                   SELECT * FROM events WHERE ?1 IS NULL OR node = ?1 ORDER BY id DESC LIMIT ?2
                 ) ORDER BY id",
            )
            .map_err(sql("list events"))?;
        let rows: Vec<(i64, i64, Option<String>, String, String)> = stmt
            .query_map(params![node.map(Mac::as_str), limit], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(sql("list events"))?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql("list events"))?;
        Ok(rows
            .into_iter()
            .map(|(id, at, node, kind, detail)| Event {
                id,
                at,
                node: node.and_then(|n| n.parse().ok()),
                kind,
                detail,
            })
            .collect())
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

fn upsert_assignment(
    c: &Connection,
    target: &Target,
    release_id: Option<i64>,
    pins: &BTreeMap<String, semver::Version>,
    now: i64,
) -> Result<()> {
    let (k, n) = target.key();
    c.execute(
        "INSERT INTO assignments(target_kind, target, release_id, pins, set_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(target_kind, target) DO UPDATE SET release_id = excluded.release_id,
           pins = excluded.pins, set_at = excluded.set_at",
        params![k, n, release_id, to_json(pins), now],
    )
    .map(drop)
    .map_err(sql("set assignment"))
}

/// (content JSON, releases containing it) for every artifact of a kind.
fn artifacts_of(c: &Connection, kind: &str) -> Result<Vec<(String, Vec<String>)>> {
    let mut stmt = c
        .prepare(
            "SELECT a.content, COALESCE((SELECT group_concat(x, ' ') FROM (
               SELECT r.name || '@' || r.version AS x FROM release_artifacts ra
               JOIN releases r ON r.id = ra.release_id WHERE ra.artifact_id = a.id
               ORDER BY r.seq)), '')
             FROM artifacts a WHERE a.kind = ?1 ORDER BY a.id",
        )
        .map_err(sql("list artifacts"))?;
    let rows = stmt
        .query_map(params![kind], |r| {
            let rel: String = r.get(1)?;
            Ok((
                r.get(0)?,
                rel.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .map_err(sql("list artifacts"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(sql("list artifacts"))
}

/// (name, version) of every package pinned by an assignment or a test mode.
fn pinned_packages(c: &Connection) -> Result<BTreeSet<(String, String)>> {
    let mut out = BTreeSet::new();
    let mut stmt = c
        .prepare("SELECT pins FROM assignments UNION ALL SELECT test_mode FROM nodes WHERE test_mode IS NOT NULL")
        .map_err(sql("list pins"))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(sql("list pins"))?
        .collect::<rusqlite::Result<_>>()
        .map_err(sql("list pins"))?;
    for json in rows {
        let v: serde_json::Value = from_json("pins", &json)?;
        let map = v.get("packages").cloned().unwrap_or(v);
        if let Some(obj) = map.as_object() {
            for (name, ver) in obj {
                if let Some(ver) = ver.as_str() {
                    out.insert((name.clone(), ver.to_owned()));
                }
            }
        }
    }
    Ok(out)
}
