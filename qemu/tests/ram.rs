//! Tier-3 scenario (QEMU tier): cards that run their set from RAM on every boot, with
//! `master serve` on the backplane.
//!
//! * card0 has no usable flash: its block2mtd disk is two erase blocks, too small for
//!   UBI to attach, so init finds no flash store and its agent's only store is in RAM.
//! * card1 has flash but is RAM-first: the release gives it a per-node override
//!   `ram = true`, so its plan says `persist = false`; its flash stays pristine.
//!
//! On each of two boots (the second a power cycle, so nothing in RAM survives) both
//! cards fetch their whole set into their RAM store, kexec the set's boot image from
//! RAM with the store carried in its initramfs; the kexec'd init validates the carried
//! set (nothing fetched again) and switch_roots into its packages over loop devices; the
//! package root comes up. The node database says `ram` for both and records nothing
//! installed; their resident agents report the plan's set running; the master sent the
//! whole sets on each boot.
//!
//! The init binary: SHELFBOOT_INIT_BIN, else built with cargo (init-release, musl).

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use shelfboot_master::store::NodeState;
    use shelfboot_qemu::backplane::mac_string;
    use shelfboot_qemu::card::create_erased_image;
    use shelfboot_qemu::release::{self, Derived};
    use shelfboot_qemu::scenario::{self, MasterRun, Prelude};
    use shelfboot_qemu::shelf::{Shelf, card_mac};

    /// Two 128 KiB erase blocks: block2mtd makes an MTD of it, UBI refuses to attach.
    const TOO_SMALL: u64 = 256 << 10;

    /// What each card's console shows of its boot from RAM (both kernels).
    const FLASHLESS: [&str; 7] = [
        "flash unavailable",
        "SHELFBOOT: no usable flash: this card runs its set from RAM",
        "no usable flash: fetching the plan into RAM",
        "kexec: sync and reboot into the RAM set's image",
        "config: test            true",
        "the RAM store (no flash) holds the plan: validated",
        "RAM set: booting",
    ];
    const RAM_FIRST: [&str; 6] = [
        "flash: nothing committed",
        "RAM-only plan (persist = false): fetching into RAM, flash untouched",
        "kexec: sync and reboot into the RAM set's image",
        "config: test            true",
        "the RAM store holds the RAM-only plan: validated",
        "RAM set: booting",
    ];

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn cards_without_flash_or_ram_first_run_their_set_from_ram_on_every_boot() {
        let p = Prelude::start(env!("CARGO_TARGET_TMPDIR"), "ram").unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
        let macs = [mac_string(&card_mac(0)), mac_string(&card_mac(1))];
        create_erased_image(&lab.dir.join("flash-0.img"), TOO_SMALL).unwrap();
        let ram_first = Derived {
            version: "1.1.0".into(),
            ram_first: vec![macs[1].clone()],
            ..Derived::default()
        };
        scenario::import_derived(&lab, &ram_first).unwrap();
        let mut shelf =
            Shelf::start(2, |i| scenario::card_config(&lab, i, &logs).unwrap()).unwrap();
        let mut sent = Vec::new();
        for boot in 1..=2 {
            let mut master = MasterRun::start(shelf.backplane(), &lab.state).unwrap();
            let t = Instant::now();
            if boot > 1 {
                for i in 0..2 {
                    shelf.card(i).unwrap().power_cycle().unwrap();
                }
            }
            let ready = shelf
                .wait_all(release::READY_LINE, Duration::from_secs(420))
                .unwrap();
            // Per card; the master may send an artifact both want once to both.
            let mut fetched = Vec::new();
            for (i, r) in ready.iter().enumerate() {
                eprintln!(
                    "boot {boot}: card{i} Ready after {:.1} s: {}",
                    t.elapsed().as_secs_f64(),
                    r.line
                );
                assert!(r.line.contains("heartbeat-1.0.0"), "{}", r.line);
                let console = shelf.card(i).unwrap().console();
                let wants: &[&str] = if i == 0 { &FLASHLESS } else { &RAM_FIRST };
                for want in wants.iter().chain(&["switch_root: exec"]) {
                    assert!(
                        console.contains(want),
                        "boot {boot}: card{i}'s console lacks {want:?}"
                    );
                }
                assert!(
                    !console.contains("flash: committed set"),
                    "boot {boot}: card{i} committed something to flash"
                );
                let bytes = scenario::bytes_to_fetch(&console);
                assert!(bytes > 0, "boot {boot}: card{i} fetched its set into RAM");
                fetched.push(bytes);
            }
            // The master writes what the Readys and Alives say in its next batch.
            std::thread::sleep(Duration::from_secs(3));
            for (i, mac) in macs.iter().enumerate() {
                let view = scenario::node_by_mac(&lab.state, mac).unwrap();
                assert_eq!(view.node.state, NodeState::Ram, "boot {boot}: card{i}");
                assert_eq!(
                    view.node.inventory.and_then(|i| i.digest),
                    None,
                    "boot {boot}: card{i}: a set in RAM is not recorded as installed"
                );
                let plan = view.plan.as_ref().expect("a plan");
                // card0's plan is a plain one (the master does not know it lacks flash);
                // card1's says RAM-first, and why.
                assert_eq!(plan.persist, i == 0, "card{i}");
                if i == 1 {
                    assert!(
                        plan.explain
                            .iter()
                            .any(|r| r.subject.starts_with("RAM-first")
                                && r.rule.contains("per-node override")),
                        "{:?}",
                        plan.explain
                    );
                }
                assert_eq!(
                    view.node.health.as_ref().and_then(|h| h.running),
                    Some(plan.digest),
                    "boot {boot}: card{i}'s agent names the running set"
                );
            }
            let s = master.stop().unwrap().expect("the master ran");
            eprintln!(
                "boot {boot}: cards fetched {fetched:?} bytes; master sent {} artifact bytes, {} fetch / {} continue plans",
                s.artifact_bytes, s.plans_fetch, s.plans_continue
            );
            assert!(
                fetched.iter().all(|f| s.artifact_bytes >= *f),
                "boot {boot}: each whole set went out"
            );
            sent.push(s.artifact_bytes);
        }
        eprintln!(
            "two boots from RAM: {sent:?} artifact bytes sent; total {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        drop(shelf);
    }
}
