//! Streaming HTTP responses (issue 16, item 1) against the `sse_clock` example in a real
//! process on loopback: chunked bodies read by `curl` (raw and decoded, on a kept-alive
//! connection, and to an HTTP/1.0 client), a pipelined request held until the stream before it
//! ends, a stream outliving the idle timeout, and Server-Sent Events in headless Chromium: the
//! browser's own `EventSource` reconnecting with `Last-Event-ID` and going on where it stopped.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use werkmann_tests::browser::Browser;
use werkmann_tests::{curl_ok, free_port, output_dir, App, WAIT};

/// `sse_clock` on a free port, ticking every `every_ms`, with `extra` options.
fn clock(every_ms: u64, extra: &[&str]) -> (App, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let every = every_ms.to_string();
    let mut args = vec!["--listen", &listen, "--every-ms", &every];
    args.extend_from_slice(extra);
    (App::start("sse_clock", &args, &[port]), port)
}

/// curl with `args`: its standard output, as text.
fn curl(args: &[&str]) -> String {
    String::from_utf8(curl_ok(args)).expect("UTF-8")
}

#[test]
fn curl_reads_a_chunked_body_and_reuses_the_connection() {
    let (_app, port) = clock(20, &[]);
    let url = format!("http://127.0.0.1:{port}/chunked?n=3");
    // The wire form: one chunk per line, then the last chunk.
    assert_eq!(
        curl(&["--raw", &url]),
        "2\r\n1\n\r\n2\r\n2\n\r\n2\r\n3\n\r\n0\r\n\r\n"
    );
    // Decoded, with the head.
    let out = curl(&["-i", &url]);
    let (head, body) = out.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    assert!(!head.contains("Content-Length"), "{head}");
    assert_eq!(body, "1\n2\n3\n");
    // Keep-alive holds across a streamed response: the second request reuses the connection.
    let out = curl(&[
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{num_connects} ",
        &url,
        &url,
    ]);
    assert_eq!(out, "1 0 ");
    // An HTTP/1.0 client gets the body until the connection closes.
    let out = curl(&["-0", "-i", &url]);
    let (head, body) = out.split_once("\r\n\r\n").expect("a head");
    assert!(head.contains("Connection: close"), "{head}");
    assert!(!head.contains("Transfer-Encoding"), "{head}");
    assert_eq!(body, "1\n2\n3\n");
}

#[test]
fn curl_reads_server_sent_events_resuming_after_last_event_id() {
    let (_app, port) = clock(20, &[]);
    let url = format!("http://127.0.0.1:{port}/clock?count=2");
    let out = curl(&["-i", "-H", "Last-Event-ID: 41", &url]);
    let (head, body) = out.split_once("\r\n\r\n").expect("a head");
    assert!(head.contains("Content-Type: text/event-stream"), "{head}");
    assert!(head.contains("Cache-Control: no-cache"), "{head}");
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{body}");
    assert_eq!(
        events[0],
        "event: hello\nretry: 500\ndata: resumed after event 41"
    );
    for (e, id) in events[1..].iter().zip([42, 43]) {
        assert!(
            e.starts_with(&format!("id: {id}\nevent: tick\ndata: ")),
            "{body}"
        );
    }
    // A Last-Event-ID the clock never sent is refused.
    let out = curl(&["-i", "-H", "Last-Event-ID: x", &url]);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}

/// Read from `s` until `want` has been seen; everything read.
async fn read_until(s: &mut TcpStream, got: &mut Vec<u8>, want: &str) {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(got).contains(want) {
            let n = s.read(&mut buf).await.expect("reads");
            assert!(
                n > 0,
                "closed before {want:?}: {}",
                String::from_utf8_lossy(got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} in {}", String::from_utf8_lossy(got)));
}

#[tokio::test]
async fn a_pipelined_request_waits_for_the_stream_before_it() {
    let (_app, port) = clock(50, &[]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        b"GET /chunked?n=3 HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    read_until(&mut s, &mut got, "404 Not Found").await;
    let text = String::from_utf8_lossy(&got);
    let end = text.find("0\r\n\r\n").expect("the stream ended");
    let next = text.find("HTTP/1.1 404").unwrap();
    assert!(end < next, "{text}");
    assert!(text[..end].contains("2\r\n3\n\r\n"), "{text}");
}

#[tokio::test]
async fn a_stream_outlives_the_idle_timeout() {
    let (_app, port) = clock(300, &["--idle-timeout", "2"]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /clock?count=12 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    // 12 ticks of 300 ms: well past 2 s without a byte from the client.
    read_until(&mut s, &mut got, "id: 12\n").await;
    read_until(&mut s, &mut got, "0\r\n\r\n").await;
    // Between requests the idle timeout applies again: the server closes.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("closed by the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn eventsource_in_chromium_resumes_with_last_event_id() {
    let (_app, port) = clock(100, &[]);
    let b = Browser::start().await;
    // Three events per connection: the browser reconnects twice on its own.
    b.goto(&format!("http://127.0.0.1:{port}/?count=3")).await;
    let ids = b
        .wait_for(
            "return window.ticks.length >= 9 ? window.ticks : null",
            "nine ticks over three connections",
        )
        .await;
    let ids: Vec<String> = serde_json::from_value(ids).unwrap();
    let want: Vec<String> = (1..=ids.len()).map(|i| i.to_string()).collect();
    assert_eq!(ids, want, "every event once, in order, across reconnects");
    let log = b
        .js("return [...document.querySelectorAll('#log li')].map(li => li.textContent)")
        .await;
    let log: Vec<String> = serde_json::from_value(log).unwrap();
    assert_eq!(log[0], "connected");
    assert!(
        log[1..].contains(&"resumed after event 3".to_string()),
        "{log:?}"
    );
    b.screenshot(&output_dir("http_streaming").join("sse_clock.png"))
        .await;
    b.quit().await;
}
