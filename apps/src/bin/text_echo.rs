//! Text echo server: `text_echo start --listen 127.0.0.1:9002`.

fn main() -> anyhow::Result<()> {
    werkmann_apps::echo::run("text", "text_echo", "127.0.0.1:9002")
}
