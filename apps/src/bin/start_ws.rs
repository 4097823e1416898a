//! A WebSocket node of the push cluster: `start_ws start [-d] --listen 0.0.0.0:4236 --count 2
//! --channel 127.0.0.1:2206 [--worker-ids 4,5]` (or `WERKMANN_LISTEN`, `WERKMANN_COUNT`,
//! `WERKMANN_CHANNEL`, `WERKMANN_WORKER_IDS`). Worker ids are claimed cluster-unique through
//! the channel unless pinned. `--cert PEM --key PEM` serve `wss://`; `--channel tls://…` reaches
//! a TLS channel server (`--tls-ca PEM` for a private CA).

use std::sync::Arc;

use werkmann::cli::option;
use werkmann::Worker;
use werkmann_apps::push;

fn main() -> anyhow::Result<()> {
    werkmann_apps::push::channel_secret_option();
    werkmann_apps::tls::client_ca_option();
    let tls = werkmann_apps::tls::server_tls_option()?;
    let listen = option("--listen", "WERKMANN_LISTEN", "0.0.0.0:4236");
    let count: usize = option("--count", "WERKMANN_COUNT", "2").parse()?;
    let channel = option("--channel", "WERKMANN_CHANNEL", "127.0.0.1:2206");
    let pinned = option("--worker-ids", "WERKMANN_WORKER_IDS", "");
    let starting = std::env::args().any(|a| a == "start" || a == "restart");
    let ids = if starting {
        werkmann::master::init_logging();
        push::claim_ids(&channel, count, &pinned)?
    } else {
        werkmann::channel::worker_ids::WorkerIds::fixed(0, count)
    };
    let mut worker = push::ws_worker(&listen, count, &channel, Arc::new(ids))?;
    worker.tls = tls;
    Worker::run_all(vec![worker])
}
