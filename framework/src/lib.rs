//! werkmann: Workerman, the PHP socket framework, re-imagined in Rust on actix.
//!
//! A [`Worker`] listens on a socket with a protocol (`tcp`, `text`, `frame`, `websocket`,
//! `http`, or a custom one), runs `count` instances — each an actix actor on its own arbiter
//! thread that owns its connection map — and calls the user's callbacks. [`Worker::run_all`]
//! runs the workers under Workerman's command line (`start`, `stop`, `status`, …).
//!
//! See `docs/architecture.md` for the actor layout.

#![warn(missing_docs)]

// What a user names: the modules below that stay `pub` hold user-facing types (`connection`:
// `Status`, the defaults; `protocol`: the `Protocol` trait and the codecs the fuzz targets
// drive; `tls`: `ServerTls`, `ClientTls`; `cli`: the command line an app declares with clap;
// `channel`: the channel service), the rest is re-exported at the root.
mod address;
pub mod admin;
mod balance;
pub(crate) mod callbacks;
pub mod channel;
pub mod cli;
mod client;
pub mod connection;
mod error;
pub mod gateway;
mod identity;
mod listener;
mod master;
mod message;
pub mod metrics;
pub mod protocol;
pub mod pusher;
mod revert;
mod run;
mod send_queue;
mod session;
mod signals;
mod start;
mod static_files;
mod status;
mod supervisor;
mod timer;
pub mod tls;
pub(crate) mod transport;
mod udp;
pub mod webhook;
mod worker;

pub use client::AsyncTcpConnection;
pub use connection::{Connection, ConnectionError, ConnectionStats, SendStatus};
/// The `cookie` crate, for [`Response::with_cookie`]: `cookie::time::Duration` for
/// `max_age`, `cookie::Expiration` for `expires`.
pub use cookie;
pub use cookie::{Cookie, SameSite};
pub use error::Error;
pub use message::{
    new_session_id, valid_session_id, Chunk, Message, Param, Request, Response, ServerSentEvent,
    Session, SessionFuture, SessionHandler, Sessions, UploadedFile, Uploads,
};
pub use metrics::rss_bytes;
pub use protocol::{register_protocol, Protocol, ProtocolError};
pub use session::{FileSessionHandler, RedisSessionHandler};
pub use static_files::StaticFiles;
pub use status::Report as StatusReport;
pub use timer::{Timer, TimerId};
pub use tls::{ClientTls, ServerTls};
pub use udp::{AsyncUdpConnection, UdpConnection};
pub use worker::instance::{BroadcastReport, ConnectionInfo, InstanceAddr, InstanceStatus};
pub use worker::{Worker, WorkerInstance};
