//! The composite image container: byte layout, writer and streaming reader.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "SHLFIMG\0"
//! 8       2     container format version, big endian (1)
//! 10      2     flags, must be 0
//! 12      4     manifest length L, big endian (1 ..= 16 MiB)
//! 16      32    signer's ed25519 public key
//! 48      64    ed25519 signature over  "shelfboot-composite-v1\0" || bytes[0..48] || manifest
//! 112     L     manifest (JSON, see manifest.rs)
//! 112+L   ...   blobs, concatenated in manifest order, no padding; the file ends exactly
//!               after the last blob
//! ```
//!
//! The reader checks the header, the signature and the signer's trust before it parses
//! the manifest, and hands out blobs one at a time as bounded readers, so an image is never
//! held in memory. Hashing the blobs is the caller's job (see [`crate::blobs`]).

use std::io::{self, Read, Write};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use shelfboot_proto::id::Digest;

use super::manifest::{Manifest, ManifestError};

/// The 8 magic bytes at offset 0.
pub const MAGIC: [u8; 8] = *b"SHLFIMG\0";
/// Container format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Fixed header size.
pub const HEADER_LEN: usize = 112;
/// Largest manifest accepted.
pub const MAX_MANIFEST: u32 = 16 << 20;
/// Domain separation for the signature.
pub const SIGNING_CONTEXT: &[u8] = b"shelfboot-composite-v1\0";

/// Errors reading or writing a composite image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image is truncated: the {what} needs {need} bytes but only {got} are there")]
    Truncated {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("not a shelfboot composite image (bad magic at offset 0)")]
    BadMagic,
    #[error(
        "composite format version {0} is not supported (this master reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u16),
    #[error("image header is corrupt: {0}")]
    CorruptHeader(String),
    #[error(
        "bad signature: the manifest was not signed by the key in the header (image corrupt or tampered with)"
    )]
    BadSignature,
    #[error(
        "untrusted key: the image is signed by key {key_id}, which is not a trusted vendor key (add it with `master trust add KEY.pub`)"
    )]
    UntrustedKey { key_id: String },
    #[error("manifest is corrupt: not valid manifest JSON")]
    ManifestJson(#[source] serde_json::Error),
    #[error("manifest is invalid")]
    Manifest(#[source] ManifestError),
    #[error("image is corrupt: {0} unexpected bytes after the last blob")]
    TrailingBytes(u64),
    #[error("reading the image failed")]
    Read(#[source] io::Error),
    #[error("writing the image failed")]
    Write(#[source] io::Error),
    #[error("cannot serialize the manifest")]
    Serialize(#[source] serde_json::Error),
}

fn signed_bytes(head: &[u8], manifest: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + head.len() + manifest.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(head);
    msg.extend_from_slice(manifest);
    msg
}

/// Writes header + signed manifest; the caller then writes the blobs in manifest order
/// with [`write_blob`].
pub fn write_header(
    out: &mut impl Write,
    key: &SigningKey,
    manifest: &Manifest,
) -> Result<(), ImageError> {
    let json = serde_json::to_vec(manifest).map_err(ImageError::Serialize)?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|l| *l <= MAX_MANIFEST)
        .ok_or_else(|| ImageError::CorruptHeader(format!("manifest of {} bytes", json.len())))?;
    let mut head = Vec::with_capacity(HEADER_LEN);
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    head.extend_from_slice(&0u16.to_be_bytes());
    head.extend_from_slice(&len.to_be_bytes());
    head.extend_from_slice(key.verifying_key().as_bytes());
    let sig = key.sign(&signed_bytes(&head, &json));
    head.extend_from_slice(&sig.to_bytes());
    out.write_all(&head).map_err(ImageError::Write)?;
    out.write_all(&json).map_err(ImageError::Write)
}

/// Copies one blob's bytes into the image.
pub fn write_blob(out: &mut impl Write, src: &mut impl Read) -> Result<u64, ImageError> {
    io::copy(src, out).map_err(ImageError::Write)
}

/// Reads into `buf` until full or EOF; returns bytes read.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> Result<usize, ImageError> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::Read(e)),
        }
    }
    Ok(got)
}

