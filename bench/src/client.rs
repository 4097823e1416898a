//! The WebSocket clients of a generator worker process: connect from a chosen loopback source
//! address, subscribe the way the server kind wants, and check and time every push.
//!
//! An idle client holds no read buffer: it waits for readiness and reads into a per-thread
//! buffer, keeping only an incomplete frame's bytes (as werkmann's connections do), so one
//! process can hold 19k clients cheaply.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::clock::mono_ns;
use crate::hist::Hist;
use crate::proto::{parse_push, Address, Flavor, Kind, Progress, Report};
use crate::pusher;

/// The example key of RFC 6455 §1.3 and its accept value.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// Bytes read per readiness.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// What one client has received in the current phase.
#[derive(Debug, Default)]
pub struct ClientState {
    idx: u32,
    phase: u32,
    warm_phase: u32,
    seen: Vec<u64>,
}

impl ClientState {
    /// Client `idx`, nothing received yet.
    pub(crate) fn new(idx: u32) -> ClientState {
        ClientState {
            idx,
            ..ClientState::default()
        }
    }

    fn reset(&mut self, phase: u32, m: u32) {
        self.phase = phase;
        self.seen.clear();
        self.seen.resize(m.div_ceil(64) as usize, 0);
    }
}

/// State shared by every client of the process.
#[derive(Default)]
pub struct Shared {
    phase: AtomicU32,
    kind: AtomicU8,
    m: AtomicU32,
    /// Uid and group phases: clients per uid or group (client `i` is in number `i / per`).
    per: AtomicU32,
    received: AtomicU64,
    warm: AtomicU64,
    stray: AtomicU64,
    dup: AtomicU64,
    wrong: AtomicU64,
    bad: AtomicU64,
    out_of_order: AtomicU64,
    last_ns: AtomicU64,
    hist: Mutex<Hist>,
    /// Targeted phases: which sequence numbers arrived (in this process).
    targeted_seen: Mutex<Vec<u64>>,
    /// Every open client, by group.
    clients: Mutex<Vec<(u32, Arc<Mutex<ClientState>>)>>,
    /// Clients whose connection ended without being closed by their group: (index, when).
    drops: Mutex<Vec<(u32, u64)>>,
}

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::Warm => 0,
        Kind::Broadcast => 1,
        Kind::Targeted => 2,
        Kind::Uid => 3,
        Kind::Group => 4,
    }
}

/// What one read brought, applied to the shared counters at once.
#[derive(Default)]
pub(crate) struct Batch {
    received: u64,
    warm: u64,
    stray: u64,
    dup: u64,
    wrong: u64,
    pub(crate) bad: u64,
    /// Server-Sent Events whose `id` is not after the stream's previous one (`sse.rs`).
    pub(crate) out_of_order: u64,
    /// Broadcast latencies (already checked).
    lat: Vec<u64>,
    /// Targeted (sequence number, latency), checked for duplicates at flush.
    targeted: Vec<(u32, u64)>,
}

