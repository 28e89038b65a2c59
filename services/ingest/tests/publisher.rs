//! The Redis publish function against a real redis-server: the `seq` it appends is what decoders read at every
//! varint width, numbers are consecutive, the counter gets its idle TTL, and a lost library is detected and
//! reloaded.

use std::time::Duration;

use ces_ingest::batch::Publish;
use ces_ingest::publisher::{Publisher, is_function_missing};
use ces_shared::envelope::{self, Envelope};
use ces_shared::keys;
use ces_systest::Redis;
use fred::interfaces::{
    ClientLike, EventInterface, FunctionInterface, KeysInterface, PubsubInterface,
};

fn event(session: &str, n: u64) -> Publish {
    let env = Envelope {
        event_id: format!("id-{n}"),
        session_id: session.into(),
        event_type: "t".into(),
        data: format!("{{\"n\":{n}}}").into_bytes().into(),
        ..Default::default()
    };
    Publish {
        session_id: session.into(),
        event_id: env.event_id.clone(),
        envelope: envelope::encode(&env),
    }
}

#[tokio::test]
async fn seq_is_consecutive_and_decodable_at_every_varint_width() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = ces_shared::redis::builder(&redis.url())?.build()?;
    client.init().await?;
    let subscriber = ces_shared::redis::builder(&redis.url())?.build_subscriber_client()?;
    subscriber.init().await?;
    let mut messages = subscriber.message_rx();
    subscriber.subscribe(keys::channel("s1")).await?;
    let publisher = Publisher::new(client.clone(), Duration::from_secs(120)).await?;

    // Each start puts the next two numbers on either side of a varint width boundary.
    for start in [
        0u64,
        126,
        16_382,
        (1 << 21) - 1,
        (1 << 40) - 1,
        (1 << 53) - 3,
    ] {
        let _: () = client
            .set(keys::seq_key("s1"), start, None, None, false)
            .await?;
        let (a, b) = (event("s1", start + 1), event("s1", start + 2));
        let results: Vec<u64> = publisher
            .publish(&[&a, &b])
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        assert_eq!(results, [start + 1, start + 2]);
        for expected in [start + 1, start + 2] {
            let msg = tokio::time::timeout(Duration::from_secs(5), messages.recv()).await??;
            // fred hands over payloads that happen to be UTF-8 as strings.
            let bytes = msg.value.as_bytes().expect("a bulk string payload");
            let env = envelope::decode(bytes)?;
            assert_eq!(env.seq, expected);
            assert_eq!(&env.data[..], format!("{{\"n\":{expected}}}").as_bytes());
        }
    }
    let ttl: i64 = client.pttl(keys::seq_key("s1")).await?;
    assert!(
        ttl > 0 && ttl <= 120_000,
        "idle TTL set on the counter, got {ttl}"
    );
    Ok(())
}

#[tokio::test]
async fn a_lost_function_library_is_detected_and_reloaded() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = ces_shared::redis::builder(&redis.url())?.build()?;
    client.init().await?;
    let publisher = Publisher::new(client.clone(), Duration::from_secs(60)).await?;
    let _: () = client.function_flush(false).await?;

    let e = event("s2", 1);
    let failed = publisher
        .publish(&[&e])
        .await
        .remove(0)
        .expect_err("function is gone");
    assert!(is_function_missing(&failed), "{failed}");
    assert!(!failed.to_string().is_empty());
    publisher.load_library().await?;
    assert_eq!(
        publisher.publish(&[&e]).await.remove(0)?,
        1,
        "nothing was assigned by the failed call"
    );
    Ok(())
}
