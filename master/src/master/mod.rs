//! The master's operations on its state directory: import, trust, nodes, assignments,
//! test mode, rollback, history, explain, gc, and the calls the backplane service will
//! make (record a Solicit's identity, state changes, errors, inventories).
//!
//! Both the daemon (behind the control socket) and the CLI (directly, under the state
//! lock) call these; neither the locking nor the socket is done here (see
//! [`crate::control`]). State directory layout: `master.db` (+ WAL files), `blobs/`,
//! `lock`, `control.sock`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::blobs::{BlobDir, BlobError, PutOutcome};
use crate::image::format::{ImageError, VerifiedImage};
use crate::image::manifest::{HexDigest, Manifest, ReleaseId};
use crate::keys::{self, KeyError};
use crate::policy::Mac;
use crate::resolve::{self, Catalog, Plan, ResolveError};
use crate::store::sqlite::SqliteStore;
use crate::store::{
    Assignment, ImportOutcome, Inventory, NewRelease, NodeIdentity, NodeRecord, NodeState, Store,
    StoreError, Target, TestMode, TrustedKey,
};

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
        node: Mac,
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
    GcWouldBreakPlan(HexDigest),
    #[error(
        "cannot order {0}: no `master serve` runs on this state directory (fleet actions go out over the backplane; start `master serve` and retry)"
    )]
    NotServing(FleetAction),
}

/// A fleet action the operator orders; `master serve` sends it as a signed Command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FleetAction {
    /// "Prepare now": every card (or one) fetches and commits its plan (Command BurnNow).
    Prepare,
    /// System-wide warm boot: cards reset and only validate (Command WarmBoot).
    WarmBoot,
    /// Reset: cards reset and solicit as after a master-ordered reset (Command Reset).
    Reset,
}

impl std::fmt::Display for FleetAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FleetAction::Prepare => "prepare",
            FleetAction::WarmBoot => "warm-boot",
            FleetAction::Reset => "reset",
        })
    }
}

/// An ordered fleet action, waiting for the serve loop to send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetOrder {
    /// What to do.
    pub action: FleetAction,
    /// One card, or every card on the backplane.
    pub target: Option<Mac>,
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("image rejected")]
    Image(#[from] ImageError),
    #[error("blob rejected")]
    Blob(#[from] BlobError),
    #[error("the release's dependencies cannot be satisfied")]
    Unsatisfiable(#[source] Box<ResolveError>),
    #[error("the release clashes with the database")]
    Store(#[from] StoreError),
}

/// Current time in seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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

/// Everything plan resolution reads, loaded once.
type CatalogParts = (
    BTreeMap<ReleaseId, Manifest>,
    Vec<crate::store::PackageRecord>,
    Vec<Assignment>,
);

/// What plans are resolved against (releases with their manifests, package builds,
/// assignments), read once. The backplane service keeps one between operator requests, so
/// that a Solicit costs one node lookup and one resolution, not a re-read and re-parse of
/// every manifest. It is stale after any operation that imports, assigns, rolls back or
/// collects garbage: read a new one then.
#[derive(Debug, Clone)]
pub struct CatalogSnapshot(CatalogParts);

/// Result of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    pub release: ReleaseId,
    pub outcome: ImportOutcome,
    pub signer: String,
    pub blobs_stored: u32,
    pub blobs_present: u32,
    pub bytes: u64,
}

/// A card with its plan, for `master nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub node: NodeRecord,
    pub plan: Option<Plan>,
    pub plan_error: Option<String>,
    /// Whether the reported inventory digest equals the plan digest.
    pub in_sync: Option<bool>,
}

/// A class, for `master classes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassView {
    pub release: ReleaseId,
    pub class: crate::policy::ClassSpec,
    pub assignment: Option<Assignment>,
    /// Cards whose plan uses this class.
    pub nodes: Vec<Mac>,
}