impl Shared {
    /// Start a phase: forget every counter, then publish the phase id. `per`: clients per uid
    /// or group in uid and group phases (1 otherwise).
    pub fn start_phase(&self, id: u32, kind: Kind, m: u32, per: u32) {
        let per = per.max(1);
        self.kind.store(kind_code(kind), Ordering::Relaxed);
        self.m.store(m, Ordering::Relaxed);
        self.per.store(per, Ordering::Relaxed);
        for c in [
            &self.received,
            &self.warm,
            &self.stray,
            &self.dup,
            &self.wrong,
            &self.bad,
            &self.out_of_order,
            &self.last_ns,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        *self.hist.lock().expect("hist") = Hist::default();
        {
            // Broadcast phases may carry targeted pushes too (the soak mixes both). A uid
            // phase's push is due once at each of the uid's `per` clients: bit seq × per +
            // (client index mod per).
            let mut seen = self.targeted_seen.lock().expect("seen");
            seen.clear();
            let bits = if kind == Kind::Uid { m * per } else { m };
            if kind != Kind::Warm {
                seen.resize(bits.div_ceil(64) as usize, 0);
            }
        }
        self.phase.store(id, Ordering::Release);
    }

    /// The counters so far.
    pub fn progress(&self) -> Progress {
        Progress {
            received: self.received.load(Ordering::Relaxed),
            warm: self.warm.load(Ordering::Relaxed),
            stray: self.stray.load(Ordering::Relaxed),
            dup: self.dup.load(Ordering::Relaxed),
            wrong: self.wrong.load(Ordering::Relaxed),
            bad: self.bad.load(Ordering::Relaxed),
            out_of_order: self.out_of_order.load(Ordering::Relaxed),
            last_ns: self.last_ns.load(Ordering::Relaxed),
        }
    }

    /// Counters, missing broadcast deliveries and the histogram.
    pub fn report(&self) -> Report {
        let phase = self.phase.load(Ordering::Acquire);
        let m = self.m.load(Ordering::Relaxed) as u64;
        let broadcast = self.kind.load(Ordering::Relaxed) == kind_code(Kind::Broadcast);
        let clients = self.clients.lock().expect("clients");
        let mut missing = 0;
        if broadcast {
            for (_, c) in clients.iter() {
                let st = c.lock().expect("client");
                let got: u64 = if st.phase == phase {
                    st.seen.iter().map(|w| u64::from(w.count_ones())).sum()
                } else {
                    0
                };
                missing += m.saturating_sub(got);
            }
        }
        Report {
            progress: self.progress(),
            missing,
            hist: self.hist.lock().expect("hist").to_sparse(),
            clients: clients.len() as u64,
        }
    }

    /// Register an opened client.
    pub(crate) fn add(&self, group: u32, st: Arc<Mutex<ClientState>>) {
        self.clients.lock().expect("clients").push((group, st));
    }

    /// Note that client `idx` found its connection closed by the server (now).
    pub fn dropped(&self, idx: u32) {
        self.drops.lock().expect("drops").push((idx, mono_ns()));
    }

    /// Every client that lost its connection so far, with when.
    pub fn drops(&self) -> Vec<(u32, u64)> {
        self.drops.lock().expect("drops").clone()
    }

    /// Forget the clients of a group.
    pub fn remove_group(&self, group: u32) {
        self.clients
            .lock()
            .expect("clients")
            .retain(|(g, _)| *g != group);
    }

    /// Check one push's content and put what it tells into `b`.
    pub(crate) fn on_content(&self, st: &mut ClientState, content: &[u8], now: u64, b: &mut Batch) {
        let Some(p) = parse_push(content) else {
            b.bad += 1;
            return;
        };
        let cur = self.phase.load(Ordering::Acquire);
        if p.kind == Kind::Warm {
            if p.phase == cur && st.warm_phase != cur {
                st.warm_phase = cur;
                b.warm += 1;
            }
            return;
        }
        if p.phase != cur {
            b.stray += 1;
            return;
        }
        let m = self.m.load(Ordering::Relaxed);
        if p.seq >= m {
            b.bad += 1;
            return;
        }
        let lat = now.saturating_sub(p.sent_ns);
        let per = self.per.load(Ordering::Relaxed).max(1);
        match p.kind {
            Kind::Uid => {
                if p.target != st.idx / per {
                    b.wrong += 1;
                } else {
                    b.targeted.push((p.seq * per + st.idx % per, lat));
                }
            }
            Kind::Group if p.target != st.idx / per => b.wrong += 1,
            Kind::Broadcast | Kind::Group => {
                if st.phase != cur {
                    st.reset(cur, m);
                }
                let (w, bit) = ((p.seq / 64) as usize, 1u64 << (p.seq % 64));
                if st.seen[w] & bit != 0 {
                    b.dup += 1;
                } else {
                    st.seen[w] |= bit;
                    b.received += 1;
                    b.lat.push(lat);
                }
            }
            Kind::Targeted => {
                if p.target != st.idx {
                    b.wrong += 1;
                } else {
                    b.targeted.push((p.seq, lat));
                }
            }
            Kind::Warm => {}
        }
    }

    /// Apply a batch to the shared counters.
    pub(crate) fn flush(&self, b: &mut Batch, now: u64) {
        if !b.targeted.is_empty() {
            let mut seen = self.targeted_seen.lock().expect("seen");
            for (seq, lat) in b.targeted.drain(..) {
                let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                match seen.get_mut(w) {
                    Some(word) if *word & bit != 0 => b.dup += 1,
                    Some(word) => {
                        *word |= bit;
                        b.received += 1;
                        b.lat.push(lat);
                    }
                    None => b.bad += 1,
                }
            }
        }
        if !b.lat.is_empty() {
            let mut h = self.hist.lock().expect("hist");
            for l in b.lat.drain(..) {
                h.record(l);
            }
        }
        if b.received > 0 {
            self.last_ns.fetch_max(now, Ordering::Relaxed);
        }
        for (counter, v) in [
            (&self.received, &mut b.received),
            (&self.warm, &mut b.warm),
            (&self.stray, &mut b.stray),
            (&self.dup, &mut b.dup),
            (&self.wrong, &mut b.wrong),
            (&self.bad, &mut b.bad),
            (&self.out_of_order, &mut b.out_of_order),
        ] {
            if *v > 0 {
                counter.fetch_add(*v, Ordering::Relaxed);
                *v = 0;
            }
        }
    }
}

/// The loopback source address of client `idx`: 127.0.0.2 … 127.0.0.254.
pub fn source_ip(idx: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (idx % 253) as u8)
}

