//! The guarantee after a Redis failover or restore, checked from the client's side: every event arrives exactly
//! once (an event published again in a new epoch carries the id it had, so a client drops it by id), or the
//! client was told that a range is gone (`resumed ok:false`) and every event it misses lies in that range. Within
//! an epoch, `seq` runs 1, 2, 3, ... with no gap and no repeat, so no `seq` is ever reused for another event.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use ces_systest::client::WsClient;

/// One frame a following client got, with the epoch it belongs to.
#[derive(Debug, Clone)]
pub enum Got {
    /// An event frame.
    Event {
        epoch: String,
        seq: u64,
        id: String,
        n: u64,
    },
    /// A `resumed ok:false` frame.
    Lost(serde_json::Value),
}

/// Everything a followed session got, in order.
#[derive(Debug, Default)]
pub struct Timeline {
    pub got: Vec<Got>,
    /// Connections that ended and were resumed.
    pub reconnects: usize,
}

impl Timeline {
    /// The `data.n` of every event, in arrival order.
    pub fn ns(&self) -> Vec<u64> {
        self.got
            .iter()
            .filter_map(|g| match g {
                Got::Event { n, .. } => Some(*n),
                Got::Lost(_) => None,
            })
            .collect()
    }

    /// Whether the client was told of a loss.
    pub fn told(&self) -> bool {
        self.got.iter().any(|g| matches!(g, Got::Lost(_)))
    }
}

/// Follows a session like a real client until it got the event with `data.n` = `last`: it keeps its position by
/// the client's own rules (`ces_client::stream::Tracker`), and on every socket end reconnects to the next of
/// `edges` with it. Every frame is recorded as it came, repeats included: this checks the server. Gives up after
/// `within`.
pub async fn follow(
    edges: Vec<String>,
    token: String,
    last: u64,
    within: Duration,
) -> anyhow::Result<Timeline> {
    let mut timeline = Timeline::default();
    let mut position = ces_client::stream::Tracker::new(None);
    let mut epoch = String::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut attempt = 0;
    while tokio::time::Instant::now() < deadline {
        let base = &edges[attempt % edges.len()];
        let url = ces_client::connection::url_for(base, &token, position.resume_from());
        let Ok(mut ws) = WsClient::connect(&url).await else {
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            match ws.next_json(Duration::from_secs(30)).await {
                Ok(Some(frame)) => match frame["type"].as_str() {
                    Some("welcome") => {
                        epoch = frame["epoch"].as_str().unwrap_or_default().to_owned();
                    }
                    Some("resumed") => {
                        super::on_resumed(&mut position, &mut epoch, &frame);
                        if frame["ok"] == false {
                            timeline.got.push(Got::Lost(frame));
                        }
                    }
                    Some("event") => {
                        let seq = frame["seq"].as_u64().expect("seq");
                        let _ = position.on_event(&epoch, seq);
                        let n = frame["data"]["n"].as_u64().expect("data.n");
                        timeline.got.push(Got::Event {
                            epoch: epoch.clone(),
                            seq,
                            id: frame["id"].as_str().unwrap_or_default().to_owned(),
                            n,
                        });
                        if n == last {
                            return Ok(timeline);
                        }
                    }
                    _ => {}
                },
                Ok(None) => anyhow::bail!("stalled: {:?}", timeline.ns()),
                Err(_) => {
                    timeline.reconnects += 1;
                    attempt += 1;
                    break;
                }
            }
        }
    }
    anyhow::bail!("gave up after {:?}", timeline.ns())
}

/// Checks `timeline` of `session` against the guarantee for events `data.n` 1..=`last` produced in order.
/// Returns whether the client was told of a loss.
pub fn assert_exact_or_told(session: &str, timeline: &Timeline, last: u64) -> bool {
    // Within an epoch: seq 1, 2, 3, ... from the epoch's first event on, unless a notice named the gap.
    let mut next_seq: HashMap<&str, u64> = HashMap::new();
    let mut seq_ids: BTreeMap<(&str, u64), &str> = BTreeMap::new();
    let mut allowed_gap: Option<(u64, Option<u64>)> = None;
    // Payloads by id, and the windows a notice covers: between the last payload before it and the first after.
    let mut id_of_n: BTreeMap<u64, (&str, &str)> = BTreeMap::new();
    let mut windows: Vec<(u64, u64)> = Vec::new();
    let mut last_n_before: Option<u64> = Some(0);
    let mut pending_notice = false;
    let mut highest_n = 0;
    for got in &timeline.got {
        match got {
            Got::Lost(frame) => {
                let from = frame["lost"]["from"].as_u64().expect("lost.from");
                allowed_gap = Some((from, frame["lost"]["to"].as_u64()));
                pending_notice = true;
                last_n_before = Some(highest_n);
            }
            Got::Event { epoch, seq, id, n } => {
                let expected = next_seq.get(epoch.as_str()).copied().unwrap_or(1);
                let in_named_gap = allowed_gap.is_some_and(|(_, to)| match to {
                    Some(to) => *seq == to + 1,
                    None => *seq == 1,
                });
                assert!(
                    *seq == expected || in_named_gap,
                    "session {session}: epoch {epoch} seq {seq} after {} with no notice: {timeline:?}",
                    expected - 1
                );
                assert!(
                    seq_ids
                        .insert((epoch.as_str(), *seq), id.as_str())
                        .is_none(),
                    "session {session}: seq {seq} of epoch {epoch} delivered twice"
                );
                next_seq.insert(epoch.as_str(), seq + 1);
                allowed_gap = None;
                match id_of_n.get(n) {
                    // Published again in a new epoch: the same event, which a client drops by id.
                    Some((first_id, first_epoch)) => {
                        assert_eq!(
                            first_id, id,
                            "session {session}: data.n {n} arrived as two different events"
                        );
                        assert_ne!(
                            first_epoch, epoch,
                            "session {session}: data.n {n} delivered twice in epoch {epoch}"
                        );
                    }
                    None => {
                        id_of_n.insert(*n, (id.as_str(), epoch.as_str()));
                    }
                }
                if pending_notice {
                    windows.push((last_n_before.unwrap_or(0), *n));
                    pending_notice = false;
                }
                highest_n = highest_n.max(*n);
            }
        }
    }
    let missing: BTreeSet<u64> = (1..=last).filter(|n| !id_of_n.contains_key(n)).collect();
    for n in &missing {
        assert!(
            windows
                .iter()
                .any(|(before, after)| before < n && n < after),
            "session {session}: data.n {n} never arrived and no notice covered it (notices between {windows:?}): {timeline:?}"
        );
    }
    // Events arrive in production order, apart from events published again after a notice.
    let mut firsts: Vec<u64> = Vec::new();
    let mut seen = BTreeSet::new();
    for n in timeline.ns() {
        if seen.insert(n) {
            firsts.push(n);
        }
    }
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "session {session}: out of order: {firsts:?}"
    );
    timeline.told()
}
