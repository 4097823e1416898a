//! Faults under load, each counted: every push the publisher answered `200 ok` reached every
//! client connected at the time exactly once; every other push was answered with an error —
//! nothing is lost silently. Pushes are classified by what the publisher answered (and by the
//! order of events: sent after the restart, answered before the kill), never by wall-clock
//! margins; each phase of a scenario lasts until a condition holds.
//!
//! - the channel server killed (SIGKILL) and restarted while pushes flow;
//! - Redis killed (SIGKILL) and restarted while pushes flow, in Redis mode;
//! - a WebSocket node killed (SIGKILL) while pushes flow: the other node's clients get every
//!   acknowledged push, targeted pushes to the dead node's clients are answered 404, and a
//!   replacement node claims ids that do not clash with the survivors'.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use werkmann_tests::push::{broadcast_until_ok, get};
use werkmann_tests::{free_addr, poll_until_async, wait_until_async, App, RedisServer, WAIT};

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
        let (mut c, worker, conn) = werkmann_tests::push::connect(ws).await;
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

    /// Whether something starting with `prefix` arrived.
    fn got_prefix(&self, prefix: &str) -> bool {
        self.got
            .lock()
            .unwrap()
            .keys()
            .any(|k| k.starts_with(prefix))
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

/// One push as the publisher answered it.
#[derive(Clone, Debug)]
struct Answer {
    content: String,
    status: u16,
    body: String,
    sent: Instant,
    answered: Instant,
}

impl Answer {
    fn ok(&self) -> bool {
        self.status == 200
    }

    /// A broadcast the channel confirmed to have reached some instances, answered 503 because
    /// broadcasts reached more lately: it was delivered to those it reached.
    fn reached_fewer(&self) -> bool {
        self.status == 503 && self.body.starts_with("push reached ")
    }
}

/// The answers of one or more pushers, in the order they came.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Answer>>>);

impl Log {
    fn answers(&self) -> Vec<Answer> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self, f: impl Fn(&Answer) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|a| f(a)).count()
    }

    /// Wait until `n` answers are `what` (pushes keep flowing meanwhile).
    async fn wait_for(&self, n: usize, what: &str, f: impl Fn(&Answer) -> bool) {
        let msg = format!("{n} pushes {what}");
        wait_until_async(WAIT, msg, async || self.count(&f) >= n).await;
    }

    /// The content of the last push answered `ok` so far.
    fn last_ok(&self) -> String {
        let answers = self.0.lock().unwrap();
        let last = answers.iter().rev().find(|a| a.ok());
        last.expect("a push answered ok").content.clone()
    }
}

/// Pushes in a loop until `stop`, each on its own connection, one at a time: `query(i)` gives
/// the content and the query string. Every answer goes to `log`.
fn pusher(
    web: SocketAddr,
    stop: Arc<AtomicBool>,
    log: Log,
    query: impl Fn(usize) -> (String, String) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let (content, q) = query(i);
            i += 1;
            let sent = Instant::now();
            let (status, body) = get(web, &format!("/?{q}")).await;
            let answered = Instant::now();
            log.0.lock().unwrap().push(Answer {
                content,
                status,
                body,
                sent,
                answered,
            });
            // Pacing only (the pushes answered at once while the channel is down would
            // otherwise spin): nothing waits on it.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    })
}

/// Broadcasts `{tag}-{i}`, for [`pusher`].
fn broadcasts(tag: &'static str) -> impl Fn(usize) -> (String, String) + Send + 'static {
    move |i| (format!("{tag}-{i}"), format!("content={tag}-{i}"))
}

/// Pushes to one client, for [`pusher`].
fn to_client(
    tag: &'static str,
    c: &Counted,
) -> impl Fn(usize) -> (String, String) + Send + 'static {
    let (w, conn) = (c.worker, c.conn);
    move |i| {
        let content = format!("{tag}{i}");
        let q = format!("to_worker_id={w}&to_connection_id={conn}&content={content}");
        (content, q)
    }
}

