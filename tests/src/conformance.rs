//! The channel's conformance set: the same cases, asserted on what clients receive, on every
//! backend behind the broker seam — the embedded hub (in-process clients, direct path
//! included), a channel server over TCP, Redis, and a Redis Cluster. `tests/conformance.rs`
//! runs each case on each backend; `scenarios` holds the cases the channel and Redis suites
//! had before.

use std::collections::HashSet;
use std::time::Duration;

use crate::{channel_console, free_port, open_console as open, App, Console};
use crate::{RedisCluster, RedisServer};

/// The backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The embedded channel: one process, clients on two instance threads.
    Embedded,
    /// A `start_channel` process.
    Server,
    /// One `redis-server`.
    Redis,
    /// A three-node Redis Cluster.
    RedisCluster,
}

/// The history rules of every console on a conformance backend: names under `hist-` keep
/// their last 3 messages for a minute, every other name none (so the other cases keep the
/// embedded direct path, which kept publishes do not take).
pub const HISTORY: &str = "hist-*=3/60s,*=off";

/// A running backend and how consoles reach it.
pub struct Backend {
    /// Which one.
    pub kind: Kind,
    /// What `--channel` takes.
    pub channel: String,
    server: Option<(App, u16)>,
    redis: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
    /// Embedded: the one process with the hub, and its console address.
    embedded: Option<(App, String)>,
}

impl Backend {
    /// Start a backend of this kind.
    pub fn start(kind: Kind) -> Backend {
        let mut b = Backend {
            kind,
            channel: String::new(),
            server: None,
            redis: None,
            _cluster: None,
            embedded: None,
        };
        match kind {
            Kind::Embedded => {
                b.channel = "embedded".into();
                b.embedded = Some(channel_console(
                    "embedded",
                    &["--serve", "embedded", "--count", "2", "--history", HISTORY],
                ));
            }
            Kind::Server => {
                let port = free_port();
                b.channel = format!("127.0.0.1:{port}");
                let app = App::start("start_channel", &["--listen", &b.channel], &[port]);
                b.server = Some((app, port));
            }
            Kind::Redis => {
                let r = RedisServer::start();
                b.channel = r.url();
                b.redis = Some(r);
            }
            Kind::RedisCluster => {
                let c = RedisCluster::start(3);
                b.channel = c.url();
                b._cluster = Some(c);
            }
        }
        b
    }

    /// A console process on this backend, and its address: a new process, or (embedded) the
    /// process that holds the hub, whose consoles land on its two threads in turn.
    pub fn console(&self) -> (Option<App>, String) {
        match &self.embedded {
            Some((_, addr)) => (None, addr.clone()),
            None => {
                let (app, addr) = channel_console(&self.channel, &["--history", HISTORY]);
                (Some(app), addr)
            }
        }
    }

    /// One Redis that persists every write (`appendonly`, fsync always), so a restart keeps
    /// what it held.
    pub fn start_persistent_redis() -> Backend {
        let r = RedisServer::start_persistent();
        Backend {
            kind: Kind::Redis,
            channel: r.url(),
            server: None,
            redis: Some(r),
            _cluster: None,
            embedded: None,
        }
    }

    /// Kill the backend (SIGKILL).
    pub fn kill(&mut self) {
        if let Some((app, _)) = self.server.take() {
            drop(app);
            self.server = None;
        }
        if let Some(r) = self.redis.as_mut() {
            r.kill();
        }
    }

    /// Start it again on the same address.
    pub fn restart(&mut self) {
        if self.kind == Kind::Server {
            let port: u16 = self.channel.rsplit_once(':').unwrap().1.parse().unwrap();
            let app = App::start("start_channel", &["--listen", &self.channel], &[port]);
            self.server = Some((app, port));
        }
        if let Some(r) = self.redis.as_mut() {
            r.restart();
        }
    }
}

