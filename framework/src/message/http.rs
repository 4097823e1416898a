//! The HTTP values: [`Request`] as an `http://` worker (or a WebSocket handshake) receives it,
//! [`Response`] as a worker builds it, and the form/query decoding they share. The wire side —
//! parsing request heads, encoding responses, the keep-alive codec — is `protocol::http`.

use std::collections::HashMap;

use bytes::Bytes;

use super::params::{self, Param};
use super::session::{CookieSlot, Session};
use super::upload::UploadedFile;

/// An HTTP request as received by an `http://` worker (or a WebSocket handshake).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub(crate) method: String,
    pub(crate) uri: String,
    pub(crate) version_minor: u8,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
    /// The non-file fields of a `multipart/form-data` body, in order.
    pub(crate) form: Vec<(String, String)>,
    /// The files of a `multipart/form-data` body, in order.
    pub(crate) files: Vec<UploadedFile>,
    /// The session, on a worker with [`Worker::sessions`](crate::Worker::sessions).
    pub(crate) session: Option<Session>,
    /// Where the session's `Set-Cookie` goes, for this request's response.
    pub(crate) cookie_slot: Option<CookieSlot>,
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

    /// A query parameter, percent-decoded (Workerman's `$request->get('key')` for a plain
    /// value): the raw key as sent (`a[]` too), its last value. See [`Request::query_param`]
    /// for PHP's arrays.
    pub fn get(&self, key: &str) -> Option<String> {
        parse_urlencoded(self.query_string())
            .into_iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// All query parameters, percent-decoded; a later repetition of a key wins.
    pub fn query(&self) -> HashMap<String, String> {
        parse_urlencoded(self.query_string()).into_iter().collect()
    }

    /// A query parameter as PHP's `$_GET` holds it: `a[]=1&a[]=2` gives a list
    /// ([`Param::values`]), `a[k]=1` a map ([`Param::get`]), a repeated plain key its last value.
    pub fn query_param(&self, key: &str) -> Option<Param> {
        take(self.query_params(), key)
    }

    /// All query parameters as PHP's `$_GET` holds them, in order.
    pub fn query_params(&self) -> Vec<(String, Param)> {
        params::collect(parse_urlencoded(self.query_string()))
    }

    /// A body field (Workerman's `$request->post('key')`): from a form-urlencoded or
    /// `multipart/form-data` body, or the top-level member of a JSON object body (strings as
    /// they are, other values as JSON text). A repeated field's last value.
    pub fn post(&self, key: &str) -> Option<String> {
        self.post_all().remove(key)
    }

    /// All body fields, as [`Request::post`] reads them.
    pub fn post_all(&self) -> HashMap<String, String> {
        self.post_pairs().into_iter().collect()
    }

    /// A body field as PHP's `$_POST` holds it (see [`Request::query_param`]); a JSON body's
    /// members are plain values.
    pub fn post_param(&self, key: &str) -> Option<Param> {
        take(self.post_params(), key)
    }

    /// All body fields as PHP's `$_POST` holds them, in order.
    pub fn post_params(&self) -> Vec<(String, Param)> {
        params::collect(self.post_pairs())
    }

    /// The body's fields as decoded pairs, in order.
    fn post_pairs(&self) -> Vec<(String, String)> {
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
                _ => Vec::new(),
            }
        } else if ctype.starts_with("multipart/form-data") {
            self.form.clone()
        } else if ctype.starts_with("application/x-www-form-urlencoded") || ctype.is_empty() {
            std::str::from_utf8(&self.body)
                .map(parse_urlencoded)
                .unwrap_or_default()
        } else {
            Vec::new()
        }
    }

    /// The first uploaded file of that form field (Workerman's `$request->file('name')`;
    /// `-F name=@path` with curl). Its temporary file goes with the request.
    pub fn file(&self, field: &str) -> Option<&UploadedFile> {
        self.files.iter().find(|f| f.field == field)
    }

    /// Every uploaded file, in the order sent (fields named `f[]` repeat).
    pub fn files(&self) -> &[UploadedFile] {
        &self.files
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// A cookie's value, percent-decoded (`+` a space) as PHP decodes `$_COOKIE`; of cookies
    /// sent twice under one name, the first (the most specific path).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookie_pairs()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }

    /// All cookies, values decoded as [`Request::cookie`] decodes them.
    pub fn cookies(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for (k, v) in self.cookie_pairs() {
            out.entry(k.to_string())
                .or_insert_with(|| percent_decode(v));
        }
        out
    }

    /// The session (Workerman's `$request->session()`); `None` unless the worker has
    /// [`Worker::sessions`](crate::Worker::sessions). It was loaded before `on_message` ran.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The session id (Workerman's `$request->sessionId()`), made now (and its cookie sent
    /// with the response) if the client had none.
    pub fn session_id(&self) -> Option<String> {
        self.session.as_ref().map(Session::id)
    }

    /// A new session id for this session (Workerman's `sessionRegenerateId`), see
    /// [`Session::regenerate_id`].
    pub fn session_regenerate_id(&self, delete_old: bool) -> Option<String> {
        self.session.as_ref().map(|s| s.regenerate_id(delete_old))
    }

    /// The raw `name=value` pairs of the `Cookie` headers.
    fn cookie_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
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

/// The member `key` of PHP-style variables.
fn take(params: Vec<(String, Param)>, key: &str) -> Option<Param> {
    params.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
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

/// The reason phrase of a status code as IANA's HTTP Status Code Registry names it (RFC 9110
/// and the RFCs it lists), `Unknown` for an unregistered code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        104 => "Upload Resumption Supported",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
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
    /// A reason phrase of the worker's own ([`Response::with_reason`]).
    pub(crate) reason: Option<Box<str>>,
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
            reason: None,
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

    /// Send this reason phrase instead of the standard one (Workerman's
    /// `withStatus($code, $reason)`); line breaks and other control bytes become spaces.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        let reason: String = reason
            .into()
            .chars()
            .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
            .collect();
        self.reason = Some(reason.into_boxed_str());
        self
    }

    /// The reason phrase sent: the worker's own, or the standard one.
    pub fn reason(&self) -> &str {
        self.reason
            .as_deref()
            .unwrap_or_else(|| reason_phrase(self.status))
    }

    /// Add a `Set-Cookie` header (Workerman's `$response->cookie(…)`); several may be set.
    /// Build one with [`Cookie::build`](cookie::Cookie::build): `.max_age(…)`, `.expires(…)`,
    /// `.path(…)`, `.domain(…)`, `.secure(true)`, `.http_only(true)`,
    /// `.same_site(SameSite::Lax)`. The name and value are percent-encoded, which
    /// [`Request::cookie`] decodes.
    pub fn with_cookie(self, cookie: impl Into<cookie::Cookie<'static>>) -> Self {
        let cookie = cookie.into();
        let value = cookie.encoded().to_string();
        self.with_header("Set-Cookie", value)
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
