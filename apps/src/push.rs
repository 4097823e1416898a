//! The WebSocket and HTTP workers of the push system.
//!
//! - WebSocket instance `i` of a node holds cluster-unique worker id `ids[i]`; it subscribes to
//!   that id and to `Broadcast`, greets each client with
//!   `Worker-ID:{id} Verbindungs-ID:{connection id} verbunden\n`, delivers `{to_connection_id,
//!   content}` events to one of its connections and `Broadcast` events to all.
//! - The HTTP publisher takes `content`, `to_worker_id`, `to_connection_id` from the query, a
//!   form or a JSON body and publishes them; `GET /` without parameters serves the demo page.

use std::sync::Arc;

use serde_json::{json, Value};
use werkmann::channel::worker_ids::WorkerIds;
use werkmann::channel::{self, Client, Name};
use werkmann::{Connection, Message, Request, Response, Worker};

use crate::auth::Auth;

/// The event every WebSocket instance subscribes to for broadcasts.
pub const BROADCAST: &str = "Broadcast";

/// The greeting a client receives on connect.
pub fn greeting(worker_id: u32, connection_id: u64) -> String {
    format!("Worker-ID:{worker_id} Verbindungs-ID:{connection_id} verbunden\n")
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The WebSocket worker (`pusher`): `count` instances, instance `i` known as `ids[i]`.
pub fn ws_worker(
    listen: &str,
    count: usize,
    channel_addr: &str,
    worker_ids: Arc<WorkerIds>,
) -> anyhow::Result<Worker> {
    let mut worker = Worker::new(&format!("websocket://{listen}"))?;
    worker.name = "pusher".into();
    worker.count = count;
    werkmann::cli::apply_limits(&mut worker)?;
    let addr = channel_addr.to_string();
    let start_ids = worker_ids.clone();
    worker.on_worker_start(move |w| {
        if w.id() == 0 {
            start_ids.answer();
        }
        let my_id = start_ids.ids()[w.id()];
        let client = match Client::connect(&addr) {
            Ok(c) => c,
            Err(e) => {
                log::error!("pusher {my_id}: no channel: {e}");
                return;
            }
        };
        let me = w.clone();
        client.on(my_id, move |data| {
            let target = data["to_connection_id"].as_u64().or_else(|| {
                data["to_connection_id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
            });
            let content = text_of(&data["content"]).unwrap_or_default();
            match target.and_then(|id| me.connection(id)) {
                Some(conn) => {
                    conn.send(content);
                }
                None => log::info!(
                    "worker {my_id}: Verbindung existiert nicht ({})",
                    data["to_connection_id"]
                ),
            }
        });
        let me = w.clone();
        client.on(BROADCAST, move |data| {
            if let Some(content) = text_of(&data["content"]) {
                me.broadcast(content);
            }
        });
        w.set_data(client);
        log::info!("pusher instance {} is worker id {my_id}", w.id());
    });
    worker.on_connect(move |conn| {
        conn.send(greeting(worker_ids.ids()[conn.worker_id()], conn.id()));
    });
    // A client that does not keep up is dropped (it reconnects and is greeted anew), so it
    // neither holds memory nor delays the others.
    worker.on_buffer_full(|conn| {
        log::warn!(
            "client {} ({}) does not read its pushes ({} bytes waiting): dropped",
            conn.id(),
            conn.remote_ip(),
            conn.send_buffer_len()
        );
        conn.destroy();
    });
    worker.on_message(|_conn, _msg| {});
    Ok(worker)
}

/// A push request, from the query, a form or a JSON body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Push {
    /// The text to deliver.
    pub content: Option<String>,
    /// The target worker id (a targeted push).
    pub to_worker_id: Option<String>,
    /// The target connection id (a targeted push).
    pub to_connection_id: Option<String>,
}

impl Push {
    /// Read the parameters; body fields win over query parameters.
    pub fn from_request(req: &Request) -> Push {
        let post = req.post_all();
        let get = req.query();
        let field = |k: &str| post.get(k).or_else(|| get.get(k)).cloned();
        Push {
            content: field("content"),
            to_worker_id: field("to_worker_id"),
            to_connection_id: field("to_connection_id"),
        }
    }

    /// Whether no parameter was given at all.
    pub fn is_empty(&self) -> bool {
        *self == Push::default()
    }
}

/// How many WebSocket instances broadcasts reached lately: a broadcast that reaches fewer
/// (instances still re-subscribing after a channel restart) is reported, not answered `ok`.
/// The mark is forgotten after [`Reach::MEMORY`] without a confirmation at that level, so a
/// node that left for good stops counting.
#[derive(Default)]
pub struct Reach {
    mark: std::cell::Cell<(usize, Option<std::time::Instant>)>,
}

impl Reach {
    /// How long the high-water mark is remembered.
    pub const MEMORY: std::time::Duration = std::time::Duration::from_secs(15);

    /// Record a broadcast that reached `n` subscribers; `Some(expected)` if that is short.
    pub fn observe(&self, n: usize) -> Option<usize> {
        let now = std::time::Instant::now();
        let (mark, seen) = self.mark.get();
        let fresh = seen.is_some_and(|t| now.duration_since(t) < Reach::MEMORY);
        if n >= mark || !fresh {
            self.mark.set((n, Some(now)));
            return None;
        }
        Some(mark)
    }
}

/// The event and data a push becomes, or the 400 that says what is wrong with it.
fn event_of(push: &Push) -> Result<(Name, Value), Response> {
    let content = match push.content.as_deref() {
        Some(c) if !c.is_empty() => c,
        _ => return Err(Response::text(400, "missing content: nothing published\n")),
    };
    match (&push.to_worker_id, &push.to_connection_id) {
        (None, None) => Ok((Name::from(BROADCAST), json!({ "content": content }))),
        (Some(w), Some(c)) => {
            let worker: u32 = w.parse().map_err(|_| {
                Response::text(400, format!("to_worker_id {w:?} is not a worker id\n"))
            })?;
            let conn: u64 = c.parse().map_err(|_| {
                Response::text(
                    400,
                    format!("to_connection_id {c:?} is not a connection id\n"),
                )
            })?;
            Ok((
                Name::from(worker),
                json!({ "to_connection_id": conn, "content": content }),
            ))
        }
        _ => Err(Response::text(
            400,
            "a targeted push needs both to_worker_id and to_connection_id\n",
        )),
    }
}

fn handle(conn: &Connection, req: &Request, page: &str) {
    let push = Push::from_request(req);
    if push.is_empty() && req.method() == "GET" && req.path() == "/" {
        conn.send(Response::html(page.to_string()));
        return;
    }
    if let Some(auth) = conn.worker().and_then(|w| w.data::<Auth>()) {
        if let Err(denied) = auth.check(req) {
            log::info!("push from {} refused: {denied}", conn.remote_ip());
            conn.send(
                Response::text(401, format!("{denied}\n"))
                    .with_header("WWW-Authenticate", "Bearer realm=\"werkmann\""),
            );
            return;
        }
    }
    let Some(client) = conn.worker().and_then(|w| w.data::<Client>()) else {
        conn.send(Response::text(503, "channel client not started\n"));
        return;
    };
    if !client.is_connected() {
        conn.send(Response::text(
            503,
            format!(
                "channel server {} unreachable: push not accepted\n",
                client.addr()
            ),
        ));
        return;
    }
    let (event, data) = match event_of(&push) {
        Ok(e) => e,
        Err(resp) => {
            conn.send(resp);
            return;
        }
    };
    // Answer once the channel confirms delivery: `ok` means the push reached the nodes.
    let reply_to = conn.clone();
    let targeted = push.to_worker_id.clone();
    let expected = conn.worker().and_then(|w| w.data::<Reach>());
    client.publish_confirmed(event, &data, move |result| {
        let short = match (&result, &targeted, &expected) {
            (Ok(Some(n)), None, Some(reach)) => reach.observe(*n),
            _ => None,
        };
        match (result, targeted, short) {
            (Ok(Some(0)), Some(w), _) => reply_to.send(Response::text(
                404,
                format!("worker {w} is not connected to the channel: push reached no one\n"),
            )),
            (Ok(Some(n)), None, Some(want)) => reply_to.send(Response::text(
                503,
                format!("push reached {n} of the {want} WebSocket instances subscribed lately\n"),
            )),
            (Ok(Some(0)), None, None) => reply_to.send(Response::text(
                503,
                "no WebSocket node is subscribed: push reached no one\n",
            )),
            (Ok(_), _, _) => reply_to.send("ok"),
            (Err(e), _, _) => {
                reply_to.send(Response::text(503, format!("push not delivered: {e}\n")))
            }
        };
    });
}

/// The HTTP publisher (`publisher`). `ws_port` is what the demo page connects to; with a
/// `secret`, pushes must authenticate (see [`crate::auth`]).
pub fn http_worker(
    listen: &str,
    count: usize,
    channel_addr: &str,
    ws_port: u16,
    secret: Option<String>,
) -> anyhow::Result<Worker> {
    let mut worker = Worker::new(&format!("http://{listen}"))?;
    worker.name = "publisher".into();
    worker.count = count;
    if secret.is_none() && !is_loopback(listen) {
        log::warn!(
            "the push API on {listen} accepts pushes from anyone who reaches it: \
             set --secret (WERKMANN_SECRET) or listen on loopback"
        );
    }
    let addr = channel_addr.to_string();
    worker.on_worker_start(move |w| {
        if let Some(s) = &secret {
            w.set_data(Auth::new(s));
        }
        w.set_data(Reach::default());
        match Client::connect(&addr) {
            Ok(c) => w.set_data(c),
            Err(e) => log::error!("publisher: no channel: {e}"),
        }
    });
    let page = Arc::new(demo_page_with_nodes(ws_port, &ws_nodes_option()));
    worker.on_message(move |conn, msg| {
        if let Message::Request(req) = msg {
            handle(conn, &req, &page);
        }
    });
    Ok(worker)
}

/// Claim cluster-unique worker ids through the channel (see `werkmann::channel::worker_ids`),
/// or use `pinned` ones.
pub fn claim_ids(
    channel_addr: &str,
    count: usize,
    pinned: &str,
) -> anyhow::Result<channel::worker_ids::WorkerIds> {
    let pinned = if pinned.is_empty() {
        None
    } else {
        let ids: Vec<u32> = pinned
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--worker-ids {pinned:?}: {e}"))?;
        if ids.len() != count {
            anyhow::bail!("--worker-ids names {} ids for --count {count}", ids.len());
        }
        Some(ids)
    };
    Ok(channel::worker_ids::claim(
        channel_addr,
        count,
        pinned,
        std::time::Duration::from_secs(30),
    )?)
}

/// Take `--channel-secret S` (or `WERKMANN_CHANNEL_SECRET`) for every channel client of this
/// process. Call before any thread starts.
pub fn channel_secret_option() {
    let secret = werkmann::cli::option("--channel-secret", "WERKMANN_CHANNEL_SECRET", "");
    if !secret.is_empty() {
        std::env::set_var("WERKMANN_CHANNEL_SECRET", secret);
    }
}

/// Whether `IP:PORT` names a loopback address.
pub fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The demo page: connects to the WebSocket port, shows the greeting and pushes, and has a
/// form to broadcast or target a connection.
pub fn demo_page(ws_port: u16) -> String {
    demo_page_with_nodes(ws_port, &[])
}

/// The demo page knowing several WebSocket nodes: it connects to one of them, chosen at
/// random, and when that connection drops it tries the next one, with backoff. Each node is
/// `HOST:PORT` (the page's scheme, `ws://` or `wss://`) or a full `ws://`/`wss://` URL. With
/// no nodes the page uses its own host and `ws_port`. A `?ws=A,B` parameter on the page's
/// address overrides the list in the browser.
pub fn demo_page_with_nodes(ws_port: u16, nodes: &[String]) -> String {
    // JSON inside <script>: no "</script>" can end it early.
    let nodes = serde_json::to_string(nodes)
        .unwrap_or_else(|_| "[]".into())
        .replace('<', "\\u003c");
    include_str!("demo.html")
        .replace("{{WS_PORT}}", &ws_port.to_string())
        .replace("{{WS_NODES}}", &nodes)
}

/// The WebSocket nodes the demo page knows: `--ws-nodes A,B` (or `WERKMANN_WS_NODES`), each
/// `HOST:PORT` or a `ws://`/`wss://` URL; empty when not given.
pub fn ws_nodes_option() -> Vec<String> {
    werkmann::cli::option("--ws-nodes", "WERKMANN_WS_NODES", "")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}
