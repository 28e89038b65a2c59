//! The admin API's reads of session state in Redis (key layout: docs/protocol.md, "Internal: Redis").
//!
//! [`show`] reads one session in one pipelined round trip: its record (`ces:{<s>}:session`), its numbering
//! (`ces:{<s>}:meta`), its buffer's length, first and last entry (`ces:{<s>}:buf`) and its place in the live-session
//! set (`ces:sessions`, scored by its newest token's expiry). [`list`] reads one page of a listing: one `SCAN` of
//! one primary (`MATCH ces:{*}:session`, `COUNT` the page's limit; never `KEYS`), then one pipelined `HMGET` of the
//! keys it found, filtered by label and node. On a Redis Cluster the listing goes through every primary in turn;
//! its cursor ([`super::Cursor`]) names the primary and its `SCAN` cursor.

use std::collections::HashMap;

use ces_protocol::keys::{self, SessionId};
use fred::clients::Client;
use fred::interfaces::{
    ClientLike as _, ClusterInterface as _, HashesInterface as _, SortedSetsInterface as _,
    StreamsInterface as _,
};
use fred::prelude::Server;
use fred::types::{ClusterHash, CustomCommand, Value};
use serde::Serialize;

use super::{Cursor, Labels, ListQuery, SINGLE, time_text};
use crate::Error;

/// One session as `GET /v1/admin/sessions/{id}` shows it; `null` where Redis does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionDetail {
    /// Session id.
    pub session_id: String,
    /// `connected`, `disconnected` or `closed`.
    pub status: Option<String>,
    /// The node that registered it, or that its latest connection is (or was) on.
    pub node: Option<String>,
    /// The connection holding it (`<node>/<conn id>`), while one does.
    pub connection: Option<String>,
    /// Registration time.
    pub created_at: Option<String>,
    /// Last sign of life: connect, heartbeat, disconnect.
    pub last_seen: Option<String>,
    /// Its newest token's expiry (its score in `ces:sessions`); `null` once revoked or expired.
    pub token_expires_at: Option<String>,
    /// The epoch its numbering belongs to.
    pub epoch: Option<String>,
    /// The last `seq` assigned.
    pub last_seq: Option<u64>,
    /// The last `seq` its client acknowledged (stored at heartbeats and at disconnect).
    pub last_ack: Option<u64>,
    /// Its reconnection buffer.
    pub buffer: BufferView,
    /// Its labels (from the registration body).
    pub labels: Labels,
    /// The user agent it registered with.
    pub user_agent: Option<String>,
    /// The address it registered from.
    pub ip: Option<String>,
}

/// What a session's reconnection buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct BufferView {
    /// Events in it.
    pub events: u64,
    /// The first one's `seq`.
    pub first_seq: Option<u64>,
    /// The last one's `seq`.
    pub last_seq: Option<u64>,
}

/// One session in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Session id.
    pub session_id: String,
    /// `connected`, `disconnected` or `closed`.
    pub status: Option<String>,
    /// Its node.
    pub node: Option<String>,
    /// Last sign of life.
    pub last_seen: Option<String>,
    /// Its labels.
    pub labels: Labels,
}

/// One page of `GET /v1/admin/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    /// The page's sessions (possibly none, with more to come).
    pub sessions: Vec<Summary>,
    /// The next page's cursor; `null` when the listing is complete.
    pub cursor: Option<String>,
}

