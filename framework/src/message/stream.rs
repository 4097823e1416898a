//! Streamed HTTP responses: the pieces sent after a streaming [`Response`](super::Response)'s
//! head — [`Chunk`]s (Workerman's `Chunk`) and [`ServerSentEvent`]s (Workerman's
//! `ServerSentEvents`). How they go on the wire (chunked transfer coding, or the bytes as they
//! are until the connection closes for an HTTP/1.0 client) is `protocol::http`'s.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

/// A piece of a streaming response's body; an empty one ends the response (as Workerman's
/// `new Chunk('')`). Send with `conn.send(Chunk::new(…))` after a response built with
/// [`Response::streaming`](super::Response::streaming) or
/// [`Response::event_stream`](super::Response::event_stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    data: Bytes,
    /// The piece in chunked transfer coding, made once ([`Chunk::shared`]).
    framed: Option<Bytes>,
}

impl Chunk {
    /// A piece of the body (an empty one ends the response: prefer [`Chunk::end`]).
    pub fn new(data: impl Into<Bytes>) -> Chunk {
        Chunk {
            data: data.into(),
            framed: None,
        }
    }

    /// The end of the response: the connection then reads the next request (keep-alive), or
    /// closes.
    pub fn end() -> Chunk {
        Chunk::new(Bytes::new())
    }

    /// The same piece framed for the wire once, for sending to many connections: each send of
    /// a clone then shares those bytes (an event fanned out to every open event stream costs
    /// one encoding, not one per connection).
    pub fn shared(mut self) -> Chunk {
        if self.framed.is_none() && !self.data.is_empty() {
            self.framed = Some(frame(&self.data));
        }
        self
    }

    /// Whether this ends the response.
    pub fn is_end(&self) -> bool {
        self.data.is_empty()
    }

    /// The bytes of the piece.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The piece in chunked transfer coding (shared when [`Chunk::shared`] made it).
    pub(crate) fn framed(&self) -> Bytes {
        match &self.framed {
            Some(f) => f.clone(),
            None => frame(&self.data),
        }
    }

    /// The bytes of the piece, as they are.
    pub(crate) fn into_data(self) -> Bytes {
        self.data
    }
}

/// One chunk of chunked transfer coding: size in hex, CRLF, data, CRLF (nothing for no data:
/// the last chunk is written apart).
fn frame(data: &[u8]) -> Bytes {
    if data.is_empty() {
        return Bytes::new();
    }
    let hex = format!("{:x}\r\n", data.len());
    let mut out = BytesMut::with_capacity(hex.len() + data.len() + 2);
    out.extend_from_slice(hex.as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// One Server-Sent Event (`text/event-stream`, WHATWG HTML §9.2): `id:`, `event:`, `retry:`
/// and `data:` fields, or a comment (a keep-alive the browser ignores). Data of several lines
/// becomes one `data:` field per line, which the browser joins with `\n` again. A line break
/// in an id or event name would end the field early, so it becomes a space there (and a NUL in
/// an id, which makes browsers ignore the id, is left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerSentEvent {
    id: Option<String>,
    event: Option<String>,
    retry: Option<Duration>,
    data: Option<String>,
    comment: Option<String>,
}

impl ServerSentEvent {
    /// An event carrying `data` (the browser's `MessageEvent.data`).
    pub fn data(data: impl Into<String>) -> ServerSentEvent {
        ServerSentEvent {
            data: Some(data.into()),
            ..ServerSentEvent::default()
        }
    }

    /// A comment line (`: text`): nothing for the browser, but it keeps the stream and any
    /// proxy in between from timing out.
    pub fn comment(text: impl Into<String>) -> ServerSentEvent {
        ServerSentEvent {
            comment: Some(text.into()),
            ..ServerSentEvent::default()
        }
    }

    /// The event's id: the browser sends the last one it saw back as `Last-Event-ID` when it
    /// reconnects ([`Request::last_event_id`](super::Request::last_event_id)).
    pub fn id(mut self, id: impl Into<String>) -> ServerSentEvent {
        self.id = Some(id.into());
        self
    }

    /// The event's type (`addEventListener(type, …)` in the browser; `message` without one).
    pub fn event(mut self, name: impl Into<String>) -> ServerSentEvent {
        self.event = Some(name.into());
        self
    }

    /// How long the browser waits before reconnecting after the stream ends.
    pub fn retry(mut self, after: Duration) -> ServerSentEvent {
        self.retry = Some(after);
        self
    }

    /// The event in its wire form (one event, ended by a blank line).
    pub fn encode(&self) -> Bytes {
        let mut out = String::with_capacity(16 + self.data.as_ref().map_or(0, String::len));
        if let Some(c) = &self.comment {
            for line in lines(c) {
                out.push_str(": ");
                out.push_str(line);
                out.push('\n');
            }
        }
        if let Some(id) = &self.id {
            out.push_str("id: ");
            out.extend(id.chars().filter(|&c| c != '\0').map(one_line));
            out.push('\n');
        }
        if let Some(e) = &self.event {
            out.push_str("event: ");
            out.extend(e.chars().map(one_line));
            out.push('\n');
        }
        if let Some(r) = self.retry {
            let _ = writeln!(out, "retry: {}", r.as_millis());
        }
        if let Some(d) = &self.data {
            for line in lines(d) {
                out.push_str("data: ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push('\n');
        Bytes::from(out)
    }
}

/// A line break becomes a space (inside a field that must stay one line).
fn one_line(c: char) -> char {
    if c == '\r' || c == '\n' {
        ' '
    } else {
        c
    }
}

/// The lines of `s` as the event-stream format reads them (split at CRLF, CR or LF); an
/// empty text is one empty line.
fn lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

impl From<ServerSentEvent> for Chunk {
    fn from(e: ServerSentEvent) -> Chunk {
        Chunk::new(e.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(e: ServerSentEvent) -> String {
        String::from_utf8(e.encode().to_vec()).unwrap()
    }

    #[test]
    fn fields_in_order_and_data_per_line() {
        let e = ServerSentEvent::data("a\nb\r\nc\rd")
            .id("7")
            .event("tick")
            .retry(Duration::from_secs(3));
        assert_eq!(
            wire(e),
            "id: 7\nevent: tick\nretry: 3000\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(wire(ServerSentEvent::data("")), "data: \n\n");
        assert_eq!(wire(ServerSentEvent::comment("ka")), ": ka\n\n");
    }

    #[test]
    fn ids_and_event_names_stay_one_field() {
        let e = ServerSentEvent::data("x")
            .id("1\ndata: evil\0")
            .event("a\r\nb");
        assert_eq!(wire(e), "id: 1 data: evil\nevent: a  b\ndata: x\n\n");
    }

    #[test]
    fn a_shared_chunk_is_framed_once() {
        let c = Chunk::new("hello").shared();
        let (a, b) = (c.clone().framed(), c.framed());
        assert_eq!(&a[..], b"5\r\nhello\r\n");
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(&Chunk::new(vec![b'x'; 300]).framed()[..5], b"12c\r\n");
    }

    #[test]
    fn an_empty_chunk_ends() {
        assert!(Chunk::end().is_end());
        assert!(!Chunk::new("x").is_end());
        assert!(!Chunk::from(ServerSentEvent::data("")).is_end());
    }
}
