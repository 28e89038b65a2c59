//! The Redis functions against a real redis-server: `seq` and epoch appended so decoders read them at every
//! varint width, duplicates dropped, the buffer trimmed by count with the evicted range remembered, and a lost
//! function library detected and reloaded.

use std::time::Duration;

use ces_ingest::batch::Publish;
use ces_ingest::publisher::{Limits, Outcome, Publisher, is_function_missing};
use ces_protocol::envelope::{self, Envelope};
use ces_protocol::keys::{self, SessionKeys};
use ces_systest::Redis;
use fred::clients::Client;
use fred::interfaces::{
    ClientLike, EventInterface, FunctionInterface, HashesInterface, KeysInterface, PubsubInterface,
    StreamsInterface,
};

fn event(session: &str, id: &str, n: u64) -> Publish {
    let env = Envelope {
        event_id: id.into(),
        session_id: session.into(),
        event_type: "t".into(),
        data: format!("{{\"n\":{n}}}").into_bytes().into(),
        ..Default::default()
    };
    Publish {
        record: 0,
        session_id: session.into(),
        event_id: id.into(),
        envelope: envelope::encode(&env).into(),
        produced_at_ms: 0,
        ingested_at_ms: 0,
        span: Default::default(),
    }
}

fn limits(buffer_max_events: u64) -> Limits {
    Limits {
        buffer_max_events,
        buffer_max_age: Duration::from_secs(300),
        dedup_window: Duration::from_secs(3600),
        state_ttl: Duration::from_secs(120),
        durable_restarts: false,
    }
}

async fn client(redis: &Redis) -> anyhow::Result<Client> {
    let client = ces_runtime::redis::builder(&redis.url())?.build()?;
    client.init().await?;
    Ok(client)
}

async fn publish(p: &Publisher, events: &[Publish]) -> anyhow::Result<Vec<Outcome>> {
    let refs: Vec<&Publish> = events.iter().collect();
    Ok(p.publish(&refs)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?)
}

#[tokio::test]
async fn seq_and_epoch_are_decodable_at_every_varint_width() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = client(&redis).await?;
    let subscriber = ces_runtime::redis::builder(&redis.url())?.build_subscriber_client()?;
    subscriber.init().await?;
    let mut messages = subscriber.message_rx();
    subscriber.ssubscribe(keys::channel("s1")).await?;
    let publisher = Publisher::new(client.clone(), limits(1000), Duration::from_secs(3)).await?;
    let meta = SessionKeys::of("s1").meta;

    // Each start puts the next two numbers on either side of a varint width boundary.
    let mut n = 0;
    for start in [
        0u64,
        126,
        16_382,
        (1 << 21) - 1,
        (1 << 40) - 1,
        (1 << 53) - 3,
    ] {
        if start > 0 {
            let _: () = client.hset(&meta, ("seq", start)).await?;
        }
        n += 2;
        let events = [
            event("s1", &format!("a{n}"), start + 1),
            event("s1", &format!("b{n}"), start + 2),
        ];
        let outcomes = publish(&publisher, &events).await?;
        assert_eq!(
            outcomes,
            [Outcome::Published(start + 1), Outcome::Published(start + 2)]
        );
        let epoch: String = client.hget(&meta, "epoch").await?;
        for expected in [start + 1, start + 2] {
            let msg = tokio::time::timeout(Duration::from_secs(5), messages.recv()).await??;
            // fred hands over payloads that happen to be UTF-8 as strings.
            let env = envelope::decode(msg.value.as_bytes().expect("a bulk string payload"))?;
            assert_eq!((env.seq, env.epoch.as_str()), (expected, epoch.as_str()));
            assert_eq!(&env.data[..], format!("{{\"n\":{expected}}}").as_bytes());
        }
    }
    let ttl: i64 = client.pttl(&meta).await?;
    // The limit plus the upkeep interval (30 s, a quarter of the smallest limit, at these limits), so it never
    // expires before the limit.
    assert!(ttl > 120_000 && ttl <= 150_000, "state TTL set, got {ttl}");
    Ok(())
}

