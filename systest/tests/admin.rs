//! The admin API and `cesctl` (run as a process) against two edges on a real `redis-server`: a session seen from the
//! edge that does not hold it (node, numbering, buffer, acknowledgement), revoked through the API (4003, then 401
//! everywhere); who may call the API and where it is not served; and a listing of 10,000 labelled sessions paged
//! through by `cesctl` and by the API itself, each session exactly once. Then the same listing over a Redis Cluster,
//! whose every primary the cursor goes through.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ces_protocol::keys::SessionId;
use ces_systest::Redis;
use ces_systest::client::{Ending, handshake_status, ws_url};
use common::{IsolatedEdge, cesctl, connect, text};
use fred::interfaces::ClientLike as _;
use futures::StreamExt as _;
use serde_json::{Value, json};

const TOKEN: &str = "systest-admin-token-0123456789abcdef-0123";

fn edge_env() -> Vec<(&'static str, String)> {
    vec![
        ("CES_ADMIN_TOKENS", TOKEN.to_owned()),
        // The client's ack is stored at the socket's heartbeat (every ping interval): short here, and the test
        // client, which answers pings only while it reads, is not closed for missing them.
        ("CES_WS_PING_INTERVAL_MS", "200".to_owned()),
        ("CES_WS_MAX_MISSED_PONGS", "100".to_owned()),
        ("CES_NODE_HEARTBEAT_MS", "200".to_owned()),
    ]
}

