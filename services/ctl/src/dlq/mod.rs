//! `cesctl dlq ...`: inspect and replay the dead-letter topic.
//!
//! - `list`, `show`, `stats` read the topic without joining a consumer group ([`kafka::Reader`]), up to the
//!   high watermarks seen at the start, so they always terminate and never disturb ingest.
//! - `replay` re-produces selected dead letters to their source topic with the original key, value and headers
//!   (minus `ces-dlq-*`), counting replays in `ces-replay-count` so a record that keeps failing is refused
//!   after `--max-replays` instead of looping.
//!
//! What is decided about a dead letter without I/O lives in [`letter`]; output is written to any `Write` so it
//! is rendered the same way everywhere.

mod kafka;
mod letter;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::ops::Range;

use anyhow::{Context as _, bail};
use ces_protocol::record::Reason;
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{ArgGroup, Args, Subcommand};
use futures::StreamExt as _;
use serde::Serialize;
use time::OffsetDateTime;

use crate::commands::DEFAULT_BROKERS;
use crate::table;
use letter::{Age, Coord, DeadLetter, Filter};

/// Default dead-letter topic (ingest's `CES_DLQ_TOPIC` default).
const DEFAULT_TOPIC: &str = "ces.events.dlq";
/// Characters of the detail and the value shown in a `list` table cell.
const DETAIL_WIDTH: usize = 40;
const VALUE_WIDTH: usize = 40;
/// Replays in flight at once: enough to keep the producer's batches full, few enough that a huge selection
/// does not queue everything in librdkafka at once.
const REPLAYS_IN_FLIGHT: usize = 256;

/// `cesctl dlq [--brokers B] [--topic T] <command>`
#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "CES_KAFKA_BROKERS", default_value = DEFAULT_BROKERS, global = true)]
    brokers: String,
    /// Dead-letter topic.
    #[arg(long, env = "CES_DLQ_TOPIC", default_value = DEFAULT_TOPIC, global = true)]
    topic: String,
    #[command(subcommand)]
    command: DlqCommand,
}

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, one per line, in partition:offset order.
    List(ListArgs),
    /// Print every header, the key and the full value of one dead letter.
    Show(ShowArgs),
    /// Count dead letters by reason and by age.
    Stats(StatsArgs),
    /// Re-produce dead letters to their source topic.
    ///
    /// Needs at least one selector (--reason, --offsets, --since) or --all; selectors combine, a dead letter must
    /// match all of them. Dead letters replayed --max-replays times already, or whose value was omitted from the
    /// DLQ, are refused.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only dead letters with this reason code.
    #[arg(long, value_parser = reason_parser())]
    reason: Option<Reason>,
    /// Only dead letters that failed at or after this time: RFC 3339, or an age such as 30s, 15m, 2h, 7d.
    #[arg(long, value_parser = since_arg)]
    since: Option<OffsetDateTime>,
    /// Print at most this many (the first ones in partition:offset order).
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON object per line (JSONL) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// Position in the dead-letter topic, as <partition>:<offset> (the first column of `list`).
    coord: Coord,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
// Replaying the whole DLQ by accident would re-inject every poison record, so something must be chosen.
#[command(group(
    ArgGroup::new("selector")
        .required(true)
        .multiple(true)
        .args(["reason", "offsets", "since", "all"])
))]
struct ReplayArgs {
    /// Only dead letters with this reason code.
    #[arg(long, value_parser = reason_parser())]
    reason: Option<Reason>,
    /// Only these dead letters, as <partition>:<offset>[,<partition>:<offset>...].
    #[arg(long, value_delimiter = ',')]
    offsets: Vec<Coord>,
    /// Only dead letters that failed at or after this time: RFC 3339, or an age such as 30s, 15m, 2h, 7d.
    #[arg(long, value_parser = since_arg)]
    since: Option<OffsetDateTime>,
    /// Every dead letter in the topic.
    #[arg(long, conflicts_with_all = ["reason", "offsets", "since"])]
    all: bool,
    /// Refuse dead letters already replayed this many times (their ces-replay-count).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    max_replays: u32,
    /// Print what would be replayed and refused, produce nothing.
    #[arg(long)]
    dry_run: bool,
    /// One JSON summary object instead of tables.
    #[arg(long)]
    json: bool,
}

/// `--reason`: a known code only; clap's error then lists the valid ones.
fn reason_parser() -> impl clap::builder::TypedValueParser<Value = Reason> {
    PossibleValuesParser::new(Reason::ALL.map(Reason::as_str))
        .map(|code| Reason::from_code(&code).expect("a code from Reason::ALL"))
}

