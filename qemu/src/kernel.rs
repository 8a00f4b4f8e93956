//! Getting the lab's kernel: Debian's `linux-image-amd64` through apt, version discovered
//! from its Depends field, unpacked, `depmod`ed, and its PVH vmlinux extracted — once.
//!
//! Cache layout (root: `$SHELFBOOT_LAB_CACHE`, else `lab-cache/` at the repo root):
//!
//! ```text
//! kernel.lock                  flock: one acquisition at a time across processes
//! debs/*.deb                   what apt-get download fetched
//! kernel/current               the version last acquired (e.g. 6.1.0-56-amd64)
//! kernel/VERSION/root/         dpkg-deb -x of linux-image-VERSION, depmod -b'd
//! kernel/VERSION/vmlinux       PVH ELF for `qemu -kernel`
//! kernel/VERSION/complete      marker written last
//! ```
//!
//! What it does not do: hard-code a version or URL, verify signatures beyond what apt
//! does, or clean old versions (delete the directory).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};

use shelfboot_proto::id::Arch;

use crate::cmd::{self, CmdError};
use crate::vmlinux::{self, VmlinuxError};

/// The meta package that tracks Debian's current amd64 kernel.
pub const META_PACKAGE: &str = "linux-image-amd64";

/// A ready lab kernel of one card architecture: Debian's amd64 kernel (here) or the
/// arm64 kernel built from Debian's source ([`crate::kbuild`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// Kernel version, e.g. `6.1.0-56-amd64`; for the built arm64 kernel its cache key
    /// (`6.1.192-3-FRAGHASH`).
    pub version: String,
    /// The card architecture it runs on.
    pub arch: Arch,
    /// Unpacked package root: `root/boot/vmlinuz-V`, `root/lib/modules/V` (amd64); the
    /// cache directory of the Image (arm64, no module tree).
    pub root: PathBuf,
    /// True when the initramfs carries modules from `root/lib/modules/V`; false when
    /// everything the card needs is built into the kernel.
    pub modules: bool,
    /// What a card kexecs: the bzImage (x86_64) or the raw `Image` (aarch64).
    pub kexec_image: PathBuf,
    /// What QEMU's `-kernel` boots: the PVH ELF (x86_64) or the raw `Image` (aarch64).
    pub qemu_kernel: PathBuf,
}

/// Errors acquiring the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A cache file or directory could not be used.
    #[error(
        "cannot {action} {path} in the lab cache; set SHELFBOOT_LAB_CACHE to a writable directory"
    )]
    Cache {
        /// What was attempted.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A host tool failed (apt-get, dpkg-deb, depmod).
    #[error("kernel acquisition step failed; if apt cannot find the package, run `apt-get update`")]
    Tool(#[source] CmdError),
    /// The meta package's Depends field names no versioned image.
    #[error("{deb}: Depends {depends:?} names no linux-image-VERSION package")]
    NoVersion {
        /// The .deb.
        deb: PathBuf,
        /// Its Depends field.
        depends: String,
    },
    /// apt-get download left no .deb behind.
    #[error("apt-get download {package} left no {package}_*.deb in {dir}")]
    NoDeb {
        /// Package name.
        package: String,
        /// Download directory.
        dir: PathBuf,
    },
    /// The unpacked package lacks the kernel image.
    #[error("{path} is missing after unpacking; the package layout is not what the lab expects")]
    Layout {
        /// The missing path.
        path: PathBuf,
    },
    /// A Debian package the lab needs is not installed.
    #[error("{what} is not installed; run `./dev setup` (as root)")]
    Missing {
        /// The package.
        what: &'static str,
        /// The dpkg-query failure.
        #[source]
        source: CmdError,
    },
    /// The built kernel's config lacks fragment symbols (their dependencies are off).
    #[error(
        "the arm64 kernel config lost fragment symbols {missing}; enable what they depend on in qemu/kernel/arm64-lab.config"
    )]
    Config {
        /// The symbols, space-separated.
        missing: String,
    },
    /// vmlinux extraction failed.
    #[error("cannot extract the PVH vmlinux")]
    Vmlinux(#[source] VmlinuxError),
}

/// The cache root: `$SHELFBOOT_LAB_CACHE`, else `lab-cache/` at the repository root.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("SHELFBOOT_LAB_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join("lab-cache")
        }
    }
}

/// The versioned package from a meta package's Depends field, e.g.
/// `linux-image-6.1.0-56-amd64 (= 6.1.192-2)` → `linux-image-6.1.0-56-amd64`.
pub fn versioned_package(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|alt| alt.split_whitespace().next().unwrap_or(""))
        .find(|name| {
            name.strip_prefix("linux-image-")
                .is_some_and(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        })
        .map(str::to_string)
}

