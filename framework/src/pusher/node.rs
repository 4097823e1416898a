//! [`PusherNode`]: one WebSocket worker instance's side of the Pusher protocol. A client that
//! connects to `/app/{key}` is greeted with its socket id and takes its own message and close
//! callbacks (the worker's stay for every other path); each channel its clients are on is one
//! channel event (`pusher:{app id}:{channel}`) this instance subscribes to while it has a
//! subscriber, so a publish reaches only the nodes that have one. What an event carries is the
//! frame the clients get, encoded once by the publisher, behind the socket id it must skip
//! ([`event_payload`]); the instance writes it to its subscribers encoded once.
//!
//! Built so far: public, private and encrypted channels (signatures checked), `pusher:ping`,
//! client events where the app allows them, user sign-in (`pusher:signin`: the socket may then
//! subscribe to its user's `#server-to-user-{id}` channel, which send-to-user publishes to, and
//! is on its user's event [`user_event`], which `terminate_connections` publishes to). Presence
//! channels are refused with an error saying so (their members must be known across nodes:
//! the directory's work, not done yet).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::channel::{check_channel_name, check_user_id, ChannelKind, SERVER_TO_USER};
use super::frame::{self, Frame};
use super::{sign, App, Apps, SocketId};
use crate::channel::php_serde::{self, Reader};
use crate::channel::Client;
use crate::{Connection, Message, Request, Timer, WorkerInstance};

/// Seconds of silence after which a client pings (sent in `connection_established`).
pub const ACTIVITY_TIMEOUT_SECS: u64 = 120;

/// The channel event of an app's channel.
pub fn channel_event(app_id: &str, channel: &str) -> String {
    format!("pusher:{app_id}:{channel}")
}

/// The channel event of a signed-in user's sockets (what `terminate_connections` publishes
/// to).
pub fn user_event(app_id: &str, user_id: &str) -> String {
    format!("pusher-user:{app_id}:{user_id}")
}

/// The close code, and the error, of a socket whose sign-in is refused or whose user the app
/// disconnects.
const UNAUTHORIZED: u16 = 4009;

/// What a channel event carries: `{socket id to skip, or nothing}\n{frame}`, as a PHP string.
pub fn event_payload(skip: Option<SocketId>, frame: &str) -> Bytes {
    let skip = skip.map(|s| s.to_string()).unwrap_or_default();
    let mut inner = Vec::with_capacity(skip.len() + 1 + frame.len());
    inner.extend_from_slice(skip.as_bytes());
    inner.push(b'\n');
    inner.extend_from_slice(frame.as_bytes());
    let mut out = Vec::with_capacity(inner.len() + 16);
    php_serde::write_str(&mut out, &inner);
    Bytes::from(out)
}

/// An event's payload read back: the socket id to skip and the frame.
fn read_payload(data: &Bytes) -> Option<(Option<SocketId>, &str)> {
    let inner = Reader::new(data).key_raw().ok()??;
    let text = std::str::from_utf8(inner).ok()?;
    let (skip, frame) = text.split_once('\n')?;
    let skip = if skip.is_empty() {
        None
    } else {
        Some(skip.parse().ok()?)
    };
    Some((skip, frame))
}

/// One channel's subscribers on this instance.
struct Local {
    conns: HashSet<u64>,
}

/// A Pusher connection's state.
struct Client_ {
    app: Arc<App>,
    socket_id: SocketId,
    /// The channel events it is on (and, signed in, its user's event).
    channels: Vec<String>,
    /// The user it signed in as.
    user: Option<String>,
}

/// What an instance does with an event it subscribed to for its clients.
#[derive(Clone, Copy)]
enum Handler {
    /// A channel's: write the frame to the subscribers.
    Deliver,
    /// A user's: disconnect its sockets (`terminate_connections`).
    Terminate,
}

struct Inner {
    apps: Arc<Apps>,
    client: Client,
    instance: WorkerInstance,
    worker_id: u32,
    /// By channel event.
    channels: RefCell<HashMap<String, Local>>,
    /// By connection id.
    clients: RefCell<HashMap<u64, Client_>>,
}

/// One worker instance's Pusher side (see the module's text). Cheap to clone.
#[derive(Clone)]
pub struct PusherNode(Rc<Inner>);

