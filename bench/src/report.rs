//! The Markdown report (`docs/benchmarks.md`): how it was measured (a fixed text), the
//! machine, every row, werkmann before and after (with `--baseline`), werkmann against the best
//! peer, the targets, the profile.

use std::fmt::Write as _;
use std::process::Command;

use crate::gateway;
use crate::row::{Row, Scenario};
use crate::run::{k, Plan};
use crate::systems::NCHAN_REDIS;

/// The fixed part before the results.
const INTRO: &str = include_str!("../doc/intro.md");
/// The profile findings (measured by hand, see the text).
const PROFILE: &str = include_str!("../doc/profile.md");
/// The sections written by hand from runs of their own (each issue's measurements): kept
/// between a run's results and the profile whenever the report is written again.
const FINDINGS: &str = include_str!("../doc/findings.md");

/// What the slow-client table's columns mean.
const SLOW_NOTE: &str = "\
The others get the paced broadcasts; each of the K clients also gets its own stream of large \
targeted pushes (the last column: 256 KiB each for werkmann and Nchan, 12 KiB for Socket.IO, \
whose push API takes only GET). Run 1: the K clients read everything. Run 2: the K clients \
(4 KiB receive buffer) never read after their greeting. The server is asked the same in both; \
p50/p99 are the others' latencies, the ratio run 2 ÷ run 1. Server memory (PSS, all \
processes) before run 2, its peak (sampled every 200 ms) and 1 s after it; the drop times \
count from the start of run 2, seen by the client within ~200 ms (a ping it sends is \
answered with a reset once the server closed it); drops logged: the push node's \
`on_buffer_full` warnings.\n\n";

/// What the gateway tables' figures mean.
const GATEWAY_NOTE: &str = "\
Copies to nodes/push: the copies of a push the cluster sent towards its nodes, counted on the \
cluster's own counters over the run (channel server: messages written less messages read, as \
`start_channel status` shows them — every command is answered once, what is left are the \
deliveries to nodes; Redis: `PUBLISH` calls, those of the directory's script included; \
Socket.IO: the adapter's `PUBLISH` calls times the nodes each reaches, the clients with a \
pattern subscription less the publisher's own), divided by the pushes. A uid push is due once at each worker instance holding \
the uid (`--count 2`: two per node): 1 for a single-device user, 2 for a user with a device on \
each of two nodes. A group push goes once to each instance holding members (up to 8 here). \
Server bytes per bind_uid: the PSS of every server process after binding every client and one \
warm-up push to each uid, less before, per client (the directory and the nodes' copies of their \
clients' uids). Directory memory per binding: a directory alone, one client registered \
(`9000-1764000000000001`, …) and bound to a uid (`user-1`, …) per binding, through one \
`channel_console`: the channel server's PSS (RSS beside it) or Redis's `used_memory`, after \
registering and after binding, less before, per client.\n\n";

/// Everything one run produced.
pub struct Results {
    /// When it started (UTC).
    pub date: String,
    /// How long it took.
    pub secs: f64,
    /// The command line.
    pub command: String,
    /// Whether it was the quick set.
    pub quick: bool,
    /// The sizes.
    pub plan: Plan,
    /// Every row.
    pub rows: Vec<Row>,
    /// Skips, failures, remarks.
    pub notes: Vec<String>,
    /// `pushbench channel`'s output.
    pub channel: Option<String>,
    /// `pushbench channel`'s output on the baseline's `start_channel` (`--baseline`).
    pub channel_before: Option<String>,
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd).args(args).output().ok()?;
    let text = if o.stdout.is_empty() {
        o.stderr
    } else {
        o.stdout
    };
    let s = String::from_utf8_lossy(&text)
        .lines()
        .next()?
        .trim()
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// The machine in one line: cores, CPU, memory, kernel, Debian, open-file limit.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let debian = std::fs::read_to_string("/etc/debian_version").unwrap_or_default();
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile);
    }
    format!(
        "{cores} cores ({model}), {mem_gib:.0} GiB, Linux {}, Debian {}, {} open files per \
         process",
        kernel.trim(),
        debian.trim(),
        nofile.rlim_max
    )
}

fn versions() -> String {
    let sio = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/peers/socketio/node_modules/socket.io/package.json"
    ))
    .ok()
    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    .and_then(|v| v["version"].as_str().map(String::from));
    let soketi = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/peers/soketi/node_modules/@soketi/soketi/package.json"
    ))
    .ok()
    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    .and_then(|v| v["version"].as_str().map(String::from));
    let parts = [
        ("werkmann", Some(env!("CARGO_PKG_VERSION").to_string())),
        (
            "rustc",
            first_line("rustc", &["--version"]).map(|s| s.replace("rustc ", "")),
        ),
        (
            "nginx",
            first_line("nginx", &["-v"]).map(|s| s.replace("nginx version: ", "")),
        ),
        (
            "libnginx-mod-nchan",
            first_line("dpkg-query", &["-W", "-f=${Version}", "libnginx-mod-nchan"]),
        ),
        ("node", first_line("node", &["--version"])),
        ("socket.io", sio),
        ("soketi", soketi),
        ("redis-server", first_line("redis-server", &["--version"])),
    ];
    parts
        .iter()
        .map(|(k, v)| format!("{k} {}", v.clone().unwrap_or_else(|| "—".into())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A number for a table: thousands separated, 2 decimals under 10, 1 under 100.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    if v.abs() < 10.0 {
        return format!("{v:.2}");
    }
    if v.abs() < 100.0 {
        return format!("{v:.1}");
    }
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Figures that are counts, shown without decimals.
const COUNTS: [&str; 22] = [
    "clients",
    "processes",
    "others",
    "slow",
    "dropped",
    "logged_drops",
    "bindings",
    "holders",
    "pushes",
    "resets",
    "reconnects",
    "resumes",
    "lost",
    "dup",
    "not_recovered",
    "not_recovered_covered",
    "announced_lost",
    "refused",
    "out_of_order",
    "bad_frames",
    "text_frames",
    "deliveries",
];

fn cell(r: &Row, key: &str) -> String {
    match r.get(key) {
        Some(v) if COUNTS.contains(&key) && v.abs() < 100.0 => format!("{v:.0}"),
        Some(v) => num(v),
        None => "—".into(),
    }
}

/// One line about a row for the progress log.
pub fn brief(r: &Row) -> String {
    let keys: &[(&str, &str)] = match r.scenario {
        Scenario::Idle => &[
            ("kib_per_conn", "KiB/conn (PSS)"),
            ("rss_per_conn", "KiB/conn (RSS)"),
            ("conns_per_s", "conns/s"),
        ],
        Scenario::Broadcast | Scenario::Paced => &[
            ("deliveries_per_s", "deliveries/s"),
            ("per_cpu_s", "per CPU-s"),
            ("p99_ms", "p99 ms"),
        ],
        Scenario::Targeted => &[("pushes_per_s", "pushes/s"), ("p99_ms", "p99 ms")],
        Scenario::Publish => &[("req_per_s", "req/s")],
        Scenario::Slow => &[
            ("p99_base_ms", "p99 ms without"),
            ("p99_ms", "p99 ms with"),
            ("p99_ratio", "ratio"),
            ("mem_peak_mib", "peak MiB"),
            ("dropped", "dropped"),
            ("drop_last_s", "last drop s"),
        ],
        Scenario::Uid => &[
            ("pushes_per_s", "pushes/s"),
            ("p99_ms", "p99 ms"),
            ("copies", "copies/push"),
        ],
        Scenario::Group => &[
            ("deliveries_per_s", "deliveries/s"),
            ("p99_ms", "p99 ms"),
            ("copies", "copies/push"),
        ],
        Scenario::DirMemory => &[
            ("bytes_per_binding", "bytes/binding"),
            ("rss_bytes_per_binding", "RSS bytes/binding"),
        ],
        Scenario::Pusher => PUSHER_FIGURES,
        Scenario::Faults => FAULT_FIGURES,
        Scenario::Sse => crate::sse_rows::SSE_FIGURES,
        Scenario::Processes => PROCESSES_FIGURES,
    };
    let sparse = matches!(
        r.scenario,
        Scenario::Pusher | Scenario::Faults | Scenario::Sse | Scenario::Processes
    );
    let mut s: Vec<String> = keys
        .iter()
        .filter(|(k, _)| !sparse || r.get(k).is_some())
        .map(|(k, name)| format!("{} {name}", cell(r, k)))
        .collect();
    s.push(format!("errors {}", r.errors.text()));
    s.join(", ")
}

/// A Markdown table with its columns padded to one width, for a terminal
/// (`pushbench server` and `pushbench channel` print theirs so).
pub fn aligned(header: &[&str], cells: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(1)
        })
        .collect();
    let mut out = String::new();
    let mut line = |cols: Vec<String>| {
        out.push('|');
        for (c, w) in cols.iter().zip(&widths) {
            let _ = write!(out, " {c}{} |", " ".repeat(w - c.chars().count()));
        }
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for c in cells {
        line(c.clone());
    }
    out
}

pub(crate) fn table(out: &mut String, header: &[&str], rows: Vec<Vec<String>>) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i < 3 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

/// The peers a werkmann row is compared with: Nchan (in memory, and on Redis) with 2 workers
/// (4 for 4-node rows) and Socket.IO with as many nodes as werkmann has.
fn peers_of<'a>(rows: &'a [Row], w: &Row) -> Vec<&'a Row> {
    rows.iter()
        .filter(|p| p.peer && p.label == w.label)
        .filter(|p| match p.system.as_str() {
            "Nchan" | NCHAN_REDIS => p.nodes == if w.nodes >= 4 { 4 } else { 2 },
            _ => p.nodes == w.nodes,
        })
        .collect()
}

