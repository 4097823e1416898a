//! [`PusherNode`]: one WebSocket worker instance's side of the Pusher protocol. A client that
//! connects to `/app/{key}` is greeted with its socket id; the worker's `on_message` and
//! `on_close` hand its sockets' messages and close to [`PusherNode::on_message`] and
//! [`PusherNode::on_close`] (no callback set per socket); each channel its clients are on is one
//! channel event (`pusher:{app id}:{channel}`) this instance subscribes to while it has a
//! subscriber, so a publish reaches only the nodes that have one. What an event carries is the
//! frame the clients get, encoded once by the publisher, behind the socket id it must skip
//! ([`event_payload`]); the instance writes it to its subscribers encoded once.
//!
//! Built so far: public, private, encrypted and presence channels (signatures checked; a
//! presence channel's members kept by the directory, `channel::dir`'s presence groups, so
//! they are exact across nodes), `pusher:ping`, client events where the app allows them, user
//! sign-in (`pusher:signin`: the socket may then subscribe to its user's
//! `#server-to-user-{id}` channel, which send-to-user publishes to, and is on its user's event
//! [`user_event`], which `terminate_connections` publishes to).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::channel::{check_channel_name, check_user_id, ChannelKind, SERVER_TO_USER};
use super::frame::{self, Frame};
use super::{sign, webhook, App, Apps, SocketId};
use crate::channel::dir::{self, ClientId, DirOp, Hooks, Join};
use crate::channel::php_serde::{self, Reader};
use crate::channel::{report, ChannelError, Client, Position};
use crate::{Connection, Message, Request, Timer, WorkerInstance};

/// Seconds of silence after which a client pings (sent in `connection_established`).
pub const ACTIVITY_TIMEOUT_SECS: u64 = 120;

/// The channel event of an app's channel (a presence channel's is also its group in the
/// directory, which announces its members' comings and goings there).
pub fn channel_event(app_id: &str, channel: &str) -> String {
    let name = format!("pusher:{app_id}:{channel}");
    match ChannelKind::of(channel) {
        ChannelKind::Presence => dir::announced_event(&name),
        _ => name,
    }
}

/// The directory group counting a channel's subscribers (`GET channels`, occupancy webhooks).
pub(crate) fn occupancy_group(app_id: &str, channel: &str) -> String {
    dir::announced_event(&format!("pusher-occupancy:{app_id}:{channel}"))
}

/// Frames held for one connection while its presence subscription waits for the directory.
const MAX_HELD: usize = 1024;

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
    payload(skip, None, frame)
}

/// A channel event whose publisher asks what it reached (`channel::report`): the first line
/// also carries the report's token, `{skip} {token}`; each instance it reaches reports how
/// many sockets it wrote the frame to.
pub fn reported_payload(skip: Option<SocketId>, token: &str, frame: &str) -> Bytes {
    payload(skip, Some(token), frame)
}

fn payload(skip: Option<SocketId>, token: Option<&str>, frame: &str) -> Bytes {
    let skip = skip.map(|s| s.to_string()).unwrap_or_default();
    let token = token.unwrap_or_default();
    let mut inner = Vec::with_capacity(skip.len() + token.len() + 2 + frame.len());
    inner.extend_from_slice(skip.as_bytes());
    if !token.is_empty() {
        inner.push(b' ');
        inner.extend_from_slice(token.as_bytes());
    }
    inner.push(b'\n');
    inner.extend_from_slice(frame.as_bytes());
    let mut out = Vec::with_capacity(inner.len() + 16);
    php_serde::write_str(&mut out, &inner);
    Bytes::from(out)
}

/// An event's payload read back.
#[derive(Debug, PartialEq)]
struct Payload<'a> {
    /// The socket not to write it to (its sender's).
    skip: Option<SocketId>,
    /// The delivery report asked, if any.
    report: Option<&'a str>,
    /// The frame.
    frame: &'a str,
}

