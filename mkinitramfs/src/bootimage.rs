//! The boot-image container the master serves and the card kexecs: a kernel, an
//! initramfs and a command line in one file, each section with its sha256.
//!
//! Layout (all integers little-endian; see docs/lab.md):
//!
//! ```text
//! offset size  field
//!      0    8  magic "SHBOOTIM"
//!      8    4  version (1)
//!     12    4  header length (144)
//!     16    8  kernel length
//!     24    8  initramfs length
//!     32    4  command-line length
//!     36    4  reserved, 0
//!     40   32  sha256(kernel)
//!     72   32  sha256(initramfs)
//!    104   32  sha256(command line)
//!    136    8  reserved, 0
//!    144       command line (UTF-8, no NUL), kernel, initramfs; nothing after
//! ```
//!
//! What it does: build the container and parse it without I/O ([`parse_header`] for the
//! first 144 bytes when streaming from a volume, [`parse`] for a whole image, which also
//! checks every digest). What it does not do: signatures (the image is an artifact of a
//! signed manifest; its digest is checked there) or any compression of its own.

use shelfboot_proto::id::Digest;

/// Container magic.
pub const MAGIC: &[u8; 8] = b"SHBOOTIM";
/// The only version this code writes and reads.
pub const VERSION: u32 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 144;
/// [`HEADER_LEN`] as written in the header.
const HEADER_LEN_U32: u32 = 144;
/// Largest command line accepted (the x86 kernel's COMMAND_LINE_SIZE is 2048).
pub const MAX_CMDLINE: usize = 4096;

/// Errors of the boot-image parser and builder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootImageError {
    /// Fewer bytes than a header.
    #[error("boot image is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    Short {
        /// Bytes available.
        len: usize,
    },
    /// Wrong magic.
    #[error("boot image has no SHBOOTIM magic; this is not a shelfboot boot image")]
    BadMagic,
    /// Unknown version.
    #[error(
        "boot image version {found} is not supported (this build reads version {VERSION}); update the card's init"
    )]
    Version {
        /// Version in the header.
        found: u32,
    },
    /// Header length or reserved fields are wrong.
    #[error("boot image header is malformed: {what}")]
    Header {
        /// What is wrong.
        what: &'static str,
    },
    /// Declared lengths do not match the data.
    #[error(
        "boot image length mismatch: header declares {declared} bytes in total, the image has {actual}"
    )]
    Length {
        /// Total the header implies.
        declared: u64,
        /// Bytes present.
        actual: u64,
    },
    /// A section's digest is wrong.
    #[error("boot image {section} does not match its sha256; the image is corrupt")]
    Digest {
        /// Section name.
        section: &'static str,
    },
    /// The command line is not UTF-8 or too long.
    #[error("boot image command line is invalid: {what}")]
    Cmdline {
        /// What is wrong.
        what: &'static str,
    },
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Kernel length.
    pub kernel_len: u64,
    /// Initramfs length.
    pub initramfs_len: u64,
    /// Command-line length.
    pub cmdline_len: u32,
    /// sha256 of the kernel.
    pub kernel_sha256: Digest,
    /// sha256 of the initramfs.
    pub initramfs_sha256: Digest,
    /// sha256 of the command line.
    pub cmdline_sha256: Digest,
}

impl Header {
    /// Offset of the command line.
    pub fn cmdline_offset(&self) -> u64 {
        HEADER_LEN as u64
    }
    /// Offset of the kernel.
    pub fn kernel_offset(&self) -> u64 {
        self.cmdline_offset() + u64::from(self.cmdline_len)
    }
    /// Offset of the initramfs (saturates; [`parse_header`] rejects overflowing lengths).
    pub fn initramfs_offset(&self) -> u64 {
        self.kernel_offset().saturating_add(self.kernel_len)
    }
    /// Total image length, or None on overflow.
    pub fn total_len(&self) -> Option<u64> {
        self.kernel_offset()
            .checked_add(self.kernel_len)?
            .checked_add(self.initramfs_len)
    }
}

/// A whole image, borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage<'a> {
    /// The header.
    pub header: Header,
    /// Kernel bytes (a bzImage for kexec_file_load).
    pub kernel: &'a [u8],
    /// Initramfs bytes.
    pub initramfs: &'a [u8],
    /// Command line.
    pub cmdline: &'a str,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn digest(b: &[u8], at: usize) -> Digest {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[at..at + 32]);
    Digest(a)
}

/// Parses and checks the first [`HEADER_LEN`] bytes (more are ignored).
pub fn parse_header(bytes: &[u8]) -> Result<Header, BootImageError> {
    let b = bytes
        .get(..HEADER_LEN)
        .ok_or(BootImageError::Short { len: bytes.len() })?;
    if &b[0..8] != MAGIC {
        return Err(BootImageError::BadMagic);
    }
    let version = le_u32(b, 8);
    if version != VERSION {
        return Err(BootImageError::Version { found: version });
    }
    if le_u32(b, 12) != HEADER_LEN_U32 {
        return Err(BootImageError::Header {
            what: "header length is not 144",
        });
    }
    if le_u32(b, 36) != 0 || le_u64(b, 136) != 0 {
        return Err(BootImageError::Header {
            what: "reserved fields are not zero",
        });
    }
    let header = Header {
        kernel_len: le_u64(b, 16),
        initramfs_len: le_u64(b, 24),
        cmdline_len: le_u32(b, 32),
        kernel_sha256: digest(b, 40),
        initramfs_sha256: digest(b, 72),
        cmdline_sha256: digest(b, 104),
    };
    if header.cmdline_len as usize > MAX_CMDLINE {
        return Err(BootImageError::Cmdline {
            what: "longer than 4096 bytes",
        });
    }
    if header.total_len().is_none() {
        return Err(BootImageError::Header {
            what: "section lengths overflow",
        });
    }
    Ok(header)
}

