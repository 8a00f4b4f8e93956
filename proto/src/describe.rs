//! A human-readable dump of one frame, for `master decode HEX` and for logs.
//!
//! It decodes with the frame's own EtherType (so frames of a non-default deployment still
//! decode) and never fails: a rejected frame is described by its error chain plus the raw
//! fields that could be read. It does not verify signatures (no trust anchor here).

use std::fmt::Write as _;

use crate::DEFAULT_ETHERTYPE;
use crate::data::{DataError, DataView};
use crate::frag::{self, FragError};
use crate::frame::{EthernetView, Flags, Frame, FrameError, MessageType};
use crate::msg::{MsgError, decode_message};

/// Why [`check_frame`] rejects a frame (the "rejected" line of [`describe_frame`]).
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The Ethernet header, our header or the CRC trailer.
    #[error("the frame itself is not valid")]
    Frame(#[source] FrameError),
    /// The data frame header or its slice.
    #[error("the data frame is not valid")]
    Data(#[source] DataError),
    /// The control message body.
    #[error("the control message is not valid")]
    Message(#[source] MsgError),
    /// The fragment header of a piece of a larger control message.
    #[error("the fragment is not valid")]
    Fragment(#[source] FragError),
}

/// Checks `bytes` the way [`describe_frame`] reads them (with the frame's own EtherType):
/// the frame, then its data header or its control message. Signatures are not checked.
pub fn check_frame(bytes: &[u8]) -> Result<(), Rejection> {
    let eth = EthernetView::from_bytes(bytes).map_err(Rejection::Frame)?;
    let frame = Frame::decode(bytes, eth.ethertype()).map_err(Rejection::Frame)?;
    if frame.header().msg_type == MessageType::Data {
        DataView::from_frame(&frame).map_err(Rejection::Data)?;
    } else if frame.header().flags.contains(Flags::FRAGMENT) {
        frag::parse(
            frame.header().msg_type,
            frame.payload(),
            crate::MAX_MESSAGE_LEN,
        )
        .map_err(Rejection::Fragment)?;
    } else {
        decode_message(&frame).map_err(Rejection::Message)?;
    }
    Ok(())
}

/// Describes `bytes` (one Ethernet frame without FCS) on several lines.
pub fn describe_frame(bytes: &[u8]) -> String {
    let mut out = String::new();
    let eth = match EthernetView::from_bytes(bytes) {
        Ok(eth) => eth,
        Err(e) => {
            let _ = writeln!(out, "not a frame: {e}");
            return out;
        }
    };
    let _ = writeln!(
        out,
        "ethernet: {} -> {} type 0x{:04x}{} ({} bytes)",
        eth.src(),
        eth.dst(),
        eth.ethertype(),
        if eth.ethertype() == DEFAULT_ETHERTYPE {
            " (shelfboot default)"
        } else {
            ""
        },
        bytes.len()
    );
    let frame = match Frame::decode(bytes, eth.ethertype()) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(out, "rejected: {e}");
            return out;
        }
    };
    let h = frame.header();
    let _ = writeln!(
        out,
        "header: version {} type {} flags 0x{:04x} session {} sequence {} payload {} bytes (CRC ok)",
        h.version,
        h.msg_type,
        h.flags.bits(),
        h.session,
        h.sequence,
        frame.payload().len()
    );
    if h.msg_type == MessageType::Data {
        match DataView::from_frame(&frame) {
            Ok(v) => {
                let d = v.header();
                let _ = writeln!(
                    out,
                    "data: transfer {} slice {} block {} block_size {} offset {} len {}",
                    v.transfer(),
                    d.slice,
                    d.block,
                    d.block_size,
                    d.offset,
                    v.data().len()
                );
            }
            Err(e) => push_chain(&mut out, "data rejected", &e),
        }
    } else if h.flags.contains(Flags::FRAGMENT) {
        match frag::parse(h.msg_type, frame.payload(), crate::MAX_MESSAGE_LEN) {
            Ok((f, piece)) => {
                let _ = writeln!(
                    out,
                    "fragment: message {} bytes {}..{} of {} (reassemble every fragment to decode the {})",
                    f.msg_id,
                    f.offset,
                    u64::from(f.offset) + piece.len() as u64,
                    f.total,
                    h.msg_type
                );
            }
            Err(e) => push_chain(&mut out, "fragment rejected", &e),
        }
    } else {
        match decode_message(&frame) {
            Ok(m) => {
                let _ = writeln!(
                    out,
                    "message: {} (valid; signatures not checked)",
                    m.msg_type()
                );
            }
            Err(e) => push_chain(&mut out, "message rejected", &e),
        }
        // The raw CBOR, also when the message was rejected (shows the offending key).
        let mut body = frame.payload();
        if let Ok(v) = ciborium::from_reader::<ciborium::Value, _>(&mut body) {
            out.push_str("body: ");
            diag(&mut out, &v);
            out.push('\n');
        }
    }
    out
}

/// CBOR diagnostic notation (RFC 8949 section 8), byte strings in hex: `{"mi": 7, "e": 3}`.
fn diag(out: &mut String, v: &ciborium::Value) {
    use ciborium::Value;
    match v {
        Value::Integer(i) => {
            let _ = write!(out, "{}", i128::from(*i));
        }
        Value::Bytes(b) => {
            out.push_str("h'");
            out.push_str(&hex::encode(b));
            out.push('\'');
        }
        Value::Text(t) => {
            let _ = write!(out, "{t:?}");
        }
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Null => out.push_str("null"),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                diag(out, item);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            out.push('{');
            for (i, (k, val)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                diag(out, k);
                out.push_str(": ");
                diag(out, val);
            }
            out.push('}');
        }
        other => {
            let _ = write!(out, "{other:?}");
        }
    }
}

