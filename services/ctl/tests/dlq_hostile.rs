//! `cesctl dlq` against dead letters someone crafted: whoever can write to the DLQ topic can write any header. The
//! real binary runs against the run's shared Apache Kafka broker, each test on topics of its own.
//!
//! - A dead letter naming a topic outside the replay allow-list is refused, reported and counted; nothing reaches
//!   that topic.
//! - A header whose name is not UTF-8 (written over the Kafka protocol itself, as no client library writes one)
//!   is listed and shown without a panic, and its record is refused by replay; a header value that is not UTF-8
//!   is shown as base64 and replayed byte for byte; control characters in names and values are shown escaped.

mod common;

use std::time::{Duration, SystemTime};

use ces_protocol::dlq;
use ces_systest::Broker;
use ces_systest::kafka::{self, Record};
use ces_systest::kafka_wire::{self, RawRecord};
use common::{cells, cesctl_env, jsonl, ok, row, stderr};
use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use serde_json::{Value, json};

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The `ces-dlq-*` headers of a record read from `source` at `partition`:`offset`.
fn dlq_headers(source: &str, partition: i32, offset: i64) -> Vec<(String, Vec<u8>)> {
    [
        (dlq::REASON, "invalid_json".to_owned()),
        (dlq::DETAIL, "d".to_owned()),
        (dlq::SOURCE_TOPIC, source.to_owned()),
        (dlq::SOURCE_PARTITION, partition.to_string()),
        (dlq::SOURCE_OFFSET, offset.to_string()),
        (dlq::FAILED_AT, now()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_bytes()))
    .collect()
}

#[tokio::test]
async fn replay_writes_only_to_allowed_topics() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let (dlq_topic, source, foreign) = (
        ces_systest::unique("dlq-allow"),
        ces_systest::unique("src-allow"),
        ces_systest::unique("payments"),
    );
    let broker = Broker::shared().await?;
    let b = broker.bootstrap();
    kafka::create_topics(&b, &[(&dlq_topic, 1), (&source, 2), (&foreign, 2)]).await?;
    let letter = |to: &str, partition: i32, value: &[u8]| Record {
        key: Some(b"k".to_vec()),
        value: Some(value.to_vec()),
        partition: Some(0),
        headers: dlq_headers(to, partition, 5),
    };
    kafka::produce(
        &kafka::producer(&b)?,
        &dlq_topic,
        &[
            letter(&source, 1, b"genuine"),
            // Crafted: aimed at a topic ingest never reads.
            letter(&foreign, 0, b"injected"),
        ],
    )
    .await?;
    let replay = |extra: &[&str], env: &[(&str, &str)]| {
        let mut a: Vec<String> = [
            "dlq",
            "replay",
            "--all",
            "--brokers",
            &b,
            "--topic",
            &dlq_topic,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        async move {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            cesctl_env(&a, &env).await
        }
    };
    let ingest_env = [("CES_KAFKA_TOPICS", source.as_str())];
    let read = |topic: String| {
        let b = b.clone();
        async move { kafka::read_to_end(&b, &topic, 0, Duration::from_secs(5)).await }
    };

    // The dry run shows each target and whether it is allowed.
    let out = ok(&replay(&["--dry-run"], &ingest_env).await?);
    let refusal =
        format!("target topic {foreign} is not allowed (allowed: {source}, from CES_KAFKA_TOPICS)");
    let table = cells(&out);
    assert_eq!(
        table[..3],
        [
            row(&[
                "DLQ", "REASON", "SOURCE", "TARGET", "ALLOWED", "RESULT", "NOTE"
            ]),
            row(&[
                "0:0",
                "invalid_json",
                &format!("{source} 1:5"),
                &format!("{source} 1"),
                "yes",
                "would replay",
                "replay 1"
            ]),
            row(&[
                "0:1",
                "invalid_json",
                &format!("{foreign} 0:5"),
                &format!("{foreign} 0"),
                "no",
                "refused",
                &refusal
            ]),
        ]
    );
    let j: Value =
        serde_json::from_str(&ok(&replay(&["--dry-run", "--json"], &ingest_env).await?))?;
    assert_eq!(j["letters"][0]["allowed"], true);
    assert_eq!(j["letters"][1]["allowed"], false);
    assert_eq!(j["letters"][1]["note"], refusal.as_str());

    // For real: the genuine one lands, the crafted one is refused and counted, exit code 0.
    let j: Value = serde_json::from_str(&ok(&replay(&["--json"], &ingest_env).await?))?;
    assert_eq!(
        (
            j["replayed"].clone(),
            j["refused"].clone(),
            j["failed"].clone()
        ),
        (json!(1), json!(1), json!(0))
    );
    assert_eq!(j["letters"][1]["result"], "refused");
    assert_eq!(read(source.clone()).await?.len(), 1);
    assert!(
        read(foreign.clone()).await?.is_empty(),
        "nothing reached {foreign}"
    );

    // The list can be set for replays alone, by variable or flag (the flag wins).
    let only_foreign = [
        ("CES_KAFKA_TOPICS", source.as_str()),
        ("CES_REPLAY_ALLOWED_TOPICS", foreign.as_str()),
    ];
    let j: Value =
        serde_json::from_str(&ok(&replay(&["--json", "--dry-run"], &only_foreign).await?))?;
    assert_eq!(j["letters"][0]["allowed"], false);
    assert_eq!(j["letters"][1]["allowed"], true);
    let flag = format!("{source},{foreign}");
    let j: Value = serde_json::from_str(&ok(&replay(
        &["--json", "--dry-run", "--allowed-topics", &flag],
        &only_foreign,
    )
    .await?))?;
    assert_eq!(j["replayed"], 2);

    // The DLQ topic itself is never a target; nothing is read.
    let o = replay(&["--allowed-topics", &dlq_topic], &[]).await?;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "cesctl: --allowed-topics names the dead-letter topic {dlq_topic}; a replay never writes to it\n"
        )
    );
    // Without any setting the list is ingest's default, ces.events.
    let j: Value = serde_json::from_str(&ok(&replay(&["--json", "--dry-run"], &[]).await?))?;
    assert_eq!(j["refused"], 2);
    assert!(
        j["letters"][0]["note"]
            .as_str()
            .is_some_and(|n| n.ends_with("(allowed: ces.events, from ingest's default)")),
        "{j}"
    );
    Ok(())
}

