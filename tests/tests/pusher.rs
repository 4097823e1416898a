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

/// The app (a numeric id, as Pusher's and as the PyPI SDK requires).
const APP: (&str, &str, &str) = ("4201", "key1", "secret1");

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

/// Run the round trip against nodes `ws` (one or two ports) and publisher `http`: pusher-js
/// and the npm SDK (`pusher_roundtrip.js`), then the PyPI SDK (`pusher_sdk.py`).
fn round_trip(ws: &[u16], http: u16) {
    js_round_trip(ws, http);
    python_sdk(ws, http);
}

/// Run a client script (its arguments: the nodes' ports, comma-separated, the publisher's
/// port, the app): it must end with "done" and print each of `checks` as a line of its own
/// (or its beginning, before a space).
fn run_client(mut cmd: Command, ws: &[u16], http: u16, checks: &[&str]) {
    let (id, key, secret) = APP;
    let ports = format!("{},{}", ws[0], ws.get(1).unwrap_or(&ws[0]));
    let out = cmd
        .args([&ports, &http.to_string(), id, key, secret])
        .output()
        .expect("the client runs (scripts/test installs node, the venv and the libraries)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.lines().last() == Some("done"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in checks {
        let said = |l: &str| {
            l.strip_prefix(check)
                .is_some_and(|r| r.is_empty() || r.starts_with(' '))
        };
        assert!(text.lines().any(said), "{check} missing:\n{text}");
    }
}

/// The PyPI `pusher` SDK with raw protocol clients on the two nodes (`tests/py/pusher_sdk.py`,
/// in the venv `scripts/test` makes).
fn python_sdk(ws: &[u16], http: u16) {
    let mut cmd = Command::new(workspace().join("tests/py/.venv/bin/python"));
    cmd.arg(workspace().join("tests/py/pusher_sdk.py"));
    let checks = [
        "ok presence auth",
        "ok trigger and batch",
        "ok socket_id excluded",
        "ok channel info and users",
        "ok terminate user connections",
        "ok bad signature refused",
    ];
    run_client(cmd, ws, http, &checks);
}

/// pusher-js and the npm SDK against nodes `ws` and publisher `http`.
fn js_round_trip(ws: &[u16], http: u16) {
    let mut cmd = Command::new("node");
    cmd.arg(workspace().join("tests/js/pusher_roundtrip.js"));
    let checks = [
        "ok connected",
        "ok subscribed",
        "ok channel queries",
        "ok delivery reports",
        "ok trigger",
        "ok socket_id excluded",
        "ok channels and batch",
        "ok client event",
        "ok forged signature refused",
        "ok unsubscribed",
        "ok bad signature 401",
        "ok unknown key 4001",
        "ok presence members across nodes",
        "ok presence member_removed and users",
        "ok signed in",
        "ok send to user",
        "ok forged sign-in 4009",
        "ok terminate connections",
    ];
    run_client(cmd, ws, http, &checks);
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
    cluster_with(channel, apps.to_str().unwrap())
}

