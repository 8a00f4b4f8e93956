//! Tier-3 autonomy scenario: with no master on the backplane, a card boots its
//! last committed set on its own, and validates with the master again once it is back.
//!
//! `master_absent_card_boots_its_committed_set` (QEMU tier): one card (lc100,
//! block2mtd flash, `shelfboot.master_timeout=5`) in three boots:
//!
//! ```text
//! 1 master serving   erased flash → fetch, commit, kexec, validate, mark Ready → Ready 1.0
//! 2 master stopped   init prints the committed set (the one of boot 1, Ready-marked: 0
//!                    attempts) → nobody answers for 5 s → "no master answered …
//!                    booting the last committed set on my own" → not counted (the set
//!                    reached Ready on its last boot; counting master-less boots would
//!                    roll it back after maxtries power cycles) → kexec →
//!                    the stored image waits 5 s again, says the same, switch_root →
//!                    Ready with exactly the committed packages; nothing fetched
//! 3 master serving   inventory still 0 attempts → Continue → counted (attempt 1) →
//!                    Continue plans only, "flash matches the plan: validated" in both
//!                    stages, "set marked ready on flash", Ready; the master moved 0
//!                    artifact bytes and sent no Fetch plan
//! ```
//!
//! `master_absent_aarch64_card_boots_its_committed_set` (QEMU tier): the same three boots
//! on an aarch64 card (the lab's own arm64 kernel, `qemu-system-aarch64 -M virt`).
//!
//! The init binaries: SHELFBOOT_INIT_BIN (x86_64) and SHELFBOOT_INIT_BIN_AARCH64, else
//! built here with cargo (init-release, musl).

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use regex::Regex;
    use shelfboot_proto::id::Arch;
    use shelfboot_qemu::release;
    use shelfboot_qemu::scenario::Prelude;
    use shelfboot_qemu::scenario::{self, MasterRun};
    use shelfboot_qemu::shelf::Shelf;

    /// The card's `shelfboot.master_timeout` in this scenario.
    const MASTER_TIMEOUT_S: u32 = 5;
    /// Deadline for one milestone (generous: the 2-core host is shared).
    const STEP: Duration = Duration::from_secs(240);

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn master_absent_card_boots_its_committed_set() {
        autonomy("autonomy", Arch::X86_64);
    }

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn master_absent_aarch64_card_boots_its_committed_set() {
        autonomy("autonomy-aarch64", Arch::Aarch64);
    }

    /// The three boots of the module docs on one card of `arch`.
    fn autonomy(name: &str, arch: Arch) {
        let p = Prelude::start_arches(env!("CARGO_TARGET_TMPDIR"), name, &[arch]).unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
        let state = lab.state.clone();
        let inventory = || -> Regex { Regex::new(scenario::INVENTORY_PATTERN).unwrap() };

        // Boot 1: pristine install with the master.
        let mut shelf = Shelf::start(1, |i| {
            let mut c = scenario::card_config(&lab, i, &logs).unwrap();
            c.append = release::card_append(
                c.arch,
                scenario::card_type(i),
                u16::try_from(i + 1).unwrap(),
                &[],
                MASTER_TIMEOUT_S,
            );
            c
        })
        .unwrap();
        let mut master = MasterRun::start(shelf.backplane(), &state).unwrap();
        let t1 = Instant::now();
        let card = shelf.card(0).unwrap();
        // The boot path's times (docs/lab.md): QEMU start to init, and init's kexec
        // (sync, reboot) to the stored image's init.
        let init1 = card.wait_for("starting as PID 1", STEP).unwrap();
        let kexec = card.wait_for("kexec: sync and reboot", STEP).unwrap();
        let init2 = card.wait_for("starting as PID 1", STEP).unwrap();
        card.wait_for("agent: set marked ready on flash", STEP)
            .unwrap();
        let ready = card.wait_for(release::READY_LINE, STEP).unwrap();
        eprintln!(
            "autonomy ({arch}): times under TCG: QEMU start to init {:.1} s, kexec to the stored image's init {:.1} s, pristine to Ready {:.1} s",
            init1.elapsed.as_secs_f64(),
            (init2.elapsed - kexec.elapsed).as_secs_f64(),
            ready.elapsed.as_secs_f64()
        );
        let packages = scenario::ready_packages(&ready.line).unwrap();
        let committed = scenario::last_flash_inventory(&card.console())
            .expect("the stored image printed the flash inventory");
        let pristine = t1.elapsed();
        eprintln!(
            "autonomy ({arch}): pristine Ready after {:.1} s: set {} = {packages}",
            pristine.as_secs_f64(),
            committed.digest
        );
        assert_eq!(packages, "base-1.0.0 heartbeat-1.0.0");
        let s1 = master.stop().unwrap().expect("the master was serving");
        assert!(s1.artifact_bytes > 0, "boot 1 fetched through the master");

        // Boot 2: no master anywhere on the backplane.
        let t2 = Instant::now();
        card.power_cycle().unwrap();
        let inv = card.wait_for(inventory(), STEP).unwrap();
        let inv = scenario::flash_inventory(&inv.line).unwrap();
        assert_eq!(
            inv.digest, committed.digest,
            "boot 2 sees the committed set"
        );
        assert_eq!(inv.attempts, 0, "the set was marked Ready in boot 1");
        let alone = Regex::new(
            r"no master answered \(waited .*\): booting the last committed set on my own",
        )
        .unwrap();
        let said = card.wait_for(alone.clone(), STEP).unwrap();
        let waited = said.elapsed;
        card.wait_for(
            "the committed set reached Ready on its last boot: this boot without a master is not counted",
            STEP,
        )
        .unwrap();
        card.wait_for("kexec: sync and reboot", STEP).unwrap();
        card.wait_for(Regex::new(r"config: stored\s+true").unwrap(), STEP)
            .unwrap();
        card.wait_for(alone, STEP).unwrap();
        let ready = card.wait_for(release::READY_LINE, STEP).unwrap();
        let console = card.console();
        assert_eq!(
            scenario::ready_packages(&ready.line).as_deref(),
            Some(packages.as_str()),
            "boot 2 runs exactly the committed packages"
        );
        assert!(
            !console.contains("agent: fetched") && !console.contains("set marked ready"),
            "without a master nothing is fetched and nothing is marked Ready"
        );
        assert!(
            console.contains("autonomous=true"),
            "the agent decided autonomously"
        );
        assert!(
            !console.contains("booting committed set, attempt"),
            "a master-less boot of a set that reached Ready is not counted"
        );
        let alone_t = t2.elapsed();
        eprintln!(
            "autonomy ({arch}): master absent: \"no master answered\" {:.1} s after power-on, Ready after {:.1} s: {}",
            waited.as_secs_f64(),
            alone_t.as_secs_f64(),
            ready.line
        );

        // Boot 3: the master is back; the card only validates.
        let mut master = MasterRun::start(shelf.backplane(), &state).unwrap();
        let t3 = Instant::now();
        let card = shelf.card(0).unwrap();
        card.power_cycle().unwrap();
        let inv = card.wait_for(inventory(), STEP).unwrap();
        let inv = scenario::flash_inventory(&inv.line).unwrap();
        assert_eq!(inv.digest, committed.digest);
        assert_eq!(
            inv.attempts, 0,
            "the master-less boot was not counted: the set had reached Ready"
        );
        card.wait_for("flash matches the plan: validated", STEP)
            .unwrap();
        card.wait_for("booting committed set, attempt 1 of", STEP)
            .unwrap();
        card.wait_for(Regex::new(r"config: stored\s+true").unwrap(), STEP)
            .unwrap();
        card.wait_for("flash matches the plan: validated", STEP)
            .unwrap();
        card.wait_for("agent: set marked ready on flash", STEP)
            .unwrap();
        let ready = card.wait_for(release::READY_LINE, STEP).unwrap();
        assert_eq!(
            scenario::ready_packages(&ready.line).as_deref(),
            Some(packages.as_str())
        );
        assert!(!card.console().contains("no master answered"));
        let back = t3.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let s3 = master.stop().unwrap().expect("the master was serving");
        eprintln!(
            "autonomy ({arch}): master back: Ready after {:.1} s; master: {} artifact bytes, {} fetch / {} continue plans; whole test {:.1} s",
            back.as_secs_f64(),
            s3.artifact_bytes,
            s3.plans_fetch,
            s3.plans_continue,
            t0.elapsed().as_secs_f64()
        );
        assert_eq!(s3.artifact_bytes, 0, "validation moves no artifact byte");
        assert_eq!(s3.plans_fetch, 0);
        assert!(s3.plans_continue >= 1);
        drop(shelf);
    }
}
