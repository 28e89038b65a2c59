//! Which offsets ingest commits, and when. Pure: `engine` reads the clock and the assignment and sends the
//! commits; [`Commits`] only decides.
//!
//! A batch's offsets enter only once the batch is settled ([`crate::retry::Settlement::into_commit`]: Redis
//! acknowledged every event, Kafka every dead letter). They go out asynchronously at most every
//! `CES_COMMIT_INTERVAL_MS`, carrying every batch acknowledged since the last commit, and once that interval has
//! passed even when no batch follows (the idle flush). Only partitions this replica owns at the time of a commit
//! are committed: a late commit for a partition now owned by another replica could move its position back. The
//! final commit at shutdown carries every acknowledged offset of the partitions still owned. Neither carries the
//! offset of a partition revoked since the batch's records were received ([`crate::revocations`]): it could
//! skip records nobody has published.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::revocations::Revocations;

/// A topic and partition.
pub type Partition = (String, i32);

/// Offsets to commit: the next offset to read, per partition.
pub type Offsets = BTreeMap<Partition, i64>;

/// An acknowledged offset and the revocation generation its batch's records were received in (the oldest).
type Stamped = BTreeMap<Partition, (i64, u64)>;

/// Offsets acknowledged, committed and not yet committed.
#[derive(Debug)]
pub struct Commits {
    interval: Duration,
    last_commit: Instant,
    /// Sent in an asynchronous commit, kept for the final one.
    acknowledged: Stamped,
    /// Not sent yet.
    uncommitted: Stamped,
}

impl Commits {
    /// Nothing acknowledged yet; the first commit is due `interval` after `now`.
    pub fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            last_commit: now,
            acknowledged: Stamped::new(),
            uncommitted: Stamped::new(),
        }
    }

    /// Adds the offsets of a settled batch whose oldest record was received at revocation generation
    /// `received`. A partition's offset replaces the one before it.
    pub fn acknowledge(&mut self, batch: Offsets, received: u64) {
        self.uncommitted
            .extend(batch.into_iter().map(|(p, o)| (p, (o, received))));
    }

    /// Whether offsets wait for a commit: the idle flush is armed only then.
    pub fn has_uncommitted(&self) -> bool {
        !self.uncommitted.is_empty()
    }

    /// When the next commit is due.
    pub fn due_at(&self) -> Instant {
        self.last_commit + self.interval
    }

    /// Whether a commit is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_commit) >= self.interval
    }

    /// Takes the offsets to commit now, given the partitions this replica `owned` (`None`: the assignment
    /// could not be read) and the `revoked` partitions. Offsets of partitions not owned, or revoked since their
    /// records were received, are forgotten, in the final commit too; not knowing the assignment forgets every
    /// offset, since a skipped commit is a redelivery, never a loss.
    pub fn commit(
        &mut self,
        owned: Option<&HashSet<Partition>>,
        revoked: &Revocations,
        now: Instant,
    ) -> Offsets {
        keep_valid(&mut self.uncommitted, owned, revoked);
        keep_valid(&mut self.acknowledged, owned, revoked);
        let commit = std::mem::take(&mut self.uncommitted);
        self.acknowledged
            .extend(commit.iter().map(|(p, o)| (p.clone(), *o)));
        self.last_commit = now;
        unstamped(commit)
    }

    /// The offsets of the final, synchronous commit at shutdown: every acknowledged offset of a partition
    /// this replica still `owned` and that was not `revoked` since its records were received.
    pub fn into_final(
        mut self,
        owned: Option<&HashSet<Partition>>,
        revoked: &Revocations,
    ) -> Offsets {
        self.acknowledged.append(&mut self.uncommitted);
        keep_valid(&mut self.acknowledged, owned, revoked);
        unstamped(self.acknowledged)
    }
}

