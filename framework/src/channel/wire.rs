//! The Channel wire protocol, compatible with Workerman's Channel 1.2: `frame://` framing
//! (4-byte big-endian total length), payloads in PHP `serialize()` format.
//!
//! Client → server: `{type: subscribe|unsubscribe|watch|unwatch, channels: [...]}`,
//! `{type: publish|publishLoop|enqueue, channels: [...], data: <any>}`, `{type: reserve}`;
//! an empty payload is a ping. Server → client: `{type: event|queue, channel, data}`.
//! `data` is carried as the bytes received, never decoded by the server.

use bytes::Bytes;

use super::history::{Keep, Position};
use super::php_serde::{self, Key, PhpError, Reader};

/// A channel (event or queue) name as it appeared on the wire: its normalised key for
/// look-ups, and its original bytes for forwarding.
#[derive(Debug, Clone)]
pub struct WireName {
    /// The normalised name.
    pub key: Key,
    /// The serialized form as received (`i:1;` or `s:1:"1";`).
    pub raw: Bytes,
}

impl WireName {
    /// The wire form of a name we send.
    pub fn from_key(key: Key) -> Self {
        let mut raw = Vec::new();
        key.write(&mut raw);
        WireName {
            key,
            raw: raw.into(),
        }
    }
}

/// What a client asks of the server.
#[derive(Debug, Clone)]
pub enum Command {
    /// An empty frame: keeps the connection alive.
    Ping,
    /// Receive events of these names.
    Subscribe(Vec<WireName>),
    /// Stop receiving them.
    Unsubscribe(Vec<WireName>),
    /// Send `data` to every subscriber of each name.
    Publish(Vec<WireName>, Bytes),
    /// A werkmann extension: publish and keep in each name's history (`channel::history`);
    /// on the wire a publish with `keep: "SIZE/TTL"` (PHP servers ignore the key). Subscribers
    /// get the event with its position.
    PublishKept(Vec<WireName>, Bytes, Keep),
    /// A werkmann extension: read a name's history since a position (`None`: where it
    /// stands); on the wire `{type: history, channels: [name], data: "EPOCH:OFFSET"}`,
    /// answered like a directory operation, with a `history::Page`.
    History(WireName, Option<Position>),
    /// Send `data` to one subscriber of each name, round-robin.
    PublishLoop(Vec<WireName>, Bytes),
    /// Append `data` to each queue.
    Enqueue(Vec<WireName>, Bytes),
    /// Become a watcher of these queues.
    Watch(Vec<WireName>),
    /// Stop watching them.
    Unwatch(Vec<WireName>),
    /// Ready for one item of each watched queue.
    Reserve,
    /// A werkmann extension: the authentication token (see `channel::auth`).
    Auth(Bytes),
    /// A werkmann extension: a client that understands acknowledgements says so; a werkmann
    /// server answers `{type: hello}`, a PHP server ignores it.
    Hello,
    /// A werkmann extension: a directory operation (`channel::dir`), its JSON as a PHP string
    /// (`s:N:"{…}";`); with an `id`, answered by an `ack` whose data is the answer's JSON.
    Dir(Bytes),
    /// A werkmann extension: park this client's subscriptions to these names — a publish
    /// still counts them among the subscribers it reached, but sends them nothing (an
    /// instance without connections has no one to hand a broadcast to) until [`Command::Unpark`].
    Park(Vec<WireName>),
    /// A werkmann extension: take deliveries of parked names again; with an `id`, its
    /// acknowledgement says that every publish after it is delivered.
    Unpark(Vec<WireName>),
    /// A werkmann extension: a publish (plain or kept) that parked subscriptions get too (one
    /// that every subscriber must answer, a delivery report's); on the wire the publish with
    /// `wake: 1`.
    Waking(Box<Command>),
}

