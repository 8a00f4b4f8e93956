//! Reading a shelfboot boot-image container out of a volume, straight into the two
//! regular files kexec_file_load needs.
//!
//! The container format is owned by `shelfboot-mkinitramfs` (`bootimage.rs`, documented
//! in docs/lab.md): its header parser ([`parse_header`]) is the one used here, linked
//! without mkinitramfs's default features (no C compression libraries, so the static
//! init still cross-builds for aarch64). The sections are streamed in bounded chunks and
//! their sha256 checked before the files are used. Not here: building images, signature
//! checks (the image is an artifact of a signed, already verified set).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use shelfboot_mkinitramfs::bootimage::{HEADER_LEN, parse_header};
use shelfboot_proto::id::Digest;

const CHUNK: usize = 64 * 1024;

/// Errors extracting a boot image.
#[derive(Debug, thiserror::Error)]
pub enum BootImageError {
    /// The header is not that of a version-1 container.
    #[error("volume {volume} does not hold a version-1 shelfboot boot image")]
    Header {
        /// Volume name.
        volume: String,
        /// What is wrong with it.
        #[source]
        source: shelfboot_mkinitramfs::bootimage::BootImageError,
    },
    /// The command line is not UTF-8.
    #[error("boot image volume {volume}: the command line is not UTF-8")]
    Cmdline {
        /// Volume name.
        volume: String,
    },
    /// Reading the volume failed.
    #[error("cannot read {section} of boot image volume {volume}")]
    Read {
        /// Volume name.
        volume: String,
        /// Which part.
        section: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The volume ended early.
    #[error("boot image volume {volume} ends inside its {section}")]
    Truncated {
        /// Volume name.
        volume: String,
        /// Which part.
        section: &'static str,
    },
    /// Writing to tmpfs failed.
    #[error("cannot write {path} (is /run large enough for the kernel and initramfs?)")]
    Write {
        /// Target file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A section's digest is wrong.
    #[error(
        "boot image volume {volume}: {section} does not match its sha256; the volume is corrupt"
    )]
    Digest {
        /// Volume name.
        volume: String,
        /// Which part.
        section: &'static str,
    },
}

/// What [`extract`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// The kernel file.
    pub kernel: PathBuf,
    /// The initramfs file.
    pub initramfs: PathBuf,
    /// The container's own command line.
    pub cmdline: String,
}

/// Streams the container read by `read_at(offset, buf) -> bytes read` into
/// `dir/kernel` and `dir/initramfs`, checking all three digests.
pub fn extract<E>(
    volume: &str,
    mut read_at: impl FnMut(u64, &mut [u8]) -> Result<usize, E>,
    dir: &Path,
) -> Result<Extracted, BootImageError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut head = [0u8; HEADER_LEN];
    read_exact(volume, "header", &mut read_at, 0, &mut head)?;
    let h = parse_header(&head).map_err(|source| BootImageError::Header {
        volume: volume.to_string(),
        source,
    })?;
    let mut cmd = vec![0u8; h.cmdline_len as usize];
    read_exact(
        volume,
        "command line",
        &mut read_at,
        HEADER_LEN as u64,
        &mut cmd,
    )?;
    if Digest::of(&cmd) != h.cmdline_sha256 {
        return Err(BootImageError::Digest {
            volume: volume.to_string(),
            section: "command line",
        });
    }
    let cmdline = String::from_utf8(cmd).map_err(|_| BootImageError::Cmdline {
        volume: volume.to_string(),
    })?;
    let kernel_off = h.kernel_offset();
    let kernel = dir.join("kernel");
    let initramfs = dir.join("initramfs");
    copy_section(
        volume,
        "kernel",
        &mut read_at,
        kernel_off,
        h.kernel_len,
        &h.kernel_sha256,
        &kernel,
    )?;
    // parse_header refused lengths that overflow.
    let initrd_off = h.initramfs_offset();
    copy_section(
        volume,
        "initramfs",
        &mut read_at,
        initrd_off,
        h.initramfs_len,
        &h.initramfs_sha256,
        &initramfs,
    )?;
    Ok(Extracted {
        kernel,
        initramfs,
        cmdline,
    })
}

