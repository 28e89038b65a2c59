//! `cesctl dlq ...`: inspect and replay the dead-letter topic.
//!
//! - `list`, `show`, `stats` read the topic without joining a consumer group ([`kafka::Reader`]), up to the
//!   high watermarks seen at the start, so they always terminate and never disturb ingest.
//! - `replay` re-produces selected dead letters to their source topic with the original key, value and headers
//!   (minus `ces-dlq-*`), counting replays in `ces-replay-count` so a record that keeps failing is refused
//!   after `--max-replays` instead of looping, and only to the topics the allow-list names.
//! - `replay` and `dismiss` mark what they handled in the handled group (`CES_DLQ_HANDLED_GROUP`): its committed
//!   offsets on the DLQ topic end the handled prefix of each partition, and what lies past them is the backlog
//!   (`stats`, and ingest's `ces_ingest_dlq_backlog`).
//!
//! # Layout
//!
//! - [`args`]: the command line.
//! - [`list`], [`show`], [`stats`], [`replay`], [`dismiss`]: one subcommand each, from reading to printing.
//! - [`select`]: reading what `replay` and `dismiss` select.
//! - [`handled`]: how far a run moves the handled group, without I/O; [`group`]: its offsets on the broker.
//! - [`letter`]: what is decided about a dead letter without I/O (headers, selection, the per-letter replay).
//! - [`targets`]: the topics a replay may write to.
//! - [`kafka`]: reading the topic and producing replays; [`headers`]: reading headers whose names are not UTF-8.
//! - [`render`]: output shared by the subcommands (stdout, JSON lines); tables are [`crate::table`].

mod args;
mod dismiss;
mod group;
mod handled;
mod headers;
mod kafka;
mod letter;
mod list;
mod render;
mod replay;
mod select;
mod show;
mod stats;
mod targets;

use anyhow::Context as _;
use ces_runtime::config::Env;

use crate::kafka::Kafka;

pub(crate) use args::DlqArgs;
use args::DlqCommand;

/// Runs `cesctl dlq ...`.
pub(crate) async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let DlqArgs {
        brokers,
        topic,
        handled_group,
        command,
    } = args;
    let kafka = Kafka::read(brokers, &Env)?;
    match command {
        DlqCommand::List(a) => list::run(kafka, topic, a).await,
        DlqCommand::Show(a) => show::run(kafka, topic, a).await,
        DlqCommand::Stats(a) => stats::run(kafka, topic, handled_group, a).await,
        DlqCommand::Replay(a) => replay::run(kafka, topic, handled_group, a).await,
        DlqCommand::Dismiss(a) => dismiss::run(kafka, topic, handled_group, a).await,
    }
}

/// Runs blocking Kafka reads off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("reader task failed")?
}
