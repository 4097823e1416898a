//! History: what a name's publishes leave behind, so that a subscriber that was away gets
//! exactly what it missed — or is told that it cannot.
//!
//! A publisher's client holds [`History`] rules (name pattern → [`Keep`]); a publish to a name
//! they cover is kept by the backend, which gives it a [`Position`]: the name's *epoch* (a
//! random number, new whenever the backend lost the name's history: a restarted channel
//! server, an expired Redis stream) and an *offset* (1, 2, 3, … within the epoch). Subscribers
//! receive the position with the event; a read since a position answers a [`Page`]: what came
//! after it, in order, with `recovered` true only when nothing in between is missing.
//!
//! Where it is kept: the hub's [`Store`] (embedded and channel server; lost with the process),
//! or Redis streams (`channel/redis/history.lua`; kept as Redis persists).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::php_serde::{self, Key, PhpError, Reader};

/// Most messages a name keeps, whatever its rule says.
pub const MAX_SIZE: u32 = 100_000;
/// Longest a message is kept, whatever its rule says (a day).
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

/// Where a message stands in its name's history. [`Position::NONE`] (`0:0`) stands before
/// any history: a reader that saw none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The history's epoch: changes when the backend lost it.
    pub epoch: u64,
    /// The message's number in the epoch, from 1.
    pub offset: u64,
}

impl Position {
    /// Before any history: the name kept none when the reader looked.
    pub const NONE: Position = Position {
        epoch: 0,
        offset: 0,
    };
}

impl fmt::Display for Position {
    /// `EPOCH:OFFSET`, both in decimal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl std::str::FromStr for Position {
    type Err = HistoryError;
    /// `EPOCH:OFFSET`, decimal without signs or leading zeros; epoch 0 only as `0:0`.
    fn from_str(s: &str) -> Result<Position, HistoryError> {
        let bad = || HistoryError::BadPosition(s.chars().take(64).collect());
        let (e, o) = s.split_once(':').ok_or_else(bad)?;
        let p = Position {
            epoch: strict_u64(e).ok_or_else(bad)?,
            offset: strict_u64(o).ok_or_else(bad)?,
        };
        if p.epoch == 0 && p.offset != 0 {
            return Err(bad());
        }
        Ok(p)
    }
}

/// A decimal without sign or leading zero (`0` itself allowed).
fn strict_u64(s: &str) -> Option<u64> {
    let ok = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'))
        && s.len() <= 20;
    ok.then(|| s.parse().ok()).flatten()
}

/// A new epoch: random, not 0, below 2^53 (Redis' Lua keeps numbers as doubles).
pub fn new_epoch() -> u64 {
    (rand::random::<u64>() >> 11).max(1)
}

/// How much of a name's history to keep: its last `size` messages, each for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// Messages kept (1 ..= [`MAX_SIZE`]).
    pub size: u32,
    /// How long each is kept (1 s ..= [`MAX_TTL`]).
    pub ttl: Duration,
}

impl Keep {
    /// A rule's bounds, checked.
    pub fn new(size: u32, ttl: Duration) -> Result<Keep, HistoryError> {
        if size == 0 || size > MAX_SIZE {
            return Err(HistoryError::BadRule(format!(
                "size {size} is not 1..={MAX_SIZE}"
            )));
        }
        if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
            return Err(HistoryError::BadRule(format!(
                "ttl {ttl:?} is not 1 s ..= {MAX_TTL:?}"
            )));
        }
        Ok(Keep { size, ttl })
    }

    /// The wire form: `SIZE/TTL-SECONDS`.
    pub fn wire(&self) -> String {
        format!("{}/{}", self.size, self.ttl.as_secs())
    }

    /// Append the wire form to `out` as a PHP string, without allocating.
    pub(crate) fn write_wire(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let mut buf = [0u8; 48];
        let mut cur = std::io::Cursor::new(&mut buf[..]);
        write!(cur, "{}/{}", self.size, self.ttl.as_secs()).expect("two integers fit");
        let n = cur.position() as usize;
        super::php_serde::write_str(out, &buf[..n]);
    }

    /// Read the wire form (bounds checked).
    pub fn from_wire(s: &str) -> Result<Keep, HistoryError> {
        let bad = || HistoryError::BadRule(format!("{s:?} is not SIZE/SECONDS"));
        let (n, t) = s.split_once('/').ok_or_else(bad)?;
        let size = strict_u64(n)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad)?;
        let ttl = strict_u64(t).ok_or_else(bad)?;
        Keep::new(size, Duration::from_secs(ttl))
    }
}

