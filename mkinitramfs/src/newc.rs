//! The newc ("070701") cpio format: one streaming writer that produces byte-identical
//! archives (the image builder's, in memory, and init's, appending a directory to the
//! next kernel's initramfs file) and a reader used by `mkinitramfs list` and by the tests.
//!
//! What it does: writes entries in the order given (the caller sorts; see `tree`), with
//! 4-byte padding after each header+name and after each body, hard links as one inode
//! whose data travels with the first name (the order the kernel's `init/initramfs.c`
//! expects), and the `TRAILER!!!` entry. Times, owners and inode numbers are whatever the
//! caller passes; `tree` fixes them. What it does not do: the CRC ("070702") variant,
//! device nodes (the card's init mounts devtmpfs), or compression (see `compress`).

use std::fmt::Write as _;
use std::io::{Read, Write};

/// Magic of the newc format (no checksum).
pub const MAGIC: &[u8; 6] = b"070701";
/// Header length: magic plus 13 fields of 8 hex digits.
pub const HEADER_LEN: usize = 110;
/// Name of the last entry.
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits of `mode`.
pub const S_IFMT: u32 = 0o170_000;
/// Directory.
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;

/// One header's worth of metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Inode number (hard links share it).
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
    /// Body length in bytes.
    pub filesize: u32,
}

/// Errors of the newc writer and reader.
#[derive(Debug, thiserror::Error)]
pub enum NewcError {
    /// A body does not fit the 32-bit size field.
    #[error(
        "cpio entry {name}: {len} bytes exceed the newc 4 GiB limit; ship it outside the initramfs"
    )]
    TooLarge {
        /// Entry name.
        name: String,
        /// Its length.
        len: u64,
    },
    /// Writing the archive failed (disk or tmpfs full?).
    #[error("cannot write the cpio archive")]
    Write {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Copying an entry's content into the archive failed.
    #[error("cannot copy the content of cpio entry {name}")]
    Copy {
        /// Entry name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A name contains a NUL byte or is empty.
    #[error("cpio entry name {name:?} is empty or contains NUL; fix the destination path")]
    BadName {
        /// The offending name.
        name: String,
    },
    /// The input ended inside an entry.
    #[error("cpio archive truncated at byte {offset} (inside {what}); the file is incomplete")]
    Truncated {
        /// Offset where more bytes were needed.
        offset: usize,
        /// What was being read.
        what: &'static str,
    },
    /// A header did not start with the newc magic.
    #[error(
        "cpio archive: no newc magic 070701 at byte {offset}; not a newc archive (or wrongly decompressed)"
    )]
    BadMagic {
        /// Offset of the header.
        offset: usize,
    },
    /// A header field was not hexadecimal.
    #[error("cpio archive: header field {field} at byte {offset} is not 8 hex digits")]
    BadField {
        /// Field name.
        field: &'static str,
        /// Offset of the header.
        offset: usize,
    },
    /// The archive has no trailer entry.
    #[error(
        "cpio archive ends at byte {offset} without a TRAILER!!! entry; the file is incomplete"
    )]
    NoTrailer {
        /// Length of the input.
        offset: usize,
    },
}

/// Streaming newc writer into any [`Write`]: a byte vector ([`Writer::new`], the image
/// builder) or a file being appended to ([`Writer::append_to`], init carrying a directory
/// across kexec). Bodies come from a slice ([`Writer::push`]) or are copied from a reader
/// without being held whole ([`Writer::push_from`]).
#[derive(Debug)]
pub struct Writer<W = Vec<u8>> {
    out: W,
    /// Offset in `out` (bytes before this writer's first byte count: padding is absolute).
    at: u64,
}

impl Default for Writer<Vec<u8>> {
    fn default() -> Self {
        Self {
            out: Vec::new(),
            at: 0,
        }
    }
}

impl Writer<Vec<u8>> {
    /// An empty archive in memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        // The trailer name is valid and a vector accepts every write, so this cannot fail.
        let _ = self.trailer();
        self.out
    }
}

impl<W: Write> Writer<W> {
    /// A writer that appends a new archive member to `out`, which already holds `at`
    /// bytes: zero padding first brings it to the 4-byte boundary an uncompressed member
    /// must start on (the kernel skips zeros between members).
    pub fn append_to(out: W, at: u64) -> Result<Self, NewcError> {
        let mut w = Self { out, at };
        w.pad()?;
        Ok(w)
    }

    /// Bytes written to the output so far, counting the `at` it started from.
    pub fn offset(&self) -> u64 {
        self.at
    }

    /// Appends one entry; `body` is the file content or the symlink target. The header's
    /// `filesize` is ignored: the body's length is written.
    pub fn push(&mut self, name: &str, header: &Header, body: &[u8]) -> Result<(), NewcError> {
        self.put_header(name, header, body.len() as u64)?;
        self.put(body)?;
        self.pad()
    }

