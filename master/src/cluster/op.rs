//! The replicated operations: every write of the node and package databases, as one log
//! entry. Each carries the proposer's timestamp, so every master writes the same rows;
//! [`Op::apply`] runs the same [`Store`] operation the embedded master runs, so there is
//! one writer of the schema.

use serde::{Deserialize, Serialize};

use crate::image::manifest::{Manifest, ReleaseId};
use crate::store::sqlite::SqliteStore;
use crate::store::{
    Assignment, ImportOutcome, Inventory, NewRelease, NodeHealth, NodeIdentity, NodeState, Store,
    StoreError, Target, TestMode, TrustedKey,
};
use shelfboot_proto::id::{Digest, MacAddr};

/// One write of the databases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    TrustKey(TrustedKey),
    UntrustKey {
        key_id: String,
        now: i64,
    },
    ImportRelease {
        manifest: Box<Manifest>,
        manifest_sha256: Digest,
        signer_key_id: String,
        now: i64,
        activate: bool,
    },
    DeleteReleases {
        ids: Vec<ReleaseId>,
        now: i64,
    },
    RecordIdentity {
        id: NodeIdentity,
        now: i64,
    },
    SetNodeClass {
        mac: MacAddr,
        class: Option<String>,
        now: i64,
    },
    RecordState {
        mac: MacAddr,
        state: NodeState,
        reason: Option<String>,
        now: i64,
    },
    RecordInventory {
        mac: MacAddr,
        inventory: Inventory,
        now: i64,
    },
    MarkAbsent {
        mac: MacAddr,
        /// Seconds the card was not heard (0 in entries written before it was recorded).
        #[serde(default)]
        silent_secs: u64,
        now: i64,
    },
    MarkPresent {
        mac: MacAddr,
        now: i64,
    },
    RecordHealth {
        mac: MacAddr,
        health: NodeHealth,
        now: i64,
    },
    SetTestMode {
        mac: MacAddr,
        test: Option<TestMode>,
        now: i64,
    },
    MarkPrepare {
        mac: Option<MacAddr>,
        now: i64,
    },
    RecordPrepared {
        mac: MacAddr,
        now: i64,
    },
    SetAssignment {
        assignment: Assignment,
        kind: String,
        now: i64,
    },
    ClearAssignment {
        target: Target,
        now: i64,
    },
    RecordEvent {
        node: Option<MacAddr>,
        kind: String,
        detail: String,
        now: i64,
    },
    /// The order in which members should serve (`master cluster order`).
    SetSuccession {
        order: Vec<u64>,
        now: i64,
    },
    /// Several writes in one entry, applied in order, each atomic on its own (the
    /// serving master's card reports of one loop turn).
    Batch(Vec<Op>),
}

/// What an applied operation returned. An operation the store refused (an unknown node, a
/// duplicate version) is refused the same way on every master, so its error travels as
/// text: the message chain the embedded master would have shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OpResult {
    Done,
    Flag(bool),
    Imported(ImportOutcome),
    Macs(Vec<MacAddr>),
    Refused(String),
    /// The result of each operation of a [`Op::Batch`], in order.
    Batch(Vec<OpResult>),
}

