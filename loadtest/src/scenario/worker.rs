//! `ces-loadtest worker`: one worker process of a run with more sockets than one process may hold (see
//! [`super::spread`]). It holds the sockets of the sessions its plan names and reports on stdout until its stdin
//! closes or its deadline passes, then closes them and writes what they received.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio_util::sync::CancellationToken;

use crate::clients::{Shared, Target};
use crate::stats::Recorder;

use super::fleet::{self, Delivery};
use super::wire::{Message, Progress, WorkerPlan};

/// How often the worker reports: the run's progress line is per second, and its connect loop polls every 100 ms.
const REPORT_EVERY: Duration = Duration::from_millis(200);
/// Longest the worker waits for its socket tasks to close after it was told to stop.
const CLOSE_WAIT: Duration = Duration::from_secs(15);

/// Runs a worker: reads its plan from stdin, and reports on stdout.
pub(super) async fn run() -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .await
        .context("read the plan from stdin")?;
    let plan: WorkerPlan = serde_json::from_str(&line).context("parse the plan")?;
    drop(line);
    let targets: Arc<[Target]> = plan
        .targets
        .iter()
        .map(|t| Target::parse(t))
        .collect::<anyhow::Result<_>>()?;
    let shared = Arc::new(Shared {
        recorder: Recorder::forwarding(),
        ..Shared::default()
    });
    let stop = CancellationToken::new();
    let mut tasks = fleet::spawn_sockets(
        &plan.sessions,
        plan.first_index,
        &targets,
        plan.per_source,
        usize::try_from(plan.connect_concurrency).unwrap_or(usize::MAX),
        &shared,
        &stop,
    );
    let mut out = tokio::io::stdout();
    let deadline = tokio::time::sleep(Duration::from_secs(plan.deadline_s));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(REPORT_EVERY);
    let mut rest = String::new();
    loop {
        tokio::select! {
            _ = tick.tick() => send(&mut out, &Message::Progress(Progress::take(&shared))).await?,
            read = stdin.read_line(&mut rest) => {
                // Nothing more is ever sent: any line is ignored, the end of the input is the signal to stop.
                if matches!(read, Ok(0) | Err(_)) {
                    break;
                }
                rest.clear();
            }
            () = &mut deadline => {
                eprintln!("[worker {}] deadline of {} s reached; stopping", plan.worker, plan.deadline_s);
                break;
            }
        }
    }
    stop.cancel();
    let mut outcomes = Vec::with_capacity(plan.sessions.len());
    let joined = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(res) = tasks.join_next().await {
            if let Ok(o) = res {
                outcomes.push(o);
            }
        }
    })
    .await;
    if joined.is_err() {
        eprintln!(
            "[worker {}] {} socket tasks did not end within {CLOSE_WAIT:?}",
            plan.worker,
            tasks.len()
        );
    }
    send(&mut out, &Message::Progress(Progress::take(&shared))).await?;
    send(&mut out, &Message::Done(Delivery::of(&outcomes))).await
}

/// Writes `message` as one line and flushes it.
async fn send(out: &mut tokio::io::Stdout, message: &Message) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    out.write_all(&line).await.context("write to stdout")?;
    out.flush().await.context("flush stdout")?;
    Ok(())
}
