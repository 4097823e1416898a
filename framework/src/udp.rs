//! UDP, Workerman's `udp://` transport: a worker's instances answer datagrams
//! ([`Worker::on_datagram`](crate::Worker::on_datagram) with a [`UdpConnection`] to the
//! sender), and [`AsyncUdpConnection`] sends to a peer and hears its answers.
//!
//! A datagram is complete by itself: it is decoded with the worker's protocol (`udp://` is raw,
//! one message per datagram; `text+udp://` one per line; `frame+udp://` one per frame; a
//! registered protocol as it says) and what is left over is dropped. Stream-only protocols
//! (`websocket`, `http`) are refused when the worker is made. Nothing is queued: a send the
//! socket does not take at once is dropped and reported (`false`), as UDP loses datagrams.

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;

use bytes::BytesMut;
use tokio::net::UdpSocket;

use crate::callbacks::guard;
use crate::error::Error;
use crate::message::Message;
use crate::protocol::{Codec, Decoded, ProtocolKind};

/// The largest datagram read (the most UDP carries over IPv4).
pub(crate) const MAX_DATAGRAM: usize = 65_507;

/// The sender of a datagram, to answer it (Workerman's `UdpConnection`).
#[derive(Clone)]
pub struct UdpConnection {
    socket: Rc<UdpSocket>,
    codec: Rc<RefCell<Box<dyn Codec>>>,
    peer: SocketAddr,
}

impl std::fmt::Debug for UdpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpConnection")
            .field("peer", &self.peer)
            .finish()
    }
}

impl UdpConnection {
    /// The sender `peer` of a datagram on `socket`, answered with `codec`.
    pub(crate) fn new(
        socket: Rc<UdpSocket>,
        codec: Rc<RefCell<Box<dyn Codec>>>,
        peer: SocketAddr,
    ) -> UdpConnection {
        UdpConnection {
            socket,
            codec,
            peer,
        }
    }

    /// Send `msg` to the peer, encoded with the worker's protocol, as one datagram: `false`
    /// when it was not sent (it cannot be encoded, or the socket did not take it at once).
    pub fn send(&self, msg: impl Into<Message>) -> bool {
        send_to(&self.socket, &self.codec, msg.into(), Some(self.peer))
    }

    /// The sender's address (`getRemoteAddress`).
    pub fn remote_addr(&self) -> SocketAddr {
        self.peer
    }

    /// This side's address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Workerman's `close($data)`: send `msg` if given; there is no connection to close.
    pub fn close(&self, msg: Option<Message>) {
        if let Some(m) = msg {
            self.send(m);
        }
    }
}

/// Encode and send one datagram (to `peer`, or to the connected peer).
fn send_to(
    socket: &UdpSocket,
    codec: &RefCell<Box<dyn Codec>>,
    msg: Message,
    peer: Option<SocketAddr>,
) -> bool {
    let bytes = match codec.borrow_mut().encode(msg) {
        Ok(b) => b,
        Err(e) => {
            log::warn!("udp: cannot encode: {e}");
            return false;
        }
    };
    // The call itself, not tokio's `try_send`: that one waits for the reactor to have seen the
    // socket writable, which a socket just made has not.
    let sock = socket2::SockRef::from(socket);
    let sent = match peer {
        Some(p) => sock.send_to(&bytes, &p.into()),
        None => sock.send(&bytes),
    };
    match sent {
        Ok(n) => n == bytes.len(),
        Err(e) => {
            log::debug!("udp: send to {peer:?}: {e}");
            false
        }
    }
}

/// Decode one datagram into its messages (what is left over is dropped, and logged).
pub(crate) fn decode(
    codec: &RefCell<Box<dyn Codec>>,
    datagram: &[u8],
    from: SocketAddr,
) -> Vec<Message> {
    let mut buf = BytesMut::from(datagram);
    let mut out = Vec::new();
    let mut codec = codec.borrow_mut();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(Decoded::Message(m))) => out.push(m),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                log::info!("udp: datagram from {from} dropped: {e}");
                return out;
            }
        }
    }
    if !buf.is_empty() {
        log::info!(
            "udp: {} bytes of an incomplete message from {from} dropped",
            buf.len()
        );
    }
    out
}

type UdpMessageFn = Rc<dyn Fn(&AsyncUdpConnection, Message)>;
type UdpFn = Rc<dyn Fn(&AsyncUdpConnection)>;

#[derive(Default)]
struct UdpCallbacks {
    on_connect: Option<UdpFn>,
    on_message: Option<UdpMessageFn>,
    on_close: Option<UdpFn>,
}

struct AsyncUdpInner {
    url: String,
    proto: ProtocolKind,
    address: String,
    callbacks: RefCell<UdpCallbacks>,
    socket: RefCell<Option<Rc<UdpSocket>>>,
    codec: RefCell<Box<dyn Codec>>,
    task: RefCell<Option<tokio::task::JoinHandle<()>>>,
}

/// An outgoing UDP "connection" (Workerman's `AsyncUdpConnection`): a socket of its own,
/// connected to one peer, whose datagrams it hears. Create it on a worker instance's thread.
#[derive(Clone)]
pub struct AsyncUdpConnection(Rc<AsyncUdpInner>);

impl std::fmt::Debug for AsyncUdpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncUdpConnection")
            .field("url", &self.0.url)
            .finish()
    }
}

