//! A real HAProxy in front of edges, configured as `dev/haproxy.cfg` forwards: HTTP mode, `option forwardfor`
//! (which adds the client's address to `X-Forwarded-For` as a header line of its own), round-robin, a connection a
//! dead edge refuses retried on another (`option redispatch`); or in TCP mode
//! with the PROXY protocol, as a load balancer that forwards connections rather than requests.

use std::process::Stdio;

use anyhow::Context as _;
use tokio::process::{Child, Command};

use crate::{find_binary, free_port};

/// An `haproxy` process on a free loopback port, killed when dropped.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Haproxy {
    /// Starts HAProxy balancing over `backends` (`host:port` each) and waits until it accepts connections.
    pub async fn start(backends: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(backends, "mode http\n    option forwardfor", "").await
    }

    /// Starts HAProxy in TCP mode, sending each backend connection's client with the PROXY protocol: `version` 1
    /// (`send-proxy`) or 2 (`send-proxy-v2`).
    pub async fn start_tcp_with_proxy_protocol(
        backends: &[&str],
        version: u8,
    ) -> anyhow::Result<Self> {
        let send = if version == 1 {
            " send-proxy"
        } else {
            " send-proxy-v2"
        };
        Self::start_with(backends, "mode tcp", send).await
    }

    async fn start_with(
        backends: &[&str],
        mode: &str,
        server_options: &str,
    ) -> anyhow::Result<Self> {
        let bin = find_binary("haproxy", "CES_HAPROXY_BIN").or_else(|_| {
            let sbin = std::path::PathBuf::from("/usr/sbin/haproxy");
            if sbin.is_file() {
                Ok(sbin)
            } else {
                anyhow::bail!("haproxy not found (set CES_HAPROXY_BIN); `make test` installs it")
            }
        })?;
        let port = free_port();
        let dir = tempfile::tempdir()?;
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("    server edge-{i} {b}{server_options}\n"))
            .collect();
        let config = format!(
            "global\n    maxconn 8000\n\
             defaults\n    {mode}\n    retries 2\n    option redispatch 1\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n    \
             timeout tunnel 1h\n\
             frontend ces\n    bind 127.0.0.1:{port}\n    default_backend edges\n\
             backend edges\n    balance roundrobin\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config)?;
        let child = Command::new(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut proxy = Self {
            child,
            _dir: dir,
            base: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if let Some(status) = proxy.child.try_wait()? {
                anyhow::bail!("haproxy exited during start-up with {status}");
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(proxy);
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        proxy.child.kill().await.ok();
        anyhow::bail!("haproxy not listening on {port} after 5 s")
    }
}
