//! HTTP/1.1 server protocol: request heads off the wire, [`Response`]s onto it, and the
//! keep-alive codec. The values themselves ([`Request`], [`Response`]) are `message::http`'s;
//! they are re-exported here.
//!
//! Requests are parsed with `httparse`; bodies may be sized by `Content-Length` or sent
//! chunked. One request is handed to the worker at a time: the next is decoded only once the
//! previous one has been answered, so responses keep the order of requests.

use std::sync::{Arc, OnceLock};

use bytes::{Buf, Bytes, BytesMut};

use super::http_framing::{body_length, check_head_bytes, BodyLength, ChunkedDecoder};
use super::multipart::{self, Multipart};
use super::{put_decimal, Codec, Decoded, ProtocolError};
pub use crate::message::http::{
    parse_urlencoded, percent_decode, reason_phrase, Request, Response,
};
use crate::message::session::CookieSlot;
pub use crate::message::upload::{UploadedFile, Uploads};
use crate::message::{Chunk, FileBody, Message};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// Parse a request head from the start of `buf`: `Ok(None)` when it is incomplete, otherwise
/// the request (without body) and the head's length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => Err(ProtocolError::HeadTooLarge {
            size: len,
            limit: MAX_HEAD,
        }),
        Ok(httparse::Status::Complete(len)) => {
            check_head_bytes(&buf[..len])?;
            let headers = req
                .headers
                .iter()
                .map(|h| {
                    let v = std::str::from_utf8(h.value)
                        .map_err(|_| ProtocolError::invalid("header value is not UTF-8"))?;
                    Ok((h.name.to_ascii_lowercase(), v.trim().to_string()))
                })
                .collect::<Result<Vec<_>, ProtocolError>>()?;
            Ok(Some((
                Request {
                    method: req.method.unwrap_or("GET").to_string(),
                    uri: req.path.unwrap_or("/").to_string(),
                    version_minor: req.version.unwrap_or(1),
                    headers,
                    ..Request::default()
                },
                len,
            )))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(ProtocolError::HeadTooLarge {
            size: buf.len(),
            limit: MAX_HEAD,
        }),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(ProtocolError::HeadTooLarge {
            size: buf.len(),
            limit: MAX_HEAD,
        }),
        Err(e) => Err(ProtocolError::invalid(format!("bad HTTP request: {e}"))),
    }
}

/// How a response's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Content-Length`: the whole body is in the response.
    Length,
    /// `Transfer-Encoding: chunked`: chunks follow the head (a streaming response, HTTP/1.1).
    Chunked,
    /// The body runs until the connection closes (a streaming response to HTTP/1.0).
    UntilClose,
}

impl Response {
    /// Serialize for the wire. `head_only` leaves out the body (a `HEAD` request);
    /// `keep_alive` chooses the `Connection` header.
    pub fn encode(&self, head_only: bool, keep_alive: bool) -> Bytes {
        self.encode_framed(head_only, keep_alive, Framing::Length)
            .freeze()
    }

