//! What a push request asks for — `content`, `to_worker_id`, `to_connection_id`, as PHP reads
//! them from `$_GET` and `$_POST` — and the channel event it becomes.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::json;
use werkmann::channel::{php_serde, Name};
use werkmann::protocol::http::percent_decode;
use werkmann::{Request, Response};

use super::BROADCAST;

/// A push request, from the query, a form or a JSON body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Push {
    /// The text to deliver.
    pub content: Option<String>,
    /// The target worker id (a targeted push).
    pub to_worker_id: Option<String>,
    /// The target connection id (a targeted push).
    pub to_connection_id: Option<String>,
    /// A named channel instead of `Broadcast` (read with `/sse?channel=NAME`).
    pub channel: Option<String>,
    /// `1`: answer with what the push reached (`delivery.rs`).
    pub report: Option<String>,
    /// Milliseconds to wait for acknowledgements (a report with them).
    pub ack: Option<String>,
    /// Where to POST the report (answered 202 at once).
    pub callback_url: Option<String>,
}

/// What a push asks to be told of what it reached (`report=1`, `ack=MS`, `callback_url=URL`).
#[derive(Debug, Clone, Default)]
pub struct Reporting {
    /// A report is wanted (any of the three).
    pub wanted: bool,
    /// How long to wait for acknowledgements.
    pub ack: Option<std::time::Duration>,
    /// Where the report goes instead of the answer.
    pub callback: Option<werkmann::webhook::Target>,
}

impl Push {
    /// Read the parameters; body fields win over query parameters (and within each, a later
    /// repetition of a key wins).
    pub fn from_request(req: &Request) -> Push {
        let mut push = Push::default();
        // One pass over the query, decoding only the values we keep.
        for pair in req.query_string().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = if k.contains(['%', '+']) {
                Cow::Owned(percent_decode(k))
            } else {
                Cow::Borrowed(k)
            };
            if let Some(slot) = push.slot(&k) {
                *slot = Some(percent_decode(v));
            }
        }
        if !req.body().is_empty() {
            for (k, v) in req.post_all() {
                if let Some(slot) = push.slot(&k) {
                    *slot = Some(v);
                }
            }
        }
        push
    }

    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        match key {
            "content" => Some(&mut self.content),
            "to_worker_id" => Some(&mut self.to_worker_id),
            "to_connection_id" => Some(&mut self.to_connection_id),
            "channel" => Some(&mut self.channel),
            "report" => Some(&mut self.report),
            "ack" => Some(&mut self.ack),
            "callback_url" => Some(&mut self.callback_url),
            _ => None,
        }
    }

    /// Whether no parameter was given at all.
    pub fn is_empty(&self) -> bool {
        *self == Push::default()
    }

    /// The event and data this push becomes — `Broadcast` (or the named `channel`) with
    /// `{content}`, or the worker id with `{content, to_connection_id}` — or the 400 that says
    /// what is wrong with it.
    pub fn event(&self) -> Result<(Name, Bytes), Response> {
        let (name, content, to) = self.target()?;
        Ok((name, event_data(content, to)))
    }

    /// What the push asks to be told, or the 400 that says what is wrong with it.
    pub fn reporting(&self) -> Result<Reporting, Response> {
        let report = match self.report.as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(r) => return Err(Response::text(400, format!("report {r:?}: 1 (or 0)\n"))),
        };
        let max = werkmann::channel::report::MAX_ACK.as_millis();
        let ack = match self.ack.as_deref() {
            None => None,
            Some(a) => match a.parse::<u64>() {
                Ok(ms) if ms >= 1 && u128::from(ms) <= max => {
                    Some(std::time::Duration::from_millis(ms))
                }
                _ => {
                    return Err(Response::text(
                        400,
                        format!("ack {a:?}: milliseconds, 1 to {max}\n"),
                    ))
                }
            },
        };
        let callback = match self.callback_url.as_deref() {
            None => None,
            Some(u) => Some(
                werkmann::webhook::Target::parse(u)
                    .map_err(|why| Response::text(400, format!("callback_url: {why}\n")))?,
            ),
        };
        Ok(Reporting {
            wanted: report || ack.is_some() || callback.is_some(),
            ack,
            callback,
        })
    }

    /// The event, the content and the connection a push is for (or the 400).
    pub fn target(&self) -> Result<(Name, &str, Option<u64>), Response> {
        let content = match self.content.as_deref() {
            Some(c) if !c.is_empty() => c,
            _ => return Err(Response::text(400, "missing content: nothing published\n")),
        };
        if let Some(ch) = &self.channel {
            if self.to_worker_id.is_some() || self.to_connection_id.is_some() {
                return Err(Response::text(
                    400,
                    "channel and to_worker_id/to_connection_id do not go together\n",
                ));
            }
            if !super::resume::valid_name(ch) {
                return Err(super::resume::bad_name(ch));
            }
            return Ok((Name::from(ch.as_str()), content, None));
        }
        match (&self.to_worker_id, &self.to_connection_id) {
            (None, None) => Ok((Name::from(BROADCAST), content, None)),
            (Some(w), Some(c)) => {
                let worker: u32 = w.parse().map_err(|_| {
                    Response::text(400, format!("to_worker_id {w:?} is not a worker id\n"))
                })?;
                let conn: u64 = c.parse().map_err(|_| {
                    Response::text(
                        400,
                        format!("to_connection_id {c:?} is not a connection id\n"),
                    )
                })?;
                Ok((Name::from(worker), content, Some(conn)))
            }
            _ => Err(Response::text(
                400,
                "a targeted push needs both to_worker_id and to_connection_id\n",
            )),
        }
    }
}

