//! The directory on Redis and Redis Cluster, what is Redis's own (the shared cases are in
//! `werkmann_tests::directory`, run on every backend by `conformance.rs`): a node that vanishes
//! without closing its connection is swept within the alive key's bound, a closing link takes
//! its registrations at once, operations keep their order with the link's other commands,
//! requests fail at once while disconnected, nothing is left in Redis once the clients go, and
//! a sequence of operations with their corner cases is answered exactly as the embedded hub does.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use werkmann_tests::conformance::{Backend, Kind};
use werkmann_tests::directory::forwarded;
use werkmann_tests::{
    channel_console, open_console as open, poll_until_async, wait_until_async, App, Console,
    RedisServer, WAIT,
};

/// How long a worker's alive key lives unrenewed (`redis/directory.rs`, `ALIVE_TTL_MS`).
const ALIVE_TTL: Duration = Duration::from_secs(30);
/// How often the directory is swept (`SWEEP_EVERY`): a sweep runs at most this long after the
/// key expired, plus as long again when another link swept just before.
const SWEEP: Duration = Duration::from_secs(1);

/// A gateway node's console for worker `worker`: subscribed to its node event and to every
/// node's.
async fn node(addr: &str, worker: u32) -> Console {
    let mut c = open(addr).await;
    assert_eq!(c.ask(&format!("on werkmann.gw.{worker}")).await, "ok");
    assert_eq!(c.ask("on werkmann.gw").await, "ok");
    c.sync().await;
    c
}

/// `c` sends `op` without waiting for its answer.
async fn dirsend(c: &mut Console, op: Value) {
    assert_eq!(c.ask(&format!("dirsend {op}")).await, "ok Sent", "{op}");
}

/// The directory's answer to `op`.
async fn dir(c: &mut Console, op: &Value) -> Value {
    let line = c.ask(&format!("dir {op}")).await;
    let answer = line
        .strip_prefix("dir ")
        .unwrap_or_else(|| panic!("{op}: {line:?}"));
    serde_json::from_str(answer).unwrap()
}

async fn count(api: &mut Console) -> Value {
    dir(api, &json!({"op": "get_all_client_id_count"})).await
}

