//! Server-Sent Events on the publisher's port: `GET /sse?channel=NAME` (repeated, or names
//! comma-separated, at most [`MAX_CHANNELS`]) streams the named events to a browser's
//! `EventSource`, resuming after a reconnect from the positions in `Last-Event-ID` (or
//! `?last_event_id=`) through the channel's history (`werkmann::channel::Feeds`).
//!
//! - An event's `data` is the push's `content` (a seed push, `?content=X`, arrives as exactly
//!   X), or the published value as JSON when it has no `content` text. With several names each
//!   event is named after its channel (`event: NAME`); with one it is a plain `message`.
//! - Its `id` is every followed name's position, `EPOCH:OFFSET` comma-separated in the order
//!   of the names (`0:0`: nothing kept yet), so the id the browser sends back resumes them all.
//!   A first `id` is sent as soon as the stream stands, before any event.
//! - A resumed stream first sends `event: recovery` with `{"recovered": bool, "lost": [names]}`:
//!   `recovered` only when everything missed follows (in order, once); a name whose history no
//!   longer covers its position (trimmed, expired, a channel server restarted) is named in
//!   `lost`. A name whose history starts again while followed sends `recovery` with it lost.

use std::fmt::Write as _;
use std::time::Duration;

use werkmann::channel::{php_serde, FeedEvent, Feeds, Follow, Name, Position};
use werkmann::protocol::http::percent_decode;
use werkmann::{Connection, Request, Response, ServerSentEvent};

/// Most names one stream follows.
pub const MAX_CHANNELS: usize = 16;
/// Longest channel name a stream takes.
pub const MAX_NAME: usize = 200;
/// How soon a browser reconnects after the stream drops.
const RETRY: Duration = Duration::from_secs(1);

/// Whether `name` may be followed (or pushed to by name): 1 to [`MAX_NAME`] characters of
/// letters, digits and `_-.:@=`, not an integer (worker ids' events) and not under `werkmann`
/// (the cluster's own).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@=".contains(&b))
        && !matches!(Name::from(name), Name::Int(_))
        && !name.starts_with("werkmann")
}

/// The names a request asks for, or the 400 that says what is wrong.
fn channels(req: &Request) -> Result<Vec<String>, Response> {
    let mut names: Vec<String> = Vec::new();
    for pair in req.query_string().split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k) != "channel" {
            continue;
        }
        let v = percent_decode(v);
        for n in v.split(',') {
            if !valid_name(n) {
                return Err(Response::text(
                    400,
                    format!(
                        "channel {:?}: 1 to {MAX_NAME} of A-Z a-z 0-9 _-.:@=, not a number, \
                         not werkmann…\n",
                        n.chars().take(64).collect::<String>()
                    ),
                ));
            }
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
    }
    match names.len() {
        0 => Err(Response::text(400, "missing channel: /sse?channel=NAME\n")),
        n if n > MAX_CHANNELS => Err(Response::text(
            400,
            format!("{n} channels: at most {MAX_CHANNELS} per stream\n"),
        )),
        _ => Ok(names),
    }
}

/// The positions to resume from: `Last-Event-ID` (or `?last_event_id=`), one per name.
fn resume_from(req: &Request, count: usize) -> Result<Option<Vec<Position>>, Response> {
    let id = req
        .last_event_id()
        .map(str::to_string)
        .or_else(|| req.query().remove("last_event_id"))
        .filter(|s| !s.is_empty());
    let Some(id) = id else { return Ok(None) };
    let positions: Result<Vec<Position>, _> = id.split(',').map(str::parse).collect();
    match positions {
        Ok(p) if p.len() == count => Ok(Some(p)),
        _ => Err(Response::text(
            400,
            format!("Last-Event-ID must be {count} EPOCH:OFFSET position(s), comma-separated\n"),
        )),
    }
}

/// The id of an event: every name's position.
fn id_of(positions: &[Position]) -> String {
    let mut id = String::with_capacity(24 * positions.len());
    for (i, p) in positions.iter().enumerate() {
        if i > 0 {
            id.push(',');
        }
        let _ = write!(id, "{p}");
    }
    id
}

