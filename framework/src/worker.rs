//! [`Worker`]: a listening socket, a protocol, a number of instances and the callbacks —
//! Workerman's `Worker`, configured before [`Worker::run_all`] starts everything.

pub mod instance;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::connection::callbacks::{
    ConnFn, ErrorFn, HandshakeFn, MessageFn, WsCloseFn, WsControlFn,
};
use crate::connection::{
    Callbacks, Connection, ConnectionError, DEFAULT_MAX_PACKAGE, DEFAULT_MAX_SEND_BUFFER,
};
use crate::error::Error;
use crate::message::Message;
use crate::protocol::http::{Request, Response};
use crate::protocol::ProtocolKind;
use crate::static_files::StaticFiles;

pub use instance::{InstanceStatus, WorkerInstance};

type SyncConnFn = Arc<dyn Fn(&Connection) + Send + Sync>;
type SyncInstanceFn = Arc<dyn Fn(&WorkerInstance) + Send + Sync>;
type SyncMessageFn = Arc<dyn Fn(&Connection, Message) + Send + Sync>;
type SyncErrorFn = Arc<dyn Fn(&Connection, &ConnectionError) + Send + Sync>;
type SyncHandshakeFn = Arc<dyn Fn(&Connection, &Request) -> Result<(), Response> + Send + Sync>;
type SyncWsCloseFn = Arc<dyn Fn(&Connection, u16, &str) + Send + Sync>;
type SyncWsControlFn = Arc<dyn Fn(&Connection, &[u8]) + Send + Sync>;
type SyncDatagramFn = Arc<dyn Fn(&crate::udp::UdpConnection, Message) + Send + Sync>;

/// The callbacks as configured: shared by all instances, turned into per-instance
/// [`Callbacks`] on each instance's thread.
#[derive(Default, Clone)]
pub(crate) struct WorkerCallbacks {
    pub on_worker_start: Option<SyncInstanceFn>,
    pub on_worker_stop: Option<SyncInstanceFn>,
    pub on_worker_reload: Option<SyncInstanceFn>,
    pub on_connect: Option<SyncConnFn>,
    pub on_message: Option<SyncMessageFn>,
    pub on_close: Option<SyncConnFn>,
    pub on_error: Option<SyncErrorFn>,
    pub on_buffer_full: Option<SyncConnFn>,
    pub on_buffer_drain: Option<SyncConnFn>,
    pub on_websocket_connect: Option<SyncHandshakeFn>,
    /// Answered before `on_message` (HTTP workers).
    pub static_files: Option<Arc<StaticFiles>>,
    pub on_websocket_connected: Option<SyncConnFn>,
    pub on_websocket_close: Option<SyncWsCloseFn>,
    pub on_websocket_ping: Option<SyncWsControlFn>,
    pub on_websocket_pong: Option<SyncWsControlFn>,
    /// A `udp://` worker's datagrams.
    pub on_datagram: Option<SyncDatagramFn>,
}

impl WorkerCallbacks {
    pub(crate) fn connection_callbacks(&self) -> Callbacks {
        fn conn(f: &Option<SyncConnFn>) -> Option<ConnFn> {
            f.clone()
                .map(|f| Rc::new(move |c: &Connection| f(c)) as Rc<dyn Fn(&Connection)>)
        }
        fn control(f: &Option<SyncWsControlFn>) -> Option<WsControlFn> {
            f.clone()
                .map(|f| Rc::new(move |c: &Connection, d: &[u8]| f(c, d)) as WsControlFn)
        }
        Callbacks {
            on_connect: conn(&self.on_connect),
            on_message: match (self.static_files.clone(), self.on_message.clone()) {
                (None, f) => {
                    f.map(|f| Rc::new(move |c: &Connection, m: Message| f(c, m)) as MessageFn)
                }
                (Some(files), f) => Some(Rc::new(move |c: &Connection, m: Message| {
                    if let Message::Request(req) = &m {
                        if let Some(resp) = files.serve(req) {
                            c.send(resp);
                            return;
                        }
                    }
                    match &f {
                        Some(f) => f(c, m),
                        None => {
                            c.send(Response::text(404, "Not Found\n"));
                        }
                    }
                }) as MessageFn),
            },
            on_close: conn(&self.on_close),
            on_error: self
                .on_error
                .clone()
                .map(|f| Rc::new(move |c: &Connection, e: &ConnectionError| f(c, e)) as ErrorFn),
            on_buffer_full: conn(&self.on_buffer_full),
            on_buffer_drain: conn(&self.on_buffer_drain),
            on_websocket_connect: self
                .on_websocket_connect
                .clone()
                .map(|f| Rc::new(move |c: &Connection, r: &Request| f(c, r)) as HandshakeFn),
            on_websocket_connected: conn(&self.on_websocket_connected),
            on_websocket_close: self.on_websocket_close.clone().map(|f| {
                Rc::new(move |c: &Connection, code: u16, reason: &str| f(c, code, reason))
                    as WsCloseFn
            }),
            on_websocket_ping: control(&self.on_websocket_ping),
            on_websocket_pong: control(&self.on_websocket_pong),
            on_websocket_response: None,
        }
    }
}

