//! One worker instance: an actix actor on its own arbiter thread that owns its connection map.
//!
//! Code on the instance's thread (callbacks, timers, outgoing connections) reaches the map
//! directly through [`WorkerInstance`]; other threads send the actor messages ([`InstanceAddr`]).

use std::any::{Any, TypeId};
use std::cell::{Cell, Ref, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;

use super::Worker;
use crate::callbacks::guard;
use crate::connection::{Callbacks, Connection, ConnectionOwner, SendStatus};
use crate::listener::Accepted;
use crate::message::{Message, Uploads};
use crate::metrics::{Closed, InstanceMetrics, Refused};
use crate::protocol::http::HttpCodec;
use crate::protocol::ProtocolKind;
use crate::transport::{Socket, Stream};

/// How long a closing connection may take to flush before it is dropped.
const CLOSE_LIMIT_SECS: u32 = 5;
/// Seconds a TLS client has to finish its handshake.
const HANDSHAKE_SECS: u32 = 10;

pub(crate) struct InstanceInner {
    id: usize,
    config: Arc<Worker>,
    connections: RefCell<HashMap<u64, Connection>>,
    next_conn_id: Cell<u64>,
    /// Its counters, read by `status` and `/metrics` (see `crate::metrics`).
    pub(crate) stats: Arc<InstanceMetrics>,
    callbacks: Rc<RefCell<Callbacks>>,
    extensions: RefCell<HashMap<TypeId, Rc<dyn Any>>>,
    addr: RefCell<Option<Addr<InstanceActor>>>,
    started: Instant,
    /// What the library attached to hear of connections (a gateway node); none by default.
    hooks: RefCell<Option<Rc<dyn ConnectionHooks>>>,
    /// Connections that speak another protocol on this worker's socket (Pusher sockets, resuming
    /// readers): not given the instance's broadcasts. Empty for most workers, which then pay
    /// nothing for it.
    no_broadcasts: RefCell<HashSet<u64>>,
    /// The worker's upload limits, shared by its HTTP codecs.
    uploads: Arc<Uploads>,
    /// What may hold new connections back (a parked broadcast subscription); none by default.
    gate: RefCell<Option<Rc<dyn Gate>>>,
    /// Connections accepted while the gate held them, in order.
    held: RefCell<Vec<Accepted>>,
}

/// What the library attaches to an instance to hold its new connections back until it is
/// ready for them: an instance whose broadcast subscription is parked while it has no
/// connection (`channel::parking`) unparks it first. Called on the instance's thread.
pub(crate) trait Gate {
    /// A connection arrived: `true` serves it now; `false` holds it until
    /// [`WorkerInstance::release_held`].
    fn admit(&self) -> bool;
}

/// Most connections held at once; past it they are served without waiting.
const MAX_HELD: usize = 1024;

/// What the library attaches to an instance to hear of its connections opening and closing
/// (a gateway node registering them in the directory). Called on the instance's thread.
pub(crate) trait ConnectionHooks {
    /// A connection was accepted (before `on_connect` runs).
    fn opened(&self, conn: &Connection);
    /// Connection `id` closed (before `on_close` runs).
    fn closed(&self, id: u64);
    /// What `connections` shows of connection `id` beyond its socket: its client id, uid and
    /// groups (a gateway node's).
    fn describe(&self, _id: u64, _info: &mut ConnectionInfo) {}
}

/// The instance's side of its connections: counters, the map, the Origin policy.
impl ConnectionOwner for InstanceInner {
    fn message_in(&self) {
        self.stats.messages_in.inc();
    }

    fn message_out(&self) {
        self.stats.messages_out.inc();
    }

    fn send_failure(&self) {
        self.stats.send_failures.inc();
    }

    fn refused(&self, why: Refused, peer: Option<std::net::SocketAddr>) {
        self.stats.refused(why);
        crate::metrics::note_refusal(&self.config.name, peer, why);
    }

    fn connection_closed(&self, id: u64, why: Closed) {
        let gone = self.connections.borrow_mut().remove(&id);
        if gone.is_some() {
            self.stats.closed(why);
        }
        if !self.no_broadcasts.borrow().is_empty() {
            self.no_broadcasts.borrow_mut().remove(&id);
        }
        let hooks = self.hooks.borrow().clone();
        if let (Some(h), true) = (hooks, gone.is_some()) {
            h.closed(id);
        }
        if let (Some(c), true) = (gone, self.config.max_connections_per_ip > 0) {
            if let Some(ip) = c.remote_addr().map(|a| a.ip()) {
                let mut per_ip = self.config.per_ip.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = per_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        per_ip.remove(&ip);
                    }
                }
            }
        }
    }

    fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let allowed = &self.config.allowed_origins;
        allowed.is_empty()
            || origin.is_some_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
    }

    fn as_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }
}

