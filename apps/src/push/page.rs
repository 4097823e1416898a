//! The demo page the publisher serves on `GET /`: through `/werkmann.js` it follows the
//! broadcasts on a WebSocket node, resuming across reconnects, shows its client id and the
//! pushes, and has a form to broadcast or target a connection.

/// The demo page connecting to its own host's `ws_port`.
pub fn demo_page(ws_port: u16) -> String {
    demo_page_with_nodes(ws_port, &[])
}

/// The demo page knowing several WebSocket nodes: it connects to one of them, chosen at
/// random, and when that connection drops it tries the next one, with backoff, and resumes. Each node is
/// `HOST:PORT` (the page's scheme, `ws://` or `wss://`) or a full `ws://`/`wss://` URL. With
/// no nodes the page uses its own host and `ws_port`. A `?ws=A,B` parameter on the page's
/// address overrides the list in the browser.
pub fn demo_page_with_nodes(ws_port: u16, nodes: &[String]) -> String {
    // JSON inside <script>: no "</script>" can end it early.
    let nodes = serde_json::to_string(nodes)
        .unwrap_or_else(|_| "[]".into())
        .replace('<', "\\u003c");
    include_str!("demo.html")
        .replace("{{WS_PORT}}", &ws_port.to_string())
        .replace("{{WS_NODES}}", &nodes)
}
