//! Plans: the catalog they are resolved against (releases, package builds,
//! assignments), the plan of one card or of every card, classes with their members, and
//! the plain listings of what the store holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Master, MasterError};
use crate::image::manifest::{Manifest, ReleaseId};
use crate::resolve::{self, Catalog, Plan};
use crate::store::{Assignment, NodeRecord, Store, StoreError, Target};
use shelfboot_proto::id::MacAddr;

/// Everything plan resolution reads, loaded once.
pub(super) type CatalogParts = (
    BTreeMap<ReleaseId, Manifest>,
    Vec<crate::store::PackageRecord>,
    Vec<Assignment>,
);

/// What plans are resolved against (releases with their manifests, package builds,
/// assignments), read once. The backplane service keeps one between operator requests, so
/// that a Solicit costs one node lookup and one resolution, not a re-read and re-parse of
/// every manifest. It is stale after any operation that imports, assigns, rolls back or
/// collects garbage: read a new one then.
/// The plans resolved against it are kept beside it ([`resolve::PlanCache`]), so cards
/// of one class, type, arch and features cost one solve between two snapshots.
#[derive(Debug, Clone)]
pub struct CatalogSnapshot(CatalogParts, resolve::PlanCache);

impl CatalogSnapshot {
    /// Plans solved against this snapshot and kept for cards alike.
    pub fn cached_plans(&self) -> usize {
        self.1.len()
    }
}

/// A card with its plan, for `master nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub node: NodeRecord,
    pub plan: Option<Plan>,
    pub plan_error: Option<String>,
    /// Whether the reported inventory digest equals the plan digest.
    pub in_sync: Option<bool>,
    /// Seconds since the card was last heard, when this listing was made (none: never).
    #[serde(default)]
    pub seen_ago: Option<u64>,
}

/// A class, for `master classes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassView {
    pub release: ReleaseId,
    pub class: crate::policy::ClassSpec,
    pub assignment: Option<Assignment>,
    /// Cards whose plan uses this class.
    pub nodes: Vec<MacAddr>,
}

impl<S: Store> Master<S> {
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

    /// Everything plan resolution reads, read now.
    pub(super) fn catalog_parts(&self) -> Result<CatalogParts, MasterError> {
        let mut releases = BTreeMap::new();
        for r in self.store.releases()? {
            if let Some(m) = self.store.release_manifest(&r.release)? {
                releases.insert(r.release, m);
            }
        }
        Ok((releases, self.store.packages()?, self.store.assignments()?))
    }

    /// The plan of one card.
    pub fn plan(&self, mac: &MacAddr) -> Result<Plan, MasterError> {
        self.plan_in(&self.catalog()?, mac)
    }

    /// Reads the catalog plans are resolved against (see [`CatalogSnapshot`]).
    pub fn catalog(&self) -> Result<CatalogSnapshot, MasterError> {
        Ok(CatalogSnapshot(
            self.catalog_parts()?,
            resolve::PlanCache::default(),
        ))
    }

    /// The plan of one card against a catalog read earlier by [`Master::catalog`].
    pub fn plan_in(&self, catalog: &CatalogSnapshot, mac: &MacAddr) -> Result<Plan, MasterError> {
        let node = self
            .store
            .node(mac)?
            .ok_or_else(|| StoreError::UnknownNode(*mac))?;
        let (releases, packages, assignments) = &catalog.0;
        let cat = Catalog {
            releases,
            packages,
            assignments,
        };
        resolve::resolve_node_cached(&cat, &node, &catalog.1).map_err(|source| MasterError::Plan {
            node: *mac,
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
        let now = self.now();
        Ok(self
            .store
            .nodes()?
            .into_iter()
            .map(|mut node| {
                if let Some(at) = self.heard(&node.identity.mac) {
                    super::nodes::note_heard(&mut node, at, 0);
                }
                let seen_ago = node
                    .last_seen
                    .map(|s| u64::try_from(now.saturating_sub(s)).unwrap_or(0));
                let (plan, plan_error) = match resolve::resolve_node(&cat, &node) {
                    Ok(p) => (Some(p), None),
                    Err(e) => (None, Some(shelfboot_proto::report::error_chain(&e))),
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
                    seen_ago,
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
                    .map(|v| v.node.identity.mac)
                    .collect(),
                class: c.clone(),
            })
            .collect())
    }

    /// History, newest last.
    pub fn history(
        &self,
        node: Option<&MacAddr>,
        limit: u32,
    ) -> Result<Vec<crate::store::Event>, MasterError> {
        Ok(self.store.events(node, limit)?)
    }

    /// Events with an id above `after`, oldest first, at most `limit`.
    pub fn events_after(
        &self,
        node: Option<&MacAddr>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<crate::store::Event>, MasterError> {
        Ok(self.store.events_after(node, after, limit)?)
    }

    /// All assignments.
    pub fn assignments(&self) -> Result<Vec<Assignment>, MasterError> {
        Ok(self.store.assignments()?)
    }
}
