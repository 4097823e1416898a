//! An HTTP publisher node of the push cluster, Workerman's `start_http.php`:
//! `start_http start [-d] --listen 0.0.0.0:4237 --channel 127.0.0.1:2206 [--count 1]
//! [--ws-port 4236]`. `GET /?content=X` broadcasts,
//! `GET /?to_worker_id=W&to_connection_id=C&content=X` targets one connection (also as a POST
//! form or JSON body); answers `ok`, a 400 for bad parameters, a 503 when the channel server
//! cannot take the push. `GET /` serves the demo page (its WebSocket port is `--ws-port`; the
//! nodes it reconnects among are `--ws-nodes HOST:PORT,…`).
//! `--secret S` requires `Authorization: Bearer S` or an HMAC signature (see
//! `werkmann_apps::auth`); a 401 otherwise. `--cert PEM --key PEM` serve `https://`;
//! `--channel tls://…` reaches a TLS channel server (`--tls-ca PEM` for a private CA).

use werkmann::cli;
use werkmann_apps::push::http::{http_worker, Publisher};

/// An HTTP publisher node.
#[derive(Debug, clap::Args)]
struct Options {
    #[command(flatten)]
    listen: cli::Listen,
    #[command(flatten)]
    channel: cli::Channel,
    /// The WebSocket port the demo page connects to
    #[arg(long, env = "WERKMANN_WS_PORT", default_value_t = 4236)]
    ws_port: u16,
    #[command(flatten)]
    publisher: Publisher,
    #[command(flatten)]
    tls: cli::Tls,
}

fn main() -> anyhow::Result<()> {
    let cli::App { command, options } =
        cli::parse::<cli::App<Options>>(&[("listen", "0.0.0.0:4237")]);
    werkmann_apps::init_logging();
    let (listen, count) = (&options.listen.listen, options.listen.count);
    let mut worker = http_worker(
        listen,
        count,
        options.channel,
        options.ws_port,
        &options.publisher,
    )?;
    worker.tls = options.tls.load()?;
    command.run([worker])
}