fn read_payload(data: &Bytes) -> Option<Payload<'_>> {
    let inner = Reader::new(data).key_raw().ok()??;
    let text = std::str::from_utf8(inner).ok()?;
    let (head, frame) = text.split_once('\n')?;
    let (skip, report) = match head.split_once(' ') {
        Some((skip, token)) => (skip, Some(token)),
        None => (head, None),
    };
    let skip = if skip.is_empty() {
        None
    } else {
        Some(skip.parse().ok()?)
    };
    Some(Payload {
        skip,
        report,
        frame,
    })
}

/// A frame held for a connection, with its event's position in history (if kept).
type Held = (Option<Position>, String);

/// One channel's subscribers on this instance.
struct Local {
    conns: HashSet<u64>,
    /// Whether the instance's subscription is known to be in effect where events are
    /// published (`Client::when_subscribed`): until then a connection is told it is
    /// subscribed only once it is.
    ready: bool,
}

/// A Pusher connection's state.
struct Client_ {
    app: Arc<App>,
    socket_id: SocketId,
    /// The channel events it is on (and, signed in, its user's event).
    channels: Vec<String>,
    /// The user it signed in as.
    user: Option<String>,
    /// Its presence channels.
    presence: Vec<Membership>,
    /// Its channels counted in the directory (their joins made again after a reconnect).
    occupancy: Vec<Box<str>>,
    /// It asked for werkmann's resume extension (`?werkmann=1`): events carry their
    /// position (`werkmann_id`) and a subscription may resume from one.
    positions: bool,
}

