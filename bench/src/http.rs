//! The publisher side: keep-alive HTTP/1.1 connections to a server's push API, and the
//! requests each server kind takes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto::{Address, Flavor};
use crate::pusher;

/// Longest one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A server's push API.
#[derive(Clone, Copy, Debug)]
pub struct Api {
    /// How to address pushes.
    pub flavor: Flavor,
    /// Where the publisher listens.
    pub addr: SocketAddr,
}

impl Api {
    /// The request that broadcasts `content` (URL-safe) to every client (Pusher: a signed
    /// publish to the public channel).
    pub fn broadcast(&self, content: &str) -> Vec<u8> {
        match self.flavor {
            Flavor::Pusher | Flavor::PusherPresence => pusher::events(self.addr, content),
            Flavor::Werkmann | Flavor::SocketIo | Flavor::Sse => format!(
                "GET /?content={content} HTTP/1.1\r\nHost: {}\r\n\r\n",
                self.addr
            )
            .into_bytes(),
            Flavor::Nchan => self.nchan_post("broadcast", content),
            Flavor::NchanSse => self.post("/ssepub/broadcast", "text/plain", content),
        }
    }

    /// The request that delivers `content` (URL-safe) to the client at `to`. The Pusher rows
    /// send none: for a Pusher server it is a publish to the public channel.
    pub fn targeted(&self, to: &Address, content: &str) -> Vec<u8> {
        match self.flavor {
            Flavor::Pusher | Flavor::PusherPresence => pusher::events(self.addr, content),
            Flavor::Werkmann | Flavor::SocketIo | Flavor::Sse => format!(
                "GET /?to_worker_id={}&to_connection_id={}&content={content} HTTP/1.1\r\n\
                 Host: {}\r\n\r\n",
                to.worker, to.conn, self.addr
            )
            .into_bytes(),
            Flavor::Nchan | Flavor::NchanSse => self.nchan_post(&to.conn, content),
        }
    }

    /// [`Api::targeted`] for a large `content`: in a form body (`POST /`) for werkmann, whose
    /// request head may not pass 16 KiB; Socket.IO's push API takes only `GET` (Node.js
    /// allows 16 KiB of head), so keep its content under ~15 KiB.
    pub fn targeted_large(&self, to: &Address, content: &str) -> Vec<u8> {
        match self.flavor {
            Flavor::Werkmann => {
                let body = format!(
                    "to_worker_id={}&to_connection_id={}&content={content}",
                    to.worker, to.conn
                );
                self.post("/", "application/x-www-form-urlencoded", &body)
            }
            Flavor::SocketIo
            | Flavor::Nchan
            | Flavor::Pusher
            | Flavor::PusherPresence
            | Flavor::Sse
            | Flavor::NchanSse => self.targeted(to, content),
        }
    }

    /// GatewayWorker's API (`POST /api/<method>` with a JSON object body; docs/addressing.md):
    /// werkmann's publisher, and the Socket.IO peer's, which mirrors the methods the benchmark
    /// calls.
    pub fn call(&self, method: &str, body: &serde_json::Value) -> Vec<u8> {
        self.call_json(method, &body.to_string())
    }

    /// [`Api::call`] with the JSON body already written.
    pub fn call_json(&self, method: &str, body: &str) -> Vec<u8> {
        self.post(&format!("/api/{method}"), "application/json", body)
    }

    /// The largest content [`Api::targeted_large`] can carry here.
    pub fn max_large(&self) -> usize {
        match self.flavor {
            Flavor::SocketIo => 12 * 1024,
            Flavor::Pusher | Flavor::PusherPresence => 8 * 1024,
            Flavor::Werkmann | Flavor::Nchan | Flavor::Sse | Flavor::NchanSse => 256 * 1024,
        }
    }

    fn nchan_post(&self, channel: &str, content: &str) -> Vec<u8> {
        self.post(&format!("/pub/{channel}"), "text/plain", content)
    }

    /// A `POST` of `body` to `path`, as `content_type`.
    fn post(&self, path: &str, content_type: &str, body: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .into_bytes()
    }
}

/// One keep-alive connection; reconnects after the server closes it.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    /// Connect now.
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let mut c = Conn {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
        };
        c.ensure_connected().await?;
        Ok(c)
    }

    async fn ensure_connected(&mut self) -> Result<&mut TcpStream> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        Ok(self.stream.as_mut().expect("connected"))
    }

    /// Send one request and read its response; returns the status code and the start of
    /// the body. A kept-alive connection the server closed meanwhile (idle timeout) is
    /// reopened and the request sent once more.
    pub async fn roundtrip(&mut self, req: &[u8]) -> Result<(u16, String)> {
        let reused = self.stream.is_some();
        match self.roundtrip_once(req).await {
            Err(e) if reused && gone(&e) => self.roundtrip_once(req).await,
            r => r,
        }
    }

    async fn roundtrip_once(&mut self, req: &[u8]) -> Result<(u16, String)> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                bail!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
            }
        }
    }

    async fn exchange(&mut self, req: &[u8]) -> Result<(u16, String)> {
        self.ensure_connected().await?;
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(req).await?;
        let buf = &mut self.buf;
        let head_end = loop {
            if let Some(p) = find(buf, b"\r\n\r\n") {
                break p + 4;
            }
            ensure!(buf.len() < 65536, "response head too long");
            ensure!(stream.read_buf(buf).await? > 0, "connection closed");
        };
        let head = std::str::from_utf8(&buf[..head_end]).context("response head")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("status line")?;
        let (mut length, mut chunked, mut close) = (0usize, false, false);
        for line in head.lines().skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse().context("content-length")?;
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.eq_ignore_ascii_case("chunked");
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.eq_ignore_ascii_case("close");
                }
            }
        }
        buf.drain(..head_end);
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let Some(line_end) = find(buf, b"\r\n") else {
                    ensure!(stream.read_buf(buf).await? > 0, "connection closed");
                    continue;
                };
                let size_text = std::str::from_utf8(&buf[..line_end])?;
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .context("chunk size")?;
                while buf.len() < line_end + 2 + size + 2 {
                    ensure!(stream.read_buf(buf).await? > 0, "connection closed");
                }
                body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else {
            while buf.len() < length {
                ensure!(stream.read_buf(buf).await? > 0, "connection closed");
            }
            let body = buf[..length].to_vec();
            buf.drain(..length);
            body
        };
        if close {
            self.stream = None;
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).to_string();
        Ok((status, text))
    }
}

/// Whether an error says the server had closed the connection before the request.
fn gone(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    ["connection closed", "Broken pipe", "Connection reset"]
        .iter()
        .any(|t| text.contains(t))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
