//! Wire protocols: how bytes on a connection become [`Message`]s and back.
//!
//! Each connection owns one [`Codec`], made by its worker's [`ProtocolKind`]. The built-in
//! protocols are `tcp`, `text`, `frame`, `websocket` (`ws` for clients) and `http`; users add
//! their own with [`Protocol`] and [`register_protocol`].

mod custom;
mod deflate;
pub mod frame;
pub mod http;
mod http_framing;
mod multipart;
mod tcp;
mod text;
pub mod websocket;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

pub use custom::{register_protocol, Protocol};

use crate::message::Message;
use http::{Request, Response};

/// Append `n` in decimal without `core::fmt` (HTTP heads, PHP-serialize lengths: per message).
pub(crate) fn put_decimal(out: &mut impl bytes::BufMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

/// Errors a codec reports; the connection is then closed (after [`Codec::error_reply`]).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A package is larger than the worker's `max_package_size`.
    #[error("package of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced or buffered size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A request head (or a trailer section) larger than the limit (HTTP answers 431).
    #[error("request head of {size} bytes exceeds the limit of {limit} bytes")]
    HeadTooLarge {
        /// Bytes buffered.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The peer broke the protocol; the text says how.
    #[error("protocol violation: {0}")]
    Invalid(String),
    /// A request head (HTTP, a WebSocket upgrade) begun and not finished in time (HTTP
    /// answers 408).
    #[error("request head not complete within {secs} s")]
    HeadTimeout {
        /// The limit in force.
        secs: u32,
    },
    /// Well-formed, but asks for what this server does not do (HTTP answers 501).
    #[error("not implemented: {0}")]
    Unsupported(String),
    /// Text data that is not valid UTF-8.
    #[error("invalid UTF-8 in text data")]
    InvalidUtf8,
    /// The message cannot be encoded by this protocol.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// This side failed while reading the input (an upload's temporary file could not be
    /// written; HTTP answers 500).
    #[error("server error: {0}")]
    Server(String),
}

impl ProtocolError {
    /// Shorthand for [`ProtocolError::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        ProtocolError::Invalid(msg.into())
    }
}

/// What a codec made of the input.
#[derive(Debug)]
pub enum Decoded {
    /// A complete message for `on_message`.
    Message(Message),
    /// Bytes to write to the peer ahead of anything queued (`100 Continue`).
    Reply(Bytes),
    /// A WebSocket ping arrived: `pong` answers it.
    Ping {
        /// The ping's application data.
        payload: Bytes,
        /// The pong frame to write.
        pong: Bytes,
    },
    /// A WebSocket pong arrived, with its application data.
    Pong(Bytes),
    /// A WebSocket upgrade request waiting for the worker's answer ([`Codec::accept`]).
    Handshake(Box<Request>),
    /// A client-side handshake finished (with the server's answer, for a WebSocket); sends
    /// may flow now.
    Opened(Option<Box<Response>>),
    /// The peer closed the session (WebSocket close frame): write `reply`, then close.
    Close {
        /// What to write before closing (the answering close frame).
        reply: Option<Bytes>,
        /// Why, for the log.
        reason: String,
    },
}

/// Which side of a connection a codec serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepted by a listening worker.
    Server,
    /// Opened by this process (an `AsyncTcpConnection`).
    Client,
}

/// The per-connection protocol state machine.
///
/// Built-in protocols implement this directly; Workerman-style protocols implement the simpler
/// [`Protocol`] and are adapted.
pub trait Codec {
    /// Decode the next item, consuming its bytes from `buf`; `Ok(None)` asks for more input.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError>;
    /// Encode one message for the wire.
    fn encode(&mut self, msg: Message) -> Result<Bytes, ProtocolError>;
    /// What to write before closing because of `err` (an HTTP 400, a WebSocket close frame).
    fn error_reply(&mut self, _err: &ProtocolError) -> Option<Bytes> {
        None
    }
    /// What to write when this side closes a healthy connection (a WebSocket close frame).
    fn close_frame(&mut self) -> Option<Bytes> {
        None
    }
    /// [`Codec::close_frame`] with a status code and reason (a WebSocket's; other protocols
    /// have none and write what `close_frame` writes).
    fn close_frame_with(&mut self, _code: u16, _reason: &str) -> Option<Bytes> {
        self.close_frame()
    }
    /// Answer a [`Decoded::Handshake`]: `Ok` with the bytes that open the session, or `Err` with
    /// the refusal to write before closing.
    fn accept(&mut self, _req: &Request, refusal: Option<Message>) -> Result<Bytes, Bytes> {
        match refusal {
            None => Ok(Bytes::new()),
            Some(_) => Err(Bytes::new()),
        }
    }
    /// A keep-alive probe the peer must answer (a WebSocket ping), if the protocol has one.
    fn ping_frame(&mut self) -> Option<Bytes> {
        None
    }
    /// Bytes to write as soon as an outgoing connection is established (a client handshake).
    fn on_open(&mut self) -> Option<Bytes> {
        None
    }
    /// Whether queued sends may be written yet (false while a handshake is pending).
    fn is_open(&self) -> bool {
        true
    }
    /// Whether the codec is reading a request head (HTTP, a WebSocket upgrade): bytes of one
    /// waiting in the buffer are held to `Worker::head_timeout`.
    fn awaits_head(&self) -> bool {
        false
    }
    /// The code and reason of a WebSocket closing handshake once it began: the peer's close
    /// frame, or the one this side sent first (reported once).
    fn take_close_status(&mut self) -> Option<(u16, String)> {
        None
    }
    /// Add a header to the answer of a pending upgrade (WebSocket, while
    /// `on_websocket_connect` runs); `false` when there is no such answer or it is invalid.
    fn add_handshake_header(&mut self, _name: &str, _value: &str) -> bool {
        false
    }
    /// Whether the connection must close once its output is flushed (HTTP `Connection: close`).
    fn wants_close(&self) -> bool {
        false
    }
    /// Whether a response is owed or being streamed (HTTP): the connection is not idle then,
    /// however long the worker takes or the stream runs.
    fn responding(&self) -> bool {
        false
    }
    /// Whether a body the codec reads from a source of its own (a file response) is still
    /// to be sent: the connection then pulls it with [`Codec::next_body_piece`] as its send
    /// buffer drains.
    fn body_pending(&self) -> bool {
        false
    }
    /// The next piece (at most `max` bytes) of that body; `None` when there is none, an error
    /// when the source failed (the connection closes: the response cannot be completed).
    fn next_body_piece(&mut self, _max: usize) -> Option<Result<Bytes, ProtocolError>> {
        None
    }
}

