//! Node-database operations of the SQLite store: cards, assignments, history.

use std::fmt::Write as _;

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{release_row_id, upsert_assignment};
use super::{Cached as _, SqliteStore, event, from_json, sql, to_json};
use crate::image::manifest::ReleaseId;
use crate::store::{
    Assignment, Event, Health, Inventory, NodeHealth, NodeIdentity, NodeRecord, NodeState, Result,
    StoreError, Target, TestMode,
};
use shelfboot_proto::id::{Arch, Digest, MacAddr};

const NODE_COLS: &str = "mac, card_type, arch, hw_rev, features, class, state, state_reason, \
     inventory, test_mode, shelf, slot, present, last_seen, registered_at, \
     health, running, rolled_back_from, dropped, detail";
/// The tables [`NODE_COLS`] are read from: a card and its agent's last report, if any.
const NODE_FROM: &str = "nodes LEFT JOIN node_health USING (mac)";

/// State reason of a card that reported Ready after `master prepare`.
pub const PREPARED: &str = "prepared, holding for warm boot";

/// The state reason (and history entry) of a card that rolled back from set `from` on its
/// own, with its agent's text.
pub fn rollback_reason(from: &Digest, detail: &str) -> String {
    let mut r = format!("rolled back on its own from set {}", from.short());
    if !detail.is_empty() {
        let _ = write!(r, ": {detail}");
    }
    r
}

/// A `nodes` row as read, before decoding.
struct NodeRow {
    text: [Option<String>; 10],
    nums: [i64; 3],
    last_seen: Option<i64>,
    registered: i64,
    /// `node_health`: health, running, rolled_back_from, dropped, detail (all NULL
    /// without a report).
    health: [Option<String>; 3],
    dropped: Option<i64>,
    detail: Option<String>,
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
        health: [r.get(15)?, r.get(16)?, r.get(17)?],
        dropped: r.get(18)?,
        detail: r.get(19)?,
    })
}

