//! The admin API, served on the internal listener only (`CES_EDGE_INTERNAL_LISTEN`; the public router answers 404
//! to `/v1/admin/*`): where a session is and how far its buffer and acknowledgements reach, the sessions by label
//! and node, an operator's revocation, and the edge nodes' heartbeats. docs/admin.md is the design,
//! docs/admin-openapi.json the contract ([`ROUTES`] is the list both the router and that file's test read).
//!
//! Authorised by `Authorization: Bearer <token>` against `CES_ADMIN_TOKENS` ([`AdminTokens`]): the SHA-256 of the
//! presented token is compared with each configured token's in constant time (`subtle`), every one of them, so
//! neither which token matched nor how much of one did shows in the timing. Without `CES_ADMIN_TOKENS` every admin
//! route answers 403 `admin_disabled`; a missing or unknown token 401 `unauthorized` with `WWW-Authenticate:
//! Bearer`.
//!
//! [`sessions`] reads Redis (one pipelined read per session, `SCAN` per primary for the listing); the query, the
//! cursor and the token check here are pure.

pub mod sessions;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Json, Router};
use ces_protocol::keys::SessionId;
use ces_runtime::config::Vars;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::{AppState, Error};

/// Shortest admin token accepted, in bytes: 128 bits of a random 32-hex-character token.
pub const MIN_TOKEN_BYTES: usize = 32;

/// Listing page size when the query names none, and the largest it may name.
pub const DEFAULT_LIMIT: u32 = 100;
/// See [`DEFAULT_LIMIT`].
pub const MAX_LIMIT: u32 = 1000;

/// The configured admin tokens (`CES_ADMIN_TOKENS`), kept as SHA-256 digests only: the tokens themselves are
/// neither stored nor shown (`Debug` prints how many there are).
#[derive(Clone)]
pub struct AdminTokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTokens")
            .field("tokens", &self.digests.len())
            .finish()
    }
}

impl AdminTokens {
    /// Reads `CES_ADMIN_TOKENS`: `None` when unset (the admin API is disabled). An invalid value is recorded in
    /// `v` without repeating it: it is a secret.
    pub fn read(v: &mut Vars<'_>) -> Option<Self> {
        let spec = v.optional("CES_ADMIN_TOKENS")?;
        match Self::parse(&spec) {
            Ok(tokens) => Some(tokens),
            Err(e) => {
                v.check(false, || format!("CES_ADMIN_TOKENS: {e}"));
                None
            }
        }
    }

    /// Parses a comma-separated list of tokens, each at least [`MIN_TOKEN_BYTES`] bytes (surrounding spaces
    /// trimmed). The error names a token by its position, never by its value.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let tokens: Vec<&str> = spec.split(',').map(str::trim).collect();
        let n = tokens.len();
        let mut digests = Vec::with_capacity(n);
        for (i, token) in tokens.iter().enumerate() {
            if token.len() < MIN_TOKEN_BYTES {
                return Err(format!(
                    "token {} of {n} is shorter than {MIN_TOKEN_BYTES} bytes",
                    i + 1
                ));
            }
            digests.push(Sha256::digest(token.as_bytes()).into());
        }
        Ok(Self { digests })
    }

    /// Whether `presented` is one of the tokens. Constant time: the digest of `presented` is compared with every
    /// configured digest, without stopping at a match.
    pub fn accepts(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut matched = subtle::Choice::from(0);
        for known in &self.digests {
            matched |= known.ct_eq(&digest);
        }
        matched.into()
    }
}

/// What an admin route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /v1/admin/sessions`.
    ListSessions,
    /// `GET /v1/admin/sessions/{id}`.
    ShowSession,
    /// `DELETE /v1/admin/sessions/{id}`.
    RevokeSession,
    /// `GET /v1/admin/nodes`.
    ListNodes,
}

