//! Control requests and replies, and [`execute`], which runs one request against the
//! state. The same function serves the daemon's socket, `master serve`'s socket and the
//! CLI's in-process mode, so all behave identically.
//!
//! A request's effect beyond the state (a fleet order to send over the backplane) is
//! returned to the caller in its [`Outcome`]; nothing waits in shared state for someone
//! to pick it up.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy;
use crate::resolve::Plan;
use crate::state::{
    ClassView, FleetAction, FleetOrder, GcReport, ImportReport, Master, MasterError, NodeView,
    parse_pins, parse_release,
};
use crate::store::{
    Assignment, BootRecord, Event, NodeIdentity, PackageRecord, ReleaseInfo, Store, Target,
    TrustedKey,
};
use shelfboot_proto::id::MacAddr;

/// One operation. Paths must be absolute (the daemon has its own working directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Ping,
    /// The masters' cluster as this master sees it.
    ClusterStatus,
    /// A planned switchover to member `to`.
    ClusterSwitchover {
        to: u64,
    },
    /// Add member `id` at `addr` (it runs `master serve` with a `cluster.toml` of its own).
    ClusterAdd {
        id: u64,
        addr: String,
    },
    /// Remove member `id`.
    ClusterRemove {
        id: u64,
    },
    /// Set the order of succession (most preferred first).
    ClusterOrder {
        order: Vec<u64>,
    },
    Nodes,
    Packages,
    Releases,
    Classes {
        release: Option<String>,
    },
    Assignments,
    NodeAdd {
        identity: NodeIdentity,
        class: Option<String>,
    },
    NodeClass {
        mac: MacAddr,
        class: Option<String>,
    },
    Assign {
        target: String,
        release: Option<String>,
        pins: Vec<String>,
        clear: bool,
    },
    TestMode {
        mac: MacAddr,
        packages: Vec<String>,
        off: bool,
    },
    Rollback {
        target: String,
        to: String,
    },
    History {
        node: Option<MacAddr>,
        limit: u32,
    },
    /// Events with an id above `after`, oldest first (`master events`).
    Events {
        node: Option<MacAddr>,
        after: i64,
        limit: u32,
    },
    Explain {
        mac: MacAddr,
    },
    TrustAdd {
        path: PathBuf,
        comment: String,
    },
    TrustRemove {
        key_id: String,
    },
    TrustList,
    Import {
        path: PathBuf,
        activate: bool,
    },
    Gc {
        keep: u32,
    },
    /// A fleet action for `master serve` to send (one card or all).
    Fleet {
        action: FleetAction,
        target: Option<MacAddr>,
    },
}

impl Request {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::ClusterStatus => "cluster-status",
            Self::ClusterSwitchover { .. } => "cluster-switchover",
            Self::ClusterAdd { .. } => "cluster-add",
            Self::ClusterRemove { .. } => "cluster-remove",
            Self::ClusterOrder { .. } => "cluster-order",
            Self::Nodes => "nodes",
            Self::Packages => "packages",
            Self::Releases => "releases",
            Self::Classes { .. } => "classes",
            Self::Assignments => "assignments",
            Self::NodeAdd { .. } => "node-add",
            Self::NodeClass { .. } => "node-class",
            Self::Assign { .. } => "assign",
            Self::TestMode { .. } => "test-mode",
            Self::Rollback { .. } => "rollback",
            Self::History { .. } => "history",
            Self::Events { .. } => "events",
            Self::Explain { .. } => "explain",
            Self::TrustAdd { .. } => "trust-add",
            Self::TrustRemove { .. } => "trust-remove",
            Self::TrustList => "trust-list",
            Self::Import { .. } => "import",
            Self::Gc { .. } => "gc",
            Self::Fleet { .. } => "fleet",
        }
    }
}

/// The result of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", content = "data", rename_all = "kebab-case")]
pub enum Reply {
    Pong,
    Cluster(crate::cluster::ClusterStatus),
    Nodes(Vec<NodeView>),
    Packages {
        packages: Vec<PackageRecord>,
        boot_images: Vec<BootRecord>,
    },
    Releases(Vec<ReleaseInfo>),
    Classes(Vec<ClassView>),
    Assignments(Vec<Assignment>),
    NodeAdded {
        mac: MacAddr,
        new: bool,
    },
    Done(String),
    /// Plans of the cards an assignment or rollback affects.
    Plans(Vec<Plan>),
    TestMode(Option<Box<Plan>>),
    History(Vec<Event>),
    Explain(Box<Plan>),
    Trusted(TrustedKey),
    Keys(Vec<TrustedKey>),
    Imported(ImportReport),
    Gc(GcReport),
}

/// Parses an assignment target: `default`, a MAC (node) or a class name.
pub fn parse_target(s: &str) -> Result<Target, MasterError> {
    if s == "default" {
        return Ok(Target::Default);
    }
    if let Ok(mac) = s.parse::<MacAddr>() {
        return Ok(Target::Node(mac));
    }
    policy::check_name(s).map_err(|source| MasterError::Target {
        target: s.to_owned(),
        source,
    })?;
    Ok(Target::Class(s.to_owned()))
}

/// Whether a backplane service runs on this state and can send fleet orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backplane {
    /// `master serve` executes the request: it sends the fleet orders it returns.
    Served,
    /// The CLI in-process or `master daemon`: nothing could send a fleet order.
    Unserved,
}

/// What executing a request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The answer for the client.
    pub reply: Reply,
    /// A fleet order the caller (the serve loop) is to send now; only with
    /// [`Backplane::Served`].
    pub order: Option<FleetOrder>,
}

