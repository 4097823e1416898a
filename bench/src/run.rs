//! The coordinator: starts each system, drives the generator workers through the scenarios,
//! publishes, measures, and hands the rows to the report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use rand::Rng as _;

use crate::child::Args;
use crate::clock::mono_ns;
use crate::gen::{Gen, MAX_PER_WORKER};
use crate::http::{Api, Conn};
use crate::procfs;
use crate::proto::{payload, Address, Flavor, Kind};
use crate::report::{self, Results};
use crate::row::{self, Errors, Row, Scenario};
use crate::slow;
use crate::systems::{Build, Env, Running, Setup};

/// Sizes of one run of the suite.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Idle clients of the first row (one node).
    pub idle_small: u32,
    /// Idle clients of the one-node memory row (medians of `repeats` fresh starts).
    pub idle_one: u32,
    /// Idle clients across 4 nodes.
    pub nodes_total: u32,
    /// Broadcast clients across 4 nodes, and the pushes they get.
    pub nodes_bcast: u32,
    /// Pushes of the 4-node broadcast.
    pub nodes_m: u32,
    /// Clients of the main broadcast and targeted rows.
    pub bcast_n: u32,
    /// Pushes of the main broadcast row.
    pub bcast_m: u32,
    /// Clients of the small broadcast and the paced row.
    pub small_n: u32,
    /// Pushes of the small broadcast row.
    pub small_m: u32,
    /// Paced broadcasts per second.
    pub paced_rate: u32,
    /// Length of the paced row, seconds.
    pub paced_secs: u32,
    /// Targeted pushes per run.
    pub targeted_p: u32,
    /// Publish requests in flight (broadcast bursts and targeted pushes).
    pub inflight: usize,
    /// Length of the publish-rate row, seconds.
    pub rate_secs: f64,
    /// Keep-alive connections of the publish-rate row.
    pub rate_conns: usize,
    /// Runs of the rows reported as medians.
    pub repeats: usize,
    /// Push payload size, bytes.
    pub size: usize,
    /// Slow-client row: clients that stop reading (next to `bcast_n` others).
    pub slow_k: u32,
    /// Slow-client row: broadcasts per second to the others.
    pub slow_rate: u32,
    /// Slow-client row: length of each of its two runs, seconds.
    pub slow_secs: u32,
    /// Slow-client row: bytes of large targeted pushes sent to each of the K clients a second.
    pub slow_bytes_per_s: usize,
    /// Gateway session: members of each group (clients `i` with the same `i / size`).
    pub gw_group_size: u32,
    /// Gateway session: group pushes per run (to the groups in turn).
    pub gw_group_m: u32,
    /// Directory-memory row: clients registered and bound to a uid each.
    pub dir_bindings: u32,
    /// Pusher rows: clients of the idle and broadcast rows.
    pub pusher_n: u32,
    /// Pusher rows: publishes of the broadcast row.
    pub pusher_m: u32,
    /// Pusher rows: subscribers of the publish row.
    pub pusher_subs: u32,
    /// Pusher rows: publishes per run of the publish row.
    pub pusher_publishes: u32,
    /// Pusher rows: members joining (and leaving) the presence channel.
    pub pusher_presence: u32,
    /// Fault rows: resuming clients of the reset row.
    pub fault_n: u32,
    /// Fault rows: paced broadcasts per second of the reset row.
    pub fault_rate: u32,
    /// Fault rows: length of the reset row, seconds (a round of resets each second).
    pub fault_secs: u32,
    /// Fault rows: share of the clients reset each second, percent.
    pub fault_reset_pct: u32,
    /// SSE rows: streams of the idle, broadcast, paced and resume rows.
    pub sse_n: u32,
    /// SSE rows: pushes of the broadcast row.
    pub sse_m: u32,
    /// SSE rows: pushes per second of the paced (latency) row: 5 × 10k streams, well below
    /// what 2 shared cores deliver (at 20 the server no longer keeps up and latency is queueing).
    pub sse_paced_rate: u32,
    /// SSE rows: length of the paced row, seconds.
    pub sse_paced_secs: u32,
    /// SSE rows: pushes per second of the resume row.
    pub sse_rate: u32,
    /// SSE rows: length of the resume row, seconds (a round of drops each second).
    pub sse_secs: u32,
    /// SSE rows: share of the streams dropped each second, percent.
    pub sse_drop_pct: u32,
    /// Arguments for `pushbench channel`.
    pub channel_args: Vec<String>,
    /// Stop starting new sessions after this long.
    pub budget: Duration,
}

impl Plan {
    /// The default set (about 18 minutes here, 2–3 of them the gateway rows).
    pub fn default_set() -> Plan {
        Plan {
            idle_small: 10_000,
            idle_one: 19_000,
            nodes_total: 60_000,
            nodes_bcast: 50_000,
            nodes_m: 20,
            bcast_n: 10_000,
            bcast_m: 200,
            small_n: 1_000,
            small_m: 200,
            paced_rate: 20,
            paced_secs: 3,
            targeted_p: 20_000,
            inflight: 16,
            rate_secs: 2.0,
            rate_conns: 32,
            repeats: 3,
            size: 64,
            slow_k: 10,
            slow_rate: 5,
            slow_secs: 6,
            slow_bytes_per_s: 2 << 20,
            gw_group_size: 1_000,
            gw_group_m: 400,
            dir_bindings: 100_000,
            pusher_n: 10_000,
            pusher_m: 200,
            pusher_subs: 10,
            pusher_publishes: 20_000,
            pusher_presence: 2_000,
            fault_n: 10_000,
            fault_rate: 10,
            fault_secs: 30,
            fault_reset_pct: 10,
            sse_n: 10_000,
            sse_m: 200,
            sse_paced_rate: 5,
            sse_paced_secs: 10,
            sse_rate: 10,
            sse_secs: 20,
            sse_drop_pct: 10,
            channel_args: vec!["--quick".into()],
            budget: Duration::from_secs(20 * 60),
        }
    }

    /// The quick set (under 4 minutes): smaller sizes, one run each.
    pub fn quick_set() -> Plan {
        Plan {
            idle_small: 2_000,
            idle_one: 5_000,
            nodes_total: 8_000,
            nodes_bcast: 6_000,
            nodes_m: 10,
            bcast_n: 2_000,
            bcast_m: 50,
            small_n: 1_000,
            small_m: 20,
            paced_rate: 20,
            paced_secs: 1,
            targeted_p: 4_000,
            inflight: 16,
            rate_secs: 1.0,
            rate_conns: 32,
            repeats: 1,
            size: 64,
            slow_k: 10,
            slow_rate: 20,
            slow_secs: 5,
            slow_bytes_per_s: 2 << 20,
            gw_group_size: 1_000,
            gw_group_m: 40,
            dir_bindings: 10_000,
            pusher_n: 2_000,
            pusher_m: 50,
            pusher_subs: 10,
            pusher_publishes: 5_000,
            pusher_presence: 1_000,
            fault_n: 2_000,
            fault_rate: 10,
            fault_secs: 10,
            fault_reset_pct: 10,
            sse_n: 2_000,
            sse_m: 50,
            sse_paced_rate: 5,
            sse_paced_secs: 4,
            sse_rate: 10,
            sse_secs: 5,
            sse_drop_pct: 10,
            channel_args: vec!["--quick".into(), "--events".into(), "30000".into()],
            budget: Duration::from_secs(210),
        }
    }
}

/// Command-line options of `pushbench all`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Sizes.
    pub plan: Plan,
    /// Whether `--quick` was given.
    pub quick: bool,
    /// Scenario groups to run: idle, one-node, nodes, broadcast, targeted, paced, publish,
    /// slow, gateway, dir-memory, channel, pusher, faults, sse.
    pub only: Vec<String>,
    /// Systems to run: werkmann, werkmann-before (needs `baseline`), nchan, nchan-redis
    /// (Nchan with its channels in Redis), socketio, soketi.
    pub systems: Vec<String>,
    /// werkmann modes to run: all, cluster, redis.
    pub modes: Vec<String>,
    /// Where to write the Markdown report (None: stdout only).
    pub out: Option<PathBuf>,
    /// Where the werkmann binaries are.
    pub bin_dir: PathBuf,
    /// Where an older build's werkmann binaries are (`--baseline`): werkmann runs a second
    /// time from there, as `werkmann-before`, next to each werkmann session.
    pub baseline: Option<PathBuf>,
    /// Where the peers' sources are.
    pub peers_dir: PathBuf,
    /// The command line, for the report.
    pub command: String,
    /// Keep the run directory (server logs, configurations) at the end.
    pub keep: bool,
}

