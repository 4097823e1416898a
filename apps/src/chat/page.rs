//! The chat page and the HTTP worker that serves it on `GET /`: plain HTML and JavaScript, no
//! external assets. It connects to one of the WebSocket nodes it is told, reconnects with
//! back-off (to the next node, if it knows several) and logs in again.

use std::sync::Arc;

use werkmann::{Message, Response, Worker};

/// The page, knowing the WebSocket nodes it may connect to: each `HOST:PORT`, `:PORT` (the
/// page's own host) or a `ws://`/`wss://` URL. `?ws=A,B` on the page's address overrides them.
pub fn page(nodes: &[String]) -> String {
    // JSON inside <script>: no "</script>" can end it early.
    let nodes = serde_json::to_string(nodes)
        .unwrap_or_else(|_| "[]".into())
        .replace('<', "\\u003c");
    include_str!("chat.html").replace("{{WS_NODES}}", &nodes)
}

/// What the page connects to for a node listening on `listen`: its port on the page's own
/// host when it listens on every address (`0.0.0.0`, `[::]`), else `listen` itself.
pub fn default_node(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "", port)) => format!(":{port}"),
        _ => listen.to_string(),
    }
}

/// The HTTP worker (`chat-web`) on `listen`: the page on `GET /`, 404 elsewhere.
pub fn web_worker(listen: &str, nodes: &[String]) -> anyhow::Result<Worker> {
    let mut worker = Worker::new(&format!("http://{listen}"))?;
    worker.name = "chat-web".into();
    let html = Arc::new(page(nodes));
    worker.on_message(move |conn, msg| {
        let Message::Request(req) = msg else { return };
        let answer = match (req.method(), req.path()) {
            ("GET", "/") => Response::html(html.to_string()),
            _ => Response::text(404, "not found\n"),
        };
        conn.send(answer);
    });
    Ok(worker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_default_to_the_listen_address() {
        assert_eq!(default_node("0.0.0.0:7272"), ":7272");
        assert_eq!(default_node("[::]:7272"), ":7272");
        assert_eq!(default_node("127.0.0.1:7272"), "127.0.0.1:7272");
    }

    #[test]
    fn the_page_carries_its_nodes_safely() {
        let p = page(&["ws://a:1".into(), "</script>".into()]);
        assert!(p.contains(r#"["ws://a:1","\u003c/script>"]"#));
        assert!(!p.contains("{{WS_NODES}}"));
    }
}