impl Command {
    /// The `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Subscribe(_) => "subscribe",
            Command::Unsubscribe(_) => "unsubscribe",
            Command::Publish(..) | Command::PublishKept(..) => "publish",
            Command::History(..) => "history",
            Command::PublishLoop(..) => "publishLoop",
            Command::Enqueue(..) => "enqueue",
            Command::Watch(_) => "watch",
            Command::Unwatch(_) => "unwatch",
            Command::Reserve => "reserve",
            Command::Auth(_) => "auth",
            Command::Hello => "hello",
            Command::Dir(_) => "dir",
            Command::Park(_) => "park",
            Command::Unpark(_) => "unpark",
            Command::Waking(inner) => inner.type_name(),
        }
    }

    /// The command without its waking (`Command::Waking`'s publish), and whether it woke.
    pub(crate) fn unwake(self) -> (Command, bool) {
        match self {
            Command::Waking(inner) => (*inner, true),
            cmd => (cmd, false),
        }
    }

    /// Parse a frame payload. `data` and channel names are slices of `payload` (no copy).
    pub fn decode(payload: &Bytes) -> Result<Command, PhpError> {
        Command::decode_request(payload).map(|(c, _)| c)
    }

    /// Parse a frame payload and its `id` (a werkmann extension asking for an acknowledgement;
    /// PHP servers ignore it).
    pub fn decode_request(payload: &Bytes) -> Result<(Command, Option<i64>), PhpError> {
        if payload.is_empty() {
            return Ok((Command::Ping, None));
        }
        let mut id: Option<i64> = None;
        let mut r = Reader::new(payload);
        let n = r.array_start()?;
        // Keys and the type are compared as bytes: no allocation per command.
        let mut kind: Option<&[u8]> = None;
        let mut channels: Option<Vec<WireName>> = None;
        let mut data: Option<Bytes> = None;
        let mut keep: Option<Keep> = None;
        let mut wake = false;
        for _ in 0..n {
            match r.key_raw()? {
                Some(b"type") => {
                    let at = r.pos();
                    match r.key_raw() {
                        Ok(Some(t)) if !php_serde::is_int_key(t) => kind = Some(t),
                        _ => {
                            return Err(PhpError {
                                msg: "type must be a string".into(),
                                pos: at,
                            })
                        }
                    }
                }
                Some(b"channels") => {
                    let count = r.array_start()?;
                    let mut names = Vec::with_capacity(count);
                    for _ in 0..count {
                        r.key_raw()?; // list index
                        let start = r.pos();
                        let key = r.key()?;
                        names.push(WireName {
                            key,
                            raw: payload.slice(start..r.pos()),
                        });
                    }
                    r.array_end()?;
                    channels = Some(names);
                }
                Some(b"data") => {
                    let range = r.skip()?;
                    data = Some(payload.slice(range));
                }
                Some(b"keep") => {
                    let at = r.pos();
                    keep = match r.key_raw()? {
                        Some(k) => std::str::from_utf8(k)
                            .ok()
                            .and_then(|k| Keep::from_wire(k).ok()),
                        None => None,
                    };
                    if keep.is_none() {
                        return Err(PhpError {
                            msg: "keep must be \"SIZE/SECONDS\" within bounds".into(),
                            pos: at,
                        });
                    }
                }
                Some(b"wake") => {
                    let at = r.pos();
                    wake = match r.key()? {
                        Key::Int(1) => true,
                        Key::Int(0) => false,
                        _ => {
                            return Err(PhpError {
                                msg: "wake must be 0 or 1".into(),
                                pos: at,
                            })
                        }
                    };
                }
                Some(b"id") => match r.key()? {
                    Key::Int(i) => id = Some(i),
                    Key::Str(_) => {
                        return Err(PhpError {
                            msg: "id must be an integer".into(),
                            pos: r.pos(),
                        })
                    }
                },
                _ => {
                    r.skip()?;
                }
            }
        }
        r.array_end()?;
        if !r.at_end() {
            return Err(PhpError {
                msg: "trailing bytes".into(),
                pos: r.pos(),
            });
        }
        let kind = kind.ok_or(PhpError {
            msg: "missing type".into(),
            pos: 0,
        })?;
        let names = channels.unwrap_or_default();
        let data = data.unwrap_or_else(|| Bytes::from_static(b"N;"));
        let cmd = match kind {
            b"hello" => Command::Hello,
            b"subscribe" => Command::Subscribe(names),
            b"unsubscribe" => Command::Unsubscribe(names),
            b"publish" => match keep {
                Some(keep) => Command::PublishKept(names, data, keep),
                None => Command::Publish(names, data),
            },
            b"history" => {
                let [name] = <[WireName; 1]>::try_from(names).map_err(|_| PhpError {
                    msg: "history names one channel".into(),
                    pos: 0,
                })?;
                let since = match &data[..] {
                    b"N;" => None,
                    _ => {
                        let mut r = Reader::new(&data);
                        let p = match r.key_raw() {
                            Ok(Some(p)) if r.at_end() => std::str::from_utf8(p)
                                .ok()
                                .and_then(|p| p.parse::<Position>().ok()),
                            _ => None,
                        };
                        Some(p.ok_or(PhpError {
                            msg: "history data must be \"EPOCH:OFFSET\" or null".into(),
                            pos: 0,
                        })?)
                    }
                };
                Command::History(name, since)
            }
            b"publishLoop" => Command::PublishLoop(names, data),
            b"enqueue" => Command::Enqueue(names, data),
            b"watch" => Command::Watch(names),
            b"unwatch" => Command::Unwatch(names),
            b"reserve" => Command::Reserve,
            b"auth" => Command::Auth(data),
            b"dir" => Command::Dir(data),
            b"park" => Command::Park(names),
            b"unpark" => Command::Unpark(names),
            other => {
                return Err(PhpError {
                    msg: format!("unknown type {:?}", String::from_utf8_lossy(other)),
                    pos: 0,
                })
            }
        };
        let cmd = match (wake, cmd) {
            (true, c @ (Command::Publish(..) | Command::PublishKept(..))) => {
                Command::Waking(Box::new(c))
            }
            (true, _) => {
                return Err(PhpError {
                    msg: "only a publish wakes".into(),
                    pos: 0,
                })
            }
            (false, c) => c,
        };
        Ok((cmd, id))
    }

    /// Serialize as PHP's Channel client does, without the frame header.
    pub fn encode_payload(&self) -> Vec<u8> {
        self.encode(false, None)
    }

    /// Serialize with an `id` field (a werkmann extension asking for an acknowledgement).
    pub fn encode_payload_with_id(&self, id: i64) -> Vec<u8> {
        self.encode(false, Some(id))
    }

    /// Serialize with the frame header.
    pub fn encode_frame(&self) -> Bytes {
        self.encode_frame_with_id(None)
    }

    /// Serialize with the frame header, and an `id` field when given: one buffer, written
    /// once (what a client sends for each confirmed publish).
    pub fn encode_frame_with_id(&self, id: Option<i64>) -> Bytes {
        Bytes::from(self.encode(true, id))
    }

    /// The payload — after a frame header when `framed` — with `id` as its last field when
    /// given, in one buffer sized once its names and data are known.
    fn encode(&self, framed: bool, id: Option<i64>) -> Vec<u8> {
        // A waking publish is the publish's map with one more key, `wake: 1`.
        let (cmd, wake) = match self {
            Command::Waking(inner) => (&**inner, true),
            c => (c, false),
        };
        let extra = usize::from(id.is_some());
        let mut out = Vec::new();
        let begin = |out: &mut Vec<u8>, size: usize| {
            out.reserve(size + 96);
            if framed {
                out.extend_from_slice(&[0; 4]);
            }
        };
        let close = |mut out: Vec<u8>| {
            if let Some(id) = id {
                php_serde::write_str(&mut out, b"id");
                Key::Int(id).write(&mut out);
            }
            out.push(b'}');
            if framed {
                let len = u32::try_from(out.len()).expect("command fits a frame");
                out[..4].copy_from_slice(&len.to_be_bytes());
            }
            out
        };
        let (names, data): (&[WireName], Option<&Bytes>) = match cmd {
            Command::Ping => {
                begin(&mut out, 0);
                if framed {
                    out[..4].copy_from_slice(&4u32.to_be_bytes());
                }
                return out;
            }
            Command::Waking(_) => unreachable!("a waking publish wraps a publish"),
            Command::Reserve | Command::Hello => {
                begin(&mut out, 0);
                php_serde::write_array_start(&mut out, 1 + extra);
                write_type(&mut out, cmd.type_name());
                return close(out);
            }
            Command::Auth(data) | Command::Dir(data) => {
                begin(&mut out, data.len());
                php_serde::write_array_start(&mut out, 2 + extra);
                write_type(&mut out, cmd.type_name());
                php_serde::write_str(&mut out, b"data");
                out.extend_from_slice(data);
                return close(out);
            }
            Command::Subscribe(n)
            | Command::Unsubscribe(n)
            | Command::Watch(n)
            | Command::Unwatch(n)
            | Command::Park(n)
            | Command::Unpark(n) => (n, None),
            Command::Publish(n, d)
            | Command::PublishLoop(n, d)
            | Command::Enqueue(n, d)
            | Command::PublishKept(n, d, _) => (n, Some(d)),
            Command::History(name, since) => {
                begin(&mut out, name.raw.len());
                php_serde::write_array_start(&mut out, 3 + extra);
                write_type(&mut out, "history");
                php_serde::write_str(&mut out, b"channels");
                php_serde::write_array_start(&mut out, 1);
                Key::Int(0).write(&mut out);
                out.extend_from_slice(&name.raw);
                out.push(b'}');
                php_serde::write_str(&mut out, b"data");
                match since {
                    Some(p) => php_serde::write_str(&mut out, p.to_string().as_bytes()),
                    None => out.extend_from_slice(b"N;"),
                }
                return close(out);
            }
        };
        let names_size: usize = names.iter().map(|n| n.raw.len() + 8).sum();
        begin(&mut out, names_size + data.map_or(0, |d| d.len()));
        let keep = match cmd {
            Command::PublishKept(_, _, keep) => Some(keep),
            _ => None,
        };
        let fields = if data.is_some() { 3 } else { 2 } + usize::from(keep.is_some());
        php_serde::write_array_start(&mut out, fields + usize::from(wake) + extra);
        write_type(&mut out, cmd.type_name());
        php_serde::write_str(&mut out, b"channels");
        php_serde::write_array_start(&mut out, names.len());
        for (i, n) in names.iter().enumerate() {
            Key::Int(i as i64).write(&mut out);
            out.extend_from_slice(&n.raw);
        }
        out.push(b'}');
        if let Some(d) = data {
            php_serde::write_str(&mut out, b"data");
            out.extend_from_slice(d);
        }
        if let Some(keep) = keep {
            php_serde::write_str(&mut out, b"keep");
            keep.write_wire(&mut out);
        }
        if wake {
            php_serde::write_str(&mut out, b"wake");
            Key::Int(1).write(&mut out);
        }
        close(out)
    }

    /// A directory operation's command: `json` as a PHP string.
    pub fn dir(json: &[u8]) -> Command {
        let mut data = Vec::with_capacity(json.len() + 16);
        php_serde::write_str(&mut data, json);
        Command::Dir(Bytes::from(data))
    }

    /// The JSON of a directory command (its PHP string's bytes).
    pub fn dir_json(data: &Bytes) -> Result<Bytes, PhpError> {
        let mut r = Reader::new(data);
        let json = match r.key_raw()? {
            Some(json) => data.slice_ref(json),
            None => {
                return Err(PhpError {
                    msg: "a directory operation is a string".into(),
                    pos: 0,
                })
            }
        };
        if !r.at_end() {
            return Err(PhpError {
                msg: "trailing bytes after the directory operation".into(),
                pos: r.pos(),
            });
        }
        Ok(json)
    }
}