fn push_chain(out: &mut String, what: &str, e: &dyn std::error::Error) {
    let _ = writeln!(out, "{what}: {}", crate::report::error_chain(e));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_frame_accepts_every_sample_and_rejects_a_truncated_one() {
        for f in crate::samples::every_frame() {
            check_frame(&f).unwrap();
            let cut = f.get(..f.len() / 2).unwrap();
            assert!(check_frame(cut).is_err(), "{}", describe_frame(cut));
        }
        assert!(matches!(check_frame(&[0u8; 5]), Err(Rejection::Frame(_))));
    }
    use crate::frame::{Header, Link, MacAddr, encode_frame};
    use crate::msg::{Heartbeat, Message, encode_message};

    fn link(ethertype: u16) -> Link {
        Link {
            dst: MacAddr::BROADCAST,
            src: MacAddr([2, 0, 0, 0, 0, 1]),
            ethertype,
        }
    }

    #[test]
    fn describes_a_message() {
        let mut buf = [0u8; 128];
        let msg = Message::Heartbeat(Heartbeat {
            master_id: 42,
            epoch: 7,
        });
        let n = encode_message(&mut buf, &link(0x9000), 5, 6, &msg).unwrap();
        let s = describe_frame(&buf[..n]);
        assert!(s.contains("type 0x9000 ("), "{s}");
        assert!(s.contains("Heartbeat(0x03)"), "{s}");
        assert!(s.contains(r#"body: {"mi": 42, "e": 7}"#), "{s}");
        assert!(s.contains("session 5 sequence 6"), "{s}");
    }

    #[test]
    fn describes_rejections() {
        assert!(describe_frame(&[1, 2, 3]).starts_with("not a frame"));
        let mut buf = [0u8; 128];
        let n = encode_frame(
            &mut buf,
            &link(DEFAULT_ETHERTYPE),
            &Header::new(MessageType::Fetch, 1, 1),
            b"\xff",
        )
        .unwrap();
        let s = describe_frame(&buf[..n]);
        assert!(
            s.contains("message rejected: Fetch(0x05) body is not valid CBOR"),
            "{s}"
        );
        buf[30] ^= 1;
        assert!(describe_frame(&buf[..n]).contains("rejected: CRC-32 mismatch"));
    }
}