fn since_arg(s: &str) -> Result<OffsetDateTime, String> {
    letter::parse_since(s, OffsetDateTime::now_utc())
}

/// Runs `cesctl dlq ...`.
pub(crate) async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let DlqArgs {
        brokers,
        topic,
        command,
    } = args;
    match command {
        DlqCommand::List(a) => list(brokers, topic, a).await,
        DlqCommand::Show(a) => show(brokers, topic, a).await,
        DlqCommand::Stats(a) => stats(brokers, topic, a).await,
        DlqCommand::Replay(a) => replay(brokers, topic, a).await,
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

/// The error for a coordinate the topic does not hold.
fn not_there(topic: &str, c: Coord, held: &Range<i64>) -> anyhow::Error {
    if held.is_empty() {
        anyhow::anyhow!(
            "no dead letter at {c}; partition {} of {topic} is empty",
            c.partition
        )
    } else {
        anyhow::anyhow!(
            "no dead letter at {c}; partition {} holds offsets {}..={}",
            c.partition,
            held.start,
            held.end - 1
        )
    }
}

/// The error for a partition the topic does not have.
fn no_partition(topic: &str, partition: i32, reader: &kafka::Reader) -> anyhow::Error {
    let ps = reader.partitions();
    anyhow::anyhow!(
        "{topic} has no partition {partition}; it has partitions {}..={}",
        ps.first().unwrap_or(&0),
        ps.last().unwrap_or(&0)
    )
}

/// Reads the dead letters at `coords`, failing with a clear message if any is not there.
///
/// Each partition is read from its lowest offset in `coords` to its highest, within its watermarks.
fn read_at(
    reader: &kafka::Reader,
    topic: &str,
    coords: &BTreeSet<Coord>,
) -> anyhow::Result<BTreeMap<Coord, DeadLetter>> {
    // Offsets wanted per partition, first..last + 1 (`coords` is in partition:offset order).
    let mut wanted: BTreeMap<i32, Range<i64>> = BTreeMap::new();
    for c in coords {
        if !reader.partitions().contains(&c.partition) {
            return Err(no_partition(topic, c.partition, reader));
        }
        wanted.entry(c.partition).or_insert(c.offset..c.offset).end = c.offset + 1;
    }
    let mut held = BTreeMap::new();
    let mut spans = BTreeMap::new();
    for (p, w) in wanted {
        let h = reader.watermarks(p)?;
        spans.insert(p, w.start.max(h.start)..w.end.min(h.end));
        held.insert(p, h);
    }
    let mut found = BTreeMap::new();
    reader.read(&spans, |d| {
        let c = Coord {
            partition: d.partition,
            offset: d.offset,
        };
        if coords.contains(&c) {
            found.insert(c, d);
        }
    })?;
    for c in coords {
        if found.contains_key(c) {
            continue;
        }
        let held = &held[&c.partition];
        if held.contains(&c.offset) {
            // Inside the partition but absent: compacted away, or a transaction marker.
            bail!("no dead letter at {c} (no record at that offset)");
        }
        return Err(not_there(topic, *c, held));
    }
    Ok(found)
}

async fn list(brokers: String, topic: String, args: ListArgs) -> anyhow::Result<()> {
    let filter = Filter {
        reason: args.reason,
        since: args.since,
        ..Filter::default()
    };
    let limit = args.limit;
    let letters = blocking(move || {
        let reader = kafka::Reader::connect(&brokers, &topic)?;
        let spans = reader.whole_topic()?;
        // Partitions are read concurrently, so order is restored here; with --limit only the first N are kept.
        let mut kept: BTreeMap<Coord, DeadLetter> = BTreeMap::new();
        reader.read(&spans, |d| {
            if d.matches(&filter) {
                kept.insert(
                    Coord {
                        partition: d.partition,
                        offset: d.offset,
                    },
                    d,
                );
                if limit.is_some_and(|n| kept.len() > n) {
                    kept.pop_last();
                }
            }
        })?;
        Ok(kept.into_values().collect::<Vec<_>>())
    })
    .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for d in &letters {
            serde_json::to_writer(&mut out, &d.to_json())?;
            writeln!(out)?;
        }
    } else if letters.is_empty() {
        writeln!(out, "no dead letters")?;
    } else {
        let rows: Vec<Vec<String>> = letters
            .iter()
            .map(|d| {
                vec![
                    format!("{}:{}", d.partition, d.offset),
                    d.header(ces_protocol::dlq::FAILED_AT)
                        .unwrap_or("-")
                        .to_owned(),
                    d.reason().unwrap_or("-").to_owned(),
                    d.source().to_string(),
                    letter::truncate(
                        d.header(ces_protocol::dlq::DETAIL).unwrap_or("-"),
                        DETAIL_WIDTH,
                    ),
                    match d.header(ces_protocol::dlq::VALUE_OMITTED) {
                        Some(size) => format!("<omitted, {size} bytes>"),
                        None => letter::preview(d.value.as_deref(), VALUE_WIDTH),
                    },
                ]
            })
            .collect();
        table::write(
            &mut out,
            &["DLQ", "FAILED AT", "REASON", "SOURCE", "DETAIL", "VALUE"],
            &rows,
        )?;
    }
    out.flush()?;
    Ok(())
}

