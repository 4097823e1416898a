//! What the coordinator and its generator worker processes say to each other (one JSON
//! object per line: commands on the worker's stdin, replies on its stdout), and the push
//! payload every server carries from the publisher to the clients.

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::hist::Sparse;

/// Which server a client talks to: how it subscribes and how pushes are framed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// werkmann's push cluster: `GET /`, greeted with its worker and connection id.
    Werkmann,
    /// Nchan: `GET /sub/c{idx}`, multiplexed with the `broadcast` channel; no greeting.
    Nchan,
    /// Socket.IO 4 (Engine.IO 4 over WebSocket): `message` events, greeted like werkmann.
    SocketIo,
    /// The Pusher protocol (werkmann's `/app/{key}`, Soketi): `pusher:connection_established`,
    /// then subscribed to the public channel `bench`; pushes are its events' data.
    Pusher,
    /// [`Flavor::Pusher`] subscribed to the presence channel `presence-bench` as user
    /// `u{idx}` instead.
    PusherPresence,
    /// Server-Sent Events from werkmann's publisher: `GET /sse?channel=Broadcast` (chunked);
    /// pushes are the events' `data`, broadcast with the seed API (`sse.rs`).
    Sse,
    /// Server-Sent Events from Nchan: `GET /ssesub/broadcast` as an EventSource subscriber
    /// (a plain body until the connection closes); pushes `POST /ssepub/broadcast`.
    NchanSse,
}

impl Flavor {
    /// Whether clients of this flavor read Server-Sent Events (not WebSocket frames).
    pub fn is_sse(self) -> bool {
        matches!(self, Flavor::Sse | Flavor::NchanSse)
    }
}

/// What a measurement phase sends.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Readiness broadcasts: every client must see one before a measurement starts.
    Warm,
    /// Broadcasts with sequence numbers 0..m: every client must get each exactly once.
    Broadcast,
    /// Targeted pushes 0..m: each to the one client it names.
    Targeted,
    /// Pushes 0..m to a uid (`send_to_uid`): each to the `per` clients bound to the uid it
    /// names (client `i` is bound to uid `i / per`).
    Uid,
    /// Pushes 0..m to a group (`send_to_group`): each to every member of the group it names
    /// (client `i` is a member of group `i / per`).
    Group,
}

impl Kind {
    fn tag(self) -> char {
        match self {
            Kind::Warm => 'w',
            Kind::Broadcast => 'b',
            Kind::Targeted => 't',
            Kind::Uid => 'u',
            Kind::Group => 'g',
        }
    }
}

/// A command to a worker process.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Cmd {
    /// Open clients `first..first + n` (global indexes) as group `group`; client `i` connects
    /// to `targets[i % targets.len()]` from source address 127.0.0.(2 + i % 253).
    Open {
        /// The group, for a later `Close`.
        group: u32,
        /// The server kind.
        flavor: Flavor,
        /// WebSocket endpoints.
        targets: Vec<SocketAddr>,
        /// The first global client index.
        first: u32,
        /// How many clients.
        n: u32,
        /// Handshakes in flight at once.
        concurrency: u32,
        /// Slow clients: a small receive buffer, and once greeted they never read again
        /// (they only send a ping now and then, to notice when the server dropped them).
        #[serde(default)]
        slow: bool,
    },
    /// Start phase `id`: forget what earlier phases counted.
    Phase {
        /// The phase id carried in every push of the phase.
        id: u32,
        /// What the phase sends.
        kind: Kind,
        /// Number of sequence numbers in the phase.
        m: u32,
        /// Uid and group phases: clients per uid (devices) or per group; client `i` belongs
        /// to uid or group `i / per`.
        #[serde(default = "one")]
        per: u32,
    },
    /// Counters so far.
    Progress,
    /// Counters, missing deliveries and the latency histogram of the phase.
    Report,
    /// Close every client of a group.
    Close {
        /// The group.
        group: u32,
    },
    /// The clients whose connection the server closed (or reset) so far.
    Drops,
    /// Exit.
    Quit,
}

fn one() -> u32 {
    1
}

/// How a client is addressed by targeted pushes: the greeting's worker and connection ids
/// (werkmann, Socket.IO) or the channel it chose (Nchan: worker is empty).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Address {
    /// The client's global index.
    pub idx: u32,
    /// `Worker-ID` of the greeting.
    pub worker: String,
    /// `Verbindungs-ID` of the greeting, or the Nchan channel id.
    pub conn: String,
}

