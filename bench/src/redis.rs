//! Just enough of Redis's protocol (RESP) to read a server's counters: `INFO`, `CLIENT LIST`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Send one command and read its reply: a bulk or simple string, or an integer, as text.
pub async fn command(addr: SocketAddr, args: &[&str]) -> Result<String> {
    tokio::time::timeout(Duration::from_secs(10), exchange(addr, args))
        .await
        .with_context(|| format!("redis {addr}: no answer to {args:?} within 10 s"))?
}

async fn exchange(addr: SocketAddr, args: &[&str]) -> Result<String> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect redis {addr}"))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let (tag, rest) = line.trim_end().split_at(1.min(line.len()));
    match tag {
        "+" | ":" => Ok(rest.to_string()),
        "-" => bail!("redis {addr}: {args:?}: {rest}"),
        "$" => {
            let n: i64 = rest.parse().context("bulk length")?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf).await?;
            buf.truncate(n as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        _ => bail!("redis {addr}: {args:?}: unexpected reply {line:?}"),
    }
}

/// A numeric field of `INFO` output: `used_memory` → `used_memory:1234`.
pub fn info_number(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|v| v.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Calls of a command so far, from `INFO commandstats`
/// (`cmdstat_publish:calls=6,usec=…`); commands a Lua script calls are counted too.
pub fn command_calls(commandstats: &str, command: &str) -> u64 {
    let key = format!("cmdstat_{command}:calls=");
    commandstats
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Clients with a pattern subscription, from `CLIENT LIST` (`… psub=1 …`).
pub fn pattern_subscribers(client_list: &str) -> usize {
    client_list
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("psub="))
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_info_fields() {
        let info = "# Memory\r\nused_memory:1327032\r\nused_memory_human:1.27M\r\n";
        assert_eq!(info_number(info, "used_memory"), Some(1_327_032));
        assert_eq!(info_number(info, "used_memory_rss"), None);
        let stats = "cmdstat_publish:calls=6,usec=12,usec_per_call=2.00\r\n\
                     cmdstat_evalsha:calls=9,usec=1";
        assert_eq!(command_calls(stats, "publish"), 6);
        assert_eq!(command_calls(stats, "evalsha"), 9);
        assert_eq!(command_calls(stats, "spublish"), 0);
        let list = "id=3 addr=127.0.0.1:1 sub=3 psub=1 cmd=psubscribe\n\
                    id=4 addr=127.0.0.1:2 sub=0 psub=0 cmd=publish\n\
                    id=5 addr=127.0.0.1:3 sub=3 psub=1 cmd=psubscribe\n";
        assert_eq!(pattern_subscribers(list), 2);
    }
}
