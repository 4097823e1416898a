//! The systems under test: werkmann in its three modes, Nchan and Socket.IO, and with
//! `--baseline DIR` werkmann a second time from an older build's binaries (`werkmann-before`).
//! Each is started as child processes on 127.0.0.1 with free ports, in a directory of its own
//! (logs, pid files, configuration), and stopped — SIGTERM, then SIGKILL after 5 s — when
//! dropped (`child.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};

use crate::child::{free_addr, Child};
use crate::http::Api;
use crate::procfs;
use crate::proto::Flavor;
use crate::pusher;
use crate::redis;

/// Which werkmann binaries a werkmann setup runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// The code under test: the binaries next to `pushbench` (or in `--bin-dir`).
    Current,
    /// An older build's binaries (`--baseline DIR`), run next to the current ones for a
    /// before/after comparison in one run; its rows are labelled `werkmann-before`.
    Baseline,
}

/// A configuration of a system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// `start_all` (embedded channel, 2 WebSocket instances, 2 publisher instances).
    WerkmannAll {
        /// Which binaries.
        build: Build,
    },
    /// `start_all --count 2 --processes`: all-in-one with each WebSocket and publisher
    /// instance a child process of a supervisor, and the channel hub in a third kind of child
    /// that the instances reach over a Unix socket (the processes group, issue 20, next to
    /// `WerkmannAll`).
    WerkmannAllProcesses {
        /// Which binaries.
        build: Build,
    },
    /// `start_channel` + `ws` × `start_ws --count 2` + one `start_http`.
    WerkmannCluster {
        /// WebSocket nodes.
        ws: usize,
        /// Which binaries.
        build: Build,
    },
    /// `start_channel` + `ws` × `start_ws --count 2 --processes` + one `start_http`: the
    /// cluster with each WebSocket node's instances as child processes of a supervisor (the
    /// processes group, issue 20, next to `WerkmannCluster` of the same size).
    WerkmannProcesses {
        /// WebSocket nodes.
        ws: usize,
        /// Which binaries.
        build: Build,
    },
    /// `redis-server` + `ws` × `start_ws --channel redis://…` + one `start_http`.
    WerkmannRedis {
        /// WebSocket nodes.
        ws: usize,
        /// Which binaries.
        build: Build,
    },
    /// nginx + Nchan with `workers` worker processes; with `redis`, its WebSocket rows'
    /// channels in a `redis-server` of its own (Nchan's Redis mode: the peer of werkmann's).
    Nchan {
        /// nginx worker processes.
        workers: usize,
        /// Whether the channels live in Redis (`nchan_redis_pass`).
        redis: bool,
    },
    /// One Node.js process: Socket.IO and the push API.
    SocketIoAll,
    /// `redis-server` + `ws` Socket.IO nodes + one publisher node, @socket.io/redis-adapter.
    SocketIoCluster {
        /// Socket.IO nodes holding clients.
        ws: usize,
    },
    /// `start_all --count 2` serving the Pusher protocol for one app (`--apps-file`).
    WerkmannPusher {
        /// Which binaries.
        build: Build,
    },
    /// Soketi (a Node.js Pusher server) in one process, serving the same app.
    Soketi,
    /// `start_all --count 2 --history RULES`: all-in-one with other history rules than the
    /// default `*=100/5m` (the fault group's history on/off rows: `*=off`).
    WerkmannHistory {
        /// Which binaries.
        build: Build,
        /// The `--history` rules.
        rules: &'static str,
    },
    /// `start_all --count 2 --metrics ADDR`: all-in-one with its admin port, which the bench
    /// scrapes every second (the metrics cost row).
    WerkmannMetrics {
        /// Which binaries.
        build: Build,
    },
}

