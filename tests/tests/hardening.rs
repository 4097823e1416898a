//! Safe on a network: the push API's authentication (bearer token, HMAC signature with a replay
//! window), checked against `start_all --secret`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use werkmann_tests::{free_addr, read_head, start_all_at, wait_until_async, App, WAIT};

const SECRET: &str = "correct horse battery staple";

async fn request(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    let mut body = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut body)).await;
    (head[9..12].parse().unwrap(), body)
}

/// Sign the way the docs tell users to: `openssl dgst -sha256 -hmac`.
fn openssl_sig(query: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("printf 'GET\\n/\\n%s\\n' \"$Q\" | openssl dgst -sha256 -hmac \"$S\" -r | cut -d' ' -f1")
        .env("Q", query)
        .env("S", SECRET)
        .output()
        .expect("openssl");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn expect_push<S>(client: &mut S, want: &str)
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let m = tokio::time::timeout(Duration::from_secs(10), client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, WsMessage::text(want));
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn the_push_api_requires_a_token_or_a_fresh_signature() {
    let ws = free_addr("127.0.0.1");
    let web = free_addr("127.0.0.1");
    let _app = start_all_at(ws, web, &["--secret", SECRET]);
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{ws}"))
        .await
        .unwrap();
    let _greeting = client.next().await.unwrap().unwrap();
    let (status, body) = request(web, "/?content=anon", "").await;
    assert_eq!(status, 401);
    assert!(body.contains("authentication required"), "{body}");
    let (status, body) = request(web, "/?content=x", "Authorization: Bearer guess\r\n").await;
    assert_eq!((status, body.trim()), (401, "wrong bearer token"));

    let (status, body) = request(
        web,
        "/?content=mit-token",
        &format!("Authorization: Bearer {SECRET}\r\n"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    expect_push(&mut client, "mit-token").await;

    // A signature made with openssl, as the docs show.
    let q = format!("content=signiert&ts={}", now());
    let sig = openssl_sig(&q);
    let (status, body) = request(web, &format!("/?{q}&sig={sig}"), "").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    expect_push(&mut client, "signiert").await;

    // The same signature again: a replay.
    let (status, body) = request(web, &format!("/?{q}&sig={sig}"), "").await;
    assert_eq!((status, body.trim()), (401, "signature already used"));

    // A signature over other parameters, or an old timestamp, is refused.
    let (status, _) = request(
        web,
        &format!("/?content=changed&ts={}&sig={sig}", now()),
        "",
    )
    .await;
    assert_eq!(status, 401);
    let old = format!("content=alt&ts={}", now() - 3600);
    let (status, body) = request(web, &format!("/?{old}&sig={}", openssl_sig(&old)), "").await;
    assert_eq!(
        (status, body.trim()),
        (401, "timestamp outside the replay window")
    );
    let (status, _) = request(web, "/?content=x&ts=1&sig=zz", "").await;
    assert_eq!(status, 401);

    // Nothing unauthenticated reached the client.
    let extra = tokio::time::timeout(Duration::from_millis(300), client.next()).await;
    assert!(extra.is_err(), "no other push: {extra:?}");
}

async fn ws_upgrade(addr: &str, from: Option<&str>, origin: Option<&str>) -> (TcpStream, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    }
    let mut s = sock.connect(addr.parse().unwrap()).await.unwrap();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{origin}\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head: String = tokio::time::timeout(Duration::from_secs(5), read_head_or_eof(&mut s))
        .await
        .unwrap_or_default();
    (s, head)
}

/// The response head, or "" if the server closed first.
async fn read_head_or_eof(s: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return String::new(),
        }
    }
    String::from_utf8_lossy(&head).to_string()
}

