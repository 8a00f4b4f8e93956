//! Control messages larger than one frame (protocol version 2): fragments and their
//! bounded reassembly.
//!
//! A control body of at most [`MAX_CONTROL_BODY_LEN`] bytes goes in one frame, exactly as
//! in version 1. A larger one (up to [`MAX_MESSAGE_LEN`]) is cut into fragments: frames of
//! the message's own type with the `FRAGMENT` flag, whose payload is a 12-byte fragment
//! header and a piece of the CBOR body:
//!
//! ```text
//!  payload offset 0          4              8           12
//!                 +----------+--------------+-----------+------------------------------+
//!                 | msg id   | total length |  offset   | body[offset .. offset + n]   |
//!                 |   u32    |     u32      |    u32    | n = min(1470, total - offset)|
//!                 +----------+--------------+-----------+------------------------------+
//! ```
//!
//! Fragments sit on a fixed grid: `offset` is a multiple of the grid step and each carries
//! the whole cell (the last one the rest), so one message has exactly one set of fragments
//! and an overlap can only be the same cell again. There are two grids ([`Grid`]): the
//! standard one, [`FRAGMENT_DATA_LEN`] (1470: a fragment fits a 1500-byte MTU), and the
//! jumbo one, [`JUMBO_FRAGMENT_DATA_LEN`] (8970: it fits a 9000-byte MTU), used only where
//! the sender knows both ends' ports take 9000-byte frames. A receiver takes either: a
//! fragment's offset and length tell its grid without doubt (below 64 KiB no offset but 0
//! is a multiple of both steps, and at offset 0 the two pieces differ in length), and every
//! fragment of one message must be on the same grid. `total` is over
//! [`MAX_CONTROL_BODY_LEN`] (a smaller message is never fragmented) and at most the
//! receiver's limit. The encoder ([`encode_frames`]) uses the header's sequence number as
//! the message id and puts the same header (session, sequence) on every fragment, so a
//! message re-sent from a cache is the same fragments again and completes a partial one.
//!
//! The [`Reassembler`] keys partial messages by (source MAC, message type, message id).
//! Its memory is bounded by [`Limits`]: at most `max_partials` partial messages of at
//! most `max_message_len` bytes each ([`Limits::memory_bound`]); when full it evicts the
//! oldest. A partial message older than `timeout` is dropped (the conversation's own
//! retries recover it: the card solicits again, the master re-sends). Duplicates are
//! counted and ignored; a fragment that disagrees with what is held (another total, other
//! bytes in the same cell) drops the whole partial message. Every outcome is counted in
//! [`FragCounters`].
//!
//! Reassembly checks no signature: the reassembled body is decoded by
//! [`Message::decode_long_body`] and a plan is verified exactly as one that came in one
//! frame. This module neither reads a clock (time is an argument) nor sends anything.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::frame::{self, Flags, Frame, Header, Link, MacAddr, MessageType, array_at};
use crate::msg::{Message, MsgError};
use crate::{MAX_CONTROL_BODY_LEN, MAX_MESSAGE_LEN, version};

/// Length of the fragment header at the start of a fragment's payload.
pub const FRAGMENT_HDR_LEN: usize = 12;
/// Body bytes per fragment on the standard grid: a fragment frame fits a 1500-byte MTU.
pub const FRAGMENT_DATA_LEN: usize = MAX_CONTROL_BODY_LEN - FRAGMENT_HDR_LEN;
/// Body bytes per fragment on the jumbo grid: a fragment frame fits a 9000-byte MTU.
pub const JUMBO_FRAGMENT_DATA_LEN: usize =
    crate::MAX_MTU as usize - frame::PROTO_HDR_LEN - frame::CRC_LEN - FRAGMENT_HDR_LEN;

/// The step of a message's fragment grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Grid {
    /// [`FRAGMENT_DATA_LEN`]: every port of every backplane takes these frames.
    #[default]
    Standard,
    /// [`JUMBO_FRAGMENT_DATA_LEN`]: only for a peer whose port, like ours, has a 9000-byte
    /// MTU.
    Jumbo,
}

impl Grid {
    /// Body bytes per fragment.
    pub const fn data_len(self) -> usize {
        match self {
            Grid::Standard => FRAGMENT_DATA_LEN,
            Grid::Jumbo => JUMBO_FRAGMENT_DATA_LEN,
        }
    }

    /// The grid for a path whose smallest port MTU is `mtu`: jumbo only at [`MAX_MTU`]
    /// (9000); any smaller MTU gets the standard grid.
    ///
    /// [`MAX_MTU`]: crate::MAX_MTU
    pub fn for_mtu(mtu: u32) -> Grid {
        if mtu >= u32::from(crate::MAX_MTU) {
            Grid::Jumbo
        } else {
            Grid::Standard
        }
    }

