//! The channel server of the push cluster: `start_channel start [-d] --listen 0.0.0.0:2206`
//! (or `WERKMANN_LISTEN`). Wire-compatible with Workerman's Channel server, so PHP Workerman
//! processes can share it. `--secret S` (`WERKMANN_CHANNEL_SECRET`) makes clients authenticate
//! (a werkmann extension: PHP clients then cannot connect).

use werkmann::cli::option;
use werkmann::{channel, Worker};

fn main() -> anyhow::Result<()> {
    let listen = option("--listen", "WERKMANN_LISTEN", "0.0.0.0:2206");
    let secret = option("--secret", "WERKMANN_CHANNEL_SECRET", "");
    werkmann::master::init_logging();
    let server = channel::Server::with_secret(&listen, (!secret.is_empty()).then_some(secret))?;
    Worker::run_all(vec![server.into_worker()])
}