/// Result of `gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub kept_releases: Vec<ReleaseId>,
    pub deleted_releases: Vec<ReleaseId>,
    pub removed_blobs: u32,
    pub removed_temp_files: u32,
}

/// The master's state: the store plus the blob directory.
#[derive(Debug)]
pub struct Master<S: Store = SqliteStore> {
    store: S,
    blobs: BlobDir,
    /// True while `master serve` owns this master (fleet orders can go out).
    serving: bool,
    /// Fleet orders not yet taken by the serve loop.
    orders: Vec<FleetOrder>,
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
    /// A master over any store and blob directory.
    pub fn with_store(store: S, blobs: BlobDir) -> Self {
        Self {
            store,
            blobs,
            serving: false,
            orders: Vec::new(),
        }
    }

    /// `master serve` says it owns this master: fleet orders are accepted from now on.
    pub fn set_serving(&mut self, serving: bool) {
        self.serving = serving;
        if !serving {
            self.orders.clear();
        }
    }

    /// Queues a fleet action for the serve loop. Without a serving master nothing could
    /// send it: refused with [`MasterError::NotServing`]. A target must be a known card.
    /// A prepare also marks the card (or every known card) "prepare pending": the serve
    /// loop answers its next Solicit with a BurnNow before the plan, until it is Ready.
    pub fn order(&mut self, order: FleetOrder) -> Result<(), MasterError> {
        if !self.serving {
            return Err(MasterError::NotServing(order.action));
        }
        if let Some(mac) = &order.target {
            // The plan lookup names an unknown card in its error.
            self.plan(mac)?;
        }
        if order.action == FleetAction::Prepare {
            self.store.mark_prepare(order.target.as_ref(), now())?;
        }
        self.orders.push(order);
        Ok(())
    }

    /// True if the card is marked "prepare pending" (see [`Master::order`]).
    pub fn prepare_pending(&self, mac: &Mac) -> Result<bool, MasterError> {
        Ok(self.store.prepare_pending(mac)?)
    }

    /// A card reported Ready: if it was marked "prepare pending", the mark is cleared and
    /// the card recorded `ready` ("prepared, holding for warm boot"); returns true then.
    pub fn record_prepared(&mut self, mac: &Mac) -> Result<bool, MasterError> {
        Ok(self.store.record_prepared(mac, now())?)
    }

    /// The queued fleet orders, oldest first (the serve loop sends them).
    pub fn take_orders(&mut self) -> Vec<FleetOrder> {
        std::mem::take(&mut self.orders)
    }

    /// The store (read-only).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The blob directory.
    pub fn blobs(&self) -> &BlobDir {
        &self.blobs
    }

    // ---------------------------------------------------------------- trust

    /// Trusts the public key in `path`.
    pub fn trust_add(&mut self, path: &Path, comment: &str) -> Result<TrustedKey, MasterError> {
        let key = keys::read_verifying_key(path)?;
        let rec = TrustedKey {
            key_id: keys::key_id(&key),
            public_key: hex::encode(key.as_bytes()),
            comment: if comment.is_empty() {
                path.display().to_string()
            } else {
                comment.to_owned()
            },
            added_at: now(),
        };
        self.store.trust_key(&rec)?;
        Ok(rec)
    }

    /// Stops trusting a key.
    pub fn trust_remove(&mut self, key_id: &str) -> Result<(), MasterError> {
        Ok(self.store.untrust_key(key_id, now())?)
    }

    /// Trusted keys.
    pub fn trust_list(&self) -> Result<Vec<TrustedKey>, MasterError> {
        Ok(self.store.trusted_keys()?)
    }

    // ---------------------------------------------------------------- import

