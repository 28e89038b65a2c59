//! Delivery receipts to Kafka (docs/admin.md, "Delivery receipts"): with `CES_RECEIPTS_TOPIC` set, one small record
//! per event written to a client's socket (`delivered`), per event the client acknowledged (`acked`) and per range
//! reported lost (`lost`), keyed by session.
//!
//! Off the socket's hot path: a socket hands what it wrote (the frames, shared, not copied) to a bounded queue
//! with `try_send` and goes on; one task per node parses them, produces the receipts (librdkafka batches them) and
//! keeps, per session, the receipts not yet confirmed by Kafka and the events not yet acknowledged.
//!
//! At-least-once across an edge kill: once Kafka confirmed every `delivered` receipt of a session up to `seq` N,
//! the task stores N (with its epoch) under [`ces_protocol::keys::receipted_key`]. A client that resumes on any
//! edge with `last_seq` M has every event up to M, so that edge produces `delivered` receipts for the events after
//! the stored mark up to M from the buffer: the edge that wrote them may have died before its receipts reached
//! Kafka. Duplicates are possible (deduplicate by event id and kind), losses only when the queue overflows or an
//! event left the buffer before the resume (both counted).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use ces_runtime::config::Vars;
use fred::clients::Client;
use fred::interfaces::KeysInterface as _;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics as m;
use crate::resume::{self, Page, StateTerms};

/// Events of one session written and not yet acknowledged that get an `acked` receipt when the client acks them;
/// older ones are forgotten (counted) so a client that never acks cannot grow the task's memory.
const UNACKED_MAX: usize = 4096;
/// How often the confirmed marks are stored.
const STORE_EVERY: Duration = Duration::from_secs(1);
/// Longest the catch-up after a resume reads: pages of the buffer.
const CATCH_UP_PAGES: usize = 8;
/// How long a stopping node waits for Kafka to confirm what it produced.
const FLUSH_WITHIN: Duration = Duration::from_secs(5);

/// What the edge needs to produce receipts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The topic (`CES_RECEIPTS_TOPIC`).
    pub topic: String,
    /// Kafka bootstrap servers (`CES_KAFKA_BROKERS`).
    pub brokers: String,
    /// librdkafka properties passed through (`CES_KAFKA_PROP_*`: TLS, SASL, tuning).
    pub properties: Vec<(String, String)>,
    /// Receipts handed over and not yet taken by the task (`CES_RECEIPTS_QUEUE`); past it they are dropped.
    pub queue: usize,
}

impl Settings {
    /// Reads the settings; `None` (receipts off) unless `CES_RECEIPTS_TOPIC` is set.
    pub fn read(v: &mut Vars<'_>) -> Option<Self> {
        let topic = v.optional("CES_RECEIPTS_TOPIC");
        let brokers = v.string("CES_KAFKA_BROKERS", "127.0.0.1:9092");
        let properties = v.passthrough("CES_KAFKA_PROP_", RESERVED_PROPERTIES);
        let queue = v.bounded("CES_RECEIPTS_QUEUE", 100_000, 100, 100_000_000) as usize;
        Some(Self {
            topic: topic?,
            brokers,
            properties,
            queue,
        })
    }
}

/// Properties the receipts producer sets itself: idempotent, every replica confirming.
const RESERVED_PROPERTIES: &[&str] = &["enable.idempotence", "acks"];

/// What a socket tells the task.
#[derive(Debug)]
enum Note {
    /// A connection of `session` opened in `epoch`, resuming from `last_seq` if it resumed.
    Opened {
        session: Arc<str>,
        epoch: Arc<str>,
        last_seq: Option<u64>,
    },
    /// Frames written to the session's socket (events, and `resumed` notices).
    Written {
        session: Arc<str>,
        frames: Vec<Utf8Bytes>,
    },
    /// The client acknowledged every event up to `seq`.
    Acked { session: Arc<str>, seq: u64 },
    /// The session's connection on this node ended.
    Ended { session: Arc<str> },
}

/// A socket's side: cheap to clone, never waits.
#[derive(Debug, Clone)]
pub struct Receipts {
    notes: mpsc::Sender<Note>,
}

