//! An HTTP publisher node of the push cluster, Workerman's `start_http.php`:
//! `start_http start [-d] --listen 0.0.0.0:4237 --channel 127.0.0.1:2206 [--count 1]
//! [--ws-port 4236]`. `GET /?content=X` broadcasts,
//! `GET /?to_worker_id=W&to_connection_id=C&content=X` targets one connection (also as a POST
//! form or JSON body); answers `ok`, a 400 for bad parameters, a 503 when the channel server
//! cannot take the push. `GET /` serves the demo page (its WebSocket port is `--ws-port`; the
//! nodes it reconnects among are `--ws-nodes HOST:PORT,…`).
//! `--secret S` requires `Authorization: Bearer S` or an HMAC signature (see
//! `werkmann_apps::auth`); a 401 otherwise. `--cert PEM --key PEM` serve `https://`;
//! `--channel tls://…` reaches a TLS channel server (`--tls-ca PEM` for a private CA). With a
//! secret, `/sse?token=JWT` streams are the cluster's clients (the instances claim worker ids).

use std::sync::Arc;

use werkmann::channel::worker_ids::WorkerIds;
use werkmann::cli;
use werkmann_apps::push::{
    self,
    http::{http_worker, Publisher, Streams},
};

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
    /// Announce the presence of /sse?token= streams: online/offline per uid, join/leave per
    /// group (on: as events; hooks: also for --presence-webhook)
    #[arg(long, env = "WERKMANN_PRESENCE_EVENTS", value_enum, default_value_t)]
    presence_events: push::PresenceEvents,
    #[command(flatten)]
    tls: cli::Tls,
}

fn main() -> anyhow::Result<()> {
    let cli::App {
        command,
        options,
        common,
    } = cli::parse::<cli::App<Options>>(&[("listen", "0.0.0.0:4237")]);
    werkmann_apps::init_logging();
    let (listen, count) = (&options.listen.listen, options.listen.count);
    // With a secret, `/sse?token=` streams are clients of the cluster: the instances claim
    // worker ids of their own, as WebSocket nodes do.
    let streams = match push::tokens(options.publisher.secret.as_deref()) {
        Some(tokens) => Some(Streams {
            ids: Arc::new(if command.starts() {
                push::claim_ids(&options.channel, count, &[])?
            } else {
                WorkerIds::fixed(0, count)
            }),
            tokens,
            presence: options.presence_events,
        }),
        None => None,
    };
    let mut worker = http_worker(
        listen,
        count,
        options.channel,
        options.ws_port,
        &options.publisher,
        streams,
    )?;
    worker.tls = options.tls.load()?;
    worker.processes = options.listen.processes;
    worker.unix_mode = options.listen.unix_mode;
    let secret = options.publisher.secret.as_deref();
    command.run(common.with([worker], secret)?)
}