/// Figures compared per scenario: (key, name, higher is better).
fn compared(sc: Scenario) -> &'static [(&'static str, &'static str, bool)] {
    match sc {
        Scenario::Idle => &[
            ("kib_per_conn", "KiB per connection", false),
            ("conns_per_s", "new connections/s", true),
        ],
        Scenario::Broadcast => &[
            ("deliveries_per_s", "deliveries/s", true),
            ("per_cpu_s", "deliveries per server CPU-s", true),
            ("p99_ms", "p99 latency, ms", false),
        ],
        Scenario::Paced => &[("p99_ms", "p99 latency, ms", false)],
        Scenario::Targeted => &[
            ("pushes_per_s", "pushes/s", true),
            ("p50_ms", "p50 latency, ms", false),
        ],
        Scenario::Publish => &[("req_per_s", "requests/s", true)],
        Scenario::Slow => &[(
            "p99_ratio",
            "others' p99 with ÷ without clients that never read",
            false,
        )],
        Scenario::Uid => &[
            ("pushes_per_s", "pushes/s", true),
            ("p50_ms", "p50 latency, ms", false),
            ("p99_ms", "p99 latency, ms", false),
            ("copies", "copies sent to nodes per push", false),
        ],
        Scenario::Group => &[
            ("deliveries_per_s", "deliveries/s", true),
            ("p99_ms", "p99 latency, ms", false),
        ],
        Scenario::DirMemory
        | Scenario::Pusher
        | Scenario::Faults
        | Scenario::Sse
        | Scenario::Processes => &[],
    }
}

fn summary(out: &mut String, rows: &[Row]) {
    let mut lines = Vec::new();
    for w in rows.iter().filter(|r| r.system == "werkmann") {
        let peers = peers_of(rows, w);
        for (key, name, higher) in compared(w.scenario) {
            let Some(wv) = w.get(key) else { continue };
            let nchan: Option<&Row> = peers.iter().copied().find(|p| p.system == "Nchan");
            let sio: Option<&Row> = peers.iter().copied().find(|p| p.system == "Socket.IO");
            // Nchan on Redis is shown next to werkmann's Redis mode, its like; the best peer
            // stays the two above.
            let nchan_redis: Option<&Row> = peers
                .iter()
                .copied()
                .find(|p| p.system == NCHAN_REDIS && w.mode.starts_with("redis"));
            fn pv<'r>(p: Option<&'r Row>, key: &str) -> Option<(f64, &'r Row)> {
                p.and_then(|p| p.get(key).map(|v| (v, p)))
            }
            let best = [pv(nchan, key), pv(sio, key)]
                .into_iter()
                .flatten()
                .max_by(|a, b| {
                    if *higher {
                        a.0.total_cmp(&b.0)
                    } else {
                        b.0.total_cmp(&a.0)
                    }
                });
            let peer_cell = |p: Option<&Row>| match pv(p, key) {
                Some((v, p)) => format!("{} ({})", num(v), p.mode),
                None => "—".into(),
            };
            let ratio = match best {
                Some((b, _)) if b > 0.0 => {
                    let r = wv / b;
                    let better = if *higher { r >= 1.0 } else { r <= 1.0 };
                    format!("{}× {}", num(r), if better { "✓" } else { "✗" })
                }
                _ => "—".into(),
            };
            lines.push(vec![
                w.label.clone(),
                w.mode.clone(),
                format!(
                    "{name} ({})",
                    if *higher {
                        "higher is better"
                    } else {
                        "lower is better"
                    }
                ),
                num(wv),
                peer_cell(nchan),
                peer_cell(nchan_redis),
                peer_cell(sio),
                ratio,
            ]);
        }
    }
    table(
        out,
        &[
            "row",
            "werkmann mode",
            "figure",
            "werkmann",
            "Nchan",
            "Nchan on Redis (Redis rows)",
            "Socket.IO",
            "werkmann / best peer",
        ],
        lines,
    );
}

/// The system name of the rows run from `--baseline`'s binaries.
const BEFORE: &str = "werkmann-before";

/// Changes smaller than this share of a figure count as the same in the before/after table.
const SAME_WITHIN: f64 = 0.05;

/// Figures of the before/after table per scenario: (key, name, higher is better).
fn before_after_figures(sc: Scenario) -> &'static [(&'static str, &'static str, bool)] {
    match sc {
        Scenario::Idle => &[
            ("kib_per_conn", "KiB per connection (PSS)", false),
            ("conns_per_s", "new connections/s", true),
        ],
        Scenario::Broadcast => &[
            ("deliveries_per_s", "deliveries/s", true),
            ("per_cpu_s", "deliveries per server CPU-s", true),
            ("p50_ms", "p50 ms", false),
            ("p99_ms", "p99 ms", false),
        ],
        Scenario::Paced => &[("p50_ms", "p50 ms", false), ("p99_ms", "p99 ms", false)],
        Scenario::Targeted => &[
            ("pushes_per_s", "pushes/s", true),
            ("cpu_us", "server µs CPU/push", false),
            ("p50_ms", "p50 ms", false),
            ("p99_ms", "p99 ms", false),
        ],
        Scenario::Publish => &[
            ("req_per_s", "requests/s", true),
            ("cpu_us", "server µs CPU/request", false),
        ],
        Scenario::Slow => &[
            ("p99_base_ms", "others' p99 ms, K read", false),
            ("p99_ms", "others' p99 ms, K never read", false),
            ("p99_ratio", "p99 ratio", false),
            ("mem_peak_mib", "server MiB peak", false),
        ],
        Scenario::Uid => &[
            ("pushes_per_s", "pushes/s", true),
            ("copies", "copies per push", false),
            ("p50_ms", "p50 ms", false),
            ("p99_ms", "p99 ms", false),
        ],
        Scenario::Group => &[
            ("deliveries_per_s", "deliveries/s", true),
            ("p50_ms", "p50 ms", false),
            ("p99_ms", "p99 ms", false),
        ],
        Scenario::DirMemory => &[("bytes_per_binding", "bytes per binding", false)],
        Scenario::Pusher => &[
            ("kib_per_conn", "KiB per connection", false),
            ("per_cpu_s", "deliveries per server CPU-s", true),
            ("req_per_s", "publishes/s", true),
            ("joins_per_s", "presence joins/s", true),
            ("leaves_per_s", "presence leaves/s", true),
        ],
        Scenario::Faults => &[
            ("lost", "pushes lost", false),
            ("dup", "pushes duplicated", false),
            ("not_recovered", "not recovered", false),
            ("resume_p99_ms", "resume p99 ms", false),
            ("per_cpu_s", "deliveries per server CPU-s", true),
        ],
        Scenario::Sse => &[
            ("kib_per_conn", "KiB per stream", false),
            ("per_cpu_s", "deliveries per server CPU-s", true),
            ("p99_ms", "p99 ms", false),
            ("lost", "pushes lost", false),
            ("resume_p99_ms", "resume p99 ms", false),
        ],
        Scenario::Processes => &[
            ("req_per_s", "publish requests/s", true),
            ("kib_per_conn", "KiB per connection", false),
            ("conns_per_s", "new connections/s", true),
            ("deliveries_per_s", "deliveries/s", true),
            ("cpu_us", "server µs CPU/delivery", false),
            ("p99_ms", "p99 ms", false),
        ],
    }
}

/// The verdict on one figure: after ÷ before, turned so that above 1 is better.
fn verdict(before: f64, after: f64, higher: bool) -> &'static str {
    let gain = if higher {
        after / before
    } else {
        before / after
    };
    if !gain.is_finite() {
        "—"
    } else if gain >= 1.0 + SAME_WITHIN {
        "better"
    } else if gain <= 1.0 - SAME_WITHIN {
        "**worse**"
    } else {
        "same (±5 %)"
    }
}

