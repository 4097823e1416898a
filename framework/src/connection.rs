//! [`Connection`]: one TCP connection of a worker instance (or an outgoing client), its bounded
//! send buffer and the task that drives it.
//!
//! A connection lives on one worker instance's thread. Its task reads on readiness into a stack
//! buffer, decodes with the connection's codec and calls the callbacks; sends try the socket at
//! once when nothing is queued (Workerman's `send` returns `true` then) and otherwise join a
//! bounded queue that the task writes out in one vectored write.

pub(crate) mod callbacks;
mod handshake;
pub(crate) mod owner;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

pub(crate) use callbacks::Callbacks;
pub(crate) use owner::ConnectionOwner;

use crate::callbacks::guard;
use crate::message::Message;
use crate::metrics::Closed;
use crate::protocol::{Codec, Decoded, ProtocolError};
use crate::send_queue::{Pushed, SendQueue};
use crate::transport::Stream;

/// Default limit of a connection's send buffer (Workerman's `maxSendBufferSize`).
pub const DEFAULT_MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Default limit of one incoming package (Workerman's `maxPackageSize`).
pub const DEFAULT_MAX_PACKAGE: usize = 10 * 1024 * 1024;

const READS_PER_POLL: usize = 16;
const LINGER: Duration = Duration::from_secs(2);

/// What `send` did with a message, like Workerman's `true` / `null` / `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Handed to the kernel in full.
    Sent,
    /// Accepted into the send buffer; it goes out as the peer reads.
    Queued,
    /// Dropped: the connection is closed or its send buffer is full (`on_error` was called).
    Failed,
}

impl SendStatus {
    /// Whether the message was accepted (sent or queued).
    pub fn is_ok(self) -> bool {
        self != SendStatus::Failed
    }
}

/// Why `on_error` was called, with Workerman's codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionError {
    /// An outgoing connection could not be established (code 1).
    ConnectFail(String),
    /// A message could not be sent (code 2).
    SendFail(String),
}

impl ConnectionError {
    /// Workerman's numeric code: 1 for connect, 2 for send failures.
    pub fn code(&self) -> u32 {
        match self {
            ConnectionError::ConnectFail(_) => 1,
            ConnectionError::SendFail(_) => 2,
        }
    }
}

impl std::fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionError::ConnectFail(m) => write!(f, "connect failed: {m}"),
            ConnectionError::SendFail(m) => write!(f, "send failed: {m}"),
        }
    }
}

/// Lifecycle of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// An outgoing connection not yet established.
    Connecting,
    /// Open.
    Established,
    /// Flushing its last bytes before closing.
    Closing,
    /// Gone.
    Closed,
}

/// Counters of one connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionStats {
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent or queued.
    pub messages_out: u64,
    /// Messages dropped (send buffer full or connection closed).
    pub send_failures: u64,
}

pub(crate) struct ConnInner {
    id: u64,
    worker_id: usize,
    remote: Cell<Option<SocketAddr>>,
    stream: RefCell<Option<Stream>>,
    codec: RefCell<Box<dyn Codec>>,
    status: Cell<Status>,
    out: RefCell<SendQueue>,
    read_buf: RefCell<BytesMut>,
    paused: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    pub(crate) max_send_buffer_size: Cell<usize>,
    pub(crate) max_package_size: usize,
    /// The instance's callbacks, or this connection's own copy once one was set on it
    /// ([`Connection::on_message`], …): taken and put back to read (no borrow flag to pay).
    callbacks: Cell<Option<Rc<RefCell<Callbacks>>>>,
    /// `callbacks` is this connection's own copy.
    own_callbacks: Cell<bool>,
    owner: Option<Rc<dyn ConnectionOwner>>,
    stats: Cell<ConnectionStats>,
    data: RefCell<Option<Box<dyn Any>>>,
    /// The instance clock ([`clock::now`]) when the peer last sent anything.
    last_input: Cell<u32>,
    /// A keep-alive ping was sent since then.
    pinged: Cell<bool>,
    /// The instance clock when the socket was attached.
    opened_at: Cell<u32>,
    /// The instance clock when closing began (a peer that never reads cannot hold it open).
    closing_since: Cell<u32>,
    /// The instance clock when the request head now buffered began ([`NO_HEAD`]: none).
    head_since: Cell<u32>,
    /// The codec has a body of its own to send (a file response): the task pulls it.
    pulling: Cell<bool>,
    /// A fan-out of this turn reached it (see [`fan_out`]).
    fanned: Cell<bool>,
    /// Why it is closing, once a cause is known (the first one wins; for the metrics).
    closed_why: Cell<Option<Closed>>,
}

/// A codec-sourced body (a file response) is read this far ahead of the socket.
const BODY_AHEAD: usize = 128 * 1024;
/// The pieces it is read in.
const BODY_PIECE: usize = 64 * 1024;
/// Fills per poll of one connection before it yields to the others.
const FILLS_PER_POLL: usize = 16;

/// `head_since` when no request head is partly buffered.
const NO_HEAD: u32 = u32::MAX;

/// A coarse per-thread clock in seconds, advanced by the instance's sweeper: reading it on
/// every read costs no system call.
pub(crate) mod clock {
    use std::cell::Cell;

    thread_local! {
        static NOW: Cell<u32> = const { Cell::new(0) };
    }

    /// Seconds since the instance started.
    pub fn now() -> u32 {
        NOW.with(Cell::get)
    }

    /// Advance the clock.
    pub fn set(t: u32) {
        NOW.with(|n| n.set(t));
    }
}