impl InstanceInner {
    /// Take a place for a new connection from `peer`, or say why not.
    fn admit(&self, peer: Option<std::net::SocketAddr>) -> Result<(), Refused> {
        if self.connections.borrow().len() >= self.config.max_connections {
            return Err(Refused::MaxConnections);
        }
        let limit = self.config.max_connections_per_ip;
        // A Unix socket's peers have no IP: only `max_connections` holds for them.
        if let (true, Some(peer)) = (limit > 0, peer) {
            let mut per_ip = self.config.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(peer.ip()).or_insert(0);
            if *n >= limit {
                return Err(Refused::MaxConnectionsPerIp);
            }
            *n += 1;
        }
        Ok(())
    }

    /// Advance the instance clock and apply `idle_timeout` (once a second).
    fn sweep(&self) {
        let now = self.started.elapsed().as_secs() as u32;
        crate::connection::clock::set(now);
        let conns: Vec<Connection> = self.connections.borrow().values().cloned().collect();
        let timeout = self.config.idle_timeout.map(|t| t.as_secs().max(2) as u32);
        let head = self.config.head_timeout.map(|t| t.as_secs().max(1) as u32);
        for c in conns {
            if c.check_closing(now, CLOSE_LIMIT_SECS) || c.check_handshake(now, HANDSHAKE_SECS) {
                continue;
            }
            if head.is_some_and(|h| c.check_head(now, h)) {
                continue;
            }
            if let Some(t) = timeout {
                c.check_idle(now, t);
            }
        }
    }
}

impl Connection {
    /// The worker instance that accepted this connection (`None` for outgoing connections).
    pub fn worker(&self) -> Option<WorkerInstance> {
        let owner = self.owner()?.clone();
        owner
            .as_any()
            .downcast::<InstanceInner>()
            .ok()
            .map(WorkerInstance)
    }
}

/// A handle to the worker instance running on this thread: its id, its connections, and
/// per-instance data. Cheap to clone; not `Send` (use [`WorkerInstance::addr`] across threads).
#[derive(Clone)]
pub struct WorkerInstance(pub(crate) Rc<InstanceInner>);

/// What a broadcast reached.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastReport {
    /// Connections that accepted the message (sent or queued).
    pub delivered: usize,
    /// Connections that dropped it (full buffer or closing).
    pub failed: usize,
}

impl WorkerInstance {
    /// This instance's id, `0..count`.
    pub fn id(&self) -> usize {
        self.0.id
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.0.config.name
    }

    /// The worker's configuration.
    pub fn worker(&self) -> &Worker {
        &self.0.config
    }

