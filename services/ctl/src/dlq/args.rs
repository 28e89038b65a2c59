//! The command line of `cesctl dlq`: clap argument structs for the topic options and the five subcommands (the
//! selection `replay` and `dismiss` share is [`Selection`]), and the parsers of `--reason` and `--since`. Nothing here touches Kafka; each subcommand module reads its own
//! struct.

use ces_protocol::record::Reason;
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{Args, Subcommand};
use time::OffsetDateTime;

use super::letter::{self, Coord, Filter};
use crate::commands::DEFAULT_BROKERS;

/// Default dead-letter topic (ingest's `CES_DLQ_TOPIC` default).
const DEFAULT_TOPIC: &str = "ces.events.dlq";

/// `cesctl dlq [--brokers B] [--topic T] <command>`
#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "CES_KAFKA_BROKERS", default_value = DEFAULT_BROKERS, global = true)]
    pub(super) brokers: String,
    /// Dead-letter topic.
    #[arg(long, env = "CES_DLQ_TOPIC", default_value = DEFAULT_TOPIC, global = true)]
    pub(super) topic: String,
    /// Consumer group whose committed offsets mark the dead letters handled (replayed or dismissed).
    #[arg(long, env = "CES_DLQ_HANDLED_GROUP", default_value = ces_protocol::dlq::DEFAULT_HANDLED_GROUP, global = true)]
    pub(super) handled_group: String,
    #[command(subcommand)]
    pub(super) command: DlqCommand,
}

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub(super) enum DlqCommand {
    /// List dead letters, one per line, in partition:offset order.
    List(ListArgs),
    /// Print every header, the key and the full value of one dead letter.
    Show(ShowArgs),
    /// Count dead letters by reason and by age, and those not yet handled per partition.
    Stats(StatsArgs),
    /// Re-produce dead letters to their source topic.
    ///
    /// Needs at least one selector (--reason, --offsets, --since) or --all; selectors combine, a dead letter must
    /// match all of them. Dead letters whose source topic is not allowed (--allowed-topics), replayed
    /// --max-replays times already, or whose value was omitted from the DLQ, are refused.
    Replay(ReplayArgs),
    /// Mark dead letters handled without replaying them.
    ///
    /// Needs at least one selector (--reason, --offsets, --since) or --all, as replay. Moves the handled group's
    /// offset of each partition over the contiguous dead letters dismissed; nothing is produced or deleted.
    Dismiss(DismissArgs),
}

/// `cesctl dlq list` options.
#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Only dead letters with this reason code.
    #[arg(long, value_parser = reason_parser())]
    pub(super) reason: Option<Reason>,
    /// Only dead letters that failed at or after this time: RFC 3339, or an age such as 30s, 15m, 2h, 7d.
    #[arg(long, value_parser = since_arg)]
    pub(super) since: Option<OffsetDateTime>,
    /// Print at most this many (the first ones in partition:offset order).
    #[arg(long)]
    pub(super) limit: Option<usize>,
    /// One JSON object per line (JSONL) instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

/// `cesctl dlq show` options.
#[derive(Debug, Args)]
pub(super) struct ShowArgs {
    /// Position in the dead-letter topic, as <partition>:<offset> (the first column of `list`).
    pub(super) coord: Coord,
    /// One JSON object instead of text.
    #[arg(long)]
    pub(super) json: bool,
}

/// `cesctl dlq stats` options.
#[derive(Debug, Args)]
pub(super) struct StatsArgs {
    /// One JSON object instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

/// Which dead letters `replay` and `dismiss` act on: selectors combine (a dead letter must match all of them).
#[derive(Debug, Args)]
// Acting on the whole DLQ by accident would re-inject or hide every poison record, so something must be chosen.
#[group(id = "selector", required = true, multiple = true)]
pub(super) struct Selection {
    /// Only dead letters with this reason code.
    #[arg(long, value_parser = reason_parser())]
    pub(super) reason: Option<Reason>,
    /// Only these dead letters, as <partition>:<offset>[,<partition>:<offset>...].
    #[arg(long, value_delimiter = ',')]
    pub(super) offsets: Vec<Coord>,
    /// Only dead letters that failed at or after this time: RFC 3339, or an age such as 30s, 15m, 2h, 7d.
    #[arg(long, value_parser = since_arg)]
    pub(super) since: Option<OffsetDateTime>,
    /// Every dead letter in the topic.
    #[arg(long, conflicts_with_all = ["reason", "offsets", "since"])]
    pub(super) all: bool,
}

impl Selection {
    /// The filter the selectors make.
    pub(super) fn filter(&self) -> Filter {
        Filter {
            reason: self.reason,
            since: self.since,
            offsets: self.offsets.iter().copied().collect(),
        }
    }
}

/// `cesctl dlq replay` options.
#[derive(Debug, Args)]
pub(super) struct ReplayArgs {
    #[command(flatten)]
    pub(super) selection: Selection,
    /// Topics a replay may write to, comma-separated [env: CES_REPLAY_ALLOWED_TOPICS, else ingest's
    /// CES_KAFKA_TOPICS] [default: ces.events]. A dead letter whose source topic is not one of them is refused.
    #[arg(long, value_delimiter = ',')]
    pub(super) allowed_topics: Vec<String>,
    /// Refuse dead letters already replayed this many times (their ces-replay-count).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) max_replays: u32,
    /// Print what would be replayed and refused, produce nothing.
    #[arg(long)]
    pub(super) dry_run: bool,
    /// One JSON summary object instead of tables.
    #[arg(long)]
    pub(super) json: bool,
}

/// `cesctl dlq dismiss` options.
#[derive(Debug, Args)]
pub(super) struct DismissArgs {
    #[command(flatten)]
    pub(super) selection: Selection,
    /// Print what would be dismissed, commit nothing.
    #[arg(long)]
    pub(super) dry_run: bool,
    /// One JSON summary object instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

/// `--reason`: a known code only; clap's error then lists the valid ones.
fn reason_parser() -> impl clap::builder::TypedValueParser<Value = Reason> {
    PossibleValuesParser::new(Reason::ALL.map(Reason::as_str))
        .map(|code| Reason::from_code(&code).expect("a code from Reason::ALL"))
}

/// `--since`, counted back from the moment the command line is parsed.
fn since_arg(s: &str) -> Result<OffsetDateTime, String> {
    letter::parse_since(s, OffsetDateTime::now_utc())
}
