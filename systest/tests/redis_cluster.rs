//! CES on a real Redis Cluster of three primaries and three replicas (`cluster::RedisCluster`): sessions spread
//! over every shard, two edges, one ingest, all with a `redis-cluster://` URL.
//!
//! - Every client gets exactly `seq` 1..n, and sharded Pub/Sub keeps each session's messages on its shard: only
//!   the owning primary has a subscriber for the session's channel, no primary receives another shard's messages
//!   over the cluster bus, and each replica receives exactly its own primary's.
//! - A primary killed with SIGKILL under load: its replica takes over. Sessions on the other shards still get
//!   exactly 1..n; every session of the lost shard gets each event exactly once or is told (`epoch_changed`) of
//!   a range that holds every event it missed, and no `seq` is reused.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use ces_systest::client::{WsClient, register, ws_url};
use ces_systest::cluster::{RedisCluster, slot_of};
use ces_systest::{Broker, kafka, unique};
use common::exact::{Timeline, assert_exact_or_told, follow};
use common::{Service, paced_stream, start_edge, start_ingest};

/// Sessions per primary, at least.
const PER_SHARD: usize = 2;

/// The cluster, a broker topic, ingest and two edges on it.
struct ClusterStack {
    cluster: RedisCluster,
    broker: Broker,
    topic: String,
    ingest: Service,
    edges: Vec<Service>,
}

impl ClusterStack {
    async fn start() -> anyhow::Result<Self> {
        ces_systest::init_logs();
        let (cluster, broker) = tokio::try_join!(RedisCluster::start(), Broker::shared())?;
        let topic = unique("ces.events");
        let dlq = format!("{topic}.dlq");
        kafka::create_topics(&broker.bootstrap(), &[(&topic, 4), (&dlq, 1)]).await?;
        let url = cluster.url();
        let ingest = start_ingest(
            &url,
            &broker.bootstrap(),
            &topic,
            &dlq,
            &[
                ("CES_BREAKER_FAILURES", "2".into()),
                ("CES_BREAKER_OPEN_MS", "200".into()),
                ("CES_BREAKER_OPEN_MAX_MS", "500".into()),
            ],
        )
        .await?;
        let edges = vec![
            start_edge(&url, "edge-a", &[]).await?,
            start_edge(&url, "edge-b", &[]).await?,
        ];
        Ok(Self {
            cluster,
            broker,
            topic,
            ingest,
            edges,
        })
    }

    fn bases(&self) -> Vec<String> {
        self.edges.iter().map(|e| e.base.clone()).collect()
    }

    /// Registers sessions (alternating edges) until every primary owns at least [`PER_SHARD`]; returns each
    /// session's id, token, edge index and owning primary's port.
    async fn sessions_on_every_shard(&self) -> anyhow::Result<Vec<(String, String, usize, u16)>> {
        let http = reqwest::Client::new();
        let primaries = self.cluster.primaries().await?;
        let mut per_primary: HashMap<u16, usize> = HashMap::new();
        let mut out = Vec::new();
        for i in 0..200 {
            if primaries
                .iter()
                .all(|p| per_primary.get(&p.port).copied().unwrap_or(0) >= PER_SHARD)
            {
                return Ok(out);
            }
            let reg = register(&http, &self.edges[i % 2].base).await?;
            let owner = self
                .cluster
                .primary_of(&ces_protocol::keys::channel(&reg.session_id))
                .await?;
            *per_primary.entry(owner).or_default() += 1;
            out.push((reg.session_id, reg.token, i % 2, owner));
        }
        anyhow::bail!("200 sessions did not cover every shard: {per_primary:?}")
    }