    /// On the instance's thread: answer the datagrams that reach `socket` (a `udp://`
    /// worker's, shared with its other instances, which take turns by who reads first).
    pub(crate) fn serve_datagrams(&self, socket: std::net::UdpSocket) {
        use crate::udp::{decode, UdpConnection, MAX_DATAGRAM};
        let config = &self.0.config;
        let (Some(proto), Some(cb)) = (config.protocol(), config.callbacks.on_datagram.clone())
        else {
            return;
        };
        let socket = match tokio::net::UdpSocket::from_std(socket) {
            Ok(s) => Rc::new(s),
            Err(e) => return log::error!("udp: cannot register the socket: {e}"),
        };
        let codec = Rc::new(RefCell::new(proto.server_codec(config.max_package_size)));
        let inst = self.clone();
        actix_rt::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let (n, peer) = match socket.recv_from(&mut buf).await {
                    Ok(r) => r,
                    Err(e) => {
                        // ICMP errors of earlier sends surface here on some systems: go on.
                        log::debug!("udp: receive: {e}");
                        continue;
                    }
                };
                let conn = UdpConnection::new(socket.clone(), codec.clone(), peer);
                for msg in decode(&codec, &buf[..n], peer) {
                    inst.0.stats.messages_in.inc();
                    guard("on_datagram", || cb(&conn, msg));
                }
            }
        });
    }

    /// The number of instances of this worker.
    pub fn count(&self) -> usize {
        self.0.config.count
    }

    /// The connections of this instance by id (Workerman's `$worker->connections`).
    ///
    /// Do not hold the returned borrow across an `.await`.
    pub fn connections(&self) -> Ref<'_, HashMap<u64, Connection>> {
        self.0.connections.borrow()
    }

    /// One connection by id.
    pub fn connection(&self, id: u64) -> Option<Connection> {
        self.0.connections.borrow().get(&id).cloned()
    }

    /// How many connections are open.
    pub fn connection_count(&self) -> usize {
        self.0.connections.borrow().len()
    }

    /// Send `msg` to every connection of this instance, encoded once where the protocol
    /// allows (but those still in their protocol's handshake: a WebSocket before its upgrade
    /// is answered). Writes are queued and coalesced by each connection's task.
    pub fn broadcast(&self, msg: impl Into<Message>) -> BroadcastReport {
        let conns = self.0.connections.borrow();
        if conns.is_empty() {
            // Nothing to encode for: an instance without clients pays nothing per broadcast.
            return BroadcastReport::default();
        }
        let skip = self.0.no_broadcasts.borrow();
        if skip.is_empty() {
            return self.send_to(conns.values(), msg.into());
        }
        let some: Vec<&Connection> = conns.values().filter(|c| !skip.contains(&c.id())).collect();
        self.send_to(some, msg.into())
    }

    /// Send bytes already encoded for this worker's protocol to every connection (but those
    /// [`WorkerInstance::exclude_from_broadcasts`] took out).
    pub fn broadcast_encoded(&self, bytes: &Bytes) -> BroadcastReport {
        let conns = self.0.connections.borrow();
        let skip = self.0.no_broadcasts.borrow();
        let report = if skip.is_empty() {
            send_encoded(conns.values(), bytes)
        } else {
            let some: Vec<&Connection> =
                conns.values().filter(|c| !skip.contains(&c.id())).collect();
            send_encoded(some, bytes)
        };
        self.delivered(report)
    }

    /// Count what a send to many reached (once per send, not per connection).
    fn delivered(&self, report: BroadcastReport) -> BroadcastReport {
        self.0.stats.deliveries.add(report.delivered as u64);
        report
    }

    /// Leave `conn` out of this instance's broadcasts (and of sends to every connection): a
    /// connection that speaks another protocol on this worker's socket — a Pusher socket, a
    /// resuming reader — until it closes.
    pub fn exclude_from_broadcasts(&self, conn: &Connection) {
        self.0.no_broadcasts.borrow_mut().insert(conn.id());
    }

    /// Whether connection `id` takes this instance's broadcasts.
    pub fn takes_broadcasts(&self, id: u64) -> bool {
        let skip = self.0.no_broadcasts.borrow();
        skip.is_empty() || !skip.contains(&id)
    }

    /// Store per-instance data (a channel client, a cache…), one value per type.
    pub fn set_data<T: Any>(&self, value: T) {
        self.0
            .extensions
            .borrow_mut()
            .insert(TypeId::of::<T>(), Rc::new(value));
    }

    /// Per-instance data stored with [`WorkerInstance::set_data`].
    pub fn data<T: Any>(&self) -> Option<Rc<T>> {
        self.0
            .extensions
            .borrow()
            .get(&TypeId::of::<T>())
            .cloned()
            .and_then(|rc| rc.downcast::<T>().ok())
    }

    /// Hear of this instance's connections opening and closing (one listener; a second
    /// replaces the first).
    pub(crate) fn set_hooks(&self, hooks: Rc<dyn ConnectionHooks>) {
        *self.0.hooks.borrow_mut() = Some(hooks);
    }

    /// Send `msg` to each of `conns` (some of this instance's connections: a list of open event
    /// streams, a room), encoded once where the protocol allows (a WebSocket server frame does
    /// not depend on the connection), else encoded for each (a [`Chunk::shared`](crate::Chunk::shared)
    /// shares its framing). To more than a few connections the writes are queued, as
    /// [`broadcast`](Self::broadcast)'s are, and each connection's task writes them together
    /// with what else is queued: a burst of messages costs a write per connection and wake-up,
    /// not one per message.
    pub fn send_to<'a, I>(&self, conns: I, msg: Message) -> BroadcastReport
    where
        I: IntoIterator<Item = &'a Connection>,
        I::IntoIter: ExactSizeIterator,
    {
        let report = match self.0.config.protocol().and_then(|p| p.encode_shared(&msg)) {
            Some(Ok(bytes)) => send_encoded(conns, &bytes),
            Some(Err(e)) => {
                log::warn!("message not sent: {e}");
                BroadcastReport::default()
            }
            None => {
                let conns = conns.into_iter();
                let now = conns.len() <= WRITE_NOW_MAX;
                let mut report = BroadcastReport::default();
                for c in conns {
                    if !c.handshake_done() {
                        continue;
                    }
                    let status = if now {
                        c.send(msg.clone())
                    } else {
                        c.send_queued(msg.clone())
                    };
                    count(&mut report, status);
                }
                report
            }
        };
        self.delivered(report)
    }

    /// A `Send` handle to this instance's actor, for other threads.
    pub fn addr(&self) -> Option<InstanceAddr> {
        self.0.addr.borrow().clone().map(InstanceAddr)
    }

    /// Counters and sizes for `status`.
    pub fn status(&self) -> InstanceStatus {
        let conns = self.0.connections.borrow();
        let buffered: usize = conns.values().map(|c| c.send_buffer_len()).sum();
        InstanceStatus {
            worker: self.0.config.name.clone(),
            socket: self.0.config.socket_name().to_string(),
            id: self.0.id,
            pid: std::process::id(),
            connections: conns.len(),
            accepted: self.0.stats.accepted.get(),
            messages_in: self.0.stats.messages_in.get(),
            messages_out: self.0.stats.messages_out.get(),
            send_failures: self.0.stats.send_failures.get(),
            send_buffered: buffered,
            refused: self.0.stats.refused_total(),
            idle_closed: self.0.stats.closed_count(Closed::Idle),
            timers: crate::timer::Timer::count_here(),
            uptime: self.0.started.elapsed(),
        }
    }

    fn connection_infos(&self) -> Vec<ConnectionInfo> {
        let protocol = self.0.config.protocol().map(|p| p.name()).unwrap_or("-");
        let hooks = self.0.hooks.borrow().clone();
        let now = crate::connection::clock::now();
        self.0
            .connections
            .borrow()
            .values()
            .map(|c| {
                let s = c.stats();
                let (age_secs, idle_secs) = c.ages(now);
                let mut info = ConnectionInfo {
                    worker: self.0.config.name.clone(),
                    instance: self.0.id,
                    id: c.id(),
                    remote: c.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
                    protocol: protocol.to_string(),
                    age_secs,
                    idle_secs,
                    send_buffered: c.send_buffer_len(),
                    messages_in: s.messages_in,
                    messages_out: s.messages_out,
                    ..Default::default()
                };
                if let Some(h) = &hooks {
                    h.describe(c.id(), &mut info);
                }
                info
            })
            .collect()
    }

    /// Hold new connections back while `gate` says so (one gate; a second replaces it).
    pub(crate) fn set_gate(&self, gate: Rc<dyn Gate>) {
        *self.0.gate.borrow_mut() = Some(gate);
    }

    /// Whether a gate was set.
    pub(crate) fn has_gate(&self) -> bool {
        self.0.gate.borrow().is_some()
    }

    /// Serve the connections the gate held, in the order they came.
    pub(crate) fn release_held(&self) {
        let held = std::mem::take(&mut *self.0.held.borrow_mut());
        for accepted in held {
            self.serve(accepted);
        }
    }

    fn adopt(&self, accepted: Accepted) {
        let gate = self.0.gate.borrow().clone();
        if let Some(gate) = gate {
            // Behind those already held, in order (past `MAX_HELD`: served); the gate is asked
            // once per wait, with nothing borrowed (it may release the held ones at once).
            let waiting = self.0.held.borrow().len();
            if (1..MAX_HELD).contains(&waiting) || waiting == 0 && !gate.admit() {
                self.0.held.borrow_mut().push(accepted);
                return;
            }
        }
        self.serve(accepted);
    }

    fn serve(&self, accepted: Accepted) {
        let peer = accepted.peer();
        let from = || peer.map_or("a Unix socket".to_string(), |p| p.to_string());
        let registered = match accepted {
            Accepted::Tcp(s, _) => tokio::net::TcpStream::from_std(s).map(Socket::Tcp),
            Accepted::Unix(s) => tokio::net::UnixStream::from_std(s).map(Socket::Unix),
        };
        let stream = match registered {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot register accepted connection: {e}");
                return;
            }
        };
        let Some(proto) = self.0.config.protocol() else {
            return;
        };
        if let Err(why) = self.0.admit(peer) {
            self.0.refused(why, peer);
            log::warn!(
                "worker {} instance {}: connection from {} refused: {} reached",
                self.name(),
                self.id(),
                from(),
                why.label()
            );
            return; // dropping the socket closes it
        }
        let stream = match &self.0.config.tls {
            None => Stream::Plain(stream),
            Some(tls) => match tls.session() {
                Ok(session) => Stream::tls(stream, session),
                Err(e) => {
                    log::error!("connection from {} dropped: {e}", from());
                    return;
                }
            },
        };
        let id = self.0.next_conn_id.get();
        self.0.next_conn_id.set(id + 1);
        self.0.stats.accepted.inc();
        self.0.stats.connections.add(1);
        let conn = Connection::new(
            id,
            self.0.id,
            match proto {
                ProtocolKind::Http => {
                    let codec = HttpCodec::with_uploads(
                        self.0.config.max_package_size,
                        self.0.uploads.clone(),
                    );
                    Box::new(if self.0.config.sessions.is_some() {
                        codec.with_session_cookies()
                    } else {
                        codec
                    })
                }
                _ => proto.server_codec_with(
                    self.0.config.max_package_size,
                    self.0
                        .config
                        .websocket_compression
                        .then_some(self.0.config.websocket_compression_takeover),
                ),
            },
            self.0.callbacks.clone(),
            Some(self.0.clone() as Rc<dyn ConnectionOwner>),
            self.0.config.max_send_buffer_size,
            self.0.config.max_package_size,
        );
        conn.attach(stream, peer);
        self.0.connections.borrow_mut().insert(id, conn.clone());
        let hooks = self.0.hooks.borrow().clone();
        if let Some(h) = hooks {
            h.opened(&conn);
        }
        let cb = self.0.callbacks.borrow().on_connect.clone();
        if let Some(cb) = cb {
            guard("on_connect", || cb(&conn));
        }
        actix_rt::spawn(async move { conn.run().await });
    }

    fn close_all(&self) {
        // Held connections are closed unserved (dropping a socket closes it).
        self.0.held.borrow_mut().clear();
        let conns: Vec<Connection> = self.0.connections.borrow().values().cloned().collect();
        for c in conns {
            c.closed_because(Closed::Stop);
            c.close();
        }
    }
}