impl Receipts {
    fn hand(&self, note: Note) {
        if self.notes.try_send(note).is_err() {
            metrics::counter!(m::RECEIPTS_DROPPED, "why" => m::receipt::QUEUE_FULL).increment(1);
        }
    }

    /// A connection opened (after its welcome) in `epoch`, resuming from `last_seq` if it did.
    pub fn opened(&self, session: &str, epoch: &str, last_seq: Option<u64>) {
        self.hand(Note::Opened {
            session: session.into(),
            epoch: epoch.into(),
            last_seq,
        });
    }

    /// `frames` were written to the socket and flushed.
    pub fn written(&self, session: &str, frames: Vec<Utf8Bytes>) {
        if !frames.is_empty() {
            self.hand(Note::Written {
                session: session.into(),
                frames,
            });
        }
    }

    /// The client acknowledged every event up to `seq`.
    pub fn acked(&self, session: &str, seq: u64) {
        self.hand(Note::Acked {
            session: session.into(),
            seq,
        });
    }

    /// The connection ended.
    pub fn ended(&self, session: &str) {
        self.hand(Note::Ended {
            session: session.into(),
        });
    }
}

/// The running task; [`Task::finish`] drains it at shutdown.
#[derive(Debug)]
pub struct Task {
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Task {
    /// Stops taking notes, produces what was handed over, waits up to [`FLUSH_WITHIN`] for Kafka and stores the
    /// confirmed marks.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

/// Starts the producer and the task.
pub fn start(
    settings: &Settings,
    node: &str,
    redis: Client,
    state: StateTerms,
) -> Result<(Receipts, Task), rdkafka::error::KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("linger.ms", "20")
        .set("compression.type", "lz4");
    for (k, v) in &settings.properties {
        config.set(k, v);
    }
    config.set("enable.idempotence", "true").set("acks", "all");
    let producer: FutureProducer = config.create()?;
    let (notes, rx) = mpsc::channel(settings.queue);
    let stop = CancellationToken::new();
    let worker = Worker {
        producer,
        topic: settings.topic.clone(),
        node: node.into(),
        redis,
        state,
        sessions: HashMap::new(),
        confirms: FuturesUnordered::new(),
        marks: HashMap::new(),
    };
    let done = tokio::spawn(worker.run(rx, stop.clone()));
    info!(topic = %settings.topic, "producing delivery receipts");
    Ok((Receipts { notes }, Task { stop, done }))
}

/// One receipt, as written to Kafka.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct Record<'a> {
    session_id: &'a str,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
    seq: u64,
    /// Last `seq` of a `lost` range (`null`: open-ended, the epoch changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    seq_to: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    epoch: &'a str,
    node: &'a str,
    at_ms: i64,
}

/// What a frame written to a socket means for receipts.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    Event {
        seq: u64,
        id: String,
    },
    Lost {
        from: u64,
        to: Option<u64>,
        reason: String,
        epoch: Option<String>,
    },
    Other,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    id: Option<String>,
    ok: Option<bool>,
    reason: Option<String>,
    lost: Option<ces_protocol::frame::Lost>,
    epoch: Option<String>,
}

fn parse(frame: &str) -> Written {
    let Ok(f) = serde_json::from_str::<Frame>(frame) else {
        return Written::Other;
    };
    match (f.kind.as_str(), f.seq, f.id, f.ok, f.lost) {
        ("event", Some(seq), Some(id), _, _) => Written::Event { seq, id },
        ("resumed", _, _, Some(false), Some(lost)) => Written::Lost {
            from: lost.from,
            to: lost.to,
            reason: f.reason.unwrap_or_default(),
            epoch: f.epoch,
        },
        _ => Written::Other,
    }
}

/// One session's receipts on this node: its epoch, the `delivered` receipts Kafka has not confirmed yet, and the
/// events written and not acknowledged.
#[derive(Debug, Default)]
struct Log {
    epoch: Arc<str>,
    /// `seq` of `delivered` receipts produced and not yet confirmed.
    outstanding: BTreeSet<u64>,
    /// Highest `seq` a `delivered` receipt was produced for in this epoch.
    issued: u64,
    unacked: VecDeque<(u64, String)>,
    /// Its connection here ended: forgotten once nothing is outstanding.
    ended: bool,
}

