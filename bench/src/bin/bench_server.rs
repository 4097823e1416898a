//! Benchmark server, driven by the `bench` load generator:
//! `bench_server start --listen 127.0.0.1:9100 --control 127.0.0.1:9101 --count 2`.
//!
//! - a `websocket://` worker (`--listen`, `--count` instances) whose clients only receive;
//! - an `http://` control worker (`--control`, one instance):
//!   - `GET /broadcast?n=M&size=S` makes every WebSocket instance broadcast `M` text messages of
//!     `S` bytes, each starting with its send time in Unix nanoseconds and a space, and answers
//!     `ok` at once. Each instance gets one cross-thread message per request and encodes each
//!     frame once, fanning it out on its own thread;
//!   - `GET /stats` answers JSON: the WebSocket instances started (`ready`), connections per
//!     instance and their total, and the deliveries the broadcasts reported (accepted, dropped).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use werkmann::cli;
use werkmann::{InstanceAddr, Message, Response, Worker};

/// Largest `n` one `/broadcast` request may ask for.
const MAX_MESSAGES: usize = 1_000_000;
/// Largest `size` one `/broadcast` request may ask for.
const MAX_SIZE: usize = 1 << 20;

/// State both workers' closures share.
struct Shared {
    /// Each WebSocket instance's address, by instance id (set in `on_worker_start`).
    addrs: Mutex<Vec<Option<InstanceAddr>>>,
    /// Open WebSocket connections per instance.
    conns: Vec<AtomicUsize>,
    /// Deliveries the broadcasts accepted (sent or queued).
    delivered: AtomicU64,
    /// Deliveries the broadcasts dropped (full buffer or closing connection).
    failed: AtomicU64,
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A message of `size` bytes (at least the stamp): `{unix_nanos} ` then padding.
fn stamped(size: usize) -> String {
    let mut text = format!("{} ", unix_nanos());
    if text.len() < size {
        let pad = size - text.len();
        text.push_str(&"x".repeat(pad));
    }
    text
}

/// A query parameter as a number, `default` when missing, an error text when malformed.
fn param(req: &werkmann::Request, key: &str, default: usize, max: usize) -> Result<usize, String> {
    match req.get(key) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(format!("{key} must be a number up to {max}\n")),
        },
    }
}

/// Ask every WebSocket instance to broadcast `n` messages of `size` bytes, each stamped when
/// that instance sends it.
fn broadcast(shared: &Arc<Shared>, n: usize, size: usize) {
    let addrs: Vec<InstanceAddr> = shared
        .addrs
        .lock()
        .expect("addrs lock")
        .iter()
        .flatten()
        .cloned()
        .collect();
    for addr in &addrs {
        let shared = shared.clone();
        addr.exec(move |w| {
            let (mut delivered, mut failed) = (0, 0);
            for _ in 0..n {
                let report = w.broadcast(stamped(size));
                delivered += report.delivered as u64;
                failed += report.failed as u64;
            }
            shared.delivered.fetch_add(delivered, Ordering::Relaxed);
            shared.failed.fetch_add(failed, Ordering::Relaxed);
        });
    }
}

fn stats(shared: &Shared) -> serde_json::Value {
    let per: Vec<usize> = shared
        .conns
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let ready = shared
        .addrs
        .lock()
        .expect("addrs lock")
        .iter()
        .flatten()
        .count();
    serde_json::json!({
        "ready": ready,
        "total": per.iter().sum::<usize>(),
        "connections": per,
        "delivered": shared.delivered.load(Ordering::Relaxed),
        "failed": shared.failed.load(Ordering::Relaxed),
    })
}

/// The benchmark server.
#[derive(Debug, clap::Args)]
struct Options {
    #[command(flatten)]
    listen: cli::Listen,
    /// Where the control worker listens, IP:PORT
    #[arg(long, env = "BENCH_CONTROL", default_value = "127.0.0.1:9101")]
    control: String,
}

fn main() -> anyhow::Result<()> {
    let cli::App { command, options } =
        cli::parse::<cli::App<Options>>(&[("listen", "127.0.0.1:9100"), ("count", "2")]);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let (listen, control, count) = (
        &options.listen.listen,
        &options.control,
        options.listen.count,
    );
    anyhow::ensure!(count > 0, "--count must be at least 1");

    let shared = Arc::new(Shared {
        addrs: Mutex::new(vec![None; count]),
        conns: (0..count).map(|_| AtomicUsize::new(0)).collect(),
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });

    let mut ws = Worker::new(&format!("websocket://{listen}"))?;
    ws.name = "bench_ws".into();
    ws.count = count;
    let s = shared.clone();
    ws.on_worker_start(move |w| {
        if let Some(slot) = s.addrs.lock().expect("addrs lock").get_mut(w.id()) {
            *slot = w.addr();
        }
    });
    let s = shared.clone();
    ws.on_connect(move |c| {
        s.conns[c.worker_id()].fetch_add(1, Ordering::Relaxed);
    });
    let s = shared.clone();
    ws.on_close(move |c| {
        s.conns[c.worker_id()].fetch_sub(1, Ordering::Relaxed);
    });

    let mut http = Worker::new(&format!("http://{control}"))?;
    http.name = "bench_control".into();
    http.count = 1;
    let s = shared;
    http.on_message(move |conn, msg| {
        let Message::Request(req) = msg else { return };
        let resp = match req.path() {
            "/broadcast" => {
                let n = param(&req, "n", 1, MAX_MESSAGES);
                let size = param(&req, "size", 64, MAX_SIZE);
                match (n, size) {
                    (Ok(n), Ok(size)) => {
                        broadcast(&s, n, size);
                        Response::text(200, "ok")
                    }
                    (Err(e), _) | (_, Err(e)) => Response::text(400, e),
                }
            }
            "/stats" => Response::json(200, &stats(&s)),
            _ => Response::text(404, "try /broadcast?n=M&size=S or /stats\n"),
        };
        conn.send(resp);
    });

    command.run([ws, http])
}
