//! Plans larger than one frame (protocol version 2) end to end in network namespaces:
//! `master serve` sends each card a plan of 63 artifacts in fragments over a lossy
//! bridge, the simulated cards reassemble, verify, fetch and commit; then a warm boot of
//! every card costs exactly one Solicit and one Continue frame, counted by the master's
//! frame counters by type.
//!
//! A real-size release: 16 cards of 3 types take a release of 200 packages (1 KiB to
//! 4 MiB, 66 MiB over both archs) at 1 % loss into their segment flash; a second release
//! that changes 20 packages moves only those; a warm boot of all 16 is one Solicit and one
//! Continue each.
//!
//! Jumbo frames: on a backplane whose master and card ports have a 9000-byte MTU, plans
//! go on the jumbo fragment grid and data in 8960-byte blocks; a card on a 1500-byte port
//! of the same bridge gets its own sessions of 1408-byte blocks and boots as well.
//! Network-namespace tier: `#[ignore]`d with the reason, run by
//! `./dev test` as root (docs/testing.md).

mod conv;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use std::collections::BTreeSet;
    use std::fmt::Write as _;

    use super::conv::{
        Fixture, TYPES, assert_all_fetched, bytes, init_log, serial, spawn_cards, spawn_master,
    };
    use shelfboot_proto::msg::BootPhase;
    use shelfboot_testkit::netns::Lab;
    use shelfboot_testkit::tier::{self, Tier};

    /// Extra packages per card: 60 + boot image + base + routing or fabric-mgr.
    const EXTRA: usize = 60;
    const CARDS: usize = 6;

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn a_plan_of_63_artifacts_in_fragments_at_1_percent_loss_then_one_frame_warm_boots() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::with_packages(tmp.path(), 16 * 1024, EXTRA);
        let lab = Lab::new("conv-large", 2).unwrap();
        lab.set_loss(1, Some(shelfboot_proto::DEFAULT_ETHERTYPE))
            .unwrap();
        let cards = fx.cards(CARDS);
        let stop_m = Arc::new(AtomicBool::new(false));
        let (reports, st) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", cards.clone(), Duration::from_secs(120)),
                Arc::new(AtomicBool::new(false)),
            );
            let reports = c.join().unwrap();
            stop_m.store(true, Ordering::Relaxed);
            (reports, m.join().unwrap())
        });
        let dropped = lab.loss_dropped().unwrap();
        assert_all_fetched(&reports);
        for c in &cards {
            assert_eq!(fx.check_card(c), EXTRA + 3, "card {} artifacts", c.mac);
        }
        assert!(dropped > 0, "the loss rule dropped nothing");
        assert!(
            st.messages_fragmented >= CARDS as u64,
            "every card's plan went in fragments: {}",
            st.messages_fragmented
        );
        eprintln!(
            "1% loss, {CARDS} cards x {} artifacts: {dropped} frames dropped, {} plans in fragments, {} Plan frames, {} Solicits",
            EXTRA + 3,
            st.messages_fragmented,
            st.frames_out_by_type.get("Plan").copied().unwrap_or(0),
            st.frames_in_by_type.get("Solicit").copied().unwrap_or(0),
        );

        // Warm boot, no loss: the master is up first, so every frame a card sends reaches
        // it; each card sends one Solicit (its set digest, the list left out) and gets one
        // digest-only Continue frame.
        lab.set_loss(0, None).unwrap();
        let stop_m = Arc::new(AtomicBool::new(false));
        let mut sim = fx.sim_config("p1", cards.clone(), Duration::from_secs(30));
        sim.phase = BootPhase::WarmBoot;
        let (reports, st) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
            std::thread::sleep(Duration::from_millis(800));
            let c = spawn_cards(s, &lab, sim, Arc::new(AtomicBool::new(false)));
            let reports = c.join().unwrap();
            stop_m.store(true, Ordering::Relaxed);
            (reports, m.join().unwrap())
        });
        for r in &reports {
            assert!(r.validated_only && !r.autonomous, "{r:?}");
        }
        let n = CARDS as u64;
        assert_eq!(
            st.frames_in_by_type.get("Solicit").copied(),
            Some(n),
            "{st:?}"
        );
        assert_eq!(
            st.frames_out_by_type.get("Plan").copied(),
            Some(n),
            "{st:?}"
        );
        assert_eq!(st.plans_digest_only, n);
        assert_eq!(st.plans_continue, n);
        assert_eq!(st.artifact_bytes, 0);
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn a_jumbo_backplane_moves_8960_byte_blocks_and_a_1500_byte_port_on_it_still_boots() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::with_packages(tmp.path(), 256 * 1024, 20);
        let lab = Lab::new("conv-jumbo", 3).unwrap();
        // The master (p0) and the first card port (p1) at 9000, both ends of each veth;
        // p2 stays at 1500, so the bridge drops every jumbo frame towards it.
        lab.ip_batch(
            "link set p0 mtu 9000\nlink set p0b mtu 9000\nlink set p1 mtu 9000\nlink set p1b mtu 9000\n",
        )
        .unwrap();
        let cards = fx.cards(4);
        let (jumbo, standard) = cards.split_at(2);
        let stop_m = Arc::new(AtomicBool::new(false));
        let (reports, st) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
            let a = spawn_cards(
                s,
                &lab,
                fx.sim_config("p1", jumbo.to_vec(), Duration::from_secs(90)),
                Arc::new(AtomicBool::new(false)),
            );
            let b = spawn_cards(
                s,
                &lab,
                fx.sim_config("p2", standard.to_vec(), Duration::from_secs(90)),
                Arc::new(AtomicBool::new(false)),
            );
            let mut reports = a.join().unwrap();
            reports.extend(b.join().unwrap());
            stop_m.store(true, Ordering::Relaxed);
            (reports, m.join().unwrap())
        });
        assert_all_fetched(&reports);
        for c in &cards {
            assert_eq!(fx.check_card(c), 23, "card {} artifacts", c.mac);
        }
        let bytes_in = |block: u16| -> u64 {
            st.sessions
                .iter()
                .filter(|x| x.block_size == block)
                .map(|x| x.artifact_bytes())
                .sum()
        };
        let (big, small) = (bytes_in(8960), bytes_in(1408));
        let other: Vec<u16> = st
            .sessions
            .iter()
            .map(|x| x.block_size)
            .filter(|b| ![8960, 1408].contains(b))
            .collect();
        assert!(other.is_empty(), "sessions of other block sizes: {other:?}");
        assert!(
            big > 0 && small > 0,
            "jumbo {big} bytes, standard {small} bytes"
        );
        // Each port's cards take the whole release (about 2.9 MiB per card type) in its
        // own block size: neither kind of session carried the other port's share alone.
        assert!(
            big >= 2_000_000 && small >= 2_000_000,
            "jumbo {big}, standard {small}"
        );
        eprintln!(
            "jumbo backplane: {} sessions, {big} bytes in 8960-byte blocks, {small} in 1408-byte blocks, {} Plan frames for 4 plans",
            st.sessions.len(),
            st.frames_out_by_type.get("Plan").copied().unwrap_or(0),
        );
    }

    /// Packages of the real-size release.
    const PACKAGES: usize = 200;
    /// Packages the second release changes (small ones: what moves is easy to bound).
    const CHANGED: std::ops::Range<usize> = 100..120;

    /// Size of package `i` for `arch_i`: six of 4 MiB and five of 1.5 MiB, the rest
    /// 1-16 KiB: 33 MiB per arch.
    fn size_of(i: usize, arch_i: usize) -> usize {
        match i {
            0..6 => 4 << 20,
            6..11 => 3 << 19,
            _ => 1024 + ((i * 977 + arch_i * 131) % (15 * 1024)),
        }
    }

    /// `system.toml` of release `version` (files written under `dir/files`): three boot
    /// images, packages `p000`…`p199` (64-byte names) in both archs, every card takes all
    /// of them; packages in `changed` are version 1.0.1 with other bytes.
    fn real_size_toml(
        dir: &std::path::Path,
        version: &str,
        changed: std::ops::Range<usize>,
    ) -> String {
        let files = dir.join("files");
        std::fs::create_dir_all(&files).unwrap();
        let mut toml = format!("[release]\nname = \"shelf-os\"\nversion = \"{version}\"\n\n");
        for (i, (ct, arch, boot)) in TYPES.iter().enumerate() {
            let file = format!("{boot}-{ct}.img");
            std::fs::write(files.join(&file), bytes(1 + i as u64, 96 * 1024)).unwrap();
            let _ = write!(
                toml,
                "[[boot]]\nname = \"{boot}\"\nversion = \"6.1.0\"\ncard_type = \"{ct}\"\narch = \"{arch}\"\nimage = \"files/{file}\"\ncmdline = \"console=ttyS0\"\n\n"
            );
        }
        let mut wanted = Vec::new();
        for i in 0..PACKAGES {
            let name = format!("p{i:03}-{}", "x".repeat(59));
            let v = if changed.contains(&i) {
                "1.0.1"
            } else {
                "1.0.0"
            };
            wanted.push(format!("\"{name}\" = \"^1\""));
            for (arch_i, arch) in ["x86_64", "aarch64"].iter().enumerate() {
                let file = format!("{name}-{v}-{arch}.sqfs");
                let path = files.join(&file);
                if !path.exists() {
                    let seed = (i * 2 + arch_i) as u64 + if v == "1.0.0" { 10_000 } else { 20_000 };
                    std::fs::write(&path, bytes(seed, size_of(i, arch_i))).unwrap();
                }
                let _ = write!(
                    toml,
                    "[[package]]\nname = \"{name}\"\nversion = \"{v}\"\narch = \"{arch}\"\nfile = \"files/{file}\"\n\n"
                );
            }
        }
        let _ = write!(
            toml,
            "[[class]]\nname = \"linecards\"\nmatch = {{ card_types = [\"lc100\", \"lc200\"] }}\nboot = \"lc-kernel\"\n\n\
             [[class]]\nname = \"fabric\"\nmatch = {{ card_types = [\"fab10\"] }}\nboot = \"fab-kernel\"\n\n\
             [defaults]\npackages = {{ {} }}\n",
            wanted.join(", ")
        );
        toml
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn sixteen_cards_take_a_200_package_release_then_an_update_of_20_then_warm_boot() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::from_toml(tmp.path(), &real_size_toml(tmp.path(), "1.0.0", 0..0));
        let release_bytes: usize = (0..PACKAGES).map(|i| size_of(i, 0) + size_of(i, 1)).sum();
        assert!(release_bytes >= 64 << 20, "{release_bytes}");
        let lab = Lab::new("conv-real", 2).unwrap();
        let cards = fx.cards(16);
        let run = |phase: BootPhase, loss: u8, timeout_s: u64| {
            lab.set_loss(
                loss,
                (loss > 0).then_some(shelfboot_proto::DEFAULT_ETHERTYPE),
            )
            .unwrap();
            let stop_m = Arc::new(AtomicBool::new(false));
            let mut sim = fx.sim_config("p1", cards.clone(), Duration::from_secs(timeout_s));
            sim.phase = phase;
            std::thread::scope(|s| {
                let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
                std::thread::sleep(Duration::from_millis(800));
                let c = spawn_cards(s, &lab, sim, Arc::new(AtomicBool::new(false)));
                let reports = c.join().unwrap();
                stop_m.store(true, Ordering::Relaxed);
                (reports, m.join().unwrap())
            })
        };

        // 1. Pristine cards, 1 % loss: every card holds all 202 artifacts, byte-identical.
        let (reports, st) = run(BootPhase::PowerOn, 1, 240);
        assert_all_fetched(&reports);
        for c in &cards {
            assert_eq!(fx.check_card(c), PACKAGES + 1, "card {} artifacts", c.mac);
        }
        eprintln!(
            "200 packages to 16 cards at 1% loss: {} artifact bytes sent for a {release_bytes}-byte release ({:.3} x), {} sessions, {} plans in fragments",
            st.artifact_bytes,
            st.artifact_bytes as f64 / release_bytes as f64,
            st.sessions.len(),
            st.messages_fragmented
        );

        // 2. A release that changes 20 packages: only those move.
        fx.import_toml(&real_size_toml(tmp.path(), "1.1.0", CHANGED));
        let (reports, st) = run(BootPhase::PowerOn, 1, 120);
        assert_all_fetched(&reports);
        for c in &cards {
            assert_eq!(fx.check_card(c), PACKAGES + 1, "card {} artifacts", c.mac);
        }
        let moved: BTreeSet<String> = st.sessions.iter().map(|s| s.name.clone()).collect();
        let want: BTreeSet<String> = CHANGED
            .map(|i| format!("p{i:03}-{} 1.0.1", "x".repeat(59)))
            .collect();
        assert_eq!(moved, want, "sessions of the update: {:#?}", st.sessions);
        let changed_bytes: usize = CHANGED.map(|i| size_of(i, 0) + size_of(i, 1)).sum();
        eprintln!(
            "update of 20 packages: {} artifact bytes sent for {changed_bytes} changed bytes",
            st.artifact_bytes
        );

        // 3. Warm boot, no loss: one Solicit and one digest-only Continue per card.
        let (reports, st) = run(BootPhase::WarmBoot, 0, 30);
        for r in &reports {
            assert!(r.validated_only && !r.autonomous, "{r:?}");
        }
        let n = cards.len() as u64;
        assert_eq!(
            st.frames_in_by_type.get("Solicit").copied(),
            Some(n),
            "{st:?}"
        );
        assert_eq!(
            st.frames_out_by_type.get("Plan").copied(),
            Some(n),
            "{st:?}"
        );
        assert_eq!(st.plans_digest_only, n);
        assert_eq!(st.artifact_bytes, 0);
    }
}
