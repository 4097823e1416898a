//! Every built-in protocol, spoken by a real client over loopback to a running app process:
//! good input is echoed; bad input gets a clear close or 4xx and the worker serves the next
//! client.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use werkmann_tests::{free_port, read_head, App};

const T: Duration = Duration::from_secs(10);

async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn text_protocol_echoes_lines_and_refuses_oversize() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _app = App::start("text_echo", &["--listen", &listen], &[port]);

    let s = TcpStream::connect(&listen).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"hello\nwith crlf\r\n\xc3\xa4\n")
        .await
        .unwrap();
    for want in ["hello", "with crlf", "ä"] {
        let got = tokio::time::timeout(T, lines.next_line())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.as_deref(), Some(want));
    }

    // A line over the 10 MiB package limit closes the connection.
    let mut big = TcpStream::connect(&listen).await.unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..11 {
        if big.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let rest = read_to_end(&mut big).await;
    assert!(rest.is_empty(), "no echo for an oversize line");

    // Invalid UTF-8 in a text line closes that connection.
    let mut bad = TcpStream::connect(&listen).await.unwrap();
    bad.write_all(b"\xff\xfe\n").await.unwrap();
    assert!(read_to_end(&mut bad).await.is_empty());

    // The worker still serves.
    w.write_all(b"still here\n").await.unwrap();
    let got = tokio::time::timeout(T, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.as_deref(), Some("still here"));
}

#[tokio::test]
async fn frame_protocol_round_trip_and_bad_lengths() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _app = App::start("frame_echo", &["--listen", &listen], &[port]);

    let mut s = TcpStream::connect(&listen).await.unwrap();
    for payload in [&b"hello"[..], b"", &[0u8, 1, 2, 255][..]] {
        let mut frame = ((payload.len() + 4) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        s.write_all(&frame).await.unwrap();
        let mut head = [0u8; 4];
        tokio::time::timeout(T, s.read_exact(&mut head))
            .await
            .unwrap()
            .unwrap();
        let len = u32::from_be_bytes(head) as usize;
        assert_eq!(len, payload.len() + 4);
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.unwrap();
        assert_eq!(body, payload);
    }

    // A length below the 4-byte header closes the connection.
    let mut bad = TcpStream::connect(&listen).await.unwrap();
    bad.write_all(&[0, 0, 0, 3, 9, 9]).await.unwrap();
    assert!(read_to_end(&mut bad).await.is_empty());

    // A length over the limit is refused from the header alone.
    let mut big = TcpStream::connect(&listen).await.unwrap();
    big.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert!(read_to_end(&mut big).await.is_empty());

    // The first client goes on.
    s.write_all(&[0, 0, 0, 6, b'o', b'k']).await.unwrap();
    let mut back = [0u8; 6];
    tokio::time::timeout(T, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back[4..], b"ok");
}

#[tokio::test]
async fn tcp_protocol_echoes_bytes() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _app = App::start("tcp_echo", &["--listen", &listen], &[port]);
    let mut s = TcpStream::connect(&listen).await.unwrap();
    s.write_all(b"\x00raw bytes\xff").await.unwrap();
    let mut buf = [0u8; 11];
    tokio::time::timeout(T, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"\x00raw bytes\xff");
}

#[tokio::test]
async fn websocket_echo_with_a_real_client() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _app = App::start("ws_echo", &["--listen", &listen], &[port]);
    let url = format!("ws://{listen}/some/path?x=1");
    let (mut ws, resp) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(resp.status(), 101);

    ws.send(WsMessage::text("héllo")).await.unwrap();
    let got = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, WsMessage::text("héllo"));

    ws.send(WsMessage::binary(vec![0u8, 1, 2, 3]))
        .await
        .unwrap();
    let got = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, WsMessage::binary(vec![0u8, 1, 2, 3]));

    ws.send(WsMessage::Ping(b"p".to_vec().into()))
        .await
        .unwrap();
    let got = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, WsMessage::Pong(b"p".to_vec().into()));

    // A 1 MiB message comes back whole.
    let big = "z".repeat(1 << 20);
    ws.send(WsMessage::text(big.clone())).await.unwrap();
    let got = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.into_text().unwrap().as_str(), big);

    // Closing handshake.
    ws.close(None).await.unwrap();
    let got = tokio::time::timeout(T, ws.next()).await.unwrap();
    assert!(matches!(got, Some(Ok(WsMessage::Close(_))) | None));
}

async fn raw_ws(listen: &str) -> TcpStream {
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Read one server frame; returns (opcode, payload).
async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    tokio::time::timeout(T, s.read_exact(&mut h))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).await.unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).await.unwrap();
    (h[0] & 0x0f, p)
}

