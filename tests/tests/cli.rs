//! Workerman's command line on real processes: `start -d`, `status`, `connections`, `stop`,
//! `stop -g`, SIGTERM, refusing a second start, and `reload` without refusing a connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use werkmann_tests::addressing::{Backend, Cluster};
use werkmann_tests::{bin, free_port, temp_dir, wait_listening, wait_until};

struct Daemon {
    run_dir: std::path::PathBuf,
    args: Vec<String>,
    port: u16,
}

impl Daemon {
    fn cmd(&self, cmd: &[&str]) -> Output {
        Command::new(bin("feature_demo"))
            .args(cmd)
            .args(&self.args)
            .env("WERKMANN_RUN_DIR", &self.run_dir)
            .output()
            .unwrap()
    }

    fn start() -> Daemon {
        let port = free_port();
        let custom = free_port();
        let d = Daemon {
            run_dir: temp_dir("cli"),
            args: vec![
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--custom-listen".into(),
                format!("127.0.0.1:{custom}"),
                "--ws-listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "--count".into(),
                "2".into(),
            ],
            port,
        };
        // Built first (the first `bin` of a test process may build the apps): only the start
        // is timed.
        let _ = bin("feature_demo");
        let t = Instant::now();
        let out = d.cmd(&["start", "-d"]);
        assert!(out.status.success(), "start -d: {}", text(&out));
        assert!(t.elapsed() < Duration::from_secs(10), "start -d returns");
        assert!(
            text(&out).contains("listening on 127.0.0.1"),
            "{}",
            text(&out)
        );
        assert!(wait_listening(
            ([127, 0, 0, 1], port).into(),
            Duration::from_secs(5)
        ));
        d
    }