/// Two WebSocket nodes and a publisher on `channel`, serving the apps of file `apps`.
fn cluster_with(channel: &str, apps: &str) -> (Vec<App>, [u16; 2], u16) {
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

/// Presence members stay through a channel server's restart (the nodes join them again to
/// the new server's directory) and leave with a node that is killed (its channel connection
/// closes: at once).
#[test]
fn presence_survives_a_channel_restart_and_forgets_a_killed_node() {
    use std::io::{BufRead, BufReader, Write};

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let channel = App::start("start_channel", &["--listen", &addr], &[port]);
    let (mut nodes, ws, http) = cluster(&addr);
    let (id, key, secret) = APP;
    let mut js = Command::new("node")
        .arg(workspace().join("tests/js/presence_hold.js"))
        .arg(format!("{},{}", ws[0], ws[1]))
        .args([&http.to_string(), id, key, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut input = js.stdin.take().unwrap();
    let mut output = BufReader::new(js.stdout.take().unwrap()).lines();
    let mut next = || output.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(next(), "ready");
    drop(channel);
    let _channel = App::start("start_channel", &["--listen", &addr], &[port]);
    writeln!(input, "restarted").unwrap();
    assert_eq!(next(), "ok rejoined");
    drop(nodes.remove(1));
    writeln!(input, "killed").unwrap();
    assert_eq!(next(), "ok removed");
    assert!(js.wait().unwrap().success());
}

/// Webhooks: every event once, signed (checked by the `pusher` SDK's `webhook()` at the
/// receiver), with clients on two nodes and a first request that fails (retried).
fn webhooks_once_each(channel: &str) {
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};

    let (id, key, secret) = APP;
    let hook_port = free_port();
    let apps = temp_dir("pusher_webhooks").join("apps.json");
    let hooks = format!(
        r#"[{{"url":"http://127.0.0.1:{hook_port}/hooks","event_types":["channel_occupied","channel_vacated","member_added","member_removed","client_event"]}}]"#
    );
    std::fs::write(
        &apps,
        format!(
            r#"{{"apps":[{{"id":"{id}","key":"{key}","secret":"{secret}","client_events":true,"webhooks":{hooks}}}]}}"#
        ),
    )
    .unwrap();
    let mut receiver = Command::new("node")
        .arg(workspace().join("tests/js/webhook_receiver.js"))
        .args([&hook_port.to_string(), id, key, secret, "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    let seen = got.clone();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            seen.lock().unwrap().push(l);
        }
    });
    let listening = || got.lock().unwrap().iter().any(|l| l == "listening");
    assert!(werkmann_tests::poll_until(werkmann_tests::WAIT, listening));
    let (_nodes, ws, http) = cluster_with(channel, apps.to_str().unwrap());
    let mut clients = Command::new("node")
        .arg(workspace().join("tests/js/webhook_clients.js"))
        .arg(format!("{},{}", ws[0], ws[1]))
        .args([&http.to_string(), id, key, secret])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let want = [
        "event channel_occupied news",
        "event channel_vacated news",
        "event channel_occupied presence-room",
        "event member_added presence-room u1",
        "event channel_occupied private-chat",
        r#"event client_event private-chat client-typing {"who":"a"} -"#,
        "event member_removed presence-room u1",
        "event channel_vacated presence-room",
        "event channel_vacated private-chat",
        "event channel_occupied marker",
        "event channel_vacated marker",
    ];
    let all_in = || {
        let got = got.lock().unwrap();
        want.iter().all(|w| got.iter().any(|l| l == w))
    };
    let ok = werkmann_tests::poll_until(std::time::Duration::from_secs(20), all_in);
    for p in [&mut clients, &mut receiver] {
        let _ = p.kill();
        let _ = p.wait();
    }
    let got = got.lock().unwrap().clone();
    assert!(ok, "webhook events missing: got {got:?}");
    let events: Vec<&String> = got.iter().filter(|l| *l != "listening").collect();
    assert_eq!(
        events.len(),
        want.len(),
        "each event once, nothing else: {events:?}"
    );
}

#[test]
fn webhooks_through_a_channel_server() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _channel = App::start("start_channel", &["--listen", &addr], &[port]);
    webhooks_once_each(&addr);
}

