//! Both clients, the Rust one (`ces-client`) and the TypeScript one (`@ces/client` in Node), against real edges
//! behind a real HAProxy and a fault proxy that resets, black-holes, stalls and delays their connections. Each
//! scenario runs once per client and asserts the exact list the app saw: every `seq` once and in order, or named
//! in exactly one gap (docs/clients.md).
//!
//! Events are published with the Redis function ingest uses (`ces_publish`), so a scenario needs no broker.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ces_client::Token;
use ces_systest::apps::{Apps, Kind, Seen, Tokens};
use ces_systest::client::{Registered, WsClient, register, ws_url};
use ces_systest::fault::{Fault, FaultProxy};
use ces_systest::haproxy::Haproxy;
use ces_systest::{Metrics, Redis};
use common::{IsolatedEdge, publish_data, publish_direct};
use fred::interfaces::ClientLike as _;

/// The edges' ping interval: the clients call a connection dead after 2.5 of them without a frame.
const PING: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(30);
const APP: &str = "app";

/// One session, two edges behind HAProxy, the fault proxy in front of HAProxy, and one app connected through it.
struct Rig {
    redis: Redis,
    edges: Vec<IsolatedEdge>,
    lb: Haproxy,
    proxy: FaultProxy,
    tokens: Tokens,
    admin: fred::clients::Client,
    session: String,
    token: String,
    apps: Apps,
}

