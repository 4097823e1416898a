//! The Pusher protocol (issue 17) with the real libraries, across real processes on loopback:
//! pusher-js (the browser library's Node build) as two clients on two different nodes and the
//! `pusher` server SDK as the publisher (`tests/js/pusher_roundtrip.js`, installed by
//! `scripts/test` with npm), on every backend: embedded (`start_all`), a channel server, Redis.
//! Public and private channels, socket-id exclusion, several channels and batches, client
//! events (not echoed), a forged signature, unsubscribing, a wrongly signed API request (401)
//! and an unknown key (4001). Without an app, the Pusher endpoints answer 404.

use std::path::PathBuf;
use std::process::Command;

use werkmann_tests::{curl, free_port, temp_dir, workspace, App, RedisServer};

const APP: (&str, &str, &str) = ("app1", "key1", "secret1");

/// An apps file with client events on.
fn apps_file() -> PathBuf {
    let f = temp_dir("pusher_apps").join("apps.json");
    let (id, key, secret) = APP;
    std::fs::write(
        &f,
        format!(
            r#"{{"apps":[{{"id":"{id}","key":"{key}","secret":"{secret}","client_events":true}}]}}"#
        ),
    )
    .unwrap();
    f
}

/// Run the round trip against nodes `ws` (one or two ports) and publisher `http`.
fn round_trip(ws: &[u16], http: u16) {
    let ports: Vec<String> = ws.iter().map(u16::to_string).collect();
    let (id, key, secret) = APP;
    let out = Command::new("node")
        .arg(workspace().join("tests/js/pusher_roundtrip.js"))
        .args([&ports.join(","), &http.to_string(), id, key, secret])
        .output()
        .expect("node runs (scripts/test installs it and the libraries)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.lines().last() == Some("done"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "ok connected",
        "ok subscribed",
        "ok trigger",
        "ok socket_id excluded",
        "ok channels and batch",
        "ok client event",
        "ok forged signature refused",
        "ok unsubscribed",
        "ok bad signature 401",
        "ok unknown key 4001",
    ] {
        assert!(text.contains(check), "{check} missing:\n{text}");
    }
}

#[test]
fn pusher_clients_embedded() {
    let (ws, http) = (free_port(), free_port());
    let apps = apps_file();
    let _app = App::start(
        "start_all",
        &[
            "--ws-listen",
            &format!("127.0.0.1:{ws}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
            "--apps-file",
            apps.to_str().unwrap(),
        ],
        &[ws, http],
    );
    round_trip(&[ws], http);
}

/// Two WebSocket nodes and a publisher on `channel`.
fn cluster(channel: &str) -> (Vec<App>, [u16; 2], u16) {
    let apps = apps_file();
    let apps = apps.to_str().unwrap();
    let (a, b, http) = (free_port(), free_port(), free_port());
    let node = |port: u16| {
        App::start(
            "start_ws",
            &[
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--channel",
                channel,
                "--apps-file",
                apps,
            ],
            &[port],
        )
    };
    let publisher = App::start(
        "start_http",
        &[
            "--listen",
            &format!("127.0.0.1:{http}"),
            "--channel",
            channel,
            "--apps-file",
            apps,
        ],
        &[http],
    );
    (vec![node(a), node(b), publisher], [a, b], http)
}

#[test]
fn pusher_clients_across_nodes_of_a_channel_server() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _channel = App::start("start_channel", &["--listen", &addr], &[port]);
    let (_apps, ws, http) = cluster(&addr);
    round_trip(&ws, http);
}

#[test]
fn pusher_clients_across_nodes_on_redis() {
    let redis = RedisServer::start();
    let (_apps, ws, http) = cluster(&redis.url());
    round_trip(&ws, http);
}

#[test]
fn without_an_app_the_pusher_endpoints_answer_404() {
    let (ws, http) = (free_port(), free_port());
    let _app = App::start(
        "start_all",
        &[
            "--ws-listen",
            &format!("127.0.0.1:{ws}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
        ],
        &[ws, http],
    );
    let out = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        &format!("http://127.0.0.1:{ws}/app/key1"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    let out = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-d",
        "{}",
        &format!("http://127.0.0.1:{http}/apps/app1/events"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}
