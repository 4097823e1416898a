//! The echo examples: one worker that sends every message back, for any protocol.

use werkmann::cli::{self, Command};
use werkmann::Worker;

/// An echo server: every message goes back to its sender.
#[derive(Debug, clap::Parser)]
#[command(after_help = cli::ENVIRONMENT)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Where and how many.
    #[command(flatten)]
    pub listen: cli::Listen,
    /// The limits.
    #[command(flatten)]
    pub limits: cli::Limits,
    /// Serve TLS.
    #[command(flatten)]
    pub tls: cli::Tls,
}

/// Run `{scheme}://{--listen}` (default `default_listen`) as the command line says, echoing
/// every message.
pub fn run(scheme: &str, name: &str, default_listen: &'static str) -> anyhow::Result<()> {
    let cli: Cli = cli::parse(&[("listen", default_listen)]);
    crate::init_logging();
    let worker = echo_worker(scheme, name, &cli)?;
    cli.command.run([worker])
}

/// The echo worker, for callers that change more settings first.
pub fn echo_worker(scheme: &str, name: &str, cli: &Cli) -> anyhow::Result<Worker> {
    let mut worker = Worker::new(&format!("{scheme}://{}", cli.listen.listen))?;
    worker.name = name.into();
    worker.count = cli.listen.count;
    cli.limits.apply(&mut worker);
    worker.tls = cli.tls.load()?;
    worker.on_message(|conn, msg| {
        conn.send(msg);
    });
    Ok(worker)
}
