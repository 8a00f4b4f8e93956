//! The artifact vocabulary the flash model stores: the protocol's own types and its one
//! set-digest function, re-exported so that the card, the master and the inventory can
//! never disagree about what a set digest is. Nothing is defined here: no second digest,
//! no mirror types.

pub use shelfboot_proto::msg::{ArtifactKind, ArtifactRef, Digest, set_digest};
