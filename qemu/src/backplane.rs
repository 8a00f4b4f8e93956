//! The backplane: a private network namespace holding a Linux bridge, one tap per card
//! (QEMU opens them by name) and a veth whose far end is the master's port. Everything is
//! removed when the [`Backplane`] is dropped, also while a failing test unwinds: deleting
//! the namespace deletes its bridge, taps and veths.
//!
//! ```text
//!   netns sb-backplane-PID-N-T
//!   +-----------------------------------------------+
//!   |  mst0 (master port, 02:00:00:00:00:fe)         |
//!   |    | veth                                      |
//!   |  mst0br --+                                    |
//!   |           br0 (bridge, no IP, IPv6 off)        |
//!   |  tap0 ----+---- tap1 ...                       |
//!   +-----------------------------------------------+
//!      |             |
//!   card 0 QEMU   card 1 QEMU (virtio-net on the tap)
//! ```
//!
//! A topology over the test kit's namespace fixture (`shelfboot_testkit::netns::Netns`:
//! creating, entering and deleting the namespace, commands inside it, the nftables loss
//! rule, interface counters). The lab binary (`shelfboot-lab demo`) builds one at run time,
//! which is why this crate depends on the kit as a normal dependency. Also here:
//! [`RawPort`], a minimal AF_PACKET port for tests. What it does not do: IP, rate shaping
//! (the fixture can add `tc tbf`), or rootless operation (needs root for netns and taps).

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, sockopt};
use nix::sys::time::TimeVal;
use shelfboot_testkit::netns::{Netns, NetnsError};

/// Name of the master's port inside the namespace.
pub const MASTER_IF: &str = "mst0";
/// MAC address of the master's port.
pub const MASTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// Name of the bridge.
pub const BRIDGE: &str = "br0";

/// Errors of the backplane.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// A namespace step (`ip`, `nft`, `sysctl`, entering it, reading a counter) failed.
    #[error("backplane {netns}: {step} failed; the lab needs root and /dev/net/tun")]
    Setup {
        /// The namespace (empty if it was never created).
        netns: String,
        /// What was being done.
        step: String,
        /// The fixture's failure (boxed: it carries a command line and its stderr).
        #[source]
        source: Box<NetnsError>,
    },
    /// A raw socket operation failed.
    #[error("raw port {ifname} in {netns}: {op} failed")]
    Socket {
        /// The namespace.
        netns: String,
        /// The interface.
        ifname: String,
        /// The operation.
        op: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The interface has no link-layer address entry.
    #[error("interface {ifname} not found in network namespace {netns}")]
    NoInterface {
        /// The namespace.
        netns: String,
        /// The interface.
        ifname: String,
    },
}

/// A private namespace with a bridge, a master port and `cards` taps.
#[derive(Debug)]
pub struct Backplane {
    ns: Netns,
    cards: usize,
}

impl Backplane {
    /// Creates the namespace `sb-backplane-...`, the bridge, the master veth and taps
    /// `tap0..tap{cards-1}`, all up, IPv6 off (so nothing but our traffic moves).
    pub fn new(cards: usize) -> Result<Self, BackplaneError> {
        let ns = Netns::new("backplane").map_err(|source| BackplaneError::Setup {
            netns: String::new(),
            step: "create the namespace".into(),
            source: Box::new(source),
        })?;
        // From here on, dropping `ns` removes the namespace.
        let bp = Self { ns, cards };
        bp.step("create the bridge", bp.ns.add_bridge(BRIDGE, true))?;
        let mac = mac_string(&MASTER_MAC);
        let mut batch = format!(
            "link add {MASTER_IF} type veth peer name {MASTER_IF}br\n\
             link set {MASTER_IF}br master {BRIDGE} up\n\
             link set {MASTER_IF} address {mac} up\n"
        );
        for i in 0..cards {
            let tap = tap_name(i);
            batch.push_str(&format!(
                "tuntap add dev {tap} mode tap\nlink set {tap} master {BRIDGE} up\n"
            ));
        }
        bp.step(
            "create the master veth and the taps",
            bp.ns.ip_batch(&batch),
        )?;
        Ok(bp)
    }