/// How long a request head may take from its first byte, by default ([`Worker::head_timeout`]).
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A worker: what it listens on, how many instances serve it, and what they do.
///
/// ```no_run
/// use werkmann::Worker;
///
/// let mut worker = Worker::new("websocket://127.0.0.1:4236").unwrap();
/// worker.count = 2;
/// worker.name = "pusher".into();
/// worker.on_connect(|conn| {
///     conn.send(format!("hello {}", conn.id()));
/// });
/// worker.on_message(|conn, msg| {
///     conn.send(msg);
/// });
/// Worker::run_all(vec![worker]);
/// ```
#[derive(Clone)]
pub struct Worker {
    /// Number of instances (each an actor on its own thread), ids `0..count`.
    pub count: usize,
    /// Run each instance in a child process of its own instead of a thread of this process
    /// (Workerman's `count`): the children share the listening socket, and the process that
    /// started them supervises them, starting a child that dies again with the same instance
    /// id. One crash or out-of-memory kill then takes one instance down, and each child has
    /// its own open-file limit. Off by default (docs/architecture.md "Threads or processes").
    pub processes: bool,
    /// Whether a reload replaces this worker's instances (Workerman's `reloadable`, default
    /// `true`). `false` keeps them running through reloads (they get `on_worker_reload`);
    /// it needs a supervisor — some worker of the app run as processes — since a reload of a
    /// single process replaces all of it.
    pub reloadable: bool,
    /// Run this worker's processes as this user (a name or a number; Workerman's `user`),
    /// with privileges dropped after the sockets are bound: the supervisor starts them as
    /// children (a process of threads is supervised for it) and keeps its own, so it can bind,
    /// reload and write the pid file. The run directory's report files for `status` go to a
    /// directory of the user's own inside it.
    pub user: Option<String>,
    /// With [`Worker::user`]: this group instead of the user's primary one.
    pub group: Option<String>,
    /// A Unix socket's file permission bits (e.g. `0o660`), set after binding; `None` leaves
    /// what the umask gives.
    pub unix_mode: Option<u32>,
    /// Name shown by `status` and in logs.
    pub name: String,
    /// Per-connection send buffer limit in bytes (Workerman's `maxSendBufferSize`).
    pub max_send_buffer_size: usize,
    /// Largest incoming package in bytes (Workerman's `maxPackageSize`).
    pub max_package_size: usize,
    /// How long a stop waits for connections to finish before dropping them.
    pub stop_timeout: Duration,
    /// Close a connection that sent nothing for this long; past half of it, protocols that
    /// have one (WebSocket) send a ping first, so live peers answer and stay. Defaults:
    /// 120 s for WebSocket, 60 s for HTTP keep-alive, none for the others.
    pub idle_timeout: Option<Duration>,
    /// Answer 408 and close a connection whose request head (HTTP, a WebSocket upgrade) is not
    /// complete this long after its first byte (up to a second more: the instance's clock
    /// counts whole seconds): a client that trickles its head a byte at a time is never idle.
    /// Default 10 s for HTTP and WebSocket, none for the others.
    pub head_timeout: Option<Duration>,
    /// Most connections one instance holds; more are refused (closed at once, logged, counted).
    pub max_connections: usize,
    /// Most connections from one client IP across the worker's instances; `0` is no limit.
    pub max_connections_per_ip: usize,
    /// WebSocket upgrades must carry one of these `Origin`s (e.g. `https://example.com`);
    /// empty allows any. A refused upgrade gets a 403.
    pub allowed_origins: Vec<String>,
    /// Serve over TLS with this certificate and key (Workerman's `transport = 'ssl'`); set
    /// for `wss://`, `https://` and TLS channel servers. `wss://` and `https://` socket names
    /// require it.
    pub tls: Option<crate::tls::ServerTls>,
    /// Where an `http://` worker streams uploaded files (`multipart/form-data` file parts) and
    /// how large they may be; the directory must exist when the worker starts.
    pub uploads: crate::message::Uploads,
    /// Sessions for an `http://` worker (Workerman's `$request->session()`): `None` (the
    /// default) leaves `req.session()` empty and costs nothing.
    pub sessions: Option<crate::message::Sessions>,
    /// Number each instance's connections from the time it started (milliseconds since the
    /// Unix epoch × 1024, then counting up) instead of from 1 as Workerman does, so a
    /// restarted, reloaded or replacement process never hands out the ids its predecessor's
    /// connections had. For ids kept elsewhere as addresses (the push app's targeted pushes
    /// name a worker id and a connection id). Ids stay below 2^53, exact in JavaScript.
    pub time_based_connection_ids: bool,
    /// WebSocket: negotiate permessage-deflate (RFC 7692) when a client offers it; messages
    /// sent to that client are then compressed (broadcasts excepted: they are encoded once and
    /// go uncompressed, which the extension allows). Off by default: a new feature costs
    /// nothing unless asked for, and compressing costs CPU per message.
    pub websocket_compression: bool,
    /// With [`Worker::websocket_compression`]: keep each connection's compressor from message
    /// to message (context takeover: better ratios for small, similar messages, but ~310 KiB
    /// of zlib state per connection once it has sent a message). Off by default: each message
    /// is compressed afresh (`server_no_context_takeover`), and an idle connection keeps
    /// ~2 KiB as without compression.
    pub websocket_compression_takeover: bool,
    /// Connections per client IP, shared by the instances (for `max_connections_per_ip`).
    pub(crate) per_ip:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    socket_name: String,
    /// The socket name's scheme was `wss` or `https`: refuse to start without [`Worker::tls`].
    tls_required: bool,
    protocol: Option<ProtocolKind>,
    address: Option<String>,
    pub(crate) callbacks: WorkerCallbacks,
    /// Serves its listening socket itself, on a thread of its own, instead of instances (the
    /// admin and metrics port, `crate::admin`).
    pub(crate) serve: Option<ServeFn>,
    /// The channel hub this worker holds (a `channel::Server`), by name: a supervisor's child
    /// that does not serve it must not take it for one of its own process.
    pub(crate) hub: Option<String>,
}

