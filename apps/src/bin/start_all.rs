//! The whole push system in one process, as Workerman's `start.php` loads every `start_*.php`:
//! an embedded channel, the WebSocket worker and the HTTP publisher.
//! `start_all start [-d] [--ws-listen 0.0.0.0:4236] [--http-listen 0.0.0.0:4237] [--count 2]
//! [--secret S] [--cert PEM --key PEM] [--history RULES]`; `--count` instances of the WebSocket
//! worker and as many of the publisher; with a certificate, `wss://` and `https://`.
//! Open `http://127.0.0.1:4237/` for the demo page.

use std::sync::Arc;

use werkmann::channel::{self, worker_ids::WorkerIds};
use werkmann::cli;
use werkmann_apps::push;
use werkmann_apps::push::http::{Publisher, Streams};

/// The whole push system.
#[derive(Debug, clap::Args)]
struct Options {
    /// Where the WebSocket worker listens, IP:PORT
    #[arg(long, env = "WERKMANN_WS_LISTEN", default_value = "0.0.0.0:4236")]
    ws_listen: String,
    /// Where the HTTP publisher listens, IP:PORT
    #[arg(long, env = "WERKMANN_HTTP_LISTEN", default_value = "0.0.0.0:4237")]
    http_listen: String,
    /// How many instances (threads) each of the two workers runs
    #[arg(long, env = "WERKMANN_COUNT", default_value_t = 2)]
    count: usize,
    /// Run each instance as a supervised child process instead of a thread; the channel is
    /// then served on a Unix socket in the run directory
    #[arg(long, env = "WERKMANN_PROCESSES")]
    processes: bool,
    /// Which events keep history for resuming readers (`/sse`): PATTERN=SIZE/TTL or
    /// PATTERN=off, comma-separated, the first match wins (`*=off` for none)
    #[arg(
        long,
        env = "WERKMANN_HISTORY",
        value_name = "RULES",
        default_value = cli::DEFAULT_HISTORY,
        value_parser = channel::History::parse
    )]
    history: channel::History,
    /// Announce clients' presence: online/offline per uid, join/leave per group (on: as events;
    /// hooks: also for --presence-webhook, which implies it)
    #[arg(long, env = "WERKMANN_PRESENCE_EVENTS", value_enum, default_value_t)]
    presence_events: push::PresenceEvents,
    #[command(flatten)]
    publisher: Publisher,
    #[command(flatten)]
    limits: cli::Limits,
    #[command(flatten)]
    tls: cli::Tls,
}

fn main() -> anyhow::Result<()> {
    let cli::App {
        command,
        options,
        common,
    } = cli::parse::<cli::App<Options>>(&[]);
    werkmann_apps::init_logging();
    let ws_port: u16 = options
        .ws_listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("--ws-listen {:?} has no port", options.ws_listen))?;
    // With processes, the instances reach the channel over a Unix socket of this node's own;
    // as threads, in this process.
    let (server, embedded) = match options.processes {
        false => (channel::Server::embedded(), cli::Channel::embedded()),
        true => {
            let dir = cli::run_dir();
            std::fs::create_dir_all(&dir)?;
            let sock = format!("unix:{}/start_all.{ws_port}.channel.sock", dir.display());
            let channel = cli::Channel {
                channel: sock.clone(),
                ..cli::Channel::embedded()
            };
            (channel::Server::new(&sock)?, channel)
        }
    };
    let ids = Arc::new(WorkerIds::fixed(0, options.count));
    let presence = match options.publisher.presence_webhook {
        Some(_) => push::PresenceEvents::Hooks,
        None => options.presence_events,
    };
    let mut ws = push::ws::ws_worker(
        &options.ws_listen,
        options.count,
        embedded.clone(),
        ids,
        push::tokens(options.publisher.secret.as_deref()),
        options.publisher.pusher.load()?,
        presence,
    )?;
    options.limits.apply(&mut ws);
    // As many publisher instances as WebSocket instances: one thread parsing and answering
    // every push request was the bottleneck of the publish rate.
    let channel = cli::Channel {
        history: options.history.clone(),
        ..embedded
    };
    let mut http = push::http::http_worker(
        &options.http_listen,
        options.count,
        channel,
        ws_port,
        &options.publisher,
        // The publishers' `/sse?token=` streams are clients too, as worker ids after the
        // WebSocket instances'.
        push::tokens(options.publisher.secret.as_deref()).map(|tokens| Streams {
            ids: Arc::new(WorkerIds::fixed(options.count as u32, options.count)),
            tokens,
            presence,
        }),
    )?;
    let tls = options.tls.load()?;
    ws.tls = tls.clone();
    http.tls = tls;
    ws.processes = options.processes;
    http.processes = options.processes;
    let secret = options.publisher.secret.as_deref();
    command.run(common.with([server.into_worker(), ws, http], secret)?)
}
