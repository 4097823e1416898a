//! The channel on a real `redis-server`: the channel suite's scenarios with
//! `--channel redis://…`, Redis restarted mid-stream, and the push cluster with two WebSocket
//! nodes and two publishers and no channel server at all.

use std::collections::HashSet;
use std::time::Duration;

use werkmann_tests::{
    channel_console, free_port, open_console as open, App, Console, RedisCluster, RedisServer,
};

#[tokio::test]
async fn fan_out_names_ordering_loop_and_queues_on_redis() {
    let redis = RedisServer::start();
    scenarios(&redis.url()).await;
}

/// The same on a three-node Redis Cluster: sharded pub/sub, keys spread over the nodes.
#[tokio::test]
async fn fan_out_names_ordering_loop_and_queues_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    scenarios(&cluster.url()).await;
}

async fn scenarios(url: &str) {
    let (_a, a_addr) = channel_console(url, &[]);
    let (_b, b_addr) = channel_console(url, &[]);
    let mut subs = Vec::new();
    for addr in [&a_addr, &b_addr, &a_addr] {
        let mut c = open(addr).await;
        assert_eq!(c.ask("on Broadcast").await, "ok");
        assert_eq!(c.ask("on 1").await, "ok");
        subs.push(c);
    }
    let mut p = open(&b_addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(p.ask(r#"pub Broadcast {"content":"hi"}"#).await, "ok Sent");
    for s in &mut subs {
        assert_eq!(s.line().await, r#"event Broadcast {"content":"hi"}"#);
    }
    assert_eq!(p.ask(r#"pub 01 "no""#).await, "ok Sent");
    assert_eq!(p.ask(r#"pub 1 "yes""#).await, "ok Sent");
    for s in &mut subs {
        assert_eq!(s.line().await, r#"event 1 "yes""#);
    }
    assert_eq!(p.ask("seq Broadcast 300").await, "ok Sent");
    for s in &mut subs {
        for i in 0..300 {
            assert_eq!(s.line().await, format!(r#"event Broadcast {{"i":{i}}}"#));
        }
    }

    // publish_loop: one subscriber each time, in turn.
    for i in 0..30 {
        assert_eq!(p.ask(&format!("publoop Broadcast {i}")).await, "ok Sent");
    }
    let mut got = Vec::new();
    for s in &mut subs {
        for _ in 0..10 {
            got.push(s.line().await);
        }
        s.nothing_for(150).await;
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 30, "each loop event to exactly one subscriber");

    // Queues: items enqueued before anyone watches wait; every item exactly once.
    for i in 0..20 {
        assert_eq!(p.ask(&format!("enq jobs {i}")).await, "ok Sent");
    }
    let mut w1 = open(&a_addr).await;
    let mut w2 = open(&b_addr).await;
    assert_eq!(w1.ask("watch jobs").await, "ok");
    assert_eq!(w2.ask("watch jobs").await, "ok");
    for i in 20..40 {
        assert_eq!(p.ask(&format!("enq jobs {i}")).await, "ok Sent");
    }
    let mut items = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while items.len() < 40 && tokio::time::Instant::now() < deadline {
        for w in [&mut w1, &mut w2] {
            if let Ok(Ok(Some(l))) =
                tokio::time::timeout(Duration::from_millis(50), w.lines.next_line()).await
            {
                items.push(l);
            }
        }
    }
    let set: HashSet<&String> = items.iter().collect();
    assert_eq!(items.len(), 40, "every item: {items:?}");
    assert_eq!(set.len(), 40, "no duplicates");
    w1.nothing_for(300).await;
    w2.nothing_for(100).await;
}

#[tokio::test]
async fn redis_restarted_mid_stream() {
    let mut redis = RedisServer::start();
    let (_a, a_addr) = channel_console(&redis.url(), &[]);
    let mut sub = open(&a_addr).await;
    assert_eq!(sub.ask("on news").await, "ok");
    let mut p = open(&a_addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.ask("pub news 1").await, "ok Sent");
    assert_eq!(sub.line().await, "event news 1");

    redis.kill();
    // Both clients notice (the connection drops) and say so.
    assert_eq!(sub.line().await, "channel closed");
    assert_eq!(p.line().await, "channel closed");
    assert_eq!(p.ask("pub news 2").await, "ok Buffered");

    redis.restart();
    let (mut a, mut b) = (None, None);
    for _ in 0..2 {
        tokio::select! {
            l = sub.line(), if a.is_none() => a = Some(l),
            l = p.line(), if b.is_none() => b = Some(l),
        }
    }
    assert_eq!(a.as_deref(), Some("channel connected"));
    assert_eq!(b.as_deref(), Some("channel connected"));
    // Delivery resumes (the buffered event may have been published before the subscriber's
    // subscription was back: Redis keeps no events for absent subscribers).
    let mut seen = false;
    for i in 0..20 {
        assert_eq!(p.ask(&format!("pub news {}", 100 + i)).await, "ok Sent");
        if let Ok(Ok(Some(l))) =
            tokio::time::timeout(Duration::from_millis(300), sub.lines.next_line()).await
        {
            if l.starts_with("event news") {
                seen = true;
                break;
            }
        }
    }
    assert!(seen, "delivery resumed after Redis came back");
}

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
