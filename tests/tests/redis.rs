//! The channel on a real `redis-server`, what is Redis's own (what every backend does alike is
//! in `conformance.rs`): passwords, TLS, and the push cluster with two WebSocket nodes and two
//! publishers and no channel server at all.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use werkmann_tests::{
    channel_console, free_addr, open_console as open, poll_every, process_alive, push, App,
    Console, RedisCluster, RedisServer,
};

#[tokio::test]
async fn a_password_in_the_url_authenticates_and_a_wrong_one_is_reported() {
    let redis = RedisServer::start_with_password(Some("s3cret"));
    let (_a, a_addr) = channel_console(&redis.url(), &[]);
    let mut sub = open(&a_addr).await;
    assert_eq!(sub.ask("on news").await, "ok");
    sub.sync().await;
    let mut p = open(&a_addr).await;
    assert_eq!(p.ask("pub news 1").await, "ok Sent");
    assert_eq!(sub.line().await, "event news 1");

    // A wrong password never connects: publishes are buffered (bounded), not claimed as sent.
    let wrong = format!("redis://:nope@127.0.0.1:{}", redis.port);
    let (bad, bad_addr) = channel_console(&wrong, &[]);
    let mut c = Console::connect(&bad_addr).await;
    c.nothing_for(500).await; // no "channel connected"
    assert_eq!(c.ask("pub news 2").await, "ok Buffered");
    let log = bad.log();
    assert!(log.contains("WRONGPASS"), "the failure is logged: {log}");
    assert!(!log.contains("nope"), "without the password: {log}");
}

#[tokio::test]
async fn rediss_speaks_tls_and_checks_the_certificate() {
    let redis = RedisServer::start_tls();
    // The apps trust the test CA through WERKMANN_REDIS_CA (set before they start).
    std::env::set_var("WERKMANN_REDIS_CA", redis.ca_file());
    let (_a, a_addr) = channel_console(&redis.url(), &[]);
    let mut sub = open(&a_addr).await;
    assert_eq!(sub.ask("on secure").await, "ok");
    sub.sync().await;
    let mut p = open(&a_addr).await;
    assert_eq!(p.ask(r#"pub secure "über TLS""#).await, "ok Sent");
    assert_eq!(sub.line().await, r#"event secure "über TLS""#);
}

/// The worker ids the push node listening on `listen` greets two clients with (its two
/// instances', as connections go round-robin).
async fn greeted_worker_ids(listen: SocketAddr) -> HashSet<u32> {
    let mut ids = HashSet::new();
    for _ in 0..2 {
        ids.insert(push::connect(listen).await.1);
    }
    ids
}

/// Worker ids on Redis are leases; on a cluster each lease key lives on its own node.
#[tokio::test]
async fn nodes_claim_distinct_worker_ids_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let url = cluster.url();
    let mut seen = HashSet::new();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let listen = free_addr("127.0.0.1");
        nodes.push(App::start_at(
            "start_ws",
            &["--listen", &listen.to_string(), "--channel", &url],
            &[listen],
        ));
        seen.extend(greeted_worker_ids(listen).await);
    }
    assert_eq!(seen, HashSet::from([0, 1, 2, 3]));
}

/// Issue 14 item 6: a node started with `start -d` keeps renewing its worker-id leases
/// (`werkmann:worker_id:{id}`, 30 s, renewed every few seconds), so a node started after the
/// first lease would have run out gets other ids.
#[tokio::test]
async fn a_daemon_node_keeps_renewing_its_worker_id_leases() {
    let redis = RedisServer::start();
    let url = redis.url();
    // A node with two instances, started by `start` (`App::start_at`, `App::start_daemon`).
    let node = |start: fn(&str, &[&str], &[SocketAddr]) -> App| {
        let listen = free_addr("127.0.0.1");
        let args = [
            "--listen",
            &listen.to_string(),
            "--count",
            "2",
            "--channel",
            &url,
        ];
        (start("start_ws", &args, &[listen]), listen)
    };
    let (node_a, a) = node(App::start_daemon);
    let ids_a = greeted_worker_ids(a).await;
    assert_eq!(ids_a.len(), 2, "two instances: {ids_a:?}");
    let pttl = |id: u32| -> i64 {
        let out = redis.cli(&["PTTL", &format!("werkmann:worker_id:{id}")]);
        out.parse()
            .unwrap_or_else(|_| panic!("PTTL of worker id {id}: {out:?}"))
    };
    // When the leases taken at the start run out unless they are renewed.
    let first_expiry = ids_a
        .iter()
        .map(|&id| {
            let left = pttl(id);
            assert!(
                left > 0,
                "node A holds a lease on worker id {id}: PTTL {left}"
            );
            Instant::now() + Duration::from_millis(left as u64)
        })
        .max()
        .unwrap();

    // A renewal shows as a PTTL higher than the reading before it (it only falls otherwise).
    // Polled for 25 s: less than the 30 s lease, more than twice the renewal period.
    let mut last: HashMap<u32, i64> = ids_a.iter().map(|&id| (id, pttl(id))).collect();
    let mut renewed = HashSet::new();
    poll_every(Duration::from_millis(250), Duration::from_secs(25), || {
        for (&id, before) in last.iter_mut() {
            let now = pttl(id);
            if now > *before {
                renewed.insert(id);
            }
            *before = now;
        }
        renewed.len() == ids_a.len()
    });
    let daemon = node_a.daemon_pid().expect("node A's pid file");
    assert!(process_alive(daemon), "node A's daemon still runs");

    // Past the first lease (the scenario itself: a node joining after 30 s), a second node
    // claims ids.
    let past = first_expiry + Duration::from_secs(1);
    std::thread::sleep(past.saturating_duration_since(Instant::now()));
    let (_node_b, b) = node(App::start_at);
    let ids_b = greeted_worker_ids(b).await;
    let leases: Vec<(u32, i64)> = ids_a.iter().map(|&id| (id, pttl(id))).collect();
    assert!(
        renewed.len() == ids_a.len(),
        "node A (a daemon) renewed its leases on {ids_a:?} within 25 s: only {renewed:?}; \
         after 30 s the leases' PTTLs are {leases:?} and node B has ids {ids_b:?}"
    );
    assert!(
        ids_a.is_disjoint(&ids_b),
        "a node started 30 s later got ids other than the daemon's {ids_a:?}: {ids_b:?}"
    );
}
