//! Carrying a directory across kexec: append it, as an uncompressed newc cpio archive, to
//! the initramfs file the next kernel is loaded with.
//!
//! ```text
//! initramfs file:  [the boot image's initramfs (gzip, zstd or plain cpio)]
//!                  [zero padding to a multiple of 4]
//!                  [newc: parent dirs of DEST, DEST, DEST/<every file and dir>, TRAILER!!!]
//! ```
//!
//! The kernel unpacks concatenated archives in order (compressed members are followed by
//! the next member; zero bytes between members are skipped; an uncompressed member must
//! start at a 4-byte boundary), so the next init finds the directory at `DEST` in its
//! root filesystem. Test mode uses it to hand the RAM store to a kexec'd test image,
//! which then needs no second download.
//!
//! Entries: directories before their contents, sorted names, mode 0755 for directories
//! and 0644 for files, uid/gid 0, mtime 0, one link each, distinct inode numbers. Only
//! directories and regular files are copied (anything else is an error naming it). File
//! contents are streamed, never held whole. Not here: reading archives (the kernel does),
//! compression.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Why the directory could not be carried.
#[derive(Debug, thiserror::Error)]
pub enum CarryError {
    /// Reading the directory or one of its files failed.
    #[error("cannot read {path} to carry it across kexec")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Appending to the initramfs failed (tmpfs full?).
    #[error("cannot append to {path}")]
    Write {
        /// The initramfs file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Something other than a file or directory (symlink, device) is in the directory.
    #[error("{path} is neither a regular file nor a directory: not carried")]
    Unsupported {
        /// The entry.
        path: PathBuf,
    },
    /// The archive path is not absolute or has `..`.
    #[error("archive destination {dest} must be an absolute path without ..")]
    BadDest {
        /// The destination.
        dest: String,
    },
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;

struct Writer<'a> {
    out: File,
    path: &'a Path,
    ino: u32,
    written: u64,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), CarryError> {
        self.out.write_all(b).map_err(|source| CarryError::Write {
            path: self.path.to_path_buf(),
            source,
        })?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), CarryError> {
        let n = (4 - (self.written % 4)) % 4;
        self.put(&[0u8; 3][..usize::try_from(n).unwrap_or(0)])
    }

    /// One newc header + name (+ padding).
    fn header(&mut self, name: &str, mode: u32, size: u64) -> Result<(), CarryError> {
        self.ino += 1;
        let namesize = name.len() + 1;
        let size32 = u32::try_from(size).map_err(|_| CarryError::Write {
            path: self.path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::FileTooLarge, "newc entries are < 4 GiB"),
        })?;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            size32,
            0,
            0,
            0,
            0,
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0,
        ];
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn file(&mut self, name: &str, src: &Path) -> Result<(), CarryError> {
        let read = |source| CarryError::Read {
            path: src.to_path_buf(),
            source,
        };
        let mut f = File::open(src).map_err(read)?;
        let len = f.metadata().map_err(read)?.len();
        self.header(name, S_IFREG | 0o644, len)?;
        let copied = io::copy(&mut (&mut f).take(len), &mut self.out).map_err(|source| {
            CarryError::Write {
                path: self.path.to_path_buf(),
                source,
            }
        })?;
        if copied != len {
            return Err(read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{src:?} changed size while being carried ({copied} of {len} bytes)"),
            )));
        }
        self.written += len;
        self.pad()
    }

    fn dir(&mut self, name: &str, src: &Path) -> Result<(), CarryError> {
        self.header(name, S_IFDIR | 0o755, 0)?;
        let read = |source| CarryError::Read {
            path: src.to_path_buf(),
            source,
        };
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(read)?
            .collect::<Result<_, _>>()
            .map_err(read)?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let path = e.path();
            let child = format!("{name}/{}", e.file_name().to_string_lossy());
            let t = e.file_type().map_err(|source| CarryError::Read {
                path: path.clone(),
                source,
            })?;
            if t.is_dir() {
                self.dir(&child, &path)?;
            } else if t.is_file() {
                self.file(&child, &path)?;
            } else {
                return Err(CarryError::Unsupported { path });
            }
        }
        Ok(())
    }
}

