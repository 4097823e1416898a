//! RFC 6455 WebSocket: the server side (`websocket://` workers) and the client side (`ws://`
//! connections).
//!
//! Frames are parsed and written with `actix_http::ws::Parser`; this module adds the handshake,
//! the size limit (checked from a frame's header, before its payload is buffered), message
//! reassembly, incremental UTF-8 validation of text and the close handshake. A server codec
//! with compression enabled negotiates permessage-deflate (RFC 7692, `deflate.rs`).

use actix_http::ws::{hash_key, CloseCode, OpCode, Parser, ProtocolError as WsError};
use base64::prelude::*;
use bytes::{Buf, Bytes, BytesMut};

use super::deflate::{self, Deflate};
use super::http::{parse_head, Request, Response, MAX_HEAD};
use super::{Codec, Decoded, ProtocolError, Role};
use crate::message::Message;

/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;
/// Largest number of headers read from a handshake response.
const MAX_RESPONSE_HEADERS: usize = 64;

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Server: waiting for the upgrade request. Client: waiting for the `101` response.
    Handshake,
    /// Server: the upgrade request was handed out; waiting for [`Codec::accept`].
    AwaitingAccept,
    /// Server: the upgrade was refused; nothing more is read.
    Refused,
    /// Frames flow.
    Open,
}

/// A data message being reassembled from fragments.
#[derive(Debug)]
struct Partial {
    text: bool,
    /// The message is compressed (RSV1 on its first frame): `data` holds it inflated.
    compressed: bool,
    data: BytesMut,
    /// How many leading bytes of `data` are known to be valid UTF-8 (text only).
    validated: usize,
}

/// The WebSocket codec of one connection, server or client side.
#[derive(Debug)]
pub struct WsCodec {
    role: Role,
    max_package: usize,
    state: State,
    /// Client: the `Host` header and request target of the upgrade request.
    host: String,
    path: String,
    /// Client: the `Sec-WebSocket-Key` sent, once [`Codec::on_open`] has run.
    key: Option<String>,
    /// Server: the last handshake failure was an unsupported `Sec-WebSocket-Version`.
    bad_version: bool,
    partial: Option<Partial>,
    close_received: bool,
    close_sent: bool,
    error_replied: bool,
    /// Server: answer a permessage-deflate offer.
    compression: bool,
    /// Server: keep the compressor's context from message to message.
    context_takeover: bool,
    /// permessage-deflate, once negotiated.
    deflate: Option<Box<Deflate>>,
    /// The closing handshake's code and reason (the peer's, or ours if we closed first),
    /// until [`Codec::take_close_status`] takes it.
    close_status: Option<(u16, String)>,
    /// Server: headers `on_websocket_connect` added to the `101`.
    extra_headers: Vec<(String, String)>,
}

impl WsCodec {
    /// A codec for `role`; a client codec built this way asks for `/` on host `localhost`
    /// (prefer [`WsCodec::new_client`]).
    pub fn new(role: Role, max_package: usize) -> Self {
        match role {
            Role::Server => Self::new_server(max_package),
            Role::Client => Self::new_client("localhost", "/", max_package),
        }
    }

    /// A server-side codec (an accepted connection) refusing messages over `max_package` bytes.
    pub fn new_server(max_package: usize) -> Self {
        Self::with_role(Role::Server, String::new(), String::new(), max_package)
    }

