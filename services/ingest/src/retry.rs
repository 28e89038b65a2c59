//! What to do after each attempt at settling a batch: which events to publish again, which to give up and
//! dead-letter, what the breakers learn, and whether the batch may be committed. Pure: `engine` performs the
//! calls, the sleeps and the breaker updates; these values only decide.
//!
//! - [`Publishing`]: a batch's events against Redis. After a partial failure the batch is retried from the first
//!   failed event on, never the failed events alone, so a retried event cannot be overtaken by a later one of
//!   its session (the ones that already ran come back as duplicates). An outage is retried for as long as it
//!   lasts; an event Redis rejects for a reason of its own ([`publisher::is_event_error`]) is retried up to
//!   `max_attempts` times, then given up so it can be dead-lettered and the rest of the batch goes on.
//! - [`DeadLettering`]: a batch's dead letters against Kafka. A failure of Kafka or of the way to it is retried for
//!   as long as it lasts; a letter Kafka refuses for good (too large even without its value, headers and key;
//!   an invalid record; no permission) is sent again up to `max_attempts` times, then skipped, so one record can
//!   never hold up its partition for good.
//! - [`Settlement`]: both together, and the batch's offsets, handed out only once Redis answered every event and
//!   Kafka acknowledged every dead letter (given-up events included).

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use crate::Error;
use crate::commit::Offsets;
use crate::publisher::{self, Outcome};

/// What happens after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing is left to send.
    Done,
    /// Send the rest at once, starting the backoff over: what failed is settled, and the next event's trouble,
    /// if any, is its own.
    Now,
    /// Send the rest again after the next backoff delay.
    AfterBackoff,
}

/// How Redis answered one publish call of a [`Publishing`].
#[derive(Debug)]
pub enum Verdict {
    /// Every event sent was acknowledged (published or dropped as a duplicate).
    Acknowledged,
    /// Redis rejected `event` (an index into the batch's events) for a reason of its own, for the
    /// `attempts`-th time; it is retried, with every event after it.
    Rejected {
        /// Index of the event in the batch's events.
        event: usize,
        /// Times Redis rejected it so far.
        attempts: u32,
        /// The rejection.
        error: Error,
    },
    /// Redis rejected `event` for a reason of its own `attempts` times, the most allowed: it is given up (see
    /// [`Publishing::given_up`]) and the events after it are sent.
    GaveUp {
        /// Index of the event in the batch's events.
        event: usize,
        /// Times Redis rejected it.
        attempts: u32,
        /// The last rejection.
        error: Error,
    },
    /// Redis (or the way to it) failed: an outage. The events from the first failure on are retried for as
    /// long as it lasts, and none is ever given up for it.
    Outage {
        /// The first failure.
        error: Error,
    },
}

impl Verdict {
    /// Whether Redis proved it is up: the breaker records a success, else a failure. An event-specific
    /// rejection is an answer from a working Redis, so it must not trip the breaker.
    pub fn redis_answered(&self) -> bool {
        !matches!(self, Self::Outage { .. })
    }

    /// When to send what is left.
    pub fn next(&self, publishing: &Publishing) -> Next {
        match self {
            _ if publishing.is_done() => Next::Done,
            Self::GaveUp { .. } => Next::Now,
            Self::Acknowledged | Self::Rejected { .. } | Self::Outage { .. } => Next::AfterBackoff,
        }
    }
}

/// The answer to one publish call.
#[derive(Debug)]
pub struct Answer {
    /// Events whose outcome Redis reported for the first time, to be counted and their spans ended: an event
    /// sent again after a failure before it comes back as a duplicate of itself, which must not count twice.
    pub first_seen: Vec<(usize, Outcome)>,
    /// What the call means for the batch.
    pub verdict: Verdict,
}

/// An event Redis kept rejecting for a reason of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GivenUp {
    /// Index of the event in the batch's events.
    pub event: usize,
    /// Times Redis rejected it.
    pub attempts: u32,
    /// The last rejection.
    pub error: String,
}

/// The events of one batch on their way to Redis.
#[derive(Debug)]
pub struct Publishing {
    events: usize,
    /// Every event before it is acknowledged or given up.
    next: usize,
    max_attempts: u32,
    attempts: HashMap<usize, u32>,
    counted: HashSet<usize>,
    given_up: Vec<GivenUp>,
}

