//! The stack's processes' memory, CPU and run-queue waiting, read from `/proc` (Linux). A process is found by the
//! port it listens on, so the load test needs no PIDs from whoever started the stack.

use std::collections::BTreeMap;
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
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User + system CPU time in a `/proc/<pid>/stat` (or a thread's `/proc/<pid>/task/<tid>/stat`) text.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces; fields after its closing parenthesis are fixed.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds used so far by the threads of this process named `name` (their `comm`, which the kernel cuts to
/// 15 bytes): a part of the process measured apart from the rest, such as a runtime of its own.
pub fn own_threads_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let ticks: u64 = tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| stat_ticks(&std::fs::read_to_string(t.path().join("stat")).ok()?))
        .sum();
    ticks as f64 / ticks_per_second()
}

/// CPU seconds used so far by this whole process.
pub fn own_cpu_seconds() -> f64 {
    cpu_ticks(std::process::id()).unwrap_or(0) as f64 / ticks_per_second()
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

/// CPU seconds used by `pids` since `mark`.
pub fn cpu_seconds_since(mark: &CpuMark, pids: &[u32]) -> f64 {
    cpu_mark(pids).ticks.saturating_sub(mark.ticks) as f64 / ticks_per_second()
}

/// Summed RSS of `pids` (those still alive).
pub fn total_rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| rss_bytes(p)).sum()
}

/// The TCP counters a connection storm shows in, machine-wide (`/proc/net/netstat`, `TcpExt`): connects dropped
/// because a listener's accept queue was full, and SYNs sent again (after 1 s, then 3 s, 7 s: what a dropped
/// connect costs its client).
pub const TCP_STORM_COUNTERS: [&str; 3] = ["ListenOverflows", "ListenDrops", "TCPSynRetrans"];

/// The [`TCP_STORM_COUNTERS`] now (those the kernel has).
pub fn tcp_storm_counters() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/net/netstat")
        .map(|text| parse_netstat(&text, "TcpExt", &TCP_STORM_COUNTERS))
        .unwrap_or_default()
}

/// The counters `names` of the `section` of a `/proc/net/netstat` text: a line of names, then a line of values,
/// both starting with `<section>:`.
fn parse_netstat(text: &str, section: &str, names: &[&str]) -> BTreeMap<String, u64> {
    let prefix = format!("{section}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (Some(header), Some(values)) = (lines.next(), lines.next()) else {
        return BTreeMap::new();
    };
    header
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter(|(name, _)| names.contains(name))
        .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
        .collect()
}

/// How much each counter of `after` grew since `before`.
pub fn growth(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(name, &v)| {
            (
                name.clone(),
                v.saturating_sub(before.get(name).copied().unwrap_or(v)),
            )
        })
        .collect()
}

/// `(ns on a CPU, ns waiting on a run queue, timeslices)` from the text of a `/proc/<pid>/task/<tid>/schedstat`:
/// exactly three unsigned integers separated by whitespace. `None` for anything else.
fn parse_schedstat(text: &str) -> Option<(u64, u64, u64)> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    let parsed = (fields.next()??, fields.next()??, fields.next()??);
    fields.next().is_none().then_some(parsed)
}

/// Per thread id, `(ns waited on a run queue, timeslices)` so far.
type ThreadWaits = BTreeMap<u32, (u64, u64)>;

/// The `schedstat` of every thread of `pid` that could be read. `None` when its task directory cannot be listed,
/// or when the kernel keeps no scheduler statistics: it then prints `0 0 0` for every thread, and a live process
/// has always run on a CPU.
fn thread_waits(pid: u32) -> Option<ThreadWaits> {
    let mut on_cpu_ns = 0u64;
    let mut waits = ThreadWaits::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read: it is simply not counted.
        let Some((on_cpu, wait, slices)) = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|text| parse_schedstat(&text))
        else {
            continue;
        };
        on_cpu_ns = on_cpu_ns.saturating_add(on_cpu);
        waits.insert(tid, (wait, slices));
    }
    (on_cpu_ns > 0).then_some(waits)
}

