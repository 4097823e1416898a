//! The gateway rows (issue 15): GatewayWorker's addressing under load on a 4-node cluster, and
//! the directory's memory.
//!
//! - **Session** (`session_gateway`, on werkmann's channel-server and Redis clusters with 4
//!   WebSocket nodes, and on Socket.IO's redis adapter with 4 nodes): N clients spread over the
//!   nodes, each bound to a uid of its own through `POST /api/bind_uid`; then, alternating, a
//!   run of targeted pushes (the seed's API, addressed by worker and connection id) and a run of
//!   `POST /api/send_to_uid` pushes to random uids, `repeats` times, so the two rows are
//!   medians of runs side by side. Every uid push must be answered `{"reached":1}` and reach
//!   its client exactly once; the copies the cluster sent towards its nodes per push are
//!   counted (`Running::copies_counter`). Then werkmann binds the clients again, two to a uid
//!   on two nodes (copies must be 2), and every client joins a group of `gw_group_size`
//!   (clients `i` with the same `i / size`: spread evenly over the nodes), and
//!   `POST /api/send_to_group` pushes go to the groups in turn.
//! - **Directory memory** (`session_dir_memory`): a channel server (or Redis) alone, with one
//!   `channel_console` registering `dir_bindings` synthetic clients through the channel wire
//!   and binding each to a uid of its own; the server's memory before, after registering and
//!   after binding, per client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use rand::Rng as _;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::child::{free_addr, Child};
use crate::clock::mono_ns;
use crate::gen::Gen;
use crate::http::Conn;
use crate::proto::{payload, Address, Kind};
use crate::row::{self, Row, Scenario};
use crate::run::{k, send_checked, warm, warm_until, Check, Publish, Request, Sent, Suite};
use crate::systems::{Build, Running, Setup};
use crate::{procfs, redis};

/// WebSocket nodes of the gateway session.
pub const NODES: usize = 4;

/// The worker id the directory-memory row registers its synthetic clients under.
const DIR_WORKER: u32 = 9_000;
/// The first connection id of those clients: a time-based id as a node makes them (µs since
/// 1970), so client ids are as long as real ones (`9000-1764000000000001`).
const DIR_CONN_BASE: u64 = 1_764_000_000_000_000;
/// Clients per `register` operation.
const REGISTER_BATCH: u32 = 1_000;
/// `bind_uid` operations sent before waiting for them to be applied.
const BIND_BATCH: u32 = 2_000;

/// The label of the targeted row of the gateway session.
pub fn targeted_label(n: u32, inflight: usize) -> String {
    format!("targeted {} clients, {inflight} in flight, 4 nodes", k(n))
}

/// The label of the uid row, one device per uid.
pub fn uid_label(n: u32, inflight: usize) -> String {
    format!(
        "uid pushes {} users × 1 device, {inflight} in flight, 4 nodes",
        k(n)
    )
}

/// The label of the uid row, two devices per uid on two nodes.
pub fn uid2_label(n: u32, inflight: usize) -> String {
    format!(
        "uid pushes {} users × 2 devices on 2 nodes, {inflight} in flight",
        k(n / 2)
    )
}

/// The label of the group row.
pub fn group_label(groups: u32, size: u32, inflight: usize) -> String {
    format!(
        "group pushes to {groups} groups of {} over 4 nodes, {inflight} in flight",
        k(size)
    )
}

/// The label of the directory-memory row.
pub fn dir_memory_label(bindings: u32) -> String {
    format!("directory memory, {} clients bound to uids", k(bindings))
}

impl Suite {
    /// werkmann's channel-server and Redis clusters with 4 nodes, each build, as the modes
    /// asked for.
    fn werkmann_4_nodes(&self) -> Vec<Setup> {
        let mut v = Vec::new();
        for (mode, redis) in [("cluster", false), ("redis", true)] {
            if !self.mode(mode) {
                continue;
            }
            for build in self.builds() {
                v.push(if redis {
                    Setup::WerkmannRedis { ws: NODES, build }
                } else {
                    Setup::WerkmannCluster { ws: NODES, build }
                });
            }
        }
        v
    }

