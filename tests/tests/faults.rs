//! Faults under load, each counted: every push the publisher answered `200 ok` reached every
//! client connected at the time exactly once; every other push was answered with an error —
//! nothing is lost silently.
//!
//! - the channel server killed (SIGKILL) and restarted while pushes flow;
//! - Redis killed (SIGKILL) and restarted while pushes flow, in Redis mode;
//! - a WebSocket node killed (SIGKILL) while pushes flow: the other node's clients get every
//!   acknowledged push, targeted pushes to the dead node's clients are answered 404, and a
//!   replacement node claims ids that do not clash with the survivors'.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use werkmann_tests::{free_addr, App, RedisServer};

/// One WebSocket client that counts every text message it receives, until the connection
/// closes (or [`finish`] stops it).
struct Counted {
    /// Its worker and connection id, from the greeting.
    worker: u32,
    conn: u64,
    got: Arc<Mutex<HashMap<String, u32>>>,
    reader: JoinHandle<()>,
}

impl Counted {
    async fn connect(ws: SocketAddr) -> Counted {
        let (mut c, _) = tokio_tungstenite::connect_async(format!("ws://{ws}"))
            .await
            .unwrap();
        let greeting = tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .expect("a greeting in time")
            .expect("connection open")
            .unwrap()
            .into_text()
            .unwrap()
            .to_string();
        let (worker, conn) = greeting
            .strip_prefix("Worker-ID:")
            .and_then(|r| r.strip_suffix(" verbunden\n"))
            .and_then(|r| r.split_once(" Verbindungs-ID:"))
            .and_then(|(w, c)| Some((w.parse().ok()?, c.parse().ok()?)))
            .unwrap_or_else(|| panic!("greeting {greeting:?}"));
        let got = Arc::new(Mutex::new(HashMap::new()));
        let g = got.clone();
        let reader = tokio::spawn(async move {
            let safety = Duration::from_secs(60);
            while let Ok(Some(Ok(m))) = tokio::time::timeout(safety, c.next()).await {
                if let WsMessage::Text(t) = m {
                    *g.lock().unwrap().entry(t.to_string()).or_default() += 1;
                }
            }
        });
        Counted {
            worker,
            conn,
            got,
            reader,
        }
    }

    /// How often `content` arrived.
    fn count(&self, content: &str) -> u32 {
        self.got.lock().unwrap().get(content).copied().unwrap_or(0)
    }

    /// Assert that nothing arrived twice.
    fn nothing_twice(&self, who: &str) {
        let got = self.got.lock().unwrap();
        let twice: Vec<_> = got.iter().filter(|(_, &k)| k > 1).collect();
        assert!(
            twice.is_empty(),
            "{who}: delivered more than once: {twice:?}"
        );
    }
}

/// One push on a fresh connection; returns the status.
async fn push(web: SocketAddr, query: &str) -> u16 {
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(
        format!("GET /?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("every push is answered")
        .unwrap();
    String::from_utf8_lossy(&out[9..12]).parse().unwrap()
}

/// Broadcasts answered `ok` and all others, in order.
#[derive(Default)]
struct Answers(Vec<(String, u16)>);

impl Answers {
    fn ok(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(_, s)| *s == 200)
            .map(|(c, _)| c.as_str())
            .collect()
    }

    fn refused(&self) -> usize {
        self.0.iter().filter(|(_, s)| *s != 200).count()
    }

    /// Every push answered `ok` reached each of `clients` exactly once; nothing arrived twice.
    fn assert_delivered_once(&self, clients: &[Counted], who: &str) {
        // First say which clients (by worker id) missed which pushes, and when.
        for (pos, (p, status)) in self.0.iter().enumerate() {
            let missed: Vec<u32> = clients
                .iter()
                .filter(|c| c.count(p) != 1)
                .map(|c| c.worker)
                .collect();
            if *status == 200 && !missed.is_empty() {
                eprintln!(
                    "push {p} (#{pos} of {}) answered ok; not once at workers {missed:?}",
                    self.0.len()
                );
            }
        }
        for (n, c) in clients.iter().enumerate() {
            for p in self.ok() {
                assert_eq!(
                    c.count(p),
                    1,
                    "{who} client {n}: push {p} answered ok was delivered once"
                );
            }
            c.nothing_twice(&format!("{who} client {n}"));
        }
    }
}

fn ws_node(listen: SocketAddr, channel: &str) -> App {
    App::start_at(
        "start_ws",
        &[
            "--listen",
            &listen.to_string(),
            "--count",
            "2",
            "--channel",
            channel,
        ],
        &[listen],
    )
}

fn publisher(listen: SocketAddr, channel: &str) -> App {
    App::start_at(
        "start_http",
        &["--listen", &listen.to_string(), "--channel", channel],
        &[listen],
    )
}

async fn clients(ws: SocketAddr, n: usize) -> Vec<Counted> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Counted::connect(ws).await);
    }
    out
}

