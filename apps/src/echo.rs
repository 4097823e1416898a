//! The echo examples: one worker that sends every message back, for any protocol.

use werkmann::cli::option;
use werkmann::Worker;

/// Run `{scheme}://{--listen}` (default `default_listen`) with `--count` instances, echoing
/// every message, over TLS with `--cert PEM --key PEM`; the process's command line decides
/// `start`, `stop`, ….
pub fn run(scheme: &str, name: &str, default_listen: &str) -> anyhow::Result<()> {
    let worker = echo_worker(scheme, name, default_listen)?;
    Worker::run_all(vec![worker])
}

/// The echo worker, for callers that change more settings first.
pub fn echo_worker(scheme: &str, name: &str, default_listen: &str) -> anyhow::Result<Worker> {
    let listen = option("--listen", "WERKMANN_LISTEN", default_listen);
    let mut worker = Worker::new(&format!("{scheme}://{listen}"))?;
    worker.name = name.into();
    worker.count = option("--count", "WERKMANN_COUNT", "1").parse()?;
    werkmann::cli::apply_limits(&mut worker)?;
    worker.tls = crate::tls::server_tls_option()?;
    worker.on_message(|conn, msg| {
        conn.send(msg);
    });
    Ok(worker)
}
