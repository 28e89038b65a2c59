//! The scenarios: set up the clients, drive the load, collect the figures into a [`Report`].

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{BrokerArgs, Cli, Common, IngestArgs, Scenario, StormAction, StormArgs};
use crate::clients::{self, Outcome, Session, Shared, Target};
use crate::procfs;
use crate::producer::{self, Plan, Produced};
use crate::report::Report;

/// Runs the scenario; the exit code is 2 when events were lost or duplicated, 0 otherwise.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let brokers = cli.scenario.measured_brokers().map(str::to_owned);
    let (mut report, out, name) = match cli.scenario {
        Scenario::Throughput(c) => (throughput(&c).await?, c.out.clone(), c.name.clone()),
        Scenario::Idle(c) => (idle(&c).await?, c.out.clone(), c.name.clone()),
        Scenario::Storm(s) => (
            storm(&s).await?,
            s.common.out.clone(),
            s.common.name.clone(),
        ),
        Scenario::Ingest(i) => (
            ingest(&i).await?,
            i.common.out.clone(),
            i.common.name.clone(),
        ),
        Scenario::RawWs(c) => (raw_ws(&c).await?, c.out.clone(), c.name.clone()),
        Scenario::Broker(b) => (
            broker(&b).await?,
            b.common.out.clone(),
            b.common.name.clone(),
        ),
        Scenario::Produce(i) => {
            produce_only(&i).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Some(brokers) = brokers {
        record_broker(&mut report, brokers).await;
    }
    let name = name.unwrap_or_else(|| report.scenario.clone());
    let files = report.write(&out, &name)?;
    println!("{}", report.summary());
    for f in files {
        println!("  wrote {}", f.display());
    }
    Ok(if report.lost > 0 || report.duplicated > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Puts the broker's own settings into `report`, read after the run so the broker is not asked while it is
/// measured. A broker that does not answer leaves them `null` with a warning: the run's figures stand without them.
async fn record_broker(report: &mut Report, brokers: String) {
    let read = tokio::task::spawn_blocking(move || {
        crate::broker::settings(&brokers, Duration::from_secs(10))
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r);
    match read {
        Ok(settings) => {
            report.broker_id = Some(settings.id);
            report.broker_count = Some(settings.nodes as u64);
            report.broker_config = Some(settings.config);
        }
        Err(e) => eprintln!("[broker] warning: the broker's settings are not in the report: {e:#}"),
    }
}

fn targets(c: &Common) -> anyhow::Result<Arc<[Target]>> {
    c.target.iter().map(|t| Target::parse(t)).collect()
}

/// The PIDs of the edges in `--edges` that are running on this machine.
fn edge_pids(c: &Common) -> Vec<u32> {
    let pids: Vec<u32> = c
        .edges
        .iter()
        .filter_map(|e| procfs::pid_listening_on(e))
        .collect();
    if pids.is_empty() {
        eprintln!(
            "[edges] no process listens on {}; edge memory and CPU are not reported",
            c.edges.join(", ")
        );
    }
    pids
}

/// Sessions with their sockets open.
struct Fleet {
    shared: Arc<Shared>,
    tasks: JoinSet<Outcome>,
    stop: CancellationToken,
    sessions: Vec<Session>,
}

impl Fleet {
    /// Registers `count` sessions and opens a socket for each; returns once every one is welcomed.
    async fn connect(c: &Common, count: u64) -> anyhow::Result<Self> {
        let sessions = register(c, count).await?;
        Self::open(c, sessions).await
    }

    /// Opens a socket for each session; returns once every one is welcomed.
    async fn open(c: &Common, sessions: Vec<Session>) -> anyhow::Result<Self> {
        let targets = targets(c)?;
        let count = sessions.len() as u64;
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let gate = Arc::new(tokio::sync::Semaphore::new(c.connect_concurrency as usize));
        let mut tasks = JoinSet::new();
        for (i, s) in sessions.iter().enumerate() {
            tasks.spawn(clients::socket_task(
                s.clone(),
                i as u64,
                targets.clone(),
                c.per_source,
                shared.clone(),
                gate.clone(),
                stop.clone(),
            ));
        }
        let fleet = Self {
            shared,
            tasks,
            stop,
            sessions,
        };
        let started = Instant::now();
        let deadline = Duration::from_secs(60 + count / 200);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_print = Instant::now();
        loop {
            tick.tick().await;
            let up = fleet.shared.connected.load(Ordering::Relaxed);
            if up >= count {
                break;
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                eprintln!(
                    "[connect] {up}/{count} welcomed, {} refused so far",
                    fleet.shared.refused.load(Ordering::Relaxed)
                );
                last_print = Instant::now();
            }
            if started.elapsed() > deadline {
                fleet.stop.cancel();
                bail!("only {up} of {count} sockets were welcomed within {deadline:?}");
            }
        }
        eprintln!(
            "[connect] {count} sockets welcomed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(fleet)
    }

    /// Closes every socket and returns what each received.
    async fn finish(mut self) -> Vec<Outcome> {
        self.stop.cancel();
        let mut outcomes = Vec::with_capacity(self.sessions.len());
        while let Some(res) = self.tasks.join_next().await {
            if let Ok(o) = res {
                outcomes.push(o);
            }
        }
        outcomes
    }
}

/// Registers `count` sessions over the targets in turn.
async fn register(c: &Common, count: u64) -> anyhow::Result<Vec<Session>> {
    let started = Instant::now();
    let sessions = clients::register_all(
        &targets(c)?,
        count,
        64,
        Duration::from_secs(60 + count / 100),
    )
    .await?;
    eprintln!(
        "[register] {} sessions in {:.1} s",
        sessions.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(sessions)
}

/// A producer thread over the fleet's sessions.
struct Producing {
    stats: Arc<Produced>,
    handle: std::thread::JoinHandle<anyhow::Result<()>>,
    started: Instant,
    stop: Arc<AtomicBool>,
}

fn start_producer(c: &Common, sessions: &[String], limit: Option<u64>, rate: u64) -> Producing {
    let plan = Plan {
        brokers: c.brokers.clone(),
        topic: c.topic.clone(),
        sessions: sessions.iter().cloned().collect(),
        rate,
        duration: Duration::from_secs(if limit.is_some() { 600 } else { c.duration }),
        limit,
        payload: c.payload as usize,
    };
    let stats = Arc::new(Produced::new(sessions.len()));
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (stats, stop) = (stats.clone(), stop.clone());
        std::thread::spawn(move || producer::run(&plan, &stats, &stop))
    };
    Producing {
        stats,
        handle,
        started: Instant::now(),
        stop,
    }
}

/// Prints a progress line every second until `done`, and waits for the producer; then waits up to `settle`
/// for deliveries to catch up with what the broker acknowledged. Returns when the last delivery happened.
async fn drive(
    shared: &Shared,
    producing: &Producing,
    settle: Duration,
) -> anyhow::Result<Instant> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_sent, mut last_delivered) = (0u64, 0u64);
    while !producing.handle.is_finished() {
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep(Duration::from_millis(50)) => continue,
        }
        let sent = producing.stats.sent.load(Ordering::Relaxed);
        let delivered = shared.delivered.load(Ordering::Relaxed);
        eprintln!(
            "[{:>4.0}s] produced {sent} (+{}/s)  delivered {delivered} (+{}/s)  connected {}  p99 {}",
            producing.started.elapsed().as_secs_f64(),
            sent - last_sent,
            delivered - last_delivered,
            shared.connected.load(Ordering::Relaxed),
            shared
                .recorder
                .last_second_p99_ms()
                .map_or("-".to_owned(), |p| format!("{p:.1} ms")),
        );
        (last_sent, last_delivered) = (sent, delivered);
    }
    let until = Instant::now() + settle;
    let mut last_change = Instant::now();
    let mut seen = shared.delivered.load(Ordering::Relaxed);
    let acked = producing.stats.acked_total();
    while Instant::now() < until {
        let d = shared.delivered.load(Ordering::Relaxed);
        if d != seen {
            seen = d;
            last_change = Instant::now();
        }
        if d >= acked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(last_change)
}

fn finish_producer(producing: Producing) -> anyhow::Result<Arc<Produced>> {
    producing.stop.store(true, Ordering::Relaxed);
    producing
        .handle
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    Ok(producing.stats)
}

/// Fills the delivery figures of `report` from the producer's acknowledgements and the clients' trackers.
fn tally(report: &mut Report, produced: &Produced, outcomes: &[Outcome], sessions: &[Session]) {
    report.produced = produced.acked_total();
    report.produce_errors = produced.errors.load(Ordering::Relaxed);
    let delivered: u64 = outcomes.iter().map(|o| o.tracker.distinct).sum();
    report.delivered = delivered;
    report.duplicated = outcomes.iter().map(|o| o.tracker.duplicated).sum();
    report.out_of_order = outcomes.iter().map(|o| o.tracker.out_of_order).sum();
    report.lost = report.produced.saturating_sub(delivered);
    if outcomes.len() != sessions.len() {
        report.notes.push(format!(
            "{} of {} socket tasks did not report",
            sessions.len() - outcomes.len(),
            sessions.len()
        ));
    }
}

fn fill_latency(report: &mut Report, shared: &Shared) {
    report.latency = shared.recorder.quantiles();
    report.seconds = shared.recorder.seconds();
    report.cdf = shared.recorder.cdf();
    report.disconnects = shared.disconnects.load(Ordering::Relaxed);
    report.refused = shared.refused.load(Ordering::Relaxed);
    report.resumed_lost = shared.resumed_lost.load(Ordering::Relaxed);
}

async fn throughput(c: &Common) -> anyhow::Result<Report> {
    let mut report = Report::new("throughput");
    let pids = edge_pids(c);
    let fleet = Fleet::connect(c, c.sessions).await?;
    let ids: Vec<String> = fleet.sessions.iter().map(|s| s.id.clone()).collect();
    let cpu = procfs::cpu_mark(&pids);
    let stack = stack_processes(c, &pids);
    let stack_cpu: Vec<_> = stack.iter().map(|(_, p)| procfs::cpu_mark(p)).collect();
    let stack_sched: Vec<_> = stack.iter().map(|(_, p)| procfs::sched_mark(p)).collect();
    let hops_before = hop_totals(c).await;
    let producing = start_producer(c, &ids, None, c.rate);
    let started = producing.started;
    let last = drive(&fleet.shared, &producing, Duration::from_secs(c.settle)).await?;
    report.hops_mean_ms = hop_means(&hops_before, &hop_totals(c).await);
    report.cpu_percent = stack
        .iter()
        .zip(&stack_cpu)
        .map(|((name, p), mark)| (name.clone(), procfs::cpu_percent_since(mark, p)))
        .collect();
    for ((name, p), mark) in stack.iter().zip(&stack_sched) {
        if let Some(used) = procfs::sched_since(mark, p) {
            report
                .runq_wait_percent
                .insert(name.clone(), used.runq_wait_percent);
            report
                .timeslices_per_s
                .insert(name.clone(), used.timeslices_per_s);
        }
    }
    let still_arriving = last.elapsed() < Duration::from_millis(200);
    let produce_secs = producing.started.elapsed().as_secs_f64();
    report.edge_cpu_percent = (!pids.is_empty()).then(|| procfs::cpu_percent_since(&cpu, &pids));
    report.edge_rss_bytes = (!pids.is_empty()).then(|| procfs::total_rss(&pids));
    let produced = finish_producer(producing)?;
    let shared = fleet.shared.clone();
    let sessions = fleet.sessions.clone();
    let outcomes = fleet.finish().await;
    report.sessions = c.sessions;
    report.connections = c.sessions;
    report.rate_target = c.rate;
    report.duration_s = c.duration as f64;
    tally(&mut report, &produced, &outcomes, &sessions);
    fill_latency(&mut report, &shared);
    report.produced_per_s = report.produced as f64 / (c.duration as f64).min(produce_secs);
    report.delivered_per_s =
        report.delivered as f64 / last.duration_since(started).as_secs_f64().max(1e-3);
    if report.lost > 0 && still_arriving {
        report.notes.push(format!(
            "events were still arriving when the {} s settle window closed: `lost` counts what the pipeline had \
             not delivered by then (a backlog still in Kafka), not what it dropped",
            c.settle
        ));
    }
    Ok(report)
}

async fn idle(c: &Common) -> anyhow::Result<Report> {
    let mut report = Report::new("idle");
    let conns = c.connections();
    let pids = edge_pids(c);
    let sessions = register(c, conns).await?;
    // Measured after registration: what the sockets cost, not what the REST calls left in the allocator.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = procfs::total_rss(&pids);
    let fleet = Fleet::open(c, sessions).await?;
    // Let the set-up's transient buffers go before measuring what the held sockets cost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = procfs::cpu_mark(&pids);
    let hold = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    while hold.elapsed() < Duration::from_secs(c.duration) {
        tick.tick().await;
        eprintln!(
            "[hold {:>3.0}s] connected {}  edge RSS {:.1} MiB",
            hold.elapsed().as_secs_f64(),
            fleet.shared.connected.load(Ordering::Relaxed),
            procfs::total_rss(&pids) as f64 / 1048576.0
        );
    }
    let after = procfs::total_rss(&pids);
    report.edge_cpu_percent = (!pids.is_empty()).then(|| procfs::cpu_percent_since(&cpu, &pids));
    let still = fleet.shared.connected.load(Ordering::Relaxed);
    let shared = fleet.shared.clone();
    fleet.finish().await;
    report.sessions = conns;
    report.connections = still;
    report.duration_s = c.duration as f64;
    if !pids.is_empty() {
        report.edge_rss_bytes = Some(after);
        report.rss_per_conn_bytes = Some(after.saturating_sub(before) / conns.max(1));
        report.notes.push(format!(
            "edge RSS {:.1} MiB before the connections, {:.1} MiB while holding them",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        ));
    }
    fill_latency(&mut report, &shared);
    if still < conns {
        report
            .notes
            .push(format!("{} connections dropped while held", conns - still));
    }
    Ok(report)
}

async fn storm(s: &StormArgs) -> anyhow::Result<Report> {
    let c = &s.common;
    let mut report = Report::new("storm");
    let victim = c.edges.first().context("--edges names no edge")?;
    let victim_pid = procfs::pid_listening_on(victim).with_context(|| {
        format!("no process listens on {victim}; it is the edge the storm stops")
    })?;
    let survivors: Vec<u32> = c.edges[1..]
        .iter()
        .filter_map(|e| procfs::pid_listening_on(e))
        .collect();
    let conns = c.connections();
    let fleet = Fleet::connect(c, conns).await?;
    let ids: Vec<String> = fleet.sessions.iter().map(|s| s.id.clone()).collect();
    let producing = start_producer(c, &ids, None, c.rate);
    let shared = fleet.shared.clone();
    let kill_after = Duration::from_secs(s.kill_after.min(c.duration.saturating_sub(1)));
    let killer = {
        let shared = shared.clone();
        async move {
            tokio::time::sleep(kill_after).await;
            let signal = match s.action {
                StormAction::Kill => "-KILL",
                StormAction::Drain => "-TERM",
            };
            let before = shared.connected.load(Ordering::Relaxed);
            eprintln!(
                "[storm] kill {signal} {victim_pid} (the edge on {victim}); {before} sockets connected"
            );
            let status = std::process::Command::new("kill")
                .args([signal, &victim_pid.to_string()])
                .status();
            (Instant::now(), status)
        }
    };
    let (driven, (killed_at, status)) = tokio::join!(
        drive(&shared, &producing, Duration::from_secs(c.settle)),
        killer
    );
    if !status.as_ref().is_ok_and(|s| s.success()) {
        bail!("could not signal the edge {victim_pid}: {status:?}");
    }
    driven?;
    // Every session must be back before the run counts what it received.
    let until = Instant::now() + Duration::from_secs(c.settle);
    while shared.connected.load(Ordering::Relaxed) < conns && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let produced = finish_producer(producing)?;
    report.edge_rss_bytes = (!survivors.is_empty()).then(|| procfs::total_rss(&survivors));
    let sessions = fleet.sessions.clone();
    let connected = shared.connected.load(Ordering::Relaxed);
    let outcomes = fleet.finish().await;
    report.sessions = conns;
    report.connections = conns;
    report.rate_target = c.rate;
    report.duration_s = c.duration as f64;
    tally(&mut report, &produced, &outcomes, &sessions);
    fill_latency(&mut report, &shared);
    let resumes = shared.resumes.lock().expect("resumes lock").clone();
    report.resumed = Some(resumes.len() as u64);
    report.resume_s = resumes
        .iter()
        .max()
        .map(|last| last.saturating_duration_since(killed_at).as_secs_f64());
    report.delivered_per_s = report.delivered as f64 / c.duration as f64;
    report.produced_per_s = report.produced as f64 / c.duration as f64;
    if connected < conns {
        report.notes.push(format!(
            "{} sessions were not connected again within --settle {} s",
            conns - connected,
            c.settle
        ));
    }
    Ok(report)
}

/// Sum of every sample of `metric` in a Prometheus text exposition.
fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The stack's processes on this machine, found by the ports they listen on, with the edges' `edge_pids` and this
/// process itself: whose CPU, and waiting for one, the run used.
fn stack_processes(c: &Common, edges: &[u32]) -> Vec<(String, Vec<u32>)> {
    let addr_of_url = |u: &str| {
        let rest = u.split_once("://").map_or(u, |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_owned()
    };
    let mut found = vec![
        (
            "broker",
            c.brokers.split(',').next().unwrap_or_default().to_owned(),
        ),
        ("redis", c.redis.clone()),
        ("ingest", addr_of_url(&c.ingest_metrics)),
    ]
    .into_iter()
    .filter_map(|(name, addr)| Some((name.to_owned(), vec![procfs::pid_listening_on(&addr)?])))
    .collect::<Vec<_>>();
    if !edges.is_empty() {
        found.push(("edges".to_owned(), edges.to_vec()));
    }
    found.push(("loadtest".to_owned(), vec![std::process::id()]));
    found
}

/// Per hop, `(sum of seconds, count)` of `ces_hop_latency_seconds` and `ces_e2e_latency_seconds`, added up over
/// ingest and the edges (whichever answer).
async fn hop_totals(c: &Common) -> BTreeMap<String, (f64, f64)> {
    let http = reqwest::Client::new();
    let mut urls = vec![c.ingest_metrics.clone()];
    urls.extend(c.edges.iter().map(|e| format!("http://{e}/metrics")));
    let mut totals = BTreeMap::new();
    for url in urls {
        let Ok(resp) = http.get(&url).timeout(Duration::from_secs(5)).send().await else {
            continue;
        };
        let Ok(text) = resp.text().await else {
            continue;
        };
        for (hop, sum, count) in parse_hops(&text) {
            let t = totals.entry(hop).or_insert((0.0, 0.0));
            t.0 += sum;
            t.1 += count;
        }
    }
    totals
}

/// `(hop, sum, count)` from a Prometheus exposition: `ces_hop_latency_seconds_{sum,count}{hop="..."}` and the
/// end-to-end histogram as hop `e2e`.
fn parse_hops(text: &str) -> Vec<(String, f64, f64)> {
    let mut found: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (hop, is_sum) = if let Some(rest) = name.strip_prefix("ces_hop_latency_seconds_") {
            let (kind, labels) = rest.split_once('{').unwrap_or((rest, ""));
            let Some(hop) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("hop=\""))
                .map(|h| h.trim_end_matches('}').trim_end_matches('"'))
            else {
                continue;
            };
            match kind {
                "sum" => (hop.to_owned(), true),
                "count" => (hop.to_owned(), false),
                _ => continue,
            }
        } else if name == "ces_e2e_latency_seconds_sum" {
            ("e2e".to_owned(), true)
        } else if name == "ces_e2e_latency_seconds_count" {
            ("e2e".to_owned(), false)
        } else {
            continue;
        };
        let e = found.entry(hop).or_insert((0.0, 0.0));
        if is_sum {
            e.0 += value;
        } else {
            e.1 += value;
        }
    }
    found.into_iter().map(|(h, (s, c))| (h, s, c)).collect()
}

/// Mean per hop (ms) of what was observed between two [`hop_totals`].
fn hop_means(
    before: &BTreeMap<String, (f64, f64)>,
    after: &BTreeMap<String, (f64, f64)>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(hop, &(sum, count))| {
            let (s0, c0) = before.get(hop).copied().unwrap_or_default();
            (count > c0).then(|| (hop.clone(), (sum - s0) / (count - c0) * 1000.0))
        })
        .collect()
}

async fn scrape(http: &reqwest::Client, url: &str, metric: &str) -> anyhow::Result<f64> {
    let text = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .text()
        .await?;
    Ok(metric_sum(&text, metric))
}

fn ingest_sessions(c: &Common) -> Vec<String> {
    (0..c.sessions).map(|i| format!("lt-ingest-{i}")).collect()
}

async fn produce_only(i: &IngestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let producing = start_producer(&i.common, &ingest_sessions(&i.common), Some(i.count), 0);
    let stats = tokio::task::spawn_blocking(move || finish_producer_wait(producing)).await??;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "produced {} records to {} in {secs:.1} s ({:.0}/s), {} refused",
        stats.acked_total(),
        i.common.topic,
        stats.acked_total() as f64 / secs,
        stats.errors.load(Ordering::Relaxed)
    );
    Ok(())
}