/// A connection's presence channel: its event, the user id it is on it as, and its join
/// (sent again after the channel reconnects: a new channel server knows nothing of it).
struct Membership {
    event: String,
    user_id: String,
    join: DirOp,
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
    /// Presence subscriptions waiting for the directory's answer: by channel event, the
    /// connections, with what arrived for them meanwhile (written after their
    /// `subscription_succeeded`, so that no member event comes before the member list).
    held: RefCell<HashMap<String, HashMap<u64, Vec<Held>>>>,
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
            held: RefCell::new(HashMap::new()),
        }));
        // After a reconnect (the gateway registered its connections again first): every
        // presence membership joins again.
        let weak = Rc::downgrade(&node.0);
        client.on_up_internal(move || {
            if let Some(n) = weak.upgrade() {
                PusherNode(n).rejoin();
            }
        });
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

    /// Take `conn`, whose upgrade `req` was for `/app/{key}` (its messages and close come through
    /// [`PusherNode::on_message`] and [`PusherNode::on_close`]): greet it with its socket id, or
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
        // The seed's broadcasts and sends to everyone are not for a Pusher socket.
        if let Some(w) = conn.worker() {
            w.exclude_from_broadcasts(conn);
        }
        let positions = match req.get("werkmann").as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(_) => {
                refuse(conn, 4000, "werkmann must be 1 or 0");
                return;
            }
        };
        self.0.clients.borrow_mut().insert(
            conn.id(),
            Client_ {
                app,
                socket_id,
                channels: Vec::new(),
                user: None,
                presence: Vec::new(),
                occupancy: Vec::new(),
                positions,
            },
        );
        conn.send(frame::connection_established(
            &socket_id.to_string(),
            ACTIVITY_TIMEOUT_SECS,
        ));
    }

    /// A message from `conn`, if it is one of this node's Pusher sockets (whether it was):
    /// the worker's `on_message` hands every message here first. Routed from the worker's
    /// callbacks rather than each socket's own, a socket takes no callback set of its own.
    pub fn on_message(&self, conn: &Connection, msg: Message) -> bool {
        if !self.0.clients.borrow().contains_key(&conn.id()) {
            return false;
        }
        self.message(conn, msg);
        true
    }

    /// `conn` closed: the worker's `on_close` tells the node (nothing for other sockets).
    pub fn on_close(&self, conn: &Connection) {
        self.closed(conn.id());
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
        let channel_data = f.data_field("channel_data");
        if kind.needs_auth() {
            let auth = f.data_field("auth").unwrap_or_default();
            let signed = match kind {
                ChannelKind::Presence => channel_data.as_deref(),
                _ => None,
            };
            let sid = socket_id.to_string();
            if !sign::check_channel_auth(&app, &sid, &channel, signed, &auth) {
                refuse(401, &format!("Invalid signature for {channel}"));
                return;
            }
        }
        if let Some(since) = f.data_field("werkmann_since") {
            let positions = self
                .0
                .clients
                .borrow()
                .get(&conn.id())
                .is_some_and(|c| c.positions);
            let since = match since.parse::<Position>() {
                _ if !positions => Err("resuming needs a socket opened with ?werkmann=1".into()),
                _ if kind == ChannelKind::Presence => {
                    Err("presence channels do not resume: their member list is the state".into())
                }
                Ok(p) => Ok(p),
                Err(e) => Err(e.to_string()),
            };
            match since {
                Ok(since) => self.resume(conn, &app, &channel, since),
                Err(why) => refuse(400, &why),
            }
            return;
        }
        if kind == ChannelKind::Presence {
            match member(channel_data.as_deref().unwrap_or_default()) {
                Ok((user_id, info)) => {
                    self.presence_subscribe(conn, &app, &channel, socket_id, user_id, info);
                }
                Err(why) => refuse(400, why),
            }
            return;
        }
        let event = channel_event(&app.id, &channel);
        let joined = self.join(conn.id(), event.clone(), Handler::Deliver);
        let succeeded = frame::encode(
            "pusher_internal:subscription_succeeded",
            Some(&channel),
            "{}",
        );
        match joined
            .then(|| self.occupancy_join(conn.id(), &app, &channel))
            .flatten()
        {
            // Subscribed once counted: the channel's occupancy webhooks follow what clients saw.
            Some(op) => {
                let c = conn.clone();
                self.0.client.dir_request(&op, move |answer| {
                    match answer {
                        // A channel server without a directory (Workerman's): nothing counts.
                        Err(ChannelError::NoDirectory) | Ok(_) => {}
                        Err(e) => log::warn!("pusher: a subscription not counted ({e})"),
                    }
                    c.send(succeeded);
                });
            }
            None if joined => self.when_ready(conn, &event, succeeded, true),
            None => {
                conn.send(succeeded);
            }
        }
    }

    /// Send `conn` `answer` (that it is on `event`) once the instance's subscription to
    /// `event` is in effect where events are published — at once when it is known to be —
    /// so that everything published after the answer reaches it, from any process of the
    /// cluster. With `hold`, what arrives for `conn` on `event` meanwhile follows the answer.
    fn when_ready(&self, conn: &Connection, event: &str, answer: String, hold: bool) {
        if self.0.channels.borrow().get(event).is_some_and(|l| l.ready) {
            conn.send(answer);
            return;
        }
        if hold {
            self.hold(conn.id(), event);
        }
        let (node, c, ev) = (self.clone(), conn.clone(), event.to_string());
        self.0.client.when_subscribed(event, move |r| {
            match r {
                Ok(()) => {
                    if let Some(l) = node.0.channels.borrow_mut().get_mut(&ev) {
                        l.ready = true;
                    }
                }
                // Not known (the link is down: it subscribes again once back).
                Err(e) => log::debug!("pusher: subscription to {ev} not confirmed ({e})"),
            }
            let frames = match hold {
                true => match node.take_held(c.id(), &ev) {
                    Some(frames) => frames,
                    // Gone meanwhile (closed, unsubscribed).
                    None => return,
                },
                false => Vec::new(),
            };
            c.send(answer);
            for (_, f) in frames {
                c.send(f);
            }
        });
    }

    /// The frames held for `conn` on `event`, no longer held; `None` when it waits no more
    /// (it left the channel, or closed).
    fn take_held(&self, conn: u64, event: &str) -> Option<Vec<Held>> {
        let mut held = self.0.held.borrow_mut();
        let frames = held.get_mut(event).and_then(|m| m.remove(&conn));
        if held.get(event).is_some_and(HashMap::is_empty) {
            held.remove(event);
        }
        frames
    }

    /// When the app counts its channels: the join that counts `conn` among the channel's
    /// subscribers in the directory, whose first one in and last one out (once cluster-wide)
    /// are the occupancy webhooks' events.
    /// The channel is kept (for a reconnect, and for leaving) and the join returned for its
    /// caller to send; `None` when the app does not count its channels.
    fn occupancy_join(&self, conn: u64, app: &App, channel: &str) -> Option<DirOp> {
        let op = occupancy_op(self.0.worker_id, conn, app, channel)?;
        if let Some(c) = self.0.clients.borrow_mut().get_mut(&conn) {
            c.occupancy.reserve_exact(1);
            c.occupancy.push(channel.into());
        }
        Some(op)
    }

    /// `conn` joins `event` (false: it was on it); the first one in subscribes the instance.
    fn join(&self, conn: u64, event: String, handler: Handler) -> bool {
        {
            let mut clients = self.0.clients.borrow_mut();
            let Some(c) = clients.get_mut(&conn) else {
                return false;
            };
            if c.channels.contains(&event) {
                return false;
            }
            // Most connections are on a channel or two: no room kept for more.
            c.channels.reserve_exact(1);
            c.channels.push(event.clone());
        }
        let first = {
            let mut channels = self.0.channels.borrow_mut();
            let local = channels.entry(event.clone()).or_insert_with(|| Local {
                conns: HashSet::new(),
                ready: false,
            });
            local.conns.insert(conn);
            local.conns.len() == 1
        };
        if first {
            let node = Rc::downgrade(&self.0);
            let ev = event.clone();
            self.0.client.on_kept(event.as_str(), move |pos, data| {
                if let Some(n) = node.upgrade() {
                    match handler {
                        Handler::Deliver => PusherNode(n).deliver(&ev, pos, data),
                        Handler::Terminate => PusherNode(n).terminate(&ev),
                    }
                }
            });
        }
        true
    }

    /// Subscribe `conn` to presence channel `channel` as `user_id`: on the channel here at
    /// once (what arrives is held), in the directory's group next; its answer (the members)
    /// makes `subscription_succeeded`, then what was held is written.
    fn presence_subscribe(
        &self,
        conn: &Connection,
        app: &App,
        channel: &str,
        socket_id: SocketId,
        user_id: String,
        info: serde_json::Value,
    ) {
        let event = channel_event(&app.id, channel);
        let on_it = |c: &Client_| c.presence.iter().any(|m| m.event == event);
        if self.0.clients.borrow().get(&conn.id()).is_none_or(on_it) {
            return;
        }
        let announce = |skip: Option<SocketId>, what: &str, data: serde_json::Value| {
            let f = frame::encode(what, Some(channel), &data.to_string());
            String::from_utf8(event_payload(skip, &f).to_vec()).expect("UTF-8 in, UTF-8 out")
        };
        let op = DirOp::PresenceJoin(Join {
            client_id: ClientId::new(self.0.worker_id, conn.id()),
            group: event.clone(),
            key: user_id.clone(),
            added: announce(
                Some(socket_id),
                "pusher_internal:member_added",
                serde_json::json!({ "user_id": user_id, "user_info": info }),
            ),
            removed: announce(
                None,
                "pusher_internal:member_removed",
                serde_json::json!({ "user_id": user_id }),
            ),
            info,
            event: event.clone(),
            max: app.max_presence_members,
            hooks: member_hooks(app, channel, &user_id),
            quiet: false,
        });
        if let Some(c) = self.0.clients.borrow_mut().get_mut(&conn.id()) {
            c.presence.push(Membership {
                event: event.clone(),
                user_id,
                join: op.clone(),
            });
        }
        self.join(conn.id(), event.clone(), Handler::Deliver);
        self.hold(conn.id(), &event);
        // Counted for occupancy first (on the same link: applied before the presence join
        // is answered), so that `subscription_succeeded` means counted.
        if let Some(occupancy) = self.occupancy_join(conn.id(), app, channel) {
            if let Err(e) = self.0.client.dir_send(&occupancy) {
                log::warn!("pusher: a subscription not counted for occupancy ({e})");
            }
        }
        let (node, conn, channel) = (self.clone(), conn.clone(), channel.to_string());
        self.0.client.dir_request(&op, move |answer| {
            node.presence_answer(&conn, &channel, &event, answer);
        });
    }

    /// Send every presence membership's join again.
    fn rejoin(&self) {
        let joins: Vec<DirOp> = self
            .0
            .clients
            .borrow()
            .values()
            .flat_map(|c| {
                let presence = c.presence.iter().map(|m| m.join.clone());
                let conn = c.socket_id.conn;
                let counted = c
                    .occupancy
                    .iter()
                    .filter_map(move |ch| occupancy_op(self.0.worker_id, conn, &c.app, ch));
                presence.chain(counted)
            })
            .collect();
        for op in joins {
            if let Err(e) = self.0.client.dir_send(&op) {
                log::warn!("pusher: presence join not sent again: {e}");
            }
        }
    }

    /// The directory answered `conn`'s presence join.
    fn presence_answer(
        &self,
        conn: &Connection,
        channel: &str,
        event: &str,
        answer: Result<serde_json::Value, ChannelError>,
    ) {
        // Gone meanwhile (closed, unsubscribed): the directory hears of it in turn.
        let Some(frames) = self.take_held(conn.id(), event) else {
            return;
        };
        let (kind, status, why) = match answer {
            Ok(serde_json::Value::Object(members)) => {
                let ids: Vec<&String> = members.keys().collect();
                let data = serde_json::json!({
                    "presence": { "ids": ids, "hash": members, "count": members.len() }
                });
                conn.send(frame::encode(
                    "pusher_internal:subscription_succeeded",
                    Some(channel),
                    &data.to_string(),
                ));
                for (_, f) in frames {
                    conn.send(f);
                }
                return;
            }
            Ok(serde_json::Value::Bool(false)) => (
                "LimitReached",
                4100,
                "The maximum members per presence channel limit was reached".to_string(),
            ),
            Ok(other) => (
                "PresenceError",
                500,
                format!("the directory answered {other}"),
            ),
            Err(ChannelError::NoDirectory) => (
                "PresenceError",
                501,
                "presence channels need a werkmann channel server or Redis".to_string(),
            ),
            Err(e) => ("PresenceError", 503, format!("presence not available: {e}")),
        };
        let data = serde_json::json!({ "type": kind, "error": why, "status": status });
        conn.send(frame::encode_object(
            "pusher:subscription_error",
            Some(channel),
            &data,
        ));
        self.unsubscribe(conn.id(), channel);
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
            }
        }
        let data = serde_json::json!({ "user_data": user_data }).to_string();
        let success = frame::encode("pusher:signin_success", None, &data);
        // Signed in once the app can reach the user: `terminate_connections` sent after the
        // answer finds this socket.
        let event = user_event(&app.id, &id);
        self.join(conn.id(), event.clone(), Handler::Terminate);
        self.when_ready(conn, &event, success, false);
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
        let (event, presence) = {
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
            let before = c.presence.len();
            c.presence.retain(|m| m.event != event);
            let presence = c.presence.len() != before;
            let group = occupancy_group(&c.app.id, channel);
            let before = c.occupancy.len();
            c.occupancy.retain(|ch| &**ch != channel);
            if c.occupancy.len() != before {
                let op = DirOp::PresenceLeave {
                    client_id: ClientId::new(self.0.worker_id, conn),
                    group,
                };
                if let Err(e) = self.0.client.dir_send(&op) {
                    log::warn!("pusher: occupancy leave not sent ({e})");
                }
            }
            (event, presence)
        };
        // Whatever it waited for (a presence answer, a resume's history, its subscription
        // being in effect), it waits no more.
        self.unhold(conn, &event);
        if presence {
            let op = DirOp::PresenceLeave {
                client_id: ClientId::new(self.0.worker_id, conn),
                group: event.clone(),
            };
            if let Err(e) = self.0.client.dir_send(&op) {
                log::warn!("pusher: presence leave not sent ({e}): {event}");
            }
        }
        self.leave(conn, &event);
    }

    /// What arrives on `event` for `conn` is held (until its answer: a presence join's, a
    /// resume's history).
    fn hold(&self, conn: u64, event: &str) {
        self.0
            .held
            .borrow_mut()
            .entry(event.to_string())
            .or_default()
            .insert(conn, Vec::new());
    }

    /// `conn` waits no more on `event` (for a presence answer, a resume's history, or the
    /// instance's subscription to be in effect).
    fn unhold(&self, conn: u64, event: &str) {
        self.take_held(conn, event);
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
        // The directory takes the connection out of its presence groups as it goes; nothing
        // is held for it any more.
        for event in &c.channels {
            self.unhold(conn, event);
            self.leave(conn, event);
        }
    }

    fn client_event(&self, conn: &Connection, f: &Frame) {
        let Some(channel) = f.channel.as_deref() else {
            conn.send(frame::error(None, "a client event needs a channel"));
            return;
        };
        let (app, socket_id, on, user_id) = match self.0.clients.borrow().get(&conn.id()) {
            Some(c) => {
                let event = channel_event(&c.app.id, channel);
                let user = c.presence.iter().find(|m| m.event == event);
                (
                    c.app.clone(),
                    c.socket_id,
                    c.channels.contains(&event),
                    user.map(|m| m.user_id.clone()),
                )
            }
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
        // On a presence channel the others learn who sent it.
        let frame = match &user_id {
            Some(u) => frame::encode_from_user(&f.event, channel, &f.data_text(), u),
            None => frame::encode(&f.event, Some(channel), &f.data_text()),
        };
        let payload = event_payload(Some(socket_id), &frame);
        if app.wants("client_event") {
            let mut e = serde_json::json!({
                "name": "client_event", "channel": channel, "event": f.event,
                "data": f.data_text(), "socket_id": socket_id.to_string(),
            });
            if let Some(u) = &user_id {
                e["user_id"] = serde_json::Value::from(u.as_str());
            }
            if let Err(err) = self
                .0
                .client
                .enqueue(webhook::queue(&app.id).as_str(), &e.to_string())
            {
                log::warn!("pusher: client_event webhook not queued: {err}");
            }
        }
        if let Err(e) = self
            .0
            .client
            .publish_raw(channel_event(&app.id, channel).as_str(), payload)
        {
            conn.send(frame::error(None, &format!("client event not sent: {e}")));
        }
    }

    /// A channel event arrived: write its frame to this instance's subscribers but the one to
    /// skip, encoded once; report what it reached when its publisher asks.
    fn deliver(&self, event: &str, pos: Option<Position>, data: &Bytes) {
        let Some(p) = read_payload(data) else {
            log::warn!("pusher: undecodable event on {event}");
            return;
        };
        let written = self.write(event, pos, p.skip, p.frame);
        if let Some(asked) = p.report.and_then(|t| report::Asked::parse(t, None)) {
            asked.report(&self.0.client, written as u64, &[]);
        }
    }

    /// Write `frame` to this instance's subscribers of `event` but `skip` (held for those
    /// still catching up); how many it was written (or held) for.
    fn write(
        &self,
        event: &str,
        pos: Option<Position>,
        skip: Option<SocketId>,
        frame: &str,
    ) -> usize {
        let skip = skip
            .filter(|s| s.worker == self.0.worker_id)
            .map(|s| s.conn);
        let mut held_for = 0;
        let (plain, positioned): (Vec<Connection>, Vec<Connection>) = {
            let channels = self.0.channels.borrow();
            let Some(local) = channels.get(event) else {
                return 0;
            };
            let mut held = self.0.held.borrow_mut();
            let mut waiting = held.get_mut(event);
            let clients = self.0.clients.borrow();
            local
                .conns
                .iter()
                .filter(|&&c| Some(c) != skip)
                .filter(|&&c| match waiting.as_mut().and_then(|w| w.get_mut(&c)) {
                    Some(frames) if frames.len() < MAX_HELD => {
                        frames.push((pos, frame.to_string()));
                        held_for += 1;
                        false
                    }
                    Some(_) => {
                        log::warn!("pusher: connection {c} held {MAX_HELD} frames on {event}");
                        false
                    }
                    None => true,
                })
                .filter_map(|&c| self.0.instance.connection(c))
                .partition(|c| pos.is_none() || !clients.get(&c.id()).is_some_and(|x| x.positions))
        };
        let mut written = held_for;
        if !plain.is_empty() {
            written += self
                .0
                .instance
                .send_to(plain.iter(), Message::Text(frame.to_string()))
                .delivered;
        }
        if let (false, Some(pos)) = (positioned.is_empty(), pos) {
            written += self
                .0
                .instance
                .send_to(positioned.iter(), Message::Text(with_position(frame, pos)))
                .delivered;
        }
        written
    }

    /// Subscribe `conn` to `channel`, resuming from `since` (werkmann's extension): on the
    /// channel at once (what arrives is held), the channel's history read next; then
    /// `subscription_succeeded`, `werkmann:recovery` (whether everything missed follows),
    /// what was missed, what was held (each once), and live events.
    ///
    /// The same catch-up as `channel::Feeds`, kept apart on purpose: once caught up a resumed
    /// socket is an ordinary member of the channel's group, so a publish reaches it with the
    /// group's one encoding (`send_to`) instead of a reader callback of its own, and the hold
    /// it waits behind is the one presence joins use.
    fn resume(&self, conn: &Connection, app: &App, channel: &str, since: Position) {
        let event = channel_event(&app.id, channel);
        self.hold(conn.id(), &event);
        if !self.join(conn.id(), event.clone(), Handler::Deliver) {
            self.unhold(conn.id(), &event);
            return;
        }
        if let Some(op) = self.occupancy_join(conn.id(), app, channel) {
            if let Err(e) = self.0.client.dir_send(&op) {
                log::warn!("pusher: a subscription not counted for occupancy ({e})");
            }
        }
        let (node, conn, channel) = (self.clone(), conn.clone(), channel.to_string());
        let me = self.0.clients.borrow().get(&conn.id()).map(|c| c.socket_id);
        let name = event.clone();
        self.0.client.history(name, Some(since), move |page| {
            let held = {
                let mut held = node.0.held.borrow_mut();
                let frames = held.get_mut(&event).and_then(|m| m.remove(&conn.id()));
                if held.get(&event).is_some_and(HashMap::is_empty) {
                    held.remove(&event);
                }
                frames
            };
            // Gone meanwhile (closed, unsubscribed).
            let Some(held) = held else { return };
            conn.send(frame::encode(
                "pusher_internal:subscription_succeeded",
                Some(&channel),
                "{}",
            ));
            let (recovered, mut at, items) = match page {
                Ok(p) if p.recovered => (true, since, p.items),
                Ok(p) => (false, p.last().unwrap_or(Position::NONE), Vec::new()),
                Err(e) => {
                    log::info!("pusher: history of {channel} not read: {e}");
                    (false, Position::NONE, Vec::new())
                }
            };
            let data = serde_json::json!({ "recovered": recovered, "werkmann_id": at.to_string() });
            conn.send(frame::encode(
                "werkmann:recovery",
                Some(&channel),
                &data.to_string(),
            ));
            for (offset, data) in items {
                let Some(Payload { skip, frame: f, .. }) = read_payload(&data) else {
                    continue;
                };
                at = Position {
                    epoch: at.epoch,
                    offset,
                };
                if skip.is_none() || skip != me {
                    conn.send(with_position(f, at));
                }
            }
            for (pos, f) in held {
                match pos {
                    Some(p) if p.epoch == at.epoch && p.offset <= at.offset => {}
                    Some(p) => {
                        at = p;
                        conn.send(with_position(&f, p));
                    }
                    None => {
                        conn.send(f);
                    }
                }
            }
        });
    }
}

