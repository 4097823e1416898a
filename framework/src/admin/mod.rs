//! The admin port: Prometheus metrics (`GET /metrics`, see [`crate::metrics`]) and an admin
//! page (`GET /admin`: this node's workers, connections, throughput over the last ten
//! minutes, the hub's nodes, directory, presence and history sizes, recent refusals), served
//! by actix-web on a port of its own, off the hot path.
//!
//! Off by default. On a loopback address it needs no secret; on any other it refuses to
//! start without one, and then every request must carry `Authorization: Bearer SECRET` (what
//! Prometheus' `authorization` setting sends) or HTTP Basic auth with SECRET as the password
//! (what a browser asks for).
//!
//! ```no_run
//! # fn main() -> Result<(), werkmann::Error> {
//! let admin = werkmann::admin::Admin::new("127.0.0.1:9100", None)?;
//! let ws = werkmann::Worker::new("websocket://0.0.0.0:4236")?;
//! werkmann::Worker::run_all(vec![ws, admin.into_worker()?]);
//! # }
//! ```

mod auth;
mod series;
mod server;

use std::net::ToSocketAddrs;
use std::sync::Arc;

use crate::error::Error;
use crate::worker::Worker;

/// The admin port's settings: where it listens and the secret it asks for.
#[derive(Debug, Clone)]
pub struct Admin {
    listen: String,
    secret: Option<String>,
}

impl Admin {
    /// Serve on `listen` (`IP:PORT`); `secret` is required unless every address `listen`
    /// resolves to is a loopback one (an empty secret counts as none).
    pub fn new(listen: &str, secret: Option<&str>) -> Result<Admin, Error> {
        let addrs: Vec<_> = listen
            .to_socket_addrs()
            .map_err(|e| Error::Config(format!("metrics address {listen:?}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(Error::Config(format!(
                "metrics address {listen:?} resolves to no address"
            )));
        }
        let secret = secret.filter(|s| !s.is_empty()).map(str::to_string);
        if secret.is_none() && addrs.iter().any(|a| !a.ip().is_loopback()) {
            return Err(Error::Config(format!(
                "metrics on {listen} (not a loopback address) need a secret: give one, or \
                 listen on 127.0.0.1"
            )));
        }
        Ok(Admin {
            listen: listen.to_string(),
            secret,
        })
    }

    /// The worker that serves it: add it to the app's workers. It binds (and is passed on by
    /// a `reload`) like any worker's socket, and shows in `status` as `admin`.
    pub fn into_worker(self) -> Result<Worker, Error> {
        let mut w = Worker::new(&format!("tcp://{}", self.listen))?;
        w.name = "admin".into();
        w.count = 1;
        let config = Arc::new(self);
        w.serve = Some(Arc::new(move |listener| {
            server::run(listener, config.clone())
        }));
        Ok(w)
    }
}
