//! End-to-end tests of `cesctl dlq ...`: the real binary against the run's shared Apache Kafka broker
//! ([`Broker::shared`]), each test on topics of its own.
//!
//! Dead letters are seeded by producing records with the `ces-dlq-*` headers directly, as ingest would, onto
//! fixed DLQ partitions so their coordinates are known. Outputs are asserted cell by cell (table cells are
//! separated by two or more spaces) or field by field (JSON), and replays by reading the source topic back.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{cells, cesctl, cesctl_env, jsonl, ok, row, stderr};

use ces_protocol::dlq;
use ces_systest::Broker;
use ces_systest::kafka::{self, Record};
use rdkafka::Message as _;
use rdkafka::message::{Headers as _, OwnedMessage};
use serde_json::{Value, json};

/// RFC 3339 UTC with milliseconds, `age` ago, as ingest writes `ces-dlq-failed-at`.
fn ago(age: Duration) -> String {
    humantime::format_rfc3339_millis(SystemTime::now() - age).to_string()
}

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// A dead letter on DLQ partition `partition`, for a record read from `source` at `sp:so`.
#[allow(clippy::too_many_arguments)]
fn dead_letter(
    partition: i32,
    source: &str,
    sp: i32,
    so: i64,
    reason: &str,
    detail: &str,
    failed_at: &str,
    key: &str,
    value: &[u8],
    extra: &[(&str, &str)],
) -> Record {
    let mut headers: Vec<(String, Vec<u8>)> = vec![("trace-id".into(), b"t-1".to_vec())];
    headers.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())),
    );
    for (k, v) in [
        (dlq::REASON, reason.to_owned()),
        (dlq::DETAIL, detail.to_owned()),
        (dlq::SOURCE_TOPIC, source.to_owned()),
        (dlq::SOURCE_PARTITION, sp.to_string()),
        (dlq::SOURCE_OFFSET, so.to_string()),
        (dlq::FAILED_AT, failed_at.to_owned()),
    ] {
        headers.push((k.to_owned(), v.into_bytes()));
    }
    Record {
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.to_vec()),
        partition: Some(partition),
        headers,
    }
}

/// On the shared broker, creates `dlq` (2 partitions) and `source` (2 partitions) and produces `records` to `dlq`.
async fn seeded(dlq_topic: &str, source: &str, records: &[Record]) -> anyhow::Result<Broker> {
    ces_systest::init_logs();
    let broker = Broker::shared().await?;
    kafka::create_topics(&broker.bootstrap(), &[(dlq_topic, 2), (source, 2)]).await?;
    let producer = kafka::producer(&broker.bootstrap())?;
    kafka::produce(&producer, dlq_topic, records).await?;
    Ok(broker)
}

/// The seed most tests use: three dead letters on partition 0 of different ages and reasons, one on
/// partition 1 whose value was omitted and whose value is not UTF-8 anyway.
struct Seed {
    times: [String; 4],
    records: Vec<Record>,
}

fn seed(source: &str) -> Seed {
    let times = [ago(10 * MIN), ago(3 * HOUR), ago(3 * DAY), ago(2 * DAY)];
    let records = vec![
        dead_letter(
            0,
            source,
            1,
            5,
            "invalid_json",
            "expected value at line 1 column 1",
            &times[0],
            "s-1",
            b"not json",
            &[],
        ),
        dead_letter(
            0,
            source,
            0,
            9,
            "schema_violation",
            "/data/order: \"x\" is not of type \"integer\", and the detail goes on past the table width",
            &times[1],
            "s-2",
            br#"{"session_id":"s-2","type":"order.updated","data":{"order":"x"}}"#,
            &[],
        ),
        dead_letter(
            0,
            source,
            1,
            7,
            "invalid_json",
            "trailing characters at line 1 column 3",
            &times[2],
            "s-1",
            b"{}x",
            &[],
        ),
        dead_letter(
            1,
            source,
            0,
            2,
            "too_large",
            "value is 300000 bytes, the limit is 262144",
            &times[3],
            "s-3",
            &[0xff, 0xfe],
            &[(dlq::VALUE_OMITTED, "300000")],
        ),
    ];
    Seed { times, records }
}

