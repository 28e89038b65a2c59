//! Reading the dead letters a selection (`--reason`, `--offsets`, `--since`, `--all`) names, shared by `replay`
//! and `dismiss`, with what the read [`Seen`] of each partition, which decides how far the handled group may
//! move.

use std::collections::BTreeMap;

use super::handled::Seen;
use super::kafka::{self, Reader};
use super::letter::{Coord, DeadLetter, Filter};

/// The dead letters selected, in partition:offset order, and what was read to find them.
#[derive(Debug)]
pub(crate) struct Selected {
    pub(crate) letters: BTreeMap<Coord, DeadLetter>,
    pub(crate) seen: BTreeMap<i32, Seen>,
}

/// Reads the dead letters `filter` selects: the whole topic, or with `--offsets` only the partitions and ranges
/// they name (every coordinate checked before anything is done, so a typo fails the whole run). Blocking.
pub(crate) fn read(reader: &Reader, filter: &Filter) -> anyhow::Result<Selected> {
    let (mut letters, seen) = if filter.offsets.is_empty() {
        let spans = reader.whole_topic()?;
        let mut seen = kafka::seen_of(&spans);
        let mut letters = BTreeMap::new();
        reader.read(&spans, |d| {
            kafka::saw(&mut seen, d.coord());
            if d.matches(filter) {
                letters.insert(d.coord(), d);
            }
        })?;
        (letters, seen)
    } else {
        reader.read_at(&filter.offsets)?
    };
    letters.retain(|_, d| d.matches(filter));
    Ok(Selected { letters, seen })
}
