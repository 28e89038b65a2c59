//! Test support for CES: real servers on free ports, and small clients to drive them.
//!
//! Every fixture starts its own process (`redis-server`, the Kafka-API broker `tansu`) on a free loopback port, so
//! tests run in parallel without colliding, and kills it when dropped. Binaries are found on `PATH`, in
//! `~/.cargo/bin`, or at `CES_REDIS_SERVER_BIN` / `CES_TANSU_BIN`.
//!
//! # Layout
//! - [`Redis`], [`Broker`]: the server fixtures.
//! - [`kafka`]: topic creation, producing, and reading a topic to its end.
//! - [`client`]: session registration and a WebSocket client that collects frames.

pub mod client;
pub mod kafka;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
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

/// A `redis-server` with no persistence, on a free port.
#[derive(Debug)]
pub struct Redis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts a server.
    pub async fn start() -> anyhow::Result<Self> {
        let mut last_error = None;
        for _ in 0..3 {
            let dir = tempfile::tempdir()?;
            let port = free_port();
            match Self::spawn(port, &dir).await {
                Ok(child) => return Ok(Self { child, port, dir }),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Kills the server and starts a new, empty one on the same port: a restart without persistence.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        let _ = self.child.wait().await;
        self.child = Self::spawn(self.port, &self.dir).await?;
        Ok(())
    }

    async fn spawn(port: u16, dir: &tempfile::TempDir) -> anyhow::Result<Child> {
        let bin = find_binary("redis-server", "CES_REDIS_SERVER_BIN")?;
        let mut child = Command::new(&bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        wait_for("redis-server", &mut child, || ping(port)).await?;
        Ok(child)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
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

/// A Kafka-API broker (tansu, in-memory storage) on a free port.
#[derive(Debug)]
pub struct Broker {
    _child: Child,
    addr: SocketAddr,
}

impl Broker {
    /// Starts a broker.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = find_binary("tansu", "CES_TANSU_BIN")?;
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let mut child = Command::new(&bin)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"])
                .env_remove("CLUSTER_ID")
                .env_remove("STORAGE_ENGINE")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawning {}", bin.display()))?;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let ready = wait_for("tansu", &mut child, || async move {
                TcpStream::connect(addr).await.is_ok()
            })
            .await;
            match ready {
                Ok(()) => {
                    return Ok(Self {
                        _child: child,
                        addr,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Bootstrap servers string.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }
}
