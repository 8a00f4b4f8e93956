//! The benchmark backplane: one namespace holding a bridge, one namespace for the master
//! and one per card, each joined to the bridge by a veth pair, with IPv4 addresses (the
//! IP peers need them) and a multicast-capable default route. The master's port can be
//! tbf-shaped and the bridge can drop a percentage of all frames (nftables).
//!
//! ```text
//!  ns sb-bench-m : eth0 10.77.0.1 (tbf) ==veth== m  --+
//!  ns sb-bench-c1: eth0 10.77.1.1       ==veth== c1 --+-- br0  (ns sb-bench-br, nft loss)
//!  ns sb-bench-cN: eth0 10.77.1.N       ==veth== cN --+
//! ```
//!
//! A topology over the test kit's namespace fixture (`shelfboot_testkit::netns::Netns`,
//! which creates, enters, shapes and deletes namespaces). Unlike its `Lab` (one namespace,
//! all ports in it), every endpoint here has its own namespace, so IP traffic really
//! crosses the veths and the bridge instead of being short-cut by the local routing
//! table. Everything is deleted on drop. It does not start any server; see `peers`.

use shelfboot_testkit::netns::{Netns, Tbf};

/// Failures while building or changing the backplane: the fixture's errors.
pub use shelfboot_testkit::netns::NetnsError as BackplaneError;

/// The backplane; deleted on drop.
#[derive(Debug)]
pub struct Backplane {
    bridge: Netns,
    master: Netns,
    cards: Vec<Netns>,
}

impl Backplane {
    /// Builds the namespaces for a master and `cards` cards (1..=200).
    pub fn new(cards: usize) -> Result<Backplane, BackplaneError> {
        let bridge = Netns::new("bench-br")?;
        bridge.add_bridge("br0", false)?;
        let master = Netns::new("bench-m")?;
        let cards = (1..=cards)
            .map(|i| Netns::new(&format!("bench-c{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let bp = Backplane {
            bridge,
            master,
            cards,
        };
        let mut ends = vec![("pm".to_owned(), &bp.master, "02:5b:00:00:00:01".to_owned())];
        for (i, ns) in bp.cards.iter().enumerate() {
            ends.push((format!("pc{}", i + 1), ns, Self::card_mac(i + 1)));
        }
        let br = bp.bridge.name();
        for (k, (port, ns, mac)) in ends.iter().enumerate() {
            let ip = if k == 0 {
                "10.77.0.1/16".to_owned()
            } else {
                format!("10.77.1.{k}/16")
            };
            // Made inside the endpoint's namespace, then the bridge end moved out.
            ns.ip_batch(&format!(
                "link add name eth0 address {mac} type veth peer name {port}\n\
                 link set dev {port} netns {br}\nlink set dev eth0 up\naddress add {ip} dev eth0\n\
                 route add default dev eth0\n"
            ))?;
            bp.bridge
                .ip_batch(&format!("link set dev {port} master br0 up\n"))?;
        }
        Ok(bp)
    }

    /// Number of card namespaces.
    pub fn cards(&self) -> usize {
        self.cards.len()
    }

    pub fn bridge_ns(&self) -> String {
        self.bridge.name().to_owned()
    }

    pub fn master_ns(&self) -> String {
        self.master.name().to_owned()
    }

    /// Namespace of card `i` (1-based).
    pub fn card_ns(&self, i: usize) -> String {
        i.checked_sub(1)
            .and_then(|k| self.cards.get(k))
            .map_or_else(String::new, |ns| ns.name().to_owned())
    }

    /// MAC of card `i`'s eth0.
    pub fn card_mac(i: usize) -> String {
        Self::card_mac_addr(i).to_string()
    }

    /// [`Backplane::card_mac`] as a MAC address.
    pub fn card_mac_addr(i: usize) -> shelfboot_proto::id::MacAddr {
        let b = u16::try_from(i).unwrap_or(u16::MAX).to_be_bytes();
        shelfboot_proto::id::MacAddr([0x02, 0x5c, 0, 0, b[0], b[1]])
    }

    /// IPv4 address of card `i`.
    pub fn card_ip(i: usize) -> String {
        format!("10.77.1.{i}")
    }

    /// Shapes the master's egress with tbf, or removes the shaper (`None`).
    pub fn shape_master(&self, tbf: Option<Tbf>) -> Result<(), BackplaneError> {
        self.master.shape("eth0", tbf)
    }

    /// Drops `percent` % of every frame the bridge forwards (0 removes the rule).
    pub fn set_loss(&self, percent: u8) -> Result<(), BackplaneError> {
        self.bridge.set_loss(percent, None)
    }

    /// Sets `mtu` on every port: each endpoint's eth0 and its bridge end (jumbo frames
    /// when 9000).
    pub fn set_mtu(&self, mtu: u16) -> Result<(), BackplaneError> {
        self.master
            .ip_batch(&format!("link set dev eth0 mtu {mtu}\n"))?;
        let mut bridge = format!("link set dev pm mtu {mtu}\n");
        for (i, ns) in self.cards.iter().enumerate() {
            ns.ip_batch(&format!("link set dev eth0 mtu {mtu}\n"))?;
            bridge.push_str(&format!("link set dev pc{} mtu {mtu}\n", i + 1));
        }
        self.bridge.ip_batch(&bridge)
    }

    /// Bytes the master's eth0 has sent so far (all protocols, with headers).
    pub fn master_tx_bytes(&self) -> Result<u64, BackplaneError> {
        self.master.counter("eth0", "tx_bytes")
    }
}
