//! The command line. Every scenario is bounded: counts and durations have hard upper limits, and every wait has
//! a deadline, so a run always ends by itself.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load generator and latency reporter for a CES stack on this machine (loopback only).
#[derive(Debug, Parser)]
#[command(name = "ces-loadtest", version)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// S sessions over the edges; produce to Kafka at --rate (0: flat out) for --duration seconds; report
    /// produced, delivered, lost, duplicated, out-of-order, msg/s and producer→client latency.
    Throughput(Common),
    /// Open C connections and hold them for --duration seconds; report edge RSS per connection and edge CPU.
    Idle(Common),
    /// C connections spread over the --target edges while a stream flows at --rate for --duration seconds; report
    /// each edge's RSS per connection, latency and loss. Exits 4 when a connection was not held or an edge's RSS
    /// per connection is over --max-rss-per-conn.
    Hold(HoldArgs),
    /// C sessions receiving a stream at --rate; kill (or drain) the first --stop-edges of --edges after
    /// --kill-after seconds; report how long until every session resumed on another edge, and the loss. Exits 4
    /// when a session did not resume within --max-resume-s.
    Storm(StormArgs),
    /// Produce --count records and time how fast ingest consumes them (from its /metrics), beside the pipelined
    /// `redis-benchmark PUBLISH` rate on the same Redis.
    Ingest(IngestArgs),
    /// The raw limit of WebSocket push on this machine: a tokio-tungstenite server in this process pushes
    /// event-sized frames over C loopback connections for --duration seconds, flat out with `--rate 0` (the rate
    /// the readers received) or at --rate frames per second spread over the connections (the server's CPU per
    /// frame: the floor of the edges' CPU per delivered event).
    RawWs(Common),
    /// The floor of Redis's CPU per event: `redis-benchmark` publishes --count envelope-sized messages with
    /// `SPUBLISH` to --sessions channels held by two subscriber connections, 64 per pipeline; report Redis's CPU
    /// µs per message.
    RedisFloor(RedisFloorArgs),
    /// Produce --count records flat out and exit (fills a topic before `ingest --prefilled`).
    Produce(IngestArgs),
    /// A worker process of a run with more connections than one process may hold: reads its sessions from stdin,
    /// holds their sockets and reports on stdout until stdin closes. Started by `ces-loadtest` itself.
    #[command(hide = true)]
    Worker,
    /// The raw limit of latency: produce at --rate for --duration seconds and read the records back with a bare
    /// Kafka consumer on the same broker (nothing of CES in between); report producer → consumer latency.
    Broker(BrokerArgs),
}

impl Scenario {
    /// The Kafka bootstrap servers the scenario measures through, so its report can carry the broker's settings;
    /// `None` for the scenarios that write no report (`produce`) or whose figures involve no broker (`idle`,
    /// `raw-ws`).
    pub fn measured_brokers(&self) -> Option<&str> {
        match self {
            Self::Throughput(c) => Some(&c.brokers),
            Self::Hold(h) => Some(&h.common.brokers),
            Self::Storm(s) => Some(&s.common.brokers),
            Self::Ingest(i) => Some(&i.common.brokers),
            Self::Broker(b) => Some(&b.common.brokers),
            Self::Idle(_)
            | Self::RawWs(_)
            | Self::RedisFloor(_)
            | Self::Produce(_)
            | Self::Worker => None,
        }
    }
}

/// Options every scenario shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Sessions (one WebSocket each).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    pub sessions: u64,
    /// Connections to hold (idle, storm, raw-ws); defaults to --sessions.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    pub connections: Option<u64>,
    /// Records per second to produce; 0 produces flat out.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub rate: u64,
    /// Seconds to produce (or to hold the connections).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub duration: u64,
    /// Where sessions register and connect: the load balancer, or several edges (comma-separated), used in turn.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
    pub target: Vec<String>,
    /// The edge nodes by their internal listeners (host:port of `CES_EDGE_INTERNAL_LISTEN`, where their
    /// `/metrics` is): their memory and CPU are reported, from the process listening there (and, in `storm`, the
    /// first --stop-edges are stopped). Not the --target addresses: edges serve no metrics on those.
    #[arg(
        long,
        default_value = "127.0.0.1:9181,127.0.0.1:9182",
        value_delimiter = ','
    )]
    pub edges: Vec<String>,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Input topic of ingest.
    #[arg(long, default_value = "ces.events")]
    pub topic: String,
    /// Padding added to each event's data, in bytes (the frame is about 110 bytes plus this).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=65_536))]
    pub payload: u64,
    /// After producing, how long to wait for the last events before counting the rest as lost.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub settle: u64,
    /// Connections per source address (127.0.0.1, 127.0.0.2, ...), so more than one address's ephemeral ports
    /// can be used. A socket is bound to its source address before it connects, and Linux picks a bound port
    /// from the even half of the ephemeral range first (14,116 ports of 32768-60999): past that, each bind
    /// searches the whole range and takes about 2 ms instead of 5 µs, which slowed 100,000 connects to a crawl
    /// and resumes after an edge kill to 30 s. 10,000 stays well inside the fast half.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub per_source: u64,
    /// Most sockets one load-generator process holds: more connections are spread over worker processes (this
    /// program started again as `ces-loadtest worker`), each holding at most this many. Defaults to this
    /// process's open-files limit minus 1,000 (the limit is per process: 20,000 gives 19,000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub per_process: Option<u64>,
    /// WebSocket handshakes in flight at once while connecting (shared out among worker processes).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub connect_concurrency: u64,
    /// Directory for `<scenario>.json` and `<scenario>.svg`.
    #[arg(long, default_value = "loadtest/out")]
    pub out: std::path::PathBuf,
    /// Name of the report files (defaults to the scenario).
    #[arg(long)]
    pub name: Option<String>,
    /// ingest's metrics endpoint: its record counter (`ingest`) and its per-hop latencies (`throughput`, `storm`).
    #[arg(long, default_value = "http://127.0.0.1:8090/metrics")]
    pub ingest_metrics: String,
    /// Redis (host:port): its CPU is reported, and `ingest` runs `redis-benchmark` and reads `INFO` there.
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub redis: String,
}