/// The names `--systems` takes.
const SYSTEMS: [&str; 6] = [
    "werkmann",
    "werkmann-before",
    "nchan",
    "nchan-redis",
    "socketio",
    "soketi",
];

/// Groups the default run leaves out (`--only` names them).
const NOT_BY_DEFAULT: [&str; 5] = ["pusher", "faults", "sse", "metrics", "processes"];

const GROUPS: [&str; 16] = [
    "idle",
    "one-node",
    "nodes",
    "broadcast",
    "targeted",
    "paced",
    "publish",
    "slow",
    "gateway",
    "dir-memory",
    "channel",
    "pusher",
    "faults",
    "sse",
    "metrics",
    "processes",
];

/// Usage text.
pub const USAGE: &str = "\
Usage: pushbench [all] [--quick] [--out FILE] [--only LIST] [--systems LIST] [--modes LIST]
                 [--repeats N] [--budget SECS] [--baseline DIR] [--presence N]
                 [--sse-streams N] [--sse-pushes M]
  --quick          the small set (under 4 minutes), one run per row
  --out FILE       write the Markdown report there (scripts/bench: docs/benchmarks.md)
  --only LIST      scenario groups: idle,one-node,nodes,broadcast,targeted,paced,publish,slow,
                   gateway,dir-memory,channel,pusher,faults,sse,metrics,processes (gateway:
                   uid, targeted and group pushes through the directory on 4 nodes;
                   dir-memory: the directory's memory
                   per binding; pusher: werkmann's Pusher protocol next to Soketi; faults:
                   10k resuming clients under 10 pushes/s, 10 % of them reset every second
                   for 30 s — lost, duplicated, not recovered, resume p50/p99 — on each mode,
                   and broadcast 10k × 200 with history on next to off; sse: werkmann's
                   /sse next to Nchan's EventSource on 10k streams — idle KiB per stream,
                   broadcast × 200 per server CPU-s, paced latency p50/p99, and 10 % dropped
                   every second for 20 s resuming with Last-Event-ID — on each werkmann mode;
                   metrics: broadcast 10k × 200 on start_all with --metrics scraped every
                   second next to one without, runs alternating, on ÷ off; processes: one
                   start_ws --count 2 as threads next to --processes (cluster mode), and
                   start_all --count 2 next to start_all --count 2 --processes — idle KiB
                   per connection and conns/s, broadcast deliveries/s, CPU per delivery,
                   p50/p99, all-in-one's publish requests/s — a fresh server per run,
                   alternating, processes ÷ threads;
                   pusher, faults, sse, metrics and processes are not in the default run,
                   only when named)
  --systems LIST   werkmann,werkmann-before,nchan,nchan-redis,socketio,soketi (default: all but
                   werkmann-before and nchan-redis, Nchan with its channels in Redis;
                   --baseline adds werkmann-before to werkmann)
  --modes LIST     werkmann modes: all,cluster,redis (default: all three)
  --repeats N      runs of the rows reported as medians (default 3, --quick 1)
  --budget SECS    start no new session after this long (default 1200, --quick 210)
  --presence N     members of the Pusher presence row (default 2000, --quick 1000)
  --fault-clients N  resuming clients of the fault group's reset row (default 10000,
                   --quick 2000)
  --fault-secs S   length of the reset row, seconds (default 30, --quick 10)
  --fault-rate R   pushes per second of the reset row (default 10: at 20 the 2 cores here
                   no longer keep up, resumes take seconds and outrun the history)
  --sse-streams N  streams of the sse group's rows (default 10000, --quick 2000)
  --sse-pushes M   pushes of the sse group's broadcast row (default 200, --quick 50)
  --bin-dir DIR    werkmann binaries (default: next to pushbench)
  --baseline DIR   an older build's werkmann binaries (start_all, start_channel, start_ws,
                   start_http): werkmann runs a second time from there, as werkmann-before,
                   right after each werkmann session, and the report adds a table of every
                   werkmann row before and after with the ratio
  --peers DIR      peer sources (default: bench/peers of the source tree)
  --keep           keep the run directory (server logs and configurations)
";

