//! The kernel boundary: the only module of shelfboot-init allowed to say `unsafe`.
//!
//! What is here: the UBI and MTD ioctls (`ubi`, `mtd`), `kexec_file_load` and the
//! reboot/power-off calls (`power`), the hardware watchdog ioctls (`watchdog`), the fork
//! of the resident agent (`process`), resetting a signal disposition before `exec`
//! (`signal`), blocking `getrandom` (`random`) and the UBI sysfs reader (`sysfs`, safe
//! code kept next to the ioctls it complements). Every raw call is wrapped the same way:
//! it returns `Result<_, SysError>` whose message is the call with its arguments, and
//! whose source is the errno.
//!
//! What is not here: anything nix already wraps safely (mount, umount2, chroot,
//! finit_module, reboot, signalfd, waitpid). Those are called directly by the safe
//! modules through the [`crate::kernel::Kernel`] trait. No policy lives here either: which
//! device to attach, when to format, what to kexec is decided above.
//!
//! Why unsafe at all: nix has ioctl *macros* but no UBI/MTD wrappers, no
//! `kexec_file_load` nor `getrandom`, and `signal(2)` is `unsafe fn` in nix because
//! installing a handler is unsound in general (we only ever install `SIG_DFL`).

pub mod loopdev;
pub mod mtd;
pub mod power;
pub mod process;
pub mod random;
pub mod signal;
pub mod sysfs;
pub mod ubi;
pub mod watchdog;

use std::fmt;
use std::io;

/// A failed system call: `call` is the call as it would appear in strace (with its
/// arguments), the source is the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{call} failed")]
pub struct SysError {
    /// The call with its arguments, e.g. `ioctl(/dev/ubi_ctrl, UBI_IOCATT, mtd_num=0)`.
    pub call: String,
    /// What the kernel said.
    #[source]
    pub source: io::Error,
}

impl SysError {
    /// Wraps an errno (or any io error) with the call that produced it.
    pub fn new(call: impl fmt::Display, source: impl Into<io::Error>) -> Self {
        SysError {
            call: call.to_string(),
            source: source.into(),
        }
    }

    /// The raw errno, when the source is an OS error.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}
