//! Tier-3 test-mode scenario (SHELFBOOT_TIER_QEMU=1): one lc100 card with block2mtd
//! flash and `master serve` on the backplane.
//!
//! 1. pristine boot: commit, kexec, validate, Ready (base, heartbeat). Power off; the
//!    flash image's sha256 and the inventory line init printed are recorded.
//! 2. `test-mode MAC --package testpkg=1.0.0` (through the serving master's control
//!    socket); power cycle: the plan is RAM-only, the card fetches it into tmpfs, kexecs
//!    the RAM boot image with the RAM store carried in its initramfs, the kexec'd init
//!    validates from RAM and switch_roots over loop devices: testpkg prints its line, the
//!    Ready line lists testpkg, the node DB says `test`. Power off: the flash image is
//!    byte-identical and init's inventory line (digest, generation, boot attempts) is
//!    unchanged.
//! 3. `test-mode MAC --off`; power cycle: the committed flash set boots (validation
//!    only: zero artifact bytes from a fresh master run), no testpkg.
//!
//! The init binary: SHELFBOOT_INIT_BIN, else built with cargo (init-release, musl).

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use shelfboot_master::control::Request;
    use shelfboot_master::master::Master;
    use shelfboot_master::store::NodeState;
    use shelfboot_qemu::card::Card;
    use shelfboot_qemu::kernel;
    use shelfboot_qemu::release;
    use shelfboot_qemu::scenario::{self, Lab};
    use shelfboot_qemu::shelf::{Shelf, card_mac};

    fn gated() -> bool {
        if std::env::var("SHELFBOOT_TIER_QEMU").as_deref() == Ok("1") {
            return true;
        }
        eprintln!(
            "skipped: needs root, QEMU and the Debian kernel; run with SHELFBOOT_TIER_QEMU=1"
        );
        false
    }

    /// The first 128 KiB block (offset) where two images differ, `None` if identical.
    fn first_difference(a: &Path, b: &Path) -> Option<u64> {
        let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
        if a.len() != b.len() {
            return Some(a.len().min(b.len()) as u64);
        }
        a.chunks(128 << 10)
            .zip(b.chunks(128 << 10))
            .position(|(x, y)| x != y)
            .map(|i| i as u64 * (128 << 10))
    }

    fn node_state(lab: &Lab, mac: &str) -> NodeState {
        let m = Master::open(&lab.state).unwrap();
        let nodes = m.nodes().unwrap();
        let v = nodes
            .iter()
            .find(|v| v.node.identity.mac.to_string() == mac)
            .unwrap_or_else(|| panic!("{mac} is not in the node DB"));
        v.node.state
    }

    /// Waits until the console of the current boot contains `text`.
    fn wait_console(card: &mut Card, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if card.console().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    #[test]
    fn test_mode_runs_from_ram_and_leaves_flash_unchanged() {
        if !gated() {
            return;
        }
        let _ = env_logger::builder().is_test(true).try_init();
        let t0 = Instant::now();
        let k = kernel::acquire(&kernel::cache_dir(), false).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lab-logs/testmode");
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).unwrap();
        let init = scenario::init_binary().unwrap();
        let lab = scenario::prepare(&k, dir, &init).unwrap();
        let flash = lab.dir.join("flash-0.img");
        let mac = shelfboot_qemu::backplane::mac_string(&card_mac(0));
        eprintln!(
            "release built and imported in {:.1} s",
            t0.elapsed().as_secs_f64()
        );

        // 1. Pristine boot to Ready.
        let t1 = Instant::now();
        let mut shelf =
            Shelf::start(1, |i| scenario::card_config(&lab, i, &logs).unwrap()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let master = scenario::spawn_master(shelf.backplane(), &lab.state, stop.clone()).unwrap();
        let r = shelf
            .wait_all(release::READY_LINE, Duration::from_secs(420))
            .unwrap();
        eprintln!(
            "pristine: Ready after {:.1} s: {}",
            t1.elapsed().as_secs_f64(),
            r[0].line
        );
        assert!(!r[0].line.contains("testpkg"), "{}", r[0].line);
        // The stored image marked the set ready (and synced) before switch_root.
        std::thread::sleep(Duration::from_secs(2));
        let card = shelf.card(0).unwrap();
        // As the stored image read it (before it marked the set ready).
        let committed = scenario::last_flash_inventory(&card.console())
            .expect("init printed the committed set");
        card.power_cut();
        let flash_before = lab.dir.join("flash-0.before-test.img");
        std::fs::copy(&flash, &flash_before).unwrap();
        eprintln!("flash after the pristine boot: {committed:?}");

        // 2. Test mode: testpkg from RAM.
        let reply = shelfboot_master::cli::run_request(
            &lab.state,
            Request::TestMode {
                mac: mac.parse().unwrap(),
                packages: vec!["testpkg=1.0.0".into()],
                off: false,
            },
        )
        .unwrap();
        eprintln!("test-mode: {reply:?}");
        let t2 = Instant::now();
        let card = shelf.card(0).unwrap();
        card.power_cycle().unwrap();
        let ready = card
            .wait_for(release::READY_LINE, Duration::from_secs(420))
            .unwrap();
        let test_boot = t2.elapsed();
        eprintln!(
            "test mode: Ready after {:.1} s: {}",
            test_boot.as_secs_f64(),
            ready.line
        );
        assert!(
            ready.line.contains("testpkg-1.0.0") && ready.line.contains("base-1.0.0"),
            "{}",
            ready.line
        );
        assert!(
            wait_console(card, release::TESTPKG_LINE, Duration::from_secs(30)),
            "testpkg never printed {}",
            release::TESTPKG_LINE
        );
        let console = card.console();
        for want in [
            "test-mode plan: fetching into RAM, flash untouched",
            "kexec: sync and reboot into the test-mode image",
            "config: test            true",
            "the RAM store holds the test-mode plan: validated",
            "switch_root: exec",
        ] {
            assert!(console.contains(want), "console lacks {want:?}");
        }
        // Both kernels of the test boot read the committed set with the same generation
        // and boot counter: nothing was counted or committed in between.
        let test_lines: Vec<_> = console
            .lines()
            .filter_map(scenario::flash_inventory)
            .collect();
        assert_eq!(test_lines.len(), 2, "one inventory line per kernel");
        assert_eq!(test_lines[0], test_lines[1]);
        assert_eq!(test_lines[0].digest, committed.digest);
        assert_eq!(test_lines[0].artifacts, committed.artifacts);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(node_state(&lab, &mac), NodeState::Test);
        card.power_cut();
        assert_eq!(
            first_difference(&flash, &flash_before),
            None,
            "test mode changed the flash image (first differing 128 KiB block)"
        );
        stop.store(true, Ordering::Relaxed);
        let s = master.join().unwrap().unwrap();
        eprintln!(
            "pristine + test boot: master sent {} artifact bytes, {} fetch / {} continue plans",
            s.artifact_bytes, s.plans_fetch, s.plans_continue
        );

        // 3. Test mode off: the committed flash set, validation only.
        let stop = Arc::new(AtomicBool::new(false));
        let master = scenario::spawn_master(shelf.backplane(), &lab.state, stop.clone()).unwrap();
        shelfboot_master::cli::run_request(
            &lab.state,
            Request::TestMode {
                mac: mac.parse().unwrap(),
                packages: vec![],
                off: true,
            },
        )
        .unwrap();
        let t3 = Instant::now();
        let card = shelf.card(0).unwrap();
        card.power_cycle().unwrap();
        let ready = card
            .wait_for(release::READY_LINE, Duration::from_secs(300))
            .unwrap();
        let back = t3.elapsed();
        eprintln!(
            "test mode off: Ready after {:.1} s: {}",
            back.as_secs_f64(),
            ready.line
        );
        assert!(!ready.line.contains("testpkg"), "{}", ready.line);
        assert!(ready.line.contains("heartbeat-1.0.0"), "{}", ready.line);
        std::thread::sleep(Duration::from_secs(3));
        let console = card.console();
        assert!(
            !console.contains(release::TESTPKG_LINE),
            "testpkg ran again"
        );
        assert_eq!(scenario::bytes_to_fetch(&console), 0, "nothing fetched");
        // The cold init after the trial reads exactly what the trial's kernels read.
        let first = console.lines().find_map(scenario::flash_inventory);
        assert_eq!(
            first.as_ref(),
            Some(&test_lines[0]),
            "inventory after the trial"
        );
        stop.store(true, Ordering::Relaxed);
        let s = master.join().unwrap().unwrap();
        eprintln!(
            "after test mode: master sent {} artifact bytes, {} fetch / {} continue plans; total {:.1} s",
            s.artifact_bytes,
            s.plans_fetch,
            s.plans_continue,
            t0.elapsed().as_secs_f64()
        );
        assert_eq!(s.artifact_bytes, 0, "the committed set only validates");
        assert_eq!(s.plans_fetch, 0);
        assert_eq!(node_state(&lab, &mac), NodeState::Ready);
        drop(shelf);
    }
}
