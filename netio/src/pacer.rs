//! A token-bucket pacer for the transfer engine: a rate in bytes per second and a burst
//! in bytes. Pure logic over an injected [`Clock`]; it never sleeps itself; the caller
//! asks how long to wait ([`Pacer::delay`]) and decides how (sleep, poll timeout).
//!
//! It does not detect loss or choose the rate: the engine calls [`Pacer::set_rate`] when it
//! backs off or speeds up.

use std::time::{Duration, Instant};

/// A monotonic time source. The real one wraps [`Instant`]; tests use a fake.
pub trait Clock {
    /// Time since an arbitrary fixed origin; never goes backwards.
    fn now(&self) -> Duration;
}

/// [`Instant`]-based clock whose origin is its creation.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// Invalid pacer parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacerError {
    #[error("pacer rate must be at least 1 byte/s (got 0): pass a positive rate")]
    ZeroRate,
    #[error("pacer burst of {burst} bytes is smaller than one {frame}-byte frame: raise it")]
    BurstTooSmall { burst: u64, frame: u64 },
}

/// Token bucket. Tokens are bytes; the bucket refills at `rate` bytes/s up to `burst`.
/// Sending may drive the balance negative (a frame larger than the current balance still
/// goes once the balance is positive), so the long-run rate is exact and no frame is
/// ever starved.
#[derive(Debug, Clone)]
pub struct Pacer<C: Clock = MonotonicClock> {
    clock: C,
    rate: u64,
    burst: u64,
    /// Balance in byte-nanoseconds per second units: bytes * 1e9, to avoid rounding drift.
    tokens_nb: i128,
    last: Duration,
}

const NANOS: i128 = 1_000_000_000;

