//! Client apps under test: the Rust client (`ces-client`) in this process, or the TypeScript client in Node
//! (`clients/js/test/app.mjs`), each reporting what its app saw in one shape, so that one scenario checks both.
//! Their tokens come from [`Tokens`], which stands in for the app's backend.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::response::IntoResponse as _;
use ces_client::{Token, Update, policy::Ending};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `ces-client`, in this process.
    Rust,
    /// `@ces/client` in a Node process (`clients/js`, built by `npm run build`).
    Js,
}

/// One thing an app saw, in the order it saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// An event.
    Event {
        /// Its `seq`.
        seq: u64,
        /// Its event id.
        id: String,
    },
    /// A gap.
    Gap {
        /// First lost `seq`.
        from: u64,
        /// Last lost `seq`, `None` when open-ended.
        to: Option<u64>,
        /// The reason.
        reason: String,
    },
    /// A connection opened (its `welcome`), on this node.
    Open {
        /// The node.
        node: String,
    },
    /// A connection ended: its close code (or HTTP status of a refused upgrade; `None` when it went silent or
    /// could not be made), and whether the client goes on.
    Closed {
        /// Close code or HTTP status.
        code: Option<u16>,
        /// Whether another attempt follows.
        will_reconnect: bool,
    },
}

/// Makes the `n`-th token (from 1) a source hands out.
pub type Minter = Arc<dyn Fn(u64) -> Token + Send + Sync>;

#[derive(Default)]
struct Source {
    minter: Option<Minter>,
    calls: u64,
}

/// The app backend's token endpoint: `GET <base>/token/<name>` answers `{"token": …}` from the minter set for
/// `name`, and counts the calls.
pub struct Tokens {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    sources: Arc<Mutex<HashMap<String, Source>>>,
    task: JoinHandle<()>,
}

