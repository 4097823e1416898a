//! The channel on a real `redis-server`, what is Redis's own (what every backend does alike is
//! in `conformance.rs`): passwords, TLS, and the push cluster with two WebSocket nodes and two
//! publishers and no channel server at all.

use std::collections::HashSet;
use std::time::Duration;

use werkmann_tests::{
    channel_console, free_port, open_console as open, App, Console, RedisCluster, RedisServer,
};

#[tokio::test]
async fn a_password_in_the_url_authenticates_and_a_wrong_one_is_reported() {
    let redis = RedisServer::start_with_password(Some("s3cret"));
    let (_a, a_addr) = channel_console(&redis.url(), &[]);
    let mut sub = open(&a_addr).await;
    assert_eq!(sub.ask("on news").await, "ok");
    let mut p = open(&a_addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    let mut p = open(&a_addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.ask(r#"pub secure "über TLS""#).await, "ok Sent");
    assert_eq!(sub.line().await, r#"event secure "über TLS""#);
}

/// Worker ids on Redis are leases; on a cluster each lease key lives on its own node.
#[tokio::test]
async fn nodes_claim_distinct_worker_ids_on_a_redis_cluster() {
    use futures_util::StreamExt;
    let cluster = RedisCluster::start(3);
    let url = cluster.url();
    let mut seen = HashSet::new();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        nodes.push(App::start(
            "start_ws",
            &["--listen", &listen, "--channel", &url],
            &[port],
        ));
        for _ in 0..2 {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{listen}"))
                .await
                .unwrap();
            let hello = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let hello = hello.into_text().unwrap().to_string();
            let id: u32 = hello
                .strip_prefix("Worker-ID:")
                .and_then(|r| r.split(' ').next())
                .unwrap()
                .parse()
                .unwrap();
            seen.insert(id);
        }
    }
    assert_eq!(seen, HashSet::from([0, 1, 2, 3]));
}