impl Publishing {
    /// `events` events to publish, each rejected at most `max_attempts` times for a reason of its own.
    pub fn new(events: usize, max_attempts: u32) -> Self {
        Self {
            events,
            next: 0,
            max_attempts,
            attempts: HashMap::new(),
            counted: HashSet::new(),
            given_up: Vec::new(),
        }
    }

    /// The events to send now, in order: always a suffix of the batch.
    pub fn pending(&self) -> Range<usize> {
        self.next..self.events
    }

    /// Whether every event is acknowledged or given up.
    pub fn is_done(&self) -> bool {
        self.next >= self.events
    }

    /// The events given up so far, in order, to be dead-lettered as `processing_failed`.
    pub fn given_up(&self) -> &[GivenUp] {
        &self.given_up
    }

    /// Takes the results of publishing [`Self::pending`], one per event in order (as
    /// [`publisher::Publisher::publish`] returns them). Only the first failure decides; the events after it
    /// are sent again whatever became of them.
    pub fn on_results(&mut self, results: Vec<Result<Outcome, Error>>) -> Answer {
        let sent = self.pending();
        let mut first_seen = Vec::new();
        for (event, result) in sent.clone().zip(&results) {
            if let Ok(outcome) = result
                && self.counted.insert(event)
            {
                first_seen.push((event, *outcome));
            }
        }
        let first_failure = results
            .into_iter()
            .enumerate()
            .find_map(|(i, r)| Some((i, r.err()?)));
        let Some((offset, error)) = first_failure else {
            self.next = self.events;
            return Answer {
                first_seen,
                verdict: Verdict::Acknowledged,
            };
        };
        self.next = (sent.start + offset).min(self.events);
        let verdict = if publisher::is_event_error(&error) {
            let event = self.next;
            let tries = self.attempts.entry(event).or_insert(0);
            *tries += 1;
            let attempts = *tries;
            if attempts >= self.max_attempts {
                self.given_up.push(GivenUp {
                    event,
                    attempts,
                    error: error.to_string(),
                });
                self.next += 1;
                Verdict::GaveUp {
                    event,
                    attempts,
                    error,
                }
            } else {
                Verdict::Rejected {
                    event,
                    attempts,
                    error,
                }
            }
        } else {
            Verdict::Outage { error }
        };
        Answer {
            first_seen,
            verdict,
        }
    }
}

/// How Kafka answered one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written and acknowledged (`acks=all`).
    Acknowledged,
    /// Kafka, or the way to it, failed (a broker down, a timeout): an outage, sent again for as long as it lasts.
    Failed,
    /// Kafka answered that it will not take this record ([`crate::kafka::is_refusal`]); sending the same bytes
    /// again cannot succeed.
    Refused,
}

/// A dead letter Kafka refused as often as allowed: given up, neither delivered nor dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// The letter's id ([`DeadLettering::admit`]).
    pub letter: usize,
    /// Times Kafka refused it.
    pub attempts: u32,
}

/// What happens after a produce of dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The letters to send again after the next backoff delay, in the order given.
    pub retry: Vec<usize>,
    /// The letters given up now: never sent again, and the batch commits past them.
    pub skipped: Vec<Skipped>,
    /// Whether Kafka answered every letter, acknowledging or refusing it: the breaker records a success, else a
    /// failure. A refusal comes from a working Kafka, so it must not trip the breaker.
    pub kafka_answered: bool,
}

/// The dead letters of one batch on their way to Kafka.
#[derive(Debug)]
pub struct DeadLettering {
    admitted: usize,
    acknowledged: usize,
    skipped: usize,
    max_attempts: u32,
    refusals: HashMap<usize, u32>,
}

