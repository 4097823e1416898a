//! The channel server of the push cluster, Workerman's `start_channel.php`:
//! `start_channel start [-d] --listen 0.0.0.0:2206`. Wire-compatible with Workerman's Channel
//! server, so PHP Workerman processes can share it. `--secret S` makes clients authenticate
//! (a werkmann extension: PHP clients then cannot connect). `--cert PEM --key PEM` serve it
//! over TLS (clients connect with `--channel tls://HOST:2206`).

use clap::Parser;
use werkmann::channel;
use werkmann::cli::{self, Command};

/// The channel server.
#[derive(Debug, Parser)]
#[command(after_help = cli::ENVIRONMENT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where to listen, IP:PORT
    #[arg(
        long,
        env = "WERKMANN_LISTEN",
        global = true,
        default_value = "0.0.0.0:2206"
    )]
    listen: String,
    /// Clients must authenticate with this secret (their --channel-secret)
    #[arg(
        long,
        env = "WERKMANN_CHANNEL_SECRET",
        global = true,
        hide_env_values = true
    )]
    secret: Option<String>,
    #[command(flatten)]
    tls: cli::Tls,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    werkmann_apps::init_logging();
    let secret = cli.secret.filter(|s| !s.is_empty());
    let mut worker = channel::Server::with_secret(&cli.listen, secret)?.into_worker();
    worker.tls = cli.tls.load()?;
    cli.command.run([worker])
}