impl PusherNode {
    /// Serve `apps` on `instance` (cluster worker `worker_id`) through `client`; kept as the
    /// instance's data ([`PusherNode::of`]).
    pub fn start(instance: &WorkerInstance, client: &Client, apps: Arc<Apps>, worker_id: u32) {
        let node = PusherNode(Rc::new(Inner {
            apps,
            client: client.clone(),
            instance: instance.clone(),
            worker_id,
            channels: RefCell::new(HashMap::new()),
            clients: RefCell::new(HashMap::new()),
        }));
        instance.set_data(node);
    }

    /// The instance's Pusher side, if it serves one.
    pub fn of(instance: &WorkerInstance) -> Option<PusherNode> {
        instance.data::<PusherNode>().map(|n| (*n).clone())
    }

    /// The app key of a Pusher endpoint path (`/app/{key}`), if `path` is one.
    pub fn app_key(path: &str) -> Option<&str> {
        path.strip_prefix("/app/")
            .map(|k| k.split('?').next().unwrap_or(k))
    }

    /// Take `conn`, whose upgrade `req` was for `/app/{key}`: greet it with its socket id, or
    /// tell it why not (an unknown app: 4001, a protocol version other than 5 to 7: 4007) and
    /// close.
    pub fn accept(&self, conn: &Connection, req: &Request) {
        let key = Self::app_key(req.path()).unwrap_or("");
        let Some(app) = self.0.apps.by_key(key).cloned() else {
            refuse(conn, 4001, &format!("App key {key} does not exist"));
            return;
        };
        match req.get("protocol").map(|p| p.parse::<u32>()) {
            Some(Ok(5..=7)) | None => {}
            Some(_) => {
                refuse(conn, 4007, "Unsupported protocol version");
                return;
            }
        }
        if app.max_connections > 0 {
            let held = self
                .0
                .clients
                .borrow()
                .values()
                .filter(|c| c.app.id == app.id)
                .count();
            if held >= app.max_connections {
                refuse(conn, 4004, "Application is over connection quota");
                return;
            }
        }
        let socket_id = SocketId {
            worker: self.0.worker_id,
            conn: conn.id(),
        };
        self.0.clients.borrow_mut().insert(
            conn.id(),
            Client_ {
                app,
                socket_id,
                channels: Vec::new(),
                user: None,
            },
        );
        let node = self.clone();
        conn.on_message(move |conn, msg| node.message(conn, msg));
        let node = self.clone();
        conn.on_close(move |conn| node.closed(conn.id()));
        conn.send(frame::connection_established(
            &socket_id.to_string(),
            ACTIVITY_TIMEOUT_SECS,
        ));
    }

