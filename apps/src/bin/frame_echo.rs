//! Frame echo server: `frame_echo start --listen 127.0.0.1:9003`.

fn main() -> anyhow::Result<()> {
    werkmann_apps::echo::run("frame", "frame_echo", "127.0.0.1:9003")
}
