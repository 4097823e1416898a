//! [`Client`]: Workerman's `Channel\Client`, one per worker instance (each instance has its own
//! subscriptions, as each Workerman process does).
//!
//! Over TCP it speaks the Channel wire protocol to a werkmann or PHP channel server, reconnects
//! with backoff, and re-subscribes and re-watches everything on reconnect. In-process (the
//! server runs in this process) it talks to the hub actor directly, with no TCP hop.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::hub::{
    self, HubHandle, LocalCommand, LocalDelivery, LocalGone, LocalHandled, LocalSink,
};
use super::php_serde::{self, Key};
use super::redis::{RedisLink, RedisOwner};
use super::wire::{Command, Delivery, DeliveryKind, WireName};
use super::{ChannelError, IntoNames};
use crate::callbacks::guard;
use crate::client::AsyncTcpConnection;
use crate::message::Message;
use crate::timer::{Timer, TimerId};

/// Default bound of what a disconnected client holds for its server.
pub const DEFAULT_MAX_PENDING: usize = 16 * 1024 * 1024;
/// Interval of the keep-alive ping (Workerman's 55 s).
pub const PING_INTERVAL: Duration = Duration::from_secs(55);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long a confirmation waits for a lagging in-process subscriber to handle the event
/// before it is given anyway ("handed to", as the hub's are).
const HANDLED_WAIT: Duration = Duration::from_secs(5);

type EventFn = Rc<dyn Fn(Value)>;
type RawFn = Rc<dyn Fn(&Bytes)>;
type FallbackFn = Rc<dyn Fn(&Key, Value)>;
type HookFn = Rc<dyn Fn()>;
type AckFn = Box<dyn FnOnce(Result<Option<usize>, ChannelError>)>;

/// What `publish` did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishStatus {
    /// Handed to the connection (or the in-process hub).
    Sent,
    /// Held in the bounded buffer until the client reconnects.
    Buffered,
}

enum Transport {
    Tcp(AsyncTcpConnection),
    Redis(Rc<RedisLink>),
    Local {
        hub: Option<HubHandle>,
        me: LocalSink,
        /// Where subscribers say they handled deliveries this client waits for.
        handled: Recipient<LocalHandled>,
        id: u64,
        /// Messages given to the hub that it has not finished (see `channel::routes`).
        busy: Arc<AtomicUsize>,
    },
}

struct Queue {
    callback: EventFn,
    auto_reserve: bool,
}

/// An event callback: with the decoded data, or with its PHP-serialized bytes.
#[derive(Clone)]
enum OnEvent {
    Value(EventFn),
    Raw(RawFn),
}

struct ClientInner {
    addr: String,
    transport: RefCell<Option<Transport>>,
    events: RefCell<BTreeMap<Key, Option<OnEvent>>>,
    queues: RefCell<BTreeMap<Key, Queue>>,
    on_message: RefCell<Option<FallbackFn>>,
    on_connect: RefCell<Option<HookFn>>,
    on_close: RefCell<Option<HookFn>>,
    connected: Cell<bool>,
    closed: Cell<bool>,
    pending: RefCell<VecDeque<Command>>,
    pending_bytes: Cell<usize>,
    max_pending: Cell<usize>,
    backoff: Cell<Duration>,
    ping: Cell<Option<TimerId>>,
    decode_errors: Cell<u64>,
    secret: Option<String>,
    /// The server acknowledges publishes that carry an id (it answered our hello).
    acks: Cell<bool>,
    /// This server answered a hello before: after a reconnect, wait for it again.
    acks_known: Cell<bool>,
    /// This client, for timers.
    me: RefCell<Weak<ClientInner>>,
    /// Waiting for the answer to this connection's hello (a PHP server never answers).
    hello_pending: Cell<bool>,
    next_ack: Cell<i64>,
    pending_acks: RefCell<BTreeMap<i64, AckFn>>,
    /// Commands for an in-process hub made during this turn of the thread, sent as one
    /// message when the turn ends (a task spawned with the first of them).
    /// A command may carry the id of a confirmation the hub sends back.
    outbox: RefCell<Vec<(Command, Option<i64>)>>,
    /// Confirmations of publishes this thread delivered itself that wait for lagging
    /// subscribers: notice token → confirmation ids; confirmation id → (notices still to
    /// come, subscribers reached). See `channel::routes`.
    handled_wait: RefCell<HashMap<u64, Vec<i64>>>,
    ack_wait: RefCell<HashMap<i64, (usize, usize)>>,
    next_token: Cell<u64>,
    /// When each waiting notice is given up on, in token order; a sweep timer runs while
    /// any wait.
    wait_deadlines: RefCell<VecDeque<(u64, Instant)>>,
    sweeping: Cell<bool>,
}

