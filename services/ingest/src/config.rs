//! Ingest configuration, read once from `CES_*` variables (see docs/configuration.md).

use std::net::SocketAddr;
use std::time::Duration;

use ces_shared::config::{Common, Source, Vars};
use ces_shared::record::DEFAULT_MAX_RECORD_BYTES;

/// Everything ingest needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Kafka bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Input topics.
    pub topics: Vec<String>,
    /// Consumer group id.
    pub group: String,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// Where a new consumer group starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// Largest accepted record value in bytes; larger ones are dead-lettered as `too_large`.
    pub max_record_bytes: usize,
    /// Most records handled in one batch.
    pub batch_max: usize,
    /// How long a batch waits for more records after its first one.
    pub batch_linger: Duration,
    /// Bounds of the per-session buffer, dedup window and state.
    pub limits: crate::publisher::Limits,
    /// Address of the health and metrics endpoint.
    pub http_addr: SocketAddr,
    /// Redis and logging.
    pub common: Common,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ces_shared::Error> {
        Self::from_source(&ces_shared::config::Env)
    }

    /// Reads any [`Source`]; every invalid variable is reported, none falls back to its default.
    pub fn from_source(source: &dyn Source) -> Result<Self, ces_shared::Error> {
        let mut v = Vars::new(source);
        let brokers = v.string("CES_KAFKA_BROKERS", "127.0.0.1:9092");
        let topics = v.list("CES_KAFKA_TOPICS", &["ces.events"]);
        let group = v.string("CES_KAFKA_GROUP", "ces-ingest");
        let dlq_topic = v.string("CES_DLQ_TOPIC", "ces.events.dlq");
        let auto_offset_reset = v.string("CES_KAFKA_AUTO_OFFSET_RESET", "earliest");
        let max_record_bytes = v.bounded(
            "CES_MAX_RECORD_BYTES",
            DEFAULT_MAX_RECORD_BYTES as u64,
            1024,
            16 << 20,
        );
        let batch_max = v.bounded("CES_BATCH_MAX", 1000, 1, 100_000);
        let batch_linger = v.millis("CES_BATCH_LINGER_MS", 5, 0, 10_000);
        let limits = crate::publisher::Limits {
            buffer_max_events: v.bounded("CES_BUFFER_MAX_EVENTS", 1000, 1, 1_000_000),
            buffer_max_age: Duration::from_secs(v.bounded(
                "CES_BUFFER_MAX_AGE_SECS",
                300,
                1,
                7 * 86_400,
            )),
            dedup_window: Duration::from_secs(v.bounded(
                "CES_DEDUP_WINDOW_SECS",
                3600,
                1,
                7 * 86_400,
            )),
            state_ttl: Duration::from_secs(v.bounded(
                "CES_SESSION_STATE_TTL_SECS",
                86_400,
                60,
                90 * 86_400,
            )),
        };
        let http_addr = v.socket_addr("CES_INGEST_HTTP_ADDR", "127.0.0.1:8090");
        let common = Common::read(&mut v);
        v.check(limits.state_ttl >= limits.buffer_max_age, || {
            "CES_SESSION_STATE_TTL_SECS must be at least CES_BUFFER_MAX_AGE_SECS: the buffer cannot outlive its epoch"
                .into()
        });

        v.check(!topics.is_empty(), || {
            "CES_KAFKA_TOPICS names no topic".into()
        });
        v.check(!topics.contains(&dlq_topic), || {
            format!("CES_DLQ_TOPIC={dlq_topic:?} is also an input topic; dead letters would be consumed again")
        });
        v.check(
            matches!(auto_offset_reset.as_str(), "earliest" | "latest"),
            || {
                format!(
                    "CES_KAFKA_AUTO_OFFSET_RESET={auto_offset_reset:?} must be earliest or latest"
                )
            },
        );
        v.finish()?;
        Ok(Self {
            brokers,
            topics,
            group,
            dlq_topic,
            auto_offset_reset,
            max_record_bytes: max_record_bytes as usize,
            batch_max: batch_max as usize,
            batch_linger,
            limits,
            http_addr,
            common,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::from_source(&HashMap::<&'static str, String>::new()).unwrap();
        assert_eq!(c.topics, vec!["ces.events"]);
        assert_eq!(c.dlq_topic, "ces.events.dlq");
        assert_eq!(c.group, "ces-ingest");
        assert_eq!(c.max_record_bytes, 256 * 1024);
    }

    #[test]
    fn reports_every_problem() {
        let src: HashMap<&'static str, String> = [
            ("CES_KAFKA_TOPICS", "a,b"),
            ("CES_DLQ_TOPIC", "b"),
            ("CES_BATCH_MAX", "0"),
            ("CES_KAFKA_AUTO_OFFSET_RESET", "middle"),
            ("CES_REDIS_URL", "localhost"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        let err = Config::from_source(&src).unwrap_err().to_string();
        for needle in [
            "CES_DLQ_TOPIC",
            "CES_BATCH_MAX",
            "CES_KAFKA_AUTO_OFFSET_RESET",
            "CES_REDIS_URL",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }
}
