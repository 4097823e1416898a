//! The resuming WebSocket protocol of the WebSocket nodes, what `/werkmann.js` speaks:
//! `ws://NODE/werkmann?channel=NAME[,NAME…][&last_event_id=POSITIONS]` follows named events
//! (`Broadcast` for the seed's broadcasts) and resumes them across reconnects — to any node —
//! through the channel's history, as `/sse` does.
//!
//! What the node sends is JSON in **binary** frames, so that nothing an app pushes to the
//! connection (a text frame: a targeted push, a uid or group send) is ever taken for it:
//!
//! | frame | when |
//! |---|---|
//! | `{"type":"welcome","client_id":"W-C"}` | first: the connection's client id (targeted pushes, `bind_uid`) |
//! | `{"type":"ready","id":IDS}` | the stream stands (a new reader) |
//! | `{"type":"recovery","recovered":B,"lost":[NAMES],"id":IDS}` | a resumed reader caught up; or a name whose history started again |
//! | `{"type":"message","channel":NAME,"data":TEXT,"id":IDS}` | an event: the push's `content` (and `"ack":TOKEN` when its publisher wants acknowledgements) |
//!
//! A reader acknowledges a message that carries `ack` with `{"type":"ack","ack":TOKEN}` (text
//! or binary); `/werkmann.js` does.
//!
//! `IDS` are every followed name's position, as `/sse`'s ids; the client keeps the last and
//! sends it back as `last_event_id` when it reconnects. A bad name or position refuses the
//! handshake with 400. These connections take no seed broadcast (they get `Broadcast` as
//! messages) and no greeting.
//!
//! `&token=JWT` binds the reader to the token's uid and groups, as on the seed's path (a bad
//! token: 401).

use std::rc::Rc;

use werkmann::channel::report::NodeReports;
use werkmann::channel::{Feeds, Follow, Name};
use werkmann::{Connection, Message, Request, Response};

use super::delivery;
use super::resume::{channels, data_text, id_of, positions, step, Shared, Step};

thread_local! {
    /// The last message encoded on this thread (and the ack token it asks for), for the next
    /// reader at the same place.
    static FRAMES: Shared<(bytes::Bytes, Option<String>)> = const { Shared::new() };
}

/// The path of the resuming protocol on a WebSocket node.
pub const PATH: &str = "/werkmann";

/// What a reader keeps on its connection: its registration, dropped when it closes.
pub struct Reader(pub Option<Follow>);

/// Accept a handshake on [`PATH`]: the 400 for a bad request, else the reader follows.
pub fn accept(conn: &Connection, req: &Request, worker_id: u32) -> Result<(), Response> {
    let names = channels(req.query_string())?;
    if names.iter().any(|n| n.starts_with("presence:")) {
        // Presence is for the app's servers (`/sse` with the push secret), not its clients.
        return Err(Response::text(
            403,
            "presence streams are read on the publisher's /sse with the push secret\n",
        ));
    }
    let since = positions(req.query().remove("last_event_id"), names.len())?;
    let Some((w, feeds)) = conn
        .worker()
        .and_then(|w| w.data::<Feeds>().map(|f| (w, f)))
        .filter(|(_, f)| f.client().is_connected())
    else {
        return Err(Response::text(
            503,
            "channel not connected: no stream now\n",
        ));
    };
    w.exclude_from_broadcasts(conn);
    send(
        conn,
        serde_json::json!({"type": "welcome", "client_id": format!("{worker_id}-{}", conn.id())}),
    );
    let to = conn.clone();
    let client_id = format!("{worker_id}-{}", conn.id());
    let labels = names.clone();
    let keys: Vec<Name> = names.iter().map(|n| super::resume::event_of(n)).collect();
    let follow = feeds.follow(keys, since, move |ev| {
        let frame = match step(&labels, ev) {
            Step::Stands(id) => serde_json::json!({"type": "ready", "id": id}),
            Step::Recovery(mut v, id) => {
                v["type"] = "recovery".into();
                v["id"] = id.into();
                v
            }
            Step::Message {
                index,
                data,
                positions,
            } => {
                // Encoded once for every reader at the same place (see `Shared`).
                let (bytes, ack) = FRAMES.with(|f| {
                    f.get(data, &labels[index], positions, || {
                        // A push that wants acknowledgements carries its token.
                        let ack = delivery::asked(data)
                            .filter(|a| a.ack.is_some())
                            .map(|a| a.token());
                        let mut v = serde_json::json!({
                            "type": "message",
                            "channel": labels[index],
                            "data": data_text(data),
                            "id": id_of(positions),
                        });
                        if let Some(t) = &ack {
                            v["ack"] = t.as_str().into();
                        }
                        (bytes::Bytes::from(v.to_string()), ack)
                    })
                });
                if let Some(token) = ack {
                    if let Some(r) = to.worker().and_then(|w| w.data::<Rc<NodeReports>>()) {
                        r.expect(&token, to.id(), client_id.clone());
                    }
                }
                to.send(Message::Binary(bytes));
                return;
            }
        };
        send(&to, frame);
    });
    match follow {
        Ok(f) => {
            conn.set_data(Reader(Some(f)));
            Ok(())
        }
        Err(e) => Err(Response::text(503, format!("{e}\n"))),
    }
}

fn send(conn: &Connection, v: serde_json::Value) {
    conn.send(Message::Binary(v.to_string().into()));
}

/// What a reader sends: `{"type":"ack","ack":TOKEN}` for a message that asked (anything else
/// is ignored). Whether `conn` is a reader (its messages are this module's).
pub fn on_message(conn: &Connection, msg: &Message) -> bool {
    if conn.with_data(|_: &mut Reader| ()).is_none() {
        return false;
    }
    let v: Option<serde_json::Value> = match msg {
        Message::Text(t) => serde_json::from_str(t).ok(),
        Message::Binary(b) => serde_json::from_slice(b).ok(),
        _ => None,
    };
    if let Some(token) = v
        .as_ref()
        .filter(|v| v["type"] == "ack")
        .and_then(|v| v["ack"].as_str())
    {
        if let Some(r) = conn.worker().and_then(|w| w.data::<Rc<NodeReports>>()) {
            r.acked(token, conn.id());
        }
    }
    true
}

/// A closed reader's registration goes.
pub fn closed(conn: &Connection) {
    let follow = conn.with_data(|r: &mut Reader| r.0.take()).flatten();
    drop(follow);
}
