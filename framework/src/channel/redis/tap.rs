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
use super::uid_cache::UidCache;
use crate::tls::ClientTls;

/// Deepest nesting of a frame the tap reads (Redis's replies nest a few levels).
const MAX_DEPTH: usize = 32;

/// A stream whose reads are numbered for `cache` as they pass.
struct Tap<S> {
    inner: S,
    scan: Scan,
}

/// What the tap has read of connection `conn` and written to it.
struct Scan {
    cache: UidCache,
    conn: u64,
    /// The start of a frame not read whole yet.
    rest: Vec<u8>,
    /// Replies read so far (the connection's handshake included).
    replies: u64,
    /// The start of a command not written whole yet.
    rest_out: Vec<u8>,
    /// Commands written so far.
    commands: u64,
    /// The connection is no longer read (ended, or a frame the tap cannot read).
    done: bool,
}

/// Count the whole frames of `data` (after `rest`, the incomplete one of the last call; it
/// keeps the new incomplete one), each given to `each` with its bytes; `Err` for what is not
/// RESP3.
fn frames(rest: &mut Vec<u8>, bytes: &[u8], mut each: impl FnMut(&[u8])) -> Result<(), ()> {
    let joined;
    let data: &[u8] = if rest.is_empty() {
        bytes
    } else {
        rest.extend_from_slice(bytes);
        joined = std::mem::take(rest);
        &joined
    };
    let mut at = 0;
    while let Some(end) = frame_end(data, at, 0)? {
        each(&data[at..end]);
        at = end;
    }
    *rest = data[at..].to_vec();
    Ok(())
}

/// Where the frame starting at `at` ends (attributes before it included); `Ok(None)` when
/// `b` ends first; `Err` for what is not RESP3.
fn frame_end(b: &[u8], at: usize, depth: usize) -> Result<Option<usize>, ()> {
    if depth > MAX_DEPTH {
        return Err(());
    }
    let Some(&kind) = b.get(at) else {
        return Ok(None);
    };
    // A line ends at its first `\n`, which a `\r` comes just before.
    let Some(nl) = memchr::memchr(b'\n', &b[at..]) else {
        return Ok(None);
    };
    if nl < 2 || b[at + nl - 1] != b'\r' {
        return Err(());
    }
    let line = &b[at + 1..at + nl - 1];
    let next = at + nl + 1;
    let count = || -> Result<i64, ()> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or(())
    };
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Some(next)),
        b'$' | b'!' | b'=' => {
            let n = count()?;
            if n < 0 {
                return Ok(Some(next)); // RESP2's null
            }
            let end = usize::try_from(n)
                .ok()
                .and_then(|n| next.checked_add(n)?.checked_add(2))
                .ok_or(())?;
            match b.get(end - 2..end) {
                None => Ok(None),
                Some(b"\r\n") => Ok(Some(end)),
                Some(_) => Err(()),
            }
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = count()?;
            if n < 0 {
                return Ok(Some(next));
            }
            let items = match kind {
                b'%' | b'|' => n.checked_mul(2).ok_or(())?,
                _ => n,
            };
            let mut p = next;
            for _ in 0..items {
                match frame_end(b, p, depth + 1)? {
                    Some(e) => p = e,
                    None => return Ok(None),
                }
            }
            if kind == b'|' {
                // An attribute: the frame it describes follows.
                return frame_end(b, p, depth);
            }
            Ok(Some(p))
        }
        _ => Err(()),
    }
}

/// The kind byte of the frame at `at`, past any attribute (the frame is whole).
fn kind_past_attributes(b: &[u8], mut at: usize) -> u8 {
    while b[at] == b'|' {
        let Some(nl) = memchr::memchr(b'\n', &b[at..]).filter(|&nl| nl >= 2) else {
            break;
        };
        let n: usize = std::str::from_utf8(&b[at + 1..at + nl - 1])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut p = at + nl + 1;
        for _ in 0..2 * n {
            match frame_end(b, p, 1) {
                Ok(Some(e)) => p = e,
                _ => return b'|',
            }
        }
        at = p;
    }
    b[at]
}

