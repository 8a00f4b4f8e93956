//! Reading UBI and MTD state from sysfs (`/sys/class/ubi`, `/sys/class/mtd`).
//!
//! The root (normally `/sys`) is injected so tests can lay out a fake tree in a temp
//! directory. Values are parsed strictly: a malformed attribute is an error naming the
//! file, never a silent zero. Not here: writing sysfs, debugfs, device discovery of
//! anything but MTD/UBI.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Errors reading sysfs.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// An attribute could not be read.
    #[error("cannot read sysfs attribute {path}")]
    Read {
        /// The attribute file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An attribute did not hold what the kernel documents.
    #[error("sysfs attribute {path} holds {value:?}, expected {expected}")]
    Parse {
        /// The attribute file.
        path: PathBuf,
        /// What it held.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// One UBI device as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UbiDeviceInfo {
    /// N in ubiN.
    pub ubi_num: u32,
    /// The MTD device it is attached to.
    pub mtd_num: u32,
    /// LEB size in bytes (`eraseblock_size`).
    pub leb_size: u64,
    /// Free LEBs available for new volumes (`avail_eraseblocks`).
    pub avail_lebs: u64,
    /// All LEBs (`total_eraseblocks`).
    pub total_lebs: u64,
    /// Bad physical eraseblocks (`bad_peb_count`).
    pub bad_pebs: u64,
    /// Number of volumes (`volumes_count`).
    pub volumes_count: u32,
    /// PEBs held back for bad-block handling (`reserved_for_bad`).
    pub reserved_for_bad: u64,
    /// Volume table size (`max_vol_count`).
    pub max_vol_count: u32,
}

/// One UBI volume as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UbiVolumeInfo {
    /// M in ubiN_M.
    pub vol_id: u32,
    /// Volume name.
    pub name: String,
    /// Bytes of data (static: what was written; dynamic: the reserved size).
    pub data_bytes: u64,
    /// LEBs reserved for the volume.
    pub reserved_ebs: u64,
    /// Usable bytes per LEB of this volume (`usable_eb_size`).
    pub usable_eb_size: u64,
    /// `static` rather than `dynamic`.
    pub is_static: bool,
    /// An update was started and never completed (`upd_marker`).
    pub upd_marker: bool,
    /// A static volume failed its CRC check (`corrupted`).
    pub corrupted: bool,
}

/// Reader over a sysfs root.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

fn read(path: &Path) -> Result<String, SysfsError> {
    fs::read_to_string(path)
        .map(|s| s.trim_end_matches('\n').to_string())
        .map_err(|source| SysfsError::Read {
            path: path.to_path_buf(),
            source,
        })
}

fn read_num<T: std::str::FromStr>(path: &Path) -> Result<T, SysfsError> {
    let value = read(path)?;
    value.trim().parse().map_err(|_| SysfsError::Parse {
        path: path.to_path_buf(),
        value,
        expected: "a decimal number",
    })
}