    /// The namespace name (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        self.ns.name()
    }

    /// Number of taps.
    pub fn cards(&self) -> usize {
        self.cards
    }

    /// The tap of card `i`.
    pub fn tap(&self, i: usize) -> Option<String> {
        (i < self.cards).then(|| tap_name(i))
    }

    /// A command that runs `program` inside the namespace.
    pub fn exec(&self, program: &str) -> Command {
        self.ns.command(program)
    }

    fn step<T>(&self, step: &str, r: Result<T, NetnsError>) -> Result<T, BackplaneError> {
        r.map_err(|source| BackplaneError::Setup {
            netns: self.netns().to_owned(),
            step: step.to_owned(),
            source: Box::new(source),
        })
    }

    #[cfg(test)]
    fn ip(&self, step: &str, args: &[&str]) -> Result<(), BackplaneError> {
        self.step(step, self.ns.ip_batch(&format!("{}\n", args.join(" "))))
    }

    /// Drops `percent` % of the frames of `ethertype` forwarded by the bridge (nftables
    /// bridge family, `numgen random`; every one at 100). 0 removes the rule.
    pub fn set_loss(&self, ethertype: u16, percent: u8) -> Result<(), BackplaneError> {
        self.step(
            "set the loss rule",
            self.ns.set_loss(percent, Some(ethertype)),
        )
    }

    /// Runs `f` on a thread that has entered the namespace; sockets it opens stay in it.
    /// A panic in `f` is resumed on the caller's thread.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, BackplaneError> {
        self.step("enter the namespace", self.ns.run(f))
    }

    /// Opens a raw port on `ifname` inside the namespace.
    pub fn raw_port(&self, ifname: &str) -> Result<RawPort, BackplaneError> {
        let netns = self.netns().to_owned();
        self.in_netns(|| RawPort::open(&netns, ifname))?
    }

    /// Reads an interface counter (`/sys/class/net/IF/statistics/NAME`) in the namespace.
    pub fn counter(&self, ifname: &str, name: &str) -> Result<u64, BackplaneError> {
        self.step("read a counter", self.ns.counter(ifname, name))
    }
}

fn tap_name(i: usize) -> String {
    format!("tap{i}")
}

/// `aa:bb:...` form of a MAC address (the protocol's `MacAddr` text form).
pub fn mac_string(mac: &[u8; 6]) -> String {
    shelfboot_proto::id::MacAddr(*mac).to_string()
}

/// A bound AF_PACKET socket on one interface of a namespace, for tests: sends whole
/// Ethernet frames, receives every frame (filter by EtherType yourself).
#[derive(Debug)]
pub struct RawPort {
    fd: OwnedFd,
    netns: String,
    ifname: String,
}

impl RawPort {
    fn err(&self, op: &'static str) -> impl FnOnce(nix::Error) -> BackplaneError {
        let (netns, ifname) = (self.netns.clone(), self.ifname.clone());
        move |source| BackplaneError::Socket {
            netns,
            ifname,
            op,
            source,
        }
    }

    /// Must run inside the namespace (see [`Backplane::raw_port`]).
    fn open(netns: &str, ifname: &str) -> Result<Self, BackplaneError> {
        let e = |op| {
            let (netns, ifname) = (netns.to_string(), ifname.to_string());
            move |source| BackplaneError::Socket {
                netns,
                ifname,
                op,
                source,
            }
        };
        // getifaddrs gives one AF_PACKET entry per interface: a sockaddr_ll with the
        // ifindex and protocol 0, which bind() treats as "keep the socket's protocol".
        let addr = nix::ifaddrs::getifaddrs()
            .map_err(e("getifaddrs"))?
            .filter(|a| a.interface_name == ifname)
            .find_map(|a| a.address.and_then(|s| s.as_link_addr().copied()))
            .ok_or_else(|| BackplaneError::NoInterface {
                netns: netns.to_string(),
                ifname: ifname.to_string(),
            })?;
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .map_err(e("socket(AF_PACKET)"))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(e("bind"))?;
        Ok(Self {
            fd,
            netns: netns.to_string(),
            ifname: ifname.to_string(),
        })
    }

