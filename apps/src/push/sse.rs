//! Server-Sent Events on the publisher's port: `GET /sse?channel=NAME` (repeated, or names
//! comma-separated, at most [`MAX_CHANNELS`](super::resume::MAX_CHANNELS)) streams the named
//! events to a browser's `EventSource`, resuming after a reconnect from the positions in
//! `Last-Event-ID` (or `?last_event_id=`) through the channel's history
//! (`werkmann::channel::Feeds`).
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
//! - `?token=JWT` (the WebSocket nodes' tokens, HS256 with the push secret) makes the stream one
//!   of the cluster's clients: `event: welcome` gives its client id, it is bound to the token's
//!   uid and groups (presence events announce it), and what is sent to it (`send_to_uid`,
//!   `send_to_group`, `send_to_client`, …) arrives as `event: direct`. A bad token is a 401.

use std::time::Duration;

use werkmann::channel::{Feeds, Follow, Name};
use werkmann::gateway::{Gateway, Tokens};
use werkmann::{Chunk, Connection, Request, Response, ServerSentEvent};

use super::resume::{channels, data_text, id_of, positions, step, Shared, Step};

/// How soon a browser reconnects after the stream drops.
const RETRY: Duration = Duration::from_secs(1);

thread_local! {
    /// The last event encoded on this thread, for the next stream at the same place.
    static FRAMES: Shared<Chunk> = const { Shared::new() };
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
    let names = match channels(req.query_string()) {
        Ok(n) => n,
        Err(resp) => {
            conn.send(resp);
            return;
        }
    };
    // Who is online is the app's to show: with a push secret, presence streams need it.
    if names.iter().any(|n| n.starts_with("presence:")) {
        if let Some(auth) = conn.worker().and_then(|w| w.data::<crate::auth::Auth>()) {
            if let Err(denied) = auth.check(req) {
                conn.send(Response::text(401, format!("presence streams: {denied}\n")));
                return;
            }
        }
    }
    let id = req
        .last_event_id()
        .map(str::to_string)
        .or_else(|| req.query().remove("last_event_id"));
    let since = match positions(id, names.len()) {
        Ok(s) => s,
        Err(resp) => {
            conn.send(resp);
            return;
        }
    };
    // A stream with a token is one of the cluster's clients (`http::Streams`).
    let tokens = conn.worker().and_then(|w| w.data::<Tokens>());
    let claims = match super::verify_token(conn, req, tokens.as_deref()) {
        Ok(c) => c,
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
    if let Some(claims) = claims {
        // Its client id first, then bound as the token says.
        if let Some(gw) = Gateway::of_connection(conn) {
            gw.register(conn);
            if let Some(id) = gw.client_id(conn) {
                conn.send(ServerSentEvent::data(id.to_string()).event("welcome"));
            }
            gw.bind_claims(conn, claims);
        }
    }
    let to = conn.clone();
    let labels = names.clone();
    let named = names.len() > 1;
    let keys: Vec<Name> = names.iter().map(|n| super::resume::event_of(n)).collect();
    let follow = feeds.follow(keys, since, move |ev| {
        let event = match step(&labels, ev) {
            Step::Stands(id) => ServerSentEvent::default().id(id),
            Step::Recovery(v, id) => ServerSentEvent::data(v.to_string())
                .event("recovery")
                .id(id),
            Step::Message {
                index,
                data,
                positions,
            } => {
                // Encoded once for every stream at the same place (see `Shared`).
                let label = if named { labels[index].as_str() } else { "" };
                let chunk = FRAMES.with(|f| {
                    f.get(data, label, positions, || {
                        let e = ServerSentEvent::data(data_text(data)).id(id_of(positions));
                        let e = if named { e.event(label) } else { e };
                        Chunk::from(e).shared()
                    })
                });
                to.send(chunk);
                return;
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

/// A closed stream's registration goes (its names' subscriptions with the last reader).
pub fn closed(conn: &Connection) {
    let follow = conn.with_data(|s: &mut Stream| s.0.take()).flatten();
    drop(follow);
}
