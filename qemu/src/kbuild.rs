//! The lab's arm64 card kernel, built here: Debian's `linux-source-6.1` cross-compiled
//! with Debian's `gcc-aarch64-linux-gnu`, `make allnoconfig` with the fragment
//! `qemu/kernel/arm64-lab.config` forced on (everything built in, no modules), reproducible
//! build identity (`KBUILD_BUILD_TIMESTAMP`/`USER`/`HOST`/`VERSION` fixed) — once per
//! source version and fragment.
//!
//! ```text
//! kernel.lock                          flock shared with crate::kernel (one build at a time)
//! kernel-arm64/SRCVER-FRAGHASH/Image   raw arm64 Image: what QEMU boots and a card kexecs
//! kernel-arm64/SRCVER-FRAGHASH/config  the resolved .config
//! kernel-arm64/SRCVER-FRAGHASH/complete  marker written last
//! kernel-arm64/build/                  the unpacked source while building; removed after
//! ```
//!
//! The build fails, naming the symbols, when a fragment symbol did not survive
//! `olddefconfig` (its dependencies are off). What it does not do: modules, a gzip'd
//! Image (arm64 `kexec_file_load` takes the raw one), or cleaning old keys.

use std::fs;
use std::path::Path;
use std::process::Command;

use sha2::{Digest as _, Sha256};
use shelfboot_proto::id::Arch;

use crate::cmd::{self, CmdError};
use crate::kernel::{Kernel, KernelError, cache_err};

/// The config fragment (kept in the tree; its hash is part of the cache key).
pub const FRAGMENT: &str = include_str!("../kernel/arm64-lab.config");
/// Debian's kernel source package.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
/// The source tarball that package installs.
pub const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// Prefix of Debian's aarch64 cross toolchain.
pub const CROSS_COMPILE: &str = "aarch64-linux-gnu-";
/// The build identity baked into the Image (and so into `uname -v`), fixed for
/// reproducible bytes.
const BUILD_ENV: [(&str, &str); 4] = [
    ("KBUILD_BUILD_TIMESTAMP", "1970-01-01 00:00:00 UTC"),
    ("KBUILD_BUILD_USER", "shelfboot"),
    ("KBUILD_BUILD_HOST", "lab"),
    ("KBUILD_BUILD_VERSION", "1"),
];

/// The `CONFIG_X=y` symbols of a fragment, without the prefix.
pub fn fragment_symbols(fragment: &str) -> Vec<&str> {
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("CONFIG_")?.strip_suffix("=y"))
        .collect()
}

/// The fragment symbols a resolved `.config` lacks (not `=y`).
pub fn missing_symbols<'a>(fragment: &'a str, config: &str) -> Vec<&'a str> {
    fragment_symbols(fragment)
        .into_iter()
        .filter(|s| {
            let want = format!("CONFIG_{s}=y");
            !config.lines().any(|l| l.trim() == want)
        })
        .collect()
}

/// Cache key: source package version and the first 16 hex digits of the fragment's
/// SHA-256, e.g. `6.1.192-3-0123456789abcdef`.
pub fn cache_key(source_version: &str, fragment: &str) -> String {
    let h = Sha256::digest(fragment.as_bytes());
    format!("{source_version}-{}", &hex::encode(h)[..16])
}

fn ready(dir: &Path, key: &str) -> Kernel {
    let image = dir.join("Image");
    Kernel {
        version: key.to_string(),
        arch: Arch::Aarch64,
        root: dir.to_path_buf(),
        modules: false,
        kexec_image: image.clone(),
        qemu_kernel: image,
    }
}

fn make(src: &Path, args: &[&str]) -> Result<String, CmdError> {
    let mut c = Command::new("make");
    c.current_dir(src)
        .arg("ARCH=arm64")
        .arg(format!("CROSS_COMPILE={CROSS_COMPILE}"))
        .args(args);
    for (k, v) in BUILD_ENV {
        c.env(k, v);
    }
    cmd::run(&mut c)
}

/// Returns the cached arm64 lab kernel, building it first if this source version and
/// fragment have none (about 3 minutes on 2 cores).
pub fn acquire(cache: &Path) -> Result<Kernel, KernelError> {
    let base = cache.join("kernel-arm64");
    fs::create_dir_all(&base).map_err(cache_err("create", &base))?;
    let version = cmd::run(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Version}"])
            .arg(SOURCE_PACKAGE),
    )
    .map_err(|source| KernelError::Missing {
        what: SOURCE_PACKAGE,
        source,
    })?;
    acquire_version(cache, version.trim())
}

