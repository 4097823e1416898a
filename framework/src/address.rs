//! Socket names: `scheme://host:port`, the TLS schemes (`wss`, `https`, `tls`), Unix sockets
//! (`text+unix:///path`, `text://unix:/path`, `unix:///path`) and UDP (`udp://`,
//! `text+udp://`), read into a protocol and an address (`host:port`, `unix:/path`,
//! `udp:host:port`) for workers and outgoing connections alike.

use crate::error::Error;
use crate::protocol::ProtocolKind;

/// `wss://…` and `https://…` are WebSocket and HTTP over TLS; `tls://…` is the channel's
/// frame protocol over TLS. Returns the plain socket name and whether TLS was asked for.
pub fn strip_tls_scheme(socket_name: &str) -> (String, bool) {
    let Some((scheme, rest)) = socket_name.split_once("://") else {
        return (socket_name.to_string(), false);
    };
    let lower = scheme.to_ascii_lowercase();
    let (base, unix) = match lower.strip_suffix("+unix") {
        Some(b) => (b, "+unix"),
        None => (lower.as_str(), ""),
    };
    let plain = match base {
        "wss" => "websocket",
        "https" => "http",
        "tls" => "frame",
        _ => return (socket_name.to_string(), false),
    };
    (format!("{plain}{unix}://{rest}"), true)
}

/// A Unix socket's scheme and path: `text+unix:///run/x.sock` and `text://unix:/run/x.sock`
/// are `text` on `/run/x.sock`, `unix:///run/x.sock` is raw `tcp` on it (Workerman's
/// `unix://`). `None` for a TCP name.
pub(crate) fn unix_socket_name<'a>(scheme: &'a str, rest: &'a str) -> Option<(&'a str, &'a str)> {
    if let Some(base) = scheme.strip_suffix("+unix") {
        return Some((base, rest));
    }
    if scheme.eq_ignore_ascii_case("unix") {
        return Some(("tcp", rest));
    }
    rest.strip_prefix(crate::listener::UNIX)
        .map(|path| (scheme, path))
}

/// Split `scheme://host:port` (or a Unix socket's name, see `unix_socket_name`) into its
/// protocol and address (`host:port`, or `unix:/path`).
pub fn parse_socket_name(socket_name: &str) -> Result<(ProtocolKind, String), Error> {
    let (scheme, addr) = socket_name.split_once("://").ok_or_else(|| {
        Error::BadSocketName(socket_name.to_string(), "expected scheme://host:port")
    })?;
    let udp = match scheme.to_ascii_lowercase().as_str() {
        "udp" => Some("tcp".to_string()),
        s => s.strip_suffix("+udp").map(str::to_string),
    };
    let protocol = |scheme: &str| {
        ProtocolKind::from_scheme(&scheme.to_ascii_lowercase())
            .ok_or_else(|| Error::UnknownProtocol(scheme.to_string()))
    };
    // `host:port`, with a port.
    let host_port = |addr: &str| -> Result<String, Error> {
        let addr = addr.trim_end_matches('/');
        match addr.rsplit_once(':').map(|(_, p)| p.parse::<u16>()) {
            Some(Ok(_)) => Ok(addr.to_string()),
            _ => Err(Error::BadSocketName(
                socket_name.to_string(),
                "expected a host and a port",
            )),
        }
    };
    if let Some(scheme) = udp {
        let proto = protocol(&scheme)?;
        check_datagram_protocol(&proto, socket_name)?;
        return Ok((
            proto,
            format!("{}{}", crate::listener::UDP, host_port(addr)?),
        ));
    }
    if let Some((scheme, path)) = unix_socket_name(scheme, addr) {
        if !path.starts_with('/') || path.len() < 2 {
            return Err(Error::BadSocketName(
                socket_name.to_string(),
                "expected an absolute path to a Unix socket",
            ));
        }
        return Ok((
            protocol(scheme)?,
            format!("{}{path}", crate::listener::UNIX),
        ));
    }
    Ok((protocol(scheme)?, host_port(addr)?))
}

/// A protocol that can frame datagrams (the stream-only ones cannot).
pub(crate) fn check_datagram_protocol(
    proto: &ProtocolKind,
    socket_name: &str,
) -> Result<(), Error> {
    match proto {
        ProtocolKind::WebSocket | ProtocolKind::Http => Err(Error::BadSocketName(
            socket_name.to_string(),
            "websocket and http need a stream socket, not udp",
        )),
        _ => Ok(()),
    }
}
