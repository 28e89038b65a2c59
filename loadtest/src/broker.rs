//! The raw limit of latency on this machine: a bare librdkafka consumer reading the same kind of records the
//! load generator produces, from the same broker, with nothing of CES in between. What CES adds to producer →
//! client latency is the `throughput` figure minus this one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::Message as _;
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

/// A consumer of every partition of `topic`, positioned at each partition's end as of now, so it reads exactly
/// what is produced after this returns.
pub fn subscribe(brokers: &str, topic: &str, fetch_wait_ms: u64) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "ces-loadtest-broker")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
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