/// Once the pushes stopped: wait until no client received anything for 500 ms (at most
/// 10 s), then stop reading.
async fn finish(clients: &mut [Counted]) {
    let total = |cs: &[Counted]| -> u32 {
        cs.iter()
            .map(|c| c.got.lock().unwrap().values().sum::<u32>())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = total(clients);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = total(clients);
        if now == seen || Instant::now() > deadline {
            break;
        }
        seen = now;
    }
    for c in clients {
        c.reader.abort();
    }
}

#[tokio::test]
async fn channel_server_killed_while_pushes_flow() {
    let ch = free_addr("127.0.1.1");
    let ws = free_addr("127.0.1.2");
    let web = free_addr("127.0.1.4");
    let ch_s = ch.to_string();
    let mut channel = Some(App::start_at("start_channel", &["--listen", &ch_s], &[ch]));
    let _node = ws_node(ws, &ch_s);
    let _publisher = publisher(web, &ch_s);

    // Six clients over both instances, each counting what it receives.
    let mut received = clients(ws, 6).await;

    // Push as fast as answers come, killing and restarting the channel server on the way.
    let mut answers = Answers::default();
    let start = Instant::now();
    let mut killed_at = None;
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(4) {
        if killed_at.is_none() && start.elapsed() > Duration::from_millis(800) {
            drop(channel.take()); // SIGKILL
            killed_at = Some(Instant::now());
        }
        if let Some(t) = killed_at {
            if channel.is_none() && t.elapsed() > Duration::from_millis(700) {
                channel = Some(App::start_at("start_channel", &["--listen", &ch_s], &[ch]));
            }
        }
        let content = format!("p{i}");
        i += 1;
        let status = push(web, &format!("content={content}")).await;
        assert!(status == 200 || status == 503, "status {status}");
        answers.0.push((content, status));
    }
    finish(&mut received).await;
    let ok = answers.ok();
    let failed = answers.refused();
    eprintln!("pushes: {} answered ok, {failed} answered 503", ok.len());
    assert!(
        ok.len() > 10,
        "pushes went through before and after: {} ok",
        ok.len()
    );
    assert!(failed > 0, "the outage was noticed by the publisher");
    answers.assert_delivered_once(&received, "node");
}

