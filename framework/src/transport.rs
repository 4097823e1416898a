//! The byte stream under a [`Connection`](crate::Connection): a TCP or Unix socket, plain or
//! with TLS over it (Workerman's `ssl` transport: `wss://`, `https://`, a TLS channel).
//!
//! Both are driven by readiness from the connection's own task: TLS records are read and
//! decrypted in place by rustls, and what rustls has to send (handshake messages, encrypted
//! data, alerts) is written out before anything else. Neither adds a task or an unbounded
//! buffer: rustls holds at most [`TLS_BUFFER`] bytes of plaintext and records per connection.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::send_queue::SendQueue;

/// Bytes one read asks the kernel (or rustls) for.
const READ_CHUNK: usize = 32 * 1024;
/// Plaintext or records rustls may hold for one connection before writes push back.
pub(crate) const TLS_BUFFER: usize = 64 * 1024;

thread_local! {
    /// Where this thread's connections read before appending to their own buffers: no
    /// per-read memset, and no read buffer held by an idle connection.
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(READ_CHUNK));
}

/// A connected stream socket: TCP, or Unix (`unix://`, `…+unix://`).
pub(crate) enum Socket {
    /// TCP.
    Tcp(TcpStream),
    /// A Unix domain stream socket.
    Unix(UnixStream),
}

/// The same call on either kind of socket.
macro_rules! either {
    ($s:expr, $x:ident => $e:expr) => {
        match $s {
            Socket::Tcp($x) => $e,
            Socket::Unix($x) => $e,
        }
    };
}

impl Socket {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        either!(self, s => s.try_read(buf))
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        either!(self, s => s.try_write(buf))
    }
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        either!(self, s => s.try_write_vectored(bufs))
    }
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_read_ready(cx))
    }
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_write_ready(cx))
    }
    /// Wait until the socket is readable.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        either!(self, s => s.readable().await)
    }
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_read(cx, buf))
    }
    /// Shut down the writing side (the peer reads the end of the stream).
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        either!(self, s => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write))
    }
    /// Read what arrived without waiting (`WouldBlock` when nothing did).
    pub(crate) fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.try_read(buf)
    }
}

/// A connection's socket, with or without TLS.
pub(crate) enum Stream {
    /// Plain TCP or Unix.
    Plain(Socket),
    /// TLS over a socket; boxed, since rustls' state is large and most connections are plain.
    Tls(Box<TlsStream>),
}

/// A socket with a rustls session (server or client side).
pub(crate) struct TlsStream {
    tcp: Socket,
    tls: rustls::Connection,
    /// The peer closed its side of the stream.
    eof: bool,
}

/// `std::io` over a tokio socket's non-blocking calls, for rustls' `read_tls`/`write_tls`.
struct TryIo<'a>(&'a Socket);

