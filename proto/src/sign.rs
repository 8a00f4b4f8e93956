//! Ed25519 signatures over plans, commands and manifests, and the trust anchor.
//!
//! What is signed is `domain tag ‖ canonical CBOR of the message body` (the message minus
//! its signature). The tag keeps a signature made for one kind of object from being
//! accepted as another:
//!
//! | object   | tag                            | body                              |
//! |----------|--------------------------------|-----------------------------------|
//! | Plan     | `shelfboot/plan/v1\0`          | [`PlanBody`] (holds the card nonce) |
//! | Command  | `shelfboot/command/v1\0`       | [`CommandBody`]                   |
//! | Manifest | `shelfboot/manifest/v1\0`      | the manifest bytes, as given      |
//!
//! A plan is accepted only if its signature verifies under a key of the [`TrustAnchor`],
//! its nonce is the one the card sent in its Solicit, and its digest is the
//! [`set_digest`] of its artifacts and command line. Verification uses `verify_strict`
//! (rejects malleable and small-order signatures).
//!
//! This module does not store keys on disk or decide which keys to trust: mkinitramfs bakes
//! the anchor into the initramfs and the master holds the signing key.

use std::fmt;

use ed25519_dalek::Signer as _;
use serde::Serialize;
use thiserror::Error;

use crate::msg::{Command, CommandBody, Digest, Nonce, Plan, PlanBody, Signature, set_digest};

/// Length of a public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// What a signature is for; selects the domain tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A [`PlanBody`].
    Plan,
    /// A [`CommandBody`].
    Command,
    /// A composite-image manifest.
    Manifest,
}

impl Domain {
    /// The domain tag prepended to the signed bytes. Frozen.
    pub const fn tag(self) -> &'static [u8] {
        match self {
            Domain::Plan => b"shelfboot/plan/v1\0",
            Domain::Command => b"shelfboot/command/v1\0",
            Domain::Manifest => b"shelfboot/manifest/v1\0",
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Domain::Plan => "plan",
            Domain::Command => "command",
            Domain::Manifest => "manifest",
        };
        f.write_str(s)
    }
}

/// Errors of signing and verification.
#[derive(Debug, Error)]
pub enum SignError {
    /// The body could not be encoded to its canonical bytes.
    #[error("encoding the {domain} body for signing failed")]
    Encode {
        domain: Domain,
        #[source]
        source: ciborium::ser::Error<std::io::Error>,
    },
    /// No key of the anchor verifies the signature.
    #[error(
        "{domain} signature does not verify under any of the {keys} trusted key(s): rejected; check that the card's trust anchor holds the master's public key"
    )]
    Untrusted { domain: Domain, keys: usize },
    /// The plan answers another Solicit.
    #[error(
        "plan nonce does not match this boot's Solicit nonce: rejected (stale or replayed plan)"
    )]
    NonceMismatch,
    /// The plan's digest is not the set digest of its contents.
    #[error(
        "plan digest {} is not the set digest {} of its artifacts and command line: rejected (master bug)",
        carried,
        computed
    )]
    DigestMismatch { carried: Digest, computed: Digest },
    /// Bytes that are not a valid Ed25519 public key.
    #[error(
        "public key #{index} of the trust anchor is not a valid Ed25519 point: rebuild the anchor"
    )]
    BadPublicKey {
        index: usize,
        #[source]
        source: ed25519_dalek::SignatureError,
    },
    /// A trust anchor file whose length is not a multiple of 32.
    #[error(
        "trust anchor of {len} bytes is not a whole number of 32-byte public keys: rebuild the anchor"
    )]
    BadAnchorLength { len: usize },
}

/// A signing key (master side). Its Debug output never shows the secret.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {:?})", self.public_key())
    }
}

impl SigningKey {
    /// The key derived from a 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }

    /// The secret seed (to store the key).
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `domain tag ‖ msg`.
    pub fn sign(&self, domain: Domain, msg: &[u8]) -> Signature {
        Signature(self.0.sign(&signed_bytes(domain, msg)).to_bytes())
    }

    /// A signed plan.
    pub fn sign_plan(&self, body: PlanBody) -> Result<Plan, SignError> {
        let signature = self.sign(Domain::Plan, &canonical(Domain::Plan, &body)?);
        Ok(Plan { body, signature })
    }

