//! The WebSocket hooks over real sockets, against the `ws_hooks` example: the server's
//! `on_websocket_connect` (subprotocol, extra headers, refusal), `on_websocket_connected`,
//! `on_websocket_ping`/`pong` and `on_websocket_close` (the peer's code and reason, or ours);
//! and the client side (`AsyncTcpConnection` over `ws://`): request headers, subprotocols, the
//! ping interval and the handshake response.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use werkmann_tests::{free_port, wait_until, App};

const T: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(url: &str, protocols: Option<&str>) -> (Ws, Vec<(String, String)>) {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (ws, resp) = tokio::time::timeout(T, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    (ws, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The next text message (pings and pongs are skipped).
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("no error");
        match msg {
            WsMessage::Text(t) => return t.to_string(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The `ws_hooks` example on a free port.
fn start_hooks() -> (App, u16) {
    let port = free_port();
    let app = App::start(
        "ws_hooks",
        &["--listen", &format!("127.0.0.1:{port}")],
        &[port],
    );
    (app, port)
}

#[tokio::test]
async fn server_hooks_are_called_with_their_values() {
    let (app, port) = start_hooks();
    let url = format!("ws://127.0.0.1:{port}/");

    // Subprotocol chosen from the offer, extra header, then on_websocket_connected.
    let (mut ws, headers) = connect(&url, Some("superchat, chat")).await;
    assert_eq!(header(&headers, "sec-websocket-protocol"), Some("chat"));
    assert_eq!(header(&headers, "x-werkmann-hooks"), Some("on"));
    assert_eq!(next_text(&mut ws).await, "connected protocol=chat");

    // Ping: the pong comes back (RFC 6455) and the hook saw the data.
    ws.send(WsMessage::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let mut got_pong = false;
    let text = loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WsMessage::Pong(p) => {
                assert_eq!(&p[..], b"are you there");
                got_pong = true;
            }
            WsMessage::Text(t) => break t.to_string(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(text, "ping are you there");
    // tungstenite delivers the pong before or after the text; read on until both are seen.
    if !got_pong {
        match tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WsMessage::Pong(p) => assert_eq!(&p[..], b"are you there"),
            other => panic!("{other:?}"),
        }
    }
    // An unsolicited pong reaches on_websocket_pong.
    ws.send(WsMessage::Pong(b"hb-7".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await, "pong hb-7");

    // The peer's close code and reason reach on_websocket_close.
    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye now".into(),
    }))
    .await
    .unwrap();
    wait_until(T, "on_websocket_close with the peer's code", || {
        app.log().contains("code=4001 reason=bye now")
    });

    // No subprotocol offered: none chosen; the server closes: our code 1000 is reported.
    let (mut ws, headers) = connect(&url, None).await;
    assert_eq!(header(&headers, "sec-websocket-protocol"), None);
    assert_eq!(next_text(&mut ws).await, "connected protocol=-");
    ws.send(WsMessage::text("close")).await.unwrap();
    match tokio::time::timeout(T, ws.next()).await.unwrap() {
        Some(Ok(WsMessage::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("{other:?}"),
    }
    wait_until(T, "on_websocket_close with our 1000", || {
        app.log().contains("code=1000 reason=")
    });

    // Refused in on_websocket_connect.
    let err = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/deny"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
}

#[tokio::test]
async fn client_headers_subprotocol_ping_interval_and_response() {
    let (app, port) = start_hooks();
    let url = format!("ws://127.0.0.1:{port}/");
    let (mut ws, _) = connect(&url, None).await;
    assert_eq!(next_text(&mut ws).await, "connected protocol=-");

    // The server dials itself with an AsyncTcpConnection and reports what it sees.
    ws.send(WsMessage::text(format!("dial {url}")))
        .await
        .unwrap();
    assert_eq!(
        next_text(&mut ws).await,
        "dial handshake 101 protocol=chat hooks=on"
    );
    assert_eq!(next_text(&mut ws).await, "dial got connected protocol=chat");
    // The ping interval: the server's ping hook answers each ping with a text, and the
    // client's pong hook fires.
    let mut pings = 0;
    let mut pongs = 0;
    while pings < 2 || pongs < 2 {
        match next_text(&mut ws).await.as_str() {
            "dial got ping werkmann" => pings += 1,
            "dial pong" => pongs += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        app.log().contains("upgrade with X-Dial: yes"),
        "the request header reached the server:\n{}",
        app.log()
    );
}
