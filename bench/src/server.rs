//! `pushbench server`: the framework alone. A load generator for `bench_server` (a werkmann
//! server that stamps its own broadcasts, `src/bin/bench_server.rs`): measures server RSS per
//! idle connection and server CPU per broadcast delivery, with delivery latency, for WebSocket
//! clients and for Server-Sent Events clients side by side, and prints a Markdown table.
//!
//! `pushbench server [--clients N] [--messages M] [--count C] [--size S] [--paced-secs T]
//! [--protocols websocket,sse,sse-queued] [--repeats R] [--quick] [--listen IP:PORT] [--control IP:PORT]`
//! (`scripts/bench server`)
//!
//! It builds nothing: it starts `bench_server` (next to its own executable) as a child process
//! with `WERKMANN_RUN_DIR` in a fresh temporary directory — a fresh one for each protocol of
//! each round, so that no run reuses memory another freed — then runs three scenarios over
//! loopback, spreading client source addresses over 127.0.0.2–127.0.0.254:
//!
//! 1. **idle** — server RSS (`VmRSS`) before and ~2 s after `N` clients finished their
//!    handshakes: KiB per connection = ΔRSS / N; also connections opened per second.
//! 2. **broadcast** — one `GET /broadcast?n=M&size=S` with the `N` clients connected: server CPU
//!    (its threads' run time) per delivery = ΔCPU / deliveries, and latency per delivery = receive time −
//!    the send time the server stamped into the message.
//! 3. **paced** — 1000 fresh clients, one broadcast every 50 ms for `T` s (default 5).
//!
//! The clients are WebSocket clients (`websocket`), or Server-Sent Events clients (`sse`): plain
//! TCP, `GET /sse` with `Accept: text/event-stream`, then the chunked body parsed into events and
//! their `data:` lines, as a browser's `EventSource` reads it (`bench_server --sse-listen`, and
//! `/broadcast?proto=sse`); `sse-queued` is the same with the server fanning each event out
//! through `WorkerInstance::send_to` (writes queued and coalesced, as `broadcast` does) instead
//! of one `conn.send` per stream. Rounds (`--repeats`, default 3) run each protocol once, the order
//! alternating from round to round; the table shows each figure's median over the rounds.
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

/// How the clients receive pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// WebSocket text frames.
    Ws,
    /// Server-Sent Events on a chunked HTTP/1.1 response, the server sending each event with
    /// `conn.send` to each stream.
    Sse,
    /// The same, the server sending each event with `WorkerInstance::send_to(streams, …)`.
    SseQueued,
}

impl Proto {
    fn label(self) -> &'static str {
        match self {
            Proto::Ws => "WebSocket",
            Proto::Sse => "SSE",
            Proto::SseQueued => "SSE, send_to",
        }
    }

    /// The prefix of its fields in the server's `/stats`.
    fn stats_prefix(self) -> &'static str {
        match self {
            Proto::Ws => "",
            Proto::Sse | Proto::SseQueued => "sse_",
        }
    }

    /// The `proto` parameter of `/broadcast`.
    fn param(self) -> &'static str {
        match self {
            Proto::Ws => "ws",
            Proto::Sse => "sse",
            Proto::SseQueued => "sse&via=send_to",
        }
    }
}

