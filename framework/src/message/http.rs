//! The HTTP values: [`Request`] as an `http://` worker (or a WebSocket handshake) receives it,
//! [`Response`] as a worker builds it, and the form/query decoding they share. The wire side —
//! parsing request heads, encoding responses, the keep-alive codec — is `protocol::http`.

use std::collections::HashMap;

use bytes::Bytes;

/// An HTTP request as received by an `http://` worker (or a WebSocket handshake).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub(crate) method: String,
    pub(crate) uri: String,
    pub(crate) version_minor: u8,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
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

    /// The `Last-Event-ID` a reconnecting `EventSource` sends: the id of the last
    /// [`ServerSentEvent`](super::ServerSentEvent) it received.
    pub fn last_event_id(&self) -> Option<&str> {
        self.header("last-event-id")
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
        206 => "Partial Content",
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
        416 => "Range Not Satisfiable",
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
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
    /// The body follows in [`Chunk`](super::Chunk)s (see [`Response::streaming`]).
    pub(crate) streaming: bool,
    /// The body is read from a file ([`Response::with_file`], [`Response::file`]).
    pub(crate) file: Option<super::FileBody>,
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
            streaming: false,
            file: None,
        }
    }

    /// A streaming response (Workerman's `Transfer-Encoding: chunked` response): this head
    /// (and its body, if any, as the first piece) is sent at once, then each
    /// [`Chunk`](super::Chunk) the worker sends — from any callback or timer — until
    /// [`Chunk::end`](super::Chunk::end). Chunked on HTTP/1.1; to an HTTP/1.0 client the body
    /// runs until the connection closes. Setting a `Transfer-Encoding: chunked` header does the
    /// same.
    pub fn streaming(mut self) -> Self {
        self.streaming = true;
        self
    }

    /// A Server-Sent Events stream (`text/event-stream`, not cached, not buffered by nginx):
    /// send [`ServerSentEvent`](super::ServerSentEvent)s on it.
    pub fn event_stream() -> Self {
        Response::new(200)
            .with_header("Content-Type", "text/event-stream")
            .with_header("Cache-Control", "no-cache")
            .with_header("X-Accel-Buffering", "no")
            .streaming()
    }

    /// Whether the body follows in chunks ([`Response::streaming`], or a
    /// `Transfer-Encoding: chunked` header).
    pub fn is_streaming(&self) -> bool {
        self.streaming
            || self
                .header("transfer-encoding")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
    }

    /// Remove every header of that name (case-insensitive; builder style).
    pub fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self
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
}

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
