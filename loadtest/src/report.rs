//! What a run writes: `<out>/<name>.json` (every figure, with the command that produced it), `<out>/<name>.svg`
//! (latency over time and latency CDF), and a one-screen summary on stdout.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::prelude::*;
use serde::Serialize;

use crate::stats::{Quantiles, SecondStats};

/// Every figure of a run. Fields a scenario does not measure are `null`.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The command line that produced this report.
    pub command: String,
    /// When the run ended (RFC 3339, UTC).
    pub date: String,
    /// Sessions registered.
    pub sessions: u64,
    /// Connections held.
    pub connections: u64,
    /// Target records per second (0: flat out).
    pub rate_target: u64,
    /// Seconds of producing (or holding).
    pub duration_s: f64,
    /// Records the broker acknowledged.
    pub produced: u64,
    /// Records the broker refused.
    pub produce_errors: u64,
    /// Distinct events received by the clients.
    pub delivered: u64,
    /// Acknowledged by the broker but never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicated: u64,
    /// Received after a later event of the same session.
    pub out_of_order: u64,
    /// Produced per second over the producing window.
    pub produced_per_s: f64,
    /// Delivered per second, from the first to the last delivery.
    pub delivered_per_s: f64,
    /// Producer → client latency.
    #[serde(flatten)]
    pub latency: Quantiles,
    /// Summed RSS of the edges at the end (bytes).
    pub edge_rss_bytes: Option<u64>,
    /// RSS growth of the edges divided by the connections held (bytes).
    pub rss_per_conn_bytes: Option<u64>,
    /// CPU of the edges over the run, percent of one core.
    pub edge_cpu_percent: Option<f64>,
    /// Each edge's connections and memory (`hold`); empty when not measured per edge.
    pub edges: Vec<EdgeFigures>,
    /// Load-generator processes that held the sockets: 1 when this process held them all, more when they were
    /// spread over worker processes (see `--per-process`); `null` for scenarios without clients.
    pub client_processes: Option<u64>,
    /// Sessions that resumed after losing their socket.
    pub resumed: Option<u64>,
    /// From the edge being stopped until the last of them resumed (s).
    pub resume_s: Option<f64>,
    /// From the edge being stopped until half of them had resumed (s).
    pub resume_p50_s: Option<f64>,
    /// From the edge being stopped until 99 % of them had resumed (s).
    pub resume_p99_s: Option<f64>,
    /// How much the machine's TCP counters of a connection storm grew from the stop to the end (`storm`; see
    /// `procfs::TCP_STORM_COUNTERS`): connects a full accept queue dropped, and SYNs sent again because of them.
    /// Machine-wide: anything else on the machine counts too.
    pub tcp_counters: std::collections::BTreeMap<String, u64>,
    /// Sockets that dropped during the run.
    pub disconnects: u64,
    /// Handshakes refused or failed (then retried).
    pub refused: u64,
    /// `resumed` frames that named a loss.
    pub resumed_lost: u64,
    /// The raw limit this run is compared with, per second (`redis-benchmark` PUBLISH, raw WebSocket push).
    pub raw_limit_per_s: Option<f64>,
    /// The measured rate divided by the raw limit.
    pub ratio_to_raw: Option<f64>,
    /// Mean latency per hop of the pipeline over the run (ms), from the services' histograms: `kafka_to_ingest`,
    /// `ingest_to_redis`, `redis_to_edge`, `edge_to_socket`, and `e2e` (record timestamp → frame flushed).
    pub hops_mean_ms: std::collections::BTreeMap<String, f64>,
    /// CPU over the run per process of the stack (percent of one core; the machine has 2 cores = 200 %).
    pub cpu_percent: std::collections::BTreeMap<String, f64>,
    /// CPU time per delivered event, µs, per process of the stack over the same window (from the first event
    /// produced, connection set-up excluded, to the last delivered), and `ces`: edges + ingest + Redis together,
    /// CES's own work without the broker and the load generator ([`cpu_us_per_event`]).
    pub cpu_us_per_event: std::collections::BTreeMap<String, f64>,
    /// Time the threads of each process of `cpu_percent` waited on a run queue for a CPU over the same window, summed
    /// over the threads, in percent of one wall-clock second (it can exceed 100 when several threads wait at once):
    /// latency on a saturated machine that is scheduling delay shows here. From `/proc/<pid>/task/<tid>/schedstat`;
    /// a thread that exited during the window counts nothing (the kernel keeps no total for exited threads, so a
    /// value is then a lower bound), one born in it counts all its waiting. A process whose threads could not be
    /// read is absent.
    pub runq_wait_percent: std::collections::BTreeMap<String, f64>,
    /// Timeslices run per second over the same window, summed over the threads of each process of
    /// `runq_wait_percent` (how often its threads went on a CPU).
    pub timeslices_per_s: std::collections::BTreeMap<String, f64>,
    /// Redis's time per publish function call over the run (`INFO commandstats`, µs; `ingest` only). A call
    /// publishes up to 64 events.
    pub redis_usec_per_fcall: Option<f64>,
    /// Redis's time in the publish function per event over the run (`INFO commandstats`, µs; `ingest` only).
    pub redis_usec_per_event: Option<f64>,
    /// Id of the broker whose settings `broker_config` lists (the bootstrap broker); `null` when not read.
    pub broker_id: Option<i32>,
    /// Brokers in the cluster's metadata; `null` when not read.
    pub broker_count: Option<u64>,
    /// What the broker's own configuration set (`server.properties`, dynamic config), as the broker reports it:
    /// every entry not at Kafka's default and not sensitive. `null` when the scenario involves no broker (`idle`,
    /// `raw-ws`) or the broker did not answer.
    pub broker_config: Option<std::collections::BTreeMap<String, String>>,
    /// The scenario's own targets that this run missed, each with the figure that shows it (`hold`: every
    /// connection held, RSS per connection; `storm`: every moving session resumed within the deadline). A run that
    /// missed one exits with status 4.
    pub targets_missed: Vec<String>,
    /// Scenario-specific notes.
    pub notes: Vec<String>,
    /// Latency per second of the run.
    pub seconds: Vec<SecondStats>,
    /// Latency CDF: (ms, fraction at or below).
    #[serde(skip)]
    pub cdf: Vec<(f64, f64)>,
}