const USAGE: &str = "\
Usage: pushbench server [--clients N] [--messages M] [--count C] [--size S] [--paced-secs T]
                        [--protocols LIST] [--repeats R] [--quick]
                        [--listen IP:PORT] [--control IP:PORT] [--sse-listen IP:PORT]
  --clients N     idle and broadcast clients (default 10000, at most 19000)
  --messages M    messages per broadcast burst (default 200)
  --count C       WebSocket (and SSE) instances of the server (default 2)
  --size S        message size in bytes (SSE: of the event's data; default 64)
  --paced-secs T  length of the paced scenario (default 5)
  --protocols LIST  websocket, sse, sse-queued, comma-separated (default: all three;
                  sse: the server sends each event with conn.send to each stream,
                  sse-queued: with WorkerInstance::send_to, writes queued and coalesced)
  --repeats R     rounds, each running every protocol once, medians shown (default 3)
  --quick         N=2000, M=50, T=2, R=1 (options given after it still apply)
  --listen/--control/--sse-listen  server addresses on 127.0.0.0/8 (default: free ports on
                  127.0.0.1)
";

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    clients: usize,
    messages: usize,
    count: usize,
    size: usize,
    paced_secs: u64,
    protocols: Vec<Proto>,
    repeats: usize,
    listen: Option<SocketAddr>,
    control: Option<SocketAddr>,
    sse_listen: Option<SocketAddr>,
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        clients: 10_000,
        messages: 200,
        count: 2,
        size: 64,
        paced_secs: 5,
        protocols: vec![Proto::Ws, Proto::Sse, Proto::SseQueued],
        repeats: 3,
        listen: None,
        control: None,
        sse_listen: None,
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
            "--sse-listen" => o.sse_listen = Some(value()?.parse().context("--sse-listen")?),
            "--repeats" => o.repeats = value()?.parse().context("--repeats")?,
            "--protocols" => {
                o.protocols = Vec::new();
                for p in value()?.split(',').filter(|p| !p.is_empty()) {
                    let p = match p {
                        "websocket" | "ws" => Proto::Ws,
                        "sse" => Proto::Sse,
                        "sse-queued" => Proto::SseQueued,
                        other => bail!(
                            "--protocols: unknown protocol {other} (websocket, sse, sse-queued)"
                        ),
                    };
                    if !o.protocols.contains(&p) {
                        o.protocols.push(p);
                    }
                }
            }
            "--quick" => {
                o.clients = 2000;
                o.messages = 50;
                o.paced_secs = 2;
                o.repeats = 1;
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
    ensure!(o.repeats > 0, "--repeats must be at least 1");
    ensure!(!o.protocols.is_empty(), "--protocols must name one");
    for addr in [o.listen, o.control, o.sse_listen].into_iter().flatten() {
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

    /// Open connections (event streams for SSE) on the server.
    async fn connections(&mut self, proto: Proto) -> Result<u64> {
        let key = format!("{}total", proto.stats_prefix());
        self.stats().await?[key.as_str()]
            .as_u64()
            .ok_or_else(|| anyhow!("/stats without {key}"))
    }

    /// Wait until the server counts `want` connections of `proto`.
    async fn wait_connections(&mut self, proto: Proto, want: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.connections(proto).await?;
            if have == want {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the server counts {have} {} connections, expected {want}",
                proto.label()
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

/// Where a Server-Sent Events client is in its chunked response body.
#[derive(Default)]
struct SseReader {
    /// The decoded body not yet read as whole events.
    body: Vec<u8>,
    /// The response ended (the last chunk).
    ended: bool,
}

impl SseReader {
    /// Decode the complete chunks at the start of `raw` into the body, then read its complete
    /// events: each event with a `data:` field counts, and a stamp at the start of its data
    /// gives a latency (`now` − stamp). Returns the bytes of `raw` consumed and the events.
    fn feed(&mut self, raw: &[u8], now: u64, latencies: &mut Vec<u64>) -> Result<(usize, u64)> {
        let mut pos = 0;
        while !self.ended {
            let Some(eol) = find(&raw[pos..], b"\r\n") else {
                ensure!(raw.len() - pos < 1024, "chunk-size line too long");
                break;
            };
            let line = std::str::from_utf8(&raw[pos..pos + eol]).context("chunk-size line")?;
            let hex = line.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(hex, 16).with_context(|| format!("chunk size {hex:?}"))?;
            let start = pos + eol + 2;
            if size == 0 {
                self.ended = true;
                pos = start;
                break;
            }
            if raw.len() < start + size + 2 {
                break;
            }
            ensure!(
                &raw[start + size..start + size + 2] == b"\r\n",
                "chunk data not followed by CRLF"
            );
            self.body.extend_from_slice(&raw[start..start + size]);
            pos = start + size + 2;
        }
        let mut events = 0;
        let mut at = 0;
        while let Some(end) = find(&self.body[at..], b"\n\n") {
            let event = &self.body[at..at + end];
            at += end + 2;
            let mut data = None;
            for line in event.split(|&c| c == b'\n') {
                if let Some(v) = line.strip_prefix(b"data:") {
                    data.get_or_insert(v.strip_prefix(b" ").unwrap_or(v));
                }
            }
            let Some(data) = data else { continue };
            events += 1;
            let digits = data.iter().take_while(|c| c.is_ascii_digit()).count();
            if let Some(sent) = std::str::from_utf8(&data[..digits])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                latencies.push(now.saturating_sub(sent));
            }
        }
        self.body.drain(..at);
        Ok((pos, events))
    }
}

/// Read events until the stream ends or the connection closes, recording what arrives.
async fn receive_sse(mut stream: TcpStream, mut buf: Vec<u8>, rec: Arc<Recorder>) {
    let mut reader = SseReader::default();
    let mut latencies = Vec::new();
    loop {
        let now = unix_nanos();
        latencies.clear();
        let (used, events) = match reader.feed(&buf, now, &mut latencies) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("SSE client: {e:#}");
                return;
            }
        };
        rec.record(now, events, &latencies);
        buf.drain(..used);
        if reader.ended {
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

/// Connect SSE client `idx` from its loopback source address and read the response head of
/// `GET /sse`; returns the stream and the bytes read past the head (the body's start).
async fn connect_sse(idx: u32, target: SocketAddr) -> Result<(TcpStream, Vec<u8>)> {
    let mut stream = client::connect_from(idx, target, None).await?;
    let req = format!(
        "GET /sse HTTP/1.1\r\nHost: {target}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
            ensure!(
                head.starts_with("http/1.1 200")
                    && head.contains("text/event-stream")
                    && head.contains("transfer-encoding: chunked"),
                "not a chunked event stream: {}",
                head.lines().next().unwrap_or("")
            );
            buf.drain(..p + 4);
            return Ok((stream, buf));
        }
        ensure!(buf.len() < 16384, "response head too long");
        ensure!(
            stream.read_buf(&mut buf).await? > 0,
            "closed before the response head"
        );
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
async fn open_clients(n: usize, target: SocketAddr, proto: Proto, rec: &Arc<Recorder>) -> Clients {
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (sem, tx, rec) = (sem.clone(), tx.clone(), rec.clone());
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let r = tokio::time::timeout(Duration::from_secs(15), async {
                match proto {
                    Proto::Ws => client::connect_ws(i as u32, target, "/", None).await,
                    Proto::Sse | Proto::SseQueued => connect_sse(i as u32, target).await,
                }
            })
            .await;
            drop(permit);
            match r {
                Ok(Ok((stream, rest))) => {
                    let _ = tx.send(Ok(()));
                    match proto {
                        Proto::Ws => receive(stream, rest, rec).await,
                        Proto::Sse | Proto::SseQueued => receive_sse(stream, rest, rec).await,
                    }
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
#[derive(Default, Clone)]
struct Row {
    scenario: String,
    proto: String,
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

/// The median of `values` (the upper one of an even count); `None` when empty.
fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> Option<T> {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len() / 2).copied()
}

/// One row of each figure's median over `rows` (the runs of one scenario and protocol).
fn median_row(rows: &[Row]) -> Row {
    let f = |get: fn(&Row) -> Option<f64>| median(rows.iter().filter_map(get).collect());
    let lat = |get: fn(&Latency) -> u64| {
        median(
            rows.iter()
                .filter_map(|r| r.latency.as_ref().map(get))
                .collect(),
        )
    };
    Row {
        scenario: rows[0].scenario.clone(),
        proto: rows[0].proto.clone(),
        clients: median(rows.iter().map(|r| r.clients).collect()).unwrap_or(0),
        messages: rows[0].messages,
        kib_per_conn: f(|r| r.kib_per_conn),
        conns_per_s: f(|r| r.conns_per_s),
        deliveries_per_s: f(|r| r.deliveries_per_s),
        cpu_us: f(|r| r.cpu_us),
        latency: lat(|l| l.p50).map(|p50| Latency {
            p50,
            p90: lat(|l| l.p90).unwrap_or(0),
            p99: lat(|l| l.p99).unwrap_or(0),
            max: lat(|l| l.max).unwrap_or(0),
        }),
        missing: median(rows.iter().filter_map(|r| r.missing).collect()),
    }
}

fn print_table(rows: &[Row]) {
    let header = [
        "scenario",
        "protocol",
        "N",
        "M",
        "KiB/conn",
        "conns/s",
        "deliveries/s",
        "µs CPU/delivery",
        "deliveries/CPU-s",
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
                r.proto.clone(),
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
                r.cpu_us
                    .filter(|v| *v > 0.0)
                    .map(|v| format!("{:.0}", 1e6 / v))
                    .unwrap_or_else(dash),
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
    proto: Proto,
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
    let ready_key = format!("{}ready", proto.stats_prefix());
    loop {
        let ready = control.stats().await?[ready_key.as_str()]
            .as_u64()
            .unwrap_or(0);
        if ready == o.count as u64 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {ready} of {} {} instances started",
            o.count,
            proto.label()
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
    let clients = open_clients(n, listen, proto, &rec).await;
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
        .wait_connections(proto, opened as u64, Duration::from_secs(15))
        .await?;
    tokio::time::sleep(SETTLE).await;
    let rss1 = procfs::rss_kib(pid);
    notes.push(format!(
        "{}: server pid {pid}, {} threads, {} instances; RSS {rss0} KiB before, {rss1} KiB with \
         {opened} idle clients",
        proto.label(),
        procfs::status_number(pid, "Threads:").unwrap_or(0),
        o.count
    ));
    rows.push(Row {
        scenario: "idle".into(),
        proto: proto.label().into(),
        clients: opened,
        kib_per_conn: Some(rss1.saturating_sub(rss0) as f64 / opened as f64),
        conns_per_s: Some(opened as f64 / clients.elapsed.as_secs_f64()),
        ..Row::default()
    });

    // 2. A burst of M broadcasts to every idle client.
    let m = o.messages as u64;
    let (row, note) = deliveries("broadcast", proto, opened, m, pid, &rec, async {
        control
            .get(&format!(
                "/broadcast?n={m}&size={}&proto={}",
                o.size,
                proto.param()
            ))
            .await
            .map(|_| ())
    })
    .await?;
    rows.push(row);
    notes.push(note);
    tokio::time::sleep(SETTLE).await;
    let rss2 = procfs::rss_kib(pid);
    notes.push(format!(
        "{}: RSS {rss2} KiB with the same clients idle again after the burst: {:.2} KiB per \
         connection over the first reading (what a burst leaves behind)",
        proto.label(),
        rss2.saturating_sub(rss0) as f64 / opened as f64
    ));

    // 3. Paced broadcasts to fresh clients.
    drop(clients);
    control
        .wait_connections(proto, 0, Duration::from_secs(20))
        .await
        .context("closing the idle clients")?;
    let paced_clients = open_clients(PACED_CLIENTS, listen, proto, &rec).await;
    ensure!(
        paced_clients.failed == 0,
        "paced: {} clients failed to open (first error: {})",
        paced_clients.failed,
        paced_clients.first_error.clone().unwrap_or_default()
    );
    control
        .wait_connections(proto, PACED_CLIENTS as u64, Duration::from_secs(15))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pushes = PACED_RATE * o.paced_secs;
    let size = o.size;
    let (row, note) = deliveries(
        &format!("paced {PACED_RATE}/s × {} s", o.paced_secs),
        proto,
        PACED_CLIENTS,
        pushes,
        pid,
        &rec,
        async {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / PACED_RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for _ in 0..pushes {
                tick.tick().await;
                control
                    .get(&format!(
                        "/broadcast?n=1&size={size}&proto={}",
                        proto.param()
                    ))
                    .await?;
            }
            Ok(())
        },
    )
    .await?;
    rows.push(row);
    notes.push(note);
    drop(paced_clients);

    let stats = control.stats().await?;
    let p = proto.stats_prefix();
    notes.push(format!(
        "{}: server broadcast reports: {} accepted, {} dropped",
        proto.label(),
        stats[format!("{p}delivered").as_str()],
        stats[format!("{p}failed").as_str()]
    ));
    Ok((rows, notes))
}

/// Measure one delivery scenario: server CPU and the clients' deliveries while `trigger`
/// runs and until `clients × messages` deliveries arrived (or stalled).
async fn deliveries(
    name: &str,
    proto: Proto,
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
        proto: proto.label().into(),
        clients,
        messages: Some(messages),
        deliveries_per_s: (secs > 0.0).then(|| got as f64 / secs),
        cpu_us: (got > 0).then(|| server_us / got as f64),
        latency: rec.percentiles(),
        missing: Some(expected.saturating_sub(got)),
        ..Row::default()
    };
    let note = format!(
        "{name} ({}): {got} of {expected} deliveries in {secs:.2} s; server CPU {:.0} ms, \
         generator CPU {:.0} ms",
        proto.label(),
        server_us / 1e3,
        gen1.saturating_sub(gen0) as f64 / 1e6
    );
    Ok((row, note))
}

/// Start a fresh `bench_server` and run the scenarios for `proto` against it.
async fn session(
    o: &Options,
    proto: Proto,
    exe: &std::path::Path,
    listen: SocketAddr,
    control: SocketAddr,
    sse_listen: SocketAddr,
) -> Result<(Vec<Row>, Vec<String>)> {
    let dir = std::env::temp_dir().join(format!("werkmann-bench-{}", std::process::id()));
    let mut cmd = Command::new(exe);
    cmd.args(["start", "--listen", &listen.to_string()])
        .args(["--control", &control.to_string()])
        .args(["--sse-listen", &sse_listen.to_string()])
        .args(["--count", &o.count.to_string()]);
    let mut server = Child::spawn("bench_server", cmd, &dir, true)?;
    let target = match proto {
        Proto::Ws => listen,
        Proto::Sse | Proto::SseQueued => sse_listen,
    };
    let result = tokio::select! {
        r = run(o, proto, &mut server, target, control) => r,
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
    result
}

/// `pushbench server [options]`.
pub async fn main(args: &[String]) -> Result<()> {
    let o = parse_options(args)?;
    raise_nofile(o.clients.max(PACED_CLIENTS) as u64 + 200)?;
    let pick = |a: Option<SocketAddr>| match a {
        Some(a) => Ok(a),
        None => free_addr(),
    };
    let (listen, control, sse_listen) = (pick(o.listen)?, pick(o.control)?, pick(o.sse_listen)?);
    ensure!(
        listen != control && listen != sse_listen && control != sse_listen,
        "--listen, --control and --sse-listen must differ"
    );
    let names: Vec<&str> = o.protocols.iter().map(|p| p.label()).collect();
    println!(
        "bench: {} clients, {} messages of {} bytes, {} server instances, paced {} s, {} × {} \
         (WebSocket on {listen}, SSE on {sse_listen}, control on {control}; load average {})",
        o.clients,
        o.messages,
        o.size,
        o.count,
        o.paced_secs,
        o.repeats,
        names.join(" and "),
        loadavg()
    );
    let exe = std::env::current_exe()?.with_file_name("bench_server");
    ensure!(
        exe.exists(),
        "{} not found; build it with `cargo build --release -p bench` (scripts/bench server does)",
        exe.display()
    );
    let mut runs: Vec<Row> = Vec::new();
    let mut notes = Vec::new();
    for round in 0..o.repeats {
        let mut order = o.protocols.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for proto in order {
            let (rows, n) = session(&o, proto, &exe, listen, control, sse_listen).await?;
            runs.extend(rows);
            if o.repeats > 1 {
                notes.extend(n.into_iter().map(|n| format!("round {}: {n}", round + 1)));
            } else {
                notes.extend(n);
            }
        }
    }
    notes.push(format!("load average at the end: {}", loadavg()));
    // One row per scenario and protocol, the protocols of a scenario next to each other.
    let mut rows = Vec::new();
    let mut scenarios: Vec<String> = Vec::new();
    for r in &runs {
        if !scenarios.contains(&r.scenario) {
            scenarios.push(r.scenario.clone());
        }
    }
    for sc in &scenarios {
        for p in &o.protocols {
            let same: Vec<Row> = runs
                .iter()
                .filter(|r| &r.scenario == sc && r.proto == p.label())
                .cloned()
                .collect();
            if !same.is_empty() {
                rows.push(median_row(&same));
            }
        }
    }
    println!();
    if o.repeats > 1 {
        println!("Medians of {} rounds:", o.repeats);
        println!();
    }
    print_table(&rows);
    println!();
    for n in notes {
        println!("- {n}");
    }
    Ok(())
}

/// The machine's load averages (1, 5, 15 minutes), as `/proc/loadavg` has them.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chunked_events_in_pieces() {
        let ev = |d: &str| {
            let e = format!("data: {d}\n\n");
            format!("{:x}\r\n{e}\r\n", e.len())
        };
        let wire = format!("{}{}{}0\r\n\r\n", ev("100 xx"), ev("200 y"), ev("abc"));
        let wire = wire.as_bytes();
        let mut r = SseReader::default();
        let mut lat = Vec::new();
        let mut buf = Vec::new();
        let mut events = 0;
        for b in wire {
            buf.push(*b);
            let (used, n) = r.feed(&buf, 1000, &mut lat).unwrap();
            buf.drain(..used);
            events += n;
        }
        assert_eq!(events, 3);
        assert_eq!(lat, vec![900, 800]);
        assert!(r.ended);
    }
}
