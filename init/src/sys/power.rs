//! Leaving this kernel: `kexec_file_load` + `reboot(LINUX_REBOOT_CMD_KEXEC)`, reboot and
//! power-off, each preceded by `sync()`.
//!
//! `sync()` first is not optional: on block2mtd (and any write-back MTD) writes sit in
//! the page cache and are lost by a reboot without it (measured in the QEMU lab). Not
//! here: watchdog handling, the classic segment-based `kexec_load` (the stock arm64 Debian
//! kernel only has that one: kexec_file_load there answers ENOSYS, reported as such).

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::reboot::{RebootMode, reboot};

use super::SysError;

#[cfg(target_arch = "x86_64")]
const SYS_KEXEC_FILE_LOAD: libc::c_long = 320;
#[cfg(target_arch = "aarch64")]
const SYS_KEXEC_FILE_LOAD: libc::c_long = 294;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("shelfboot-init: add the kexec_file_load syscall number for this architecture");

/// Loads `kernel` (+ `initrd`) with `cmdline` for a later [`reboot_kexec`]. Both files
/// must be regular files (a UBI volume char device gives EINVAL: copy to tmpfs first).
pub fn kexec_file_load(
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &CStr,
) -> Result<(), SysError> {
    let call = format!(
        "kexec_file_load(kernel={}, initrd={}, cmdline={:?}, flags={})",
        kernel.display(),
        initrd.map_or_else(|| "none".to_string(), |p| p.display().to_string()),
        cmdline,
        if initrd.is_some() {
            "0"
        } else {
            "KEXEC_FILE_NO_INITRAMFS"
        }
    );
    let kfile = File::open(kernel).map_err(|e| SysError::new(&call, e))?;
    let ifile = match initrd {
        Some(p) => Some(File::open(p).map_err(|e| SysError::new(&call, e))?),
        None => None,
    };
    const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 0x4;
    let (ifd, flags) = match &ifile {
        Some(f) => (f.as_raw_fd(), 0),
        None => (-1, KEXEC_FILE_NO_INITRAMFS),
    };
    let len = cmdline.to_bytes_with_nul().len();
    // SAFETY: kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags) reads
    // the two fds (both owned and open for the duration of the call) and `len` bytes of
    // `cmdline`, which is a live NUL-terminated buffer of exactly that length (including
    // the NUL, as the syscall requires). No memory is written.
    let rc = unsafe {
        libc::syscall(
            SYS_KEXEC_FILE_LOAD,
            kfile.as_raw_fd(),
            ifd,
            len,
            cmdline.as_ptr(),
            flags,
        )
    };
    if rc != 0 {
        return Err(SysError::new(&call, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// How to leave the running kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// `LINUX_REBOOT_CMD_KEXEC` into the loaded image.
    Kexec,
    /// `LINUX_REBOOT_CMD_RESTART`.
    Reboot,
    /// `LINUX_REBOOT_CMD_POWER_OFF`.
    PowerOff,
}

/// `sync()`, then `reboot(how)`. Only returns on failure.
pub fn sync_and_leave(how: Leave) -> SysError {
    nix::unistd::sync();
    let (mode, name) = match how {
        Leave::Kexec => (RebootMode::RB_KEXEC, "RB_KEXEC"),
        Leave::Reboot => (RebootMode::RB_AUTOBOOT, "RB_AUTOBOOT"),
        Leave::PowerOff => (RebootMode::RB_POWER_OFF, "RB_POWER_OFF"),
    };
    match reboot(mode) {
        Err(e) => SysError::new(format!("reboot({name})"), e),
    }
}
