//! Getting a PVH-bootable ELF `vmlinux` out of a Debian bzImage, so QEMU can boot it
//! directly (`-kernel vmlinux`) and skip ~2 s of in-guest XZ decompression under TCG
//! (shared/notes/qemu-lab.md §1).
//!
//! What it does: locate the compressed payload from the x86 boot protocol header
//! (`setup_sects` at 0x1f1, `HdrS` at 0x202, `payload_offset`/`payload_length` at
//! 0x248/0x24c, protocol ≥ 2.08) — a pure function — and decompress it with the host's
//! `xz` (xz-utils). What it does not do: payloads other than XZ (Debian's choice), or
//! checking that the kernel has CONFIG_PVH (QEMU says so if not).

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Errors extracting vmlinux.
#[derive(Debug, thiserror::Error)]
pub enum VmlinuxError {
    /// The file is not a bzImage we understand.
    #[error("{path} is not a usable bzImage: {what}")]
    NotBzImage {
        /// The kernel file.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// Reading or writing failed.
    #[error("cannot {action} {path}")]
    Io {
        /// read/write.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// xz failed.
    #[error(
        "`xz -dc --single-stream` failed on the payload of {path}: {detail}; is xz-utils installed?"
    )]
    Xz {
        /// The kernel file.
        path: PathBuf,
        /// What happened.
        detail: String,
    },
}

const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];

fn le_u32(d: &[u8], at: usize) -> Option<u32> {
    let b = d.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The byte range of the compressed payload inside a bzImage, or what is wrong.
pub fn payload_range(d: &[u8]) -> Result<Range<usize>, &'static str> {
    if d.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err("no HdrS boot-protocol signature at 0x202");
    }
    let version = d
        .get(0x206..0x208)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or("truncated header")?;
    if version < 0x208 {
        return Err("boot protocol older than 2.08 has no payload fields");
    }
    let setup_sects = match d.get(0x1f1).copied().ok_or("truncated header")? {
        0 => 4,
        n => usize::from(n),
    };
    let offset = le_u32(d, 0x248).ok_or("truncated header")? as usize;
    let length = le_u32(d, 0x24c).ok_or("truncated header")? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    let end = start
        .checked_add(length)
        .ok_or("payload length overflows")?;
    if end > d.len() {
        return Err("payload extends past the end of the file");
    }
    Ok(start..end)
}

/// Extracts the ELF vmlinux of `bzimage` into `out` (written via a temporary file).
pub fn extract(bzimage: &Path, out: &Path) -> Result<(), VmlinuxError> {
    let data = std::fs::read(bzimage).map_err(|source| VmlinuxError::Io {
        action: "read",
        path: bzimage.to_path_buf(),
        source,
    })?;
    let not = |what| VmlinuxError::NotBzImage {
        path: bzimage.to_path_buf(),
        what,
    };
    let range = payload_range(&data).map_err(not)?;
    let payload = &data[range];
    if !payload.starts_with(XZ_MAGIC) {
        return Err(not("the payload is not XZ-compressed"));
    }
    let xz_err = |detail: String| VmlinuxError::Xz {
        path: bzimage.to_path_buf(),
        detail,
    };
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| xz_err(e.to_string()))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| xz_err("no stdin pipe".into()))?;
    let elf = std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(payload));
        let out = child.wait_with_output();
        (writer.join(), out)
    });
    let output = match elf {
        (Ok(Ok(())), Ok(o)) if o.status.success() => o.stdout,
        (_, Ok(o)) => {
            return Err(xz_err(format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        (_, Err(e)) => return Err(xz_err(e.to_string())),
    };
    if !output.starts_with(b"\x7fELF") {
        return Err(not("the decompressed payload is not an ELF file"));
    }
    let tmp = out.with_extension("tmp");
    let io = |source| VmlinuxError::Io {
        action: "write",
        path: out.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, &output).map_err(io)?;
    std::fs::rename(&tmp, out).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(setup_sects: u8, payload: &[u8], version: u16) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            usize::from(setup_sects)
        };
        let mut d = vec![0u8; (sects + 1) * 512 + 16];
        d[0x1f1] = setup_sects;
        d[0x202..0x206].copy_from_slice(b"HdrS");
        d[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        d[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        d[0x24c..0x250].copy_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        d.extend_from_slice(payload);
        d.extend_from_slice(b"trailing");
        d
    }

    #[test]
    fn finds_the_payload() {
        let d = fake_bzimage(0, b"PAYLOAD", 0x20f);
        let r = payload_range(&d).unwrap();
        assert_eq!(&d[r], b"PAYLOAD");
        let d = fake_bzimage(30, b"P2", 0x20f);
        let r = payload_range(&d).unwrap();
        assert_eq!(r.start, 31 * 512 + 16);
        assert_eq!(&d[r], b"P2");
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(payload_range(&[0u8; 100]).is_err());
        assert!(payload_range(&fake_bzimage(0, b"x", 0x207)).is_err());
        let mut d = fake_bzimage(0, b"x", 0x20f);
        d[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(payload_range(&d).is_err());
    }

    #[test]
    fn extracts_an_xz_elf_payload() {
        if Command::new("xz").arg("--version").output().is_err() {
            eprintln!("skipped: xz (xz-utils) is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let elf = b"\x7fELF fake kernel body".repeat(50);
        std::fs::write(dir.path().join("k"), &elf).unwrap();
        let st = Command::new("xz")
            .args(["-kf", "--check=crc32"])
            .arg(dir.path().join("k"))
            .status()
            .unwrap();
        assert!(st.success());
        let xz = std::fs::read(dir.path().join("k.xz")).unwrap();
        let bz = dir.path().join("bzImage");
        std::fs::write(&bz, fake_bzimage(0, &xz, 0x20f)).unwrap();
        let out = dir.path().join("vmlinux");
        extract(&bz, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), elf);
        std::fs::write(&bz, fake_bzimage(0, b"not xz", 0x20f)).unwrap();
        assert!(
            extract(&bz, &out)
                .unwrap_err()
                .to_string()
                .contains("not XZ")
        );
    }
}
