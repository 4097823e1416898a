//! The chat example, workerman-chat on werkmann: `start_chat start [-d] [--listen
//! 0.0.0.0:7272] [--web 0.0.0.0:55151] [--count 2] [--channel embedded]`. With the default
//! `--channel embedded` the channel and its directory run in this process (one node); with
//! `--channel HOST:PORT` (a `start_channel` server) or `redis://…` several nodes share rooms,
//! each claiming cluster-unique worker ids. The page on `--web` connects to `--ws-url` (default:
//! `--listen`'s port on the page's own host). `stop`, `status` and `reload` take the same
//! `--listen` and `--web`, and `--channel` when it is not embedded.

use std::sync::Arc;

use werkmann::channel::{self, worker_ids::WorkerIds};
use werkmann::cli;
use werkmann_apps::{chat, push};

/// A chat node.
#[derive(Debug, clap::Args)]
struct Options {
    #[command(flatten)]
    listen: cli::Listen,
    /// Where the chat page is served (HTTP), IP:PORT
    #[arg(long, env = "WERKMANN_WEB", default_value = "0.0.0.0:55151")]
    web: String,
    /// What the page connects to: ws(s)://HOST:PORT or HOST:PORT, comma-separated (the page
    /// tries the next one when its node goes away) [default: --listen; its port on the page's
    /// host when --listen is 0.0.0.0 or [::]]
    #[arg(long, env = "WERKMANN_WS_URL", value_delimiter = ',')]
    ws_url: Vec<String>,
    #[command(flatten)]
    channel: cli::Channel,
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
    } = cli::parse::<cli::App<Options>>(&[
        ("listen", "0.0.0.0:7272"),
        ("count", "2"),
        ("channel", channel::EMBEDDED),
    ]);
    werkmann_apps::init_logging();
    let count = options.listen.count;
    let embedded = options.channel.channel == channel::EMBEDDED;
    if embedded && options.listen.processes {
        anyhow::bail!(
            "--processes needs a channel server (--channel HOST:PORT or redis://…): an embedded \
             channel lives in one process"
        );
    }
    let ids = if command.starts() && !embedded {
        push::claim_ids(&options.channel, count, &[])?
    } else {
        WorkerIds::fixed(0, count)
    };
    let listen = &options.listen.listen;
    let mut ws = chat::node::ws_worker(listen, count, options.channel.clone(), Arc::new(ids))?;
    options.limits.apply(&mut ws);
    ws.processes = options.listen.processes;
    let mut nodes: Vec<String> = options
        .ws_url
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if nodes.is_empty() {
        nodes.push(chat::page::default_node(listen));
    }
    let mut web = chat::page::web_worker(&options.web, &nodes)?;
    let tls = options.tls.load()?;
    ws.tls = tls.clone();
    web.tls = tls;
    let mut workers = vec![ws, web];
    if embedded {
        workers.insert(0, channel::Server::embedded().into_worker());
    }
    command.run(common.with(workers, None)?)
}
