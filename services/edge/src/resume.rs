//! Resuming a session from its reconnection buffer.
//!
//! [`fetch`] reads the session's epoch, latest `seq`, eviction mark and buffered events after a position in one
//! atomic step (`ces_resume`). [`decide`] is pure: given where the client says it is and that snapshot, it says
//! what to answer (`resumed ok:true`, or `ok:false` with the exact lost range and why), what to replay, and the
//! position the socket is at afterwards. The same two steps heal a gap found while live (a Pub/Sub message lost
//! during a reconnect) and an epoch change under a live socket (Redis lost its data).
//!
//! A read returns at most one [`Page`] of events: a replay of a long buffer (up to `CES_BUFFER_MAX_EVENTS` events
//! of up to 1 MiB each) is read and written page by page, each page under its own write deadline, so neither the
//! edge's memory nor a client on a slow link has to take the whole buffer at once.

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use ces_protocol::envelope::{self, Envelope};
use ces_protocol::frame::{Lost, MAX_EVENT_FRAME_BYTES, ServerFrame};
use ces_protocol::keys::SessionKeys;
use ces_runtime::redis::RESUME_FUNCTION;
use fred::clients::Client;
use fred::interfaces::FunctionInterface;
use fred::types::Value;

use crate::Error;

/// Reasons in `resumed ok:false` frames (docs/protocol.md).
pub mod reason {
    /// The buffer's count limit evicted the events.
    pub const BUFFER_OVERFLOW: &str = "buffer_overflow";
    /// The buffer's age limit (or its idle expiry) evicted the events.
    pub const EXPIRED: &str = "expired";
    /// The buffer was lost (Redis flushed or restarted without persistence, state expired): numbering restarted.
    pub const EPOCH_CHANGED: &str = "epoch_changed";
    /// The event's frame is larger than an edge can send (or its data is not UTF-8): it can never be delivered.
    pub const TOO_LARGE: &str = "too_large";
    /// The reasons a resume (or a gap notice) reports events lost with: the `result` values of
    /// `ces_edge_resumes_total` besides `ok`.
    pub const LOST: [&str; 3] = [BUFFER_OVERFLOW, EXPIRED, EPOCH_CHANGED];
}

/// The most one read of the buffer returns: `events` events, and no more than `bytes` bytes of envelopes unless a
/// single event is larger (one event always comes, so a read always makes progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Most events.
    pub events: usize,
    /// Most bytes of envelopes.
    pub bytes: usize,
}

impl Page {
    /// The pages replays are read in: what a client on a 1 Mbit/s link takes within the 10 s write deadline.
    pub const REPLAY: Self = Self {
        events: 256,
        bytes: 1 << 20,
    };
}

/// Where a client says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Last `seq` it processed.
    pub last_seq: u64,
    /// The epoch that `seq` belongs to, if the client sent it.
    pub epoch: Option<String>,
}

/// The session's buffer as read after some `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Current epoch.
    pub epoch: String,
    /// Latest `seq` assigned in it.
    pub last_seq: u64,
    /// Highest `seq` trimmed from the buffer, and why.
    pub evicted: u64,
    /// `buffer_overflow` or `expired`, empty if nothing was trimmed.
    pub evicted_reason: String,
    /// The `seq` the read started after.
    pub after: u64,
    /// Buffered events after `after`, in order: one [`Page`].
    pub events: Vec<Envelope>,
    /// The page ended before `last_seq`: more events follow in the buffer, to read after the last one here.
    pub more: bool,
}

/// What to send and where the socket stands afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The `resumed` frame, if one is due.
    pub resumed: Option<ServerFrame>,
    /// Event frames to replay, in order.
    pub replay: Vec<Utf8Bytes>,
    /// Last `seq` the client has (or is about to have) after the replay.
    pub last_sent: u64,
    /// The replay is one page of more: read on after `last_sent`.
    pub more: bool,
}

