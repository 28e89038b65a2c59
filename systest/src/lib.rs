//! Test support for CES: real servers on free ports, and small clients to drive them.
//!
//! Every Redis fixture starts its own `redis-server` on a free loopback port, so tests run in parallel without
//! colliding, and kills it when dropped (the binary is found on `PATH`, in `~/.cargo/bin`, or at
//! `CES_REDIS_SERVER_BIN`). Apache Kafka is a JVM that takes seconds to start, so the tests of a run share one
//! broker and keep apart by unique topic and group names; a test that stops the broker starts its own.
//!
//! # Layout
//! - [`Redis`], [`Broker`], [`cluster::RedisCluster`]: the server fixtures.
//! - [`Process`]: a CES service binary run as a child process (for RSS, signals, and kills).
//! - [`Metrics`]: a scraped Prometheus `/metrics` page.
//! - [`kafka`]: topic creation, producing, and reading a topic to its end.
//! - [`kafka_wire`]: producing records byte for byte over the Kafka protocol (header names that are not UTF-8).
//! - [`kafka_secure`]: a broker with a TLS + SASL listener.
//! - [`client`]: session registration and a WebSocket client that collects frames.
//! - [`apps`]: the Rust and TypeScript clients as apps under test, and their token endpoint.
//! - [`fault`]: a TCP proxy that resets, black-holes, stalls or delays connections on demand.
//! - [`tls`]: a throwaway CA and server certificate, and clients that trust it.

pub mod apps;
pub mod client;
pub mod cluster;
pub mod fault;
pub mod haproxy;
pub mod kafka;
pub mod kafka_secure;
pub mod kafka_wire;
mod metrics;
mod process;
pub mod tls;

pub use metrics::Metrics;
pub use process::Process;

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A free TCP port on 127.0.0.1 (bound and released; fixtures retry if another process grabs it first).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A name unique within this test process and across concurrently running test processes.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Installs a test log subscriber once (`RUST_LOG` controls it; quiet by default).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `<base>/readyz` until it answers 200, for up to 10 s.
pub async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for _ in 0..400 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("{base} not ready after 10 s")
}

/// Finds a binary by env override, `PATH`, or `~/.cargo/bin`.
pub fn find_binary(name: &str, env_override: &str) -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var(env_override) {
        return Ok(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(name))
            .collect();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin").join(name));
    }
    candidates.into_iter().find(|p| p.is_file()).with_context(|| {
        format!("{name} not found on PATH or in ~/.cargo/bin (set {env_override}); `make test` installs it")
    })
}

async fn wait_for<F, Fut>(what: &str, child: &mut Child, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up with {status}");
        }
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("{what} not ready after 5 s")
}

/// A `redis-server` on a free port: without persistence ([`Redis::start`]) or writing every command to its
/// append-only file ([`Redis::start_persistent`]).
#[derive(Debug)]
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    persistent: bool,
    secured: Option<Secured>,
}