impl Tokens {
    /// Starts the endpoint on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let sources: Arc<Mutex<HashMap<String, Source>>> = Arc::default();
        let served = sources.clone();
        let app =
            axum::Router::new().route(
                "/token/{name}",
                axum::routing::get(
                    move |axum::extract::Path(name): axum::extract::Path<String>| {
                        let token = mint(&served, &name);
                        async move {
                            match token {
                                Some(t) => axum::Json(serde_json::json!({ "token": t.value }))
                                    .into_response(),
                                None => (axum::http::StatusCode::NOT_FOUND, "no such app")
                                    .into_response(),
                            }
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            base,
            sources,
            task,
        })
    }

    /// From now on, `name`'s tokens come from `minter`.
    pub fn set(&self, name: &str, minter: Minter) {
        let mut sources = self.sources.lock().expect("tokens");
        sources.entry(name.to_owned()).or_default().minter = Some(minter);
    }

    /// `name` always gets `token`.
    pub fn fixed(&self, name: &str, token: &str) {
        let token = Token::new(token);
        self.set(name, Arc::new(move |_| token.clone()));
    }

    /// How many tokens `name` asked for.
    pub fn calls(&self, name: &str) -> u64 {
        self.sources
            .lock()
            .expect("tokens")
            .get(name)
            .map_or(0, |s| s.calls)
    }

    fn url(&self, name: &str) -> String {
        format!("{}/token/{name}", self.base)
    }

    fn get_token(&self, name: &str) -> ces_client::connection::GetToken {
        let (sources, name) = (self.sources.clone(), name.to_owned());
        Arc::new(move || {
            let token = mint(&sources, &name).ok_or_else(|| format!("no token for {name}"));
            Box::pin(async move { token })
        })
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Drop for Tokens {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mint(sources: &Mutex<HashMap<String, Source>>, name: &str) -> Option<Token> {
    let mut sources = sources.lock().expect("tokens");
    let source = sources.get_mut(name)?;
    source.calls += 1;
    Some((source.minter.as_ref()?)(source.calls))
}

/// What every app saw so far, by name, and a counter bumped at each new observation.
#[derive(Clone)]
struct Log {
    seen: Arc<Mutex<HashMap<String, Vec<Seen>>>>,
    version: Arc<watch::Sender<u64>>,
}

impl Log {
    fn new() -> Self {
        Self {
            seen: Arc::default(),
            version: Arc::new(watch::channel(0).0),
        }
    }

    fn push(&self, name: &str, seen: Seen) {
        self.seen
            .lock()
            .expect("log")
            .entry(name.to_owned())
            .or_default()
            .push(seen);
        self.version.send_modify(|v| *v += 1);
    }
}

enum Running {
    Rust {
        stop: CancellationToken,
        tasks: Vec<JoinHandle<()>>,
    },
    Js {
        child: Box<Child>,
        stdin: Option<ChildStdin>,
        reader: JoinHandle<()>,
    },
}

/// Client apps of one [`Kind`], one per name, each connected to `url` with its tokens from [`Tokens`].
pub struct Apps {
    log: Log,
    running: Running,
}

impl Apps {
    /// Starts an app per name against `url` (an edge or load balancer base URL). `ping_interval` is the edge's
    /// (`CES_WS_PING_INTERVAL_MS`): the clients call a connection dead after 2.5 of them without a frame.
    pub async fn start(
        kind: Kind,
        url: &str,
        names: &[String],
        tokens: &Tokens,
        ping_interval: Duration,
    ) -> anyhow::Result<Self> {
        let log = Log::new();
        let running = match kind {
            Kind::Rust => {
                let stop = CancellationToken::new();
                let tasks = names
                    .iter()
                    .map(|name| {
                        let options = ces_client::Options {
                            url: url.to_owned(),
                            get_token: tokens.get_token(name),
                            resume_from: None,
                            silence_limit: ping_interval.mul_f64(2.5),
                        };
                        tokio::spawn(rust_app(options, name.clone(), log.clone(), stop.clone()))
                    })
                    .collect();
                Running::Rust { stop, tasks }
            }
            Kind::Js => {
                let script = crate::workspace_root().join("clients/js/test/app.mjs");
                let dist = crate::workspace_root().join("clients/js/dist");
                if !dist.is_dir() {
                    bail!(
                        "{} is missing: run `npm ci && npm run build` in clients/js (make test does)",
                        dist.display()
                    );
                }
                let clients: Vec<_> = names
                    .iter()
                    .map(|n| serde_json::json!({ "name": n, "tokenUrl": tokens.url(n) }))
                    .collect();
                let config = serde_json::json!({
                    "url": url,
                    "pingIntervalMs": ping_interval.as_millis() as u64,
                    "clients": clients,
                });
                let mut child = Command::new("node")
                    .arg(&script)
                    .arg(config.to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .context(
                        "starting node (Node 20 is needed for the TypeScript client's tests)",
                    )?;
                let stdout = child.stdout.take().context("node's stdout")?;
                let stdin = child.stdin.take();
                let reader = tokio::spawn(js_lines(stdout, log.clone()));
                Running::Js {
                    child: Box::new(child),
                    stdin,
                    reader,
                }
            }
        };
        Ok(Self { log, running })
    }

    /// Everything `name` saw so far.
    pub fn seen(&self, name: &str) -> Vec<Seen> {
        self.log
            .seen
            .lock()
            .expect("log")
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// The `seq` of every event `name` was handed, in order.
    pub fn seqs(&self, name: &str) -> Vec<u64> {
        events_of(&self.seen(name))
    }

    /// Waits up to `timeout` until `done` holds for what the apps saw; fails naming `what` and what was seen.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&HashMap<String, Vec<Seen>>) -> bool,
    ) -> anyhow::Result<()> {
        let mut version = self.log.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.log.seen.lock().expect("log")) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, version.changed())
                .await
                .is_err()
            {
                let seen = self.log.seen.lock().expect("log").clone();
                bail!("timed out waiting for {what}; seen: {seen:?}");
            }
        }
    }

    /// Waits until `name` was handed `n` events in all.
    pub async fn wait_events(&self, name: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until(&format!("{n} events for {name}"), timeout, |seen| {
            seen.get(name).map_or(0, |s| events_of(s).len()) >= n
        })
        .await
    }

    /// Waits until `name` saw something `matches` accepts, and returns it.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Seen) -> bool,
    ) -> anyhow::Result<Seen> {
        self.wait_until(what, timeout, |seen| {
            seen.get(name).is_some_and(|s| s.iter().any(&matches))
        })
        .await?;
        Ok(self
            .seen(name)
            .into_iter()
            .find(|s| matches(s))
            .expect("just seen"))
    }

    /// Stops every app: the Rust clients are cancelled, the Node process is told by the end of its stdin.
    pub async fn stop(self) -> anyhow::Result<()> {
        match self.running {
            Running::Rust { stop, tasks } => {
                stop.cancel();
                for task in tasks {
                    task.await?;
                }
            }
            Running::Js {
                mut child,
                mut stdin,
                reader,
            } => {
                if let Some(mut stdin) = stdin.take() {
                    let _ = stdin.shutdown().await;
                }
                let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
                reader.await?;
                if !status.success() {
                    bail!("the Node app exited with {status}");
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apps")
            .field("seen", &self.log.seen)
            .finish_non_exhaustive()
    }
}

/// The `seq` of each event in `seen`.
pub fn events_of(seen: &[Seen]) -> Vec<u64> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Event { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

async fn rust_app(options: ces_client::Options, name: String, log: Log, stop: CancellationToken) {
    let (tx, mut updates) = tokio::sync::mpsc::channel(1024);
    let client = tokio::spawn(ces_client::run(options, tx, stop));
    let mut stopped = false;
    while let Some(update) = updates.recv().await {
        let seen = match update {
            Update::Event(e) => Seen::Event {
                seq: e.seq,
                id: e.id,
            },
            Update::Gap(g) => Seen::Gap {
                from: g.from,
                to: g.to,
                reason: g.reason,
            },
            Update::Connected { node } => Seen::Open { node },
            Update::Disconnected { ending, retry } => {
                stopped = !retry;
                Seen::Closed {
                    code: match ending {
                        Ending::Closed(code) => Some(code),
                        Ending::Refused { status, .. } => Some(status),
                        Ending::Silent => None,
                    },
                    will_reconnect: retry,
                }
            }
            // Told once: a stop that ends a connection came with its `Disconnected`.
            Update::Stopped(_) if stopped => continue,
            Update::Stopped(_) => Seen::Closed {
                code: None,
                will_reconnect: false,
            },
        };
        log.push(&name, seen);
    }
    let _ = client.await;
}

/// Reads the Node app's JSON lines (clients/js/test/app.mjs) into the log.
async fn js_lines(stdout: tokio::process::ChildStdout, log: Log) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            eprintln!("node app: {line}");
            continue;
        };
        let name = v["client"].as_str().unwrap_or_default().to_owned();
        let code = v["code"].as_u64().and_then(|c| u16::try_from(c).ok());
        let seen = match (v["kind"].as_str(), v["state"].as_str()) {
            (Some("event"), _) => Seen::Event {
                seq: v["seq"].as_u64().unwrap_or_default(),
                id: v["id"].as_str().unwrap_or_default().to_owned(),
            },
            (Some("gap"), _) => Seen::Gap {
                from: v["from"].as_u64().unwrap_or_default(),
                to: v["to"].as_u64(),
                reason: v["reason"].as_str().unwrap_or_default().to_owned(),
            },
            (Some("state"), Some("open")) => Seen::Open {
                node: v["node"].as_str().unwrap_or_default().to_owned(),
            },
            (Some("state"), Some("reconnecting")) => Seen::Closed {
                code,
                will_reconnect: true,
            },
            (Some("state"), Some("closed")) => Seen::Closed {
                code,
                will_reconnect: false,
            },
            (Some("connect_failed"), _) => Seen::Closed {
                code,
                will_reconnect: false,
            },
            _ => continue,
        };
        log.push(&name, seen);
    }
}