impl DeadLettering {
    /// No letters yet; each is refused at most `max_attempts` times before it is skipped.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            admitted: 0,
            acknowledged: 0,
            skipped: 0,
            max_attempts,
            refusals: HashMap::new(),
        }
    }

    /// Ids for `letters` more dead letters, unique within the batch.
    pub fn admit(&mut self, letters: usize) -> Range<usize> {
        let ids = self.admitted..self.admitted + letters;
        self.admitted = ids.end;
        ids
    }

    /// Takes how Kafka answered each letter sent (by id); says which to send again and which to give up.
    pub fn on_sent(&mut self, results: impl IntoIterator<Item = (usize, Delivery)>) -> Sent {
        let mut sent = Sent {
            retry: Vec::new(),
            skipped: Vec::new(),
            kafka_answered: true,
        };
        for (letter, delivery) in results {
            match delivery {
                Delivery::Acknowledged => self.acknowledged += 1,
                Delivery::Failed => {
                    sent.kafka_answered = false;
                    sent.retry.push(letter);
                }
                Delivery::Refused => {
                    let refusals = self.refusals.entry(letter).or_insert(0);
                    *refusals += 1;
                    if *refusals >= self.max_attempts {
                        self.skipped += 1;
                        sent.skipped.push(Skipped {
                            letter,
                            attempts: *refusals,
                        });
                    } else {
                        sent.retry.push(letter);
                    }
                }
            }
        }
        sent
    }

    /// Dead letters Kafka acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged
    }

    /// Dead letters settled so far: acknowledged or skipped.
    pub fn settled(&self) -> usize {
        self.acknowledged + self.skipped
    }
}

/// One batch from its plan to its commit.
#[derive(Debug)]
pub struct Settlement {
    commit: Offsets,
    letters: usize,
    publishing: Publishing,
    dead_letters: DeadLettering,
}

impl Settlement {
    /// A batch with `events` events to publish and `letters` records to dead-letter, whose offsets are
    /// `commit` (next offset per partition); `max_attempts` bounds both an event's rejections by Redis and a
    /// dead letter's refusals by Kafka.
    pub fn new(commit: Offsets, events: usize, letters: usize, max_attempts: u32) -> Self {
        Self {
            commit,
            letters,
            publishing: Publishing::new(events, max_attempts),
            dead_letters: DeadLettering::new(max_attempts),
        }
    }

    /// Both halves, to run concurrently.
    pub fn parts(&mut self) -> (&mut Publishing, &mut DeadLettering) {
        (&mut self.publishing, &mut self.dead_letters)
    }

    /// The events given up, to be dead-lettered too.
    pub fn given_up(&self) -> &[GivenUp] {
        self.publishing.given_up()
    }

    /// The batch's offsets, once Redis acknowledged or gave up every event and Kafka acknowledged (or refused
    /// for good) every dead letter, the given-up events' included; `None` before that (shutdown interrupted a
    /// retry, or a crash): such a batch is redelivered.
    pub fn into_commit(self) -> Option<Offsets> {
        let letters = self.letters + self.publishing.given_up().len();
        (self.publishing.is_done() && self.dead_letters.settled() == letters).then_some(self.commit)
    }
}

#[cfg(test)]
mod tests {
    use fred::error::{Error as RedisError, ErrorKind};

    use super::*;
    use crate::commit::Commits;

    fn wrongtype() -> Error {
        Error::Redis(RedisError::new(
            ErrorKind::InvalidArgument,
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ))
    }

    fn down() -> Error {
        Error::Redis(RedisError::new(ErrorKind::IO, "Connection reset by peer"))
    }

    fn ok(seq: u64) -> Result<Outcome, Error> {
        Ok(Outcome::Published(seq))
    }

    fn dup() -> Result<Outcome, Error> {
        Ok(Outcome::Duplicate)
    }

    fn offsets(entries: &[(&str, i32, i64)]) -> Offsets {
        entries
            .iter()
            .map(|&(t, p, o)| ((t.to_owned(), p), o))
            .collect()
    }

    /// The verdict's kind, the event it names and its attempts, for exact comparisons.
    fn kind(v: &Verdict) -> (&'static str, Option<usize>, Option<u32>) {
        match v {
            Verdict::Acknowledged => ("acknowledged", None, None),
            Verdict::Rejected {
                event, attempts, ..
            } => ("rejected", Some(*event), Some(*attempts)),
            Verdict::GaveUp {
                event, attempts, ..
            } => ("gave_up", Some(*event), Some(*attempts)),
            Verdict::Outage { .. } => ("outage", None, None),
        }
    }

