//! The channel server of the push cluster, Workerman's `start_channel.php`:
//! `start_channel start [-d] --listen 0.0.0.0:2206`. Wire-compatible with Workerman's Channel
//! server, so PHP Workerman processes can share it. `--secret S` makes clients authenticate
//! (a werkmann extension: PHP clients then cannot connect). `--cert PEM --key PEM` serve it
//! over TLS (clients connect with `--channel tls://HOST:2206`).

use werkmann::channel;
use werkmann::cli;

/// The channel server.
#[derive(Debug, clap::Args)]
struct Options {
    /// Where to listen, IP:PORT
    #[arg(long, env = "WERKMANN_LISTEN", default_value = "0.0.0.0:2206")]
    listen: String,
    /// Clients must authenticate with this secret (their --channel-secret)
    #[arg(long, env = "WERKMANN_CHANNEL_SECRET", hide_env_values = true)]
    secret: Option<String>,
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
    let secret = options.secret.filter(|s| !s.is_empty());
    let workers_secret = secret.clone();
    let mut worker = channel::Server::with_secret(&options.listen, secret)?.into_worker();
    worker.tls = options.tls.load()?;
    command.run(common.with([worker], workers_secret.as_deref())?)
}
