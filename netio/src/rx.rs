//! The receive half of an endpoint: the three receive paths (recvfrom, recvmmsg, V3
//! ring) behind one `receive` call, and the filter that decides which frames the caller
//! sees. Safe code; the ring itself is in `ring.rs`, the socket in `socket.rs`.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::socket::{LinkAddr, MsgFlags, MultiHeaders, recvfrom, recvmmsg};

use crate::config::{ETH_HEADER_LEN, Path};
use crate::ring::RxRing;
use shelfboot_proto::id::MacAddr;

/// Most recvmmsg or ring-block rounds per `receive` call, so one busy socket cannot keep
/// its caller from other work.
const ROUNDS: usize = 4;

/// Receive-side state per path.
#[derive(Debug)]
pub(crate) enum Rx {
    Plain {
        buf: Vec<u8>,
    },
    /// nix's `MultiHeaders` holds raw pointers (not `Send`), so headers are built per
    /// call: two small allocations against a batch of syscalls' worth of kernel work.
    Mmsg {
        bufs: Vec<Vec<u8>>,
    },
    Ring(RxRing),
}

impl Rx {
    pub(crate) fn plain(max_frame: usize) -> Self {
        Rx::Plain {
            buf: vec![0; max_frame],
        }
    }

    pub(crate) fn mmsg(batch: usize, max_frame: usize) -> Self {
        let n = batch.clamp(1, 256);
        Rx::Mmsg {
            bufs: vec![vec![0; max_frame]; n],
        }
    }

    pub(crate) fn path(&self) -> Path {
        match self {
            Rx::Plain { .. } => Path::Plain,
            Rx::Mmsg { .. } => Path::Mmsg,
            Rx::Ring(_) => Path::Ring,
        }
    }

    /// True if a ring block is waiting (no syscall needed to know).
    pub(crate) fn ring_ready(&self) -> bool {
        matches!(self, Rx::Ring(r) if r.ready())
    }

    pub(crate) fn ring(&self) -> Option<&RxRing> {
        match self {
            Rx::Ring(r) => Some(r),
            _ => None,
        }
    }

    /// Hand every frame available now on non-blocking `fd` (up to a few batches) to
    /// `deliver(frame, pkttype)`. Errors name the failed call.
    pub(crate) fn receive(
        &mut self,
        fd: BorrowedFd<'_>,
        batch: usize,
        deliver: &mut dyn FnMut(&[u8], u8),
    ) -> Result<(), (&'static str, Errno)> {
        match self {
            Rx::Ring(ring) => {
                ring.drain(ROUNDS, &mut |f| deliver(f.data, f.pkttype));
            }
            Rx::Plain { buf } => {
                for _ in 0..batch.max(1) * ROUNDS {
                    match recvfrom::<LinkAddr>(fd.as_raw_fd(), buf) {
                        Ok((n, addr)) => {
                            let pkttype = addr.map_or(libc::PACKET_HOST, |a| a.pkttype());
                            deliver(&buf[..n.min(buf.len())], pkttype);
                        }
                        Err(Errno::EAGAIN | Errno::EINTR) => break,
                        Err(e) => return Err(("recvfrom", e)),
                    }
                }
            }
            Rx::Mmsg { bufs } => {
                let mut headers = MultiHeaders::<LinkAddr>::preallocate(bufs.len(), None);
                for _ in 0..ROUNDS {
                    let mut meta = [(0usize, 0u8); 256];
                    let got = {
                        let mut slices: Vec<[IoSliceMut<'_>; 1]> =
                            bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
                        match recvmmsg(
                            fd.as_raw_fd(),
                            &mut headers,
                            slices.iter_mut(),
                            MsgFlags::MSG_DONTWAIT,
                            None,
                        ) {
                            Ok(results) => {
                                let mut k = 0;
                                for (slot, r) in meta.iter_mut().zip(results) {
                                    let pkttype =
                                        r.address.map_or(libc::PACKET_HOST, |a| a.pkttype());
                                    *slot = (r.bytes, pkttype);
                                    k += 1;
                                }
                                k
                            }
                            Err(Errno::EAGAIN | Errno::EINTR) => 0,
                            Err(e) => return Err(("recvmmsg", e)),
                        }
                    };
                    for (b, (n, pkttype)) in bufs.iter().zip(&meta[..got]) {
                        deliver(&b[..(*n).min(b.len())], *pkttype);
                    }
                    if got < bufs.len() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// What `recv_batch` drops before the caller sees it.
pub(crate) struct Filter<'a> {
    pub groups: &'a [MacAddr],
    pub multicast: bool,
}

impl Filter<'_> {
    pub(crate) fn accepts(&self, frame: &[u8], pkttype: u8) -> bool {
        if pkttype == libc::PACKET_OUTGOING || frame.len() < ETH_HEADER_LEN {
            return false;
        }
        match MacAddr::dst_of(frame) {
            Some(dst) if self.multicast && dst.is_multicast() && !dst.is_broadcast() => {
                self.groups.contains(&dst)
            }
            Some(_) => true,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x88, 0xb5, 1, 2, 3]);
        f
    }

    #[test]
    fn filter_drops_outgoing_runts_and_unjoined_groups() {
        let g = MacAddr([0x03, 0, 0, 0, 0, 7]);
        let groups = [g];
        let f = Filter {
            groups: &groups,
            multicast: true,
        };
        assert!(f.accepts(&frame([2, 0, 0, 0, 0, 1]), libc::PACKET_HOST));
        assert!(f.accepts(&frame([2, 0, 0, 0, 0, 1]), libc::PACKET_OTHERHOST));
        assert!(!f.accepts(&frame([2, 0, 0, 0, 0, 1]), libc::PACKET_OUTGOING));
        assert!(f.accepts(&frame([0xff; 6]), libc::PACKET_BROADCAST));
        assert!(f.accepts(&frame(g.0), libc::PACKET_MULTICAST));
        assert!(!f.accepts(&frame([0x03, 0, 0, 0, 0, 8]), libc::PACKET_MULTICAST));
        assert!(!f.accepts(&[1, 2, 3], libc::PACKET_HOST));
        let open = Filter {
            groups: &[],
            multicast: false,
        };
        assert!(open.accepts(&frame([0x03, 0, 0, 0, 0, 8]), libc::PACKET_MULTICAST));
    }
}
