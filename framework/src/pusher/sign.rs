//! The signatures of the Pusher protocol, all HMAC-SHA256 with the app's secret, in lower-case
//! hex:
//!
//! - a private or presence subscription's `auth`: `key:hmac(socket_id:channel[:channel_data])`;
//! - a user sign-in's `auth`: `key:hmac(socket_id::user::user_data)`;
//! - an HTTP API request's `auth_signature`: `hmac(METHOD\nPATH\nQUERY)`, QUERY being every
//!   parameter but `auth_signature`, keys in lower case, sorted, as `k=v` joined by `&`, with
//!   `body_md5` (the body's MD5 in hex) among them when there is a body; the request also
//!   names the app's key (`auth_key`), a Unix time within [`API_WINDOW_SECS`] of the server's
//!   (`auth_timestamp`) and `auth_version=1.0`.
//!
//! Signatures are compared in constant time.

use hmac::{Hmac, KeyInit, Mac};
use md5::Digest as _;
use sha2::Sha256;

use super::App;

/// How far an HTTP API request's `auth_timestamp` may be from the server's clock.
pub const API_WINDOW_SECS: i64 = 600;

fn mac(secret: &str, message: &str) -> Hmac<Sha256> {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    m.update(message.as_bytes());
    m
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The bytes of a hex string (either case); `None` when it is not one.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `hmac_sha256(secret, message)` in lower-case hex.
pub fn hmac_hex(secret: &str, message: &str) -> String {
    hex(&mac(secret, message).finalize().into_bytes())
}

/// Whether `signature` (hex, either case) is `message`'s under `secret`, compared in constant
/// time.
pub fn verify_hex(secret: &str, message: &str, signature: &str) -> bool {
    unhex(signature).is_some_and(|sig| mac(secret, message).verify_slice(&sig).is_ok())
}

fn channel_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The `auth` an app's auth endpoint gives a client to subscribe to `channel` (with the
/// presence member's `channel_data`).
pub fn channel_auth(
    app: &App,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let sig = hmac_hex(
        &app.secret,
        &channel_message(socket_id, channel, channel_data),
    );
    format!("{}:{sig}", app.key)
}

/// Whether `auth` (as a client sends it with `pusher:subscribe`) authorizes `socket_id` on
/// `channel` for `app`.
pub fn check_channel_auth(
    app: &App,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    match auth.split_once(':') {
        Some((key, sig)) if key == app.key => verify_hex(
            &app.secret,
            &channel_message(socket_id, channel, channel_data),
            sig,
        ),
        _ => false,
    }
}

/// The `auth` of a user sign-in (`pusher:signin` with `user_data`).
pub fn user_auth(app: &App, socket_id: &str, user_data: &str) -> String {
    let sig = hmac_hex(&app.secret, &format!("{socket_id}::user::{user_data}"));
    format!("{}:{sig}", app.key)
}

/// Whether `auth` signs `user_data` in for `socket_id`.
pub fn check_user_auth(app: &App, socket_id: &str, user_data: &str, auth: &str) -> bool {
    match auth.split_once(':') {
        Some((key, sig)) if key == app.key => {
            verify_hex(&app.secret, &format!("{socket_id}::user::{user_data}"), sig)
        }
        _ => false,
    }
}

/// The MD5 of a body, in lower-case hex (`body_md5`).
pub fn body_md5(body: &[u8]) -> String {
    hex(&md5::Md5::digest(body))
}

/// Why an HTTP API request is refused (each a 401, with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiAuthError {
    /// A required parameter is missing.
    #[error("missing parameter {0}")]
    Missing(&'static str),
    /// `auth_key` is not this app's key.
    #[error("unknown auth_key")]
    UnknownKey,
    /// `auth_version` is not `1.0`.
    #[error("unsupported auth_version {0:?} (1.0 is)")]
    Version(String),
    /// `auth_timestamp` is not a number, or too far from the server's clock.
    #[error("timestamp expired: given timestamp ({given}) not within {API_WINDOW_SECS}s of server time ({now})")]
    Timestamp {
        /// What the request said.
        given: String,
        /// The server's time.
        now: i64,
    },
    /// `body_md5` does not match the body.
    #[error("body_md5 does not match the body")]
    BodyMd5,
    /// `auth_signature` is wrong.
    #[error("invalid signature: expected HMAC SHA256 hex digest of {0:?}")]
    Signature(String),
}

/// The string an HTTP API request's signature covers: `METHOD\nPATH\nQUERY` (see the module's
/// text); `params` are the decoded query parameters.
pub fn api_string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut kv: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    kv.sort();
    let query: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\n{path}\n{}",
        method.to_ascii_uppercase(),
        query.join("&")
    )
}

