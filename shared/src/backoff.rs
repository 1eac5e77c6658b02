//! Reconnect backoff: capped exponential delays with jitter, as a sans-IO value.
//!
//! Used wherever a client retries a lost connection: `atmosphere join` re-establishing a
//! live session, the host's link to its relay, the browser's automatic rejoin.
//!
//! ## The policy
//!
//! - The *ceiling* of retry *n* (counting from 0) is `first · 2ⁿ`, capped at `max`.
//! - The delay is drawn uniformly from `[ceiling / 2, ceiling]` ("equal jitter"): clients
//!   that lost the same host at the same instant spread out instead of retrying in step,
//!   and no retry waits longer than the ceiling or less than half of it.
//! - The caller supplies the randomness as a number in `[0, 1)` (e.g. `rand::random()` or
//!   the browser's `Math.random()`), so this module needs no random source, runs on wasm,
//!   and tests choose their numbers: `0.0` gives the ceiling itself, values close to `1.0`
//!   half of it. Values outside `[0, 1]` are clamped and NaN counts as `0.0`.
//! - [`Backoff::reset`] starts again from `first` once a connection proved stable.
//!
//! ## Driving it
//!
//! ```
//! use atmosphere_shared::backoff::Backoff;
//! use std::time::Duration;
//!
//! let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
//! // Lost the connection: wait, retry; on each further failure, wait longer.
//! assert_eq!(backoff.next_delay(0.0), Duration::from_secs(1));
//! assert_eq!(backoff.next_delay(0.0), Duration::from_secs(2));
//! assert_eq!(backoff.next_delay(0.5), Duration::from_secs(3)); // 4 s, jittered
//! // Connected and stable again: the next loss starts from the first delay.
//! backoff.reset();
//! assert_eq!(backoff.next_delay(0.0), Duration::from_secs(1));
//! ```

use std::time::Duration;

/// Capped exponential backoff with equal jitter; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// Retries since the last reset: the exponent of the next delay.
    attempt: u32,
}

impl Backoff {
    /// Delays start at `first` and double up to `max` (a `max` below `first` makes every
    /// ceiling `max`).
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            attempt: 0,
        }
    }

    /// The delay before retry number `attempt` (0 = the first retry), jittered with
    /// `random_unit` (uniform in `[0, 1)`). Pure: the same inputs give the same delay.
    pub fn delay(&self, attempt: u32, random_unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let unit = if random_unit.is_nan() {
            0.0
        } else {
            random_unit.clamp(0.0, 1.0)
        };
        // `unit` is in [0, 1], so this never underflows or overflows.
        ceiling - (ceiling / 2).mul_f64(unit)
    }

    /// The un-jittered delay of retry `attempt`: `first · 2^attempt`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next retry, counting this retry.
    pub fn next_delay(&mut self, random_unit: f64) -> Duration {
        let d = self.delay(self.attempt, random_unit);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Retries counted since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts again from the first delay (the connection proved stable).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(non_snake_case)]
    fn MS(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let b = Backoff::new(MS(1_000), MS(30_000));
        let ceilings: Vec<u64> = (0..8).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(
            ceilings,
            [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        // Huge attempt counts saturate instead of overflowing.
        assert_eq!(b.ceiling(u32::MAX), MS(30_000));
        assert_eq!(b.delay(u32::MAX, 0.0), MS(30_000));
    }

    #[test]
    fn jitter_stays_between_half_and_the_ceiling() {
        let b = Backoff::new(MS(250), MS(30_000));
        for attempt in 0..40 {
            let ceiling = b.ceiling(attempt);
            for i in 0..=100 {
                let d = b.delay(attempt, f64::from(i) / 100.0);
                assert!(d <= ceiling && d >= ceiling / 2, "{attempt} {i}: {d:?}");
            }
        }
        assert_eq!(b.delay(0, 0.0), MS(250));
        assert_eq!(b.delay(0, 1.0), MS(125));
        assert_eq!(b.delay(2, 0.5), MS(750));
    }

    #[test]
    fn out_of_range_randomness_is_clamped() {
        let b = Backoff::new(MS(1_000), MS(30_000));
        assert_eq!(b.delay(0, f64::NAN), MS(1_000));
        assert_eq!(b.delay(0, -3.0), MS(1_000));
        assert_eq!(b.delay(0, 7.0), MS(500));
        assert_eq!(b.delay(0, f64::INFINITY), MS(500));
    }

    #[test]
    fn the_stateful_form_counts_retries_and_resets() {
        let mut b = Backoff::new(MS(1_000), MS(30_000));
        let waits: Vec<u64> = (0..7)
            .map(|_| b.next_delay(0.0).as_millis() as u64)
            .collect();
        assert_eq!(waits, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
        assert_eq!(b.attempt(), 7);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next_delay(0.0), MS(1_000));
    }

    /// Virtual time: a client that keeps failing, with random jitter, waits in total
    /// between half and all of the sum of the ceilings, and never more than `max` at once.
    #[test]
    fn a_retry_schedule_on_virtual_time() {
        let mut b = Backoff::new(MS(1_000), MS(30_000));
        // A small deterministic generator stands in for the caller's randomness.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut random_unit = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut now = Duration::ZERO;
        let mut ceilings = Duration::ZERO;
        for n in 0..10 {
            let d = b.next_delay(random_unit());
            assert!(d <= MS(30_000));
            now += d;
            ceilings += b.ceiling(n);
        }
        assert!(
            now <= ceilings && now >= ceilings / 2,
            "{now:?} of {ceilings:?}"
        );
    }

    #[test]
    fn a_cap_below_the_first_delay_caps_every_delay() {
        let b = Backoff::new(MS(5_000), MS(2_000));
        assert_eq!(b.delay(0, 0.0), MS(2_000));
        assert_eq!(b.delay(9, 0.0), MS(2_000));
    }
}
