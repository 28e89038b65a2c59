//! A real Redis Cluster for a test: three primaries and three replicas, each a `redis-server` on free loopback
//! ports (client and cluster bus), created with `redis-cli --cluster create --cluster-replicas 1` and killed when
//! dropped. A short node timeout (1 s) makes a killed primary's replica take over within seconds.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use tokio::process::{Child, Command};

use crate::{find_binary, free_port, ping, wait_for};

/// Nodes of a test cluster: three primaries, each with one replica.
const NODES: usize = 6;

/// How long the cluster may take to form, or to fail over.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// One node: its client port and its process (`None` once killed).
#[derive(Debug)]
struct Node {
    port: u16,
    child: Option<Child>,
}

/// A running Redis Cluster ([`RedisCluster::start`]).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// A primary and the slot ranges it serves, as `CLUSTER NODES` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Inclusive slot ranges.
    pub slots: Vec<(u16, u16)>,
    /// Client ports of its replicas.
    pub replicas: Vec<u16>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster and waits until every slot is served and every replica is in sync.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut nodes = Vec::with_capacity(NODES);
        for _ in 0..NODES {
            let (port, bus) = (free_port(), free_port());
            let child = spawn(dir.path(), port, bus).await?;
            nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        let cluster = Self { nodes, _dir: dir };
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port)),
        );
        create.extend(["--cluster-replicas", "1", "--cluster-yes"].map(str::to_owned));
        let out = cli_output(&create).await?;
        ensure!(
            out.contains("All 16384 slots covered"),
            "redis-cli --cluster create: {out}"
        );
        cluster.settle(NODES).await?;
        Ok(cluster)
    }

    /// `redis-cluster://` URL naming every node as a seed.
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(|n| n.port);
        let first = ports.next().expect("six nodes");
        let seeds: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", seeds.join("&"))
    }

    /// Client ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The primaries as a running node sees them.
    pub async fn primaries(&self) -> anyhow::Result<Vec<Primary>> {
        let port = *self.live_ports().first().context("no node running")?;
        let text = command(port, &["CLUSTER", "NODES"]).await?;
        Ok(parse_nodes(&text))
    }

    /// `CONFIG SET <name> <value>` on the node at `port` alone.
    pub async fn config_set(&self, port: u16, name: &str, value: &str) -> anyhow::Result<()> {
        command(port, &["CONFIG", "SET", name, value]).await?;
        Ok(())
    }

    /// The client port of the primary serving `key`'s slot.
    pub async fn primary_of(&self, key: &str) -> anyhow::Result<u16> {
        let slot = slot_of(key);
        self.primaries()
            .await?
            .into_iter()
            .find(|p| p.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|p| p.port)
            .with_context(|| format!("no primary serves slot {slot}"))
    }

    /// Kills the node on `port` with SIGKILL.
    pub async fn kill(&mut self, port: u16) -> anyhow::Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .context("no such node")?;
        if let Some(mut child) = node.child.take() {
            child.kill().await?;
            let _ = child.wait().await;
        }
        Ok(())
    }

    /// Waits until every slot is served again by a running primary (after [`kill`](Self::kill), its replica took
    /// over) and the running nodes agree.
    pub async fn wait_failed_over(&self) -> anyhow::Result<()> {
        let live = self.live_ports();
        let until = tokio::time::Instant::now() + SETTLE_WITHIN;
        loop {
            let primaries = self.primaries().await.unwrap_or_default();
            let served: u32 = primaries
                .iter()
                .filter(|p| live.contains(&p.port))
                .flat_map(|p| &p.slots)
                .map(|(a, b)| u32::from(b - a) + 1)
                .sum();
            if served == 16_384 && self.all_ok(&live).await {
                return Ok(());
            }
            if tokio::time::Instant::now() > until {
                bail!(
                    "slots not all served by running primaries after {SETTLE_WITHIN:?}: {primaries:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `CLUSTER INFO` counter `name` of the node on `port` (0 when Redis does not list it: never incremented).
    pub async fn cluster_stat(&self, port: u16, name: &str) -> anyhow::Result<u64> {
        let text = command(port, &["CLUSTER", "INFO"]).await?;
        Ok(text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}:")))
            .map_or(Ok(0), str::parse)?)
    }

    /// How many subscribers the node on `port` itself has for shard channel `channel`.
    pub async fn shard_subscribers(&self, port: u16, channel: &str) -> anyhow::Result<u64> {
        let text = command(port, &["PUBSUB", "SHARDNUMSUB", channel]).await?;
        let count = text.lines().nth(1).context("PUBSUB SHARDNUMSUB answer")?;
        Ok(count.trim().parse()?)
    }

    async fn all_ok(&self, ports: &[u16]) -> bool {
        for port in ports {
            match command(*port, &["CLUSTER", "INFO"]).await {
                Ok(info) if info.contains("cluster_state:ok") => {}
                _ => return false,
            }
        }
        true
    }

    /// Waits for `cluster_state:ok` on every node and three primaries with an in-sync replica each.
    async fn settle(&self, nodes: usize) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + SETTLE_WITHIN;
        loop {
            let primaries = self.primaries().await.unwrap_or_default();
            let mut synced = 0;
            for p in &primaries {
                let info = command(p.port, &["INFO", "replication"])
                    .await
                    .unwrap_or_default();
                if info.contains("connected_slaves:1") && info.contains("state=online") {
                    synced += 1;
                }
            }
            if primaries.len() == nodes / 2
                && synced == nodes / 2
                && self.all_ok(&self.live_ports()).await
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > until {
                bail!("cluster not settled after {SETTLE_WITHIN:?}: {primaries:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The hash slot of `key` (its hash tag, if any), as Redis Cluster computes it.
pub fn slot_of(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}

/// Primaries and their slots from `CLUSTER NODES` text.
fn parse_nodes(text: &str) -> Vec<Primary> {
    let mut primaries: BTreeMap<String, Primary> = BTreeMap::new();
    let mut replicas: Vec<(String, u16)> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            continue;
        }
        let Some(port) = fields[1]
            .split(['@', ','])
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        let flags = fields[2];
        if flags.contains("fail") && !flags.contains("pfail") {
            continue;
        }
        if flags.contains("master") {
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            primaries.insert(
                fields[0].to_owned(),
                Primary {
                    port,
                    slots,
                    replicas: Vec::new(),
                },
            );
        } else if flags.contains("slave") {
            replicas.push((fields[3].to_owned(), port));
        }
    }
    for (primary, port) in replicas {
        if let Some(p) = primaries.get_mut(&primary) {
            p.replicas.push(port);
        }
    }
    primaries
        .into_values()
        .filter(|p| !p.slots.is_empty())
        .collect()
}

async fn spawn(dir: &std::path::Path, port: u16, bus: u16) -> anyhow::Result<Child> {
    let bin = find_binary("redis-server", "CES_REDIS_SERVER_BIN")?;
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir)?;
    let mut child = Command::new(&bin)
        .args([
            "--port",
            &port.to_string(),
            "--cluster-port",
            &bus.to_string(),
        ])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--cluster-config-file")
        .arg(node_dir.join("nodes.conf"))
        .arg("--dir")
        .arg(&node_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    wait_for("redis-server (cluster node)", &mut child, || ping(port)).await?;
    Ok(child)
}

fn cli() -> anyhow::Result<std::path::PathBuf> {
    let server = find_binary("redis-server", "CES_REDIS_SERVER_BIN")?;
    let beside = server.with_file_name("redis-cli");
    Ok(if beside.exists() {
        beside
    } else {
        "redis-cli".into()
    })
}

async fn cli_output(args: &[String]) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        SETTLE_WITHIN,
        Command::new(cli()?).args(args).kill_on_drop(true).output(),
    )
    .await
    .context("redis-cli timed out")??;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "redis-cli {args:?}: {text}");
    Ok(text)
}

/// Runs one command on the node at `port` and returns redis-cli's raw output.
async fn command(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["-p".to_owned(), port.to_string(), "--raw".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    cli_output(&all).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_text_names_primaries_their_slots_and_replicas() {
        let text = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922 [5461->-x]
c3 127.0.0.1:7003@17003 master - 0 0 3 connected 10923-16383
d4 127.0.0.1:7004@17004 slave a1 0 0 1 connected
e5 127.0.0.1:7005@17005 slave b2 0 0 2 connected
f6 127.0.0.1:7006@17006 master,fail - 0 0 3 connected
";
        let p = parse_nodes(text);
        assert_eq!(
            p,
            vec![
                Primary {
                    port: 7001,
                    slots: vec![(0, 5460)],
                    replicas: vec![7004]
                },
                Primary {
                    port: 7002,
                    slots: vec![(5461, 10922)],
                    replicas: vec![7005]
                },
                Primary {
                    port: 7003,
                    slots: vec![(10923, 16383)],
                    replicas: vec![]
                },
            ]
        );
        assert_eq!(slot_of("ces:{a}:ch"), 15495);
        assert_eq!(slot_of("a"), 15495);
    }
}
