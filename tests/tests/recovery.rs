//! No silent loss across a reconnect (issue 18): Server-Sent Events on the publishers,
//! read with curl (and the browser's own EventSource), resuming through the channel's history
//! after a reader was away — on every backend: the embedded channel (`start_all`), a channel
//! server and Redis, with a reader that comes back through the other publisher.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use werkmann_tests::browser::Browser;
use werkmann_tests::push::{get, http};
use werkmann_tests::{free_addr, start_all_at, App, RedisServer};

const T: Duration = Duration::from_secs(10);
/// The publishers' history rules: `tiny` keeps 2, `nohist` nothing, every other name 100.
const HISTORY: &str = "tiny=2/60s,nohist=off,*=100/5m";

/// One Server-Sent Event as a reader gets it.
#[derive(Debug, Default, Clone, PartialEq)]
struct Event {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

/// `curl -N` reading an event stream.
struct Sse {
    child: Child,
    out: BufReader<ChildStdout>,
    /// The last id seen, as the browser keeps it.
    last_id: Option<String>,
}

impl Sse {
    async fn open(addr: SocketAddr, query: &str, last_id: Option<&str>) -> Sse {
        Sse::open_as(addr, query, last_id, None).await
    }

    /// [`Sse::open`] with the push secret (`Authorization: Bearer`).
    async fn open_as(
        addr: SocketAddr,
        query: &str,
        last_id: Option<&str>,
        secret: Option<&str>,
    ) -> Sse {
        let mut s = Sse::spawn(addr, query, last_id, secret);
        // A new stream stands once its first id is here (after a comment and the retry); a
        // resumed one starts with its `recovery` event, which the caller reads.
        if last_id.is_none() {
            let first = s.next().await;
            assert!(
                first.id.is_some() && first.data.is_none(),
                "a first id: {first:?}"
            );
        }
        s
    }

    /// A stream with a client token (`?token=`): its `welcome` (the client id) comes first,
    /// then its first id.
    async fn open_with_token(addr: SocketAddr, query: &str, token: &str) -> (Sse, String) {
        let mut s = Sse::spawn(addr, &format!("{query}&token={token}"), None, None);
        let (event, client_id) = s.data().await;
        assert_eq!(event.as_deref(), Some("welcome"), "{client_id}");
        let first = s.next().await;
        assert!(first.id.is_some() && first.data.is_none(), "{first:?}");
        (s, client_id)
    }

    /// curl reading `/sse?{query}`.
    fn spawn(addr: SocketAddr, query: &str, last_id: Option<&str>, secret: Option<&str>) -> Sse {
        let mut cmd = Command::new("curl");
        cmd.args(["-sSN", "--max-time", "60"]);
        if let Some(s) = secret {
            cmd.args(["-H", &format!("Authorization: Bearer {s}")]);
        }
        if let Some(id) = last_id {
            cmd.args(["-H", &format!("Last-Event-ID: {id}")]);
        }
        let mut child = cmd
            .arg(format!("http://{addr}/sse?{query}"))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("curl (scripts/test installs it)");
        let out = BufReader::new(child.stdout.take().unwrap());
        Sse {
            child,
            out,
            last_id: last_id.map(str::to_string),
        }
    }

    /// The next event (an id alone counts: it is what the browser would send back).
    async fn next(&mut self) -> Event {
        tokio::time::timeout(T, async {
            let mut e = Event::default();
            loop {
                let mut line = String::new();
                let n = self.out.read_line(&mut line).await.unwrap();
                assert!(n > 0, "the stream ended");
                let line = line.trim_end_matches('\n');
                if line.is_empty() {
                    if e.id.is_some() || e.data.is_some() {
                        if e.id.is_some() {
                            self.last_id = e.id.clone();
                        }
                        return e;
                    }
                    continue;
                }
                let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                match field {
                    "id" => e.id = Some(value.to_string()),
                    "event" => e.event = Some(value.to_string()),
                    "data" => {
                        e.data = Some(match e.data.take() {
                            Some(d) => format!("{d}\n{value}"),
                            None => value.to_string(),
                        })
                    }
                    _ => {}
                }
            }
        })
        .await
        .expect("an event within 10 s")
    }

    /// The next event's data (and event name), which must be one.
    async fn data(&mut self) -> (Option<String>, String) {
        let e = self.next().await;
        let data = e
            .data
            .unwrap_or_else(|| panic!("an event with data: {:?}", e.id));
        (e.event, data)
    }

    /// The `recovery` event a resumed stream starts with.
    async fn recovery(&mut self) -> Value {
        let e = self.next().await;
        assert_eq!(e.event.as_deref(), Some("recovery"), "{e:?}");
        serde_json::from_str(e.data.as_deref().unwrap()).unwrap()
    }

    fn close(mut self) -> Option<String> {
        let _ = self.child.start_kill();
        self.last_id
    }
}

/// The event bus of a topology and its publishers (two, or the one of `start_all`).
struct Cluster {
    publishers: Vec<SocketAddr>,
    /// The WebSocket nodes.
    ws: Vec<SocketAddr>,
    _apps: Vec<App>,
    bus: Option<Bus>,
}

enum Bus {
    Server(Option<App>, SocketAddr),
    Redis(RedisServer),
}

impl Cluster {
    fn embedded() -> Cluster {
        let (ws, web) = (free_addr("127.0.2.1"), free_addr("127.0.2.2"));
        let app = start_all_at(ws, web, &["--history", HISTORY]);
        Cluster {
            publishers: vec![web],
            ws: vec![ws],
            _apps: vec![app],
            bus: None,
        }
    }