fn write_type(out: &mut Vec<u8>, t: &str) {
    php_serde::write_str(out, b"type");
    php_serde::write_str(out, t.as_bytes());
}

/// The data of a werkmann server's `hello` (an integer): it acknowledges commands that carry
/// an `id` (publishes: with the subscribers reached).
pub const HELLO_ACKS: i64 = 1;
/// The data of a werkmann server's `hello` when it also keeps a directory (`dir` commands);
/// a server that answers [`HELLO_ACKS`] would close the connection on one.
pub const HELLO_DIRECTORY: i64 = 2;
/// The data of a werkmann server's `hello` when it also keeps history (`keep` on publishes,
/// `history` reads, events with their `pos`).
pub const HELLO_HISTORY: i64 = 3;
/// The data of a werkmann server's `hello` when it also parks subscriptions (`park`,
/// `unpark`, `wake` on publishes); one that answers less would close the connection on a park.
pub const HELLO_PARKING: i64 = 4;

/// Whether a server message is a pub/sub event or a queue item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    /// `{type: event}`.
    Event,
    /// `{type: queue}`.
    Queue,
    /// `{type: hello}`: the server acknowledges publishes that carry an `id` (werkmann).
    Hello,
    /// `{type: ack, channel: ID}`: the publish with that `id` was delivered (werkmann).
    Ack,
}

