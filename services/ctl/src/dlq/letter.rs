//! A dead letter as `cesctl` sees it, and everything decided about it without I/O: reading the `ces-dlq-*`
//! headers (`ces_protocol::dlq`), `--since` and `P:O` arguments, selection, the replay plan (which headers the
//! re-produced record carries, and when a replay is refused) and the JSON form printed by `--json`.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use ces_protocol::dlq;
use ces_protocol::record::Reason;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A record read from the dead-letter topic: its coordinates there and its bytes, untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    /// Partition of the DLQ topic.
    pub(crate) partition: i32,
    /// Offset in that partition.
    pub(crate) offset: i64,
    /// Record timestamp (ms since the epoch) when the broker reported one.
    pub(crate) timestamp: Option<i64>,
    /// Key bytes (`None` for a record without a key).
    pub(crate) key: Option<Vec<u8>>,
    /// Value bytes (`None` for a tombstone, or when ingest omitted a too-large value).
    pub(crate) value: Option<Vec<u8>>,
    /// Every header in record order, repeats included.
    pub(crate) headers: Vec<Header>,
}

/// One header of a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Header {
    /// A header as written: its name, and its value (`None` for a header without one).
    Named(String, Option<Vec<u8>>),
    /// A header whose name is not UTF-8. Kafka's protocol wants UTF-8 names, but a client writing the protocol
    /// itself can send any bytes, and librdkafka hands them on; rdkafka then gives neither the name nor the value
    /// of such a header ([`super::headers`]), so all that is known is that it is there.
    Unreadable,
}

impl Header {
    /// A named header with a value, for tests and seeds.
    #[cfg(test)]
    pub(crate) fn named(name: &str, value: &[u8]) -> Self {
        Self::Named(name.to_owned(), Some(value.to_vec()))
    }
}

impl DeadLetter {
    /// Where this dead letter sits in the DLQ topic.
    pub(crate) fn coord(&self) -> Coord {
        Coord {
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// The text of header `name`. Kafka allows repeated names; the last one wins, as ingest replaces
    /// `ces-dlq-*` headers rather than adding to them.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find_map(|h| match h {
                Header::Named(k, v) if k == name => Some(v.as_deref()),
                _ => None,
            })
            .flatten()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The `ces-dlq-reason` code as written (it may be a code this `cesctl` does not know yet).
    pub(crate) fn reason(&self) -> Option<&str> {
        self.header(dlq::REASON)
    }

    /// `ces-dlq-failed-at`, parsed; `None` when absent or not RFC 3339.
    pub(crate) fn failed_at(&self) -> Option<OffsetDateTime> {
        self.header(dlq::FAILED_AT)
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    }

    /// Where ingest read the record.
    pub(crate) fn source(&self) -> Source {
        Source {
            topic: self.header(dlq::SOURCE_TOPIC).map(str::to_owned),
            partition: self
                .header(dlq::SOURCE_PARTITION)
                .and_then(|p| p.parse().ok()),
            offset: self.header(dlq::SOURCE_OFFSET).and_then(|o| o.parse().ok()),
        }
    }

    /// `ces-replay-count` (0 when absent); an error names a value that is not a count.
    pub(crate) fn replay_count(&self) -> Result<u32, String> {
        match self.header(dlq::REPLAY_COUNT) {
            None => Ok(0),
            Some(n) => n
                .trim()
                .parse()
                .map_err(|_| format!("{} is not a count: {n:?}", dlq::REPLAY_COUNT)),
        }
    }

    /// Whether this dead letter passes every filter in `filter`.
    pub(crate) fn matches(&self, filter: &Filter) -> bool {
        filter
            .reason
            .is_none_or(|r| self.reason() == Some(r.as_str()))
            // Without a readable failed-at the age is unknown, so --since cannot vouch for it.
            && filter
                .since
                .is_none_or(|since| self.failed_at().is_some_and(|t| t >= since))
            && (filter.offsets.is_empty() || filter.offsets.contains(&self.coord()))
    }