/// Redis mode: Redis killed (SIGKILL) while pushes flow, then restarted. `ok` is answered only
/// when Redis reported the push published to every WebSocket instance (the `PUBLISH` reply);
/// every other push is refused — and once Redis is back, pushes are answered `ok` again.
#[tokio::test]
async fn redis_killed_while_pushes_flow() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let ws_a = free_addr("127.0.2.1");
    let ws_b = free_addr("127.0.2.2");
    let web = free_addr("127.0.2.4");
    let _a = ws_node(ws_a, &url);
    let _b = ws_node(ws_b, &url);
    let _publisher = publisher(web, &url);

    let mut received = clients(ws_a, 3).await;
    received.extend(clients(ws_b, 3).await);
    // Until every instance has subscribed, broadcasts reach fewer than four.
    let deadline = Instant::now() + Duration::from_secs(10);
    while push(web, "content=warmup").await != 200 {
        assert!(Instant::now() < deadline, "the cluster answers ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Eight pushers at once, so pushes are in flight when Redis dies and when it comes back.
    let answers = Arc::new(Mutex::new(Answers::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restarted: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut pushers = Vec::new();
    for p in 0..8 {
        let (answers, stop, restarted) = (answers.clone(), stop.clone(), restarted.clone());
        pushers.push(tokio::spawn(async move {
            let mut ok_after_restart = 0;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let content = format!("r{p}-{i}");
                i += 1;
                let status = push(web, &format!("content={content}")).await;
                assert!(status == 200 || status == 503, "status {status}");
                if status == 200 && restarted.lock().unwrap().is_some() {
                    ok_after_restart += 1;
                }
                answers.lock().unwrap().0.push((content, status));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ok_after_restart
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.kill(); // SIGKILL
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.restart();
    *restarted.lock().unwrap() = Some(Instant::now());
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut ok_after_restart = 0;
    for p in pushers {
        ok_after_restart += p.await.unwrap();
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    finish(&mut received).await;
    let ok = answers.ok().len();
    let refused = answers.refused();
    eprintln!("redis killed: {ok} answered ok ({ok_after_restart} after the restart), {refused} answered 503");
    assert!(refused > 0, "the outage was noticed by the publisher");
    assert!(
        ok_after_restart > 10,
        "delivery resumed after the restart: {ok_after_restart} ok"
    );
    answers.assert_delivered_once(&received, "node");
}

/// Pushes in a loop until `stop`: `query(i)` gives the content and the query string. Returns
/// each push's content, status and when it was answered.
fn pusher(
    web: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    query: impl Fn(usize) -> (String, String) + Send + 'static,
) -> JoinHandle<Vec<(String, u16, Instant)>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let (content, q) = query(i);
            i += 1;
            let status = push(web, &q).await;
            out.push((content, status, Instant::now()));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        out
    })
}

/// A WebSocket node killed (SIGKILL) while broadcasts and targeted pushes flow, then replaced.
#[tokio::test]
async fn websocket_node_killed_while_pushes_flow() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ch = free_addr("127.0.3.1");
    let ws_a = free_addr("127.0.3.2");
    let ws_b = free_addr("127.0.3.3");
    let ws_c = free_addr("127.0.3.5");
    let web = free_addr("127.0.3.4");
    let ch_s = ch.to_string();
    let _channel = App::start_at("start_channel", &["--listen", &ch_s], &[ch]);
    let mut node_a = Some(ws_node(ws_a, &ch_s));
    let _node_b = ws_node(ws_b, &ch_s);
    let _publisher = publisher(web, &ch_s);

    let mut on_a = clients(ws_a, 3).await;
    let mut on_b = clients(ws_b, 3).await;
    let ids_a: Vec<u32> = on_a.iter().map(|c| c.worker).collect();
    let ids_b: Vec<u32> = on_b.iter().map(|c| c.worker).collect();
    assert!(
        ids_a.iter().all(|w| !ids_b.contains(w)),
        "nodes hold distinct worker ids: {ids_a:?} {ids_b:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while push(web, "content=warmup").await != 200 {
        assert!(Instant::now() < deadline, "the cluster answers ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Broadcasts, pushes to one client on B and pushes to one client on A, all at once.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_a = Arc::new(AtomicBool::new(false));
    let broadcasts = pusher(web, stop.clone(), |i| {
        (format!("b{i}"), format!("content=b{i}"))
    });
    let (tw, tc) = (on_b[1].worker, on_b[1].conn);
    let to_b = pusher(web, stop.clone(), move |i| {
        let c = format!("tb{i}");
        let q = format!("to_worker_id={tw}&to_connection_id={tc}&content={c}");
        (c, q)
    });
    let (aw, ac) = (on_a[0].worker, on_a[0].conn);
    let to_a = pusher(web, stop_a.clone(), move |i| {
        let c = format!("ta{i}");
        let q = format!("to_worker_id={aw}&to_connection_id={ac}&content={c}");
        (c, q)
    });

    tokio::time::sleep(Duration::from_millis(1000)).await;
    drop(node_a.take()); // SIGKILL
    let killed = Instant::now();
    // Its clients see their connections end.
    for (n, c) in on_a.iter_mut().enumerate() {
        tokio::time::timeout(Duration::from_secs(2), &mut c.reader)
            .await
            .unwrap_or_else(|_| panic!("client {n} of the killed node is disconnected"))
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Pushes to the dead node's connection stop before a replacement may claim its ids.
    stop_a.store(true, Ordering::Relaxed);
    let to_a = to_a.await.unwrap();

    // A replacement node claims ids again; they do not clash with B's.
    let _node_c = ws_node(ws_c, &ch_s);
    let mut on_c = clients(ws_c, 2).await;
    let c_joined = Instant::now();
    for c in &on_c {
        assert!(
            !ids_b.contains(&c.worker),
            "the replacement's id {} is not one of B's {ids_b:?}",
            c.worker
        );
    }
    // Once C's instances subscribed, broadcasts reach as many instances as before: ok again.
    // Each attempt with its own content: one answered 503 may still reach B's clients.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    while push(web, &format!("content=after{attempt}")).await != 200 {
        assert!(Instant::now() < deadline, "broadcasts answered ok again");
        tokio::time::sleep(Duration::from_millis(20)).await;
        attempt += 1;
    }
    // The replacement took the dead node's worker ids (the lowest free ones); a push still
    // naming a dead client's (worker, connection) must not reach a client of the replacement.
    assert!(
        on_c.iter().any(|c| c.worker == aw),
        "the replacement claimed the dead node's worker id {aw}"
    );
    let stale = push(
        web,
        &format!("to_worker_id={aw}&to_connection_id={ac}&content=stale"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let broadcasts = broadcasts.await.unwrap();
    let to_b = to_b.await.unwrap();
    finish(&mut on_b).await;
    finish(&mut on_c).await;

    let count = |v: &[(String, u16, Instant)], s: u16| v.iter().filter(|x| x.1 == s).count();
    eprintln!(
        "node killed: broadcasts {} ok / {} 503; to B {} ok; to A {} ok / {} 404",
        count(&broadcasts, 200),
        count(&broadcasts, 503),
        count(&to_b, 200),
        count(&to_a, 200),
        count(&to_a, 404),
    );
    let margin = Duration::from_millis(300);

    // Broadcasts: B's clients got every acknowledged one exactly once, and also those answered
    // 503 after the kill (the publisher refuses them because fewer instances were reached).
    let ok_b: Vec<&str> = broadcasts
        .iter()
        .filter(|x| x.1 == 200)
        .map(|x| x.0.as_str())
        .collect();
    assert!(
        ok_b.len() > 10,
        "broadcasts before and after: {}",
        ok_b.len()
    );
    for (n, c) in on_b.iter().enumerate() {
        for p in &ok_b {
            assert_eq!(
                c.count(p),
                1,
                "B client {n}: broadcast {p} answered ok, once"
            );
        }
        c.nothing_twice(&format!("B client {n}"));
    }
    let mut refused_after_kill = 0;
    for (content, status, at) in &broadcasts {
        assert!(
            *status == 200 || *status == 503,
            "broadcast status {status}"
        );
        if *status == 503 && *at > killed + margin && *at < c_joined {
            refused_after_kill += 1;
            for c in &on_b {
                assert_eq!(c.count(content), 1, "B still receives {content}");
            }
        }
        // C's clients got every broadcast acknowledged after they joined.
        if *status == 200 && *at > c_joined + margin {
            for c in &on_c {
                assert_eq!(c.count(content), 1, "C client: {content} once");
            }
        }
        // A's clients got what was acknowledged well before the kill.
        if *status == 200 && *at + margin < killed {
            for c in &on_a {
                assert_eq!(c.count(content), 1, "A client: {content} once");
            }
        }
    }
    assert!(
        refused_after_kill > 0,
        "broadcasts reaching fewer instances than lately are answered 503"
    );
    for c in &on_a {
        c.nothing_twice("A client");
    }
    for c in &on_c {
        c.nothing_twice("C client");
    }

    // Targeted pushes to B: every one answered ok and delivered to its target only.
    assert!(to_b.iter().all(|x| x.1 == 200), "pushes to B all ok");
    for (content, _, _) in &to_b {
        assert_eq!(on_b[1].count(content), 1, "target got {content} once");
        assert_eq!(on_b[0].count(content) + on_b[2].count(content), 0);
    }
    // Targeted pushes to A: ok while it lived, then 404 (no subscriber for its worker id).
    let mut gone = 0;
    for (content, status, at) in &to_a {
        if *at + margin < killed {
            assert_eq!(*status, 200, "{content} before the kill");
            assert_eq!(on_a[0].count(content), 1, "A's target got {content}");
        } else if *at > killed + margin {
            assert_eq!(*status, 404, "{content} to the dead node");
            gone += 1;
        }
    }
    assert!(gone > 10, "pushes to the dead node were answered: {gone}");
    for c in &on_c {
        assert_eq!(
            c.count("stale"),
            0,
            "a push to dead client ({aw}, {ac}) (answered {stale}) reached the replacement's \
             client ({}, {})",
            c.worker,
            c.conn
        );
    }
}
