//! Which records and offsets a partition revocation made stale. Pure: the consumer's rebalance callback records
//! revocations here, the engine asks.
//!
//! Ingest holds records it has taken from the consumer but not yet settled (the read-ahead, the batch being
//! built) and offsets it has settled but not yet committed. A batch commits one past its highest offset per
//! partition, which is right only while that partition's records arrive in order from the position the batch
//! started at. A revocation breaks that: when the partition comes back (or goes to another replica, which may
//! commit less than ingest read), the consumer starts again from the committed offset, so records held from
//! before the revocation would move the commit past records nobody has published yet, and a crash then would
//! skip them. For example: ingest holds offsets 150-200 of P read ahead; P is revoked, another replica commits 120
//! and P comes back; ingest reads 120-135, builds a batch of those and the held 150-200, and commits 201. Records
//! 136-149 are not published yet, and after a crash nobody ever publishes them.
//!
//! So every record is stamped with the revocation generation current when it was received, and
//! - a held record of a partition revoked after it was received is dropped: the consumer delivers it again if the
//!   partition comes back, or its new owner does;
//! - settled offsets of such a partition are not committed: the records are redelivered and deduplicated, never
//!   skipped.
//!
//! rdkafka serves rebalance events inside the same poll that returns messages, on the engine's task, so a
//! message returned after a revocation's callback is always stamped with the new generation.

use std::collections::HashMap;

/// Revocations seen by this replica's consumer.
#[derive(Debug, Default)]
pub struct Revocations {
    /// Incremented by every revocation; 0 before the first.
    generation: u64,
    /// The generation at which each partition was last revoked.
    revoked_at: HashMap<String, HashMap<i32, u64>>,
    /// The generation at which every partition was last revoked at once ([`Revocations::revoke_all`]).
    all_revoked_at: u64,
}

impl Revocations {
    /// The current generation, to stamp a record received now.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records that `partitions` were revoked now; returns the new generation.
    pub fn revoke<'a>(&mut self, partitions: impl IntoIterator<Item = (&'a str, i32)>) -> u64 {
        self.generation += 1;
        for (topic, partition) in partitions {
            self.revoked_at
                .entry(topic.to_owned())
                .or_default()
                .insert(partition, self.generation);
        }
        self.generation
    }

    /// Records that the assignment was lost without saying which partitions (a failed rebalance, after which
    /// the consumer unassigns everything); returns the new generation.
    pub fn revoke_all(&mut self) -> u64 {
        self.generation += 1;
        self.all_revoked_at = self.generation;
        self.generation
    }

    /// Whether something of `topic`/`partition` received at generation `received` predates a revocation of that
    /// partition.
    pub fn is_stale(&self, topic: &str, partition: i32, received: u64) -> bool {
        self.all_revoked_at > received
            || self
                .revoked_at
                .get(topic)
                .and_then(|t| t.get(&partition))
                .is_some_and(|&at| at > received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_stale_before_a_revocation() {
        let r = Revocations::default();
        assert_eq!(r.generation(), 0);
        assert!(!r.is_stale("t", 0, 0));
    }

    #[test]
    fn a_revocation_makes_what_was_received_before_it_stale_and_nothing_after() {
        let mut r = Revocations::default();
        let before = r.generation();
        assert_eq!(r.revoke([("t", 0)]), 1);
        assert!(r.is_stale("t", 0, before));
        assert!(
            !r.is_stale("t", 0, r.generation()),
            "received after the revocation"
        );
    }

    #[test]
    fn only_the_revoked_partitions_go_stale() {
        let mut r = Revocations::default();
        r.revoke([("t", 0), ("u", 3)]);
        assert!(r.is_stale("t", 0, 0));
        assert!(r.is_stale("u", 3, 0));
        assert!(!r.is_stale("t", 1, 0), "another partition of the topic");
        assert!(!r.is_stale("u", 0, 0), "the same number in another topic");
        assert!(!r.is_stale("v", 0, 0), "a topic never revoked");
    }

    #[test]
    fn the_latest_revocation_of_a_partition_counts() {
        let mut r = Revocations::default();
        r.revoke([("t", 0)]);
        let between = r.generation();
        r.revoke([("t", 1)]);
        assert!(
            !r.is_stale("t", 0, between),
            "t/0 was not revoked again since"
        );
        r.revoke([("t", 0)]);
        assert!(r.is_stale("t", 0, between));
        assert!(!r.is_stale("t", 1, r.generation()));
        assert_eq!(r.generation(), 3);
    }

    #[test]
    fn losing_the_whole_assignment_stales_everything_received_before() {
        let mut r = Revocations::default();
        r.revoke([("t", 0)]);
        let before = r.generation();
        assert_eq!(r.revoke_all(), 2);
        assert!(r.is_stale("t", 1, before));
        assert!(r.is_stale("never-revoked", 9, before));
        assert!(!r.is_stale("t", 1, r.generation()));
        assert!(!r.is_stale("t", 0, r.generation()));
    }

    #[test]
    fn an_empty_revocation_still_starts_a_generation_but_stales_nothing() {
        let mut r = Revocations::default();
        assert_eq!(r.revoke([]), 1);
        assert!(!r.is_stale("t", 0, 0));
    }
}
