//! Worker behaviour through the `feature_demo` console: instances, send-buffer limits, panics,
//! timers, broadcasts and outgoing connections.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use werkmann_tests::{free_port, poll_until_async, wait_until_async, App, Console, WAIT};

const T: Duration = Duration::from_secs(10);

fn stats(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

fn demo(count: usize) -> (App, String) {
    let (app, listen, _) = demo_ws(count);
    (app, listen)
}

/// The demo with its console address and its WebSocket address.
fn demo_ws(count: usize) -> (App, String, String) {
    let port = free_port();
    let custom = free_port();
    let ws = free_port();
    let listen = format!("127.0.0.1:{port}");
    let ws_listen = format!("127.0.0.1:{ws}");
    let app = App::start(
        "feature_demo",
        &[
            "--listen",
            &listen,
            "--custom-listen",
            &format!("127.0.0.1:{custom}"),
            "--ws-listen",
            &ws_listen,
            "--count",
            &count.to_string(),
        ],
        &[port, custom, ws],
    );
    (app, listen, ws_listen)
}

#[tokio::test]
async fn count_two_spreads_connections_over_instances_0_and_1() {
    let (_app, listen) = demo(2);
    let mut seen: HashMap<usize, HashSet<u64>> = HashMap::new();
    let mut consoles = Vec::new();
    for _ in 0..10 {
        let mut c = Console::connect(&listen).await;
        let who = c.ask("whoami").await;
        let (w, id) = who
            .strip_prefix("worker=")
            .and_then(|r| r.split_once(" conn="))
            .unwrap();
        let fresh = seen
            .entry(w.parse().unwrap())
            .or_default()
            .insert(id.parse().unwrap());
        assert!(fresh, "connection ids are unique within an instance: {who}");
        consoles.push(c);
    }
    let ids: HashSet<usize> = seen.keys().copied().collect();
    assert_eq!(ids, HashSet::from([0, 1]));
    assert_eq!(seen[&0].len(), 5);
    assert_eq!(seen[&1].len(), 5);
}

#[tokio::test]
async fn send_buffer_limit_fires_buffer_full_drops_and_stays_bounded() {
    let (_app, listen) = demo(1);
    let mut control = Console::connect(&listen).await;
    let before = stats(&control.ask("stats").await);

    // A client that asks for 64 MiB and does not read.
    let mut slow = TcpStream::connect(&listen).await.unwrap();
    slow.write_all(b"flood 8192 8192\n").await.unwrap();
    // The flood has run into the limit: on_buffer_full fired and sends failed.
    let mut s = HashMap::new();
    let full = poll_until_async(WAIT, async || {
        s = stats(&control.ask("stats").await);
        s["full"] >= 1 && s["failures"] > 0
    })
    .await;
    assert!(
        full,
        "on_buffer_full fired and messages beyond the limit are dropped: {s:?}"
    );
    let accepted = (s["sent"] + s["queued"]) as usize;
    assert!(accepted < 8192, "not everything was accepted: {s:?}");
    // 64 MiB were offered; the buffer holds 256 KiB (plus what the kernel takes).
    let grew = s["rss_kib"].saturating_sub(before["rss_kib"]);
    assert!(grew < 16 * 1024, "memory stayed bounded: grew {grew} KiB");

    // The slow client now reads everything: exactly the accepted lines arrive, then drain.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let want = accepted * 8193;
    let mut total = 0usize;
    while total < want {
        let n = tokio::time::timeout(T, slow.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection stays open");
        got += buf[..n].iter().filter(|&&b| b == b'\n').count();
        total += n;
    }
    assert_eq!(total, want);
    assert_eq!(got, accepted);
    wait_until_async(WAIT, "on_buffer_drain fired", async || {
        stats(&control.ask("stats").await)["drain"] >= 1
    })
    .await;
}

#[tokio::test]
async fn a_panicking_callback_is_caught_and_the_worker_goes_on() {
    let (app, listen) = demo(1);
    let mut c = Console::connect(&listen).await;
    c.send("panic").await;
    assert!(c.ask("whoami").await.starts_with("worker=0"));
    let mut other = Console::connect(&listen).await;
    assert!(other.ask("whoami").await.starts_with("worker=0"));
    assert!(app
        .log()
        .contains("panic in on_message callback: requested panic"));
}

#[tokio::test]
async fn timers_tick_and_stop_when_deleted() {
    let (_app, listen) = demo(1);
    let mut c = Console::connect(&listen).await;
    c.send("timer 3 40").await;
    for want in ["tick 1", "tick 2", "tick 3", "timer done"] {
        assert_eq!(c.line().await, want);
    }
    // Deleted: no fourth tick.
    let more = tokio::time::timeout(Duration::from_millis(300), c.lines.next_line()).await;
    assert!(more.is_err(), "no tick after Timer::del");
}

/// `Timer::del_all` cancels the timers of the instance it is called on, not another's.
#[tokio::test]
async fn del_all_cancels_only_the_calling_instances_timers() {
    let (_app, listen) = demo(2);
    let mut a = Console::connect(&listen).await;
    let who_a = a.ask("whoami").await;
    let mut b = loop {
        let mut b = Console::connect(&listen).await;
        if b.ask("whoami").await[..8] != who_a[..8] {
            break b;
        }
    };
    for c in [&mut a, &mut b] {
        c.send("timer 100000 30").await;
        assert_eq!(c.line().await, "tick 1");
    }
    a.send("deltimers").await;
    let said = loop {
        let line = a.line().await;
        if !line.starts_with("tick") {
            break line;
        }
    };
    assert_eq!(said, "deleted 1", "{who_a}");
    let more = tokio::time::timeout(Duration::from_millis(300), a.lines.next_line()).await;
    assert!(more.is_err(), "no tick after Timer::del_all: {more:?}");
    // The other instance's timer goes on.
    let mut last = 0;
    while last < 20 {
        let line = b.line().await;
        last = line.strip_prefix("tick ").unwrap().parse().unwrap();
    }
}

#[tokio::test]
async fn broadcast_reaches_every_connection_of_the_instance() {
    let (_app, listen) = demo(1);
    let mut a = Console::connect(&listen).await;
    let mut b = Console::connect(&listen).await;
    let _ = b.ask("whoami").await;
    a.send("broadcast hello all").await;
    assert_eq!(a.line().await, "hello all");
    assert_eq!(b.line().await, "hello all");
}

#[tokio::test]
async fn outgoing_connections_speak_each_protocol() {
    let (_app, listen) = demo(1);
    let mut c = Console::connect(&listen).await;
    let mut servers = Vec::new();
    for (bin, scheme) in [
        ("ws_echo", "ws"),
        ("frame_echo", "frame"),
        ("text_echo", "text"),
        ("tcp_echo", "tcp"),
    ] {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        servers.push(App::start(bin, &["--listen", &addr], &[port]));
        let reply = c
            .ask(&format!("connect {scheme}://{addr} hello {scheme}"))
            .await;
        assert_eq!(reply, format!("reply hello {scheme}"), "{bin}");
    }
    // A refused connection reports a connect error (code 1) through on_error.
    let dead = free_port();
    let reply = c.ask(&format!("connect frame://127.0.0.1:{dead} x")).await;
    assert!(reply.starts_with("error connect failed"), "{reply}");
}

#[tokio::test]
async fn pause_recv_holds_input_until_resume_recv() {
    let (_app, listen) = demo(1);
    let mut c = Console::connect(&listen).await;
    // Both lines arrive together; the second waits for the pause to end.
    c.send("pause 300\nwhoami").await;
    let t = std::time::Instant::now();
    assert_eq!(c.line().await, "resumed");
    assert!(c.line().await.starts_with("worker=0"));
    assert!(t.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn websocket_handshake_callback_reads_the_request_or_refuses() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    let (_app, _, ws) = demo_ws(1);
    let mut req = format!("ws://{ws}/room/7?token=abc")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("x-demo", "yes".parse().unwrap());
    let (mut client, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    // The greeting sent in on_connect (before the handshake) arrives first.
    let hello = tokio::time::timeout(T, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(hello.to_text().unwrap().starts_with("hello "), "{hello:?}");
    client.send(WsMessage::text("hi")).await.unwrap();
    let got = tokio::time::timeout(T, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        got.to_text().unwrap(),
        "path=/room/7?token=abc x-demo=yes msg=hi"
    );

    // Refused: the response from on_websocket_connect, no greeting, then close.
    let mut s = TcpStream::connect(&ws).await.unwrap();
    s.write_all(
        b"GET /deny HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("denied by on_websocket_connect"), "{resp}");
    assert!(!resp.contains("hello"), "{resp}");
}

#[tokio::test]
async fn outgoing_connection_reconnects_after_its_server_returns() {
    let (_app, listen) = demo(1);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = App::start("text_echo", &["--listen", &addr], &[port]);
    let mut c = Console::connect(&listen).await;
    c.send(&format!("persist text://{addr}")).await;
    assert_eq!(c.line().await, "persist connected");
    assert_eq!(c.ask("relay one").await, "relay Some(Sent)");
    assert_eq!(c.line().await, "persist got one");

    drop(server); // killed
    assert_eq!(c.line().await, "persist closed");
    // Reconnect attempts fail (code 1) until the server is back: one has failed.
    assert_eq!(
        c.line().await,
        "persist closed",
        "a failed reconnect attempt"
    );
    let _server = App::start("text_echo", &["--listen", &addr], &[port]);
    loop {
        let l = c.line().await;
        if l == "persist connected" {
            break;
        }
        assert_eq!(l, "persist closed", "only failed attempts before: {l}");
    }
    assert_eq!(c.ask("relay two").await, "relay Some(Sent)");
    assert_eq!(c.line().await, "persist got two");
}
