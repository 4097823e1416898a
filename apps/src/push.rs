//! The WebSocket and HTTP workers of the push system.
//!
//! - WebSocket instance `i` of a node holds cluster-unique worker id `ids[i]`; it subscribes to
//!   that id and to `Broadcast`, greets each client with
//!   `Worker-ID:{id} Verbindungs-ID:{connection id} verbunden\n`, delivers `{to_connection_id,
//!   content}` events to one of its connections and `Broadcast` events to all.
//! - The HTTP publisher takes `content`, `to_worker_id`, `to_connection_id` from the query, a
//!   form or a JSON body and publishes them; `GET /` without parameters serves the demo page.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use werkmann::channel::php_serde::{self, Reader};
use werkmann::channel::worker_ids::WorkerIds;
use werkmann::channel::{self, Client, Name};
use werkmann::protocol::http::percent_decode;
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
    // A client is addressed by (worker id, connection id), and a replacement node may claim a
    // dead node's worker ids: its connection ids must not repeat the dead node's.
    worker.time_based_connection_ids = true;
    werkmann::cli::apply_limits(&mut worker)?;
    let addr = channel_addr.to_string();
    let start_ids = worker_ids.clone();
    worker.on_worker_start(move |w| {
        if w.id() == 0 {
            start_ids.answer();
        }
        let my_id = start_ids.ids()[w.id()];
        let client = match Client::connect_with(&addr, &channel_options()) {
            Ok(c) => c,
            Err(e) => {
                log::error!("pusher {my_id}: no channel: {e}");
                return;
            }
        };
        let me = w.clone();
        client.on_raw(my_id, move |data| {
            let Some(event) = PushEvent::read(data) else {
                return;
            };
            let content = event.content().unwrap_or_default();
            match event.to_connection_id().and_then(|id| me.connection(id)) {
                Some(conn) => {
                    conn.send(content);
                }
                None => log::info!(
                    "worker {my_id}: Verbindung existiert nicht ({})",
                    event.field(1)
                ),
            }
        });
        let me = w.clone();
        client.on_raw(BROADCAST, move |data| {
            if me.connection_count() == 0 {
                return;
            }
            if let Some(content) = PushEvent::read(data).and_then(|e| e.content()) {
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

/// The fields of a push event the WebSocket worker reads, found in its PHP-serialized data
/// without decoding the rest. Reads exactly what decoding the data into a JSON value and
/// taking `data["content"]` and `data["to_connection_id"]` would.
struct PushEvent<'a> {
    data: &'a [u8],
    /// Where `content` and `to_connection_id` are, or the whole data decoded (anything but
    /// a flat array with string keys, which is all the publisher sends).
    fields: Result<[Option<Range<usize>>; 2], Value>,
}

impl<'a> PushEvent<'a> {
    const NAMES: [&'static [u8]; 2] = [b"content", b"to_connection_id"];

    /// `None` when the data cannot be decoded (logged).
    fn read(data: &'a Bytes) -> Option<PushEvent<'a>> {
        let fields = match Self::scan(data) {
            Some(f) => Ok(f),
            None => match php_serde::from_slice(data) {
                Ok(v) => Err(v),
                Err(e) => {
                    log::warn!("push event not decodable: {e}");
                    return None;
                }
            },
        };
        Some(PushEvent { data, fields })
    }

    /// The fast path: `a:N:{s:…;VALUE…}` with string keys only and nothing after it.
    fn scan(data: &[u8]) -> Option<[Option<Range<usize>>; 2]> {
        let mut r = Reader::new(data);
        let n = r.array_start().ok()?;
        let mut found = [None, None];
        for _ in 0..n {
            let key = r.key_raw().ok()??;
            // An integer-like string key is an integer key to PHP: not one of ours anyway.
            let range = r.skip().ok()?;
            if let Some(i) = Self::NAMES.iter().position(|k| *k == key) {
                found[i] = Some(range);
            }
        }
        r.array_end().ok()?;
        r.at_end().then_some(found)
    }

    /// Field `i` of [`PushEvent::NAMES`] as a JSON value (`Null` when absent).
    fn field(&self, i: usize) -> Value {
        match &self.fields {
            Ok(f) => f[i]
                .clone()
                .and_then(|r| php_serde::from_slice(&self.data[r]).ok())
                .unwrap_or(Value::Null),
            Err(v) => v[std::str::from_utf8(Self::NAMES[i]).unwrap_or("")].clone(),
        }
    }

    /// A string field's bytes, when it is a PHP string.
    fn string(&self, i: usize) -> Option<&'a [u8]> {
        let range = self.fields.as_ref().ok()?[i].clone()?;
        let raw = &self.data[range];
        if raw.first() != Some(&b's') {
            return None;
        }
        Reader::new(raw).key_raw().ok().flatten()
    }

    fn content(&self) -> Option<String> {
        match self.string(0) {
            Some(s) => Some(match std::str::from_utf8(s) {
                Ok(text) => text.to_owned(),
                Err(_) => String::from_utf8_lossy(s).into_owned(),
            }),
            None => text_of(&self.field(0)),
        }
    }

    fn to_connection_id(&self) -> Option<u64> {
        if let Some(s) = self.string(1) {
            return std::str::from_utf8(s).ok()?.parse().ok();
        }
        let v = self.field(1);
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    }
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
    /// Read the parameters; body fields win over query parameters (and within each, a later
    /// repetition of a key wins).
    pub fn from_request(req: &Request) -> Push {
        let mut push = Push::default();
        // One pass over the query, decoding only the values we keep.
        for pair in req.query_string().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = if k.contains(['%', '+']) {
                Cow::Owned(percent_decode(k))
            } else {
                Cow::Borrowed(k)
            };
            if let Some(slot) = push.slot(&k) {
                *slot = Some(percent_decode(v));
            }
        }
        if !req.body().is_empty() {
            for (k, v) in req.post_all() {
                if let Some(slot) = push.slot(&k) {
                    *slot = Some(v);
                }
            }
        }
        push
    }

    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        match key {
            "content" => Some(&mut self.content),
            "to_worker_id" => Some(&mut self.to_worker_id),
            "to_connection_id" => Some(&mut self.to_connection_id),
            _ => None,
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

/// The data of a push event in PHP `serialize()` format, as `php_serde::to_vec` writes
/// `{"content": content}` or `{"content": content, "to_connection_id": to}` (keys in order).
pub fn event_data(content: &str, to: Option<u64>) -> Bytes {
    let to = match to.map(i64::try_from) {
        None => None,
        Some(Ok(to)) => Some(to),
        // Past PHP's integers: as the general serializer writes it.
        Some(Err(_)) => {
            let v = json!({ "content": content, "to_connection_id": to });
            return php_serde::to_vec(&v).into();
        }
    };
    let mut out = Vec::with_capacity(64 + content.len());
    php_serde::write_array_start(&mut out, if to.is_some() { 2 } else { 1 });
    php_serde::write_str(&mut out, b"content");
    php_serde::write_str(&mut out, content.as_bytes());
    if let Some(to) = to {
        php_serde::write_str(&mut out, b"to_connection_id");
        php_serde::Key::Int(to).write(&mut out);
    }
    out.push(b'}');
    out.into()
}

/// The event and data a push becomes, or the 400 that says what is wrong with it.
fn event_of(push: &Push) -> Result<(Name, Bytes), Response> {
    let content = match push.content.as_deref() {
        Some(c) if !c.is_empty() => c,
        _ => return Err(Response::text(400, "missing content: nothing published\n")),
    };
    match (&push.to_worker_id, &push.to_connection_id) {
        (None, None) => Ok((Name::from(BROADCAST), event_data(content, None))),
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
            Ok((Name::from(worker), event_data(content, Some(conn))))
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
    client.publish_raw_confirmed(event, data, move |result| {
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
    // One replay memory for all instances.
    let auth = secret.as_deref().map(Auth::new);
    worker.on_worker_start(move |w| {
        if let Some(a) = &auth {
            w.set_data(a.clone());
        }
        w.set_data(Reach::default());
        match Client::connect_with(&addr, &channel_options()) {
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
        &channel_options(),
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

/// The channel clients' options: the secret (`--channel-secret`), and the private CA of a
/// `tls://` channel or `rediss://` (`--tls-ca`, `WERKMANN_REDIS_CA`).
pub fn channel_options() -> channel::Options {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    channel::Options {
        secret: var("WERKMANN_CHANNEL_SECRET"),
        tls_ca: var("WERKMANN_REDIS_CA")
            .or_else(|| var(werkmann::tls::CA_ENV))
            .map(Into::into),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_is_what_the_serializer_writes() {
        for content in ["x", "hällo \"quoted\";", &"y".repeat(300)] {
            let v = json!({ "content": content });
            assert_eq!(event_data(content, None), php_serde::to_vec(&v));
            for to in [0u64, 7, i64::MAX as u64, u64::MAX] {
                let v = json!({ "content": content, "to_connection_id": to });
                assert_eq!(event_data(content, Some(to)), php_serde::to_vec(&v));
            }
        }
    }

    /// What the WebSocket worker read before: the data decoded into a JSON value.
    fn by_value(data: &[u8]) -> (Option<String>, Option<u64>) {
        let Ok(v) = php_serde::from_slice(data) else {
            return (None, None);
        };
        let to = v["to_connection_id"]
            .as_u64()
            .or_else(|| v["to_connection_id"].as_str().and_then(|s| s.parse().ok()));
        (text_of(&v["content"]), to)
    }

    #[test]
    fn push_events_read_as_decoded() {
        let cases: Vec<Vec<u8>> = vec![
            event_data("hi", None).to_vec(),
            event_data("hi", Some(42)).to_vec(),
            br#"a:2:{s:16:"to_connection_id";s:2:"17";s:7:"content";i:5;}"#.to_vec(),
            br#"a:2:{s:7:"content";s:1:"a";s:7:"content";s:1:"b";}"#.to_vec(),
            br#"a:1:{s:7:"content";a:1:{i:0;b:1;}}"#.to_vec(),
            br#"a:1:{s:7:"content";N;}"#.to_vec(),
            br#"a:1:{i:0;s:7:"content";}"#.to_vec(),
            br#"a:1:{s:16:"to_connection_id";i:-3;}"#.to_vec(),
            br#"a:1:{s:16:"to_connection_id";d:1.5;}"#.to_vec(),
            br#"O:3:"Foo":1:{s:7:"content";s:1:"o";}"#.to_vec(),
            b"s:7:\"content\";".to_vec(),
            b"i:3;".to_vec(),
        ];
        for data in cases {
            let bytes = Bytes::from(data.clone());
            let fast = PushEvent::read(&bytes).map(|e| (e.content(), e.to_connection_id()));
            assert_eq!(
                fast.unwrap_or((None, None)),
                by_value(&data),
                "{}",
                String::from_utf8_lossy(&data)
            );
        }
    }

    #[test]
    fn push_parameters() {
        let req = |raw: &str| {
            werkmann::protocol::http::parse_head(raw.as_bytes())
                .expect("parses")
                .expect("complete")
                .0
        };
        let p = Push::from_request(&req(
            "GET /?content=a+b%21&to_worker_id=1&x=2&to_connection_id=3&content=c HTTP/1.1\r\n\r\n",
        ));
        assert_eq!(p.content.as_deref(), Some("c"));
        assert_eq!(p.to_worker_id.as_deref(), Some("1"));
        assert_eq!(p.to_connection_id.as_deref(), Some("3"));
        let p = Push::from_request(&req("GET /?cont%65nt=a+b%21 HTTP/1.1\r\n\r\n"));
        assert_eq!(p.content.as_deref(), Some("a b!"));
        assert!(Push::from_request(&req("GET / HTTP/1.1\r\n\r\n")).is_empty());
    }
}
