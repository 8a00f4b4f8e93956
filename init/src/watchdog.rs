//! The card's hardware watchdog, as init uses it: armed at boot when
//! `shelfboot.watchdog=SECONDS` asks for it, fed by a thread while init runs, and fed
//! by the resident agent's loop after the hand-off (a forked child keeps the open device
//! but not the thread, so from then on the watchdog proves the agent alive).
//!
//! The device stays open and is never closed with the magic character, so the timer
//! keeps running across the exec of the package root's init and, with the watchdog
//! core's `stop_on_reboot=0` (a module parameter in the load list), across a kexec: a
//! kernel that hangs before its init re-arms the watchdog resets the card. The timeout
//! must therefore outlast a kexec and the next init's start (the lab uses 120 s under
//! TCG). Not here: the ioctls (`crate::sys::watchdog`).

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use crate::sys::watchdog::Watchdog;

/// The device.
pub const DEVICE: &str = "/dev/watchdog";

static DOG: OnceLock<Watchdog> = OnceLock::new();

/// Arms the watchdog at `dev` with `seconds` and starts the feeder thread. A card whose
/// command line asks for a watchdog it does not have boots on (logged as an error).
pub fn arm(dev: &Path, seconds: u32) {
    match Watchdog::arm(dev, seconds) {
        Ok(d) => {
            let timeout = d.timeout();
            if DOG.set(d).is_err() {
                return;
            }
            log::info!("watchdog: {} armed, {timeout} s", dev.display());
            let every = Duration::from_secs(u64::from(timeout / 4).max(1));
            let started = std::thread::Builder::new()
                .name("watchdog".into())
                .spawn(move || {
                    loop {
                        feed();
                        std::thread::sleep(every);
                    }
                });
            if let Err(e) = started {
                log::error!(
                    "watchdog: cannot start the feeder thread ({e}): the card will reset in {timeout} s unless init hands off"
                );
            }
        }
        Err(e) => log::error!(
            "watchdog: shelfboot.watchdog={seconds} asked for one, but {}; booting without",
            shelfboot_proto::report::error_chain(&e)
        ),
    }
}

/// Resets the countdown, if a watchdog is armed.
pub fn feed() {
    if let Some(d) = DOG.get()
        && let Err(e) = d.feed()
    {
        log::warn!("watchdog: {}", shelfboot_proto::report::error_chain(&e));
    }
}

/// True if a watchdog is armed.
pub fn armed() -> bool {
    DOG.get().is_some()
}
