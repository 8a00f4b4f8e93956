//! Package-database operations of the SQLite store: trust, import, listings, gc.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::upsert_assignment;
use super::{Cached as _, SqliteStore, event, from_json, sql, to_json};
use crate::image::manifest::{BlobRef, Manifest, ReleaseId};
use crate::store::{
    BootRecord, ImportOutcome, NewRelease, PackageRecord, ReleaseInfo, Result, StoreError, Target,
    TrustedKey,
};
use shelfboot_proto::id::{Arch, Digest};

/// One artifact of a manifest, flattened to its table key and content.
struct ArtifactRow {
    kind: &'static str,
    name: String,
    version: String,
    arch: Arch,
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
        arch: b.arch,
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
        arch: p.arch,
        card_type: String::new(),
        content: to_json(p),
        blobs: vec![("payload", p.payload)],
        what: format!("package {} {} ({})", p.name, p.version, p.arch),
    });
    boots.chain(pkgs).collect()
}

/// Checks for clashes; Ok(true) if this exact release is already stored.
fn check_clashes(c: &Connection, m: &Manifest, sha: &Digest) -> Result<bool> {
    let existing: Option<String> = c
        .one(
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
                params![
                    row.kind,
                    row.name,
                    row.version,
                    row.arch.as_str(),
                    row.card_type
                ],
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

impl SqliteStore {
    pub(super) fn do_trust_key(&mut self, key: &TrustedKey) -> Result<bool> {
        let tx = self.tx()?;
        let n = tx
            .exec(
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

    pub(super) fn do_untrust_key(&mut self, key_id: &str, now: i64) -> Result<()> {
        let tx = self.tx()?;
        let n = tx
            .exec(
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

    pub(super) fn do_trusted_keys(&self) -> Result<Vec<TrustedKey>> {
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

    pub(super) fn do_check_import(&self, manifest: &Manifest, sha: &Digest) -> Result<bool> {
        check_clashes(&self.conn, manifest, sha)
    }

    pub(super) fn do_import_release(&mut self, rel: &NewRelease<'_>) -> Result<ImportOutcome> {
        let m = rel.manifest;
        let tx = self.tx()?;
        if check_clashes(&tx, m, &rel.manifest_sha256)? {
            return Ok(ImportOutcome::AlreadyPresent);
        }
        tx.exec(
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
            tx.exec(
                "INSERT OR IGNORE INTO blobs(sha256, size) VALUES (?1, ?2)",
                params![b.sha256.to_string(), b.size],
            )
            .map_err(sql("insert blob"))?;
        }
        for row in artifact_rows(m) {
            tx.exec(
                "INSERT OR IGNORE INTO artifacts(kind, name, version, arch, card_type, content)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.kind,
                    row.name,
                    row.version,
                    row.arch.as_str(),
                    row.card_type,
                    row.content
                ],
            )
            .map_err(sql("insert artifact"))?;
            let aid: i64 = tx
                .one(
                    "SELECT id FROM artifacts WHERE kind = ?1 AND name = ?2 AND version = ?3
                       AND arch = ?4 AND card_type = ?5",
                    params![
                        row.kind,
                        row.name,
                        row.version,
                        row.arch.as_str(),
                        row.card_type
                    ],
                    |r| r.get(0),
                )
                .map_err(sql("look up artifact"))?;
            for (role, blob) in &row.blobs {
                tx.exec(
                    "INSERT OR IGNORE INTO artifact_blobs(artifact_id, role, sha256)
                     VALUES (?1, ?2, ?3)",
                    params![aid, role, blob.sha256.to_string()],
                )
                .map_err(sql("insert artifact blob"))?;
            }
            tx.exec(
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

    pub(super) fn do_releases(&self) -> Result<Vec<ReleaseInfo>> {
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
                let manifest_sha256 = sha.parse::<Digest>().map_err(|e| StoreError::Decode {
                    what: format!("manifest sha256 of release {}", m.release),
                    source: serde::de::Error::custom(e),
                })?;
                Ok(ReleaseInfo {
                    manifest_sha256,
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

    pub(super) fn do_release_manifest(&self, id: &ReleaseId) -> Result<Option<Manifest>> {
        let json: Option<String> = self
            .conn
            .one(
                "SELECT manifest FROM releases WHERE name = ?1 AND version = ?2",
                params![id.name, id.version.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("load release"))?;
        json.map(|j| from_json(&format!("manifest of {id}"), &j))
            .transpose()
    }

    pub(super) fn do_packages(&self) -> Result<Vec<PackageRecord>> {
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

    pub(super) fn do_boot_images(&self) -> Result<Vec<BootRecord>> {
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

    pub(super) fn do_delete_releases(&mut self, ids: &[ReleaseId], now: i64) -> Result<()> {
        let pinned = pinned_packages(&self.conn)?;
        let tx = self.tx()?;
        for id in ids {
            let n = tx
                .exec(
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
            tx.exec("DELETE FROM artifacts WHERE id = ?1", params![aid])
                .map_err(sql("delete artifact"))?;
            event(
                &tx,
                now,
                None,
                "gc",
                &format!("deleted {kind} {name} {version}"),
            )?;
        }
        tx.exec(
            "DELETE FROM blobs WHERE sha256 NOT IN (SELECT sha256 FROM artifact_blobs)",
            [],
        )
        .map_err(sql("delete unreferenced blobs"))?;
        tx.commit().map_err(sql("commit gc"))
    }

    pub(super) fn do_referenced_blobs(&self) -> Result<BTreeSet<Digest>> {
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
                s.parse::<Digest>().map_err(|e| StoreError::Decode {
                    what: "blob digest".into(),
                    source: serde::de::Error::custom(e),
                })
            })
            .collect()
    }

    /// Every blob an artifact uses, with its size (a cluster member fetches those it
    /// lacks).
    pub fn referenced_blob_sizes(&self) -> Result<Vec<(Digest, u64)>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT DISTINCT b.sha256, b.size FROM artifact_blobs ab JOIN blobs b ON b.sha256 = ab.sha256 ORDER BY b.sha256",
            )
            .map_err(sql("list referenced blobs"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(sql("list referenced blobs"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql("list referenced blobs"))?;
        rows.into_iter()
            .map(|(s, size)| {
                let sha = s.parse::<Digest>().map_err(|e| StoreError::Decode {
                    what: "blob digest".into(),
                    source: serde::de::Error::custom(e),
                })?;
                Ok((sha, u64::try_from(size).unwrap_or(0)))
            })
            .collect()
    }
}