impl Setup {
    /// The product: werkmann (`werkmann-before` for the baseline's binaries), Nchan or
    /// Socket.IO.
    pub fn system(self) -> &'static str {
        match self.build() {
            Some(Build::Current) => "werkmann",
            Some(Build::Baseline) => "werkmann-before",
            None if matches!(self, Setup::Nchan { redis: false, .. }) => "Nchan",
            None if matches!(self, Setup::Nchan { .. }) => NCHAN_REDIS,
            None if self == Setup::Soketi => "Soketi",
            None => "Socket.IO",
        }
    }

    /// Which werkmann binaries it runs; `None` for a peer.
    pub fn build(self) -> Option<Build> {
        match self {
            Setup::WerkmannAll { build }
            | Setup::WerkmannAllProcesses { build }
            | Setup::WerkmannCluster { build, .. }
            | Setup::WerkmannProcesses { build, .. }
            | Setup::WerkmannRedis { build, .. }
            | Setup::WerkmannPusher { build }
            | Setup::WerkmannHistory { build, .. }
            | Setup::WerkmannMetrics { build } => Some(build),
            Setup::Nchan { .. }
            | Setup::SocketIoAll
            | Setup::SocketIoCluster { .. }
            | Setup::Soketi => None,
        }
    }

    /// Whether this is a peer (not werkmann, of either build).
    pub fn is_peer(self) -> bool {
        self.build().is_none()
    }

    /// Nodes that hold clients (nginx workers for Nchan).
    pub fn nodes(self) -> usize {
        match self {
            Setup::WerkmannAll { .. }
            | Setup::WerkmannAllProcesses { .. }
            | Setup::SocketIoAll
            | Setup::WerkmannPusher { .. }
            | Setup::WerkmannHistory { .. }
            | Setup::WerkmannMetrics { .. }
            | Setup::Soketi => 1,
            Setup::WerkmannCluster { ws, .. }
            | Setup::WerkmannProcesses { ws, .. }
            | Setup::WerkmannRedis { ws, .. }
            | Setup::SocketIoCluster { ws } => ws,
            Setup::Nchan { workers, .. } => workers,
        }
    }

    /// The mode, as the tables name it.
    pub fn mode(self) -> String {
        match self {
            Setup::WerkmannAll { .. } => "all-in-one".into(),
            Setup::WerkmannAllProcesses { .. } => "all-in-one, processes".into(),
            Setup::WerkmannCluster { ws, .. } => format!("cluster, {}", ws_nodes(ws)),
            Setup::WerkmannProcesses { ws, .. } => {
                format!("cluster, {}, processes", ws_nodes(ws))
            }
            Setup::WerkmannRedis { ws, .. } => format!("redis, {ws} ws nodes"),
            Setup::Nchan { workers, .. } => format!("nginx, {workers} workers"),
            Setup::SocketIoAll => "1 process".into(),
            Setup::SocketIoCluster { ws } => format!("redis adapter, {ws} nodes"),
            Setup::WerkmannPusher { .. } => "Pusher, all-in-one".into(),
            Setup::Soketi => "1 process".into(),
            Setup::WerkmannHistory { rules: "*=off", .. } => "all-in-one, history off".into(),
            Setup::WerkmannHistory { rules, .. } => format!("all-in-one, history {rules}"),
            Setup::WerkmannMetrics { .. } => "all-in-one, metrics scraped every 1 s".into(),
        }
    }

    /// What runs, in one line.
    pub fn describe(self) -> String {
        match self {
            Setup::WerkmannAll { .. } => "start_all --count 2".into(),
            Setup::WerkmannAllProcesses { .. } => "start_all --count 2 --processes".into(),
            Setup::WerkmannCluster { ws, .. } => {
                format!("start_channel + {ws} × start_ws --count 2 + start_http")
            }
            Setup::WerkmannProcesses { ws, .. } => {
                format!("start_channel + {ws} × start_ws --count 2 --processes + start_http")
            }
            Setup::WerkmannRedis { ws, .. } => {
                format!("redis-server + {ws} × start_ws --count 2 --channel redis:// + start_http")
            }
            Setup::Nchan {
                workers,
                redis: false,
            } => format!("nginx -g worker_processes {workers}, nchan"),
            Setup::Nchan { workers, .. } => {
                format!("redis-server + nginx -g worker_processes {workers}, nchan_redis_pass")
            }
            Setup::SocketIoAll => "node server.js --ws --http".into(),
            Setup::SocketIoCluster { ws } => {
                format!("redis-server + {ws} × node server.js --ws + node server.js --http")
            }
            Setup::WerkmannPusher { .. } => "start_all --count 2 --apps-file apps.json".into(),
            Setup::Soketi => "node soketi/bin/server.js start (SOKETI_* env)".into(),
            Setup::WerkmannHistory { rules, .. } => {
                format!("start_all --count 2 --history '{rules}'")
            }
            Setup::WerkmannMetrics { .. } => "start_all --count 2 --metrics ADDR".into(),
        }
    }

    /// How clients subscribe.
    pub fn flavor(self) -> Flavor {
        match self {
            Setup::Nchan { .. } => Flavor::Nchan,
            Setup::SocketIoAll | Setup::SocketIoCluster { .. } => Flavor::SocketIo,
            Setup::WerkmannPusher { .. } | Setup::Soketi => Flavor::Pusher,
            _ => Flavor::Werkmann,
        }
    }
}