    fn message(&self, conn: &Connection, msg: Message) {
        let Some(text) = msg.as_text() else {
            conn.send(frame::error(None, "Messages must be JSON text"));
            return;
        };
        let f = match Frame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                conn.send(frame::error(None, &e.to_string()));
                return;
            }
        };
        match f.event.as_str() {
            "pusher:ping" => {
                conn.send(frame::pong());
            }
            "pusher:subscribe" => self.subscribe(conn, &f),
            "pusher:unsubscribe" => {
                if let Some(ch) = f.data_field("channel") {
                    self.unsubscribe(conn.id(), &ch);
                }
            }
            "pusher:signin" => self.signin(conn, &f),
            e if e.starts_with("client-") => self.client_event(conn, &f),
            e => {
                conn.send(frame::error(None, &format!("Unknown event {e:?}")));
            }
        }
    }

    fn subscribe(&self, conn: &Connection, f: &Frame) {
        let Some(channel) = f.data_field("channel") else {
            conn.send(frame::error(None, "pusher:subscribe needs data.channel"));
            return;
        };
        let refuse = |status: u16, why: &str| {
            let data = serde_json::json!({ "type": "AuthError", "error": why, "status": status });
            conn.send(frame::encode_object(
                "pusher:subscription_error",
                Some(&channel),
                &data,
            ));
        };
        if let Err(e) = check_channel_name(&channel) {
            refuse(400, &e.to_string());
            return;
        }
        let (app, socket_id, user) = match self.0.clients.borrow().get(&conn.id()) {
            Some(c) => (c.app.clone(), c.socket_id, c.user.clone()),
            None => return,
        };
        let kind = ChannelKind::of(&channel);
        if kind == ChannelKind::ServerToUser
            && user.as_deref() != channel.strip_prefix(SERVER_TO_USER)
        {
            refuse(
                403,
                &format!("{channel} is for a socket signed in as its user"),
            );
            return;
        }
        if kind == ChannelKind::Presence {
            refuse(
                501,
                "presence channels are not supported by this server yet",
            );
            return;
        }
        if kind.needs_auth() {
            let auth = f.data_field("auth").unwrap_or_default();
            let ok = sign::check_channel_auth(&app, &socket_id.to_string(), &channel, None, &auth);
            if !ok {
                refuse(401, &format!("Invalid signature for {channel}"));
                return;
            }
        }
        self.join(
            conn.id(),
            channel_event(&app.id, &channel),
            Handler::Deliver,
        );
        conn.send(frame::encode(
            "pusher_internal:subscription_succeeded",
            Some(&channel),
            "{}",
        ));
    }

    /// `conn` joins `event`; the first one in subscribes the instance to it.
    fn join(&self, conn: u64, event: String, handler: Handler) {
        {
            let mut clients = self.0.clients.borrow_mut();
            let Some(c) = clients.get_mut(&conn) else {
                return;
            };
            if c.channels.contains(&event) {
                return;
            }
            c.channels.push(event.clone());
        }
        let first = {
            let mut channels = self.0.channels.borrow_mut();
            let local = channels.entry(event.clone()).or_insert_with(|| Local {
                conns: HashSet::new(),
            });
            local.conns.insert(conn);
            local.conns.len() == 1
        };
        if first {
            let node = Rc::downgrade(&self.0);
            let ev = event.clone();
            self.0.client.on_raw(event.as_str(), move |data| {
                if let Some(n) = node.upgrade() {
                    match handler {
                        Handler::Deliver => PusherNode(n).deliver(&ev, data),
                        Handler::Terminate => PusherNode(n).terminate(&ev),
                    }
                }
            });
        }
    }

    /// `pusher:signin`: `user_data` (JSON with the user's `id`) signed by the app for this
    /// socket. Answered `pusher:signin_success`; a bad signature or user data closes the
    /// socket with 4009, as Pusher does.
    fn signin(&self, conn: &Connection, f: &Frame) {
        let (app, socket_id, user) = match self.0.clients.borrow().get(&conn.id()) {
            Some(c) => (c.app.clone(), c.socket_id, c.user.clone()),
            None => return,
        };
        let auth = f.data_field("auth").unwrap_or_default();
        let user_data = f.data_field("user_data").unwrap_or_default();
        if !sign::check_user_auth(&app, &socket_id.to_string(), &user_data, &auth) {
            refuse_open(
                conn,
                UNAUTHORIZED,
                "Invalid signature: user sign-in refused",
            );
            return;
        }
        let id = serde_json::from_str::<serde_json::Value>(&user_data)
            .ok()
            .and_then(|v| v.get("id").and_then(|id| id.as_str().map(str::to_string)));
        let id = match id.map(|id| check_user_id(&id).map(|()| id)) {
            Some(Ok(id)) => id,
            Some(Err(e)) => return refuse_open(conn, UNAUTHORIZED, &e.to_string()),
            None => {
                let why = "user_data must be a JSON object with a string id";
                return refuse_open(conn, UNAUTHORIZED, why);
            }
        };
        match user {
            Some(u) if u != id => {
                conn.send(frame::error(None, &format!("already signed in as {u:?}")));
                return;
            }
            Some(_) => {}
            None => {
                if let Some(c) = self.0.clients.borrow_mut().get_mut(&conn.id()) {
                    c.user = Some(id.clone());
                }
                self.join(conn.id(), user_event(&app.id, &id), Handler::Terminate);
            }
        }
        let data = serde_json::json!({ "user_data": user_data }).to_string();
        conn.send(frame::encode("pusher:signin_success", None, &data));
    }

    /// The app disconnects a user (`terminate_connections`): its sockets here are told and
    /// closed with 4009.
    fn terminate(&self, event: &str) {
        let conns: Vec<u64> = match self.0.channels.borrow().get(event) {
            Some(local) => local.conns.iter().copied().collect(),
            None => return,
        };
        for c in conns
            .into_iter()
            .filter_map(|c| self.0.instance.connection(c))
        {
            refuse_open(&c, UNAUTHORIZED, "You got disconnected by the app");
        }
    }

    fn unsubscribe(&self, conn: u64, channel: &str) {
        let event = {
            let mut clients = self.0.clients.borrow_mut();
            let Some(c) = clients.get_mut(&conn) else {
                return;
            };
            let event = channel_event(&c.app.id, channel);
            let before = c.channels.len();
            c.channels.retain(|e| *e != event);
            if c.channels.len() == before {
                return;
            }
            event
        };
        self.leave(conn, &event);
    }

    /// `conn` leaves the channel of `event`; the last one out unsubscribes the instance.
    fn leave(&self, conn: u64, event: &str) {
        let empty = {
            let mut channels = self.0.channels.borrow_mut();
            let Some(local) = channels.get_mut(event) else {
                return;
            };
            local.conns.remove(&conn);
            let empty = local.conns.is_empty();
            if empty {
                channels.remove(event);
            }
            empty
        };
        if empty {
            self.0.client.unsubscribe(event);
        }
    }

    fn closed(&self, conn: u64) {
        let Some(c) = self.0.clients.borrow_mut().remove(&conn) else {
            return;
        };
        for event in &c.channels {
            self.leave(conn, event);
        }
    }

    fn client_event(&self, conn: &Connection, f: &Frame) {
        let Some(channel) = f.channel.as_deref() else {
            conn.send(frame::error(None, "a client event needs a channel"));
            return;
        };
        let (app, socket_id, on) = match self.0.clients.borrow().get(&conn.id()) {
            Some(c) => (
                c.app.clone(),
                c.socket_id,
                c.channels.contains(&channel_event(&c.app.id, channel)),
            ),
            None => return,
        };
        if !app.client_events {
            conn.send(frame::error(
                None,
                "To send client events, you must enable this feature in the app's settings",
            ));
            return;
        }
        if !ChannelKind::of(channel).allows_client_events() || !on {
            conn.send(frame::error(
                None,
                &format!("Client events go to a private or presence channel the client is subscribed to, not {channel:?}"),
            ));
            return;
        }
        let frame = frame::encode(&f.event, Some(channel), &f.data_text());
        let payload = event_payload(Some(socket_id), &frame);
        if let Err(e) = self
            .0
            .client
            .publish_raw(channel_event(&app.id, channel).as_str(), payload)
        {
            conn.send(frame::error(None, &format!("client event not sent: {e}")));
        }
    }

    /// A channel event arrived: write its frame to this instance's subscribers but the one to
    /// skip, encoded once.
    fn deliver(&self, event: &str, data: &Bytes) {
        let Some((skip, frame)) = read_payload(data) else {
            log::warn!("pusher: undecodable event on {event}");
            return;
        };
        let skip = skip
            .filter(|s| s.worker == self.0.worker_id)
            .map(|s| s.conn);
        let conns: Vec<Connection> = {
            let channels = self.0.channels.borrow();
            let Some(local) = channels.get(event) else {
                return;
            };
            local
                .conns
                .iter()
                .filter(|&&c| Some(c) != skip)
                .filter_map(|&c| self.0.instance.connection(c))
                .collect()
        };
        if !conns.is_empty() {
            self.0
                .instance
                .send_to(conns.iter(), Message::Text(frame.to_string()));
        }
    }
}

