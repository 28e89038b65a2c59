//! Ingest configuration, read once from `CES_*` variables (see docs/configuration.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ces_protocol::record::{
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_RECORD_BYTES, MAX_RECORD_BYTES_CEILING,
};
use ces_protocol::schema::UnknownTypes;
use ces_runtime::config::{Common, Source, Vars};

use crate::breaker;

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
    /// Create the dead-letter topic at start-up when it does not exist.
    pub dlq_create: bool,
    /// Partitions of a created dead-letter topic.
    pub dlq_partitions: i32,
    /// Replication factor of a created dead-letter topic; -1 is the broker's default.
    pub dlq_replication: i32,
    /// Consumer group whose committed offsets on the DLQ topic mark the dead letters handled (`cesctl dlq replay`
    /// and `dismiss` advance it; ingest only reads it).
    pub dlq_handled_group: String,
    /// How often the DLQ backlog is read for `ces_ingest_dlq_backlog`.
    pub dlq_backlog_interval: Duration,
    /// Directory of `<type>.json` JSON Schemas; `None`: no schemas, only structural checks.
    pub schema_dir: Option<PathBuf>,
    /// What happens to an event whose type has no schema.
    pub unknown_types: UnknownTypes,
    /// Attempts at an event Redis keeps rejecting for an event-specific reason before it is dead-lettered, and
    /// at a dead letter Kafka keeps refusing before it is skipped.
    pub max_attempts: u32,
    /// When the Redis and Kafka circuit breakers open and for how long.
    pub breaker: breaker::Policy,
    /// librdkafka properties passed through from `CES_KAFKA_PROP_*` (TLS, SASL, tuning, `debug`), set on the
    /// consumer, the dead-letter producer and the admin client.
    pub kafka_properties: Vec<(String, String)>,
    /// Bound on one pipelined publish to Redis; past it the attempt counts as a transient failure.
    pub redis_timeout: Duration,
    /// Most kilobytes librdkafka prefetches per partition queue: the memory bound while ingest is busy.
    pub queue_max_kbytes: u64,
    /// How often librdkafka reports statistics (consumer lag, broker states); 0 turns them off.
    pub stats_interval: std::time::Duration,
    /// Where a new consumer group starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// Largest accepted record value in bytes; larger ones are dead-lettered as `too_large`.
    pub max_record_bytes: usize,
    /// Largest accepted record headers in bytes (names and values); larger ones are dead-lettered, without them,
    /// as `invalid_headers`.
    pub max_header_bytes: usize,
    /// Most records handled in one batch.
    pub batch_max: usize,
    /// How long a batch waits for more records after its first one.
    pub batch_linger: Duration,
    /// Least time between two offset commits (zero: after every batch). Each commit is a write on the broker;
    /// fewer of them cost a crash only more redelivery, which event ids deduplicate.
    pub commit_interval: Duration,
    /// Bounds of the per-session buffer, dedup window and state.
    pub limits: crate::publisher::Limits,
    /// Address of the health and metrics endpoint.
    pub http_addr: SocketAddr,
    /// Redis and logging.
    pub common: Common,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ces_runtime::Error> {
        Self::from_source(&ces_runtime::config::Env)
    }

    /// Reads any [`Source`]; every invalid variable is reported, none falls back to its default.
    pub fn from_source(source: &dyn Source) -> Result<Self, ces_runtime::Error> {
        let mut v = Vars::new(source);
        let brokers = v.string("CES_KAFKA_BROKERS", "127.0.0.1:9092");
        let topics = v.list("CES_KAFKA_TOPICS", &["ces.events"]);
        let group = v.string("CES_KAFKA_GROUP", "ces-ingest");
        let dlq_topic = v.string("CES_DLQ_TOPIC", "ces.events.dlq");
        let dlq_create = v.parse("CES_DLQ_CREATE", true);
        let dlq_partitions = v.bounded("CES_DLQ_PARTITIONS", 3, 1, 10_000) as i32;
        let dlq_replication = v.parse("CES_DLQ_REPLICATION", -1i32);
        v.check(
            dlq_replication == -1 || (1..=16).contains(&dlq_replication),
            || {
                format!(
                    "CES_DLQ_REPLICATION={dlq_replication} must be -1 (broker default) or 1..=16"
                )
            },
        );
        let dlq_handled_group = v.string(
            "CES_DLQ_HANDLED_GROUP",
            ces_protocol::dlq::DEFAULT_HANDLED_GROUP,
        );
        v.check(!dlq_handled_group.is_empty(), || {
            "CES_DLQ_HANDLED_GROUP is empty".into()
        });
        v.check(dlq_handled_group != group, || {
            format!("CES_DLQ_HANDLED_GROUP={dlq_handled_group:?} is ingest's own group (CES_KAFKA_GROUP)")
        });
        let dlq_backlog_interval = v.millis("CES_DLQ_BACKLOG_INTERVAL_MS", 15_000, 100, 3_600_000);
        let schema_dir = v.optional("CES_SCHEMA_DIR").map(PathBuf::from);
        let unknown = v.string("CES_UNKNOWN_TYPES", "allow");
        let unknown_types = UnknownTypes::parse(&unknown).unwrap_or_default();
        v.check(UnknownTypes::parse(&unknown).is_some(), || {
            format!("CES_UNKNOWN_TYPES={unknown:?} must be allow or reject")
        });
        let max_attempts = v.bounded("CES_MAX_ATTEMPTS", 5, 1, 100) as u32;
        let breaker = breaker::Policy {
            failures: v.bounded("CES_BREAKER_FAILURES", 5, 1, 1000) as u32,
            open_min: v.millis("CES_BREAKER_OPEN_MS", 1000, 10, 600_000),
            open_max: v.millis("CES_BREAKER_OPEN_MAX_MS", 30_000, 10, 3_600_000),
        };
        v.check(breaker.open_min <= breaker.open_max, || {
            "CES_BREAKER_OPEN_MS must not exceed CES_BREAKER_OPEN_MAX_MS".into()
        });
        let kafka_properties = v.passthrough("CES_KAFKA_PROP_", crate::kafka::RESERVED_PROPERTIES);
        let redis_timeout = v.millis("CES_REDIS_TIMEOUT_MS", 3000, 100, 60_000);
        let queue_max_kbytes = v.bounded("CES_KAFKA_QUEUE_MAX_KBYTES", 16_384, 64, 2_097_151);
        let stats_interval = v.millis("CES_KAFKA_STATS_INTERVAL_MS", 5000, 0, 86_400_000);
        let auto_offset_reset = v.string("CES_KAFKA_AUTO_OFFSET_RESET", "earliest");
        let max_record_bytes: u64 =
            v.parse("CES_MAX_RECORD_BYTES", DEFAULT_MAX_RECORD_BYTES as u64);
        v.check(max_record_bytes >= 1024, || {
            format!("CES_MAX_RECORD_BYTES={max_record_bytes} is less than 1024")
        });
        v.check(max_record_bytes <= MAX_RECORD_BYTES_CEILING as u64, || {
            format!(
                "CES_MAX_RECORD_BYTES={max_record_bytes} is more than {MAX_RECORD_BYTES_CEILING}: the event frame of a \
                 larger record may not fit an edge's 1 MiB socket write buffer, and could never be sent to a client"
            )
        });
        let max_header_bytes = v.bounded(
            "CES_MAX_HEADER_BYTES",
            DEFAULT_MAX_HEADER_BYTES as u64,
            1024,
            1 << 20,
        );
        let batch_max = v.bounded("CES_BATCH_MAX", 1000, 1, 100_000);
        let batch_linger = v.millis("CES_BATCH_LINGER_MS", 5, 0, 10_000);
        let commit_interval = v.millis("CES_COMMIT_INTERVAL_MS", 100, 0, 60_000);
        let mut limits = crate::publisher::Limits {
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
            durable_restarts: false,
        };
        let http_addr = v.socket_addr("CES_INGEST_HTTP_ADDR", "127.0.0.1:8090");
        let common = Common::read(&mut v);
        limits.durable_restarts = common.redis_durable_restarts;
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
            dlq_create,
            dlq_partitions,
            dlq_replication,
            dlq_handled_group,
            dlq_backlog_interval,
            schema_dir,
            unknown_types,
            max_attempts,
            breaker,
            kafka_properties,
            redis_timeout,
            queue_max_kbytes,
            stats_interval,
            auto_offset_reset,
            max_record_bytes: max_record_bytes as usize,
            max_header_bytes: max_header_bytes as usize,
            batch_max: batch_max as usize,
            batch_linger,
            commit_interval,
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
        assert_eq!(c.dlq_handled_group, "ces-dlq-handled");
        assert_eq!(c.dlq_backlog_interval, Duration::from_secs(15));
        assert_eq!(c.max_record_bytes, 256 * 1024);
        assert_eq!(c.max_header_bytes, 64 * 1024);
        assert_eq!(c.batch_linger, Duration::from_millis(5));
        assert_eq!(c.commit_interval, Duration::from_millis(100));
    }

    #[test]
    fn limits_accept_their_bounds_and_nothing_past_them() {
        let with = |pairs: &[(&'static str, &str)]| {
            let src: HashMap<&'static str, String> =
                pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            Config::from_source(&src)
        };
        let week = ("604800", "604801");
        for key in ["CES_BUFFER_MAX_AGE_SECS", "CES_DEDUP_WINDOW_SECS"] {
            let ok = with(&[(key, week.0), ("CES_SESSION_STATE_TTL_SECS", "604800")]);
            assert!(ok.is_ok(), "{key}: {ok:?}");
            assert!(
                with(&[(key, week.1), ("CES_SESSION_STATE_TTL_SECS", "604800")]).is_err(),
                "{key}"
            );
        }
        let c = with(&[("CES_SESSION_STATE_TTL_SECS", "7776000")]).unwrap();
        assert_eq!(c.limits.state_ttl, Duration::from_secs(90 * 86_400));
        assert!(with(&[("CES_SESSION_STATE_TTL_SECS", "7776001")]).is_err());
        assert_eq!(with(&[]).unwrap().dlq_replication, -1);
        let c = with(&[("CES_DLQ_BACKLOG_INTERVAL_MS", "100")]).unwrap();
        assert_eq!(c.dlq_backlog_interval, Duration::from_millis(100));
        assert!(with(&[("CES_DLQ_BACKLOG_INTERVAL_MS", "99")]).is_err());
        // Ingest's own group would have its offsets moved by cesctl.
        let same = with(&[("CES_KAFKA_GROUP", "g"), ("CES_DLQ_HANDLED_GROUP", "g")]);
        assert!(
            same.unwrap_err()
                .to_string()
                .contains("CES_DLQ_HANDLED_GROUP")
        );
    }

    #[test]
    fn kafka_properties_pass_through() {
        let src: HashMap<&'static str, String> = [
            ("CES_KAFKA_PROP_SECURITY_PROTOCOL", "sasl_ssl"),
            ("CES_KAFKA_PROP_SASL_MECHANISMS", "SCRAM-SHA-512"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        let c = Config::from_source(&src).unwrap();
        assert_eq!(
            c.kafka_properties,
            [
                ("sasl.mechanisms".to_owned(), "SCRAM-SHA-512".to_owned()),
                ("security.protocol".to_owned(), "sasl_ssl".to_owned()),
            ]
        );
    }

    #[test]
    fn a_record_limit_past_what_an_edge_can_send_is_refused_at_start() {
        let with = |v: usize| {
            let src: HashMap<&'static str, String> = [("CES_MAX_RECORD_BYTES", v.to_string())]
                .into_iter()
                .collect();
            Config::from_source(&src)
        };
        assert_eq!(
            with(MAX_RECORD_BYTES_CEILING).unwrap().max_record_bytes,
            1_031_426
        );
        let err = with(MAX_RECORD_BYTES_CEILING + 1).unwrap_err().to_string();
        assert!(
            err.contains("CES_MAX_RECORD_BYTES=1031427 is more than 1031426: the event frame"),
            "{err}"
        );
        let err = with(16 << 20).unwrap_err().to_string();
        assert!(err.contains("1 MiB socket write buffer"), "{err}");
        assert!(
            with(1023)
                .unwrap_err()
                .to_string()
                .contains("CES_MAX_RECORD_BYTES=1023 is less than 1024")
        );
    }

    #[test]
    fn reports_every_problem() {
        let src: HashMap<&'static str, String> = [
            ("CES_KAFKA_TOPICS", "a,b"),
            ("CES_DLQ_TOPIC", "b"),
            ("CES_BATCH_MAX", "0"),
            ("CES_KAFKA_AUTO_OFFSET_RESET", "middle"),
            ("CES_REDIS_URL", "localhost"),
            ("CES_UNKNOWN_TYPES", "maybe"),
            ("CES_BREAKER_OPEN_MS", "5000"),
            ("CES_BREAKER_OPEN_MAX_MS", "1000"),
            ("CES_DLQ_REPLICATION", "0"),
            ("CES_KAFKA_PROP_ENABLE_AUTO_COMMIT", "true"),
            ("CES_COMMIT_INTERVAL_MS", "60001"),
            ("CES_MAX_HEADER_BYTES", "1023"),
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
            "CES_UNKNOWN_TYPES",
            "CES_BREAKER_OPEN_MAX_MS",
            "CES_DLQ_REPLICATION",
            "CES_KAFKA_PROP_ENABLE_AUTO_COMMIT",
            "CES_COMMIT_INTERVAL_MS",
            "CES_MAX_HEADER_BYTES",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }
}
