//! PACKET_MMAP rings in safe code: a TPACKET_V2 transmit ring (fill slots, one `send()`
//! per batch) and a TPACKET_V3 receive ring (walk user-owned blocks, hand them back).
//!
//! The mapping itself, and the rule that a slot is only visible while user space owns it,
//! live in `sys::RingMap` (private); this module does the index arithmetic and parses block
//! contents with bounds-checked slice access, so a corrupt or hostile offset inside a
//! block can make us skip that block but never read outside it. It does not choose between
//! paths or open sockets (see `socket.rs`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, send};

use crate::sys::{self, RingMap, SlotLayout};

/// `TPACKET_ALIGNMENT` in `linux/if_packet.h`.
pub const TPACKET_ALIGNMENT: usize = 16;
/// Where a TX frame's bytes start in a TPACKET_V2 slot: `TPACKET2_HDRLEN -
/// sizeof(sockaddr_ll)` (the kernel's default when PACKET_TX_HAS_OFF is not set).
pub const TX_DATA_OFFSET: usize = 32;
/// Offsets inside `struct tpacket2_hdr`.
const V2_TP_LEN: usize = 4;
const V2_TP_SNAPLEN: usize = 8;
/// Offsets inside `struct tpacket_block_desc` (`hdr.bh1` starts at 8).
const BLK_STATUS: usize = 8;
const BLK_NUM_PKTS: usize = 12;
const BLK_FIRST_PKT: usize = 16;
const BLK_LEN: usize = 20;
/// Offsets inside `struct tpacket3_hdr`; the `sockaddr_ll` follows at its aligned size.
const V3_NEXT: usize = 0;
const V3_SNAPLEN: usize = 12;
const V3_LEN: usize = 16;
const V3_MAC: usize = 24;
const V3_HDR_ALIGNED: usize = 48;
/// `sll_pkttype` inside `struct sockaddr_ll`.
const SLL_PKTTYPE: usize = 10;

// The hand-written offsets above must match the UAPI structs libc declares.
const _: () = assert!(std::mem::size_of::<libc::tpacket2_hdr>() == 32);
const _: () = assert!(std::mem::size_of::<libc::tpacket3_hdr>() == V3_HDR_ALIGNED);
const _: () = assert!(std::mem::size_of::<libc::tpacket_block_desc>() == 48);
const _: () = assert!(libc::TPACKET2_HDRLEN - std::mem::size_of::<libc::sockaddr_ll>() == 32);

/// Ring sizes, as given to PACKET_TX_RING / PACKET_RX_RING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingGeometry {
    /// Bytes per block: a multiple of the page size. For the V3 RX ring this is the unit
    /// handed between kernel and user; for the V2 TX ring a block holds whole frames.
    pub block_size: u32,
    pub block_nr: u32,
    /// Bytes per frame slot: a multiple of 16 that holds the header plus a full frame.
    pub frame_size: u32,
}

impl RingGeometry {
    /// 256 frames of 2 KiB in 64 KiB blocks (512 KiB): enough for 1500-byte MTUs.
    pub const TX_DEFAULT: RingGeometry = RingGeometry {
        block_size: 1 << 16,
        block_nr: 8,
        frame_size: 2048,
    };
    /// 64 blocks of 64 KiB (4 MiB): about 2,600 full-size frames at line rate. Many
    /// small blocks rather than few big ones because a block the retire timer hands over
    /// holds whatever trickled in (often one frame): at low rates the ring holds
    /// `block_nr` timeouts' worth of traffic, i.e. 64 x 2 ms before it drops.
    pub const RX_DEFAULT: RingGeometry = RingGeometry {
        block_size: 1 << 16,
        block_nr: 64,
        frame_size: 2048,
    };

    /// This geometry, made to hold frames of up to `max_frame` bytes (a jumbo MTU): when
    /// its slots are too small, they grow to the next power of two that holds a header
    /// and such a frame, blocks grow to hold at least one slot, and the ring keeps its
    /// size in bytes (so as many bytes of frames are in flight, in fewer, larger frames).
    /// A geometry that already holds such frames is returned unchanged.
    pub fn fitted(self, max_frame: usize) -> RingGeometry {
        let need = TX_DATA_OFFSET.max(V3_HDR_ALIGNED + 20) + max_frame;
        if self.frame_size as usize >= need {
            return self;
        }
        let frame_size = u32::try_from(need.next_power_of_two()).unwrap_or(u32::MAX);
        let block_size = self.block_size.max(frame_size);
        let total = u64::from(self.block_size) * u64::from(self.block_nr);
        let block_nr = u32::try_from((total / u64::from(block_size)).max(1)).unwrap_or(u32::MAX);
        RingGeometry {
            block_size,
            block_nr,
            frame_size,
        }
    }

