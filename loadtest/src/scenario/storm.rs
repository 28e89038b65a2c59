//! `storm`: C sessions receiving a stream; the first `--stop-edges` of `--edges` are killed (or drained) at the same
//! moment mid-stream, and the report says how many sessions moved, how long until every one of them resumed on
//! another edge, and what was lost. One edge holds at most its open-files limit of sockets (20,000 here), so moving
//! 20,000 sessions at once takes stopping two or more edges; their sessions spread over the survivors
//! ([`crate::clients::other_target`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::cli::{StormAction, StormArgs};
use crate::procfs;
use crate::report::Report;

use super::fleet::{self, Fleet};
use super::producing::Producing;
use super::{prometheus, shell};

/// Runs `storm`: fails when an edge to stop is not running here or cannot be signalled.
pub(super) async fn run(s: &StormArgs) -> anyhow::Result<Report> {
    let c = &s.common;
    let mut report = Report::new("storm");
    let stop = usize::try_from(s.stop_edges).unwrap_or(usize::MAX);
    ensure!(
        stop < c.edges.len(),
        "--stop-edges {stop} leaves no edge of --edges ({}) for the sessions to move to",
        c.edges.len()
    );
    let victims = &c.edges[..stop];
    let victim_pids = victims
        .iter()
        .map(|v| {
            procfs::pid_listening_on(v).with_context(|| {
                format!("no process listens on {v}; it is an edge the storm stops")
            })
        })
        .collect::<anyhow::Result<Vec<u32>>>()?;
    let survivors: Vec<u32> = c.edges[stop..]
        .iter()
        .filter_map(|e| procfs::pid_listening_on(e))
        .collect();
    let conns = c.connections();
    let fleet = Fleet::connect(c, conns).await?;
    let ids: Vec<String> = fleet.sessions.iter().map(|s| s.id.clone()).collect();
    let producing = Producing::start(c, &ids, None, c.rate);
    let shared = fleet.shared.clone();
    let kill_after = Duration::from_secs(s.kill_after.min(c.duration.saturating_sub(1)));
    let killer = {
        let shared = shared.clone();
        let victim_pids = victim_pids.clone();
        async move {
            tokio::time::sleep(kill_after).await;
            // What the stopped edges held just before: the sessions that must move.
            let moving = edge_connections(victims).await;
            let signal = match s.action {
                StormAction::Kill => "-KILL",
                StormAction::Drain => "-TERM",
            };
            let before = shared.connected.load(Ordering::Relaxed);
            eprintln!(
                "[storm] kill {signal} {victim_pids:?} (the edges on {}, holding {}); {before} sockets connected",
                victims.join(" "),
                moving.map_or("?".to_owned(), |m| m.to_string()),
            );
            let tcp = procfs::tcp_storm_counters();
            let status = shell::kill(signal, &victim_pids);
            (Instant::now(), status, moving, tcp)
        }
    };
    let (driven, (killed_at, status, moving, tcp_before)) = tokio::join!(
        producing.drive(&shared, Duration::from_secs(c.settle)),
        killer
    );
    if !status.as_ref().is_ok_and(|s| s.success()) {
        bail!("could not signal the edges {victim_pids:?}: {status:?}");
    }
    driven?;
    // Every session must be back before the run counts what it received.
    let until = Instant::now() + Duration::from_secs(c.settle);
    while shared.connected.load(Ordering::Relaxed) < conns && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.tcp_counters = procfs::growth(&tcp_before, &procfs::tcp_storm_counters());
    let produced = producing.finish()?;
    report.edge_rss_bytes = (!survivors.is_empty()).then(|| procfs::total_rss(&survivors));
    let sessions = fleet.sessions.len();
    let connected = shared.connected.load(Ordering::Relaxed);
    report.client_processes = Some(fleet.processes());
    let (delivery, notes) = fleet.finish().await;
    report.sessions = conns;
    report.connections = conns;
    report.rate_target = c.rate;
    report.duration_s = c.duration as f64;
    fleet::tally(&mut report, &produced, &delivery, sessions, notes);
    fleet::fill_latency(&mut report, &shared);
    let mut took: Vec<f64> = shared
        .resumes
        .lock()
        .expect("resumes lock")
        .iter()
        .map(|at| at.saturating_duration_since(killed_at).as_secs_f64())
        .collect();
    took.sort_by(f64::total_cmp);
    report.resumed = Some(took.len() as u64);
    report.resume_s = took.last().copied();
    report.resume_p50_s = quantile(&took, 0.50);
    report.resume_p99_s = quantile(&took, 0.99);
    report.delivered_per_s = report.delivered as f64 / c.duration as f64;
    report.produced_per_s = report.produced as f64 / c.duration as f64;
    report.notes.push(format!(
        "{} of {} edges stopped ({}), holding {} sessions",
        stop,
        c.edges.len(),
        victims.join(", "),
        moving.map_or("an unknown number of".to_owned(), |m| m.to_string())
    ));
    if connected < conns {
        report.notes.push(format!(
            "{} sessions were not connected again within --settle {} s",
            conns - connected,
            c.settle
        ));
    }
    report.targets_missed = missed(&report, moving, connected, conns, s.max_resume_s);
    Ok(report)
}

/// The storm's targets this run missed: every session connected again, every session of the stopped edges resumed
/// (`moving`, when their connections could be read), the last within `max_resume_s` of the stop.
fn missed(
    report: &Report,
    moving: Option<u64>,
    connected: u64,
    conns: u64,
    max_resume_s: f64,
) -> Vec<String> {
    let mut missed = Vec::new();
    let resumed = report.resumed.unwrap_or(0);
    if connected < conns {
        missed.push(format!(
            "{connected} of {conns} sessions connected at the end"
        ));
    }
    if let Some(moving) = moving
        && resumed < moving
    {
        missed.push(format!(
            "{resumed} sessions resumed, {moving} were on the stopped edges"
        ));
    }
    match report.resume_s {
        Some(took) if took > max_resume_s => missed.push(format!(
            "the last session resumed {took:.2} s after the stop, over {max_resume_s} s"
        )),
        None => missed.push("no session resumed".to_owned()),
        Some(_) => {}
    }
    missed
}

/// The `q` quantile of `sorted` (nearest rank); `None` when empty.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

/// Sum of `ces_edge_connections` of `edges` (host:port); `None` when one of them does not answer.
async fn edge_connections(edges: &[String]) -> Option<u64> {
    let mut total = 0;
    for e in edges {
        total += prometheus::edge_connections(e).await?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_quantiles_by_nearest_rank() {
        let took: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(quantile(&took, 0.5), Some(100.0));
        assert_eq!(quantile(&took, 0.99), Some(198.0));
        assert_eq!(quantile(&took[..1], 0.99), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn the_storm_misses_when_a_session_is_not_back_or_late() {
        let mut report = Report::new("storm");
        report.resumed = Some(20_000);
        report.resume_s = Some(3.2);
        assert!(missed(&report, Some(20_000), 40_000, 40_000, 10.0).is_empty());
        assert!(missed(&report, None, 40_000, 40_000, 10.0).is_empty());
        assert_eq!(
            missed(&report, Some(20_001), 39_999, 40_000, 3.0),
            [
                "39999 of 40000 sessions connected at the end",
                "20000 sessions resumed, 20001 were on the stopped edges",
                "the last session resumed 3.20 s after the stop, over 3 s"
            ]
        );
        report.resume_s = None;
        assert_eq!(missed(&report, None, 1, 1, 10.0), ["no session resumed"]);
    }
}
