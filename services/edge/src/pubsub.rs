//! The node's sharded Pub/Sub connection: how channels are subscribed, how messages reach the dispatch task, and
//! how the node keeps knowing that it receives.
//!
//! - Channels are subscribed with `SSUBSCRIBE`, on a single Redis as on a cluster, one command per hash slot (a
//!   cluster refuses channels of several slots in one command); the commands of a batch are pipelined.
//! - [`pump`] moves every message from fred's broadcast channel into a queue bounded in count and in bytes
//!   (`CES_PUBSUB_BUFFER_BYTES`) that the dispatch task reads. A message that does not fit is dropped, and once
//!   the queue takes messages again every local socket catches up from its buffer: what was dropped is there.
//! - [`keep_receiving`] never gives up: after every reconnect of the Pub/Sub connection, and whenever Redis no
//!   longer counts this node as a subscriber of its control channel (`PUBSUB SHARDNUMSUB`), it subscribes
//!   everything again from the hub's own table, with backoff, until Redis confirms it; then every local socket
//!   catches up. Until then `/readyz` answers 503 `not receiving`.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{EventInterface, PubsubInterface};
use fred::types::Message;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::hub::{Channels, Hub};
use crate::metrics as m;
use crate::queue;

/// How often the node checks that Redis still counts it as a subscriber.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// One message read from the Pub/Sub connection.
#[derive(Debug)]
pub struct Inbound(pub Message);

impl queue::ByteLen for Inbound {
    fn byte_len(&self) -> usize {
        self.0.channel.len() + self.0.value.as_bytes().map_or(0, <[u8]>::len)
    }
}

/// Groups `channels` by their Redis Cluster hash slot, in slot order.
fn by_slot(channels: Vec<String>) -> BTreeMap<u16, Vec<String>> {
    let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for channel in channels {
        groups
            .entry(fred::util::redis_keyslot(channel.as_bytes()))
            .or_default()
            .push(channel);
    }
    groups
}

/// Sends one command per slot group, all at once (fred pipelines them); the first error, if any.
async fn per_slot<F, Fut>(channels: Vec<String>, send: F) -> Result<(), String>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Result<(), fred::error::Error>>,
{
    let results = futures::future::join_all(by_slot(channels).into_values().map(send)).await;
    match results.into_iter().find_map(Result::err) {
        Some(e) => Err(e.to_string()),
        None => Ok(()),
    }
}

impl Channels for SubscriberClient {
    async fn subscribe(&self, channels: Vec<String>) -> Result<(), String> {
        per_slot(channels, |group| self.ssubscribe(group)).await
    }

    async fn unsubscribe(&self, channels: Vec<String>) -> Result<(), String> {
        per_slot(channels, |group| self.sunsubscribe(group)).await
    }
}