/// Wait until the directory holds `n` clients.
async fn count_is(api: &mut Console, n: u64, within: Duration) {
    wait_until_async(
        within,
        format!("{n} clients in the directory"),
        async || count(api).await == json!(n),
    )
    .await;
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child process this test started and still holds.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// A node that vanishes without closing its connection (stopped with SIGSTOP: Redis keeps its
/// connection and its subscriptions) stops renewing its alive key: its clients are swept
/// within the key's life and a sweep, not before; woken up, its link sees that they were
/// swept and has its client register again.
async fn a_vanished_node_is_swept_within_the_bound(kind: Kind) {
    let b = Backend::start(kind);
    let (app, n_addr) = b.console();
    let app = app.expect("a console process of its own");
    let (_api_app, api_addr) = b.console();
    let mut n = node(&n_addr, 7).await;
    let mut api = open(&api_addr).await;
    let reg = json!({"op": "register", "clients": [
        {"client_id": "7-1", "uid": "frozen", "groups": ["g"]},
        {"client_id": "7-2"},
    ]});
    dirsend(&mut n, reg).await;
    count_is(&mut api, 2, WAIT).await;

    let pid = app.child.id();
    signal(pid, libc::SIGSTOP);
    let stopped = Instant::now();
    // Still subscribed: counted as reached while its alive key lives.
    let send = json!({"op": "send", "target": {"to": "uids", "uids": ["frozen"]}, "data": "x"});
    assert_eq!(dir(&mut api, &send).await, json!(1));
    let bound = ALIVE_TTL + 2 * SWEEP;
    let slack = Duration::from_secs(3);
    count_is(&mut api, 0, bound + slack + Duration::from_secs(5)).await;
    let took = stopped.elapsed();
    signal(pid, libc::SIGCONT);
    assert!(
        took <= bound + slack,
        "swept after {took:?}, bound {bound:?}"
    );
    // Its alive key was renewed up to 10 s before it stopped.
    assert!(
        took >= ALIVE_TTL - Duration::from_secs(11),
        "swept after {took:?}, while its alive key lived"
    );
    assert_eq!(
        dir(&mut api, &json!({"op": "get_all_uid_count"})).await,
        json!(0)
    );
    assert_eq!(
        dir(&mut api, &json!({"op": "get_all_group_id_list"})).await,
        json!([])
    );
    assert_eq!(dir(&mut api, &send).await, json!(0));

    // Awake, the node's link renews its alive key, finds it gone and has the client register
    // again (a gateway node's reconnect hook; the console has none). A command the link had
    // in flight when it stopped may time out first, as the process wakes: the link then
    // reconnects, which has a gateway node register again just the same.
    let noticed = async || {
        let log = app.log();
        log.contains("were swept (this link out of touch")
            || log.contains("connection lost; reconnecting")
    };
    assert!(
        poll_until_async(Duration::from_secs(15), noticed).await,
        "the woken node's link notices; log:\n{}",
        app.log()
    );
}

#[tokio::test]
async fn a_vanished_node_is_swept_within_the_bound_redis() {
    a_vanished_node_is_swept_within_the_bound(Kind::Redis).await;
}

#[tokio::test]
async fn a_vanished_node_is_swept_within_the_bound_redis_cluster() {
    a_vanished_node_is_swept_within_the_bound(Kind::RedisCluster).await;
}

/// A worker whose node's subscription reaches Redis late (here: not at all before a sweep) is
/// swept two seconds after its registration; once the node is subscribed its link notices
/// within seconds, not at its next ten-second renewal, and has its client register again.
async fn a_node_subscribed_after_a_sweep_registers_again_at_once(kind: Kind) {
    let b = Backend::start(kind);
    let (app, n_addr) = b.console();
    let app = app.expect("a console process of its own");
    let (_api_app, api_addr) = b.console();
    let mut n = open(&n_addr).await;
    let mut api = open(&api_addr).await;
    dirsend(
        &mut n,
        json!({"op": "register", "clients": [{"client_id": "9-1"}]}),
    )
    .await;
    count_is(&mut api, 1, WAIT).await;
    // No subscriber for worker 9's node event: swept once its registration is not fresh.
    count_is(&mut api, 0, Duration::from_secs(2) + 3 * SWEEP).await;
    assert_eq!(n.ask("on werkmann.gw.9").await, "ok");
    n.sync().await;
    let subscribed = Instant::now();
    let noticed = async || {
        app.log()
            .contains("were swept (this link out of touch, or their")
    };
    assert!(
        poll_until_async(Duration::from_secs(12), noticed).await,
        "the link notices; log:\n{}",
        app.log()
    );
    // Renewals come every second for ten after a registration (else at the tenth second).
    let took = subscribed.elapsed();
    assert!(
        took <= 3 * SWEEP,
        "noticed {took:?} after the node subscribed"
    );
}

#[tokio::test]
async fn a_node_subscribed_after_a_sweep_registers_again_at_once_redis() {
    a_node_subscribed_after_a_sweep_registers_again_at_once(Kind::Redis).await;
}

#[tokio::test]
async fn a_node_subscribed_after_a_sweep_registers_again_at_once_redis_cluster() {
    a_node_subscribed_after_a_sweep_registers_again_at_once(Kind::RedisCluster).await;
}

/// The clients a link registered leave with it when it closes, though the node's event still
/// has a subscriber (another connection of the same process), so no sweep would take them.
async fn a_closing_link_takes_its_registrations_at_once(kind: Kind) {
    let b = Backend::start(kind);
    let (_app, addr) = b.console();
    let (_api_app, api_addr) = b.console();
    let mut listener = node(&addr, 5).await;
    let mut registrar = open(&addr).await;
    let mut api = open(&api_addr).await;
    let reg = json!({"op": "register", "clients": [
        {"client_id": "5-1", "uid": "u", "session": {"k": 1}},
        {"client_id": "5-2", "groups": ["g"]},
    ]});
    dirsend(&mut registrar, reg).await;
    count_is(&mut api, 2, WAIT).await;
    // Sweeps run every second: they leave a subscribed worker alone.
    listener.nothing_for(2500).await;
    assert_eq!(count(&mut api).await, json!(2));

    drop(registrar);
    count_is(&mut api, 0, Duration::from_secs(2)).await;
    assert_eq!(
        dir(&mut api, &json!({"op": "is_uid_online", "uid": "u"})).await,
        json!(false)
    );
    listener.nothing_for(100).await;
}

#[tokio::test]
async fn a_closing_link_takes_its_registrations_at_once_redis() {
    a_closing_link_takes_its_registrations_at_once(Kind::Redis).await;
}

#[tokio::test]
async fn a_closing_link_takes_its_registrations_at_once_redis_cluster() {
    a_closing_link_takes_its_registrations_at_once(Kind::RedisCluster).await;
}

/// Directory commands run in order with the link's other commands: a registration sent
/// without waiting is in place for the next request, and what the directory forwards reaches
/// the node between the events published before and after it.
async fn operations_keep_their_order(kind: Kind) {
    let b = Backend::start(kind);
    let (_app, addr) = b.console();
    let mut n = node(&addr, 3).await;
    let mut api = open(&addr).await;
    for i in 0..20 {
        let id = format!("3-{i}");
        dirsend(
            &mut n,
            json!({"op": "register", "clients": [{"client_id": id}]}),
        )
        .await;
        let online = json!({"op": "is_online", "client_id": id});
        assert_eq!(dir(&mut n, &online).await, json!(true), "{id}");
    }
    for i in 0..20 {
        let data = format!("m{i}");
        let send =
            json!({"op": "send", "target": {"to": "clients", "client_ids": ["3-1"]}, "data": data});
        assert_eq!(api.ask(&format!("pub werkmann.gw.3 {i}")).await, "ok Sent");
        dirsend(&mut api, send.clone()).await;
        assert_eq!(n.line().await, format!("event werkmann.gw.3 {i}"));
        forwarded(&mut n, "werkmann.gw.3", &send).await;
    }
    let bind = json!({"op": "bind_uid", "client_id": "3-2", "uid": "a"});
    let send = json!({"op": "send", "target": {"to": "uids", "uids": ["a"]}, "data": "after bind"});
    dirsend(&mut api, bind.clone()).await;
    assert_eq!(dir(&mut api, &send).await, json!(1));
    forwarded(&mut n, "werkmann.gw.3", &bind).await;
    forwarded(&mut n, "werkmann.gw.3", &send).await;
    n.nothing_for(100).await;

    // Sends to one uid share a script call when consecutive in a pipeline (sent without
    // waiting, these go as one); an operation between them splits the run and keeps its place.
    let to = |uid: &str, data: &str| json!({"op": "send", "target": {"to": "uids", "uids": [uid]}, "data": data});
    let ops = [
        to("a", "1"),
        to("a", "2"),
        json!({"op": "bind_uid", "client_id": "3-3", "uid": "b"}),
        to("b", "3"),
        to("a", "4"),
        json!({"op": "unbind_uid", "client_id": "3-2", "uid": "a"}),
        to("a", "not forwarded: no one holds a"),
        to("b", "5"),
    ];
    for op in &ops {
        dirsend(&mut api, op.clone()).await;
    }
    for op in ops
        .iter()
        .filter(|op| op["data"] != "not forwarded: no one holds a")
    {
        forwarded(&mut n, "werkmann.gw.3", op).await;
    }
    assert_eq!(dir(&mut api, &to("b", "6")).await, json!(1));
    assert_eq!(dir(&mut api, &to("a", "7")).await, json!(0));
    forwarded(&mut n, "werkmann.gw.3", &to("b", "6")).await;
    n.nothing_for(100).await;
}

#[tokio::test]
async fn operations_keep_their_order_redis() {
    operations_keep_their_order(Kind::Redis).await;
}

#[tokio::test]
async fn operations_keep_their_order_redis_cluster() {
    operations_keep_their_order(Kind::RedisCluster).await;
}

/// Two gateway nodes (workers 5 and 6) and two API links, each a console of one process.
struct TwoNodes {
    n5: Console,
    n6: Console,
    sender: Console,
    other: Console,
}

/// [`TwoNodes`] on `redis`: client 5-1 bound to uid `u`, and `on_6` clients of worker 6
/// (6-1, …) bound to none.
async fn uid_on_two_nodes(redis: &RedisServer, on_6: u32) -> (App, TwoNodes) {
    let (app, addr) = channel_console(&redis.url(), &[]);
    let mut s = TwoNodes {
        n5: node(&addr, 5).await,
        n6: node(&addr, 6).await,
        sender: open(&addr).await,
        other: open(&addr).await,
    };
    dirsend(
        &mut s.n5,
        json!({"op": "register", "clients": [{"client_id": "5-1", "uid": "u"}]}),
    )
    .await;
    let six: Vec<Value> = (1..=on_6)
        .map(|i| json!({"client_id": format!("6-{i}")}))
        .collect();
    dirsend(&mut s.n6, json!({"op": "register", "clients": six})).await;
    count_is(&mut s.other, u64::from(on_6) + 1, WAIT).await;
    (app, s)
}

/// A send to uid `u` of `data`.
fn send_to_u(data: &str) -> Value {
    json!({"op": "send", "target": {"to": "uids", "uids": ["u"]}, "data": data})
}

/// Clients Redis holds back (`CLIENT PAUSE`).
fn held_back(redis: &RedisServer) -> u64 {
    redis
        .cli(&["info", "clients"])
        .lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// `sender` sends to `u` (held by worker 5's client: its holders cached), then Redis holds
/// back every write; the clients held back so far.
async fn warm_then_pause(
    redis: &RedisServer,
    sender: &mut Console,
    n5: &mut Console,
    attempt: u32,
) -> u64 {
    let warm = send_to_u(&format!("warm {attempt}"));
    assert_eq!(dir(sender, &warm).await, json!(1));
    forwarded(n5, "werkmann.gw.5", &warm).await;
    let before = held_back(redis);
    assert_eq!(redis.cli(&["client", "pause", "10000", "write"]), "OK");
    before
}

/// A link caches which workers hold a uid (`uid_cache.rs`): once it has sent to a uid, its
/// next sends to it run no script (plain `PUBLISH`es), and a change of the uid's holders made
/// through another link — the holder unbound, another client on another node bound — is seen
/// by the very next send, which reaches the new holder only and counts it.
async fn cached_sends_to_a_uid_follow_changes_made_elsewhere(redis: RedisServer) {
    let (_app, mut s) = uid_on_two_nodes(&redis, 2).await;
    let (n5, n6, sender, other) = (&mut s.n5, &mut s.n6, &mut s.sender, &mut s.other);
    let to = send_to_u;
    assert_eq!(dir(sender, &to("first")).await, json!(1));
    forwarded(n5, "werkmann.gw.5", &to("first")).await;

    let scripts_run = || -> u64 {
        let stats = redis.cli(&["info", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    let before = scripts_run();
    for i in 0..50 {
        let send = to(&format!("warm {i}"));
        assert_eq!(dir(sender, &send).await, json!(1));
        forwarded(n5, "werkmann.gw.5", &send).await;
    }
    // Each of those is a batch of its own: without the cache, 50 script calls; the links'
    // sweeps run a few meanwhile.
    let ran = scripts_run() - before;
    assert!(ran < 10, "{ran} script calls for 50 sends to a cached uid");

    let unbind = json!({"op": "unbind_uid", "client_id": "5-1", "uid": "u"});
    dir(other, &unbind).await;
    forwarded(n5, "werkmann.gw.5", &unbind).await;
    for id in ["6-1", "6-2"] {
        let bind = json!({"op": "bind_uid", "client_id": id, "uid": "u"});
        assert_eq!(dir(other, &bind).await, json!(1));
        forwarded(n6, "werkmann.gw.6", &bind).await;
    }
    for data in ["after the change", "cached again"] {
        assert_eq!(dir(sender, &to(data)).await, json!(2), "{data}");
        forwarded(n6, "werkmann.gw.6", &to(data)).await;
    }
    n5.nothing_for(100).await;
    n6.nothing_for(100).await;
}

#[tokio::test]
async fn cached_sends_to_a_uid_follow_changes_made_elsewhere_tcp() {
    cached_sends_to_a_uid_follow_changes_made_elsewhere(RedisServer::start()).await;
}

/// The directory's connection of its own (read through its tap) speaks TLS too.
#[tokio::test]
async fn cached_sends_to_a_uid_follow_changes_made_elsewhere_tls() {
    let redis = RedisServer::start_tls();
    // The apps trust the test CA through WERKMANN_REDIS_CA (set before they start; other
    // tests' apps, on `redis://`, do not use it).
    std::env::set_var("WERKMANN_REDIS_CA", redis.ca_file());
    cached_sends_to_a_uid_follow_changes_made_elsewhere(redis).await;
}

/// A send made from a cached copy of the uid's holders that a change from another link
/// overtook — Redis ran the change between the copy's look-up and the send: both held back
/// by `CLIENT PAUSE WRITE`, the change first — goes again through the script, to the new
/// holder only: each node gets it once, and the answer counts both holders. (When the send
/// happens to run first, it is simply before the change: one holder, one copy.)
#[tokio::test]
async fn a_send_overtaken_by_a_change_goes_again_to_the_new_holders() {
    let redis = RedisServer::start();
    let (_app, mut s) = uid_on_two_nodes(&redis, 1).await;
    let (n5, n6, sender, other) = (&mut s.n5, &mut s.n6, &mut s.sender, &mut s.other);
    let to = send_to_u;
    let bind = json!({"op": "bind_uid", "client_id": "6-1", "uid": "u"});
    let unbind = json!({"op": "unbind_uid", "client_id": "6-1", "uid": "u"});
    let mut overtaken = 0;
    for attempt in 0..20 {
        let before = warm_then_pause(&redis, sender, n5, attempt).await;
        dirsend(other, bind.clone()).await;
        wait_until_async(WAIT, "the bind held back", async || {
            held_back(&redis) > before
        })
        .await;
        let send = to(&format!("overtaken {attempt}"));
        sender.send(&format!("dir {send}")).await;
        wait_until_async(WAIT, "the send held back", async || {
            held_back(&redis) > before + 1
        })
        .await;
        assert_eq!(redis.cli(&["client", "unpause"]), "OK");
        let answer = sender.line().await;
        forwarded(n6, "werkmann.gw.6", &bind).await;
        forwarded(n5, "werkmann.gw.5", &send).await;
        match answer.as_str() {
            "dir 2" => {
                forwarded(n6, "werkmann.gw.6", &send).await;
                overtaken += 1;
            }
            "dir 1" => {}
            other => panic!("{send}: {other:?}"),
        }
        n5.nothing_for(50).await;
        n6.nothing_for(50).await;
        dir(other, &unbind).await;
        forwarded(n6, "werkmann.gw.6", &unbind).await;
        if overtaken == 3 {
            return;
        }
    }
    panic!("the change overtook a cached send only {overtaken} times in 20");
}

/// A link whose user may turn tracking on but not ask `CLIENT CACHING` (an ACL) would read
/// holders that nothing invalidates: it keeps no cache and sends through the script, so a
/// change made elsewhere is seen by its next send.
#[tokio::test]
async fn no_cache_where_client_caching_is_refused() {
    let redis = RedisServer::start();
    let (_app, mut s) = uid_on_two_nodes(&redis, 1).await;
    assert_eq!(
        redis.cli(&[
            "acl",
            "setuser",
            "nocaching",
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
            "-client|caching"
        ]),
        "OK"
    );
    let url = format!("redis://nocaching:pw@127.0.0.1:{}", redis.port);
    let (sender_app, addr) = channel_console(&url, &[]);
    let mut sender = open(&addr).await;
    let (n5, n6, other) = (&mut s.n5, &mut s.n6, &mut s.other);
    let to = send_to_u;
    for i in 0..3 {
        let send = to(&format!("first {i}"));
        assert_eq!(dir(&mut sender, &send).await, json!(1));
        forwarded(n5, "werkmann.gw.5", &send).await;
    }
    let unbind = json!({"op": "unbind_uid", "client_id": "5-1", "uid": "u"});
    dir(other, &unbind).await;
    forwarded(n5, "werkmann.gw.5", &unbind).await;
    let bind = json!({"op": "bind_uid", "client_id": "6-1", "uid": "u"});
    assert_eq!(dir(other, &bind).await, json!(1));
    forwarded(n6, "werkmann.gw.6", &bind).await;
    let send = to("after the change");
    assert_eq!(dir(&mut sender, &send).await, json!(1));
    forwarded(n6, "werkmann.gw.6", &send).await;
    n5.nothing_for(100).await;
    assert!(
        sender_app.log().contains("CLIENT CACHING answered"),
        "{}",
        sender_app.log()
    );
}

/// A change from another link that Redis runs right *after* a cached send — both held back by
/// `CLIENT PAUSE WRITE`, the send first — does not make the send go again or change its count:
/// it reached the holder as it was (its invalidation arrives after the send's reply, often in
/// the same read). Run the other way round, the send reached no one. Each answer matches the
/// order the node saw.
#[tokio::test]
async fn a_change_right_after_a_cached_send_leaves_its_count() {
    let redis = RedisServer::start();
    let (_app, mut s) = uid_on_two_nodes(&redis, 1).await;
    let (n5, sender, other) = (&mut s.n5, &mut s.sender, &mut s.other);
    let to = send_to_u;
    let bind = json!({"op": "bind_uid", "client_id": "5-1", "uid": "u"});
    let unbind = json!({"op": "unbind_uid", "client_id": "5-1", "uid": "u"});
    let mut send_first = 0;
    for attempt in 0..20 {
        let before = warm_then_pause(&redis, sender, n5, attempt).await;
        let send = to(&format!("before the change {attempt}"));
        sender.send(&format!("dir {send}")).await;
        wait_until_async(WAIT, "the send held back", async || {
            held_back(&redis) > before
        })
        .await;
        dirsend(other, unbind.clone()).await;
        wait_until_async(WAIT, "the unbind held back", async || {
            held_back(&redis) > before + 1
        })
        .await;
        assert_eq!(redis.cli(&["client", "unpause"]), "OK");
        let answer = sender.line().await;
        let (first, second) = (n5.line().await, n5.line().await);
        assert!(
            first.contains("unbind_uid") != second.contains("unbind_uid"),
            "{first:?} {second:?}"
        );
        if first.contains("unbind_uid") {
            assert_eq!(answer, "dir 0", "{send}: it ran after the unbind");
        } else {
            assert_eq!(answer, "dir 1", "{send}: it ran before the unbind");
            send_first += 1;
        }
        n5.nothing_for(50).await;
        assert_eq!(dir(other, &bind).await, json!(1));
        forwarded(n5, "werkmann.gw.5", &bind).await;
        if send_first == 3 {
            return;
        }
    }
    panic!("the send ran first only {send_first} times in 20");
}

/// Requests are refused at once while Redis is away; the directory lives in Redis, so a Redis
/// restarted without persistence starts empty (the nodes register again on reconnect).
#[tokio::test]
async fn requests_fail_at_once_while_redis_is_away() {
    let mut redis = RedisServer::start();
    let (_app, addr) = channel_console(&redis.url(), &[]);
    let mut n = node(&addr, 1).await;
    let mut api = open(&addr).await;
    dirsend(
        &mut n,
        json!({"op": "register", "clients": [{"client_id": "1-1"}]}),
    )
    .await;
    count_is(&mut api, 1, WAIT).await;

    redis.kill();
    assert_eq!(api.line().await, "channel closed");
    assert_eq!(n.line().await, "channel closed");
    let op = json!({"op": "get_all_client_id_count"});
    assert_eq!(
        api.ask(&format!("dir {op}")).await,
        "err channel not connected"
    );
    redis.restart();
    assert_eq!(api.line().await, "channel connected");
    assert_eq!(n.line().await, "channel connected");
    assert_eq!(count(&mut api).await, json!(0));
    dirsend(
        &mut n,
        json!({"op": "register", "clients": [{"client_id": "1-1"}]}),
    )
    .await;
    count_is(&mut api, 1, WAIT).await;
}

/// Every directory key carries the `{werkmann:dir}` hash tag, and once the clients are gone
/// only the registrar's alive key (and the sweep's marker) is left.
#[tokio::test]
async fn nothing_is_left_behind() {
    let redis = RedisServer::start();
    let (_app, addr) = channel_console(&redis.url(), &[]);
    let mut n = node(&addr, 4).await;
    let mut api = open(&addr).await;
    dirsend(
        &mut n,
        json!({"op": "register", "clients": [
            {"client_id": "4-1", "uid": "a", "groups": ["g", "h"], "session": {"s": 1}},
            {"client_id": "4-2", "uid": "a", "groups": ["g"]},
        ]}),
    )
    .await;
    count_is(&mut api, 2, WAIT).await;
    for op in [
        json!({"op": "bind_uid", "client_id": "4-2", "uid": "b"}),
        json!({"op": "join_group", "client_id": "4-1", "group": "k"}),
        json!({"op": "update_session", "client_id": "4-2", "session": {"t": [2]}}),
    ] {
        assert_eq!(dir(&mut api, &op).await, json!(1), "{op}");
        forwarded(&mut n, "werkmann.gw.4", &op).await;
    }
    let keys = || -> Vec<String> {
        let mut k: Vec<String> = redis
            .cli(&["--raw", "keys", "*dir*"])
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        k.sort();
        k
    };
    let all = keys();
    assert!(
        all.iter().all(|k| k.starts_with("{werkmann:dir}:")),
        "{all:?}"
    );
    for want in [
        "c:4", "cg:4-1", "cs:4-2", "uw:a", "uw:b", "uc", "g:k", "gw:g", "workers",
    ] {
        assert!(
            all.contains(&format!("{{werkmann:dir}}:{want}")),
            "{want} in {all:?}"
        );
    }
    dirsend(
        &mut n,
        json!({"op": "unregister", "client_ids": ["4-1", "4-2"]}),
    )
    .await;
    count_is(&mut api, 0, WAIT).await;
    let left: Vec<String> = keys()
        .into_iter()
        .filter(|k| k != "{werkmann:dir}:swept")
        .collect();
    assert_eq!(left, ["{werkmann:dir}:alive:4"]);
}

/// A node with 100k connections registers them again at once (after a reconnect: ten
/// `register` operations of 10,000 clients, queued together): each pipeline is answered well
/// within the link's response timeout, and every client is in the directory.
#[tokio::test]
async fn a_hundred_thousand_registrations_at_once_go_through() {
    let redis = RedisServer::start();
    let (_app, addr) = channel_console(&redis.url(), &[]);
    let mut n = node(&addr, 6).await;
    let mut api = open(&addr).await;
    for chunk in 0..10u64 {
        let clients: Vec<Value> = (0..10_000u64)
            .map(|i| {
                json!({
                    "client_id": format!("6-{}", 1_764_000_000_000_000 + chunk * 10_000 + i),
                    "uid": format!("user-{chunk}-{i}"),
                    "groups": [format!("room-{}", i % 100), "lobby"],
                    "session": {"name": format!("user {i}"), "since": i},
                })
            })
            .collect();
        dirsend(&mut n, json!({"op": "register", "clients": clients})).await;
    }
    count_is(&mut api, 100_000, Duration::from_secs(60)).await;
}

/// The same operations answered the same on Redis (and a Cluster) as by the embedded hub: a
/// sequence with the corner cases (registrations replaced, names and ids repeated, sessions
/// with nulls, overlapping groups with exclusions, unknown clients).
async fn answers_as_the_hub_does(kind: Kind) {
    let ops: Vec<Value> = vec![
        json!({"op": "register", "clients": [
            {"client_id": "1-1", "uid": "a", "groups": ["g", "h", "g"], "session": {"k": 1, "n": null}},
            {"client_id": "1-2", "uid": "a", "groups": ["g"]},
            {"client_id": "2-1", "uid": "b", "groups": ["h"], "session": {}},
            {"client_id": "2-2"},
            {"client_id": "2-2", "groups": ["x"]},
        ]}),
        json!({"op": "get_all_client_id_count"}),
        json!({"op": "get_all_uid_count"}),
        json!({"op": "get_all_group_id_list"}),
        json!({"op": "get_client_id_list_by_group", "group": "g"}),
        json!({"op": "get_client_id_list_by_group", "group": "x"}),
        json!({"op": "get_uid_list_by_group", "group": "h"}),
        json!({"op": "get_uid_count_by_group", "group": "g"}),
        json!({"op": "get_session", "client_id": "1-1"}),
        json!({"op": "get_session", "client_id": "2-1"}),
        json!({"op": "get_session", "client_id": "2-9"}),
        json!({"op": "bind_uid", "client_id": "2-2", "uid": "a"}),
        json!({"op": "bind_uid", "client_id": "2-2", "uid": "a"}),
        json!({"op": "get_client_id_by_uid", "uid": "a"}),
        json!({"op": "unbind_uid", "client_id": "2-2", "uid": "b"}),
        json!({"op": "bind_uid", "client_id": "1-1", "uid": "c"}),
        json!({"op": "get_uid_by_client_id", "client_id": "1-1"}),
        json!({"op": "get_all_uid_count"}),
        json!({"op": "send", "target": {"to": "uids", "uids": ["a", "c", "a", "zz"]}, "data": "m"}),
        json!({"op": "send", "target": {"to": "groups", "groups": ["g", "h", "x"], "exclude": ["2-1", "9-9"]}, "data": "m"}),
        json!({"op": "send", "target": {"to": "groups", "groups": ["g"], "exclude": ["1-2", "1-2"]}, "data": "m"}),
        json!({"op": "send", "target": {"to": "clients", "client_ids": ["1-1", "1-1", "2-2", "3-3"]}, "data": "m"}),
        json!({"op": "send", "target": {"to": "all", "exclude": ["1-1", "1-1", "4-4"]}, "data": "m"}),
        json!({"op": "send", "target": {"to": "all"}, "data": "m"}),
        json!({"op": "join_group", "client_id": "2-2", "group": "g"}),
        json!({"op": "join_group", "client_id": "2-2", "group": "g"}),
        json!({"op": "leave_group", "client_id": "2-2", "group": "h"}),
        json!({"op": "get_client_id_count_by_group", "group": "g"}),
        json!({"op": "set_session", "client_id": "1-2", "session": {"z": [1, {"y": 2.5}]}}),
        json!({"op": "update_session", "client_id": "1-2", "session": {"z": null, "w": "é"}}),
        json!({"op": "get_session", "client_id": "1-2"}),
        json!({"op": "set_session", "client_id": "1-2", "session": {}}),
        json!({"op": "get_session", "client_id": "1-2"}),
        json!({"op": "update_session", "client_id": "7-7", "session": {"a": 1}}),
        json!({"op": "register", "clients": [{"client_id": "1-1", "groups": ["h"]}]}),
        json!({"op": "get_uid_by_client_id", "client_id": "1-1"}),
        json!({"op": "is_uid_online", "uid": "c"}),
        json!({"op": "get_all_group_id_list"}),
        json!({"op": "ungroup", "group": "g"}),
        json!({"op": "ungroup", "group": "g"}),
        json!({"op": "get_all_group_id_list"}),
        json!({"op": "close_client", "client_id": "2-1", "data": "bye"}),
        json!({"op": "close_client", "client_id": "2-8"}),
        json!({"op": "is_online", "client_id": "2-1"}),
        json!({"op": "unregister", "client_ids": ["2-1", "2-1", "5-5", "1-2"]}),
        json!({"op": "get_all_client_id_count"}),
        json!({"op": "get_client_id_by_uid", "uid": "a"}),
        json!({"op": "get_uid_list_by_group", "group": "h"}),
        json!({"op": "unregister", "client_ids": ["1-1", "2-2"]}),
        json!({"op": "get_all_client_id_count"}),
        json!({"op": "get_all_uid_count"}),
        json!({"op": "get_all_group_id_list"}),
    ];
    let mut answers = Vec::new();
    for b in [Backend::start(Kind::Embedded), Backend::start(kind)] {
        let (_n_app, n_addr) = b.console();
        let (_api_app, api_addr) = b.console();
        let mut n = open(&n_addr).await;
        for e in ["werkmann.gw.1", "werkmann.gw.2", "werkmann.gw"] {
            assert_eq!(n.ask(&format!("on {e}")).await, "ok");
        }
        n.sync().await;
        let mut api = open(&api_addr).await;
        let mut got = Vec::new();
        for op in &ops {
            got.push((op.clone(), dir(&mut api, op).await));
        }
        answers.push(got);
    }
    for (hub, redis) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(hub, redis, "the hub's answer, then {kind:?}'s");
    }
}

#[tokio::test]
async fn answers_as_the_hub_does_redis() {
    answers_as_the_hub_does(Kind::Redis).await;
}

#[tokio::test]
async fn answers_as_the_hub_does_redis_cluster() {
    answers_as_the_hub_does(Kind::RedisCluster).await;
}