/// A channel client. Cheap to clone; lives on the thread that created it.
#[derive(Clone)]
pub struct Client(Rc<ClientInner>);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("channel::Client")
            .field("addr", &self.0.addr)
            .field("connected", &self.0.connected.get())
            .finish()
    }
}

impl Client {
    /// Connect to a channel server at `IP:PORT`, to Redis at `redis://[:password@]host:port[/db]`
    /// (see `channel::redis`), or to this process's embedded channel (`embedded`). Must be
    /// called on a worker instance's thread (e.g. in `on_worker_start`).
    /// Connecting continues in the background; commands made meanwhile are kept.
    ///
    /// A channel server that requires a secret gets the one in `$WERKMANN_CHANNEL_SECRET`;
    /// see [`Client::connect_with_secret`].
    pub fn connect(addr: &str) -> Result<Client, ChannelError> {
        let secret = std::env::var("WERKMANN_CHANNEL_SECRET").ok();
        Client::connect_with_secret(addr, secret.as_deref().filter(|s| !s.is_empty()))
    }

    /// Connect, authenticating to the channel server with `secret` (a werkmann extension; see
    /// `channel::auth`). The secret is not used for Redis (put a password in its URL) nor for
    /// an in-process channel.
    pub fn connect_with_secret(addr: &str, secret: Option<&str>) -> Result<Client, ChannelError> {
        if actix_rt::Arbiter::try_current().is_none() {
            return Err(ChannelError::NotOnWorkerThread);
        }
        let addr = addr
            .trim_start_matches("channel://")
            .trim_start_matches("frame://")
            .trim_end_matches('/')
            .to_string();
        let inner = Rc::new(ClientInner {
            // Shown in logs and errors: without a password.
            addr: super::redis::redact(&addr),
            transport: RefCell::new(None),
            events: RefCell::new(BTreeMap::new()),
            queues: RefCell::new(BTreeMap::new()),
            on_message: RefCell::new(None),
            on_connect: RefCell::new(None),
            on_close: RefCell::new(None),
            connected: Cell::new(false),
            closed: Cell::new(false),
            pending: RefCell::new(VecDeque::new()),
            pending_bytes: Cell::new(0),
            max_pending: Cell::new(DEFAULT_MAX_PENDING),
            backoff: Cell::new(FIRST_BACKOFF),
            ping: Cell::new(None),
            decode_errors: Cell::new(0),
            secret: secret.map(str::to_string),
            acks: Cell::new(false),
            acks_known: Cell::new(false),
            me: RefCell::new(Weak::new()),
            hello_pending: Cell::new(false),
            next_ack: Cell::new(1),
            pending_acks: RefCell::new(BTreeMap::new()),
            handled_wait: RefCell::new(HashMap::new()),
            ack_wait: RefCell::new(HashMap::new()),
            next_token: Cell::new(0),
            wait_deadlines: RefCell::new(VecDeque::new()),
            sweeping: Cell::new(false),
            outbox: RefCell::new(Vec::new()),
        });
        *inner.me.borrow_mut() = Rc::downgrade(&inner);
        let client = Client(inner);
        if addr.starts_with("redis://") || addr.starts_with("rediss://") {
            let owner: Rc<dyn RedisOwner> = client.0.clone();
            let link =
                RedisLink::start(&addr, Rc::downgrade(&owner)).map_err(ChannelError::BadAddress)?;
            *client.0.transport.borrow_mut() = Some(Transport::Redis(link));
        } else if hub::lookup(&addr).is_some() {
            client.start_local();
        } else {
            client.start_tcp()?;
        }
        Ok(client)
    }

