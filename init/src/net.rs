//! The backplane link: bring the NIC up with rtnetlink and wait (bounded) for carrier.
//!
//! rtnetlink is async; the tokio current-thread runtime is created inside [`bring_up`]
//! and dropped before it returns, so the rest of init stays synchronous. Selection is a
//! pure function ([`choose`]): the configured interface if `shelfboot.iface=` is set,
//! else the first (lowest ifindex) non-loopback link with carrier. Every candidate is set
//! up as soon as a dump shows it (the flow starts this on its own thread as soon as a NIC
//! exists, [`present`], while other modules still load), because most drivers only report
//! carrier once up (e1000 under QEMU TCG needs ~2 s after up); carrier is polled every
//! 10 ms. Not here: addresses or routes (the protocol is raw Ethernet),
//! the packet socket (see the card agent), VLANs.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkFlag, LinkMessage};

/// Carrier poll interval: one RTM_GETLINK dump; virtio-net has carrier at once, e1000
/// under TCG after ~2 s, so a short interval costs little and wastes no boot time.
const POLL: Duration = Duration::from_millis(10);

/// The chosen link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// ifindex (for the AF_PACKET bind).
    pub index: u32,
    /// MAC address.
    pub mac: [u8; 6],
}

/// What rtnetlink says about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Interface name.
    pub name: String,
    /// ifindex.
    pub index: u32,
    /// IFF_LOOPBACK.
    pub loopback: bool,
    /// Carrier (IFLA_CARRIER = 1, or IFF_LOWER_UP).
    pub carrier: bool,
    /// MAC address, if it has a 6-byte one.
    pub mac: Option<[u8; 6]>,
}

/// Errors bringing the link up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The async runtime could not be built.
    #[error("cannot start the netlink runtime")]
    Runtime(#[source] std::io::Error),
    /// A netlink request failed.
    #[error("netlink request {what} failed")]
    Netlink {
        /// The request.
        what: String,
        /// The cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// The configured interface does not exist.
    #[error("interface {name} (shelfboot.iface) does not exist; links present: {present}")]
    NoSuchLink {
        /// The configured name.
        name: String,
        /// What exists.
        present: String,
    },
    /// The link thread died (a panic; release builds abort instead).
    #[error("the link bring-up thread died")]
    Thread,
    /// No usable link got carrier in time.
    #[error(
        "no link with carrier after {waited:?} (candidates: {candidates}); check the backplane cable/bridge or set shelfboot.iface="
    )]
    NoCarrier {
        /// How long init waited.
        waited: Duration,
        /// Links that were tried.
        candidates: String,
    },
}

fn state(m: &LinkMessage) -> LinkState {
    let mut s = LinkState {
        name: String::new(),
        index: m.header.index,
        loopback: m.header.flags.contains(&LinkFlag::Loopback),
        carrier: m.header.flags.contains(&LinkFlag::LowerUp),
        mac: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Carrier(c) => s.carrier = s.carrier || *c == 1,
            LinkAttribute::Address(b) => s.mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
            _ => {}
        }
    }
    s
}

/// Candidates to bring up: the named link, or every non-loopback link with a MAC.
pub fn candidates<'a>(links: &'a [LinkState], want: Option<&str>) -> Vec<&'a LinkState> {
    links
        .iter()
        .filter(|l| match want {
            Some(n) => l.name == n,
            None => !l.loopback && l.mac.is_some(),
        })
        .collect()
}

/// The link to use: among the candidates, the lowest ifindex with carrier and a MAC.
pub fn choose<'a>(links: &'a [LinkState], want: Option<&str>) -> Option<&'a LinkState> {
    candidates(links, want)
        .into_iter()
        .filter(|l| l.carrier && l.mac.is_some())
        .min_by_key(|l| l.index)
}

