//! The process's own figures (Prometheus' `process_*` metrics), from `/proc`.

/// What `/proc` says of this process.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Process {
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub cpu_secs: f64,
    pub start_time_secs: f64,
}

/// Read them now (zeros where `/proc` does not answer); the open files only with `fds`
/// (listing `/proc/self/fd` costs a few milliseconds with tens of thousands of connections:
/// a scrape pays it, the admin page's once-a-second sample does not).
pub(crate) fn read(fds: bool) -> Process {
    let mut p = Process {
        rss_bytes: rss_bytes(),
        open_fds: if fds {
            std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
        } else {
            0
        },
        ..Default::default()
    };
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the limit into the struct we pass, which lives across the
    // call; it reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        p.max_fds = lim.rlim_cur;
    }
    // SAFETY: sysconf(3) only reads a system setting.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name in parentheses (which may hold spaces): state is the
        // 3rd field; utime, stime are the 14th and 15th, starttime the 22nd.
        if let Some((_, rest)) = stat.rsplit_once(") ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| {
                f.get(i - 3)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            p.cpu_secs = (num(14) + num(15)) / ticks;
            p.start_time_secs = boot_time() + num(22) / ticks;
        }
    }
    p
}

/// When the system booted, seconds since the Unix epoch (`btime` in `/proc/stat`).
fn boot_time() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Resident memory of this process in bytes, from `/proc/self/statm`.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}
