//! HTTP/1.1 server protocol: [`Request`], [`Response`] and the keep-alive codec.
//!
//! Requests are parsed with `httparse`; bodies may be sized by `Content-Length` or sent
//! chunked. One request is handed to the worker at a time: the next is decoded only once the
//! previous one has been answered, so responses keep the order of requests.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};

use super::{Codec, Decoded, ProtocolError};
use crate::message::Message;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// An HTTP request as received by an `http://` worker (or a WebSocket handshake).
#[derive(Debug, Clone, Default)]
pub struct Request {
    method: String,
    uri: String,
    version_minor: u8,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Request {
    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request target as sent, e.g. `/push?content=hi`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The path part of the target, without the query.
    pub fn path(&self) -> &str {
        self.uri.split_once('?').map_or(&self.uri, |(p, _)| p)
    }

    /// The raw query string (without `?`), empty when there is none.
    pub fn query_string(&self) -> &str {
        self.uri.split_once('?').map_or("", |(_, q)| q)
    }

    /// The HTTP minor version: `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub fn version_minor(&self) -> u8 {
        self.version_minor
    }

    /// All headers, names in lower case, in the order received.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether a comma-separated header (e.g. `Connection`) lists `token`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The body bytes.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// A query parameter, percent-decoded (Workerman's `$request->get('key')`).
    pub fn get(&self, key: &str) -> Option<String> {
        parse_urlencoded(self.query_string())
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// All query parameters, percent-decoded; a later repetition of a key wins.
    pub fn query(&self) -> HashMap<String, String> {
        parse_urlencoded(self.query_string()).into_iter().collect()
    }

    /// A body field (Workerman's `$request->post('key')`): from a form-urlencoded body, or the
    /// top-level member of a JSON object body (strings as they are, other values as JSON text).
    pub fn post(&self, key: &str) -> Option<String> {
        self.post_all().remove(key)
    }

    /// All body fields, as [`Request::post`] reads them.
    pub fn post_all(&self) -> HashMap<String, String> {
        let ctype = self
            .header("content-type")
            .unwrap_or("")
            .to_ascii_lowercase();
        if ctype.starts_with("application/json") {
            match serde_json::from_slice::<serde_json::Value>(&self.body) {
                Ok(serde_json::Value::Object(map)) => map
                    .into_iter()
                    .map(|(k, v)| match v {
                        serde_json::Value::String(s) => (k, s),
                        other => (k, other.to_string()),
                    })
                    .collect(),
                _ => HashMap::new(),
            }
        } else if ctype.starts_with("application/x-www-form-urlencoded") || ctype.is_empty() {
            std::str::from_utf8(&self.body)
                .map(|s| parse_urlencoded(s).into_iter().collect())
                .unwrap_or_default()
        } else {
            HashMap::new()
        }
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    /// Whether the client wants the connection kept open after the response.
    pub fn keep_alive(&self) -> bool {
        if self.version_minor >= 1 {
            !self.header_has_token("connection", "close")
        } else {
            self.header_has_token("connection", "keep-alive")
        }
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Parse a request head from the start of `buf`: `Ok(None)` when it is incomplete, otherwise
/// the request (without body) and the head's length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
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
                    body: Bytes::new(),
                },
                len,
            )))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(ProtocolError::TooLarge {
            size: buf.len(),
            limit: MAX_HEAD,
        }),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ProtocolError::invalid(format!("bad HTTP request: {e}"))),
    }
}