/// Why a history rule, position or answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// A rule that does not parse or is out of bounds.
    #[error("history rule: {0}")]
    BadRule(String),
    /// A position that is not `EPOCH:OFFSET`.
    #[error("{0:?} is not a history position (EPOCH:OFFSET)")]
    BadPosition(String),
}

/// Which names keep history, and how much: rules `PATTERN=SIZE/TTL` (or `PATTERN=off`),
/// the first that matches a name wins. A pattern is a name, `prefix*`, or `*`. Only string
/// names are kept: integer names are worker ids (one node's own events), and names under
/// `werkmann` are the cluster's own; neither is ever kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    rules: Vec<(String, Option<Keep>)>,
}

impl History {
    /// No history for any name.
    pub fn none() -> History {
        History::default()
    }

    /// Rules from text: `PATTERN=SIZE/TTL` or `PATTERN=off`, comma-separated; TTL in seconds
    /// or with a unit (`300s`, `5m`, `2h`). E.g. `chat-*=1000/1h,*=100/5m`.
    pub fn parse(spec: &str) -> Result<History, HistoryError> {
        let mut rules = Vec::new();
        for rule in spec.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (pattern, what) = rule.split_once('=').ok_or_else(|| {
                HistoryError::BadRule(format!("{rule:?} is not PATTERN=SIZE/TTL or PATTERN=off"))
            })?;
            let pattern = pattern.trim();
            let star = pattern.find('*');
            if pattern.is_empty() || star.is_some_and(|i| i != pattern.len() - 1) {
                return Err(HistoryError::BadRule(format!(
                    "pattern {pattern:?}: a name, PREFIX* or *"
                )));
            }
            let what = what.trim();
            let keep = if what == "off" {
                None
            } else {
                let (size, ttl) = what.split_once('/').ok_or_else(|| {
                    HistoryError::BadRule(format!("{what:?} is not SIZE/TTL or off"))
                })?;
                let size = strict_u64(size.trim())
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| HistoryError::BadRule(format!("size {size:?}")))?;
                Some(Keep::new(size, parse_ttl(ttl.trim())?)?)
            };
            rules.push((pattern.to_string(), keep));
        }
        Ok(History { rules })
    }

    /// Whether no name keeps history.
    pub fn is_none(&self) -> bool {
        self.rules.iter().all(|(_, k)| k.is_none())
    }

    /// What `name` keeps, if anything (never a worker id's events, nor the cluster's own
    /// under `werkmann`: reports, the directory's announcements).
    pub fn keep_for(&self, name: &Key) -> Option<Keep> {
        let Key::Str(name) = name else { return None };
        if name.starts_with("werkmann") {
            return None;
        }
        self.rules
            .iter()
            .find(|(p, _)| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => p == name,
            })
            .and_then(|(_, k)| *k)
    }
}

fn parse_ttl(s: &str) -> Result<Duration, HistoryError> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n = strict_u64(n).ok_or_else(|| HistoryError::BadRule(format!("ttl {s:?}")))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(HistoryError::BadRule(format!("ttl {s:?}: unit s, m or h"))),
    };
    Ok(Duration::from_secs(secs))
}

/// The answer to a read since a position: the messages after it, in order, and whether they
/// are all that came after it (`recovered`); when not, `items` is empty and the reader goes
/// on from `top`, told that something is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The history's epoch now (0: the name keeps no history now).
    pub epoch: u64,
    /// The offset of its last message (0: none yet in this epoch).
    pub top: u64,
    /// Whether `items` is everything after the position asked for.
    pub recovered: bool,
    /// `(offset, data)` in order.
    pub items: Vec<(u64, Bytes)>,
}

