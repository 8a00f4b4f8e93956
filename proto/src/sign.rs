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
//! | MasterCert | `shelfboot/master-cert/v1\0` | [`MasterCertBody`] (the certified key) |
//!
//! A plan or command is signed by a *trusted* key: a key of the [`TrustAnchor`] itself, or
//! the master plan key named by the [`MasterCert`] the message carries (`mc`) when that
//! certificate is signed by a key of the anchor. In a cluster of masters the anchor holds
//! one *shelf key* that certifies every master's plan key, so a new or replaced master
//! needs a certificate, not a new initramfs. A certificate vouches for plan and command
//! signatures only: manifests are verified under anchor keys alone.
//!
//! A plan is accepted only if it is signed by a trusted key, its nonce is the one the card
//! sent in its Solicit, and its digest is the [`set_digest`] of its artifacts and command
//! line. Verification uses `verify_strict` (rejects malleable and small-order signatures).
//!
//! This module does not store keys on disk or decide which keys to trust: mkinitramfs bakes
//! the anchor into the initramfs and the master holds the signing key and its certificate.

use std::fmt;

use ed25519_dalek::Signer as _;
use serde::Serialize;
use thiserror::Error;

use crate::msg::{
    Command, CommandBody, Digest, MasterCert, MasterCertBody, Nonce, Plan, PlanBody, Signature,
    set_digest,
};

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
    /// A [`MasterCertBody`]: a shelf key certifying a master's plan key.
    MasterCert,
}

impl Domain {
    /// The domain tag prepended to the signed bytes. Frozen.
    pub const fn tag(self) -> &'static [u8] {
        match self {
            Domain::Plan => b"shelfboot/plan/v1\0",
            Domain::Command => b"shelfboot/command/v1\0",
            Domain::Manifest => b"shelfboot/manifest/v1\0",
            Domain::MasterCert => b"shelfboot/master-cert/v1\0",
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Domain::Plan => "plan",
            Domain::Command => "command",
            Domain::Manifest => "manifest",
            Domain::MasterCert => "master certificate",
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
        "{domain} signature does not verify under any of the {keys} trusted key(s): rejected; check that the card's trust anchor holds the master's public key (STATE/plan.anchor), or, in a cluster, that the master has a certificate by the shelf key (STATE/plan.cert, `master cluster certify`)"
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
    /// The message's signature is by no anchor key, and its master certificate is signed by
    /// none either.
    #[error(
        "master certificate of plan key {certified} is not signed by any of the {keys} trusted shelf key(s): {domain} rejected; certify the master's plan.pub with the shelf key whose .pub is in the card's initramfs (`master cluster certify`), or rebuild the initramfs with that shelf key"
    )]
    CertUntrusted {
        domain: Domain,
        certified: String,
        keys: usize,
    },
    /// The certificate verifies, but the message is signed by another key than the one it
    /// certifies.
    #[error(
        "{domain} signature is not by plan key {certified}, the key its master certificate certifies: rejected; the master signs with another key than the certified one: certify its current plan.pub (`master cluster certify`)"
    )]
    NotCertifiedSigner { domain: Domain, certified: String },
    /// A certificate signed by a trusted key whose certified key is not a curve point.
    #[error(
        "master certificate certifies bytes {certified} that are not a valid Ed25519 public key: rejected; certify the master's plan.pub again"
    )]
    BadCertKey {
        certified: String,
        #[source]
        source: ed25519_dalek::SignatureError,
    },
    /// A certificate given to a signer for another key than the signer's.
    #[error(
        "the master certificate certifies plan key {certified}, but this master signs with plan key {signing}: certify this master's plan.pub (`master cluster certify`) or remove the certificate"
    )]
    CertMismatch { certified: String, signing: String },
    /// Bytes that are not one canonical CBOR master certificate.
    #[error(
        "{len} bytes are not one master certificate (canonical CBOR {{\"b\": {{\"k\": key}}, \"s\": signature}}): write it again with `master cluster certify`"
    )]
    CertDecode { len: usize },
}

/// The short id of a public key, as keys are named to operators: the first 16 hex digits
/// of the sha256 of its 32 bytes.
pub fn key_id(key: &[u8; PUBLIC_KEY_LEN]) -> String {
    let mut id = Digest::of(key).to_string();
    id.truncate(16);
    id
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
        Ok(Plan {
            body,
            signature,
            cert: None,
        })
    }

    /// A signed command.
    pub fn sign_command(&self, body: CommandBody) -> Result<Command, SignError> {
        let signature = self.sign(Domain::Command, &canonical(Domain::Command, &body)?);
        Ok(Command {
            body,
            signature,
            cert: None,
        })
    }

    /// A certificate, signed with this (shelf) key, that lets `key` sign plans and commands
    /// for every card whose anchor holds this key.
    pub fn certify(&self, key: &PublicKey) -> Result<MasterCert, SignError> {
        let body = MasterCertBody {
            key: key.to_bytes(),
        };
        let signature = self.sign(Domain::MasterCert, &canonical(Domain::MasterCert, &body)?);
        Ok(MasterCert { body, signature })
    }
}