/// `1 ws node`, `4 ws nodes`.
fn ws_nodes(ws: usize) -> String {
    format!("{ws} ws node{}", if ws == 1 { "" } else { "s" })
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Env {
    /// The werkmann binaries (`start_all`, …): next to `pushbench`.
    pub bin_dir: PathBuf,
    /// An older build's werkmann binaries (`--baseline DIR`), for `Build::Baseline`.
    pub baseline_dir: Option<PathBuf>,
    /// `bench/peers`.
    pub peers_dir: PathBuf,
    /// A scratch directory for this run.
    pub run_dir: PathBuf,
}

impl Env {
    /// The directory of a build's werkmann binaries.
    pub fn werkmann_dir(&self, build: Build) -> Result<&Path> {
        match build {
            Build::Current => Ok(&self.bin_dir),
            Build::Baseline => self
                .baseline_dir
                .as_deref()
                .context("werkmann-before needs --baseline DIR"),
        }
    }

    /// Whether a setup can run here; `Err` says what is missing.
    pub fn check(&self, s: Setup) -> Result<()> {
        let needs_redis = matches!(
            s,
            Setup::WerkmannRedis { .. }
                | Setup::SocketIoCluster { .. }
                | Setup::Nchan { redis: true, .. }
        );
        if needs_redis {
            which("redis-server")?;
        }
        if let Some(build) = s.build() {
            let dir = self.werkmann_dir(build)?;
            for b in ["start_all", "start_ws", "start_http", "start_channel"] {
                let p = dir.join(b);
                ensure!(
                    p.exists(),
                    "{} missing (cargo build --release)",
                    p.display()
                );
            }
            return Ok(());
        }
        match s.system() {
            "Nchan" | NCHAN_REDIS => {
                which("nginx")?;
                ensure!(
                    Path::new(NCHAN_MODULE).exists(),
                    "{NCHAN_MODULE} missing (apt-get install libnginx-mod-nchan)"
                );
            }
            "Soketi" => {
                which("node")?;
                let m = self.peers_dir.join(SOKETI_BIN);
                ensure!(
                    m.exists(),
                    "{} missing (npm ci in bench/peers/soketi)",
                    m.display()
                );
            }
            _ => {
                which("node")?;
                let m = self.peers_dir.join("socketio/node_modules/socket.io");
                ensure!(
                    m.exists(),
                    "{} missing (npm install in bench/peers/socketio)",
                    m.display()
                );
            }
        }
        Ok(())
    }
}

/// Soketi's server, under `bench/peers`.
const SOKETI_BIN: &str = "soketi/node_modules/@soketi/soketi/bin/server.js";

/// The system name of Nchan with its channels in Redis.
pub const NCHAN_REDIS: &str = "Nchan on Redis";

/// Debian's Nchan module.
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

fn which(prog: &str) -> Result<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(prog);
        if p.exists() {
            return Ok(p);
        }
    }
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(prog);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{prog} not found")
}

/// A started system.
pub struct Running {
    /// Its configuration.
    pub setup: Setup,
    /// WebSocket endpoints (clients spread over them).
    pub ws: Vec<SocketAddr>,
    /// The push API.
    pub api: Api,
    /// The channel server (`start_channel` and where it listens), in cluster mode.
    channel: Option<(PathBuf, SocketAddr)>,
    /// The Redis server, in Redis mode and for Socket.IO's redis adapter.
    pub redis: Option<SocketAddr>,
    /// The admin and metrics port (`Setup::WerkmannMetrics`).
    pub metrics: Option<SocketAddr>,
    procs: Vec<Child>,
    dir: PathBuf,
}

