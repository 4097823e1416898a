//! Safe on a network: the push API's authentication (bearer token, HMAC signature with a replay
//! window), checked against `start_all --secret`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use werkmann_tests::{free_addr, read_head, App};

const SECRET: &str = "correct horse battery staple";

async fn request(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    let mut body = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut body)).await;
    (head[9..12].parse().unwrap(), body)
}

/// Sign the way the docs tell users to: `openssl dgst -sha256 -hmac`.
fn openssl_sig(query: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("printf 'GET\\n/\\n%s\\n' \"$Q\" | openssl dgst -sha256 -hmac \"$S\" -r | cut -d' ' -f1")
        .env("Q", query)
        .env("S", SECRET)
        .output()
        .expect("openssl");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn expect_push<S>(client: &mut S, want: &str)
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let m = tokio::time::timeout(Duration::from_secs(10), client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, WsMessage::text(want));
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn the_push_api_requires_a_token_or_a_fresh_signature() {
    let ws = free_addr("127.0.0.1");
    let web = free_addr("127.0.0.1");
    let _app = App::start_at(
        "start_all",
        &[
            "--ws-listen",
            &ws.to_string(),
            "--http-listen",
            &web.to_string(),
            "--secret",
            SECRET,
        ],
        &[ws, web],
    );
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{ws}"))
        .await
        .unwrap();
    let _greeting = client.next().await.unwrap().unwrap();
    let (status, body) = request(web, "/?content=anon", "").await;
    assert_eq!(status, 401);
    assert!(body.contains("authentication required"), "{body}");
    let (status, body) = request(web, "/?content=x", "Authorization: Bearer guess\r\n").await;
    assert_eq!((status, body.trim()), (401, "wrong bearer token"));

    let (status, body) = request(
        web,
        "/?content=mit-token",
        &format!("Authorization: Bearer {SECRET}\r\n"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    expect_push(&mut client, "mit-token").await;

    // A signature made with openssl, as the docs show.
    let q = format!("content=signiert&ts={}", now());
    let sig = openssl_sig(&q);
    let (status, body) = request(web, &format!("/?{q}&sig={sig}"), "").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    expect_push(&mut client, "signiert").await;

    // The same signature again: a replay.
    let (status, body) = request(web, &format!("/?{q}&sig={sig}"), "").await;
    assert_eq!((status, body.trim()), (401, "signature already used"));

    // A signature over other parameters, or an old timestamp, is refused.
    let (status, _) = request(
        web,
        &format!("/?content=changed&ts={}&sig={sig}", now()),
        "",
    )
    .await;
    assert_eq!(status, 401);
    let old = format!("content=alt&ts={}", now() - 3600);
    let (status, body) = request(web, &format!("/?{old}&sig={}", openssl_sig(&old)), "").await;
    assert_eq!(
        (status, body.trim()),
        (401, "timestamp outside the replay window")
    );
    let (status, _) = request(web, "/?content=x&ts=1&sig=zz", "").await;
    assert_eq!(status, 401);

    // Nothing unauthenticated reached the client.
    let extra = tokio::time::timeout(Duration::from_millis(300), client.next()).await;
    assert!(extra.is_err(), "no other push: {extra:?}");
}
