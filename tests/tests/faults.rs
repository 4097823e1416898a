//! Faults under load: the channel server killed (SIGKILL) while pushes flow. Every push the
//! publisher answered `200 ok` reached every client exactly once; every other push was answered
//! with a 503 — nothing is lost silently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use werkmann_tests::{free_addr, App};

#[tokio::test]
async fn channel_server_killed_while_pushes_flow() {
    let ch = free_addr("127.0.1.1");
    let ws = free_addr("127.0.1.2");
    let web = free_addr("127.0.1.4");
    let ch_s = ch.to_string();
    let mut channel = Some(App::start_at("start_channel", &["--listen", &ch_s], &[ch]));
    let _node = App::start_at(
        "start_ws",
        &[
            "--listen",
            &ws.to_string(),
            "--count",
            "2",
            "--channel",
            &ch_s,
        ],
        &[ws],
    );
    let _publisher = App::start_at(
        "start_http",
        &["--listen", &web.to_string(), "--channel", &ch_s],
        &[web],
    );

    // Six clients over both instances, each counting what it receives.
    let received: Vec<Arc<Mutex<HashMap<String, u32>>>> = (0..6)
        .map(|_| Arc::new(Mutex::new(HashMap::new())))
        .collect();
    let mut readers = Vec::new();
    for r in &received {
        let (mut c, _) = tokio_tungstenite::connect_async(format!("ws://{ws}"))
            .await
            .unwrap();
        let _greeting = c.next().await;
        let r = r.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(8), c.next()).await
            {
                if let WsMessage::Text(t) = m {
                    *r.lock().unwrap().entry(t.to_string()).or_default() += 1;
                }
            }
        }));
    }

    // Push as fast as answers come, killing and restarting the channel server on the way.
    let mut answers: Vec<(String, u16)> = Vec::new();
    let start = Instant::now();
    let mut killed_at = None;
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(4) {
        if killed_at.is_none() && start.elapsed() > Duration::from_millis(800) {
            drop(channel.take()); // SIGKILL
            killed_at = Some(Instant::now());
        }
        if let Some(t) = killed_at {
            if channel.is_none() && t.elapsed() > Duration::from_millis(700) {
                channel = Some(App::start_at("start_channel", &["--listen", &ch_s], &[ch]));
            }
        }
        let content = format!("p{i}");
        i += 1;
        let mut s = TcpStream::connect(web).await.unwrap();
        s.write_all(
            format!("GET /?content={content} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("every push is answered")
            .unwrap();
        let status: u16 = String::from_utf8_lossy(&out[9..12]).parse().unwrap();
        assert!(status == 200 || status == 503, "status {status}");
        answers.push((content, status));
    }
    for r in readers {
        let _ = r.await;
    }
    let ok: Vec<&String> = answers
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(c, _)| c)
        .collect();
    let failed = answers.len() - ok.len();
    eprintln!("pushes: {} answered ok, {failed} answered 503", ok.len());
    assert!(
        ok.len() > 10,
        "pushes went through before and after: {} ok",
        ok.len()
    );
    assert!(failed > 0, "the outage was noticed by the publisher");
    for c in &ok {
        let holders: Vec<usize> = received
            .iter()
            .enumerate()
            .filter(|(_, r)| r.lock().unwrap().contains_key(*c))
            .map(|(n, _)| n)
            .collect();
        if holders.len() != received.len() {
            let pos = answers.iter().position(|(x, _)| x == *c).unwrap();
            let around: Vec<u16> = answers[pos.saturating_sub(3)..(pos + 4).min(answers.len())]
                .iter()
                .map(|(_, s)| *s)
                .collect();
            eprintln!(
                "push {c} (#{pos}) reached only clients {holders:?}; statuses around: {around:?}"
            );
        }
    }
    for (n, r) in received.iter().enumerate() {
        let got = r.lock().unwrap();
        for c in &ok {
            assert_eq!(
                got.get(*c),
                Some(&1),
                "client {n}: push {c} answered ok was delivered once"
            );
        }
        assert!(got.values().all(|&k| k == 1), "client {n}: nothing twice");
    }
}
