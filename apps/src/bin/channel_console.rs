//! A channel client driven over a `text://` console, one channel client per console
//! connection — used by the black-box tests and handy for poking at a channel server:
//! `channel_console start --listen 127.0.0.1:9020 --channel 127.0.0.1:2206`
//! (`--channel embedded --serve` runs an embedded channel in the same process;
//! `--serve IP:PORT` runs a TCP channel server in the same process).
//!
//! Commands (one per line): `on NAME`, `unsub NAME`, `pub NAME JSON`, `publoop NAME JSON`,
//! `enq NAME JSON`, `watch NAME` (auto-reserve), `watchm NAME` (manual), `reserve`,
//! `unwatch NAME`, `connected`, `seq NAMES N` (publishes `{"i": 0..N}` in order, to the
//! comma-separated NAMES in turn), `seqt NAMES N` (the same, one publish per turn),
//! `onslow NAME MS` (a subscriber taking MS ms per event), `onstuck NAME MS` (blocked MS ms by
//! its first event), `pubct NAME N` (N confirmed publishes, one per turn), `pubc NAME JSON` (one confirmed
//! publish: `ok reached N`), `claim COUNT [IDS]` (worker ids: `ids A,B`), `whoami`,
//! `dir JSON` (a directory operation, `werkmann::channel::dir`: `dir ANSWER-JSON`),
//! `dirsend JSON` (one without waiting for its answer: `ok Sent`), `onk NAME` (events with
//! their history position: `event NAME JSON at EPOCH:OFFSET`, `at -` when not kept),
//! `hist NAME SINCE` (`channel::history`: SINCE is `EPOCH:OFFSET` or `-`; answers
//! `page EPOCH TOP recovered|lost OFFSET=JSON …`).
//! Deliveries come back as `event NAME JSON` and `queue NAME JSON`;
//! command results as `ok Sent`, `ok Buffered` or `err <why>`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use werkmann::channel::{self, Client, Name};
use werkmann::cli;
use werkmann::{Connection, Worker};

fn reply(conn: &Connection, r: Result<channel::PublishStatus, channel::ChannelError>) {
    match r {
        Ok(s) => conn.send(format!("ok {s:?}")),
        Err(e) => conn.send(format!("err {e}")),
    };
}

/// The channel and its options (for `claim`).
static CHANNEL: std::sync::OnceLock<cli::Channel> = std::sync::OnceLock::new();
/// Worker ids claimed by `claim`, held until the process exits.
static HELD: std::sync::Mutex<Vec<channel::worker_ids::WorkerIds>> =
    std::sync::Mutex::new(Vec::new());

/// Events handled by `onslow` callbacks in this process.
static SLOW_HANDLED: AtomicU64 = AtomicU64::new(0);

fn name(s: &str) -> Name {
    Name::from(s)
}

