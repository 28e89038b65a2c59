//! Turning a batch of Kafka records into what must happen to them. Pure: no I/O.
//!
//! A [`Plan`] says which events to publish (in record order, so one session's events keep their Kafka order),
//! which records to dead-letter (with the original bytes and the `ces-dlq-*` headers), and which offsets to
//! commit once both are done.

use std::collections::BTreeMap;

use ces_proto::v1::Envelope;
use ces_protocol::record::{self, Reason};
use ces_protocol::schema::Schemas;
use ces_protocol::{dlq, envelope, event_id};
use ces_runtime::otel::{self, EventSpan, KeyValue, SpanKind};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A Kafka record, detached from the client library.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputRecord {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Record timestamp in milliseconds, if the producer or broker set one.
    pub timestamp_ms: Option<i64>,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers in order; a header may have no value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The headers could not be read (a header name is not UTF-8); `headers` is empty.
    pub headers_unreadable: bool,
    /// The revocation generation current when the consumer returned it ([`crate::revocations`]).
    pub received: u64,
}

/// An event ready for the Redis publish function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Index of its record in the batch, to dead-letter it if processing keeps failing.
    pub record: usize,
    /// Session the event goes to.
    pub session_id: String,
    /// Its deterministic id.
    pub event_id: String,
    /// Encoded envelope without `seq` (the publish function appends it).
    pub envelope: bytes::Bytes,
    /// The Kafka record timestamp (ms since the Unix epoch), 0 when it had none.
    pub produced_at_ms: i64,
    /// When the batch was planned, i.e. read and validated (ms since the Unix epoch).
    pub ingested_at_ms: i64,
    /// Ingest's span for the event (a child of the record's `traceparent`), ended once Redis answered.
    pub span: EventSpan,
}

/// A record to write to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why it was rejected.
    pub reason: Reason,
    /// Original key, untouched (unless omitted, see [`Part`]).
    pub key: Option<Vec<u8>>,
    /// Original value, untouched (unless omitted).
    pub value: Option<Vec<u8>>,
    /// Original headers (unless omitted) followed by the `ces-dlq-*` headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Where the original record is: topic, partition, offset (also in the `ces-dlq-source-*` headers).
    pub source: (String, i32, i64),
}

/// A part of the original record a dead letter can go without, in the order they are dropped when the DLQ topic
/// refuses it as too large: the value (usually what made it large), the record's own headers, the key. The
/// `ces-dlq-*` headers always stay: they say why and where the original is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The value; `ces-dlq-value-omitted` says its size.
    Value,
    /// Every header not named `ces-dlq-*`; `ces-dlq-headers-omitted` says their size.
    Headers,
    /// The key; `ces-dlq-key-omitted` says its size.
    Key,
}

impl Part {
    /// The header that records the omission.
    pub fn header(self) -> &'static str {
        match self {
            Part::Value => dlq::VALUE_OMITTED,
            Part::Headers => dlq::HEADERS_OMITTED,
            Part::Key => dlq::KEY_OMITTED,
        }
    }
}

impl DeadLetter {
    /// Drops `part` and records its size in the part's omission header; the size dropped, or `None` when the
    /// letter has no such part left (nothing changes then).
    pub fn omit(&mut self, part: Part) -> Option<usize> {
        let bytes = match part {
            Part::Value => self.value.take()?.len(),
            Part::Key => self.key.take()?.len(),
            Part::Headers => {
                let own = |k: &str| !k.starts_with(dlq::PREFIX);
                if !self.headers.iter().any(|(k, _)| own(k)) {
                    return None;
                }
                let bytes = record::header_bytes(
                    self.headers
                        .iter()
                        .filter(|(k, _)| own(k))
                        .map(|(k, v)| (k.as_str(), v.as_deref())),
                );
                self.headers.retain(|(k, _)| !own(k));
                bytes
            }
        };
        self.headers.push((
            part.header().to_owned(),
            Some(bytes.to_string().into_bytes()),
        ));
        Some(bytes)
    }

    /// Drops the next part the letter still has, in [`Part`]'s order; which part and its size, or `None` when
    /// only the `ces-dlq-*` headers are left.
    pub fn omit_next(&mut self) -> Option<(Part, usize)> {
        [Part::Value, Part::Headers, Part::Key]
            .into_iter()
            .find_map(|part| Some((part, self.omit(part)?)))
    }
}

