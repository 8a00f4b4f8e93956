//! Tier-3 scenarios of cards in service: real kernels, the lab release, `master serve` in
//! the backplane namespace, cards whose reboots reset the VM in place (no `-no-reboot`,
//! an `i6300esb` watchdog armed by init), so nothing but the cards' own resident agents
//! brings them back into init.
//!
//! `running_shelf_prepares_and_warm_boots_through_its_agents`: three cards install
//! release 1.0 and run; release 1.1 (heartbeat 1.1.0) is imported; `master prepare`
//! reaches the running cards' resident agents, which reset them; each burns 1.1 and
//! holds; `master warm-boot` hands them off into 1.1. The harness never power-cycles a
//! card for it. Then one card is killed (QEMU quit): the master shows it absent within its
//! absence interval, and present again after it boots.
//!
//! `failed_releases_roll_back_on_their_own`: one card (`shelfboot.maxtries=1`, watchdog
//! 60 s) runs 1.0; release 1.2 names a health command its broken heartbeat never
//! satisfies; `master reset` of the card makes it fetch 1.2, kexec, validate and
//! switch_root; the health deadline passes, the resident agent rolls flash back to 1.0 and
//! resets; the card refuses 1.2 from then on (the master records why) and runs 1.0 again.
//! Then release 1.3, whose kernel hangs (a panic with `panic=0`), is upgraded in service:
//! the card kexecs into it and hangs; the watchdog armed before the kexec resets it; boot
//! counting rolls 1.3 back and the card runs 1.0 again.
//!
//! `upgrade_in_service_kexecs_without_a_reset`: one card runs 1.0; three releases in a
//! row (each changes the boot image, heartbeat and one more package, and names a health
//! command that passes) go to it with `master upgrade --wave 1`: the card stages each
//! while it runs, commits, kexecs, validates and comes up healthy, with the set before
//! it kept on flash for rollback. The downtime of each (the kexec line to the Ready line
//! on the console) is printed with the median, next to the card's cold pristine boot.
//!
//! The init binary: SHELFBOOT_INIT_BIN, else built here with cargo (init-release, musl).

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use shelfboot_master::state::FleetAction;
    use shelfboot_qemu::card::CardConfig;
    use shelfboot_qemu::release::{self, Derived};
    use shelfboot_qemu::scenario::{self, Lab, MasterRun, Prelude};
    use shelfboot_qemu::shelf::{Shelf, card_mac};

    /// The two scenarios take 4 VMs between them: one at a time on 2 cores.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Kernel arguments of a card in service: the watchdog (it must outlast a kexec under
    /// TCG, 16-31 s) and Alives every second.
    const IN_SERVICE: &str = " shelfboot.watchdog=120 shelfboot.alive=1";
    const HOLD_LINE: &str = "SHELFBOOT: set committed; holding for the master's warm boot";

    fn in_service(lab: &Lab, i: usize, logs: &std::path::Path) -> CardConfig {
        let mut c = scenario::card_config(lab, i, logs).unwrap();
        c.reset_in_place = true;
        c.append.push_str(IN_SERVICE);
        c
    }

    fn mac(i: usize) -> String {
        shelfboot_qemu::backplane::mac_string(&card_mac(i))
    }

    /// Waits until `needle` appears `n` times on card `c`'s console (in any order with the
    /// lines other waits match: the resident agent logs beside the package root).
    fn wait_count(c: &mut shelfboot_qemu::card::Card, needle: &str, n: usize, within: Duration) {
        let t = Instant::now();
        loop {
            let seen = c.console().matches(needle).count();
            if seen >= n {
                return;
            }
            assert!(
                t.elapsed() < within,
                "{}: {needle:?} seen {seen} times, not {n}, within {within:?}",
                c.name()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Polls the node database until card `i`'s presence is `present`; returns how long
    /// that took.
    fn wait_presence(lab: &Lab, i: usize, present: bool, within: Duration) -> Duration {
        let t = Instant::now();
        loop {
            let v = scenario::node_by_mac(&lab.state, &mac(i)).unwrap();
            if v.node.present == present {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < within,
                "card{i} still present={} after {within:?}: {:?}",
                v.node.present,
                v.node
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn running_shelf_prepares_and_warm_boots_through_its_agents() {
        const CARDS: usize = 3;
        let _one = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let p = Prelude::start(env!("CARGO_TARGET_TMPDIR"), "service-shelf").unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
        let mut shelf = Shelf::start(CARDS, |i| in_service(&lab, i, &logs)).unwrap();
        let mut master = MasterRun::start(shelf.backplane(), &lab.state).unwrap();
        let r = shelf
            .wait_all(release::READY_LINE, Duration::from_secs(420))
            .unwrap();
        for (i, m) in r.iter().enumerate() {
            eprintln!("card{i} runs 1.0 after {:.1} s", m.elapsed.as_secs_f64());
        }
        for c in shelf.cards() {
            wait_count(c, "resident: listening", 1, Duration::from_secs(30));
        }
        for i in 0..CARDS {
            wait_presence(&lab, i, true, Duration::from_secs(10));
        }

        // Release 1.1 while the shelf runs, then "prepare all nodes now".
        scenario::import_derived(
            &lab,
            &Derived {
                version: "1.1.0".into(),
                heartbeat: Some("1.1.0".into()),
                ..Derived::default()
            },
        )
        .unwrap();
        let t_prepare = Instant::now();
        eprintln!(
            "prepare: {}",
            scenario::fleet_order(&lab.state, FleetAction::Prepare, None).unwrap()
        );
        shelf
            .wait_all(
                "SHELFBOOT: BurnNow ordered by the master",
                Duration::from_secs(30),
            )
            .unwrap();
        let held = shelf.wait_all(HOLD_LINE, Duration::from_secs(420)).unwrap();
        for (i, h) in held.iter().enumerate() {
            eprintln!("card{i} holds 1.1 after {:.1} s", h.elapsed.as_secs_f64());
        }
        let prepare = t_prepare.elapsed();

        let t_warm = Instant::now();
        eprintln!(
            "warm-boot: {}",
            scenario::fleet_order(&lab.state, FleetAction::WarmBoot, None).unwrap()
        );
        let ready = shelf
            .wait_all(release::READY_LINE, Duration::from_secs(300))
            .unwrap();
        let warm = t_warm.elapsed();
        for (i, r) in ready.iter().enumerate() {
            assert!(
                r.line.contains("heartbeat-1.1.0") && !r.line.contains("heartbeat-1.0.0"),
                "card{i}: {}",
                r.line
            );
        }
        for c in shelf.cards() {
            assert_eq!(
                c.boots(),
                1,
                "{}: the harness never power-cycled it",
                c.name()
            );
            let console = c.console();
            assert!(
                console.contains("SHELFBOOT: warm boot ordered by the master"),
                "{}",
                c.name()
            );
        }

        // Presence: card 2 is pulled out, then put back.
        for c in shelf.cards() {
            wait_count(c, "resident: listening", 2, Duration::from_secs(60));
        }
        let victim = CARDS - 1;
        shelf.card(victim).unwrap().power_cut();
        let absent = wait_presence(&lab, victim, false, Duration::from_secs(30));
        for i in 0..victim {
            assert!(
                scenario::node_by_mac(&lab.state, &mac(i))
                    .unwrap()
                    .node
                    .present,
                "card{i} kept running and stays present"
            );
        }
        let t_back = Instant::now();
        shelf.card(victim).unwrap().power_cycle().unwrap();
        shelf
            .card(victim)
            .unwrap()
            .wait_for(release::READY_LINE, Duration::from_secs(240))
            .unwrap();
        let back = wait_presence(&lab, victim, true, Duration::from_secs(30));
        let stats = master.stop().unwrap().unwrap();
        eprintln!(
            "service: prepare {:.1} s (reset by the agents, burn, hold), warm boot {:.1} s; card{victim} absent {:.1} s after QEMU quit, present {:.1} s after Ready ({:.1} s after power-on); master {} artifact bytes, {} commands; total {:.1} s",
            prepare.as_secs_f64(),
            warm.as_secs_f64(),
            absent.as_secs_f64(),
            back.as_secs_f64(),
            t_back.elapsed().as_secs_f64(),
            stats.artifact_bytes,
            stats.commands_sent,
            t0.elapsed().as_secs_f64()
        );
        drop(shelf);
    }

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn failed_releases_roll_back_on_their_own() {
        const DEADLINE_S: u64 = 20;
        let _one = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let p = Prelude::start(env!("CARGO_TARGET_TMPDIR"), "service-rollback").unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
        let mut shelf = Shelf::start(1, |i| {
            let mut c = in_service(&lab, i, &logs);
            c.append = c.append.replace(
                "shelfboot.watchdog=120",
                "shelfboot.watchdog=60 shelfboot.maxtries=1",
            );
            c
        })
        .unwrap();
        let mut master = MasterRun::start(shelf.backplane(), &lab.state).unwrap();
        shelf
            .wait_all(release::READY_LINE, Duration::from_secs(300))
            .unwrap();
        wait_count(
            shelf.card(0).unwrap(),
            "resident: listening",
            1,
            Duration::from_secs(30),
        );
        let good = scenario::node_by_mac(&lab.state, &mac(0)).unwrap();
        let good_digest = good.node.inventory.clone();

        scenario::import_derived(
            &lab,
            &Derived {
                version: "1.2.0".into(),
                heartbeat: Some("1.2.0".into()),
                health_deadline_s: Some(DEADLINE_S),
                heartbeat_broken: true,
                ..Derived::default()
            },
        )
        .unwrap();
        let t_reset = Instant::now();
        eprintln!(
            "reset: {}",
            scenario::fleet_order(
                &lab.state,
                FleetAction::Reset,
                Some(mac(0).parse().unwrap())
            )
            .unwrap()
        );
        let card = shelf.card(0).unwrap();
        card.wait_for(
            "SHELFBOOT: Reset ordered by the master",
            Duration::from_secs(30),
        )
        .unwrap();
        card.wait_for(
            "HEARTBEAT v1.2.0 crashed at start",
            Duration::from_secs(300),
        )
        .unwrap();
        let failed = card
            .wait_for(
                "did not succeed within",
                Duration::from_secs(DEADLINE_S + 30),
            )
            .unwrap();
        eprintln!(
            "health verdict {:.1} s after the reset: {}",
            t_reset.elapsed().as_secs_f64(),
            failed.line
        );
        assert!(
            failed.line.contains("rolled back to set"),
            "{}",
            failed.line
        );
        card.wait_for(
            "which this card rolled back from: booting set",
            Duration::from_secs(120),
        )
        .unwrap();
        let ready = card
            .wait_for(release::READY_LINE, Duration::from_secs(240))
            .unwrap();
        assert!(
            ready.line.contains("heartbeat-1.0.0") && !ready.line.contains("heartbeat-1.2.0"),
            "{}",
            ready.line
        );
        assert_eq!(card.boots(), 1, "the harness never power-cycled it");
        let console = card.console();
        assert!(
            !console.contains("HEARTBEAT v1.2.0 starting"),
            "the broken heartbeat never ran"
        );
        std::thread::sleep(Duration::from_secs(3));
        let v = scenario::node_by_mac(&lab.state, &mac(0)).unwrap();
        let reason = v.node.state_reason.clone().unwrap_or_default();
        assert!(reason.contains("rolled back"), "{:?}", v.node);
        assert_eq!(v.node.inventory, good_digest, "flash runs 1.0 again");
        eprintln!(
            "health rollback: card back on 1.0 {:.1} s after the reset; node: {} ({reason})",
            t_reset.elapsed().as_secs_f64(),
            v.node.state,
        );

        // A release whose kernel hangs, upgraded in service: only the watchdog helps.
        scenario::import_derived(
            &lab,
            &Derived {
                version: "1.3.0".into(),
                heartbeat: Some("1.3.0".into()),
                kernel_hangs: true,
                ..Derived::default()
            },
        )
        .unwrap();
        let t_up = Instant::now();
        eprintln!(
            "upgrade: {}",
            scenario::master_cli(&lab.state, &["upgrade", &mac(0)])
                .unwrap()
                .trim_end()
        );
        let card = shelf.card(0).unwrap();
        card.wait_for(
            "SHELFBOOT: kexec into the upgraded set",
            Duration::from_secs(120),
        )
        .unwrap();
        card.wait_for("Kernel panic", Duration::from_secs(60))
            .unwrap();
        let back = card
            .wait_for("starting as PID 1", Duration::from_secs(120))
            .unwrap();
        let reset_after = t_up.elapsed();
        eprintln!(
            "hang: the watchdog reset the card {:.1} s after the upgrade order",
            reset_after.as_secs_f64()
        );
        card.wait_for("committed set rolled back", Duration::from_secs(60))
            .unwrap();
        let ready = card
            .wait_for(release::READY_LINE, Duration::from_secs(120))
            .unwrap();
        assert!(
            ready.line.contains("heartbeat-1.0.0") && !ready.line.contains("heartbeat-1.3.0"),
            "{}",
            ready.line
        );
        assert_eq!(card.boots(), 1, "the harness never power-cycled it");
        std::thread::sleep(Duration::from_secs(3));
        let stats = master.stop().unwrap().unwrap();
        let v = scenario::node_by_mac(&lab.state, &mac(0)).unwrap();
        let reason = v.node.state_reason.clone().unwrap_or_default();
        assert!(reason.contains("rolled back"), "{:?}", v.node);
        assert_eq!(v.node.inventory, good_digest, "flash runs 1.0 again");
        eprintln!(
            "hang rollback: watchdog reset {:.1} s after the order, 1.0 Ready {:.1} s after the reset; node: {} ({reason}); master {} artifact bytes; total {:.1} s",
            reset_after.as_secs_f64(),
            ready.elapsed.saturating_sub(back.elapsed).as_secs_f64(),
            v.node.state,
            stats.artifact_bytes,
            t0.elapsed().as_secs_f64()
        );
        drop(shelf);
    }

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn upgrade_in_service_kexecs_without_a_reset() {
        let _one = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let p = Prelude::start(env!("CARGO_TARGET_TMPDIR"), "service-upgrade").unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
        let mut shelf = Shelf::start(1, |i| in_service(&lab, i, &logs)).unwrap();
        let mut master = MasterRun::start(shelf.backplane(), &lab.state).unwrap();
        let pristine = shelf
            .wait_all(release::READY_LINE, Duration::from_secs(300))
            .unwrap()[0]
            .elapsed;
        eprintln!(
            "cold pristine boot: Ready {:.1} s after power-on",
            pristine.as_secs_f64()
        );
        wait_count(
            shelf.card(0).unwrap(),
            "resident: listening",
            1,
            Duration::from_secs(30),
        );
        let mut downtimes = Vec::new();
        for (n, version) in ["1.1.0", "1.2.0", "1.3.0"].into_iter().enumerate() {
            let before = scenario::node_by_mac(&lab.state, &mac(0)).unwrap();
            let old = before
                .node
                .inventory
                .as_ref()
                .and_then(|i| i.digest)
                .map(|d| d.to_string())
                .unwrap();
            scenario::import_derived(
                &lab,
                &Derived {
                    version: version.into(),
                    heartbeat: Some(version.into()),
                    extra_packages: 1,
                    // A deadline of its own: a boot image (command line) of its own.
                    health_deadline_s: Some(60 + n as u64),
                    ..Derived::default()
                },
            )
            .unwrap();
            // The CLI waits for the wave; the console is watched meanwhile, so the times
            // of the kexec and Ready lines are when they appear.
            let state = lab.state.clone();
            let cli = std::thread::spawn(move || {
                scenario::master_cli(&state, &["upgrade", "--wave", "1"])
            });
            let card = shelf.card(0).unwrap();
            card.wait_for(
                "SHELFBOOT: upgrade ordered by the master",
                Duration::from_secs(60),
            )
            .unwrap();
            let kexec = card
                .wait_for(
                    "SHELFBOOT: kexec into the upgraded set",
                    Duration::from_secs(180),
                )
                .unwrap();
            let ready = card
                .wait_for(release::READY_LINE, Duration::from_secs(120))
                .unwrap();
            let out = cli.join().unwrap().unwrap();
            eprintln!("master upgrade --wave 1:\n{}", out.trim_end());
            assert!(out.contains("upgraded 1 card(s)"), "{out}");
            let down = ready.elapsed.saturating_sub(kexec.elapsed);
            assert!(
                ready.line.contains(&format!("heartbeat-{version}"))
                    && ready.line.contains(&format!("lab-pkg-00-{version}")),
                "{}",
                ready.line
            );
            card.wait_for("passed after", Duration::from_secs(60))
                .unwrap();
            let inv = scenario::last_flash_inventory(&card.console()).unwrap();
            assert_eq!(
                inv.previous.as_deref(),
                Some(old.as_str()),
                "the set before the upgrade stays on flash for rollback: {inv:?}"
            );
            assert_eq!(
                card.boots(),
                1,
                "no reset: the harness never restarted QEMU"
            );
            eprintln!(
                "upgrade to {version}: down {:.2} s (kexec to Ready)",
                down.as_secs_f64()
            );
            downtimes.push(down);
        }
        let console = shelf.card(0).unwrap().console();
        assert!(
            !console.contains("resetting into init"),
            "no upgrade turned into a reset"
        );
        let stats = master.stop().unwrap().unwrap();
        let mut sorted = downtimes.clone();
        sorted.sort();
        eprintln!(
            "upgrade in service: downtime median {:.2} s (runs {:?}); cold pristine boot {:.1} s; master {} artifact bytes; total {:.1} s",
            sorted[1].as_secs_f64(),
            downtimes
                .iter()
                .map(|d| format!("{:.2}", d.as_secs_f64()))
                .collect::<Vec<_>>(),
            pristine.as_secs_f64(),
            stats.artifact_bytes,
            t0.elapsed().as_secs_f64()
        );
        drop(shelf);
    }
}