/// The data of a push event in PHP `serialize()` format, as `php_serde::to_vec` writes
/// `{"content": content}` or `{"content": content, "to_connection_id": to}` (keys in order).
pub fn event_data(content: &str, to: Option<u64>) -> Bytes {
    let to = match to.map(i64::try_from) {
        None => None,
        Some(Ok(to)) => Some(to),
        // Past PHP's integers: as the general serializer writes it.
        Some(Err(_)) => {
            let v = json!({ "content": content, "to_connection_id": to });
            return php_serde::to_vec(&v).into();
        }
    };
    let mut out = Vec::with_capacity(64 + content.len());
    php_serde::write_array_start(&mut out, if to.is_some() { 2 } else { 1 });
    php_serde::write_str(&mut out, b"content");
    php_serde::write_str(&mut out, content.as_bytes());
    if let Some(to) = to {
        php_serde::write_str(&mut out, b"to_connection_id");
        php_serde::Key::Int(to).write(&mut out);
    }
    out.push(b'}');
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_is_what_the_serializer_writes() {
        for content in ["x", "hällo \"quoted\";", &"y".repeat(300)] {
            let v = json!({ "content": content });
            assert_eq!(event_data(content, None), php_serde::to_vec(&v));
            for to in [0u64, 7, i64::MAX as u64, u64::MAX] {
                let v = json!({ "content": content, "to_connection_id": to });
                assert_eq!(event_data(content, Some(to)), php_serde::to_vec(&v));
            }
        }
    }

    #[test]
    fn push_parameters() {
        let req = |raw: &str| {
            werkmann::protocol::http::parse_head(raw.as_bytes())
                .expect("parses")
                .expect("complete")
                .0
        };
        let p = Push::from_request(&req(
            "GET /?content=a+b%21&to_worker_id=1&x=2&to_connection_id=3&content=c HTTP/1.1\r\n\r\n",
        ));
        assert_eq!(p.content.as_deref(), Some("c"));
        assert_eq!(p.to_worker_id.as_deref(), Some("1"));
        assert_eq!(p.to_connection_id.as_deref(), Some("3"));
        let p = Push::from_request(&req("GET /?cont%65nt=a+b%21 HTTP/1.1\r\n\r\n"));
        assert_eq!(p.content.as_deref(), Some("a b!"));
        assert!(Push::from_request(&req("GET / HTTP/1.1\r\n\r\n")).is_empty());
    }

    #[test]
    fn the_websocket_node_reads_what_the_publisher_writes() {
        for to in [None, Some(42)] {
            let data = event_data("hi", to);
            let content = php_serde::field(&data, "content").unwrap();
            assert_eq!(content.text().as_deref(), Some("hi"));
            let got = php_serde::field(&data, "to_connection_id").unwrap();
            assert_eq!(got.to_u64(), to);
        }
    }
}
