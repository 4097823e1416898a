//! The apps' shared parts: the echo examples (`echo`), and the push cluster of Workerman's
//! manual as werkmann workers (`push`): WebSocket nodes that hold the clients, HTTP publishers
//! that take pushes, a channel between them. The binaries `start_channel`, `start_ws`,
//! `start_http` and `start_all` assemble these pieces.

pub mod auth;
pub mod echo;
pub mod push;
pub mod tls;

/// The apps' allocator: jemalloc returns the pages of freed send queues to the system after
/// its decay time, where glibc's malloc keeps them (docs/reliability.md, "Soak").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