    /// The grid a fragment at `offset` with a piece of `len` bytes of a `total`-byte
    /// message lies on, if any.
    fn of(offset: usize, len: usize, total: usize) -> Option<Grid> {
        [Grid::Standard, Grid::Jumbo].into_iter().find(|g| {
            let step = g.data_len();
            offset.is_multiple_of(step) && offset < total && len == step.min(total - offset)
        })
    }
}

/// The fragment header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentHeader {
    /// Message id (the encoder's sequence number), the same in every fragment.
    pub msg_id: u32,
    /// Length of the whole body.
    pub total: u32,
    /// Where this piece goes.
    pub offset: u32,
    /// The grid the piece lies on (from its offset and length).
    pub grid: Grid,
}

/// Why a fragment was not taken.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FragError {
    /// The frame has no `FRAGMENT` flag.
    #[error("{msg_type} frame is not a fragment: decode it with msg::decode_message")]
    NotFragment { msg_type: MessageType },
    /// The fragment breaks a layout rule.
    #[error("{msg_type} fragment dropped: {rule}")]
    Malformed {
        msg_type: MessageType,
        rule: &'static str,
    },
    /// The announced message is over the receiver's limit.
    #[error(
        "{msg_type} fragment announces a {len}-byte message, over this receiver's {max}-byte limit: dropped"
    )]
    TooLarge {
        msg_type: MessageType,
        len: usize,
        max: usize,
    },
    /// The fragment disagrees with the partial message held under its key.
    #[error(
        "{msg_type} fragment of message {msg_id} from {src} disagrees with the fragments already held ({what}): the partial message is dropped"
    )]
    Inconsistent {
        msg_type: MessageType,
        msg_id: u32,
        src: MacAddr,
        what: &'static str,
    },
}

/// Errors of [`encode_frames`].
#[derive(Debug, Error)]
pub enum EncodeError {
    /// The message itself did not encode (or is over [`MAX_MESSAGE_LEN`]).
    #[error("encoding the message failed")]
    Msg(#[from] MsgError),
    /// The body needs fragments, which the peer's version does not know.
    #[error(
        "{msg_type} body of {len} bytes needs fragments, which protocol version {version} does not have (one frame holds {max}); the peer needs protocol version {}",
        version::FRAGMENTS
    )]
    NeedsFragments {
        msg_type: MessageType,
        len: usize,
        max: usize,
        version: u8,
    },
}

/// Reads the fragment header of `payload`, checking the layout rules against `max_len`.
pub fn parse(
    msg_type: MessageType,
    payload: &[u8],
    max_len: usize,
) -> Result<(FragmentHeader, &[u8]), FragError> {
    let malformed = |rule| FragError::Malformed { msg_type, rule };
    let (Some(_), Some(data)) = (
        payload.get(..FRAGMENT_HDR_LEN),
        payload.get(FRAGMENT_HDR_LEN..),
    ) else {
        return Err(malformed("shorter than the 12-byte fragment header"));
    };
    let msg_id = u32::from_be_bytes(array_at(payload, 0));
    let total_raw = u32::from_be_bytes(array_at(payload, 4));
    let offset_raw = u32::from_be_bytes(array_at(payload, 8));
    let (total, offset) = (total_raw as usize, offset_raw as usize);
    if total <= MAX_CONTROL_BODY_LEN {
        return Err(malformed(
            "total length fits one frame (such a message is never fragmented)",
        ));
    }
    if total > max_len {
        return Err(FragError::TooLarge {
            msg_type,
            len: total,
            max: max_len,
        });
    }
    let Some(grid) = Grid::of(offset, data.len(), total) else {
        return Err(malformed(
            "not on a fragment grid (offset a multiple of 1470 or 8970 inside the message, piece the whole cell or the rest)",
        ));
    };
    let h = FragmentHeader {
        msg_id,
        total: total_raw,
        offset: offset_raw,
        grid,
    };
    Ok((h, data))
}

/// Encodes `msg` for a peer speaking `header.version`: one frame if its body fits
/// [`MAX_CONTROL_BODY_LEN`], else (version 2) its fragments on the standard grid, every
/// one with `header`'s session and sequence, the `FRAGMENT` flag and the sequence as
/// message id.
pub fn encode_frames(
    link: &Link,
    header: &Header,
    msg: &Message,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    encode_frames_on(Grid::Standard, link, header, msg)
}