/// werkmann's rows next to the same rows of `--baseline`'s binaries (`werkmann-before`), run
/// in the same session order of one run: before, after, after ÷ before for each figure.
/// Nothing without `werkmann-before` rows.
fn before_after(out: &mut String, rows: &[Row]) {
    let of = |system: &str, key: &Row| {
        rows.iter().find(|r| {
            r.system == system
                && r.scenario == key.scenario
                && r.label == key.label
                && r.mode == key.mode
        })
    };
    // Every (scenario, label, mode) of either build, in the order they ran.
    let mut keys: Vec<&Row> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.system == "werkmann" || r.system == BEFORE)
    {
        if !keys
            .iter()
            .any(|k| k.scenario == r.scenario && k.label == r.label && k.mode == r.mode)
        {
            keys.push(r);
        }
    }
    if !keys.iter().any(|k| k.system == BEFORE) {
        return;
    }
    let mut lines = Vec::new();
    for key in keys {
        let (before, after) = (of(BEFORE, key), of("werkmann", key));
        let runs = |r: Option<&Row>| r.map_or("—".into(), |r| r.runs.to_string());
        let errors = |r: Option<&Row>| r.map_or("—".into(), |r| r.errors.text());
        for (fig, name, higher) in before_after_figures(key.scenario) {
            let (b, a) = (
                before.and_then(|r| r.get(fig)),
                after.and_then(|r| r.get(fig)),
            );
            if b.is_none() && a.is_none() {
                continue;
            }
            let (ratio, word) = match (b, a) {
                (Some(b), Some(a)) if b > 0.0 => {
                    (format!("{}×", num(a / b)), verdict(b, a, *higher))
                }
                _ => ("—".into(), "—"),
            };
            lines.push(vec![
                key.label.clone(),
                key.mode.clone(),
                format!(
                    "{name} ({} is better)",
                    if *higher { "higher" } else { "lower" }
                ),
                b.map_or("—".into(), num),
                a.map_or("—".into(), num),
                ratio,
                word.to_string(),
                format!("{} / {}", runs(before), runs(after)),
                format!("{} / {}", errors(before), errors(after)),
            ]);
        }
    }
    table(
        out,
        &[
            "row",
            "mode",
            "figure",
            "before",
            "after",
            "after ÷ before",
            "after vs before",
            "runs",
            "errors before / after",
        ],
        lines,
    );
}

fn find<'a>(
    rows: &'a [Row],
    sc: Scenario,
    system: &str,
    mode_prefix: &str,
    label_prefix: &str,
) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.scenario == sc
            && r.system == system
            && r.mode.starts_with(mode_prefix)
            && r.label.starts_with(label_prefix)
    })
}

fn targets(out: &mut String, rows: &[Row], plan: &Plan) {
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut check =
        |target: &str, measured: Option<f64>, goal: Option<f64>, higher: bool, unit: &str| {
            let (m, verdict) = match (measured, goal) {
                (Some(m), Some(g)) => {
                    let met = if higher { m >= g } else { m <= g };
                    let by = if higher { m / g } else { g / m };
                    (
                        format!("{} {unit}", num(m)),
                        if met {
                            format!("met ({}× the goal)", num(by))
                        } else {
                            format!("**missed** (at {}% of the goal)", num(by * 100.0))
                        },
                    )
                }
                (Some(m), None) => (format!("{} {unit}", num(m)), "no peer figure".into()),
                _ => ("—".into(), "not measured".into()),
            };
            lines.push(vec![target.to_string(), m, verdict]);
        };
    let bl = format!("broadcast {} × {}", k(plan.bcast_n), plan.bcast_m);
    let w = find(rows, Scenario::Broadcast, "werkmann", "all-in-one", &bl);
    let wv = w.and_then(|r| r.get("per_cpu_s"));
    check(
        &format!("{bl}, all-in-one: ≥ 1,000,000 deliveries per server CPU-second"),
        wv,
        Some(1e6),
        true,
        "deliveries/CPU-s",
    );
    let nchan =
        find(rows, Scenario::Broadcast, "Nchan", "nginx, 2", &bl).and_then(|r| r.get("per_cpu_s"));
    check(
        &format!("{bl}: ≥ Nchan (deliveries per server CPU-s)"),
        wv,
        nchan,
        true,
        "deliveries/CPU-s",
    );
    let sio = find(rows, Scenario::Broadcast, "Socket.IO", "1 process", &bl)
        .and_then(|r| r.get("per_cpu_s"));
    check(
        &format!("{bl}: ≥ 2 × Socket.IO (deliveries per server CPU-s)"),
        wv,
        sio.map(|v| 2.0 * v),
        true,
        "deliveries/CPU-s",
    );
    let pl = format!("paced {} × {}/s", k(plan.small_n), plan.paced_rate);
    let wp =
        find(rows, Scenario::Paced, "werkmann", "all-in-one", &pl).and_then(|r| r.get("p99_ms"));
    check(
        &format!("{pl}, all-in-one: p99 ≤ 15 ms"),
        wp,
        Some(15.0),
        false,
        "ms",
    );
    let np = find(rows, Scenario::Paced, "Nchan", "nginx, 2", &pl).and_then(|r| r.get("p99_ms"));
    check(&format!("{pl}: p99 ≤ Nchan's"), wp, np, false, "ms");
    let il = format!("idle {} (one node)", k(plan.idle_one));
    let wi = find(rows, Scenario::Idle, "werkmann", "all-in-one", &il);
    check(
        &format!("{il}: ≤ 4 KiB of server RSS per connection"),
        wi.and_then(|r| r.get("kib_per_conn")),
        Some(4.0),
        false,
        "KiB",
    );
    check(
        &format!("{il}: ≥ 10,000 new connections/s"),
        wi.and_then(|r| r.get("conns_per_s")),
        Some(10_000.0),
        true,
        "conns/s",
    );
    let wpub = find(rows, Scenario::Publish, "werkmann", "all-in-one", "publish")
        .and_then(|r| r.get("req_per_s"));
    check(
        "HTTP publish on keep-alive, all-in-one: ≥ 80,000 requests/s",
        wpub,
        Some(80_000.0),
        true,
        "req/s",
    );
    let tl = format!("targeted {} clients", k(plan.bcast_n));
    let wt = find(rows, Scenario::Targeted, "werkmann", "cluster, 2 ws", &tl);
    check(
        &format!(
            "{tl}, {} in flight, cluster (publisher → channel server → node): ≥ 20,000 pushes/s",
            plan.inflight
        ),
        wt.and_then(|r| r.get("pushes_per_s")),
        Some(20_000.0),
        true,
        "pushes/s",
    );
    let mut drop_lines = Vec::new();
    for mode in ["all-in-one", "cluster"] {
        let ws = find(rows, Scenario::Slow, "werkmann", mode, "slow clients");
        let label = ws.map(|r| r.label.clone()).unwrap_or_else(|| {
            format!(
                "slow clients: {} others × {}/s, {} never read",
                k(plan.bcast_n),
                plan.slow_rate,
                plan.slow_k
            )
        });
        check(
            &format!("{label}, {mode}: the others' p99 moves by at most 20 %"),
            ws.and_then(|r| r.get("p99_ratio")),
            Some(1.2),
            false,
            "× (with ÷ without)",
        );
        if mode == "all-in-one" {
            let (dropped, slow) = (
                ws.and_then(|r| r.get("dropped")),
                ws.and_then(|r| r.get("slow")),
            );
            drop_lines.push(vec![
                format!("{label}, {mode}: every slow client dropped (on_buffer_full)"),
                match (dropped, slow, ws.and_then(|r| r.get("drop_last_s"))) {
                    (Some(d), Some(s), Some(t)) => {
                        format!("{d} of {s}, the last {} s after its pushes began", num(t))
                    }
                    (Some(d), Some(s), None) => format!("{d} of {s}"),
                    _ => "—".into(),
                },
                match (dropped, slow) {
                    (Some(d), Some(s)) if d >= s => "met".into(),
                    (Some(_), Some(_)) => "**missed**".into(),
                    _ => "not measured".into(),
                },
            ]);
        }
    }
    lines.extend(drop_lines);
    gateway_targets(&mut lines, rows, plan);
    let mis: Option<f64> = wt.map(|r| (r.errors.missing + r.errors.dup + r.errors.wrong) as f64);
    let verdict = match mis {
        Some(0.0) => "met".to_string(),
        Some(_) => "**missed**".into(),
        None => "not measured".into(),
    };
    lines.push(vec![
        format!("{tl}, cluster: zero misdeliveries"),
        mis.map(|v| format!("{v} missing/duplicated/wrong"))
            .unwrap_or_else(|| "—".into()),
        verdict,
    ]);
    table(out, &["target", "measured", "verdict"], lines);
}