impl Running {
    /// Start `setup` and wait until every port accepts connections.
    pub async fn start(env: &Env, setup: Setup, label: &str) -> Result<Running> {
        let dir = env.run_dir.join(label);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let api_addr = free_addr()?;
        let mut r = Running {
            setup,
            ws: Vec::new(),
            api: Api {
                flavor: setup.flavor(),
                addr: api_addr,
            },
            channel: None,
            redis: None,
            metrics: None,
            procs: Vec::new(),
            dir,
        };
        let bin_dir = match setup.build() {
            Some(build) => env.werkmann_dir(build)?.to_path_buf(),
            None => env.bin_dir.clone(),
        };
        let bin = |name: &str| bin_dir.join(name);
        let a = |s: SocketAddr| s.to_string();
        match setup {
            Setup::WerkmannAll { .. }
            | Setup::WerkmannAllProcesses { .. }
            | Setup::WerkmannPusher { .. }
            | Setup::WerkmannHistory { .. }
            | Setup::WerkmannMetrics { .. } => {
                let ws = free_addr()?;
                let mut c = Command::new(bin("start_all"));
                c.args([
                    "start",
                    "--ws-listen",
                    &a(ws),
                    "--http-listen",
                    &a(api_addr),
                ])
                .args(["--count", "2"]);
                // The Pusher rows' app.
                if matches!(setup, Setup::WerkmannPusher { .. }) {
                    let apps = r.dir.join("apps.json");
                    std::fs::write(&apps, pusher::apps_file())?;
                    c.arg("--apps-file").arg(&apps);
                }
                if let Setup::WerkmannHistory { rules, .. } = setup {
                    c.args(["--history", rules]);
                }
                // Each instance a child process; the channel hub on a Unix socket in the
                // system's run directory.
                if let Setup::WerkmannAllProcesses { .. } = setup {
                    c.arg("--processes");
                }
                let mut ports = vec![ws, api_addr];
                if let Setup::WerkmannMetrics { .. } = setup {
                    let m = free_addr()?;
                    c.args(["--metrics", &a(m)]);
                    r.metrics = Some(m);
                    ports.push(m);
                }
                r.spawn("start_all", c, &ports).await?;
                r.ws.push(ws);
            }
            Setup::WerkmannCluster { ws: k, .. }
            | Setup::WerkmannProcesses { ws: k, .. }
            | Setup::WerkmannRedis { ws: k, .. } => {
                let channel = if matches!(setup, Setup::WerkmannRedis { .. }) {
                    format!("redis://{}", r.start_redis().await?)
                } else {
                    let ch = free_addr()?;
                    let mut c = Command::new(bin("start_channel"));
                    c.args(["start", "--listen", &a(ch)]);
                    r.spawn("start_channel", c, &[ch]).await?;
                    r.channel = Some((bin("start_channel"), ch));
                    a(ch)
                };
                for i in 0..k {
                    let ws = free_addr()?;
                    let mut c = Command::new(bin("start_ws"));
                    c.args(["start", "--listen", &a(ws), "--count", "2"])
                        .args(["--channel", &channel]);
                    if matches!(setup, Setup::WerkmannProcesses { .. }) {
                        c.arg("--processes");
                    }
                    r.spawn(&format!("start_ws{i}"), c, &[ws]).await?;
                    r.ws.push(ws);
                }
                let mut c = Command::new(bin("start_http"));
                c.args(["start", "--listen", &a(api_addr), "--channel", &channel]);
                r.spawn("start_http", c, &[api_addr]).await?;
            }
            Setup::Soketi => {
                // One port for the WebSocket server and the HTTP API; no rate limits (Soketi's
                // default app has none), metrics off, its /usage server on a free port too.
                let port = api_addr.port().to_string();
                let usage = free_addr()?.port().to_string();
                let max = pusher::MAX_PRESENCE_MEMBERS.to_string();
                let mut c = Command::new(which("node")?);
                c.arg(env.peers_dir.join(SOKETI_BIN))
                    .arg("start")
                    .env("SOKETI_HOST", "127.0.0.1")
                    .env("SOKETI_PORT", &port)
                    .env("SOKETI_DEFAULT_APP_ID", pusher::APP_ID)
                    .env("SOKETI_DEFAULT_APP_KEY", pusher::KEY)
                    .env("SOKETI_DEFAULT_APP_SECRET", pusher::SECRET)
                    .env("SOKETI_PRESENCE_MAX_MEMBERS", &max)
                    .env("SOKETI_METRICS_ENABLED", "false")
                    .env("SOKETI_METRICS_HOST", "127.0.0.1")
                    .env("SOKETI_METRICS_SERVER_PORT", &usage)
                    .env("SOKETI_SHUTDOWN_GRACE_PERIOD", "0");
                r.spawn("soketi", c, &[api_addr]).await?;
                r.ws.push(api_addr);
            }
            Setup::Nchan { workers, redis } => {
                let conf = std::fs::read_to_string(env.peers_dir.join("nchan/nginx.conf.in"))
                    .context("bench/peers/nchan/nginx.conf.in")?;
                let prefix = r.dir.display().to_string();
                let (upstream, pass) = if redis {
                    let at = r.start_redis().await?;
                    (
                        format!("    upstream redis_server {{\n        nchan_redis_server redis://{at};\n    }}"),
                        "            nchan_redis_pass redis_server;".to_string(),
                    )
                } else {
                    (String::new(), String::new())
                };
                let conf = conf
                    .replace("@REDIS_UPSTREAM@", &upstream)
                    .replace("@REDIS_PASS@", &pass)
                    .replace("@PREFIX@", &prefix)
                    .replace("@PORT@", &api_addr.port().to_string())
                    .replace("@WORKERS@", &workers.to_string());
                std::fs::write(r.dir.join("nginx.conf"), conf)?;
                let mut c = Command::new(which("nginx")?);
                c.args(["-p", &prefix, "-c"]).arg(r.dir.join("nginx.conf"));
                r.spawn("nginx", c, &[api_addr]).await?;
                // Publisher and subscribers share the one nginx port.
                r.ws.push(api_addr);
            }
            Setup::SocketIoAll | Setup::SocketIoCluster { .. } => {
                let script = env.peers_dir.join("socketio/server.js");
                let node = which("node")?;
                let redis = match setup {
                    Setup::SocketIoCluster { .. } => {
                        Some(format!("redis://{}", r.start_redis().await?))
                    }
                    _ => None,
                };
                let nodes = match setup {
                    Setup::SocketIoCluster { ws } => ws,
                    _ => 1,
                };
                for i in 0..nodes {
                    let ws = free_addr()?;
                    let mut c = Command::new(&node);
                    c.arg(&script)
                        .args(["--ws", &a(ws), "--worker-id", &i.to_string()]);
                    let mut wait = vec![ws];
                    if let Some(url) = &redis {
                        c.args(["--redis", url]);
                    } else {
                        c.args(["--http", &a(api_addr)]);
                        wait.push(api_addr);
                    }
                    r.spawn(&format!("socketio{i}"), c, &wait).await?;
                    r.ws.push(ws);
                }
                if let Some(url) = &redis {
                    let mut c = Command::new(&node);
                    c.arg(&script)
                        .args(["--http", &a(api_addr), "--worker-id", "publisher"])
                        .args(["--redis", url]);
                    r.spawn("socketio-publisher", c, &[api_addr]).await?;
                }
            }
        }
        Ok(r)
    }

