//! The handled group on the broker: reading its committed offsets on the DLQ topic, and committing a run's
//! [`Advance`]s.
//!
//! `cesctl` never joins the group: a consumer configured with its id commits explicit offsets for partitions of
//! the DLQ topic without subscribing (librdkafka sends them with no member id, as a "simple" consumer, which the
//! broker accepts for a group nobody is a member of). Ingest only reads the offsets ([`backlog`] here and
//! `ces_ingest_dlq_backlog` there compute the same figure).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::handled::{self, Advance, Seen};
use super::kafka::{Reader, TIMEOUT};
use super::letter::Coord;
use crate::kafka::Kafka;

/// The handled group of one DLQ topic.
pub(crate) struct HandledGroup {
    consumer: BaseConsumer,
    group: String,
    topic: String,
    brokers: String,
}

impl std::fmt::Debug for HandledGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandledGroup")
            .field("group", &self.group)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl HandledGroup {
    /// A client for `group`'s offsets on `topic`, through `kafka`. Joins nothing.
    pub(crate) fn connect(kafka: &Kafka, group: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = kafka
            .config(&[
                ("group.id", group.to_owned()),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
                ("allow.auto.create.topics", "false".into()),
                ("socket.timeout.ms", TIMEOUT.as_millis().to_string()),
            ])
            .create()
            .context("kafka consumer for the handled group")?;
        Ok(Self {
            consumer,
            group: group.to_owned(),
            topic: topic.to_owned(),
            brokers: kafka.brokers.clone(),
        })
    }

    /// The group's committed offset of each of `partitions` (`None`: nothing committed). Blocking.
    pub(crate) fn committed(
        &self,
        partitions: &[i32],
    ) -> anyhow::Result<BTreeMap<i32, Option<i64>>> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self
            .committed_offsets(&tpl)
            .with_context(|| self.what("reading"))?;
        committed
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| {
                e.error().with_context(|| self.what("reading"))?;
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                Ok((e.partition(), offset))
            })
            .collect()
    }

    /// Commits each advance's `to`, except where the group is already there or past it (another run got there
    /// first: a handled offset never moves back). Blocking.
    pub(crate) fn commit(&self, advances: &[Advance]) -> anyhow::Result<()> {
        let moving: Vec<i32> = advances
            .iter()
            .filter(|a| a.to > a.from)
            .map(|a| a.partition)
            .collect();
        if moving.is_empty() {
            return Ok(());
        }
        let now = self.committed(&moving)?;
        let mut tpl = TopicPartitionList::new();
        for a in advances.iter().filter(|a| a.to > a.from) {
            if now.get(&a.partition).copied().flatten() < Some(a.to) {
                tpl.add_partition_offset(&self.topic, a.partition, Offset::Offset(a.to))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .with_context(|| self.what("committing"))
    }

    /// `committed_offsets`, asked again while the broker answers "not coordinator" (or "loading"): it does while
    /// it sets up a group it has not served before, or moves it.
    fn committed_offsets(&self, tpl: &TopicPartitionList) -> KafkaResult<TopicPartitionList> {
        let mut wait = Duration::from_millis(50);
        // Five tries 50 ms apart and doubling (1.5 s in all), then the last one's answer stands.
        for _ in 0..5 {
            match self.consumer.committed_offsets(tpl.clone(), TIMEOUT) {
                Err(e) if coordinator_moving(&e) => std::thread::sleep(wait),
                result => return result,
            }
            wait *= 2;
        }
        self.consumer.committed_offsets(tpl.clone(), TIMEOUT)
    }

    fn what(&self, doing: &str) -> String {
        format!(
            "{doing} the offsets of group {} on {} at {}",
            self.group, self.topic, self.brokers
        )
    }
}

fn coordinator_moving(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::CoordinatorLoadInProgress
        )
    )
}

/// Dead letters of one partition not yet handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Backlog {
    pub(crate) partition: i32,
    /// The handled group's committed offset, if any.
    pub(crate) committed: Option<i64>,
    /// The high watermark.
    pub(crate) high: i64,
    /// Dead letters from the committed offset (or the low watermark) to the high watermark.
    pub(crate) backlog: i64,
}

