//! A WebSocket node of the push cluster, Workerman's `start_ws.php`:
//! `start_ws start [-d] --listen 0.0.0.0:4236 --count 2 --channel 127.0.0.1:2206
//! [--worker-ids 4,5]`. Worker ids are claimed cluster-unique through the channel unless
//! pinned. `--cert PEM --key PEM` serve `wss://`; `--channel tls://…` reaches a TLS channel
//! server (`--tls-ca PEM` for a private CA).

use std::sync::Arc;

use werkmann::channel::worker_ids::WorkerIds;
use werkmann::cli;
use werkmann_apps::push;

/// A WebSocket node.
#[derive(Debug, clap::Args)]
struct Options {
    #[command(flatten)]
    listen: cli::Listen,
    #[command(flatten)]
    channel: cli::Channel,
    /// Use these worker ids (one per instance, comma-separated) instead of claiming them
    #[arg(long, env = "WERKMANN_WORKER_IDS", value_delimiter = ',')]
    worker_ids: Vec<u32>,
    /// Verify client tokens (`?token=JWT`, HS256) with this secret and bind the uid and groups
    /// they name
    #[arg(long, env = "WERKMANN_SECRET", hide_env_values = true)]
    secret: Option<String>,
    #[command(flatten)]
    limits: cli::Limits,
    #[command(flatten)]
    tls: cli::Tls,
    #[command(flatten)]
    pusher: push::apps::PusherApps,
    /// Announce clients' presence: online/offline per uid, join/leave per group (on: as events;
    /// hooks: also for the publishers' --presence-webhook)
    #[arg(long, env = "WERKMANN_PRESENCE_EVENTS", value_enum, default_value_t)]
    presence_events: push::PresenceEvents,
}

fn main() -> anyhow::Result<()> {
    let cli::App {
        command,
        options,
        common,
    } = cli::parse::<cli::App<Options>>(&[("listen", "0.0.0.0:4236"), ("count", "2")]);
    werkmann_apps::init_logging();
    let count = options.listen.count;
    let ids = if command.starts() {
        push::claim_ids(&options.channel, count, &options.worker_ids)?
    } else {
        WorkerIds::fixed(0, count)
    };
    let mut worker = push::ws::ws_worker(
        &options.listen.listen,
        count,
        options.channel,
        Arc::new(ids),
        push::tokens(options.secret.as_deref()),
        options.pusher.load()?,
        options.presence_events,
    )?;
    options.limits.apply(&mut worker);
    worker.processes = options.listen.processes;
    worker.unix_mode = options.listen.unix_mode;
    worker.tls = options.tls.load()?;
    command.run(common.with([worker], options.secret.as_deref())?)
}
