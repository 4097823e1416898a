//! `pushbench server`: the framework alone. A load generator for `bench_server` (a werkmann
//! server that stamps its own broadcasts, `src/bin/bench_server.rs`): measures server RSS per
//! idle WebSocket connection and server CPU per broadcast delivery, with delivery latency, and
//! prints a Markdown table.
//!
//! `pushbench server [--clients N] [--messages M] [--count C] [--size S] [--paced-secs T]
//! [--quick] [--listen IP:PORT] [--control IP:PORT]` (`scripts/bench server`)
//!
//! It builds nothing: it starts `bench_server` (next to its own executable) as a child process
//! with `WERKMANN_RUN_DIR` in a fresh temporary directory, then runs three scenarios over
//! loopback, spreading client source addresses over 127.0.0.2–127.0.0.254:
//!
//! 1. **idle** — server RSS (`VmRSS`) before and ~2 s after `N` clients finished their
//!    handshakes: KiB per connection = ΔRSS / N; also connections opened per second.
//! 2. **broadcast** — one `GET /broadcast?n=M&size=S` with the `N` clients connected: server CPU
//!    (its threads' run time) per delivery = ΔCPU / deliveries, and latency per delivery = receive time −
//!    the send time the server stamped into the message.
//! 3. **paced** — 1000 fresh clients, one broadcast every 50 ms for `T` s (default 5).
//!
//! The server is stopped at the end, also on error (and killed if the generator dies).
//! `PUSHBENCH_WRAP="valgrind --tool=dhat"` runs the server under a profiler that keeps
//! its pid (for perf, attach with `perf record -p` instead).
//! Figures are whole-process; the generator shares the machine's cores with the server, so
//! latencies include its own scheduling.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::child::{free_addr, raise_nofile, Args, Child};
use crate::{client, procfs, report};

/// Most clients one generator process may open: the machine allows 20,000 open files per
/// process (hard limit), and the server holds one per connection too.
const MAX_CLIENTS: usize = 19_000;
/// Handshakes in flight at once while opening clients.
const OPEN_CONCURRENCY: usize = 256;
/// How long to let the server settle before the second RSS reading.
const SETTLE: Duration = Duration::from_secs(2);
/// Give up waiting for deliveries after this long without progress.
const STALL: Duration = Duration::from_secs(10);
/// Give up waiting for deliveries after this long in all.
const DELIVERY_CAP: Duration = Duration::from_secs(60);
/// Clients of the paced scenario.
const PACED_CLIENTS: usize = 1000;
/// Broadcasts per second of the paced scenario.
const PACED_RATE: u64 = 20;

const USAGE: &str = "\
Usage: pushbench server [--clients N] [--messages M] [--count C] [--size S] [--paced-secs T]
                        [--quick] [--listen IP:PORT] [--control IP:PORT]
  --clients N     idle and broadcast clients (default 10000, at most 19000)
  --messages M    messages per broadcast burst (default 200)
  --count C       WebSocket instances of the server (default 2)
  --size S        message size in bytes (default 64)
  --paced-secs T  length of the paced scenario (default 5)
  --quick         N=2000, M=50, T=2 (options given after it still apply)
  --listen/--control  server addresses on 127.0.0.0/8 (default: free ports on 127.0.0.1)
