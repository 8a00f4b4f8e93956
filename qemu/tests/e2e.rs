//! Tier-3 end-to-end scenarios: the lab release (qemu::release) imported into a real
//! master state, `master serve` (the library, on a thread inside the backplane namespace)
//! on the master veth, and cards booting our static init with block2mtd flash.
//!
//! `pristine_then_warm` (SHELFBOOT_TIER_QEMU=1): SHELFBOOT_E2E_CARDS cards (default 1;
//! types lc100/fab10 alternating, every third card asks feature `diag`) boot from erased
//! flash: each commits its set, kexecs into its stored boot image, validates, switch_roots
//! into its packages and prints the Ready line; the node DB says ready. Then every card is
//! power-cut and started again: each only validates (a new master run counts zero
//! artifact bytes and only Continue plans) and is Ready again.
//!
//! The init binary: SHELFBOOT_INIT_BIN, else built here with cargo (init-release, musl).

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use shelfboot_master::master::Master;
    use shelfboot_master::serve::{self, ServeConfig, ServeStats};
    use shelfboot_master::store::NodeState;
    use shelfboot_qemu::backplane::MASTER_IF;
    use shelfboot_qemu::card::{CardConfig, create_erased_image};
    use shelfboot_qemu::release::{self, ReleaseSpec};
    use shelfboot_qemu::shelf::{Shelf, card_mac};
    use shelfboot_qemu::{Backplane, kernel};

    const TYPES: [&str; 2] = ["lc100", "fab10"];
    const FLASH: u64 = 64 << 20;

    fn gated() -> bool {
        if std::env::var("SHELFBOOT_TIER_QEMU").as_deref() == Ok("1") {
            return true;
        }
        eprintln!(
            "skipped: needs root, QEMU and the Debian kernel; run with SHELFBOOT_TIER_QEMU=1"
        );
        false
    }

    fn init_binary() -> PathBuf {
        if let Ok(p) = std::env::var("SHELFBOOT_INIT_BIN") {
            return p.into();
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "shelfboot-init",
                "--profile",
                "init-release",
                "--target",
                "x86_64-unknown-linux-musl",
            ])
            .status()
            .unwrap();
        assert!(st.success(), "building the static init failed");
        let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
            |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
            PathBuf::from,
        );
        target.join("x86_64-unknown-linux-musl/init-release/shelfboot-init")
    }

    /// Runs `master serve` on the backplane's master port until `stop`.
    fn spawn_master(
        bp: &Backplane,
        state: &Path,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<ServeStats> {
        let ns = std::fs::File::open(format!("/run/netns/{}", bp.netns())).unwrap();
        let cfg = ServeConfig::new(MASTER_IF, state);
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            serve::run(&cfg, &stop).unwrap()
        })
    }

    fn card_type(i: usize) -> &'static str {
        TYPES[i % TYPES.len()]
    }

    #[test]
    fn pristine_then_warm() {
        if !gated() {
            return;
        }
        let _ = env_logger::builder().is_test(true).try_init();
        let n: usize = std::env::var("SHELFBOOT_E2E_CARDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let t0 = Instant::now();
        let k = kernel::acquire(&kernel::cache_dir(), false).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lab-logs/e2e");
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).unwrap();

        // Master state: vendor key trusted, plan key (its anchor goes into the initramfs).
        let state = dir.join("state");
        let (secret, public, _) = shelfboot_master::keys::keygen(&dir.join("vendor")).unwrap();
        let mut m = Master::open(&state).unwrap();
        m.trust_add(&public, "lab vendor").unwrap();
        serve::load_key(&ServeConfig::new(MASTER_IF, &state)).unwrap();
        let rel = release::build(
            &k,
            &ReleaseSpec {
                card_types: TYPES.iter().map(|t| t.to_string()).collect(),
                init: init_binary(),
                anchor: state.join("plan.anchor"),
                master_timeout_s: 60,
            },
            &dir.join("release"),
        )
        .unwrap();
        eprintln!("release: {:?}", rel.sizes);
        let key = shelfboot_master::keys::read_signing_key(&secret).unwrap();
        let packed = shelfboot_master::image::pack::prepare(&rel.system_toml).unwrap();
        let image = dir.join("release.img");
        shelfboot_master::image::pack::write_image(&packed, &key, &image).unwrap();
        m.import_file(&image, true, &mut |_, _| {}).unwrap();
        drop(m);
        eprintln!(
            "release built and imported in {:.1} s",
            t0.elapsed().as_secs_f64()
        );

        // Pristine boot.
        let configure = |i: usize| {
            let disk = dir.join(format!("flash-{i}.img"));
            if !disk.exists() {
                create_erased_image(&disk, FLASH).unwrap();
            }
            let feats: &[&str] = if i % 3 == 2 { &["diag"] } else { &[] };
            let mut c = CardConfig::new(&format!("card{i}"), &k.vmlinux, &rel.initramfs, &logs);
            c.append = release::card_append(card_type(i), u16::try_from(i + 1).unwrap(), feats, 60);
            c.disk = Some(disk);
            c
        };
        let t1 = Instant::now();
        let mut shelf = Shelf::start(n, configure).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let master = spawn_master(shelf.backplane(), &state, stop.clone());
        let ready = shelf
            .wait_all(
                release::READY_LINE,
                Duration::from_secs(150 + 30 * n as u64),
            )
            .unwrap();
        let pristine = t1.elapsed();
        for (i, r) in ready.iter().enumerate() {
            eprintln!(
                "pristine: card{i} ({}) Ready after {:.1} s: {}",
                card_type(i),
                r.elapsed.as_secs_f64(),
                r.line
            );
            assert!(
                r.line.contains("base-1.0.0") && r.line.contains("heartbeat-1.0.0"),
                "{}",
                r.line
            );
            assert_eq!(r.line.contains("diag-1.0.0"), i % 3 == 2, "{}", r.line);
        }
        shelf
            .wait_all(release::HEARTBEAT_LINE, Duration::from_secs(20))
            .unwrap();
        // Let the Ready repeats of the stored image reach the master, then stop it.
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let s1 = master.join().unwrap();
        eprintln!(
            "pristine: {n} cards Ready in {:.1} s; master: {} artifact bytes, {} fetch / {} continue plans, {} ready",
            pristine.as_secs_f64(),
            s1.artifact_bytes,
            s1.plans_fetch,
            s1.plans_continue,
            s1.ready
        );
        assert!(s1.artifact_bytes > 0);
        {
            let m = Master::open(&state).unwrap();
            let nodes = m.nodes().unwrap();
            for i in 0..n {
                let mac = shelfboot_qemu::backplane::mac_string(&card_mac(i));
                let v = nodes
                    .iter()
                    .find(|v| v.node.identity.mac.to_string() == mac)
                    .unwrap_or_else(|| panic!("card{i} {mac} is not in the node DB"));
                assert_eq!(v.node.state, NodeState::Ready, "card{i}: {:?}", v.node);
            }
        }

        // Warm power cycle: validation only.
        let stop = Arc::new(AtomicBool::new(false));
        let master = spawn_master(shelf.backplane(), &state, stop.clone());
        let t2 = Instant::now();
        shelf.power_cycle_all().unwrap();
        let ready = shelf
            .wait_all(release::READY_LINE, Duration::from_secs(90 + 20 * n as u64))
            .unwrap();
        let warm = t2.elapsed();
        for (i, r) in ready.iter().enumerate() {
            eprintln!("warm: card{i} Ready after {:.1} s", r.elapsed.as_secs_f64());
        }
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let s2 = master.join().unwrap();
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