/// A client frame (masked, as RFC 6455 requires of clients).
pub fn client_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// A server frame's header: final fragment, opcode, where the payload is, total length.
pub struct Frame {
    /// The final fragment.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// Where the payload is in the buffer.
    pub payload: std::ops::Range<usize>,
    /// Header and payload.
    pub len: usize,
}

/// The server frame at the start of `b`, if complete.
pub fn server_frame(b: &[u8]) -> Result<Option<Frame>> {
    if b.len() < 2 {
        return Ok(None);
    }
    ensure!(b[1] & 0x80 == 0, "masked frame from the server");
    let (len, head) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        126 | 127 => return Ok(None),
        l => (l as usize, 2),
    };
    ensure!(len <= 64 << 20, "frame of {len} bytes");
    if b.len() < head + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin: b[0] & 0x80 != 0,
        opcode: b[0] & 0x0f,
        payload: head..head + len,
        len: head + len,
    }))
}

/// A text message as the server kind frames it: the push content inside, or an Engine.IO
/// control packet to answer.
enum Inner<'a> {
    /// Message content (werkmann, Nchan: the frame; Socket.IO: the `message` event's string).
    Content(&'a [u8]),
    /// An Engine.IO ping (`2`): answer `3`.
    Ping,
    /// Anything else (Engine.IO open/connect packets).
    Other,
}

fn inner(flavor: Flavor, msg: &[u8]) -> Inner<'_> {
    match flavor {
        Flavor::Werkmann | Flavor::Nchan | Flavor::Sse | Flavor::NchanSse => Inner::Content(msg),
        Flavor::SocketIo => {
            if msg == b"2" {
                Inner::Ping
            } else if let Some(rest) = msg.strip_prefix(b"42[\"message\",\"") {
                Inner::Content(rest.strip_suffix(b"\"]").unwrap_or(rest))
            } else {
                Inner::Other
            }
        }
        // The pushes are events named `e`; member events and the like are not pushes.
        Flavor::Pusher | Flavor::PusherPresence => match pusher::field(msg, "event") {
            Some(e) if e == pusher::EVENT.as_bytes() => {
                pusher::field(msg, "data").map_or(Inner::Content(msg), Inner::Content)
            }
            Some(b"pusher:ping") => Inner::Ping,
            _ => Inner::Other,
        },
    }
}