/// Up to this many connections, a send to several writes to each socket at once (as a send
/// to one does); past it, the bytes are queued and each connection's task writes them, so
/// that the sending turn stays short and writes coalesce.
pub(crate) const WRITE_NOW_MAX: usize = 8;

/// Send `bytes` to each of `conns`: written at once to a few, queued for many.
fn send_encoded<'a, I>(conns: I, bytes: &Bytes) -> BroadcastReport
where
    I: IntoIterator<Item = &'a Connection>,
    I::IntoIter: ExactSizeIterator,
{
    let conns = conns.into_iter();
    let now = conns.len() <= WRITE_NOW_MAX;
    let mut report = BroadcastReport::default();
    for c in conns {
        if !c.handshake_done() {
            continue;
        }
        let status = if now {
            c.send_raw(bytes.clone())
        } else {
            c.send_deferred(bytes.clone())
        };
        count(&mut report, status);
    }
    report
}

fn count(report: &mut BroadcastReport, status: SendStatus) {
    if status.is_ok() {
        report.delivered += 1;
    } else {
        report.failed += 1;
    }
}

/// Figures of one instance, as `status` prints them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InstanceStatus {
    /// Worker name.
    pub worker: String,
    /// Socket name.
    pub socket: String,
    /// Instance id.
    pub id: usize,
    /// The process it runs in.
    #[serde(default)]
    pub pid: u32,
    /// Open connections.
    pub connections: usize,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent or queued.
    pub messages_out: u64,
    /// Messages dropped.
    pub send_failures: u64,
    /// Bytes waiting in send buffers.
    pub send_buffered: usize,
    /// Connections refused by the limits or the Origin list.
    pub refused: u64,
    /// Connections closed for being idle.
    pub idle_closed: u64,
    /// Timers pending on this instance (the app's and the framework's).
    pub timers: usize,
    /// Time since the instance started (`uptime_secs` in JSON).
    #[serde(rename = "uptime_secs", with = "secs")]
    pub uptime: Duration,
}

