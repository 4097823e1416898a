//! An HTTP publisher node of the push cluster: `start_http start [-d] --listen 0.0.0.0:4237
//! --channel 127.0.0.1:2206 [--count 1] [--ws-port 4236]`. `GET /?content=X` broadcasts,
//! `GET /?to_worker_id=W&to_connection_id=C&content=X` targets one connection (also as a POST
//! form or JSON body); answers `ok`, a 400 for bad parameters, a 503 when the channel server
//! cannot take the push. `GET /` serves the demo page (its WebSocket port is `--ws-port`; the
//! nodes it reconnects among are `--ws-nodes HOST:PORT,…`).
//! `--secret S` (`WERKMANN_SECRET`) requires `Authorization: Bearer S` or an HMAC signature
//! (see `werkmann_apps::auth`); a 401 otherwise. `--cert PEM --key PEM` serve `https://`;
//! `--channel tls://…` reaches a TLS channel server (`--tls-ca PEM` for a private CA).

use werkmann::cli::option;
use werkmann::Worker;
use werkmann_apps::push;

fn main() -> anyhow::Result<()> {
    werkmann_apps::push::channel_secret_option();
    werkmann_apps::tls::client_ca_option();
    let tls = werkmann_apps::tls::server_tls_option()?;
    let listen = option("--listen", "WERKMANN_LISTEN", "0.0.0.0:4237");
    let count: usize = option("--count", "WERKMANN_COUNT", "1").parse()?;
    let channel = option("--channel", "WERKMANN_CHANNEL", "127.0.0.1:2206");
    let ws_port: u16 = option("--ws-port", "WERKMANN_WS_PORT", "4236").parse()?;
    let secret = option("--secret", "WERKMANN_SECRET", "");
    werkmann::master::init_logging();
    let secret = (!secret.is_empty()).then_some(secret);
    let mut worker = push::http_worker(&listen, count, &channel, ws_port, secret)?;
    worker.tls = tls;
    Worker::run_all(vec![worker])
}
