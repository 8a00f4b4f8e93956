//! The hardware watchdog device (`/dev/watchdog`, the kernel's watchdog API): open (which
//! starts it), set the timeout, feed. Never closed on purpose: without the magic close
//! the driver keeps it running, so a process that dies stops feeding and the card resets.
//!
//! Why unsafe: nix has the ioctl macros but no wrapper for `WDIOC_SETTIMEOUT` and
//! `WDIOC_KEEPALIVE` (linux/watchdog.h: `_IOWR('W', 6, int)` and `_IOR('W', 5, int)`).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::SysError;

nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);
nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);

/// An open, running watchdog device.
#[derive(Debug)]
pub struct Watchdog {
    file: File,
    path: PathBuf,
    timeout: u32,
}

impl Watchdog {
    /// Opens `path` (starting the watchdog) and sets its timeout to `seconds`; returns
    /// the device with the timeout the driver granted (it may round).
    pub fn arm(path: &Path, seconds: u32) -> Result<Self, SysError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| SysError::new(format!("open({}, O_WRONLY)", path.display()), e))?;
        let mut t = libc::c_int::try_from(seconds).unwrap_or(libc::c_int::MAX);
        // SAFETY: the fd is an open watchdog device owned by `file` for this call; the
        // ioctl reads and writes exactly one c_int, which `t` is.
        unsafe { wdioc_settimeout(file.as_raw_fd(), &mut t) }.map_err(|e| {
            SysError::new(
                format!("ioctl({}, WDIOC_SETTIMEOUT, {seconds})", path.display()),
                e,
            )
        })?;
        let dog = Watchdog {
            file,
            path: path.to_path_buf(),
            timeout: u32::try_from(t).unwrap_or(seconds),
        };
        dog.feed()?;
        Ok(dog)
    }

    /// Resets the countdown.
    pub fn feed(&self) -> Result<(), SysError> {
        let mut unused: libc::c_int = 0;
        // SAFETY: the fd is an open watchdog device owned by `self.file`; the ioctl
        // writes at most one c_int, which `unused` is.
        unsafe { wdioc_keepalive(self.file.as_raw_fd(), &mut unused) }
            .map(|_| ())
            .map_err(|e| {
                SysError::new(
                    format!("ioctl({}, WDIOC_KEEPALIVE)", self.path.display()),
                    e,
                )
            })
    }

    /// The timeout in seconds the driver runs with.
    pub fn timeout(&self) -> u32 {
        self.timeout
    }
}
