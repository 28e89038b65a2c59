//! What a run and its worker processes say to each other ([`super::spread`]), one JSON object per line: the
//! [`WorkerPlan`] on the worker's stdin, then [`Message`]s on its stdout. Counters travel as running totals, so a
//! lost or late line costs nothing; latency samples and resume times travel once, with wall-clock times (the
//! processes share the machine's clock, not their `Instant`s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clients::{Session, Shared};

use super::fleet::Delivery;

/// A worker's share of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WorkerPlan {
    /// Which worker this is (0, 1, ...), for its log lines.
    pub(super) worker: usize,
    /// `--target` URLs.
    pub(super) targets: Vec<String>,
    /// `--per-source`.
    pub(super) per_source: u64,
    /// First handshakes in flight at once in this worker.
    pub(super) connect_concurrency: u64,
    /// Index of its first session in the whole run (picks the source addresses).
    pub(super) first_index: u64,
    /// Its sessions.
    pub(super) sessions: Vec<Session>,
    /// The worker stops by itself this long after it started, even if its stdin never closes.
    pub(super) deadline_s: u64,
}

/// One line of a worker's stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Message {
    /// Sent every 200 ms while the sockets are held, and once more after they are closed.
    Progress(Progress),
    /// The last line: what its sockets received.
    Done(Delivery),
}

/// Counters so far, and what was sampled since the last progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Progress {
    /// Running totals.
    pub(super) counters: Counters,
    /// `(received, latency µs)`, received in µs since the Unix epoch.
    pub(super) samples: Vec<(u64, u64)>,
    /// When resumes after a disconnect completed, µs since the Unix epoch.
    pub(super) resumes: Vec<u64>,
}

/// The counters of a [`Shared`], as running totals (`connected` is a current value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Counters {
    pub(super) connected: u64,
    pub(super) delivered: u64,
    pub(super) duplicated: u64,
    pub(super) out_of_order: u64,
    pub(super) unparsed: u64,
    pub(super) disconnects: u64,
    pub(super) refused: u64,
    pub(super) resumed_ok: u64,
    pub(super) resumed_lost: u64,
}

/// Each counter of `Counters` beside the atomic of [`Shared`] it mirrors.
fn pairs<'a>(c: &'a Counters, s: &'a Shared) -> [(u64, &'a AtomicU64); 9] {
    [
        (c.connected, &s.connected),
        (c.delivered, &s.delivered),
        (c.duplicated, &s.duplicated),
        (c.out_of_order, &s.out_of_order),
        (c.unparsed, &s.unparsed),
        (c.disconnects, &s.disconnects),
        (c.refused, &s.refused),
        (c.resumed_ok, &s.resumed_ok),
        (c.resumed_lost, &s.resumed_lost),
    ]
}

impl Counters {
    /// `shared`'s counters now.
    pub(super) fn read(shared: &Shared) -> Self {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Self {
            connected: load(&shared.connected),
            delivered: load(&shared.delivered),
            duplicated: load(&shared.duplicated),
            out_of_order: load(&shared.out_of_order),
            unparsed: load(&shared.unparsed),
            disconnects: load(&shared.disconnects),
            refused: load(&shared.refused),
            resumed_ok: load(&shared.resumed_ok),
            resumed_lost: load(&shared.resumed_lost),
        }
    }

    /// Adds to `shared` what changed from `before` to `self` (one worker's totals into the run's).
    pub(super) fn apply_since(&self, before: &Self, shared: &Shared) {
        for ((now, atomic), (was, _)) in pairs(self, shared).into_iter().zip(pairs(before, shared))
        {
            if now >= was {
                atomic.fetch_add(now - was, Ordering::Relaxed);
            } else {
                atomic.fetch_sub(was - now, Ordering::Relaxed);
            }
        }
    }
}

impl Progress {
    /// What this worker counted and sampled, taken from its `shared` (whose recorder forwards, see
    /// [`crate::stats::Recorder::forwarding`]); the samples and resumes it had are gone from it.
    pub(super) fn take(shared: &Shared) -> Self {
        let (now, wall) = (Instant::now(), crate::now_micros());
        let resumes = std::mem::take(&mut *shared.resumes.lock().expect("resumes lock"));
        Self {
            counters: Counters::read(shared),
            samples: shared
                .recorder
                .take_forwarded()
                .into_iter()
                .map(|(at, latency)| (wall_micros(at, now, wall), latency))
                .collect(),
            resumes: resumes
                .into_iter()
                .map(|at| wall_micros(at, now, wall))
                .collect(),
        }
    }

