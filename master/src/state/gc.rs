//! Garbage collection: releases beyond the newest few that nothing references, then the
//! artifacts and blobs nothing references, then temporary files.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Master, MasterError};
use crate::image::manifest::ReleaseId;
use crate::resolve::Plan;
use crate::store::Store;

/// Result of `gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub kept_releases: Vec<ReleaseId>,
    pub deleted_releases: Vec<ReleaseId>,
    pub removed_blobs: u32,
    pub removed_temp_files: u32,
}

impl<S: Store> Master<S> {
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
            self.store.delete_releases(&delete, self.now())?;
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
            if !referenced.contains(&sha) {
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
