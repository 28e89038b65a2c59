//! The CES stack's processes on this machine, found by the ports they listen on, whose memory, CPU and run-queue
//! wait a scenario reports.

use crate::cli::Common;
use crate::procfs;

/// The PIDs of the edges in `--edges` that are running on this machine: the processes listening on those internal
/// addresses.
pub(super) fn edge_pids(c: &Common) -> Vec<u32> {
    let pids: Vec<u32> = c
        .edges
        .iter()
        .filter_map(|e| procfs::pid_listening_on(e))
        .collect();
    if pids.is_empty() {
        eprintln!(
            "[edges] no process listens on {}; edge memory and CPU are not reported",
            c.edges.join(", ")
        );
    }
    pids
}

/// The stack's processes on this machine, found by the ports they listen on, with the edges' `edge_pids` and this
/// process itself: whose CPU, and waiting for one, the run used.
pub(super) fn processes(c: &Common, edges: &[u32]) -> Vec<(String, Vec<u32>)> {
    let addr_of_url = |u: &str| {
        let rest = u.split_once("://").map_or(u, |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_owned()
    };
    let mut found = vec![
        (
            "broker",
            c.brokers.split(',').next().unwrap_or_default().to_owned(),
        ),
        ("redis", c.redis.clone()),
        ("ingest", addr_of_url(&c.ingest_metrics)),
    ]
    .into_iter()
    .filter_map(|(name, addr)| Some((name.to_owned(), vec![procfs::pid_listening_on(&addr)?])))
    .collect::<Vec<_>>();
    if !edges.is_empty() {
        found.push(("edges".to_owned(), edges.to_vec()));
    }
    found.push(("loadtest".to_owned(), vec![std::process::id()]));
    found
}
