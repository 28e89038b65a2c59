//! 10,000 mixed records through the whole stack: every invalid one in the DLQ exactly once with the right reason
//! and its original coordinates, every valid one (JSON or protobuf) delivered exactly once, in order.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use ces_proto::Message as _;
use ces_protocol::keys::SessionKeys;
use ces_systest::client::{WsClient, register, ws_url};
use ces_systest::kafka::{self, Record};
use ces_systest::{Metrics, unique};
use common::Stack;
use fred::interfaces::{ClientLike as _, KeysInterface as _};
use rdkafka::Message as _;
use serde_json::json;

const RECORDS: usize = 10_000;
const SESSIONS: usize = 50;
const MAX_RECORD_BYTES: usize = 1024;
/// Events for the session whose Redis state another program broke: dead-lettered as `processing_failed`.
const POISONED: usize = 10;

const ORDER_SCHEMA: &str =
    r#"{"type":"object","required":["n"],"properties":{"n":{"type":"integer"}}}"#;

/// The invalid records, one maker per reason code (`invalid_headers` needs a non-UTF-8 header name, which no
/// Kafka client library will produce; it is covered by the unit tests of ingest's batch planning).
fn invalid(reason: &str, i: usize, session: &str) -> Record {
    let obj = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let mut r = Record::keyed(&format!("k{i}"), Vec::new());
    let good = json!({"session_id": session, "type": "order", "data": {"n": 1}});
    r.value = Some(match reason {
        "missing_value" => {
            r.value = None;
            return r;
        }
        "too_large" => obj(
            json!({"session_id": session, "type": "order", "data": {"n": 1, "pad": "x".repeat(MAX_RECORD_BYTES)}}),
        ),
        "invalid_utf8" => b"\xff\xfe{}".to_vec(),
        "invalid_json" => format!("{{nope {i}").into_bytes(),
        "not_an_object" => format!("[{i}]").into_bytes(),
        "missing_session_id" => obj(json!({"type": "order", "data": {"n": 1}})),
        "invalid_session_id" => {
            obj(json!({"session_id": "a b", "type": "order", "data": {"n": 1}}))
        }
        "missing_type" => obj(json!({"session_id": session, "data": {"n": 1}})),
        "invalid_type" => obj(json!({"session_id": session, "type": "-x", "data": {"n": 1}})),
        "missing_data" => obj(json!({"session_id": session, "type": "order"})),
        "invalid_id" => {
            obj(json!({"session_id": session, "type": "order", "data": {"n": 1}, "id": i}))
        }
        "unsupported_content_type" => {
            r.headers
                .push(("content-type".into(), b"text/csv".to_vec()));
            obj(good)
        }
        "invalid_protobuf" => {
            r.headers
                .push(("content-type".into(), b"application/x-protobuf".to_vec()));
            // A length-delimited field 1 that claims more bytes than follow.
            vec![0x0a, 0x10 + (i % 64) as u8, b'x']
        }
        "unknown_type" => obj(json!({"session_id": session, "type": "mystery", "data": {"n": 1}})),
        "too_deep" => format!(
            r#"{{"session_id":"{session}","type":"order","data":{{"n":1,"x":{}{}}}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        )
        .into_bytes(),
        "schema_violation" => {
            obj(json!({"session_id": session, "type": "order", "data": {"n": format!("{i}")}}))
        }
        other => panic!("no maker for {other}"),
    });
    r
}

const INVALID: [&str; 16] = [
    "missing_value",
    "too_large",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "missing_session_id",
    "invalid_session_id",
    "missing_type",
    "invalid_type",
    "missing_data",
    "invalid_id",
    "unsupported_content_type",
    "invalid_protobuf",
    "unknown_type",
    "schema_violation",
    "too_deep",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mixed_records_each_end_up_exactly_where_they_belong() -> anyhow::Result<()> {
    let schemas = tempfile::tempdir()?;
    std::fs::write(schemas.path().join("order.json"), ORDER_SCHEMA)?;
    let stack = Stack::start(
        4,
        &[
            ("CES_SCHEMA_DIR", schemas.path().display().to_string()),
            ("CES_UNKNOWN_TYPES", "reject".into()),
            ("CES_MAX_RECORD_BYTES", MAX_RECORD_BYTES.to_string()),
            ("CES_MAX_ATTEMPTS", "2".into()),
        ],
    )
    .await?;
    let mut clients = Vec::new();
    for i in 0..SESSIONS {
        let edge = &stack.edges[i % 2].base;
        let reg = register(&stack.http, edge).await?;
        clients.push((
            reg.session_id,
            WsClient::connect(&ws_url(edge, &reg.token)).await?,
        ));
    }
    // Another program wrote a plain string where this session's dedup set lives.
    let poisoned = unique("poisoned");
    let redis = ces_runtime::redis::builder(&stack.redis.url())?.build()?;
    redis.init().await?;
    let _: () = redis
        .set(SessionKeys::of(&poisoned).ids, "oops", None, None, false)
        .await?;

    let mut records = Vec::with_capacity(RECORDS);
    let mut expected_reason: HashMap<usize, &str> = HashMap::new();
    let mut per_session = vec![0u64; SESSIONS];
    for i in 0..RECORDS {
        // Blocks of ten records: seven valid events of one session, then three invalid records.
        let s = (i / 10) % SESSIONS;
        let session = &clients[s].0;
        let mut record = if i % (RECORDS / POISONED) == RECORDS / POISONED - 1 {
            expected_reason.insert(i, "processing_failed");
            Record::keyed(
                &poisoned,
                serde_json::to_vec(
                    &json!({"session_id": poisoned, "type": "order", "data": {"n": i}}),
                )?,
            )
        } else if i % 10 >= 7 {
            let reason = INVALID[(i / 10) % INVALID.len()];
            expected_reason.insert(i, reason);
            invalid(reason, i, session)
        } else {
            per_session[s] += 1;
            let n = per_session[s];
            if i % 2 == 0 {
                Record::keyed(
                    session,
                    serde_json::to_vec(
                        &json!({"session_id": session, "type": "order", "data": {"n": n}}),
                    )?,
                )
            } else {
                let mut r = Record::keyed(
                    session,
                    ces_proto::v1::Event {
                        session_id: session.clone(),
                        r#type: "order".into(),
                        data: format!(r#"{{"n":{n}}}"#).into_bytes().into(),
                        id: String::new(),
                    }
                    .encode_to_vec(),
                );
                r.headers
                    .push(("content-type".into(), b"application/x-protobuf".to_vec()));
                r
            }
        };
        record
            .headers
            .push(("test-id".into(), i.to_string().into_bytes()));
        records.push(record);
    }
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    kafka::produce(&producer, &stack.topic, &records).await?;

    // Every valid event, exactly once, in order.
    for (s, (session, ws)) in clients.iter_mut().enumerate() {
        let events = ws
            .events(per_session[s] as usize, Duration::from_secs(60))
            .await?;
        common::assert_numbered(session, &events, per_session[s]);
        let extra = ws.next_json(Duration::from_millis(100)).await?;
        assert!(extra.is_none(), "nothing more for {session}: {extra:?}");
    }

    // Every invalid record, exactly once, with its reason and its original coordinates.
    let bootstrap = stack.broker.bootstrap();
    let input =
        kafka::read_to_end(&bootstrap, &stack.topic, RECORDS, Duration::from_secs(60)).await?;
    let coordinates: HashMap<usize, (i32, i64)> = input
        .iter()
        .map(|m| {
            let id = kafka::header(m, "test-id").unwrap().parse().unwrap();
            (id, (m.partition(), m.offset()))
        })
        .collect();
    assert_eq!(coordinates.len(), RECORDS);
    let dead = kafka::read_to_end(
        &bootstrap,
        &stack.dlq,
        expected_reason.len(),
        Duration::from_secs(60),
    )
    .await?;
    let mut seen = HashSet::new();
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for m in &dead {
        let id: usize = kafka::header(m, "test-id").unwrap().parse()?;
        assert!(seen.insert(id), "record {id} dead-lettered twice");
        let reason = kafka::header(m, "ces-dlq-reason").unwrap();
        assert_eq!(
            Some(&reason.as_str()),
            expected_reason.get(&id),
            "reason of record {id}"
        );
        assert_eq!(
            kafka::header(m, "ces-dlq-source-topic").unwrap(),
            stack.topic
        );
        let (partition, offset) = coordinates[&id];
        assert_eq!(
            kafka::header(m, "ces-dlq-source-partition").unwrap(),
            partition.to_string()
        );
        assert_eq!(
            kafka::header(m, "ces-dlq-source-offset").unwrap(),
            offset.to_string()
        );
        assert!(!kafka::header(m, "ces-dlq-detail").unwrap().is_empty());
        assert_eq!(
            kafka::value(m),
            records[id].value.as_deref(),
            "original value of {id}"
        );
        if reason == "processing_failed" {
            assert_eq!(kafka::header(m, "ces-dlq-attempts").as_deref(), Some("2"));
        }
        *by_reason.entry(reason).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        expected_reason.len(),
        "every invalid record dead-lettered"
    );
    let mut expected_counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in expected_reason.values() {
        *expected_counts.entry((*r).to_owned()).or_default() += 1;
    }
    assert_eq!(by_reason, expected_counts);
    assert_eq!(
        by_reason.len(),
        INVALID.len() + 1,
        "every reason code occurs"
    );

    let ingest = &stack.ingest.as_ref().unwrap().internal;
    let m = Metrics::scrape(ingest).await?;
    for (reason, count) in &expected_counts {
        assert_eq!(
            m.get("ces_ingest_dead_lettered_total", &[("reason", reason)]),
            *count as f64,
            "{reason}"
        );
    }
    assert_eq!(
        m.get("ces_ingest_published_total", &[]),
        per_session.iter().sum::<u64>() as f64
    );
    // Retries around the poisoned events re-ran the events behind them; none of that counts as a duplicate.
    assert_eq!(m.get("ces_ingest_duplicates_total", &[]), 0.0);
    stack.stop().await
}
