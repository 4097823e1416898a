//! [`SocketId`]: a Pusher connection's id, `{worker id}.{connection id}` — the two numbers
//! that address the connection anywhere in the cluster, as a client id does (`W-C`), so a
//! socket id routes without a look-up.

use std::fmt;
use std::str::FromStr;

use crate::channel::dir::worker_and_conn;

/// A connection's socket id (`"1234.5678"` on the wire: Pusher's `\d+\.\d+`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    /// The cluster worker id of the node instance that holds the connection.
    pub worker: u32,
    /// The connection's id within that instance.
    pub conn: u64,
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.worker, self.conn)
    }
}

impl FromStr for SocketId {
    type Err = String;

    /// Digits, a dot, digits (no sign, no blank, no leading `+`): anything else is refused.
    fn from_str(s: &str) -> Result<SocketId, String> {
        let (worker, conn) = worker_and_conn(s, '.')
            .ok_or_else(|| format!("invalid socket id {s:?} (expected digits.digits)"))?;
        Ok(SocketId { worker, conn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        let id = SocketId {
            worker: 12,
            conn: 1_733_000_000_123,
        };
        assert_eq!(id.to_string(), "12.1733000000123");
        assert_eq!("12.1733000000123".parse::<SocketId>(), Ok(id));
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "1.2.3",
            "-1.2",
            "1.+2",
            " 1.2",
            "a.b",
            "99999999999.1",
        ] {
            assert!(bad.parse::<SocketId>().is_err(), "{bad}");
        }
    }
}
