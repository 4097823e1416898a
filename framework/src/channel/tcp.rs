//! [`TcpBroker`]: a client's connection to a channel server — werkmann's or Workerman's PHP
//! one — over the Channel wire protocol (`frame://`, or `tls://` for the frame protocol over
//! TLS), with werkmann's extensions when the server speaks them: authentication with a secret,
//! publishes confirmed with the number of subscribers reached, and the directory (`dir`
//! commands, answered by id like confirmations). The client says `hello`; a werkmann server
//! answers it (saying whether it keeps a directory), a PHP server stays silent: publishes go
//! unconfirmed, directory requests are answered `NoDirectory` and directory commands are
//! dropped with one warning (a PHP server would close the connection on one). What is made
//! before the hello is settled waits for it, in order.
//!
//! It reconnects with a back-off (100 ms doubling to 5 s) and pings every 55 s, as
//! Workerman's client does.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;

use super::broker::{Broker, BrokerEvents, Confirm, Options, Reply};
use super::php_serde::{self, Key};
use super::wire::{Command, Delivery, DeliveryKind, HELLO_DIRECTORY, HELLO_HISTORY, HELLO_PARKING};
use super::ChannelError;
use crate::callbacks::guard;
use crate::client::AsyncTcpConnection;
use crate::message::Message;
use crate::timer::{Timer, TimerId};
use crate::tls::ClientTls;

/// Interval of the keep-alive ping (Workerman's 55 s).
pub const PING_INTERVAL: Duration = Duration::from_secs(55);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Send buffer towards the server (what a burst of publishes may queue).
const SEND_BUFFER: usize = 16 * 1024 * 1024;

/// Who waits for a held command: nobody, a confirmed publish, a directory request.
enum Waiter {
    Nobody,
    Confirm(Confirm),
    Reply(Reply),
}

/// A client's connection to a channel server.
pub(crate) struct TcpBroker {
    shown: String,
    conn: AsyncTcpConnection,
    events: Weak<dyn BrokerEvents>,
    me: Weak<TcpBroker>,
    secret: Option<String>,
    up: Cell<bool>,
    closed: Cell<bool>,
    backoff: Cell<Duration>,
    ping: Cell<Option<TimerId>>,
    /// The server confirms publishes that carry an id (it answered our hello).
    acks: Cell<bool>,
    /// The server keeps a directory (its hello said [`HELLO_DIRECTORY`]).
    directory: Cell<bool>,
    /// The server keeps history (its hello said [`HELLO_HISTORY`]).
    history: Cell<bool>,
    /// The server parks subscriptions (its hello said [`HELLO_PARKING`]).
    parking: Cell<bool>,
    /// Directory commands were dropped for a server without a directory (warned once).
    warned_no_directory: Cell<bool>,
    /// This server answered a hello before: after a reconnect, wait for it again.
    acks_known: Cell<bool>,
    /// Waiting for the answer to this connection's hello (a PHP server never answers).
    hello_pending: Cell<bool>,
    next_ack: Cell<i64>,
    confirms: RefCell<BTreeMap<i64, Confirm>>,
    /// Directory requests waiting for their answer, by the same ids as confirmations.
    replies: RefCell<BTreeMap<i64, Reply>>,
    /// Commands held, in order, from a confirmed publish, a directory request or a directory
    /// command made before the hello was answered until it is (or until a server that stays
    /// silent is taken not to confirm, nor to keep a directory).
    held: RefCell<Vec<(Command, Waiter)>>,
}

impl TcpBroker {
    /// Connect to `addr` (`HOST:PORT`), over TLS when `tls`; reconnects until closed.
    pub(crate) fn start(
        addr: &str,
        tls: bool,
        options: &Options,
        events: Weak<dyn BrokerEvents>,
    ) -> Result<Rc<dyn Broker>, ChannelError> {
        let bad = |e: crate::Error| ChannelError::BadAddress(e.to_string());
        let url = format!("{}://{addr}", if tls { "tls" } else { "frame" });
        let conn = AsyncTcpConnection::new(&url).map_err(bad)?;
        if let (true, Some(ca)) = (tls, &options.tls_ca) {
            conn.set_tls(ClientTls::system_and_ca_file(ca).map_err(bad)?);
        }
        conn.set_max_send_buffer_size(SEND_BUFFER);
        let broker = Rc::new_cyclic(|me| TcpBroker {
            me: me.clone(),
            shown: if tls { url } else { addr.to_string() },
            conn: conn.clone(),
            events,
            secret: options.secret.clone(),
            up: Cell::new(false),
            closed: Cell::new(false),
            backoff: Cell::new(FIRST_BACKOFF),
            ping: Cell::new(None),
            acks: Cell::new(false),
            directory: Cell::new(false),
            history: Cell::new(false),
            parking: Cell::new(false),
            warned_no_directory: Cell::new(false),
            acks_known: Cell::new(false),
            hello_pending: Cell::new(false),
            next_ack: Cell::new(1),
            confirms: RefCell::new(BTreeMap::new()),
            replies: RefCell::new(BTreeMap::new()),
            held: RefCell::new(Vec::new()),
        });
        let weak = Rc::downgrade(&broker);
        conn.on_connect(move |_| {
            if let Some(b) = weak.upgrade() {
                b.connected();
            }
        });
        let weak = Rc::downgrade(&broker);
        conn.on_message(move |c, msg| {
            let Some(b) = weak.upgrade() else { return };
            let payload = match msg {
                Message::Binary(b) => b,
                other => Bytes::copy_from_slice(other.as_bytes()),
            };
            match Delivery::decode(&payload) {
                Ok(d) => b.delivered(d),
                Err(e) => {
                    log::warn!("channel server {}: bad message: {e}; reconnecting", b.shown);
                    c.close();
                }
            }
        });
        let weak = Rc::downgrade(&broker);
        conn.on_error(move |_, e| {
            if let Some(b) = weak.upgrade() {
                log::debug!("channel {}: {e}", b.shown);
            }
        });
        let weak = Rc::downgrade(&broker);
        conn.on_close(move |_| {
            if let Some(b) = weak.upgrade() {
                b.lost();
            }
        });
        conn.connect();
        let weak = Rc::downgrade(&broker);
        let ping = Timer::add_internal(
            PING_INTERVAL,
            move || {
                if let Some(b) = weak.upgrade() {
                    if b.up.get() {
                        let _ = b.write(&Command::Ping);
                    }
                }
            },
            true,
        );
        broker.ping.set(Some(ping));
        Ok(broker)
    }

