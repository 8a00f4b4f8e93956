//! Control messages: CBOR bodies (ciborium + serde) behind a [`crate::frame`] header.
//!
//! The frame header's message type says which body follows; the body is the bare struct
//! (no enum tag inside the CBOR). Decoding is strict: the body is capped at
//! [`MAX_CONTROL_BODY_LEN`] before ciborium sees it, unknown keys and trailing bytes are
//! rejected, and the body must be *canonical*, i.e. exactly the bytes this crate would
//! encode for the decoded value, so every accepted message has one encoding. Unknown
//! versions and message types are answered with [`unsupported_version_reply`] and
//! [`unknown_type_reply`].
//!
//! This module does not check signatures (see [`crate::sign`]) and does not decide what to
//! answer to a valid message (that is the card's and the master's state machines).

mod artifact;
mod signature;
mod types;

pub use artifact::{ArtifactKind, ArtifactRef, Digest, SET_DIGEST_DOMAIN, set_digest};
pub use signature::{SIGNATURE_LEN, Signature};
pub use types::{
    Action, Advertise, Alive, Arch, BootPhase, Command, CommandBody, ErrorMsg, ErrorReason, Fetch,
    Handoff, Health, Heartbeat, Inventory, Join, MasterCert, MasterCertBody, Nack, Nonce, Plan,
    PlanBody, Progress, Ready, Solicit, Stage, Verdict,
};

use thiserror::Error;