#[tokio::test]
async fn duplicates_are_dropped_without_a_seq() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let publisher =
        Publisher::new(client(&redis).await?, limits(1000), Duration::from_secs(3)).await?;
    let outcomes = publish(
        &publisher,
        &[
            event("s", "x", 1),
            event("s", "x", 1),
            event("s", "y", 2),
            event("s", "x", 1),
        ],
    )
    .await?;
    assert_eq!(
        outcomes,
        [
            Outcome::Published(1),
            Outcome::Duplicate,
            Outcome::Published(2),
            Outcome::Duplicate
        ]
    );
    // The same id for another session is another event.
    assert_eq!(
        publish(&publisher, &[event("t", "x", 1)]).await?,
        [Outcome::Published(1)]
    );
    Ok(())
}

#[tokio::test]
async fn buffer_keeps_the_newest_events_and_remembers_what_it_evicted() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = client(&redis).await?;
    let publisher = Publisher::new(client.clone(), limits(5), Duration::from_secs(3)).await?;
    let events: Vec<Publish> = (1..=12).map(|n| event("s", &format!("e{n}"), n)).collect();
    publish(&publisher, &events).await?;
    let k = SessionKeys::of("s");
    let len: u64 = client.xlen(&k.buffer).await?;
    assert_eq!(len, 5);
    let (evicted, reason): (u64, String) = client
        .hmget(&k.meta, vec!["evicted", "evicted_reason"])
        .await?;
    assert_eq!((evicted, reason.as_str()), (7, "buffer_overflow"));
    Ok(())
}

#[tokio::test]
async fn a_lost_function_library_is_detected_and_reloaded() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = client(&redis).await?;
    let publisher = Publisher::new(client.clone(), limits(1000), Duration::from_secs(3)).await?;
    let _: () = client.function_flush(false).await?;

    let e = event("s2", "only", 1);
    let failed = publisher
        .publish(&[&e])
        .await
        .remove(0)
        .expect_err("function is gone");
    assert!(is_function_missing(&failed), "{failed}");
    publisher.load_library().await?;
    assert_eq!(
        publisher.publish(&[&e]).await.remove(0)?,
        Outcome::Published(1),
        "nothing ran before"
    );
    Ok(())
}

#[tokio::test]
async fn events_older_than_the_age_limit_are_evicted_as_expired() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = client(&redis).await?;
    let publisher =
        Publisher::new(client.clone(), one_second_buffer(), Duration::from_secs(3)).await?;
    // e1 at 0 s, e2 at 0.6 s, e3 at 1.2 s: by then e1 is older than the limit and trimmed at the upkeep e3 is due
    // for; the buffer key itself stays alive, its TTL refreshed at every upkeep (at most 250 ms apart here).
    publish(&publisher, &[event("s", "e1", 1)]).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    publish(&publisher, &[event("s", "e2", 2)]).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    publish(&publisher, &[event("s", "e3", 3)]).await?;
    let k = SessionKeys::of("s");
    let len: u64 = client.xlen(&k.buffer).await?;
    assert_eq!(len, 2, "e2 and e3 stay");
    let (evicted, reason): (u64, String) = client
        .hmget(&k.meta, vec!["evicted", "evicted_reason"])
        .await?;
    assert_eq!((evicted, reason.as_str()), (1, "expired"));
    Ok(())
}

/// A buffer that keeps events for 1 s (the upkeep runs at most every 250 ms).
fn one_second_buffer() -> Limits {
    Limits {
        buffer_max_age: Duration::from_secs(1),
        ..limits(1000)
    }
}

/// Limits of 400 ms: the upkeep runs at most every 100 ms.
fn short_limits() -> Limits {
    Limits {
        buffer_max_events: 1000,
        buffer_max_age: Duration::from_millis(400),
        dedup_window: Duration::from_millis(400),
        state_ttl: Duration::from_millis(400),
        durable_restarts: false,
    }
}