    fn on(bus: Bus) -> Cluster {
        let ch = match &bus {
            Bus::Server(_, a) => a.to_string(),
            Bus::Redis(r) => r.url(),
        };
        let ws = free_addr("127.0.2.3");
        let mut apps = vec![App::start_at(
            "start_ws",
            &["--listen", &ws.to_string(), "--channel", &ch],
            &[ws],
        )];
        let publishers = vec![free_addr("127.0.2.4"), free_addr("127.0.2.5")];
        for p in &publishers {
            apps.push(start_http(*p, &ch));
        }
        Cluster {
            publishers,
            ws: vec![ws],
            _apps: apps,
            bus: Some(bus),
        }
    }

    fn server() -> Cluster {
        let ch = free_addr("127.0.2.6");
        let app = App::start_at("start_channel", &["--listen", &ch.to_string()], &[ch]);
        Cluster::on(Bus::Server(Some(app), ch))
    }

    fn redis() -> Cluster {
        Cluster::on(Bus::Redis(RedisServer::start()))
    }

    /// The publisher a reader comes back through (the other one, when there are two).
    fn other(&self) -> SocketAddr {
        *self.publishers.last().unwrap()
    }

    /// Kill the bus and start it again, empty; wait until the publishers take pushes again.
    async fn restart_bus(&mut self) {
        match self.bus.as_mut().expect("a bus of its own") {
            Bus::Server(app, a) => {
                drop(app.take());
                *app = Some(App::start_at(
                    "start_channel",
                    &["--listen", &a.to_string()],
                    &[*a],
                ));
            }
            Bus::Redis(r) => r.restart(),
        }
        for p in self.publishers.clone() {
            until_ok(p, "/?content=back").await;
        }
    }
}

fn start_http(addr: SocketAddr, channel: &str) -> App {
    App::start_at(
        "start_http",
        &[
            "--listen",
            &addr.to_string(),
            "--channel",
            channel,
            "--history",
            HISTORY,
        ],
        &[addr],
    )
}

/// Push until answered 200 (nodes and publishers still connecting answer 503).
async fn until_ok(addr: SocketAddr, q: &str) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (status, body) = get(addr, q).await;
        if status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{q} never answered 200: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn push(addr: SocketAddr, q: &str) {
    let (status, body) = get(addr, q).await;
    assert_eq!((status, body.as_str()), (200, "ok"), "{q}");
}

/// Every stream case on one topology.
async fn streams_resume(mut c: Cluster) {
    let first = c.publishers[0];
    until_ok(first, "/?content=warm").await;

    // Bad requests: 400 naming what is wrong, 405 for other methods.
    for (q, want) in [
        ("/sse", "missing channel"),
        ("/sse?channel=3", "not a number"),
        ("/sse?channel=werkmann.gw.x", "not a number"),
        ("/sse?channel=a%20b", "channel"),
        ("/sse?channel=a&last_event_id=x", "Last-Event-ID"),
        ("/sse?channel=a,b&last_event_id=1:1", "2 EPOCH:OFFSET"),
    ] {
        let (status, body) = get(first, q).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body.contains(want), "{q}: {body}");
    }
    let many: Vec<String> = (0..17).map(|i| format!("c{i}")).collect();
    let (status, _) = get(first, &format!("/sse?channel={}", many.join(","))).await;
    assert_eq!(status, 400);
    let (status, _) = http(
        first,
        "POST /sse?channel=a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n",
        "",
    )
    .await;
    assert_eq!(status, 405);
    // A named channel without history and without a reader: the push reached no one.
    let (status, body) = get(first, "/?channel=nohist&content=x").await;
    assert_eq!(status, 404, "{body}");

    // A seed push arrives as exactly its content.
    let mut a = Sse::open(first, "channel=Broadcast", None).await;
    push(first, "/?content=eins").await;
    assert_eq!(a.data().await, (None, "eins".to_string()));
    push(first, "/?content=zwei%0Azeilen%20%C3%BC").await;
    assert_eq!(a.data().await, (None, "zwei\nzeilen ü".to_string()));
    let left_at = a.close();

    // Away: two pushes through the other publisher. Back (through it): both, once, in order,
    // then live ones.
    push(c.other(), "/?content=drei").await;
    push(c.other(), "/?content=vier").await;
    let mut b = Sse::open(c.other(), "channel=Broadcast", left_at.as_deref()).await;
    assert_eq!(
        b.recovery().await,
        serde_json::json!({"recovered": true, "lost": []})
    );
    assert_eq!(b.data().await.1, "drei");
    assert_eq!(b.data().await.1, "vier");
    push(first, "/?content=f%C3%BCnf").await;
    assert_eq!(b.data().await.1, "fünf");
    let at_fuenf = b.close();

