//! The directory's connection of its own to a single Redis server, read through a tap that
//! numbers what it reads: each reply, and each invalidation by the number of replies before
//! it. Redis writes an invalidation as the change runs, so its place among the replies tells
//! whether the change ran before or after a given command — which the `redis` crate's
//! connection, handing replies and pushes apart, does not keep (`uid_cache.rs`).
//!
//! The tap only scans frame boundaries (RESP3; an invalidation it reads whole); the crate's
//! connection reads the same bytes and does the rest. What it cannot read (a malformed frame,
//! the connection's end) turns the cache off until a new connection tracks again.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, Value as RValue};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::bus::open_client;
use super::frames::{Frame, Frames};
use super::uid_cache::UidCache;
use crate::tls::ClientTls;

/// A stream whose reads are numbered for `cache` as they pass.
struct Tap<S> {
    inner: S,
    scan: Scan,
}

/// What the tap has read of connection `conn` and written to it.
struct Scan {
    cache: UidCache,
    conn: u64,
    /// Where the frames read stand.
    input: Frames,
    /// Replies read so far (the connection's handshake included).
    replies: u64,
    /// Where the commands written stand.
    output: Frames,
    /// Commands written whole so far.
    commands: u64,
    /// The connection is no longer read (ended, or a frame the tap cannot read).
    done: bool,
}

impl Scan {
    /// Nothing read or written yet on connection `conn`.
    fn new(cache: UidCache, conn: u64) -> Scan {
        Scan {
            cache,
            conn,
            input: Frames::default(),
            replies: 0,
            output: Frames::default(),
            commands: 0,
            done: false,
        }
    }

    /// Read `bytes` (what came after the last call's).
    fn feed(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        // Pushes (invalidations) with the number of replies before each.
        let mut pushes: Vec<(u64, RValue)> = Vec::new();
        let mut unreadable = false;
        let replies = &mut self.replies;
        let whole = self.input.feed(bytes, |frame| match frame {
            Frame::Other => *replies += 1,
            Frame::Push(bytes) => match redis::parse_redis_value(&bytes) {
                Ok(v) => pushes.push((*replies, v)),
                Err(_) => unreadable = true,
            },
        });
        if whole.is_err() || unreadable {
            self.fail("read");
            return;
        }
        self.cache.read(self.conn, self.replies, pushes);
    }

    /// Count the commands in `bytes`, written after the last call's.
    fn wrote(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        let commands = &mut self.commands;
        if self.output.feed(bytes, |_| *commands += 1).is_err() {
            self.fail("wrote");
            return;
        }
        // One written in part counts: its reply is due.
        let written = self.commands + u64::from(!self.output.between());
        self.cache.wrote(self.conn, written);
    }

    fn fail(&mut self, what: &str) {
        log::warn!(
            "redis: the directory connection {what} a frame its tap cannot number: no uid \
             cache on it"
        );
        self.done = true;
        self.cache.lost(self.conn);
    }

    /// The connection ended (or failed).
    fn end(&mut self) {
        if !self.done {
            self.done = true;
            self.cache.lost(self.conn);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.scan.feed(&buf.filled()[before..]);
            }
            // The end of the stream, or its failure.
            Poll::Ready(_) if room => this.scan.end(),
            Poll::Ready(_) | Poll::Pending => {}
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.scan.wrote(&buf[..*n]);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            let mut left = *n;
            for b in bufs {
                let part = &b[..left.min(b.len())];
                this.scan.wrote(part);
                left -= part.len();
                if left == 0 {
                    break;
                }
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Drop for Tap<S> {
    fn drop(&mut self) {
        self.scan.end();
    }
}

/// How long making the connection may take, its handshake included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection of the directory's own to the single server at `url` (`redis://`, or
/// `rediss://` trusting `ca`, else the system's roots; RESP3), numbered for `cache` as
/// connection `conn` (`UidCache::begin`). What it cannot make (an insecure TLS URL, RESP2) is
/// a configuration error, not one to retry at once.
pub(super) async fn connect(
    url: &str,
    ca: Option<&Path>,
    response_timeout: Duration,
    cache: UidCache,
    conn: u64,
) -> redis::RedisResult<MultiplexedConnection> {
    let client = open_client(url, ca)?;
    let info = client.get_connection_info();
    let unsupported = |what: String| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "no connection of the directory's own",
            what,
        ))
    };
    if info.redis_settings().protocol() != redis::ProtocolVersion::RESP3 {
        // Over RESP2 the invalidations would not come on this connection.
        return Err(unsupported("RESP2".into()));
    }
    let setup = async {
        let stream: Pin<Box<dyn AsyncStream>> = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Box::pin(s)
            }
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                ..
            } => {
                let tls = match ca {
                    Some(ca) => ClientTls::with_ca_file(ca),
                    None => ClientTls::system(),
                }
                .map_err(|e| unsupported(e.to_string()))?;
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                )
                .map_err(|e| unsupported(e.to_string()))?;
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                let s = tokio_rustls::TlsConnector::from(tls.config())
                    .connect(name, s)
                    .await?;
                Box::pin(s)
            }
            other => return Err(unsupported(format!("{other} (insecure TLS?)"))),
        };
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(response_timeout));
        let tap = Tap {
            inner: stream,
            scan: Scan::new(cache, conn),
        };
        MultiplexedConnection::new_with_config(info.redis_settings(), tap, config).await
    };
    let (conn, driver) = tokio::time::timeout(CONNECT_TIMEOUT, setup)
        .await
        .map_err(|_| redis::RedisError::from(io::Error::from(io::ErrorKind::TimedOut)))??;
    tokio::task::spawn_local(driver);
    Ok(conn)
}