fn names(links: &[&LinkState]) -> String {
    if links.is_empty() {
        return "none".into();
    }
    links
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a link [`bring_up`] could use exists yet: `want` (shelfboot.iface) or any
/// interface but `lo` in `sys/class/net`. The flow starts the link as soon as this holds,
/// while the remaining modules load.
pub fn present(sys: &std::path::Path, want: Option<&str>) -> bool {
    let Ok(dir) = std::fs::read_dir(sys.join("class/net")) else {
        return false;
    };
    dir.flatten().any(|e| {
        let n = e.file_name();
        match want {
            Some(w) => n == w,
            None => n != "lo",
        }
    })
}

/// [`bring_up`] running on its own thread (records the `link` boot step), so the flow
/// can load the flash modules and attach UBI meanwhile.
#[derive(Debug)]
pub struct LinkJob(Result<std::thread::JoinHandle<Result<Link, NetError>>, Result<Link, NetError>>);

impl LinkJob {
    /// Starts [`bring_up`] on a thread (inline if no thread can be spawned).
    pub fn start(want: Option<String>, mtu: Option<u16>, timeout: Duration) -> Self {
        let timed = move |want: Option<&str>| {
            let t = crate::boottime::now();
            let r = bring_up(want, mtu, timeout);
            crate::boottime::step("link", t);
            r
        };
        let w = want.clone();
        match std::thread::Builder::new()
            .name("link".into())
            .spawn(move || timed(w.as_deref()))
        {
            Ok(h) => LinkJob(Ok(h)),
            Err(e) => {
                log::warn!("cannot start the link thread ({e}): bringing the link up inline");
                LinkJob(Err(timed(want.as_deref())))
            }
        }
    }

    /// Waits for the result.
    pub fn wait(self) -> Result<Link, NetError> {
        match self.0 {
            Ok(h) => h.join().unwrap_or(Err(NetError::Thread)),
            Err(r) => r,
        }
    }
}

/// Brings the backplane link up (with MTU `mtu` if given) and waits up to `timeout` for
/// carrier.
pub fn bring_up(want: Option<&str>, mtu: Option<u16>, timeout: Duration) -> Result<Link, NetError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetError::Runtime)?;
    let result = rt.block_on(bring_up_async(want, mtu, timeout));
    drop(rt);
    result
}

async fn list(handle: &mut rtnetlink::Handle) -> Result<Vec<LinkState>, NetError> {
    let msgs: Vec<LinkMessage> =
        handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetError::Netlink {
                what: "RTM_GETLINK (dump)".into(),
                source: Box::new(source),
            })?;
    Ok(msgs.iter().map(state).collect())
}

async fn bring_up_async(
    want: Option<&str>,
    mtu: Option<u16>,
    timeout: Duration,
) -> Result<Link, NetError> {
    let (conn, mut handle, _) = rtnetlink::new_connection().map_err(NetError::Runtime)?;
    let conn_task = tokio::spawn(conn);
    let result = wait_for_carrier(&mut handle, want, mtu, timeout).await;
    conn_task.abort();
    result
}