    fn start_local(&self) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let pending = Arc::new(AtomicUsize::new(0));
        let actor = ClientActor {
            inner: Rc::downgrade(&self.0),
            pending: pending.clone(),
        }
        .start();
        let me = LocalSink {
            recipient: actor.clone().recipient(),
            pending,
        };
        *self.0.transport.borrow_mut() = Some(Transport::Local {
            hub: None,
            me,
            handled: actor.recipient(),
            id,
            busy: Arc::new(AtomicUsize::new(0)),
        });
        // Attach after the caller has set its callbacks, as a TCP connect would.
        let weak = Rc::downgrade(&self.0);
        actix_rt::spawn(async move { attach_local(weak) });
    }

    fn start_tcp(&self) -> Result<(), ChannelError> {
        // `tls://HOST:PORT` is the frame protocol over TLS.
        let url = if self.0.addr.starts_with("tls://") {
            self.0.addr.clone()
        } else {
            format!("frame://{}", self.0.addr)
        };
        let conn =
            AsyncTcpConnection::new(&url).map_err(|e| ChannelError::BadAddress(e.to_string()))?;
        conn.set_max_send_buffer_size(self.0.max_pending.get());
        let weak = Rc::downgrade(&self.0);
        conn.on_connect(move |_| {
            if let Some(inner) = weak.upgrade() {
                inner.transport_up();
            }
        });
        let weak = Rc::downgrade(&self.0);
        conn.on_message(move |c, msg| {
            let Some(inner) = weak.upgrade() else { return };
            let payload = match msg {
                Message::Binary(b) => b,
                other => Bytes::copy_from_slice(other.as_bytes()),
            };
            match Delivery::decode(&payload) {
                Ok(d) => inner.dispatch(d),
                Err(e) => {
                    log::warn!(
                        "channel server {}: bad message: {e}; reconnecting",
                        inner.addr
                    );
                    c.close();
                }
            }
        });
        let weak = Rc::downgrade(&self.0);
        conn.on_error(move |_, e| {
            if let Some(inner) = weak.upgrade() {
                log::debug!("channel {}: {e}", inner.addr);
            }
        });
        let weak = Rc::downgrade(&self.0);
        conn.on_close(move |_| {
            if let Some(inner) = weak.upgrade() {
                inner.transport_down();
            }
        });
        conn.connect();
        *self.0.transport.borrow_mut() = Some(Transport::Tcp(conn));
        let weak = Rc::downgrade(&self.0);
        let ping = Timer::add(
            PING_INTERVAL,
            move || {
                if let Some(inner) = weak.upgrade() {
                    if inner.connected.get() {
                        let _ = inner.send(Command::Ping);
                    }
                }
            },
            true,
        );
        self.0.ping.set(Some(ping));
        Ok(())
    }

    /// The server address (a Redis URL without its password).
    pub fn addr(&self) -> &str {
        &self.0.addr
    }

    /// Whether the client is connected to its server now.
    pub fn is_connected(&self) -> bool {
        self.0.connected.get()
    }

    /// Bound what is held for the server while disconnected (default 16 MiB).
    pub fn set_max_pending(&self, bytes: usize) {
        self.0.max_pending.set(bytes);
    }

    /// Messages whose data could not be decoded (and were not delivered to callbacks).
    pub fn decode_errors(&self) -> u64 {
        self.0.decode_errors.get()
    }

    /// Subscribe to `event` and call `f` with each event's data (Workerman's
    /// `Channel\Client::on`). Event names are strings or integers; `"1"` and `1` are one name.
    pub fn on(&self, event: impl Into<Key>, f: impl Fn(Value) + 'static) {
        self.subscribe_with(event.into(), OnEvent::Value(Rc::new(f)));
    }

    /// Subscribe to `event` and call `f` with each event's data as published: PHP
    /// `serialize()` bytes, not decoded (nor checked beyond where the value ends). For hot
    /// paths that read a field or two with [`php_serde::Reader`]; data that [`Client::on`]
    /// could not decode reaches `f` too.
    pub fn on_raw(&self, event: impl Into<Key>, f: impl Fn(&Bytes) + 'static) {
        self.subscribe_with(event.into(), OnEvent::Raw(Rc::new(f)));
    }

    fn subscribe_with(&self, key: Key, f: OnEvent) {
        self.0.events.borrow_mut().insert(key.clone(), Some(f));
        self.0
            .send_if_connected(Command::Subscribe(vec![WireName::from_key(key)]));
    }

    /// Subscribe without a callback of its own: events go to [`Client::on_message`].
    pub fn subscribe(&self, events: impl IntoNames) {
        let names = events.into_names();
        {
            let mut map = self.0.events.borrow_mut();
            for n in &names {
                map.entry(n.clone()).or_insert(None);
            }
        }
        self.0.send_if_connected(Command::Subscribe(wire(names)));
    }

    /// Stop receiving these events.
    pub fn unsubscribe(&self, events: impl IntoNames) {
        let names = events.into_names();
        {
            let mut map = self.0.events.borrow_mut();
            for n in &names {
                map.remove(n);
            }
        }
        self.0.send_if_connected(Command::Unsubscribe(wire(names)));
    }

    /// Called with events that have no callback of their own.
    pub fn on_message(&self, f: impl Fn(&Key, Value) + 'static) {
        *self.0.on_message.borrow_mut() = Some(Rc::new(f));
    }

    /// Called each time the client (re)connects, after it re-subscribed.
    pub fn on_connect(&self, f: impl Fn() + 'static) {
        *self.0.on_connect.borrow_mut() = Some(Rc::new(f));
    }

    /// Called each time the connection to the server is lost.
    pub fn on_close(&self, f: impl Fn() + 'static) {
        *self.0.on_close.borrow_mut() = Some(Rc::new(f));
    }

    /// Send `data` to every subscriber of each event.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        events: impl IntoNames,
        data: &T,
    ) -> Result<PublishStatus, ChannelError> {
        let data = encode(data)?;
        self.0
            .send(Command::Publish(wire(events.into_names()), data))
    }

    /// Publish and learn whether it was delivered: `on_done(Ok(Some(n)))` once a werkmann
    /// channel server has written the event to its `n` subscribers, or once Redis answered the
    /// `PUBLISH` with the `n` subscriptions it reached, or once an in-process channel handed it
    /// to its `n` subscribers; `Ok(None)` when the server does not acknowledge (a PHP server)
    /// once the client has handed it over;
    /// `Err(Disconnected)` at once when not connected; `Err(Unconfirmed)` if the connection
    /// drops first (a confirmed publish is not sent again).
    pub fn publish_confirmed<T: Serialize + ?Sized>(
        &self,
        events: impl IntoNames,
        data: &T,
        on_done: impl FnOnce(Result<Option<usize>, ChannelError>) + 'static,
    ) {
        match encode(data) {
            Ok(d) => self
                .publish_command_confirmed(Command::Publish(wire(events.into_names()), d), on_done),
            Err(e) => on_done(Err(e)),
        }
    }

    /// [`Client::publish_confirmed`] for bytes already in PHP `serialize()` format.
    pub fn publish_raw_confirmed(
        &self,
        events: impl IntoNames,
        php_serialized: Bytes,
        on_done: impl FnOnce(Result<Option<usize>, ChannelError>) + 'static,
    ) {
        if let Err(e) = php_serde::Reader::new(&php_serialized).skip() {
            return on_done(Err(ChannelError::Encode(e.to_string())));
        }
        let cmd = Command::Publish(wire(events.into_names()), php_serialized);
        self.publish_command_confirmed(cmd, on_done);
    }

    fn publish_command_confirmed(
        &self,
        cmd: Command,
        on_done: impl FnOnce(Result<Option<usize>, ChannelError>) + 'static,
    ) {
        let inner = &self.0;
        if !inner.connected.get() || inner.hello_pending.get() {
            return on_done(Err(ChannelError::Disconnected));
        }
        let redis = match inner.transport.borrow().as_ref() {
            Some(Transport::Redis(link)) => Some(link.clone()),
            _ => None,
        };
        if let Some(link) = redis {
            return link.publish_confirmed(cmd, Box::new(on_done));
        }
        let local = matches!(
            inner.transport.borrow().as_ref(),
            Some(Transport::Local { hub: Some(_), .. })
        );
        if local {
            // The hub answers with the subscribers it handed the event to, when its turn ends.
            let id = inner.next_ack.get();
            inner.next_ack.set(id + 1);
            inner
                .pending_acks
                .borrow_mut()
                .insert(id, Box::new(on_done));
            inner.push_outbox(cmd, Some(id));
            return;
        }
        let tcp = match inner.transport.borrow().as_ref() {
            Some(Transport::Tcp(c)) => Some(c.clone()),
            _ => None,
        };
        match tcp {
            Some(c) if inner.acks.get() => {
                let id = inner.next_ack.get();
                inner.next_ack.set(id + 1);
                let payload = Bytes::from(cmd.encode_payload_with_id(id));
                if c.send(Message::Binary(payload)).is_ok() {
                    inner
                        .pending_acks
                        .borrow_mut()
                        .insert(id, Box::new(on_done));
                } else {
                    on_done(Err(ChannelError::BufferFull {
                        limit: inner.max_pending.get(),
                    }));
                }
            }
            _ => match inner.send(cmd) {
                Ok(PublishStatus::Sent) => on_done(Ok(None)),
                Ok(PublishStatus::Buffered) => on_done(Err(ChannelError::Disconnected)),
                Err(e) => on_done(Err(e)),
            },
        }
    }

    /// Send bytes already in PHP `serialize()` format.
    pub fn publish_raw(
        &self,
        events: impl IntoNames,
        php_serialized: Bytes,
    ) -> Result<PublishStatus, ChannelError> {
        php_serde::Reader::new(&php_serialized)
            .skip()
            .map_err(|e| ChannelError::Encode(e.to_string()))?;
        self.0
            .send(Command::Publish(wire(events.into_names()), php_serialized))
    }

    /// Send `data` to one subscriber of each event, in turn (Workerman's `publish($e, $d, true)`).
    pub fn publish_loop<T: Serialize + ?Sized>(
        &self,
        events: impl IntoNames,
        data: &T,
    ) -> Result<PublishStatus, ChannelError> {
        let data = encode(data)?;
        self.0
            .send(Command::PublishLoop(wire(events.into_names()), data))
    }

    /// Append `data` to each queue; each item goes to exactly one watcher.
    pub fn enqueue<T: Serialize + ?Sized>(
        &self,
        queues: impl IntoNames,
        data: &T,
    ) -> Result<PublishStatus, ChannelError> {
        let data = encode(data)?;
        self.0
            .send(Command::Enqueue(wire(queues.into_names()), data))
    }

    /// Watch queues: `f` gets one item at a time. With `auto_reserve` the client asks for the
    /// next item after each callback; without, call [`Client::reserve`].
    pub fn watch(&self, queues: impl IntoNames, f: impl Fn(Value) + 'static, auto_reserve: bool) {
        let names = queues.into_names();
        let f: EventFn = Rc::new(f);
        {
            let mut map = self.0.queues.borrow_mut();
            for n in &names {
                map.insert(
                    n.clone(),
                    Queue {
                        callback: f.clone(),
                        auto_reserve,
                    },
                );
            }
        }
        self.0.send_if_connected(Command::Watch(wire(names)));
        if auto_reserve {
            self.0.send_if_connected(Command::Reserve);
        }
    }

    /// Stop watching queues.
    pub fn unwatch(&self, queues: impl IntoNames) {
        let names = queues.into_names();
        {
            let mut map = self.0.queues.borrow_mut();
            for n in &names {
                map.remove(n);
            }
        }
        self.0.send_if_connected(Command::Unwatch(wire(names)));
    }

    /// Ask for the next item of each watched queue.
    pub fn reserve(&self) {
        self.0.send_if_connected(Command::Reserve);
    }

    /// Disconnect for good.
    pub fn close(&self) {
        self.0.shutdown();
    }
}

