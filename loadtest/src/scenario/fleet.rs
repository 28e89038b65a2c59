//! Sessions with their sockets open: registering them, connecting every socket (bounded by
//! `--connect-concurrency`, with a deadline), closing them, and turning what the clients and the producer counted
//! into the delivery and latency figures of a [`Report`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::Common;
use crate::clients::{self, Outcome, Session, Shared, Target};
use crate::producer::Produced;
use crate::report::Report;

/// The `--target` URLs, parsed.
fn targets(c: &Common) -> anyhow::Result<Arc<[Target]>> {
    c.target.iter().map(|t| Target::parse(t)).collect()
}

/// Sessions with their sockets open.
pub(super) struct Fleet {
    /// What every socket task counts.
    pub(super) shared: Arc<Shared>,
    tasks: JoinSet<Outcome>,
    stop: CancellationToken,
    /// The sessions, in the order their sockets were opened.
    pub(super) sessions: Vec<Session>,
}

impl Fleet {
    /// Registers `count` sessions and opens a socket for each; returns once every one is welcomed.
    pub(super) async fn connect(c: &Common, count: u64) -> anyhow::Result<Self> {
        let sessions = register(c, count).await?;
        Self::open(c, sessions).await
    }

    /// Opens a socket for each session; returns once every one is welcomed.
    pub(super) async fn open(c: &Common, sessions: Vec<Session>) -> anyhow::Result<Self> {
        let targets = targets(c)?;
        let count = sessions.len() as u64;
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let gate = Arc::new(tokio::sync::Semaphore::new(c.connect_concurrency as usize));
        let mut tasks = JoinSet::new();
        for (i, s) in sessions.iter().enumerate() {
            tasks.spawn(clients::socket_task(
                s.clone(),
                i as u64,
                targets.clone(),
                c.per_source,
                shared.clone(),
                gate.clone(),
                stop.clone(),
            ));
        }
        let fleet = Self {
            shared,
            tasks,
            stop,
            sessions,
        };
        let started = Instant::now();
        let deadline = Duration::from_secs(60 + count / 200);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_print = Instant::now();
        loop {
            tick.tick().await;
            let up = fleet.shared.connected.load(Ordering::Relaxed);
            if up >= count {
                break;
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                eprintln!(
                    "[connect] {up}/{count} welcomed, {} refused so far",
                    fleet.shared.refused.load(Ordering::Relaxed)
                );
                last_print = Instant::now();
            }
            if started.elapsed() > deadline {
                fleet.stop.cancel();
                bail!("only {up} of {count} sockets were welcomed within {deadline:?}");
            }
        }
        eprintln!(
            "[connect] {count} sockets welcomed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(fleet)
    }

    /// Closes every socket and returns what each received.
    pub(super) async fn finish(mut self) -> Vec<Outcome> {
        self.stop.cancel();
        let mut outcomes = Vec::with_capacity(self.sessions.len());
        while let Some(res) = self.tasks.join_next().await {
            if let Ok(o) = res {
                outcomes.push(o);
            }
        }
        outcomes
    }
}

/// Registers `count` sessions over the targets in turn.
pub(super) async fn register(c: &Common, count: u64) -> anyhow::Result<Vec<Session>> {
    let started = Instant::now();
    let sessions = clients::register_all(
        &targets(c)?,
        count,
        64,
        Duration::from_secs(60 + count / 100),
    )
    .await?;
    eprintln!(
        "[register] {} sessions in {:.1} s",
        sessions.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(sessions)
}

/// Fills the delivery figures of `report` from the producer's acknowledgements and the clients' trackers.
pub(super) fn tally(
    report: &mut Report,
    produced: &Produced,
    outcomes: &[Outcome],
    sessions: &[Session],
) {
    report.produced = produced.acked_total();
    report.produce_errors = produced.errors.load(Ordering::Relaxed);
    let delivered: u64 = outcomes.iter().map(|o| o.tracker.distinct).sum();
    report.delivered = delivered;
    report.duplicated = outcomes.iter().map(|o| o.tracker.duplicated).sum();
    report.out_of_order = outcomes.iter().map(|o| o.tracker.out_of_order).sum();
    report.lost = report.produced.saturating_sub(delivered);
    if outcomes.len() != sessions.len() {
        report.notes.push(format!(
            "{} of {} socket tasks did not report",
            sessions.len() - outcomes.len(),
            sessions.len()
        ));
    }
}

/// Fills the latency, reconnection and refusal figures of `report` from what the clients counted.
pub(super) fn fill_latency(report: &mut Report, shared: &Shared) {
    report.latency = shared.recorder.quantiles();
    report.seconds = shared.recorder.seconds();
    report.cdf = shared.recorder.cdf();
    report.disconnects = shared.disconnects.load(Ordering::Relaxed);
    report.refused = shared.refused.load(Ordering::Relaxed);
    report.resumed_lost = shared.resumed_lost.load(Ordering::Relaxed);
}
