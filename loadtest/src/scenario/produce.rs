//! `produce`: fill the input topic with `--count` records flat out and exit, before `ingest --prefilled`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::cli::IngestArgs;

use super::producing::{self, Producing};

/// Runs `produce` and prints one line saying what was produced.
pub(super) async fn run(i: &IngestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let producing = Producing::start(
        &i.common,
        &producing::ingest_sessions(&i.common),
        Some(i.count),
        0,
    );
    let stats = tokio::task::spawn_blocking(move || producing.wait()).await??;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "produced {} records to {} in {secs:.1} s ({:.0}/s), {} refused",
        stats.acked_total(),
        i.common.topic,
        stats.acked_total() as f64 / secs,
        stats.errors.load(Ordering::Relaxed)
    );
    Ok(())
}
