//! A CES service binary run as a child process: for a test that needs what only a process has (its RSS, a signal,
//! a real exit, the listeners it binds from its configuration).

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

use crate::{free_port, wait_ready};

/// A CES service binary running as a child process, killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// `http://127.0.0.1:<port>` of its HTTP port: ingest's only one, the edge's public one.
    pub base: String,
    /// `http://127.0.0.1:<port>` where its probes and metrics are: ingest's HTTP port, the edge's internal one.
    pub internal: String,
}

impl Process {
    /// Starts `bin` with `env` (plus `http_var` set to a free port, which serves its probes and metrics) and waits
    /// until `/readyz` answers 200. For ingest (`CES_INGEST_HTTP_ADDR`); the edge is [`Process::start_edge`].
    pub async fn start(
        bin: &std::path::Path,
        http_var: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        Self::spawn(bin, env, &[(http_var, port)], base.clone(), base).await
    }

    /// Starts the edge binary `bin` with `env`, plus `CES_EDGE_LISTEN` and `CES_EDGE_INTERNAL_LISTEN` set to free
    /// ports, and waits until `/readyz` on the internal one answers 200.
    pub async fn start_edge(bin: &std::path::Path, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let (public, internal) = (free_port(), free_port());
        Self::spawn(
            bin,
            env,
            &[
                ("CES_EDGE_LISTEN", public),
                ("CES_EDGE_INTERNAL_LISTEN", internal),
            ],
            format!("http://127.0.0.1:{public}"),
            format!("http://127.0.0.1:{internal}"),
        )
        .await
    }

    async fn spawn(
        bin: &std::path::Path,
        env: &[(&str, String)],
        ports: &[(&str, u16)],
        base: String,
        internal: String,
    ) -> anyhow::Result<Self> {
        let child = Command::new(bin)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(ports.iter().map(|(k, p)| (*k, format!("127.0.0.1:{p}"))))
            .env("CES_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        wait_ready(&internal).await?;
        Ok(Self {
            child,
            base,
            internal,
        })
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("process already exited")
    }

    /// Resident set size in bytes (Linux `/proc`).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        Ok(kb * 1024)
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...).
    pub async fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid()?.to_string())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` for the exit status.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.signal("TERM").await?;
        Ok(tokio::time::timeout(grace, self.child.wait()).await??)
    }
}
