//! The card's flash model: volumes, layout, inventory, atomic commit, boot counting.
//!
//! Everything here is pure Rust over the [`volumes::Volumes`] trait, so it runs unchanged on
//! a real UBI device (init's `sys` layer implements the trait with ioctls), on a
//! file-backed simulated card, in RAM (test mode) and against a power-cutting fake in unit
//! tests. See `docs/flash.md` for the layout and the commit protocol.
//!
//! This module does not talk to the network, verify signatures or decide *what* to
//! install: it stores what the card agent hands it and proves it got there intact.

pub mod artifact;
pub mod boot;
pub mod error;
pub mod fake;
pub mod file;
pub mod inventory;
pub mod layout;
pub mod stage;
pub mod store;
pub mod volumes;

#[cfg(test)]
mod boot_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod set_tests;
#[cfg(test)]
mod tests;

pub use boot::{BootDecision, RollbackReason};
pub use fake::{FakeOp, FakeVolumes};
pub use file::FileVolumes;
pub use inventory::{Inventory, SetRecord, StoredArtifact};
pub use store::{OpenReport, PlanCheck, Store, StoreConfig, StoreError};
pub use volumes::{
    Geometry, Rename, UBI_MAX_RNVOL, UBI_MAX_VOLUME_NAME, VolumeError, VolumeErrorKind, VolumeId,
    VolumeInfo, VolumeOp, VolumeTarget, VolumeWriter, Volumes,
};