/// What serves a worker's listening socket by itself (see `Worker::serve`).
pub(crate) type ServeFn = Arc<dyn Fn(std::net::TcpListener) + Send + Sync>;

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("socket_name", &self.socket_name)
            .field("count", &self.count)
            .finish()
    }
}

impl Worker {
    /// A worker listening on `socket_name`, e.g. `websocket://0.0.0.0:4236`, `http://…`,
    /// `text://…`, `frame://…`, `tcp://…` or a registered custom scheme; `wss://…` and
    /// `https://…` are the same over TLS (set [`Worker::tls`]). An empty name makes a worker
    /// without a socket (it runs `on_worker_start`, timers, outgoing connections).
    pub fn new(socket_name: &str) -> Result<Worker, Error> {
        let (plain, tls_required) = crate::address::strip_tls_scheme(socket_name);
        let (protocol, address) = if socket_name.is_empty() {
            (None, None)
        } else {
            let (p, a) = crate::address::parse_socket_name(&plain)?;
            (Some(p), Some(a))
        };
        Ok(Worker {
            count: 1,
            name: "none".into(),
            max_send_buffer_size: DEFAULT_MAX_SEND_BUFFER,
            max_package_size: DEFAULT_MAX_PACKAGE,
            stop_timeout: Duration::from_secs(2),
            idle_timeout: match protocol {
                Some(ProtocolKind::WebSocket) => Some(Duration::from_secs(120)),
                Some(ProtocolKind::Http) => Some(Duration::from_secs(60)),
                _ => None,
            },
            head_timeout: match protocol {
                Some(ProtocolKind::WebSocket | ProtocolKind::Http) => Some(DEFAULT_HEAD_TIMEOUT),
                _ => None,
            },
            max_connections: 100_000,
            max_connections_per_ip: 0,
            allowed_origins: Vec::new(),
            tls: None,
            uploads: Default::default(),
            sessions: None,
            time_based_connection_ids: false,
            processes: false,
            reloadable: true,
            user: None,
            group: None,
            unix_mode: None,
            serve: None,
            hub: None,
            websocket_compression: false,
            websocket_compression_takeover: false,
            per_ip: Default::default(),
            socket_name: socket_name.to_string(),
            tls_required,
            protocol,
            address,
            callbacks: WorkerCallbacks::default(),
        })
    }

