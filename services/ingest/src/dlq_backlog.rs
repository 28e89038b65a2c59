//! The DLQ backlog: dead letters nobody has handled yet, per partition of the DLQ topic, exported as
//! `ces_ingest_dlq_backlog{partition}`.
//!
//! Handled means replayed or dismissed by `cesctl`, which commits the handled prefix of each partition as the
//! offsets of a consumer group of its own (`CES_DLQ_HANDLED_GROUP`). Every `CES_DLQ_BACKLOG_INTERVAL_MS` a task
//! reads the topic's watermarks and that group's committed offsets with a consumer configured with the group id
//! that never subscribes (so it never joins the group or moves its offsets), and sets the gauge to high watermark
//! − committed offset ([`ces_protocol::dlq::backlog`]). It runs beside the pipeline, its Kafka calls on a blocking
//! thread: a failed or slow reading is logged and counted, and never holds up a record. Every replica exports the
//! same figure, so dashboards and alerts take `max by (partition)`.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics as m;
use crate::{Config, Error};

/// Bound on each broker call of a reading; a reading never waits longer than a few of these.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One partition's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backlog {
    partition: i32,
    records: i64,
}

/// Reads the backlog every `config.dlq_backlog_interval` until `cancel`, the first time at once.
pub(crate) async fn run(config: Config, cancel: CancellationToken) {
    let consumer = match reader(&config) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            warn!(error = %e, "cannot create the DLQ backlog reader; ces_ingest_dlq_backlog is not exported");
            ::metrics::counter!(m::DLQ_BACKLOG_ERRORS).increment(1);
            return;
        }
    };
    let topic = config.dlq_topic;
    let mut every = tokio::time::interval(config.dlq_backlog_interval);
    // A reading slower than the interval delays the next one rather than starting a burst of them.
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let (consumer, t) = (consumer.clone(), topic.clone());
        let reading = tokio::select! {
            () = cancel.cancelled() => return,
            r = tokio::task::spawn_blocking(move || read(&consumer, &t)) => r,
        };
        match reading {
            Ok(Ok(backlogs)) => {
                for b in backlogs {
                    ::metrics::gauge!(m::DLQ_BACKLOG, "partition" => b.partition.to_string())
                        .set(b.records as f64);
                }
            }
            Ok(Err(e)) => {
                warn!(topic, error = %e, "reading the DLQ backlog failed; trying again at the next interval");
                ::metrics::counter!(m::DLQ_BACKLOG_ERRORS).increment(1);
            }
            Err(e) => {
                warn!(topic, error = %e, "the DLQ backlog reading task failed");
                ::metrics::counter!(m::DLQ_BACKLOG_ERRORS).increment(1);
            }
        }
    }
}

/// A consumer with the handled group's id that never subscribes: it reads the group's committed offsets and the
/// topic's watermarks, joins nothing and commits nothing.
fn reader(config: &Config) -> Result<BaseConsumer, Error> {
    Ok(crate::kafka::client_config(
        config,
        &[
            ("group.id", config.dlq_handled_group.clone()),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            // Looking the DLQ topic up must never create it (ingest creates it with its own settings).
            ("allow.auto.create.topics", "false".into()),
        ],
    )
    .create()?)
}

/// One reading of every partition of `topic`; none while the topic does not exist yet. Blocking.
fn read(consumer: &BaseConsumer, topic: &str) -> Result<Vec<Backlog>, Error> {
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let Some(t) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error() != Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART))
    else {
        debug!(topic, "no DLQ topic yet; no backlog to read");
        return Ok(Vec::new());
    };
    let mut partitions = TopicPartitionList::new();
    for p in t.partitions() {
        partitions.add_partition(topic, p.id());
    }
    let committed = committed_offsets(consumer, &partitions)?;
    committed
        .elements_for_topic(topic)
        .iter()
        .map(|e| {
            e.error()?;
            let (low, high) = consumer.fetch_watermarks(topic, e.partition(), TIMEOUT)?;
            let committed = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            Ok(Backlog {
                partition: e.partition(),
                records: ces_protocol::dlq::backlog(low, high, committed),
            })
        })
        .collect()
}

/// The handled group's committed offsets of `partitions`. The broker answers "not coordinator" (or "loading")
/// while it sets up a group it has not served before, or moves it: asked again shortly, it answers.
fn committed_offsets(
    consumer: &BaseConsumer,
    partitions: &TopicPartitionList,
) -> KafkaResult<TopicPartitionList> {
    let mut wait = Duration::from_millis(50);
    for _ in 0..COORDINATOR_TRIES {
        match consumer.committed_offsets(partitions.clone(), TIMEOUT) {
            Err(e) if coordinator_moving(&e) => std::thread::sleep(wait),
            result => return result,
        }
        wait *= 2;
    }
    consumer.committed_offsets(partitions.clone(), TIMEOUT)
}

/// Tries before the last one, 50 ms apart and doubling: 1.5 s in all.
const COORDINATOR_TRIES: usize = 5;

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
