//! Topic readiness: ingest starts consuming only when every input topic exists, and creates the dead-letter
//! topic when configuration allows, so a dead letter never waits on a topic nobody made.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ces_runtime::backoff::Backoff;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Config, Error, http};

/// Bound on one metadata or admin request; a broker that does not answer is retried, not waited on.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits with backoff until the input topics and the dead-letter topic exist, creating the latter if allowed.
/// `/readyz` says what is missing meanwhile. `Ok(false)` when cancelled first.
pub async fn ensure(
    config: &Config,
    state: &http::State,
    cancel: &CancellationToken,
) -> Result<bool, Error> {
    let admin: Arc<AdminClient<DefaultClientContext>> =
        Arc::new(crate::kafka::client_config(config, &[]).create()?);
    let mut wanted = config.topics.clone();
    wanted.push(config.dlq_topic.clone());
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match missing(&admin, &wanted).await {
            Ok(missing) if missing.is_empty() => return Ok(true),
            Ok(missing) => {
                if config.dlq_create && missing.contains(&config.dlq_topic) {
                    create_dlq(&admin, config).await;
                }
                state.set_not_ready(format!("waiting for topics: {}", missing.join(", ")));
                info!(?missing, "waiting for topics");
            }
            Err(e) => {
                state.set_not_ready(format!("kafka unreachable: {e}"));
                warn!(error = %e, "cannot read topic metadata");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(false),
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn missing(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    wanted: &[String],
) -> Result<Vec<String>, Error> {
    let admin = admin.clone();
    let wanted = wanted.to_vec();
    // librdkafka's metadata call blocks its thread.
    tokio::task::spawn_blocking(move || {
        let metadata = admin.inner().fetch_metadata(None, REQUEST_TIMEOUT)?;
        let present: HashSet<&str> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.name())
            .collect();
        Ok(wanted
            .into_iter()
            .filter(|t| !present.contains(t.as_str()))
            .collect())
    })
    .await
    .map_err(|e| Error::Startup(format!("metadata task failed: {e}")))?
}

async fn create_dlq(admin: &AdminClient<DefaultClientContext>, config: &Config) {
    let replication = TopicReplication::Fixed(config.dlq_replication);
    let topic = NewTopic::new(&config.dlq_topic, config.dlq_partitions, replication);
    let options = AdminOptions::new()
        .operation_timeout(Some(REQUEST_TIMEOUT))
        .request_timeout(Some(REQUEST_TIMEOUT));
    match admin.create_topics([&topic], &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(name) => info!(
                        topic = name,
                        partitions = config.dlq_partitions,
                        "created the dead-letter topic"
                    ),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => {
                        warn!(topic = name, error = %code, "cannot create the dead-letter topic")
                    }
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot create the dead-letter topic"),
    }
}