/// A `Duration` as seconds (a JSON number).
mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = <f64 as serde::Deserialize>::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// One connection, as `connections` prints it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ConnectionInfo {
    /// Worker name.
    pub worker: String,
    /// Instance id.
    pub instance: usize,
    /// Connection id.
    pub id: u64,
    /// The cluster-wide client id (`{worker id}-{connection id}`), on a gateway node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Peer address.
    pub remote: String,
    /// Protocol name.
    pub protocol: String,
    /// Seconds since it was accepted.
    pub age_secs: u32,
    /// Seconds since the peer last sent anything.
    pub idle_secs: u32,
    /// Bytes queued.
    pub send_buffered: usize,
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// The uid it is bound to, on a gateway node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The groups it joined, on a gateway node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// The id of an instance's first connection (see `Worker::time_based_connection_ids`).
fn first_connection_id(config: &Worker) -> u64 {
    if !config.time_based_connection_ids {
        return 1;
    }
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (ms << 10).max(1)
}

/// The actor of one worker instance.
pub struct InstanceActor {
    inst: WorkerInstance,
}

impl InstanceActor {
    pub(crate) fn new(config: Arc<Worker>, id: usize) -> Self {
        let mut callbacks = config.callbacks.connection_callbacks();
        if let Some(sessions) = &config.sessions {
            if let Some(on_message) = callbacks.on_message.take() {
                callbacks.on_message = Some(crate::session::load_then(
                    Arc::new(sessions.clone()),
                    on_message,
                ));
            }
        }
        let callbacks = Rc::new(RefCell::new(callbacks));
        let first_id = first_connection_id(&config);
        let uploads = Arc::new(config.uploads.clone());
        let stats = InstanceMetrics::register(&config.name, id);
        InstanceActor {
            inst: WorkerInstance(Rc::new(InstanceInner {
                id,
                config,
                connections: RefCell::new(HashMap::new()),
                next_conn_id: Cell::new(first_id),
                stats,
                callbacks,
                extensions: RefCell::new(HashMap::new()),
                addr: RefCell::new(None),
                started: Instant::now(),
                hooks: RefCell::new(None),
                no_broadcasts: RefCell::new(HashSet::new()),
                uploads,
                gate: RefCell::new(None),
                held: RefCell::new(Vec::new()),
            })),
        }
    }
}