";

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    clients: usize,
    messages: usize,
    count: usize,
    size: usize,
    paced_secs: u64,
    listen: Option<SocketAddr>,
    control: Option<SocketAddr>,
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        clients: 10_000,
        messages: 200,
        count: 2,
        size: 64,
        paced_secs: 5,
        listen: None,
        control: None,
    };
    let mut args = Args::new(args, USAGE);
    while let Some((name, inline)) = args.next_option() {
        let mut value = || args.value(&name, &inline);
        match name.as_str() {
            "--clients" => o.clients = value()?.parse().context("--clients")?,
            "--messages" => o.messages = value()?.parse().context("--messages")?,
            "--count" => o.count = value()?.parse().context("--count")?,
            "--size" => o.size = value()?.parse().context("--size")?,
            "--paced-secs" => o.paced_secs = value()?.parse().context("--paced-secs")?,
            "--listen" => o.listen = Some(value()?.parse().context("--listen")?),
            "--control" => o.control = Some(value()?.parse().context("--control")?),
            "--quick" => {
                o.clients = 2000;
                o.messages = 50;
                o.paced_secs = 2;
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    ensure!(
        o.clients <= MAX_CLIENTS,
        "--clients {} is above {MAX_CLIENTS}: this machine limits each process to 20,000 open \
         files (a hard limit), and the server and this generator each hold one per connection. \
         Larger runs need several generator processes, which bench does not do yet.",
        o.clients
    );
    ensure!(o.clients > 0, "--clients must be at least 1");
    ensure!(o.messages > 0, "--messages must be at least 1");
    ensure!(o.count > 0, "--count must be at least 1");
    for addr in [o.listen, o.control].into_iter().flatten() {
        ensure!(
            addr.ip().is_loopback() && addr.is_ipv4(),
            "{addr}: the benchmark only uses 127.0.0.0/8"
        );
    }
    Ok(o)
}

/// Wall-clock time in Unix nanoseconds (the server stamps messages with the same clock).
fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A keep-alive HTTP/1.1 connection to the server's control worker.
struct Control {
    addr: SocketAddr,
    stream: Option<TcpStream>,
}

impl Control {
    fn new(addr: SocketAddr) -> Control {
        Control { addr, stream: None }
    }

    /// `GET path`; the body of a `200` answer, an error otherwise.
    async fn get(&mut self, path: &str) -> Result<String> {
        let r = tokio::time::timeout(Duration::from_secs(10), self.request(path)).await;
        match r {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e.context(format!("GET {path}")))
            }
            Err(_) => {
                self.stream = None;
                bail!("GET {path}: no answer within 10 s")
            }
        }
    }

    async fn request(&mut self, path: &str) -> Result<String> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let s = self.stream.as_mut().expect("connected");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            ensure!(s.read_buf(&mut buf).await? > 0, "connection closed");
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status = head.split_whitespace().nth(1).unwrap_or("");
        let mut length = 0;
        let mut close = false;
        for line in head.lines().skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse().context("content-length")?;
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        while buf.len() < head_end + length {
            ensure!(s.read_buf(&mut buf).await? > 0, "connection closed");
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
        if close {
            self.stream = None;
        }
        ensure!(status == "200", "status {status}: {}", body.trim());
        Ok(body)
    }

    /// The server's `/stats`.
    async fn stats(&mut self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.get("/stats").await?)?)
    }

    /// Open WebSocket connections on the server.
    async fn connections(&mut self) -> Result<u64> {
        self.stats().await?["total"]
            .as_u64()
            .ok_or_else(|| anyhow!("/stats without total"))
    }

    /// Wait until the server counts `want` WebSocket connections.
    async fn wait_connections(&mut self, want: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.connections().await?;
            if have == want {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the server counts {have} WebSocket connections, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What the clients received: a delivery count and each delivery's latency.
#[derive(Default)]
struct Recorder {
    received: AtomicU64,
    /// Unix nanoseconds of the last delivery.
    last: AtomicU64,
    /// Latencies in nanoseconds.
    samples: Mutex<Vec<u64>>,
}

impl Recorder {
    fn reset(&self) {
        self.received.store(0, Ordering::SeqCst);
        self.last.store(0, Ordering::SeqCst);
        self.samples.lock().expect("samples lock").clear();
    }

    fn record(&self, now: u64, frames: u64, latencies: &[u64]) {
        if frames == 0 {
            return;
        }
        if !latencies.is_empty() {
            self.samples
                .lock()
                .expect("samples lock")
                .extend_from_slice(latencies);
        }
        self.last.fetch_max(now, Ordering::Relaxed);
        self.received.fetch_add(frames, Ordering::Relaxed);
    }

    /// Wait until `want` deliveries arrived, or nothing arrived for [`STALL`], or
    /// [`DELIVERY_CAP`] passed. Returns the number received.
    async fn wait_for(&self, want: u64) -> u64 {
        let start = Instant::now();
        let mut last_count = 0;
        let mut last_progress = Instant::now();
        loop {
            let n = self.received.load(Ordering::Relaxed);
            if n >= want {
                return n;
            }
            if n != last_count {
                last_count = n;
                last_progress = Instant::now();
            }
            if last_progress.elapsed() > STALL || start.elapsed() > DELIVERY_CAP {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Latency percentiles of what was recorded, in nanoseconds.
    fn percentiles(&self) -> Option<Latency> {
        let mut s = std::mem::take(&mut *self.samples.lock().expect("samples lock"));
        if s.is_empty() {
            return None;
        }
        s.sort_unstable();
        let at = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        Some(Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: *s.last().expect("not empty"),
        })
    }
}

/// Latency percentiles in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

/// Parse the complete server frames at the start of `buf`. For each data frame, push its
/// latency (`now` − the stamp at its start) and count it. Returns the bytes consumed, the data
/// frames seen and whether a close frame came.
fn parse_frames(buf: &[u8], now: u64, latencies: &mut Vec<u64>) -> Result<(usize, u64, bool)> {
    let mut pos = 0;
    let mut frames = 0;
    while let Some(f) = client::server_frame(&buf[pos..])? {
        let payload = &buf[pos + f.payload.start..pos + f.payload.end];
        pos += f.len;
        match f.opcode {
            0x0..=0x2 => {
                frames += 1;
                let digits = payload.iter().take_while(|c| c.is_ascii_digit()).count();
                let stamp = std::str::from_utf8(&payload[..digits])
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                if let Some(sent) = stamp {
                    latencies.push(now.saturating_sub(sent));
                }
            }
            0x8 => return Ok((pos, frames, true)),
            _ => {}
        }
    }
    Ok((pos, frames, false))
}

/// Read frames until the connection closes, recording what arrives.
async fn receive(mut stream: TcpStream, mut buf: Vec<u8>, rec: Arc<Recorder>) {
    let mut latencies = Vec::new();
    loop {
        let now = unix_nanos();
        latencies.clear();
        let (used, frames, closed) = match parse_frames(&buf, now, &mut latencies) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("client: {e}");
                return;
            }
        };
        rec.record(now, frames, &latencies);
        buf.drain(..used);
        if closed {
            return;
        }
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(8192);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A set of open clients; dropping it closes them.
struct Clients {
    tasks: Vec<JoinHandle<()>>,
    opened: usize,
    failed: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Drop for Clients {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Open `n` clients (at most [`OPEN_CONCURRENCY`] handshakes at once) and wait for every
/// handshake to finish or fail.
async fn open_clients(n: usize, target: SocketAddr, rec: &Arc<Recorder>) -> Clients {
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (sem, tx, rec) = (sem.clone(), tx.clone(), rec.clone());
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let r = tokio::time::timeout(
                Duration::from_secs(15),
                client::connect_ws(i as u32, target, "/", None),
            )
            .await;
            drop(permit);
            match r {
                Ok(Ok((stream, rest))) => {
                    let _ = tx.send(Ok(()));
                    receive(stream, rest, rec).await;
                }
                Ok(Err(e)) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                }
                Err(_) => {
                    let _ = tx.send(Err("connect and handshake took over 15 s".into()));
                }
            }
        }));
    }
    drop(tx);
    let mut clients = Clients {
        tasks,
        opened: 0,
        failed: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    while let Some(r) = rx.recv().await {
        match r {
            Ok(()) => clients.opened += 1,
            Err(e) => {
                clients.failed += 1;
                clients.first_error.get_or_insert(e);
            }
        }
        if clients.opened + clients.failed == n {
            break;
        }
    }
    clients.elapsed = start.elapsed();
    clients
}

/// One row of the results table.
#[derive(Default)]
struct Row {
    scenario: String,
    clients: usize,
    messages: Option<u64>,
    kib_per_conn: Option<f64>,
    conns_per_s: Option<f64>,
    deliveries_per_s: Option<f64>,
    cpu_us: Option<f64>,
    latency: Option<Latency>,
    missing: Option<u64>,
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

fn print_table(rows: &[Row]) {
    let header = [
        "scenario",
        "N",
        "M",
        "KiB/conn",
        "conns/s",
        "deliveries/s",
        "µs CPU/delivery",
        "p50",
        "p90",
        "p99",
        "max",
        "missing",
    ];
    let dash = || "-".to_string();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let lat = |f: fn(&Latency) -> u64| r.latency.as_ref().map(|l| ms(f(l)));
            vec![
                r.scenario.clone(),
                r.clients.to_string(),
                r.messages.map(|m| m.to_string()).unwrap_or_else(dash),
                r.kib_per_conn
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(dash),
                r.conns_per_s
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(dash),
                r.deliveries_per_s
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(dash),
                r.cpu_us.map(|v| format!("{v:.3}")).unwrap_or_else(dash),
                lat(|l| l.p50).unwrap_or_else(dash),
                lat(|l| l.p90).unwrap_or_else(dash),
                lat(|l| l.p99).unwrap_or_else(dash),
                lat(|l| l.max).unwrap_or_else(dash),
                r.missing.map(|v| v.to_string()).unwrap_or_else(dash),
            ]
        })
        .collect();
    print!("{}", report::aligned(&header, &cells));
}

/// Run the scenarios against a started server; returns the table rows and notes.
async fn run(
    o: &Options,
    server: &mut Child,
    listen: SocketAddr,
    control_addr: SocketAddr,
) -> Result<(Vec<Row>, Vec<String>)> {
    let pid = server.pid();
    server
        .wait_ports(&[listen, control_addr], Duration::from_secs(15))
        .await?;
    let mut control = Control::new(control_addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = control.stats().await?["ready"].as_u64().unwrap_or(0);
        if ready == o.count as u64 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {ready} of {} WebSocket instances started",
            o.count
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rec = Arc::new(Recorder::default());
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let n = o.clients;

    // 1. Idle connections.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = procfs::rss_kib(pid);
    let clients = open_clients(n, listen, &rec).await;
    ensure!(
        clients.opened > 0,
        "no client connected: {}",
        clients.first_error.clone().unwrap_or_default()
    );
    if clients.failed > 0 {
        notes.push(format!(
            "idle: {} of {n} clients failed to open (first error: {})",
            clients.failed,
            clients.first_error.clone().unwrap_or_default()
        ));
    }
    let opened = clients.opened;
    control
        .wait_connections(opened as u64, Duration::from_secs(15))
        .await?;
    tokio::time::sleep(SETTLE).await;
    let rss1 = procfs::rss_kib(pid);
    notes.push(format!(
        "server pid {pid}, {} threads, {} WebSocket instances; RSS {rss0} KiB before, {rss1} KiB \
         with {opened} idle clients",
        procfs::status_number(pid, "Threads:").unwrap_or(0),
        o.count
    ));
    rows.push(Row {
        scenario: "idle".into(),
        clients: opened,
        kib_per_conn: Some(rss1.saturating_sub(rss0) as f64 / opened as f64),
        conns_per_s: Some(opened as f64 / clients.elapsed.as_secs_f64()),
        ..Row::default()
    });

    // 2. A burst of M broadcasts to every idle client.
    let m = o.messages as u64;
    let (row, note) = deliveries("broadcast", opened, m, pid, &rec, async {
        control
            .get(&format!("/broadcast?n={m}&size={}", o.size))
            .await
            .map(|_| ())
    })
    .await?;
    rows.push(row);
    notes.push(note);
    tokio::time::sleep(SETTLE).await;
    let rss2 = procfs::rss_kib(pid);
    notes.push(format!(
        "RSS {rss2} KiB with the same clients idle again after the burst: {:.2} KiB per \
         connection over the first reading (what a burst leaves behind)",
        rss2.saturating_sub(rss0) as f64 / opened as f64
    ));

    // 3. Paced broadcasts to fresh clients.
    drop(clients);
    control
        .wait_connections(0, Duration::from_secs(20))
        .await
        .context("closing the idle clients")?;
    let paced_clients = open_clients(PACED_CLIENTS, listen, &rec).await;
    ensure!(
        paced_clients.failed == 0,
        "paced: {} clients failed to open (first error: {})",
        paced_clients.failed,
        paced_clients.first_error.clone().unwrap_or_default()
    );
    control
        .wait_connections(PACED_CLIENTS as u64, Duration::from_secs(15))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pushes = PACED_RATE * o.paced_secs;
    let size = o.size;
    let (row, note) = deliveries(
        &format!("paced {PACED_RATE}/s × {} s", o.paced_secs),
        PACED_CLIENTS,
        pushes,
        pid,
        &rec,
        async {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / PACED_RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for _ in 0..pushes {
                tick.tick().await;
                control.get(&format!("/broadcast?n=1&size={size}")).await?;
            }
            Ok(())
        },
    )
    .await?;
    rows.push(row);
    notes.push(note);
    drop(paced_clients);

    let stats = control.stats().await?;
    notes.push(format!(
        "server broadcast reports: {} accepted, {} dropped",
        stats["delivered"], stats["failed"]
    ));
    Ok((rows, notes))
}

/// Measure one delivery scenario: server CPU and the clients' deliveries while `trigger`
/// runs and until `clients × messages` deliveries arrived (or stalled).
async fn deliveries(
    name: &str,
    clients: usize,
    messages: u64,
    pid: u32,
    rec: &Recorder,
    trigger: impl std::future::Future<Output = Result<()>>,
) -> Result<(Row, String)> {
    rec.reset();
    let expected = clients as u64 * messages;
    let gen0 = procfs::cpu_ns(std::process::id());
    let cpu0 = procfs::cpu_ns(pid);
    let t0 = unix_nanos();
    trigger.await?;
    let got = rec.wait_for(expected).await;
    let cpu1 = procfs::cpu_ns(pid);
    let gen1 = procfs::cpu_ns(std::process::id());
    let last = rec.last.load(Ordering::Relaxed);
    let secs = last.saturating_sub(t0) as f64 / 1e9;
    let server_us = cpu1.saturating_sub(cpu0) as f64 / 1e3;
    let row = Row {
        scenario: name.to_string(),
        clients,
        messages: Some(messages),
        deliveries_per_s: (secs > 0.0).then(|| got as f64 / secs),
        cpu_us: (got > 0).then(|| server_us / got as f64),
        latency: rec.percentiles(),
        missing: Some(expected.saturating_sub(got)),
        ..Row::default()
    };
    let note = format!(
        "{name}: {got} of {expected} deliveries in {secs:.2} s; server CPU {:.0} ms, generator \
         CPU {:.0} ms",
        server_us / 1e3,
        gen1.saturating_sub(gen0) as f64 / 1e6
    );
    Ok((row, note))
}

/// `pushbench server [options]`.
pub async fn main(args: &[String]) -> Result<()> {
    let o = parse_options(args)?;
    raise_nofile(o.clients.max(PACED_CLIENTS) as u64 + 200)?;
    let listen = match o.listen {
        Some(a) => a,
        None => free_addr()?,
    };
    let control = match o.control {
        Some(a) => a,
        None => free_addr()?,
    };
    ensure!(listen != control, "--listen and --control must differ");
    println!(
        "bench: {} clients, {} messages of {} bytes, {} server instances, paced {} s \
         (server on {listen}, control on {control})",
        o.clients, o.messages, o.size, o.count, o.paced_secs
    );
    let exe = std::env::current_exe()?.with_file_name("bench_server");
    ensure!(
        exe.exists(),
        "{} not found; build it with `cargo build --release -p bench` (scripts/bench server does)",
        exe.display()
    );
    let dir = std::env::temp_dir().join(format!("werkmann-bench-{}", std::process::id()));
    let mut cmd = Command::new(&exe);
    cmd.args(["start", "--listen", &listen.to_string()])
        .args(["--control", &control.to_string()])
        .args(["--count", &o.count.to_string()]);
    let mut server = Child::spawn("bench_server", cmd, &dir, true)?;
    let result = tokio::select! {
        r = run(&o, &mut server, listen, control) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let result = result.map_err(|e| {
        let tail = server.tail();
        if tail.is_empty() || format!("{e:#}").contains(&tail) {
            e
        } else {
            anyhow!("{e:#}\n--- server log (tail) ---\n{tail}")
        }
    });
    server.stop();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let (rows, notes) = result?;
    println!();
    print_table(&rows);
    println!();
    for n in notes {
        println!("- {n}");
    }
    Ok(())
}
