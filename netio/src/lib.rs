//! shelfboot backplane I/O: AF_PACKET endpoints with batched send/receive paths, and an
//! in-memory backplane behind the same [`FrameIo`] trait for pure tests.
//!
//! This crate moves opaque Ethernet frames; it knows nothing of shelfboot's frame
//! formats or messages (that is `shelfboot-proto`, whose `MacAddr` it uses and re-exports).
//! It is synchronous and depends only on that crate, libc, nix, log and thiserror so that
//! the card's PID-1 init can use it. All `unsafe`
//! lives in the private `sys` module. Not here: pacing (the transfer engine paces), the
//! network-namespace test fixture (`shelfboot-testkit`), the AF_PACKET ceiling
//! measurement (`shelfboot-bench`). See docs/netio.md.

pub mod config;
pub mod io;
pub mod mem;
pub mod ring;
mod rx;
pub mod socket;
// The one module allowed to use `unsafe`; every block carries a SAFETY comment.
#[allow(unsafe_code)]
mod sys;

pub use config::{DEFAULT_ETHERTYPE, ETH_HEADER_LEN, Path, PathChoice, SocketConfig, SocketStats};
pub use io::FrameIo;
pub use ring::{RingError, RingGeometry};
pub use shelfboot_proto::id::MacAddr;
pub use socket::{PacketSocket, SocketError};
