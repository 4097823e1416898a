//! Test harness for werkmann's black-box tests: start the app binaries as real processes on
//! free loopback ports, wait for them to listen, and stop them afterwards.

pub mod addressing;
pub mod browser;
pub mod conformance;
pub mod directory;
pub mod prometheus;
pub mod push;
pub mod scenarios;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub mod certs;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace), or the
/// workspace's `target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace().join(d),
        _ => workspace().join("target"),
    }
}

/// Where a test writes what it leaves for people to look at (screenshots):
/// `$WERKMANN_TEST_OUTPUT/<test>`, or `<target dir>/test-output/<test>`; created if missing.
pub fn output_dir(test: &str) -> PathBuf {
    let root = std::env::var_os("WERKMANN_TEST_OUTPUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("test-output"));
    let dir = root.join(test);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// Where the app binaries are: `$WERKMANN_BIN_DIR`, or `debug` in the [`target_dir`] (built
/// on first use).
pub fn bin(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let dir = std::env::var_os("WERKMANN_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug"));
    if std::env::var_os("WERKMANN_BIN_DIR").is_none() {
        BUILD.call_once(|| {
            let mut cargo = Command::new(env!("CARGO"));
            cargo
                .args(["build", "-p", "werkmann-apps", "--bins"])
                .current_dir(workspace());
            // What `cargo test` sets for this test binary is not the build's environment: some
            // build scripts (ring's) rebuild when `CARGO_MANIFEST_DIR` differs from last time.
            for (key, _) in std::env::vars_os() {
                let k = key.to_string_lossy();
                if k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_BIN_")
                    || matches!(
                        &*k,
                        "CARGO_MANIFEST_DIR"
                            | "CARGO_MANIFEST_PATH"
                            | "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "OUT_DIR"
                    )
                {
                    cargo.env_remove(&key);
                }
            }
            let st = cargo.status().expect("run cargo build");
            assert!(st.success(), "building the app binaries failed");
        });
    }
    dir.join(name)
}

/// Run a Python script with Debian's interpreter (which has `websockets`); it must succeed.
/// Returns what it printed.
pub fn python(script: &str) -> String {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    free_addr("127.0.0.1").port()
}

/// The lowest port [`free_addr`] hands out.
const LOW: u32 = 10_000;

/// The start of the kernel's ephemeral port range.
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&h| h > 2 * LOW)
        .unwrap_or(32_768)
}

/// A free address on a loopback IP, e.g. `127.0.1.2`, as if it were another machine.
///
/// The port is below the kernel's ephemeral range (`ip_local_port_range`), where every
/// outgoing connection on the machine takes its local port: a port found free there (as
/// `bind(0)` finds one) can be taken by some connection before the app binds it, and the app
/// fails with "address in use". Each call in a process tries the next port from a start that
/// differs between processes, so parallel tests get distinct ports.
pub fn free_addr(ip: &str) -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low();
    let span = high - LOW;
    if NEXT.load(Ordering::Relaxed) == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seed = (std::process::id().wrapping_mul(7919) ^ nanos) % span + 1;
        let _ = NEXT.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if let Ok(l) = TcpListener::bind((ip, port as u16)) {
            return l.local_addr().unwrap();
        }
    }
    panic!("no free port on {ip} below {high}");
}

/// How often the `poll_until` helpers look at their condition.
const POLL: Duration = Duration::from_millis(20);

/// Look at `cond` every 20 ms until it holds (`true`) or `timeout` has passed (`false`). For
/// code off any async runtime; in a `#[tokio::test]` use [`poll_until_async`], which lets the
/// runtime's other tasks run meanwhile.
pub fn poll_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_every(POLL, timeout, cond)
}