impl Actor for InstanceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        *self.inst.0.addr.borrow_mut() = Some(ctx.address());
        crate::metrics::set_thread_instance(self.inst.0.stats.clone());
        ctx.run_interval(Duration::from_secs(1), |act, _| act.inst.0.sweep());
        let cb = self.inst.0.config.callbacks.on_worker_start.clone();
        if let Some(cb) = cb {
            let inst = self.inst.clone();
            guard("on_worker_start", || cb(&inst));
        }
        log::debug!(
            "worker {} instance {} started",
            self.inst.name(),
            self.inst.id()
        );
    }
}

/// A `Send` handle to a worker instance's actor.
#[derive(Clone)]
pub struct InstanceAddr(pub(crate) Addr<InstanceActor>);

impl InstanceAddr {
    /// Run `f` on the instance's thread with its [`WorkerInstance`].
    pub fn exec(&self, f: impl FnOnce(&WorkerInstance) + Send + 'static) {
        self.0.do_send(Exec(Box::new(f)));
    }

    /// Broadcast to every connection of the instance (the message is encoded once there).
    pub fn broadcast(&self, msg: Message) {
        self.exec(move |w| {
            w.broadcast(msg);
        });
    }
}

/// A new connection for the instance, accepted by the worker's acceptor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Adopt(pub Accepted);

impl Handler<Adopt> for InstanceActor {
    type Result = ();
    fn handle(&mut self, msg: Adopt, _: &mut Self::Context) {
        self.inst.adopt(msg.0);
    }
}