/// What a master signs plans and commands with: its plan key and, in a cluster, the
/// certificate of that key by the shelf key, attached to every plan and command it signs.
#[derive(Debug)]
pub struct MasterSigner {
    key: SigningKey,
    cert: Option<MasterCert>,
}

impl From<SigningKey> for MasterSigner {
    /// A signer whose key is itself in the cards' anchor: nothing attached.
    fn from(key: SigningKey) -> MasterSigner {
        MasterSigner { key, cert: None }
    }
}

impl MasterSigner {
    /// A signer attaching `cert`, which must certify `key`.
    pub fn certified(key: SigningKey, cert: MasterCert) -> Result<MasterSigner, SignError> {
        let signing = key.public_key().to_bytes();
        if cert.body.key != signing {
            return Err(SignError::CertMismatch {
                certified: key_id(&cert.body.key),
                signing: key_id(&signing),
            });
        }
        Ok(MasterSigner {
            key,
            cert: Some(cert),
        })
    }

    /// The plan public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The certificate attached, if any.
    pub fn cert(&self) -> Option<&MasterCert> {
        self.cert.as_ref()
    }

    /// A signed plan, carrying the certificate.
    pub fn sign_plan(&self, body: PlanBody) -> Result<Plan, SignError> {
        let mut plan = self.key.sign_plan(body)?;
        plan.cert = self.cert;
        Ok(plan)
    }

    /// A signed command, carrying the certificate.
    pub fn sign_command(&self, body: CommandBody) -> Result<Command, SignError> {
        let mut cmd = self.key.sign_command(body)?;
        cmd.cert = self.cert;
        Ok(cmd)
    }
}

impl MasterCert {
    /// The certificate's canonical CBOR bytes (what `plan.cert` files hold, hex-encoded).
    pub fn to_bytes(&self) -> Result<Vec<u8>, SignError> {
        canonical(Domain::MasterCert, self)
    }

    /// Parses [`MasterCert::to_bytes`]: exactly one canonical CBOR certificate. Does not
    /// check the signature (that takes the anchor: [`TrustAnchor::verify_cert`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<MasterCert, SignError> {
        let bad = || SignError::CertDecode { len: bytes.len() };
        let mut rest = bytes;
        let cert: MasterCert = ciborium::from_reader(&mut rest).map_err(|_| bad())?;
        if !rest.is_empty() || cert.to_bytes()? != bytes {
            return Err(bad());
        }
        Ok(cert)
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

    /// The master plan key `cert` certifies, if a key of this anchor signed it.
    pub fn verify_cert(&self, cert: &MasterCert, domain: Domain) -> Result<PublicKey, SignError> {
        let certified = key_id(&cert.body.key);
        self.verify(
            Domain::MasterCert,
            &canonical(Domain::MasterCert, &cert.body)?,
            &cert.signature,
        )
        .map_err(|_| SignError::CertUntrusted {
            domain,
            certified: certified.clone(),
            keys: self.keys.len(),
        })?;
        ed25519_dalek::VerifyingKey::from_bytes(&cert.body.key)
            .map(PublicKey)
            .map_err(|source| SignError::BadCertKey { certified, source })
    }

    /// The key under which `sig` signs `domain tag ‖ msg`: a key of the anchor, or else the
    /// key `cert` certifies (if a key of the anchor signed `cert`).
    pub fn verify_certified(
        &self,
        domain: Domain,
        msg: &[u8],
        sig: &Signature,
        cert: Option<&MasterCert>,
    ) -> Result<PublicKey, SignError> {
        let direct = self.verify(domain, msg, sig);
        let Some(cert) = cert else {
            return direct.copied();
        };
        if let Ok(k) = direct {
            return Ok(*k);
        }
        let certified = self.verify_cert(cert, domain)?;
        if certified.verify(domain, msg, sig) {
            Ok(certified)
        } else {
            Err(SignError::NotCertifiedSigner {
                domain,
                certified: key_id(&cert.body.key),
            })
        }
    }

