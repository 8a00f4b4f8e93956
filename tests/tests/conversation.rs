//! The provisioning conversation end to end in network namespaces: `master serve` and
//! simulated cards (card agents over file-backed flash) over AF_PACKET on a bridge.
//! Each test builds and removes its own namespace (the test kit's `Lab`); traffic stays
//! inside. Network-namespace tier: `#[ignore]`d with the reason, run by `./dev test` as
//! root (docs/testing.md). Port 0 is the master, port 1 the cards,
//! port 2 a rogue where a test needs one.

mod conv;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::conv::{
        Fixture, assert_all_fetched, init_log, serial, spawn_cards, spawn_master, stop_after,
    };
    use shelfboot_master::cli;
    use shelfboot_master::control::{self, Reply, Request};
    use shelfboot_master::serve::stats;
    use shelfboot_master::state::Master;
    use shelfboot_master::store::{NodeState, Store as _};
    use shelfboot_testkit::netns::Lab;
    use shelfboot_testkit::tier::{self, Tier};

    const MIB: usize = 1 << 20;

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn one_pristine_card_becomes_ready_with_identical_artifacts() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::new(tmp.path(), MIB / 2);
        let lab = Lab::new("conv-one", 2).unwrap();
        let cards = fx.cards(1);
        let stop_m = Arc::new(AtomicBool::new(false));
        let stop_c = Arc::new(AtomicBool::new(false));
        let (reports, st) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", cards.clone(), Duration::from_secs(30)),
                stop_c.clone(),
            );
            let reports = c.join().unwrap();
            stop_m.store(true, Ordering::Relaxed);
            (reports, m.join().unwrap())
        });
        assert_all_fetched(&reports);
        assert_eq!(fx.check_card(&cards[0]), 3, "boot image + base + routing");
        assert_eq!(st.plans_fetch, 1);
        // Nothing malformed, forged, replayed or unexpected. Data frames are left out: a
        // repair of an artifact the card finished a moment ago can still arrive, timing
        // that depends on the host's load, and the card rightly drops it.
        let c = &reports[0].counters;
        assert_eq!(c.dropped() - c.dropped_data, 0, "{:?}", reports[0].counters);
        let m = Master::open(&fx.state).unwrap();
        let node = m
            .store()
            .node(&cards[0].mac)
            .unwrap()
            .expect("card recorded");
        assert_eq!(node.state, NodeState::Ready);
        // A second boot of the same card only validates: Continue, no artifact byte.
        let before = st.artifact_bytes;
        let stop_m = Arc::new(AtomicBool::new(false));
        let (reports, st) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", cards.clone(), Duration::from_secs(20)),
                Arc::new(AtomicBool::new(false)),
            );
            let reports = c.join().unwrap();
            stop_m.store(true, Ordering::Relaxed);
            (reports, m.join().unwrap())
        });
        assert!(before > 0);
        assert!(reports[0].validated_only, "{:?}", reports[0]);
        assert_eq!(st.artifact_bytes, 0);
        assert_eq!(st.plans_continue, 1);
        drop(stop_c);
        let _ = stats::read(&fx.state).unwrap();
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn operator_cli_works_while_serving() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::new(tmp.path(), 64 * 1024);
        let lab = Lab::new("conv-cli", 2).unwrap();
        let cards = fx.cards(1);
        let mac = cards[0].mac;
        // `serve::run` owns the state (it holds the state lock): a CLI request can only be
        // answered through the control socket of the serving master, not in-process.
        let stop_m = Arc::new(AtomicBool::new(false));
        let (nodes, history, st) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", cards.clone(), Duration::from_secs(30)),
                Arc::new(AtomicBool::new(false)),
            );
            let reports = c.join().unwrap();
            assert_all_fetched(&reports);
            // The master still serves the backplane; the operator asks it.
            let nodes = cli::run_request(&fx.state, Request::Nodes);
            let history = cli::run_request(
                &fx.state,
                Request::History {
                    node: Some(mac),
                    limit: 50,
                },
            );
            stop_m.store(true, Ordering::Relaxed);
            (nodes, history, m.join().unwrap())
        });
        let Reply::Nodes(nodes) = nodes.unwrap() else {
            panic!("not a node list")
        };
        assert_eq!(nodes.len(), 1, "{nodes:?}");
        assert_eq!(nodes[0].node.identity.mac, mac);
        assert_eq!(nodes[0].node.state, NodeState::Ready);
        assert_eq!(nodes[0].in_sync, Some(true));
        let Reply::History(events) = history.unwrap() else {
            panic!("not a history")
        };
        assert!(
            events
                .iter()
                .any(|e| e.kind == "state" && e.detail == "ready"),
            "{events:?}"
        );
        assert_eq!(st.control_requests, 2, "{st:?}");
        assert!(
            !control::socket_path(&fx.state).exists(),
            "serve removes its control socket at exit"
        );
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn sixteen_cards_of_three_types_share_one_session_per_artifact() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::new(tmp.path(), MIB / 2);
        let lab = Lab::new("conv-16", 2).unwrap();
        let cards = fx.cards(16);
        let stop_m = Arc::new(AtomicBool::new(false));
        let (reports, st) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", cards.clone(), Duration::from_secs(60)),
                Arc::new(AtomicBool::new(false)),
            );
            let reports = c.join().unwrap();
            stop_m.store(true, Ordering::Relaxed);
            (reports, m.join().unwrap())
        });
        assert_all_fetched(&reports);
        for c in &cards {
            fx.check_card(c);
        }
        // 3 boot images, base × 2 archs, routing × 2 archs, fabric-mgr × 1 arch = 8 artifacts.
        let distinct: std::collections::BTreeSet<_> =
            st.sessions.iter().map(|s| s.artifact).collect();
        assert_eq!(distinct.len(), 8, "{:#?}", st.sessions);
        for r in &reports {
            eprintln!(
                "{} {}: nacks {} dropped data {} fetches {}",
                r.mac, r.card_type, r.counters.nacks, r.counters.dropped_data, r.counters.fetches
            );
        }
        // Each artifact crossed the wire about once: 15 % of repairs, but at least two
        // whole slices (a card whose receive ring overflowed while it was descheduled
        // NACKs a slice; on a 1 MiB artifact one repaired slice alone is 17 %).
        let two_slices = 2 * u64::from(shelfboot_proto::data::BLOCKS_PER_SLICE) * 1408;
        for s in &st.sessions {
            let limit = s.size + (s.size * 15 / 100).max(two_slices);
            assert!(
                s.artifact_bytes() <= limit,
                "session {} ({}) sent {} artifact bytes for a {}-byte artifact",
                s.transfer,
                s.name,
                s.artifact_bytes(),
                s.size
            );
        }
        // Shared: far fewer sessions than card × artifact requests (16 cards × 3 = 48).
        assert!(
            st.sessions.len() <= 16,
            "{} sessions: {:#?}",
            st.sessions.len(),
            st.sessions
        );
        eprintln!(
            "16 cards: {} sessions, {} artifact bytes, {} catch-up",
            st.sessions.len(),
            st.artifact_bytes,
            st.catch_up_sessions
        );
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn two_percent_loss_still_gives_correct_artifacts() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::new(tmp.path(), MIB / 2);
        let lab = Lab::new("conv-loss", 2).unwrap();
        lab.set_loss(2, Some(shelfboot_proto::DEFAULT_ETHERTYPE))
            .unwrap();
        let cards = fx.cards(4);
        let stop_m = Arc::new(AtomicBool::new(false));
        let (reports, st) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", cards.clone(), Duration::from_secs(90)),
                Arc::new(AtomicBool::new(false)),
            );
            let reports = c.join().unwrap();
            stop_m.store(true, Ordering::Relaxed);
            (reports, m.join().unwrap())
        });
        let dropped = lab.loss_dropped().unwrap();
        assert_all_fetched(&reports);
        for c in &cards {
            fx.check_card(c);
        }
        assert!(dropped > 0, "the loss rule dropped nothing");
        let retransmitted: u64 = st.sessions.iter().map(|s| s.retransmit_bytes).sum();
        assert!(retransmitted > 0, "loss but no repair");
        eprintln!("2% loss: {dropped} frames dropped by nftables, {retransmitted} bytes repaired");
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn card_killed_mid_transfer_resumes_on_restart() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::new(tmp.path(), MIB);
        let lab = Lab::new("conv-kill", 2).unwrap();
        let cards = fx.cards(1);
        let mut cfg = fx.serve_config("p0");
        cfg.max_rate = 5_000_000;
        let stop_m = Arc::new(AtomicBool::new(false));
        let (first, second) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, cfg.clone(), stop_m.clone());
            let stop_c = Arc::new(AtomicBool::new(false));
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", cards.clone(), Duration::from_secs(30)),
                stop_c.clone(),
            );
            stop_after(&stop_c, Duration::from_millis(1500));
            let first = c.join().unwrap();
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", cards.clone(), Duration::from_secs(60)),
                Arc::new(AtomicBool::new(false)),
            );
            let second = c.join().unwrap();
            stop_m.store(true, Ordering::Relaxed);
            m.join().unwrap();
            (first, second)
        });
        assert!(
            first[0].decision.is_empty(),
            "killed before it finished: {:?}",
            first[0]
        );
        assert!(
            first[0].counters.bytes_written > 0,
            "killed mid-transfer: {:?}",
            first[0]
        );
        assert_all_fetched(&second);
        fx.check_card(&cards[0]);
        // The second attempt wrote only what the first had not: the plan's bytes once,
        // give or take the LEB a kill tears (64 KiB here) and the last buffered bytes.
        let plan: u64 = Master::open(&fx.state)
            .unwrap()
            .plan(&cards[0].mac)
            .unwrap()
            .artifact_refs()
            .iter()
            .map(|a| a.size)
            .sum();
        let (one, two) = (
            first[0].counters.bytes_written,
            second[0].counters.bytes_written,
        );
        eprintln!("plan {plan} bytes: first attempt wrote {one}, second {two}");
        assert!(
            one + two <= plan + 4 * 64 * 1024,
            "the second attempt re-wrote what the first held: plan {plan}, first {one}, second {two}"
        );
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn master_restarted_mid_transfer_cards_resume() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::new(tmp.path(), MIB);
        let lab = Lab::new("conv-mrestart", 2).unwrap();
        let cards = fx.cards(3);
        let mut cfg = fx.serve_config("p0");
        cfg.max_rate = 5_000_000;
        let (reports, first, second) = std::thread::scope(|s| {
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", cards.clone(), Duration::from_secs(60)),
                Arc::new(AtomicBool::new(false)),
            );
            let stop1 = Arc::new(AtomicBool::new(false));
            let m1 = spawn_master(s, &lab, cfg.clone(), stop1.clone());
            stop_after(&stop1, Duration::from_millis(1500));
            let first = m1.join().unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let stop2 = Arc::new(AtomicBool::new(false));
            let m2 = spawn_master(s, &lab, cfg.clone(), stop2.clone());
            let reports = c.join().unwrap();
            stop2.store(true, Ordering::Relaxed);
            (reports, first, m2.join().unwrap())
        });
        assert!(
            first.artifact_bytes > 0,
            "first master sent data before the restart"
        );
        assert!(second.epoch > first.epoch);
        assert!(
            second.fetches > 0,
            "cards resumed with the new master: {second:?}"
        );
        assert_all_fetched(&reports);
        for c in &cards {
            fx.check_card(c);
        }
    }
}