    /// A client-side codec that upgrades `GET {path}` on `host` (the `Host` header value, e.g.
    /// `127.0.0.1:2206`), refusing messages over `max_package` bytes.
    pub fn new_client(host: &str, path: &str, max_package: usize) -> Self {
        // Keep the request head well-formed whatever the caller passes.
        let clean = |s: &str| s.replace(|c: char| c.is_ascii_control() || c == ' ', "");
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            clean(path)
        };
        Self::with_role(Role::Client, clean(host), path, max_package)
    }

    fn with_role(role: Role, host: String, path: String, max_package: usize) -> Self {
        WsCodec {
            role,
            max_package,
            state: State::Handshake,
            host,
            path,
            key: None,
            bad_version: false,
            partial: None,
            close_received: false,
            close_sent: false,
            error_replied: false,
            compression: false,
            context_takeover: false,
            deflate: None,
            close_status: None,
            extra_headers: Vec::new(),
        }
    }

    /// Server: negotiate permessage-deflate (RFC 7692) when the client offers it; messages
    /// are then sent compressed, and compressed messages are read. With `context_takeover`
    /// the compressor is kept from message to message (better ratios for small, similar
    /// messages; its ~300 KiB stay with the connection), without it each message is
    /// compressed afresh and nothing is kept.
    pub fn with_compression(mut self, enabled: bool, context_takeover: bool) -> Self {
        self.compression = enabled;
        self.context_takeover = context_takeover;
        self
    }

    /// Whether permessage-deflate was negotiated.
    pub fn compressed(&self) -> bool {
        self.deflate.is_some()
    }

    /// Which side of the connection this codec serves.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether frames this side writes are masked (client to server).
    fn masked(&self) -> bool {
        self.role == Role::Client
    }

    fn frame(&self, payload: &[u8], op: OpCode) -> Bytes {
        let mut dst = BytesMut::new();
        Parser::write_message(&mut dst, payload, op, true, self.masked());
        dst.freeze()
    }

    fn close_with(&mut self, code: Option<u16>, reason: &str) -> Bytes {
        self.close_sent = true;
        if !self.close_received {
            self.close_status = Some((code.unwrap_or(NO_STATUS), reason.to_owned()));
        }
        if let Some(d) = self.deflate.as_mut() {
            d.release();
        }
        let mut payload = Vec::with_capacity(2 + reason.len());
        if let Some(code) = code {
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason.as_bytes());
        }
        self.frame(&payload, OpCode::Close)
    }

    /// Server: read and check the upgrade request.
    fn decode_upgrade(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        let Some((req, len)) = parse_head(buf)? else {
            return Ok(None);
        };
        if let Err(msg) = check_upgrade(&req) {
            self.bad_version = msg.starts_with(BAD_VERSION);
            return Err(ProtocolError::Invalid(msg));
        }
        buf.advance(len);
        self.state = State::AwaitingAccept;
        Ok(Some(Decoded::Handshake(Box::new(req))))
    }

    /// Client: read and check the server's answer to the upgrade request.
    fn decode_response(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        let Some(key) = self.key.as_deref() else {
            return Err(ProtocolError::invalid(
                "data received before the WebSocket upgrade request was sent",
            ));
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(ProtocolError::TooLarge {
                    size: buf.len(),
                    limit: MAX_HEAD,
                })
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => {
                return Err(ProtocolError::invalid(format!(
                    "bad WebSocket handshake response: {e}"
                )))
            }
        };
        let code = resp.code.unwrap_or(0);
        let status_line = format!(
            "HTTP/1.{} {} {}",
            resp.version.unwrap_or(1),
            code,
            resp.reason.unwrap_or("")
        );
        let fail = |what: &str| {
            Err(ProtocolError::invalid(format!(
                "WebSocket handshake failed ({}): {what}",
                status_line.trim_end()
            )))
        };
        if code != 101 {
            return fail("the server did not switch protocols");
        }
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).unwrap_or("").trim())
        };
        let has_token = |name: &str, token: &str| {
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .filter_map(|h| std::str::from_utf8(h.value).ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if !has_token("upgrade", "websocket") {
            return fail("missing `Upgrade: websocket`");
        }
        if !has_token("connection", "upgrade") {
            return fail("missing `Connection: Upgrade`");
        }
        let expected = hash_key(key.as_bytes());
        match header("sec-websocket-accept") {
            None => return fail("missing Sec-WebSocket-Accept"),
            Some(accept) if accept.as_bytes() != expected.as_slice() => {
                return fail("wrong Sec-WebSocket-Accept")
            }
            Some(_) => {}
        }
        if let Some(ext) = header("sec-websocket-extensions").filter(|v| !v.is_empty()) {
            return fail(&format!("unrequested extension {ext:?}"));
        }
        if let Some(proto) = header("sec-websocket-protocol").filter(|v| !v.is_empty()) {
            let requested = self.extra_headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("sec-websocket-protocol")
                    && v.split(',').any(|p| p.trim() == proto)
            });
            if !requested {
                return fail(&format!("unrequested subprotocol {proto:?}"));
            }
        }
        let mut response = Response::new(code);
        for h in resp.headers.iter() {
            response = response.with_header(h.name, String::from_utf8_lossy(h.value).trim());
        }
        buf.advance(len);
        self.state = State::Open;
        self.extra_headers = Vec::new();
        Ok(Some(Decoded::Opened(Some(Box::new(response)))))
    }

    /// Both sides, once open: decode frames until a message, a reply or a close comes out.
    fn decode_frames(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        let server = self.role == Role::Server;
        loop {
            if self.close_received || self.close_sent {
                return Ok(None);
            }
            if !self.check_header(buf)? {
                return Ok(None);
            }
            // The parser refuses reserved bits: RSV1 (checked above) is taken off for it.
            let rsv1 = buf[0] & RSV1 != 0;
            buf[0] &= !RSV1;
            let parsed = Parser::parse(buf, server, self.max_package.max(MAX_CONTROL));
            let Some((fin, op, payload)) = parsed.map_err(ws_error)? else {
                if rsv1 {
                    buf[0] |= RSV1;
                }
                return Ok(None);
            };
            let payload = payload.unwrap_or_default();
            match op {
                OpCode::Ping => {
                    let pong = self.frame(&payload, OpCode::Pong);
                    return Ok(Some(Decoded::Ping {
                        payload: payload.freeze(),
                        pong,
                    }));
                }
                OpCode::Pong => return Ok(Some(Decoded::Pong(payload.freeze()))),
                OpCode::Close => return self.on_close(&payload).map(Some),
                OpCode::Text | OpCode::Binary => {
                    if self.partial.is_some() {
                        return Err(ProtocolError::invalid(
                            "new data frame while a fragmented message is in progress",
                        ));
                    }
                    let text = op == OpCode::Text;
                    let data = if rsv1 {
                        self.inflate(&payload, fin, BytesMut::new())?
                    } else {
                        payload
                    };
                    if fin {
                        return single_message(text, data).map(|m| Some(Decoded::Message(m)));
                    }
                    let mut partial = Partial {
                        text,
                        compressed: rsv1,
                        data,
                        validated: 0,
                    };
                    if text {
                        validate_utf8(&partial.data, &mut partial.validated, false)?;
                    }
                    self.partial = Some(partial);
                }
                OpCode::Continue => {
                    let Some(mut partial) = self.partial.take() else {
                        return Err(ProtocolError::invalid(
                            "continuation frame without a fragmented message in progress",
                        ));
                    };
                    if partial.compressed {
                        partial.data = self.inflate(&payload, fin, partial.data)?;
                    } else {
                        partial.data.extend_from_slice(&payload);
                    }
                    let partial = self.partial.insert(partial);
                    if partial.text {
                        validate_utf8(&partial.data, &mut partial.validated, fin)?;
                    }
                    if fin {
                        let partial = self.partial.take().expect("checked above");
                        let msg = if partial.text {
                            // Validated above; `from_utf8` cannot fail here.
                            String::from_utf8(Vec::from(partial.data))
                                .map(Message::Text)
                                .map_err(|_| ProtocolError::InvalidUtf8)?
                        } else {
                            Message::Binary(partial.data.freeze())
                        };
                        return Ok(Some(Decoded::Message(msg)));
                    }
                }
                OpCode::Bad => return Err(ProtocolError::invalid("reserved opcode")),
            }
        }
    }

    /// Inflate a compressed frame's payload onto `data` (the message so far), within the
    /// package limit.
    fn inflate(
        &mut self,
        payload: &[u8],
        fin: bool,
        mut data: BytesMut,
    ) -> Result<BytesMut, ProtocolError> {
        let deflate = self
            .deflate
            .as_mut()
            .ok_or_else(|| ProtocolError::invalid("compressed frame without permessage-deflate"))?;
        deflate.decompress(payload, fin, &mut data, self.max_package)?;
        Ok(data)
    }

    /// Look at the next frame's header before `Parser::parse` buffers its payload: refuse
    /// oversize messages, fragmented or long control frames and reserved bits at once.
    /// `Ok(false)` means the header is not complete yet.
    fn check_header(&self, buf: &[u8]) -> Result<bool, ProtocolError> {
        if buf.len() < 2 {
            return Ok(false);
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x30 != 0 {
            return Err(ProtocolError::invalid("frame with RSV2 or RSV3 set"));
        }
        if b0 & RSV1 != 0 {
            let first_data = matches!(OpCode::from(b0 & 0x0F), OpCode::Text | OpCode::Binary);
            if self.deflate.is_none() {
                return Err(ProtocolError::invalid(
                    "frame with reserved bits set (no extension was negotiated)",
                ));
            }
            if !first_data {
                return Err(ProtocolError::invalid(
                    "RSV1 set on a frame other than a message's first",
                ));
            }
        }
        let len = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => u64::from(u16::from_be_bytes([b[0], b[1]])),
                None => return Ok(false),
            },
            127 => match buf.get(2..10) {
                Some(b) => u64::from_be_bytes(b.try_into().expect("8 bytes")),
                None => return Ok(false),
            },
            n => u64::from(n),
        };
        let op = OpCode::from(b0 & 0x0F);
        match op {
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                if b0 & 0x80 == 0 {
                    return Err(ProtocolError::invalid("fragmented control frame"));
                }
                if len > MAX_CONTROL as u64 {
                    return Err(ProtocolError::invalid(format!(
                        "control frame of {len} bytes (at most {MAX_CONTROL} allowed)"
                    )));
                }
            }
            OpCode::Text | OpCode::Binary | OpCode::Continue => {
                let already = match (op, &self.partial) {
                    (OpCode::Continue, Some(p)) => p.data.len() as u64,
                    _ => 0,
                };
                let total = already.saturating_add(len);
                if total > self.max_package as u64 {
                    return Err(ProtocolError::TooLarge {
                        size: usize::try_from(total).unwrap_or(usize::MAX),
                        limit: self.max_package,
                    });
                }
            }
            // Let the parser report it.
            OpCode::Bad => {}
        }
        Ok(true)
    }

    /// A close frame arrived: validate it and answer with a close frame echoing its code.
    fn on_close(&mut self, payload: &[u8]) -> Result<Decoded, ProtocolError> {
        if payload.len() == 1 {
            return Err(ProtocolError::invalid("close frame with a 1-byte payload"));
        }
        let code = if payload.len() >= 2 {
            // Validate the code alone, so that a bad reason can be told apart (1007).
            Parser::try_parse_close_payload(&payload[..2]).map_err(|_| {
                ProtocolError::invalid(format!(
                    "invalid close code {}",
                    u16::from_be_bytes([payload[0], payload[1]])
                ))
            })?;
            Some(u16::from_be_bytes([payload[0], payload[1]]))
        } else {
            None
        };
        let text = match payload.get(2..) {
            Some(rest) => std::str::from_utf8(rest).map_err(|_| ProtocolError::InvalidUtf8)?,
            None => "",
        };
        let reason = match code {
            Some(code) if text.is_empty() => format!("peer closed the session with code {code}"),
            Some(code) => format!("peer closed the session with code {code}: {text}"),
            None => "peer closed the session without a status code".to_owned(),
        };
        if !self.close_sent {
            self.close_status = Some((code.unwrap_or(NO_STATUS), text.to_owned()));
        }
        self.close_received = true;
        self.partial = None;
        let reply = (!self.close_sent).then(|| self.close_with(code, ""));
        Ok(Decoded::Close { reply, reason })
    }
}

