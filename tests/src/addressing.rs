//! GatewayWorker's vocabulary over the push cluster, black-box: a cluster of real processes on
//! one backend (embedded, a channel server, Redis, a Redis Cluster), WebSocket clients that
//! know their client ids, and the publisher's `POST /api/<method>` (see `apps/src/push/api.rs`)
//! asked as a backend would ask it. `tests/addressing.rs` runs its cases on each backend.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::push::{http, Ws};
use crate::{
    free_addr, greeting_ids, poll_until_async, wait_until_async, App, RedisCluster, RedisServer,
    WAIT,
};

/// The secret every cluster here runs with: the publisher's (`Authorization: Bearer`) and the
/// WebSocket nodes' (client tokens, HS256).
pub const SECRET: &str = "gw-test-secret";

/// A client token (a JWT signed with `secret` by `alg`) carrying `claims`.
pub fn token(claims: &Value, secret: &str, alg: jsonwebtoken::Algorithm) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("claims encode")
}

/// Seconds since the epoch (a token's `exp`).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// How soon a change the directory hears of at once (a client's close, a node's stop, a killed
/// node's channel connection closing) shows in every answer: "at once", with room for a debug
/// build on two busy cores — far below any liveness TTL.
pub const AT_ONCE: Duration = Duration::from_secs(5);

/// The backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `start_all`: the embedded channel; the two "nodes" are its two WebSocket instances
    /// (worker ids 0 and 1).
    Embedded,
    /// `start_channel`, two `start_ws` and a `start_http`.
    Server,
    /// A `redis-server`, two `start_ws` and a `start_http`.
    Redis,
    /// A three-node Redis Cluster, two `start_ws` and a `start_http`.
    RedisCluster,
}

/// What carries the channel.
enum Bus {
    Embedded,
    /// A channel server (none while killed) and its address.
    Server(Option<App>, SocketAddr),
    Redis(RedisServer),
    RedisCluster(#[allow(dead_code)] RedisCluster),
}

/// A WebSocket node of the cluster.
pub struct Node {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process (`None`: embedded, or stopped/killed).
    pub app: Option<App>,
    /// Embedded: the worker id that makes a connection this node's.
    worker: Option<u32>,
    args: Vec<String>,
}

/// A push cluster on one backend, started with [`SECRET`].
pub struct Cluster {
    /// Which backend.
    pub backend: Backend,
    /// The publisher (`POST /api/…`).
    pub publisher: SocketAddr,
    /// The two WebSocket nodes.
    pub nodes: Vec<Node>,
    /// The publisher's process (`start_all` for the embedded backend).
    _publisher: App,
    /// The channel (last: dropped after the nodes and the publisher).
    bus: Bus,
    marks: std::cell::Cell<u32>,
}

/// A WebSocket client of one node.
pub struct Client {
    /// Its client id, `{worker id}-{connection id}` as greeted.
    pub id: String,
    /// The index of its node in [`Cluster::nodes`].
    pub node: usize,
    /// The connection.
    pub ws: Ws,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {} (node {})", self.id, self.node)
    }
}

/// A request body.
pub enum Body<'a> {
    /// A JSON object (`Content-Type: application/json`).
    Json(Value),
    /// A form (`application/x-www-form-urlencoded`), already encoded.
    Form(&'a str),
}

impl Body<'_> {
    /// The body as sent, for messages.
    pub fn shown(&self) -> String {
        match self {
            Body::Json(v) => v.to_string(),
            Body::Form(f) => f.to_string(),
        }
    }
}