/// What to do with one batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Valid events, in record order.
    pub publish: Vec<Publish>,
    /// Rejected records, in record order.
    pub dead: Vec<DeadLetter>,
    /// Offset to commit per (topic, partition): one past the highest offset in the batch.
    pub commit: BTreeMap<(String, i32), i64>,
}

/// Plans a batch: each record's headers are checked against `max_header_bytes`, its value against
/// `max_record_bytes` and `schemas`. `now` stamps `ingested_at_ms` and `ces-dlq-failed-at`.
pub fn plan(
    records: &[InputRecord],
    max_record_bytes: usize,
    max_header_bytes: usize,
    schemas: &Schemas,
    now: OffsetDateTime,
) -> Plan {
    let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    let mut plan = Plan::default();
    for (index, r) in records.iter().enumerate() {
        let next = plan
            .commit
            .entry((r.topic.clone(), r.partition))
            .or_default();
        *next = (*next).max(r.offset + 1);
        if r.headers_unreadable {
            let detail = "a header name is not UTF-8; the original headers could not be kept";
            plan.dead
                .push(dead_letter(r, Reason::InvalidHeaders, detail, now));
            continue;
        }
        let headers = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
        if let Err(rejection) = record::validate_headers(headers, max_header_bytes) {
            // Headers that large are what would keep the dead letter from fitting the DLQ topic.
            let mut d = dead_letter(r, rejection.reason, &rejection.detail, now);
            d.omit(Part::Headers);
            plan.dead.push(d);
            continue;
        }
        let content_type = r
            .headers
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(dlq::CONTENT_TYPE))
            .map(|(_, v)| v.as_deref().unwrap_or_default());
        match record::validate_record(r.value.as_deref(), content_type, max_record_bytes, schemas) {
            Ok(ev) => {
                let id =
                    event_id::derive(ev.id.as_deref(), &ev.session_id, &ev.event_type, &ev.data);
                let traceparent = r
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(otel::TRACEPARENT))
                    .and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok());
                let span = EventSpan::start("ces.ingest", SpanKind::Consumer, traceparent, || {
                    vec![
                        KeyValue::new("messaging.system", "kafka"),
                        KeyValue::new("messaging.destination.name", r.topic.clone()),
                        KeyValue::new(
                            "messaging.destination.partition.id",
                            r.partition.to_string(),
                        ),
                        KeyValue::new("messaging.kafka.offset", r.offset),
                        KeyValue::new("ces.event_id", id.clone()),
                        KeyValue::new("ces.session_id", ev.session_id.to_string()),
                    ]
                });
                let env = Envelope {
                    seq: 0,
                    event_id: id.clone(),
                    session_id: ev.session_id.clone().into_owned(),
                    event_type: ev.event_type.into_owned(),
                    data: bytes::Bytes::copy_from_slice(ev.data.as_bytes()),
                    produced_at_ms: r.timestamp_ms.unwrap_or(0),
                    ingested_at_ms: now_ms,
                    source_topic: r.topic.clone(),
                    source_partition: r.partition,
                    source_offset: r.offset,
                    epoch: String::new(),
                    traceparent: span.traceparent(),
                };
                plan.publish.push(Publish {
                    record: index,
                    session_id: ev.session_id.into_owned(),
                    event_id: id,
                    envelope: envelope::encode(&env).into(),
                    produced_at_ms: env.produced_at_ms,
                    ingested_at_ms: now_ms,
                    span,
                });
            }
            Err(rejection) => {
                plan.dead
                    .push(dead_letter(r, rejection.reason, &rejection.detail, now))
            }
        }
    }
    plan
}

/// The dead letter of an event that kept failing in Redis for an event-specific reason: `ces-dlq-attempts`
/// says how often it was tried.
pub fn given_up(r: &InputRecord, attempts: u32, error: &str, now: OffsetDateTime) -> DeadLetter {
    let detail = format!("redis rejected the event {attempts} times: {error}");
    let mut d = dead_letter(r, Reason::ProcessingFailed, &detail, now);
    d.headers.push((
        dlq::ATTEMPTS.to_owned(),
        Some(attempts.to_string().into_bytes()),
    ));
    d
}

