//! Forking the resident agent off PID 1 at the hand-off, and its CPU priority.
//!
//! Why unsafe: `fork(2)` in a multi-threaded process is only sound if the child touches
//! nothing another thread may have held locked. At the hand-off init's only other
//! threads are the watchdog feeder (an ioctl and a sleep, no lock) and, at most, the
//! finished entropy thread; musl's `fork` takes its own internal locks (malloc among
//! them) across the call, so the child's allocator is consistent.

use nix::unistd::{ForkResult, Pid, fork};

use super::SysError;

/// Which side of the fork we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The new process.
    Child,
    /// The caller; the child's pid.
    Parent(Pid),
}

/// `fork(2)`.
pub fn fork_process() -> Result<Forked, SysError> {
    // SAFETY: see the module docs: no lock another thread could hold is used by the
    // child before it starts its own loop; the allocator's are taken by musl's fork.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => Ok(Forked::Child),
        Ok(ForkResult::Parent { child }) => Ok(Forked::Parent(child)),
        Err(e) => Err(SysError::new("fork()", e)),
    }
}

/// Lowers (or raises) this process's CPU priority to `nice` (-20..=19): the resident
/// agent stages a new set at a low priority so the running system is not starved.
pub fn set_nice(nice: i32) -> Result<(), SysError> {
    // SAFETY: setpriority(2) on PRIO_PROCESS with who = 0 changes only the calling
    // process's nice value; it touches no memory of ours.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(SysError::new(
            format!("setpriority(PRIO_PROCESS, 0, {nice})"),
            std::io::Error::last_os_error(),
        ))
    }
}