    pub fn frames_per_block(&self) -> u32 {
        self.block_size.checked_div(self.frame_size).unwrap_or(0)
    }

    pub fn frame_nr(&self) -> u32 {
        self.frames_per_block().saturating_mul(self.block_nr)
    }

    pub fn total_bytes(&self) -> usize {
        usize::try_from(u64::from(self.block_size) * u64::from(self.block_nr)).unwrap_or(usize::MAX)
    }

    /// Check the kernel's rules (and ours: frames tile blocks exactly, so slot `i` of the
    /// TX ring starts at `i * frame_size`) for frames of up to `max_frame` bytes.
    pub fn check(&self, page_size: usize, max_frame: usize) -> Result<(), RingError> {
        let block = self.block_size as usize;
        let frame = self.frame_size as usize;
        let bad = |why: &'static str| {
            Err(RingError::Geometry {
                geometry: *self,
                why,
            })
        };
        if page_size == 0 || block == 0 || !block.is_multiple_of(page_size) {
            return bad("block_size must be a non-zero multiple of the page size");
        }
        if frame == 0 || !frame.is_multiple_of(TPACKET_ALIGNMENT) || !block.is_multiple_of(frame) {
            return bad("frame_size must be a multiple of 16 that divides block_size");
        }
        if frame < TX_DATA_OFFSET + max_frame || frame < V3_HDR_ALIGNED + 20 + max_frame {
            return bad("frame_size cannot hold a header and a full-size frame");
        }
        if self.block_nr == 0 || self.total_bytes() > (1 << 30) {
            return bad("block_nr must be at least 1 and the ring at most 1 GiB");
        }
        Ok(())
    }
}

/// Ring setup and use failures. The interface is named by the socket layer, which wraps
/// these.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring geometry {geometry:?} rejected: {why}")]
    Geometry {
        geometry: RingGeometry,
        why: &'static str,
    },
    #[error("setsockopt(PACKET_VERSION, {version}) failed")]
    Version {
        version: &'static str,
        #[source]
        source: Errno,
    },
    #[error("setsockopt({which}) with {geometry:?} failed (kernel too old, or not root?)")]
    Setup {
        which: &'static str,
        geometry: RingGeometry,
        #[source]
        source: Errno,
    },
    #[error("mmap of the {which} ({bytes} bytes) failed")]
    Map {
        which: &'static str,
        bytes: usize,
        #[source]
        source: Errno,
    },
    #[error("frame of {len} bytes does not fit a {frame_size}-byte TX ring slot")]
    FrameTooLarge { len: usize, frame_size: usize },
    #[error("{call} for the TX ring's socket failed")]
    Socket {
        call: &'static str,
        #[source]
        source: Errno,
    },
    #[error("send() to flush the TX ring failed")]
    Kick {
        #[source]
        source: Errno,
    },
}

/// A TPACKET_V2 transmit ring on its own socket (bound with protocol 0, so it never
/// receives). Frames are copied into slots, marked SEND_REQUEST, and one `send()` per batch
/// tells the kernel to transmit them all.
#[derive(Debug)]
pub(crate) struct TxRing {
    // Field order: unmap before the socket closes.
    map: RingMap,
    fd: OwnedFd,
    head: usize,
    queued: usize,
    wrong_format: u64,
}

fn tx_user_owns(status: u32) -> bool {
    status == libc::TP_STATUS_AVAILABLE || status & libc::TP_STATUS_WRONG_FORMAT != 0
}

fn rx_user_owns(status: u32) -> bool {
    status & libc::TP_STATUS_USER != 0
}

