//! `pushbench http`: static file requests per second on keep-alive connections, werkmann's
//! `file_server` (`apps/src/bin/file_server.rs`, `Worker::serve_files`) side by side with nginx.
//!
//! `pushbench http [--conns C] [--secs T] [--warmup W] [--repeats R] [--size B] [--count N]
//! [--systems werkmann,nginx]` (`scripts/bench http`)
//!
//! It builds nothing: it writes a file `4k.bin` of `B` bytes (default 4096) into a fresh
//! temporary folder, starts `file_server --count N --root FOLDER` (next to its own executable)
//! and nginx with `N` worker processes serving the same folder (the configuration written into
//! the run directory is [`nginx_conf`]), then runs each system in turn — the order alternating
//! from round to round, `R` rounds (default 3) — with `C` keep-alive connections (default 64,
//! source addresses spread over 127.0.0.2–127.0.0.254), each sending `GET /4k.bin` and waiting
//! for the whole answer before the next (no pipelining), `W` s of warm-up (default 1) and then
//! `T` s measured (default 5). Every answer is checked: status 200, `Content-Length` equal to
//! the file's size and the body equal to the file; anything else counts as an error (and the
//! connection is opened again). Figures: requests per second, latency p50/p99 (request
//! written → whole answer read), server CPU per request (the threads of every server process —
//! nginx's master and workers — over the measured seconds); the table shows medians over the
//! rounds and werkmann ÷ nginx.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::child::{free_addr, raise_nofile, Args, Child};
use crate::{client, procfs, report};

const USAGE: &str = "\
Usage: pushbench http [--conns C] [--secs T] [--warmup W] [--repeats R] [--size B] [--count N]
                      [--systems LIST]
  --conns C      keep-alive connections, one request at a time each (default 64)
  --secs T       measured seconds per run (default 5)
  --warmup W     seconds of load before each measurement (default 1)
  --repeats R    rounds, each running every system once, medians shown (default 3)
  --size B       bytes of the file served (default 4096)
  --count N      file_server instances and nginx worker processes (default 2)
  --systems LIST werkmann, nginx or both, comma-separated (default werkmann,nginx)
";

/// The file's name in the served folder.
const FILE: &str = "4k.bin";

#[derive(Debug, Clone)]
struct Options {
    conns: usize,
    secs: f64,
    warmup: f64,
    repeats: usize,
    size: usize,
    count: usize,
    systems: Vec<System>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Werkmann,
    Nginx,
}

impl System {
    fn label(self) -> &'static str {
        match self {
            System::Werkmann => "werkmann",
            System::Nginx => "nginx",
        }
    }
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        conns: 64,
        secs: 5.0,
        warmup: 1.0,
        repeats: 3,
        size: 4096,
        count: 2,
        systems: vec![System::Werkmann, System::Nginx],
    };
    let mut args = Args::new(args, USAGE);
    while let Some((name, inline)) = args.next_option() {
        let mut value = || args.value(&name, &inline);
        match name.as_str() {
            "--conns" => o.conns = value()?.parse().context("--conns")?,
            "--secs" => o.secs = value()?.parse().context("--secs")?,
            "--warmup" => o.warmup = value()?.parse().context("--warmup")?,
            "--repeats" => o.repeats = value()?.parse().context("--repeats")?,
            "--size" => o.size = value()?.parse().context("--size")?,
            "--count" => o.count = value()?.parse().context("--count")?,
            "--systems" => {
                o.systems = Vec::new();
                for s in value()?.split(',').filter(|s| !s.is_empty()) {
                    let s = match s {
                        "werkmann" => System::Werkmann,
                        "nginx" => System::Nginx,
                        other => bail!("--systems: unknown system {other} (werkmann, nginx)"),
                    };
                    if !o.systems.contains(&s) {
                        o.systems.push(s);
                    }
                }
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    ensure!(
        (1..=10_000).contains(&o.conns),
        "--conns must be 1 to 10000"
    );
    ensure!(o.secs > 0.0 && o.warmup >= 0.0, "--secs must be above 0");
    ensure!(o.repeats > 0, "--repeats must be at least 1");
    ensure!(o.count > 0, "--count must be at least 1");
    ensure!(!o.systems.is_empty(), "--systems must name one");
    Ok(o)
}

/// The nginx configuration of the run: nginx's defaults but for `N` worker processes, no
/// access log, `sendfile`/`tcp_nopush` on, keep-alive connections held for 100,000 requests
/// and 60 s, and the run's own log, pid and temporary paths.
fn nginx_conf(prefix: &Path, root: &Path, addr: SocketAddr, workers: usize) -> String {
    let server = format!(
        "    server {{
        listen {addr};
        root {root};
    }}
",
        root = root.display()
    );
    nginx_conf_with(
        prefix,
        workers,
        "    sendfile on;\n    tcp_nopush on;\n",
        &server,
    )
}

