//! `unix://` sockets (`--listen unix:/PATH`): text, WebSocket and HTTP served over a Unix
//! socket to real clients (a socket, Python `websockets`, `curl --unix-socket`), the file's
//! permissions, a stale file replaced and a live one refused, the file removed on stop and kept
//! across a reload, and the push cluster's channel over a Unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use werkmann_tests::push::{connect, get, next_text, push_ok, until_every_client_is_reached};
use werkmann_tests::{bin, free_addr, temp_dir, wait_until, App};

/// Start `name` listening on the Unix socket `path` and wait for the file to accept.
fn start_on(name: &str, path: &Path, extra: &[&str]) -> App {
    let listen = format!("unix:{}", path.display());
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(extra);
    let app = App::start_at(name, &args, &[]);
    wait_until(
        Duration::from_secs(20),
        format!("{name} on {}", path.display()),
        || UnixStream::connect(path).is_ok(),
    );
    app
}

fn text_line(path: &Path, line: &str) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut got = String::new();
    BufReader::new(&s).read_line(&mut got).unwrap();
    got
}

#[test]
fn text_websocket_and_http_over_unix_sockets() {
    let dir = temp_dir("unix");
    let (t, w, h) = (
        dir.join("text.sock"),
        dir.join("ws.sock"),
        dir.join("http.sock"),
    );
    let text = start_on("text_echo", &t, &["--unix-mode", "660"]);
    let _ws = start_on("ws_echo", &w, &[]);
    let _http = start_on("http_echo", &h, &["--count", "2", "--processes"]);

    // The file is a socket with the permissions asked for.
    let meta = std::fs::metadata(&t).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(text_line(&t, "hallo"), "hallo\n");

    // Python's `websockets` over the Unix socket.
    let out = werkmann_tests::python(&format!(
        "import asyncio, websockets\n\
             async def main():\n\
             \x20   async with websockets.unix_connect({:?}, 'ws://localhost/') as ws:\n\
             \x20       await ws.send('über unix')\n\
             \x20       print(await ws.recv())\n\
             asyncio.run(main())\n",
        w.display().to_string()
    ));
    assert_eq!(out.trim(), "über unix");

    // curl over the Unix socket (the HTTP worker's instances are processes here).
    let out = werkmann_tests::curl(&[
        "-s",
        "--unix-socket",
        h.to_str().unwrap(),
        "http://localhost/pfad?x=1",
    ]);
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["path"], "/pfad");
    assert_eq!(body["query"]["x"], "1");
    assert_eq!(
        body["remote"],
        serde_json::Value::Null,
        "a Unix peer has no address"
    );

    // `status` shows the socket; `stop` removes its file.
    let out = text.command(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("text://unix:"));
    let out = text.command(&["stop"]);
    assert!(out.status.success());
    assert!(!t.exists(), "the socket file is removed on stop");
}

#[test]
fn a_stale_file_is_replaced_a_live_one_refused_and_other_files_untouched() {
    let dir = temp_dir("unix-files");
    // A socket file whose process is gone: bound, then the listener dropped.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut first = start_on("text_echo", &stale, &[]);
    assert_eq!(text_line(&stale, "neu"), "neu\n");

    // A second process on the same path is refused: something serves it.
    let listen = format!("unix:{}", stale.display());
    let run = temp_dir("unix-second");
    let out = Command::new(bin("text_echo"))
        .args(["start", "--listen", &listen])
        .env("WERKMANN_RUN_DIR", &run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
    assert_eq!(
        text_line(&stale, "noch da"),
        "noch da\n",
        "the first one still serves"
    );

    // A path that is not a socket is never removed.
    let plain = dir.join("plain.txt");
    std::fs::write(&plain, "data").unwrap();
    let out = Command::new(bin("text_echo"))
        .args(["start", "--listen", &format!("unix:{}", plain.display())])
        .env("WERKMANN_RUN_DIR", &run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "data");

    // A reload hands the socket over: its file stays and is served on.
    let out = first.command(&["reload"]);
    assert!(out.status.success());
    wait_until(
        Duration::from_secs(20),
        "the reloaded process serves",
        || first.log().matches("started (pid").count() >= 2,
    );
    // The old process has stopped, and the file is still there.
    assert!(
        first.wait_exit(Duration::from_secs(20)).is_some(),
        "the old process stops"
    );
    assert!(stale.exists(), "the file stays across a reload");
    assert_eq!(text_line(&stale, "danach"), "danach\n");
    // The new process is nobody's child here: stop it by its pid file.
    let out = first.command(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stale.exists(),
        "removed by the stop of the process that serves it"
    );
}

/// The push cluster with its channel on a Unix socket: a channel server and nodes, and
/// `start_all --processes` (its channel on a Unix socket of its own).
#[tokio::test]
async fn the_channel_over_a_unix_socket() {
    let dir = temp_dir("unix-channel");
    let ch = format!("unix:{}", dir.join("channel.sock").display());
    let _channel = App::start_at("start_channel", &["--listen", &ch], &[]);
    wait_until(Duration::from_secs(20), "the channel listens", || {
        UnixStream::connect(dir.join("channel.sock")).is_ok()
    });
    let (ws, http) = (free_addr("127.0.5.1"), free_addr("127.0.5.2"));
    let (ws_s, http_s) = (ws.to_string(), http.to_string());
    let _node = App::start_at("start_ws", &["--listen", &ws_s, "--channel", &ch], &[ws]);
    let _pubr = App::start_at(
        "start_http",
        &["--listen", &http_s, "--channel", &ch],
        &[http],
    );
    let mut c = connect(ws).await;
    until_every_client_is_reached(http, &mut [&mut c.0], "warm").await;
    push_ok(http, "/?content=via-unix").await;
    assert_eq!(next_text(&mut c.0).await, "via-unix");

    let (ws, web) = (free_addr("127.0.5.3"), free_addr("127.0.5.4"));
    let all = werkmann_tests::start_all_at(ws, web, &["--processes"]);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(ws).await);
    }
    let mut refs: Vec<_> = clients.iter_mut().map(|c| &mut c.0).collect();
    until_every_client_is_reached(web, &mut refs, "warm").await;
    let (status, body) = get(web, "/?content=alle").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    for c in clients.iter_mut() {
        assert_eq!(next_text(&mut c.0).await, "alle");
    }
    let s = all.command(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(s["children"].as_array().map(Vec::len), Some(5), "{s}");
}