/// The agent's last report from the `node_health` columns of a node row.
fn decode_health(
    mac: &MacAddr,
    cols: [Option<String>; 3],
    dropped: Option<i64>,
    detail: Option<String>,
) -> Result<Option<NodeHealth>> {
    let [health, running, rolled_back_from] = cols;
    let Some(health) = health else {
        return Ok(None);
    };
    let bad = |what: String, e: String| StoreError::Decode {
        what,
        source: serde::de::Error::custom(e),
    };
    let digest = |col: &str, v: Option<String>| -> Result<Option<Digest>> {
        v.map(|s| {
            s.parse::<Digest>()
                .map_err(|e| bad(format!("{col} of node {mac}"), e.to_string()))
        })
        .transpose()
    };
    Ok(Some(NodeHealth {
        health: health
            .parse::<Health>()
            .map_err(|e| bad(format!("health of node {mac}"), e))?,
        running: digest("running set", running)?,
        rolled_back_from: digest("rolled-back set", rolled_back_from)?,
        dropped: u64::try_from(dropped.unwrap_or(0)).unwrap_or(0),
        detail: detail.unwrap_or_default(),
    }))
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
    let (health, dropped, detail) = (row.health, row.dropped, row.detail);
    let mac_s = mac.unwrap_or_default();
    let mac: MacAddr = mac_s.parse().map_err(|e| StoreError::Decode {
        what: format!("node MAC '{mac_s}'"),
        source: serde::de::Error::custom(e),
    })?;
    let state_s = state.unwrap_or_default();
    let state: NodeState = state_s.parse().map_err(|e: String| StoreError::Decode {
        what: format!("state of node {mac}"),
        source: serde::de::Error::custom(e),
    })?;
    let arch_s = arch.unwrap_or_default();
    let arch: Arch = arch_s.parse().map_err(|e| StoreError::Decode {
        what: format!("arch '{arch_s}' of node {mac}"),
        source: serde::de::Error::custom(e),
    })?;
    let u32_of = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(NodeRecord {
        identity: NodeIdentity {
            mac,
            card_type: card_type.unwrap_or_default(),
            arch,
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
        health: decode_health(&mac, health, dropped, detail)?,
    })
}

fn require_node(c: &Connection, mac: &MacAddr) -> Result<()> {
    let n: i64 = c
        .one(
            "SELECT COUNT(*) FROM nodes WHERE mac = ?1",
            params![mac.to_string()],
            |r| r.get(0),
        )
        .map_err(sql("look up node"))?;
    if n == 0 {
        return Err(StoreError::UnknownNode(*mac));
    }
    Ok(())
}

impl SqliteStore {
    pub(super) fn do_record_identity(&mut self, id: &NodeIdentity, now: i64) -> Result<bool> {
        let tx = self.tx()?;
        let existing: Option<(String, String, i64, i64)> = tx
            .one(
                "SELECT card_type, arch, shelf, slot FROM nodes WHERE mac = ?1",
                params![id.mac.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(sql("look up node"))?;
        let features = to_json(&id.features);
        let new = existing.is_none();
        if new {
            tx.exec(
                "INSERT INTO nodes(mac, card_type, arch, shelf, slot, hw_rev, features, present,
                   last_seen, state, registered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, 'pristine', ?8)",
                params![
                    id.mac.to_string(),
                    id.card_type,
                    id.arch.as_str(),
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
            // Rewrites the row only if something differs (a warm boot in the same second
            // changes nothing, so no page is written).
            tx.exec(
                "UPDATE nodes SET card_type = ?2, arch = ?3, shelf = ?4, slot = ?5, hw_rev = ?6,
                   features = ?7, present = 1, last_seen = ?8 WHERE mac = ?1
                   AND (card_type IS NOT ?2 OR arch IS NOT ?3 OR shelf IS NOT ?4
                     OR slot IS NOT ?5 OR hw_rev IS NOT ?6 OR features IS NOT ?7
                     OR present IS NOT 1 OR last_seen IS NOT ?8)",
                params![
                    id.mac.to_string(),
                    id.card_type,
                    id.arch.as_str(),
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

    pub(super) fn do_set_node_class(
        &mut self,
        mac: &MacAddr,
        class: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let tx = self.tx()?;
        require_node(&tx, mac)?;
        tx.exec(
            "UPDATE nodes SET class = ?2 WHERE mac = ?1",
            params![mac.to_string(), class],
        )
        .map_err(sql("set node class"))?;
        let detail = match class {
            Some(c) => format!("class forced to {c}"),
            None => "class chosen by match rules".to_owned(),
        };
        event(&tx, now, Some(mac), "class", &detail)?;
        tx.commit().map_err(sql("commit"))
    }

    pub(super) fn do_record_state(
        &mut self,
        mac: &MacAddr,
        state: NodeState,
        reason: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let tx = self.tx()?;
        require_node(&tx, mac)?;
        // A state the card already has (without a failure reason) is not written again:
        // no row change, no event. Failures are always recorded (each is history).
        let changed = tx
            .exec(
                "UPDATE nodes SET state = ?2, state_reason = ?3, last_seen = ?4, present = 1
                 WHERE mac = ?1
                   AND (?3 IS NOT NULL OR state IS NOT ?2 OR state_reason IS NOT NULL
                     OR present IS NOT 1)",
                params![mac.to_string(), state.as_str(), reason, now],
            )
            .map_err(sql("set node state"))?;
        if changed == 0 {
            return Ok(());
        }
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

    pub(super) fn do_record_inventory(
        &mut self,
        mac: &MacAddr,
        inv: &Inventory,
        now: i64,
    ) -> Result<()> {
        let tx = self.tx()?;
        require_node(&tx, mac)?;
        // The same inventory again (every warm boot, every repeated Ready) is not written:
        // no row change, no event.
        let changed = tx
            .exec(
                "UPDATE nodes SET inventory = ?2, last_seen = ?3 WHERE mac = ?1
                   AND inventory IS NOT ?2",
                params![mac.to_string(), to_json(inv), now],
            )
            .map_err(sql("set inventory"))?;
        if changed == 0 {
            return Ok(());
        }
        let detail = format!("inventory of {} artifacts", inv.items.len());
        event(&tx, now, Some(mac), "inventory", &detail)?;
        tx.commit().map_err(sql("commit"))
    }

    pub(super) fn do_mark_absent(
        &mut self,
        mac: &MacAddr,
        silent_secs: u64,
        now: i64,
    ) -> Result<()> {
        let tx = self.tx()?;
        require_node(&tx, mac)?;
        let heard = now.saturating_sub(i64::try_from(silent_secs).unwrap_or(i64::MAX));
        let changed = tx
            .exec(
                "UPDATE nodes SET present = 0, last_seen = ?2 WHERE mac = ?1 AND present IS NOT 0",
                params![mac.to_string(), heard],
            )
            .map_err(sql("mark absent"))?;
        if changed == 0 {
            return Ok(());
        }
        let detail = format!("not heard for {silent_secs} s");
        event(&tx, now, Some(mac), "absent", &detail)?;
        tx.commit().map_err(sql("commit"))
    }

    pub(super) fn do_mark_present(&mut self, mac: &MacAddr, now: i64) -> Result<()> {
        let tx = self.tx()?;
        require_node(&tx, mac)?;
        let changed = tx
            .exec(
                "UPDATE nodes SET present = 1, last_seen = ?2 WHERE mac = ?1 AND present IS NOT 1",
                params![mac.to_string(), now],
            )
            .map_err(sql("mark present"))?;
        if changed == 0 {
            return Ok(());
        }
        event(&tx, now, Some(mac), "present", "present again")?;
        tx.commit().map_err(sql("commit"))
    }

    pub(super) fn do_record_health(
        &mut self,
        mac: &MacAddr,
        h: &NodeHealth,
        now: i64,
    ) -> Result<()> {
        let tx = self.tx()?;
        require_node(&tx, mac)?;
        let key = mac.to_string();
        let before: Option<(String, Option<String>)> = tx
            .one(
                "SELECT health, rolled_back_from FROM node_health WHERE mac = ?1",
                params![key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("look up node health"))?;
        let running = h.running.map(|d| d.to_string());
        let rolled = h.rolled_back_from.map(|d| d.to_string());
        let dropped = i64::try_from(h.dropped).unwrap_or(i64::MAX);
        // The same report again (every few seconds from every card) writes nothing.
        let changed = tx
            .exec(
                "INSERT INTO node_health(mac, health, running, rolled_back_from, dropped, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(mac) DO UPDATE SET health = ?2, running = ?3,
                   rolled_back_from = ?4, dropped = ?5, detail = ?6
                 WHERE health IS NOT ?2 OR running IS NOT ?3 OR rolled_back_from IS NOT ?4
                   OR dropped IS NOT ?5 OR detail IS NOT ?6",
                params![key, h.health.as_str(), running, rolled, dropped, h.detail],
            )
            .map_err(sql("record node health"))?;
        if changed == 0 {
            return Ok(());
        }
        tx.exec(
            "UPDATE nodes SET last_seen = ?2 WHERE mac = ?1",
            params![key, now],
        )
        .map_err(sql("record node health"))?;
        let (old_health, old_rolled) = match before {
            Some((health, rolled)) => (Some(health), rolled),
            None => (None, None),
        };
        // A verdict (healthy, unhealthy) is history; entering `checking` or `none` is
        // what every boot does and only the record says it.
        let verdict = matches!(h.health, Health::Healthy | Health::Unhealthy);
        if verdict && old_health.as_deref() != Some(h.health.as_str()) {
            let mut detail = h.health.to_string();
            match h.running {
                Some(d) => {
                    let _ = write!(detail, " (set {})", d.short());
                }
                None => detail.push_str(" (set from RAM)"),
            }
            if !h.detail.is_empty() {
                let _ = write!(detail, ": {}", h.detail);
            }
            event(&tx, now, Some(mac), "health", &detail)?;
        }
        if let Some(from) = h.rolled_back_from
            && old_rolled != rolled
        {
            let reason = rollback_reason(&from, &h.detail);
            tx.exec(
                "UPDATE nodes SET state_reason = ?2 WHERE mac = ?1",
                params![key, reason],
            )
            .map_err(sql("record rollback"))?;
            event(&tx, now, Some(mac), "rollback", &reason)?;
        }
        tx.commit().map_err(sql("commit"))
    }

    pub(super) fn do_set_test_mode(
        &mut self,
        mac: &MacAddr,
        test: Option<&TestMode>,
        now: i64,
    ) -> Result<()> {
        let tx = self.tx()?;
        require_node(&tx, mac)?;
        tx.exec(
            "UPDATE nodes SET test_mode = ?2 WHERE mac = ?1",
            params![mac.to_string(), test.map(to_json)],
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

    pub(super) fn do_mark_prepare(
        &mut self,
        mac: Option<&MacAddr>,
        now: i64,
    ) -> Result<Vec<MacAddr>> {
        let tx = self.tx()?;
        let macs: Vec<MacAddr> = match mac {
            Some(m) => {
                require_node(&tx, m)?;
                vec![*m]
            }
            None => {
                let mut stmt = tx
                    .prepare("SELECT mac FROM nodes ORDER BY shelf, slot, mac")
                    .map_err(sql("list nodes to prepare"))?;
                let rows = stmt
                    .query_map([], |r| r.get::<_, String>(0))
                    .map_err(sql("list nodes to prepare"))?
                    .collect::<rusqlite::Result<Vec<String>>>()
                    .map_err(sql("list nodes to prepare"))?;
                rows.iter().filter_map(|s| s.parse().ok()).collect()
            }
        };
        for m in &macs {
            tx.exec(
                "INSERT INTO prepare_pending(mac, ordered_at) VALUES (?1, ?2)
                 ON CONFLICT(mac) DO UPDATE SET ordered_at = ?2",
                params![m.to_string(), now],
            )
            .map_err(sql("mark prepare pending"))?;
            event(
                &tx,
                now,
                Some(m),
                "prepare",
                "prepare ordered: burn the set at the next boot, report Ready, hold for the warm boot",
            )?;
        }
        tx.commit().map_err(sql("commit"))?;
        Ok(macs)
    }

    pub(super) fn do_prepare_pending(&self, mac: &MacAddr) -> Result<bool> {
        self.conn
            .one(
                "SELECT 1 FROM prepare_pending WHERE mac = ?1",
                params![mac.to_string()],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(sql("look up prepare mark"))
    }

    pub(super) fn do_record_prepared(&mut self, mac: &MacAddr, now: i64) -> Result<bool> {
        let tx = self.tx()?;
        let cleared = tx
            .exec(
                "DELETE FROM prepare_pending WHERE mac = ?1",
                params![mac.to_string()],
            )
            .map_err(sql("clear prepare mark"))?;
        if cleared == 0 {
            return Ok(false);
        }
        tx.exec(
            "UPDATE nodes SET state = 'ready', state_reason = ?2, last_seen = ?3, present = 1
             WHERE mac = ?1",
            params![mac.to_string(), PREPARED, now],
        )
        .map_err(sql("set node state"))?;
        event(&tx, now, Some(mac), "prepared", PREPARED)?;
        tx.commit().map_err(sql("commit"))?;
        Ok(true)
    }

    pub(super) fn do_node(&self, mac: &MacAddr) -> Result<Option<NodeRecord>> {
        let row = self
            .conn
            .one(
                &format!("SELECT {NODE_COLS} FROM {NODE_FROM} WHERE mac = ?1"),
                params![mac.to_string()],
                node_from_row,
            )
            .optional()
            .map_err(sql("load node"))?;
        row.map(decode_node).transpose()
    }

    pub(super) fn do_nodes(&self) -> Result<Vec<NodeRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {NODE_COLS} FROM {NODE_FROM} ORDER BY shelf, slot, mac"
            ))
            .map_err(sql("list nodes"))?;
        let rows = stmt
            .query_map([], node_from_row)
            .map_err(sql("list nodes"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql("list nodes"))?;
        rows.into_iter().map(decode_node).collect()
    }

    pub(super) fn do_set_assignment(&mut self, a: &Assignment, kind: &str, now: i64) -> Result<()> {
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

    pub(super) fn do_clear_assignment(&mut self, target: &Target, now: i64) -> Result<()> {
        let tx = self.tx()?;
        let (k, n) = target.key();
        tx.exec(
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

    pub(super) fn do_assignments(&self) -> Result<Vec<Assignment>> {
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

    pub(super) fn do_events(&self, node: Option<&MacAddr>, limit: u32) -> Result<Vec<Event>> {
        self.query_events(
            "SELECT id, at, node, kind, detail FROM (
               SELECT * FROM events WHERE ?1 IS NULL OR node = ?1 ORDER BY id DESC LIMIT ?2
             ) ORDER BY id",
            params![node.map(ToString::to_string), limit],
        )
    }

    pub(super) fn do_events_after(
        &self,
        node: Option<&MacAddr>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        self.query_events(
            "SELECT id, at, node, kind, detail FROM events
             WHERE (?1 IS NULL OR node = ?1) AND id > ?3 ORDER BY id LIMIT ?2",
            params![node.map(ToString::to_string), limit, after],
        )
    }

    fn query_events(&self, query: &str, args: impl rusqlite::Params) -> Result<Vec<Event>> {
        let mut stmt = self.conn.prepare(query).map_err(sql("list events"))?;
        let rows: Vec<(i64, i64, Option<String>, String, String)> = stmt
            .query_map(args, |r| {
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
}

#[cfg(test)]
mod tests {
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Inventory, NodeIdentity, NodeState, Store, StoreError};

    /// A write that reads first (set test mode looks the node up, then updates it) while
    /// another connection holds the write lock waits for it instead of failing with
    /// "database is locked": write transactions take the lock when they begin.
    #[test]
    fn a_write_waits_for_another_connections_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.db");
        let mut owner = SqliteStore::open(&path).unwrap();
        let id = NodeIdentity {
            mac: "02:00:00:00:00:01".parse().unwrap(),
            card_type: "lc100".into(),
            arch: shelfboot_proto::id::Arch::X86_64,
            shelf: 1,
            slot: 1,
            hw_rev: "A".into(),
            features: vec![],
        };
        owner.record_identity(&id, 1).unwrap();
        let mut other = SqliteStore::open(&path).unwrap();
        // The owner's batch holds the write lock (a write inside it) for a while.
        owner.begin_batch().unwrap();
        owner
            .record_state(&id.mac, NodeState::Fetching, None, 2)
            .unwrap();
        let (started, go) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            started.send(()).unwrap();
            let t0 = std::time::Instant::now();
            let r = other.set_test_mode(&id.mac, None, 3);
            (r, t0.elapsed())
        });
        go.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        owner.end_batch().unwrap();
        let (r, waited) = writer.join().unwrap();
        r.unwrap();
        assert!(
            waited >= std::time::Duration::from_millis(200),
            "{waited:?}"
        );
        let events = owner.events(None, 10).unwrap();
        assert!(events.iter().any(|e| e.kind == "test-mode"), "{events:?}");
    }

    /// Inside a batch, an operation that fails after writing leaves none of its writes
    /// (its savepoint rolls back) while the batch's other operations commit.
    #[test]
    fn a_failed_operation_in_a_batch_leaves_nothing_and_the_batch_commits() {
        let mut s = SqliteStore::open_in_memory().unwrap();
        let id = NodeIdentity {
            mac: "02:00:00:00:00:02".parse().unwrap(),
            card_type: "lc100".into(),
            arch: shelfboot_proto::id::Arch::X86_64,
            shelf: 1,
            slot: 2,
            hw_rev: "A".into(),
            features: vec![],
        };
        s.begin_batch().unwrap();
        s.record_identity(&id, 1).unwrap();
        {
            let tx = s.tx().unwrap();
            super::event(&tx, 2, Some(&id.mac), "state", "written, then abandoned").unwrap();
            // Dropped without commit: the operation failed.
        }
        {
            let tx = s.tx().unwrap();
            super::event(&tx, 3, Some(&id.mac), "state", "kept").unwrap();
            tx.commit().unwrap();
        }
        s.end_batch().unwrap();
        let details: Vec<String> = s
            .events(None, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.detail)
            .collect();
        assert!(details.iter().any(|d| d == "kept"), "{details:?}");
        assert!(
            details.iter().any(|d| d.starts_with("registered")),
            "{details:?}"
        );
        assert!(
            !details.iter().any(|d| d.contains("abandoned")),
            "{details:?}"
        );
    }

    #[test]
    fn backplane_calls_update_node_and_history() {
        let mut s = SqliteStore::open_in_memory().unwrap();
        let mac: shelfboot_proto::id::MacAddr = "02:00:00:00:00:07".parse().unwrap();
        let mut id = NodeIdentity {
            mac,
            card_type: "lc100".into(),
            arch: shelfboot_proto::id::Arch::X86_64,
            shelf: 1,
            slot: 7,
            hw_rev: "B".into(),
            features: vec!["bgp".into()],
        };
        assert!(s.record_identity(&id, 100).unwrap());
        id.slot = 8;
        assert!(!s.record_identity(&id, 110).unwrap());
        s.record_state(&mac, NodeState::Fetching, None, 120)
            .unwrap();
        s.record_state(&mac, NodeState::Failed, Some("no space on mtd0"), 130)
            .unwrap();
        let inv = Inventory {
            digest: None,
            items: vec![],
        };
        s.record_inventory(&mac, &inv, 140).unwrap();
        s.mark_absent(&mac, 10, 150).unwrap();
        let n = s.node(&mac).unwrap().unwrap();
        assert_eq!(n.identity.slot, 8);
        assert_eq!(n.state, NodeState::Failed);
        assert_eq!(n.state_reason.as_deref(), Some("no space on mtd0"));
        assert_eq!(n.inventory, Some(inv));
        assert!(!n.present);
        assert_eq!(n.last_seen, Some(140), "absent: last heard 10 s before 150");
        let kinds: Vec<String> = s
            .events(Some(&mac), 10)
            .unwrap()
            .into_iter()
            .map(|e| format!("{} {}", e.kind, e.detail))
            .collect();
        assert_eq!(
            kinds,
            [
                "identity registered lc100 card (x86_64), shelf 1 slot 7",
                "identity identity changed: lc100 (x86_64) shelf 1 slot 7 -> lc100 (x86_64) shelf 1 slot 8",
                "state fetching",
                "error failed: no space on mtd0",
                "inventory inventory of 0 artifacts",
                "absent not heard for 10 s",
            ]
        );
        let other: shelfboot_proto::id::MacAddr = "02:00:00:00:00:08".parse().unwrap();
        assert!(matches!(
            s.record_state(&other, NodeState::Ready, None, 1),
            Err(StoreError::UnknownNode(_))
        ));
    }

    fn card(s: &mut SqliteStore, last: u8) -> shelfboot_proto::id::MacAddr {
        let mac: shelfboot_proto::id::MacAddr =
            format!("02:00:00:00:00:{last:02x}").parse().unwrap();
        let id = NodeIdentity {
            mac,
            card_type: "lc100".into(),
            arch: shelfboot_proto::id::Arch::X86_64,
            shelf: 1,
            slot: u32::from(last),
            hw_rev: "A".into(),
            features: vec![],
        };
        s.record_identity(&id, 100).unwrap();
        mac
    }

    fn history(s: &SqliteStore, mac: &shelfboot_proto::id::MacAddr) -> Vec<String> {
        s.events(Some(mac), 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind != "identity")
            .map(|e| format!("{} {}", e.kind, e.detail))
            .collect()
    }

    /// An agent's report is written once: the same report again changes no row and no
    /// event; a rollback becomes the state reason and a history entry, once.
    #[test]
    fn health_is_written_on_change_and_a_rollback_is_history() {
        use crate::store::{Health, NodeHealth};
        use shelfboot_proto::id::Digest;
        let mut s = SqliteStore::open_in_memory().unwrap();
        let mac = card(&mut s, 9);
        s.record_state(&mac, NodeState::Ready, None, 110).unwrap();
        let mut h = NodeHealth {
            health: Health::Checking,
            running: Some(Digest([0xd1; 32])),
            rolled_back_from: None,
            dropped: 0,
            detail: String::new(),
        };
        s.record_health(&mac, &h, 120).unwrap();
        let dump = s.dump().unwrap();
        s.record_health(&mac, &h, 121).unwrap();
        assert_eq!(s.dump().unwrap(), dump, "the same report writes nothing");
        h.health = Health::Unhealthy;
        h.detail = "health command exited 1".into();
        s.record_health(&mac, &h, 130).unwrap();
        h.health = Health::Healthy;
        h.running = Some(Digest([0xc0; 32]));
        h.rolled_back_from = Some(Digest([0xd1; 32]));
        h.detail = "set d1d1 never healthy".into();
        s.record_health(&mac, &h, 140).unwrap();
        // Later reports of the same rollback (dropped commands counted) add no history.
        h.dropped = 2;
        s.record_health(&mac, &h, 150).unwrap();
        let n = s.node(&mac).unwrap().unwrap();
        assert_eq!(n.health.as_ref(), Some(&h));
        assert_eq!(
            n.health.as_ref().map(NodeHealth::summary),
            Some("rolled back")
        );
        assert_eq!(n.state, NodeState::Ready);
        let reason = format!(
            "rolled back on its own from set {}: set d1d1 never healthy",
            Digest([0xd1; 32]).short()
        );
        assert_eq!(n.state_reason.as_deref(), Some(reason.as_str()));
        assert_eq!(n.last_seen, Some(150));
        assert_eq!(
            history(&s, &mac),
            [
                "state ready".to_owned(),
                format!(
                    "health unhealthy (set {}): health command exited 1",
                    Digest([0xd1; 32]).short()
                ),
                format!(
                    "health healthy (set {}): set d1d1 never healthy",
                    Digest([0xc0; 32]).short()
                ),
                format!("rollback {reason}"),
            ]
        );
        // The listing reads the same record.
        assert_eq!(s.nodes().unwrap()[0].health.as_ref(), Some(&h));
        // A report for a card the database does not know is refused.
        let stranger: shelfboot_proto::id::MacAddr = "02:00:00:00:00:99".parse().unwrap();
        assert!(matches!(
            s.record_health(&stranger, &h, 160),
            Err(StoreError::UnknownNode(_))
        ));
    }

    /// Presence flips are written once each, with their history entries.
    #[test]
    fn absence_and_return_are_written_once_each() {
        let mut s = SqliteStore::open_in_memory().unwrap();
        let mac = card(&mut s, 3);
        s.mark_present(&mac, 105).unwrap();
        assert!(history(&s, &mac).is_empty(), "present already: nothing");
        s.mark_absent(&mac, 12, 130).unwrap();
        s.mark_absent(&mac, 20, 138).unwrap();
        let n = s.node(&mac).unwrap().unwrap();
        assert!(!n.present);
        assert_eq!(n.last_seen, Some(118), "when it was last heard");
        s.mark_present(&mac, 200).unwrap();
        s.mark_present(&mac, 201).unwrap();
        let n = s.node(&mac).unwrap().unwrap();
        assert!(n.present);
        assert_eq!(n.last_seen, Some(200));
        assert_eq!(
            history(&s, &mac),
            ["absent not heard for 12 s", "present present again"]
        );
    }
}
