//! Tier-3 flash-fault scenarios: real init, real UBI, `master serve` in the
//! backplane namespace, the lab release (as in `e2e.rs`).
//!
//! * `nand_with_bad_blocks_installs` (QEMU tier): one card whose flash is a
//!   32 MiB nandsim chip with three factory-bad eraseblocks (`badblocks=`) installs the
//!   whole set from erased NAND and is Ready. UBI reports the bad PEBs at attach (kernel
//!   log at `loglevel=6`) and writes around them. nandsim keeps its data in guest RAM, so
//!   a kexec would find it empty: the card boots with `shelfboot.stored=1` (the
//!   stored-image mode), in which init fetches, commits and switch_roots into the
//!   packages without kexec.
//! * `flash_too_small_keeps_the_committed_set` (QEMU tier): one card with a
//!   16 MiB block2mtd flash installs release 1.0 (10.5 MB) and is Ready; then release 1.1
//!   adds an 8 MiB `bulk` package that does not fit beside it. After a power cycle the
//!   card reports NoSpace to the master (no artifact byte moves, nothing is written), keeps
//!   its committed set and boots it on its own when no usable plan comes
//!   (`shelfboot.master_timeout`); the stored image is refused the same way, and
//!   `master nodes` shows `failed (NoSpace ...)`. The operator rolls the class back to 1.0
//!   and orders `master prepare`: the card, still in its init's conversation, executes
//!   the signed BurnNow, validates its kept set, holds, and after `master warm-boot` is
//!   Ready; the node is ready again.
//!
//! The init binary: SHELFBOOT_INIT_BIN, else built here with cargo (init-release, musl).

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use shelfboot_master::store::NodeState;
    use shelfboot_proto::id::Arch;
    use shelfboot_qemu::card::{CardConfig, create_erased_image};
    use shelfboot_qemu::flash::Nandsim;
    use shelfboot_qemu::release::{self, Derived};
    use shelfboot_qemu::scenario;
    use shelfboot_qemu::scenario::Prelude;
    use shelfboot_qemu::shelf::{Shelf, card_mac};

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn nand_with_bad_blocks_installs() {
        let p = Prelude::start(env!("CARGO_TARGET_TMPDIR"), "flashfaults-nand").unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
        let (k, tmp, init) = (p.kernel.clone(), &p.work, p.init.clone());
        let nand = Nandsim {
            overridesize: Some(8),
            badblocks: vec![3, 17, 90],
            ..Nandsim::default()
        };
        let initrd = release::initramfs_with_flash(
            &k,
            &init,
            &lab.state.join("plan.anchor"),
            vec![("nandsim".into(), nand.params())],
        )
        .unwrap();
        let initrd_path = tmp.path().join("nand-initramfs.cpio.gz");
        std::fs::write(&initrd_path, initrd).unwrap();
        let mut cfg = CardConfig::new("card0", &k.qemu_kernel, &initrd_path, &logs);
        cfg.append = format!(
            "{} shelfboot.stored=1 loglevel=6",
            release::card_append(
                Arch::X86_64,
                scenario::card_type(0),
                1,
                &[],
                scenario::MASTER_TIMEOUT_S
            )
        );
        cfg.memory_mib = nand.memory_mib() + 64;

        let t1 = Instant::now();
        let mut shelf = Shelf::start(1, |_| cfg.clone()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let master = scenario::spawn_master(shelf.backplane(), &lab.state, stop.clone()).unwrap();
        let r = shelf
            .wait_all(release::READY_LINE, Duration::from_secs(240))
            .unwrap();
        let ready = t1.elapsed();
        eprintln!(
            "NAND card Ready after {:.1} s: {}",
            ready.as_secs_f64(),
            r[0].line
        );
        assert!(
            r[0].line.contains("base-1.0.0") && r[0].line.contains("heartbeat-1.0.0"),
            "{}",
            r[0].line
        );
        let console = shelf.card(0).unwrap().console();
        // UBI found the three factory-bad blocks and attached around them.
        let attach = console
            .lines()
            .find(|l| l.contains("bad PEBs:"))
            .unwrap_or_else(|| panic!("no UBI attach report on the console"));
        eprintln!("UBI: {attach}");
        assert!(attach.contains("bad PEBs: 3"), "{attach}");
        assert!(console.contains("mtd0"), "the NAND is the flash init uses");
        let to_fetch = scenario::bytes_to_fetch(&console);
        assert!(
            to_fetch > 10_000_000,
            "the whole set was written: {to_fetch}"
        );
        assert!(console.contains("set marked ready on flash"));
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let s = master.join().unwrap().unwrap();
        eprintln!(
            "NAND: Ready in {:.1} s, {to_fetch} bytes written to NAND; master {} artifact bytes; total {:.1} s",
            ready.as_secs_f64(),
            s.artifact_bytes,
            t0.elapsed().as_secs_f64()
        );
        let v = scenario::node_view(&lab.state, 0).unwrap();
        assert_eq!(v.node.state, NodeState::Ready, "{:?}", v.node);
        assert_eq!(v.in_sync, Some(true));
        drop(shelf);
    }

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn flash_too_small_keeps_the_committed_set() {
        let p = Prelude::start(env!("CARGO_TARGET_TMPDIR"), "flashfaults-nospace").unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
        let master_bin = scenario::master_binary().unwrap();
        eprintln!("master CLI: {}", master_bin.display());
        // 16 MiB: release 1.0 (10.5 MB) fits, 1.0 + 8 MiB more does not.
        create_erased_image(&lab.dir.join("flash-0.img"), 16 << 20).unwrap();
        let mut cfg = scenario::card_config(&lab, 0, &logs).unwrap();
        // No usable plan within 60 s: boot the committed set alone. Long enough that, in
        // the stored image's stage, the operator's `nodes`, `rollback` and `prepare` (three
        // CLI runs, slow on a loaded host) reach the card while it still asks.
        cfg.append = release::card_append(Arch::X86_64, scenario::card_type(0), 1, &[], 60);

        let mut shelf = Shelf::start(1, |_| cfg.clone()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let master = scenario::spawn_master(shelf.backplane(), &lab.state, stop.clone()).unwrap();
        let r = shelf
            .wait_all(release::READY_LINE, Duration::from_secs(240))
            .unwrap();
        eprintln!(
            "1.0 Ready after {:.1} s: {}",
            r[0].elapsed.as_secs_f64(),
            r[0].line
        );
        // Let the stored image's Ready repeats reach the master.
        std::thread::sleep(Duration::from_secs(2));
        scenario::import_derived(
            &lab,
            &Derived {
                version: "1.1.0".into(),
                heartbeat: None,
                bulk_bytes: 8 << 20,
                extra_packages: 0,
                health_deadline_s: None,
                heartbeat_broken: false,
                kernel_hangs: false,
                ram_first: vec![],
            },
        )
        .unwrap();
        stop.store(true, Ordering::Relaxed);
        master.join().unwrap().unwrap();
        let before = scenario::node_view(&lab.state, 0).unwrap();
        assert_eq!(before.node.state, NodeState::Ready, "{:?}", before.node);
        let committed = before.node.inventory.clone().and_then(|i| i.digest);
        assert!(committed.is_some(), "{:?}", before.node);
        assert_eq!(before.in_sync, Some(false), "1.1 is planned, 1.0 installed");

        let stop = Arc::new(AtomicBool::new(false));
        let master = scenario::spawn_master(shelf.backplane(), &lab.state, stop.clone()).unwrap();
        let t1 = Instant::now();
        shelf.power_cycle_all().unwrap();
        let card = shelf.card(0).unwrap();
        // Stage 1 (power on): refused, then the committed set boots without a usable plan.
        let refused = card
            .wait_for("not enough flash", Duration::from_secs(120))
            .unwrap();
        eprintln!(
            "refused after {:.1} s: {}",
            refused.elapsed.as_secs_f64(),
            refused.line
        );
        let alone = card
            .wait_for(
                "booting the last committed set on my own",
                Duration::from_secs(150),
            )
            .unwrap();
        eprintln!("autonomous after {:.1} s", alone.elapsed.as_secs_f64());
        card.wait_for("kexec: sync and reboot", Duration::from_secs(60))
            .unwrap();
        // Stage 2 (the stored 1.0 image): refused again, and now the operator looks.
        let again = card
            .wait_for("not enough flash", Duration::from_secs(150))
            .unwrap();
        eprintln!(
            "stored image refused after {:.1} s",
            again.elapsed.as_secs_f64()
        );
        let mac = shelfboot_qemu::backplane::mac_string(&card_mac(0));
        let table = scenario::master_cli(&lab.state, &["nodes"]).unwrap();
        eprintln!("master nodes:\n{table}");
        let row = table
            .lines()
            .find(|l| l.contains(&mac))
            .unwrap_or_else(|| panic!("no row for {mac}"));
        assert!(row.contains("failed (NoSpace"), "{row}");
        assert!(row.contains("not enough flash"), "{row}");
        {
            let v = scenario::node_view(&lab.state, 0).unwrap();
            assert_eq!(v.node.state, NodeState::Failed, "{:?}", v.node);
            assert_eq!(
                v.node.inventory.and_then(|i| i.digest),
                committed,
                "the card's flash still holds the committed 1.0 set"
            );
        }
        // The operator fixes the cause (back to 1.0 for the class) and orders "prepare
        // now": the card, still in its init's conversation, hears the signed BurnNow,
        // asks at once instead of at its longest backoff, and validates.
        let out =
            scenario::master_cli(&lab.state, &["rollback", "lab", "--to", "lab-os@1.0.0"]).unwrap();
        eprintln!("master rollback: {}", out.trim());
        let out = scenario::master_cli(&lab.state, &["prepare"]).unwrap();
        eprintln!("master prepare: {}", out.trim());
        assert!(out.contains("BurnNow"), "{out}");
        let heard = card
            .wait_for("command BurnNow", Duration::from_secs(30))
            .unwrap();
        eprintln!("BurnNow heard after {:.1} s", heard.elapsed.as_secs_f64());
        card.wait_for("flash matches the plan: validated", Duration::from_secs(30))
            .unwrap();
        // A prepared card holds after Ready until the master's warm boot
        // (docs/conversation.md, "Hold").
        card.wait_for(
            "holding for the master's warm boot",
            Duration::from_secs(30),
        )
        .unwrap();
        let out = scenario::master_cli(&lab.state, &["warm-boot"]).unwrap();
        eprintln!("master warm-boot: {}", out.trim());
        let r = card
            .wait_for(release::READY_LINE, Duration::from_secs(120))
            .unwrap();
        let total = t1.elapsed();
        eprintln!(
            "Ready on the kept set after {:.1} s: {}",
            total.as_secs_f64(),
            r.line
        );
        assert!(
            r.line.contains("base-1.0.0") && r.line.contains("heartbeat-1.0.0"),
            "{}",
            r.line
        );
        assert!(!r.line.contains("bulk"), "{}", r.line);
        let console = card.console();
        assert!(
            !console.contains("agent: fetched"),
            "nothing was fetched for a plan that cannot fit"
        );
        assert_eq!(
            console.matches("on my own").count(),
            1,
            "only the power-on stage booted without a usable plan"
        );
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let s = master.join().unwrap().unwrap();
        eprintln!(
            "no space: refused, kept, booted alone, recovered by rollback + prepare in {:.1} s; master {} artifact bytes, {} card errors, {} fetch / {} continue plans, {} command copies; total {:.1} s",
            total.as_secs_f64(),
            s.artifact_bytes,
            s.card_errors,
            s.plans_fetch,
            s.plans_continue,
            s.commands_sent,
            t0.elapsed().as_secs_f64()
        );
        assert_eq!(s.artifact_bytes, 0, "a plan that cannot fit moves no byte");
        assert!(s.card_errors >= 2, "both stages reported NoSpace");
        // prepare and warm-boot, three copies each, plus the BurnNow sent with the
        // prepared card's plan (none if its Solicit repeated an answered nonce).
        assert!(
            (6..=7).contains(&s.commands_sent),
            "two orders, three copies each (+1): {}",
            s.commands_sent
        );
        assert!(s.plans_continue >= 1);
        let after = scenario::node_view(&lab.state, 0).unwrap();
        assert_eq!(after.node.state, NodeState::Ready, "{:?}", after.node);
        assert_eq!(after.in_sync, Some(true), "{:?}", after.node);
        assert_eq!(after.node.inventory.and_then(|i| i.digest), committed);
        drop(shelf);
    }
}
