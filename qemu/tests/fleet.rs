//! Tier-3 fleet scenarios on the lab release and `master serve` in the backplane
//! namespace, as in `e2e.rs`.
//!
//! `update_fetches_only_what_changed` (QEMU tier): one card installs release
//! 1.0 from erased flash and is Ready; release 1.1 (only `heartbeat` changes: 1.1.0 with
//! new files; boot images and base are the same files, so the same artifacts) is imported
//! through the serving master's control socket; the card is power-cycled. It fetches only
//! heartbeat (its console says "fetched X of Y" with Y = heartbeat's size; the master's
//! `artifact_bytes` is a few times that at most, far below any unchanged artifact),
//! commits, kexecs the (unchanged) stored boot image, validates and is Ready with
//! heartbeat 1.1.0 on the same base 1.0.0.
//!
//! "Prepare all nodes now" and the system-wide warm boot of a running shelf, through
//! the cards' resident agents, are in `service.rs`.
//!
//! The init binary: SHELFBOOT_INIT_BIN, else built here with cargo (init-release, musl).

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use shelfboot_master::state::Master;
    use shelfboot_master::store::NodeState;
    use shelfboot_qemu::release::{self, Derived};
    use shelfboot_qemu::scenario;
    use shelfboot_qemu::scenario::Prelude;
    use shelfboot_qemu::shelf::{Shelf, card_mac};

    fn size_of(rel: &release::Release, file: &str) -> u64 {
        rel.sizes
            .iter()
            .find(|(f, _)| f == file)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("{file} is not in the release: {:?}", rel.sizes))
    }

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn update_fetches_only_what_changed() {
        let p = Prelude::start(env!("CARGO_TARGET_TMPDIR"), "fleet-update").unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
        let state = lab.state.clone();
        let base_size = size_of(&lab.release, "base-1.0.0-x86_64.sqfs");

        // Release 1.0 from erased flash.
        let mut shelf =
            Shelf::start(1, |i| scenario::card_config(&lab, i, &logs).unwrap()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let master = scenario::spawn_master(shelf.backplane(), &state, stop.clone()).unwrap();
        let r = shelf
            .wait_all(release::READY_LINE, Duration::from_secs(240))
            .unwrap();
        eprintln!(
            "1.0: Ready after {:.1} s: {}",
            r[0].elapsed.as_secs_f64(),
            r[0].line
        );
        assert!(
            r[0].line.contains("base-1.0.0") && r[0].line.contains("heartbeat-1.0.0"),
            "{}",
            r[0].line
        );

        // Release 1.1 imported while the master serves (the operator's path).
        let rel = scenario::import_derived(
            &lab,
            &Derived {
                version: "1.1.0".into(),
                heartbeat: Some("1.1.0".into()),
                bulk_bytes: 0,
                extra_packages: 0,
                health_deadline_s: None,
                heartbeat_broken: false,
                kernel_hangs: false,
                ram_first: vec![],
            },
        )
        .unwrap();
        let hb = size_of(&rel, "heartbeat-1.1.0-x86_64.sqfs");
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        let s1 = master.join().unwrap().unwrap();
        assert_eq!(s1.control_requests, 1, "the import went through the socket");

        // A new master run counts the update alone; the card is power-cycled.
        let stop = Arc::new(AtomicBool::new(false));
        let master = scenario::spawn_master(shelf.backplane(), &state, stop.clone()).unwrap();
        let t1 = Instant::now();
        shelf.power_cycle_all().unwrap();
        let r = shelf
            .wait_all(release::READY_LINE, Duration::from_secs(200))
            .unwrap();
        let update = t1.elapsed();
        eprintln!(
            "1.1: Ready after {:.1} s: {}",
            update.as_secs_f64(),
            r[0].line
        );
        assert!(
            r[0].line.contains("base-1.0.0") && r[0].line.contains("heartbeat-1.1.0"),
            "{}",
            r[0].line
        );
        assert!(!r[0].line.contains("heartbeat-1.0.0"), "{}", r[0].line);
        shelf
            .wait_all(release::HEARTBEAT_LINE, Duration::from_secs(30))
            .unwrap();
        let card = shelf.card(0).unwrap();
        let console = card.console();
        assert!(
            console.contains("HEARTBEAT v1.1.0 starting"),
            "the new heartbeat's files run"
        );
        // The card's own account: the plan needed exactly heartbeat's bytes.
        let to_fetch = scenario::bytes_to_fetch(&console);
        assert_eq!(
            to_fetch, hb,
            "card fetched {to_fetch} bytes, heartbeat 1.1.0 is {hb}"
        );
        assert!(
            console.contains("kexec: sync and reboot"),
            "the committed set boots through its stored image"
        );
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let s2 = master.join().unwrap().unwrap();
        eprintln!(
            "update: Ready in {:.1} s; card fetched {to_fetch} of plan bytes (heartbeat 1.1.0 = {hb}, base = {base_size}); master: {} artifact bytes, {} fetch / {} continue plans, {} sessions; total {:.1} s",
            update.as_secs_f64(),
            s2.artifact_bytes,
            s2.plans_fetch,
            s2.plans_continue,
            s2.sessions.len(),
            t0.elapsed().as_secs_f64()
        );
        // First pass plus repairs of one small artifact: far below any unchanged one.
        assert!(
            s2.artifact_bytes >= hb && s2.artifact_bytes <= 8 * hb,
            "master sent {} artifact bytes for a {hb}-byte change",
            s2.artifact_bytes
        );
        assert!(s2.artifact_bytes < base_size / 10);
        assert!(
            s2.plans_fetch >= 1,
            "the power-on stage asked for the change"
        );
        assert!(s2.plans_continue >= 1, "the stored image only validated");

        let m = Master::open(&state).unwrap();
        let mac = shelfboot_qemu::backplane::mac_string(&card_mac(0));
        let v = m
            .nodes()
            .unwrap()
            .into_iter()
            .find(|v| v.node.identity.mac.to_string() == mac)
            .unwrap();
        assert_eq!(v.node.state, NodeState::Ready, "{:?}", v.node);
        assert_eq!(v.in_sync, Some(true), "{:?}", v.node);
        assert_eq!(
            v.plan.as_ref().map(|p| p.release.to_string()),
            Some("lab-os@1.1.0".into())
        );
        drop(shelf);
    }
}
