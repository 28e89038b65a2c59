//! The edge's accept loop: TCP (or TLS) connections served as HTTP/1.1 with upgrades, under limits that keep a
//! flood of half-open, slow or idle connections from costing more than a bounded slot each.
//!
//! Why not `axum::serve`: it has no header-read timeout, so a connection that never finishes its request holds a
//! task and a file descriptor forever, and it serves plain TCP only. Here:
//!
//! - At most `max_connections` TCP connections wait for (or are in) an HTTP request at once, and at most
//!   `max_connections_per_ip` of them from one client address (an IPv6 client's /64; a trusted proxy is not
//!   limited, it carries many clients). Beyond that a new connection is closed at once
//!   (`ces_edge_http_connections_shed_total`, by `reason`); an upgraded WebSocket no longer counts here (it is
//!   counted by `CES_MAX_CONNECTIONS`).
//! - The TLS handshake and each request head must arrive within `header_timeout`, which also bounds an idle
//!   keep-alive connection (hyper starts the head timer as soon as it waits for the next request). A head is at
//!   most `max_header_bytes` and `max_headers` fields.
//! - Each request (its body included) must be answered within `request_timeout`, else 408 and the connection
//!   closes; a write to the socket that makes no progress for `write_timeout` ends the connection (a client that
//!   never reads its response).
//! - With `proxy_protocol`, a connection from a trusted proxy starts with a PROXY protocol header (v1 or v2) naming
//!   the client, read within `header_timeout`; that client is the connection's peer from then on (its per-address
//!   share, the handlers' `ConnectInfo`). A connection from a trusted proxy without a valid header is closed.
//! - The accept loop never waits on a client: handshakes run on the connection's own task.
//! - On shutdown the listener closes and each connection finishes its in-flight request and closes; the caller
//!   waits for them with the returned tracker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::client_addr::{TrustedProxies, limit_key};
use crate::limits::ConnectionShares;
use crate::metrics as m;
use crate::proxy_protocol;

/// How the listener serves connections.
#[derive(Debug, Clone)]
pub struct Serving {
    /// TLS, when a certificate is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Longest a client may take for the TLS handshake, and again for a request head.
    pub header_timeout: Duration,
    /// Most connections not yet upgraded to WebSockets.
    pub max_connections: usize,
    /// Most of those from one client address.
    pub max_connections_per_ip: usize,
    /// Longest a request may take, from its head to its answer.
    pub request_timeout: Duration,
    /// Longest a write to the socket may wait without progress.
    pub write_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in a request head.
    pub max_headers: usize,
    /// Proxies whose connections carry many clients: not limited per address.
    pub trusted: TrustedProxies,
    /// Prefix length an IPv6 client is counted by.
    pub ipv6_prefix: u8,
    /// Connections from trusted proxies start with a PROXY protocol header (`CES_PROXY_PROTOCOL`).
    pub proxy_protocol: bool,
}

