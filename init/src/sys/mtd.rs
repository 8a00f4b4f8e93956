//! MTD ioctls (`include/uapi/mtd/mtd-abi.h`) behind an owning type.
//!
//! [`MtdDevice`] owns `/dev/mtdN`: geometry (`MEMGETINFO`), bad-block query
//! (`MEMGETBADBLOCK`), block erase (`MEMERASE64`) and plain reads. It is used only to
//! prepare a pristine device for UBI (see `crate::flash::attach`). Not here: writes, OOB
//! access, marking blocks bad, locking, OTP.

use std::fs::{File, OpenOptions};
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::SysError;

/// `struct mtd_info_user`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct MtdInfoUser {
    kind: u8,
    flags: u32,
    size: u32,
    erasesize: u32,
    writesize: u32,
    oobsize: u32,
    padding: u64,
}

/// `struct erase_info_user64`.
#[repr(C)]
#[derive(Debug, Default)]
struct EraseInfoUser64 {
    start: u64,
    length: u64,
}

const _: () = assert!(size_of::<MtdInfoUser>() == 32);
const _: () = assert!(size_of::<EraseInfoUser64>() == 16);

mod ioctl {
    use super::{EraseInfoUser64, MtdInfoUser};
    const MTD_MAGIC: u8 = b'M';
    nix::ioctl_read!(memgetinfo, MTD_MAGIC, 1, MtdInfoUser);
    nix::ioctl_write_ptr!(memgetbadblock, MTD_MAGIC, 11, i64);
    nix::ioctl_write_ptr!(memerase64, MTD_MAGIC, 20, EraseInfoUser64);
}

/// What `MEMGETINFO` says about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtdInfo {
    /// `MTD_NANDFLASH`, `MTD_NORFLASH`, `MTD_RAM`... (raw value).
    pub kind: u8,
    /// Total size in bytes.
    pub size: u64,
    /// Eraseblock size in bytes.
    pub erasesize: u32,
    /// Minimal write unit (page) in bytes.
    pub writesize: u32,
}

impl MtdInfo {
    /// Number of eraseblocks.
    pub fn blocks(&self) -> u64 {
        if self.erasesize == 0 {
            0
        } else {
            self.size / u64::from(self.erasesize)
        }
    }
}

/// An open MTD character device.
#[derive(Debug)]
pub struct MtdDevice {
    file: File,
    path: PathBuf,
}

impl MtdDevice {
    /// Opens `/dev/mtdN` read-write.
    pub fn open(path: &Path) -> Result<Self, SysError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| SysError::new(format!("open({}, O_RDWR)", path.display()), e))?;
        Ok(MtdDevice {
            file,
            path: path.to_path_buf(),
        })
    }

    /// `MEMGETINFO`.
    pub fn info(&self) -> Result<MtdInfo, SysError> {
        let mut raw = MtdInfoUser::default();
        // SAFETY: valid owned fd of an MTD char device; `raw` is a live 32-byte
        // `struct mtd_info_user` the kernel fills.
        unsafe { ioctl::memgetinfo(self.file.as_raw_fd(), &mut raw) }
            .map_err(|e| SysError::new(format!("ioctl({}, MEMGETINFO)", self.path.display()), e))?;
        Ok(MtdInfo {
            kind: raw.kind,
            size: u64::from(raw.size),
            erasesize: raw.erasesize,
            writesize: raw.writesize,
        })
    }

    /// `MEMGETBADBLOCK`: whether the eraseblock at `offset` is marked bad. Devices
    /// without bad-block support (NOR, RAM, block2mtd) answer EOPNOTSUPP: never bad.
    pub fn is_bad(&self, offset: u64) -> Result<bool, SysError> {
        let call = || {
            format!(
                "ioctl({}, MEMGETBADBLOCK, {offset:#x})",
                self.path.display()
            )
        };
        let off = i64::try_from(offset).map_err(|_| SysError::new(call(), Errno::EINVAL))?;
        // SAFETY: valid owned fd; `off` is a live loff_t the kernel only reads.
        match unsafe { ioctl::memgetbadblock(self.file.as_raw_fd(), &off) } {
            Ok(r) => Ok(r > 0),
            Err(Errno::EOPNOTSUPP) => Ok(false),
            Err(e) => Err(SysError::new(call(), e)),
        }
    }

    /// `MEMERASE64` of `length` bytes at `offset` (both eraseblock-aligned).
    pub fn erase(&self, offset: u64, length: u64) -> Result<(), SysError> {
        let req = EraseInfoUser64 {
            start: offset,
            length,
        };
        // SAFETY: valid owned fd opened read-write; `req` is a live 16-byte
        // `struct erase_info_user64` the kernel only reads.
        unsafe { ioctl::memerase64(self.file.as_raw_fd(), &req) }.map_err(|e| {
            SysError::new(
                format!(
                    "ioctl({}, MEMERASE64, start={offset:#x}, length={length:#x})",
                    self.path.display()
                ),
                e,
            )
        })?;
        Ok(())
    }

    /// `pread` of `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SysError> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            SysError::new(
                format!("pread({}, {}, {offset:#x})", self.path.display(), buf.len()),
                e,
            )
        })
    }
}
