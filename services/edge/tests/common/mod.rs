//! One edge node on port 0 against its own redis-server, for the service tests.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;

use ces_systest::Redis;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const SECRET: &str = "edge-test-secret-edge-test-secret-0123";

pub struct Edge {
    /// `http://127.0.0.1:port`, or `https://` when the node serves TLS.
    pub base: String,
    pub redis: Redis,
    _stop: oneshot::Sender<()>,
}

/// Starts a node with `extra` configuration over the defaults (one token secret, no drain delay).
pub async fn start(extra: &[(&'static str, &str)]) -> anyhow::Result<Edge> {
    start_with(extra, None).await
}

/// [`start`], serving HTTPS and WSS with `cert`'s certificate when given.
pub async fn start_with(
    extra: &[(&'static str, &str)],
    cert: Option<&ces_systest::tls::TestCert>,
) -> anyhow::Result<Edge> {
    ces_systest::init_logs();
    let redis = Redis::start().await?;
    let mut env: HashMap<&'static str, String> = [
        ("CES_TOKEN_SECRET", SECRET.to_owned()),
        ("CES_REDIS_URL", redis.url()),
        ("CES_NODE_ID", "edge-t".into()),
        ("CES_DRAIN_DELAY_MS", "0".into()),
        ("CES_DRAIN_WINDOW_MS", "0".into()),
        ("CES_REGISTER_OPEN", "true".into()),
    ]
    .into_iter()
    .collect();
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    // A test that configures registration credentials tests closed registration.
    if extra
        .iter()
        .any(|(k, _)| k.starts_with("CES_REGISTER_") && *k != "CES_REGISTER_OPEN")
    {
        env.remove("CES_REGISTER_OPEN");
    }
    if let Some(cert) = cert {
        env.insert("CES_TLS_CERT_FILE", cert.cert_file().display().to_string());
        env.insert("CES_TLS_KEY_FILE", cert.key_file().display().to_string());
    }
    if env.contains_key("CES_TOKEN_KEYS") {
        env.remove("CES_TOKEN_SECRET");
    }
    let scheme = if cert.is_some() { "https" } else { "http" };
    let config = ces_edge::Config::from_source(&env)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("{scheme}://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ces_edge::run(config, listener, async move {
        let _ = stopped.await;
    }));
    match cert {
        Some(cert) => cert.wait_ready(&base).await?,
        None => ces_systest::wait_ready(&base).await?,
    }
    Ok(Edge {
        base,
        redis,
        _stop: stop,
    })
}

/// `POST /v1/sessions/{session}/refresh` at `base` with `token`.
pub async fn refresh(base: &str, session: &str, token: &str) -> anyhow::Result<reqwest::Response> {
    Ok(reqwest::Client::new()
        .post(format!("{base}/v1/sessions/{session}/refresh"))
        .bearer_auth(token)
        .send()
        .await?)
}
