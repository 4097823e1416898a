//! Cluster-unique worker ids, agreed through the channel itself.
//!
//! Workerman's push example subscribes each process to its worker id, so two WebSocket nodes
//! that both have workers 0 and 1 would both receive a push for worker 1. Here a node claims
//! ids no other node holds before it starts, using only pub/sub on the event
//! [`IDS_EVENT`] — so it works through a werkmann channel server, Workerman's PHP one, or any
//! other channel:
//!
//! 1. subscribe, publish `{op: who}`; every live node answers `{op: held, ids, node}`;
//! 2. pick the lowest free ids (or the pinned ones), publish `{op: claim, ids, node}`;
//! 3. a holder answers a claim that overlaps its ids with `held`; of two simultaneous claims
//!    the smaller node id wins; the loser picks again (a pinned node stops with an error).
//!
//! The node keeps answering on a background thread for as long as it runs
//! ([`WorkerIds::answer`]).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use super::php_serde::{self, Key};
use super::wire::{Command, Delivery, WireName};

/// The event on which nodes agree on worker ids.
pub const IDS_EVENT: &str = "werkmann.worker_ids";
const ROUND: Duration = Duration::from_millis(300);

/// Why ids could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The channel server could not be reached in time.
    #[error("channel server {addr} unreachable: {why}")]
    Unreachable {
        /// The server address.
        addr: String,
        /// The last error.
        why: String,
    },
    /// A pinned id is held by another node.
    #[error("worker ids {0:?} are already held by another node")]
    Clash(Vec<u32>),
}

/// Ids this node holds. Call [`WorkerIds::answer`] once the node serves (after a daemon's
/// fork); answering other nodes stops when this is dropped.
pub struct WorkerIds {
    ids: Vec<u32>,
    link: Mutex<Option<(String, Link, u64)>>,
    stop: Arc<AtomicBool>,
}

impl WorkerIds {
    /// The ids, one per instance (instance `i` has `ids()[i]`).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Ids without agreement (an embedded channel, or a single node): `first..first+count`.
    pub fn fixed(first: u32, count: usize) -> WorkerIds {
        WorkerIds {
            ids: (first..first + count as u32).collect(),
            link: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Start answering other nodes' `who` and `claim` on a background thread (once). The
    /// connection used for the claim stays subscribed meanwhile, so nothing is missed.
    pub fn answer(&self) {
        let taken = self.link.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((addr, link, node)) = taken {
            spawn_answerer(addr, link, node, self.ids.clone(), self.stop.clone());
        }
    }
}

impl Drop for WorkerIds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The claim's blocking connection to the channel server: plain, or TLS for `tls://` names.
enum LinkStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl LinkStream {
    fn open(addr: &str) -> std::io::Result<LinkStream> {
        let (host_port, tls) = match addr.strip_prefix("tls://") {
            Some(rest) => (rest, true),
            None => (addr, false),
        };
        let tcp = TcpStream::connect(host_port)?;
        tcp.set_nodelay(true)?;
        if !tls {
            return Ok(LinkStream::Plain(tcp));
        }
        let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
        let session = crate::tls::ClientTls::system()
            .and_then(|t| t.client_session(host))
            .map_err(std::io::Error::other)?;
        Ok(LinkStream::Tls(Box::new(rustls::StreamOwned::new(
            session, tcp,
        ))))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            LinkStream::Plain(s) => s,
            LinkStream::Tls(t) => &t.sock,
        }
    }
}

impl Read for LinkStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            LinkStream::Plain(s) => s.read(buf),
            LinkStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for LinkStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            LinkStream::Plain(s) => s.write(buf),
            LinkStream::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            LinkStream::Plain(s) => s.flush(),
            LinkStream::Tls(t) => t.flush(),
        }
    }
}

struct Link {
    stream: LinkStream,
    buf: Vec<u8>,
}

