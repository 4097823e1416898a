//! A tour of the framework in one process, driven over a `text://` console — several workers
//! in one `run_all`, a custom protocol, timers, outgoing connections, send-buffer limits and
//! panic isolation, a WebSocket worker with `on_websocket_connect`. The black-box tests use it;
//! try it with `nc 127.0.0.1 9010`.
//!
//! ```text
//! feature_demo start --listen 127.0.0.1:9010 --custom-listen 127.0.0.1:9011 \
//!     --ws-listen 127.0.0.1:9012 --count 2
//! ```
//!
//! Console commands (one per line; answers are lines):
//! - `whoami` → `worker=<instance id> conn=<connection id>`
//! - `flood N SIZE` → sends N lines of SIZE bytes to this connection (buffer limit 256 KiB)
//! - `stats` → `full=.. drain=.. failures=.. queued=.. sent=.. rss_kib=..`
//! - `timer N MS` → N `tick i` lines from a persistent timer, then `timer done`
//! - `connect URL MSG` → opens an outgoing connection, sends MSG, relays the first reply
//!   as `reply <text>` (or `error <why>`)
//! - `broadcast MSG` → MSG to every console connection of this instance
//! - `pause MS` → stops reading for MS milliseconds, then answers `resumed` and reads again
//! - `persist URL` → keeps an outgoing connection that reconnects 200 ms after every close;
//!   reports `persist connected`, `persist got <msg>`, `persist closed`
//! - `relay MSG` → sends MSG on the persistent connection, answers `relay <send status>`
//! - `panic` → a panic inside `on_message` (caught; the worker goes on)
//! - `close` → the server closes with `bye`

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use werkmann::cli;
use werkmann::protocol::{register_protocol, Protocol, ProtocolError};
use werkmann::{AsyncTcpConnection, Connection, Message, Response, SendStatus, Timer, Worker};

static FULL: AtomicU64 = AtomicU64::new(0);
static DRAIN: AtomicU64 = AtomicU64::new(0);
static FAILURES: AtomicU64 = AtomicU64::new(0);
static QUEUED: AtomicU64 = AtomicU64::new(0);
static SENT: AtomicU64 = AtomicU64::new(0);

/// A Workerman-style custom protocol: messages end with `;`.
struct Semicolon;

impl Protocol for Semicolon {
    fn input(&self, buf: &[u8]) -> Result<usize, ProtocolError> {
        if buf.first() == Some(&b'!') {
            return Err(ProtocolError::invalid("messages may not start with '!'"));
        }
        Ok(buf.iter().position(|&b| b == b';').map_or(0, |p| p + 1))
    }

    fn decode(&self, package: Bytes) -> Result<Message, ProtocolError> {
        let text = std::str::from_utf8(&package[..package.len() - 1])
            .map_err(|_| ProtocolError::InvalidUtf8)?;
        Ok(Message::Text(text.to_string()))
    }

    fn encode(&self, msg: &Message) -> Result<Bytes, ProtocolError> {
        Ok(Bytes::from([msg.as_bytes(), b";"].concat()))
    }
}

fn rss_kib() -> u64 {
    werkmann::rss_bytes() / 1024
}

fn console(conn: &Connection, line: &str) {
    let mut parts = line.split_whitespace();
    match parts.next().unwrap_or("") {
        "whoami" => {
            conn.send(format!("worker={} conn={}", conn.worker_id(), conn.id()));
        }
        "flood" => {
            let n: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(100);
            let size: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
            let line = "x".repeat(size);
            for _ in 0..n {
                match conn.send(line.as_str()) {
                    SendStatus::Sent => SENT.fetch_add(1, Relaxed),
                    SendStatus::Queued => QUEUED.fetch_add(1, Relaxed),
                    SendStatus::Failed => 0,
                };
            }
        }
        "stats" => {
            conn.send(format!(
                "full={} drain={} failures={} queued={} sent={} rss_kib={}",
                FULL.load(Relaxed),
                DRAIN.load(Relaxed),
                FAILURES.load(Relaxed),
                QUEUED.load(Relaxed),
                SENT.load(Relaxed),
                rss_kib()
            ));
        }
        "timer" => {
            let n: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(3);
            let ms: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(50);
            let conn2 = conn.clone();
            let count = Rc::new(RefCell::new(0u32));
            let id = Rc::new(RefCell::new(None));
            let id2 = id.clone();
            let tid = Timer::add(
                Duration::from_millis(ms),
                move || {
                    let mut c = count.borrow_mut();
                    *c += 1;
                    conn2.send(format!("tick {c}"));
                    if *c >= n {
                        if let Some(t) = *id2.borrow() {
                            Timer::del(t);
                        }
                        conn2.send("timer done");
                    }
                },
                true,
            );
            *id.borrow_mut() = Some(tid);
        }
        "print" => {
            // To standard output: a daemon's --stdout-file.
            println!("{}", parts.collect::<Vec<_>>().join(" "));
            conn.send("printed");
        }
        "deltimers" => {
            conn.send(format!("deleted {}", Timer::del_all()));
        }
        "connect" => {
            let url = parts.next().unwrap_or("").to_string();
            let payload = parts.collect::<Vec<_>>().join(" ");
            let client = match AsyncTcpConnection::new(&url) {
                Ok(c) => c,
                Err(e) => {
                    conn.send(format!("error {e}"));
                    return;
                }
            };
            let back = conn.clone();
            client.on_connect(move |c| {
                c.send(payload.as_str());
            });
            let back2 = back.clone();
            client.on_message(move |c, m| {
                back2.send(format!("reply {}", m.to_text_lossy().trim_end()));
                c.close();
            });
            client.on_error(move |_, e| {
                back.send(format!("error {e}"));
            });
            client.connect();
            // Keep the client alive until it closes.
            let holder = Rc::new(RefCell::new(Some(client.clone())));
            let h2 = holder.clone();
            client.on_close(move |_| {
                h2.borrow_mut().take();
            });
            drop(holder);
        }
        "broadcast" => {
            let msg = parts.collect::<Vec<_>>().join(" ");
            if let Some(w) = conn.worker() {
                w.broadcast(msg);
            }
        }
        "pause" => {
            let ms: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(200);
            conn.pause_recv();
            let conn2 = conn.clone();
            Timer::once(Duration::from_millis(ms), move || {
                conn2.send("resumed");
                conn2.resume_recv();
            });
        }
        "persist" => {
            let url = parts.next().unwrap_or("");
            let client = match AsyncTcpConnection::new(url) {
                Ok(c) => c,
                Err(e) => {
                    conn.send(format!("error {e}"));
                    return;
                }
            };
            let back = conn.clone();
            client.on_connect(move |_| {
                back.send("persist connected");
            });
            let back = conn.clone();
            client.on_message(move |_, m| {
                back.send(format!("persist got {}", m.to_text_lossy().trim_end()));
            });
            let back = conn.clone();
            let again = client.clone();
            client.on_close(move |_| {
                back.send("persist closed");
                if back.status() == werkmann::connection::Status::Established {
                    again.reconnect(Duration::from_millis(200));
                }
            });
            client.connect();
            conn.set_data(client);
        }
        "relay" => {
            let msg = parts.collect::<Vec<_>>().join(" ");
            let sent = conn.with_data(|c: &mut AsyncTcpConnection| c.send(msg.as_str()));
            conn.send(format!("relay {sent:?}"));
        }
        "panic" => panic!("requested panic"),
        "close" => conn.close_with("bye"),
        other => {
            conn.send(format!("unknown command {other:?}"));
        }
    }
}