    /// Accepts `plan` if it is signed by a trusted key (an anchor key, or the key of its
    /// certificate signed by an anchor key), answers `nonce`, and its digest is the set
    /// digest of its contents (a digest-only Continue, `artifacts_omitted`, carries no
    /// contents: the caller must compare its digest with the committed set).
    pub fn verify_plan(&self, plan: &Plan, nonce: &Nonce) -> Result<(), SignError> {
        self.verify_certified(
            Domain::Plan,
            &canonical(Domain::Plan, &plan.body)?,
            &plan.signature,
            plan.cert.as_ref(),
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

    /// Accepts `cmd` if it is signed by a trusted key (an anchor key, or the key of its
    /// certificate signed by an anchor key). Epoch and serial checks (replay) are the card
    /// state machine's.
    pub fn verify_command(&self, cmd: &Command) -> Result<(), SignError> {
        self.verify_certified(
            Domain::Command,
            &canonical(Domain::Command, &cmd.body)?,
            &cmd.signature,
            cmd.cert.as_ref(),
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
    fn plan_and_command_of_a_certified_key_verify_under_the_shelf_key() {
        let shelf = key(10);
        let master = key(11);
        let anchor = TrustAnchor::new(vec![key(2).public_key(), shelf.public_key()]);
        let cert = shelf.certify(&master.public_key()).unwrap();
        let signer = MasterSigner::certified(key(11), cert).unwrap();
        let plan = signer.sign_plan(body()).unwrap();
        assert_eq!(plan.cert, Some(cert));
        anchor.verify_plan(&plan, &[5; 16]).unwrap();
        let cmd = signer
            .sign_command(CommandBody {
                action: Action::Reset,
                target: None,
                epoch: 2,
                serial: 1,
            })
            .unwrap();
        anchor.verify_command(&cmd).unwrap();
        // The certificate is what makes the key trusted: without it, the plan is untrusted.
        let mut bare = plan.clone();
        bare.cert = None;
        assert!(matches!(
            anchor.verify_plan(&bare, &[5; 16]),
            Err(SignError::Untrusted { keys: 2, .. })
        ));
        // The other checks still apply to a certified plan.
        assert!(matches!(
            anchor.verify_plan(&plan, &[6; 16]),
            Err(SignError::NonceMismatch)
        ));
    }

    #[test]
    fn certificate_rejections_name_what_failed() {
        let shelf = key(10);
        let anchor = TrustAnchor::new(vec![shelf.public_key()]);
        // Certified by a key the card does not trust.
        let rogue_cert = key(12).certify(&key(11).public_key()).unwrap();
        let plan = MasterSigner::certified(key(11), rogue_cert)
            .unwrap()
            .sign_plan(body())
            .unwrap();
        let err = anchor.verify_plan(&plan, &[5; 16]).unwrap_err();
        assert!(
            matches!(&err, SignError::CertUntrusted { domain: Domain::Plan, keys: 1, certified }
                if *certified == key_id(&key(11).public_key().to_bytes())),
            "{err:?}"
        );
        assert!(err.to_string().contains("master cluster certify"), "{err}");
        // A genuine certificate of key 11 attached to a plan signed by key 13.
        let cert = shelf.certify(&key(11).public_key()).unwrap();
        let mut plan = key(13).sign_plan(body()).unwrap();
        plan.cert = Some(cert);
        assert!(matches!(
            anchor.verify_plan(&plan, &[5; 16]),
            Err(SignError::NotCertifiedSigner {
                domain: Domain::Plan,
                ..
            })
        ));
        // A certificate whose key was changed after signing.
        let mut forged = cert;
        forged.body.key = key(13).public_key().to_bytes();
        plan.cert = Some(forged);
        assert!(matches!(
            anchor.verify_plan(&plan, &[5; 16]),
            Err(SignError::CertUntrusted { .. })
        ));
        // A certificate is no manifest signature, and a plan signature no certificate.
        let sig = shelf.sign(
            Domain::Plan,
            &canonical(Domain::MasterCert, &cert.body).unwrap(),
        );
        let mut swapped = cert;
        swapped.signature = sig;
        assert!(anchor.verify_cert(&swapped, Domain::Plan).is_err());
        assert!(
            anchor
                .verify_manifest(
                    &canonical(Domain::MasterCert, &cert.body).unwrap(),
                    &cert.signature
                )
                .is_err()
        );
    }

    #[test]
    fn signer_refuses_a_certificate_of_another_key() {
        let cert = key(10).certify(&key(11).public_key()).unwrap();
        let err = MasterSigner::certified(key(12), cert).unwrap_err();
        assert!(
            matches!(&err, SignError::CertMismatch { certified, signing }
                if *certified == key_id(&key(11).public_key().to_bytes())
                    && *signing == key_id(&key(12).public_key().to_bytes())),
            "{err:?}"
        );
        assert!(MasterSigner::from(key(12)).cert().is_none());
    }

    #[test]
    fn certificate_bytes_round_trip_strictly() {
        let cert = key(10).certify(&key(11).public_key()).unwrap();
        let bytes = cert.to_bytes().unwrap();
        assert_eq!(bytes.len(), 108);
        assert_eq!(MasterCert::from_bytes(&bytes).unwrap(), cert);
        let mut trailing = bytes.clone();
        trailing.push(0);
        for bad in [&bytes[..100], &trailing[..], &[][..], &[0xa0][..]] {
            assert!(matches!(
                MasterCert::from_bytes(bad),
                Err(SignError::CertDecode { len }) if len == bad.len()
            ));
        }
    }

    #[test]
    fn debug_hides_secret() {
        let k = key(7);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&hex::encode(k.seed())));
    }
}
