//! HTTP echo server: `http_echo start --listen 127.0.0.1:9005`. Answers every request with a
//! JSON description of it: method, path, query, body fields, headers.

use werkmann::{cli, Message, Response};
use werkmann_apps::echo::{echo_worker, Options};

fn main() -> anyhow::Result<()> {
    let app: cli::App<Options> = cli::parse(&[("listen", "127.0.0.1:9005")]);
    werkmann_apps::init_logging();
    let mut worker = echo_worker("http", "http_echo", &app.options)?;
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
            "local": conn.local_addr().map(|a| a.to_string()),
            "remote": conn.remote_addr().map(|a| a.to_string()),
        });
        conn.send(Response::json(200, &body));
    });
    app.command.run(app.common.with([worker], None)?)
}
