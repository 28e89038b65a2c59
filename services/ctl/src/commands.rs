//! The subcommands `topics` and `produce`; `watch` is [`crate::watch`], `session` [`crate::session`], `dlq`
//! [`crate::dlq`].

use std::time::Duration;

use anyhow::{Context as _, bail};
use ces_runtime::config::Env;
use clap::{Args, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use serde_json::{Value, json};

use crate::kafka::Kafka;

/// Default Kafka bootstrap servers (`CES_KAFKA_BROKERS`).
pub(crate) const DEFAULT_BROKERS: &str = "127.0.0.1:9092";

/// `cesctl topics ...`
#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// Create topics (existing ones are left as they are).
    Create {
        /// Kafka bootstrap servers.
        #[arg(long, env = "CES_KAFKA_BROKERS", default_value = DEFAULT_BROKERS)]
        brokers: String,
        /// Partitions per topic.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=10_000))]
        partitions: i32,
        /// Topic names.
        #[arg(required = true)]
        topics: Vec<String>,
    },
}

pub(crate) async fn topics(command: TopicsCommand) -> anyhow::Result<()> {
    let TopicsCommand::Create {
        brokers,
        partitions,
        topics,
    } = command;
    let kafka = Kafka::read(brokers, &Env)?;
    let brokers = &kafka.brokers;
    let admin: AdminClient<DefaultClientContext> =
        kafka.config(&[]).create().context("kafka admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .with_context(|| format!("cannot reach Kafka at {brokers}"))?;
    let mut failed = false;
    for result in results {
        match result {
            Ok(topic) => println!("created {topic} ({partitions} partitions)"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => println!("exists  {topic}"),
            Err((topic, code)) => {
                eprintln!("cesctl: cannot create {topic}: {code}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("some topics were not created");
    }
    Ok(())
}

/// `cesctl produce ...`
#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "CES_KAFKA_BROKERS", default_value = DEFAULT_BROKERS)]
    brokers: String,
    /// Input topic.
    #[arg(long, default_value = "ces.events")]
    topic: String,
    /// Session the events are for (also the record key).
    #[arg(long)]
    session: String,
    /// Event type.
    #[arg(long = "type", default_value = "demo.ping")]
    event_type: String,
    /// Event data, as JSON.
    #[arg(long, default_value = "{}")]
    data: String,
    /// Producer idempotency key (`id`); with --count > 1 each event gets `<id>-<n>`. Without it every run gets a
    /// fresh id, so running the same command twice sends two events; give the same --id twice to see the second
    /// dropped as a duplicate.
    #[arg(long)]
    id: Option<String>,
    /// Number of events; with more than one, each event's data object also gets `"n": 1..=count`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    count: u64,
    /// Send the value exactly as given in --data, without wrapping it in an event (to test dead-lettering).
    #[arg(long)]
    raw: bool,
}

pub(crate) async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let kafka = Kafka::read(args.brokers.clone(), &Env)?;
    let producer: FutureProducer = kafka
        .config(&[
            ("acks", "all".into()),
            ("linger.ms", "5".into()),
            ("message.timeout.ms", "15000".into()),
        ])
        .create()
        .context("kafka producer")?;
    let values = event_values(&args)?;
    let sends = values.iter().map(|v| {
        let record = FutureRecord::to(&args.topic)
            .key(args.session.as_bytes())
            .payload(v.as_slice());
        producer.send(record, Timeout::After(Duration::from_secs(15)))
    });
    let mut last = None;
    for result in futures::future::join_all(sends).await {
        let delivery = result
            .map_err(|(e, _)| e)
            .with_context(|| format!("producing to {} at {}", args.topic, args.brokers))?;
        last = Some(delivery);
    }
    if let Some(d) = last {
        println!(
            "produced {} event(s) to {} (last at partition {} offset {})",
            values.len(),
            args.topic,
            d.partition,
            d.offset
        );
    }
    Ok(())
}

fn event_values(args: &ProduceArgs) -> anyhow::Result<Vec<Vec<u8>>> {
    if args.raw {
        return Ok(vec![args.data.as_bytes().to_vec(); args.count as usize]);
    }
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("cesctl-{:016x}", rand::random::<u64>()));
    let data: Value = serde_json::from_str(&args.data)
        .with_context(|| format!("--data is not JSON: {}", args.data))?;
    (1..=args.count)
        .map(|n| {
            let mut data = data.clone();
            if args.count > 1 {
                match &mut data {
                    Value::Object(map) => {
                        map.insert("n".into(), json!(n));
                    }
                    _ => bail!(
                        "--count > 1 needs --data to be a JSON object (each event gets \"n\")"
                    ),
                }
            }
            let mut event =
                json!({ "session_id": args.session, "type": args.event_type, "data": data });
            event["id"] = json!(if args.count > 1 {
                format!("{id}-{n}")
            } else {
                id.clone()
            });
            Ok(serde_json::to_vec(&event)?)
        })
        .collect()
}