async fn wait_for_carrier(
    handle: &mut rtnetlink::Handle,
    want: Option<&str>,
    mtu: Option<u16>,
    timeout: Duration,
) -> Result<Link, NetError> {
    let start = Instant::now();
    let mut set_up: Vec<(u32, String)> = Vec::new();
    loop {
        let links = list(handle).await?;
        if let Some(name) = want
            && set_up.is_empty()
            && candidates(&links, want).is_empty()
        {
            return Err(NetError::NoSuchLink {
                name: name.to_string(),
                present: names(&links.iter().collect::<Vec<_>>()),
            });
        }
        // Candidates are set up as they appear: the flow starts this while later NIC
        // modules may still be loading, and most drivers report carrier only once up.
        let before = set_up.len();
        for l in candidates(&links, want) {
            if set_up.iter().any(|(i, _)| *i == l.index) {
                continue;
            }
            let mut req = handle.link().set(l.index).up();
            if let Some(m) = mtu {
                req = req.mtu(u32::from(m));
            }
            req.execute().await.map_err(|source| NetError::Netlink {
                what: match mtu {
                    Some(m) => format!(
                        "RTM_NEWLINK {} up, MTU {m} (shelfboot.mtu: does the NIC take it?)",
                        l.name
                    ),
                    None => format!("RTM_NEWLINK {} up", l.name),
                },
                source: Box::new(source),
            })?;
            match mtu {
                Some(m) => log::info!("link {} (ifindex {}) set up, MTU {m}", l.name, l.index),
                None => log::info!("link {} (ifindex {}) set up", l.name, l.index),
            }
            set_up.push((l.index, l.name.clone()));
        }
        if set_up.len() > before {
            // Judge carrier on a fresh dump, taken after the set-up.
            continue;
        }
        if let Some(l) = choose(&links, want) {
            log::info!(
                "backplane link {} has carrier after {:?}",
                l.name,
                start.elapsed()
            );
            return Ok(Link {
                name: l.name.clone(),
                index: l.index,
                mac: l.mac.unwrap_or_default(),
            });
        }
        if start.elapsed() >= timeout {
            let tried: Vec<&str> = set_up.iter().map(|(_, n)| n.as_str()).collect();
            return Err(NetError::NoCarrier {
                waited: start.elapsed(),
                candidates: if tried.is_empty() {
                    "none".into()
                } else {
                    tried.join(", ")
                },
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(name: &str, index: u32, loopback: bool, carrier: bool) -> LinkState {
        LinkState {
            name: name.into(),
            index,
            loopback,
            carrier,
            mac: (!loopback).then_some([2, 0, 0, 0, 0, u8::try_from(index).unwrap()]),
        }
    }

    #[test]
    fn first_non_loopback_with_carrier_or_the_named_one() {
        let links = [
            l("lo", 1, true, true),
            l("eth0", 2, false, false),
            l("eth1", 3, false, true),
            l("eth2", 4, false, true),
        ];
        assert_eq!(choose(&links, None).unwrap().name, "eth1");
        assert_eq!(choose(&links, Some("eth2")).unwrap().name, "eth2");
        assert!(
            choose(&links, Some("eth0")).is_none(),
            "named but no carrier yet"
        );
        assert_eq!(
            candidates(&links, None).len(),
            3,
            "loopback never a candidate"
        );
        assert!(candidates(&links, Some("wlan0")).is_empty());
    }

    #[test]
    fn present_sees_the_named_link_or_any_but_loopback() {
        let t = tempfile::tempdir().unwrap();
        assert!(!present(t.path(), None), "no sysfs class yet");
        let net = t.path().join("class/net");
        std::fs::create_dir_all(net.join("lo")).unwrap();
        assert!(!present(t.path(), None), "loopback only");
        std::fs::create_dir_all(net.join("eth0")).unwrap();
        assert!(present(t.path(), None));
        assert!(present(t.path(), Some("eth0")));
        assert!(!present(t.path(), Some("eth1")));
    }

    #[test]
    fn netlink_message_flags_and_attributes_are_read() {
        let mut m = LinkMessage::default();
        m.header.index = 5;
        m.header.flags = vec![LinkFlag::Up, LinkFlag::LowerUp];
        m.attributes = vec![
            LinkAttribute::IfName("eth9".into()),
            LinkAttribute::Address(vec![2, 1, 2, 3, 4, 5]),
        ];
        let s = state(&m);
        assert_eq!(
            (s.name.as_str(), s.index, s.carrier, s.loopback),
            ("eth9", 5, true, false)
        );
        assert_eq!(s.mac, Some([2, 1, 2, 3, 4, 5]));
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn real_netlink_in_a_namespace() {
        shelfboot_testkit::tier::require(&[shelfboot_testkit::tier::Tier::Netns]);
        // In a fresh namespace only `lo` exists: the named lookup must fail clearly.
        let err = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            bring_up(Some("nonexistent0"), None, Duration::from_millis(300))
        })
        .join()
        .unwrap()
        .unwrap_err();
        assert!(err.to_string().contains("nonexistent0"), "{err}");
    }
}