/// [`encode_frames`] on `grid`: [`Grid::Jumbo`] only for a peer known to take 9000-byte
/// frames (a message that fits one frame is the same one frame on either grid).
pub fn encode_frames_on(
    grid: Grid,
    link: &Link,
    header: &Header,
    msg: &Message,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    crate::msg::check_version(header.version, msg)?;
    let body = msg.encode_long_body()?;
    let msg_type = msg.msg_type();
    let header = Header {
        msg_type,
        ..*header
    };
    if body.len() <= MAX_CONTROL_BODY_LEN {
        let mut buf = vec![0u8; frame::frame_len(body.len())];
        let n = frame::encode_frame(&mut buf, link, &header, &body).map_err(MsgError::from)?;
        buf.truncate(n);
        return Ok(vec![buf]);
    }
    if header.version < version::FRAGMENTS {
        return Err(EncodeError::NeedsFragments {
            msg_type,
            len: body.len(),
            max: MAX_CONTROL_BODY_LEN,
            version: header.version,
        });
    }
    let header = Header {
        flags: header.flags.with(Flags::FRAGMENT),
        ..header
    };
    let total = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let step = grid.data_len();
    let mut frames = Vec::with_capacity(body.len().div_ceil(step));
    let mut payload = Vec::with_capacity(FRAGMENT_HDR_LEN + step);
    for (i, piece) in body.chunks(step).enumerate() {
        let offset = u32::try_from(i * step).unwrap_or(u32::MAX);
        payload.clear();
        payload.extend_from_slice(&header.sequence.to_be_bytes());
        payload.extend_from_slice(&total.to_be_bytes());
        payload.extend_from_slice(&offset.to_be_bytes());
        payload.extend_from_slice(piece);
        let mut buf = vec![0u8; frame::frame_len(payload.len())];
        let n = frame::encode_frame(&mut buf, link, &header, &payload).map_err(MsgError::from)?;
        buf.truncate(n);
        frames.push(buf);
    }
    Ok(frames)
}

/// How much a [`Reassembler`] may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted (its `total`).
    pub max_message_len: usize,
    /// Partial messages held at once; the oldest is evicted for a new one.
    pub max_partials: usize,
    /// A partial message older than this is dropped.
    pub timeout: Duration,
}

impl Limits {
    /// A card's: two partial plans (this master's and a stale or second one), 128.4 KiB.
    pub const CARD: Limits = Limits {
        max_message_len: MAX_MESSAGE_LEN,
        max_partials: 2,
        timeout: Duration::from_secs(3),
    };
    /// The master's: 64 partial inventories at once, 4.0 MiB.
    pub const MASTER: Limits = Limits {
        max_message_len: MAX_MESSAGE_LEN,
        max_partials: 64,
        timeout: Duration::from_secs(3),
    };

    /// The most memory the reassembler's partial messages and its record of recently
    /// completed ones can take, in bytes (what [`Reassembler::memory_bytes`] never
    /// exceeds).
    pub const fn memory_bound(&self) -> usize {
        // The standard grid has the more cells.
        let cells = self.max_message_len.div_ceil(FRAGMENT_DATA_LEN);
        self.max_partials * (self.max_message_len + cells + std::mem::size_of::<Partial>())
            + self.recent_cap() * std::mem::size_of::<Key>()
    }

    /// Completed keys remembered, to tell a late duplicate from a new message.
    const fn recent_cap(&self) -> usize {
        self.max_partials * 4
    }
}

/// Counters of every outcome of [`Reassembler::push`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FragCounters {
    /// Fragments handed in.
    pub fragments: u64,
    /// Messages completed.
    pub completed: u64,
    /// Fragments for a cell already held (same bytes): ignored.
    pub duplicates: u64,
    /// Fragments of a message completed a moment ago: ignored.
    pub late_duplicates: u64,
    /// Partial messages dropped because a fragment disagreed with them.
    pub inconsistent: u64,
    /// Fragments breaking a layout rule.
    pub malformed: u64,
    /// Fragments announcing a message over the limit.
    pub too_large: u64,
    /// Partial messages evicted to make room.
    pub evicted: u64,
    /// Partial messages dropped after the timeout.
    pub expired: u64,
}

/// Identity of a message being reassembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: MacAddr,
    msg_type: MessageType,
    msg_id: u32,
}

#[derive(Debug)]
struct Partial {
    key: Key,
    started: Instant,
    header: Header,
    dst: MacAddr,
    grid: Grid,
    body: Vec<u8>,
    have: Vec<bool>,
    missing: usize,
}

/// A complete message body, ready for [`Message::decode_long_body`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled {
    /// Addressing of the fragments.
    pub link: Link,
    /// The fragments' header, without the `FRAGMENT` flag.
    pub header: Header,
    /// The whole CBOR body.
    pub body: Vec<u8>,
}

impl Reassembled {
    /// Decodes the body (strictly, as one-frame bodies are).
    pub fn decode(&self) -> Result<Message, MsgError> {
        let msg = Message::decode_long_body(self.header.msg_type, &self.body)?;
        crate::msg::check_version(self.header.version, &msg)?;
        Ok(msg)
    }
}

