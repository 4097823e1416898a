//! Webhooks: a JSON body POSTed to an `http://` URL with headers of the sender's (its
//! signature), answered within [`TIMEOUT`] by a 2xx, or tried again after 1, 2, 4, 8 and 16 s
//! before it is given up (logged). What the Pusher apps' webhooks (`pusher::webhook`) and the
//! push API's reports and fallbacks (the push app) go out with.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a request may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The waits before each retry of a failed request.
pub const RETRIES: [u64; 5] = [1, 2, 4, 8, 16];

/// Where a webhook goes: `http://HOST[:PORT][/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `HOST:PORT`, to connect to.
    pub addr: String,
    /// The `Host` header.
    pub host: String,
    /// The path and query.
    pub path: String,
}

impl Target {
    /// Read a webhook URL (`http://` only: put a TLS proxy in front for `https://`).
    pub fn parse(url: &str) -> Result<Target, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(
                "a webhook URL is http://HOST[:PORT][/PATH] (https:// is not sent by \
                        this server: put a local TLS proxy in front)"
                    .into(),
            );
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("a webhook URL needs a host (and no user info)".into());
        }
        if path.chars().any(|c| c.is_control() || c == ' ') {
            return Err("a webhook URL's path has a space or a control character".into());
        }
        // The port after the host (an IPv6 address in brackets), 80 when not given.
        let port = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((_, "")) => None,
                Some((_, after)) => Some(after.strip_prefix(':').unwrap_or(after)),
                None => return Err("a webhook URL's IPv6 host lacks its ]".into()),
            },
            None => authority.rsplit_once(':').map(|(_, p)| p),
        };
        let addr = match port {
            Some(p) => {
                p.parse::<u16>()
                    .map_err(|_| format!("a webhook URL's port {p:?} is not a port"))?;
                authority.to_string()
            }
            None => format!("{authority}:80"),
        };
        Ok(Target {
            addr,
            host: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// POST `body` to `target` with `headers` (besides `Host`, `Content-Type: application/json`,
/// `Content-Length`), again after each wait of [`RETRIES`] while it fails; `what` names it in
/// the log.
pub async fn send_with_retries(
    target: Target,
    headers: Vec<(String, String)>,
    body: String,
    what: String,
) {
    let mut waits = RETRIES.iter();
    loop {
        let why = match tokio::time::timeout(TIMEOUT, post(&target, &headers, &body)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => return,
            Ok(Ok(status)) => format!("answered {status}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {TIMEOUT:?}"),
        };
        match waits.next() {
            Some(&secs) => {
                log::warn!(
                    "webhook {}{} ({what}): {why}; again in {secs} s",
                    target.host,
                    target.path
                );
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            None => {
                log::error!(
                    "webhook {}{} ({what}): {why}; given up after {} tries, lost",
                    target.host,
                    target.path,
                    RETRIES.len() + 1
                );
                return;
            }
        }
    }
}

/// One POST; the status of the answer.
async fn post(target: &Target, headers: &[(String, String)], body: &str) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(&target.addr).await?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nUser-Agent: werkmann\r\nConnection: close\r\n",
        target.path,
        target.host,
        body.len()
    );
    for (k, v) in headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    // The status line is all that is read: `HTTP/1.1 200 …`.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|l| l.get(2..5))
        .and_then(|s| s.parse::<u16>().ok());
    status.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:9000/hooks?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000");
        assert_eq!(t.host, "127.0.0.1:9000");
        assert_eq!(t.path, "/hooks?x=1");
        let t = Target::parse("http://example.test").unwrap();
        assert_eq!((t.addr.as_str(), t.path.as_str()), ("example.test:80", "/"));
        let t = Target::parse("http://[::1]:8080/h").unwrap();
        assert_eq!(t.addr, "[::1]:8080");
        let t = Target::parse("http://[::1]/h").unwrap();
        assert_eq!(t.addr, "[::1]:80");
        for bad in [
            "https://example.test/",
            "ftp://x",
            "http://",
            "http://u@h/",
            "http://h:99999/",
            "http://h:x/",
            "http://h/a b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