/// The first header byte's RSV1: a compressed message (permessage-deflate).
const RSV1: u8 = 0x40;
/// The close code reported for a close frame without one (RFC 6455 §7.1.5).
const NO_STATUS: u16 = 1005;

/// Prefix of the handshake error for an unsupported version (answered with `426`).
const BAD_VERSION: &str = "unsupported Sec-WebSocket-Version";

/// Check a server-side upgrade request (RFC 6455 §4.2.1); the error says what is wrong.
fn check_upgrade(req: &Request) -> Result<(), String> {
    if req.method() != "GET" {
        return Err(format!(
            "a WebSocket handshake must be a GET request, not {}",
            req.method()
        ));
    }
    if req.version_minor() < 1 {
        return Err("a WebSocket handshake requires HTTP/1.1".into());
    }
    if !req.header_has_token("upgrade", "websocket") {
        return Err(
            "this port expects a WebSocket upgrade request (missing `Upgrade: websocket`)".into(),
        );
    }
    if !req.header_has_token("connection", "upgrade") {
        return Err(
            "this port expects a WebSocket upgrade request (missing `Connection: Upgrade`)".into(),
        );
    }
    match req.header("sec-websocket-version") {
        None => return Err("missing Sec-WebSocket-Version".into()),
        Some("13") => {}
        Some(v) => return Err(format!("{BAD_VERSION} {v:?} (only 13 is supported)")),
    }
    let Some(key) = req.header("sec-websocket-key") else {
        return Err("missing Sec-WebSocket-Key".into());
    };
    match BASE64_STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(()),
        _ => Err(format!(
            "invalid Sec-WebSocket-Key {key:?} (must be 16 bytes in base64)"
        )),
    }
}

/// A complete single-frame message.
fn single_message(text: bool, payload: BytesMut) -> Result<Message, ProtocolError> {
    if text {
        String::from_utf8(Vec::from(payload))
            .map(Message::Text)
            .map_err(|_| ProtocolError::InvalidUtf8)
    } else {
        Ok(Message::Binary(payload.freeze()))
    }
}

