//! Pacing of the sender: a token bucket driven by the caller's clock ([`TokenBucket`]),
//! and the loss-driven rate controller ([`RateControl`]) that moves its rate between a
//! floor and a ceiling: multiplicative decrease when the NACK-reported loss ratio of an
//! interval exceeds a threshold, additive increase when an interval is clean.
//!
//! Random loss below the threshold is repaired, not taken as congestion: backing off on
//! 1 % random loss would cost far more goodput than the repairs. This module does not
//! count loss itself (the sender feeds it per-interval totals) and never sleeps.

use std::time::Duration;

const NANOS: i128 = 1_000_000_000;

/// Token bucket over bytes. Tokens refill at `rate` bytes/s up to `burst`; a frame may go
/// whenever the balance is positive and may overdraw it, so the long-run rate is exact and
/// no frame size is ever starved.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Balance in bytes × 1e9 (byte-nanoseconds per second), so refills never round away.
    tokens: i128,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket at time `now`. A `rate` of 0 is treated as 1 byte/s.
    pub fn new(rate: u64, burst: u64, now: Duration) -> TokenBucket {
        TokenBucket {
            rate: rate.max(1),
            burst,
            tokens: i128::from(burst) * NANOS,
            last: now,
        }
    }

    /// Current rate in bytes/s.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Changes the rate; tokens earned until `now` are kept.
    pub fn set_rate(&mut self, rate: u64, now: Duration) {
        self.refill(now);
        self.rate = rate.max(1);
    }

    /// Changes the depth; tokens earned until `now` are kept up to the new depth.
    pub fn set_burst(&mut self, burst: u64, now: Duration) {
        self.refill(now);
        self.burst = burst;
        self.tokens = self.tokens.min(i128::from(burst) * NANOS);
    }

    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        let earned = dt.as_nanos().saturating_mul(u128::from(self.rate));
        let earned = i128::try_from(earned).unwrap_or(i128::MAX / 2);
        let cap = i128::from(self.burst) * NANOS;
        self.tokens = self.tokens.saturating_add(earned).min(cap);
    }

    /// The earliest time at or after `now` when a frame may go (`now` if it may go now).
    pub fn ready_at(&mut self, now: Duration) -> Duration {
        self.refill(now);
        if self.tokens > 0 {
            return now;
        }
        let need = u128::try_from(1 - self.tokens).unwrap_or(u128::MAX);
        let ns = need.div_ceil(u128::from(self.rate));
        now + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Like [`ready_at`](Self::ready_at), but once the bucket is empty it waits until
    /// `batch` bytes of credit (at most `burst`) have built up again. A caller that sleeps
    /// until then wakes once per batch and hands the kernel a whole batch with one call,
    /// instead of waking (or spinning) for every frame; the long-run rate is the same.
    pub fn ready_for_batch(&mut self, now: Duration, batch: u64) -> Duration {
        self.refill(now);
        if self.tokens > 0 {
            return now;
        }
        let want = i128::from(batch.min(self.burst).max(1)) * NANOS;
        let need = u128::try_from(want - self.tokens).unwrap_or(u128::MAX);
        let ns = need.div_ceil(u128::from(self.rate));
        now + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Charges `bytes` (call after sending a frame).
    pub fn consume(&mut self, bytes: u64, now: Duration) {
        self.refill(now);
        self.tokens -= i128::from(bytes) * NANOS;
    }
}

/// Bounds and steps of the rate controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Starting rate and ceiling, bytes/s.
    pub max_rate: u64,
    /// Floor, bytes/s.
    pub min_rate: u64,
    /// Additive increase per clean interval, bytes/s.
    pub increase: u64,
    /// Loss ratio (missing blocks reported ÷ blocks expected) above which an interval
    /// counts as congested.
    pub loss_threshold: f64,
    /// Smallest multiplicative factor applied in one interval (e.g. 0.5).
    pub min_factor: f64,
}

/// Additive-increase / multiplicative-decrease rate controller.
#[derive(Debug, Clone)]
pub struct RateControl {
    limits: RateLimits,
    rate: u64,
    decreases: u64,
}

impl RateControl {
    /// Starts at the ceiling.
    pub fn new(limits: RateLimits) -> RateControl {
        let min_rate = limits.min_rate.max(1);
        let limits = RateLimits {
            min_rate,
            max_rate: limits.max_rate.max(min_rate),
            ..limits
        };
        RateControl {
            rate: limits.max_rate,
            limits,
            decreases: 0,
        }
    }

