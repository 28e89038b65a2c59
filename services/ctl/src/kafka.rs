//! How `cesctl` reaches Kafka: the bootstrap servers (`--brokers` / `CES_KAFKA_BROKERS`) and every
//! `CES_KAFKA_PROP_<NAME>` variable passed through to librdkafka, exactly as ingest reads them
//! ([`ces_runtime::config::Vars::passthrough`]), so the environment that lets ingest reach a TLS/SASL cluster lets
//! `cesctl` reach it too. Credentials (`CES_KAFKA_PROP_SASL_PASSWORD`, ...) come only from there, never from a
//! flag.
//!
//! Properties `cesctl` sets itself and relies on are refused ([`RESERVED_PROPERTIES`]): ingest's, plus those that
//! keep `dlq` reads from creating topics or moving any group, and replays acknowledged by every replica and never
//! duplicated by a retry.

use std::fmt;

use ces_runtime::config::{Source, Vars};
use rdkafka::config::ClientConfig;

use crate::usage::Usage;

/// The prefix of passed-through librdkafka properties.
pub(crate) const PROPERTY_PREFIX: &str = "CES_KAFKA_PROP_";

/// librdkafka properties `cesctl` sets itself and depends on; passing one through is refused.
pub(crate) const RESERVED_PROPERTIES: &[&str] = &[
    // Where to connect is `--brokers` / `CES_KAFKA_BROKERS`: one place, named in every error message.
    "bootstrap.servers",
    // As ingest: the DLQ reader never joins, commits or stores offsets, and ends at each partition's end.
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    // The reader reads what is left when retention deleted its start offset.
    "auto.offset.reset",
    // Looking up a replay's target must never create it.
    "allow.auto.create.topics",
    // A replay is acknowledged by every in-sync replica, and a retried send never duplicates it.
    "acks",
    "enable.idempotence",
];

/// Bootstrap servers and passed-through properties for every Kafka client of one command.
#[derive(Clone)]
pub(crate) struct Kafka {
    /// Bootstrap servers, as given (named in error messages).
    pub(crate) brokers: String,
    properties: Vec<(String, String)>,
}

impl fmt::Debug for Kafka {
    /// Property names only: values may be passwords.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.properties.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Kafka")
            .field("brokers", &self.brokers)
            .field("properties", &names)
            .finish()
    }
}

impl Kafka {
    /// `brokers` plus every `CES_KAFKA_PROP_*` of `source`; a reserved or malformed one is a usage error that lists
    /// every problem.
    pub(crate) fn read(brokers: String, source: &dyn Source) -> Result<Self, Usage> {
        let mut vars = Vars::new(source);
        let properties = vars.passthrough(PROPERTY_PREFIX, RESERVED_PROPERTIES);
        vars.finish()?;
        Ok(Self {
            brokers,
            properties,
        })
    }

    /// A client configuration: the bootstrap servers, then `cesctl`'s own `settings`, then every passed-through
    /// property (which may override a tuning setting such as a timeout, never a [`RESERVED_PROPERTIES`] one).
    pub(crate) fn config(&self, settings: &[(&str, String)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in settings {
            c.set(*k, v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn source(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    #[test]
    fn properties_pass_through_after_cesctl_s_own_settings() {
        let src = source(&[
            ("CES_KAFKA_PROP_SECURITY_PROTOCOL", "sasl_ssl"),
            ("CES_KAFKA_PROP_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("CES_KAFKA_PROP_SASL_PASSWORD", "s3cret"),
            ("CES_KAFKA_PROP_SOCKET_TIMEOUT_MS", "20000"),
            ("CES_KAFKA_BROKERS", "ignored:9092"),
        ]);
        let kafka = Kafka::read("b:9093".into(), &src).unwrap();
        let c = kafka.config(&[
            ("socket.timeout.ms", "10000".into()),
            ("linger.ms", "5".into()),
        ]);
        assert_eq!(c.get("bootstrap.servers"), Some("b:9093"));
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        assert_eq!(c.get("socket.timeout.ms"), Some("20000"));
        assert_eq!(c.get("linger.ms"), Some("5"));
        let shown = format!("{kafka:?}");
        assert!(
            shown.contains("sasl.password") && !shown.contains("s3cret"),
            "{shown}"
        );
        let none = Kafka::read("b".into(), &source(&[])).unwrap();
        assert_eq!(none.config(&[]).config_map().len(), 1);
    }

    #[test]
    fn reserved_and_malformed_properties_are_refused_all_at_once() {
        let src = source(&[
            ("CES_KAFKA_PROP_GROUP_ID", "g"),
            ("CES_KAFKA_PROP_BOOTSTRAP_SERVERS", "elsewhere:9092"),
            ("CES_KAFKA_PROP_ALLOW_AUTO_CREATE_TOPICS", "true"),
            ("CES_KAFKA_PROP_SASL-USERNAME", "u"),
            ("CES_KAFKA_PROP_DEBUG", "broker"),
        ]);
        let err = Kafka::read("b".into(), &src).unwrap_err().0;
        for needle in [
            "CES_KAFKA_PROP_GROUP_ID sets group.id, which CES manages itself",
            "CES_KAFKA_PROP_BOOTSTRAP_SERVERS sets bootstrap.servers",
            "CES_KAFKA_PROP_ALLOW_AUTO_CREATE_TOPICS sets allow.auto.create.topics",
            "CES_KAFKA_PROP_SASL-USERNAME does not name a property",
        ] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
        assert!(!err.contains("DEBUG"), "{err}");
    }

    #[test]
    fn every_property_ingest_refuses_is_refused_here() {
        for p in ces_ingest::kafka::RESERVED_PROPERTIES {
            assert!(RESERVED_PROPERTIES.contains(p), "{p}");
        }
    }
}
