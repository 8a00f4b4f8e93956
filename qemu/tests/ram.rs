//! Tier-3 scenario (QEMU tier): a card without usable flash runs its set from RAM on
//! every boot. Its block2mtd disk is two erase blocks, too small for UBI to attach, so
//! init finds no flash store; `master serve` runs on the backplane.
//!
//! Each of two boots (the second a power cycle, so nothing survives but the disk): init
//! says the flash is unusable, fetches the whole set into its RAM store, kexecs the set's
//! boot image from RAM with the store carried in its initramfs; the kexec'd init
//! validates the carried set (nothing fetched again) and switch_roots into its packages
//! over loop devices; the package root comes up. The card's Ready says not persisted:
//! the node database says `ram` and records nothing installed, and the master sent the
//! whole set on each boot.
//!
//! The init binary: SHELFBOOT_INIT_BIN, else built with cargo (init-release, musl).

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use shelfboot_master::store::NodeState;
    use shelfboot_qemu::backplane::mac_string;
    use shelfboot_qemu::card::create_erased_image;
    use shelfboot_qemu::release;
    use shelfboot_qemu::scenario::{self, MasterRun, Prelude};
    use shelfboot_qemu::shelf::{Shelf, card_mac};

    /// Two 128 KiB erase blocks: block2mtd makes an MTD of it, UBI refuses to attach.
    const TOO_SMALL: u64 = 256 << 10;

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn card_without_flash_runs_its_set_from_ram_on_every_boot() {
        let p = Prelude::start(env!("CARGO_TARGET_TMPDIR"), "ram").unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
        let mac = mac_string(&card_mac(0));
        create_erased_image(&lab.dir.join("flash-0.img"), TOO_SMALL).unwrap();
        let mut shelf =
            Shelf::start(1, |i| scenario::card_config(&lab, i, &logs).unwrap()).unwrap();
        let mut sent = Vec::new();
        for boot in 1..=2 {
            let mut master = MasterRun::start(shelf.backplane(), &lab.state).unwrap();
            let card = shelf.card(0).unwrap();
            let t = Instant::now();
            if boot > 1 {
                card.power_cycle().unwrap();
            }
            let ready = card
                .wait_for(release::READY_LINE, Duration::from_secs(420))
                .unwrap();
            eprintln!(
                "boot {boot}: Ready after {:.1} s: {}",
                t.elapsed().as_secs_f64(),
                ready.line
            );
            assert!(ready.line.contains("heartbeat-1.0.0"), "{}", ready.line);
            let console = card.console();
            for want in [
                "flash unavailable",
                "SHELFBOOT: no usable flash: this card runs its set from RAM",
                "no usable flash: fetching the plan into RAM",
                "kexec: sync and reboot into the RAM set's image",
                "config: test            true",
                "the RAM store (no flash) holds the plan: validated",
                "RAM set: booting",
                "switch_root: exec",
            ] {
                assert!(
                    console.contains(want),
                    "boot {boot}: console lacks {want:?}"
                );
            }
            let fetched = scenario::bytes_to_fetch(&console);
            assert!(fetched > 0, "boot {boot}: the set was fetched into RAM");
            // The master writes the Ready's state in its next batch.
            std::thread::sleep(Duration::from_secs(2));
            let view = scenario::node_by_mac(&lab.state, &mac).unwrap();
            assert_eq!(view.node.state, NodeState::Ram, "boot {boot}");
            // Its resident agent reports the plan's set running (from RAM).
            let plan = view.plan.as_ref().expect("a plan").digest;
            assert!(
                console.contains(&format!("of RAM set {plan}")),
                "boot {boot}"
            );
            assert_eq!(
                view.node.health.as_ref().and_then(|h| h.running),
                Some(plan),
                "boot {boot}: the agent's Alive names the running set"
            );
            assert_eq!(
                view.node.inventory.and_then(|i| i.digest),
                None,
                "boot {boot}: a set in RAM is not recorded as installed"
            );
            let s = master.stop().unwrap().expect("the master ran");
            eprintln!(
                "boot {boot}: card fetched {fetched} bytes; master sent {} artifact bytes, {} fetch / {} continue plans",
                s.artifact_bytes, s.plans_fetch, s.plans_continue
            );
            assert!(
                s.artifact_bytes >= fetched,
                "boot {boot}: the whole set went out"
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
