//! More sockets than one process may hold: the run starts this program again as `ces-loadtest worker` processes
//! and gives each a contiguous share of the sessions.
//!
//! The open-files limit is per process (20,000 on the reference machine), and every socket is a descriptor, so
//! one load generator holds at most ~19,000 sockets; 100,000 connections take six processes. The design keeps
//! everything that is not a socket in the process that started the run: it registers the sessions, produces to
//! Kafka, measures the edges and writes the report. A worker only holds sockets:
//!
//! - it reads one [`WorkerPlan`] line on stdin (its sessions, the targets, the index of its first session in the
//!   run, which picks its source addresses so no two processes share a source address's ephemeral ports);
//! - it opens its sockets with `--connect-concurrency / workers` handshakes in flight, and every 200 ms writes a
//!   [`Progress`](super::wire::Progress) line on stdout: running totals of its counters, the latency samples and
//!   resume times since the last line;
//! - it closes its sockets when its stdin closes (the run is over, or the run's process died: the kernel closes
//!   the pipe either way), or at the plan's deadline, and writes its [`Delivery`] as its last line.
//!
//! The run mirrors every worker's lines into its own [`Shared`], so connecting, driving, progress lines and the
//! report read the same counters as with the sockets in-process. Bounded: the workers are killed if the run drops
//! them, each has its own deadline, and the run waits at most 30 s for a worker's last line and 5 s for its exit.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::cli::Common;
use crate::clients::{Session, Shared};

use super::fleet::Delivery;
use super::wire::{Counters, Message, WorkerPlan};

/// How long the run waits for a worker's last line after closing its stdin: its sockets close in parallel, each
/// within 2 s, and the worker gives up on the rest after 15 s.
const LAST_LINE_WAIT: Duration = Duration::from_secs(30);
/// How long the run waits for a worker to exit after its last line, before killing it.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// The worker processes of a run.
pub(super) struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    index: usize,
    child: Child,
    /// Closed to tell the worker to stop.
    stdin: Option<ChildStdin>,
    /// Mirrors its lines into the run's counters; returns its last line.
    follow: JoinHandle<Option<Delivery>>,
}

/// How the sessions are shared out: `(first index, count)` of each worker, as few workers as hold at most `per`
/// each, with shares that differ by at most one.
pub(super) fn shares(sessions: usize, per: u64) -> Vec<(usize, usize)> {
    let per = usize::try_from(per).unwrap_or(usize::MAX).max(1);
    let n = sessions.div_ceil(per).max(1);
    let (base, extra) = (sessions / n, sessions % n);
    let mut first = 0;
    (0..n)
        .map(|k| {
            let count = base + usize::from(k < extra);
            let share = (first, count);
            first += count;
            share
        })
        .collect()
}