#[tokio::test]
async fn header_names_that_are_not_utf8_are_shown_and_never_replayed() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let (dlq_topic, source) = (
        ces_systest::unique("dlq-names"),
        ces_systest::unique("src-names"),
    );
    let broker = Broker::shared().await?;
    let b = broker.bootstrap();
    kafka::create_topics(&b, &[(&dlq_topic, 1), (&source, 1)]).await?;
    let with = |extra: Vec<(Vec<u8>, Option<Vec<u8>>)>, value: &[u8]| {
        let mut headers = vec![(b"trace-id".to_vec(), Some(b"t-1".to_vec()))];
        headers.extend(extra);
        headers.extend(
            dlq_headers(&source, 0, 9)
                .into_iter()
                .map(|(k, v)| (k.into_bytes(), Some(v))),
        );
        RawRecord {
            key: Some(b"s-1".to_vec()),
            value: Some(value.to_vec()),
            headers,
        }
    };
    let evil_name = b"x-evil\n  ces-dlq-reason: forged".to_vec();
    let first = kafka_wire::produce(
        &b,
        &dlq_topic,
        0,
        &[
            // 0:0: a header name that is not UTF-8.
            with(vec![(b"bad\xffname".to_vec(), Some(b"v".to_vec()))], b"v-0"),
            // 0:1: a binary header value, and a name and a value that would rewrite the terminal.
            with(
                vec![
                    (b"x-bin".to_vec(), Some(vec![0xff, 0xfe])),
                    (evil_name.clone(), Some(b"\x1b[2J".to_vec())),
                ],
                b"v-1",
            ),
        ],
    )
    .await?;
    assert_eq!(first, 0);
    let run = |cmd: &[&str]| {
        let mut a: Vec<String> = ["dlq", "--brokers", &b, "--topic", &dlq_topic]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        a.extend(cmd.iter().map(|s| (*s).to_owned()));
        let source = source.clone();
        async move {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let o = cesctl_env(&a, &[("CES_KAFKA_TOPICS", &source)]).await?;
            // Never a panic message (nor anything else) on stderr.
            assert_eq!(stderr(&o), "", "{a:?}");
            anyhow::Ok(o)
        }
    };

    let table = cells(&ok(&run(&["list"]).await?));
    assert_eq!(table.len(), 3, "{table:?}");
    assert_eq!(table[1][..3], row(&["0:0", &table[1][1], "invalid_json"]));
    let lines = jsonl(&ok(&run(&["list", "--json"]).await?));
    assert_eq!(
        lines[0]["headers"][1],
        json!({"name": null, "value": null, "unreadable": true})
    );
    assert_eq!(lines[0]["headers"][2]["name"], dlq::REASON);
    assert_eq!(lines[0]["reason"], "invalid_json");
    assert_eq!(
        lines[1]["headers"][1],
        json!({"name": "x-bin", "value": "//4=", "encoding": "base64"})
    );
    assert_eq!(
        lines[1]["headers"][2],
        json!({"name": "x-evil\n  ces-dlq-reason: forged", "value": "\u{1b}[2J", "encoding": "utf8"})
    );

    let shown = ok(&run(&["show", "0:0"]).await?);
    assert!(
        shown.contains("\n  trace-id: t-1\n  (a name that is not UTF-8; unreadable)\n  ces-dlq-reason: invalid_json\n"),
        "{shown}"
    );
    let shown = ok(&run(&["show", "0:1"]).await?);
    assert!(
        shown.contains(
            "\n  x-bin: (not UTF-8, 2 bytes, base64) //4=\n  x-evil\\n  ces-dlq-reason: forged: \\u{1b}[2J\n"
        ),
        "{shown}"
    );
    assert!(!shown.contains('\u{1b}'), "{shown}");
    let j: Value = serde_json::from_str(&ok(&run(&["show", "0:0", "--json"]).await?))?;
    assert_eq!(j["headers"][1]["unreadable"], true);

    // Replay: the record with the unreadable header is refused, the other replayed byte for byte.
    let j: Value = serde_json::from_str(&ok(&run(&["replay", "--all", "--json"]).await?))?;
    assert_eq!(
        (j["replayed"].clone(), j["refused"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        j["letters"][0]["note"],
        "a header name is not UTF-8, so that header cannot be read and the record cannot be replayed as it was"
    );
    let got = kafka::read_to_end(&b, &source, 0, Duration::from_secs(5)).await?;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(kafka::value(m), Some(&b"v-1"[..]));
    let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.as_bytes().to_vec(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        headers,
        [
            (b"trace-id".to_vec(), Some(b"t-1".to_vec())),
            (b"x-bin".to_vec(), Some(vec![0xff, 0xfe])),
            (evil_name, Some(b"\x1b[2J".to_vec())),
            (dlq::REPLAY_COUNT.as_bytes().to_vec(), Some(b"1".to_vec())),
        ]
    );
    Ok(())
}
