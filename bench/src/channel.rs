//! `pushbench channel`: throughput benchmark of the channel server: events per second from one pipelining publisher
//! to 1, 10 and 100 subscribers, every event checked (none lost, none reordered), printed as a
//! Markdown table.
//!
//! `pushbench channel [--subscribers 1,10,100] [--events E] [--quick] [--batch BYTES]
//! [--listen 127.0.0.1:PORT] [--bin-dir DIR]`
//!
//! It builds nothing: it starts `start_channel` (next to its own executable, or in `--bin-dir`,
//! e.g. an older build's for `pushbench all --baseline`) as a child process
//! with `WERKMANN_RUN_DIR` in a fresh temporary directory and waits for its port. Then, for each
//! subscriber count S:
//!
//! 1. S raw TCP connections subscribe to `Broadcast` (the Channel wire format: 4-byte big-endian
//!    total length, PHP `serialize` payloads), and a publisher connection publishes a marker
//!    event until every subscriber has seen one — the subscriptions are then in place.
//! 2. The publisher pipelines E `publish` commands (data: a 32-byte PHP string starting with a
//!    12-digit sequence number) in large batches without waiting for anything, while every
//!    subscriber reads and checks each event: the count, and a strictly increasing sequence
//!    with no gaps.
//! 3. Wall time runs from the first publish to the last delivery at the slowest subscriber:
//!    deliveries/s = received / time. Server CPU (its threads' run time, schedstat) per
//!    delivery, the server's peak RSS during the row (`VmHWM`, reset before the row through
//!    `/proc/PID/clear_refs` when allowed), and how fast the server took the publisher's
//!    commands (publish cmds/s = E / time until the publisher's last byte was accepted).
//!
//! Reading it: the server is a single channel instance (one thread), so when its CPU is close to
//! 100% of one core over the row, the server is the bottleneck and the figure is its limit; when
//! it is well below, the generator (or another process — the notes give the machine's busy CPU
//! besides both) was. Publish cmds/s close to deliveries/s ÷ S means the server took the
//! publisher's commands as fast as it delivered them.
//!
//! The server is stopped at the end, also on error (and killed if the generator dies).
//! `PUSHBENCH_WRAP="valgrind --tool=callgrind"` runs the server under a profiler that keeps
//! its pid (for perf, attach with `perf record -p` instead). The generator shares the machine's
//! cores with the server; the notes say how much CPU each used.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use werkmann::channel::php_serde::Key;
use werkmann::channel::wire::{self, Command as ChannelCommand, Delivery, DeliveryKind, WireName};

use crate::child::{free_addr, raise_nofile, Args, Child};
use crate::{procfs, report};

/// The channel every subscriber listens to.
const CHANNEL: &str = "Broadcast";
/// The marker event's data (published until every subscriber has seen it).
const MARKER: &[u8] = b"s:6:\"marker\";";
/// Digits of the sequence number at the start of each event's 32-byte data.
const SEQ_DIGITS: usize = 12;
/// Filler after the sequence number: 32 − 12 bytes.
const FILLER: &[u8] = b"xxxxxxxxxxxxxxxxxxxx";
/// Size of a subscriber's read buffer.
const READ_BUF: usize = 256 * 1024;
/// Give up on a subscriber after this long without any byte.
const STALL: Duration = Duration::from_secs(10);
/// Most time to wait for the subscriptions to be in place.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default rows: (subscribers, events).
const DEFAULT_ROWS: [(usize, u64); 3] = [(1, 5_000_000), (10, 2_000_000), (100, 250_000)];
/// Rows of `--quick`.
const QUICK_ROWS: [(usize, u64); 3] = [(1, 500_000), (10, 200_000), (100, 25_000)];

