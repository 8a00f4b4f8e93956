//! Tier-3 lab tests: the real Debian kernel boots an initramfs built by our mkinitramfs.
//!
//! `boots_nandsim_ubi_from_load_list` (QEMU tier): busybox-static as /bin/busybox,
//! a shell /init that insmods every line of /lib/modules/load.list, then ubiattach on
//! nandsim. It proves the resolved order (nandsim, ubi, ubifs with its undeclared zstd
//! dependencies) loads on the real kernel.
//!
//! `card_receives_backplane_frames` (QEMU and netns tiers): a
//! two-card shelf; both card VMs receive the 0x88B5 broadcasts sent from an AF_PACKET
//! socket on the master port; each guest reports its eth0 counters, which must account for
//! exactly our frames (IPv6 is off on both sides, so nothing else moves).
//!
//! `block2mtd_flash_survives_power_cut` (QEMU tier): flash on a disk image
//! keeps a UBI volume across a SIGKILL and a new boot.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use shelfboot_mkinitramfs::compress::Compression;
    use shelfboot_qemu::backplane;
    use shelfboot_qemu::card::{Card, CardConfig};
    use shelfboot_qemu::flash::{Block2mtd, Nandsim};
    use shelfboot_qemu::shelf::{Shelf, card_mac};
    use shelfboot_qemu::{kernel, release, scenario};
    use shelfboot_testkit::tier::{self, Tier};

    use shelfboot_qemu::busybox::PRELUDE;

    /// [`shelfboot_qemu::busybox::initramfs`], failing the test on error.
    fn busybox_initramfs(
        k: &kernel::Kernel,
        dir: &Path,
        init_script: &str,
        modules: &[(&str, &str)],
        tools: &[&str],
        compression: Compression,
    ) -> (PathBuf, usize, Duration) {
        shelfboot_qemu::busybox::initramfs(k, dir, init_script, modules, tools, compression)
            .unwrap()
    }

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn boots_nandsim_ubi_from_load_list() {
        tier::require(&[Tier::Qemu]);
        let t0 = Instant::now();
        let k = kernel::acquire(&kernel::cache_dir(), false).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let script = format!(
            "{PRELUDE}{}",
            r#"cat /proc/mtd
if ubiattach -m 0 -d 0; then echo "LAB: ubiattach ok, $(cat /sys/class/ubi/ubi0/total_eraseblocks) PEBs, $(cat /sys/class/ubi/ubi0/bad_peb_count) bad"; else echo "LAB: ubiattach FAILED"; fi
grep -q '^ubifs ' /proc/modules && echo "LAB: ubifs loaded"
poweroff -f
"#
        );
        // Two bad blocks: proves multi-parameter lines reach insmod intact.
        let nand = Nandsim {
            badblocks: vec![5, 10],
            ..Nandsim::default()
        };
        let (initramfs, nmods, build_time) = busybox_initramfs(
            &k,
            tmp.path(),
            &script,
            &[
                ("nandsim", nand.params().as_str()),
                ("ubi", ""),
                ("ubifs", ""),
            ],
            &["/usr/sbin/ubiattach"],
            Compression::Zstd,
        );
        let logs = scenario::fresh_log_dir(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            "boots_nandsim_ubi_from_load_list",
        )
        .unwrap();
        let mut cfg = CardConfig::new("nand0", &k.qemu_kernel, &initramfs, &logs);
        cfg.append = release::CONSOLE_LOG.into();
        let mut card = Card::start(cfg).unwrap();
        let first = card
            .wait_for("LAB: init started", Duration::from_secs(60))
            .unwrap();
        let loaded = card
            .wait_for("LAB: modules loaded", Duration::from_secs(30))
            .unwrap();
        assert_eq!(
            loaded.line,
            format!("LAB: modules loaded {nmods}"),
            "console:\n{}",
            card.console()
        );
        let attach = card
            .wait_for("LAB: ubiattach", Duration::from_secs(30))
            .unwrap();
        // 128 MiB nandsim = 1024 PEBs of 128 KiB; UBI counts the 1022 good ones.
        assert_eq!(
            attach.line,
            "LAB: ubiattach ok, 1022 PEBs, 2 bad",
            "console:\n{}",
            card.console()
        );
        card.wait_for("LAB: ubifs loaded", Duration::from_secs(10))
            .unwrap();
        let status = card.wait_exit(Duration::from_secs(30)).unwrap();
        assert!(status.success(), "QEMU exit {status}");
        assert!(
            !card.console().contains("FAILED"),
            "console:\n{}",
            card.console()
        );
        eprintln!(
            "measured: initramfs build {:.2} s, QEMU start to init's first line {:.2} s, to ubiattach {:.2} s, test total {:.2} s",
            build_time.as_secs_f64(),
            first.elapsed.as_secs_f64(),
            attach.elapsed.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
    }

    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn card_receives_backplane_frames() {
        tier::require(&[Tier::Qemu, Tier::Netns]);
        const FRAMES: u64 = 20;
        const FRAME_LEN: usize = 1000;
        let t0 = Instant::now();
        let k = kernel::acquire(&kernel::cache_dir(), false).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let script = format!(
            "{PRELUDE}{}",
            r#"ip link set eth0 up
echo "LAB: eth0 up $(cat /sys/class/net/eth0/address)"
i=0
while [ $i -lt 300 ]; do
  if [ "$(cat /sys/class/net/eth0/statistics/rx_packets)" -ge 20 ]; then break; fi
  sleep 0.1; i=$((i+1))
done
sleep 1
echo "LAB: rx $(cat /sys/class/net/eth0/statistics/rx_packets) packets $(cat /sys/class/net/eth0/statistics/rx_bytes) bytes"
poweroff -f
"#
        );
        let (initramfs, _, _) = busybox_initramfs(
            &k,
            tmp.path(),
            &script,
            &[("virtio_net", "")],
            &[],
            Compression::None,
        );
        let logs = scenario::fresh_log_dir(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            "card_receives_backplane_frames",
        )
        .unwrap();
        // Two cards: a broadcast must reach every tap of the bridge.
        let mut shelf = Shelf::start(2, |i| {
            let mut cfg = CardConfig::new(&format!("net{i}"), &k.qemu_kernel, &initramfs, &logs);
            cfg.append = format!("{} ipv6.disable=1", release::CONSOLE_LOG);
            cfg
        })
        .unwrap();
        let ups = shelf
            .wait_all("LAB: eth0 up", Duration::from_secs(90))
            .unwrap();
        for (i, up) in ups.iter().enumerate() {
            assert!(
                up.line.ends_with(&backplane::mac_string(&card_mac(i))),
                "{}",
                up.line
            );
        }
        let bp = shelf.backplane();
        let port = bp.raw_port(backplane::MASTER_IF).unwrap();
        let taps: Vec<String> = (0..2).map(|i| bp.tap(i).unwrap()).collect();
        let before: Vec<u64> = taps
            .iter()
            .map(|t| bp.counter(t, "tx_packets").unwrap())
            .collect();
        for i in 0..FRAMES {
            let payload = vec![u8::try_from(i).unwrap(); FRAME_LEN - 14];
            port.send(&backplane::ethernet_frame(
                [0xff; 6],
                backplane::MASTER_MAC,
                0x88b5,
                &payload,
            ))
            .unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let rx = shelf.wait_all("LAB: rx", Duration::from_secs(40)).unwrap();
        for (i, m) in rx.iter().enumerate() {
            let expected = format!(
                "LAB: rx {FRAMES} packets {} bytes",
                FRAMES * FRAME_LEN as u64
            );
            assert_eq!(m.line, expected, "card {i}");
        }
        let bp = shelf.backplane();
        for (tap, b) in taps.iter().zip(before) {
            let after = bp.counter(tap, "tx_packets").unwrap();
            assert_eq!(after - b, FRAMES, "frames the bridge handed to {tap}");
        }
        for card in shelf.cards() {
            assert!(card.wait_exit(Duration::from_secs(30)).unwrap().success());
        }
        drop(port);
        drop(shelf);
        eprintln!(
            "measured: two cards, boot to eth0 up {:.2} / {:.2} s, test total {:.2} s",
            ups[0].elapsed.as_secs_f64(),
            ups[1].elapsed.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
    }

    /// block2mtd over a 0xFF-filled disk image survives a power cut: boot 1 creates a
    /// UBI volume, writes a token, syncs and is killed (SIGKILL, no poweroff); boot 2
    /// finds the volume and reads the token back from flash. Then a wait that times out
    /// reports the CPU state from the QEMU monitor.
    #[test]
    #[ignore = "tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it"]
    fn block2mtd_flash_survives_power_cut() {
        tier::require(&[Tier::Qemu]);
        let t0 = Instant::now();
        let k = kernel::acquire(&kernel::cache_dir(), false).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let token = format!("token-{}-{}", std::process::id(), t0.elapsed().as_nanos());
        let script = format!(
            "{PRELUDE}echo -n {token} > /token\n{}",
            r#"ubiattach -m 0 -d 0 >/dev/null || echo "LAB: ubiattach FAILED"
if ubinfo -d 0 -N lab >/dev/null 2>&1; then
  echo "LAB: found volume lab: $(head -c $(wc -c < /token) /dev/ubi0_0)"
else
  ubimkvol /dev/ubi0 -N lab -s 1MiB >/dev/null && ubiupdatevol /dev/ubi0_0 /token && sync && echo "LAB: wrote volume lab"
fi
sleep 600
"#
        );
        let (initramfs, _, _) = busybox_initramfs(
            &k,
            tmp.path(),
            &script,
            &[
                ("virtio_blk", ""),
                ("block2mtd", Block2mtd::default().params().as_str()),
                ("ubi", ""),
            ],
            &[
                "/usr/sbin/ubiattach",
                "/usr/sbin/ubimkvol",
                "/usr/sbin/ubiupdatevol",
                "/usr/sbin/ubinfo",
            ],
            Compression::None,
        );
        let disk = tmp.path().join("flash.img");
        shelfboot_qemu::card::create_erased_image(&disk, 16 << 20).unwrap();
        let logs = scenario::fresh_log_dir(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            "block2mtd_flash_survives_power_cut",
        )
        .unwrap();
        let mut cfg = CardConfig::new("b2m0", &k.qemu_kernel, &initramfs, &logs);
        cfg.append = release::CONSOLE_LOG.into();
        cfg.disk = Some(disk);
        let mut card = Card::start(cfg).unwrap();
        card.wait_for("LAB: wrote volume lab", Duration::from_secs(90))
            .unwrap();
        card.power_cycle().unwrap();
        assert_eq!(card.boots(), 2);
        let found = card
            .wait_for("LAB: found volume lab", Duration::from_secs(90))
            .unwrap();
        assert_eq!(found.line, format!("LAB: found volume lab: {token}"));
        assert!(
            !card.console().contains("FAILED"),
            "console:\n{}",
            card.console()
        );
        // A wait that times out says where the (idle, running) VM's CPU is: the RIP line
        // in the error, registers and code appended to the card's QEMU log.
        let err = card
            .wait_for("LAB: never printed", Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CPU then: RIP="), "{err}");
        let qlog = std::fs::read_to_string(logs.join("b2m0.qemu.log")).unwrap();
        assert!(
            qlog.contains("CPU at the timeout of the wait for") && qlog.contains("CR3="),
            "{qlog}"
        );
        card.power_cut();
        assert!(!card.is_running());
        eprintln!(
            "measured: two boots with a power cut, test total {:.2} s",
            t0.elapsed().as_secs_f64()
        );
    }
}
