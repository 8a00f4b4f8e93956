//! `master watch --json` and `master events --json` during a burn of simulated cards in
//! a network namespace: the live view shows every card reach Ready with the bytes of
//! its plan, and the event history shows the import and the cards' state changes.
//! Network-namespace tier: `#[ignore]`d with the reason, run by `./dev test` as root
//! (docs/testing.md). Port 0 is the master, port 1 the cards.

mod conv;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::conv::{Fixture, assert_all_fetched, init_log, serial, spawn_cards, spawn_master};
    use shelfboot_master::cli::events::{self, EventsArgs};
    use shelfboot_master::serve::CardStage;
    use shelfboot_master::state::Master;
    use shelfboot_master::watch::render::{CardLine, WatchLine};
    use shelfboot_master::watch::{self, Mode, WatchArgs};
    use shelfboot_proto::frame::MacAddr;
    use shelfboot_testkit::netns::Lab;
    use shelfboot_testkit::tier::{self, Tier};

    const MIB: usize = 1 << 20;

    /// What `master watch` writes, shared with the test thread.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn lines(&self) -> Vec<WatchLine> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
                .collect()
        }

        /// The last line of each card.
        fn last_cards(&self) -> HashMap<MacAddr, CardLine> {
            let mut m = HashMap::new();
            for l in self.lines() {
                if let WatchLine::Card(c) = l {
                    m.insert(c.card.mac, c);
                }
            }
            m
        }
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn watch_json_shows_eight_cards_reach_ready_with_their_plan_bytes_and_events_show_it() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::new(tmp.path(), MIB);
        let lab = Lab::new("watch-8", 2).unwrap();
        let cards = fx.cards(8);
        let stop_m = Arc::new(AtomicBool::new(false));
        let stop_w = AtomicBool::new(false);
        let out = Shared::default();
        let mut events_text = Vec::new();
        let (reports, _st) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
            // The serve writes its stats at once; the watch starts on them.
            let deadline = Instant::now() + Duration::from_secs(10);
            while watch::read(&fx.state).is_err() {
                assert!(Instant::now() < deadline, "serve wrote no stats in 10 s");
                std::thread::sleep(Duration::from_millis(20));
            }
            let w = {
                let mut out = out.clone();
                let state = fx.state.clone();
                let stop_w = &stop_w;
                s.spawn(move || {
                    let args = WatchArgs {
                        once: false,
                        interval_ms: 250,
                    };
                    watch::run(&state, &args, Mode::Json, &mut out, stop_w, &|| None)
                })
            };
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", cards.clone(), Duration::from_secs(90)),
                Arc::new(AtomicBool::new(false)),
            );
            let reports = c.join().unwrap();
            // The serve publishes every second: wait (bounded) for the view to show all
            // eight Ready.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let last = out.last_cards();
                if last.len() == cards.len()
                    && last.values().all(|c| c.card.stage == CardStage::Ready)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the watch did not show every card ready: {last:#?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            // `master events` while the serve owns the state: over its control socket.
            let args = EventsArgs {
                follow: false,
                node: None,
                last: 10_000,
                interval_ms: 100,
            };
            events::run(
                &fx.state,
                &args,
                true,
                &mut events_text,
                &AtomicBool::new(false),
            )
            .unwrap();
            stop_w.store(true, Ordering::Relaxed);
            w.join().unwrap().unwrap();
            stop_m.store(true, Ordering::Relaxed);
            (reports, m.join().unwrap())
        });
        assert_all_fetched(&reports);

        let m = Master::open(&fx.state).unwrap();
        let last = out.last_cards();
        for card in &cards {
            let plan = m.plan(&card.mac).unwrap();
            let plan_bytes: u64 = plan.artifact_refs().iter().map(|a| a.size).sum();
            let c = &last[&card.mac];
            assert_eq!(c.card.stage, CardStage::Ready, "{c:?}");
            assert_eq!(
                (c.card.done_bytes, c.card.total_bytes, c.card.plan_bytes),
                (plan_bytes, plan_bytes, plan_bytes),
                "card {} received its whole plan: {c:?}",
                card.mac
            );
            assert_eq!(c.percent, Some(100));
            assert_eq!(
                (c.card.slot, c.card.card_type.as_str()),
                (u32::from(card.slot), card.card_type.as_str())
            );
            assert_eq!(c.card.error, None);
        }
        let lines = out.lines();
        // The view moved: cards were seen on their way (not only at the end).
        assert!(
            lines.iter().any(|l| matches!(l, WatchLine::Card(c)
                if c.card.stage != CardStage::Ready && c.card.done_bytes < c.card.plan_bytes)),
            "no card seen before Ready"
        );
        assert!(
            lines
                .iter()
                .any(|l| matches!(l, WatchLine::Session(s) if s.session.members > 0)),
            "sessions shown"
        );
        let Some(WatchLine::Serve { summary, .. }) = lines.first() else {
            panic!("the stream starts with the summary: {:?}", lines.first())
        };
        assert!(summary.serving);

        let events: Vec<shelfboot_master::store::Event> = String::from_utf8(events_text)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            events
                .iter()
                .any(|e| e.kind == "import" && e.detail.contains("shelf-os")),
            "{events:#?}"
        );
        for card in &cards {
            let states: Vec<&str> = events
                .iter()
                .filter(|e| e.node == Some(card.mac) && e.kind == "state")
                .map(|e| e.detail.as_str())
                .collect();
            assert!(
                states.contains(&"fetching") && states.last() == Some(&"ready"),
                "card {}: {states:?}",
                card.mac
            );
        }
        assert!(events.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    }
}
