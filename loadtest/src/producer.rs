//! The Kafka side of a run: JSON records keyed by session id, spread round-robin over the sessions, each with a
//! per-session counter `n` and the producer's clock `t` in its data. Runs on its own thread so pacing never
//! competes with the socket tasks' scheduler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};

/// What the broker acknowledged, per session.
#[derive(Debug)]
pub struct Produced {
    /// Records the broker acknowledged, by session index.
    pub acked: Vec<AtomicU64>,
    /// Records the broker refused for good.
    pub errors: AtomicU64,
    /// Records handed to the producer.
    pub sent: AtomicU64,
}

impl Produced {
    /// Counters for `sessions` sessions.
    pub fn new(sessions: usize) -> Self {
        Self {
            acked: (0..sessions).map(|_| AtomicU64::new(0)).collect(),
            errors: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    /// Records acknowledged in all.
    pub fn acked_total(&self) -> u64 {
        self.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }
}

struct Ctx(Arc<Produced>);

impl rdkafka::ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, session: Self::DeliveryOpaque) {
        match result {
            Ok(_) => self.0.acked[*session].fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// What to produce.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Topic.
    pub topic: String,
    /// Session ids; record `i` goes to session `i % len` with `n = i / len + 1`.
    pub sessions: Arc<[String]>,
    /// Records per second; 0 is flat out.
    pub rate: u64,
    /// Stop after this long...
    pub duration: Duration,
    /// ...or after this many records.
    pub limit: Option<u64>,
    /// Padding bytes in each record's data.
    pub payload: usize,
}

/// Produces per `plan` until its duration or limit, or until `stop`; then waits (up to 30 s) for every
/// acknowledgement.
pub fn run(plan: &Plan, stats: &Arc<Produced>, stop: &AtomicBool) -> anyhow::Result<()> {
    let producer: ThreadedProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", &plan.brokers)
        // A millisecond of batching: throughput without adding more than that to the measured latency.
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("acks", "all")
        .create_with_context(Ctx(stats.clone()))
        .context("create the Kafka producer")?;
    let pad = "x".repeat(plan.payload);
    let sessions = plan.sessions.len() as u64;
    let start = Instant::now();
    let mut i = 0u64;
    let mut value = String::with_capacity(160 + plan.payload);
    'run: while start.elapsed() < plan.duration && plan.limit.is_none_or(|l| i < l) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = if plan.rate == 0 {
            i + 1000
        } else {
            (start.elapsed().as_secs_f64() * plan.rate as f64) as u64
        };
        let due = plan.limit.map_or(due, |l| due.min(l));
        while i < due {
            let idx = (i % sessions) as usize;
            let n = i / sessions + 1;
            let session = &plan.sessions[idx];
            value.clear();
            use std::fmt::Write as _;
            let _ = write!(
                value,
                r#"{{"session_id":"{session}","type":"load.tick","data":{{"n":{n},"t":{},"p":"{pad}"}}}}"#,
                crate::now_micros()
            );
            let mut record = BaseRecord::with_opaque_to(&plan.topic, Box::new(idx))
                .key(session.as_str())
                .payload(value.as_str());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                        if start.elapsed() > plan.duration + Duration::from_secs(30) {
                            break 'run;
                        }
                    }
                    Err((e, _)) => return Err(e).context("produce"),
                }
            }
            i += 1;
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        if plan.rate != 0 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .context("wait for the broker's acknowledgements")?;
    Ok(())
}
