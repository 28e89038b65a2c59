//! `cesctl dlq replay`: re-produce selected dead letters to their source topic.
//!
//! In four steps, so that what is decided can be tested without a broker:
//!
//! 1. [`select`] (I/O) reads the dead letters the selectors choose and looks up the source topics they name that
//!    the allow-list ([`AllowList`]) lets a replay write to.
//! 2. [`plan`] (pure) decides, per dead letter, what to produce where with which headers, or why it is refused:
//!    a source topic that is not allowed, replayed `--max-replays` times already, value omitted from the DLQ, a
//!    header that cannot be read, no source topic, or a source topic or partition that does not exist (refused up
//!    front rather than after librdkafka's delivery timeout).
//! 3. [`execute`] (I/O) produces what the plan says, [`REPLAYS_IN_FLIGHT`] at a time, or with `--dry-run` only
//!    says what it would produce ([`rehearse`]).
//! 4. [`summarize`] (pure) counts the outcomes by reason; the summary is printed as tables or one JSON object,
//!    and the command fails when any replay failed.
//! 5. The dead letters replayed are marked handled ([`group::mark`]): the handled group's offset of each partition
//!    moves over the contiguous run of them from where it was; a dead letter refused, failed or not selected
//!    stops it there. A dry run says how far it would move.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use anyhow::bail;
use ces_runtime::config::Env;
use futures::StreamExt as _;
use serde::Serialize;

use super::args::ReplayArgs;
use super::group::{self, Marked};
use super::handled::Seen;
use super::letter::{self, Coord, DeadLetter, Filter};
use super::targets::AllowList;
use super::{blocking, kafka};
use super::{render, select};
use crate::kafka::Kafka;
use crate::table;

/// Replays in flight at once: enough to keep the producer's batches full, few enough that a huge selection
/// does not queue everything in librdkafka at once.
const REPLAYS_IN_FLIGHT: usize = 256;

/// The partitions of each allowed source topic the selection names; `None` when the topic does not exist.
type Targets = BTreeMap<String, Option<Vec<i32>>>;

/// Runs `cesctl dlq replay` against `topic` through `kafka`, marking what it replayed in `handled_group`.
pub(super) async fn run(
    kafka: Kafka,
    topic: String,
    handled_group: String,
    args: ReplayArgs,
) -> anyhow::Result<()> {
    let allowed = AllowList::read(&args.allowed_topics, &topic, &Env)?;
    let filter = args.selection.filter();
    let (letters, seen, targets) = {
        let (kafka, allowed, topic) = (kafka.clone(), allowed.clone(), topic.clone());
        blocking(move || select(&kafka, &topic, &filter, &allowed)).await?
    };
    let plan = plan(letters, &targets, &allowed, args.max_replays);
    let lines = execute(plan, &kafka, args.dry_run).await?;
    let replayed: BTreeSet<Coord> = lines
        .iter()
        .filter(|l| {
            matches!(
                l.outcome,
                Outcome::Replayed { .. } | Outcome::WouldReplay { .. }
            )
        })
        .map(|l| Coord {
            partition: l.subject.partition,
            offset: l.subject.offset,
        })
        .collect();
    let marked = group::mark_handled(kafka, topic, handled_group, seen, replayed, args.dry_run);
    let mut summary = summarize(args.dry_run, lines);
    summary.handled = Some(marked.await?);
    render::to_stdout(|out| {
        if args.json {
            render::json_line(out, &summary)
        } else {
            Ok(write_summary(out, &summary)?)
        }
    })?;
    if summary.total.failed > 0 {
        bail!(
            "{} of {} replays failed",
            summary.total.failed,
            summary.total.failed + summary.total.replayed
        );
    }
    Ok(())
}