fn read_u32(buf: &[u8], off: usize) -> Option<u32> {
    let b = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_u16(buf: &[u8], off: usize) -> Option<u16> {
    let b = buf.get(off..off.checked_add(2)?)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

fn as_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl TxRing {
    /// Set TPACKET_V2 and PACKET_TX_RING on `fd` (already bound) and map it.
    pub(crate) fn new(fd: OwnedFd, geometry: RingGeometry) -> Result<Self, RingError> {
        sys::set_packet_int(fd.as_fd(), libc::PACKET_VERSION, sys::TPACKET_V2).map_err(
            |source| RingError::Version {
                version: "TPACKET_V2",
                source,
            },
        )?;
        let req = libc::tpacket_req {
            tp_block_size: geometry.block_size,
            tp_block_nr: geometry.block_nr,
            tp_frame_size: geometry.frame_size,
            tp_frame_nr: geometry.frame_nr(),
        };
        sys::set_tx_ring(fd.as_fd(), &req).map_err(|source| RingError::Setup {
            which: "PACKET_TX_RING",
            geometry,
            source,
        })?;
        let layout = SlotLayout {
            slot_size: geometry.frame_size as usize,
            slots: geometry.frame_nr() as usize,
            status_offset: 0,
            user_owns: tx_user_owns,
        };
        let map = RingMap::map(fd.as_fd(), layout).map_err(|source| RingError::Map {
            which: "TX ring",
            bytes: geometry.total_bytes(),
            source,
        })?;
        Ok(Self {
            map,
            fd,
            head: 0,
            queued: 0,
            wrong_format: 0,
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Frames the kernel rejected as malformed (TP_STATUS_WRONG_FORMAT) so far.
    pub(crate) fn wrong_format(&self) -> u64 {
        self.wrong_format
    }

    /// Copy `frame` into the next slot if user space owns it; false if the ring is full.
    pub(crate) fn try_push(&mut self, frame: &[u8]) -> Result<bool, RingError> {
        let head = self.head;
        let slots = self.map.layout().slots;
        let Some(slot) = self.map.slot_mut(head) else {
            return Ok(false);
        };
        let frame_size = slot.len();
        let len_ok = u32::try_from(frame.len()).ok().filter(|_| {
            TX_DATA_OFFSET
                .checked_add(frame.len())
                .is_some_and(|end| end <= frame_size)
        });
        let Some(len32) = len_ok else {
            return Err(RingError::FrameTooLarge {
                len: frame.len(),
                frame_size,
            });
        };
        if read_u32(slot, 0).is_some_and(|s| s & libc::TP_STATUS_WRONG_FORMAT != 0) {
            self.wrong_format += 1;
        }
        slot[V2_TP_LEN..V2_TP_LEN + 4].copy_from_slice(&len32.to_ne_bytes());
        slot[V2_TP_SNAPLEN..V2_TP_SNAPLEN + 4].copy_from_slice(&len32.to_ne_bytes());
        slot[TX_DATA_OFFSET..TX_DATA_OFFSET + frame.len()].copy_from_slice(frame);
        self.map.give_to_kernel(head, libc::TP_STATUS_SEND_REQUEST);
        self.head = next_index(head, slots);
        self.queued += 1;
        Ok(true)
    }

    /// Ask the kernel to transmit every SEND_REQUEST slot: one `send()` with no data.
    /// With `wait`, block until they have all left the ring (bounded by SO_SNDTIMEO).
    pub(crate) fn kick(&mut self, wait: bool) -> Result<(), RingError> {
        let flags = if wait {
            MsgFlags::empty()
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        match send(self.fd.as_raw_fd(), &[], flags) {
            Ok(_) => {
                self.queued = 0;
                Ok(())
            }
            // Socket buffer full (or SO_SNDTIMEO ran out while waiting): the remaining
            // slots stay SEND_REQUEST and go with the next kick; the caller waits for
            // POLLOUT within its own deadline.
            Err(Errno::EAGAIN | Errno::ENOBUFS | Errno::ETIMEDOUT | Errno::EINTR) => Ok(()),
            Err(source) => Err(RingError::Kick { source }),
        }
    }

    /// Has the kernel picked up every slot we queued (none still SEND_REQUEST)? It takes
    /// slots in ring order, so looking at the newest one is enough. A non-blocking kick
    /// can stop early when the socket buffer is full, leaving slots that no one would
    /// send until the next kick.
    pub(crate) fn all_taken(&self) -> bool {
        let slots = self.map.layout().slots;
        let newest = if self.head == 0 {
            slots.saturating_sub(1)
        } else {
            self.head - 1
        };
        self.map.status(newest) != Some(libc::TP_STATUS_SEND_REQUEST)
    }

    /// Slots queued since the last successful kick.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }
}

/// Next ring index, wrapping at `len` (which is never 0 for a mapped ring).
pub(crate) fn next_index(i: usize, len: usize) -> usize {
    if i + 1 >= len { 0 } else { i + 1 }
}

/// One frame found in a V3 block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RxFrame<'a> {
    pub data: &'a [u8],
    /// Length on the wire (may exceed `data.len()` if the kernel truncated the snapshot).
    pub wire_len: u32,
    pub pkttype: u8,
}

/// What went wrong inside one block; the block is handed back and skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockError {
    /// The descriptor or a packet header points outside the block.
    OutOfBounds { packet: u32 },
}

/// Walk the packets of one TPACKET_V3 block (bytes of exactly one block, descriptor
/// first), calling `f` for each. Returns how many packets were delivered.
pub(crate) fn parse_block(block: &[u8], f: &mut dyn FnMut(RxFrame<'_>)) -> Result<u32, BlockError> {
    let oob = |packet| BlockError::OutOfBounds { packet };
    let num = read_u32(block, BLK_NUM_PKTS).ok_or(oob(0))?;
    let mut off = as_usize(read_u32(block, BLK_FIRST_PKT).ok_or(oob(0))?);
    // blk_len bounds the used part of the block; never trust it beyond the block itself.
    let used = as_usize(read_u32(block, BLK_LEN).ok_or(oob(0))?).min(block.len());
    let block = &block[..used];
    for i in 0..num {
        let hdr = block.get(off..off.checked_add(V3_HDR_ALIGNED + 20).ok_or(oob(i))?);
        let hdr = hdr.ok_or(oob(i))?;
        let next = as_usize(read_u32(hdr, V3_NEXT).ok_or(oob(i))?);
        let snaplen = as_usize(read_u32(hdr, V3_SNAPLEN).ok_or(oob(i))?);
        let wire_len = read_u32(hdr, V3_LEN).ok_or(oob(i))?;
        let mac = usize::from(read_u16(hdr, V3_MAC).ok_or(oob(i))?);
        let pkttype = *hdr.get(V3_HDR_ALIGNED + SLL_PKTTYPE).ok_or(oob(i))?;
        let start = off.checked_add(mac).ok_or(oob(i))?;
        let data = block
            .get(start..start.checked_add(snaplen).ok_or(oob(i))?)
            .ok_or(oob(i))?;
        f(RxFrame {
            data,
            wire_len,
            pkttype,
        });
        if i + 1 < num {
            if next == 0 {
                return Err(oob(i + 1));
            }
            off = off.checked_add(next).ok_or(oob(i + 1))?;
        }
    }
    Ok(num)
}

/// A TPACKET_V3 receive ring on the endpoint's main socket.
#[derive(Debug)]
pub(crate) struct RxRing {
    map: RingMap,
    next: usize,
    malformed_blocks: u64,
}

impl RxRing {
    /// Set TPACKET_V3 and PACKET_RX_RING on `fd` and map it. `fd` stays owned by the
    /// caller, which must keep it open as long as this ring (the endpoint owns both).
    pub(crate) fn new(
        fd: BorrowedFd<'_>,
        geometry: RingGeometry,
        block_timeout_ms: u32,
    ) -> Result<Self, RingError> {
        sys::set_packet_int(fd, libc::PACKET_VERSION, sys::TPACKET_V3).map_err(|source| {
            RingError::Version {
                version: "TPACKET_V3",
                source,
            }
        })?;
        let req = libc::tpacket_req3 {
            tp_block_size: geometry.block_size,
            tp_block_nr: geometry.block_nr,
            tp_frame_size: geometry.frame_size,
            tp_frame_nr: geometry.frame_nr(),
            tp_retire_blk_tov: block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        sys::set_rx_ring(fd, &req).map_err(|source| RingError::Setup {
            which: "PACKET_RX_RING",
            geometry,
            source,
        })?;
        let layout = SlotLayout {
            slot_size: geometry.block_size as usize,
            slots: geometry.block_nr as usize,
            status_offset: BLK_STATUS,
            user_owns: rx_user_owns,
        };
        let map = RingMap::map(fd, layout).map_err(|source| RingError::Map {
            which: "RX ring",
            bytes: geometry.total_bytes(),
            source,
        })?;
        Ok(Self {
            map,
            next: 0,
            malformed_blocks: 0,
        })
    }

    /// Is there a user-owned block waiting?
    pub(crate) fn ready(&self) -> bool {
        self.map.status(self.next).is_some_and(rx_user_owns)
    }

    pub(crate) fn malformed_blocks(&self) -> u64 {
        self.malformed_blocks
    }

    /// Deliver the frames of up to `max_blocks` ready blocks, returning the frame count.
    pub(crate) fn drain(&mut self, max_blocks: usize, f: &mut dyn FnMut(RxFrame<'_>)) -> usize {
        let mut frames = 0usize;
        for _ in 0..max_blocks {
            let idx = self.next;
            let Some(block) = self.map.slot(idx) else {
                break;
            };
            match parse_block(block, f) {
                Ok(n) => frames += as_usize(n),
                Err(e) => {
                    self.malformed_blocks += 1;
                    log::warn!("skipping malformed TPACKET_V3 block {idx}: {e:?}");
                }
            }
            self.map.give_to_kernel(idx, libc::TP_STATUS_KERNEL);
            self.next = next_index(idx, self.map.layout().slots);
        }
        frames
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // synthetic blocks of a few KiB
mod tests {
    use super::*;

    /// Build a synthetic V3 block holding `frames`, laid out as the kernel does.
    fn block_with(frames: &[&[u8]], block_size: usize) -> Vec<u8> {
        let mut b = vec![0u8; block_size];
        let first = 48usize;
        b[BLK_NUM_PKTS..BLK_NUM_PKTS + 4].copy_from_slice(&(frames.len() as u32).to_ne_bytes());
        b[BLK_FIRST_PKT..BLK_FIRST_PKT + 4].copy_from_slice(&(first as u32).to_ne_bytes());
        let mut off = first;
        for (i, f) in frames.iter().enumerate() {
            let mac = 48 + 32; // header + sockaddr_ll, aligned, plus some slack
            let len = mac + f.len();
            let next = if i + 1 == frames.len() {
                0
            } else {
                len.div_ceil(16) * 16
            };
            b[off..off + 4].copy_from_slice(&(next as u32).to_ne_bytes());
            b[off + V3_SNAPLEN..off + V3_SNAPLEN + 4]
                .copy_from_slice(&(f.len() as u32).to_ne_bytes());
            b[off + V3_LEN..off + V3_LEN + 4].copy_from_slice(&(f.len() as u32).to_ne_bytes());
            b[off + V3_MAC..off + V3_MAC + 2].copy_from_slice(&(mac as u16).to_ne_bytes());
            b[off + V3_HDR_ALIGNED + SLL_PKTTYPE] = i as u8;
            b[off + mac..off + mac + f.len()].copy_from_slice(f);
            off += next;
        }
        let used = off + mac_end(frames);
        b[BLK_LEN..BLK_LEN + 4].copy_from_slice(&(used.min(block_size) as u32).to_ne_bytes());
        b
    }

    fn mac_end(frames: &[&[u8]]) -> usize {
        frames.last().map_or(0, |f| 80 + f.len())
    }

    type Parsed = (Result<u32, BlockError>, Vec<(Vec<u8>, u8)>);

    fn collect(block: &[u8]) -> Parsed {
        let mut got = Vec::new();
        let r = parse_block(block, &mut |fr| got.push((fr.data.to_vec(), fr.pkttype)));
        (r, got)
    }

    #[test]
    fn parses_well_formed_block() {
        let a = vec![0xaa; 60];
        let b = vec![0xbb; 1514];
        let c = vec![0xcc; 100];
        let block = block_with(&[&a, &b, &c], 8192);
        let (r, got) = collect(&block);
        assert_eq!(r, Ok(3));
        assert_eq!(got, vec![(a, 0), (b, 1), (c, 2)]);
    }

    #[test]
    fn empty_block_delivers_nothing() {
        let block = block_with(&[], 4096);
        assert_eq!(collect(&block), (Ok(0), vec![]));
    }

    #[test]
    fn hostile_offsets_never_read_outside_the_block() {
        let f = vec![1u8; 200];
        let good = block_with(&[&f, &f], 4096);
        // first packet offset past the end
        let mut b = good.clone();
        b[BLK_FIRST_PKT..BLK_FIRST_PKT + 4].copy_from_slice(&4090u32.to_ne_bytes());
        assert_eq!(collect(&b).0, Err(BlockError::OutOfBounds { packet: 0 }));
        // snaplen larger than the block
        let mut b = good.clone();
        b[48 + V3_SNAPLEN..48 + V3_SNAPLEN + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(collect(&b).0, Err(BlockError::OutOfBounds { packet: 0 }));
        // next offset of 0 with more packets claimed
        let mut b = good.clone();
        b[48..52].copy_from_slice(&0u32.to_ne_bytes());
        let (r, got) = collect(&b);
        assert_eq!(r, Err(BlockError::OutOfBounds { packet: 1 }));
        assert_eq!(got.len(), 1);
        // more packets claimed than present: the walk runs off the used length
        let mut b = good.clone();
        b[BLK_NUM_PKTS..BLK_NUM_PKTS + 4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(collect(&b).0.is_err());
        // a block shorter than its descriptor
        assert!(collect(&good[..10]).0.is_err());
        // blk_len larger than the slice is clamped, not trusted
        let mut b = good;
        b[BLK_LEN..BLK_LEN + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(collect(&b).0, Ok(2));
    }

    #[test]
    fn ring_index_wraps() {
        assert_eq!(next_index(0, 4), 1);
        assert_eq!(next_index(3, 4), 0);
        assert_eq!(next_index(0, 1), 0);
        let mut i = 0;
        for _ in 0..9 {
            i = next_index(i, 4);
        }
        assert_eq!(i, 1);
    }

    #[test]
    fn geometry_rules() {
        let page = 4096;
        assert!(RingGeometry::TX_DEFAULT.check(page, 1514).is_ok());
        assert!(RingGeometry::RX_DEFAULT.check(page, 1514).is_ok());
        assert_eq!(RingGeometry::TX_DEFAULT.frame_nr(), 256);
        assert_eq!(RingGeometry::RX_DEFAULT.frames_per_block(), 32);
        assert_eq!(RingGeometry::RX_DEFAULT.total_bytes(), 4 << 20);
        let bad = [
            RingGeometry {
                block_size: 5000,
                block_nr: 1,
                frame_size: 2048,
            },
            RingGeometry {
                block_size: 4096,
                block_nr: 1,
                frame_size: 2000,
            },
            RingGeometry {
                block_size: 4096,
                block_nr: 1,
                frame_size: 1536,
            },
            RingGeometry {
                block_size: 4096,
                block_nr: 0,
                frame_size: 2048,
            },
            RingGeometry {
                block_size: 4096,
                block_nr: 1,
                frame_size: 1024,
            },
        ];
        for g in bad {
            assert!(g.check(page, 1514).is_err(), "{g:?} accepted");
        }
        // a 9000-byte MTU needs bigger slots
        assert!(RingGeometry::TX_DEFAULT.check(page, 9014).is_err());
        let jumbo = RingGeometry {
            block_size: 1 << 16,
            block_nr: 8,
            frame_size: 16384,
        };
        assert!(jumbo.check(page, 9014).is_ok());
    }

    proptest::proptest! {
        /// Arbitrary block bytes (with plausible descriptor fields mixed in) never panic
        /// the parser, and every frame it delivers lies inside the block.
        #[test]
        fn parse_block_is_total(
            mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
            num in 0u32..64,
            first in 0u32..4200,
            len in 0u32..5000,
        ) {
            if bytes.len() >= 24 {
                bytes[BLK_NUM_PKTS..BLK_NUM_PKTS + 4].copy_from_slice(&num.to_ne_bytes());
                bytes[BLK_FIRST_PKT..BLK_FIRST_PKT + 4].copy_from_slice(&first.to_ne_bytes());
                bytes[BLK_LEN..BLK_LEN + 4].copy_from_slice(&len.to_ne_bytes());
            }
            let range = bytes.as_ptr_range();
            let mut inside = true;
            let _ = parse_block(&bytes, &mut |f| {
                let r = f.data.as_ptr_range();
                inside &= r.start >= range.start && r.end <= range.end;
            });
            proptest::prop_assert!(inside);
        }
    }
}
