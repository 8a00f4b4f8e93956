//! `master serve --metrics` scraped while simulated cards burn: every scrape passes
//! `promtool check metrics`, and its counters equal those `master stats --json` shows for
//! the same moment (the endpoint and the stats file are refreshed together, about once a
//! second). Network-namespace tier plus promtool (`./dev setup` installs Debian's
//! `prometheus`); `#[ignore]`d with the reason otherwise.

mod conv;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::conv::{Fixture, assert_all_fetched, init_log, serial, spawn_cards, spawn_master};
    use shelfboot_master::serve::ServeStats;
    use shelfboot_master::serve::cli::print_stats;
    use shelfboot_testkit::netns::Lab;
    use shelfboot_testkit::tier::{self, Tier};

    const MIB: usize = 1 << 20;
    const CARDS: usize = 4;

    fn addr() -> SocketAddr {
        "127.0.0.1:9464".parse().unwrap()
    }

    /// `GET /metrics` (from a thread inside the lab): the body.
    fn scrape() -> String {
        let mut s = TcpStream::connect_timeout(&addr(), Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: master\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert!(
            head.contains("text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        body.to_owned()
    }

    /// What `master stats --json` prints, parsed.
    fn stats_json(state: &Path) -> ServeStats {
        let mut out = Vec::new();
        print_stats(state, true, &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    /// Series (name with labels) → value.
    fn series(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_owned(), v.parse::<f64>().unwrap())
            })
            .collect()
    }

    /// Sum of every sample of family `name`.
    fn family_sum(m: &BTreeMap<String, f64>, name: &str) -> f64 {
        m.iter()
            .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }

    /// The scrape's counters against the stats of the same moment.
    fn compare(m: &BTreeMap<String, f64>, st: &ServeStats) -> Result<(), String> {
        let sessions = &st.sessions;
        let sum = |f: fn(&shelfboot_master::serve::SessionStats) -> u64| {
            sessions.iter().map(f).sum::<u64>()
        };
        let want: Vec<(String, u64)> = vec![
            (
                format!("shelfboot_serve_epoch{{iface=\"{}\"}}", st.iface),
                st.epoch,
            ),
            ("shelfboot_solicits_received_total".into(), st.solicits),
            (
                "shelfboot_solicits_answered_total".into(),
                st.solicits_served,
            ),
            (
                "shelfboot_solicits_repeated_total".into(),
                st.solicits_repeated,
            ),
            (
                "shelfboot_solicits_coalesced_total".into(),
                st.solicits_coalesced,
            ),
            (
                "shelfboot_solicits_unknown_card_total".into(),
                st.unknown_cards,
            ),
            (
                "shelfboot_plans_total{verdict=\"continue\"}".into(),
                st.plans_continue,
            ),
            (
                "shelfboot_plans_total{verdict=\"fetch\"}".into(),
                st.plans_fetch,
            ),
            ("shelfboot_fetches_total".into(), st.fetches),
            ("shelfboot_joins_total".into(), st.joins),
            ("shelfboot_ready_total".into(), st.ready),
            ("shelfboot_card_errors_total".into(), st.card_errors),
            ("shelfboot_heartbeats_total".into(), st.heartbeats),
            ("shelfboot_frames_received_total".into(), st.frames_in),
            (
                "shelfboot_frames_dropped_total{reason=\"malformed\"}".into(),
                st.dropped_malformed,
            ),
            (
                "shelfboot_frames_dropped_total{reason=\"not_for_us\"}".into(),
                st.dropped_not_for_us,
            ),
            (
                "shelfboot_frames_dropped_total{reason=\"unexpected\"}".into(),
                st.dropped_unexpected,
            ),
            (
                "shelfboot_artifact_sent_bytes_total{pass=\"first\"}".into(),
                sum(|s| s.data_bytes),
            ),
            (
                "shelfboot_artifact_sent_bytes_total{pass=\"repair\"}".into(),
                sum(|s| s.retransmit_bytes),
            ),
            (
                "shelfboot_sessions_started_total{kind=\"catch_up\"}".into(),
                st.catch_up_sessions,
            ),
        ];
        for (k, v) in &want {
            let got = m.get(k).copied();
            if got != Some(*v as f64) {
                return Err(format!("{k}: scrape {got:?}, master stats {v}"));
            }
        }
        let totals = [
            (
                "shelfboot_artifact_sent_bytes_total",
                st.artifact_bytes as f64,
            ),
            ("shelfboot_sessions_started_total", sessions.len() as f64),
            ("shelfboot_frames_sent_total", st.frames_out as f64),
        ];
        for (name, v) in totals {
            let got = family_sum(m, name);
            if got != v {
                return Err(format!("{name} summed: scrape {got}, master stats {v}"));
            }
        }
        Ok(())
    }

    /// A scrape taken between two identical reads of the stats (no refresh in between):
    /// it must show exactly those stats. Retries when a refresh fell in between.
    fn consistent_sample(state: &Path) -> (ServeStats, String) {
        for _ in 0..20 {
            let before = stats_json(state);
            let text = scrape();
            let after = stats_json(state);
            if before == after {
                // The snapshot is published just after the file is written: a scrape in
                // that gap shows the previous second, and is tried again.
                if compare(&series(&text), &before).is_ok() {
                    return (before, text);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = stats_json(state);
        let e = compare(&series(&scrape()), &st).err();
        panic!("no scrape matched `master stats --json` in 20 tries; last: {e:?}");
    }

    /// Sets the stop flags when dropped.
    struct StopOnDrop<'a>([&'a AtomicBool; 2]);

    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            for f in self.0 {
                f.store(true, Ordering::Relaxed);
            }
        }
    }

    fn promtool_check(text: &str) {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool check metrics: {}: {said}\n{text}",
            out.status
        );
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables) and promtool (prometheus); ./dev test runs it"]
    fn metrics_match_master_stats_while_cards_burn_and_pass_promtool() {
        tier::require(&[Tier::Netns, Tier::Promtool]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        // Artifacts large enough that the burn (at the fixture's 6 MB/s) outlasts a few of
        // serve's once-a-second stats refreshes: some scrapes must see a session running.
        let fx = Fixture::new(tmp.path(), 2 * MIB);
        let lab = Lab::new("metrics", 2).unwrap();
        lab.ip_batch("link set lo up\n").unwrap();
        let cards = fx.cards(CARDS);
        let mut cfg = fx.serve_config("p0");
        cfg.metrics = Some(addr());
        let stop_m = Arc::new(AtomicBool::new(false));
        let stop_c = Arc::new(AtomicBool::new(false));
        let cards_done = AtomicBool::new(false);
        let (reports, samples, last, st) = std::thread::scope(|s| {
            // A failed check below unwinds through this: the service and the cards stop,
            // so the scope's threads end and the failure is reported.
            let _stop = StopOnDrop([&stop_m, &stop_c]);
            let m = spawn_master(s, &lab, cfg, stop_m.clone());
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", cards.clone(), Duration::from_secs(60)),
                stop_c.clone(),
            );
            let scraper = s.spawn(|| {
                lab.run(|| {
                    // Wait for the endpoint (the service is starting).
                    let t0 = Instant::now();
                    while TcpStream::connect(addr()).is_err() {
                        assert!(t0.elapsed() < Duration::from_secs(10), "no endpoint");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    let mut samples = Vec::new();
                    while !cards_done.load(Ordering::Relaxed) {
                        assert!(t0.elapsed() < Duration::from_secs(90), "burn too long");
                        samples.push(consistent_sample(&fx.state));
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    samples
                })
                .unwrap()
            });
            let reports = c.join().unwrap();
            cards_done.store(true, Ordering::Relaxed);
            let samples = scraper.join().unwrap();
            // The next refresh carries the cards' last reports.
            std::thread::sleep(Duration::from_millis(1300));
            let last = lab.run(|| consistent_sample(&fx.state)).unwrap();
            stop_m.store(true, Ordering::Relaxed);
            (reports, samples, last, m.join().unwrap())
        });
        assert_all_fetched(&reports);

        // Scrapes during the burn: some while a transfer session ran, counters only grow.
        let burning: Vec<&(ServeStats, String)> = samples
            .iter()
            .filter(|(_, t)| series(t).get("shelfboot_sessions_active").copied() > Some(0.0))
            .collect();
        assert!(
            !burning.is_empty(),
            "no scrape while a session ran ({} scrapes)",
            samples.len()
        );
        promtool_check(&burning[0].1);
        for w in samples.windows(2) {
            let (a, b) = (series(&w[0].1), series(&w[1].1));
            for (k, v) in &a {
                if k.contains("_total") {
                    assert!(b.get(k).copied().unwrap_or(0.0) >= *v, "{k} went down");
                }
            }
        }

        // After the burn: every card ready and seen, the transfers counted.
        let (last_st, text) = last;
        promtool_check(&text);
        let m = series(&text);
        assert_eq!(
            m.get("shelfboot_cards{state=\"ready\"}"),
            Some(&(CARDS as f64)),
            "{text}"
        );
        assert_eq!(m.get("shelfboot_cards_present"), Some(&(CARDS as f64)));
        let seen = m
            .keys()
            .filter(|k| k.starts_with("shelfboot_card_last_seen_timestamp_seconds{"))
            .count();
        assert_eq!(seen, CARDS, "{text}");
        // (A card may repeat a message whose answer it missed.)
        assert!(m["shelfboot_ready_total"] >= CARDS as f64, "{text}");
        assert!(
            m["shelfboot_plans_total{verdict=\"fetch\"}"] >= CARDS as f64,
            "{text}"
        );
        assert!(family_sum(&m, "shelfboot_artifact_sent_bytes_total") > 0.0);
        // And the final stats of the run are at least what the last scrape showed.
        assert!(st.solicits >= last_st.solicits && st.frames_out >= last_st.frames_out);
        assert_eq!(st.artifact_bytes, last_st.artifact_bytes);
    }
}
