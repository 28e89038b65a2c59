//! The scenarios: set up the clients, drive the load, collect the figures into a [`Report`].
//!
//! # Layout
//!
//! One file per scenario, each a `run` that returns its [`Report`]: [`throughput`], [`idle`], [`hold`], [`storm`],
//! [`ingest`], [`raw_ws`], [`redis_floor`], [`broker`], and [`produce`] (which only fills a topic and writes no report). What they
//! share is split by concern:
//!
//! - [`fleet`]: registered sessions with their sockets open, and the delivery figures they report.
//! - [`spread`], [`worker`] and [`wire`]: the sockets of a run with more than one process may hold, spread over
//!   worker processes (`ces-loadtest worker`), and the lines they report on.
//! - [`producing`]: the producer thread and the progress loop that drives a run.
//! - [`prometheus`]: scraping ingest's and the edges' `/metrics` (theirs on their internal listeners), and parsing
//!   the text exposition.
//! - [`stack`]: the stack's processes on this machine, found by the ports they listen on.
//! - [`shell`]: `redis-cli`, `redis-benchmark` and `kill`, and parsing what they print.

mod broker;
mod fleet;
mod hold;
mod idle;
mod ingest;
mod produce;
mod producing;
mod prometheus;
mod raw_ws;
mod redis_floor;
mod shell;
mod spread;
mod stack;
mod storm;
mod throughput;
mod wire;
mod worker;

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{Cli, Scenario};
use crate::report::Report;

/// Exit status of a run that lost or duplicated events (1: it could not run; 2: bad arguments).
pub const EXIT_LOST: u8 = 3;
/// Exit status of a run that lost nothing but missed a target of its scenario (`targets_missed` in the report).
pub const EXIT_MISSED: u8 = 4;

/// Runs one scenario and writes its report; exits [`EXIT_LOST`] if events were lost or duplicated, else
/// [`EXIT_MISSED`] if a target of the scenario was missed.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let brokers = cli.scenario.measured_brokers().map(str::to_owned);
    let (mut report, out, name) = match cli.scenario {
        Scenario::Throughput(c) => (throughput::run(&c).await?, c.out.clone(), c.name.clone()),
        Scenario::Idle(c) => (idle::run(&c).await?, c.out.clone(), c.name.clone()),
        Scenario::Hold(h) => (
            hold::run(&h).await?,
            h.common.out.clone(),
            h.common.name.clone(),
        ),
        Scenario::Storm(s) => (
            storm::run(&s).await?,
            s.common.out.clone(),
            s.common.name.clone(),
        ),
        Scenario::Ingest(i) => (
            ingest::run(&i).await?,
            i.common.out.clone(),
            i.common.name.clone(),
        ),
        Scenario::RawWs(c) => (raw_ws::run(&c).await?, c.out.clone(), c.name.clone()),
        Scenario::RedisFloor(a) => (
            redis_floor::run(&a).await?,
            a.common.out.clone(),
            a.common.name.clone(),
        ),
        Scenario::Broker(b) => (
            broker::run(&b).await?,
            b.common.out.clone(),
            b.common.name.clone(),
        ),
        Scenario::Produce(i) => {
            produce::run(&i).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Scenario::Worker => {
            worker::run().await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Some(brokers) = brokers {
        record_broker(&mut report, brokers).await;
    }
    let name = name.unwrap_or_else(|| report.scenario.clone());
    let files = report.write(&out, &name)?;
    println!("{}", report.summary());
    for f in files {
        println!("  wrote {}", f.display());
    }
    // 2 is clap's usage error; a run that lost or duplicated events says so with its own code.
    Ok(if report.lost > 0 || report.duplicated > 0 {
        ExitCode::from(EXIT_LOST)
    } else if !report.targets_missed.is_empty() {
        ExitCode::from(EXIT_MISSED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Puts the broker's own settings into `report`, read after the run so the broker is not asked while it is
/// measured. A broker that does not answer leaves them `null` with a warning: the run's figures stand without them.
async fn record_broker(report: &mut Report, brokers: String) {
    let read = tokio::task::spawn_blocking(move || {
        crate::broker::settings(&brokers, Duration::from_secs(10))
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r);
    match read {
        Ok(settings) => {
            report.broker_id = Some(settings.id);
            report.broker_count = Some(settings.nodes as u64);
            report.broker_config = Some(settings.config);
        }
        Err(e) => eprintln!("[broker] warning: the broker's settings are not in the report: {e:#}"),
    }
}