/// Send `pusher:error` with `code` to a connection whose handshake is being answered, and
/// close it with `code` once the handshake's answer is out (the error must follow it, not
/// replace it).
fn refuse(conn: &Connection, code: u16, message: &str) {
    conn.send(frame::error(Some(code), message));
    let (c, message) = (conn.clone(), message.to_string());
    Timer::once(Duration::ZERO, move || close_with_code(&c, code, &message));
}

/// Send `pusher:error` with `code` to an open connection and close it with `code`.
fn refuse_open(conn: &Connection, code: u16, message: &str) {
    conn.send(frame::error(Some(code), message));
    close_with_code(conn, code, message);
}

/// Close with the protocol's close `code` (pusher-js decides from it whether to reconnect);
/// the reason is cut to what a close frame holds.
fn close_with_code(conn: &Connection, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    if !conn.close_websocket(code, &reason[..end]) {
        conn.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let id = SocketId {
            worker: 3,
            conn: 99,
        };
        let p = event_payload(Some(id), r#"{"event":"e","data":"x\ny"}"#);
        assert_eq!(
            read_payload(&p),
            Some((Some(id), r#"{"event":"e","data":"x\ny"}"#))
        );
        let p = event_payload(None, "{}");
        assert_eq!(read_payload(&p), Some((None, "{}")));
        assert_eq!(read_payload(&Bytes::from_static(b"i:1;")), None);
        assert_eq!(PusherNode::app_key("/app/abc"), Some("abc"));
        assert_eq!(PusherNode::app_key("/apps/abc"), None);
    }
}
