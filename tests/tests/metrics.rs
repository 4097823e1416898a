//! The admin and metrics port (`--metrics IP:PORT`) on real processes: a real Prometheus
//! (Debian's `prometheus`) scraping a cluster and answering PromQL with the deliveries the
//! test made, `promtool check metrics` on every node's output, the counters on every backend
//! (embedded, channel server, Redis), the port's secret, refusals and close reasons, and the
//! admin page in headless Chromium (a screenshot in `target/test-output/metrics/`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use werkmann_tests::browser::Browser;
use werkmann_tests::prometheus::{promtool_check, sum, Prometheus};
use werkmann_tests::push::{self, next_text, push_ok, until_every_client_is_reached, Ws};
use werkmann_tests::{
    curl, curl_ok, free_addr, output_dir, wait_until, wait_until_async, App, RedisServer,
};

const T: Duration = Duration::from_secs(20);

/// `start_all` on fresh loopback ports with a metrics port, and `extra` options: the app and
/// its WebSocket, HTTP and metrics addresses.
fn start_all_with_metrics(extra: &[&str]) -> (App, [SocketAddr; 3]) {
    let addrs = [(); 3].map(|_| free_addr("127.0.0.1"));
    let [ws, http, metrics] = addrs.map(|a| a.to_string());
    let mut args = vec![
        "--ws-listen",
        &ws,
        "--http-listen",
        &http,
        "--metrics",
        &metrics,
    ];
    args.extend_from_slice(extra);
    (App::start_at("start_all", &args, &addrs), addrs)
}

/// The text of `GET /metrics` on `addr` (no secret).
fn scrape(addr: SocketAddr) -> String {
    String::from_utf8(curl_ok(&[&format!("http://{addr}/metrics")])).unwrap()
}

/// Deliveries counted by the WebSocket workers (`pusher`) of the nodes with these metrics
/// ports.
fn deliveries(metrics: &[SocketAddr]) -> f64 {
    metrics
        .iter()
        .map(|m| {
            sum(
                &scrape(*m),
                "werkmann_deliveries_total",
                &["worker=\"pusher\""],
            )
        })
        .sum()
}

/// `n` clients spread over `ws`, every one reached by a broadcast through `http`.
async fn clients(ws: &[SocketAddr], http: SocketAddr, n: usize) -> Vec<Ws> {
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(push::connect(ws[i % ws.len()]).await.0);
    }
    let mut refs: Vec<&mut Ws> = clients.iter_mut().collect();
    until_every_client_is_reached(http, &mut refs, "warm").await;
    clients
}

/// `m` broadcasts through `http`, each answered `ok` and read by every client in order.
async fn broadcasts(http: SocketAddr, clients: &mut [Ws], m: usize, tag: &str) {
    for k in 0..m {
        push_ok(http, &format!("/?content={tag}-{k}")).await;
    }
    for c in clients.iter_mut() {
        for k in 0..m {
            assert_eq!(next_text(c).await, format!("{tag}-{k}"));
        }
    }
}

