//! Node heartbeats: every `CES_NODE_HEARTBEAT_MS` each edge writes its liveness to Redis, so an operator (the
//! admin API's `GET /v1/admin/nodes`, `cesctl nodes`) sees every edge from any of them.
//!
//! Two keys per beat: the node's score in [`NODES_KEY`] (`ces:nodes`, node → last beat in ms) and its info hash
//! ([`node_info_key`], `ces:node:{<node>}:info`: `connections`, `draining`, `started_ms`, `version`), which expires
//! [`ALIVE_BEATS`] intervals after the last beat. On a Redis Cluster the two live in different slots, so they are
//! written by separate single-key commands (pipelined: one round trip), never by one multi-key call. The writer
//! also trims members of `ces:nodes` that have not beaten for a day, so departed nodes that never said goodbye
//! (killed) do not pile up.
//!
//! A draining node (shutdown started) beats at once with `draining 1` and goes on beating until it stops; at the
//! end of a graceful stop it stops beating and removes itself ([`leave`]). A killed node just stops: it shows as
//! not alive after [`ALIVE_BEATS`] intervals, and disappears after a day.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ces_protocol::keys::{NODES_KEY, node_info_key};
use fred::clients::Client;
use fred::interfaces::{HashesInterface as _, KeysInterface as _, SortedSetsInterface as _};
use fred::types::Value;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::hub::Hub;

/// A node is alive while its last beat is younger than this many intervals; its info hash expires after as long.
pub const ALIVE_BEATS: u32 = 3;

/// Members of `ces:nodes` that have not beaten for this long are trimmed by the writers.
pub const FORGET_AFTER: Duration = Duration::from_secs(86_400);

/// What one beat says of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    /// Sockets the node holds.
    pub connections: usize,
    /// Shutdown has started.
    pub draining: bool,
    /// When the node started (ms since the Unix epoch).
    pub started_ms: i64,
    /// The edge's crate version.
    pub version: &'static str,
}

impl Beat {
    /// The info hash's fields.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("connections", self.connections.to_string()),
            ("draining", if self.draining { "1" } else { "0" }.to_owned()),
            ("started_ms", self.started_ms.to_string()),
            ("version", self.version.to_owned()),
        ]
    }
}

/// Whether a node whose last beat was at `last_beat_ms` is alive at `now_ms`, beating every `interval`.
pub fn alive(last_beat_ms: i64, now_ms: i64, interval: Duration) -> bool {
    let window = interval.as_millis() as i64 * i64::from(ALIVE_BEATS);
    now_ms - last_beat_ms < window
}

/// Writes one beat of `node` at `now_ms`: its score, its info hash (expiring [`ALIVE_BEATS`] intervals later), and
/// trims the nodes that have not beaten for [`FORGET_AFTER`].
pub async fn beat(
    redis: &Client,
    node: &str,
    beat: &Beat,
    now_ms: i64,
    interval: Duration,
) -> Result<(), fred::error::Error> {
    let info = node_info_key(node);
    let pipeline = redis.pipeline();
    let _: () = pipeline
        .zadd(NODES_KEY, None, None, false, false, (now_ms as f64, node))
        .await?;
    let forget_before = now_ms - FORGET_AFTER.as_millis() as i64;
    let _: () = pipeline
        .zremrangebyscore(NODES_KEY, f64::NEG_INFINITY, forget_before as f64)
        .await?;
    let _: () = pipeline.hset(&info, beat.fields()).await?;
    let expire_ms = interval.as_millis() as i64 * i64::from(ALIVE_BEATS);
    let _: () = pipeline.pexpire(&info, expire_ms.max(1), None).await?;
    for reply in pipeline.try_all::<Value>().await {
        reply?;
    }
    Ok(())
}

/// Removes `node` from `ces:nodes` and deletes its info hash: the end of a graceful stop.
pub async fn leave(redis: &Client, node: &str) -> Result<(), fred::error::Error> {
    let pipeline = redis.pipeline();
    let _: () = pipeline.zrem(NODES_KEY, node).await?;
    let _: () = pipeline.del(node_info_key(node)).await?;
    for reply in pipeline.try_all::<Value>().await {
        reply?;
    }
    Ok(())
}

/// One node as Redis has it: its last beat and what its info hash still holds (empty once it expired).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// The node id.
    pub node: String,
    /// Its last beat (ms since the Unix epoch).
    pub last_beat_ms: i64,
    /// Its info hash.
    pub info: HashMap<String, String>,
}

/// Every node in `ces:nodes`, sorted by id: one read of the set, then one pipelined read of the info hashes.
pub async fn list(redis: &Client) -> Result<Vec<NodeRecord>, fred::error::Error> {
    let members: Vec<(String, f64)> = redis
        .zrange(NODES_KEY, 0, -1, None, false, None, true)
        .await?;
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = redis.pipeline();
    for (node, _) in &members {
        let _: () = pipeline.hgetall(node_info_key(node)).await?;
    }
    let infos: Vec<HashMap<String, String>> = pipeline.all().await?;
    let mut nodes: Vec<NodeRecord> = members
        .into_iter()
        .zip(infos)
        .map(|((node, score), info)| NodeRecord {
            node,
            last_beat_ms: score as i64,
            info,
        })
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}

/// Beats for `node` every `interval` until `stop` fires (at the end of the node's graceful stop), then leaves.
/// When `draining` fires (shutdown started) it beats at once, saying so.
pub async fn keep_beating(
    redis: Client,
    hub: Arc<Hub>,
    node: String,
    interval: Duration,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let started_ms = ces_runtime::now_ms();
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut told_draining = false;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = draining.cancelled(), if !told_draining => told_draining = true,
            _ = every.tick() => {}
        }
        let now = Beat {
            connections: hub.local_sessions(),
            draining: draining.is_cancelled(),
            started_ms,
            version: env!("CARGO_PKG_VERSION"),
        };
        if let Err(e) = beat(&redis, &node, &now, ces_runtime::now_ms(), interval).await {
            debug!(error = %e, "node heartbeat failed");
        }
    }
    if let Err(e) = leave(&redis, &node).await {
        debug!(error = %e, "could not remove the node from ces:nodes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_alive_for_three_intervals() {
        let every = Duration::from_millis(5000);
        assert!(alive(100_000, 100_000, every));
        assert!(alive(100_000, 114_999, every));
        assert!(!alive(100_000, 115_000, every));
        assert!(!alive(0, 100_000, every));
        // A clock a little behind the writer's still counts as alive.
        assert!(alive(100_500, 100_000, every));
    }

    #[test]
    fn a_beat_says_everything_in_its_fields() {
        let b = Beat {
            connections: 7,
            draining: true,
            started_ms: 1_700_000_000_000,
            version: "0.1.0",
        };
        assert_eq!(
            b.fields(),
            vec![
                ("connections", "7".to_owned()),
                ("draining", "1".to_owned()),
                ("started_ms", "1700000000000".to_owned()),
                ("version", "0.1.0".to_owned()),
            ]
        );
        let idle = Beat {
            draining: false,
            ..b
        };
        assert_eq!(idle.fields()[1], ("draining", "0".to_owned()));
    }
}