impl Sysfs {
    /// A reader rooted at `root` (normally `/sys`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    fn ubi_dir(&self, name: &str) -> PathBuf {
        self.root.join("class/ubi").join(name)
    }

    /// The UBI device `ubi_num`.
    pub fn ubi_device(&self, ubi_num: u32) -> Result<UbiDeviceInfo, SysfsError> {
        let d = self.ubi_dir(&format!("ubi{ubi_num}"));
        Ok(UbiDeviceInfo {
            ubi_num,
            mtd_num: read_num(&d.join("mtd_num"))?,
            leb_size: read_num(&d.join("eraseblock_size"))?,
            avail_lebs: read_num(&d.join("avail_eraseblocks"))?,
            total_lebs: read_num(&d.join("total_eraseblocks"))?,
            bad_pebs: read_num(&d.join("bad_peb_count"))?,
            volumes_count: read_num(&d.join("volumes_count"))?,
            reserved_for_bad: read_num(&d.join("reserved_for_bad"))?,
            max_vol_count: read_num(&d.join("max_vol_count"))?,
        })
    }

    /// The UBI device already attached to `mtd_num`, if any (e.g. attached by the
    /// kernel from `ubi.mtd=`).
    pub fn ubi_for_mtd(&self, mtd_num: u32) -> Result<Option<u32>, SysfsError> {
        for n in self.numbered("class/ubi", "ubi")? {
            let mtd: u32 = read_num(&self.ubi_dir(&format!("ubi{n}")).join("mtd_num"))?;
            if mtd == mtd_num {
                return Ok(Some(n));
            }
        }
        Ok(None)
    }

    /// All volumes of UBI device `ubi_num`, ordered by id.
    pub fn ubi_volumes(&self, ubi_num: u32) -> Result<Vec<UbiVolumeInfo>, SysfsError> {
        let prefix = format!("ubi{ubi_num}_");
        let mut out = Vec::new();
        for vol_id in self.numbered("class/ubi", &prefix)? {
            let d = self.ubi_dir(&format!("{prefix}{vol_id}"));
            let kind = read(&d.join("type"))?;
            let is_static = match kind.as_str() {
                "static" => true,
                "dynamic" => false,
                _ => {
                    return Err(SysfsError::Parse {
                        path: d.join("type"),
                        value: kind,
                        expected: "static or dynamic",
                    });
                }
            };
            let upd: u32 = read_num(&d.join("upd_marker"))?;
            let corrupted: u32 = read_num(&d.join("corrupted"))?;
            out.push(UbiVolumeInfo {
                vol_id,
                name: read(&d.join("name"))?,
                data_bytes: read_num(&d.join("data_bytes"))?,
                reserved_ebs: read_num(&d.join("reserved_ebs"))?,
                usable_eb_size: read_num(&d.join("usable_eb_size"))?,
                is_static,
                upd_marker: upd != 0,
                corrupted: corrupted != 0,
            });
        }
        out.sort_by_key(|v| v.vol_id);
        Ok(out)
    }

    /// MTD devices as (number, name), from `/sys/class/mtd/mtdN/name`.
    pub fn mtd_devices(&self) -> Result<Vec<(u32, String)>, SysfsError> {
        let mut out = Vec::new();
        for n in self.numbered("class/mtd", "mtd")? {
            let name = read(&self.root.join(format!("class/mtd/mtd{n}/name")))?;
            out.push((n, name));
        }
        out.sort();
        Ok(out)
    }

    /// Numbers N of entries `<prefix>N` (N all digits) in `<root>/<dir>`; a missing
    /// directory is an empty list (the driver is not loaded).
    fn numbered(&self, dir: &str, prefix: &str) -> Result<Vec<u32>, SysfsError> {
        let path = self.root.join(dir);
        let entries = match fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(SysfsError::Read { path, source }),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SysfsError::Read {
                path: path.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
                continue;
            };
            if !rest.is_empty()
                && rest.bytes().all(|b| b.is_ascii_digit())
                && let Ok(n) = rest.parse()
            {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

/// Test helper: writes a fake UBI device and volumes under `root`.
#[cfg(test)]
pub(crate) mod fake {
    use std::fs;
    use std::path::Path;

    pub fn ubi_device(root: &Path, ubi: u32, mtd: u32, leb: u64, avail: u64, total: u64) {
        let d = root.join(format!("class/ubi/ubi{ubi}"));
        fs::create_dir_all(&d).unwrap();
        for (k, v) in [
            ("mtd_num", mtd.to_string()),
            ("eraseblock_size", leb.to_string()),
            ("avail_eraseblocks", avail.to_string()),
            ("total_eraseblocks", total.to_string()),
            ("bad_peb_count", "0".to_string()),
            ("volumes_count", "0".to_string()),
            ("reserved_for_bad", "20".to_string()),
            ("max_vol_count", "128".to_string()),
        ] {
            fs::write(d.join(k), format!("{v}\n")).unwrap();
        }
    }

    pub fn ubi_volume(root: &Path, ubi: u32, id: u32, name: &str, bytes: u64, lebs: u64) {
        let d = root.join(format!("class/ubi/ubi{ubi}_{id}"));
        fs::create_dir_all(&d).unwrap();
        for (k, v) in [
            ("name", name.to_string()),
            ("data_bytes", bytes.to_string()),
            ("reserved_ebs", lebs.to_string()),
            ("usable_eb_size", "129024".to_string()),
            ("type", "dynamic".to_string()),
            ("upd_marker", "0".to_string()),
            ("corrupted", "0".to_string()),
        ] {
            fs::write(d.join(k), format!("{v}\n")).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_device_and_volumes_from_an_injected_root() {
        let t = tempfile::tempdir().unwrap();
        fake::ubi_device(t.path(), 0, 2, 129024, 900, 1000);
        fake::ubi_volume(t.path(), 0, 3, "kernel", 5000, 1);
        fake::ubi_volume(t.path(), 0, 1, "inventory", 100, 1);
        let s = Sysfs::new(t.path());
        let d = s.ubi_device(0).unwrap();
        assert_eq!(
            (d.mtd_num, d.leb_size, d.avail_lebs, d.total_lebs),
            (2, 129024, 900, 1000)
        );
        let v = s.ubi_volumes(0).unwrap();
        assert_eq!(v.iter().map(|v| v.vol_id).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(v[1].name, "kernel");
        assert_eq!(s.ubi_for_mtd(2).unwrap(), Some(0));
        assert_eq!(s.ubi_for_mtd(1).unwrap(), None);
    }

    #[test]
    fn malformed_attribute_names_the_file() {
        let t = tempfile::tempdir().unwrap();
        fake::ubi_device(t.path(), 0, 0, 129024, 900, 1000);
        fs::write(t.path().join("class/ubi/ubi0/avail_eraseblocks"), "lots\n").unwrap();
        let err = Sysfs::new(t.path()).ubi_device(0).unwrap_err().to_string();
        assert!(err.contains("avail_eraseblocks"), "{err}");
        assert!(err.contains("lots"), "{err}");
    }

    #[test]
    fn missing_driver_means_no_devices() {
        let t = tempfile::tempdir().unwrap();
        let s = Sysfs::new(t.path());
        assert!(s.mtd_devices().unwrap().is_empty());
        assert!(s.ubi_volumes(0).unwrap().is_empty());
    }
}
