//! The channel server of the push cluster: `start_channel start [-d] --listen 0.0.0.0:2206`
//! (or `WERKMANN_LISTEN`). Wire-compatible with Workerman's Channel server, so PHP Workerman
//! processes can share it. `--secret S` (`WERKMANN_CHANNEL_SECRET`) makes clients authenticate
//! (a werkmann extension: PHP clients then cannot connect). `--cert PEM --key PEM` serve it
//! over TLS (clients connect with `--channel tls://HOST:2206`).

use werkmann::cli::option;
use werkmann::{channel, Worker};

fn main() -> anyhow::Result<()> {
    let listen = option("--listen", "WERKMANN_LISTEN", "0.0.0.0:2206");
    let secret = option("--secret", "WERKMANN_CHANNEL_SECRET", "");
    werkmann::master::init_logging();
    let tls = werkmann_apps::tls::server_tls_option()?;
    let server = channel::Server::with_secret(&listen, (!secret.is_empty()).then_some(secret))?;
    let mut worker = server.into_worker();
    worker.tls = tls;
    Worker::run_all(vec![worker])
}