fn finish_producer_wait(producing: Producing) -> anyhow::Result<Arc<Produced>> {
    producing
        .handle
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    Ok(producing.stats)
}

async fn broker(b: &BrokerArgs) -> anyhow::Result<Report> {
    let c = &b.common;
    let mut report = Report::new("broker");
    let consumer = {
        let (brokers, topic, wait) = (c.brokers.clone(), c.topic.clone(), b.fetch_wait_ms);
        tokio::task::spawn_blocking(move || crate::broker::subscribe(&brokers, &topic, wait))
            .await??
    };
    let recorder = Arc::new(crate::stats::Recorder::new());
    let running = crate::broker::spawn(consumer, recorder.clone());
    let sessions: Vec<String> = (0..c.sessions).map(|i| format!("lt-broker-{i}")).collect();
    let producing = start_producer(c, &sessions, None, c.rate);
    let started = producing.started;
    let produced = tokio::task::spawn_blocking(move || finish_producer_wait(producing)).await??;
    let produce_secs = started.elapsed().as_secs_f64();
    let acked = produced.acked_total();
    let deadline = Instant::now() + Duration::from_secs(c.settle);
    while running.consumed.records.load(Ordering::Relaxed) < acked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read_secs = started.elapsed().as_secs_f64();
    let consumed = running.stop()?;
    let records = consumed.records.load(Ordering::Relaxed);
    report.sessions = c.sessions;
    report.rate_target = c.rate;
    report.duration_s = c.duration as f64;
    report.produced = acked;
    report.produce_errors = produced.errors.load(Ordering::Relaxed);
    report.delivered = records;
    report.lost = acked.saturating_sub(records);
    report.produced_per_s = acked as f64 / produce_secs.max(1e-3);
    report.delivered_per_s = records as f64 / read_secs.max(1e-3);
    report.latency = recorder.quantiles();
    report.seconds = recorder.seconds();
    report.cdf = recorder.cdf();
    report.notes.push(format!(
        "a bare consumer (fetch.wait.max.ms={}) read {records} records from {}; {} without a producer clock",
        b.fetch_wait_ms,
        c.topic,
        consumed.unparsed.load(Ordering::Relaxed)
    ));
    Ok(report)
}

