//! Endpoint settings and counters: which I/O path to use in each direction, buffer and
//! ring sizes, timeouts, and the statistics an endpoint reports. Plain data, no I/O (the
//! endpoint itself is in `socket.rs`).

use std::time::Duration;

use crate::ring::RingGeometry;

/// shelfboot's default EtherType (IEEE 802 local experimental 1).
pub const DEFAULT_ETHERTYPE: u16 = 0x88B5;
/// Ethernet header: destination, source, EtherType.
pub const ETH_HEADER_LEN: usize = 14;

/// One way of moving frames between user space and the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// `send`/`recvfrom`, one syscall per frame.
    Plain,
    /// `sendmmsg`/`recvmmsg`, one syscall per batch.
    Mmsg,
    /// PACKET_MMAP rings: TPACKET_V2 for TX, TPACKET_V3 for RX.
    Ring,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Plain, Path::Mmsg, Path::Ring];

    pub fn name(self) -> &'static str {
        match self {
            Path::Plain => "plain",
            Path::Mmsg => "mmsg",
            Path::Ring => "ring",
        }
    }
}

/// Which path to use in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathChoice {
    /// Fastest available: Ring, else Mmsg, else Plain (order measured, see docs/netio.md).
    Auto,
    /// Exactly this path, or an error (for benchmarks and tests).
    Force(Path),
}

/// Endpoint settings. `Default` is what the master and the cards use.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    pub ethertype: u16,
    pub tx: PathChoice,
    pub rx: PathChoice,
    /// PACKET_QDISC_BYPASS on the sending sockets: faster, but skips `tc` (a tbf shaper
    /// on the interface is then ignored), so it is off by default.
    pub qdisc_bypass: bool,
    /// SO_RCVBUF(FORCE) in bytes; `None` keeps the system default.
    pub rcvbuf: Option<usize>,
    /// SO_SNDBUF(FORCE) in bytes; `None` keeps the system default.
    pub sndbuf: Option<usize>,
    /// Frames per sendmmsg/recvmmsg call.
    pub batch: usize,
    pub tx_ring: RingGeometry,
    pub rx_ring: RingGeometry,
    /// How long the kernel may hold a partly filled V3 RX block (latency bound).
    pub rx_block_timeout_ms: u32,
    /// How long `send_batch` waits for the kernel to take *any* frame before it gives up
    /// and returns a short count (also the TX ring socket's SO_SNDTIMEO).
    pub send_timeout: Duration,
    /// Drop received multicast frames (not broadcast) to groups we have not joined.
    pub filter_multicast: bool,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            ethertype: DEFAULT_ETHERTYPE,
            tx: PathChoice::Auto,
            rx: PathChoice::Auto,
            qdisc_bypass: false,
            rcvbuf: Some(8 << 20),
            sndbuf: Some(1 << 20),
            batch: 64,
            tx_ring: RingGeometry::TX_DEFAULT,
            rx_ring: RingGeometry::RX_DEFAULT,
            rx_block_timeout_ms: 2,
            send_timeout: Duration::from_secs(2),
            filter_multicast: true,
        }
    }
}

/// Counters: the kernel's PACKET_STATISTICS (accumulated; the kernel resets on read)
/// plus ours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Frames the kernel queued for this socket (including dropped ones).
    pub kernel_packets: u64,
    /// Frames the kernel dropped because the socket buffer or RX ring was full.
    pub kernel_drops: u64,
    /// Frames handed to the caller.
    pub delivered: u64,
    /// Frames discarded here: our own outgoing copies, non-joined multicast, runts.
    pub filtered: u64,
    /// Frames handed to the kernel for transmission.
    pub sent: u64,
    /// Times a send had to wait for the kernel (buffer or ring full).
    pub send_waits: u64,
    /// TX ring slots the kernel rejected (TP_STATUS_WRONG_FORMAT).
    pub tx_wrong_format: u64,
    /// RX ring blocks skipped because their contents were inconsistent.
    pub rx_malformed_blocks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_sane() {
        let c = SocketConfig::default();
        assert_eq!(c.ethertype, 0x88B5);
        assert!(!c.qdisc_bypass, "bypass would silently defeat tc shaping");
        assert!(c.tx_ring.check(4096, 1514).is_ok());
        assert!(c.rx_ring.check(4096, 1514).is_ok());
        assert_eq!(Path::ALL.map(Path::name), ["plain", "mmsg", "ring"]);
    }

    #[test]
    fn rings_fitted_to_a_jumbo_mtu_hold_its_frames_in_the_same_bytes() {
        let c = SocketConfig::default();
        for ring in [c.tx_ring, c.rx_ring] {
            assert_eq!(ring.fitted(1514), ring, "a 1500 MTU changes nothing");
            assert!(ring.check(4096, 9014).is_err());
            let jumbo = ring.fitted(9014);
            assert!(jumbo.check(4096, 9014).is_ok(), "{jumbo:?}");
            assert!(jumbo.check(65536, 9014).is_ok(), "{jumbo:?}");
            assert_eq!(jumbo.total_bytes(), ring.total_bytes());
            assert_eq!(jumbo.frame_size, 16384);
        }
    }
}
