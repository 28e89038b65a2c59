//! `cesctl dlq stats`: dead letters counted by reason and by age of `ces-dlq-failed-at`, with the oldest and
//! newest failure of each reason, and per partition the backlog (dead letters past the handled group's committed
//! offset: not yet replayed or dismissed), as tables or as one JSON object.

use std::collections::BTreeMap;
use std::io::Write;

use ces_protocol::dlq;
use serde::Serialize;
use time::OffsetDateTime;

use super::args::StatsArgs;
use super::group::{self, Backlog, HandledGroup};
use super::letter::{Age, DeadLetter};
use super::render;
use super::{blocking, kafka};
use crate::kafka::Kafka;
use crate::table;

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
        let (Some(t), Some(raw)) = (failed_at, d.header(dlq::FAILED_AT)) else {
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

/// The whole topic's counts, and each reason's (`-` for dead letters without one).
#[derive(Debug, Serialize)]
struct Stats {
    topic: String,
    #[serde(flatten)]
    total: Counts,
    by_reason: BTreeMap<String, Counts>,
    /// The handled group.
    handled_group: String,
    /// Dead letters not yet handled, per partition.
    backlog: Vec<Backlog>,
}

impl Stats {
    fn new(topic: String, handled_group: String) -> Self {
        Self {
            topic,
            total: Counts::default(),
            by_reason: BTreeMap::new(),
            handled_group,
            backlog: Vec::new(),
        }
    }

    fn add(&mut self, d: &DeadLetter, now: OffsetDateTime) {
        self.total.add(d, now);
        self.by_reason
            .entry(render::or_none(d.reason()))
            .or_default()
            .add(d, now);
    }
}

/// Runs `cesctl dlq stats` against `topic` through `kafka`, the backlog by `handled_group`'s offsets.
pub(super) async fn run(
    kafka: Kafka,
    topic: String,
    handled_group: String,
    args: StatsArgs,
) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let stats = blocking(move || {
        let reader = kafka::Reader::connect(&kafka, &topic)?;
        let group = HandledGroup::connect(&kafka, &handled_group, &topic)?;
        let spans = reader.whole_topic()?;
        let mut stats = Stats::new(topic, handled_group);
        stats.backlog = group::backlog(&reader, &group)?;
        reader.read(&spans, |d| stats.add(&d, now))?;
        Ok(stats)
    })
    .await?;
    render::to_stdout(|out| {
        if args.json {
            render::json_line(out, &stats)
        } else {
            Ok(write_table(out, &stats)?)
        }
    })
}

/// The text form: a row per reason, then the total (an `UNDATED` column only when some failed-at is unreadable);
/// then a row per partition with its backlog.
fn write_table(out: &mut impl Write, stats: &Stats) -> std::io::Result<()> {
    if stats.total.count == 0 {
        writeln!(out, "{} is empty", stats.topic)?;
    } else {
        write_reasons(out, stats)?;
    }
    if stats.backlog.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    let rows: Vec<Vec<String>> = stats
        .backlog
        .iter()
        .map(|b| {
            vec![
                b.partition.to_string(),
                b.committed
                    .map_or_else(|| render::NONE.to_owned(), |c| c.to_string()),
                b.high.to_string(),
                b.backlog.to_string(),
            ]
        })
        .collect();
    table::write(out, &["PARTITION", "HANDLED TO", "END", "BACKLOG"], &rows)?;
    let total: i64 = stats.backlog.iter().map(|b| b.backlog).sum();
    writeln!(
        out,
        "{total} dead letter(s) not yet replayed or dismissed (group {})",
        stats.handled_group
    )
}

fn write_reasons(out: &mut impl Write, stats: &Stats) -> std::io::Result<()> {
    let undated = stats.total.age.unknown > 0;
    let row = |name: &str, c: &Counts| {
        let mut row = vec![
            name.to_owned(),
            c.count.to_string(),
            render::or_none(c.oldest.as_deref()),
            render::or_none(c.newest.as_deref()),
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
    table::write(out, &header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::letter::Header;
    use time::macros::datetime;

    fn dead(reason: Option<&str>, failed_at: Option<&str>) -> DeadLetter {
        let mut headers = Vec::new();
        if let Some(r) = reason {
            headers.push(Header::named(dlq::REASON, r.as_bytes()));
        }
        if let Some(t) = failed_at {
            headers.push(Header::named(dlq::FAILED_AT, t.as_bytes()));
        }
        DeadLetter {
            partition: 0,
            offset: 0,
            timestamp: None,
            key: None,
            value: None,
            headers,
        }
    }

    #[test]
    fn counts_by_reason_and_age() {
        let now = datetime!(2026-11-23 12:00 UTC);
        let mut s = Stats::new("dlq".into(), "g".into());
        s.add(&dead(Some("too_large"), Some("2026-11-23T11:30:00Z")), now);
        s.add(&dead(Some("too_large"), Some("2026-11-20T11:30:00Z")), now);
        s.add(&dead(None, None), now);
        assert_eq!(s.total.count, 3);
        assert_eq!(s.by_reason["too_large"].count, 2);
        assert_eq!(s.by_reason["-"].age.unknown, 1);
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["oldest"], "2026-11-20T11:30:00Z");
        assert_eq!(j["newest"], "2026-11-23T11:30:00Z");
        assert_eq!(
            j["age"],
            serde_json::json!({"under_1h": 1, "under_24h": 0, "older": 1, "unknown": 1})
        );
        let mut out = Vec::new();
        write_table(&mut out, &s).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("UNDATED"), "{text}");
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[3].starts_with("total"), "{text}");
    }

    #[test]
    fn an_empty_topic_says_so() {
        let mut out = Vec::new();
        write_table(&mut out, &Stats::new("dlq".into(), "g".into())).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "dlq is empty\n");
    }

    #[test]
    fn shows_the_backlog_of_each_partition() {
        let mut s = Stats::new("dlq".into(), "ces-dlq-handled".into());
        s.backlog = vec![
            Backlog {
                partition: 0,
                committed: Some(3),
                high: 5,
                backlog: 2,
            },
            Backlog {
                partition: 1,
                committed: None,
                high: 4,
                backlog: 4,
            },
        ];
        let mut out = Vec::new();
        write_table(&mut out, &s).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "dlq is empty\n\nPARTITION  HANDLED TO  END  BACKLOG\n0          3           5    2\n\
             1          -           4    4\n6 dead letter(s) not yet replayed or dismissed (group ces-dlq-handled)\n"
        );
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["handled_group"], "ces-dlq-handled");
        assert_eq!(
            j["backlog"][1],
            serde_json::json!({"partition": 1, "committed": null, "high": 4, "backlog": 4})
        );
    }
}
