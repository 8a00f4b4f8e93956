//! Tier-3 end-to-end scenarios: the lab release (qemu::release) imported into a real
//! master state, `master serve` (the library, on a thread inside the backplane namespace)
//! on the master veth, and cards booting our static init with block2mtd flash.
//!
//! `pristine_then_warm` (QEMU tier): SHELFBOOT_E2E_CARDS cards (default 3;
//! types lc100/fab10 alternating, every third card asks feature `diag`) boot from erased
//! flash: each commits its set, kexecs into its stored boot image, validates, switch_roots
//! into its packages and prints the Ready line; the node DB says ready. Then every card is
//! power-cut and started again: each only validates (a new master run counts zero
//! artifact bytes and only Continue plans) and is Ready again.
//!
//! `mixed_shelf_pristine_then_warm` (QEMU tier): the same two phases on a mixed shelf of
//! two cards in one class, card0 x86_64 (lc100) and card1 aarch64 (fab10, the lab's own
//! arm64 kernel under `qemu-system-aarch64 -M virt`): one release, each card gets its
//! architecture's boot image and package builds (the node DB's plan says which), both
//! reach Ready, and the warm cycle moves no artifact byte on either.
//!
//! The init binaries: SHELFBOOT_INIT_BIN (x86_64) and SHELFBOOT_INIT_BIN_AARCH64, else
//! built here with cargo (init-release, musl).

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use shelfboot_master::store::NodeState;
    use shelfboot_proto::id::Arch;
    use shelfboot_qemu::release;
    use shelfboot_qemu::scenario::Prelude;
    use shelfboot_qemu::scenario::{self, card_features, card_type};
    use shelfboot_qemu::shelf::Shelf;

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn pristine_then_warm() {
        let n: usize = std::env::var("SHELFBOOT_E2E_CARDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        shelf_pristine_then_warm("e2e", &[Arch::X86_64], n);
    }

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn mixed_shelf_pristine_then_warm() {
        shelf_pristine_then_warm("e2e-mixed", &[Arch::X86_64, Arch::Aarch64], 2);
    }

    /// `n` cards of `arches` in turn: pristine to Ready, then a warm cycle that moves no
    /// artifact byte.
    fn shelf_pristine_then_warm(name: &str, arches: &[Arch], n: usize) {
        let p = Prelude::start_arches(env!("CARGO_TARGET_TMPDIR"), name, arches).unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
        eprintln!("release: {:?}", lab.release.sizes);
        eprintln!(
            "release built and imported in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        let state = lab.state.clone();

        // Pristine boot.
        let configure = |i: usize| scenario::card_config(&lab, i, &logs).unwrap();
        let t1 = Instant::now();
        let mut shelf = Shelf::start(n, configure).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let master = scenario::spawn_master(shelf.backplane(), &state, stop.clone()).unwrap();
        // Deadlines are for a loaded shared host, not a quiet one. Every kexec is 25-31 s
        // with no console output at all (purgatory, then the XZ bzImage decompressed
        // under TCG; measured at load 9-12) before the stored kernel's first line, longer
        // on a busier host. The old 150 + 30 n s (warm: 90 + 20 n s) was within reach of
        // late kexecs: the likely story of "a card silent after its kexec" (docs/lab.md).
        let ready = shelf
            .wait_all(
                release::READY_LINE,
                Duration::from_secs(180 + 60 * n as u64),
            )
            .unwrap();
        let pristine = t1.elapsed();
        for (i, r) in ready.iter().enumerate() {
            eprintln!(
                "pristine: card{i} ({} on {}) Ready after {:.1} s: {}",
                card_type(i),
                lab.card_arch(i),
                r.elapsed.as_secs_f64(),
                r.line
            );
            assert!(
                r.line.contains("base-1.0.0") && r.line.contains("heartbeat-1.0.0"),
                "{}",
                r.line
            );
            assert_eq!(
                r.line.contains("diag-1.0.0"),
                !card_features(i).is_empty(),
                "{}",
                r.line
            );
        }
        shelf
            .wait_all(release::HEARTBEAT_LINE, Duration::from_secs(20))
            .unwrap();
        // The lab's own arm64 kernel boots clean (both stages): no kernel warning, no
        // driver that failed to probe (nandsim needs its ECC engine built in too).
        for (i, card) in shelf.cards().iter_mut().enumerate() {
            if lab.card_arch(i) == Arch::Aarch64 {
                let c = card.console();
                assert!(
                    !c.contains("[ cut here ]") && !c.contains("Could not scan"),
                    "card{i}: the arm64 kernel warned:\n{c}"
                );
            }
        }
        // Let the Ready repeats of the stored image reach the master, then stop it.
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let s1 = master.join().unwrap().unwrap();
        eprintln!(
            "pristine: {n} cards Ready in {:.1} s; master: {} artifact bytes, {} fetch / {} continue plans, {} ready",
            pristine.as_secs_f64(),
            s1.artifact_bytes,
            s1.plans_fetch,
            s1.plans_continue,
            s1.ready
        );
        assert!(s1.artifact_bytes > 0);
        for i in 0..n {
            let v = scenario::node_view(&state, i).unwrap();
            assert_eq!(v.node.state, NodeState::Ready, "card{i}: {:?}", v.node);
            // Its own architecture's builds, every one of them.
            let plan = v.plan.expect("a Ready card has a plan");
            assert_eq!(plan.arch, lab.card_arch(i), "card{i}: {plan:?}");
            assert_eq!(plan.boot.arch, plan.arch, "card{i}: {plan:?}");
            assert!(
                plan.packages.iter().all(|a| a.arch == plan.arch),
                "card{i}: {plan:?}"
            );
        }

        // Warm power cycle: validation only.
        let stop = Arc::new(AtomicBool::new(false));
        let master = scenario::spawn_master(shelf.backplane(), &state, stop.clone()).unwrap();
        let t2 = Instant::now();
        shelf.power_cycle_all().unwrap();
        let ready = shelf
            .wait_all(
                release::READY_LINE,
                Duration::from_secs(120 + 40 * n as u64),
            )
            .unwrap();
        let warm = t2.elapsed();
        for (i, r) in ready.iter().enumerate() {
            eprintln!(
                "warm: card{i} ({}) Ready after {:.1} s",
                lab.card_arch(i),
                r.elapsed.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let s2 = master.join().unwrap().unwrap();
        eprintln!(
            "warm: {n} cards Ready in {:.1} s; master: {} artifact bytes, {} fetch / {} continue plans; total {:.1} s",
            warm.as_secs_f64(),
            s2.artifact_bytes,
            s2.plans_fetch,
            s2.plans_continue,
            t0.elapsed().as_secs_f64()
        );
        assert_eq!(s2.artifact_bytes, 0, "a warm boot moves no artifact byte");
        assert_eq!(s2.plans_fetch, 0);
        assert!(s2.plans_continue >= n as u64);
        drop(shelf);
    }
}