    fn pid(&self) -> i32 {
        let pid_file = std::fs::read_dir(&self.run_dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "pid"))
            .expect("a pid file");
        read_pid(&pid_file)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_dir(&self.run_dir)
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "pid"))
            .map(|p| read_pid(&p))
        {
            // SAFETY: kill(2) takes two integers and touches no memory of ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn read_pid(p: &Path) -> i32 {
    std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn alive(pid: i32) -> bool {
    werkmann_tests::process_alive(pid)
}

fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn console(port: u16) -> (BufReader<TcpStream>, TcpStream) {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

fn ask(c: &mut (BufReader<TcpStream>, TcpStream), line: &str) -> String {
    c.1.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut out = String::new();
    c.0.read_line(&mut out).unwrap();
    out.trim_end().to_string()
}

#[test]
fn start_daemon_status_connections_stop() {
    let d = Daemon::start();
    let pid = d.pid();
    assert!(alive(pid));

    // A second start is refused while the first runs.
    let again = d.cmd(&["start"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already running"), "{}", text(&again));

    let mut c = console(d.port);
    let who = ask(&mut c, "whoami");
    let instance = who
        .strip_prefix("worker=")
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_string();
    let _ = ask(&mut c, "stats");

    let status = d.cmd(&["status"]);
    assert!(status.status.success(), "{}", text(&status));
    let st = text(&status);
    assert!(st.contains(&format!("pid {pid}")), "{st}");
    let rows: Vec<&str> = st.lines().filter(|l| l.starts_with("console")).collect();
    assert_eq!(rows.len(), 2, "one row per instance:\n{st}");
    // Our instance has our connection and its two messages.
    let row: Vec<&str> = rows
        .iter()
        .map(|r| r.split_whitespace().collect::<Vec<_>>())
        .find(|r| r[2] == instance)
        .unwrap();
    assert_eq!(row[3], "1", "connections: {st}");
    assert_eq!(row[5], "2", "messages in: {st}");
    assert!(st.contains("rss"), "{st}");

    // The same figures as JSON, for scripts.
    let json: Value = serde_json::from_slice(&d.cmd(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["pid"], pid, "{json}");
    let ours = json["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["worker"] == "console"
                && i["id"].as_u64().map(|n| n.to_string()).as_deref() == Some(instance.as_str())
        })
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(ours["connections"], 1, "{json}");
    assert_eq!(ours["messages_in"], 2, "{json}");
    assert!(json["totals"]["closed"].is_object(), "{json}");

    let conns = text(&d.cmd(&["connections"]));
    let local = c.1.local_addr().unwrap().to_string();
    assert!(conns.contains(&local), "{conns}");
    // Filtered: our instance's has it, with what it sent; the other instance's does not.
    let picked = |args: &[&str]| -> Vec<Value> {
        let out = d.cmd(&[&["connections", "--json"], args].concat());
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let mine = picked(&["--worker", "console", "--instance", &instance]);
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["remote"], local);
    assert_eq!(mine[0]["messages_in"], 2);
    let other = if instance == "0" { "1" } else { "0" };
    assert!(picked(&["--worker", "console", "--instance", other]).is_empty());
    assert!(picked(&["--ip", "127.0.0.2"]).is_empty());
    assert_eq!(
        picked(&["--ip", "127.0.0.1", "--worker", "console"]).len(),
        1
    );
    // A mistyped filter is an error, not an empty list.
    let bad = d.cmd(&["connections", "--ip", "localhost"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("--ip"), "{}", text(&bad));

    let stop = d.cmd(&["stop"]);
    assert!(stop.status.success(), "{}", text(&stop));
    assert!(text(&stop).contains("stop success"));
    assert!(!alive(pid));
    // The connection was closed and the pid file removed.
    let mut rest = Vec::new();
    let _ = c.0.read_to_end(&mut rest);
    assert!(std::fs::read_dir(&d.run_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .all(|e| e.path().extension().is_none_or(|x| x != "pid")));
    assert!(TcpStream::connect(("127.0.0.1", d.port)).is_err());
    // Stopping again says it is not running.
    let again = d.cmd(&["stop"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("not running"));
}

/// `--pid-file`, `--log-file`, `--stdout-file` (Workerman's pidFile, logFile, stdoutFile): the
/// daemon writes each where it is told, the commands find it by its pid file, and a path that
/// cannot be a file is refused before anything starts.
#[test]
fn the_pid_log_and_stdout_files_go_where_they_are_named() {
    let port = free_port();
    let elsewhere = temp_dir("cli-files-named");
    let (pid_file, log_file, out_file) = (
        elsewhere.join("run/demo.pid"),
        elsewhere.join("logs/demo.log"),
        elsewhere.join("logs/demo.out"),
    );
    let d = Daemon {
        run_dir: temp_dir("cli-files"),
        args: vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--custom-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--ws-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--pid-file".into(),
            pid_file.display().to_string(),
            "--log-file".into(),
            log_file.display().to_string(),
            "--stdout-file".into(),
            out_file.display().to_string(),
        ],
        port,
    };
    let out = d.cmd(&["start", "-d"]);
    assert!(out.status.success(), "{}", text(&out));
    let pid = read_pid(&pid_file);
    assert!(alive(pid));
    assert!(
        !std::fs::read_dir(&d.run_dir).unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "pid")),
        "no pid file in the run directory"
    );
    let mut c = console(d.port);
    assert_eq!(ask(&mut c, "print hello stdout"), "printed");
    wait_until(
        Duration::from_secs(10),
        format!("what it printed in {}", out_file.display()),
        || {
            std::fs::read_to_string(&out_file)
                .unwrap_or_default()
                .contains("hello stdout")
        },
    );
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(!log.contains("hello stdout"), "{log}");
    let status = d.cmd(&["status"]);
    assert!(
        text(&status).contains(&format!("pid {pid}")),
        "{}",
        text(&status)
    );
    let stop = d.cmd(&["stop"]);
    assert!(text(&stop).contains("stop success"), "{}", text(&stop));
    assert!(!pid_file.exists());
    assert!(
        std::fs::read_to_string(&log_file).unwrap().contains("stop"),
        "the log goes on"
    );

    // A directory where a file is named: refused, nothing started.
    let bad = Command::new(bin("feature_demo"))
        .args(["start", "--pid-file"])
        .arg(&elsewhere)
        .args(&d.args[..6])
        .env("WERKMANN_RUN_DIR", &d.run_dir)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad).contains("not a file path"), "{}", text(&bad));
}

#[test]
fn graceful_stop_delivers_what_is_queued() {
    let d = Daemon::start();
    let pid = d.pid();
    // A client with 2 MiB queued that it has not read yet.
    let (mut r, mut w) = console(d.port);
    w.write_all(b"flood 30 65536\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stop = std::thread::spawn({
        let args = d.args.clone();
        let run_dir = d.run_dir.clone();
        move || {
            Command::new(bin("feature_demo"))
                .args(["stop", "-g"])
                .args(&args)
                .env("WERKMANN_RUN_DIR", &run_dir)
                .output()
                .unwrap()
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    // What on_worker_stop said, if the buffer had room for it after the flood, comes last.
    if all.ends_with(b"stopping\n") {
        all.truncate(all.len() - b"stopping\n".len());
    }
    let lines = all.iter().filter(|&&b| b == b'\n').count();
    let out = stop.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!alive(pid));
    // Everything accepted before the stop arrived (the buffer holds 256 KiB beyond the kernel).
    assert!(
        lines >= 4,
        "queued lines were delivered before the close: {lines}"
    );
    assert_eq!(all.len(), lines * 65537, "only whole lines");
}

#[test]
fn sigterm_stops_cleanly() {
    let d = Daemon::start();
    let pid = d.pid();
    let mut c = console(d.port);
    assert!(ask(&mut c, "whoami").starts_with("worker="));
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // on_worker_stop runs before the connections close: its word arrives, then the end.
    let mut rest = String::new();
    c.0.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "stopping\n");
    assert!(wait_gone(pid));
    assert!(TcpStream::connect(("127.0.0.1", d.port)).is_err());
}

#[test]
fn reload_swaps_the_process_without_refusing_connections() {
    let d = Daemon::start();
    let old = d.pid();
    let port = d.port;
    // Connect continuously while reloading; every connection must be answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(s) => {
                        let mut c = (BufReader::new(s.try_clone().unwrap()), s);
                        c.1.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        c.1.write_all(b"whoami\n").unwrap();
                        let mut line = String::new();
                        let mut read = c.0.read_line(&mut line);
                        // A connection of the old process may hear its on_worker_reload and
                        // on_worker_stop first; its answer follows.
                        while line == "reloading\n" || line == "stopping\n" {
                            line.clear();
                            read = c.0.read_line(&mut line);
                        }
                        match read {
                            Ok(n) if n > 0 && line.starts_with("worker=") => ok += 1,
                            other => failed.push(format!("{other:?} {line:?}")),
                        }
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let out = d.cmd(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_gone(old), "the old process exits");
    let new = d.pid();
    assert_ne!(new, old);
    assert!(alive(new));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = hammer.join().unwrap();
    assert!(failed.is_empty(), "{ok} ok, failures: {failed:?}");
    assert!(ok > 10, "{ok}");
    let stop = d.cmd(&["stop"]);
    assert!(stop.status.success(), "{}", text(&stop));
}

/// Run `app args…` with its own run directory, and nothing else from the environment that
/// an app reads.
fn run_app(app: &str, args: &[&str], run_dir: &Path) -> Output {
    let mut cmd = Command::new(bin(app));
    cmd.args(args)
        .env("WERKMANN_RUN_DIR", run_dir)
        .env("RUST_BACKTRACE", "1");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WERKMANN_") && key != "WERKMANN_BIN_DIR" {
            cmd.env_remove(key);
        }
    }
    cmd.output().unwrap()
}