/// Publish confirmed to `name` until the answer says `n` subscribers were reached (the
/// subscriptions are on their way); fails after 10 s.
pub async fn confirmed_reaches(publisher: &mut Console, name: &str, n: usize) {
    let want = format!("ok reached {n}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = publisher.ask(&format!("pubc {name} \"probe\"")).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "confirmed publishes to {name} never reached {n}: last {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Skip the probes a [`confirmed_reaches`] left at each subscriber: lines up to and including
/// the last `event NAME "probe"` before anything else.
pub async fn skip_probes(sub: &mut Console, name: &str) -> Option<String> {
    let probe = format!("event {name} \"probe\"");
    loop {
        match tokio::time::timeout(Duration::from_millis(300), sub.line()).await {
            Ok(l) if l == probe => continue,
            Ok(l) => return Some(l),
            Err(_) => return None,
        }
    }
}

/// Confirmed publishes say how many subscribers they reached: 0 without any, every
/// subscriber of the name across processes (threads, embedded), fewer after an unsubscribe;
/// each subscriber gets the event once.
pub async fn confirmations_count_subscribers(b: &Backend) {
    let (_a, a_addr) = b.console();
    let (_b, b_addr) = b.console();
    let mut p = open(&b_addr).await;
    assert_eq!(p.ask("pubc nobody 1").await, "ok reached 0");
    let mut subs = Vec::new();
    for addr in [&a_addr, &b_addr, &a_addr] {
        let mut c = open(addr).await;
        assert_eq!(c.ask("on counted").await, "ok");
        subs.push(c);
    }
    confirmed_reaches(&mut p, "counted", 3).await;
    for s in &mut subs {
        assert_eq!(skip_probes(s, "counted").await, None);
    }
    assert_eq!(p.ask(r#"pubc counted {"n":1}"#).await, "ok reached 3");
    for s in &mut subs {
        assert_eq!(s.line().await, r#"event counted {"n":1}"#);
        s.nothing_for(100).await;
    }
    assert_eq!(subs[0].ask("unsub counted").await, "ok");
    confirmed_reaches(&mut p, "counted", 2).await;
    subs[0].nothing_for(100).await;
}

/// Clients notice a lost backend, hold what is published meanwhile (a confirmed publish is
/// refused at once, never buffered), reconnect, re-subscribe and deliver what they held.
pub async fn reconnect_resubscribes_and_flushes(b: &mut Backend) {
    let (_a, a_addr) = b.console();
    let mut sub = open(&a_addr).await;
    assert_eq!(sub.ask("on news").await, "ok");
    let mut p = open(&a_addr).await;
    confirmed_reaches(&mut p, "news", 1).await;
    skip_probes(&mut sub, "news").await;

    b.kill();
    assert_eq!(sub.line().await, "channel closed");
    assert_eq!(p.line().await, "channel closed");
    assert_eq!(p.ask("pub news 2").await, "ok Buffered");
    assert_eq!(p.ask("pubc news 3").await, "err channel not connected");

    b.restart();
    crate::scenarios::both_reconnect(&mut sub, &mut p).await;
    // The buffered event may have been published before the subscriber's subscription was
    // back (Workerman's channel and Redis keep nothing for absent subscribers).
    crate::scenarios::publish_until_delivered(&mut p, &mut sub, |l| assert_eq!(l, "event news 2"))
        .await;
    confirmed_reaches(&mut p, "news", 1).await;
}

/// Worker ids: two nodes claiming at once get disjoint ids, a third the next free ones, and a
/// pinned claim of a held id fails naming it.
pub async fn worker_id_claims_are_disjoint(b: &Backend) {
    let (_a, a_addr) = b.console();
    let (_b, b_addr) = b.console();
    let mut x = Console::connect(&a_addr).await;
    let mut y = Console::connect(&b_addr).await;
    assert_eq!(x.line().await, "channel connected");
    assert_eq!(y.line().await, "channel connected");
    x.send("claim 2").await;
    y.send("claim 2").await;
    let (gx, gy) = (x.line().await, y.line().await);
    let ids = |l: &str| -> Vec<u32> {
        l.strip_prefix("ids ")
            .unwrap_or_else(|| panic!("a claim answers ids: {l:?}"))
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect()
    };
    let (ix, iy) = (ids(&gx), ids(&gy));
    let all: HashSet<u32> = ix.iter().chain(&iy).copied().collect();
    assert_eq!(all.len(), 4, "disjoint: {ix:?} / {iy:?}");
    assert_eq!(all, HashSet::from([0, 1, 2, 3]), "the lowest free ids");
    assert_eq!(ids(&x.ask("claim 1").await), vec![4]);
    let clash = y.ask(&format!("claim 1 {}", ix[0])).await;
    assert_eq!(
        clash,
        format!(
            "err worker ids [{}] are already held by another node",
            ix[0]
        )
    );
}

/// `event NAME JSON at EPOCH:OFFSET` (an `onk` subscriber's line): JSON, epoch, offset.
fn kept_line(line: &str, name: &str) -> (String, u64, u64) {
    let rest = line
        .strip_prefix(&format!("event {name} "))
        .unwrap_or_else(|| panic!("an event of {name}: {line:?}"));
    let (json, at) = rest
        .rsplit_once(" at ")
        .unwrap_or_else(|| panic!("a position: {line:?}"));
    let (e, o) = at
        .split_once(':')
        .unwrap_or_else(|| panic!("kept, with EPOCH:OFFSET: {line:?}"));
    (json.to_string(), e.parse().unwrap(), o.parse().unwrap())
}

/// Publish `{"i": i}` to `name` confirmed for each `i`, each reaching `subs` subscribers.
async fn publish_each(p: &mut Console, name: &str, is: std::ops::RangeInclusive<u32>, subs: usize) {
    for i in is {
        let got = p.ask(&format!("pubc {name} {{\"i\":{i}}}")).await;
        assert_eq!(got, format!("ok reached {subs}"), "publish {i}");
    }
}

/// Kept publishes sent in one burst (one turn of the publisher: the Redis backend keeps up to
/// 64 alike in one script call) reach a subscriber in order, numbered from 1 without a gap,
/// and read back exactly; two names published in turn are numbered each on its own.
pub async fn history_numbers_a_burst_in_order(b: &Backend) {
    let (_a, a_addr) = b.console();
    let (_b, b_addr) = b.console();
    let mut sub = open(&a_addr).await;
    let mut p = open(&b_addr).await;
    for n in ["hist-b", "hist-c", "hist-d"] {
        assert_eq!(sub.ask(&format!("onk {n}")).await, "ok");
    }
    assert_eq!(sub.ask("on sync-b").await, "ok");
    confirmed_reaches(&mut p, "sync-b", 1).await;
    skip_probes(&mut sub, "sync-b").await;
    assert_eq!(p.ask("seq hist-b 150").await, "ok Sent");
    let mut epoch = None;
    for i in 0..150u64 {
        let (json, e, o) = kept_line(&sub.line().await, "hist-b");
        assert_eq!(
            (json, o),
            (format!(r#"{{"i":{i}}}"#), i + 1),
            "in order, from 1"
        );
        assert_eq!(*epoch.get_or_insert(e), e, "one epoch");
    }
    let epoch = epoch.unwrap();
    let page = p.ask(&format!("hist hist-b {epoch}:148")).await;
    assert_eq!(
        page,
        format!(r#"page {epoch} 150 recovered 149={{"i":148}} 150={{"i":149}}"#)
    );
    assert_eq!(p.ask("seq hist-c,hist-d 20").await, "ok Sent");
    // Each name in order (a Redis Cluster orders names of other slots apart).
    let mut got: std::collections::BTreeMap<String, Vec<(String, u64)>> = Default::default();
    for _ in 0..20 {
        let line = sub.line().await;
        let name = if line.starts_with("event hist-c ") {
            "hist-c"
        } else {
            "hist-d"
        };
        let (json, _, o) = kept_line(&line, name);
        got.entry(name.into()).or_default().push((json, o));
    }
    for (name, first) in [("hist-c", 0), ("hist-d", 1)] {
        let want: Vec<(String, u64)> = (0..10u64)
            .map(|k| (format!(r#"{{"i":{}}}"#, first + 2 * k), k + 1))
            .collect();
        assert_eq!(got[name], want, "{name}");
    }
}

/// Two publishers keeping on one name at once (on the embedded channel: two threads, each
/// delivering by itself or through the hub as it may): the subscriber gets every position once,
/// in order, 1 to N, and each publisher's messages in the order it sent them.
pub async fn history_orders_concurrent_publishers(b: &Backend) {
    let (_a, a_addr) = b.console();
    let (_b, b_addr) = b.console();
    let (_c, c_addr) = b.console();
    let mut sub = open(&a_addr).await;
    let mut p1 = open(&b_addr).await;
    let mut p2 = open(&c_addr).await;
    assert_eq!(sub.ask("onk hist-x").await, "ok");
    assert_eq!(sub.ask("on sync-x").await, "ok");
    for p in [&mut p1, &mut p2] {
        confirmed_reaches(p, "sync-x", 1).await;
        skip_probes(&mut sub, "sync-x").await;
    }
    const N: u64 = 300;
    p1.send(&format!("seqt hist-x {N}")).await;
    p2.send(&format!("seqt hist-x {N}")).await;
    let mut seen: Vec<u64> = Vec::new();
    for k in 1..=2 * N {
        let (json, _, o) = kept_line(&sub.line().await, "hist-x");
        assert_eq!(o, k, "positions in order, none missing");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        seen.push(v["i"].as_u64().unwrap());
    }
    // Both sequences, each in order: every i twice, and the run splits into two increasing ones.
    let (mut a, mut b2) = (0u64, 0u64);
    for i in seen {
        if i == a {
            a += 1;
        } else {
            assert_eq!(i, b2, "each publisher's messages in order");
            b2 += 1;
        }
    }
    assert_eq!((a, b2), (N, N));
    for p in [&mut p1, &mut p2] {
        assert_eq!(p.line().await, "ok Sent");
    }
}

/// A subscriber that stands before a name's history (it gets the position it stands at with
/// each kept event) reads what came after any position it held, exactly, in order — or is told
/// the history no longer covers it: trimmed past its size, another epoch, ahead of the top, a
/// reader that saw no history while some was kept.
pub async fn history_answers_exactly_what_was_missed(b: &Backend) {
    let (_a, a_addr) = b.console();
    let (_b, b_addr) = b.console();
    let mut sub = open(&a_addr).await;
    let mut p = open(&b_addr).await;
    assert_eq!(p.ask("hist hist-a 0:0").await, "page 0 0 recovered");
    assert_eq!(p.ask("hist hist-a 5:1").await, "page 0 0 lost");
    assert_eq!(
        p.ask("hist hist-a 1:x").await.split(' ').next(),
        Some("err")
    );
    assert_eq!(sub.ask("onk hist-a").await, "ok");
    assert_eq!(sub.ask("on sync-a").await, "ok");
    confirmed_reaches(&mut p, "sync-a", 1).await;
    assert_eq!(skip_probes(&mut sub, "sync-a").await, None);

    publish_each(&mut p, "hist-a", 1..=2, 1).await;
    let (j1, epoch, o1) = kept_line(&sub.line().await, "hist-a");
    let (j2, e2, o2) = kept_line(&sub.line().await, "hist-a");
    assert_eq!((j1.as_str(), j2.as_str()), (r#"{"i":1}"#, r#"{"i":2}"#));
    assert_eq!((e2, o1, o2), (epoch, 1, 2), "one epoch, offsets from 1");
    assert_eq!(
        p.ask(&format!("hist hist-a {epoch}:1")).await,
        format!(r#"page {epoch} 2 recovered 2={{"i":2}}"#)
    );
    assert_eq!(
        p.ask(&format!("hist hist-a {epoch}:2")).await,
        format!("page {epoch} 2 recovered")
    );
    for lost in [
        format!("{}:2", epoch + 1),
        format!("{epoch}:3"),
        "0:0".into(),
    ] {
        assert_eq!(
            p.ask(&format!("hist hist-a {lost}")).await,
            format!("page {epoch} 2 lost"),
            "from {lost}"
        );
    }
    assert_eq!(p.ask("hist hist-a -").await, format!("page {epoch} 2 lost"));

    // Three kept: 3, 4, 5. From 2 nothing is missing; from 1 the second was trimmed.
    publish_each(&mut p, "hist-a", 3..=5, 1).await;
    for i in 3..=5 {
        let (json, e, o) = kept_line(&sub.line().await, "hist-a");
        assert_eq!((json, e, o), (format!("{{\"i\":{i}}}"), epoch, i as u64));
    }
    assert_eq!(
        p.ask(&format!("hist hist-a {epoch}:2")).await,
        format!(r#"page {epoch} 5 recovered 3={{"i":3}} 4={{"i":4}} 5={{"i":5}}"#)
    );
    assert_eq!(
        p.ask(&format!("hist hist-a {epoch}:1")).await,
        format!("page {epoch} 5 lost")
    );
    // A name without a rule keeps nothing, and its events carry no position.
    assert_eq!(sub.ask("onk plain-a").await, "ok");
    confirmed_reaches(&mut p, "plain-a", 1).await;
    let line = sub.line().await;
    assert!(line.ends_with(" at -"), "{line}");
    assert_eq!(p.ask("hist plain-a 0:0").await, "page 0 0 recovered");
}

/// What a backend that comes back remembers of a name's history: a channel server (or a Redis
/// without persistence) nothing — a reader at an old position is told it is lost, and the
/// name starts a new epoch; a Redis that persists everything — the same epoch, recovered.
pub async fn history_after_a_restart(b: &mut Backend, persists: bool) {
    let (_a, a_addr) = b.console();
    let mut sub = open(&a_addr).await;
    let mut p = open(&a_addr).await;
    assert_eq!(sub.ask("onk hist-r").await, "ok");
    assert_eq!(sub.ask("on sync-r").await, "ok");
    confirmed_reaches(&mut p, "sync-r", 1).await;
    skip_probes(&mut sub, "sync-r").await;
    publish_each(&mut p, "hist-r", 1..=2, 1).await;
    let (_, epoch, _) = kept_line(&sub.line().await, "hist-r");
    kept_line(&sub.line().await, "hist-r");

    b.kill();
    assert_eq!(sub.line().await, "channel closed");
    assert_eq!(p.line().await, "channel closed");
    b.restart();
    crate::scenarios::both_reconnect(&mut sub, &mut p).await;
    let page = p.ask(&format!("hist hist-r {epoch}:1")).await;
    if persists {
        assert_eq!(page, format!(r#"page {epoch} 2 recovered 2={{"i":2}}"#));
    } else {
        assert_eq!(page, "page 0 0 lost");
    }
    confirmed_reaches(&mut p, "sync-r", 1).await;
    skip_probes(&mut sub, "sync-r").await;
    publish_each(&mut p, "hist-r", 3..=3, 1).await;
    let (_, e, o) = kept_line(&sub.line().await, "hist-r");
    if persists {
        assert_eq!((e, o), (epoch, 3));
    } else {
        assert!(e != epoch && o == 1, "a new epoch: {e}:{o} after {epoch}");
    }
}
