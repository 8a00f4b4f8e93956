//! Composite images: the container format, the signed manifest and `master pack`.
//!
//! Importing (verifying blobs into the blob directory and the databases) lives in
//! [`crate::state`], because it needs the store.

pub mod format;
pub mod manifest;
pub mod pack;