impl Rig {
    async fn start(kind: Kind, edge_env: &[(&'static str, String)]) -> anyhow::Result<Self> {
        Self::start_with_tokens(kind, edge_env, |tokens, reg| tokens.fixed(APP, &reg.token)).await
    }

    /// [`Rig::start`], with the app's tokens set by `set_tokens` for the registered session.
    async fn start_with_tokens(
        kind: Kind,
        edge_env: &[(&'static str, String)],
        set_tokens: impl FnOnce(&Tokens, &Registered),
    ) -> anyhow::Result<Self> {
        let redis = Redis::start().await?;
        let mut env = vec![("CES_WS_PING_INTERVAL_MS", PING.as_millis().to_string())];
        env.extend(edge_env.iter().cloned());
        let ping = env
            .iter()
            .rev()
            .find(|(k, _)| *k == "CES_WS_PING_INTERVAL_MS")
            .and_then(|(_, v)| v.parse().ok())
            .map_or(PING, Duration::from_millis);
        let edges = vec![
            IsolatedEdge::start_with(&redis.url(), "edge-a", &env).await?,
            IsolatedEdge::start_with(&redis.url(), "edge-b", &env).await?,
        ];
        let backends: Vec<&str> = edges
            .iter()
            .map(|e| e.base.trim_start_matches("http://"))
            .collect();
        let lb = Haproxy::start(&backends).await?;
        let proxy = FaultProxy::start(&lb.base).await?;
        let reg = register(&reqwest::Client::new(), &lb.base).await?;
        let tokens = Tokens::start().await?;
        set_tokens(&tokens, &reg);
        let admin = ces_runtime::redis::builder(&redis.url())?.build()?;
        admin.init().await?;
        let apps = Apps::start(kind, &proxy.base, &[APP.to_owned()], &tokens, ping).await?;
        apps.wait_for(APP, "the first welcome", WAIT, |s| {
            matches!(s, Seen::Open { .. })
        })
        .await?;
        Ok(Self {
            redis,
            edges,
            lb,
            proxy,
            tokens,
            admin,
            session: reg.session_id,
            token: reg.token,
            apps,
        })
    }

    /// Publishes events `ns` (ids `e-<n>`), `pause` apart.
    async fn publish(
        &self,
        ns: std::ops::RangeInclusive<u64>,
        pause: Duration,
    ) -> anyhow::Result<()> {
        for n in ns {
            self.publish_one(n).await?;
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }

    async fn publish_one(&self, n: u64) -> anyhow::Result<u64> {
        let channel = ces_protocol::keys::channel(&self.session);
        publish_direct(&self.admin, &self.session, &format!("e-{n}"), n, channel).await
    }

    /// The edge serving the app now: the node of its latest welcome.
    fn holder(&mut self) -> &mut IsolatedEdge {
        let node = self
            .apps
            .seen(APP)
            .into_iter()
            .rev()
            .find_map(|s| match s {
                Seen::Open { node } => Some(node),
                _ => None,
            })
            .expect("connected");
        self.edges
            .iter_mut()
            .find(|e| e.node == node)
            .expect("a node of this rig")
    }

    async fn wait_events(&self, n: usize) -> anyhow::Result<()> {
        self.apps.wait_events(APP, n, WAIT).await
    }

    /// What the app saw, events and gaps only.
    fn stream(&self) -> Vec<Seen> {
        self.apps
            .seen(APP)
            .into_iter()
            .filter(|s| matches!(s, Seen::Event { .. } | Seen::Gap { .. }))
            .collect()
    }

    fn closes(&self) -> Vec<(Option<u16>, bool)> {
        self.apps
            .seen(APP)
            .into_iter()
            .filter_map(|s| match s {
                Seen::Closed {
                    code,
                    will_reconnect,
                } => Some((code, will_reconnect)),
                _ => None,
            })
            .collect()
    }

    fn opens(&self) -> Vec<String> {
        self.apps
            .seen(APP)
            .into_iter()
            .filter_map(|s| match s {
                Seen::Open { node } => Some(node),
                _ => None,
            })
            .collect()
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.apps.stop().await
    }
}

/// Events `ns`, as the app sees them when nothing is lost.
fn events(ns: std::ops::RangeInclusive<u64>) -> Vec<Seen> {
    ns.map(|n| Seen::Event {
        seq: n,
        id: format!("e-{n}"),
    })
    .collect()
}

async fn edge_killed(kind: Kind) -> anyhow::Result<()> {
    let mut rig = Rig::start(kind, &[]).await?;
    let first = rig.opens()[0].clone();
    // The holder dies with events in flight: some published but maybe not yet written.
    rig.publish(1..=50, Duration::from_millis(5)).await?;
    rig.holder().kill();
    rig.publish(51..=100, Duration::from_millis(5)).await?;
    rig.wait_events(100).await?;
    assert_eq!(rig.stream(), events(1..=100));
    assert!(
        rig.closes().iter().all(|c| c.1),
        "reconnects: {:?}",
        rig.closes()
    );
    assert_ne!(
        rig.opens().last(),
        Some(&first),
        "resumed on the other edge"
    );
    rig.stop().await
}

async fn edge_drained(kind: Kind) -> anyhow::Result<()> {
    let mut rig = Rig::start(kind, &[]).await?;
    rig.publish(1..=30, Duration::from_millis(5)).await?;
    rig.holder().drain().await?;
    rig.publish(31..=60, Duration::from_millis(5)).await?;
    rig.wait_events(60).await?;
    assert_eq!(rig.stream(), events(1..=60));
    assert_eq!(
        rig.closes(),
        [(Some(1012), true)],
        "one drain, one reconnect"
    );
    assert_eq!(rig.opens().len(), 2);
    rig.stop().await
}

/// The app's backend hands out a token that expires in 3 s until then, a long one after: the in-band refreshes
/// get the same short token, the edge closes with 4001 at its expiry, and the client gets the new one and
/// resumes.
async fn token_expiry(kind: Kind) -> anyhow::Result<()> {
    let short_until = unix_now() + 3;
    let rig = Rig::start_with_tokens(kind, &[], |tokens, reg| {
        let (short, long) = (
            sign(&reg.session_id, short_until),
            sign(&reg.session_id, unix_now() + 3600),
        );
        tokens.set(
            APP,
            Arc::new(move |_| {
                Token::new(if unix_now() < short_until {
                    &short
                } else {
                    &long
                })
            }),
        );
    })
    .await?;
    rig.publish(1..=5, Duration::ZERO).await?;
    rig.wait_events(5).await?;
    rig.apps
        .wait_for(APP, "the 4001 close", WAIT, |s| {
            matches!(
                s,
                Seen::Closed {
                    code: Some(4001),
                    will_reconnect: true
                }
            )
        })
        .await?;
    rig.publish(6..=10, Duration::ZERO).await?;
    rig.wait_events(10).await?;
    assert_eq!(rig.stream(), events(1..=10));
    assert_eq!(rig.closes(), [(Some(4001), true)]);
    assert_eq!(rig.opens().len(), 2);
    rig.stop().await
}

/// Every token the backend hands out lives 3 s: the client refreshes in band before each expires, so one
/// connection carries the stream for twice that and more.
async fn token_refreshed_in_band(kind: Kind) -> anyhow::Result<()> {
    let rig = Rig::start_with_tokens(kind, &[], |tokens, reg| {
        let session = reg.session_id.clone();
        tokens.set(
            APP,
            Arc::new(move |_| Token::new(sign(&session, unix_now() + 3))),
        );
    })
    .await?;
    rig.publish(1..=16, Duration::from_millis(500)).await?;
    rig.wait_events(16).await?;
    assert_eq!(rig.stream(), events(1..=16));
    assert_eq!(rig.closes(), [], "never closed: refreshed in band");
    assert_eq!(rig.opens().len(), 1);
    assert!(
        rig.tokens.calls(APP) >= 3,
        "refreshed: {} tokens asked for",
        rig.tokens.calls(APP)
    );
    rig.stop().await
}

/// A token of `session` that expires at `exp` (unix seconds), signed as the test edges sign.
fn sign(session: &str, exp: u64) -> String {
    let keys = ces_protocol::token::TokenKeys::new([("default", common::SECRET.as_bytes())])
        .expect("the test secret");
    keys.sign(
        &ces_protocol::keys::SessionId::parse(session).expect("a session id"),
        exp,
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}
/// Another connection of the same session takes over: the app is told it is over, and nothing reconnects.
async fn taken_over(kind: Kind) -> anyhow::Result<()> {
    let rig = Rig::start(kind, &[]).await?;
    rig.publish(1..=5, Duration::ZERO).await?;
    rig.wait_events(5).await?;
    let mut other = WsClient::connect(&ws_url(&rig.lb.base, &rig.token)).await?;
    other
        .next_json(WAIT)
        .await?
        .expect("the newcomer's welcome");
    rig.apps
        .wait_for(APP, "the final close", WAIT, |s| {
            matches!(
                s,
                Seen::Closed {
                    will_reconnect: false,
                    ..
                }
            )
        })
        .await?;
    rig.publish(6..=8, Duration::ZERO).await?;
    assert_eq!(
        other.events(8, WAIT).await?.len(),
        8,
        "the newcomer has it all"
    );
    assert_eq!(rig.stream(), events(1..=5));
    assert_eq!(rig.closes(), [(Some(4009), false)]);
    assert_eq!(rig.opens().len(), 1, "never reconnected");
    other.close().await;
    rig.stop().await
}

/// The path to the app stops moving bytes while 25 MB of events come (more than the kernel and HAProxy buffer on
/// the way): its edge's queue overflows and closes it with 4008. When the path moves again the app gets what was
/// on its way, the 4008, and resumes for the rest. Pings every 30 s here, so that the stall is not a ping timeout.
async fn slow_reader(kind: Kind) -> anyhow::Result<()> {
    const EVENTS: u64 = 400;
    let env = [
        ("CES_WS_QUEUE_CAPACITY", "64".into()),
        ("CES_WS_PING_INTERVAL_MS", "30000".into()),
    ];
    let mut rig = Rig::start(kind, &env).await?;
    rig.proxy.set(Fault::Stall);
    let pad = "x".repeat(64 * 1024);
    let channel = ces_protocol::keys::channel(&rig.session);
    for n in 1..=EVENTS {
        let data = format!(r#"{{"n":{n},"pad":"{pad}"}}"#);
        publish_data(
            &rig.admin,
            &rig.session,
            &format!("e-{n}"),
            &data,
            channel.clone(),
        )
        .await?;
    }
    let internal = rig.holder().internal.clone();
    let mut found_slow = false;
    for _ in 0..200 {
        if Metrics::scrape(&internal)
            .await?
            .get("ces_edge_slow_consumer_total", &[])
            >= 1.0
        {
            found_slow = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        found_slow,
        "the edge closed the stalled app as a slow consumer"
    );
    rig.proxy.set(Fault::Pass);
    rig.wait_events(EVENTS as usize).await?;
    assert_eq!(rig.stream(), events(1..=EVENTS));
    assert_eq!(rig.closes()[0], (Some(4008), true), "{:?}", rig.closes());
    rig.stop().await
}

/// An edge that allows one message a second closes the app (which acks twice a second while events flow) with
/// 4029; it pauses, comes back and resumes, as often as it takes.
async fn rate_limited(kind: Kind) -> anyhow::Result<()> {
    let rig = Rig::start(kind, &[("CES_LIMIT_MESSAGES_PER_SEC", "1".into())]).await?;
    rig.publish(1..=30, Duration::from_millis(100)).await?;
    rig.wait_events(30).await?;
    assert_eq!(rig.stream(), events(1..=30));
    let closes = rig.closes();
    assert!(closes.contains(&(Some(4029), true)), "{closes:?}");
    assert!(closes.iter().all(|c| c.1), "always reconnects: {closes:?}");
    rig.stop().await
}

/// Redis restarts empty under an open connection: the app is told once that everything after what it has is
/// gone (open-ended, `epoch_changed`), then gets the new epoch's events from `seq` 1.
async fn epoch_changed(kind: Kind) -> anyhow::Result<()> {
    let mut rig = Rig::start(kind, &[]).await?;
    rig.publish(1..=5, Duration::ZERO).await?;
    rig.wait_events(5).await?;
    rig.redis.restart().await?;
    rig.apps
        .wait_for(APP, "the epoch change", WAIT, |s| {
            matches!(s, Seen::Gap { .. })
        })
        .await?;
    ces_runtime::redis::load_library(&rig.admin).await?;
    for n in 6..=8 {
        rig.publish_one(n).await?;
    }
    rig.wait_events(8).await?;
    let mut expected = events(1..=5);
    expected.push(Seen::Gap {
        from: 6,
        to: None,
        reason: "epoch_changed".into(),
    });
    expected.extend((6..=8).map(|n| Seen::Event {
        seq: n - 5,
        id: format!("e-{n}"),
    }));
    assert_eq!(rig.stream(), expected);
    rig.stop().await
}

/// The app's path goes silent, both ways, with its connection left open (a laptop asleep, a switched network):
/// after 2.5 ping intervals without a frame the app reconnects, and when the path heals it resumes.
async fn black_holed(kind: Kind) -> anyhow::Result<()> {
    let rig = Rig::start(kind, &[]).await?;
    rig.publish(1..=5, Duration::ZERO).await?;
    rig.wait_events(5).await?;
    rig.proxy.set(Fault::BlackHole);
    rig.publish(6..=10, Duration::ZERO).await?;
    rig.apps
        .wait_for(APP, "the silence noticed", WAIT, |s| {
            matches!(s, Seen::Closed { .. })
        })
        .await?;
    rig.proxy.set(Fault::Pass);
    rig.publish(11..=15, Duration::ZERO).await?;
    rig.wait_events(15).await?;
    assert_eq!(rig.stream(), events(1..=15));
    assert!(rig.closes().iter().all(|c| c.1), "{:?}", rig.closes());
    assert!(rig.opens().len() >= 2);
    rig.stop().await
}

/// Every connection is reset mid-stream, twice; then the path is slow (200 ms each way): nothing lost or doubled.
async fn reset_and_delayed(kind: Kind) -> anyhow::Result<()> {
    let rig = Rig::start(kind, &[]).await?;
    rig.publish(1..=20, Duration::from_millis(5)).await?;
    rig.proxy.reset_all();
    rig.publish(21..=40, Duration::from_millis(5)).await?;
    rig.wait_events(40).await?;
    rig.proxy.reset_all();
    rig.proxy.set(Fault::Delay(Duration::from_millis(200)));
    rig.publish(41..=60, Duration::from_millis(5)).await?;
    rig.wait_events(60).await?;
    assert_eq!(rig.stream(), events(1..=60));
    assert!(rig.closes().len() >= 2, "{:?}", rig.closes());
    assert!(rig.closes().iter().all(|c| c.1), "{:?}", rig.closes());
    rig.stop().await
}

/// The app's position is acknowledged, coalesced: after 10 events and a pause, the session's `last_ack` in Redis
/// (stored by the edge when the socket ends) is 10.
async fn acknowledged(kind: Kind) -> anyhow::Result<()> {
    use fred::interfaces::HashesInterface as _;
    let rig = Rig::start(kind, &[]).await?;
    rig.publish(1..=10, Duration::ZERO).await?;
    rig.wait_events(10).await?;
    // One ack interval for the coalesced ack to go out, then the app stops and the edge stores it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Redis and the edges stay up: the edge stores the ack when the app's socket ends.
    let Rig {
        apps,
        admin,
        session,
        redis: _redis,
        edges: _edges,
        lb: _lb,
        ..
    } = rig;
    apps.stop().await?;
    let key = ces_protocol::keys::SessionId::parse(&session)?.session_key();
    let mut stored: Option<u64> = None;
    for _ in 0..50 {
        stored = admin.hget(&key, "last_ack").await?;
        if stored == Some(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stored,
        Some(10),
        "the highest delivered seq was acknowledged"
    );
    Ok(())
}

/// Each scenario once per client: `rust::<scenario>` and `js::<scenario>`.
macro_rules! for_both_clients {
    ($($scenario:ident),* $(,)?) => {
        mod rust {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario(super::Kind::Rust).await
                }
            )*
        }
        mod js {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario(super::Kind::Js).await
                }
            )*
        }
    };
}

for_both_clients!(
    acknowledged,
    edge_killed,
    edge_drained,
    token_expiry,
    token_refreshed_in_band,
    taken_over,
    slow_reader,
    rate_limited,
    epoch_changed,
    black_holed,
    reset_and_delayed,
);
