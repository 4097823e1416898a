//! What the two resuming readers of the push app share — Server-Sent Events (`sse.rs`) and the
//! resuming WebSocket protocol (`stream.rs`): which channel names a reader may follow, the
//! positions it resumes from, the id that carries them, an event's text.

use std::fmt::Write as _;

use werkmann::channel::{php_serde, Name, Position};
use werkmann::protocol::http::percent_decode;
use werkmann::Response;

/// Most names one reader follows.
pub const MAX_CHANNELS: usize = 16;
/// Longest channel name a reader takes.
pub const MAX_NAME: usize = 200;

/// Whether `name` may be followed (or pushed to by name): 1 to [`MAX_NAME`] characters of
/// letters, digits and `_-.:@=`, not an integer (worker ids' events) and not under `werkmann`
/// (the cluster's own).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@=".contains(&b))
        && !matches!(Name::from(name), Name::Int(_))
        && !name.starts_with("werkmann")
}

/// The channel event a reader's name follows: a name as it is, but `presence:uids` and
/// `presence:group:NAME`, which follow the nodes' presence announcements
/// (`werkmann::gateway::presence`).
pub fn event_of(name: &str) -> Name {
    use werkmann::gateway::presence;
    if name == "presence:uids" {
        return Name::from(presence::uids_event());
    }
    match name.strip_prefix("presence:group:") {
        Some(g) if !g.is_empty() => Name::from(presence::group_event(g)),
        _ => Name::from(name),
    }
}

/// The 400 for a name [`valid_name`] refuses.
pub fn bad_name(name: &str) -> Response {
    Response::text(
        400,
        format!(
            "channel {:?}: 1 to {MAX_NAME} of A-Z a-z 0-9 _-.:@=, not a number, not werkmann…\n",
            name.chars().take(64).collect::<String>()
        ),
    )
}

/// The names a query asks for (`channel=A&channel=B` or `channel=A,B`), each once, or the
/// 400 that says what is wrong.
pub fn channels(query: &str) -> Result<Vec<String>, Response> {
    let mut names: Vec<String> = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k) != "channel" {
            continue;
        }
        for n in percent_decode(v).split(',') {
            if !valid_name(n) {
                return Err(bad_name(n));
            }
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
    }
    match names.len() {
        0 => Err(Response::text(400, "missing channel: ?channel=NAME\n")),
        n if n > MAX_CHANNELS => Err(Response::text(
            400,
            format!("{n} channels: at most {MAX_CHANNELS} per reader\n"),
        )),
        _ => Ok(names),
    }
}

/// The positions to resume from (`EPOCH:OFFSET` per name, comma-separated), or the 400.
pub fn positions(id: Option<String>, count: usize) -> Result<Option<Vec<Position>>, Response> {
    let Some(id) = id.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let positions: Result<Vec<Position>, _> = id.split(',').map(str::parse).collect();
    match positions {
        Ok(p) if p.len() == count => Ok(Some(p)),
        _ => Err(Response::text(
            400,
            format!("Last-Event-ID must be {count} EPOCH:OFFSET position(s), comma-separated\n"),
        )),
    }
}

/// The id of an event: every name's position.
pub fn id_of(positions: &[Position]) -> String {
    let mut id = String::with_capacity(24 * positions.len());
    for (i, p) in positions.iter().enumerate() {
        if i > 0 {
            id.push(',');
        }
        let _ = write!(id, "{p}");
    }
    id
}

/// An event's data as a reader gets it: the push's `content`, else the value as JSON.
pub fn data_text(data: &bytes::Bytes) -> String {
    if let Some(text) = php_serde::field(data, "content")
        .ok()
        .and_then(|f| f.text())
    {
        return text;
    }
    php_serde::from_slice(data)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// One encoding of an event for every reader that would encode it alike: readers of one name
/// at the same position (every single-name reader of an instance) share the bytes. Keyed by
/// the event's data (the same `Bytes` handed to each reader, kept alive here, so its address
/// names it), the label the reader gives it and the positions of its id — compared, not
/// formatted, so a reader that shares an encoding costs no allocation.
pub struct Shared<T: Clone> {
    last: std::cell::RefCell<Option<Cached<T>>>,
}

struct Cached<T> {
    data: bytes::Bytes,
    label: String,
    positions: Vec<Position>,
    value: T,
}

impl<T: Clone> Shared<T> {
    /// An empty cache (one per thread: `thread_local!`).
    pub const fn new() -> Self {
        Shared {
            last: std::cell::RefCell::new(None),
        }
    }

    /// The encoding for `data` labelled `label` at `positions`, made by `make` unless the last
    /// one fits.
    pub fn get(
        &self,
        data: &bytes::Bytes,
        label: &str,
        positions: &[Position],
        make: impl FnOnce() -> T,
    ) -> T {
        if let Some(c) = &*self.last.borrow() {
            if c.data.as_ptr() == data.as_ptr()
                && c.data.len() == data.len()
                && c.label == label
                && c.positions == positions
            {
                return c.value.clone();
            }
        }
        let value = make();
        *self.last.borrow_mut() = Some(Cached {
            data: data.clone(),
            label: label.to_string(),
            positions: positions.to_vec(),
            value: value.clone(),
        });
        value
    }
}

impl<T: Clone> Default for Shared<T> {
    fn default() -> Self {
        Shared::new()
    }
}

/// A feed's event as both readers (`sse.rs`, `stream.rs`) frame it.
pub enum Step<'a> {
    /// The reader stands (a new one), at this id.
    Stands(String),
    /// `{"recovered", "lost"}` (a resumed reader caught up, or a name started again), and the
    /// id.
    Recovery(serde_json::Value, String),
    /// An event of name `index`, and the positions after it (its id: [`id_of`]).
    Message {
        /// The name's index.
        index: usize,
        /// Its PHP data.
        data: &'a bytes::Bytes,
        /// Every name's position after it.
        positions: &'a [Position],
    },
}

