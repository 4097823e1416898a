//! The push cluster end to end, each part its own process on its own loopback address as if on
//! its own machine: a channel server (127.0.1.1), two WebSocket nodes with two instances each
//! (127.0.1.2, .3) and two HTTP publishers (127.0.1.4, .5).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use werkmann_tests::push::{
    get, http, next_text, nothing_else, push_ok, until_every_client_is_reached, Ws,
};
use werkmann_tests::{free_addr, push, start_all_at, App, RedisServer};

const T: Duration = Duration::from_secs(10);

struct Client {
    ws: Ws,
    worker: u32,
    conn: u64,
}

async fn connect(addr: SocketAddr) -> Client {
    let (ws, worker, conn) = push::connect(addr).await;
    Client { ws, worker, conn }
}

/// POST a body to a publisher; returns (status, body).
async fn post(addr: SocketAddr, ctype: &str, body: &str) -> (u16, String) {
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
        body.len()
    );
    http(addr, &head, body).await
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The event bus of a cluster: a channel server process, or a Redis server.
enum Bus {
    Server(Option<App>, SocketAddr),
    Redis(RedisServer),
}

impl Bus {
    fn server() -> Bus {
        let ch = free_addr("127.0.1.1");
        let app = App::start_at("start_channel", &["--listen", &ch.to_string()], &[ch]);
        Bus::Server(Some(app), ch)
    }

    fn url(&self) -> String {
        match self {
            Bus::Server(_, a) => a.to_string(),
            Bus::Redis(r) => r.url(),
        }
    }

    fn kill(&mut self) {
        match self {
            Bus::Server(app, _) => drop(app.take()),
            Bus::Redis(r) => r.kill(),
        }
    }

    fn restart(&mut self) {
        match self {
            Bus::Server(app, a) => {
                *app = Some(App::start_at(
                    "start_channel",
                    &["--listen", &a.to_string()],
                    &[*a],
                ));
            }
            Bus::Redis(r) => r.restart(),
        }
    }
}

#[tokio::test]
async fn seed_topology_across_processes() {
    seed_topology(Bus::server()).await;
}

#[tokio::test]
async fn seed_topology_on_redis_without_a_channel_server() {
    seed_topology(Bus::Redis(RedisServer::start())).await;
}

async fn seed_topology(mut bus: Bus) {
    let ws = [free_addr("127.0.1.2"), free_addr("127.0.1.3")];
    let http = [free_addr("127.0.1.4"), free_addr("127.0.1.5")];
    let ch_s = bus.url();
    let mut nodes = Vec::new();
    for a in ws {
        let a_s = a.to_string();
        nodes.push(App::start_at(
            "start_ws",
            &["--listen", &a_s, "--count", "2", "--channel", &ch_s],
            &[a],
        ));
    }
    let mut pubs = Vec::new();
    for a in http {
        let a_s = a.to_string();
        pubs.push(App::start_at(
            "start_http",
            &["--listen", &a_s, "--channel", &ch_s],
            &[a],
        ));
    }

    // Eight clients, two per instance; every greeting names its worker and connection.
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(connect(ws[i % 2]).await);
    }
    let workers: HashSet<u32> = clients.iter().map(|c| c.worker).collect();
    assert_eq!(
        workers.len(),
        4,
        "four instances, four distinct worker ids: {workers:?}"
    );
    let node_ids: Vec<HashSet<u32>> = (0..2)
        .map(|n| {
            clients
                .iter()
                .skip(n)
                .step_by(2)
                .map(|c| c.worker)
                .collect()
        })
        .collect();
    assert!(
        node_ids[0].is_disjoint(&node_ids[1]),
        "nodes hold different ids: {node_ids:?}"
    );
    let pairs: HashSet<(u32, u64)> = clients.iter().map(|c| (c.worker, c.conn)).collect();
    assert_eq!(pairs.len(), 8, "(worker, connection) names one client");
    let mut per_worker: HashMap<u32, usize> = HashMap::new();
    for c in &clients {
        *per_worker.entry(c.worker).or_default() += 1;
    }
    assert!(per_worker.values().all(|&n| n == 2), "{per_worker:?}");
    let mut all: Vec<&mut Ws> = clients.iter_mut().map(|c| &mut c.ws).collect();
    for p in http {
        until_every_client_is_reached(p, &mut all, "warm").await;
    }

    // Broadcast through either publisher: everyone, exactly once.
    for (i, p) in http.iter().enumerate() {
        push_ok(*p, &format!("/?content=hallo-{i}")).await;
        for c in &mut clients {
            assert_eq!(next_text(&mut c.ws).await, format!("hallo-{i}"));
        }
    }

    // Target each client through alternating publishers: only that one receives.
    for i in 0..clients.len() {
        let (w, conn) = (clients[i].worker, clients[i].conn);
        let content = format!("für {w}/{conn}");
        push_ok(
            http[i % 2],
            &format!(
                "/?to_worker_id={w}&to_connection_id={conn}&content={}",
                enc(&content)
            ),
        )
        .await;
        assert_eq!(next_text(&mut clients[i].ws).await, content);
    }
    let mut all: Vec<&mut Ws> = clients.iter_mut().map(|c| &mut c.ws).collect();
    nothing_else(http[0], &mut all, "ende").await;

    // Bad pushes get a 400, and the seed's parameters in a POST form work too.
    let (status, _) = get(http[0], "/?content=").await;
    assert_eq!(status, 400);
    let (status, _) = get(http[0], "/?to_worker_id=x&to_connection_id=1&content=a").await;
    assert_eq!(status, 400);

    // The channel restarts: the nodes reconnect and delivery resumes.
    bus.kill();
    // The publisher refuses a push while the channel is down (it notices at once with a
    // channel server, with its next command on Redis): never `ok`, which would be a lie.
    let (status, body) = get(http[1], "/?content=lost").await;
    assert_eq!(status, 503, "{body}");
    bus.restart();
    // Publishers and nodes reconnect independently; delivery resumes to everyone.
    let mut all: Vec<&mut Ws> = clients.iter_mut().map(|c| &mut c.ws).collect();
    for p in http {
        until_every_client_is_reached(p, &mut all, "back").await;
    }

    // Stop one WebSocket node: its clients are closed, the others go on.
    let out = nodes[1].command(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The channel confirms the broadcast reached the 2 instances left; the publisher answers
    // 503 for it while it remembers 4 (15 s), `ok` after.
    let (status, body) = get(http[1], "/?content=after-stop").await;
    assert!(
        status == 200 || body.starts_with("push reached 2 of the 4 "),
        "the other node's instances are reached: {status} {body}"
    );
    for (i, c) in clients.iter_mut().enumerate() {
        if i % 2 == 0 {
            assert_eq!(next_text(&mut c.ws).await, "after-stop");
        } else {
            let end = tokio::time::timeout(T, async {
                loop {
                    match c.ws.next().await {
                        Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => {}
                    }
                }
            })
            .await;
            assert!(end.is_ok(), "clients of the stopped node are closed");
        }
    }
}

