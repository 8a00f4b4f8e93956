//! Assignments (what a class, a card or the default runs) and rollback, which is an
//! assignment back to an older release. A change that would leave a card without a plan
//! is refused before anything is written.

use std::collections::BTreeMap;

use super::{Master, MasterError};
use crate::image::manifest::ReleaseId;
use crate::resolve::{self, Catalog, Plan};
use crate::store::{Assignment, Store, StoreError, Target};

impl<S: Store> Master<S> {
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
            set_at: self.now(),
        };
        let plans = self.check_assignment(&a)?;
        self.store.set_assignment(&a, kind, a.set_at)?;
        Ok(plans)
    }

    /// Removes an assignment.
    pub fn unassign(&mut self, target: &Target) -> Result<(), MasterError> {
        Ok(self.store.clear_assignment(target, self.now())?)
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
            return Err(StoreError::UnknownNode(*m).into());
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
                Err(e) if was.is_ok() || a.target == Target::Node(*mac) => {
                    return Err(MasterError::Plan {
                        node: *mac,
                        source: Box::new(e),
                    });
                }
                // A card that had no plan before is not made worse.
                Err(_) => {}
            }
        }
        Ok(plans)
    }
}