    async fn start_redis(&mut self) -> Result<SocketAddr> {
        let addr = free_addr()?;
        let mut c = Command::new(which("redis-server")?);
        c.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--maxclients", "10000"]);
        self.spawn("redis-server", c, &[addr]).await?;
        self.redis = Some(addr);
        Ok(addr)
    }

    /// A counter of the copies of pushes the cluster sent towards its nodes so far, where one
    /// can be read (the difference over a phase is what counts):
    ///
    /// - werkmann with a channel server: the server's messages written less messages read
    ///   (`start_channel status`: `msgs_out − msgs_in`). Every command a client sends is
    ///   answered once (a publish or directory operation by its acknowledgement, a ping by a
    ///   pong), so what is left are the deliveries to subscribers: the nodes.
    /// - werkmann on Redis: `PUBLISH` and `SPUBLISH` calls (`INFO commandstats`, which counts
    ///   those the directory's script makes): one per node event a push is sent to.
    /// - Socket.IO's redis adapter: its `PUBLISH` calls times the nodes each reaches (every
    ///   node pattern-subscribes to every room's channel: the clients with a pattern
    ///   subscription in `CLIENT LIST`, less the publisher's own).
    pub async fn copies_counter(&self) -> Option<i64> {
        match self.setup {
            Setup::WerkmannCluster { .. } | Setup::WerkmannProcesses { .. } => {
                let (exe, listen) = self.channel.as_ref()?;
                let out = tokio::process::Command::new(exe)
                    .args(["status", "--listen", &listen.to_string()])
                    .env("WERKMANN_RUN_DIR", &self.dir)
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .output()
                    .await
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout);
                // worker listen id conns accepted msgs_in msgs_out fails …
                let line = text.lines().find(|l| l.starts_with("ChannelServer"))?;
                let cols: Vec<i64> = line
                    .split_whitespace()
                    .skip(5)
                    .take(2)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                (cols.len() == 2).then(|| cols[1] - cols[0])
            }
            Setup::WerkmannRedis { .. } | Setup::SocketIoCluster { .. } => {
                let addr = self.redis?;
                let stats = redis::command(addr, &["INFO", "commandstats"]).await.ok()?;
                let calls = (redis::command_calls(&stats, "publish")
                    + redis::command_calls(&stats, "spublish")) as i64;
                if matches!(self.setup, Setup::SocketIoCluster { .. }) {
                    let clients = redis::command(addr, &["CLIENT", "LIST"]).await.ok()?;
                    let psub = redis::pattern_subscribers(&clients) as i64;
                    return Some(calls * (psub - 1).max(0));
                }
                Some(calls)
            }
            _ => None,
        }
    }

    /// Spawn one process (logging into the system's directory) and wait for its ports.
    /// `PUSHBENCH_WRAP` (e.g. `valgrind --tool=callgrind`) runs the werkmann processes under
    /// a profiler that keeps their pid.
    async fn spawn(&mut self, name: &str, cmd: Command, ports: &[SocketAddr]) -> Result<()> {
        let child = Child::spawn(name, cmd, &self.dir, name.starts_with("start_"))?;
        self.procs.push(child);
        let p = self.procs.last_mut().expect("just pushed");
        p.wait_ports(ports, Duration::from_secs(40)).await
    }

    /// Every server process, with its child processes (nginx workers, the instances
    /// `start_ws --processes` and `start_all --processes` fork, the latter's channel hub).
    pub fn pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for p in &self.procs {
            let pid = p.pid();
            out.push(pid);
            out.extend(procfs::children(pid));
        }
        out
    }

    /// CPU time of every server process, ns.
    pub fn cpu_ns(&self) -> u64 {
        self.pids().into_iter().map(procfs::cpu_ns).sum()
    }

    /// CPU time so far, ns, by role: the publisher (`start_http`, Socket.IO's publisher node),
    /// the channel (`start_channel`, `redis-server`), the WebSocket nodes (everything else).
    pub fn cpu_ns_by_role(&self) -> [u64; 3] {
        let mut out = [0; 3];
        for p in &self.procs {
            let role = match p.name.as_str() {
                "start_http" | "socketio-publisher" => 0,
                "start_channel" | "redis-server" => 1,
                _ => 2,
            };
            out[role] += procfs::cpu_ns(p.pid());
            out[role] += procfs::children(p.pid())
                .into_iter()
                .map(procfs::cpu_ns)
                .sum::<u64>();
        }
        out
    }

    /// Memory of every server process, KiB (proportional set size: shared pages once).
    pub fn mem_kib(&self) -> u64 {
        self.pids().into_iter().map(procfs::pss_kib).sum()
    }

    /// `VmRSS` of every server process, KiB (shared pages counted in each process).
    pub fn rss_kib(&self) -> u64 {
        self.pids().into_iter().map(procfs::rss_kib).sum()
    }

    /// Lines containing `needle` in the logs of every process so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.procs
            .iter()
            .map(|p| {
                std::fs::read_to_string(p.log())
                    .map(|t| t.lines().filter(|l| l.contains(needle)).count())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Whether every process still runs; `Err` with its log otherwise.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            p.check_alive()?;
        }
        Ok(())
    }

    /// Stop every process, last started first.
    pub fn stop(&mut self) {
        let mut extra = Vec::new();
        while let Some(mut p) = self.procs.pop() {
            extra.extend(procfs::children(p.pid()));
            p.stop();
        }
        // nginx workers and a supervisor's children normally leave with their parent; make
        // sure.
        for pid in extra {
            if procfs::alive(pid) {
                // SAFETY: a child of a process this run started.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
