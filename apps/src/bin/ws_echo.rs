//! WebSocket echo server: `ws_echo start --listen 127.0.0.1:9001`.
//! Messages up to 64 MiB, so conformance suites can test large messages; permessage-deflate
//! is negotiated whenever a client offers it, with context takeover (`--ws-compression off`
//! turns it off).

use werkmann::cli;
use werkmann_apps::echo::{echo_worker, Options};

fn main() -> anyhow::Result<()> {
    let app: cli::App<Options> = cli::parse(&[("listen", "127.0.0.1:9001")]);
    werkmann_apps::init_logging();
    let mut worker = echo_worker("websocket", "ws_echo", &app.options)?;
    worker.websocket_compression = app.options.limits.ws_compression.unwrap_or(true);
    // Keep the compressor's context: the conformance suite exercises the longer path.
    worker.websocket_compression_takeover = true;
    worker.max_package_size = 64 * 1024 * 1024;
    worker.max_send_buffer_size = 128 * 1024 * 1024;
    app.command.run(app.common.with([worker], None)?)
}