impl Page {
    /// The position a reader stands at after this page.
    pub fn last(&self) -> Option<Position> {
        (self.epoch != 0).then_some(Position {
            epoch: self.epoch,
            offset: self.top,
        })
    }

    /// PHP `serialize()` form: `{epoch, top, recovered, items: {offset: data, …}}`, the data
    /// written as published (it is PHP-serialized already).
    pub fn encode(&self) -> Vec<u8> {
        let len: usize = self.items.iter().map(|(_, d)| d.len() + 24).sum();
        let mut out = Vec::with_capacity(96 + len);
        php_serde::write_array_start(&mut out, 4);
        php_serde::write_str(&mut out, b"epoch");
        Key::Int(self.epoch as i64).write(&mut out);
        php_serde::write_str(&mut out, b"top");
        Key::Int(self.top as i64).write(&mut out);
        php_serde::write_str(&mut out, b"recovered");
        out.extend_from_slice(if self.recovered { b"b:1;" } else { b"b:0;" });
        php_serde::write_str(&mut out, b"items");
        php_serde::write_array_start(&mut out, self.items.len());
        for (o, d) in &self.items {
            Key::Int(*o as i64).write(&mut out);
            out.extend_from_slice(d);
        }
        out.extend_from_slice(b"}}");
        out
    }

    /// Read [`Page::encode`]'s form (data sliced from `bytes`, not copied), strictly.
    pub fn decode(bytes: &Bytes) -> Result<Page, PhpError> {
        let bad = |msg: &str, pos| PhpError {
            msg: format!("history page: {msg}"),
            pos,
        };
        let mut r = Reader::new(bytes);
        let n = r.array_start()?;
        let (mut epoch, mut top, mut recovered, mut items) = (None, None, None, None);
        for _ in 0..n {
            let at = r.pos();
            match r.key_raw()? {
                Some(b"epoch") => epoch = Some(int(&mut r)?),
                Some(b"top") => top = Some(int(&mut r)?),
                Some(b"recovered") => {
                    let range = r.skip()?;
                    recovered = Some(match &bytes[range] {
                        b"b:1;" => true,
                        b"b:0;" => false,
                        _ => return Err(bad("recovered is not a boolean", at)),
                    });
                }
                Some(b"items") => {
                    let count = r.array_start()?;
                    let mut v: Vec<(u64, Bytes)> = Vec::with_capacity(count.min(4096));
                    for _ in 0..count {
                        let o = int(&mut r)?;
                        if v.last().is_some_and(|(p, _)| *p >= o) {
                            return Err(bad("offsets out of order", r.pos()));
                        }
                        let range = r.skip()?;
                        v.push((o, bytes.slice(range)));
                    }
                    r.array_end()?;
                    items = Some(v);
                }
                _ => return Err(bad("unknown key", at)),
            }
        }
        r.array_end()?;
        if !r.at_end() {
            return Err(bad("trailing bytes", r.pos()));
        }
        match (epoch, top, recovered, items) {
            (Some(epoch), Some(top), Some(recovered), Some(items)) => Ok(Page {
                epoch,
                top,
                recovered,
                items,
            }),
            _ => Err(bad("a key is missing", 0)),
        }
    }
}

fn int(r: &mut Reader<'_>) -> Result<u64, PhpError> {
    let at = r.pos();
    match r.key()? {
        Key::Int(i) if i >= 0 => Ok(i as u64),
        _ => Err(PhpError {
            msg: "history page: not a number".into(),
            pos: at,
        }),
    }
}

/// Whether a reader at `since` recovers from a history with `epoch`, last offset `top` and
/// oldest kept offset `first` (`top + 1` when none is kept): same epoch, not ahead, and
/// nothing after `since` trimmed. A reader at [`Position::NONE`] recovers only while the name
/// still keeps nothing (epoch 0): what was kept since may have followed a history it never saw.
pub fn recovers(since: Position, epoch: u64, top: u64, first: u64) -> bool {
    since.epoch == epoch && since.offset <= top && since.offset + 1 >= first
}