/// An image whose header and manifest have been verified; blobs follow in `src`.
#[derive(Debug)]
pub struct VerifiedImage<R> {
    pub manifest: Manifest,
    /// sha256 of the manifest bytes: the release's identity for re-import checks.
    pub manifest_sha256: Digest,
    pub signer: VerifyingKey,
    src: R,
}

impl<R: Read> VerifiedImage<R> {
    /// Reads and verifies the header and manifest. `trusted` decides whether the signer's
    /// key is trusted.
    pub fn open(mut src: R, trusted: impl Fn(&VerifyingKey) -> bool) -> Result<Self, ImageError> {
        let mut head = [0u8; HEADER_LEN];
        let got = read_full(&mut src, &mut head)?;
        if got >= MAGIC.len() && head[..8] != MAGIC {
            return Err(ImageError::BadMagic);
        }
        if got < HEADER_LEN {
            return Err(ImageError::Truncated {
                what: "header",
                need: HEADER_LEN,
                got,
            });
        }
        let version = u16::from_be_bytes([head[8], head[9]]);
        if version != FORMAT_VERSION {
            return Err(ImageError::UnsupportedVersion(version));
        }
        let flags = u16::from_be_bytes([head[10], head[11]]);
        if flags != 0 {
            return Err(ImageError::CorruptHeader(format!(
                "flags are {flags:#06x}, must be 0"
            )));
        }
        let len = u32::from_be_bytes([head[12], head[13], head[14], head[15]]);
        if len == 0 || len > MAX_MANIFEST {
            return Err(ImageError::CorruptHeader(format!(
                "manifest length {len} is outside 1..={MAX_MANIFEST}"
            )));
        }
        let mut key_bytes = [0u8; 32];
        key_bytes.copy_from_slice(&head[16..48]);
        let mut sig_bytes = [0u8; 64];
        sig_bytes.copy_from_slice(&head[48..112]);
        // `len` is at most MAX_MANIFEST (16 MiB), so it fits in usize.
        let len = usize::try_from(len).map_err(|_| {
            ImageError::CorruptHeader(format!("manifest length {len} does not fit"))
        })?;
        let mut json = vec![0u8; len];
        let got = read_full(&mut src, &mut json)?;
        if got < len {
            return Err(ImageError::Truncated {
                what: "manifest",
                need: len,
                got,
            });
        }
        let signer = VerifyingKey::from_bytes(&key_bytes).map_err(|_| ImageError::BadSignature)?;
        let sig = Signature::from_bytes(&sig_bytes);
        signer
            .verify(&signed_bytes(&head[..48], &json), &sig)
            .map_err(|_| ImageError::BadSignature)?;
        if !trusted(&signer) {
            return Err(ImageError::UntrustedKey {
                key_id: crate::keys::key_id(&signer),
            });
        }
        let manifest: Manifest = serde_json::from_slice(&json).map_err(ImageError::ManifestJson)?;
        manifest.validate().map_err(ImageError::Manifest)?;
        Ok(Self {
            manifest,
            manifest_sha256: Digest::of(&json),
            signer,
            src,
        })
    }

    /// The stream positioned at the next blob. Callers read exactly each blob's size, in
    /// manifest order.
    pub fn blob_stream(&mut self) -> &mut R {
        &mut self.src
    }

    /// Checks that the image ends right after the last blob.
    pub fn finish(mut self) -> Result<(), ImageError> {
        let mut extra = 0u64;
        let mut buf = [0u8; 4096];
        loop {
            let n = read_full(&mut self.src, &mut buf)?;
            if n == 0 {
                break;
            }
            extra += n as u64;
        }
        if extra > 0 {
            return Err(ImageError::TrailingBytes(extra));
        }
        Ok(())
    }
}
