//! The browser path in a real headless Chromium (Debian's `chromium`, driven by
//! `chromedriver` over the WebDriver protocol): the seed's own WebSocket snippet, and the demo
//! page's forms, against `start_all`. `scripts/test` installs both packages.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use werkmann_tests::{free_port, greeting_ids, temp_dir, wait_listening, wait_until_async, App};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One HTTP/1.1 request on a fresh connection; returns (status, body). Reads by
/// `Content-Length` or chunked encoding (chromedriver keeps connections open).
async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), read_response(&mut s))
        .await
        .expect("answer in time")
}

async fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &buf[head_end..];
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = s.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    let body = if chunked { dechunk(&body) } else { body };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Browser {
    async fn start() -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: run scripts/test, which installs Debian's chromium and chromium-driver"
            );
        }
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            wait_listening(addr, Duration::from_secs(20)),
            "chromedriver listens"
        );
        let profile = temp_dir("chromium");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let (status, body) = http(addr, "POST", "/session", Some(&caps)).await;
        assert_eq!(status, 200, "new session: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            addr,
            session,
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, text) = http(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        )
        .await;
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Evaluate `script` until it returns something truthy (a non-empty string, true).
    async fn wait_for(&self, script: &str, what: &str) -> Value {
        let mut v = Value::Null;
        wait_until_async(Duration::from_secs(15), what, async || {
            v = self.js(script).await;
            match &v {
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Null => false,
                _ => true,
            }
        })
        .await;
        v
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|x| x.as_str())
            .unwrap()
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})))
            .await;
    }

    async fn screenshot(&self, name: &str) {
        use std::io::Write as _;
        let v = self.cmd("GET", "/screenshot", None).await;
        if let Some(b64) = v.as_str() {
            let dir = werkmann_tests::workspace()
                .join("target")
                .join("screenshots");
            let _ = std::fs::create_dir_all(&dir);
            if let Ok(bytes) = decode_b64(b64) {
                let _ = std::fs::File::create(dir.join(name)).and_then(|mut f| f.write_all(&bytes));
            }
        }
    }

    async fn quit(self) {
        let _ = http(
            self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        )
        .await;
    }
}

