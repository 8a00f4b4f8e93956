//! Cards: registered by hand, forced into a class, put in or out of test mode, and what
//! the backplane service records of them (a Solicit's identity, state changes, errors,
//! inventories), grouped into batches.

use std::collections::BTreeMap;

use super::plans::CatalogSnapshot;
use super::{Master, MasterError};
use crate::resolve::{self, Catalog, Plan};
use crate::store::{
    Inventory, NodeHealth, NodeIdentity, NodeRecord, NodeState, Store, StoreError, TestMode,
};
use shelfboot_proto::id::MacAddr;

impl<S: Store> Master<S> {
    /// Registers a card by hand (before the backplane has seen it).
    pub fn add_node(
        &mut self,
        id: &NodeIdentity,
        class: Option<&str>,
    ) -> Result<bool, MasterError> {
        let t = self.now();
        let new = self.store.record_identity(id, t)?;
        if class.is_some() {
            self.store.set_node_class(&id.mac, class, t)?;
        }
        Ok(new)
    }

    /// Forces (or un-forces) a card's class.
    pub fn set_class(&mut self, mac: &MacAddr, class: Option<&str>) -> Result<(), MasterError> {
        Ok(self.store.set_node_class(mac, class, self.now())?)
    }

    /// Puts a card in test mode with these exact package versions (RAM only), or takes it
    /// out (`None`).
    pub fn test_mode(
        &mut self,
        mac: &MacAddr,
        packages: Option<BTreeMap<String, semver::Version>>,
    ) -> Result<Option<Plan>, MasterError> {
        let t = self.now();
        match packages {
            None => {
                self.store.set_test_mode(mac, None, t)?;
                Ok(None)
            }
            Some(packages) => {
                let node = self
                    .store
                    .node(mac)?
                    .ok_or_else(|| StoreError::UnknownNode(*mac))?;
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
                        node: *mac,
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
        self.store.record_identity(id, self.now())?;
        self.plan(&id.mac)
    }

    /// [`Master::record_solicit`] against a catalog read earlier.
    pub fn record_solicit_in(
        &mut self,
        catalog: &CatalogSnapshot,
        id: &NodeIdentity,
    ) -> Result<Plan, MasterError> {
        self.store.record_identity(id, self.now())?;
        self.plan_in(catalog, &id.mac)
    }

    /// A card changed state (Progress, Ready, entering test mode).
    pub fn record_state(&mut self, mac: &MacAddr, state: NodeState) -> Result<(), MasterError> {
        Ok(self.store.record_state(mac, state, None, self.now())?)
    }

    /// A card reported an error; it is now `failed` with this reason.
    pub fn record_error(&mut self, mac: &MacAddr, reason: &str) -> Result<(), MasterError> {
        Ok(self
            .store
            .record_state(mac, NodeState::Failed, Some(reason), self.now())?)
    }

    /// A card reported its inventory.
    pub fn record_inventory(&mut self, mac: &MacAddr, inv: &Inventory) -> Result<(), MasterError> {
        Ok(self.store.record_inventory(mac, inv, self.now())?)
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

    /// A present card has not been heard for `silent_secs`: it is absent.
    pub fn mark_absent(&mut self, mac: &MacAddr, silent_secs: u64) -> Result<(), MasterError> {
        Ok(self.store.mark_absent(mac, silent_secs, self.now())?)
    }

    /// An absent card is heard again.
    pub fn mark_present(&mut self, mac: &MacAddr) -> Result<(), MasterError> {
        Ok(self.store.mark_present(mac, self.now())?)
    }

    /// A card's resident agent reported the set it runs and its health.
    pub fn record_health(&mut self, mac: &MacAddr, health: &NodeHealth) -> Result<(), MasterError> {
        Ok(self.store.record_health(mac, health, self.now())?)
    }

    /// Sets when the serving backplane last heard each card, `(card, seconds ago)`:
    /// [`Master::nodes`] shows it where it is newer than the node database's record.
    pub fn set_heard(&mut self, heard: impl IntoIterator<Item = (MacAddr, u64)>) {
        let now = self.now();
        self.heard = heard
            .into_iter()
            .map(|(mac, ago)| (mac, heard_at(now, ago)))
            .collect();
    }
}

/// The Unix time `ago` seconds before `now`.
fn heard_at(now: i64, ago: u64) -> i64 {
    now.saturating_sub(i64::try_from(ago).unwrap_or(i64::MAX))
}

/// A card heard `ago` seconds before `now` (Unix seconds): that is its `last_seen` if the
/// node database's is older (the database's is written only when something about the
/// card changes, not at every frame).
pub fn note_heard(node: &mut NodeRecord, now: i64, ago: u64) {
    let t = heard_at(now, ago);
    node.last_seen = Some(node.last_seen.map_or(t, |s| s.max(t)));
}

impl<S: Store> Master<S> {
    /// When the serving backplane last heard `mac` (Unix seconds), as last set.
    pub(crate) fn heard(&self, mac: &MacAddr) -> Option<i64> {
        self.heard.get(mac).copied()
    }
}
