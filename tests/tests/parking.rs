//! Parking (`channel::parking`): a WebSocket instance without connections parks its broadcast
//! subscription; broadcasts still count it ("ok" unchanged), delivery reports still hear from
//! it, and its next client is held until the subscription is unparked, so that it misses
//! nothing published after its greeting. On every backend; Redis does not park, and the same
//! answers hold there.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use werkmann_tests::push::{connect, get, next_text};
use werkmann_tests::{curl_ok, free_addr, start_all_at, wait_until, App, RedisServer, WAIT};

/// Send `app`'s process a signal (`-STOP`, `-CONT`).
fn signal(app: &App, sig: &str) {
    let pid = app.child.id().to_string();
    let st = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(st.success());
}

/// The hub's parked subscriptions, from its metrics port.
fn parked_gauge(metrics: SocketAddr) -> f64 {
    let text = String::from_utf8(curl_ok(&[&format!("http://{metrics}/metrics")])).unwrap();
    text.lines()
        .filter(|l| l.starts_with("werkmann_channel_parked_subscriptions{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The WebSocket instances parked so far on `app` (its log's lines).
fn parked(app: &App) -> usize {
    app.log().matches("subscription parked").count()
}

struct Cluster {
    /// The publisher.
    web: SocketAddr,
    /// The WebSocket nodes (one instance each) and the apps serving them.
    ws: Vec<(SocketAddr, usize)>,
    apps: Vec<App>,
    /// The channel server's app (index in `apps`), if there is one.
    server: Option<usize>,
    /// Whether this backend parks (not Redis).
    parks: bool,
    /// The hub's metrics port (embedded, channel server).
    metrics: Option<SocketAddr>,
    _redis: Option<RedisServer>,
}

impl Cluster {
    fn embedded() -> Cluster {
        let (ws, web) = (free_addr("127.0.6.1"), free_addr("127.0.6.2"));
        let m = free_addr("127.0.6.7");
        let app = start_all_at(ws, web, &["--count", "1", "--metrics", &m.to_string()]);
        Cluster {
            web,
            ws: vec![(ws, 0)],
            apps: vec![app],
            server: None,
            parks: true,
            metrics: Some(m),
            _redis: None,
        }
    }

    fn server() -> Cluster {
        let (ch, m) = (free_addr("127.0.6.3"), free_addr("127.0.6.8"));
        let args = ["--listen", &ch.to_string(), "--metrics", &m.to_string()];
        let app = App::start_at("start_channel", &args, &[ch, m]);
        let mut c = Cluster::on(&ch.to_string(), vec![app], true);
        c.server = Some(0);
        c.metrics = Some(m);
        c
    }

    fn redis() -> Cluster {
        let redis = RedisServer::start();
        let mut c = Cluster::on(&redis.url(), Vec::new(), false);
        c._redis = Some(redis);
        c
    }

    fn on(channel: &str, mut apps: Vec<App>, parks: bool) -> Cluster {
        let mut ws = Vec::new();
        for ip in ["127.0.6.4", "127.0.6.5"] {
            let a = free_addr(ip);
            let args = [
                "--listen",
                &a.to_string(),
                "--count",
                "1",
                "--channel",
                channel,
            ];
            apps.push(App::start_at("start_ws", &args, &[a]));
            ws.push((a, apps.len() - 1));
        }
        let web = free_addr("127.0.6.6");
        let args = ["--listen", &web.to_string(), "--channel", channel];
        apps.push(App::start_at("start_http", &args, &[web]));
        Cluster {
            web,
            ws,
            apps,
            server: None,
            parks,
            metrics: None,
            _redis: None,
        }
    }

    /// Wait until the hub's metrics say `n` subscriptions are parked (where it has them).
    fn parked_now(&self, n: usize) {
        if let Some(m) = self.metrics {
            wait_until(WAIT, format!("{n} parked in the hub's metrics"), || {
                parked_gauge(m) == n as f64
            });
        }
    }

    /// Wait until every node's instance has parked `times` times in all (parking backends).
    fn all_parked(&self, times: usize) {
        if !self.parks {
            return;
        }
        for &(addr, app) in &self.ws {
            wait_until(WAIT, format!("{addr} parks ({times})"), || {
                parked(&self.apps[app]) >= times
            });
        }
    }

    /// A broadcast with a delivery report: the report.
    async fn reported(&self, content: &str) -> Value {
        let (status, body) = get(self.web, &format!("/?content={content}&report=1")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

async fn idle_instances_park(c: Cluster) {
    let nodes = c.ws.len();
    c.all_parked(1);
    c.parked_now(nodes);
    // Parked instances are reached: the broadcast is answered ok, not "no node subscribed".
    let (status, body) = get(c.web, "/?content=nobody").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    // A report hears from each instance, parked ones too (a waking publish).
    let r = c.reported("r0").await;
    assert_eq!(r["instances"], nodes, "{r}");
    assert_eq!(r["reported"], nodes, "{r}");
    assert_eq!(r["reached"], 0, "{r}");

    let (first, first_app) = c.ws[0];
    let mut client = match c.server {
        Some(server) => {
            // The channel server stopped: the new client is held (not answered) until the
            // subscription is unparked.
            let signal = |s| signal(&c.apps[server], s);
            signal("-STOP");
            let mut pending = tokio::spawn(connect(first));
            // Held for a second (it would be served anyway after 2 s without an answer).
            let early = tokio::time::timeout(Duration::from_millis(1000), &mut pending).await;
            signal("-CONT");
            assert!(
                early.is_err(),
                "greeted before the subscription was unparked"
            );
            let client = pending.await.unwrap().0;
            // Released by the hub's answer, not by the 2 s fallback.
            let log = c.apps[first_app].log();
            assert!(!log.contains("not unparked"), "{log}");
            client
        }
        None => connect(first).await.0,
    };
    // The hub's metrics: one subscription fewer parked.
    c.parked_now(nodes - 1);
    // Published after the greeting: delivered.
    let (status, body) = get(c.web, "/?content=after").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(next_text(&mut client).await, "after");
    // One instance live, the others parked: every one reports, one client reached.
    let r = c.reported("r1").await;
    assert_eq!(r["instances"], nodes, "{r}");
    assert_eq!(r["reported"], nodes, "{r}");
    assert_eq!(r["reached"], 1, "{r}");
    assert_eq!(next_text(&mut client).await, "r1");

    // The client leaves: its instance parks again, and a new client still gets what follows.
    drop(client);
    if c.parks {
        wait_until(WAIT, "the instance parks again", || {
            parked(&c.apps[first_app]) >= 2
        });
    }
    let mut again = connect(first).await.0;
    let (status, _) = get(c.web, "/?content=again").await;
    assert_eq!(status, 200);
    assert_eq!(next_text(&mut again).await, "again");
    if !c.parks {
        for &(_, app) in &c.ws {
            assert_eq!(parked(&c.apps[app]), 0, "Redis parks nothing");
        }
    }
}

/// A graceful stop serves the connections held for an unpark (here: never answered, the
/// channel server stopped) and waits for them as for the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_serves_held_connections() {
    let c = Cluster::server();
    c.all_parked(1);
    let signal = |s| signal(&c.apps[c.server.unwrap()], s);
    signal("-STOP");
    let (first, first_app) = c.ws[0];
    let pending = tokio::spawn(connect(first));
    wait_until(WAIT, "the connection is held", || {
        c.apps[first_app].log().contains("holding new ones")
    });
    let node = &c.apps[first_app];
    let (bin, args, dir) = (node.bin.clone(), node.args.clone(), node.run_dir.clone());
    let stop = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["stop", "-g"])
            .args(args)
            .env("WERKMANN_RUN_DIR", dir)
            .output()
            .unwrap()
    });
    // Served (greeted) although the hub never answered; the stop waits for it to close.
    let (mut client, _, _) = pending.await.unwrap();
    assert!(
        !stop.is_finished(),
        "the stop waits for the served connection"
    );
    client.close(None).await.unwrap();
    let out = stop.await.unwrap();
    assert!(out.status.success(), "{out:?}");
    signal("-CONT");
}

#[tokio::test]
async fn idle_instances_park_embedded() {
    idle_instances_park(Cluster::embedded()).await;
}

#[tokio::test]
async fn idle_instances_park_through_a_channel_server() {
    idle_instances_park(Cluster::server()).await;
}

#[tokio::test]
async fn idle_instances_stay_subscribed_on_redis() {
    idle_instances_park(Cluster::redis()).await;
}
