//! Benchmark server, driven by the `bench` load generator:
//! `bench_server start --listen 127.0.0.1:9100 --control 127.0.0.1:9101 --count 2
//! [--sse-listen 127.0.0.1:9102]`.
//!
//! - a `websocket://` worker (`--listen`, `--count` instances) whose clients only receive;
//! - with `--sse-listen IP:PORT`, an `http://` worker (`--count` instances) that answers every
//!   request with `Response::event_stream()` and keeps the connection in its instance's list of
//!   open streams until it closes (Server-Sent Events, what a browser's `EventSource` reads);
//! - an `http://` control worker (`--control`, one instance):
//!   - `GET /broadcast?n=M&size=S` makes every WebSocket instance broadcast `M` text messages of
//!     `S` bytes, each starting with its send time in Unix nanoseconds and a space, and answers
//!     `ok` at once. Each instance gets one cross-thread message per request and encodes each
//!     frame once, fanning it out on its own thread;
//!   - `GET /broadcast?proto=sse&n=M&size=S` does the same over the SSE instances: each message
//!     becomes one `ServerSentEvent::data(…)`, framed once per instance
//!     (`Chunk::from(event).shared()`) and sent with `conn.send(chunk.clone())` to each open
//!     stream of that instance (every send shares the framed bytes); with `&via=send_to`, the
//!     instance's `send_to(streams, chunk)` instead, which queues the writes to many streams
//!     (as `broadcast` does) so that each stream's task writes a burst at once;
//!   - `GET /stats` answers JSON: the WebSocket instances started (`ready`), connections per
//!     instance and their total, and the deliveries the broadcasts reported (accepted, dropped);
//!     the same for SSE as `sse_ready`, `sse_connections`, `sse_total`, `sse_delivered`,
//!     `sse_failed`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use werkmann::cli;
use werkmann::{Chunk, Connection, InstanceAddr, Message, Response, ServerSentEvent, Worker};

/// Largest `n` one `/broadcast` request may ask for.
const MAX_MESSAGES: usize = 1_000_000;
/// Largest `size` one `/broadcast` request may ask for.
const MAX_SIZE: usize = 1 << 20;

/// One push worker's instances and counters (WebSocket or SSE).
struct Pool {
    /// Each instance's address, by instance id (set in `on_worker_start`).
    addrs: Mutex<Vec<Option<InstanceAddr>>>,
    /// Open connections (streams, for SSE) per instance.
    conns: Vec<AtomicUsize>,
    /// Deliveries the broadcasts accepted (sent or queued).
    delivered: AtomicU64,
    /// Deliveries the broadcasts dropped (full buffer or closing connection).
    failed: AtomicU64,
}

impl Pool {
    fn new(count: usize) -> Pool {
        Pool {
            addrs: Mutex::new(vec![None; count]),
            conns: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn addrs(&self) -> Vec<InstanceAddr> {
        self.addrs
            .lock()
            .expect("addrs lock")
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn count(&self, delivered: u64, failed: u64) {
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
    }

    /// Its part of `/stats`, field names after `prefix`.
    fn stats(&self, prefix: &str, out: &mut serde_json::Map<String, serde_json::Value>) {
        let per: Vec<usize> = self
            .conns
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let ready = self
            .addrs
            .lock()
            .expect("addrs lock")
            .iter()
            .flatten()
            .count();
        let mut put = |k: &str, v: serde_json::Value| {
            out.insert(format!("{prefix}{k}"), v);
        };
        put("ready", ready.into());
        put("total", per.iter().sum::<usize>().into());
        put("connections", per.into());
        put("delivered", self.delivered.load(Ordering::Relaxed).into());
        put("failed", self.failed.load(Ordering::Relaxed).into());
    }
}

/// State the workers' closures share.
struct Shared {
    /// The WebSocket worker.
    ws: Pool,
    /// The SSE worker (no instances without `--sse-listen`).
    sse: Pool,
}

thread_local! {
    /// This thread's SSE instance's open event streams, by connection id.
    static STREAMS: RefCell<HashMap<u64, Connection>> = RefCell::new(HashMap::new());
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
    for addr in shared.ws.addrs() {
        let shared = shared.clone();
        addr.exec(move |w| {
            let (mut delivered, mut failed) = (0, 0);
            for _ in 0..n {
                let report = w.broadcast(stamped(size));
                delivered += report.delivered as u64;
                failed += report.failed as u64;
            }
            shared.ws.count(delivered, failed);
        });
    }
}

/// Ask every SSE instance to send `n` events of `size` bytes of data to each of its open
/// streams, each event stamped and framed once per instance; with `queued`, through
/// `WorkerInstance::send_to` rather than one `conn.send` each.
fn broadcast_sse(shared: &Arc<Shared>, n: usize, size: usize, queued: bool) {
    for addr in shared.sse.addrs() {
        let shared = shared.clone();
        addr.exec(move |w| {
            let (mut delivered, mut failed) = (0, 0);
            STREAMS.with(|streams| {
                let streams = streams.borrow();
                if streams.is_empty() {
                    return;
                }
                for _ in 0..n {
                    let chunk = Chunk::from(ServerSentEvent::data(stamped(size))).shared();
                    if queued {
                        let report = w.send_to(streams.values(), chunk.into());
                        delivered += report.delivered as u64;
                        failed += report.failed as u64;
                        continue;
                    }
                    for conn in streams.values() {
                        if conn.send(chunk.clone()).is_ok() {
                            delivered += 1;
                        } else {
                            failed += 1;
                        }
                    }
                }
            });
            shared.sse.count(delivered, failed);
        });
    }
}

fn stats(shared: &Shared) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    shared.ws.stats("", &mut out);
    shared.sse.stats("sse_", &mut out);
    out.into()
}

/// The benchmark server.
#[derive(Debug, clap::Args)]
struct Options {
    #[command(flatten)]
    listen: cli::Listen,
    /// Where the control worker listens, IP:PORT
    #[arg(long, env = "BENCH_CONTROL", default_value = "127.0.0.1:9101")]
    control: String,
    /// Where the SSE worker listens, IP:PORT (none without it)
    #[arg(long, env = "BENCH_SSE_LISTEN")]
    sse_listen: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli::App {
        command,
        options,
        common,
    } = cli::parse::<cli::App<Options>>(&[("listen", "127.0.0.1:9100"), ("count", "2")]);
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
        ws: Pool::new(count),
        sse: Pool::new(if options.sse_listen.is_some() {
            count
        } else {
            0
        }),
    });