    /// Appends one regular-file entry whose `len` bytes of content are copied from `body`
    /// (in chunks, never held whole). A body shorter than `len` is an error naming the
    /// entry (the file changed while it was archived).
    pub fn push_from(
        &mut self,
        name: &str,
        header: &Header,
        len: u64,
        body: &mut dyn Read,
    ) -> Result<(), NewcError> {
        self.put_header(name, header, len)?;
        let copied = std::io::copy(&mut body.take(len), &mut self.out).map_err(|source| {
            NewcError::Copy {
                name: name.into(),
                source,
            }
        })?;
        self.at += copied;
        if copied != len {
            return Err(NewcError::Copy {
                name: name.into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{copied} of {len} bytes: it changed size while being archived"),
                ),
            });
        }
        self.pad()
    }

    /// Appends the `TRAILER!!!` entry that ends the archive member.
    pub fn trailer(&mut self) -> Result<(), NewcError> {
        let header = Header {
            ino: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0,
            filesize: 0,
        };
        self.push(TRAILER, &header, &[])
    }

    /// The output, to flush or sync it.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn put_header(&mut self, name: &str, header: &Header, len: u64) -> Result<(), NewcError> {
        if name.is_empty() || name.contains('\0') {
            return Err(NewcError::BadName { name: name.into() });
        }
        let too_large = |len| NewcError::TooLarge {
            name: name.into(),
            len,
        };
        let filesize = u32::try_from(len).map_err(|_| too_large(len))?;
        let namesize = u32::try_from(name.len() + 1).map_err(|_| too_large(name.len() as u64))?;
        let mut h = String::with_capacity(HEADER_LEN);
        h.push_str("070701");
        for v in [
            header.ino,
            header.mode,
            header.uid,
            header.gid,
            header.nlink,
            header.mtime,
            filesize,
            0, // devmajor
            0, // devminor
            0, // rdevmajor
            0, // rdevminor
            namesize,
            0, // check
        ] {
            // Writing into a String cannot fail.
            let _ = write!(h, "{v:08x}");
        }
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> Result<(), NewcError> {
        self.out
            .write_all(b)
            .map_err(|source| NewcError::Write { source })?;
        self.at += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), NewcError> {
        let n = usize::try_from((4 - self.at % 4) % 4).unwrap_or(0);
        self.put(&[0u8; 3][..n])
    }
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// Name as stored (no leading slash in our archives).
    pub name: String,
    /// Header fields.
    pub header: Header,
    /// Body bytes (file content or symlink target).
    pub body: Vec<u8>,
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

fn field(data: &[u8], offset: usize, index: usize, name: &'static str) -> Result<u32, NewcError> {
    let start = offset + 6 + index * 8;
    let raw = data.get(start..start + 8).ok_or(NewcError::Truncated {
        offset: start,
        what: "header",
    })?;
    let text = std::str::from_utf8(raw).map_err(|_| NewcError::BadField {
        field: name,
        offset,
    })?;
    u32::from_str_radix(text, 16).map_err(|_| NewcError::BadField {
        field: name,
        offset,
    })
}

/// Reads every entry up to (not including) the trailer. Trailing zero padding after the
/// trailer is accepted, as the kernel does.
pub fn read(data: &[u8]) -> Result<Vec<ReadEntry>, NewcError> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    loop {
        if offset >= data.len() {
            return Err(NewcError::NoTrailer { offset });
        }
        let magic = data.get(offset..offset + 6).ok_or(NewcError::Truncated {
            offset,
            what: "magic",
        })?;
        if magic != MAGIC {
            return Err(NewcError::BadMagic { offset });
        }
        let header = Header {
            ino: field(data, offset, 0, "ino")?,
            mode: field(data, offset, 1, "mode")?,
            uid: field(data, offset, 2, "uid")?,
            gid: field(data, offset, 3, "gid")?,
            nlink: field(data, offset, 4, "nlink")?,
            mtime: field(data, offset, 5, "mtime")?,
            filesize: field(data, offset, 6, "filesize")?,
        };
        let namesize = field(data, offset, 11, "namesize")? as usize;
        let name_start = offset + HEADER_LEN;
        let name_raw = data
            .get(name_start..name_start + namesize)
            .ok_or(NewcError::Truncated {
                offset: name_start,
                what: "name",
            })?;
        let name_bytes = name_raw.strip_suffix(&[0]).unwrap_or(name_raw);
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let body_start = align4(name_start + namesize);
        let body_end = body_start + header.filesize as usize;
        let body = data
            .get(body_start..body_end)
            .ok_or(NewcError::Truncated {
                offset: body_start,
                what: "body",
            })?
            .to_vec();
        offset = align4(body_end);
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(ReadEntry { name, header, body });
    }
}

