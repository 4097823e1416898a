//! Authentication of the HTTP push API (`start_http --secret S`).
//!
//! A request is allowed when it carries either
//! - `Authorization: Bearer S`, compared in constant time, or
//! - a signature: a `ts` query parameter (Unix seconds, within ±300 s of the server's clock)
//!   and `sig` (query parameter, or the `X-Signature` header) = lowercase hex of
//!   HMAC-SHA256(S, `METHOD \n PATH \n QUERY-WITHOUT-SIG \n BODY`), where QUERY-WITHOUT-SIG is the
//!   query string as sent with the `sig=…` parameter removed. A signature is accepted once:
//!   a replay inside the window is refused.
//!
//! ```text
//! q="content=hi&ts=$(date +%s)"
//! sig=$(printf 'GET\n/\n%s\n' "$q" | openssl dgst -sha256 -hmac "$S" -r | cut -d' ' -f1)
//! curl "http://127.0.0.1:4237/?$q&sig=$sig"
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use werkmann::Request;

/// How far a signature's timestamp may be from the server's clock, in seconds.
pub const WINDOW_SECS: i64 = 300;
/// Signatures remembered against replays (per worker instance).
const MAX_REMEMBERED: usize = 200_000;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Neither a bearer token nor a signature.
    Missing,
    /// A wrong bearer token.
    BadToken,
    /// A malformed or wrong signature.
    BadSignature,
    /// A timestamp outside the window.
    Expired,
    /// A signature seen before.
    Replayed,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Denied::Missing => "authentication required: send Authorization: Bearer <secret>, or ts and sig (HMAC-SHA256)",
            Denied::BadToken => "wrong bearer token",
            Denied::BadSignature => "bad signature",
            Denied::Expired => "timestamp outside the replay window",
            Denied::Replayed => "signature already used",
        })
    }
}

/// Signatures accepted recently, oldest first.
#[derive(Default)]
struct Seen {
    by_sig: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
}

/// The secret, and the signatures seen recently. Clones share what they have seen: give each
/// instance of a worker a clone, and a signature accepted by one is a replay to all.
#[derive(Clone)]
pub struct Auth {
    secret: Arc<[u8]>,
    seen: Arc<Mutex<Seen>>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub use werkmann::pusher::sign::{hex, unhex};

/// Constant-time equality of two byte strings (the length is not secret).
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The query string without its `sig` parameter, in the order sent.
fn query_without_sig(q: &str) -> String {
    q.split('&')
        .filter(|p| !p.starts_with("sig=") && !p.is_empty())
        .collect::<Vec<_>>()
        .join("&")
}

/// The message a signature covers.
pub fn signed_message(method: &str, path: &str, query: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{method}\n{path}\n{}\n", query_without_sig(query)).into_bytes();
    m.extend_from_slice(body);
    m
}

/// Sign a request (for clients and tests).
pub fn sign(secret: &[u8], method: &str, path: &str, query: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(&signed_message(method, path, query, body));
    hex(&mac.finalize().into_bytes())
}

impl Auth {
    /// Require `secret`.
    pub fn new(secret: &str) -> Auth {
        Auth {
            secret: secret.as_bytes().into(),
            seen: Arc::new(Mutex::new(Seen::default())),
        }
    }

    /// Check a request.
    pub fn check(&self, req: &Request) -> Result<(), Denied> {
        if let Some(token) = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
        {
            return if equal(token.trim().as_bytes(), &self.secret) {
                Ok(())
            } else {
                Err(Denied::BadToken)
            };
        }
        let sig = req
            .get("sig")
            .or_else(|| req.header("x-signature").map(str::to_string));
        let Some(sig) = sig else {
            return Err(Denied::Missing);
        };
        let ts: i64 = req
            .get("ts")
            .and_then(|t| t.parse().ok())
            .ok_or(Denied::BadSignature)?;
        let now = now();
        if (now - ts).abs() > WINDOW_SECS {
            return Err(Denied::Expired);
        }
        let given = unhex(&sig.to_ascii_lowercase()).ok_or(Denied::BadSignature)?;
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret).expect("any key length");
        mac.update(&signed_message(
            req.method(),
            req.path(),
            req.query_string(),
            req.body(),
        ));
        mac.verify_slice(&given).map_err(|_| Denied::BadSignature)?;
        self.remember(sig.to_ascii_lowercase(), ts, now)
    }

    fn remember(&self, sig: String, ts: i64, now: i64) -> Result<(), Denied> {
        let mut guard = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let Seen { by_sig: set, order } = &mut *guard;
        while let Some((t, _)) = order.front() {
            if now - *t > WINDOW_SECS * 2 || order.len() >= MAX_REMEMBERED {
                let (_, s) = order.pop_front().expect("front");
                set.remove(&s);
            } else {
                break;
            }
        }
        if set.contains_key(&sig) {
            return Err(Denied::Replayed);
        }
        set.insert(sig.clone(), ts);
        order.push_back((ts.min(now), sig));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(query_without_sig("a=1&sig=ff&ts=2"), "a=1&ts=2");
        assert!(equal(b"abc", b"abc"));
        assert!(!equal(b"abc", b"abd"));
        assert!(!equal(b"abc", b"ab"));
        assert_eq!(unhex("00ff"), Some(vec![0, 255]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        // RFC 4231 test case 2.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