/// Moves messages from `messages` into `inbound` until either side closes or the hub is gone. A message the
/// queue refuses (full by count or bytes), or one the broadcast channel dropped, is counted in
/// `ces_edge_subscriber_lagged_total`; when the queue takes a message again, every local socket catches up from
/// its buffer (after the last drop, so the buffer holds everything dropped).
pub async fn pump(
    hub: Weak<Hub>,
    mut messages: broadcast::Receiver<Message>,
    inbound: queue::Sender<Inbound>,
) {
    let mut dropped = 0u64;
    loop {
        let msg = match messages.recv().await {
            Ok(msg) => msg,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics::counter!(m::SUBSCRIBER_LAGGED).increment(missed);
                dropped += missed;
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        match inbound.try_send(Inbound(msg)) {
            Ok(()) if dropped > 0 => {
                warn!(
                    dropped,
                    "pub/sub messages dropped while the dispatch task was behind; every local socket catches up from its buffer"
                );
                dropped = 0;
                match hub.upgrade() {
                    Some(hub) => hub.resync_all(),
                    None => break,
                }
            }
            Ok(()) => {}
            // This queue shares no budget; full either way.
            Err(queue::Refused::Full(_) | queue::Refused::OverBudget(_)) => {
                metrics::counter!(m::SUBSCRIBER_LAGGED).increment(1);
                dropped += 1;
            }
            Err(queue::Refused::Closed(_)) => break,
        }
    }
    debug!("pub/sub pump stopped");
}

/// Whether Redis counts at least one subscriber of `control`, the node's own control channel (asked of the
/// shard that owns it). `None` when Redis did not answer.
async fn control_subscribed(redis: &Client, control: &str) -> Option<bool> {
    let answer: Result<Vec<(String, u64)>, _> = tokio::time::timeout(
        Duration::from_secs(1),
        redis.pubsub_shardnumsub::<Vec<(String, u64)>, _>(control),
    )
    .await
    .ok()?;
    answer.ok().map(|counts| has_subscriber(&counts))
}

/// Whether a `PUBSUB SHARDNUMSUB` answer counts a subscriber for any of its channels.
fn has_subscriber(counts: &[(String, u64)]) -> bool {
    counts.iter().any(|(_, n)| *n > 0)
}

/// Keeps the node subscribed for as long as the hub lives (see the module docs). `redis` is the command client,
/// used to ask Redis whether it still counts the node as a subscriber.
pub async fn keep_receiving(
    hub: Weak<Hub>,
    subscriber: SubscriberClient,
    redis: Client,
    control: String,
) {
    let mut reconnects = subscriber.reconnect_rx();
    let mut backoff =
        ces_runtime::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut lost = true;
    loop {
        if !lost {
            tokio::select! {
                r = reconnects.recv() => match r {
                    Ok(server) => {
                        info!(%server, "pub/sub connection re-established; subscribing again");
                        lost = true;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => lost = true,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = tokio::time::sleep(CHECK_EVERY) => {
                    if control_subscribed(&redis, &control).await == Some(false) {
                        warn!(channel = control, "redis no longer counts this node as a subscriber; subscribing again");
                        lost = true;
                    }
                }
            }
        }
        let Some(hub) = hub.upgrade() else { break };
        if !lost {
            continue;
        }
        hub.set_receiving(false);
        let outcome = match hub.resubscribe().await {
            Ok(()) => match control_subscribed(&redis, &control).await {
                Some(true) => Ok(()),
                Some(false) => {
                    Err("redis confirmed the subscribe but counts no subscriber".to_owned())
                }
                None => Err("redis did not answer PUBSUB SHARDNUMSUB".to_owned()),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                hub.set_receiving(true);
                // Whatever was published while the node was not subscribed is in the buffers.
                hub.resync_all();
                lost = false;
                backoff = ces_runtime::backoff::Backoff::new(
                    Duration::from_millis(50),
                    Duration::from_secs(2),
                );
            }
            Err(e) => {
                drop(hub);
                warn!(error = %e, "subscribing failed; the node is not ready and retries");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    debug!("subscription keeper stopped");
}

/// Waits until the node is subscribed for the first time, or `within` passed.
pub async fn first_subscribed(hub: &Arc<Hub>, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    while !hub.receiving() {
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use fred::types::config::Server;
    use fred::types::{MessageKind, Value};

    use super::*;
    use crate::queue::ByteLen as _;

    fn message(channel: &str, value: &str) -> Message {
        Message {
            channel: channel.into(),
            value: Value::String(value.into()),
            kind: MessageKind::SMessage,
            server: Server::new("127.0.0.1", 6379),
        }
    }

    #[test]
    fn channels_are_grouped_by_slot_in_slot_order() {
        let channels: Vec<String> = ["a", "b", "a2", "c"]
            .iter()
            .map(|s| ces_protocol::keys::channel(s))
            .collect();
        // Keys with the same hash tag share a slot.
        let same = vec![ces_protocol::keys::channel("x"), "ces:{x}:other".to_owned()];
        let groups = by_slot(same.clone());
        assert_eq!(groups.len(), 1);
        assert_eq!(groups.into_values().next().unwrap(), same);
        let groups = by_slot(channels.clone());
        let slots: Vec<u16> = groups.keys().copied().collect();
        let mut sorted = slots.clone();
        sorted.sort_unstable();
        assert_eq!(slots, sorted);
        let mut all: Vec<String> = groups.into_values().flatten().collect();
        all.sort();
        let mut expected = channels;
        expected.sort();
        assert_eq!(all, expected);
        for c in &all {
            let tag = c.strip_prefix("ces:{").unwrap().split('}').next().unwrap();
            assert_eq!(
                fred::util::redis_keyslot(c.as_bytes()),
                fred::util::redis_keyslot(tag.as_bytes())
            );
        }
    }

    #[test]
    fn a_shardnumsub_answer_counts_a_subscriber_only_above_zero() {
        let answer = |n| vec![("ces:node:{n}".to_owned(), n)];
        assert!(!has_subscriber(&answer(0)));
        assert!(has_subscriber(&answer(1)));
        assert!(has_subscriber(&answer(2)));
        assert!(!has_subscriber(&[]));
    }

    #[test]
    fn a_message_counts_its_channel_and_payload_bytes() {
        assert_eq!(Inbound(message("ch", "12345")).byte_len(), 7);
    }

    #[tokio::test]
    async fn per_slot_reports_the_first_error_and_sends_every_group() {
        let sent = std::sync::Mutex::new(Vec::new());
        let channels: Vec<String> = (0..20).map(|i| format!("ces:{{s{i}}}:ch")).collect();
        let groups = by_slot(channels.clone()).len();
        let r = per_slot(channels.clone(), |g| {
            sent.lock().unwrap().push(g.clone());
            async move {
                if g.iter().any(|c| c == "ces:{s3}:ch") {
                    Err(fred::error::Error::new(
                        fred::error::ErrorKind::Unknown,
                        "NOPERM",
                    ))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(r.unwrap_err().contains("NOPERM"));
        assert_eq!(sent.lock().unwrap().len(), groups);
        assert_eq!(
            per_slot(channels, |_| async { Ok(()) }).await,
            Ok(()),
            "no error, no failure"
        );
    }
}