/// `session` as Redis has it; `None` when it has no record.
pub async fn show(redis: &Client, session: &SessionId) -> Result<Option<SessionDetail>, Error> {
    let names = session.keys();
    let pipeline = redis.pipeline();
    let _: () = pipeline.hgetall(session.session_key()).await?;
    let _: () = pipeline.hmget(&names.meta, vec!["epoch", "seq"]).await?;
    let _: () = pipeline.xlen(&names.buffer).await?;
    let _: () = pipeline.xrange(&names.buffer, "-", "+", Some(1)).await?;
    let _: () = pipeline.xrevrange(&names.buffer, "+", "-", Some(1)).await?;
    let _: () = pipeline
        .zscore(keys::SESSIONS_KEY, session.as_str())
        .await?;
    let mut replies = pipeline.all::<Vec<Value>>().await?.into_iter();
    let mut next = || replies.next().unwrap_or(Value::Null);
    let record: HashMap<String, String> = next().convert()?;
    if record.is_empty() {
        return Ok(None);
    }
    let (epoch, seq): (Option<String>, Option<u64>) = next().convert()?;
    let buffer = BufferView {
        events: next().convert::<Option<u64>>()?.unwrap_or(0),
        first_seq: entry_seq(&next()),
        last_seq: entry_seq(&next()),
    };
    let expires_ms: Option<f64> = next().convert()?;
    Ok(Some(detail(
        session, record, epoch, seq, buffer, expires_ms,
    )))
}

/// The detail of `session` from what Redis answered.
fn detail(
    session: &SessionId,
    mut record: HashMap<String, String>,
    epoch: Option<String>,
    seq: Option<u64>,
    buffer: BufferView,
    expires_ms: Option<f64>,
) -> SessionDetail {
    let time = |ms: Option<&String>| ms.and_then(|ms| ms.parse().ok()).and_then(time_text);
    SessionDetail {
        session_id: session.to_string(),
        created_at: time(record.get("created_at_ms")),
        last_seen: time(record.get("last_seen_ms")),
        token_expires_at: expires_ms.and_then(|ms| time_text(ms as i64)),
        epoch,
        last_seq: seq,
        last_ack: record.get("last_ack").and_then(|n| n.parse().ok()),
        buffer,
        labels: record
            .get("metadata")
            .map(|m| crate::labels::of_metadata(m))
            .unwrap_or_default(),
        status: record.remove("status"),
        node: record.remove("node"),
        connection: record.remove("conn"),
        user_agent: record.remove("user_agent"),
        ip: record.remove("ip"),
    }
}

/// The `seq` of the entry an `XRANGE ... COUNT 1` answered (entry ids are `<seq>-0`); `None` for an empty stream.
fn entry_seq(reply: &Value) -> Option<u64> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let Some(Value::Array(entry)) = entries.first() else {
        return None;
    };
    let id = entry.first()?.as_str()?;
    id.split_once('-')?.0.parse().ok()
}

/// One page of the listing `query` asks for.
pub async fn list(redis: &Client, query: &ListQuery) -> Result<Page, Error> {
    let (names, servers): (Vec<String>, Vec<Option<Server>>) = primaries(redis).into_iter().unzip();
    let (at, scan) = match &query.cursor {
        None => (0, 0),
        Some(c) => match names.iter().position(|p| *p == c.primary) {
            Some(at) => (at, c.scan),
            None => {
                return Err(Error::BadRequest {
                    code: "invalid_cursor",
                    message: format!(
                        "the cursor names {}, which is not a Redis primary now; start the listing again",
                        c.primary
                    ),
                });
            }
        },
    };
    let args: Vec<Value> = vec![
        scan.to_string().into(),
        "MATCH".into(),
        keys::SESSION_KEY_PATTERN.into(),
        "COUNT".into(),
        i64::from(query.limit).into(),
    ];
    // A command of its own rather than fred's `scan_page`, which warns about the wildcard in the hash tag on every
    // call on a cluster: the node to scan is named, so no slot is derived from the pattern.
    let command = CustomCommand::new_static("SCAN", ClusterHash::Random, false);
    let reply: Value = match &servers[at] {
        None => redis.custom(command, args).await?,
        Some(server) => {
            redis
                .with_cluster_node(server.clone())
                .custom(command, args)
                .await?
        }
    };
    let (next_scan, found) =
        parse_scan(reply).ok_or(Error::UnexpectedReply("SCAN answer is not [cursor, keys]"))?;
    let sessions = summaries(redis, found, query).await?;
    Ok(Page {
        sessions,
        cursor: Cursor::after(&names, at, next_scan).map(|c| c.to_string()),
    })
}

