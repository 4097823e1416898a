//! The apps' shared parts: the example servers' common options (`serve`), the echo examples (`echo`), the push cluster of Workerman's
//! manual as werkmann workers (`push`): WebSocket nodes that hold the clients, HTTP publishers
//! that take pushes, a channel between them; and workerman-chat on the cluster directory
//! (`chat`). The binaries `start_channel`, `start_ws`, `start_http`, `start_all` and
//! `start_chat` assemble these pieces.

pub mod auth;
pub mod chat;
pub mod echo;
pub mod push;
pub mod serve;

/// The apps' allocator: jemalloc returns the pages of freed send queues to the system after
/// its decay time, where glibc's malloc keeps them (docs/reliability.md, "Soak").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Log to stderr through env_logger (`RUST_LOG`, default `info`), with millisecond
/// timestamps; a daemon's stderr is its log file. The library never sets up a logger: this is
/// the apps' choice.
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .try_init();
}
