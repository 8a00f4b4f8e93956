//! Tier-3 test-mode scenario (QEMU tier): one lc100 card with block2mtd
//! flash and `master serve` on the backplane.
//!
//! 1. pristine boot: commit, kexec, validate, Ready (base, heartbeat). Power off; the
//!    flash image's sha256 and the inventory line init printed are recorded.
//! 2. `test-mode MAC --package testpkg=1.0.0` (through the serving master's control
//!    socket); power cycle: the plan is RAM-only, the card fetches it into tmpfs, kexecs
//!    the RAM boot image with the RAM store carried in its initramfs, the kexec'd init
//!    validates from RAM and switch_roots over loop devices: testpkg prints its line, the
//!    Ready line lists testpkg, the node DB says `test`. Power off: every live UBI
//!    logical eraseblock in the flash image (volume table included) holds the same bytes
//!    as before, and init's inventory line (digest, generation, boot attempts) is
//!    unchanged. (The raw image may differ where UBI itself erases, at its next attach,
//!    the PEBs of a volume an earlier boot removed, e.g. the inventory replaced by
//!    `mark_ready`: such PEBs and erase counters are not compared; the count is printed.)
//! 3. `test-mode MAC --off`; power cycle: the committed flash set boots (validation
//!    only: zero artifact bytes from a fresh master run), no testpkg.
//!
//! The init binary: SHELFBOOT_INIT_BIN, else built with cargo (init-release, musl).

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::hash::{Hash as _, Hasher as _};
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use shelfboot_master::control::Request;
    use shelfboot_master::store::NodeState;
    use shelfboot_qemu::card::Card;
    use shelfboot_qemu::release;
    use shelfboot_qemu::scenario;
    use shelfboot_qemu::scenario::Prelude;
    use shelfboot_qemu::shelf::{Shelf, card_mac};

    const FLASH_PEBS: u64 = scenario::FLASH / (128 << 10);

    /// PEB size of the lab's block2mtd flash (`block2mtd=/dev/vda,128KiB`).
    const PEB: usize = 128 << 10;

    fn be32(b: &[u8], at: usize) -> usize {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize
    }

    /// What UBI serves from a flash image: for every live logical eraseblock (vol_id,
    /// lnum), the hash of the data of its copy with the highest sequence number. Erase
    /// counters, erased PEBs and stale copies (UBI's own housekeeping: erasing what an
    /// earlier boot released, wear-leveling moves) are not in it; a created, written,
    /// renamed or removed volume (the layout volume holds the names) is.
    fn ubi_contents(img: &Path) -> BTreeMap<(usize, usize), (u64, u64)> {
        let img = std::fs::read(img).unwrap();
        let mut live: BTreeMap<(usize, usize), (u64, u64)> = BTreeMap::new();
        for peb in img.chunks(PEB) {
            if peb.len() < 64 || &peb[..4] != b"UBI#" {
                continue;
            }
            let (vid, data) = (be32(peb, 16), be32(peb, 20));
            if vid + 64 > peb.len() || data > peb.len() || &peb[vid..vid + 4] != b"UBI!" {
                continue;
            }
            let v = &peb[vid..vid + 64];
            let key = (be32(v, 8), be32(v, 12));
            let sqnum = u64::from_be_bytes(v[40..48].try_into().unwrap());
            // Static volumes (type 2): the LEB's data_size bytes; dynamic ones: the data
            // up to the last non-0xFF byte (what a wear-leveling copy keeps).
            let bytes = &peb[data..];
            let bytes = if v[5] == 2 {
                &bytes[..be32(v, 20).min(bytes.len())]
            } else {
                let end = bytes.iter().rposition(|b| *b != 0xff).map_or(0, |i| i + 1);
                &bytes[..end]
            };
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            let e = live.entry(key).or_insert((sqnum, h.finish()));
            if sqnum >= e.0 {
                *e = (sqnum, h.finish());
            }
        }
        // Only volumes the volume table lists (layout volume 0x7fffefff, 172-byte records,
        // reserved_pebs != 0): PEBs of a removed volume still carry VID headers until UBI
        // erases them, possibly only at the next attach.
        if !live.contains_key(&(LAYOUT_VOL, 0)) {
            return live;
        }
        let table = layout_table(&img);
        live.retain(|k, _| k.0 == LAYOUT_VOL || table.contains(&k.0));
        live
    }

    const LAYOUT_VOL: usize = 0x7fff_efff;

    /// Volume ids the newest copy of the layout volume's LEB 0 lists.
    fn layout_table(img: &[u8]) -> Vec<usize> {
        let mut best: Option<(u64, &[u8])> = None;
        for peb in img.chunks(PEB) {
            if peb.len() < 64 || &peb[..4] != b"UBI#" {
                continue;
            }
            let (vid, data) = (be32(peb, 16), be32(peb, 20));
            let v = &peb[vid..vid + 64];
            if &v[..4] != b"UBI!" || be32(v, 8) != LAYOUT_VOL || be32(v, 12) != 0 {
                continue;
            }
            let sqnum = u64::from_be_bytes(v[40..48].try_into().unwrap());
            if best.is_none_or(|(s, _)| sqnum > s) {
                best = Some((sqnum, &peb[data..]));
            }
        }
        let Some((_, t)) = best else {
            return Vec::new();
        };
        t.chunks_exact(172)
            .take(128)
            .enumerate()
            .filter(|(_, r)| be32(r, 0) != 0)
            .map(|(i, _)| i)
            .collect()
    }

    /// 128 KiB blocks in which two images differ at all (for the report).
    fn raw_differences(a: &Path, b: &Path) -> usize {
        let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
        a.chunks(PEB)
            .zip(b.chunks(PEB))
            .filter(|(x, y)| x != y)
            .count()
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
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn test_mode_runs_from_ram_and_leaves_flash_unchanged() {
        let p = Prelude::start(env!("CARGO_TARGET_TMPDIR"), "testmode").unwrap();
        let (t0, logs, lab) = (p.t0, p.logs.clone(), p.lab.clone());
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
            "RAM-only plan (persist = false): fetching into RAM, flash untouched",
            "kexec: sync and reboot into the RAM set's image",
            "config: test            true",
            "the RAM store holds the RAM-only plan: validated",
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
        assert_eq!(
            scenario::node_by_mac(&lab.state, &mac).unwrap().node.state,
            NodeState::Test
        );
        card.power_cut();
        let (before, after) = (ubi_contents(&flash_before), ubi_contents(&flash));
        let changed: Vec<String> = before
            .keys()
            .chain(after.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| before.get(k).map(|e| e.1) != after.get(k).map(|e| e.1))
            .map(|k| {
                format!(
                    "vol {:#x} LEB {}: {:?} -> {:?}",
                    k.0,
                    k.1,
                    before.get(k),
                    after.get(k)
                )
            })
            .collect();
        eprintln!(
            "flash after the test boot: {} live LEBs, {} changed {changed:?}; raw image: {} of {} PEBs differ",
            after.len(),
            changed.len(),
            raw_differences(&flash, &flash_before),
            FLASH_PEBS
        );
        assert!(before.len() > 10, "the image holds the committed set");
        assert!(
            changed.is_empty(),
            "test mode changed what the flash holds: {changed:?}"
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
        assert_eq!(
            scenario::node_by_mac(&lab.state, &mac).unwrap().node.state,
            NodeState::Ready
        );
        drop(shelf);
    }
}
