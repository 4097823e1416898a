//! The chat's messages, JSON in the manner of workerman-chat.
//!
//! | direction | message |
//! |---|---|
//! | browser → node | `{"type":"login","client_name":N,"room_id":R}`, `{"type":"say","to_client_id":"all"\|ID,"content":C}`, `{"type":"pong"}` |
//! | node → room | `{"type":"login","client_id","client_name","time"}` (the login's own copy adds `client_list`: `{id: name}`) |
//! | node → room, or target + sender | `{"type":"say","from_client_id","from_client_name","to_client_id","content","time"}` |
//! | node → room | `{"type":"logout","from_client_id","from_client_name","time"}` |
//! | node → one | `{"type":"error","reason":…}`, `{"type":"ping"}` |
//!
//! Names and rooms are what the directory takes as uids and groups
//! ([`dir::check_name`]: 1 to 128 bytes, no control characters); everything is sent as the
//! user typed it, and the page shows it as text, never as HTML.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use werkmann::channel::dir;
use werkmann::gateway::ClientId;

/// Longest message content, in bytes.
pub const MAX_CONTENT_BYTES: usize = 8 * 1024;

/// The heartbeat a node sends; the page answers `{"type":"pong"}`.
pub const PING: &str = r#"{"type":"ping"}"#;

/// What a browser asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Enter room `room_id` as `client_name`.
    Login {
        /// The name (the connection's uid).
        client_name: String,
        /// The room (the connection's group).
        room_id: String,
    },
    /// Say `content` to the room or to one connection.
    Say {
        /// Whom to.
        to: To,
        /// What.
        content: String,
    },
    /// The answer to a ping.
    Pong,
}

/// Whom a `say` is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// Everyone in the sender's room.
    All,
    /// One connection, privately.
    Client(ClientId),
}

/// Read a browser's message; the error is the reason sent back.
pub fn parse(text: &str) -> Result<Request, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("not a JSON message: {e}"))?;
    let Value::Object(m) = value else {
        return Err("not a JSON object".into());
    };
    match string(&m, "type")?.as_str() {
        "login" => {
            let client_name = string(&m, "client_name")?.trim().to_string();
            let room_id = room(&m)?;
            dir::check_name("client_name", &client_name).map_err(|e| e.0)?;
            dir::check_name("room_id", &room_id).map_err(|e| e.0)?;
            Ok(Request::Login {
                client_name,
                room_id,
            })
        }
        "say" => {
            let to = match string(&m, "to_client_id")?.as_str() {
                "all" => To::All,
                id => To::Client(id.parse().map_err(|e: dir::BadName| e.0)?),
            };
            let content = string(&m, "content")?;
            if content.trim().is_empty() {
                return Err("content is empty".into());
            }
            if content.len() > MAX_CONTENT_BYTES {
                return Err(format!(
                    "content is {} bytes long, more than {MAX_CONTENT_BYTES}",
                    content.len()
                ));
            }
            Ok(Request::Say { to, content })
        }
        "pong" => Ok(Request::Pong),
        other => Err(format!("unknown message type {other:?}")),
    }
}

fn string(m: &Map<String, Value>, key: &str) -> Result<String, String> {
    match m.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{key} is not a string")),
        None => Err(format!("missing field {key}")),
    }
}

/// The room: a string, or an integer as workerman-chat's page sends it.
fn room(m: &Map<String, Value>) -> Result<String, String> {
    match m.get("room_id") {
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        _ => Ok(string(m, "room_id")?.trim().to_string()),
    }
}

/// `{"type":"login",…}`, with the room's online list for the login's own copy.
pub fn login(
    client_id: ClientId,
    client_name: &str,
    client_list: Option<&BTreeMap<String, String>>,
) -> String {
    let mut v = json!({
        "type": "login",
        "client_id": client_id,
        "client_name": client_name,
        "time": now(),
    });
    if let Some(list) = client_list {
        v["client_list"] = json!(list);
    }
    v.to_string()
}