/// Percent-encode a form value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Cluster {
    /// Start a cluster on `backend`: the channel, two WebSocket nodes with two instances each
    /// (`start_all`: its two instances), a publisher; every process waited for until it
    /// listens.
    pub fn start(backend: Backend) -> Cluster {
        let secret = ["--secret", SECRET];
        let ws_node = |channel: &str| -> Node {
            let addr = free_addr("127.0.0.1");
            let args: Vec<String> = [
                "--listen",
                &addr.to_string(),
                "--count",
                "2",
                "--channel",
                channel,
            ]
            .iter()
            .chain(&secret)
            .map(|s| s.to_string())
            .collect();
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            Node {
                addr,
                app: Some(App::start_at("start_ws", &a, &[addr])),
                worker: None,
                args,
            }
        };
        let publisher = free_addr("127.0.0.1");
        let start_http = |channel: &str| {
            let p = publisher.to_string();
            let mut args = vec!["--listen", &p, "--channel", channel];
            args.extend_from_slice(&secret);
            App::start_at("start_http", &args, &[publisher])
        };
        let (bus, channel) = match backend {
            Backend::Embedded => {
                let ws = free_addr("127.0.0.1");
                let mut args = vec!["--count", "2"];
                args.extend_from_slice(&secret);
                let app = crate::start_all_at(ws, publisher, &args);
                wait_api(publisher, &app);
                let nodes = (0..2)
                    .map(|w| Node {
                        addr: ws,
                        app: None,
                        worker: Some(w),
                        args: Vec::new(),
                    })
                    .collect();
                return Cluster {
                    backend,
                    publisher,
                    nodes,
                    _publisher: app,
                    bus: Bus::Embedded,
                    marks: Default::default(),
                };
            }
            Backend::Server => {
                let ch = free_addr("127.0.0.1");
                let app = App::start_at("start_channel", &["--listen", &ch.to_string()], &[ch]);
                (Bus::Server(Some(app), ch), ch.to_string())
            }
            Backend::Redis => {
                let r = RedisServer::start();
                let url = r.url();
                (Bus::Redis(r), url)
            }
            Backend::RedisCluster => {
                let c = RedisCluster::start(3);
                let url = c.url();
                (Bus::RedisCluster(c), url)
            }
        };
        let nodes = vec![ws_node(&channel), ws_node(&channel)];
        let http = start_http(&channel);
        wait_api(publisher, &http);
        Cluster {
            backend,
            publisher,
            nodes,
            _publisher: http,
            bus,
            marks: Default::default(),
        }
    }

    /// Connect a client to node `node` and read its greeting (embedded: connect until one
    /// lands on the node's instance; the others are closed again).
    pub async fn connect(&self, node: usize) -> Client {
        let n = &self.nodes[node];
        for _ in 0..20 {
            let (ws, worker, conn) = crate::push::connect(n.addr).await;
            if n.worker.is_none_or(|w| w == worker) {
                let id = format!("{worker}-{conn}");
                return Client { id, node, ws };
            }
            drop(ws);
        }
        panic!("no connection to {} landed on node {node}", n.addr);
    }

    /// Connect to node `node` with `query` (e.g. `token=…`) in the URL: the client, or the
    /// HTTP status the handshake was refused with.
    pub async fn connect_with(&self, node: usize, query: &str) -> Result<Client, u16> {
        let n = &self.nodes[node];
        for _ in 0..20 {
            let url = format!("ws://{}/?{query}", n.addr);
            let (mut ws, _) = match tokio_tungstenite::connect_async(url).await {
                Ok(c) => c,
                Err(tungstenite::Error::Http(resp)) => return Err(resp.status().as_u16()),
                Err(e) => panic!("connecting to node {node} with {query:?}: {e}"),
            };
            let (worker, conn) = greeting_ids(&crate::push::next_text(&mut ws).await);
            if n.worker.is_none_or(|w| w == worker) {
                let id = format!("{worker}-{conn}");
                return Ok(Client { id, node, ws });
            }
        }
        panic!("no connection to node {node} landed on its instance");
    }

    /// `POST /api/{method}` with the secret; the status and the body.
    pub async fn raw(&self, method: &str, body: Body<'_>, auth: Option<&str>) -> (u16, String) {
        let (ctype, text) = match &body {
            Body::Json(v) => ("application/json", v.to_string()),
            Body::Form(f) => ("application/x-www-form-urlencoded", f.to_string()),
        };
        let auth = auth
            .map(|a| format!("Authorization: Bearer {a}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /api/{method} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {ctype}\r\nContent-Length: {}\r\n",
            text.len()
        );
        http(self.publisher, &head, &text).await
    }

    /// `POST /api/{method}` with the secret; the status and the JSON answer.
    pub async fn api(&self, method: &str, body: Body<'_>) -> (u16, Value) {
        let (status, text) = self.raw(method, body, Some(SECRET)).await;
        let v = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{:?}: /api/{method} answered {status} with no JSON ({e}): {text:?}",
                self.backend
            )
        });
        (status, v)
    }

    /// A JSON request that must be answered 200; the answer.
    pub async fn ok(&self, method: &str, params: Value) -> Value {
        let (status, v) = self.api(method, Body::Json(params.clone())).await;
        assert_eq!(
            status, 200,
            "{:?}: /api/{method} {params} answered {v}",
            self.backend
        );
        v
    }

    /// A query: its `result`.
    pub async fn query(&self, method: &str, params: Value) -> Value {
        let v = self.ok(method, params.clone()).await;
        match v {
            Value::Object(mut m) if m.len() == 1 && m.contains_key("result") => {
                m.remove("result").unwrap()
            }
            other => panic!(
                "{:?}: /api/{method} {params} answered {other}, not {{\"result\": …}}",
                self.backend
            ),
        }
    }

    /// A query answering a list (ascending, each item once: `channel::dir`), as a set.
    pub async fn set(&self, method: &str, params: Value) -> BTreeSet<String> {
        let v = self.query(method, params.clone()).await;
        let list = v.as_array().unwrap_or_else(|| {
            panic!("{:?}: /api/{method} {params}: {v} is no list", self.backend)
        });
        let items: Vec<String> = list
            .iter()
            .map(|s| s.as_str().expect("a list of strings").to_string())
            .collect();
        let set: BTreeSet<String> = items.iter().cloned().collect();
        assert_eq!(
            items,
            set.iter().cloned().collect::<Vec<_>>(),
            "{:?}: /api/{method} {params}: ascending, no repeats",
            self.backend
        );
        set
    }

    /// A count query.
    pub async fn count(&self, method: &str, params: Value) -> u64 {
        let v = self.query(method, params.clone()).await;
        v.as_u64().unwrap_or_else(|| {
            panic!(
                "{:?}: /api/{method} {params}: {v} is no count",
                self.backend
            )
        })
    }

    /// `get_all_client_id_count`.
    pub async fn online(&self) -> u64 {
        self.count("get_all_client_id_count", json!({})).await
    }

    /// A send; what it answered as `reached` (200 required).
    pub async fn reached(&self, method: &str, body: Body<'_>) -> u64 {
        let shown = body.shown();
        let (status, v) = self.api(method, body).await;
        assert_eq!(
            status, 200,
            "{:?}: /api/{method} {shown} answered {v}",
            self.backend
        );
        // `{"reached": N}`, and for a send_to_uid that found uids offline `"offline": [uids]`.
        let offline_ok = |m: &serde_json::Map<String, Value>| match m.get("offline") {
            None => m.len() == 1,
            Some(Value::Array(a)) => {
                method == "send_to_uid" && !a.is_empty() && a.iter().all(Value::is_string)
            }
            Some(_) => false,
        };
        match v.get("reached").and_then(Value::as_u64) {
            Some(n) if v.as_object().is_some_and(offline_ok) => n,
            _ => panic!(
                "{:?}: /api/{method} {shown} answered {v}, not {{\"reached\": N}}",
                self.backend
            ),
        }
    }

    /// Wait until the directory holds exactly `clients` (every one online, the count right)
    /// and a `send_to_all` reaches each of them (their nodes have subscribed), and read every
    /// client past it.
    pub async fn settle(&self, clients: &mut [Client]) {
        let n = clients.len() as u64;
        let what = format!(
            "{:?}: the directory holds exactly {n} clients",
            self.backend
        );
        let mut last = 0;
        let held = poll_until_async(WAIT, async || {
            last = self.online().await;
            last == n
        })
        .await;
        // What it held instead tells a client not registered from one not removed.
        assert!(held, "not within {WAIT:?}: {what}: it holds {last}");
        for c in clients.iter() {
            let id = c.id.clone();
            let online = self.query("is_online", json!({ "client_id": id })).await;
            assert_eq!(online, json!(true), "{:?}: {c:?} is online", self.backend);
        }
        let (mut k, mut mark, mut reached) = (0, String::new(), 0);
        let all = poll_until_async(WAIT, async || {
            mark = format!("settle-{k}");
            k += 1;
            reached = self
                .reached("send_to_all", Body::Json(json!({ "message": mark })))
                .await;
            reached == n
        })
        .await;
        if !all {
            // Say what the directory holds, to tell a node that has not subscribed from a
            // client that is not registered.
            let ids: Vec<&str> = clients.iter().map(|c| c.id.as_str()).collect();
            let online = self.online().await;
            panic!(
                "{:?}: a send_to_all reaches all {n} within {WAIT:?}: it reached {reached}; \
                 the directory holds {online} clients; the clients: {ids:?}",
                self.backend
            );
        }
        for c in clients.iter_mut() {
            for t in c.until(&mark).await {
                // A settle mark, or an earlier case's `send_to_all` mark still on its way to
                // this node when the client connected (a node writes a send to everyone to
                // all its connections, registered yet or not).
                assert!(
                    t.starts_with("settle-") || t.starts_with("mark-"),
                    "{c:?}: unexpected {t:?}"
                );
            }
        }
    }

    /// Assert what each client received since the last check: `send_to_all` a fresh mark
    /// (reaching every one of `clients`, and no one else) and read each client up to it; what
    /// came before is `message` for the clients in `targets`, nothing for the others.
    pub async fn delivered(&self, clients: &mut [Client], targets: &[&str], message: &str) {
        let mark = self.mark();
        let n = self
            .reached("send_to_all", Body::Json(json!({ "message": mark })))
            .await;
        assert_eq!(
            n,
            clients.len() as u64,
            "{:?}: the mark reaches every client",
            self.backend
        );
        for c in clients.iter_mut() {
            let got = c.until(&mark).await;
            let want: Vec<String> = if targets.contains(&c.id.as_str()) {
                vec![message.to_string()]
            } else {
                Vec::new()
            };
            assert_eq!(
                got,
                want,
                "{:?}: {c:?} received {message:?} exactly {} (targets {targets:?})",
                self.backend,
                if want.is_empty() { "never" } else { "once" }
            );
        }
    }

    /// A send that must answer `reached` and reach exactly `targets` (client ids) among
    /// `clients`, once each; `message` is what it sends.
    pub async fn sends(
        &self,
        clients: &mut [Client],
        method: &str,
        body: Body<'_>,
        message: &str,
        reached: u64,
        targets: &[&str],
    ) {
        let shown = body.shown();
        let n = self.reached(method, body).await;
        assert_eq!(
            n, reached,
            "{:?}: /api/{method} {shown} reached {n}, not {reached}",
            self.backend
        );
        self.delivered(clients, targets, message).await;
    }

    fn mark(&self) -> String {
        let n = self.marks.get();
        self.marks.set(n + 1);
        format!("mark-{n}")
    }

    /// A client id no connection has: a worker id of node `node`'s client `c`, a connection
    /// id no connection got (time-based ids are far larger).
    pub fn unknown_id(c: &Client) -> String {
        format!("{}-1", c.id.split_once('-').unwrap().0)
    }

    /// Stop node `node` cleanly (`stop`, which returns once it has exited).
    pub fn stop_node(&mut self, node: usize) {
        let app = self.nodes[node]
            .app
            .take()
            .expect("a node of its own process");
        let out = app.command(&["stop"]);
        assert!(
            out.status.success(),
            "stop: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        drop(app);
    }

    /// Kill node `node` with SIGKILL (and reap it).
    pub fn kill_node(&mut self, node: usize) {
        let mut app = self.nodes[node]
            .app
            .take()
            .expect("a node of its own process");
        app.child.kill().unwrap();
        app.child.wait().unwrap();
        drop(app);
    }

    /// Kill the channel server or Redis (SIGKILL): everything Redis held is gone.
    pub fn kill_bus(&mut self) {
        match &mut self.bus {
            Bus::Server(app, _) => drop(app.take()),
            Bus::Redis(r) => r.kill(),
            Bus::Embedded | Bus::RedisCluster(_) => panic!("{:?}: no bus to kill", self.backend),
        }
    }

    /// Start the channel server or Redis again on its address (empty).
    pub fn restart_bus(&mut self) {
        match &mut self.bus {
            Bus::Server(app, addr) => {
                let a = addr.to_string();
                *app = Some(App::start_at("start_channel", &["--listen", &a], &[*addr]));
            }
            Bus::Redis(r) => r.restart(),
            Bus::Embedded | Bus::RedisCluster(_) => panic!("{:?}: no bus to restart", self.backend),
        }
    }

    /// Freeze node `node` (SIGSTOP): its sockets stay open, it answers nothing — a node on a
    /// machine that vanished without closing anything.
    pub fn freeze_node(&self, node: usize) {
        self.signal_node(node, libc::SIGSTOP);
    }

    /// Let a frozen node run again (SIGCONT).
    pub fn thaw_node(&self, node: usize) {
        self.signal_node(node, libc::SIGCONT);
    }

    fn signal_node(&self, node: usize, sig: i32) {
        let app = self.nodes[node].app.as_ref().expect("a running node");
        let pid = app.child.id() as i32;
        // SAFETY: kill(2) takes two integers and touches no memory of ours.
        assert_eq!(
            unsafe { libc::kill(pid, sig) },
            0,
            "signal {sig} to node {node}"
        );
    }

    /// Start node `node` again on its address, with its options.
    pub fn restart_node(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        assert!(n.app.is_none(), "node {node} is stopped");
        let args: Vec<&str> = n.args.iter().map(String::as_str).collect();
        n.app = Some(App::start_at("start_ws", &args, &[n.addr]));
    }
}

