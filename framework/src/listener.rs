//! Listening sockets: TCP (`host:port`) or Unix (`unix:/path`, from `text+unix:///path` or
//! `text://unix:/path` socket names) — bound, or inherited from the process a reload started
//! from, accepted from without blocking, and a Unix socket's file removed when the process
//! that bound it stops for good.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::Error;

/// Where a reload passes the listening sockets to the binary it starts: `ADDR=FD,…`.
pub(crate) const INHERIT_ENV: &str = "WERKMANN_INHERIT_FDS";

/// The prefix of a Unix socket's address (`unix:/run/app.sock`).
pub(crate) const UNIX: &str = "unix:";
/// The prefix of a UDP socket's address (`udp:0.0.0.0:9292`).
pub(crate) const UDP: &str = "udp:";

/// A listening socket (for UDP, the socket datagrams arrive on).
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
    Udp(std::net::UdpSocket),
}

/// A connection taken from a listener, not yet registered with any reactor.
pub(crate) enum Accepted {
    Tcp(std::net::TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Accepted {
    /// The peer's address (none on a Unix socket).
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            Accepted::Tcp(_, p) => Some(*p),
            Accepted::Unix(_) => None,
        }
    }
}

/// The path of a Unix socket address, `None` for a TCP one.
pub(crate) fn unix_path(addr: &str) -> Option<&Path> {
    addr.strip_prefix(UNIX).map(Path::new)
}

/// The `host:port` of a UDP socket address, `None` for another.
pub(crate) fn udp_addr(addr: &str) -> Option<&str> {
    addr.strip_prefix(UDP)
}