impl Scan {
    /// Nothing read or written yet on connection `conn`.
    fn new(cache: UidCache, conn: u64) -> Scan {
        Scan {
            cache,
            conn,
            rest: Vec::new(),
            replies: 0,
            rest_out: Vec::new(),
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
        let whole = frames(&mut self.rest, bytes, |frame| {
            if kind_past_attributes(frame, 0) != b'>' {
                *replies += 1;
                return;
            }
            match redis::parse_redis_value(frame) {
                Ok(v) => pushes.push((*replies, v)),
                Err(_) => unreadable = true,
            }
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
        if frames(&mut self.rest_out, bytes, |_| *commands += 1).is_err() {
            self.fail("wrote");
            return;
        }
        self.cache.wrote(self.conn, self.commands);
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

/// A connection of the directory's own to the single server at `url` (TCP, TLS — trusting
/// `ca`, else the system's roots — or a Unix socket), numbered for `cache` as connection
/// `conn` (`UidCache::begin`).
pub(super) async fn connect(
    url: &str,
    ca: Option<&Path>,
    response_timeout: Duration,
    cache: UidCache,
    conn: u64,
) -> redis::RedisResult<MultiplexedConnection> {
    let client = open_client(url, ca)?;
    let info = client.get_connection_info();
    let scan = Scan::new(cache, conn);
    let io_err = |e: io::Error| redis::RedisError::from(e);
    let stream = async {
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
                .map_err(|e| io::Error::other(e.to_string()))?;
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                )
                .map_err(io::Error::other)?;
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                let s = tokio_rustls::TlsConnector::from(tls.config())
                    .connect(name, s)
                    .await?;
                Box::pin(s)
            }
            ConnectionAddr::Unix(path) => Box::pin(tokio::net::UnixStream::connect(path).await?),
            other => {
                return Err(io::Error::other(format!(
                    "no connection of the directory's own to {other}"
                )))
            }
        };
        Ok::<_, io::Error>(stream)
    };
    let stream = tokio::time::timeout(Duration::from_secs(5), stream)
        .await
        .map_err(|_| io_err(io::ErrorKind::TimedOut.into()))?
        .map_err(io_err)?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(response_timeout));
    let (conn, driver) = MultiplexedConnection::new_with_config(
        info.redis_settings(),
        Tap {
            inner: stream,
            scan,
        },
        config,
    )
    .await?;
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

    #[test]
    fn frames_end_where_resp3_says() {
        let one = |b: &[u8]| frame_end(b, 0, 0);
        assert_eq!(one(b":12\r\n"), Ok(Some(5)));
        assert_eq!(one(b"$5\r\nhel\r\n\r\n"), Ok(Some(11)), "a bulk holds CRLF");
        assert_eq!(one(b"$-1\r\n"), Ok(Some(5)));
        assert_eq!(one(b"*2\r\n:1\r\n$1\r\nx\r\n"), Ok(Some(15)));
        assert_eq!(one(b"%1\r\n+a\r\n:1\r\n"), Ok(Some(12)));
        assert_eq!(one(b"|1\r\n+k\r\n+v\r\n:1\r\n"), Ok(Some(16)));
        assert_eq!(one(b"*2\r\n:1\r\n"), Ok(None), "incomplete");
        assert_eq!(one(b"$5\r\nhel"), Ok(None));
        assert_eq!(one(b":1"), Ok(None));
        assert_eq!(one(b"$2\r\nabcd"), Err(()), "a bulk without its CRLF");
        assert_eq!(one(b"?x\r\n"), Err(()));
        assert_eq!(one(b":1\n"), Err(()), "a line ends with CRLF");
        assert_eq!(one(b"\n"), Err(()));
        assert_eq!(one(b"*x\r\n"), Err(()));
        assert_eq!(one(b"$9223372036854775807\r\n"), Ok(None), "no overflow");
        assert_eq!(one(b"%9223372036854775807\r\n"), Err(()));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert_eq!(one(deep.as_bytes()), Err(()));
        assert_eq!(
            kind_past_attributes(b"|1\r\n+k\r\n+v\r\n>1\r\n:1\r\n", 0),
            b'>'
        );
    }

    #[test]
    fn pushes_are_numbered_by_the_replies_before_them() {
        use super::super::uid_cache::Look;
        let cache = UidCache::new("p:");
        let conn = cache.begin();
        cache.start(conn);
        let mut scan = Scan::new(cache.clone(), conn);
        scan.wrote(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1");
        assert_eq!(
            scan.commands, 1,
            "a command written in part is not counted yet"
        );
        scan.wrote(b"\r\nk\r\n");
        assert_eq!(scan.commands, 2);
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
        assert_eq!(scan.replies, 6 * 3);
        // The last invalidation came after 5 * 3 + 2 replies: a read answered as reply 16 is
        // stale, one answered as reply 17 (after it) stands.
        let holders: super::super::uid_cache::Holders = Arc::from([(1, 1)]);
        cache.fill("u", conn, 16, holders.clone());
        assert!(matches!(cache.look("u"), Look::Miss));
        cache.fill("u", conn, 17, holders);
        let Look::Hit(f) = cache.look("u") else {
            panic!("filled")
        };
        assert!(f.still(100));
        scan.feed(b">2\r\n$10\r\ninvalidate\r\n_\r\n");
        assert!(
            f.still(17) && !f.still(18),
            "a flush after reply 18 drops it there"
        );
        scan.feed(b"?bad\r\n");
        assert!(scan.done);
        assert!(
            matches!(cache.look("u"), Look::Off),
            "an unreadable frame ends the cache"
        );
    }
}
