//! Backup masters: the node and package databases replicated to every master card by
//! Raft ([openraft] 0.9, embedded), and the rule that decides which master serves the
//! backplane.
//!
//! ```text
//!   CLI ─▶ control.sock ─▶ Master<ReplicatedStore>
//!                              │ reads: this master's master.db
//!                              │ writes: Op ─▶ Raft (leader; a follower forwards) ─▶ log
//!                              ▼                                  (raft.db, every master)
//!                   committed entries ─▶ StateMachine::apply ─▶ master.db (+ applied id)
//! ```
//!
//! * [`op`]: every write of the databases is one [`op::Op`], stamped by the proposer, and
//!   applied on every master by the same [`crate::store::Store`] operation the embedded
//!   master runs.
//! * [`log`]: the Raft log and vote in `STATE/raft.db`.
//! * [`machine`]: `master.db` as the state machine; a batch of entries is one transaction
//!   with its log id; snapshots are copies of the database.
//! * [`net`]: Raft's RPCs and forwarded writes, TCP between the masters' management
//!   addresses.
//! * [`store`]: [`store::ReplicatedStore`], the `Store` the master runs on in a cluster.
//!
//! **Who serves.** A master serves the backplane only while it is the Raft leader, has
//! heard from a quorum within [`LEASE`] (shorter than the shortest election timeout, so a
//! leader cut off from the others stops before another can be elected), and has applied
//! an entry of its own term (so it holds every committed write). Its epoch is the term
//! plus the `epoch_base` fixed when the cluster was made; cards obey the highest epoch they
//! have seen, so a deposed master that still sends is ignored.
//!
//! **Files**: `STATE/cluster.toml` (this member: id, listen address, the initial members),
//! `STATE/raft.db`, `STATE/raft-snapshot/`. A state directory without `cluster.toml` is a
//! master on its own, exactly as before.

pub mod blobs;
pub mod log;
pub mod machine;
pub mod net;
pub mod op;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use serde::{Deserialize, Serialize};

use crate::store::sqlite::SqliteStore;
use machine::{Applied, StateMachine};
use op::{Op, OpResult};

/// A master's id in the cluster.
pub type NodeId = u64;
/// What the cluster knows of a member: its address.
pub type Member = BasicNode;

openraft::declare_raft_types!(
    /// The Raft types of the masters' cluster.
    pub TypeConfig:
        D = Op,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// The Raft node.
pub type Raft = openraft::Raft<TypeConfig>;

/// Leader heartbeat interval, ms.
pub const HEARTBEAT_MS: u64 = 100;
/// Election timeout range, ms: a follower that hears nothing from a leader for this long
/// stands for election.
pub const ELECTION_MIN_MS: u64 = 600;
pub const ELECTION_MAX_MS: u64 = 900;
/// A leader that has not heard from a quorum within this long stops serving. Half the
/// shortest election timeout: it has stopped before any other member can be elected.
pub const LEASE: Duration = Duration::from_millis(300);
/// How long a write may wait for a leader and its commit.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// `STATE/cluster.toml`.
pub const CONFIG_FILE: &str = "cluster.toml";
/// `meta` key of the order of succession (JSON list of member ids).
pub const META_SUCCESSION: &str = "cluster_succession";
/// How often the leader checks that the order of succession is honoured.
pub const SUCCESSION_EVERY: Duration = Duration::from_secs(1);

/// The log index the databases have applied (0: none).
fn applied_index(s: &SqliteStore) -> u64 {
    s.meta(machine::META_APPLIED)
        .ok()
        .flatten()
        .and_then(|j| serde_json::from_str::<Option<openraft::LogId<NodeId>>>(&j).ok())
        .flatten()
        .map_or(0, |l| l.index)
}

/// The order of succession the databases hold (empty: none set).
fn succession(s: &SqliteStore) -> crate::store::Result<Vec<NodeId>> {
    Ok(match s.meta(META_SUCCESSION)? {
        Some(j) => serde_json::from_str(&j).unwrap_or_default(),
        None => Vec::new(),
    })
}

/// This master's membership: `STATE/cluster.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This member's id (1 or more, unique in the cluster).
    pub id: NodeId,
    /// ADDR:PORT the other masters reach this one at (the management network).
    pub listen: String,
    /// Added to the Raft term to give the epoch cards see, so that a shelf that had one
    /// master (whose epochs its cards remember) goes on upward.
    #[serde(default)]
    pub epoch_base: u64,
    /// A witness votes and holds the log and the databases, but no blobs: it never
    /// stands for election and never serves (`master witness`, the third voter of a
    /// shelf with two master cards).
    #[serde(default)]
    pub witness: bool,
    /// The members the cluster starts with; the member with the lowest id makes the
    /// cluster at its first start. Empty for a member that is added later.
    #[serde(default)]
    pub members: Vec<MemberConfig>,
}