const USAGE: &str = "\
Usage: pushbench channel [--subscribers LIST] [--events E] [--quick] [--batch BYTES]
                         [--listen 127.0.0.1:PORT] [--bin-dir DIR]
  --subscribers LIST  comma-separated subscriber counts (default 1,10,100)
  --events E          events per row, for every row (default 5000000 for 1 subscriber,
                      2000000 for 10, 250000 for 100, 20000000/S otherwise)
  --quick             a tenth of the default events (--events given after it still applies)
  --batch BYTES       bytes the publisher hands to one write (default 262144)
  --listen IP:PORT    the server's address on 127.0.0.0/8 (default: a free port on 127.0.0.1)
  --bin-dir DIR       where start_channel is (default: next to pushbench)
";

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    subscribers: Vec<usize>,
    events: Option<u64>,
    quick: bool,
    batch: usize,
    listen: Option<SocketAddr>,
    /// Where `start_channel` is (`None`: next to pushbench).
    bin_dir: Option<PathBuf>,
}

impl Options {
    /// Events of the row with `s` subscribers.
    fn events_for(&self, s: usize) -> u64 {
        if let Some(e) = self.events {
            return e;
        }
        let table = if self.quick { QUICK_ROWS } else { DEFAULT_ROWS };
        table
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, e)| *e)
            .unwrap_or_else(|| {
                let per = if self.quick { 2_000_000 } else { 20_000_000 };
                (per / s as u64).max(1000)
            })
    }
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        subscribers: DEFAULT_ROWS.iter().map(|(s, _)| *s).collect(),
        events: None,
        quick: false,
        batch: 256 * 1024,
        listen: None,
        bin_dir: None,
    };
    let mut args = Args::new(args, USAGE);
    while let Some((name, inline)) = args.next_option() {
        let mut value = || args.value(&name, &inline);
        match name.as_str() {
            "--subscribers" => {
                o.subscribers = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--subscribers")?
            }
            "--events" => o.events = Some(value()?.parse().context("--events")?),
            "--batch" => o.batch = value()?.parse().context("--batch")?,
            "--listen" => o.listen = Some(value()?.parse().context("--listen")?),
            "--bin-dir" => o.bin_dir = Some(PathBuf::from(value()?)),
            "--quick" => {
                o.quick = true;
                o.events = None;
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    ensure!(!o.subscribers.is_empty(), "--subscribers is empty");
    ensure!(
        o.subscribers.iter().all(|&s| (1..=10_000).contains(&s)),
        "subscriber counts must be 1 to 10000"
    );
    if let Some(e) = o.events {
        ensure!(
            (1..10u64.pow(SEQ_DIGITS as u32)).contains(&e),
            "--events must be at least 1 and fit {SEQ_DIGITS} digits"
        );
    }
    ensure!(o.batch >= 1024, "--batch must be at least 1024");
    if let Some(addr) = o.listen {
        ensure!(
            addr.ip().is_loopback() && addr.is_ipv4(),
            "{addr}: the benchmark only uses 127.0.0.0/8"
        );
    }
    Ok(o)
}

/// The `start_channel` child process (stopped when dropped, its run directory removed).
struct Server {
    child: Child,
    exe: PathBuf,
    listen: SocketAddr,
    dir: PathBuf,
}

impl Server {
    /// Start `start_channel` from `bin_dir` (`None`: next to pushbench) on `listen`.
    fn start(listen: SocketAddr, bin_dir: Option<&Path>) -> Result<Server> {
        let exe = match bin_dir {
            Some(dir) => dir.join("start_channel"),
            None => std::env::current_exe()?.with_file_name("start_channel"),
        };
        ensure!(
            exe.exists(),
            "{} not found; build it with `cargo build --release -p werkmann-apps --bins` \
             (scripts/bench channel does)",
            exe.display()
        );
        let dir =
            std::env::temp_dir().join(format!("werkmann-bench-channel-{}", std::process::id()));
        let mut cmd = Command::new(&exe);
        cmd.args(["start", "--listen", &listen.to_string()]);
        let child = Child::spawn("start_channel", cmd, &dir, true)?;
        Ok(Server {
            child,
            exe,
            listen,
            dir,
        })
    }

    /// The server's count of failed sends (`fails` of `start_channel status`): deliveries it
    /// dropped because a subscriber's send buffer was full. `None` if it cannot be read.
    fn send_failures(&self) -> Option<u64> {
        let out = Command::new(&self.exe)
            .args(["status", "--listen", &self.listen.to_string()])
            .env("WERKMANN_RUN_DIR", &self.dir)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // worker listen id conns accepted msgs_in msgs_out fails …
        text.lines()
            .find(|l| l.starts_with("ChannelServer"))
            .and_then(|l| l.split_whitespace().nth(7))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Nanoseconds to seconds.
fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The frames of the benchmark, encoded once.
struct Frames {
    subscribe: Bytes,
    marker: Bytes,
    /// A publish command whose data's sequence digits are zeros.
    publish: Vec<u8>,
    /// Offset of the sequence digits in `publish`.
    publish_digits: usize,
    /// The event frame a subscriber expects, with zeros for the digits.
    event: Vec<u8>,
    /// Offset of the sequence digits in `event`.
    event_digits: usize,
}

impl Frames {
    fn new() -> Frames {
        let name = || vec![WireName::from_key(Key::Str(CHANNEL.into()))];
        let data = event_data(0);
        let publish = ChannelCommand::Publish(name(), Bytes::from(data.clone())).encode_frame();
        let event = wire::encode_delivery(DeliveryKind::Event, &name()[0].raw, &data);
        let digits_at = |frame: &[u8]| {
            let needle = b"s:32:\"";
            frame
                .windows(needle.len())
                .rposition(|w| w == needle)
                .expect("the data is in the frame")
                + needle.len()
        };
        Frames {
            subscribe: ChannelCommand::Subscribe(name()).encode_frame(),
            marker: ChannelCommand::Publish(name(), Bytes::from_static(MARKER)).encode_frame(),
            publish_digits: digits_at(&publish),
            publish: publish.to_vec(),
            event_digits: digits_at(&event),
            event: event.to_vec(),
        }
    }
}

/// `s:32:"<12 digits>xxxx…";`
fn event_data(seq: u64) -> Vec<u8> {
    let mut d = format!("s:32:\"{seq:0width$}", width = SEQ_DIGITS).into_bytes();
    d.extend_from_slice(FILLER);
    d.extend_from_slice(b"\";");
    d
}

/// Write `n` as exactly `out.len()` decimal digits.
fn put_digits(out: &mut [u8], mut n: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Parse decimal digits; `None` if any byte is not a digit.
fn parse_digits(d: &[u8]) -> Option<u64> {
    d.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + (b - b'0') as u64)
    })
}

/// What one subscriber saw.
#[derive(Debug, Default, Clone)]
struct SubResult {
    /// Benchmark events received.
    received: u64,
    /// Events that came with a sequence number below the next expected one.
    reordered: u64,
    /// Frames that were neither a benchmark event nor a marker.
    malformed: u64,
    /// When the last event arrived.
    done: Option<Instant>,
    /// Why it stopped early, if it did.
    error: Option<String>,
}

/// Shared between the subscribers of one row.
struct RowState {
    frames: Arc<Frames>,
    events: u64,
    /// Subscribers that have seen a marker.
    ready: AtomicUsize,
}

/// Read and check events until the last one arrived (or the stream stalls or fails).
async fn subscriber(mut stream: TcpStream, row: Arc<RowState>) -> SubResult {
    let mut res = SubResult::default();
    if let Err(e) = read_events(&mut stream, &row, &mut res).await {
        res.error = Some(format!("{e:#}"));
    }
    res
}

async fn read_events(stream: &mut TcpStream, row: &RowState, res: &mut SubResult) -> Result<()> {
    let f = &row.frames;
    let (head, tail) = (
        &f.event[..f.event_digits],
        &f.event[f.event_digits + SEQ_DIGITS..],
    );
    let ev_len = f.event.len();
    let mut buf = vec![0u8; READ_BUF];
    let mut filled = 0;
    let mut next = 0u64;
    let mut saw_marker = false;
    loop {
        if filled == buf.len() {
            // A frame larger than the buffer: grow (only a foreign frame can be that big).
            buf.resize(buf.len() * 2, 0);
        }
        let n = match tokio::time::timeout(STALL, stream.read(&mut buf[filled..])).await {
            Ok(r) => r.context("read")?,
            Err(_) => bail!("no data for {} s", STALL.as_secs()),
        };
        ensure!(n > 0, "the server closed the connection");
        filled += n;
        let mut pos = 0;
        while filled - pos >= 4 {
            let b = &buf[pos..filled];
            let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            ensure!(len >= 4, "frame length {len} below the header");
            if b.len() < len {
                break;
            }
            let frame = &b[..len];
            pos += len;
            // Fast path: the expected event, byte for byte except the digits.
            let seq = if len == ev_len && frame.starts_with(head) && frame.ends_with(tail) {
                parse_digits(&frame[head.len()..head.len() + SEQ_DIGITS])
            } else {
                None
            };
            let seq = match seq {
                Some(s) => s,
                None => {
                    let payload = Bytes::copy_from_slice(&frame[4..]);
                    match Delivery::decode(&payload) {
                        Ok(d) if &d.data[..] == MARKER => {
                            if !saw_marker {
                                saw_marker = true;
                                row.ready.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        _ => res.malformed += 1,
                    }
                    continue;
                }
            };
            res.received += 1;
            if seq < next {
                res.reordered += 1;
            } else {
                next = seq + 1;
            }
            if next >= row.events {
                res.done = Some(Instant::now());
                return Ok(());
            }
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
    }
}

/// Pipeline `events` publish commands in batches of about `batch` bytes. Returns when the last
/// byte was accepted by the kernel.
async fn publish(stream: &mut TcpStream, f: &Frames, events: u64, batch: usize) -> Result<()> {
    let per = f.publish.len();
    let per_batch = (batch / per).max(1);
    let mut buf = f.publish.repeat(per_batch);
    let mut seq = 0;
    while seq < events {
        let k = per_batch.min((events - seq) as usize);
        for (i, cmd) in buf.chunks_exact_mut(per).take(k).enumerate() {
            put_digits(
                &mut cmd[f.publish_digits..f.publish_digits + SEQ_DIGITS],
                seq + i as u64,
            );
        }
        stream.write_all(&buf[..k * per]).await.context("publish")?;
        seq += k as u64;
    }
    Ok(())
}

/// One row of the results table.
struct Row {
    subscribers: usize,
    events: u64,
    deliveries: u64,
    secs: f64,
    publish_secs: f64,
    /// From the first publish until every subscriber finished (or gave up).
    measured_secs: f64,
    server_cpu: f64,
    generator_cpu: f64,
    machine_cpu: f64,
    interrupt_cpu: f64,
    /// Deliveries the server dropped (send buffer full), if its status could be read.
    server_drops: Option<u64>,
    lost: u64,
    reordered: u64,
    malformed: u64,
    peak_rss_kib: u64,
    peak_reset: bool,
    errors: Vec<String>,
}

/// Run one row: S subscribers, E events.
async fn run_row(
    server: &mut Server,
    addr: SocketAddr,
    frames: &Arc<Frames>,
    s: usize,
    events: u64,
    batch: usize,
) -> Result<Row> {
    let pid = server.child.pid();
    let row = Arc::new(RowState {
        frames: frames.clone(),
        events,
        ready: AtomicUsize::new(0),
    });
    let mut subs: Vec<JoinHandle<SubResult>> = Vec::with_capacity(s);
    for _ in 0..s {
        let mut stream = TcpStream::connect(addr)
            .await
            .context("subscriber connect")?;
        stream.set_nodelay(true)?;
        stream.write_all(&frames.subscribe).await?;
        subs.push(tokio::spawn(subscriber(stream, row.clone())));
    }
    let mut publisher = TcpStream::connect(addr)
        .await
        .context("publisher connect")?;
    publisher.set_nodelay(true)?;
    // Publish markers until every subscriber has seen one: the subscriptions are in place.
    let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
    while row.ready.load(Ordering::SeqCst) < s {
        server.child.check_alive()?;
        if Instant::now() > deadline {
            let ready = row.ready.load(Ordering::SeqCst);
            for t in &subs {
                t.abort();
            }
            bail!("only {ready} of {s} subscribers saw the marker within 10 s");
        }
        publisher.write_all(&frames.marker).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fails0 = server.send_failures();
    let peak_reset = procfs::reset_peak_rss(pid);
    let gen0 = procfs::cpu_ns(std::process::id());
    let cpu0 = procfs::cpu_ns(pid);
    let busy0 = procfs::machine_busy_ns().context("/proc/stat")?;
    let t0 = Instant::now();
    let f = frames.clone();
    let pub_task = tokio::spawn(async move {
        let r = publish(&mut publisher, &f, events, batch).await;
        (r, Instant::now(), publisher)
    });
    let mut results = Vec::with_capacity(s);
    for t in subs {
        results.push(t.await.context("subscriber task")?);
    }
    let cpu1 = procfs::cpu_ns(pid);
    let gen1 = procfs::cpu_ns(std::process::id());
    let busy1 = procfs::machine_busy_ns().context("/proc/stat")?;
    let measured_secs = t0.elapsed().as_secs_f64();
    let peak_rss_kib = procfs::status_number(pid, "VmHWM:").context("no VmHWM")?;
    let (pub_result, pub_done, publisher) = pub_task.await.context("publisher task")?;
    drop(publisher);
    let server_drops = match (fails0, server.send_failures()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let mut errors = Vec::new();
    if let Err(e) = pub_result {
        errors.push(format!("publisher: {e:#}"));
    }
    let last = results.iter().filter_map(|r| r.done).max().unwrap_or(t0);
    let mut deliveries = 0;
    let (mut lost, mut reordered, mut malformed) = (0, 0, 0);
    for (i, r) in results.iter().enumerate() {
        deliveries += r.received;
        lost += events.saturating_sub(r.received);
        reordered += r.reordered;
        malformed += r.malformed;
        if let Some(e) = &r.error {
            errors.push(format!("subscriber {i}: {e}"));
        }
    }
    Ok(Row {
        subscribers: s,
        events,
        deliveries,
        secs: last.duration_since(t0).as_secs_f64(),
        publish_secs: pub_done.duration_since(t0).as_secs_f64(),
        measured_secs,
        server_cpu: secs(cpu1.saturating_sub(cpu0)),
        generator_cpu: secs(gen1.saturating_sub(gen0)),
        machine_cpu: secs(busy1.0.saturating_sub(busy0.0)),
        interrupt_cpu: secs(busy1.1.saturating_sub(busy0.1)),
        server_drops,
        lost,
        reordered,
        malformed,
        peak_rss_kib,
        peak_reset,
        errors,
    })
}

fn print_table(rows: &[Row]) {
    let header = [
        "subscribers",
        "events",
        "deliveries",
        "seconds",
        "deliveries/s",
        "publish cmds/s",
        "server CPU µs/delivery",
        "lost",
        "reordered",
        "server RSS peak",
    ];
    let rate = |n: u64, secs: f64| {
        if secs > 0.0 {
            format!("{:.0}", n as f64 / secs)
        } else {
            "-".into()
        }
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.subscribers.to_string(),
                r.events.to_string(),
                r.deliveries.to_string(),
                format!("{:.3}", r.secs),
                rate(r.deliveries, r.secs),
                rate(r.events, r.publish_secs),
                if r.deliveries > 0 {
                    format!("{:.3}", r.server_cpu * 1e6 / r.deliveries as f64)
                } else {
                    "-".into()
                },
                r.lost.to_string(),
                r.reordered.to_string(),
                format!("{:.1} MiB", r.peak_rss_kib as f64 / 1024.0),
            ]
        })
        .collect();
    print!("{}", report::aligned(&header, &cells));
}

/// Run every row against a started server.
async fn run(o: &Options, server: &mut Server, addr: SocketAddr) -> Result<Vec<Row>> {
    server
        .child
        .wait_ports(&[addr], Duration::from_secs(15))
        .await?;
    let frames = Arc::new(Frames::new());
    let mut rows = Vec::new();
    for &s in &o.subscribers {
        let events = o.events_for(s);
        let row = run_row(server, addr, &frames, s, events, o.batch)
            .await
            .with_context(|| format!("{s} subscribers"))?;
        eprintln!(
            "pushbench channel: {s} subscribers × {events} events: {} deliveries in {:.3} s",
            row.deliveries, row.secs
        );
        rows.push(row);
        // Let the server see the closed connections before the next row.
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.child.check_alive()?;
    }
    Ok(rows)
}

/// `pushbench channel [options]`.
pub async fn main(args: &[String]) -> Result<()> {
    let o = parse_options(args)?;
    raise_nofile(*o.subscribers.iter().max().unwrap_or(&1) as u64 + 100)?;
    let addr = match o.listen {
        Some(a) => a,
        None => free_addr()?,
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "pushbench channel: subscribers {:?}, one pipelining publisher, 32-byte events, server on \
         {addr}; {cores} cores shared by the server and this generator",
        o.subscribers
    );
    let mut server = Server::start(addr, o.bin_dir.as_deref())?;
    let result = tokio::select! {
        r = run(&o, &mut server, addr) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let result = result.map_err(|e| {
        let tail = server.child.tail();
        if tail.is_empty() || format!("{e:#}").contains(&tail) {
            e
        } else {
            anyhow!("{e:#}\n--- server log (tail) ---\n{tail}")
        }
    });
    let pid = server.child.pid();
    drop(server);
    let rows = result?;
    println!();
    print_table(&rows);
    println!();
    let frames = Frames::new();
    println!(
        "- frames: publish {} bytes, event {} bytes (header included); server pid {pid}",
        frames.publish.len(),
        frames.event.len()
    );
    for r in &rows {
        println!(
            "- {} subscribers: server CPU {:.2} s ({:.0}% of one core), generator CPU {:.2} s, \
             interrupts {:.2} s, other processes {:.2} s, over {:.2} s; the publisher's last \
             byte was accepted after {:.2} s{}",
            r.subscribers,
            r.server_cpu,
            if r.measured_secs > 0.0 {
                r.server_cpu * 100.0 / r.measured_secs
            } else {
                0.0
            },
            r.generator_cpu,
            r.interrupt_cpu,
            (r.machine_cpu - r.interrupt_cpu - r.server_cpu - r.generator_cpu).max(0.0),
            r.measured_secs,
            r.publish_secs,
            if r.peak_reset {
                ""
            } else {
                "; RSS peak is the process's (clear_refs not writable)"
            }
        );
    }
    println!(
        "- {cores} cores in all: the server (one channel instance thread) and this generator \
         (publisher + subscriber tasks on a tokio runtime) compete for them, and with any other \
         process (\"other processes\": figures are only clean when it is near 0). CPU figures \
         are the threads' run time from /proc (schedstat); the machine's busy time comes from \
         /proc/stat in 10 ms ticks, and the kernel's loopback TCP work done in softirq \
         (\"interrupts\") is counted in no process's CPU"
    );
    let mut bad = false;
    for r in &rows {
        if r.lost > 0 || r.reordered > 0 || r.malformed > 0 || !r.errors.is_empty() {
            bad = true;
            let drops = match r.server_drops {
                Some(d) => format!(
                    " (the server dropped {d} deliveries: a subscriber's send buffer was full, \
                     i.e. the subscribers fell more than the buffer limit behind)"
                ),
                None => String::new(),
            };
            println!(
                "- {} subscribers: {} lost{drops}, {} reordered, {} malformed frames",
                r.subscribers, r.lost, r.reordered, r.malformed
            );
            for e in &r.errors {
                println!("  - {e}");
            }
        }
    }
    ensure!(!bad, "events were lost, reordered or malformed (see above)");
    Ok(())
}