/// `(ns waited, timeslices)` by the threads of `end` since `start`. A thread in both counts its growth; a thread
/// only in `end` was born in between and counts all it has (a counter lower than at `start` means its id was
/// reused: the same). A thread only in `start` exited in between and counts nothing, since the kernel keeps no
/// total for exited threads: the result is then a lower bound.
fn waits_between(start: &ThreadWaits, end: &ThreadWaits) -> (u64, u64) {
    end.iter().fold((0, 0), |(wait, slices), (tid, &(w, n))| {
        let (w0, n0) = match start.get(tid) {
            Some(&(w0, n0)) if w0 <= w && n0 <= n => (w0, n0),
            _ => (0, 0),
        };
        (wait.saturating_add(w - w0), slices.saturating_add(n - n0))
    })
}

/// The threads of several processes, to compute how long they waited for a CPU over an interval.
#[derive(Debug, Clone)]
pub struct SchedMark {
    at: Instant,
    /// The processes whose threads could be read: only they are read again at the end, so that none counts the
    /// waiting of its whole life.
    pids: Vec<u32>,
    /// `None` when no process's threads could be read.
    threads: Option<ThreadWaits>,
}

/// Marks the run-queue waiting of every thread of `pids` now.
pub fn sched_mark(pids: &[u32]) -> SchedMark {
    let read: Vec<(u32, ThreadWaits)> = pids
        .iter()
        .filter_map(|&p| Some((p, thread_waits(p)?)))
        .collect();
    SchedMark {
        at: Instant::now(),
        pids: read.iter().map(|(p, _)| *p).collect(),
        threads: (!read.is_empty()).then(|| read.into_iter().flat_map(|(_, t)| t).collect()),
    }
}

/// How long a group of processes' threads waited for a CPU over an interval, and how often they were scheduled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedUse {
    /// Nanoseconds waited on a run queue, summed over the threads, per nanosecond of the interval, in percent:
    /// 100 means one thread-second of waiting per second (it can exceed 100 when several threads wait).
    pub runq_wait_percent: f64,
    /// Timeslices run, summed over the threads, per second of the interval.
    pub timeslices_per_s: f64,
}

