//! permessage-deflate (RFC 7692) over real sockets: the Python `websockets` client (Debian's
//! python3-websockets) negotiates compression with `ws_echo`, with its default offer and with
//! the window and context-takeover parameters, and checks every echo; a raw client sees the
//! server's frames compressed (RSV1), and `--ws-compression off` declines the offer.

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use werkmann_tests::{free_port, read_head, App};

const T: Duration = Duration::from_secs(10);

/// Debian's interpreter, which has python3-websockets (another `python3` on the PATH may not).
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Connects with the extension factory given (Python source) and echoes text and binary
/// messages; prints the response's Sec-WebSocket-Extensions, then "ok N" after N echoes.
const CLIENT: &str = r#"
import asyncio, os, sys
import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

async def main(uri, factory):
    ext = eval(factory)
    async with websockets.connect(uri, compression=None, extensions=ext, max_size=None) as ws:
        print("extensions:", ws.response_headers.get("Sec-WebSocket-Extensions", ""), flush=True)
        msgs = ["hello", "", "werkmann " * 5000, "ünïcödé ✓" * 100,
                b"\x00\x01\x02" * 3000, os.urandom(70000), b"", "hello"]
        for m in msgs:
            await ws.send(m)
            got = await asyncio.wait_for(ws.recv(), 10)
            if got != m or type(got) != type(m):
                print("mismatch:", type(m).__name__, len(m), "got", type(got).__name__, len(got))
                sys.exit(1)
        print("ok", len(msgs), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

/// Run the client against `uri` with `factory`; returns (extensions header, stdout).
fn python_client(uri: &str, factory: &str) -> (String, String) {
    let out = Command::new(python())
        .args(["-c", CLIENT, uri, factory])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python client ({factory}) failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let ext = stdout
        .lines()
        .find_map(|l| l.strip_prefix("extensions: "))
        .unwrap_or("")
        .to_owned();
    assert!(stdout.contains("ok 8"), "{stdout}");
    (ext, stdout)
}

#[test]
fn python_websockets_negotiates_deflate_and_gets_every_echo() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let app = App::start("ws_echo", &["--listen", &listen], &[port]);
    let uri = format!("ws://{listen}/");

    // websockets' default offer: permessage-deflate; client_max_window_bits.
    let (ext, _) = python_client(
        &uri,
        "[ClientPerMessageDeflateFactory(client_max_window_bits=True)]",
    );
    assert_eq!(ext, "permessage-deflate", "{}", app.log());

    let (ext, _) = python_client(
        &uri,
        "[ClientPerMessageDeflateFactory(client_no_context_takeover=True)]",
    );
    assert_eq!(ext, "permessage-deflate; client_no_context_takeover");

    let (ext, _) = python_client(
        &uri,
        "[ClientPerMessageDeflateFactory(server_max_window_bits=10, \
          server_no_context_takeover=True, client_max_window_bits=12)]",
    );
    assert_eq!(
        ext,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
    );

    // Without an offer nothing is negotiated and the echoes are the same.
    let (ext, _) = python_client(&uri, "[]");
    assert_eq!(ext, "");
}

/// Upgrade on a raw socket offering `offer`; returns the socket and the response head.
async fn raw_upgrade(addr: &str, offer: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: {offer}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(T, read_head(&mut s))
        .await
        .expect("101 in time");
    (s, head)
}

/// A masked client frame (mask 0: the payload is sent as it is).
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

/// Read one server frame: (first byte, payload).
async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).await.unwrap();
    (h[0], payload)
}

#[tokio::test]
async fn server_frames_are_compressed_and_bad_frames_closed() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _app = App::start("ws_echo", &["--listen", &listen], &[port]);

    let (mut s, head) = raw_upgrade(&listen, "permessage-deflate").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"),
        "{head}"
    );
    // An uncompressed text message comes back compressed: RSV1 set, far shorter.
    let text = "werkmann ".repeat(1000);
    s.write_all(&client_frame(0x81, text.as_bytes()))
        .await
        .unwrap();
    let (first, payload) = tokio::time::timeout(T, read_frame(&mut s)).await.unwrap();
    assert_eq!(first, 0x80 | 0x40 | 0x1, "FIN + RSV1 + text");
    assert!(payload.len() < text.len() / 20, "{} bytes", payload.len());

    // RSV1 on a ping is a protocol error: close 1002.
    s.write_all(&client_frame(0x80 | 0x40 | 0x9, b""))
        .await
        .unwrap();
    let (first, payload) = tokio::time::timeout(T, read_frame(&mut s)).await.unwrap();
    assert_eq!(first, 0x88);
    assert_eq!(&payload[..2], &1002u16.to_be_bytes());

    // A compressed message of ~450 KiB that inflates past 64 MiB (ws_echo's limit): close 1009.
    let (mut s, _) = raw_upgrade(&listen, "permessage-deflate").await;
    let bomb = zero_bomb(70 << 20);
    s.write_all(&client_frame(0x80 | 0x40 | 0x2, &bomb))
        .await
        .unwrap();
    let (first, payload) = tokio::time::timeout(T, read_frame(&mut s)).await.unwrap();
    assert_eq!(first, 0x88);
    assert_eq!(&payload[..2], &1009u16.to_be_bytes());

    // Offers declined: compression off.
    let port2 = free_port();
    let listen2 = format!("127.0.0.1:{port2}");
    let _off = App::start(
        "ws_echo",
        &["--listen", &listen2, "--ws-compression", "off"],
        &[port2],
    );
    let (_s, head) = raw_upgrade(&listen2, "permessage-deflate").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
}

/// Raw deflate data that inflates to at least `size` zero bytes: one literal zero, then
/// fixed-Huffman blocks of length-258 distance-1 copies.
fn zero_bomb(size: usize) -> Vec<u8> {
    // Build with a bit writer: fixed Huffman codes (RFC 1951 §3.2.6).
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u32, bits: u32) {
            self.acc |= value << self.n;
            self.n += bits;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// A Huffman code, most significant bit first.
        fn code(&mut self, code: u32, bits: u32) {
            let rev = code.reverse_bits() >> (32 - bits);
            self.put(rev, bits);
        }
    }
    let mut b = Bits {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    b.put(0, 1); // not final
    b.put(1, 2); // fixed Huffman
    b.code(0x30, 8); // literal 0
    let mut made = 1;
    while made < size {
        b.code(0xC5, 8); // length 258: code 285 (11000101)
        b.code(0, 5); // distance 1: code 0
        made += 258;
    }
    b.code(0, 7); // end of block (256)
    b.put(0, 8); // flush the last bits
    b.out
}