    /// What `cesctl dlq replay` would do with this dead letter, given `--max-replays`.
    pub(crate) fn plan_replay(&self, max_replays: u32) -> Result<Replay, String> {
        // A letter that went without part of its record (value, headers or key) cannot be replayed as it was:
        // without its headers a protobuf event would be read as JSON, without its key it would change partition.
        if let Some((name, size)) = dlq::OMITTED
            .iter()
            .find_map(|name| Some((*name, self.header(name)?)))
        {
            let part = name
                .trim_start_matches("ces-dlq-")
                .trim_end_matches("-omitted");
            let source = self.source();
            return Err(format!(
                "{part} omitted from the DLQ ({size} bytes); the original is at {source}"
            ));
        }
        let count = self.replay_count()?;
        if count >= max_replays {
            return Err(format!(
                "replayed {count} times already (--max-replays {max_replays})"
            ));
        }
        if self.headers.contains(&Header::Unreadable) {
            return Err(
                "a header name is not UTF-8, so that header cannot be read and the record cannot be \
                 replayed as it was"
                    .to_owned(),
            );
        }
        let source = self.source();
        let topic = source
            .topic
            .clone()
            .ok_or_else(|| format!("no {} header", dlq::SOURCE_TOPIC))?;
        let mut headers: Vec<(String, Option<Vec<u8>>)> = self
            .headers
            .iter()
            .filter_map(|h| match h {
                Header::Named(k, v) if !k.starts_with(dlq::PREFIX) && k != dlq::REPLAY_COUNT => {
                    Some((k.clone(), v.clone()))
                }
                _ => None,
            })
            .collect();
        let count = count + 1;
        headers.push((
            dlq::REPLAY_COUNT.to_owned(),
            Some(count.to_string().into_bytes()),
        ));
        Ok(Replay {
            topic,
            partition: source.partition,
            key: self.key.clone(),
            value: self.value.clone(),
            headers,
            count,
        })
    }

    /// The `--json` form: every header, the key and the value, plus the `ces-dlq-*` headers parsed.
    pub(crate) fn to_json(&self) -> LetterJson<'_> {
        let source = self.source();
        let (key, key_encoding) = encode(self.key.as_deref());
        let (value, value_encoding) = encode(self.value.as_deref());
        LetterJson {
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            reason: self.reason(),
            detail: self.header(dlq::DETAIL),
            failed_at: self.header(dlq::FAILED_AT),
            source_topic: source.topic,
            source_partition: source.partition,
            source_offset: source.offset,
            attempts: self.header(dlq::ATTEMPTS).and_then(|a| a.parse().ok()),
            value_omitted: self.header(dlq::VALUE_OMITTED).and_then(|a| a.parse().ok()),
            replay_count: self.replay_count().ok(),
            headers: self
                .headers
                .iter()
                .map(|h| match h {
                    Header::Named(name, v) => {
                        let (value, encoding) = encode(v.as_deref());
                        HeaderJson {
                            name: Some(name),
                            value,
                            encoding,
                            unreadable: false,
                        }
                    }
                    Header::Unreadable => HeaderJson {
                        name: None,
                        value: None,
                        encoding: None,
                        unreadable: true,
                    },
                })
                .collect(),
            key,
            key_encoding,
            value,
            value_encoding,
        }
    }
}

/// The coordinates of the record ingest rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Source {
    /// `ces-dlq-source-topic`.
    pub(crate) topic: Option<String>,
    /// `ces-dlq-source-partition`.
    pub(crate) partition: Option<i32>,
    /// `ces-dlq-source-offset`.
    pub(crate) offset: Option<i64>,
}

impl fmt::Display for Source {
    /// `topic partition:offset`, with `?` for what the headers do not say.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |v: Option<String>| v.unwrap_or_else(|| "?".into());
        write!(
            f,
            "{} {}:{}",
            self.topic.as_deref().unwrap_or("?"),
            part(self.partition.map(|p| p.to_string())),
            part(self.offset.map(|o| o.to_string()))
        )
    }
}

/// A record to re-produce, as planned by [`DeadLetter::plan_replay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replay {
    /// The source topic.
    pub(crate) topic: String,
    /// The source partition, so the record rejoins the other records of its key even when the original
    /// producer partitioned differently from librdkafka; `None` lets the producer partition by key.
    pub(crate) partition: Option<i32>,
    /// Original key.
    pub(crate) key: Option<Vec<u8>>,
    /// Original value.
    pub(crate) value: Option<Vec<u8>>,
    /// Original headers without `ces-dlq-*`, and `ces-replay-count` set to [`Replay::count`].
    pub(crate) headers: Vec<(String, Option<Vec<u8>>)>,
    /// The new replay count.
    pub(crate) count: u32,
}

/// Which dead letters a command looks at; empty fields select everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// `--reason`.
    pub(crate) reason: Option<Reason>,
    /// `--since`: failed at or after this instant.
    pub(crate) since: Option<OffsetDateTime>,
    /// `--offsets`.
    pub(crate) offsets: BTreeSet<Coord>,
}

/// A `<partition>:<offset>` position in the DLQ topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Coord {
    /// Partition.
    pub(crate) partition: i32,
    /// Offset.
    pub(crate) offset: i64,
}

