//! Circuit breakers around ingest's two dependencies, Redis (publishing) and Kafka (dead letters).
//!
//! The state machine is failsafe's: after `failures` consecutive transient failures the breaker opens for a
//! jittered, growing delay; then one call is let through (half-open), and its success closes the breaker. Ingest
//! pauses its partitions while any breaker is not closed, so an outage costs neither memory nor a consumer
//! group membership, and it never turns events into dead letters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ces_runtime::backoff::Backoff;
use failsafe::failure_policy::{ConsecutiveFailures, consecutive_failures};
use failsafe::{Config, Instrument, StateMachine};
use tracing::{info, warn};

use crate::metrics as m;

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Consecutive transient failures that open the breaker.
    pub failures: u32,
    /// First open period; each failed probe doubles it (with jitter) up to `open_max`.
    pub open_min: Duration,
    /// Longest open period.
    pub open_max: Duration,
}

/// A circuit breaker for one dependency.
#[derive(Clone)]
pub struct Breaker {
    machine: StateMachine<ConsecutiveFailures<Backoff>, Transitions>,
    tripped: Arc<AtomicBool>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("tripped", &self.is_tripped())
            .finish()
    }
}

impl Breaker {
    /// A closed breaker for `target` (a metric label: one of [`m::target::ALL`]).
    pub fn new(target: &'static str, policy: Policy) -> Self {
        let tripped = Arc::new(AtomicBool::new(false));
        let transitions = Transitions {
            target,
            tripped: tripped.clone(),
            started: AtomicBool::new(false),
        };
        let machine = Config::new()
            .failure_policy(consecutive_failures(
                policy.failures,
                Backoff::new(policy.open_min, policy.open_max),
            ))
            .instrument(transitions)
            .build();
        ::metrics::gauge!(m::BREAKER_OPEN, "target" => target).set(0.0);
        Self { machine, tripped }
    }

    /// Whether a call may go out now (closed, or the open period is over and this is the half-open probe).
    pub fn is_call_permitted(&self) -> bool {
        self.machine.is_call_permitted()
    }

    /// Open or half-open: the dependency has not yet proven it is back.
    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// Records a successful call (closes a half-open breaker).
    pub fn on_success(&self) {
        self.machine.on_success();
    }

    /// Records a transient failure.
    pub fn on_error(&self) {
        self.machine.on_error();
    }
}

struct Transitions {
    target: &'static str,
    tripped: Arc<AtomicBool>,
    // failsafe reports "closed" when the machine is built; that is not a transition.
    started: AtomicBool,
}

impl Transitions {
    fn entered(&self, to: &'static str, tripped: bool) {
        self.tripped.store(tripped, Ordering::Release);
        ::metrics::gauge!(m::BREAKER_OPEN, "target" => self.target)
            .set(f64::from(u8::from(tripped)));
        ::metrics::counter!(m::BREAKER_TRANSITIONS, "target" => self.target, "to" => to)
            .increment(1);
    }
}

impl Instrument for Transitions {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        warn!(
            target = self.target,
            "circuit breaker open; partitions paused"
        );
        self.entered(m::state::OPEN, true);
    }

    fn on_half_open(&self) {
        info!(target = self.target, "circuit breaker half-open; probing");
        self.entered(m::state::HALF_OPEN, true);
    }

    fn on_closed(&self) {
        if !self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        info!(target = self.target, "circuit breaker closed; resuming");
        self.entered(m::state::CLOSED, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_then_a_successful_probe_closes_it() {
        let b = Breaker::new(
            "redis",
            Policy {
                failures: 3,
                open_min: Duration::from_millis(20),
                open_max: Duration::from_millis(20),
            },
        );
        b.on_error();
        b.on_error();
        b.on_success();
        b.on_error();
        b.on_error();
        assert!(
            b.is_call_permitted() && !b.is_tripped(),
            "a success resets the count"
        );
        b.on_error();
        assert!(b.is_tripped());
        assert!(!b.is_call_permitted(), "open: calls are refused");
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.is_call_permitted(), "half-open: one probe");
        assert!(b.is_tripped());
        b.on_error();
        assert!(!b.is_call_permitted(), "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.is_call_permitted());
        b.on_success();
        assert!(!b.is_tripped());
    }
}
