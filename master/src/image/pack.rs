//! `master pack`: builds a composite image from a readable `system.toml`.
//!
//! File paths in `system.toml` are relative to the directory holding it. Each file is
//! hashed once (streaming), identical files become one blob, blobs are ordered by digest,
//! and ed25519 signatures are deterministic, so packing the same input twice gives the
//! same bytes. Nothing is held in memory but the manifest.
//!
//! This does not check dependency satisfiability: `import` does, with the solver, and
//! `pack` runs the same check before writing so a vendor learns it first (see
//! [`crate::state::check_release`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use shelfboot_proto::id::{Arch, Digest};

use super::format::{self, ImageError};
use super::manifest::{
    BlobRef, BootImage, MANIFEST_FORMAT, Manifest, ManifestError, Package, ReleaseId,
};
use crate::policy::{ClassSpec, Defaults, OverrideSpec};

/// `system.toml` as the vendor writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSpec {
    pub release: ReleaseId,
    #[serde(default)]
    pub boot: Vec<BootSpec>,
    #[serde(default, rename = "package")]
    pub packages: Vec<PackageSpec>,
    #[serde(default, rename = "class")]
    pub classes: Vec<ClassSpec>,
    #[serde(default, rename = "override")]
    pub overrides: Vec<OverrideSpec>,
    #[serde(default)]
    pub defaults: Defaults,
}

/// A boot image entry: file paths instead of blobs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    pub name: String,
    pub version: semver::Version,
    pub card_type: String,
    pub arch: Arch,
    /// The boot image file (kernel + initramfs container built by mkinitramfs).
    pub image: PathBuf,
    #[serde(default)]
    pub cmdline: String,
}

/// A package entry: the payload file instead of a blob.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    pub name: String,
    pub version: semver::Version,
    pub arch: Arch,
    #[serde(default)]
    pub provides: Vec<String>,
    #[serde(default)]
    pub depends: BTreeMap<String, String>,
    pub file: PathBuf,
}

/// Errors of `master pack`.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read {path}")]
    ReadSpec {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid system description")]
    ParseSpec {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("cannot read artifact file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the release described by {path} is invalid")]
    Invalid {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: ImageError,
    },
}

/// The manifest plus where each blob's bytes come from.
#[derive(Debug)]
pub struct PackedRelease {
    pub manifest: Manifest,
    pub sources: BTreeMap<Digest, PathBuf>,
}

fn hash_file(path: &Path) -> Result<BlobRef, PackError> {
    let err = |source| PackError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(BlobRef {
        sha256: Digest(hasher.finalize().into()),
        size,
    })
}

/// Reads `system.toml`, hashes the files and builds the (validated) manifest.
pub fn prepare(spec_path: &Path) -> Result<PackedRelease, PackError> {
    let text = fs::read_to_string(spec_path).map_err(|source| PackError::ReadSpec {
        path: spec_path.to_path_buf(),
        source,
    })?;
    let spec: SystemSpec = toml::from_str(&text).map_err(|source| PackError::ParseSpec {
        path: spec_path.to_path_buf(),
        source,
    })?;
    let base = spec_path.parent().unwrap_or(Path::new("."));
    let mut sources = BTreeMap::new();
    let mut add = |rel: &Path| -> Result<BlobRef, PackError> {
        let path = base.join(rel);
        let r = hash_file(&path)?;
        sources.entry(r.sha256).or_insert(path);
        Ok(r)
    };
    let mut boot = Vec::new();
    for b in spec.boot {
        boot.push(BootImage {
            image: add(&b.image)?,
            name: b.name,
            version: b.version,
            card_type: b.card_type,
            arch: b.arch,
            cmdline: b.cmdline,
        });
    }
    let mut packages = Vec::new();
    for p in spec.packages {
        packages.push(Package {
            payload: add(&p.file)?,
            name: p.name,
            version: p.version,
            arch: p.arch,
            provides: p.provides,
            depends: p.depends,
        });
    }
    let blob_set: BTreeSet<BlobRef> = boot
        .iter()
        .map(|b| b.image)
        .chain(packages.iter().map(|p| p.payload))
        .collect();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        release: spec.release,
        blobs: blob_set.into_iter().collect(),
        boot,
        packages,
        classes: spec.classes,
        overrides: spec.overrides,
        defaults: spec.defaults,
    };
    manifest.validate().map_err(|source| PackError::Invalid {
        path: spec_path.to_path_buf(),
        source,
    })?;
    Ok(PackedRelease { manifest, sources })
}

/// Writes the signed image for a prepared release to `out_path` (via a temp file, renamed
/// into place when complete).
pub fn write_image(
    packed: &PackedRelease,
    key: &SigningKey,
    out_path: &Path,
) -> Result<u64, PackError> {
    let tmp = PathBuf::from(format!("{}.partial", out_path.display()));
    let werr = |source| PackError::Write {
        path: out_path.to_path_buf(),
        source,
    };
    let file = File::create(&tmp).map_err(|source| PackError::Create {
        path: tmp.clone(),
        source,
    })?;
    let mut out = BufWriter::new(file);
    let result = (|| {
        format::write_header(&mut out, key, &packed.manifest).map_err(werr)?;
        for blob in &packed.manifest.blobs {
            let path = packed
                .sources
                .get(&blob.sha256)
                .ok_or_else(|| PackError::Invalid {
                    path: out_path.to_path_buf(),
                    source: ManifestError::MissingBlob {
                        what: "pack".into(),
                        sha256: blob.sha256,
                        size: blob.size,
                    },
                })?;
            let mut src = File::open(path).map_err(|source| PackError::ReadFile {
                path: path.clone(),
                source,
            })?;
            // The file may have changed since it was hashed; the importer would catch it,
            // but catch it here with a clear message.
            let n = format::write_blob(&mut out, &mut src).map_err(werr)?;
            if n != blob.size {
                return Err(PackError::ReadFile {
                    path: path.clone(),
                    source: io::Error::other("file changed size while packing"),
                });
            }
        }
        let file = out
            .into_inner()
            .map_err(|e| werr(ImageError::Write(e.into_error())))?;
        file.sync_all().map_err(|e| werr(ImageError::Write(e)))?;
        fs::rename(&tmp, out_path).map_err(|source| PackError::Create {
            path: out_path.to_path_buf(),
            source,
        })?;
        fs::metadata(out_path)
            .map(|m| m.len())
            .map_err(|source| PackError::Create {
                path: out_path.to_path_buf(),
                source,
            })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes an image from a manifest and in-memory blobs (tests and tools).
pub fn write_image_bytes(
    manifest: &Manifest,
    blobs: &BTreeMap<Digest, Vec<u8>>,
    key: &SigningKey,
) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    format::write_header(&mut out, key, manifest)?;
    for b in &manifest.blobs {
        if let Some(bytes) = blobs.get(&b.sha256) {
            out.write_all(bytes).map_err(ImageError::Write)?;
        }
    }
    Ok(out)
}
