//! Shell-outs to the tools beside the stack — `redis-cli`, `redis-benchmark` (Debian package redis-tools) and
//! `kill` — and the pure parsing of what they print.

use anyhow::Context as _;

/// Pipelined PUBLISH rate of the Redis at `addr`, by `redis-benchmark` (64 commands per pipeline, 16 clients).
pub(super) fn redis_benchmark_publish(addr: &str, size: usize) -> anyhow::Result<f64> {
    eprintln!("[redis-benchmark] -P 64 -c 16 -n 2000000 PUBLISH ({size}-byte messages)");
    let payload = "x".repeat(size);
    redis_benchmark(
        addr,
        &["-P", "64", "-c", "16", "-n", "2000000"],
        &["PUBLISH", "ces:loadtest:raw", &payload],
    )
}

/// `SPUBLISH` of `count` messages of `size` bytes to `sessions` channels (`ces:{<12 digits>}:ch`, spread by
/// `-r`), `pipeline` per pipeline on one connection, by `redis-benchmark`; returns its rate.
pub(super) fn redis_benchmark_spublish(
    addr: &str,
    count: u64,
    sessions: u64,
    size: usize,
    pipeline: u64,
) -> anyhow::Result<f64> {
    let (count, sessions, pipeline) = (
        count.to_string(),
        sessions.to_string(),
        pipeline.to_string(),
    );
    let payload = "x".repeat(size);
    redis_benchmark(
        addr,
        &["-P", &pipeline, "-c", "1", "-r", &sessions, "-n", &count],
        &["SPUBLISH", "ces:{__rand_int__}:ch", &payload],
    )
}

/// Runs `redis-benchmark -q` with `options` and the custom `command` against `addr` (host:port); its rate.
fn redis_benchmark(addr: &str, options: &[&str], command: &[&str]) -> anyhow::Result<f64> {
    let (host, port) = addr.rsplit_once(':').context("--redis must be host:port")?;
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "-q"])
        .args(options)
        .args(command)
        .output()
        .context("run redis-benchmark (Debian package redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_redis_benchmark(&text)
        .with_context(|| format!("no rate in redis-benchmark output: {text}"))
}

/// Whether every count of a `PUBSUB SHARDNUMSUB` answer as `redis-cli` prints it (channel and count on lines of
/// their own, in turn) is above zero; `false` for an empty answer.
pub(super) fn every_count_positive(text: &str) -> bool {
    let counts: Vec<&str> = text.lines().skip(1).step_by(2).collect();
    !counts.is_empty()
        && counts
            .iter()
            .all(|c| c.trim().parse::<u64>().is_ok_and(|n| n > 0))
}

/// Runs `redis-cli` against `addr` (host:port) and returns what it printed.
pub(super) fn redis_cli(addr: &str, args: &[&str]) -> anyhow::Result<String> {
    let (host, port) = addr.rsplit_once(':').context("--redis must be host:port")?;
    let out = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(args)
        .output()
        .context("run redis-cli (Debian package redis-tools)")?;
    anyhow::ensure!(out.status.success(), "redis-cli {args:?} failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `(calls, usec)` of FCALL from `INFO commandstats`: how many calls, and Redis's time in them all.
pub(super) fn parse_fcall_stats(text: &str) -> Option<(u64, f64)> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:"))?;
    let field = |name: &str| {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    Some((
        field("calls")?.parse().ok()?,
        field("usec")?.trim().parse().ok()?,
    ))
}

/// The requests per second of `redis-benchmark -q` output.
fn parse_redis_benchmark(text: &str) -> Option<f64> {
    // `-q` prints progress with carriage returns, then `<command>: 123456.79 requests per second, p50=...`.
    let line = text.rsplit('\r').next()?;
    let before = line.split(" requests per second").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

/// Sends `signal` (as `kill` spells it, e.g. `-KILL`) to the processes `pids` with one `kill`, so they all get it
/// at the same moment.
pub(super) fn kill(signal: &str, pids: &[u32]) -> std::io::Result<std::process::ExitStatus> {
    std::process::Command::new("kill")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_quiet_output() {
        let out = "PUBLISH ces:loadtest:raw xx: rps=0.0 (overall: nan) avg_msec=nan\r\
                   PUBLISH ces:loadtest:raw xx: 812345.69 requests per second, p50=0.231 msec\n";
        assert_eq!(parse_redis_benchmark(out), Some(812345.69));
        assert_eq!(parse_redis_benchmark("Could not connect to Redis\n"), None);
    }

    #[test]
    fn reads_the_fcall_line_of_commandstats() {
        let out = "# Commandstats\r\ncmdstat_publish:calls=3,usec=9,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\
                   cmdstat_fcall:calls=1456,usec=26578,usec_per_call=18.25,rejected_calls=0,failed_calls=1\r\n";
        assert_eq!(parse_fcall_stats(out), Some((1456, 26578.0)));
        assert_eq!(parse_fcall_stats("# Commandstats\r\n"), None);
    }

    #[test]
    fn a_shardnumsub_answer_is_subscribed_only_when_every_channel_counts_one() {
        assert!(every_count_positive("ces:{a}:ch\n1\nces:{b}:ch\n2\n"));
        assert!(!every_count_positive("ces:{a}:ch\n1\nces:{b}:ch\n0\n"));
        assert!(!every_count_positive("ces:{a}:ch\n0\n"));
        assert!(!every_count_positive(""));
        assert!(!every_count_positive("ERR unknown command\n"));
    }
}
