//! Plans larger than one frame (protocol version 2) end to end in network namespaces:
//! `master serve` sends each card a plan of 63 artifacts in fragments over a lossy
//! bridge, the simulated cards reassemble, verify, fetch and commit; then a warm boot of
//! every card costs exactly one Solicit and one Continue frame, counted by the master's
//! frame counters by type. Network-namespace tier: `#[ignore]`d with the reason, run by
//! `./dev test` as root (docs/testing.md).

mod conv;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::conv::{Fixture, assert_all_fetched, init_log, serial, spawn_cards, spawn_master};
    use shelfboot_proto::msg::BootPhase;
    use shelfboot_testkit::netns::Lab;
    use shelfboot_testkit::tier::{self, Tier};

    /// Extra packages per card: 60 + boot image + base + routing or fabric-mgr.
    const EXTRA: usize = 60;
    const CARDS: usize = 6;

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn a_plan_of_63_artifacts_in_fragments_at_1_percent_loss_then_one_frame_warm_boots() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::with_packages(tmp.path(), 16 * 1024, EXTRA);
        let lab = Lab::new("conv-large", 2).unwrap();
        lab.set_loss(1, Some(shelfboot_proto::DEFAULT_ETHERTYPE))
            .unwrap();
        let cards = fx.cards(CARDS);
        let stop_m = Arc::new(AtomicBool::new(false));
        let (reports, st) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", cards.clone(), Duration::from_secs(120)),
                Arc::new(AtomicBool::new(false)),
            );
            let reports = c.join().unwrap();
            stop_m.store(true, Ordering::Relaxed);
            (reports, m.join().unwrap())
        });
        let dropped = lab.loss_dropped().unwrap();
        assert_all_fetched(&reports);
        for c in &cards {
            assert_eq!(fx.check_card(c), EXTRA + 3, "card {} artifacts", c.mac);
        }
        assert!(dropped > 0, "the loss rule dropped nothing");
        assert!(
            st.messages_fragmented >= CARDS as u64,
            "every card's plan went in fragments: {}",
            st.messages_fragmented
        );
        eprintln!(
            "1% loss, {CARDS} cards x {} artifacts: {dropped} frames dropped, {} plans in fragments, {} Plan frames, {} Solicits",
            EXTRA + 3,
            st.messages_fragmented,
            st.frames_out_by_type.get("Plan").copied().unwrap_or(0),
            st.frames_in_by_type.get("Solicit").copied().unwrap_or(0),
        );

        // Warm boot, no loss: the master is up first, so every frame a card sends reaches
        // it; each card sends one Solicit (its set digest, the list left out) and gets one
        // digest-only Continue frame.
        lab.set_loss(0, None).unwrap();
        let stop_m = Arc::new(AtomicBool::new(false));
        let mut sim = fx.sim_config("p1", cards.clone(), Duration::from_secs(30));
        sim.phase = BootPhase::WarmBoot;
        let (reports, st) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
            std::thread::sleep(Duration::from_millis(800));
            let c = spawn_cards(s, &lab, sim, Arc::new(AtomicBool::new(false)));
            let reports = c.join().unwrap();
            stop_m.store(true, Ordering::Relaxed);
            (reports, m.join().unwrap())
        });
        for r in &reports {
            assert!(r.validated_only && !r.autonomous, "{r:?}");
        }
        let n = CARDS as u64;
        assert_eq!(
            st.frames_in_by_type.get("Solicit").copied(),
            Some(n),
            "{st:?}"
        );
        assert_eq!(
            st.frames_out_by_type.get("Plan").copied(),
            Some(n),
            "{st:?}"
        );
        assert_eq!(st.plans_digest_only, n);
        assert_eq!(st.plans_continue, n);
        assert_eq!(st.artifact_bytes, 0);
    }
}