    fn write(&self, cmd: &Command) -> Result<(), ChannelError> {
        self.write_frame(cmd.encode_frame())
    }

    /// Queue a command for the connection's task rather than writing it at once: every
    /// command of this thread's turn (a publisher's pushes for the requests it read
    /// together, a node's registrations for the connections it accepted) then leaves in one
    /// write — one syscall, one wake-up of the server — instead of one each. It still leaves
    /// within the turn (the task is woken now and runs after the tasks already due), and
    /// in order: the queue is the connection's only way out.
    /// `frame` is a whole frame, header included (encoded once, in one buffer).
    fn write_frame(&self, frame: Bytes) -> Result<(), ChannelError> {
        match self.conn.connection() {
            Some(c) if c.send_deferred(frame).is_ok() => Ok(()),
            _ => Err(ChannelError::BufferFull { limit: SEND_BUFFER }),
        }
    }

    /// Connected: authenticate, say hello, then let the client re-subscribe.
    fn connected(&self) {
        self.up.set(true);
        self.backoff.set(FIRST_BACKOFF);
        if let Some(secret) = &self.secret {
            let _ = self.write(&auth_command(secret));
        }
        self.hello_pending.set(true);
        let _ = self.write(&Command::Hello);
        if !self.acks_known.get() {
            // A server that has not answered within a second does not acknowledge.
            let weak = self.me.clone();
            Timer::once_internal(Duration::from_secs(1), move || {
                if let Some(b) = weak.upgrade() {
                    if !b.acks_known.get() && b.hello_pending.replace(false) {
                        b.release_held();
                    }
                }
            });
        }
        if let Some(events) = self.events.upgrade() {
            events.up();
        }
    }

    /// The hello is settled: send what was held, in order.
    fn release_held(&self) {
        let held = std::mem::take(&mut *self.held.borrow_mut());
        for (cmd, waiter) in held {
            match waiter {
                Waiter::Confirm(done) => self.publish_confirmed(cmd, done),
                Waiter::Reply(done) => self.request(cmd, done),
                Waiter::Nobody => {
                    let _ = self.write_settled(&cmd);
                }
            }
        }
    }

    /// Write a command once the hello is settled: a directory command only to a server that
    /// keeps a directory (a PHP server would close the connection on one), else dropped,
    /// with one warning.
    fn write_settled(&self, cmd: &Command) -> Result<(), ChannelError> {
        if matches!(cmd, Command::Dir(_)) && !self.directory.get() {
            if !self.warned_no_directory.replace(true) {
                log::warn!(
                    "channel server {} keeps no directory: directory operations (gateway \
                     registrations, uids, groups) are dropped",
                    self.shown
                );
            }
            return Err(ChannelError::NoDirectory);
        }
        self.write(cmd)
    }

    fn lost(&self) {
        let was = self.up.replace(false);
        self.acks.set(false);
        self.directory.set(false);
        self.history.set(false);
        self.parking.set(false);
        self.hello_pending.set(false);
        let held = std::mem::take(&mut *self.held.borrow_mut());
        let confirms = std::mem::take(&mut *self.confirms.borrow_mut());
        let replies = std::mem::take(&mut *self.replies.borrow_mut());
        let mut waiters: Vec<Waiter> = confirms.into_values().map(Waiter::Confirm).collect();
        waiters.extend(replies.into_values().map(Waiter::Reply));
        waiters.extend(held.into_iter().map(|(_, w)| w));
        for w in waiters {
            match w {
                Waiter::Confirm(cb) => guard("channel publish confirmation", || {
                    cb(Err(ChannelError::Unconfirmed))
                }),
                Waiter::Reply(cb) => guard("channel directory answer", || {
                    cb(Err(ChannelError::Unconfirmed))
                }),
                Waiter::Nobody => {}
            }
        }
        if self.closed.get() {
            return;
        }
        if was {
            if let Some(events) = self.events.upgrade() {
                events.down();
            }
        }
        let after = self.backoff.get();
        self.backoff.set((after * 2).min(MAX_BACKOFF));
        self.conn.reconnect(after);
    }