/// One edge's connections and resident memory over a `hold` run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EdgeFigures {
    /// `host:port` of its internal listener (as given in `--edges`).
    pub edge: String,
    /// Its process id.
    pub pid: u32,
    /// WebSockets it held at the end of the stream (its `ces_edge_connections`).
    pub connections: u64,
    /// RSS after the sessions were registered, before any socket was opened.
    pub rss_before_bytes: u64,
    /// RSS with every socket open, before the stream started.
    pub rss_held_bytes: u64,
    /// RSS at the end of the stream, sockets still open.
    pub rss_after_bytes: u64,
    /// (`rss_after_bytes` - `rss_before_bytes`) / `connections`.
    pub rss_per_conn_bytes: u64,
}

impl EdgeFigures {
    /// The RSS growth per connection from `rss_before_bytes` to `rss_after_bytes` (0 without connections).
    pub fn per_conn(&self) -> u64 {
        self.rss_after_bytes.saturating_sub(self.rss_before_bytes) / self.connections.max(1)
    }
}

impl Report {
    /// A report for `scenario`, stamped with this process's command line and the current time.
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            date: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Writes `<dir>/<name>.json` and, when there are latencies, `<dir>/<name>.svg`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let json = dir.join(format!("{name}.json"));
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("write {}", json.display()))?;
        let mut written = vec![json];
        if !self.seconds.is_empty() {
            let svg = dir.join(format!("{name}.svg"));
            plot(self, &svg).with_context(|| format!("plot {}", svg.display()))?;
            written.push(svg);
        }
        Ok(written)
    }

    /// The one-screen summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} — {} sessions, {} connections, rate {} for {:.0} s\n",
            self.scenario,
            self.sessions,
            self.connections,
            if self.rate_target == 0 {
                "flat out".to_owned()
            } else {
                format!("{}/s", self.rate_target)
            },
            self.duration_s
        );
        if self.produced > 0 || self.delivered > 0 {
            s += &format!(
                "  produced {:>10}   ({:.0}/s, {} refused by the broker)\n  delivered {:>9}   ({:.0}/s)\n  \
                 lost {:>14}   duplicated {}   out of order {}\n",
                self.produced,
                self.produced_per_s,
                self.produce_errors,
                self.delivered,
                self.delivered_per_s,
                self.lost,
                self.duplicated,
                self.out_of_order
            );
        }
        if self.latency.count > 0 {
            let q = &self.latency;
            s += &format!(
                "  latency ms   p50 {:.2}   p90 {:.2}   p99 {:.2}   p99.9 {:.2}   max {:.2}\n",
                q.p50_ms, q.p90_ms, q.p99_ms, q.p999_ms, q.max_ms
            );
        }
        if let Some(rss) = self.edge_rss_bytes {
            s += &format!("  edge RSS {:.1} MiB", rss as f64 / 1048576.0);
            if let Some(per) = self.rss_per_conn_bytes {
                s += &format!("   per connection {per} bytes");
            }
            if let Some(cpu) = self.edge_cpu_percent {
                s += &format!("   edge CPU {cpu:.0}% of a core");
            }
            s += "\n";
        }
        for e in &self.edges {
            s += &format!(
                "  edge {} (pid {}): {} connections, RSS {:.1} -> {:.1} -> {:.1} MiB, {} bytes per connection\n",
                e.edge,
                e.pid,
                e.connections,
                e.rss_before_bytes as f64 / 1048576.0,
                e.rss_held_bytes as f64 / 1048576.0,
                e.rss_after_bytes as f64 / 1048576.0,
                e.rss_per_conn_bytes
            );
        }
        if let Some(n) = self.client_processes.filter(|&n| n > 1) {
            s += &format!("  clients held by {n} worker processes\n");
        }
        if let Some(resumed) = self.resumed {
            s += &format!(
                "  resumed {resumed} sessions in {:.2} s (half in {:.2} s, 99 % in {:.2} s)   (disconnects {}, refused \
                 handshakes {}, losses named {})\n",
                self.resume_s.unwrap_or(f64::NAN),
                self.resume_p50_s.unwrap_or(f64::NAN),
                self.resume_p99_s.unwrap_or(f64::NAN),
                self.disconnects,
                self.refused,
                self.resumed_lost
            );
        }
        s += &summary_line(
            "TCP during the storm",
            &self
                .tcp_counters
                .iter()
                .map(|(k, &v)| (k.clone(), v as f64))
                .collect(),
            |n| format!("{n:.0}"),
        );
        if let (Some(raw), Some(ratio)) = (self.raw_limit_per_s, self.ratio_to_raw) {
            s += &format!("  raw limit {raw:.0}/s   ratio {:.0}%\n", ratio * 100.0);
        }
        s += &summary_line("CPU (% of one core)", &self.cpu_percent, |pct| {
            format!("{pct:.0}%")
        });
        s += &summary_line("CPU µs per delivered event", &self.cpu_us_per_event, |us| {
            format!("{us:.1}")
        });
        s += &summary_line(
            "run-queue wait (% of a second)",
            &self.runq_wait_percent,
            |pct| format!("{pct:.0}%"),
        );
        s += &summary_line("mean ms per hop", &self.hops_mean_ms, |ms| {
            format!("{ms:.2}")
        });
        s += &self.broker_line();
        for note in &self.notes {
            s += &format!("  note: {note}\n");
        }
        for missed in &self.targets_missed {
            s += &format!("  TARGET MISSED: {missed}\n");
        }
        s
    }

    /// `  broker: <n> node(s), id <id>: <k> settings from its config (see JSON)` when the broker's settings were read.
    fn broker_line(&self) -> String {
        let Some(config) = &self.broker_config else {
            return String::new();
        };
        let nodes = match self.broker_count {
            Some(1) => "1 node".to_owned(),
            Some(n) => format!("{n} nodes"),
            None => "? nodes".to_owned(),
        };
        let id = self
            .broker_id
            .map_or(String::new(), |id| format!(", id {id}"));
        format!(
            "  broker: {nodes}{id}: {} settings from its config (see JSON)\n",
            config.len()
        )
    }
}