impl Op {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::TrustKey(_) => "trust",
            Op::UntrustKey { .. } => "untrust",
            Op::ImportRelease { .. } => "import",
            Op::DeleteReleases { .. } => "delete releases",
            Op::RecordIdentity { .. } => "record identity",
            Op::SetNodeClass { .. } => "set class",
            Op::RecordState { .. } => "record state",
            Op::RecordInventory { .. } => "record inventory",
            Op::MarkAbsent { .. } => "mark absent",
            Op::MarkPresent { .. } => "mark present",
            Op::RecordHealth { .. } => "record health",
            Op::SetTestMode { .. } => "test mode",
            Op::MarkPrepare { .. } => "prepare",
            Op::RecordPrepared { .. } => "prepared",
            Op::SetAssignment { .. } => "assign",
            Op::ClearAssignment { .. } => "clear assignment",
            Op::RecordEvent { .. } => "event",
            Op::SetSuccession { .. } => "succession",
            Op::Batch(_) => "batch",
        }
    }

    /// Runs the operation on one master's store. Each operation is atomic on its own (the
    /// store's contract), so a refused one leaves nothing behind. A refusal that follows
    /// from the data (an unknown node, a duplicate version) is the operation's result on
    /// every master; a failure of this master's database (disk full, I/O) is returned as an
    /// error: applying must then stop here, or this master would hold other state than
    /// the rest.
    pub fn apply(&self, s: &mut SqliteStore) -> Result<OpResult, StoreError> {
        if let Op::Batch(ops) = self {
            return ops
                .iter()
                .map(|op| op.apply(s))
                .collect::<Result<Vec<_>, _>>()
                .map(OpResult::Batch);
        }
        let r: Result<OpResult, StoreError> = match self {
            Op::TrustKey(k) => s.trust_key(k).map(OpResult::Flag),
            Op::UntrustKey { key_id, now } => s.untrust_key(key_id, *now).map(|()| OpResult::Done),
            Op::ImportRelease {
                manifest,
                manifest_sha256,
                signer_key_id,
                now,
                activate,
            } => s
                .import_release(&NewRelease {
                    manifest,
                    manifest_sha256: *manifest_sha256,
                    signer_key_id: signer_key_id.clone(),
                    now: *now,
                    activate: *activate,
                })
                .map(OpResult::Imported),
            Op::DeleteReleases { ids, now } => {
                s.delete_releases(ids, *now).map(|()| OpResult::Done)
            }
            Op::RecordIdentity { id, now } => s.record_identity(id, *now).map(OpResult::Flag),
            Op::SetNodeClass { mac, class, now } => s
                .set_node_class(mac, class.as_deref(), *now)
                .map(|()| OpResult::Done),
            Op::RecordState {
                mac,
                state,
                reason,
                now,
            } => s
                .record_state(mac, *state, reason.as_deref(), *now)
                .map(|()| OpResult::Done),
            Op::RecordInventory {
                mac,
                inventory,
                now,
            } => s
                .record_inventory(mac, inventory, *now)
                .map(|()| OpResult::Done),
            Op::MarkAbsent {
                mac,
                silent_secs,
                now,
            } => s
                .mark_absent(mac, *silent_secs, *now)
                .map(|()| OpResult::Done),
            Op::MarkPresent { mac, now } => s.mark_present(mac, *now).map(|()| OpResult::Done),
            Op::RecordHealth { mac, health, now } => {
                s.record_health(mac, health, *now).map(|()| OpResult::Done)
            }
            Op::SetTestMode { mac, test, now } => s
                .set_test_mode(mac, test.as_ref(), *now)
                .map(|()| OpResult::Done),
            Op::MarkPrepare { mac, now } => s.mark_prepare(mac.as_ref(), *now).map(OpResult::Macs),
            Op::RecordPrepared { mac, now } => s.record_prepared(mac, *now).map(OpResult::Flag),
            Op::SetAssignment {
                assignment,
                kind,
                now,
            } => s
                .set_assignment(assignment, kind, *now)
                .map(|()| OpResult::Done),
            Op::ClearAssignment { target, now } => {
                s.clear_assignment(target, *now).map(|()| OpResult::Done)
            }
            Op::RecordEvent {
                node,
                kind,
                detail,
                now,
            } => s
                .record_event(node.as_ref(), kind, detail, *now)
                .map(|()| OpResult::Done),
            Op::SetSuccession { order, now } => {
                let text: Vec<String> = order.iter().map(ToString::to_string).collect();
                s.set_meta(
                    super::META_SUCCESSION,
                    &serde_json::to_string(order).unwrap_or_default(),
                )
                .and_then(|()| {
                    s.record_event(
                        None,
                        "cluster",
                        &format!("order of succession {}", text.join(",")),
                        *now,
                    )
                })
                .map(|()| OpResult::Done)
            }
            Op::Batch(_) => unreachable!("a batch is applied above"),
        };
        match r {
            Err(e @ (StoreError::Sql { .. } | StoreError::Open { .. })) => Err(e),
            Err(e) => Ok(OpResult::Refused(shelfboot_proto::report::error_chain(&e))),
            Ok(r) => Ok(r),
        }
    }
}