impl Drop for Browser {
    /// Also when a test fails: chromedriver, and the browser with it, must not outlive it.
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn decode_b64(s: &str) -> Result<Vec<u8>, ()> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return Err(()),
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

fn start_all() -> (App, u16, u16) {
    let ws = free_port();
    let web = free_port();
    let app = App::start(
        "start_all",
        &[
            "--ws-listen",
            &format!("127.0.0.1:{ws}"),
            "--http-listen",
            &format!("127.0.0.1:{web}"),
        ],
        &[ws, web],
    );
    (app, ws, web)
}

#[tokio::test]
async fn the_seed_snippet_in_a_real_browser_receives_greeting_and_pushes() {
    let (_app, ws, web) = start_all();
    let publisher: SocketAddr = ([127, 0, 0, 1], web).into();
    let b = Browser::start().await;
    // A page of the site's own origin (a browser keeps pages of other origins off loopback).
    b.goto(&format!("http://127.0.0.1:{web}/")).await;
    b.js(&format!(
        "window.msgs = []; ws = new WebSocket(\"ws://127.0.0.1:{ws}\"); \
         ws.onmessage = function(e) {{ window.msgs.push(e.data); }};"
    ))
    .await;
    let greeting = b
        .wait_for("return window.msgs[0] || ''", "the greeting")
        .await;
    let greeting = greeting.as_str().unwrap().to_string();
    let (w, c) = greeting_ids(&greeting);

    let (status, body) = http(publisher, "GET", "/?content=Hallo%20Browser", None).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    b.wait_for(
        "return window.msgs.includes('Hallo Browser')",
        "the broadcast",
    )
    .await;
    let (status, _) = http(
        publisher,
        "GET",
        &format!("/?to_worker_id={w}&to_connection_id={c}&content=nur-fuer-dich"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    b.wait_for(
        "return window.msgs.includes('nur-fuer-dich')",
        "the targeted push",
    )
    .await;
    b.quit().await;
}

#[tokio::test]
async fn the_demo_page_forms_broadcast_and_target() {
    let (_app, _ws, web) = start_all();
    let b = Browser::start().await;
    b.goto(&format!("http://127.0.0.1:{web}/")).await;
    let me = b
        .wait_for(
            "var t = document.getElementById('me').textContent; return t === '?' ? '' : t;",
            "the greeting on the page",
        )
        .await;
    assert!(me.as_str().unwrap().starts_with("worker "), "{me}");

    b.type_into("#b-content", "an alle").await;
    b.click("#broadcast button").await;
    b.wait_for(
        "return Array.from(document.querySelectorAll('#log .push')).some(d => d.textContent === 'an alle')",
        "the broadcast in the log",
    )
    .await;
    let result = b
        .js("return document.getElementById('result').textContent")
        .await;
    assert_eq!(result, "200 ok");

    // The target form is prefilled with this page's own worker and connection ids.
    b.type_into("#t-content", "nur an mich").await;
    b.click("#target button").await;
    b.wait_for(
        "return Array.from(document.querySelectorAll('#log .push')).some(d => d.textContent === 'nur an mich')",
        "the targeted push in the log",
    )
    .await;
    b.screenshot("demo-page.png").await;
    b.quit().await;
}

/// The demo page knows both WebSocket nodes (`--ws-nodes` on the publisher): when the node it
/// is connected to is killed (SIGKILL), it reconnects to the other one, is greeted anew and
/// receives pushes there. `?ws=` on the page's address overrides the list.
#[tokio::test]
async fn the_demo_page_reconnects_to_another_node_when_its_node_dies() {
    let ch = free_port();
    let ch_s = format!("127.0.0.1:{ch}");
    let _channel = App::start("start_channel", &["--listen", &ch_s], &[ch]);
    let ports = [free_port(), free_port()];
    let mut nodes: Vec<Option<App>> = ports
        .iter()
        .map(|p| {
            Some(App::start(
                "start_ws",
                &[
                    "--listen",
                    &format!("127.0.0.1:{p}"),
                    "--count",
                    "1",
                    "--channel",
                    &ch_s,
                ],
                &[*p],
            ))
        })
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("ws://127.0.0.1:{p}"))
        .collect();
    let web = free_port();
    let publisher: SocketAddr = ([127, 0, 0, 1], web).into();
    let _http = App::start(
        "start_http",
        &[
            "--listen",
            &format!("127.0.0.1:{web}"),
            "--channel",
            &ch_s,
            "--ws-nodes",
            &format!("127.0.0.1:{},{}", ports[0], urls[1]),
        ],
        &[web],
    );

    let b = Browser::start().await;
    b.goto(&format!("http://127.0.0.1:{web}/")).await;
    let me_script = "var t = document.getElementById('me').textContent; \
                     return document.getElementById('status').textContent === 'connected' \
                     && t !== '?' ? document.getElementById('node').textContent + ' ' + t : '';";
    let first = b.wait_for(me_script, "the greeting").await;
    let first = first.as_str().unwrap().to_string();
    let on = urls
        .iter()
        .position(|u| first.starts_with(&format!("{u} ")))
        .unwrap_or_else(|| panic!("connected to one of {urls:?}: {first}"));
    let other = 1 - on;
    let first_ids = &first[urls[on].len()..];

    drop(nodes[on].take()); // SIGKILL
                            // The page shows "connected" to the new node at once, and the new ids with its greeting:
                            // until then it still shows the old ones.
    let second = b
        .wait_for(
            &format!(
                "var s = {me_script:?}; var v = new Function(s)(); \
                 return v.startsWith('{} ') && !v.endsWith('{first_ids}') ? v : '';",
                urls[other]
            ),
            "the page reconnected to the other node and was greeted there",
        )
        .await;
    let second = second.as_str().unwrap().to_string();
    let (w, c) = second
        .split_once(" worker ")
        .and_then(|(_, r)| r.split_once(", connection "))
        .unwrap_or_else(|| panic!("ids in {second:?}"));

    // A targeted push to its new ids is answered ok and shown; so is a broadcast, answered 503
    // "push reached 1 of the 2" for a while (fewer instances than broadcasts reached before the
    // kill) but delivered to the one it reached, the page's node.
    let (status, body) = http(
        publisher,
        "GET",
        &format!("/?to_worker_id={w}&to_connection_id={c}&content=nach-dem-Wechsel"),
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, body) = http(publisher, "GET", "/?content=an-alle-danach", None).await;
    assert!(
        status == 200 || body.starts_with("push reached 1 of "),
        "the broadcast reached the page's node: {status} {body}"
    );
    for text in ["nach-dem-Wechsel", "an-alle-danach"] {
        b.wait_for(
            &format!(
                "return Array.from(document.querySelectorAll('#log .push')).some(d => d.textContent === '{text}')"
            ),
            text,
        )
        .await;
    }
    b.screenshot("demo-page-reconnected.png").await;

    // ?ws= on the page's address names the nodes in the browser.
    b.goto(&format!(
        "http://127.0.0.1:{web}/?ws=127.0.0.1:{}",
        ports[other]
    ))
    .await;
    let third = b.wait_for(me_script, "the greeting via ?ws=").await;
    assert!(
        third
            .as_str()
            .unwrap()
            .starts_with(&format!("{} ", urls[other])),
        "{third}"
    );
    b.quit().await;
}
