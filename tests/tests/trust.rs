//! Trust in a cluster of masters, end to end in network namespaces: simulated cards whose
//! trust anchor holds only the shelf key burn a release from a `master serve` whose plan
//! key the shelf key certified (`master cluster certify`, STATE/plan.cert), and refuse a
//! master whose plan key is not certified, or is certified by another shelf key: its plans
//! are dropped as forged and the cards never fetch. Network-namespace tier: `#[ignore]`d
//! with the reason, run by `./dev test` as root. Port 0 is the master, port 1 the cards.

mod conv;

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::conv::{Fixture, assert_all_fetched, init_log, serial, spawn_cards, spawn_master};
    use shelfboot_card::sim::{CardReport, SimCard};
    use shelfboot_master::serve::{CERT_FILE, ServeStats};
    use shelfboot_proto::sign::TrustAnchor;
    use shelfboot_testkit::netns::Lab;
    use shelfboot_testkit::tier::{self, Tier};

    const UNIT: usize = 256 * 1024;

    /// A shelf key pair `dir/NAME.key`, `dir/NAME.pub` made by `master keygen`, and the
    /// cards' anchor made of the `.pub` (as the card's init reads it from the initramfs).
    fn shelf_key(dir: &Path, name: &str) -> TrustAnchor {
        let (_, public, _) = shelfboot_master::keys::keygen(&dir.join(name)).unwrap();
        let key = shelfboot_master::keys::read_verifying_key(&public).unwrap();
        TrustAnchor::from_bytes(key.as_bytes()).unwrap()
    }

    /// What `master --state STATE cluster certify --shelf-key SHELF` does: certify
    /// STATE/plan.pub into STATE/plan.cert.
    fn certify(state: &Path, shelf: &Path) {
        shelfboot_master::keys::certify(shelf, &state.join("plan.pub"), &state.join(CERT_FILE))
            .unwrap();
    }

    /// Serves `fx` on port 0 while `cards` anchored on `anchor` run on port 1 for at most
    /// `timeout`.
    fn run(
        fx: &Fixture,
        lab: &Lab,
        cards: &[SimCard],
        anchor: &TrustAnchor,
        timeout: Duration,
    ) -> (Vec<CardReport>, ServeStats) {
        let mut sim = fx.sim_config("p1", cards.to_vec(), timeout);
        sim.anchor = anchor.clone();
        let stop_m = Arc::new(AtomicBool::new(false));
        std::thread::scope(|s| {
            let m = spawn_master(s, lab, fx.serve_config("p0"), stop_m.clone());
            let c = spawn_cards(s, lab, sim, Arc::new(AtomicBool::new(false)));
            let reports = c.join().unwrap();
            stop_m.store(true, Ordering::Relaxed);
            (reports, m.join().unwrap())
        })
    }

    /// Every card was offered plans, dropped each as forged, and fetched nothing.
    fn assert_refused(reports: &[CardReport], st: &ServeStats) {
        assert!(st.plans_fetch > 0, "the master answered the Solicits");
        assert_eq!(st.artifact_bytes, 0, "no artifact byte sent");
        for r in reports {
            let c = &r.counters;
            assert!(c.dropped_forged > 0, "card {} got no plan: {c:?}", r.mac);
            assert_eq!(
                (c.plans_accepted, c.fetches, c.bytes_written),
                (0, 0, 0),
                "card {} obeyed an untrusted master: {r:?}",
                r.mac
            );
            assert!(r.decision.is_empty(), "card {}: {r:?}", r.mac);
            assert!(r.digest.is_empty(), "card {} committed a set", r.mac);
        }
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn cards_anchored_on_the_shelf_key_obey_only_a_master_it_certified() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::new(tmp.path(), UNIT);
        let shelf = shelf_key(tmp.path(), "shelf");
        let lab = Lab::new("trust", 2).unwrap();
        let cards = fx.cards(3);
        // The master's plan key is in no anchor: uncertified, it is refused.
        let (reports, st) = run(&fx, &lab, &cards, &shelf, Duration::from_secs(6));
        assert_refused(&reports, &st);
        // Certified by another shelf's key: refused too.
        shelf_key(tmp.path(), "other");
        certify(&fx.state, &tmp.path().join("other.key"));
        let (reports, st) = run(&fx, &lab, &cards, &shelf, Duration::from_secs(6));
        assert_refused(&reports, &st);
        // Certified by this shelf's key: the cards burn the release from it.
        std::fs::remove_file(fx.state.join(CERT_FILE)).unwrap();
        certify(&fx.state, &tmp.path().join("shelf.key"));
        let (reports, st) = run(&fx, &lab, &cards, &shelf, Duration::from_secs(60));
        assert_all_fetched(&reports);
        for (card, r) in cards.iter().zip(&reports) {
            assert_eq!(fx.check_card(card), 3, "boot image + base + class package");
            let c = &r.counters;
            assert_eq!(c.dropped_forged, 0, "{c:?}");
            assert!(c.plans_accepted >= 1, "{c:?}");
        }
        // Plans are answered again when a card solicits again before its plan arrives:
        // at least one per card.
        assert!(st.plans_fetch >= 3, "{st:?}");
        assert!(st.artifact_bytes > 0);
    }
}
