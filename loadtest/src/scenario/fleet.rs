//! Sessions with their sockets open: registering them, connecting every socket (bounded by
//! `--connect-concurrency`, with a deadline), closing them, and turning what the clients and the producer counted
//! into the delivery and latency figures of a [`Report`].
//!
//! The sockets are tasks of this process, or, when there are more than one process may hold (`--per-process`,
//! by default the open-files limit minus 1,000), tasks of worker processes ([`super::spread`]) that mirror what
//! they count into this process's [`Shared`]: a scenario reads the same counters either way.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::Common;
use crate::clients::{self, Outcome, Session, Shared, Target};
use crate::procfs;
use crate::producer::Produced;
use crate::report::Report;

use super::spread::Workers;

/// Descriptors a load-generator process keeps for itself beside its sockets when `--per-process` is not given:
/// the Kafka producer, the registration client, pipes to the workers, stdio, the runtime.
const SPARE_DESCRIPTORS: u64 = 1_000;

/// The `--target` URLs, parsed.
pub(super) fn targets(c: &Common) -> anyhow::Result<Arc<[Target]>> {
    c.target.iter().map(|t| Target::parse(t)).collect()
}

/// Most sockets one process of this run holds: `--per-process`, or the open-files limit minus
/// [`SPARE_DESCRIPTORS`] (no limit when it cannot be read).
pub(super) fn per_process(c: &Common) -> u64 {
    c.per_process.unwrap_or_else(|| {
        procfs::open_files_limit().map_or(u64::MAX, |limit| {
            limit
                .saturating_sub(SPARE_DESCRIPTORS)
                .max(SPARE_DESCRIPTORS)
        })
    })
}

/// What the clients received, summed over their sessions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Delivery {
    /// Distinct events received.
    pub(super) distinct: u64,
    /// Events received more than once.
    pub(super) duplicated: u64,
    /// Events received after a later one of the same session.
    pub(super) out_of_order: u64,
    /// Socket tasks that reported (one per session when all did).
    pub(super) reported: u64,
}

impl Delivery {
    /// The sum over socket tasks' outcomes.
    pub(super) fn of(outcomes: &[Outcome]) -> Self {
        outcomes.iter().fold(Self::default(), |d, o| Self {
            distinct: d.distinct + o.tracker.distinct,
            duplicated: d.duplicated + o.tracker.duplicated,
            out_of_order: d.out_of_order + o.tracker.out_of_order,
            reported: d.reported + 1,
        })
    }

    /// Both added up.
    pub(super) fn plus(self, other: Self) -> Self {
        Self {
            distinct: self.distinct + other.distinct,
            duplicated: self.duplicated + other.duplicated,
            out_of_order: self.out_of_order + other.out_of_order,
            reported: self.reported + other.reported,
        }
    }
}

/// Where the sockets are.
enum Clients {
    /// Tasks of this process.
    Tasks {
        tasks: JoinSet<Outcome>,
        stop: CancellationToken,
    },
    /// Worker processes, each holding a share.
    Workers(Workers),
}

/// Sessions with their sockets open.
pub(super) struct Fleet {
    /// What every socket task counts (mirrored from the workers when there are some).
    pub(super) shared: Arc<Shared>,
    clients: Clients,
    /// The sessions, in the order their sockets were opened.
    pub(super) sessions: Vec<Session>,
}

/// Starts one socket task per session of `sessions`; the `i`-th has index `first_index + i`, which picks its
/// source address, so the processes of one run never share a source address's ephemeral ports. At most
/// `concurrency` first handshakes are in flight at once.
pub(super) fn spawn_sockets(
    sessions: &[Session],
    first_index: u64,
    targets: &Arc<[Target]>,
    per_source: u64,
    concurrency: usize,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
) -> JoinSet<Outcome> {
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (i, s) in sessions.iter().enumerate() {
        tasks.spawn(clients::socket_task(
            s.clone(),
            first_index + i as u64,
            targets.clone(),
            per_source,
            shared.clone(),
            gate.clone(),
            stop.clone(),
        ));
    }
    tasks
}

impl Fleet {
    /// Registers `count` sessions and opens a socket for each; returns once every one is welcomed.
    pub(super) async fn connect(c: &Common, count: u64) -> anyhow::Result<Self> {
        let sessions = register(c, count).await?;
        Self::open(c, sessions).await
    }

