//! The session position and the one invariant: every `seq` is handed to the app once, in order, or named in
//! exactly one [`Gap`] (docs/clients.md).

use ces_protocol::frame::Lost;

/// Where the app stands: the epoch and the highest `seq` it was given, always taken from the same frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// The epoch `last_seq` belongs to.
    pub epoch: String,
    /// The highest `seq` handed to the app.
    pub last_seq: u64,
}

/// Events that will never come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// First missing `seq`.
    pub from: u64,
    /// Last missing `seq`, inclusive; `None` when open-ended (the epoch changed).
    pub to: Option<u64>,
    /// Why: the server's reason (`buffer_overflow`, `expired`, `epoch_changed`, `too_large`), or `unexplained`
    /// when events skipped a number without a word from the server.
    pub reason: String,
}

/// What to do with an event frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the app.
    Deliver,
    /// Report this gap, then hand it to the app.
    GapThenDeliver(Gap),
    /// Already handed over (a replay overlapping what was delivered): drop it.
    Repeat,
}

/// A session's position, updated by the frames of every connection in turn: by events and `resumed` frames alone
/// (a `welcome`'s epoch matters only to the server's `resumed` answer that follows it).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    position: Option<Position>,
}

impl Tracker {
    /// A tracker starting at `saved` (a position persisted by an earlier run), or fresh.
    pub fn new(saved: Option<Position>) -> Self {
        Self { position: saved }
    }

