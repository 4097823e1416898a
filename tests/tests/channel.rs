//! The channel service over real loopback sockets: a `start_channel` process, clients in
//! `channel_console` processes, and raw TCP clients speaking the PHP wire format byte for byte.
//! What every backend does alike is in `conformance.rs`; this file holds what is the channel
//! server's or the embedded hub's own.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use werkmann_tests::{channel_console, free_port, open_console as open, scenarios, App, Console};

const T: Duration = Duration::from_secs(10);

fn channel_server() -> (App, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let app = App::start("start_channel", &["--listen", &addr], &[port]);
    (app, addr)
}

#[tokio::test]
async fn clients_reconnect_resubscribe_and_flush_what_they_buffered() {
    let port = free_port();
    let ch = format!("127.0.0.1:{port}");
    let server = App::start("start_channel", &["--listen", &ch], &[port]);
    let (_a, a_addr) = channel_console(&ch, &[]);
    let mut sub = open(&a_addr).await;
    assert_eq!(sub.ask("on news").await, "ok");
    assert_eq!(sub.ask("watch jobs").await, "ok");
    sub.sync().await;
    let mut p = open(&a_addr).await;
    assert_eq!(p.ask("pub news 1").await, "ok Sent");
    assert_eq!(sub.line().await, "event news 1");

    drop(server); // SIGKILL
    assert_eq!(sub.line().await, "channel closed");
    assert_eq!(p.line().await, "channel closed");
    // While the server is down, publishes are buffered, not lost.
    assert_eq!(p.ask("pub news 2").await, "ok Buffered");
    assert_eq!(p.ask("enq jobs 3").await, "ok Buffered");

    let _server = App::start("start_channel", &["--listen", &ch], &[port]);
    // Both clients reconnect (in either order); the subscriber re-subscribes and re-watches
    // before the publisher's buffered commands arrive, or gets them once it has.
    scenarios::both_reconnect(&mut sub, &mut p).await;
    // If the publisher got back first, its buffered event had no subscriber yet; the queue
    // item waits for the watcher either way.
    let seen_job = std::cell::Cell::new(false);
    let got = |l: &str| match l {
        "queue jobs 3" => assert!(!seen_job.replace(true), "the queue item is delivered once"),
        "event news 2" => {}
        other => panic!("unexpected {other}"),
    };
    scenarios::publish_until_delivered(&mut p, &mut sub, got).await;
    while !seen_job.get() {
        got(&sub.line().await);
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = ((payload.len() + 4) as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

async fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut h = [0u8; 4];
    tokio::time::timeout(T, s.read_exact(&mut h))
        .await
        .unwrap()
        .unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(h) as usize - 4];
    s.read_exact(&mut body).await.unwrap();
    body
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(T, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn php_wire_format_byte_for_byte_and_bad_input() {
    let (_server, ch) = channel_server();
    let mut sub = TcpStream::connect(&ch).await.unwrap();
    sub.write_all(&frame(
        br#"a:2:{s:4:"type";s:9:"subscribe";s:8:"channels";a:1:{i:0;s:9:"Broadcast";}}"#,
    ))
    .await
    .unwrap();
    // A ping (empty frame) is accepted silently.
    sub.write_all(&frame(b"")).await.unwrap();
    // werkmann's `hello` (which a PHP server ignores) is answered after what came before it on
    // the connection: once the answer is here, the subscription is in force.
    sub.write_all(&frame(br#"a:1:{s:4:"type";s:5:"hello";}"#))
        .await
        .unwrap();
    let hello = read_frame(&mut sub).await;
    assert!(
        hello.starts_with(br#"a:3:{s:4:"type";s:5:"hello";"#),
        "{}",
        String::from_utf8_lossy(&hello)
    );
    let mut publ = TcpStream::connect(&ch).await.unwrap();
    // Data the server cannot model (a PHP object) passes through untouched.
    publ.write_all(&frame(
        br#"a:3:{s:4:"type";s:7:"publish";s:8:"channels";a:1:{i:0;s:9:"Broadcast";}s:4:"data";O:8:"stdClass":1:{s:1:"x";d:0.5;}}"#,
    ))
    .await
    .unwrap();
    assert_eq!(
        read_frame(&mut sub).await,
        br#"a:3:{s:4:"type";s:5:"event";s:7:"channel";s:9:"Broadcast";s:4:"data";O:8:"stdClass":1:{s:1:"x";d:0.5;}}"#
    );

    // Bad input closes that connection only.
    for bad in [
        vec![0u8, 0, 0, 2],                          // length below 4
        vec![0x7f, 0xff, 0xff, 0xff],                // over the limit
        frame(b"not serialize"),                     // garbage
        frame(br#"a:1:{s:4:"type";s:6:"delete";}"#), // unknown type
        frame(br#"a:2:{s:4:"type";s:9:"subscribe";s:8:"channels";a:1:{i:0;b:1;}}"#),
    ] {
        let mut s = TcpStream::connect(&ch).await.unwrap();
        s.write_all(&bad).await.unwrap();
        assert!(closed(&mut s).await, "closed after {bad:?}");
    }

    // The server and the other clients go on.
    publ.write_all(&frame(
        br#"a:3:{s:4:"type";s:7:"publish";s:8:"channels";a:1:{i:0;s:9:"Broadcast";}s:4:"data";i:7;}"#,
    ))
    .await
    .unwrap();
    assert_eq!(
        read_frame(&mut sub).await,
        br#"a:3:{s:4:"type";s:5:"event";s:7:"channel";s:9:"Broadcast";s:4:"data";i:7;}"#
    );
}

/// A directory command (`data`: the operation's JSON as a PHP string, or anything) with an id.
fn dir_frame(id: i64, data: &[u8]) -> Vec<u8> {
    let mut p = br#"a:3:{s:4:"type";s:3:"dir";s:4:"data";"#.to_vec();
    p.extend_from_slice(data);
    p.extend_from_slice(format!(r#"s:2:"id";i:{id};}}"#).as_bytes());
    frame(&p)
}

fn php_str(s: &str) -> Vec<u8> {
    format!(r#"s:{}:"{s}";"#, s.len()).into_bytes()
}

/// The id and JSON answer of an `ack` frame that answers a directory command.
fn dir_ack(payload: &[u8]) -> (i64, serde_json::Value) {
    let text = String::from_utf8_lossy(payload);
    let rest = text
        .strip_prefix(r#"a:3:{s:4:"type";s:3:"ack";s:7:"channel";i:"#)
        .unwrap_or_else(|| panic!("an ack: {text}"));
    let (id, rest) = rest.split_once(';').unwrap();
    let (_, json) = rest
        .strip_prefix(r#"s:4:"data";s:"#)
        .and_then(|r| r.split_once(":\""))
        .unwrap_or_else(|| panic!("a string answer: {text}"));
    let json = json.strip_suffix("\";}").unwrap();
    (id.parse().unwrap(), serde_json::from_str(json).unwrap())
}

/// The channel server answers a directory operation it refuses with `{"error": why}` in the
/// ack, and the connection stays: the next operation on it is answered.
#[tokio::test]
async fn refused_directory_operations_keep_the_connection() {
    let (_server, ch) = channel_server();
    let mut c = TcpStream::connect(&ch).await.unwrap();
    c.write_all(&frame(br#"a:1:{s:4:"type";s:5:"hello";}"#))
        .await
        .unwrap();
    // The hello says this server keeps a directory and history and parks subscriptions (4;
    // 3: a directory and history, 2: a directory, 1: acknowledgements only).
    assert_eq!(
        read_frame(&mut c).await,
        br#"a:3:{s:4:"type";s:5:"hello";s:7:"channel";s:8:"werkmann";s:4:"data";i:4;}"#
    );
    for (id, data, why) in [
        (1, php_str(r#"{"op":"nope"}"#), "unknown variant"),
        (2, php_str("not json"), "bad directory operation"),
        (3, b"i:5;".to_vec(), "string"),
        (
            4,
            php_str(r#"{"op":"bind_uid","client_id":"1-1","uid":""}"#),
            "empty",
        ),
        (
            5,
            php_str(r#"{"op":"is_online","client_id":"1-1","x":0}"#),
            "unknown field",
        ),
    ] {
        c.write_all(&dir_frame(id, &data)).await.unwrap();
        let (got, answer) = dir_ack(&read_frame(&mut c).await);
        assert_eq!(got, id);
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{answer}");
    }
    let count = php_str(r#"{"op":"get_all_client_id_count"}"#);
    c.write_all(&dir_frame(6, &count)).await.unwrap();
    assert_eq!(
        dir_ack(&read_frame(&mut c).await),
        (6, serde_json::json!(0))
    );
}

/// Against a server that answers no hello (Workerman's PHP server, here a silent stand-in),
/// directory requests are answered "no directory", and no directory command is ever written
/// to it (a PHP server would close the connection on an unknown type); the rest goes on.
#[tokio::test]
async fn a_server_without_a_directory_is_sent_no_directory_commands() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ch = listener.local_addr().unwrap().to_string();
    let types = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = types.clone();
    // Every console connection (the harness's probe too) has a channel client of its own.
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let mut h = [0u8; 4];
                    let mut body = vec![];
                    if s.read_exact(&mut h).await.is_ok() {
                        body.resize((u32::from_be_bytes(h) as usize).saturating_sub(4), 0);
                    }
                    if s.read_exact(&mut body).await.is_err() || h == [0; 4] {
                        return;
                    }
                    let text = String::from_utf8_lossy(&body).into_owned();
                    let t = text
                        .split_once(r#"s:4:"type";s:"#)
                        .and_then(|(_, r)| r.split_once(":\""))
                        .and_then(|(_, r)| r.split_once('"'))
                        .map_or("ping", |(t, _)| t);
                    seen.lock().unwrap().push(t.to_string());
                }
            });
        }
    });
    let (_console, addr) = channel_console(&ch, &[]);
    let mut c = open(&addr).await;
    let register = r#"dirsend {"op":"register","clients":[{"client_id":"1-1"}]}"#;
    // Held while the hello may still be answered, then dropped.
    assert_eq!(c.ask(register).await, "ok Sent");
    let no_directory = "err this channel server keeps no directory (uids, groups); use a \
                        werkmann channel server or Redis";
    let count = r#"dir {"op":"get_all_client_id_count"}"#;
    assert_eq!(c.ask(count).await, no_directory);
    assert_eq!(c.ask(register).await, no_directory);
    assert_eq!(c.ask("pub news 1").await, "ok Sent");
    let published = || types.lock().unwrap().iter().any(|t| t == "publish");
    werkmann_tests::wait_until_async(T, "the publish reaches the server", async || published())
        .await;
    let types = types.lock().unwrap().clone();
    assert!(!types.iter().any(|t| t == "dir"), "{types:?}");
    assert!(types.iter().any(|t| t == "hello"), "{types:?}");
}

/// A `channel_console` with an embedded channel and two instances, and a console connection
/// on each instance's thread.
async fn embedded_on_two_threads() -> (App, Console, Console) {
    let (app, addr) = channel_console("embedded", &["--serve", "embedded", "--count", "2"]);
    let mut a = open(&addr).await;
    let mut b = open(&addr).await;
    let (wa, wb) = (a.ask("whoami").await, b.ask("whoami").await);
    assert_ne!(wa[..8], wb[..8], "two instances: {wa} / {wb}");
    (app, a, b)
}

#[tokio::test]
async fn embedded_channel_connects_instances_without_tcp() {
    let (_app, mut a, mut b) = embedded_on_two_threads().await;
    assert_eq!(a.ask("on 5").await, "ok");
    assert_eq!(a.ask("watch q").await, "ok");
    a.sync().await;
    assert_eq!(b.ask(r#"pub 5 {"to":"a"}"#).await, "ok Sent");
    assert_eq!(a.line().await, r#"event 5 {"to":"a"}"#);
    assert_eq!(b.ask("enq q [1,2]").await, "ok Sent");
    assert_eq!(a.line().await, "queue q [1,2]");
    assert_eq!(b.ask("seq 5 200").await, "ok Sent");
    for i in 0..200 {
        assert_eq!(a.line().await, format!(r#"event 5 {{"i":{i}}}"#));
    }
}

/// An in-process publisher hands events to in-process subscribers by itself, and goes through
/// the hub where an event also has a TCP subscriber: switching between the two turn by turn,
/// what it publishes still reaches each subscriber once and in order.
#[tokio::test]
async fn in_process_publishes_keep_their_order_on_both_paths() {
    let port = free_port();
    let ch = format!("127.0.0.1:{port}");
    let (_app, addr) = channel_console(&ch, &["--serve", &ch, "--count", "2"]);
    let (_remote, remote_addr) = channel_console(&ch, &[]);
    let mut a = open(&addr).await;
    let mut b = open(&addr).await;
    let mut tcp = open(&remote_addr).await;
    let mut p = open(&addr).await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.ask("on x").await, "ok");
        assert_eq!(c.ask("on y").await, "ok");
    }
    assert_eq!(tcp.ask("on y").await, "ok");
    for c in [&mut a, &mut b, &mut tcp] {
        c.sync().await;
    }
    // Even numbers go to y (with its TCP subscriber: through the hub), odd ones to x.
    let n = 2000;
    assert_eq!(p.ask(&format!("seqt y,x {n}")).await, "ok Sent");
    let event = |i: u64| {
        format!(
            r#"event {} {{"i":{i}}}"#,
            if i.is_multiple_of(2) { "y" } else { "x" }
        )
    };
    for c in [&mut a, &mut b] {
        for i in 0..n {
            assert_eq!(c.line().await, event(i));
        }
    }
    for i in (0..n).step_by(2) {
        assert_eq!(tcp.line().await, event(i));
    }
    // Without the TCP subscriber, both events go the direct way.
    assert_eq!(tcp.ask("unsub y").await, "ok");
    tcp.sync().await;
    assert_eq!(p.ask("seq y,x 100").await, "ok Sent");
    for c in [&mut a, &mut b] {
        for i in 0..100 {
            assert_eq!(c.line().await, event(i));
        }
    }
    tcp.nothing_for(300).await;
}

/// A publisher that delivers to in-process subscribers itself is held back by a slow one: once
/// 16 deliveries wait there, confirmations wait until the subscriber handled the event, so the
/// publisher cannot run arbitrarily far ahead (the HTTP publisher answers at the pace the
/// WebSocket instance delivers).
#[tokio::test]
async fn in_process_confirmations_wait_for_a_lagging_subscriber() {
    let (_app, mut sub, mut p) = embedded_on_two_threads().await;
    assert_eq!(sub.ask("onslow slow 2").await, "ok");
    sub.sync().await;
    p.send("pubct slow 400").await;
    let answer = p.line().await;
    eprintln!("pubct: {answer}");
    let field = |k: &str| -> u64 {
        let rest = answer.split_once(&format!("{k} ")).expect(k).1;
        rest.split(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(field("confirmed"), 400, "{answer}");
    assert_eq!(
        field("reached"),
        400,
        "every event reached the subscriber: {answer}"
    );
    assert_eq!(field("failed"), 0, "{answer}");
    // 16 waiting, and the turn's own batch: never the 400 a publisher confirmed at once gets.
    assert!(
        field("ahead") <= 40,
        "confirmations ran ahead of the subscriber: {answer}"
    );
}

/// A subscriber stuck in a callback holds a publisher's confirmations for 5 s at most; then
/// they are given as "handed over" (the publisher answers; nothing hangs).
#[tokio::test]
async fn in_process_confirmations_do_not_wait_forever_for_a_stuck_subscriber() {
    let (_app, mut sub, mut p) = embedded_on_two_threads().await;
    assert_eq!(sub.ask("onstuck stuck 20000").await, "ok");
    sub.sync().await;
    let t0 = std::time::Instant::now();
    p.send("pubct stuck 40").await;
    // Within `Console::line`'s 10 s, while the subscriber is stuck for 20.
    let answer = p.line().await;
    let waited = t0.elapsed();
    assert!(
        answer.starts_with("confirmed 40 reached 40 "),
        "every publish confirmed as handed to the subscriber: {answer}"
    );
    assert!(
        waited >= Duration::from_secs(4),
        "the confirmations waited for the subscriber first: {waited:?}"
    );
}

async fn next(l: &mut Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(T, l.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("open")
}

/// PHP's own `serialize()` / `unserialize()` on the other end of the channel server.
#[tokio::test]
async fn php_peers_and_werkmann_clients_share_one_channel_server() {
    use std::process::{Command, Stdio};
    assert!(
        Command::new("php").arg("-v").output().is_ok(),
        "php is missing: run scripts/test, which installs Debian's php-cli"
    );
    let script = werkmann_tests::workspace().join("tests/php/channel_peer.php");
    let (_server, ch) = channel_server();
    let (_a, a_addr) = channel_console(&ch, &[]);

    // A PHP subscriber receives what a werkmann client publishes.
    let mut php_sub = tokio::process::Command::new("php")
        .arg(&script)
        .args([ch.as_str(), "sub", "Broadcast", "7"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut php_lines = BufReader::new(php_sub.stdout.take().unwrap()).lines();
    assert_eq!(next(&mut php_lines).await, "subscribed");
    let mut p = open(&a_addr).await;
    assert_eq!(
        p.ask(r#"pub Broadcast {"content":"grüß","n":[1,2.5,null,true]}"#)
            .await,
        "ok Sent"
    );
    assert_eq!(
        next(&mut php_lines).await,
        r#"event Broadcast {"content":"grüß","n":[1,2.5,null,true]}"#
    );
    // Integer names: werkmann publishes to "7", PHP subscribed to 7.
    assert_eq!(p.ask(r#"pub 7 "seven""#).await, "ok Sent");
    assert_eq!(next(&mut php_lines).await, r#"event 7 "seven""#);

    // A werkmann subscriber receives what PHP publishes.
    let mut sub = open(&a_addr).await;
    assert_eq!(sub.ask("on news").await, "ok");
    sub.sync().await;
    let st = Command::new("php")
        .arg(&script)
        .args([
            ch.as_str(),
            "pub",
            "news",
            r#"{"a":1,"b":[true,null,1.5],"s":"ü"}"#,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        sub.line().await,
        r#"event news {"a":1,"b":[true,null,1.5],"s":"ü"}"#
    );

    // A PHP object passes through the werkmann server to a PHP subscriber untouched.
    let mut obj_sub = tokio::process::Command::new("php")
        .arg(&script)
        .args([ch.as_str(), "subobj", "objects"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut obj_lines = BufReader::new(obj_sub.stdout.take().unwrap()).lines();
    assert_eq!(next(&mut obj_lines).await, "subscribed");
    let st = Command::new("php")
        .arg(&script)
        .args([ch.as_str(), "pubobj", "objects"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(next(&mut obj_lines).await, "object stdClass 1");
}

/// History on the wire, byte for byte: a publish with `keep` reaches a subscriber as an event
/// with its `pos`, a `history` read is answered with the page; a bad `keep`, a bad position
/// or a read of two names closes that connection, and the server goes on.
#[tokio::test]
async fn history_on_the_wire_and_bad_history_frames() {
    let (_server, ch) = channel_server();
    let mut sub = TcpStream::connect(&ch).await.unwrap();
    sub.write_all(&frame(
        br#"a:2:{s:4:"type";s:9:"subscribe";s:8:"channels";a:1:{i:0;s:1:"k";}}"#,
    ))
    .await
    .unwrap();
    sub.write_all(&frame(br#"a:1:{s:4:"type";s:5:"hello";}"#))
        .await
        .unwrap();
    read_frame(&mut sub).await; // the hello: the subscription is in force
    let mut p = TcpStream::connect(&ch).await.unwrap();
    p.write_all(&frame(
        br#"a:4:{s:4:"type";s:7:"publish";s:8:"channels";a:1:{i:0;s:1:"k";}s:4:"data";i:7;s:4:"keep";s:4:"5/60";}"#,
    ))
    .await
    .unwrap();
    let event = String::from_utf8(read_frame(&mut sub).await).unwrap();
    let head = r#"a:4:{s:4:"type";s:5:"event";s:7:"channel";s:1:"k";s:4:"data";i:7;s:3:"pos";s:"#;
    let pos = event
        .strip_prefix(head)
        .and_then(|r| r.split_once(":\"").map(|(_, p)| p))
        .and_then(|p| p.strip_suffix("\";}"))
        .unwrap_or_else(|| panic!("an event with its position: {event}"));
    let (epoch, offset) = pos.split_once(':').unwrap();
    assert_eq!(offset, "1");
    let since = format!("{epoch}:0");
    let read = format!(
        r#"a:4:{{s:4:"type";s:7:"history";s:8:"channels";a:1:{{i:0;s:1:"k";}}s:4:"data";s:{}:"{since}";s:2:"id";i:9;}}"#,
        since.len()
    );
    p.write_all(&frame(read.as_bytes())).await.unwrap();
    let ack = String::from_utf8(read_frame(&mut p).await).unwrap();
    let page = format!(
        r#"a:4:{{s:5:"epoch";i:{epoch};s:3:"top";i:1;s:9:"recovered";b:1;s:5:"items";a:1:{{i:1;i:7;}}}}"#
    );
    assert_eq!(
        ack,
        format!(
            r#"a:3:{{s:4:"type";s:3:"ack";s:7:"channel";i:9;s:4:"data";s:{}:"{page}";}}"#,
            page.len()
        )
    );
    for bad in [
        &br#"a:4:{s:4:"type";s:7:"publish";s:8:"channels";a:1:{i:0;s:1:"k";}s:4:"data";i:7;s:4:"keep";s:4:"0/60";}"#[..],
        br#"a:4:{s:4:"type";s:7:"publish";s:8:"channels";a:1:{i:0;s:1:"k";}s:4:"data";i:7;s:4:"keep";i:5;}"#,
        br#"a:3:{s:4:"type";s:7:"history";s:8:"channels";a:2:{i:0;s:1:"k";i:1;s:1:"j";}s:4:"data";N;}"#,
        br#"a:3:{s:4:"type";s:7:"history";s:8:"channels";a:1:{i:0;s:1:"k";}s:4:"data";s:3:"1:x";}"#,
    ] {
        let mut c = TcpStream::connect(&ch).await.unwrap();
        c.write_all(&frame(bad)).await.unwrap();
        assert!(closed(&mut c).await, "{}", String::from_utf8_lossy(bad));
    }
    // The server went on: the subscriber still gets kept events, the next offset.
    p.write_all(&frame(
        br#"a:4:{s:4:"type";s:7:"publish";s:8:"channels";a:1:{i:0;s:1:"k";}s:4:"data";i:8;s:4:"keep";s:4:"5/60";}"#,
    ))
    .await
    .unwrap();
    let event = String::from_utf8(read_frame(&mut sub).await).unwrap();
    assert!(event.ends_with(&format!(":\"{epoch}:2\";}}")), "{event}");
}
