//! Server-Sent Events clients: the request (`Accept: text/event-stream`, `Last-Event-ID` to
//! resume), the response body (chunked from werkmann, plain until the connection closes from
//! Nchan), the event stream's lines, and the generator workers' streams for the SSE rows
//! (`sse_rows.rs`): each event's `data` is a push, checked and timed as the WebSocket
//! clients' are (`client.rs`), and each stream's event ids must come in order.
//!
//! - werkmann: `GET /sse?channel=Broadcast` on the publisher's port; a first `id:` as soon as
//!   the stream stands, then `id: EPOCH:OFFSET` + `data: X` per push; a resumed stream first
//!   sends `event: recovery` (docs/recovery.md).
//! - Nchan: `GET /ssesub/broadcast` (`nchan_subscriber eventsource`), `id: TIME:TAG` +
//!   `data: X` per message; a `: hi` comment first.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{connect_from, Batch, ClientState, Shared};
use crate::clock::mono_ns;
use crate::proto::{Address, Flavor};

/// Bytes read per readiness.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// The stream's path on each server (the seed's broadcasts, Nchan's `broadcast` channel of
/// the SSE group).
pub fn path(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::NchanSse => "/ssesub/broadcast",
        _ => "/sse?channel=Broadcast",
    }
}

/// The request for a stream at `path`, resuming after `last` when given.
pub fn request(target: SocketAddr, path: &str, last: Option<&str>) -> String {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\n"
    );
    if let Some(id) = last {
        r.push_str("Last-Event-ID: ");
        r.push_str(id);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

/// Connect stream `idx` from its loopback source address to `target`, ask for `path`
/// (resuming after `last`) and read the response head: it must be a 200 of
/// `text/event-stream`. Returns the stream, its body decoder and the body bytes read past the
/// head.
pub async fn connect(
    idx: u32,
    target: SocketAddr,
    path: &str,
    last: Option<&str>,
) -> Result<(TcpStream, Body, Vec<u8>)> {
    let mut stream = connect_from(idx, target, None).await?;
    stream
        .write_all(request(target, path, last).as_bytes())
        .await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_string();
            let body = Body::of_head(&head)?;
            buf.drain(..p + 4);
            return Ok((stream, body, buf));
        }
        ensure!(buf.len() < 16384, "response head too long");
        ensure!(
            stream.read_buf(&mut buf).await? > 0,
            "closed before the response head"
        );
    }
}

/// A response body being decoded: chunked (werkmann) or plain until the end (Nchan).
#[derive(Debug, Default)]
pub struct Body {
    chunked: bool,
    /// Chunk data bytes still due.
    data_left: usize,
    /// Bytes of the CRLF after a chunk's data still due.
    crlf_left: u8,
    /// The last chunk came: the server ended the stream.
    pub ended: bool,
}

impl Body {
    /// The decoder a response head asks for; `Err` unless it is a 200 event stream.
    pub fn of_head(head: &str) -> Result<Body> {
        let status = head.lines().next().unwrap_or("");
        ensure!(
            status.starts_with("HTTP/1.1 200"),
            "stream refused: {status}"
        );
        let (mut events, mut chunked) = (false, false);
        for line in head.lines().skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("content-type") {
                    events = v.starts_with("text/event-stream");
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.eq_ignore_ascii_case("chunked");
                }
            }
        }
        ensure!(events, "not an event stream: {head}");
        Ok(Body {
            chunked,
            ..Body::default()
        })
    }

    /// Decode what `raw` holds into `out`; returns the bytes of `raw` used (the rest, an
    /// incomplete chunk-size line, is due again with more).
    pub fn feed(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        if !self.chunked {
            out.extend_from_slice(raw);
            return Ok(raw.len());
        }
        let mut pos = 0;
        loop {
            if self.ended {
                return Ok(raw.len());
            }
            if self.data_left > 0 {
                let n = self.data_left.min(raw.len() - pos);
                out.extend_from_slice(&raw[pos..pos + n]);
                pos += n;
                self.data_left -= n;
                if self.data_left > 0 {
                    return Ok(pos);
                }
                self.crlf_left = 2;
            }
            while self.crlf_left > 0 {
                let Some(&c) = raw.get(pos) else {
                    return Ok(pos);
                };
                let due = if self.crlf_left == 2 { b'\r' } else { b'\n' };
                ensure!(c == due, "no CRLF after a chunk");
                pos += 1;
                self.crlf_left -= 1;
            }
            let Some(e) = raw[pos..].windows(2).position(|w| w == b"\r\n") else {
                ensure!(raw.len() - pos < 64, "chunk-size line too long");
                return Ok(pos);
            };
            let line = std::str::from_utf8(&raw[pos..pos + e]).context("chunk size")?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("chunk size {line:?}"))?;
            pos += e + 2;
            if size == 0 {
                self.ended = true;
                return Ok(raw.len());
            }
            self.data_left = size;
        }
    }
}

