//! `pushbench soak`: holds N WebSocket clients (10k by default) on a werkmann push server under
//! a steady mix of broadcasts and targeted pushes for a long time (30 minutes by default), and
//! reports per minute what the server holds (RSS, PSS, open files), what it used (CPU), what
//! was delivered, every delivery error and the latency. The verdict: RSS and open files stay
//! flat after the warm-up and nothing is lost → PASS; otherwise FAIL (exit code 1).
//!
//! It reuses the load generator as it is: the worker processes and their clients (which answer
//! the server's pings, so the idle timeout never closes them), the server setups, the /proc
//! readers and the warm-up. Each minute is one generator phase carrying both kinds of push;
//! between minutes the coordinator waits for the minute's deliveries, so a minute's figures
//! are exactly its own pushes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use rand::Rng as _;

use crate::child::Args;
use crate::clock::mono_ns;
use crate::gen::{Gen, MAX_PER_WORKER};
use crate::http::Conn;
use crate::procfs;
use crate::proto::{payload, Address, Kind};
use crate::report;
use crate::run::{self, k};
use crate::systems::{Build, Env, Running, Setup};

/// Usage text.
pub const USAGE: &str = "\
Usage: pushbench soak [--minutes 30] [--clients 10000] [--rate 10,50] [--mode all|cluster|redis]
                      [--warmup 2] [--tolerance 5] [--out FILE] [--size 64] [--keep]
  --minutes N      how long the push load runs (default 30), one row per minute
  --clients N      WebSocket clients held the whole time (default 10000)
  --rate B,T       broadcasts/s and targeted pushes/s (default 10,50); a single number R
                   means R pushes/s, one in six a broadcast
  --mode M         werkmann all-in-one (default), cluster (start_channel + 2 start_ws +
                   start_http) or redis (redis-server instead of start_channel)
  --warmup N       minutes before RSS and open files must stay flat (default 2)
  --tolerance P    how far (%) RSS and open files may grow over their value at the end of the
                   warm-up (default 5)
  --out FILE       also write the table and verdict there as Markdown
  --size B         push payload, bytes (default 64)
  --bin-dir DIR    werkmann binaries (default: next to pushbench)
  --keep           keep the run directory (server logs)
Exit code 1 on FAIL: RSS or open files grew past the tolerance, a push was lost, duplicated
or misdelivered, a publish request failed, or a client was disconnected.
";

/// Command-line options of `pushbench soak`.
#[derive(Debug, Clone)]
struct Options {
    minutes: u32,
    clients: u32,
    broadcast_rate: u32,
    targeted_rate: u32,
    setup: Setup,
    warmup: u32,
    tolerance: f64,
    out: Option<PathBuf>,
    size: usize,
    bin_dir: PathBuf,
    keep: bool,
    command: String,
}

