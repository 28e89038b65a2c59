//! `cesctl watch`, run as a process, is the Rust client: it follows its session across an edge killed under it
//! and another drained (1012), through HAProxy, and prints every event once and in order, no gap.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ces_systest::Redis;
use ces_systest::client::register;
use ces_systest::haproxy::Haproxy;
use common::{IsolatedEdge, publish_direct};
use fred::interfaces::ClientLike as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

const WAIT: Duration = Duration::from_secs(30);

/// Lines of a child's output, as they come.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(&self, from: impl tokio::io::AsyncRead + Unpin + Send + 'static) {
        let lines = self.0.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(from).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().expect("lines").push(line);
            }
        });
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().expect("lines").clone()
    }

    async fn wait(&self, what: &str, done: impl Fn(&[String]) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.all()) {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The node of the latest `connected to <node>` line.
    fn holder(&self) -> String {
        self.all()
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("connected to "))
            .expect("connected")
            .to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_its_session_across_an_edge_kill_and_a_drain() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let mut edges = Vec::new();
    for node in ["edge-a", "edge-b", "edge-c"] {
        edges.push(IsolatedEdge::start(&redis.url(), node).await?);
    }
    let backends: Vec<&str> = edges
        .iter()
        .map(|e| e.base.trim_start_matches("http://"))
        .collect();
    let lb = Haproxy::start(&backends).await?;
    let reg = register(&reqwest::Client::new(), &lb.base).await?;
    let mut child =
        tokio::process::Command::new(ces_systest::workspace_binary("cesctl", "CES_CTL_BIN")?)
            .args(["watch", "--token-stdin", "--events", "90"])
            .env("CES_EDGE_URL", &lb.base)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(format!("{}\n", reg.token).as_bytes())
        .await?;
    drop(stdin);
    let (out, err) = (Lines::default(), Lines::default());
    out.follow(child.stdout.take().expect("piped"));
    err.follow(child.stderr.take().expect("piped"));
    err.wait("a welcome", |l| {
        l.iter().any(|l| l.starts_with("connected to "))
    })
    .await?;

    let admin = ces_runtime::redis::builder(&redis.url())?.build()?;
    admin.init().await?;
    let channel = ces_protocol::keys::channel(&reg.session_id);
    let publish = |ns: std::ops::RangeInclusive<u64>| {
        let (admin, session, channel) = (admin.clone(), reg.session_id.clone(), channel.clone());
        async move {
            for n in ns {
                publish_direct(&admin, &session, &format!("e-{n}"), n, channel.clone()).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        }
    };
    let edge_named = |edges: &mut Vec<IsolatedEdge>, node: String| {
        let i = edges.iter().position(|e| e.node == node).expect("a node");
        edges.remove(i)
    };

    // Killed with events in flight.
    publish(1..=30).await?;
    let mut killed = edge_named(&mut edges, err.holder());
    killed.kill();
    publish(31..=60).await?;
    out.wait("60 events", |l| l.len() >= 60).await?;
    // Drained: 1012, and the client is back on the third edge.
    let mut drained = edge_named(&mut edges, err.holder());
    drained.drain().await?;
    publish(61..=90).await?;
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    assert!(status.success(), "{status}: {:?}", err.all());

    let printed: Vec<Value> = out
        .all()
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    let expected: Vec<Value> = (1..=90)
        .map(|n| json!({"type": "event", "seq": n, "id": format!("e-{n}"), "event": "t", "data": {"n": n}}))
        .collect();
    assert_eq!(printed, expected, "every event once, in order, no gap");
    let stderr = err.all();
    assert!(
        stderr.iter().any(|l| l.starts_with("disconnected: 1012")),
        "{stderr:?}"
    );
    assert_eq!(
        stderr
            .iter()
            .filter(|l| l.starts_with("connected to "))
            .count(),
        3,
        "{stderr:?}"
    );
    assert_eq!(err.holder(), edges[0].node, "ends on the edge left");
    let _ = admin.quit().await;
    Ok(())
}
