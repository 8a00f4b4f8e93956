//! Bring-up as data: the table of kernel filesystems PID 1 mounts, and the one function
//! that runs it.
//!
//! Order matters: devtmpfs first so `/dev/kmsg` and `/dev/console` exist for logging,
//! then `/proc` (the command line lives there), `/sys` (hardware identity, UBI state),
//! `/run` (tmpfs for kexec images and test-mode packages). A failed *required* step stops
//! the bring-up with an error (the caller goes to the recovery path); a failed optional
//! step is logged as a warning and boot carries on. Not here: the hand-off mounts
//! (ubiblock, overlayfs), see [`crate::handoff`].

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::kernel::{Kernel, Mount};
use crate::sys::SysError;

/// One entry of the bring-up table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    /// Source name shown in /proc/mounts.
    pub source: &'static str,
    /// Mount point (created if missing).
    pub target: &'static str,
    /// Filesystem type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem options.
    pub data: Option<&'static str>,
    /// Whether boot can go on without it.
    pub required: bool,
}

const NODEV_NOSUID_NOEXEC: MsFlags = MsFlags::MS_NODEV
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NOEXEC);

/// The PID-1 mount table, in order.
pub const MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
        required: true,
    },
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NODEV_NOSUID_NOEXEC,
        data: None,
        required: true,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NODEV_NOSUID_NOEXEC,
        data: None,
        required: true,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NODEV.union(MsFlags::MS_NOSUID),
        data: Some("mode=0755"),
        required: true,
    },
    MountSpec {
        source: "debugfs",
        target: "/sys/kernel/debug",
        fstype: "debugfs",
        flags: NODEV_NOSUID_NOEXEC,
        data: None,
        required: false,
    },
];

/// A required mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point could not be created.
    #[error("cannot create mount point {target} for required {fstype}")]
    MountPoint {
        /// Mount point.
        target: PathBuf,
        /// Filesystem type.
        fstype: &'static str,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// The mount itself failed.
    #[error("cannot mount required {fstype} on {target}")]
    Mount {
        /// Mount point.
        target: PathBuf,
        /// Filesystem type.
        fstype: &'static str,
        /// The failed call.
        #[source]
        source: SysError,
    },
}

impl MountSpec {
    /// The mount(2) request for this entry, relative to `root` (`/` on a card).
    pub fn request(&self, root: &Path) -> Mount {
        Mount {
            source: self.source.to_string(),
            target: root.join(self.target.trim_start_matches('/')),
            fstype: Some(self.fstype.to_string()),
            flags: self.flags,
            data: self.data.map(str::to_string),
        }
    }
}

/// Runs `table` in order under `root`; logs every step. Returns how many optional steps
/// failed; the first failed required step is an error.
pub fn mount_all(
    k: &mut dyn Kernel,
    table: &[MountSpec],
    root: &Path,
) -> Result<usize, MountError> {
    let mut optional_failures = 0;
    for spec in table {
        let req = spec.request(root);
        let step = k.mkdir_all(&req.target).and_then(|()| k.mount(&req));
        match step {
            Ok(()) => log::info!("mounted {} on {}", spec.fstype, req.target.display()),
            // EBUSY: already mounted (e.g. the kernel automounted devtmpfs).
            Err(e) if e.errno() == Some(libc::EBUSY) => {
                log::info!(
                    "{} already mounted on {}",
                    spec.fstype,
                    req.target.display()
                );
            }
            Err(e) if !spec.required => {
                optional_failures += 1;
                log::warn!(
                    "optional mount skipped: {}",
                    shelfboot_proto::report::error_chain(&e)
                );
            }
            Err(source) => {
                let target = req.target;
                let fstype = spec.fstype;
                return Err(if source.call.starts_with("mkdir") {
                    MountError::MountPoint {
                        target,
                        fstype,
                        source,
                    }
                } else {
                    MountError::Mount {
                        target,
                        fstype,
                        source,
                    }
                });
            }
        }
    }
    Ok(optional_failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{Call, Recorder};

    #[test]
    fn devtmpfs_first_then_proc_sys_run_with_exact_arguments() {
        let mut k = Recorder::default();
        let failed = mount_all(&mut k, MOUNTS, Path::new("/")).unwrap();
        assert_eq!(failed, 0);
        let mounts: Vec<&Mount> = k
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount(m) => Some(m),
                _ => None,
            })
            .collect();
        let targets: Vec<_> = mounts.iter().map(|m| m.target.to_str().unwrap()).collect();
        assert_eq!(
            targets,
            ["/dev", "/proc", "/sys", "/run", "/sys/kernel/debug"]
        );
        assert_eq!(
            *mounts[0],
            Mount {
                source: "devtmpfs".into(),
                target: "/dev".into(),
                fstype: Some("devtmpfs".into()),
                flags: MsFlags::MS_NOSUID,
                data: Some("mode=0755".into()),
            }
        );
        assert_eq!(mounts[1].flags, NODEV_NOSUID_NOEXEC);
        // every mount point is created right before its mount
        assert_eq!(k.calls[0], Call::Mkdir("/dev".into()));
    }

    #[test]
    fn optional_failure_is_counted_required_failure_stops() {
        let mut k = Recorder {
            fail: Some((
                |c| matches!(c, Call::Mount(m) if m.fstype.as_deref() == Some("debugfs")),
                nix::errno::Errno::ENODEV,
            )),
            ..Recorder::default()
        };
        assert_eq!(mount_all(&mut k, MOUNTS, Path::new("/")).unwrap(), 1);

        let mut k = Recorder {
            fail: Some((
                |c| matches!(c, Call::Mount(m) if m.fstype.as_deref() == Some("proc")),
                nix::errno::Errno::ENODEV,
            )),
            ..Recorder::default()
        };
        let err = mount_all(&mut k, MOUNTS, Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("/proc"), "{err}");
        assert!(
            !k.calls
                .iter()
                .any(|c| matches!(c, Call::Mount(m) if m.fstype.as_deref() == Some("sysfs"))),
            "nothing after a failed required step"
        );
    }

    #[test]
    fn already_mounted_is_fine() {
        let mut k = Recorder {
            fail: Some((|c| matches!(c, Call::Mount(_)), nix::errno::Errno::EBUSY)),
            ..Recorder::default()
        };
        assert_eq!(mount_all(&mut k, MOUNTS, Path::new("/")).unwrap(), 0);
    }
}
