//! The only module of this crate that may say `unsafe` (`#[allow(unsafe_code)]` on its
//! declaration in lib.rs; the workspace denies it everywhere else): the few packet-socket
//! calls that nix 0.29 has no safe wrapper for, and the owning type for a PACKET_MMAP
//! ring mapping.
//!
//! What is here: `bind(2)` with a `sockaddr_ll`, the `SIOCGIFHWADDR`/`SIOCGIFMTU` ioctls,
//! `setsockopt`/`getsockopt` for the `SOL_PACKET` options (membership, versions, rings,
//! statistics, qdisc bypass), and [`RingMap`], which maps a ring, hands out slots only
//! while user space owns them, and unmaps on drop.
//!
//! What is not here: anything nix already does safely (socket creation, `SO_RCVBUF`,
//! `poll`, `send`, `recvfrom`, `sendmmsg`/`recvmmsg`, `setns`). Ring *layout* logic (where a
//! packet sits inside a block) lives in safe code in `ring.rs`; this module only knows
//! "uniform slots with a status word at a fixed offset".

use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;

/// `AF_PACKET` as the `sa_family_t` it is stored in (libc declares it as c_int).
const AF_PACKET_FAMILY: libc::c_ushort = 17;
const _: () = assert!(AF_PACKET_FAMILY as libc::c_int == libc::AF_PACKET);
const _: () = assert!(libc::PACKET_MR_MULTICAST == 0);

/// `enum tpacket_versions` in `linux/if_packet.h`.
pub(crate) const TPACKET_V2: libc::c_int = 1;
pub(crate) const TPACKET_V3: libc::c_int = 2;

/// Plain-old-data kernel structs that may be passed to `setsockopt` as raw bytes.
/// Private and implemented only for `#[repr(C)]` UAPI structs without padding-sensitive
/// invariants, so a caller cannot pass a type with pointers or niches.
trait Pod: Copy {}
impl Pod for libc::c_int {}
impl Pod for libc::packet_mreq {}
impl Pod for libc::tpacket_req {}
impl Pod for libc::tpacket_req3 {}

fn setsockopt_pod<T: Pod>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> Result<(), Errno> {
    let len = libc::socklen_t::try_from(size_of::<T>()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `value` is a live reference to a `Pod` UAPI struct of exactly `len` bytes,
    // which the kernel only reads during the call; `fd` is a valid borrowed descriptor.
    // nix 0.29 has no sockopt types for the SOL_PACKET options (its `sockopt_impl!` macro
    // is not exported), so the raw call is the only way to set them.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            len,
        )
    };
    Errno::result(rc).map(drop)
}

/// `setsockopt(SOL_PACKET, name, int)`.
pub(crate) fn set_packet_int(
    fd: BorrowedFd<'_>,
    name: libc::c_int,
    value: libc::c_int,
) -> Result<(), Errno> {
    setsockopt_pod(fd, libc::SOL_PACKET, name, &value)
}

/// `setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP | PACKET_DROP_MEMBERSHIP, packet_mreq)`
/// for a multicast MAC on one interface.
pub(crate) fn packet_membership(
    fd: BorrowedFd<'_>,
    add: bool,
    ifindex: libc::c_int,
    mac: [u8; 6],
) -> Result<(), Errno> {
    let mut address = [0u8; 8];
    address[..6].copy_from_slice(&mac);
    let mreq = libc::packet_mreq {
        mr_ifindex: ifindex,
        mr_type: 0, // PACKET_MR_MULTICAST (libc declares it as c_int)
        mr_alen: 6,
        mr_address: address,
    };
    let name = if add {
        libc::PACKET_ADD_MEMBERSHIP
    } else {
        libc::PACKET_DROP_MEMBERSHIP
    };
    setsockopt_pod(fd, libc::SOL_PACKET, name, &mreq)
}

/// `setsockopt(SOL_PACKET, PACKET_TX_RING, tpacket_req)` (TPACKET_V2 geometry).
pub(crate) fn set_tx_ring(fd: BorrowedFd<'_>, req: &libc::tpacket_req) -> Result<(), Errno> {
    setsockopt_pod(fd, libc::SOL_PACKET, libc::PACKET_TX_RING, req)
}

/// `setsockopt(SOL_PACKET, PACKET_RX_RING, tpacket_req3)` (TPACKET_V3 geometry).
pub(crate) fn set_rx_ring(fd: BorrowedFd<'_>, req: &libc::tpacket_req3) -> Result<(), Errno> {
    setsockopt_pod(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, req)
}

