//! Exponential backoff with full jitter for every reconnect loop.
//!
//! Jitter spreads the reconnects of a whole site that lost its uplink at the same moment, so the
//! control plane is not hit by all of them at once when the link returns.

use std::time::Duration;

/// Backoff state: call [`Backoff::next_delay`] after each failure, [`Backoff::reset`] after a
/// success.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays grow from `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The ceiling for the current attempt (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt: uniform in `[ceiling/2, ceiling]` ("equal jitter", so
    /// a retry never comes back immediately), given a uniform sample `unit` in `[0, 1)`.
    pub fn next_delay_with(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// [`Self::next_delay_with`] with a random sample.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(fastrand::f64())
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<_> = (0..6)
            .map(|_| {
                let c = backoff.ceiling();
                backoff.next_delay_with(1.0);
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    proptest! {
        #[test]
        fn delay_stays_within_half_and_full_ceiling(unit in 0.0f64..1.0, failures in 0u32..100) {
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(30));
            for _ in 0..failures { backoff.next_delay_with(0.5); }
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay_with(unit);
            prop_assert!(delay >= ceiling / 2 && delay <= ceiling);
        }
    }
}
