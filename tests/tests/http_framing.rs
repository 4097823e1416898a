//! HTTP framing as a security boundary (RFC 9112 §6): each ambiguous request, sent raw to a
//! running `http_echo`, is refused with one 400 (431, 501) and the connection closed — never
//! read as two requests: the request smuggled behind it is never answered. Good framings of
//! the same kinds are answered, and the worker serves the next client.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use werkmann_tests::{free_port, App};

const T: Duration = Duration::from_secs(10);

/// Everything the server writes on a connection that is sent `raw`, until it closes.
async fn exchange(addr: &str, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| panic!("not closed within {T:?} after {:?}", show(raw)))
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// `raw` for a message: escaped, at most 300 characters.
fn show(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw).escape_debug().to_string();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// The status codes of every response in `text`.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text[i + 9..i + 12].parse().ok())
        .collect()
}

/// A smuggled request behind each case: answered only if the framing was read two ways.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn ambiguous_framing_is_refused_once_and_closed() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _app = App::start("http_echo", &["--listen", &addr], &[port]);

    let post = |fields: &str, body: &str| {
        format!("POST /a HTTP/1.1\r\nHost: x\r\n{fields}\r\n{body}{SMUGGLED}")
    };
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "signed Content-Length",
            post("Content-Length: +3\r\n", "abc"),
            400,
        ),
        (
            "negative Content-Length",
            post("Content-Length: -3\r\n", "abc"),
            400,
        ),
        (
            "hex Content-Length",
            post("Content-Length: 0x3\r\n", "abc"),
            400,
        ),
        (
            "two different Content-Lengths",
            post("Content-Length: 3\r\nContent-Length: 40\r\n", "abc"),
            400,
        ),
        (
            "a Content-Length list that disagrees",
            post("Content-Length: 3, 40\r\n", "abc"),
            400,
        ),
        (
            "Content-Length with Transfer-Encoding",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
        ),
        (
            "chunked not the final coding",
            post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
            400,
        ),
        (
            "an unknown coding only",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
            400,
        ),
        (
            "a coding this server does not undo",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            501,
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!("POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            400,
        ),
        (
            "a signed chunk size",
            post("Transfer-Encoding: chunked\r\n", "+3\r\nabc\r\n0\r\n\r\n"),
            400,
        ),
        (
            "a chunk size with 0x",
            post("Transfer-Encoding: chunked\r\n", "0x3\r\nabc\r\n0\r\n\r\n"),
            400,
        ),
        (
            "a chunk size past 64 bits",
            post(
                "Transfer-Encoding: chunked\r\n",
                "10000000000000003\r\nabc\r\n0\r\n\r\n",
            ),
            400,
        ),
        (
            "a bad chunk extension",
            post(
                "Transfer-Encoding: chunked\r\n",
                "3;a b\r\nabc\r\n0\r\n\r\n",
            ),
            400,
        ),
        (
            "an unterminated quoted chunk extension",
            post(
                "Transfer-Encoding: chunked\r\n",
                "3;a=\"b\r\nabc\r\n0\r\n\r\n",
            ),
            400,
        ),
        (
            "a chunk size line ended by LF alone",
            post("Transfer-Encoding: chunked\r\n", "3\nabc\r\n0\r\n\r\n"),
            400,
        ),
        (
            "chunk data longer than its size",
            post("Transfer-Encoding: chunked\r\n", "3\r\nabcd\r\n0\r\n\r\n"),
            400,
        ),
        (
            "a bad trailer",
            post(
                "Transfer-Encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\nX\r\n\r\n",
            ),
            400,
        ),
        (
            "whitespace between a header name and its colon",
            format!("GET /a HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc{SMUGGLED}"),
            400,
        ),
        (
            "a bare CR in a header",
            format!("GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\rX-B: 2\r\n\r\n{SMUGGLED}"),
            400,
        ),
        (
            "a NUL in a header",
            format!("GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\0\r\n\r\n{SMUGGLED}"),
            400,
        ),
        (
            "a bare CR in the request line",
            format!("GET /a\r HTTP/1.1\r\nHost: x\r\n\r\n{SMUGGLED}"),
            400,
        ),
        (
            "a head line ended by LF alone",
            format!("GET /a HTTP/1.1\nHost: x\r\n\r\n{SMUGGLED}"),
            400,
        ),
        (
            "obsolete line folding",
            format!("GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n{SMUGGLED}"),
            400,
        ),
        (
            "a head past 16 KiB",
            format!(
                "GET /a HTTP/1.1\r\nHost: x\r\nX-A: {}\r\n\r\n{SMUGGLED}",
                "a".repeat(17 * 1024)
            ),
            431,
        ),
        (
            "more than 64 header fields",
            format!(
                "GET /a HTTP/1.1\r\n{}\r\n{SMUGGLED}",
                (0..70).map(|i| format!("X-{i}: 1\r\n")).collect::<String>()
            ),
            431,
        ),
    ];
    for (what, raw, status) in &cases {
        let got = exchange(&addr, raw.as_bytes()).await;
        assert_eq!(
            statuses(&got),
            vec![*status],
            "{what}: one {status}, then closed; sent {:?}, got {:?}",
            show(raw.as_bytes()),
            show(got.as_bytes())
        );
        assert!(
            !got.contains("/smuggled"),
            "{what}: the smuggled request was answered"
        );
    }

    // The same kinds, well framed: each answered, then the request behind it too.
    let good = [
        post("Content-Length: 3\r\n", "abc"),
        post("Content-Length: 3\r\nContent-Length: 3\r\n", "abc"),
        post(
            "Transfer-Encoding: chunked\r\n",
            "3;a=b;c=\"d e\"\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
        ),
        post(
            "Transfer-Encoding: Chunked\r\n",
            "A\r\n0123456789\r\n0\r\n\r\n",
        ),
    ];
    for raw in &good {
        let last = "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let got = exchange(&addr, format!("{raw}{last}").as_bytes()).await;
        assert_eq!(
            statuses(&got),
            vec![200, 200, 200],
            "{}: {got}",
            show(raw.as_bytes())
        );
        assert!(got.contains("\"path\":\"/smuggled\""), "{got}");
        assert!(got.contains("\"path\":\"/last\""), "{got}");
    }
}