/// Maps an I/O error on `path` in the lab cache to [`KernelError::Cache`].
pub(crate) fn cache_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.to_path_buf();
    move |source| KernelError::Cache {
        action,
        path,
        source,
    }
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>, KernelError> {
    let prefix = format!("{package}_");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(cache_err("list", dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    Ok(found.pop())
}

fn download(dir: &Path, package: &str) -> Result<PathBuf, KernelError> {
    cmd::run(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(dir),
    )
    .map_err(KernelError::Tool)?;
    find_deb(dir, package)?.ok_or_else(|| KernelError::NoDeb {
        package: package.to_string(),
        dir: dir.to_path_buf(),
    })
}

fn ready(dir: &Path, version: &str) -> Kernel {
    let root = dir.join("root");
    Kernel {
        version: version.to_string(),
        arch: Arch::X86_64,
        modules: true,
        kexec_image: root.join(format!("boot/vmlinuz-{version}")),
        qemu_kernel: dir.join("vmlinux"),
        root,
    }
}

/// The lab kernel for `arch`: Debian's amd64 kernel ([`acquire`]) or the arm64 kernel
/// built from Debian's source ([`crate::kbuild::acquire`]; `refresh` does not apply: its
/// key is the installed source version).
pub fn acquire_arch(cache: &Path, arch: Arch, refresh: bool) -> Result<Kernel, KernelError> {
    match arch {
        Arch::X86_64 => acquire(cache, refresh),
        Arch::Aarch64 => crate::kbuild::acquire(cache),
    }
}

/// Takes the lab cache's kernel lock (`kernel.lock`, one acquisition at a time across
/// processes, for every architecture's kernel); held until the returned guard drops.
pub(crate) fn lock_cache(cache: &Path) -> Result<Flock<fs::File>, KernelError> {
    let lock_path = cache.join("kernel.lock");
    let lock_file = fs::File::create(&lock_path).map_err(cache_err("create", &lock_path))?;
    Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, errno)| KernelError::Cache {
        action: "lock",
        path: lock_path.clone(),
        source: errno.into(),
    })
}

/// Returns the cached kernel, acquiring it first if needed. With `refresh`, apt is asked
/// for the current version even when a kernel is cached.
pub fn acquire(cache: &Path, refresh: bool) -> Result<Kernel, KernelError> {
    fs::create_dir_all(cache.join("debs")).map_err(cache_err("create", &cache.join("debs")))?;
    fs::create_dir_all(cache.join("kernel")).map_err(cache_err("create", &cache.join("kernel")))?;
    let _lock = lock_cache(cache)?;
    let current = cache.join("kernel/current");
    if !refresh && let Ok(v) = fs::read_to_string(&current) {
        let v = v.trim();
        let dir = cache.join("kernel").join(v);
        if !v.is_empty() && dir.join("complete").is_file() {
            log::debug!("kernel {v} from cache {}", dir.display());
            return Ok(ready(&dir, v));
        }
    }
    let debs = cache.join("debs");
    if let Some(old) = find_deb(&debs, META_PACKAGE)? {
        fs::remove_file(&old).map_err(cache_err("remove", &old))?;
    }
    log::info!("asking apt for {META_PACKAGE}");
    let meta = download(&debs, META_PACKAGE)?;
    let depends = cmd::run(Command::new("dpkg-deb").arg("-f").arg(&meta).arg("Depends"))
        .map_err(KernelError::Tool)?;
    let package = versioned_package(&depends).ok_or_else(|| KernelError::NoVersion {
        deb: meta.clone(),
        depends: depends.trim().to_string(),
    })?;
    let version = package.trim_start_matches("linux-image-").to_string();
    let dir = cache.join("kernel").join(&version);
    if dir.join("complete").is_file() {
        fs::write(&current, &version).map_err(cache_err("write", &current))?;
        return Ok(ready(&dir, &version));
    }
    log::info!("downloading {package}");
    let deb = match find_deb(&debs, &package)? {
        Some(d) => d,
        None => download(&debs, &package)?,
    };
    let tmp_root = dir.join("root.tmp");
    if tmp_root.exists() {
        fs::remove_dir_all(&tmp_root).map_err(cache_err("remove", &tmp_root))?;
    }
    fs::create_dir_all(&tmp_root).map_err(cache_err("create", &tmp_root))?;
    log::info!("unpacking {} into {}", deb.display(), tmp_root.display());
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp_root))
        .map_err(KernelError::Tool)?;
    cmd::run(
        Command::new("depmod")
            .arg("-b")
            .arg(&tmp_root)
            .arg(&version),
    )
    .map_err(KernelError::Tool)?;
    let bz = tmp_root.join(format!("boot/vmlinuz-{version}"));
    if !bz.is_file() {
        return Err(KernelError::Layout { path: bz });
    }
    vmlinux::extract(&bz, &dir.join("vmlinux")).map_err(KernelError::Vmlinux)?;
    let root = dir.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).map_err(cache_err("remove", &root))?;
    }
    fs::rename(&tmp_root, &root).map_err(cache_err("rename", &tmp_root))?;
    fs::write(dir.join("complete"), &version).map_err(cache_err("write", &dir.join("complete")))?;
    fs::write(&current, &version).map_err(cache_err("write", &current))?;
    Ok(ready(&dir, &version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_parsing() {
        assert_eq!(
            versioned_package("linux-image-6.1.0-56-amd64 (= 6.1.192-2)").as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(
            versioned_package(
                "firmware-x, linux-image-6.12.9-amd64 | linux-image-6.12.9-amd64-unsigned"
            )
            .as_deref(),
            Some("linux-image-6.12.9-amd64")
        );
        assert_eq!(versioned_package("linux-image-amd64-signed-template"), None);
        assert_eq!(versioned_package(""), None);
    }

    #[test]
    fn cached_kernel_is_returned_without_apt() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/9.9-test");
        fs::create_dir_all(&k).unwrap();
        fs::write(k.join("complete"), "9.9-test").unwrap();
        fs::write(dir.path().join("kernel/current"), "9.9-test\n").unwrap();
        let got = acquire(dir.path(), false).unwrap();
        assert_eq!(got.version, "9.9-test");
        assert_eq!(got.arch, Arch::X86_64);
        assert_eq!(got.qemu_kernel, k.join("vmlinux"));
        assert_eq!(got.kexec_image, k.join("root/boot/vmlinuz-9.9-test"));
    }
}