/// Reads the dead letters `filter` selects, in partition:offset order ([`select::read`]), what the read saw of
/// each partition, and where each source topic they name exists, for the topics `allowed` (the others are never
/// looked up). Blocking.
fn select(
    kafka: &Kafka,
    topic: &str,
    filter: &Filter,
    allowed: &AllowList,
) -> anyhow::Result<(Vec<DeadLetter>, BTreeMap<i32, Seen>, Targets)> {
    let reader = kafka::Reader::connect(kafka, topic)?;
    let select::Selected {
        letters: selected,
        seen,
    } = select::read(&reader, filter)?;
    let mut targets = Targets::new();
    let topics: BTreeSet<String> = selected
        .values()
        .filter_map(|d| d.source().topic)
        .filter(|t| allowed.allows(t))
        .collect();
    for t in topics {
        let partitions = reader.topic_partitions(&t)?;
        targets.insert(t, partitions);
    }
    Ok((selected.into_values().collect(), seen, targets))
}

/// Which dead letter a line of the plan and of the report is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Subject {
    /// DLQ partition.
    partition: i32,
    /// DLQ offset.
    offset: i64,
    /// `ces-dlq-reason`, as written.
    reason: Option<String>,
    /// `ces-dlq-source-*`: where ingest read the record.
    source_topic: Option<String>,
    source_partition: Option<i32>,
    source_offset: Option<i64>,
    /// Whether the allow-list lets a replay write to the source topic (the replay's target); `None` without one.
    allowed: Option<bool>,
}

impl Subject {
    fn of(d: &DeadLetter, allowed: &AllowList) -> Self {
        let source = d.source();
        Self {
            partition: d.partition,
            offset: d.offset,
            reason: d.reason().map(str::to_owned),
            allowed: source.topic.as_deref().map(|t| allowed.allows(t)),
            source_topic: source.topic,
            source_partition: source.partition,
            source_offset: source.offset,
        }
    }

    /// Where a replay goes: the source topic, on the source partition or by key.
    fn target(&self) -> String {
        match (&self.source_topic, self.source_partition) {
            (None, _) => render::NONE.to_owned(),
            (Some(t), Some(p)) => format!("{t} {p}"),
            (Some(t), None) => format!("{t} by key"),
        }
    }

    fn source(&self) -> letter::Source {
        letter::Source {
            topic: self.source_topic.clone(),
            partition: self.source_partition,
            offset: self.source_offset,
        }
    }
}

/// What the plan does with one selected dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Produce this record (original key, value and partition; headers without `ces-dlq-*`, and the replay
    /// count raised by one).
    Produce(letter::Replay),
    /// Produce nothing, for the reason given.
    Refuse(String),
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Planned {
    subject: Subject,
    step: Step,
}

/// Decides what to do with each dead letter in `letters`, in order, given where the source topics exist
/// (`targets`), which topics a replay may write to (`allowed`) and `--max-replays`. Pure.
fn plan(
    letters: Vec<DeadLetter>,
    targets: &Targets,
    allowed: &AllowList,
    max_replays: u32,
) -> Vec<Planned> {
    letters
        .iter()
        .map(|d| Planned {
            subject: Subject::of(d, allowed),
            step: match step(d, targets, allowed, max_replays) {
                Ok(r) => Step::Produce(r),
                Err(note) => Step::Refuse(note),
            },
        })
        .collect()
}

fn step(
    d: &DeadLetter,
    targets: &Targets,
    allowed: &AllowList,
    max_replays: u32,
) -> Result<letter::Replay, String> {
    // Checked first, so a dead letter aimed at a foreign topic is always reported as such.
    if let Some(t) = d.source().topic.filter(|t| !allowed.allows(t)) {
        return Err(allowed.refusal(&t));
    }
    let replay = d.plan_replay(max_replays)?;
    match targets.get(&replay.topic) {
        Some(Some(partitions)) => {
            if let Some(p) = replay.partition.filter(|p| !partitions.contains(p)) {
                return Err(format!(
                    "source topic {} has no partition {p}",
                    replay.topic
                ));
            }
        }
        _ => return Err(format!("source topic {} does not exist", replay.topic)),
    }
    Ok(replay)
}

/// What happened to one selected dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// One line of the report: a dead letter and what happened to it.
#[derive(Debug, Serialize)]
struct ReplayLine {
    #[serde(flatten)]
    subject: Subject,
    #[serde(flatten)]
    outcome: Outcome,
}

