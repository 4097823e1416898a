//! The whole push system in one process, as Workerman's `start.php` loads every `start_*.php`:
//! an embedded channel, the WebSocket worker and the HTTP publisher.
//! `start_all start [-d] [--ws-listen 0.0.0.0:4236] [--http-listen 0.0.0.0:4237] [--count 2]
//! [--secret S] [--cert PEM --key PEM]`; `--count` instances of the WebSocket worker and as
//! many of the publisher; with a certificate, `wss://` and `https://`.
//! Open `http://127.0.0.1:4237/` for the demo page.

use std::sync::Arc;

use werkmann::channel::{self, worker_ids::WorkerIds};
use werkmann::cli::{self, Command};
use werkmann_apps::push;
use werkmann_apps::push::http::Publisher;

/// The whole push system.
#[derive(Debug, clap::Parser)]
#[command(after_help = cli::ENVIRONMENT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where the WebSocket worker listens, IP:PORT
    #[arg(
        long,
        env = "WERKMANN_WS_LISTEN",
        global = true,
        default_value = "0.0.0.0:4236"
    )]
    ws_listen: String,
    /// Where the HTTP publisher listens, IP:PORT
    #[arg(
        long,
        env = "WERKMANN_HTTP_LISTEN",
        global = true,
        default_value = "0.0.0.0:4237"
    )]
    http_listen: String,
    /// How many instances (threads) each of the two workers runs
    #[arg(long, env = "WERKMANN_COUNT", global = true, default_value_t = 2)]
    count: usize,
    #[command(flatten)]
    publisher: Publisher,
    #[command(flatten)]
    limits: cli::Limits,
    #[command(flatten)]
    tls: cli::Tls,
}

fn main() -> anyhow::Result<()> {
    let cli: Cli = cli::parse(&[]);
    werkmann_apps::init_logging();
    let ws_port: u16 = cli
        .ws_listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("--ws-listen {:?} has no port", cli.ws_listen))?;
    let server = channel::Server::embedded();
    let ids = Arc::new(WorkerIds::fixed(0, cli.count));
    let mut ws = push::ws::ws_worker(&cli.ws_listen, cli.count, cli::Channel::embedded(), ids)?;
    cli.limits.apply(&mut ws);
    // As many publisher instances as WebSocket instances: one thread parsing and answering
    // every push request was the bottleneck of the publish rate.
    let channel = cli::Channel::embedded();
    let mut http = push::http::http_worker(
        &cli.http_listen,
        cli.count,
        channel,
        ws_port,
        &cli.publisher,
    )?;
    let tls = cli.tls.load()?;
    ws.tls = tls.clone();
    http.tls = tls;
    cli.command.run([server.into_worker(), ws, http])
}