    /// Sends one whole Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> Result<(), BackplaneError> {
        socket::send(self.fd.as_raw_fd(), frame, MsgFlags::empty())
            .map(|_| ())
            .map_err(self.err("send"))
    }

    /// Waits up to `timeout` for a frame of `ethertype`; other frames are skipped.
    pub fn recv_ethertype(
        &self,
        ethertype: u16,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, BackplaneError> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let tv = TimeVal::new(
                i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                i64::from(left.subsec_micros()).max(1),
            );
            socket::setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv)
                .map_err(self.err("setsockopt(SO_RCVTIMEO)"))?;
            match socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) if n >= 14 && u16::from_be_bytes([buf[12], buf[13]]) == ethertype => {
                    return Ok(Some(buf[..n].to_vec()));
                }
                Ok(_) => {}
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
                Err(e) => return Err(self.err("recv")(e)),
            }
        }
    }
}

/// Builds an Ethernet frame: destination, source, EtherType, payload (no padding).
pub fn ethernet_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use shelfboot_testkit::tier::{self, Tier};

    use super::*;

    #[test]
    fn frame_and_names() {
        let f = ethernet_frame([0xff; 6], MASTER_MAC, 0x88b5, b"hi");
        assert_eq!(f.len(), 16);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
        assert_eq!(mac_string(&MASTER_MAC), "02:00:00:00:00:fe");
        assert_eq!(tap_name(3), "tap3");
    }

    /// Frames cross the bridge between two ports, loss rules apply, and the namespace
    /// is gone after drop.
    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn bridge_carries_frames_and_is_removed() {
        tier::require(&[Tier::Netns]);
        let bp = Backplane::new(1).unwrap();
        let ns = bp.netns().to_string();
        // A second veth on the bridge stands in for a card.
        bp.ip(
            "test veth",
            &["link", "add", "c0", "type", "veth", "peer", "name", "c0br"],
        )
        .unwrap();
        bp.ip(
            "test veth",
            &["link", "set", "c0br", "master", BRIDGE, "up"],
        )
        .unwrap();
        bp.ip("test veth", &["link", "set", "c0", "up"]).unwrap();
        let master = bp.raw_port(MASTER_IF).unwrap();
        let card = bp.raw_port("c0").unwrap();
        let mut got = 0;
        for i in 0..20u8 {
            master
                .send(&ethernet_frame([0xff; 6], MASTER_MAC, 0x88b5, &[i; 46]))
                .unwrap();
            if let Some(f) = card.recv_ethertype(0x88b5, Duration::from_secs(2)).unwrap() {
                assert_eq!(f[14], i);
                got += 1;
            }
        }
        assert_eq!(got, 20);
        bp.set_loss(0x88b5, 100).unwrap();
        master
            .send(&ethernet_frame([0xff; 6], MASTER_MAC, 0x88b5, &[9; 46]))
            .unwrap();
        assert_eq!(
            card.recv_ethertype(0x88b5, Duration::from_millis(300))
                .unwrap(),
            None
        );
        bp.set_loss(0x88b5, 0).unwrap();
        master
            .send(&ethernet_frame([0xff; 6], MASTER_MAC, 0x88b5, &[7; 46]))
            .unwrap();
        assert!(
            card.recv_ethertype(0x88b5, Duration::from_secs(2))
                .unwrap()
                .is_some()
        );
        drop((master, card));
        drop(bp);
        assert!(!std::path::Path::new(&format!("/run/netns/{ns}")).exists());
    }
}