impl Listener {
    /// Bind `addr` (`host:port`, or `unix:/path` with the file's permission bits `mode`).
    pub fn bind(addr: &str, mode: Option<u32>) -> Result<Listener, Error> {
        let listen_err = |source| Error::Listen {
            addr: addr.to_string(),
            source,
        };
        if let Some(path) = unix_path(addr) {
            remove_stale(path).map_err(listen_err)?;
            let l = UnixListener::bind(path).map_err(listen_err)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(listen_err)?;
            }
            l.set_nonblocking(true).map_err(listen_err)?;
            return Ok(Listener::Unix(l));
        }
        if let Some(host_port) = udp_addr(addr) {
            let s = std::net::UdpSocket::bind(host_port).map_err(listen_err)?;
            s.set_nonblocking(true).map_err(listen_err)?;
            return Ok(Listener::Udp(s));
        }
        let sa = addr
            .to_socket_addrs()
            .map_err(listen_err)?
            .next()
            .ok_or_else(|| Error::Cli(format!("{addr} resolves to no address")))?;
        let sock = Socket::new(Domain::for_address(sa), Type::STREAM, Some(Protocol::TCP))
            .map_err(listen_err)?;
        // SO_REUSEADDR, and SO_REUSEPORT off: a second process on the same port is refused.
        sock.set_reuse_address(true).map_err(listen_err)?;
        // Accepted sockets inherit it: no `setsockopt` per connection.
        sock.set_nodelay(true).map_err(listen_err)?;
        sock.bind(&sa.into()).map_err(listen_err)?;
        sock.listen(4096).map_err(listen_err)?;
        sock.set_nonblocking(true).map_err(listen_err)?;
        Ok(Listener::Tcp(sock.into()))
    }

    /// The listening socket `fd` of `addr`, handed over by the process that reloaded into
    /// this one.
    ///
    /// # Safety
    /// `fd` must be an open listening socket of `addr`'s kind that nothing else owns.
    pub unsafe fn inherit(addr: &str, fd: RawFd) -> Result<Listener, Error> {
        set_cloexec(fd, true);
        if unix_path(addr).is_some() {
            // SAFETY: the caller's promise.
            let l = unsafe { UnixListener::from_raw_fd(fd) };
            l.set_nonblocking(true)?;
            return Ok(Listener::Unix(l));
        }
        if udp_addr(addr).is_some() {
            // SAFETY: the caller's promise.
            let s = unsafe { std::net::UdpSocket::from_raw_fd(fd) };
            s.set_nonblocking(true)?;
            return Ok(Listener::Udp(s));
        }
        // SAFETY: the caller's promise.
        let l = unsafe { TcpListener::from_raw_fd(fd) };
        l.set_nonblocking(true)?;
        socket2::SockRef::from(&l).set_nodelay(true)?;
        Ok(Listener::Tcp(l))
    }

    /// Where it listens, for the logs.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Udp(s) => s
                .local_addr()
                .map(|a| format!("udp {a}"))
                .unwrap_or_default(),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_default(),
        }
    }

    /// Take one waiting connection, non-blocking and close-on-exec from the start
    /// (`accept4(2)`); `WouldBlock` when none waits.
    pub fn accept(&self) -> std::io::Result<Accepted> {
        // SAFETY: an all-zero sockaddr_storage is a valid value of that plain C struct.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: the listener's descriptor is open for the call; `storage` and `len` live
        // across it and `len` holds `storage`'s size, as accept4(2) requires.
        let fd = unsafe {
            libc::accept4(
                self.as_raw_fd(),
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Listener::Unix(_) = self {
            // SAFETY: accept4 returned a new descriptor of a connected Unix stream socket that
            // nothing else owns.
            return Ok(Accepted::Unix(unsafe { UnixStream::from_raw_fd(fd) }));
        }
        // SAFETY: accept4 returned a new descriptor of a connected TCP socket that nothing
        // else owns.
        let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        // SAFETY: accept4 wrote a socket address of `len` bytes into `storage`.
        let addr = unsafe { socket2::SockAddr::new(storage, len) };
        match addr.as_socket() {
            Some(peer) => Ok(Accepted::Tcp(stream, peer)),
            None => Err(std::io::Error::other("accepted a socket that is not IP")),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Udp(s) => s.as_raw_fd(),
        }
    }
}

/// A Unix socket's file left by a process that is gone (nothing accepts on it) is removed
/// before binding; one that something still serves is "address in use", and a path that is
/// not a socket is never touched.
fn remove_stale(path: &Path) -> std::io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(std::io::ErrorKind::AddrInUse.into()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            log::info!("removing the stale socket file {}", path.display());
            std::fs::remove_file(path)
        }
        Err(e) => Err(e),
    }
}

/// The socket files this process bound, removed when it stops for good (not when a reload
/// handed the sockets over: the new process serves them).
pub(crate) struct SocketFiles(Vec<(PathBuf, u64)>);

impl SocketFiles {
    /// The files of the Unix listeners among `listeners`, as they are now.
    pub fn of<'a>(listeners: impl Iterator<Item = &'a Listener>) -> SocketFiles {
        SocketFiles(
            listeners
                .filter_map(|l| match l {
                    Listener::Unix(u) => u.local_addr().ok()?.as_pathname().map(Path::to_owned),
                    Listener::Tcp(_) | Listener::Udp(_) => None,
                })
                .filter_map(|p| Some((p.clone(), std::fs::metadata(&p).ok()?.ino())))
                .collect(),
        )
    }

    /// Remove each file that is still the one bound (a new process may have bound its own
    /// at the same path since).
    pub fn remove(self) {
        for (path, ino) in self.0 {
            if std::fs::metadata(&path).is_ok_and(|m| m.ino() == ino) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Set or clear a descriptor's close-on-exec flag (cleared for the sockets a reload passes
/// on).
pub(crate) fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: fcntl(2) with F_GETFD/F_SETFD reads and sets flags of a descriptor number; an
    // invalid one fails with EBADF and nothing else.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            let flags = if on {
                flags | libc::FD_CLOEXEC
            } else {
                flags & !libc::FD_CLOEXEC
            };
            libc::fcntl(fd, libc::F_SETFD, flags);
        }
    }
}
