//! Instances as supervised child processes (`--processes`, `Worker::processes`): a child killed
//! under load comes back with the same instance and cluster worker id while the other
//! children's clients never notice; status, connections, stop and reload across the children.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use werkmann_tests::push::{connect, get, push_ok, until_every_client_is_reached, Ws};
use werkmann_tests::{free_addr, wait_until, wait_until_async, App, RedisServer};

const IDS: [u32; 4] = [10, 11, 12, 13];

/// `status --json` of an app.
fn status(app: &App) -> Value {
    let out = app.command(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

/// The pid serving instance `id` of `worker`, from `status --json`.
fn pid_of(app: &App, worker: &str, id: u64) -> Option<i32> {
    status(app)["instances"]
        .as_array()?
        .iter()
        .find(|i| i["worker"] == worker && i["id"] == id)
        .and_then(|i| i["pid"].as_i64())
        .map(|p| p as i32)
}

/// The pids serving instances `0..count` of `worker`.
fn instance_pids(app: &App, worker: &str, count: u64) -> HashSet<i32> {
    (0..count).filter_map(|i| pid_of(app, worker, i)).collect()
}

/// `name start -d --listen IP:PORT --count N --processes` on a free port of `ip`.
fn children_daemon(name: &str, ip: &str, count: usize) -> (App, SocketAddr) {
    let a = free_addr(ip);
    let (a_s, n) = (a.to_string(), count.to_string());
    let args = [
        "--listen",
        a_s.as_str(),
        "--count",
        n.as_str(),
        "--processes",
    ];
    (App::start_daemon(name, &args, &[a]), a)
}

/// A client's messages until `end`, and whether its connection ended first.
async fn read_until(mut ws: Ws, end: &str) -> (Vec<String>, bool) {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                if t.as_str() == end {
                    return (got, false);
                }
                got.push(t.to_string());
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => return (got, true),
            Err(_) => panic!("nothing for 30 s; got {} messages", got.len()),
        }
    }
}

/// Clients until every worker id in `IDS` has `per` of them (the children take connections
/// from one shared socket, so which child gets one is not fixed).
async fn clients_on_every_child(ws: SocketAddr, per: usize) -> Vec<(Ws, u32, u64)> {
    let mut clients = Vec::new();
    let mut count: HashMap<u32, usize> = HashMap::new();
    for _ in 0..400 {
        if IDS
            .iter()
            .all(|id| count.get(id).copied().unwrap_or(0) >= per)
        {
            return clients;
        }
        let c = connect(ws).await;
        assert!(IDS.contains(&c.1), "greeted as worker {} ({IDS:?})", c.1);
        *count.entry(c.1).or_default() += 1;
        clients.push(c);
    }
    panic!("400 connections did not reach every child: {count:?}");
}

#[tokio::test]
async fn a_killed_child_comes_back_and_the_others_never_notice_channel_server() {
    let ch = free_addr("127.0.3.1");
    let _channel = App::start_at("start_channel", &["--listen", &ch.to_string()], &[ch]);
    killed_child(&ch.to_string()).await;
}

#[tokio::test]
async fn a_killed_child_comes_back_and_the_others_never_notice_redis() {
    let redis = RedisServer::start();
    killed_child(&redis.url()).await;
}

