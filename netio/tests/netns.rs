//! Network-namespace tier: real AF_PACKET traffic through a bridge inside throwaway
//! namespaces. Each test builds its own `Lab` (deleted on drop, also on panic) and sends
//! only inside it. Tier tests: `#[ignore]`d with their reason; `./dev test` runs them as root.

// In a test module to satisfy the workspace's `tests_outside_test_module` lint.
#[cfg(test)]
mod netns {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use shelfboot_netio::{FrameIo, MacAddr, PacketSocket, Path, PathChoice, SocketConfig};
    use shelfboot_testkit::netns::{Lab, Tbf, multicast_groups};
    use shelfboot_testkit::tier::{self, Tier};

    const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

    /// One test of this file at a time. The kernel's per-CPU receive backlog
    /// (`net.core.netdev_max_backlog`) is shared by every namespace, so a test that floods
    /// its bridge (drops, shaping, loss) makes another test's veths drop frames: the
    /// exact-count tests then fail for a reason that is not theirs. Serialising costs a
    /// few seconds.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Frame `seq` to `dst`: header, 4-byte sequence number, then a pattern that depends on
    /// both, `len` bytes in all.
    fn make_frame(dst: MacAddr, src: MacAddr, seq: u32, len: usize) -> Vec<u8> {
        let mut f = Vec::with_capacity(len);
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ETHERTYPE);
        f.extend_from_slice(&seq.to_be_bytes());
        let mut x = seq.wrapping_mul(2_654_435_761);
        while f.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            f.push(x.to_be_bytes()[1]);
        }
        f
    }

    fn seq_of(frame: &[u8]) -> Option<u32> {
        frame
            .get(14..18)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn config(tx: Path, rx: Path) -> SocketConfig {
        SocketConfig {
            tx: PathChoice::Force(tx),
            rx: PathChoice::Force(rx),
            ..SocketConfig::default()
        }
    }

    /// Receive on `sock` until `want` frames came or `limit` passed; returns frames by seq
    /// (duplicates counted in the second value).
    /// Through the `FrameIo` trait, so the trait's forwarding is exercised too.
    fn drain<F: FrameIo>(
        sock: &mut F,
        want: usize,
        limit: Duration,
    ) -> (BTreeMap<u32, Vec<u8>>, usize) {
        let mut got = BTreeMap::new();
        let mut dups = 0;
        let end = Instant::now() + limit;
        while got.len() < want && Instant::now() < end {
            FrameIo::recv_batch(
                sock,
                &mut |f: &[u8], _src: MacAddr| {
                    if let Some(s) = seq_of(f)
                        && got.insert(s, f.to_vec()).is_some()
                    {
                        dups += 1;
                    }
                },
                Duration::from_millis(50),
            )
            .unwrap();
        }
        (got, dups)
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn frames_arrive_intact_through_every_path() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        let lab = Lab::new("paths", 2).unwrap();
        lab.run(|| {
            for tx in Path::ALL {
                for rx in Path::ALL {
                    let mut a = PacketSocket::open("p0", config(tx, rx)).unwrap();
                    let mut b = PacketSocket::open("p1", config(tx, rx)).unwrap();
                    assert_eq!((a.tx_path(), b.rx_path()), (tx, rx));
                    assert_eq!(a.mac(), Lab::port_mac(0));
                    assert_eq!(b.mtu(), 1500);
                    let n = 300u32;
                    let sizes = [60usize, 61, 500, 1000, 1513, 1514];
                    let frames: Vec<Vec<u8>> = (0..n)
                        .map(|s| make_frame(b.mac(), a.mac(), s, sizes[s as usize % sizes.len()]))
                        .collect();
                    let mut got = BTreeMap::new();
                    let mut dups = 0;
                    for chunk in frames.chunks(32) {
                        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                        assert_eq!(a.send_batch(&refs).unwrap(), refs.len(), "{tx:?}->{rx:?}");
                        a.flush().unwrap();
                        let (g, d) = drain(&mut b, chunk.len(), Duration::from_millis(5));
                        dups += d;
                        got.extend(g);
                    }
                    let (g, d) = drain(&mut b, n as usize - got.len(), Duration::from_secs(3));
                    got.extend(g);
                    dups += d;
                    assert_eq!(got.len(), n as usize, "{tx:?}->{rx:?}: frames missing");
                    assert_eq!(dups, 0, "{tx:?}->{rx:?}: duplicates");
                    for (s, f) in &got {
                        assert_eq!(f, &frames[*s as usize], "{tx:?}->{rx:?}: frame {s} differs");
                    }
                    // The sender never sees its own frames.
                    let (own, _) = drain(&mut a, 1, Duration::from_millis(20));
                    assert!(own.is_empty(), "{tx:?}: sender received its own frames");
                    let st = b.stats().unwrap();
                    assert_eq!(st.kernel_drops, 0, "{tx:?}->{rx:?}");
                    assert_eq!(st.delivered, u64::from(n));
                    assert_eq!(a.stats().unwrap().sent, u64::from(n));
                }
            }
        })
        .unwrap();
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn oversized_and_runt_frames_are_refused() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        let lab = Lab::new("sizes", 1).unwrap();
        lab.run(|| {
            for tx in Path::ALL {
                let mut a = PacketSocket::open("p0", config(tx, Path::Mmsg)).unwrap();
                let big = make_frame(MacAddr::BROADCAST, a.mac(), 0, 1515);
                assert!(
                    a.send_batch(&[&big]).is_err(),
                    "{tx:?} took a 1515-byte frame"
                );
                assert!(a.send_batch(&[&big[..13]]).is_err(), "{tx:?} took a runt");
                assert_eq!(a.stats().unwrap().sent, 0);
            }
        })
        .unwrap();
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn multicast_membership_filters_as_expected() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        let lab = Lab::new("mcast", 3).unwrap();
        let group = MacAddr([0x03, 0x5b, 0, 0, 0, 0x42]);
        lab.run(|| {
            let mut tx = PacketSocket::open("p0", SocketConfig::default()).unwrap();
            let mut member = PacketSocket::open("p1", SocketConfig::default()).unwrap();
            let mut other = PacketSocket::open("p2", SocketConfig::default()).unwrap();
            let unfiltered = SocketConfig {
                filter_multicast: false,
                ..SocketConfig::default()
            };
            let mut raw = PacketSocket::open("p2", unfiltered).unwrap();
            assert!(
                member.join(MacAddr([0x02, 0, 0, 0, 0, 1])).is_err(),
                "joined a unicast MAC"
            );
            member.join(group).unwrap();
            assert!(multicast_groups("p1").unwrap().contains(&group));
            assert!(!multicast_groups("p2").unwrap().contains(&group));

            let send = |tx: &mut PacketSocket, base: u32, n: u32| {
                let frames: Vec<Vec<u8>> = (base..base + n)
                    .map(|s| make_frame(group, tx.mac(), s, 200))
                    .collect();
                let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                assert_eq!(tx.send_batch(&refs).unwrap(), refs.len());
                tx.flush().unwrap();
            };
            send(&mut tx, 0, 50);
            assert_eq!(drain(&mut member, 50, Duration::from_secs(2)).0.len(), 50);
            // veth/bridge deliver group frames to every port; the socket filter holds them back
            assert_eq!(drain(&mut raw, 50, Duration::from_secs(2)).0.len(), 50);
            assert!(
                drain(&mut other, 50, Duration::from_millis(200))
                    .0
                    .is_empty()
            );
            assert_eq!(other.stats().unwrap().filtered, 50);
            // a broadcast reaches everyone
            let b = make_frame(MacAddr::BROADCAST, tx.mac(), 999, 100);
            tx.send_batch(&[&b]).unwrap();
            tx.flush().unwrap();
            assert_eq!(drain(&mut other, 1, Duration::from_secs(2)).0.len(), 1);
            assert_eq!(drain(&mut member, 1, Duration::from_secs(2)).0.len(), 1);

            member.leave(group).unwrap();
            assert!(!multicast_groups("p1").unwrap().contains(&group));
            send(&mut tx, 100, 20);
            assert!(
                drain(&mut member, 20, Duration::from_millis(200))
                    .0
                    .is_empty()
            );
        })
        .unwrap();
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn loss_rule_drops_about_n_percent() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        let lab = Lab::new("loss", 2).unwrap();
        lab.set_loss(10, Some(0x88b5)).unwrap();
        let n = 2000u32;
        let received = lab
            .run(|| {
                let mut a = PacketSocket::open("p0", SocketConfig::default()).unwrap();
                let mut b = PacketSocket::open("p1", SocketConfig::default()).unwrap();
                let mut total = 0usize;
                for base in (0..n).step_by(50) {
                    let frames: Vec<Vec<u8>> = (base..base + 50)
                        .map(|s| make_frame(b.mac(), a.mac(), s, 1000))
                        .collect();
                    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                    assert_eq!(a.send_batch(&refs).unwrap(), 50);
                    a.flush().unwrap();
                    total += drain(&mut b, 50, Duration::from_millis(5)).0.len();
                }
                total += drain(&mut b, usize::MAX, Duration::from_millis(300))
                    .0
                    .len();
                assert_eq!(b.stats().unwrap().kernel_drops, 0);
                total
            })
            .unwrap();
        let dropped = lab.loss_dropped().unwrap();
        eprintln!("loss rule: {dropped} of {n} dropped, {received} received");
        // every frame is either received or counted by the rule: no other loss
        assert_eq!(
            received as u64 + dropped,
            u64::from(n),
            "received {received}, rule {dropped}"
        );
        // 10% of 2000 = 200, sd ~13.4: accept 5 sd either way
        assert!(
            (133..=267).contains(&dropped),
            "rule dropped {dropped} of {n}"
        );
        lab.set_loss(0, None).unwrap();
        assert_eq!(lab.loss_dropped().unwrap(), 0);
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn tbf_shapes_the_sender_port_unless_bypassed() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        let lab = Lab::new("tbf", 2).unwrap();
        // 20 Mbit/s: 400 frames of 1514 bytes (~4.8 Mbit) take >= ~0.24 s
        let tbf = Tbf {
            rate_bits_per_sec: 20_000_000,
            burst_bytes: 16_000,
            latency: Duration::from_millis(50),
        };
        lab.shape_port(0, tbf).unwrap();
        assert!(lab.shape_port(5, tbf).is_err());
        let timed = |bypass: bool| {
            lab.run(move || {
                let cfg = SocketConfig {
                    qdisc_bypass: bypass,
                    ..SocketConfig::default()
                };
                let mut a = PacketSocket::open("p0", cfg.clone()).unwrap();
                let mut b = PacketSocket::open("p1", cfg).unwrap();
                let frames: Vec<Vec<u8>> = (0..400)
                    .map(|s| make_frame(b.mac(), a.mac(), s, 1514))
                    .collect();
                let start = Instant::now();
                let mut got = 0;
                for chunk in frames.chunks(20) {
                    let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                    assert_eq!(a.send_batch(&refs).unwrap(), refs.len());
                    a.flush().unwrap();
                    got += drain(&mut b, 20, Duration::from_millis(1)).0.len();
                }
                got += drain(&mut b, 400 - got, Duration::from_secs(3)).0.len();
                (start.elapsed(), got)
            })
            .unwrap()
        };
        let (shaped, got) = timed(false);
        assert_eq!(got, 400);
        assert!(
            shaped >= Duration::from_millis(200),
            "tbf at 20 Mbit/s let 4.8 Mbit through in {shaped:?}"
        );
        let (bypassed, got) = timed(true);
        eprintln!("400 x 1514 B: shaped {shaped:?}, bypassed {bypassed:?}");
        assert_eq!(got, 400);
        assert!(
            bypassed < shaped / 2,
            "qdisc bypass took {bypassed:?}, shaped {shaped:?}"
        );
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn a_batch_larger_than_the_tx_ring_goes_out_whole() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        let lab = Lab::new("bigbatch", 2).unwrap();
        lab.run(|| {
            let mut a = PacketSocket::open("p0", config(Path::Ring, Path::Ring)).unwrap();
            let mut b = PacketSocket::open("p1", config(Path::Ring, Path::Ring)).unwrap();
            // 1000 frames through a 256-slot ring in one call: it must wait for slots
            let frames: Vec<Vec<u8>> = (0..1000)
                .map(|s| make_frame(b.mac(), a.mac(), s, 1514))
                .collect();
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            assert_eq!(a.send_batch(&refs).unwrap(), 1000);
            a.flush().unwrap();
            assert_eq!(a.tx_queued(), 0);
            let (got, dups) = drain(&mut b, 1000, Duration::from_secs(5));
            assert_eq!((got.len(), dups), (1000, 0));
            assert!(
                a.stats().unwrap().send_waits > 0,
                "a 256-slot ring took 1000 frames"
            );
        })
        .unwrap();
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn statistics_count_drops_when_the_receiver_falls_behind() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        let lab = Lab::new("drops", 2).unwrap();
        lab.run(|| {
            for rx in [Path::Plain, Path::Ring] {
                let small = SocketConfig {
                    rx: PathChoice::Force(rx),
                    rcvbuf: Some(64 << 10),
                    rx_ring: shelfboot_netio::RingGeometry {
                        block_size: 1 << 16,
                        block_nr: 1,
                        frame_size: 2048,
                    },
                    ..SocketConfig::default()
                };
                let mut a = PacketSocket::open("p0", config(Path::Mmsg, Path::Mmsg)).unwrap();
                let mut b = PacketSocket::open("p1", small).unwrap();
                let n = 1000u32;
                for base in (0..n).step_by(50) {
                    let frames: Vec<Vec<u8>> = (base..base + 50)
                        .map(|s| make_frame(b.mac(), a.mac(), s, 1000))
                        .collect();
                    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                    assert_eq!(a.send_batch(&refs).unwrap(), 50);
                    // let the softirq backlog drain so loss happens only at the socket
                    std::thread::sleep(Duration::from_millis(2));
                }
                // On a loaded host the softirq can still hold the last batch when the
                // first drain ends: keep draining (bounded) until every frame is either
                // delivered or counted as dropped.
                let mut got = BTreeMap::new();
                let settle = Instant::now() + Duration::from_secs(5);
                let st = loop {
                    let (g, _) = drain(&mut b, n as usize, Duration::from_millis(200));
                    got.extend(g);
                    let st = b.stats().unwrap();
                    if got.len() as u64 + st.kernel_drops >= u64::from(n)
                        || Instant::now() >= settle
                    {
                        break st;
                    }
                };
                assert!(
                    st.kernel_drops > 0,
                    "{rx:?}: nothing dropped with a 64 KiB buffer"
                );
                assert_eq!(
                    got.len() as u64 + st.kernel_drops,
                    u64::from(n),
                    "{rx:?}: delivered {} + dropped {} != sent",
                    got.len(),
                    st.kernel_drops
                );
            }
        })
        .unwrap();
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn the_lab_is_isolated_and_removed_even_after_a_panic() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        let name = std::sync::Mutex::new(String::new());
        let outcome = std::panic::catch_unwind(|| {
            let lab = Lab::new("panic", 1).unwrap();
            *name.lock().unwrap() = lab.netns().to_owned();
            // a process inside sees the lab's links; this process's namespace does not
            let links = lab.exec(&["ip", "-o", "link", "show"]).unwrap();
            assert!(links.contains("p0") && links.contains("br0"), "{links}");
            assert!(!std::path::Path::new("/sys/class/net/p0b").exists());
            lab.run(|| panic!("deliberate panic inside the lab"))
                .unwrap();
        });
        assert!(outcome.is_err(), "the panic was swallowed");
        let name = name.into_inner().unwrap();
        assert!(!name.is_empty());
        assert!(
            !std::path::Path::new(&format!("/run/netns/{name}")).exists(),
            "{name} left behind"
        );
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn ring_frames_never_wait_for_a_next_call() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        let lab = Lab::new("ringtail", 2).unwrap();
        // A slow link and a tiny socket buffer: the kernel can take only a few frames per
        // non-blocking send(); the rest must still go out without another call. (The
        // receiver is not reading meanwhile: at 1.2 ms per frame its V3 ring's timer
        // hands over one block per frame or two, so this also checks that the default
        // ring has enough blocks for a trickle.)
        let tbf = Tbf {
            rate_bits_per_sec: 10_000_000,
            burst_bytes: 4_000,
            latency: Duration::from_millis(200),
        };
        lab.shape_port(0, tbf).unwrap();
        lab.run(|| {
            let cfg = SocketConfig {
                sndbuf: Some(8 << 10),
                ..config(Path::Ring, Path::Ring)
            };
            let mut a = PacketSocket::open("p0", cfg).unwrap();
            let mut b = PacketSocket::open("p1", config(Path::Ring, Path::Ring)).unwrap();
            let frames: Vec<Vec<u8>> = (0..30)
                .map(|s| make_frame(b.mac(), a.mac(), s, 1514))
                .collect();
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            assert_eq!(a.send_batch(&refs).unwrap(), 30);
            // no flush, no further send
            let (got, _) = drain(&mut b, 30, Duration::from_secs(3));
            assert_eq!(got.len(), 30, "frames stayed in the TX ring");
            assert_eq!(b.stats().unwrap().kernel_drops, 0);
        })
        .unwrap();
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn auto_picks_the_rings_and_falls_back_when_refused() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        let lab = Lab::new("auto", 2).unwrap();
        lab.run(|| {
            let s = PacketSocket::open("p0", SocketConfig::default()).unwrap();
            assert_eq!((s.tx_path(), s.rx_path()), (Path::Ring, Path::Ring));
            // a geometry the ring rules refuse (blocks not a multiple of the page size;
            // slots too small for the port's frames would be enlarged at open instead,
            // `RingGeometry::fitted`): Auto falls back, Force refuses
            let bad = shelfboot_netio::RingGeometry {
                block_size: 6144,
                block_nr: 4,
                frame_size: 2048,
            };
            let auto = SocketConfig {
                tx_ring: bad,
                rx_ring: bad,
                ..SocketConfig::default()
            };
            let mut a = PacketSocket::open("p0", auto.clone()).unwrap();
            assert_eq!((a.tx_path(), a.rx_path()), (Path::Mmsg, Path::Mmsg));
            let forced = SocketConfig {
                tx: PathChoice::Force(Path::Ring),
                ..auto.clone()
            };
            let err = PacketSocket::open("p0", forced).unwrap_err();
            assert!(err.to_string().contains("p0"), "{err}");
            let forced = SocketConfig {
                rx: PathChoice::Force(Path::Ring),
                ..auto
            };
            assert!(PacketSocket::open("p0", forced).is_err());
            // and the fallback endpoint works
            let mut b = PacketSocket::open("p1", SocketConfig::default()).unwrap();
            let f = make_frame(b.mac(), a.mac(), 7, 1514);
            assert_eq!(a.send_batch(&[&f]).unwrap(), 1);
            let (got, _) = drain(&mut b, 1, Duration::from_secs(2));
            assert_eq!(got.get(&7), Some(&f));
            // an interface that does not exist is named in the error
            let err = PacketSocket::open("nosuch0", SocketConfig::default()).unwrap_err();
            assert!(err.to_string().contains("nosuch0"), "{err}");
        })
        .unwrap();
    }
}