/// One initial member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: NodeId,
    pub addr: String,
}

/// Failures of the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the cluster membership {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the cluster membership {path} is not valid: {message}")]
    Config { path: PathBuf, message: String },
    #[error("cannot write the cluster membership {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the Raft log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot open the databases for replication")]
    Store(#[source] crate::store::StoreError),
    #[error("cannot start the cluster runtime")]
    Runtime(#[source] io::Error),
    #[error("cannot listen for the other masters on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("Raft: {0}")]
    Raft(String),
    #[error(
        "no master leads the cluster (no quorum of members reachable within {0:?}); check `master cluster status` on each master"
    )]
    NoLeader(Duration),
    #[error(
        "the write went to the leader (master {leader}) but its outcome is unknown: {message}; check `master history` before repeating it"
    )]
    Unknown { leader: NodeId, message: String },
    #[error(
        "the blobs reached only {holders} of {voters} voting masters, not a majority: {failures}; bring the masters back and import again"
    )]
    Blobs {
        holders: usize,
        voters: usize,
        failures: String,
    },
    #[error("master {0} is not a member of the cluster (see `master cluster status`)")]
    UnknownMember(NodeId),
    #[error("master {id} cannot be reached: {message}")]
    Unreachable { id: NodeId, message: String },
    #[error(
        "master {id} cannot take over: {why}; wait until `master cluster status` shows it complete"
    )]
    NotComplete { id: NodeId, why: String },
    #[error("the leader (master {leader}) did not take the write: {message}")]
    Refused { leader: NodeId, message: String },
}

impl ClusterConfig {
    /// Reads `STATE/cluster.toml`; `None` if the state is a master on its own.
    pub fn load(state: &Path) -> Result<Option<Self>, ClusterError> {
        let path = state.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ClusterError::Read { path, source }),
        };
        let cfg: ClusterConfig = toml::from_str(&text).map_err(|e| ClusterError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        cfg.check()
            .map_err(|message| ClusterError::Config { path, message })?;
        Ok(Some(cfg))
    }

    /// Checks ids and addresses.
    pub fn check(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("id must be 1 or more".into());
        }
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("listen '{}' is not ADDR:PORT ({e})", self.listen))?;
        let mut seen = BTreeSet::new();
        for m in &self.members {
            if m.id == 0 || !seen.insert(m.id) {
                return Err(format!("member id {} is 0 or given twice", m.id));
            }
            m.addr
                .parse::<std::net::SocketAddr>()
                .map_err(|e| format!("member {} addr '{}' is not ADDR:PORT ({e})", m.id, m.addr))?;
        }
        if !self.members.is_empty() && !seen.contains(&self.id) {
            return Err(format!(
                "the members do not include this master (id {})",
                self.id
            ));
        }
        Ok(())
    }

    /// Writes `STATE/cluster.toml` (temporary file, fsync, rename).
    pub fn save(&self, state: &Path) -> Result<(), ClusterError> {
        let path = state.join(CONFIG_FILE);
        let err = |source| ClusterError::Write {
            path: path.clone(),
            source,
        };
        let text = toml::to_string(self).map_err(|e| err(io::Error::other(e)))?;
        let tmp = state.join(format!("{CONFIG_FILE}.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(text.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &path).map_err(err)
    }
}

/// What `master cluster status` shows of one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
    /// The last log index the leader knows this member holds (only on the leader).
    pub matched: Option<u64>,
    /// What the member itself says ([`Cluster::status_all`]; `None` in a member's own
    /// view, or when it did not answer): its applied index, blobs it lacks, whether it
    /// serves, whether it is a witness.
    #[serde(default)]
    pub reported: Option<MemberReport>,
}

/// A member's own account, for `master cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    pub applied_index: Option<u64>,
    pub missing_blobs: usize,
    pub serving: bool,
    pub witness: bool,
}