/// One name's kept messages in a hub.
struct Stream {
    epoch: u64,
    top: u64,
    keep: Keep,
    /// `(offset, kept at, data)`, oldest first.
    items: VecDeque<(u64, Instant, Bytes)>,
    last_publish: Instant,
}

impl Stream {
    fn expire(&mut self, now: Instant) {
        while self
            .items
            .front()
            .is_some_and(|(_, t, _)| now.duration_since(*t) >= self.keep.ttl)
        {
            self.items.pop_front();
        }
    }
}

/// The history a hub keeps (embedded, channel server): per name, its epoch and last messages.
/// A name is forgotten (and starts a new epoch) once idle past its ttl.
#[derive(Default)]
pub(crate) struct Store {
    streams: HashMap<Key, Stream>,
    appends: u64,
}

impl Store {
    /// The streams kept and the events in them (for the metrics).
    pub fn sizes(&self) -> (usize, usize) {
        let events = self.streams.values().map(|s| s.items.len()).sum();
        (self.streams.len(), events)
    }

    /// Keep `data` as `name`'s next message; its position.
    pub fn append(&mut self, name: &Key, data: &Bytes, keep: Keep, now: Instant) -> Position {
        self.appends += 1;
        if self.appends.is_multiple_of(4096) {
            self.sweep(now);
        }
        let s = self.streams.entry(name.clone()).or_insert_with(|| Stream {
            epoch: new_epoch(),
            top: 0,
            keep,
            items: VecDeque::new(),
            last_publish: now,
        });
        s.keep = keep;
        s.top += 1;
        s.last_publish = now;
        s.items.push_back((s.top, now, data.clone()));
        while s.items.len() > keep.size as usize {
            s.items.pop_front();
        }
        s.expire(now);
        Position {
            epoch: s.epoch,
            offset: s.top,
        }
    }

    /// What came after `since` on `name` (see [`Page`]); `None`: where it stands now.
    pub fn read(&mut self, name: &Key, since: Option<Position>, now: Instant) -> Page {
        let Some(s) = self.streams.get_mut(name) else {
            return Page {
                epoch: 0,
                top: 0,
                recovered: since == Some(Position::NONE),
                items: Vec::new(),
            };
        };
        s.expire(now);
        let first = s.items.front().map_or(s.top + 1, |(o, _, _)| *o);
        let recovered = since.is_some_and(|p| recovers(p, s.epoch, s.top, first));
        let items = match since {
            Some(p) if recovered => s
                .items
                .iter()
                .filter(|(o, _, _)| *o > p.offset)
                .map(|(o, _, d)| (*o, d.clone()))
                .collect(),
            _ => Vec::new(),
        };
        Page {
            epoch: s.epoch,
            top: s.top,
            recovered,
            items,
        }
    }

    /// Forget names idle past their ttl.
    fn sweep(&mut self, now: Instant) {
        self.streams
            .retain(|_, s| now.duration_since(s.last_publish) < s.keep.ttl);
    }