    let mut ws = Worker::new(&format!("websocket://{listen}"))?;
    ws.name = "bench_ws".into();
    ws.count = count;
    let s = shared.clone();
    ws.on_worker_start(move |w| {
        if let Some(slot) = s.ws.addrs.lock().expect("addrs lock").get_mut(w.id()) {
            *slot = w.addr();
        }
    });
    let s = shared.clone();
    ws.on_connect(move |c| {
        s.ws.conns[c.worker_id()].fetch_add(1, Ordering::Relaxed);
    });
    let s = shared.clone();
    ws.on_close(move |c| {
        s.ws.conns[c.worker_id()].fetch_sub(1, Ordering::Relaxed);
    });
    let mut workers = vec![ws];

    if let Some(sse_listen) = &options.sse_listen {
        let mut sse = Worker::new(&format!("http://{sse_listen}"))?;
        sse.name = "bench_sse".into();
        sse.count = count;
        let s = shared.clone();
        sse.on_worker_start(move |w| {
            if let Some(slot) = s.sse.addrs.lock().expect("addrs lock").get_mut(w.id()) {
                *slot = w.addr();
            }
        });
        let s = shared.clone();
        sse.on_message(move |conn, msg| {
            let Message::Request(_) = msg else { return };
            if !conn.send(Response::event_stream()).is_ok() {
                return;
            }
            let new = STREAMS.with(|st| st.borrow_mut().insert(conn.id(), conn.clone()).is_none());
            if new {
                s.sse.conns[conn.worker_id()].fetch_add(1, Ordering::Relaxed);
            }
        });
        let s = shared.clone();
        sse.on_close(move |conn| {
            let was = STREAMS.with(|st| st.borrow_mut().remove(&conn.id()).is_some());
            if was {
                s.sse.conns[conn.worker_id()].fetch_sub(1, Ordering::Relaxed);
            }
        });
        workers.push(sse);
    }

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
                match (n, size, req.get("proto").as_deref()) {
                    (Ok(n), Ok(size), None | Some("ws")) => {
                        broadcast(&s, n, size);
                        Response::text(200, "ok")
                    }
                    (Ok(n), Ok(size), Some("sse")) => {
                        let queued = req.get("via").as_deref() == Some("send_to");
                        broadcast_sse(&s, n, size, queued);
                        Response::text(200, "ok")
                    }
                    (Err(e), _, _) | (_, Err(e), _) => Response::text(400, e),
                    (_, _, Some(_)) => Response::text(400, "proto must be ws or sse\n"),
                }
            }
            "/stats" => Response::json(200, &stats(&s)),
            _ => Response::text(404, "try /broadcast?n=M&size=S[&proto=sse] or /stats\n"),
        };
        conn.send(resp);
    });
    workers.push(http);

    command.run(common.with(workers, None)?)
}
