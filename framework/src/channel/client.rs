//! [`Client`]: Workerman's `Channel\Client`, one per worker instance (each instance has its own
//! subscriptions, as each Workerman process does).
//!
//! The client holds what every backend shares — the callbacks, the subscriptions and watches it
//! sends again after a reconnect, a bounded buffer of what is published while disconnected — and
//! talks to its backend through the [`Broker`] seam (`channel::broker`): the in-process hub, a
//! channel server over TCP, or Redis.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::broker::{Broker, BrokerEvents, Endpoint, Leases, Options};
use super::dir::DirOp;
use super::history::{History, Keep, Page, Position};
use super::php_serde::{self, Key};
use super::wire::{Command, Delivery, DeliveryKind, WireName};
use super::{ChannelError, IntoNames};
use crate::callbacks::guard;
use crate::metrics::{self, Backend};

/// Default bound of what a disconnected client holds for its server.
pub const DEFAULT_MAX_PENDING: usize = 16 * 1024 * 1024;

type EventFn = Rc<dyn Fn(Value)>;
type RawFn = Rc<dyn Fn(&Bytes)>;
type KeptFn = Rc<dyn Fn(Option<Position>, &Bytes)>;
type FallbackFn = Rc<dyn Fn(&Key, Value)>;
type HookFn = Rc<dyn Fn()>;

/// What `publish` did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishStatus {
    /// Handed to the connection (or the in-process hub).
    Sent,
    /// Held in the bounded buffer until the client reconnects.
    Buffered,
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
    Kept(KeptFn),
}

struct ClientInner {
    /// The address as shown in logs (a Redis URL without its password).
    addr: String,
    /// Which kind of backend, for the metrics.
    backend: Backend,
    /// It was connected once: a later `up` is a reconnect.
    was_up: Cell<bool>,
    /// The backend; `None` once closed.
    broker: RefCell<Option<Rc<dyn Broker>>>,
    events: RefCell<BTreeMap<Key, Option<OnEvent>>>,
    queues: RefCell<BTreeMap<Key, Queue>>,
    on_message: RefCell<Option<FallbackFn>>,
    on_connect: RefCell<Option<HookFn>>,
    on_close: RefCell<Option<HookFn>>,
    /// The library's own hooks on (re)connect, run after re-subscribing and before what was
    /// held is sent (a gateway node registers its connections again).
    on_up: RefCell<Vec<HookFn>>,
    connected: Cell<bool>,
    closed: Cell<bool>,
    /// Commands made while disconnected, sent on reconnect (at most `max_pending` bytes).
    pending: RefCell<VecDeque<Command>>,
    pending_bytes: Cell<usize>,
    max_pending: Cell<usize>,
    decode_errors: Cell<u64>,
    /// Which names this client's publishes keep in history.
    history: History,
}

/// A [`Client`] that does not keep it alive.
#[derive(Clone)]
pub(crate) struct WeakClient(std::rc::Weak<ClientInner>);

impl WeakClient {
    /// The client, while it lives.
    pub(crate) fn upgrade(&self) -> Option<Client> {
        self.0.upgrade().map(Client)
    }
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
    /// Connect to a channel server at `IP:PORT` (`tls://HOST:PORT` over TLS), to Redis at
    /// `redis://[:password@]host:port[/db]` (see `channel::redis`), or to this process's
    /// embedded channel (`embedded`), with default [`Options`]. Must be called on a worker
    /// instance's thread (e.g. in `on_worker_start`). Connecting continues in the background;
    /// commands made meanwhile are kept.
    pub fn connect(addr: &str) -> Result<Client, ChannelError> {
        Client::connect_with(addr, &Options::default())
    }

    /// Connect, authenticating to the channel server with `secret` (a werkmann extension; see
    /// `channel::auth`). The secret is not used for Redis (put a password in its URL) nor for
    /// an in-process channel.
    pub fn connect_with_secret(addr: &str, secret: Option<&str>) -> Result<Client, ChannelError> {
        let options = Options {
            secret: secret.map(str::to_string),
            ..Options::default()
        };
        Client::connect_with(addr, &options)
    }