/// The answer to a protocol-level ping ([`Inner::Ping`]).
fn pong(flavor: Flavor) -> &'static [u8] {
    match flavor {
        Flavor::Pusher | Flavor::PusherPresence => pusher::PONG,
        _ => b"3",
    }
}

/// Parse the greeting `Worker-ID:{W} Verbindungs-ID:{C} verbunden`.
fn greeting(text: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(text).ok()?;
    let field = |key: &str| {
        let rest = &text[text.find(key)? + key.len()..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '\\')
            .unwrap_or(rest.len());
        Some(rest[..end].to_string())
    };
    Some((field("Worker-ID:")?, field("Verbindungs-ID:")?))
}

/// Connect client `idx` from [`source_ip`] to `target` (TCP only, `TCP_NODELAY` set); with
/// `rcvbuf`, the socket's receive buffer is set to that many bytes first.
pub async fn connect_from(idx: u32, target: SocketAddr, rcvbuf: Option<u32>) -> Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(bytes) = rcvbuf {
        sock.set_recv_buffer_size(bytes).context("SO_RCVBUF")?;
    }
    // Pick the source port at connect time, so the 4-tuple (not the address) must be unique.
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    sock.bind(SocketAddr::new(source_ip(idx).into(), 0))
        .context("bind")?;
    let stream = sock.connect(target).await.context("connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connect client `idx` from [`source_ip`] to `target` and complete the WebSocket handshake
/// for `path`; with `rcvbuf`, the socket's receive buffer is set to that many bytes first.
/// Returns the stream and the bytes read past the handshake response.
pub async fn connect_ws(
    idx: u32,
    target: SocketAddr,
    path: &str,
    rcvbuf: Option<u32>,
) -> Result<(TcpStream, Vec<u8>)> {
    let mut stream = connect_from(idx, target, rcvbuf).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]);
            ensure!(
                head.starts_with("HTTP/1.1 101") && head.contains(WS_ACCEPT),
                "handshake refused: {}",
                head.lines().next().unwrap_or("")
            );
            buf.drain(..p + 4);
            return Ok((stream, buf));
        }
        ensure!(buf.len() < 16384, "handshake response too long");
        ensure!(
            stream.read_buf(&mut buf).await? > 0,
            "closed during the handshake"
        );
    }
}