const INGEST_RECORDS: &str = "ces_ingest_records_total";

async fn ingest(i: &IngestArgs) -> anyhow::Result<Report> {
    let c = &i.common;
    let mut report = Report::new("ingest");
    let http = reqwest::Client::new();
    let baseline = if i.prefilled {
        0.0
    } else {
        scrape(&http, &i.common.ingest_metrics, INGEST_RECORDS).await?
    };
    let target = baseline + i.count as f64;
    // Redis's own time per publish function call, over this run: where ingest's rate goes.
    if let Err(e) = redis_cli(&i.common.redis, &["CONFIG", "RESETSTAT"]) {
        report.notes.push(format!("redis-cli not run: {e:#}"));
    }
    let producing =
        (!i.prefilled).then(|| start_producer(c, &ingest_sessions(c), Some(i.count), 0));
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, f64)> = None;
    let mut last_print = Instant::now();
    let done = loop {
        let now_count = scrape(&http, &i.common.ingest_metrics, INGEST_RECORDS).await?;
        let now = Instant::now();
        if first.is_none() && now_count > baseline {
            first = Some((now, now_count));
        }
        if now_count >= target {
            break now;
        }
        if now > deadline {
            bail!(
                "ingest consumed {} of {} records within 600 s",
                now_count - baseline,
                i.count
            );
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "[ingest] {:.0}/{} records consumed",
                now_count - baseline,
                i.count
            );
            last_print = now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if let Some(p) = producing {
        let stats = tokio::task::spawn_blocking(move || finish_producer_wait(p)).await??;
        report.produced = stats.acked_total();
        report.produce_errors = stats.errors.load(Ordering::Relaxed);
        report.notes.push(
            "records were produced while ingest consumed them: the rate is the slower of the two"
                .into(),
        );
    } else {
        report.produced = i.count;
    }
    let (t0, c0) = first.context("ingest never moved")?;
    let secs = done.duration_since(t0).as_secs_f64().max(1e-3);
    let rate = (target - c0) / secs;
    report.sessions = c.sessions;
    report.duration_s = secs;
    report.delivered = i.count;
    report.delivered_per_s = rate;
    report.notes.push(format!(
        "ingest consumed {:.0} records in {secs:.2} s after its counter first moved",
        target - c0
    ));
    if let Ok(stats) = redis_cli(&i.common.redis, &["INFO", "commandstats"])
        && let Some((calls, usec)) = parse_fcall_stats(&stats)
    {
        report.redis_usec_per_fcall = Some(usec);
        report.notes.push(format!(
            "redis: {calls} FCALL at {usec:.2} us each (INFO commandstats)"
        ));
    }
    match redis_benchmark_publish(&i.common.redis, 150 + c.payload as usize) {
        Ok(raw) => {
            report.raw_limit_per_s = Some(raw);
            report.ratio_to_raw = Some(rate / raw);
        }
        Err(e) => report.notes.push(format!("redis-benchmark not run: {e:#}")),
    }
    Ok(report)
}

