//! Signing keys (vendor, plan and shelf keys): generation, the on-disk key file format, and
//! master certificate files.
//!
//! A key file is one line of text: `shelfboot-ed25519-secret <64 hex digits>` (the 32-byte
//! ed25519 seed, file mode 0600) or `shelfboot-ed25519-public <64 hex digits>`. A key is
//! named by its *key id*: the first 16 hex digits of the sha256 of the public key.
//!
//! A master certificate file (`STATE/plan.cert`) is one line of text:
//! `shelfboot-master-cert <hex of the certificate's CBOR>` (see
//! [`shelfboot_proto::sign::MasterCert::to_bytes`]), written by [`certify`].
//!
//! This module does not decide which keys are trusted: the store keeps that list for
//! vendor keys, and the cards' initramfs holds the plan or shelf keys they trust.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use shelfboot_proto::msg::MasterCert;
use shelfboot_proto::sign::{self, MasterSigner, SignError};

const SECRET_TAG: &str = "shelfboot-ed25519-secret";
const PUBLIC_TAG: &str = "shelfboot-ed25519-public";
const CERT_TAG: &str = "shelfboot-master-cert";

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
    #[error(
        "{path} is not a shelfboot master certificate file (expected one line '{CERT_TAG} <hex>')"
    )]
    CertFormat { path: PathBuf },
    #[error("master certificate {path}")]
    Cert {
        path: PathBuf,
        #[source]
        source: Box<SignError>,
    },
}

/// The short id of a public key: first 16 hex digits of sha256(key).
pub fn key_id(key: &VerifyingKey) -> String {
    sign::key_id(key.as_bytes())
}

/// Certifies the master plan public key in `plan_pub` with the shelf secret key in
/// `shelf_key`, and writes the certificate to `out` (which must not exist yet). Returns
/// the certificate, the plan key's id and the shelf key's id.
pub fn certify(
    shelf_key: &Path,
    plan_pub: &Path,
    out: &Path,
) -> Result<(MasterCert, String, String), KeyError> {
    let shelf = read_signing_key(shelf_key)?;
    let plan = read_verifying_key(plan_pub)?;
    let shelf = sign::SigningKey::from_seed(&shelf.to_bytes());
    let plan_key =
        sign::PublicKey::from_bytes(plan.as_bytes(), 0).map_err(|source| KeyError::Cert {
            path: plan_pub.to_path_buf(),
            source: Box::new(source),
        })?;
    let cert_err = |source| KeyError::Cert {
        path: out.to_path_buf(),
        source: Box::new(source),
    };
    let cert = shelf.certify(&plan_key).map_err(cert_err)?;
    let bytes = cert.to_bytes().map_err(cert_err)?;
    write_new(out, 0o644, &format!("{CERT_TAG} {}\n", hex::encode(bytes)))?;
    Ok((
        cert,
        key_id(&plan),
        sign::key_id(&shelf.public_key().to_bytes()),
    ))
}

/// Reads a master certificate file.
pub fn read_cert(path: &Path) -> Result<MasterCert, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = || KeyError::CertFormat {
        path: path.to_path_buf(),
    };
    let rest = text.trim().strip_prefix(CERT_TAG).ok_or_else(bad)?;
    let bytes = hex::decode(rest.trim()).map_err(|_| bad())?;
    MasterCert::from_bytes(&bytes).map_err(|source| KeyError::Cert {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// `key` with the certificate in `cert_path` attached, if that file exists; refused if the
/// certificate is of another key.
pub fn attach_cert(key: sign::SigningKey, cert_path: &Path) -> Result<MasterSigner, KeyError> {
    if !cert_path.exists() {
        return Ok(MasterSigner::from(key));
    }
    let cert = read_cert(cert_path)?;
    MasterSigner::certified(key, cert).map_err(|source| KeyError::Cert {
        path: cert_path.to_path_buf(),
        source: Box::new(source),
    })
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

    #[test]
    fn certify_writes_a_certificate_that_verifies_under_the_shelf_key() {
        let dir = tempfile::tempdir().unwrap();
        let (shelf_sk, shelf_pk, shelf_id) = keygen(&dir.path().join("shelf")).unwrap();
        let (plan_sk, plan_pk, plan_id) = keygen(&dir.path().join("plan")).unwrap();
        let out = dir.path().join("plan.cert");
        let (cert, pid, sid) = certify(&shelf_sk, &plan_pk, &out).unwrap();
        assert_eq!((pid, sid), (plan_id, shelf_id));
        assert_eq!(read_cert(&out).unwrap(), cert);
        assert!(
            fs::read_to_string(&out)
                .unwrap()
                .starts_with("shelfboot-master-cert a2")
        );
        // Never over an existing certificate.
        assert!(matches!(
            certify(&shelf_sk, &plan_pk, &out),
            Err(KeyError::Write { .. })
        ));
        // The shelf .pub is the cards' anchor; the certificate makes the plan key trusted.
        let shelf = read_verifying_key(&shelf_pk).unwrap();
        let anchor = sign::TrustAnchor::from_bytes(shelf.as_bytes()).unwrap();
        let certified = anchor
            .verify_cert(&cert, sign::Domain::Plan)
            .unwrap()
            .to_bytes();
        assert_eq!(certified, *read_verifying_key(&plan_pk).unwrap().as_bytes());
        // Attached to the key it certifies; refused for another.
        let plan = sign::SigningKey::from_seed(&read_signing_key(&plan_sk).unwrap().to_bytes());
        assert_eq!(attach_cert(plan, &out).unwrap().cert(), Some(&cert));
        let other = sign::SigningKey::from_seed(&[3; 32]);
        let err = attach_cert(other, &out).unwrap_err();
        assert!(
            matches!(&err, KeyError::Cert { source, .. } if matches!(**source, SignError::CertMismatch { .. })),
            "{err:?}"
        );
        // No file: nothing attached.
        let none = attach_cert(
            sign::SigningKey::from_seed(&[3; 32]),
            &dir.path().join("no"),
        );
        assert!(none.unwrap().cert().is_none());
        // A key file is not a certificate.
        assert!(matches!(
            read_cert(&shelf_pk),
            Err(KeyError::CertFormat { .. })
        ));
        fs::write(dir.path().join("short.cert"), "shelfboot-master-cert a0\n").unwrap();
        assert!(matches!(
            read_cert(&dir.path().join("short.cert")),
            Err(KeyError::Cert { source, .. }) if matches!(*source, SignError::CertDecode { .. })
        ));
    }
}