/// Run-queue waiting of the threads of `pids` since `mark` (see `waits_between` for threads that came or went);
/// `None` when their threads could not be read at either end. Processes of `pids` that could not be read at `mark`
/// are left out.
pub fn sched_since(mark: &SchedMark, pids: &[u32]) -> Option<SchedUse> {
    let readable: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| mark.pids.contains(p))
        .collect();
    let now = sched_mark(&readable);
    let (start, end) = (mark.threads.as_ref()?, now.threads.as_ref()?);
    let secs = now.at.duration_since(mark.at).as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let (wait_ns, slices) = waits_between(start, end);
    Some(SchedUse {
        runq_wait_percent: 100.0 * wait_ns as f64 / 1e9 / secs,
        timeslices_per_s: slices as f64 / secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_user_plus_system_after_the_command_name() {
        // Fields 14 and 15 (utime, stime) of proc(5); the name may hold spaces and parentheses.
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 100 0 0";
        assert_eq!(stat_ticks(stat), Some(12));
        assert_eq!(stat_ticks("4242 (cut"), None);
        assert_eq!(stat_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn a_named_thread_is_measured_apart_from_the_process() {
        let name = "procfs-test-cpu";
        let process_before = own_cpu_seconds();
        let spun = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(|| {
                let start = Instant::now();
                let mut x = 0u64;
                while start.elapsed() < std::time::Duration::from_millis(300) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                own_threads_cpu_seconds(name)
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(spun >= 0.1, "a thread that spun 300 ms used {spun} s");
        assert!(spun < 1.0, "a thread that spun 300 ms used {spun} s");
        let process = own_cpu_seconds() - process_before;
        assert!(
            process >= spun - 0.02 && process < 2.0,
            "the process used {process} s while its thread spun {spun} s"
        );
        assert_eq!(own_threads_cpu_seconds("no-such-thread"), 0.0);
    }

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

    #[test]
    fn reads_the_storm_counters_of_netstat() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPSynRetrans\n\
                    TcpExt: 0 6532 6540 10841\n\
                    IpExt: InNoRoutes ListenOverflows\n\
                    IpExt: 1 99\n";
        let got = parse_netstat(text, "TcpExt", &TCP_STORM_COUNTERS);
        assert_eq!(
            got,
            [
                ("ListenDrops".to_owned(), 6540),
                ("ListenOverflows".to_owned(), 6532),
                ("TCPSynRetrans".to_owned(), 10841)
            ]
            .into()
        );
        assert!(
            parse_netstat("TcpExt: ListenOverflows\n", "TcpExt", &TCP_STORM_COUNTERS).is_empty()
        );
        let later: BTreeMap<String, u64> = [("ListenOverflows".to_owned(), 6600)].into();
        assert_eq!(
            growth(&got, &later),
            [("ListenOverflows".to_owned(), 68)].into()
        );
        assert!(tcp_storm_counters().contains_key("ListenOverflows"));
    }

    #[test]
    fn parses_schedstat() {
        assert_eq!(
            parse_schedstat("22359838 1926498 57\n"),
            Some((22359838, 1926498, 57))
        );
        assert_eq!(parse_schedstat("0 0 0"), Some((0, 0, 0)));
        assert_eq!(
            parse_schedstat(&format!("{} 1 2\n", u64::MAX)),
            Some((u64::MAX, 1, 2))
        );
    }

    #[test]
    fn refuses_malformed_schedstat() {
        for bad in [
            "",
            "\n",
            "1 2",
            "1 2 3 4",
            "1 -2 3",
            "1 2 x",
            "1.5 2 3",
            "18446744073709551616 1 2",
            "1,2,3",
        ] {
            assert_eq!(parse_schedstat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn counts_growth_births_and_not_deaths() {
        let start: ThreadWaits = [(10, (1_000, 5)), (11, (2_000, 7)), (12, (9_000, 9))].into();
        // 10 grew, 11 exited, 12's id was reused by a younger thread, 13 was born.
        let end: ThreadWaits = [(10, (1_500, 8)), (12, (300, 1)), (13, (700, 4))].into();
        assert_eq!(waits_between(&start, &end), (500 + 300 + 700, 3 + 1 + 4));
        assert_eq!(waits_between(&end, &end), (0, 0));
        assert_eq!(waits_between(&ThreadWaits::new(), &end), (2_500, 13));
    }

    #[test]
    fn reads_the_schedstat_of_every_thread_of_this_process() {
        let (stop, parked) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || parked.recv());
        let me = std::process::id();
        let mut tasks = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap();
            assert!(parse_schedstat(&text).is_some(), "{text:?}");
            tasks += 1;
        }
        assert!(tasks >= 2, "{tasks} threads");
        let waits = thread_waits(me).expect("this process's threads");
        assert!(waits.len() >= 2, "{waits:?}");
        assert_eq!(
            thread_waits(u32::MAX),
            None,
            "no such pid: pid_max is at most 2^22"
        );
        let mark = sched_mark(&[me]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let used = sched_since(&mark, &[me]).expect("this process's waiting");
        assert!(used.runq_wait_percent >= 0.0 && used.timeslices_per_s >= 0.0);
        assert_eq!(sched_since(&mark, &[]), None);
        assert_eq!(sched_since(&sched_mark(&[]), &[me]), None);
        stop.send(()).unwrap();
        helper.join().unwrap().unwrap();
    }
}