/// Performs `plan`: produces every [`Step::Produce`] through `kafka` and waits for the acknowledgements, or with
/// `dry_run` produces nothing. Lines come back in plan order. Fails only when no producer can be created; a
/// replay that fails is a [`Outcome::Failed`] line.
async fn execute(
    plan: Vec<Planned>,
    kafka: &Kafka,
    dry_run: bool,
) -> anyhow::Result<Vec<ReplayLine>> {
    if dry_run {
        return Ok(rehearse(plan));
    }
    let producer = if plan.iter().any(|p| matches!(p.step, Step::Produce(_))) {
        Some(super::kafka::producer(kafka)?)
    } else {
        None
    };
    let producer = &producer;
    let brokers = kafka.brokers.as_str();
    Ok(futures::stream::iter(plan)
        .map(|Planned { subject, step }| async move {
            let outcome = match step {
                Step::Refuse(note) => Outcome::Refused { note },
                Step::Produce(r) => {
                    let producer = producer.as_ref().expect("created when any step produces");
                    match super::kafka::produce(producer, brokers, &r).await {
                        Ok(at) => Outcome::Replayed {
                            replay_count: r.count,
                            target_partition: at.partition,
                            target_offset: at.offset,
                        },
                        Err(e) => Outcome::Failed {
                            note: format!("{e:#}"),
                        },
                    }
                }
            };
            ReplayLine { subject, outcome }
        })
        .buffered(REPLAYS_IN_FLIGHT)
        .collect()
        .await)
}

/// `--dry-run`: the lines `plan` would give, producing nothing.
fn rehearse(plan: Vec<Planned>) -> Vec<ReplayLine> {
    plan.into_iter()
        .map(|Planned { subject, step }| ReplayLine {
            subject,
            outcome: match step {
                Step::Produce(r) => Outcome::WouldReplay {
                    replay_count: r.count,
                },
                Step::Refuse(note) => Outcome::Refused { note },
            },
        })
        .collect()
}

/// Outcomes counted.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
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
    /// How far the handled group moved (would move, with `dry_run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    handled: Option<Marked>,
}

/// Counts `lines` in total and by reason (`-` for dead letters without one). Pure.
fn summarize(dry_run: bool, lines: Vec<ReplayLine>) -> ReplaySummary {
    let mut total = ReplayCounts::default();
    let mut by_reason: BTreeMap<String, ReplayCounts> = BTreeMap::new();
    for l in &lines {
        total.add(&l.outcome);
        by_reason
            .entry(render::or_none(l.subject.reason.as_deref()))
            .or_default()
            .add(&l.outcome);
    }
    ReplaySummary {
        dry_run,
        total,
        by_reason,
        letters: lines,
        handled: None,
    }
}