#[tokio::test]
async fn connection_limits_per_ip_and_per_instance_refuse_and_count() {
    let port = werkmann_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let app = App::start(
        "ws_echo",
        &[
            "--listen",
            &addr,
            "--max-conns-per-ip",
            "2",
            "--max-connections",
            "3",
        ],
        &[port],
    );
    // The readiness probe counts towards max_connections until the server saw it close.
    let conns = async |n: &str| {
        wait_until_async(WAIT, format!("{n} connections in status"), async || {
            app.status_row("ws_echo", 0)[3] == n
        })
        .await
    };
    conns("0").await;
    let (_a, h) = ws_upgrade(&addr, Some("127.0.0.2"), None).await;
    assert!(h.starts_with("HTTP/1.1 101"), "{h}");
    let (_b, h) = ws_upgrade(&addr, Some("127.0.0.2"), None).await;
    assert!(h.starts_with("HTTP/1.1 101"), "{h}");
    // A third from the same IP is closed at once.
    let (_c, h) = ws_upgrade(&addr, Some("127.0.0.2"), None).await;
    assert_eq!(h, "", "refused");
    // Another IP is fine, until the instance holds max_connections.
    let (_d, h) = ws_upgrade(&addr, Some("127.0.0.3"), None).await;
    assert!(h.starts_with("HTTP/1.1 101"), "{h}");
    let (_e, h) = ws_upgrade(&addr, Some("127.0.0.4"), None).await;
    assert_eq!(h, "", "max_connections refuses");
    // Closing one frees its IP's place.
    drop(_a);
    conns("2").await;
    let (_f, h) = ws_upgrade(&addr, Some("127.0.0.2"), None).await;
    assert!(h.starts_with("HTTP/1.1 101"), "{h}");
    // Refusals are logged and counted.
    let row = app.status_row("ws_echo", 0);
    assert_eq!(row[9], "2", "refused column: {row:?}");
    assert!(app.log().contains("max_connections_per_ip reached"));
}

#[tokio::test]
async fn websocket_origins_outside_the_allow_list_get_403() {
    let port = werkmann_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _app = App::start(
        "ws_echo",
        &[
            "--listen",
            &addr,
            "--origins",
            "https://good.example,http://127.0.0.1:8080",
        ],
        &[port],
    );
    let (_s, h) = ws_upgrade(&addr, None, Some("https://good.example")).await;
    assert!(h.starts_with("HTTP/1.1 101"), "{h}");
    let (_s, h) = ws_upgrade(&addr, None, Some("https://evil.example")).await;
    assert!(h.starts_with("HTTP/1.1 403"), "{h}");
    let (_s, h) = ws_upgrade(&addr, None, None).await;
    assert!(h.starts_with("HTTP/1.1 403"), "no Origin: {h}");
}

#[tokio::test]
async fn idle_peers_are_pinged_then_closed_and_live_ones_stay() {
    use tokio::io::AsyncReadExt;
    let port = werkmann_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _app = App::start(
        "ws_echo",
        &["--listen", &addr, "--idle-timeout", "3"],
        &[port],
    );
    // A live client (tungstenite answers pings while it reads) stays past the timeout.
    let (mut live, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .unwrap();
    // A dead one never answers.
    let (mut dead, h) = ws_upgrade(&addr, None, None).await;
    assert!(h.starts_with("HTTP/1.1 101"));
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), dead.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (got, false),
            }
        }
    });
    let t = std::time::Instant::now();
    // Keep reading on the live client for 6 s (tungstenite answers pings as it reads).
    let _ = tokio::time::timeout(Duration::from_secs(6), async {
        while let Some(Ok(_)) = live.next().await {}
    })
    .await;
    let (got, closed) = reader.await.unwrap();
    assert!(closed, "the dead peer was closed");
    assert_eq!(got.first(), Some(&0x89), "a ping came first: {got:?}");
    assert!(
        got.windows(2).any(|w| w[0] == 0x88),
        "then a close frame: {got:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(9));
    use futures_util::SinkExt;
    live.send(WsMessage::text("still here")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = live.next().await {
            if let Ok(WsMessage::Text(t)) = m {
                return t.to_string();
            }
        }
        "closed".to_string()
    })
    .await
    .unwrap();
    assert_eq!(echo, "still here");
}