fn read_exact<E>(
    volume: &str,
    section: &'static str,
    read_at: &mut impl FnMut(u64, &mut [u8]) -> Result<usize, E>,
    mut offset: u64,
    mut buf: &mut [u8],
) -> Result<(), BootImageError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    while !buf.is_empty() {
        let n = read_at(offset, buf).map_err(|e| BootImageError::Read {
            volume: volume.to_string(),
            section,
            source: Box::new(e),
        })?;
        if n == 0 {
            return Err(BootImageError::Truncated {
                volume: volume.to_string(),
                section,
            });
        }
        buf = buf.get_mut(n..).unwrap_or_default();
        offset += n as u64;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn copy_section<E>(
    volume: &str,
    section: &'static str,
    read_at: &mut impl FnMut(u64, &mut [u8]) -> Result<usize, E>,
    offset: u64,
    len: u64,
    want: &Digest,
    path: &Path,
) -> Result<(), BootImageError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let werr = |source| BootImageError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut out = File::create(path).map_err(werr)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from((len - done).min(CHUNK as u64)).unwrap_or(CHUNK);
        let chunk = buf.get_mut(..n).unwrap_or_default();
        read_exact(volume, section, read_at, offset + done, chunk)?;
        hasher.update(&*chunk);
        out.write_all(chunk).map_err(werr)?;
        done += n as u64;
    }
    out.sync_all().map_err(werr)?;
    if hasher.finalize().as_slice() != want.as_bytes() {
        return Err(BootImageError::Digest {
            volume: volume.to_string(),
            section,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(img: Vec<u8>) -> impl FnMut(u64, &mut [u8]) -> Result<usize, io::Error> {
        move |off, buf| {
            let off = usize::try_from(off).unwrap();
            let avail = img.get(off..).unwrap_or(&[]);
            // short reads on purpose: at most 1000 bytes per call
            let n = avail.len().min(buf.len()).min(1000);
            buf[..n].copy_from_slice(&avail[..n]);
            Ok(n)
        }
    }

    #[test]
    fn extracts_what_mkinitramfs_builds() {
        let kernel: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let initrd = vec![7u8; 70_000];
        let img = shelfboot_mkinitramfs::bootimage::build(&kernel, &initrd, "console=ttyS0 quiet")
            .unwrap();
        let t = tempfile::tempdir().unwrap();
        let x = extract("sb.boot", reader(img), t.path()).unwrap();
        assert_eq!(x.cmdline, "console=ttyS0 quiet");
        assert_eq!(std::fs::read(&x.kernel).unwrap(), kernel);
        assert_eq!(std::fs::read(&x.initramfs).unwrap(), initrd);
    }

    #[test]
    fn corrupt_or_short_volumes_are_named() {
        let img = shelfboot_mkinitramfs::bootimage::build(b"kernel", b"initrd", "c").unwrap();
        let t = tempfile::tempdir().unwrap();
        let mut bad = img.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let err = extract("sb.boot", reader(bad), t.path()).unwrap_err();
        assert!(
            err.to_string().contains("initramfs does not match"),
            "{err}"
        );
        let err = extract("sb.boot", reader(img[..150].to_vec()), t.path()).unwrap_err();
        assert!(
            matches!(
                err,
                BootImageError::Truncated {
                    section: "kernel",
                    ..
                }
            ),
            "{err}"
        );
        let err = extract("sb.boot", reader(vec![0xFF; 4096]), t.path()).unwrap_err();
        let err = shelfboot_proto::report::error_chain(&err);
        assert!(err.contains("magic"), "{err}");
    }
}
