//! Which dead letters are handled, decided without I/O: how far a `replay` or `dismiss` run moves the handled
//! group's committed offset of each DLQ partition.
//!
//! The handled group's committed offset of a partition marks its handled prefix: every dead letter below it was
//! replayed or dismissed. A run starts at that offset (the low watermark when nothing is committed, or when
//! retention deleted past it) and moves it over the contiguous records this run handled; offsets the run read
//! and found no record at (transaction markers, compacted records) are passed over too. The first record the run
//! leaves unhandled stops the advance: what it handled past that record stays in the backlog, since one committed
//! offset per partition cannot say "all but this one".

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::Serialize;

use super::letter::Coord;

/// What a run read of one partition: every record in `span` was seen, and `records` are their offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The offsets read, start..end.
    pub(crate) span: Range<i64>,
    /// The offsets in `span` that hold a record.
    pub(crate) records: BTreeSet<i64>,
}

impl Seen {
    /// Whether the run knows that no record is at `offset`.
    fn empty_at(&self, offset: i64) -> bool {
        self.span.contains(&offset) && !self.records.contains(&offset)
    }
}

/// How far a run moves one partition's handled offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Advance {
    /// DLQ partition.
    pub(crate) partition: i32,
    /// The handled offset before the run: the first dead letter not yet handled.
    pub(crate) from: i64,
    /// The handled offset after the run.
    pub(crate) to: i64,
    /// Dead letters this run handled that stay in the backlog, behind the unhandled one at `to`.
    pub(crate) behind: u64,
}

/// The handled offset after a run that starts at `from`, saw `seen` and handled the offsets in `handled`.
pub(crate) fn advance(from: i64, seen: &Seen, handled: &BTreeSet<i64>) -> i64 {
    let mut to = from;
    while handled.contains(&to) || seen.empty_at(to) {
        to += 1;
    }
    to
}

/// The advance of every partition in `starts` (each one's handled offset before the run) given what the run
/// `seen` and `handled`. Partitions where it handled nothing, and nothing moves, are left out.
pub(crate) fn advances(
    starts: &BTreeMap<i32, i64>,
    seen: &BTreeMap<i32, Seen>,
    handled: &BTreeSet<Coord>,
) -> Vec<Advance> {
    let none = Seen::default();
    starts
        .iter()
        .filter_map(|(&partition, &from)| {
            let offsets: BTreeSet<i64> = handled
                .iter()
                .filter(|c| c.partition == partition)
                .map(|c| c.offset)
                .collect();
            let to = advance(from, seen.get(&partition).unwrap_or(&none), &offsets);
            let behind = offsets.range(to..).count() as u64;
            (to > from || behind > 0).then_some(Advance {
                partition,
                from,
                to,
                behind,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(span: Range<i64>, records: &[i64]) -> Seen {
        Seen {
            span,
            records: records.iter().copied().collect(),
        }
    }

    fn set(offsets: &[i64]) -> BTreeSet<i64> {
        offsets.iter().copied().collect()
    }

    #[test]
    fn moves_over_the_contiguous_handled_run_and_stops_at_the_first_unhandled_record() {
        let all = seen(0..6, &[0, 1, 2, 3, 4, 5]);
        assert_eq!(advance(0, &all, &set(&[0, 1, 2])), 3);
        assert_eq!(advance(0, &all, &set(&[0, 1, 2, 3, 4, 5])), 6);
        // 2 stays unhandled: 3 and 4 wait behind it.
        assert_eq!(advance(0, &all, &set(&[0, 1, 3, 4])), 2);
        assert_eq!(advance(0, &all, &set(&[1, 2])), 0);
        assert_eq!(advance(0, &all, &set(&[])), 0);
        // What an earlier run handled is below its committed offset, where this run starts.
        assert_eq!(advance(2, &all, &set(&[2, 3])), 4);
        assert_eq!(advance(6, &all, &set(&[])), 6);
    }

    #[test]
    fn passes_over_offsets_it_read_without_a_record_but_not_over_unread_ones() {
        // 2 and 3 hold no record (transaction markers); 6..10 neither, up to the high watermark.
        let gaps = seen(0..10, &[0, 1, 4, 5]);
        assert_eq!(advance(0, &gaps, &set(&[0, 1])), 4);
        assert_eq!(advance(0, &gaps, &set(&[0, 1, 4, 5])), 10);
        assert_eq!(advance(0, &gaps, &set(&[])), 0);
        assert_eq!(advance(2, &gaps, &set(&[])), 4);
        // Read from 3 only (`--offsets 0:3,...`): nothing is known about 0..3.
        let part = seen(3..5, &[3, 4]);
        assert_eq!(advance(0, &part, &set(&[3, 4])), 0);
        assert_eq!(advance(3, &part, &set(&[3, 4])), 5);
        // An empty span knows of no gap.
        assert_eq!(advance(0, &seen(0..0, &[]), &set(&[])), 0);
        assert_eq!(advance(4, &seen(0..4, &[]), &set(&[])), 4);
    }

    #[test]
    fn advances_every_partition_on_its_own_and_counts_what_waits_behind() {
        let starts: BTreeMap<i32, i64> = [(0, 0), (1, 5), (2, 0)].into();
        let seen: BTreeMap<i32, Seen> = [
            (0, seen(0..4, &[0, 1, 2, 3])),
            (1, seen(0..9, &[0, 1, 2, 3, 4, 5, 6, 7, 8])),
            (2, seen(0..3, &[0, 1, 2])),
        ]
        .into();
        let handled: BTreeSet<Coord> = [(0, 0), (0, 1), (0, 3), (1, 5), (1, 6), (2, 2)]
            .iter()
            .map(|&(partition, offset)| Coord { partition, offset })
            .collect();
        assert_eq!(
            advances(&starts, &seen, &handled),
            [
                Advance {
                    partition: 0,
                    from: 0,
                    to: 2,
                    behind: 1
                },
                Advance {
                    partition: 1,
                    from: 5,
                    to: 7,
                    behind: 0
                },
                Advance {
                    partition: 2,
                    from: 0,
                    to: 0,
                    behind: 1
                },
            ]
        );
        // Nothing handled, nothing moved: no line.
        assert_eq!(advances(&starts, &seen, &BTreeSet::new()), []);
        // A partition the run did not read moves only over what it handled.
        let one = [Coord {
            partition: 7,
            offset: 0,
        }]
        .into();
        assert_eq!(
            advances(&[(7, 0)].into(), &BTreeMap::new(), &one),
            [Advance {
                partition: 7,
                from: 0,
                to: 1,
                behind: 0
            }]
        );
    }
}