/// Parse `pushbench all` options.
pub fn parse(args: &[String]) -> Result<Options> {
    let exe = std::env::current_exe()?;
    let mut o = Options {
        plan: Plan::default_set(),
        quick: false,
        only: GROUPS
            .iter()
            .filter(|g| !NOT_BY_DEFAULT.contains(g))
            .map(|s| s.to_string())
            .collect(),
        systems: ["werkmann", "nchan", "socketio", "soketi"]
            .map(String::from)
            .to_vec(),
        modes: vec!["all".into(), "cluster".into(), "redis".into()],
        out: None,
        bin_dir: exe.parent().map(PathBuf::from).unwrap_or_default(),
        baseline: None,
        peers_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/peers")),
        command: std::iter::once("pushbench".to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
        keep: false,
    };
    let (mut repeats, mut budget, mut systems, mut presence) = (None, None, None, None);
    let (mut fault_n, mut fault_secs, mut fault_rate) = (None, None, None);
    let (mut sse_n, mut sse_m) = (None, None);
    let mut args = Args::new(args, USAGE);
    let list = |v: &str| -> Vec<String> { v.split(',').map(|s| s.trim().to_string()).collect() };
    while let Some((name, inline)) = args.next_option() {
        let mut value = || args.value(&name, &inline);
        match name.as_str() {
            "all" => {}
            "--quick" => o.quick = true,
            "--out" => o.out = Some(PathBuf::from(value()?)),
            "--only" => o.only = list(&value()?),
            "--systems" => systems = Some(list(&value()?)),
            "--modes" => o.modes = list(&value()?),
            "--repeats" => repeats = Some(value()?.parse::<usize>().context("--repeats")?),
            "--presence" => presence = Some(value()?.parse::<u32>().context("--presence")?),
            "--fault-clients" => {
                fault_n = Some(value()?.parse::<u32>().context("--fault-clients")?)
            }
            "--fault-secs" => fault_secs = Some(value()?.parse::<u32>().context("--fault-secs")?),
            "--fault-rate" => fault_rate = Some(value()?.parse::<u32>().context("--fault-rate")?),
            "--sse-streams" => sse_n = Some(value()?.parse::<u32>().context("--sse-streams")?),
            "--sse-pushes" => sse_m = Some(value()?.parse::<u32>().context("--sse-pushes")?),
            "--budget" => budget = Some(value()?.parse::<u64>().context("--budget")?),
            "--bin-dir" => o.bin_dir = PathBuf::from(value()?),
            "--baseline" => o.baseline = Some(PathBuf::from(value()?)),
            "--peers" => o.peers_dir = PathBuf::from(value()?),
            "--keep" => o.keep = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if o.quick {
        o.plan = Plan::quick_set();
    }
    if let Some(r) = repeats {
        o.plan.repeats = r.max(1);
    }
    if let Some(b) = budget {
        o.plan.budget = Duration::from_secs(b);
    }
    if let Some(n) = presence {
        o.plan.pusher_presence = n.max(1);
    }
    if let Some(n) = fault_n {
        o.plan.fault_n = n.max(1);
    }
    if let Some(s) = fault_secs {
        o.plan.fault_secs = s.max(1);
    }
    if let Some(r) = fault_rate {
        o.plan.fault_rate = r.max(1);
    }
    if let Some(n) = sse_n {
        o.plan.sse_n = n.max(1);
    }
    if let Some(m) = sse_m {
        o.plan.sse_m = m.max(1);
    }
    for g in &o.only {
        if !GROUPS.contains(&g.as_str()) {
            bail!("--only: unknown group {g}\n{USAGE}");
        }
    }
    if let Some(s) = systems {
        o.systems = s;
    }
    let has = |o: &Options, s: &str| o.systems.iter().any(|x| x == s);
    if o.baseline.is_some() && has(&o, "werkmann") && !has(&o, "werkmann-before") {
        let at = o.systems.iter().position(|x| x == "werkmann").unwrap_or(0) + 1;
        o.systems.insert(at, "werkmann-before".into());
    }
    for s in &o.systems {
        if !SYSTEMS.contains(&s.as_str()) {
            bail!("--systems: unknown system {s}\n{USAGE}");
        }
    }
    if o.baseline.is_none() && has(&o, "werkmann-before") {
        bail!("--systems werkmann-before needs --baseline DIR\n{USAGE}");
    }
    Ok(o)
}

/// Idle-row figures: clients, KiB per connection, connections per second.
pub(crate) struct Idle {
    opened: u32,
    failed: u32,
    kib_per_conn: f64,
    rss_per_conn: f64,
    conns_per_s: f64,
    mem_kib: u64,
}

/// How the coordinator publishes during a phase.
pub enum Publish {
    /// `m` broadcasts back to back, `inflight` at a time.
    Burst { inflight: usize },
    /// `m` broadcasts, one every `1/rate` s.
    Paced { rate: u32 },
    /// `m` targeted pushes to these clients, `inflight` at a time.
    Targeted {
        inflight: usize,
        to: Arc<Vec<Address>>,
    },
    /// `m` directory sends through GatewayWorker's API, `inflight` at a time: push `i` is
    /// `POST /api/{method}` with `{param: "{names}{to[i]}", "message": …}` (a uid or group
    /// named by its number), and with `reached` its answer must be
    /// `{"reached": reached[i]}` (werkmann; the peer's API does not count).
    Directory {
        inflight: usize,
        method: &'static str,
        param: &'static str,
        names: &'static str,
        to: Arc<Vec<u32>>,
        reached: Option<Arc<Vec<u64>>>,
    },
}

/// One delivery phase's result.
pub(crate) struct Delivery {
    /// The first failed publish request, with how many failed.
    pub(crate) publish_error: Option<String>,
    pub(crate) expected: u64,
    pub(crate) received: u64,
    pub(crate) errors: Errors,
    pub(crate) secs: f64,
    pub(crate) server_cpu_ns: u64,
    pub(crate) gen_cpu_ns: u64,
    pub(crate) p: [Option<u64>; 3],
    pub(crate) max_ns: u64,
    /// Server-Sent Events whose id was not after the stream's previous one.
    pub(crate) out_of_order: u64,
}

/// The running suite.
pub struct Suite {
    pub(crate) opts: Options,
    pub(crate) env: Env,
    pub(crate) rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
    pub(crate) started: Instant,
    pub(crate) exe: PathBuf,
    pub(crate) gen_log: PathBuf,
}

impl Suite {
    pub(crate) fn want(&self, group: &str) -> bool {
        self.opts.only.iter().any(|g| g == group)
    }

    pub(crate) fn sys(&self, s: &str) -> bool {
        self.opts.systems.iter().any(|x| x == s)
    }

    pub(crate) fn mode(&self, m: &str) -> bool {
        self.opts.modes.iter().any(|x| x == m)
    }

    /// The werkmann builds to run, in the order each mode runs them: the baseline's
    /// (`werkmann-before`) right before the current one, so the two sessions of a mode are
    /// next to each other in time.
    pub(crate) fn builds(&self) -> Vec<Build> {
        let mut v = Vec::new();
        if self.sys("werkmann-before") {
            v.push(Build::Baseline);
        }
        if self.sys("werkmann") {
            v.push(Build::Current);
        }
        v
    }

    /// Each werkmann mode selected (2 WebSocket nodes in cluster and Redis modes) once per build,
    /// the two builds of a mode one after the other.
    pub(crate) fn setups_werkmann(&self) -> Vec<Setup> {
        let mut v = Vec::new();
        for mode in ["all", "cluster", "redis"] {
            if !self.mode(mode) {
                continue;
            }
            for build in self.builds() {
                v.push(match mode {
                    "all" => Setup::WerkmannAll { build },
                    "cluster" => Setup::WerkmannCluster { ws: 2, build },
                    _ => Setup::WerkmannRedis { ws: 2, build },
                });
            }
        }
        v
    }

    /// The main sessions' setups in the order they run: each werkmann mode once per build
    /// (the two builds of a mode one after the other), then the peers.
    fn setups_main(&self) -> Vec<Setup> {
        let mut v = self.setups_werkmann();
        v.extend(self.setups_nchan(2));
        if self.sys("socketio") {
            v.push(Setup::SocketIoAll);
            if self.mode("cluster") || self.mode("redis") {
                v.push(Setup::SocketIoCluster { ws: 2 });
            }
        }
        v
    }

    pub(crate) fn over_budget(&mut self, what: &str) -> bool {
        if self.started.elapsed() > self.opts.plan.budget {
            self.notes.push(format!(
                "skipped {what}: the time budget ({} s) was used up",
                self.opts.plan.budget.as_secs()
            ));
            true
        } else {
            false
        }
    }

    pub(crate) fn usable(&mut self, s: Setup) -> bool {
        match self.env.check(s) {
            Ok(()) => true,
            Err(e) => {
                let note = format!("skipped {} ({}): {e:#}", s.system(), s.mode());
                eprintln!("pushbench: {note}");
                if !self.notes.contains(&note) {
                    self.notes.push(note);
                }
                false
            }
        }
    }

    pub(crate) async fn start(&self, s: Setup, label: &str) -> Result<Running> {
        eprintln!(
            "pushbench: [{:>4.0} s] starting {} ({})",
            self.started.elapsed().as_secs_f64(),
            s.system(),
            s.mode()
        );
        Running::start(&self.env, s, label).await
    }

    pub(crate) async fn gen(&self, clients: u32) -> Result<Gen> {
        let k = clients.div_ceil(MAX_PER_WORKER - 4_000).max(1) as usize;
        Gen::spawn(k, &self.exe, &self.gen_log).await
    }

    /// Open `n` clients, wait until each has a warm-up push, let the server settle, and read
    /// its memory before and after.
    pub(crate) async fn idle(
        &mut self,
        sys: &mut Running,
        gen: &mut Gen,
        conn: &mut Conn,
        n: u32,
    ) -> Result<Idle> {
        let (flavor, targets) = (sys.setup.flavor(), sys.ws.clone());
        self.idle_as(sys, gen, conn, n, flavor, &targets).await
    }

    /// [`Suite::idle`] with clients of `flavor` at `targets` (the SSE rows' streams on the
    /// publisher's port); the warm-up goes through `sys.api`.
    pub(crate) async fn idle_as(
        &mut self,
        sys: &mut Running,
        gen: &mut Gen,
        conn: &mut Conn,
        n: u32,
        flavor: Flavor,
        targets: &[std::net::SocketAddr],
    ) -> Result<Idle> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (mem0, rss0) = (sys.mem_kib(), sys.rss_kib());
        let opened = gen.open(flavor, targets, n).await?;
        if opened.failed > 0 {
            self.notes.push(format!(
                "{} ({}): {} of {n} clients failed to open: {}",
                sys.setup.system(),
                sys.setup.mode(),
                opened.failed,
                opened.first_error.clone().unwrap_or_default()
            ));
        }
        sys.check_alive()?;
        let live = gen.live.len() as u64;
        warm(gen, &sys.api, conn, live).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (mem1, rss1) = (sys.mem_kib(), sys.rss_kib());
        Ok(Idle {
            opened: opened.opened,
            failed: opened.failed,
            kib_per_conn: mem1.saturating_sub(mem0) as f64 / opened.opened.max(1) as f64,
            rss_per_conn: rss1.saturating_sub(rss0) as f64 / opened.opened.max(1) as f64,
            conns_per_s: opened.opened as f64 / opened.secs,
            mem_kib: mem1,
        })
    }

    pub(crate) fn idle_row(&self, label: &str, setup: Setup, i: &Idle) -> Row {
        let mut r = Row::new(Scenario::Idle, label, setup);
        r.set("clients", i.opened as f64);
        r.set("kib_per_conn", i.kib_per_conn);
        r.set("rss_per_conn", i.rss_per_conn);
        r.set("conns_per_s", i.conns_per_s);
        r.set("mem_mib", i.mem_kib as f64 / 1024.0);
        r.errors.open_failed = i.failed as u64;
        r
    }

    /// One delivery phase: start it in the workers, publish, wait for the deliveries,
    /// collect counters, CPU and latencies.
    pub(crate) async fn deliver(
        &mut self,
        sys: &Running,
        gen: &mut Gen,
        conns: &mut Vec<Conn>,
        kind: Kind,
        m: u32,
        how: Publish,
    ) -> Result<Delivery> {
        self.deliver_to(sys, gen, conns, kind, m, 1, None, how)
            .await
    }

    /// [`Suite::deliver`] for any kind: `per` clients per uid or group (uid and group
    /// phases), and the deliveries due when the kind does not say (uid and group phases).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn deliver_to(
        &mut self,
        sys: &Running,
        gen: &mut Gen,
        conns: &mut Vec<Conn>,
        kind: Kind,
        m: u32,
        per: u32,
        due: Option<u64>,
        how: Publish,
    ) -> Result<Delivery> {
        let clients = gen.live.len() as u64;
        let expected = match (kind, due) {
            (_, Some(due)) => due,
            (Kind::Targeted, None) => m as u64,
            (Kind::Uid, None) => m as u64 * per as u64,
            _ => clients * m as u64,
        };
        let phase = gen.phase_per(kind, m, per).await?;
        let gen_pids = gen.pids();
        let gen_cpu = || -> u64 {
            gen_pids.iter().map(|p| procfs::cpu_ns(*p)).sum::<u64>()
                + procfs::cpu_ns(std::process::id())
        };
        let cpu0 = sys.cpu_ns();
        let g0 = gen_cpu();
        let t0 = mono_ns();
        let size = self.opts.plan.size;
        let sent = publish_checked(sys.api, conns, phase, kind, m, size, how).await?;
        let cap = Duration::from_secs(if self.opts.quick { 30 } else { 120 });
        gen.wait_received(expected, Duration::from_secs(10), cap)
            .await?;
        let cpu1 = sys.cpu_ns();
        let g1 = gen_cpu();
        let rep = gen.report().await?;
        let received = rep.progress.received;
        let missing = match kind {
            Kind::Targeted => sent.ok.saturating_sub(received) + (m as u64 - sent.ok),
            Kind::Uid | Kind::Group => expected.saturating_sub(received),
            _ => rep.missing,
        };
        let last = if rep.progress.last_ns > 0 {
            rep.progress.last_ns
        } else {
            mono_ns()
        };
        Ok(Delivery {
            publish_error: sent.first.map(|e| {
                format!(
                    "{} publish requests failed, {} answered otherwise than due: {e}",
                    sent.failed, sent.unexpected
                )
            }),
            expected,
            received,
            errors: Errors {
                missing,
                dup: rep.progress.dup,
                wrong: rep.progress.wrong,
                stray: rep.progress.stray,
                bad: rep.progress.bad + rep.progress.out_of_order,
                http: sent.failed,
                answer: sent.unexpected,
                open_failed: 0,
            },
            secs: last.saturating_sub(t0) as f64 / 1e9,
            server_cpu_ns: cpu1.saturating_sub(cpu0),
            gen_cpu_ns: g1.saturating_sub(g0),
            p: [
                rep.hist.quantile_ns(0.5),
                rep.hist.quantile_ns(0.9),
                rep.hist.quantile_ns(0.99),
            ],
            max_ns: rep.hist.max_ns(),
            out_of_order: rep.progress.out_of_order,
        })
    }

    pub(crate) fn delivery_row(
        &self,
        sc: Scenario,
        label: &str,
        setup: Setup,
        d: &Delivery,
    ) -> Row {
        let mut r = Row::new(sc, label, setup);
        r.set("expected", d.expected as f64);
        r.set("received", d.received as f64);
        r.set("secs", d.secs);
        let rate_key = if matches!(sc, Scenario::Targeted | Scenario::Uid) {
            "pushes_per_s"
        } else {
            "deliveries_per_s"
        };
        if d.secs > 0.0 {
            r.set(rate_key, d.received as f64 / d.secs);
        }
        if d.received > 0 {
            r.set("cpu_us", d.server_cpu_ns as f64 / 1e3 / d.received as f64);
        }
        if d.server_cpu_ns > 0 {
            r.set(
                "per_cpu_s",
                d.received as f64 / (d.server_cpu_ns as f64 / 1e9),
            );
        }
        r.set("server_cpu_s", d.server_cpu_ns as f64 / 1e9);
        r.set("gen_cpu_s", d.gen_cpu_ns as f64 / 1e9);
        for (k, v) in ["p50_ms", "p90_ms", "p99_ms"].iter().zip(d.p) {
            if let Some(v) = v {
                r.set(k, v as f64 / 1e6);
            }
        }
        if d.received > 0 {
            r.set("max_ms", d.max_ns as f64 / 1e6);
        }
        if sc == Scenario::Sse {
            r.set("out_of_order", d.out_of_order as f64);
        }
        r.errors = d.errors.clone();
        r.notes.extend(d.publish_error.clone());
        r
    }

    /// Repeat a delivery phase `repeats` times and keep the median row.
    #[allow(clippy::too_many_arguments)]
    async fn delivery_rows(
        &mut self,
        sys: &Running,
        gen: &mut Gen,
        conns: &mut Vec<Conn>,
        sc: Scenario,
        label: &str,
        m: u32,
        repeats: usize,
    ) -> Result<()> {
        let mut runs = Vec::new();
        for _ in 0..repeats {
            let inflight = self.opts.plan.inflight;
            let (kind, how) = match sc {
                Scenario::Broadcast => (Kind::Broadcast, Publish::Burst { inflight }),
                Scenario::Paced => (
                    Kind::Broadcast,
                    Publish::Paced {
                        rate: self.opts.plan.paced_rate,
                    },
                ),
                _ => {
                    let mut rng = rand::rng();
                    let live = &gen.live;
                    let to: Vec<Address> = (0..m)
                        .map(|_| live[rng.random_range(0..live.len())].1.clone())
                        .collect();
                    (
                        Kind::Targeted,
                        Publish::Targeted {
                            inflight,
                            to: Arc::new(to),
                        },
                    )
                }
            };
            let d = self.deliver(sys, gen, conns, kind, m, how).await?;
            runs.push(self.delivery_row(sc, label, sys.setup, &d));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Some(r) = row::median(runs) {
            self.push(r);
        }
        Ok(())
    }

    /// Nchan with `workers` nginx workers as selected: in memory (`nchan`), on Redis
    /// (`nchan-redis`).
    fn setups_nchan(&self, workers: usize) -> Vec<Setup> {
        [("nchan", false), ("nchan-redis", true)]
            .into_iter()
            .filter(|(name, _)| self.sys(name))
            .map(|(_, redis)| Setup::Nchan { workers, redis })
            .collect()
    }

    /// Replace the rows of `setup` labelled `label` pushed since row `from` by their median.
    pub(crate) fn median_since(&mut self, from: usize, label: &str, setup: Setup) {
        let (runs, rest): (Vec<Row>, Vec<Row>) = self.rows.drain(from..).partition(|r| {
            r.label == label && r.system == setup.system() && r.mode == setup.mode()
        });
        self.rows.extend(rest);
        if let Some(m) = row::median(runs) {
            self.push(m);
        }
    }

    pub(crate) fn push(&mut self, r: Row) {
        eprintln!(
            "pushbench: [{:>4.0} s] {} | {} ({}) | {}",
            self.started.elapsed().as_secs_f64(),
            r.label,
            r.system,
            r.mode,
            report::brief(&r)
        );
        self.rows.push(r);
    }

    /// The main session of a setup: the publish rate (on the fresh server), idle 10k,
    /// broadcast and targeted on them, then the small broadcast and the paced row.
    async fn session_main(&mut self, setup: Setup) -> Result<()> {
        let p = self.opts.plan.clone();
        let mut sys = self.start(setup, "main").await?;
        let mut conn = Conn::connect(sys.api.addr).await?;
        let mut conns = Vec::new();
        for _ in 0..p.inflight.max(1) {
            conns.push(Conn::connect(sys.api.addr).await?);
        }
        if self.want("publish") {
            // First, on the fresh server: nobody subscribed, nothing being cleaned up.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut runs = Vec::new();
            for _ in 0..p.repeats {
                runs.push(self.publish_rate(&sys).await?);
            }
            if let Some(r) = row::median(runs) {
                self.push(r);
            }
        }
        let big = self.want("idle")
            || self.want("broadcast")
            || self.want("targeted")
            || self.want("slow");
        if big {
            let mut gen = self.gen(p.bcast_n).await?;
            let i = self.idle(&mut sys, &mut gen, &mut conn, p.bcast_n).await?;
            if self.want("idle") {
                let row = self.idle_row(&format!("idle {}", k(p.bcast_n)), setup, &i);
                self.push(row);
            }
            if self.want("broadcast") {
                let label = format!("broadcast {} × {}", k(p.bcast_n), p.bcast_m);
                self.delivery_rows(
                    &sys,
                    &mut gen,
                    &mut conns,
                    Scenario::Broadcast,
                    &label,
                    p.bcast_m,
                    p.repeats,
                )
                .await?;
            }
            if self.want("targeted") {
                let label = format!(
                    "targeted {} clients, {} in flight",
                    k(p.bcast_n),
                    p.inflight
                );
                self.delivery_rows(
                    &sys,
                    &mut gen,
                    &mut conns,
                    Scenario::Targeted,
                    &label,
                    p.targeted_p,
                    p.repeats,
                )
                .await?;
            }
            if self.want("slow") {
                self.slow_row(&sys, &mut gen, &mut conns).await?;
            }
            sys.check_alive()?;
            gen.quit().await;
        }
        if self.want("broadcast") || self.want("paced") {
            let mut gen = self.gen(p.small_n).await?;
            let opened = gen.open(setup.flavor(), &sys.ws.clone(), p.small_n).await?;
            if opened.failed > 0 {
                bail!(
                    "{} of {} clients failed to open: {}",
                    opened.failed,
                    p.small_n,
                    opened.first_error.unwrap_or_default()
                );
            }
            let live = gen.live.len() as u64;
            warm(&mut gen, &sys.api, &mut conn, live).await?;
            if self.want("broadcast") {
                let label = format!("broadcast {} × {}", k(p.small_n), p.small_m);
                self.delivery_rows(
                    &sys,
                    &mut gen,
                    &mut conns,
                    Scenario::Broadcast,
                    &label,
                    p.small_m,
                    1,
                )
                .await?;
            }
            if self.want("paced") {
                let label = format!(
                    "paced {} × {}/s for {} s",
                    k(p.small_n),
                    p.paced_rate,
                    p.paced_secs
                );
                let m = p.paced_rate * p.paced_secs;
                self.delivery_rows(
                    &sys,
                    &mut gen,
                    &mut conns,
                    Scenario::Paced,
                    &label,
                    m,
                    p.repeats,
                )
                .await?;
            }
            gen.quit().await;
        }
        sys.check_alive()?;
        sys.stop();
        Ok(())
    }

    /// The slow-client row on the `bcast_n` open clients (see `slow.rs`).
    async fn slow_row(
        &mut self,
        sys: &Running,
        gen: &mut Gen,
        conns: &mut Vec<Conn>,
    ) -> Result<()> {
        let p = self.opts.plan.clone();
        let label = format!(
            "slow clients: {} others × {}/s, {} never read",
            k(p.bcast_n),
            p.slow_rate,
            p.slow_k
        );
        let mut runs = Vec::new();
        for _ in 0..p.repeats {
            let mut heavy = Gen::spawn(1, &self.exe, &self.gen_log).await?;
            let r = slow::row(sys, gen, &mut heavy, conns, &p, &label).await;
            heavy.quit().await;
            match r {
                Ok(r) => runs.push(r),
                // The rest of the session goes on without this row.
                Err(e) => {
                    let what = format!("{} ({}) {label}", sys.setup.system(), sys.setup.mode());
                    eprintln!("pushbench: {what} failed: {e:#}");
                    self.notes.push(format!("{what} failed: {e:#}"));
                    return Ok(());
                }
            }
        }
        if let Some(r) = row::median(runs) {
            self.push(r);
        }
        Ok(())
    }

    /// HTTP publish requests per second: `rate_conns` keep-alive connections, each sending
    /// a broadcast (to no client) as soon as the previous one is answered.
    pub(crate) async fn publish_rate(&mut self, sys: &Running) -> Result<Row> {
        let p = &self.opts.plan;
        let mut conns = Vec::new();
        for _ in 0..p.rate_conns {
            conns.push(Conn::connect(sys.api.addr).await?);
        }
        let req = Arc::new(sys.api.broadcast(&"x".repeat(p.size)));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(Mutex::new(None::<String>));
        let cpu0 = sys.cpu_ns();
        let roles0 = sys.cpu_ns_by_role();
        let gen0 = procfs::cpu_ns(std::process::id());
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(p.rate_secs);
        let mut tasks = Vec::new();
        for mut c in conns {
            let (req, ok, failed, first_error) =
                (req.clone(), ok.clone(), failed.clone(), first_error.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let r = c.roundtrip(&req).await;
                    let refused = r.is_err();
                    record_answer(r, &ok, &failed, &first_error);
                    if refused {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = sys.cpu_ns().saturating_sub(cpu0);
        let roles1 = sys.cpu_ns_by_role();
        let gen_cpu = procfs::cpu_ns(std::process::id()).saturating_sub(gen0);
        let ok = ok.load(Ordering::Relaxed);
        let mut r = Row::new(
            Scenario::Publish,
            &format!("publish, {} keep-alive connections", p.rate_conns),
            sys.setup,
        );
        r.set("req_per_s", ok as f64 / secs);
        r.set("requests", ok as f64);
        if ok > 0 {
            r.set("cpu_us", cpu as f64 / 1e3 / ok as f64);
            r.set("gen_cpu_us", gen_cpu as f64 / 1e3 / ok as f64);
            if !sys.setup.is_peer() {
                // Where a werkmann request's CPU goes (the publisher, the channel server or
                // Redis, the nodes): the JSON's figures, quoted where a row is explained.
                crate::gateway::set_cpu_by_role(&mut r, roles0, roles1, ok as u32);
            }
        }
        r.errors.http = failed.load(Ordering::Relaxed);
        if let Some(e) = first_error.lock().expect("error").take() {
            r.notes.push(format!("first failed request: {e}"));
        }
        Ok(r)
    }

    /// The one-node memory row: `repeats` fresh starts with `idle_one` clients each.
    async fn session_one_node(&mut self, setup: Setup) -> Result<()> {
        let p = self.opts.plan.clone();
        let mut runs = Vec::new();
        for _ in 0..p.repeats {
            let mut sys = self.start(setup, "one-node").await?;
            let mut conn = Conn::connect(sys.api.addr).await?;
            let mut gen = self.gen(p.idle_one).await?;
            let i = self.idle(&mut sys, &mut gen, &mut conn, p.idle_one).await?;
            runs.push(self.idle_row(&format!("idle {} (one node)", k(p.idle_one)), setup, &i));
            gen.quit().await;
            sys.check_alive()?;
            sys.stop();
        }
        if let Some(r) = row::median(runs) {
            self.push(r);
        }
        Ok(())
    }

    /// Across 4 nodes: `nodes_total` idle clients, then (with `broadcast`) a broadcast to
    /// `nodes_bcast` of them.
    async fn session_nodes(&mut self, setup: Setup, idle: bool, broadcast: bool) -> Result<()> {
        let p = self.opts.plan.clone();
        let mut sys = self.start(setup, "nodes").await?;
        let mut conn = Conn::connect(sys.api.addr).await?;
        let mut conns = Vec::new();
        for _ in 0..p.inflight.max(1) {
            conns.push(Conn::connect(sys.api.addr).await?);
        }
        let total = if idle { p.nodes_total } else { p.nodes_bcast };
        let mut gen = self.gen(total).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (mem0, rss0) = (sys.mem_kib(), sys.rss_kib());
        let a = gen
            .open(setup.flavor(), &sys.ws.clone(), p.nodes_bcast)
            .await?;
        let mut secs = a.secs;
        let mut failed = a.failed;
        let mut first_error = a.first_error.clone();
        let mut extra = None;
        if total > p.nodes_bcast {
            let b = gen
                .open(setup.flavor(), &sys.ws.clone(), total - p.nodes_bcast)
                .await?;
            secs += b.secs;
            failed += b.failed;
            if first_error.is_none() {
                first_error = b.first_error.clone();
            }
            extra = Some(b.group);
        }
        sys.check_alive()?;
        let live = gen.live.len() as u64;
        warm(&mut gen, &sys.api, &mut conn, live).await?;
        if idle && self.want("nodes") {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (mem1, rss1) = (sys.mem_kib(), sys.rss_kib());
            let i = Idle {
                opened: live as u32,
                failed,
                kib_per_conn: mem1.saturating_sub(mem0) as f64 / live.max(1) as f64,
                rss_per_conn: rss1.saturating_sub(rss0) as f64 / live.max(1) as f64,
                conns_per_s: live as f64 / secs,
                mem_kib: mem1,
            };
            let mut row = self.idle_row(&idle_nodes_label(total), setup, &i);
            if let Some(e) = first_error {
                row.notes.push(format!("first open failure: {e}"));
            }
            self.push(row);
        }
        if broadcast {
            if let Some(g) = extra {
                gen.close(g).await?;
                let live = gen.live.len() as u64;
                warm(&mut gen, &sys.api, &mut conn, live).await?;
            }
            let label = format!(
                "broadcast {} × {} across 4 nodes",
                k(p.nodes_bcast),
                p.nodes_m
            );
            self.delivery_rows(
                &sys,
                &mut gen,
                &mut conns,
                Scenario::Broadcast,
                &label,
                p.nodes_m,
                1,
            )
            .await?;
        }
        gen.quit().await;
        sys.check_alive()?;
        sys.stop();
        Ok(())
    }

    /// `pushbench channel` (the channel server's events/s) on a build's `start_channel`, its
    /// table kept as it prints it.
    async fn channel(&mut self, build: Build) -> Option<String> {
        let dir = match self.env.werkmann_dir(build) {
            Ok(d) => d.to_path_buf(),
            Err(e) => {
                self.notes.push(format!("skipped the channel row: {e:#}"));
                return None;
            }
        };
        let server = dir.join("start_channel");
        if !server.exists() {
            self.notes.push(format!(
                "skipped the channel row: {} missing",
                server.display()
            ));
            return None;
        }
        eprintln!(
            "pushbench: [{:>4.0} s] pushbench channel {} --bin-dir {}",
            self.started.elapsed().as_secs_f64(),
            self.opts.plan.channel_args.join(" "),
            dir.display()
        );
        let out = tokio::process::Command::new(&self.exe)
            .arg("channel")
            .args(&self.opts.plan.channel_args)
            .arg("--bin-dir")
            .arg(&dir)
            .env("BENCH_RUST_LOG", "warn")
            .kill_on_drop(true)
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).to_string()),
            Ok(o) => {
                self.notes.push(format!(
                    "pushbench channel failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                self.notes.push(format!("pushbench channel: {e}"));
                None
            }
        }
    }

    /// Run a session, recording a failure as a note (the suite goes on).
    pub(crate) async fn guarded(&mut self, what: String, r: Result<()>) {
        if let Err(e) = r {
            eprintln!("pushbench: {what} failed: {e:#}");
            let first = format!("{e:#}");
            let first = first.lines().next().unwrap_or("").to_string();
            self.notes.push(format!("{what} failed: {first}"));
        }
    }

    /// `repeats` sessions of each setup on a fresh server, and each row's median: the setups
    /// of each of `groups` in turn, each group in its order on even runs and reversed on odd
    /// ones (neither side always first). `name` starts the budget's and failures' notes.
    pub(crate) async fn alternating(
        &mut self,
        name: &str,
        groups: &[Vec<Setup>],
        mut session: impl AsyncFnMut(&mut Self, Setup) -> Result<Vec<Row>>,
    ) {
        // (setup, label) → the runs of that row, in the order they first came.
        let mut rows: Vec<(Setup, String, Vec<Row>)> = Vec::new();
        'runs: for run in 0..self.opts.plan.repeats {
            let mut order = Vec::new();
            for group in groups {
                let mut group = group.clone();
                if run % 2 == 1 {
                    group.reverse();
                }
                order.extend(group);
            }
            for s in order {
                let what = format!("{name}, {} ({}), run {}", s.system(), s.mode(), run + 1);
                if self.over_budget(&what) {
                    break 'runs;
                }
                match session(self, s).await {
                    Ok(rs) => {
                        for r in rs {
                            eprintln!(
                                "pushbench:        run {} | {} | {} ({}) | {}",
                                run + 1,
                                r.label,
                                r.system,
                                r.mode,
                                report::brief(&r)
                            );
                            match rows.iter_mut().find(|(x, l, _)| *x == s && *l == r.label) {
                                Some((_, _, v)) => v.push(r),
                                None => rows.push((s, r.label.clone(), vec![r])),
                            }
                        }
                    }
                    Err(e) => self.guarded(what, Err(e)).await,
                }
            }
        }
        for (_, _, runs) in rows {
            if let Some(r) = row::median(runs) {
                self.push(r);
            }
        }
    }
}

/// Publish a phase's pushes; returns (answered 2xx, failed, first failure). An answer that
/// is 2xx but not what the API must answer (directory sends: `{"reached": N}`) counts as
/// failed; [`publish_checked`] counts those apart.
pub async fn publish(
    api: Api,
    conns: &mut Vec<Conn>,
    phase: u32,
    kind: Kind,
    m: u32,
    size: usize,
    how: Publish,
) -> Result<(u64, u64, Option<String>)> {
    let s = publish_checked(api, conns, phase, kind, m, size, how).await?;
    Ok((s.ok, s.failed + s.unexpected, s.first))
}

/// Publish requests' outcome.
#[derive(Debug, Default)]
pub struct Sent {
    /// Answered 2xx (as expected, where an answer is checked).
    pub ok: u64,
    /// Not answered 2xx.
    pub failed: u64,
    /// Answered 2xx, but not as the API must answer.
    pub unexpected: u64,
    /// The first failure or unexpected answer.
    pub first: Option<String>,
}

/// [`publish`], with answers that are 2xx but not as expected counted apart.
pub async fn publish_checked(
    api: Api,
    conns: &mut Vec<Conn>,
    phase: u32,
    kind: Kind,
    m: u32,
    size: usize,
    how: Publish,
) -> Result<Sent> {
    let (n, pace) = match &how {
        Publish::Paced { rate } => (1, Some((tokio::time::Instant::now(), *rate))),
        Publish::Burst { inflight }
        | Publish::Targeted { inflight, .. }
        | Publish::Directory { inflight, .. } => (
            (*inflight).clamp(1, conns.len().max(1)).min(m as usize),
            None,
        ),
    };
    let (make, check): (Request, Option<Check>) = match how {
        Publish::Targeted { to, .. } => (
            Arc::new(move |seq| {
                let a = &to[seq as usize];
                api.targeted(a, &payload(phase, kind, seq, a.idx, mono_ns(), size))
            }),
            None,
        ),
        Publish::Directory {
            method,
            param,
            names,
            to,
            reached,
            ..
        } => {
            let check: Option<Check> = reached.map(|r| -> Check {
                Arc::new(move |seq, body| {
                    let want = r[seq as usize];
                    // The compact form werkmann writes, else any JSON spelling of it.
                    body == format!("{{\"reached\":{want}}}")
                        || serde_json::from_str::<serde_json::Value>(body).ok()
                            == Some(serde_json::json!({ "reached": want }))
                })
            });
            let make: Request = Arc::new(move |seq| {
                let t = to[seq as usize];
                let content = payload(phase, kind, seq, t, mono_ns(), size);
                // Written directly, as the targeted row's query is: the generator's cost is
                // not the system's.
                let message = serde_json::to_string(&content).expect("a string serializes");
                let body = format!("{{\"{param}\":\"{names}{t}\",\"message\":{message}}}");
                api.call_json(method, &body)
            });
            (make, check)
        }
        _ => (
            Arc::new(move |seq| api.broadcast(&payload(phase, kind, seq, 0, mono_ns(), size))),
            None,
        ),
    };
    if conns.is_empty() {
        bail!("no publisher connection");
    }
    let mut used: Vec<Conn> = conns.drain(..n.min(conns.len())).collect();
    let r = send_checked(&mut used, m, pace, make, check).await;
    conns.extend(used);
    r
}

/// Builds request `i` of a run of publish requests.
pub type Request = Arc<dyn Fn(u32) -> Vec<u8> + Send + Sync>;

/// Whether request `i`'s 2xx answer (its body's first 200 bytes) is as expected.
pub type Check = Arc<dyn Fn(u32, &str) -> bool + Send + Sync>;

/// Send requests `0..count` (built by `make` as each leaves) over `conns`, each keep-alive
/// connection one request at a time, so `conns.len()` are in flight. With a `pace` (start,
/// rate/s), request `i` leaves no earlier than `start + i / rate`; late ones catch up, and
/// several connections keep one slow answer from holding the schedule back. Returns (answered
/// 2xx, failed, first failure); the connections are handed back in `conns`.
pub async fn send_requests(
    conns: &mut Vec<Conn>,
    count: u32,
    pace: Option<(tokio::time::Instant, u32)>,
    make: Request,
) -> Result<(u64, u64, Option<String>)> {
    let s = send_checked(conns, count, pace, make, None).await?;
    Ok((s.ok, s.failed, s.first))
}

/// [`send_requests`], each 2xx answer checked with `check`.
pub async fn send_checked(
    conns: &mut Vec<Conn>,
    count: u32,
    pace: Option<(tokio::time::Instant, u32)>,
    make: Request,
    check: Option<Check>,
) -> Result<Sent> {
    let next = Arc::new(AtomicU32::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let unexpected = Arc::new(AtomicU64::new(0));
    let first = Arc::new(Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for mut c in conns.drain(..) {
        let (next, ok, failed, unexpected, first, make, check) = (
            next.clone(),
            ok.clone(),
            failed.clone(),
            unexpected.clone(),
            first.clone(),
            make.clone(),
            check.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                if let Some((base, rate)) = pace {
                    let at = base + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
                    tokio::time::sleep_until(at).await;
                }
                match (c.roundtrip(&make(i)).await, &check) {
                    (Ok((s, body)), Some(check)) if (200..300).contains(&s) && !check(i, &body) => {
                        unexpected.fetch_add(1, Ordering::Relaxed);
                        first
                            .lock()
                            .expect("error")
                            .get_or_insert(format!("answered {s} {}", body.trim()));
                    }
                    (r, _) => record_answer(r, &ok, &failed, &first),
                }
            }
            c
        }));
    }
    for t in tasks {
        conns.push(t.await?);
    }
    let e = first.lock().expect("error").take();
    Ok(Sent {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        unexpected: unexpected.load(Ordering::Relaxed),
        first: e,
    })
}

/// Count one publish answer: 2xx is ok; anything else is a failure, the first one kept.
pub fn record_answer(
    r: Result<(u16, String)>,
    ok: &AtomicU64,
    failed: &AtomicU64,
    first: &Mutex<Option<String>>,
) {
    match r {
        Ok((s, _)) if (200..300).contains(&s) => {
            ok.fetch_add(1, Ordering::Relaxed);
        }
        Ok((s, body)) => {
            failed.fetch_add(1, Ordering::Relaxed);
            first
                .lock()
                .expect("error")
                .get_or_insert(format!("{s} {}", body.trim()));
        }
        Err(e) => {
            failed.fetch_add(1, Ordering::Relaxed);
            first.lock().expect("error").get_or_insert(format!("{e:#}"));
        }
    }
}

/// Broadcast warm-up pushes until every one of `expected` clients has seen one (the
/// subscriptions are in place), at most 30 s.
pub async fn warm(gen: &mut Gen, api: &Api, conn: &mut Conn, expected: u64) -> Result<()> {
    let phase = gen.phase(Kind::Warm, 1).await?;
    let send = async || {
        let req = api.broadcast(&payload(phase, Kind::Warm, 0, 0, mono_ns(), 32));
        let _ = conn.roundtrip(&req).await;
        Ok(())
    };
    warm_until(gen, expected, "broadcast", Duration::ZERO, send).await
}

/// Run `send` (a round of warm-up pushes of this phase) until `expected` clients have seen one,
/// at most 30 s. Another round only when the last one stopped making progress — the count
/// did not move for longer than `stall` (a broadcast to 60k slow clients may take a while;
/// piling rounds up would only slow it down). `what` names the pushes in the error.
pub async fn warm_until(
    gen: &mut Gen,
    expected: u64,
    what: &str,
    stall: Duration,
    mut send: impl AsyncFnMut() -> Result<()>,
) -> Result<()> {
    let start = Instant::now();
    let mut seen = 0;
    while start.elapsed() < Duration::from_secs(30) {
        send().await?;
        let mut last_change = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = gen.warm_count().await?;
            if now >= expected {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(());
            }
            if now != seen {
                seen = now;
                last_change = Instant::now();
            } else if last_change.elapsed() > stall || start.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
    }
    bail!("only {seen} of {expected} clients got a warm-up {what} within 30 s")
}

/// The 4-node idle row's label, for `total` clients.
fn idle_nodes_label(total: u32) -> String {
    format!("idle {} across 4 nodes", k(total))
}

/// `10000` → `10k`.
pub fn k(n: u32) -> String {
    if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Run the whole suite and write the report.
pub async fn main(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    let run_dir = std::env::temp_dir().join(format!("pushbench-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    let env = Env {
        bin_dir: opts.bin_dir.clone(),
        baseline_dir: opts.baseline.clone(),
        peers_dir: opts.peers_dir.clone(),
        run_dir: run_dir.clone(),
    };
    let mut suite = Suite {
        env,
        rows: Vec::new(),
        notes: Vec::new(),
        started: Instant::now(),
        exe: std::env::current_exe()?,
        gen_log: run_dir.join("generator.log"),
        opts,
    };
    let date = report::now_utc();
    let result = tokio::select! {
        r = run_all(&mut suite) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let (channel, channel_before) = match result {
        Ok(c) => c,
        Err(e) => {
            suite.notes.push(format!("the run stopped: {e:#}"));
            (None, None)
        }
    };
    let results = Results {
        date,
        secs: suite.started.elapsed().as_secs_f64(),
        command: suite.opts.command.clone(),
        quick: suite.opts.quick,
        plan: suite.opts.plan.clone(),
        rows: suite.rows.clone(),
        notes: suite.notes.clone(),
        channel,
        channel_before,
    };
    let md = report::markdown(&results);
    if let Some(out) = &suite.opts.out {
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("pushbench: wrote {}", out.display());
        let json_path = std::env::temp_dir().join("pushbench-last.json");
        std::fs::write(&json_path, serde_json::to_string_pretty(&results.rows)?)?;
        eprintln!("pushbench: every row as JSON in {}", json_path.display());
    } else {
        println!("{md}");
    }
    if suite.opts.keep {
        eprintln!("pushbench: logs kept in {}", run_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(())
}

/// Every session of the suite; returns `pushbench channel`'s output for the current build and
/// for the baseline (with `--baseline`).
async fn run_all(suite: &mut Suite) -> Result<(Option<String>, Option<String>)> {
    let setups = suite.setups_main();
    let any = ["idle", "broadcast", "targeted", "paced", "publish", "slow"]
        .iter()
        .any(|g| suite.want(g));
    for s in setups.clone() {
        if !any || !suite.usable(s) || suite.over_budget(&format!("{} ({})", s.system(), s.mode()))
        {
            continue;
        }
        let r = suite.session_main(s).await;
        suite
            .guarded(format!("{} ({}) main session", s.system(), s.mode()), r)
            .await;
    }
    if suite.want("one-node") {
        for s in setups.iter().copied().filter(|s| {
            s.nodes() <= 2
                && !matches!(
                    s,
                    Setup::WerkmannCluster { .. }
                        | Setup::WerkmannRedis { .. }
                        | Setup::SocketIoCluster { .. }
                )
        }) {
            if !suite.usable(s) || suite.over_budget(&format!("idle one node, {}", s.system())) {
                continue;
            }
            let r = suite.session_one_node(s).await;
            suite
                .guarded(format!("{} ({}) one-node idle", s.system(), s.mode()), r)
                .await;
        }
    }
    if suite.want("nodes") || suite.want("broadcast") {
        let sys = |x: &str| suite.sys(x);
        let mode = |x: &str| suite.mode(x);
        let mut four = Vec::new();
        if mode("cluster") {
            for build in suite.builds() {
                four.push((Setup::WerkmannCluster { ws: 4, build }, true));
            }
        }
        if mode("redis") {
            for build in suite.builds() {
                // Idle too: each connection registers in the directory on Redis, as Nchan on
                // Redis keeps each subscription there.
                four.push((Setup::WerkmannRedis { ws: 4, build }, true));
            }
        }
        four.extend(suite.setups_nchan(4).into_iter().map(|s| (s, true)));
        if sys("socketio") {
            four.push((Setup::SocketIoCluster { ws: 4 }, true));
        }
        for (s, idle) in four {
            if !suite.usable(s)
                || suite.over_budget(&format!("4 nodes, {} ({})", s.system(), s.mode()))
            {
                continue;
            }
            // The idle row from `repeats` fresh starts (its median), the broadcast from the
            // first.
            let runs = match idle && suite.want("nodes") {
                true => suite.opts.plan.repeats.max(1),
                false => 1,
            };
            let from = suite.rows.len();
            for i in 0..runs {
                if i > 0 && suite.over_budget(&format!("4 nodes, {} run {}", s.system(), i + 1)) {
                    break;
                }
                let r = suite.session_nodes(s, idle, i == 0).await;
                suite
                    .guarded(format!("{} ({}) 4-node session", s.system(), s.mode()), r)
                    .await;
            }
            if runs > 1 {
                let label = idle_nodes_label(suite.opts.plan.nodes_total);
                suite.median_since(from, &label, s);
            }
        }
    }
    if suite.want("gateway") {
        for s in suite.setups_gateway() {
            if !suite.usable(s)
                || suite.over_budget(&format!("gateway, {} ({})", s.system(), s.mode()))
            {
                continue;
            }
            let r = suite.session_gateway(s).await;
            suite
                .guarded(format!("{} ({}) gateway session", s.system(), s.mode()), r)
                .await;
        }
    }
    if suite.want("dir-memory") {
        for s in suite.setups_dir_memory() {
            let what = format!("directory memory, {} ({})", s.system(), s.mode());
            if !suite.usable(s) || suite.over_budget(&what) {
                continue;
            }
            let r = suite.session_dir_memory(s).await;
            suite.guarded(what, r).await;
        }
    }
    if suite.want("pusher") {
        for s in suite.setups_pusher() {
            let what = format!("Pusher, {} ({})", s.system(), s.mode());
            if !suite.usable(s) || suite.over_budget(&what) {
                continue;
            }
            let r = suite.session_pusher(s).await;
            suite.guarded(what, r).await;
        }
    }
    if suite.want("faults") {
        for s in suite.setups_faults() {
            let what = format!("faults, {} ({})", s.system(), s.mode());
            if !suite.usable(s) || suite.over_budget(&what) {
                continue;
            }
            let r = suite.session_faults(s).await;
            suite.guarded(what, r).await;
        }
        for build in suite.builds() {
            let s = Setup::WerkmannAll { build };
            let what = format!("history on/off, {}", s.system());
            if !suite.usable(s) || suite.over_budget(&what) {
                continue;
            }
            let r = suite.session_history(build).await;
            suite.guarded(what, r).await;
        }
    }
    if suite.want("sse") {
        suite.group_sse().await;
    }
    if suite.want("metrics") {
        for build in suite.builds() {
            let s = Setup::WerkmannAll { build };
            let what = format!("metrics on/off, {}", s.system());
            if !suite.usable(s) || suite.over_budget(&what) {
                continue;
            }
            let r = suite.session_metrics(build).await;
            suite.guarded(what, r).await;
        }
    }
    if suite.want("processes") {
        suite.group_processes().await;
    }
    let (mut channel, mut channel_before) = (None, None);
    if suite.want("channel") {
        for build in suite.builds() {
            let out = suite.channel(build).await;
            match build {
                Build::Current => channel = out,
                Build::Baseline => channel_before = out,
            }
        }
    }
    Ok((channel, channel_before))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn suite(opts: Options) -> Suite {
        Suite {
            env: Env {
                bin_dir: opts.bin_dir.clone(),
                baseline_dir: opts.baseline.clone(),
                peers_dir: opts.peers_dir.clone(),
                run_dir: std::env::temp_dir(),
            },
            rows: Vec::new(),
            notes: Vec::new(),
            started: Instant::now(),
            exe: PathBuf::new(),
            gen_log: PathBuf::new(),
            opts,
        }
    }

    #[test]
    fn systems_without_a_baseline_are_as_before() {
        let o = parse(&args("--quick")).unwrap();
        assert_eq!(o.systems, ["werkmann", "nchan", "socketio", "soketi"]);
        assert!(!o.only.iter().any(|g| g == "pusher"));
        assert!(o.baseline.is_none());
        let s = suite(o).setups_main();
        assert_eq!(
            s,
            [
                Setup::WerkmannAll {
                    build: Build::Current
                },
                Setup::WerkmannCluster {
                    ws: 2,
                    build: Build::Current
                },
                Setup::WerkmannRedis {
                    ws: 2,
                    build: Build::Current
                },
                Setup::Nchan {
                    workers: 2,
                    redis: false
                },
                Setup::SocketIoAll,
                Setup::SocketIoCluster { ws: 2 },
            ]
        );
    }

    #[test]
    fn nchan_on_redis_runs_when_named() {
        let o = parse(&args("--systems werkmann,nchan,nchan-redis --modes redis")).unwrap();
        let s = suite(o).setups_main();
        let nchan = |redis| Setup::Nchan { workers: 2, redis };
        assert_eq!(s[1..], [nchan(false), nchan(true)]);
        assert_eq!(nchan(true).system(), crate::systems::NCHAN_REDIS);
        assert_eq!(nchan(false).system(), "Nchan");
        // Its configuration: the in-memory one with both placeholders there to fill.
        let conf = include_str!("../peers/nchan/nginx.conf.in");
        assert_eq!(conf.matches("@REDIS_UPSTREAM@").count(), 1);
        assert_eq!(conf.matches("@REDIS_PASS@").count(), 2);
    }

    #[test]
    fn a_baseline_runs_each_werkmann_mode_twice_before_first() {
        let o = parse(&args("--baseline /old --modes all,cluster")).unwrap();
        assert_eq!(
            o.systems,
            ["werkmann", "werkmann-before", "nchan", "socketio", "soketi"]
        );
        let o = parse(&args("--systems werkmann,nchan --baseline /old")).unwrap();
        assert_eq!(o.systems, ["werkmann", "werkmann-before", "nchan"]);
        let o = parse(&args(
            "--baseline /old --systems werkmann --modes all,cluster",
        ))
        .unwrap();
        assert_eq!(o.baseline, Some(PathBuf::from("/old")));
        let s = suite(o).setups_main();
        let (before, after) = (Build::Baseline, Build::Current);
        assert_eq!(
            s,
            [
                Setup::WerkmannAll { build: before },
                Setup::WerkmannAll { build: after },
                Setup::WerkmannCluster {
                    ws: 2,
                    build: before
                },
                Setup::WerkmannCluster {
                    ws: 2,
                    build: after
                },
            ]
        );
        assert_eq!(s[0].system(), "werkmann-before");
        assert!(!s[0].is_peer());
    }

    #[test]
    fn the_gateway_rows_run_on_four_nodes_alone() {
        let o = parse(&args(
            "--only gateway,dir-memory --systems werkmann,socketio",
        ))
        .unwrap();
        assert_eq!(o.only, ["gateway", "dir-memory"]);
        let s = suite(o);
        let current = Build::Current;
        assert_eq!(
            s.setups_gateway(),
            [
                Setup::WerkmannCluster {
                    ws: 4,
                    build: current
                },
                Setup::WerkmannRedis {
                    ws: 4,
                    build: current
                },
                Setup::SocketIoCluster { ws: 4 },
            ]
        );
        assert_eq!(s.setups_dir_memory().len(), 2);
        assert!(parse(&args("--only gateways")).is_err());
    }

    #[test]
    fn the_fault_group_runs_only_when_named_on_every_mode() {
        let o = parse(&args("--quick")).unwrap();
        assert!(!o.only.iter().any(|g| g == "faults"));
        let o = parse(&args("--only faults --fault-clients 500 --fault-secs 4")).unwrap();
        assert_eq!(o.only, ["faults"]);
        assert_eq!((o.plan.fault_n, o.plan.fault_secs), (500, 4));
        let s = suite(o);
        assert_eq!(s.setups_faults().len(), 3);
        let off = Setup::WerkmannHistory {
            build: Build::Current,
            rules: crate::faults::HISTORY_OFF,
        };
        assert_eq!(off.mode(), "all-in-one, history off");
        assert_eq!(off.system(), "werkmann");
    }

    #[test]
    fn the_sse_group_runs_only_when_named_next_to_nchan() {
        let o = parse(&args("--quick")).unwrap();
        assert!(!o.only.iter().any(|g| g == "sse"));
        assert_eq!((o.plan.sse_n, o.plan.sse_m), (2_000, 50));
        let o = parse(&args(
            "--only sse --sse-streams 500 --sse-pushes=20 --modes all,cluster",
        ))
        .unwrap();
        assert_eq!(o.only, ["sse"]);
        assert_eq!((o.plan.sse_n, o.plan.sse_m), (500, 20));
        let s = suite(o);
        let current = Build::Current;
        assert_eq!(
            s.setups_sse(),
            [
                Setup::WerkmannAll { build: current },
                Setup::WerkmannCluster {
                    ws: 2,
                    build: current
                },
                Setup::Nchan {
                    workers: 2,
                    redis: false
                },
            ]
        );
        let o = parse(&args("--only sse --systems werkmann --modes all")).unwrap();
        assert_eq!(
            suite(o).setups_sse(),
            [Setup::WerkmannAll { build: current }]
        );
        assert!(parse(&args("--sse-streams many")).is_err());
        assert!(parse(&args("--sse-pushes")).is_err());
    }

    #[test]
    fn werkmann_before_needs_a_baseline_and_systems_are_checked() {
        assert!(parse(&args("--systems werkmann-before")).is_err());
        assert!(parse(&args("--systems werkman")).is_err());
        assert!(parse(&args("--systems werkmann,nchan")).is_ok());
    }
}