async fn pttls(client: &Client, k: &SessionKeys) -> anyhow::Result<[i64; 3]> {
    Ok([
        client.pttl(&k.meta).await?,
        client.pttl(&k.buffer).await?,
        client.pttl(&k.ids).await?,
    ])
}

#[tokio::test]
async fn between_upkeeps_every_key_still_outlives_its_limit_after_the_last_event()
-> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = client(&redis).await?;
    // Limits of 2 s: the upkeep runs at most every 500 ms.
    let limits = Limits {
        buffer_max_events: 1000,
        buffer_max_age: Duration::from_secs(2),
        dedup_window: Duration::from_secs(2),
        state_ttl: Duration::from_secs(2),
        durable_restarts: false,
    };
    let publisher = Publisher::new(client.clone(), limits, Duration::from_secs(3)).await?;
    let k = SessionKeys::of("s");
    publish(&publisher, &[event("s", "e1", 1)]).await?;
    for ttl in pttls(&client, &k).await? {
        assert!(
            ttl > 2000 && ttl <= 2500,
            "limit + upkeep interval, got {ttl}"
        );
    }
    // Inside the upkeep interval no TTL is refreshed, yet each still outlives the limit counted from e2.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let before_e2 = std::time::Instant::now();
    publish(&publisher, &[event("s", "e2", 2)]).await?;
    let after_e2 = pttls(&client, &k).await?;
    let spent = before_e2.elapsed().as_millis() as i64;
    for ttl in after_e2 {
        assert!(
            ttl >= 2000 - spent,
            "outlives the limit after e2, got {ttl}"
        );
        assert!(ttl < 2400, "not refreshed inside the interval, got {ttl}");
    }
    Ok(())
}

#[tokio::test]
async fn a_resume_never_shortens_the_ttl_a_publish_gave_and_sets_one_on_a_new_session()
-> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = client(&redis).await?;
    let publisher = Publisher::new(client.clone(), limits(1000), Duration::from_secs(3)).await?;
    publish(&publisher, &[event("s", "e1", 1)]).await?;
    let resume = |session: &str| {
        let k = SessionKeys::of(session);
        client.fcall::<fred::types::Value, _, _, _>(
            ces_runtime::redis::RESUME_FUNCTION,
            vec![k.meta, k.buffer],
            vec!["0", "0123456789abcdef", "120000"],
        )
    };
    resume("s").await?;
    let ttl: i64 = client.pttl(SessionKeys::of("s").meta).await?;
    assert!(
        ttl > 120_000,
        "the publish's TTL (limit + 1 s) stays, got {ttl}"
    );
    resume("new").await?;
    let ttl: i64 = client.pttl(SessionKeys::of("new").meta).await?;
    assert!(
        ttl > 119_000 && ttl <= 120_000,
        "a new session's state gets the TTL, got {ttl}"
    );
    // With the session's own TTL given (as edges give it): a session nothing was published to keeps its epoch
    // only that long, one with events keeps the state TTL.
    let resume_short = |session: &str| {
        let k = SessionKeys::of(session);
        client.fcall::<fred::types::Value, _, _, _>(
            ces_runtime::redis::RESUME_FUNCTION,
            vec![k.meta, k.buffer],
            vec!["0", "0123456789abcdef", "120000", "0", "30000"],
        )
    };
    resume_short("fresh").await?;
    let ttl: i64 = client.pttl(SessionKeys::of("fresh").meta).await?;
    assert!(
        ttl > 29_000 && ttl <= 30_000,
        "an unpublished session's state lives as long as the session, got {ttl}"
    );
    resume_short("s").await?;
    let ttl: i64 = client.pttl(SessionKeys::of("s").meta).await?;
    assert!(
        ttl > 120_000,
        "a session with events keeps its TTL, got {ttl}"
    );
    Ok(())
}