/// The backlog of every partition of `reader`'s topic. Blocking.
pub(crate) fn backlog(reader: &Reader, group: &HandledGroup) -> anyhow::Result<Vec<Backlog>> {
    let committed = group.committed(reader.partitions())?;
    reader
        .partitions()
        .iter()
        .map(|&partition| {
            let held = reader.watermarks(partition)?;
            let committed = committed.get(&partition).copied().flatten();
            Ok(Backlog {
                partition,
                committed,
                high: held.end,
                backlog: ces_protocol::dlq::backlog(held.start, held.end, committed),
            })
        })
        .collect()
}

/// What a run did to the handled group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Marked {
    /// The handled group.
    pub(crate) group: String,
    /// Whether the advances were committed (not with `--dry-run`).
    pub(crate) committed: bool,
    /// One per partition where the run handled something.
    pub(crate) partitions: Vec<Advance>,
}

/// Marks `handled` as handled in `group`: moves each partition's committed offset over the contiguous run of
/// records from it that this run handled ([`handled::advances`], from what it `seen`), and commits that unless
/// `dry_run`. Blocking.
pub(crate) fn mark(
    reader: &Reader,
    group: &HandledGroup,
    seen: &BTreeMap<i32, Seen>,
    handled: &std::collections::BTreeSet<Coord>,
    dry_run: bool,
) -> anyhow::Result<Marked> {
    let mut partitions: Vec<i32> = handled.iter().map(|c| c.partition).collect();
    partitions.dedup();
    let mut starts = BTreeMap::new();
    if !partitions.is_empty() {
        let committed = group.committed(&partitions)?;
        for p in partitions {
            let low = reader.watermarks(p)?.start;
            let committed = committed.get(&p).copied().flatten();
            starts.insert(p, ces_protocol::dlq::first_unhandled(low, committed));
        }
    }
    let advances = handled::advances(&starts, seen, handled);
    if !dry_run {
        group.commit(&advances)?;
    }
    Ok(Marked {
        group: group.group.clone(),
        committed: !dry_run,
        partitions: advances,
    })
}

/// [`mark`] through fresh clients of `topic` and `group`, off the async runtime.
pub(crate) async fn mark_handled(
    kafka: Kafka,
    topic: String,
    group: String,
    seen: BTreeMap<i32, Seen>,
    handled: std::collections::BTreeSet<Coord>,
    dry_run: bool,
) -> anyhow::Result<Marked> {
    super::blocking(move || {
        let reader = Reader::connect(&kafka, &topic)?;
        let group = HandledGroup::connect(&kafka, &group, &topic)?;
        mark(&reader, &group, &seen, &handled, dry_run)
    })
    .await
}

impl Marked {
    /// The text form: one line per partition whose handled offset moved, or would move.
    pub(crate) fn write(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let verb = if self.committed {
            "handled"
        } else {
            "would be handled"
        };
        if self.partitions.is_empty() {
            return writeln!(out, "group {}: nothing newly handled", self.group);
        }
        for a in &self.partitions {
            write!(
                out,
                "group {}: partition {} {verb} up to offset {} (was {})",
                self.group, a.partition, a.to, a.from
            )?;
            if a.behind > 0 {
                write!(
                    out,
                    "; {} more wait behind the unhandled dead letter at {}:{}",
                    a.behind, a.partition, a.to
                )?;
            }
            writeln!(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_how_far_each_partition_moved_and_what_waits() {
        let marked = |committed, partitions| Marked {
            group: "ces-dlq-handled".into(),
            committed,
            partitions,
        };
        let text = |m: &Marked| {
            let mut out = Vec::new();
            m.write(&mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let moved = vec![
            Advance {
                partition: 0,
                from: 2,
                to: 5,
                behind: 0,
            },
            Advance {
                partition: 1,
                from: 0,
                to: 0,
                behind: 3,
            },
        ];
        assert_eq!(
            text(&marked(true, moved.clone())),
            "group ces-dlq-handled: partition 0 handled up to offset 5 (was 2)\n\
             group ces-dlq-handled: partition 1 handled up to offset 0 (was 0); 3 more wait behind the unhandled \
             dead letter at 1:0\n"
        );
        assert!(
            text(&marked(false, moved)).contains("partition 0 would be handled up to offset 5")
        );
        assert_eq!(
            text(&marked(true, Vec::new())),
            "group ces-dlq-handled: nothing newly handled\n"
        );
    }
}
