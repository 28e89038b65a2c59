//! Metric names of ces-edge (Prometheus conventions: `_total` counters, `_seconds` histograms).

/// Open WebSocket connections.
pub const CONNECTIONS: &str = "ces_edge_connections";
/// Sessions registered through `POST /v1/sessions`.
pub const SESSIONS_REGISTERED: &str = "ces_edge_sessions_registered_total";
/// Event frames written to sockets.
pub const DELIVERED: &str = "ces_edge_delivered_total";
/// Resume answers, labelled by `result` (`ok`, `buffer_overflow`, `expired`, `epoch_changed`).
pub const RESUMES: &str = "ces_edge_resumes_total";
/// Events replayed from reconnection buffers.
pub const REPLAYED: &str = "ces_edge_replayed_total";
/// Events replayed from the buffer to fill a gap in a live stream (a Pub/Sub message lost in a reconnect).
pub const GAPS_FILLED: &str = "ces_edge_gap_filled_total";
/// Live events not written because the socket already had them (the subscribe/replay overlap).
pub const SKIPPED: &str = "ces_edge_skipped_total";
/// Sockets closed, labelled by close `code`.
pub const CLOSED: &str = "ces_edge_closed_total";
/// Connections closed because their queue overflowed.
pub const SLOW_CONSUMERS: &str = "ces_edge_slow_consumer_total";
/// Rejected tokens, labelled by `reason`.
pub const TOKEN_FAILURES: &str = "ces_edge_token_failures_total";
/// Messages for a session with no local connection (normal in the instant a connection leaves).
pub const UNDELIVERABLE: &str = "ces_edge_undeliverable_total";
/// Pub/Sub messages lost because the dispatch task fell behind.
pub const SUBSCRIBER_LAGGED: &str = "ces_edge_subscriber_lagged_total";
/// Envelopes that could not be decoded.
pub const MALFORMED_ENVELOPES: &str = "ces_edge_malformed_envelopes_total";
/// Channels this node is subscribed to.
pub const SUBSCRIBED_CHANNELS: &str = "ces_edge_subscribed_channels";
/// Requests refused with 429 by a per-IP limit.
pub const RATE_LIMITED_TOTAL: &str = "ces_edge_rate_limited_total";
/// TCP connections open and not (yet) upgraded to a WebSocket: waiting for a request, or in one.
pub const HTTP_CONNECTIONS: &str = "ces_edge_http_connections";
/// Connections closed at accept, labelled by `reason`: `node` (`CES_HTTP_MAX_CONNECTIONS` were open) or `address`
/// (the client's address held `CES_HTTP_MAX_CONNECTIONS_PER_IP`).
pub const HTTP_CONNECTIONS_SHED: &str = "ces_edge_http_connections_shed_total";
/// Requests answered 408 because they were not complete within `CES_HTTP_REQUEST_TIMEOUT_MS`.
pub const HTTP_REQUESTS_TIMED_OUT: &str = "ces_edge_http_requests_timed_out_total";
/// TLS handshakes that failed or timed out.
pub const TLS_HANDSHAKE_FAILURES: &str = "ces_edge_tls_handshake_failures_total";
/// WebSocket handshakes refused with 503 `overloaded` because no handshake slot freed up in time.
pub const HANDSHAKES_SHED: &str = "ces_edge_handshakes_shed_total";
/// WebSocket handshakes in progress (token checked, not yet welcomed).
pub const PENDING_HANDSHAKES: &str = "ces_edge_pending_handshakes";
/// Memory used by each Redis primary (`INFO memory` `used_memory`), labelled by `server`; read every 15 s.
pub const REDIS_USED_MEMORY: &str = "ces_redis_used_memory_bytes";
/// Each Redis primary's `maxmemory` (0: no limit), labelled by `server`.
pub const REDIS_MAX_MEMORY: &str = "ces_redis_maxmemory_bytes";
/// Registrations refused for a missing or bad credential, labelled by `reason`.
pub const REGISTRATIONS_REFUSED: &str = "ces_edge_registrations_refused_total";
/// Counter: buffered events whose frame an edge can never send (larger than the write buffer's cap, or data not
/// UTF-8), each replaced by a `resumed ok:false` notice naming its `seq` (`reason: too_large`).
pub const UNSENDABLE: &str = "ces_edge_unsendable_events_total";
/// Gauge: bytes of live events queued for this node's sockets, all together (bounded by
/// `CES_EDGE_QUEUE_BUDGET_BYTES`).
pub const QUEUED_BYTES: &str = "ces_edge_queued_bytes";
/// Counter: sockets closed with 4008 because the node's queues together passed their budget (the largest queue
/// goes first); each is also counted in [`SLOW_CONSUMERS`].
pub const BUDGET_CLOSES: &str = "ces_edge_queue_budget_closes_total";
/// Counter: connections from a trusted proxy closed because their PROXY protocol header was missing, invalid or
/// late (`CES_PROXY_PROTOCOL`).
pub const PROXY_HEADERS_REFUSED: &str = "ces_edge_proxy_headers_refused_total";
/// Counter `{kind}`: delivery receipts produced (`delivered`, `acked`, `lost`), `CES_RECEIPTS_TOPIC`.
pub const RECEIPTS: &str = "ces_edge_receipts_total";
/// Counter: receipts Kafka did not confirm (kept outstanding: the next resume produces them again).
pub const RECEIPTS_FAILED: &str = "ces_edge_receipts_failed_total";
/// Counter `{why}`: receipts that will never be produced: `queue_full` (the hand-over queue, `CES_RECEIPTS_QUEUE`),
/// `never_acked` (an `acked` receipt for an event the client did not acknowledge among the last 4096),
/// `left_the_buffer` (a catch-up after a resume found the event gone).
pub const RECEIPTS_DROPPED: &str = "ces_edge_receipts_dropped_total";