/// New connections for the instance, accepted together (a burst), in order.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct AdoptMany(pub Vec<Accepted>);

impl Handler<AdoptMany> for InstanceActor {
    type Result = ();
    fn handle(&mut self, msg: AdoptMany, _: &mut Self::Context) {
        for accepted in msg.0 {
            self.inst.adopt(accepted);
        }
    }
}

/// Run a closure on the instance's thread.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Exec(pub Box<dyn FnOnce(&WorkerInstance) + Send>);

impl Handler<Exec> for InstanceActor {
    type Result = ();
    fn handle(&mut self, msg: Exec, _: &mut Self::Context) {
        let inst = self.inst.clone();
        guard("exec", || (msg.0)(&inst));
    }
}

/// Ask for the instance's figures.
#[derive(Message)]
#[rtype(result = "InstanceStatus")]
pub(crate) struct GetStatus;

impl Handler<GetStatus> for InstanceActor {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.inst.status())
    }
}

/// Ask for the instance's connections.
#[derive(Message)]
#[rtype(result = "Vec<ConnectionInfo>")]
pub(crate) struct GetConnections;

impl Handler<GetConnections> for InstanceActor {
    type Result = MessageResult<GetConnections>;
    fn handle(&mut self, _: GetConnections, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.inst.connection_infos())
    }
}

/// Stop the instance: call `on_worker_stop`, close every connection (flushing what is queued,
/// what `on_worker_stop` sent included), wait up to `timeout` for them to finish. A graceful
/// stop first keeps serving for a moment, so requests already on their way to a connection it
/// accepted are answered.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Stop {
    pub timeout: Duration,
    pub graceful: bool,
    /// A reload ends the instance: `on_worker_reload` first.
    pub reload: bool,
}

/// A reload reached an instance that stays (`reloadable = false`): `on_worker_reload`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Reloaded;

impl Handler<Reloaded> for InstanceActor {
    type Result = ();
    fn handle(&mut self, _: Reloaded, _: &mut Self::Context) {
        self.inst.reloaded();
    }
}

impl WorkerInstance {
    /// Run `on_worker_reload`, if set.
    fn reloaded(&self) {
        let cb = self.0.config.callbacks.on_worker_reload.clone();
        if let Some(cb) = cb {
            guard("on_worker_reload", || cb(self));
        }
    }
}

impl Handler<Stop> for InstanceActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: Stop, _: &mut Self::Context) -> Self::Result {
        let inst = self.inst.clone();
        Box::pin(async move {
            if msg.reload {
                inst.reloaded();
            }
            // First, as Workerman does: the app may still tell its clients (what it sends is
            // flushed by the close below).
            let cb = inst.0.config.callbacks.on_worker_stop.clone();
            if let Some(cb) = cb {
                guard("on_worker_stop", || cb(&inst));
            }
            if msg.graceful {
                // Connections held back by the gate are served and finish as the others do.
                inst.0.gate.borrow_mut().take();
                inst.release_held();
                // Workerman's graceful stop: no new connections (the acceptor is gone), and
                // the open ones finish — an HTTP keep-alive connection is closed as soon as it
                // rests between requests, the others when their peers close them — until the
                // timeout, when whatever is left is closed as in a plain stop.
                let deadline = tokio::time::Instant::now() + msg.timeout;
                let mut said = false;
                loop {
                    // Only the resting ones are taken out of the map (closing edits it).
                    let resting: Vec<Connection> = inst
                        .connections()
                        .values()
                        .filter(|c| c.is_resting())
                        .cloned()
                        .collect();
                    for c in resting {
                        c.closed_because(Closed::Stop);
                        c.close();
                    }
                    let left = inst.connection_count();
                    if left == 0 || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    if !said {
                        log::info!(
                            "worker {} instance {}: waiting up to {:?} for {left} connections \
                             to finish",
                            inst.name(),
                            inst.id(),
                            msg.timeout
                        );
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            inst.close_all();
            let deadline = tokio::time::Instant::now() + msg.timeout;
            while inst.connection_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left: Vec<Connection> = inst.connections().values().cloned().collect();
            for c in left {
                c.closed_because(Closed::Stop);
                c.destroy();
            }
        })
    }
}