/// A protocol a worker or client speaks; makes one [`Codec`] per connection.
#[derive(Clone)]
pub enum ProtocolKind {
    /// Raw bytes, each read is one message.
    Tcp,
    /// Newline-delimited text.
    Text,
    /// 4-byte big-endian total length (header included), then the payload.
    Frame,
    /// RFC 6455 WebSocket.
    WebSocket,
    /// HTTP/1.1.
    Http,
    /// A user protocol registered with [`register_protocol`].
    Custom(Arc<dyn Protocol>),
}

impl std::fmt::Debug for ProtocolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ProtocolKind {
    /// Look up a scheme (`tcp`, `text`, `frame`, `websocket`/`ws`, `http`, or a registered one).
    pub fn from_scheme(scheme: &str) -> Option<Self> {
        Some(match scheme {
            "tcp" => ProtocolKind::Tcp,
            "text" => ProtocolKind::Text,
            "frame" => ProtocolKind::Frame,
            "websocket" | "ws" => ProtocolKind::WebSocket,
            "http" => ProtocolKind::Http,
            other => ProtocolKind::Custom(custom::lookup(other)?),
        })
    }

    /// Whether this is the WebSocket protocol.
    pub(crate) fn is_websocket(&self) -> bool {
        matches!(self, ProtocolKind::WebSocket)
    }

    /// The protocol's name.
    pub fn name(&self) -> &'static str {
        match self {
            ProtocolKind::Tcp => "tcp",
            ProtocolKind::Text => "text",
            ProtocolKind::Frame => "frame",
            ProtocolKind::WebSocket => "websocket",
            ProtocolKind::Http => "http",
            ProtocolKind::Custom(_) => "custom",
        }
    }

    /// A fresh codec for one accepted connection.
    pub fn server_codec(&self, max_package: usize) -> Box<dyn Codec> {
        self.codec(Role::Server, "", "/", max_package)
    }

    /// A fresh codec for one accepted connection; a WebSocket one negotiates
    /// permessage-deflate if `websocket_compression` is `Some(context_takeover)`.
    pub fn server_codec_with(
        &self,
        max_package: usize,
        websocket_compression: Option<bool>,
    ) -> Box<dyn Codec> {
        match self {
            ProtocolKind::WebSocket => Box::new(
                websocket::WsCodec::new_server(max_package).with_compression(
                    websocket_compression.is_some(),
                    websocket_compression.unwrap_or(false),
                ),
            ),
            _ => self.server_codec(max_package),
        }
    }

    /// A fresh codec for one connection; `host` and `path` serve client handshakes.
    pub fn codec(&self, role: Role, host: &str, path: &str, max_package: usize) -> Box<dyn Codec> {
        match self {
            ProtocolKind::Tcp => Box::new(tcp::TcpCodec::new(max_package)),
            ProtocolKind::Text => Box::new(text::TextCodec::new(max_package)),
            ProtocolKind::Frame => Box::new(frame::FrameCodec::new(max_package)),
            ProtocolKind::WebSocket => match role {
                Role::Server => Box::new(websocket::WsCodec::new_server(max_package)),
                Role::Client => Box::new(websocket::WsCodec::new_client(host, path, max_package)),
            },
            ProtocolKind::Http => Box::new(http::HttpCodec::new(max_package)),
            ProtocolKind::Custom(p) => Box::new(custom::CustomCodec::new(p.clone(), max_package)),
        }
    }

    /// Encode a message once for many connections (a broadcast), where the encoding does not
    /// depend on the connection. `None` means each connection encodes for itself.
    pub fn encode_shared(&self, msg: &Message) -> Option<Result<Bytes, ProtocolError>> {
        match self {
            ProtocolKind::Tcp => Some(tcp::encode(msg)),
            ProtocolKind::Text => Some(text::encode(msg)),
            ProtocolKind::Frame => Some(frame::encode(msg)),
            ProtocolKind::WebSocket => Some(websocket::encode_server(msg)),
            ProtocolKind::Http => None,
            ProtocolKind::Custom(p) => Some(p.encode(msg)),
        }
    }
}