/// Counters read (and reset) by `getsockopt(SOL_PACKET, PACKET_STATISTICS)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RawStats {
    pub packets: u32,
    pub drops: u32,
    pub freeze_q_cnt: u32,
}

/// `getsockopt(SOL_PACKET, PACKET_STATISTICS)`. Reading resets the kernel counters. The
/// buffer is a `tpacket_stats_v3`; on a non-V3 socket the kernel fills only the first two
/// fields (a `tpacket_stats`) and the third stays zero.
pub(crate) fn packet_statistics(fd: BorrowedFd<'_>) -> Result<RawStats, Errno> {
    let mut st = libc::tpacket_stats_v3 {
        tp_packets: 0,
        tp_drops: 0,
        tp_freeze_q_cnt: 0,
    };
    let mut len = libc::socklen_t::try_from(size_of::<libc::tpacket_stats_v3>())
        .map_err(|_| Errno::EINVAL)?;
    // SAFETY: `st` is a writable `tpacket_stats_v3` and `len` holds its exact size; the
    // kernel writes at most `len` bytes and updates `len`. nix has no PACKET_STATISTICS
    // getter.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            std::ptr::from_mut(&mut st).cast(),
            &mut len,
        )
    };
    Errno::result(rc)?;
    Ok(RawStats {
        packets: st.tp_packets,
        drops: st.tp_drops,
        freeze_q_cnt: st.tp_freeze_q_cnt,
    })
}

/// `bind(2)` a packet socket to one interface and one EtherType (host order here; 0 binds
/// the interface for sending only, with no receive hook).
pub(crate) fn bind_packet(
    fd: BorrowedFd<'_>,
    ifindex: libc::c_int,
    ethertype: u16,
) -> Result<(), Errno> {
    let addr = libc::sockaddr_ll {
        sll_family: AF_PACKET_FAMILY,
        sll_protocol: ethertype.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    let len =
        libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `addr` is a fully initialised `sockaddr_ll` that lives across the call and
    // `len` is its size. nix 0.29's `LinkAddr` has no public constructor, so nix's safe
    // `bind` cannot be given a link-layer address.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    Errno::result(rc).map(drop)
}

fn ifreq_for(name: &str) -> Result<libc::ifreq, Errno> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(Errno::EINVAL);
    }
    // SAFETY: `ifreq` is a C struct of integers, byte arrays and a union of those (plus a
    // pointer member we never read); all-zero bytes are a valid value for every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    Ok(req)
}

// glibc declares ioctl's request as c_ulong, musl as c_int (the static init links musl).
#[allow(clippy::unnecessary_cast, clippy::cast_possible_truncation)]
const IOCTL_GIFHWADDR: libc::Ioctl = libc::SIOCGIFHWADDR as libc::Ioctl;
#[allow(clippy::unnecessary_cast, clippy::cast_possible_truncation)]
const IOCTL_GIFMTU: libc::Ioctl = libc::SIOCGIFMTU as libc::Ioctl;

/// MAC address of interface `name`, via `ioctl(SIOCGIFHWADDR)` on any socket of the
/// interface's network namespace.
pub(crate) fn interface_mac(fd: BorrowedFd<'_>, name: &str) -> Result<[u8; 6], Errno> {
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFHWADDR reads `ifr_name` and writes a `sockaddr` into the union of the
    // `ifreq` we own, which lives across the call. nix has no safe wrapper for it (its
    // `ioctl_*!` macros generate unsafe functions too); reading /sys/class/net would show
    // the namespace sysfs was mounted in, not the socket's.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), IOCTL_GIFHWADDR, &mut req) };
    Errno::result(rc)?;
    // SAFETY: a successful SIOCGIFHWADDR initialised `ifru_hwaddr`.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr }.sa_data;
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = src.to_ne_bytes()[0];
    }
    Ok(mac)
}

/// MTU of interface `name`, via `ioctl(SIOCGIFMTU)`.
pub(crate) fn interface_mtu(fd: BorrowedFd<'_>, name: &str) -> Result<u32, Errno> {
    let mut req = ifreq_for(name)?;
    // SAFETY: as in `interface_mac`: SIOCGIFMTU reads the name and writes `ifru_mtu` in an
    // `ifreq` we own for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), IOCTL_GIFMTU, &mut req) };
    Errno::result(rc)?;
    // SAFETY: a successful SIOCGIFMTU initialised `ifru_mtu`.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| Errno::EINVAL)
}

/// Geometry of a mapped ring: `slots` equal slots of `slot_size` bytes, each starting with
/// (or containing, at `status_offset`) a 32-bit status word shared with the kernel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotLayout {
    pub slot_size: usize,
    pub slots: usize,
    pub status_offset: usize,
    /// Status values with which user space owns the slot (kernel leaves it alone).
    pub user_owns: fn(u32) -> bool,
}

