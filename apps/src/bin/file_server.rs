//! A static file server: `file_server start --listen 127.0.0.1:9030 --root ./public`.
//!
//! Serves the folder's files (`index.html` for a folder; `Content-Type` from the extension,
//! `Last-Modified`/`ETag` with 304s, `Range` with 206/416), read from disk as the client takes
//! them; never anything outside the folder. Other requests get a 404.

use anyhow::Context as _;
use werkmann::{cli, StaticFiles};
use werkmann_apps::serve::Serve;

/// The file server's options.
#[derive(Debug, clap::Args)]
struct Options {
    /// Where, how many, limits, TLS.
    #[command(flatten)]
    serve: Serve,
    /// The folder to serve
    #[arg(long, env = "WERKMANN_ROOT", default_value = ".")]
    root: std::path::PathBuf,
    /// A folder's index file names, in order, comma-separated (empty: none)
    #[arg(
        long,
        env = "WERKMANN_INDEX",
        value_delimiter = ',',
        default_value = "index.html"
    )]
    index: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let app: cli::App<Options> = cli::parse(&[("listen", "127.0.0.1:9030")]);
    werkmann_apps::init_logging();
    let o = &app.options;
    let mut worker = o.serve.worker("http", "file_server")?;
    let index: Vec<&str> = o
        .index
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    let files = StaticFiles::new(&o.root)
        .with_context(|| format!("--root {}", o.root.display()))?
        .index(&index);
    worker.serve_files(files)?;
    app.command.run(app.common.with([worker], None)?)
}