/// One event as the stream's lines tell it (a dispatch at a blank line).
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `id:` field, when the event has one.
    pub id: Option<&'a str>,
    /// The `event:` field (none: a plain `message`).
    pub event: Option<&'a str>,
    /// The `data:` lines joined by `\n` (none: an event without data, e.g. only an `id:`).
    pub data: Option<&'a [u8]>,
}

/// The event stream's parser: fields collected line by line until a blank line.
#[derive(Debug, Default)]
pub struct Events {
    id: Option<String>,
    event: Option<String>,
    data: Option<Vec<u8>>,
}

impl Events {
    /// Parse the complete lines at the start of `body`, calling `on` for each event they end;
    /// returns the bytes used (the rest is an incomplete line). Comments are skipped.
    pub fn feed(&mut self, body: &[u8], mut on: impl FnMut(Event<'_>)) -> usize {
        let mut pos = 0;
        while let Some(n) = body[pos..].iter().position(|&c| c == b'\n') {
            let mut line = &body[pos..pos + n];
            pos += n + 1;
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if line.is_empty() {
                if self.id.is_some() || self.event.is_some() || self.data.is_some() {
                    on(Event {
                        id: self.id.as_deref(),
                        event: self.event.as_deref(),
                        data: self.data.as_deref(),
                    });
                }
                (self.id, self.event, self.data) = (None, None, None);
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (field, value) = match line.iter().position(|&c| c == b':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => match &mut self.data {
                    Some(d) => {
                        d.push(b'\n');
                        d.extend_from_slice(value);
                    }
                    None => self.data = Some(value.to_vec()),
                },
                b"id" => self.id = Some(String::from_utf8_lossy(value).into_owned()),
                b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
                _ => {}
            }
        }
        pos
    }
}

/// An event id's order: werkmann's `EPOCH:OFFSET` (one name), Nchan's `TIME:TAG` (brackets
/// around the tag allowed). Ids of one stream must increase (in one werkmann epoch).
pub fn id_order(id: &str) -> Option<(u64, u64)> {
    let (a, b) = id.split_once(':')?;
    let b = b.trim_start_matches('[');
    let digits = b.bytes().take_while(u8::is_ascii_digit).count();
    Some((a.trim().parse().ok()?, b[..digits].parse().ok()?))
}

/// Open a generator stream (`client::open` for the SSE flavors): connect, ask for the
/// flavor's stream and read the response head. The body decoder is the flavor's own (see
/// [`run`]); a server that frames it otherwise fails the open.
pub async fn open(
    idx: u32,
    target: SocketAddr,
    flavor: Flavor,
) -> Result<(TcpStream, Address, Vec<u8>)> {
    let (stream, body, left) = connect(idx, target, path(flavor), None).await?;
    let want = flavor == Flavor::Sse;
    if body.chunked != want {
        bail!(
            "the event stream is {}chunked, not as {flavor:?} serves it",
            if body.chunked { "" } else { "not " }
        );
    }
    let addr = Address {
        idx,
        worker: String::new(),
        conn: String::new(),
    };
    Ok((stream, addr, left))
}

/// A generator stream after its head (`client::run` for the SSE flavors): register it and
/// read events until the connection closes (or the task is aborted by its group's close).
/// Each event with `data` is a push (checked by `Shared::on_content`); each event's `id`
/// must be after the previous one (else counted out of order).
pub async fn run(
    stream: TcpStream,
    addr: &Address,
    left: Vec<u8>,
    flavor: Flavor,
    group: u32,
    shared: Arc<Shared>,
) {
    let state = Arc::new(Mutex::new(ClientState::new(addr.idx)));
    shared.add(group, state.clone());
    let mut reader = Reader {
        body: Body {
            chunked: flavor == Flavor::Sse,
            ..Body::default()
        },
        raw: Vec::new(),
        text: Vec::new(),
        events: Events::default(),
        last: None,
    };
    let mut batch = Batch::default();
    let mut pending = left;
    loop {
        if !pending.is_empty() {
            let now = mono_ns();
            let mut st = state.lock().expect("client");
            let r = reader.feed(&pending, &mut st, &shared, now, &mut batch);
            drop(st);
            shared.flush(&mut batch, now);
            pending.clear();
            match r {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    eprintln!("pushbench worker: stream {}: {e:#}", addr.idx);
                    return;
                }
            }
        }
        if stream.readable().await.is_err() {
            return;
        }
        let step = READ_BUF.with(|cell| -> Result<bool> {
            let mut rb = cell.borrow_mut();
            let n = match stream.try_read(&mut rb[..]) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e.into()),
            };
            let now = mono_ns();
            let mut st = state.lock().expect("client");
            let r = reader.feed(&rb[..n], &mut st, &shared, now, &mut batch);
            drop(st);
            shared.flush(&mut batch, now);
            r
        });
        match step {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                eprintln!("pushbench worker: stream {}: {e:#}", addr.idx);
                return;
            }
        }
    }
}

