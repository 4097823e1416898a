//! werkmann: Workerman, the PHP socket framework, re-imagined in Rust on actix.
//!
//! A [`Worker`] listens on a socket with a protocol (`tcp`, `text`, `frame`, `websocket`,
//! `http`, or a custom one), runs `count` instances — each an actix actor on its own arbiter
//! thread that owns its connection map — and calls the user's callbacks. [`Worker::run_all`]
//! runs the workers under Workerman's command line (`start`, `stop`, `status`, …).
//!
//! See `docs/architecture.md` for the actor layout.

pub mod callbacks;
pub mod channel;
pub mod cli;
pub mod client;
pub mod connection;
pub mod error;
pub mod master;
pub mod message;
pub mod protocol;
mod run;
mod send_queue;
pub mod timer;
pub mod tls;
pub(crate) mod transport;
pub mod worker;

pub use client::AsyncTcpConnection;
pub use connection::{Connection, ConnectionError, SendStatus};
pub use error::Error;
pub use message::Message;
pub use protocol::http::{Request, Response};
pub use timer::{Timer, TimerId};
pub use tls::{ClientTls, ServerTls};
pub use worker::instance::{BroadcastReport, InstanceAddr};
pub use worker::{Worker, WorkerInstance};
