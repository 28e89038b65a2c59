//! The raw limit of latency on this machine: a bare librdkafka consumer reading the same kind of records the
//! load generator produces, from the same broker, with nothing of CES in between. What CES adds to producer →
//! client latency is the `throughput` figure minus this one.
//!
//! [`settings`] asks the broker for what its configuration set, so every report says what it measured against.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, ConfigEntry, ConfigSource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::stats::Recorder;

/// What the consumer saw, so far.
#[derive(Debug, Default)]
pub struct Consumed {
    /// Records read.
    pub records: AtomicU64,
    /// Records whose payload carried no producer clock.
    pub unparsed: AtomicU64,
}

/// How the consumer fetches: librdkafka's `fetch.wait.max.ms` and `fetch.min.bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Fetch {
    /// `fetch.wait.max.ms`.
    pub wait_ms: u64,
    /// `fetch.min.bytes`.
    pub min_bytes: u64,
}

/// A consumer of every partition of `topic`, positioned at each partition's end as of now, so it reads exactly
/// what is produced after this returns.
pub fn subscribe(brokers: &str, topic: &str, fetch: Fetch) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "ces-loadtest-broker")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch.wait_ms.to_string())
        .set("fetch.min.bytes", fetch.min_bytes.to_string())
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .context("create the Kafka consumer")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .with_context(|| format!("end offset of {topic}/{p}"))?;
        assignment.add_partition_offset(topic, p, Offset::Offset(high))?;
    }
    consumer
        .assign(&assignment)
        .context("assign the partitions")?;
    Ok(consumer)
}

/// Reads until `stop`, recording each record's latency from the producer clock `data.t` (µs) to now.
pub fn consume(
    consumer: &BaseConsumer,
    recorder: &Recorder,
    consumed: &Consumed,
    stop: &AtomicBool,
) {
    #[derive(serde::Deserialize)]
    struct Record {
        data: Data,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        t: u64,
    }
    let mut samples = Vec::with_capacity(256);
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(msg)) => {
                consumed.records.fetch_add(1, Ordering::Relaxed);
                let at = Instant::now();
                match msg
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Record>(p).ok())
                {
                    Some(r) => samples.push((at, crate::now_micros().saturating_sub(r.data.t))),
                    None => {
                        consumed.unparsed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if samples.len() >= 256 {
                    recorder.record(&samples);
                    samples.clear();
                }
            }
            Some(Err(e)) => eprintln!("[broker] consumer error: {e}"),
            None => {
                recorder.record(&samples);
                samples.clear();
            }
        }
    }
    recorder.record(&samples);
}

/// The broker a run measured against, in its own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Id of the bootstrap broker, whose configuration `config` is.
    pub id: i32,
    /// Brokers in the cluster's metadata.
    pub nodes: usize,
    /// What the broker's `server.properties` or dynamic configuration set: see [`set_entries`].
    pub config: BTreeMap<String, String>,
}

/// Asks the bootstrap broker of `brokers` for its metadata (its id, the cluster's broker count) and, with the
/// admin API's DescribeConfigs on that broker, for its settings, keeping those [`set_entries`] keeps. Each of the
/// two requests waits at most `timeout`. Blocking: call it from `spawn_blocking`.
pub fn settings(brokers: &str, timeout: Duration) -> anyhow::Result<Settings> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("create the Kafka admin client")?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .with_context(|| format!("metadata from {brokers}"))?;
    let listed: Vec<(i32, String, i32)> = metadata
        .brokers()
        .iter()
        .map(|b| (b.id(), b.host().to_owned(), b.port()))
        .collect();
    let id = bootstrap_id(metadata.orig_broker_id(), &listed, brokers)
        .with_context(|| format!("no broker id in the metadata from {brokers}"))?;
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let results = futures::executor::block_on(
        admin.describe_configs(&[ResourceSpecifier::Broker(id)], &opts),
    )
    .with_context(|| format!("describe the configuration of broker {id}"))?;
    let resource = results
        .into_iter()
        .next()
        .with_context(|| format!("no configuration returned for broker {id}"))?
        .map_err(|code| anyhow::anyhow!("configuration of broker {id}: {code}"))?;
    Ok(Settings {
        id,
        nodes: metadata.brokers().len(),
        config: set_entries(&resource.entries),
    })
}