/// One admin route: method, path (axum's syntax, which is also OpenAPI's) and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path template.
    pub path: &'static str,
    /// The handler.
    pub operation: Operation,
}

/// Every admin route. The router is built from this list, and a test checks docs/admin-openapi.json against it.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/v1/admin/sessions",
        operation: Operation::ListSessions,
    },
    Route {
        method: "GET",
        path: "/v1/admin/sessions/{id}",
        operation: Operation::ShowSession,
    },
    Route {
        method: "DELETE",
        path: "/v1/admin/sessions/{id}",
        operation: Operation::RevokeSession,
    },
    Route {
        method: "GET",
        path: "/v1/admin/nodes",
        operation: Operation::ListNodes,
    },
];

/// The admin routes ([`ROUTES`]), each behind the token check; merged into the internal router.
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let routes = ROUTES.iter().fold(Router::new(), |router, route| {
        router.route(route.path, method_router(route))
    });
    routes.route_layer(axum::middleware::from_fn_with_state(state, authorize))
}

fn method_router(route: &Route) -> MethodRouter<Arc<AppState>> {
    let method = Method::from_bytes(route.method.as_bytes()).expect("a valid method");
    let filter = MethodFilter::try_from(method).expect("a method axum routes");
    match route.operation {
        Operation::ListSessions => on(filter, list_sessions),
        Operation::ShowSession => on(filter, show_session),
        Operation::RevokeSession => on(filter, revoke_session),
        Operation::ListNodes => on(filter, list_nodes),
    }
}

/// 403 without `CES_ADMIN_TOKENS`, 401 without one of them, else the route.
async fn authorize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    let Some(tokens) = &state.config.admin_tokens else {
        return Err(Error::AdminDisabled);
    };
    if !tokens.accepts(crate::api::bearer(&headers)) {
        return Err(Error::AdminUnauthorized);
    }
    Ok(next.run(request).await)
}

