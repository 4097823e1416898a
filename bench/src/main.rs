//! `pushbench`: the push cluster's load generator and its side-by-side benchmark with Nchan
//! and Socket.IO. `pushbench [all] [--quick] [--out docs/benchmarks.md]` runs every scenario
//! (see `docs/benchmarks.md` for what and how); `pushbench worker` is a generator worker
//! process the coordinator starts itself; `pushbench soak` holds clients under steady pushes
//! for a long time (see `soak.rs`); `pushbench server` measures the framework alone against
//! `bench_server` (see `server.rs`), `pushbench channel` the channel server alone (see
//! `channel.rs`), `pushbench http` static file requests against nginx (see `files.rs`), `pushbench
//! transports` HTTP over Unix sockets and TCP, and UDP echo, against nginx (see `transports.rs`).

mod channel;
mod child;
mod client;
mod clock;
mod faults;
mod files;
mod gateway;
mod gen;
mod hist;
mod http;
mod processes;
mod procfs;
mod proto;
mod pusher;
mod pusher_rows;
mod redis;
mod report;
mod resumer;
mod row;
mod run;
mod server;
mod slow;
mod soak;
mod sse;
mod sse_resumer;
mod sse_rows;
mod systems;
mod transports;
mod worker;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("worker") => worker::main(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(async {
                    match args.first().map(String::as_str) {
                        Some("soak") => soak::main(&args[1..]).await,
                        Some("server") => server::main(&args[1..]).await,
                        Some("channel") => channel::main(&args[1..]).await,
                        Some("http") => files::main(&args[1..]).await,
                        Some("transports") => transports::main(&args[1..]).await,
                        _ => run::main(&args).await,
                    }
                })
            }),
    };
    if let Err(e) = result {
        eprintln!("pushbench: {e:#}");
        std::process::exit(1);
    }
}