/// What `master cluster status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub id: NodeId,
    /// leader, follower, candidate, learner or shutdown.
    pub role: String,
    pub term: u64,
    /// The epoch this member serves with, or would.
    pub epoch: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// This member serves the backplane now.
    pub serving: bool,
    /// A witness: votes, never serves.
    pub witness: bool,
    /// Blobs the databases reference that this member lacks (fetching); a member with any
    /// missing is not complete and does not stand for election.
    pub missing_blobs: usize,
    /// The order of succession set by the operator (empty: none, Raft elects any complete
    /// member).
    pub succession: Vec<NodeId>,
    /// Who takes over next by that order: the first voter in it other than the leader.
    pub next: Option<NodeId>,
    pub members: Vec<MemberStatus>,
}

/// How long a switchover waits for its target to apply the leader's log.
pub const CATCH_UP: Duration = Duration::from_secs(2);

/// How long a planned switchover may take to show the new member serving.
pub const SWITCHOVER_WAIT: Duration = Duration::from_secs(10);

/// How long making the cluster may take (an election of one, a snapshot, the members'
/// membership change).
const BOOTSTRAP_WAIT: Duration = Duration::from_secs(30);

/// Makes the cluster on its lowest-id initial member, at its first start: a cluster of
/// this member alone, whose databases as they are (empty, or those of a master that ran
/// on its own until now) become a snapshot the log starts after; then the other initial
/// members join. They start empty and receive that snapshot, so every member begins from
/// the same databases, whatever this member held before.
///
/// `init` is false when a first start made the cluster of one but stopped before the
/// others joined: only the joining is done again.
async fn bootstrap(raft: &Raft, cfg: &ClusterConfig, init: bool) -> Result<(), ClusterError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        ClusterError::Raft(format!("making the cluster: {what}: {e}"))
    };
    let me: BTreeMap<NodeId, Member> = cfg
        .members
        .iter()
        .filter(|m| m.id == cfg.id)
        .map(|m| (m.id, BasicNode::new(&m.addr)))
        .collect();
    if init {
        raft.initialize(me)
            .await
            .map_err(|e| err("initialize", &e))?;
    }
    raft.wait(Some(BOOTSTRAP_WAIT))
        .state(ServerState::Leader, "bootstrap: leader of one")
        .await
        .map_err(|e| err("becoming leader", &e))?;
    // An entry of this term applied: the databases are what the snapshot will hold.
    let applied = raft
        .wait(Some(BOOTSTRAP_WAIT))
        .metrics(
            |m| {
                m.last_applied
                    .is_some_and(|l| l.leader_id.term == m.current_term)
            },
            "bootstrap: applied",
        )
        .await
        .map_err(|e| err("applying", &e))?
        .last_applied;
    let index = applied.map_or(0, |l| l.index);
    if init {
        seed(raft, index).await.map_err(|e| err("snapshot", &e))?;
    }
    join(raft, cfg, index).await
}

/// Snapshots the databases at `index` and purges the log up to it, so that every member
/// that joins starts from that snapshot.
async fn seed(raft: &Raft, index: u64) -> Result<(), String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    raft.trigger()
        .snapshot()
        .await
        .map_err(|e| err("snapshot", &e))?;
    raft.wait(Some(BOOTSTRAP_WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= index),
            "bootstrap: snapshot",
        )
        .await
        .map_err(|e| err("waiting for the snapshot", &e))?;
    raft.trigger()
        .purge_log(index)
        .await
        .map_err(|e| err("purge", &e))?;
    raft.wait(Some(BOOTSTRAP_WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= index),
            "bootstrap: purged",
        )
        .await
        .map_err(|e| err("waiting for the purge", &e))?;
    Ok(())
}

/// Adds the other initial members, then makes them all voters (this waits until a quorum
/// of them is up).
async fn join(raft: &Raft, cfg: &ClusterConfig, index: u64) -> Result<(), ClusterError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        ClusterError::Raft(format!("making the cluster: {what}: {e}"))
    };
    for m in cfg.members.iter().filter(|m| m.id != cfg.id) {
        raft.add_learner(m.id, BasicNode::new(&m.addr), false)
            .await
            .map_err(|e| err(&format!("adding member {} at {}", m.id, m.addr), &e))?;
    }
    let voters: BTreeSet<NodeId> = cfg.members.iter().map(|m| m.id).collect();
    if voters.len() > 1 {
        ::log::info!(
            "cluster: waiting for the members {voters:?} to make the cluster (a quorum must be up)"
        );
        raft.change_membership(voters, false)
            .await
            .map_err(|e| err("making every member a voter", &e))?;
    }
    ::log::info!(
        "cluster: made the cluster of {} members as master {}, starting from the databases at log index {index}",
        cfg.members.len(),
        cfg.id
    );
    Ok(())
}

