//! The edge processes' memory and CPU, read from `/proc` (Linux). A process is found by the port it listens on,
//! so the load test needs no PIDs from whoever started the stack.

use std::time::Instant;

/// The PID of the process listening on TCP `addr` (`host:port`), if any is visible.
pub fn pid_listening_on(addr: &str) -> Option<u32> {
    let port: u16 = addr.rsplit_once(':')?.1.parse().ok()?;
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|table| listening_inodes(&table, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && wanted.iter().any(|w| target.as_os_str() == w.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Socket inodes in LISTEN state (`0A`) on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(cols.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            (local_port == port && *cols.get(3)? == "0A")
                .then(|| cols.get(9).map(|s| s.to_string()))?
        })
        .collect()
}

/// This process's soft limit on open files (`Max open files` in `/proc/self/limits`).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident set size of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// User + system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its closing parenthesis are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A CPU-time reading of several processes, to compute their CPU use over an interval.
#[derive(Debug, Clone)]
pub struct CpuMark {
    at: Instant,
    ticks: u64,
}

/// Marks the summed CPU time of `pids` now.
pub fn cpu_mark(pids: &[u32]) -> CpuMark {
    CpuMark {
        at: Instant::now(),
        ticks: pids.iter().filter_map(|&p| cpu_ticks(p)).sum(),
    }
}

/// CPU used by `pids` since `mark`, in percent of one core.
pub fn cpu_percent_since(mark: &CpuMark, pids: &[u32]) -> f64 {
    let now = cpu_mark(pids);
    let secs = now.at.duration_since(mark.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    let used = now.ticks.saturating_sub(mark.ticks) as f64 / ticks_per_second();
    100.0 * used / secs
}

/// Summed RSS of `pids` (those still alive).
pub fn total_rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| rss_bytes(p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_sockets_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n\
           1: 0100007F:1F91 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0\n";
        assert_eq!(listening_inodes(table, 8081), vec!["4242".to_string()]);
        assert!(listening_inodes(table, 8082).is_empty());
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).is_some_and(|b| b > 0));
        assert!(cpu_ticks(me).is_some());
        assert!(open_files_limit().is_some_and(|n| n > 0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert_eq!(pid_listening_on(&addr), Some(me));
    }
}
