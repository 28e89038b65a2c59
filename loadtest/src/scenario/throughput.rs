//! `throughput`: S sessions over the edges while Kafka is fed at `--rate` for `--duration` seconds; reports what was
//! produced and delivered, loss, duplicates, order, producer → client latency, per-hop latency from the stack's
//! metrics, and the CPU and run-queue wait of every process of the stack.

use std::time::Duration;

use crate::cli::Common;
use crate::procfs;
use crate::report::Report;

use super::fleet::{self, Fleet};
use super::producing::Producing;
use super::prometheus::{hop_means, hop_totals};
use super::stack;

/// Runs `throughput`.
pub(super) async fn run(c: &Common) -> anyhow::Result<Report> {
    let mut report = Report::new("throughput");
    let pids = stack::edge_pids(c);
    let fleet = Fleet::connect(c, c.sessions).await?;
    let ids: Vec<String> = fleet.sessions.iter().map(|s| s.id.clone()).collect();
    let cpu = procfs::cpu_mark(&pids);
    let processes = stack::processes(c, &pids);
    let stack_cpu: Vec<_> = processes.iter().map(|(_, p)| procfs::cpu_mark(p)).collect();
    let stack_sched: Vec<_> = processes
        .iter()
        .map(|(_, p)| procfs::sched_mark(p))
        .collect();
    let hops_before = hop_totals(c).await;
    let producing = Producing::start(c, &ids, None, c.rate);
    let started = producing.started;
    let last = producing
        .drive(&fleet.shared, Duration::from_secs(c.settle))
        .await?;
    report.hops_mean_ms = hop_means(&hops_before, &hop_totals(c).await);
    report.cpu_percent = processes
        .iter()
        .zip(&stack_cpu)
        .map(|((name, p), mark)| (name.clone(), procfs::cpu_percent_since(mark, p)))
        .collect();
    let cpu_seconds: std::collections::BTreeMap<String, f64> = processes
        .iter()
        .zip(&stack_cpu)
        .map(|((name, p), mark)| (name.clone(), procfs::cpu_seconds_since(mark, p)))
        .collect();
    for ((name, p), mark) in processes.iter().zip(&stack_sched) {
        if let Some(used) = procfs::sched_since(mark, p) {
            report
                .runq_wait_percent
                .insert(name.clone(), used.runq_wait_percent);
            report
                .timeslices_per_s
                .insert(name.clone(), used.timeslices_per_s);
        }
    }
    let still_arriving = last.elapsed() < Duration::from_millis(200);
    let produce_secs = producing.started.elapsed().as_secs_f64();
    report.edge_cpu_percent = (!pids.is_empty()).then(|| procfs::cpu_percent_since(&cpu, &pids));
    report.edge_rss_bytes = (!pids.is_empty()).then(|| procfs::total_rss(&pids));
    let produced = producing.finish()?;
    let shared = fleet.shared.clone();
    let sessions = fleet.sessions.len();
    report.client_processes = Some(fleet.processes());
    let (delivery, notes) = fleet.finish().await;
    report.sessions = c.sessions;
    report.connections = c.sessions;
    report.rate_target = c.rate;
    report.duration_s = c.duration as f64;
    fleet::tally(&mut report, &produced, &delivery, sessions, notes);
    fleet::fill_latency(&mut report, &shared);
    report.cpu_us_per_event = crate::report::cpu_us_per_event(&cpu_seconds, report.delivered);
    report.produced_per_s = report.produced as f64 / (c.duration as f64).min(produce_secs);
    report.delivered_per_s =
        report.delivered as f64 / last.duration_since(started).as_secs_f64().max(1e-3);
    if report.lost > 0 && still_arriving {
        report.notes.push(format!(
            "events were still arriving when the {} s settle window closed: `lost` counts what the pipeline had \
             not delivered by then (a backlog still in Kafka), not what it dropped",
            c.settle
        ));
    }
    Ok(report)
}
