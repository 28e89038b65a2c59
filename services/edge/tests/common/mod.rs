//! One edge node on port 0 against its own redis-server, for the service tests.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;

use ces_systest::Redis;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &str = "edge-test-secret-edge-test-secret-0123";

pub struct Edge {
    /// The public listener: `http://127.0.0.1:port`, or `https://` when the node serves TLS.
    pub base: String,
    /// The internal listener (probes and metrics): `http://127.0.0.1:port`, plain HTTP even with TLS.
    pub internal: String,
    pub redis: Redis,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ces_edge::Error>>>,
}

impl Edge {
    /// Starts the node's shutdown (as SIGTERM does) and returns its task, which ends when the node has stopped
    /// (its Redis keeps running until the `Edge` is dropped). Only once.
    pub fn shut_down(&mut self) -> JoinHandle<Result<(), ces_edge::Error>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("the node is shut down once")
    }
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
    let listeners = ces_edge::Listeners {
        public: TcpListener::bind("127.0.0.1:0").await?,
        internal: TcpListener::bind("127.0.0.1:0").await?,
    };
    let base = format!("{scheme}://{}", listeners.public.local_addr()?);
    let internal = format!("http://{}", listeners.internal.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ces_edge::run(config, listeners, async move {
        let _ = stopped.await;
    }));
    ces_systest::wait_ready(&internal).await?;
    Ok(Edge {
        base,
        internal,
        redis,
        stop: Some(stop),
        task: Some(task),
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