    /// Connect with these [`Options`] (secret, private CA).
    pub fn connect_with(addr: &str, options: &Options) -> Result<Client, ChannelError> {
        if actix_rt::Arbiter::try_current().is_none() {
            return Err(ChannelError::NotOnWorkerThread);
        }
        let endpoint = Endpoint::parse(addr)?;
        let inner = Rc::new(ClientInner {
            addr: endpoint.shown(),
            backend: match endpoint {
                Endpoint::Local(_) => Backend::Embedded,
                Endpoint::Tcp { .. } => Backend::Channel,
                Endpoint::Redis(_) => Backend::Redis,
            },
            was_up: Cell::new(false),
            broker: RefCell::new(None),
            events: RefCell::new(BTreeMap::new()),
            queues: RefCell::new(BTreeMap::new()),
            on_message: RefCell::new(None),
            on_connect: RefCell::new(None),
            on_close: RefCell::new(None),
            on_up: RefCell::new(Vec::new()),
            connected: Cell::new(false),
            closed: Cell::new(false),
            pending: RefCell::new(VecDeque::new()),
            pending_bytes: Cell::new(0),
            max_pending: Cell::new(DEFAULT_MAX_PENDING),
            decode_errors: Cell::new(0),
            history: options.history.clone(),
        });
        let events: Rc<dyn BrokerEvents> = inner.clone();
        let b = super::backends::open(&endpoint, options, Rc::downgrade(&events))?;
        *inner.broker.borrow_mut() = Some(b);
        Ok(Client(inner))
    }

    /// The worker-id store of this client's backend, if it has one (see `channel::worker_ids`).
    pub(crate) fn leases(&self) -> Option<Rc<dyn Leases>> {
        self.0.broker.borrow().as_ref().and_then(|b| b.leases())
    }

