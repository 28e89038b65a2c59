//! `cesctl` against a broker that takes only TLS and SASL: the `CES_KAFKA_PROP_*` variables ingest reads reach
//! every Kafka client of `cesctl` (admin, producer, DLQ reader, replay producer), the password never appears in
//! what it prints, and a property `cesctl` relies on cannot be overridden. A broker of this test's own
//! ([`SecureBroker`]): its `SASL_SSL` listener trusts a throwaway CA and knows one user.

mod common;

use std::time::{Duration, Instant, SystemTime};

use ces_protocol::dlq;
use ces_systest::kafka::{self, Record};
use ces_systest::kafka_secure::SecureBroker;
use common::{cesctl_env, ok, stderr, stdout};
use serde_json::Value;

#[tokio::test]
async fn every_command_reaches_a_sasl_ssl_broker_through_ces_kafka_prop() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let password = format!("pw-{:016x}", rand::random::<u64>());
    let secure = SecureBroker::start("ces-operator", &password).await?;
    let b = secure.secure_bootstrap();
    let plain = secure.broker.bootstrap();
    let props = secure.client_env();
    let env: Vec<(&str, &str)> = props
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let run = |args: Vec<String>, env: Vec<(String, String)>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cesctl_env(&args, &env).await
    };
    let args = |a: &[&str]| -> Vec<String> { a.iter().map(|s| (*s).to_owned()).collect() };
    let with = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        env.iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let never_shows_the_password = |o: &std::process::Output| {
        assert!(
            !stdout(o).contains(&password) && !stderr(o).contains(&password),
            "the password was printed"
        );
    };

    // Admin client: topics created over TLS + SASL.
    let o = run(
        args(&[
            "topics",
            "create",
            "--brokers",
            &b,
            "--partitions",
            "1",
            "in",
            "in.dlq",
        ]),
        with(&[]),
    )
    .await?;
    never_shows_the_password(&o);
    assert_eq!(
        ok(&o),
        "created in (1 partitions)\ncreated in.dlq (1 partitions)\n"
    );

    // Producer: an event to the input topic.
    let o = run(
        args(&[
            "produce",
            "--brokers",
            &b,
            "--topic",
            "in",
            "--session",
            "s-1",
        ]),
        with(&[]),
    )
    .await?;
    never_shows_the_password(&o);
    assert!(ok(&o).starts_with("produced 1 event(s) to in"));

    // The DLQ reader and the replay producer: a dead letter (seeded over the plain listener) listed and replayed.
    let failed_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let headers = [
        (dlq::REASON, "invalid_json"),
        (dlq::SOURCE_TOPIC, "in"),
        (dlq::SOURCE_PARTITION, "0"),
        (dlq::SOURCE_OFFSET, "0"),
        (dlq::FAILED_AT, failed_at.as_str()),
    ]
    .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()));
    kafka::produce(
        &kafka::producer(&plain)?,
        "in.dlq",
        &[Record {
            key: Some(b"s-1".to_vec()),
            value: Some(b"not json".to_vec()),
            partition: Some(0),
            headers: headers.to_vec(),
        }],
    )
    .await?;
    let dlq = |cmd: &[&str]| {
        let mut a = args(&["dlq", "--brokers", &b, "--topic", "in.dlq"]);
        a.extend(args(cmd));
        a
    };
    let o = run(dlq(&["list", "--json"]), with(&[])).await?;
    never_shows_the_password(&o);
    let listed: Value = serde_json::from_str(ok(&o).trim())?;
    assert_eq!(listed["reason"], "invalid_json");
    let o = run(
        dlq(&["replay", "--all", "--json"]),
        with(&[("CES_KAFKA_TOPICS", "in")]),
    )
    .await?;
    never_shows_the_password(&o);
    let replayed: Value = serde_json::from_str(&ok(&o))?;
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    let input = kafka::read_to_end(&plain, "in", 0, Duration::from_secs(5)).await?;
    assert_eq!(input.len(), 2, "the produced event and the replay");

    // Without the credentials, or with a wrong password, the listener refuses: exit 1, bounded, nothing printed
    // but the error.
    let started = Instant::now();
    let o = run(dlq(&["list"]), Vec::new()).await?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!("cesctl: cannot reach Kafka at {b}: ")),
        "{}",
        stderr(&o)
    );
    let o = run(
        dlq(&["list"]),
        with(&[("CES_KAFKA_PROP_SASL_PASSWORD", "wrong")]),
    )
    .await?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    never_shows_the_password(&o);
    assert!(started.elapsed() < Duration::from_secs(40));

    // A property cesctl relies on is refused before anything is contacted (exit 2), naming every problem.
    let o = run(
        dlq(&["list"]),
        with(&[
            ("CES_KAFKA_PROP_ENABLE_AUTO_COMMIT", "true"),
            ("CES_KAFKA_PROP_ACKS", "1"),
        ]),
    )
    .await?;
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "cesctl: invalid configuration:\n  - CES_KAFKA_PROP_ACKS sets acks, which CES manages itself\n  - \
         CES_KAFKA_PROP_ENABLE_AUTO_COMMIT sets enable.auto.commit, which CES manages itself\n"
    );
    Ok(())
}