/// The primaries a listing goes through, in a stable order, each with its name in a cursor: every primary of a
/// Redis Cluster, sorted by address, or the one Redis ([`SINGLE`], no server to name).
fn primaries(redis: &Client) -> Vec<(String, Option<Server>)> {
    match redis.cached_cluster_state() {
        Some(state) if redis.is_clustered() => state
            .unique_primary_nodes()
            .into_iter()
            .map(|server| (server.to_string(), Some(server)))
            .collect(),
        _ => vec![(SINGLE.to_owned(), None)],
    }
}

/// `SCAN`'s answer: the next cursor and the keys found.
fn parse_scan(reply: Value) -> Option<(u64, Vec<String>)> {
    let Value::Array(mut parts) = reply else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let found = parts.pop()?.convert::<Vec<String>>().ok()?;
    let next = parts.pop()?.as_str()?.parse().ok()?;
    Some((next, found))
}

/// The sessions of `found` (session hash names) that `query`'s filters admit, from one pipelined `HMGET`.
async fn summaries(
    redis: &Client,
    found: Vec<String>,
    query: &ListQuery,
) -> Result<Vec<Summary>, Error> {
    // Names the pattern matches that are not a session's (an id outside the alphabet) are left alone.
    let found: Vec<(&str, &str)> = found
        .iter()
        .filter_map(|key| Some((key.as_str(), keys::session_of_key(key)?)))
        .collect();
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = redis.pipeline();
    for (key, _) in &found {
        let fields = vec!["status", "node", "last_seen_ms", "metadata"];
        let _: () = pipeline.hmget(*key, fields).await?;
    }
    let replies: Vec<Value> = pipeline.all().await?;
    let mut out = Vec::new();
    for ((_, id), reply) in found.into_iter().zip(replies) {
        let fields: [Option<String>; 4] = match reply.convert::<Vec<Option<String>>>()?.try_into() {
            Ok(fields) => fields,
            Err(_) => return Err(Error::UnexpectedReply("HMGET answer of another length")),
        };
        if let Some(summary) = summary(id, fields, query) {
            out.push(summary);
        }
    }
    Ok(out)
}

