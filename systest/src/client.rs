//! Clients of the edge: registration over HTTP and a WebSocket client that collects frames.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Answer of `POST /v1/sessions`.
#[derive(Debug, Clone, Deserialize)]
pub struct Registered {
    /// Session id.
    pub session_id: String,
    /// Token.
    pub token: String,
    /// Expiry, RFC 3339.
    pub expires_at: String,
}

/// Registers a session at `base` (`http://127.0.0.1:port`).
pub async fn register(http: &reqwest::Client, base: &str) -> anyhow::Result<Registered> {
    let resp = http
        .post(format!("{base}/v1/sessions"))
        .send()
        .await
        .context("POST /v1/sessions")?;
    let status = resp.status();
    if status != reqwest::StatusCode::CREATED {
        bail!(
            "POST /v1/sessions answered {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(resp.json().await?)
}

/// `ws://` URL of the socket endpoint for `token`.
pub fn ws_url(base: &str, token: &str) -> String {
    ces_client::connection::url_for(base, token, None)
}

/// `ws://` URL that resumes after `last_seq` in `epoch`.
pub fn resume_url(base: &str, token: &str, last_seq: u64, epoch: &str) -> String {
    let position = ces_client::stream::Position {
        epoch: epoch.to_owned(),
        last_seq,
    };
    ces_client::connection::url_for(base, token, Some(&position))
}

/// The HTTP status a WebSocket handshake was refused with, or `None` if it was accepted.
pub async fn handshake_status(url: &str) -> anyhow::Result<Option<u16>> {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => Ok(None),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Ok(Some(resp.status().as_u16())),
        Err(e) => Err(e.into()),
    }
}

/// What a socket ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code.
    Closed(u16),
    /// The connection dropped without a close frame.
    Dropped,
}

/// A WebSocket client that reads JSON text frames.
#[derive(Debug)]
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connect {url}"))?;
        Ok(Self { stream })
    }

    /// Connects to a `ws://` URL with a receive buffer of `bytes` (no autotuning), so the client's kernel holds
    /// little of what the server writes and a slow reader slows the server's writes down.
    pub async fn connect_with_receive_buffer(url: &str, bytes: u32) -> anyhow::Result<Self> {
        let authority = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .context("a ws:// URL")?;
        let addr = tokio::net::lookup_host(authority)
            .await?
            .next()
            .context("no address")?;
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_recv_buffer_size(bytes)?;
        let tcp = socket.connect(addr).await?;
        let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .with_context(|| format!("connect {url}"))?;
        Ok(Self { stream })
    }

    /// Connects to a `wss://` URL through `connector` (e.g. one that trusts a test CA).
    pub async fn connect_tls(
        url: &str,
        connector: tokio_tungstenite::Connector,
    ) -> anyhow::Result<Self> {
        let (stream, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
                .await
                .with_context(|| format!("connect {url}"))?;
        Ok(Self { stream })
    }

    /// The next JSON text frame, `Ok(None)` if none within `timeout`; a close or error is an `Err`.
    pub async fn next_json(&mut self, timeout: Duration) -> anyhow::Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("socket ended"),
                Ok(Some(m)) => m?,
            };
            match msg {
                Message::Text(t) => return Ok(Some(serde_json::from_str(&t)?)),
                Message::Close(f) => bail!("socket closed: {f:?}"),
                _ => {}
            }
        }
    }

    /// Collects `n` event frames (skipping other frame types), or fewer if `timeout` passes first.
    pub async fn events(&mut self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json(left).await? {
                None => break,
                Some(v) if v["type"] == "event" => out.push(v),
                Some(_) => {}
            }
        }
        Ok(out)
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.stream.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends a text frame whose payload is `bytes` as given, valid UTF-8 or not.
    pub async fn send_raw_text(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
        self.stream.send(Message::Frame(frame)).await?;
        Ok(())
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.stream.send(Message::binary(bytes)).await?;
        Ok(())
    }

    /// Reads until the socket ends and reports how, skipping data frames; `None` if `timeout` passes first.
    pub async fn ending(&mut self, timeout: Duration) -> Option<Ending> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(Ending::Dropped),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Some(Ending::Closed(f.map_or(
                        ces_protocol::close::NO_STATUS_RECEIVED,
                        |CloseFrame { code, .. }| code.into(),
                    )));
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
