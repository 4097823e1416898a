//! The echo examples: one worker that sends every message back, for any protocol.

use werkmann::cli;
use werkmann::Worker;

/// An echo server's options: where to listen, the limits, TLS.
pub type Options = crate::serve::Serve;

/// Run `{scheme}://{--listen}` (default `default_listen`) as the command line says, echoing
/// every message.
pub fn run(scheme: &str, name: &str, default_listen: &'static str) -> anyhow::Result<()> {
    let app: cli::App<Options> = cli::parse(&[("listen", default_listen)]);
    crate::init_logging();
    let worker = echo_worker(scheme, name, &app.options)?;
    app.command.run(app.common.with([worker], None)?)
}

/// The echo worker, for callers that change more settings first.
pub fn echo_worker(scheme: &str, name: &str, options: &Options) -> anyhow::Result<Worker> {
    let mut worker = options.worker(scheme, name)?;
    worker.on_message(|conn, msg| {
        conn.send(msg);
    });
    Ok(worker)
}
