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
//! contents are streamed, never held whole. The newc format itself is written by
//! mkinitramfs's streaming writer (`shelfboot_mkinitramfs::newc::Writer`), the same one
//! that builds the images. Not here: reading archives (the kernel does), compression.

use std::fs::{File, OpenOptions};
use std::io;
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
    /// Writing the archive member into the initramfs failed (tmpfs full?).
    #[error("cannot append the carried directory to {path}")]
    Archive {
        /// The initramfs file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: NewcError,
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

use shelfboot_mkinitramfs::newc::{self, NewcError, S_IFDIR, S_IFREG};

/// Walks the directory into mkinitramfs's streaming newc writer.
struct Carrier<'a> {
    w: newc::Writer<File>,
    path: &'a Path,
    ino: u32,
}

impl Carrier<'_> {
    fn write_err(&self) -> impl Fn(NewcError) -> CarryError + '_ {
        move |source| CarryError::Archive {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn header(&mut self, mode: u32) -> newc::Header {
        self.ino += 1;
        newc::Header {
            ino: self.ino,
            mode,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0,
            filesize: 0,
        }
    }

    fn empty_dir(&mut self, name: &str) -> Result<(), CarryError> {
        let h = self.header(S_IFDIR | 0o755);
        self.w.push(name, &h, &[]).map_err(self.write_err())
    }

    fn file(&mut self, name: &str, src: &Path) -> Result<(), CarryError> {
        let read = |source| CarryError::Read {
            path: src.to_path_buf(),
            source,
        };
        let mut f = File::open(src).map_err(read)?;
        let len = f.metadata().map_err(read)?.len();
        let h = self.header(S_IFREG | 0o644);
        match self.w.push_from(name, &h, len, &mut f) {
            Ok(()) => Ok(()),
            // The source file shrank under us: a read problem, named by its path.
            Err(NewcError::Copy { source, .. })
                if source.kind() == io::ErrorKind::UnexpectedEof =>
            {
                Err(read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{src:?} changed size while being carried ({source})"),
                )))
            }
            Err(e) => Err(self.write_err()(e)),
        }
    }

    fn dir(&mut self, name: &str, src: &Path) -> Result<(), CarryError> {
        self.empty_dir(name)?;
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
    let write = |source| CarryError::Write {
        path: initramfs.to_path_buf(),
        source,
    };
    let out = OpenOptions::new()
        .append(true)
        .open(initramfs)
        .map_err(write)?;
    let start = out.metadata().map_err(write)?.len();
    // The next member must start on a 4-byte boundary; zeros are skipped by the kernel.
    let w = newc::Writer::append_to(out, start).map_err(|source| CarryError::Archive {
        path: initramfs.to_path_buf(),
        source,
    })?;
    let mut c = Carrier {
        w,
        path: initramfs,
        ino: 0x5b00_0000,
    };
    let parts: Vec<&str> = rel.split('/').collect();
    for i in 1..parts.len() {
        c.empty_dir(&parts[..i].join("/"))?;
    }
    c.dir(rel, src)?;
    c.w.trailer().map_err(c.write_err())?;
    let end = c.w.offset();
    c.w.into_inner().sync_all().map_err(write)?;
    Ok(end - start)
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
