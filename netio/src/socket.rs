//! [`PacketSocket`]: one AF_PACKET/SOCK_RAW endpoint bound to one interface and one
//! EtherType, moving opaque Ethernet frames (the caller builds and parses them).
//!
//! Three transmit and three receive paths sit behind one API ([`PacketSocket::send_batch`],
//! [`PacketSocket::recv_batch`]): `Plain` (one syscall per frame), `Mmsg` (sendmmsg /
//! recvmmsg batches) and `Ring` (PACKET_MMAP: TPACKET_V2 TX ring with one `send()` per
//! batch, TPACKET_V3 RX ring). `Auto` picks the fastest that the kernel accepts and falls
//! back in order; benchmarks force one. Also here: multicast group membership, qdisc
//! bypass, buffer sizing, kernel drop statistics, and a user-space multicast filter
//! (virtual NICs such as veth deliver every multicast frame whatever the membership).
//!
//! Not here: frame formats, addressing policy, pacing decisions (the transfer engine paces),
//! interface configuration (link up, MTU changes).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, MultiHeaders, SockFlag, SockProtocol, SockType, send,
    sendmmsg, setsockopt, socket, sockopt,
};
use std::io::IoSlice;

use crate::config::{ETH_HEADER_LEN, Path, PathChoice, SocketConfig, SocketStats};
use crate::ring::{RingError, RxRing, TxRing};
use crate::rx::{Filter, Rx};
use crate::sys;
use shelfboot_proto::id::MacAddr;

/// Failures of a packet endpoint. Each names the interface.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("interface {ifname:?} not found (if_nametoindex); is it in this network namespace?")]
    NoInterface {
        ifname: String,
        #[source]
        source: Errno,
    },
    #[error("socket(AF_PACKET, SOCK_RAW) for {ifname} failed (needs CAP_NET_RAW: run as root)")]
    Open {
        ifname: String,
        #[source]
        source: Errno,
    },
    #[error("bind(AF_PACKET, {ifname}, ethertype {ethertype:#06x}) failed")]
    Bind {
        ifname: String,
        ethertype: u16,
        #[source]
        source: Errno,
    },
    #[error("ioctl({what}) on {ifname} failed")]
    Query {
        ifname: String,
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("setsockopt({what}) on {ifname} failed")]
    Option {
        ifname: String,
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("{dir} path {path:?} on {ifname} could not be set up; force another path")]
    Ring {
        ifname: String,
        dir: &'static str,
        path: Path,
        #[source]
        source: RingError,
    },
    #[error("{group} is not a multicast MAC; cannot join it on {ifname}")]
    NotMulticast { ifname: String, group: MacAddr },
    #[error("setsockopt({op}, {group}) on {ifname} failed")]
    Membership {
        ifname: String,
        op: &'static str,
        group: MacAddr,
        #[source]
        source: Errno,
    },
    #[error("frame {index} of the batch is {len} bytes; {ifname} takes {min}..={max}")]
    FrameSize {
        ifname: String,
        index: usize,
        len: usize,
        min: usize,
        max: usize,
    },
    #[error("{call} on {ifname} failed")]
    Io {
        ifname: String,
        call: &'static str,
        #[source]
        source: Errno,
    },
}

type Result<T> = std::result::Result<T, SocketError>;

/// Transmit-side state per path.
#[derive(Debug)]
enum Tx {
    Plain,
    Mmsg { no_addrs: Vec<Option<LinkAddr>> },
    Ring(TxRing),
}

/// An AF_PACKET endpoint on one interface and EtherType. See the module docs.
#[derive(Debug)]
pub struct PacketSocket {
    ifname: String,
    ifindex: u32,
    mac: MacAddr,
    mtu: u32,
    config: SocketConfig,
    // Field order matters for drop: rings unmap before `fd` closes.
    rx: Rx,
    tx: Tx,
    fd: OwnedFd,
    groups: Vec<MacAddr>,
    stats: SocketStats,
}

/// Non-blocking SOCK_RAW with protocol 0: no receive hook until `bind` names an EtherType.
fn open_raw(ifname: &str) -> Result<OwnedFd> {
    socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None::<SockProtocol>,
    )
    .map_err(|source| SocketError::Open {
        ifname: ifname.to_owned(),
        source,
    })
}

