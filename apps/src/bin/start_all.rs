//! The whole push system in one process, as Workerman's `start.php` loads every `start_*.php`:
//! an embedded channel, the WebSocket worker and the HTTP publisher.
//! `start_all start [-d] [--ws-listen 0.0.0.0:4236] [--http-listen 0.0.0.0:4237] [--count 2]
//! [--secret S] [--cert PEM --key PEM]`; `--count` instances of the WebSocket worker and as
//! many of the publisher; with a certificate, `wss://` and `https://`.
//! Open `http://127.0.0.1:4237/` for the demo page.

use std::sync::Arc;

use werkmann::channel::{self, worker_ids::WorkerIds};
use werkmann::cli::option;
use werkmann::Worker;
use werkmann_apps::push;

fn main() -> anyhow::Result<()> {
    let ws_listen = option("--ws-listen", "WERKMANN_WS_LISTEN", "0.0.0.0:4236");
    let http_listen = option("--http-listen", "WERKMANN_HTTP_LISTEN", "0.0.0.0:4237");
    let count: usize = option("--count", "WERKMANN_COUNT", "2").parse()?;
    let ws_port: u16 = ws_listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("--ws-listen {ws_listen:?} has no port"))?;
    let ids = WorkerIds::fixed(0, count);
    let server = channel::Server::embedded();
    let tls = werkmann_apps::tls::server_tls_option()?;
    let mut ws = push::ws_worker(&ws_listen, count, channel::EMBEDDED, Arc::new(ids))?;
    let secret = option("--secret", "WERKMANN_SECRET", "");
    werkmann::master::init_logging();
    let secret = (!secret.is_empty()).then_some(secret);
    // As many publisher instances as WebSocket instances: one thread parsing and answering
    // every push request was the bottleneck of the publish rate.
    let mut http = push::http_worker(&http_listen, count, channel::EMBEDDED, ws_port, secret)?;
    ws.tls = tls.clone();
    http.tls = tls;
    Worker::run_all(vec![server.into_worker(), ws, http])
}
