//! Archive compression: none, gzip (flate2) or zstd, all deterministic (no timestamps,
//! no file names, single-threaded), plus detection for reading archives back.
//!
//! What it does not do: xz/lz4/lzo (the Debian kernel reads them, we have no need), or
//! concatenated archives (an early microcode cpio in front of ours).

use std::io::{Read, Write};

/// Output compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compression {
    /// Plain newc.
    None,
    /// gzip, level 6.
    #[default]
    Gzip,
    /// zstd, level 3 (zstd's default; CONFIG_RD_ZSTD).
    Zstd,
}

/// Errors of compression and decompression.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The encoder failed.
    #[error("cannot {codec}-compress the archive")]
    Compress {
        /// Codec name.
        codec: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The decoder failed.
    #[error("cannot {codec}-decompress the archive; the file is damaged or truncated")]
    Decompress {
        /// Codec name.
        codec: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Compresses `data` with `c`.
pub fn compress(data: &[u8], c: Compression) -> Result<Vec<u8>, CompressError> {
    match c {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let err = |source| CompressError::Compress {
                codec: "gzip",
                source,
            };
            // GzBuilder without mtime or file name: the header is fixed bytes.
            let mut enc = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::new(6));
            enc.write_all(data).map_err(err)?;
            enc.finish().map_err(err)
        }
        Compression::Zstd => {
            zstd::stream::encode_all(data, 3).map_err(|source| CompressError::Compress {
                codec: "zstd",
                source,
            })
        }
    }
}

/// Detects gzip or zstd by magic and decompresses; anything else is returned as is.
pub fn decompress_auto(data: &[u8]) -> Result<Vec<u8>, CompressError> {
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .map_err(|source| CompressError::Decompress {
                codec: "gzip",
                source,
            })?;
        Ok(out)
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::decode_all(data).map_err(|source| CompressError::Decompress {
            codec: "zstd",
            source,
        })
    } else {
        Ok(data.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_deterministic() {
        let data: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let a = compress(&data, c).unwrap();
            let b = compress(&data, c).unwrap();
            assert_eq!(a, b, "{c:?} not deterministic");
            assert_eq!(decompress_auto(&a).unwrap(), data, "{c:?}");
        }
    }

    #[test]
    fn damaged_input_is_an_error() {
        let gz = compress(&[7u8; 1000], Compression::Gzip).unwrap();
        assert!(decompress_auto(&gz[..gz.len() / 2]).is_err());
        let zs = compress(&[7u8; 1000], Compression::Zstd).unwrap();
        assert!(decompress_auto(&zs[..zs.len() / 2]).is_err());
    }
}