fn section(bytes: &[u8], offset: u64, len: u64) -> &[u8] {
    // Bounds are checked by `parse` against the total length first.
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = usize::try_from(offset.saturating_add(len)).unwrap_or(usize::MAX);
    bytes.get(start..end).unwrap_or(&[])
}

/// Parses a whole image and checks every length and digest. Trailing bytes are an error.
pub fn parse(bytes: &[u8]) -> Result<BootImage<'_>, BootImageError> {
    let header = parse_header(bytes)?;
    let declared = header.total_len().unwrap_or(u64::MAX);
    if declared != bytes.len() as u64 {
        return Err(BootImageError::Length {
            declared,
            actual: bytes.len() as u64,
        });
    }
    let cmdline = section(
        bytes,
        header.cmdline_offset(),
        u64::from(header.cmdline_len),
    );
    let kernel = section(bytes, header.kernel_offset(), header.kernel_len);
    let initramfs = section(bytes, header.initramfs_offset(), header.initramfs_len);
    for (name, data, want) in [
        ("command line", cmdline, &header.cmdline_sha256),
        ("kernel", kernel, &header.kernel_sha256),
        ("initramfs", initramfs, &header.initramfs_sha256),
    ] {
        if Digest::of(data) != *want {
            return Err(BootImageError::Digest { section: name });
        }
    }
    let cmdline =
        std::str::from_utf8(cmdline).map_err(|_| BootImageError::Cmdline { what: "not UTF-8" })?;
    Ok(BootImage {
        header,
        kernel,
        initramfs,
        cmdline,
    })
}

/// Builds an image.
pub fn build(kernel: &[u8], initramfs: &[u8], cmdline: &str) -> Result<Vec<u8>, BootImageError> {
    if cmdline.len() > MAX_CMDLINE {
        return Err(BootImageError::Cmdline {
            what: "longer than 4096 bytes",
        });
    }
    if cmdline.contains('\0') {
        return Err(BootImageError::Cmdline {
            what: "contains NUL",
        });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + cmdline.len() + kernel.len() + initramfs.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&HEADER_LEN_U32.to_le_bytes());
    out.extend_from_slice(&(kernel.len() as u64).to_le_bytes());
    out.extend_from_slice(&(initramfs.len() as u64).to_le_bytes());
    // cmdline.len() <= MAX_CMDLINE was checked above.
    out.extend_from_slice(
        &u32::try_from(cmdline.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(Digest::of(kernel).as_bytes());
    out.extend_from_slice(Digest::of(initramfs).as_bytes());
    out.extend_from_slice(Digest::of(cmdline.as_bytes()).as_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(cmdline.as_bytes());
    out.extend_from_slice(kernel);
    out.extend_from_slice(initramfs);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let img = build(b"KERNEL", b"INITRD!", "console=ttyS0 quiet").unwrap();
        assert_eq!(img.len(), HEADER_LEN + 19 + 6 + 7);
        let p = parse(&img).unwrap();
        assert_eq!(p.kernel, b"KERNEL");
        assert_eq!(p.initramfs, b"INITRD!");
        assert_eq!(p.cmdline, "console=ttyS0 quiet");
        assert_eq!(parse_header(&img[..HEADER_LEN]).unwrap(), p.header);
        assert_eq!(p.header.kernel_offset(), 144 + 19);
    }

    #[test]
    fn golden_header_prefix() {
        let img = build(b"", b"", "").unwrap();
        assert_eq!(
            &img[..40],
            b"SHBOOTIM\x01\0\0\0\x90\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
                .as_slice()
        );
        // sha256("") as a fixed point.
        assert_eq!(
            digest(&img, 40).to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn damage_is_detected() {
        let img = build(b"KERNEL", b"INITRD", "c").unwrap();
        assert_eq!(parse(&img[..100]), Err(BootImageError::Short { len: 100 }));
        let mut bad = img.clone();
        bad[0] = b'X';
        assert_eq!(parse(&bad), Err(BootImageError::BadMagic));
        let mut bad = img.clone();
        bad[8] = 2;
        assert_eq!(parse(&bad), Err(BootImageError::Version { found: 2 }));
        let mut bad = img.clone();
        bad[HEADER_LEN + 2] ^= 1; // kernel byte
        assert_eq!(
            parse(&bad),
            Err(BootImageError::Digest { section: "kernel" })
        );
        let mut long = img.clone();
        long.push(0);
        assert!(matches!(parse(&long), Err(BootImageError::Length { .. })));
        assert!(matches!(
            parse(&img[..img.len() - 1]),
            Err(BootImageError::Length { .. })
        ));
        let mut bad = img.clone();
        bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&bad), Err(BootImageError::Header { .. })));
        assert!(build(b"", b"", &"x".repeat(5000)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = parse(&data);
        }

        #[test]
        fn any_image_round_trips(k in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
                                 i in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
                                 c in "[ -~]{0,80}") {
            let img = build(&k, &i, &c).unwrap();
            let p = parse(&img).unwrap();
            proptest::prop_assert_eq!(p.kernel, k.as_slice());
            proptest::prop_assert_eq!(p.initramfs, i.as_slice());
            proptest::prop_assert_eq!(p.cmdline, c.as_str());
        }
    }
}