    /// The head, then the body: whole after `Content-Length`, or as the first chunk.
    fn encode_framed(&self, head_only: bool, keep_alive: bool, framing: Framing) -> BytesMut {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum();
        let body = if head_only { 0 } else { self.body.len() };
        let length = self
            .file
            .as_ref()
            .map_or(self.body.len() as u64, FileBody::len);
        let mut out = BytesMut::with_capacity(128 + headers + body);
        out.extend_from_slice(b"HTTP/1.1 ");
        put_decimal(&mut out, u64::from(self.status));
        out.extend_from_slice(b" ");
        out.extend_from_slice(self.reason().as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut has_ctype = false;
        for (k, v) in &self.headers {
            if k.eq_ignore_ascii_case("content-length")
                || k.eq_ignore_ascii_case("connection")
                || k.eq_ignore_ascii_case("transfer-encoding")
            {
                continue;
            }
            has_ctype |= k.eq_ignore_ascii_case("content-type");
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            if v.contains(['\r', '\n']) {
                out.extend_from_slice(v.replace(['\r', '\n'], " ").as_bytes());
            } else {
                out.extend_from_slice(v.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        if !has_ctype && (!self.body.is_empty() || framing != Framing::Length) {
            out.extend_from_slice(b"Content-Type: text/html; charset=utf-8\r\n");
        }
        match framing {
            Framing::Length if self.status >= 200 && self.status != 204 && self.status != 304 => {
                out.extend_from_slice(b"Content-Length: ");
                put_decimal(&mut out, length);
                out.extend_from_slice(b"\r\n");
            }
            Framing::Length | Framing::UntilClose => {}
            Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        }
        if self.status != 101 {
            out.extend_from_slice(if keep_alive {
                b"Connection: keep-alive\r\n"
            } else {
                b"Connection: close\r\n"
            });
        }
        out.extend_from_slice(b"Server: werkmann\r\n\r\n");
        if !head_only {
            match framing {
                Framing::Chunked => out.extend_from_slice(&Chunk::new(self.body.clone()).framed()),
                Framing::Length | Framing::UntilClose => out.extend_from_slice(&self.body),
            }
        }
        out
    }
}

/// A `200` `text/html` response, byte for byte as [`Response::html`] encodes.
fn encode_html(body: &[u8], head_only: bool, keep_alive: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n");
    out.extend_from_slice(b"Content-Length: ");
    put_decimal(&mut out, body.len() as u64);
    out.extend_from_slice(if keep_alive {
        b"\r\nConnection: keep-alive\r\nServer: werkmann\r\n\r\n"
    } else {
        b"\r\nConnection: close\r\nServer: werkmann\r\n\r\n"
    });
    if !head_only {
        out.extend_from_slice(body);
    }
    out.freeze()
}

enum BodyState {
    /// Waiting for a request head.
    Head,
    /// Reading `remaining` bytes of a sized body.
    Sized { remaining: usize },
    /// Reading a chunked body.
    Chunked(ChunkedDecoder),
}

/// A streaming response's body being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// In chunks.
    Chunked,
    /// As it is, until the connection closes.
    UntilClose,
    /// Not at all (the answer to a `HEAD` request): chunks are dropped until the end.
    Discard,
}

/// The server-side HTTP/1.1 codec: one request in flight at a time, keep-alive by default.
pub struct HttpCodec {
    max_package: usize,
    uploads: Arc<Uploads>,
    /// The `multipart/form-data` body being read, parsed as it arrives.
    multipart: Option<Box<Multipart>>,
    /// Requests carry a slot for their session's `Set-Cookie` (the worker has sessions).
    sessions: bool,
    /// The slot of the request being answered.
    cookie_slot: Option<CookieSlot>,
    state: BodyState,
    pending: Option<Request>,
    body: BytesMut,
    /// A request was handed out and not yet answered.
    awaiting_response: bool,
    /// Method and keep-alive of the request being answered.
    head_only: bool,
    keep_alive: bool,
    /// The request being answered is HTTP/1.1 (chunked responses allowed).
    chunked_ok: bool,
    /// A streaming response's head was sent; its chunks follow.
    stream: Option<Stream>,
    /// A file response's head was sent; the connection pulls its body from here.
    file: Option<FileBody>,
    close_after: bool,
}

impl HttpCodec {
    /// A codec that refuses bodies over `max_package` bytes, with the default [`Uploads`].
    pub fn new(max_package: usize) -> Self {
        static DEFAULT: OnceLock<Arc<Uploads>> = OnceLock::new();
        Self::with_uploads(max_package, DEFAULT.get_or_init(Arc::default).clone())
    }

    /// A codec that refuses bodies over `max_package` bytes, and streams the files of
    /// `multipart/form-data` bodies to temporary files within `uploads`' limits (the other
    /// fields count against `max_package`).
    pub fn with_uploads(max_package: usize, uploads: Arc<Uploads>) -> Self {
        HttpCodec {
            max_package,
            uploads,
            multipart: None,
            sessions: false,
            cookie_slot: None,
            state: BodyState::Head,
            pending: None,
            body: BytesMut::new(),
            awaiting_response: false,
            head_only: false,
            keep_alive: true,
            chunked_ok: true,
            stream: None,
            file: None,
            close_after: false,
        }
    }

    /// Give each request a slot for its session's `Set-Cookie`, added to its response.
    pub(crate) fn with_session_cookies(mut self) -> Self {
        self.sessions = true;
        self
    }

    /// The `Set-Cookie` the answered request's session asks for.
    fn session_cookie(&mut self) -> Option<String> {
        let slot = self.cookie_slot.take()?;
        let cookie = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        cookie
    }

    fn finish(&mut self) -> Result<Decoded, ProtocolError> {
        let mut req = self.pending.take().unwrap_or_default();
        if let Some(parser) = self.multipart.take() {
            let form = parser.finish()?;
            req.form = form.fields;
            req.files = form.files;
        }
        req.body = std::mem::take(&mut self.body).freeze();
        if self.sessions {
            let slot = CookieSlot::default();
            self.cookie_slot = Some(slot.clone());
            req.cookie_slot = Some(slot);
        }
        self.state = BodyState::Head;
        self.awaiting_response = true;
        self.head_only = req.method == "HEAD";
        self.keep_alive = req.keep_alive();
        self.chunked_ok = req.version_minor >= 1;
        Ok(Decoded::Message(Message::Request(Box::new(req))))
    }

    /// Hand the body bytes decoded so far to the multipart parser, if one reads this body.
    fn feed_multipart(&mut self) -> Result<(), ProtocolError> {
        if let Some(parser) = &mut self.multipart {
            parser.feed(&self.body)?;
            self.body.clear();
        }
        Ok(())
    }

    /// Send a streaming response's head (and its body as the first piece).
    fn open_stream(&mut self, resp: Response) -> Result<Bytes, ProtocolError> {
        if resp.status < 200 || resp.status == 204 || resp.status == 304 {
            return Err(ProtocolError::Encode(format!(
                "a {} response has no body to stream",
                resp.status
            )));
        }
        let asked_close = resp
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let (framing, stream) = if !self.chunked_ok {
            (Framing::UntilClose, Stream::UntilClose)
        } else {
            (Framing::Chunked, Stream::Chunked)
        };
        self.keep_alive &= !asked_close && framing == Framing::Chunked;
        self.stream = Some(if self.head_only {
            Stream::Discard
        } else {
            stream
        });
        Ok(resp
            .encode_framed(self.head_only, self.keep_alive, framing)
            .freeze())
    }

    /// A piece of the open streaming response, or its end.
    fn encode_piece(&mut self, stream: Stream, msg: Message) -> Result<Bytes, ProtocolError> {
        let Message::Chunk(chunk) = msg else {
            return Err(ProtocolError::Encode(
                "a streaming response is open: send Chunks and end it with Chunk::end()".into(),
            ));
        };
        if !chunk.is_end() {
            return Ok(match stream {
                Stream::Chunked => chunk.framed(),
                Stream::UntilClose => chunk.into_data(),
                Stream::Discard => Bytes::new(),
            });
        }
        self.stream = None;
        self.close_after = !self.keep_alive;
        Ok(match stream {
            Stream::Chunked => Bytes::from_static(b"0\r\n\r\n"),
            Stream::UntilClose | Stream::Discard => Bytes::new(),
        })
    }
}

impl HttpCodec {
    /// [`Codec::decode`], before an error drops the upload being read.
    fn decode_request(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        if self.awaiting_response
            || self.stream.is_some()
            || self.file.is_some()
            || self.close_after
        {
            return Ok(None);
        }
        loop {
            match self.state {
                BodyState::Head => {
                    // Tolerate stray CRLFs between requests (RFC 9112 §2.2).
                    while buf.starts_with(b"\r\n") {
                        buf.advance(2);
                    }
                    let Some((req, len)) = parse_head(buf)? else {
                        return Ok(None);
                    };
                    buf.advance(len);
                    if req.version_minor > 1 {
                        return Err(ProtocolError::invalid("unsupported HTTP version"));
                    }
                    let length = body_length(&req)?;
                    let boundary = multipart::boundary(req.header("content-type").unwrap_or(""))?;
                    let limit = match boundary {
                        Some(b) if length != BodyLength::Sized(0) => {
                            let parser = Multipart::new(&b, self.max_package, self.uploads.clone());
                            let limit = usize::try_from(parser.max_body()).unwrap_or(usize::MAX);
                            self.multipart = Some(Box::new(parser));
                            limit
                        }
                        _ => self.max_package,
                    };
                    let expect = req
                        .header("expect")
                        .map(|e| e.eq_ignore_ascii_case("100-continue"));
                    self.pending = Some(req);
                    let has_body = match length {
                        BodyLength::Chunked => {
                            self.state = BodyState::Chunked(ChunkedDecoder::new(limit, MAX_HEAD));
                            true
                        }
                        BodyLength::Sized(n) => {
                            if n > limit {
                                return Err(ProtocolError::TooLarge { size: n, limit });
                            }
                            self.state = BodyState::Sized { remaining: n };
                            n > 0
                        }
                    };
                    if expect == Some(true) && has_body && buf.is_empty() {
                        return Ok(Some(Decoded::Reply(Bytes::from_static(
                            b"HTTP/1.1 100 Continue\r\n\r\n",
                        ))));
                    }
                }
                BodyState::Sized { remaining } => {
                    if remaining == 0 {
                        return self.finish().map(Some);
                    }
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = remaining.min(buf.len());
                    match &mut self.multipart {
                        Some(parser) => parser.feed(&buf[..take])?,
                        None => self.body.extend_from_slice(&buf[..take]),
                    }
                    buf.advance(take);
                    self.state = BodyState::Sized {
                        remaining: remaining - take,
                    };
                }
                BodyState::Chunked(ref mut chunks) => {
                    let done = chunks.decode(buf, &mut self.body)?;
                    self.feed_multipart()?;
                    return if done {
                        self.finish().map(Some)
                    } else {
                        Ok(None)
                    };
                }
            }
        }
    }
}

impl Codec for HttpCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        let result = self.decode_request(buf);
        if result.is_err() {
            // Delete the upload's temporary files now, not when the connection goes.
            self.multipart = None;
        }
        result
    }

    fn encode(&mut self, msg: Message) -> Result<Bytes, ProtocolError> {
        if let Some(stream) = self.stream {
            return self.encode_piece(stream, msg);
        }
        let resp = match msg {
            Message::Response(r) => *r,
            Message::Chunk(_) => {
                return Err(ProtocolError::Encode(
                    "no streaming response is open: a Chunk follows a Response::streaming()".into(),
                ))
            }
            Message::Text(s) if self.awaiting_response && self.cookie_slot.is_none() => {
                // The common answer (`conn.send("ok")`): what `Response::html(s)` encodes to,
                // without building one.
                self.awaiting_response = false;
                self.close_after = !self.keep_alive;
                return Ok(encode_html(s.as_bytes(), self.head_only, self.keep_alive));
            }
            Message::Text(s) => Response::html(s),
            Message::Binary(b) => Response::new(200)
                .with_header("Content-Type", "application/octet-stream")
                .with_body(b),
            Message::Request(_) => {
                return Err(ProtocolError::Encode(
                    "an HTTP worker answers with a response, not a request".into(),
                ))
            }
        };
        if !self.awaiting_response {
            return Err(ProtocolError::Encode(
                "no HTTP request is waiting for a response".into(),
            ));
        }
        self.awaiting_response = false;
        let resp = match self.session_cookie() {
            Some(cookie) => resp.with_header("Set-Cookie", cookie),
            None => resp,
        };
        if resp.is_streaming() {
            return self.open_stream(resp);
        }
        let keep_alive = self.keep_alive
            && resp
                .header("connection")
                .is_none_or(|c| !c.eq_ignore_ascii_case("close"));
        if !keep_alive {
            self.close_after = true;
        }
        let head = resp.encode_framed(self.head_only, keep_alive, Framing::Length);
        if !self.head_only {
            self.file = resp.file.filter(|f| f.len() > 0);
        }
        Ok(head.freeze())
    }

    fn error_reply(&mut self, err: &ProtocolError) -> Option<Bytes> {
        if self.awaiting_response || self.stream.is_some() || self.file.is_some() {
            // A response is owed for the current request; don't interleave another one.
            return None;
        }
        let status = match err {
            ProtocolError::HeadTooLarge { .. } => 431,
            ProtocolError::TooLarge { .. } => 413,
            ProtocolError::Unsupported(_) => 501,
            ProtocolError::HeadTimeout { .. } => 408,
            ProtocolError::Server(_) => 500,
            _ => 400,
        };
        Some(Response::text(status, format!("{err}\n")).encode(false, false))
    }

    fn awaits_head(&self) -> bool {
        matches!(self.state, BodyState::Head)
            && !self.awaiting_response
            && self.stream.is_none()
            && self.file.is_none()
            && !self.close_after
    }

    fn responding(&self) -> bool {
        self.awaiting_response || self.stream.is_some() || self.file.is_some()
    }

    fn body_pending(&self) -> bool {
        self.file.is_some()
    }

    fn next_body_piece(&mut self, max: usize) -> Option<Result<Bytes, ProtocolError>> {
        let file = self.file.as_mut()?;
        let piece = file
            .read(max)
            .map_err(|e| ProtocolError::Encode(format!("file response: {e}")));
        if piece.is_err() || file.len() == 0 {
            self.file = None;
        }
        Some(piece)
    }

    fn wants_close(&self) -> bool {
        self.close_after && self.file.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ServerSentEvent;

    fn decode_all(codec: &mut HttpCodec, input: &[u8]) -> Vec<Decoded> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(d) = codec.decode(&mut buf).unwrap() {
            let is_req = matches!(d, Decoded::Message(_));
            out.push(d);
            if is_req {
                codec.encode(Message::from("ok")).unwrap();
            }
        }
        out
    }

    #[test]
    fn get_with_query() {
        let mut c = HttpCodec::new(1024);
        let d = decode_all(
            &mut c,
            b"GET /?content=hi%20there&x=1+2 HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        let Decoded::Message(Message::Request(r)) = &d[0] else {
            panic!()
        };
        assert_eq!(r.path(), "/");
        assert_eq!(r.get("content").as_deref(), Some("hi there"));
        assert_eq!(r.get("x").as_deref(), Some("1 2"));
        assert!(r.keep_alive());
    }

    #[test]
    fn post_form_json_and_chunked() {
        let mut c = HttpCodec::new(1024);
        let d = decode_all(
            &mut c,
            b"POST /a HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\n\r\ncontent=x\
              POST /b HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"content\":\"y\",\"n\":1}\
              POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nconte\r\n",
        );
        assert_eq!(d.len(), 2);
        let Decoded::Message(Message::Request(a)) = &d[0] else {
            panic!()
        };
        assert_eq!(a.post("content").as_deref(), Some("x"));
        let Decoded::Message(Message::Request(b)) = &d[1] else {
            panic!()
        };
        assert_eq!(b.post("content").as_deref(), Some("y"));
    }

    #[test]
    fn chunked_body() {
        let mut c = HttpCodec::new(1024);
        let d = decode_all(
            &mut c,
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
        );
        let Decoded::Message(Message::Request(r)) = &d[0] else {
            panic!()
        };
        assert_eq!(&r.body()[..], b"abcde");
    }

    #[test]
    fn garbage_and_oversize() {
        let mut c = HttpCodec::new(10);
        let mut buf = BytesMut::from(&b"\x00\x01garbage\r\n\r\n"[..]);
        let err = c.decode(&mut buf).unwrap_err();
        let reply = c.error_reply(&err).unwrap();
        assert!(reply.starts_with(b"HTTP/1.1 400"));
        let mut c = HttpCodec::new(10);
        let mut buf = BytesMut::from(&b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n"[..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(c.error_reply(&err).unwrap().starts_with(b"HTTP/1.1 413"));
    }

    #[test]
    fn one_request_at_a_time_and_close() {
        let mut c = HttpCodec::new(100);
        let mut buf = BytesMut::from(&b"GET /1 HTTP/1.0\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"[..]);
        assert!(matches!(
            c.decode(&mut buf).unwrap(),
            Some(Decoded::Message(_))
        ));
        assert!(c.decode(&mut buf).unwrap().is_none());
        let out = c.encode(Message::from("hi")).unwrap();
        assert!(std::str::from_utf8(&out)
            .unwrap()
            .contains("Connection: close"));
        assert!(c.wants_close());
    }

    #[test]
    fn text_answers_encode_as_html_responses() {
        for body in ["ok", "", "<p>hällo</p>"] {
            for (head_only, keep_alive) in [(false, true), (true, true), (false, false)] {
                assert_eq!(
                    encode_html(body.as_bytes(), head_only, keep_alive),
                    Response::html(body).encode(head_only, keep_alive)
                );
            }
        }
        let mut codec = HttpCodec::new(1024);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.0\r\n\r\n"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Ok(Some(Decoded::Message(_)))
        ));
        let bytes = codec.encode(Message::Text("ok".into())).expect("encodes");
        assert_eq!(bytes, Response::html("ok").encode(false, false));
        assert!(codec.wants_close());
        assert!(codec.encode(Message::Text("again".into())).is_err());
    }