/// Sends made while one event goes out to many connections (a feed's readers): a
/// connection's first in a turn is written at once, as any send, and what follows in the
/// same turn is queued and written with one call when the turn ends — a burst of events costs
/// about a write per connection and turn, not one per event, and a lone event is not delayed.
pub(crate) mod fan_out {
    use std::cell::{Cell, RefCell};

    use super::{Connection, Status};

    thread_local! {
        static ON: Cell<bool> = const { Cell::new(false) };
        /// Connections fan-outs reached this turn: written (what is queued) and unmarked
        /// when it ends.
        static REACHED: RefCell<Vec<Connection>> = const { RefCell::new(Vec::new()) };
    }

    /// Run `f` with sends fanned out when `many` (else as they are).
    pub fn to_many<R>(many: bool, f: impl FnOnce() -> R) -> R {
        if !many || ON.with(Cell::get) {
            return f();
        }
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                ON.with(|o| o.set(false));
            }
        }
        ON.with(|o| o.set(true));
        let _reset = Reset;
        f()
    }

    /// Whether a send on `conn` may try its socket now: outside a fan-out always; inside,
    /// only the first of the turn (the others queue behind it).
    pub fn write_now(conn: &Connection) -> bool {
        if !ON.with(Cell::get) {
            return true;
        }
        if conn.0.fanned.replace(true) {
            return false;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            conn.0.fanned.set(false);
            return true;
        }
        let first = REACHED.with(|r| {
            let mut r = r.borrow_mut();
            r.push(conn.clone());
            r.len() == 1
        });
        if first {
            actix_rt::spawn(async { flush() });
        }
        true
    }

    /// Whether a queued write on `conn` waits for the turn's end (made in a fan-out that
    /// reached it) rather than waking its task.
    pub fn write_later(conn: &Connection) -> bool {
        ON.with(Cell::get) && conn.0.fanned.get()
    }

    /// The turn's end: write what the fan-outs queued, each connection once.
    fn flush() {
        let conns = REACHED.with(|r| std::mem::take(&mut *r.borrow_mut()));
        for conn in conns {
            conn.0.fanned.set(false);
            if conn.0.status.get() == Status::Established {
                conn.flush_now();
            } else {
                conn.wake();
            }
        }
    }
}

/// A connection, cheap to clone, usable only on the thread of the worker instance that owns it.
#[derive(Clone)]
pub struct Connection(pub(crate) Rc<ConnInner>);

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.0.id)
            .field("worker_id", &self.0.worker_id)
            .field("remote", &self.0.remote.get())
            .field("status", &self.0.status.get())
            .finish()
    }
}

impl Connection {
    pub(crate) fn new(
        id: u64,
        worker_id: usize,
        codec: Box<dyn Codec>,
        callbacks: Rc<RefCell<Callbacks>>,
        owner: Option<Rc<dyn ConnectionOwner>>,
        max_send_buffer_size: usize,
        max_package_size: usize,
    ) -> Connection {
        Connection(Rc::new(ConnInner {
            id,
            worker_id,
            remote: Cell::new(None),
            stream: RefCell::new(None),
            codec: RefCell::new(codec),
            status: Cell::new(Status::Connecting),
            out: RefCell::new(SendQueue::default()),
            read_buf: RefCell::new(BytesMut::new()),
            paused: Cell::new(false),
            waker: RefCell::new(None),
            max_send_buffer_size: Cell::new(max_send_buffer_size),
            max_package_size,
            callbacks: Cell::new(Some(callbacks)),
            own_callbacks: Cell::new(false),
            owner,
            stats: Cell::new(ConnectionStats::default()),
            data: RefCell::new(None),
            last_input: Cell::new(clock::now()),
            pinged: Cell::new(false),
            opened_at: Cell::new(0),
            closing_since: Cell::new(0),
            head_since: Cell::new(NO_HEAD),
            pulling: Cell::new(false),
            fanned: Cell::new(false),
            closed_why: Cell::new(None),
        }))
    }

    /// The connection id: unique within its worker instance, never reused while it runs.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The id of the worker instance that owns this connection.
    pub fn worker_id(&self) -> usize {
        self.0.worker_id
    }

    /// Whoever accepted this connection (`None` for outgoing connections).
    pub(crate) fn owner(&self) -> Option<&Rc<dyn ConnectionOwner>> {
        self.0.owner.as_ref()
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.0.remote.get()
    }