/// A Pusher frame (a JSON object) with werkmann's `werkmann_id` (its position) added.
fn with_position(frame: &str, pos: Position) -> String {
    match frame.strip_suffix('}') {
        Some(head) => format!("{head},\"werkmann_id\":\"{pos}\"}}"),
        None => frame.to_string(),
    }
}

/// The directory join that counts connection `conn` of worker `worker` among `channel`'s
/// subscribers (with the occupancy webhooks' hooks the app wants); `None` when the app does
/// not count its channels.
fn occupancy_op(worker: u32, conn: u64, app: &App, channel: &str) -> Option<DirOp> {
    if !app.counts_channels() {
        return None;
    }
    let (occupied, vacated) = (app.wants("channel_occupied"), app.wants("channel_vacated"));
    let hook = |wanted: bool, name: &str| match wanted {
        true => webhook::item(&serde_json::json!({ "name": name, "channel": channel })),
        false => String::new(),
    };
    let group = occupancy_group(&app.id, channel);
    let op = DirOp::PresenceJoin(Join {
        client_id: ClientId::new(worker, conn),
        group: group.clone(),
        key: "*".into(),
        info: serde_json::Value::Null,
        event: group.clone(),
        added: String::new(),
        removed: String::new(),
        max: 1,
        hooks: (occupied || vacated).then(|| Hooks {
            queue: webhook::queue(&app.id),
            added: hook(occupied, "channel_occupied"),
            removed: hook(vacated, "channel_vacated"),
        }),
        quiet: true,
    });
    Some(op)
}