/// The text form: one row per dead letter, then counts by reason.
fn write_summary(out: &mut impl Write, s: &ReplaySummary) -> std::io::Result<()> {
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
                        l.subject.source_topic.as_deref().unwrap_or("?")
                    ),
                ),
                Outcome::WouldReplay { replay_count } => {
                    ("would replay", format!("replay {replay_count}"))
                }
                Outcome::Refused { note } => ("refused", note.clone()),
                Outcome::Failed { note } => ("failed", note.clone()),
            };
            let allowed = match l.subject.allowed {
                Some(true) => "yes",
                Some(false) => "no",
                None => render::NONE,
            };
            vec![
                format!("{}:{}", l.subject.partition, l.subject.offset),
                render::or_none(l.subject.reason.as_deref()),
                l.subject.source().to_string(),
                l.subject.target(),
                allowed.to_owned(),
                result.to_owned(),
                note,
            ]
        })
        .collect();
    table::write(
        out,
        &[
            "DLQ", "REASON", "SOURCE", "TARGET", "ALLOWED", "RESULT", "NOTE",
        ],
        &rows,
    )?;
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
    if let Some(marked) = &s.handled {
        marked.write(out)?;
    }
    if s.dry_run {
        writeln!(out, "dry run: nothing was produced")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::dlq::letter::Header;
    use ces_protocol::dlq;

    /// ingest's default: `ces.events` only.
    fn default_list() -> AllowList {
        AllowList::read(
            &[],
            "ces.events.dlq",
            &HashMap::<&'static str, String>::new(),
        )
        .unwrap()
    }

    fn plan(letters: Vec<DeadLetter>, targets: &Targets, max_replays: u32) -> Vec<Planned> {
        super::plan(letters, targets, &default_list(), max_replays)
    }

    fn without(d: &mut DeadLetter, name: &str) {
        d.headers
            .retain(|h| !matches!(h, Header::Named(k, _) if k == name));
    }

    /// A dead letter of `ces.events` partition 3 at DLQ 0:`offset`, with `extra` headers.
    fn dead(offset: i64, extra: &[(&str, &str)]) -> DeadLetter {
        let mut headers = vec![
            ("trace", "abc"),
            (dlq::REASON, "invalid_json"),
            (dlq::SOURCE_TOPIC, "ces.events"),
            (dlq::SOURCE_PARTITION, "3"),
            (dlq::SOURCE_OFFSET, "41"),
        ];
        headers.extend_from_slice(extra);
        DeadLetter {
            partition: 0,
            offset,
            timestamp: None,
            key: Some(b"s1".to_vec()),
            value: Some(b"not json".to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| Header::named(k, v.as_bytes()))
                .collect(),
        }
    }

    fn targets(partitions: Option<Vec<i32>>) -> Targets {
        [("ces.events".to_owned(), partitions)].into()
    }

    fn notes(plan: &[Planned]) -> Vec<Option<&str>> {
        plan.iter()
            .map(|p| match &p.step {
                Step::Produce(_) => None,
                Step::Refuse(note) => Some(note.as_str()),
            })
            .collect()
    }

    #[test]
    fn plans_the_original_record_to_its_source_partition() {
        let plan = plan(vec![dead(7, &[])], &targets(Some(vec![0, 1, 2, 3])), 3);
        assert_eq!(plan.len(), 1);
        assert_eq!(
            plan[0].subject,
            Subject {
                partition: 0,
                offset: 7,
                reason: Some("invalid_json".into()),
                source_topic: Some("ces.events".into()),
                source_partition: Some(3),
                source_offset: Some(41),
                allowed: Some(true),
            }
        );
        assert_eq!(plan[0].subject.target(), "ces.events 3");
        let Step::Produce(r) = &plan[0].step else {
            panic!("refused: {:?}", plan[0].step)
        };
        assert_eq!(r.topic, "ces.events");
        assert_eq!(r.partition, Some(3));
        assert_eq!(r.key.as_deref(), Some(&b"s1"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"not json"[..]));
        assert_eq!(
            r.headers,
            vec![
                ("trace".to_owned(), Some(b"abc".to_vec())),
                (dlq::REPLAY_COUNT.to_owned(), Some(b"1".to_vec())),
            ]
        );
        assert_eq!(r.count, 1);
    }

    #[test]
    fn refuses_what_cannot_land_or_keeps_failing_and_keeps_the_order() {
        let letters = vec![
            dead(1, &[(dlq::REPLAY_COUNT, "3")]),
            dead(2, &[]),
            dead(3, &[(dlq::VALUE_OMITTED, "300000")]),
        ];
        let plan = plan(letters, &targets(Some(vec![0, 1, 2, 3])), 3);
        assert_eq!(
            plan.iter().map(|p| p.subject.offset).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(
            notes(&plan),
            [
                Some("replayed 3 times already (--max-replays 3)"),
                None,
                Some(
                    "value omitted from the DLQ (300000 bytes); the original is at ces.events 3:41"
                ),
            ]
        );
    }

    #[test]
    fn refuses_a_source_topic_or_partition_that_does_not_exist() {
        let missing = "source topic ces.events does not exist";
        assert_eq!(
            notes(&plan(vec![dead(1, &[])], &Targets::new(), 3)),
            [Some(missing)]
        );
        assert_eq!(
            notes(&plan(vec![dead(1, &[])], &targets(None), 3)),
            [Some(missing)]
        );
        assert_eq!(
            notes(&plan(vec![dead(1, &[])], &targets(Some(vec![0, 1])), 3)),
            [Some("source topic ces.events has no partition 3")]
        );
        // Without a source partition the producer partitions by key: any existing topic will do.
        let mut d = dead(1, &[]);
        without(&mut d, dlq::SOURCE_PARTITION);
        let planned = plan(vec![d], &targets(Some(vec![0])), 3);
        assert!(matches!(&planned[0].step, Step::Produce(r) if r.partition.is_none()));
        assert_eq!(planned[0].subject.target(), "ces.events by key");
        let mut d = dead(1, &[]);
        without(&mut d, dlq::SOURCE_TOPIC);
        let planned = plan(vec![d], &targets(Some(vec![3])), 3);
        assert_eq!(notes(&planned), [Some("no ces-dlq-source-topic header")]);
        assert_eq!(planned[0].subject.allowed, None);
        assert_eq!(planned[0].subject.target(), "-");
    }

    #[test]
    fn refuses_a_target_the_allow_list_does_not_name_before_anything_else() {
        let mut foreign = dead(1, &[(dlq::REPLAY_COUNT, "9")]);
        foreign
            .headers
            .push(Header::named(dlq::SOURCE_TOPIC, b"payments"));
        let mut targets = targets(Some(vec![3]));
        targets.insert("payments".into(), Some(vec![3]));
        let planned = plan(vec![foreign.clone(), dead(2, &[])], &targets, 3);
        assert_eq!(
            notes(&planned),
            [
                Some(
                    "target topic payments is not allowed (allowed: ces.events, from ingest's default)"
                ),
                None
            ]
        );
        assert_eq!(planned[0].subject.allowed, Some(false));
        assert_eq!(planned[0].subject.target(), "payments 3");
        assert_eq!(planned[1].subject.allowed, Some(true));
        let list = AllowList::read(
            &["payments".to_owned()],
            "dlq",
            &HashMap::<&'static str, String>::new(),
        )
        .unwrap();
        let planned = super::plan(vec![foreign, dead(2, &[])], &targets, &list, 10);
        assert!(matches!(&planned[0].step, Step::Produce(r) if r.topic == "payments"));
        assert_eq!(
            notes(&planned)[1],
            Some(
                "target topic ces.events is not allowed (allowed: payments, from --allowed-topics)"
            )
        );
    }

    #[test]
    fn a_dry_run_counts_what_would_be_replayed() {
        let mut anonymous = dead(3, &[]);
        without(&mut anonymous, dlq::REASON);
        let letters = vec![
            dead(1, &[(dlq::REPLAY_COUNT, "1")]),
            dead(2, &[(dlq::REPLAY_COUNT, "9")]),
            anonymous,
        ];
        let s = summarize(true, rehearse(plan(letters, &targets(Some(vec![3])), 3)));
        assert_eq!(
            s.total,
            ReplayCounts {
                replayed: 2,
                refused: 1,
                failed: 0
            }
        );
        assert_eq!(s.by_reason["invalid_json"].replayed, 1);
        assert_eq!(s.by_reason["-"].replayed, 1);
        assert_eq!(
            s.letters[0].outcome,
            Outcome::WouldReplay { replay_count: 2 }
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["dry_run"], true);
        assert_eq!(json["replayed"], 2);
        assert_eq!(
            serde_json::to_string(&s.letters[0]).unwrap(),
            "{\"partition\":0,\"offset\":1,\"reason\":\"invalid_json\",\"source_topic\":\"ces.events\",\
             \"source_partition\":3,\"source_offset\":41,\"allowed\":true,\"result\":\"would_replay\",\
             \"replay_count\":2}"
        );
        let mut out = Vec::new();
        write_summary(&mut out, &s).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "DLQ  REASON        SOURCE           TARGET        ALLOWED  RESULT        NOTE\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "0:1  invalid_json  ces.events 3:41  ces.events 3  yes      would replay  replay 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("REASON        WOULD REPLAY  REFUSED  FAILED\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "total         2             1        0\ndry run: nothing was produced\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn nothing_selected_says_so() {
        let mut out = Vec::new();
        write_summary(&mut out, &summarize(false, Vec::new())).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "no dead letter matches\n");
    }
}
