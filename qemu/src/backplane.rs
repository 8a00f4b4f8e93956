//! The backplane: a private network namespace holding a Linux bridge, one tap per card
//! (QEMU opens them by name) and a veth whose far end is the master's port. Everything is
//! removed when the [`Backplane`] is dropped, also while a failing test unwinds: deleting
//! the namespace deletes its bridge, taps and veths.
//!
//! ```text
//!   netns sblPID_N
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
//! Also: an optional nftables rule dropping a percentage of frames of one EtherType on the
//! bridge, running a closure inside the namespace, and [`RawPort`], a minimal AF_PACKET
//! port for tests. What it does not do: IP, rate shaping (`tc tbf` can be added), or
//! rootless operation (needs root for netns and taps).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, sockopt};
use nix::sys::time::TimeVal;

use crate::cmd::{self, CmdError};

/// Name of the master's port inside the namespace.
pub const MASTER_IF: &str = "mst0";
/// MAC address of the master's port.
pub const MASTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// Name of the bridge.
pub const BRIDGE: &str = "br0";
const LOSS_TABLE: &str = "shelfboot_loss";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Errors of the backplane.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// An `ip`, `nft` or `sysctl` step failed.
    #[error("backplane {netns}: {step} failed; the lab needs root and /dev/net/tun")]
    Setup {
        /// The namespace.
        netns: String,
        /// What was being done.
        step: String,
        /// The command failure.
        #[source]
        source: CmdError,
    },
    /// Entering the namespace failed.
    #[error("cannot enter network namespace {netns}")]
    Enter {
        /// The namespace.
        netns: String,
        /// The cause.
        #[source]
        source: std::io::Error,
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
    /// An interface counter is not a number.
    #[error("counter {name} of {ifname} in {netns} reads {value:?}, not a number")]
    Counter {
        /// The namespace.
        netns: String,
        /// The interface.
        ifname: String,
        /// The counter.
        name: String,
        /// What was read.
        value: String,
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
    netns: String,
    cards: usize,
}

impl Backplane {
    /// Creates the namespace `sbl<pid>_<n>`, the bridge, the master veth and taps
    /// `tap0..tap{cards-1}`, all up, IPv6 off (so nothing but our traffic moves).
    pub fn new(cards: usize) -> Result<Self, BackplaneError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let netns = format!("sbl{}_{n}", std::process::id());
        cmd::run(Command::new("ip").args(["netns", "add", &netns])).map_err(|source| {
            BackplaneError::Setup {
                netns: netns.clone(),
                step: "create the namespace".into(),
                source,
            }
        })?;
        // From here on, Drop removes the namespace.
        let mut bp = Self { netns, cards: 0 };
        bp.ip("bring lo up", &["link", "set", "lo", "up"])?;
        bp.step(
            "turn IPv6 off",
            bp.exec("sysctl").args([
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]),
        )?;
        bp.ip(
            "create the bridge",
            &["link", "add", BRIDGE, "type", "bridge"],
        )?;
        bp.ip("bring the bridge up", &["link", "set", BRIDGE, "up"])?;
        let peer = format!("{MASTER_IF}br");
        bp.ip(
            "create the master veth",
            &[
                "link", "add", MASTER_IF, "type", "veth", "peer", "name", &peer,
            ],
        )?;
        bp.ip(
            "attach the master veth",
            &["link", "set", &peer, "master", BRIDGE, "up"],
        )?;
        let mac = mac_string(&MASTER_MAC);
        bp.ip(
            "bring the master port up",
            &["link", "set", MASTER_IF, "address", &mac, "up"],
        )?;
        for i in 0..cards {
            let tap = tap_name(i);
            bp.ip(
                "create a tap",
                &["tuntap", "add", "dev", &tap, "mode", "tap"],
            )?;
            bp.ip(
                "attach a tap",
                &["link", "set", &tap, "master", BRIDGE, "up"],
            )?;
            bp.cards = i + 1;
        }
        Ok(bp)
    }

    /// The namespace name (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        &self.netns
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
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }

    fn step(&self, step: &str, cmd: &mut Command) -> Result<String, BackplaneError> {
        cmd::run(cmd).map_err(|source| BackplaneError::Setup {
            netns: self.netns.clone(),
            step: step.to_string(),
            source,
        })
    }

    fn ip(&self, step: &str, args: &[&str]) -> Result<String, BackplaneError> {
        self.step(
            step,
            Command::new("ip").args(["-n", &self.netns]).args(args),
        )
    }

    /// Drops `percent` % of the frames of `ethertype` forwarded by the bridge (nftables
    /// bridge family, `numgen random`). 0 removes the rule.
    pub fn set_loss(&self, ethertype: u16, percent: u8) -> Result<(), BackplaneError> {
        let _ = self.step(
            "remove the loss table",
            self.exec("nft")
                .args(["delete", "table", "bridge", LOSS_TABLE]),
        );
        if percent == 0 {
            return Ok(());
        }
        let et = format!("0x{ethertype:04x}");
        let pct = percent.to_string();
        self.step(
            "add the loss table",
            self.exec("nft")
                .args(["add", "table", "bridge", LOSS_TABLE]),
        )?;
        self.step(
            "add the loss chain",
            self.exec("nft").args([
                "add",
                "chain",
                "bridge",
                LOSS_TABLE,
                "forward",
                "{ type filter hook forward priority 0; policy accept; }",
            ]),
        )?;
        let mut rule = vec![
            "add", "rule", "bridge", LOSS_TABLE, "forward", "ether", "type", &et,
        ];
        if percent < 100 {
            // numgen yields 0..=99; "lt N" drops N %.
            rule.extend(["numgen", "random", "mod", "100", "lt", &pct]);
        }
        rule.push("drop");
        self.step("add the loss rule", self.exec("nft").args(&rule))
            .map(|_| ())
    }

    /// Runs `f` on a thread that has entered the namespace; sockets it opens stay in it.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, BackplaneError> {
        let path = format!("/run/netns/{}", self.netns);
        let enter = |source| BackplaneError::Enter {
            netns: self.netns.clone(),
            source,
        };
        let file = File::open(&path).map_err(enter)?;
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
        })
        .map_err(enter)
    }

    /// Opens a raw port on `ifname` inside the namespace.
    pub fn raw_port(&self, ifname: &str) -> Result<RawPort, BackplaneError> {
        let netns = self.netns.clone();
        self.in_netns(|| RawPort::open(&netns, ifname))?
    }

    /// Reads an interface counter (`/sys/class/net/IF/statistics/NAME`) in the namespace.
    pub fn counter(&self, ifname: &str, name: &str) -> Result<u64, BackplaneError> {
        let out = self.step(
            "read a counter",
            self.exec("cat")
                .arg(format!("/sys/class/net/{ifname}/statistics/{name}")),
        )?;
        out.trim().parse().map_err(|_| BackplaneError::Counter {
            netns: self.netns.clone(),
            ifname: ifname.to_string(),
            name: name.to_string(),
            value: out.trim().to_string(),
        })
    }
}

impl Drop for Backplane {
    fn drop(&mut self) {
        if let Err(e) = cmd::run(Command::new("ip").args(["netns", "del", &self.netns])) {
            log::error!("backplane {}: cannot delete the namespace: {e}", self.netns);
        }
    }
}

fn tap_name(i: usize) -> String {
    format!("tap{i}")
}

/// `aa:bb:...` form of a MAC address.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
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
    use super::*;

    #[test]
    fn frame_and_names() {
        let f = ethernet_frame([0xff; 6], MASTER_MAC, 0x88b5, b"hi");
        assert_eq!(f.len(), 16);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
        assert_eq!(mac_string(&MASTER_MAC), "02:00:00:00:00:fe");
        assert_eq!(tap_name(3), "tap3");
    }

    fn gated() -> bool {
        if std::env::var("SHELFBOOT_TIER_NETNS").as_deref() != Ok("1") {
            eprintln!("skipped: needs root; run with SHELFBOOT_TIER_NETNS=1 (as .ci/run does)");
            return false;
        }
        true
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