/// The webhook events of a presence member's coming and going, if the app wants them.
fn member_hooks(app: &App, channel: &str, user_id: &str) -> Option<Hooks> {
    let (added, removed) = (app.wants("member_added"), app.wants("member_removed"));
    if !added && !removed {
        return None;
    }
    let hook = |wanted: bool, name: &str| match wanted {
        true => webhook::item(&serde_json::json!({
            "name": name, "channel": channel, "user_id": user_id
        })),
        false => String::new(),
    };
    Some(Hooks {
        queue: webhook::queue(&app.id),
        added: hook(added, "member_added"),
        removed: hook(removed, "member_removed"),
    })
}

/// A presence subscription's `channel_data` (signed with it): `{"user_id": string or number,
/// "user_info": any}` read as the user id (a string) and its info.
fn member(channel_data: &str) -> Result<(String, serde_json::Value), &'static str> {
    let why = "channel_data must be a JSON object with a user_id (a non-empty string or a number)";
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str(channel_data) else {
        return Err(why);
    };
    let id = match m.remove("user_id") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err(why),
    };
    if id.len() > 200 || id.chars().any(char::is_control) {
        return Err("a presence user_id is at most 200 bytes, without control characters");
    }
    Ok((id, m.remove("user_info").unwrap_or(serde_json::Value::Null)))
}

