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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
            let _ = ARMED_AT.set(Instant::now());
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

/// When the watchdog was armed; feeds are counted from it.
static ARMED_AT: OnceLock<Instant> = OnceLock::new();
/// Milliseconds after [`ARMED_AT`] of the last feed.
static LAST_FEED_MS: AtomicU64 = AtomicU64::new(0);
/// Feeds closer together than this are skipped: the loops that call [`feed`] turn many
/// times a second (the transfer loop per received batch), the timeout is a minute.
const FEED_EVERY_MS: u64 = 1000;

/// Resets the countdown, if a watchdog is armed and it was not reset in the last second.
pub fn feed() {
    let (Some(d), Some(at)) = (DOG.get(), ARMED_AT.get()) else {
        return;
    };
    let now = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
    let last = LAST_FEED_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < FEED_EVERY_MS && last != 0 {
        return;
    }
    LAST_FEED_MS.store(now.max(1), Ordering::Relaxed);
    if let Err(e) = d.feed() {
        log::warn!("watchdog: {}", shelfboot_proto::report::error_chain(&e));
    }
}

/// True if a watchdog is armed.
pub fn armed() -> bool {
    DOG.get().is_some()
}