/// Whether this member may serve now: leader, lease, caught up, complete, not a witness
/// (see the module documentation); its epoch if so.
fn serving_epoch(raft: &Raft, cfg: &ClusterConfig, local_view: &blobs::LocalView) -> Option<u64> {
    use std::sync::atomic::Ordering;
    let complete = !cfg.witness
        && local_view.complete.load(Ordering::Relaxed)
        && local_view.checked_at.load(Ordering::Relaxed)
            >= local_view.import_at.load(Ordering::Relaxed);
    let held = local_view
        .hold_until
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_some_and(|t| std::time::Instant::now() < t);
    // Standing for election follows completeness: an incomplete member never leads; nor
    // one that holds back for a handover.
    raft.runtime_config().elect(complete && !held);
    if !complete {
        return None;
    }
    let m = raft.metrics().borrow().clone();
    let leader = m.state == ServerState::Leader && m.current_leader == Some(cfg.id);
    let lease = m
        .millis_since_quorum_ack
        .is_some_and(|ms| u128::from(ms) < LEASE.as_millis());
    let caught_up = m
        .last_applied
        .is_some_and(|l| l.leader_id.term == m.current_term);
    (leader && lease && caught_up).then_some(cfg.epoch_base + m.current_term)
}

/// A member's view of the cluster.
fn status_of(raft: &Raft, cfg: &ClusterConfig, local_view: &blobs::LocalView) -> ClusterStatus {
    let serving = serving_epoch(raft, cfg, local_view).is_some();
    let succession = local_view
        .succession
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| MemberStatus {
            id: *id,
            addr: node.addr.clone(),
            voter: voters.contains(id),
            matched: m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index),
            reported: None,
        })
        .collect();
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    ClusterStatus {
        id: cfg.id,
        role: role.to_owned(),
        term: m.current_term,
        epoch: cfg.epoch_base + m.current_term,
        leader: m.current_leader,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|l| l.index),
        serving,
        witness: cfg.witness,
        missing_blobs: local_view
            .missing
            .load(std::sync::atomic::Ordering::Relaxed),
        next: succession
            .iter()
            .copied()
            .find(|id| Some(*id) != m.current_leader && voters.contains(id)),
        succession,
        members,
    }
}

/// How long a member holds back from elections during a handover: longer than an
/// election takes.
pub const HOLD: Duration = Duration::from_secs(3);

/// Holds this member back from elections for [`HOLD`]; a leader also stops its heartbeats
/// for that long, so its followers' leases run out and the member a handover names (the
/// only one still standing) is elected. openraft 0.9 has no leadership transfer; this is
/// how one is made of what it has.
fn hold(raft: &Raft, local: &blobs::LocalView) {
    *local.hold_until.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(std::time::Instant::now() + HOLD);
    raft.runtime_config().elect(false);
    raft.runtime_config().heartbeat(false);
    let raft = raft.clone();
    tokio::spawn(async move {
        tokio::time::sleep(HOLD).await;
        raft.runtime_config().heartbeat(true);
    });
}

/// Hands the service over to member `to`: every other voter holds back ([`hold`]), so
/// `to` is elected when the leader's heartbeats stop. `to` must be complete (checked by
/// the callers).
async fn hand_over(
    raft: &Raft,
    cfg: &ClusterConfig,
    local: &blobs::LocalView,
    to: NodeId,
) -> Result<(), String> {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    for (id, node) in membership.nodes() {
        if *id == to || !membership.voter_ids().any(|v| v == *id) {
            continue;
        }
        if *id == cfg.id {
            hold(raft, local);
            continue;
        }
        let mut peer = net::Peer::new(*id, &node.addr);
        match peer.call(&net::Request::Hold, Duration::from_secs(1)).await {
            Ok(net::Response::Done(Ok(()))) => {}
            Ok(other) => ::log::warn!("cluster: master {id} answered a hold with {other:?}"),
            // A member that is down does not stand anyway.
            Err(e) => ::log::info!("cluster: master {id} not held: {e}"),
        }
    }
    Ok(())
}

