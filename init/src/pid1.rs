//! PID-1 process duties around the boot flow: logger, panic hook, orphan reaping, and the
//! last resort. Nothing here returns: a PID 1 that exits panics the kernel.
//!
//! Last resort, in order: log the error chain; if there is simply nothing to boot, stay up
//! (reaping, logging once a minute) so an operator or a master can act; otherwise wait
//! [`RETRY_DELAY`] (so the message can be read on the console), sync and reboot; if even
//! the reboot fails, sleep forever. The panic hook logs, syncs and reboots the same way
//! (the release profile aborts on panic, which for PID 1 means "Attempted to kill init").
//! Not here: the boot steps themselves ([`crate::flow`]).

use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::flash::UbiVolumes;
use crate::flow::{self, FlowError, Provisioner, Roots};
use crate::kernel::{Kernel, Linux};
use crate::reaper::Reaper;
use crate::sys::power::Leave;

/// How long a failed boot waits before rebooting to retry.
pub const RETRY_DELAY: Duration = Duration::from_secs(10);
const IDLE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Installs the panic hook: log, sync, reboot.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        log::error!("init panicked: {info}; syncing and rebooting");
        let err = crate::sys::power::sync_and_leave(Leave::Reboot);
        log::error!("{}", shelfboot_proto::report::error_chain(&err));
        sleep_forever();
    }));
}

/// Never returns; sleeps in long slices.
pub fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Waits on the SIGCHLD signalfd for `d`, reaping what exits.
fn idle(reaper: Option<&mut Reaper>, d: Duration) {
    match reaper {
        Some(r) => {
            let ms = u16::try_from(d.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(r.fd(), PollFlags::POLLIN)];
            // EINTR or a poll failure just ends this slice early.
            let _ = poll(&mut fds, PollTimeout::from(ms));
            r.reap();
        }
        None => std::thread::sleep(d),
    }
}

/// What PID 1 does when the flow did not hand off.
pub fn last_resort(k: &mut dyn Kernel, mut reaper: Option<Reaper>, err: &FlowError) -> ! {
    log::error!("{}", shelfboot_proto::report::error_chain(err));
    if matches!(err, FlowError::NothingToBoot) {
        log::error!("staying up without a system to boot; provision this card from a master");
        loop {
            let mut waited = Duration::ZERO;
            while waited < IDLE_LOG_EVERY {
                idle(reaper.as_mut(), Duration::from_secs(30));
                waited += Duration::from_secs(30);
            }
            log::warn!("still nothing to boot");
        }
    }
    log::error!("rebooting in {RETRY_DELAY:?} to try again");
    idle(reaper.as_mut(), RETRY_DELAY);
    let e = k.leave(Leave::Reboot);
    log::error!(
        "{}; sleeping forever",
        shelfboot_proto::report::error_chain(&e)
    );
    sleep_forever()
}

/// Entry point when running as PID 1.
pub fn main(prov: &mut dyn Provisioner<UbiVolumes>) -> ! {
    let started = crate::boottime::start();
    crate::logger::install();
    install_panic_hook();
    log::info!(
        "shelfboot-init {} starting as PID 1 (monotonic {:.6} s)",
        env!("CARGO_PKG_VERSION"),
        started.as_secs_f64()
    );
    let reaper = match Reaper::new() {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!(
                "orphans will not be reaped promptly: {}",
                shelfboot_proto::report::error_chain(&e)
            );
            None
        }
    };
    let mut k = Linux::default();
    let err = flow::run(&mut k, &Roots::default(), prov);
    last_resort(&mut k, reaper, &err)
}
