//! [`Server`]: the channel server — a `frame://` worker (one instance) whose subscription and
//! queue state is held by the [`Hub`](super::hub::Hub) actor on that instance's thread.
//!
//! It runs inside any `run_all`, next to other workers, or alone (the `start_channel` app).
//! In-process [`Client`](super::Client)s that connect to the same address use the hub directly.

use std::cell::RefCell;

use actix::Actor;

use super::hub::{self, Hub, HubState, Sink, SubscriberId};
use super::wire::Command;
use crate::error::Error;
use crate::message::Message;
use crate::worker::Worker;

/// The name under which an in-process-only channel registers.
pub const EMBEDDED: &str = "embedded";

/// A channel server, to be run with `Worker::run_all(vec![server.into_worker(), …])`.
pub struct Server {
    worker: Worker,
}

impl Server {
    /// A channel server listening on `listen` (`IP:PORT`, e.g. `0.0.0.0:2206`).
    pub fn new(listen: &str) -> Result<Server, Error> {
        let worker = Worker::new(&format!("frame://{listen}"))?;
        Ok(Server::build(worker, listen))
    }

    /// A channel for this process only (no socket): clients connect with
    /// `Client::connect("embedded")`.
    pub fn embedded() -> Server {
        let worker = Worker::new("").expect("a worker without a socket");
        Server::build(worker, EMBEDDED)
    }

    fn build(mut worker: Worker, name: &str) -> Server {
        hub::declare(name);
        worker.name = "ChannelServer".into();
        worker.count = 1;
        // Subscribers are servers themselves: give them room for bursts.
        worker.max_send_buffer_size = 64 * 1024 * 1024;
        let reg_name = name.to_string();
        worker.on_worker_start(move |w| {
            w.set_data(RefCell::new(HubState::default()));
            let Some(state) = w.data::<RefCell<HubState>>() else {
                return;
            };
            let addr = Hub::new(state).start();
            hub::publish(&reg_name, addr);
            log::info!("channel server {reg_name} ready");
        });
        worker.on_message(|conn, msg| {
            let Some(state) = conn.worker().and_then(|w| w.data::<RefCell<HubState>>()) else {
                return;
            };
            let payload = match msg {
                Message::Binary(b) => b,
                other => bytes::Bytes::copy_from_slice(other.as_bytes()),
            };
            match Command::decode(&payload) {
                Ok(cmd) => {
                    state.borrow_mut().apply(
                        SubscriberId::Tcp(conn.id()),
                        &Sink::Tcp(conn.clone()),
                        cmd,
                    );
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
