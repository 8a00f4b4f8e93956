//! systemd service notification for `master serve` (sd_notify(3), through the `sd-notify`
//! crate): `READY=1` once the backplane socket and the control socket are open, `WATCHDOG=1`
//! from the serve loop at half the interval systemd asked for (`WATCHDOG_USEC`), and
//! `STOPPING=1` when a stop was asked for. Without `NOTIFY_SOCKET` (not started by systemd
//! as `Type=notify`) each of these does nothing.
//!
//! The watchdog is fed from the loop itself, so a loop that hangs (or a control request
//! that runs longer than the interval, such as a large import) lets systemd restart the
//! service. It does not decide anything about the backplane.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// What the serve loop tells systemd.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Watchdog>,
}

/// When to send the next `WATCHDOG=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    /// Half of `WATCHDOG_USEC`.
    pub every: Duration,
    pub next: Instant,
}

impl Watchdog {
    /// A watchdog for systemd's interval of `usec` microseconds (none for 0): pings at
    /// half of it, the first one at once.
    pub fn for_interval(usec: u64, now: Instant) -> Option<Watchdog> {
        (usec > 0).then(|| Watchdog {
            every: Duration::from_micros(usec / 2),
            next: now,
        })
    }

    /// Whether a ping is due at `now`; if so, schedules the next one.
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }
}

/// The watchdog interval systemd asks of process `pid`, as sd_watchdog_enabled(3) reads
/// it: `WATCHDOG_USEC`, unless `WATCHDOG_PID` is set and names another process.
pub fn watchdog_usec(usec: Option<&str>, watchdog_pid: Option<&str>, pid: u32) -> Option<u64> {
    let usec = usec?.trim().parse::<u64>().ok().filter(|u| *u > 0)?;
    match watchdog_pid {
        Some(p) if p.trim().parse::<u32>().ok() != Some(pid) => None,
        _ => Some(usec),
    }
}

impl Notifier {
    /// A notifier for `master serve`; `enabled` false makes every call a no-op (the
    /// library's callers and tests that run the service in-process).
    pub fn new(enabled: bool, now: Instant) -> Notifier {
        let watchdog = if enabled {
            let var = |k| std::env::var(k).ok();
            watchdog_usec(
                var("WATCHDOG_USEC").as_deref(),
                var("WATCHDOG_PID").as_deref(),
                std::process::id(),
            )
            .and_then(|usec| Watchdog::for_interval(usec, now))
        } else {
            None
        };
        let enabled = enabled && std::env::var_os("NOTIFY_SOCKET").is_some();
        if let Some(w) = &watchdog {
            log::info!("master: systemd watchdog: a ping every {:?}", w.every);
        }
        Notifier { enabled, watchdog }
    }

    /// Whether systemd is listening.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The watchdog schedule, if systemd asked for one.
    pub fn watchdog(&self) -> Option<Watchdog> {
        self.watchdog
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A new status line (`STATUS=`), e.g. when a cluster member starts or stops serving.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1` when due (call it every loop iteration).
    pub fn tick(&mut self, now: Instant) {
        if let Some(w) = &mut self.watchdog
            && w.due(now)
        {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states) {
            log::warn!("master: telling systemd {states:?} through NOTIFY_SOCKET: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_pings_at_once_then_every_half_interval() {
        let t0 = Instant::now();
        assert_eq!(Watchdog::for_interval(0, t0), None);
        let mut w = Watchdog::for_interval(10_000_000, t0).unwrap();
        assert_eq!(w.every, Duration::from_secs(5));
        assert!(w.due(t0));
        assert!(!w.due(t0 + Duration::from_millis(4999)));
        assert!(w.due(t0 + Duration::from_secs(5)));
        assert!(!w.due(t0 + Duration::from_secs(9)));
        assert!(w.due(t0 + Duration::from_secs(11)));
        assert_eq!(w.next, t0 + Duration::from_secs(16));
    }

    #[test]
    fn the_watchdog_interval_is_ours_unless_another_pid_is_named() {
        assert_eq!(watchdog_usec(Some("30000000"), None, 42), Some(30_000_000));
        assert_eq!(
            watchdog_usec(Some("30000000"), Some("42"), 42),
            Some(30_000_000)
        );
        assert_eq!(watchdog_usec(Some("30000000"), Some("43"), 42), None);
        assert_eq!(watchdog_usec(Some("30000000"), Some("x"), 42), None);
        assert_eq!(watchdog_usec(Some("0"), None, 42), None);
        assert_eq!(watchdog_usec(Some("soon"), None, 42), None);
        assert_eq!(watchdog_usec(None, Some("42"), 42), None);
    }

    #[test]
    fn a_disabled_notifier_sends_nothing_and_has_no_watchdog() {
        let mut n = Notifier::new(false, Instant::now());
        assert!(!n.enabled());
        assert_eq!(n.watchdog(), None);
        n.tick(Instant::now());
        n.ready("serving");
        n.stopping();
    }
}