#[tokio::test]
async fn list_table_json_and_filters() -> anyhow::Result<()> {
    let (dlq_topic, source) = (
        ces_systest::unique("dlq-list"),
        ces_systest::unique("src-list"),
    );
    let s = seed(&source);
    let broker = seeded(&dlq_topic, &source, &s.records).await?;
    let b = broker.bootstrap();
    let base = ["dlq", "--brokers", &b, "--topic", &dlq_topic, "list"];
    let list = |extra: &'static [&'static str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        async move { cesctl(&args).await }
    };
    let header = row(&["DLQ", "FAILED AT", "REASON", "SOURCE", "DETAIL", "VALUE"]);
    let src = |p: &str| format!("{source} {p}");

    let out = ok(&list(&[]).await?);
    assert_eq!(
        cells(&out),
        vec![
            header.clone(),
            row(&[
                "0:0",
                &s.times[0],
                "invalid_json",
                &src("1:5"),
                "expected value at line 1 column 1",
                "not json"
            ]),
            row(&[
                "0:1",
                &s.times[1],
                "schema_violation",
                &src("0:9"),
                "/data/order: \"x\" is not of type \"intege…",
                "{\"session_id\":\"s-2\",\"type\":\"order.updat…"
            ]),
            row(&[
                "0:2",
                &s.times[2],
                "invalid_json",
                &src("1:7"),
                "trailing characters at line 1 column 3",
                "{}x"
            ]),
            row(&[
                "1:0",
                &s.times[3],
                "too_large",
                &src("0:2"),
                "value is 300000 bytes, the limit is 262…",
                "<omitted, 300000 bytes>"
            ]),
        ]
    );

    let lines = jsonl(&ok(&list(&["--json"]).await?));
    assert_eq!(lines.len(), 4);
    let first = &lines[0];
    assert_eq!(first["partition"], 0);
    assert_eq!(first["offset"], 0);
    assert_eq!(first["reason"], "invalid_json");
    assert_eq!(first["detail"], "expected value at line 1 column 1");
    assert_eq!(first["failed_at"], s.times[0].as_str());
    assert_eq!(first["source_topic"], source.as_str());
    assert_eq!(first["source_partition"], 1);
    assert_eq!(first["source_offset"], 5);
    assert_eq!(first["replay_count"], 0);
    assert_eq!(first["key"], "s-1");
    assert_eq!(first["key_encoding"], "utf8");
    assert_eq!(first["value"], "not json");
    assert_eq!(first["value_encoding"], "utf8");
    assert_eq!(first["headers"].as_array().map(Vec::len), Some(7));
    assert_eq!(
        first["headers"][0],
        json!({"name": "trace-id", "value": "t-1", "encoding": "utf8"})
    );
    assert_eq!(
        first["headers"][1],
        json!({"name": "ces-dlq-reason", "value": "invalid_json", "encoding": "utf8"})
    );
    let last = &lines[3];
    assert_eq!(
        (last["partition"].clone(), last["offset"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(last["value"], "//4=");
    assert_eq!(last["value_encoding"], "base64");
    assert_eq!(last["value_omitted"], 300_000);

    let coords = |out: &str| -> Vec<String> {
        cells(out)
            .into_iter()
            .skip(1)
            .map(|r| r[0].clone())
            .collect()
    };
    let out = ok(&list(&["--reason", "invalid_json"]).await?);
    assert_eq!(coords(&out), ["0:0", "0:2"]);
    let out = ok(&list(&["--limit", "2"]).await?);
    assert_eq!(coords(&out), ["0:0", "0:1"]);
    let out = ok(&list(&["--since", "1h"]).await?);
    assert_eq!(coords(&out), ["0:0"]);
    let out = ok(&list(&["--since", "1d"]).await?);
    assert_eq!(coords(&out), ["0:0", "0:1"]);
    let mut args = base.to_vec();
    args.extend_from_slice(&["--since", &s.times[3], "--json"]);
    let lines = jsonl(&ok(&cesctl(&args).await?));
    let got: Vec<(Value, Value)> = lines
        .iter()
        .map(|l| (l["partition"].clone(), l["offset"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!(0), json!(0)),
            (json!(0), json!(1)),
            (json!(1), json!(0))
        ]
    );
    let out = ok(&list(&["--reason", "missing_type"]).await?);
    assert_eq!(out, "no dead letters\n");

    let bad = list(&["--reason", "nope"]).await?;
    assert_eq!(bad.status.code(), Some(2));
    let err = stderr(&bad);
    assert!(
        err.contains("invalid value 'nope' for '--reason <REASON>'"),
        "{err}"
    );
    assert!(
        err.contains("missing_value") && err.contains("processing_failed"),
        "{err}"
    );
    let bad = list(&["--since", "yesterday"]).await?;
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("an age such as 30s, 15m, 2h, 7d"));
    assert!(bad.stdout.is_empty());
    Ok(())
}

#[tokio::test]
async fn show_one_dead_letter() -> anyhow::Result<()> {
    let (dlq_topic, source) = (
        ces_systest::unique("dlq-show"),
        ces_systest::unique("src-show"),
    );
    let s = seed(&source);
    let broker = seeded(&dlq_topic, &source, &s.records).await?;
    let b = broker.bootstrap();
    let show = |coord: &str, json: bool| {
        let mut args = vec!["dlq", "show", coord, "--brokers", &b, "--topic", &dlq_topic];
        if json {
            args.push("--json");
        }
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cesctl(&args).await
        }
    };

    // Offset 1 sits in the middle of the batch the seed was produced in.
    let out = ok(&show("0:1", false).await?);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("dead letter 0:1"));
    assert!(lines.next().is_some_and(|l| l.starts_with("timestamp: ")));
    let rest: Vec<&str> = lines.collect();
    let value = r#"{"session_id":"s-2","type":"order.updated","data":{"order":"x"}}"#;
    assert_eq!(
        rest,
        [
            "headers:".to_owned(),
            "  trace-id: t-1".to_owned(),
            "  ces-dlq-reason: schema_violation".to_owned(),
            "  ces-dlq-detail: /data/order: \"x\" is not of type \"integer\", and the detail goes on past the table width".to_owned(),
            format!("  ces-dlq-source-topic: {source}"),
            "  ces-dlq-source-partition: 0".to_owned(),
            "  ces-dlq-source-offset: 9".to_owned(),
            format!("  ces-dlq-failed-at: {}", s.times[1]),
            "key: s-2".to_owned(),
            format!("value ({} bytes):", value.len()),
            value.to_owned(),
        ]
    );

    let j: Value = serde_json::from_str(&ok(&show("1:0", true).await?))?;
    assert_eq!(j["reason"], "too_large");
    assert_eq!(j["value"], "//4=");
    assert_eq!(j["value_omitted"], 300_000);
    let j: Value = serde_json::from_str(&ok(&show("0:2", true).await?))?;
    assert_eq!(j["value"], "{}x");
    assert_eq!(j["source_offset"], 7);

    for bad in ["0", "a:1", "0:-1", "1:2:3"] {
        let o = show(bad, false).await?;
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("expected <partition>:<offset> such as 0:42"));
    }
    let o = show("0:99", false).await?;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "cesctl: no dead letter at 0:99; partition 0 holds offsets 0..=2\n"
    );
    assert!(o.stdout.is_empty());
    let o = show("1:1", false).await?;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "cesctl: no dead letter at 1:1; partition 1 holds offsets 0..=0\n"
    );
    let o = show("7:0", false).await?;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("cesctl: {dlq_topic} has no partition 7; it has partitions 0..=1\n")
    );
    Ok(())
}

