//! Edge configuration, read once from `CES_*` variables (see docs/configuration.md).

use std::net::SocketAddr;
use std::time::Duration;

use ces_protocol::token::TokenKeys;
use ces_runtime::config::{Common, Source, Vars};

/// Everything an edge node needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the public listener binds: registrations and WebSockets (`/v1/...`), with TLS when configured.
    pub listen: SocketAddr,
    /// Accept queue of the public listener: room for the connects of a reconnect storm while the node accepts.
    pub listen_backlog: u32,
    /// Address the internal listener binds: `/healthz`, `/readyz` and `/metrics`, plain HTTP, for the load
    /// balancer's and kubelet's probes and for Prometheus. Never the public address: an internet-facing node does
    /// not show its metrics to the internet.
    pub internal_listen: SocketAddr,
    /// This node's id, sent in the welcome frame and stored with sessions.
    pub node_id: String,
    /// Session token signing key.
    pub token_keys: TokenKeys,
    /// How long a new session token is valid.
    pub token_ttl: Duration,
    /// Interval between WebSocket pings.
    pub ping_interval: Duration,
    /// Longest one socket write (a batch of live events, a page of a replay) may take before the peer is
    /// considered gone.
    pub ws_write_timeout: Duration,
    /// Pings in a row without any frame from the client before the socket is closed.
    pub max_missed_pongs: u32,
    /// Frames queued per connection before it counts as a slow consumer and is closed with 4008.
    pub queue_capacity: usize,
    /// Bytes queued per connection before it counts as a slow consumer and is closed with 4008.
    pub queue_bytes: usize,
    /// Bytes queued for all connections together; past it the largest queue's connection is closed with 4008.
    pub queue_budget_bytes: usize,
    /// Bytes of Pub/Sub messages read from Redis and not yet dispatched to sockets; past it messages are dropped
    /// and every local socket catches up from its buffer.
    pub pubsub_buffer_bytes: usize,
    /// WebSocket handshakes (token check, session claim, buffer read) in progress at once; more wait.
    pub max_pending_handshakes: usize,
    /// How long a handshake waits for one of those slots before it is refused with 503 `overloaded`.
    pub admission_wait: Duration,
    /// Who may register sessions.
    pub register_auth: crate::register_auth::RegisterAuth,
    /// Delivery receipts to Kafka, when `CES_RECEIPTS_TOPIC` is set.
    pub receipts: Option<crate::receipts::Settings>,
    /// TLS, the header timeout and the cap on not-yet-upgraded connections.
    pub serving: crate::serve::Serving,
    /// Largest inbound WebSocket message (and frame) in bytes.
    pub max_message_bytes: usize,
    /// Longest registration body in bytes.
    pub max_body_bytes: usize,
    /// A session's state lives this long after its last activity (disconnect, ping).
    pub session_ttl: Duration,
    /// Longest a session lives from its registration: no refresh issues a token past it.
    pub max_session_lifetime: Duration,
    /// Most registered sessions at once, across all nodes.
    pub max_sessions: u64,
    /// Live sessions per JWT subject, across all edges.
    pub max_sessions_per_subject: u64,
    /// A session's epoch and `seq` survive this long without events (must match ingest's).
    pub state_ttl: Duration,
    /// How long shutdown waits for sockets to close.
    pub shutdown_grace: Duration,
    /// Admission limits.
    pub rates: crate::limits::Rates,
    /// Browser origins allowed to open sockets (`Origin` header, exact match); empty: any. Requests without an
    /// `Origin` (native apps, servers) are not browsers and are always allowed.
    pub allowed_origins: Vec<String>,
    /// Draining: how long `/readyz` fails (so the load balancer stops sending clients) before sockets start
    /// closing and the public listener stops accepting.
    pub drain_delay: Duration,
    /// Draining: sockets close with 1012 at random moments over this window, so their clients do not all
    /// reconnect to the other nodes at once.
    pub drain_window: Duration,
    /// Tokens of the admin API (`CES_ADMIN_TOKENS`); `None`: every admin route answers 403 `admin_disabled`.
    pub admin_tokens: Option<crate::admin::AdminTokens>,
    /// How often the node writes its heartbeat to Redis (`ces:nodes`); a node is alive for three of them.
    pub node_heartbeat: Duration,
    /// The demo page at `/demo/` (`CES_DEMO_DIR`), read at start; `None`: `/demo` answers 404.
    pub demo: Option<crate::demo::DemoPage>,
    /// Redis and logging.
    pub common: Common,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ces_runtime::Error> {
        Self::from_source(&ces_runtime::config::Env)
    }

    /// Reads any [`Source`]; every invalid variable is reported, none falls back to its default.
    pub fn from_source(source: &dyn Source) -> Result<Self, ces_runtime::Error> {
        let mut v = Vars::new(source);
        let listen = v.socket_addr("CES_EDGE_LISTEN", "127.0.0.1:8081");
        let listen_backlog = v.bounded("CES_EDGE_LISTEN_BACKLOG", 4096, 1, 65_535) as u32;
        // Loopback by default, as the public listener: a Kubernetes pod sets `0.0.0.0:<port>` so that kubelet and
        // Prometheus reach it, and exposes only the public port through its Service and load balancer.
        let internal_listen = v.socket_addr("CES_EDGE_INTERNAL_LISTEN", "127.0.0.1:9081");
        v.check(!overlap(listen, internal_listen), || {
            format!(
                "CES_EDGE_INTERNAL_LISTEN={internal_listen} is the address of CES_EDGE_LISTEN={listen}: probes and \
                 metrics need a listener of their own, on another port"
            )
        });
        // Unique by default: every replica of a container image has the same pid, and nodes sharing an id share a
        // control channel (missed takeovers, a newer socket closed instead of the older).
        let node_id = match v.optional("CES_NODE_ID") {
            Some(id) => id,
            None => {
                let host = v.optional("HOSTNAME").or_else(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                });
                default_node_id(host.as_deref(), rand::random())
            }
        };
        // Either one secret, or several keys with ids for rotation (the first signs, all verify).
        let secret = v.optional("CES_TOKEN_SECRET");
        let key_spec = v.optional("CES_TOKEN_KEYS");
        let token_ttl = Duration::from_secs(v.bounded("CES_TOKEN_TTL_SECS", 900, 10, 7 * 86_400));
        let ping_interval = v.millis("CES_WS_PING_INTERVAL_MS", 30_000, 100, 600_000);
        let ws_write_timeout = v.millis("CES_WS_WRITE_TIMEOUT_MS", 10_000, 100, 600_000);
        let max_missed_pongs = v.bounded("CES_WS_MAX_MISSED_PONGS", 2, 1, 100) as u32;
        let queue_capacity = v.bounded("CES_WS_QUEUE_CAPACITY", 1024, 1, 1 << 20) as usize;
        let queue_bytes = v.bounded("CES_WS_QUEUE_BYTES", 4 << 20, 1024, 1 << 30) as usize;
        let queue_budget_bytes =
            v.bounded("CES_EDGE_QUEUE_BUDGET_BYTES", 256 << 20, 1 << 20, 1 << 40) as usize;
        let pubsub_buffer_bytes =
            v.bounded("CES_PUBSUB_BUFFER_BYTES", 64 << 20, 1 << 16, 1 << 32) as usize;
        let max_pending_handshakes =
            v.bounded("CES_WS_MAX_PENDING_HANDSHAKES", 512, 1, 1_000_000) as usize;
        let admission_wait = v.millis("CES_WS_ADMISSION_WAIT_MS", 5000, 0, 60_000);
        let register_auth = crate::register_auth::RegisterAuth::read(&mut v);
        let receipts = crate::receipts::Settings::read(&mut v);
        let header_timeout = v.millis("CES_HTTP_HEADER_TIMEOUT_MS", 10_000, 100, 300_000);
        let max_http_connections =
            v.bounded("CES_HTTP_MAX_CONNECTIONS", 10_000, 1, 10_000_000) as usize;
        let max_connections_per_ip =
            v.bounded("CES_HTTP_MAX_CONNECTIONS_PER_IP", 64, 1, 10_000_000) as usize;
        let request_timeout = v.millis("CES_HTTP_REQUEST_TIMEOUT_MS", 15_000, 100, 300_000);
        let write_timeout = v.millis("CES_HTTP_WRITE_TIMEOUT_MS", 10_000, 100, 300_000);
        // hyper refuses a buffer under 8 KiB.
        let max_header_bytes =
            v.bounded("CES_HTTP_MAX_HEADER_BYTES", 16 << 10, 8 << 10, 1 << 20) as usize;
        let max_headers = v.bounded("CES_HTTP_MAX_HEADERS", 64, 8, 1000) as usize;
        let tls = match (
            v.optional("CES_TLS_CERT_FILE"),
            v.optional("CES_TLS_KEY_FILE"),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                match crate::serve::tls_config(cert.as_ref(), key.as_ref()) {
                    Ok(tls) => Some(tls),
                    Err(e) => {
                        v.check(false, || format!("CES_TLS_CERT_FILE/CES_TLS_KEY_FILE: {e}"));
                        None
                    }
                }
            }
            _ => {
                v.check(false, || {
                    "CES_TLS_CERT_FILE and CES_TLS_KEY_FILE go together: set both or neither".into()
                });
                None
            }
        };
        let max_message_bytes =
            v.bounded("CES_WS_MAX_MESSAGE_BYTES", 64 * 1024, 256, 16 << 20) as usize;
        // Metadata is stored with every session: small by default, so registrations cannot fill Redis.
        let max_body_bytes = v.bounded("CES_MAX_BODY_BYTES", 1024, 256, 1 << 20) as usize;
        let shutdown_grace = v.millis("CES_SHUTDOWN_GRACE_MS", 10_000, 0, 600_000);
        let nonzero = |n: u64| std::num::NonZeroU32::new(n as u32).expect("bounded below by 1");
        let rates = crate::limits::Rates {
            registrations_per_min: nonzero(v.bounded(
                "CES_LIMIT_REGISTRATIONS_PER_MIN",
                60,
                1,
                1_000_000,
            )),
            connects_per_min: nonzero(v.bounded("CES_LIMIT_CONNECTS_PER_MIN", 600, 1, 1_000_000)),
            messages_per_sec: nonzero(v.bounded("CES_LIMIT_MESSAGES_PER_SEC", 50, 1, 100_000)),
            max_connections: v.bounded("CES_MAX_CONNECTIONS", 200_000, 1, 10_000_000) as usize,
            ipv6_prefix: v.bounded("CES_LIMIT_IPV6_PREFIX", 64, 32, 128) as u8,
            registrations_per_subject_per_min: nonzero(v.bounded(
                "CES_LIMIT_REGISTRATIONS_PER_SUBJECT_PER_MIN",
                30,
                1,
                1_000_000,
            )),
        };
        let allowed_origins = v.list("CES_ALLOWED_ORIGINS", &[]);
        v.check(
            allowed_origins
                .iter()
                .all(|o| o.starts_with("https://") || o.starts_with("http://")),
            || format!("CES_ALLOWED_ORIGINS={allowed_origins:?} must be origins like https://app.example.com"),
        );
        let proxies = v.list("CES_TRUSTED_PROXIES", &[]);
        let trusted_proxies =
            crate::client_addr::TrustedProxies::parse(&proxies).unwrap_or_else(|e| {
                v.check(false, || format!("CES_TRUSTED_PROXIES: {e}"));
                Default::default()
            });
        let proxy_protocol = v.parse("CES_PROXY_PROTOCOL", false);
        v.check(!proxy_protocol || !trusted_proxies.is_empty(), || {
            "CES_PROXY_PROTOCOL=true needs CES_TRUSTED_PROXIES: only the load balancers listed there may send a \
             PROXY protocol header"
                .into()
        });
        v.check(admission_wait < request_timeout, || {
            "CES_WS_ADMISSION_WAIT_MS must be shorter than CES_HTTP_REQUEST_TIMEOUT_MS (a handshake that waits for \
             a slot is a request in progress)"
                .into()
        });
        let drain_delay = v.millis("CES_DRAIN_DELAY_MS", 1000, 0, 60_000);
        let drain_window = v.millis("CES_DRAIN_WINDOW_MS", 5000, 0, 600_000);
        v.check(drain_delay + drain_window <= shutdown_grace, || {
            "CES_DRAIN_DELAY_MS + CES_DRAIN_WINDOW_MS must not exceed CES_SHUTDOWN_GRACE_MS".into()
        });
        let state_ttl =
            Duration::from_secs(v.bounded("CES_SESSION_STATE_TTL_SECS", 86_400, 60, 90 * 86_400));
        let session_ttl =
            Duration::from_secs(v.bounded("CES_SESSION_TTL_SECS", 900, 10, 30 * 86_400));
        let max_sessions = v.bounded("CES_MAX_SESSIONS", 1_000_000, 1, 1 << 40);
        let max_session_lifetime = Duration::from_secs(v.bounded(
            "CES_SESSION_MAX_LIFETIME_SECS",
            86_400,
            60,
            365 * 86_400,
        ));
        let max_sessions_per_subject = v.bounded("CES_MAX_SESSIONS_PER_SUBJECT", 100, 1, 1 << 40);
        // Read here, with the rest of the configuration: a missing file refuses the start (and `--check-config`).
        let demo = v.optional("CES_DEMO_DIR").and_then(|dir| {
            crate::demo::DemoPage::load(dir.as_ref())
                .inspect_err(|e| v.check(false, || format!("CES_DEMO_DIR={dir}: {e}")))
                .ok()
        });
        let admin_tokens = crate::admin::AdminTokens::read(&mut v);
        let node_heartbeat = v.millis("CES_NODE_HEARTBEAT_MS", 5000, 100, 600_000);
        let common = Common::read(&mut v);

        let token_keys = match (&secret, &key_spec) {
            (Some(secret), None) => TokenKeys::new([("default", secret.as_bytes())])
                .map_err(|e| format!("CES_TOKEN_SECRET: {e}")),
            (None, Some(spec)) => TokenKeys::parse(spec).map_err(|e| format!("CES_TOKEN_KEYS: {e}")),
            (Some(_), Some(_)) => Err("set CES_TOKEN_SECRET or CES_TOKEN_KEYS, not both".into()),
            (None, None) => Err(
                "CES_TOKEN_SECRET (at least 32 bytes) or CES_TOKEN_KEYS (kid=secret,...; the first signs) is required"
                    .into(),
            ),
        };
        if let Err(e) = &token_keys {
            v.check(false, || e.clone());
        }
        v.check(
            ces_protocol::keys::validate_session_id(&node_id).is_ok(),
            || format!("CES_NODE_ID={node_id:?} must be 1-128 of A-Z a-z 0-9 _ . : -"),
        );
        v.finish()?;
        Ok(Self {
            listen,
            listen_backlog,
            internal_listen,
            node_id,
            token_keys: token_keys.expect("a key error fails `finish` above"),
            token_ttl,
            ping_interval,
            ws_write_timeout,
            max_missed_pongs,
            queue_capacity,
            queue_bytes,
            queue_budget_bytes,
            pubsub_buffer_bytes,
            max_pending_handshakes,
            admission_wait,
            register_auth,
            receipts,
            serving: crate::serve::Serving {
                tls,
                header_timeout,
                max_connections: max_http_connections,
                max_connections_per_ip,
                request_timeout,
                write_timeout,
                max_header_bytes,
                max_headers,
                trusted: trusted_proxies,
                ipv6_prefix: rates.ipv6_prefix,
                proxy_protocol,
            },
            max_message_bytes,
            max_body_bytes,
            shutdown_grace,
            rates,
            allowed_origins,
            drain_delay,
            drain_window,
            state_ttl,
            session_ttl,
            max_sessions,
            max_sessions_per_subject,
            max_session_lifetime,
            demo,
            admin_tokens,
            node_heartbeat,
            common,
        })
    }
}

