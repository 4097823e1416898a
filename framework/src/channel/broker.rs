//! The broker seam: what a [`Client`](super::Client) needs of the engine that carries its
//! events, whichever it is. One implementation per backend, each in its own file:
//!
//! | backend | file | address |
//! |---|---|---|
//! | this process's hub (embedded), with the direct path that skips it | `local.rs` | `embedded`, or a server declared in this process |
//! | a channel server over TCP (Workerman's wire and werkmann's extensions) | `tcp.rs` | `IP:PORT`, `tls://HOST:PORT` |
//! | Redis, a single server or a Cluster | `redis/` | `redis://…`, `rediss://…` |
//!
//! The client keeps what is the same everywhere — the callbacks, the subscriptions it
//! re-sends after a reconnect, what it holds while disconnected — and a broker keeps what is
//! its own: connecting and reconnecting, framing, confirmations, keep-alives. A broker tells
//! the client what happens through [`BrokerEvents`] (centrifuge's `BrokerEventHandler`).
//!
//! A fourth backend (NATS, say) is a new file with a type that implements [`Broker`] (and
//! [`Leases`] if it can hold worker ids itself), plus one arm in [`Endpoint::parse`] and
//! one in `backends::open`.

use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;

use super::wire::{Command, Delivery};
use super::ChannelError;
use super::ClaimError;

/// How a confirmed publish went: `Ok(Some(n))` reached `n` subscribers, `Ok(None)` handed over
/// to a server that does not confirm (a PHP channel server), or why it is not known.
pub(crate) type Confirm = Box<dyn FnOnce(Result<Option<usize>, ChannelError>)>;

/// Told the answer to a directory operation (its JSON), or why there is none.
pub(crate) type Reply = Box<dyn FnOnce(Result<Bytes, ChannelError>)>;

/// Told the worker ids a claim got, or why it failed.
pub(crate) type ClaimDone = Box<dyn FnOnce(Result<Vec<u32>, ClaimError>)>;

/// Settings of a channel client, passed in by the app (nothing is read from the environment).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The channel server's secret (a werkmann extension, see `channel::auth`); not used for
    /// Redis (put a password in its URL) nor in-process.
    pub secret: Option<String>,
    /// A PEM file of the private CA that signed the server's certificate, for `tls://` channel
    /// servers and `rediss://`; without it the system's roots are trusted.
    pub tls_ca: Option<PathBuf>,
    /// Which names this client's publishes keep in history (`channel::history`); none by
    /// default.
    pub history: super::history::History,
}

/// Where a client's events go, as its address says; the one place that reads an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A channel hub in this process, by the name its server was declared with.
    Local(String),
    /// A channel server: `HOST:PORT`, over TLS when `tls`.
    Tcp {
        /// `HOST:PORT`.
        addr: String,
        /// `tls://HOST:PORT`.
        tls: bool,
    },
    /// Redis (`redis://…` or `rediss://…`), a single server or a Cluster.
    Redis(String),
}