/// A byte stream the tap can wrap.
trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for S {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_server_silent_in_the_handshake_or_on_resp2_is_no_connection() {
        let cache = UidCache::new("p:");
        let conn = cache.begin();
        let resp2 = connect(
            "redis://127.0.0.1:1/",
            None,
            Duration::from_secs(1),
            cache.clone(),
            conn,
        );
        let e = resp2.await.expect_err("RESP2");
        assert_eq!(e.kind(), redis::ErrorKind::InvalidClientConfig, "{e}");
        // The kernel completes the connection; nobody ever answers `HELLO`.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}/?protocol=resp3", silent.local_addr().unwrap());
        let started = std::time::Instant::now();
        let r = connect(&url, None, Duration::from_secs(60), cache, conn).await;
        assert!(r.is_err());
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(2));
    }

    #[test]
    fn pushes_are_numbered_by_the_replies_before_them() {
        use super::super::uid_cache::Look;
        let cache = UidCache::new("p:");
        let conn = cache.begin();
        cache.start(conn);
        let mut scan = Scan::new(cache.clone(), conn);
        assert_eq!(cache.pipeline(), Some((conn, 0)));
        scan.wrote(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1");
        assert_eq!(scan.commands, 1);
        scan.feed(b"+PONG\r\n");
        assert_eq!(
            cache.pipeline(),
            None,
            "a command written in part is due an answer"
        );
        scan.wrote(b"\r\nk\r\n");
        assert_eq!(scan.commands, 2);
        scan.feed(b"_\r\n");
        assert_eq!(cache.pipeline(), Some((conn, 2)));
        let Look::Miss = cache.look("u") else {
            panic!()
        };
        let stream: &[u8] = b":1\r\n+OK\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\np:u\r\n:0\r\n";
        // Fed in pieces cut anywhere: the same numbering.
        for cut in [1, 5, 12, 20, 30, stream.len() - 1] {
            scan.feed(&stream[..cut]);
            scan.feed(&stream[cut..]);
        }
        assert!(!scan.done);
        assert_eq!(scan.replies, 2 + 6 * 3);
        // The last invalidation came after 2 + 5 * 3 + 2 replies: a read answered as reply 18
        // is stale, one answered as reply 19 (after it) stands.
        let holders: super::super::uid_cache::Holders = Arc::from([(1, 1)]);
        cache.fill("u", conn, 18, holders.clone());
        assert!(matches!(cache.look("u"), Look::Miss));
        cache.fill("u", conn, 19, holders);
        let Look::Hit(f) = cache.look("u") else {
            panic!("filled")
        };
        assert!(f.still(100));
        scan.feed(b">2\r\n$10\r\ninvalidate\r\n_\r\n");
        assert!(
            f.still(19) && !f.still(20),
            "a flush after 20 replies drops it there"
        );
        scan.feed(b"?bad\r\n");
        assert!(scan.done);
        assert!(
            matches!(cache.look("u"), Look::Off),
            "an unreadable frame ends the cache"
        );
    }
}
