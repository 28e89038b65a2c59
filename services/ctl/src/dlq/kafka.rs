//! Kafka I/O for `cesctl dlq`: reading the dead-letter topic without joining a consumer group, and
//! re-producing dead letters.
//!
//! The reader assigns partitions itself (never `subscribe`, never commits), so inspecting the DLQ neither
//! moves any group's offsets nor triggers a rebalance. It reads each partition from a start offset up to the
//! high watermark fetched when it started, so it terminates even while ingest keeps dead-lettering. Every
//! broker call is bounded by [`TIMEOUT`]: a broker that is down gives an error naming it, never a hang.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::handled::Seen;
use super::letter::{Coord, DeadLetter, Replay};
use crate::kafka::Kafka;

/// Bound on every broker call, and on how long a read may go without progress.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// A reader of one topic, connected: the topic is known to exist.
pub(crate) struct Reader {
    consumer: BaseConsumer,
    brokers: String,
    topic: String,
    partitions: Vec<i32>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Connects through `kafka` and looks `topic` up. Blocking (up to [`TIMEOUT`]).
    pub(crate) fn connect(kafka: &Kafka, topic: &str) -> anyhow::Result<Self> {
        let brokers = kafka.brokers.as_str();
        let consumer: BaseConsumer = kafka
            .config(&[
                // librdkafka needs a group id to create a consumer; it is never joined (no subscribe) and nothing
                // is committed, so a throwaway name leaves no trace.
                (
                    "group.id",
                    format!("cesctl-dlq-reader-{:016x}", rand::random::<u64>()),
                ),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
                // Stops a partition early when the broker says it is at its end (e.g. the last offsets were
                // transaction markers, so no record ever reaches the high watermark).
                ("enable.partition.eof", "true".into()),
                // A start offset below the low watermark means retention deleted it meanwhile: read what is left.
                ("auto.offset.reset", "earliest".into()),
                ("allow.auto.create.topics", "false".into()),
                ("socket.timeout.ms", TIMEOUT.as_millis().to_string()),
            ])
            .create()
            .context("kafka consumer")?;
        let mut reader = Self {
            consumer,
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            partitions: Vec::new(),
        };
        reader.partitions = reader
            .topic_partitions(topic)?
            .with_context(|| format!("topic {topic} does not exist at {brokers}"))?;
        Ok(reader)
    }

    /// The partitions of the topic, in order.
    pub(crate) fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// The partitions of any `topic` (`None` when it does not exist), to check replay targets.
    pub(crate) fn topic_partitions(&self, topic: &str) -> anyhow::Result<Option<Vec<i32>>> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            // The error's Display already names its code; its source would repeat it.
            .map_err(|e| anyhow::anyhow!("cannot reach Kafka at {}: {e}", self.brokers))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match t.error() {
            None => {}
            Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => return Ok(None),
            Some(e) => bail!("looking up topic {topic} at {}: {e:?}", self.brokers),
        }
        let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        partitions.sort_unstable();
        Ok((!partitions.is_empty()).then_some(partitions))
    }

    /// The watermarks of `partition` as ListOffsets reports them: low..high.
    pub(crate) fn watermarks(&self, partition: i32) -> anyhow::Result<Range<i64>> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(&self.topic, partition, TIMEOUT)
            .with_context(|| {
                format!(
                    "reading the offsets of {} partition {partition} at {}",
                    self.topic, self.brokers
                )
            })?;
        Ok(low..high.max(low))
    }

    /// Reads the offsets `start..end` of each partition in `spans` and hands every record to `visit`, in offset
    /// order within a partition (partitions interleave). Spans lie within the partition's [`Self::watermarks`];
    /// a start that retention deleted meanwhile reads what is left. A partition is done at `end`, or earlier at
    /// the end the broker reports (partition EOF: e.g. the last offsets are transaction markers, which hold no
    /// record). Records at or past `end` are never handed over, so with `end` at the high watermark seen before
    /// the read, a DLQ that keeps growing cannot keep it going. Fails after [`TIMEOUT`] without progress.
    pub(crate) fn read(
        &self,
        spans: &BTreeMap<i32, Range<i64>>,
        mut visit: impl FnMut(DeadLetter),
    ) -> anyhow::Result<()> {
        // What is left to read of each partition: `start` is the next offset wanted.
        let mut pending: BTreeMap<i32, Range<i64>> = spans
            .iter()
            .filter(|(_, span)| !span.is_empty())
            .map(|(&p, span)| (p, span.clone()))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, span) in &pending {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(span.start))?;
        }
        self.consumer.assign(&tpl).context("assigning partitions")?;
        let mut progress = Instant::now();
        let mut last_error = None;
        while !pending.is_empty() {
            if progress.elapsed() > TIMEOUT {
                let stuck: Vec<String> = pending
                    .iter()
                    .map(|(p, span)| format!("{p}:{}", span.start))
                    .collect();
                let why = last_error
                    .map(|e: KafkaError| format!(": {e}"))
                    .unwrap_or_default();
                bail!(
                    "no progress reading {} at {} for {} s (waiting at {}){why}",
                    self.topic,
                    self.brokers,
                    TIMEOUT.as_secs(),
                    stuck.join(", ")
                );
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    let p = m.partition();
                    let Some(span) = pending.get_mut(&p) else {
                        continue;
                    };
                    progress = Instant::now();
                    if span.contains(&m.offset()) {
                        visit(to_letter(&m));
                    }
                    span.start = m.offset() + 1;
                    if span.is_empty() {
                        pending.remove(&p);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    progress = Instant::now();
                    pending.remove(&p);
                }
                // librdkafka retries transient errors itself; remember the last one for the timeout message.
                Some(Err(e)) => last_error = Some(e),
            }
        }
        Ok(())
    }

    /// Every partition's watermarks, low..high: all the topic holds now.
    pub(crate) fn whole_topic(&self) -> anyhow::Result<BTreeMap<i32, Range<i64>>> {
        self.partitions
            .iter()
            .map(|&p| Ok((p, self.watermarks(p)?)))
            .collect()
    }

    /// Reads the dead letters at `coords`, failing with a clear message if any is not there, and says what it
    /// [`Seen`] of each partition.
    ///
    /// Each partition is read from its lowest offset in `coords` to its highest, within its watermarks.
    pub(crate) fn read_at(
        &self,
        coords: &BTreeSet<Coord>,
    ) -> anyhow::Result<(BTreeMap<Coord, DeadLetter>, BTreeMap<i32, Seen>)> {
        // Offsets wanted per partition, first..last + 1 (`coords` is in partition:offset order).
        let mut wanted: BTreeMap<i32, Range<i64>> = BTreeMap::new();
        for c in coords {
            if !self.partitions.contains(&c.partition) {
                return Err(self.no_partition(c.partition));
            }
            wanted.entry(c.partition).or_insert(c.offset..c.offset).end = c.offset + 1;
        }
        let mut held = BTreeMap::new();
        let mut spans = BTreeMap::new();
        for (p, w) in wanted {
            let h = self.watermarks(p)?;
            spans.insert(p, w.start.max(h.start)..w.end.min(h.end));
            held.insert(p, h);
        }
        let mut found = BTreeMap::new();
        let mut seen = seen_of(&spans);
        self.read(&spans, |d| {
            let c = d.coord();
            saw(&mut seen, c);
            if coords.contains(&c) {
                found.insert(c, d);
            }
        })?;
        for c in coords {
            if found.contains_key(c) {
                continue;
            }
            let held = &held[&c.partition];
            if held.contains(&c.offset) {
                // Inside the partition but absent: compacted away, or a transaction marker.
                bail!("no dead letter at {c} (no record at that offset)");
            }
            return Err(self.not_there(*c, held));
        }
        Ok((found, seen))
    }

    /// The error for a coordinate outside what its partition holds (`held`).
    fn not_there(&self, c: Coord, held: &Range<i64>) -> anyhow::Error {
        let topic = &self.topic;
        if held.is_empty() {
            anyhow::anyhow!(
                "no dead letter at {c}; partition {} of {topic} is empty",
                c.partition
            )
        } else {
            anyhow::anyhow!(
                "no dead letter at {c}; partition {} holds offsets {}..={}",
                c.partition,
                held.start,
                held.end - 1
            )
        }
    }

    /// The error for a partition the topic does not have.
    fn no_partition(&self, partition: i32) -> anyhow::Error {
        let ps = &self.partitions;
        anyhow::anyhow!(
            "{} has no partition {partition}; it has partitions {}..={}",
            self.topic,
            ps.first().unwrap_or(&0),
            ps.last().unwrap_or(&0)
        )
    }
}