/// The tour's command line.
#[derive(Debug, clap::Args)]
struct Options {
    #[command(flatten)]
    listen: cli::Listen,
    /// Where the semicolon:// worker listens, IP:PORT
    #[arg(long, env = "WERKMANN_CUSTOM_LISTEN", default_value = "127.0.0.1:9011")]
    custom_listen: String,
    /// Where the WebSocket worker listens, IP:PORT
    #[arg(long, env = "WERKMANN_WS_LISTEN", default_value = "127.0.0.1:9012")]
    ws_listen: String,
    /// Keep the console's instances through reloads (Workerman's `reloadable = false`; needs
    /// --processes)
    #[arg(long, env = "WERKMANN_KEEP_CONSOLE")]
    keep_console: bool,
}

fn main() -> anyhow::Result<()> {
    let cli::App {
        command,
        options,
        common,
    } = cli::parse::<cli::App<Options>>(&[("listen", "127.0.0.1:9010"), ("count", "2")]);
    werkmann_apps::init_logging();
    register_protocol("semicolon", Semicolon);
    let listen = &options.listen.listen;
    let custom = &options.custom_listen;
    let ws_listen = &options.ws_listen;

    let mut text = Worker::new(&format!("text://{listen}"))?;
    text.name = "console".into();
    options.listen.apply(&mut text);
    text.max_send_buffer_size = 256 * 1024;
    text.max_package_size = 4096;
    text.reloadable = !options.keep_console;
    text.on_worker_start(|w| log::info!("console instance {} started", w.id()));
    text.on_worker_reload(|w| {
        log::info!("console instance {} reloading", w.id());
        w.broadcast("reloading");
    });
    text.on_worker_stop(|w| {
        log::info!("console instance {} stopping", w.id());
        // Its clients hear of it before their connections close.
        w.broadcast("stopping");
    });
    text.on_connect(|conn| log::debug!("console {} connected", conn.id()));
    text.on_message(|conn, msg| console(conn, msg.as_text().unwrap_or("")));
    text.on_buffer_full(|conn| {
        FULL.fetch_add(1, Relaxed);
        log::info!("connection {} buffer full", conn.id());
    });
    text.on_buffer_drain(|conn| {
        DRAIN.fetch_add(1, Relaxed);
        log::info!("connection {} buffer drained", conn.id());
    });
    text.on_error(|conn, err| {
        FAILURES.fetch_add(1, Relaxed);
        log::debug!("connection {}: {err}", conn.id());
    });

    let mut semi = Worker::new(&format!("semicolon://{custom}"))?;
    semi.name = "semicolon".into();
    semi.on_message(|conn, msg| {
        conn.send(format!("echo:{}", msg.to_text_lossy()));
    });

    let mut ws = Worker::new(&format!("websocket://{ws_listen}"))?;
    ws.name = "websocket".into();
    ws.on_connect(|conn| {
        // Sent before the handshake completes: it waits and follows the 101.
        conn.send(format!("hello {}", conn.id()));
    });
    ws.on_websocket_connect(|conn, req| {
        if req.path().contains("deny") {
            return Err(Response::text(403, "denied by on_websocket_connect\n"));
        }
        let agent = req.header("x-demo").unwrap_or("-").to_string();
        conn.set_data(format!("path={} x-demo={agent}", req.uri()));
        Ok(())
    });
    ws.on_message(|conn, msg| {
        let info = conn
            .with_data(|s: &mut String| s.clone())
            .unwrap_or_default();
        conn.send(format!("{info} msg={}", msg.to_text_lossy()));
    });

    command.run(common.with([text, semi, ws], None)?)
}
