//! Channel authentication, a werkmann extension: with a shared secret, a client's first command
//! is `{type: auth, data: "TS:NONCE:MAC"}` where MAC is the hex HMAC-SHA256 of
//! `werkmann-channel:TS:NONCE` under the secret — the secret itself never crosses the wire. The
//! server accepts a token once, within ±300 s of its clock, and closes a connection whose first
//! command is anything else. Without a secret the server accepts (and ignores) the command,
//! and stays wire-compatible with Workerman's PHP clients.

use std::collections::{HashSet, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How far a token's timestamp may be from the server's clock, in seconds.
pub const WINDOW_SECS: i64 = 300;
const MAX_REMEMBERED: usize = 100_000;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn mac(secret: &[u8], ts: &str, nonce: &str) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    m.update(format!("werkmann-channel:{ts}:{nonce}").as_bytes());
    m
}

/// A fresh token for `secret`.
pub fn token(secret: &str) -> String {
    let ts = now().to_string();
    let nonce = format!("{:016x}", rand::random::<u64>());
    let sig: String = mac(secret.as_bytes(), &ts, &nonce)
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{ts}:{nonce}:{sig}")
}

/// Tokens a server accepted recently (against replays).
#[derive(Default)]
pub struct Verifier {
    seen: HashSet<String>,
    order: VecDeque<(i64, String)>,
}

impl Verifier {
    /// Check a token against `secret`; `Err` says why it is refused.
    pub fn verify(&mut self, secret: &str, token: &str) -> Result<(), &'static str> {
        let mut parts = token.splitn(3, ':');
        let (Some(ts), Some(nonce), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("malformed token");
        };
        let t: i64 = ts.parse().map_err(|_| "malformed token")?;
        let now = now();
        if (now - t).abs() > WINDOW_SECS {
            return Err("token outside the time window");
        }
        let bytes: Option<Vec<u8>> = (0..sig.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(sig.get(i..i + 2)?, 16).ok())
            .collect();
        let bytes = bytes.ok_or("malformed token")?;
        mac(secret.as_bytes(), ts, nonce)
            .verify_slice(&bytes)
            .map_err(|_| "wrong secret")?;
        while let Some((t0, _)) = self.order.front() {
            if now - *t0 > 2 * WINDOW_SECS || self.order.len() >= MAX_REMEMBERED {
                let (_, old) = self.order.pop_front().expect("front");
                self.seen.remove(&old);
            } else {
                break;
            }
        }
        if !self.seen.insert(nonce.to_string()) {
            return Err("token replayed");
        }
        self.order.push_back((t, nonce.to_string()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_once_and_only_with_the_secret() {
        let mut v = Verifier::default();
        let t = token("s3");
        assert_eq!(v.verify("other", &t), Err("wrong secret"));
        assert_eq!(v.verify("s3", &t), Ok(()));
        assert_eq!(v.verify("s3", &t), Err("token replayed"));
        assert_eq!(v.verify("s3", "1:2"), Err("malformed token"));
        let old = format!("{}:ab:00", now() - 1000);
        assert_eq!(v.verify("s3", &old), Err("token outside the time window"));
    }
}
