//! History on Redis (`channel::history`): per kept name a meta hash (epoch, last offset, ttl)
//! and a stream of its last messages (`OFFSET-0` entries, trimmed to the rule's size, each
//! read only while younger than its ttl), in the cluster slot of the name's event channel so
//! that one script call keeps a publish, gives it its position and publishes it — atomically,
//! so positions reach subscribers in order. Both keys expire when the name goes quiet (the
//! stream after its ttl, the epoch an hour later). Redis keeps them as it persists: a Redis
//! restarted from its RDB or AOF file resumes the same epochs.
//!
//! A kept event travels as `~pEPOCH:OFFSET:` followed by the data (no PHP value starts with
//! `~`, so it is told apart from a plain publish).

use bytes::Bytes;

use super::super::history::{new_epoch, Keep, Position};
use super::bus::Bus;

/// The script (see `history.lua`), sent with `EVAL`: Redis caches it by its digest, and a
/// restarted or flushed Redis needs nothing loaded first.
const SCRIPT: &str = include_str!("history.lua");

/// The meta hash and the stream of the name whose event channel is `channel`, in its slot:
/// `{CHANNEL}:h` and `{CHANNEL}:s`, or `CHANNEL:h`/`CHANNEL:s` when the channel has a hash tag
/// of its own.
fn keys(channel: &str) -> (String, String) {
    let tagged = channel
        .find('{')
        .and_then(|i| channel[i + 1..].find('}').map(|j| j > 0))
        .unwrap_or(false);
    if tagged {
        (format!("{channel}:h"), format!("{channel}:s"))
    } else {
        (format!("{{{channel}}}:h"), format!("{{{channel}}}:s"))
    }
}

/// The call that keeps `data` on the name of `channel` and publishes it with its position;
/// its reply is the publish's (subscriptions reached).
pub(super) fn keep(bus: &Bus, channel: &str, data: &[u8], keep: Keep) -> redis::Cmd {
    let (meta, stream) = keys(channel);
    let mut c = redis::cmd("EVAL");
    c.arg(SCRIPT)
        .arg(2)
        .arg(meta)
        .arg(stream)
        .arg("K")
        .arg(bus.publish_command())
        .arg(channel)
        .arg(data)
        .arg(keep.size)
        .arg(keep.ttl.as_millis() as u64)
        .arg(new_epoch());
    c
}

/// The call that reads the name of `channel` since `since`; its reply is a `history::Page`.
pub(super) fn read(channel: &str, since: Option<Position>) -> redis::Cmd {
    let (meta, stream) = keys(channel);
    let (epoch, offset) = match since {
        Some(p) => (p.epoch.to_string(), p.offset),
        None => (String::new(), 0),
    };
    let mut c = redis::cmd("EVAL");
    c.arg(SCRIPT)
        .arg(2)
        .arg(meta)
        .arg(stream)
        .arg("R")
        .arg(epoch)
        .arg(offset);
    c
}

/// A kept event's position and data (`~pEPOCH:OFFSET:DATA`); a plain event as it came.
pub(super) fn parse_event(payload: Bytes) -> (Option<Position>, Bytes) {
    let Some(rest) = payload.strip_prefix(b"~p") else {
        return (None, payload);
    };
    let parsed = memchr::memchr(b':', rest)
        .and_then(|a| memchr::memchr(b':', &rest[a + 1..]).map(|b| a + 1 + b))
        .and_then(|end| {
            let pos = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
            Some((pos, 2 + end + 1))
        });
    match parsed {
        Some((pos, at)) => (Some(pos), payload.slice(at..)),
        // Not ours after all: as it came (its subscriber will fail to decode it and say so).
        None => (None, payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channels_slot() {
        assert_eq!(
            keys("werkmann:e:news"),
            ("{werkmann:e:news}:h".into(), "{werkmann:e:news}:s".into())
        );
        assert_eq!(
            keys("werkmann:e:{werkmann:dir}x"),
            (
                "werkmann:e:{werkmann:dir}x:h".into(),
                "werkmann:e:{werkmann:dir}x:s".into()
            )
        );
    }

    #[test]
    fn kept_events_are_told_apart() {
        let (pos, data) = parse_event(Bytes::from_static(b"~p12:3:s:1:\"x\";"));
        assert_eq!(
            pos,
            Some(Position {
                epoch: 12,
                offset: 3
            })
        );
        assert_eq!(&data[..], b"s:1:\"x\";");
        let (pos, data) = parse_event(Bytes::from_static(b"i:5;"));
        assert_eq!((pos, &data[..]), (None, &b"i:5;"[..]));
        let (pos, _) = parse_event(Bytes::from_static(b"~p12:x:i:1;"));
        assert_eq!(pos, None);
    }
}