/// The first command to a server that requires a secret.
pub(crate) fn auth_command(secret: &str) -> Command {
    let mut data = Vec::new();
    php_serde::write_str(&mut data, super::auth::token(secret).as_bytes());
    Command::Auth(Bytes::from(data))
}

fn wire(names: Vec<Key>) -> Vec<WireName> {
    names.into_iter().map(WireName::from_key).collect()
}

fn encode<T: Serialize + ?Sized>(data: &T) -> Result<Bytes, ChannelError> {
    let v = serde_json::to_value(data).map_err(|e| ChannelError::Encode(e.to_string()))?;
    Ok(php_serde::to_vec(&v).into())
}

fn attach_local(weak: Weak<ClientInner>) {
    let Some(inner) = weak.upgrade() else { return };
    if inner.closed.get() {
        return;
    }
    match hub::lookup(&inner.addr) {
        Some(Some(running)) => {
            if let Some(Transport::Local { hub, .. }) = inner.transport.borrow_mut().as_mut() {
                *hub = Some(running);
            }
            inner.transport_up();
        }
        _ => {
            // The hub's thread has not started it yet.
            Timer::once(Duration::from_millis(10), move || attach_local(weak));
        }
    }
}

impl ClientInner {
    fn transport_up(&self) {
        self.connected.set(true);
        self.backoff.set(FIRST_BACKOFF);
        let tcp = matches!(self.transport.borrow().as_ref(), Some(Transport::Tcp(_)));
        if let (true, Some(secret)) = (tcp, &self.secret) {
            let _ = self.send(auth_command(secret));
        }
        if tcp {
            self.hello_pending.set(true);
            let _ = self.send(Command::Hello);
            if !self.acks_known.get() {
                // A server that has not answered within a second does not acknowledge.
                let weak = self.me.borrow().clone();
                Timer::once(Duration::from_secs(1), move || {
                    if let Some(inner) = weak.upgrade() {
                        if !inner.acks_known.get() {
                            inner.hello_pending.set(false);
                        }
                    }
                });
            }
        }
        let events: Vec<Key> = self.events.borrow().keys().cloned().collect();
        if !events.is_empty() {
            let _ = self.send(Command::Subscribe(wire(events)));
        }
        let (queues, reserve): (Vec<Key>, bool) = {
            let q = self.queues.borrow();
            (
                q.keys().cloned().collect(),
                q.values().any(|q| q.auto_reserve),
            )
        };
        if !queues.is_empty() {
            let _ = self.send(Command::Watch(wire(queues)));
            if reserve {
                let _ = self.send(Command::Reserve);
            }
        }
        let pending: Vec<Command> = self.pending.borrow_mut().drain(..).collect();
        self.pending_bytes.set(0);
        for cmd in pending {
            if let Err(e) = self.send(cmd) {
                log::error!(
                    "channel {}: buffered command lost on reconnect: {e}",
                    self.addr
                );
            }
        }
        log::debug!("channel {} connected", self.addr);
        let cb = self.on_connect.borrow().clone();
        if let Some(cb) = cb {
            guard("channel on_connect", || cb());
        }
    }