    /// What a (re)connection asks to resume from: `None` until the app got its first event, so a fresh client
    /// starts wherever the buffer starts and is not told about events trimmed before it ever connected.
    pub fn resume_from(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// A `resumed` frame: with `ok:false`, the gap it names (its range exactly); after `epoch_changed` the
    /// position moves to the new epoch's start, where the replayed events begin.
    pub fn on_resumed(
        &mut self,
        ok: bool,
        lost: Option<&Lost>,
        reason: Option<&str>,
        epoch: Option<&str>,
    ) -> Option<Gap> {
        if ok {
            return None;
        }
        let lost = lost?;
        let gap = Gap {
            from: lost.from,
            to: lost.to,
            reason: reason.unwrap_or("unexplained").to_owned(),
        };
        match (&mut self.position, epoch, lost.to) {
            (Some(p), Some(new_epoch), _) => {
                *p = Position {
                    epoch: new_epoch.to_owned(),
                    last_seq: 0,
                };
            }
            (Some(p), None, Some(to)) => p.last_seq = p.last_seq.max(to),
            // A fresh client was never given anything: the loss is not its own.
            (None, _, _) => return None,
            (Some(_), None, None) => {}
        }
        Some(gap)
    }

    /// An event frame of `epoch` numbered `seq`.
    pub fn on_event(&mut self, epoch: &str, seq: u64) -> Verdict {
        let Some(p) = &mut self.position else {
            self.position = Some(Position {
                epoch: epoch.to_owned(),
                last_seq: seq,
            });
            return Verdict::Deliver;
        };
        if seq <= p.last_seq {
            return Verdict::Repeat;
        }
        let verdict = if seq == p.last_seq + 1 {
            Verdict::Deliver
        } else {
            Verdict::GapThenDeliver(Gap {
                from: p.last_seq + 1,
                to: Some(seq - 1),
                reason: "unexplained".to_owned(),
            })
        };
        p.epoch = epoch.to_owned();
        p.last_seq = seq;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, last_seq: u64) -> Option<Position> {
        Some(Position {
            epoch: epoch.into(),
            last_seq,
        })
    }

    fn lost(from: u64, to: Option<u64>) -> Lost {
        Lost { from, to }
    }

    #[test]
    fn a_fresh_client_starts_at_its_first_event_and_resumes_from_it() {
        let mut t = Tracker::new(None);
        assert_eq!(
            t.resume_from(),
            None,
            "nothing moves before the first event"
        );
        assert_eq!(
            t.on_event("e1", 5),
            Verdict::Deliver,
            "a trimmed start is not a loss"
        );
        assert_eq!(t.resume_from(), at("e1", 5).as_ref());
        assert_eq!(t.on_event("e1", 6), Verdict::Deliver);
        assert_eq!(t.resume_from(), at("e1", 6).as_ref());
        // Told of a loss before its first event: not its own.
        let mut fresh = Tracker::new(None);
        let gap = fresh.on_resumed(false, Some(&lost(1, Some(4))), Some("expired"), None);
        assert_eq!((gap, fresh.resume_from()), (None, None));
    }

    #[test]
    fn repeats_are_dropped_and_a_skipped_number_is_reported_before_the_event() {
        let mut t = Tracker::new(at("e1", 3));
        assert_eq!(t.on_event("e1", 2), Verdict::Repeat);
        assert_eq!(t.on_event("e1", 3), Verdict::Repeat);
        assert_eq!(t.on_event("e1", 4), Verdict::Deliver);
        assert_eq!(
            t.on_event("e1", 7),
            Verdict::GapThenDeliver(Gap {
                from: 5,
                to: Some(6),
                reason: "unexplained".into()
            })
        );
        assert_eq!(t.resume_from(), at("e1", 7).as_ref());
        assert_eq!(t.on_event("e1", 7), Verdict::Repeat);
    }

    #[test]
    fn resumed_ok_false_names_the_range_and_moves_past_it() {
        let mut t = Tracker::new(at("e1", 2));
        assert_eq!(t.on_resumed(true, None, None, None), None);
        let gap = t.on_resumed(
            false,
            Some(&lost(3, Some(7))),
            Some("buffer_overflow"),
            None,
        );
        assert_eq!(
            gap,
            Some(Gap {
                from: 3,
                to: Some(7),
                reason: "buffer_overflow".into()
            })
        );
        assert_eq!(t.resume_from(), at("e1", 7).as_ref());
        assert_eq!(
            t.on_event("e1", 8),
            Verdict::Deliver,
            "no second report of the same loss"
        );
        // A notice for one unsendable event mid-stream.
        let gap = t.on_resumed(false, Some(&lost(9, Some(9))), Some("too_large"), None);
        assert_eq!(gap.map(|g| (g.from, g.to)), Some((9, Some(9))));
        assert_eq!(t.on_event("e1", 10), Verdict::Deliver);
        // A range that ends below the position never moves it back.
        t.on_resumed(false, Some(&lost(4, Some(5))), Some("expired"), None);
        assert_eq!(t.resume_from(), at("e1", 10).as_ref());
    }

    #[test]
    fn an_epoch_change_is_one_open_gap_and_numbering_restarts_in_the_new_epoch() {
        let mut t = Tracker::new(at("e1", 40));
        let gap = t.on_resumed(
            false,
            Some(&lost(41, None)),
            Some("epoch_changed"),
            Some("e2"),
        );
        assert_eq!(
            gap,
            Some(Gap {
                from: 41,
                to: None,
                reason: "epoch_changed".into()
            })
        );
        assert_eq!(t.resume_from(), at("e2", 0).as_ref());
        assert_eq!(
            t.on_event("e2", 1),
            Verdict::Deliver,
            "seq 1 of the new epoch is new"
        );
        assert_eq!(t.resume_from(), at("e2", 1).as_ref());
        // Without a reason or a range, nothing to report.
        assert_eq!(t.on_resumed(false, None, Some("expired"), None), None);
        let unexplained = t.on_resumed(false, Some(&lost(2, Some(2))), None, None);
        assert_eq!(unexplained.map(|g| g.reason), Some("unexplained".into()));
        // An open range without a new epoch keeps the position.
        t.on_resumed(false, Some(&lost(3, None)), Some("expired"), None);
        assert_eq!(t.resume_from(), at("e2", 2).as_ref());
    }
}