#[tokio::test]
async fn stats_by_reason_and_age() -> anyhow::Result<()> {
    let (dlq_topic, source) = (
        ces_systest::unique("dlq-stats"),
        ces_systest::unique("src-stats"),
    );
    let s = seed(&source);
    let broker = seeded(&dlq_topic, &source, &s.records).await?;
    let b = broker.bootstrap();
    // The topic from the environment, as operators set it.
    let env = [("CES_DLQ_TOPIC", dlq_topic.as_str())];

    let out = ok(&cesctl_env(&["dlq", "stats", "--brokers", &b], &env).await?);
    assert_eq!(
        cells(&out),
        vec![
            row(&[
                "REASON", "COUNT", "OLDEST", "NEWEST", "<1H", "1H-24H", ">=24H"
            ]),
            row(&["invalid_json", "2", &s.times[2], &s.times[0], "1", "0", "1"]),
            row(&[
                "schema_violation",
                "1",
                &s.times[1],
                &s.times[1],
                "0",
                "1",
                "0"
            ]),
            row(&["too_large", "1", &s.times[3], &s.times[3], "0", "0", "1"]),
            row(&["total", "4", &s.times[2], &s.times[0], "1", "1", "2"]),
            vec![],
            // Nothing replayed or dismissed yet: the whole topic is the backlog.
            row(&["PARTITION", "HANDLED TO", "END", "BACKLOG"]),
            row(&["0", "-", "3", "3"]),
            row(&["1", "-", "1", "1"]),
            row(&["4 dead letter(s) not yet replayed or dismissed (group ces-dlq-handled)"]),
        ]
    );

    let j: Value = serde_json::from_str(&ok(&cesctl_env(
        &["dlq", "stats", "--json", "--brokers", &b],
        &env,
    )
    .await?))?;
    assert_eq!(j["topic"], dlq_topic.as_str());
    assert_eq!(j["count"], 4);
    assert_eq!(j["oldest"], s.times[2].as_str());
    assert_eq!(j["newest"], s.times[0].as_str());
    assert_eq!(
        j["age"],
        json!({"under_1h": 1, "under_24h": 1, "older": 2, "unknown": 0})
    );
    assert_eq!(j["by_reason"]["invalid_json"]["count"], 2);
    assert_eq!(j["by_reason"]["schema_violation"]["age"]["under_24h"], 1);
    assert_eq!(j["by_reason"]["too_large"]["newest"], s.times[3].as_str());
    assert_eq!(j["by_reason"].as_object().map(|o| o.len()), Some(3));
    Ok(())
}