/// Frame a server message `{type, channel, data}` (header included), as PHP's server does.
pub fn encode_delivery(kind: DeliveryKind, channel_raw: &[u8], data: &[u8]) -> Bytes {
    // `a:3:{s:4:"type";s:5:"event";s:7:"channel";` — constant per kind, written once here.
    let head: &[u8] = match kind {
        DeliveryKind::Event => b"a:3:{s:4:\"type\";s:5:\"event\";s:7:\"channel\";",
        DeliveryKind::Queue => b"a:3:{s:4:\"type\";s:5:\"queue\";s:7:\"channel\";",
        DeliveryKind::Hello => b"a:3:{s:4:\"type\";s:5:\"hello\";s:7:\"channel\";",
        DeliveryKind::Ack => b"a:3:{s:4:\"type\";s:3:\"ack\";s:7:\"channel\";",
    };
    const DATA_KEY: &[u8] = b"s:4:\"data\";";
    let len = 4 + head.len() + channel_raw.len() + DATA_KEY.len() + data.len() + 1;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(channel_raw);
    out.extend_from_slice(DATA_KEY);
    out.extend_from_slice(data);
    out.push(b'}');
    debug_assert_eq!(out.len(), len);
    out.into()
}

/// Frame an event kept in history: `{type: event, channel, data, pos: "EPOCH:OFFSET"}`
/// (PHP clients read the first three and ignore `pos`).
pub fn encode_event_at(channel_raw: &[u8], data: &[u8], pos: Position) -> Bytes {
    const HEAD: &[u8] = b"a:4:{s:4:\"type\";s:5:\"event\";s:7:\"channel\";";
    let mut out = Vec::with_capacity(4 + HEAD.len() + channel_raw.len() + data.len() + 64);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(channel_raw);
    php_serde::write_str(&mut out, b"data");
    out.extend_from_slice(data);
    php_serde::write_str(&mut out, b"pos");
    php_serde::write_str(&mut out, pos.to_string().as_bytes());
    out.push(b'}');
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.into()
}