fn parse(args: &[String]) -> Result<Options> {
    let exe = std::env::current_exe()?;
    let mut o = Options {
        minutes: 30,
        clients: 10_000,
        broadcast_rate: 10,
        targeted_rate: 50,
        setup: Setup::WerkmannAll {
            build: Build::Current,
        },
        warmup: 2,
        tolerance: 5.0,
        out: None,
        size: 64,
        bin_dir: exe.parent().map(PathBuf::from).unwrap_or_default(),
        keep: false,
        command: std::iter::once("pushbench soak".to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
    };
    let mut warmup = None;
    let mut args = Args::new(args, USAGE);
    while let Some((name, inline)) = args.next_option() {
        let mut value = || args.value(&name, &inline);
        match name.as_str() {
            "--minutes" => o.minutes = value()?.parse().context("--minutes")?,
            "--clients" => o.clients = value()?.parse().context("--clients")?,
            "--rate" => {
                let v = value()?;
                (o.broadcast_rate, o.targeted_rate) = match v.split_once(',') {
                    Some((b, t)) => (
                        b.trim().parse().context("--rate B,T")?,
                        t.trim().parse().context("--rate B,T")?,
                    ),
                    None => {
                        let r: u32 = v.trim().parse().context("--rate")?;
                        (r / 6, r - r / 6)
                    }
                };
            }
            "--mode" => {
                o.setup = match value()?.as_str() {
                    "all" | "all-in-one" => Setup::WerkmannAll {
                        build: Build::Current,
                    },
                    "cluster" => Setup::WerkmannCluster {
                        ws: 2,
                        build: Build::Current,
                    },
                    "redis" => Setup::WerkmannRedis {
                        ws: 2,
                        build: Build::Current,
                    },
                    m => bail!("--mode: unknown mode {m}\n{USAGE}"),
                }
            }
            "--warmup" => warmup = Some(value()?.parse::<u32>().context("--warmup")?),
            "--tolerance" => o.tolerance = value()?.parse().context("--tolerance")?,
            "--out" => o.out = Some(PathBuf::from(value()?)),
            "--size" => o.size = value()?.parse().context("--size")?,
            "--bin-dir" => o.bin_dir = PathBuf::from(value()?),
            "--keep" => o.keep = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if o.minutes == 0 || o.clients == 0 || o.broadcast_rate + o.targeted_rate == 0 {
        bail!("--minutes, --clients and --rate must be positive\n{USAGE}");
    }
    // The warm-up must leave at least one minute to judge.
    o.warmup = warmup.unwrap_or(2).min(o.minutes - 1);
    Ok(o)
}

/// One minute's figures (minute 0: after the clients opened, before any push).
#[derive(Debug, Clone, Default)]
struct Minute {
    minute: u32,
    /// Client sockets the generator still holds.
    clients: u64,
    rss_kib: u64,
    pss_kib: u64,
    /// Open files of every server process.
    fds: u64,
    /// CPU over the minute, % of one core.
    server_cpu: f64,
    gen_cpu: f64,
    /// The rest of the machine: other processes (other users' builds), interrupts excluded.
    other_cpu: f64,
    /// Correct deliveries of the minute's pushes.
    deliveries: u64,
    /// Pushes published (answered 2xx): broadcasts, targeted.
    published: (u64, u64),
    errors: Errs,
    p50_ns: Option<u64>,
    p99_ns: Option<u64>,
    max_ns: u64,
}

/// A minute's delivery errors.
#[derive(Debug, Clone, Default)]
struct Errs {
    /// Deliveries of acknowledged pushes that never came.
    missing: u64,
    /// Pushes delivered twice to a client.
    dup: u64,
    /// Targeted pushes at a client they do not name.
    wrong: u64,
    /// Pushes of an earlier minute arriving after that minute's drain.
    late: u64,
    /// Frames that are not pushes.
    bad: u64,
    /// Publish requests not answered 2xx.
    http: u64,
    /// Clients whose connection closed.
    closed: u64,
}

impl Errs {
    fn total(&self) -> u64 {
        self.missing + self.dup + self.wrong + self.late + self.bad + self.http + self.closed
    }

    fn add(&mut self, o: &Errs) {
        self.missing += o.missing;
        self.dup += o.dup;
        self.wrong += o.wrong;
        self.late += o.late;
        self.bad += o.bad;
        self.http += o.http;
        self.closed += o.closed;
    }

    fn text(&self) -> String {
        let parts: Vec<String> = [
            ("missing", self.missing),
            ("dup", self.dup),
            ("wrong", self.wrong),
            ("late", self.late),
            ("bad", self.bad),
            ("http", self.http),
            ("closed", self.closed),
        ]
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(n, v)| format!("{n} {}", sep(*v)))
        .collect();
        if parts.is_empty() {
            "0".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Open files of a process (entries of /proc/PID/fd; 0 when it is gone).
fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// Sockets a process holds (its fds that are sockets).
fn socket_count(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy().starts_with("socket:"))
                .unwrap_or(false)
        })
        .count() as u64
}

/// CPU counters at one instant.
#[derive(Clone, Copy)]
struct Cpu {
    at: Instant,
    server: u64,
    gen: u64,
    machine: u64,
}

fn cpu_now(sys: &Running, gen_pids: &[u32]) -> Cpu {
    Cpu {
        at: Instant::now(),
        server: sys.cpu_ns(),
        gen: gen_pids.iter().map(|p| procfs::cpu_ns(*p)).sum::<u64>()
            + procfs::cpu_ns(std::process::id()),
        // Without interrupt time: loopback TCP is processed there, largely our own traffic.
        machine: procfs::machine_busy_ns()
            .map(|(busy, irq)| busy - irq)
            .unwrap_or(0),
    }
}

/// The server's memory and open files into `m`.
fn sample_server(sys: &Running, m: &mut Minute) {
    let pids = sys.pids();
    m.rss_kib = pids.iter().map(|p| procfs::rss_kib(*p)).sum();
    m.pss_kib = pids.iter().map(|p| procfs::pss_kib(*p)).sum();
    m.fds = pids.iter().map(|p| fd_count(*p)).sum();
}

/// Publisher connections per push kind.
const CONNS_PER_KIND: usize = 4;

/// The soak in progress.
struct Soak {
    opts: Options,
    rows: Vec<Minute>,
    notes: Vec<String>,
    /// Clients opened.
    opened: u64,
}

impl Soak {
    async fn run(&mut self, env: &Env, exe: &std::path::Path, log: &std::path::Path) -> Result<()> {
        let o = self.opts.clone();
        let setup = o.setup;
        eprintln!(
            "pushbench soak: starting werkmann ({}: {})",
            setup.mode(),
            setup.describe()
        );
        let mut sys = Running::start(env, setup, "soak").await?;
        let api = sys.api;
        let mut warm_conn = Conn::connect(api.addr).await?;
        let mut bconns = Vec::new();
        let mut tconns = Vec::new();
        for _ in 0..CONNS_PER_KIND {
            bconns.push(Conn::connect(api.addr).await?);
            tconns.push(Conn::connect(api.addr).await?);
        }
        let workers = o.clients.div_ceil(MAX_PER_WORKER - 4_000).max(1) as usize;
        let mut gen = Gen::spawn(workers, exe, log).await?;
        let gen_pids = gen.pids();
        let opened = gen.open(setup.flavor(), &sys.ws.clone(), o.clients).await?;
        eprintln!(
            "pushbench soak: {} clients open in {:.1} s ({} failed)",
            opened.opened, opened.secs, opened.failed
        );
        if opened.failed > 0 {
            self.notes.push(format!(
                "{} of {} clients failed to open: {}",
                opened.failed,
                o.clients,
                opened.first_error.clone().unwrap_or_default()
            ));
        }
        if opened.opened == 0 {
            bail!("no client could open");
        }
        sys.check_alive()?;
        self.opened = gen.live.len() as u64;
        run::warm(&mut gen, &api, &mut warm_conn, self.opened).await?;
        drop(warm_conn);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sockets = || gen_pids.iter().map(|p| socket_count(*p)).sum::<u64>();
        // The generator's own sockets besides its clients (none today; measured, not assumed).
        let held0 = sockets();
        let extra = held0.saturating_sub(self.opened);
        let mut row0 = Minute {
            clients: held0 - extra,
            ..Minute::default()
        };
        sample_server(&sys, &mut row0);
        self.print_header();
        self.print_row(&row0);
        self.rows.push(row0);

        let targets: Arc<Vec<Address>> =
            Arc::new(gen.live.iter().map(|(_, a)| a.clone()).collect());
        let (b_per_min, t_per_min) = (o.broadcast_rate * 60, o.targeted_rate * 60);
        let m = b_per_min.max(t_per_min).max(1);
        let start = tokio::time::Instant::now();
        let mut cpu0 = cpu_now(&sys, &gen_pids);
        let mut held_before = self.rows[0].clients;
        for minute in 1..=o.minutes {
            let phase = gen.phase(Kind::Broadcast, m).await?;
            let base = start + Duration::from_secs(60 * u64::from(minute - 1));
            let size = o.size;
            let bmake: run::Request = Arc::new(move |i| {
                api.broadcast(&payload(phase, Kind::Broadcast, i, 0, mono_ns(), size))
            });
            // Targets drawn before the minute, so that drawing costs nothing on the way.
            let mut rng = rand::rng();
            let to: Arc<Vec<Address>> = Arc::new(
                (0..t_per_min)
                    .map(|_| targets[rng.random_range(0..targets.len())].clone())
                    .collect(),
            );
            let tmake: run::Request = Arc::new(move |i| {
                let a = &to[i as usize];
                api.targeted(
                    a,
                    &payload(phase, Kind::Targeted, i, a.idx, mono_ns(), size),
                )
            });
            let (b, t) = tokio::join!(
                async {
                    if b_per_min == 0 {
                        return Ok((0, 0, None));
                    }
                    run::send_requests(
                        &mut bconns,
                        b_per_min,
                        Some((base, o.broadcast_rate)),
                        bmake,
                    )
                    .await
                },
                async {
                    if t_per_min == 0 {
                        return Ok((0, 0, None));
                    }
                    run::send_requests(&mut tconns, t_per_min, Some((base, o.targeted_rate)), tmake)
                        .await
                },
            );
            let ((b_ok, b_failed, b_err), (t_ok, t_failed, t_err)) = (b?, t?);
            // Every client registered with the generator, including any that closed since.
            let registered = self.opened;
            gen.wait_received(
                registered * b_ok + t_ok,
                Duration::from_secs(3),
                Duration::from_secs(20),
            )
            .await?;
            let rep = gen.report().await?;
            let cpu1 = cpu_now(&sys, &gen_pids);
            let mut row = Minute {
                minute,
                published: (b_ok, t_ok),
                ..Minute::default()
            };
            sample_server(&sys, &mut row);
            let held = sockets().saturating_sub(extra);
            row.clients = held;
            let wall = cpu1.at.duration_since(cpu0.at).as_nanos().max(1) as f64;
            let pct = |ns: u64| ns as f64 / wall * 100.0;
            row.server_cpu = pct(cpu1.server.saturating_sub(cpu0.server));
            row.gen_cpu = pct(cpu1.gen.saturating_sub(cpu0.gen));
            let all = cpu1.machine.saturating_sub(cpu0.machine);
            let ours = cpu1.server.saturating_sub(cpu0.server) + cpu1.gen.saturating_sub(cpu0.gen);
            row.other_cpu = pct(all.saturating_sub(ours));
            cpu0 = cpu1;
            // The phase's `m` sequence numbers per client, of which the minute's broadcasts
            // are the first `b_per_min`: what every registered client did not get of those.
            let unsent = registered * u64::from(m - b_per_min);
            let b_not_got = rep.missing.saturating_sub(unsent);
            let b_received = (registered * u64::from(b_per_min)).saturating_sub(b_not_got);
            let t_received = rep.progress.received.saturating_sub(b_received);
            row.deliveries = rep.progress.received;
            row.errors = Errs {
                // Broadcasts answered 2xx but not at every client, targeted pushes answered
                // 2xx but not delivered.
                missing: b_not_got.saturating_sub(registered * b_failed)
                    + t_ok.saturating_sub(t_received),
                dup: rep.progress.dup,
                wrong: rep.progress.wrong,
                late: rep.progress.stray,
                bad: rep.progress.bad,
                http: b_failed + t_failed,
                closed: held_before.saturating_sub(held),
            };
            held_before = held;
            for e in [b_err, t_err].into_iter().flatten() {
                let note = format!("minute {minute}: first failed publish request: {e}");
                eprintln!("pushbench soak: {note}");
                self.notes.push(note);
            }
            row.p50_ns = rep.hist.quantile_ns(0.5);
            row.p99_ns = rep.hist.quantile_ns(0.99);
            row.max_ns = rep.hist.max_ns();
            if let Err(e) = sys.check_alive() {
                self.print_row(&row);
                self.rows.push(row);
                return Err(e);
            }
            self.print_row(&row);
            self.rows.push(row);
        }
        gen.quit().await;
        sys.stop();
        Ok(())
    }

    fn header() -> [&'static str; 2] {
        [
            "| minute | clients | RSS MiB | PSS MiB | open files | server CPU % | generator CPU % | other CPU % | deliveries | errors | p50 ms | p99 ms | max ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
        ]
    }

    fn print_header(&self) {
        for l in Self::header() {
            println!("{l}");
        }
    }

    fn row_text(r: &Minute) -> String {
        let ms = |v: Option<u64>| v.map(|v| report::num(v as f64 / 1e6)).unwrap_or("–".into());
        if r.minute == 0 {
            return format!(
                "| 0 (open) | {} | {:.1} | {:.1} | {} | – | – | – | – | – | – | – | – |",
                sep(r.clients),
                r.rss_kib as f64 / 1024.0,
                r.pss_kib as f64 / 1024.0,
                sep(r.fds)
            );
        }
        format!(
            "| {} | {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
            r.minute,
            sep(r.clients),
            r.rss_kib as f64 / 1024.0,
            r.pss_kib as f64 / 1024.0,
            sep(r.fds),
            r.server_cpu,
            r.gen_cpu,
            r.other_cpu,
            sep(r.deliveries),
            r.errors.text(),
            ms(r.p50_ns),
            ms(r.p99_ns),
            ms((r.deliveries > 0).then_some(r.max_ns)),
        )
    }

    fn print_row(&self, r: &Minute) {
        println!("{}", Self::row_text(r));
    }

    /// The verdict: (pass, line).
    fn verdict(&self, stopped: Option<&str>) -> (bool, String) {
        let o = &self.opts;
        let measured: Vec<&Minute> = self.rows.iter().filter(|r| r.minute > 0).collect();
        let mut errs = Errs::default();
        for r in &measured {
            errs.add(&r.errors);
        }
        let mut fails = Vec::new();
        if let Some(why) = stopped {
            fails.push(format!("the run stopped: {why}"));
        }
        if (measured.len() as u32) < o.minutes {
            fails.push(format!("{} of {} minutes ran", measured.len(), o.minutes));
        }
        let reference = self.rows.iter().find(|r| r.minute == o.warmup);
        let after: Vec<&&Minute> = measured.iter().filter(|r| r.minute > o.warmup).collect();
        let growth = |get: fn(&Minute) -> u64| -> Option<(u64, u64, u64, f64)> {
            let r = get(reference?);
            let max = after.iter().map(|m| get(m)).max()?;
            let end = get(after.last()?);
            Some((
                r,
                end,
                max,
                (max as f64 - r as f64) / r.max(1) as f64 * 100.0,
            ))
        };
        let mut parts = Vec::new();
        match (growth(|m| m.rss_kib), growth(|m| m.fds)) {
            (Some((r0, r1, rmax, rg)), Some((f0, f1, fmax, fg))) => {
                parts.push(format!(
                    "RSS {:.1} MiB at the end of minute {} → {:.1} MiB at the end (max {:.1}, \
                     {:+.1}%)",
                    r0 as f64 / 1024.0,
                    o.warmup,
                    r1 as f64 / 1024.0,
                    rmax as f64 / 1024.0,
                    rg
                ));
                parts.push(format!(
                    "open files {} → {} (max {}, {:+.1}%)",
                    sep(f0),
                    sep(f1),
                    sep(fmax),
                    fg
                ));
                if rg > o.tolerance {
                    fails.push(format!("RSS grew {rg:.1}% (limit {}%)", o.tolerance));
                }
                if fg > o.tolerance {
                    fails.push(format!("open files grew {fg:.1}% (limit {}%)", o.tolerance));
                }
            }
            _ => fails.push("no minute after the warm-up to judge".into()),
        }
        let delivered: u64 = measured.iter().map(|r| r.deliveries).sum();
        let (b, t) = measured
            .iter()
            .fold((0, 0), |(b, t), r| (b + r.published.0, t + r.published.1));
        parts.push(format!(
            "{} broadcasts and {} targeted pushes published, {} deliveries, errors {}",
            sep(b),
            sep(t),
            sep(delivered),
            errs.text()
        ));
        if errs.total() > 0 {
            fails.push(format!("delivery errors: {}", errs.text()));
        }
        let pass = fails.is_empty();
        let line = if pass {
            format!("**Verdict: PASS** — {}.", parts.join("; "))
        } else {
            format!(
                "**Verdict: FAIL** ({}) — {}.",
                fails.join("; "),
                parts.join("; ")
            )
        };
        (pass, line)
    }

    fn markdown(&self, date: &str, secs: f64, verdict: &str) -> String {
        let o = &self.opts;
        let mut s = String::new();
        let deliveries_per_s =
            u64::from(o.broadcast_rate) * self.opened + u64::from(o.targeted_rate);
        s.push_str(&format!(
            "Soak of {date}: `{}` — took {:.0} s.\n\n\
             - Server: werkmann {} (`{}`), on 127.0.0.1.\n\
             - Load: {} clients held throughout; {} broadcasts/s + {} targeted pushes/s to \
             random clients ({} deliveries/s), payload {} bytes, published on {} keep-alive \
             connections per kind. Each minute is one generator phase; its \
             deliveries are awaited before the next, so a minute's row counts exactly its \
             own pushes.\n\
             - Machine: {}.\n\
             - Columns: RSS and PSS summed over the server processes and open files (entries \
             of /proc/PID/fd) at the end of the minute; CPU over the minute in % of one \
             core — the server, the generator (its workers and coordinator), and other \
             processes (the machine's busy time without interrupts, minus those two); \
             errors: missing, duplicated, misdelivered (wrong), late (after the minute's \
             drain), failed publish requests (http), closed clients; latency = receive time \
             − publish time over the minute's deliveries.\n\
             - Verdict rule: RSS and open files may grow at most {}% over their value at the \
             end of minute {} (the warm-up), and no error.\n\n",
            o.command,
            secs,
            o.setup.mode(),
            o.setup.describe(),
            sep(self.opened),
            o.broadcast_rate,
            o.targeted_rate,
            sep(deliveries_per_s),
            o.size,
            CONNS_PER_KIND,
            report::machine(),
            o.tolerance,
            o.warmup,
        ));
        for l in Self::header() {
            s.push_str(l);
            s.push('\n');
        }
        for r in &self.rows {
            s.push_str(&Self::row_text(r));
            s.push('\n');
        }
        s.push('\n');
        for n in &self.notes {
            s.push_str(&format!("- {n}\n"));
        }
        if !self.notes.is_empty() {
            s.push('\n');
        }
        s.push_str(verdict);
        s.push('\n');
        s
    }
}

/// A count with thousands separated (`report::num` without decimals for small ones).
fn sep(n: u64) -> String {
    if n < 100 {
        n.to_string()
    } else {
        report::num(n as f64)
    }
}

/// Run the soak; `Err` on FAIL (after the report is out).
pub async fn main(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    let run_dir = std::env::temp_dir().join(format!("pushbench-soak-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    let env = Env {
        bin_dir: opts.bin_dir.clone(),
        baseline_dir: None,
        peers_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/peers")),
        run_dir: run_dir.clone(),
    };
    env.check(opts.setup)?;
    eprintln!(
        "pushbench soak: {} clients, {} broadcasts/s + {} targeted/s for {} minutes (warm-up {})",
        k(opts.clients),
        opts.broadcast_rate,
        opts.targeted_rate,
        opts.minutes,
        opts.warmup
    );
    let exe = std::env::current_exe()?;
    let log = run_dir.join("generator.log");
    let date = report::now_utc();
    let started = Instant::now();
    let mut soak = Soak {
        opts,
        rows: Vec::new(),
        notes: Vec::new(),
        opened: 0,
    };
    let result = tokio::select! {
        r = soak.run(&env, &exe, &log) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let stopped = result.as_ref().err().map(|e| format!("{e:#}"));
    if let Some(e) = &stopped {
        eprintln!("pushbench soak: {e}");
    }
    let gen_log = std::fs::read_to_string(&log).unwrap_or_default();
    if !gen_log.trim().is_empty() {
        let lines: Vec<&str> = gen_log.lines().collect();
        soak.notes.push(format!(
            "the generator logged {} lines; the first: {}",
            lines.len(),
            lines[0]
        ));
    }
    let first_line = stopped.as_deref().map(|e| e.lines().next().unwrap_or(""));
    let (pass, verdict) = soak.verdict(first_line);
    println!("\n{verdict}");
    if let Some(out) = &soak.opts.out {
        let md = soak.markdown(&date, started.elapsed().as_secs_f64(), &verdict);
        std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("pushbench soak: wrote {}", out.display());
    }
    if soak.opts.keep || stopped.is_some() {
        eprintln!("pushbench soak: logs kept in {}", run_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    if pass {
        Ok(())
    } else {
        bail!("soak FAILED")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let o = parse(&args("--minutes 2 --clients 2000 --rate 60")).unwrap();
        assert_eq!((o.minutes, o.clients), (2, 2000));
        assert_eq!((o.broadcast_rate, o.targeted_rate), (10, 50));
        assert_eq!(o.warmup, 1);
        let o = parse(&args("--rate 5,100 --mode cluster")).unwrap();
        assert_eq!((o.broadcast_rate, o.targeted_rate), (5, 100));
        assert_eq!(
            o.setup,
            Setup::WerkmannCluster {
                ws: 2,
                build: Build::Current
            }
        );
        assert_eq!(o.warmup, 2);
        assert!(parse(&args("--mode nginx")).is_err());
    }

    fn minute(minute: u32, rss_kib: u64, fds: u64) -> Minute {
        Minute {
            minute,
            rss_kib,
            fds,
            ..Minute::default()
        }
    }

    #[test]
    fn verdicts() {
        let mut s = Soak {
            opts: parse(&args("--minutes 4")).unwrap(),
            rows: vec![
                minute(0, 10_000, 100),
                minute(1, 20_000, 110),
                minute(2, 20_000, 110),
                minute(3, 20_900, 110),
                minute(4, 20_500, 110),
            ],
            notes: Vec::new(),
            opened: 100,
        };
        assert!(s.verdict(None).0, "{}", s.verdict(None).1);
        s.rows[3].rss_kib = 21_100;
        assert!(!s.verdict(None).0);
        s.rows[3].rss_kib = 20_000;
        s.rows[4].errors.closed = 1;
        assert!(!s.verdict(None).0);
        s.rows[4].errors.closed = 0;
        s.rows.pop();
        assert!(!s.verdict(None).0, "a minute short");
    }

    #[test]
    fn separators() {
        assert_eq!(sep(0), "0");
        assert_eq!(sep(999), "999");
        assert_eq!(sep(1000), "1,000");
        assert_eq!(sep(1234567), "1,234,567");
    }
}