/// Every push answered `ok` reached each of `clients` exactly once; nothing arrived twice.
fn assert_delivered_once(answers: &[Answer], clients: &[Counted], who: &str) {
    // First say which clients (by worker id) missed which pushes, and when.
    for (pos, a) in answers.iter().enumerate() {
        let missed: Vec<u32> = clients
            .iter()
            .filter(|c| c.count(&a.content) != 1)
            .map(|c| c.worker)
            .collect();
        if a.ok() && !missed.is_empty() {
            eprintln!(
                "push {} (#{pos} of {}) answered ok; not once at workers {missed:?}",
                a.content,
                answers.len()
            );
        }
    }
    for (n, c) in clients.iter().enumerate() {
        for a in answers.iter().filter(|a| a.ok()) {
            assert_eq!(
                c.count(&a.content),
                1,
                "{who} client {n}: push {} answered ok was delivered once",
                a.content
            );
        }
        c.nothing_twice(&format!("{who} client {n}"));
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

/// Broadcast `warm-N` until every client has received one: their instances have subscribed. (A
/// broadcast answered `ok` is only known to reach as many instances as broadcasts did lately,
/// and at the start that is none.)
async fn until_every_client_is_reached(web: SocketAddr, groups: &[&[Counted]]) {
    let all = || groups.iter().flat_map(|g| g.iter());
    let mut n = 0;
    wait_until_async(WAIT, "a broadcast reaches every client", async || {
        let (status, body) = get(web, &format!("/?content=warm-{n}")).await;
        assert!(status == 200 || status == 503, "{status} {body}");
        n += 1;
        let reached = async || all().all(|c| c.got_prefix("warm-"));
        poll_until_async(Duration::from_millis(200), reached).await
    })
    .await;
}

/// Once the pushes stopped: broadcast `end-N` until one is answered `ok`, wait until every
/// client has it — a node delivers in the order its channel sent, so every push answered
/// before (and any duplicate of one) has arrived by then — and stop reading.
async fn finish(web: SocketAddr, groups: &[&[Counted]]) {
    let end = broadcast_until_ok(web, "end").await;
    let all = || groups.iter().flat_map(|g| g.iter());
    let msg = format!("every client received {end}");
    wait_until_async(WAIT, msg, async || all().all(|c| c.count(&end) > 0)).await;
    for c in all() {
        c.reader.abort();
    }
}

/// The bus (channel server or Redis) killed (SIGKILL) while `pushers` broadcast at once, so
/// pushes are in flight when it dies and when it is back: pushes flow until 300 are answered
/// `ok`; `kill`; the outage lasts 0.5 s and until 20 pushes sent during it were refused;
/// `restart`; pushes flow until 300 sent after the restart are answered `ok`. Returns every
/// answer, once every client has what was delivered.
async fn bus_killed_while_pushes_flow(
    web: SocketAddr,
    received: &[Counted],
    pushers: usize,
    kill: impl FnOnce(),
    restart: impl FnOnce(),
) -> Vec<Answer> {
    until_every_client_is_reached(web, &[received]).await;
    let log = Log::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..pushers)
        .map(|p| {
            let tag: &'static str = format!("p{p}").leak();
            pusher(web, stop.clone(), log.clone(), broadcasts(tag))
        })
        .collect();
    log.wait_for(300, "answered ok before the kill", Answer::ok)
        .await;
    let killed = Instant::now();
    kill();
    // The scenario: an outage long enough for the nodes to be backing off when the bus
    // returns, so pushes race with their re-subscriptions. Nothing is asserted on its length.
    tokio::time::sleep(Duration::from_millis(500)).await;
    log.wait_for(20, "sent during the outage refused", |a| {
        a.sent > killed && !a.ok()
    })
    .await;
    let restarting = Instant::now();
    restart();
    let restarted = Instant::now();
    log.wait_for(300, "sent after the restart answered ok", |a| {
        a.sent > restarted && a.ok()
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    finish(web, &[received]).await;

    let answers = log.answers();
    let ok = log.count(Answer::ok);
    eprintln!(
        "{ok} answered ok ({} sent after the restart), {} refused",
        log.count(|a| a.sent > restarted && a.ok()),
        answers.len() - ok
    );
    for a in &answers {
        assert!(a.status == 200 || a.status == 503, "{a:?}");
        // Sent and answered while the bus was dead: `ok` would be a lie.
        assert!(
            !(a.ok() && a.sent > killed && a.answered < restarting),
            "answered ok while the bus was down: {a:?}"
        );
    }
    answers
}

#[tokio::test]
async fn channel_server_killed_while_pushes_flow() {
    let ch = free_addr("127.0.1.1");
    let ws = free_addr("127.0.1.2");
    let web = free_addr("127.0.1.4");
    let ch_s = ch.to_string();
    let start_channel = || App::start_at("start_channel", &["--listen", &ch_s], &[ch]);
    let channel = std::cell::RefCell::new(Some(start_channel()));
    let _node = ws_node(ws, &ch_s);
    let _publisher = publisher(web, &ch_s);

    // Six clients over both instances, each counting what it receives.
    let received = clients(ws, 6).await;
    let answers = bus_killed_while_pushes_flow(
        web,
        &received,
        4,
        || drop(channel.take()), // SIGKILL
        || *channel.borrow_mut() = Some(start_channel()),
    )
    .await;
    assert_delivered_once(&answers, &received, "node");
}

/// Redis mode: Redis killed (SIGKILL) while pushes flow, then restarted. `ok` is answered only
/// when Redis reported the push published to every WebSocket instance (the `PUBLISH` reply);
/// every other push is refused — and once Redis is back, pushes are answered `ok` again.
#[tokio::test]
async fn redis_killed_while_pushes_flow() {
    let redis = Mutex::new(RedisServer::start());
    let url = redis.lock().unwrap().url();
    let ws_a = free_addr("127.0.2.1");
    let ws_b = free_addr("127.0.2.2");
    let web = free_addr("127.0.2.4");
    let _a = ws_node(ws_a, &url);
    let _b = ws_node(ws_b, &url);
    let _publisher = publisher(web, &url);

    let mut received = clients(ws_a, 3).await;
    received.extend(clients(ws_b, 3).await);
    let answers = bus_killed_while_pushes_flow(
        web,
        &received,
        8,
        || redis.lock().unwrap().kill(), // SIGKILL
        || redis.lock().unwrap().restart(),
    )
    .await;
    assert_delivered_once(&answers, &received, "node");
}

/// A WebSocket node killed (SIGKILL) while broadcasts and targeted pushes flow, then replaced.
#[tokio::test]
async fn websocket_node_killed_while_pushes_flow() {
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

    let on_a = clients(ws_a, 3).await;
    let on_b = clients(ws_b, 3).await;
    let ids_a: Vec<u32> = on_a.iter().map(|c| c.worker).collect();
    let ids_b: Vec<u32> = on_b.iter().map(|c| c.worker).collect();
    assert!(
        ids_a.iter().all(|w| !ids_b.contains(w)),
        "nodes hold distinct worker ids: {ids_a:?} {ids_b:?}"
    );
    until_every_client_is_reached(web, &[&on_a, &on_b]).await;

    // Broadcasts, pushes to one client on B and pushes to one client on A, all at once.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_a = Arc::new(AtomicBool::new(false));
    let (bl, tb, ta) = (Log::default(), Log::default(), Log::default());
    let broadcaster = pusher(web, stop.clone(), bl.clone(), broadcasts("b"));
    let to_b = pusher(web, stop.clone(), tb.clone(), to_client("tb", &on_b[1]));
    let to_a = pusher(web, stop_a.clone(), ta.clone(), to_client("ta", &on_a[0]));
    let (aw, ac) = (on_a[0].worker, on_a[0].conn);

    for (log, what) in [(&bl, "broadcasts"), (&tb, "to B"), (&ta, "to A")] {
        log.wait_for(10, &format!("{what} answered ok"), Answer::ok)
            .await;
    }
    // What A's clients had before the kill: every push answered ok up to the last ones so far
    // (the channel sends to A in order), once they have those.
    let (last_b, last_a) = (bl.last_ok(), ta.last_ok());
    wait_until_async(WAIT, "A's clients got the broadcasts so far", async || {
        on_a.iter().all(|c| c.count(&last_b) > 0) && on_a[0].count(&last_a) > 0
    })
    .await;
    let killed = Instant::now();
    drop(node_a.take()); // SIGKILL
                         // Its clients see their connections end.
    for (n, c) in on_a.iter().enumerate() {
        let gone = async || c.reader.is_finished();
        let msg = format!("client {n} of the killed node is disconnected");
        wait_until_async(Duration::from_secs(2), msg, gone).await;
    }
    // The channel noticed: pushes to A are answered 404, broadcasts reaching B's instances
    // only 503. Then pushes to the dead node's connection stop, before a replacement may claim
    // its ids.
    ta.wait_for(10, "to the dead node answered 404", |a| a.status == 404)
        .await;
    bl.wait_for(1, "reaching fewer instances refused", |a| {
        a.sent > killed && a.reached_fewer()
    })
    .await;
    stop_a.store(true, Ordering::Relaxed);
    to_a.await.unwrap();

    // A replacement node claims ids again; they do not clash with B's.
    let _node_c = ws_node(ws_c, &ch_s);
    let on_c = clients(ws_c, 2).await;
    let c_joined = Instant::now();
    for c in &on_c {
        assert!(
            !ids_b.contains(&c.worker),
            "the replacement's id {} is not one of B's {ids_b:?}",
            c.worker
        );
    }
    // Once C's instances subscribed, broadcasts reach as many instances as before: ok again
    // (while the publisher remembers the 4 of before the kill: 15 s).
    bl.wait_for(1, "sent after C joined answered ok", |a| {
        a.sent > c_joined && a.ok()
    })
    .await;
    // The replacement took the dead node's worker ids (the lowest free ones); a push still
    // naming a dead client's (worker, connection) must not reach a client of the replacement.
    assert!(
        on_c.iter().any(|c| c.worker == aw),
        "the replacement claimed the dead node's worker id {aw}"
    );
    let (stale, _) = get(
        web,
        &format!("/?to_worker_id={aw}&to_connection_id={ac}&content=stale"),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    broadcaster.await.unwrap();
    to_b.await.unwrap();
    finish(web, &[&on_b, &on_c]).await;

    let (broadcasts, to_b, to_a) = (bl.answers(), tb.answers(), ta.answers());
    let count = |v: &[Answer], s: u16| v.iter().filter(|x| x.status == s).count();
    eprintln!(
        "node killed: broadcasts {} ok / {} 503; to B {} ok; to A {} ok / {} 404",
        count(&broadcasts, 200),
        count(&broadcasts, 503),
        count(&to_b, 200),
        count(&to_a, 200),
        count(&to_a, 404),
    );

    // Broadcasts: B's clients got every acknowledged one exactly once, and also those answered
    // 503 because they reached fewer instances (after the kill: B's only).
    assert_delivered_once(&broadcasts, &on_b, "B");
    let mut refused_after_kill = 0;
    for a in &broadcasts {
        assert!(a.status == 200 || a.status == 503, "broadcast {a:?}");
        if a.reached_fewer() {
            refused_after_kill += usize::from(a.sent > killed);
            for c in &on_b {
                assert_eq!(c.count(&a.content), 1, "B still receives {}", a.content);
            }
        }
        // C's clients got every broadcast acknowledged after they joined.
        if a.ok() && a.sent > c_joined {
            for c in &on_c {
                assert_eq!(c.count(&a.content), 1, "C client: {} once", a.content);
            }
        }
    }
    assert!(
        refused_after_kill > 0,
        "broadcasts reaching fewer instances than lately are answered 503"
    );
    // A's clients got every broadcast acknowledged up to the last one they had before the kill.
    let upto_last = broadcasts.iter().position(|a| a.content == last_b).unwrap();
    for a in broadcasts[..=upto_last].iter().filter(|a| a.ok()) {
        for c in &on_a {
            assert_eq!(c.count(&a.content), 1, "A client: {} once", a.content);
        }
    }
    for c in &on_a {
        c.nothing_twice("A client");
    }
    for c in &on_c {
        c.nothing_twice("C client");
    }

    // Targeted pushes to B: every one answered ok and delivered to its target only.
    assert!(to_b.iter().all(|x| x.ok()), "pushes to B all ok");
    for a in &to_b {
        assert_eq!(
            on_b[1].count(&a.content),
            1,
            "target got {} once",
            a.content
        );
        assert_eq!(on_b[0].count(&a.content) + on_b[2].count(&a.content), 0);
    }
    // Targeted pushes to A: ok while it lived (delivered up to the last one its client had
    // before the kill, at most once after), then 404 (no subscriber for its worker id), and
    // never ok again.
    let upto_last = to_a.iter().position(|a| a.content == last_a).unwrap();
    let first_gone = to_a.iter().position(|a| a.status == 404).unwrap();
    for (i, a) in to_a.iter().enumerate() {
        assert!(a.ok() || a.status == 404, "to A: {a:?}");
        if a.answered < killed {
            assert!(a.ok(), "before the kill: {a:?}");
        }
        if i > first_gone {
            assert_eq!(a.status, 404, "after a 404, the dead node is gone: {a:?}");
        }
        // A 404 reached no one; an ok one after the last A's client had before the kill may
        // have died with the node.
        let want = match (i <= upto_last, a.status) {
            (true, _) => 1,
            (false, 404) => 0,
            (false, _) => on_a[0].count(&a.content).min(1),
        };
        assert_eq!(
            on_a[0].count(&a.content),
            want,
            "A's target got {}",
            a.content
        );
    }
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
