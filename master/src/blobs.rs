//! Content-addressed blob directory: `<state>/blobs/sha256/ab/cdef…`.
//!
//! A blob is written to `<state>/blobs/tmp/` while it is hashed, fsynced, checked against
//! the digest the signed manifest promised, then renamed into place and the directory
//! fsynced. A blob path therefore only ever holds complete, verified bytes. A crash leaves
//! at most a temp file or an unreferenced blob, which `gc` removes.
//!
//! This module does not know which blobs are referenced: that is the store's business.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use shelfboot_proto::id::Digest;

/// Errors of the blob directory.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("cannot create blob directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write blob temp file {path}")]
    WriteTemp {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading blob {sha256} from the image failed")]
    ReadSource {
        sha256: Digest,
        #[source]
        source: io::Error,
    },
    #[error(
        "image is truncated: blob {sha256} should be {expected} bytes but the image ends after {got}"
    )]
    Truncated {
        sha256: Digest,
        expected: u64,
        got: u64,
    },
    #[error("blob is corrupt: manifest says sha256 {expected}, the bytes hash to {actual}")]
    HashMismatch { expected: Digest, actual: Digest },
    #[error("cannot move blob {sha256} into place at {path}")]
    Rename {
        sha256: Digest,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list blob directory {path}")]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove blob {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What [`BlobDir::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The blob was new and is now stored.
    Stored,
    /// The blob was already present; the bytes were verified and discarded.
    AlreadyPresent,
}

/// The on-disk blob directory.
#[derive(Debug, Clone)]
pub struct BlobDir {
    root: PathBuf,
}

