//! The master's state and the operations on it: the store (package and node databases)
//! and the blob directory, behind one [`Master`] value.
//!
//! One file per responsibility: [`trust`] (vendor keys), [`import`] (composite images in),
//! [`plans`] (the catalog plans are resolved against, plans, listings), [`assign`]
//! (assignments and rollback), [`nodes`] (cards: by hand, test mode, and what the
//! backplane reports), [`fleet`] (fleet orders the operator gives `master serve`), [`gc`]
//! (garbage collection), [`clock`] (where the state's timestamps come from).
//!
//! The daemon (behind the control socket), `master serve` and the CLI (in-process, as the
//! owner of the state) call these; neither the state lock nor the socket is done here (see
//! [`crate::control`]). State directory layout: `master.db` (+ WAL files), `blobs/`,
//! `lock`, `control.sock`.

pub mod assign;
pub mod clock;
pub mod fleet;
pub mod gc;
pub mod import;
pub mod nodes;
pub mod plans;
pub mod trust;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::blobs::{BlobDir, BlobError};
use crate::image::manifest::ReleaseId;
use crate::keys::KeyError;
use crate::resolve::ResolveError;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use shelfboot_proto::id::Digest;
use shelfboot_proto::id::MacAddr;

pub use clock::{Clock, FixedClock, SystemClock};
pub use fleet::{FleetAction, FleetOrder};
pub use gc::GcReport;
pub use import::{ImportError, ImportReport};
pub use nodes::note_heard;
pub use plans::{CatalogSnapshot, ClassView, NodeView};

/// Errors of master operations.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot create state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read image {path}")]
    OpenImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("import of {path} failed; nothing was changed")]
    Import {
        path: String,
        #[source]
        source: Box<ImportError>,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("cannot make a plan for node {node}")]
    Plan {
        node: MacAddr,
        #[source]
        source: Box<ResolveError>,
    },
    #[error("'{0}' is not NAME@VERSION (e.g. shelf-os@1.2.0)")]
    ReleaseSyntax(String),
    #[error("'{0}' is not NAME=VERSION (e.g. routing=2.1.0)")]
    PinSyntax(String),
    #[error("'{target}' is not 'default', a MAC address or a class name")]
    Target {
        target: String,
        #[source]
        source: crate::policy::PolicyError,
    },
    #[error("gc would remove blob {0} that a current plan needs; refusing (this is a bug)")]
    GcWouldBreakPlan(Digest),
    #[error(
        "this master is not in a cluster (its state directory has no cluster.toml; see `master cluster init`)"
    )]
    NotClustered,
    #[error(
        "cannot order {action}: this master does not serve the backplane (the serving master is {}); give the order there",
        leader.map_or_else(|| "not known: an election is under way".to_owned(), |l| format!("member {l}"))
    )]
    NotLeading {
        action: FleetAction,
        leader: Option<u64>,
    },
    #[error("masters' cluster")]
    Cluster(#[source] Box<crate::cluster::ClusterError>),
    #[error(
        "this master is a member of a masters' cluster: its databases change only through a running `master serve`, which replicates them; start it and retry"
    )]
    ClusterNotRunning,
    #[error(
        "cannot order {0}: no `master serve` runs on this state directory (fleet actions go out over the backplane; start `master serve` and retry)"
    )]
    NotServing(FleetAction),
}

/// Parses `NAME@VERSION`.
pub fn parse_release(s: &str) -> Result<ReleaseId, MasterError> {
    let (name, version) = s
        .split_once('@')
        .ok_or_else(|| MasterError::ReleaseSyntax(s.to_owned()))?;
    Ok(ReleaseId {
        name: name.to_owned(),
        version: version
            .parse()
            .map_err(|_| MasterError::ReleaseSyntax(s.to_owned()))?,
    })
}

/// Parses `NAME=VERSION` pins.
pub fn parse_pins(pins: &[String]) -> Result<BTreeMap<String, semver::Version>, MasterError> {
    pins.iter()
        .map(|p| {
            let (n, v) = p
                .split_once('=')
                .ok_or_else(|| MasterError::PinSyntax(p.clone()))?;
            let v = v.parse().map_err(|_| MasterError::PinSyntax(p.clone()))?;
            Ok((n.to_owned(), v))
        })
        .collect()
}

/// The master's state: the store, the blob directory and the clock its records are
/// stamped with.
#[derive(Debug)]
pub struct Master<S: Store = SqliteStore> {
    store: S,
    blobs: BlobDir,
    clock: Box<dyn Clock>,
    /// When the serving backplane last heard each card (seconds since the epoch): newer
    /// than the node database's `last_seen`, which is written only when something about
    /// the card changes. Empty when nothing serves.
    heard: std::collections::HashMap<shelfboot_proto::id::MacAddr, i64>,
}

impl Master<SqliteStore> {
    /// Opens (creating if needed) the state directory. The caller holds the state lock.
    pub fn open(state: &Path) -> Result<Self, MasterError> {
        fs::create_dir_all(state).map_err(|source| MasterError::StateDir {
            path: state.to_path_buf(),
            source,
        })?;
        let store = SqliteStore::open(&state.join("master.db"))?;
        let blobs = BlobDir::open(&state.join("blobs"))?;
        Ok(Self::with_store(store, blobs))
    }
}

impl<S: Store> Master<S> {
    /// A master over any store and blob directory, stamping records with the system
    /// clock.
    pub fn with_store(store: S, blobs: BlobDir) -> Self {
        Self {
            store,
            blobs,
            clock: Box::new(SystemClock),
            heard: std::collections::HashMap::new(),
        }
    }

    /// Stamps records with `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// The time records are stamped with, seconds since the epoch.
    pub(crate) fn now(&self) -> i64 {
        self.clock.unix_secs()
    }

    /// The store (read-only).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The blob directory.
    pub fn blobs(&self) -> &BlobDir {
        &self.blobs
    }
}

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;