impl FromStr for Coord {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected <partition>:<offset> such as 0:42, got {s:?}");
        let (p, o) = s.split_once(':').ok_or_else(bad)?;
        let partition: i32 = p.trim().parse().map_err(|_| bad())?;
        let offset: i64 = o.trim().parse().map_err(|_| bad())?;
        if partition < 0 || offset < 0 {
            return Err(bad());
        }
        Ok(Self { partition, offset })
    }
}

impl fmt::Display for Coord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

/// Parses `--since`: an RFC 3339 instant, or an age (`30s`, `15m`, `2h`, `7d`, `1h30m`) counted back from
/// `now`.
pub(crate) fn parse_since(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let age: Duration = humantime::parse_duration(s).map_err(|_| {
        format!("expected an RFC 3339 time (2026-11-23T10:00:00Z) or an age such as 30s, 15m, 2h, 7d, got {s:?}")
    })?;
    now.checked_sub(
        age.try_into()
            .map_err(|_| format!("age {s:?} is too large"))?,
    )
    .ok_or_else(|| format!("age {s:?} is too large"))
}

/// Age bucket of a dead letter, for `cesctl dlq stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Age {
    /// Failed less than an hour ago.
    Hour,
    /// Failed between an hour and a day ago.
    Day,
    /// Failed a day or more ago.
    Older,
    /// No readable `ces-dlq-failed-at`.
    Unknown,
}

impl Age {
    /// The bucket of a dead letter that failed at `failed_at`, seen at `now`. Clock skew can put `failed_at` a
    /// little in the future; that still counts as recent.
    pub(crate) fn of(failed_at: Option<OffsetDateTime>, now: OffsetDateTime) -> Self {
        let Some(t) = failed_at else {
            return Age::Unknown;
        };
        let age = now - t;
        if age < time::Duration::HOUR {
            Age::Hour
        } else if age < time::Duration::DAY {
            Age::Day
        } else {
            Age::Older
        }
    }
}

/// One header in the `--json` form; a [`Header::Unreadable`] one is `{"name": null, "value": null,
/// "unreadable": true}`.
#[derive(Debug, Serialize)]
pub(crate) struct HeaderJson<'a> {
    name: Option<&'a str>,
    value: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unreadable: bool,
}

/// The `--json` form of a dead letter (one line of `list --json`, or `show --json`). Bytes are given as text
/// when they are UTF-8 (`*_encoding: "utf8"`) and as standard base64 otherwise (`"base64"`); absent bytes are
/// `null` without an encoding.
#[derive(Debug, Serialize)]
pub(crate) struct LetterJson<'a> {
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    reason: Option<&'a str>,
    detail: Option<&'a str>,
    failed_at: Option<&'a str>,
    source_topic: Option<String>,
    source_partition: Option<i32>,
    source_offset: Option<i64>,
    attempts: Option<u64>,
    value_omitted: Option<u64>,
    replay_count: Option<u32>,
    headers: Vec<HeaderJson<'a>>,
    key: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_encoding: Option<&'static str>,
    value: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_encoding: Option<&'static str>,
}

/// Bytes as JSON text: UTF-8 as is, anything else as base64, with the encoding used.
pub(crate) fn encode(bytes: Option<&[u8]>) -> (Option<Cow<'_, str>>, Option<&'static str>) {
    match bytes {
        None => (None, None),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => (Some(Cow::Borrowed(s)), Some("utf8")),
            Err(_) => (
                Some(Cow::Owned(
                    base64::engine::general_purpose::STANDARD.encode(b),
                )),
                Some("base64"),
            ),
        },
    }
}

/// A one-line preview of bytes for a table cell: at most `max` characters, control characters escaped so a
/// record cannot break the table, `…` when cut.
pub(crate) fn preview(bytes: Option<&[u8]>, max: usize) -> String {
    match bytes {
        None => "-".into(),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => truncate(s, max),
            Err(_) => format!("<{} bytes, not UTF-8>", b.len()),
        },
    }
}

pub(crate) use crate::table::escape;

