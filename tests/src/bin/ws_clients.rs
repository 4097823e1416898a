//! Many WebSocket clients in one process, for tests that need more connections than one
//! process may hold files (tokio-tungstenite, the client the other tests use).
//!
//! `ws_clients URL FROM_IP N`: opens `N` connections to `URL` from `FROM_IP` (200 at a time),
//! prints `open K failed F`, then answers lines on standard input: `count TEXT` prints
//! `TEXT R closed C` — how many clients received a text message `TEXT`, and how many
//! connections ended. Exits when standard input ends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct Seen {
    texts: Mutex<HashMap<String, u64>>,
    closed: AtomicU64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, from, n] = &args[..] else {
        eprintln!("usage: ws_clients URL FROM_IP N");
        std::process::exit(2);
    };
    let from: IpAddr = from.parse().expect("FROM_IP");
    let n: usize = n.parse().expect("N");
    let target: SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .expect("ws://IP:PORT");
    let seen = Arc::new(Seen::default());
    let (mut open, mut failed) = (0usize, 0usize);
    let mut first_error = None;
    let mut pending = futures_util::stream::iter((0..n).map(|_| {
        let url = url.clone();
        async move {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(from, 0))?;
            let stream = sock.connect(target).await?;
            let (ws, _) = tokio_tungstenite::client_async(url, stream)
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(ws)
        }
    }))
    .buffer_unordered(200);
    while let Some(r) = pending.next().await {
        match r {
            Ok(mut ws) => {
                open += 1;
                let seen = seen.clone();
                tokio::spawn(async move {
                    while let Some(Ok(m)) = ws.next().await {
                        if let Message::Text(t) = m {
                            *seen.texts.lock().unwrap().entry(t.to_string()).or_default() += 1;
                        }
                    }
                    seen.closed.fetch_add(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    println!("open {open} failed {failed}");
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(text) = line.strip_prefix("count ") {
            let got = seen.texts.lock().unwrap().get(text).copied().unwrap_or(0);
            println!(
                "{text} {got} closed {}",
                seen.closed.load(Ordering::Relaxed)
            );
        }
    }
}