/// Nothing seen yet of `spans`.
pub(crate) fn seen_of(spans: &BTreeMap<i32, Range<i64>>) -> BTreeMap<i32, Seen> {
    spans
        .iter()
        .map(|(&p, span)| {
            let seen = Seen {
                span: span.clone(),
                records: BTreeSet::new(),
            };
            (p, seen)
        })
        .collect()
}

/// Notes a record read at `c`.
pub(crate) fn saw(seen: &mut BTreeMap<i32, Seen>, c: Coord) {
    if let Some(s) = seen.get_mut(&c.partition) {
        s.records.insert(c.offset);
    }
}

fn to_letter(m: &impl Message) -> DeadLetter {
    DeadLetter {
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: super::headers::read(m.headers()),
    }
}

/// A producer for replays: `acks=all`, and every delivery bounded by [`TIMEOUT`].
pub(crate) fn producer(kafka: &Kafka) -> anyhow::Result<FutureProducer> {
    kafka
        .config(&[
            ("acks", "all".into()),
            // A retried send must not duplicate a replay.
            ("enable.idempotence", "true".into()),
            ("message.timeout.ms", TIMEOUT.as_millis().to_string()),
        ])
        .create()
        .context("kafka producer")
}

/// Where a replayed record landed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivered {
    /// Partition of the source topic.
    pub(crate) partition: i32,
    /// Offset there.
    pub(crate) offset: i64,
}

/// Produces `replay` and waits for the broker's acknowledgement.
pub(crate) async fn produce(
    producer: &FutureProducer,
    brokers: &str,
    replay: &Replay,
) -> anyhow::Result<Delivered> {
    let mut headers = OwnedHeaders::new_with_capacity(replay.headers.len());
    for (key, value) in &replay.headers {
        headers = headers.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    let mut record = FutureRecord::<[u8], [u8]>::to(&replay.topic).headers(headers);
    if let Some(k) = &replay.key {
        record = record.key(k.as_slice());
    }
    if let Some(v) = &replay.value {
        record = record.payload(v.as_slice());
    }
    if let Some(p) = replay.partition {
        record = record.partition(p);
    }
    let delivery = producer
        .send(record, Timeout::After(TIMEOUT))
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("producing to {} at {brokers}", replay.topic))?;
    Ok(Delivered {
        partition: delivery.partition,
        offset: delivery.offset,
    })
}
