//! Encrypted and authenticated all the way: records from Kafka reach a client over WSS, with ingest and the edge
//! talking to Redis over TLS as an ACL user that may touch only CES's keys and channels.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use ces_systest::client::{WsClient, ws_url};
use ces_systest::kafka::{self, Record};
use ces_systest::tls::TestCert;
use ces_systest::{Broker, Redis, unique};
use common::{SECRET, event_json, start_ingest};
use fred::interfaces::{ClientLike as _, KeysInterface as _};
use serde_json::json;
use tokio::net::TcpListener;

const EVENTS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_wss_client_through_redis_over_tls_with_an_acl_user() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let cert = TestCert::new()?;
    let (redis, broker) = tokio::try_join!(
        Redis::start_secured(&cert, "ces", "ces-test-password"),
        Broker::shared()
    )?;
    let redis_url = redis.secure_url().expect("secured");
    let ca = cert.ca_file().display().to_string();
    let topic = unique("ces.events");
    let dlq = unique("ces.dlq");
    kafka::create_topics(&broker.bootstrap(), &[(&topic, 2), (&dlq, 1)]).await?;

    // Without credentials, the server gives nothing away: the plain port only answers PING.
    let anonymous = ces_runtime::redis::builder(&redis.url())?.build()?;
    anonymous.init().await?;
    let refused = anonymous.get::<Option<String>, _>("ces:anything").await;
    assert!(
        refused.is_err_and(|e| e.to_string().contains("NOPERM")),
        "the plain port refuses data"
    );

    let redis_env = [
        ("CES_REDIS_URL", redis_url.clone()),
        ("CES_REDIS_TLS_CA_FILE", ca.clone()),
    ];
    let ingest = start_ingest(&redis_url, &broker.bootstrap(), &topic, &dlq, &redis_env).await?;

    let env: HashMap<&'static str, String> = [
        ("CES_TOKEN_SECRET", SECRET.to_owned()),
        ("CES_REGISTER_OPEN", "true".to_owned()),
        ("CES_NODE_ID", "edge-tls".to_owned()),
        ("CES_TLS_CERT_FILE", cert.cert_file().display().to_string()),
        ("CES_TLS_KEY_FILE", cert.key_file().display().to_string()),
    ]
    .into_iter()
    .chain(redis_env)
    .collect();
    let config = ces_edge::Config::from_source(&env)?;
    let listeners = ces_edge::Listeners {
        public: TcpListener::bind("127.0.0.1:0").await?,
        internal: TcpListener::bind("127.0.0.1:0").await?,
    };
    let base = format!("https://{}", listeners.public.local_addr()?);
    // Probes stay plain HTTP on the internal listener, whatever the public one serves.
    let internal = format!("http://{}", listeners.internal.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let edge = tokio::spawn(ces_edge::run(config, listeners, async move {
        let _ = stopped.await;
    }));
    ces_systest::wait_ready(&internal).await?;

    let reg = cert.register(&base).await?;
    let mut ws = WsClient::connect_tls(&ws_url(&base, &reg.token), cert.ws_connector()).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "welcome"
    );
    let producer = kafka::producer(&broker.bootstrap())?;
    let records: Vec<Record> = (1..=EVENTS)
        .map(|n| {
            Record::keyed(
                &reg.session_id,
                event_json(&reg.session_id, "order.updated", json!({ "n": n })),
            )
        })
        .collect();
    kafka::produce(&producer, &topic, &records).await?;
    let events = ws.events(EVENTS as usize, Duration::from_secs(30)).await?;
    common::assert_numbered(&reg.session_id, &events, EVENTS);

    ws.close().await;
    let _ = stop.send(());
    edge.await??;
    ingest.stop().await
}