    /// Adds this progress of one worker to the run's `shared`: the counters' change since that worker's `before`,
    /// and the samples and resumes.
    pub(super) fn mirror_into(&self, before: &Counters, shared: &Shared) {
        self.counters.apply_since(before, shared);
        let (now, wall) = (Instant::now(), crate::now_micros());
        if !self.samples.is_empty() {
            let samples: Vec<(Instant, u64)> = self
                .samples
                .iter()
                .map(|&(at, latency)| (instant_of(at, now, wall), latency))
                .collect();
            shared.recorder.record(&samples);
        }
        shared
            .resumes
            .lock()
            .expect("resumes lock")
            .extend(self.resumes.iter().map(|&at| instant_of(at, now, wall)));
    }
}

/// `at` as µs since the Unix epoch, by this process's clocks now.
pub(super) fn wall_micros(at: Instant, now: Instant, now_wall: u64) -> u64 {
    now_wall.saturating_sub(
        u64::try_from(now.saturating_duration_since(at).as_micros()).unwrap_or(u64::MAX),
    )
}

/// µs since the Unix epoch as an `Instant` of this process, by its clocks now (never later than `now`).
pub(super) fn instant_of(wall: u64, now: Instant, now_wall: u64) -> Instant {
    now.checked_sub(Duration::from_micros(now_wall.saturating_sub(wall)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_every_field_and_mirror_changes_both_ways() {
        let worker = Shared::default();
        worker.connected.store(5, Ordering::Relaxed);
        worker.delivered.store(7, Ordering::Relaxed);
        worker.resumed_lost.store(1, Ordering::Relaxed);
        let first = Counters::read(&worker);
        assert_eq!(
            first,
            Counters {
                connected: 5,
                delivered: 7,
                resumed_lost: 1,
                ..Counters::default()
            }
        );
        let run = Shared::default();
        run.connected.store(100, Ordering::Relaxed);
        first.apply_since(&Counters::default(), &run);
        let second = Counters {
            connected: 2,
            delivered: 9,
            refused: 4,
            ..first
        };
        second.apply_since(&first, &run);
        assert_eq!(
            Counters::read(&run),
            Counters {
                connected: 102,
                delivered: 9,
                refused: 4,
                resumed_lost: 1,
                ..Counters::default()
            }
        );
    }

    #[test]
    fn progress_moves_samples_and_resumes_from_a_worker_to_the_run() {
        let worker = Shared {
            recorder: crate::stats::Recorder::forwarding(),
            ..Shared::default()
        };
        let at = Instant::now();
        worker.recorder.record(&[(at, 2_000), (at, 4_000)]);
        worker.resumes.lock().unwrap().push(at);
        worker.delivered.store(2, Ordering::Relaxed);
        let p = Progress::take(&worker);
        assert_eq!((p.samples.len(), p.resumes.len()), (2, 1));
        let again = Progress::take(&worker);
        assert!(again.samples.is_empty() && again.resumes.is_empty());
        assert_eq!(again.counters.delivered, 2, "counters are running totals");
        let line = serde_json::to_string(&Message::Progress(p)).unwrap();
        let Message::Progress(p) = serde_json::from_str(&line).unwrap() else {
            panic!("not progress")
        };
        let run = Shared::default();
        p.mirror_into(&Counters::default(), &run);
        assert_eq!(run.delivered.load(Ordering::Relaxed), 2);
        assert_eq!(run.recorder.quantiles().count, 2);
        assert!((run.recorder.quantiles().max_ms - 4.0).abs() < 0.01);
        assert_eq!(run.resumes.lock().unwrap().len(), 1);
    }

    #[test]
    fn messages_are_one_tagged_json_object_each() {
        let line = serde_json::to_string(&Message::Done(Delivery {
            distinct: 3,
            ..Delivery::default()
        }))
        .unwrap();
        assert!(
            line.starts_with(r#"{"kind":"done","distinct":3,"#),
            "{line}"
        );
        assert!(!line.contains('\n'));
        let back: Message = serde_json::from_str(
            r#"{"kind":"progress","counters":{"connected":1,"delivered":0,"duplicated":0,"out_of_order":0,
                "unparsed":0,"disconnects":0,"refused":0,"resumed_ok":0,"resumed_lost":0},
                "samples":[[1700000000000000,1500]],"resumes":[]}"#,
        )
        .unwrap();
        let Message::Progress(p) = back else {
            panic!("not progress")
        };
        assert_eq!((p.counters.connected, p.samples[0].1), (1, 1500));
    }

    #[test]
    fn instants_travel_as_wall_clock_micros() {
        let now = Instant::now();
        let then = now - Duration::from_millis(1500);
        let wall = wall_micros(then, now, 10_000_000);
        assert_eq!(wall, 8_500_000);
        let back = instant_of(wall, now, 10_000_000);
        assert_eq!(now.duration_since(back), Duration::from_millis(1500));
        assert_eq!(
            instant_of(11_000_000, now, 10_000_000),
            now,
            "never later than now"
        );
    }
}