fn keep_valid(offsets: &mut Stamped, owned: Option<&HashSet<Partition>>, revoked: &Revocations) {
    match owned {
        Some(owned) => offsets.retain(|p, &mut (_, received)| {
            owned.contains(p) && !revoked.is_stale(&p.0, p.1, received)
        }),
        None => offsets.clear(),
    }
}

fn unstamped(offsets: Stamped) -> Offsets {
    offsets.into_iter().map(|(p, (o, _))| (p, o)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(100);
    static NONE_REVOKED: std::sync::LazyLock<Revocations> =
        std::sync::LazyLock::new(Revocations::default);

    fn offsets(entries: &[(&str, i32, i64)]) -> Offsets {
        entries
            .iter()
            .map(|&(t, p, o)| ((t.to_owned(), p), o))
            .collect()
    }

    fn owned(partitions: &[(&str, i32)]) -> HashSet<Partition> {
        partitions.iter().map(|&(t, p)| (t.to_owned(), p)).collect()
    }

    #[test]
    fn nothing_is_due_or_armed_before_a_batch_is_acknowledged() {
        let t0 = Instant::now();
        let c = Commits::new(INTERVAL, t0);
        assert!(!c.has_uncommitted(), "no idle flush with nothing to commit");
        assert_eq!(c.due_at(), t0 + INTERVAL);
        assert!(!c.is_due(t0));
        assert!(!c.is_due(t0 + INTERVAL - Duration::from_nanos(1)));
        assert!(c.is_due(t0 + INTERVAL));
        // A clock read before the last commit is not a reason to commit.
        assert!(!Commits::new(INTERVAL, t0 + INTERVAL).is_due(t0));
    }

    #[test]
    fn commits_at_most_every_interval_carrying_every_batch_since_the_last() {
        let t0 = Instant::now();
        let all = owned(&[("t", 0), ("t", 1)]);
        let mut c = Commits::new(INTERVAL, t0);
        c.acknowledge(offsets(&[("t", 0, 10)]), 0);
        assert!(!c.is_due(t0 + INTERVAL / 2));
        c.acknowledge(offsets(&[("t", 0, 20), ("t", 1, 5)]), 0);
        assert!(c.has_uncommitted());
        let now = t0 + INTERVAL;
        assert!(c.is_due(now));
        assert_eq!(
            c.commit(Some(&all), &NONE_REVOKED, now),
            offsets(&[("t", 0, 20), ("t", 1, 5)])
        );
        assert!(!c.has_uncommitted());
        assert_eq!(c.due_at(), now + INTERVAL, "the interval restarts");
        assert!(!c.is_due(now + INTERVAL / 2));
        c.acknowledge(offsets(&[("t", 1, 8)]), 0);
        assert_eq!(
            c.commit(Some(&all), &NONE_REVOKED, now + INTERVAL),
            offsets(&[("t", 1, 8)]),
            "only what is new since"
        );
    }

    #[test]
    fn idle_flush_commits_the_last_batch_once_the_interval_has_passed() {
        let t0 = Instant::now();
        let mut c = Commits::new(INTERVAL, t0);
        c.acknowledge(offsets(&[("t", 0, 4)]), 0);
        // No batch follows: the engine sleeps until `due_at` because offsets wait, then commits.
        assert!(c.has_uncommitted());
        assert_eq!(c.due_at(), t0 + INTERVAL);
        assert_eq!(
            c.commit(Some(&owned(&[("t", 0)])), &NONE_REVOKED, c.due_at()),
            offsets(&[("t", 0, 4)])
        );
        assert!(!c.has_uncommitted(), "and then the flush is disarmed");
    }

    #[test]
    fn a_zero_interval_commits_after_every_batch() {
        let t0 = Instant::now();
        let mut c = Commits::new(Duration::ZERO, t0);
        c.acknowledge(offsets(&[("t", 0, 1)]), 0);
        assert!(c.is_due(t0));
    }

    #[test]
    fn a_later_batch_replaces_a_partitions_offset() {
        let t0 = Instant::now();
        let mut c = Commits::new(INTERVAL, t0);
        c.acknowledge(offsets(&[("t", 0, 30)]), 0);
        // After a rebalance a partition can come back at a lower position; the last batch is what counts.
        c.acknowledge(offsets(&[("t", 0, 25)]), 0);
        assert_eq!(
            c.commit(Some(&owned(&[("t", 0)])), &NONE_REVOKED, t0 + INTERVAL),
            offsets(&[("t", 0, 25)])
        );
    }

    #[test]
    fn final_commit_covers_exactly_the_acknowledged_batches() {
        let t0 = Instant::now();
        let all = owned(&[("t", 0), ("t", 1), ("u", 0)]);
        let mut c = Commits::new(INTERVAL, t0);
        c.acknowledge(offsets(&[("t", 0, 10), ("t", 1, 3)]), 0);
        c.commit(Some(&all), &NONE_REVOKED, t0 + INTERVAL);
        c.acknowledge(offsets(&[("t", 0, 15), ("u", 0, 2)]), 0);
        // A batch that did not settle never reaches `acknowledge`, so nothing of it is here.
        assert_eq!(
            c.into_final(Some(&all), &NONE_REVOKED),
            offsets(&[("t", 0, 15), ("t", 1, 3), ("u", 0, 2)])
        );
    }

    #[test]
    fn final_commit_with_nothing_acknowledged_commits_nothing() {
        let c = Commits::new(INTERVAL, Instant::now());
        assert!(
            c.into_final(Some(&owned(&[("t", 0)])), &NONE_REVOKED)
                .is_empty()
        );
    }

    #[test]
    fn crash_before_a_commit_leaves_nothing_committed() {
        // A batch acknowledged within the interval is not committed yet; a crash now (no final commit) means
        // no commit ever went out, and the whole batch is redelivered.
        let t0 = Instant::now();
        let mut c = Commits::new(INTERVAL, t0);
        c.acknowledge(offsets(&[("t", 0, 10)]), 0);
        assert!(!c.is_due(t0 + INTERVAL / 2));
        assert!(c.has_uncommitted());
    }

    #[test]
    fn offsets_of_a_revoked_partition_are_not_committed_and_forgotten() {
        let t0 = Instant::now();
        let mut c = Commits::new(INTERVAL, t0);
        c.acknowledge(offsets(&[("t", 0, 10), ("t", 1, 20)]), 0);
        c.commit(
            Some(&owned(&[("t", 0), ("t", 1)])),
            &NONE_REVOKED,
            t0 + INTERVAL,
        );
        c.acknowledge(offsets(&[("t", 0, 11), ("t", 1, 21)]), 0);
        // Partition 1 moved to another replica.
        let only_0 = owned(&[("t", 0)]);
        assert_eq!(
            c.commit(Some(&only_0), &NONE_REVOKED, t0 + INTERVAL * 2),
            offsets(&[("t", 0, 11)])
        );
        // It came back: its old offsets were forgotten and are not committed at shutdown.
        let both = owned(&[("t", 0), ("t", 1)]);
        assert_eq!(
            c.into_final(Some(&both), &NONE_REVOKED),
            offsets(&[("t", 0, 11)])
        );
    }

    #[test]
    fn final_commit_skips_partitions_revoked_since_the_last_commit() {
        let t0 = Instant::now();
        let mut c = Commits::new(INTERVAL, t0);
        c.acknowledge(offsets(&[("t", 0, 10), ("t", 1, 20)]), 0);
        c.commit(
            Some(&owned(&[("t", 0), ("t", 1)])),
            &NONE_REVOKED,
            t0 + INTERVAL,
        );
        c.acknowledge(offsets(&[("t", 0, 12)]), 0);
        assert_eq!(
            c.into_final(Some(&owned(&[("t", 1)])), &NONE_REVOKED),
            offsets(&[("t", 1, 20)])
        );
    }

    #[test]
    fn an_unreadable_assignment_commits_nothing_and_forgets_every_offset() {
        let t0 = Instant::now();
        let mut c = Commits::new(INTERVAL, t0);
        c.acknowledge(offsets(&[("t", 0, 10)]), 0);
        c.commit(Some(&owned(&[("t", 0)])), &NONE_REVOKED, t0 + INTERVAL);
        c.acknowledge(offsets(&[("t", 0, 12)]), 0);
        assert!(c.commit(None, &NONE_REVOKED, t0 + INTERVAL * 2).is_empty());
        assert_eq!(c.due_at(), t0 + INTERVAL * 3, "it still counts as a commit");
        assert!(!c.has_uncommitted());
        assert!(
            c.into_final(Some(&owned(&[("t", 0)])), &NONE_REVOKED)
                .is_empty()
        );

        let mut c = Commits::new(INTERVAL, t0);
        c.acknowledge(offsets(&[("t", 0, 10)]), 0);
        assert!(c.into_final(None, &NONE_REVOKED).is_empty());
    }

    /// The loss this prevents: offsets 150-200 of t/0 were received (generation 0) and settled; t/0 was revoked,
    /// another replica committed 120, and t/0 came back. Committing 201 now would skip 120-149 for good.
    #[test]
    fn offsets_received_before_a_revocation_of_their_partition_are_never_committed() {
        let t0 = Instant::now();
        let both = owned(&[("t", 0), ("t", 1)]);
        let mut revoked = Revocations::default();
        let mut c = Commits::new(INTERVAL, t0);
        c.acknowledge(offsets(&[("t", 0, 201)]), revoked.generation());
        c.commit(Some(&both), &revoked, t0 + INTERVAL);
        c.acknowledge(offsets(&[("t", 0, 210), ("t", 1, 7)]), revoked.generation());
        revoked.revoke([("t", 0)]);
        assert_eq!(
            c.commit(Some(&both), &revoked, t0 + INTERVAL * 2),
            offsets(&[("t", 1, 7)]),
            "t/0 is owned again, but its offset predates the revocation"
        );
        assert_eq!(
            c.into_final(Some(&both), &revoked),
            offsets(&[("t", 1, 7)]),
            "nor does the final commit carry t/0's earlier offset"
        );
    }

    #[test]
    fn a_batch_received_after_the_revocation_commits_again() {
        let t0 = Instant::now();
        let all = owned(&[("t", 0)]);
        let mut revoked = Revocations::default();
        let mut c = Commits::new(INTERVAL, t0);
        c.acknowledge(offsets(&[("t", 0, 201)]), revoked.generation());
        revoked.revoke([("t", 0)]);
        // Read again from the committed position after the partition came back.
        c.acknowledge(offsets(&[("t", 0, 136)]), revoked.generation());
        assert_eq!(
            c.commit(Some(&all), &revoked, t0 + INTERVAL),
            offsets(&[("t", 0, 136)])
        );
        assert_eq!(
            c.into_final(Some(&all), &revoked),
            offsets(&[("t", 0, 136)])
        );
    }

    #[test]
    fn a_batch_straddling_a_revocation_counts_from_its_oldest_record() {
        let t0 = Instant::now();
        let all = owned(&[("t", 0), ("t", 1)]);
        let mut revoked = Revocations::default();
        let oldest = revoked.generation();
        revoked.revoke([("t", 0)]);
        let mut c = Commits::new(INTERVAL, t0);
        // Part of the batch was received before the revocation of t/0: t/0's offset waits for redelivery; t/1
        // was not revoked, so its records arrived in order and its offset commits.
        c.acknowledge(offsets(&[("t", 0, 50), ("t", 1, 9)]), oldest);
        assert_eq!(
            c.commit(Some(&all), &revoked, t0 + INTERVAL),
            offsets(&[("t", 1, 9)])
        );
    }
}