impl Log {
    /// Every `delivered` receipt up to the returned `seq` is confirmed: the highest produced when none is
    /// outstanding, else the one below the oldest outstanding.
    fn confirmed(&self) -> u64 {
        self.outstanding
            .first()
            .map_or(self.issued, |oldest| oldest.saturating_sub(1))
    }

    /// A new epoch: numbering restarts, nothing of the old one is acknowledged any more.
    fn new_epoch(&mut self, epoch: &str) {
        if *self.epoch != *epoch {
            self.epoch = epoch.into();
            self.outstanding.clear();
            self.issued = 0;
            self.unacked.clear();
        }
    }

    /// An event written: remembered until the client acknowledges it; returns whether an older one was forgotten.
    fn written(&mut self, seq: u64, id: String) -> bool {
        self.outstanding.insert(seq);
        self.issued = self.issued.max(seq);
        self.unacked.push_back((seq, id));
        self.unacked.len() > UNACKED_MAX && self.unacked.pop_front().is_some()
    }

    /// The events up to `seq` the client acknowledged, in order.
    fn acked(&mut self, seq: u64) -> Vec<(u64, String)> {
        let n = self.unacked.iter().take_while(|(s, _)| *s <= seq).count();
        self.unacked.drain(..n).collect()
    }
}

type Confirm = BoxFuture<'static, (Arc<str>, Arc<str>, u64, bool)>;

struct Worker {
    producer: FutureProducer,
    topic: String,
    node: Arc<str>,
    redis: Client,
    state: StateTerms,
    sessions: HashMap<Arc<str>, Log>,
    /// `delivered` receipts in flight: (session, epoch, seq, confirmed).
    confirms: FuturesUnordered<Confirm>,
    /// Marks to store: session → (epoch, seq).
    marks: HashMap<Arc<str>, (Arc<str>, u64)>,
}