    /// A codec that has just handed out the request `head` (and whatever follows it).
    fn answering(head: &[u8]) -> (HttpCodec, BytesMut) {
        let mut codec = HttpCodec::new(1024);
        let mut buf = BytesMut::from(head);
        assert!(matches!(
            codec.decode(&mut buf),
            Ok(Some(Decoded::Message(_)))
        ));
        (codec, buf)
    }

    fn text(b: Result<Bytes, ProtocolError>) -> String {
        String::from_utf8(b.expect("encodes").to_vec()).unwrap()
    }

    #[test]
    fn streaming_responses_send_chunks_then_the_next_request_is_read() {
        let (mut codec, mut buf) = answering(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        let head = text(codec.encode(Response::new(200).streaming().with_body("hi").into()));
        assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
        assert!(!head.contains("Content-Length"), "{head}");
        assert!(head.contains("Connection: keep-alive\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n2\r\nhi\r\n"), "{head}");
        // The pipelined request waits, and the connection is not idle, while the body runs.
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(codec.responding() && !codec.awaits_head());
        assert_eq!(
            text(codec.encode(Chunk::new(vec![b'x'; 26]).into())),
            format!("1a\r\n{}\r\n", "x".repeat(26))
        );
        assert!(codec.encode(Message::Text("not a chunk".into())).is_err());
        assert!(codec.encode(Response::new(200).into()).is_err());
        assert_eq!(text(codec.encode(Chunk::end().into())), "0\r\n\r\n");
        assert!(!codec.wants_close() && !codec.responding());
        assert!(codec.encode(Chunk::new("late").into()).is_err());
        let Ok(Some(Decoded::Message(Message::Request(r)))) = codec.decode(&mut buf) else {
            panic!("the second request is read once the stream ended");
        };
        assert_eq!(r.path(), "/b");
    }

    #[test]
    fn event_streams_and_the_workerman_header() {
        let (mut codec, _) = answering(b"GET /sse HTTP/1.1\r\nLast-Event-ID: 41\r\n\r\n");
        let head = text(codec.encode(Response::event_stream().into()));
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/event-stream\r\n"),
            "{head}"
        );
        assert!(head.contains("Cache-Control: no-cache\r\n"), "{head}");
        assert!(head.ends_with("Server: werkmann\r\n\r\n"), "{head}");
        let e = ServerSentEvent::data("tick").id("42");
        assert_eq!(
            text(codec.encode(e.into())),
            "13\r\nid: 42\ndata: tick\n\n\r\n"
        );
        // Workerman's way: the header on an ordinary response.
        let (mut codec, _) = answering(b"GET / HTTP/1.1\r\n\r\n");
        let head = text(
            codec.encode(
                Response::new(200)
                    .with_header("Transfer-Encoding", "chunked")
                    .into(),
            ),
        );
        assert_eq!(head.matches("Transfer-Encoding").count(), 1, "{head}");
        assert!(codec.responding());
    }