/// Wait until the publisher on `addr` answers the API (it listens before its channel client
/// has connected, and answers 503 until then).
fn wait_api(addr: SocketAddr, app: &App) {
    use std::io::{Read, Write};
    let mut last = String::new();
    let answers = crate::poll_until(WAIT, || {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let req = format!(
            "POST /api/get_all_client_id_count HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let mut out = Vec::new();
        if s.write_all(req.as_bytes()).is_err() || s.read_to_end(&mut out).is_err() {
            return false;
        }
        let (status, body) = crate::split_response(&out);
        last = format!("{status} {body}");
        status == 200
    });
    assert!(
        answers,
        "the publisher on {addr} answers the API: last {last}; log:\n{}",
        app.log()
    );
}

impl Client {
    /// The text messages before `mark`, which must come (within [`WAIT`] each).
    pub async fn until(&mut self, mark: &str) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let m = match tokio::time::timeout(WAIT, self.ws.next()).await {
                Err(_) => panic!("{self:?}: no {mark:?} within {WAIT:?}; before it {got:?}"),
                Ok(None) => panic!("{self:?}: closed before {mark:?}; before it {got:?}"),
                Ok(Some(Err(e))) => panic!("{self:?}: {e} before {mark:?}; before it {got:?}"),
                Ok(Some(Ok(m))) => m,
            };
            if let WsMessage::Text(t) = m {
                if t.as_str() == mark {
                    return got;
                }
                got.push(t.to_string());
            }
        }
    }

    /// The text messages until the server closes the connection, which it must within
    /// [`WAIT`].
    pub async fn closed(&mut self) -> Vec<String> {
        let mut got = Vec::new();
        let started = Instant::now();
        loop {
            let left = WAIT.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("{self:?} is not closed within {WAIT:?}; got {got:?}"),
                Ok(None | Some(Err(_)) | Some(Ok(WsMessage::Close(_)))) => return got,
                Ok(Some(Ok(WsMessage::Text(t)))) => got.push(t.to_string()),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Close the connection with a close handshake.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Read until the server's close (or the end), so the close handshake completes.
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// How long it took `cond` to hold, polling every 20 ms; fails when it does not hold within
/// `bound` (what it waits for: `what`).
pub async fn within(
    bound: Duration,
    what: impl std::fmt::Display,
    cond: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    wait_until_async(bound, what, cond).await;
    start.elapsed()
}