impl Endpoint {
    /// Read an address: `redis://…`/`rediss://…`, `embedded` or the address of a server running
    /// in this process, `tls://HOST:PORT`, else `[channel://|frame://]HOST:PORT`.
    pub fn parse(addr: &str) -> Result<Endpoint, ChannelError> {
        let addr = addr.trim();
        if addr.starts_with("redis://") || addr.starts_with("rediss://") {
            return Ok(Endpoint::Redis(addr.to_string()));
        }
        let plain = addr
            .trim_start_matches("channel://")
            .trim_start_matches("frame://")
            .trim_end_matches('/');
        if super::hub::lookup(plain).is_some() {
            return Ok(Endpoint::Local(plain.to_string()));
        }
        let (host_port, tls) = match plain.strip_prefix("tls://") {
            Some(rest) => (rest, true),
            None => (plain, false),
        };
        if crate::listener::unix_path(host_port).is_some_and(|p| p.is_absolute()) {
            return Ok(Endpoint::Tcp {
                addr: host_port.to_string(),
                tls,
            });
        }
        match host_port.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Endpoint::Tcp {
                    addr: host_port.to_string(),
                    tls,
                })
            }
            _ => Err(ChannelError::BadAddress(format!(
                "{addr:?} is not HOST:PORT, tls://HOST:PORT, unix:/PATH, redis://…, or a \
                 channel of this process"
            ))),
        }
    }

    /// The address as shown in logs and errors (a Redis URL without its password).
    pub fn shown(&self) -> String {
        match self {
            Endpoint::Local(name) => name.clone(),
            Endpoint::Tcp { addr, tls: false } => addr.clone(),
            Endpoint::Tcp { addr, tls: true } => format!("tls://{addr}"),
            Endpoint::Redis(url) => redact(url),
        }
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`: URLs in logs keep no password.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}

/// What a broker tells its client. Called on the client's thread.
pub(crate) trait BrokerEvents {
    /// Connected (again): the client re-subscribes, re-watches and sends what it held.
    fn up(&self);
    /// The connection was lost; the broker reconnects by itself. Confirmations it was waiting
    /// for were answered `Unconfirmed` before this.
    fn down(&self);
    /// An event or a queue item for this client.
    fn delivery(&self, d: Delivery);
    /// The backend forgot what this client registered in the directory while it stayed
    /// connected (Redis swept a worker whose alive key had expired): the client runs its
    /// reconnect hooks again, so a gateway node registers its connections again.
    fn registrations_lost(&self) {}
}

/// A backend as its client uses it. Lives on the client's thread.
pub(crate) trait Broker {
    /// Hand a command over (the client calls this only while up, in order).
    fn send(&self, cmd: Command) -> Result<(), ChannelError>;
    /// Publish (`cmd` is a publish) and tell `done` how many subscribers it reached. Answered
    /// `Disconnected` at once when it cannot be sent now; never sent twice.
    fn publish_confirmed(&self, cmd: Command, done: Confirm);
    /// Apply a directory operation (`cmd` is a [`Command::Dir`], see `channel::dir`) and tell
    /// `done` the directory's answer (JSON; `{"error": …}` when it refused the operation).
    /// Answered `Disconnected` at once when it cannot be sent now, `NoDirectory` by a
    /// backend without one (Workerman's PHP channel server); never sent twice.
    /// A directory operation that needs no answer (a node registering its connections) goes
    /// through [`Broker::send`] in order with the rest.
    fn request(&self, cmd: Command, done: Reply) {
        let _ = cmd;
        done(Err(ChannelError::NoDirectory))
    }
    /// Worker ids, when this backend keeps them itself; `None`: they are agreed on over
    /// pub/sub (`channel::worker_ids`).
    fn leases(&self) -> Option<Rc<dyn Leases>> {
        None
    }
    /// Whether subscriptions can be parked here ([`Command::Park`]): a werkmann hub, in this
    /// process or a server that answered the hello. Redis cannot (a publish counts only the
    /// subscriptions it sends to), nor a PHP server.
    fn parks(&self) -> bool {
        false
    }
    /// Disconnect for good: what was handed over still goes out where the backend can.
    fn close(&self);
}

/// Worker ids held by a backend with a store of its own (Redis: keys with an expiry).
pub(crate) trait Leases {
    /// Take `count` free ids (the lowest), or exactly `pinned`, for `node`, and keep them
    /// for as long as this broker runs.
    fn claim(&self, node: &str, count: usize, pinned: Option<Vec<u32>>, done: ClaimDone);
    /// Keep ids taken before (by this node in a process it forked from) for as long as this
    /// broker runs.
    fn hold(&self, node: &str, ids: Vec<u32>);
    /// Give the ids up now (rather than let them expire); `done` once that is done or failed.
    fn release(&self, node: &str, ids: Vec<u32>, done: Box<dyn FnOnce()>);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("redis://u:pw@h:1"), "redis://u:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn addresses_name_their_backend() {
        assert_eq!(
            Endpoint::parse("redis://:pw@127.0.0.1:6379/0").unwrap(),
            Endpoint::Redis("redis://:pw@127.0.0.1:6379/0".into())
        );
        assert_eq!(
            Endpoint::parse("rediss://h:1").unwrap().shown(),
            "rediss://h:1"
        );
        assert_eq!(
            Endpoint::parse("channel://127.0.0.1:2206/").unwrap(),
            Endpoint::Tcp {
                addr: "127.0.0.1:2206".into(),
                tls: false
            }
        );
        assert_eq!(
            Endpoint::parse("tls://ch.example:2206").unwrap(),
            Endpoint::Tcp {
                addr: "ch.example:2206".into(),
                tls: true
            }
        );
        assert!(Endpoint::parse("127.0.0.1").is_err());
        assert!(Endpoint::parse("127.0.0.1:99999").is_err());
        assert!(Endpoint::parse("").is_err());
        assert!(Endpoint::parse("embeded").is_err());
    }
}
