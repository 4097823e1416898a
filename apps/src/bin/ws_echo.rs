//! WebSocket echo server: `ws_echo start --listen 127.0.0.1:9001`.
//! Messages up to 64 MiB, so conformance suites can test large messages.

use werkmann::cli::option;
use werkmann::Worker;

fn main() -> anyhow::Result<()> {
    let listen = option("--listen", "WERKMANN_LISTEN", "127.0.0.1:9001");
    let mut worker = Worker::new(&format!("websocket://{listen}"))?;
    worker.name = "ws_echo".into();
    worker.count = option("--count", "WERKMANN_COUNT", "1").parse()?;
    worker.max_package_size = 64 * 1024 * 1024;
    worker.max_send_buffer_size = 128 * 1024 * 1024;
    worker.on_message(|conn, msg| {
        conn.send(msg);
    });
    Worker::run_all(vec![worker])
}