/// [`acquire`] for source package version `version` (already installed).
pub fn acquire_version(cache: &Path, version: &str) -> Result<Kernel, KernelError> {
    let base = cache.join("kernel-arm64");
    let _lock = crate::kernel::lock_cache(cache)?;
    let key = cache_key(version, FRAGMENT);
    let dir = base.join(&key);
    if dir.join("complete").is_file() {
        log::debug!("arm64 kernel {key} from cache {}", dir.display());
        return Ok(ready(&dir, &key));
    }
    let build = base.join("build");
    if build.exists() {
        fs::remove_dir_all(&build).map_err(cache_err("remove", &build))?;
    }
    fs::create_dir_all(&build).map_err(cache_err("create", &build))?;
    log::info!("building the arm64 lab kernel {key} in {}", build.display());
    cmd::run(
        Command::new("tar")
            .args(["-xf", SOURCE_TARBALL, "--strip-components=1", "-C"])
            .arg(&build),
    )
    .map_err(KernelError::Tool)?;
    let frag = build.join("shelfboot-lab.config");
    fs::write(&frag, FRAGMENT).map_err(cache_err("write", &frag))?;
    make(
        &build,
        &["KCONFIG_ALLCONFIG=shelfboot-lab.config", "allnoconfig"],
    )
    .map_err(KernelError::Tool)?;
    let config_path = build.join(".config");
    let config = fs::read_to_string(&config_path).map_err(cache_err("read", &config_path))?;
    let missing = missing_symbols(FRAGMENT, &config);
    if !missing.is_empty() {
        return Err(KernelError::Config {
            missing: missing.join(" "),
        });
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    make(&build, &[&format!("-j{jobs}"), "Image"]).map_err(KernelError::Tool)?;
    fs::create_dir_all(&dir).map_err(cache_err("create", &dir))?;
    let built = build.join("arch/arm64/boot/Image");
    fs::copy(&built, dir.join("Image")).map_err(cache_err("copy", &built))?;
    fs::write(dir.join("config"), &config).map_err(cache_err("write", &dir.join("config")))?;
    fs::remove_dir_all(&build).map_err(cache_err("remove", &build))?;
    fs::write(dir.join("complete"), &key).map_err(cache_err("write", &dir.join("complete")))?;
    Ok(ready(&dir, &key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_has_what_the_lab_needs() {
        let s = fragment_symbols(FRAGMENT);
        for need in [
            "KEXEC_FILE",
            "MTD_BLOCK2MTD",
            "MTD_NAND_NANDSIM",
            "MTD_NAND_ECC_SW_HAMMING",
            "MTD_UBI",
            "MTD_UBI_BLOCK",
            "SQUASHFS_ZLIB",
            "OVERLAY_FS",
            "BLK_DEV_LOOP",
            "PACKET",
            "VIRTIO_MENU",
            "VIRTIO_NET",
            "SERIAL_AMBA_PL011_CONSOLE",
        ] {
            assert!(s.contains(&need), "{need} missing from the fragment");
        }
        assert!(!s.iter().any(|x| x.contains('=') || x.starts_with('#')));
    }

    #[test]
    fn dropped_symbols_are_named_and_the_key_follows_the_fragment() {
        let frag = "# c\nCONFIG_A=y\nCONFIG_B=y\n";
        assert_eq!(
            missing_symbols(frag, "CONFIG_A=y\n# CONFIG_B is not set\n"),
            ["B"]
        );
        assert!(missing_symbols(frag, "CONFIG_B=y\nCONFIG_A=y\n").is_empty());
        let k = cache_key("6.1.192-3", frag);
        assert!(
            k.starts_with("6.1.192-3-") && k.len() == "6.1.192-3-".len() + 16,
            "{k}"
        );
        assert_ne!(k, cache_key("6.1.192-3", "CONFIG_A=y\n"));
        assert_ne!(k, cache_key("6.1.193-1", frag));
    }

    #[test]
    fn a_cached_kernel_is_returned_without_building() {
        let d = tempfile::tempdir().unwrap();
        let key = cache_key("6.1.0-test", FRAGMENT);
        let k = d.path().join("kernel-arm64").join(&key);
        fs::create_dir_all(&k).unwrap();
        fs::write(k.join("complete"), &key).unwrap();
        let got = acquire_version(d.path(), "6.1.0-test").unwrap();
        assert_eq!(got.arch, Arch::Aarch64);
        assert_eq!(got.version, key);
        assert_eq!(got.qemu_kernel, k.join("Image"));
        assert_eq!(got.kexec_image, k.join("Image"));
        assert!(!got.modules);
    }
}
