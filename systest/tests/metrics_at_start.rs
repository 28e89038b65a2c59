//! Every metric family docs/operations.md lists for a process is on its `/metrics` page from the start, before any
//! traffic: counters and gauges at 0 (except the readings of Redis memory), histograms with a `_count` of 0. So a
//! dashboard or an alert on a rate sees 0 on an idle node instead of "no data", and a missing family is a bug.
//!
//! The families are read from the metric tables of docs/operations.md at run time: the `ingest` and `edge`
//! tables, plus the `both` table for each.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ces_systest::kafka;
use ces_systest::{Broker, Process, Redis, unique, workspace_binary};

/// Gauges that read a quantity of another system (Redis's memory), so their first value is not 0.
const READINGS: &[&str] = &["ces_redis_used_memory_bytes", "ces_redis_maxmemory_bytes"];

/// A family from the operations guide: its name and its `type` column.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Family {
    name: String,
    kind: String,
}

/// The families of the metric tables under `### <process>` and `### both` in the `## Metrics` section.
fn documented(process: &str) -> Vec<Family> {
    let guide = std::fs::read_to_string(ces_systest::workspace_root().join("docs/operations.md"))
        .expect("docs/operations.md");
    let metrics = guide
        .split("\n## ")
        .find(|s| s.starts_with("Metrics"))
        .expect("a Metrics section");
    let mut families = Vec::new();
    for table in metrics.split("\n### ").skip(1) {
        let title = table.lines().next().unwrap_or_default().trim();
        if title != process && title != "both" {
            continue;
        }
        for row in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`');
            let name = name.split('{').next().unwrap_or(name);
            families.push(Family {
                name: name.to_owned(),
                kind: cells[2].to_owned(),
            });
        }
    }
    assert!(
        families.len() >= 10,
        "no metric table for {process}: {families:?}"
    );
    families
}

/// One scrape: each series' value, and each family's `# TYPE`.
#[derive(Debug, Default)]
struct Page {
    series: Vec<(String, f64)>,
    types: BTreeMap<String, String>,
}

impl Page {
    async fn scrape(base: &str) -> anyhow::Result<Self> {
        let text = reqwest::get(format!("{base}/metrics"))
            .await?
            .error_for_status()?
            .text()
            .await?;
        let mut page = Page::default();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let mut words = t.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    page.types.insert(name.to_owned(), kind.to_owned());
                }
            } else if let Some((series, value)) = line.rsplit_once(' ')
                && !line.starts_with('#')
            {
                let name = series.split('{').next().unwrap_or(series);
                page.series.push((name.to_owned(), value.parse()?));
            }
        }
        Ok(page)
    }

    /// The values of the series that make up `family` (a histogram's `_count` series).
    fn values(&self, family: &Family) -> Vec<f64> {
        let name = if family.kind == "histogram" {
            format!("{}_count", family.name)
        } else {
            family.name.clone()
        };
        self.series
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .collect()
    }

    /// The documented families this page lacks (no `# TYPE` of the documented type, or no series).
    fn missing(&self, families: &[Family]) -> Vec<String> {
        families
            .iter()
            .filter(|f| self.types.get(&f.name) != Some(&f.kind) || self.values(f).is_empty())
            .map(|f| f.name.clone())
            .collect()
    }
}

/// Scrapes `base` until every family in `families` is there (a few come from a first reading of Kafka or Redis,
/// made at start), then asserts each one's value: 0 for counters, gauges (but [`READINGS`]) and histograms'
/// counts.
async fn assert_all_at_zero(process: &str, base: &str) -> anyhow::Result<()> {
    let families = documented(process);
    let deadline = Instant::now() + Duration::from_secs(15);
    let page = loop {
        let page = Page::scrape(base).await?;
        let missing = page.missing(&families);
        if missing.is_empty() {
            break page;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{process} does not export {missing:?} at start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let not_zero: Vec<(String, Vec<f64>)> = families
        .iter()
        .filter(|f| !READINGS.contains(&f.name.as_str()))
        .map(|f| (f.name.clone(), page.values(f)))
        .filter(|(_, values)| values.iter().any(|v| *v != 0.0))
        .collect();
    assert_eq!(
        not_zero,
        Vec::<(String, Vec<f64>)>::new(),
        "{process}: families not at 0 before any traffic"
    );
    Ok(())
}

#[test]
fn the_tables_are_read() {
    let ingest = documented("ingest");
    let edge = documented("edge");
    let hop = Family {
        name: "ces_hop_latency_seconds".into(),
        kind: "histogram".into(),
    };
    assert!(ingest.contains(&hop) && edge.contains(&hop));
    assert!(
        ingest
            .iter()
            .any(|f| f.name == "ces_ingest_dead_lettered_total")
    );
    assert!(!ingest.iter().any(|f| f.name.starts_with("ces_edge_")));
    assert!(
        edge.iter()
            .any(|f| f.name == "ces_edge_connections" && f.kind == "gauge")
    );
    assert!(!edge.iter().any(|f| f.name.starts_with("ces_ingest_")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_family_is_exported_at_zero_before_any_traffic() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let (redis, broker) = tokio::try_join!(Redis::start(), Broker::shared())?;
    let topic = unique("ces.events");
    let dlq = format!("{topic}.dlq");
    kafka::create_topics(&broker.bootstrap(), &[(&topic, 2), (&dlq, 2)]).await?;
    let ingest =
        common::ingest_process(&redis.url(), &broker.bootstrap(), &topic, &dlq, &[]).await?;
    let edge = Process::start_edge(
        &workspace_binary("ces-edge", "CES_EDGE_BIN")?,
        &[
            ("CES_TOKEN_SECRET", common::SECRET.to_owned()),
            ("CES_REGISTER_OPEN", "true".to_owned()),
            ("CES_REDIS_URL", redis.url()),
            ("CES_NODE_ID", "edge-a".to_owned()),
            ("CES_DRAIN_DELAY_MS", "0".to_owned()),
            ("CES_DRAIN_WINDOW_MS", "0".to_owned()),
        ],
    )
    .await?;
    assert_all_at_zero("ingest", &ingest.internal).await?;
    assert_all_at_zero("edge", &edge.internal).await?;
    edge.stop(Duration::from_secs(10)).await?;
    ingest.stop(Duration::from_secs(10)).await?;
    Ok(())
}