impl<C: Clock> Pacer<C> {
    /// A full bucket: `burst` bytes may go at once, then `rate` bytes/s.
    pub fn new(clock: C, rate: u64, burst: u64) -> Result<Self, PacerError> {
        if rate == 0 {
            return Err(PacerError::ZeroRate);
        }
        let last = clock.now();
        Ok(Self {
            clock,
            rate,
            burst,
            tokens_nb: i128::from(burst) * NANOS,
            last,
        })
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Change the rate (e.g. back off on loss). Tokens earned so far at the old rate are
    /// kept.
    pub fn set_rate(&mut self, rate: u64) -> Result<(), PacerError> {
        if rate == 0 {
            return Err(PacerError::ZeroRate);
        }
        self.refill();
        self.rate = rate;
        Ok(())
    }

    fn refill(&mut self) {
        let now = self.clock.now();
        let dt = now.saturating_sub(self.last);
        self.last = now.max(self.last);
        let earned = i128::try_from(dt.as_nanos()).unwrap_or(i128::MAX / 4) * i128::from(self.rate);
        let cap = i128::from(self.burst) * NANOS;
        self.tokens_nb = self.tokens_nb.saturating_add(earned).min(cap);
    }

    /// Bytes that may be sent right now without waiting (0 when in debt).
    pub fn available(&mut self) -> u64 {
        self.refill();
        u64::try_from(self.tokens_nb / NANOS).unwrap_or(0)
    }

    /// How long to wait before the next frame may be sent: zero if the balance is
    /// positive (that frame may overdraw it, whatever its size), else the time until it is.
    pub fn delay(&mut self) -> Duration {
        self.refill();
        if self.tokens_nb > 0 {
            return Duration::ZERO;
        }
        // Need the balance strictly positive: (-tokens + 1) / rate nanoseconds.
        let need = -self.tokens_nb + 1;
        let rate = i128::from(self.rate);
        let ns = (need + rate - 1) / rate;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Take `bytes` if [`delay`](Self::delay) is zero; returns whether they were taken.
    pub fn try_consume(&mut self, bytes: u64) -> bool {
        if self.delay() > Duration::ZERO {
            return false;
        }
        self.tokens_nb -= i128::from(bytes) * NANOS;
        true
    }

    /// Record `bytes` sent regardless of the balance (e.g. a retransmission that must go).
    pub fn consume(&mut self, bytes: u64) {
        self.refill();
        self.tokens_nb -= i128::from(bytes) * NANOS;
    }

    /// How many frames of `frame_len` bytes may go now (for sizing a batch), at most
    /// `max`. At least one if the balance is positive.
    pub fn frames_now(&mut self, frame_len: u64, max: usize) -> usize {
        self.refill();
        if self.tokens_nb <= 0 || frame_len == 0 {
            return 0;
        }
        let whole = (self.tokens_nb / NANOS) / i128::from(frame_len);
        usize::try_from(whole)
            .unwrap_or(usize::MAX)
            .clamp(1, max.max(1))
            .min(max)
    }

    /// Check that a burst admits at least one frame of `frame_len` bytes.
    pub fn check_burst(&self, frame_len: u64) -> Result<(), PacerError> {
        if self.burst < frame_len {
            return Err(PacerError::BurstTooSmall {
                burst: self.burst,
                frame: frame_len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    #[derive(Clone, Default)]
    struct FakeClock(Rc<Cell<Duration>>);

    impl FakeClock {
        fn advance(&self, d: Duration) {
            self.0.set(self.0.get() + d);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            self.0.get()
        }
    }

    #[test]
    fn burst_goes_at_once_then_rate_applies() {
        let clock = FakeClock::default();
        let mut p = Pacer::new(clock.clone(), 1_000_000, 10_000).unwrap();
        // 10 frames of 1000 bytes drain the burst
        for _ in 0..10 {
            assert!(p.try_consume(1000));
        }
        assert!(!p.try_consume(1000));
        // an empty bucket needs a strictly positive balance: one nanosecond here
        assert_eq!(p.delay(), Duration::from_nanos(1));
        clock.advance(Duration::from_nanos(1));
        // that frame overdraws the bucket by ~1000 bytes: 1 ms at 1 MB/s to recover
        assert!(p.try_consume(1000));
        assert_eq!(p.delay(), Duration::from_millis(1));
        clock.advance(Duration::from_nanos(999_999));
        assert!(!p.try_consume(1000));
        clock.advance(Duration::from_nanos(1));
        assert!(p.try_consume(1000));
    }

    #[test]
    fn delay_reports_time_to_positive_balance() {
        let clock = FakeClock::default();
        let mut p = Pacer::new(clock.clone(), 1000, 500).unwrap();
        p.consume(1500); // balance -1000 bytes
        let d = p.delay();
        assert!(
            d > Duration::from_millis(999) && d <= Duration::from_millis(1001),
            "{d:?}"
        );
        clock.advance(d);
        assert_eq!(p.delay(), Duration::ZERO);
    }

    #[test]
    fn long_run_rate_is_exact_with_large_frames() {
        // frames bigger than the balance may overdraw, but the average stays at the rate
        let clock = FakeClock::default();
        let rate = 125_000_000u64; // 1 Gbit/s
        let mut p = Pacer::new(clock.clone(), rate, 3028).unwrap();
        let mut sent = 0u64;
        let mut steps = 0;
        while sent < 125_000_000 && steps < 10_000_000 {
            let d = p.delay();
            if d > Duration::ZERO {
                clock.advance(d);
            }
            assert!(p.try_consume(1514));
            sent += 1514;
            steps += 1;
        }
        let secs = clock.now().as_secs_f64();
        let measured = sent as f64 / secs;
        assert!(
            (measured / rate as f64 - 1.0).abs() < 0.001,
            "measured {measured} B/s"
        );
    }

    #[test]
    fn bucket_never_exceeds_burst_after_idle() {
        let clock = FakeClock::default();
        let mut p = Pacer::new(clock.clone(), 1_000_000, 4000).unwrap();
        clock.advance(Duration::from_secs(3600));
        assert_eq!(p.available(), 4000);
        assert_eq!(p.frames_now(1000, 64), 4);
        assert_eq!(p.frames_now(1000, 2), 2);
    }

    #[test]
    fn set_rate_keeps_earned_tokens_and_rejects_zero() {
        let clock = FakeClock::default();
        let mut p = Pacer::new(clock.clone(), 1000, 1000).unwrap();
        p.consume(1000);
        clock.advance(Duration::from_millis(500)); // earned 500 at the old rate
        p.set_rate(2000).unwrap();
        assert_eq!(p.available(), 500);
        clock.advance(Duration::from_millis(100)); // 200 more at the new rate
        assert_eq!(p.available(), 700);
        assert_eq!(p.set_rate(0), Err(PacerError::ZeroRate));
        assert!(Pacer::new(clock, 0, 10).is_err());
    }

    #[test]
    fn burst_check_and_empty_bucket() {
        let clock = FakeClock::default();
        let mut p = Pacer::new(clock, 1000, 100).unwrap();
        assert!(p.check_burst(1514).is_err());
        assert!(p.check_burst(100).is_ok());
        p.consume(100);
        assert_eq!(p.frames_now(10, 8), 0);
        assert_eq!(p.available(), 0);
    }
}