/// `ls -l`-style type and permission string for a mode.
pub fn mode_string(mode: u32) -> String {
    let kind = match mode & S_IFMT {
        S_IFDIR => 'd',
        S_IFLNK => 'l',
        S_IFREG => '-',
        _ => '?',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for shift in [6u32, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(ino: u32, mode: u32, size: usize) -> Header {
        Header {
            ino,
            mode,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0,
            filesize: u32::try_from(size).unwrap(),
        }
    }

    #[test]
    fn header_and_padding_are_exact() {
        let mut w = Writer::new();
        w.push("a", &hdr(1, S_IFREG | 0o644, 3), b"xyz").unwrap();
        let out = w.finish();
        // 110 header + "a\0" = 112 (aligned), body 3 -> 4, then trailer 110 + 11 = 121 -> 124.
        assert_eq!(out.len(), 112 + 4 + 124);
        let expected = concat!(
            "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00000000",
            "00000003", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000"
        );
        assert_eq!(&out[..HEADER_LEN], expected.as_bytes());
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..116], b"xyz\0");
        assert!(out.len().is_multiple_of(4));
    }

    #[test]
    fn round_trip() {
        let mut w = Writer::new();
        w.push("dir", &hdr(1, S_IFDIR | 0o755, 0), b"").unwrap();
        w.push("dir/file", &hdr(2, S_IFREG | 0o755, 5), b"hello")
            .unwrap();
        w.push("dir/link", &hdr(3, S_IFLNK | 0o777, 4), b"file")
            .unwrap();
        let out = w.finish();
        let entries = read(&out).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dir", "dir/file", "dir/link"]);
        assert_eq!(entries[1].body, b"hello");
        assert_eq!(entries[2].header.mode, S_IFLNK | 0o777);
    }

    #[test]
    fn reader_rejects_damage() {
        let mut w = Writer::new();
        w.push("f", &hdr(1, S_IFREG | 0o644, 10), b"0123456789")
            .unwrap();
        let out = w.finish();
        assert!(matches!(
            read(&out[..120]),
            Err(NewcError::Truncated { .. })
        ));
        let mut bad = out.clone();
        bad[0] = b'X';
        assert!(matches!(read(&bad), Err(NewcError::BadMagic { offset: 0 })));
        let mut bad = out.clone();
        bad[10] = b'g';
        assert!(matches!(read(&bad), Err(NewcError::BadField { .. })));
        // Cut exactly after the first entry: no trailer.
        assert!(matches!(
            read(&out[..124]),
            Err(NewcError::NoTrailer { .. })
        ));
    }

    #[test]
    fn appended_member_is_aligned_and_streams_its_bodies() {
        let mut out = b"gzip-bytes".to_vec(); // 10 bytes: 2 of padding before the member
        let start = out.len() as u64;
        let mut w = Writer::append_to(&mut out, start).unwrap();
        w.push("d", &hdr(1, S_IFDIR | 0o755, 0), b"").unwrap();
        let body = vec![9u8; 70_000];
        w.push_from(
            "d/f",
            &hdr(2, S_IFREG | 0o644, 0),
            70_000,
            &mut body.as_slice(),
        )
        .unwrap();
        w.trailer().unwrap();
        let end = w.offset();
        assert_eq!(end, out.len() as u64);
        assert_eq!(&out[..12], b"gzip-bytes\0\0");
        let entries = read(&out[12..]).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].name, "d/f");
        assert_eq!(entries[1].body, body);
        // A body shorter than announced is an error naming the entry.
        let mut w = Writer::new();
        let err = w
            .push_from("short", &hdr(1, S_IFREG, 0), 5, &mut &b"abc"[..])
            .unwrap_err();
        assert!(
            matches!(err, NewcError::Copy { ref name, .. } if name == "short"),
            "{err}"
        );
    }

    #[test]
    fn bad_names_are_refused() {
        let mut w = Writer::new();
        assert!(w.push("", &hdr(1, S_IFREG, 0), b"").is_err());
        assert!(w.push("a\0b", &hdr(1, S_IFREG, 0), b"").is_err());
    }

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(mode_string(S_IFLNK | 0o777), "lrwxrwxrwx");
    }

    proptest::proptest! {
        #[test]
        fn any_files_round_trip(files in proptest::collection::vec(
            ("[a-z]{1,12}", proptest::collection::vec(proptest::num::u8::ANY, 0..300)), 0..8)) {
            let mut w = Writer::new();
            for (i, (name, body)) in files.iter().enumerate() {
                let ino = u32::try_from(i + 1).unwrap();
                w.push(name, &hdr(ino, S_IFREG | 0o644, body.len()), body).unwrap();
            }
            let out = w.finish();
            proptest::prop_assert_eq!(out.len() % 4, 0);
            let back = read(&out).unwrap();
            proptest::prop_assert_eq!(back.len(), files.len());
            for (e, (name, body)) in back.iter().zip(&files) {
                proptest::prop_assert_eq!(&e.name, name);
                proptest::prop_assert_eq!(&e.body, body);
            }
        }

        #[test]
        fn reader_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = read(&data);
        }
    }
}