/// Runs one request.
pub fn execute<S: Store>(
    m: &mut Master<S>,
    req: Request,
    backplane: Backplane,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Outcome, MasterError> {
    let mut order = None;
    let reply = match req {
        Request::Ping => Reply::Pong,
        Request::ClusterStatus => Reply::Cluster(
            m.store()
                .cluster()
                .ok_or(MasterError::NotClustered)?
                .status_all(),
        ),
        Request::ClusterSwitchover { to } => {
            let c = m.store().cluster().ok_or(MasterError::NotClustered)?;
            let s = c
                .switchover(to, m.now())
                .map_err(|e| MasterError::Cluster(Box::new(e)))?;
            Reply::Done(format!("master {to} serves now, epoch {}", s.epoch))
        }
        Request::ClusterAdd { id, addr } => {
            let c = m.store().cluster().ok_or(MasterError::NotClustered)?;
            c.change_members(crate::cluster::net::MemberChange::Add {
                id,
                addr: addr.clone(),
            })
            .map_err(|e| MasterError::Cluster(Box::new(e)))?;
            Reply::Done(format!("master {id} at {addr} is a voting member"))
        }
        Request::ClusterRemove { id } => {
            let c = m.store().cluster().ok_or(MasterError::NotClustered)?;
            c.change_members(crate::cluster::net::MemberChange::Remove { id })
                .map_err(|e| MasterError::Cluster(Box::new(e)))?;
            Reply::Done(format!("master {id} is no longer a member"))
        }
        Request::ClusterOrder { order } => {
            let c = m.store().cluster().ok_or(MasterError::NotClustered)?;
            let text: Vec<String> = order.iter().map(ToString::to_string).collect();
            c.set_succession(order, m.now())
                .map_err(|e| MasterError::Cluster(Box::new(e)))?;
            Reply::Done(format!("order of succession: {}", text.join(", ")))
        }
        Request::Nodes => Reply::Nodes(m.nodes()?),
        Request::Packages => Reply::Packages {
            packages: m.packages()?,
            boot_images: m.boot_images()?,
        },
        Request::Releases => Reply::Releases(m.releases()?),
        Request::Classes { release } => {
            let r = release.as_deref().map(parse_release).transpose()?;
            Reply::Classes(m.classes(r.as_ref())?)
        }
        Request::Assignments => Reply::Assignments(m.assignments()?),
        Request::NodeAdd { identity, class } => {
            let new = m.add_node(&identity, class.as_deref())?;
            Reply::NodeAdded {
                mac: identity.mac,
                new,
            }
        }
        Request::NodeClass { mac, class } => {
            m.set_class(&mac, class.as_deref())?;
            Reply::Done(match class {
                Some(c) => format!("node {mac} is now in class {c}"),
                None => format!("node {mac} takes the first matching class"),
            })
        }
        Request::Assign {
            target,
            release,
            pins,
            clear,
        } => {
            let target = parse_target(&target)?;
            if clear {
                m.unassign(&target)?;
                Reply::Done(format!("{target}: assignment cleared"))
            } else {
                let release = release.as_deref().map(parse_release).transpose()?;
                Reply::Plans(m.assign(target, release, parse_pins(&pins)?, "assign")?)
            }
        }
        Request::TestMode { mac, packages, off } => {
            let pins = if off {
                None
            } else {
                Some(parse_pins(&packages)?)
            };
            Reply::TestMode(m.test_mode(&mac, pins)?.map(Box::new))
        }
        Request::Rollback { target, to } => {
            Reply::Plans(m.rollback(parse_target(&target)?, parse_release(&to)?)?)
        }
        Request::History { node, limit } => Reply::History(m.history(node.as_ref(), limit)?),
        Request::Events { node, after, limit } => {
            Reply::History(m.events_after(node.as_ref(), after, limit)?)
        }
        Request::Explain { mac } => Reply::Explain(Box::new(m.plan(&mac)?)),
        Request::TrustAdd { path, comment } => Reply::Trusted(m.trust_add(&path, &comment)?),
        Request::TrustRemove { key_id } => {
            m.trust_remove(&key_id)?;
            Reply::Done(format!("key {key_id} is no longer trusted"))
        }
        Request::TrustList => Reply::Keys(m.trust_list()?),
        Request::Import { path, activate } => {
            Reply::Imported(m.import_file(&path, activate, progress)?)
        }
        Request::Gc { keep } => Reply::Gc(m.gc(usize::try_from(keep).unwrap_or(usize::MAX))?),
        Request::Fleet { action, target } => {
            if backplane == Backplane::Unserved {
                if let Some(c) = m.store().cluster() {
                    return Err(MasterError::NotLeading {
                        action,
                        leader: c.status().leader,
                    });
                }
                return Err(MasterError::NotServing(action));
            }
            let o = FleetOrder { action, target };
            m.order(&o)?;
            let command = match action {
                FleetAction::Prepare => "BurnNow",
                FleetAction::WarmBoot => "WarmBoot",
                FleetAction::Reset => "Reset",
                FleetAction::Upgrade => "Upgrade",
            };
            let text = match &o.target {
                Some(mac) => format!(
                    "{action}: master serve sends the signed Command {command} to card {mac} now"
                ),
                None => format!(
                    "{action}: master serve broadcasts the signed Command {command} to every card now"
                ),
            };
            order = Some(o);
            Reply::Done(text)
        }
    };
    Ok(Outcome { reply, order })
}
