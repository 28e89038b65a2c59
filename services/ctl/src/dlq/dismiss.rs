//! `cesctl dlq dismiss`: marks selected dead letters handled without replaying them (a producer bug that was
//! fixed, evidence that was looked at), so they leave the backlog. Nothing is produced or deleted: the records stay
//! in the DLQ until its retention removes them, and `list`, `show` and `replay` still reach them.
//!
//! The selection is replay's ([`select::read`]); marking is [`group::mark`]: the handled group's offset of each
//! partition moves over the contiguous dismissed dead letters from where it was, and stops at the first one not
//! dismissed (nor handled before).

use std::collections::BTreeSet;
use std::io::Write;

use serde::Serialize;

use super::args::DismissArgs;
use super::group::{self, Marked};
use super::letter::Coord;
use super::{blocking, kafka, render, select};
use crate::kafka::Kafka;
use crate::table;

/// One dead letter dismissed.
#[derive(Debug, Serialize)]
struct Dismissed {
    partition: i32,
    offset: i64,
    reason: Option<String>,
}

/// The `dismiss --json` summary.
#[derive(Debug, Serialize)]
struct DismissSummary {
    dry_run: bool,
    dismissed: u64,
    letters: Vec<Dismissed>,
    handled: Marked,
}

/// Runs `cesctl dlq dismiss` against `topic` through `kafka`, marking in `handled_group`.
pub(super) async fn run(
    kafka: Kafka,
    topic: String,
    handled_group: String,
    args: DismissArgs,
) -> anyhow::Result<()> {
    let filter = args.selection.filter();
    let selected = {
        let (kafka, topic) = (kafka.clone(), topic.clone());
        blocking(move || {
            let reader = kafka::Reader::connect(&kafka, &topic)?;
            select::read(&reader, &filter)
        })
        .await?
    };
    let coords: BTreeSet<Coord> = selected.letters.keys().copied().collect();
    let letters: Vec<Dismissed> = selected
        .letters
        .values()
        .map(|d| Dismissed {
            partition: d.partition,
            offset: d.offset,
            reason: d.reason().map(str::to_owned),
        })
        .collect();
    let handled = group::mark_handled(
        kafka,
        topic,
        handled_group,
        selected.seen,
        coords,
        args.dry_run,
    )
    .await?;
    let summary = DismissSummary {
        dry_run: args.dry_run,
        dismissed: letters.len() as u64,
        letters,
        handled,
    };
    render::to_stdout(|out| {
        if args.json {
            render::json_line(out, &summary)
        } else {
            Ok(write_summary(out, &summary)?)
        }
    })
}

/// The text form: one row per dead letter, then how far the handled group moved.
fn write_summary(out: &mut impl Write, s: &DismissSummary) -> std::io::Result<()> {
    if s.letters.is_empty() {
        return writeln!(out, "no dead letter matches");
    }
    let rows: Vec<Vec<String>> = s
        .letters
        .iter()
        .map(|l| {
            vec![
                format!("{}:{}", l.partition, l.offset),
                render::or_none(l.reason.as_deref()),
            ]
        })
        .collect();
    table::write(out, &["DLQ", "REASON"], &rows)?;
    writeln!(out)?;
    s.handled.write(out)?;
    if s.dry_run {
        writeln!(out, "dry run: nothing was committed")?;
    } else {
        writeln!(out, "dismissed {} dead letter(s)", s.dismissed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::handled::Advance;

    #[test]
    fn lists_the_dismissed_then_what_moved() {
        let summary = DismissSummary {
            dry_run: false,
            dismissed: 2,
            letters: vec![
                Dismissed {
                    partition: 0,
                    offset: 0,
                    reason: Some("invalid_json".into()),
                },
                Dismissed {
                    partition: 0,
                    offset: 1,
                    reason: None,
                },
            ],
            handled: Marked {
                group: "g".into(),
                committed: true,
                partitions: vec![Advance {
                    partition: 0,
                    from: 0,
                    to: 2,
                    behind: 0,
                }],
            },
        };
        let mut out = Vec::new();
        write_summary(&mut out, &summary).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "DLQ  REASON\n0:0  invalid_json\n0:1  -\n\ngroup g: partition 0 handled up to offset 2 (was 0)\n\
             dismissed 2 dead letter(s)\n"
        );
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["dismissed"], 2);
        assert_eq!(
            json["handled"]["partitions"][0],
            serde_json::json!({"partition": 0, "from": 0, "to": 2, "behind": 0})
        );
    }
}
