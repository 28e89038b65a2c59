//! Metric names of ces-edge (Prometheus conventions: `_total` counters, `_seconds` histograms), and [`register`],
//! which exports every family from the start.

use ces_protocol::close::CloseCode;
use ces_protocol::token::TokenError;
use ces_runtime::telemetry::{self, hop};
use metrics::{counter, describe_counter, describe_gauge, gauge};

use crate::register_auth::Refusal;
use crate::resume;

/// The handles of what every delivered event records (its two hops, its end-to-end latency, the delivered count),
/// looked up once per process: a lookup by name and labels costs a registry search and, for the labelled ones, an
/// allocation or two, several times what recording costs (about 7 of the edge's 24 allocations per delivered frame
/// were these lookups; docs/performance.md).
#[derive(Debug)]
pub struct PerEvent {
    /// `ces_hop_latency_seconds{hop="redis_to_edge"}`.
    pub redis_to_edge: metrics::Histogram,
    /// `ces_hop_latency_seconds{hop="edge_to_socket"}`.
    pub edge_to_socket: metrics::Histogram,
    /// `ces_e2e_latency_seconds`.
    pub e2e: metrics::Histogram,
    /// [`DELIVERED`].
    pub delivered: metrics::Counter,
}

/// [`PerEvent`], resolved at the first call: after the process installed its recorder, which the edge does before
/// it serves anything.
pub fn per_event() -> &'static PerEvent {
    static HANDLES: std::sync::OnceLock<PerEvent> = std::sync::OnceLock::new();
    HANDLES.get_or_init(|| PerEvent {
        redis_to_edge: telemetry::hop_histogram(hop::REDIS_TO_EDGE),
        edge_to_socket: telemetry::hop_histogram(hop::EDGE_TO_SOCKET),
        e2e: metrics::histogram!(telemetry::E2E_LATENCY),
        delivered: counter!(DELIVERED),
    })
}

/// Open WebSocket connections.
pub const CONNECTIONS: &str = "ces_edge_connections";
/// Sessions registered through `POST /v1/sessions`.
pub const SESSIONS_REGISTERED: &str = "ces_edge_sessions_registered_total";
/// Event frames written to sockets.
pub const DELIVERED: &str = "ces_edge_delivered_total";
/// Resume answers, labelled by `result`: [`RESUMED_OK`], or the reason of a `resumed ok:false` (a gap notice too):
/// [`resume::reason::LOST`].
pub const RESUMES: &str = "ces_edge_resumes_total";
/// [`RESUMES`]'s `result` for a resume that replayed everything.
pub const RESUMED_OK: &str = "ok";
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
/// Connections closed at accept, labelled by `reason`: [`shed::NODE`] or [`shed::ADDRESS`].
pub const HTTP_CONNECTIONS_SHED: &str = "ces_edge_http_connections_shed_total";

/// The values of [`HTTP_CONNECTIONS_SHED`]'s `reason` label.
pub mod shed {
    /// `CES_HTTP_MAX_CONNECTIONS` were open.
    pub const NODE: &str = "node";
    /// The client's address held `CES_HTTP_MAX_CONNECTIONS_PER_IP`.
    pub const ADDRESS: &str = "address";
    /// Both.
    pub const ALL: [&str; 2] = [NODE, ADDRESS];
}
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

/// Label values of the receipts counters, one list each.
pub mod receipt {
    /// `kind`: an event written to a socket (or caught up on a resume).
    pub const DELIVERED: &str = "delivered";
    /// `kind`: an event the client acknowledged.
    pub const ACKED: &str = "acked";
    /// `kind`: a range the client was told is lost.
    pub const LOST: &str = "lost";
    /// Every `kind`.
    pub const KINDS: [&str; 3] = [DELIVERED, ACKED, LOST];
    /// `why`: the hand-over queue was full.
    pub const QUEUE_FULL: &str = "queue_full";
    /// `why`: the event was not among the last ones the client left unacknowledged.
    pub const NEVER_ACKED: &str = "never_acked";
    /// `why`: a catch-up found the event trimmed from the buffer.
    pub const LEFT_THE_BUFFER: &str = "left_the_buffer";
    /// Every `why`.
    pub const DROPS: [&str; 3] = [QUEUE_FULL, NEVER_ACKED, LEFT_THE_BUFFER];
}

