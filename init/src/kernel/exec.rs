//! The last step of switch_root: exec the new init with a clean process state.
//!
//! Before `execve`: every fd above stderr is marked close-on-exec (init's own sockets and
//! volume fds must not leak into the new system), the environment is replaced by a fixed
//! minimal one, SIGPIPE goes back to SIG_DFL (Rust set it to ignore, and that survives
//! exec) and the signal mask is emptied (init blocks SIGCHLD for its signalfd). Not here:
//! choosing the init path or the root (see `crate::handoff`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};

use crate::sys::SysError;

/// Marks every fd > 2 listed in `/proc/self/fd` close-on-exec.
fn cloexec_all() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        log::warn!("cannot list /proc/self/fd: inherited fds may leak into the new init");
        return;
    };
    for e in entries.flatten() {
        if let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
            && fd > 2
        {
            // The fd of the read_dir itself may already be gone: ignore EBADF.
            let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        }
    }
}

/// Prepares the process and `execve`s `init` with `env`; only returns on failure.
pub fn exec_clean(init: &Path, env: &[(&str, &str)]) -> SysError {
    let call = || {
        format!(
            "execve({}, [{}], {:?})",
            init.display(),
            init.display(),
            env
        )
    };
    let Ok(path) = CString::new(init.as_os_str().as_bytes()) else {
        return SysError::new(call(), nix::errno::Errno::EINVAL);
    };
    let mut envp = Vec::new();
    for (k, v) in env {
        match CString::new(format!("{k}={v}")) {
            Ok(c) => envp.push(c),
            Err(_) => return SysError::new(call(), nix::errno::Errno::EINVAL),
        }
    }
    cloexec_all();
    if let Err(e) = crate::sys::signal::reset_sigpipe() {
        log::warn!("{}", shelfboot_proto::report::error_chain(&e));
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
        log::warn!("cannot clear the signal mask before exec: {e}");
    }
    log::logger().flush();
    match nix::unistd::execve(&path, &[&path], &envp) {
        Err(e) => SysError::new(call(), e),
    }
}
