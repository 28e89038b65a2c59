//! A TCP proxy that misbehaves on demand, between a client and the stack: what a network does to a real client's
//! connections (reset, black-hole, stall, delay), on real sockets.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to the bytes of every connection, live ones and new ones alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards everything.
    Pass,
    /// Reads and drops everything, both ways, with the connections left open: a network path that died
    /// without either end being told (a laptop asleep, a switched network, a NAT that forgot the flow).
    BlackHole,
    /// Reads nothing either way while it lasts, so the senders' buffers fill: a peer that stopped reading.
    Stall,
    /// Forwards every chunk this much later.
    Delay(Duration),
}

/// The proxy; dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: where clients connect instead of the upstream.
    pub base: String,
    fault: watch::Sender<Fault>,
    resets: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `upstream` (`host:port`, or an `http://` base URL).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (fault, _) = watch::channel(Fault::Pass);
        let (resets, _) = watch::channel(0u64);
        let (faults, reset_rx) = (fault.clone(), resets.subscribe());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let (fault, resets) = (faults.subscribe(), reset_rx.clone());
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        relay(client, server, fault, resets).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            base,
            fault,
            resets,
            task,
        })
    }

    /// From now on, every connection suffers `fault`.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Ends every open connection at once: closed with SO_LINGER 0, so the kernel resets them (RST to both ends)
    /// rather than closing politely; new connections are unaffected.
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection until either end closes or a reset is asked for.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    fault: watch::Receiver<Fault>,
    mut resets: watch::Receiver<u64>,
) {
    resets.mark_unchanged();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, fault.clone());
    let down = pump(server_read, client_write, fault);
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = resets.changed() => {}
    }
    // Either way the sockets are dropped here, and `pump` gave them SO_LINGER 0: a reset is an RST to both ends.
}

/// Copies `from` to `to` as `fault` says, until `from` ends.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut fault: watch::Receiver<Fault>) {
    // Dropped mid-way (a reset), the sockets close with RST, not a polite FIN.
    let _ = to.as_ref().set_zero_linger();
    let _ = from.as_ref().set_zero_linger();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // While stalled nothing is read, so the sender's buffers fill.
        if *fault.borrow_and_update() == Fault::Stall
            && fault.wait_for(|f| *f != Fault::Stall).await.is_err()
        {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            // A stall that starts while waiting for bytes takes effect at once.
            _ = fault.changed() => continue,
        };
        let current = *fault.borrow();
        match current {
            Fault::BlackHole => continue,
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Pass | Fault::Stall => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> anyhow::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(addr)
    }

    async fn echo(stream: &mut TcpStream, text: &[u8], wait: Duration) -> Option<Vec<u8>> {
        stream.write_all(text).await.ok()?;
        let mut got = vec![0u8; text.len()];
        match tokio::time::timeout(wait, stream.read_exact(&mut got)).await {
            Ok(Ok(_)) => Some(got),
            _ => None,
        }
    }

    #[tokio::test]
    async fn each_fault_does_what_it_says_to_live_connections() -> anyhow::Result<()> {
        let proxy = FaultProxy::start(&echo_server().await?).await?;
        let addr = proxy.base.trim_start_matches("http://").to_owned();
        let mut s = TcpStream::connect(&addr).await?;
        let wait = Duration::from_millis(500);
        assert_eq!(
            echo(&mut s, b"one", wait).await.as_deref(),
            Some(&b"one"[..])
        );

        // Black-holed bytes never come back, even after the path heals.
        proxy.set(Fault::BlackHole);
        assert_eq!(echo(&mut s, b"lost", wait).await, None);
        proxy.set(Fault::Pass);
        assert_eq!(
            echo(&mut s, b"two", wait).await.as_deref(),
            Some(&b"two"[..])
        );

        // Stalled bytes come late but whole.
        proxy.set(Fault::Stall);
        assert_eq!(echo(&mut s, b"held", wait).await, None);
        proxy.set(Fault::Pass);
        let mut held = [0u8; 4];
        tokio::time::timeout(wait, s.read_exact(&mut held)).await??;
        assert_eq!(&held, b"held");

        let started = tokio::time::Instant::now();
        proxy.set(Fault::Delay(Duration::from_millis(200)));
        assert!(
            echo(&mut s, b"slow", Duration::from_secs(2))
                .await
                .is_some()
        );
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "delayed each way"
        );
        proxy.set(Fault::Pass);

        // A reset ends the live connection at once (an RST, which a read reports as an error or, once the
        // kernel has reported it, as the end); new ones work.
        proxy.reset_all();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(wait, s.read_to_end(&mut rest)).await?;
        assert!(matches!(read, Ok(0) | Err(_)), "ended: {read:?}");
        let mut fresh = TcpStream::connect(&addr).await?;
        assert!(echo(&mut fresh, b"new", wait).await.is_some());
        Ok(())
    }
}