/// How a session's epoch and `seq` state is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTerms {
    /// TTL of the state, given to a session that has none yet and refreshed by a read.
    pub ttl: Duration,
    /// Redis restarts lose no acknowledged write (`CES_REDIS_DURABLE_RESTARTS`): an epoch survives a restart of
    /// the process that holds it (see `ces_runtime::redis::LIBRARY`).
    pub durable_restarts: bool,
    /// TTL of the state of a session nothing was published to yet: the session's own (`CES_SESSION_TTL_SECS`),
    /// kept up by its heartbeats.
    pub unpublished_ttl: Duration,
}

/// Reads the session's snapshot after `after` (one `page` of events), creating an epoch if the session has none
/// (or its epoch may have lost writes). Reloads the function library once if Redis lost it.
pub async fn fetch(
    redis: &Client,
    session: &str,
    after: u64,
    state: StateTerms,
    page: Page,
) -> Result<Snapshot, Error> {
    let k = SessionKeys::of(session);
    let call = || {
        let args: Vec<Value> = vec![
            Value::Integer(after as i64),
            Value::from(ces_runtime::redis::new_epoch()),
            Value::Integer(state.ttl.as_millis().clamp(1, i64::MAX as u128) as i64),
            Value::from(if state.durable_restarts { "1" } else { "0" }),
            Value::Integer(state.unpublished_ttl.as_millis().clamp(1, i64::MAX as u128) as i64),
            Value::Integer(page.events.clamp(1, i64::MAX as usize) as i64),
            Value::Integer(page.bytes.clamp(1, i64::MAX as usize) as i64),
        ];
        redis.fcall::<Vec<Value>, _, _, _>(
            RESUME_FUNCTION,
            vec![k.meta.clone(), k.buffer.clone()],
            args,
        )
    };
    let reply = match call().await {
        Err(e) if ces_runtime::redis::is_function_missing(&e) => {
            ces_runtime::redis::load_library(redis).await?;
            call().await?
        }
        other => other?,
    };
    parse_snapshot(reply, after)
}

fn parse_snapshot(reply: Vec<Value>, after: u64) -> Result<Snapshot, Error> {
    let malformed = || Error::UnexpectedReply("malformed ces_resume reply");
    let mut it = reply.into_iter();
    let epoch = it
        .next()
        .and_then(|v| v.as_string())
        .ok_or_else(malformed)?;
    let mut number = || it.next().and_then(|v| v.as_u64()).ok_or_else(malformed);
    let (last_seq, evicted) = (number()?, number()?);
    let evicted_reason = it.next().and_then(|v| v.as_string()).unwrap_or_default();
    let mut events = Vec::new();
    for v in it {
        let bytes = v.as_bytes().ok_or_else(malformed)?;
        match envelope::decode(bytes) {
            Ok(env) => events.push(env),
            Err(e) => tracing::warn!(error = %e, "malformed envelope in buffer skipped"),
        }
    }
    // The buffer always holds its newest event (a publish appends and numbers it in one step; trimming takes the
    // oldest), so a page that ends before `last_seq` was cut short. (A library from before paging returns the
    // whole buffer, which this reads as complete.)
    let more = events.last().is_some_and(|e| e.seq < last_seq);
    Ok(Snapshot {
        epoch,
        last_seq,
        evicted,
        evicted_reason,
        after,
        events,
        more,
    })
}

/// Whether `snap` (read after the client's `last_seq`) belongs to another epoch than the client's, so the new
/// epoch must be read from its start.
pub fn needs_full_read(pos: &Position, snap: &Snapshot) -> bool {
    // A position beyond the newest `seq` can only come from an earlier epoch, even under the same epoch id
    // (Redis restored from a snapshot older than the client's position).
    pos.epoch.as_ref().is_some_and(|e| *e != snap.epoch) || pos.last_seq > snap.last_seq
}

