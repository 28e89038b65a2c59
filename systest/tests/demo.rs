//! The demo page in a real browser: Debian's Chromium, driven by `clients/js/test/browser/demo.mjs`, opens
//! `/demo/` through HAProxy in front of two edges, registers its session and connects; events produced to Kafka
//! appear on the page; the edge holding the socket is killed (like SIGKILL: no close frame); the page resumes
//! through the load balancer on the other edge and shows exactly `seq` 1..10, no gap. Then a full-page screenshot
//! (the README's), and a reload that resumes from the persisted position: 1..13, nothing twice.
//!
//! It needs node, Chromium (`/usr/bin/chromium`, or `CES_CHROMIUM`) and the browser bundle with its dependencies
//! (`npm ci && npm run build` in clients/js); without any of them it fails saying which, never skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use ces_systest::haproxy::Haproxy;
use ces_systest::kafka::{self, Record};
use ces_systest::{Broker, Redis, unique};
use common::{IsolatedEdge, event_json, start_ingest};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How long one answer of the browser driver may take: Chromium's start on a busy 2-core machine included.
const ANSWER_WITHIN: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_shows_every_event_once_across_an_edge_kill() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let root = ces_systest::workspace_root();
    let js = root.join("clients/js");
    let demo = stage_demo_dir(&root)?;
    let chromium =
        std::env::var_os("CES_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
    ensure!(
        chromium.is_file(),
        "{} not found: the browser test needs Debian's Chromium (`apt-get install chromium`, or set CES_CHROMIUM)",
        chromium.display()
    );
    ensure!(
        js.join("node_modules/playwright-core").is_dir(),
        "{} has no node_modules/playwright-core: run `npm ci` in clients/js (make test does)",
        js.display()
    );

    let (redis, broker) = tokio::try_join!(Redis::start(), Broker::shared())?;
    let topic = unique("ces.events");
    let dlq = format!("{topic}.dlq");
    kafka::create_topics(&broker.bootstrap(), &[(&topic, 2), (&dlq, 1)]).await?;
    let ingest = start_ingest(&redis.url(), &broker.bootstrap(), &topic, &dlq, &[]).await?;
    let demo_dir = demo.path().display().to_string();
    let mut edges = [
        IsolatedEdge::start_with(
            &redis.url(),
            "edge-a",
            &[("CES_DEMO_DIR", demo_dir.clone())],
        )
        .await?,
        IsolatedEdge::start_with(
            &redis.url(),
            "edge-b",
            &[("CES_DEMO_DIR", demo_dir.clone())],
        )
        .await?,
    ];
    let backends: Vec<&str> = edges
        .iter()
        .map(|e| e.base.trim_start_matches("http://"))
        .collect();
    let proxy = Haproxy::start(&backends).await?;

    let mut browser = Browser::open(&js, &chromium, &format!("{}/demo/", proxy.base))?;
    let ready = browser.answer().await?;
    ensure!(ready["kind"] == "ready", "expected ready, got {ready}");
    let session = ready["session"]
        .as_str()
        .context("ready names the session")?
        .to_owned();

    let producer = kafka::producer(&broker.bootstrap())?;
    let produce = |from: u64, to: u64| {
        let records: Vec<Record> = (from..=to)
            .map(|n| {
                Record::keyed(
                    &session,
                    event_json(&session, "demo.hello", json!({ "n": n })),
                )
            })
            .collect();
        let (producer, topic) = (producer.clone(), topic.clone());
        async move { kafka::produce(&producer, &topic, &records).await }
    };

    produce(1, 5).await?;
    let first = browser.wait_for(5).await?;
    assert_eq!(first["seqs"], json!([1, 2, 3, 4, 5]), "{first}");
    let holder = first["node"]
        .as_str()
        .context("the page shows its node")?
        .to_owned();
    let doomed = edges
        .iter()
        .position(|e| e.node == holder)
        .with_context(|| format!("the page shows node {holder:?}, not one of the edges"))?;
    edges[doomed].kill();

    produce(6, 10).await?;
    let seen = browser.wait_for(10).await?;
    assert_eq!(seen["kind"], "seen", "{seen}");
    assert_eq!(
        seen["seqs"],
        json!((1..=10).collect::<Vec<u64>>()),
        "every event once, in order: {seen}"
    );
    assert_eq!(seen["gaps"], json!([]), "nothing reported lost: {seen}");
    assert_eq!(seen["state"], "open", "{seen}");
    assert_ne!(
        seen["node"],
        holder.as_str(),
        "resumed on the other edge: {seen}"
    );

    let shot = screenshot_path();
    browser
        .send(&json!({ "cmd": "screenshot", "path": shot }))
        .await?;
    let saved = browser.answer().await?;
    assert_eq!(saved["kind"], "saved", "{saved}");
    let size = std::fs::metadata(&shot)
        .with_context(|| format!("the screenshot {}", shot.display()))?
        .len();
    assert!(size > 20_000, "{} is only {size} bytes", shot.display());
    eprintln!("demo page screenshot: {}", shot.display());

    // A reload resumes where the page was: the position persisted in sessionStorage, the same session, the rows
    // shown again, and only the new events added (a fresh start would list 1..10 a second time).
    browser.send(&json!({ "cmd": "reload" })).await?;
    let reloaded = browser.answer().await?;
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");
    produce(11, 13).await?;
    let seen = browser.wait_for(13).await?;
    assert_eq!(
        seen["seqs"],
        json!((1..=13).collect::<Vec<u64>>()),
        "resumed after the reload, nothing twice: {seen}"
    );
    assert_eq!(seen["gaps"], json!([]), "{seen}");

    browser.finish().await?;
    ingest.stop().await?;
    Ok(())
}

