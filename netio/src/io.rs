//! [`FrameIo`]: the operation-sized boundary between code that speaks the protocol (master
//! service, card agent, transfer engine) and whatever moves its frames: a real
//! [`PacketSocket`] or the in-memory [`crate::mem::MemHub`] for pure tests.
//!
//! Only what those callers need is here (batches, membership, identity); socket tuning
//! and statistics stay on the concrete types.

use std::time::Duration;

use crate::socket::{PacketSocket, SocketError};
use shelfboot_proto::id::MacAddr;

/// Something that sends and receives whole Ethernet frames on one port.
pub trait FrameIo {
    type Error: std::error::Error + Send + Sync + 'static;

    /// This port's own MAC (the source address frames should carry).
    fn mac(&self) -> MacAddr;

    /// Largest frame accepted, Ethernet header included.
    fn max_frame_len(&self) -> usize;

    /// Send all `frames`, waiting a bounded time for room; returns how many went.
    fn send_batch(&mut self, frames: &[&[u8]]) -> Result<usize, Self::Error>;

    /// Wait up to `timeout` for frames, then hand every available one to
    /// `out(frame, source MAC)`; returns how many were delivered.
    fn recv_batch(
        &mut self,
        out: &mut dyn FnMut(&[u8], MacAddr),
        timeout: Duration,
    ) -> Result<usize, Self::Error>;

    /// Receive frames sent to this multicast group MAC.
    fn join(&mut self, group: MacAddr) -> Result<(), Self::Error>;

    /// Stop receiving a group joined before.
    fn leave(&mut self, group: MacAddr) -> Result<(), Self::Error>;

    /// Make sure everything accepted by `send_batch` has left (TX ring); default no-op.
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl FrameIo for PacketSocket {
    type Error = SocketError;

    fn mac(&self) -> MacAddr {
        PacketSocket::mac(self)
    }

    fn max_frame_len(&self) -> usize {
        PacketSocket::max_frame_len(self)
    }

    fn send_batch(&mut self, frames: &[&[u8]]) -> Result<usize, SocketError> {
        PacketSocket::send_batch(self, frames)
    }

    fn recv_batch(
        &mut self,
        out: &mut dyn FnMut(&[u8], MacAddr),
        timeout: Duration,
    ) -> Result<usize, SocketError> {
        PacketSocket::recv_batch(self, &mut |f: &[u8], src| out(f, src), timeout)
    }

    fn join(&mut self, group: MacAddr) -> Result<(), SocketError> {
        PacketSocket::join(self, group)
    }

    fn leave(&mut self, group: MacAddr) -> Result<(), SocketError> {
        PacketSocket::leave(self, group)
    }

    fn flush(&mut self) -> Result<(), SocketError> {
        PacketSocket::flush(self)
    }
}
