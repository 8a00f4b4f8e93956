//! Loop devices for test mode: a squashfs package kept in tmpfs is mounted through a
//! read-only, auto-clearing loop device (`LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE`).
//!
//! Needs Linux ≥ 5.8 (LOOP_CONFIGURE) and the loop driver (built in or `loop.ko` in the
//! load list). AUTOCLEAR detaches the device when its last user goes away, so the
//! returned [`LoopDevice`] must stay alive until the filesystem on it is mounted (the
//! mount then holds it; measured: closing it first makes the mount fail with EIO). Not
//! here: explicit detaching, offsets, encryption, partitions.

use std::fs::{File, OpenOptions};
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::SysError;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Debug)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
#[derive(Debug)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(size_of::<LoopInfo64>() == 232);
const _: () = assert!(size_of::<LoopConfig>() == 304);

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

mod ioctl {
    use super::LoopConfig;
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
}

/// A configured loop device; keeps it bound while alive (see the module header).
#[derive(Debug)]
pub struct LoopDevice {
    _file: File,
    path: PathBuf,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds `file` to a free loop device, read-only, auto-clearing; see [`LoopDevice`].
pub fn attach_read_only(dev: &Path, file: &Path) -> Result<LoopDevice, SysError> {
    attach_range_read_only(dev, file, 0, 0)
}

/// Like [`attach_read_only`], but the loop device shows only `size` bytes of `file` from
/// `offset` (`lo_offset`, `lo_sizelimit`; size 0 = to the end): one artifact of a segment.
pub fn attach_range_read_only(
    dev: &Path,
    file: &Path,
    offset: u64,
    size: u64,
) -> Result<LoopDevice, SysError> {
    let ctl_path = dev.join("loop-control");
    let ctl = File::open(&ctl_path)
        .map_err(|e| SysError::new(format!("open({}, O_RDONLY)", ctl_path.display()), e))?;
    // SAFETY: valid owned fd of /dev/loop-control; LOOP_CTL_GET_FREE takes no argument.
    let n = unsafe { ioctl::loop_ctl_get_free(ctl.as_raw_fd()) }.map_err(|e| {
        SysError::new(
            format!("ioctl({}, LOOP_CTL_GET_FREE)", ctl_path.display()),
            e,
        )
    })?;
    let loop_path = dev.join(format!("loop{n}"));
    let backing = File::open(file)
        .map_err(|e| SysError::new(format!("open({}, O_RDONLY)", file.display()), e))?;
    let lo = OpenOptions::new()
        .read(true)
        .open(&loop_path)
        .map_err(|e| SysError::new(format!("open({}, O_RDONLY)", loop_path.display()), e))?;
    let call = || {
        format!(
            "ioctl({}, LOOP_CONFIGURE, fd={}, offset={offset}, sizelimit={size}, READ_ONLY|AUTOCLEAR)",
            loop_path.display(),
            file.display()
        )
    };
    let fd = u32::try_from(backing.as_raw_fd())
        .map_err(|_| SysError::new(call(), nix::errno::Errno::EBADF))?;
    let cfg = LoopConfig {
        fd,
        block_size: 0,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: offset,
            lo_sizelimit: size,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: valid owned fd of a loop block device; `cfg` is a live, fully initialised
    // 304-byte `struct loop_config` the kernel only reads; `backing` stays open for the
    // call (the kernel takes its own reference to the file).
    unsafe { ioctl::loop_configure(lo.as_raw_fd(), &cfg) }.map_err(|e| SysError::new(call(), e))?;
    Ok(LoopDevice {
        _file: lo,
        path: loop_path,
    })
}