/// `  <title>: name value   name value ...` for a non-empty map, nothing for an empty one.
/// The processes whose CPU is CES's own work per event: everything but the broker and the load generator.
pub const CES_PROCESSES: [&str; 3] = ["edges", "ingest", "redis"];

/// CPU µs per delivered event for each process of `cpu_seconds` and for [`CES_PROCESSES`] together (`ces`, when
/// all three were measured); empty when nothing was delivered.
pub fn cpu_us_per_event(
    cpu_seconds: &std::collections::BTreeMap<String, f64>,
    delivered: u64,
) -> std::collections::BTreeMap<String, f64> {
    if delivered == 0 {
        return Default::default();
    }
    let per_event = |secs: f64| secs * 1e6 / delivered as f64;
    let mut out: std::collections::BTreeMap<String, f64> = cpu_seconds
        .iter()
        .map(|(name, secs)| (name.clone(), per_event(*secs)))
        .collect();
    let own: Option<f64> = CES_PROCESSES
        .iter()
        .map(|p| cpu_seconds.get(*p).copied())
        .sum();
    if let Some(own) = own {
        out.insert("ces".to_owned(), per_event(own));
    }
    out
}

fn summary_line(
    title: &str,
    values: &std::collections::BTreeMap<String, f64>,
    show: impl Fn(f64) -> String,
) -> String {
    if values.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = values
        .iter()
        .map(|(name, v)| format!("{name} {}", show(*v)))
        .collect();
    format!("  {title}: {}\n", parts.join("   "))
}

