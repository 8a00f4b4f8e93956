//! Busybox lab images: an initramfs whose /init is a shell script (busybox-static as
//! /bin/busybox, host tools with their libraries, kernel modules from a load list), and
//! [`ubinfo_of_image`], which boots one over a card's flash image to read it with
//! mtd-utils.
//!
//! [`binary`] gives Debian's static busybox for a card architecture (the lab release's
//! base package ships it).
//!
//! Not here: the shelfboot initramfs (see [`crate::release`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use shelfboot_mkinitramfs::build::{self, BuildSpec, ModuleSpec};
use shelfboot_mkinitramfs::compress::Compression;

use nix::fcntl::{Flock, FlockArg};
use shelfboot_proto::id::Arch;

use crate::card::{Card, CardConfig};
use crate::flash::Block2mtd;
use crate::{hostbin, kernel, release};

/// Debian's static busybox for `arch`: the host's `/bin/busybox` (x86_64, package
/// busybox-static), or Debian's `busybox-static:arm64`, fetched once with `apt-get
/// download` and unpacked into the lab cache `cache` (`busybox-arm64/VERSION/bin/busybox`,
/// `busybox-arm64/current` names the version; the flock is `busybox.lock`). The arm64
/// one needs `dpkg --add-architecture arm64` and `apt-get update` (`./dev setup` does both).
pub fn binary(arch: Arch, cache: &Path) -> anyhow::Result<PathBuf> {
    if arch == Arch::X86_64 {
        return Ok(PathBuf::from("/bin/busybox"));
    }
    let base = cache.join("busybox-arm64");
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    let lock_path = cache.join("busybox.lock");
    let lock_file = std::fs::File::create(&lock_path)
        .with_context(|| format!("create {}", lock_path.display()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("lock {}", lock_path.display()))?;
    let current = base.join("current");
    if let Ok(v) = std::fs::read_to_string(&current) {
        let bin = base.join(v.trim()).join("bin/busybox");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    let debs = base.join("debs");
    let _ = std::fs::remove_dir_all(&debs);
    std::fs::create_dir_all(&debs).with_context(|| format!("create {}", debs.display()))?;
    crate::cmd::run(
        std::process::Command::new("apt-get")
            .args(["download", "-q", "busybox-static:arm64"])
            .current_dir(&debs),
    )
    .context(
        "apt-get download busybox-static:arm64 (needs `dpkg --add-architecture arm64` and `apt-get update`: ./dev setup)",
    )?;
    let deb = std::fs::read_dir(&debs)
        .with_context(|| format!("list {}", debs.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", debs.display()))?;
    let version = crate::cmd::run(
        std::process::Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Version"),
    )
    .context("read the busybox-static:arm64 version")?
    .trim()
    .replace(':', "_");
    let dir = base.join(&version);
    let _ = std::fs::remove_dir_all(&dir);
    crate::cmd::run(
        std::process::Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&dir),
    )
    .with_context(|| format!("unpack {}", deb.display()))?;
    let bin = dir.join("bin/busybox");
    anyhow::ensure!(
        bin.is_file(),
        "{} has no bin/busybox: the package layout is not what the lab expects",
        deb.display()
    );
    std::fs::write(&current, &version).with_context(|| format!("write {}", current.display()))?;
    let _ = std::fs::remove_dir_all(&debs);
    Ok(bin)
}

/// The start of every busybox /init: applets, /dev, /proc, /sys, then every module of
/// /lib/modules/load.list (waiting for a device node its parameters name).
pub const PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin:/usr/bin:/sbin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
echo "LAB: init started, uptime $(cut -d' ' -f1 /proc/uptime)"
n=0
while read -r path params; do
  case "$path" in ''|'#'*) continue;; esac
  dev=$(echo "$params" | grep -o '/dev/[a-z0-9]*' | head -n 1)
  w=0; while [ -n "$dev" ] && [ ! -e "$dev" ] && [ $w -lt 50 ]; do sleep 0.1; w=$((w+1)); done
  if insmod "/lib/modules/$path" $params; then n=$((n+1)); else echo "LAB: FAILED insmod $path $params"; fi
done < /lib/modules/load.list
echo "LAB: modules loaded $n"
"#;

/// Builds a busybox initramfs in `dir` with `init_script` as /init, the `modules`
/// (name, parameters) of kernel `k` and the host `tools`. Returns its path, the number
/// of modules and the build time.
pub fn initramfs(
    k: &kernel::Kernel,
    dir: &Path,
    init_script: &str,
    modules: &[(&str, &str)],
    tools: &[&str],
    compression: Compression,
) -> anyhow::Result<(PathBuf, usize, Duration)> {
    let init = dir.join("init.sh");
    std::fs::write(&init, init_script).with_context(|| format!("write {}", init.display()))?;
    let mut add = vec![(PathBuf::from("/bin/busybox"), "/bin/busybox".to_string())];
    let tools: Vec<&Path> = tools.iter().map(Path::new).collect();
    add.extend(hostbin::all_with_libraries(&tools).context("collect host tools")?);
    let spec = BuildSpec {
        init: Some(init),
        modules: Some(ModuleSpec {
            root: k.root.clone(),
            kver: k.version.clone(),
            wanted: modules
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_string()))
                .collect(),
        }),
        add,
        compression,
        ..BuildSpec::default()
    };
    let started = Instant::now();
    let built = build::build(&spec).context("build the busybox initramfs")?;
    let took = started.elapsed();
    let out = dir.join("initramfs.cpio");
    std::fs::write(&out, &built.archive).with_context(|| format!("write {}", out.display()))?;
    eprintln!(
        "initramfs: {} entries, {} modules ({}), {} bytes {compression:?}, built in {:.2} s",
        built.entries,
        built.modules.len(),
        built
            .modules
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        built.archive.len(),
        took.as_secs_f64()
    );
    Ok((out, built.modules.len(), took))
}