    // Two channels in one stream, named; `tiny` keeps 2: after three away it is lost (and
    // goes on from now), `Broadcast` is recovered.
    let mut m = Sse::open(first, "channel=Broadcast,tiny", None).await;
    push(first, "/?channel=tiny&content=t1").await;
    assert_eq!(m.data().await, (Some("tiny".into()), "t1".into()));
    let left_at = m.close();
    for t in ["t2", "t3", "t4"] {
        push(c.other(), &format!("/?channel=tiny&content={t}")).await;
    }
    push(c.other(), "/?content=sechs").await;
    let mut m = Sse::open(first, "channel=Broadcast,tiny", left_at.as_deref()).await;
    assert_eq!(
        m.recovery().await,
        serde_json::json!({"recovered": false, "lost": ["tiny"]})
    );
    assert_eq!(m.data().await, (Some("Broadcast".into()), "sechs".into()));
    push(first, "/?channel=tiny&content=t5").await;
    assert_eq!(m.data().await, (Some("tiny".into()), "t5".into()));
    drop(m);

    many_streams_get_a_burst_once_in_order(first).await;

    // The bus restarts empty (a channel server, a Redis without persistence): a reader from
    // before is told it lost what came meanwhile, never given a silent gap.
    if c.bus.is_some() {
        c.restart_bus().await;
        push(first, "/?content=sieben").await;
        let mut r = Sse::open(first, "channel=Broadcast", at_fuenf.as_deref()).await;
        assert_eq!(
            r.recovery().await,
            serde_json::json!({"recovered": false, "lost": ["Broadcast"]})
        );
        push(first, "/?content=acht").await;
        assert_eq!(r.data().await.1, "acht");
    }
}

/// Many streams of one name (past the few written at once, so their writes are queued and
/// made once per turn): a burst of concurrent pushes reaches each of them, every push once,
/// all in the same order, with ids that only go up.
async fn many_streams_get_a_burst_once_in_order(web: SocketAddr) {
    const STREAMS: usize = 24;
    const PUSHES: usize = 30;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(Sse::open(web, "channel=fan", None).await);
    }
    let paths: Vec<String> = (0..PUSHES)
        .map(|i| format!("/?channel=fan&content=p{i}"))
        .collect();
    futures_util::future::join_all(paths.iter().map(|p| push(web, p))).await;
    let mut first: Option<Vec<String>> = None;
    for s in &mut streams {
        let mut got = Vec::new();
        let mut last = 0u64;
        for _ in 0..PUSHES {
            let e = s.next().await;
            let id = e.id.expect("an id");
            let offset: u64 = id.rsplit(':').next().unwrap().parse().unwrap();
            assert!(offset > last, "ids go up: {id} after offset {last}");
            last = offset;
            got.push(e.data.expect("data"));
        }
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), PUSHES, "every push once: {got:?}");
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(&got, f, "every stream in the same order"),
        }
    }
}

#[tokio::test]
async fn streams_resume_embedded() {
    streams_resume(Cluster::embedded()).await;
}

#[tokio::test]
async fn streams_resume_through_a_channel_server() {
    streams_resume(Cluster::server()).await;
}

#[tokio::test]
async fn streams_resume_on_redis() {
    streams_resume(Cluster::redis()).await;
}