#[test]
fn webhooks_on_redis() {
    let redis = RedisServer::start();
    webhooks_once_each(&redis.url());
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
        &format!("http://127.0.0.1:{http}/apps/4201/events"),
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

    // Echo's presence channels: here, joining, leaving.
    b.js(r#"
        window.pres = { here1: null, here2: null, joining: [], leaving: [] };
        e1.join('room').here(u => pres.here1 = u).joining(u => pres.joining.push(u))
          .leaving(u => pres.leaving.push(u));
        return true;
        "#)
        .await;
    b.wait_for(
        "return pres.here1 && pres.here1.length === 1",
        "e1 here alone",
    )
    .await;
    b.js("e2.join('room').here(u => pres.here2 = u); return true;")
        .await;
    let pres = b
        .wait_for(
            "return pres.here2 && pres.joining.length ? pres : null",
            "e2 here with e1, e1 told of e2",
        )
        .await;
    let id2 = format!("u{}", b.js("return e2.socketId();").await.as_str().unwrap());
    assert_eq!(pres["here2"].as_array().unwrap().len(), 2, "{pres}");
    assert_eq!(
        pres["joining"][0]["name"],
        format!("n{}", &id2[1..]),
        "{pres}"
    );
    b.js("e2.leave('room'); return true;").await;
    let pres = b
        .wait_for(
            "return pres.leaving.length ? pres : null",
            "e1 told e2 left",
        )
        .await;
    assert_eq!(
        pres["leaving"][0]["name"],
        format!("n{}", &id2[1..]),
        "{pres}"
    );
    b.screenshot(&werkmann_tests::output_dir("pusher").join("echo.png"))
        .await;
    b.quit().await;
}

/// Bad input, each refused with the protocol's answer, and the node goes on: HTTP API requests
/// signed wrongly or carrying bad events (`tests/js/api_bad.js`, signing by hand), and
/// WebSocket frames a client should not send (malformed JSON, a client event on a public
/// channel or with client events off, an unknown event, a bad channel name).
#[tokio::test]
async fn bad_input_is_refused_and_the_node_goes_on() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    let (_app, ws, http) = start_all_with_apps();
    let (id, key, secret) = APP;
    let out = Command::new("node")
        .arg(workspace().join("tests/js/api_bad.js"))
        .args([&http.to_string(), id, key, secret])
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let status = |case: &str| -> (u16, String) {
        let line = text
            .lines()
            .find(|l| l.split(' ').next() == Some(case))
            .unwrap_or_else(|| panic!("no {case} in {text}"));
        let mut parts = line.splitn(3, ' ');
        parts.next();
        let code = parts.next().unwrap().parse().unwrap();
        (code, parts.next().unwrap_or("").to_string())
    };
    for (case, code, says) in [
        ("stale", 401, "timestamp"),
        ("md5", 401, "body_md5"),
        ("signature", 401, "signature"),
        ("unknown-app", 404, "no app"),
        ("oversize", 413, "more than"),
        ("malformed", 400, "bad event"),
        ("bad-channel", 400, "channel name"),
        ("too-many", 400, "channels"),
        ("empty-batch", 400, "empty batch"),
        ("unknown-info", 400, "werkmann_reprot"),
        ("bad-user", 400, "user id"),
        ("unknown-user-api", 404, "no API"),
        ("terminate", 200, "{}"),
        ("good", 200, "{}"),
    ] {
        let (got, body) = status(case);
        assert_eq!(got, code, "{case}: {body}");
        assert!(body.contains(says), "{case}: {body}");
    }

    let url = format!("ws://127.0.0.1:{ws}/app/{key}?protocol=7");
    let (mut c, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let next = async |c: &mut tokio_tungstenite::WebSocketStream<_>| -> serde_json::Value {
        loop {
            match tokio::time::timeout(werkmann_tests::WAIT, c.next()).await {
                Ok(Some(Ok(WsMessage::Text(t)))) => return serde_json::from_str(&t).unwrap(),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no frame: {other:?}"),
            }
        }
    };
    let hello = next(&mut c).await;
    assert_eq!(hello["event"], "pusher:connection_established");
    for (frame, says) in [
        ("{\"event\":", "not a Pusher message"),
        ("[1,2]", "not a JSON object"),
        (
            r#"{"event":"client-x","channel":"news","data":{}}"#,
            "private or presence",
        ),
        (r#"{"event":"pusher:nonsense","data":{}}"#, "Unknown event"),
    ] {
        c.send(WsMessage::Text(frame.into())).await.unwrap();
        let e = next(&mut c).await;
        assert_eq!(e["event"], "pusher:error", "{frame}: {e}");
        assert!(
            e["data"]["message"].as_str().unwrap().contains(says),
            "{frame}: {e}"
        );
    }
    c.send(WsMessage::Text(
        r#"{"event":"pusher:subscribe","data":{"channel":"a b"}}"#.into(),
    ))
    .await
    .unwrap();
    let e = next(&mut c).await;
    assert_eq!(e["event"], "pusher:subscription_error", "{e}");
    // And the connection and the node go on.
    c.send(WsMessage::Text(
        r#"{"event":"pusher:ping","data":{}}"#.into(),
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut c).await["event"], "pusher:pong");
    // The seed's broadcasts and GatewayWorker's send_to_all reach the seed's clients, never a
    // Pusher socket on the same node (its next frame is the pong, not a raw text).
    let (mut seed, _, _) = werkmann_tests::push::connect(([127, 0, 0, 1], ws).into()).await;
    werkmann_tests::push::push_ok(([127, 0, 0, 1], http).into(), "/?content=seed-only").await;
    assert_eq!(
        werkmann_tests::push::next_text(&mut seed).await,
        "seed-only"
    );
    let (status, body) = werkmann_tests::push::http(
        ([127, 0, 0, 1], http).into(),
        "POST /api/send_to_all HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 21\r\n",
        r#"{"message":"all-too"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(werkmann_tests::push::next_text(&mut seed).await, "all-too");
    c.send(WsMessage::Text(
        r#"{"event":"pusher:ping","data":{}}"#.into(),
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut c).await["event"], "pusher:pong");
    // A user's own channel is for the sockets signed in as that user.
    c.send(WsMessage::Text(
        r##"{"event":"pusher:subscribe","data":{"channel":"#server-to-user-alice"}}"##.into(),
    ))
    .await
    .unwrap();
    let e = next(&mut c).await;
    assert_eq!(e["event"], "pusher:subscription_error", "{e}");
    assert_eq!(e["data"]["status"], 403, "{e}");
    // The protocol's errors close with their code: a forged sign-in (4009), an unknown app
    // key (4001).
    let close_code = async |c: &mut tokio_tungstenite::WebSocketStream<_>| -> u16 {
        loop {
            match tokio::time::timeout(werkmann_tests::WAIT, c.next()).await {
                Ok(Some(Ok(WsMessage::Close(Some(f))))) => return f.code.into(),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    };
    let forged = serde_json::json!({"event": "pusher:signin", "data": {
        "auth": format!("{key}:{}", "0".repeat(64)), "user_data": r#"{"id":"alice"}"#}});
    c.send(WsMessage::Text(forged.to_string().into()))
        .await
        .unwrap();
    let e = next(&mut c).await;
    assert_eq!(e["event"], "pusher:error", "{e}");
    assert_eq!(e["data"]["code"], 4009, "{e}");
    assert_eq!(close_code(&mut c).await, 4009);
    let url = format!("ws://127.0.0.1:{ws}/app/nokey?protocol=7");
    let (mut c, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next(&mut c).await["data"]["code"], 4001);
    assert_eq!(close_code(&mut c).await, 4001);
    round_trip(&[ws], http);
}

/// A raw Pusher protocol client.
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `c`'s next text frame, as JSON; none within `WAIT` (or a close) fails the test.
async fn next(c: &mut Ws) -> serde_json::Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    loop {
        match tokio::time::timeout(werkmann_tests::WAIT, c.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => return serde_json::from_str(&t).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no frame: {other:?}"),
        }
    }
}

/// Trigger `event` with `data` on `channel` (the `pusher` SDK) and check that it is `c`'s
/// next frame; the frame.
async fn trigger_reaches(
    c: &mut Ws,
    http: u16,
    channel: &str,
    event: &str,
    data: &str,
) -> serde_json::Value {
    trigger(http, channel, event, data);
    let e = next(c).await;
    assert_eq!(
        (e["event"].as_str(), e["data"].as_str()),
        (Some(event), Some(data))
    );
    e
}

/// `subscription_succeeded` and `signin_success` mean that what the app sends next reaches
/// the socket: each is sent once the node's subscription is in effect where events are
/// published, not when it is asked for. With the channel (the server, or Redis) frozen
/// (SIGSTOP), a socket's subscribe and sign-in are not answered; once it runs again they are,
/// and an event triggered right after reaches the socket.
async fn answered_once_in_effect(channel: &str, frozen: u32) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let signal = |sig: &str| {
        let st = Command::new("kill")
            .args([sig, &frozen.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };

    let (_apps, ws, http) = cluster(channel);
    let (_, key, secret) = APP;
    let url = format!("ws://127.0.0.1:{}/app/{key}?protocol=7", ws[0]);
    let (mut c, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let hello = next(&mut c).await;
    assert_eq!(hello["event"], "pusher:connection_established");
    let data: serde_json::Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
    let socket_id = data["socket_id"].as_str().unwrap();
    // The sign-in's signature, as an app's server makes it.
    let user_data = r#"{"id":"carol"}"#;
    let signed = Command::new("python3")
        .args([
            "-c",
            "import hashlib, hmac, sys; \
             print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())",
            secret,
            &format!("{socket_id}::user::{user_data}"),
        ])
        .output()
        .unwrap();
    let sig = String::from_utf8(signed.stdout).unwrap().trim().to_string();

    signal("-STOP");
    for f in [
        serde_json::json!({"event": "pusher:subscribe", "data": {"channel": "late-news"}}),
        serde_json::json!({"event": "pusher:signin",
            "data": {"auth": format!("{key}:{sig}"), "user_data": user_data}}),
    ] {
        c.send(WsMessage::Text(f.to_string().into())).await.unwrap();
    }
    // Neither is answered while nothing published could reach the node.
    let early = tokio::time::timeout(std::time::Duration::from_secs(1), c.next()).await;
    signal("-CONT");
    assert!(
        early.is_err(),
        "answered while the channel was frozen: {early:?}"
    );
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(next(&mut c).await["event"].as_str().unwrap().to_string());
    }
    answers.sort();
    assert_eq!(
        answers,
        [
            "pusher:signin_success",
            "pusher_internal:subscription_succeeded"
        ]
    );
    trigger_reaches(&mut c, http, "late-news", "after", "1").await;
}

#[tokio::test]
async fn answered_once_in_effect_on_a_channel_server() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = App::start("start_channel", &["--listen", &addr], &[port]);
    answered_once_in_effect(&addr, server.child.id()).await;
}

#[tokio::test]
async fn answered_once_in_effect_on_redis() {
    let redis = RedisServer::start();
    answered_once_in_effect(&redis.url(), redis.pid().unwrap()).await;
}

/// werkmann's opt-in resume extension (`?werkmann=1`, `werkmann_since` on `pusher:subscribe`)
/// across two nodes: a socket on one node sees each event with its `werkmann_id`, goes away,
/// events are triggered (with the `pusher` SDK), and a socket on the other node resumes from
/// the last id: `subscription_succeeded`, `werkmann:recovery` (recovered), the missed events
/// once and in order, then live ones. A position the history no longer covers says so; a
/// socket without the extension sees plain Pusher frames; presence channels do not resume.
async fn resume_extension(channel: &str) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    async fn open(port: u16, query: &str) -> Ws {
        let (_, key, _) = APP;
        let url = format!("ws://127.0.0.1:{port}/app/{key}?protocol=7{query}");
        let (mut c, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let hello = next(&mut c).await;
        assert_eq!(hello["event"], "pusher:connection_established");
        c
    }
    async fn subscribe(c: &mut Ws, data: serde_json::Value) {
        let f = serde_json::json!({"event": "pusher:subscribe", "data": data});
        c.send(WsMessage::Text(f.to_string().into())).await.unwrap();
    }

    let (_apps, ws, http) = cluster(channel);
    let mut a = open(ws[0], "&werkmann=1").await;
    let mut plain = open(ws[1], "").await;
    subscribe(&mut a, serde_json::json!({"channel": "ticker"})).await;
    subscribe(&mut plain, serde_json::json!({"channel": "ticker"})).await;
    for c in [&mut a, &mut plain] {
        assert_eq!(
            next(c).await["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    let e = trigger_reaches(&mut a, http, "ticker", "tick", "1").await;
    let id = e["werkmann_id"]
        .as_str()
        .expect("a werkmann_id")
        .to_string();
    let p = next(&mut plain).await;
    assert_eq!(p["data"], "1");
    assert!(
        p.get("werkmann_id").is_none(),
        "plain Pusher for plain sockets: {p}"
    );
    drop(a);
    for n in ["2", "3"] {
        trigger(http, "ticker", "tick", n);
    }
    let mut b = open(ws[1], "&werkmann=1").await;
    subscribe(
        &mut b,
        serde_json::json!({"channel": "ticker", "werkmann_since": id}),
    )
    .await;
    assert_eq!(
        next(&mut b).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let r = next(&mut b).await;
    assert_eq!(r["event"], "werkmann:recovery", "{r}");
    let rd: serde_json::Value = serde_json::from_str(r["data"].as_str().unwrap()).unwrap();
    assert_eq!(rd["recovered"], true, "{r}");
    let mut last = String::new();
    for n in ["2", "3"] {
        let e = next(&mut b).await;
        assert_eq!(
            (e["event"].as_str(), e["data"].as_str()),
            (Some("tick"), Some(n)),
            "{e}"
        );
        last = e["werkmann_id"].as_str().unwrap().to_string();
    }
    trigger(http, "ticker", "tick", "4");
    let e = next(&mut b).await;
    assert_eq!(e["data"], "4", "{e}");
    assert_ne!(e["werkmann_id"].as_str().unwrap(), last);

    // Another epoch: lost, and it goes on live.
    let (epoch, _) = id.split_once(':').unwrap();
    let other = format!("{}:1", epoch.parse::<u64>().unwrap() + 1);
    let mut c = open(ws[0], "&werkmann=1").await;
    subscribe(
        &mut c,
        serde_json::json!({"channel": "ticker", "werkmann_since": other}),
    )
    .await;
    assert_eq!(
        next(&mut c).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let r = next(&mut c).await;
    let rd: serde_json::Value = serde_json::from_str(r["data"].as_str().unwrap()).unwrap();
    assert_eq!(rd["recovered"], false, "{r}");
    trigger(http, "ticker", "tick", "5");
    assert_eq!(next(&mut c).await["data"], "5");
    // Refused: a bad position, a socket without the extension, a presence channel.
    subscribe(
        &mut c,
        serde_json::json!({"channel": "other", "werkmann_since": "x"}),
    )
    .await;
    assert_eq!(next(&mut c).await["event"], "pusher:subscription_error");
    subscribe(
        &mut plain,
        serde_json::json!({"channel": "other", "werkmann_since": id}),
    )
    .await;
    // (after the ticks it got all along, each once)
    for n in ["2", "3", "4", "5"] {
        assert_eq!(next(&mut plain).await["data"], n);
    }
    assert_eq!(next(&mut plain).await["event"], "pusher:subscription_error");
    subscribe(
        &mut c,
        serde_json::json!({"channel": "presence-x", "werkmann_since": id, "auth": "k:s"}),
    )
    .await;
    assert_eq!(next(&mut c).await["event"], "pusher:subscription_error");
}

#[tokio::test]
async fn the_resume_extension_across_nodes_of_a_channel_server() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _channel = App::start("start_channel", &["--listen", &addr], &[port]);
    resume_extension(&addr).await;
}

#[tokio::test]
async fn the_resume_extension_across_nodes_on_redis() {
    let redis = werkmann_tests::RedisServer::start();
    resume_extension(&redis.url()).await;
}