impl PacketSocket {
    /// Open an endpoint on `ifname` (in the calling thread's network namespace).
    pub fn open(ifname: &str, config: SocketConfig) -> Result<Self> {
        let name = || ifname.to_owned();
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|source| SocketError::NoInterface {
                ifname: name(),
                source,
            })?;
        let ifindex_c = libc::c_int::try_from(ifindex).map_err(|_| SocketError::NoInterface {
            ifname: name(),
            source: Errno::ERANGE,
        })?;
        let fd = open_raw(ifname)?;
        let mac = sys::interface_mac(fd.as_fd(), ifname).map_err(|source| SocketError::Query {
            ifname: name(),
            what: "SIOCGIFHWADDR",
            source,
        })?;
        let mtu = sys::interface_mtu(fd.as_fd(), ifname).map_err(|source| SocketError::Query {
            ifname: name(),
            what: "SIOCGIFMTU",
            source,
        })?;
        let opt = |what: &'static str| {
            move |source| SocketError::Option {
                ifname: name(),
                what,
                source,
            }
        };
        // Our own transmissions never come back to a socket bound to one EtherType (only
        // ETH_P_ALL taps see them), but say so explicitly where the kernel supports it;
        // recv also drops PACKET_OUTGOING frames.
        if let Err(e) = sys::set_packet_int(fd.as_fd(), libc::PACKET_IGNORE_OUTGOING, 1) {
            log::debug!("PACKET_IGNORE_OUTGOING on {ifname}: {e} (filtering in user space)");
        }
        set_buffers(fd.as_fd(), &config).map_err(|(what, source)| opt(what)(source))?;
        let max_frame = usize::try_from(mtu)
            .unwrap_or(usize::MAX)
            .saturating_add(ETH_HEADER_LEN);
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(4096);
        // Slots sized for this port's largest frame (jumbo MTUs need larger ones).
        let rx_ring = config.rx_ring.fitted(max_frame);
        let tx_ring = config.tx_ring.fitted(max_frame);
        if rx_ring != config.rx_ring || tx_ring != config.tx_ring {
            log::debug!(
                "{ifname}: MTU {mtu}: rings fitted to {rx_ring:?} (RX) and {tx_ring:?} (TX)"
            );
        }

        // RX: the ring must be configured before bind so no frame lands in the queue.
        let rx = match config.rx {
            PathChoice::Force(Path::Ring) => rx_ring
                .check(page, max_frame)
                .and_then(|()| RxRing::new(fd.as_fd(), rx_ring, config.rx_block_timeout_ms))
                .map(Rx::Ring)
                .map_err(|source| SocketError::Ring {
                    ifname: name(),
                    dir: "receive",
                    path: Path::Ring,
                    source,
                })?,
            PathChoice::Auto => {
                match rx_ring
                    .check(page, max_frame)
                    .and_then(|()| RxRing::new(fd.as_fd(), rx_ring, config.rx_block_timeout_ms))
                {
                    Ok(r) => Rx::Ring(r),
                    Err(e) => {
                        log::info!("RX ring unavailable on {ifname} ({e}); using recvmmsg");
                        Rx::mmsg(config.batch, max_frame)
                    }
                }
            }
            PathChoice::Force(Path::Mmsg) => Rx::mmsg(config.batch, max_frame),
            PathChoice::Force(Path::Plain) => Rx::plain(max_frame),
        };
        sys::bind_packet(fd.as_fd(), ifindex_c, config.ethertype).map_err(|source| {
            SocketError::Bind {
                ifname: name(),
                ethertype: config.ethertype,
                source,
            }
        })?;
        if config.qdisc_bypass {
            sys::set_packet_int(fd.as_fd(), libc::PACKET_QDISC_BYPASS, 1)
                .map_err(opt("PACKET_QDISC_BYPASS"))?;
        }

        let ring_tx = || -> std::result::Result<TxRing, RingError> {
            tx_ring.check(page, max_frame)?;
            let sock = |call| move |source| RingError::Socket { call, source };
            let tfd = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                None::<SockProtocol>,
            )
            .map_err(sock("socket(AF_PACKET, SOCK_RAW)"))?;
            // Protocol 0: this socket only sends.
            sys::bind_packet(tfd.as_fd(), ifindex_c, 0).map_err(sock("bind"))?;
            if config.qdisc_bypass {
                sys::set_packet_int(tfd.as_fd(), libc::PACKET_QDISC_BYPASS, 1)
                    .map_err(sock("setsockopt(PACKET_QDISC_BYPASS)"))?;
            }
            set_buffers(tfd.as_fd(), &config).map_err(|(call, source)| sock(call)(source))?;
            setsockopt(&tfd, sockopt::SendTimeout, &timeval(config.send_timeout))
                .map_err(sock("setsockopt(SO_SNDTIMEO)"))?;
            TxRing::new(tfd, tx_ring)
        };
        let tx = match config.tx {
            PathChoice::Force(Path::Ring) => {
                Tx::Ring(ring_tx().map_err(|source| SocketError::Ring {
                    ifname: name(),
                    dir: "transmit",
                    path: Path::Ring,
                    source,
                })?)
            }
            PathChoice::Auto => match ring_tx() {
                Ok(r) => Tx::Ring(r),
                Err(e) => {
                    log::info!("TX ring unavailable on {ifname} ({e}); using sendmmsg");
                    mmsg_tx(config.batch)
                }
            },
            PathChoice::Force(Path::Mmsg) => mmsg_tx(config.batch),
            PathChoice::Force(Path::Plain) => Tx::Plain,
        };
        log::debug!(
            "{ifname}: index {ifindex}, mac {}, mtu {mtu}, ethertype {:#06x}",
            MacAddr(mac),
            config.ethertype
        );
        Ok(Self {
            ifname: ifname.to_owned(),
            ifindex,
            mac: MacAddr(mac),
            mtu,
            config,
            rx,
            tx,
            fd,
            groups: Vec::new(),
            stats: SocketStats::default(),
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub fn ethertype(&self) -> u16 {
        self.config.ethertype
    }

    /// Largest frame `send_batch` accepts: MTU plus the Ethernet header.
    pub fn max_frame_len(&self) -> usize {
        usize::try_from(self.mtu)
            .unwrap_or(usize::MAX)
            .saturating_add(ETH_HEADER_LEN)
    }

    pub fn tx_path(&self) -> Path {
        match self.tx {
            Tx::Plain => Path::Plain,
            Tx::Mmsg { .. } => Path::Mmsg,
            Tx::Ring(_) => Path::Ring,
        }
    }

    pub fn rx_path(&self) -> Path {
        self.rx.path()
    }

    /// Groups joined with [`join`](Self::join).
    pub fn groups(&self) -> &[MacAddr] {
        &self.groups
    }

    fn ifindex_c(&self) -> libc::c_int {
        libc::c_int::try_from(self.ifindex).unwrap_or(0)
    }

    /// Join a multicast group MAC (PACKET_ADD_MEMBERSHIP, PACKET_MR_MULTICAST).
    pub fn join(&mut self, group: MacAddr) -> Result<()> {
        if !group.is_multicast() {
            return Err(SocketError::NotMulticast {
                ifname: self.ifname.clone(),
                group,
            });
        }
        if self.groups.contains(&group) {
            return Ok(());
        }
        sys::packet_membership(self.fd.as_fd(), true, self.ifindex_c(), group.0).map_err(
            |source| SocketError::Membership {
                ifname: self.ifname.clone(),
                op: "PACKET_ADD_MEMBERSHIP",
                group,
                source,
            },
        )?;
        self.groups.push(group);
        Ok(())
    }

    /// Leave a group joined before (PACKET_DROP_MEMBERSHIP); leaving a group never
    /// joined is a no-op.
    pub fn leave(&mut self, group: MacAddr) -> Result<()> {
        let Some(pos) = self.groups.iter().position(|g| *g == group) else {
            return Ok(());
        };
        sys::packet_membership(self.fd.as_fd(), false, self.ifindex_c(), group.0).map_err(
            |source| SocketError::Membership {
                ifname: self.ifname.clone(),
                op: "PACKET_DROP_MEMBERSHIP",
                group,
                source,
            },
        )?;
        self.groups.swap_remove(pos);
        Ok(())
    }

    /// Read the kernel's PACKET_STATISTICS (which resets them) and return the running
    /// totals together with ours.
    pub fn stats(&mut self) -> Result<SocketStats> {
        let raw = sys::packet_statistics(self.fd.as_fd()).map_err(|source| SocketError::Io {
            ifname: self.ifname.clone(),
            call: "getsockopt(PACKET_STATISTICS)",
            source,
        })?;
        self.stats.kernel_packets += u64::from(raw.packets);
        self.stats.kernel_drops += u64::from(raw.drops);
        if let Tx::Ring(r) = &self.tx {
            self.stats.tx_wrong_format = r.wrong_format();
        }
        if let Some(r) = self.rx.ring() {
            self.stats.rx_malformed_blocks = r.malformed_blocks();
        }
        Ok(self.stats)
    }

    fn io_err(&self, call: &'static str) -> impl FnOnce(Errno) -> SocketError + '_ {
        move |source| SocketError::Io {
            ifname: self.ifname.clone(),
            call,
            source,
        }
    }

    fn check_frames(&self, frames: &[&[u8]]) -> Result<()> {
        let max = self.max_frame_len();
        for (index, f) in frames.iter().enumerate() {
            if f.len() < ETH_HEADER_LEN || f.len() > max {
                return Err(SocketError::FrameSize {
                    ifname: self.ifname.clone(),
                    index,
                    len: f.len(),
                    min: ETH_HEADER_LEN,
                    max,
                });
            }
        }
        Ok(())
    }

    /// Wait until `fd` is writable or `deadline` passes. Returns false on timeout.
    fn wait_writable(fd: BorrowedFd<'_>, deadline: Instant) -> std::result::Result<bool, Errno> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = u16::try_from(left.as_millis().clamp(1, 1000)).unwrap_or(1000);
        let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Send every frame in `frames` (complete Ethernet frames, header included) on the
    /// configured TX path. Waits while the kernel pushes back (a slow or shaped link);
    /// gives up when the kernel has taken nothing for about `config.send_timeout`, and
    /// returns how many frames it took, which is less than `frames.len()` only then. On the ring path the kernel
    /// has picked up every frame when this returns (it blocks briefly if the socket
    /// buffer was full, so nothing is left waiting in the ring for a next call), though
    /// they may still be on their way out; [`flush`](Self::flush) waits for that too.
    pub fn send_batch(&mut self, frames: &[&[u8]]) -> Result<usize> {
        self.check_frames(frames)?;
        let mut deadline = Instant::now() + self.config.send_timeout;
        let mut done = 0usize;
        while done < frames.len() {
            let mut ring_full = false;
            let step = match &mut self.tx {
                Tx::Plain => {
                    match send(self.fd.as_raw_fd(), frames[done], MsgFlags::MSG_DONTWAIT) {
                        Ok(_) => Ok(1),
                        Err(e) => Err(e),
                    }
                }
                Tx::Mmsg { no_addrs } => {
                    let end = (done + no_addrs.len()).min(frames.len());
                    let mut headers = MultiHeaders::<LinkAddr>::preallocate(end - done, None);
                    let slices: Vec<[IoSlice<'_>; 1]> = frames[done..end]
                        .iter()
                        .map(|f| [IoSlice::new(f)])
                        .collect();
                    sendmmsg(
                        self.fd.as_raw_fd(),
                        &mut headers,
                        &slices,
                        &no_addrs[..],
                        [],
                        MsgFlags::MSG_DONTWAIT,
                    )
                    .map(|r| r.count())
                }
                Tx::Ring(ring) => {
                    let mut n = 0usize;
                    let mut failed = None;
                    for f in &frames[done..] {
                        match ring.try_push(f) {
                            Ok(true) => n += 1,
                            Ok(false) => break,
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(source) = failed {
                        return Err(SocketError::Ring {
                            ifname: self.ifname.clone(),
                            dir: "transmit",
                            path: Path::Ring,
                            source,
                        });
                    }
                    // One non-blocking send() per batch; a blocking one if the ring is
                    // full, or if the kernel stopped early (socket buffer full), so no
                    // frame is left behind in the ring.
                    ring_full = done + n < frames.len();
                    let mut kicked = ring.kick(ring_full);
                    if kicked.is_ok() && !ring_full && !ring.all_taken() {
                        ring_full = true;
                        kicked = ring.kick(true);
                    }
                    if let Err(source) = kicked {
                        return Err(SocketError::Ring {
                            ifname: self.ifname.clone(),
                            dir: "transmit",
                            path: Path::Ring,
                            source,
                        });
                    }
                    if n == 0 { Err(Errno::EAGAIN) } else { Ok(n) }
                }
            };
            if ring_full {
                // the blocking kick above waited for the ring to drain
                self.stats.send_waits += 1;
            }
            match step {
                Ok(n) if n > 0 => {
                    done += n;
                    self.stats.sent += n as u64;
                    deadline = Instant::now() + self.config.send_timeout;
                }
                // ENOBUFS: a qdisc (e.g. a full tbf) dropped the frame and the socket
                // buffer is not what is full, so POLLOUT would return at once: back off.
                Err(Errno::ENOBUFS) => {
                    self.stats.send_waits += 1;
                    if Instant::now() >= deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                Ok(_) | Err(Errno::EAGAIN | Errno::EINTR) => {
                    self.stats.send_waits += 1;
                    let fd = match &self.tx {
                        Tx::Ring(r) => r.fd(),
                        _ => self.fd.as_fd(),
                    };
                    if !Self::wait_writable(fd, deadline).map_err(self.io_err("poll(POLLOUT)"))? {
                        break;
                    }
                }
                Err(e) => {
                    let call = match self.tx {
                        Tx::Plain => "send",
                        Tx::Mmsg { .. } => "sendmmsg",
                        Tx::Ring(_) => "send(TX ring)",
                    };
                    return Err(self.io_err(call)(e));
                }
            }
        }
        Ok(done)
    }

    /// Block until every frame queued in the TX ring has been transmitted (bounded by
    /// `config.send_timeout`); a no-op on the other paths, whose sends complete in the
    /// call.
    pub fn flush(&mut self) -> Result<()> {
        if let Tx::Ring(ring) = &mut self.tx {
            ring.kick(true).map_err(|source| SocketError::Ring {
                ifname: self.ifname.clone(),
                dir: "transmit",
                path: Path::Ring,
                source,
            })?;
        }
        Ok(())
    }

    /// Frames queued in the TX ring but not yet handed over by a successful `send()`.
    pub fn tx_queued(&self) -> usize {
        match &self.tx {
            Tx::Ring(r) => r.queued(),
            _ => 0,
        }
    }

    /// Wait up to `timeout` for frames, then deliver every frame available now (up to a
    /// few batches) to `out(frame, source MAC)`. Returns the number delivered; 0 means the
    /// timeout passed (or only filtered frames came). Our own outgoing frames and
    /// multicast to groups not joined (if `filter_multicast`) are never delivered.
    pub fn recv_batch(
        &mut self,
        out: &mut impl FnMut(&[u8], MacAddr),
        timeout: Duration,
    ) -> Result<usize> {
        let ready = match &self.rx {
            r if r.ring_ready() => true,
            _ => {
                let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(n) => n > 0,
                    Err(Errno::EINTR) => false,
                    Err(e) => return Err(self.io_err("poll(POLLIN)")(e)),
                }
            }
        };
        if !ready {
            return Ok(0);
        }
        let filter = Filter {
            groups: &self.groups,
            multicast: self.config.filter_multicast,
        };
        let mut delivered = 0usize;
        let mut filtered = 0u64;
        let mut deliver = |frame: &[u8], pkttype: u8| {
            if filter.accepts(frame, pkttype) {
                out(frame, MacAddr::src_of(frame).unwrap_or_default());
                delivered += 1;
            } else {
                filtered += 1;
            }
        };
        self.rx
            .receive(self.fd.as_fd(), self.config.batch, &mut deliver)
            .map_err(|(call, source)| SocketError::Io {
                ifname: self.ifname.clone(),
                call,
                source,
            })?;
        self.stats.delivered += delivered as u64;
        self.stats.filtered += filtered;
        Ok(delivered)
    }
}

impl AsFd for PacketSocket {
    /// The receiving socket, for callers that poll it next to other descriptors.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn mmsg_tx(batch: usize) -> Tx {
    let n = batch.clamp(1, 1024);
    Tx::Mmsg {
        no_addrs: vec![None; n],
    }
}

/// A socket timeout as a `timeval`, capped at one day (built from microseconds, so no
/// `time_t`, whose width musl is changing, appears here).
fn timeval(d: Duration) -> nix::sys::time::TimeVal {
    use nix::sys::time::TimeValLike;
    let capped = d.min(Duration::from_secs(86_400));
    nix::sys::time::TimeVal::microseconds(i64::try_from(capped.as_micros()).unwrap_or(0))
}

/// SO_RCVBUF/SO_SNDBUF, trying the FORCE variants first (root may exceed rmem_max).
fn set_buffers(
    fd: BorrowedFd<'_>,
    config: &SocketConfig,
) -> std::result::Result<(), (&'static str, Errno)> {
    if let Some(size) = config.rcvbuf
        && setsockopt(&fd, sockopt::RcvBufForce, &size).is_err()
    {
        setsockopt(&fd, sockopt::RcvBuf, &size).map_err(|e| ("SO_RCVBUF", e))?;
    }
    if let Some(size) = config.sndbuf
        && setsockopt(&fd, sockopt::SndBufForce, &size).is_err()
    {
        setsockopt(&fd, sockopt::SndBuf, &size).map_err(|e| ("SO_SNDBUF", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<PacketSocket>();
    }
}