/// The browser's own EventSource resumes after the server dropped it: its publisher is killed,
/// a push goes through the other one meanwhile, the publisher comes back on its address, and
/// the browser reconnects by itself with `Last-Event-ID` — and gets what it missed, once.
#[tokio::test]
async fn event_source_in_chromium_resumes_after_the_server_drops_it() {
    let mut c = Cluster::server();
    let ch = match c.bus.as_ref() {
        Some(Bus::Server(_, a)) => a.to_string(),
        _ => unreachable!(),
    };
    let first = c.publishers[0];
    until_ok(first, "/?content=warm").await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://{first}/")).await;
    browser
        .js("window.got = []; window.recoveries = []; \
             const es = new EventSource('/sse?channel=Broadcast'); \
             es.onmessage = e => window.got.push(e.data); \
             es.addEventListener('recovery', e => window.recoveries.push(e.data)); \
             es.onopen = () => { window.opens = (window.opens || 0) + 1; }; \
             window.es = es; return true;")
        .await;
    browser
        .wait_for("return window.opens === 1", "the stream opens")
        .await;
    push(first, "/?content=vorher").await;
    browser
        .wait_for("return window.got.join('|') === 'vorher'", "the first push")
        .await;

    // The publisher dies; a push goes through the other publisher; it comes back.
    let app = c._apps.remove(1);
    drop(app);
    push(c.other(), "/?content=w%C3%A4hrenddessen").await;
    c._apps.insert(1, start_http(first, &ch));
    let got = browser
        .wait_for(
            "return window.got.length >= 2 && window.got.join('|')",
            "the browser reconnects and resumes",
        )
        .await;
    assert_eq!(got, "vorher|währenddessen");
    let rec = browser.js("return window.recoveries").await;
    assert_eq!(rec, serde_json::json!([r#"{"lost":[],"recovered":true}"#]));
    push(first, "/?content=danach").await;
    browser
        .wait_for(
            "return window.got.join('|') === 'vorher|währenddessen|danach'",
            "live after the resume",
        )
        .await;
    browser.quit().await;
}

/// `/werkmann.js` in Chromium, on two WebSocket nodes: it follows a channel, its node is
/// killed, two pushes go out while it is away, it reconnects to the other node by itself and
/// gets both, once, in order (`recovery`: recovered), then live ones; a push to its client id
/// arrives as a direct message, never as a channel event.
#[tokio::test]
async fn werkmann_js_resumes_on_another_node_after_its_node_dies() {
    let ch = free_addr("127.0.2.7");
    let _channel = App::start_at("start_channel", &["--listen", &ch.to_string()], &[ch]);
    let ws = [free_addr("127.0.2.8"), free_addr("127.0.2.9")];
    let mut nodes: Vec<Option<App>> = ws
        .iter()
        .map(|a| {
            Some(App::start_at(
                "start_ws",
                &["--listen", &a.to_string(), "--channel", &ch.to_string()],
                &[*a],
            ))
        })
        .collect();
    let web = free_addr("127.0.2.10");
    let _publisher = start_http(web, &ch.to_string());
    until_ok(web, "/?content=warm").await;
    let (status, js) = get(web, "/werkmann.js").await;
    assert_eq!(status, 200);
    assert!(js.contains("class Werkmann"), "{js}");

    let browser = Browser::start().await;
    browser.goto(&format!("http://{web}/")).await;
    browser
        .js(&format!(
            "window.got = []; window.recoveries = []; window.direct = []; window.states = []; \
             const s = document.createElement('script'); s.src = '/werkmann.js'; \
             s.onload = () => {{ \
               const w = new Werkmann(['ws://{}', 'ws://{}'], \
                 {{ channels: ['news'], start: 0, minDelay: 1500 }}); \
               w.on('message', (d, c) => window.got.push(c + ':' + d)); \
               w.on('recovery', r => window.recoveries.push(JSON.stringify(r))); \
               w.on('direct', t => window.direct.push(t)); \
               w.on('welcome', id => {{ window.clientId = id; }}); \
               w.on('status', st => window.states.push(st)); \
               window.w = w; }}; \
             document.head.appendChild(s); return true;",
            ws[0], ws[1]
        ))
        .await;
    browser
        .wait_for(
            "return window.states.includes('ready')",
            "the stream stands",
        )
        .await;
    push(web, "/?channel=news&content=eins").await;
    browser
        .wait_for(
            "return window.got.join('|') === 'news:eins'",
            "the first push",
        )
        .await;
    // A push to its client id (the seed's targeted push) is a direct message.
    let id = browser.js("return window.clientId").await;
    let (w, c) = id.as_str().unwrap().split_once('-').unwrap();
    push(
        web,
        &format!("/?to_worker_id={w}&to_connection_id={c}&content=nur-dir"),
    )
    .await;
    browser
        .wait_for(
            "return window.direct.join('|') === 'nur-dir'",
            "the direct push",
        )
        .await;

    // Its node dies; while it waits to reconnect, two pushes.
    nodes[0].take();
    browser
        .wait_for(
            "return window.states.includes('closed')",
            "the drop is seen",
        )
        .await;
    push(web, "/?channel=news&content=zwei").await;
    push(web, "/?channel=news&content=drei").await;
    browser
        .wait_for(
            "return window.got.length >= 3 && window.got.join('|')",
            "it resumes on the other node",
        )
        .await;
    assert_eq!(
        browser.js("return window.got.join('|')").await,
        "news:eins|news:zwei|news:drei"
    );
    assert_eq!(
        browser.js("return window.recoveries").await,
        serde_json::json!([r#"{"recovered":true,"lost":[]}"#])
    );
    push(web, "/?channel=news&content=vier").await;
    browser
        .wait_for(
            "return window.got.join('|') === 'news:eins|news:zwei|news:drei|news:vier'",
            "live after the resume",
        )
        .await;
    assert_eq!(browser.js("return window.direct.length").await, 1);
    browser.quit().await;
    drop(nodes);
}

/// The resuming WebSocket protocol refuses a bad request at the handshake: 400.
#[tokio::test]
async fn the_resuming_protocol_refuses_bad_requests() {
    let c = Cluster::embedded();
    let web = c.publishers[0];
    until_ok(web, "/?content=warm").await;
    let ws_addr = c.ws[0];
    for q in ["", "?channel=3", "?channel=a&last_event_id=1:x"] {
        let url = format!("ws://{ws_addr}/werkmann{q}");
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 400, "{q}")
            }
            other => panic!("{q}: refused with 400, not {other:?}"),
        }
    }
}

/// A webhook receiver on loopback: each POST's `X-Werkmann-Signature` and body, in order;
/// it answers the first `fail_first` requests 500 (to see the retry), then 200.
struct Receiver {
    addr: SocketAddr,
    got: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    /// The sender has no secret: nothing to check.
    unsigned: bool,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, got) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break (String::new(), String::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_string(), body.to_string());
                        }
                    }
                };
                let sig = head
                    .lines()
                    .find_map(|l| l.strip_prefix("X-Werkmann-Signature: "))
                    .unwrap_or("")
                    .to_string();
                seen += 1;
                let status = if seen <= fail_first {
                    "500 No"
                } else {
                    "200 OK"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
                let _ = tx.send((sig, body));
            }
        });
        Receiver {
            addr,
            got,
            unsigned: false,
        }
    }

    async fn next(&mut self) -> (String, Value) {
        let (sig, body) = tokio::time::timeout(Duration::from_secs(15), self.got.recv())
            .await
            .expect("a webhook within 15 s")
            .unwrap();
        if self.unsigned {
            assert_eq!(sig, "", "no secret, no signature");
        } else {
            assert_eq!(
                sig,
                hmac(&body),
                "signed with the push API's secret: {body}"
            );
        }
        (body.clone(), serde_json::from_str(&body).unwrap())
    }
}