/// Appends `src` (a directory) to the archive file `initramfs` so that it unpacks at
/// `dest` (absolute, e.g. `/shelfboot-test/ram`). Returns the bytes appended.
pub fn append_dir(initramfs: &Path, src: &Path, dest: &str) -> Result<u64, CarryError> {
    let rel = dest.strip_prefix('/').unwrap_or("");
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(CarryError::BadDest {
            dest: dest.to_string(),
        });
    }
    let out = OpenOptions::new()
        .append(true)
        .open(initramfs)
        .map_err(|source| CarryError::Write {
            path: initramfs.to_path_buf(),
            source,
        })?;
    let start = out
        .metadata()
        .map_err(|source| CarryError::Write {
            path: initramfs.to_path_buf(),
            source,
        })?
        .len();
    let mut w = Writer {
        out,
        path: initramfs,
        ino: 0x5b00_0000,
        written: start,
    };
    // The next member must start on a 4-byte boundary; zeros are skipped by the kernel.
    w.pad()?;
    let parts: Vec<&str> = rel.split('/').collect();
    for i in 1..parts.len() {
        w.header(&parts[..i].join("/"), S_IFDIR | 0o755, 0)?;
    }
    w.dir(rel, src)?;
    w.header("TRAILER!!!", 0, 0)?;
    w.out.sync_all().map_err(|source| CarryError::Write {
        path: initramfs.to_path_buf(),
        source,
    })?;
    Ok(w.written - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal newc reader for the test: (name, mode, data) of every entry.
    fn read_newc(mut b: &[u8], mut off: usize) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            while b.first() == Some(&0) {
                b = &b[1..];
                off += 1;
            }
            assert_eq!(off % 4, 0, "member starts 4-byte aligned");
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            let data_at = (110 + namesize).div_ceil(4) * 4;
            let data = b[data_at..data_at + size].to_vec();
            let next = (data_at + size).div_ceil(4) * 4;
            b = &b[next..];
            off += next;
            if name == "TRAILER!!!" {
                assert!(b.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn directory_is_appended_as_an_aligned_newc_member() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("ram");
        std::fs::create_dir_all(src.join("blobs")).unwrap();
        std::fs::write(src.join("table"), b"SBVT-table").unwrap();
        std::fs::write(src.join("blobs/v1-0"), vec![7u8; 5]).unwrap();
        std::fs::write(src.join("blobs/v0-1"), b"").unwrap();
        let initrd = t.path().join("initramfs");
        std::fs::write(&initrd, b"gzip-bytes").unwrap(); // 10 bytes: 2 of padding
        let n = append_dir(&initrd, &src, "/shelfboot-test/ram").unwrap();
        let all = std::fs::read(&initrd).unwrap();
        assert_eq!(all.len() as u64, 10 + n);
        assert_eq!(
            &all[..10],
            b"gzip-bytes",
            "the boot image's initramfs is unchanged"
        );
        let entries = read_newc(&all[10..], 10);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "shelfboot-test",
                "shelfboot-test/ram",
                "shelfboot-test/ram/blobs",
                "shelfboot-test/ram/blobs/v0-1",
                "shelfboot-test/ram/blobs/v1-0",
                "shelfboot-test/ram/table"
            ]
        );
        assert_eq!(entries[0].1, S_IFDIR | 0o755);
        assert_eq!(
            entries[4],
            (
                "shelfboot-test/ram/blobs/v1-0".into(),
                S_IFREG | 0o644,
                vec![7u8; 5]
            )
        );
        assert_eq!(entries[5].2, b"SBVT-table");
    }

    #[test]
    fn bad_destinations_and_special_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let initrd = t.path().join("initramfs");
        std::fs::write(&initrd, b"").unwrap();
        for d in ["relative", "/", "/a/../b", "/a//b"] {
            assert!(matches!(
                append_dir(&initrd, t.path(), d),
                Err(CarryError::BadDest { .. })
            ));
        }
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::os::unix::fs::symlink("/etc", src.join("link")).unwrap();
        assert!(matches!(
            append_dir(&initrd, &src, "/x"),
            Err(CarryError::Unsupported { .. })
        ));
    }
}
