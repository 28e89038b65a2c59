//! Exponential backoff with equal jitter for retrying transient failures.
//!
//! Hand-written because failsafe's backoff iterators refuse steps below one second, and a Redis failover is
//! usually over in tens of milliseconds.

use std::time::Duration;

use rand::Rng as _;

/// Delays of `start`, `2*start`, ... capped at `max`; each delay is half fixed, half random so that many
/// replicas retrying at once spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `start` to `max`.
    pub fn new(start: Duration, max: Duration) -> Self {
        Self {
            start,
            max,
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .start
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// An endless sequence of delays, so a backoff can drive failsafe's circuit breaker open periods.
impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_stays_within_jitter_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        for expected in [100u64, 200, 400, 800, 800, 800] {
            let d = b.next_delay();
            let full = Duration::from_millis(expected);
            assert!(
                d >= full / 2 && d <= full,
                "{d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
