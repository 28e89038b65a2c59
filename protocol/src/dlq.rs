//! The dead-letter record format: header names shared by ingest (which writes dead letters) and `cesctl`
//! (which reads and replays them). The names are part of the external contract (docs/protocol.md).
//!
//! A dead letter is the original record, byte for byte (key, value, headers), plus these headers. Every
//! `ces-dlq-*` header already on the record (from an earlier dead-lettering) is replaced, never duplicated.
//! A dead letter the DLQ topic will not take whole goes without its value, then without its original headers,
//! then without its key, each omission named by a header ([`OMITTED`]); the source coordinates still point at
//! the original.

/// Prefix of every header ingest adds to a dead letter.
pub const PREFIX: &str = "ces-dlq-";
/// Stable reason code ([`crate::record::Reason`]).
pub const REASON: &str = "ces-dlq-reason";
/// Human-readable detail pointing at the problem (a JSON pointer where there is one).
pub const DETAIL: &str = "ces-dlq-detail";
/// Topic the record was consumed from.
pub const SOURCE_TOPIC: &str = "ces-dlq-source-topic";
/// Partition it was consumed from.
pub const SOURCE_PARTITION: &str = "ces-dlq-source-partition";
/// Its offset there.
pub const SOURCE_OFFSET: &str = "ces-dlq-source-offset";
/// When it was rejected (RFC 3339, UTC, milliseconds).
pub const FAILED_AT: &str = "ces-dlq-failed-at";
/// How many times processing was attempted before the record was given up (only for `processing_failed`).
pub const ATTEMPTS: &str = "ces-dlq-attempts";
/// Present when the dead letter was too large for the DLQ topic and was written without its value; the value
/// is its original size in bytes. The original is still at the source coordinates.
pub const VALUE_OMITTED: &str = "ces-dlq-value-omitted";
/// Present when the dead letter was written without the record's own headers (too large for the DLQ topic even
/// without its value, or over the header limit, reason `invalid_headers`); the value is their original size in
/// bytes, names and values counted.
pub const HEADERS_OMITTED: &str = "ces-dlq-headers-omitted";
/// Present when the dead letter was too large for the DLQ topic even without its value and headers, and was
/// written without its key; the value is the key's original size in bytes.
pub const KEY_OMITTED: &str = "ces-dlq-key-omitted";
/// Every omission header, in the order the parts are dropped. A dead letter carrying any of them is not the
/// whole record: replaying it would produce a different one; the original is at the source coordinates.
pub const OMITTED: [&str; 3] = [VALUE_OMITTED, HEADERS_OMITTED, KEY_OMITTED];

/// Set by `cesctl dlq replay` on a re-produced record: how many times it has been replayed. Not a `ces-dlq-*`
/// header, so it survives dead-lettering and a record that fails again shows its count.
pub const REPLAY_COUNT: &str = "ces-replay-count";

/// Header naming the encoding of a record's value ([`CONTENT_TYPE_JSON`] when absent).
pub const CONTENT_TYPE: &str = "content-type";
/// JSON event (the default).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Protobuf `ces.v1.Event`.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";

/// The consumer group whose committed offsets on the DLQ topic mark the dead letters already handled (replayed or
/// dismissed by `cesctl`), unless `CES_DLQ_HANDLED_GROUP` names another. Nobody joins it: `cesctl` commits
/// offsets for partitions it assigns itself, and ingest only reads them.
pub const DEFAULT_HANDLED_GROUP: &str = "ces-dlq-handled";

/// Dead letters of one DLQ partition nobody has handled yet: those from the handled group's `committed` offset
/// (the low watermark `low` when nothing is committed, or when retention deleted past it) to the high watermark
/// `high`. Never negative (a committed offset past `high` is a topic recreated under the group).
pub fn backlog(low: i64, high: i64, committed: Option<i64>) -> i64 {
    (high - first_unhandled(low, committed)).max(0)
}

/// The first offset of a DLQ partition not yet handled: the handled group's `committed` offset, or the low
/// watermark `low` when nothing is committed or retention deleted past it.
pub fn first_unhandled(low: i64, committed: Option<i64>) -> i64 {
    committed.map_or(low, |c| c.max(low))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_counts_from_the_committed_offset_or_the_low_watermark() {
        assert_eq!(backlog(0, 10, None), 10);
        assert_eq!(backlog(4, 10, None), 6);
        assert_eq!(backlog(0, 10, Some(3)), 7);
        assert_eq!(backlog(0, 10, Some(10)), 0);
        // Retention deleted past the committed offset: what is gone is not waiting.
        assert_eq!(backlog(5, 10, Some(2)), 5);
        // A committed offset past the end (the topic was recreated) is no backlog, never a negative one.
        assert_eq!(backlog(0, 10, Some(12)), 0);
        assert_eq!(backlog(0, 0, None), 0);
        assert_eq!(first_unhandled(3, None), 3);
        assert_eq!(first_unhandled(3, Some(2)), 3);
        assert_eq!(first_unhandled(3, Some(4)), 4);
    }
}