/// An event's data as the browser gets it: the push's `content`, else the value as JSON.
fn data_text(data: &bytes::Bytes) -> String {
    if let Some(text) = php_serde::field(data, "content")
        .ok()
        .and_then(|f| f.text())
    {
        return text;
    }
    php_serde::from_slice(data)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// What a stream keeps on its connection: its registration, dropped when it closes.
pub struct Stream(pub Option<Follow>);

/// Answer `GET /sse`: 400 for bad names or positions, 503 without a connected channel, else
/// the event stream.
pub fn handle(conn: &Connection, req: &Request, feeds: Option<&Feeds>) {
    if req.method() != "GET" && req.method() != "HEAD" {
        conn.send(Response::text(405, "GET /sse?channel=NAME\n").with_header("Allow", "GET"));
        return;
    }
    let names = match channels(req) {
        Ok(n) => n,
        Err(resp) => {
            conn.send(resp);
            return;
        }
    };
    let since = match resume_from(req, names.len()) {
        Ok(s) => s,
        Err(resp) => {
            conn.send(resp);
            return;
        }
    };
    let Some(feeds) = feeds.filter(|f| f.client().is_connected()) else {
        conn.send(Response::text(
            503,
            "channel not connected: no stream now\n",
        ));
        return;
    };
    // Any page may read the stream (no credentials: EventSource's default).
    conn.send(Response::event_stream().with_header("Access-Control-Allow-Origin", "*"));
    if req.method() == "HEAD" {
        return;
    }
    conn.send(ServerSentEvent::comment("werkmann").retry(RETRY));
    let to = conn.clone();
    let labels = names.clone();
    let named = names.len() > 1;
    let keys: Vec<Name> = names.iter().map(Name::from).collect();
    let follow = feeds.follow(keys, since, move |ev| {
        let event = match ev {
            FeedEvent::Ready {
                lost: None,
                positions,
            } => ServerSentEvent::default().id(id_of(positions)),
            FeedEvent::Ready {
                lost: Some(lost),
                positions,
            } => recovery(&labels, &lost, positions),
            FeedEvent::Lost { index, positions } => recovery(&labels, &[index], positions),
            FeedEvent::Message {
                index,
                data,
                positions,
            } => {
                let e = ServerSentEvent::data(data_text(data)).id(id_of(positions));
                if named {
                    e.event(labels[index].clone())
                } else {
                    e
                }
            }
        };
        to.send(event);
    });
    match follow {
        Ok(f) => conn.set_data(Stream(Some(f))),
        Err(e) => {
            log::info!("sse from {}: {e}", conn.remote_ip());
            conn.close();
        }
    }
}

/// `event: recovery` with `{"recovered", "lost"}`.
fn recovery(labels: &[String], lost: &[usize], positions: &[Position]) -> ServerSentEvent {
    let names: Vec<&str> = lost.iter().map(|&i| labels[i].as_str()).collect();
    let body = serde_json::json!({ "recovered": lost.is_empty(), "lost": names });
    ServerSentEvent::data(body.to_string())
        .event("recovery")
        .id(id_of(positions))
}

/// A closed stream's registration goes (its names' subscriptions with the last reader).
pub fn closed(conn: &Connection) {
    let follow = conn.with_data(|s: &mut Stream| s.0.take()).flatten();
    drop(follow);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_may_be_followed() {
        for ok in ["Broadcast", "news", "chat-1", "a.b:c@d=e_f"] {
            assert!(valid_name(ok), "{ok}");
        }
        let long = "x".repeat(MAX_NAME + 1);
        for bad in [
            "",
            "3",
            "-5",
            "a b",
            "a/b",
            "werkmann.gw.x",
            long.as_str(),
            "ä",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn ids_carry_every_position() {
        let p = |e, o| Position {
            epoch: e,
            offset: o,
        };
        assert_eq!(id_of(&[p(5, 2), Position::NONE]), "5:2,0:0");
        assert_eq!(
            data_text(&php_serde::to_vec(&serde_json::json!({"content": "hi\nyo"})).into()),
            "hi\nyo"
        );
        assert_eq!(
            data_text(&php_serde::to_vec(&serde_json::json!([1, 2])).into()),
            "[1,2]"
        );
    }
}