/// A temporary `CES_DEMO_DIR`: the page and the client's browser bundle, as `make up` stages them.
fn stage_demo_dir(root: &Path) -> anyhow::Result<tempfile::TempDir> {
    let page = root.join("clients/demo/index.html");
    let bundle = root.join("clients/js/dist/ces-client.browser.js");
    ensure!(
        bundle.is_file(),
        "{} is missing: run `npm ci && npm run build` in clients/js (make test does)",
        bundle.display()
    );
    let dir = tempfile::tempdir()?;
    std::fs::copy(&page, dir.path().join("index.html"))
        .with_context(|| page.display().to_string())?;
    std::fs::copy(&bundle, dir.path().join("ces-client.js"))?;
    Ok(dir)
}

/// `$CARGO_TARGET_DIR/ces-demo.png`, kept after the run to look at; a temporary file without one.
fn screenshot_path() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_dir() => Path::new(&dir).join("ces-demo.png"),
        _ => std::env::temp_dir().join(format!("{}.png", unique("ces-demo"))),
    }
}

/// The browser driver (`demo.mjs`) and its JSON lines.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    fn open(js: &Path, chromium: &Path, url: &str) -> anyhow::Result<Self> {
        let script = js.join("test/browser/demo.mjs");
        let mut child = tokio::process::Command::new("node")
            .arg(&script)
            .arg(url)
            .env("CES_CHROMIUM", chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("running `node` (the browser test needs Node.js on PATH)")?;
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().context("driver stdout")?).lines();
        Ok(Self {
            child,
            stdin,
            lines,
        })
    }

    /// The driver's next answer; the page's console errors on the way are shown, not answers.
    async fn answer(&mut self) -> anyhow::Result<Value> {
        loop {
            let line = tokio::time::timeout(ANSWER_WITHIN, self.lines.next_line())
                .await
                .context("the browser driver did not answer")??
                .context("the browser driver exited")?;
            let value: Value =
                serde_json::from_str(&line).with_context(|| format!("driver said {line:?}"))?;
            match value["kind"].as_str() {
                Some("console") => eprintln!("browser: {}", value["text"]),
                Some("error") => bail!("the browser driver failed: {}", value["text"]),
                _ => return Ok(value),
            }
        }
    }

    async fn send(&mut self, command: &Value) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(format!("{command}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Waits until the page lists `events` events (at most 60 s) and returns what it shows.
    async fn wait_for(&mut self, events: usize) -> anyhow::Result<Value> {
        self.send(&json!({ "cmd": "wait", "events": events, "timeoutMs": 60_000 }))
            .await?;
        self.answer().await
    }

    /// Ends stdin, so the driver closes the browser, and checks that it exited cleanly.
    async fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = tokio::time::timeout(ANSWER_WITHIN, self.child.wait()).await??;
        ensure!(status.success(), "the browser driver exited with {status}");
        Ok(())
    }
}