impl Common {
    /// Connections to hold.
    pub fn connections(&self) -> u64 {
        self.connections.unwrap_or(self.sessions)
    }
}

/// How `storm` stops an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StormAction {
    /// SIGKILL: sockets vanish without a close frame.
    Kill,
    /// SIGTERM: the edge drains, closing sockets with 1012 over its drain window.
    Drain,
}

/// `storm` options.
#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: Common,
    /// How to stop the edges.
    #[arg(long, value_enum, default_value_t = StormAction::Kill)]
    pub action: StormAction,
    /// Seconds into the stream at which the edges are stopped.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub kill_after: u64,
    /// How many edges to stop at the same moment: the first ones of --edges. Their sessions move to the others
    /// (one edge holds at most its open-files limit of sockets, so moving more sessions than that takes several).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub stop_edges: u64,
    /// Target: every session of the stopped edges has resumed on another within this many seconds of the stop.
    #[arg(long, default_value_t = 10.0)]
    pub max_resume_s: f64,
}

/// `hold` options.
#[derive(Debug, Clone, Args)]
pub struct HoldArgs {
    /// Shared options (--connections over --target in turn; --edges are the edges whose memory is measured:
    /// the same ones, by their internal listeners).
    #[command(flatten)]
    pub common: Common,
    /// Target: no edge's RSS grows by more than this many bytes per connection it holds.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_rss_per_conn: u64,
}

/// `broker` options.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Shared options (--topic is the topic produced to and read back; --sessions the distinct keys).
    #[command(flatten)]
    pub common: Common,
    /// The consumer's `fetch.wait.max.ms`, by default librdkafka's own. Apache Kafka answers a fetch as soon as
    /// data arrives, so this bounds only how long a fetch waits when there is nothing to read.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub fetch_wait_ms: u64,
    /// The consumer's `fetch.min.bytes`, by default librdkafka's own (1). With more, the broker holds each fetch
    /// until that much arrived or --fetch-wait-ms passed, as it does ingest's (262144 and 3): the broker's warm-up
    /// before `make bench` reads this way, so that its delayed-fetch path is compiled before anything is measured.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub fetch_min_bytes: u64,
}

/// `ingest` and `produce` options.
#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Shared options (--sessions is the number of distinct session ids the records are spread over).
    #[command(flatten)]
    pub common: Common,
    /// Records to produce.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub count: u64,
    /// The records are already in the topic (from `produce`) and ingest was started after: only measure.
    #[arg(long)]
    pub prefilled: bool,
}

/// `redis-floor`'s options.
#[derive(Debug, Clone, Args)]
pub struct RedisFloorArgs {
    /// Shared options (--sessions is the number of channels, --payload the envelope's padding, --redis where).
    #[command(flatten)]
    pub common: Common,
    /// Messages to publish.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Scenario {
        Cli::try_parse_from(std::iter::once("ces-loadtest").chain(args.iter().copied()))
            .expect("valid command line")
            .scenario
    }

    #[test]
    fn the_scenarios_that_go_through_kafka_name_their_brokers() {
        for s in ["throughput", "hold", "storm", "ingest", "broker"] {
            assert_eq!(
                parse(&[s, "--brokers", "127.0.0.1:29092"]).measured_brokers(),
                Some("127.0.0.1:29092"),
                "{s}"
            );
        }
        for s in ["idle", "raw-ws", "redis-floor", "produce"] {
            assert_eq!(parse(&[s]).measured_brokers(), None, "{s}");
        }
    }

    #[test]
    fn the_storm_stops_one_edge_within_ten_seconds_unless_told_otherwise() {
        let Scenario::Storm(s) = parse(&["storm"]) else {
            panic!("not the storm scenario")
        };
        assert_eq!((s.stop_edges, s.max_resume_s), (1, 10.0));
        let Scenario::Storm(s) = parse(&["storm", "--stop-edges", "3"]) else {
            panic!("not the storm scenario")
        };
        assert_eq!(s.stop_edges, 3);
        assert!(Cli::try_parse_from(["ces-loadtest", "storm", "--stop-edges", "0"]).is_err());
    }

    #[test]
    fn hold_aims_at_eight_kilobytes_per_connection() {
        let Scenario::Hold(h) = parse(&["hold", "--connections", "100000"]) else {
            panic!("not the hold scenario")
        };
        assert_eq!(
            (h.max_rss_per_conn, h.common.connections()),
            (8192, 100_000)
        );
        assert_eq!(h.common.per_process, None);
    }

    #[test]
    fn the_edges_are_named_by_their_internal_listeners_apart_from_the_targets() {
        let Scenario::Storm(s) = parse(&["storm"]) else {
            panic!("not the storm scenario")
        };
        assert_eq!(s.common.edges, ["127.0.0.1:9181", "127.0.0.1:9182"]);
        assert_eq!(s.common.target, ["http://127.0.0.1:8080"]);
    }

    #[test]
    fn the_broker_scenario_waits_on_fetches_as_librdkafka_does_by_default() {
        let Scenario::Broker(b) = parse(&["broker"]) else {
            panic!("not the broker scenario")
        };
        assert_eq!(b.fetch_wait_ms, 500);
    }
}