impl BlobDir {
    /// Opens (creating if needed) the blob directory under `root` (normally `<state>/blobs`).
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        for dir in [root.join("sha256"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(|source| BlobError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path where the blob with this digest lives (whether or not it exists).
    pub fn path(&self, sha: &Digest) -> PathBuf {
        let h = sha.to_string();
        self.root.join("sha256").join(&h[..2]).join(&h[2..])
    }

    /// Whether the blob is stored.
    pub fn contains(&self, sha: &Digest) -> bool {
        self.path(sha).is_file()
    }

    /// Streams exactly `size` bytes from `src`, verifies they hash to `sha` and stores them.
    /// `progress` is called with the number of bytes consumed so far. On any error nothing
    /// is left at the blob's path (the temp file is removed).
    pub fn put(
        &self,
        sha: &Digest,
        size: u64,
        src: &mut impl Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<PutOutcome, BlobError> {
        if self.contains(sha) {
            copy_verified(sha, size, src, &mut io::sink(), progress)?;
            return Ok(PutOutcome::AlreadyPresent);
        }
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{sha}.{}", std::process::id()));
        let result = (|| {
            let mut file = File::create(&tmp).map_err(|source| BlobError::WriteTemp {
                path: tmp.clone(),
                source,
            })?;
            copy_verified(sha, size, src, &mut file, progress)?;
            file.sync_all().map_err(|source| BlobError::WriteTemp {
                path: tmp.clone(),
                source,
            })?;
            let dest = self.path(sha);
            let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
            fs::create_dir_all(&parent).map_err(|source| BlobError::CreateDir {
                path: parent.clone(),
                source,
            })?;
            fs::rename(&tmp, &dest).map_err(|source| BlobError::Rename {
                sha256: *sha,
                path: dest.clone(),
                source,
            })?;
            // Persist the rename itself; a failure here is reported like the rename.
            File::open(&parent)
                .and_then(|d| d.sync_all())
                .map_err(|source| BlobError::Rename {
                    sha256: *sha,
                    path: dest,
                    source,
                })
        })();
        if result.is_err() {
            // Best effort: the temp file is garbage either way and gc would remove it;
            // an empty shard directory this call created goes too.
            let _ = fs::remove_file(&tmp);
            if let Some(shard) = self.path(sha).parent() {
                let _ = fs::remove_dir(shard);
            }
        }
        result.map(|()| PutOutcome::Stored)
    }

    /// Removes a stored blob (missing is not an error).
    pub fn remove(&self, sha: &Digest) -> Result<(), BlobError> {
        let path = self.path(sha);
        match fs::remove_file(&path) {
            Ok(()) => {
                // Drop the shard directory if this was its last blob (fails otherwise).
                if let Some(shard) = path.parent() {
                    let _ = fs::remove_dir(shard);
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BlobError::Remove { path, source }),
        }
    }

    /// Every stored blob digest, sorted.
    pub fn list(&self) -> Result<Vec<Digest>, BlobError> {
        let mut out = Vec::new();
        let top = self.root.join("sha256");
        let list_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::List { path, source }
        };
        for shard in fs::read_dir(&top).map_err(list_err(&top))? {
            let shard = shard.map_err(list_err(&top))?.path();
            if !shard.is_dir() {
                continue;
            }
            let prefix = shard
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for entry in fs::read_dir(&shard).map_err(list_err(&shard))? {
                let entry = entry.map_err(list_err(&shard))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Ok(sha) = format!("{prefix}{name}").parse::<Digest>() {
                    out.push(sha);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Removes leftover temp files (from crashed imports). Returns how many.
    pub fn clean_tmp(&self) -> Result<usize, BlobError> {
        let dir = self.root.join("tmp");
        let mut n = 0;
        for entry in fs::read_dir(&dir).map_err(|source| BlobError::List {
            path: dir.clone(),
            source,
        })? {
            let path = entry
                .map_err(|source| BlobError::List {
                    path: dir.clone(),
                    source,
                })?
                .path();
            fs::remove_file(&path).map_err(|source| BlobError::Remove { path, source })?;
            n += 1;
        }
        Ok(n)
    }
}

/// Copies exactly `size` bytes from `src` to `dst`, hashing them, and checks the digest.
fn copy_verified(
    sha: &Digest,
    size: u64,
    src: &mut impl Read,
    dst: &mut impl Write,
    progress: &mut dyn FnMut(u64),
) -> Result<(), BlobError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut done: u64 = 0;
    while done < size {
        let want = usize::try_from((size - done).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(BlobError::Truncated {
                    sha256: *sha,
                    expected: size,
                    got: done,
                });
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(BlobError::ReadSource {
                    sha256: *sha,
                    source,
                });
            }
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(|source| BlobError::WriteTemp {
                path: PathBuf::from(format!("<blob {sha}>")),
                source,
            })?;
        done += n as u64;
        progress(n as u64);
    }
    let actual = Digest(hasher.finalize().into());
    if &actual != sha {
        return Err(BlobError::HashMismatch {
            expected: *sha,
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verifies_and_stores() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::open(dir.path()).unwrap();
        let data = b"hello blob";
        let sha = Digest::of(data);
        let mut seen = 0;
        let out = blobs
            .put(&sha, data.len() as u64, &mut &data[..], &mut |n| seen += n)
            .unwrap();
        assert_eq!(out, PutOutcome::Stored);
        assert_eq!(seen, data.len() as u64);
        assert_eq!(std::fs::read(blobs.path(&sha)).unwrap(), data);
        assert_eq!(blobs.list().unwrap(), vec![sha]);
        let again = blobs
            .put(&sha, data.len() as u64, &mut &data[..], &mut |_| {})
            .unwrap();
        assert_eq!(again, PutOutcome::AlreadyPresent);
    }

    #[test]
    fn bad_hash_and_truncation_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::open(dir.path()).unwrap();
        let sha = Digest::of(b"expected");
        let err = blobs.put(&sha, 8, &mut &b"xxxxxxxx"[..], &mut |_| {});
        assert!(matches!(err, Err(BlobError::HashMismatch { .. })));
        let err = blobs.put(&sha, 8, &mut &b"expe"[..], &mut |_| {});
        assert!(matches!(err, Err(BlobError::Truncated { got: 4, .. })));
        assert!(blobs.list().unwrap().is_empty());
        assert_eq!(blobs.clean_tmp().unwrap(), 0);
    }
}
