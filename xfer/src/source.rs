//! The two I/O boundaries of the engine, as traits: where the sender reads blocks
//! ([`BlockSource`], positional reads: the master implements it with `pread` on the blob
//! file, never loading an artifact whole) and where the receiver writes the artifact
//! ([`ByteSink`], strictly sequential: the card's UBI volume writer only appends).
//!
//! Implementations are provided for in-memory buffers (tests, the simulation) and for
//! [`std::fs::File`] (positional reads through `FileExt::read_exact_at`), plus
//! [`ReadAhead`], a small chunk cache that turns one `pread` per block into one per chunk.
//! This module does not retry or hash.

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

/// A read-ahead cache in front of a [`BlockSource`]: reads aligned chunks of `chunk` bytes
/// (default 256 KiB) and keeps the `chunks` most recently used (default 4: the first pass's
/// chunk plus the chunks that repairs are served from), so the master issues one `pread`
/// per chunk instead of one per block. Memory: `chunk × chunks` bytes.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    size: u64,
    chunk: usize,
    /// (chunk start offset, bytes, last use), most recent use = highest tick.
    cache: Vec<(u64, Vec<u8>, u64)>,
    slots: usize,
    tick: u64,
    reads: u64,
}

impl<S: BlockSource> ReadAhead<S> {
    /// Default chunk size.
    pub const CHUNK: usize = 256 * 1024;

    /// A cache over `inner`, an artifact of `size` bytes, with `chunks` chunks of `chunk`
    /// bytes (each at least 1).
    pub fn new(inner: S, size: u64, chunk: usize, chunks: usize) -> ReadAhead<S> {
        ReadAhead {
            inner,
            size,
            chunk: chunk.max(1),
            cache: Vec::new(),
            slots: chunks.max(1),
            tick: 0,
            reads: 0,
        }
    }

    /// Reads issued to the inner source so far.
    pub fn inner_reads(&self) -> u64 {
        self.reads
    }

    /// The index in `cache` of the chunk starting at `start`, loading it if needed.
    fn load(&mut self, start: u64) -> io::Result<usize> {
        self.tick += 1;
        if let Some(i) = self.cache.iter().position(|(s, _, _)| *s == start) {
            self.cache[i].2 = self.tick;
            return Ok(i);
        }
        let len = usize::try_from(self.size.saturating_sub(start))
            .unwrap_or(usize::MAX)
            .min(self.chunk);
        let i = if self.cache.len() < self.slots {
            self.cache.push((start, Vec::new(), self.tick));
            self.cache.len() - 1
        } else {
            let (i, _) = self
                .cache
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, _, used))| *used)
                .ok_or_else(|| io::Error::other("read-ahead cache has no slots"))?;
            i
        };
        let entry = &mut self.cache[i];
        entry.1.resize(len, 0);
        // Mark the slot invalid until the read succeeds.
        entry.0 = u64::MAX;
        self.reads += 1;
        self.inner.read_at(start, &mut entry.1)?;
        entry.0 = start;
        entry.2 = self.tick;
        Ok(i)
    }
}

impl<S: BlockSource> BlockSource for ReadAhead<S> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= self.size)
            .ok_or_else(|| eof(offset, buf.len()))?;
        let chunk = self.chunk as u64;
        let mut pos = offset;
        let mut done = 0;
        while pos < end {
            let start = pos - pos % chunk;
            let i = self.load(start)?;
            let data = &self.cache[i].1;
            let from = usize::try_from(pos - start).unwrap_or(usize::MAX);
            let n = (data.len().saturating_sub(from)).min(buf.len() - done);
            let src = data.get(from..from + n).filter(|s| !s.is_empty());
            let src = src.ok_or_else(|| eof(pos, buf.len() - done))?;
            buf[done..done + n].copy_from_slice(src);
            done += n;
            pos += n as u64;
        }
        Ok(())
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
#[allow(clippy::cast_possible_truncation)]
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
    fn read_ahead_returns_the_same_bytes_with_few_inner_reads() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let mut ra = ReadAhead::new(data.clone(), data.len() as u64, 4096, 2);
        let mut buf = vec![0u8; 1408];
        // A first pass in block order.
        for off in (0..data.len() as u64).step_by(1408) {
            let n = (data.len() as u64 - off).min(1408) as usize;
            ra.read_at(off, &mut buf[..n]).unwrap();
            assert_eq!(&buf[..n], &data[off as usize..off as usize + n]);
        }
        assert_eq!(ra.inner_reads(), data.len().div_ceil(4096) as u64);
        // Repairs far behind, and reads across a chunk boundary.
        for off in [0u64, 4000, 50_000, 4000, 98_500] {
            ra.read_at(off, &mut buf).unwrap();
            assert_eq!(&buf[..], &data[off as usize..off as usize + 1408]);
        }
        assert!(ra.read_at(99_000, &mut buf).is_err());
        let mut empty = ReadAhead::new(Vec::new(), 0, 4096, 1);
        assert!(empty.read_at(0, &mut [0u8; 1]).is_err());
        assert!(empty.read_at(0, &mut []).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn read_ahead_agrees_with_direct_reads(
            len in 0usize..20_000,
            chunk in 1usize..5000,
            slots in 1usize..4,
            reads in proptest::collection::vec((0usize..21_000, 0usize..3000), 1..40),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
            let mut direct = data.clone();
            let mut ra = ReadAhead::new(data.clone(), len as u64, chunk, slots);
            for (off, n) in reads {
                let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
                let x = direct.read_at(off as u64, &mut a).is_ok();
                let y = ra.read_at(off as u64, &mut b).is_ok();
                proptest::prop_assert_eq!(x, y);
                if x {
                    proptest::prop_assert_eq!(a, b);
                }
            }
        }
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