    fn transport_down(&self) {
        let was = self.connected.replace(false);
        self.acks.set(false);
        self.handled_wait.borrow_mut().clear();
        self.ack_wait.borrow_mut().clear();
        self.wait_deadlines.borrow_mut().clear();
        let unconfirmed = std::mem::take(&mut *self.pending_acks.borrow_mut());
        for (_, cb) in unconfirmed {
            guard("channel publish confirmation", || {
                cb(Err(ChannelError::Unconfirmed))
            });
        }
        if self.closed.get() {
            return;
        }
        if was {
            log::warn!("channel {} connection lost; reconnecting", self.addr);
            let cb = self.on_close.borrow().clone();
            if let Some(cb) = cb {
                guard("channel on_close", || cb());
            }
        }
        let after = self.backoff.get();
        self.backoff.set((after * 2).min(MAX_BACKOFF));
        if let Some(Transport::Tcp(c)) = self.transport.borrow().as_ref() {
            c.reconnect(after);
        }
    }

    fn send_if_connected(&self, cmd: Command) {
        if self.connected.get() {
            let _ = self.send(cmd);
        }
    }

    /// Hand a command to the transport, or buffer it while disconnected.
    fn send(&self, cmd: Command) -> Result<PublishStatus, ChannelError> {
        if self.closed.get() {
            return Err(ChannelError::Closed);
        }
        if !self.connected.get() {
            let size = cmd.encode_payload().len() + 4;
            let limit = self.max_pending.get();
            if self.pending_bytes.get() + size > limit {
                return Err(ChannelError::BufferFull { limit });
            }
            self.pending_bytes.set(self.pending_bytes.get() + size);
            self.pending.borrow_mut().push_back(cmd);
            return Ok(PublishStatus::Buffered);
        }
        match self.transport.borrow().as_ref() {
            Some(Transport::Tcp(c)) => {
                let payload = Bytes::from(cmd.encode_payload());
                if c.send(Message::Binary(payload)).is_ok() {
                    Ok(PublishStatus::Sent)
                } else {
                    Err(ChannelError::BufferFull {
                        limit: self.max_pending.get(),
                    })
                }
            }
            Some(Transport::Redis(link)) => {
                link.send(cmd);
                Ok(PublishStatus::Sent)
            }
            Some(Transport::Local { hub: Some(_), .. }) => {
                self.push_outbox(cmd, None);
                Ok(PublishStatus::Sent)
            }
            _ => Err(ChannelError::Closed),
        }
    }

