//! The push system of Workerman's manual, as werkmann workers. The manual's three scripts are
//! three binaries here, each a few lines over these pieces:
//!
//! | Workerman            | werkmann                         | what                               |
//! |----------------------|----------------------------------|------------------------------------|
//! | `start_channel.php`  | `start_channel`                  | the channel server                 |
//! | `start_ws.php`       | `start_ws`, [`ws::ws_worker`]    | WebSocket nodes holding the clients |
//! | `start_http.php`     | `start_http`, [`http::http_worker`] | HTTP publishers taking pushes    |
//!
//! - WebSocket instance `i` of a node holds cluster-unique worker id `ids[i]`; it subscribes to
//!   that id and to [`BROADCAST`], greets each client with [`greeting`], delivers
//!   `{to_connection_id, content}` events to one of its connections and `Broadcast` events to
//!   all.
//! - The HTTP publisher takes `content`, `to_worker_id`, `to_connection_id` from the query, a
//!   form or a JSON body ([`params`]) and publishes them, answering once the channel confirms;
//!   `GET /` without parameters serves the demo page ([`page`]).

pub mod api;
pub mod apps;
pub mod delivery;
pub mod http;
pub mod page;
pub mod params;
pub mod report;
pub mod resume;
pub mod sse;
pub mod stream;
pub mod ws;

use werkmann::channel::worker_ids::{self, WorkerIds};
use werkmann::cli;

/// Whether WebSocket nodes announce their clients' presence (`werkmann::gateway::presence`):
/// `online`/`offline` per uid and `join`/`leave` per group, once cluster-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PresenceEvents {
    /// Nothing announced (the default: it costs a directory operation per bind and join).
    #[default]
    Off,
    /// Announced as events (`/sse?channel=presence:uids`, `presence:group:NAME`).
    On,
    /// Announced, and queued for the publishers' `--presence-webhook`.
    Hooks,
}

/// The event every WebSocket instance subscribes to for broadcasts.
pub const BROADCAST: &str = "Broadcast";

/// The greeting a client receives on connect.
pub fn greeting(worker_id: u32, connection_id: u64) -> String {
    format!("Worker-ID:{worker_id} Verbindungs-ID:{connection_id} verbunden\n")
}

/// Claim `count` cluster-unique worker ids through the channel (see
/// `werkmann::channel::worker_ids`), or use the `pinned` ones (`--worker-ids`).
pub fn claim_ids(
    channel: &cli::Channel,
    count: usize,
    pinned: &[u32],
) -> anyhow::Result<WorkerIds> {
    let pinned = if pinned.is_empty() {
        None
    } else if pinned.len() != count {
        anyhow::bail!(
            "--worker-ids names {} ids for --count {count}",
            pinned.len()
        );
    } else {
        Some(pinned.to_vec())
    };
    let timeout = std::time::Duration::from_secs(30);
    Ok(worker_ids::claim(
        &channel.channel,
        &channel.options(),
        count,
        pinned,
        timeout,
    )?)
}

/// The verifier of client tokens for a secret (none without one, or with an empty one).
pub fn tokens(secret: Option<&str>) -> Option<werkmann::gateway::Tokens> {
    secret
        .filter(|s| !s.is_empty())
        .map(|s| werkmann::gateway::Tokens::hs256(s.as_bytes()))
}

/// Start instance `w` of a WebSocket worker as a gateway node: instance 0 starts holding the
/// node's worker ids, the instance connects to the channel and registers its connections as
/// worker `ids[w.id()]` (`werkmann::gateway`). `None` (logged) without a channel.
pub fn start_node(
    w: &werkmann::WorkerInstance,
    channel: &cli::Channel,
    ids: &WorkerIds,
    what: &str,
) -> Option<(werkmann::channel::Client, u32)> {
    if w.id() == 0 {
        ids.answer();
    }
    let my_id = ids.ids()[w.id()];
    match channel.connect() {
        Ok(client) => {
            werkmann::gateway::Gateway::node(&client, w, my_id);
            Some((client, my_id))
        }
        Err(e) => {
            log::error!("{what} {my_id}: no channel: {e}");
            None
        }
    }
}

/// The claims of a request's `?token=` (none without one), or the 401 refusing it (logged).
pub fn verify_token(
    conn: &werkmann::Connection,
    req: &werkmann::Request,
    tokens: Option<&werkmann::gateway::Tokens>,
) -> Result<Option<werkmann::gateway::Claims>, werkmann::Response> {
    let Some(token) = req.get("token") else {
        return Ok(None);
    };
    let verified = match tokens {
        Some(t) => t.verify(&token).map_err(|e| e.to_string()),
        None => Err("token given but none is verified here (no --secret)".into()),
    };
    verified.map(Some).map_err(|why| {
        log::warn!("client {} refused: {why}", conn.remote_ip());
        werkmann::Response::text(401, format!("{why}\n"))
    })
}

/// Whether `IP:PORT` names a loopback address.
pub fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