/// On the serving leader, every [`SUCCESSION_EVERY`]: if the order of succession names a
/// member before this one that is complete (every blob, the whole log), it takes over
/// (the operator's order is honoured after an unplanned takeover as soon as the
/// preferred member can serve).
async fn honour_succession(raft: Raft, cfg: ClusterConfig, local: Arc<blobs::LocalView>) {
    let mut peers: BTreeMap<NodeId, net::Peer> = BTreeMap::new();
    loop {
        tokio::time::sleep(SUCCESSION_EVERY).await;
        if serving_epoch(&raft, &cfg, &local).is_none() {
            continue;
        }
        let order = local
            .succession
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let m = raft.metrics().borrow().clone();
        let applied = m.last_applied.map(|l| l.index);
        for id in order {
            if id == cfg.id {
                break;
            }
            let Some(node) = m.membership_config.membership().get_node(&id).cloned() else {
                continue;
            };
            if !m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == id)
            {
                continue;
            }
            let peer = peers
                .entry(id)
                .or_insert_with(|| net::Peer::new(id, &node.addr));
            let Ok(net::Response::Status(s)) = peer
                .call(&net::Request::Status, Duration::from_secs(1))
                .await
            else {
                continue;
            };
            if s.witness || s.missing_blobs > 0 || s.applied_index < applied {
                continue;
            }
            ::log::info!(
                "cluster: master {id} comes before master {} in the order of succession and is complete: handing over",
                cfg.id
            );
            if let Err(e) = hand_over(&raft, &cfg, &local, id).await {
                ::log::warn!("cluster: handing over to master {id}: {e}");
            }
            // Give the election time before looking again.
            tokio::time::sleep(HOLD).await;
            break;
        }
    }
}

/// Adds or removes a member, on the leader: a new member first as a learner that catches
/// up (bounded), then a voter.
async fn change_members(raft: &Raft, change: net::MemberChange) -> Result<(), String> {
    let m = raft.metrics().borrow().clone();
    let mut voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
    match change {
        net::MemberChange::Add { id, addr } => {
            let add = raft.add_learner(id, BasicNode::new(&addr), true);
            tokio::time::timeout(MEMBER_WAIT, add)
                .await
                .map_err(|_| {
                    format!("master {id} at {addr} did not catch up within {MEMBER_WAIT:?}; is its `master serve` running?")
                })?
                .map_err(|e| e.to_string())?;
            voters.insert(id);
        }
        net::MemberChange::Remove { id } => {
            if !voters.remove(&id) {
                return Err(format!("master {id} is not a voting member"));
            }
            if voters.is_empty() {
                return Err("the last member cannot be removed".into());
            }
        }
    }
    tokio::time::timeout(MEMBER_WAIT, raft.change_membership(voters, false))
        .await
        .map_err(|_| {
            format!("the membership change did not commit within {MEMBER_WAIT:?} (no quorum?)")
        })?
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// How long adding or removing a member may take.
pub const MEMBER_WAIT: Duration = Duration::from_secs(60);

/// A running cluster member: the Raft node, its network and its runtime.
pub struct Cluster {
    cfg: ClusterConfig,
    raft: Raft,
    blobs: Arc<blobs::LocalView>,
    applied_ops: Arc<std::sync::atomic::AtomicU64>,
    forward: tokio::sync::Mutex<BTreeMap<NodeId, net::Peer>>,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("cfg", &self.cfg).finish()
    }
}