#[tokio::test]
async fn a_second_node_with_the_same_options_gets_the_next_ids_and_pinned_clashes_fail() {
    let ch = free_addr("127.0.1.1");
    let ch_s = ch.to_string();
    let _channel = App::start_at("start_channel", &["--listen", &ch_s], &[ch]);
    let a = free_addr("127.0.1.2");
    let a_s = a.to_string();
    let _n1 = App::start_at("start_ws", &["--listen", &a_s, "--channel", &ch_s], &[a]);
    let b = free_addr("127.0.1.3");
    let b_s = b.to_string();
    let _n2 = App::start_at("start_ws", &["--listen", &b_s, "--channel", &ch_s], &[b]);
    let mut seen = HashSet::new();
    for addr in [a, a, b, b] {
        seen.insert(connect(addr).await.worker);
    }
    assert_eq!(seen, HashSet::from([0, 1, 2, 3]));

    // Pinning ids another node holds is refused at start-up with a clear error.
    let c = free_addr("127.0.1.6");
    let run_dir = werkmann_tests::temp_dir("pinned");
    let out = std::process::Command::new(werkmann_tests::bin("start_ws"))
        .args([
            "start",
            "--listen",
            &c.to_string(),
            "--channel",
            &ch_s,
            "--worker-ids",
            "1,7",
        ])
        .env("WERKMANN_RUN_DIR", &run_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already held"), "{err}");
}

#[tokio::test]
async fn all_in_one_takes_pushes_as_query_form_or_json() {
    let ws = free_addr("127.0.0.1");
    let web = free_addr("127.0.0.1");
    let _app = start_all_at(ws, web, &[]);
    let mut a = connect(ws).await;
    let mut b = connect(ws).await;
    assert_ne!(a.worker, b.worker, "two instances");
    until_every_client_is_reached(web, &mut [&mut a.ws, &mut b.ws], "warm").await;

    let (status, body) = post(
        web,
        "application/x-www-form-urlencoded",
        "content=per+Formular",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(next_text(&mut a.ws).await, "per Formular");
    assert_eq!(next_text(&mut b.ws).await, "per Formular");

    let json = format!(
        r#"{{"to_worker_id":{},"to_connection_id":"{}","content":"per JSON"}}"#,
        b.worker, b.conn
    );
    let (status, body) = post(web, "application/json", &json).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(next_text(&mut b.ws).await, "per JSON");

    // Only one of the two target ids: a clear 400, nothing published.
    let (status, body) = post(
        web,
        "application/json",
        r#"{"to_worker_id":0,"content":"x"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // The in-process channel confirms too: a worker id no instance holds is a 404, not `ok`.
    let (status, body) = get(web, "/?to_worker_id=77&to_connection_id=1&content=x").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("worker 77"), "{body}");
    // Neither the targeted push reached `a`, nor the refused ones anyone.
    nothing_else(web, &mut [&mut a.ws, &mut b.ws], "ende").await;
}