    /// Collect a command for the in-process hub; the first of a turn schedules the flush.
    fn push_outbox(&self, cmd: Command, ack: Option<i64>) {
        let mut outbox = self.outbox.borrow_mut();
        outbox.push((cmd, ack));
        if outbox.len() == 1 {
            let weak = self.me.borrow().clone();
            actix_rt::spawn(async move {
                if let Some(inner) = weak.upgrade() {
                    inner.flush_outbox();
                }
            });
        }
    }

    /// Send the commands collected for the in-process hub: delivered here when every one is
    /// a publish to in-process subscribers only and the hub has sent out what it was given
    /// before (see `channel::routes`); else one message to the hub.
    fn flush_outbox(&self) {
        let cmds = std::mem::take(&mut *self.outbox.borrow_mut());
        if cmds.is_empty() {
            return;
        }
        let mut done: Vec<(i64, Result<Option<usize>, ChannelError>)> = Vec::new();
        if let Some(Transport::Local {
            hub: Some(hub),
            me,
            handled,
            id,
            busy,
        }) = self.transport.borrow().as_ref()
        {
            let direct = if busy.load(Ordering::Acquire) == 0 {
                let mut token = self.next_token.get();
                let d = hub.routes.deliver(&cmds, handled, &mut token);
                self.next_token.set(token);
                d
            } else {
                None
            };
            if let Some(direct) = direct {
                let mut waits = vec![0; cmds.len()];
                for (token, of) in &direct.waits {
                    let acks: Vec<i64> = of.iter().filter_map(|&i| cmds[i].1).collect();
                    for &i in of {
                        waits[i] += 1;
                    }
                    self.wait_handled(*token, acks);
                }
                for (i, ((_, ack), n)) in cmds.iter().zip(direct.reached).enumerate() {
                    match (ack, waits[i]) {
                        (Some(a), 0) => done.push((*a, Ok(Some(n)))),
                        (Some(a), w) => {
                            self.ack_wait.borrow_mut().insert(*a, (w, n));
                        }
                        (None, _) => {}
                    }
                }
            } else if hub.addr.connected() {
                busy.fetch_add(1, Ordering::AcqRel);
                hub.addr.do_send(LocalCommand {
                    id: *id,
                    sink: me.clone(),
                    cmds,
                    busy: busy.clone(),
                });
            } else {
                // The hub is gone: nothing of this turn was taken.
                log::warn!(
                    "channel {}: in-process hub did not take {} commands",
                    self.addr,
                    cmds.len()
                );
                for (_, a) in cmds {
                    if let Some(a) = a {
                        done.push((a, Err(ChannelError::Unconfirmed)));
                    }
                }
            }
        }
        for (a, result) in done {
            let cb = self.pending_acks.borrow_mut().remove(&a);
            if let Some(cb) = cb {
                guard("channel publish confirmation", || cb(result));
            }
        }
    }

