//! The agent's two stores: the card's flash, and the optional RAM store of test mode.
//! A card without usable flash has one store, in RAM, as its main store: every plan is
//! applied there and nothing is reported as persisted.
//!
//! A plan with `persist = true` is staged and committed on flash; a plan with
//! `persist = false` (test mode) goes to the RAM store only: a [`FileVolumes`] directory
//! on tmpfs whose capacity the caller bounded by the free RAM, so "no space" there is the
//! same structured [`StoreError::NoSpace`] as on flash. While a RAM plan is active, no
//! operation reaches the flash store: no volume is created, written, renamed or removed
//! and the inventory stays as it was (the boot counter included).
//!
//! The staging operations ([`Stores::start`] .. [`Stores::commit`]) go to the store of the
//! plan being applied, chosen by [`Stores::select`]. This module does not decide anything:
//! the agent does.

use crate::flash::artifact::ArtifactRef;
use crate::flash::{FileVolumes, Inventory, Store, StoreError, Volumes};

/// Which store a plan is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Medium {
    /// The main store: the card's flash (persist = true), or on a card without usable
    /// flash its RAM store, which then takes every plan.
    Flash,
    /// The tmpfs RAM store (persist = false, test mode).
    Ram,
}

/// The flash store and the optional RAM store, with the one being staged into.
pub(super) struct Stores<V: Volumes> {
    pub(super) flash: Store<V>,
    pub(super) ram: Option<Store<FileVolumes>>,
    active: Medium,
    /// The main store is in RAM (a card without usable flash): every plan goes there and
    /// nothing it holds survives a reset.
    volatile: bool,
}

impl<V: Volumes> Stores<V> {
    pub(super) fn new(flash: Store<V>, volatile: bool) -> Self {
        Self {
            flash,
            ram: None,
            active: Medium::Flash,
            volatile,
        }
    }

    /// The store a plan goes to: its `persist` flag says flash or the RAM store; a card
    /// whose main store is in RAM has only that one.
    pub(super) fn medium_for(&self, persist: bool) -> Medium {
        if persist || self.volatile {
            Medium::Flash
        } else {
            Medium::Ram
        }
    }

    /// Apply the next plan to `m`. False if that store is absent (no RAM store).
    pub(super) fn select(&mut self, m: Medium) -> bool {
        if m == Medium::Ram && self.ram.is_none() {
            return false;
        }
        self.active = m;
        true
    }

    /// Whether the set committed in the active store survives a reset (on flash).
    pub(super) fn persists(&self) -> bool {
        self.active == Medium::Flash && !self.volatile
    }

    /// Whether the main store's committed set survives a reset (false: RAM).
    pub(super) fn main_persists(&self) -> bool {
        !self.volatile
    }

    /// The inventory of the active store.
    pub(super) fn active_inventory(&self) -> Option<&Inventory> {
        match (self.active, &self.ram) {
            (Medium::Ram, Some(r)) => r.inventory(),
            _ => self.flash.inventory(),
        }
    }

    /// The flash inventory (what Solicit reports and autonomy boots).
    pub(super) fn inventory(&self) -> Option<&Inventory> {
        self.flash.inventory()
    }

    /// What Solicit reports as installed: the flash inventory; nothing on a card whose
    /// main store is in RAM.
    pub(super) fn reported(&self) -> Option<&Inventory> {
        if self.volatile {
            None
        } else {
            self.flash.inventory()
        }
    }

