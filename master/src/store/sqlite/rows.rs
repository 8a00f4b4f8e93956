//! Row helpers both halves of the SQLite store use: assignments are written by the node
//! half (`master assign`) and by the package half (the default an import activates); the
//! node half looks up the release an assignment names.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Cached as _, sql, to_json};
use crate::image::manifest::ReleaseId;
use crate::store::{Result, Target};

/// The row id of release `id`, if it is imported.
pub(super) fn release_row_id(c: &Connection, id: &ReleaseId) -> Result<Option<i64>> {
    c.one(
        "SELECT id FROM releases WHERE name = ?1 AND version = ?2",
        params![id.name, id.version.to_string()],
        |r| r.get(0),
    )
    .optional()
    .map_err(sql("look up release"))
}

/// Sets (inserting or replacing) the assignment of `target`.
pub(super) fn upsert_assignment(
    c: &Connection,
    target: &Target,
    release_id: Option<i64>,
    pins: &BTreeMap<String, semver::Version>,
    now: i64,
) -> Result<()> {
    let (k, n) = target.key();
    c.exec(
        "INSERT INTO assignments(target_kind, target, release_id, pins, set_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(target_kind, target) DO UPDATE SET release_id = excluded.release_id,
           pins = excluded.pins, set_at = excluded.set_at",
        params![k, n, release_id, to_json(pins), now],
    )
    .map(drop)
    .map_err(sql("set assignment"))
}
