//! A TCP proxy, the `pipe()` example of Workerman's manual:
//! `tcp_proxy start --listen 127.0.0.1:9040 --to 127.0.0.1:9030`.
//!
//! Each client gets its own connection to `--to`; the two are piped both ways, so a side that
//! does not read makes the other side pause (each connection's send buffer stays bounded), and
//! either side closing closes the other.

use werkmann::{cli, AsyncTcpConnection};
use werkmann_apps::serve::Serve;

/// The proxy's options.
#[derive(Debug, clap::Args)]
struct Options {
    /// Where, how many, limits, TLS.
    #[command(flatten)]
    serve: Serve,
    /// The server to forward to, HOST:PORT (required)
    #[arg(long, env = "WERKMANN_TO")]
    to: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let app: cli::App<Options> = cli::parse(&[("listen", "127.0.0.1:9040")]);
    werkmann_apps::init_logging();
    let o = &app.options;
    let Some(to) = &o.to else {
        anyhow::bail!("--to HOST:PORT (WERKMANN_TO) is required: the server to forward to");
    };
    // Refuse a mistyped target now rather than at the first client.
    let to = format!("tcp://{to}");
    AsyncTcpConnection::new(&to)?;
    let mut worker = o.serve.worker("tcp", "tcp_proxy")?;
    worker.on_connect(move |client| {
        let Ok(remote) = AsyncTcpConnection::new(&to) else {
            client.close();
            return;
        };
        // Nothing is read from the client until the server is there to take it.
        client.pause_recv();
        let c = client.clone();
        remote.on_connect(move |server| {
            c.pipe(server);
            server.pipe(&c);
            c.resume_recv();
        });
        let c = client.clone();
        remote.on_error(move |_, e| {
            log::info!("tcp_proxy: {e}");
            c.close();
        });
        remote.connect();
        // The client's connection holds the outgoing one (the pipes hold each other weakly).
        client.set_data(remote);
    });
    app.command.run(app.common.with([worker], None)?)
}