/// Connect client `idx` and wait until it can receive pushes: the WebSocket handshake, the
/// Engine.IO/Socket.IO connect for Socket.IO, and the greeting for werkmann and Socket.IO.
/// Returns the stream, its address and the bytes read past the greeting.
/// With `rcvbuf`, the socket's receive buffer is set to that many bytes before connecting
/// (so the window the client offers stays that small).
pub async fn open(
    idx: u32,
    target: SocketAddr,
    flavor: Flavor,
    rcvbuf: Option<u32>,
) -> Result<(TcpStream, Address, Vec<u8>)> {
    let path = match flavor {
        Flavor::Werkmann => "/".to_string(),
        Flavor::Nchan => format!("/sub/c{idx}"),
        Flavor::SocketIo => "/socket.io/?EIO=4&transport=websocket".to_string(),
        Flavor::Pusher | Flavor::PusherPresence => pusher::ws_path(),
        Flavor::Sse | Flavor::NchanSse => return crate::sse::open(idx, target, flavor).await,
    };
    let (mut stream, mut buf) = connect_ws(idx, target, &path, rcvbuf).await?;
    if matches!(flavor, Flavor::Pusher | Flavor::PusherPresence) {
        return open_pusher(stream, buf, idx, flavor).await;
    }
    if flavor == Flavor::Nchan {
        let addr = Address {
            idx,
            worker: String::new(),
            conn: format!("c{idx}"),
        };
        return Ok((stream, addr, buf));
    }
    let mut out = Vec::new();
    loop {
        while let Some(f) = server_frame(&buf)? {
            ensure!(f.fin, "fragmented message before the greeting");
            let msg = buf[f.payload].to_vec();
            buf.drain(..f.len);
            match f.opcode {
                0x1 | 0x2 => {}
                0x8 => bail!("closed before the greeting"),
                0x9 => {
                    client_frame(0xA, &msg, &mut out);
                    continue;
                }
                _ => continue,
            }
            if flavor == Flavor::SocketIo && msg.starts_with(b"0{") {
                client_frame(0x1, b"40", &mut out);
            }
            match inner(flavor, &msg) {
                Inner::Content(text) => {
                    let (worker, conn) = greeting(text).with_context(|| {
                        format!("not a greeting: {:?}", String::from_utf8_lossy(text))
                    })?;
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                    }
                    return Ok((stream, Address { idx, worker, conn }, buf));
                }
                Inner::Ping => client_frame(0x1, pong(flavor), &mut out),
                Inner::Other => {}
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        ensure!(
            stream.read_buf(&mut buf).await? > 0,
            "closed before the greeting"
        );
    }
}

/// The Pusher handshake after the WebSocket one: read `pusher:connection_established` (its
/// socket id is the client's address), subscribe (see [`pusher::subscribe`]) and wait for
/// `pusher_internal:subscription_succeeded`; a `pusher:error` or `pusher:subscription_error`
/// fails the open.
async fn open_pusher(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    idx: u32,
    flavor: Flavor,
) -> Result<(TcpStream, Address, Vec<u8>)> {
    let mut socket_id: Option<String> = None;
    let mut out = Vec::new();
    loop {
        while let Some(f) = server_frame(&buf)? {
            ensure!(f.fin, "fragmented message before the subscription");
            let msg = buf[f.payload].to_vec();
            buf.drain(..f.len);
            match f.opcode {
                0x1 | 0x2 => {}
                0x8 => bail!("closed before the subscription"),
                0x9 => {
                    client_frame(0xA, &msg, &mut out);
                    continue;
                }
                _ => continue,
            }
            let event = pusher::field(&msg, "event").unwrap_or_default();
            match event {
                b"pusher:connection_established" if socket_id.is_none() => {
                    let id = pusher::socket_id(&msg).context("connection_established")?;
                    client_frame(
                        0x1,
                        pusher::subscribe(flavor, idx, &id).as_bytes(),
                        &mut out,
                    );
                    socket_id = Some(id);
                }
                b"pusher_internal:subscription_succeeded" => {
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                    }
                    let conn = socket_id.context("subscribed before connection_established")?;
                    let worker = String::new();
                    return Ok((stream, Address { idx, worker, conn }, buf));
                }
                b"pusher:ping" => client_frame(0x1, pusher::PONG, &mut out),
                b"pusher:error" | b"pusher:subscription_error" => {
                    bail!("{}", String::from_utf8_lossy(&msg))
                }
                _ => {}
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        ensure!(
            stream.read_buf(&mut buf).await? > 0,
            "closed before the subscription"
        );
    }
}

/// Register an opened client and receive until the connection closes (or the task is
/// aborted by its group's close).
pub async fn run(
    mut stream: TcpStream,
    addr: &Address,
    mut left: Vec<u8>,
    flavor: Flavor,
    group: u32,
    shared: Arc<Shared>,
) {
    if flavor.is_sse() {
        return crate::sse::run(stream, addr, left, flavor, group, shared).await;
    }
    let state = Arc::new(Mutex::new(ClientState::new(addr.idx)));
    shared.add(group, state.clone());
    let mut out = Vec::new();
    let mut frag = Vec::new();
    let mut batch = Batch::default();
    // Bytes that came with the greeting.
    if !left.is_empty() {
        let now = mono_ns();
        let mut st = state.lock().expect("client");
        match process(
            &left, flavor, &mut st, &shared, now, &mut batch, &mut out, &mut frag,
        ) {
            Ok((used, false)) => {
                left.drain(..used);
            }
            _ => return,
        }
        drop(st);
        shared.flush(&mut batch, now);
    }
    loop {
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if stream.readable().await.is_err() {
            return;
        }
        let step = READ_BUF.with(|cell| -> Result<bool> {
            let mut rb = cell.borrow_mut();
            let n = match stream.try_read(&mut rb[..]) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e.into()),
            };
            let now = mono_ns();
            let mut st = state.lock().expect("client");
            let closed = if left.is_empty() {
                let (used, closed) = process(
                    &rb[..n],
                    flavor,
                    &mut st,
                    &shared,
                    now,
                    &mut batch,
                    &mut out,
                    &mut frag,
                )?;
                left.extend_from_slice(&rb[used..n]);
                closed
            } else {
                left.extend_from_slice(&rb[..n]);
                let (used, closed) = process(
                    &left, flavor, &mut st, &shared, now, &mut batch, &mut out, &mut frag,
                )?;
                left.drain(..used);
                closed
            };
            drop(st);
            shared.flush(&mut batch, now);
            if left.is_empty() && left.capacity() > 4096 {
                left = Vec::new();
            }
            Ok(!closed)
        });
        match step {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                eprintln!("pushbench worker: client {}: {e:#}", addr.idx);
                return;
            }
        }
    }
}