async fn killed_child(channel: &str) {
    let (ws, http) = (free_addr("127.0.3.2"), free_addr("127.0.3.3"));
    let ids: Vec<String> = IDS.iter().map(u32::to_string).collect();
    let (ws_s, http_s) = (ws.to_string(), http.to_string());
    let node = App::start_at(
        "start_ws",
        &[
            "--listen",
            &ws_s,
            "--count",
            "4",
            "--processes",
            "--worker-ids",
            &ids.join(","),
            "--channel",
            channel,
        ],
        &[ws],
    );
    let _publisher = App::start_at(
        "start_http",
        &["--listen", &http_s, "--channel", channel],
        &[http],
    );

    let mut clients = clients_on_every_child(ws, 2).await;
    let mut all: Vec<&mut Ws> = clients.iter_mut().map(|c| &mut c.0).collect();
    until_every_client_is_reached(http, &mut all, "warm").await;
    // Instance i is worker id IDS[i]; the victim is instance 1.
    let victim = pid_of(&node, "pusher", 1)
        .unwrap_or_else(|| panic!("instance 1 has a pid: {}\n{}", status(&node), node.log()));
    let others: HashSet<i32> = (0..4u64)
        .filter_map(|i| pid_of(&node, "pusher", i))
        .collect();
    assert_eq!(others.len(), 4, "four instances, four processes");

    // Every client reads until "end"; broadcasts go out all along.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|(c, w, id)| (w, id, tokio::spawn(read_until(c, "end"))))
        .collect();
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // `ok`, or 503 while the killed child's share is missing: both reach the
                // children that live.
                let (status, body) = get(http, &format!("/?content=seq-{n}")).await;
                assert!(status == 200 || status == 503, "{status} {body}");
                sent.store(n, Ordering::Relaxed);
            }
        })
    };
    wait_until_async(
        Duration::from_secs(20),
        "100 pushes before the kill",
        async || sent.load(Ordering::Relaxed) >= 100,
    )
    .await;
    unsafe { libc::kill(victim, libc::SIGKILL) };

    // The supervisor starts instance 1 again, with its worker id.
    wait_until(
        Duration::from_secs(20),
        "instance 1 in a new process",
        || pid_of(&node, "pusher", 1).is_some_and(|p| p != victim),
    );
    let s = status(&node);
    let child = s["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["serves"] == "pusher #1")
        .expect("a child serves pusher #1")
        .clone();
    assert_eq!(child["restarts"], 1, "{s}");
    let log = node.log();
    assert!(
        log.contains(&format!("pusher #1 (pid {victim}) was killed by signal 9")),
        "the supervisor says how the child ended:\n{log}"
    );
    // Its clients were closed with it; a new client lands on it as worker 11 again.
    let mut back = None;
    for _ in 0..200 {
        let c = connect(ws).await;
        if c.1 == IDS[1] {
            back = Some(c);
            break;
        }
    }
    let (mut back, _, back_conn) = back.expect("a client reaches the restarted child");
    let before = sent.load(Ordering::Relaxed);
    wait_until_async(
        Duration::from_secs(20),
        "100 pushes after the restart",
        async || sent.load(Ordering::Relaxed) >= before + 100,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let last = sent.load(Ordering::Relaxed);
    // A targeted push reaches the new client by (worker id, connection id).
    push_ok(
        http,
        &format!(
            "/?to_worker_id={}&to_connection_id={back_conn}&content=hier",
            IDS[1]
        ),
    )
    .await;
    loop {
        let m = werkmann_tests::push::next_text(&mut back).await;
        if m == "hier" {
            break;
        }
        assert!(m.starts_with("seq-"), "{m}");
    }
    push_ok(http, "/?content=end").await;

    let expected: Vec<String> = (1..=last).map(|n| format!("seq-{n}")).collect();
    for (w, id, r) in readers {
        let (got, closed) = r.await.unwrap();
        if w == IDS[1] {
            assert!(closed, "client {w}-{id} of the killed child is closed");
        } else {
            assert!(
                !closed,
                "client {w}-{id} of a child that lived was not closed"
            );
            assert_eq!(got.len(), expected.len(), "client {w}-{id} got every push");
            assert!(got == expected, "client {w}-{id} got every push, in order");
        }
    }
    // The children that lived are the same processes.
    for i in [0u64, 2, 3] {
        assert!(others.contains(&pid_of(&node, "pusher", i).unwrap()));
    }
}

#[tokio::test]
async fn stop_status_and_connections_reach_every_child() {
    let (app, a) = children_daemon("ws_echo", "127.0.3.4", 3);
    let supervisor = app.daemon_pid().expect("a pid file");
    let mut clients = Vec::new();
    for _ in 0..9 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{a}"))
            .await
            .unwrap();
        clients.push(ws);
    }
    wait_until(Duration::from_secs(10), "9 connections counted", || {
        status(&app)["instances"].as_array().is_some_and(|l| {
            l.iter()
                .map(|i| i["connections"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == 9
        })
    });
    let s = status(&app);
    assert_eq!(s["pid"], supervisor, "{s}");
    let children = s["children"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{s}");
    let pids: HashSet<i64> = children
        .iter()
        .map(|c| c["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    assert!(!pids.contains(&(supervisor as i64)));
    // `connections` lists all nine, from every child.
    let out = app.command(&["connections", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 9, "{list:?}");
    // The table shows each child.
    let out = app.command(&["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    for id in 0..3 {
        assert!(table.contains(&format!("ws_echo #{id}")), "{table}");
    }
    // stop: every child ends, and so does the supervisor; the clients are closed.
    let out = app.command(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in pids {
        assert!(!werkmann_tests::process_alive(p as i32), "child {p} ended");
    }
    for mut c in clients {
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match c.next().await {
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "clients are closed by the stop");
    }
}

/// One `ws_clients` process (tests/src/bin/ws_clients.rs): `n` connections from `from`.
struct Clients {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Clients {
    fn open(url: &str, from: &str, n: usize) -> Clients {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ws_clients"))
            .args([url, from, &n.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Clients { child, out }
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    /// How many clients got `text`, and how many were closed.
    fn count(&mut self, text: &str) -> (u64, u64) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "count {text}").unwrap();
        let line = self.line();
        let f: Vec<&str> = line.split_whitespace().collect();
        (f[1].parse().unwrap(), f[3].parse().unwrap())
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Past one process's open-file limit (20,000 here): 40,000 WebSocket clients on one node of
/// four child processes, each of which gets a broadcast.
#[tokio::test]
async fn forty_thousand_clients_on_one_node_of_four_processes() {
    let ch = free_addr("127.0.3.5");
    let (ws, http) = (free_addr("127.0.3.6"), free_addr("127.0.3.7"));
    let (ch_s, ws_s, http_s) = (ch.to_string(), ws.to_string(), http.to_string());
    let _channel = App::start_at("start_channel", &["--listen", &ch_s], &[ch]);
    let node = App::start_at(
        "start_ws",
        &[
            "--listen",
            &ws_s,
            "--count",
            "4",
            "--processes",
            "--channel",
            &ch_s,
        ],
        &[ws],
    );
    let _publisher = App::start_at(
        "start_http",
        &["--listen", &http_s, "--channel", &ch_s],
        &[http],
    );
    const PER: usize = 10_000;
    let url = format!("ws://{ws}/");
    let mut helpers: Vec<Clients> = (1..=4)
        .map(|i| Clients::open(&url, &format!("127.0.4.{i}"), PER))
        .collect();
    for h in helpers.iter_mut() {
        assert_eq!(h.line(), format!("open {PER} failed 0"));
    }
    let s = status(&node);
    let per_child: Vec<u64> = s["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["connections"].as_u64().unwrap())
        .collect();
    assert_eq!(
        per_child.iter().sum::<u64>(),
        4 * PER as u64,
        "{per_child:?}"
    );
    // Shared fairly (`balance.rs`): no child near its limit.
    eprintln!("connections per child: {per_child:?}");
    assert!(per_child.iter().all(|&n| n < 15_000), "{per_child:?}");
    // A broadcast answered `ok` reached every instance; each client gets it.
    push_ok(http, "/?content=an-alle").await;
    wait_until(
        Duration::from_secs(60),
        "every client got the broadcast",
        || {
            helpers
                .iter_mut()
                .all(|h| h.count("an-alle") == (PER as u64, 0))
        },
    );
}

/// A child that dies at once again and again is started again later each time (and said so);
/// `reload` swaps the supervisor and its children without refusing a connection.
#[tokio::test]
async fn a_crash_loop_backs_off_and_reload_refuses_nothing() {
    let (app, a) = children_daemon("text_echo", "127.0.3.8", 2);
    let supervisor = app.daemon_pid().unwrap();
    // Kill instance 0 as soon as each new process of it answers `status`.
    let mut last = pid_of(&app, "text_echo", 0).unwrap();
    for round in 1..=3 {
        unsafe { libc::kill(last, libc::SIGKILL) };
        wait_until(Duration::from_secs(10), format!("restart {round}"), || {
            pid_of(&app, "text_echo", 0).is_some_and(|p| p != last)
        });
        last = pid_of(&app, "text_echo", 0).unwrap();
    }
    let log = app.log();
    for (n, wait) in [(1, "0.1"), (2, "0.2"), (3, "0.4")] {
        let s = if n == 1 { "" } else { "s" };
        let line = format!("{n} quick exit{s} in a row: starting it again in {wait} s");
        assert!(log.contains(&line), "{line:?} in:\n{log}");
    }

    // Reload while a client connects over and over: every connection is answered.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let prober = {
        let (stop, answered) = (stop.clone(), answered.clone());
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            while !stop.load(Ordering::Relaxed) {
                let mut s = std::net::TcpStream::connect(a).expect("no connection refused");
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(b"ping\n").unwrap();
                let mut line = String::new();
                std::io::BufReader::new(&s).read_line(&mut line).unwrap();
                assert_eq!(line, "ping\n", "answered during the reload");
                answered.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let answered_past = |n: u64| {
        wait_until(Duration::from_secs(20), format!("{n} answered"), || {
            answered.load(Ordering::Relaxed) >= n
        })
    };
    answered_past(10);
    let before: HashSet<i32> = instance_pids(&app, "text_echo", 2);
    let out = app.command(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The supervisor executes the new binary in its own place and replaces its children.
    wait_until(Duration::from_secs(20), "both children replaced", || {
        let now: HashSet<i32> = instance_pids(&app, "text_echo", 2);
        now.len() == 2 && now.is_disjoint(&before)
    });
    assert_eq!(app.daemon_pid(), Some(supervisor), "the same supervisor");
    assert!(app.log().contains("reloading: executing"), "{}", app.log());
    // And the new children answer too.
    answered_past(answered.load(Ordering::Relaxed) + 10);
    stop.store(true, Ordering::Relaxed);
    prober.join().expect("the prober saw no refusal");
}

/// HTTP keep-alive requests in a loop: each one must be answered whole. A request written on
/// a connection the server closed while it rested (the close and the request crossed) is sent
/// again on a new connection, as HTTP clients do; a connection refused or a response cut short
/// fails. Counts the answers in `answered`; returns how many were sent again.
fn keep_alive_load(addr: SocketAddr, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) -> u64 {
    use std::io::{BufRead, Read, Write};
    let mut again = 0u64;
    let mut conn: Option<std::io::BufReader<std::net::TcpStream>> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let fresh = conn.is_none();
        let c = conn.get_or_insert_with(|| {
            let s = std::net::TcpStream::connect(addr).expect("no connection refused");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            std::io::BufReader::new(s)
        });
        n += 1;
        let req = format!("GET /?n={n} HTTP/1.1\r\nHost: x\r\n\r\n");
        if c.get_mut().write_all(req.as_bytes()).is_err() && !fresh {
            (conn, again) = (None, again + 1);
            continue;
        }
        let mut head = String::new();
        let mut first = true;
        loop {
            let mut line = String::new();
            let got = c.read_line(&mut line).unwrap_or(0);
            if got == 0 {
                assert!(
                    first && !fresh,
                    "request {n}: the response was cut short: {head:?}"
                );
                break;
            }
            first = false;
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        if head.is_empty() {
            (conn, again) = (None, again + 1);
            continue;
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .and_then(|v| v.trim().parse().ok())
            .expect("a Content-Length");
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).expect("the whole body");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body["query"]["n"],
            n.to_string(),
            "the answer to request {n}"
        );
        answered.fetch_add(1, Ordering::Relaxed);
        if head.to_ascii_lowercase().contains("connection: close") {
            conn = None;
        }
    }
    again
}

#[tokio::test]
async fn reload_g_replaces_children_one_at_a_time_answering_every_request() {
    let (app, a) = children_daemon("http_echo", "127.0.3.12", 2);
    let supervisor = app.daemon_pid().unwrap();
    let before: HashSet<i32> = instance_pids(&app, "http_echo", 2);
    assert_eq!(before.len(), 2);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || keep_alive_load(a, stop, answered))
        })
        .collect();
    let answered_past = |n: u64| {
        wait_until(Duration::from_secs(20), format!("{n} answered"), || {
            answered.load(Ordering::Relaxed) >= n
        })
    };
    answered_past(50);
    let out = app.command(&["reload", "-g"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same supervisor (it executed the new binary in its place), new children.
    wait_until(Duration::from_secs(30), "both children replaced", || {
        let now: HashSet<i32> = instance_pids(&app, "http_echo", 2);
        now.len() == 2 && now.is_disjoint(&before)
    });
    wait_until(Duration::from_secs(20), "the old children finished", || {
        before.iter().all(|p| !werkmann_tests::process_alive(*p))
    });
    assert_eq!(app.daemon_pid(), Some(supervisor));
    // And the new children answer too.
    answered_past(answered.load(Ordering::Relaxed) + 50);
    stop.store(true, Ordering::Relaxed);
    let mut again = 0;
    for l in load {
        again += l
            .join()
            .expect("every request answered, no connection refused");
    }
    let answered = answered.load(Ordering::Relaxed);
    assert!(answered > 100, "{answered} answered");
    eprintln!("{answered} requests answered, {again} sent again after a resting close");
    let log = app.log();
    assert!(log.contains("http_echo #0 (pid"), "{log}");
    assert!(log.contains("replaced; waiting for it to finish"), "{log}");
}

#[test]
fn stop_g_waits_for_connections_to_finish() {
    use std::io::{BufRead, Write};
    let a = free_addr("127.0.3.13");
    let app = App::start_daemon("text_echo", &["--listen", &a.to_string()], &[a]);
    let pid = app.daemon_pid().unwrap();
    let s = std::net::TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    w.write_all(b"eins\n").unwrap();
    r.read_line(&mut line).unwrap();
    let stopper = {
        let (bin, run_dir, args) = (app.bin.clone(), app.run_dir.clone(), app.args.clone());
        std::thread::spawn(move || {
            let t = std::time::Instant::now();
            let out = std::process::Command::new(bin)
                .args(["stop", "-g"])
                .args(&args)
                .env("WERKMANN_RUN_DIR", run_dir)
                .output()
                .unwrap();
            (out, t.elapsed())
        })
    };
    // The stop is under way and waits for the connection, which is still served.
    wait_until(
        Duration::from_secs(10),
        "the stop waits for the connection",
        || app.log().contains("waiting up to"),
    );
    assert!(werkmann_tests::process_alive(pid));
    line.clear();
    w.write_all(b"zwei\n").unwrap();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "zwei\n");
    // It closes: the stop completes.
    drop((r, w));
    let (out, took) = stopper.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(8),
        "{took:?}: it ended when the connection did"
    );
    assert!(!werkmann_tests::process_alive(pid));
}

#[test]
fn a_worker_that_is_not_reloadable_keeps_its_processes() {
    use std::io::{BufRead, Write};
    // Without processes there is nothing to keep it in: refused at start.
    let (l, c, w) = (
        free_addr("127.0.3.14"),
        free_addr("127.0.3.14"),
        free_addr("127.0.3.14"),
    );
    let args = [
        "--listen".to_string(),
        l.to_string(),
        "--custom-listen".into(),
        c.to_string(),
        "--ws-listen".into(),
        w.to_string(),
        "--keep-console".into(),
    ];
    let run = werkmann_tests::temp_dir("keep");
    let out = std::process::Command::new(werkmann_tests::bin("feature_demo"))
        .arg("start")
        .args(&args)
        .env("WERKMANN_RUN_DIR", &run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reloadable = false"));

    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--count", "2", "--processes"]);
    let app = App::start_daemon("feature_demo", &args, &[l, c, w]);
    let consoles: HashSet<i32> = instance_pids(&app, "console", 2);
    assert_eq!(consoles.len(), 2);
    let s = std::net::TcpStream::connect(l).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut s = s;
    let threads_child = |app: &App| -> i64 {
        status(app)["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["serves"].as_str().unwrap().starts_with("threads"))
            .map(|c| c["pid"].as_i64().unwrap())
            .unwrap()
    };
    let rest = threads_child(&app);
    let out = app.command(&["reload"]);
    assert!(out.status.success());
    // The console hears of the reload and stays; the other workers' child is replaced.
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "reloading\n");
    wait_until(
        Duration::from_secs(20),
        "the threads child replaced",
        || threads_child(&app) != rest,
    );
    let now: HashSet<i32> = instance_pids(&app, "console", 2);
    assert_eq!(now, consoles, "the console's processes are the same");
    line.clear();
    s.write_all(b"whoami\n").unwrap();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("worker="), "{line}");
}

/// The uid a process runs as (`/proc/PID/status`).
fn uid_of(pid: i64) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn workers_run_as_another_user_after_binding_a_privileged_port() {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the suite runs as root (it installs packages)"
    );
    // A port below 1024 that is free on this address.
    let port = (81..1024)
        .find(|p| std::net::TcpListener::bind(("127.0.3.16", *p)).is_ok())
        .unwrap();
    let a: SocketAddr = ([127, 0, 3, 16], port).into();
    let a_s = a.to_string();
    let app = App::start_daemon(
        "ws_echo",
        &[
            "--listen",
            &a_s,
            "--count",
            "2",
            "--processes",
            "--user",
            "nobody",
        ],
        &[a],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{a}"))
        .await
        .unwrap();
    use futures_util::SinkExt;
    ws.send(WsMessage::text("als nobody")).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.to_text().unwrap(), "als nobody");
    let s = status(&app);
    assert_eq!(
        uid_of(s["pid"].as_i64().unwrap()),
        0,
        "the supervisor keeps root"
    );
    let children = s["children"].as_array().unwrap();
    assert_eq!(children.len(), 2, "{s}");
    for c in children {
        assert_eq!(
            uid_of(c["pid"].as_i64().unwrap()),
            65534,
            "{c}: runs as nobody"
        );
    }
    let out = app.command(&["connections", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 1, "the children's reports reach the supervisor");
    // A user that does not exist is refused at start.
    let run = werkmann_tests::temp_dir("nouser");
    let out = std::process::Command::new(werkmann_tests::bin("ws_echo"))
        .args(["start", "--listen", "127.0.3.16:0", "--user", "keiner-hier"])
        .env("WERKMANN_RUN_DIR", &run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user \"keiner-hier\""));
}

/// A reload into a binary that cannot take over (here one whose command line refuses the
/// options) goes back to the binary before: the supervisor and the service stay.
#[test]
fn a_reload_into_a_binary_that_fails_goes_back() {
    use std::io::{BufRead, Write};
    let dir = werkmann_tests::temp_dir("revert");
    let app = dir.join("echo_app");
    std::fs::copy(werkmann_tests::bin("text_echo"), &app).unwrap();
    let a = free_addr("127.0.3.17");
    let a_s = a.to_string();
    let args = ["--listen", a_s.as_str(), "--count", "2", "--processes"];
    let run = |cmd: &[&str]| {
        std::process::Command::new(&app)
            .args(cmd)
            .args(args)
            .env("WERKMANN_RUN_DIR", &dir)
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    };
    let out = run(&["start", "-d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid_file = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "pid"))
        .unwrap();
    let supervisor: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let echo = || {
        let s = std::net::TcpStream::connect(a).expect("served");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        w.write_all(b"noch da\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    assert_eq!(echo(), "noch da\n");
    // The binary on disk is now one that refuses these options (the channel server's).
    std::fs::remove_file(&app).unwrap();
    std::fs::copy(werkmann_tests::bin("start_channel"), &app).unwrap();
    unsafe { libc::kill(supervisor, libc::SIGUSR1) };
    let log = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<String>()
    };
    wait_until(Duration::from_secs(20), "the supervisor went back", || {
        log().contains("going back to the one before")
            && log().matches("supervisor started").count() >= 2
    });
    assert!(
        werkmann_tests::process_alive(supervisor),
        "the supervisor lives:\n{}",
        log()
    );
    assert_eq!(echo(), "noch da\n");
    // With the right binary again, a reload works and the service stops cleanly.
    std::fs::remove_file(&app).unwrap();
    std::fs::copy(werkmann_tests::bin("text_echo"), &app).unwrap();
    let out = run(&["status", "--json"]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["children"].as_array().map(Vec::len), Some(2), "{s}");
    let out = run(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!werkmann_tests::process_alive(supervisor));
}

/// During a graceful reload, an old child that dies before its turn is replaced at once,
/// while the one before it still finishes its connections.
#[test]
fn an_old_child_that_dies_before_its_turn_is_replaced_at_once() {
    let (app, a) = children_daemon("text_echo", "127.0.3.18", 2);
    let old: Vec<i32> = (0..2u64)
        .map(|i| pid_of(&app, "text_echo", i).unwrap())
        .collect();
    // Connections on both children (which one takes a connection is not fixed).
    let mut held = Vec::new();
    wait_until(
        Duration::from_secs(20),
        "a connection on each child",
        || {
            let s = std::net::TcpStream::connect(a).unwrap();
            held.push(s);
            let st = status(&app);
            st["instances"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["connections"].as_u64().unwrap_or(0) > 0)
        },
    );
    let out = app.command(&["reload", "-g"]);
    assert!(out.status.success());
    // Instance 0 is replaced first; its old process waits for its connections.
    wait_until(Duration::from_secs(20), "instance 0 replaced", || {
        pid_of(&app, "text_echo", 0).is_some_and(|p| p != old[0])
    });
    assert!(
        werkmann_tests::process_alive(old[0]),
        "the old #0 still finishes"
    );
    unsafe { libc::kill(old[1], libc::SIGKILL) };
    wait_until(
        Duration::from_secs(5),
        "instance 1 replaced at once",
        || pid_of(&app, "text_echo", 1).is_some_and(|p| p != old[1]),
    );
    assert!(
        werkmann_tests::process_alive(old[0]),
        "the old #0 is still finishing"
    );
    drop(held);
    wait_until(Duration::from_secs(20), "the old #0 finished", || {
        !werkmann_tests::process_alive(old[0])
    });
    assert!(app.log().contains("ended before its turn"), "{}", app.log());
}