/// Check an HTTP API request for `app` at Unix time `now`: `params` its decoded query
/// parameters, `body` its body.
pub fn check_api_request(
    app: &App,
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
    now: i64,
) -> Result<(), ApiAuthError> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let key = get("auth_key").ok_or(ApiAuthError::Missing("auth_key"))?;
    if key != app.key {
        return Err(ApiAuthError::UnknownKey);
    }
    let ts = get("auth_timestamp").ok_or(ApiAuthError::Missing("auth_timestamp"))?;
    let fresh = ts
        .parse::<i64>()
        .is_ok_and(|t| (now - t).abs() <= API_WINDOW_SECS);
    if !fresh {
        return Err(ApiAuthError::Timestamp {
            given: ts.to_string(),
            now,
        });
    }
    let version = get("auth_version").ok_or(ApiAuthError::Missing("auth_version"))?;
    if version != "1.0" {
        return Err(ApiAuthError::Version(version.to_string()));
    }
    if !body.is_empty() {
        let md5 = get("body_md5").ok_or(ApiAuthError::Missing("body_md5"))?;
        if !md5.eq_ignore_ascii_case(&body_md5(body)) {
            return Err(ApiAuthError::BodyMd5);
        }
    }
    let sig = get("auth_signature").ok_or(ApiAuthError::Missing("auth_signature"))?;
    let signed = api_string_to_sign(method, path, params);
    if !verify_hex(&app.secret, &signed, sig) {
        return Err(ApiAuthError::Signature(signed));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example credentials of Pusher's documentation.
    fn app() -> App {
        "3:278d425bdf160c739803:7ad3773142a6692b25b8"
            .parse()
            .unwrap()
    }

    #[test]
    fn channel_signatures_as_pushers_documentation_shows() {
        let a = app();
        let auth = channel_auth(&a, "1234.1234", "private-foobar", None);
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(check_channel_auth(
            &a,
            "1234.1234",
            "private-foobar",
            None,
            &auth
        ));
        assert!(!check_channel_auth(
            &a,
            "1234.1235",
            "private-foobar",
            None,
            &auth
        ));
        assert!(!check_channel_auth(
            &a,
            "1234.1234",
            "private-foobaz",
            None,
            &auth
        ));
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let auth = channel_auth(&a, "1234.1234", "presence-foobar", Some(data));
        assert_eq!(
            auth,
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
        assert!(check_channel_auth(
            &a,
            "1234.1234",
            "presence-foobar",
            Some(data),
            &auth
        ));
        assert!(!check_channel_auth(
            &a,
            "1234.1234",
            "presence-foobar",
            Some("{}"),
            &auth
        ));
        for bad in [
            "",
            "nokey",
            "278d425bdf160c739803:zz",
            "other:58df8b0c36d6982b82c3",
        ] {
            assert!(!check_channel_auth(
                &a,
                "1234.1234",
                "private-foobar",
                None,
                bad
            ));
        }
        let u = user_auth(&a, "1.2", r#"{"id":"7"}"#);
        assert!(check_user_auth(&a, "1.2", r#"{"id":"7"}"#, &u));
        assert!(!check_user_auth(&a, "1.3", r#"{"id":"7"}"#, &u));
    }

    #[test]
    fn api_requests_as_pushers_documentation_shows() {
        let a = app();
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(body_md5(body), "ec365a775a4cd0599faeb73354201b6f");
        let mut params: Vec<(String, String)> = [
            ("auth_key", "278d425bdf160c739803"),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let signed = api_string_to_sign("POST", "/apps/3/events", &params);
        assert_eq!(
            hmac_hex(&a.secret, &signed),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        params.push((
            "auth_signature".into(),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c".into(),
        ));
        let check = |p: &[(String, String)], body: &[u8], now| {
            check_api_request(&a, "POST", "/apps/3/events", p, body, now)
        };
        assert_eq!(check(&params, body, 1353088179 + 600), Ok(()));
        assert!(matches!(
            check(&params, body, 1353088179 + 601),
            Err(ApiAuthError::Timestamp { .. })
        ));
        assert_eq!(
            check(&params, b"{}", 1353088179),
            Err(ApiAuthError::BodyMd5)
        );
        let mut wrong = params.clone();
        wrong.push(("info".into(), "user_count".into()));
        assert!(matches!(
            check(&wrong, body, 1353088179),
            Err(ApiAuthError::Signature(_))
        ));
        let without = |k: &str| -> Vec<(String, String)> {
            params.iter().filter(|(n, _)| n != k).cloned().collect()
        };
        assert_eq!(
            check(&without("auth_key"), body, 1353088179),
            Err(ApiAuthError::Missing("auth_key"))
        );
        assert_eq!(
            check(&without("body_md5"), body, 1353088179),
            Err(ApiAuthError::Missing("body_md5"))
        );
    }
}