#[tokio::test]
async fn a_channel_server_with_a_secret_admits_only_clients_that_know_it() {
    use tokio::io::AsyncReadExt;
    let port = werkmann_tests::free_port();
    let ch = format!("127.0.0.1:{port}");
    let server = App::start(
        "start_channel",
        &["--listen", &ch, "--secret", "s3"],
        &[port],
    );
    let console = |extra: &[&str]| {
        let p = werkmann_tests::free_port();
        let addr = format!("127.0.0.1:{p}");
        let mut args = vec!["--listen", addr.as_str(), "--channel", ch.as_str()];
        args.extend_from_slice(extra);
        let app = App::start("channel_console", &args, &[p]);
        (app, addr)
    };
    let (_good, good) = console(&["--channel-secret", "s3"]);
    let mut sub = werkmann_tests::Console::connect(&good).await;
    assert_eq!(sub.line().await, "channel connected");
    assert_eq!(sub.ask("on news").await, "ok");
    sub.sync().await;
    let mut p = werkmann_tests::Console::connect(&good).await;
    assert_eq!(p.line().await, "channel connected");
    assert_eq!(p.ask("pub news 1").await, "ok Sent");
    assert_eq!(sub.line().await, "event news 1");

    // A client with the wrong secret is closed each time it tries.
    let (_bad, bad) = console(&["--channel-secret", "guess"]);
    let mut b = werkmann_tests::Console::connect(&bad).await;
    assert_eq!(b.line().await, "channel connected");
    assert_eq!(b.line().await, "channel closed");
    // A PHP-style client that does not authenticate is closed at its first command.
    let mut raw = TcpStream::connect(&ch).await.unwrap();
    let sub_cmd = br#"a:2:{s:4:"type";s:9:"subscribe";s:8:"channels";a:1:{i:0;s:4:"news";}}"#;
    let mut frame = ((sub_cmd.len() + 4) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(sub_cmd);
    raw.write_all(&frame).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    // Nothing the refused clients did reached the subscriber.
    assert_eq!(p.ask("pub news 2").await, "ok Sent");
    assert_eq!(sub.line().await, "event news 2");
    let log = server.log();
    assert!(log.contains("wrong secret"), "{log}");
    assert!(log.contains("authentication required"), "{log}");
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_and_the_others_get_everything() {
    use tokio::io::AsyncReadExt;
    let ws = free_addr("127.0.0.1");
    let web = free_addr("127.0.0.1");
    let app = start_all_at(ws, web, &[]);
    let (mut slow, h) = ws_upgrade(&ws.to_string(), None, None).await;
    assert!(h.starts_with("HTTP/1.1 101"));
    let mut readers = Vec::new();
    for _ in 0..5 {
        let (mut c, _) = tokio_tungstenite::connect_async(format!("ws://{ws}"))
            .await
            .unwrap();
        let _greeting = c.next().await;
        readers.push(tokio::spawn(async move {
            let mut n = 0;
            while n < 150 {
                match tokio::time::timeout(Duration::from_secs(20), c.next()).await {
                    Ok(Some(Ok(WsMessage::Text(t)))) if t.len() == 65536 => n += 1,
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            n
        }));
    }
    let body = format!("content={}", "x".repeat(65536));
    for _ in 0..150 {
        let mut s = TcpStream::connect(web).await.unwrap();
        s.write_all(
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    for r in readers {
        assert_eq!(r.await.unwrap(), 150, "a reading client got every push");
    }
    // The slow client was dropped: reading now ends in EOF, before all 150 pushes.
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => total += n,
            Err(_) => break false,
        }
    };
    assert!(ended, "the server closed the slow client");
    assert!(
        total < 150 * 65536,
        "it did not get everything: {total} bytes"
    );
    let log = app.log();
    assert!(
        log.contains("does not read its pushes"),
        "on_buffer_full dropped it: {log}"
    );
}