    #[test]
    fn a_batch_redis_acknowledges_at_once_is_done_and_counted_once() {
        let mut p = Publishing::new(3, 5);
        assert_eq!(p.pending(), 0..3);
        let a = p.on_results(vec![ok(1), dup(), ok(2)]);
        assert_eq!(kind(&a.verdict), ("acknowledged", None, None));
        assert!(a.verdict.redis_answered());
        assert_eq!(a.verdict.next(&p), Next::Done);
        assert_eq!(
            a.first_seen,
            [
                (0, Outcome::Published(1)),
                (1, Outcome::Duplicate),
                (2, Outcome::Published(2))
            ]
        );
        assert!(p.is_done());
        assert_eq!(p.pending(), 3..3);
        assert!(p.given_up().is_empty());
    }

    #[test]
    fn an_empty_batch_is_done_before_any_call() {
        let p = Publishing::new(0, 5);
        assert!(p.is_done());
        assert!(p.pending().is_empty());
    }

    #[test]
    fn a_partial_failure_is_retried_from_the_first_failed_event_including_later_ones() {
        let mut p = Publishing::new(5, 5);
        // Event 1 hit an outage; 2 and 4 ran anyway (Redis runs a pipeline to its end), 3 failed too.
        let a = p.on_results(vec![ok(1), Err(down()), ok(2), Err(down()), ok(3)]);
        assert_eq!(kind(&a.verdict), ("outage", None, None));
        assert_eq!(p.pending(), 1..5, "never the failed events alone");
        assert_eq!(
            a.first_seen,
            [
                (0, Outcome::Published(1)),
                (2, Outcome::Published(2)),
                (4, Outcome::Published(3))
            ]
        );
        // The retry: 2 and 4 come back as duplicates of themselves and are not counted again.
        let a = p.on_results(vec![ok(4), dup(), ok(5), dup()]);
        assert_eq!(kind(&a.verdict), ("acknowledged", None, None));
        assert_eq!(
            a.first_seen,
            [(1, Outcome::Published(4)), (3, Outcome::Published(5))]
        );
        assert!(p.is_done());
    }

    #[test]
    fn only_the_first_failure_decides_the_verdict() {
        let mut p = Publishing::new(3, 5);
        let a = p.on_results(vec![Err(down()), Err(wrongtype()), ok(1)]);
        assert_eq!(kind(&a.verdict), ("outage", None, None));
        assert_eq!(p.pending(), 0..3);
        let mut p = Publishing::new(3, 5);
        let a = p.on_results(vec![ok(1), Err(wrongtype()), Err(down())]);
        assert_eq!(kind(&a.verdict), ("rejected", Some(1), Some(1)));
        assert_eq!(p.pending(), 1..3);
    }

    #[test]
    fn an_outage_is_retried_with_backoff_for_as_long_as_it_lasts_and_never_gives_up() {
        let mut p = Publishing::new(2, 3);
        for _ in 0..100 {
            let a = p.on_results(vec![Err(down()), Err(down())]);
            assert_eq!(kind(&a.verdict), ("outage", None, None));
            assert!(!a.verdict.redis_answered(), "an outage trips the breaker");
            assert_eq!(a.verdict.next(&p), Next::AfterBackoff);
            assert!(a.first_seen.is_empty());
            assert_eq!(p.pending(), 0..2);
        }
        assert!(p.given_up().is_empty());
        let a = p.on_results(vec![ok(1), ok(2)]);
        assert_eq!(kind(&a.verdict), ("acknowledged", None, None));
        assert!(p.is_done());
        assert!(p.given_up().is_empty());
    }

    #[test]
    fn an_outage_does_not_count_as_an_attempt_of_the_event() {
        let mut p = Publishing::new(2, 3);
        let a = p.on_results(vec![Err(wrongtype()), ok(1)]);
        assert_eq!(kind(&a.verdict), ("rejected", Some(0), Some(1)));
        for _ in 0..5 {
            let a = p.on_results(vec![Err(down()), Err(down())]);
            assert_eq!(kind(&a.verdict), ("outage", None, None));
        }
        let a = p.on_results(vec![Err(wrongtype()), dup()]);
        assert_eq!(kind(&a.verdict), ("rejected", Some(0), Some(2)));
        let a = p.on_results(vec![Err(wrongtype()), dup()]);
        assert_eq!(kind(&a.verdict), ("gave_up", Some(0), Some(3)));
    }