const API_SECRET: &str = "report-secret";

/// HMAC-SHA256 of `body` with [`API_SECRET`], hex (openssl computes it).
fn hmac(body: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", API_SECRET, "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// POST `/api/{method}` with the secret; status and JSON answer.
async fn api(web: SocketAddr, method: &str, body: Value) -> (u16, Value) {
    let text = body.to_string();
    let head = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_SECRET}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        text.len()
    );
    let (status, body) = http(web, &head, &text).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// What a push reached, told: a `send_to_uid` names the uids that were offline; marked
/// `fallback`, a signed webhook names them too (retried when the receiver fails); with a
/// `callback_url` the answer is 202 and the report arrives there, signed. Bad requests: 400.
#[tokio::test]
async fn delivery_reports_offline_uids_fallback_and_callbacks() {
    let mut fallback = Receiver::start(1).await;
    let mut callback = Receiver::start(0).await;
    let (ws, web) = (free_addr("127.0.2.11"), free_addr("127.0.2.12"));
    let hook = format!("http://{}/fallback", fallback.addr);
    let _app = start_all_at(
        ws,
        web,
        &["--secret", API_SECRET, "--fallback-webhook", &hook],
    );
    // A client bound to uid alice (a token signed with the secret would do it too).
    let (mut alice, w, c) = werkmann_tests::push::connect(ws).await;
    let cid = format!("{w}-{c}");
    let mut bound = false;
    for _ in 0..100 {
        let (status, v) = api(
            web,
            "bind_uid",
            serde_json::json!({"client_id": cid, "uid": "alice"}),
        )
        .await;
        if status == 200 && v["ok"] == true {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bound, "alice bound");

    let body =
        serde_json::json!({"uid": ["alice", "bob", "carol"], "message": "hallo", "fallback": true});
    let (status, v) = api(web, "send_to_uid", body).await;
    assert_eq!(
        (status, v.clone()),
        (
            200,
            serde_json::json!({"reached": 1, "offline": ["bob", "carol"]})
        )
    );
    assert_eq!(werkmann_tests::push::next_text(&mut alice).await, "hallo");
    // The receiver failed the first try: the same webhook again after a second.
    let (first, v1) = fallback.next().await;
    let (again, v2) = fallback.next().await;
    assert_eq!(first, again);
    assert_eq!(v1["event"], "undelivered");
    assert_eq!(v2["uids"], serde_json::json!(["bob", "carol"]));
    assert_eq!(v2["message"], "hallo");

    // A callback: 202 at once, the report there (no fallback asked: none sent).
    let url = format!("http://{}/report", callback.addr);
    let body =
        serde_json::json!({"uid": ["alice", "dora"], "message": "zwei", "callback_url": url});
    let (status, v) = api(web, "send_to_uid", body).await;
    assert_eq!((status, v), (202, serde_json::json!({"accepted": true})));
    let (_, report) = callback.next().await;
    assert_eq!(report["method"], "send_to_uid");
    assert_eq!(report["reached"], 1);
    assert_eq!(report["offline"], serde_json::json!(["dora"]));
    assert_eq!(werkmann_tests::push::next_text(&mut alice).await, "zwei");
    let body = serde_json::json!({"group": "nobody-here", "message": "x", "callback_url": url});
    let (status, _) = api(web, "send_to_group", body).await;
    assert_eq!(status, 202);
    let (_, report) = callback.next().await;
    assert_eq!(
        (report["method"].as_str(), report["reached"].as_u64()),
        (Some("send_to_group"), Some(0))
    );

    // Refused: fallback not a boolean, a callback that is not http://, fallback on a method
    // without uids.
    for (method, body) in [
        (
            "send_to_uid",
            serde_json::json!({"uid": "x", "message": "m", "fallback": "maybe"}),
        ),
        (
            "send_to_uid",
            serde_json::json!({"uid": "x", "message": "m", "callback_url": "https://x/"}),
        ),
        (
            "send_to_group",
            serde_json::json!({"group": "g", "message": "m", "fallback": true}),
        ),
    ] {
        let (status, v) = api(web, method, body).await;
        assert_eq!(status, 400, "{method}: {v}");
    }
    // Nothing else was sent to the fallback webhook.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), fallback.got.recv())
            .await
            .is_err(),
        "one fallback only"
    );
}

/// A raw client of the resuming protocol: its client id; it acknowledges when told to.
struct Reader {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    client_id: String,
}

impl Reader {
    async fn open(ws: SocketAddr) -> Reader {
        let url = format!("ws://{ws}/werkmann?channel=Broadcast");
        let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let mut r = Reader {
            ws,
            client_id: String::new(),
        };
        let welcome = r.frame().await;
        r.client_id = welcome["client_id"].as_str().unwrap().to_string();
        assert_eq!(r.frame().await["type"], "ready");
        r
    }