    fn delivered(&self, d: Delivery) {
        match d.kind {
            DeliveryKind::Hello => {
                let level = php_serde::from_slice(&d.data)
                    .ok()
                    .and_then(|v| v.as_i64())
                    .unwrap_or(0);
                self.directory.set(level >= HELLO_DIRECTORY);
                self.history.set(level >= HELLO_HISTORY);
                self.parking.set(level >= HELLO_PARKING);
                self.acks.set(true);
                self.acks_known.set(true);
                self.hello_pending.set(false);
                self.release_held();
            }
            DeliveryKind::Ack => {
                if let Key::Int(id) = d.channel {
                    let reply = self.replies.borrow_mut().remove(&id);
                    if let Some(reply) = reply {
                        let answer = Command::dir_json(&d.data).map_err(|e| {
                            ChannelError::Refused(format!("bad directory answer: {e}"))
                        });
                        guard("channel directory answer", || reply(answer));
                        return;
                    }
                    let cb = self.confirms.borrow_mut().remove(&id);
                    let reached = php_serde::from_slice(&d.data)
                        .ok()
                        .and_then(|v| v.as_u64())
                        .map(|n| n as usize);
                    if let Some(cb) = cb {
                        guard("channel publish confirmation", || cb(Ok(reached)));
                    }
                }
            }
            DeliveryKind::Event | DeliveryKind::Queue => {
                if let Some(events) = self.events.upgrade() {
                    events.delivery(d);
                }
            }
        }
    }
}

impl Broker for TcpBroker {
    fn parks(&self) -> bool {
        // A werkmann server whose hello said it parks, on the link up now.
        self.parking.get() && !self.hello_pending.get()
    }

    fn send(&self, cmd: Command) -> Result<(), ChannelError> {
        let mut held = self.held.borrow_mut();
        if held.is_empty() && !(self.hello_pending.get() && matches!(cmd, Command::Dir(_))) {
            drop(held);
            if self.hello_pending.get() {
                self.write(&cmd)
            } else {
                self.write_settled(&cmd)
            }
        } else {
            // Behind what is held; a directory command waits to know whether the server
            // keeps a directory.
            held.push((cmd, Waiter::Nobody));
            Ok(())
        }
    }

    fn publish_confirmed(&self, cmd: Command, done: Confirm) {
        if !self.up.get() {
            return done(Err(ChannelError::Disconnected));
        }
        if self.hello_pending.get() || !self.held.borrow().is_empty() {
            // Whether this server confirms is not known yet: wait for its hello.
            self.held.borrow_mut().push((cmd, Waiter::Confirm(done)));
            return;
        }
        if !self.acks.get() {
            // A server without confirmations (Workerman's): handed over is all we can know.
            return done(self.write(&cmd).map(|()| None));
        }
        let id = self.next_ack.get();
        self.next_ack.set(id + 1);
        match self.write_frame(cmd.encode_frame_with_id(Some(id))) {
            Ok(()) => {
                self.confirms.borrow_mut().insert(id, done);
            }
            Err(e) => done(Err(e)),
        }
    }

    fn request(&self, cmd: Command, done: Reply) {
        if !self.up.get() {
            return done(Err(ChannelError::Disconnected));
        }
        if self.hello_pending.get() || !self.held.borrow().is_empty() {
            // Whether this server keeps a directory is not known yet: wait for its hello.
            self.held.borrow_mut().push((cmd, Waiter::Reply(done)));
            return;
        }
        if matches!(cmd, Command::History(..)) && !self.history.get() {
            // Workerman's PHP server (no hello), or a werkmann server from before history.
            return done(Err(ChannelError::NoHistory));
        }
        if !self.directory.get() {
            // Workerman's PHP server (no hello), or a werkmann server from before the directory.
            return done(Err(ChannelError::NoDirectory));
        }
        let id = self.next_ack.get();
        self.next_ack.set(id + 1);
        match self.write_frame(cmd.encode_frame_with_id(Some(id))) {
            Ok(()) => {
                self.replies.borrow_mut().insert(id, done);
            }
            Err(e) => done(Err(e)),
        }
    }

    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        self.up.set(false);
        if let Some(t) = self.ping.take() {
            Timer::del(t);
        }
        self.conn.close();
    }
}

/// The first command to a server that requires a secret.
pub(crate) fn auth_command(secret: &str) -> Command {
    let mut data = Vec::new();
    php_serde::write_str(&mut data, super::auth::token(secret).as_bytes());
    Command::Auth(Bytes::from(data))
}