/// Builds the dead letter of `r`: original key, value and headers, plus the `ces-dlq-*` headers.
pub fn dead_letter(
    r: &InputRecord,
    reason: Reason,
    detail: &str,
    now: OffsetDateTime,
) -> DeadLetter {
    // Millisecond precision: enough to order failures, and what most log tooling expects.
    let millis = now
        .replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(now);
    let failed_at = millis.format(&Rfc3339).unwrap_or_default();
    let mut headers: Vec<(String, Option<Vec<u8>>)> = r
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with(dlq::PREFIX))
        .cloned()
        .collect();
    for (k, v) in [
        (dlq::REASON, reason.as_str().to_owned()),
        (dlq::DETAIL, detail.to_owned()),
        (dlq::SOURCE_TOPIC, r.topic.clone()),
        (dlq::SOURCE_PARTITION, r.partition.to_string()),
        (dlq::SOURCE_OFFSET, r.offset.to_string()),
        (dlq::FAILED_AT, failed_at),
    ] {
        headers.push((k.to_owned(), Some(v.into_bytes())));
    }
    DeadLetter {
        reason,
        key: r.key.clone(),
        value: r.value.clone(),
        headers,
        source: (r.topic.clone(), r.partition, r.offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(partition: i32, offset: i64, value: &str) -> InputRecord {
        InputRecord {
            topic: "ces.events".into(),
            partition,
            offset,
            timestamp_ms: Some(1_000),
            key: Some(b"k".to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: vec![
                ("trace".into(), Some(b"t1".to_vec())),
                ("ces-dlq-reason".into(), Some(b"old".to_vec())),
            ],
            headers_unreadable: false,
            received: 0,
        }
    }

    fn header<'a>(d: &'a DeadLetter, name: &str) -> &'a str {
        let (_, v) = d.headers.iter().find(|(k, _)| k == name).expect(name);
        std::str::from_utf8(v.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn splits_valid_from_invalid_in_order_and_commits_past_both() {
        let records = [
            rec(0, 10, r#"{"session_id":"a","type":"t","data":1}"#),
            rec(0, 11, "garbage"),
            rec(1, 5, r#"{"session_id":"b","type":"t","data":2}"#),
            rec(0, 12, r#"{"session_id":"a","type":"t","data":3}"#),
        ];
        let p = plan(
            &records,
            1024,
            1024,
            &Schemas::default(),
            OffsetDateTime::UNIX_EPOCH,
        );
        let sessions: Vec<_> = p.publish.iter().map(|e| e.session_id.as_str()).collect();
        assert_eq!(sessions, ["a", "b", "a"]);
        assert_eq!(p.dead.len(), 1);
        assert_eq!(p.dead[0].reason, Reason::InvalidJson);
        let commit: Vec<_> = p.commit.into_iter().collect();
        assert_eq!(
            commit,
            [
                (("ces.events".to_owned(), 0), 13),
                (("ces.events".to_owned(), 1), 6)
            ]
        );
    }

    #[test]
    fn envelope_carries_source_coordinates_and_verbatim_data() {
        let p = plan(
            &[rec(
                2,
                7,
                r#"{"session_id":"a","type":"t","data":{"x" : 1}}"#,
            )],
            1024,
            1024,
            &Schemas::default(),
            OffsetDateTime::UNIX_EPOCH,
        );
        let env = envelope::decode(&p.publish[0].envelope).unwrap();
        assert_eq!(env.seq, 0);
        assert_eq!(&env.data[..], br#"{"x" : 1}"#);
        assert_eq!(
            (
                env.source_topic.as_str(),
                env.source_partition,
                env.source_offset
            ),
            ("ces.events", 2, 7)
        );
        assert_eq!(env.produced_at_ms, 1_000);
        assert_eq!(env.event_id, p.publish[0].event_id);
    }

    #[test]
    fn ingested_at_is_the_planning_time_in_milliseconds() {
        let now = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let p = plan(
            &[rec(0, 1, r#"{"session_id":"a","type":"t","data":1}"#)],
            1024,
            1024,
            &Schemas::default(),
            now,
        );
        let env = envelope::decode(&p.publish[0].envelope).unwrap();
        assert_eq!(env.ingested_at_ms, 1_700_000_000_123);
        assert_eq!(p.publish[0].ingested_at_ms, 1_700_000_000_123);
    }

    #[test]
    fn same_business_event_gets_the_same_id_wherever_it_was_read() {
        let v = r#"{"session_id":"a","type":"t","data":{"k":1}}"#;
        let p = plan(
            &[rec(0, 1, v), rec(3, 99, v)],
            1024,
            1024,
            &Schemas::default(),
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(p.publish[0].event_id, p.publish[1].event_id);
    }

    #[test]
    fn dead_letter_keeps_the_original_and_adds_coordinates() {
        let r = rec(4, 77, "{");
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let p = plan(
            std::slice::from_ref(&r),
            1024,
            1024,
            &Schemas::default(),
            now,
        );
        let d = &p.dead[0];
        assert_eq!(
            (d.key.as_ref(), d.value.as_ref()),
            (r.key.as_ref(), r.value.as_ref())
        );
        assert_eq!(header(d, "trace"), "t1");
        assert_eq!(header(d, dlq::REASON), "invalid_json");
        assert!(header(d, dlq::DETAIL).starts_with("value is not JSON"));
        assert_eq!(header(d, dlq::SOURCE_TOPIC), "ces.events");
        assert_eq!(header(d, dlq::SOURCE_PARTITION), "4");
        assert_eq!(header(d, dlq::SOURCE_OFFSET), "77");
        assert_eq!(header(d, dlq::FAILED_AT), "2023-11-14T22:13:20Z");
        // A stale reason from an earlier dead-lettering is replaced, not duplicated.
        assert_eq!(
            d.headers.iter().filter(|(k, _)| k == dlq::REASON).count(),
            1
        );
    }

    #[test]
    fn unreadable_headers_dead_letter_the_record_whatever_its_value() {
        let mut r = rec(0, 3, r#"{"session_id":"a","type":"t","data":1}"#);
        r.headers.clear();
        r.headers_unreadable = true;
        let p = plan(
            std::slice::from_ref(&r),
            1024,
            1024,
            &Schemas::default(),
            OffsetDateTime::UNIX_EPOCH,
        );
        assert!(p.publish.is_empty());
        assert_eq!(p.dead[0].reason, Reason::InvalidHeaders);
        assert_eq!(p.dead[0].value, r.value);
        assert_eq!(p.commit.values().copied().collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn headers_over_the_limit_dead_letter_the_record_without_them() {
        let mut r = rec(0, 8, r#"{"session_id":"a","type":"t","data":1}"#);
        r.headers
            .push(("big".into(), Some(vec![b'h'; 1000 - 7 - 17 - 3])));
        // trace(5) + t1(2) + ces-dlq-reason(14) + old(3) + big(3) + its value: exactly 1000 bytes.
        assert_eq!(
            record::header_bytes(r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()))),
            1000
        );
        let plan_with = |limit| {
            plan(
                std::slice::from_ref(&r),
                1024,
                limit,
                &Schemas::default(),
                OffsetDateTime::UNIX_EPOCH,
            )
        };
        assert_eq!(plan_with(1000).publish.len(), 1, "the limit is inclusive");
        let p = plan_with(999);
        assert!(p.publish.is_empty());
        let d = &p.dead[0];
        assert_eq!(d.reason, Reason::InvalidHeaders);
        assert_eq!(
            header(d, dlq::DETAIL),
            "headers are 1000 bytes (names and values), limit is 999"
        );
        // Only the ces-dlq-* headers are left, the omission among them; key and value are kept.
        assert!(d.headers.iter().all(|(k, _)| k.starts_with(dlq::PREFIX)));
        // What was dropped: trace and big; the stale ces-dlq-reason the record carried is replaced anyway.
        assert_eq!(header(d, dlq::HEADERS_OMITTED), "983");
        assert_eq!(
            (d.key.as_ref(), d.value.as_ref()),
            (r.key.as_ref(), r.value.as_ref())
        );
        assert_eq!(d.source, ("ces.events".to_owned(), 0, 8));
        assert_eq!(p.commit.values().copied().collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn a_letter_sheds_its_value_then_its_headers_then_its_key_and_says_so() {
        let mut d = dead_letter(
            &rec(1, 2, "0123456789"),
            Reason::InvalidJson,
            "d",
            OffsetDateTime::UNIX_EPOCH,
        );
        let own_headers = d.headers.len() - 6;
        assert_eq!(own_headers, 1, "trace; the stale reason was replaced");
        assert_eq!(d.omit_next(), Some((Part::Value, 10)));
        assert_eq!(d.value, None);
        assert_eq!(header(&d, dlq::VALUE_OMITTED), "10");
        assert!(d.key.is_some() && d.headers.iter().any(|(k, _)| k == "trace"));
        assert_eq!(d.omit_next(), Some((Part::Headers, 7)));
        assert_eq!(header(&d, dlq::HEADERS_OMITTED), "7");
        assert!(d.headers.iter().all(|(k, _)| k.starts_with(dlq::PREFIX)));
        assert_eq!(d.omit_next(), Some((Part::Key, 1)));
        assert_eq!(d.key, None);
        assert_eq!(header(&d, dlq::KEY_OMITTED), "1");
        let before = d.clone();
        assert_eq!(d.omit_next(), None);
        assert_eq!(d, before, "nothing left to drop: unchanged");
        // Every ces-dlq-* header survived, and each omission is named once.
        for name in [
            dlq::REASON,
            dlq::DETAIL,
            dlq::SOURCE_TOPIC,
            dlq::SOURCE_PARTITION,
            dlq::SOURCE_OFFSET,
            dlq::FAILED_AT,
        ] {
            header(&d, name);
        }
        for name in dlq::OMITTED {
            assert_eq!(
                d.headers.iter().filter(|(k, _)| k == name).count(),
                1,
                "{name}"
            );
        }
    }

    #[test]
    fn a_letter_without_a_part_skips_to_the_next() {
        let mut r = rec(0, 0, "x");
        r.value = None;
        r.headers.clear();
        let mut d = dead_letter(&r, Reason::MissingValue, "d", OffsetDateTime::UNIX_EPOCH);
        assert_eq!(d.omit(Part::Value), None);
        assert_eq!(d.omit(Part::Headers), None);
        assert!(
            !d.headers
                .iter()
                .any(|(k, _)| dlq::OMITTED.contains(&k.as_str()))
        );
        assert_eq!(d.omit_next(), Some((Part::Key, 1)));
        assert_eq!(d.omit_next(), None);
        // An empty value is still a value: dropping it is recorded.
        let mut d = dead_letter(
            &rec(0, 0, ""),
            Reason::MissingValue,
            "d",
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(d.omit_next(), Some((Part::Value, 0)));
    }

    #[test]
    fn failed_at_has_millisecond_precision() {
        let now = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let d = dead_letter(&rec(0, 0, "x"), Reason::InvalidJson, "d", now);
        assert_eq!(header(&d, dlq::FAILED_AT), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn content_type_header_selects_protobuf_and_the_schema_of_the_type_applies() {
        use ces_proto::Message as _;
        let mut schemas = Schemas::default();
        schemas
            .insert(
                "t",
                &serde_json::json!({"type": "object", "required": ["n"]}),
            )
            .unwrap();
        let pb = ces_proto::v1::Event {
            session_id: "a".into(),
            r#type: "t".into(),
            data: br#"{"n":1}"#.to_vec().into(),
            id: String::new(),
        }
        .encode_to_vec();
        let mut proto = rec(0, 1, "");
        proto.value = Some(pb);
        proto.headers.push((
            "Content-Type".into(),
            Some(b"application/x-protobuf".to_vec()),
        ));
        let records = [
            proto,
            rec(0, 2, r#"{"session_id":"a","type":"t","data":{"m":1}}"#),
        ];
        let p = plan(&records, 1024, 1024, &schemas, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(p.publish.len(), 1);
        assert_eq!(p.publish[0].record, 0);
        assert_eq!(p.dead.len(), 1);
        assert_eq!(p.dead[0].reason, Reason::SchemaViolation);
        assert!(header(&p.dead[0], dlq::DETAIL).starts_with("/data: "));
    }

    #[test]
    fn a_given_up_event_says_how_often_it_was_tried() {
        let d = given_up(&rec(0, 9, "{}"), 5, "WRONGTYPE", OffsetDateTime::UNIX_EPOCH);
        assert_eq!(d.reason, Reason::ProcessingFailed);
        assert_eq!(header(&d, dlq::ATTEMPTS), "5");
        assert_eq!(header(&d, dlq::SOURCE_OFFSET), "9");
        assert!(header(&d, dlq::DETAIL).contains("5 times: WRONGTYPE"));
    }
}
