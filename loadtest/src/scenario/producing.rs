//! The producer thread a scenario runs beside its clients, and the loop that drives a run: a progress line every
//! second while producing, then a bounded wait for deliveries to catch up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cli::Common;
use crate::clients::Shared;
use crate::producer::{self, Plan, Produced};

/// A producer thread over the fleet's sessions.
pub(super) struct Producing {
    stats: Arc<Produced>,
    handle: std::thread::JoinHandle<anyhow::Result<()>>,
    /// When the thread was started.
    pub(super) started: Instant,
    stop: Arc<AtomicBool>,
}

impl Producing {
    /// Starts producing to `--topic` over `sessions` at `rate` (0: flat out): `limit` records (within 600 s), or
    /// without a limit for `--duration` seconds.
    pub(super) fn start(c: &Common, sessions: &[String], limit: Option<u64>, rate: u64) -> Self {
        let plan = Plan {
            brokers: c.brokers.clone(),
            topic: c.topic.clone(),
            sessions: sessions.iter().cloned().collect(),
            rate,
            duration: Duration::from_secs(if limit.is_some() { 600 } else { c.duration }),
            limit,
            payload: c.payload as usize,
        };
        let stats = Arc::new(Produced::new(sessions.len()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::spawn(move || producer::run(&plan, &stats, &stop))
        };
        Self {
            stats,
            handle,
            started: Instant::now(),
            stop,
        }
    }

    /// Prints a progress line every second until the producer is done; then waits up to `settle` for deliveries
    /// to catch up with what the broker acknowledged. Returns when the last delivery happened.
    pub(super) async fn drive(&self, shared: &Shared, settle: Duration) -> anyhow::Result<Instant> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let (mut last_sent, mut last_delivered) = (0u64, 0u64);
        while !self.handle.is_finished() {
            tokio::select! {
                _ = tick.tick() => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => continue,
            }
            let sent = self.stats.sent.load(Ordering::Relaxed);
            let delivered = shared.delivered.load(Ordering::Relaxed);
            eprintln!(
                "[{:>4.0}s] produced {sent} (+{}/s)  delivered {delivered} (+{}/s)  connected {}  p99 {}",
                self.started.elapsed().as_secs_f64(),
                sent - last_sent,
                delivered - last_delivered,
                shared.connected.load(Ordering::Relaxed),
                shared
                    .recorder
                    .last_second_p99_ms()
                    .map_or("-".to_owned(), |p| format!("{p:.1} ms")),
            );
            (last_sent, last_delivered) = (sent, delivered);
        }
        let until = Instant::now() + settle;
        let mut last_change = Instant::now();
        let mut seen = shared.delivered.load(Ordering::Relaxed);
        let acked = self.stats.acked_total();
        while Instant::now() < until {
            let d = shared.delivered.load(Ordering::Relaxed);
            if d != seen {
                seen = d;
                last_change = Instant::now();
            }
            if d >= acked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(last_change)
    }

    /// Stops the producer and returns what it counted.
    pub(super) fn finish(self) -> anyhow::Result<Arc<Produced>> {
        self.stop.store(true, Ordering::Relaxed);
        self.wait()
    }

    /// Waits for the producer to end by itself (its limit or its duration) and returns what it counted. Blocking.
    pub(super) fn wait(self) -> anyhow::Result<Arc<Produced>> {
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
        Ok(self.stats)
    }
}

/// The session ids `ingest` and `produce` spread their records over (`--sessions` of them); no socket reads them.
pub(super) fn ingest_sessions(c: &Common) -> Vec<String> {
    (0..c.sessions).map(|i| format!("lt-ingest-{i}")).collect()
}