/// Boots a busybox VM over a copy of the block2mtd flash `image` (default geometry), has
/// mtd-utils attach it and run `ubinfo -a`, and returns what `ubinfo -a` printed. Fails if
/// the attach or `ubinfo` fails. The copy keeps `image` as it was.
pub fn ubinfo_of_image(
    k: &kernel::Kernel,
    dir: &Path,
    image: &Path,
    logs: &Path,
) -> anyhow::Result<String> {
    let script = format!(
        "{PRELUDE}{}",
        r#"if ubiattach -m 0 -d 0 >/dev/null; then echo "LAB: attached"; else echo "LAB: ubiattach FAILED"; fi
ubinfo -a > /ubinfo.txt 2>&1
rc=$?
echo "LAB: ubinfo begin"
cat /ubinfo.txt
echo "LAB: ubinfo end, exit $rc"
sync
poweroff -f
"#
    );
    let (initramfs, _, _) = initramfs(
        k,
        dir,
        &script,
        &[
            ("virtio_blk", ""),
            ("block2mtd", Block2mtd::default().params().as_str()),
            ("ubi", ""),
        ],
        &["/usr/sbin/ubiattach", "/usr/sbin/ubinfo"],
        Compression::None,
    )?;
    let disk = dir.join("ubinfo-flash.img");
    std::fs::copy(image, &disk)
        .with_context(|| format!("copy {} to {}", image.display(), disk.display()))?;
    let mut cfg = CardConfig::new("ubinfo", &k.qemu_kernel, &initramfs, logs);
    cfg.append = release::CONSOLE_LOG.into();
    cfg.disk = Some(disk);
    let mut card = Card::start(cfg).context("start the ubinfo VM")?;
    let end = card
        .wait_for("LAB: ubinfo end", Duration::from_secs(120))
        .context("wait for ubinfo")?;
    let console = card.console();
    card.power_cut();
    anyhow::ensure!(
        !console.contains("LAB: ubiattach FAILED") && end.line.ends_with("exit 0"),
        "ubiattach or ubinfo -a failed on {}:\n{console}",
        image.display()
    );
    let out = console
        .split("LAB: ubinfo begin")
        .nth(1)
        .and_then(|s| s.split("LAB: ubinfo end").next())
        .unwrap_or_default();
    Ok(out.to_string())
}