/// The summary of session `id` from its `status`, `node`, `last_seen_ms` and `metadata`, if it passes `query`'s
/// filters; `None` also for a record that is gone (every field missing: it expired after the `SCAN`).
fn summary(id: &str, fields: [Option<String>; 4], query: &ListQuery) -> Option<Summary> {
    let [status, node, last_seen_ms, metadata] = fields;
    if status.is_none() && node.is_none() && metadata.is_none() {
        return None;
    }
    if query
        .node
        .as_ref()
        .is_some_and(|want| node.as_ref() != Some(want))
    {
        return None;
    }
    let labels = metadata
        .map(|m| crate::labels::of_metadata(&m))
        .unwrap_or_default();
    if !crate::labels::matches(&labels, &query.labels) {
        return None;
    }
    Some(Summary {
        session_id: id.to_owned(),
        status,
        node,
        last_seen: last_seen_ms
            .and_then(|ms| ms.parse().ok())
            .and_then(time_text),
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn a_summary_passes_the_filters_or_is_left_out() {
        let fields = || {
            [
                s("connected"),
                s("edge-b"),
                s("0"),
                s(r#"{"labels":{"team":"blue"}}"#),
            ]
        };
        let all = ListQuery::parse(&[]).unwrap();
        let got = summary("s-1", fields(), &all).unwrap();
        assert_eq!(
            got,
            Summary {
                session_id: "s-1".into(),
                status: s("connected"),
                node: s("edge-b"),
                last_seen: s("1970-01-01T00:00:00.000Z"),
                labels: [("team".to_owned(), "blue".to_owned())].into(),
            }
        );
        let q = |p: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = p
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            ListQuery::parse(&pairs).unwrap()
        };
        assert!(summary("s-1", fields(), &q(&[("node", "edge-b")])).is_some());
        assert!(summary("s-1", fields(), &q(&[("node", "edge-a")])).is_none());
        assert!(summary("s-1", fields(), &q(&[("label", "team=blue")])).is_some());
        assert!(summary("s-1", fields(), &q(&[("label", "team=red")])).is_none());
        assert!(summary("s-1", [None, None, None, None], &all).is_none());
        let bare = summary("s-2", [s("closed"), None, None, None], &all).unwrap();
        assert_eq!((bare.node, bare.last_seen), (None, None));
        assert!(bare.labels.is_empty());
        assert!(summary("s-2", [None, s("edge-a"), None, None], &all).is_some());
        assert!(summary("s-2", [None, None, None, s("{}")], &all).is_some());
    }

    #[test]
    fn scan_answers_and_stream_entries_are_read() {
        let reply = Value::Array(vec![
            "17".into(),
            Value::Array(vec!["ces:{a}:session".into(), "ces:{b}:session".into()]),
        ]);
        assert_eq!(
            parse_scan(reply),
            Some((17, vec!["ces:{a}:session".into(), "ces:{b}:session".into()]))
        );
        let done = Value::Array(vec!["0".into(), Value::Array(vec![])]);
        assert_eq!(parse_scan(done), Some((0, vec![])));
        assert_eq!(parse_scan(Value::Null), None);
        assert_eq!(parse_scan(Value::Array(vec!["0".into()])), None);
        assert_eq!(
            parse_scan(Value::Array(vec!["x".into(), Value::Array(vec![])])),
            None
        );

        let entry = |id: &str| {
            Value::Array(vec![Value::Array(vec![
                id.into(),
                Value::Array(vec!["e".into(), "x".into()]),
            ])])
        };
        assert_eq!(entry_seq(&entry("5-0")), Some(5));
        assert_eq!(entry_seq(&entry("12-3")), Some(12));
        assert_eq!(entry_seq(&entry("bad")), None);
        assert_eq!(entry_seq(&Value::Array(vec![])), None);
        assert_eq!(entry_seq(&Value::Null), None);
        assert_eq!(entry_seq(&Value::Array(vec!["5-0".into()])), None);
    }

    #[test]
    fn the_detail_reads_every_field() {
        let session = SessionId::parse("s-1").unwrap();
        let record: HashMap<String, String> = [
            ("status", "connected"),
            ("node", "edge-b"),
            ("conn", "edge-b/7"),
            ("created_at_ms", "1000"),
            ("last_seen_ms", "2000"),
            ("last_ack", "5"),
            ("metadata", r#"{"labels":{"team":"blue"}}"#),
            ("user_agent", "ua"),
            ("ip", "127.0.0.1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let buffer = BufferView {
            events: 5,
            first_seq: Some(1),
            last_seq: Some(5),
        };
        let d = detail(&session, record, s("e1"), Some(5), buffer, Some(3000.0));
        assert_eq!(
            d,
            SessionDetail {
                session_id: "s-1".into(),
                status: s("connected"),
                node: s("edge-b"),
                connection: s("edge-b/7"),
                created_at: s("1970-01-01T00:00:01.000Z"),
                last_seen: s("1970-01-01T00:00:02.000Z"),
                token_expires_at: s("1970-01-01T00:00:03.000Z"),
                epoch: s("e1"),
                last_seq: Some(5),
                last_ack: Some(5),
                buffer,
                labels: [("team".to_owned(), "blue".to_owned())].into(),
                user_agent: s("ua"),
                ip: s("127.0.0.1"),
            }
        );
        let bare = detail(
            &session,
            [("status".to_owned(), "closed".to_owned())].into(),
            None,
            None,
            BufferView::default(),
            None,
        );
        assert_eq!(
            (bare.created_at, bare.last_ack, bare.token_expires_at),
            (None, None, None)
        );
        assert!(bare.labels.is_empty());
    }
}