/// A cluster — a channel server, two WebSocket nodes, a publisher, each with its metrics port
/// — scraped by a real Prometheus every second: PromQL answers exactly the deliveries the
/// test made, the connections open, the publishes and their channel round trips; every
/// node's output passes `promtool check metrics`.
#[tokio::test]
async fn prometheus_scrapes_a_cluster_and_counts_its_deliveries() {
    let ch = free_addr("127.0.1.1");
    let ws = [free_addr("127.0.1.2"), free_addr("127.0.1.3")];
    let http = free_addr("127.0.1.4");
    let m = [
        free_addr("127.0.1.1"),
        free_addr("127.0.1.2"),
        free_addr("127.0.1.3"),
        free_addr("127.0.1.4"),
    ];
    let s = |a: SocketAddr| a.to_string();
    let _channel = App::start_at(
        "start_channel",
        &["--listen", &s(ch), "--metrics", &s(m[0])],
        &[ch, m[0]],
    );
    let _nodes: Vec<App> = (0..2)
        .map(|i| {
            App::start_at(
                "start_ws",
                &[
                    "--listen",
                    &s(ws[i]),
                    "--count",
                    "2",
                    "--channel",
                    &s(ch),
                    "--metrics",
                    &s(m[i + 1]),
                ],
                &[ws[i], m[i + 1]],
            )
        })
        .collect();
    let _publisher = App::start_at(
        "start_http",
        &[
            "--listen",
            &s(http),
            "--channel",
            &s(ch),
            "--metrics",
            &s(m[3]),
        ],
        &[http, m[3]],
    );
    let prom = Prometheus::start(&m, None);

    let mut clients = clients(&ws, http, 6).await;
    let before = deliveries(&m[1..3]);
    let pushes_before = sum(
        &scrape(m[3]),
        "werkmann_publish_duration_seconds_count",
        &["api=\"push\""],
    );
    broadcasts(http, &mut clients, 20, "m").await;
    let want = before + 6.0 * 20.0;
    assert_eq!(
        deliveries(&m[1..3]),
        want,
        "each node counted its deliveries"
    );

    wait_until(T, "Prometheus has the deliveries", || {
        prom.query("sum(werkmann_deliveries_total{worker=\"pusher\"})") == Some(want)
    });
    assert_eq!(
        prom.query("sum(werkmann_connections{worker=\"pusher\"})"),
        Some(6.0),
        "the clients open"
    );
    wait_until(T, "Prometheus has the publishes", || {
        prom.query("sum(werkmann_publish_duration_seconds_count{api=\"push\"})")
            .is_some_and(|n| n >= pushes_before + 20.0)
    });
    let round_trips = prom
        .query("sum(werkmann_channel_round_trip_seconds_count{backend=\"channel\"})")
        .unwrap_or(0.0);
    assert!(round_trips >= 20.0, "channel round trips: {round_trips}");
    let p99 = prom
        .query("histogram_quantile(0.99, sum by (le) (werkmann_publish_duration_seconds_bucket))")
        .unwrap_or(f64::NAN);
    assert!(
        p99 > 0.0 && p99 <= 10.0,
        "publish p99 from the histogram: {p99}"
    );
    // The channel server's hub: four WebSocket instances and the publisher subscribed.
    wait_until(T, "Prometheus has the hub's subscribers", || {
        prom.query("werkmann_channel_subscribers")
            .is_some_and(|n| n >= 4.0)
    });
    wait_until(T, "every target up", || {
        let health = prom.targets_health();
        health.len() == 4 && health.iter().all(|h| h == "up")
    });

    for addr in m {
        let text = scrape(addr);
        let (ok, said) = promtool_check(&text);
        assert!(ok, "promtool check metrics on {addr}: {said}\n{text}");
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}

/// The same counters on every backend: deliveries exact, publishes counted, and the channel
/// round trips under the backend's own label.
#[tokio::test]
async fn deliveries_and_round_trips_are_counted_on_the_embedded_channel() {
    let (_app, [ws, http, metrics]) = start_all_with_metrics(&[]);
    counted(&[ws], http, &[metrics], metrics, "embedded").await;
}

#[tokio::test]
async fn deliveries_and_round_trips_are_counted_on_redis() {
    let redis = RedisServer::start();
    let ws = [free_addr("127.0.2.2"), free_addr("127.0.2.3")];
    let http = free_addr("127.0.2.4");
    let m = [
        free_addr("127.0.2.2"),
        free_addr("127.0.2.3"),
        free_addr("127.0.2.4"),
    ];
    let url = redis.url();
    let _nodes: Vec<App> = (0..2)
        .map(|i| {
            App::start_at(
                "start_ws",
                &[
                    "--listen",
                    &ws[i].to_string(),
                    "--channel",
                    &url,
                    "--metrics",
                    &m[i].to_string(),
                ],
                &[ws[i], m[i]],
            )
        })
        .collect();
    let _publisher = App::start_at(
        "start_http",
        &[
            "--listen",
            &http.to_string(),
            "--channel",
            &url,
            "--metrics",
            &m[2].to_string(),
        ],
        &[http, m[2]],
    );
    counted(&ws, http, &m[..2], m[2], "redis").await;

    // The directory lives in Redis: each node reads its sizes (`hub="redis"`).
    let (_c, w, c) = push::connect(ws[0]).await;
    let id = format!("{w}-{c}");
    for (method, body) in [
        (
            "bind_uid",
            format!(r#"{{"client_id":"{id}","uid":"alice"}}"#),
        ),
        (
            "join_group",
            format!(r#"{{"client_id":"{id}","group":"room"}}"#),
        ),
    ] {
        let head = format!(
            "POST /api/{method} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        // The node registers the client in Redis as it greets it: until then, 404.
        wait_until_async(T, format!("{method} answered"), async || {
            let (status, answer) = push::http(http, &head, &body).await;
            assert!(
                status == 200 || status == 404,
                "{method}: {status} {answer}"
            );
            status == 200
        })
        .await;
    }
    wait_until(T, "the directory's sizes on the nodes", || {
        let text = scrape(m[0]);
        sum(&text, "werkmann_directory_uids", &["hub=\"redis\""]) == 1.0
            && sum(&text, "werkmann_directory_groups", &["hub=\"redis\""]) == 1.0
            && sum(&text, "werkmann_directory_clients", &["hub=\"redis\""]) == 1.0
            && !text.contains("werkmann_channel_subscribers{hub=\"redis\"}")
    });

    // Sends to one uid: the first runs the script (and reads the holders), the next go to
    // the holders cached in the publisher's link.
    let body = r#"{"uid":"alice","message":"hi"}"#;
    let head = format!(
        "POST /api/send_to_uid HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for _ in 0..3 {
        let (status, answer) = push::http(http, &head, body).await;
        assert_eq!((status, answer.as_str()), (200, r#"{"reached":1}"#));
    }
    let text = scrape(m[2]);
    let via = |how: &str| {
        sum(
            &text,
            "werkmann_redis_uid_sends_total",
            &[&format!("via=\"{how}\"")],
        )
    };
    assert_eq!(
        (via("script"), via("cache"), via("again")),
        (1.0, 2.0, 0.0),
        "{text}"
    );
}

async fn counted(
    ws: &[SocketAddr],
    http: SocketAddr,
    node_metrics: &[SocketAddr],
    publisher_metrics: SocketAddr,
    backend: &str,
) {
    let mut clients = clients(ws, http, 4).await;
    let before = deliveries(node_metrics);
    let text = scrape(publisher_metrics);
    let label = format!("backend=\"{backend}\"");
    let trips = sum(
        &text,
        "werkmann_channel_round_trip_seconds_count",
        &[&label],
    );
    let pushes = sum(
        &text,
        "werkmann_publish_duration_seconds_count",
        &["api=\"push\""],
    );
    broadcasts(http, &mut clients, 10, "c").await;
    assert_eq!(deliveries(node_metrics), before + 40.0);
    let text = scrape(publisher_metrics);
    assert_eq!(
        sum(
            &text,
            "werkmann_publish_duration_seconds_count",
            &["api=\"push\""]
        ),
        pushes + 10.0,
        "{text}"
    );
    assert!(
        sum(
            &text,
            "werkmann_channel_round_trip_seconds_count",
            &[&label]
        ) >= trips + 10.0,
        "round trips under {label}: {text}"
    );
    assert!(
        sum(&text, "werkmann_broker_connected", &[&label]) >= 1.0,
        "the publisher's channel clients connected under {label}: {text}"
    );
    let open: f64 = node_metrics
        .iter()
        .map(|m| sum(&scrape(*m), "werkmann_connections", &["worker=\"pusher\""]))
        .sum();
    assert_eq!(open, 4.0);
    let (ok, said) = promtool_check(&text);
    assert!(ok, "{said}");
}

/// Off loopback the port needs a secret (the app refuses to start without one); with one,
/// a request without it gets 401 and a Basic challenge, with it (Bearer or Basic) 200. The
/// push API's `--secret` serves when `--metrics-secret` is not given.
#[tokio::test]
async fn the_metrics_port_asks_for_its_secret() {
    let (ws, http) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let out = std::process::Command::new(werkmann_tests::bin("start_all"))
        .args(["start", "--ws-listen", &ws.to_string(), "--http-listen"])
        .arg(http.to_string())
        .args(["--metrics", "0.0.0.0:0"])
        .env(
            "WERKMANN_RUN_DIR",
            werkmann_tests::temp_dir("metrics-refused"),
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started without a secret off loopback"
    );
    assert!(said.contains("need a secret"), "{said}");
    let out = std::process::Command::new(werkmann_tests::bin("start_all"))
        .args(["start", "--metrics", "nowhere"])
        .env("WERKMANN_RUN_DIR", werkmann_tests::temp_dir("metrics-bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("metrics address"),
        "{out:?}"
    );

    let (_app, [_, http, metrics]) = start_all_with_metrics(&["--secret", "push-secret"]);
    let url = format!("http://{metrics}/metrics");
    let out = curl(&["-i", &url]);
    let head = String::from_utf8_lossy(&out.stdout);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(head.contains("www-authenticate: Basic"), "{head}");
    let wrong = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Authorization: Bearer nope",
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&wrong.stdout), "401");
    let text = curl_ok(&["-H", "Authorization: Bearer push-secret", &url]);
    assert!(String::from_utf8_lossy(&text).contains("werkmann_connections"));
    let page = curl_ok(&[
        "-u",
        "admin:push-secret",
        &format!("http://{metrics}/admin"),
    ]);
    assert!(String::from_utf8_lossy(&page).contains("werkmann admin"));
    // Answered on its own port only: the push API knows nothing of /metrics.
    let (status, _) = push::get(http, "/metrics").await;
    assert_ne!(status, 200);
}

/// A raw WebSocket upgrade from `origin` to `addr`; the status line's code.
async fn upgrade_from(addr: SocketAddr, origin: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: {origin}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A client of `ws` whose upgrade carries `Origin: origin`, past its greeting.
async fn connect_from(ws: SocketAddr, origin: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{ws}").into_client_request().unwrap();
    req.headers_mut().insert("Origin", origin.parse().unwrap());
    let (mut c, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    next_text(&mut c).await;
    c
}

/// Refusals by reason (an Origin not on the list), close reasons (the peer, the idle timeout)
/// — in the metrics and in the admin summary's recent refusals.
#[tokio::test]
async fn refusals_and_closes_are_counted_by_reason() {
    let (_app, [ws, _, metrics]) =
        start_all_with_metrics(&["--origins", "http://good.example", "--idle-timeout", "2"]);
    assert_eq!(upgrade_from(ws, "http://evil.example").await, 403);
    assert_eq!(upgrade_from(ws, "http://good.example").await, 101);
    let refused = |text: &str, reason: &str| {
        sum(
            text,
            "werkmann_connections_refused_total",
            &["worker=\"pusher\"", &format!("reason=\"{reason}\"")],
        )
    };
    let text = scrape(metrics);
    assert_eq!(refused(&text, "origin"), 1.0, "{text}");
    assert_eq!(refused(&text, "max_connections"), 0.0);
    let summary: serde_json::Value =
        serde_json::from_slice(&curl_ok(&[&format!("http://{metrics}/admin/api/summary")]))
            .unwrap();
    let recent = &summary["refusals"][0];
    assert_eq!(recent["reason"], "origin", "{summary}");
    assert_eq!(recent["worker"], "pusher");
    assert!(recent["peer"].as_str().unwrap().starts_with("127.0.0.1:"));

    // A client that closes: `peer`; one that stays silent past --idle-timeout: `idle`.
    let closed = |reason: &str| {
        sum(
            &scrape(metrics),
            "werkmann_connections_closed_total",
            &["worker=\"pusher\"", &format!("reason=\"{reason}\"")],
        )
    };
    let peer_before = closed("peer");
    let mut c = connect_from(ws, "http://good.example").await;
    c.close(None).await.unwrap();
    wait_until(T, "a close by the peer counted", || {
        closed("peer") >= peer_before + 1.0
    });
    // Not read: the keep-alive ping goes unanswered, and the server closes it.
    let silent = connect_from(ws, "http://good.example").await;
    wait_until(T, "an idle close counted", || closed("idle") >= 1.0);
    drop(silent);
}

/// The admin page in headless Chromium: the node's connections, a throughput chart that
/// fills in, the instances, the hub's sizes and the recent refusals; screenshot kept.
#[tokio::test]
async fn the_admin_page_shows_the_node_in_a_real_browser() {
    let (_app, [ws, http, metrics]) = start_all_with_metrics(&["--origins", "http://good.example"]);
    assert_eq!(upgrade_from(ws, "http://evil.example").await, 403);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect_from(ws, "http://good.example").await);
    }
    let b = Browser::start().await;
    b.goto(&format!("http://{metrics}/admin")).await;
    b.wait_for(
        "return document.getElementById('connections').textContent === '3'",
        "three connections on the page",
    )
    .await;
    // Pushes while the page watches: the chart gets its samples, the deliveries count up.
    wait_until_async(T, "the chart has samples with deliveries", async || {
        push_ok(http, "/?content=tick").await;
        let v = b
            .js("return fetch('/admin/api/summary').then(r => r.json()).then(d => d.series.filter(s => s.deliveries > 0).length)")
            .await;
        v.as_u64().unwrap_or(0) >= 2
    })
    .await;
    b.wait_for(
        "return document.querySelectorAll('#instances tbody tr').length >= 4 && \
         document.querySelector('#refusals tbody').textContent.includes('origin') && \
         document.querySelector('#hubs tbody').textContent.includes('embedded') && \
         Number(document.getElementById('deliveries').textContent.replace(/,/g, '')) >= 6",
        "instances, refusals, the hub and the deliveries on the page",
    )
    .await;
    b.screenshot(&output_dir("metrics").join("admin-page.png"))
        .await;
    b.quit().await;
}

/// Workers as processes: the metrics port (served by one child) adds every child's figures —
/// the connections of each WebSocket instance, the deliveries to all of them — and the output
/// still passes `promtool check metrics`.
#[tokio::test]
async fn every_child_is_counted_with_processes() {
    let (_app, [ws, http, metrics]) = start_all_with_metrics(&["--count", "2", "--processes"]);
    let mut clients = clients(&[ws], http, 6).await;
    let instances = |text: &str| -> Vec<f64> {
        (0..2)
            .map(|i| {
                let inst = format!("instance=\"{i}\"");
                sum(text, "werkmann_connections", &["worker=\"pusher\"", &inst])
            })
            .collect()
    };
    wait_until(T, "every child's connections on the metrics port", || {
        let text = scrape(metrics);
        let per = instances(&text);
        per.iter().sum::<f64>() == 6.0 && per.iter().all(|&n| n > 0.0)
    });
    let before = deliveries(&[metrics]);
    broadcasts(http, &mut clients, 5, "m").await;
    wait_until(T, "every child's deliveries on the metrics port", || {
        deliveries(&[metrics]) >= before + 30.0
    });
    let text = scrape(metrics);
    let (ok, said) = promtool_check(&text);
    assert!(ok, "promtool check metrics: {said}\n{text}");
    assert_eq!(
        text.matches("# TYPE werkmann_connections gauge").count(),
        1,
        "{text}"
    );
    // The admin page's totals: every child's too.
    wait_until(T, "every child's connections on the admin page", || {
        let body = curl_ok(&[&format!("http://{metrics}/admin/api/summary")]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let t = &v["totals"];
        let per: Vec<i64> = (0..2)
            .map(|i| {
                t["instances"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|f| f["worker"] == "pusher" && f["instance"] == i)
                    .filter_map(|f| f["connections"].as_i64())
                    .sum()
            })
            .collect();
        t["connections"]["pusher"] == 6 && per.iter().all(|&n| n > 0)
    });
}