    async fn frame(&mut self) -> Value {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message as M;
        loop {
            match tokio::time::timeout(T, self.ws.next()).await {
                Ok(Some(Ok(M::Binary(b)))) => return serde_json::from_slice(&b).unwrap(),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no frame: {other:?}"),
            }
        }
    }

    /// The next message's data; acknowledged when `ack` and the message asks.
    async fn message(&mut self, ack: bool) -> String {
        use futures_util::SinkExt;
        let m = self.frame().await;
        assert_eq!(m["type"], "message", "{m}");
        if let (true, Some(token)) = (ack, m["ack"].as_str()) {
            let a = serde_json::json!({"type": "ack", "ack": token}).to_string();
            self.ws
                .send(tokio_tungstenite::tungstenite::Message::Text(a.into()))
                .await
                .unwrap();
        }
        m["data"].as_str().unwrap().to_string()
    }
}

/// `get_all_client_id_count` until it is `n` (closes are seen at once, but asynchronously).
async fn clients_become(web: SocketAddr, n: u64) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (status, body) = http(
            web,
            "POST /api/get_all_client_id_count HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n",
            "{}",
        )
        .await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        if status == 200 && v["result"] == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} clients: {body}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// A broadcast's report matches what clients received: plain seed clients, resuming readers
/// and an SSE reader, on every backend; with clients cut (at random) before the next push,
/// the report counts exactly those left; with `ack`, exactly the readers that acknowledged, by
/// client id; with `callback_url`, 202 and the same report there.
async fn reports_match(c: Cluster) {
    let web = c.publishers[0];
    let ws = c.ws[0];
    // The publisher is up (a push to a channel nobody reads: a broadcast answered while the
    // nodes still handle it could reach a client connecting next, ahead of its greeting).
    until_ok(web, "/?channel=warm&content=x").await;
    let mut plain = Vec::new();
    for _ in 0..6 {
        plain.push(werkmann_tests::push::connect(ws).await.0);
    }
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(Reader::open(ws).await);
    }
    let mut sse = Sse::open(web, "channel=Broadcast", None).await;
    clients_become(web, 10).await;
    let report = |body: &str| -> Value { serde_json::from_str(body).unwrap() };

    let (status, body) = get(web, "/?content=eins&report=1").await;
    assert_eq!(status, 200, "{body}");
    let r = report(&body);
    assert_eq!(r["reached"], 11, "6 plain, 4 readers, 1 stream: {r}");
    assert_eq!(r["instances"], r["reported"], "{r}");
    for p in &mut plain {
        assert_eq!(werkmann_tests::push::next_text(p).await, "eins");
    }
    for rd in &mut readers {
        assert_eq!(rd.message(false).await, "eins");
    }
    assert_eq!(sse.data().await.1, "eins");

    // Cut some at random (a plain client and a reader go), then push: exactly those left.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    drop(plain.remove(seed % plain.len()));
    drop(readers.remove(seed % readers.len()));
    clients_become(web, 8).await;
    let (status, body) = get(web, "/?content=zwei&report=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(report(&body)["reached"], 9, "{body}");
    for p in &mut plain {
        assert_eq!(werkmann_tests::push::next_text(p).await, "zwei");
    }
    for rd in &mut readers {
        assert_eq!(rd.message(false).await, "zwei");
    }
    assert_eq!(sse.data().await.1, "zwei");

    // Acknowledgements: two of the three readers acknowledge.
    let push = tokio::spawn(async move { get(web, "/?content=drei&ack=800").await });
    let mut acked = Vec::new();
    for (i, rd) in readers.iter_mut().enumerate() {
        let ack = i < 2;
        assert_eq!(rd.message(ack).await, "drei");
        if ack {
            acked.push(rd.client_id.clone());
        }
    }
    let (status, body) = push.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let r = report(&body);
    assert_eq!(
        (r["reached"].as_u64(), r["acked"].as_u64()),
        (Some(9), Some(2)),
        "{r}"
    );
    let mut got: Vec<String> = r["acked_clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    got.sort();
    acked.sort();
    assert_eq!(got, acked);
    for p in &mut plain {
        assert_eq!(werkmann_tests::push::next_text(p).await, "drei");
    }
    assert_eq!(sse.data().await.1, "drei");

    // A callback: 202, the report there. Bad options: 400.
    let mut receiver = Receiver::start(0).await;
    receiver.unsigned = true;
    let q = format!("/?content=vier&callback_url=http://{}/r", receiver.addr);
    let (status, body) = get(web, &q).await;
    assert_eq!((status, body.as_str()), (202, r#"{"accepted":true}"#));
    let (_, r) = receiver.next().await;
    assert_eq!(r["reached"], 9, "{r}");
    for q in [
        "/?content=x&report=2",
        "/?content=x&ack=0",
        "/?content=x&ack=99999",
        "/?content=x&callback_url=https://x/",
    ] {
        let (status, body) = get(web, q).await;
        assert_eq!(status, 400, "{q}: {body}");
    }
}

#[tokio::test]
async fn reports_match_what_clients_received_embedded() {
    reports_match(Cluster::embedded()).await;
}

#[tokio::test]
async fn reports_match_what_clients_received_through_a_channel_server() {
    reports_match(Cluster::server()).await;
}

#[tokio::test]
async fn reports_match_what_clients_received_on_redis() {
    reports_match(Cluster::redis()).await;
}

/// Presence events, once cluster-wide: a uid online on two nodes is announced `online` once
/// and `offline` when its last connection goes; a group's `join`/`leave` per member — as
/// events (`/sse?channel=presence:uids,presence:group:room`) and as signed webhooks.
#[tokio::test]
async fn presence_events_once_across_nodes_of_a_channel_server() {
    let ch = free_addr("127.0.2.13");
    let _channel = App::start_at("start_channel", &["--listen", &ch.to_string()], &[ch]);
    presence_events(ch.to_string()).await;
}

#[tokio::test]
async fn presence_events_once_across_nodes_on_redis() {
    let redis = RedisServer::start();
    presence_events(redis.url()).await;
}

async fn presence_events(ch: String) {
    let mut hook = Receiver::start(0).await;
    let ws = [free_addr("127.0.2.14"), free_addr("127.0.2.15")];
    let _nodes: Vec<App> = ws
        .iter()
        .map(|a| {
            App::start_at(
                "start_ws",
                &[
                    "--listen",
                    &a.to_string(),
                    "--channel",
                    &ch,
                    "--presence-events",
                    "hooks",
                    "--secret",
                    API_SECRET,
                ],
                &[*a],
            )
        })
        .collect();
    let web = free_addr("127.0.2.16");
    let url = format!("http://{}/presence", hook.addr);
    let _publisher = App::start_at(
        "start_http",
        &[
            "--listen",
            &web.to_string(),
            "--channel",
            &ch,
            "--secret",
            API_SECRET,
            "--presence-webhook",
            &url,
            "--presence-events",
            "hooks",
        ],
        &[web],
    );
    let (a, wa, ca) = werkmann_tests::push::connect(ws[0]).await;
    let (b, wb, cb) = werkmann_tests::push::connect(ws[1]).await;
    let mut sse = {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            // The publisher's channel is up once the directory answers it.
            let (status, _) = api(web, "get_all_client_id_count", serde_json::json!({})).await;
            if status == 200 || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Without the push secret: refused.
        let (status, _) = get(web, "/sse?channel=presence:uids").await;
        assert_eq!(status, 401);
        let q = "channel=presence:uids,presence:group:room";
        Sse::open_as(web, q, None, Some(API_SECRET)).await
    };
    let call = |method: &'static str, body: Value| async move {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let (status, v) = api(web, method, body.clone()).await;
            if status == 200 {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{method}: {status} {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let online = serde_json::json!({"event": "online", "uid": "alice"});
    call(
        "bind_uid",
        serde_json::json!({"client_id": format!("{wa}-{ca}"), "uid": "alice"}),
    )
    .await;
    let (name, data) = sse.data().await;
    assert_eq!(name.as_deref(), Some("presence:uids"));
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap(), online);
    let (_, h) = hook.next().await;
    assert_eq!(h["events"], serde_json::json!([online]));
    // The same uid on the other node: still one online.
    call(
        "bind_uid",
        serde_json::json!({"client_id": format!("{wb}-{cb}"), "uid": "alice"}),
    )
    .await;
    call(
        "join_group",
        serde_json::json!({"client_id": format!("{wa}-{ca}"), "group": "room"}),
    )
    .await;
    let join = serde_json::json!({"event": "join", "group": "room", "member": "alice"});
    let (name, data) = sse.data().await;
    assert_eq!(
        name.as_deref(),
        Some("presence:group:room"),
        "no second online: {data}"
    );
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap(), join);
    let (_, h) = hook.next().await;
    assert_eq!(h["events"], serde_json::json!([join]));
    // Its connection on the second node goes: nothing; the first goes: offline and leave.
    drop(b);
    let deadline = tokio::time::Instant::now() + T;
    while call("get_all_client_id_count", serde_json::json!({})).await["result"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second connection leaves"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    drop(a);
    let mut got = Vec::new();
    for _ in 0..2 {
        let (_, data) = sse.data().await;
        got.push(serde_json::from_str::<Value>(&data).unwrap());
    }
    got.sort_by_key(|v| v.to_string());
    let leave = serde_json::json!({"event": "leave", "group": "room", "member": "alice"});
    let offline = serde_json::json!({"event": "offline", "uid": "alice"});
    assert_eq!(got, vec![leave.clone(), offline.clone()]);
    let mut hooked = Vec::new();
    for _ in 0..2 {
        let (_, h) = hook.next().await;
        hooked.push(h["events"][0].clone());
    }
    hooked.sort_by_key(|v| v.to_string());
    assert_eq!(hooked, vec![leave, offline]);
    every_protocol_binds_itself(web, ws[1], &mut sse, &call).await;
}

/// The next `n` presence events on `sse`, sorted.
async fn presence_next(sse: &mut Sse, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..n {
        let (_, data) = sse.data().await;
        got.push(serde_json::from_str::<Value>(&data).unwrap());
    }
    got.sort_by_key(|v| v.to_string());
    got
}

/// Presence for every protocol: a resuming reader (`/werkmann?token=`) on a WebSocket node and
/// a Server-Sent Events stream (`/sse?token=`) on the publisher bind themselves with a token,
/// are announced online and in their group, are sent to by uid and group (the stream as
/// `event: direct`), and announced offline when they go. Bad tokens: 401 on both.
async fn every_protocol_binds_itself<F, Fut>(
    web: SocketAddr,
    ws: SocketAddr,
    presence: &mut Sse,
    call: &F,
) where
    F: Fn(&'static str, Value) -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    use futures_util::StreamExt;
    use jsonwebtoken::Algorithm;
    use tokio_tungstenite::tungstenite::Message as M;
    use werkmann_tests::addressing::{now, token};
    let claims =
        |uid: &str| serde_json::json!({"uid": uid, "groups": ["room"], "exp": now() + 600});
    let event = |what: &str, uid: &str| match what {
        "join" | "leave" => serde_json::json!({"event": what, "group": "room", "member": uid}),
        _ => serde_json::json!({"event": what, "uid": uid}),
    };
    // Bad tokens refuse the stream and the reader.
    let forged = token(&claims("eve"), "not-the-secret", Algorithm::HS256);
    let (status, _) = get(web, &format!("/sse?channel=Broadcast&token={forged}")).await;
    assert_eq!(status, 401, "a forged token on /sse");
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{ws}/werkmann?channel=Broadcast&token={forged}"
    ))
    .await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401),
        "a forged token on /werkmann: {refused:?}"
    );

    // bob, a resuming reader on a WebSocket node.
    let bob = token(&claims("bob"), API_SECRET, Algorithm::HS256);
    let (mut reader, _) = tokio_tungstenite::connect_async(format!(
        "ws://{ws}/werkmann?channel=Broadcast&token={bob}"
    ))
    .await
    .unwrap();
    assert_eq!(
        presence_next(presence, 2).await,
        vec![event("join", "bob"), event("online", "bob")]
    );
    // carol, a Server-Sent Events stream on the publisher.
    let carol = token(&claims("carol"), API_SECRET, Algorithm::HS256);
    let (mut stream, client_id) = Sse::open_with_token(web, "channel=Broadcast", &carol).await;
    assert_eq!(
        presence_next(presence, 2).await,
        vec![event("join", "carol"), event("online", "carol")]
    );
    let got = call("get_client_id_by_uid", serde_json::json!({"uid": "carol"})).await;
    assert_eq!(got["result"], serde_json::json!([client_id]));
    // Sent to by uid and by group, each counted.
    let sent = call(
        "send_to_uid",
        serde_json::json!({"uid": "carol", "message": "to carol"}),
    )
    .await;
    assert_eq!(sent["reached"], 1, "{sent}");
    assert_eq!(
        stream.data().await,
        (Some("direct".into()), "to carol".into())
    );
    let sent = call(
        "send_to_group",
        serde_json::json!({"group": "room", "message": "to the room"}),
    )
    .await;
    assert_eq!(sent["reached"], 2, "{sent}");
    assert_eq!(
        stream.data().await,
        (Some("direct".into()), "to the room".into())
    );
    let text = loop {
        match tokio::time::timeout(T, reader.next()).await {
            Ok(Some(Ok(M::Text(t)))) => break t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("the room's send on the reader: {other:?}"),
        }
    };
    assert_eq!(text, "to the room");
    // Going: offline and leave, for each.
    drop(stream.close());
    assert_eq!(
        presence_next(presence, 2).await,
        vec![event("leave", "carol"), event("offline", "carol")]
    );
    drop(reader);
    assert_eq!(
        presence_next(presence, 2).await,
        vec![event("leave", "bob"), event("offline", "bob")]
    );
}