/// `s` on one line, at most `max` characters, `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let escaped = escape(s);
    if escaped.chars().count() <= max {
        return escaped.into_owned();
    }
    let mut cut: String = escaped.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn letter(headers: &[(&str, &str)]) -> DeadLetter {
        DeadLetter {
            partition: 0,
            offset: 7,
            timestamp: None,
            key: Some(b"s1".to_vec()),
            value: Some(b"not json".to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| Header::named(k, v.as_bytes()))
                .collect(),
        }
    }

    fn dead(extra: &[(&str, &str)]) -> DeadLetter {
        let mut h = vec![
            ("trace", "abc"),
            (dlq::REASON, "invalid_json"),
            (dlq::DETAIL, "expected value at line 1 column 1"),
            (dlq::SOURCE_TOPIC, "ces.events"),
            (dlq::SOURCE_PARTITION, "3"),
            (dlq::SOURCE_OFFSET, "41"),
            (dlq::FAILED_AT, "2026-11-23T10:00:00.123Z"),
        ];
        h.extend_from_slice(extra);
        letter(&h)
    }

    #[test]
    fn headers_are_read() {
        let d = dead(&[]);
        assert_eq!(d.reason(), Some("invalid_json"));
        assert_eq!(d.failed_at(), Some(datetime!(2026-11-23 10:00:00.123 UTC)));
        assert_eq!(
            d.source(),
            Source {
                topic: Some("ces.events".into()),
                partition: Some(3),
                offset: Some(41)
            }
        );
        assert_eq!(d.source().to_string(), "ces.events 3:41");
        assert_eq!(Source::default().to_string(), "? ?:?");
        assert_eq!(d.replay_count(), Ok(0));
    }

    #[test]
    fn replay_strips_dlq_headers_and_counts() {
        let d = dead(&[(dlq::ATTEMPTS, "5"), (dlq::REPLAY_COUNT, "1")]);
        let r = d.plan_replay(3).unwrap();
        assert_eq!(r.topic, "ces.events");
        assert_eq!(r.partition, Some(3));
        assert_eq!(r.key.as_deref(), Some(&b"s1"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"not json"[..]));
        assert_eq!(
            r.headers,
            vec![
                ("trace".to_owned(), Some(b"abc".to_vec())),
                (dlq::REPLAY_COUNT.to_owned(), Some(b"2".to_vec())),
            ]
        );
        assert_eq!(r.count, 2);
    }

    #[test]
    fn replay_refusals() {
        let looped = dead(&[(dlq::REPLAY_COUNT, "3")]);
        assert_eq!(
            looped.plan_replay(3).unwrap_err(),
            "replayed 3 times already (--max-replays 3)"
        );
        assert!(looped.plan_replay(4).is_ok());
        let omitted = dead(&[(dlq::VALUE_OMITTED, "300000")]);
        assert_eq!(
            omitted.plan_replay(3).unwrap_err(),
            "value omitted from the DLQ (300000 bytes); the original is at ces.events 3:41"
        );
        let headerless = dead(&[(dlq::HEADERS_OMITTED, "921645")]);
        assert_eq!(
            headerless.plan_replay(3).unwrap_err(),
            "headers omitted from the DLQ (921645 bytes); the original is at ces.events 3:41"
        );
        let keyless = dead(&[(dlq::KEY_OMITTED, "1048400")]);
        assert_eq!(
            keyless.plan_replay(3).unwrap_err(),
            "key omitted from the DLQ (1048400 bytes); the original is at ces.events 3:41"
        );
        let garbled = dead(&[(dlq::REPLAY_COUNT, "x")]);
        assert_eq!(
            garbled.plan_replay(3).unwrap_err(),
            "ces-replay-count is not a count: \"x\""
        );
        let mut unreadable = dead(&[]);
        unreadable.headers.insert(1, Header::Unreadable);
        assert_eq!(
            unreadable.plan_replay(3).unwrap_err(),
            "a header name is not UTF-8, so that header cannot be read and the record cannot be replayed as \
             it was"
        );
        assert_eq!(unreadable.reason(), Some("invalid_json"));
        let nowhere = letter(&[(dlq::REASON, "invalid_json")]);
        assert_eq!(
            nowhere.plan_replay(3).unwrap_err(),
            "no ces-dlq-source-topic header"
        );
    }

    #[test]
    fn filters() {
        let d = dead(&[]);
        assert!(d.matches(&Filter::default()));
        let by_reason = |r| Filter {
            reason: Some(r),
            ..Filter::default()
        };
        assert!(d.matches(&by_reason(Reason::InvalidJson)));
        assert!(!d.matches(&by_reason(Reason::TooLarge)));
        let since = |t| Filter {
            since: Some(t),
            ..Filter::default()
        };
        assert!(d.matches(&since(datetime!(2026-11-23 10:00:00.123 UTC))));
        assert!(!d.matches(&since(datetime!(2026-11-23 10:00:00.124 UTC))));
        assert!(!letter(&[]).matches(&since(datetime!(2000-01-01 0:00 UTC))));
        let at = |partition, offset| Filter {
            offsets: [Coord { partition, offset }].into(),
            ..Filter::default()
        };
        assert!(d.matches(&at(0, 7)));
        assert!(!d.matches(&at(0, 8)));
        assert!(!d.matches(&at(1, 7)));
    }

    #[test]
    fn coordinates() {
        assert_eq!(
            "2:41".parse(),
            Ok(Coord {
                partition: 2,
                offset: 41
            })
        );
        for bad in ["", "2", "2:", ":4", "a:1", "1:b", "-1:0", "0:-1", "1:2:3"] {
            assert!(bad.parse::<Coord>().is_err(), "{bad}");
        }
        assert_eq!(
            Coord {
                partition: 1,
                offset: 9
            }
            .to_string(),
            "1:9"
        );
    }

    #[test]
    fn since() {
        let now = datetime!(2026-11-23 12:00 UTC);
        assert_eq!(
            parse_since("2026-11-23T10:00:00.5+01:00", now),
            Ok(datetime!(2026-11-23 09:00:00.5 UTC))
        );
        assert_eq!(
            parse_since("30s", now),
            Ok(datetime!(2026-11-23 11:59:30 UTC))
        );
        assert_eq!(parse_since("15m", now), Ok(datetime!(2026-11-23 11:45 UTC)));
        assert_eq!(parse_since("2h", now), Ok(datetime!(2026-11-23 10:00 UTC)));
        assert_eq!(parse_since("7d", now), Ok(datetime!(2026-11-16 12:00 UTC)));
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("2026-11-23", now).is_err());
    }

    #[test]
    fn ages() {
        let now = datetime!(2026-11-23 12:00 UTC);
        assert_eq!(
            Age::of(Some(datetime!(2026-11-23 11:30 UTC)), now),
            Age::Hour
        );
        assert_eq!(
            Age::of(Some(datetime!(2026-11-23 12:01 UTC)), now),
            Age::Hour
        );
        assert_eq!(
            Age::of(Some(datetime!(2026-11-23 11:00 UTC)), now),
            Age::Day
        );
        assert_eq!(
            Age::of(Some(datetime!(2026-11-22 12:00 UTC)), now),
            Age::Older
        );
        assert_eq!(Age::of(None, now), Age::Unknown);
    }

    #[test]
    fn json_form() {
        let mut d = dead(&[]);
        d.value = Some(vec![0xff, 0x00]);
        d.headers.push(Header::Named("empty".into(), None));
        d.headers.push(Header::Unreadable);
        let j = serde_json::to_value(d.to_json()).unwrap();
        assert_eq!(j["reason"], "invalid_json");
        assert_eq!(j["source_partition"], 3);
        assert_eq!(j["key"], "s1");
        assert_eq!(j["key_encoding"], "utf8");
        assert_eq!(j["value"], "/wA=");
        assert_eq!(j["value_encoding"], "base64");
        assert_eq!(
            j["headers"][0],
            serde_json::json!({"name": "trace", "value": "abc", "encoding": "utf8"})
        );
        assert_eq!(
            j["headers"][7],
            serde_json::json!({"name": "empty", "value": null})
        );
        assert_eq!(
            j["headers"][8],
            serde_json::json!({"name": null, "value": null, "unreadable": true})
        );
        assert_eq!(j["replay_count"], 0);
    }

    #[test]
    fn previews() {
        assert_eq!(preview(None, 5), "-");
        assert_eq!(preview(Some(b"abc"), 5), "abc");
        assert_eq!(preview(Some(b"abcdef"), 5), "abcd…");
        assert_eq!(preview(Some(b"a\nb"), 5), "a\\nb");
        assert_eq!(preview(Some(&[0xff]), 5), "<1 bytes, not UTF-8>");
        assert_eq!(truncate("a\u{1b}[31mb", 20), "a\\u{1b}[31mb");
        assert_eq!(escape("plain"), Cow::Borrowed("plain"));
        assert_eq!(escape("x\ry\tz"), "x\\ry\\tz");
    }

    #[test]
    fn the_last_named_header_wins_and_unreadable_or_binary_ones_are_skipped() {
        let mut d = letter(&[(dlq::REASON, "first"), (dlq::REASON, "second")]);
        assert_eq!(d.reason(), Some("second"));
        d.headers.push(Header::Unreadable);
        d.headers
            .push(Header::Named(dlq::DETAIL.into(), Some(vec![0xff])));
        d.headers.push(Header::Named(dlq::FAILED_AT.into(), None));
        assert_eq!(d.reason(), Some("second"));
        assert_eq!(d.header(dlq::DETAIL), None);
        assert_eq!(d.header(dlq::FAILED_AT), None);
        assert_eq!(d.header("absent"), None);
    }
}
