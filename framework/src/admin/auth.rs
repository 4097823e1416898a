//! The admin port's authentication: with a secret, a request carries it as a bearer token
//! (Prometheus) or as the password of HTTP Basic auth (a browser); compared in constant time.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use base64::Engine;

/// The secret the port asks for (`None`: none), as the middleware finds it in the app data.
pub(super) struct Secret(pub Option<String>);

/// Let the request through when no secret is set or it carries the secret; else 401.
pub(super) async fn require_secret(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let secret = req
        .app_data::<web::Data<Secret>>()
        .and_then(|s| s.0.clone());
    let allowed = match &secret {
        None => true,
        Some(secret) => req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|h| carries(h, secret)),
    };
    if allowed {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    log::info!(
        "admin port: request from {} refused: no or wrong secret",
        req.peer_addr()
            .map_or_else(|| "-".into(), |a| a.to_string())
    );
    let resp = HttpResponse::Unauthorized()
        .insert_header(("WWW-Authenticate", "Basic realm=\"werkmann admin\""))
        .body("authentication required: Authorization: Bearer <secret>, or Basic auth with the secret as the password\n");
    Ok(req.into_response(resp).map_into_right_body())
}

/// Whether an `Authorization` header value carries `secret`.
fn carries(header: &str, secret: &str) -> bool {
    let (scheme, value) = header.trim().split_once(' ').unwrap_or((header, ""));
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return same(value.as_bytes(), secret.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value) else {
            return false;
        };
        let password = match decoded.iter().position(|&b| b == b':') {
            Some(i) => &decoded[i + 1..],
            None => return false,
        };
        return same(password, secret.as_bytes());
    }
    false
}

/// Compare in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_carry_the_secret() {
        assert!(carries("Bearer s3cret", "s3cret"));
        assert!(carries("bearer  s3cret ", "s3cret"));
        assert!(!carries("Bearer s3cre", "s3cret"));
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:s3cret");
        assert!(carries(&format!("Basic {basic}"), "s3cret"));
        let wrong = base64::engine::general_purpose::STANDARD.encode("s3cret:x");
        assert!(!carries(&format!("Basic {wrong}"), "s3cret"));
        assert!(!carries("Basic !!!", "s3cret"));
        assert!(!carries("Digest s3cret", "s3cret"));
    }
}