    async fn stop(self) -> anyhow::Result<()> {
        for edge in self.edges {
            edge.stop().await?;
        }
        self.ingest.stop().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_streams_exactly_and_a_sessions_messages_stay_on_its_shard()
-> anyhow::Result<()> {
    const ROUNDS: u64 = 20;
    let stack = ClusterStack::start().await?;
    let sessions = stack.sessions_on_every_shard().await?;
    let mut clients = Vec::new();
    for (id, token, edge, _) in &sessions {
        let mut ws = WsClient::connect(&ws_url(&stack.edges[*edge].base, token)).await?;
        let welcome = ws.next_json(Duration::from_secs(5)).await?;
        anyhow::ensure!(welcome.is_some_and(|w| w["type"] == "welcome"));
        clients.push((id.clone(), ws));
    }
    let ids: Vec<String> = sessions.iter().map(|s| s.0.clone()).collect();
    paced_stream(
        kafka::producer(&stack.broker.bootstrap())?,
        stack.topic.clone(),
        ids,
        ROUNDS,
        Duration::from_millis(50),
    )
    .await??;
    for (id, ws) in &mut clients {
        let events = ws.events(ROUNDS as usize, Duration::from_secs(30)).await?;
        common::assert_numbered(id, &events, ROUNDS);
    }

    // Only the owning primary has a subscriber for a session's channel; every other node has none.
    let primaries = stack.cluster.primaries().await?;
    for (id, _, _, owner) in &sessions {
        let channel = ces_protocol::keys::channel(id);
        for port in stack.cluster.live_ports() {
            let expected = u64::from(port == *owner);
            assert_eq!(
                stack.cluster.shard_subscribers(port, &channel).await?,
                expected,
                "subscribers of {channel} (slot {}) on node {port}; owner {owner}",
                slot_of(&channel)
            );
        }
    }
    // Over the cluster bus, a shard's messages go to its replica only: no primary receives any, each replica
    // exactly its primary's events, and nothing uses classic (cluster-wide) Pub/Sub.
    for p in &primaries {
        let events_here = sessions.iter().filter(|s| s.3 == p.port).count() as u64 * ROUNDS;
        assert_eq!(
            stack
                .cluster
                .cluster_stat(p.port, "cluster_stats_messages_publishshard_received")
                .await?,
            0,
            "primary {} received another shard's messages",
            p.port
        );
        for replica in &p.replicas {
            assert_eq!(
                stack
                    .cluster
                    .cluster_stat(*replica, "cluster_stats_messages_publishshard_received")
                    .await?,
                events_here,
                "replica {replica} of primary {}",
                p.port
            );
        }
    }
    for port in stack.cluster.live_ports() {
        assert_eq!(
            stack
                .cluster
                .cluster_stat(port, "cluster_stats_messages_publish_received")
                .await?,
            0,
            "classic Pub/Sub reached node {port}"
        );
    }
    for (_, ws) in clients {
        ws.close().await;
    }

    // The start-up eviction check reads every primary: the one that may evict keys is named, the others pass.
    let evicting = primaries[1].port;
    stack
        .cluster
        .config_set(evicting, "maxmemory-policy", "allkeys-lru")
        .await?;
    let client = ces_runtime::redis::builder(&stack.cluster.url())?.build()?;
    fred::interfaces::ClientLike::init(&client).await?;
    let refused = ces_runtime::redis::check_eviction(&client, true)
        .await
        .expect_err("a primary that evicts is refused")
        .to_string();
    assert!(
        refused.contains(&format!(":{evicting}: allkeys-lru")),
        "{refused}"
    );
    for p in primaries.iter().filter(|p| p.port != evicting) {
        assert!(
            !refused.contains(&format!(":{}: ", p.port)),
            "only primary {evicting} is named: {refused}"
        );
    }
    let _ = fred::interfaces::ClientLike::quit(&client).await;
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_fails_over_and_every_client_ends_exact_or_told()
-> anyhow::Result<()> {
    const ROUNDS: u64 = 80;
    let mut stack = ClusterStack::start().await?;
    let sessions = stack.sessions_on_every_shard().await?;
    let bases = stack.bases();
    let mut followers = Vec::new();
    for (_, token, edge, _) in &sessions {
        let mut order = bases.clone();
        order.rotate_left(*edge);
        followers.push(tokio::spawn(follow(
            order,
            token.clone(),
            ROUNDS,
            Duration::from_secs(90),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = sessions.iter().map(|s| s.0.clone()).collect();
    let stream = paced_stream(
        kafka::producer(&stack.broker.bootstrap())?,
        stack.topic.clone(),
        ids,
        ROUNDS,
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let victim = sessions[0].3;
    stack.cluster.kill(victim).await?;
    stack.cluster.wait_failed_over().await?;
    stream.await??;

    let mut told_on_victim = 0;
    let mut on_victim = 0;
    for ((id, _, _, owner), follower) in sessions.iter().zip(followers) {
        let timeline: Timeline = follower.await??;
        let told = assert_exact_or_told(id, &timeline, ROUNDS);
        if *owner == victim {
            on_victim += 1;
            told_on_victim += usize::from(told);
        } else {
            // The other shards lost nothing: one epoch, exactly 1..n.
            assert!(
                !told,
                "session {id} on a surviving shard was told of a loss: {timeline:?}"
            );
            assert_eq!(
                timeline.ns(),
                (1..=ROUNDS).collect::<Vec<_>>(),
                "session {id}"
            );
        }
    }
    // The promoted replica is another Redis process: every session it serves now starts a new epoch.
    assert_eq!(
        told_on_victim, on_victim,
        "every session of the failed shard learned of the new epoch"
    );
    stack.stop().await
}
