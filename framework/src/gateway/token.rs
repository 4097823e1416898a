//! Client tokens: a client presents a JWT when it connects (`?token=…` on a WebSocket URL),
//! signed HS256 with the app's secret, and is bound to the uid and groups it names.
//!
//! Claims: `uid` (or `sub`), `groups` (a list, optional), `exp` (required: seconds since the
//! epoch; a token past it is refused, with [`LEEWAY_SECS`] of clock skew allowed).

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::channel::dir::{check_name, MAX_TARGETS};

/// Clock skew allowed on `exp`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// What a valid token binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The uid to bind, if any.
    pub uid: Option<String>,
    /// The groups to join.
    pub groups: Vec<String>,
}

#[derive(Deserialize)]
struct Raw {
    uid: Option<serde_json::Value>,
    sub: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

/// Why a token is refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, a bad signature, another algorithm, expired, no `exp`.
    #[error("token refused: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// Valid, but what it names cannot be bound.
    #[error("token refused: {0}")]
    Claims(String),
}

/// Verifies client tokens with the app's secret.
#[derive(Clone)]
pub struct Tokens {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(HS256)")
    }
}

impl Tokens {
    /// Verify HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp"]);
        Tokens {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The claims of a valid token.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let raw = decode::<Raw>(token, &self.key, &self.validation)?.claims;
        let uid = match raw.uid {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err(TokenError::Claims("uid must be a string".into())),
            None => raw.sub,
        };
        if let Some(u) = &uid {
            check_name("uid", u).map_err(|e| TokenError::Claims(e.0))?;
        }
        if raw.groups.len() > MAX_TARGETS {
            return Err(TokenError::Claims(format!(
                "{} groups, more than {MAX_TARGETS}",
                raw.groups.len()
            )));
        }
        for g in &raw.groups {
            check_name("group", g).map_err(|e| TokenError::Claims(e.0))?;
        }
        Ok(Claims {
            uid,
            groups: raw.groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(claims: serde_json::Value, secret: &[u8], alg: Algorithm) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn good_tokens_bind_and_bad_ones_are_refused() {
        let t = Tokens::hs256(b"s3cret");
        let exp = now() + 60;
        let good = sign(
            json!({"uid": "alice", "groups": ["room"], "exp": exp}),
            b"s3cret",
            Algorithm::HS256,
        );
        assert_eq!(
            t.verify(&good).unwrap(),
            Claims {
                uid: Some("alice".into()),
                groups: vec!["room".into()]
            }
        );
        let sub = sign(
            json!({"sub": "bob", "exp": exp}),
            b"s3cret",
            Algorithm::HS256,
        );
        assert_eq!(t.verify(&sub).unwrap().uid.as_deref(), Some("bob"));
        let forged = sign(
            json!({"uid": "alice", "exp": exp}),
            b"other",
            Algorithm::HS256,
        );
        assert!(t.verify(&forged).is_err());
        let expired = sign(
            json!({"uid": "alice", "exp": now() - 60}),
            b"s3cret",
            Algorithm::HS256,
        );
        assert!(t.verify(&expired).is_err());
        let no_exp = sign(json!({"uid": "alice"}), b"s3cret", Algorithm::HS256);
        assert!(t.verify(&no_exp).is_err());
        let other_alg = sign(
            json!({"uid": "alice", "exp": exp}),
            b"s3cret",
            Algorithm::HS512,
        );
        assert!(t.verify(&other_alg).is_err());
        assert!(t.verify("not.a.jwt").is_err());
        let long = sign(
            json!({"uid": "x".repeat(200), "exp": exp}),
            b"s3cret",
            Algorithm::HS256,
        );
        assert!(matches!(t.verify(&long), Err(TokenError::Claims(_))));
    }
}