/// An nginx configuration for a bench run: `workers` worker processes, no access log,
/// keep-alive connections held for 100,000 requests and 60 s, the run's own log, pid and
/// temporary paths under `prefix`; `http` lines and `servers` blocks added to `http { }`.
pub(crate) fn nginx_conf_with(prefix: &Path, workers: usize, http: &str, servers: &str) -> String {
    let p = prefix.display();
    format!(
        "worker_processes {workers};
daemon off;
master_process on;
error_log {p}/error.log warn;
pid {p}/nginx.pid;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{http}    keepalive_requests 100000;
    keepalive_timeout 60;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
{servers}}}
"
    )
}

pub(crate) fn which(prog: &str) -> Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = Path::new(dir).join(prog);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{prog} not found (scripts/bench peers installs it)")
}

/// A started server and its address.
struct Server {
    system: System,
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// CPU time of its processes (the server and its direct children), in nanoseconds.
    fn cpu_ns(&self) -> u64 {
        let pid = self.child.pid();
        procfs::cpu_ns(pid)
            + procfs::children(pid)
                .into_iter()
                .map(procfs::cpu_ns)
                .sum::<u64>()
    }

    fn processes(&self) -> usize {
        1 + procfs::children(self.child.pid()).len()
    }
}

async fn start(o: &Options, system: System, dir: &Path, root: &Path) -> Result<Server> {
    let addr = free_addr()?;
    let run_dir = dir.join(system.label());
    std::fs::create_dir_all(&run_dir)?;
    let mut child = match system {
        System::Werkmann => {
            let exe = std::env::current_exe()?.with_file_name("file_server");
            ensure!(
                exe.exists(),
                "{} not found; build it with `cargo build --release -p werkmann-apps --bin \
                 file_server` (scripts/bench http does)",
                exe.display()
            );
            let mut cmd = Command::new(exe);
            cmd.args(["start", "--listen", &addr.to_string()])
                .args(["--count", &o.count.to_string()])
                .arg("--root")
                .arg(root);
            Child::spawn("file_server", cmd, &run_dir, true)?
        }
        System::Nginx => {
            let conf = run_dir.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(&run_dir, root, addr, o.count))?;
            let mut cmd = Command::new(which("nginx")?);
            cmd.arg("-p")
                .arg(&run_dir)
                .arg("-e")
                .arg(run_dir.join("error.log"))
                .arg("-c")
                .arg(&conf);
            Child::spawn("nginx", cmd, &run_dir, false)?
        }
    };
    child.wait_ports(&[addr], Duration::from_secs(15)).await?;
    Ok(Server {
        system,
        child,
        addr,
    })
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<u64>,
}

/// One request and its checked answer on `stream`; `buf` is reused (and left empty).
async fn request(stream: &mut TcpStream, buf: &mut Vec<u8>, req: &[u8], body: &[u8]) -> Result<()> {
    buf.clear();
    stream.write_all(req).await?;
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        ensure!(buf.len() < 16384, "response head too long");
        ensure!(stream.read_buf(buf).await? > 0, "connection closed");
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    ensure!(
        status.starts_with("HTTP/1.1 200 "),
        "status line {status:?}"
    );
    let mut length = None;
    let mut close = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.trim().parse::<usize>().context("Content-Length")?);
            } else if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
    }
    let length = length.ok_or_else(|| anyhow!("no Content-Length"))?;
    ensure!(length == body.len(), "Content-Length {length}");
    while buf.len() < head_end + length {
        ensure!(
            stream.read_buf(buf).await? > 0,
            "connection closed in the body"
        );
    }
    ensure!(buf.len() == head_end + length, "bytes after the body");
    ensure!(&buf[head_end..] == body, "body differs from the file");
    ensure!(!close, "Connection: close");
    Ok(())
}

