//! The two I/O boundaries of the engine, as traits: where the sender reads blocks
//! ([`BlockSource`], positional reads: the master implements it with `pread` on the blob
//! file, never loading an artifact whole) and where the receiver writes the artifact
//! ([`ByteSink`], strictly sequential: the card's UBI volume writer only appends).
//!
//! Implementations are provided for in-memory buffers (tests, the simulation) and for
//! [`std::fs::File`] (positional reads through `FileExt::read_at`). This module does not
//! buffer, retry or hash.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

/// Positional, read-only access to an artifact's bytes.
pub trait BlockSource {
    /// Fills all of `buf` with the bytes at `offset`. The engine only asks for ranges
    /// inside the artifact; a short read is an error (`UnexpectedEof`).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl BlockSource for &[u8] {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof(offset, buf.len()))?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| eof(offset, buf.len()))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl BlockSource for Vec<u8> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

impl BlockSource for File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

fn eof(offset: u64, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{len} bytes at offset {offset} lie past the end of the artifact"),
    )
}

/// Sequential destination of a received artifact. The receiver calls `write` with the
/// artifact's bytes in order, each byte exactly once.
pub trait ByteSink {
    /// Appends `bytes`. An error stops the transfer ([`crate::ReceiverError::Sink`]).
    fn write(&mut self, bytes: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

impl ByteSink for Vec<u8> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

impl<T: ByteSink + ?Sized> ByteSink for &mut T {
    fn write(&mut self, bytes: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        (**self).write(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_source_reads_in_range_and_refuses_past_the_end() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut src = data.clone();
        let mut buf = [0u8; 10];
        src.read_at(90, &mut buf).unwrap();
        assert_eq!(buf[0], 90);
        let err = src.read_at(91, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(src.read_at(u64::MAX, &mut buf).is_err());
    }

    #[test]
    fn file_source_uses_positional_reads() {
        let dir = std::env::temp_dir().join(format!("xfer-src-{}", std::process::id()));
        std::fs::write(&dir, b"0123456789").unwrap();
        let mut f = File::open(&dir).unwrap();
        let mut buf = [0u8; 3];
        BlockSource::read_at(&mut f, 7, &mut buf).unwrap();
        assert_eq!(&buf, b"789");
        assert!(BlockSource::read_at(&mut f, 8, &mut buf).is_err());
        std::fs::remove_file(&dir).unwrap();
    }
}
