//! Kafka helpers for tests: create topics, produce records, read a topic to its end.
//!
//! Reading to the end uses `enable.partition.eof`: the reader stops once every partition reported its end and
//! enough records arrived.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};

/// A record to produce.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` produces a tombstone.
    pub value: Option<Vec<u8>>,
    /// Explicit partition, or `None` to partition by key.
    pub partition: Option<i32>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// A record keyed by `key` with a text value.
    pub fn keyed(key: &str, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.into()),
            ..Self::default()
        }
    }
}

/// Creates topics (name, partitions); existing ones are left alone.
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic {topic}: {code}"),
        }
    }
    // The controller answers once a topic is created; the broker's metadata may lag behind it by a moment, and a
    // client that looks in that moment finds no topic.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("metadata client")?;
    let names: Vec<String> = topics.iter().map(|(name, _)| (*name).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let known = consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|m| {
                    names.iter().all(|name| {
                        m.topics().iter().any(|t| {
                            t.name() == name && t.error().is_none() && !t.partitions().is_empty()
                        })
                    })
                })
                .unwrap_or(false);
            if known {
                return Ok(());
            }
            if std::time::Instant::now() > until {
                bail!("topics {names:?} not in the broker's metadata 10 s after creation");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await?
}

/// Sets topic-level configuration (`max.message.bytes`, ...) on an existing topic.
pub async fn set_topic_config(
    bootstrap: &str,
    topic: &str,
    entries: &[(&str, &str)],
) -> anyhow::Result<()> {
    use rdkafka::admin::{AlterConfig, ResourceSpecifier};
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("admin client")?;
    let mut change = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in entries {
        change = change.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.alter_configs(&[change], &opts).await? {
        if let Err((resource, code)) = result {
            bail!("configuring {resource:?}: {code}");
        }
    }
    Ok(())
}

/// A producer that waits for every acknowledgement.
pub fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()?)
}

/// Like [`producer`], but for records up to `max_bytes` uncompressed (librdkafka refuses a record larger than its
/// `message.max.bytes`, 1,000,000 by default, before compressing it, while the broker's limit applies to the
/// compressed batch), compressed with `compression` (`none`, `lz4`, ...).
pub fn large_producer(
    bootstrap: &str,
    max_bytes: usize,
    compression: &str,
) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", compression)
        .set("message.max.bytes", max_bytes.to_string())
        .create()?)
}

/// True when the broker at `bootstrap` answers a metadata request that lists at least one broker.
///
/// A fresh client per call on purpose: a client that first found the port closed backs off its reconnects (up to
/// librdkafka's `reconnect.backoff.max.ms`, 10 s), which would hide a broker that came up meanwhile.
pub async fn broker_answers(bootstrap: &str) -> bool {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        let Ok(consumer) = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("log_level", "0")
            .create::<BaseConsumer>()
        else {
            return false;
        };
        consumer
            .fetch_metadata(None, Duration::from_millis(500))
            .is_ok_and(|m| !m.brokers().is_empty())
    })
    .await
    .unwrap_or(false)
}

/// Produces `records` to `topic` and waits until all are acknowledged.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: &[Record],
) -> anyhow::Result<()> {
    let sends = records.iter().map(|r| {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        let mut rec = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        producer.send(rec, Timeout::After(Duration::from_secs(30)))
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e).context("produce")?;
    }
    Ok(())
}

/// Reads every record of `topic` from the beginning until each partition reported its end and at least
/// `at_least` records arrived, or `timeout` passes (then returns what it has).
pub async fn read_to_end(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_blocking(&bootstrap, &topic, at_least, timeout))
        .await?
}

fn read_blocking(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", crate::unique("reader"))
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} has no partitions");
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut at_end: HashSet<i32> = HashSet::new();
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                out.push(m.detach());
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => tracing::debug!(error = %e, "reader error"),
        }
        if at_end.len() == partitions.len() && out.len() >= at_least {
            break;
        }
    }
    Ok(out)
}

/// Rewinds consumer group `group` to offset 0 on every partition of `topic`, as if it had never committed.
/// The group must have no active member.
pub async fn rewind_group(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<()> {
    let (bootstrap, group, topic) = (bootstrap.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::Offset(0))?;
            }
        }
        consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)?;
        Ok(())
    })
    .await?
}

/// Members of consumer group `group` (as the broker describes it).
pub async fn group_members(bootstrap: &str, group: &str) -> anyhow::Result<usize> {
    let (bootstrap, group) = (bootstrap.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()?;
        let groups = consumer.fetch_group_list(Some(&group), Duration::from_secs(10))?;
        Ok(groups.groups().iter().map(|g| g.members().len()).sum())
    })
    .await?
}

/// The value of header `name` as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers as _;
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A record's value bytes.
pub fn value(m: &OwnedMessage) -> Option<&[u8]> {
    m.payload()
}

/// How many partitions `topic` has, or `None` if the broker does not know it.
pub async fn partitions(bootstrap: &str, topic: &str) -> anyhow::Result<Option<usize>> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(5))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|n| *n > 0))
    })
    .await?
}

/// The record batches in the bytes of a Kafka log segment: `(base offset, record count)` of each.
///
/// A batch (message format v2) starts with its base offset (i64) and the length of the rest (i32); its record
/// count is the i32 at byte 57 of the batch. All big-endian.
pub fn record_batches(segment: &[u8]) -> anyhow::Result<Vec<(i64, u32)>> {
    const COUNT_AT: usize = 57;
    let mut batches = Vec::new();
    let mut at = 0;
    while at + 12 <= segment.len() {
        let be = |from: usize, n: usize| -> anyhow::Result<&[u8]> {
            segment
                .get(from..from + n)
                .with_context(|| format!("segment truncated in the batch at byte {at}"))
        };
        let base = i64::from_be_bytes(be(at, 8)?.try_into()?);
        let length = usize::try_from(i32::from_be_bytes(be(at + 8, 4)?.try_into()?))?;
        // A segment file may end in preallocated zeros.
        if length == 0 {
            break;
        }
        let count = u32::from_be_bytes(be(at + COUNT_AT, 4)?.try_into()?);
        batches.push((base, count));
        at += 12 + length;
    }
    Ok(batches)
}
