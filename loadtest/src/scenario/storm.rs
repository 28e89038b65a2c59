//! `storm`: C sessions receiving a stream; the first of `--edges` is killed (or drained) mid-stream, and the report
//! says how long until every session resumed on another edge, and what was lost.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cli::{StormAction, StormArgs};
use crate::procfs;
use crate::report::Report;

use super::fleet::{self, Fleet};
use super::producing::Producing;
use super::shell;

/// Runs `storm`: fails when the first edge is not running here or cannot be signalled.
pub(super) async fn run(s: &StormArgs) -> anyhow::Result<Report> {
    let c = &s.common;
    let mut report = Report::new("storm");
    let victim = c.edges.first().context("--edges names no edge")?;
    let victim_pid = procfs::pid_listening_on(victim).with_context(|| {
        format!("no process listens on {victim}; it is the edge the storm stops")
    })?;
    let survivors: Vec<u32> = c.edges[1..]
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
        async move {
            tokio::time::sleep(kill_after).await;
            let signal = match s.action {
                StormAction::Kill => "-KILL",
                StormAction::Drain => "-TERM",
            };
            let before = shared.connected.load(Ordering::Relaxed);
            eprintln!(
                "[storm] kill {signal} {victim_pid} (the edge on {victim}); {before} sockets connected"
            );
            let status = shell::kill(signal, victim_pid);
            (Instant::now(), status)
        }
    };
    let (driven, (killed_at, status)) = tokio::join!(
        producing.drive(&shared, Duration::from_secs(c.settle)),
        killer
    );
    if !status.as_ref().is_ok_and(|s| s.success()) {
        bail!("could not signal the edge {victim_pid}: {status:?}");
    }
    driven?;
    // Every session must be back before the run counts what it received.
    let until = Instant::now() + Duration::from_secs(c.settle);
    while shared.connected.load(Ordering::Relaxed) < conns && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let produced = producing.finish()?;
    report.edge_rss_bytes = (!survivors.is_empty()).then(|| procfs::total_rss(&survivors));
    let sessions = fleet.sessions.clone();
    let connected = shared.connected.load(Ordering::Relaxed);
    let outcomes = fleet.finish().await;
    report.sessions = conns;
    report.connections = conns;
    report.rate_target = c.rate;
    report.duration_s = c.duration as f64;
    fleet::tally(&mut report, &produced, &outcomes, &sessions);
    fleet::fill_latency(&mut report, &shared);
    let resumes = shared.resumes.lock().expect("resumes lock").clone();
    report.resumed = Some(resumes.len() as u64);
    report.resume_s = resumes
        .iter()
        .max()
        .map(|last| last.saturating_duration_since(killed_at).as_secs_f64());
    report.delivered_per_s = report.delivered as f64 / c.duration as f64;
    report.produced_per_s = report.produced as f64 / c.duration as f64;
    if connected < conns {
        report.notes.push(format!(
            "{} sessions were not connected again within --settle {} s",
            conns - connected,
            c.settle
        ));
    }
    Ok(report)
}