/// A decoded server message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Event or queue item.
    pub kind: DeliveryKind,
    /// The channel name.
    pub channel: Key,
    /// The serialized data, as published.
    pub data: Bytes,
    /// Where the event stands in its name's history, when the name keeps one.
    pub pos: Option<Position>,
}

impl Delivery {
    /// Parse a server message payload (without the frame header).
    pub fn decode(payload: &Bytes) -> Result<Delivery, PhpError> {
        let mut r = Reader::new(payload);
        let n = r.array_start()?;
        let (mut kind, mut channel, mut data, mut pos) = (None, None, None, None);
        // Keys and the type are compared as bytes (as `Command::decode_request` does): a
        // subscriber decodes every event it gets, and only the channel's name is kept.
        for _ in 0..n {
            match r.key_raw()? {
                Some(b"type") => {
                    kind = Some(match r.key_raw()? {
                        Some(b"event") => DeliveryKind::Event,
                        Some(b"queue") => DeliveryKind::Queue,
                        Some(b"hello") => DeliveryKind::Hello,
                        Some(b"ack") => DeliveryKind::Ack,
                        other => {
                            let other = match other {
                                Some(t) => String::from_utf8_lossy(t).into_owned(),
                                None => "(an integer)".into(),
                            };
                            return Err(PhpError {
                                msg: format!("unknown message type {other}"),
                                pos: 0,
                            });
                        }
                    })
                }
                Some(b"channel") => channel = Some(r.key()?),
                Some(b"data") => data = Some(payload.slice(r.skip()?)),
                Some(b"pos") => {
                    let at = r.pos();
                    pos = match r.key()? {
                        Key::Str(p) => p.parse::<Position>().ok(),
                        Key::Int(_) => None,
                    };
                    if pos.is_none() {
                        return Err(PhpError {
                            msg: "pos must be \"EPOCH:OFFSET\"".into(),
                            pos: at,
                        });
                    }
                }
                _ => {
                    r.skip()?;
                }
            }
        }
        r.array_end()?;
        match (kind, channel) {
            (Some(kind), Some(channel)) => Ok(Delivery {
                kind,
                channel,
                data: data.unwrap_or_else(|| Bytes::from_static(b"N;")),
                pos,
            }),
            _ => Err(PhpError {
                msg: "message without type or channel".into(),
                pos: 0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[Key]) -> Vec<WireName> {
        v.iter().cloned().map(WireName::from_key).collect()
    }

    #[test]
    fn golden_subscribe_payload() {
        let cmd = Command::Subscribe(names(&[Key::Str("Broadcast".into())]));
        assert_eq!(
            cmd.encode_payload(),
            br#"a:2:{s:4:"type";s:9:"subscribe";s:8:"channels";a:1:{i:0;s:9:"Broadcast";}}"#
        );
        let frame = cmd.encode_frame();
        assert_eq!(&frame[..4], &(frame.len() as u32).to_be_bytes());
    }

    #[test]
    fn golden_publish_and_event() {
        let data =
            php_serde::to_vec(&serde_json::json!({"to_connection_id": "3", "content": "hi"}));
        let cmd = Command::Publish(names(&[Key::Int(1)]), data.clone().into());
        assert_eq!(
            cmd.encode_payload(),
            br#"a:3:{s:4:"type";s:7:"publish";s:8:"channels";a:1:{i:0;i:1;}s:4:"data";a:2:{s:7:"content";s:2:"hi";s:16:"to_connection_id";s:1:"3";}}"#
        );
        let ev = encode_delivery(DeliveryKind::Event, b"i:1;", &data);
        let mut want = Vec::new();
        let body = br#"a:3:{s:4:"type";s:5:"event";s:7:"channel";i:1;s:4:"data";a:2:{s:7:"content";s:2:"hi";s:16:"to_connection_id";s:1:"3";}}"#;
        want.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        want.extend_from_slice(body);
        assert_eq!(&ev[..], &want[..]);
        let d = Delivery::decode(&ev.slice(4..)).unwrap();
        assert_eq!(d.kind, DeliveryKind::Event);
        assert_eq!(d.channel, Key::Int(1));
        assert_eq!(&d.data[..], &data[..]);
    }

    #[test]
    fn golden_park_unpark_and_waking_publish() {
        let b = names(&[Key::Str("Broadcast".into())]);
        let park = Command::Park(b.clone());
        assert_eq!(
            park.encode_payload(),
            br#"a:2:{s:4:"type";s:4:"park";s:8:"channels";a:1:{i:0;s:9:"Broadcast";}}"#
        );
        let waking = Command::Waking(Box::new(Command::PublishKept(
            b.clone(),
            Bytes::from_static(b"N;"),
            Keep::from_wire("10/60").unwrap(),
        )));
        assert_eq!(
            waking.encode_payload(),
            br#"a:5:{s:4:"type";s:7:"publish";s:8:"channels";a:1:{i:0;s:9:"Broadcast";}s:4:"data";N;s:4:"keep";s:5:"10/60";s:4:"wake";i:1;}"#
        );
        for cmd in [park, Command::Unpark(b.clone()), waking] {
            let back = Command::decode(&cmd.encode_payload().into()).unwrap();
            assert_eq!(back.encode_payload(), cmd.encode_payload());
        }
        let plain = Command::Publish(b, Bytes::from_static(b"N;"));
        let back = Command::decode(&Command::Waking(Box::new(plain)).encode_payload().into());
        assert!(matches!(back, Ok(Command::Waking(p)) if matches!(*p, Command::Publish(..))));
        for bad in [
            &br#"a:2:{s:4:"type";s:9:"subscribe";s:4:"wake";i:1;}"#[..],
            br#"a:2:{s:4:"type";s:7:"publish";s:4:"wake";i:2;}"#,
        ] {
            assert!(Command::decode(&Bytes::copy_from_slice(bad)).is_err());
        }
    }

    #[test]
    fn a_frame_with_an_id_is_the_payload_with_the_id_last() {
        let b = names(&[Key::Str("b".into())]);
        let keep = Keep::from_wire("5/60").unwrap();
        for cmd in [
            Command::PublishKept(b.clone(), Bytes::from_static(b"N;"), keep),
            Command::Waking(Box::new(Command::Publish(
                b.clone(),
                Bytes::from_static(b"i:1;"),
            ))),
            Command::Unpark(b.clone()),
            Command::Reserve,
            Command::History(b[0].clone(), None),
        ] {
            let f = cmd.encode_frame_with_id(Some(7));
            assert_eq!(&f[..4], &(f.len() as u32).to_be_bytes());
            assert_eq!(&f[4..], &cmd.encode_payload_with_id(7)[..]);
            assert!(f.ends_with(br#"s:2:"id";i:7;}"#));
            let (back, id) = Command::decode_request(&f.slice(4..)).unwrap();
            assert_eq!(id, Some(7));
            assert_eq!(back.encode_payload(), cmd.encode_payload());
            assert_eq!(&cmd.encode_frame()[4..], &cmd.encode_payload()[..]);
        }
        // A ping is an empty frame: its header alone.
        assert_eq!(&Command::Ping.encode_frame()[..], &4u32.to_be_bytes());
        assert!(Command::Ping.encode_payload().is_empty());
    }

    #[test]
    fn delivery_frames_match_the_serializer() {
        for (kind, t) in [
            (DeliveryKind::Event, "event"),
            (DeliveryKind::Queue, "queue"),
        ] {
            for (name, data) in [
                (&b"i:1;"[..], &b"N;"[..]),
                (br#"s:1:"x";"#, br#"s:3:"abc";"#),
            ] {
                let mut want = vec![0; 4];
                php_serde::write_array_start(&mut want, 3);
                write_type(&mut want, t);
                php_serde::write_str(&mut want, b"channel");
                want.extend_from_slice(name);
                php_serde::write_str(&mut want, b"data");
                want.extend_from_slice(data);
                want.push(b'}');
                let len = want.len() as u32;
                want[..4].copy_from_slice(&len.to_be_bytes());
                assert_eq!(&encode_delivery(kind, name, data)[..], &want[..]);
            }
        }
    }

    #[test]
    fn decode_keeps_data_and_names_raw() {
        let payload = Bytes::from_static(
            br#"a:3:{s:4:"type";s:7:"publish";s:8:"channels";a:2:{i:0;s:1:"1";i:1;s:1:"x";}s:4:"data";O:8:"stdClass":0:{}}"#,
        );
        let Command::Publish(ch, data) = Command::decode(&payload).unwrap() else {
            panic!()
        };
        assert_eq!(ch[0].key, Key::Int(1));
        assert_eq!(&ch[0].raw[..], br#"s:1:"1";"#);
        assert_eq!(ch[1].key, Key::Str("x".into()));
        assert_eq!(&data[..], br#"O:8:"stdClass":0:{}"#);
    }

    #[test]
    fn bad_commands() {
        for bad in [
            &br#"a:1:{s:4:"type";s:4:"nope";}"#[..],
            br#"a:1:{s:4:"data";i:1;}"#,
            br#"garbage"#,
            br#"a:1:{s:4:"type";s:9:"subscribe";}extra"#,
            br#"a:2:{s:4:"type";s:9:"subscribe";s:8:"channels";a:1:{i:0;b:1;}}"#,
        ] {
            assert!(Command::decode(&Bytes::copy_from_slice(bad)).is_err());
        }
        assert!(matches!(Command::decode(&Bytes::new()), Ok(Command::Ping)));
        let reserve = Command::decode(&Bytes::from_static(br#"a:1:{s:4:"type";s:7:"reserve";}"#));
        assert!(matches!(reserve, Ok(Command::Reserve)));
        // Integer keys are skipped; a type that PHP would read as an integer is refused.
        let skipped = br#"a:2:{i:0;s:1:"x";s:4:"type";s:7:"reserve";}"#;
        assert!(matches!(
            Command::decode(&Bytes::from_static(skipped)),
            Ok(Command::Reserve)
        ));
        let msg = |p: &'static [u8]| Command::decode(&Bytes::from_static(p)).unwrap_err().msg;
        assert_eq!(
            msg(br#"a:1:{s:4:"type";s:1:"1";}"#),
            "type must be a string"
        );
        assert_eq!(msg(br#"a:1:{s:4:"type";i:1;}"#), "type must be a string");
        assert_eq!(
            msg(br#"a:1:{s:4:"type";s:4:"nope";}"#),
            r#"unknown type "nope""#
        );
    }
}
