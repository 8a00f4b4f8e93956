//! `master decode HEX...`: a dump of shelfboot frames given as hex, one frame per
//! argument, with [`shelfboot_proto::describe_frame`] (Ethernet, our header, the data
//! header or the message and its CBOR body). Signatures are not checked.
//!
//! Hex digits may be separated by whitespace or colons (as copied from a capture tool).
//! Every frame is dumped; a frame that does not decode makes the command fail after the
//! dump, naming the frame and why. With `--json` the dump is one JSON array, an object per
//! frame (`frame`, `len`, `dump`, and `rejected` when it does not decode).

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

/// One frame's dump in `--json` form.
#[derive(Debug, serde::Serialize)]
struct JsonDump {
    frame: usize,
    len: usize,
    dump: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<String>,
}

/// Dumps every frame of `frames` (hex) to `out`, numbered from 1, as text or (`json`) one
/// JSON array. Fails on the first argument that is not hex (before dumping anything), or
/// after the dump if a frame does not decode.
pub fn run(frames: &[String], json: bool, out: &mut dyn Write) -> Result<(), DecodeError> {
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
    let mut dumps = Vec::new();
    for (i, frame) in bytes.iter().enumerate() {
        let index = i + 1;
        let dump = shelfboot_proto::describe_frame(frame);
        let check = shelfboot_proto::check_frame(frame);
        if json {
            dumps.push(JsonDump {
                frame: index,
                len: frame.len(),
                dump,
                rejected: check.as_ref().err().map(ToString::to_string),
            });
        } else {
            if bytes.len() > 1 {
                writeln!(out, "frame {index}:").map_err(DecodeError::Output)?;
            }
            out.write_all(dump.as_bytes())
                .map_err(DecodeError::Output)?;
        }
        if let Err(source) = check
            && first_rejection.is_none()
        {
            first_rejection = Some(DecodeError::Rejected {
                index,
                len: frame.len(),
                source,
            });
        }
    }
    if json {
        serde_json::to_writer_pretty(&mut *out, &dumps)
            .map_err(|e| DecodeError::Output(e.into()))?;
        writeln!(out).map_err(DecodeError::Output)?;
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
        run(&[spaced, hex_of(&frames[1])], false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("frame 1:\nethernet: "), "{text}");
        assert!(text.contains("frame 2:\n"), "{text}");
        assert_eq!(text.matches("(CRC ok)").count(), 2, "{text}");
    }

    #[test]
    fn bad_hex_and_truncated_frames_are_errors() {
        let mut out = Vec::new();
        let err = run(&["0x12".into()], false, &mut out).unwrap_err();
        assert!(matches!(err, DecodeError::Hex { index: 1, .. }), "{err}");
        assert!(out.is_empty());
        let err = run(&["abc".into()], false, &mut out).unwrap_err();
        assert!(matches!(err, DecodeError::Hex { .. }), "{err}");

        let frame = &shelfboot_proto::samples::every_frame()[0];
        let cut = hex_of(frame.get(..30).unwrap());
        let err = run(std::slice::from_ref(&cut), false, &mut out).unwrap_err();
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

        // The JSON form dumps both frames and names the rejection of the cut one.
        let mut out = Vec::new();
        let whole = hex_of(frame);
        let err = run(&[whole, cut], true, &mut out).unwrap_err();
        assert!(
            matches!(err, DecodeError::Rejected { index: 2, .. }),
            "{err}"
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0]["frame"], 1);
        assert!(arr[0].get("rejected").is_none(), "{v}");
        assert!(arr[0]["dump"].as_str().unwrap().contains("(CRC ok)"), "{v}");
        assert_eq!(arr[1]["len"], 30);
        assert!(arr[1]["rejected"].as_str().is_some(), "{v}");
    }
}
