//! [`AsyncTcpConnection`]: an outgoing connection (`ws://`, `frame://`, `text://`, `tcp://` or
//! a registered scheme; `wss://` and `tls://` over TLS) with the same callbacks as a worker's,
//! and `reconnect(after)`.
//!
//! Create it on a worker instance's thread (in `on_worker_start` or any callback); it lives on
//! that thread. Sends made while it connects are queued and flushed once it is open.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::callbacks::guard;
use crate::connection::{
    Callbacks, Connection, ConnectionError, SendStatus, DEFAULT_MAX_PACKAGE,
    DEFAULT_MAX_SEND_BUFFER,
};
use crate::error::Error;
use crate::message::{Message, Response};
use crate::protocol::{ProtocolKind, Role};
use crate::tls::ClientTls;
use crate::transport::{Socket, Stream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

thread_local! {
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

struct ClientInner {
    url: String,
    proto: ProtocolKind,
    host_port: String,
    path: String,
    callbacks: Rc<RefCell<Callbacks>>,
    current: RefCell<Option<Connection>>,
    pending: RefCell<Option<JoinHandle<()>>>,
    max_send_buffer_size: Cell<usize>,
    max_package_size: Cell<usize>,
    /// Connect over TLS, trusting these roots (`None` with `wants_tls`: the system's).
    tls: RefCell<Option<ClientTls>>,
    wants_tls: Cell<bool>,
    /// `ws://`: headers added to the upgrade request (the subprotocol among them).
    headers: RefCell<Vec<(String, String)>>,
    /// `ws://`: send a ping this often once open.
    ping_interval: Cell<Option<Duration>>,
}

/// An outgoing connection, Workerman's `AsyncTcpConnection`.
#[derive(Clone)]
pub struct AsyncTcpConnection(Rc<ClientInner>);

impl std::fmt::Debug for AsyncTcpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncTcpConnection")
            .field("url", &self.0.url)
            .finish()
    }
}

impl AsyncTcpConnection {
    /// A connection to `url`, e.g. `ws://127.0.0.1:8080/path` or `frame://127.0.0.1:2206`;
    /// `wss://…` (WebSocket) and `tls://…` (frame) connect over TLS, trusting the system's
    /// roots and `$WERKMANN_TLS_CA`. Nothing happens until [`AsyncTcpConnection::connect`].
    pub fn new(url: &str) -> Result<Self, Error> {
        let (plain, wants_tls) = crate::address::strip_tls_scheme(url);
        let (scheme, rest) = plain
            .split_once("://")
            .ok_or_else(|| Error::BadSocketName(url.to_string(), "expected scheme://host:port"))?;
        let unix = crate::address::unix_socket_name(scheme, rest);
        let scheme = unix.map_or(scheme, |(s, _)| s);
        let proto = ProtocolKind::from_scheme(&scheme.to_ascii_lowercase())
            .ok_or_else(|| Error::UnknownProtocol(scheme.to_string()))?;
        let (host_port, path) = match (unix, rest.find('/')) {
            // A Unix socket: its path is the address (a WebSocket asks for `/`).
            (Some((_, path)), _) => (format!("{}{path}", crate::listener::UNIX), "/".to_string()),
            (None, Some(i)) => (rest[..i].to_string(), rest[i..].to_string()),
            (None, None) => (rest.to_string(), "/".to_string()),
        };
        if unix.is_none()
            && host_port
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
        {
            return Err(Error::BadSocketName(
                url.to_string(),
                "expected a host and a port",
            ));
        }
        Ok(AsyncTcpConnection(Rc::new(ClientInner {
            url: url.to_string(),
            proto,
            host_port,
            path,
            callbacks: Rc::new(RefCell::new(Callbacks::default())),
            current: RefCell::new(None),
            pending: RefCell::new(None),
            max_send_buffer_size: Cell::new(DEFAULT_MAX_SEND_BUFFER),
            max_package_size: Cell::new(DEFAULT_MAX_PACKAGE),
            tls: RefCell::new(None),
            wants_tls: Cell::new(wants_tls),
            headers: RefCell::new(Vec::new()),
            ping_interval: Cell::new(None),
        })))
    }

    /// Connect over TLS trusting `tls`'s roots (Workerman's `transport = 'ssl'`), from the
    /// next connection attempt on.
    pub fn set_tls(&self, tls: ClientTls) {
        *self.0.tls.borrow_mut() = Some(tls);
        self.0.wants_tls.set(true);
    }

    /// `ws://`: add a header to the upgrade request (Workerman's `$con->headers`), from the
    /// next connection attempt on. A name or value that is not a valid header is dropped
    /// (logged) when the request is written.
    pub fn add_header(&self, name: &str, value: &str) {
        self.0
            .headers
            .borrow_mut()
            .push((name.to_owned(), value.to_owned()));
    }