/// Counters of the current phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Progress {
    /// Correct deliveries.
    pub received: u64,
    /// Clients that saw a warm-up push of the current warm phase.
    pub warm: u64,
    /// Pushes of another (non warm-up) phase.
    pub stray: u64,
    /// A sequence number delivered a second time.
    pub dup: u64,
    /// A targeted push at a client it does not name.
    pub wrong: u64,
    /// Frames that are not a push at all (or out of range).
    pub bad: u64,
    /// Server-Sent Events whose `id` is not after the stream's previous one.
    #[serde(default)]
    pub out_of_order: u64,
    /// The last correct delivery, `CLOCK_MONOTONIC` ns.
    pub last_ns: u64,
}

/// Everything a worker knows about the phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Report {
    /// The counters.
    pub progress: Progress,
    /// Broadcast phases: (sequence numbers × clients) not received.
    pub missing: u64,
    /// Latency of every correct delivery.
    pub hist: Sparse,
    /// Open clients.
    pub clients: u64,
}

/// A worker's answer to one command.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// To `Open`.
    Opened {
        /// Clients connected and greeted.
        opened: u32,
        /// Clients that failed.
        failed: u32,
        /// The first failure.
        first_error: Option<String>,
        /// Addresses of the opened clients.
        addrs: Vec<Address>,
    },
    /// To `Phase`.
    Ack,
    /// To `Progress`.
    Progress(Progress),
    /// To `Report`.
    Report(Report),
    /// To `Close`.
    Closed {
        /// Clients closed.
        closed: u32,
    },
    /// To `Drops`: (client index, `CLOCK_MONOTONIC` ns when its closed connection was seen).
    Drops {
        /// Every client that lost its connection, in the order they were seen.
        drops: Vec<(u32, u64)>,
    },
    /// A command failed.
    Error {
        /// Why.
        message: String,
    },
}

/// A push as the clients parse it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Push {
    /// The phase it belongs to.
    pub phase: u32,
    /// What kind of push.
    pub kind: Kind,
    /// Its sequence number in the phase.
    pub seq: u32,
    /// For targeted pushes, the global index of the client it is for; for uid and group
    /// pushes, the uid's or group's number.
    pub target: u32,
    /// When the publisher sent it, `CLOCK_MONOTONIC` ns.
    pub sent_ns: u64,
}

/// The content of a push: `P{phase}.{kind}{seq}.{target}.{sent_ns}.` padded with `x` to
/// `size` bytes (URL-safe, so it goes into a query string as it is).
pub fn payload(phase: u32, kind: Kind, seq: u32, target: u32, sent_ns: u64, size: usize) -> String {
    let mut s = String::with_capacity(size.max(48));
    let _ = write!(s, "P{phase}.{}{seq}.{target}.{sent_ns}.", kind.tag());
    while s.len() < size {
        s.push('x');
    }
    s
}

fn number(b: &[u8]) -> Option<(u64, &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut v = 0u64;
    for c in &b[..digits] {
        v = v * 10 + u64::from(c - b'0');
    }
    Some((v, &b[digits..]))
}

/// Parse a push payload (see [`payload`]).
pub fn parse_push(b: &[u8]) -> Option<Push> {
    let b = b.strip_prefix(b"P")?;
    let (phase, b) = number(b)?;
    let b = b.strip_prefix(b".")?;
    let (kind, b) = match b.first()? {
        b'w' => (Kind::Warm, &b[1..]),
        b'b' => (Kind::Broadcast, &b[1..]),
        b't' => (Kind::Targeted, &b[1..]),
        b'u' => (Kind::Uid, &b[1..]),
        b'g' => (Kind::Group, &b[1..]),
        _ => return None,
    };
    let (seq, b) = number(b)?;
    let b = b.strip_prefix(b".")?;
    let (target, b) = number(b)?;
    let b = b.strip_prefix(b".")?;
    let (sent_ns, b) = number(b)?;
    b.strip_prefix(b".")?;
    Some(Push {
        phase: u32::try_from(phase).ok()?,
        kind,
        seq: u32::try_from(seq).ok()?,
        target: u32::try_from(target).ok()?,
        sent_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let p = payload(7, Kind::Targeted, 123, 9999, 1_234_567_890_123, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(
            parse_push(p.as_bytes()),
            Some(Push {
                phase: 7,
                kind: Kind::Targeted,
                seq: 123,
                target: 9999,
                sent_ns: 1_234_567_890_123
            })
        );
        assert_eq!(
            parse_push(b"Worker-ID:0 Verbindungs-ID:1 verbunden\n"),
            None
        );
        assert_eq!(parse_push(b"P1.b2.3"), None);
        for kind in [Kind::Uid, Kind::Group] {
            let p = payload(2, kind, 5, 17, 99, 64);
            assert_eq!(
                parse_push(p.as_bytes()).map(|p| (p.kind, p.target)),
                Some((kind, 17))
            );
        }
    }
}
