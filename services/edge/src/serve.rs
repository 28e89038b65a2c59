//! The edge's accept loop: TCP (or TLS) connections served as HTTP/1.1 with upgrades, under limits that keep a
//! flood of half-open, slow or idle connections from costing more than a bounded slot each.
//!
//! Why not `axum::serve`: it has no header-read timeout, so a connection that never finishes its request holds a
//! task and a file descriptor forever, and it serves plain TCP only. Here:
//!
//! - At most `max_connections` TCP connections wait for (or are in) an HTTP request at once. Beyond that a new
//!   connection is closed at once (`ces_edge_http_connections_shed_total`); an upgraded WebSocket no longer counts
//!   here (it is counted by `CES_MAX_CONNECTIONS`).
//! - The TLS handshake and the request head must each arrive within `header_timeout`; a slow or silent client is
//!   disconnected after it.
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

use crate::metrics as m;

/// How the listener serves connections.
#[derive(Debug, Clone)]
pub struct Serving {
    /// TLS, when a certificate is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Longest a client may take for the TLS handshake, and again for a request head.
    pub header_timeout: Duration,
    /// Most connections not yet upgraded to WebSockets.
    pub max_connections: usize,
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
            metrics::counter!(m::HTTP_CONNECTIONS_SHED).increment(1);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        let timeout = serving.header_timeout;
        connections.spawn(async move {
            let _slot = slot;
            metrics::gauge!(m::HTTP_CONNECTIONS).increment(1.0);
            match tls {
                None => serve_connection(tcp, peer, router, timeout, stop).await,
                Some(tls) => match tokio::time::timeout(timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, router, timeout, stop).await,
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

/// One HTTP/1.1 connection, with WebSocket upgrades, until the client closes it, a request head is late, or
/// shutdown (which lets the request in flight finish).
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Handlers read the peer address as axum's `ConnectInfo`, as `into_make_service_with_connect_info` would set.
    let service = router.map_request(move |mut request: axum::http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let service = hyper_util::service::TowerToHyperService::new(service);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
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