    #[test]
    fn an_event_redis_rejects_is_retried_then_given_up_and_the_rest_goes_on() {
        let mut p = Publishing::new(4, 3);
        let a = p.on_results(vec![ok(1), Err(wrongtype()), ok(2), ok(3)]);
        assert_eq!(kind(&a.verdict), ("rejected", Some(1), Some(1)));
        assert!(
            a.verdict.redis_answered(),
            "redis is up: the breaker stays closed"
        );
        assert_eq!(a.verdict.next(&p), Next::AfterBackoff);
        assert_eq!(p.pending(), 1..4);
        let a = p.on_results(vec![Err(wrongtype()), dup(), dup()]);
        assert_eq!(kind(&a.verdict), ("rejected", Some(1), Some(2)));
        assert!(a.first_seen.is_empty());
        assert_eq!(p.pending(), 1..4);
        let a = p.on_results(vec![Err(wrongtype()), dup(), dup()]);
        assert_eq!(kind(&a.verdict), ("gave_up", Some(1), Some(3)));
        assert!(a.verdict.redis_answered());
        assert_eq!(a.verdict.next(&p), Next::Now, "the rest goes on at once");
        assert_eq!(p.pending(), 2..4);
        assert_eq!(
            p.given_up(),
            [GivenUp {
                event: 1,
                attempts: 3,
                error: wrongtype().to_string()
            }]
        );
        let a = p.on_results(vec![dup(), dup()]);
        assert_eq!(kind(&a.verdict), ("acknowledged", None, None));
        assert!(p.is_done());
        assert_eq!(p.given_up().len(), 1);
    }

    #[test]
    fn giving_up_the_last_event_finishes_the_batch() {
        let mut p = Publishing::new(2, 1);
        let a = p.on_results(vec![ok(1), Err(wrongtype())]);
        assert_eq!(kind(&a.verdict), ("gave_up", Some(1), Some(1)));
        assert!(p.is_done());
        assert_eq!(a.verdict.next(&p), Next::Done);
        assert_eq!(p.given_up()[0].event, 1);
    }

    #[test]
    fn attempts_are_counted_per_event() {
        let mut p = Publishing::new(3, 2);
        let a = p.on_results(vec![Err(wrongtype()), ok(1), ok(2)]);
        assert_eq!(kind(&a.verdict), ("rejected", Some(0), Some(1)));
        let a = p.on_results(vec![Err(wrongtype()), dup(), dup()]);
        assert_eq!(kind(&a.verdict), ("gave_up", Some(0), Some(2)));
        // Event 1 was acknowledged before, but now Redis rejects it: its own count starts at one.
        let a = p.on_results(vec![Err(wrongtype()), dup()]);
        assert_eq!(kind(&a.verdict), ("rejected", Some(1), Some(1)));
        let a = p.on_results(vec![Err(wrongtype()), dup()]);
        assert_eq!(kind(&a.verdict), ("gave_up", Some(1), Some(2)));
        let a = p.on_results(vec![dup()]);
        assert_eq!(kind(&a.verdict), ("acknowledged", None, None));
        let given: Vec<_> = p.given_up().iter().map(|g| (g.event, g.attempts)).collect();
        assert_eq!(given, [(0, 2), (1, 2)]);
    }

    /// Sends letters `ids` and answers each with `delivery`.
    fn answer(d: &mut DeadLettering, answers: &[(usize, Delivery)]) -> Sent {
        d.on_sent(answers.iter().copied())
    }