    /// `ws://`: ask for these subprotocols, in order of preference (`Sec-WebSocket-Protocol`,
    /// Workerman's `websocketClientProtocol`); the server's choice is in the response's
    /// `Sec-WebSocket-Protocol` ([`AsyncTcpConnection::on_websocket_connect`]), and a choice
    /// not asked for fails the handshake.
    pub fn set_websocket_protocols(&self, protocols: &[&str]) {
        let mut headers = self.0.headers.borrow_mut();
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("sec-websocket-protocol"));
        if !protocols.is_empty() {
            headers.push(("Sec-WebSocket-Protocol".into(), protocols.join(", ")));
        }
    }

    /// `ws://`: send a ping every `interval` while open (Workerman's
    /// `websocketPingInterval`); `None` (the default) sends none.
    pub fn set_websocket_ping_interval(&self, interval: Option<Duration>) {
        self.0.ping_interval.set(interval.filter(|d| !d.is_zero()));
    }

    /// `ws://`: called with the server's `101` answer (status and headers) once the handshake
    /// succeeds, before `on_connect` (Workerman's client `onWebSocketConnect`).
    pub fn on_websocket_connect(&self, f: impl Fn(&Connection, &Response) + 'static) {
        self.0.callbacks.borrow_mut().on_websocket_response = Some(Rc::new(f));
    }

    /// `ws://`: called with each ping's data from the server (the pong is sent anyway).
    pub fn on_websocket_ping(&self, f: impl Fn(&Connection, &[u8]) + 'static) {
        self.0.callbacks.borrow_mut().on_websocket_ping = Some(Rc::new(f));
    }

    /// `ws://`: called with each pong's data from the server (answers to the ping interval's
    /// pings).
    pub fn on_websocket_pong(&self, f: impl Fn(&Connection, &[u8]) + 'static) {
        self.0.callbacks.borrow_mut().on_websocket_pong = Some(Rc::new(f));
    }

    /// `ws://`: called when the closing handshake begins, with the code and reason of the
    /// server's close frame, or of ours.
    pub fn on_websocket_close(&self, f: impl Fn(&Connection, u16, &str) + 'static) {
        self.0.callbacks.borrow_mut().on_websocket_close = Some(Rc::new(f));
    }

    /// The URL given to `new`.
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// Called once connected (for `ws://`, once the handshake is done).
    pub fn on_connect(&self, f: impl Fn(&Connection) + 'static) {
        self.0.callbacks.borrow_mut().on_connect = Some(Rc::new(f));
    }

    /// Called for each message from the server.
    pub fn on_message(&self, f: impl Fn(&Connection, Message) + 'static) {
        self.0.callbacks.borrow_mut().on_message = Some(Rc::new(f));
    }

    /// Called when the connection closes (a good place to call `reconnect`).
    pub fn on_close(&self, f: impl Fn(&Connection) + 'static) {
        self.0.callbacks.borrow_mut().on_close = Some(Rc::new(f));
    }

    /// Called when connecting (code 1) or sending (code 2) fails.
    pub fn on_error(&self, f: impl Fn(&Connection, &ConnectionError) + 'static) {
        self.0.callbacks.borrow_mut().on_error = Some(Rc::new(f));
    }

    /// Called when the send buffer is full.
    pub fn on_buffer_full(&self, f: impl Fn(&Connection) + 'static) {
        self.0.callbacks.borrow_mut().on_buffer_full = Some(Rc::new(f));
    }

    /// Called when the send buffer has drained.
    pub fn on_buffer_drain(&self, f: impl Fn(&Connection) + 'static) {
        self.0.callbacks.borrow_mut().on_buffer_drain = Some(Rc::new(f));
    }

    /// Set the send buffer limit for the next connection attempts.
    pub fn set_max_send_buffer_size(&self, bytes: usize) {
        self.0.max_send_buffer_size.set(bytes);
    }

    /// Set the incoming package limit for the next connection attempts.
    pub fn set_max_package_size(&self, bytes: usize) {
        self.0.max_package_size.set(bytes);
    }

    /// The current connection (connecting, open or closing).
    pub fn connection(&self) -> Option<Connection> {
        self.0.current.borrow().clone()
    }

    /// Start connecting now. Must be called on a worker instance's (arbiter's) thread.
    pub fn connect(&self) {
        self.schedule(Duration::ZERO);
    }

    /// Close the current connection (if any) and connect again after `after`.
    pub fn reconnect(&self, after: Duration) {
        if let Some(c) = self.0.current.borrow().clone() {
            c.destroy();
        }
        self.schedule(after);
    }

    /// Send on the current connection (queued while connecting).
    pub fn send(&self, msg: impl Into<Message>) -> SendStatus {
        match self.connection() {
            Some(c) => c.send(msg),
            None => SendStatus::Failed,
        }
    }

    /// Close the connection and cancel any pending reconnect.
    pub fn close(&self) {
        if let Some(h) = self.0.pending.borrow_mut().take() {
            h.abort();
        }
        if let Some(c) = self.0.current.borrow().clone() {
            c.close();
        }
    }

    fn schedule(&self, after: Duration) {
        if actix_rt::Arbiter::try_current().is_none() {
            log::error!("AsyncTcpConnection::connect called outside a worker thread");
            return;
        }
        if let Some(h) = self.0.pending.borrow_mut().take() {
            h.abort();
        }
        let id = NEXT_ID.with(|n| {
            let id = n.get();
            n.set(id + 1);
            id
        });
        let inner = &self.0;
        // A Unix socket has no host to name in a `Host` header.
        let host = match crate::listener::unix_path(&inner.host_port) {
            Some(_) => "localhost",
            None => &inner.host_port,
        };
        let codec = inner.proto.codec(
            Role::Client,
            host,
            &inner.path,
            inner.max_package_size.get(),
        );
        let mut codec = codec;
        for (name, value) in inner.headers.borrow().iter() {
            codec.add_handshake_header(name, value);
        }
        let ping_interval = inner
            .ping_interval
            .get()
            .filter(|_| inner.proto.is_websocket());
        let conn = Connection::new(
            id,
            usize::MAX,
            codec,
            inner.callbacks.clone(),
            None,
            inner.max_send_buffer_size.get(),
            inner.max_package_size.get(),
        );
        *inner.current.borrow_mut() = Some(conn.clone());
        let fires_connect = !matches!(inner.proto, ProtocolKind::WebSocket);
        let host_port = inner.host_port.clone();
        let tls = if inner.wants_tls.get() {
            let configured = inner.tls.borrow().clone();
            match configured.map(Ok).unwrap_or_else(ClientTls::system) {
                Ok(tls) => {
                    *inner.tls.borrow_mut() = Some(tls.clone());
                    Some(tls)
                }
                Err(e) => {
                    connect_failed(&conn, &host_port, e.to_string());
                    return;
                }
            }
        } else {
            None
        };
        let handle = actix_rt::spawn(async move {
            if !after.is_zero() {
                tokio::time::sleep(after).await;
            }
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, async {
                match crate::listener::unix_path(&host_port) {
                    Some(path) => tokio::net::UnixStream::connect(path)
                        .await
                        .map(Socket::Unix),
                    None => tokio::net::TcpStream::connect(&host_port)
                        .await
                        .map(Socket::Tcp),
                }
            })
            .await;
            let stream = match attempt {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return connect_failed(&conn, &host_port, e.to_string()),
                Err(_) => return connect_failed(&conn, &host_port, "timed out".into()),
            };
            if conn.status() == crate::connection::Status::Closed {
                return;
            }
            let peer = match &stream {
                Socket::Tcp(t) => t.peer_addr().ok(),
                Socket::Unix(_) => None,
            };
            let stream = match tls {
                None => Stream::Plain(stream),
                Some(tls) => {
                    let host = host_port.rsplit_once(':').map_or(&*host_port, |(h, _)| h);
                    match tls.session(host) {
                        Ok(session) => Stream::tls(stream, session),
                        Err(e) => return connect_failed(&conn, &host_port, e.to_string()),
                    }
                }
            };
            conn.attach(stream, peer);
            if let Some(every) = ping_interval {
                let conn = conn.clone();
                actix_rt::spawn(async move {
                    let mut tick =
                        tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    loop {
                        tick.tick().await;
                        if matches!(
                            conn.status(),
                            crate::connection::Status::Closing | crate::connection::Status::Closed
                        ) {
                            break;
                        }
                        if conn.is_open() {
                            conn.send_ping();
                        }
                    }
                });
            }
            if fires_connect {
                let cb = conn.callbacks().borrow().on_connect.clone();
                if let Some(cb) = cb {
                    guard("on_connect", || cb(&conn));
                }
            }
            conn.run().await;
        });
        *inner.pending.borrow_mut() = Some(handle);
    }
}

fn connect_failed(conn: &Connection, host_port: &str, why: String) {
    log::debug!("connect to {host_port} failed: {why}");
    let err = ConnectionError::ConnectFail(format!("{host_port}: {why}"));
    conn.destroy();
    let (on_error, on_close) = {
        let cbs = conn.callbacks();
        let cbs = cbs.borrow();
        (cbs.on_error.clone(), cbs.on_close.clone())
    };
    if let Some(cb) = on_error {
        guard("on_error", || cb(conn, &err));
    }
    if let Some(cb) = on_close {
        guard("on_close", || cb(conn));
    }
}
