//! Webhooks: an app's events (`channel_occupied`, `channel_vacated`, `member_added`,
//! `member_removed`, `client_event`) POSTed to the URLs its configuration names, as Pusher
//! sends them: `{"time_ms": …, "events": […]}`, signed with `X-Pusher-Key` and
//! `X-Pusher-Signature` (HMAC-SHA256 of the body with the app's secret).
//!
//! Who makes an event: the directory, for a transition it alone sees once cluster-wide (a
//! channel's first subscriber and its last, a presence member's first socket and its last —
//! the hooks of `channel::dir`'s presence groups), and the node a client event arrives at.
//! Either way the event is an item on the app's webhook queue ([`queue`]), which each item
//! leaves once, to one of the processes that send ([`Webhooks::start`]: the publishers).
//! A sender batches what arrives within [`BATCH_WINDOW`] (at most [`MAX_BATCH`] events) into
//! one request per webhook, and retries a request that fails (no answer within
//! [`TIMEOUT`], or not a 2xx) after 1, 2, 4, 8 and 16 s before it gives up (logged).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{sign, App, Apps};
use crate::channel::dir;
use crate::channel::php_serde;
use crate::channel::Client;

/// How long a sender gathers events into one request.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Most events in one request.
pub const MAX_BATCH: usize = 100;
/// How long a request may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The waits before each retry of a failed request.
const RETRIES: [u64; 5] = [1, 2, 4, 8, 16];

/// The queue an app's webhook events go to (it lives where the directory does: the
/// directory adds to it).
pub fn queue(app_id: &str) -> String {
    dir::announced_event(&format!("pusher-webhooks:{app_id}"))
}

/// A webhook event as an item of [`queue`], as it travels (a PHP string of its JSON).
pub fn item(event: &Value) -> String {
    let mut out = Vec::new();
    php_serde::write_str(&mut out, event.to_string().as_bytes());
    String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
}

/// Where a webhook goes: `http://HOST[:PORT][/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `HOST:PORT`, to connect to.
    pub addr: String,
    /// The `Host` header.
    pub host: String,
    /// The path and query.
    pub path: String,
}

