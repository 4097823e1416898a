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

pub mod auth;
pub mod client;
pub mod hub;
pub mod php_serde;
pub mod redis;
mod routes;
pub mod server;
pub mod wire;
#[path = "worker_ids.rs"]
mod worker_ids_impl;

pub use client::{Client, PublishStatus};
pub use php_serde::Key as Name;
pub use server::Server;

// stand-in: channel::Options, until the integrator's typed options land (replaced at merge).
// It hands the options to today's client, which reads the secret and the CA from the
// environment; nothing below is meant to stay.

/// How a channel client connects (stand-in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The channel server's secret.
    pub secret: Option<String>,
    /// A PEM file of the private CA that signed the channel server's certificate.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl Options {
    fn install(&self) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if let Some(ca) = &self.tls_ca {
                std::env::set_var(crate::tls::CA_ENV, ca);
            }
            if let Some(secret) = &self.secret {
                std::env::set_var("WERKMANN_CHANNEL_SECRET", secret);
            }
        });
    }
}

impl Client {
    /// Connect with these [`Options`] (stand-in).
    pub fn connect_with(addr: &str, options: &Options) -> Result<Client, ChannelError> {
        options.install();
        Client::connect_with_secret(addr, options.secret.as_deref())
    }
}

/// Cluster-unique worker ids (stand-in for the options-taking `claim`).
pub mod worker_ids {
    pub use super::worker_ids_impl::*;

    /// Claim `count` cluster-unique ids through the channel at `addr`, or exactly `pinned`.
    pub fn claim(
        addr: &str,
        options: &super::Options,
        count: usize,
        pinned: Option<Vec<u32>>,
        timeout: std::time::Duration,
    ) -> Result<WorkerIds, ClaimError> {
        options.install();
        super::worker_ids_impl::claim(addr, count, pinned, timeout)
    }
}

use php_serde::Key;

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
