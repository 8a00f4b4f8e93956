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
//! `prepare_all_then_system_warm_boot` (QEMU tier): two pristine cards are
//! registered, `master prepare` (through the serving master's control socket) marks both,
//! then they power on (the chassis reset). Each gets a BurnNow before its plan, fetches,
//! commits, prints the hold line and holds; the node database shows both `ready`
//! ("prepared, holding for warm boot"). A fresh serve run then orders `warm-boot`: each
//! card restarts its conversation, gets Continue, kexecs its stored image, validates and
//! is Ready; that serve run sent 0 artifact bytes and no Fetch plan.
//!
//! The init binary: SHELFBOOT_INIT_BIN, else built here with cargo (init-release, musl).

#[cfg(test)]
mod tests {
    use std::path::Path;
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

    /// Sends a fleet order through the control socket, retrying while the serve run that
    /// was just started has not bound it yet.
    fn order(state: &Path, action: shelfboot_master::state::FleetAction) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req = shelfboot_master::control::Request::Fleet {
                action,
                target: None,
            };
            match shelfboot_master::cli::run_request(state, req) {
                Ok(r) => return format!("{r:?}"),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{action}: not yet ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("{action} failed: {e}"),
            }
        }
    }

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn prepare_all_then_system_warm_boot() {
        use shelfboot_master::state::FleetAction;
        use shelfboot_master::store::{NodeIdentity, Store as _};

        let p = Prelude::start(env!("CARGO_TARGET_TMPDIR"), "fleet-prepare").unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
        let state = lab.state.clone();
        const CARDS: usize = 2;
        let macs: Vec<String> = (0..CARDS)
            .map(|i| shelfboot_qemu::backplane::mac_string(&card_mac(i)))
            .collect();

        // The chassis inventory: both cards known before they ever booted.
        {
            let mut m = Master::open(&state).unwrap();
            for (i, mac) in macs.iter().enumerate() {
                let id = NodeIdentity {
                    mac: mac.parse().unwrap(),
                    card_type: scenario::card_type(i).into(),
                    arch: "x86_64".parse().unwrap(),
                    shelf: 0,
                    slot: u32::try_from(i + 1).unwrap(),
                    hw_rev: "unknown".into(),
                    features: scenario::card_features(i)
                        .iter()
                        .map(|f| f.to_string())
                        .collect(),
                };
                m.add_node(&id, None).unwrap();
            }
        }

        // Power on, serve, `master prepare`, then the chassis reset (the harness's power
        // cycle; the first boot is still in its kernel when it is cut).
        let mut shelf =
            Shelf::start(CARDS, |i| scenario::card_config(&lab, i, &logs).unwrap()).unwrap();
        let mut master = scenario::MasterRun::start(shelf.backplane(), &state).unwrap();
        let reply = order(&state, FleetAction::Prepare);
        eprintln!("prepare: {reply}");
        let t_prepare = Instant::now();
        shelf.power_cycle_all().unwrap();
        let held = shelf
            .wait_all(
                "SHELFBOOT: set committed; holding for the master's warm boot",
                Duration::from_secs(300),
            )
            .unwrap();
        let prepare = t_prepare.elapsed();
        for h in &held {
            eprintln!("held after {:.1} s: {}", h.elapsed.as_secs_f64(), h.line);
        }
        // Holding: no hand-off, no Ready line, for a while.
        std::thread::sleep(Duration::from_secs(5));
        for c in shelf.cards() {
            let console = c.console();
            assert!(!console.contains(release::READY_LINE), "a held card booted");
            assert!(!console.contains("kexec: loading"), "a held card kexec'd");
        }
        let s1 = master.stop().unwrap().unwrap();
        eprintln!(
            "prepare run: {} artifact bytes, {} fetch / {} continue plans, {} commands, {} ready",
            s1.artifact_bytes, s1.plans_fetch, s1.plans_continue, s1.commands_sent, s1.ready
        );
        assert!(s1.plans_fetch >= CARDS as u64, "pristine cards fetched");
        {
            let m = Master::open(&state).unwrap();
            for mac in &macs {
                let mac = mac.parse().unwrap();
                let n = m.store().node(&mac).unwrap().unwrap();
                assert_eq!(n.state, NodeState::Ready, "{n:?}");
                assert_eq!(
                    n.state_reason.as_deref(),
                    Some("prepared, holding for warm boot"),
                    "{n:?}"
                );
                assert!(!m.prepare_pending(&mac).unwrap());
            }
        }

        // A fresh serve run counts the warm boot alone.
        let mut master = scenario::MasterRun::start(shelf.backplane(), &state).unwrap();
        let t_warm = Instant::now();
        let reply = order(&state, FleetAction::WarmBoot);
        eprintln!("warm-boot: {reply}");
        let ready = shelf
            .wait_all(release::READY_LINE, Duration::from_secs(240))
            .unwrap();
        let warm = t_warm.elapsed();
        for (i, r) in ready.iter().enumerate() {
            eprintln!(
                "card{i} Ready {:.1} s after the warm boot: {}",
                warm.as_secs_f64(),
                r.line
            );
            assert!(
                r.line.contains("base-1.0.0") && r.line.contains("heartbeat-1.0.0"),
                "{}",
                r.line
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        for c in shelf.cards() {
            let console = c.console();
            assert!(
                console.contains("SHELFBOOT: warm boot ordered by the master"),
                "{}",
                c.name()
            );
            assert!(console.contains("kexec: sync and reboot"), "{}", c.name());
        }
        let s2 = master.stop().unwrap().unwrap();
        eprintln!(
            "prepare: both held {:.1} s after the reset; warm boot: both Ready in {:.1} s; warm run: {} artifact bytes, {} fetch / {} continue plans, {} commands; total {:.1} s",
            prepare.as_secs_f64(),
            warm.as_secs_f64(),
            s2.artifact_bytes,
            s2.plans_fetch,
            s2.plans_continue,
            s2.commands_sent,
            t0.elapsed().as_secs_f64()
        );
        assert_eq!(s2.artifact_bytes, 0, "the warm boot only validates");
        assert_eq!(s2.plans_fetch, 0, "the warm boot only validates");
        assert!(s2.plans_continue >= CARDS as u64);
        drop(shelf);
    }
}