/// Pipelined PUBLISH rate of the Redis at `addr`, by `redis-benchmark` (64 commands per pipeline, 16 clients).
fn redis_benchmark_publish(addr: &str, size: usize) -> anyhow::Result<f64> {
    let (host, port) = addr.rsplit_once(':').context("--redis must be host:port")?;
    let payload = "x".repeat(size);
    eprintln!("[redis-benchmark] -P 64 -c 16 -n 2000000 PUBLISH ({size}-byte messages)");
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-h", host, "-p", port, "-P", "64", "-c", "16", "-n", "2000000", "-q",
        ])
        .args(["PUBLISH", "ces:loadtest:raw", &payload])
        .output()
        .context("run redis-benchmark (Debian package redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_redis_benchmark(&text)
        .with_context(|| format!("no rate in redis-benchmark output: {text}"))
}

/// Runs `redis-cli` against `addr` (host:port) and returns what it printed.
fn redis_cli(addr: &str, args: &[&str]) -> anyhow::Result<String> {
    let (host, port) = addr.rsplit_once(':').context("--redis must be host:port")?;
    let out = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(args)
        .output()
        .context("run redis-cli (Debian package redis-tools)")?;
    anyhow::ensure!(out.status.success(), "redis-cli {args:?} failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `(calls, usec_per_call)` of FCALL from `INFO commandstats`.
fn parse_fcall_stats(text: &str) -> Option<(u64, f64)> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:"))?;
    let field = |name: &str| {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    Some((
        field("calls")?.parse().ok()?,
        field("usec_per_call")?.trim().parse().ok()?,
    ))
}

fn parse_redis_benchmark(text: &str) -> Option<f64> {
    // `-q` prints progress with carriage returns, then `<command>: 123456.79 requests per second, p50=...`.
    let line = text.rsplit('\r').next()?;
    let before = line.split(" requests per second").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

/// Frame the raw push sends: the size of a CES event frame with the same padding.
fn raw_frame(payload: usize) -> String {
    format!(
        r#"{{"type":"event","seq":1,"id":"ev_0123456789abcdef0123456789abcdef","event":"load.tick","data":{{"n":1,"t":{},"p":"{}"}}}}"#,
        crate::now_micros(),
        "x".repeat(payload)
    )
}

async fn raw_ws(c: &Common) -> anyhow::Result<Report> {
    let mut report = Report::new("raw-ws");
    let conns = c.connections();
    // Both ends of every connection live in this process.
    if let Some(limit) = procfs::open_files_limit()
        && 2 * conns + 64 > limit
    {
        bail!(
            "raw-ws holds both ends of each connection: {conns} connections need {} file descriptors, the limit \
             is {limit} (ulimit -n)",
            2 * conns + 64
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let go = CancellationToken::new();
    let frame = tokio_tungstenite::tungstenite::Utf8Bytes::from(raw_frame(c.payload as usize));
    let server = {
        let (stop, go) = (stop.clone(), go.clone());
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        // Out of file descriptors: wait instead of spinning.
                        Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
                    },
                    () = stop.cancelled() => break,
                };
                let (stop, go, frame) = (stop.clone(), go.clone(), frame.clone());
                conns.spawn(async move {
                    let config = clients::ws_config().write_buffer_size(16 * 1024);
                    let Ok(mut ws) =
                        tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                    else {
                        return;
                    };
                    go.cancelled().await;
                    // As the edge writes: up to 64 frames fed, then one flush.
                    while !stop.is_cancelled() {
                        for _ in 0..64 {
                            if ws
                                .feed(tokio_tungstenite::tungstenite::Message::Text(frame.clone()))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        if ws.flush().await.is_err() {
                            return;
                        }
                    }
                    let _ = ws.close(None).await;
                });
            }
            conns.shutdown().await;
        })
    };
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(c.connect_concurrency as usize));
    let connected = Arc::new(AtomicU64::new(0));
    for i in 0..conns {
        let (received, stop, gate, connected) = (
            received.clone(),
            stop.clone(),
            gate.clone(),
            connected.clone(),
        );
        let per_source = c.per_source;
        readers.spawn(async move {
            let ws = {
                let _permit = gate.acquire().await;
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(std::net::SocketAddr::new(
                    clients::source_addr(i, per_source),
                    0,
                ))?;
                let stream = socket.connect(addr).await?;
                let (ws, _) = tokio_tungstenite::client_async_with_config(
                    format!("ws://{addr}/"),
                    stream,
                    Some(clients::ws_config()),
                )
                .await?;
                ws
            };
            connected.fetch_add(1, Ordering::Relaxed);
            let (_, mut read) = ws.split();
            loop {
                tokio::select! {
                    msg = read.next() => match msg {
                        Some(Ok(_)) => { received.fetch_add(1, Ordering::Relaxed); }
                        _ => break,
                    },
                    () = stop.cancelled() => break,
                }
            }
            anyhow::Ok(())
        });
    }
    let until = Instant::now() + Duration::from_secs(60 + conns / 200);
    while connected.load(Ordering::Relaxed) < conns {
        if Instant::now() > until {
            stop.cancel();
            bail!(
                "only {} of {conns} raw connections opened",
                connected.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "[raw-ws] {conns} connections open; pushing for {} s",
        c.duration
    );
    go.cancel();
    let start = Instant::now();
    let base = received.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = base;
    while start.elapsed() < Duration::from_secs(c.duration) {
        tick.tick().await;
        let now = received.load(Ordering::Relaxed);
        eprintln!(
            "[raw-ws {:>3.0}s] +{}/s",
            start.elapsed().as_secs_f64(),
            now - last
        );
        last = now;
    }
    let total = received.load(Ordering::Relaxed) - base;
    let secs = start.elapsed().as_secs_f64();
    stop.cancel();
    readers.shutdown().await;
    let _ = server.await;
    report.sessions = conns;
    report.connections = conns;
    report.duration_s = secs;
    report.delivered = total;
    report.delivered_per_s = total as f64 / secs;
    report.raw_limit_per_s = Some(report.delivered_per_s);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_metric_over_its_labels() {
        let text = "# HELP x\nces_ingest_records_total{topic=\"a\"} 3\nces_ingest_records_total{topic=\"b\"} 4\n\
                    ces_ingest_records_total_other 9\n";
        assert_eq!(metric_sum(text, "ces_ingest_records_total"), 7.0);
        assert_eq!(metric_sum("ces_x 1\n", "ces_ingest_records_total"), 0.0);
    }

    #[test]
    fn reads_redis_benchmark_quiet_output() {
        let out = "PUBLISH ces:loadtest:raw xx: rps=0.0 (overall: nan) avg_msec=nan\r\
                   PUBLISH ces:loadtest:raw xx: 812345.69 requests per second, p50=0.231 msec\n";
        assert_eq!(parse_redis_benchmark(out), Some(812345.69));
    }

    #[test]
    fn hop_means_come_from_the_sums_and_counts_observed_in_between() {
        let before = "ces_hop_latency_seconds_sum{hop=\"kafka_to_ingest\"} 1.0\n\
                      ces_hop_latency_seconds_count{hop=\"kafka_to_ingest\"} 10\n\
                      ces_hop_latency_seconds_bucket{hop=\"kafka_to_ingest\",le=\"0.005\"} 3\n";
        let after = "ces_hop_latency_seconds_sum{hop=\"kafka_to_ingest\"} 1.5\n\
                     ces_hop_latency_seconds_count{hop=\"kafka_to_ingest\"} 110\n\
                     ces_e2e_latency_seconds_sum 0.4\nces_e2e_latency_seconds_count 100\n";
        let totals = |t: &str| -> BTreeMap<String, (f64, f64)> {
            parse_hops(t)
                .into_iter()
                .map(|(h, s, c)| (h, (s, c)))
                .collect()
        };
        let means = hop_means(&totals(before), &totals(after));
        assert_eq!(means.len(), 2);
        assert!((means["kafka_to_ingest"] - 5.0).abs() < 1e-9, "{means:?}");
        assert!((means["e2e"] - 4.0).abs() < 1e-9, "{means:?}");
    }

    #[test]
    fn reads_the_fcall_line_of_commandstats() {
        let out = "# Commandstats\r\ncmdstat_publish:calls=3,usec=9,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\
                   cmdstat_fcall:calls=1456,usec=26578,usec_per_call=18.25,rejected_calls=0,failed_calls=1\r\n";
        assert_eq!(parse_fcall_stats(out), Some((1456, 18.25)));
        assert_eq!(parse_fcall_stats("# Commandstats\r\n"), None);
    }

    #[test]
    fn raw_frames_are_the_size_of_event_frames() {
        let f = raw_frame(64);
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["type"], "event");
        assert!(f.len() > 64 + 100);
    }
}