/// Registers a session at `base` with `labels`; its id and token.
async fn register(
    http: &reqwest::Client,
    base: &str,
    labels: Value,
) -> anyhow::Result<(String, String)> {
    let resp = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({ "labels": labels }))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == 201,
        "registration answered {}",
        resp.status()
    );
    let body: Value = resp.json().await?;
    Ok((
        body["session_id"].as_str().unwrap_or_default().to_owned(),
        body["token"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// `GET <url>` with `token` (when given): status and JSON body (`null` when not JSON).
async fn get(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().await?;
    Ok((
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_session_on_another_edge_and_revokes_it() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let redis = Redis::start().await?;
    let a = IsolatedEdge::start_with(&redis.url(), "edge-a", &edge_env()).await?;
    let b = IsolatedEdge::start_with(&redis.url(), "edge-b", &edge_env()).await?;
    let http = reqwest::Client::new();
    let (id, token) = register(&http, &a.base, json!({"team": "red"})).await?;
    let (mut ws, welcome) = connect(&ws_url(&b.base, &token)).await?;
    assert_eq!(welcome["node"], "edge-b");

    // Five events through Redis as ingest publishes them, received and acknowledged on edge b.
    let client = ces_runtime::redis::builder(&redis.url())?.build()?;
    client.init().await?;
    let session = SessionId::parse(&id)?;
    for n in 1..=5 {
        common::publish_direct(&client, &id, &format!("ev-{n}"), n, session.channel()).await?;
    }
    let events = ws.events(5, Duration::from_secs(5)).await?;
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    ws.send_text(r#"{"type":"ack","seq":5}"#).await?;
    let show = format!("{}/v1/admin/sessions/{id}", a.internal);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get(&http, &show, Some(TOKEN)).await?;
        assert_eq!(status, 200, "{body}");
        if body["last_ack"] == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ack is stored at a heartbeat: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `cesctl session show` against edge a's admin API, which does not hold the session.
    let env = [
        ("CES_ADMIN_URL", a.internal.as_str()),
        ("CES_ADMIN_TOKEN", TOKEN),
    ];
    let o = cesctl(&["session", "show", &id, "--json"], &env, "").await?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let shown: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(shown["session_id"], id.as_str());
    assert_eq!(shown["status"], "connected");
    assert_eq!(shown["node"], "edge-b");
    assert!(
        shown["connection"]
            .as_str()
            .is_some_and(|c| c.starts_with("edge-b/")),
        "{shown}"
    );
    assert_eq!(shown["epoch"], welcome["epoch"]);
    assert_eq!(shown["last_seq"], 5);
    assert_eq!(shown["last_ack"], 5);
    assert_eq!(
        shown["buffer"],
        json!({"events": 5, "first_seq": 1, "last_seq": 5})
    );
    assert_eq!(shown["labels"], json!({"team": "red"}));
    assert_eq!(shown["ip"], "127.0.0.1");
    for t in ["created_at", "last_seen", "token_expires_at"] {
        assert!(
            shown[t].as_str().is_some_and(|v| v.ends_with('Z')),
            "{t}: {shown}"
        );
    }
    // The table, with the token from stdin.
    let o = cesctl(
        &["session", "show", &id, "--admin-token-stdin"],
        &[("CES_ADMIN_URL", a.internal.as_str())],
        &format!("{TOKEN}\n"),
    )
    .await?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    assert!(table.starts_with("FIELD             VALUE\n"), "{table}");
    assert!(
        table.contains("\nbuffer            5 events, seq 1..=5\n"),
        "{table}"
    );
    assert!(table.contains("\nlabels            team=red\n"), "{table}");

    // Both nodes beat.
    let o = cesctl(&["nodes", "--json"], &env, "").await?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let nodes: Value = serde_json::from_slice(&o.stdout)?;
    let names: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(names, ["edge-a", "edge-b"], "{nodes}");
    assert!(
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["alive"] == true)
    );

    // The API refuses a missing or wrong credential, and is not served on the public port.
    for token in [None, Some("systest-admin-token-0123456789abcdef-XXXX")] {
        let resp = http
            .get(&show)
            .bearer_auth(token.unwrap_or_default())
            .send()
            .await?;
        assert_eq!(resp.status(), 401, "{token:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    let (status, _) = get(
        &http,
        &format!("{}/v1/admin/sessions/{id}", b.base),
        Some(TOKEN),
    )
    .await?;
    assert_eq!(status, 404, "no admin API on the public listener");
    let wrong = [
        ("CES_ADMIN_URL", a.internal.as_str()),
        (
            "CES_ADMIN_TOKEN",
            "systest-admin-token-0123456789abcdef-XXXX",
        ),
    ];
    let o = cesctl(&["session", "show", &id], &wrong, "").await?;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).starts_with("cesctl: 401 unauthorized: "),
        "{}",
        text(&o.stderr)
    );
    let o = cesctl(&["nodes", "--admin-token", TOKEN], &env, "").await?;
    assert_eq!(o.status.code(), Some(2));
    assert!(!text(&o.stderr).contains(TOKEN), "{}", text(&o.stderr));

    // Revoked through edge a's API: the socket on edge b closes with 4003 within a second, and the token is
    // refused everywhere from then on.
    let resp = http.delete(&show).bearer_auth(TOKEN).send().await?;
    assert_eq!(resp.status(), 200);
    let revoked: Value = resp.json().await?;
    assert_eq!(revoked["session_id"], id.as_str());
    assert_eq!(revoked["holder"], shown["connection"]);
    assert_eq!(revoked["refused_for_secs"], 900);
    assert_eq!(
        ws.ending(Duration::from_secs(1)).await,
        Some(Ending::Closed(4003))
    );
    for edge in [&a.base, &b.base] {
        let resp = http
            .post(format!("{edge}/v1/sessions/{id}/refresh"))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(resp.status(), 401, "{edge}");
        assert_eq!(
            handshake_status(&ws_url(edge, &token)).await?,
            Some(401),
            "{edge}"
        );
    }
    let (_, after) = get(&http, &show, Some(TOKEN)).await?;
    assert_eq!(after["status"], "closed");
    assert_eq!(after["connection"], Value::Null);
    assert_eq!(after["token_expires_at"], Value::Null);
    let _ = client.quit().await;
    Ok(())
}

/// Registers `n` sessions labelled `team` at `base`, 32 at a time; their ids.
async fn register_many(base: &str, team: &str, n: usize) -> anyhow::Result<HashSet<String>> {
    let http = reqwest::Client::new();
    let ids: Vec<anyhow::Result<(String, String)>> = futures::stream::iter(0..n)
        .map(|_| register(&http, base, json!({ "team": team })))
        // In flight at once: enough to keep two cores busy without a storm of connections.
        .buffer_unordered(32)
        .collect()
        .await;
    ids.into_iter().map(|r| r.map(|(id, _)| id)).collect()
}

/// Pages through `GET /v1/admin/sessions?<filter>` at `internal`, `limit` at a time: every id in order, and the
/// number of pages.
async fn page_through(
    internal: &str,
    filter: &str,
    limit: u32,
) -> anyhow::Result<(Vec<String>, usize)> {
    let http = reqwest::Client::new();
    let (mut ids, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let mut url = format!("{internal}/v1/admin/sessions?{filter}&limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = get(&http, &url, Some(TOKEN)).await?;
        anyhow::ensure!(status == 200, "{url}: {status} {page}");
        pages += 1;
        for s in page["sessions"].as_array().into_iter().flatten() {
            ids.push(s["session_id"].as_str().unwrap_or_default().to_owned());
        }
        match page["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok((ids, pages)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_labelled_sessions_are_listed_each_once() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let redis = Redis::start().await?;
    let edge = IsolatedEdge::start_with(&redis.url(), "edge-a", &edge_env()).await?;
    let started = Instant::now();
    let blue = register_many(&edge.base, "blue", 10_000).await?;
    let red = register_many(&edge.base, "red", 500).await?;
    tracing::info!(elapsed = ?started.elapsed(), "10,500 sessions registered over HTTP");
    assert_eq!((blue.len(), red.len()), (10_000, 500));

    let env = [
        ("CES_ADMIN_URL", edge.internal.as_str()),
        ("CES_ADMIN_TOKEN", TOKEN),
    ];
    let o = cesctl(
        &[
            "session",
            "list",
            "--label",
            "team=blue",
            "--limit",
            "500",
            "--json",
        ],
        &env,
        "",
    )
    .await?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let listed: Vec<String> = text(&o.stdout)
        .lines()
        .map(|l| {
            let s: Value = serde_json::from_str(l).expect("a JSON line");
            assert_eq!(s["labels"], json!({"team": "blue"}), "{l}");
            s["session_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(listed.len(), 10_000, "each session once");
    assert_eq!(listed.iter().cloned().collect::<HashSet<_>>(), blue);

    // The API itself: no id on two pages, every blue session, no red one.
    let (ids, pages) = page_through(&edge.internal, "label=team=blue", 500).await?;
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "no id repeats across pages");
    assert_eq!(unique, blue);
    assert!(pages >= 20, "{pages} pages of at most about 500");
    let (reds, _) = page_through(&edge.internal, "label=team=red&node=edge-a", 1000).await?;
    assert_eq!(reds.into_iter().collect::<HashSet<_>>(), red);
    let (none, _) = page_through(&edge.internal, "node=edge-z", 1000).await?;
    assert!(none.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_goes_through_every_primary_of_a_redis_cluster() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let cluster = ces_systest::cluster::RedisCluster::start().await?;
    let edge = IsolatedEdge::start_with(&cluster.url(), "edge-a", &edge_env()).await?;
    let blue = register_many(&edge.base, "blue", 300).await?;
    let (ids, pages) = page_through(&edge.internal, "label=team=blue", 50).await?;
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "no id repeats across pages");
    assert_eq!(unique, blue);
    let primaries = cluster.primaries().await?.len();
    assert!(
        pages > primaries,
        "{pages} pages over {primaries} primaries"
    );
    Ok(())
}