/// What a feed's event is for a reader of `labels`.
pub fn step<'a>(labels: &[String], ev: werkmann::channel::FeedEvent<'a>) -> Step<'a> {
    use werkmann::channel::FeedEvent;
    match ev {
        FeedEvent::Ready {
            lost: None,
            positions,
        } => Step::Stands(id_of(positions)),
        FeedEvent::Ready {
            lost: Some(lost),
            positions,
        } => Step::Recovery(recovery(labels, &lost), id_of(positions)),
        FeedEvent::Lost { index, positions } => {
            Step::Recovery(recovery(labels, &[index]), id_of(positions))
        }
        FeedEvent::Message {
            index,
            data,
            positions,
        } => Step::Message {
            index,
            data,
            positions,
        },
    }
}

/// `{"recovered", "lost"}` for names `lost` (by index) of `labels`.
pub fn recovery(labels: &[String], lost: &[usize]) -> serde_json::Value {
    let names: Vec<&str> = lost.iter().map(|&i| labels[i].as_str()).collect();
    serde_json::json!({ "recovered": lost.is_empty(), "lost": names })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_may_be_followed() {
        for ok in ["Broadcast", "news", "chat-1", "a.b:c@d=e_f"] {
            assert!(valid_name(ok), "{ok}");
        }
        let long = "x".repeat(MAX_NAME + 1);
        for bad in [
            "",
            "3",
            "-5",
            "a b",
            "a/b",
            "werkmann.gw.x",
            long.as_str(),
            "ä",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(channels("channel=a,b&x=1&channel=a").unwrap(), ["a", "b"]);
        assert!(channels("x=1").is_err());
    }

    #[test]
    fn one_encoding_per_event_and_place() {
        let cache: Shared<String> = Shared::new();
        let made = std::cell::Cell::new(0);
        let make = |s: &str| {
            made.set(made.get() + 1);
            s.to_string()
        };
        let a = bytes::Bytes::from_static(b"i:1;");
        let a2 = bytes::Bytes::copy_from_slice(b"i:1;"); // equal bytes, another event
        let at = |o| {
            [Position {
                epoch: 1,
                offset: o,
            }]
        };
        assert_eq!(cache.get(&a, "n", &at(1), || make("x")), "x");
        assert_eq!(cache.get(&a.clone(), "n", &at(1), || make("y")), "x");
        assert_eq!(made.get(), 1, "the same event at the same place: shared");
        assert_eq!(cache.get(&a, "n", &at(2), || make("z")), "z");
        assert_eq!(cache.get(&a2, "n", &at(2), || make("w")), "w");
        assert_eq!(cache.get(&a2, "m", &at(2), || make("v")), "v");
        assert_eq!(made.get(), 4, "another place, event or label: encoded anew");
    }

    #[test]
    fn ids_carry_every_position() {
        let p = |e, o| Position {
            epoch: e,
            offset: o,
        };
        assert_eq!(id_of(&[p(5, 2), Position::NONE]), "5:2,0:0");
        assert_eq!(
            positions(Some("5:2,0:0".into()), 2).unwrap(),
            Some(vec![p(5, 2), Position::NONE])
        );
        assert!(positions(Some("5:2".into()), 2).is_err());
        let text = |v: serde_json::Value| data_text(&php_serde::to_vec(&v).into());
        assert_eq!(text(serde_json::json!({"content": "hi\nyo"})), "hi\nyo");
        assert_eq!(text(serde_json::json!([1, 2])), "[1,2]");
    }
}