    /// Opens a socket for each session, in this process or spread over worker processes (more than
    /// [`per_process`] sessions); returns once every one is welcomed.
    pub(super) async fn open(c: &Common, sessions: Vec<Session>) -> anyhow::Result<Self> {
        let targets = targets(c)?;
        let count = sessions.len() as u64;
        let shared = Arc::new(Shared::default());
        let per = per_process(c);
        let clients = if count > per {
            Clients::Workers(Workers::start(c, &sessions, per, &shared).await?)
        } else {
            let stop = CancellationToken::new();
            let tasks = spawn_sockets(
                &sessions,
                0,
                &targets,
                c.per_source,
                c.connect_concurrency as usize,
                &shared,
                &stop,
            );
            Clients::Tasks { tasks, stop }
        };
        let mut fleet = Self {
            shared,
            clients,
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
            if let Clients::Workers(w) = &mut fleet.clients
                && let Some(gone) = w.ended_early()
            {
                fleet.finish().await;
                bail!("{gone} while connecting ({up} of {count} sockets welcomed)");
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                eprintln!(
                    "[connect] {up}/{count} welcomed, {} refused so far",
                    fleet.shared.refused.load(Ordering::Relaxed)
                );
                last_print = Instant::now();
            }
            if started.elapsed() > deadline {
                fleet.finish().await;
                bail!("only {up} of {count} sockets were welcomed within {deadline:?}");
            }
        }
        eprintln!(
            "[connect] {count} sockets welcomed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(fleet)
    }

    /// Processes holding the sockets: 1 for this one, or the number of workers.
    pub(super) fn processes(&self) -> u64 {
        match &self.clients {
            Clients::Tasks { .. } => 1,
            Clients::Workers(w) => w.len() as u64,
        }
    }

    /// Closes every socket and returns what they received, with a note for each worker that did not report.
    pub(super) async fn finish(self) -> (Delivery, Vec<String>) {
        match self.clients {
            Clients::Tasks { mut tasks, stop } => {
                stop.cancel();
                let mut outcomes = Vec::with_capacity(self.sessions.len());
                while let Some(res) = tasks.join_next().await {
                    if let Ok(o) = res {
                        outcomes.push(o);
                    }
                }
                (Delivery::of(&outcomes), Vec::new())
            }
            Clients::Workers(w) => w.finish().await,
        }
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

/// Fills the delivery figures of `report` from the producer's acknowledgements and what the clients received
/// (`notes`: what [`Fleet::finish`] said beside it).
pub(super) fn tally(
    report: &mut Report,
    produced: &Produced,
    delivery: &Delivery,
    sessions: usize,
    notes: Vec<String>,
) {
    report.produced = produced.acked_total();
    report.produce_errors = produced.errors.load(Ordering::Relaxed);
    report.delivered = delivery.distinct;
    report.duplicated = delivery.duplicated;
    report.out_of_order = delivery.out_of_order;
    report.lost = report.produced.saturating_sub(delivery.distinct);
    if delivery.reported != sessions as u64 {
        report.notes.push(format!(
            "{} of {sessions} socket tasks did not report",
            (sessions as u64).saturating_sub(delivery.reported),
        ));
    }
    report.notes.extend(notes);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Tracker;

    fn outcome(ns: &[u64]) -> Outcome {
        let mut tracker = Tracker::default();
        for &n in ns {
            tracker.observe(n);
        }
        Outcome {
            tracker,
            welcomed: true,
        }
    }

    #[test]
    fn delivery_sums_the_outcomes_and_adds_up() {
        let d = Delivery::of(&[outcome(&[1, 2, 2]), outcome(&[2, 1]), outcome(&[])]);
        let want = Delivery {
            distinct: 4,
            duplicated: 1,
            out_of_order: 1,
            reported: 3,
        };
        assert_eq!(d, want);
        assert_eq!(
            d.plus(want),
            Delivery {
                distinct: 8,
                duplicated: 2,
                out_of_order: 2,
                reported: 6
            }
        );
    }

    #[test]
    fn tally_counts_what_was_acknowledged_and_not_received_as_lost() {
        let produced = Produced::new(2);
        produced.acked[0].store(3, Ordering::Relaxed);
        produced.acked[1].store(2, Ordering::Relaxed);
        let mut report = Report::new("t");
        let d = Delivery {
            distinct: 4,
            duplicated: 0,
            out_of_order: 0,
            reported: 1,
        };
        tally(
            &mut report,
            &produced,
            &d,
            2,
            vec!["worker 2 said so".into()],
        );
        assert_eq!((report.produced, report.delivered, report.lost), (5, 4, 1));
        assert_eq!(
            report.notes,
            ["1 of 2 socket tasks did not report", "worker 2 said so"]
        );
    }
}