    #[test]
    fn http_1_0_streams_until_close_and_head_sends_no_body() {
        let (mut codec, _) = answering(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let head = text(codec.encode(Response::new(200).streaming().with_body("a").into()));
        assert!(!head.contains("Transfer-Encoding"), "{head}");
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\na"), "{head}");
        assert_eq!(text(codec.encode(Chunk::new("b").into())), "b");
        assert_eq!(text(codec.encode(Chunk::end().into())), "");
        assert!(codec.wants_close());

        let (mut codec, _) = answering(b"HEAD / HTTP/1.1\r\n\r\n");
        let head = text(codec.encode(Response::new(200).streaming().with_body("a").into()));
        assert!(head.ends_with("Server: werkmann\r\n\r\n"), "{head}");
        assert_eq!(text(codec.encode(Chunk::new("b").into())), "");
        assert_eq!(text(codec.encode(Chunk::end().into())), "");
        assert!(!codec.wants_close() && !codec.responding());

        let (mut codec, _) = answering(b"GET / HTTP/1.1\r\n\r\n");
        assert!(codec.encode(Chunk::new("x").into()).is_err());
        assert!(codec.encode(Response::new(204).streaming().into()).is_err());
    }

    #[test]
    fn a_session_cookie_goes_with_the_response_to_its_request() {
        let mut codec = HttpCodec::new(1024).with_session_cookies();
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"[..]);
        let Ok(Some(Decoded::Message(Message::Request(req)))) = codec.decode(&mut buf) else {
            panic!("a request");
        };
        let slot = req.cookie_slot.clone().expect("a slot");
        *slot.lock().unwrap() = Some("S=1; Path=/".into());
        let out = text(codec.encode(Message::Text("ok".into())));
        assert!(out.contains("\r\nSet-Cookie: S=1; Path=/\r\n"), "{out}");
        // The next request's response carries none.
        assert!(matches!(
            codec.decode(&mut buf),
            Ok(Some(Decoded::Message(_)))
        ));
        let out = text(codec.encode(Response::text(200, "x").into()));
        assert!(!out.contains("Set-Cookie"), "{out}");
    }

    #[test]
    fn multipart_bodies_sized_and_chunked_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Arc::new(Uploads {
            dir: dir.path().to_path_buf(),
            max_file_size: 10,
            max_total_size: 10,
            max_files: 1,
        });
        let body = "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\n0123456789\r\n--b\r\nContent-Disposition: form-data; name=\"x[]\"\r\n\r\n1\r\n--b--\r\n";
        let sized = format!("POST / HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let chunked = format!("POST / HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
        for input in [&sized, &chunked] {
            let mut codec = HttpCodec::with_uploads(1024, uploads.clone());
            let mut buf = BytesMut::new();
            let mut got = None;
            for b in input.as_bytes() {
                buf.extend_from_slice(&[*b]);
                if let Some(Decoded::Message(Message::Request(r))) = codec.decode(&mut buf).unwrap()
                {
                    got = Some(r);
                }
            }
            let req = got.expect("the request");
            assert_eq!(req.files()[0].size(), 10);
            assert_eq!(req.post_param("x").unwrap().values(), ["1"]);
            drop(req);
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
        // One byte too many: 413, and the file is gone at once.
        let mut codec = HttpCodec::with_uploads(1024, uploads);
        let mut buf = BytesMut::from(sized.replace("0123456789", "0123456789A").as_bytes());
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(codec
            .error_reply(&err)
            .unwrap()
            .starts_with(b"HTTP/1.1 413"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode("a%2Fb%zz%"), "a/b%zz%");
        assert_eq!(percent_decode("%E2%9C%93"), "✓");
    }
}
