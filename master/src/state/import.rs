//! Importing a composite image: verify its signature against the trusted keys, check its
//! release resolves and its plans fit on the wire, store its blobs and its rows, all or
//! nothing.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::{Master, MasterError};
use crate::blobs::{BlobError, PutOutcome};
use crate::image::format::{ImageError, VerifiedImage};
use crate::image::manifest::ReleaseId;
use crate::keys;
use crate::resolve::{self, ResolveError};
use crate::store::{ImportOutcome, NewRelease, Store, StoreError};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("image rejected")]
    Image(#[from] ImageError),
    #[error("blob rejected")]
    Blob(#[from] BlobError),
    #[error("the release's dependencies cannot be satisfied")]
    Unsatisfiable(#[source] Box<ResolveError>),
    #[error("the release cannot be served: a plan would not fit on the wire")]
    Undeliverable(#[source] Box<ResolveError>),
    #[error("the release clashes with the database")]
    Store(#[from] StoreError),
}

/// Result of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    pub release: ReleaseId,
    pub outcome: ImportOutcome,
    pub signer: String,
    pub blobs_stored: u32,
    pub blobs_present: u32,
    pub bytes: u64,
    /// Classes whose plans go in fragments (protocol version 2 cards only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fragmented: Vec<resolve::Fragmented>,
}

impl<S: Store> Master<S> {
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
        let sha = image.manifest_sha256;
        let signer = keys::key_id(&image.signer);
        resolve::check_release(&manifest).map_err(|e| ImportError::Unsatisfiable(Box::new(e)))?;
        let fragmented = resolve::check_delivery(&manifest)
            .map_err(|e| ImportError::Undeliverable(Box::new(e)))?;
        let already = self.store.check_import(&manifest, &sha)?;

        let total = manifest.blob_bytes();
        let mut done = 0u64;
        let mut new_blobs = Vec::new();
        let mut present = 0u32;
        let result = (|| -> Result<ImportOutcome, ImportError> {
            for b in &manifest.blobs {
                let out = self
                    .blobs
                    .put(&b.sha256, b.size, image.blob_stream(), &mut |n| {
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
                now: self.now(),
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
                fragmented,
            }),
            Err(e) => {
                for b in &new_blobs {
                    if let Err(rm) = self.blobs.remove(b) {
                        log::warn!("cannot remove blob of failed import ({rm}); gc will");
                    }
                }
                Err(e)
            }
        }
    }
}
