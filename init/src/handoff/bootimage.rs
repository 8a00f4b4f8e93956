//! Reading a shelfboot boot-image container out of a volume, straight into the two
//! regular files kexec_file_load needs.
//!
//! The container format is owned by `shelfboot-mkinitramfs` (`bootimage.rs`, documented
//! in docs/lab.md); this is a mirror of its header parser (init must not link
//! mkinitramfs: it pulls C compression libraries that do not cross-build for a static
//! aarch64 target). A test cross-checks the mirror against mkinitramfs's builder. The
//! sections are streamed in bounded chunks and their sha256 checked before the files are
//! used. Not here: building images, signature checks (the image is an artifact of a
//! signed, already verified set).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Container magic.
pub const MAGIC: &[u8; 8] = b"SHBOOTIM";
/// Header length.
pub const HEADER_LEN: usize = 144;
const MAX_CMDLINE: u32 = 4096;
const CHUNK: usize = 64 * 1024;

/// Parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Kernel length.
    pub kernel_len: u64,
    /// Initramfs length.
    pub initramfs_len: u64,
    /// Command-line length.
    pub cmdline_len: u32,
    sha: [[u8; 32]; 3],
}

/// Errors extracting a boot image.
#[derive(Debug, thiserror::Error)]
pub enum BootImageError {
    /// Not a version-1 container.
    #[error("volume {volume} does not hold a version-1 shelfboot boot image ({what})")]
    Format {
        /// Volume name.
        volume: String,
        /// What is wrong.
        what: &'static str,
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

fn le_u32(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Parses the 144-byte header.
pub fn parse_header(b: &[u8; HEADER_LEN], volume: &str) -> Result<Header, BootImageError> {
    let bad = |what| BootImageError::Format {
        volume: volume.to_string(),
        what,
    };
    if b.get(..8) != Some(&MAGIC[..]) {
        return Err(bad("no SHBOOTIM magic"));
    }
    if le_u32(b, 8) != 1 {
        return Err(bad("unsupported version"));
    }
    if le_u32(b, 12) != 144 || le_u32(b, 36) != 0 || le_u64(b, 136) != 0 {
        return Err(bad("malformed header"));
    }
    let mut sha = [[0u8; 32]; 3];
    for (i, s) in sha.iter_mut().enumerate() {
        if let Some(src) = b.get(104 - 32 * (2 - i)..136 - 32 * (2 - i)) {
            s.copy_from_slice(src);
        }
    }
    // order in the header: kernel @40, initramfs @72, cmdline @104
    let h = Header {
        kernel_len: le_u64(b, 16),
        initramfs_len: le_u64(b, 24),
        cmdline_len: le_u32(b, 32),
        sha,
    };
    if h.cmdline_len > MAX_CMDLINE {
        return Err(bad("command line longer than 4096 bytes"));
    }
    Ok(h)
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
    let h = parse_header(&head, volume)?;
    let mut cmd = vec![0u8; h.cmdline_len as usize];
    read_exact(
        volume,
        "command line",
        &mut read_at,
        HEADER_LEN as u64,
        &mut cmd,
    )?;
    if Sha256::digest(&cmd).as_slice() != h.sha[2] {
        return Err(BootImageError::Digest {
            volume: volume.to_string(),
            section: "command line",
        });
    }
    let cmdline = String::from_utf8(cmd).map_err(|_| BootImageError::Format {
        volume: volume.to_string(),
        what: "command line is not UTF-8",
    })?;
    let kernel_off = HEADER_LEN as u64 + u64::from(h.cmdline_len);
    let kernel = dir.join("kernel");
    let initramfs = dir.join("initramfs");
    copy_section(
        volume,
        "kernel",
        &mut read_at,
        kernel_off,
        h.kernel_len,
        &h.sha[0],
        &kernel,
    )?;
    let initrd_off = kernel_off
        .checked_add(h.kernel_len)
        .ok_or(BootImageError::Format {
            volume: volume.to_string(),
            what: "section lengths overflow",
        })?;
    copy_section(
        volume,
        "initramfs",
        &mut read_at,
        initrd_off,
        h.initramfs_len,
        &h.sha[1],
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
    want: &[u8; 32],
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
    if hasher.finalize().as_slice() != want {
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
        assert!(err.to_string().contains("magic"), "{err}");
    }
}