    /// A handle that does not keep the client alive (for its own callbacks).
    pub(crate) fn downgrade(&self) -> WeakClient {
        WeakClient(Rc::downgrade(&self.0))
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

    /// Subscribe to `event` and call `f` with each event's PHP-serialized data and its
    /// position in the name's history (`None` when its publisher did not keep it; see
    /// `channel::history`). What a resuming reader uses, with [`Client::history`].
    pub fn on_kept(&self, event: impl Into<Key>, f: impl Fn(Option<Position>, &Bytes) + 'static) {
        self.subscribe_with(event.into(), OnEvent::Kept(Rc::new(f)));
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

    /// Call `ready` once the subscription to `event` (made with [`Client::on`],
    /// [`Client::on_kept`], …) is in effect where events are published: whatever is published
    /// after that, from any process of the cluster, reaches it — so a client may be told it
    /// is subscribed. `Err` when that is not known (not connected: the link subscribes afresh
    /// once it is back). A server that confirms nothing (Workerman's) is answered once the
    /// subscription is written. May call `ready` before it returns.
    pub fn when_subscribed(
        &self,
        event: impl Into<Key>,
        ready: impl FnOnce(Result<(), ChannelError>) + 'static,
    ) {
        // A subscription again, confirmed: the backend applies a link's commands in order
        // and a second subscription changes nothing, so its confirmation is the first's.
        let names = vec![WireName::from_key(event.into())];
        self.applied(Command::Subscribe(names), ready);
    }

    /// Send `cmd` confirmed on the live link: `ready(Ok(()))` once the backend applied it,
    /// `Err` when that is not known (not connected, or the link failed first).
    fn applied(&self, cmd: Command, ready: impl FnOnce(Result<(), ChannelError>) + 'static) {
        match self.live_broker() {
            Some(b) => b.publish_confirmed(cmd, Box::new(move |r| ready(r.map(|_| ())))),
            None => ready(Err(ChannelError::Disconnected)),
        }
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
        self.send_publishes(events.into_names(), data)
    }

    /// The commands of a publish: one, kept when its names keep history (`Options::history`);
    /// one per name when their rules differ.
    fn publish_commands(&self, names: Vec<Key>, data: Bytes) -> Vec<Command> {
        let rules = &self.0.history;
        if rules.is_none() {
            return vec![Command::Publish(wire(names), data)];
        }
        let keeps: Vec<Option<Keep>> = names.iter().map(|n| rules.keep_for(n)).collect();
        let one = |names: Vec<Key>, keep: Option<Keep>, data: Bytes| match keep {
            Some(keep) => Command::PublishKept(wire(names), data, keep),
            None => Command::Publish(wire(names), data),
        };
        if keeps.windows(2).all(|w| w[0] == w[1]) {
            let keep = keeps.first().copied().flatten();
            return vec![one(names, keep, data)];
        }
        names
            .into_iter()
            .zip(keeps)
            .map(|(n, keep)| one(vec![n], keep, data.clone()))
            .collect()
    }

    fn send_publishes(&self, names: Vec<Key>, data: Bytes) -> Result<PublishStatus, ChannelError> {
        let mut status = PublishStatus::Sent;
        for cmd in self.publish_commands(names, data) {
            if self.0.send(cmd)? == PublishStatus::Buffered {
                status = PublishStatus::Buffered;
            }
        }
        Ok(status)
    }

    /// Publish confirmed, as one command or several (the counts summed, the first error or
    /// an unconfirmed part wins).
    /// With `wake`, parked subscriptions get it too (`Command::Waking`, where the backend parks).
    fn publish_confirmed_names(
        &self,
        names: Vec<Key>,
        data: Bytes,
        wake: bool,
        on_done: impl FnOnce(Result<Option<usize>, ChannelError>) + 'static,
    ) {
        let mut cmds = self.publish_commands(names, data);
        if wake && self.live_broker().is_some_and(|b| b.parks()) {
            cmds = cmds
                .into_iter()
                .map(|c| Command::Waking(Box::new(c)))
                .collect();
        }
        if cmds.len() == 1 {
            return self.publish_command_confirmed(cmds.remove(0), on_done);
        }
        type Done = Box<dyn FnOnce(Result<Option<usize>, ChannelError>)>;
        let left = Rc::new(RefCell::new((
            cmds.len(),
            Ok(Some(0)),
            Some(Box::new(on_done) as Done),
        )));
        for cmd in cmds {
            let left = left.clone();
            self.publish_command_confirmed(cmd, move |r| {
                let mut st = left.borrow_mut();
                st.0 -= 1;
                st.1 = match (std::mem::replace(&mut st.1, Ok(None)), r) {
                    (Err(e), _) | (_, Err(e)) => Err(e),
                    (Ok(Some(a)), Ok(Some(b))) => Ok(Some(a + b)),
                    _ => Ok(None),
                };
                if st.0 == 0 {
                    let result = std::mem::replace(&mut st.1, Ok(None));
                    if let Some(done) = st.2.take() {
                        drop(st);
                        done(result);
                    }
                }
            });
        }
    }

    /// What `event`'s publishes keep in history, by this client's rules (`Options::history`).
    pub fn history_rule(&self, event: impl Into<Key>) -> Option<Keep> {
        self.0.history.keep_for(&event.into())
    }

    /// Read `event`'s history since `since` (`None`: only where it stands): what came after
    /// it, in order, and whether that is all (`Page::recovered`); see `channel::history`.
    /// `Disconnected` at once when not connected, `NoHistory` from a server that keeps none.
    pub fn history(
        &self,
        event: impl Into<Key>,
        since: Option<Position>,
        on_done: impl FnOnce(Result<Page, ChannelError>) + 'static,
    ) {
        let Some(b) = self.live_broker() else {
            return on_done(Err(ChannelError::Disconnected));
        };
        let cmd = Command::History(WireName::from_key(event.into()), since);
        b.request(
            cmd,
            self.timed(move |answer: Result<Bytes, ChannelError>| {
                on_done(answer.and_then(|bytes| {
                    Page::decode(&bytes)
                        .map_err(|e| ChannelError::Refused(format!("bad history answer: {e}")))
                }))
            }),
        );
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
            Ok(d) => self.publish_confirmed_names(events.into_names(), d, false, on_done),
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
        self.publish_raw_confirmed_as(events, php_serialized, false, on_done);
    }

    /// [`Client::publish_raw_confirmed`] that parked subscriptions get too: a publish every
    /// subscriber must answer (a delivery report's, `channel::report`).
    pub(crate) fn publish_raw_confirmed_waking(
        &self,
        events: impl IntoNames,
        php_serialized: Bytes,
        on_done: impl FnOnce(Result<Option<usize>, ChannelError>) + 'static,
    ) {
        self.publish_raw_confirmed_as(events, php_serialized, true, on_done);
    }

    fn publish_raw_confirmed_as(
        &self,
        events: impl IntoNames,
        php_serialized: Bytes,
        wake: bool,
        on_done: impl FnOnce(Result<Option<usize>, ChannelError>) + 'static,
    ) {
        if let Err(e) = php_serde::Reader::new(&php_serialized).skip() {
            return on_done(Err(ChannelError::Encode(e.to_string())));
        }
        self.publish_confirmed_names(events.into_names(), php_serialized, wake, on_done);
    }

    fn publish_command_confirmed(
        &self,
        cmd: Command,
        on_done: impl FnOnce(Result<Option<usize>, ChannelError>) + 'static,
    ) {
        match self.live_broker() {
            Some(b) => b.publish_confirmed(cmd, self.timed(on_done)),
            None => on_done(Err(ChannelError::Disconnected)),
        }
    }

    /// `on_done`, counting the time until it is called in the round-trip histogram.
    fn timed<T: 'static>(&self, on_done: impl FnOnce(T) + 'static) -> Box<dyn FnOnce(T)> {
        let (backend, sent) = (self.0.backend, Instant::now());
        Box::new(move |answer| {
            metrics::round_trip(backend, sent.elapsed());
            on_done(answer)
        })
    }

    /// The broker, while connected (what is answered must not wait in the pending buffer).
    fn live_broker(&self) -> Option<Rc<dyn Broker>> {
        let inner = &self.0;
        let broker = inner.broker.borrow().clone();
        broker.filter(|_| inner.connected.get())
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
        self.send_publishes(events.into_names(), php_serialized)
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

    /// Send a directory operation (`channel::dir`) without waiting for its answer, in order
    /// with the rest; held while disconnected, as publishes are. A gateway node registers its
    /// connections this way; `crate::gateway` is the API for the rest.
    pub fn dir_send(&self, op: &DirOp) -> Result<PublishStatus, ChannelError> {
        op.check().map_err(|e| ChannelError::Refused(e.0))?;
        self.0.send(Command::dir(&op.to_wire()))
    }

    /// Apply a directory operation and get the directory's answer (JSON, see
    /// `channel::dir`); `Refused` when the directory refused it, `Disconnected` at once when
    /// not connected, `NoDirectory` from a PHP channel server.
    pub fn dir_request(
        &self,
        op: &DirOp,
        on_done: impl FnOnce(Result<Value, ChannelError>) + 'static,
    ) {
        if let Err(e) = op.check() {
            return on_done(Err(ChannelError::Refused(e.0)));
        }
        let Some(b) = self.live_broker() else {
            return on_done(Err(ChannelError::Disconnected));
        };
        b.request(
            Command::dir(&op.to_wire()),
            self.timed(move |answer: Result<Bytes, ChannelError>| {
                on_done(answer.and_then(|json| {
                    // A count (a send's answer) needs no JSON value read.
                    if let Some(n) = std::str::from_utf8(&json)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        return Ok(Value::from(n));
                    }
                    let v: Value = serde_json::from_slice(&json).map_err(|e| {
                        ChannelError::Refused(format!("directory answer is not JSON: {e}"))
                    })?;
                    match v.get("error").and_then(Value::as_str) {
                        Some(why) if v.as_object().is_some_and(|o| o.len() == 1) => {
                            Err(ChannelError::Refused(why.to_string()))
                        }
                        _ => Ok(v),
                    }
                }))
            }),
        );
    }

    /// Run `f` each time the client (re)connects, after it re-subscribed and before what it
    /// held is sent.
    pub(crate) fn on_up_internal(&self, f: impl Fn() + 'static) {
        self.0.on_up.borrow_mut().push(Rc::new(f));
    }

    /// Park the subscription to `event` (see [`Command::Park`]): whether it is parked now —
    /// not where the backend cannot park (Redis, a PHP server) or while disconnected. A
    /// reconnect subscribes afresh, unparked.
    pub(crate) fn park(&self, event: &Key) -> bool {
        let Some(b) = self.live_broker().filter(|b| b.parks()) else {
            return false;
        };
        b.send(Command::Park(vec![WireName::from_key(event.clone())]))
            .is_ok()
    }

    /// Unpark the subscription to `event`; `ready(Ok(()))` once every later publish is
    /// delivered to it (at once where nothing is parked), `ready(Err(_))` when that is not
    /// known (the link failed: a reconnect subscribes afresh; or it is full). May call `ready`
    /// before it returns.
    pub(crate) fn unpark(
        &self,
        event: &Key,
        ready: impl FnOnce(Result<(), ChannelError>) + 'static,
    ) {
        match self.live_broker() {
            // Nothing can be parked on this link (a reconnect to another server, say).
            Some(b) if !b.parks() => ready(Ok(())),
            _ => self.applied(
                Command::Unpark(vec![WireName::from_key(event.clone())]),
                ready,
            ),
        }
    }
}

fn wire(names: Vec<Key>) -> Vec<WireName> {
    names.into_iter().map(WireName::from_key).collect()
}

fn encode<T: Serialize + ?Sized>(data: &T) -> Result<Bytes, ChannelError> {
    let v = serde_json::to_value(data).map_err(|e| ChannelError::Encode(e.to_string()))?;
    Ok(php_serde::to_vec(&v).into())
}

impl BrokerEvents for ClientInner {
    fn up(&self) {
        if self.connected.replace(true) {
            return;
        }
        metrics::broker_connected(self.backend, true);
        if self.was_up.replace(true) {
            metrics::broker_reconnected(self.backend);
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
        let hooks: Vec<HookFn> = self.on_up.borrow().clone();
        for hook in hooks {
            guard("channel reconnect hook", || hook());
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

    fn registrations_lost(&self) {
        if !self.connected.get() || self.closed.get() {
            return; // `up` runs the hooks when the client is back.
        }
        let hooks: Vec<HookFn> = self.on_up.borrow().clone();
        for hook in hooks {
            guard("channel reconnect hook", || hook());
        }
    }

    fn down(&self) {
        let was = self.connected.replace(false);
        if was {
            metrics::broker_connected(self.backend, false);
        }
        if was && !self.closed.get() {
            log::warn!("channel {} connection lost; reconnecting", self.addr);
            let cb = self.on_close.borrow().clone();
            if let Some(cb) = cb {
                guard("channel on_close", || cb());
            }
        }
    }

    fn delivery(&self, d: Delivery) {
        if d.kind == DeliveryKind::Event {
            let cb = self.events.borrow().get(&d.channel).cloned().flatten();
            match cb {
                Some(OnEvent::Raw(cb)) => {
                    guard("channel event", || cb(&d.data));
                    return;
                }
                Some(OnEvent::Kept(cb)) => {
                    guard("channel event", || cb(d.pos, &d.data));
                    return;
                }
                _ => {}
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
            _ => {
                let cb = self.events.borrow().get(&d.channel).cloned().flatten();
                match cb {
                    Some(OnEvent::Value(cb)) => guard("channel event", || cb(value)),
                    Some(OnEvent::Raw(cb)) => guard("channel event", || cb(&d.data)),
                    Some(OnEvent::Kept(cb)) => guard("channel event", || cb(d.pos, &d.data)),
                    None => {
                        let fallback = self.on_message.borrow().clone();
                        match fallback {
                            Some(f) => guard("channel on_message", || f(&d.channel, value)),
                            None => log::warn!("channel event {} has no callback", d.channel),
                        }
                    }
                }
            }
        }
    }
}

impl ClientInner {
    fn send_if_connected(&self, cmd: Command) {
        if self.connected.get() {
            let _ = self.send(cmd);
        }
    }

    /// Hand a command to the broker, or buffer it while disconnected.
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
        let broker = self.broker.borrow().clone();
        match broker {
            Some(b) => b.send(cmd).map(|()| PublishStatus::Sent),
            None => Err(ChannelError::Closed),
        }
    }

    fn shutdown(&self) {
        if self.closed.replace(true) {
            return;
        }
        if self.connected.replace(false) {
            metrics::broker_connected(self.backend, false);
        }
        let broker = self.broker.borrow_mut().take();
        if let Some(b) = broker {
            b.close();
        }
    }
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.shutdown();
    }
}
