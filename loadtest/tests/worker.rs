//! `ces-loadtest worker` as a run starts it: the real binary, a plan on stdin, a WebSocket server on port 0 that
//! speaks just enough of the CES protocol (a welcome, one event per socket), and the JSON lines it answers with:
//! progress while its sockets are open, and once its stdin closes, what they received.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// Accepts WebSockets on `listener` for ever: each gets a welcome and the event `n = 1` of its session.
async fn fake_edge(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_micros();
            let welcome = json!({"type": "welcome", "session_id": "s", "node": "fake", "epoch": "e1", "seq": 0});
            let event = json!({"type": "event", "seq": 1, "data": {"n": 1, "t": t as u64}});
            for frame in [welcome, event] {
                if ws.send(Message::text(frame.to_string())).await.is_err() {
                    return;
                }
            }
            while let Some(Ok(_)) = ws.next().await {}
        });
    }
}

#[tokio::test]
async fn a_worker_holds_its_sessions_reports_them_and_stops_when_its_input_ends() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(fake_edge(listener));
    let plan = json!({
        "worker": 0,
        "targets": [format!("http://{addr}")],
        "per_source": 10_000,
        "connect_concurrency": 4,
        "first_index": 0,
        "sessions": [
            {"id": "a", "token": "ta", "target": 0},
            {"id": "b", "token": "tb", "target": 0},
            {"id": "c", "token": "tc", "target": 0}
        ],
        "deadline_s": 60
    });
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ces-loadtest"))
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start ces-loadtest worker");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{plan}\n").as_bytes())
        .await
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
            .expect("a line before the end");
        serde_json::from_str(&line).expect("one JSON object per line")
    };

    let mut samples = 0;
    let progress = loop {
        let p = next().await;
        assert_eq!(p["kind"], "progress", "{p}");
        samples += p["samples"].as_array().unwrap().len();
        if p["counters"]["connected"] == 3 && p["counters"]["delivered"] == 3 {
            break p;
        }
    };
    assert_eq!(progress["counters"]["refused"], 0, "{progress}");
    drop(stdin);
    let done = loop {
        let m = next().await;
        if m["kind"] == "done" {
            break m;
        }
        samples += m["samples"].as_array().unwrap().len();
        assert_eq!(m["kind"], "progress", "{m}");
        assert_eq!(
            m["counters"]["disconnects"], 0,
            "closing is not a drop: {m}"
        );
    };
    assert_eq!(
        samples, 3,
        "one latency sample per delivered event, sent once"
    );
    assert_eq!(done["distinct"], 3, "{done}");
    assert_eq!(done["duplicated"], 0, "{done}");
    assert_eq!(done["reported"], 3, "{done}");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the worker exits once it has reported")
        .unwrap();
    assert!(status.success(), "{status}");
}