use crate::frame::{
    self, Frame, FrameError, Header, Link, MessageType, PAYLOAD_OFF, RawHeader, payload_area,
};
use crate::{MAX_CONTROL_BODY_LEN, MAX_MESSAGE_LEN, version};

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Solicit`].
    Solicit(Solicit),
    /// See [`Advertise`].
    Advertise(Advertise),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`Plan`].
    Plan(Plan),
    /// See [`Fetch`].
    Fetch(Fetch),
    /// See [`Join`].
    Join(Join),
    /// See [`Nack`].
    Nack(Nack),
    /// See [`Progress`].
    Progress(Progress),
    /// See [`Ready`].
    Ready(Ready),
    /// See [`ErrorMsg`].
    Error(ErrorMsg),
    /// See [`Command`].
    Command(Command),
    /// See [`Inventory`] (version 2).
    Inventory(Inventory),
    /// See [`Alive`].
    Alive(Alive),
}

/// Errors of the control message codec.
#[derive(Debug, Error)]
pub enum MsgError {
    /// The frame around the body was rejected.
    #[error("control frame rejected")]
    Frame(#[from] FrameError),
    /// A fragment was handed to the one-frame decoder.
    #[error("{msg_type} frame is a fragment: hand it to frag::Reassembler")]
    Fragment { msg_type: MessageType },
    /// A data frame was handed to the control decoder.
    #[error("{msg_type} is not a control message: decode it with data::DataView")]
    NotControl { msg_type: MessageType },
    /// Body over the cap (before decoding, or after encoding).
    #[error(
        "{msg_type} body of {len} bytes exceeds the {max}-byte cap: dropped (encoder: shrink the message, e.g. fewer artifacts)"
    )]
    TooLarge {
        msg_type: MessageType,
        len: usize,
        max: usize,
    },
    /// ciborium could not decode the body into the message type.
    #[error(
        "{msg_type} body is not valid CBOR for this message: dropped; answer with ErrorReason::Malformed"
    )]
    Decode {
        msg_type: MessageType,
        #[source]
        source: ciborium::de::Error<std::io::Error>,
    },
    /// Bytes follow the CBOR item.
    #[error("{msg_type} body has {extra} trailing bytes after the CBOR item: dropped")]
    TrailingBytes { msg_type: MessageType, extra: usize },
    /// The body decodes but is not the canonical encoding of its value.
    #[error(
        "{msg_type} body is not in canonical encoding (non-minimal integers, indefinite lengths, explicit nulls or reordered keys): dropped"
    )]
    NonCanonical { msg_type: MessageType },
    /// The body decodes but breaks a rule of the message.
    #[error("{msg_type} is invalid: {rule}")]
    Invalid {
        msg_type: MessageType,
        rule: &'static str,
    },
    /// ciborium could not encode the message (only on I/O failure of the Vec writer).
    #[error("encoding {msg_type} failed")]
    Encode {
        msg_type: MessageType,
        #[source]
        source: ciborium::ser::Error<std::io::Error>,
    },
}

impl Message {
    /// The frame message type of this message.
    pub fn msg_type(&self) -> MessageType {
        match self {
            Message::Solicit(_) => MessageType::Solicit,
            Message::Advertise(_) => MessageType::Advertise,
            Message::Heartbeat(_) => MessageType::Heartbeat,
            Message::Plan(_) => MessageType::Plan,
            Message::Fetch(_) => MessageType::Fetch,
            Message::Join(_) => MessageType::Join,
            Message::Nack(_) => MessageType::Nack,
            Message::Progress(_) => MessageType::Progress,
            Message::Ready(_) => MessageType::Ready,
            Message::Error(_) => MessageType::Error,
            Message::Command(_) => MessageType::Command,
            Message::Inventory(_) => MessageType::Inventory,
            Message::Alive(_) => MessageType::Alive,
        }
    }

    /// The oldest protocol version that can carry this message: 2 for the Inventory
    /// and Alive messages and for the fields and reasons version 2 added (`io`, `mt`, `ao`, `ri`,
    /// MessageTooLarge), 1 otherwise.
    pub fn since_version(&self) -> u8 {
        let v2 = match self {
            Message::Inventory(_) | Message::Alive(_) => true,
            Message::Solicit(s) => s.inventory_omitted || s.link_mtu.is_some(),
            // A master certificate (`mc`) is not tied to a frame version: broadcast Commands
            // go out in version 1 and carry it too. What takes it is the card's build.
            Message::Plan(p) => p.body.artifacts_omitted || p.body.report_inventory,
            Message::Error(e) => matches!(
                e.reason,
                ErrorReason::MessageTooLarge { .. } | ErrorReason::RolledBack { .. }
            ),
            _ => false,
        };
        if v2 { version::FRAGMENTS } else { 1 }
    }

    /// The canonical CBOR body of a one-frame message, capped at [`MAX_CONTROL_BODY_LEN`].
    pub fn encode_body(&self) -> Result<Vec<u8>, MsgError> {
        self.encode_body_capped(MAX_CONTROL_BODY_LEN)
    }

    /// The canonical CBOR body of a message of any size, capped at [`MAX_MESSAGE_LEN`]
    /// (sent in fragments when over [`MAX_CONTROL_BODY_LEN`], see [`crate::frag`]).
    pub fn encode_long_body(&self) -> Result<Vec<u8>, MsgError> {
        self.encode_body_capped(MAX_MESSAGE_LEN)
    }

    fn encode_body_capped(&self, max: usize) -> Result<Vec<u8>, MsgError> {
        let msg_type = self.msg_type();
        self.check_rules()?;
        let mut out = Vec::with_capacity(256);
        let res = match self {
            Message::Solicit(m) => ciborium::into_writer(m, &mut out),
            Message::Advertise(m) => ciborium::into_writer(m, &mut out),
            Message::Heartbeat(m) => ciborium::into_writer(m, &mut out),
            Message::Plan(m) => ciborium::into_writer(m, &mut out),
            Message::Fetch(m) => ciborium::into_writer(m, &mut out),
            Message::Join(m) => ciborium::into_writer(m, &mut out),
            Message::Nack(m) => ciborium::into_writer(m, &mut out),
            Message::Progress(m) => ciborium::into_writer(m, &mut out),
            Message::Ready(m) => ciborium::into_writer(m, &mut out),
            Message::Error(m) => ciborium::into_writer(m, &mut out),
            Message::Command(m) => ciborium::into_writer(m, &mut out),
            Message::Inventory(m) => ciborium::into_writer(m, &mut out),
            Message::Alive(m) => ciborium::into_writer(m, &mut out),
        };
        res.map_err(|source| MsgError::Encode { msg_type, source })?;
        if out.len() > max {
            return Err(MsgError::TooLarge {
                msg_type,
                len: out.len(),
                max,
            });
        }
        Ok(out)
    }

    /// Decodes the body of a `msg_type` frame (one frame, at most
    /// [`MAX_CONTROL_BODY_LEN`]). Strict: see the module header.
    pub fn decode_body(msg_type: MessageType, body: &[u8]) -> Result<Message, MsgError> {
        Message::decode_body_capped(msg_type, body, MAX_CONTROL_BODY_LEN)
    }

    /// Decodes a reassembled body (at most [`MAX_MESSAGE_LEN`]), as strictly as
    /// [`Message::decode_body`].
    pub fn decode_long_body(msg_type: MessageType, body: &[u8]) -> Result<Message, MsgError> {
        Message::decode_body_capped(msg_type, body, MAX_MESSAGE_LEN)
    }

    fn decode_body_capped(
        msg_type: MessageType,
        body: &[u8],
        max: usize,
    ) -> Result<Message, MsgError> {
        if body.len() > max {
            return Err(MsgError::TooLarge {
                msg_type,
                len: body.len(),
                max,
            });
        }
        let msg = match msg_type {
            MessageType::Solicit => Message::Solicit(cbor(msg_type, body)?),
            MessageType::Advertise => Message::Advertise(cbor(msg_type, body)?),
            MessageType::Heartbeat => Message::Heartbeat(cbor(msg_type, body)?),
            MessageType::Plan => Message::Plan(cbor(msg_type, body)?),
            MessageType::Fetch => Message::Fetch(cbor(msg_type, body)?),
            MessageType::Join => Message::Join(cbor(msg_type, body)?),
            MessageType::Nack => Message::Nack(cbor(msg_type, body)?),
            MessageType::Progress => Message::Progress(cbor(msg_type, body)?),
            MessageType::Ready => Message::Ready(cbor(msg_type, body)?),
            MessageType::Error => Message::Error(cbor(msg_type, body)?),
            MessageType::Command => Message::Command(cbor(msg_type, body)?),
            MessageType::Inventory => Message::Inventory(cbor(msg_type, body)?),
            MessageType::Alive => Message::Alive(cbor(msg_type, body)?),
            MessageType::Data => return Err(MsgError::NotControl { msg_type }),
        };
        msg.check_rules()?;
        if msg.encode_body_capped(max)? != body {
            return Err(MsgError::NonCanonical { msg_type });
        }
        Ok(msg)
    }

    /// Rules beyond the CBOR schema, checked on encode and decode.
    fn check_rules(&self) -> Result<(), MsgError> {
        let msg_type = self.msg_type();
        let boot_images = |a: &[ArtifactRef]| {
            a.iter()
                .filter(|a| a.kind == ArtifactKind::BootImage)
                .count()
        };
        match self {
            Message::Plan(p) if boot_images(&p.body.artifacts) > 1 => Err(MsgError::Invalid {
                msg_type,
                rule: "a plan holds at most one boot image",
            }),
            Message::Solicit(s) if boot_images(&s.inventory) > 1 => Err(MsgError::Invalid {
                msg_type,
                rule: "an inventory holds at most one boot image",
            }),
            Message::Inventory(s) if boot_images(&s.inventory) > 1 => Err(MsgError::Invalid {
                msg_type,
                rule: "an inventory holds at most one boot image",
            }),
            Message::Solicit(s) if s.inventory_omitted && !s.inventory.is_empty() => {
                Err(MsgError::Invalid {
                    msg_type,
                    rule: "a Solicit that omits its inventory carries no artifact",
                })
            }
            Message::Plan(p)
                if p.body.artifacts_omitted
                    && (p.body.verdict != Verdict::Continue || !p.body.artifacts.is_empty()) =>
            {
                Err(MsgError::Invalid {
                    msg_type,
                    rule: "a digest-only plan is a Continue with no artifact",
                })
            }
            Message::Join(j) if j.block_size == 0 => Err(MsgError::Invalid {
                msg_type,
                rule: "block size must not be zero",
            }),
            _ => Ok(()),
        }
    }
}

/// Decodes one CBOR item of type `T` from `body`, rejecting trailing bytes.
fn cbor<T: serde::de::DeserializeOwned>(msg_type: MessageType, body: &[u8]) -> Result<T, MsgError> {
    let mut rest = body;
    let value =
        ciborium::from_reader(&mut rest).map_err(|source| MsgError::Decode { msg_type, source })?;
    if !rest.is_empty() {
        return Err(MsgError::TrailingBytes {
            msg_type,
            extra: rest.len(),
        });
    }
    Ok(value)
}

/// Encodes `msg` as a complete frame into `buf` (use a [`crate::MAX_FRAME_LEN`] buffer);
/// returns the frame length. `session` and `sequence` go into the header as given.
pub fn encode_message(
    buf: &mut [u8],
    link: &Link,
    session: u32,
    sequence: u32,
    msg: &Message,
) -> Result<usize, MsgError> {
    let body = msg.encode_body()?;
    let header = Header::new(msg.msg_type(), session, sequence);
    Ok(frame::encode_frame(buf, link, &header, &body)?)
}

/// Encodes `msg` in place: like [`encode_message`] but with an explicit header.
pub fn encode_message_with_header(
    buf: &mut [u8],
    link: &Link,
    header: &Header,
    msg: &Message,
) -> Result<usize, MsgError> {
    let body = msg.encode_body()?;
    let needed = frame::frame_len(body.len());
    let area = payload_area(buf);
    let Some(dst) = area.get_mut(..body.len()) else {
        return Err(FrameError::BufferTooSmall {
            needed,
            available: PAYLOAD_OFF + area.len(),
        }
        .into());
    };
    dst.copy_from_slice(&body);
    let header = Header {
        msg_type: msg.msg_type(),
        ..*header
    };
    Ok(frame::finish_frame(buf, link, &header, body.len())?)
}

/// Decodes the control message of a validated frame.
pub fn decode_message(frame: &Frame<'_>) -> Result<Message, MsgError> {
    let h = frame.header();
    if h.flags.contains(frame::Flags::FRAGMENT) {
        return Err(MsgError::Fragment {
            msg_type: h.msg_type,
        });
    }
    let msg = Message::decode_body(h.msg_type, frame.payload())?;
    check_version(h.version, &msg)?;
    Ok(msg)
}

/// Rejects a message that uses what its frame's `version` does not have (a version-2 field
/// in a version-1 frame).
pub fn check_version(version: u8, msg: &Message) -> Result<(), MsgError> {
    if msg.since_version() > version {
        return Err(MsgError::Invalid {
            msg_type: msg.msg_type(),
            rule: "uses a field or reason of protocol version 2 in a version-1 frame",
        });
    }
    Ok(())
}

/// Decodes a whole frame as a control message: [`Frame::decode`] then [`decode_message`].
pub fn decode_frame(bytes: &[u8], ethertype: u16) -> Result<(Header, Message), MsgError> {
    let frame = Frame::decode(bytes, ethertype)?;
    let msg = decode_message(&frame)?;
    Ok((frame.header(), msg))
}

/// The reply to a frame whose version we do not speak: an Error message with reason
/// UnsupportedVersion{MIN, CURRENT}, and the header to send it with (our CURRENT version,
/// the received session echoed, the received sequence echoed so the peer can match it).
///
/// Both the header layout and this message's encoding are frozen, so a peer of any version
/// can read it.
pub fn unsupported_version_reply(received: &RawHeader) -> (Header, Message) {
    (
        Header::new(MessageType::Error, received.session, received.sequence),
        Message::Error(ErrorMsg {
            reason: ErrorReason::UnsupportedVersion {
                min: version::MIN,
                max: version::CURRENT,
            },
            detail: format!(
                "protocol version {} not supported; this peer speaks {}..={}",
                received.version,
                version::MIN,
                version::CURRENT
            ),
        }),
    )
}

/// The reply to a frame whose message type this version does not know.
pub fn unknown_type_reply(received: &RawHeader) -> (Header, Message) {
    (
        Header::new(MessageType::Error, received.session, received.sequence),
        Message::Error(ErrorMsg {
            reason: ErrorReason::UnknownMessageType {
                msg_type: received.msg_type,
            },
            detail: format!(
                "message type 0x{:02x} unknown to protocol version {}",
                received.msg_type,
                version::CURRENT
            ),
        }),
    )
}

/// The reply, if any, that a peer should send for a frame rejected with `err`: unsupported
/// version and unknown type are answered; everything else (bad CRC, garbage) is dropped
/// silently, as answering would let anyone on the wire make us talk.
pub fn reply_for(err: &FrameError) -> Option<(Header, Message)> {
    match err {
        FrameError::UnsupportedVersion { header } => Some(unsupported_version_reply(header)),
        FrameError::UnknownMessageType { header } => Some(unknown_type_reply(header)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