    /// Current rate, bytes/s.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Number of decreases so far.
    pub fn decreases(&self) -> u64 {
        self.decreases
    }

    /// Ends an interval in which `expected` block receptions were due (blocks sent ×
    /// receivers) and `missing` were reported missing. Returns the new rate.
    pub fn end_interval(&mut self, expected: u64, missing: u64) -> u64 {
        if expected == 0 {
            return self.rate;
        }
        let loss = (missing as f64 / expected as f64).min(1.0);
        if loss > self.limits.loss_threshold {
            let factor = (1.0 - 2.0 * loss).max(self.limits.min_factor).min(1.0);
            // factor is in [min_factor, 1] and the rate a u64: the product is finite and
            // non-negative (saturating `as` clamps anything else into range anyway).
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let next = (self.rate as f64 * factor) as u64;
            self.rate = next.clamp(self.limits.min_rate, self.limits.max_rate);
            self.decreases += 1;
        } else {
            self.rate = self
                .rate
                .saturating_add(self.limits.increase)
                .min(self.limits.max_rate);
        }
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bucket_paces_at_its_rate() {
        let mut b = TokenBucket::new(1_000_000, 10_000, Duration::ZERO);
        let mut now = Duration::ZERO;
        let mut sent = 0u64;
        // Send 1000-byte frames as fast as allowed for one simulated second.
        while now < Duration::from_secs(1) {
            now = b.ready_at(now);
            if now >= Duration::from_secs(1) {
                break;
            }
            b.consume(1000, now);
            sent += 1000;
        }
        // 1 MB/s for 1 s plus the initial burst, within one frame.
        assert!((1_009_000..=1_011_000).contains(&sent), "sent {sent}");
    }

    #[test]
    fn bucket_burst_caps_idle_credit() {
        let mut b = TokenBucket::new(1_000, 2_000, Duration::ZERO);
        b.consume(2_000, Duration::ZERO);
        assert!(b.ready_at(Duration::ZERO) > Duration::ZERO);
        // After a long idle time only `burst` is available.
        let t = Duration::from_secs(100);
        b.consume(3_000, t);
        let ready = b.ready_at(t);
        assert!(ready >= t + Duration::from_secs(1) && ready <= t + Duration::from_secs(1) + MS);
    }

    #[test]
    fn batched_waits_keep_the_rate_and_fill_batches() {
        let mut b = TokenBucket::new(1_000_000, 10_000, Duration::ZERO);
        let mut now = Duration::ZERO;
        let (mut sent, mut wakes) = (0u64, 0u32);
        while now < Duration::from_secs(1) {
            let at = b.ready_for_batch(now, 5_000);
            if at > now {
                wakes += 1;
                now = at;
                continue;
            }
            if now >= Duration::from_secs(1) {
                break;
            }
            b.consume(1000, now);
            sent += 1000;
        }
        // Same long-run rate as frame-by-frame waits (burst + 1 MB/s), within a batch ...
        assert!((1_004_000..=1_011_000).contains(&sent), "sent {sent}");
        // ... but one wake per 5 frames, not one per frame.
        assert!((195..=205).contains(&wakes), "{wakes} wakes");
        // A batch larger than the bucket waits for a full bucket only.
        let mut b = TokenBucket::new(1_000, 2_000, Duration::ZERO);
        b.consume(2_000, Duration::ZERO);
        assert_eq!(
            b.ready_for_batch(Duration::ZERO, 1 << 30),
            Duration::from_secs(2)
        );
    }

    fn limits() -> RateLimits {
        RateLimits {
            max_rate: 100_000_000,
            min_rate: 10_000_000,
            increase: 5_000_000,
            loss_threshold: 0.05,
            min_factor: 0.5,
        }
    }

    #[test]
    fn backs_off_on_heavy_loss_and_recovers_when_clean() {
        let mut r = RateControl::new(limits());
        assert_eq!(
            r.end_interval(1000, 10),
            100_000_000,
            "1% is repaired, not congestion"
        );
        assert_eq!(r.end_interval(1000, 100), 80_000_000);
        assert_eq!(
            r.end_interval(1000, 1000),
            40_000_000,
            "factor floored at 0.5"
        );
        for _ in 0..10 {
            r.end_interval(1000, 1000);
        }
        assert_eq!(r.rate(), 10_000_000, "floor");
        for _ in 0..100 {
            r.end_interval(1000, 0);
        }
        assert_eq!(r.rate(), 100_000_000, "ceiling");
        assert_eq!(
            r.end_interval(0, 0),
            100_000_000,
            "idle interval changes nothing"
        );
    }
}