#[tokio::test]
async fn keys_that_expired_get_their_ttl_back_and_old_ids_are_no_longer_duplicates()
-> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = client(&redis).await?;
    let publisher = Publisher::new(client.clone(), short_limits(), Duration::from_secs(3)).await?;
    let k = SessionKeys::of("s");
    assert_eq!(
        publish(&publisher, &[event("s", "e1", 1)]).await?,
        [Outcome::Published(1)]
    );
    // Everything expires (400 ms + the 100 ms interval) and is re-created by the next publish, which must give
    // each key its TTL again: a key without one would live forever.
    tokio::time::sleep(Duration::from_millis(650)).await;
    let exists: u64 = client.exists(vec![&k.meta, &k.buffer, &k.ids]).await?;
    assert_eq!(exists, 0, "all three keys expired");
    assert_eq!(
        publish(&publisher, &[event("s", "e1", 1)]).await?,
        [Outcome::Published(1)],
        "past the dedup window the same id is a new event, in a new epoch"
    );
    for ttl in pttls(&client, &k).await? {
        assert!(ttl > 400 && ttl <= 500, "TTL set again, got {ttl}");
    }

    // Only the ids key goes (its own TTL, say): re-created by ZADD, it gets its TTL back at the upkeep that is
    // due by the time it could have expired.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _: () = client.del(&k.ids).await?;
    assert_eq!(
        publish(&publisher, &[event("s", "e2", 2)]).await?,
        [Outcome::Published(2)]
    );
    let ttl: i64 = client.pttl(&k.ids).await?;
    assert!(ttl > 400 && ttl <= 500, "ids TTL set again, got {ttl}");
    Ok(())
}

#[tokio::test]
async fn expiry_trims_every_expired_entry_at_once_even_past_one_read() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = client(&redis).await?;
    let publisher =
        Publisher::new(client.clone(), one_second_buffer(), Duration::from_secs(3)).await?;
    // 150 events (more than the 64 the upkeep reads at a time), then one more after they all expired.
    let first: Vec<Publish> = (1..=150).map(|n| event("s", &format!("a{n}"), n)).collect();
    publish(&publisher, &first).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        publish(&publisher, &[event("s", "b", 151)]).await?,
        [Outcome::Published(151)]
    );
    let k = SessionKeys::of("s");
    let len: u64 = client.xlen(&k.buffer).await?;
    assert_eq!(len, 1, "only the newest event stays");
    let (evicted, reason): (u64, String) = client
        .hmget(&k.meta, vec!["evicted", "evicted_reason"])
        .await?;
    assert_eq!((evicted, reason.as_str()), (150, "expired"));
    Ok(())
}

#[tokio::test]
async fn a_lost_state_starts_a_new_epoch_and_drops_the_old_buffer() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = client(&redis).await?;
    let publisher = Publisher::new(client.clone(), limits(1000), Duration::from_secs(3)).await?;
    publish(&publisher, &[event("s", "e1", 1), event("s", "e2", 2)]).await?;
    let k = SessionKeys::of("s");
    let old: String = client.hget(&k.meta, "epoch").await?;
    // The state goes (say, evicted under memory pressure) while the buffer stays.
    let _: () = client.del(&k.meta).await?;
    assert_eq!(
        publish(&publisher, &[event("s", "e3", 3)]).await?,
        [Outcome::Published(1)]
    );
    let new: String = client.hget(&k.meta, "epoch").await?;
    assert_ne!(old, new);
    let len: u64 = client.xlen(&k.buffer).await?;
    assert_eq!(len, 1, "only the new epoch's event is buffered");
    Ok(())
}