async fn show(brokers: String, topic: String, args: ShowArgs) -> anyhow::Result<()> {
    let c = args.coord;
    let letter = blocking(move || {
        let reader = kafka::Reader::connect(&brokers, &topic)?;
        let mut found = read_at(&reader, &topic, &[c].into())?;
        Ok(found.remove(&c).expect("read_at returns every coordinate"))
    })
    .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &letter.to_json())?;
        writeln!(out)?;
    } else {
        write_letter(&mut out, &letter)?;
    }
    out.flush()?;
    Ok(())
}

/// The text form of `show`: headers one per line as `name: value`, then the key and the whole value.
fn write_letter(out: &mut impl Write, d: &DeadLetter) -> std::io::Result<()> {
    let text = |b: Option<&[u8]>| match letter::encode(b) {
        (None, _) => "(none)".to_owned(),
        (Some(s), Some("base64")) => format!(
            "(not UTF-8, {} bytes, base64) {s}",
            b.map_or(0, <[u8]>::len)
        ),
        (Some(s), _) => s.into_owned(),
    };
    writeln!(out, "dead letter {}:{}", d.partition, d.offset)?;
    if let Some(ts) = d.timestamp {
        writeln!(out, "timestamp: {ts}")?;
    }
    writeln!(out, "headers:")?;
    for (name, value) in &d.headers {
        writeln!(out, "  {name}: {}", text(value.as_deref()))?;
    }
    writeln!(out, "key: {}", text(d.key.as_deref()))?;
    match &d.value {
        Some(v) => writeln!(out, "value ({} bytes):\n{}", v.len(), text(Some(v)))?,
        None => writeln!(out, "value: (none)")?,
    }
    Ok(())
}

/// Counts of one group of dead letters (one reason, or all).
#[derive(Debug, Default, Serialize)]
struct Counts {
    count: u64,
    oldest: Option<String>,
    newest: Option<String>,
    #[serde(skip)]
    span: Option<(OffsetDateTime, OffsetDateTime)>,
    age: AgeCounts,
}

/// Dead letters by age of `ces-dlq-failed-at`; the buckets do not overlap.
#[derive(Debug, Default, Serialize)]
struct AgeCounts {
    /// Less than an hour old.
    under_1h: u64,
    /// An hour to a day old.
    under_24h: u64,
    /// A day or older.
    older: u64,
    /// Without a readable failed-at.
    unknown: u64,
}

impl Counts {
    fn add(&mut self, d: &DeadLetter, now: OffsetDateTime) {
        self.count += 1;
        let failed_at = d.failed_at();
        match Age::of(failed_at, now) {
            Age::Hour => self.age.under_1h += 1,
            Age::Day => self.age.under_24h += 1,
            Age::Older => self.age.older += 1,
            Age::Unknown => self.age.unknown += 1,
        }
        let (Some(t), Some(raw)) = (failed_at, d.header(ces_protocol::dlq::FAILED_AT)) else {
            return;
        };
        let (oldest, newest) = self.span.get_or_insert((t, t));
        // Shown as written in the header rather than re-formatted, so it greps the same as `list`.
        if t <= *oldest {
            *oldest = t;
            self.oldest = Some(raw.to_owned());
        }
        if t >= *newest {
            *newest = t;
            self.newest = Some(raw.to_owned());
        }
    }
}

#[derive(Debug, Serialize)]
struct Stats {
    topic: String,
    #[serde(flatten)]
    total: Counts,
    by_reason: BTreeMap<String, Counts>,
}