impl Link {
    fn open(addr: &str) -> std::io::Result<Link> {
        let mut l = Link {
            stream: LinkStream::open(addr)?,
            buf: Vec::new(),
        };
        if let Some(secret) = std::env::var("WERKMANN_CHANNEL_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
        {
            l.send(&super::client::auth_command(&secret))?;
        }
        l.send(&Command::Subscribe(vec![WireName::from_key(Key::from(
            IDS_EVENT,
        ))]))?;
        Ok(l)
    }

    fn send(&mut self, cmd: &Command) -> std::io::Result<()> {
        self.stream.write_all(&cmd.encode_frame())?;
        self.stream.flush()
    }

    fn publish(&mut self, v: &Value) -> std::io::Result<()> {
        self.send(&Command::Publish(
            vec![WireName::from_key(Key::from(IDS_EVENT))],
            Bytes::from(php_serde::to_vec(v)),
        ))
    }

    /// The next message on the ids event, waiting at most until `deadline`.
    fn next(&mut self, deadline: Instant) -> std::io::Result<Option<Value>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len < 4 {
                    return Err(std::io::Error::other("bad frame from channel server"));
                }
                if self.buf.len() >= len {
                    let payload = Bytes::copy_from_slice(&self.buf[4..len]);
                    self.buf.drain(..len);
                    if let Ok(d) = Delivery::decode(&payload) {
                        if let Ok(v) = php_serde::from_slice(&d.data) {
                            return Ok(Some(v));
                        }
                    }
                    continue;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.stream.tcp().set_read_timeout(Some(deadline - now))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(std::io::Error::other("channel server closed")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn ids_of(v: &Value) -> Vec<u32> {
    v["ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// Claim `count` cluster-unique ids through the channel at `addr` — a channel server
/// (`IP:PORT`) or Redis (`redis://…`) — or exactly `pinned`, retrying the connection until
/// `timeout`. Call [`WorkerIds::answer`] once the node serves.
pub fn claim(
    addr: &str,
    count: usize,
    pinned: Option<Vec<u32>>,
    timeout: Duration,
) -> Result<WorkerIds, ClaimError> {
    if addr.starts_with("redis://") || addr.starts_with("rediss://") {
        return claim_redis(addr, count, pinned, timeout);
    }
    let node: u64 = rand::random::<u64>() >> 1;
    let deadline = Instant::now() + timeout;
    let mut link = loop {
        match Link::open(addr) {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                log::warn!("waiting for channel server {addr}: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(ClaimError::Unreachable {
                    addr: addr.into(),
                    why: e.to_string(),
                })
            }
        }
    };
    let io = |e: std::io::Error| ClaimError::Unreachable {
        addr: addr.to_string(),
        why: e.to_string(),
    };
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    link.publish(&json!({"op": "who", "node": node}))
        .map_err(io)?;
    let until = Instant::now() + ROUND;
    while let Some(v) = link.next(until).map_err(io)? {
        if v["node"].as_u64() != Some(node) && matches!(v["op"].as_str(), Some("held" | "claim")) {
            taken.extend(ids_of(&v));
        }
    }
    let ids = loop {
        let want: Vec<u32> = match &pinned {
            Some(p) => {
                let clash: Vec<u32> = p.iter().copied().filter(|i| taken.contains(i)).collect();
                if !clash.is_empty() {
                    return Err(ClaimError::Clash(clash));
                }
                p.clone()
            }
            None => (0u32..)
                .filter(|i| !taken.contains(i))
                .take(count)
                .collect(),
        };
        link.publish(&json!({"op": "claim", "ids": want, "node": node}))
            .map_err(io)?;
        let until = Instant::now() + ROUND;
        let mut lost = false;
        while let Some(v) = link.next(until).map_err(io)? {
            let other = v["node"].as_u64().unwrap_or(0);
            if other == node {
                continue;
            }
            let theirs = ids_of(&v);
            let overlap = theirs.iter().any(|i| want.contains(i));
            match v["op"].as_str() {
                Some("held") if overlap => lost = true,
                Some("claim") if overlap && other < node => lost = true,
                _ => {}
            }
            if matches!(v["op"].as_str(), Some("held" | "claim")) {
                taken.extend(theirs);
            }
        }
        if !lost {
            break want;
        }
        log::info!("worker ids {want:?} are taken; choosing again");
    };
    log::info!("claimed worker ids {ids:?} through channel {addr}");
    Ok(WorkerIds {
        ids,
        link: Mutex::new(Some((addr.to_string(), link, node))),
        stop: Arc::new(AtomicBool::new(false)),
    })
}

/// Answer `who` and overlapping `claim`s for as long as the node runs, reconnecting as needed.
fn spawn_answerer(addr: String, link: Link, node: u64, ids: Vec<u32>, stop: Arc<AtomicBool>) {
    let held = json!({"op": "held", "ids": ids, "node": node});
    let _ = std::thread::Builder::new()
        .name("worker-ids".into())
        .spawn(move || {
            let mut link = Some(link);
            while !stop.load(Ordering::Relaxed) {
                let Some(l) = link.as_mut() else {
                    std::thread::sleep(Duration::from_secs(1));
                    link = Link::open(&addr).ok();
                    if let Some(l) = link.as_mut() {
                        // Announce after a reconnect, so claims made meanwhile see us.
                        let _ = l.publish(&held);
                    }
                    continue;
                };
                match l.next(Instant::now() + Duration::from_secs(1)) {
                    Ok(Some(v)) => {
                        let other = v["node"].as_u64().unwrap_or(0) != node;
                        let answer = match v["op"].as_str() {
                            Some("who") => other,
                            Some("claim") => other && ids_of(&v).iter().any(|i| ids.contains(i)),
                            _ => false,
                        };
                        if answer && l.publish(&held).is_err() {
                            link = None;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => link = None,
                }
            }
        });
}

const LEASE_MS: u64 = 30_000;
const RENEW_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// A blocking connection to the server at `url`, or to its cluster (found with `INFO cluster`),
/// so that each lease key reaches the node that holds it.
fn lease_conn(url: &str) -> redis::RedisResult<Box<dyn redis::ConnectionLike + Send>> {
    let client = super::redis::open_client(url)?;
    let mut single = client.get_connection_with_timeout(Duration::from_secs(2))?;
    let info: String = redis::cmd("INFO").arg("cluster").query(&mut single)?;
    if info.contains("cluster_enabled:1") {
        let cluster = redis::cluster::ClusterClientBuilder::new(vec![url])
            .connection_timeout(Duration::from_secs(2))
            .build()?
            .get_connection()?;
        Ok(Box::new(cluster))
    } else {
        Ok(Box::new(single))
    }
}

fn lease_key(id: u32) -> String {
    format!("werkmann:worker_id:{id}")
}

/// On Redis, an id is a lease: `SET werkmann:worker_id:{id} {node} NX PX 30000`, renewed every
/// 10 s by the node and gone 30 s after the node is.
fn claim_redis(
    url: &str,
    count: usize,
    pinned: Option<Vec<u32>>,
    timeout: Duration,
) -> Result<WorkerIds, ClaimError> {
    let unreachable = |why: String| ClaimError::Unreachable {
        addr: url.to_string(),
        why,
    };
    let deadline = Instant::now() + timeout;
    let mut conn = loop {
        match lease_conn(url) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                log::warn!("waiting for redis {url}: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(unreachable(e.to_string())),
        }
    };
    let node = format!("{:016x}", rand::random::<u64>());
    let mut take = |id: u32| -> Result<bool, ClaimError> {
        let r: Option<String> = redis::cmd("SET")
            .arg(lease_key(id))
            .arg(&node)
            .arg("NX")
            .arg("PX")
            .arg(LEASE_MS)
            .query(conn.as_mut())
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(r.is_some())
    };
    let ids = match pinned {
        Some(p) => {
            let mut got = Vec::new();
            let mut clash = Vec::new();
            for &id in &p {
                if take(id)? {
                    got.push(id);
                } else {
                    clash.push(id);
                }
            }
            if !clash.is_empty() {
                release(url, &node, &got);
                return Err(ClaimError::Clash(clash));
            }
            p
        }
        None => {
            let mut got = Vec::new();
            let mut id = 0u32;
            while got.len() < count {
                if take(id)? {
                    got.push(id);
                }
                id += 1;
            }
            got
        }
    };
    log::info!("claimed worker ids {ids:?} through redis {url}");
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, ids2, url2) = (stop.clone(), ids.clone(), url.to_string());
    let _ = std::thread::Builder::new()
        .name("worker-ids".into())
        .spawn(move || renew_leases(&url2, &node, &ids2, &stop2));
    Ok(WorkerIds {
        ids,
        link: Mutex::new(None),
        stop,
    })
}

fn release(url: &str, node: &str, ids: &[u32]) {
    if let Ok(mut c) = lease_conn(url) {
        for &id in ids {
            let _: redis::RedisResult<i64> = redis::cmd("EVAL")
                .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
                .arg(1)
                .arg(lease_key(id))
                .arg(node)
                .query(c.as_mut());
        }
    }
}

fn renew_leases(url: &str, node: &str, ids: &[u32], stop: &AtomicBool) {
    let mut conn = None;
    let mut tick = 0u32;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        tick += 1;
        if !tick.is_multiple_of(10) {
            continue;
        }
        if conn.is_none() {
            conn = lease_conn(url).ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        let c = c.as_mut();
        let mut broken = false;
        for &id in ids {
            // Renew, or take back a lease that expired while Redis was away.
            let renewed: redis::RedisResult<i64> = redis::cmd("EVAL")
                .arg(RENEW_SCRIPT)
                .arg(1)
                .arg(lease_key(id))
                .arg(node)
                .arg(LEASE_MS)
                .query(c);
            match renewed {
                Ok(1) => {}
                Ok(_) => {
                    let again: redis::RedisResult<Option<String>> = redis::cmd("SET")
                        .arg(lease_key(id))
                        .arg(node)
                        .arg("NX")
                        .arg("PX")
                        .arg(LEASE_MS)
                        .query(c);
                    if !matches!(again, Ok(Some(_))) {
                        log::error!("worker id {id} is now held by another node");
                    }
                }
                Err(_) => broken = true,
            }
        }
        if broken {
            conn = None;
        }
    }
    release(url, node, ids);
}