#[tokio::test]
async fn empty_topic_terminates() -> anyhow::Result<()> {
    let (dlq_topic, source) = (
        ces_systest::unique("dlq-empty"),
        ces_systest::unique("src-empty"),
    );
    let broker = seeded(&dlq_topic, &source, &[]).await?;
    let b = broker.bootstrap();
    let args = ["dlq", "--brokers", &b, "--topic", &dlq_topic];
    let run = |cmd: &'static [&'static str]| {
        let mut a = args.to_vec();
        a.extend_from_slice(cmd);
        async move { cesctl(&a).await }
    };
    assert_eq!(ok(&run(&["list"]).await?), "no dead letters\n");
    assert_eq!(ok(&run(&["list", "--json"]).await?), "");
    assert_eq!(
        ok(&run(&["stats"]).await?),
        format!(
            "{dlq_topic} is empty\n\nPARTITION  HANDLED TO  END  BACKLOG\n0          -           0    0\n\
             1          -           0    0\n0 dead letter(s) not yet replayed or dismissed (group ces-dlq-handled)\n"
        )
    );
    assert_eq!(
        ok(&run(&["replay", "--all"]).await?),
        "no dead letter matches\n"
    );
    let o = run(&["show", "0:0"]).await?;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("cesctl: no dead letter at 0:0; partition 0 of {dlq_topic} is empty\n")
    );
    Ok(())
}