/// Two charts in one SVG: p50/p99/max per second over the run, and the CDF of all latencies.
fn plot(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    let secs = &report.seconds;
    let x_max = secs.last().map_or(1, |s| s.second + 1) as f64;
    let y_max = secs.iter().map(|s| s.max_ms).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{}: latency per second (ms)", report.scenario),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc("ms")
        .draw()?;
    type Series = (&'static str, fn(&SecondStats) -> f64, RGBColor);
    let series: [Series; 3] = [
        ("p50", |s| s.p50_ms, BLUE),
        ("p99", |s| s.p99_ms, RED),
        ("max", |s| s.max_ms, BLACK),
    ];
    for (label, value, color) in series {
        chart
            .draw_series(LineSeries::new(
                secs.iter().map(|s| (s.second as f64, value(s))),
                &color,
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    let cdf = &report.cdf;
    let x_max = cdf.iter().map(|c| c.0).fold(1.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("latency CDF", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("fraction at or below")
        .draw()?;
    chart.draw_series(LineSeries::new(cdf.iter().copied(), &BLUE))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_event_is_each_process_and_ces_own_work_without_broker_and_load_generator() {
        let secs: std::collections::BTreeMap<String, f64> = [
            ("broker", 2.0),
            ("edges", 0.5),
            ("ingest", 0.3),
            ("redis", 0.2),
            ("loadtest", 1.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let us = cpu_us_per_event(&secs, 100_000);
        assert_eq!(us["edges"], 5.0);
        assert_eq!(us["broker"], 20.0);
        assert!((us["ces"] - 10.0).abs() < 1e-9, "{us:?}");
        assert_eq!(us.len(), 6);
        assert!(cpu_us_per_event(&secs, 0).is_empty());
        let mut partial = secs.clone();
        partial.remove("redis");
        assert!(
            !cpu_us_per_event(&partial, 10).contains_key("ces"),
            "all three or no total"
        );
        let line = Report {
            cpu_us_per_event: us,
            ..Report::new("throughput")
        }
        .summary();
        assert!(
            line.contains("CPU µs per delivered event: broker 20.0   ces 10.0"),
            "{line}"
        );
    }

    #[test]
    fn the_summary_names_the_broker_in_one_line_when_its_settings_were_read() {
        let mut report = Report::new("broker");
        assert!(!report.summary().contains("broker:"));
        report.broker_id = Some(1);
        report.broker_count = Some(1);
        report.broker_config = Some(
            [("num.partitions", "1"), ("node.id", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        );
        assert!(
            report
                .summary()
                .contains("  broker: 1 node, id 1: 2 settings from its config (see JSON)\n"),
            "{}",
            report.summary()
        );
        report.broker_count = Some(3);
        assert!(
            report
                .broker_line()
                .starts_with("  broker: 3 nodes, id 1: ")
        );
    }

    #[test]
    fn edges_and_missed_targets_are_in_the_summary() {
        let mut report = Report::new("hold");
        let edge = EdgeFigures {
            edge: "127.0.0.1:18081".to_owned(),
            pid: 42,
            connections: 1000,
            rss_before_bytes: 10 << 20,
            rss_held_bytes: 16 << 20,
            rss_after_bytes: 17 << 20,
            ..Default::default()
        };
        assert_eq!(edge.per_conn(), (7 << 20) / 1000);
        report.edges.push(EdgeFigures {
            rss_per_conn_bytes: edge.per_conn(),
            ..edge
        });
        report.client_processes = Some(3);
        report
            .targets_missed
            .push("RSS per connection 9000 bytes > 8192".to_owned());
        let summary = report.summary();
        assert!(
            summary.contains(
                "  edge 127.0.0.1:18081 (pid 42): 1000 connections, RSS 10.0 -> 16.0 -> 17.0 MiB, 7340 bytes per connection\n"
            ),
            "{summary}"
        );
        assert!(summary.contains("  clients held by 3 worker processes\n"));
        assert!(summary.ends_with("  TARGET MISSED: RSS per connection 9000 bytes > 8192\n"));
    }

    #[test]
    fn the_json_carries_the_broker_settings_or_null() {
        let mut report = Report::new("idle");
        let v = serde_json::to_value(&report).unwrap();
        assert!(v["broker_config"].is_null() && v["broker_count"].is_null());
        report.broker_count = Some(1);
        report.broker_config = Some([("num.partitions".to_owned(), "1".to_owned())].into());
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["broker_count"], 1);
        assert_eq!(v["broker_config"]["num.partitions"], "1");
    }

    #[test]
    fn the_run_queue_wait_follows_the_cpu_line_or_is_absent() {
        let mut report = Report::new("throughput");
        assert!(!report.summary().contains("run-queue"));
        let v = serde_json::to_value(&report).unwrap();
        assert!(v["runq_wait_percent"].as_object().unwrap().is_empty());
        report.cpu_percent = [("broker".to_owned(), 80.0), ("edges".to_owned(), 60.0)].into();
        report.runq_wait_percent =
            [("broker".to_owned(), 12.3), ("edges".to_owned(), 140.0)].into();
        report.timeslices_per_s = [("broker".to_owned(), 5000.0)].into();
        let summary = report.summary();
        assert!(
            summary.contains(
                "  CPU (% of one core): broker 80%   edges 60%\n  \
                 run-queue wait (% of a second): broker 12%   edges 140%\n"
            ),
            "{summary}"
        );
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["runq_wait_percent"]["edges"], 140.0);
        assert_eq!(v["timeslices_per_s"]["broker"], 5000.0);
    }
}
