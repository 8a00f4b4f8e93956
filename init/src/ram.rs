//! The RAM store: where a `persist = false` plan (test mode, RAM-first) is fetched to, and
//! every plan of a card without usable flash.
//!
//! ```text
//! fresh boot:        /run/shelfboot/ram   FileVolumes, formatted with a capacity of
//!                                         min(free space of /run, MemAvailable) / 2
//! kexec'd test image /shelfboot-test/ram  (shelfboot.test=1) the directory the previous
//!                                         kernel appended to our initramfs: opened as is
//! ```
//!
//! The capacity bound makes "no space" a structured error the agent sends to the master
//! (card's `StoreError::NoSpace`) before any byte is fetched. Half of what is free is kept
//! back because a test set with a boot image is copied once more into `/run` to be
//! kexec'd (kernel + initramfs with this directory appended), and the running system
//! needs memory too. A carried store is re-hashed before use (it went through the
//! kernel's cpio unpacking); one that does not verify is ignored (logged) and an empty
//! store is made instead, so the agent fetches the set again. Nothing here touches flash.
//!
//! Not here: the fetch (card's agent), the hand-off ([`crate::handoff`]).

use std::path::{Path, PathBuf};

use shelfboot_card::flash::{FileVolumes, Store, StoreConfig, StoreError, VolumeError};

/// Where a fresh RAM store is made (tmpfs).
pub const RAM_DIR: &str = "/run/shelfboot/ram";
/// Where a kexec'd test image finds the RAM store its predecessor carried over (the
/// initramfs, which is RAM too). Also the archive path [`crate::handoff::carry`] writes.
pub const CARRIED_DIR: &str = "/shelfboot-test/ram";
/// LEB size of the RAM store (the unit capacity is counted in).
pub const RAM_LEB: u64 = 64 << 10;

/// Why there is no RAM store.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    /// statvfs of the tmpfs failed.
    #[error("cannot read the free space of {path} (statvfs)")]
    Statvfs {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// /proc/meminfo could not be read or has no MemAvailable.
    #[error("cannot read MemAvailable from {path}")]
    Meminfo {
        /// The file.
        path: PathBuf,
        /// The cause, if it was an I/O error.
        #[source]
        source: Option<std::io::Error>,
    },
    /// Less than one LEB of RAM to spare.
    #[error("no RAM to spare for a RAM store: {budget} bytes after keeping half back")]
    TooSmall {
        /// The budget in bytes.
        budget: u64,
    },
    /// The directory could not be formatted or opened.
    #[error("cannot open the RAM store in {dir}")]
    Volumes {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: VolumeError,
    },
    /// The store on it could not be opened.
    #[error("cannot open the RAM store in {dir}")]
    Store {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: StoreError,
    },
}

/// `MemAvailable` in bytes from the text of `/proc/meminfo`.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        let mut it = rest.split_whitespace();
        let n: u64 = it.next()?.parse().ok()?;
        match it.next() {
            Some("kB") => n.checked_mul(1024),
            None => Some(n),
            Some(_) => None,
        }
    })
}

/// The RAM store's capacity in LEBs: half of the smaller of the tmpfs's free bytes and
/// the free memory, in whole [`RAM_LEB`]s.
pub fn budget_lebs(tmpfs_free: u64, mem_available: u64) -> u64 {
    tmpfs_free.min(mem_available) / 2 / RAM_LEB
}

/// Opens the RAM store of this boot: the carried one if `carried` holds a store (a
/// kexec'd test image), else a fresh one in `fresh` sized by [`budget_lebs`] from the
/// free space of `fresh`'s filesystem and `proc/meminfo`.
pub fn open(carried: &Path, fresh: &Path, proc: &Path) -> Result<Store<FileVolumes>, RamError> {
    if carried.join("table").exists() {
        match open_dir(carried, || FileVolumes::open(carried)).and_then(|s| verified(s, carried)) {
            Ok(s) => {
                log::info!(
                    "RAM store: using the one carried over the kexec in {} (re-hashed)",
                    carried.display()
                );
                return Ok(s);
            }
            Err(e) => log::error!(
                "RAM store: the carried one is unusable, starting an empty one: {}",
                shelfboot_proto::report::error_chain(&e)
            ),
        }
    }
    std::fs::create_dir_all(fresh).map_err(|e| RamError::Volumes {
        dir: fresh.to_path_buf(),
        source: VolumeError::from_io(
            shelfboot_card::flash::VolumeOp::Create,
            shelfboot_card::flash::VolumeTarget::Device,
            e,
        ),
    })?;
    let st = nix::sys::statvfs::statvfs(fresh).map_err(|source| RamError::Statvfs {
        path: fresh.to_path_buf(),
        source,
    })?;
    let free = st.blocks_available().saturating_mul(st.fragment_size());
    let meminfo = proc.join("meminfo");
    let text = std::fs::read_to_string(&meminfo).map_err(|e| RamError::Meminfo {
        path: meminfo.clone(),
        source: Some(e),
    })?;
    let avail = mem_available(&text).ok_or(RamError::Meminfo {
        path: meminfo,
        source: None,
    })?;
    let lebs = budget_lebs(free, avail);
    if lebs == 0 {
        return Err(RamError::TooSmall {
            budget: free.min(avail) / 2,
        });
    }
    log::info!(
        "RAM store: {} holds up to {} MiB ({} free on tmpfs, {} available memory)",
        fresh.display(),
        (lebs * RAM_LEB) >> 20,
        free >> 20,
        avail >> 20
    );
    open_dir(fresh, || FileVolumes::open_or_format(fresh, RAM_LEB, lebs))
}