/// `GET /v1/admin/sessions/{id}`: the session's record, position, buffer and labels; 404 for an unknown or
/// invalid id.
async fn show_session(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<sessions::SessionDetail>, Error> {
    let session = SessionId::parse(&id).map_err(|_| Error::NotFound("no such session"))?;
    sessions::show(&state.redis, &session)
        .await?
        .map(Json)
        .ok_or(Error::NotFound("no such session"))
}

/// Answer of `DELETE /v1/admin/sessions/{id}`, as `cesctl session revoke --json` prints it.
#[derive(Debug, Serialize)]
pub struct Revoked {
    /// The session.
    pub session_id: String,
    /// The connection that held it (`<node>/<conn id>`), told to close with 4003; `null` when none did.
    pub holder: Option<String>,
    /// How long the session is refused (the token lifetime, `CES_TOKEN_TTL_SECS`).
    pub refused_for_secs: u64,
}

/// `DELETE /v1/admin/sessions/{id}`: the operator's revocation (`ces_runtime::session::revoke`, as `cesctl session
/// revoke`); idempotent. 404 for an invalid id.
async fn revoke_session(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, Error> {
    let session = SessionId::parse(&id).map_err(|_| Error::NotFound("no such session"))?;
    let ttl = state.config.token_ttl;
    let holder = ces_runtime::session::revoke(&state.redis, &session, ttl).await?;
    tracing::info!(session = %session, holder = ?holder, "session revoked by an operator");
    Ok(Json(Revoked {
        session_id: session.to_string(),
        holder,
        refused_for_secs: ttl.as_secs(),
    }))
}

/// `GET /v1/admin/sessions?label=k=v&node=N&cursor=C&limit=L`: one page of sessions.
async fn list_sessions(
    State(state): State<Arc<AppState>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<sessions::Page>, Error> {
    let query = ListQuery::parse(&pairs).map_err(|message| Error::BadRequest {
        code: "invalid_query",
        message,
    })?;
    Ok(Json(sessions::list(&state.redis, &query).await?))
}

/// One node in `GET /v1/admin/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// Node id.
    pub node: String,
    /// Its last beat is younger than three of this node's heartbeat intervals.
    pub alive: bool,
    /// Its last beat (RFC 3339, UTC).
    pub last_beat: Option<String>,
    /// Sockets it held at its last beat (`null` once its info expired).
    pub connections: Option<u64>,
    /// Whether it was shutting down at its last beat.
    pub draining: Option<bool>,
    /// When it started (RFC 3339, UTC).
    pub started: Option<String>,
    /// Its version.
    pub version: Option<String>,
}

impl NodeView {
    /// The view of `record` at `now_ms`, for nodes beating every `interval`.
    pub fn of(
        record: crate::nodes::NodeRecord,
        now_ms: i64,
        interval: std::time::Duration,
    ) -> Self {
        let info = &record.info;
        Self {
            alive: crate::nodes::alive(record.last_beat_ms, now_ms, interval),
            last_beat: time_text(record.last_beat_ms),
            connections: info.get("connections").and_then(|n| n.parse().ok()),
            draining: info.get("draining").map(|d| d == "1"),
            started: info
                .get("started_ms")
                .and_then(|ms| ms.parse().ok())
                .and_then(time_text),
            version: info.get("version").cloned(),
            node: record.node,
        }
    }
}

/// `GET /v1/admin/nodes`: every edge that beat within the last day.
async fn list_nodes(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, Error> {
    let now = ces_runtime::now_ms();
    let interval = state.config.node_heartbeat;
    let nodes: Vec<NodeView> = crate::nodes::list(&state.redis)
        .await?
        .into_iter()
        .map(|record| NodeView::of(record, now, interval))
        .collect();
    Ok(Json(serde_json::json!({ "nodes": nodes })))
}

/// `ms` since the Unix epoch as RFC 3339 in UTC with milliseconds (`2026-11-23T19:44:34.123Z`); `None` out of
/// range.
pub fn time_text(ms: i64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format).ok()
}

/// The query of `GET /v1/admin/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    /// Every `label=k=v`: a session must carry all of them.
    pub labels: Vec<(String, String)>,
    /// `node=N`: only sessions whose record names this node.
    pub node: Option<String>,
    /// Where the previous page ended; `None` for the first page.
    pub cursor: Option<Cursor>,
    /// The page's size: the `SCAN` `COUNT`.
    pub limit: u32,
}

impl ListQuery {
    /// Parses the query's pairs; the error names the parameter.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut query = ListQuery {
            limit: DEFAULT_LIMIT,
            ..Default::default()
        };
        for (name, value) in pairs {
            match name.as_str() {
                "label" => {
                    let Some((k, v)) = value.split_once('=') else {
                        return Err(format!("label={value:?} must be key=value"));
                    };
                    query.labels.push((k.to_owned(), v.to_owned()));
                }
                "node" if query.node.is_none() => query.node = Some(value.clone()),
                "cursor" if query.cursor.is_none() => query.cursor = Some(Cursor::parse(value)?),
                "limit" => {
                    query.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit={value:?} must be 1-{MAX_LIMIT}"))?;
                }
                "node" | "cursor" => return Err(format!("{name} is given twice")),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(query)
    }
}

/// Where a listing stands: the primary being scanned (`host:port` on a Redis Cluster, [`SINGLE`] on a single
/// Redis) and its `SCAN` cursor. As text `<primary>/<scan cursor>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The primary.
    pub primary: String,
    /// Its `SCAN` cursor.
    pub scan: u64,
}

/// The primary's name in a cursor on a single Redis.
pub const SINGLE: &str = "-";