/// Whether `dir` holds a pid file.
fn has_pid_file(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .any(|e| e.path().extension().is_some_and(|x| x == "pid"))
}

#[test]
fn a_bad_command_line_is_refused_before_anything_binds() {
    let run_dir = temp_dir("cli-bad");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // A misspelt option: refused and named, instead of listening on the default address.
    let out = run_app("start_ws", &["start", "--lisen", &listen], &run_dir);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--lisen"), "{}", text(&out));
    // A bad value: named, with no panic and no backtrace.
    let out = run_app(
        "start_ws",
        &["start", "--listen", &listen, "--count", "abc"],
        &run_dir,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("--count") && said.contains("abc"), "{said}");
    assert!(
        !said.contains("panicked") && !said.contains("backtrace"),
        "{said}"
    );
    // No command at all, and an unknown one.
    for args in [&["--listen", listen.as_str()][..], &["begin"]] {
        let out = run_app("tcp_echo", args, &run_dir);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    // A certificate without its key.
    let out = run_app(
        "ws_echo",
        &["start", "--listen", &listen, "--cert", "c.pem"],
        &run_dir,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--key"), "{}", text(&out));
    // Nothing was started.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!has_pid_file(&run_dir));
}

#[test]
fn help_lists_the_commands_options_and_environment() {
    let run_dir = temp_dir("cli-help");
    let out = run_app("start_http", &["--help"], &run_dir);
    assert!(out.status.success(), "{}", text(&out));
    let help = text(&out);
    for word in [
        "start",
        "stop",
        "reload",
        "status",
        "connections",
        "--listen",
        "WERKMANN_LISTEN",
        "--channel",
        "WERKMANN_CHANNEL",
        "--secret",
        "WERKMANN_SECRET",
        "--cert",
        "WERKMANN_TLS_CERT",
        "0.0.0.0:4237",
        "WERKMANN_RUN_DIR",
    ] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
    let out = run_app("start_ws", &["start", "--help"], &run_dir);
    assert!(text(&out).contains("-d"), "{}", text(&out));
    assert!(!has_pid_file(&run_dir));
}

#[test]
fn stop_and_status_find_an_app_without_its_options_repeated() {
    let run_dir = temp_dir("cli-defaults");
    // A node started with several options is found by where it listens alone.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let channel = format!("127.0.0.1:{}", free_port());
    let start = [
        "start",
        "-d",
        "--listen",
        &listen,
        "--channel",
        &channel,
        "--ws-port",
        "1",
        "--count",
        "2",
    ];
    let out = run_app("start_http", &start, &run_dir);
    assert!(out.status.success(), "{}", text(&out));
    let status = run_app("start_http", &["status", "--listen", &listen], &run_dir);
    assert!(status.status.success(), "{}", text(&status));
    assert_eq!(
        text(&status)
            .lines()
            .filter(|l| l.starts_with("publisher"))
            .count(),
        2
    );
    let stop = run_app("start_http", &["stop", "--listen", &listen], &run_dir);
    assert!(text(&stop).contains("stop success"), "{}", text(&stop));
    assert!(!has_pid_file(&run_dir));

    // An app started with no option at all is stopped with none (text_echo's default port).
    let default: std::net::SocketAddr = ([127, 0, 0, 1], 9002).into();
    if TcpStream::connect(default).is_ok() {
        eprintln!("127.0.0.1:9002 is taken: skipping the all-defaults half");
        return;
    }
    let out = run_app("text_echo", &["start", "-d"], &run_dir);
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_listening(default, Duration::from_secs(5)));
    let status = run_app("text_echo", &["status"], &run_dir);
    assert!(status.status.success(), "{}", text(&status));
    let stop = run_app("text_echo", &["stop"], &run_dir);
    assert!(text(&stop).contains("stop success"), "{}", text(&stop));
    assert!(TcpStream::connect(default).is_err());
}

/// On a gateway node: `connections` shows each client id, uid and groups and picks by them;
/// `status -d` refreshes with rates; `status --json` sums to the clients connected.
#[tokio::test]
async fn live_status_and_connections_by_uid_and_group() {
    let c = Cluster::start(Backend::Server);
    let (a, b, x) = (c.connect(0).await, c.connect(0).await, c.connect(0).await);
    let _elsewhere = c.connect(1).await;
    c.ok("bind_uid", json!({"client_id": a.id, "uid": "alice"}))
        .await;
    for id in [&a.id, &b.id] {
        c.ok("join_group", json!({"client_id": id, "group": "room1"}))
            .await;
    }
    let node = c.nodes[0].app.as_ref().unwrap();
    let picked = |args: &[&str]| -> Vec<Value> {
        let out = node.command(&[&["connections", "--json"], args].concat());
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let ids = |v: &[Value]| -> Vec<String> {
        let mut ids: Vec<String> = v
            .iter()
            .map(|c| c["client_id"].as_str().unwrap().into())
            .collect();
        ids.sort();
        ids
    };
    let all = picked(&[]);
    let mut want = vec![a.id.clone(), b.id.clone(), x.id.clone()];
    want.sort();
    assert_eq!(ids(&all), want, "{all:?}");
    let alice = picked(&["--uid", "alice"]);
    assert_eq!(ids(&alice), vec![a.id.clone()]);
    assert_eq!(alice[0]["uid"], "alice");
    assert_eq!(alice[0]["groups"], json!(["room1"]));
    let mut room = vec![a.id.clone(), b.id.clone()];
    room.sort();
    assert_eq!(ids(&picked(&["--group", "room1"])), room);
    assert_eq!(ids(&picked(&["--client-id", &x.id])), vec![x.id.clone()]);
    assert!(picked(&["--uid", "bob"]).is_empty());
    assert_eq!(picked(&["--limit", "2", "--sort", "age"]).len(), 2);
    let table = text(&node.command(&["connections", "--group", "room1"]));
    assert!(table.contains("2 of 3 connections"), "{table}");
    assert!(table.contains("alice"), "{table}");

    let status: Value =
        serde_json::from_slice(&node.command(&["status", "--json"]).stdout).unwrap();
    let conns: u64 = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(conns, 3, "{status}");
    // Each instance's link to the channel server (and the node's own) is up.
    let links = status["totals"]["broker_connected"]["channel"].as_i64();
    assert!(links >= Some(2), "{status}");

    // `status -d`: a frame a second, the second with rates per second.
    let mut live = std::process::Command::new(&node.bin)
        .args(["status", "-d"])
        .args(&node.args)
        .env("WERKMANN_RUN_DIR", &node.run_dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(live.stdout.take().unwrap());
    let (mut frames, mut shown) = (0, String::new());
    let mut line = String::new();
    while frames < 2 {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "status -d ended: {shown}"
        );
        frames += line.contains("GLOBAL STATUS") as usize;
        shown.push_str(&line);
    }
    while !line.contains("Press Ctrl+C") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "status -d ended: {shown}"
        );
        shown.push_str(&line);
    }
    let second = &shown[shown.rfind("GLOBAL STATUS").unwrap()..];
    assert!(
        second.contains("in/s") && second.contains("rates: accepted"),
        "{shown}"
    );
    assert_eq!(
        second.lines().filter(|l| l.starts_with("pusher ")).count(),
        2,
        "a row per instance: {shown}"
    );
    live.kill().unwrap();
    live.wait().unwrap();
    drop(c);
}