/// TLS and an ACL user on a [`Redis`] ([`Redis::start_secured`]).
#[derive(Debug, Clone)]
struct Secured {
    tls_port: u16,
    user: String,
    password: String,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Secured {
    fn args(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        [
            "--tls-port",
            &self.tls_port.to_string(),
            "--tls-cert-file",
            &path(&self.cert),
            "--tls-key-file",
            &path(&self.key),
            "--tls-ca-cert-file",
            &path(&self.ca),
            "--tls-auth-clients",
            "no",
            // The plain port answers PING (the fixture's liveness check) and nothing else.
            "--user",
            "default",
            "on",
            "nopass",
            "-@all",
            "+ping",
            // CES's user: its own keys and channels, no administrative commands.
            "--user",
            &self.user,
            "on",
            &format!(">{}", self.password),
            "~ces:*",
            "&ces:*",
            "+@all",
            "-@dangerous",
            // The function library reads INFO once per Redis process (which process holds an epoch).
            "+info",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }
}

impl Redis {
    /// Starts a server without persistence.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    /// Starts a server that survives [`Redis::stop`] and [`Redis::start_again`] with its data.
    pub async fn start_persistent() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    /// Starts a server that takes data only over TLS (`cert`'s server certificate) and only from ACL user
    /// `user` with `password`, limited to CES's keys and channels: see [`Redis::secure_url`].
    pub async fn start_secured(
        cert: &crate::tls::TestCert,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let secured = Secured {
            tls_port: 0,
            user: user.to_owned(),
            password: password.to_owned(),
            cert: cert.cert_file(),
            key: cert.key_file(),
            ca: cert.ca_file(),
        };
        Self::start_inner(false, Some(secured)).await
    }

    async fn start_with(persistent: bool) -> anyhow::Result<Self> {
        Self::start_inner(persistent, None).await
    }

    async fn start_inner(persistent: bool, secured: Option<Secured>) -> anyhow::Result<Self> {
        let mut last_error = None;
        for _ in 0..3 {
            let dir = tempfile::tempdir()?;
            let port = free_port();
            let secured = secured.clone().map(|s| Secured {
                tls_port: free_port(),
                ..s
            });
            match Self::spawn(port, &dir, persistent, secured.as_ref()).await {
                Ok(child) => {
                    return Ok(Self {
                        child: Some(child),
                        port,
                        dir,
                        persistent,
                        secured,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Kills the server and starts a new, empty one on the same port: a restart without persistence.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.start_again().await
    }

    /// Kills the server (SIGKILL): clients see their connections reset and the port refuses connections.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
            let _ = child.wait().await;
        }
        Ok(())
    }

    /// Starts the server again on the same port and directory (with its data if it is persistent).
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.child =
            Some(Self::spawn(self.port, &self.dir, self.persistent, self.secured.as_ref()).await?);
        Ok(())
    }

    async fn spawn(
        port: u16,
        dir: &tempfile::TempDir,
        persistent: bool,
        secured: Option<&Secured>,
    ) -> anyhow::Result<Child> {
        let bin = find_binary("redis-server", "CES_REDIS_SERVER_BIN")?;
        let (appendonly, fsync) = if persistent {
            ("yes", "always")
        } else {
            ("no", "no")
        };
        let mut child = Command::new(&bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                appendonly,
                "--appendfsync",
                fsync,
            ])
            .arg("--dir")
            .arg(dir.path())
            .args(secured.map(Secured::args).unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        wait_for("redis-server", &mut child, || ping(port)).await?;
        Ok(child)
    }

    /// Writes a snapshot of the data set now (`SAVE`) and keeps a copy of it, for [`restore`](Self::restore).
    pub async fn snapshot(&self) -> anyhow::Result<PathBuf> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).await?;
        s.write_all(b"SAVE\r\n").await?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await?;
        ensure_reply(&buf, b"+OK\r\n")?;
        let copy = self
            .dir
            .path()
            .join(format!("snapshot-{}.rdb", unique("at")));
        std::fs::copy(self.dir.path().join("dump.rdb"), &copy)?;
        Ok(copy)
    }

    /// Kills the server (SIGKILL) and starts it again from `snapshot`, an older copy of its data: what a restore
    /// from a backup, or a restart from a snapshot older than the last writes, does. Only for a server without
    /// an append-only file ([`Redis::start`]), which loads its snapshot at start.
    pub async fn restore(&mut self, snapshot: &std::path::Path) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.persistent,
            "a persistent server loads its append-only file, not a snapshot"
        );
        self.stop().await?;
        std::fs::copy(snapshot, self.dir.path().join("dump.rdb"))?;
        self.start_again().await
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `rediss://<user>:<password>@127.0.0.1:<tls port>` of a [`Redis::start_secured`] server.
    pub fn secure_url(&self) -> Option<String> {
        self.secured.as_ref().map(|s| {
            format!(
                "rediss://{}:{}@127.0.0.1:{}",
                s.user, s.password, s.tls_port
            )
        })
    }
}

fn ensure_reply(got: &[u8], want: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(
        got == want,
        "redis answered {:?}, expected {:?}",
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(want)
    );
    Ok(())
}

async fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n"
}

/// The variable through which `make test` hands every test the bootstrap address of the run's broker.
pub const SHARED_BROKER_VAR: &str = "CES_TEST_KAFKA";

/// An Apache Kafka broker (combined broker and KRaft controller) for a test.
///
/// A JVM takes seconds to start, so a test run shares one: `make test` starts it with `scripts/kafka.sh` and passes
/// its address in [`SHARED_BROKER_VAR`], and [`Broker::shared`] returns it (tests keep apart by unique topic and
/// group names). A test that stops, kills or cuts off the broker takes one of its own with [`Broker::own`].
#[derive(Debug)]
pub struct Broker {
    bootstrap: String,
    own: Option<OwnBroker>,
}

#[derive(Debug)]
struct OwnBroker {
    child: Child,
    /// Its storage and log, removed when the broker is dropped.
    dir: tempfile::TempDir,
}