#[tokio::test]
async fn a_key_of_the_wrong_type_fails_only_its_event_and_is_an_event_error() -> anyhow::Result<()>
{
    let redis = Redis::start().await?;
    let client = client(&redis).await?;
    let publisher = Publisher::new(client.clone(), limits(1000), Duration::from_secs(3)).await?;
    // Another program wrote a plain string where the session's dedup set lives.
    let _: () = client
        .set(SessionKeys::of("bad").ids, "oops", None, None, false)
        .await?;
    let events = [
        event("ok", "e1", 1),
        event("bad", "e2", 1),
        event("ok", "e3", 2),
    ];
    let refs: Vec<&Publish> = events.iter().collect();
    let results = publisher.publish(&refs).await;
    assert!(matches!(results[0], Ok(Outcome::Published(1))));
    let error = results[1].as_ref().expect_err("wrong type");
    assert!(ces_ingest::publisher::is_event_error(error), "{error}");
    assert!(matches!(results[2], Ok(Outcome::Published(2))));

    // Redis gone: the same call is an outage, never an event error.
    drop(redis);
    let results = publisher.publish(&refs[..1]).await;
    let error = results[0].as_ref().expect_err("redis is down");
    assert!(!ces_ingest::publisher::is_event_error(error), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_failed_event_holds_back_the_rest_of_its_session_and_leaves_no_seq_gap()
-> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = client(&redis).await?;
    let publisher = Publisher::new(client.clone(), limits(1000), Duration::from_secs(3)).await?;
    assert_eq!(
        publish(&publisher, &[event("s", "e0", 0)]).await?,
        [Outcome::Published(1)]
    );
    // The session's buffer is broken for a moment (another program wrote a string there).
    let keys = SessionKeys::of("s");
    let _: () = client.del(&keys.buffer).await?;
    let _: () = client.set(&keys.buffer, "oops", None, None, false).await?;
    let events = [
        event("s", "e1", 1),
        event("other", "o1", 1),
        event("s", "e2", 2),
    ];
    let refs: Vec<&Publish> = events.iter().collect();
    let results = publisher.publish(&refs).await;
    assert!(results[0].is_err(), "e1 fails on the broken key");
    assert!(
        matches!(results[1], Ok(Outcome::Published(1))),
        "other sessions go on"
    );
    let held = results[2].as_ref().expect_err("e2 must wait for e1");
    assert!(held.to_string().contains("CESORDER"), "{held}");
    assert!(!ces_ingest::publisher::is_event_error(held));
    let seq: u64 = client.hget(&keys.meta, "seq").await?;
    assert_eq!(seq, 1, "no seq was spent on the failed calls");

    // Repaired, the retry from the first failure publishes both, in order, with the next seqs.
    let _: () = client.del(&keys.buffer).await?;
    let retry: Vec<&Publish> = vec![&events[0], &events[1], &events[2]];
    let outcomes: Vec<Outcome> = publisher
        .publish(&retry)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    assert_eq!(
        outcomes,
        [
            Outcome::Published(2),
            Outcome::Duplicate,
            Outcome::Published(3)
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_batch_of_several_calls_numbers_each_session_in_order() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let client = client(&redis).await?;
    let publisher = Publisher::new(client.clone(), limits(1000), Duration::from_secs(3)).await?;
    // More events than one call takes, two sessions interleaved unevenly, one id repeated within the batch.
    let n = 2 * ces_ingest::publisher::CALL_MAX + 7;
    let mut events: Vec<Publish> = (0..n)
        .map(|i| {
            let session = if i % 3 == 0 { "b" } else { "a" };
            event(session, &format!("{session}{i}"), i as u64)
        })
        .collect();
    events.push(event("a", "a1", 1));
    let outcomes = publish(&publisher, &events).await?;
    let mut next = std::collections::HashMap::from([("a", 1u64), ("b", 1u64)]);
    for (ev, outcome) in events[..n].iter().zip(&outcomes) {
        let seq = next.get_mut(ev.session_id.as_str()).unwrap();
        assert_eq!(*outcome, Outcome::Published(*seq), "{}", ev.event_id);
        *seq += 1;
    }
    assert_eq!(outcomes[n], Outcome::Duplicate, "the repeated id");
    for (session, next) in next {
        let seq: u64 = client.hget(SessionKeys::of(session).meta, "seq").await?;
        assert_eq!(seq, next - 1, "{session}");
        let len: u64 = client.xlen(SessionKeys::of(session).buffer).await?;
        assert_eq!(len, next - 1, "{session}: every event buffered once");
    }
    Ok(())
}
