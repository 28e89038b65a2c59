//! Which topics `cesctl dlq replay` may write to.
//!
//! A replay produces to the topic its dead letter's `ces-dlq-source-topic` header names, with the operator's Kafka
//! credentials. Whoever can write to the DLQ topic can write that header, so without a limit a crafted dead letter
//! would make an operator's replay inject any record into any topic those credentials reach. The allow-list is
//! ingest's input topics by default (`CES_KAFKA_TOPICS`, read as ingest reads it: comma-separated, `ces.events`
//! when unset), since those are the only topics a genuine dead letter comes from; `CES_REPLAY_ALLOWED_TOPICS` or
//! `--allowed-topics` replace it. The DLQ topic itself is never allowed: a replay into it would only make another
//! dead letter.

use std::collections::BTreeSet;

use ces_runtime::config::{Source, Vars};

use crate::usage::Usage;

/// The variable that sets the allow-list for replays alone.
pub(crate) const ALLOWED_TOPICS_VAR: &str = "CES_REPLAY_ALLOWED_TOPICS";

/// ingest's input topics, the default allow-list.
pub(crate) const INPUT_TOPICS_VAR: &str = "CES_KAFKA_TOPICS";

/// ingest's default input topic.
const DEFAULT_INPUT_TOPIC: &str = "ces.events";

/// The topics a replay may write to, and where that list came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowList {
    topics: BTreeSet<String>,
    from: &'static str,
}

impl AllowList {
    /// The allow-list: `flag` (`--allowed-topics`) when given, else `CES_REPLAY_ALLOWED_TOPICS`, else
    /// `CES_KAFKA_TOPICS`, else `ces.events`. An empty item, or a list naming `dlq_topic`, is a usage error.
    pub(crate) fn read(
        flag: &[String],
        dlq_topic: &str,
        source: &dyn Source,
    ) -> Result<Self, Usage> {
        let (topics, from): (Vec<String>, &'static str) = if !flag.is_empty() {
            let topics: Vec<String> = flag.iter().map(|t| t.trim().to_owned()).collect();
            if topics.iter().any(String::is_empty) {
                return Err(Usage(format!(
                    "--allowed-topics={:?} has an empty item",
                    flag.join(",")
                )));
            }
            (topics, "--allowed-topics")
        } else {
            let mut v = Vars::new(source);
            let read = if source.get(ALLOWED_TOPICS_VAR).is_some() {
                (v.list(ALLOWED_TOPICS_VAR, &[]), ALLOWED_TOPICS_VAR)
            } else if source.get(INPUT_TOPICS_VAR).is_some() {
                (v.list(INPUT_TOPICS_VAR, &[]), INPUT_TOPICS_VAR)
            } else {
                (vec![DEFAULT_INPUT_TOPIC.to_owned()], "ingest's default")
            };
            v.finish()?;
            read
        };
        if topics.iter().any(|t| t == dlq_topic) {
            return Err(Usage(format!(
                "{from} names the dead-letter topic {dlq_topic}; a replay never writes to it"
            )));
        }
        Ok(Self {
            topics: topics.into_iter().collect(),
            from,
        })
    }

    /// Whether a replay may write to `topic`.
    pub(crate) fn allows(&self, topic: &str) -> bool {
        self.topics.contains(topic)
    }

    /// Why a replay to `topic` is refused.
    pub(crate) fn refusal(&self, topic: &str) -> String {
        let allowed: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        format!(
            "target topic {topic} is not allowed (allowed: {}, from {})",
            allowed.join(", "),
            self.from
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    fn flag(topics: &[&str]) -> Vec<String> {
        topics.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn the_flag_wins_then_the_replay_variable_then_ingest_s_topics_then_its_default() {
        let both = env(&[
            (ALLOWED_TOPICS_VAR, "r1, r2"),
            (INPUT_TOPICS_VAR, "in1,in2"),
        ]);
        let a = AllowList::read(&flag(&["f1", " f2 "]), "dlq", &both).unwrap();
        assert!(a.allows("f1") && a.allows("f2") && !a.allows("r1"));
        assert_eq!(
            a.refusal("evil"),
            "target topic evil is not allowed (allowed: f1, f2, from --allowed-topics)"
        );
        let a = AllowList::read(&[], "dlq", &both).unwrap();
        assert!(a.allows("r1") && a.allows("r2") && !a.allows("in1"));
        assert_eq!(
            a.refusal("in1"),
            "target topic in1 is not allowed (allowed: r1, r2, from CES_REPLAY_ALLOWED_TOPICS)"
        );
        let a = AllowList::read(&[], "dlq", &env(&[(INPUT_TOPICS_VAR, "in1,in2")])).unwrap();
        assert!(a.allows("in1") && a.allows("in2") && !a.allows("ces.events"));
        assert!(a.refusal("x").ends_with("from CES_KAFKA_TOPICS)"));
        let a = AllowList::read(&[], "dlq", &env(&[])).unwrap();
        assert!(a.allows("ces.events") && !a.allows("ces.events.dlq"));
        assert_eq!(
            a.refusal("x"),
            "target topic x is not allowed (allowed: ces.events, from ingest's default)"
        );
    }

    #[test]
    fn empty_items_and_the_dlq_topic_are_refused() {
        assert_eq!(
            AllowList::read(&flag(&["a", ""]), "dlq", &env(&[]))
                .unwrap_err()
                .0,
            "--allowed-topics=\"a,\" has an empty item"
        );
        let err = AllowList::read(&[], "dlq", &env(&[(ALLOWED_TOPICS_VAR, "a,,b")]))
            .unwrap_err()
            .0;
        assert!(
            err.contains("CES_REPLAY_ALLOWED_TOPICS=\"a,,b\" has an empty item"),
            "{err}"
        );
        let err = AllowList::read(&[], "dlq", &env(&[(INPUT_TOPICS_VAR, " ")]))
            .unwrap_err()
            .0;
        assert!(err.contains("CES_KAFKA_TOPICS is set but empty"), "{err}");
        assert_eq!(
            AllowList::read(&flag(&["a", "dlq"]), "dlq", &env(&[]))
                .unwrap_err()
                .0,
            "--allowed-topics names the dead-letter topic dlq; a replay never writes to it"
        );
        let err = AllowList::read(
            &[],
            "ces.events.dlq",
            &env(&[(INPUT_TOPICS_VAR, "ces.events.dlq")]),
        )
        .unwrap_err()
        .0;
        assert!(
            err.starts_with("CES_KAFKA_TOPICS names the dead-letter topic"),
            "{err}"
        );
    }
}