/// One generator stream's decoding state (kept small while idle: its buffers hold only an
/// incomplete line or chunk header).
struct Reader {
    body: Body,
    /// Raw bytes of an incomplete chunk-size line.
    raw: Vec<u8>,
    /// Decoded bytes of an incomplete line.
    text: Vec<u8>,
    events: Events,
    /// The order of the last event id.
    last: Option<(u64, u64)>,
}

impl Reader {
    /// Take `data` (read from the socket) in; `Ok(false)` when the server ended the stream.
    fn feed(
        &mut self,
        data: &[u8],
        st: &mut ClientState,
        shared: &Shared,
        now: u64,
        batch: &mut Batch,
    ) -> Result<bool> {
        if self.raw.is_empty() {
            let used = self.body.feed(data, &mut self.text)?;
            self.raw.extend_from_slice(&data[used..]);
        } else {
            self.raw.extend_from_slice(data);
            let used = self.body.feed(&self.raw, &mut self.text)?;
            self.raw.drain(..used);
        }
        let last = &mut self.last;
        let used = self.events.feed(&self.text, |ev| {
            if let Some(id) = ev.id {
                match id_order(id) {
                    Some(o) if last.is_some_and(|l| o <= l) => batch.out_of_order += 1,
                    Some(o) => *last = Some(o),
                    None => batch.bad += 1,
                }
            }
            match (ev.event, ev.data) {
                (None | Some("message"), Some(data)) => shared.on_content(st, data, now, batch),
                (None, None) => {}
                _ => batch.bad += 1,
            }
        });
        self.text.drain(..used);
        if self.text.capacity() > 4096 && self.text.is_empty() {
            self.text = Vec::new();
        }
        if self.raw.capacity() > 4096 && self.raw.is_empty() {
            self.raw = Vec::new();
        }
        Ok(!self.body.ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event's (id, event, data), owned.
    type Owned = (Option<String>, Option<String>, Option<String>);

    fn events(body: &[u8]) -> (Vec<Owned>, usize) {
        let mut p = Events::default();
        let mut out = Vec::new();
        let used = p.feed(body, |e| {
            out.push((
                e.id.map(String::from),
                e.event.map(String::from),
                e.data.map(|d| String::from_utf8_lossy(d).into_owned()),
            ))
        });
        (out, used)
    }

    #[test]
    fn events_of_both_servers() {
        let body: &[u8] = b": werkmann\nretry: 1000\n\nid: 7:1\n\nid: 7:2\ndata: P1.b0\n\n\
              id: 7:2\nevent: recovery\ndata: {\"lost\":[]}\n\ndata: a\r\ndata: b\r\n\r\nid: 9";
        let (ev, used) = events(body);
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            ev,
            [
                (s("7:1"), None, None),
                (s("7:2"), None, s("P1.b0")),
                (s("7:2"), s("recovery"), s("{\"lost\":[]}")),
                (None, None, s("a\nb")),
            ]
        );
        // The incomplete last line is left for later.
        assert_eq!(used, body.len() - b"id: 9".len());
        let (ev, _) = events(b": hi\n\nid: 1796440814:0\ndata: hello1\n\n");
        assert_eq!(ev, [(s("1796440814:0"), None, s("hello1"))]);
    }

    #[test]
    fn chunked_bodies_across_reads() {
        let raw = b"13\r\nid: 42\ndata: tick\n\n\r\n5\r\nid: 4\r\n0\r\n\r\n";
        // Fed one byte more at a time, as reads might split it.
        for split in 1..raw.len() {
            let mut b = Body {
                chunked: true,
                ..Body::default()
            };
            let (mut out, mut held) = (Vec::new(), Vec::new());
            for part in [&raw[..split], &raw[split..]] {
                held.extend_from_slice(part);
                let used = b.feed(&held, &mut out).unwrap();
                held.drain(..used);
            }
            assert_eq!(out, b"id: 42\ndata: tick\n\nid: 4", "split at {split}");
            assert!(b.ended);
        }
        let mut b = Body {
            chunked: true,
            ..Body::default()
        };
        assert!(b.feed(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn heads_ids_and_requests() {
        let w = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked";
        assert!(Body::of_head(w).unwrap().chunked);
        let n = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
                 Connection: keep-alive";
        assert!(!Body::of_head(n).unwrap().chunked);
        assert!(Body::of_head("HTTP/1.1 503 Service Unavailable").is_err());
        assert!(Body::of_head("HTTP/1.1 200 OK\r\nContent-Type: text/plain").is_err());
        assert_eq!(
            id_order("8352150244790935:12"),
            Some((8352150244790935, 12))
        );
        assert_eq!(id_order("1796440814:[3]"), Some((1796440814, 3)));
        assert_eq!(id_order("x"), None);
        let t: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(
            request(t, path(Flavor::NchanSse), Some("5:1")),
            "GET /ssesub/broadcast HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\
             Accept: text/event-stream\r\nCache-Control: no-cache\r\nLast-Event-ID: 5:1\r\n\r\n"
        );
        assert_eq!(path(Flavor::Sse), "/sse?channel=Broadcast");
    }
}
