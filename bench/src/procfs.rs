//! Readings from /proc: CPU time (all threads), memory, child processes, the machine's busy
//! time.

use std::fs;

/// CPU time a process has run, in nanoseconds: the sum of its threads' `schedstat` run
/// times (exact), or utime + stime from `stat` (10 ms ticks) where schedstat is missing.
pub fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0u64;
    let mut any = false;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let path = t.path().join("schedstat");
            if let Ok(s) = fs::read_to_string(path) {
                if let Some(v) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    total += v;
                    any = true;
                }
            }
        }
    }
    if any {
        total
    } else {
        stat_ticks(pid) * 1_000_000_000 / clk_tck()
    }
}

/// utime + stime of a process in clock ticks (0 when it is gone).
fn stat_ticks(pid: u32) -> u64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// A number field of `/proc/PID/status` (`VmHWM:`, `Threads:`, …; a `kB` unit dropped).
pub fn status_number(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `VmRSS` in KiB (0 when the process is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_number(pid, "VmRSS:").unwrap_or(0)
}

/// Proportional set size in KiB (`Pss` of smaps_rollup): RSS with shared pages divided among
/// the processes sharing them, so that a sum over processes counts each page once. Falls
/// back to `VmRSS`.
pub fn pss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or_else(|| rss_kib(pid))
}

/// The direct children of a process.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Reset a process's peak RSS (`VmHWM`) to its current RSS; false when not allowed.
pub fn reset_peak_rss(pid: u32) -> bool {
    fs::write(format!("/proc/{pid}/clear_refs"), b"5").is_ok()
}

/// Busy time of the whole machine (all CPUs: user, nice, system, irq, softirq, steal) and the
/// part of it spent in interrupts (irq, softirq: loopback TCP is processed there, and counted
/// in no process's CPU), in nanoseconds (from `/proc/stat`'s clock ticks).
pub fn machine_busy_ns() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let sum = |idx: &[usize]| -> u64 { idx.iter().map(|&i| f.get(i).copied().unwrap_or(0)).sum() };
    let ns = |ticks: u64| ticks * 1_000_000_000 / clk_tck();
    Some((ns(sum(&[0, 1, 2, 5, 6, 7])), ns(sum(&[5, 6]))))
}
