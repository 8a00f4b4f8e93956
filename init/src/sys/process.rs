//! Forking the resident agent off PID 1 at the hand-off.
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