/// One connection's loop: requests one after the other until `stop`, counting and timing
/// those that finish while `measuring`.
async fn connection(
    idx: u32,
    target: SocketAddr,
    body: Arc<Vec<u8>>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let req = format!("GET /{FILE} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: pushbench\r\n\r\n");
    let mut t = Tally {
        latencies: Vec::with_capacity(1 << 14),
        ..Tally::default()
    };
    let mut buf = Vec::with_capacity(body.len() + 1024);
    let mut stream = None;
    while !stop.load(Ordering::Relaxed) {
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match client::connect_from(idx, target, None).await {
                Ok(s) => stream.insert(s),
                Err(e) => {
                    t.errors += 1;
                    t.first_error.get_or_insert(format!("connect: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            request(s, &mut buf, req.as_bytes(), &body),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow!("no answer within 5 s")));
        let ns = t0.elapsed().as_nanos() as u64;
        let counted = measuring.load(Ordering::Relaxed);
        match r {
            Ok(()) if counted => {
                t.requests += 1;
                t.latencies.push(ns);
            }
            Ok(()) => {}
            Err(e) => {
                if counted {
                    t.errors += 1;
                    t.first_error.get_or_insert(format!("{e:#}"));
                }
                stream = None;
            }
        }
    }
    t
}

/// One run's figures.
#[derive(Debug, Clone, Default)]
struct RunFigures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_req: f64,
    errors: u64,
    requests: u64,
    gen_cpu_s: f64,
}

async fn load(o: &Options, server: &Server, body: &Arc<Vec<u8>>) -> Result<(RunFigures, String)> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..o.conns)
        .map(|i| {
            tokio::spawn(connection(
                i as u32,
                server.addr,
                body.clone(),
                measuring.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(o.warmup)).await;
    let cpu0 = server.cpu_ns();
    let gen0 = procfs::cpu_ns(std::process::id());
    let t0 = Instant::now();
    measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(o.secs)).await;
    measuring.store(false, Ordering::SeqCst);
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = server.cpu_ns();
    let gen1 = procfs::cpu_ns(std::process::id());
    stop.store(true, Ordering::SeqCst);
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await?;
        all.requests += t.requests;
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
        all.latencies.extend(t.latencies);
    }
    all.latencies.sort_unstable();
    let at = |q: f64| {
        let s = &all.latencies;
        if s.is_empty() {
            0.0
        } else {
            s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1] as f64 / 1e3
        }
    };
    let f = RunFigures {
        rps: all.requests as f64 / secs,
        p50_us: at(0.50),
        p99_us: at(0.99),
        cpu_us_per_req: if all.requests > 0 {
            cpu1.saturating_sub(cpu0) as f64 / 1e3 / all.requests as f64
        } else {
            0.0
        },
        errors: all.errors,
        requests: all.requests,
        gen_cpu_s: gen1.saturating_sub(gen0) as f64 / 1e9,
    };
    let note = format!(
        "{}: {} requests in {secs:.2} s, {} errors{}; server CPU {:.2} s ({} processes), \
         generator CPU {:.2} s; load average {}",
        server.system.label(),
        all.requests,
        all.errors,
        all.first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        cpu1.saturating_sub(cpu0) as f64 / 1e9,
        server.processes(),
        f.gen_cpu_s,
        loadavg()
    );
    Ok((f, note))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `pushbench http [options]`.
pub async fn main(args: &[String]) -> Result<()> {
    let o = parse_options(args)?;
    raise_nofile(o.conns as u64 + 200)?;
    let dir = std::env::temp_dir().join(format!("werkmann-httpbench-{}", std::process::id()));
    let root = dir.join("root");
    std::fs::create_dir_all(&root)?;
    // Readable by nginx's workers (which run as nobody when it starts as root).
    {
        use std::os::unix::fs::PermissionsExt;
        for d in [&dir, &root] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    let body: Vec<u8> = (0..o.size).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(root.join(FILE), &body)?;
    let body = Arc::new(body);
    let names: Vec<&str> = o.systems.iter().map(|s| s.label()).collect();
    println!(
        "bench http: GET /{FILE} ({} bytes), {} keep-alive connections, {} s measured after {} s \
         warm-up, {} rounds of {}; {} file_server instances / nginx workers; load average {}",
        o.size,
        o.conns,
        o.secs,
        o.warmup,
        o.repeats,
        names.join(" and "),
        o.count,
        loadavg()
    );
    let result = async {
        let mut servers = Vec::new();
        for s in &o.systems {
            servers.push(start(&o, *s, &dir, &root).await?);
        }
        let mut runs: Vec<(System, RunFigures)> = Vec::new();
        let mut notes = Vec::new();
        for round in 0..o.repeats {
            let mut order: Vec<usize> = (0..servers.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                servers[i].child.check_alive()?;
                let (f, note) = load(&o, &servers[i], &body).await?;
                println!("  round {}: {note}", round + 1);
                notes.push(format!("round {}: {note}", round + 1));
                runs.push((servers[i].system, f));
            }
        }
        for s in &mut servers {
            s.child.stop();
        }
        Ok::<_, anyhow::Error>((runs, notes))
    };
    let result = tokio::select! {
        r = result => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let (runs, notes) = result?;

    let med = |s: System, get: fn(&RunFigures) -> f64| {
        median(
            runs.iter()
                .filter(|(x, _)| *x == s)
                .map(|(_, f)| get(f))
                .collect(),
        )
    };
    let header = [
        "system",
        "requests/s",
        "p50",
        "p99",
        "µs server CPU/request",
        "errors",
    ];
    let cells: Vec<Vec<String>> = o
        .systems
        .iter()
        .map(|&s| {
            let errors: u64 = runs
                .iter()
                .filter(|(x, _)| *x == s)
                .map(|(_, f)| f.errors)
                .sum();
            vec![
                s.label().to_string(),
                format!("{:.0}", med(s, |f| f.rps)),
                format!("{:.0} µs", med(s, |f| f.p50_us)),
                format!("{:.0} µs", med(s, |f| f.p99_us)),
                format!("{:.1}", med(s, |f| f.cpu_us_per_req)),
                errors.to_string(),
            ]
        })
        .collect();
    println!();
    println!("Medians of {} rounds:", o.repeats);
    println!();
    print!("{}", report::aligned(&header, &cells));
    if o.systems.len() == 2 {
        let (w, n) = (System::Werkmann, System::Nginx);
        // The ratio of each round's pair, then their median (side by side in one round).
        let per_round: Vec<f64> = runs
            .chunks(2)
            .filter_map(|pair| {
                let get = |s| pair.iter().find(|(x, _)| *x == s).map(|(_, f)| f.rps);
                Some(get(w)? / get(n)?)
            })
            .collect();
        println!();
        println!(
            "werkmann ÷ nginx: requests/s {:.2} (median of the rounds' ratios: {:.2}); server CPU \
             per request {:.2}",
            med(w, |f| f.rps) / med(n, |f| f.rps),
            median(per_round),
            med(w, |f| f.cpu_us_per_req) / med(n, |f| f.cpu_us_per_req)
        );
    }
    let total: u64 = runs.iter().map(|(_, f)| f.requests).sum();
    println!();
    println!(
        "- {total} requests checked in all; load average at the end: {}",
        loadavg()
    );
    for n in notes {
        println!("- {n}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_has_the_settings() {
        let c = nginx_conf(
            Path::new("/tmp/x"),
            Path::new("/tmp/x/root"),
            "127.0.0.1:8080".parse().unwrap(),
            2,
        );
        for want in [
            "worker_processes 2;",
            "listen 127.0.0.1:8080;",
            "root /tmp/x/root;",
            "keepalive_requests 100000;",
            "sendfile on;",
        ] {
            assert!(c.contains(want), "{want} missing:\n{c}");
        }
    }
}
