//! The channel server of the push cluster: `start_channel start [-d] --listen 0.0.0.0:2206`
//! (or `WERKMANN_LISTEN`). Wire-compatible with Workerman's Channel server, so PHP Workerman
//! processes can share it.

use werkmann::cli::option;
use werkmann::{channel, Worker};

fn main() -> anyhow::Result<()> {
    let listen = option("--listen", "WERKMANN_LISTEN", "0.0.0.0:2206");
    let server = channel::Server::new(&listen)?;
    Worker::run_all(vec![server.into_worker()])
}