/// The id of the broker that answered the metadata request: librdkafka's originating broker id, which is -1 when
/// the answer came over the bootstrap connection before the broker was known by id; then the listed broker
/// (`(id, host, port)`) at the first bootstrap address, or the only one listed.
fn bootstrap_id(orig: i32, listed: &[(i32, String, i32)], bootstrap: &str) -> Option<i32> {
    if orig >= 0 {
        return Some(orig);
    }
    let first = bootstrap.split(',').next().unwrap_or_default().trim();
    listed
        .iter()
        .find(|(_, host, port)| format!("{host}:{port}") == first)
        .or(match listed {
            [only] => Some(only),
            _ => None,
        })
        .map(|b| b.0)
}

/// The entries a broker's own configuration set (`server.properties`, dynamic broker config), by name: every one
/// whose source is not Kafka's built-in default, except sensitive ones (whose values the broker withholds
/// anyway) and those without a value.
pub fn set_entries<'a>(
    entries: impl IntoIterator<Item = &'a ConfigEntry>,
) -> BTreeMap<String, String> {
    entries
        .into_iter()
        .filter(|e| e.source != ConfigSource::Default && !e.is_sensitive)
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

/// A consumer running on a thread of its own.
#[derive(Debug)]
pub struct Running {
    /// Its counts, updated as it reads.
    pub consumed: Arc<Consumed>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

/// Runs [`consume`] on a thread of its own until [`Running::stop`].
pub fn spawn(consumer: BaseConsumer, recorder: Arc<Recorder>) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let consumed = Arc::new(Consumed::default());
    let handle = {
        let (stop, consumed) = (stop.clone(), consumed.clone());
        std::thread::spawn(move || consume(&consumer, &recorder, &consumed, &stop))
    };
    Running {
        consumed,
        stop,
        handle,
    }
}

impl Running {
    /// Stops the consumer and waits for its thread.
    pub fn stop(self) -> anyhow::Result<Arc<Consumed>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("consumer thread panicked"))?;
        Ok(self.consumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answering_broker_is_found_when_librdkafka_names_none() {
        let one = [(1, "127.0.0.1".to_owned(), 19092)];
        assert_eq!(bootstrap_id(3, &one, "x:1"), Some(3));
        assert_eq!(
            bootstrap_id(-1, &one, "localhost:19092"),
            Some(1),
            "the only one"
        );
        let two = [
            (1, "127.0.0.1".to_owned(), 19092),
            (2, "127.0.0.1".to_owned(), 19094),
        ];
        assert_eq!(
            bootstrap_id(-1, &two, "127.0.0.1:19094,127.0.0.1:19092"),
            Some(2)
        );
        assert_eq!(bootstrap_id(-1, &two, "localhost:19092"), None);
        assert_eq!(bootstrap_id(-1, &[], "127.0.0.1:19092"), None);
    }

    fn entry(
        name: &str,
        value: Option<&str>,
        source: ConfigSource,
        sensitive: bool,
    ) -> ConfigEntry {
        ConfigEntry {
            name: name.to_owned(),
            value: value.map(str::to_owned),
            is_default: source == ConfigSource::Default,
            source,
            is_read_only: false,
            is_sensitive: sensitive,
        }
    }

    #[test]
    fn a_broker_that_does_not_answer_is_an_error_within_the_timeout() {
        let started = Instant::now();
        let err = settings("127.0.0.1:1", Duration::from_millis(500)).unwrap_err();
        assert!(
            format!("{err:#}").contains("metadata from 127.0.0.1:1"),
            "{err:#}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn keeps_what_the_broker_configuration_set_and_nothing_secret() {
        let entries = [
            entry(
                "num.partitions",
                Some("1"),
                ConfigSource::StaticBroker,
                false,
            ),
            entry(
                "log.retention.ms",
                Some("60000"),
                ConfigSource::DynamicBroker,
                false,
            ),
            entry(
                "log.cleaner.threads",
                Some("2"),
                ConfigSource::DynamicDefaultBroker,
                false,
            ),
            entry(
                "message.max.bytes",
                Some("1048588"),
                ConfigSource::Unknown,
                false,
            ),
            entry("num.io.threads", Some("8"), ConfigSource::Default, false),
            entry("ssl.key.password", None, ConfigSource::StaticBroker, true),
            entry(
                "sasl.secret",
                Some("hunter2"),
                ConfigSource::DynamicBroker,
                true,
            ),
            entry("log.dir", None, ConfigSource::StaticBroker, false),
        ];
        let kept = set_entries(&entries);
        let expected: BTreeMap<String, String> = [
            ("log.cleaner.threads", "2"),
            ("log.retention.ms", "60000"),
            ("message.max.bytes", "1048588"),
            ("num.partitions", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(kept, expected);
        assert!(set_entries(&[]).is_empty());
    }
}