/// Bounded reassembly of fragmented control messages. See the module docs.
#[derive(Debug)]
pub struct Reassembler {
    limits: Limits,
    /// Oldest first.
    partials: Vec<Partial>,
    recent: VecDeque<Key>,
    counters: FragCounters,
}

impl Reassembler {
    /// An empty reassembler holding at most `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            partials: Vec::new(),
            recent: VecDeque::new(),
            counters: FragCounters::default(),
        }
    }

    /// The counters.
    pub fn counters(&self) -> FragCounters {
        self.counters
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Partial messages held.
    pub fn partials(&self) -> usize {
        self.partials.len()
    }

    /// Bytes held now (buffers as allocated, bookkeeping included); never above
    /// [`Limits::memory_bound`].
    pub fn memory_bytes(&self) -> usize {
        self.partials
            .iter()
            .map(|p| p.body.capacity() + p.have.capacity() + std::mem::size_of::<Partial>())
            .sum::<usize>()
            + self.recent.len() * std::mem::size_of::<Key>()
    }

    /// When the oldest partial message expires, if any is held.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.partials
            .iter()
            .map(|p| p.started + self.limits.timeout)
            .min()
    }

    /// Drops the partial messages older than the timeout.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.limits.timeout;
        let before = self.partials.len();
        self.partials
            .retain(|p| now.saturating_duration_since(p.started) <= timeout);
        self.counters.expired += (before - self.partials.len()) as u64;
    }

    /// Takes one fragment frame. Returns the message when this fragment completed it.
    pub fn push(
        &mut self,
        now: Instant,
        frame: &Frame<'_>,
    ) -> Result<Option<Reassembled>, FragError> {
        let header = frame.header();
        let msg_type = header.msg_type;
        if !header.flags.contains(Flags::FRAGMENT) {
            return Err(FragError::NotFragment { msg_type });
        }
        self.counters.fragments += 1;
        self.expire(now);
        let (fh, data) = match parse(msg_type, frame.payload(), self.limits.max_message_len) {
            Ok(x) => x,
            Err(e) => {
                match e {
                    FragError::TooLarge { .. } => self.counters.too_large += 1,
                    _ => self.counters.malformed += 1,
                }
                return Err(e);
            }
        };
        let link = frame.link();
        let key = Key {
            src: link.src,
            msg_type,
            msg_id: fh.msg_id,
        };
        if self.recent.contains(&key) {
            self.counters.late_duplicates += 1;
            return Ok(None);
        }
        let header = Header {
            flags: Flags::from_bits(header.flags.bits() & !Flags::FRAGMENT.bits())
                .unwrap_or(Flags::NONE),
            ..header
        };
        let total = fh.total as usize;
        let idx = match self.partials.iter().position(|p| p.key == key) {
            Some(i) => i,
            None => {
                if self.partials.len() >= self.limits.max_partials.max(1) {
                    self.partials.remove(0);
                    self.counters.evicted += 1;
                }
                let cells = total.div_ceil(fh.grid.data_len());
                self.partials.push(Partial {
                    key,
                    started: now,
                    header,
                    dst: link.dst,
                    grid: fh.grid,
                    body: vec![0u8; total],
                    have: vec![false; cells],
                    missing: cells,
                });
                self.partials.len() - 1
            }
        };
        let inconsistent = |what| FragError::Inconsistent {
            msg_type,
            msg_id: fh.msg_id,
            src: key.src,
            what,
        };
        let p = &mut self.partials[idx];
        let problem = if p.body.len() != total {
            Some("another total length")
        } else if p.header.session != header.session {
            Some("another session")
        } else if p.grid != fh.grid {
            Some("another fragment grid")
        } else {
            None
        };
        if let Some(what) = problem {
            self.partials.remove(idx);
            self.counters.inconsistent += 1;
            return Err(inconsistent(what));
        }
        let cell = fh.offset as usize / fh.grid.data_len();
        let range = fh.offset as usize..fh.offset as usize + data.len();
        if p.have.get(cell).copied().unwrap_or(false) {
            if p.body.get(range) == Some(data) {
                self.counters.duplicates += 1;
                return Ok(None);
            }
            self.partials.remove(idx);
            self.counters.inconsistent += 1;
            return Err(inconsistent("other bytes for the same piece"));
        }
        if let (Some(dst), Some(h)) = (p.body.get_mut(range), p.have.get_mut(cell)) {
            dst.copy_from_slice(data);
            *h = true;
            p.missing -= 1;
        }
        if p.missing > 0 {
            return Ok(None);
        }
        let p = self.partials.remove(idx);
        self.counters.completed += 1;
        if self.recent.len() >= self.limits.recent_cap() {
            self.recent.pop_front();
        }
        self.recent.push_back(key);
        Ok(Some(Reassembled {
            link: Link { dst: p.dst, ..link },
            header: p.header,
            body: p.body,
        }))
    }
}

#[cfg(test)]
mod tests;