impl Workers {
    /// Starts one worker per share of `sessions` (at most `per` each) and hands each its plan; their counters are
    /// mirrored into `shared` from then on.
    pub(super) async fn start(
        c: &Common,
        sessions: &[Session],
        per: u64,
        shared: &Arc<Shared>,
    ) -> anyhow::Result<Self> {
        let shares = shares(sessions.len(), per);
        let exe = std::env::current_exe().context("find this program to start its workers")?;
        let concurrency = (c.connect_concurrency / shares.len() as u64).max(1);
        // Longer than anything a run waits for: connecting, the stream, two settle windows (storm), the stop.
        let deadline_s = 60 + sessions.len() as u64 / 200 + c.duration + 2 * c.settle + 300;
        eprintln!(
            "[workers] {} sockets over {} worker processes of at most {} each (--per-process {per})",
            sessions.len(),
            shares.len(),
            shares.iter().map(|s| s.1).max().unwrap_or(0),
        );
        let mut workers = Vec::with_capacity(shares.len());
        for (index, (first, count)) in shares.into_iter().enumerate() {
            let plan = WorkerPlan {
                worker: index,
                targets: c.target.clone(),
                per_source: c.per_source,
                connect_concurrency: concurrency,
                first_index: first as u64,
                sessions: sessions[first..first + count].to_vec(),
                deadline_s,
            };
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("start worker {index} ({})", exe.display()))?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = serde_json::to_vec(&plan)?;
            line.push(b'\n');
            stdin
                .write_all(&line)
                .await
                .with_context(|| format!("hand worker {index} its plan"))?;
            stdin.flush().await?;
            let follow = tokio::spawn(follow(index, stdout, shared.clone()));
            workers.push(Worker {
                index,
                child,
                stdin: Some(stdin),
                follow,
            });
        }
        Ok(Self { workers })
    }

    /// Worker processes.
    pub(super) fn len(&self) -> usize {
        self.workers.len()
    }

    /// Which worker stopped reporting while the run still wanted it, if one did.
    pub(super) fn ended_early(&mut self) -> Option<String> {
        let w = self.workers.iter_mut().find(|w| w.follow.is_finished())?;
        let status = w.child.try_wait().ok().flatten();
        Some(format!(
            "worker {} ended early ({})",
            w.index,
            status.map_or("still running".to_owned(), |s| s.to_string())
        ))
    }

    /// Tells every worker to close its sockets, and returns what they received, with a note for each worker that
    /// did not report or did not exit cleanly.
    pub(super) async fn finish(mut self) -> (Delivery, Vec<String>) {
        for w in &mut self.workers {
            drop(w.stdin.take());
        }
        let mut total = Delivery::default();
        let mut notes = Vec::new();
        for mut w in self.workers {
            match tokio::time::timeout(LAST_LINE_WAIT, &mut w.follow).await {
                Ok(Ok(Some(delivery))) => total = total.plus(delivery),
                _ => notes.push(format!(
                    "worker {} did not report what its sockets received within {LAST_LINE_WAIT:?}",
                    w.index
                )),
            }
            match tokio::time::timeout(EXIT_WAIT, w.child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => notes.push(format!("worker {} exited with {status}", w.index)),
                Ok(Err(e)) => notes.push(format!("worker {}: {e}", w.index)),
                Err(_) => {
                    notes.push(format!("worker {} did not exit; killed", w.index));
                    let _ = w.child.kill().await;
                }
            }
            w.follow.abort();
        }
        (total, notes)
    }
}

/// Reads worker `index`'s lines until its last, mirroring each progress into `shared`. A worker that ends holds
/// no sockets, whatever it said last.
async fn follow(index: usize, stdout: ChildStdout, shared: Arc<Shared>) -> Option<Delivery> {
    let mut lines = BufReader::new(stdout).lines();
    let mut last = Counters::default();
    let mut done = None;
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<Message>(&line) {
            Ok(Message::Progress(p)) => {
                p.mirror_into(&last, &shared);
                last = p.counters;
            }
            Ok(Message::Done(delivery)) => {
                done = Some(delivery);
                break;
            }
            Err(e) => eprintln!(
                "[worker {index}] unreadable line ({e}): {}",
                line.chars().take(120).collect::<String>()
            ),
        }
    }
    Counters {
        connected: 0,
        ..last
    }
    .apply_since(&last, &shared);
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_as_few_as_the_limit_allows_and_even() {
        assert_eq!(
            shares(100_000, 19_000),
            [
                (0, 16_667),
                (16_667, 16_667),
                (33_334, 16_667),
                (50_001, 16_667),
                (66_668, 16_666),
                (83_334, 16_666)
            ]
        );
        assert_eq!(
            shares(40_000, 19_000),
            [(0, 13_334), (13_334, 13_333), (26_667, 13_333)]
        );
        assert_eq!(shares(19_000, 19_000), [(0, 19_000)]);
        assert_eq!(shares(5, 2), [(0, 2), (2, 2), (4, 1)]);
        assert_eq!(shares(3, 0), [(0, 1), (1, 1), (2, 1)]);
        let total: usize = shares(100_001, 19_000).iter().map(|s| s.1).sum();
        assert_eq!(total, 100_001);
    }
}