/// A client that sends its request head a byte at a time (never idle) is answered 408 and
/// closed once `--head-timeout` has passed since the head's first byte; one that waits before
/// sending a whole request is served.
#[tokio::test]
async fn a_head_sent_too_slowly_is_answered_408_and_closed() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _app = App::start(
        "http_echo",
        &["--listen", &addr, "--head-timeout", "1"],
        &[port],
    );

    // Quiet for longer than the limit, then a whole request: the clock starts at the head.
    let mut patient = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    patient
        .write_all(b"GET /patient HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(T, patient.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let got = String::from_utf8_lossy(&out);
    assert_eq!(statuses(&got), vec![200], "{got}");

    // A byte every 100 ms: still writing when the answer comes.
    let slow = TcpStream::connect(&addr).await.unwrap();
    let (mut r, mut w) = slow.into_split();
    let started = std::time::Instant::now();
    let writer = tokio::spawn(async move {
        let head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for b in head {
            if w.write_all(&[*b]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    });
    let mut out = Vec::new();
    tokio::time::timeout(T, r.read_to_end(&mut out))
        .await
        .expect("closed within the test's bound")
        .ok();
    let took = started.elapsed();
    let got = String::from_utf8_lossy(&out);
    assert_eq!(statuses(&got), vec![408], "{got}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "closed after {took:?}, the limit being 1 s (on a clock of whole seconds: 1 to 2 s)"
    );
    let finished = writer.await.unwrap();
    assert!(!finished, "the head was still being sent when the 408 came");
}
