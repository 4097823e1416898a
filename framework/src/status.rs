//! What `status` and `connections` show. Asked by a signal, the running process writes a
//! [`Report`] (or its connections) as JSON; the command line prints it as a table, as JSON
//! (`--json`), refreshed every second with rates (`status -d`, as Workerman's live status),
//! and picks connections by [`ConnectionFilter`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cli::{self, ConnectionFilter, Paths, SortBy};
use crate::error::Error;
use crate::worker::instance::ConnectionInfo;
use crate::worker::InstanceStatus;

/// The running process's figures, as `status --json` prints them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// werkmann's version.
    pub version: String,
    /// The process id.
    pub pid: u32,
    /// When the process started, seconds since the Unix epoch.
    pub started_unix: f64,
    /// The load average (1, 5, 15 minutes).
    pub load: [f64; 3],
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// CPU time used, seconds.
    pub cpu_secs: f64,
    /// Workers running.
    pub workers: usize,
    /// Each instance's figures.
    pub instances: Vec<InstanceStatus>,
    /// The metrics' totals (see docs/operations.md): refused and closed by reason,
    /// deliveries, publishes and their latency, broker links, hub sizes.
    pub totals: serde_json::Value,
    /// With workers run as processes: each child of the supervisor (whose figures above are
    /// the sums of its children's and its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildStatus>,
}

/// One child process of the supervisor, in its [`Report`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildStatus {
    /// Its process id.
    pub pid: u32,
    /// What it serves: "pusher #1" (an instance), or the workers run as threads.
    pub serves: String,
    /// When it started (this time), seconds since the Unix epoch.
    pub started_unix: f64,
    /// How often the supervisor started it again.
    pub restarts: u32,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// CPU time used, seconds.
    pub cpu_secs: f64,
    /// Open connections.
    pub connections: usize,
}

impl Report {
    /// This process's report now, from its instances' figures.
    pub(crate) fn now(workers: usize, instances: Vec<InstanceStatus>) -> Report {
        let totals = crate::metrics::totals();
        let mut value = serde_json::to_value(&totals).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.remove("instances"); // `instances` has them, with more
        }
        Report {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_unix: totals.started_unix,
            load: load_average(),
            rss_bytes: totals.rss_bytes,
            cpu_secs: totals.cpu_secs,
            workers,
            instances,
            totals: value,
            children: Vec::new(),
        }
    }
}

fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [0; 3].map(|_| it.next().unwrap_or(0.0))
}

