//! The DLQ backlog end to end: dead letters made by a real ingest raise `ces_ingest_dlq_backlog{partition}` to
//! exactly their number per partition; `cesctl dlq dismiss --offsets` of the first ones of a partition lowers it by
//! exactly those, while a dismissed dead letter behind an unhandled one stays counted; `cesctl dlq replay --all`
//! (after the cause is fixed) brings every partition to 0. `cesctl dlq stats` reports the same figures, read
//! from the handled group directly.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ces_systest::kafka::{self, Record};
use ces_systest::{Broker, Metrics, Redis, unique};
use common::{cesctl_json as cesctl, event_json};
use rdkafka::Message as _;
use serde_json::{Value, json};

const STRICT: &str = r#"{"type":"object","required":["n","currency"]}"#;
const FIXED: &str = r#"{"type":"object","required":["n"]}"#;
const DEAD: usize = 8;

/// Scrapes ingest until `ces_ingest_dlq_backlog` is `expected` for every partition (0 for those not named).
async fn wait_backlog(base: &str, expected: &BTreeMap<i32, usize>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = Metrics::scrape(base).await?;
        let got: BTreeMap<i32, usize> = (0..2)
            .map(|p| {
                let v = m.series_value("ces_ingest_dlq_backlog", &[("partition", &p.to_string())]);
                (p, v.map_or(usize::MAX, |v| v as usize))
            })
            .collect();
        let want: BTreeMap<i32, usize> = (0..2)
            .map(|p| (p, expected.get(&p).copied().unwrap_or(0)))
            .collect();
        if got == want {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "ces_ingest_dlq_backlog is {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `cesctl dlq stats --json`'s backlog per partition.
fn stats_backlog(stats: &Value) -> BTreeMap<i32, usize> {
    stats["backlog"]
        .as_array()
        .expect("backlog")
        .iter()
        .map(|b| {
            (
                b["partition"].as_i64().unwrap() as i32,
                b["backlog"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_counts_dead_letters_until_dismissed_or_replayed() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let (redis, broker) = tokio::try_join!(Redis::start(), Broker::shared())?;
    let bootstrap = broker.bootstrap();
    let topic = unique("ces.events");
    let dlq = format!("{topic}.dlq");
    let group = unique("ces-dlq-handled");
    kafka::create_topics(&bootstrap, &[(&topic, 2), (&dlq, 2)]).await?;
    let schemas = tempfile::tempdir()?;
    let schema_file = schemas.path().join("order.json");
    std::fs::write(&schema_file, STRICT)?;
    let ingest = common::ingest_process(
        &redis.url(),
        &bootstrap,
        &topic,
        &dlq,
        &[
            ("CES_SCHEMA_DIR", schemas.path().display().to_string()),
            ("CES_DLQ_BACKLOG_INTERVAL_MS", "200".to_owned()),
            ("CES_DLQ_HANDLED_GROUP", group.clone()),
        ],
    )
    .await?;
    let empty: BTreeMap<i32, usize> = [(0, 0), (1, 0)].into();
    wait_backlog(&ingest.internal, &empty).await?;

    // Events of eight sessions the strict schema rejects: eight dead letters, spread over the DLQ's partitions.
    let records: Vec<Record> = (0..DEAD)
        .map(|n| {
            let session = format!("s-{n}");
            Record::keyed(&session, event_json(&session, "order", json!({ "n": n })))
        })
        .collect();
    kafka::produce(&kafka::producer(&bootstrap)?, &topic, &records).await?;
    let dead = kafka::read_to_end(&bootstrap, &dlq, DEAD, Duration::from_secs(30)).await?;
    assert_eq!(dead.len(), DEAD);
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for m in &dead {
        offsets.entry(m.partition()).or_default().push(m.offset());
    }
    let mut expected: BTreeMap<i32, usize> = (0..2)
        .map(|p| (p, offsets.get(&p).map_or(0, Vec::len)))
        .collect();
    wait_backlog(&ingest.internal, &expected).await?;
    let m = Metrics::scrape(&ingest.internal).await?;
    assert_eq!(m.get("ces_ingest_dlq_backlog", &[]), DEAD as f64);
    assert_eq!(m.get("ces_ingest_dlq_backlog_errors_total", &[]), 0.0);

    let dlq_args = [
        "dlq",
        "--brokers",
        &bootstrap,
        "--topic",
        &dlq,
        "--handled-group",
        &group,
    ];
    let stats = cesctl(&[&dlq_args[..], &["stats", "--json"]].concat()).await?;
    assert_eq!(stats_backlog(&stats), expected);

    // The partition with the most dead letters (at least three of eight on two partitions).
    let (&p, first) = offsets.iter().max_by_key(|(_, o)| o.len()).unwrap();
    assert!(first.len() >= 3, "{offsets:?}");
    let at = |i: usize| format!("{p}:{}", first[i]);

    // Dismissing the last one alone moves nothing: the first ones are still waiting in front of it.
    let behind = cesctl(
        &[
            &dlq_args[..],
            &["dismiss", "--offsets", &at(first.len() - 1), "--json"],
        ]
        .concat(),
    )
    .await?;
    assert_eq!(behind["dismissed"], 1);
    assert_eq!(
        behind["handled"]["partitions"],
        json!([{ "partition": p, "from": first[0], "to": first[0], "behind": 1 }])
    );
    let stats = cesctl(&[&dlq_args[..], &["stats", "--json"]].concat()).await?;
    assert_eq!(stats_backlog(&stats), expected);

    // A dry run says how far it would move and commits nothing.
    let two = format!("{},{}", at(0), at(1));
    let dry = cesctl(
        &[
            &dlq_args[..],
            &["dismiss", "--offsets", &two, "--dry-run", "--json"],
        ]
        .concat(),
    )
    .await?;
    assert_eq!(dry["handled"]["committed"], false);
    assert_eq!(dry["handled"]["partitions"][0]["to"], first[2]);
    let stats = cesctl(&[&dlq_args[..], &["stats", "--json"]].concat()).await?;
    assert_eq!(stats_backlog(&stats), expected);

    // Dismissing the first two: the backlog of that partition falls by exactly two.
    let dismissed =
        cesctl(&[&dlq_args[..], &["dismiss", "--offsets", &two, "--json"]].concat()).await?;
    assert_eq!(
        dismissed["handled"]["partitions"],
        json!([{ "partition": p, "from": first[0], "to": first[2], "behind": 0 }])
    );
    *expected.get_mut(&p).unwrap() -= 2;
    wait_backlog(&ingest.internal, &expected).await?;
    let stats = cesctl(&[&dlq_args[..], &["stats", "--json"]].concat()).await?;
    assert_eq!(stats_backlog(&stats), expected);

    // The cause fixed, every dead letter replayed: nothing is left waiting, and nothing comes back.
    std::fs::write(&schema_file, FIXED)?;
    ingest.signal("HUP").await?;
    let reload_deadline = Instant::now() + Duration::from_secs(30);
    while Metrics::scrape(&ingest.internal)
        .await?
        .get("ces_ingest_schema_reloads_total", &[("result", "ok")])
        < 1.0
    {
        anyhow::ensure!(
            Instant::now() < reload_deadline,
            "the schema was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replay = cesctl(
        &[
            &dlq_args[..],
            &["replay", "--all", "--allowed-topics", &topic, "--json"],
        ]
        .concat(),
    )
    .await?;
    assert_eq!(
        (replay["replayed"].as_u64(), replay["refused"].as_u64()),
        (Some(DEAD as u64), Some(0))
    );
    let moved: BTreeMap<i64, i64> = replay["handled"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["partition"].as_i64().unwrap(), a["to"].as_i64().unwrap()))
        .collect();
    let ends: BTreeMap<i64, i64> = offsets
        .iter()
        .map(|(p, o)| (i64::from(*p), o.last().unwrap() + 1))
        .collect();
    assert_eq!(moved, ends);
    wait_backlog(&ingest.internal, &empty).await?;
    let published_deadline = Instant::now() + Duration::from_secs(30);
    while Metrics::scrape(&ingest.internal)
        .await?
        .get("ces_ingest_published_total", &[])
        < DEAD as f64
    {
        anyhow::ensure!(
            Instant::now() < published_deadline,
            "the replays were not published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = cesctl(&[&dlq_args[..], &["stats", "--json"]].concat()).await?;
    assert_eq!(stats_backlog(&stats), empty);
    let m = Metrics::scrape(&ingest.internal).await?;
    assert_eq!(m.get("ces_ingest_dlq_backlog", &[]), 0.0);
    assert_eq!(m.get("ces_ingest_dead_lettered_total", &[]), DEAD as f64);
    ingest.stop(Duration::from_secs(10)).await?;
    Ok(())
}
