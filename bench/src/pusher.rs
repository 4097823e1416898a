//! The Pusher protocol as the load tool speaks it to werkmann and Soketi: the one app both
//! serve, the frames a client sends and reads, subscription signatures, and signed HTTP API
//! requests (`POST /apps/{id}/events`, `GET /apps/{id}/channels/…`), signed with werkmann's
//! own `pusher::sign` (the same HMAC-SHA256 any Pusher server checks).

use std::net::SocketAddr;

use werkmann::pusher::sign::{api_string_to_sign, body_md5, hmac_hex};

use crate::proto::Flavor;

/// The app's id (numeric, as the Pusher SDKs want it).
pub const APP_ID: &str = "1000";
/// The app's key: clients connect to `/app/{KEY}`.
pub const KEY: &str = "pushbench-key";
/// The app's secret.
pub const SECRET: &str = "pushbench-secret";
/// The public channel of the broadcast, idle and publish rows.
pub const CHANNEL: &str = "bench";
/// The presence channel of the presence row.
pub const PRESENCE: &str = "presence-bench";
/// The event name of every push.
pub const EVENT: &str = "e";
/// Members a presence channel may have, on both servers (werkmann's app option
/// `max_presence_members`, Soketi's `SOKETI_PRESENCE_MAX_MEMBERS`).
pub const MAX_PRESENCE_MEMBERS: u32 = 100_000;

/// werkmann's apps file for the app.
pub fn apps_file() -> String {
    serde_json::json!({"apps": [{
        "id": APP_ID,
        "key": KEY,
        "secret": SECRET,
        "max_presence_members": MAX_PRESENCE_MEMBERS,
    }]})
    .to_string()
}

/// The WebSocket path a client opens.
pub fn ws_path() -> String {
    format!("/app/{KEY}?protocol=7&client=pushbench&version=1.0")
}

/// The `pusher:subscribe` frame of client `idx` (socket `socket_id`): the public channel, or
/// the presence channel as user `u{idx}`, signed as an app's auth endpoint would.
pub fn subscribe(flavor: Flavor, idx: u32, socket_id: &str) -> String {
    if flavor != Flavor::PusherPresence {
        return format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{CHANNEL}"}}}}"#);
    }
    let channel_data = format!(r#"{{"user_id":"u{idx}"}}"#);
    let sig = hmac_hex(SECRET, &format!("{socket_id}:{PRESENCE}:{channel_data}"));
    serde_json::json!({
        "event": "pusher:subscribe",
        "data": {"channel": PRESENCE, "auth": format!("{KEY}:{sig}"), "channel_data": channel_data},
    })
    .to_string()
}

/// The answer to a `pusher:ping`.
pub const PONG: &[u8] = br#"{"event":"pusher:pong","data":{}}"#;

/// The string value of `"field":"…"` in a frame, as written (no unescaping): enough for the
/// event name and for the pushes' data, which carry no quotes.
pub fn field<'a>(msg: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let key = format!("\"{name}\":\"");
    let at = msg.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let rest = &msg[at..];
    let end = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
    Some(&rest[..end])
}

/// The socket id of a `pusher:connection_established` frame.
pub fn socket_id(msg: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(msg).ok()?;
    let data: serde_json::Value = serde_json::from_str(v["data"].as_str()?).ok()?;
    data["socket_id"].as_str().map(String::from)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The signed query of `method path` with `body` and the request's own `params`.
fn signed_query(method: &str, path: &str, body: &str, params: &[(&str, &str)]) -> String {
    let mut kv: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    kv.push(("auth_key".into(), KEY.into()));
    kv.push(("auth_timestamp".into(), unix_now().to_string()));
    kv.push(("auth_version".into(), "1.0".into()));
    if !body.is_empty() {
        kv.push(("body_md5".into(), body_md5(body.as_bytes())));
    }
    let sig = hmac_hex(SECRET, &api_string_to_sign(method, path, &kv));
    kv.push(("auth_signature".into(), sig));
    kv.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The signed request that publishes `content` (no quotes or backslashes: the payloads of
/// `proto::payload`) to the public channel as event [`EVENT`].
pub fn events(addr: SocketAddr, content: &str) -> Vec<u8> {
    let path = format!("/apps/{APP_ID}/events");
    let body = format!(r#"{{"name":"{EVENT}","channel":"{CHANNEL}","data":"{content}"}}"#);
    let q = signed_query("POST", &path, &body, &[]);
    format!(
        "POST {path}?{q} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The signed `GET /apps/{id}/channels/{PRESENCE}?info=user_count`.
pub fn presence_count(addr: SocketAddr) -> Vec<u8> {
    let path = format!("/apps/{APP_ID}/channels/{PRESENCE}");
    let q = signed_query("GET", &path, "", &[("info", "user_count")]);
    format!("GET {path}?{q} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes()
}

/// The `user_count` of a channel query's answer (0 for an unoccupied channel).
pub fn user_count(body: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    match v["user_count"].as_u64() {
        Some(n) => Some(n),
        None if v["occupied"] == serde_json::Value::Bool(false) => Some(0),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let m = br#"{"event":"e","channel":"bench","data":"P1.b2.0.3.xx"}"#;
        assert_eq!(field(m, "event"), Some(&b"e"[..]));
        assert_eq!(field(m, "data"), Some(&b"P1.b2.0.3.xx"[..]));
        let hello = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"12.34\",\"activity_timeout\":30}"}"#;
        assert_eq!(socket_id(hello).as_deref(), Some("12.34"));
        assert_eq!(
            field(hello, "data"),
            Some(&b"{"[..]),
            "stops at the first escape"
        );
        let sub: serde_json::Value =
            serde_json::from_str(&subscribe(Flavor::PusherPresence, 7, "1.2")).unwrap();
        let auth = sub["data"]["auth"].as_str().unwrap();
        let data = sub["data"]["channel_data"].as_str().unwrap();
        assert_eq!(data, r#"{"user_id":"u7"}"#);
        let want = hmac_hex(SECRET, &format!("1.2:presence-bench:{data}"));
        assert_eq!(auth, format!("{KEY}:{want}"));
        assert_eq!(user_count(r#"{"occupied":true,"user_count":5}"#), Some(5));
        assert_eq!(user_count(r#"{"occupied":false}"#), Some(0));
        assert_eq!(user_count("nope"), None);
    }

    #[test]
    fn requests_are_signed() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let req = String::from_utf8(events(addr, "P1.b0.0.1.x")).unwrap();
        let (head, body) = req.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("body_md5={}", body_md5(body.as_bytes()))));
        let query = head.split_once('?').unwrap().1.split(' ').next().unwrap();
        let params: Vec<(String, String)> = query
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let app: werkmann::pusher::App = format!("{APP_ID}:{KEY}:{SECRET}").parse().unwrap();
        let now = unix_now() as i64;
        let path = format!("/apps/{APP_ID}/events");
        werkmann::pusher::sign::check_api_request(
            &app,
            "POST",
            &path,
            &params,
            body.as_bytes(),
            now,
        )
        .unwrap();
    }
}