    /// Names kept and messages held (for stats and tests).
    #[cfg(test)]
    pub fn size(&self) -> (usize, usize) {
        let msgs = self.streams.values().map(|s| s.items.len()).sum();
        (self.streams.len(), msgs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Key {
        Key::Str(s.into())
    }

    #[test]
    fn rules_match_in_order_and_only_string_names() {
        let h = History::parse("chat-*=1000/1h, news=off, *=100/300s").unwrap();
        let keep = |n: &Key| h.keep_for(n);
        assert_eq!(keep(&k("chat-1")).unwrap().size, 1000);
        assert_eq!(keep(&k("chat-1")).unwrap().ttl, Duration::from_secs(3600));
        assert_eq!(keep(&k("news")), None);
        assert_eq!(keep(&k("Broadcast")).unwrap().size, 100);
        assert_eq!(keep(&Key::Int(3)), None);
        assert_eq!(keep(&k("werkmann.report:1")), None);
        assert!(History::none().is_none());
        for bad in [
            "x",
            "*=0/5",
            "*=5/0",
            "*=5",
            "a*b=1/1",
            "*=1/1d",
            "=1/1",
            "*=01/5",
            "*=5/99999999",
        ] {
            assert!(History::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn positions_and_keeps_are_read_strictly() {
        let p: Position = "12:0".parse().unwrap();
        assert_eq!(p.to_string(), "12:0");
        assert_eq!("0:0".parse::<Position>().unwrap(), Position::NONE);
        for bad in ["", "1", "0:1", "01:1", "1:-1", "1:1:1", " 1:1", "x:1"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
        let keep = Keep::new(10, Duration::from_secs(60)).unwrap();
        assert_eq!(Keep::from_wire(&keep.wire()).unwrap(), keep);
        assert!(Keep::from_wire("0/60").is_err());
        assert!(Keep::from_wire("10").is_err());
    }

    #[test]
    fn pages_round_trip_and_bad_ones_are_refused() {
        let page = Page {
            epoch: 7,
            top: 9,
            recovered: true,
            items: vec![
                (8, Bytes::from_static(b"s:1:\"a\";")),
                (9, Bytes::from_static(b"i:5;")),
            ],
        };
        let bytes = Bytes::from(page.encode());
        assert_eq!(Page::decode(&bytes).unwrap(), page);
        let s = String::from_utf8(page.encode()).unwrap();
        for bad in [
            s.replace("i:8;", "i:10;"),
            s.replace("b:1;", "i:1;"),
            s.replace("a:4:", "a:3:"),
            format!("{s}x"),
        ] {
            assert!(Page::decode(&Bytes::from(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_store_answers_exactly_what_came_after_or_not_recovered() {
        let mut st = Store::default();
        let keep = Keep::new(3, Duration::from_secs(60)).unwrap();
        let t0 = Instant::now();
        let name = k("news");
        let d = |i: u64| Bytes::from(format!("i:{i};"));
        let p1 = st.append(&name, &d(1), keep, t0);
        assert_eq!(p1.offset, 1);
        for i in 2..=4 {
            st.append(&name, &d(i), keep, t0);
        }
        // Kept: 2, 3, 4. From 2: 3 and 4.
        let page = st.read(&name, Some(Position { offset: 2, ..p1 }), t0);
        assert!(page.recovered);
        assert_eq!(page.items, vec![(3, d(3)), (4, d(4))]);
        // From 1: 2 is the oldest kept, nothing missing.
        assert!(st.read(&name, Some(p1), t0).recovered);
        // From 0: 1 was trimmed.
        let from0 = Position { offset: 0, ..p1 };
        let page = st.read(&name, Some(from0), t0);
        assert!(!page.recovered && page.items.is_empty() && page.top == 4);
        // At the top: recovered, nothing to send.
        let at_top = Position { offset: 4, ..p1 };
        assert!(st.read(&name, Some(at_top), t0).recovered);
        // Another epoch, or ahead of the top: not recovered.
        let other = Position {
            epoch: p1.epoch + 1,
            offset: 4,
        };
        assert!(!st.read(&name, Some(other), t0).recovered);
        assert!(
            !st.read(&name, Some(Position { offset: 5, ..p1 }), t0)
                .recovered
        );
        // Expired by age: not recovered from 2 any more, recovered at the top.
        let later = t0 + Duration::from_secs(61);
        assert!(
            !st.read(&name, Some(Position { offset: 2, ..p1 }), later)
                .recovered
        );
        assert!(st.read(&name, Some(at_top), later).recovered);
        // Idle past its ttl: forgotten at the next sweep, a new epoch after it.
        st.sweep(later);
        assert_eq!(st.size(), (0, 0));
        let p = st.append(&name, &d(5), keep, later);
        assert_eq!(p.offset, 1);
        assert!(!st.read(&name, Some(at_top), later).recovered);
        // Nothing kept when the reader looked: recovered only while nothing is.
        assert!(st.read(&k("quiet"), Some(Position::NONE), later).recovered);
        assert!(!st.read(&name, Some(Position::NONE), later).recovered);
    }
}
