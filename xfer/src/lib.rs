//! shelfboot transfer engine: a sans-IO one-to-many sender and receiver of one artifact,
//! in slices of [`BLOCKS_PER_SLICE`] blocks with per-slice NACK bitmaps, paced sending with
//! loss backoff, a join window, catch-up of slow cards and resume.
//!
//! Sans-IO means: no sockets, no threads, no clocks. Time comes in as an argument (a
//! [`Duration`](std::time::Duration) since an origin the caller chooses, monotonic); frames
//! go out through a caller buffer ([`Sender::poll`]) or as control messages pushed to a
//! caller `Vec` ([`Receiver::poll`]). The master drives a [`Sender`] per session from its
//! AF_PACKET loop, the card drives a [`Receiver`] per artifact; [`sim`] drives both over
//! an in-memory lossy broadcast channel for tests and the `simulate` example.
//!
//! The wire format is `shelfboot-proto`'s (data frames of [`shelfboot_proto::data`],
//! `Join`/`Fetch`/`Nack`/`Progress` control messages). This crate does not encode control
//! messages into frames, choose transfer ids or MAC addresses, or decide which cards get a
//! catch-up session: the caller does. See `docs/transfer.md`.
//!
//! [`BLOCKS_PER_SLICE`]: shelfboot_proto::data::BLOCKS_PER_SLICE

pub mod geometry;
pub mod pacing;
pub mod receiver;
pub mod sender;
pub mod sim;
pub mod source;

pub use geometry::{ArtifactInfo, Geometry, GeometryError};
pub use pacing::{RateControl, RateLimits, TokenBucket};
pub use receiver::{
    DataOutcome, DropReason, Receiver, ReceiverConfig, ReceiverError, ReceiverState, ReceiverStats,
    Resume,
};
pub use sender::{
    Admission, ControlOutcome, DropCause, IgnoreReason, LaterReason, MemberState, MemberStatus,
    SendStep, Sender, SenderConfig, SenderError, SenderEvent, SenderStats,
};
pub use source::{BlockSource, ByteSink, ReadAhead};