/// Decode `application/x-www-form-urlencoded` pairs (also used for query strings).
pub fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Percent-decode a URL component (`+` is a space), replacing invalid UTF-8.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The standard reason phrase of a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// An HTTP response, built by the worker and sent with `conn.send(response)`.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Default for Response {
    fn default() -> Self {
        Response::new(200)
    }
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status)
            .with_header("Content-Type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// A `text/html` response.
    pub fn html(body: impl Into<String>) -> Self {
        Response::new(200)
            .with_header("Content-Type", "text/html; charset=utf-8")
            .with_body(body.into())
    }

    /// An `application/json` response of a serializable value.
    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        Response::new(status)
            .with_header("Content-Type", "application/json")
            .with_body(body)
    }

    /// Add a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body (builder style).
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The headers set so far.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body.
    pub fn body_bytes(&self) -> &Bytes {
        &self.body
    }

    /// Serialize for the wire. `head_only` leaves out the body (a `HEAD` request);
    /// `keep_alive` chooses the `Connection` header.
    pub fn encode(&self, head_only: bool, keep_alive: bool) -> Bytes {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum();
        let body = if head_only { 0 } else { self.body.len() };
        let mut out = BytesMut::with_capacity(128 + headers + body);
        out.extend_from_slice(b"HTTP/1.1 ");
        put_decimal(&mut out, u64::from(self.status));
        out.extend_from_slice(b" ");
        out.extend_from_slice(reason_phrase(self.status).as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut has_ctype = false;
        for (k, v) in &self.headers {
            if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("connection") {
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
        if !has_ctype && !self.body.is_empty() {
            out.extend_from_slice(b"Content-Type: text/html; charset=utf-8\r\n");
        }
        if self.status != 101 && self.status != 204 && self.status >= 200 {
            out.extend_from_slice(b"Content-Length: ");
            put_decimal(&mut out, self.body.len() as u64);
            out.extend_from_slice(b"\r\n");
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
            out.extend_from_slice(&self.body);
        }
        out.freeze()
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

use super::put_decimal;

impl From<&str> for Response {
    fn from(s: &str) -> Self {
        Response::html(s)
    }
}

impl From<String> for Response {
    fn from(s: String) -> Self {
        Response::html(s)
    }
}

enum BodyState {
    /// Waiting for a request head.
    Head,
    /// Reading `remaining` bytes of a sized body.
    Sized { remaining: usize },
    /// Reading a chunked body.
    Chunked,
}

/// The server-side HTTP/1.1 codec: one request in flight at a time, keep-alive by default.
pub struct HttpCodec {
    max_package: usize,
    state: BodyState,
    pending: Option<Request>,
    body: BytesMut,
    /// A request was handed out and not yet answered.
    awaiting_response: bool,
    /// Method and keep-alive of the request being answered.
    head_only: bool,
    keep_alive: bool,
    close_after: bool,
}

impl HttpCodec {
    /// A codec that refuses bodies over `max_package` bytes.
    pub fn new(max_package: usize) -> Self {
        HttpCodec {
            max_package,
            state: BodyState::Head,
            pending: None,
            body: BytesMut::new(),
            awaiting_response: false,
            head_only: false,
            keep_alive: true,
            close_after: false,
        }
    }

    fn finish(&mut self) -> Decoded {
        let mut req = self.pending.take().unwrap_or_default();
        req.body = std::mem::take(&mut self.body).freeze();
        self.state = BodyState::Head;
        self.awaiting_response = true;
        self.head_only = req.method == "HEAD";
        self.keep_alive = req.keep_alive();
        Decoded::Message(Message::Request(Box::new(req)))
    }

    fn check_size(&self, size: usize) -> Result<(), ProtocolError> {
        if size > self.max_package {
            Err(ProtocolError::TooLarge {
                size,
                limit: self.max_package,
            })
        } else {
            Ok(())
        }
    }

    fn decode_chunked(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        loop {
            let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
                if buf.len() > 1024 {
                    return Err(ProtocolError::invalid("chunk size line too long"));
                }
                return Ok(None);
            };
            let line = std::str::from_utf8(&buf[..line_end])
                .map_err(|_| ProtocolError::invalid("bad chunk size"))?;
            let size_str = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_str, 16)
                .map_err(|_| ProtocolError::invalid(format!("bad chunk size {size_str:?}")))?;
            if size == 0 {
                // Trailers end with an empty line.
                let Some(end) = buf[line_end + 2..]
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .map(|p| line_end + 2 + p)
                else {
                    return Ok(None);
                };
                if end == line_end + 2 {
                    buf.advance(end + 2);
                    return Ok(Some(self.finish()));
                }
                // Skip one trailer line and look again.
                buf.advance(end + 2);
                let rest = buf.split_off(0);
                buf.extend_from_slice(b"0\r\n");
                buf.extend_from_slice(&rest);
                continue;
            }
            self.check_size(self.body.len().saturating_add(size))?;
            if buf.len() < line_end + 2 + size + 2 {
                return Ok(None);
            }
            if &buf[line_end + 2 + size..line_end + 4 + size] != b"\r\n" {
                return Err(ProtocolError::invalid("chunk not followed by CRLF"));
            }
            self.body
                .extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.advance(line_end + 4 + size);
        }
    }
}

impl Codec for HttpCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        if self.awaiting_response || self.close_after {
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
                    let chunked = req.header_has_token("transfer-encoding", "chunked");
                    let length = match req.header("content-length") {
                        Some(v) => Some(v.parse::<usize>().map_err(|_| {
                            ProtocolError::invalid(format!("bad Content-Length {v:?}"))
                        })?),
                        None => None,
                    };
                    let expect = req
                        .header("expect")
                        .map(|e| e.eq_ignore_ascii_case("100-continue"));
                    self.pending = Some(req);
                    if chunked {
                        self.state = BodyState::Chunked;
                    } else {
                        let n = length.unwrap_or(0);
                        self.check_size(n)?;
                        self.state = BodyState::Sized { remaining: n };
                    }
                    if expect == Some(true)
                        && (chunked || length.unwrap_or(0) > 0)
                        && buf.is_empty()
                    {
                        return Ok(Some(Decoded::Reply(Bytes::from_static(
                            b"HTTP/1.1 100 Continue\r\n\r\n",
                        ))));
                    }
                }
                BodyState::Sized { remaining } => {
                    if remaining == 0 {
                        return Ok(Some(self.finish()));
                    }
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = remaining.min(buf.len());
                    self.body.extend_from_slice(&buf[..take]);
                    buf.advance(take);
                    self.state = BodyState::Sized {
                        remaining: remaining - take,
                    };
                }
                BodyState::Chunked => return self.decode_chunked(buf),
            }
        }
    }

    fn encode(&mut self, msg: Message) -> Result<Bytes, ProtocolError> {
        let resp = match msg {
            Message::Response(r) => *r,
            Message::Text(s) if self.awaiting_response => {
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
        let keep_alive = self.keep_alive
            && resp
                .header("connection")
                .is_none_or(|c| !c.eq_ignore_ascii_case("close"));
        if !keep_alive {
            self.close_after = true;
        }
        Ok(resp.encode(self.head_only, keep_alive))
    }

    fn error_reply(&mut self, err: &ProtocolError) -> Option<Bytes> {
        if self.awaiting_response {
            // A response is owed for the current request; don't interleave another one.
            return None;
        }
        let status = match err {
            ProtocolError::TooLarge { limit, .. } if *limit == MAX_HEAD => 431,
            ProtocolError::TooLarge { .. } => 413,
            _ => 400,
        };
        Some(Response::text(status, format!("{err}\n")).encode(false, false))
    }

    fn wants_close(&self) -> bool {
        self.close_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn percent() {
        assert_eq!(percent_decode("a%2Fb%zz%"), "a/b%zz%");
        assert_eq!(percent_decode("%E2%9C%93"), "✓");
    }
}
