//! The WebSocket hooks, server and client side: `ws_hooks start --listen 127.0.0.1:9013`.
//!
//! Server (Workerman's names in brackets):
//! - `on_websocket_connect` [onWebSocketConnect]: `/deny` is refused with 403; otherwise the
//!   subprotocol `chat` is chosen when the client offers it, and `X-Werkmann-Hooks: on` is added
//!   to the `101`;
//! - `on_websocket_connected` [onWebSocketConnected]: sends `connected protocol=<p or ->`;
//! - `on_websocket_ping` / `on_websocket_pong` [onWebSocketPing/Pong]: send `ping <data>` /
//!   `pong <data>`;
//! - `on_websocket_close` [onWebSocketClose]: logs `websocket close conn=<id> code=<c>
//!   reason=<r>` (info level);
//! - messages: `close` → the server closes (1000); `dial <ws url>` → an outgoing connection
//!   (`AsyncTcpConnection`) with the header `X-Dial: yes`, subprotocols `superchat, chat` and a
//!   300 ms ping interval, which reports back to this client `dial handshake <status>
//!   protocol=<p> hooks=<X-Werkmann-Hooks>`, then `dial got <msg>` for what it receives and
//!   `dial pong` for each pong; anything else is echoed.

use werkmann::cli;
use werkmann::{AsyncTcpConnection, Response, Worker};

fn main() -> anyhow::Result<()> {
    let app: cli::App<werkmann_apps::echo::Options> = cli::parse(&[("listen", "127.0.0.1:9013")]);
    werkmann_apps::init_logging();
    let options = &app.options;
    let mut ws = Worker::new(&format!("websocket://{}", options.listen.listen))?;
    ws.name = "ws_hooks".into();
    options.listen.apply(&mut ws);
    options.limits.apply(&mut ws);
    ws.tls = options.tls.load()?;

    ws.on_websocket_connect(|conn, req| {
        if req.path() == "/deny" {
            return Err(Response::text(403, "denied\n"));
        }
        let offered = req.header("sec-websocket-protocol").unwrap_or("");
        let chosen = offered.split(',').map(str::trim).find(|p| *p == "chat");
        if let Some(p) = chosen {
            conn.set_websocket_protocol(p);
        }
        conn.set_data(chosen.unwrap_or("-").to_owned());
        conn.add_websocket_header("X-Werkmann-Hooks", "on");
        if let Some(dial) = req.header("x-dial") {
            log::info!("upgrade with X-Dial: {dial}");
        }
        Ok(())
    });
    ws.on_websocket_connected(|conn| {
        let protocol = conn
            .with_data(|p: &mut String| p.clone())
            .unwrap_or_default();
        conn.send(format!("connected protocol={protocol}"));
    });
    ws.on_websocket_ping(|conn, data| {
        conn.send(format!("ping {}", String::from_utf8_lossy(data)));
    });
    ws.on_websocket_pong(|conn, data| {
        conn.send(format!("pong {}", String::from_utf8_lossy(data)));
    });
    ws.on_websocket_close(|conn, code, reason| {
        log::info!(
            "websocket close conn={} code={code} reason={reason}",
            conn.id()
        );
    });
    ws.on_message(|conn, msg| {
        let text = msg.to_text_lossy();
        if text == "close" {
            conn.close();
        } else if let Some(url) = text.strip_prefix("dial ") {
            dial(conn.clone(), url);
        } else {
            conn.send(msg);
        }
    });
    app.command.run(app.common.with([ws], None)?)
}

/// Open an outgoing WebSocket to `url` and report its events to `caller`.
fn dial(caller: werkmann::Connection, url: &str) {
    let client = match AsyncTcpConnection::new(url) {
        Ok(c) => c,
        Err(e) => {
            caller.send(format!("dial error {e}"));
            return;
        }
    };
    client.add_header("X-Dial", "yes");
    client.set_websocket_protocols(&["superchat", "chat"]);
    client.set_websocket_ping_interval(Some(std::time::Duration::from_millis(300)));
    let c = caller.clone();
    client.on_websocket_connect(move |_, resp| {
        c.send(format!(
            "dial handshake {} protocol={} hooks={}",
            resp.status(),
            resp.header("sec-websocket-protocol").unwrap_or("-"),
            resp.header("x-werkmann-hooks").unwrap_or("-"),
        ));
    });
    let c = caller.clone();
    client.on_message(move |_, msg| {
        c.send(format!("dial got {}", msg.to_text_lossy()));
    });
    let c = caller.clone();
    client.on_websocket_pong(move |_, _| {
        c.send("dial pong");
    });
    client.on_error(move |_, e| {
        caller.send(format!("dial error {e}"));
    });
    // The connection's task keeps it (and its callbacks) alive once started.
    client.connect();
}
