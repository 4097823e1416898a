//! TLS (Workerman's `ssl` transport) over real sockets: `wss://` and `https://` on `start_all`
//! with a certificate signed by a throw-away CA, large messages through rustls' bounded
//! buffers, plain text and silence on a TLS port, and a channel server offering TLS to the
//! cluster's nodes (`--channel tls://…`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use werkmann_tests::certs::TestCerts;
use werkmann_tests::push::{next_text, until_every_client_is_reached};
use werkmann_tests::{free_addr, split_response, start_all_at, App};

const WAIT: Duration = Duration::from_secs(10);

/// A client TLS connector trusting only `ca`.
fn connector(ca: &std::path::Path) -> TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    certs: &TestCerts,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(WAIT, connector(&certs.ca()).connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake succeeds")
}

/// A `wss://` client, greeted; returns the stream and the greeting.
async fn wss_client(
    certs: &TestCerts,
    addr: SocketAddr,
) -> (
    WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
    String,
) {
    let tls = tls_connect(certs, addr).await;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/"), tls)
        .await
        .expect("WebSocket upgrade over TLS");
    let greeting = next_text(&mut ws).await;
    (ws, greeting)
}

/// One HTTPS request with `Connection: close`; returns (status, body).
async fn https(certs: &TestCerts, addr: SocketAddr, request: &str) -> (u16, String) {
    let mut tls = tls_connect(certs, addr).await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .expect("a clean TLS close");
    split_response(&out)
}

fn get(query: &str) -> String {
    format!("GET /{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

fn start_all_tls(certs: &TestCerts) -> (App, SocketAddr, SocketAddr) {
    let ws = free_addr("127.0.0.1");
    let web = free_addr("127.0.0.1");
    let (cert, key) = (certs.cert(), certs.key());
    let app = start_all_at(
        ws,
        web,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    (app, ws, web)
}

#[tokio::test]
async fn wss_and_https_push() {
    let certs = TestCerts::make("tls-all");
    let (_app, ws, web) = start_all_tls(&certs);

    let (mut a, greeting) = wss_client(&certs, ws).await;
    assert!(greeting.contains("verbunden"), "greeting: {greeting}");
    let (mut b, _) = wss_client(&certs, ws).await;

    // Broadcast over https, received over wss by both.
    let (status, body) = https(&certs, web, &get("?content=ueber-tls")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(next_text(&mut a).await, "ueber-tls");
    assert_eq!(next_text(&mut b).await, "ueber-tls");

    // A large push (POST JSON body) crosses rustls' 64 KiB buffer in pieces, intact.
    let big: String = (0..300_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let body = serde_json::json!({ "content": big }).to_string();
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _) = https(&certs, web, &req).await;
    assert_eq!(status, 200);
    assert_eq!(next_text(&mut a).await, big);
    assert_eq!(next_text(&mut b).await, big);

    // The demo page is served over https and connects back over wss.
    let (status, page) = https(&certs, web, &get("")).await;
    assert_eq!(status, 200);
    assert!(page.contains("wss://"), "the page picks wss on https");

    // A wss client echoes through a WebSocket close handshake cleanly.
    a.close(None).await.unwrap();
}

#[tokio::test]
async fn plain_text_and_silence_on_a_tls_port_are_dropped() {
    let certs = TestCerts::make("tls-bad");
    let (_app, ws, web) = start_all_tls(&certs);

    // Plain HTTP to the https port: not a TLS record; the server answers with an alert or
    // nothing, and closes.
    let mut plain = TcpStream::connect(web).await.unwrap();
    plain.write_all(get("?content=x").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, plain.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "plain text on a TLS port is closed at once");
    assert!(
        !String::from_utf8_lossy(&out).contains("200"),
        "no HTTP answer without TLS"
    );

    // A client that connects and never says hello is dropped after the handshake timeout.
    let started = Instant::now();
    let mut silent = TcpStream::connect(ws).await.unwrap();
    let mut rest = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(20), silent.read_to_end(&mut rest)).await;
    assert!(
        matches!(res, Ok(Ok(0)) | Ok(Err(_))),
        "silent client dropped without a word: {res:?} {rest:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(8),
        "not before the timeout: {took:?}"
    );

    // The server still serves TLS clients.
    let (_c, greeting) = wss_client(&certs, ws).await;
    assert!(greeting.contains("verbunden"));
}

#[tokio::test]
async fn channel_over_tls() {
    let certs = TestCerts::make("tls-channel");
    let ch = free_addr("127.0.1.1");
    let ws = free_addr("127.0.1.2");
    let web = free_addr("127.0.1.3");
    let web_plain = free_addr("127.0.1.4");
    let cert = certs.cert();
    let key = certs.key();
    let ca = certs.ca();
    let _channel = App::start_at(
        "start_channel",
        &[
            "--listen",
            &ch.to_string(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &[ch],
    );
    let tls_channel = format!("tls://{ch}");
    let ca_arg = ca.to_str().unwrap();
    let _node = App::start_at(
        "start_ws",
        &[
            "--listen",
            &ws.to_string(),
            "--count",
            "2",
            "--channel",
            &tls_channel,
            "--tls-ca",
            ca_arg,
        ],
        &[ws],
    );
    let _publisher = App::start_at(
        "start_http",
        &[
            "--listen",
            &web.to_string(),
            "--channel",
            &tls_channel,
            "--tls-ca",
            ca_arg,
        ],
        &[web],
    );
    // A publisher speaking plain frames to the TLS channel server cannot push.
    let _plain = App::start_at(
        "start_http",
        &[
            "--listen",
            &web_plain.to_string(),
            "--channel",
            &ch.to_string(),
        ],
        &[web_plain],
    );

    let mut clients = Vec::new();
    for _ in 0..4 {
        let (mut c, _) = tokio_tungstenite::connect_async(format!("ws://{ws}"))
            .await
            .unwrap();
        let greeting = next_text(&mut c).await;
        assert!(greeting.contains("verbunden"));
        clients.push((c, greeting));
    }

    // The nodes' and the publisher's channel clients connect over TLS in the background.
    let mut all: Vec<_> = clients.iter_mut().map(|(c, _)| c).collect();
    until_every_client_is_reached(web, &mut all, "warm").await;
    assert_eq!(plain_get(web, "?content=durch-tls").await, 200);
    for (c, _) in &mut clients {
        assert_eq!(next_text(c).await, "durch-tls");
    }

    // Targeted: to one connection named by worker id and connection id, over TLS.
    let (w, id) = ids(&clients[1].1);
    let q = format!("?to_worker_id={w}&to_connection_id={id}&content=nur-du");
    assert_eq!(plain_get(web, &q).await, 200);
    assert_eq!(next_text(&mut clients[1].0).await, "nur-du");

    // The plain-frame publisher is refused by the TLS channel: its pushes fail loudly.
    assert_eq!(plain_get(web_plain, "?content=ohne-tls").await, 503);
}

/// Worker id and connection id from a greeting `Worker-ID:W Verbindungs-ID:C verbunden`.
fn ids(greeting: &str) -> (String, String) {
    let num = |key: &str| {
        greeting
            .split(key)
            .nth(1)
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .to_string()
    };
    (num("Worker-ID:"), num("Verbindungs-ID:"))
}

async fn plain_get(addr: SocketAddr, query: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(get(query).as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    split_response(&out).0
}
