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

use std::sync::LazyLock;

use bytes::Bytes;
use redis::Value as RValue;

use super::super::history::{new_epoch, Keep, Position};
use super::super::wire::Command;
use super::bus::Bus;
use super::Outcome;

/// The script (see `history.lua`), called by its digest (`EVALSHA`) and loaded again when a
/// Redis answers `NOSCRIPT` (restarted, flushed, a new cluster node).
static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("history.lua")));

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

/// Most publishes one script call keeps.
const MAX_KEPT_PER_CALL: usize = 64;

/// The call that keeps `data` (one or more publishes, in order) on the name of `channel` and
/// publishes each with its position; its reply lists the publishes' (subscriptions reached).
pub(super) fn keep(bus: &Bus, channel: &str, data: &[&[u8]], keep: Keep) -> redis::Cmd {
    let (meta, stream) = keys(channel);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut c = redis::cmd("EVALSHA");
    c.arg(SCRIPT.get_hash())
        .arg(2)
        .arg(meta)
        .arg(stream)
        .arg("K")
        .arg(bus.publish_command())
        .arg(channel)
        .arg(keep.size)
        .arg(keep.ttl.as_millis() as u64)
        .arg(new_epoch())
        .arg(now_ms);
    for d in data {
        c.arg(*d);
    }
    c
}

/// The call that reads the name of `channel` since `since`; its reply is a `history::Page`.
pub(super) fn read(channel: &str, since: Option<Position>) -> redis::Cmd {
    let (meta, stream) = keys(channel);
    let (epoch, offset) = match since {
        Some(p) => (p.epoch.to_string(), p.offset),
        None => (String::new(), 0),
    };
    let mut c = redis::cmd("EVALSHA");
    c.arg(SCRIPT.get_hash())
        .arg(2)
        .arg(meta)
        .arg(stream)
        .arg("R")
        .arg(epoch)
        .arg(offset);
    c
}

/// Whether a command goes in a batch of history calls (kept publishes and reads).
pub(super) fn is_history(cmd: &Command) -> bool {
    matches!(cmd, Command::PublishKept(..) | Command::History(..))
}

/// Run a batch of history calls as one pipeline: each kept publish's outcome (the
/// subscriptions reached, summed over its names; `None` when a call failed or the connection
/// failed before the messages were surely written) and each read's page. Calls answered
/// `NOSCRIPT` did not run: the script is loaded and they run again, in order.
pub(super) async fn execute(
    bus: &mut Bus,
    batch: &[(Command, Option<u64>)],
    event_channel: impl Fn(&super::Key) -> String,
) -> redis::RedisResult<(Vec<(u64, Outcome)>, bool)> {
    // The calls: consecutive kept publishes to one name (alike kept) share one; a read is
    // one of its own. Each call with the commands it serves, in order.
    struct Call<'a> {
        channel: String,
        keep: Option<Keep>,
        data: Vec<&'a [u8]>,
        since: Option<Position>,
        of: Vec<usize>,
    }
    let mut plan: Vec<Call> = Vec::new();
    for (i, (cmd, _)) in batch.iter().enumerate() {
        match cmd {
            Command::PublishKept(names, data, k) => {
                for n in names {
                    let channel = event_channel(&n.key);
                    match plan.last_mut() {
                        Some(c)
                            if c.keep == Some(*k)
                                && c.channel == channel
                                && c.data.len() < MAX_KEPT_PER_CALL =>
                        {
                            c.data.push(data);
                            c.of.push(i);
                        }
                        _ => plan.push(Call {
                            channel,
                            keep: Some(*k),
                            data: vec![data],
                            since: None,
                            of: vec![i],
                        }),
                    }
                }
            }
            Command::History(name, since) => plan.push(Call {
                channel: event_channel(&name.key),
                keep: None,
                data: Vec::new(),
                since: *since,
                of: vec![i],
            }),
            _ => {}
        }
    }
    let calls: Vec<(String, redis::Cmd)> = plan
        .iter()
        .map(|c| {
            let cmd = match c.keep {
                Some(k) => keep(bus, &c.channel, &c.data, k),
                None => read(&c.channel, c.since),
            };
            (c.channel.clone(), cmd)
        })
        .collect();
    let replies = bus.run_scripts(&calls, &[&SCRIPT]).await?;
    // Per command: the count so far (None once a call failed), or the page.
    let mut reached: Vec<Option<usize>> = vec![Some(0); batch.len()];
    let mut pages: Vec<Option<Bytes>> = vec![None; batch.len()];
    let mut probes: Vec<String> = Vec::new();
    for (reply, call) in replies.into_iter().zip(&plan) {
        let ch = &call.channel;
        match (call.keep, reply) {
            (None, RValue::BulkString(b)) => pages[call.of[0]] = Some(Bytes::from(b)),
            (Some(_), RValue::Array(each)) if each.len() == call.of.len() => {
                for (r, &i) in each.iter().zip(&call.of) {
                    match r {
                        RValue::Int(n) => {
                            if let Some(total) = reached[i].as_mut() {
                                *total += (*n).max(0) as usize;
                            }
                        }
                        other => {
                            log::warn!("redis: kept publish on {ch} failed: {other:?}");
                            reached[i] = None;
                        }
                    }
                }
                if call.of.iter().any(|&i| batch[i].1.is_some()) {
                    probes.push(ch.clone());
                }
            }
            (_, other) => {
                log::warn!("redis: history call on {ch} failed: {other:?}");
                for &i in &call.of {
                    reached[i] = None;
                }
            }
        }
    }
    // As for plain publishes: counted once a later command on the connection was answered.
    // On a single server that is the next batch's (`run_outbound`): the counts go back
    // unproven, and the connection is free for what is queued meanwhile; a cluster probes
    // each channel's node now.
    let single = bus.is_single();
    if !single && !probes.is_empty() && !super::written(bus, probes).await {
        reached.iter_mut().for_each(|r| *r = None);
    }
    let mut outcomes = Vec::new();
    for (i, (cmd, confirm)) in batch.iter().enumerate() {
        let Some(id) = confirm else { continue };
        outcomes.push((
            *id,
            match (cmd, reached[i]) {
                (Command::History(..), _) => Outcome::Answer(pages[i].take()),
                (_, Some(n)) if single => Outcome::Unproven(n),
                (_, n) => Outcome::Reached(n),
            },
        ));
    }
    Ok((outcomes, !calls.is_empty()))
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