/// `s` if every volume of its committed set still hashes to the set's digests (a carried
/// store went through the kernel's cpio unpacking).
fn verified(mut s: Store<FileVolumes>, dir: &Path) -> Result<Store<FileVolumes>, RamError> {
    let Some(set) = s.inventory().map(|i| i.set.clone()) else {
        return Ok(s);
    };
    match s.verify_set(&set) {
        Ok(bad) if bad.is_empty() => Ok(s),
        Ok(bad) => Err(RamError::Store {
            dir: dir.to_path_buf(),
            source: StoreError::SetDamaged { missing: bad },
        }),
        Err(source) => Err(RamError::Store {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

fn open_dir(
    dir: &Path,
    vols: impl FnOnce() -> Result<FileVolumes, VolumeError>,
) -> Result<Store<FileVolumes>, RamError> {
    let v = vols().map_err(|source| RamError::Volumes {
        dir: dir.to_path_buf(),
        source,
    })?;
    let cfg = StoreConfig {
        label: "RAM store",
        ..StoreConfig::default()
    };
    Store::open(v, cfg)
        .map(|(s, _)| s)
        .map_err(|source| RamError::Store {
            dir: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let m = "MemTotal:         250000 kB\nMemFree:  1 kB\nMemAvailable:     200000 kB\n";
        assert_eq!(mem_available(m), Some(200_000 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: x kB\n"), None);
    }

    #[test]
    fn budget_is_half_the_smaller_in_whole_lebs() {
        assert_eq!(budget_lebs(100 << 20, 200 << 20), (50 << 20) / RAM_LEB);
        assert_eq!(budget_lebs(400 << 20, 64 << 20), (32 << 20) / RAM_LEB);
        assert_eq!(budget_lebs(RAM_LEB, 1 << 30), 0);
    }

    #[test]
    fn fresh_store_is_bounded_and_a_carried_one_is_reopened() {
        let t = tempfile::tempdir().unwrap();
        let proc = t.path().join("proc");
        std::fs::create_dir_all(&proc).unwrap();
        // 1 MiB available: 8 LEBs of 64 KiB.
        std::fs::write(proc.join("meminfo"), "MemAvailable: 1024 kB\n").unwrap();
        let fresh = t.path().join("run/ram");
        let carried = t.path().join("carried");
        let s = open(&carried, &fresh, &proc).unwrap();
        let g = s.geometry();
        assert_eq!(g.leb_size, RAM_LEB);
        assert!(g.total_lebs <= 8, "{g:?}");
        assert!(s.inventory().is_none());
        drop(s);
        // A carried store (same format, a committed set) is opened, not reformatted.
        let mut s = open(&carried, &fresh, &proc).unwrap();
        let data = vec![9u8; 70_000];
        let a = shelfboot_card::flash::artifact::ArtifactRef {
            kind: shelfboot_card::flash::artifact::ArtifactKind::Package,
            name: "testpkg".into(),
            version: "1".into(),
            sha256: shelfboot_card::flash::artifact::Digest::of(&data),
            size: data.len() as u64,
        };
        s.begin(std::slice::from_ref(&a), "").unwrap();
        s.stage(&a, data.as_slice()).unwrap();
        let digest = s.commit().unwrap().set.digest;
        drop(s);
        std::fs::rename(&fresh, &carried).unwrap();
        let s = open(&carried, &t.path().join("elsewhere"), &proc).unwrap();
        assert_eq!(s.digest(), Some(digest));
        assert!(!t.path().join("elsewhere").exists());
        drop(s);
        // A carried blob that does not hash right: an empty fresh store instead.
        for f in std::fs::read_dir(carried.join("blobs")).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "map") {
                continue; // the LEB map of a segment, not data
            }
            let mut b = std::fs::read(&p).unwrap();
            b[100] ^= 1;
            std::fs::write(&p, b).unwrap();
        }
        let s = open(&carried, &t.path().join("fresh2"), &proc).unwrap();
        assert_eq!(s.digest(), None);
        assert!(t.path().join("fresh2/table").exists());
        drop(s);
        // No memory to spare: a named error, nothing formatted.
        std::fs::write(proc.join("meminfo"), "MemAvailable: 64 kB\n").unwrap();
        let e = open(&t.path().join("none"), &t.path().join("small"), &proc).unwrap_err();
        assert!(matches!(e, RamError::TooSmall { .. }), "{e}");
    }
}