impl Read for TryIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for TryIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream {
    /// This side's address of the socket (none for a Unix socket).
    pub(crate) fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self.socket() {
            Socket::Tcp(t) => t.local_addr().ok(),
            Socket::Unix(_) => None,
        }
    }

    /// A TLS session over `tcp`, bounded to [`TLS_BUFFER`].
    pub(crate) fn tls(tcp: Socket, mut tls: rustls::Connection) -> Stream {
        tls.set_buffer_limit(Some(TLS_BUFFER));
        Stream::Tls(Box::new(TlsStream {
            tcp,
            tls,
            eof: false,
        }))
    }

    /// The socket underneath.
    pub(crate) fn socket(&self) -> &Socket {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.tcp,
        }
    }

    /// Whether this is TLS and its handshake has not finished yet.
    pub(crate) fn is_handshaking(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.tls.is_handshaking(),
        }
    }

    /// Read once and append what arrived (plaintext) to `dst`. `Ok(0)` is the end of the
    /// stream; a TLS error (bad record, failed handshake) is `InvalidData`.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            // Through `AsyncRead`: a read that does not fill the buffer ends the readiness, so
            // no second `recv` just to learn the socket is empty.
            Stream::Plain(sock) => SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                scratch.clear();
                scratch.reserve(READ_CHUNK);
                let mut buf = ReadBuf::uninit(&mut scratch.spare_capacity_mut()[..READ_CHUNK]);
                ready!(sock.poll_read_into(cx, &mut buf))?;
                dst.extend_from_slice(buf.filled());
                Poll::Ready(Ok(buf.filled().len()))
            }),
            Stream::Tls(t) => t.poll_read(cx, dst),
        }
    }

    /// Write the first `limit` bytes of `queue` (or fewer) in one vectored write; returns how
    /// many of them were taken. Under TLS they are taken by rustls, which writes what it can.
    pub(crate) fn poll_write_queue(
        &mut self,
        cx: &mut Context<'_>,
        queue: &SendQueue,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(tcp) => loop {
                ready!(tcp.poll_write_ready(cx))?;
                match queue.write_front(limit, |s| tcp.try_write_vectored(s)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    res => return Poll::Ready(res),
                }
            },
            Stream::Tls(t) => t.poll_write_queue(cx, queue, limit),
        }
    }

    /// Write out what the transport itself still holds (TLS records); `Ready(Ok)` once none.
    pub(crate) fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(t) => t.poll_write_pending(cx),
        }
    }

    /// Write `bytes` at once if the socket takes them (plain sockets only: TLS goes through
    /// the connection's queue); `WouldBlock` otherwise.
    pub(crate) fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.try_write(bytes),
            Stream::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// End the session: a TLS `close_notify` is written if the socket takes it; then the
    /// socket for the caller to shut down.
    pub(crate) fn finish(self) -> Socket {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(mut t) => {
                // A handshake that failed has its alert queued already; one never begun
                // gets nothing.
                if !t.tls.is_handshaking() {
                    t.tls.send_close_notify();
                }
                while t.tls.wants_write() {
                    if t.tls.write_tls(&mut TryIo(&t.tcp)).is_err() {
                        break;
                    }
                }
                t.tcp
            }
        }
    }
}

impl TlsStream {
    fn poll_read(&mut self, cx: &mut Context<'_>, dst: &mut BytesMut) -> Poll<io::Result<usize>> {
        loop {
            // Plaintext already decrypted comes first.
            let tls = &mut self.tls;
            match read_via_scratch(dst, |buf| read_plaintext(tls, buf)) {
                Ok(0) => return Poll::Ready(Ok(0)), // close_notify
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.eof {
                        return Poll::Ready(Ok(0));
                    }
                }
                // Closed without close_notify: as final as a TCP close.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) => return Poll::Ready(Err(e)),
            }
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tls.read_tls(&mut TryIo(&self.tcp)) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // rustls queued an alert telling the peer why; send it if the socket takes it.
                let _ = self.tls.write_tls(&mut TryIo(&self.tcp));
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            // Handshake answers, key updates: out before the peer waits for them.
            if let Poll::Ready(Err(e)) = self.poll_write_pending(cx) {
                return Poll::Ready(Err(e));
            }
        }
    }

    fn poll_write_queue(
        &mut self,
        cx: &mut Context<'_>,
        queue: &SendQueue,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_write_pending(cx))?;
        let n = queue.write_front(limit, |s| self.tls.writer().write_vectored(s))?;
        if n == 0 {
            // rustls is full of plaintext held back by an unfinished handshake: the reader
            // side, woken by the peer's handshake messages, makes room.
            return Poll::Pending;
        }
        if let Poll::Ready(Err(e)) = self.poll_write_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tls.write_tls(&mut TryIo(&self.tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// rustls' plaintext reader into the (cleared) scratch buffer, "nothing yet" as `WouldBlock`.
fn read_plaintext(tls: &mut rustls::Connection, buf: &mut BytesMut) -> io::Result<usize> {
    // rustls wants an initialised slice: one memset per TLS read, small beside decryption.
    buf.resize(READ_CHUNK, 0);
    let res = tls.reader().read(&mut buf[..]);
    buf.truncate(*res.as_ref().unwrap_or(&0));
    res
}

/// Read through the thread's scratch buffer and append what came to `dst`.
fn read_via_scratch(
    dst: &mut BytesMut,
    read: impl FnOnce(&mut BytesMut) -> io::Result<usize>,
) -> io::Result<usize> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.clear();
        scratch.reserve(READ_CHUNK);
        let n = read(&mut scratch)?;
        dst.extend_from_slice(&scratch[..n]);
        Ok(n)
    })
}
