//! A whole CES stack in one test process: real redis-server and broker processes, ingest and edges in-process
//! on port 0.

#![allow(dead_code, unreachable_pub)]

pub mod exact;

use std::collections::HashMap;

use anyhow::Context as _;
use ces_systest::{Broker, Redis, kafka, unique};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Token secret shared by the test edges.
pub const SECRET: &str = "test-secret-test-secret-test-secret!";

/// A service running in this process.
pub struct Service {
    /// `http://127.0.0.1:<port>`: ingest's HTTP listener, the edge's public one.
    pub base: String,
    /// `http://127.0.0.1:<port>` where its probes and metrics are: ingest's HTTP listener (the same as `base`),
    /// the edge's internal one.
    pub internal: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Drops the service's main task without a graceful shutdown: nothing is committed or closed politely.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Asks the service to shut down and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }
}

fn vars(pairs: &[(&'static str, String)]) -> HashMap<&'static str, String> {
    pairs.iter().cloned().collect()
}

/// A listener on a free loopback port, and its `http://` URL.
async fn bind_free() -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((listener, url))
}

/// Runs `service(shutdown)` in a task and waits until `<internal>/readyz` answers 200.
async fn spawn_service<F, Fut, E>(
    base: String,
    internal: String,
    service: F,
) -> anyhow::Result<Service>
where
    F: FnOnce(oneshot::Receiver<()>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: Into<anyhow::Error>,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let run = service(stopped);
    let task = tokio::spawn(async move { run.await.map_err(Into::into) });
    ces_systest::wait_ready(&internal).await?;
    Ok(Service {
        base,
        internal,
        stop: Some(stop),
        task,
    })
}

/// The environment of a test edge node.
fn edge_env(redis_url: &str, node: &str) -> HashMap<&'static str, String> {
    vars(&[
        ("CES_TOKEN_SECRET", SECRET.to_owned()),
        ("CES_REDIS_URL", redis_url.to_owned()),
        ("CES_NODE_ID", node.to_owned()),
        // Tests that stop an edge want it gone at once unless they test draining.
        ("CES_DRAIN_DELAY_MS", "0".to_owned()),
        ("CES_DRAIN_WINDOW_MS", "0".to_owned()),
        // Every test client comes from 127.0.0.1; the per-IP limits are tested in the edge's service tests.
        ("CES_LIMIT_REGISTRATIONS_PER_MIN", "1000000".to_owned()),
        ("CES_LIMIT_CONNECTS_PER_MIN", "1000000".to_owned()),
        ("CES_HTTP_MAX_CONNECTIONS_PER_IP", "1000000".to_owned()),
        ("CES_REGISTER_OPEN", "true".to_owned()),
    ])
}

/// Starts an edge node against `redis_url`.
pub async fn start_edge(
    redis_url: &str,
    node: &str,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Service> {
    let mut env = edge_env(redis_url, node);
    env.extend(extra.iter().cloned());
    // A test that configures registration credentials tests closed registration.
    if extra
        .iter()
        .any(|(k, _)| k.starts_with("CES_REGISTER_") && *k != "CES_REGISTER_OPEN")
    {
        env.remove("CES_REGISTER_OPEN");
    }
    start_edge_with(&env).await
}

/// Starts an edge node against `redis_url` with no `CES_NODE_ID`, so it picks its own id as a deployment's
/// replicas do.
pub async fn start_edge_unnamed(redis_url: &str) -> anyhow::Result<Service> {
    let mut env = edge_env(redis_url, "unused");
    env.remove("CES_NODE_ID");
    start_edge_with(&env).await
}

async fn start_edge_with(env: &HashMap<&'static str, String>) -> anyhow::Result<Service> {
    let config = ces_edge::Config::from_source(env)?;
    let ((public, base), (internal, internal_base)) = (bind_free().await?, bind_free().await?);
    spawn_service(base, internal_base, |stopped| {
        let listeners = ces_edge::Listeners { public, internal };
        ces_edge::run(config, listeners, async move {
            let _ = stopped.await;
        })
    })
    .await
}

/// Starts ingest consuming `topics`.
pub async fn start_ingest(
    redis_url: &str,
    brokers: &str,
    topics: &str,
    dlq: &str,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Service> {
    let mut env = vars(&[
        ("CES_REDIS_URL", redis_url.to_owned()),
        ("CES_KAFKA_BROKERS", brokers.to_owned()),
        ("CES_KAFKA_TOPICS", topics.to_owned()),
        ("CES_DLQ_TOPIC", dlq.to_owned()),
        ("CES_KAFKA_GROUP", unique("ingest")),
    ]);
    env.extend(extra.iter().cloned());
    let config = ces_ingest::Config::from_source(&env)?;
    // Ingest serves its probes and metrics on its one HTTP listener.
    let (listener, base) = bind_free().await?;
    spawn_service(base.clone(), base, |stopped| {
        ces_ingest::run(config, listener, async move {
            let _ = stopped.await;
        })
    })
    .await
}

/// Redis, a broker with an input and a DLQ topic, ingest and two edges.
pub struct Stack {
    pub redis: Redis,
    pub broker: Broker,
    pub topic: String,
    pub dlq: String,
    pub ingest: Option<Service>,
    pub edges: Vec<Service>,
    pub http: reqwest::Client,
}

impl Stack {
    /// Starts everything; `partitions` for the input topic; `ingest_env` adds ingest variables.
    pub async fn start(
        partitions: i32,
        ingest_env: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        ces_systest::init_logs();
        let (redis, broker) = tokio::try_join!(Redis::start(), Broker::shared())?;
        let topic = unique("ces.events");
        let dlq = format!("{topic}.dlq");
        kafka::create_topics(&broker.bootstrap(), &[(&topic, partitions), (&dlq, 1)])
            .await
            .context("topics")?;
        let edge_a = start_edge(&redis.url(), "edge-a", &[]).await?;
        let edge_b = start_edge(&redis.url(), "edge-b", &[]).await?;
        let ingest =
            start_ingest(&redis.url(), &broker.bootstrap(), &topic, &dlq, ingest_env).await?;
        Ok(Self {
            redis,
            broker,
            topic,
            dlq,
            ingest: Some(ingest),
            edges: vec![edge_a, edge_b],
            http: reqwest::Client::new(),
        })
    }

    /// Starts another ingest replica on this stack's topics.
    pub async fn start_ingest(&self, env: &[(&'static str, String)]) -> anyhow::Result<Service> {
        start_ingest(
            &self.redis.url(),
            &self.broker.bootstrap(),
            &self.topic,
            &self.dlq,
            env,
        )
        .await
    }

    /// Stops the services (the server processes stop when the stack is dropped).
    pub async fn stop(self) -> anyhow::Result<()> {
        if let Some(ingest) = self.ingest {
            ingest.stop().await?;
        }
        for e in self.edges {
            e.stop().await?;
        }
        Ok(())
    }
}

/// Runs `ces_publish` for event `id` of `session` (data `{"n": n}`) as ingest does, through `redis`, publishing on
/// `channel` (the session's, or one nobody reads to lose the Pub/Sub message); returns its `seq`.
pub async fn publish_direct(
    redis: &fred::clients::Client,
    session: &str,
    id: &str,
    n: u64,
    channel: String,
) -> anyhow::Result<u64> {
    publish_data(redis, session, id, &format!(r#"{{"n":{n}}}"#), channel).await
}

/// [`publish_direct`] with any `data` (JSON text, of any size: this is how a foreign or older publisher could
/// buffer what ingest would refuse).
pub async fn publish_data(
    redis: &fred::clients::Client,
    session: &str,
    id: &str,
    data: &str,
    channel: String,
) -> anyhow::Result<u64> {
    let keys = ces_protocol::keys::SessionKeys::of(session);
    let env = ces_protocol::envelope::encode(&ces_protocol::envelope::Envelope {
        event_id: id.to_owned(),
        session_id: session.into(),
        event_type: "t".into(),
        data: data.as_bytes().to_vec().into(),
        ..Default::default()
    });
    let args: Vec<fred::types::Value> = vec![
        fred::types::Value::Bytes(env.into()),
        id.into(),
        ces_runtime::now_ms().into(),
        1000.into(),
        300_000.into(),
        3_600_000.into(),
        86_400_000.into(),
        ces_runtime::redis::new_epoch().into(),
        "".into(),
        "0".into(),
    ];
    Ok(fred::interfaces::FunctionInterface::fcall(
        redis,
        ces_runtime::redis::PUBLISH_FUNCTION,
        vec![keys.meta, keys.buffer, keys.ids, channel],
        args,
    )
    .await?)
}

/// The JSON value of an input event.
pub fn event_json(session: &str, event_type: &str, data: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({ "session_id": session, "type": event_type, "data": data }),
    )
    .unwrap()
}

/// Round `n` of a numbered stream: one event per session, keyed by the session, with data `{"n": n}`.
pub fn round(sessions: &[String], n: u64) -> Vec<kafka::Record> {
    sessions
        .iter()
        .map(|s| kafka::Record::keyed(s, event_json(s, "t", serde_json::json!({ "n": n }))))
        .collect()
}

/// Produces rounds 1..=`rounds` ([`round`]) to `topic`, one every `every`, in a task of its own: the test does
/// something to the stack meanwhile, then awaits the task. Clients check the stream with [`assert_numbered`].
pub fn paced_stream(
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    sessions: Vec<String>,
    rounds: u64,
    every: std::time::Duration,
) -> JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        for n in 1..=rounds {
            kafka::produce(&producer, &topic, &round(&sessions, n)).await?;
            tokio::time::sleep(every).await;
        }
        Ok(())
    })
}

/// An edge node on a runtime of its own, so it can be killed like a process: every task (listener, sockets,
/// Redis clients) is dropped at once and clients see their connections end without a close frame.
pub struct IsolatedEdge {
    /// `http://127.0.0.1:<port>`: the public listener.
    pub base: String,
    /// `http://127.0.0.1:<port>`: the internal listener (probes and metrics).
    pub internal: String,
    /// Its node id (what `welcome` frames name).
    pub node: String,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl IsolatedEdge {
    /// Starts an edge node against `redis_url` on its own two-thread runtime.
    pub async fn start(redis_url: &str, node: &str) -> anyhow::Result<Self> {
        Self::start_with(redis_url, node, &[]).await
    }

    /// [`IsolatedEdge::start`] with `extra` settings.
    pub async fn start_with(
        redis_url: &str,
        node: &str,
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        let mut env = edge_env(redis_url, node);
        env.extend(extra.iter().cloned());
        let config = ces_edge::Config::from_source(&env)?;
        let bind = || -> anyhow::Result<(std::net::TcpListener, String)> {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.set_nonblocking(true)?;
            let url = format!("http://{}", listener.local_addr()?);
            Ok((listener, url))
        };
        let ((public, base), (internal, internal_base)) = (bind()?, bind()?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(async move {
            let listeners = ces_edge::Listeners {
                public: TcpListener::from_std(public)?,
                internal: TcpListener::from_std(internal)?,
            };
            ces_edge::run(config, listeners, async move {
                let _ = stopped.await;
            })
            .await?;
            Ok(())
        });
        ces_systest::wait_ready(&internal_base).await?;
        Ok(Self {
            base,
            internal: internal_base,
            node: node.to_owned(),
            runtime: Some(runtime),
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Shuts the node down as SIGTERM does: it drains (its sockets close with 1012) and exits.
    pub async fn drain(&mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        self.kill();
        Ok(())
    }

    /// Kills the node: no close frames, no graceful anything.
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for IsolatedEdge {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Asserts that `events` are exactly `seq` 1..=n, in order, carrying `data.n` 1..=n: every event once, in
/// production order, nothing else.
pub fn assert_numbered(session: &str, events: &[serde_json::Value], n: u64) {
    let expected: Vec<u64> = (1..=n).collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let ns: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, expected, "seqs of session {session}");
    assert_eq!(ns, expected, "data of session {session}");
}

/// Starts the `ces-ingest` binary as a child process (for tests that need its RSS, a signal, or a real exit)
/// on `topic` and `dlq`, with a group of its own, plus `extra` variables; waits until it is ready.
pub async fn ingest_process(
    redis_url: &str,
    brokers: &str,
    topic: &str,
    dlq: &str,
    extra: &[(&'static str, String)],
) -> anyhow::Result<ces_systest::Process> {
    let mut env = vec![
        ("CES_REDIS_URL", redis_url.to_owned()),
        ("CES_KAFKA_BROKERS", brokers.to_owned()),
        ("CES_KAFKA_TOPICS", topic.to_owned()),
        ("CES_DLQ_TOPIC", dlq.to_owned()),
        ("CES_KAFKA_GROUP", unique("ingest")),
    ];
    env.extend(extra.iter().cloned());
    ces_systest::Process::start(
        &ces_systest::workspace_binary("ces-ingest", "CES_INGEST_BIN")?,
        "CES_INGEST_HTTP_ADDR",
        &env,
    )
    .await
}

/// Registers `n` sessions at `edge` and connects each one's socket, waiting for its welcome: the session is set up
/// (its state read from Redis) before this returns, so a test may take Redis away next.
pub async fn connect_sessions(
    http: &reqwest::Client,
    edge: &str,
    n: usize,
) -> anyhow::Result<Vec<(String, ces_systest::client::WsClient)>> {
    use ces_systest::client::{WsClient, register, ws_url};
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let reg = register(http, edge).await?;
        let mut ws = WsClient::connect(&ws_url(edge, &reg.token)).await?;
        let welcome = ws.next_json(std::time::Duration::from_secs(5)).await?;
        anyhow::ensure!(
            welcome.as_ref().is_some_and(|w| w["type"] == "welcome"),
            "expected a welcome, got {welcome:?}"
        );
        clients.push((reg.session_id, ws));
    }
    Ok(clients)
}

/// The edges a load balancer would send clients to; a test changes it as edges stop and start.
pub type LiveEdges = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// What one following client saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// `seq` of every event frame, in arrival order.
    pub seqs: Vec<u64>,
    /// `data.n` of every event frame, in arrival order.
    pub ns: Vec<u64>,
    /// Every `resumed` frame.
    pub resumed: Vec<serde_json::Value>,
    /// Close codes that ended its connections (`None`: dropped without a close frame).
    pub closes: Vec<Option<u16>>,
    /// When each of those connections ended.
    pub closed_at: Vec<tokio::time::Instant>,
}

/// Follows a session like a real client until it has `events` events: on every socket end it reconnects to a
/// live edge (rotating from `start`), resuming from its position; a refused handshake (draining, gone) moves on to
/// the next edge after 50 ms.
pub async fn follow(
    live: LiveEdges,
    start: usize,
    token: String,
    events: u64,
) -> anyhow::Result<Seen> {
    use ces_systest::client::WsClient;
    let mut seen = Seen::default();
    // The client's own position rules; every frame is recorded as it came, repeats included.
    let mut position = ces_client::stream::Tracker::new(None);
    let mut epoch = String::new();
    let mut attempt = start;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        let base = {
            let live = live.lock().unwrap();
            live[attempt % live.len()].clone()
        };
        let url = ces_client::connection::url_for(&base, &token, position.resume_from());
        let Ok(mut ws) = WsClient::connect(&url).await else {
            attempt += 1;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        loop {
            match ws.next_json(std::time::Duration::from_secs(20)).await {
                Ok(Some(frame)) => match frame["type"].as_str() {
                    Some("welcome") => {
                        epoch = frame["epoch"].as_str().unwrap_or_default().to_owned()
                    }
                    Some("resumed") => {
                        on_resumed(&mut position, &mut epoch, &frame);
                        seen.resumed.push(frame);
                    }
                    Some("event") => {
                        let seq = frame["seq"].as_u64().unwrap();
                        let _ = position.on_event(&epoch, seq);
                        seen.seqs.push(seq);
                        seen.ns.push(frame["data"]["n"].as_u64().unwrap());
                        if seen.seqs.len() as u64 >= events {
                            return Ok(seen);
                        }
                    }
                    _ => {}
                },
                Ok(None) => anyhow::bail!("stalled after {:?}", seen.seqs),
                Err(e) => {
                    let text = e.to_string();
                    // "socket closed: Some(CloseFrame { code: Restart, .. })" carries the code; a drop does not.
                    seen.closes.push(close_code(&text));
                    seen.closed_at.push(tokio::time::Instant::now());
                    attempt += 1;
                    break;
                }
            }
        }
    }
    anyhow::bail!("gave up after {:?}", seen.seqs)
}

/// A `resumed` frame, for a follower's position (and its connection's epoch, which an `epoch_changed` replaces).
pub fn on_resumed(
    position: &mut ces_client::stream::Tracker,
    epoch: &mut String,
    frame: &serde_json::Value,
) {
    let lost: Option<ces_protocol::frame::Lost> =
        serde_json::from_value(frame["lost"].clone()).ok();
    if let Some(e) = frame["epoch"].as_str() {
        *epoch = e.to_owned();
    }
    position.on_resumed(
        frame["ok"] == true,
        lost.as_ref(),
        frame["reason"].as_str(),
        frame["epoch"].as_str(),
    );
}

fn close_code(error: &str) -> Option<u16> {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    [
        (CloseCode::Restart, "Restart"),
        (CloseCode::Away, "Away"),
        (CloseCode::Error, "Error"),
    ]
    .into_iter()
    .find(|(_, name)| error.contains(&format!("code: {name}")))
    .map(|(code, _)| code.into())
}

/// Connects a WebSocket and returns it with its welcome frame.
pub async fn connect(
    url: &str,
) -> anyhow::Result<(ces_systest::client::WsClient, serde_json::Value)> {
    let mut ws = ces_systest::client::WsClient::connect(url).await?;
    let welcome = ws
        .next_json(std::time::Duration::from_secs(5))
        .await?
        .expect("welcome");
    assert_eq!(welcome["type"], "welcome");
    Ok((ws, welcome))
}

/// Runs the `cesctl` binary with `args`, only `env` of the `CES_*` variables, and `stdin` on its standard input.
pub async fn cesctl(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> anyhow::Result<std::process::Output> {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd =
        tokio::process::Command::new(ces_systest::workspace_binary("cesctl", "CES_CTL_BIN")?);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CES_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn()?;
    let mut input = child.stdin.take().expect("piped");
    input.write_all(stdin.as_bytes()).await?;
    drop(input);
    Ok(
        tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
            .await??,
    )
}

/// `b` (a process's output) as text, invalid UTF-8 replaced.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cesctl` with `args` (no `CES_*` variables, nothing on stdin) and reads its standard output as JSON; fails
/// with its standard error when it fails.
pub async fn cesctl_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = cesctl(args, &[], "").await?;
    anyhow::ensure!(
        out.status.success(),
        "cesctl {args:?}: {}",
        text(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}
