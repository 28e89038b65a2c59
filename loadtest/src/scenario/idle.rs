//! `idle`: hold C connections for `--duration` seconds and report the edges' RSS per connection and their CPU.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cli::Common;
use crate::procfs;
use crate::report::Report;

use super::fleet::{self, Fleet};
use super::stack;

/// Runs `idle`.
pub(super) async fn run(c: &Common) -> anyhow::Result<Report> {
    let mut report = Report::new("idle");
    let conns = c.connections();
    let pids = stack::edge_pids(c);
    let sessions = fleet::register(c, conns).await?;
    // Measured after registration: what the sockets cost, not what the REST calls left in the allocator.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = procfs::total_rss(&pids);
    let fleet = Fleet::open(c, sessions).await?;
    // Let the set-up's transient buffers go before measuring what the held sockets cost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = procfs::cpu_mark(&pids);
    let hold = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    while hold.elapsed() < Duration::from_secs(c.duration) {
        tick.tick().await;
        eprintln!(
            "[hold {:>3.0}s] connected {}  edge RSS {:.1} MiB",
            hold.elapsed().as_secs_f64(),
            fleet.shared.connected.load(Ordering::Relaxed),
            procfs::total_rss(&pids) as f64 / 1048576.0
        );
    }
    let after = procfs::total_rss(&pids);
    report.edge_cpu_percent = (!pids.is_empty()).then(|| procfs::cpu_percent_since(&cpu, &pids));
    let still = fleet.shared.connected.load(Ordering::Relaxed);
    let shared = fleet.shared.clone();
    report.client_processes = Some(fleet.processes());
    let (_, notes) = fleet.finish().await;
    report.notes.extend(notes);
    report.sessions = conns;
    report.connections = still;
    report.duration_s = c.duration as f64;
    if !pids.is_empty() {
        report.edge_rss_bytes = Some(after);
        report.rss_per_conn_bytes = Some(after.saturating_sub(before) / conns.max(1));
        report.notes.push(format!(
            "edge RSS {:.1} MiB before the connections, {:.1} MiB while holding them",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        ));
    }
    fleet::fill_latency(&mut report, &shared);
    if still < conns {
        report
            .notes
            .push(format!("{} connections dropped while held", conns - still));
    }
    Ok(report)
}