    /// This side's address (Workerman's `getLocalAddress`): the listening address the client
    /// reached, or an outgoing connection's own; `None` once closed.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.0.stream.borrow().as_ref().and_then(Stream::local_addr)
    }

    /// The peer's IP as text (Workerman's `getRemoteIp`).
    pub fn remote_ip(&self) -> String {
        self.0
            .remote
            .get()
            .map(|a| a.ip().to_string())
            .unwrap_or_default()
    }

    /// Where the connection is in its life.
    pub fn status(&self) -> Status {
        self.0.status.get()
    }

    /// Bytes waiting in the send buffer.
    pub fn send_buffer_len(&self) -> usize {
        self.0.out.borrow().len()
    }

    /// The send buffer's limit.
    pub fn max_send_buffer_size(&self) -> usize {
        self.0.max_send_buffer_size.get()
    }

    /// Change the send buffer's limit for this connection.
    pub fn set_max_send_buffer_size(&self, bytes: usize) {
        self.0.max_send_buffer_size.set(bytes);
    }

    /// This connection's counters.
    pub fn stats(&self) -> ConnectionStats {
        self.0.stats.get()
    }

    /// Seconds since it was accepted and since the peer last sent anything, at instance
    /// clock `now`.
    pub(crate) fn ages(&self, now: u32) -> (u32, u32) {
        (
            now.saturating_sub(self.0.opened_at.get()),
            now.saturating_sub(self.0.last_input.get()),
        )
    }

    /// Attach user data (Workerman apps set properties on the connection object).
    pub fn set_data<T: Any>(&self, value: T) {
        *self.0.data.borrow_mut() = Some(Box::new(value));
    }

    /// Run `f` on the attached data, if it is a `T`.
    pub fn with_data<T: Any, R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut d = self.0.data.borrow_mut();
        d.as_mut().and_then(|b| b.downcast_mut::<T>()).map(f)
    }

    /// Encode `msg` with the connection's protocol and send it.
    pub fn send(&self, msg: impl Into<Message>) -> SendStatus {
        self.send_message(msg.into(), fan_out::write_now(self))
    }

    /// Encode `msg` and queue it without trying the socket now: the connection's task writes it
    /// with whatever else is queued (fan-out to many connections, where writes coalesce).
    pub(crate) fn send_queued(&self, msg: Message) -> SendStatus {
        self.send_message(msg, false)
    }

    fn send_message(&self, msg: Message, try_now: bool) -> SendStatus {
        if matches!(self.status(), Status::Closing | Status::Closed) {
            return self.fail_closed();
        }
        let encoded = self.0.codec.borrow_mut().encode(msg);
        let (wants_close, body) = {
            let codec = self.0.codec.borrow();
            (codec.wants_close(), codec.body_pending())
        };
        if body {
            // A file response: the task reads its body as the socket takes it.
            self.0.pulling.set(true);
        }
        if body || wants_close || !self.0.read_buf.borrow().is_empty() {
            // The codec may accept the next buffered package now (an HTTP response was sent),
            // or the connection must close once this is out (a response sent later, from
            // another callback), or a body is to be read: the task has to look.
            self.wake();
        }
        match encoded {
            // Nothing to write (a streamed piece of the answer to a HEAD request).
            Ok(bytes) if bytes.is_empty() => SendStatus::Sent,
            // A head whose body the task reads next: queued, so that head and first piece go
            // out in one write (a small file: one segment, one wake-up of the client).
            Ok(bytes) if body || !try_now => self.send_deferred(bytes),
            Ok(bytes) => self.push_raw(bytes, true),
            Err(e) => {
                log::warn!("connection {}: {e}", self.0.id);
                self.count_failure();
                SendStatus::Failed
            }
        }
    }

    /// Whether the protocol's opening handshake is done (a WebSocket upgrade answered):
    /// broadcasts skip a connection until then, so what it gets first is what was sent to it
    /// in its handshake (a greeting), and a connection that turns out to speak another
    /// protocol on the same port (a Pusher socket, a resuming reader) never gets them.
    pub(crate) fn handshake_done(&self) -> bool {
        self.0.codec.try_borrow().map_or(true, |c| c.is_open())
    }

    /// Send bytes already encoded for this connection's protocol (Workerman's `$raw = true`).
    /// Tries the socket at once when nothing is queued.
    pub fn send_raw(&self, bytes: Bytes) -> SendStatus {
        self.push_raw(bytes, fan_out::write_now(self))
    }

    /// Queue pre-encoded bytes without trying the socket now; the connection's task writes them
    /// with whatever else is queued (used for broadcasts, where writes coalesce).
    pub fn send_deferred(&self, bytes: Bytes) -> SendStatus {
        self.push_raw(bytes, false)
    }

    fn push_raw(&self, bytes: Bytes, try_now: bool) -> SendStatus {
        let inner = &self.0;
        let write_now = match inner.status.get() {
            Status::Closing | Status::Closed => return self.fail_closed(),
            Status::Connecting => false,
            Status::Established => try_now && inner.codec.borrow().is_open(),
        };
        let max = inner.max_send_buffer_size.get();
        let pushed = if write_now {
            let stream = inner.stream.borrow();
            let write = stream.as_ref().map(|s| |b: &[u8]| s.try_write(b));
            inner.out.borrow_mut().push(bytes, max, write)
        } else {
            inner.out.borrow_mut().enqueue(bytes, max)
        };
        match pushed {
            Pushed::Sent => {
                self.count_out();
                SendStatus::Sent
            }
            Pushed::Queued { wake, full } => {
                self.count_out();
                if wake && !fan_out::write_later(self) {
                    self.wake();
                }
                if full {
                    let cb = self.callbacks().borrow().on_buffer_full.clone();
                    if let Some(cb) = cb {
                        // A connection the callback closes is closed for not reading.
                        let before = self.0.closed_why.get();
                        self.0.closed_why.set(before.or(Some(Closed::Slow)));
                        guard("on_buffer_full", || cb(self));
                        if !matches!(self.0.status.get(), Status::Closing | Status::Closed) {
                            self.0.closed_why.set(before);
                        }
                    }
                }
                SendStatus::Queued
            }
            Pushed::Dropped => {
                self.count_failure();
                self.call_error(ConnectionError::SendFail(
                    "send buffer full and drop package".into(),
                ));
                SendStatus::Failed
            }
            Pushed::Failed(e) => {
                log::debug!("connection {}: write failed: {e}", inner.id);
                self.count_failure();
                self.call_error(ConnectionError::SendFail(e.to_string()));
                self.abort();
                SendStatus::Failed
            }
        }
    }

    fn fail_closed(&self) -> SendStatus {
        self.count_failure();
        SendStatus::Failed
    }

    fn count_out(&self) {
        let mut s = self.0.stats.get();
        s.messages_out += 1;
        self.0.stats.set(s);
        if let Some(o) = &self.0.owner {
            o.message_out();
        }
    }

    fn count_failure(&self) {
        let mut s = self.0.stats.get();
        s.send_failures += 1;
        self.0.stats.set(s);
        if let Some(o) = &self.0.owner {
            o.send_failure();
        }
    }

    fn call_error(&self, err: ConnectionError) {
        let cb = self.callbacks().borrow().on_error.clone();
        match cb {
            Some(cb) => guard("on_error", || cb(self, &err)),
            None => log::debug!("connection {}: {err}", self.0.id),
        }
    }

    /// Close after flushing what is queued (a WebSocket gets its close frame first).
    pub fn close(&self) {
        self.close_as(None);
    }

    /// Close a WebSocket with a status `code` and `reason` in its close frame (RFC 6455 7.4:
    /// 1000–1003, 1007–1011, or an application's 3000–4999; the reason at most 123 bytes),
    /// after flushing what is queued; other connections close as [`Connection::close`] does.
    /// Returns false, and does nothing, for a code that may not be sent or a longer reason.
    #[must_use]
    pub fn close_websocket(&self, code: u16, reason: &str) -> bool {
        let sendable = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
        if !sendable || reason.len() > 123 {
            return false;
        }
        self.close_as(Some((code, reason)));
        true
    }

    fn close_as(&self, status: Option<(u16, &str)>) {
        let inner = &self.0;
        self.closed_because(Closed::Server);
        match inner.status.get() {
            Status::Closing | Status::Closed => {}
            Status::Connecting => {
                inner.status.set(Status::Closed);
                self.wake();
            }
            Status::Established => {
                let frame = match status {
                    None => inner.codec.borrow_mut().close_frame(),
                    Some((code, reason)) => inner.codec.borrow_mut().close_frame_with(code, reason),
                };
                if let Some(f) = frame {
                    inner.out.borrow_mut().push_back(f);
                }
                self.set_closing();
                self.wake();
                self.report_ws_close();
            }
        }
    }

    /// Send one last message, then close (Workerman's `close($data)`).
    pub fn close_with(&self, msg: impl Into<Message>) {
        self.send(msg);
        self.close();
    }

    /// Drop the connection at once, discarding what is queued.
    pub fn destroy(&self) {
        self.abort();
    }

    fn abort(&self) {
        self.closed_because(Closed::Server);
        self.0.out.borrow_mut().clear();
        if self.0.status.get() != Status::Closed {
            self.0.status.set(Status::Closed);
            self.wake();
        }
    }

    /// Note why the connection closes, unless a cause was noted before.
    pub(crate) fn closed_because(&self, why: Closed) {
        if self.0.closed_why.get().is_none() {
            self.0.closed_why.set(Some(why));
        }
    }

    fn set_closing(&self) {
        self.0.status.set(Status::Closing);
        self.0.closing_since.set(clock::now());
    }

    /// A connection still flushing its last bytes `limit` seconds after it began to close (its
    /// peer does not read) is dropped; returns whether it was.
    pub(crate) fn check_closing(&self, now: u32, limit: u32) -> bool {
        if self.status() == Status::Closing
            && now.saturating_sub(self.0.closing_since.get()) >= limit
        {
            log::info!(
                "connection {} from {:?}: peer does not read its last {} bytes; dropped",
                self.0.id,
                self.0.remote.get(),
                self.send_buffer_len()
            );
            self.closed_because(Closed::Slow);
            self.destroy();
            return true;
        }
        false
    }

    /// A TLS handshake still unfinished `limit` seconds after the connection was accepted is
    /// dropped (a peer that connects and says nothing, or speaks plain text to a TLS port);
    /// returns whether it was.
    pub(crate) fn check_handshake(&self, now: u32, limit: u32) -> bool {
        let handshaking = self
            .0
            .stream
            .borrow()
            .as_ref()
            .is_some_and(Stream::is_handshaking);
        if handshaking && now.saturating_sub(self.0.opened_at.get()) >= limit {
            log::info!(
                "connection {} from {:?}: no TLS handshake within {limit} s; dropped",
                self.0.id,
                self.0.remote.get()
            );
            self.destroy();
            return true;
        }
        false
    }

    /// A request head begun more than `limit` seconds before instance clock `now` (a clock of
    /// whole seconds: between `limit` and `limit + 1` s) and still not complete — a client that
    /// sends it a byte at a time, which the idle timeout does not see — is answered 408 and
    /// closed; returns whether it was.
    /// A graceful stop's part: whether the connection rests between requests (an HTTP
    /// keep-alive connection with no request begun, nothing left to write), to be closed.
    /// One that has not sent its first request yet is given 2 s to (it was just accepted:
    /// the request may be on its way). Other connections are left to finish (their peers
    /// close them, or the stop's timeout).
    pub(crate) fn is_resting(&self) -> bool {
        let young = clock::now().saturating_sub(self.0.opened_at.get()) < 2;
        self.status() == Status::Established
            && !(self.0.stats.get().messages_in == 0 && young)
            && self.0.codec.borrow().awaits_head()
            && self.0.read_buf.borrow().is_empty()
            && self.send_buffer_len() == 0
    }

    pub(crate) fn check_head(&self, now: u32, limit: u32) -> bool {
        let since = self.0.head_since.get();
        if since == NO_HEAD
            || now.saturating_sub(since) <= limit
            || self.status() != Status::Established
            || !self.0.codec.borrow().awaits_head()
        {
            return false;
        }
        self.0.head_since.set(NO_HEAD);
        self.closed_because(Closed::Idle);
        self.protocol_error(ProtocolError::HeadTimeout { secs: limit });
        true
    }

    /// Keep-alive at instance clock `now`: past `timeout` seconds without input the connection
    /// is closed (returns `true`); past half of it a protocol ping is sent once. A connection
    /// owed a response, or streaming one, is not idle.
    pub(crate) fn check_idle(&self, now: u32, timeout: u32) -> bool {
        if self.status() != Status::Established || self.0.codec.borrow().responding() {
            return false;
        }
        let idle = now.saturating_sub(self.0.last_input.get());
        if idle >= timeout {
            log::info!(
                "connection {} from {:?}: no input for {idle} s; closing",
                self.0.id,
                self.0.remote.get()
            );
            self.closed_because(Closed::Idle);
            self.close();
            return true;
        }
        if idle >= timeout / 2 && !self.0.pinged.get() {
            let ping = self.0.codec.borrow_mut().ping_frame();
            if let Some(p) = ping {
                self.0.pinged.set(true);
                self.send_deferred(p);
            }
        }
        false
    }

    /// Stop reading from the peer (input stays in the kernel; TCP flow control pushes back).
    pub fn pause_recv(&self) {
        self.0.paused.set(true);
    }

    /// Read again after [`Connection::pause_recv`].
    pub fn resume_recv(&self) {
        if self.0.paused.replace(false) {
            self.wake();
        }
    }

    /// Whether reading is paused.
    pub fn is_paused(&self) -> bool {
        self.0.paused.get()
    }

    pub(crate) fn wake(&self) {
        if let Some(w) = self.0.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// The callbacks in effect: the instance's, or this connection's own.
    pub(crate) fn callbacks(&self) -> Rc<RefCell<Callbacks>> {
        let c = self
            .0
            .callbacks
            .take()
            .expect("a connection always has callbacks");
        let out = c.clone();
        self.0.callbacks.set(Some(c));
        out
    }

    /// Change this connection's own callbacks (a copy of the instance's, made the first time).
    fn set_own(&self, f: impl FnOnce(&mut Callbacks)) {
        let cbs = self.callbacks();
        let own = if self.0.own_callbacks.get() {
            cbs
        } else {
            let copy = Rc::new(RefCell::new(cbs.borrow().clone()));
            self.0.callbacks.set(Some(copy.clone()));
            self.0.own_callbacks.set(true);
            copy
        };
        f(&mut own.borrow_mut());
    }

    /// This connection's own `on_message`, in place of the worker's (Workerman's
    /// `$connection->onMessage`).
    pub fn on_message(&self, f: impl Fn(&Connection, Message) + 'static) {
        self.set_own(|c| c.on_message = Some(Rc::new(f)));
    }

    /// This connection's own `on_close`, in place of the worker's.
    pub fn on_close(&self, f: impl Fn(&Connection) + 'static) {
        self.set_own(|c| c.on_close = Some(Rc::new(f)));
    }

    /// This connection's own `on_error`, in place of the worker's.
    pub fn on_error(&self, f: impl Fn(&Connection, &ConnectionError) + 'static) {
        self.set_own(|c| c.on_error = Some(Rc::new(f)));
    }

    /// This connection's own `on_buffer_full`, in place of the worker's.
    pub fn on_buffer_full(&self, f: impl Fn(&Connection) + 'static) {
        self.set_own(|c| c.on_buffer_full = Some(Rc::new(f)));
    }

    /// This connection's own `on_buffer_drain`, in place of the worker's.
    pub fn on_buffer_drain(&self, f: impl Fn(&Connection) + 'static) {
        self.set_own(|c| c.on_buffer_drain = Some(Rc::new(f)));
    }

    /// Forward everything this connection receives to `dest`, as Workerman's `pipe()`: each
    /// message is sent on `dest` (encoded by its protocol), reading pauses while `dest`'s
    /// send buffer is full and resumes once it drained, and `dest` closes when this
    /// connection does. `a.pipe(&b); b.pipe(&a)` makes a proxy with back-pressure both ways.
    /// This sets this connection's `on_message` and `on_close` and `dest`'s `on_buffer_full`
    /// and `on_buffer_drain`; neither keeps the other alive.
    pub fn pipe(&self, dest: &Connection) {
        let to = Rc::downgrade(&dest.0);
        self.on_message(move |_, msg| {
            if let Some(d) = to.upgrade() {
                Connection(d).send(msg);
            }
        });
        let to = Rc::downgrade(&dest.0);
        self.on_close(move |_| {
            if let Some(d) = to.upgrade() {
                Connection(d).close();
            }
        });
        let from = Rc::downgrade(&self.0);
        dest.on_buffer_full(move |_| {
            if let Some(s) = from.upgrade() {
                Connection(s).pause_recv();
            }
        });
        let from = Rc::downgrade(&self.0);
        dest.on_buffer_drain(move |_| {
            if let Some(s) = from.upgrade() {
                Connection(s).resume_recv();
            }
        });
    }

    /// Attach an established socket; the connection becomes `Established`. An outgoing one
    /// is set `TCP_NODELAY` here; an accepted one has it from its listener.
    pub(crate) fn attach(&self, stream: Stream, remote: Option<SocketAddr>) {
        if let (None, crate::transport::Socket::Tcp(tcp)) = (&self.0.owner, stream.socket()) {
            let _ = tcp.set_nodelay(true);
        }
        *self.0.stream.borrow_mut() = Some(stream);
        self.0.remote.set(remote);
        self.0.opened_at.set(clock::now());
        if self.0.status.get() == Status::Connecting {
            self.0.status.set(Status::Established);
        }
        let hello = self.0.codec.borrow_mut().on_open();
        if let Some(h) = hello {
            self.0.out.borrow_mut().push_front_bypass(h);
        }
    }

    /// Drive the connection until it closes: read, decode, dispatch, flush.
    pub(crate) async fn run(&self) {
        poll_fn(|cx| self.poll_drive(cx)).await;
        let stream = self.0.stream.borrow_mut().take();
        self.0.status.set(Status::Closed);
        self.0.out.borrow_mut().clear();
        *self.0.read_buf.borrow_mut() = BytesMut::new();
        *self.0.waker.borrow_mut() = None;
        if let Some(o) = &self.0.owner {
            o.connection_closed(self.0.id, self.0.closed_why.get().unwrap_or_default());
        }
        let cb = self.callbacks().borrow().on_close.clone();
        if let Some(cb) = cb {
            guard("on_close", || cb(self));
        }
        if let Some(stream) = stream {
            // Boxed: its read buffer must not be part of every connection's task while idle.
            Box::pin(linger(stream.finish())).await;
        }
    }

    fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut w = self.0.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        let mut reads = 0;
        let mut fills = 0;
        loop {
            if self.0.status.get() == Status::Closed {
                return Poll::Ready(());
            }
            // 0. Queue more of a body the codec reads itself (a file), a little ahead.
            let pulling = self.0.pulling.get() && self.fill_body();
            // 1. Write out what is queued.
            match self.poll_flush(cx) {
                Poll::Ready(Err(e)) => {
                    log::debug!("connection {}: write failed: {e}", self.0.id);
                    self.closed_because(Closed::Error);
                    self.call_error(ConnectionError::SendFail(e.to_string()));
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {
                    let closing = self.0.status.get() == Status::Closing
                        || self.0.codec.borrow().wants_close();
                    if closing {
                        return Poll::Ready(());
                    }
                    if pulling {
                        // The socket took it all: read on, within this poll's share.
                        fills += 1;
                        if fills < FILLS_PER_POLL {
                            continue;
                        }
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Poll::Pending => {
                    if self.0.status.get() == Status::Closing {
                        return Poll::Pending;
                    }
                }
            }
            // 2. Decode what is buffered (the codec may be ready for more than last time).
            if !self.0.paused.get() && !self.0.read_buf.borrow().is_empty() && self.process_input()
            {
                if reads < READS_PER_POLL {
                    reads += 1;
                    continue;
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // 3. Read.
            if self.0.paused.get() {
                return Poll::Pending;
            }
            if reads >= READS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match self.poll_read(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    log::trace!("connection {}: closed by peer", self.0.id);
                    self.closed_because(Closed::Peer);
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(_)) => {
                    reads += 1;
                    self.process_input();
                }
                Poll::Ready(Err(e)) => {
                    log::debug!("connection {}: read failed: {e}", self.0.id);
                    self.closed_because(Closed::Error);
                    return Poll::Ready(());
                }
            }
        }
    }

    /// Queue the codec's own body up to [`BODY_AHEAD`] bytes ahead of the socket; whether
    /// more of it remains. A source that fails (a file cut short) closes the connection after
    /// what is queued: the response cannot be completed.
    fn fill_body(&self) -> bool {
        if self.0.status.get() != Status::Established {
            self.0.pulling.set(false);
            return false;
        }
        while self.0.out.borrow().len() < BODY_AHEAD {
            let piece = self.0.codec.borrow_mut().next_body_piece(BODY_PIECE);
            match piece {
                Some(Ok(b)) if !b.is_empty() => self.0.out.borrow_mut().push_back(b),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    log::warn!("connection {}: {e}; closing", self.0.id);
                    self.0.pulling.set(false);
                    self.close();
                    return false;
                }
                None => break,
            }
            if !self.0.codec.borrow().body_pending() {
                break;
            }
        }
        let more = self.0.codec.borrow().body_pending();
        self.0.pulling.set(more);
        more
    }

    /// Read once; append to the connection's buffer.
    fn poll_read(&self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut stream_ref = self.0.stream.borrow_mut();
        let Some(stream) = stream_ref.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let res = stream.poll_read(cx, &mut self.0.read_buf.borrow_mut());
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.0.last_input.set(clock::now());
                self.0.pinged.set(false);
            }
        }
        res
    }

    /// Write what is queued now, as far as the socket takes it, rather than when the
    /// connection's task next runs (the channel server writes an acknowledged publish's
    /// deliveries before the acknowledgement). What is left, or an error, is the task's.
    pub(crate) fn flush_now(&self) {
        if self.0.status.get() != Status::Established || self.0.out.borrow().len() == 0 {
            return;
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        if !matches!(self.poll_flush(&mut cx), Poll::Ready(Ok(()))) {
            // The task registers for write readiness again (a no-op waker took its place).
            self.wake();
        }
    }

    /// Write the queue in vectored writes until it is empty or the socket is full.
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let gated = !self.0.codec.borrow().is_open() && self.0.status.get() != Status::Closing;
        let mut wrote = false;
        let result = loop {
            let limit = {
                let out = self.0.out.borrow();
                if gated {
                    out.bypass()
                } else {
                    out.len()
                }
            };
            let mut stream_ref = self.0.stream.borrow_mut();
            let Some(stream) = stream_ref.as_mut() else {
                break Poll::Ready(Ok(()));
            };
            if limit == 0 {
                // Nothing of ours to write; the transport may still hold TLS records.
                break stream.poll_write_pending(cx);
            }
            let res = stream.poll_write_queue(cx, &self.0.out.borrow(), limit);
            match res {
                Poll::Pending => break Poll::Pending,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Ready(Ok(n)) => {
                    self.0.out.borrow_mut().advance(n);
                    wrote = true;
                }
            }
        };
        let max = self.0.max_send_buffer_size.get();
        let drained = self.0.out.borrow_mut().settle(wrote, max);
        if drained && self.0.status.get() == Status::Established {
            let cb = self.callbacks().borrow().on_buffer_drain.clone();
            if let Some(cb) = cb {
                guard("on_buffer_drain", || cb(self));
            }
        }
        result
    }

    /// Decode and dispatch buffered input until the codec needs more, reading is paused, or
    /// the connection is closing. Returns whether anything was dispatched.
    fn process_input(&self) -> bool {
        let mut progress = false;
        loop {
            if self.0.paused.get() || self.0.status.get() != Status::Established {
                break;
            }
            let decoded = {
                let mut buf = self.0.read_buf.borrow_mut();
                if buf.is_empty() {
                    break;
                }
                let r = self.0.codec.borrow_mut().decode(&mut buf);
                if buf.is_empty() {
                    // Release the allocation: an idle connection holds no read buffer.
                    *buf = BytesMut::new();
                }
                r
            };
            match decoded {
                Ok(None) => {
                    if self.0.head_since.get() == NO_HEAD
                        && self.0.codec.borrow().awaits_head()
                        && !self.0.read_buf.borrow().is_empty()
                    {
                        self.0.head_since.set(clock::now());
                    }
                    self.check_buffered_size();
                    break;
                }
                Ok(Some(d)) => {
                    progress = true;
                    self.0.head_since.set(NO_HEAD);
                    self.dispatch(d);
                }
                Err(e) => {
                    progress = true;
                    self.protocol_error(e);
                    break;
                }
            }
        }
        progress
    }

    /// A codec waiting for more input must not let the buffer grow past the package limit.
    fn check_buffered_size(&self) {
        let len = self.0.read_buf.borrow().len();
        let limit = self.0.max_package_size.saturating_add(64 * 1024);
        if len > limit {
            self.protocol_error(ProtocolError::TooLarge { size: len, limit });
        }
    }

    fn protocol_error(&self, e: ProtocolError) {
        self.closed_because(Closed::Error);
        match &e {
            ProtocolError::TooLarge { .. } => log::warn!(
                "connection {} from {:?}: error package, {e}; closing",
                self.0.id,
                self.0.remote.get()
            ),
            _ => log::info!(
                "connection {} from {:?}: {e}; closing",
                self.0.id,
                self.0.remote.get()
            ),
        }
        let reply = self.0.codec.borrow_mut().error_reply(&e);
        if let Some(r) = reply {
            let mut out = self.0.out.borrow_mut();
            if !self.0.codec.borrow().is_open() {
                out.clear();
            }
            out.push_back(r);
        }
        *self.0.read_buf.borrow_mut() = BytesMut::new();
        self.set_closing();
        self.report_ws_close();
    }

    /// Queue a keep-alive ping (WebSocket); false when the protocol has none or the
    /// connection is not open.
    pub(crate) fn is_open(&self) -> bool {
        self.0.codec.borrow().is_open()
    }

    pub(crate) fn send_ping(&self) -> bool {
        if self.status() != Status::Established {
            return false;
        }
        let ping = self.0.codec.borrow_mut().ping_frame();
        ping.is_some_and(|p| self.send_deferred(p).is_ok())
    }

    /// Call `on_websocket_close` if the codec's closing handshake just began.
    fn report_ws_close(&self) {
        let status = self.0.codec.borrow_mut().take_close_status();
        let Some((code, reason)) = status else {
            return;
        };
        let cb = self.callbacks().borrow().on_websocket_close.clone();
        if let Some(cb) = cb {
            guard("on_websocket_close", || cb(self, code, &reason));
        }
    }

    /// Add a header to the `101` answering this connection's WebSocket upgrade (Workerman's
    /// `$connection->headers` in `onWebSocketConnect`). Only while `on_websocket_connect`
    /// runs; returns whether the header was taken (a name or value with line breaks is not).
    pub fn add_websocket_header(&self, name: &str, value: &str) -> bool {
        self.0.codec.borrow_mut().add_handshake_header(name, value)
    }

    /// Choose the subprotocol of this WebSocket upgrade (`Sec-WebSocket-Protocol`), one of
    /// those the client offered (`req.header("sec-websocket-protocol")`, comma-separated); a
    /// protocol the client did not offer is not sent. Only while `on_websocket_connect` runs.
    pub fn set_websocket_protocol(&self, protocol: &str) -> bool {
        self.add_websocket_header("Sec-WebSocket-Protocol", protocol)
    }

    fn dispatch(&self, d: Decoded) {
        match d {
            Decoded::Message(msg) => {
                let mut s = self.0.stats.get();
                s.messages_in += 1;
                self.0.stats.set(s);
                if let Some(o) = &self.0.owner {
                    o.message_in();
                }
                let cb = self.callbacks().borrow().on_message.clone();
                if let Some(cb) = cb {
                    guard("on_message", || cb(self, msg));
                }
            }
            Decoded::Reply(bytes) => {
                self.0.out.borrow_mut().push_back(bytes);
            }
            Decoded::Ping { payload, pong } => {
                self.0.out.borrow_mut().push_back(pong);
                let cb = self.callbacks().borrow().on_websocket_ping.clone();
                if let Some(cb) = cb {
                    guard("on_websocket_ping", || cb(self, &payload));
                }
            }
            Decoded::Pong(payload) => {
                let cb = self.callbacks().borrow().on_websocket_pong.clone();
                if let Some(cb) = cb {
                    guard("on_websocket_pong", || cb(self, &payload));
                }
            }
            Decoded::Handshake(req) => self.handshake(&req),
            Decoded::Opened(response) => {
                let cb = self.callbacks().borrow().on_websocket_response.clone();
                if let (Some(cb), Some(resp)) = (cb, response) {
                    guard("on_websocket_connect", || cb(self, &resp));
                }
                let cb = self.callbacks().borrow().on_connect.clone();
                if let Some(cb) = cb {
                    guard("on_connect", || cb(self));
                }
            }
            Decoded::Close { reply, reason } => {
                log::debug!("connection {}: closed by peer: {reason}", self.0.id);
                self.closed_because(Closed::Peer);
                if let Some(r) = reply {
                    self.0.out.borrow_mut().push_back(r);
                }
                self.set_closing();
                self.report_ws_close();
            }
        }
    }
}

