//! Vendor signing keys: generation and the on-disk key file format.
//!
//! A key file is one line of text: `shelfboot-ed25519-secret <64 hex digits>` (the 32-byte
//! ed25519 seed, file mode 0600) or `shelfboot-ed25519-public <64 hex digits>`. A key is
//! named by its *key id*: the first 16 hex digits of the sha256 of the public key.
//!
//! This module does not decide which keys are trusted: the store keeps that list.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use shelfboot_proto::id::Digest;

const SECRET_TAG: &str = "shelfboot-ed25519-secret";
const PUBLIC_TAG: &str = "shelfboot-ed25519-public";

/// Errors about key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write key file {path} (it must not exist yet)")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is not a shelfboot {expected} key file (expected one line '{expected_tag} <64 hex>')"
    )]
    Format {
        path: PathBuf,
        expected: &'static str,
        expected_tag: &'static str,
    },
    #[error("{path} holds an invalid ed25519 public key")]
    InvalidPublic {
        path: PathBuf,
        #[source]
        source: ed25519_dalek::SignatureError,
    },
}

/// The short id of a public key: first 16 hex digits of sha256(key).
pub fn key_id(key: &VerifyingKey) -> String {
    let mut id = Digest::of(key.as_bytes()).to_string();
    id.truncate(16);
    id
}

/// Generates a key pair and writes `<prefix>.key` (0600) and `<prefix>.pub`.
/// Returns the two paths and the key id. Refuses to overwrite existing files.
pub fn keygen(prefix: &Path) -> Result<(PathBuf, PathBuf, String), KeyError> {
    let signing = SigningKey::generate(&mut rand_core::OsRng);
    let secret_path = PathBuf::from(format!("{}.key", prefix.display()));
    let public_path = PathBuf::from(format!("{}.pub", prefix.display()));
    write_new(
        &secret_path,
        0o600,
        &format!("{SECRET_TAG} {}\n", hex::encode(signing.to_bytes())),
    )?;
    write_new(
        &public_path,
        0o644,
        &format!(
            "{PUBLIC_TAG} {}\n",
            hex::encode(signing.verifying_key().as_bytes())
        ),
    )?;
    Ok((secret_path, public_path, key_id(&signing.verifying_key())))
}

fn write_new(path: &Path, mode: u32, text: &str) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        })
}

fn read_tagged(path: &Path, tag: &'static str, what: &'static str) -> Result<[u8; 32], KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = || KeyError::Format {
        path: path.to_path_buf(),
        expected: what,
        expected_tag: tag,
    };
    let rest = text.trim().strip_prefix(tag).ok_or_else(bad)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(rest.trim(), &mut out).map_err(|_| bad())?;
    Ok(out)
}

/// Reads a secret key file.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    read_tagged(path, SECRET_TAG, "secret").map(|seed| SigningKey::from_bytes(&seed))
}

/// Reads a public key file.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let bytes = read_tagged(path, PUBLIC_TAG, "public")?;
    VerifyingKey::from_bytes(&bytes).map_err(|source| KeyError::InvalidPublic {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keygen_round_trip_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("vendor");
        let (sk, pk, id) = keygen(&prefix).unwrap();
        assert_eq!(
            fs::metadata(&sk).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let signing = read_signing_key(&sk).unwrap();
        let verifying = read_verifying_key(&pk).unwrap();
        assert_eq!(signing.verifying_key(), verifying);
        assert_eq!(key_id(&verifying), id);
        assert!(matches!(keygen(&prefix), Err(KeyError::Write { .. })));
        // A secret key is not a public key.
        assert!(matches!(
            read_verifying_key(&sk),
            Err(KeyError::Format { .. })
        ));
    }
}