    /// The socket name given to [`Worker::new`].
    pub fn socket_name(&self) -> &str {
        &self.socket_name
    }

    /// Why this worker cannot start as configured (a `wss://` name without a certificate).
    /// (name, user, group), for `identity::of_workers`.
    pub(crate) fn run_as(&self) -> (&str, Option<&str>, Option<&str>) {
        (&self.name, self.user.as_deref(), self.group.as_deref())
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if let Some(user) = &self.user {
            crate::identity::Identity::resolve(user, self.group.as_deref())?;
        } else if self.group.is_some() {
            return Err(Error::Config(format!(
                "{}: a group is given without a user",
                self.name
            )));
        }
        let udp = self
            .address
            .as_deref()
            .is_some_and(|a| crate::listener::udp_addr(a).is_some());
        if udp && self.callbacks.on_datagram.is_none() {
            return Err(Error::Config(format!(
                "{}: a udp worker answers datagrams with on_datagram",
                self.socket_name
            )));
        }
        if !udp && self.callbacks.on_datagram.is_some() {
            return Err(Error::Config(format!(
                "{}: on_datagram is for udp workers (udp://, NAME+udp://)",
                self.socket_name
            )));
        }
        if self.tls_required && self.tls.is_none() {
            return Err(Error::Tls(format!(
                "{} needs a certificate and key: set the worker's `tls`",
                self.socket_name
            )));
        }
        if matches!(self.protocol, Some(ProtocolKind::Http)) && !self.uploads.dir.is_dir() {
            return Err(Error::Config(format!(
                "{}: the upload directory {} is not a directory",
                self.socket_name,
                self.uploads.dir.display()
            )));
        }
        if let Some(sessions) = &self.sessions {
            if !matches!(self.protocol, Some(ProtocolKind::Http)) {
                return Err(Error::Config(format!(
                    "{}: sessions need an http:// worker",
                    self.socket_name
                )));
            }
            sessions
                .check()
                .map_err(|e| Error::Config(format!("{}: {e}", self.socket_name)))?;
        }
        Ok(())
    }

    /// The protocol, if the worker listens.
    pub fn protocol(&self) -> Option<&ProtocolKind> {
        self.protocol.as_ref()
    }

    /// `host:port` the worker listens on, if any.
    pub fn address(&self) -> Option<&str> {
        self.address.as_deref()
    }

    /// Called on each instance's thread when it starts (`w.id()` is `0..count`).
    pub fn on_worker_start(&mut self, f: impl Fn(&WorkerInstance) + Send + Sync + 'static) {
        self.callbacks.on_worker_start = Some(Arc::new(f));
    }

    /// Called on each instance's thread when it stops, before its connections are closed (as
    /// Workerman's `onWorkerStop`): what it sends them is delivered before the close.
    pub fn on_worker_stop(&mut self, f: impl Fn(&WorkerInstance) + Send + Sync + 'static) {
        self.callbacks.on_worker_stop = Some(Arc::new(f));
    }

    /// Called when a client connects (for WebSocket, before the handshake; sends wait for it).
    pub fn on_connect(&mut self, f: impl Fn(&Connection) + Send + Sync + 'static) {
        self.callbacks.on_connect = Some(Arc::new(f));
    }

    /// Called for each complete message (an HTTP worker gets a `Message::Request`).
    pub fn on_message(&mut self, f: impl Fn(&Connection, Message) + Send + Sync + 'static) {
        self.callbacks.on_message = Some(Arc::new(f));
    }

    /// A `udp://` worker's callback (Workerman's `onMessage` on a UDP worker): each message
    /// of each datagram, with the sender to answer (`conn.send(…)`).
    pub fn on_datagram(
        &mut self,
        f: impl Fn(&crate::udp::UdpConnection, Message) + Send + Sync + 'static,
    ) {
        self.callbacks.on_datagram = Some(Arc::new(f));
    }