fn console_command(conn: &Connection, client: &Client, line: &str) {
    let mut parts = line.splitn(3, ' ');
    let cmd = parts.next().unwrap_or("");
    let n = parts.next().unwrap_or("");
    let rest = parts.next().unwrap_or("null");
    let json = || serde_json::from_str::<serde_json::Value>(rest);
    match cmd {
        "on" => {
            let back = conn.clone();
            let label = n.to_string();
            client.on(name(n), move |data| {
                back.send(format!("event {label} {data}"));
            });
            conn.send("ok");
        }
        "onk" => {
            let back = conn.clone();
            let label = n.to_string();
            client.on_kept(name(n), move |pos, data| {
                let at = pos.map_or("-".to_string(), |p| p.to_string());
                let data = channel::php_serde::from_slice(data).unwrap_or_default();
                back.send(format!("event {label} {data} at {at}"));
            });
            conn.send("ok");
        }
        "hist" => {
            let since = match rest {
                "-" => Ok(None),
                p => p.parse::<channel::Position>().map(Some),
            };
            match since {
                Err(e) => {
                    conn.send(format!("err {e}"));
                }
                Ok(since) => {
                    let back = conn.clone();
                    client.history(name(n), since, move |page| {
                        back.send(match page {
                            Ok(p) => {
                                let mut line = format!(
                                    "page {} {} {}",
                                    p.epoch,
                                    p.top,
                                    if p.recovered { "recovered" } else { "lost" }
                                );
                                for (o, d) in &p.items {
                                    let v = channel::php_serde::from_slice(d).unwrap_or_default();
                                    line.push_str(&format!(" {o}={v}"));
                                }
                                line
                            }
                            Err(e) => format!("err {e}"),
                        });
                    });
                }
            }
        }
        "unsub" => {
            client.unsubscribe(name(n));
            conn.send("ok");
        }
        "pub" | "publoop" | "enq" => match json() {
            Ok(v) => reply(
                conn,
                match cmd {
                    "pub" => client.publish(name(n), &v),
                    "publoop" => client.publish_loop(name(n), &v),
                    _ => client.enqueue(name(n), &v),
                },
            ),
            Err(e) => {
                conn.send(format!("err bad json: {e}"));
            }
        },
        "seq" | "seqt" => {
            // Publish `{"i": i}` for i in 0..N, to the comma-separated names in turn; `seqt`
            // one publish per turn of the thread, `seq` all in this one.
            let names: Vec<Name> = n.split(',').map(name).collect();
            let count: u64 = rest.parse().unwrap_or(0);
            let (client, conn) = (client.clone(), conn.clone());
            let turns = cmd == "seqt";
            let publish = move |i: u64| {
                let to = names[(i % names.len() as u64) as usize].clone();
                client.publish(to, &serde_json::json!({ "i": i }))
            };
            if turns {
                tokio::task::spawn_local(async move {
                    let mut last = Ok(channel::PublishStatus::Sent);
                    for i in 0..count {
                        last = publish(i);
                        if last.is_err() {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    reply(&conn, last);
                });
            } else {
                let last = (0..count)
                    .map(publish)
                    .find(|r| r.is_err())
                    .unwrap_or(Ok(channel::PublishStatus::Sent));
                reply(&conn, last);
            }
        }
        "watch" | "watchm" => {
            let back = conn.clone();
            let label = n.to_string();
            client.watch(
                name(n),
                move |data| {
                    back.send(format!("queue {label} {data}"));
                },
                cmd == "watch",
            );
            conn.send("ok");
        }
        "unwatch" => {
            client.unwatch(name(n));
            conn.send("ok");
        }
        "reserve" => {
            client.reserve();
            conn.send("ok");
        }
        "connected" => {
            conn.send(format!("connected {}", client.is_connected()));
        }
        "onslow" => {
            // A subscriber that takes `rest` milliseconds per event (its thread blocked).
            let ms: u64 = rest.parse().unwrap_or(1);
            client.on(name(n), move |_| {
                std::thread::sleep(Duration::from_millis(ms));
                SLOW_HANDLED.fetch_add(1, Ordering::SeqCst);
            });
            conn.send("ok");
        }
        "onstuck" => {
            // A subscriber whose first event blocks its thread for `rest` milliseconds.
            let ms: u64 = rest.parse().unwrap_or(1);
            let first = Cell::new(true);
            client.on(name(n), move |_| {
                if first.replace(false) {
                    std::thread::sleep(Duration::from_millis(ms));
                }
            });
            conn.send("ok");
        }
        "dir" | "dirsend" => match channel::dir::DirOp::from_json(
            line.split_once(' ').map_or("", |(_, op)| op).as_bytes(),
        ) {
            Err(e) => {
                conn.send(format!("err {e}"));
            }
            Ok(op) if cmd == "dirsend" => reply(conn, client.dir_send(&op)),
            Ok(op) => {
                let to = conn.clone();
                client.dir_request(&op, move |answer| {
                    to.send(match answer {
                        Ok(v) => format!("dir {v}"),
                        Err(e) => format!("err {e}"),
                    });
                });
            }
        },
        "pubc" => match json() {
            // One confirmed publish: `ok reached N` (N subscribers), `ok unconfirmed` (a server
            // that does not confirm), or `err <why>`.
            Ok(v) => {
                let back = conn.clone();
                client.publish_confirmed(name(n), &v, move |r| {
                    back.send(match r {
                        Ok(Some(reached)) => format!("ok reached {reached}"),
                        Ok(None) => "ok unconfirmed".to_string(),
                        Err(e) => format!("err {e}"),
                    });
                });
            }
            Err(e) => {
                conn.send(format!("err bad json: {e}"));
            }
        },
        "claim" => {
            // `claim COUNT [ID,ID]`: claim worker ids through this console's channel, held until
            // the process exits: `ids A,B` or `err <why>`.
            let count: usize = n.parse().unwrap_or(0);
            let pinned: Option<Vec<u32>> = (rest != "null").then(|| {
                rest.split(',')
                    .filter_map(|s| s.trim().parse().ok())
                    .collect()
            });
            let (tx, rx) = tokio::sync::oneshot::channel();
            let ch = CHANNEL
                .get()
                .cloned()
                .unwrap_or_else(cli::Channel::embedded);
            std::thread::spawn(move || {
                let r = channel::worker_ids::claim(
                    &ch.channel,
                    &ch.options(),
                    count,
                    pinned,
                    Duration::from_secs(10),
                );
                let _ = tx.send(r.map(|ids| {
                    ids.answer();
                    let shown: Vec<String> = ids.ids().iter().map(u32::to_string).collect();
                    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(ids);
                    shown.join(",")
                }));
            });
            let back = conn.clone();
            tokio::task::spawn_local(async move {
                back.send(match rx.await {
                    Ok(Ok(ids)) => format!("ids {ids}"),
                    Ok(Err(e)) => format!("err {e}"),
                    Err(_) => "err claim thread failed".to_string(),
                });
            });
        }
        "pubct" => {
            // Publish `rest` confirmed events to NAME, one per turn; once all are confirmed,
            // answer with the subscribers reached in all and how far the confirmations ran
            // ahead of what `onslow` subscribers of this process had handled.
            let count: u64 = rest.parse().unwrap_or(0);
            let (client, conn, to) = (client.clone(), conn.clone(), name(n));
            tokio::task::spawn_local(async move {
                let state = Rc::new(Cell::new((0u64, 0usize, 0u64, 0u64)));
                for i in 0..count {
                    let (state, conn) = (state.clone(), conn.clone());
                    client.publish_confirmed(
                        to.clone(),
                        &serde_json::json!({ "i": i }),
                        move |r| {
                            let (mut done, mut reached, mut ahead, mut failed) = state.get();
                            done += 1;
                            match r {
                                Ok(n) => reached += n.unwrap_or(0),
                                Err(_) => failed += 1,
                            }
                            ahead =
                                ahead.max(done.saturating_sub(SLOW_HANDLED.load(Ordering::SeqCst)));
                            state.set((done, reached, ahead, failed));
                            if done == count {
                                conn.send(format!(
                                "confirmed {done} reached {reached} ahead {ahead} failed {failed}"
                            ));
                            }
                        },
                    );
                    tokio::task::yield_now().await;
                }
            });
        }
        "whoami" => {
            conn.send(format!("worker={} conn={}", conn.worker_id(), conn.id()));
        }
        other => {
            conn.send(format!("err unknown command {other:?}"));
        }
    }
}

/// A channel client per console connection.
#[derive(Debug, clap::Args)]
struct Options {
    #[command(flatten)]
    listen: cli::Listen,
    #[command(flatten)]
    channel: cli::Channel,
    /// Also run a channel server in this process: `embedded`, or IP:PORT for a TCP one
    #[arg(long, env = "WERKMANN_SERVE")]
    serve: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli::App {
        command,
        options,
        common,
    } = cli::parse::<cli::App<Options>>(&[("listen", "127.0.0.1:9020")]);
    werkmann_apps::init_logging();
    let _ = CHANNEL.set(options.channel.clone());
    let mut workers = Vec::new();
    match options.serve.as_deref() {
        None | Some("") => {}
        Some("embedded") => workers.push(channel::Server::embedded().into_worker()),
        Some(addr) => workers.push(channel::Server::new(addr)?.into_worker()),
    }
    let mut console = Worker::new(&format!("text://{}", options.listen.listen))?;
    console.name = "channel_console".into();
    options.listen.apply(&mut console);
    let channel = options.channel;
    console.on_connect(move |conn| match channel.connect() {
        Ok(client) => {
            let back = conn.clone();
            client.on_connect(move || {
                back.send("channel connected");
            });
            let back = conn.clone();
            client.on_close(move || {
                back.send("channel closed");
            });
            conn.set_data(RefCell::new(client));
        }
        Err(e) => {
            conn.close_with(format!("err {e}"));
        }
    });
    console.on_message(|conn, msg| {
        let client = conn.with_data(|c: &mut RefCell<Client>| c.borrow().clone());
        if let Some(client) = client {
            console_command(conn, &client, msg.as_text().unwrap_or(""));
        }
    });
    console.on_close(|conn| {
        if let Some(c) = conn.with_data(|c: &mut RefCell<Client>| c.borrow().clone()) {
            c.close();
        }
    });
    workers.push(console);
    command.run(common.with(workers, None)?)
}
