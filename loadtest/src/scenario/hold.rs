//! `hold`: C connections spread over several edges (`--target`, in turn) while a paced stream flows to every session,
//! and what each edge's memory grew by per connection it holds. The sockets are spread over worker processes when
//! there are more than one process may hold ([`super::spread`]): 100,000 connections over six edges take six
//! load-generator processes here, as they take six edges.
//!
//! Each edge's RSS is read three times: after the sessions were registered (what the REST calls left in the
//! allocator is not the sockets' cost), with every socket open before the stream, and at the end of the stream with
//! the sockets still open. The per-connection figure is the growth from the first to the last over the
//! connections the edge reports holding (`ces_edge_connections`): memory that a stream flowing costs counts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cli::HoldArgs;
use crate::procfs;
use crate::report::{EdgeFigures, Report};

use super::fleet::{self, Fleet};
use super::producing::Producing;
use super::prometheus;

/// Runs `hold`.
pub(super) async fn run(h: &HoldArgs) -> anyhow::Result<Report> {
    let c = &h.common;
    let mut report = Report::new("hold");
    let conns = c.connections();
    let edges: Vec<(String, u32)> = c
        .edges
        .iter()
        .filter_map(|e| Some((e.clone(), procfs::pid_listening_on(e)?)))
        .collect();
    if edges.len() < c.edges.len() {
        report.notes.push(format!(
            "{} of the {} --edges are not running here: their memory is not reported",
            c.edges.len() - edges.len(),
            c.edges.len()
        ));
    }
    let sessions = fleet::register(c, conns).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss(&edges);
    let fleet = Fleet::open(c, sessions).await?;
    // Let the set-up's transient buffers go before measuring what the held sockets cost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = rss(&edges);
    eprintln!(
        "[hold] {} connections held by {} process(es); edge RSS {:.1} -> {:.1} MiB",
        fleet.shared.connected.load(Ordering::Relaxed),
        fleet.processes(),
        before.iter().sum::<u64>() as f64 / 1048576.0,
        held.iter().sum::<u64>() as f64 / 1048576.0,
    );
    let pids: Vec<u32> = edges.iter().map(|e| e.1).collect();
    let cpu = procfs::cpu_mark(&pids);
    let ids: Vec<String> = fleet.sessions.iter().map(|s| s.id.clone()).collect();
    let producing = Producing::start(c, &ids, None, c.rate);
    let last = producing
        .drive(&fleet.shared, Duration::from_secs(c.settle))
        .await?;
    let still_arriving = last.elapsed() < Duration::from_millis(200);
    let after = rss(&edges);
    let held_at_end = fleet.shared.connected.load(Ordering::Relaxed);
    report.edge_cpu_percent = (!pids.is_empty()).then(|| procfs::cpu_percent_since(&cpu, &pids));
    for (i, (edge, pid)) in edges.iter().enumerate() {
        let mut e = EdgeFigures {
            edge: edge.clone(),
            pid: *pid,
            connections: prometheus::edge_connections(edge).await.unwrap_or(0),
            rss_before_bytes: before[i],
            rss_held_bytes: held[i],
            rss_after_bytes: after[i],
            rss_per_conn_bytes: 0,
        };
        e.rss_per_conn_bytes = e.per_conn();
        report.edges.push(e);
    }
    let produced = producing.finish()?;
    let shared = fleet.shared.clone();
    report.client_processes = Some(fleet.processes());
    let (delivery, notes) = fleet.finish().await;
    report.sessions = conns;
    report.connections = held_at_end;
    report.rate_target = c.rate;
    report.duration_s = c.duration as f64;
    fleet::tally(&mut report, &produced, &delivery, ids.len(), notes);
    fleet::fill_latency(&mut report, &shared);
    report.produced_per_s = report.produced as f64 / c.duration as f64;
    report.delivered_per_s = report.delivered as f64 / c.duration as f64;
    if !report.edges.is_empty() {
        let (b, a) = (before.iter().sum::<u64>(), after.iter().sum::<u64>());
        report.edge_rss_bytes = Some(a);
        let on_edges: u64 = report.edges.iter().map(|e| e.connections).sum();
        report.rss_per_conn_bytes = Some(a.saturating_sub(b) / on_edges.max(1));
    }
    if report.lost > 0 && still_arriving {
        report.notes.push(format!(
            "events were still arriving when the {} s settle window closed: `lost` counts what the pipeline had \
             not delivered by then (a backlog still in Kafka), not what it dropped",
            c.settle
        ));
    }
    report.targets_missed = missed(&report, conns, h.max_rss_per_conn);
    Ok(report)
}

/// RSS of each edge of `edges`, in order (0 for one that is gone).
fn rss(edges: &[(String, u32)]) -> Vec<u64> {
    edges
        .iter()
        .map(|&(_, pid)| procfs::rss_bytes(pid).unwrap_or(0))
        .collect()
}

/// The targets of `hold` this run missed: every connection held to the end without a drop, and no edge over
/// `max_per_conn` bytes of RSS per connection it holds.
fn missed(report: &Report, conns: u64, max_per_conn: u64) -> Vec<String> {
    let mut missed = Vec::new();
    if report.connections < conns || report.disconnects > 0 {
        missed.push(format!(
            "{} of {conns} connections held at the end, {} dropped during the run",
            report.connections, report.disconnects
        ));
    }
    for e in &report.edges {
        if e.rss_per_conn_bytes > max_per_conn {
            missed.push(format!(
                "edge {}: {} bytes of RSS per connection, over {max_per_conn}",
                e.edge, e.rss_per_conn_bytes
            ));
        }
    }
    missed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_misses_on_a_dropped_connection_or_a_heavy_edge() {
        let mut report = Report::new("hold");
        report.connections = 100_000;
        report.edges = vec![
            EdgeFigures {
                edge: "a".into(),
                rss_per_conn_bytes: 6_900,
                ..Default::default()
            },
            EdgeFigures {
                edge: "b".into(),
                rss_per_conn_bytes: 8_192,
                ..Default::default()
            },
        ];
        assert!(missed(&report, 100_000, 8192).is_empty());
        report.edges[0].rss_per_conn_bytes = 8_193;
        report.disconnects = 2;
        assert_eq!(
            missed(&report, 100_000, 8192),
            [
                "100000 of 100000 connections held at the end, 2 dropped during the run",
                "edge a: 8193 bytes of RSS per connection, over 8192"
            ]
        );
    }
}