/// Exports every family of the edge at zero (counters and gauges), or with no observation (histograms), before
/// anything happens: an idle node shows 0, not "no data". Labelled families get a series for every label value
/// known in advance, from the lists that define them; those whose values are found at run time (`server` of the
/// Redis memory gauges) appear with their first reading, made at start. Gauges are incremented by 0, not set, so
/// a second edge in the same process (tests) leaves the first one's values alone.
pub fn register() {
    let counters = [
        (SESSIONS_REGISTERED, "sessions registered"),
        (DELIVERED, "event frames written to sockets"),
        (REPLAYED, "events replayed from reconnection buffers"),
        (
            GAPS_FILLED,
            "events replayed to fill a gap in a live stream",
        ),
        (
            SKIPPED,
            "live events not written because the socket already had them",
        ),
        (
            SLOW_CONSUMERS,
            "sockets closed as slow consumers because their queue overflowed",
        ),
        (
            BUDGET_CLOSES,
            "sockets closed as slow consumers because the node's queues passed their budget",
        ),
        (
            UNDELIVERABLE,
            "messages for a session with no local connection",
        ),
        (
            SUBSCRIBER_LAGGED,
            "Pub/Sub messages lost because the dispatch task fell behind",
        ),
        (MALFORMED_ENVELOPES, "envelopes that could not be decoded"),
        (UNSENDABLE, "buffered events whose frame no edge can send"),
        (
            PROXY_HEADERS_REFUSED,
            "connections closed for a missing or invalid PROXY protocol header",
        ),
        (
            HTTP_REQUESTS_TIMED_OUT,
            "requests answered 408 because they were not complete in time",
        ),
        (
            TLS_HANDSHAKE_FAILURES,
            "TLS handshakes that failed or timed out",
        ),
        (
            HANDSHAKES_SHED,
            "WebSocket handshakes refused with 503 overloaded",
        ),
        (
            RATE_LIMITED_TOTAL,
            "requests refused with 429 by a per-IP limit",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(name, help);
        counter!(name).increment(0);
    }
    describe_counter!(CLOSED, "sockets closed, by close code");
    for code in CloseCode::ALL {
        counter!(CLOSED, "code" => code.code().to_string()).increment(0);
    }
    describe_counter!(RESUMES, "resume answers and gap notices, by result");
    for result in std::iter::once(RESUMED_OK).chain(resume::reason::LOST) {
        counter!(RESUMES, "result" => result).increment(0);
    }
    describe_counter!(TOKEN_FAILURES, "rejected tokens, by reason");
    for reason in TokenError::ALL {
        counter!(TOKEN_FAILURES, "reason" => reason.to_string()).increment(0);
    }
    describe_counter!(
        REGISTRATIONS_REFUSED,
        "registrations refused for a missing or bad credential"
    );
    for reason in Refusal::ALL {
        counter!(REGISTRATIONS_REFUSED, "reason" => reason.code()).increment(0);
    }
    describe_counter!(
        HTTP_CONNECTIONS_SHED,
        "connections closed at accept, by reason"
    );
    for reason in shed::ALL {
        counter!(HTTP_CONNECTIONS_SHED, "reason" => reason).increment(0);
    }
    let gauges = [
        (CONNECTIONS, "open WebSocket connections"),
        (
            SUBSCRIBED_CHANNELS,
            "session channels this node is subscribed to",
        ),
        (
            HTTP_CONNECTIONS,
            "TCP connections open and not upgraded to a WebSocket",
        ),
        (
            PENDING_HANDSHAKES,
            "WebSocket handshakes doing their Redis work now",
        ),
        (
            QUEUED_BYTES,
            "bytes of live events queued for the node's sockets",
        ),
    ];
    for (name, help) in gauges {
        describe_gauge!(name, help);
        gauge!(name).increment(0.0);
    }
    describe_gauge!(
        REDIS_USED_MEMORY,
        "each Redis primary's used_memory, by server"
    );
    describe_gauge!(
        REDIS_MAX_MEMORY,
        "each Redis primary's maxmemory (0: no limit), by server"
    );
    describe_counter!(RECEIPTS, "delivery receipts produced, by kind");
    for kind in receipt::KINDS {
        counter!(RECEIPTS, "kind" => kind).increment(0);
    }
    describe_counter!(RECEIPTS_FAILED, "delivery receipts Kafka did not confirm");
    counter!(RECEIPTS_FAILED).increment(0);
    describe_counter!(RECEIPTS_DROPPED, "delivery receipts never produced, by why");
    for why in receipt::DROPS {
        counter!(RECEIPTS_DROPPED, "why" => why).increment(0);
    }
    telemetry::register_latency(&hop::EDGE, true);
}