    /// Confirmations `acks` wait for the subscriber notice `token` (or for `HANDLED_WAIT`).
    fn wait_handled(&self, token: u64, acks: Vec<i64>) {
        if acks.is_empty() {
            return;
        }
        self.handled_wait.borrow_mut().insert(token, acks);
        self.wait_deadlines
            .borrow_mut()
            .push_back((token, Instant::now() + HANDLED_WAIT));
        if !self.sweeping.replace(true) {
            self.sweep_later();
        }
    }

    /// One timer per client, while confirmations wait: gives those waiting past their
    /// deadline (a subscriber stuck in a callback must not hold a publisher's answer forever).
    fn sweep_later(&self) {
        let weak = self.me.borrow().clone();
        Timer::once(Duration::from_secs(1), move || {
            let Some(inner) = weak.upgrade() else { return };
            let now = Instant::now();
            loop {
                let front = inner.wait_deadlines.borrow().front().copied();
                match front {
                    Some((token, deadline)) if deadline <= now => {
                        inner.wait_deadlines.borrow_mut().pop_front();
                        if inner.handled_wait.borrow().contains_key(&token) {
                            log::warn!(
                                "channel {}: an in-process subscriber has not handled events \
                                 for {HANDLED_WAIT:?}; confirming them as handed over",
                                inner.addr
                            );
                            inner.handled(token);
                        }
                    }
                    _ => break,
                }
            }
            if inner.wait_deadlines.borrow().is_empty() {
                inner.sweeping.set(false);
            } else {
                inner.sweep_later();
            }
        });
    }

    /// A subscriber handled the deliveries of notice `token`: give the confirmations that
    /// waited for nothing else.
    fn handled(&self, token: u64) {
        let Some(acks) = self.handled_wait.borrow_mut().remove(&token) else {
            return;
        };
        {
            // Deadlines of notices already in: forget them (they come in order, mostly).
            let waiting = self.handled_wait.borrow();
            let mut deadlines = self.wait_deadlines.borrow_mut();
            while deadlines
                .front()
                .is_some_and(|(t, _)| !waiting.contains_key(t))
            {
                deadlines.pop_front();
            }
        }
        for a in acks {
            let ready = {
                let mut wait = self.ack_wait.borrow_mut();
                match wait.get_mut(&a) {
                    Some((left, _)) if *left > 1 => {
                        *left -= 1;
                        None
                    }
                    Some(_) => wait.remove(&a).map(|(_, n)| n),
                    None => None,
                }
            };
            let cb = ready.and_then(|_| self.pending_acks.borrow_mut().remove(&a));
            if let (Some(cb), Some(n)) = (cb, ready) {
                guard("channel publish confirmation", || cb(Ok(Some(n))));
            }
        }
    }