impl Cluster {
    /// Starts this member on the state directory: opens the log and the databases' write
    /// connection, listens for the other masters, and makes the cluster if this is the
    /// lowest-id initial member of a cluster not made yet.
    pub fn start(state: &Path, cfg: ClusterConfig) -> Result<Self, ClusterError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cluster")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let log_path = state.join("raft.db");
        let log = log::LogStore::open(&log_path).map_err(|source| ClusterError::Log {
            path: log_path,
            source,
        })?;
        let db = SqliteStore::open(&state.join("master.db")).map_err(ClusterError::Store)?;
        let applied_ops = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let local_view = Arc::new(blobs::LocalView::default());
        let sm = StateMachine::new(
            db,
            state.join("raft-snapshot"),
            applied_ops.clone(),
            local_view.clone(),
        )
        .map_err(ClusterError::Runtime)?;
        let config = openraft::Config {
            cluster_name: "shelfboot-masters".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_MIN_MS,
            election_timeout_max: ELECTION_MAX_MS,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let raft = rt
            .block_on(Raft::new(cfg.id, Arc::new(config), net::Network, log, sm))
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(&cfg.listen))
            .map_err(|source| ClusterError::Listen {
                addr: cfg.listen.clone(),
                source,
            })?;
        let blob_dir = if cfg.witness {
            None
        } else {
            Some(
                crate::blobs::BlobDir::open(&state.join("blobs"))
                    .map_err(|e| ClusterError::Raft(format!("blob directory: {e}")))?,
            )
        };
        rt.spawn(net::serve(
            listener,
            raft.clone(),
            net::Local {
                cfg: cfg.clone(),
                blobs: blob_dir.clone(),
                local_view: local_view.clone(),
            },
        ));
        if !cfg.witness {
            rt.spawn(honour_succession(
                raft.clone(),
                cfg.clone(),
                local_view.clone(),
            ));
        }
        if let Some(dir) = blob_dir {
            rt.spawn(blobs::keep(
                raft.clone(),
                cfg.id,
                state.join("master.db"),
                dir,
                local_view.clone(),
            ));
        }
        // A member stands for election only while it is complete ([`Cluster::complete`]);
        // a witness never does.
        let lowest = cfg.members.iter().map(|m| m.id).min();
        if lowest == Some(cfg.id) {
            let made = rt
                .block_on(raft.is_initialized())
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
            let voters: BTreeSet<NodeId> = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            let alone = voters.len() == 1 && voters.contains(&cfg.id);
            if !made || (alone && cfg.members.len() > 1) {
                // In the background: the other members may start later, and this one
                // answers the operator meanwhile.
                let (raft, cfg) = (raft.clone(), cfg.clone());
                rt.spawn(async move {
                    if let Err(e) = bootstrap(&raft, &cfg, !made).await {
                        ::log::error!("cluster: {}", shelfboot_proto::report::error_chain(&e));
                    }
                });
            }
        }
        if cfg.witness {
            raft.runtime_config().elect(false);
        }
        ::log::info!("cluster: master {} listening on {}", cfg.id, cfg.listen);
        Ok(Self {
            cfg,
            raft,
            blobs: local_view,
            applied_ops,
            forward: tokio::sync::Mutex::new(BTreeMap::new()),
            rt,
        })
    }

    /// This member's configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// The epoch this member may serve the backplane with now, or `None` (see the module
    /// documentation: leader, lease, caught up).
    pub fn serving(&self) -> Option<u64> {
        serving_epoch(&self.raft, &self.cfg, &self.blobs)
    }

    /// The member's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        status_of(&self.raft, &self.cfg, &self.blobs)
    }

    /// Operations this member has applied since it started (every member's writes).
    pub fn applied_ops(&self) -> u64 {
        self.applied_ops.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Copies blobs (digest, size) stored here to every other member that lacks them,
    /// before an import that references them is proposed. Fails unless a majority of the
    /// voters (this member counted) then hold them all; members that did not get them
    /// fetch them later ([`blobs::keep`]).
    pub fn push_blobs(
        &self,
        dir: &crate::blobs::BlobDir,
        list: &[(shelfboot_proto::id::Digest, u64)],
    ) -> Result<(), ClusterError> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut holders = usize::from(voters.contains(&self.cfg.id));
        let mut failures = Vec::new();
        for (id, node) in membership.nodes() {
            if *id == self.cfg.id {
                continue;
            }
            let mut peer = net::Peer::new(*id, &node.addr);
            let r = self.rt.block_on(async {
                for (sha, size) in list {
                    blobs::push(dir, &mut peer, sha, *size).await?;
                }
                Ok::<(), String>(())
            });
            match r {
                Ok(()) if voters.contains(id) => holders += 1,
                Ok(()) => {}
                // A witness holds no blobs: it neither counts nor fails the copy.
                Err(e) if e.contains("witness holds no blobs") => {}
                Err(e) => failures.push(format!("master {id}: {e}")),
            }
        }
        if holders * 2 > voters.len() {
            for f in &failures {
                ::log::warn!("cluster: blobs not copied to {f}; it fetches them when it can");
            }
            Ok(())
        } else {
            Err(ClusterError::Blobs {
                holders,
                voters: voters.len(),
                failures: failures.join("; "),
            })
        }
    }

    /// Makes `op` one committed, applied write of the cluster and returns its result. On
    /// a member that is not the leader the write goes to the leader; it returns once this
    /// member has applied it too, so what the caller reads next includes it. A write
    /// whose outcome cannot be known (the leader went silent after taking it) is an
    /// error saying so, never retried: it might otherwise be applied twice.
    pub fn write(&self, op: Op) -> Result<OpResult, ClusterError> {
        self.rt.block_on(self.write_async(op))
    }

    async fn write_async(&self, op: Op) -> Result<OpResult, ClusterError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClusterError::NoLeader(WRITE_TIMEOUT));
            }
            // A leader that loses its quorum keeps the entry but cannot commit it: the
            // write is given up (of unknown outcome: a returning quorum may still commit
            // it) once no quorum has answered for an election timeout, or at the deadline.
            let write = self.raft.client_write(op.clone());
            tokio::pin!(write);
            let taken = loop {
                tokio::select! {
                    r = &mut write => break Some(r),
                    () = tokio::time::sleep(Duration::from_millis(50)) => {
                        if Instant::now() >= deadline || self.quorum_lost() {
                            break None;
                        }
                    }
                }
            };
            let Some(taken) = taken else {
                return Err(ClusterError::Unknown {
                    leader: self.cfg.id,
                    message: format!(
                        "this master leads but no quorum of the members acknowledged it for {ELECTION_MAX_MS} ms"
                    ),
                });
            };
            let leader = match taken {
                Ok(r) => return Ok(r.data.result),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    f.leader_id.zip(f.leader_node)
                }
                Err(e) => return Err(ClusterError::Raft(e.to_string())),
            };
            let Some((leader, node)) = leader else {
                // An election is under way.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut peers = self.forward.lock().await;
            let peer = peers
                .entry(leader)
                .or_insert_with(|| net::Peer::new(leader, &node.addr));
            match peer.call(&net::Request::Write(op.clone()), left).await {
                Ok(net::Response::Write(Ok(applied))) => {
                    drop(peers);
                    // Read-your-writes on this member.
                    let wait = deadline.saturating_duration_since(Instant::now());
                    self.raft
                        .wait(Some(wait.max(Duration::from_millis(10))))
                        .applied_index_at_least(Some(applied.index), "forwarded write")
                        .await
                        .map_err(|e| ClusterError::Unknown {
                            leader,
                            message: format!("committed, not yet applied here: {e}"),
                        })?;
                    return Ok(applied.result);
                }
                Ok(net::Response::Write(Err(net::WriteRefused::NotLeader))) => {
                    // Leadership moved on between our look and its answer: nothing was
                    // taken; ask again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Ok(net::Response::Write(Err(net::WriteRefused::Failed(message)))) => {
                    return Err(ClusterError::Refused { leader, message });
                }
                Ok(_) => {
                    return Err(ClusterError::Unknown {
                        leader,
                        message: "answered another request kind".into(),
                    });
                }
                Err(e @ net::CallError::Connect { .. }) => {
                    // Not sent: safe to ask again once a leader is known.
                    ::log::debug!("cluster: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => {
                    return Err(ClusterError::Unknown {
                        leader,
                        message: shelfboot_proto::report::error_chain(&e),
                    });
                }
            }
        }
    }

    /// One request to member `id` (its address from the membership), or `None` if the
    /// membership does not know it.
    async fn call(
        &self,
        id: NodeId,
        req: &net::Request,
        ttl: Duration,
    ) -> Option<Result<net::Response, net::CallError>> {
        let addr = {
            let m = self.raft.metrics().borrow().clone();
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        }?;
        let mut peer = net::Peer::new(id, &addr);
        Some(peer.call(req, ttl).await)
    }

    /// This member's view, with every member's own account of itself (asked of each,
    /// at most a second per member; one that does not answer has none).
    pub fn status_all(&self) -> ClusterStatus {
        let mut st = self.status();
        for m in &mut st.members {
            let s = if m.id == self.cfg.id {
                Some(self.status())
            } else {
                match self.rt.block_on(self.call(
                    m.id,
                    &net::Request::Status,
                    Duration::from_secs(1),
                )) {
                    Some(Ok(net::Response::Status(s))) => Some(s),
                    _ => None,
                }
            };
            m.reported = s.map(|s| MemberReport {
                applied_index: s.applied_index,
                missing_blobs: s.missing_blobs,
                serving: s.serving,
                witness: s.witness,
            });
        }
        st
    }

    /// The leader this member knows, waiting up to [`CATCH_UP`] for one (an election, or a
    /// member that just joined).
    fn known_leader(&self) -> Result<NodeId, ClusterError> {
        let deadline = Instant::now() + CATCH_UP;
        loop {
            if let Some(l) = self.raft.metrics().borrow().current_leader {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NoLeader(CATCH_UP));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The status member `id` reports (this member's own without a call).
    pub fn member_status(&self, id: NodeId) -> Result<ClusterStatus, ClusterError> {
        if id == self.cfg.id {
            return Ok(self.status());
        }
        match self
            .rt
            .block_on(self.call(id, &net::Request::Status, Duration::from_secs(2)))
        {
            None => Err(ClusterError::UnknownMember(id)),
            Some(Ok(net::Response::Status(s))) => Ok(s),
            Some(Ok(_)) => Err(ClusterError::Raft(format!(
                "master {id} answered another request kind"
            ))),
            Some(Err(e)) => Err(ClusterError::Unreachable {
                id,
                message: shelfboot_proto::report::error_chain(&e),
            }),
        }
    }

    /// A planned switchover: member `to` takes over from the leader. Refused unless `to`
    /// is a voter, not a witness, complete and caught up with the leader; returns once `to`
    /// serves (bounded by [`SWITCHOVER_WAIT`]).
    ///
    /// With an order of succession set, `to` becomes its first (it is the operator's
    /// choice now; the order would otherwise hand the service back).
    pub fn switchover(&self, to: NodeId, now: i64) -> Result<ClusterStatus, ClusterError> {
        let leader = self.known_leader()?;
        let me = self.status();
        let voter = me.members.iter().any(|m| m.id == to && m.voter);
        // A member a few entries behind is catching up, not incomplete: it gets a moment.
        let deadline = Instant::now() + CATCH_UP;
        let (target, why) = loop {
            let target = self.member_status(to)?;
            let lead = self.member_status(leader)?;
            let why = if !voter {
                Some("it is not a voting member".to_owned())
            } else if target.witness {
                Some("it is a witness, which never serves".to_owned())
            } else if target.missing_blobs > 0 {
                Some(format!(
                    "it lacks {} blobs (still fetching)",
                    target.missing_blobs
                ))
            } else if target.applied_index < lead.applied_index {
                if Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Some(format!(
                    "it has applied the log to {:?}, the leader to {:?}",
                    target.applied_index, lead.applied_index
                ))
            } else {
                None
            };
            break (target, why);
        };
        if let Some(why) = why {
            return Err(ClusterError::NotComplete { id: to, why });
        }
        if !me.succession.is_empty() && me.succession.first() != Some(&to) {
            let mut order = vec![to];
            order.extend(me.succession.iter().copied().filter(|id| *id != to));
            self.set_succession(order, now)?;
        }
        if target.serving {
            return Ok(target);
        }
        self.rt
            .block_on(hand_over(&self.raft, &self.cfg, &self.blobs, to))
            .map_err(|message| ClusterError::Unreachable { id: to, message })?;
        let deadline = Instant::now() + SWITCHOVER_WAIT;
        loop {
            if let Ok(s) = self.member_status(to)
                && s.serving
            {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Raft(format!(
                    "master {to} stood for election but does not serve after {SWITCHOVER_WAIT:?}; see `master cluster status`"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets the order of succession (replicated): `order` lists voting members, most
    /// preferred first.
    pub fn set_succession(&self, order: Vec<NodeId>, now: i64) -> Result<(), ClusterError> {
        let me = self.status();
        for id in &order {
            if !me.members.iter().any(|m| m.id == *id && m.voter) {
                return Err(ClusterError::UnknownMember(*id));
            }
        }
        match self.write(Op::SetSuccession { order, now })? {
            OpResult::Refused(message) => Err(ClusterError::Refused {
                leader: me.leader.unwrap_or(0),
                message,
            }),
            _ => Ok(()),
        }
    }

    /// Adds or removes a member (done by the leader; asked of it from here).
    pub fn change_members(&self, change: net::MemberChange) -> Result<(), ClusterError> {
        let leader = self.known_leader()?;
        let r = if leader == self.cfg.id {
            self.rt.block_on(change_members(&self.raft, change))
        } else {
            match self.rt.block_on(self.call(
                leader,
                &net::Request::Members(change),
                MEMBER_WAIT + Duration::from_secs(5),
            )) {
                Some(Ok(net::Response::Done(r))) => r,
                Some(Ok(_)) => Err("answered another request kind".into()),
                Some(Err(e)) => Err(shelfboot_proto::report::error_chain(&e)),
                None => return Err(ClusterError::UnknownMember(leader)),
            }
        };
        r.map_err(|message| ClusterError::Refused { leader, message })
    }

    /// This member leads but has not heard from a quorum for an election timeout.
    fn quorum_lost(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state == ServerState::Leader
            && m.millis_since_quorum_ack
                .is_none_or(|ms| ms > ELECTION_MAX_MS)
    }

    /// Stops the Raft node (the databases stay as they are).
    pub fn shutdown(&self) {
        if let Err(e) = self.rt.block_on(self.raft.shutdown()) {
            ::log::warn!("cluster: stopping Raft: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
