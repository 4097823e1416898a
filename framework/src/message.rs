//! [`Message`]: what `on_message` receives and what `send` takes, and the HTTP values it
//! carries ([`http`], and the pieces of a streamed response: [`stream`]).

mod file;
pub mod http;
pub(crate) mod params;
pub(crate) mod session;
pub mod stream;
pub(crate) mod upload;

use std::borrow::Cow;

use bytes::Bytes;

pub(crate) use self::file::FileBody;
pub use self::http::{Request, Response};
pub use self::params::Param;
pub use self::session::{
    new_session_id, valid_session_id, Session, SessionFuture, SessionHandler, Sessions,
};
pub use self::stream::{Chunk, ServerSentEvent};
pub use self::upload::{UploadedFile, Uploads};

/// A message on a connection, in either direction.
///
/// Text-oriented protocols (`text`, WebSocket text frames) carry [`Message::Text`], byte-oriented
/// ones [`Message::Binary`]; HTTP workers receive [`Message::Request`] and answer with a
/// [`Message::Response`] (or any text, which becomes a `200` response).
#[derive(Debug, Clone)]
pub enum Message {
    /// UTF-8 text.
    Text(String),
    /// Arbitrary bytes.
    Binary(Bytes),
    /// An HTTP request (HTTP workers).
    Request(Box<Request>),
    /// An HTTP response (sent by HTTP workers).
    Response(Box<Response>),
    /// A piece of a streaming HTTP response, sent after its head (an empty one ends it).
    Chunk(Chunk),
}

impl Message {
    /// The payload bytes: the text, the binary data, or an HTTP body.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
            Message::Request(r) => r.body(),
            Message::Response(r) => r.body_bytes(),
            Message::Chunk(c) => c.data(),
        }
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The payload as text, replacing invalid UTF-8.
    pub fn to_text_lossy(&self) -> Cow<'_, str> {
        match self {
            Message::Text(s) => Cow::Borrowed(s),
            other => String::from_utf8_lossy(other.as_bytes()),
        }
    }

    /// The HTTP request, if this is one.
    pub fn request(&self) -> Option<&Request> {
        match self {
            Message::Request(r) => Some(r),
            _ => None,
        }
    }

    /// The payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s)
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(s.to_owned())
    }
}

impl From<&String> for Message {
    fn from(s: &String) -> Self {
        Message::Text(s.clone())
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(Bytes::from(b))
    }
}

impl From<&[u8]> for Message {
    fn from(b: &[u8]) -> Self {
        Message::Binary(Bytes::copy_from_slice(b))
    }
}

impl From<Response> for Message {
    fn from(r: Response) -> Self {
        Message::Response(Box::new(r))
    }
}

impl From<Chunk> for Message {
    fn from(c: Chunk) -> Self {
        Message::Chunk(c)
    }
}

impl From<ServerSentEvent> for Message {
    fn from(e: ServerSentEvent) -> Self {
        Message::Chunk(e.into())
    }
}

impl From<Request> for Message {
    fn from(r: Request) -> Self {
        Message::Request(Box::new(r))
    }
}
