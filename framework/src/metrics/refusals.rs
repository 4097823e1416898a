//! The last refusals, for the admin page: when, which worker, from where, why. Kept on the
//! refusal path only (a refusal already writes a log line), never on a delivery's.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::reasons::Refused;
use super::sources::lock;

/// How many refusals are kept.
const KEPT: usize = 50;

/// One refused connection.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The worker that refused it.
    pub worker: String,
    /// The peer's address.
    pub peer: String,
    /// Why (`max_connections`, `max_connections_per_ip`, `origin`, `handshake`).
    pub reason: &'static str,
}

fn kept() -> &'static Mutex<VecDeque<Refusal>> {
    static K: OnceLock<Mutex<VecDeque<Refusal>>> = OnceLock::new();
    K.get_or_init(|| Mutex::new(VecDeque::with_capacity(KEPT)))
}

/// Keep a refusal (the oldest goes past [`KEPT`]).
pub(crate) fn note(worker: &str, peer: Option<SocketAddr>, why: Refused) {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut k = lock(kept());
    if k.len() == KEPT {
        k.pop_front();
    }
    k.push_back(Refusal {
        at_ms,
        worker: worker.to_string(),
        peer: peer.map_or_else(|| "-".into(), |p| p.to_string()),
        reason: why.label(),
    });
}

/// The refusals kept, newest first.
pub fn recent() -> Vec<Refusal> {
    lock(kept()).iter().rev().cloned().collect()
}
