//! `cesctl dlq list`: every dead letter that passes `--reason` and `--since`, in partition:offset order, as a
//! table or as JSONL.

use std::collections::BTreeMap;
use std::io::Write;

use ces_protocol::dlq;

use super::args::ListArgs;
use super::letter::{self, Coord, DeadLetter, Filter};
use super::render::{self, NONE};
use super::{blocking, kafka};
use crate::kafka::Kafka;
use crate::table;

/// Characters of the detail and the value shown in a table cell.
const DETAIL_WIDTH: usize = 40;
const VALUE_WIDTH: usize = 40;

/// Runs `cesctl dlq list` against `topic` through `kafka`.
pub(super) async fn run(kafka: Kafka, topic: String, args: ListArgs) -> anyhow::Result<()> {
    let filter = Filter {
        reason: args.reason,
        since: args.since,
        ..Filter::default()
    };
    let limit = args.limit;
    let letters = blocking(move || {
        let reader = kafka::Reader::connect(&kafka, &topic)?;
        let spans = reader.whole_topic()?;
        // Partitions are read concurrently, so order is restored here; with --limit only the first N are kept.
        let mut kept: BTreeMap<Coord, DeadLetter> = BTreeMap::new();
        reader.read(&spans, |d| {
            if d.matches(&filter) {
                kept.insert(d.coord(), d);
                if limit.is_some_and(|n| kept.len() > n) {
                    kept.pop_last();
                }
            }
        })?;
        Ok(kept.into_values().collect::<Vec<_>>())
    })
    .await?;
    render::to_stdout(|out| {
        if args.json {
            for d in &letters {
                render::json_line(out, &d.to_json())?;
            }
        } else {
            write_table(out, &letters)?;
        }
        Ok(())
    })
}

/// The text form: one row per dead letter, details and values cut to fit a line.
fn write_table(out: &mut impl Write, letters: &[DeadLetter]) -> std::io::Result<()> {
    if letters.is_empty() {
        return writeln!(out, "no dead letters");
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|d| {
            vec![
                d.coord().to_string(),
                render::or_none(d.header(dlq::FAILED_AT)),
                render::or_none(d.reason()),
                d.source().to_string(),
                letter::truncate(d.header(dlq::DETAIL).unwrap_or(NONE), DETAIL_WIDTH),
                match d.header(dlq::VALUE_OMITTED) {
                    Some(size) => format!("<omitted, {size} bytes>"),
                    None => letter::preview(d.value.as_deref(), VALUE_WIDTH),
                },
            ]
        })
        .collect();
    table::write(
        out,
        &["DLQ", "FAILED AT", "REASON", "SOURCE", "DETAIL", "VALUE"],
        &rows,
    )
}