/// Decides the answer to a connection. `pos` is `None` for a fresh connection (replay whatever is buffered,
/// no `resumed` frame). For an epoch change, `snap` must be read from the new epoch's start (`after == 0`). When
/// `snap` is one page of more ([`Snapshot::more`]), the `resumed` frame counts every event up to its `last_seq`
/// and the socket stands at the page's last event, to read on from there.
pub fn decide(pos: Option<&Position>, snap: &Snapshot) -> Decision {
    let replay: Vec<Utf8Bytes> = snap.events.iter().map(frame_of).collect();
    let newest = snap.events.last().map_or(snap.after, |e| e.seq);
    // Past the page's end the client has nothing yet; past a complete read it has everything numbered so far.
    let reached = if snap.more {
        newest
    } else {
        newest.max(snap.last_seq)
    };
    let first_available = snap
        .events
        .first()
        .map_or(snap.last_seq.saturating_add(1), |e| e.seq);
    let replayed = if snap.more {
        snap.last_seq
            .saturating_add(1)
            .saturating_sub(first_available)
    } else {
        replay.len() as u64
    };
    let more = snap.more;
    let Some(pos) = pos else {
        return Decision {
            resumed: None,
            last_sent: reached,
            replay,
            more,
        };
    };
    // `snap` was read from the epoch's start because the client's position belongs to another epoch; judge by
    // that, not by the fresh numbers, which may have moved past the position meanwhile.
    if needs_full_read(pos, snap) || (snap.after == 0 && pos.last_seq > 0) {
        let resumed = ServerFrame::Resumed {
            ok: false,
            replayed,
            reason: Some(reason::EPOCH_CHANGED.into()),
            lost: Some(Lost {
                from: pos.last_seq.saturating_add(1),
                to: None,
            }),
            epoch: Some(snap.epoch.clone()),
        };
        return Decision {
            resumed: Some(resumed),
            replay,
            last_sent: reached,
            more,
        };
    }
    let resumed = if pos.last_seq.saturating_add(1) < first_available {
        let to = first_available - 1;
        let why = if snap.evicted >= to && !snap.evicted_reason.is_empty() {
            snap.evicted_reason.clone()
        } else {
            // The whole buffer expired while idle: nothing recorded the eviction.
            reason::EXPIRED.to_owned()
        };
        ServerFrame::Resumed {
            ok: false,
            replayed,
            reason: Some(why),
            lost: Some(Lost {
                from: pos.last_seq.saturating_add(1),
                to: Some(to),
            }),
            epoch: None,
        }
    } else {
        ServerFrame::Resumed {
            ok: true,
            replayed,
            reason: None,
            lost: None,
            epoch: None,
        }
    };
    Decision {
        resumed: Some(resumed),
        replay,
        last_sent: reached.max(pos.last_seq),
        more,
    }
}

/// The frame that carries a buffered event to the client: the event, or, when its frame is larger than an edge
/// can ever send ([`MAX_EVENT_FRAME_BYTES`]; ingest refuses such records, but an older ingest or a foreign
/// publisher may have buffered one), a notice that exactly this `seq` is lost, so the session goes on past it
/// instead of failing on it at every reconnect. An envelope whose `data` is not UTF-8 is lost the same way.
pub fn frame_of(env: &Envelope) -> Utf8Bytes {
    let trace_id = ces_runtime::otel::enabled()
        .then(|| ces_runtime::otel::trace_id_of(&env.traceparent))
        .flatten();
    match ces_protocol::frame::event_frame_traced(env, trace_id) {
        Some(frame) if frame.len() <= MAX_EVENT_FRAME_BYTES => Utf8Bytes::from(frame),
        _ => too_large(env.seq),
    }
}