/// `{"type":"say",…}` from `from` to its room or, privately, to one connection.
pub fn say(from: ClientId, from_name: &str, to: To, content: &str) -> String {
    let to = match to {
        To::All => "all".to_string(),
        To::Client(id) => id.to_string(),
    };
    json!({
        "type": "say",
        "from_client_id": from,
        "from_client_name": from_name,
        "to_client_id": to,
        "content": content,
        "time": now(),
    })
    .to_string()
}

/// `{"type":"logout",…}`: `from` left its room.
pub fn logout(from: ClientId, from_name: &str) -> String {
    json!({
        "type": "logout",
        "from_client_id": from,
        "from_client_name": from_name,
        "time": now(),
    })
    .to_string()
}

/// `{"type":"error","reason":…}`.
pub fn error(reason: &str) -> String {
    json!({ "type": "error", "reason": reason }).to_string()
}

/// The session a logged-in connection keeps in the directory, readable from any node.
pub fn session(client_name: &str, room_id: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("client_name".into(), client_name.into());
    m.insert("room_id".into(), room_id.into());
    m
}

/// The time as workerman-chat writes it (`date('Y-m-d H:i:s')`), in UTC.
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// `YYYY-MM-DD HH:MM:SS` for seconds since the Unix epoch (Howard Hinnant's civil_from_days).
fn format_utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_workerman_chat_sends_them() {
        assert_eq!(
            parse(r#"{"type":"login","client_name":" alice ","room_id":1}"#),
            Ok(Request::Login {
                client_name: "alice".into(),
                room_id: "1".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"say","to_client_id":"3-17","content":"hi"}"#),
            Ok(Request::Say {
                to: To::Client(ClientId::new(3, 17)),
                content: "hi".into()
            })
        );
        assert_eq!(parse(r#"{"type":"pong"}"#), Ok(Request::Pong));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let why = |s: &str| parse(s).unwrap_err();
        assert!(why("nope").starts_with("not a JSON message"));
        assert_eq!(why("[1]"), "not a JSON object");
        assert_eq!(why(r#"{"type":"dance"}"#), "unknown message type \"dance\"");
        assert_eq!(why(r#"{"type":1}"#), "type is not a string");
        assert_eq!(
            why(r#"{"type":"login","room_id":"1"}"#),
            "missing field client_name"
        );
        assert_eq!(
            why(r#"{"type":"login","client_name":"a"}"#),
            "missing field room_id"
        );
        assert_eq!(
            why(r#"{"type":"login","client_name":"  ","room_id":"1"}"#),
            "client_name is empty"
        );
        let long = "x".repeat(dir::MAX_NAME_BYTES + 1);
        let login = json!({"type": "login", "client_name": long, "room_id": "1"}).to_string();
        assert!(why(&login).contains("more than 128"));
        let login = json!({"type": "login", "client_name": "a", "room_id": long}).to_string();
        assert!(why(&login).starts_with("room_id is 129 bytes"));
        assert!(why(r#"{"type":"say","to_client_id":"bob","content":"x"}"#).contains("3-17"));
        assert_eq!(
            why(r#"{"type":"say","to_client_id":"all"}"#),
            "missing field content"
        );
        let big = json!({"type": "say", "to_client_id": "all", "content": "x".repeat(MAX_CONTENT_BYTES + 1)});
        assert!(why(&big.to_string()).contains("more than"));
    }

    #[test]
    fn time_reads_as_php_date() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn the_login_copy_carries_the_list() {
        let mut list = BTreeMap::new();
        list.insert("1-2".to_string(), "alice".to_string());
        let v: Value =
            serde_json::from_str(&login(ClientId::new(1, 2), "alice", Some(&list))).unwrap();
        assert_eq!(v["client_list"]["1-2"], "alice");
        assert_eq!(v["client_id"], "1-2");
        let v: Value = serde_json::from_str(&login(ClientId::new(1, 2), "alice", None)).unwrap();
        assert!(v.get("client_list").is_none());
    }
}