/// Half-close, then read until the peer closes (or a short timeout), so that unread input does
/// not turn the close into a reset that destroys the last bytes sent.
async fn linger(stream: crate::transport::Socket) {
    if stream.shutdown_write().is_err() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut chunk = [0u8; 4096];
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read_now(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolKind;

    /// Outside a fan-out every send may write at once; inside, a connection's first send of
    /// the turn, not the ones after it; the fan-out ends also when what ran in it panicked.
    #[test]
    fn a_fan_out_writes_a_connections_first_send_at_once_and_queues_the_rest() {
        let codec = ProtocolKind::from_scheme("tcp")
            .expect("tcp")
            .server_codec(DEFAULT_MAX_PACKAGE);
        let callbacks = Rc::new(RefCell::new(Callbacks::default()));
        let conn = Connection::new(1, 0, codec, callbacks, None, 100, DEFAULT_MAX_PACKAGE);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            assert!(fan_out::write_now(&conn) && fan_out::write_now(&conn));
            fan_out::to_many(false, || assert!(fan_out::write_now(&conn), "to a few"));
            fan_out::to_many(true, || {
                assert!(fan_out::write_now(&conn), "the first of the turn");
                assert!(!fan_out::write_now(&conn), "then queued");
                assert!(fan_out::write_later(&conn));
                fan_out::to_many(true, || assert!(!fan_out::write_now(&conn)));
            });
            assert!(fan_out::write_now(&conn), "outside again");
            tokio::task::yield_now().await;
            fan_out::to_many(true, || assert!(fan_out::write_now(&conn), "a new turn"));
            let caught = std::panic::catch_unwind(|| fan_out::to_many(true, || panic!("a sink")));
            assert!(caught.is_err());
            assert!(!fan_out::write_later(&conn), "ended after a panic");
        });
    }

    /// The queue's verdicts reach the callbacks and counters, without a socket: a connection
    /// not yet attached queues everything.
    #[test]
    fn a_close_keeps_its_first_cause() {
        let tcp = || {
            ProtocolKind::from_scheme("tcp")
                .expect("tcp")
                .server_codec(DEFAULT_MAX_PACKAGE)
        };
        let with_full = |drop_it: bool| {
            let callbacks = Callbacks {
                on_buffer_full: Some(Rc::new(move |c: &Connection| {
                    if drop_it {
                        c.destroy();
                    }
                })),
                ..Callbacks::default()
            };
            Rc::new(RefCell::new(callbacks))
        };
        // Dropped by on_buffer_full: for not reading.
        let conn = Connection::new(1, 0, tcp(), with_full(true), None, 10, DEFAULT_MAX_PACKAGE);
        conn.send(vec![0u8; 20]);
        assert_eq!(conn.0.closed_why.get(), Some(Closed::Slow));
        // Kept by it: no cause yet; then the idle sweep's close wins over the app's.
        let conn = Connection::new(2, 0, tcp(), with_full(false), None, 10, DEFAULT_MAX_PACKAGE);
        conn.send(vec![0u8; 20]);
        assert_eq!(conn.0.closed_why.get(), None);
        conn.closed_because(Closed::Idle);
        conn.close();
        assert_eq!(conn.0.closed_why.get(), Some(Closed::Idle));
        // Closed by the app.
        let conn = Connection::new(3, 0, tcp(), with_full(false), None, 10, DEFAULT_MAX_PACKAGE);
        conn.destroy();
        assert_eq!(conn.0.closed_why.get(), Some(Closed::Server));
    }

    #[test]
    fn a_full_send_buffer_drops_reports_and_calls_on_buffer_full_once() {
        let full = Rc::new(Cell::new(0));
        let errors = Rc::new(RefCell::new(Vec::new()));
        let mut callbacks = Callbacks::default();
        let f = full.clone();
        callbacks.on_buffer_full = Some(Rc::new(move |_| f.set(f.get() + 1)));
        let e = errors.clone();
        callbacks.on_error = Some(Rc::new(move |_, err: &ConnectionError| {
            e.borrow_mut().push(err.to_string())
        }));
        let codec = ProtocolKind::from_scheme("tcp")
            .expect("tcp")
            .server_codec(DEFAULT_MAX_PACKAGE);
        let callbacks = Rc::new(RefCell::new(callbacks));
        let conn = Connection::new(1, 0, codec, callbacks, None, 100, DEFAULT_MAX_PACKAGE);

        assert_eq!(conn.send(vec![0u8; 60]), SendStatus::Queued);
        assert_eq!(conn.send(vec![0u8; 60]), SendStatus::Queued);
        assert_eq!(conn.send(vec![0u8; 1]), SendStatus::Failed);
        assert_eq!(
            conn.send_deferred(Bytes::from_static(b"x")),
            SendStatus::Failed
        );
        assert_eq!(full.get(), 1);
        assert_eq!(
            *errors.borrow(),
            ["send failed: send buffer full and drop package"; 2]
        );
        assert_eq!(conn.send_buffer_len(), 120);
        let stats = conn.stats();
        assert_eq!((stats.messages_out, stats.send_failures), (2, 2));

        conn.destroy();
        assert_eq!(conn.send("late"), SendStatus::Failed);
        assert_eq!(conn.send_buffer_len(), 0);
    }
}