async fn stats(brokers: String, topic: String, args: StatsArgs) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let stats = blocking(move || {
        let reader = kafka::Reader::connect(&brokers, &topic)?;
        let spans = reader.whole_topic()?;
        let mut stats = Stats {
            topic,
            total: Counts::default(),
            by_reason: BTreeMap::new(),
        };
        reader.read(&spans, |d| {
            stats.total.add(&d, now);
            stats
                .by_reason
                .entry(d.reason().unwrap_or("-").to_owned())
                .or_default()
                .add(&d, now);
        })?;
        Ok(stats)
    })
    .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &stats)?;
        writeln!(out)?;
    } else if stats.total.count == 0 {
        writeln!(out, "{} is empty", stats.topic)?;
    } else {
        let undated = stats.total.age.unknown > 0;
        let row = |name: &str, c: &Counts| {
            let mut row = vec![
                name.to_owned(),
                c.count.to_string(),
                c.oldest.clone().unwrap_or_else(|| "-".into()),
                c.newest.clone().unwrap_or_else(|| "-".into()),
                c.age.under_1h.to_string(),
                c.age.under_24h.to_string(),
                c.age.older.to_string(),
            ];
            if undated {
                row.push(c.age.unknown.to_string());
            }
            row
        };
        let mut rows: Vec<Vec<String>> = stats.by_reason.iter().map(|(r, c)| row(r, c)).collect();
        rows.push(row("total", &stats.total));
        let mut header = vec![
            "REASON", "COUNT", "OLDEST", "NEWEST", "<1H", "1H-24H", ">=24H",
        ];
        if undated {
            header.push("UNDATED");
        }
        table::write(&mut out, &header, &rows)?;
    }
    out.flush()?;
    Ok(())
}

/// What happened to one selected dead letter.
#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
enum Outcome {
    /// Produced and acknowledged.
    Replayed {
        replay_count: u32,
        target_partition: i32,
        target_offset: i64,
    },
    /// `--dry-run`: would have been produced.
    WouldReplay { replay_count: u32 },
    /// Not produced, for the reason given.
    Refused { note: String },
    /// Producing failed.
    Failed { note: String },
}

#[derive(Debug, Serialize)]
struct ReplayLine {
    partition: i32,
    offset: i64,
    reason: Option<String>,
    source_topic: Option<String>,
    source_partition: Option<i32>,
    source_offset: Option<i64>,
    #[serde(flatten)]
    outcome: Outcome,
}

#[derive(Debug, Default, Serialize)]
struct ReplayCounts {
    replayed: u64,
    refused: u64,
    failed: u64,
}

impl ReplayCounts {
    fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Replayed { .. } | Outcome::WouldReplay { .. } => self.replayed += 1,
            Outcome::Refused { .. } => self.refused += 1,
            Outcome::Failed { .. } => self.failed += 1,
        }
    }
}

/// The `replay --json` summary. With `dry_run`, `replayed` counts what would have been replayed.
#[derive(Debug, Serialize)]
struct ReplaySummary {
    dry_run: bool,
    #[serde(flatten)]
    total: ReplayCounts,
    by_reason: BTreeMap<String, ReplayCounts>,
    letters: Vec<ReplayLine>,
}

