//! HTTP echo server: `http_echo start --listen 127.0.0.1:9005`. Answers every request with a
//! JSON description of it: method, path, query, body fields, headers.

use werkmann::cli::option;
use werkmann::{Message, Response, Worker};

fn main() -> anyhow::Result<()> {
    let listen = option("--listen", "WERKMANN_LISTEN", "127.0.0.1:9005");
    let mut worker = Worker::new(&format!("http://{listen}"))?;
    worker.name = "http_echo".into();
    worker.count = option("--count", "WERKMANN_COUNT", "1").parse()?;
    worker.on_message(|conn, msg| {
        let Message::Request(req) = msg else { return };
        let body = serde_json::json!({
            "method": req.method(),
            "path": req.path(),
            "query": req.query(),
            "post": req.post_all(),
            "headers": req.headers().iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>(),
            "worker_id": conn.worker_id(),
            "connection_id": conn.id(),
        });
        conn.send(Response::json(200, &body));
    });
    Worker::run_all(vec![worker])
}