    /// Called on each instance a reload reaches (Workerman's `onWorkerReload`): before it
    /// stops for its replacement, or as it goes on (`reloadable = false`).
    pub fn on_worker_reload(&mut self, f: impl Fn(&WorkerInstance) + Send + Sync + 'static) {
        self.callbacks.on_worker_reload = Some(Arc::new(f));
    }

    /// Called when a connection closes, whichever side closed it.
    pub fn on_close(&mut self, f: impl Fn(&Connection) + Send + Sync + 'static) {
        self.callbacks.on_close = Some(Arc::new(f));
    }

    /// Called when a send fails (code 2) — e.g. a full send buffer drops a message.
    pub fn on_error(&mut self, f: impl Fn(&Connection, &ConnectionError) + Send + Sync + 'static) {
        self.callbacks.on_error = Some(Arc::new(f));
    }

    /// Called when a connection's send buffer reaches `max_send_buffer_size`.
    pub fn on_buffer_full(&mut self, f: impl Fn(&Connection) + Send + Sync + 'static) {
        self.callbacks.on_buffer_full = Some(Arc::new(f));
    }

    /// Called when a connection's send buffer has been written out.
    pub fn on_buffer_drain(&mut self, f: impl Fn(&Connection) + Send + Sync + 'static) {
        self.callbacks.on_buffer_drain = Some(Arc::new(f));
    }

    /// Serve the files of a folder (an `http://` worker): a `GET` or `HEAD` request for a file
    /// under its root is answered with it (conditional requests and ranges honoured) before
    /// `on_message` sees it; other requests go to `on_message` (404 without one).
    pub fn serve_files(&mut self, files: StaticFiles) -> Result<(), Error> {
        if !matches!(self.protocol, Some(ProtocolKind::Http)) {
            return Err(Error::Config(format!(
                "{}: static files are served by http:// workers",
                self.socket_name
            )));
        }
        self.callbacks.static_files = Some(Arc::new(files));
        Ok(())
    }

    /// Called with the upgrade request of a WebSocket connection (Workerman's
    /// `onWebSocketConnect`); return `Err(response)` to refuse it with that response. To
    /// accept with a subprotocol or extra headers, call [`Connection::set_websocket_protocol`]
    /// or [`Connection::add_websocket_header`] from it.
    pub fn on_websocket_connect(
        &mut self,
        f: impl Fn(&Connection, &Request) -> Result<(), Response> + Send + Sync + 'static,
    ) {
        self.callbacks.on_websocket_connect = Some(Arc::new(f));
    }

    /// Called once a WebSocket upgrade is accepted (`onWebSocketConnected`): the `101` is
    /// queued, and what the callback sends follows it.
    pub fn on_websocket_connected(&mut self, f: impl Fn(&Connection) + Send + Sync + 'static) {
        self.callbacks.on_websocket_connected = Some(Arc::new(f));
    }

    /// Called when a WebSocket's closing handshake begins (`onWebSocketClose`), with the code
    /// and reason of the peer's close frame (1005 when it had none), or of the close frame
    /// this side sent first (1000 for `close()`, 1002/1007/1009 for a protocol error).
    /// `on_close` still follows when the socket closes.
    pub fn on_websocket_close(
        &mut self,
        f: impl Fn(&Connection, u16, &str) + Send + Sync + 'static,
    ) {
        self.callbacks.on_websocket_close = Some(Arc::new(f));
    }

    /// Called with each ping's data (`onWebSocketPing`). Unlike Workerman, the pong is sent
    /// whether or not this is set, as RFC 6455 requires.
    pub fn on_websocket_ping(&mut self, f: impl Fn(&Connection, &[u8]) + Send + Sync + 'static) {
        self.callbacks.on_websocket_ping = Some(Arc::new(f));
    }

    /// Called with each pong's data (`onWebSocketPong`), e.g. the answers to the keep-alive
    /// pings sent past half of `idle_timeout`.
    pub fn on_websocket_pong(&mut self, f: impl Fn(&Connection, &[u8]) + Send + Sync + 'static) {
        self.callbacks.on_websocket_pong = Some(Arc::new(f));
    }
}