impl AsyncUdpConnection {
    /// A connection to `url`: `udp://host:port` (raw), or `text+udp://…`, `frame+udp://…`,
    /// or a registered protocol's `name+udp://…`. Nothing happens until
    /// [`AsyncUdpConnection::connect`].
    pub fn new(url: &str) -> Result<AsyncUdpConnection, Error> {
        let (proto, address) = crate::address::parse_socket_name(url)?;
        let Some(address) = crate::listener::udp_addr(&address) else {
            return Err(Error::BadSocketName(
                url.to_string(),
                "expected udp://host:port or name+udp://host:port",
            ));
        };
        crate::address::check_datagram_protocol(&proto, url)?;
        let codec = proto.server_codec(crate::connection::DEFAULT_MAX_PACKAGE);
        Ok(AsyncUdpConnection(Rc::new(AsyncUdpInner {
            url: url.to_string(),
            proto,
            address: address.to_string(),
            callbacks: RefCell::default(),
            socket: RefCell::new(None),
            codec: RefCell::new(codec),
            task: RefCell::new(None),
        })))
    }

    /// Called once the socket is ready to send.
    pub fn on_connect(&self, f: impl Fn(&AsyncUdpConnection) + 'static) {
        self.0.callbacks.borrow_mut().on_connect = Some(Rc::new(f));
    }

    /// Called for each message the peer sends.
    pub fn on_message(&self, f: impl Fn(&AsyncUdpConnection, Message) + 'static) {
        self.0.callbacks.borrow_mut().on_message = Some(Rc::new(f));
    }

    /// Called when [`AsyncUdpConnection::close`] ends it.
    pub fn on_close(&self, f: impl Fn(&AsyncUdpConnection) + 'static) {
        self.0.callbacks.borrow_mut().on_close = Some(Rc::new(f));
    }

    /// Open the socket (a host name is resolved here, blocking, as PHP's
    /// `stream_socket_client` does) and start hearing the peer; `on_connect` follows.
    pub fn connect(&self) -> Result<(), Error> {
        let peer = self
            .0
            .address
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| Error::Cli(format!("{} resolves to no address", self.0.address)))?;
        let local: SocketAddr = match peer {
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let std_sock = std::net::UdpSocket::bind(local)?;
        std_sock.connect(peer)?;
        std_sock.set_nonblocking(true)?;
        let socket = Rc::new(UdpSocket::from_std(std_sock)?);
        *self.0.socket.borrow_mut() = Some(socket.clone());
        let me = Rc::downgrade(&self.0);
        let task = actix_rt::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let n = match socket.recv(&mut buf).await {
                    Ok(n) => n,
                    // The peer's port is closed (ICMP): nothing to hear yet.
                    Err(_) => continue,
                };
                let Some(inner) = me.upgrade() else { return };
                let conn = AsyncUdpConnection(inner);
                let cb = conn.0.callbacks.borrow().on_message.clone();
                for msg in decode(&conn.0.codec, &buf[..n], peer) {
                    if let Some(cb) = &cb {
                        guard("on_message", || cb(&conn, msg));
                    }
                }
            }
        });
        if let Some(old) = self.0.task.replace(Some(task)) {
            old.abort();
        }
        let cb = self.0.callbacks.borrow().on_connect.clone();
        if let Some(cb) = cb {
            guard("on_connect", || cb(self));
        }
        Ok(())
    }

    /// Send `msg` as one datagram: `false` when not connected, not encodable, or not taken
    /// by the socket at once.
    pub fn send(&self, msg: impl Into<Message>) -> bool {
        let Some(socket) = self.0.socket.borrow().clone() else {
            return false;
        };
        send_to(&socket, &self.0.codec, msg.into(), None)
    }

    /// Stop hearing the peer and close the socket; `on_close` follows.
    pub fn close(&self) {
        if let Some(t) = self.0.task.take() {
            t.abort();
        }
        if self.0.socket.take().is_some() {
            let cb = self.0.callbacks.borrow().on_close.clone();
            if let Some(cb) = cb {
                guard("on_close", || cb(self));
            }
        }
    }

    /// The protocol it speaks.
    pub fn protocol(&self) -> &'static str {
        self.0.proto.name()
    }
}

#[cfg(test)]
mod tests {
    use crate::Worker;

    #[test]
    fn stream_protocols_and_missing_callbacks_are_refused() {
        for name in ["websocket+udp://127.0.0.1:1", "http+udp://127.0.0.1:1"] {
            let err = Worker::new(name).unwrap_err().to_string();
            assert!(err.contains("need a stream socket"), "{name}: {err}");
        }
        assert!(Worker::new("udp://127.0.0.1").is_err(), "a port is needed");
        assert!(super::AsyncUdpConnection::new("text://127.0.0.1:1").is_err());
        // A udp worker needs on_datagram; on_datagram needs a udp worker.
        let udp = Worker::new("udp://127.0.0.1:1").unwrap();
        assert!(udp.check().unwrap_err().to_string().contains("on_datagram"));
        let mut tcp = Worker::new("text://127.0.0.1:1").unwrap();
        tcp.on_datagram(|_, _| {});
        assert!(tcp.check().unwrap_err().to_string().contains("udp workers"));
        let mut ok = Worker::new("text+udp://127.0.0.1:1").unwrap();
        ok.on_datagram(|c, m| {
            c.send(m);
        });
        assert!(ok.check().is_ok());
    }
}