/// `status`: print the report once, as a table or JSON, or refresh it every second.
pub(crate) fn show(paths: &Paths, program: &str, live: bool, json: bool) -> Result<(), Error> {
    let ask = || -> Result<Report, Error> {
        let text = cli::request_report(paths, program, libc::SIGUSR2, &paths.status)?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Cli(format!("{program}: unreadable status: {e}")))
    };
    if !live {
        let report = ask()?;
        match json {
            true => println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            ),
            false => print!("{}", render(&report, None)),
        }
        return Ok(());
    }
    let mut last: Option<(Report, Instant)> = None;
    loop {
        let report = ask()?;
        let at = Instant::now();
        let shown = match json {
            // One object per line, for a script that follows the stream.
            true => format!("{}\n", serde_json::to_string(&report).unwrap_or_default()),
            false => {
                let since = last
                    .as_ref()
                    .map(|(r, t)| (r, at.duration_since(*t).as_secs_f64()));
                format!(
                    "\x1b[H\x1b[2J{}Press Ctrl+C to quit.\n",
                    render(&report, since)
                )
            }
        };
        let mut out = std::io::stdout().lock();
        if out
            .write_all(shown.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return Ok(()); // the reader went away
        }
        drop(out);
        last = Some((report, at));
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The parts of the totals the table shows.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Summary {
    accepted: u64,
    refused: BTreeMap<String, u64>,
    closed: BTreeMap<String, u64>,
    deliveries: u64,
    send_drops: u64,
    publishes: u64,
    publish_p50: Option<f64>,
    publish_p99: Option<f64>,
    broker_connected: BTreeMap<String, i64>,
    broker_reconnects: u64,
    hubs: Vec<HubSummary>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct HubSummary {
    hub: String,
    directory_only: bool,
    subscribers: i64,
    events: i64,
    clients: i64,
    uids: i64,
    groups: i64,
    presence_members: i64,
    history_events: i64,
}

/// "3 (peer 2, idle 1)": a total and its non-zero reasons.
fn by_reason(map: &BTreeMap<String, u64>) -> String {
    let total: u64 = map.values().sum();
    let parts: Vec<String> = map
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    match parts.is_empty() {
        true => total.to_string(),
        false => format!("{total} ({})", parts.join(", ")),
    }
}

fn ms(secs: Option<f64>) -> String {
    secs.map_or("-".into(), |s| format!("{:.1} ms", s * 1000.0))
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    format!("{d}d {h:02}:{m:02}:{s:02}")
}

/// The table; with the previous report and the seconds since it, rates per second too.
fn render(r: &Report, since: Option<(&Report, f64)>) -> String {
    let sum: Summary = serde_json::from_value(r.totals.clone()).unwrap_or_default();
    let started = UNIX_EPOCH + Duration::from_secs_f64(r.started_unix.max(0.0));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let up = (now - r.started_unix).max(0.0) as u64;
    let conns: usize = r.instances.iter().map(|i| i.connections).sum();
    // A figure per second since the previous report, given the figure then.
    let dt = since.map(|(_, dt)| dt).filter(|dt| *dt > 0.0);
    let rate = |now: u64, before: u64| match dt {
        Some(dt) => format!("{:.0}/s", now.saturating_sub(before) as f64 / dt),
        None => "-".into(),
    };
    let sum_of = |r: &Report, f: fn(&InstanceStatus) -> u64| r.instances.iter().map(f).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "---------------------------------------GLOBAL STATUS----------------------------------------"
    );
    let _ = writeln!(
        out,
        "werkmann {}  pid {}  rss {:.1} MiB  cpu {:.1} s  workers {}  instances {}",
        r.version,
        r.pid,
        r.rss_bytes as f64 / 1048576.0,
        r.cpu_secs,
        r.workers,
        r.instances.len()
    );
    let _ = writeln!(
        out,
        "started {}  up {}  load {:.2} {:.2} {:.2}",
        httpdate::fmt_http_date(started),
        duration(up),
        r.load[0],
        r.load[1],
        r.load[2]
    );
    let _ = writeln!(
        out,
        "connections {conns}  accepted {}  refused {}  closed {}",
        sum.accepted,
        by_reason(&sum.refused),
        by_reason(&sum.closed)
    );
    let _ = writeln!(
        out,
        "deliveries {}  drops {}  publishes {} (p50 {}, p99 {})",
        sum.deliveries,
        sum.send_drops,
        sum.publishes,
        ms(sum.publish_p50),
        ms(sum.publish_p99)
    );
    if let Some((p, _)) = since {
        let both = |f: fn(&InstanceStatus) -> u64| rate(sum_of(r, f), sum_of(p, f));
        let deliveries = |r: &Report| r.totals["deliveries"].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "rates: accepted {}  messages in {}  out {}  deliveries {}",
            both(|i| i.accepted),
            both(|i| i.messages_in),
            both(|i| i.messages_out),
            rate(deliveries(r), deliveries(p))
        );
    }
    if !sum.broker_connected.is_empty() || sum.broker_reconnects > 0 {
        let links: Vec<String> = sum
            .broker_connected
            .iter()
            .map(|(b, n)| format!("{b} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "broker links up: {}  reconnects {}",
            links.join(", "),
            sum.broker_reconnects
        );
    }
    for h in &sum.hubs {
        let dir = format!("clients {} uids {} groups {}", h.clients, h.uids, h.groups);
        let _ = match h.directory_only {
            true => writeln!(out, "hub {}: {dir}", h.hub),
            false => writeln!(
                out,
                "hub {}: subscribers {} events {} {dir} presence {} history {}",
                h.hub, h.subscribers, h.events, h.presence_members, h.history_events
            ),
        };
    }
    if !r.children.is_empty() {
        let _ = writeln!(
            out,
            "{:<8} {:<32} {:>8} {:>9} {:>10} {:>9} {:>12}",
            "pid", "serves", "conns", "restarts", "rss_mib", "cpu_s", "up_s"
        );
        for c in &r.children {
            let _ = writeln!(
                out,
                "{:<8} {:<32} {:>8} {:>9} {:>10.1} {:>9.1} {:>12.0}",
                c.pid,
                c.serves,
                c.connections,
                c.restarts,
                c.rss_bytes as f64 / 1048576.0,
                c.cpu_secs,
                (now - c.started_unix).max(0.0)
            );
        }
    }
    let _ = writeln!(
        out,
        "--------------------------------------PROCESS STATUS----------------------------------------"
    );
    let mut head = format!(
        "{:<14} {:<28} {:>3} {:>8} {:>10} {:>12} {:>12} {:>8} {:>10} {:>8} {:>6} {:>8}",
        "worker",
        "listen",
        "id",
        "conns",
        "accepted",
        "msgs_in",
        "msgs_out",
        "fails",
        "buffered",
        "refused",
        "idle_cl",
        "uptime_s"
    );
    if since.is_some() {
        let _ = write!(head, " {:>8} {:>8}", "in/s", "out/s");
    }
    let _ = writeln!(out, "{head}");
    for s in &r.instances {
        let _ = write!(
            out,
            "{:<14} {:<28} {:>3} {:>8} {:>10} {:>12} {:>12} {:>8} {:>10} {:>8} {:>6} {:>8}",
            s.worker,
            s.socket,
            s.id,
            s.connections,
            s.accepted,
            s.messages_in,
            s.messages_out,
            s.send_failures,
            s.send_buffered,
            s.refused,
            s.idle_closed,
            s.uptime.as_secs()
        );
        if let Some((p, _)) = since {
            let was = p
                .instances
                .iter()
                .find(|i| i.worker == s.worker && i.id == s.id);
            let _ = write!(
                out,
                " {:>8} {:>8}",
                rate(s.messages_in, was.map_or(0, |i| i.messages_in)),
                rate(s.messages_out, was.map_or(0, |i| i.messages_out))
            );
        }
        out.push('\n');
    }
    out
}

impl ConnectionFilter {
    /// Whether `c` is one this filter picks.
    pub fn matches(&self, c: &ConnectionInfo) -> bool {
        let ip = || {
            c.remote
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.ip())
        };
        self.worker.as_ref().is_none_or(|w| *w == c.worker)
            && self.instance.is_none_or(|i| i == c.instance)
            && self.ip.is_none_or(|want| ip() == Some(want))
            && self
                .client_id
                .as_ref()
                .is_none_or(|id| c.client_id.as_ref() == Some(id))
            && self.uid.as_ref().is_none_or(|u| c.uid.as_ref() == Some(u))
            && self.group.as_ref().is_none_or(|g| c.groups.contains(g))
            && self.min_buffered.is_none_or(|b| c.send_buffered >= b)
            && self.idle.is_none_or(|s| c.idle_secs >= s)
    }

    /// The connections this filter picks from `all`, sorted and limited as it says.
    pub fn apply(&self, all: Vec<ConnectionInfo>) -> Vec<ConnectionInfo> {
        let mut picked: Vec<ConnectionInfo> = all.into_iter().filter(|c| self.matches(c)).collect();
        picked.sort_by(|a, b| {
            let key = |c: &ConnectionInfo| match self.sort {
                Some(SortBy::Buffered) => c.send_buffered as u64,
                Some(SortBy::Idle) => c.idle_secs as u64,
                Some(SortBy::Age) => c.age_secs as u64,
                Some(SortBy::In) => c.messages_in,
                Some(SortBy::Out) => c.messages_out,
                None => 0,
            };
            key(b)
                .cmp(&key(a))
                .then_with(|| (&a.worker, a.instance, a.id).cmp(&(&b.worker, b.instance, b.id)))
        });
        if let Some(n) = self.limit {
            picked.truncate(n);
        }
        picked
    }
}