    /// Imports the image at `path`; see [`Master::import_from`].
    pub fn import_file(
        &mut self,
        path: &Path,
        activate: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ImportReport, MasterError> {
        let file = fs::File::open(path).map_err(|source| MasterError::OpenImage {
            path: path.to_path_buf(),
            source,
        })?;
        self.import_from(io::BufReader::new(file), activate, progress)
            .map_err(|source| MasterError::Import {
                path: path.display().to_string(),
                source: Box::new(source),
            })
    }

    /// Imports a composite image from a stream, all or nothing: on any error the
    /// databases and the blob directory are as they were. `progress(done, total)` counts
    /// blob bytes. Re-importing an identical image verifies it and changes nothing.
    pub fn import_from(
        &mut self,
        src: impl Read,
        activate: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ImportReport, ImportError> {
        let trusted: BTreeSet<[u8; 32]> = self
            .store
            .trusted_keys()?
            .iter()
            .filter_map(|k| {
                let mut b = [0u8; 32];
                hex::decode_to_slice(&k.public_key, &mut b).ok().map(|()| b)
            })
            .collect();
        let mut image =
            VerifiedImage::open(src, |k: &VerifyingKey| trusted.contains(k.as_bytes()))?;
        let manifest = image.manifest.clone();
        let sha = HexDigest(image.manifest_sha256);
        let signer = keys::key_id(&image.signer);
        resolve::check_release(&manifest).map_err(|e| ImportError::Unsatisfiable(Box::new(e)))?;
        let already = self.store.check_import(&manifest, &sha)?;

        let total = manifest.blob_bytes();
        let mut done = 0u64;
        let mut new_blobs = Vec::new();
        let mut present = 0u32;
        let result = (|| -> Result<ImportOutcome, ImportError> {
            for b in &manifest.blobs {
                let out = self
                    .blobs
                    .put(&b.sha256.0, b.size, image.blob_stream(), &mut |n| {
                        done += n;
                        progress(done, total);
                    })?;
                match out {
                    PutOutcome::Stored => new_blobs.push(b.sha256),
                    PutOutcome::AlreadyPresent => present += 1,
                }
            }
            image.finish()?;
            if already {
                return Ok(ImportOutcome::AlreadyPresent);
            }
            Ok(self.store.import_release(&NewRelease {
                manifest: &manifest,
                manifest_sha256: sha,
                signer_key_id: signer.clone(),
                now: now(),
                activate,
            })?)
        })();
        match result {
            Ok(outcome) => Ok(ImportReport {
                release: manifest.release.clone(),
                outcome,
                signer,
                blobs_stored: u32::try_from(new_blobs.len()).unwrap_or(u32::MAX),
                blobs_present: present,
                bytes: total,
            }),
            Err(e) => {
                for b in &new_blobs {
                    if let Err(rm) = self.blobs.remove(&b.0) {
                        log::warn!("cannot remove blob of failed import ({rm}); gc will");
                    }
                }
                Err(e)
            }
        }
    }

    // ---------------------------------------------------------------- listings

    /// All imported releases.
    pub fn releases(&self) -> Result<Vec<crate::store::ReleaseInfo>, MasterError> {
        Ok(self.store.releases()?)
    }

    /// All package builds.
    pub fn packages(&self) -> Result<Vec<crate::store::PackageRecord>, MasterError> {
        Ok(self.store.packages()?)
    }

    /// All boot image builds.
    pub fn boot_images(&self) -> Result<Vec<crate::store::BootRecord>, MasterError> {
        Ok(self.store.boot_images()?)
    }

    fn catalog_parts(&self) -> Result<CatalogParts, MasterError> {
        let mut releases = BTreeMap::new();
        for r in self.store.releases()? {
            if let Some(m) = self.store.release_manifest(&r.release)? {
                releases.insert(r.release, m);
            }
        }
        Ok((releases, self.store.packages()?, self.store.assignments()?))
    }

    /// The plan of one card.
    pub fn plan(&self, mac: &Mac) -> Result<Plan, MasterError> {
        self.plan_in(&self.catalog()?, mac)
    }

    /// Reads the catalog plans are resolved against (see [`CatalogSnapshot`]).
    pub fn catalog(&self) -> Result<CatalogSnapshot, MasterError> {
        Ok(CatalogSnapshot(self.catalog_parts()?))
    }

    /// The plan of one card against a catalog read earlier by [`Master::catalog`].
    pub fn plan_in(&self, catalog: &CatalogSnapshot, mac: &Mac) -> Result<Plan, MasterError> {
        let node = self
            .store
            .node(mac)?
            .ok_or_else(|| StoreError::UnknownNode(mac.clone()))?;
        let (releases, packages, assignments) = &catalog.0;
        let cat = Catalog {
            releases,
            packages,
            assignments,
        };
        resolve::resolve_node(&cat, &node).map_err(|source| MasterError::Plan {
            node: mac.clone(),
            source: Box::new(source),
        })
    }

    /// Every card with its plan (or why it has none).
    pub fn nodes(&self) -> Result<Vec<NodeView>, MasterError> {
        let (releases, packages, assignments) = self.catalog_parts()?;
        let cat = Catalog {
            releases: &releases,
            packages: &packages,
            assignments: &assignments,
        };
        Ok(self
            .store
            .nodes()?
            .into_iter()
            .map(|node| {
                let (plan, plan_error) = match resolve::resolve_node(&cat, &node) {
                    Ok(p) => (Some(p), None),
                    Err(e) => (None, Some(crate::error_chain(&e).join(": "))),
                };
                let in_sync = match (&plan, node.inventory.as_ref().and_then(|i| i.digest)) {
                    (Some(p), Some(d)) => Some(p.digest == d),
                    _ => None,
                };
                NodeView {
                    node,
                    plan,
                    plan_error,
                    in_sync,
                }
            })
            .collect())
    }

    /// Classes of a release (default: the default release) with their members.
    pub fn classes(&self, release: Option<&ReleaseId>) -> Result<Vec<ClassView>, MasterError> {
        let assignments = self.store.assignments()?;
        let release = match release {
            Some(r) => r.clone(),
            None => match assignments
                .iter()
                .find(|a| a.target == Target::Default)
                .and_then(|a| a.release.clone())
            {
                Some(r) => r,
                None => return Ok(Vec::new()),
            },
        };
        let m = self
            .store
            .release_manifest(&release)?
            .ok_or_else(|| StoreError::UnknownRelease(release.to_string()))?;
        let views = self.nodes()?;
        Ok(m.classes
            .iter()
            .map(|c| ClassView {
                release: release.clone(),
                assignment: assignments
                    .iter()
                    .find(|a| a.target == Target::Class(c.name.clone()))
                    .cloned(),
                nodes: views
                    .iter()
                    .filter(|v| {
                        v.plan
                            .as_ref()
                            .is_some_and(|p| p.class == c.name && p.release == release)
                    })
                    .map(|v| v.node.identity.mac.clone())
                    .collect(),
                class: c.clone(),
            })
            .collect())
    }

    /// History, newest last.
    pub fn history(
        &self,
        node: Option<&Mac>,
        limit: u32,
    ) -> Result<Vec<crate::store::Event>, MasterError> {
        Ok(self.store.events(node, limit)?)
    }

    /// All assignments.
    pub fn assignments(&self) -> Result<Vec<Assignment>, MasterError> {
        Ok(self.store.assignments()?)
    }

    // ---------------------------------------------------------------- operator actions

    /// Registers a card by hand (before the backplane has seen it).
    pub fn add_node(
        &mut self,
        id: &NodeIdentity,
        class: Option<&str>,
    ) -> Result<bool, MasterError> {
        let t = now();
        let new = self.store.record_identity(id, t)?;
        if class.is_some() {
            self.store.set_node_class(&id.mac, class, t)?;
        }
        Ok(new)
    }

    /// Forces (or un-forces) a card's class.
    pub fn set_class(&mut self, mac: &Mac, class: Option<&str>) -> Result<(), MasterError> {
        Ok(self.store.set_node_class(mac, class, now())?)
    }

    /// Sets what a target runs. Checks that every affected plan still resolves first; if
    /// one does not, nothing changes.
    pub fn assign(
        &mut self,
        target: Target,
        release: Option<ReleaseId>,
        pins: BTreeMap<String, semver::Version>,
        kind: &str,
    ) -> Result<Vec<Plan>, MasterError> {
        let a = Assignment {
            target: target.clone(),
            release,
            pins,
            set_at: now(),
        };
        let plans = self.check_assignment(&a)?;
        self.store.set_assignment(&a, kind, a.set_at)?;
        Ok(plans)
    }

    /// Removes an assignment.
    pub fn unassign(&mut self, target: &Target) -> Result<(), MasterError> {
        Ok(self.store.clear_assignment(target, now())?)
    }

    /// Points a class or node (or the default) back at an older release, dropping pins.
    pub fn rollback(&mut self, target: Target, to: ReleaseId) -> Result<Vec<Plan>, MasterError> {
        self.assign(target, Some(to), BTreeMap::new(), "rollback")
    }

    /// Resolves the plans of the cards an assignment would affect, with it in place.
    /// Refuses (changing nothing) if a card that has a plan now would lose it, or if the
    /// target card itself would have none.
    fn check_assignment(&self, a: &Assignment) -> Result<Vec<Plan>, MasterError> {
        let (releases, packages, old) = self.catalog_parts()?;
        if let Some(r) = &a.release
            && !releases.contains_key(r)
        {
            return Err(StoreError::UnknownRelease(r.to_string()).into());
        }
        let nodes = self.store.nodes()?;
        if let Target::Node(m) = &a.target
            && !nodes.iter().any(|n| &n.identity.mac == m)
        {
            return Err(StoreError::UnknownNode(m.clone()).into());
        }
        let mut new = old.clone();
        new.retain(|x| x.target != a.target);
        new.push(a.clone());
        let before = Catalog {
            releases: &releases,
            packages: &packages,
            assignments: &old,
        };
        let after = Catalog {
            assignments: &new,
            ..before
        };
        let mut plans = Vec::new();
        for node in &nodes {
            let mac = &node.identity.mac;
            let was = resolve::resolve_node(&before, node);
            match resolve::resolve_node(&after, node) {
                Ok(p) => {
                    let affected = match &a.target {
                        Target::Default => true,
                        Target::Node(m) => m == mac,
                        Target::Class(c) => {
                            &p.class == c || was.as_ref().is_ok_and(|w| &w.class == c)
                        }
                    };
                    if affected {
                        plans.push(p);
                    }
                }
                Err(e) if was.is_ok() || a.target == Target::Node(mac.clone()) => {
                    return Err(MasterError::Plan {
                        node: mac.clone(),
                        source: Box::new(e),
                    });
                }
                // A card that had no plan before is not made worse.
                Err(_) => {}
            }
        }
        Ok(plans)
    }

    /// Puts a card in test mode with these exact package versions (RAM only), or takes it
    /// out (`None`).
    pub fn test_mode(
        &mut self,
        mac: &Mac,
        packages: Option<BTreeMap<String, semver::Version>>,
    ) -> Result<Option<Plan>, MasterError> {
        let t = now();
        match packages {
            None => {
                self.store.set_test_mode(mac, None, t)?;
                Ok(None)
            }
            Some(packages) => {
                let node = self
                    .store
                    .node(mac)?
                    .ok_or_else(|| StoreError::UnknownNode(mac.clone()))?;
                let test = TestMode { packages, since: t };
                let (releases, pkgs, assignments) = self.catalog_parts()?;
                let cat = Catalog {
                    releases: &releases,
                    packages: &pkgs,
                    assignments: &assignments,
                };
                let trial = NodeRecord {
                    test_mode: Some(test.clone()),
                    ..node
                };
                let plan =
                    resolve::resolve_node(&cat, &trial).map_err(|source| MasterError::Plan {
                        node: mac.clone(),
                        source: Box::new(source),
                    })?;
                self.store.set_test_mode(mac, Some(&test), t)?;
                Ok(Some(plan))
            }
        }
    }

    // ---------------------------------------------------------------- backplane calls

    /// A Solicit arrived: record who the card is; returns its plan (or why there is none).
    pub fn record_solicit(&mut self, id: &NodeIdentity) -> Result<Plan, MasterError> {
        self.store.record_identity(id, now())?;
        self.plan(&id.mac)
    }

    /// [`Master::record_solicit`] against a catalog read earlier.
    pub fn record_solicit_in(
        &mut self,
        catalog: &CatalogSnapshot,
        id: &NodeIdentity,
    ) -> Result<Plan, MasterError> {
        self.store.record_identity(id, now())?;
        self.plan_in(catalog, &id.mac)
    }

    /// A card changed state (Progress, Ready, entering test mode).
    pub fn record_state(&mut self, mac: &Mac, state: NodeState) -> Result<(), MasterError> {
        Ok(self.store.record_state(mac, state, None, now())?)
    }

    /// A card reported an error; it is now `failed` with this reason.
    pub fn record_error(&mut self, mac: &Mac, reason: &str) -> Result<(), MasterError> {
        Ok(self
            .store
            .record_state(mac, NodeState::Failed, Some(reason), now())?)
    }

    /// A card reported its inventory.
    pub fn record_inventory(&mut self, mac: &Mac, inv: &Inventory) -> Result<(), MasterError> {
        Ok(self.store.record_inventory(mac, inv, now())?)
    }

    /// Groups the following backplane writes into one transaction (see
    /// [`crate::store::Store::begin_batch`]).
    pub fn begin_batch(&mut self) -> Result<(), MasterError> {
        Ok(self.store.begin_batch()?)
    }

    /// Commits the writes grouped since [`Master::begin_batch`].
    pub fn end_batch(&mut self) -> Result<(), MasterError> {
        Ok(self.store.end_batch()?)
    }

    /// A card has not been heard from.
    pub fn mark_absent(&mut self, mac: &Mac) -> Result<(), MasterError> {
        Ok(self.store.mark_absent(mac, now())?)
    }

    // ---------------------------------------------------------------- gc

    /// Deletes releases beyond the `keep` newest, except those an assignment or a current
    /// plan references; then artifacts and blobs nothing references; then temp files.
    pub fn gc(&mut self, keep: usize) -> Result<GcReport, MasterError> {
        let releases = self.store.releases()?;
        let mut keep_set: BTreeSet<ReleaseId> = releases
            .iter()
            .rev()
            .take(keep)
            .map(|r| r.release.clone())
            .collect();
        for a in self.store.assignments()? {
            keep_set.extend(a.release);
        }
        let plans: Vec<Plan> = self.nodes()?.into_iter().filter_map(|v| v.plan).collect();
        keep_set.extend(plans.iter().map(|p| p.release.clone()));
        let delete: Vec<ReleaseId> = releases
            .iter()
            .map(|r| r.release.clone())
            .filter(|r| !keep_set.contains(r))
            .collect();
        if !delete.is_empty() {
            self.store.delete_releases(&delete, now())?;
        }
        let referenced = self.store.referenced_blobs()?;
        for p in &plans {
            for b in p.blobs() {
                if !referenced.contains(&b.sha256) {
                    return Err(MasterError::GcWouldBreakPlan(b.sha256));
                }
            }
        }
        let mut removed = 0u32;
        for sha in self.blobs.list()? {
            if !referenced.contains(&HexDigest(sha)) {
                self.blobs.remove(&sha)?;
                removed += 1;
            }
        }
        let tmp = self.blobs.clean_tmp()?;
        Ok(GcReport {
            kept_releases: keep_set.into_iter().collect(),
            deleted_releases: delete,
            removed_blobs: removed,
            removed_temp_files: u32::try_from(tmp).unwrap_or(u32::MAX),
        })
    }
}

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;
