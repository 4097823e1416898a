//! [`Frame`]: the JSON envelope of every Pusher WebSocket message, `{"event": …, "channel": …,
//! "data": …}`. Clients send `data` as an object (`pusher:subscribe`) or anything (client
//! events); the server sends it as a string holding JSON (or the text a publisher gave), which
//! pusher-js parses again — so a publisher's payload passes through as it came.

use serde_json::{Map, Value};

/// A message that is not a Pusher frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Pusher message: {0}")]
pub struct FrameError(pub String);

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// `pusher:subscribe`, `client-typing`, …
    pub event: String,
    /// The channel it is on, if any.
    pub channel: Option<String>,
    /// The payload (absent: `Null`).
    pub data: Value,
}

impl Frame {
    /// Read a client's message: a JSON object with a string `event`, an optional string
    /// `channel`, and any `data`.
    pub fn parse(text: &str) -> Result<Frame, FrameError> {
        let mut obj: Map<String, Value> = match serde_json::from_str(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(FrameError("not a JSON object".into())),
            Err(e) => return Err(FrameError(e.to_string())),
        };
        let event = match obj.remove("event") {
            Some(Value::String(e)) => e,
            Some(_) => return Err(FrameError("event is not a string".into())),
            None => return Err(FrameError("no event".into())),
        };
        let channel = match obj.remove("channel") {
            Some(Value::String(c)) => Some(c),
            None | Some(Value::Null) => None,
            Some(_) => return Err(FrameError("channel is not a string".into())),
        };
        let data = obj.remove("data").unwrap_or(Value::Null);
        Ok(Frame {
            event,
            channel,
            data,
        })
    }

    /// A field of an object `data`, or of `data` given as a string holding a JSON object
    /// (older clients); `None` when absent or not a string.
    pub fn data_field(&self, name: &str) -> Option<String> {
        match &self.data {
            Value::Object(m) => m.get(name).and_then(Value::as_str).map(str::to_string),
            Value::String(s) => serde_json::from_str::<Map<String, Value>>(s)
                .ok()?
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        }
    }

    /// `data` as the server sends it on: a string as it is, anything else as JSON text.
    pub fn data_text(&self) -> String {
        match &self.data {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        }
    }
}

/// A message from the server: `event` on `channel` (if any) with `data` sent as a string.
pub fn encode(event: &str, channel: Option<&str>, data: &str) -> String {
    let q = |s: &str| Value::from(s).to_string();
    match channel {
        Some(c) => format!(
            "{{\"event\":{},\"channel\":{},\"data\":{}}}",
            q(event),
            q(c),
            q(data)
        ),
        None => format!("{{\"event\":{},\"data\":{}}}", q(event), q(data)),
    }
}

/// A client event on a presence channel as the others get it: with its sender's `user_id`.
pub fn encode_from_user(event: &str, channel: &str, data: &str, user_id: &str) -> String {
    let q = |s: &str| Value::from(s).to_string();
    format!(
        "{{\"event\":{},\"channel\":{},\"data\":{},\"user_id\":{}}}",
        q(event),
        q(channel),
        q(data),
        q(user_id)
    )
}

/// A message from the server whose `data` is an object (`pusher:subscription_error`).
pub fn encode_object(event: &str, channel: Option<&str>, data: &Value) -> String {
    let mut m = Map::new();
    m.insert("event".into(), Value::from(event));
    if let Some(c) = channel {
        m.insert("channel".into(), Value::from(c));
    }
    m.insert("data".into(), data.clone());
    Value::Object(m).to_string()
}

/// `pusher:connection_established`, the first message of a connection.
pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> String {
    let data = serde_json::json!({
        "socket_id": socket_id,
        "activity_timeout": activity_timeout_secs,
    });
    encode("pusher:connection_established", None, &data.to_string())
}

/// `pusher:error` with a protocol error code (`None` for errors without one) and a message.
pub fn error(code: Option<u16>, message: &str) -> String {
    let data = serde_json::json!({ "code": code, "message": message });
    // `pusher:error` carries its data as an object.
    format!("{{\"event\":\"pusher:error\",\"data\":{}}}", data)
}

/// `pusher:pong`, the answer to `pusher:ping`.
pub fn pong() -> String {
    "{\"event\":\"pusher:pong\",\"data\":{}}".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages() {
        let f = Frame::parse(
            r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel":"private-a"}}"#,
        )
        .unwrap();
        assert_eq!(f.event, "pusher:subscribe");
        assert_eq!(f.channel, None);
        assert_eq!(f.data_field("channel").as_deref(), Some("private-a"));
        assert_eq!(f.data_field("channel_data"), None);
        let f = Frame::parse(r#"{"event":"client-typing","channel":"private-a","data":{"x":1}}"#)
            .unwrap();
        assert_eq!(f.channel.as_deref(), Some("private-a"));
        assert_eq!(f.data_text(), r#"{"x":1}"#);
        let f =
            Frame::parse(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#).unwrap();
        assert_eq!(f.data_field("channel").as_deref(), Some("a"));
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"event":1}"#,
            r#"{"event":"e","channel":2}"#,
            "{\"event\"",
        ] {
            assert!(Frame::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_messages() {
        assert_eq!(
            connection_established("1.2", 120),
            r#"{"event":"pusher:connection_established","data":"{\"activity_timeout\":120,\"socket_id\":\"1.2\"}"}"#
        );
        assert_eq!(
            encode("news", Some("c"), "he said \"hi\""),
            r#"{"event":"news","channel":"c","data":"he said \"hi\""}"#
        );
        assert_eq!(
            error(Some(4001), "App key x not in this cluster"),
            r#"{"event":"pusher:error","data":{"code":4001,"message":"App key x not in this cluster"}}"#
        );
        assert_eq!(pong(), r#"{"event":"pusher:pong","data":{}}"#);
        let back: Value = serde_json::from_str(&encode("e", None, "{\"a\":1}")).unwrap();
        assert_eq!(back["data"], "{\"a\":1}");
    }
}