    fn dispatch(&self, d: Delivery) {
        if d.kind == DeliveryKind::Event {
            let cb = self.events.borrow().get(&d.channel).cloned().flatten();
            if let Some(OnEvent::Raw(cb)) = cb {
                guard("channel event", || cb(&d.data));
                return;
            }
        }
        let value = match php_serde::from_slice(&d.data) {
            Ok(v) => v,
            Err(e) => {
                self.decode_errors.set(self.decode_errors.get() + 1);
                log::warn!(
                    "channel {}: data of {} not decodable: {e}",
                    self.addr,
                    d.channel
                );
                return;
            }
        };
        match d.kind {
            DeliveryKind::Hello => {
                self.acks.set(true);
                self.acks_known.set(true);
                self.hello_pending.set(false);
            }
            DeliveryKind::Ack => {
                if let Key::Int(id) = d.channel {
                    let cb = self.pending_acks.borrow_mut().remove(&id);
                    let reached = value.as_u64().map(|n| n as usize);
                    if let Some(cb) = cb {
                        guard("channel publish confirmation", || cb(Ok(reached)));
                    }
                }
            }
            DeliveryKind::Event => {
                let cb = self.events.borrow().get(&d.channel).cloned().flatten();
                match cb {
                    Some(OnEvent::Value(cb)) => guard("channel event", || cb(value)),
                    Some(OnEvent::Raw(cb)) => guard("channel event", || cb(&d.data)),
                    None => {
                        let fallback = self.on_message.borrow().clone();
                        match fallback {
                            Some(f) => guard("channel on_message", || f(&d.channel, value)),
                            None => log::warn!("channel event {} has no callback", d.channel),
                        }
                    }
                }
            }
            DeliveryKind::Queue => {
                let q = self
                    .queues
                    .borrow()
                    .get(&d.channel)
                    .map(|q| (q.callback.clone(), q.auto_reserve));
                match q {
                    Some((cb, auto)) => {
                        guard("channel queue", || cb(value));
                        if auto {
                            self.send_if_connected(Command::Reserve);
                        }
                    }
                    None => log::warn!("channel queue {} has no callback", d.channel),
                }
            }
        }
    }

    fn shutdown(&self) {
        if self.closed.replace(true) {
            return;
        }
        self.connected.set(false);
        if let Some(t) = self.ping.take() {
            Timer::del(t);
        }
        // What this turn published still reaches the hub, before the goodbye.
        self.flush_outbox();
        match self.transport.borrow_mut().take() {
            Some(Transport::Tcp(c)) => c.close(),
            Some(Transport::Redis(link)) => link.close(),
            Some(Transport::Local {
                hub: Some(hub), id, ..
            }) => hub.addr.do_send(LocalGone(id)),
            _ => {}
        }
    }
}

impl RedisOwner for ClientInner {
    fn redis_up(&self) {
        if !self.connected.get() {
            self.transport_up();
        }
    }

    fn redis_down(&self) {
        self.transport_down();
    }

    fn redis_delivery(&self, d: Delivery) {
        self.dispatch(d);
    }
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Receives deliveries from an in-process hub on the client's thread.
struct ClientActor {
    inner: Weak<ClientInner>,
    /// Deliveries on their way to this client (see `hub::MAX_LOCAL_PENDING`).
    pending: Arc<AtomicUsize>,
}

impl Actor for ClientActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1 << 16);
    }
}

impl Handler<LocalHandled> for ClientActor {
    type Result = ();
    fn handle(&mut self, msg: LocalHandled, _: &mut Self::Context) {
        if let Some(inner) = self.inner.upgrade() {
            inner.handled(msg.0);
        }
    }
}

impl Handler<LocalDelivery> for ClientActor {
    type Result = ();
    fn handle(&mut self, msg: LocalDelivery, ctx: &mut Self::Context) {
        self.pending.fetch_sub(msg.0.len(), Ordering::AcqRel);
        match self.inner.upgrade() {
            Some(inner) => {
                for d in msg.0 {
                    inner.dispatch(d);
                }
            }
            None => ctx.stop(),
        }
    }
}
