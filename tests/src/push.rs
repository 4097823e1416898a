//! Clients of the push cluster's apps: WebSocket clients of the nodes, pushes to a publisher,
//! and waiting until a broadcast reaches every client — pushes classified by what the
//! publisher answered (`ok`: delivered; 503: maybe delivered).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{greeting_ids, split_response, wait_until_async, WAIT as T};

/// A WebSocket client of a push node.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connect a WebSocket client to the push node on `addr` and read its greeting: the client,
/// and the worker id and connection id it was greeted with.
pub async fn connect(addr: SocketAddr) -> (Ws, u32, u64) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .unwrap();
    let (worker, conn) = greeting_ids(&next_text(&mut ws).await);
    (ws, worker, conn)
}

/// The next text message on `ws` (other messages are skipped; panics after [`crate::WAIT`]).
pub async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> String {
    loop {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .unwrap();
        if let WsMessage::Text(t) = m {
            return t.to_string();
        }
    }
}

/// Read `ws` up to `content`, which must come; before it only lines starting with `{tag}-` may
/// (attempts answered 503, or made before every instance subscribed: delivered or not).
pub async fn receive_after_attempts<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    content: &str,
    tag: &str,
) {
    loop {
        let t = next_text(ws).await;
        if t == content {
            return;
        }
        assert!(
            t.starts_with(&format!("{tag}-")),
            "unexpected {t:?} before {content:?}"
        );
    }
}

/// Nothing but what each client was asserted to receive reached it: a broadcast `ok` now is
/// the next message of every client (what a node delivers comes in the order the channel
/// sent it, so anything stray would come first).
pub async fn nothing_else<S: AsyncRead + AsyncWrite + Unpin>(
    addr: SocketAddr,
    clients: &mut [&mut WebSocketStream<S>],
    mark: &str,
) {
    push_ok(addr, &format!("/?content={mark}")).await;
    for c in clients.iter_mut() {
        assert_eq!(next_text(c).await, mark, "nothing else came before");
    }
}

/// GET a path on a publisher; returns (status, body).
pub async fn get(addr: SocketAddr, path_and_query: &str) -> (u16, String) {
    http(
        addr,
        &format!("GET {path_and_query} HTTP/1.1\r\nHost: x\r\n"),
        "",
    )
    .await
}

/// One request (`head` without its final blank line) on its own connection.
pub async fn http(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}Connection: close\r\n\r\n{body}").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    split_response(&out)
}

/// One push, which must be answered `ok`.
pub async fn push_ok(addr: SocketAddr, q: &str) {
    let (status, body) = get(addr, q).await;
    assert_eq!((status, body.as_str()), (200, "ok"), "{q}");
}

/// Broadcast `{tag}-0`, `{tag}-1`, … until one is answered `ok` (the publisher answers 503
/// while its channel reconnects, or while fewer instances than lately are subscribed);
/// returns that content. Those answered 503 may or may not have been delivered.
pub async fn broadcast_until_ok(addr: SocketAddr, tag: &str) -> String {
    let (mut n, mut ok) = (0, String::new());
    wait_until_async(T, format!("{addr} answers a broadcast ok"), async || {
        let content = format!("{tag}-{n}");
        n += 1;
        let (status, body) = get(addr, &format!("/?content={content}")).await;
        assert!(status == 200 || status == 503, "{status} {body}");
        ok = content;
        status == 200
    })
    .await;
    ok
}

/// Broadcast `{tag}-N` until every client has received one (its node's instance has
/// subscribed: a broadcast answered `ok` is only known to reach as many instances as
/// broadcasts did lately, and at the start that is none), then once more until one is
/// answered `ok`, and read every client up to that one.
pub async fn until_every_client_is_reached<S: AsyncRead + AsyncWrite + Unpin>(
    addr: SocketAddr,
    clients: &mut [&mut WebSocketStream<S>],
    tag: &str,
) {
    let mut reached = vec![false; clients.len()];
    let mut n = 0;
    wait_until_async(
        T,
        format!("a broadcast reaches all {}", clients.len()),
        async || {
            let (status, body) = get(addr, &format!("/?content={tag}-{n}")).await;
            assert!(status == 200 || status == 503, "{status} {body}");
            n += 1;
            for (c, r) in clients.iter_mut().zip(reached.iter_mut()) {
                // A short look at each client; one that got nothing yet is asked again.
                while let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_millis(50), c.next()).await
                {
                    if let WsMessage::Text(t) = m {
                        assert!(t.starts_with(&format!("{tag}-")), "unexpected {t:?}");
                        *r = true;
                    }
                }
            }
            reached.iter().all(|r| *r)
        },
    )
    .await;
    let last = broadcast_until_ok(addr, &format!("{tag}-done")).await;
    for c in clients.iter_mut() {
        receive_after_attempts(c, &last, tag).await;
    }
}