/// The notice sent in place of event `seq` when its frame cannot be sent ([`frame_of`]).
pub fn too_large(seq: u64) -> Utf8Bytes {
    metrics::counter!(crate::metrics::UNSENDABLE).increment(1);
    Utf8Bytes::from(
        ServerFrame::Resumed {
            ok: false,
            replayed: 0,
            reason: Some(reason::TOO_LARGE.into()),
            lost: Some(Lost {
                from: seq,
                to: Some(seq),
            }),
            epoch: None,
        }
        .to_json(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(seq: u64) -> Envelope {
        Envelope {
            seq,
            epoch: "e1".into(),
            event_id: format!("id{seq}"),
            event_type: "t".into(),
            data: "1".into(),
            ..Default::default()
        }
    }

    fn snap(
        after: u64,
        seqs: impl IntoIterator<Item = u64>,
        last_seq: u64,
        evicted: u64,
        why: &str,
    ) -> Snapshot {
        Snapshot {
            epoch: "e1".into(),
            last_seq,
            evicted,
            evicted_reason: why.into(),
            after,
            events: seqs.into_iter().map(env).collect(),
            more: false,
        }
    }

    fn pos(last_seq: u64, epoch: Option<&str>) -> Position {
        Position {
            last_seq,
            epoch: epoch.map(Into::into),
        }
    }

    fn resumed(d: &Decision) -> (bool, u64, Option<String>, Option<Lost>) {
        match d.resumed.clone() {
            Some(ServerFrame::Resumed {
                ok,
                replayed,
                reason,
                lost,
                ..
            }) => (ok, replayed, reason, lost),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn full_resume_replays_everything_after_the_position() {
        let d = decide(Some(&pos(3, Some("e1"))), &snap(3, 4..=6, 6, 0, ""));
        assert_eq!(resumed(&d), (true, 3, None, None));
        assert_eq!(d.replay.len(), 3);
        assert!(d.replay[0].as_str().contains(r#""seq":4"#));
        assert_eq!(d.last_sent, 6);
    }

    #[test]
    fn up_to_date_client_gets_ok_with_nothing_to_replay() {
        let d = decide(Some(&pos(6, Some("e1"))), &snap(6, [], 6, 0, ""));
        assert_eq!(resumed(&d), (true, 0, None, None));
        assert_eq!(d.last_sent, 6);
    }

    #[test]
    fn overflow_names_exactly_the_evicted_range() {
        let d = decide(
            Some(&pos(2, Some("e1"))),
            &snap(2, 8..=12, 12, 7, "buffer_overflow"),
        );
        assert_eq!(
            resumed(&d),
            (
                false,
                5,
                Some("buffer_overflow".into()),
                Some(Lost {
                    from: 3,
                    to: Some(7)
                })
            )
        );
        assert_eq!(d.last_sent, 12);
    }

    #[test]
    fn a_buffer_that_expired_whole_is_reported_as_expired() {
        let d = decide(Some(&pos(2, Some("e1"))), &snap(2, [], 9, 0, ""));
        assert_eq!(
            resumed(&d),
            (
                false,
                0,
                Some("expired".into()),
                Some(Lost {
                    from: 3,
                    to: Some(9)
                })
            )
        );
        assert_eq!(d.last_sent, 9);
    }

    #[test]
    fn another_epoch_is_epoch_changed_with_an_open_range() {
        let s = Snapshot {
            epoch: "e2".into(),
            ..snap(0, 1..=2, 2, 0, "")
        };
        let p = pos(40, Some("e1"));
        assert!(needs_full_read(&p, &s));
        let d = decide(Some(&p), &s);
        assert_eq!(
            resumed(&d),
            (
                false,
                2,
                Some("epoch_changed".into()),
                Some(Lost { from: 41, to: None })
            )
        );
        assert!(
            matches!(&d.resumed, Some(ServerFrame::Resumed { epoch: Some(e), .. }) if e == "e2"),
            "the notice names the new epoch: {:?}",
            d.resumed
        );
        assert_eq!(d.last_sent, 2);
        // Within one epoch the notice names none.
        let d = decide(Some(&pos(1, Some("e1"))), &snap(1, 2..=2, 2, 0, ""));
        assert!(
            matches!(
                &d.resumed,
                Some(ServerFrame::Resumed {
                    ok: true,
                    epoch: None,
                    ..
                })
            ),
            "{:?}",
            d.resumed
        );
    }

    #[test]
    fn a_position_beyond_the_newest_seq_is_an_epoch_change_with_or_without_epoch() {
        let s = snap(0, 1..=2, 2, 0, "");
        for p in [pos(40, None), pos(40, Some("e1"))] {
            assert!(needs_full_read(&p, &s), "{p:?}");
            assert_eq!(
                resumed(&decide(Some(&p), &s)).2.as_deref(),
                Some("epoch_changed")
            );
        }
        assert!(!needs_full_read(&pos(2, None), &s));
        // Read from the start because of the epoch, even if numbering has caught up since.
        let caught_up = snap(0, 1..=50, 50, 0, "");
        assert_eq!(
            resumed(&decide(Some(&pos(40, None)), &caught_up))
                .2
                .as_deref(),
            Some("epoch_changed")
        );
    }

    #[test]
    fn fresh_connection_replays_the_buffer_without_a_resumed_frame() {
        let d = decide(None, &snap(0, 1..=3, 3, 0, ""));
        assert_eq!(d.resumed, None);
        assert_eq!((d.replay.len(), d.last_sent), (3, 3));
        let empty = decide(None, &snap(0, [], 0, 0, ""));
        assert_eq!((empty.replay.len(), empty.last_sent), (0, 0));
    }

    /// One page of `seqs` out of a buffer numbered up to `last_seq`.
    fn page(after: u64, seqs: std::ops::RangeInclusive<u64>, last_seq: u64) -> Snapshot {
        Snapshot {
            more: *seqs.end() < last_seq,
            ..snap(after, seqs, last_seq, 0, "")
        }
    }

    #[test]
    fn a_page_of_more_counts_the_whole_replay_and_stands_at_its_last_event() {
        let d = decide(Some(&pos(3, Some("e1"))), &page(3, 4..=5, 10));
        assert_eq!(resumed(&d), (true, 7, None, None));
        assert_eq!((d.replay.len(), d.last_sent, d.more), (2, 5, true));
        let fresh = decide(None, &page(0, 1..=2, 9));
        assert_eq!(
            (fresh.resumed, fresh.last_sent, fresh.more),
            (None, 2, true)
        );
        // The last page completes the read.
        let last = decide(Some(&pos(8, Some("e1"))), &page(8, 9..=10, 10));
        assert_eq!(resumed(&last), (true, 2, None, None));
        assert_eq!((last.last_sent, last.more), (10, false));
    }

    #[test]
    fn a_page_after_an_eviction_names_the_loss_and_counts_what_follows() {
        let d = decide(
            Some(&pos(2, Some("e1"))),
            &Snapshot {
                more: true,
                ..snap(2, 8..=9, 20, 7, "buffer_overflow")
            },
        );
        assert_eq!(
            resumed(&d),
            (
                false,
                13,
                Some("buffer_overflow".into()),
                Some(Lost {
                    from: 3,
                    to: Some(7)
                })
            )
        );
        assert_eq!((d.last_sent, d.more), (9, true));
        let changed = Snapshot {
            epoch: "e2".into(),
            ..page(0, 1..=4, 30)
        };
        let d = decide(Some(&pos(40, Some("e1"))), &changed);
        assert_eq!(resumed(&d).1, 30, "every event of the new epoch");
        assert_eq!((d.last_sent, d.more), (4, true));
    }

    #[test]
    fn an_event_too_large_to_send_is_replaced_by_a_notice_of_its_own_loss() {
        let mut big = env(5);
        big.data = format!(r#""{}""#, "x".repeat(MAX_EVENT_FRAME_BYTES))
            .into_bytes()
            .into();
        let mut fits = env(6);
        let overhead = frame_of(&fits).len() - 1;
        fits.data = format!(r#""{}""#, "x".repeat(MAX_EVENT_FRAME_BYTES - overhead - 2))
            .into_bytes()
            .into();
        assert_eq!(
            frame_of(&fits).len(),
            MAX_EVENT_FRAME_BYTES,
            "the largest that is sent"
        );
        let mut not_utf8 = env(7);
        not_utf8.data = vec![b'"', 0xff, b'"'].into();
        let s = Snapshot {
            events: vec![env(4), big, fits, not_utf8],
            ..snap(3, [], 7, 0, "")
        };
        let d = decide(Some(&pos(3, Some("e1"))), &s);
        assert_eq!(resumed(&d), (true, 4, None, None));
        let frames: Vec<serde_json::Value> = d
            .replay
            .iter()
            .map(|f| serde_json::from_str(f.as_str()).expect("json"))
            .collect();
        assert_eq!(frames[0]["seq"], 4);
        for (frame, seq) in [(&frames[1], 5), (&frames[3], 7)] {
            assert_eq!(
                *frame,
                serde_json::json!({"type": "resumed", "ok": false, "replayed": 0, "reason": "too_large",
                    "lost": {"from": seq, "to": seq}}),
            );
        }
        assert_eq!(frames[2]["seq"], 6);
        assert_eq!(d.last_sent, 7);
    }

    #[test]
    fn a_client_resuming_from_zero_in_its_epoch_is_not_an_epoch_change() {
        let d = decide(Some(&pos(0, Some("e1"))), &snap(0, 1..=2, 2, 0, ""));
        assert_eq!(resumed(&d), (true, 2, None, None));
        // An eviction mark without its reason is reported as an expiry, never as an empty reason.
        let d = decide(Some(&pos(2, Some("e1"))), &snap(2, 8..=9, 9, 7, ""));
        assert_eq!(resumed(&d).2.as_deref(), Some("expired"));
    }

    #[test]
    fn a_replay_page_holds_at_least_the_largest_frame_and_stays_near_the_write_buffer() {
        // A page budget of 0 would be no budget at all in the library (`page_bytes > 0` is what limits).
        let page = Page::REPLAY;
        assert!(page.bytes >= MAX_EVENT_FRAME_BYTES, "{page:?}");
        assert!(
            page.bytes <= 2 * ces_protocol::frame::EDGE_MAX_WRITE_BUFFER_BYTES,
            "{page:?}"
        );
        assert!((1..=1000).contains(&page.events), "{page:?}");
    }

    #[test]
    fn a_reply_is_read_as_one_page_and_cut_short_when_it_ends_before_the_newest_seq() {
        let reply = |seqs: &[u64], last_seq: i64| {
            let mut v = vec![
                Value::from("e1"),
                Value::Integer(last_seq),
                Value::Integer(3),
                Value::from("buffer_overflow"),
            ];
            v.extend(
                seqs.iter()
                    .map(|&n| Value::Bytes(envelope::encode(&env(n)).into())),
            );
            v
        };
        let page = parse_snapshot(reply(&[4, 5], 9), 3).unwrap();
        assert_eq!(
            (
                page.epoch.as_str(),
                page.last_seq,
                page.evicted,
                page.evicted_reason.as_str(),
                page.after,
                page.more
            ),
            ("e1", 9, 3, "buffer_overflow", 3, true)
        );
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [4, 5]
        );
        assert!(
            !parse_snapshot(reply(&[4, 5], 5), 3).unwrap().more,
            "ends at the newest"
        );
        assert!(
            !parse_snapshot(reply(&[], 5), 5).unwrap().more,
            "nothing after"
        );
        // A malformed envelope is skipped, not fatal; a reply without its numbers is.
        let mut with_junk = reply(&[4], 4);
        with_junk.insert(4, Value::Bytes(vec![0xff, 0xff].into()));
        assert_eq!(parse_snapshot(with_junk, 3).unwrap().events.len(), 1);
        assert!(parse_snapshot(vec![Value::from("e1")], 0).is_err());
    }
}