/// The workspace's root directory, found when the test runs from the running package's directory (cargo and
/// nextest set `CARGO_MANIFEST_DIR` for each test), not when it was built: a test binary that a shared target
/// directory reuses from another checkout still uses this checkout's files.
pub fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    start
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map_or(start.clone(), std::path::Path::to_path_buf)
}

impl Broker {
    /// The run's shared broker, or, when the tests were not started by `make test`, a broker of this test's own.
    pub async fn shared() -> anyhow::Result<Self> {
        match std::env::var(SHARED_BROKER_VAR) {
            Ok(bootstrap) if !bootstrap.is_empty() => Ok(Self {
                bootstrap,
                own: None,
            }),
            _ => {
                static HINT: std::sync::Once = std::sync::Once::new();
                HINT.call_once(|| {
                    eprintln!(
                        "{SHARED_BROKER_VAR} is not set: starting a broker for this test alone (`make test` shares one)"
                    );
                });
                Self::own().await
            }
        }
    }

    /// A broker of this test's own, on free ports, killed (SIGKILL) when dropped.
    pub async fn own() -> anyhow::Result<Self> {
        Self::own_with(|_, _| String::new()).await
    }

    /// [`Broker::own`] with `extra(port, controller_port)` appended to its `server.properties` (a later line wins),
    /// e.g. another listener. Its plain listener on `port` stays: readiness is checked there.
    pub async fn own_with(extra: impl Fn(u16, u16) -> String) -> anyhow::Result<Self> {
        let script = workspace_root().join("scripts/kafka.sh");
        let mut last_error = None;
        for _ in 0..3 {
            let dir = tempfile::tempdir()?;
            let (port, controller) = (free_port(), free_port());
            let log = std::fs::File::create(dir.path().join("broker.log"))?;
            let mut child = Command::new("bash")
                .arg(&script)
                .arg("run")
                .arg(dir.path())
                .args([port.to_string(), controller.to_string()])
                // A test broker is small and quiet: its log is read only when it fails to start.
                .env("CES_KAFKA_HEAP", "-Xms128m -Xmx512m")
                .env("CES_KAFKA_LOG_LEVEL", "WARN")
                .env("CES_KAFKA_PROPS", extra(port, controller))
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawning {}", script.display()))?;
            let bootstrap = format!("127.0.0.1:{port}");
            match wait_for_broker(&bootstrap, &mut child).await {
                Ok(()) => {
                    return Ok(Self {
                        bootstrap,
                        own: Some(OwnBroker { child, dir }),
                    });
                }
                Err(e) => {
                    let log =
                        std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(10).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    last_error = Some(e.context(tail.join("\n")));
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Kills a broker of this test's own (SIGKILL): its clients see connections refused from then on.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let own = self
            .own
            .as_mut()
            .context("the shared broker is never killed; take one with Broker::own")?;
        own.child.kill().await?;
        let _ = own.child.wait().await;
        Ok(())
    }

    /// Bootstrap servers string.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// The record batches of `topic`'s `partition` as this broker stored them, read from its log segments: the
    /// base offset and record count of each. Only for a broker of the test's own (the shared one's files are
    /// not the test's to read).
    pub fn record_batches(&self, topic: &str, partition: i32) -> anyhow::Result<Vec<(i64, u32)>> {
        let own = self.own.as_ref().context(
            "only a broker of the test's own shows its files; take one with Broker::own",
        )?;
        let dir = own.dir.path().join(format!("data/{topic}-{partition}"));
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        segments.sort();
        let mut batches = Vec::new();
        for segment in segments {
            batches.extend(kafka::record_batches(&std::fs::read(&segment)?)?);
        }
        Ok(batches)
    }
}

/// Waits until the broker at `bootstrap` answers a metadata request naming itself (up to 60 s: a JVM on a busy
/// 2-core machine), failing early if `child` exits.
async fn wait_for_broker(bootstrap: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("kafka broker exited during start-up with {status}");
        }
        if kafka::broker_answers(bootstrap).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("kafka broker at {bootstrap} not ready after 60 s")
}

/// The path of a workspace binary built next to the running test (`target/<profile>/<name>`), or at `env_override`.
pub fn workspace_binary(name: &str, env_override: &str) -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var(env_override) {
        return Ok(PathBuf::from(p));
    }
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .context("test executable has no parent directory")?;
    if !path.is_file() {
        bail!(
            "{} not built; run the workspace tests (`make test`) or `cargo build --bin {name}`",
            path.display()
        );
    }
    Ok(path)
}