impl Worker {
    async fn run(mut self, mut notes: mpsc::Receiver<Note>, stop: CancellationToken) {
        let mut store = tokio::time::interval(STORE_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                note = notes.recv() => match note {
                    Some(note) => self.take(note).await,
                    None => break,
                },
                Some(confirm) = self.confirms.next(), if !self.confirms.is_empty() => self.confirmed(confirm),
                _ = store.tick() => self.store_marks().await,
            }
        }
        notes.close();
        while let Ok(note) = notes.try_recv() {
            self.take(note).await;
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(FLUSH_WITHIN)).await;
        let deadline = tokio::time::Instant::now() + FLUSH_WITHIN;
        while let Ok(Some(confirm)) = tokio::time::timeout_at(deadline, self.confirms.next()).await
        {
            self.confirmed(confirm);
        }
        self.store_marks().await;
    }

    async fn take(&mut self, note: Note) {
        match note {
            Note::Opened {
                session,
                epoch,
                last_seq,
            } => {
                let log = self.sessions.entry(session.clone()).or_default();
                log.ended = false;
                log.new_epoch(&epoch);
                if let Some(last_seq) = last_seq {
                    self.catch_up(&session, &epoch, last_seq).await;
                }
            }
            Note::Written { session, frames } => {
                for frame in frames {
                    self.frame(&session, &frame);
                }
            }
            Note::Acked { session, seq } => {
                let Some(log) = self.sessions.get_mut(&session) else {
                    return;
                };
                let epoch = log.epoch.clone();
                for (seq, id) in log.acked(seq) {
                    self.produce(&session, &epoch, m::receipt::ACKED, seq, Some(&id), None);
                }
            }
            Note::Ended { session } => {
                // Kept while receipts are in flight: their confirmation still moves the stored mark.
                if let Some(log) = self.sessions.get_mut(&session) {
                    log.unacked.clear();
                    log.ended = true;
                    if log.outstanding.is_empty() {
                        self.sessions.remove(&session);
                    }
                }
            }
        }
    }

    fn frame(&mut self, session: &Arc<str>, frame: &str) {
        let log = self.sessions.entry(session.clone()).or_default();
        match parse(frame) {
            Written::Event { seq, id } => {
                if log.written(seq, id.clone()) {
                    metrics::counter!(m::RECEIPTS_DROPPED, "why" => m::receipt::NEVER_ACKED)
                        .increment(1);
                }
                let epoch = log.epoch.clone();
                self.produce(session, &epoch, m::receipt::DELIVERED, seq, Some(&id), None);
            }
            Written::Lost {
                from,
                to,
                reason,
                epoch,
            } => {
                let old = log.epoch.clone();
                self.produce(
                    session,
                    &old,
                    m::receipt::LOST,
                    from,
                    None,
                    Some((to, &reason)),
                );
                if let Some(epoch) = epoch
                    && let Some(log) = self.sessions.get_mut(session)
                {
                    log.new_epoch(&epoch);
                }
            }
            Written::Other => {}
        }
    }

    /// A resume from `last_seq` in `epoch`: `delivered` receipts for the events after the stored mark up to
    /// `last_seq`, which the client has and whose receipts may have died with the edge that wrote them.
    async fn catch_up(&mut self, session: &Arc<str>, epoch: &Arc<str>, last_seq: u64) {
        let key = ces_protocol::keys::receipted_key(session);
        let mark: Option<String> = self.redis.get(&key).await.unwrap_or_default();
        let from = match mark.as_deref().and_then(|m| m.rsplit_once(':')) {
            Some((e, seq)) if e == &**epoch => seq.parse().unwrap_or(0),
            _ => 0,
        };
        let mut after = from;
        for _ in 0..CATCH_UP_PAGES {
            if after >= last_seq {
                return;
            }
            let snap = match resume::fetch(&self.redis, session, after, self.state, Page::REPLAY)
                .await
            {
                Ok(snap) if snap.epoch == **epoch => snap,
                Ok(_) => return,
                Err(e) => {
                    warn!(session_id = &**session, error = %e, "cannot read the buffer for receipts");
                    return;
                }
            };
            if snap.evicted > after {
                let lost = snap.evicted.min(last_seq) - after;
                metrics::counter!(m::RECEIPTS_DROPPED, "why" => m::receipt::LEFT_THE_BUFFER)
                    .increment(lost);
            }
            for event in snap.events.iter().filter(|e| e.seq <= last_seq) {
                let log = self.sessions.entry(session.clone()).or_default();
                log.outstanding.insert(event.seq);
                log.issued = log.issued.max(event.seq);
                self.produce(
                    session,
                    epoch,
                    m::receipt::DELIVERED,
                    event.seq,
                    Some(&event.event_id),
                    None,
                );
            }
            match snap.events.last() {
                Some(last) if snap.more => after = last.seq,
                _ => return,
            }
        }
    }

    fn produce(
        &mut self,
        session: &Arc<str>,
        epoch: &Arc<str>,
        kind: &'static str,
        seq: u64,
        event_id: Option<&str>,
        lost: Option<(Option<u64>, &str)>,
    ) {
        let record = Record {
            session_id: session,
            kind,
            event_id,
            seq,
            seq_to: lost.map(|(to, _)| to),
            reason: lost.map(|(_, reason)| reason),
            epoch,
            node: &self.node,
            at_ms: ces_runtime::now_ms(),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let sent = self.producer.send_result(
            FutureRecord::to(&self.topic)
                .key(&**session)
                .payload(&value),
        );
        metrics::counter!(m::RECEIPTS, "kind" => kind).increment(1);
        let delivered = kind == m::receipt::DELIVERED;
        let (session, epoch) = (session.clone(), epoch.clone());
        let confirm: Confirm = match sent {
            Ok(delivery) => Box::pin(async move {
                let ok = matches!(delivery.await, Ok(Ok(_)));
                (session, epoch, if delivered { seq } else { 0 }, ok)
            }),
            Err((e, _)) => {
                warn!(error = %e, "cannot queue a receipt");
                Box::pin(async move { (session, epoch, if delivered { seq } else { 0 }, false) })
            }
        };
        self.confirms.push(confirm);
    }

    fn confirmed(&mut self, (session, epoch, seq, ok): (Arc<str>, Arc<str>, u64, bool)) {
        if !ok {
            // Stays outstanding: the stored mark stops below it, and the next resume produces it again.
            metrics::counter!(m::RECEIPTS_FAILED).increment(1);
            return;
        }
        if seq == 0 {
            return;
        }
        let Some(log) = self.sessions.get_mut(&session) else {
            return;
        };
        if log.epoch != epoch {
            return;
        }
        log.outstanding.remove(&seq);
        self.marks.insert(session.clone(), (epoch, log.confirmed()));
        if log.ended && log.outstanding.is_empty() {
            self.sessions.remove(&session);
        }
    }

    /// Stores the confirmed marks, one `SET ... PX` each (different slots on a Redis Cluster).
    async fn store_marks(&mut self) {
        if self.marks.is_empty() {
            return;
        }
        let ttl = self.state.ttl.as_millis().clamp(1, i64::MAX as u128) as i64;
        let pipeline = self.redis.pipeline();
        for (session, (epoch, seq)) in self.marks.drain() {
            let key = ces_protocol::keys::receipted_key(&session);
            let _: Result<(), _> = pipeline
                .set(
                    key,
                    format!("{epoch}:{seq}"),
                    Some(fred::types::Expiration::PX(ttl)),
                    None,
                    false,
                )
                .await;
        }
        if let Err(e) = pipeline.all::<fred::types::Value>().await {
            warn!(error = %e, "cannot store receipt marks");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_loss_notices_are_read_from_the_frames_written() {
        assert_eq!(
            parse(r#"{"type":"event","seq":7,"id":"ev_1","event":"t","data":{"n":1}}"#),
            Written::Event {
                seq: 7,
                id: "ev_1".into()
            }
        );
        assert_eq!(
            parse(
                r#"{"type":"resumed","ok":false,"replayed":0,"reason":"buffer_overflow","lost":{"from":3,"to":7}}"#
            ),
            Written::Lost {
                from: 3,
                to: Some(7),
                reason: "buffer_overflow".into(),
                epoch: None
            }
        );
        assert_eq!(
            parse(
                r#"{"type":"resumed","ok":false,"replayed":0,"reason":"epoch_changed","lost":{"from":4,"to":null},"epoch":"e2"}"#
            ),
            Written::Lost {
                from: 4,
                to: None,
                reason: "epoch_changed".into(),
                epoch: Some("e2".into())
            }
        );
        for other in [
            r#"{"type":"resumed","ok":true,"replayed":3}"#,
            r#"{"type":"welcome","session_id":"s","node":"a","epoch":"e","seq":0}"#,
            r#"{"type":"event","seq":7}"#,
            "not json",
        ] {
            assert_eq!(parse(other), Written::Other, "{other}");
        }
    }

    #[test]
    fn the_confirmed_mark_stops_below_the_oldest_receipt_kafka_has_not_confirmed() {
        let mut log = Log::default();
        log.new_epoch("e1");
        for seq in 3..=6 {
            log.written(seq, format!("ev{seq}"));
        }
        assert_eq!(log.confirmed(), 2);
        log.outstanding.remove(&4);
        assert_eq!(log.confirmed(), 2, "3 is not confirmed yet");
        log.outstanding.remove(&3);
        assert_eq!(log.confirmed(), 4);
        log.outstanding.remove(&6);
        log.outstanding.remove(&5);
        assert_eq!(log.confirmed(), 6);
    }

    #[test]
    fn acks_release_the_events_up_to_them_in_order_and_an_epoch_change_forgets_the_rest() {
        let mut log = Log::default();
        log.new_epoch("e1");
        for seq in 1..=4 {
            log.written(seq, format!("ev{seq}"));
        }
        assert_eq!(log.acked(2), [(1, "ev1".into()), (2, "ev2".into())]);
        assert_eq!(log.acked(2), []);
        log.new_epoch("e1");
        assert_eq!(log.unacked.len(), 2, "the same epoch keeps them");
        log.new_epoch("e2");
        assert_eq!((log.unacked.len(), log.issued, log.confirmed()), (0, 0, 0));
    }

    #[test]
    fn a_client_that_never_acks_costs_a_bounded_memory() {
        let mut log = Log::default();
        let forgotten = (1..=UNACKED_MAX as u64 + 2)
            .filter(|&seq| log.written(seq, String::new()))
            .count();
        assert_eq!((forgotten, log.unacked.len()), (2, UNACKED_MAX));
        assert_eq!(log.unacked.front().map(|(s, _)| *s), Some(3));
    }
}