/// Each setup's uid row next to its targeted row of the same session (same clients, runs
/// alternating), with the ratio uid ÷ targeted.
fn uid_next_to_targeted(out: &mut String, rows: &[Row], plan: &Plan) {
    let ul = gateway::uid_label(plan.bcast_n, plan.inflight);
    let tl = gateway::targeted_label(plan.bcast_n, plan.inflight);
    let mut lines = Vec::new();
    for u in rows
        .iter()
        .filter(|r| r.scenario == Scenario::Uid && r.label == ul)
    {
        let t = rows.iter().find(|r| {
            r.scenario == Scenario::Targeted
                && r.label == tl
                && r.system == u.system
                && r.mode == u.mode
        });
        let tv = |key: &str| t.and_then(|t| t.get(key));
        let both = |key: &str| {
            format!(
                "{} / {}",
                tv(key).map_or("—".into(), num),
                u.get(key).map_or("—".into(), num)
            )
        };
        let ratio = match (tv("pushes_per_s"), u.get("pushes_per_s")) {
            (Some(t), Some(u)) if t > 0.0 => format!("{}×", num(u / t)),
            _ => "—".into(),
        };
        lines.push(vec![
            u.system.clone(),
            u.mode.clone(),
            tv("pushes_per_s").map_or("—".into(), num),
            u.get("pushes_per_s").map_or("—".into(), num),
            ratio,
            both("p50_ms"),
            both("p99_ms"),
            both("cpu_us"),
            both("cpu_us_publisher"),
            both("cpu_us_channel"),
            both("cpu_us_nodes"),
            both("copies"),
            format!(
                "{} / {}",
                t.map_or("—".into(), |t| t.errors.text()),
                u.errors.text()
            ),
            u.runs.to_string(),
        ]);
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(out, "### Pushes to uids next to targeted pushes\n");
    let _ = writeln!(
        out,
        "The same {} clients over 4 nodes, each bound to a uid of its own; runs of {} targeted \
         pushes (`GET /?to_worker_id=…&to_connection_id=…`) and of {} `send_to_uid` pushes to \
         random uids alternate, {} in flight. Cells with two figures: targeted / uid. Server \
         CPU per push is split by process: the publisher (`start_http`, Socket.IO's publisher \
         node), the channel (`start_channel` or `redis-server`), the WebSocket nodes.\n",
        k(plan.bcast_n),
        k(plan.targeted_p),
        k(plan.targeted_p),
        plan.inflight
    );
    table(
        out,
        &[
            "system",
            "mode",
            "targeted pushes/s",
            "uid pushes/s",
            "uid ÷ targeted",
            "p50 ms",
            "p99 ms",
            "server µs CPU/push",
            "of it: publisher",
            "of it: channel",
            "of it: nodes",
            "copies to nodes/push",
            "errors",
            "runs",
        ],
        lines,
    );
}

/// Issue 15's targets: uid pushes/s ≥ the targeted row's, copies per push = the instances
/// holding the uid exactly, ≤ 256 bytes of directory memory per binding; and every directory
/// send answered as due and delivered exactly once.
fn gateway_targets(lines: &mut Vec<Vec<String>>, rows: &[Row], plan: &Plan) {
    let (n, f) = (plan.bcast_n, plan.inflight);
    let (ul, ul2, tl) = (
        gateway::uid_label(n, f),
        gateway::uid2_label(n, f),
        gateway::targeted_label(n, f),
    );
    let verdict = |met: bool, by: Option<f64>| match (met, by) {
        (true, Some(by)) => format!("met ({}× the goal)", num(by)),
        (true, None) => "met".to_string(),
        (false, Some(by)) => format!("**missed** (at {}% of the goal)", num(by * 100.0)),
        (false, None) => "**missed**".to_string(),
    };
    for mode in ["cluster", "redis"] {
        let u = find(rows, Scenario::Uid, "werkmann", mode, &ul);
        let Some(u) = u else { continue };
        let t = find(rows, Scenario::Targeted, "werkmann", mode, &tl);
        let (uv, tv) = (u.get("pushes_per_s"), t.and_then(|t| t.get("pushes_per_s")));
        lines.push(vec![
            format!(
                "{ul}, {}: pushes/s ≥ the targeted row's of the same session",
                u.mode
            ),
            match (uv, tv) {
                (Some(uv), Some(tv)) => format!("{} against {} pushes/s", num(uv), num(tv)),
                _ => "—".into(),
            },
            match (uv, tv) {
                (Some(uv), Some(tv)) if tv > 0.0 => verdict(uv >= tv, Some(uv / tv)),
                _ => "not measured".into(),
            },
        ]);
        if mode == "cluster" {
            lines.push(vec![
                format!(
                    "{ul}, {}: ≥ 20,000 pushes/s (the targeted row's goal)",
                    u.mode
                ),
                uv.map_or("—".into(), |v| format!("{} pushes/s", num(v))),
                match uv {
                    Some(v) => verdict(v >= 20_000.0, Some(v / 20_000.0)),
                    None => "not measured".into(),
                },
            ]);
        }
        for (label, r) in [
            (&ul, Some(u)),
            (&ul2, find(rows, Scenario::Uid, "werkmann", mode, &ul2)),
        ] {
            let Some(r) = r else { continue };
            let (c, h) = (r.get("copies"), r.get("holders"));
            let m = f64::from(plan.targeted_p);
            lines.push(vec![
                format!(
                    "{label}, {}: copies sent to nodes per push = the instances holding the uid, \
                     exactly",
                    r.mode
                ),
                match (c, h) {
                    (Some(c), Some(h)) => format!("{c:.4} per push (holders: {h:.0})"),
                    _ => "—".into(),
                },
                match (c, h) {
                    // Exactly: the counts differ by less than one copy over the run.
                    (Some(c), Some(h)) => verdict((c - h).abs() * m < 0.5, None),
                    _ => "not measured".into(),
                },
            ]);
        }
    }
    for r in rows
        .iter()
        .filter(|r| r.system == "werkmann" && matches!(r.scenario, Scenario::Uid | Scenario::Group))
    {
        let e = &r.errors;
        let bad = e.missing + e.dup + e.wrong + e.http + e.answer + e.bad + e.stray;
        lines.push(vec![
            format!(
                "{}, {}: every push answered `{{\"reached\": N}}` as due and delivered exactly once",
                r.label, r.mode
            ),
            if bad == 0 {
                "0 errors".to_string()
            } else {
                e.text()
            },
            verdict(bad == 0, None),
        ]);
    }
    let dl = gateway::dir_memory_label(plan.dir_bindings);
    if let Some(r) = find(rows, Scenario::DirMemory, "werkmann", "channel server", &dl) {
        let v = r.get("bytes_per_binding");
        lines.push(vec![
            format!(
                "{dl}, {}: ≤ 256 bytes of directory memory per binding",
                r.mode
            ),
            v.map_or("—".into(), |v| {
                format!(
                    "{} bytes (RSS: {})",
                    num(v),
                    r.get("rss_bytes_per_binding").map_or("—".into(), num)
                )
            }),
            match v {
                Some(v) if v > 0.0 => verdict(v <= 256.0, Some(256.0 / v)),
                Some(_) => verdict(true, None),
                None => "not measured".into(),
            },
        ]);
    }
}

fn detail(out: &mut String, rows: &[Row], sc: Scenario) {
    let rs: Vec<&Row> = rows.iter().filter(|r| r.scenario == sc).collect();
    if rs.is_empty() {
        return;
    }
    let (title, cols): (&str, &[(&str, &str)]) = match sc {
        Scenario::Idle => (
            "Idle clients",
            &[
                ("clients", "clients"),
                ("kib_per_conn", "KiB/conn (PSS)"),
                ("rss_per_conn", "KiB/conn (RSS)"),
                ("conns_per_s", "new conns/s"),
                ("mem_mib", "server MiB"),
            ],
        ),
        Scenario::Broadcast => (
            "Broadcast fan-out, back to back",
            &[
                ("deliveries_per_s", "deliveries/s"),
                ("cpu_us", "server µs CPU/delivery"),
                ("per_cpu_s", "deliveries/server CPU-s"),
                ("p50_ms", "p50 ms"),
                ("p90_ms", "p90 ms"),
                ("p99_ms", "p99 ms"),
                ("max_ms", "max ms"),
                ("gen_cpu_s", "generator CPU s"),
            ],
        ),
        Scenario::Paced => (
            "Paced broadcasts",
            &[
                ("deliveries_per_s", "deliveries/s"),
                ("cpu_us", "server µs CPU/delivery"),
                ("p50_ms", "p50 ms"),
                ("p90_ms", "p90 ms"),
                ("p99_ms", "p99 ms"),
                ("max_ms", "max ms"),
            ],
        ),
        Scenario::Targeted => (
            "Targeted pushes to random clients",
            &[
                ("pushes_per_s", "pushes/s"),
                ("cpu_us", "server µs CPU/push"),
                ("p50_ms", "p50 ms"),
                ("p90_ms", "p90 ms"),
                ("p99_ms", "p99 ms"),
                ("max_ms", "max ms"),
            ],
        ),
        Scenario::Publish => (
            "HTTP publish requests (broadcasts to no client)",
            &[
                ("req_per_s", "requests/s"),
                ("cpu_us", "server µs CPU/request"),
                ("gen_cpu_us", "generator µs CPU/request"),
            ],
        ),
        Scenario::Slow => (
            "Slow clients",
            &[
                ("others", "others"),
                ("slow", "K"),
                ("p50_base_ms", "p50 ms, K read"),
                ("p99_base_ms", "p99 ms, K read"),
                ("p50_ms", "p50 ms, K never read"),
                ("p99_ms", "p99 ms, K never read"),
                ("p99_ratio", "p99 ratio"),
                ("mem_base_peak_mib", "server MiB peak, K read"),
                ("mem_before_mib", "server MiB before"),
                ("mem_peak_mib", "server MiB peak"),
                ("mem_after_mib", "server MiB after"),
                ("dropped", "dropped"),
                ("drop_first_s", "first drop s"),
                ("drop_last_s", "last drop s"),
                ("logged_drops", "drops logged"),
                ("large_mib_per_s", "MiB/s to each of K"),
            ],
        ),
        Scenario::Uid => (
            "Pushes to uids (`POST /api/send_to_uid`)",
            &[
                ("pushes_per_s", "pushes/s"),
                ("cpu_us", "server µs CPU/push"),
                ("p50_ms", "p50 ms"),
                ("p90_ms", "p90 ms"),
                ("p99_ms", "p99 ms"),
                ("max_ms", "max ms"),
                ("copies", "copies to nodes/push"),
                ("holders", "instances holding the uid"),
                ("binds_per_s", "bind_uid calls/s"),
                ("bind_bytes", "server bytes per bind_uid"),
            ],
        ),
        Scenario::Group => (
            "Pushes to groups (`POST /api/send_to_group`)",
            &[
                ("deliveries_per_s", "deliveries/s"),
                ("pushes_per_s", "group pushes/s"),
                ("cpu_us", "server µs CPU/delivery"),
                ("p50_ms", "p50 ms"),
                ("p90_ms", "p90 ms"),
                ("p99_ms", "p99 ms"),
                ("max_ms", "max ms"),
                ("copies", "copies to nodes/push"),
                ("joins_per_s", "join_group calls/s"),
            ],
        ),
        Scenario::Pusher => ("Pusher protocol, every figure", PUSHER_FIGURES),
        Scenario::Faults => ("Fault rows, every figure", FAULT_FIGURES),
        Scenario::Sse => (
            "Server-Sent Events, every figure",
            crate::sse_rows::SSE_FIGURES,
        ),
        Scenario::Processes => ("Threads or processes, every figure", PROCESSES_FIGURES),
        Scenario::DirMemory => (
            "Directory memory per binding",
            &[
                ("bindings", "clients bound"),
                ("bytes_per_binding", "bytes per binding"),
                ("bytes_per_client", "of it: registering"),
                ("bytes_per_uid", "of it: bind_uid"),
                ("rss_bytes_per_binding", "RSS bytes per binding"),
                ("mem_mib", "server MiB after"),
                ("binds_per_s", "bind_uid ops/s (console)"),
            ],
        ),
    };
    let _ = writeln!(out, "### {title}\n");
    let mut header = vec!["row", "system", "mode"];
    header.extend(cols.iter().map(|(_, n)| *n));
    header.extend(["errors", "runs"]);
    let lines = rs
        .iter()
        .map(|r| {
            let mut l = vec![r.label.clone(), r.system.clone(), r.mode.clone()];
            l.extend(cols.iter().map(|(key, _)| cell(r, key)));
            l.push(r.errors.text());
            l.push(r.runs.to_string());
            l
        })
        .collect();
    table(out, &header, lines);
}

/// Whether any row ran from `--baseline`'s binaries.
fn rows_have_before(rows: &[Row]) -> bool {
    rows.iter().any(|r| r.system == BEFORE)
}

/// Every figure a Pusher row may have, for its progress line and detail table.
const PUSHER_FIGURES: &[(&str, &str)] = &[
    ("clients", "clients"),
    ("kib_per_conn", "KiB/conn (PSS)"),
    ("rss_per_conn", "KiB/conn (RSS)"),
    ("conns_per_s", "new conns/s"),
    ("deliveries_per_s", "deliveries/s"),
    ("per_cpu_s", "deliveries/server CPU-s"),
    ("req_per_s", "publishes/s"),
    ("cpu_us", "server µs CPU each"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("delivery_p99_ms", "delivery p99 ms"),
    ("joins_per_s", "joins/s"),
    ("leaves_per_s", "leaves/s"),
    ("join_cpu_s", "server CPU s, joins"),
    ("leave_cpu_s", "server CPU s, leaves"),
];

/// What the Pusher section's rows are.
const PUSHER_NOTE: &str = "\
werkmann serves the Pusher protocol from `start_all --count 2 --apps-file` (one app, \
`max_presence_members` 100,000); Soketi 1.6.1 (`bench/peers/soketi`, its uWebSockets.js \
replaced by the npm package `uwebsockets` 3.0.6) runs in one Node.js process with the same \
app, no rate limits and `SOKETI_PRESENCE_MAX_MEMBERS` 100,000. The clients are the same \
generator processes speaking Pusher (`/app/{key}`, `pusher:subscribe`), the publishes the same \
signed `POST /apps/{id}/events` (HMAC-SHA256, `body_md5`). Publish: on the fresh server, \
signed publishes to a public channel with a few subscribers, each request's time from \
sending to its 200 (p50/p99), every publish checked to reach every subscriber once. Idle: \
clients subscribed to the public channel, the server's memory (PSS of every process) after a \
warm-up publish reached them all, less before, per connection. Broadcast: publishes back to \
back to those clients, server CPU (utime + stime of every server process) per delivery. \
Presence: every client joins `presence-bench` as a user of its own (signed as an auth \
endpoint would), joins/s from the first connect to the last `subscription_succeeded` \
(connect, handshake and join; every join sends the member list to the joiner and \
`member_added` to every member before it); the channel's `user_count` (HTTP API) must then be \
all of them; then every client closes at once, leaves/s until `user_count` is 0 (polled every \
20 ms). Soketi is one process on one core, werkmann's all-in-one uses both: the per-CPU-second \
figures are the fair comparison.\n\n";

/// Every figure a fault row may have, for its progress line and detail table.
const FAULT_FIGURES: &[(&str, &str)] = &[
    ("clients", "clients"),
    ("pushes", "pushes"),
    ("resets", "resets ordered"),
    ("reconnects", "reconnects"),
    ("lost", "lost"),
    ("dup", "duplicated"),
    ("not_recovered", "not recovered"),
    ("not_recovered_covered", "of which history covered"),
    ("announced_lost", "missed after not recovered"),
    ("resume_p50_ms", "resume p50 ms"),
    ("resume_p99_ms", "resume p99 ms"),
    ("resume_max_ms", "resume max ms"),
    ("refused", "refused handshakes"),
    ("dropped", "closed by server"),
    ("out_of_order", "out of order"),
    ("bad_frames", "bad frames"),
    ("text_frames", "text frames"),
    ("deliveries", "deliveries"),
    ("deliveries_per_s", "deliveries/s"),
    ("per_cpu_s", "deliveries/server CPU-s"),
    ("server_cpu_s", "server CPU s"),
    ("p99_ms", "p99 ms"),
];

/// What the fault section's rows are.
const FAULT_NOTE: &str = "\
Resets: clients of the resuming WebSocket protocol (`/werkmann?channel=Broadcast`, binary \
JSON frames, `docs/recovery.md`) in the coordinator, spread over the WebSocket nodes; once \
every one stands (`ready`), one keep-alive connection pushes `GET /?content=SEQ` at the given \
rate, and every second the given share of the clients (drawn at random, spread over the \
second in slices of 50 ms) set `SO_LINGER` 0 and close — the server sees a RST — and \
reconnect at once to the next node with `last_event_id` = the last id they got. One push goes \
out before the clients connect, so that they stand in the name's epoch (a reader at `0:0`, a \
name that kept nothing yet, is told \"not recovered\" once anything was kept). Resume = from the \
reconnect's start to its `recovery` frame. After the last push the clients get until every \
one has every push (or 5 s without progress). Lost: pushes published (answered 200) that a \
client never got, outside a gap a `recovered: false` announced (those are counted apart as \
missed after not recovered); duplicated: got twice; not recovered: `recovery` frames with \
`recovered: false`, and of those, the ones where the history (100 per name) still covered the \
gap (the resumed id and the announced one in one epoch, at most 100 apart: never due). Every \
message's id must be the push's own position (the first `ready`'s offset + SEQ + 1), a \
recovered resume must stand where it asked, frames must come in the protocol's order (welcome, \
ready or recovery, messages), and a refused handshake, a connection the server closed, a \
push out of order are errors; so is a text frame (nothing pushes to these connections \
directly here: a text frame is the seed's broadcast text, which a reader must not get). History on/off: the broadcast row (seed clients, pushes back to \
back) on two `start_all --count 2` started side by side, the default history (`*=100/5m`) \
and `--history '*=off'`, the runs alternating (on, off, off, on, …), medians.\n\n";

/// A row measured with a feature on and off side by side (`faults::side_by_side`): the
/// figures of each and on ÷ off; the "off" side is the row of mode `off_mode`.
/// Returns on ÷ off in deliveries per server CPU-second, when both were measured.
fn on_off_table(
    out: &mut String,
    rows: &[Row],
    label: &str,
    what: &str,
    off_mode: &str,
) -> Option<f64> {
    let is_off = |r: &Row| r.mode == off_mode;
    let side = |off: bool| {
        rows.iter().find(|r| {
            r.scenario == Scenario::Faults
                && r.label == label
                && r.system == "werkmann"
                && is_off(r) == off
        })
    };
    let (on, off) = (side(false), side(true));
    if on.is_some() || off.is_some() {
        let mut lines = Vec::new();
        for (key, name) in [
            ("per_cpu_s", "deliveries per server CPU-s"),
            ("deliveries_per_s", "deliveries/s"),
            ("cpu_us", "server µs CPU/delivery"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
        ] {
            let (a, b) = (on.and_then(|r| r.get(key)), off.and_then(|r| r.get(key)));
            let ratio = match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{}×", num(a / b)),
                _ => "—".into(),
            };
            let c = |v: Option<f64>| v.map_or("—".into(), num);
            lines.push(vec![label.to_string(), name.into(), c(a), c(b), ratio]);
        }
        let errs = |r: Option<&Row>| r.map_or("—".into(), |r| r.errors.text());
        let runs = |r: Option<&Row>| r.map_or("—".into(), |r| r.runs.to_string());
        lines.push(vec![
            label.to_string(),
            "errors (runs)".into(),
            format!("{} ({})", errs(on), runs(on)),
            format!("{} ({})", errs(off), runs(off)),
            "".into(),
        ]);
        table(
            out,
            &[
                "row",
                "figure",
                &format!("{what} on"),
                &format!("{what} off"),
                "on ÷ off",
            ],
            lines,
        );
    }
    match (
        on.and_then(|r| r.get("per_cpu_s")),
        off.and_then(|r| r.get("per_cpu_s")),
    ) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Every figure a processes-group row may have, for its progress line.
const PROCESSES_FIGURES: &[(&str, &str)] = &[
    ("processes", "server processes"),
    ("req_per_s", "publish req/s"),
    ("req_cpu_us", "server µs CPU/request"),
    ("clients", "clients"),
    ("kib_per_conn", "KiB/conn (PSS)"),
    ("rss_per_conn", "KiB/conn (RSS)"),
    ("conns_per_s", "new conns/s"),
    ("mem_mib", "server MiB"),
    ("deliveries_per_s", "deliveries/s"),
    ("per_cpu_s", "deliveries/server CPU-s"),
    ("cpu_us", "server µs CPU/delivery"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
];

/// What the processes section's rows are.
const PROCESSES_NOTE: &str = "\
Two setups twice each, their instances as threads of one process (threads) and with \
`--processes` as child processes of a single-threaded supervisor sharing its listening \
sockets (processes). 1 ws node: `start_channel` + one `start_ws --count 2` + `start_http`, \
the WebSocket node's two instances threads or children; each instance holds its own \
connection to the channel server either way. All-in-one: `start_all --count 2`, as threads \
with the channel hub embedded (publishes reach the WebSocket instances in-process), with \
`--processes` each of the two WebSocket and two publisher instances a child and the hub a \
fifth, which the instances reach over a Unix socket. Memory and CPU are every server \
process's, the supervisor's children included (server processes: how many were counted). \
Publish (all-in-one only, first, on the fresh server): publish requests per second answered \
on keep-alive connections, each sending a broadcast (to no client) as soon as the previous \
one is answered, and server CPU per request. Idle: WebSocket clients on the broadcast \
channel, the server's memory (PSS; RSS counts pages shared between the children in each) \
after a warm-up push reached them all, less before, per connection, and connections opened \
per second. Broadcast: pushes back to back to those clients (16 in flight), server CPU per \
delivery, latency from sending the push to reading it. Each run starts a fresh server of \
each setup, each pair in turn (threads first, then processes first), each figure the \
median of the runs.\n\n";

/// The processes group (issue 20): threads next to processes, and processes ÷ threads, for
/// one cluster WebSocket node and for all-in-one.
fn processes_section(out: &mut String, rows: &[Row], plan: &Plan) {
    use crate::processes::{all_setups, broadcast_label, idle_label, publish_label, setups};
    use crate::systems::{Build, Setup};
    let rs: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario == Scenario::Processes)
        .collect();
    if rs.is_empty() {
        return;
    }
    out.push_str("### Threads or processes: `--count 2` as threads and as child processes\n\n");
    out.push_str(PROCESSES_NOTE);
    let of = |label: &str, s: Setup| {
        rs.iter()
            .find(|r| r.label == label && r.mode == s.mode() && r.system == s.system())
            .copied()
    };
    let publish: &[(&str, &str)] = &[
        ("processes", "server processes"),
        ("req_per_s", "publish requests/s"),
        ("req_cpu_us", "server µs CPU/request"),
    ];
    let idle: &[(&str, &str)] = &[
        ("processes", "server processes"),
        ("kib_per_conn", "KiB/conn (PSS)"),
        ("rss_per_conn", "KiB/conn (RSS)"),
        ("conns_per_s", "new conns/s"),
        ("mem_mib", "server MiB"),
    ];
    let broadcast: &[(&str, &str)] = &[
        ("deliveries_per_s", "deliveries/s"),
        ("per_cpu_s", "deliveries/server CPU-s"),
        ("cpu_us", "server µs CPU/delivery"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
    ];
    let mut lines = Vec::new();
    for (name, pair) in [
        ("1 ws node", setups(Build::Current)),
        ("all-in-one", all_setups(Build::Current)),
    ] {
        let labels = [
            (publish_label(plan.rate_conns), publish),
            (idle_label(plan.bcast_n), idle),
            (broadcast_label(plan.bcast_n, plan.bcast_m), broadcast),
        ];
        for (label, figures) in &labels {
            let (t, p) = (of(label, pair[0]), of(label, pair[1]));
            if t.is_none() && p.is_none() {
                continue;
            }
            let row = label.trim_start_matches("processes group: ").to_string();
            for (key, figure) in figures.iter() {
                let (a, b) = (t.and_then(|r| r.get(key)), p.and_then(|r| r.get(key)));
                let ratio = match (a, b) {
                    (Some(a), Some(b)) if a > 0.0 && *key != "processes" => {
                        format!("{}×", num(b / a))
                    }
                    _ => "—".into(),
                };
                let c = |r: Option<&Row>| r.map_or("—".into(), |r| cell(r, key));
                lines.push(vec![
                    name.to_string(),
                    row.clone(),
                    figure.to_string(),
                    c(t),
                    c(p),
                    ratio,
                ]);
            }
            let errs = |r: Option<&Row>| {
                r.map_or("—".into(), |r| {
                    format!("{} ({})", r.errors.text(), r.runs)
                })
            };
            lines.push(vec![
                name.to_string(),
                row,
                "errors (runs)".into(),
                errs(t),
                errs(p),
                String::new(),
            ]);
        }
    }
    table(
        out,
        &[
            "setup",
            "row",
            "figure",
            "threads",
            "processes",
            "processes ÷ threads",
        ],
        lines,
    );
}

/// The fault rows and their targets (issue 18's fault bench).
fn faults_section(out: &mut String, rows: &[Row], plan: &Plan) {
    use crate::faults::{history_label, reset_label};
    if !rows.iter().any(|r| r.scenario == Scenario::Faults) {
        return;
    }
    out.push_str(
        "### Faults: resets under paced pushes, history on and off

",
    );
    out.push_str(FAULT_NOTE);
    let rl = reset_label(
        plan.fault_n,
        plan.fault_rate,
        plan.fault_reset_pct,
        plan.fault_secs,
    );
    let resets: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario == Scenario::Faults && r.label == rl)
        .collect();
    let figures = [
        ("clients", "clients"),
        ("pushes", "pushes"),
        ("reconnects", "reconnects"),
        ("lost", "lost"),
        ("dup", "duplicated"),
        ("not_recovered", "not recovered"),
        ("not_recovered_covered", "of which history covered"),
        ("resume_p50_ms", "resume p50 ms"),
        ("resume_p99_ms", "resume p99 ms"),
        ("resume_max_ms", "resume max ms"),
        ("text_frames", "text frames"),
    ];
    if !resets.is_empty() {
        let mut header = vec!["row", "mode"];
        header.extend(figures.iter().map(|(_, n)| *n));
        header.push("errors");
        let lines = resets
            .iter()
            .map(|r| {
                let mut l = vec![r.label.clone(), r.mode.clone()];
                l.extend(figures.iter().map(|(key, _)| cell(r, key)));
                l.push(r.errors.text());
                l
            })
            .collect();
        table(out, &header, lines);
    }
    let hl = history_label(plan.bcast_n, plan.bcast_m);
    let history = on_off_table(out, rows, &hl, "history", "all-in-one, history off");
    let ml = crate::faults::metrics_label(plan.bcast_n, plan.bcast_m);
    let metrics = on_off_table(out, rows, &ml, "metrics", "all-in-one");
    // The targets.
    let mut lines = Vec::new();
    for r in &resets {
        let zero = |key: &str| match r.get(key) {
            Some(0.0) => "met (0)".to_string(),
            Some(v) => format!("**missed** ({})", num(v)),
            None => "not measured".into(),
        };
        for (key, what) in [
            ("lost", "pushes lost = 0"),
            ("dup", "pushes duplicated = 0"),
            (
                "not_recovered",
                "not recovered = 0 (the history covers every gap)",
            ),
            (
                "not_recovered_covered",
                "not recovered where the history covered the gap = 0",
            ),
        ] {
            lines.push(vec![format!("{}, {}: {what}", r.label, r.mode), zero(key)]);
        }
        let errors = r.errors.text();
        lines.push(vec![
            format!("{}, {}: no errors", r.label, r.mode),
            if errors == "0" {
                "met".into()
            } else {
                format!("**missed** ({errors})")
            },
        ]);
    }
    let verdict = |x: Option<f64>, goal: f64| match x {
        Some(x) => format!(
            "{} ({}×)",
            if x >= goal { "met" } else { "**missed**" },
            num(x)
        ),
        None => "not measured".into(),
    };
    lines.push(vec![
        format!("{hl}: deliveries per server CPU-s with history ≥ 0.8× of off"),
        verdict(history, 0.8),
    ]);
    if metrics.is_some() {
        lines.push(vec![
            format!("{ml}: deliveries per server CPU-s with metrics scraped ≥ 0.97× of off"),
            verdict(metrics, 0.97),
        ]);
    }
    table(out, &["target", "verdict"], lines);
}

/// werkmann's Pusher rows next to Soketi's, and issue 17's targets.
fn pusher_section(out: &mut String, rows: &[Row], plan: &Plan) {
    use crate::pusher_rows::{broadcast_label, idle_label, presence_label, publish_label};
    if !rows.iter().any(|r| r.scenario == Scenario::Pusher) {
        return;
    }
    out.push_str("### Pusher protocol: werkmann next to Soketi\n\n");
    out.push_str(PUSHER_NOTE);
    let pl = publish_label(plan.pusher_subs, plan.inflight);
    let labels = [
        (idle_label(plan.pusher_n), &PUSHER_FIGURES[1..4]),
        (
            broadcast_label(plan.pusher_n, plan.pusher_m),
            &[
                ("per_cpu_s", "deliveries/server CPU-s"),
                ("deliveries_per_s", "deliveries/s"),
                ("cpu_us", "server µs CPU/delivery"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
            ][..],
        ),
        (
            pl.clone(),
            &[
                ("req_per_s", "publishes/s"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("cpu_us", "server µs CPU/publish"),
                ("delivery_p99_ms", "delivery p99 ms"),
            ][..],
        ),
        (presence_label(plan.pusher_presence), &PUSHER_FIGURES[11..]),
    ];
    let of = |system: &str, label: &str| {
        rows.iter().find(|r| {
            r.scenario == Scenario::Pusher && r.system == system && r.label.starts_with(label)
        })
    };
    let mut lines = Vec::new();
    for (label, figures) in &labels {
        let (w, s) = (of("werkmann", label), of("Soketi", label));
        if w.is_none() && s.is_none() {
            continue;
        }
        let errors = |r: Option<&Row>| r.map_or("—".into(), |r| r.errors.text());
        let runs = |r: Option<&Row>| r.map_or("—".into(), |r| r.runs.to_string());
        for (key, name) in figures.iter() {
            let (wv, sv) = (w.and_then(|r| r.get(key)), s.and_then(|r| r.get(key)));
            if wv.is_none() && sv.is_none() {
                continue;
            }
            let ratio = match (wv, sv) {
                (Some(a), Some(b)) if b > 0.0 => format!("{}×", num(a / b)),
                _ => "—".into(),
            };
            lines.push(vec![
                w.or(s).map_or(label.clone(), |r| r.label.clone()),
                name.to_string(),
                wv.map_or("—".into(), num),
                sv.map_or("—".into(), num),
                ratio,
                format!("{} / {}", errors(w), errors(s)),
                format!("{} / {}", runs(w), runs(s)),
            ]);
        }
    }
    table(
        out,
        &[
            "row",
            "figure",
            "werkmann",
            "Soketi",
            "werkmann ÷ Soketi",
            "errors werkmann / Soketi",
            "runs",
        ],
        lines,
    );
    let mut lines = Vec::new();
    // `factor`: werkmann's figure ÷ Soketi's that the target asks (None: no target).
    let mut check = |target: &str, label: &str, key: &str, factor: Option<f64>, higher: bool| {
        let (w, s) = (
            of("werkmann", label).and_then(|r| r.get(key)),
            of("Soketi", label).and_then(|r| r.get(key)),
        );
        let verdict = match (w, s) {
            (Some(w), Some(s)) if s > 0.0 => {
                let ratio = w / s;
                let word = match factor {
                    None => "no target",
                    Some(f) if (higher && ratio >= f) || (!higher && ratio <= f) => "met",
                    Some(_) => "**missed**",
                };
                format!("{word} ({}× Soketi's)", num(ratio))
            }
            _ => "not measured".into(),
        };
        let cell = |v: Option<f64>| v.map_or("—".into(), num);
        lines.push(vec![target.to_string(), cell(w), cell(s), verdict]);
    };
    let bl = broadcast_label(plan.pusher_n, plan.pusher_m);
    check(
        &format!("{bl}: deliveries per server CPU-s ≥ 10× Soketi's"),
        &bl,
        "per_cpu_s",
        Some(10.0),
        true,
    );
    let il = idle_label(plan.pusher_n);
    check(
        &format!("{il}: KiB per connection (PSS) ≤ ¼ of Soketi's"),
        &il,
        "kib_per_conn",
        Some(0.25),
        false,
    );
    check(
        &format!("{pl}: publishes/s ≥ 2× Soketi's"),
        &pl,
        "req_per_s",
        Some(2.0),
        true,
    );
    let prl = presence_label(plan.pusher_presence);
    check(&format!("{prl}: joins/s"), &prl, "joins_per_s", None, true);
    check(
        &format!("{prl}: leaves/s"),
        &prl,
        "leaves_per_s",
        None,
        true,
    );
    table(out, &["target", "werkmann", "Soketi", "verdict"], lines);
}

/// The whole report.
pub fn markdown(res: &Results) -> String {
    let mut out = String::new();
    out.push_str(INTRO.trim_end());
    out.push_str("\n\n");
    let p = &res.plan;
    let _ = writeln!(
        out,
        "## Results of {}{}\n",
        res.date,
        if res.quick { " (quick set)" } else { "" }
    );
    let _ = writeln!(out, "- Machine: {}", machine());
    let _ = writeln!(out, "- Versions: {}", versions());
    let _ = writeln!(out, "- Command: `{}` — took {:.0} s", res.command, res.secs);
    let _ = writeln!(
        out,
        "- Sizes: idle {} and {} on one node, {} across 4 nodes; broadcast {} × {}, {} × {}, {} × {} \
         across 4 nodes; targeted {} pushes at {} clients, {} in flight; paced {} × {}/s for {} s; \
         publish {} s on {} connections; gateway: {} clients over 4 nodes, {} uid pushes, groups of \
         {} with {} group pushes, {} bindings for the directory's memory; payload {} bytes; rows \
         marked runs = {} are medians of {}.",
        k(p.idle_small),
        k(p.idle_one),
        k(p.nodes_total),
        k(p.bcast_n),
        p.bcast_m,
        k(p.small_n),
        p.small_m,
        k(p.nodes_bcast),
        p.nodes_m,
        k(p.targeted_p),
        k(p.bcast_n),
        p.inflight,
        k(p.small_n),
        p.paced_rate,
        p.paced_secs,
        p.rate_secs,
        p.rate_conns,
        k(p.bcast_n),
        k(p.targeted_p),
        k(p.gw_group_size),
        p.gw_group_m,
        k(p.dir_bindings),
        p.size,
        p.repeats,
        p.repeats
    );
    out.push('\n');
    if rows_have_before(&res.rows) {
        out.push_str("### werkmann before and after\n\n");
        out.push_str(
            "Every werkmann row next to the same row of the baseline's binaries (`--baseline`, \
             `werkmann-before`), measured in this run: each mode's session ran first with the \
             baseline's binaries, then with the current ones, same scenarios in the same order. \
             Rows with runs = N are medians of N. \"after ÷ before\" is the plain ratio of the \
             figures; \"after vs before\" reads it in the figure's direction (better or worse by \
             more than 5 %).\n\n",
        );
        before_after(&mut out, &res.rows);
    }
    out.push_str("### werkmann against the best peer\n\n");
    out.push_str(
        "Each werkmann row against the peers set up alike: Nchan with 2 nginx workers (4 for the \
         4-node rows), Socket.IO in one process for all-in-one and with as many nodes as werkmann \
         otherwise. The ratio is werkmann's figure over the best peer's; ✓ where werkmann is at \
         least as good. Nchan on Redis (its channels in a Redis of its own, as werkmann's Redis \
         mode keeps them) is shown beside werkmann's Redis rows, its like, and is not counted as \
         the best peer.\n\n",
    );
    summary(&mut out, &res.rows);
    out.push_str("### The issue's targets\n\n");
    targets(&mut out, &res.rows, p);
    for sc in [
        Scenario::Idle,
        Scenario::Broadcast,
        Scenario::Paced,
        Scenario::Targeted,
        Scenario::Publish,
        Scenario::Slow,
    ] {
        detail(&mut out, &res.rows, sc);
        if sc == Scenario::Slow && res.rows.iter().any(|r| r.scenario == sc) {
            out.push_str(SLOW_NOTE);
        }
    }
    uid_next_to_targeted(&mut out, &res.rows, p);
    pusher_section(&mut out, &res.rows, p);
    faults_section(&mut out, &res.rows, p);
    crate::sse_rows::section(&mut out, &res.rows, p);
    processes_section(&mut out, &res.rows, p);
    for sc in [Scenario::Uid, Scenario::Group, Scenario::DirMemory] {
        detail(&mut out, &res.rows, sc);
    }
    if res.rows.iter().any(|r| r.scenario == Scenario::Uid) {
        out.push_str(GATEWAY_NOTE);
    }
    if let Some(ch) = &res.channel {
        out.push_str("### Channel server events/s (`pushbench channel`)\n\n");
        out.push_str(
            "werkmann only: neither peer has a Workerman-channel server. Output as printed:\n\n",
        );
        out.push_str(ch.trim());
        out.push_str("\n\n");
    }
    if let Some(ch) = &res.channel_before {
        out.push_str(
            "### Channel server events/s, the baseline's `start_channel` (`--baseline`)\n\n",
        );
        out.push_str(ch.trim());
        out.push_str("\n\n");
    }
    let notes: Vec<&String> = res.notes.iter().collect();
    let row_notes: Vec<String> = res
        .rows
        .iter()
        .flat_map(|r| {
            r.notes
                .iter()
                .map(move |n| format!("{} / {} ({}): {n}", r.label, r.system, r.mode))
        })
        .collect();
    if !notes.is_empty() || !row_notes.is_empty() {
        out.push_str("### Notes of this run\n\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
        for n in row_notes {
            let _ = writeln!(out, "- {n}");
        }
        out.push('\n');
    }
    out.push_str(FINDINGS.trim_end());
    out.push_str("\n\n");
    out.push_str(PROFILE.trim_end());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systems::{Build, Setup};

    fn publish(build: Build, req_per_s: f64, cpu_us: f64) -> Row {
        let mut r = Row::new(
            Scenario::Publish,
            "publish, 32 keep-alive connections",
            Setup::WerkmannAll { build },
        );
        r.runs = 3;
        r.set("req_per_s", req_per_s);
        r.set("cpu_us", cpu_us);
        r
    }

    #[test]
    fn before_and_after_side_by_side_with_the_ratio_read_in_each_direction() {
        let rows = vec![
            publish(Build::Baseline, 100_000.0, 10.0),
            publish(Build::Current, 90_000.0, 9.0),
        ];
        let mut out = String::new();
        before_after(&mut out, &rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert!(lines[0].starts_with("| row | mode | figure | before | after | after ÷ before"));
        assert_eq!(
            lines[2],
            "| publish, 32 keep-alive connections | all-in-one | requests/s (higher is better) \
             | 100,000 | 90,000 | 0.90× | **worse** | 3 / 3 | 0 / 0 |"
        );
        assert_eq!(
            lines[3],
            "| publish, 32 keep-alive connections | all-in-one | server µs CPU/request (lower is \
             better) | 10.0 | 9.00 | 0.90× | better | 3 / 3 | 0 / 0 |"
        );
    }

    #[test]
    fn a_report_written_again_keeps_the_sections_written_by_hand() {
        let res = Results {
            date: "2026-12-05 23:00 UTC".into(),
            secs: 1.0,
            command: "pushbench".into(),
            quick: true,
            plan: Plan::quick_set(),
            rows: vec![publish(Build::Current, 1.0, 1.0)],
            notes: Vec::new(),
            channel: None,
            channel_before: None,
        };
        let md = markdown(&res);
        let at = |s: &str| md.find(s).unwrap_or_else(|| panic!("{s} missing"));
        // Intro, this run's results, every issue's findings, then the profile.
        let results = at("## Results of 2026-12-05 23:00 UTC");
        let first = at("## Pusher protocol: werkmann next to Soketi (issue 17)");
        let last = at("## Transports: Unix sockets and UDP (issue 20)");
        let profile = at("## Profile of the hot paths");
        assert!(at("## How the peers are wired") < results);
        assert!(results < first && first < last && last < profile, "{md}");
        assert!(md.contains("**Nchan on Redis, and what bounds the Redis rows"));
    }

    #[test]
    fn a_row_of_one_build_only_shows_dashes_and_no_baseline_means_no_table() {
        let mut out = String::new();
        before_after(&mut out, &[publish(Build::Current, 1.0, 1.0)]);
        assert!(out.is_empty());
        before_after(&mut out, &[publish(Build::Baseline, 50_000.0, 10.0)]);
        assert!(
            out.contains("| 50,000 | — | — | — | 3 / — | 0 / — |"),
            "{out}"
        );
    }

    #[test]
    fn gateway_targets_read_copies_exactly_and_memory_against_256_bytes() {
        let plan = Plan::quick_set();
        let setup = Setup::WerkmannCluster {
            ws: 4,
            build: Build::Current,
        };
        let row = |sc, label: String, figures: &[(&str, f64)]| {
            let mut r = Row::new(sc, &label, setup);
            for (k, v) in figures {
                r.set(k, *v);
            }
            r
        };
        let (n, f) = (plan.bcast_n, plan.inflight);
        let mut rows = vec![
            row(
                Scenario::Targeted,
                gateway::targeted_label(n, f),
                &[("pushes_per_s", 20_000.0)],
            ),
            row(
                Scenario::Uid,
                gateway::uid_label(n, f),
                &[
                    ("pushes_per_s", 21_000.0),
                    ("copies", 1.0),
                    ("holders", 1.0),
                ],
            ),
            // One copy too many over the run: not exact.
            row(
                Scenario::Uid,
                gateway::uid2_label(n, f),
                &[
                    ("pushes_per_s", 19_000.0),
                    ("copies", 2.0 + 1.0 / f64::from(plan.targeted_p)),
                    ("holders", 2.0),
                ],
            ),
            row(
                Scenario::DirMemory,
                gateway::dir_memory_label(plan.dir_bindings),
                &[("bytes_per_binding", 200.0)],
            ),
        ];
        rows[3].mode = "channel server (PSS)".into();
        rows[1].errors.answer = 1;
        let mut lines = Vec::new();
        gateway_targets(&mut lines, &rows, &plan);
        let verdicts: Vec<&str> = lines.iter().map(|l| l[2].as_str()).collect();
        assert_eq!(
            verdicts,
            [
                "met (1.05× the goal)",
                "met (1.05× the goal)",
                "met",
                "**missed**",
                "**missed**",
                "met",
                "met (1.28× the goal)"
            ],
            "{lines:?}"
        );
        assert_eq!(lines[4][1], "1 answers not as due");
    }

    #[test]
    fn the_processes_section_puts_threads_next_to_processes_with_the_ratio() {
        let plan = Plan::quick_set();
        let [t, p] = crate::processes::setups(Build::Current);
        let label = crate::processes::idle_label(plan.bcast_n);
        let mut a = Row::new(Scenario::Processes, &label, t);
        a.set("processes", 3.0);
        a.set("kib_per_conn", 10.0);
        let mut b = Row::new(Scenario::Processes, &label, p);
        b.set("processes", 5.0);
        b.set("kib_per_conn", 12.5);
        b.runs = 3;
        // All-in-one's pair: the same broadcast label as the cluster pair's, and a publish
        // row of its own.
        let [at, ap] = crate::processes::all_setups(Build::Current);
        let bl = crate::processes::broadcast_label(plan.bcast_n, plan.bcast_m);
        let mut c = Row::new(Scenario::Processes, &bl, at);
        c.set("deliveries_per_s", 1000.0);
        let mut d = Row::new(Scenario::Processes, &bl, ap);
        d.set("deliveries_per_s", 800.0);
        let pl = crate::processes::publish_label(plan.rate_conns);
        let mut e = Row::new(Scenario::Processes, &pl, at);
        e.set("req_per_s", 40_000.0);
        let mut f = Row::new(Scenario::Processes, &pl, ap);
        f.set("req_per_s", 30_000.0);
        let mut out = String::new();
        processes_section(&mut out, &[a, b, d, c, f, e], &plan);
        assert!(
            out.contains("| setup | row | figure | threads | processes | processes ÷ threads |"),
            "{out}"
        );
        let idle = format!("| 1 ws node | idle {} |", k(plan.bcast_n));
        assert!(
            out.contains(&format!("{idle} server processes | 3 | 5 | — |")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{idle} KiB/conn (PSS) | 10.0 | 12.5 | 1.25× |")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{idle} errors (runs) | 0 (1) | 0 (3) |  |")),
            "{out}"
        );
        assert!(
            out.contains(
                "| all-in-one | publish, 32 keep-alive connections | publish requests/s \
                 | 40,000 | 30,000 | 0.75× |"
            ),
            "{out}"
        );
        let bcast = format!(
            "| all-in-one | broadcast {} × {} |",
            k(plan.bcast_n),
            plan.bcast_m
        );
        assert!(
            out.contains(&format!("{bcast} deliveries/s | 1,000 | 800 | 0.80× |")),
            "{out}"
        );
        // The cluster pair has no broadcast row here, all-in-one no idle row.
        assert!(!out.contains("| 1 ws node | broadcast"), "{out}");
        assert!(!out.contains("| all-in-one | idle"), "{out}");
        // The publish row comes first within its pair.
        assert!(out.find("| all-in-one | publish") < out.find("| all-in-one | broadcast"));
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(100.0, 104.0, true), "same (±5 %)");
        assert_eq!(verdict(100.0, 106.0, true), "better");
        assert_eq!(verdict(1.0, 1.2, false), "**worse**");
        assert_eq!(verdict(1.0, 0.97, false), "same (±5 %)");
    }
}
