//! When ingest pauses its partitions and when it polls the consumer. Pure: `engine` reads the clock and the
//! breakers and calls librdkafka; these values only decide.
//!
//! While a batch is in flight the consumer keeps being polled, which is what keeps it in its group. Unpaused,
//! polling reads ahead at most one batch. Every partition is paused while a breaker is open or half-open (the
//! dependency has not proven it is back), and when ingest is saturated: the read-ahead is full and the batch is
//! still in flight [`SATURATED_AFTER`] after it started. Paused partitions deliver nothing, so they are polled
//! whatever the read-ahead holds. Between batches the partitions are resumed: a batch settles only once Redis
//! and Kafka answered, so nothing is left to wait for.

use std::time::{Duration, Instant};

/// A batch still in flight after this long with the read-ahead full means ingest is saturated: partitions are
/// paused until it catches up.
pub const SATURATED_AFTER: Duration = Duration::from_secs(5);

/// Whether the partitions are paused, as far as librdkafka confirmed.
#[derive(Debug, Default)]
pub struct Partitions {
    paused: bool,
}

impl Partitions {
    /// Whether librdkafka confirmed the partitions paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The change to ask librdkafka for to get the partitions paused (`want`) or flowing: `None` when they
    /// already are.
    pub fn change(&self, want: bool) -> Option<bool> {
        (want != self.paused).then_some(want)
    }

    /// librdkafka applied a change. A change it refused is not recorded, so the next [`Self::change`] asks
    /// again.
    pub fn changed(&mut self, paused: bool) {
        self.paused = paused;
    }
}

/// Pausing and polling while one batch is in flight.
#[derive(Debug)]
pub struct InFlight {
    started: Instant,
    max_ahead: usize,
    consumer_failing: bool,
}

impl InFlight {
    /// A batch that started at `started`, with at most `max_ahead` records read ahead of it.
    pub fn new(started: Instant, max_ahead: usize) -> Self {
        Self {
            started,
            max_ahead,
            consumer_failing: false,
        }
    }

    /// Whether every partition should be paused at `now`, with `ahead` records read ahead and
    /// `breaker_tripped` if any breaker is open or half-open.
    pub fn want_paused(&self, ahead: usize, breaker_tripped: bool, now: Instant) -> bool {
        let saturated = ahead >= self.max_ahead
            && now.saturating_duration_since(self.started) >= SATURATED_AFTER;
        saturated || breaker_tripped
    }

    /// Whether to poll the consumer now, with `ahead` records read ahead and the partitions `paused`: a paused
    /// consumer is polled to keep its group membership; an unpaused one until the read-ahead is full; neither
    /// while the consumer is failing.
    pub fn may_poll(&self, ahead: usize, paused: bool) -> bool {
        !self.consumer_failing && (paused || ahead < self.max_ahead)
    }

    /// The consumer returned an error: stop polling until the next tick rather than spin on a failing broker.
    pub fn on_consumer_error(&mut self) {
        self.consumer_failing = true;
    }

    /// A tick passed: poll again.
    pub fn on_tick(&mut self) {
        self.consumer_failing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{Breaker, Policy};

    const MAX: usize = 100;

    #[test]
    fn a_change_is_asked_for_only_when_the_state_differs() {
        let mut p = Partitions::default();
        assert!(!p.is_paused());
        assert_eq!(p.change(false), None);
        assert_eq!(p.change(true), Some(true));
        p.changed(true);
        assert!(p.is_paused());
        assert_eq!(p.change(true), None);
        assert_eq!(p.change(false), Some(false), "between batches: resume");
        p.changed(false);
        assert_eq!(p.change(false), None);
    }

    #[test]
    fn a_refused_change_is_asked_for_again() {
        let p = Partitions::default();
        assert_eq!(p.change(true), Some(true));
        // librdkafka refused: `changed` is not called.
        assert_eq!(p.change(true), Some(true));
        assert!(!p.is_paused());
    }

    #[test]
    fn a_tripped_breaker_pauses_and_a_closed_one_resumes() {
        let t0 = Instant::now();
        let f = InFlight::new(t0, MAX);
        assert!(f.want_paused(0, true, t0));
        assert!(f.want_paused(MAX, true, t0));
        assert!(!f.want_paused(0, false, t0));
        assert!(!f.want_paused(MAX - 1, false, t0 + SATURATED_AFTER * 10));
    }

    #[test]
    fn saturated_only_with_the_read_ahead_full_and_the_batch_slow() {
        let t0 = Instant::now();
        let f = InFlight::new(t0, MAX);
        let late = t0 + SATURATED_AFTER;
        let early = late - Duration::from_nanos(1);
        assert!(f.want_paused(MAX, false, late));
        assert!(f.want_paused(MAX + 1, false, late));
        assert!(!f.want_paused(MAX, false, early));
        assert!(!f.want_paused(MAX - 1, false, late));
        assert!(
            !f.want_paused(MAX, false, t0 - Duration::from_secs(1)),
            "a clock before the start is not late"
        );
    }

    #[test]
    fn unpaused_polls_until_the_read_ahead_is_full() {
        let f = InFlight::new(Instant::now(), MAX);
        assert!(f.may_poll(0, false));
        assert!(f.may_poll(MAX - 1, false));
        assert!(!f.may_poll(MAX, false));
        assert!(!f.may_poll(MAX + 1, false));
    }

    #[test]
    fn paused_partitions_are_still_polled_whatever_the_read_ahead_holds() {
        let f = InFlight::new(Instant::now(), MAX);
        assert!(f.may_poll(0, true));
        assert!(f.may_poll(MAX, true));
        assert!(f.may_poll(MAX * 3, true));
    }

    #[test]
    fn a_consumer_error_stops_polling_until_the_next_tick() {
        let mut f = InFlight::new(Instant::now(), MAX);
        f.on_consumer_error();
        assert!(!f.may_poll(0, false));
        assert!(!f.may_poll(0, true));
        f.on_tick();
        assert!(f.may_poll(0, false));
        assert!(f.may_poll(0, true));
    }

    #[test]
    fn redis_down_opens_the_breaker_which_pauses_every_partition_then_a_probe_resumes() {
        let t0 = Instant::now();
        let redis = Breaker::new(
            "redis",
            Policy {
                failures: 3,
                open_min: Duration::ZERO,
                open_max: Duration::ZERO,
            },
        );
        let f = InFlight::new(t0, MAX);
        let mut p = Partitions::default();
        for _ in 0..2 {
            redis.on_error();
            assert_eq!(p.change(f.want_paused(0, redis.is_tripped(), t0)), None);
        }
        redis.on_error();
        assert_eq!(
            p.change(f.want_paused(0, redis.is_tripped(), t0)),
            Some(true)
        );
        p.changed(true);
        assert!(f.may_poll(MAX, p.is_paused()), "paused, still polled");
        // The open period is zero: the breaker lets the probe through as soon as the clock moves on, and is
        // still tripped until that probe succeeds.
        while !redis.is_call_permitted() {
            std::hint::spin_loop();
        }
        assert!(redis.is_tripped());
        assert_eq!(p.change(f.want_paused(0, redis.is_tripped(), t0)), None);
        redis.on_success();
        assert_eq!(
            p.change(f.want_paused(0, redis.is_tripped(), t0)),
            Some(false)
        );
    }
}