    #[test]
    fn dead_letters_are_retried_until_kafka_acknowledges_every_one() {
        use Delivery::{Acknowledged as Ack, Failed};
        let mut d = DeadLettering::new(2);
        assert_eq!(d.admit(3), 0..3);
        let sent = answer(&mut d, &[(0, Failed), (1, Failed), (2, Failed)]);
        assert_eq!(sent.retry, [0, 1, 2]);
        assert!(!sent.kafka_answered, "an outage trips the breaker");
        assert_eq!(d.acknowledged(), 0);
        for _ in 0..10 {
            let sent = answer(&mut d, &[(0, Ack), (1, Failed), (2, Ack)]);
            assert_eq!(
                (sent.retry.as_slice(), sent.skipped.as_slice()),
                (&[1][..], &[][..])
            );
        }
        assert_eq!(d.acknowledged(), 20, "an outage never gives a letter up");
        let sent = answer(&mut d, &[(1, Ack)]);
        assert!(sent.retry.is_empty() && sent.skipped.is_empty() && sent.kafka_answered);
        assert_eq!((d.acknowledged(), d.settled()), (21, 21));
        assert_eq!(d.admit(2), 3..5, "ids stay unique across calls");
        assert_eq!(d.admit(0), 5..5);
    }

    #[test]
    fn a_letter_kafka_refuses_is_sent_again_then_skipped_without_tripping_the_breaker() {
        use Delivery::{Acknowledged as Ack, Failed, Refused};
        let mut d = DeadLettering::new(3);
        d.admit(3);
        let sent = answer(&mut d, &[(0, Ack), (1, Refused), (2, Ack)]);
        assert_eq!(sent.retry, [1]);
        assert!(sent.skipped.is_empty());
        assert!(
            sent.kafka_answered,
            "kafka answered: the breaker stays closed"
        );
        // An outage in between does not count as a refusal.
        let sent = answer(&mut d, &[(1, Failed)]);
        assert_eq!(
            (sent.retry.as_slice(), sent.kafka_answered),
            (&[1][..], false)
        );
        assert_eq!(answer(&mut d, &[(1, Refused)]).retry, [1]);
        assert_eq!(d.settled(), 2);
        let sent = answer(&mut d, &[(1, Refused)]);
        assert!(sent.retry.is_empty());
        assert_eq!(
            sent.skipped,
            [Skipped {
                letter: 1,
                attempts: 3
            }]
        );
        assert!(sent.kafka_answered);
        assert_eq!((d.acknowledged(), d.settled()), (2, 3));
    }

    #[test]
    fn refusals_are_counted_per_letter() {
        use Delivery::Refused;
        let mut d = DeadLettering::new(2);
        d.admit(2);
        assert_eq!(answer(&mut d, &[(0, Refused)]).retry, [0]);
        let sent = answer(&mut d, &[(0, Refused), (1, Refused)]);
        assert_eq!(
            sent.skipped,
            [Skipped {
                letter: 0,
                attempts: 2
            }]
        );
        assert_eq!(sent.retry, [1]);
        let sent = answer(&mut d, &[(1, Refused)]);
        assert_eq!(
            sent.skipped,
            [Skipped {
                letter: 1,
                attempts: 2
            }]
        );
        assert_eq!(d.settled(), 2);
        let mut once = DeadLettering::new(1);
        once.admit(1);
        assert_eq!(
            answer(&mut once, &[(0, Refused)]).skipped.len(),
            1,
            "one attempt allowed"
        );
    }

    #[test]
    fn invalid_records_only_commit_once_their_dead_letters_are_acknowledged() {
        let commit = offsets(&[("t", 0, 12)]);
        let mut s = Settlement::new(commit.clone(), 0, 2, 5);
        let (p, d) = s.parts();
        assert!(p.is_done());
        d.admit(2);
        let sent = answer(
            d,
            &[(0, Delivery::Acknowledged), (1, Delivery::Acknowledged)],
        );
        assert!(sent.retry.is_empty() && sent.kafka_answered);
        let settled = s.into_commit().expect("settled");
        assert_eq!(settled, commit);
        let t0 = std::time::Instant::now();
        let mut commits = Commits::new(std::time::Duration::ZERO, t0);
        commits.acknowledge(settled, 0);
        let owned = [("t".to_owned(), 0)].into_iter().collect();
        assert_eq!(
            commits.commit(
                Some(&owned),
                &crate::revocations::Revocations::default(),
                t0
            ),
            commit
        );
    }