    /// The gateway session's setups: werkmann's channel-server and Redis clusters with 4 nodes
    /// (each build), Socket.IO's redis adapter with 4 nodes.
    pub(crate) fn setups_gateway(&self) -> Vec<Setup> {
        let mut v = self.werkmann_4_nodes();
        if self.sys("socketio") && (self.mode("cluster") || self.mode("redis")) {
            v.push(Setup::SocketIoCluster { ws: NODES });
        }
        v
    }

    /// The directory-memory row's setups: the channel server and Redis (each build).
    pub(crate) fn setups_dir_memory(&self) -> Vec<Setup> {
        self.werkmann_4_nodes()
    }

    /// Bind (or join) every client through the API: request `i` is `POST /api/{method}` with
    /// `{"client_id": …, param: name(i)}` for `clients[i]`; each must answer `{"ok":true}`.
    async fn bind_all(
        &self,
        sys: &Running,
        conns: &mut Vec<Conn>,
        method: &'static str,
        param: &'static str,
        clients: &Arc<Vec<Address>>,
        name: impl Fn(u32) -> String + Send + Sync + 'static,
    ) -> Result<(Sent, f64)> {
        let api = sys.api;
        let cs = clients.clone();
        let make: Request = Arc::new(move |i| {
            let a = &cs[i as usize];
            let id = format!("{}-{}", a.worker, a.conn);
            api.call(method, &json!({ "client_id": id, param: name(a.idx) }))
        });
        let check: Check =
            Arc::new(|_, body| serde_json::from_str(body).ok() == Some(json!({"ok": true})));
        let t0 = Instant::now();
        let sent = send_checked(conns, clients.len() as u32, None, make, Some(check)).await?;
        let secs = t0.elapsed().as_secs_f64();
        if sent.failed + sent.unexpected > 0 {
            bail!(
                "{method}: {} of {} calls failed, {} answered otherwise: {}",
                sent.failed,
                clients.len(),
                sent.unexpected,
                sent.first.clone().unwrap_or_default()
            );
        }
        Ok((sent, clients.len() as f64 / secs))
    }