async fn expect_close(s: &mut TcpStream, code: u16) {
    let (op, payload) = read_frame(s).await;
    assert_eq!(op, 8, "expected a close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
    assert!(read_to_end(s).await.is_empty(), "then the connection ends");
}

#[tokio::test]
async fn websocket_bad_input_is_refused_and_the_worker_goes_on() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _app = App::start("ws_echo", &["--listen", &listen], &[port]);

    // Fragmented text reassembled.
    let mut s = raw_ws(&listen).await;
    let mut first = masked(0x1, b"frag");
    first[0] &= 0x7f; // FIN off
    s.write_all(&first).await.unwrap();
    s.write_all(&masked(0x9, b"mid")).await.unwrap(); // a ping between fragments
    s.write_all(&masked(0x0, b"mented")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (0xA, b"mid".to_vec()));
    assert_eq!(read_frame(&mut s).await, (0x1, b"fragmented".to_vec()));

    // An unmasked frame: close 1002.
    let mut s = raw_ws(&listen).await;
    s.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    expect_close(&mut s, 1002).await;

    // Invalid UTF-8 in a text frame: close 1007.
    let mut s = raw_ws(&listen).await;
    s.write_all(&masked(0x1, &[0xce, 0xba, 0xff]))
        .await
        .unwrap();
    expect_close(&mut s, 1007).await;

    // An oversize frame (over ws_echo's 64 MiB), refused from its header: close 1009.
    let mut s = raw_ws(&listen).await;
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 40).to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&f).await.unwrap();
    expect_close(&mut s, 1009).await;

    // A bogus upgrade: 400 with a reason.
    let mut s = TcpStream::connect(&listen).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = String::from_utf8_lossy(&read_to_end(&mut s).await).to_string();
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.to_lowercase().contains("websocket"), "{resp}");

    // A wrong version: 426 naming the supported one.
    let mut s = TcpStream::connect(&listen).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await
    .unwrap();
    let resp = String::from_utf8_lossy(&read_to_end(&mut s).await).to_string();
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
    assert!(resp.contains("Sec-WebSocket-Version: 13"), "{resp}");

    // A real client still gets served.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{listen}/"))
        .await
        .unwrap();
    ws.send(WsMessage::text("after")).await.unwrap();
    let got = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, WsMessage::text("after"));
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .unwrap();
}

async fn http_request(s: &mut TcpStream, req: &str) -> (String, String) {
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(s).await;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn http_query_form_json_keep_alive_and_bad_requests() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _app = App::start("http_echo", &["--listen", &listen], &[port]);

    let mut s = TcpStream::connect(&listen).await.unwrap();
    let (head, body) = http_request(
        &mut s,
        "GET /push?content=hi%20there&to=1 HTTP/1.1\r\nHost: x\r\nX-Test: yes\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Connection: keep-alive"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["path"], "/push");
    assert_eq!(v["query"]["content"], "hi there");
    assert!(v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == "x-test: yes"));
    let conn_id = v["connection_id"].clone();

    // Same connection (keep-alive): a form POST, then JSON.
    let (_, body) = http_request(
        &mut s,
        "POST /f HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 17\r\n\r\ncontent=a+b&n=%31",
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["post"]["content"], "a b");
    assert_eq!(v["post"]["n"], "1");
    assert_eq!(
        v["connection_id"], conn_id,
        "keep-alive reuses the connection"
    );
    let json = r#"{"content":"j","to_worker_id":3}"#;
    let (_, body) = http_request(
        &mut s,
        &format!(
            "POST /j HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        ),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["post"]["content"], "j");
    assert_eq!(v["post"]["to_worker_id"], "3");

    // Pipelined requests are answered in order.
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for want in ["/1", "/2"] {
        let (_, body) = http_request(&mut s, "").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["path"], want);
    }

    // HTTP/1.0 without keep-alive: answered, then closed.
    let mut s10 = TcpStream::connect(&listen).await.unwrap();
    let (head, _) = http_request(&mut s10, "GET /old HTTP/1.0\r\n\r\n").await;
    assert!(head.contains("Connection: close"), "{head}");
    assert!(read_to_end(&mut s10).await.is_empty());

    // A garbage request line: 400 and close.
    let mut bad = TcpStream::connect(&listen).await.unwrap();
    bad.write_all(b"\x01\x02 NOT HTTP\r\n\r\n").await.unwrap();
    let resp = String::from_utf8_lossy(&read_to_end(&mut bad).await).to_string();
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");

    // A body over the limit: 413.
    let mut big = TcpStream::connect(&listen).await.unwrap();
    big.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
        .await
        .unwrap();
    let resp = String::from_utf8_lossy(&read_to_end(&mut big).await).to_string();
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");

    // The first connection is still served.
    let (head, _) = http_request(&mut s, "GET /again HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn custom_protocol_worker_next_to_another_worker() {
    let port = free_port();
    let custom = free_port();
    let listen = format!("127.0.0.1:{port}");
    let custom_listen = format!("127.0.0.1:{custom}");
    let _app = App::start(
        "feature_demo",
        &[
            "--listen",
            &listen,
            "--custom-listen",
            &custom_listen,
            "--ws-listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[port, custom],
    );
    let mut s = TcpStream::connect(&custom_listen).await.unwrap();
    s.write_all(b"one;two;").await.unwrap();
    let mut buf = vec![0u8; "echo:one;echo:two;".len()];
    tokio::time::timeout(T, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, b"echo:one;echo:two;");
    // The protocol's input() refuses '!': the connection is closed.
    let mut bad = TcpStream::connect(&custom_listen).await.unwrap();
    bad.write_all(b"!nope;").await.unwrap();
    assert!(read_to_end(&mut bad).await.is_empty());
}
