//! The Pusher protocol (issue 17) with the real libraries, across real processes on loopback:
//! pusher-js (the browser library's Node build) as two clients on two different nodes and the
//! `pusher` server SDK as the publisher (`tests/js/pusher_roundtrip.js`, installed by
//! `scripts/test` with npm), on every backend: embedded (`start_all`), a channel server, Redis.
//! Public and private channels, socket-id exclusion, several channels and batches, client
//! events (not echoed), a forged signature, unsubscribing, a wrongly signed API request (401)
//! and an unknown key (4001). Without an app, the Pusher endpoints answer 404.

use std::path::PathBuf;
use std::process::Command;

use werkmann_tests::{curl_status, free_port, start_all_at, temp_dir, workspace, App, RedisServer};

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

/// `start_all` with the test app: (the process, WebSocket port, HTTP port).
fn start_all_with_apps() -> (App, u16, u16) {
    let (ws, http) = (free_port(), free_port());
    let apps = apps_file();
    let app = start_all_at(
        ([127, 0, 0, 1], ws).into(),
        ([127, 0, 0, 1], http).into(),
        &["--apps-file", apps.to_str().unwrap()],
    );
    (app, ws, http)
}

#[test]
fn pusher_clients_embedded() {
    let (_app, ws, http) = start_all_with_apps();
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
    let _app = start_all_at(
        ([127, 0, 0, 1], ws).into(),
        ([127, 0, 0, 1], http).into(),
        &[],
    );
    let upgrade = curl_status(&[
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
    assert_eq!(upgrade, 404);
    let api = curl_status(&[
        "-X",
        "POST",
        "-d",
        "{}",
        &format!("http://127.0.0.1:{http}/apps/app1/events"),
    ]);
    assert_eq!(api, 404);
}

/// Publish `data` as `event` on `channel` with the `pusher` SDK.
fn trigger(http: u16, channel: &str, event: &str, data: &str) {
    let (id, key, secret) = APP;
    let out = Command::new("node")
        .arg(workspace().join("tests/js/trigger.js"))
        .args([&http.to_string(), id, key, secret, channel, event, data])
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's auth endpoint (`tests/js/auth_server.js`): a node process signing private
/// subscriptions with the `pusher` SDK, killed when dropped.
struct AuthServer {
    child: std::process::Child,
    port: u16,
}

impl AuthServer {
    fn start() -> AuthServer {
        use std::io::BufRead;
        let port = free_port();
        let (id, key, secret) = APP;
        let mut child = Command::new("node")
            .arg(workspace().join("tests/js/auth_server.js"))
            .args([&port.to_string(), id, key, secret])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node runs");
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "listening");
        AuthServer { child, port }
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// pusher-js and Laravel Echo as a browser runs them (headless Chromium, their browser
/// builds loaded into a page of the publisher's origin), with an auth endpoint the test serves
/// (`AuthServer`): pusher-js on a public and a private channel, a channel the endpoint
/// refuses (`pusher:subscription_error`), Echo's `channel().listen()` with its event
/// namespace, and two Echo clients whispering on a private channel (client events).
#[tokio::test]
async fn pusher_js_and_laravel_echo_in_chromium() {
    let (_app, ws, http) = start_all_with_apps();
    let auth = AuthServer::start();
    let js = workspace().join("tests/js/node_modules");
    let pusher_js = std::fs::read_to_string(js.join("pusher-js/dist/web/pusher.min.js")).unwrap();
    let echo_js = std::fs::read_to_string(js.join("laravel-echo/dist/echo.iife.js")).unwrap();
    let (_, key, _) = APP;
    let b = werkmann_tests::browser::Browser::start().await;
    b.goto(&format!("http://127.0.0.1:{http}/")).await;
    b.js(&format!("{pusher_js}\nreturn typeof window.Pusher;"))
        .await;
    b.js(&format!(
        "{echo_js}\nwindow.EchoClass = Echo.default || Echo; return true;"
    ))
    .await;
    let endpoint = format!("http://127.0.0.1:{}/pusher/auth", auth.port);
    let options = format!(
        "{{broadcaster: 'pusher', key: '{key}', cluster: 'local', wsHost: '127.0.0.1', \
         wsPort: {ws}, forceTLS: false, enabledTransports: ['ws'], disableStats: true, \
         authEndpoint: '{endpoint}', channelAuthorization: {{ endpoint: '{endpoint}' }}}}"
    );
    b.js(&format!(
        r#"
        window.got = {{ news: [], secret: [], refused: [], orders: [], whisper: [] }};
        const p = new Pusher('{key}', {options});
        p.subscribe('news').bind('hello', d => got.news.push(d));
        p.subscribe('private-secret').bind('note', d => got.secret.push(d));
        p.subscribe('private-forbidden').bind('pusher:subscription_error', e => got.refused.push(e));
        const echo = () => new EchoClass({options});
        window.e1 = echo();
        window.e2 = echo();
        e1.channel('orders').listen('OrderShipped', e => got.orders.push(e));
        e2.private('chat').listenForWhisper('typing', e => got.whisper.push(e));
        window.e1chat = e1.private('chat');
        window.ready = () => p.channel('news').subscribed
          && p.channel('private-secret').subscribed
          && got.refused.length > 0
          && e1.connector.pusher.channel('orders').subscribed
          && e1.connector.pusher.channel('private-chat').subscribed
          && e2.connector.pusher.channel('private-chat').subscribed;
        return true;
        "#
    ))
    .await;
    b.wait_for("return window.ready()", "every subscription")
        .await;
    trigger(http, "news", "hello", r#"{"from":"the SDK"}"#);
    trigger(http, "private-secret", "note", r#"{"n":7}"#);
    trigger(
        http,
        "orders",
        "App\\Events\\OrderShipped",
        r#"{"order":{"id":42}}"#,
    );
    b.js("e1chat.whisper('typing', { name: 'Alice' }); return true;")
        .await;
    let got = b
        .wait_for(
            "return got.news.length && got.secret.length && got.orders.length \
             && got.whisper.length ? got : null",
            "the events, Echo's event and the whisper",
        )
        .await;
    assert_eq!(got["news"][0]["from"], "the SDK");
    assert_eq!(got["secret"][0]["n"], 7);
    assert_eq!(got["refused"][0]["status"], 403, "{got}");
    assert_eq!(got["orders"][0]["order"]["id"], 42);
    assert_eq!(got["whisper"][0]["name"], "Alice");
    b.screenshot(&werkmann_tests::output_dir("pusher").join("echo.png"))
        .await;
    b.quit().await;
}