impl Cursor {
    /// Parses `<primary>/<scan cursor>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("cursor={text:?} is not a cursor this API returned");
        let (primary, scan) = text.rsplit_once('/').ok_or_else(invalid)?;
        if primary.is_empty() {
            return Err(invalid());
        }
        let scan = scan.parse().map_err(|_| invalid())?;
        Ok(Self {
            primary: primary.to_owned(),
            scan,
        })
    }

    /// The cursor after a `SCAN` of `primaries[at]` answered `next_scan`: the same primary while its scan goes on,
    /// else the next primary from its start; `None` when the last one is done.
    pub fn after(primaries: &[String], at: usize, next_scan: u64) -> Option<Self> {
        if next_scan != 0 {
            return Some(Self {
                primary: primaries[at].clone(),
                scan: next_scan,
            });
        }
        primaries.get(at + 1).map(|next| Self {
            primary: next.clone(),
            scan: 0,
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.primary, self.scan)
    }
}

/// Labels as the API shows them.
pub type Labels = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn tokens_are_long_and_matched_exactly() {
        let (a, b) = ("a".repeat(32), "b".repeat(40));
        let tokens = AdminTokens::parse(&format!("{a}, {b}")).unwrap();
        assert!(tokens.accepts(&a));
        assert!(tokens.accepts(&b));
        assert!(!tokens.accepts(""));
        assert!(!tokens.accepts(&"a".repeat(31)));
        assert!(!tokens.accepts(&"a".repeat(33)));
        assert!(!tokens.accepts(&format!("{a},{b}")));
        let one = AdminTokens::parse(&a).unwrap();
        assert!(one.accepts(&a) && !one.accepts(&b));
        assert_eq!(format!("{one:?}"), "AdminTokens { tokens: 1 }");
    }

    #[test]
    fn a_short_or_empty_token_is_refused_without_being_shown() {
        let short = "s".repeat(31);
        let err = AdminTokens::parse(&format!("{},{short}", "a".repeat(32))).unwrap_err();
        assert_eq!(err, "token 2 of 2 is shorter than 32 bytes");
        let err = AdminTokens::parse(&format!("{},", "a".repeat(32))).unwrap_err();
        assert_eq!(err, "token 2 of 2 is shorter than 32 bytes");
        let src: std::collections::HashMap<&'static str, String> =
            [("CES_ADMIN_TOKENS", short.clone())].into();
        let mut v = Vars::new(&src);
        assert!(AdminTokens::read(&mut v).is_none());
        let err = v.finish().unwrap_err().to_string();
        assert!(err.contains("CES_ADMIN_TOKENS: token 1 of 1"), "{err}");
        assert!(!err.contains(&short), "{err}");
        let none: std::collections::HashMap<&'static str, String> = Default::default();
        let mut v = Vars::new(&none);
        assert!(AdminTokens::read(&mut v).is_none());
        assert!(v.finish().is_ok());
        let ok: std::collections::HashMap<&'static str, String> =
            [("CES_ADMIN_TOKENS", "t".repeat(32))].into();
        let mut v = Vars::new(&ok);
        assert!(AdminTokens::read(&mut v).is_some_and(|t| t.accepts(&"t".repeat(32))));
    }

    #[test]
    fn the_query_takes_labels_node_cursor_and_limit() {
        let q = ListQuery::parse(&[]).unwrap();
        assert_eq!(
            q,
            ListQuery {
                labels: vec![],
                node: None,
                cursor: None,
                limit: 100
            }
        );
        let q = ListQuery::parse(&pairs(&[
            ("label", "team=blue"),
            ("label", "expr=a=b"),
            ("node", "edge-b"),
            ("cursor", "10.0.0.1:7000/42"),
            ("limit", "1000"),
        ]))
        .unwrap();
        assert_eq!(q.labels, pairs(&[("team", "blue"), ("expr", "a=b")]));
        assert_eq!(q.node.as_deref(), Some("edge-b"));
        assert_eq!(
            q.cursor,
            Some(Cursor {
                primary: "10.0.0.1:7000".into(),
                scan: 42
            })
        );
        assert_eq!(q.limit, 1000);
        assert_eq!(
            ListQuery::parse(&pairs(&[("limit", "1")])).unwrap().limit,
            1
        );
    }

    #[test]
    fn a_bad_query_names_the_parameter() {
        for (p, needle) in [
            (vec![("label", "team")], "label=\"team\" must be key=value"),
            (vec![("limit", "0")], "limit=\"0\" must be 1-1000"),
            (vec![("limit", "1001")], "limit=\"1001\" must be 1-1000"),
            (vec![("limit", "x")], "limit=\"x\" must be 1-1000"),
            (vec![("cursor", "nope")], "cursor=\"nope\" is not a cursor"),
            (vec![("node", "a"), ("node", "b")], "node is given twice"),
            (
                vec![("cursor", "-/1"), ("cursor", "-/2")],
                "cursor is given twice",
            ),
            (vec![("labels", "a=b")], "unknown parameter \"labels\""),
        ] {
            let err = ListQuery::parse(&pairs(&p)).unwrap_err();
            assert!(err.starts_with(needle), "{p:?}: {err}");
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        for c in [
            "-/0",
            "-/17",
            "10.0.0.1:7000/18446744073709551615",
            "[::1]:7000/3",
        ] {
            assert_eq!(Cursor::parse(c).unwrap().to_string(), c);
        }
        assert_eq!(Cursor::parse("[::1]:7000/3").unwrap().primary, "[::1]:7000");
        for bad in [
            "",
            "/",
            "/3",
            "-",
            "-/",
            "-/x",
            "-/-1",
            "-/18446744073709551616",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cursor_moves_through_every_primary_in_turn() {
        let primaries: Vec<String> = vec!["a:1".into(), "b:2".into()];
        let at = |p: &str, scan| {
            Some(Cursor {
                primary: p.into(),
                scan,
            })
        };
        assert_eq!(Cursor::after(&primaries, 0, 9), at("a:1", 9));
        assert_eq!(Cursor::after(&primaries, 0, 0), at("b:2", 0));
        assert_eq!(Cursor::after(&primaries, 1, 5), at("b:2", 5));
        assert_eq!(Cursor::after(&primaries, 1, 0), None);
        let single = vec![SINGLE.to_owned()];
        assert_eq!(Cursor::after(&single, 0, 3), at("-", 3));
        assert_eq!(Cursor::after(&single, 0, 0), None);
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(time_text(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(
            time_text(1_795_462_674_123).as_deref(),
            Some("2026-11-23T19:37:54.123Z")
        );
        assert_eq!(time_text(i64::MAX), None);
    }

    #[test]
    fn a_node_view_reads_the_info_hash() {
        let every = std::time::Duration::from_secs(5);
        let record = crate::nodes::NodeRecord {
            node: "edge-a".into(),
            last_beat_ms: 1000,
            info: [
                ("connections", "3"),
                ("draining", "1"),
                ("started_ms", "0"),
                ("version", "0.1.0"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        };
        let view = NodeView::of(record.clone(), 2000, every);
        assert_eq!(
            view,
            NodeView {
                node: "edge-a".into(),
                alive: true,
                last_beat: Some("1970-01-01T00:00:01.000Z".into()),
                connections: Some(3),
                draining: Some(true),
                started: Some("1970-01-01T00:00:00.000Z".into()),
                version: Some("0.1.0".into()),
            }
        );
        let expired = crate::nodes::NodeRecord {
            info: Default::default(),
            ..record
        };
        let view = NodeView::of(expired, 16_000, every);
        assert!(!view.alive);
        assert_eq!(
            (view.connections, view.draining, view.started, view.version),
            (None, None, None, None)
        );
        let mut calm = crate::nodes::NodeRecord {
            node: "n".into(),
            last_beat_ms: 0,
            info: Default::default(),
        };
        calm.info.insert("draining".into(), "0".into());
        assert_eq!(NodeView::of(calm, 0, every).draining, Some(false));
    }
}