    /// A signed command.
    pub fn sign_command(&self, body: CommandBody) -> Result<Command, SignError> {
        let signature = self.sign(Domain::Command, &canonical(Domain::Command, &body)?);
        Ok(Command { body, signature })
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0.as_bytes()))
    }
}

impl PublicKey {
    /// The key encoded as `bytes`; `index` only labels the error.
    pub fn from_bytes(bytes: &[u8; PUBLIC_KEY_LEN], index: usize) -> Result<PublicKey, SignError> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|source| SignError::BadPublicKey { index, source })
    }

    /// The 32 encoded bytes.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.0.to_bytes()
    }

    /// Whether `sig` signs `domain tag ‖ msg` under this key.
    pub fn verify(&self, domain: Domain, msg: &[u8], sig: &Signature) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        self.0
            .verify_strict(&signed_bytes(domain, msg), &sig)
            .is_ok()
    }
}

/// The set of public keys a card accepts signatures from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchor {
    keys: Vec<PublicKey>,
}

impl TrustAnchor {
    /// An anchor trusting `keys`.
    pub fn new(keys: Vec<PublicKey>) -> TrustAnchor {
        TrustAnchor { keys }
    }

    /// Parses the anchor file format: public keys concatenated, 32 bytes each.
    pub fn from_bytes(bytes: &[u8]) -> Result<TrustAnchor, SignError> {
        if !bytes.len().is_multiple_of(PUBLIC_KEY_LEN) {
            return Err(SignError::BadAnchorLength { len: bytes.len() });
        }
        let keys = bytes
            .chunks_exact(PUBLIC_KEY_LEN)
            .enumerate()
            .map(|(i, chunk)| {
                let mut k = [0u8; PUBLIC_KEY_LEN];
                k.copy_from_slice(chunk);
                PublicKey::from_bytes(&k, i)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustAnchor { keys })
    }

    /// The anchor file format (see [`TrustAnchor::from_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.keys.iter().flat_map(|k| k.to_bytes()).collect()
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The trusted key under which `sig` signs `domain tag ‖ msg`.
    pub fn verify(
        &self,
        domain: Domain,
        msg: &[u8],
        sig: &Signature,
    ) -> Result<&PublicKey, SignError> {
        self.keys
            .iter()
            .find(|k| k.verify(domain, msg, sig))
            .ok_or(SignError::Untrusted {
                domain,
                keys: self.keys.len(),
            })
    }

    /// Accepts `plan` if it is signed by a trusted key, answers `nonce`, and its digest is
    /// the set digest of its contents (a digest-only Continue, `artifacts_omitted`, carries no
    /// contents: the caller must compare its digest with the committed set).
    pub fn verify_plan(&self, plan: &Plan, nonce: &Nonce) -> Result<(), SignError> {
        self.verify(
            Domain::Plan,
            &canonical(Domain::Plan, &plan.body)?,
            &plan.signature,
        )?;
        if &plan.body.nonce != nonce {
            return Err(SignError::NonceMismatch);
        }
        if plan.body.artifacts_omitted {
            // A digest-only Continue: the card compares the digest with its committed set.
            return Ok(());
        }
        let computed = set_digest(&plan.body.artifacts, &plan.body.cmdline);
        if computed != plan.body.digest {
            return Err(SignError::DigestMismatch {
                carried: plan.body.digest,
                computed,
            });
        }
        Ok(())
    }

    /// Accepts `cmd` if it is signed by a trusted key. Epoch and serial checks (replay) are
    /// the card state machine's.
    pub fn verify_command(&self, cmd: &Command) -> Result<(), SignError> {
        self.verify(
            Domain::Command,
            &canonical(Domain::Command, &cmd.body)?,
            &cmd.signature,
        )
        .map(|_| ())
    }

    /// Accepts a manifest whose bytes are signed by a trusted key.
    pub fn verify_manifest(&self, manifest: &[u8], sig: &Signature) -> Result<(), SignError> {
        self.verify(Domain::Manifest, manifest, sig).map(|_| ())
    }
}

/// `domain tag ‖ msg`.
fn signed_bytes(domain: Domain, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(domain.tag().len() + msg.len());
    out.extend_from_slice(domain.tag());
    out.extend_from_slice(msg);
    out
}

/// The canonical CBOR bytes of a body (the same bytes the message codec emits for it).
pub fn canonical<T: Serialize>(domain: Domain, body: &T) -> Result<Vec<u8>, SignError> {
    let mut out = Vec::with_capacity(256);
    ciborium::into_writer(body, &mut out).map_err(|source| SignError::Encode { domain, source })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Action, ArtifactKind, ArtifactRef, Verdict};

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed(&[n; 32])
    }

    fn body() -> PlanBody {
        let artifacts = vec![ArtifactRef {
            kind: ArtifactKind::BootImage,
            name: "kernel".into(),
            version: "1".into(),
            sha256: Digest([9; 32]),
            size: 10,
        }];
        PlanBody {
            digest: set_digest(&artifacts, "quiet"),
            artifacts,
            cmdline: "quiet".into(),
            persist: true,
            verdict: Verdict::Fetch,
            nonce: [5; 16],
            epoch: 3,
            artifacts_omitted: false,
            report_inventory: false,
        }
    }

    #[test]
    fn plan_signed_by_trusted_key_verifies() {
        let anchor = TrustAnchor::new(vec![key(2).public_key(), key(1).public_key()]);
        let plan = key(1).sign_plan(body()).unwrap();
        anchor.verify_plan(&plan, &[5; 16]).unwrap();
    }

    #[test]
    fn plan_rejections() {
        let anchor = TrustAnchor::new(vec![key(1).public_key()]);
        let plan = key(2).sign_plan(body()).unwrap();
        assert!(matches!(
            anchor.verify_plan(&plan, &[5; 16]),
            Err(SignError::Untrusted { keys: 1, .. })
        ));
        let plan = key(1).sign_plan(body()).unwrap();
        assert!(matches!(
            anchor.verify_plan(&plan, &[6; 16]),
            Err(SignError::NonceMismatch)
        ));
        let mut tampered = plan.clone();
        tampered.body.persist = false;
        assert!(matches!(
            anchor.verify_plan(&tampered, &[5; 16]),
            Err(SignError::Untrusted { .. })
        ));
        let mut b = body();
        b.cmdline = "loud".into();
        let plan = key(1).sign_plan(b).unwrap();
        assert!(matches!(
            anchor.verify_plan(&plan, &[5; 16]),
            Err(SignError::DigestMismatch { .. })
        ));
        assert!(matches!(
            TrustAnchor::new(vec![]).verify_plan(&plan, &[5; 16]),
            Err(SignError::Untrusted { keys: 0, .. })
        ));
    }

    #[test]
    fn domains_are_separated() {
        let k = key(1);
        let sig = k.sign(Domain::Manifest, b"x");
        let anchor = TrustAnchor::new(vec![k.public_key()]);
        anchor.verify_manifest(b"x", &sig).unwrap();
        assert!(anchor.verify(Domain::Plan, b"x", &sig).is_err());
        assert!(anchor.verify_manifest(b"y", &sig).is_err());
    }

    #[test]
    fn command_verifies_and_detects_tampering() {
        let k = key(4);
        let anchor = TrustAnchor::new(vec![k.public_key()]);
        let mut cmd = k
            .sign_command(CommandBody {
                action: Action::WarmBoot,
                target: None,
                epoch: 1,
                serial: 7,
            })
            .unwrap();
        anchor.verify_command(&cmd).unwrap();
        cmd.body.action = Action::Reset;
        assert!(anchor.verify_command(&cmd).is_err());
    }

    #[test]
    fn anchor_file_round_trip_and_errors() {
        let anchor = TrustAnchor::new(vec![key(1).public_key(), key(2).public_key()]);
        let bytes = anchor.to_bytes();
        assert_eq!(bytes.len(), 64);
        assert_eq!(TrustAnchor::from_bytes(&bytes).unwrap(), anchor);
        assert!(matches!(
            TrustAnchor::from_bytes(&bytes[..40]),
            Err(SignError::BadAnchorLength { len: 40 })
        ));
        // About half of all 32-byte strings are not curve points; find one.
        let bad = (2u8..=255)
            .map(|y| {
                let mut k = [0u8; 32];
                k[0] = y;
                k
            })
            .find(|k| PublicKey::from_bytes(k, 0).is_err())
            .expect("some small y is off the curve");
        let mut file = bytes.clone();
        file.extend_from_slice(&bad);
        assert!(matches!(
            TrustAnchor::from_bytes(&file),
            Err(SignError::BadPublicKey { index: 2, .. })
        ));
    }

    #[test]
    fn debug_hides_secret() {
        let k = key(7);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&hex::encode(k.seed())));
    }
}
