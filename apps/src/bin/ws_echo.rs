//! WebSocket echo server: `ws_echo start --listen 127.0.0.1:9001`.
//! Messages up to 64 MiB, so conformance suites can test large messages.

use werkmann::Worker;

fn main() -> anyhow::Result<()> {
    let mut worker = werkmann_apps::echo::echo_worker("websocket", "ws_echo", "127.0.0.1:9001")?;
    worker.max_package_size = 64 * 1024 * 1024;
    worker.max_send_buffer_size = 128 * 1024 * 1024;
    Worker::run_all(vec![worker])
}
