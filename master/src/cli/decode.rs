//! `master decode HEX...`: a dump of shelfboot frames given as hex, one frame per
//! argument, with [`shelfboot_proto::describe_frame`] (Ethernet, our header, the data
//! header or the message and its CBOR body). Signatures are not checked.
//!
//! Hex digits may be separated by whitespace or colons (as copied from a capture tool).
//! Every frame is dumped; a frame that does not decode makes the command fail after the
//! dump, naming the frame and why.

use std::io::Write;

/// Why `master decode` failed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "frame {index} is not hex: give each frame's bytes as hex digits (whitespace or colons between them are allowed)"
    )]
    Hex {
        index: usize,
        #[source]
        source: hex::FromHexError,
    },
    #[error(
        "frame {index} ({len} bytes) does not decode (its dump above shows what could be read)"
    )]
    Rejected {
        index: usize,
        len: usize,
        #[source]
        source: shelfboot_proto::Rejection,
    },
    #[error("cannot write the dump")]
    Output(#[source] std::io::Error),
}

/// The bytes of one frame written as hex, whitespace and colons ignored.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, hex::FromHexError> {
    let digits: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    hex::decode(digits)
}

/// Dumps every frame of `frames` (hex) to `out`, numbered from 1. Fails on the first
/// argument that is not hex (before dumping anything), or after the dump if a frame does
/// not decode.
pub fn run(frames: &[String], out: &mut dyn Write) -> Result<(), DecodeError> {
    let bytes = frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            parse_hex(f).map_err(|source| DecodeError::Hex {
                index: i + 1,
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut first_rejection = None;
    for (i, frame) in bytes.iter().enumerate() {
        let index = i + 1;
        if bytes.len() > 1 {
            writeln!(out, "frame {index}:").map_err(DecodeError::Output)?;
        }
        out.write_all(shelfboot_proto::describe_frame(frame).as_bytes())
            .map_err(DecodeError::Output)?;
        if let Err(source) = shelfboot_proto::check_frame(frame)
            && first_rejection.is_none()
        {
            first_rejection = Some(DecodeError::Rejected {
                index,
                len: frame.len(),
                source,
            });
        }
    }
    first_rejection.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(b: &[u8]) -> String {
        hex::encode(b)
    }

    #[test]
    fn dumps_frames_and_accepts_separators() {
        let frames = shelfboot_proto::samples::every_frame();
        let spaced: String = hex_of(&frames[0])
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let mut out = Vec::new();
        run(&[spaced, hex_of(&frames[1])], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("frame 1:\nethernet: "), "{text}");
        assert!(text.contains("frame 2:\n"), "{text}");
        assert_eq!(text.matches("(CRC ok)").count(), 2, "{text}");
    }

    #[test]
    fn bad_hex_and_truncated_frames_are_errors() {
        let mut out = Vec::new();
        let err = run(&["0x12".into()], &mut out).unwrap_err();
        assert!(matches!(err, DecodeError::Hex { index: 1, .. }), "{err}");
        assert!(out.is_empty());
        let err = run(&["abc".into()], &mut out).unwrap_err();
        assert!(matches!(err, DecodeError::Hex { .. }), "{err}");

        let frame = &shelfboot_proto::samples::every_frame()[0];
        let cut = hex_of(frame.get(..30).unwrap());
        let err = run(&[cut], &mut out).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Rejected {
                    index: 1,
                    len: 30,
                    ..
                }
            ),
            "{err}"
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("rejected"), "{text}");
    }
}