/// Send `pusher:error` with `code` to a connection whose handshake is being answered, and
/// close it with `code` once the handshake's answer is out (the error must follow it, not
/// replace it).
fn refuse(conn: &Connection, code: u16, message: &str) {
    conn.send(frame::error(Some(code), message));
    let (c, message) = (conn.clone(), message.to_string());
    Timer::once_internal(Duration::ZERO, move || close_with_code(&c, code, &message));
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
        let read = |skip, report, frame| {
            Some(Payload {
                skip,
                report,
                frame,
            })
        };
        assert_eq!(
            read_payload(&p),
            read(Some(id), None, r#"{"event":"e","data":"x\ny"}"#)
        );
        let p = event_payload(None, "{}");
        assert_eq!(read_payload(&p), read(None, None, "{}"));
        let p = reported_payload(Some(id), "werkmann.report:ab#7", "{}");
        assert_eq!(
            read_payload(&p),
            read(Some(id), Some("werkmann.report:ab#7"), "{}")
        );
        let p = reported_payload(None, "werkmann.report:ab#8", "{}");
        assert_eq!(
            read_payload(&p),
            read(None, Some("werkmann.report:ab#8"), "{}")
        );
        assert_eq!(read_payload(&Bytes::from_static(b"i:1;")), None);
        assert_eq!(PusherNode::app_key("/app/abc"), Some("abc"));
        assert_eq!(PusherNode::app_key("/apps/abc"), None);
    }
}