/// Whether listeners on `a` and `b` would take the same port: the same port (other than 0, any free one) on the
/// same address, or on any address when either is the unspecified one (`0.0.0.0`, `[::]`), which takes the port
/// on every address.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The node id when `CES_NODE_ID` is not set: the host name (a Kubernetes pod's name) made safe for a node id,
/// and a random suffix, so two processes on one host (or two containers from one image) never share an id.
pub fn default_node_id(host: Option<&str>, suffix: u32) -> String {
    let host: String = host
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    let host = if host.is_empty() { "edge" } else { &host };
    format!("{host}-{suffix:08x}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// `pairs`, with registration open unless they say otherwise (closed registration is tested in
    /// `register_auth`).
    fn src(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        let mut vars: HashMap<&'static str, String> =
            [("CES_REGISTER_OPEN", "true".to_owned())].into();
        vars.extend(pairs.iter().map(|(k, v)| (*k, (*v).to_owned())));
        vars
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn secret_is_required_and_must_be_long_enough() {
        let err = Config::from_source(&src(&[])).unwrap_err().to_string();
        assert!(
            err.contains("CES_TOKEN_SECRET (at least 32 bytes) or CES_TOKEN_KEYS"),
            "{err}"
        );
        let err = Config::from_source(&src(&[("CES_TOKEN_SECRET", "short")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CES_TOKEN_SECRET: the secret of key \"default\" is 5 bytes"),
            "{err}"
        );
        let keys = format!("k2={},k1={}", "b".repeat(32), "a".repeat(32));
        let c = Config::from_source(&src(&[("CES_TOKEN_KEYS", &keys)])).unwrap();
        assert_eq!(c.token_keys.signing_kid(), "k2");
        let err = Config::from_source(&src(&[
            ("CES_TOKEN_KEYS", &keys),
            ("CES_TOKEN_SECRET", &keys),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn the_default_node_id_is_the_host_and_a_random_suffix() {
        assert_eq!(
            default_node_id(Some("ces-edge-7d9f-x2"), 0xab),
            "ces-edge-7d9f-x2-000000ab"
        );
        assert_eq!(default_node_id(Some("a b/c\u{e9}"), 1), "a-b-c--00000001");
        assert_eq!(default_node_id(None, 0xffff_ffff), "edge-ffffffff");
        assert_eq!(default_node_id(Some(""), 2), "edge-00000002");
        let long = "h".repeat(300);
        let id = default_node_id(Some(&long), 3);
        assert_eq!(id.len(), 109);
        assert!(ces_protocol::keys::validate_session_id(&id).is_ok(), "{id}");

        let with_host = |host: &str| {
            Config::from_source(&src(&[("CES_TOKEN_SECRET", SECRET), ("HOSTNAME", host)]))
                .unwrap()
                .node_id
        };
        let (a, b) = (with_host("pod-1"), with_host("pod-1"));
        assert!(
            a.starts_with("pod-1-") && b.starts_with("pod-1-"),
            "{a} {b}"
        );
        assert_ne!(a, b, "two replicas on one host get their own ids");
        let set = Config::from_source(&src(&[
            ("CES_TOKEN_SECRET", SECRET),
            ("CES_NODE_ID", "edge-a"),
        ]))
        .unwrap();
        assert_eq!(set.node_id, "edge-a", "an explicit id wins");
    }

    #[test]
    fn lists_every_error_at_once() {
        let err = Config::from_source(&src(&[
            ("CES_TOKEN_SECRET", "short"),
            ("CES_EDGE_LISTEN", "nowhere"),
            ("CES_WS_QUEUE_CAPACITY", "0"),
            ("CES_NODE_ID", "a b"),
            ("CES_EDGE_LISTEN_BACKLOG", "0"),
        ]))
        .unwrap_err()
        .to_string();
        for needle in [
            "CES_TOKEN_SECRET",
            "CES_EDGE_LISTEN",
            "CES_WS_QUEUE_CAPACITY",
            "CES_NODE_ID",
            "CES_EDGE_LISTEN_BACKLOG",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }

    #[test]
    fn the_proxy_protocol_is_only_taken_from_trusted_proxies() {
        let base = [("CES_TOKEN_SECRET", SECRET), ("CES_PROXY_PROTOCOL", "true")];
        let err = Config::from_source(&src(&base)).unwrap_err().to_string();
        assert!(
            err.contains("CES_PROXY_PROTOCOL=true needs CES_TRUSTED_PROXIES"),
            "{err}"
        );
        let mut with_proxies = base.to_vec();
        with_proxies.push(("CES_TRUSTED_PROXIES", "10.0.0.0/8"));
        let c = Config::from_source(&src(&with_proxies)).unwrap();
        assert!(c.serving.proxy_protocol);
        let off = Config::from_source(&src(&[("CES_TOKEN_SECRET", SECRET)])).unwrap();
        assert!(!off.serving.proxy_protocol, "off by default");
    }

    #[test]
    fn tls_needs_a_readable_certificate_and_its_key() {
        let secret = "k".repeat(32);
        let err = Config::from_source(&src(&[
            ("CES_TOKEN_SECRET", &secret),
            ("CES_TLS_CERT_FILE", "/nonexistent/cert.pem"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("set both or neither"), "{err}");
        let err = Config::from_source(&src(&[
            ("CES_TOKEN_SECRET", &secret),
            ("CES_TLS_CERT_FILE", "/nonexistent/cert.pem"),
            ("CES_TLS_KEY_FILE", "/nonexistent/key.pem"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    }

    #[test]
    fn the_internal_listener_needs_an_address_of_its_own() {
        let with = |pairs: &[(&'static str, &str)]| {
            let mut all = vec![("CES_TOKEN_SECRET", SECRET)];
            all.extend_from_slice(pairs);
            Config::from_source(&src(&all))
        };
        let c = with(&[]).unwrap();
        assert_eq!(c.internal_listen, "127.0.0.1:9081".parse().unwrap());
        assert_ne!(c.listen, c.internal_listen);
        let c = with(&[("CES_EDGE_INTERNAL_LISTEN", "0.0.0.0:9090")]).unwrap();
        assert_eq!(c.internal_listen, "0.0.0.0:9090".parse().unwrap());

        for (public, internal) in [
            ("127.0.0.1:8081", "127.0.0.1:8081"),
            ("0.0.0.0:8081", "127.0.0.1:8081"),
            ("10.0.0.5:8081", "0.0.0.0:8081"),
            ("[::]:8081", "127.0.0.1:8081"),
        ] {
            let err = with(&[
                ("CES_EDGE_LISTEN", public),
                ("CES_EDGE_INTERNAL_LISTEN", internal),
            ])
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("CES_EDGE_INTERNAL_LISTEN") && err.contains("listener of their own"),
                "{public} and {internal}: {err}"
            );
        }
        // The same port on two specific addresses, and two ports picked by the kernel, do not collide.
        for (public, internal) in [
            ("10.0.0.5:8081", "127.0.0.1:8081"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            assert!(
                with(&[
                    ("CES_EDGE_LISTEN", public),
                    ("CES_EDGE_INTERNAL_LISTEN", internal),
                ])
                .is_ok(),
                "{public} and {internal}"
            );
        }
        let err = with(&[("CES_EDGE_INTERNAL_LISTEN", "9081")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("CES_EDGE_INTERNAL_LISTEN"), "{err}");
    }

    #[test]
    fn defaults() {
        let c = Config::from_source(&src(&[("CES_TOKEN_SECRET", &"k".repeat(32))])).unwrap();
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert_eq!(c.ws_write_timeout, Duration::from_secs(10));
        assert_eq!(c.queue_budget_bytes, 256 << 20);
        assert_eq!(c.listen_backlog, 4096);
        assert_eq!(c.admission_wait, Duration::from_secs(5));
        assert_eq!(c.max_session_lifetime, Duration::from_secs(86_400));
        assert_eq!(c.max_message_bytes, 64 * 1024);
        assert_eq!(c.token_ttl, Duration::from_secs(900));
    }
}