/// [`poll_until`], looking every `every` (for a condition costly to evaluate).
pub fn poll_every(every: Duration, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// [`poll_until`], failing the test with `what` (and how long it waited) when `cond` does not
/// hold within `timeout`.
pub fn wait_until(timeout: Duration, what: impl std::fmt::Display, cond: impl FnMut() -> bool) {
    assert!(poll_until(timeout, cond), "not within {timeout:?}: {what}");
}

/// [`poll_until`] for an async condition.
pub async fn poll_until_async(timeout: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for an async condition.
pub async fn wait_until_async(
    timeout: Duration,
    what: impl std::fmt::Display,
    cond: impl AsyncFnMut() -> bool,
) {
    assert!(
        poll_until_async(timeout, cond).await,
        "not within {timeout:?}: {what}"
    );
}

/// Wait until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    poll_until(timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// A fresh directory for one app's pid, status and log files.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("werkmann-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running app process, killed when dropped (a daemon: stopped, and killed if it is still
/// there).
pub struct App {
    /// The process (for a daemon, the `start -d` that forked it, which has exited).
    pub child: Child,
    /// Its run directory (`WERKMANN_RUN_DIR`).
    pub run_dir: PathBuf,
    /// The binary.
    pub bin: PathBuf,
    /// Its arguments after the command.
    pub args: Vec<String>,
    daemon: bool,
}

impl App {
    /// Start `name start <args>` in the foreground and wait until every port in `ports`
    /// accepts connections on 127.0.0.1.
    pub fn start(name: &str, args: &[&str], ports: &[u16]) -> App {
        let addrs: Vec<SocketAddr> = ports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect();
        App::start_at(name, args, &addrs)
    }

    /// Start `name start <args>` and wait until every address in `addrs` accepts connections.
    pub fn start_at(name: &str, args: &[&str], addrs: &[SocketAddr]) -> App {
        App::launch(name, false, args, addrs)
    }

    /// Start `name start -d <args>` (a daemon: `start -d` forks and returns once the daemon
    /// listens), and wait until every address in `addrs` accepts connections.
    pub fn start_daemon(name: &str, args: &[&str], addrs: &[SocketAddr]) -> App {
        App::launch(name, true, args, addrs)
    }

    fn launch(name: &str, daemon: bool, args: &[&str], addrs: &[SocketAddr]) -> App {
        let run_dir = temp_dir(name);
        let bin = bin(name);
        let log = std::fs::File::create(run_dir.join("stderr.log")).unwrap();
        let child = Command::new(&bin)
            .arg("start")
            .args(daemon.then_some("-d"))
            .args(args)
            .env("WERKMANN_RUN_DIR", &run_dir)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut app = App {
            child,
            run_dir,
            bin,
            args: args.iter().map(|s| s.to_string()).collect(),
            daemon,
        };
        if daemon {
            let st = app.wait_exit(Duration::from_secs(20));
            assert!(
                st.is_some_and(|s| s.success()),
                "{name} start -d: {st:?}; log:\n{}",
                app.log()
            );
        }
        for &addr in addrs {
            assert!(
                wait_listening(addr, Duration::from_secs(20)),
                "{name} does not listen on {addr}; log:\n{}",
                app.log()
            );
        }
        app
    }

    /// Run another command (`status`, `stop`, …) of the same app with the same options.
    pub fn command(&self, cmd: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(cmd)
            .args(&self.args)
            .env("WERKMANN_RUN_DIR", &self.run_dir)
            .output()
            .unwrap()
    }

    /// The `status` row of `worker`'s instance `id`, split at whitespace: `worker listen id
    /// conns accepted msgs_in msgs_out fails buffered refused idle_cl uptime_s`.
    pub fn status_row(&self, worker: &str, id: u32) -> Vec<String> {
        let out = self.command(&["status"]);
        let status = String::from_utf8_lossy(&out.stdout);
        status
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|r| r.len() > 3 && r[0] == worker && r[2] == id.to_string())
            .unwrap_or_else(|| panic!("no status row for {worker} {id}: {status}"))
    }

    /// What the app logged so far (a daemon: what `start -d` printed, then the daemon's log).
    pub fn log(&self) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.run_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort_by_key(|p| !p.ends_with("stderr.log"));
        logs.iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// The daemon's pid, from its pid file (`None` before it wrote one, or for a foreground
    /// app: see `child`).
    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_dir(&self.run_dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "pid"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse().ok())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut st = None;
        poll_until(timeout, || {
            st = self.child.try_wait().ok().flatten();
            st.is_some()
        });
        st
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.daemon {
            let pid = self.daemon_pid();
            let _ = self.command(&["stop"]);
            if let Some(pid) = pid.filter(|&p| process_alive(p)) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Whether a process runs (a zombie, exited but not yet reaped by its parent, does not).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

/// A line-oriented client of a `text://` console (the demo apps' control ports).
pub struct Console {
    /// Lines from the server.
    pub lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

/// How long a test waits for an expected line or message.
pub const WAIT: Duration = Duration::from_secs(10);

impl Console {
    /// Connect to a console.
    pub async fn connect(addr: &str) -> Console {
        use tokio::io::AsyncBufReadExt;
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        Console {
            lines: tokio::io::BufReader::with_capacity(1 << 16, r).lines(),
            w,
        }
    }

    /// Send one line.
    pub async fn send(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    /// The next line (panics after [`WAIT`] or if the connection ends).
    pub async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("connection open")
    }

    /// Send a line and return the next line.
    pub async fn ask(&mut self, line: &str) -> String {
        self.send(line).await;
        self.line().await
    }

    /// On a `channel_console`: wait until the channel (server, Redis or embedded) has handled
    /// every command this console's client sent before — a confirmed publish sent after them
    /// (to an event nobody subscribes to) is confirmed. Subscriptions and unsubscriptions made
    /// before are then in force for any publish made after. Any other line fails the test.
    pub async fn sync(&mut self) {
        wait_until_async(WAIT, "the channel confirms a publish", async || {
            let answer = self.ask("pubct werkmann-test-sync 1").await;
            assert!(answer.starts_with("confirmed 1 "), "unexpected {answer:?}");
            answer.ends_with(" failed 0")
        })
        .await;
    }

    /// Assert that no line arrives for `ms` milliseconds.
    pub async fn nothing_for(&mut self, ms: u64) {
        let r = tokio::time::timeout(Duration::from_millis(ms), self.lines.next_line()).await;
        assert!(r.is_err(), "unexpected line: {r:?}");
    }
}

/// The worker id and connection id a push node's greeting
/// `Worker-ID:{W} Verbindungs-ID:{C} verbunden\n` names (panics on anything else).
pub fn greeting_ids(greeting: &str) -> (u32, u64) {
    greeting
        .strip_prefix("Worker-ID:")
        .and_then(|r| r.strip_suffix(" verbunden\n"))
        .and_then(|r| r.split_once(" Verbindungs-ID:"))
        .and_then(|(w, c)| Some((w.parse().ok()?, c.parse().ok()?)))
        .unwrap_or_else(|| panic!("greeting {greeting:?}"))
}

/// Read an HTTP response head (up to the blank line) byte by byte, leaving the body unread.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(WAIT, s.read_exact(&mut b))
            .await
            .expect("a response in time")
            .expect("connection open");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// `start_all` with its WebSocket port on `ws` and its HTTP port on `web`, plus `extra`
/// arguments; waits until both listen.
pub fn start_all_at(ws: SocketAddr, web: SocketAddr, extra: &[&str]) -> App {
    let (ws_s, web_s) = (ws.to_string(), web.to_string());
    let mut args = vec!["--ws-listen", &ws_s, "--http-listen", &web_s];
    args.extend_from_slice(extra);
    App::start_at("start_all", &args, &[ws, web])
}

/// The status code and body of one raw HTTP/1.1 response.
pub fn split_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Run curl (`scripts/test` installs it) quietly but with errors shown, with at most 60 s per
/// transfer, and `args`.
pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl runs (scripts/test installs it)")
}

/// The status code curl got for `args` (its body dropped).
pub fn curl_status(args: &[&str]) -> u16 {
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    let out = curl(&all);
    String::from_utf8_lossy(&out.stdout)
        .parse()
        .unwrap_or_else(|_| panic!("curl {args:?}: no status: {out:?}"))
}

/// [`curl`] that must succeed: its standard output.
pub fn curl_ok(args: &[&str]) -> Vec<u8> {
    let out = curl(args);
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A real `redis-server` on a free loopback port, without persistence, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    password: Option<String>,
    tls: bool,
    /// Writes go to an append-only file, synced at once: a restart keeps them.
    persistent: bool,
}

impl RedisServer {
    /// Start one that persists every write (`appendonly yes`, `appendfsync always`).
    pub fn start_persistent() -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir: temp_dir("redis"),
            password: None,
            tls: false,
            persistent: true,
        };
        r.spawn();
        r
    }

    /// Start one (Debian's `redis-server`; `scripts/test` installs it).
    pub fn start() -> RedisServer {
        RedisServer::start_with_password(None)
    }

    /// Start one that requires `AUTH password`.
    pub fn start_with_password(password: Option<&str>) -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir: temp_dir("redis"),
            password: password.map(str::to_string),
            tls: false,
            persistent: false,
        };
        r.spawn();
        r
    }

    /// Start one that speaks only TLS, with a certificate for 127.0.0.1 signed by a fresh CA
    /// (made with `openssl`); [`RedisServer::ca_file`] is that CA.
    pub fn start_tls() -> RedisServer {
        let dir = certs::TestCerts::make("redis-tls").dir().clone();
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir,
            password: None,
            tls: true,
            persistent: false,
        };
        r.spawn();
        r
    }

    /// The CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    fn spawn_with(&mut self, extra: &[&str]) {
        let mut cmd = Command::new("redis-server");
        cmd.args(extra);
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        if self.tls {
            let d = |f: &str| self.dir.join(f).display().to_string();
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args([
                    "--tls-cert-file",
                    &d("server.pem"),
                    "--tls-key-file",
                    &d("server.key"),
                ])
                .args([
                    "--tls-ca-cert-file",
                    &d("ca.pem"),
                    "--tls-auth-clients",
                    "no",
                ]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "no"])
            .args(if self.persistent {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "everysec"]
            })
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is missing: run scripts/test, which installs Debian's redis-server",
            );
        self.child = Some(child);
        assert!(
            wait_listening(([127, 0, 0, 1], self.port).into(), Duration::from_secs(10)),
            "redis-server listens on {}; log:\n{}",
            self.port,
            std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
        );
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` for TLS), with the password if it has one.
    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// Run `redis-cli` against it (without a password; over TLS, trusting its CA, for a TLS
    /// one) with `args` (a command and its arguments); its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if self.tls {
            cmd.args(["--tls", "--cacert", &self.ca_file().display().to_string()]);
        }
        let out = cmd
            .args(args)
            .output()
            .expect("redis-cli (Debian's redis-tools)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Kill it (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real Redis Cluster of `n` masters (no replicas) on free loopback ports.
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start `n` cluster-enabled `redis-server`s and join them with `redis-cli --cluster create`.
    pub fn start(n: usize) -> RedisCluster {
        // Each node's cluster bus listens on its port + 10000: free, and below the ephemeral
        // range, too.
        const BUS: u16 = 10_000;
        let port = || loop {
            let p = free_port();
            if u32::from(p + BUS) < ephemeral_low()
                && TcpListener::bind(("127.0.0.1", p + BUS)).is_ok()
            {
                break p;
            }
        };
        let mut nodes = Vec::new();
        for _ in 0..n {
            let mut r = RedisServer {
                child: None,
                port: port(),
                dir: temp_dir("redis-cluster"),
                password: None,
                tls: false,
                persistent: false,
            };
            r.spawn_with(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]);
            nodes.push(r);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (Debian's redis-tools)");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for r in &nodes {
            wait_until(
                Duration::from_secs(20),
                format!("cluster state ok at node {}", r.port),
                || r.cli(&["cluster", "info"]).contains("cluster_state:ok"),
            );
        }
        RedisCluster { nodes }
    }

    /// A URL of one node (clients find the others).
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }
}

/// Start a `channel_console` app using `channel` (plus `extra` options); returns it and its
/// console address.
pub fn channel_console(channel: &str, extra: &[&str]) -> (App, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", addr.as_str(), "--channel", channel];
    args.extend_from_slice(extra);
    // History only where a test asks for it: the default keeps every named event, which
    // would take in-process publishes off the embedded direct path the channel tests cover.
    if !extra.contains(&"--history") {
        args.extend_from_slice(&["--history", "*=off"]);
    }
    let app = App::start("channel_console", &args, &[port]);
    (app, addr)
}

/// Open a channel console connection and wait until its channel client is connected.
pub async fn open_console(addr: &str) -> Console {
    let mut c = Console::connect(addr).await;
    assert_eq!(c.line().await, "channel connected");
    c
}