impl Target {
    /// Read a webhook URL (`http://` only: put a TLS proxy in front for `https://`).
    pub fn parse(url: &str) -> Result<Target, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(
                "a webhook URL is http://HOST[:PORT][/PATH] (https:// is not sent by \
                        this server: put a local TLS proxy in front)"
                    .into(),
            );
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("a webhook URL needs a host (and no user info)".into());
        }
        if path.chars().any(|c| c.is_control() || c == ' ') {
            return Err("a webhook URL's path has a space or a control character".into());
        }
        // The port after the host (an IPv6 address in brackets), 80 when not given.
        let port = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((_, "")) => None,
                Some((_, after)) => Some(after.strip_prefix(':').unwrap_or(after)),
                None => return Err("a webhook URL's IPv6 host lacks its ]".into()),
            },
            None => authority.rsplit_once(':').map(|(_, p)| p),
        };
        let addr = match port {
            Some(p) => {
                p.parse::<u16>()
                    .map_err(|_| format!("a webhook URL's port {p:?} is not a port"))?;
                authority.to_string()
            }
            None => format!("{authority}:80"),
        };
        Ok(Target {
            addr,
            host: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// The events gathered for one app, sent when the window closes.
#[derive(Default)]
struct Batch {
    events: Vec<Value>,
    scheduled: bool,
}

/// The webhook senders of one process (one per worker instance that calls
/// [`Webhooks::start`]).
pub struct Webhooks {
    apps: Arc<Apps>,
    batches: RefCell<HashMap<String, Batch>>,
}

impl Webhooks {
    /// Take the webhook events of every app of `apps` that has webhooks from their queues,
    /// through `client`, and send them (on this thread).
    pub fn start(client: &Client, apps: Arc<Apps>) {
        let ids: Vec<String> = apps
            .iter()
            .filter(|a| !a.webhooks.is_empty())
            .map(|a| a.id.clone())
            .collect();
        if ids.is_empty() {
            return;
        }
        let me = Rc::new(Webhooks {
            apps,
            batches: RefCell::new(HashMap::new()),
        });
        for id in ids {
            let me = me.clone();
            let app_id = id.clone();
            client.watch(queue(&id).as_str(), move |v| me.take(&app_id, v), true);
        }
    }

    /// One event from the queue of app `app_id` (a JSON text).
    fn take(self: &Rc<Self>, app_id: &str, item: Value) {
        let event = match item {
            Value::String(text) => serde_json::from_str::<Value>(&text).ok(),
            _ => None,
        };
        let Some(event) = event.filter(Value::is_object) else {
            log::warn!("webhooks of app {app_id}: an item that is not an event: dropped");
            return;
        };
        let full = {
            let mut batches = self.batches.borrow_mut();
            let b = batches.entry(app_id.to_string()).or_default();
            b.events.push(event);
            if b.scheduled {
                b.events.len() >= MAX_BATCH
            } else {
                b.scheduled = true;
                let (me, id) = (self.clone(), app_id.to_string());
                actix_rt::spawn(async move {
                    tokio::time::sleep(BATCH_WINDOW).await;
                    me.flush(&id);
                });
                false
            }
        };
        if full {
            self.flush(app_id);
        }
    }

    /// Send what app `app_id` gathered, one request per webhook that wants any of it.
    fn flush(&self, app_id: &str) {
        let events = {
            let mut batches = self.batches.borrow_mut();
            let Some(b) = batches.get_mut(app_id) else {
                return;
            };
            b.scheduled = false;
            std::mem::take(&mut b.events)
        };
        let Some(app) = self.apps.by_id(app_id).cloned() else {
            return;
        };
        if events.is_empty() {
            return;
        }
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for hook in &app.webhooks {
            let wanted: Vec<&Value> = events
                .iter()
                .filter(|e| {
                    let name = e.get("name").and_then(Value::as_str).unwrap_or("");
                    hook.event_types.iter().any(|t| t == name)
                })
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let Ok(target) = Target::parse(&hook.url) else {
                continue;
            };
            let body = json!({ "time_ms": time_ms, "events": wanted }).to_string();
            actix_rt::spawn(send_with_retries(app.clone(), target, body));
        }
    }
}

/// POST `body` to `target` for `app`, again after each wait of [`RETRIES`] while it fails.
async fn send_with_retries(app: Arc<App>, target: Target, body: String) {
    let signature = sign::hmac_hex(&app.secret, &body);
    let mut waits = RETRIES.iter();
    loop {
        let why =
            match tokio::time::timeout(TIMEOUT, post(&target, &app.key, &signature, &body)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => return,
                Ok(Ok(status)) => format!("answered {status}"),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {TIMEOUT:?}"),
            };
        match waits.next() {
            Some(&secs) => {
                log::warn!(
                    "webhook {}{} of app {}: {why}; again in {secs} s",
                    target.host,
                    target.path,
                    app.id
                );
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            None => {
                log::error!(
                    "webhook {}{} of app {}: {why}; given up after {} tries, events lost",
                    target.host,
                    target.path,
                    app.id,
                    RETRIES.len() + 1
                );
                return;
            }
        }
    }
}

/// One POST; the status of the answer.
async fn post(target: &Target, key: &str, signature: &str, body: &str) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(&target.addr).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nX-Pusher-Key: {key}\r\nX-Pusher-Signature: {signature}\r\n\
         User-Agent: werkmann\r\nConnection: close\r\n\r\n",
        target.path,
        target.host,
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    // The status line is all that is read: `HTTP/1.1 200 …`.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|l| l.get(2..5))
        .and_then(|s| s.parse::<u16>().ok());
    status.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:9000/hooks?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000");
        assert_eq!(t.host, "127.0.0.1:9000");
        assert_eq!(t.path, "/hooks?x=1");
        let t = Target::parse("http://example.test").unwrap();
        assert_eq!((t.addr.as_str(), t.path.as_str()), ("example.test:80", "/"));
        let t = Target::parse("http://[::1]:8080/h").unwrap();
        assert_eq!(t.addr, "[::1]:8080");
        let t = Target::parse("http://[::1]/h").unwrap();
        assert_eq!(t.addr, "[::1]:80");
        for bad in [
            "https://example.test/",
            "ftp://x",
            "http://",
            "http://u@h/",
            "http://h:99999/",
            "http://h:x/",
            "http://h/a b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