/// How often a slow client checks whether the server dropped it.
const SLOW_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// A slow client after its greeting: it never reads again. Every 200 ms it sends a small
/// ping frame and checks its socket's error: a server that dropped it answers the ping with a
/// reset (Linux resets a closed socket that receives data), so the drop is seen within ~200 ms
/// without reading anything. Returns when it was dropped (recorded in `shared`).
pub async fn hold(stream: TcpStream, addr: &Address, shared: Arc<Shared>) {
    let mut ping = Vec::new();
    client_frame(0x9, b"slow", &mut ping);
    loop {
        tokio::time::sleep(SLOW_CHECK).await;
        let gone = match stream.take_error() {
            Ok(Some(_)) | Err(_) => true,
            Ok(None) => match stream.try_write(&ping) {
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            },
        };
        if gone {
            shared.dropped(addr.idx);
            return;
        }
    }
}

/// Handle the complete frames at the start of `data`; returns the bytes used and whether a
/// close frame came.
#[allow(clippy::too_many_arguments)]
fn process(
    data: &[u8],
    flavor: Flavor,
    st: &mut ClientState,
    shared: &Shared,
    now: u64,
    batch: &mut Batch,
    out: &mut Vec<u8>,
    frag: &mut Vec<u8>,
) -> Result<(usize, bool)> {
    let mut pos = 0;
    while let Some(f) = server_frame(&data[pos..])? {
        let (fin, opcode) = (f.fin, f.opcode);
        let payload = &data[pos + f.payload.start..pos + f.payload.end];
        pos += f.len;
        let msg: &[u8] = match (opcode, fin) {
            (0x8, _) => return Ok((pos, true)),
            (0x9, _) => {
                client_frame(0xA, payload, out);
                continue;
            }
            (0xA, _) => continue,
            (0x1 | 0x2, true) if frag.is_empty() => payload,
            (0x0..=0x2, false) => {
                frag.extend_from_slice(payload);
                continue;
            }
            (0x0, true) => {
                frag.extend_from_slice(payload);
                &frag[..]
            }
            _ => continue,
        };
        match inner(flavor, msg) {
            Inner::Content(c) => shared.on_content(st, c, now, batch),
            Inner::Ping => client_frame(0x1, pong(flavor), out),
            Inner::Other => {}
        }
        if opcode == 0x0 {
            frag.clear();
        }
    }
    Ok((pos, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings() {
        assert_eq!(
            greeting(b"Worker-ID:3 Verbindungs-ID:17 verbunden\n"),
            Some(("3".into(), "17".into()))
        );
        assert_eq!(
            greeting(b"Worker-ID:0 Verbindungs-ID:aB-_9 verbunden\\n"),
            Some(("0".into(), "aB-_9".into()))
        );
        assert_eq!(greeting(b"hello"), None);
    }

    #[test]
    fn socket_io_packets() {
        assert!(matches!(
            inner(Flavor::SocketIo, b"42[\"message\",\"P1.b2.0.3.x\"]"),
            Inner::Content(b"P1.b2.0.3.x")
        ));
        assert!(matches!(inner(Flavor::SocketIo, b"2"), Inner::Ping));
        assert!(matches!(inner(Flavor::SocketIo, b"40{}"), Inner::Other));
    }

    #[test]
    fn checks_broadcasts_and_targets() {
        let sh = Shared::default();
        sh.start_phase(5, Kind::Broadcast, 3, 1);
        let mut st = ClientState {
            idx: 9,
            ..ClientState::default()
        };
        let mut b = Batch::default();
        for seq in [0, 1, 1, 2] {
            let p = crate::proto::payload(5, Kind::Broadcast, seq, 0, 1, 32);
            sh.on_content(&mut st, p.as_bytes(), 2, &mut b);
        }
        let p = crate::proto::payload(4, Kind::Broadcast, 0, 0, 1, 32);
        sh.on_content(&mut st, p.as_bytes(), 2, &mut b);
        sh.flush(&mut b, 2);
        let pr = sh.progress();
        assert_eq!((pr.received, pr.dup, pr.stray), (3, 1, 1));

        sh.start_phase(6, Kind::Targeted, 2, 1);
        for (seq, target) in [(0, 9), (0, 9), (1, 8)] {
            let p = crate::proto::payload(6, Kind::Targeted, seq, target, 1, 32);
            sh.on_content(&mut st, p.as_bytes(), 2, &mut b);
        }
        sh.flush(&mut b, 2);
        let pr = sh.progress();
        assert_eq!((pr.received, pr.dup, pr.wrong), (1, 1, 1));
    }

    #[test]
    fn checks_uid_and_group_pushes() {
        let sh = Shared::default();
        let push = |sh: &Shared, st: &mut ClientState, kind, seq, target| {
            let mut b = Batch::default();
            let p = crate::proto::payload(7, kind, seq, target, 1, 32);
            sh.on_content(st, p.as_bytes(), 2, &mut b);
            sh.flush(&mut b, 2);
        };
        // Two devices per uid: clients 8 and 9 are uid 4's; each push is due at both, once.
        sh.start_phase(7, Kind::Uid, 3, 2);
        let mut c8 = ClientState {
            idx: 8,
            ..ClientState::default()
        };
        let mut c9 = ClientState {
            idx: 9,
            ..ClientState::default()
        };
        push(&sh, &mut c8, Kind::Uid, 0, 4);
        push(&sh, &mut c9, Kind::Uid, 0, 4);
        push(&sh, &mut c9, Kind::Uid, 0, 4);
        push(&sh, &mut c9, Kind::Uid, 1, 3);
        let pr = sh.progress();
        assert_eq!((pr.received, pr.dup, pr.wrong), (2, 1, 1));
        // Groups of 10: client 8 is in group 0.
        sh.start_phase(7, Kind::Group, 4, 10);
        push(&sh, &mut c8, Kind::Group, 0, 0);
        push(&sh, &mut c8, Kind::Group, 0, 0);
        push(&sh, &mut c8, Kind::Group, 1, 1);
        push(&sh, &mut c9, Kind::Group, 2, 0);
        let pr = sh.progress();
        assert_eq!((pr.received, pr.dup, pr.wrong), (2, 1, 1));
    }
}