/// An owning PACKET_MMAP mapping. Slots are handed out as slices only while their status
/// word says user space owns them, and handed back with a release store; the mapping is
/// removed on drop (the socket must outlive it: `RingMap` is dropped before the fd by
/// field order in its owners).
#[derive(Debug)]
pub(crate) struct RingMap {
    ptr: NonNull<u8>,
    len: usize,
    layout: SlotLayout,
}

// SAFETY: the mapping is plain shared memory owned by this value; moving the owner to
// another thread moves the only handle to it (no thread-local state is involved).
unsafe impl Send for RingMap {}

impl RingMap {
    /// `mmap` the ring configured on `fd` (PACKET_RX_RING / PACKET_TX_RING must already
    /// be set with the same geometry).
    pub(crate) fn map(fd: BorrowedFd<'_>, layout: SlotLayout) -> Result<Self, Errno> {
        let len = layout
            .slot_size
            .checked_mul(layout.slots)
            .ok_or(Errno::EINVAL)?;
        let status_ok = layout.status_offset.is_multiple_of(4)
            && layout
                .status_offset
                .checked_add(4)
                .is_some_and(|end| end <= layout.slot_size)
            && layout.slot_size.is_multiple_of(16);
        if len == 0 || !status_ok {
            return Err(Errno::EINVAL);
        }
        // SAFETY: a fresh shared mapping at a kernel-chosen address; no existing memory is
        // affected. The kernel validates `len` against the ring set on `fd`. nix's `mman`
        // feature is not enabled in this workspace and its `mmap` is unsafe as well.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or(Errno::ENOMEM)?;
        Ok(Self { ptr, len, layout })
    }

    pub(crate) fn layout(&self) -> SlotLayout {
        self.layout
    }

    fn status_word(&self, slot: usize) -> Option<&AtomicU32> {
        if slot >= self.layout.slots {
            return None;
        }
        let off = slot * self.layout.slot_size + self.layout.status_offset;
        // SAFETY: `off + 4 <= len` (checked in `map`: status fits in a slot and
        // slot < slots), the mapping is page aligned and `off` is a multiple of 4, so the
        // pointer is in bounds and aligned for `AtomicU32`. The kernel accesses this word
        // concurrently, which is exactly what an atomic is for; the reference lives no
        // longer than `&self`, i.e. the mapping.
        Some(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast::<u32>()) })
    }

    /// Current status word of `slot` (acquire), or `None` if `slot` is out of range.
    pub(crate) fn status(&self, slot: usize) -> Option<u32> {
        self.status_word(slot).map(|w| w.load(Ordering::Acquire))
    }

    /// The bytes of `slot` if user space owns it now, else `None`.
    pub(crate) fn slot(&self, slot: usize) -> Option<&[u8]> {
        let status = self.status(slot)?;
        if !(self.layout.user_owns)(status) {
            return None;
        }
        // SAFETY: `slot < slots` (status() checked), so the range is inside the mapping.
        // The acquire load above saw a user-owned status: per the PACKET_MMAP protocol the
        // kernel does not write this slot until we store a kernel-owned status, which
        // needs `&mut self` (`give_to_kernel`) and so cannot happen while this borrow lives.
        Some(unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().add(slot * self.layout.slot_size),
                self.layout.slot_size,
            )
        })
    }

    /// Mutable bytes of `slot` if user space owns it now, else `None`.
    pub(crate) fn slot_mut(&mut self, slot: usize) -> Option<&mut [u8]> {
        let status = self.status(slot)?;
        if !(self.layout.user_owns)(status) {
            return None;
        }
        // SAFETY: as in `slot`; `&mut self` makes this the only live slice into the map.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.as_ptr().add(slot * self.layout.slot_size),
                self.layout.slot_size,
            )
        })
    }

    /// Hand `slot` to the kernel by storing `status` with release ordering (all our
    /// writes to the slot become visible first). Returns false if `slot` is out of range.
    pub(crate) fn give_to_kernel(&mut self, slot: usize, status: u32) -> bool {
        match self.status_word(slot) {
            Some(w) => {
                w.store(status, Ordering::Release);
                true
            }
            None => false,
        }
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what `mmap` returned, and no slice into the map
        // can outlive `self`, so nothing refers to the memory after this.
        let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if rc != 0 {
            log::warn!(
                "munmap of a {} byte packet ring failed: {}",
                self.len,
                Errno::last()
            );
        }
    }
}