/// Serves `router` on `listener` until `stop` fires. Returns the (closed) tracker of the connections still
/// finishing their last request.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    serving: Serving,
    stop: CancellationToken,
) -> TaskTracker {
    let tls = serving.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(serving.max_connections));
    let shares = ConnectionShares::new(serving.max_connections_per_ip);
    // Shared by every connection's task: one allocation for the node, none per connection.
    let serving = Arc::new(serving);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: wait a little instead of
                    // spinning, then go on.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(m::HTTP_CONNECTIONS_SHED, "reason" => m::shed::NODE).increment(1);
            drop(tcp);
            continue;
        };
        let from_proxy = serving.trusted.contains(peer.ip());
        let share = if from_proxy {
            None
        } else {
            let Some(share) = take_share(&shares, peer, &serving) else {
                drop(tcp);
                continue;
            };
            Some(share)
        };
        let _ = tcp.set_nodelay(true);
        let mut tcp = tokio_io_timeout::TimeoutStream::new(tcp);
        tcp.set_write_timeout(Some(serving.write_timeout));
        let mut tcp = Box::pin(tcp);
        let router = router.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        let serving = serving.clone();
        let shares = shares.clone();
        connections.spawn(async move {
            let _slot = slot;
            let timeout = serving.header_timeout;
            // The client behind a proxy that forwards TCP: its address comes first, before TLS or HTTP.
            let (peer, _share) = if serving.proxy_protocol && from_proxy {
                match tokio::time::timeout(timeout, proxy_protocol::read_header(&mut tcp)).await {
                    Ok(Ok(Some(client))) if !serving.trusted.contains(client.ip()) => {
                        match take_share(&shares, client, &serving) {
                            Some(share) => (client, Some(share)),
                            None => return,
                        }
                    }
                    Ok(Ok(client)) => (client.unwrap_or(peer), None),
                    Ok(Err(e)) => {
                        metrics::counter!(m::PROXY_HEADERS_REFUSED).increment(1);
                        debug!(%peer, error = %e, "PROXY protocol header refused");
                        return;
                    }
                    Err(_) => {
                        metrics::counter!(m::PROXY_HEADERS_REFUSED).increment(1);
                        debug!(%peer, "PROXY protocol header not received in time");
                        return;
                    }
                }
            } else {
                (peer, share)
            };
            metrics::gauge!(m::HTTP_CONNECTIONS).increment(1.0);
            match tls {
                None => serve_connection(tcp, peer, router, &serving, stop).await,
                Some(tls) => match tokio::time::timeout(timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, router, &serving, stop).await,
                    Ok(Err(e)) => {
                        metrics::counter!(m::TLS_HANDSHAKE_FAILURES).increment(1);
                        debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!(m::TLS_HANDSHAKE_FAILURES).increment(1);
                        debug!(%peer, "TLS handshake timed out");
                    }
                },
            }
            metrics::gauge!(m::HTTP_CONNECTIONS).decrement(1.0);
        });
    }
    drop(listener);
    connections.close();
    connections
}

/// The client address's share of the connection slots, or `None` (counted as shed) when it holds all of them.
fn take_share(
    shares: &Arc<ConnectionShares>,
    client: SocketAddr,
    serving: &Serving,
) -> Option<crate::limits::Share> {
    let share = shares.take(limit_key(client.ip(), serving.ipv6_prefix));
    if share.is_none() {
        metrics::counter!(m::HTTP_CONNECTIONS_SHED, "reason" => m::shed::ADDRESS).increment(1);
    }
    share
}

/// One HTTP/1.1 connection, with WebSocket upgrades, until the client closes it, a request head is late, or
/// shutdown (which lets the request in flight finish).
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    router: Router,
    serving: &Serving,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request_timeout = serving.request_timeout;
    let service = tower::service_fn(move |mut request: axum::http::Request<Incoming>| {
        // Handlers read the peer address as axum's `ConnectInfo`, as `into_make_service_with_connect_info` would.
        request.extensions_mut().insert(ConnectInfo(peer));
        // The body is read inside the handler, so the deadline covers a body trickled in byte by byte. An upgrade's
        // socket is served after its 101 answer, outside the deadline.
        let answer = tokio::time::timeout(request_timeout, router.clone().oneshot(request));
        async move {
            Ok::<_, std::convert::Infallible>(match answer.await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    metrics::counter!(m::HTTP_REQUESTS_TIMED_OUT).increment(1);
                    debug!(%peer, "request not answered within the deadline");
                    request_timed_out()
                }
            })
        }
    });
    let service = hyper_util::service::TowerToHyperService::new(service);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(serving.header_timeout)
        .max_buf_size(serving.max_header_bytes)
        .max_headers(serving.max_headers)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// 408 with `Connection: close`: the rest of a late request is never read.
fn request_timed_out() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        axum::http::StatusCode::REQUEST_TIMEOUT,
        [(axum::http::header::CONNECTION, "close")],
        axum::Json(serde_json::json!({
            "error": "request_timeout",
            "message": "the request was not complete within the deadline",
        })),
    )
        .into_response()
}

/// The TLS server configuration for the PEM certificate chain and key at `cert` and `key`: TLS 1.2 and 1.3, ALPN
/// `http/1.1` (WebSockets upgrade over HTTP/1.1).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = ces_runtime::tls::read_certs(cert)?;
    let key = ces_runtime::tls::read_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(ces_runtime::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
