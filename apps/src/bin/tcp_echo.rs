//! TCP echo server: `tcp_echo start --listen 127.0.0.1:9004`.

fn main() -> anyhow::Result<()> {
    werkmann_apps::echo::run("tcp", "tcp_echo", "127.0.0.1:9004")
}
