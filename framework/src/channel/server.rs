//! [`Server`]: the channel server — a `frame://` worker (one instance) whose subscription and
//! queue state is held by the [`Hub`](super::hub::Hub) actor on that instance's thread.
//!
//! It runs inside any `run_all`, next to other workers, or alone (the `start_channel` app).
//! In-process [`Client`](super::Client)s that connect to the same address use the hub directly.

use std::cell::RefCell;
use std::time::Duration;

use actix::Actor;

use super::auth::Verifier;
use super::hub::{self, Hub, HubState};
use super::php_serde;
use super::subscriber::{Sink, SubscriberId};
use super::wire::{encode_delivery, Command, DeliveryKind, HELLO_PARKING};
use crate::error::Error;
use crate::message::Message;
use crate::metrics::HubMetrics;
use crate::worker::Worker;

/// The name under which an in-process-only channel registers.
pub const EMBEDDED: &str = "embedded";

/// A client connection that sent nothing for this long is closed — a client pings every
/// 55 s (werkmann's `channel::tcp` and Workerman's PHP client alike), so this is two pings
/// missed and a margin — and with it go its subscriptions and the connections it registered
/// in the directory: the bound on how long a node that vanished without closing (a machine
/// lost, a network cut) stays in the directory.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Marks a connection that authenticated.
struct Authenticated;

/// A channel server, to be run with `Worker::run_all(vec![server.into_worker(), …])`.
pub struct Server {
    worker: Worker,
}

impl Server {
    /// A channel server listening on `listen` (`IP:PORT`, e.g. `0.0.0.0:2206`), open to any
    /// client (as Workerman's is); it warns when `listen` is beyond loopback.
    pub fn new(listen: &str) -> Result<Server, Error> {
        Server::with_secret(listen, None)
    }

    /// A channel server whose clients must authenticate with `secret` (see `channel::auth`).
    pub fn with_secret(listen: &str, secret: Option<String>) -> Result<Server, Error> {
        let worker = Worker::new(&format!("frame://{listen}"))?;
        let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
        // A Unix socket is as private as its file's permissions.
        let loopback = crate::listener::unix_path(listen).is_some()
            || host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if secret.is_none() && !loopback {
            log::warn!(
                "channel server on {listen} has no secret: anyone who reaches it can publish \
                 and subscribe (set a secret, or keep the port private)"
            );
        }
        Ok(Server::build(worker, listen, secret))
    }

    /// A channel for this process only (no socket): clients connect with
    /// `Client::connect("embedded")`.
    pub fn embedded() -> Server {
        let worker = Worker::new("").expect("a worker without a socket");
        Server::build(worker, EMBEDDED, None)
    }

    fn build(mut worker: Worker, name: &str, secret: Option<String>) -> Server {
        hub::declare(name);
        worker.hub = Some(name.to_string());
        worker.name = "ChannelServer".into();
        worker.count = 1;
        // Subscribers are servers themselves: give them room for bursts.
        worker.max_send_buffer_size = 64 * 1024 * 1024;
        worker.idle_timeout = Some(IDLE_TIMEOUT);
        let reg_name = name.to_string();
        worker.on_worker_start(move |w| {
            w.set_data(RefCell::new(HubState::default()));
            w.set_data(RefCell::new(Verifier::default()));
            let Some(state) = w.data::<RefCell<HubState>>() else {
                return;
            };
            let routes = state.borrow().routes();
            let metrics = HubMetrics::register(&reg_name);
            let sizes = state.clone();
            let inst = w.clone();
            actix_rt::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    if let Ok(state) = sizes.try_borrow() {
                        state.report(&metrics, |id| {
                            inst.connection(id)
                                .and_then(|c| c.remote_addr())
                                .map(|a| a.to_string())
                        });
                    }
                }
            });
            let addr = Hub::new(state).start();
            hub::publish(&reg_name, hub::HubHandle { addr, routes });
            log::info!("channel server {reg_name} ready");
        });
        worker.on_message(move |conn, msg| {
            let Some(w) = conn.worker() else { return };
            let Some(state) = w.data::<RefCell<HubState>>() else {
                return;
            };
            let payload = match msg {
                Message::Binary(b) => b,
                other => bytes::Bytes::copy_from_slice(other.as_bytes()),
            };
            let decoded = Command::decode_request(&payload);
            if let Some(secret) = &secret {
                if conn.with_data(|_: &mut Authenticated| ()).is_none() {
                    let verdict = match &decoded {
                        Ok((Command::Auth(data), _)) => {
                            let token = php_serde::from_slice(data)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_default();
                            let verifier = w.data::<RefCell<Verifier>>();
                            match verifier {
                                Some(v) => v.borrow_mut().verify(secret, &token),
                                None => Err("no verifier"),
                            }
                        }
                        Ok((Command::Ping, _)) => return,
                        _ => Err("authentication required"),
                    };
                    match verdict {
                        Ok(()) => conn.set_data(Authenticated),
                        Err(why) => {
                            log::warn!(
                                "channel client {} ({}): {why}; closing",
                                conn.id(),
                                conn.remote_ip()
                            );
                            conn.close();
                        }
                    }
                    return;
                }
            }
            match decoded {
                Ok((Command::Hello, _)) => {
                    // This server acknowledges commands that carry an id, keeps a directory
                    // and history, and parks subscriptions (`HELLO_PARKING`).
                    let mut level = Vec::new();
                    php_serde::Key::Int(HELLO_PARKING).write(&mut level);
                    conn.send_raw(encode_delivery(
                        DeliveryKind::Hello,
                        b"s:8:\"werkmann\";",
                        &level,
                    ));
                }
                Ok((cmd, ack)) => {
                    let mut hub = state.borrow_mut();
                    let me = (SubscriberId::Tcp(conn.id()), Sink::Tcp(conn.clone()));
                    let answer = hub.apply(me.0, &me.1, cmd, ack.is_some());
                    if let Some(id) = ack {
                        // The acknowledgement says how many subscribers the event reached (or
                        // carries a directory operation's answer); it leaves when this turn
                        // ends, after the deliveries (TCP subscribers written, in-process ones
                        // sent).
                        let mut raw = Vec::with_capacity(24);
                        php_serde::Key::Int(id).write(&mut raw);
                        let frame = encode_delivery(DeliveryKind::Ack, &raw, &answer.ack_data());
                        hub.ack_later(conn, frame);
                    }
                }
                Err(e) => {
                    log::warn!(
                        "channel client {} ({}): {e}; closing",
                        conn.id(),
                        conn.remote_ip()
                    );
                    conn.close();
                }
            }
        });
        worker.on_close(|conn| {
            if let Some(state) = conn.worker().and_then(|w| w.data::<RefCell<HubState>>()) {
                state.borrow_mut().remove(SubscriberId::Tcp(conn.id()));
            }
        });
        Server { worker }
    }

    /// The worker to pass to `Worker::run_all`.
    pub fn into_worker(self) -> Worker {
        self.worker
    }
}

impl From<Server> for Worker {
    fn from(s: Server) -> Worker {
        s.worker
    }
}
