//! Frame echo server: `frame_echo start --listen 127.0.0.1:PORT`.

use werkmann::cli::option;
use werkmann::Worker;

fn main() -> anyhow::Result<()> {
    let listen = option("--listen", "WERKMANN_LISTEN", "127.0.0.1:9003");
    let mut worker = Worker::new(&format!("frame://{listen}"))?;
    worker.name = "frame_echo".into();
    worker.count = option("--count", "WERKMANN_COUNT", "1").parse()?;
    worker.on_message(|conn, msg| {
        conn.send(msg);
    });
    Worker::run_all(vec![worker])
}