    /// The gateway session on `setup` (see the module's text).
    pub(crate) async fn session_gateway(&mut self, setup: Setup) -> Result<()> {
        let p = self.opts.plan.clone();
        let n = p.bcast_n;
        let werkmann = !setup.is_peer();
        let mut sys = self.start(setup, "gateway").await?;
        let mut conn = Conn::connect(sys.api.addr).await?;
        let mut conns = Vec::new();
        for _ in 0..p.inflight.max(1) {
            conns.push(Conn::connect(sys.api.addr).await?);
        }
        let mut gen = self.gen(n).await?;
        let opened = gen.open(setup.flavor(), &sys.ws.clone(), n).await?;
        ensure!(
            opened.failed == 0,
            "{} of {n} clients failed to open: {}",
            opened.failed,
            opened.first_error.unwrap_or_default()
        );
        let live = gen.live.len() as u64;
        warm(&mut gen, &sys.api, &mut conn, live).await?;
        // Client i at index i (a fresh generator numbers its clients from 0).
        let mut clients: Vec<Address> = gen.live.iter().map(|(_, a)| a.clone()).collect();
        clients.sort_by_key(|a| a.idx);
        ensure!(
            clients.iter().enumerate().all(|(i, a)| a.idx == i as u32),
            "the clients are not numbered 0..{n}"
        );
        let clients = Arc::new(clients);

        // Every client bound to a uid of its own: u{i}.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mem0 = sys.mem_kib();
        let (_, binds_per_s) = self
            .bind_all(&sys, &mut conns, "bind_uid", "uid", &clients, |i| {
                format!("u{i}")
            })
            .await?;
        self.warm_dir(&sys, &mut gen, &mut conns, "send_to_uid", "uid", "u", n)
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mem1 = sys.mem_kib();
        let bind_bytes = mem1.saturating_sub(mem0) as f64 * 1024.0 / n as f64;

        // Targeted and uid pushes, runs alternating.
        let m = p.targeted_p;
        let (mut targeted, mut uid) = (Vec::new(), Vec::new());
        let tl = targeted_label(n, p.inflight);
        let ul = uid_label(n, p.inflight);
        let prof = std::env::var("GW_PROFILE").unwrap_or_default();
        let reps = if prof.is_empty() { p.repeats } else { 40 };
        for _ in 0..reps {
            if prof == "uid" {
                let r = self
                    .uid_run(&sys, &mut gen, &mut conns, &ul, "u", n, 1, werkmann)
                    .await?;
                uid.push(r);
                continue;
            }
            let to: Vec<Address> = {
                let mut rng = rand::rng();
                (0..m)
                    .map(|_| clients[rng.random_range(0..clients.len())].clone())
                    .collect()
            };
            let how = Publish::Targeted {
                inflight: p.inflight,
                to: Arc::new(to),
            };
            let c0 = sys.copies_counter().await;
            let cpu0 = sys.cpu_ns_by_role();
            let d = self
                .deliver_to(&sys, &mut gen, &mut conns, Kind::Targeted, m, 1, None, how)
                .await?;
            let cpu1 = sys.cpu_ns_by_role();
            let c1 = sys.copies_counter().await;
            let mut r = self.delivery_row(Scenario::Targeted, &tl, setup, &d);
            set_copies(&mut r, c0, c1, m, Some(1));
            set_cpu_by_role(&mut r, cpu0, cpu1, m);
            targeted.push(r);
            if prof == "targeted" {
                continue;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;

            let r = self
                .uid_run(&sys, &mut gen, &mut conns, &ul, "u", n, 1, werkmann)
                .await?;
            uid.push(r);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Some(r) = row::median(targeted) {
            self.push(r);
        }
        if let Some(mut r) = row::median(uid) {
            r.set("binds_per_s", binds_per_s);
            r.set("bind_bytes", bind_bytes);
            self.push(r);
        }

        // Two devices per uid, on two nodes (clients 2j and 2j + 1: nodes 2j and 2j + 1 mod 4).
        if werkmann {
            self.bind_all(&sys, &mut conns, "bind_uid", "uid", &clients, |i| {
                format!("d{}", i / 2)
            })
            .await?;
            self.warm_dir(&sys, &mut gen, &mut conns, "send_to_uid", "uid", "d", n / 2)
                .await?;
            let label = uid2_label(n, p.inflight);
            let mut runs = Vec::new();
            for _ in 0..p.repeats {
                let r = self
                    .uid_run(&sys, &mut gen, &mut conns, &label, "d", n / 2, 2, werkmann)
                    .await?;
                runs.push(r);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if let Some(r) = row::median(runs) {
                self.push(r);
            }
        }

        // Groups of gw_group_size: client i in g{i / size}.
        let size = p.gw_group_size.clamp(1, n);
        let groups = n.div_ceil(size);
        let (_, joins_per_s) = self
            .bind_all(
                &sys,
                &mut conns,
                "join_group",
                "group",
                &clients,
                move |i| format!("g{}", i / size),
            )
            .await?;
        self.warm_dir(
            &sys,
            &mut gen,
            &mut conns,
            "send_to_group",
            "group",
            "g",
            groups,
        )
        .await?;
        let members: Vec<u64> = (0..groups)
            .map(|g| u64::from(size.min(n - g * size)))
            .collect();
        let gm = p.gw_group_m;
        let to: Arc<Vec<u32>> = Arc::new((0..gm).map(|s| s % groups).collect());
        let due: u64 = to.iter().map(|g| members[*g as usize]).sum();
        let reached = Arc::new(to.iter().map(|g| members[*g as usize]).collect::<Vec<_>>());
        let label = group_label(groups, size, p.inflight);
        let mut runs = Vec::new();
        for _ in 0..p.repeats {
            let how = Publish::Directory {
                inflight: p.inflight,
                method: "send_to_group",
                param: "group",
                names: "g",
                to: to.clone(),
                reached: werkmann.then(|| reached.clone()),
            };
            let c0 = sys.copies_counter().await;
            let d = self
                .deliver_to(
                    &sys,
                    &mut gen,
                    &mut conns,
                    Kind::Group,
                    gm,
                    size,
                    Some(due),
                    how,
                )
                .await?;
            let c1 = sys.copies_counter().await;
            let mut r = self.delivery_row(Scenario::Group, &label, setup, &d);
            // Due: one copy per worker instance holding members (werkmann), which depends on
            // how each node spread its connections over its instances; not checked.
            set_copies(&mut r, c0, c1, gm, None);
            r.set("pushes_per_s", d.received as f64 / d.secs / size as f64);
            runs.push(r);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Some(mut r) = row::median(runs) {
            r.set("joins_per_s", joins_per_s);
            self.push(r);
        }
        gen.quit().await;
        sys.check_alive()?;
        sys.stop();
        Ok(())
    }

    /// One run of `send_to_uid` pushes to random uids `{names}{j}`, j < `uids`, each held by
    /// `per` clients; returns its row with the copies per push.
    #[allow(clippy::too_many_arguments)]
    async fn uid_run(
        &mut self,
        sys: &Running,
        gen: &mut Gen,
        conns: &mut Vec<Conn>,
        label: &str,
        names: &'static str,
        uids: u32,
        per: u32,
        werkmann: bool,
    ) -> Result<Row> {
        let p = self.opts.plan.clone();
        let m = p.targeted_p;
        let to: Vec<u32> = {
            let mut rng = rand::rng();
            (0..m).map(|_| rng.random_range(0..uids)).collect()
        };
        let how = Publish::Directory {
            inflight: p.inflight,
            method: "send_to_uid",
            param: "uid",
            names,
            to: Arc::new(to),
            reached: werkmann.then(|| Arc::new(vec![u64::from(per); m as usize])),
        };
        let c0 = sys.copies_counter().await;
        let cpu0 = sys.cpu_ns_by_role();
        let d = self
            .deliver_to(sys, gen, conns, Kind::Uid, m, per, None, how)
            .await?;
        let cpu1 = sys.cpu_ns_by_role();
        let c1 = sys.copies_counter().await;
        let mut r = self.delivery_row(Scenario::Uid, label, sys.setup, &d);
        set_cpu_by_role(&mut r, cpu0, cpu1, m);
        // Pushes, not deliveries: each uid push is due at `per` clients.
        if d.secs > 0.0 {
            r.set("pushes_per_s", d.received as f64 / per as f64 / d.secs);
        }
        set_copies(&mut r, c0, c1, m, Some(u64::from(per)));
        Ok(r)
    }

    /// Send a warm-up push to every one of `targets` uids or groups (`{names}{j}`) until every
    /// client has one (the bindings are in place), at most 30 s.
    #[allow(clippy::too_many_arguments)]
    async fn warm_dir(
        &self,
        sys: &Running,
        gen: &mut Gen,
        conns: &mut Vec<Conn>,
        method: &'static str,
        param: &'static str,
        names: &'static str,
        targets: u32,
    ) -> Result<()> {
        let clients = gen.live.len() as u64;
        let phase = gen.phase(Kind::Warm, 1).await?;
        let api = sys.api;
        let send = async || {
            let make: Request = Arc::new(move |t| {
                let content = payload(phase, Kind::Warm, 0, t, mono_ns(), 32);
                api.call(
                    method,
                    &json!({ param: format!("{names}{t}"), "message": content }),
                )
            });
            send_checked(conns, targets, None, make, None)
                .await
                .map(|_| ())
        };
        warm_until(gen, clients, method, Duration::from_secs(1), send).await
    }

    /// The directory-memory row on a channel server (`WerkmannCluster`) or Redis
    /// (`WerkmannRedis`): see the module's text.
    pub(crate) async fn session_dir_memory(&mut self, setup: Setup) -> Result<()> {
        let b = self.opts.plan.dir_bindings;
        let build = setup.build().unwrap_or(Build::Current);
        let bin_dir = self.env.werkmann_dir(build)?.to_path_buf();
        let redis_mode = matches!(setup, Setup::WerkmannRedis { .. });
        eprintln!(
            "pushbench: [{:>4.0} s] starting the directory-memory row ({})",
            self.started.elapsed().as_secs_f64(),
            if redis_mode {
                "Redis"
            } else {
                "channel server"
            }
        );
        let dir = self.env.run_dir.join(format!(
            "dir-memory-{}",
            if redis_mode { "redis" } else { "channel" }
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let addr = free_addr()?;
        let mut server = if redis_mode {
            let mut c = std::process::Command::new("redis-server");
            c.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
            Child::spawn("redis-server", c, &dir, false)?
        } else {
            let mut c = std::process::Command::new(bin_dir.join("start_channel"));
            c.args(["start", "--listen", &addr.to_string()]);
            Child::spawn("start_channel", c, &dir, true)?
        };
        server.wait_ports(&[addr], Duration::from_secs(40)).await?;
        let channel = if redis_mode {
            format!("redis://{addr}")
        } else {
            addr.to_string()
        };
        let con_addr = free_addr()?;
        let mut c = std::process::Command::new(bin_dir.join("channel_console"));
        c.args([
            "start",
            "--listen",
            &con_addr.to_string(),
            "--channel",
            &channel,
        ]);
        let mut console = Child::spawn("channel_console", c, &dir, false)?;
        console
            .wait_ports(&[con_addr], Duration::from_secs(40))
            .await?;
        let r = dir_memory(&mut server, addr, redis_mode, con_addr, b).await;
        console.stop();
        server.stop();
        let m = r?;
        let mut r = Row::new(Scenario::DirMemory, &dir_memory_label(b), setup);
        r.mode = if redis_mode {
            "Redis (used_memory)".into()
        } else {
            "channel server (PSS)".into()
        };
        r.setup = if redis_mode {
            "redis-server + channel_console --channel redis://".into()
        } else {
            "start_channel + channel_console".into()
        };
        r.nodes = 1;
        let per = |a: f64, z: f64| (z - a).max(0.0) / f64::from(b);
        r.set("bindings", f64::from(b));
        r.set("bytes_per_client", per(m.mem[0], m.mem[1]));
        r.set("bytes_per_uid", per(m.mem[1], m.mem[2]));
        r.set("bytes_per_binding", per(m.mem[0], m.mem[2]));
        r.set("rss_bytes_per_binding", per(m.rss[0], m.rss[2]));
        r.set("mem_mib", m.mem[2] / 1_048_576.0);
        r.set("binds_per_s", m.binds_per_s);
        self.push(r);
        Ok(())
    }
}

/// Copies per push from a counter read before and after a phase of `m` pushes, and the
/// copies due (`holders`: worker instances holding the target).
fn set_copies(r: &mut Row, c0: Option<i64>, c1: Option<i64>, m: u32, holders: Option<u64>) {
    if let (Some(a), Some(b)) = (c0, c1) {
        r.set("copies", (b - a) as f64 / f64::from(m.max(1)));
        if let Some(h) = holders {
            r.set("holders", h as f64);
        }
    }
}

/// The console's next line that is not a forwarded event or an `ok`.
async fn answer(rx: &mut mpsc::UnboundedReceiver<String>, what: &str) -> Result<String> {
    let l = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .with_context(|| format!("channel_console: no answer to {what} within 60 s"))?
        .context("channel_console closed")?;
    ensure!(!l.starts_with("err"), "channel_console: {what}: {l}");
    Ok(l)
}

/// Server CPU per push, µs, by role (publisher, channel, nodes), from readings before and
/// after a phase of `m` pushes.
pub(crate) fn set_cpu_by_role(r: &mut Row, a: [u64; 3], b: [u64; 3], m: u32) {
    for (i, key) in ["cpu_us_publisher", "cpu_us_channel", "cpu_us_nodes"]
        .iter()
        .enumerate()
    {
        r.set(
            key,
            b[i].saturating_sub(a[i]) as f64 / 1e3 / f64::from(m.max(1)),
        );
    }
}

/// The directory-memory figures: memory (bytes) before, after registering, after binding;
/// RSS likewise; `bind_uid` operations per second through the console.
struct DirMemory {
    mem: [f64; 3],
    rss: [f64; 3],
    binds_per_s: f64,
}

/// Drive `channel_console` at `con`: register `b` clients of worker [`DIR_WORKER`] (its node
/// event subscribed, so Redis's sweep keeps them), bind each to a uid of its own, and read the
/// server's memory at each step.
async fn dir_memory(
    server: &mut Child,
    addr: SocketAddr,
    redis_mode: bool,
    con: SocketAddr,
    b: u32,
) -> Result<DirMemory> {
    let pid = server.pid();
    let read_mem = || async move {
        let rss = procfs::rss_kib(pid) as f64 * 1024.0;
        if redis_mode {
            let info = redis::command(addr, &["INFO", "memory"]).await?;
            let used = redis::info_number(&info, "used_memory").context("used_memory")?;
            Ok::<_, anyhow::Error>((used as f64, rss))
        } else {
            Ok((procfs::pss_kib(pid) as f64 * 1024.0, rss))
        }
    };
    let stream = TcpStream::connect(con).await?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    // Answers (`dir …`, `ok …`, `err …`) to the writer; forwarded events only counted.
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(rd).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if l.starts_with("event ") || l.starts_with("ok") {
                continue;
            }
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let line = answer(&mut rx, "connecting").await?;
    ensure!(line == "channel connected", "channel_console: {line}");
    let event = format!("werkmann.gw.{DIR_WORKER}");
    wr.write_all(format!("on {event}\n").as_bytes()).await?;
    // The count answered once everything sent before it is applied.
    let count = |op: &str| format!("dir {{\"op\":\"{op}\"}}\n");
    wr.write_all(count("get_all_client_id_count").as_bytes())
        .await?;
    ensure!(
        answer(&mut rx, "a count").await? == "dir 0",
        "the directory is not empty"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m0 = read_mem().await?;

    let id = |i: u32| format!("{DIR_WORKER}-{}", DIR_CONN_BASE + u64::from(i));
    let mut i = 0;
    while i < b {
        let end = (i + REGISTER_BATCH).min(b);
        let clients: Vec<_> = (i..end).map(|i| json!({ "client_id": id(i) })).collect();
        let op = json!({"op": "register", "clients": clients});
        wr.write_all(format!("dirsend {op}\n").as_bytes()).await?;
        if end % (10 * REGISTER_BATCH) == 0 || end == b {
            wr.write_all(count("get_all_client_id_count").as_bytes())
                .await?;
            let got = answer(&mut rx, "registering").await?;
            ensure!(got == format!("dir {end}"), "registered: {got}, not {end}");
        }
        i = end;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m1 = read_mem().await?;

    // In batches, each waited for: on Redis a link sends what is queued as one pipeline, and
    // one of 100k operations outlasts its timeout (the link reconnects and retries).
    let t0 = Instant::now();
    let mut i = 0;
    while i < b {
        let end = (i + BIND_BATCH).min(b);
        let mut buf = String::new();
        for i in i..end {
            let op = json!({"op": "bind_uid", "client_id": id(i), "uid": format!("user-{i}")});
            buf.push_str(&format!("dirsend {op}\n"));
        }
        buf.push_str(&count("get_all_uid_count"));
        wr.write_all(buf.as_bytes()).await?;
        let got = answer(&mut rx, "binding").await?;
        ensure!(got == format!("dir {end}"), "bound: {got}, not {end}");
        i = end;
    }
    let binds_per_s = f64::from(b) / t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m2 = read_mem().await?;
    reader.abort();
    Ok(DirMemory {
        mem: [m0.0, m1.0, m2.0],
        rss: [m0.1, m1.1, m2.1],
        binds_per_s,
    })
}