/// Headers of a record as (name, text) pairs.
fn headers(m: &OwnedMessage) -> Vec<(String, String)> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (h.key.to_owned(), v.into_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn replay_reproduces_to_the_source_topic() -> anyhow::Result<()> {
    let (dlq_topic, source) = (
        ces_systest::unique("dlq-replay"),
        ces_systest::unique("src-replay"),
    );
    let now = ago(Duration::ZERO);
    let records = vec![
        dead_letter(
            0,
            &source,
            1,
            5,
            "invalid_json",
            "d",
            &now,
            "k-1",
            b"v-1",
            &[("x-app", "a")],
        ),
        dead_letter(
            0,
            &source,
            0,
            6,
            "invalid_json",
            "d",
            &now,
            "k-2",
            b"v-2",
            &[(dlq::REPLAY_COUNT, "3")],
        ),
        dead_letter(
            0,
            &source,
            1,
            7,
            "too_large",
            "d",
            &now,
            "k-3",
            b"",
            &[(dlq::VALUE_OMITTED, "300000")],
        ),
        dead_letter(
            0,
            &source,
            0,
            8,
            "schema_violation",
            "d",
            &now,
            "k-4",
            b"v-4",
            &[(dlq::REPLAY_COUNT, "1")],
        ),
    ];
    let broker = seeded(&dlq_topic, &source, &records).await?;
    let b = broker.bootstrap();
    // The source topic is ingest's input topic, as the environment ingest shares with operators says.
    let replay = |extra: &[&str]| {
        let mut a: Vec<String> = ["dlq", "replay", "--brokers", &b, "--topic", &dlq_topic]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        let source = source.clone();
        async move {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            cesctl_env(&a, &[("CES_KAFKA_TOPICS", &source)]).await
        }
    };
    let source_records = || kafka::read_to_end(&b, &source, 0, Duration::from_secs(5));

    // Without a selector nothing is read, let alone produced.
    let o = replay(&[]).await?;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--reason <REASON>|--offsets <OFFSETS>|--since <SINCE>|--all"),
        "{}",
        stderr(&o)
    );
    let o = replay(&["--all", "--reason", "invalid_json"]).await?;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // A dry run reports everything and produces nothing.
    let j: Value = serde_json::from_str(&ok(&replay(&["--all", "--dry-run", "--json"]).await?))?;
    assert_eq!(j["dry_run"], true);
    assert_eq!(
        (j["replayed"].clone(), j["refused"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(
        j["by_reason"],
        json!({
            "invalid_json": {"replayed": 1, "refused": 1, "failed": 0},
            "schema_violation": {"replayed": 1, "refused": 0, "failed": 0},
            "too_large": {"replayed": 0, "refused": 1, "failed": 0},
        })
    );
    let results: Vec<&str> = j["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        ["would_replay", "refused", "refused", "would_replay"]
    );
    assert!(source_records().await?.is_empty());

    // By reason: one replayed, the one already replayed 3 times refused.
    let out = ok(&replay(&["--reason", "invalid_json"]).await?);
    let src = |p: &str| format!("{source} {p}");
    assert_eq!(
        cells(&out),
        vec![
            row(&[
                "DLQ", "REASON", "SOURCE", "TARGET", "ALLOWED", "RESULT", "NOTE"
            ]),
            row(&[
                "0:0",
                "invalid_json",
                &src("1:5"),
                &src("1"),
                "yes",
                "replayed",
                &format!("now at {source} 1:0, replay 1")
            ]),
            row(&[
                "0:1",
                "invalid_json",
                &src("0:6"),
                &src("0"),
                "yes",
                "refused",
                "replayed 3 times already (--max-replays 3)"
            ]),
            vec![],
            row(&["REASON", "REPLAYED", "REFUSED", "FAILED"]),
            row(&["invalid_json", "1", "1", "0"]),
            row(&["total", "1", "1", "0"]),
            // 0:0 replayed; 0:1 refused, so it stops the handled offset at 1.
            row(&["group ces-dlq-handled: partition 0 handled up to offset 1 (was 0)"]),
        ]
    );
    let got = source_records().await?;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.partition(), 1);
    assert_eq!(m.key(), Some(&b"k-1"[..]));
    assert_eq!(kafka::value(m), Some(&b"v-1"[..]));
    assert_eq!(
        headers(m),
        [
            ("trace-id".to_owned(), "t-1".to_owned()),
            ("x-app".to_owned(), "a".to_owned()),
            ("ces-replay-count".to_owned(), "1".to_owned()),
        ]
    );

    // By offset: the omitted value is refused with its source coordinates; a replay count is replaced.
    let j: Value = serde_json::from_str(&ok(&replay(&["--offsets", "0:2,0:3", "--json"]).await?))?;
    assert_eq!(
        (j["replayed"].clone(), j["refused"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(j["letters"][0]["result"], "refused");
    assert_eq!(
        j["letters"][0]["note"],
        format!("value omitted from the DLQ (300000 bytes); the original is at {source} 1:7")
    );
    assert_eq!(j["letters"][1]["result"], "replayed");
    assert_eq!(j["letters"][1]["replay_count"], 2);
    // 0:1 (refused before) and 0:2 are not handled: the replayed 0:3 waits behind them.
    assert_eq!(
        j["handled"]["partitions"],
        json!([{"partition": 0, "from": 1, "to": 1, "behind": 1}])
    );
    assert_eq!(j["letters"][1]["target_partition"], 0);
    let got = source_records().await?;
    assert_eq!(got.len(), 2);
    let m = got
        .iter()
        .find(|m| m.partition() == 0)
        .expect("replay on 0");
    assert_eq!(m.key(), Some(&b"k-4"[..]));
    assert_eq!(kafka::value(m), Some(&b"v-4"[..]));
    assert_eq!(kafka::header(m, dlq::REPLAY_COUNT).as_deref(), Some("2"));
    let names: Vec<String> = headers(m).into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["trace-id", "ces-replay-count"]);

    // A higher --max-replays lets the looped one through.
    let out = replay(&["--offsets", "0:1", "--max-replays", "4", "--json"]).await?;
    let j: Value = serde_json::from_str(&ok(&out))?;
    assert_eq!(j["letters"][0]["replay_count"], 4);
    assert_eq!(source_records().await?.len(), 3);

    let o = replay(&["--offsets", "0:9"]).await?;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "cesctl: no dead letter at 0:9; partition 0 holds offsets 0..=3\n"
    );
    assert_eq!(source_records().await?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn broker_down_fails_fast_naming_the_brokers() -> anyhow::Result<()> {
    // A port nothing listens on.
    let brokers = format!("127.0.0.1:{}", ces_systest::free_port());
    let commands: [&[&str]; 4] = [
        &["list"],
        &["stats", "--json"],
        &["show", "0:0"],
        &["replay", "--all"],
    ];
    // Concurrently: each waits out the connection timeout.
    let runs = commands.map(|cmd| {
        let mut args = vec!["dlq", "--brokers", &brokers];
        args.extend_from_slice(cmd);
        async move {
            let started = Instant::now();
            let o = cesctl(&args).await;
            (cmd, started.elapsed(), o)
        }
    });
    for (cmd, took, o) in futures::future::join_all(runs).await {
        let o = o?;
        assert!(took < Duration::from_secs(30), "{cmd:?} took {took:?}");
        assert_eq!(o.status.code(), Some(1), "{cmd:?}");
        let err = stderr(&o);
        assert!(
            err.starts_with(&format!("cesctl: cannot reach Kafka at {brokers}: ")),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(o.stdout.is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn missing_topic_is_named() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let broker = Broker::shared().await?;
    let b = broker.bootstrap();
    let topic = ces_systest::unique("no-such-dlq");
    let o = cesctl(&["dlq", "list", "--brokers", &b, "--topic", &topic]).await?;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("cesctl: topic {topic} does not exist at {b}\n")
    );
    // The default topic name is used without --topic.
    let o = cesctl(&["dlq", "stats", "--brokers", &b]).await?;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("cesctl: topic ces.events.dlq does not exist at {b}\n")
    );
    Ok(())
}