/// A connection still in its WebSocket handshake takes no broadcast: pushes sent while a client
/// waits before its upgrade never reach it — its first frame is the seed's greeting, or a
/// resuming reader's `welcome` (found by the fault bench: they came first as text).
#[tokio::test]
async fn broadcasts_skip_connections_in_their_handshake() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as M;
    let c = Cluster::embedded();
    let (web, ws) = (c.publishers[0], c.ws[0]);
    until_ok(web, "/?channel=warm&content=x").await;
    // A plain client that keeps the broadcasts flowing to this node's instances.
    let _keep = werkmann_tests::push::connect(ws).await;
    for path in ["/", "/werkmann?channel=Broadcast"] {
        let tcp = tokio::net::TcpStream::connect(ws).await.unwrap();
        for i in 0..5 {
            let (status, body) = get(web, &format!("/?content=early-{i}")).await;
            assert_eq!(status, 200, "{body}");
        }
        let url = format!("ws://{ws}{path}");
        let (mut s, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
        let first = tokio::time::timeout(T, s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match (path, first) {
            ("/", M::Text(t)) => assert!(t.starts_with("Worker-ID:"), "{path}: {t}"),
            (_, M::Binary(b)) => {
                let v: Value = serde_json::from_slice(&b).unwrap();
                assert_eq!(v["type"], "welcome", "{path}: {v}");
            }
            (_, other) => panic!("{path}: first frame {other:?}"),
        }
    }
}
