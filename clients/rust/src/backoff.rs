//! Full-jitter exponential backoff: the n-th failed attempt in a row waits a random time in
//! `[0, min(cap, base × 2^n))`, still random at the cap so a crowd never falls back into step, and the count resets
//! only after a connection stayed up [`Backoff::STABLE`], not at its first frame.

use std::time::Duration;

/// Consecutive failures and the delays they earn.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl Backoff {
    /// How long a connection must stay up for the next failure to count as the first again.
    pub const STABLE: Duration = Duration::from_secs(30);

    /// Delays from `base`, doubling per failure up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
        }
    }

    /// The delay before the next attempt, for `unit` drawn uniformly from `[0, 1)`; counts one more failure.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(self.failures).unwrap_or(u32::MAX))
            .min(self.cap);
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// A connection that ended after being up for `up`: a stable one resets the count.
    pub fn connection_ended(&mut self, up: Duration) {
        if up >= Self::STABLE {
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_to_the_cap_and_every_delay_stays_random_under_it() {
        let mut b = Backoff::default();
        let ceilings: Vec<u64> = (0..9)
            .map(|_| b.next_delay(1.0).as_millis() as u64)
            .collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        // At the cap the delay is still spread over [0, cap).
        assert_eq!(b.next_delay(0.25), Duration::from_millis(7500));
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        // Far past any shift width: no overflow, still the cap.
        let mut long = Backoff::default();
        for _ in 0..100 {
            long.next_delay(0.5);
        }
        assert_eq!(long.next_delay(1.0), Duration::from_secs(30));
    }

    #[test]
    fn only_a_stable_connection_resets_the_count() {
        let mut b = Backoff::default();
        for _ in 0..4 {
            b.next_delay(0.5);
        }
        b.connection_ended(Duration::from_secs(29));
        assert_eq!(
            b.next_delay(1.0),
            Duration::from_secs(8),
            "a short connection counts as a failure"
        );
        b.connection_ended(Backoff::STABLE);
        assert_eq!(b.next_delay(1.0), Duration::from_millis(500));
    }
}