    #[test]
    fn a_failing_dead_letter_produce_holds_the_commit_until_it_succeeds() {
        let commit = offsets(&[("t", 0, 7), ("t", 1, 3)]);
        let build = || {
            let mut s = Settlement::new(commit.clone(), 1, 2, 5);
            let (p, d) = s.parts();
            assert_eq!(
                kind(&p.on_results(vec![ok(1)]).verdict),
                ("acknowledged", None, None)
            );
            d.admit(2);
            let sent = answer(d, &[(0, Delivery::Failed), (1, Delivery::Failed)]);
            assert_eq!(sent.retry, [0, 1]);
            s
        };
        assert_eq!(
            build().into_commit(),
            None,
            "events delivered, dead letters not"
        );
        let half = [(0, Delivery::Acknowledged), (1, Delivery::Failed)];
        let mut s = build();
        assert_eq!(answer(s.parts().1, &half).retry, [1]);
        let mut again = build();
        answer(again.parts().1, &half);
        assert_eq!(again.into_commit(), None, "one of two acknowledged");
        assert!(
            answer(s.parts().1, &[(1, Delivery::Acknowledged)])
                .retry
                .is_empty()
        );
        assert_eq!(s.into_commit(), Some(commit));
    }

    #[test]
    fn redis_down_holds_the_commit_and_dead_letters_nothing() {
        let mut s = Settlement::new(offsets(&[("t", 0, 5)]), 2, 0, 5);
        for _ in 0..10 {
            let a = s.parts().0.on_results(vec![Err(down()), Err(down())]);
            assert!(!a.verdict.redis_answered());
        }
        assert!(s.given_up().is_empty(), "an outage never dead-letters");
        // Shutdown during the retry wait: the batch is abandoned uncommitted.
        assert_eq!(s.into_commit(), None);
    }

    #[test]
    fn a_given_up_event_commits_only_once_its_dead_letter_is_acknowledged() {
        let commit = offsets(&[("t", 0, 3)]);
        let mut s = Settlement::new(commit.clone(), 3, 0, 1);
        let a = s.parts().0.on_results(vec![ok(1), Err(wrongtype()), ok(2)]);
        assert_eq!(kind(&a.verdict), ("gave_up", Some(1), Some(1)));
        let a = s.parts().0.on_results(vec![dup()]);
        assert_eq!(kind(&a.verdict), ("acknowledged", None, None));
        assert_eq!(s.given_up().len(), 1);
        let mut waiting = Settlement::new(commit.clone(), 3, 0, 1);
        waiting
            .parts()
            .0
            .on_results(vec![ok(1), Err(wrongtype()), ok(2)]);
        waiting.parts().0.on_results(vec![dup()]);
        assert_eq!(waiting.into_commit(), None, "its dead letter is owed");
        let ids = s.parts().1.admit(1);
        assert!(
            answer(s.parts().1, &[(ids.start, Delivery::Acknowledged)])
                .retry
                .is_empty()
        );
        assert_eq!(s.into_commit(), Some(commit));
    }

    #[test]
    fn a_batch_with_events_left_is_not_committed_even_with_its_dead_letters_acknowledged() {
        let mut s = Settlement::new(offsets(&[("t", 0, 9)]), 2, 1, 5);
        s.parts().1.admit(1);
        answer(s.parts().1, &[(0, Delivery::Acknowledged)]);
        let a = s.parts().0.on_results(vec![ok(1), Err(wrongtype())]);
        assert_eq!(kind(&a.verdict), ("rejected", Some(1), Some(1)));
        assert_eq!(s.into_commit(), None);
    }

    #[test]
    fn a_skipped_dead_letter_lets_the_batch_commit() {
        let commit = offsets(&[("t", 0, 4)]);
        let mut s = Settlement::new(commit.clone(), 0, 2, 2);
        let d = s.parts().1;
        d.admit(2);
        answer(d, &[(0, Delivery::Acknowledged), (1, Delivery::Refused)]);
        let mut held = Settlement::new(commit.clone(), 0, 2, 2);
        held.parts().1.admit(2);
        answer(
            held.parts().1,
            &[(0, Delivery::Acknowledged), (1, Delivery::Refused)],
        );
        assert_eq!(held.into_commit(), None, "refused once, to be sent again");
        let sent = answer(s.parts().1, &[(1, Delivery::Refused)]);
        assert_eq!(
            sent.skipped,
            [Skipped {
                letter: 1,
                attempts: 2
            }]
        );
        assert_eq!(s.into_commit(), Some(commit), "never an endless stall");
    }
}