/// `connections`: ask the process for its connections and print those `filter` picks.
pub(crate) fn connections(
    paths: &Paths,
    program: &str,
    filter: &ConnectionFilter,
) -> Result<(), Error> {
    let text = cli::request_report(paths, program, libc::SIGIO, &paths.connections)?;
    let all: Vec<ConnectionInfo> = serde_json::from_str(&text)
        .map_err(|e| Error::Cli(format!("{program}: unreadable connections: {e}")))?;
    let total = all.len();
    let picked = filter.apply(all);
    if filter.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&picked).unwrap_or_default()
        );
        return Ok(());
    }
    let mut out = format!(
        "{:<14} {:>3} {:>8} {:<14} {:<22} {:<10} {:>7} {:>7} {:>10} {:>10} {:>10} {:<16} groups\n",
        "worker",
        "id",
        "conn",
        "client_id",
        "remote",
        "protocol",
        "age_s",
        "idle_s",
        "buffered",
        "msgs_in",
        "msgs_out",
        "uid"
    );
    for c in &picked {
        let _ = writeln!(
            out,
            "{:<14} {:>3} {:>8} {:<14} {:<22} {:<10} {:>7} {:>7} {:>10} {:>10} {:>10} {:<16} {}",
            c.worker,
            c.instance,
            c.id,
            c.client_id.as_deref().unwrap_or("-"),
            c.remote,
            c.protocol,
            c.age_secs,
            c.idle_secs,
            c.send_buffered,
            c.messages_in,
            c.messages_out,
            c.uid.as_deref().unwrap_or("-"),
            match c.groups.is_empty() {
                true => "-".to_string(),
                false => c.groups.join(","),
            }
        );
    }
    let _ = writeln!(out, "{} of {total} connections", picked.len());
    print!("{out}");
    Ok(())
}
