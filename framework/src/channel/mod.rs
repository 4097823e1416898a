//! The channel service: events between worker instances, processes and machines, wire-compatible
//! with Workerman's Channel (v1.2). [`Server`] holds subscriptions and queues in an actor;
//! [`Client`] subscribes, publishes and watches queues. See `docs/channel.md`.
//!
//! ```no_run
//! use werkmann::{channel, Worker};
//!
//! let server = channel::Server::new("127.0.0.1:2206").unwrap();
//! let mut worker = Worker::new("websocket://127.0.0.1:4236").unwrap();
//! worker.on_worker_start(|w| {
//!     let client = channel::Client::connect("127.0.0.1:2206").unwrap();
//!     let me = w.clone();
//!     client.on("Broadcast", move |data| {
//!         me.broadcast(data["content"].as_str().unwrap_or("").to_string());
//!     });
//!     w.set_data(client);
//! });
//! Worker::run_all(vec![server.into_worker(), worker]);
//! ```

mod auth;
mod backends;
mod broker;
mod client;
pub mod dir;
mod directory;
mod feed;
pub mod history;
mod hub;
mod local;
mod parking;
pub mod php_serde;
mod redis;
pub mod report;
mod routes;
mod server;
mod subscriber;
mod tcp;
pub mod wire;
pub mod worker_ids;

pub use broker::{Endpoint, Options};
pub use client::{Client, PublishStatus, DEFAULT_MAX_PENDING};
pub use feed::{FeedEvent, Feeds, Follow, MAX_HELD};
pub use history::{History, Keep, Page, Position};
pub(crate) use hub::keep_only as keep_hubs;
pub use hub::HubStats;
pub use parking::PARK_AFTER;
pub use php_serde::Key as Name;
pub use server::{Server, EMBEDDED, IDLE_TIMEOUT};

use php_serde::Key;

/// Why ids could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The channel could not be reached in time.
    #[error("channel {addr} unreachable: {why}")]
    Unreachable {
        /// The channel's address.
        addr: String,
        /// The last error.
        why: String,
    },
    /// A pinned id is held by another node.
    #[error("worker ids {0:?} are already held by another node")]
    Clash(Vec<u32>),
}

/// Errors of the channel client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChannelError {
    /// Disconnected and the bounded buffer is full, or the send buffer is full.
    #[error("channel buffer full ({limit} bytes); event not accepted")]
    BufferFull {
        /// The limit in bytes.
        limit: usize,
    },
    /// The client was closed.
    #[error("channel client closed")]
    Closed,
    /// Not connected to the channel now (an acknowledged publish is not buffered).
    #[error("channel not connected")]
    Disconnected,
    /// The connection dropped before the server confirmed: the event may or may not have
    /// been delivered.
    #[error("channel connection lost before the server confirmed delivery")]
    Unconfirmed,
    /// Created outside a worker instance's thread.
    #[error("channel client must be created on a worker thread (e.g. in on_worker_start)")]
    NotOnWorkerThread,
    /// The data cannot be serialized.
    #[error("cannot encode channel data: {0}")]
    Encode(String),
    /// The server address is not usable.
    #[error("bad channel address: {0}")]
    BadAddress(String),
    /// The backend keeps no directory (uids, groups): Workerman's PHP channel server.
    #[error("this channel server keeps no directory (uids, groups); use a werkmann channel server or Redis")]
    NoDirectory,
    /// The backend keeps no history: Workerman's PHP channel server, or an older werkmann one.
    #[error(
        "this channel server keeps no history; use a current werkmann channel server or Redis"
    )]
    NoHistory,
    /// The directory refused the operation (a bad name, a size past a limit).
    #[error("{0}")]
    Refused(String),
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        Key::from_str_normalized(s)
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key::from_str_normalized(&s)
    }
}

impl From<&String> for Key {
    fn from(s: &String) -> Key {
        Key::from_str_normalized(s)
    }
}

macro_rules! int_names {
    ($($t:ty),*) => {$(
        impl From<$t> for Key {
            fn from(i: $t) -> Key {
                Key::Int(i as i64)
            }
        }
    )*};
}
int_names!(i64, i32, u32, u16, usize, u64);

/// One or several event or queue names (Workerman accepts a name or an array of names).
pub trait IntoNames {
    /// The names.
    fn into_names(self) -> Vec<Key>;
}

impl<T: Into<Key>> IntoNames for T {
    fn into_names(self) -> Vec<Key> {
        vec![self.into()]
    }
}

impl<T: Into<Key>> IntoNames for Vec<T> {
    fn into_names(self) -> Vec<Key> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<T: Into<Key>, const N: usize> IntoNames for [T; N] {
    fn into_names(self) -> Vec<Key> {
        self.into_iter().map(Into::into).collect()
    }
}