/// Validate the bytes of `data` after `*validated`; an incomplete sequence at the end is
/// accepted unless `fin`. Advances `*validated` over what is known valid.
fn validate_utf8(data: &[u8], validated: &mut usize, fin: bool) -> Result<(), ProtocolError> {
    match std::str::from_utf8(&data[*validated..]) {
        Ok(_) => {
            *validated = data.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() && !fin => {
            *validated += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(ProtocolError::InvalidUtf8),
    }
}

/// Turn a frame parser error into ours, with a readable message.
fn ws_error(e: WsError) -> ProtocolError {
    ProtocolError::Invalid(match e {
        WsError::UnmaskedFrame => "unmasked frame from a client".into(),
        WsError::MaskedFrame => "masked frame from a server".into(),
        WsError::InvalidOpcode(op) => format!("reserved opcode {op:#x}"),
        WsError::InvalidLength(n) => {
            format!("control frame of {n} bytes (at most {MAX_CONTROL} allowed)")
        }
        WsError::Io(e) => e.to_string(),
        other => other.to_string(),
    })
}

/// A data message's payload and opcode.
fn data_payload(msg: &Message) -> Result<(&[u8], OpCode), ProtocolError> {
    match msg {
        Message::Text(s) => Ok((s.as_bytes(), OpCode::Text)),
        Message::Binary(b) => Ok((&b[..], OpCode::Binary)),
        Message::Request(_) | Message::Response(_) | Message::Chunk(_) => {
            Err(ProtocolError::Encode(
                "a WebSocket connection sends text or binary messages, not HTTP".into(),
            ))
        }
    }
}

/// Encode a data message as one frame; `mask` for client-to-server frames.
fn encode_frame(msg: &Message, mask: bool) -> Result<Bytes, ProtocolError> {
    let (payload, op) = data_payload(msg)?;
    let mut dst = BytesMut::new();
    Parser::write_message(&mut dst, payload, op, true, mask);
    Ok(dst.freeze())
}

/// Encode a text or binary message as an unmasked server frame, independent of any connection
/// (a broadcast is encoded once for all its receivers).
pub fn encode_server(msg: &Message) -> Result<Bytes, ProtocolError> {
    encode_frame(msg, false)
}

impl Codec for WsCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        match (self.state, self.role) {
            (State::Handshake, Role::Server) => self.decode_upgrade(buf),
            (State::Handshake, Role::Client) => self.decode_response(buf),
            (State::AwaitingAccept | State::Refused, _) => Ok(None),
            (State::Open, _) => self.decode_frames(buf),
        }
    }

    fn encode(&mut self, msg: Message) -> Result<Bytes, ProtocolError> {
        if self.close_sent {
            return Err(ProtocolError::Encode(
                "the WebSocket session is closing".into(),
            ));
        }
        match self.deflate.as_mut() {
            None => encode_frame(&msg, self.masked()),
            Some(deflate) => {
                let (payload, op) = data_payload(&msg)?;
                let mut compressed = Vec::new();
                deflate.compress(payload, &mut compressed);
                let mut dst = BytesMut::with_capacity(compressed.len() + 14);
                Parser::write_message(&mut dst, compressed, op, true, self.role == Role::Client);
                dst[0] |= RSV1;
                Ok(dst.freeze())
            }
        }
    }

    fn error_reply(&mut self, err: &ProtocolError) -> Option<Bytes> {
        if self.error_replied {
            return None;
        }
        self.error_replied = true;
        match (self.state, self.role) {
            (State::Open, _) => {
                if self.close_sent {
                    return None;
                }
                let (code, reason) = match err {
                    ProtocolError::TooLarge { .. } => (CloseCode::Size, "message too large"),
                    ProtocolError::InvalidUtf8 => (CloseCode::Invalid, "invalid UTF-8"),
                    _ => (CloseCode::Protocol, "protocol error"),
                };
                Some(self.close_with(Some(code.into()), reason))
            }
            (State::Handshake | State::AwaitingAccept, Role::Server) => {
                let body = match err {
                    ProtocolError::Invalid(msg) => format!("{msg}\n"),
                    other => format!("{other}\n"),
                };
                let resp = match err {
                    ProtocolError::TooLarge { .. } | ProtocolError::HeadTooLarge { .. } => {
                        Response::text(431, body)
                    }
                    ProtocolError::HeadTimeout { .. } => Response::text(408, body),
                    _ if self.bad_version => {
                        Response::text(426, body).with_header("Sec-WebSocket-Version", "13")
                    }
                    _ => Response::text(400, body),
                };
                Some(resp.encode(false, false))
            }
            _ => None,
        }
    }

    fn close_frame(&mut self) -> Option<Bytes> {
        self.close_frame_with(CloseCode::Normal.into(), "")
    }

    fn close_frame_with(&mut self, code: u16, reason: &str) -> Option<Bytes> {
        if self.state != State::Open || self.close_sent {
            return None;
        }
        Some(self.close_with(Some(code), reason))
    }

    fn ping_frame(&mut self) -> Option<Bytes> {
        if self.state != State::Open || self.close_sent || self.close_received {
            return None;
        }
        Some(self.frame(b"werkmann", OpCode::Ping))
    }

    fn accept(&mut self, req: &Request, refusal: Option<Message>) -> Result<Bytes, Bytes> {
        if self.role != Role::Server || self.state != State::AwaitingAccept {
            log::warn!("WebSocket accept() without a pending handshake");
            return Err(Bytes::new());
        }
        if let Some(refusal) = refusal {
            self.state = State::Refused;
            let resp = match refusal {
                Message::Response(r) => *r,
                Message::Text(s) => Response::text(403, s),
                Message::Binary(b) => Response::new(403)
                    .with_header("Content-Type", "application/octet-stream")
                    .with_body(b),
                Message::Request(_) | Message::Chunk(_) => Response::text(403, "Forbidden\n"),
            };
            return Err(resp.encode(false, false));
        }
        let Some(key) = req.header("sec-websocket-key") else {
            self.state = State::Refused;
            return Err(Response::text(400, "missing Sec-WebSocket-Key\n").encode(false, false));
        };
        let accept = hash_key(key.as_bytes());
        let mut out = BytesMut::with_capacity(160);
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: ",
        );
        out.extend_from_slice(&accept);
        if self.compression {
            let offers = req
                .headers()
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|(_, v)| v.as_str());
            if let Some((agreed, answer)) = deflate::negotiate(offers, self.context_takeover) {
                out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
                out.extend_from_slice(answer.as_bytes());
                self.deflate = Some(Box::new(Deflate::new(agreed)));
            }
        }
        for (name, value) in std::mem::take(&mut self.extra_headers) {
            if name.eq_ignore_ascii_case("sec-websocket-protocol")
                && !req
                    .header("sec-websocket-protocol")
                    .is_some_and(|offered| offered.split(',').any(|p| p.trim() == value))
            {
                log::warn!("subprotocol {value:?} was not offered by the client; not sent");
                continue;
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(b"\r\nServer: werkmann\r\n\r\n");
        self.state = State::Open;
        Ok(out.freeze())
    }

    fn on_open(&mut self) -> Option<Bytes> {
        if self.role != Role::Client || self.state != State::Handshake {
            return None;
        }
        let key = BASE64_STANDARD.encode(rand::random::<[u8; 16]>());
        let mut head = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            self.path, self.host
        );
        let extra = self.extra_headers.iter();
        let mut agent = false;
        for (name, value) in extra {
            agent |= name.eq_ignore_ascii_case("user-agent");
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !agent {
            head.push_str("User-Agent: werkmann\r\n");
        }
        head.push_str("\r\n");
        self.key = Some(key);
        Some(Bytes::from(head))
    }

    fn is_open(&self) -> bool {
        self.state == State::Open
    }

    fn take_close_status(&mut self) -> Option<(u16, String)> {
        self.close_status.take()
    }

    fn add_handshake_header(&mut self, name: &str, value: &str) -> bool {
        let handshake_pending = match self.role {
            Role::Server => self.state == State::AwaitingAccept,
            Role::Client => self.state == State::Handshake && self.key.is_none(),
        };
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && !b":()<>@,;\\\"/[]?={}".contains(&b))
        };
        let field_value = |s: &str| s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if !handshake_pending {
            return false;
        }
        if !token(name) || !field_value(value) {
            log::warn!("handshake header {name:?}: {value:?} is not a valid header; not sent");
            return false;
        }
        self.extra_headers
            .push((name.to_owned(), value.trim().to_owned()));
        true
    }

    fn awaits_head(&self) -> bool {
        self.state == State::Handshake && self.role == Role::Server
    }

    fn wants_close(&self) -> bool {
        self.close_sent || self.state == State::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade_request(extra: &str) -> String {
        format!(
            "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\n{extra}\r\n"
        )
    }

    fn good_request() -> String {
        upgrade_request(&format!(
            "Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        ))
    }

    /// A server codec past the handshake.
    fn open_server(max: usize) -> WsCodec {
        let mut c = WsCodec::new_server(max);
        let mut buf = BytesMut::from(good_request().as_bytes());
        let Some(Decoded::Handshake(req)) = c.decode(&mut buf).unwrap() else {
            panic!("no handshake")
        };
        c.accept(&req, None).unwrap();
        assert!(buf.is_empty());
        c
    }

    /// A masked client-to-server frame.
    fn cf(payload: &[u8], op: OpCode, fin: bool) -> Vec<u8> {
        let mut dst = BytesMut::new();
        Parser::write_message(&mut dst, payload, op, fin, true);
        dst.to_vec()
    }

    /// An unmasked server-to-client frame.
    fn sf(payload: &[u8], op: OpCode, fin: bool) -> Vec<u8> {
        let mut dst = BytesMut::new();
        Parser::write_message(&mut dst, payload, op, fin, false);
        dst.to_vec()
    }

    /// Parse one frame that `side_is_server` receives.
    fn parse(bytes: &[u8], side_is_server: bool) -> (bool, OpCode, Vec<u8>) {
        let mut buf = BytesMut::from(bytes);
        let (fin, op, pl) = Parser::parse(&mut buf, side_is_server, 1 << 20)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty(), "one frame expected");
        (fin, op, pl.map(|p| p.to_vec()).unwrap_or_default())
    }

    fn text(d: Option<Decoded>) -> String {
        match d {
            Some(Decoded::Message(Message::Text(s))) => s,
            other => panic!("expected text, got {other:?}"),
        }
    }

    /// Decode a failing handshake; return the error and the HTTP reply.
    fn refuse(req: &str) -> (ProtocolError, String) {
        let mut c = WsCodec::new_server(1024);
        let mut buf = BytesMut::from(req.as_bytes());
        let err = c.decode(&mut buf).unwrap_err();
        let reply = c.error_reply(&err).unwrap();
        assert!(c.error_reply(&err).is_none(), "replies once");
        (err, String::from_utf8(reply.to_vec()).unwrap())
    }

    #[test]
    fn rfc_example_key() {
        assert_eq!(
            &hash_key(KEY.as_bytes())[..],
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn handshake_accept() {
        let mut c = WsCodec::new_server(1024);
        assert!(!c.is_open());
        let mut buf = BytesMut::from(&good_request().as_bytes()[..20]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        let mut buf = BytesMut::from(good_request().as_bytes());
        buf.extend_from_slice(&cf(b"early", OpCode::Text, true));
        let Some(Decoded::Handshake(req)) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(req.path(), "/chat");
        // Until accepted, frames stay in the buffer.
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert!(!buf.is_empty());
        assert!(!c.is_open());
        let resp = c.accept(&req, None).unwrap();
        let resp = std::str::from_utf8(&resp).unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{resp}"
        );
        assert!(resp.contains("\r\nUpgrade: websocket\r\n"));
        assert!(resp.contains("\r\nConnection: Upgrade\r\n"));
        assert!(resp.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!resp
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"));
        assert!(!resp.to_ascii_lowercase().contains("sec-websocket-protocol"));
        assert!(resp.ends_with("\r\n\r\n"));
        assert!(c.is_open());
        assert_eq!(text(c.decode(&mut buf).unwrap()), "early");
    }

    #[test]
    fn handshake_missing_key() {
        let (err, reply) = refuse(&upgrade_request("Sec-WebSocket-Version: 13\r\n"));
        assert!(matches!(err, ProtocolError::Invalid(ref m) if m.contains("Sec-WebSocket-Key")));
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
        assert!(reply.contains("Connection: close\r\n"));
        assert!(reply.ends_with("missing Sec-WebSocket-Key\n"));
    }

    #[test]
    fn handshake_bad_key() {
        let (_, reply) = refuse(&upgrade_request(
            "Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n",
        ));
        assert!(reply.starts_with("HTTP/1.1 400"));
        assert!(reply.contains("invalid Sec-WebSocket-Key"));
    }

    #[test]
    fn handshake_bad_version() {
        let (_, reply) = refuse(&upgrade_request(&format!(
            "Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n"
        )));
        assert!(
            reply.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{reply}"
        );
        assert!(reply.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(reply.contains("Connection: close\r\n"));
        let (_, reply) = refuse(&upgrade_request(&format!("Sec-WebSocket-Key: {KEY}\r\n")));
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        assert!(reply.contains("missing Sec-WebSocket-Version"));
    }

    #[test]
    fn handshake_not_get() {
        let req = good_request().replacen("GET", "POST", 1);
        let (_, reply) = refuse(&req);
        assert!(reply.starts_with("HTTP/1.1 400"));
        assert!(reply.contains("must be a GET request, not POST"));
        let req = good_request().replacen("HTTP/1.1", "HTTP/1.0", 1);
        let (_, reply) = refuse(&req);
        assert!(reply.contains("requires HTTP/1.1"));
    }

    #[test]
    fn handshake_not_an_upgrade() {
        let (err, reply) = refuse("GET / HTTP/1.1\r\nHost: localhost\r\nAccept: text/html\r\n\r\n");
        assert!(matches!(err, ProtocolError::Invalid(_)));
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(reply.contains("expects a WebSocket upgrade request"));
        let req = good_request().replace("keep-alive, Upgrade", "keep-alive");
        let (_, reply) = refuse(&req);
        assert!(reply.contains("Connection: Upgrade"));
    }

    #[test]
    fn handshake_head_too_large() {
        let mut c = WsCodec::new_server(1024);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        buf.extend_from_slice(&vec![b'a'; MAX_HEAD + 1]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::HeadTooLarge { .. }));
        assert!(c.error_reply(&err).unwrap().starts_with(b"HTTP/1.1 431"));
    }

    #[test]
    fn handshake_refused_by_worker() {
        let mut c = WsCodec::new_server(1024);
        let mut buf = BytesMut::from(good_request().as_bytes());
        let Some(Decoded::Handshake(req)) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        let reply = c.accept(&req, Some(Message::from("go away"))).unwrap_err();
        let reply = std::str::from_utf8(&reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(reply.contains("Connection: close\r\n"));
        assert!(reply.ends_with("go away"));
        assert!(!c.is_open());
        assert!(c.wants_close());
        assert!(c.decode(&mut buf).unwrap().is_none());

        let mut c = WsCodec::new_server(1024);
        let mut buf = BytesMut::from(good_request().as_bytes());
        let Some(Decoded::Handshake(req)) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        let refusal = Response::text(401, "who are you?").with_header("WWW-Authenticate", "Basic");
        let reply = c.accept(&req, Some(refusal.into())).unwrap_err();
        let reply = std::str::from_utf8(&reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(reply.contains("WWW-Authenticate: Basic\r\n"));
        assert!(reply.contains("Connection: close\r\n"));
    }

    #[test]
    fn sends_before_accept() {
        let mut c = WsCodec::new_server(1024);
        assert!(!c.is_open());
        assert!(c.close_frame().is_none());
        let mut buf = BytesMut::from(good_request().as_bytes());
        let Some(Decoded::Handshake(req)) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert!(!c.is_open(), "sends are held until accepted");
        assert!(c.close_frame().is_none());
        c.accept(&req, None).unwrap();
        assert!(c.is_open());
        let frame = c.encode(Message::from("queued")).unwrap();
        assert_eq!(
            parse(&frame, false),
            (true, OpCode::Text, b"queued".to_vec())
        );
    }

    #[test]
    fn single_frames() {
        let mut c = open_server(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&cf("héllo".as_bytes(), OpCode::Text, true));
        buf.extend_from_slice(&cf(&[0, 1, 2, 255], OpCode::Binary, true));
        buf.extend_from_slice(&cf(b"", OpCode::Text, true));
        buf.extend_from_slice(&cf(&[7; 300], OpCode::Binary, true));
        assert_eq!(text(c.decode(&mut buf).unwrap()), "héllo");
        match c.decode(&mut buf).unwrap() {
            Some(Decoded::Message(Message::Binary(b))) => assert_eq!(&b[..], &[0, 1, 2, 255]),
            other => panic!("{other:?}"),
        }
        assert_eq!(text(c.decode(&mut buf).unwrap()), "");
        match c.decode(&mut buf).unwrap() {
            Some(Decoded::Message(Message::Binary(b))) => assert_eq!(&b[..], &[7; 300][..]),
            other => panic!("{other:?}"),
        }
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_wait() {
        let mut c = open_server(1024);
        let frame = cf(&[9; 200], OpCode::Binary, true);
        let mut buf = BytesMut::new();
        for (i, b) in frame.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let d = c.decode(&mut buf).unwrap();
            if i + 1 < frame.len() {
                assert!(d.is_none(), "byte {i}");
            } else {
                assert!(matches!(d, Some(Decoded::Message(Message::Binary(_)))));
            }
        }
    }

    #[test]
    fn encode_frames() {
        let mut c = open_server(1024);
        let f = c.encode(Message::from(&b"\x01\x02"[..])).unwrap();
        assert_eq!(parse(&f, false), (true, OpCode::Binary, vec![1, 2]));
        let big = "x".repeat(70_000);
        let f = c.encode(Message::from(big.clone())).unwrap();
        assert_eq!(parse(&f, false), (true, OpCode::Text, big.into_bytes()));
        assert!(matches!(
            c.encode(Message::from(Response::new(200))),
            Err(ProtocolError::Encode(_))
        ));
        let shared = encode_server(&Message::from("all")).unwrap();
        assert_eq!(parse(&shared, false), (true, OpCode::Text, b"all".to_vec()));
        assert!(encode_server(&Message::from(Request::default())).is_err());
    }

    #[test]
    fn fragmented_text_with_ping() {
        let mut c = open_server(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&cf(b"Hel", OpCode::Text, false));
        buf.extend_from_slice(&cf(b"lo, ", OpCode::Continue, false));
        buf.extend_from_slice(&cf(b"are you there?", OpCode::Ping, true));
        buf.extend_from_slice(&cf(b"ignored", OpCode::Pong, true));
        buf.extend_from_slice(&cf(b"world", OpCode::Continue, true));
        let Some(Decoded::Ping { pong, .. }) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(
            parse(&pong, false),
            (true, OpCode::Pong, b"are you there?".to_vec())
        );
        assert!(matches!(
            c.decode(&mut buf).unwrap(),
            Some(Decoded::Pong(p)) if &p[..] == b"ignored"
        ));
        assert_eq!(text(c.decode(&mut buf).unwrap()), "Hello, world");
        assert!(buf.is_empty());
    }

    #[test]
    fn fragmented_binary() {
        let mut c = open_server(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&cf(&[1, 2], OpCode::Binary, false));
        buf.extend_from_slice(&cf(&[], OpCode::Continue, false));
        buf.extend_from_slice(&cf(&[3], OpCode::Continue, true));
        match c.decode(&mut buf).unwrap() {
            Some(Decoded::Message(Message::Binary(b))) => assert_eq!(&b[..], &[1, 2, 3]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn utf8_split_across_fragments() {
        // "é" is C3 A9: split over two fragments, it is fine.
        let mut c = open_server(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&cf(b"caf\xc3", OpCode::Text, false));
        buf.extend_from_slice(&cf(b"\xa9!", OpCode::Continue, true));
        assert_eq!(text(c.decode(&mut buf).unwrap()), "café!");

        // C3 followed by '(' is invalid: fails on the second fragment, before the final one.
        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&cf(b"ok \xc3", OpCode::Text, false)[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&cf(b"(more", OpCode::Continue, false));
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::InvalidUtf8));
        let close = c.error_reply(&err).unwrap();
        let (_, op, pl) = parse(&close, false);
        assert_eq!(op, OpCode::Close);
        assert_eq!(&pl[..2], &1007u16.to_be_bytes());

        // An invalid byte in the first fragment fails at once.
        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&cf(b"\xff", OpCode::Text, false)[..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(ProtocolError::InvalidUtf8)
        ));

        // A sequence left incomplete by the final fragment is invalid.
        let mut c = open_server(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&cf(b"a", OpCode::Text, false));
        buf.extend_from_slice(&cf(b"\xe2\x82", OpCode::Continue, true));
        assert!(matches!(
            c.decode(&mut buf),
            Err(ProtocolError::InvalidUtf8)
        ));

        // Single frame.
        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&cf(b"\xc3(", OpCode::Text, true)[..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(ProtocolError::InvalidUtf8)
        ));
    }

    #[test]
    fn continuation_errors() {
        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&cf(b"x", OpCode::Continue, true)[..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Invalid(ref m) if m.contains("continuation")));
        let close = c.error_reply(&err).unwrap();
        assert_eq!(&parse(&close, false).2[..2], &1002u16.to_be_bytes());
        assert!(c.error_reply(&err).is_none(), "only once");

        let mut c = open_server(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&cf(b"a", OpCode::Text, false));
        buf.extend_from_slice(&cf(b"b", OpCode::Binary, true));
        assert!(matches!(c.decode(&mut buf), Err(ProtocolError::Invalid(_))));
    }

    #[test]
    fn unmasked_frame_refused() {
        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&sf(b"hi", OpCode::Text, true)[..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Invalid(ref m) if m.contains("unmasked")));
    }

    #[test]
    fn rsv_bits_refused() {
        let mut c = open_server(1024);
        let mut frame = cf(b"hi", OpCode::Text, true);
        frame[0] |= 0x40; // RSV1, as permessage-deflate would set it
        let mut buf = BytesMut::from(&frame[..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Invalid(ref m) if m.contains("reserved bits")));
    }

    #[test]
    fn reserved_opcode_refused() {
        for op in [3u8, 7, 0xB, 0xF] {
            let mut c = open_server(1024);
            let mut frame = cf(b"hi", OpCode::Text, true);
            frame[0] = 0x80 | op;
            let mut buf = BytesMut::from(&frame[..]);
            let err = c.decode(&mut buf).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Invalid(ref m) if m.contains("opcode")),
                "{op}: {err}"
            );
        }
    }

    #[test]
    fn control_frame_rules() {
        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&cf(b"p", OpCode::Ping, false)[..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Invalid(ref m) if m.contains("fragmented control")));

        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&cf(&[0; 126], OpCode::Ping, true)[..4]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Invalid(ref m) if m.contains("126 bytes")));

        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&cf(b"", OpCode::Ping, true)[..]);
        let Some(Decoded::Ping { pong, .. }) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(parse(&pong, false), (true, OpCode::Pong, vec![]));
    }

    #[test]
    fn oversize_frame_refused_from_header() {
        let mut c = open_server(1024);
        // Announce 1 GiB with a 64-bit length; give nothing but the header.
        let mut buf = BytesMut::from(&[0x82u8, 0x80 | 127][..]);
        buf.extend_from_slice(&(1u64 << 30).to_be_bytes());
        let err = c.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, ProtocolError::TooLarge { size, limit: 1024 } if size == 1 << 30),
            "{err}"
        );
        let close = c.error_reply(&err).unwrap();
        let (_, op, pl) = parse(&close, false);
        assert_eq!(op, OpCode::Close);
        assert_eq!(&pl[..2], &1009u16.to_be_bytes());

        // 16-bit length just over the limit.
        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&[0x81u8, 0x80 | 126, 0x04, 0x01][..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(ProtocolError::TooLarge { size: 1025, .. })
        ));

        // Exactly at the limit is fine.
        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&cf(&[1; 1024], OpCode::Binary, true)[..]);
        assert!(matches!(c.decode(&mut buf), Ok(Some(Decoded::Message(_)))));
    }

    #[test]
    fn oversize_reassembled_message() {
        let mut c = open_server(100);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&cf(&[b'a'; 60], OpCode::Text, false));
        buf.extend_from_slice(&cf(&[b'b'; 40], OpCode::Continue, false));
        assert!(c.decode(&mut buf).unwrap().is_none());
        // The header of the next fragment alone is enough to refuse.
        buf.extend_from_slice(&cf(&[b'c'; 1], OpCode::Continue, true)[..2]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::TooLarge {
                size: 101,
                limit: 100
            }
        ));
    }

    #[test]
    fn close_with_code() {
        let mut c = open_server(1024);
        let mut buf = BytesMut::new();
        let mut payload = 4001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye now");
        buf.extend_from_slice(&cf(&payload, OpCode::Close, true));
        buf.extend_from_slice(&cf(b"after", OpCode::Text, true));
        let Some(Decoded::Close { reply, reason }) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert!(
            reason.contains("4001") && reason.contains("bye now"),
            "{reason}"
        );
        let (fin, op, pl) = parse(&reply.unwrap(), false);
        assert!(fin);
        assert_eq!(op, OpCode::Close);
        assert_eq!(pl, 4001u16.to_be_bytes().to_vec());
        assert!(
            c.decode(&mut buf).unwrap().is_none(),
            "nothing after a close"
        );
        assert!(c.close_frame().is_none(), "close already sent");
        assert!(c.error_reply(&ProtocolError::invalid("x")).is_none());
    }

    #[test]
    fn close_status_reported_once() {
        // The peer's code and reason.
        let mut c = open_server(1024);
        let mut payload = 4001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut buf = BytesMut::from(&cf(&payload, OpCode::Close, true)[..]);
        c.decode(&mut buf).unwrap();
        assert_eq!(c.take_close_status(), Some((4001, "bye".to_owned())));
        assert_eq!(c.take_close_status(), None);
        // None in the frame: 1005.
        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&cf(b"", OpCode::Close, true)[..]);
        c.decode(&mut buf).unwrap();
        assert_eq!(c.take_close_status(), Some((1005, String::new())));
        // Ours first: the peer's answer is not reported again.
        let mut c = open_server(1024);
        c.close_frame().unwrap();
        assert_eq!(c.take_close_status(), Some((1000, String::new())));
        let mut buf = BytesMut::from(&cf(&1000u16.to_be_bytes(), OpCode::Close, true)[..]);
        let _ = c.decode(&mut buf);
        assert_eq!(c.take_close_status(), None);
        // A protocol error's code.
        let mut c = open_server(1024);
        c.error_reply(&ProtocolError::InvalidUtf8).unwrap();
        assert_eq!(
            c.take_close_status(),
            Some((1007, "invalid UTF-8".to_owned()))
        );
    }

    #[test]
    fn handshake_headers_and_subprotocol() {
        let mut c = WsCodec::new_server(1024);
        let req = upgrade_request(&format!(
            "Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: chat, superchat\r\n"
        ));
        let mut buf = BytesMut::from(req.as_bytes());
        let Some(Decoded::Handshake(req)) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert!(c.add_handshake_header("Sec-WebSocket-Protocol", "superchat"));
        assert!(c.add_handshake_header("X-Served-By", "werkmann 1"));
        assert!(!c.add_handshake_header("X-Bad", "a\r\nSet-Cookie: x"));
        assert!(!c.add_handshake_header("Bad Name", "v"));
        let resp = String::from_utf8(c.accept(&req, None).unwrap().to_vec()).unwrap();
        assert!(
            resp.contains("\r\nSec-WebSocket-Protocol: superchat\r\n"),
            "{resp}"
        );
        assert!(resp.contains("\r\nX-Served-By: werkmann 1\r\n"), "{resp}");
        assert!(
            !resp.contains("X-Bad") && !resp.contains("Set-Cookie"),
            "{resp}"
        );
        assert!(
            !c.add_handshake_header("X-Late", "v"),
            "only before the answer"
        );

        // A protocol the client did not offer is not sent.
        let mut c = WsCodec::new_server(1024);
        let mut buf = BytesMut::from(good_request().as_bytes());
        let Some(Decoded::Handshake(req)) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert!(c.add_handshake_header("Sec-WebSocket-Protocol", "chat"));
        let resp = String::from_utf8(c.accept(&req, None).unwrap().to_vec()).unwrap();
        assert!(!resp.contains("Sec-WebSocket-Protocol"), "{resp}");
    }

    #[test]
    fn close_without_code() {
        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&cf(b"", OpCode::Close, true)[..]);
        let Some(Decoded::Close { reply, reason }) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert!(reason.contains("without a status code"));
        assert_eq!(parse(&reply.unwrap(), false), (true, OpCode::Close, vec![]));
    }

    #[test]
    fn close_invalid() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            let mut c = open_server(1024);
            let mut buf = BytesMut::from(&cf(&code.to_be_bytes(), OpCode::Close, true)[..]);
            let err = c.decode(&mut buf).unwrap_err();
            assert!(matches!(err, ProtocolError::Invalid(ref m) if m.contains("close code")));
            let close = c.error_reply(&err).unwrap();
            assert_eq!(
                &parse(&close, false).2[..2],
                &1002u16.to_be_bytes(),
                "{code}"
            );
        }

        let mut c = open_server(1024);
        let mut buf = BytesMut::from(&cf(&[3], OpCode::Close, true)[..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Invalid(ref m) if m.contains("1-byte")));
        let close = c.error_reply(&err).unwrap();
        assert_eq!(&parse(&close, false).2[..2], &1002u16.to_be_bytes());

        let mut c = open_server(1024);
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"\xff\xfe");
        let mut buf = BytesMut::from(&cf(&payload, OpCode::Close, true)[..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::InvalidUtf8));
        assert_eq!(
            &parse(&c.error_reply(&err).unwrap(), false).2[..2],
            &1007u16.to_be_bytes()
        );
    }

    #[test]
    fn close_frame_sent_once() {
        let mut c = open_server(1024);
        let close = c.close_frame().unwrap();
        assert_eq!(
            parse(&close, false),
            (true, OpCode::Close, 1000u16.to_be_bytes().to_vec())
        );
        assert!(c.close_frame().is_none());
        assert!(c.wants_close());
        assert!(c.encode(Message::from("late")).is_err());
        let mut buf = BytesMut::from(&cf(b"x", OpCode::Text, true)[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert!(c.error_reply(&ProtocolError::InvalidUtf8).is_none());
    }

    #[test]
    fn client_round_trip() {
        let mut client = WsCodec::new_client("127.0.0.1:2206", "/chat?room=1", 1024);
        let mut server = WsCodec::new_server(1024);
        assert!(!client.is_open());
        let hello = client.on_open().unwrap();
        let head = std::str::from_utf8(&hello).unwrap();
        assert!(head.starts_with("GET /chat?room=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nHost: 127.0.0.1:2206\r\n"));
        assert!(head.contains("\r\nSec-WebSocket-Version: 13\r\n"));

        let mut sbuf = BytesMut::from(&hello[..]);
        let Some(Decoded::Handshake(req)) = server.decode(&mut sbuf).unwrap() else {
            panic!()
        };
        assert_eq!(req.header("host"), Some("127.0.0.1:2206"));
        let resp = server.accept(&req, None).unwrap();

        // The 101 and a first frame arrive together.
        let mut cbuf = BytesMut::from(&resp[..]);
        cbuf.extend_from_slice(&server.encode(Message::from("welcome")).unwrap());
        assert!(matches!(
            client.decode(&mut cbuf).unwrap(),
            Some(Decoded::Opened(_))
        ));
        assert!(client.is_open());
        assert_eq!(text(client.decode(&mut cbuf).unwrap()), "welcome");

        // Client frames are masked and the server reads them.
        let frame = client.encode(Message::from(&b"\x00\x01"[..])).unwrap();
        assert_ne!(frame[1] & 0x80, 0, "masked");
        sbuf.extend_from_slice(&frame);
        match server.decode(&mut sbuf).unwrap() {
            Some(Decoded::Message(Message::Binary(b))) => assert_eq!(&b[..], &[0, 1]),
            other => panic!("{other:?}"),
        }

        // Fragmented server text with a ping in between; the client's pong is masked.
        cbuf.extend_from_slice(&sf(b"frag", OpCode::Text, false));
        cbuf.extend_from_slice(&sf(b"hb", OpCode::Ping, true));
        cbuf.extend_from_slice(&sf(b"ment", OpCode::Continue, true));
        let Some(Decoded::Ping { pong, payload }) = client.decode(&mut cbuf).unwrap() else {
            panic!()
        };
        assert_eq!(parse(&pong, true), (true, OpCode::Pong, b"hb".to_vec()));
        assert_eq!(text(client.decode(&mut cbuf).unwrap()), "fragment");
        sbuf.extend_from_slice(&pong);
        assert_eq!(&payload[..], b"hb");
        assert!(
            matches!(server.decode(&mut sbuf).unwrap(), Some(Decoded::Pong(p)) if &p[..] == b"hb"),
            "pong reported"
        );

        // A masked frame from the server is refused by the client.
        let mut bad = BytesMut::from(&cf(b"x", OpCode::Text, true)[..]);
        let mut c2 = WsCodec::new_client("h", "/", 1024);
        c2.state = State::Open;
        assert!(
            matches!(c2.decode(&mut bad), Err(ProtocolError::Invalid(ref m)) if m.contains("masked"))
        );

        // The server closes; the client echoes a masked close.
        let close = server.close_frame().unwrap();
        cbuf.extend_from_slice(&close);
        let Some(Decoded::Close { reply, .. }) = client.decode(&mut cbuf).unwrap() else {
            panic!()
        };
        assert_eq!(
            parse(&reply.unwrap(), true),
            (true, OpCode::Close, 1000u16.to_be_bytes().to_vec())
        );
    }

    #[test]
    fn client_error_close_is_masked() {
        let mut client = WsCodec::new_client("h", "/", 10);
        client.state = State::Open;
        let mut buf = BytesMut::from(&sf(&[0; 11], OpCode::Binary, true)[..]);
        let err = client.decode(&mut buf).unwrap_err();
        let close = client.error_reply(&err).unwrap();
        assert_eq!(&parse(&close, true).2[..2], &1009u16.to_be_bytes());
    }

    fn client_against(resp: impl FnOnce(&str) -> String) -> Result<Option<Decoded>, ProtocolError> {
        let mut client = WsCodec::new_client("h", "/", 1024);
        let hello = client.on_open().unwrap();
        let head = std::str::from_utf8(&hello).unwrap();
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        assert_eq!(BASE64_STANDARD.decode(key).unwrap().len(), 16);
        let mut buf = BytesMut::from(resp(key).as_bytes());
        let r = client.decode(&mut buf);
        if let Err(e) = &r {
            assert!(client.error_reply(e).is_none());
            assert!(!client.is_open());
        }
        r
    }

    #[test]
    fn client_handshake_failures() {
        let err =
            client_against(|_| "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_owned())
                .unwrap_err();
        assert!(err.to_string().contains("HTTP/1.1 403 Forbidden"), "{err}");

        let err = client_against(|_| {
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                .to_owned()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("wrong Sec-WebSocket-Accept"),
            "{err}"
        );
        assert!(err.to_string().contains("101 Switching Protocols"), "{err}");

        let ok = |key: &str| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n",
                std::str::from_utf8(&hash_key(key.as_bytes())).unwrap()
            )
        };
        assert!(matches!(
            client_against(|k| ok(k) + "\r\n"),
            Ok(Some(Decoded::Opened(_)))
        ));
        assert!(
            client_against(|k| ok(k) + "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
                .is_err()
        );
        assert!(client_against(|k| ok(k).replace("Upgrade: websocket\r\n", "") + "\r\n").is_err());
        // An incomplete head waits.
        assert!(matches!(client_against(|k| ok(k)), Ok(None)));
    }

    /// A server codec with compression, past a handshake that offered `offer`.
    fn open_deflate(max: usize, offer: &str) -> (WsCodec, String) {
        let mut c = WsCodec::new_server(max).with_compression(true, true);
        let req = upgrade_request(&format!(
            "Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: {offer}\r\n"
        ));
        let mut buf = BytesMut::from(req.as_bytes());
        let Some(Decoded::Handshake(req)) = c.decode(&mut buf).unwrap() else {
            panic!("no handshake")
        };
        let resp = c.accept(&req, None).unwrap();
        (c, String::from_utf8(resp.to_vec()).unwrap())
    }

    fn peer_deflate() -> Deflate {
        Deflate::new(deflate::Agreed {
            send_no_context_takeover: false,
            send_window_bits: 15,
            recv_no_context_takeover: false,
        })
    }

    /// A masked client frame with RSV1 set.
    fn compressed_cf(payload: &[u8], op: OpCode, fin: bool) -> Vec<u8> {
        let mut f = cf(payload, op, fin);
        f[0] |= RSV1;
        f
    }

    #[test]
    fn deflate_negotiated_only_when_enabled_and_offered() {
        let (c, resp) = open_deflate(1024, "permessage-deflate; client_max_window_bits");
        assert!(c.compressed());
        assert!(
            resp.contains("\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"),
            "{resp}"
        );
        let (c, resp) = open_deflate(1024, "permessage-deflate; bogus, x-other");
        assert!(!c.compressed());
        assert!(!resp.contains("Extensions"), "{resp}");
        // Not enabled: the offer is ignored, RSV1 stays refused.
        let mut c = open_server(1024);
        assert!(!c.compressed());
        let mut buf = BytesMut::from(&compressed_cf(b"x", OpCode::Text, true)[..]);
        assert!(c.decode(&mut buf).is_err());
    }

    #[test]
    fn deflate_messages_both_ways() {
        let (mut c, _) = open_deflate(1 << 20, "permessage-deflate");
        let mut peer = peer_deflate();
        // One compressed text frame, then one fragmented over three frames with a ping inside.
        let mut wire = Vec::new();
        peer.compress("hello hello hello".as_bytes(), &mut wire);
        let mut buf = BytesMut::from(&compressed_cf(&wire, OpCode::Text, true)[..]);
        assert_eq!(text(c.decode(&mut buf).unwrap()), "hello hello hello");
        let big = "werkmann ".repeat(1000);
        let mut wire = Vec::new();
        peer.compress(big.as_bytes(), &mut wire);
        let (a, b) = wire.split_at(wire.len() / 3);
        let (b, d) = b.split_at(b.len() / 2);
        buf.extend_from_slice(&compressed_cf(a, OpCode::Text, false));
        buf.extend_from_slice(&cf(b, OpCode::Continue, false));
        buf.extend_from_slice(&cf(b"hb", OpCode::Ping, true));
        buf.extend_from_slice(&cf(d, OpCode::Continue, true));
        assert!(matches!(
            c.decode(&mut buf).unwrap(),
            Some(Decoded::Ping { .. })
        ));
        assert_eq!(text(c.decode(&mut buf).unwrap()), big);
        // An uncompressed message still reads.
        buf.extend_from_slice(&cf(b"plain", OpCode::Binary, true));
        assert!(matches!(
            c.decode(&mut buf).unwrap(),
            Some(Decoded::Message(Message::Binary(b))) if &b[..] == b"plain"
        ));
        // What the server sends is compressed, RSV1 on the frame, and inflates.
        let frame = c.encode(Message::from(big.clone())).unwrap();
        assert_eq!(frame[0], 0x80 | RSV1 | 0x1);
        let mut fb = BytesMut::from(&frame[..]);
        fb[0] &= !RSV1;
        let (_, _, payload) = parse(&fb, false);
        assert!(payload.len() < big.len() / 10);
        let mut out = BytesMut::new();
        peer.decompress(&payload, true, &mut out, 1 << 20).unwrap();
        assert_eq!(&out[..], big.as_bytes());
        // Split headers wait without losing RSV1.
        let mut wire = Vec::new();
        peer.compress(b"again", &mut wire);
        let f = compressed_cf(&wire, OpCode::Text, true);
        let mut buf = BytesMut::from(&f[..3]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&f[3..]);
        assert_eq!(text(c.decode(&mut buf).unwrap()), "again");
    }

    #[test]
    fn deflate_rsv1_rules_and_bombs() {
        // RSV1 on a continuation or a control frame is a protocol error.
        for frames in [
            [
                cf(b"a", OpCode::Text, false),
                compressed_cf(b"b", OpCode::Continue, true),
            ],
            [compressed_cf(b"", OpCode::Ping, true), vec![]],
        ] {
            let (mut c, _) = open_deflate(1024, "permessage-deflate");
            let mut buf = BytesMut::from(&frames.concat()[..]);
            let err = c.decode(&mut buf).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Invalid(ref m) if m.contains("RSV1")),
                "{err}"
            );
            assert_eq!(
                &parse(&c.error_reply(&err).unwrap(), false).2[..2],
                &1002u16.to_be_bytes()
            );
        }
        // A message that inflates past the limit is refused with 1009.
        let (mut c, _) = open_deflate(64 * 1024, "permessage-deflate");
        let mut wire = Vec::new();
        peer_deflate().compress(&vec![b'a'; 1 << 20], &mut wire);
        assert!(wire.len() < 4096);
        let mut buf = BytesMut::from(&compressed_cf(&wire, OpCode::Binary, true)[..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, ProtocolError::TooLarge { limit: 65536, .. }),
            "{err}"
        );
        assert_eq!(
            &parse(&c.error_reply(&err).unwrap(), false).2[..2],
            &1009u16.to_be_bytes()
        );
        // Invalid compressed data, and invalid UTF-8 once inflated.
        let (mut c, _) = open_deflate(1024, "permessage-deflate");
        let mut buf = BytesMut::from(&compressed_cf(&[0xff; 8], OpCode::Binary, true)[..]);
        assert!(matches!(c.decode(&mut buf), Err(ProtocolError::Invalid(_))));
        let (mut c, _) = open_deflate(1024, "permessage-deflate");
        let mut wire = Vec::new();
        peer_deflate().compress(b"\xc3(", &mut wire);
        let mut buf = BytesMut::from(&compressed_cf(&wire, OpCode::Text, true)[..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(ProtocolError::InvalidUtf8)
        ));
    }

    #[test]
    fn new_by_role() {
        assert_eq!(WsCodec::new(Role::Server, 1).role(), Role::Server);
        let mut c = WsCodec::new(Role::Client, 1);
        assert!(c
            .on_open()
            .unwrap()
            .starts_with(b"GET / HTTP/1.1\r\nHost: localhost\r\n"));
        assert!(WsCodec::new_server(1).on_open().is_none());
    }
}