    /// Runs `f` on the active store.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut dyn StagingStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match (self.active, &mut self.ram) {
            (Medium::Ram, Some(r)) => f(r),
            _ => f(&mut self.flash),
        }
    }

    /// See [`Store::verifies_readback`], of the active store.
    pub(super) fn verifies_readback(&mut self) -> bool {
        self.with(|s| Ok(s.verifies_readback())).unwrap_or(false)
    }

    /// See [`Store::start`], on the active store.
    pub(super) fn start(&mut self, a: &ArtifactRef) -> Result<(), StoreError> {
        self.with(|s| s.start(a))
    }

    /// See [`Store::write`], on the active store.
    pub(super) fn write(&mut self, a: &ArtifactRef, bytes: &[u8]) -> Result<(), StoreError> {
        self.with(|s| s.write(a, bytes))
    }

    /// See [`Store::finish`], on the active store.
    pub(super) fn finish(&mut self, a: &ArtifactRef) -> Result<(), StoreError> {
        self.with(|s| s.finish(a))
    }

    /// See [`Store::written`], on the active store.
    pub(super) fn written(&mut self, a: &ArtifactRef) -> Result<u64, StoreError> {
        self.with(|s| s.written(a))
    }

    /// See [`Store::held_hasher`], on the active store.
    pub(super) fn held_hasher(&mut self, a: &ArtifactRef) -> Result<sha2::Sha256, StoreError> {
        self.with(|s| s.held_hasher(a))
    }

    /// See [`Store::abort`], on the active store.
    pub(super) fn abort(&mut self) -> Result<(), StoreError> {
        self.with(|s| s.abort())
    }

    /// See [`Store::suspend`], on the active store.
    pub(super) fn suspend(&mut self) {
        let _ = self.with(|s| {
            s.suspend();
            Ok(())
        });
    }

    /// See [`Store::commit`], on the active store.
    pub(super) fn commit(&mut self) -> Result<Inventory, StoreError> {
        self.with(|s| s.commit())
    }

    /// See [`Store::check`], [`Store::missing_volumes`]: is the plan's set the active
    /// store's committed set, every volume present? Writes nothing.
    pub(super) fn holds(
        &mut self,
        artifacts: &[ArtifactRef],
        cmdline: &str,
    ) -> Result<bool, StoreError> {
        self.with(|s| s.holds(artifacts, cmdline))
    }

    /// See [`Store::begin`], on the active store: what must be fetched.
    pub(super) fn begin(
        &mut self,
        artifacts: &[ArtifactRef],
        cmdline: &str,
    ) -> Result<Vec<ArtifactRef>, StoreError> {
        self.with(|s| s.begin(artifacts, cmdline))
    }
}

/// The staging operations of a [`Store`], object-safe so that the flash and the RAM store
/// (different [`Volumes`]) share one code path.
trait StagingStore {
    fn verifies_readback(&self) -> bool;
    fn start(&mut self, a: &ArtifactRef) -> Result<(), StoreError>;
    fn write(&mut self, a: &ArtifactRef, bytes: &[u8]) -> Result<(), StoreError>;
    fn finish(&mut self, a: &ArtifactRef) -> Result<(), StoreError>;
    fn written(&mut self, a: &ArtifactRef) -> Result<u64, StoreError>;
    fn held_hasher(&mut self, a: &ArtifactRef) -> Result<sha2::Sha256, StoreError>;
    fn abort(&mut self) -> Result<(), StoreError>;
    fn suspend(&mut self);
    fn commit(&mut self) -> Result<Inventory, StoreError>;
    fn holds(&mut self, artifacts: &[ArtifactRef], cmdline: &str) -> Result<bool, StoreError>;
    fn begin(
        &mut self,
        artifacts: &[ArtifactRef],
        cmdline: &str,
    ) -> Result<Vec<ArtifactRef>, StoreError>;
}

impl<V: Volumes> StagingStore for Store<V> {
    fn verifies_readback(&self) -> bool {
        Store::verifies_readback(self)
    }
    fn start(&mut self, a: &ArtifactRef) -> Result<(), StoreError> {
        Store::start(self, a)
    }
    fn write(&mut self, a: &ArtifactRef, bytes: &[u8]) -> Result<(), StoreError> {
        Store::write(self, a, bytes)
    }
    fn finish(&mut self, a: &ArtifactRef) -> Result<(), StoreError> {
        Store::finish(self, a)
    }
    fn written(&mut self, a: &ArtifactRef) -> Result<u64, StoreError> {
        Store::written(self, a)
    }
    fn held_hasher(&mut self, a: &ArtifactRef) -> Result<sha2::Sha256, StoreError> {
        Store::held_hasher(self, a)
    }
    fn abort(&mut self) -> Result<(), StoreError> {
        Store::abort(self)
    }
    fn suspend(&mut self) {
        Store::suspend(self);
    }
    fn commit(&mut self) -> Result<Inventory, StoreError> {
        Store::commit(self)
    }
    fn holds(&mut self, artifacts: &[ArtifactRef], cmdline: &str) -> Result<bool, StoreError> {
        let check = self.check(artifacts, cmdline)?;
        match self.inventory().map(|i| i.set.clone()) {
            Some(set) if check.up_to_date => Ok(self.missing_volumes(&set)?.is_empty()),
            _ => Ok(false),
        }
    }
    fn begin(
        &mut self,
        artifacts: &[ArtifactRef],
        cmdline: &str,
    ) -> Result<Vec<ArtifactRef>, StoreError> {
        Store::begin(self, artifacts, cmdline).map(|c| c.fetch)
    }
}
