//! Signal dispositions that must be reset before `exec`ing the next init.
//!
//! Rust's runtime sets SIGPIPE to SIG_IGN at start-up, and an ignored disposition survives
//! `execve`: the new /sbin/init and everything it spawns would never die of SIGPIPE.
//! nix's `signal()` is `unsafe fn` because installing a *handler* can be unsound; we only
//! install `SIG_DFL`, which runs no code of ours. Not here: handlers of any kind (init
//! reads SIGCHLD from a signalfd, see `crate::reaper`).

use nix::sys::signal::{SigHandler, Signal, signal};

use super::SysError;

/// Sets SIGPIPE back to `SIG_DFL`.
pub fn reset_sigpipe() -> Result<(), SysError> {
    // SAFETY: SIG_DFL installs no handler, so no Rust code can run in signal context;
    // this cannot violate any async-signal-safety invariant.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map_err(|e| SysError::new("signal(SIGPIPE, SIG_DFL)", e))?;
    Ok(())
}