async fn replay(brokers: String, topic: String, args: ReplayArgs) -> anyhow::Result<()> {
    let filter = Filter {
        reason: args.reason,
        since: args.since,
        offsets: args.offsets.iter().copied().collect(),
    };
    let max_replays = args.max_replays;
    let reader_brokers = brokers.clone();
    let (letters, targets) = blocking(move || {
        let brokers = reader_brokers;
        let reader = kafka::Reader::connect(&brokers, &topic)?;
        let mut selected: BTreeMap<Coord, DeadLetter> = if filter.offsets.is_empty() {
            let mut selected = BTreeMap::new();
            reader.read(&reader.whole_topic()?, |d| {
                if d.matches(&filter) {
                    selected.insert(
                        Coord {
                            partition: d.partition,
                            offset: d.offset,
                        },
                        d,
                    );
                }
            })?;
            selected
        } else {
            // Every coordinate is checked before anything is produced, so a typo fails the whole replay.
            read_at(&reader, &topic, &filter.offsets)?
        };
        selected.retain(|_, d| d.matches(&filter));
        // Where each source topic exists, so a replay to a missing topic or partition is refused up front
        // rather than failing after librdkafka's delivery timeout.
        let mut targets: BTreeMap<String, Option<Vec<i32>>> = BTreeMap::new();
        let topics: BTreeSet<String> = selected.values().filter_map(|d| d.source().topic).collect();
        for t in topics {
            let partitions = reader.topic_partitions(&t)?;
            targets.insert(t, partitions);
        }
        Ok((selected.into_values().collect::<Vec<_>>(), targets))
    })
    .await?;

    let plans: Vec<Result<letter::Replay, String>> = letters
        .iter()
        .map(|d| {
            let plan = d.plan_replay(max_replays)?;
            match targets.get(&plan.topic) {
                Some(Some(partitions)) => {
                    if let Some(p) = plan.partition.filter(|p| !partitions.contains(p)) {
                        return Err(format!("source topic {} has no partition {p}", plan.topic));
                    }
                }
                _ => return Err(format!("source topic {} does not exist", plan.topic)),
            }
            Ok(plan)
        })
        .collect();

    let outcomes: Vec<Outcome> = if args.dry_run {
        plans
            .into_iter()
            .map(|p| match p {
                Ok(r) => Outcome::WouldReplay {
                    replay_count: r.count,
                },
                Err(note) => Outcome::Refused { note },
            })
            .collect()
    } else {
        let producer = if plans.iter().any(Result::is_ok) {
            Some(kafka::producer(&brokers)?)
        } else {
            None
        };
        let (producer, brokers) = (&producer, &brokers);
        futures::stream::iter(plans)
            .map(|p| async move {
                let r = match p {
                    Ok(r) => r,
                    Err(note) => return Outcome::Refused { note },
                };
                let producer = producer.as_ref().expect("created when any plan is ok");
                match kafka::produce(producer, brokers, &r).await {
                    Ok(at) => Outcome::Replayed {
                        replay_count: r.count,
                        target_partition: at.partition,
                        target_offset: at.offset,
                    },
                    Err(e) => Outcome::Failed {
                        note: format!("{e:#}"),
                    },
                }
            })
            .buffered(REPLAYS_IN_FLIGHT)
            .collect()
            .await
    };

    let mut summary = ReplaySummary {
        dry_run: args.dry_run,
        total: ReplayCounts::default(),
        by_reason: BTreeMap::new(),
        letters: Vec::with_capacity(letters.len()),
    };
    for (d, outcome) in letters.iter().zip(outcomes) {
        let source = d.source();
        let reason = d.reason().map(str::to_owned);
        summary.total.add(&outcome);
        summary
            .by_reason
            .entry(reason.clone().unwrap_or_else(|| "-".into()))
            .or_default()
            .add(&outcome);
        summary.letters.push(ReplayLine {
            partition: d.partition,
            offset: d.offset,
            reason,
            source_topic: source.topic,
            source_partition: source.partition,
            source_offset: source.offset,
            outcome,
        });
    }

    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        write_replay(&mut out, &summary)?;
    }
    out.flush()?;
    if summary.total.failed > 0 {
        bail!(
            "{} of {} replays failed",
            summary.total.failed,
            summary.total.failed + summary.total.replayed
        );
    }
    Ok(())
}

/// The text form of `replay`: one row per dead letter, then counts by reason.
fn write_replay(out: &mut impl Write, s: &ReplaySummary) -> std::io::Result<()> {
    if s.letters.is_empty() {
        return writeln!(out, "no dead letter matches");
    }
    let rows: Vec<Vec<String>> = s
        .letters
        .iter()
        .map(|l| {
            let (result, note) = match &l.outcome {
                Outcome::Replayed {
                    replay_count,
                    target_partition,
                    target_offset,
                } => (
                    "replayed",
                    format!(
                        "now at {} {target_partition}:{target_offset}, replay {replay_count}",
                        l.source_topic.as_deref().unwrap_or("?")
                    ),
                ),
                Outcome::WouldReplay { replay_count } => {
                    ("would replay", format!("replay {replay_count}"))
                }
                Outcome::Refused { note } => ("refused", note.clone()),
                Outcome::Failed { note } => ("failed", note.clone()),
            };
            let source = letter::Source {
                topic: l.source_topic.clone(),
                partition: l.source_partition,
                offset: l.source_offset,
            };
            vec![
                format!("{}:{}", l.partition, l.offset),
                l.reason.clone().unwrap_or_else(|| "-".into()),
                source.to_string(),
                result.to_owned(),
                note,
            ]
        })
        .collect();
    table::write(out, &["DLQ", "REASON", "SOURCE", "RESULT", "NOTE"], &rows)?;
    writeln!(out)?;
    let counts = |name: &str, c: &ReplayCounts| {
        vec![
            name.to_owned(),
            c.replayed.to_string(),
            c.refused.to_string(),
            c.failed.to_string(),
        ]
    };
    let mut rows: Vec<Vec<String>> = s.by_reason.iter().map(|(r, c)| counts(r, c)).collect();
    rows.push(counts("total", &s.total));
    let replayed = if s.dry_run {
        "WOULD REPLAY"
    } else {
        "REPLAYED"
    };
    table::write(out, &["REASON", replayed, "REFUSED", "FAILED"], &rows)?;
    if s.dry_run {
        writeln!(out, "dry run: nothing was produced")?;
    }
    Ok(())
}
