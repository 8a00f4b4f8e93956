//! Reaping orphans: PID 1 inherits every orphaned process and must wait for it.
//!
//! SIGCHLD is blocked and read from a signalfd, so the main loop can poll it next to the
//! packet socket; [`Reaper::reap`] then loops on a non-blocking `waitpid(-1)` until nothing
//! is left, logging each child with its exit code (128+signal for killed ones). Outside
//! PID 1 (check mode) init also makes itself a child subreaper. Not here: spawning
//! processes (init runs none of its own today) or forwarding signals.

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Errors setting up reaping.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    /// Blocking SIGCHLD failed.
    #[error("cannot block SIGCHLD for the signalfd")]
    Mask(#[source] Errno),
    /// The signalfd could not be created.
    #[error("cannot create a signalfd for SIGCHLD")]
    SignalFd(#[source] Errno),
}

/// Owns the SIGCHLD signalfd.
#[derive(Debug)]
pub struct Reaper {
    fd: SignalFd,
}

/// One reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// Its pid.
    pub pid: i32,
    /// Exit code, or 128 + signal number.
    pub code: i32,
}

/// Exit code of a wait status, shell style; `None` for stop/continue events.
pub fn exit_code(s: &WaitStatus) -> Option<(i32, i32)> {
    match *s {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

impl Reaper {
    /// Blocks SIGCHLD, opens the signalfd and (best effort) becomes a child subreaper.
    pub fn new() -> Result<Self, ReaperError> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        set.thread_block().map_err(ReaperError::Mask)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(ReaperError::SignalFd)?;
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            log::warn!("cannot become child subreaper: {e}");
        }
        Ok(Reaper { fd })
    }

    /// The fd to poll (readable when SIGCHLD is pending).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Drains pending SIGCHLD notifications and reaps every exited child.
    pub fn reap(&mut self) -> Vec<Reaped> {
        while let Ok(Some(_)) = self.fd.read_signal() {}
        let mut out = Vec::new();
        // Bounded: each iteration reaps one child; a system has at most pid_max of them.
        for _ in 0..4_194_304u32 {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(s) => {
                    if let Some((pid, code)) = exit_code(&s) {
                        log::info!("reaped orphan pid {pid} (exit {code})");
                        out.push(Reaped { pid, code });
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid(-1, WNOHANG) failed: {e}");
                    break;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let p = Pid::from_raw(42);
        assert_eq!(exit_code(&WaitStatus::Exited(p, 3)), Some((42, 3)));
        assert_eq!(
            exit_code(&WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some((42, 137))
        );
        assert_eq!(exit_code(&WaitStatus::StillAlive), None);
    }

    #[test]
    fn reaps_a_real_child() {
        // Runs in its own thread so the SIGCHLD mask does not leak into other tests.
        std::thread::spawn(|| {
            let mut r = Reaper::new().unwrap();
            let child = std::process::Command::new("/bin/sh")
                .args(["-c", "exit 7"])
                .spawn()
                .unwrap();
            let pid = i32::try_from(child.id()).unwrap();
            std::mem::forget(child); // reaped by the Reaper, not by std
            let mut got = Vec::new();
            for _ in 0..200 {
                got.extend(r.reap());
                if got.iter().any(|c: &Reaped| c.pid == pid) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert!(got.contains(&Reaped { pid, code: 7 }), "{got:?}");
        })
        .join()
        .unwrap();
    }
}
