//! A client of the resuming WebSocket protocol (`ws://NODE/werkmann?channel=Broadcast`, see
//! `apps/src/push/stream.rs` and `docs/recovery.md`) for the fault rows: it follows
//! `Broadcast`, keeps the last id it saw, and on a reset order from the coordinator aborts its
//! TCP connection (`SO_LINGER` 0, then close: a RST) and reconnects at once — to the next
//! node — with `last_event_id` set to that id. It checks every frame and records which pushes
//! (their content is their sequence number) it got, how long each resume took (from the
//! reconnect's start to the `recovery` frame) and every `recovered: false`, with whether the
//! history really no longer covered the gap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

use crate::client::{client_frame, connect_ws, server_frame};
use crate::clock::mono_ns;
use crate::hist::Hist;

/// The channel every fault client follows (the seed's broadcasts).
pub const CHANNEL: &str = "Broadcast";

/// Wait after a refused or failed (re)connect before the next try.
const RETRY: Duration = Duration::from_millis(50);

/// What every client of a fault row shares with the coordinator.
pub struct Shared {
    /// Pushes of the row (sequence numbers `0..pushes`); anything else is a bad frame.
    pub pushes: u32,
    /// Messages the server keeps per name (`--history`): a `recovered: false` for a gap no
    /// larger than this (in one epoch) was not due.
    pub history: u64,
    /// The WebSocket nodes; client `i` starts at node `i mod n` and moves to the next one on
    /// every reconnect.
    pub nodes: Vec<SocketAddr>,
    /// Clients standing (their first `ready` came).
    pub ready: AtomicU64,
    /// Clients whose first connection failed for good.
    pub failed: AtomicU64,
    /// Distinct pushes received, summed over the clients.
    pub distinct: AtomicU64,
    /// Set before the last wake-up: clients then return what they saw.
    pub stop: AtomicBool,
    /// Resume latencies: from a reconnect's start to its `recovery` frame.
    pub resume: Mutex<Hist>,
    /// The first error any client met, for the row's notes.
    pub first_error: Mutex<Option<String>>,
    /// Handshakes in flight while the clients first connect.
    pub opening: Semaphore,
}

impl Shared {
    /// Nothing seen yet: `pushes` of a row on `nodes` with `history` kept per name, at most
    /// `opening` handshakes at once while the clients first connect.
    pub fn new(pushes: u32, history: u64, nodes: Vec<SocketAddr>, opening: usize) -> Shared {
        Shared {
            pushes,
            history,
            nodes,
            ready: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            distinct: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            resume: Mutex::new(Hist::default()),
            first_error: Mutex::new(None),
            opening: Semaphore::new(opening),
        }
    }

    fn error(&self, e: String) {
        self.first_error.lock().expect("error").get_or_insert(e);
    }
}

/// What one client saw over the whole row.
#[derive(Debug, Default)]
pub struct Seen {
    /// Bit `s` set: push `s` arrived.
    bits: Vec<u64>,
    /// Pushes that arrived more than once.
    pub dup: u64,
    /// Pushes that arrived after a later one (not duplicates).
    pub out_of_order: u64,
    /// Frames that are not the protocol's, or out of place (a message before `ready` or
    /// `recovery`, an unknown type, a text frame, a message whose id does not follow).
    pub bad: u64,
    /// Text frames: the seed's broadcast text, which readers must not get.
    pub text: u64,
    /// Reconnects done (resets and reconnects after the server closed).
    pub reconnects: u64,
    /// Handshakes refused or failed, first connect and reconnects.
    pub refused: u64,
    /// Connections the server closed or broke (not reset by the client).
    pub dropped: u64,
    /// `recovery` frames saying `recovered: false`.
    pub not_recovered: u64,
    /// Of those, the ones where the history still covered the gap (not due).
    pub not_recovered_covered: u64,
    /// Pushes missing inside a gap a `recovered: false` announced (not silent).
    ranges: Vec<(u32, u32)>,
    /// Whether the first connection stood (`ready`).
    pub stood: bool,
    /// The highest push received so far.
    top: Option<u32>,
    /// The offset of the first `ready` (messages then follow from `ready + seq + 1`).
    base: Option<u64>,
    /// After a `recovered: false`: the first push of the announced gap.
    gap_from: Option<u32>,
}

impl Seen {
    fn new(pushes: u32) -> Seen {
        Seen {
            bits: vec![0; pushes.div_ceil(64) as usize],
            ..Seen::default()
        }
    }

    /// `(missing silently, missing in announced gaps)` of the pushes `published` says were
    /// published; nothing is due at a client whose first connection never stood.
    pub fn missing(&self, published: &[bool]) -> (u64, u64) {
        if !self.stood {
            return (0, 0);
        }
        let (mut lost, mut announced) = (0, 0);
        for (s, _) in published.iter().enumerate().filter(|(_, ok)| **ok) {
            let s = s as u32;
            if self.bits[(s / 64) as usize] & (1 << (s % 64)) != 0 {
                continue;
            }
            // A gap announced last that no push followed runs to the end.
            let open = self.gap_from.is_some_and(|a| a <= s);
            if open || self.ranges.iter().any(|&(a, b)| a <= s && s < b) {
                announced += 1;
            } else {
                lost += 1;
            }
        }
        (lost, announced)
    }

    /// Record push `seq` (`shared.distinct` counts it the first time).
    fn push(&mut self, seq: u32, shared: &Shared) {
        let (w, b) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.bits[w] & b != 0 {
            self.dup += 1;
            return;
        }
        self.bits[w] |= b;
        shared.distinct.fetch_add(1, Ordering::Relaxed);
        if let Some(from) = self.gap_from.take() {
            self.ranges.push((from, seq));
        }
        match self.top {
            Some(t) if seq < t => self.out_of_order += 1,
            _ => self.top = Some(seq),
        }
    }
}

/// One frame of the protocol (every field it may carry; unknown ones are ignored).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    id: Option<&'a str>,
    #[serde(default)]
    channel: Option<&'a str>,
    #[serde(default)]
    data: Option<&'a str>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    client_id: Option<&'a str>,
}

/// `(epoch, offset)` of an id `EPOCH:OFFSET` (one name).
fn position(id: &str) -> Option<(u64, u64)> {
    let (e, o) = id.split_once(':')?;
    Some((e.parse().ok()?, o.parse().ok()?))
}

/// The handshake path: a new reader, or a resumed one from `last` (URL-encoded).
fn path(last: Option<&str>) -> String {
    match last {
        None => format!("/werkmann?channel={CHANNEL}"),
        Some(id) => format!(
            "/werkmann?channel={CHANNEL}&last_event_id={}",
            id.replace(':', "%3A").replace(',', "%2C")
        ),
    }
}

/// Where a connection is in the protocol.
#[derive(PartialEq)]
enum Stage {
    /// Nothing yet: `welcome` is due.
    Hello,
    /// Welcomed: `ready` (new reader) or `recovery` (resumed) is due.
    Welcomed,
    /// Reading messages.
    Live,
}

/// Client `idx`: connect, follow, obey resets until `shared.stop`, then hand back what it saw.
pub async fn run(idx: u32, shared: Arc<Shared>, wake: Arc<Notify>) -> Seen {
    let mut seen = Seen::new(shared.pushes);
    let mut last: Option<String> = None;
    let mut node = idx as usize;
    let mut first = true;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return seen;
        }
        let target = shared.nodes[node % shared.nodes.len()];
        let started = mono_ns();
        let conn = if first {
            let _permit = shared.opening.acquire().await;
            connect_ws(idx, target, &path(None), None).await
        } else {
            connect_ws(idx, target, &path(last.as_deref()), None).await
        };
        let (stream, buf) = match conn {
            Ok(c) => c,
            Err(e) => {
                seen.refused += 1;
                shared.error(format!("client {idx} at {target}: {e:#}"));
                if first && seen.refused >= 3 {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    return seen;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let resumed = !first;
        first = false;
        match follow(
            stream, buf, &mut seen, &mut last, resumed, started, &shared, &wake,
        )
        .await
        {
            Ok(End::Reset) => {}
            Ok(End::Stop) => return seen,
            Err(e) => {
                seen.dropped += 1;
                shared.error(format!("client {idx} at {target}: {e:#}"));
                if !seen.stood {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    return seen;
                }
            }
        }
        seen.reconnects += 1;
        node += 1;
    }
}

/// Why a connection ended well.
enum End {
    /// The coordinator asked for a reset: the connection was aborted.
    Reset,
    /// The row is over.
    Stop,
}

/// Read one connection's frames until a reset or the end; `Err` when the server closed or
/// broke it.
#[allow(clippy::too_many_arguments)]
async fn follow(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    seen: &mut Seen,
    last: &mut Option<String>,
    resumed: bool,
    started: u64,
    shared: &Shared,
    wake: &Notify,
) -> Result<End> {
    let mut stage = Stage::Hello;
    let asked = last.clone();
    let mut out = Vec::new();
    loop {
        // Every complete frame in the buffer.
        let mut used = 0;
        while let Some(f) = server_frame(&buf[used..])? {
            let payload = &buf[used + f.payload.start..used + f.payload.end];
            match (f.opcode, f.fin) {
                (0x2, true) => {
                    let now = mono_ns();
                    on_frame(
                        payload, seen, last, &asked, &mut stage, resumed, started, now, shared,
                    )
                }
                (0x9, _) => client_frame(0xA, payload, &mut out),
                (0xA, _) => {}
                (0x8, _) => bail!("the server closed the connection"),
                (0x1, true) => {
                    // No app pushes to these connections here: a text frame would be the
                    // seed's broadcast text, which readers must not get.
                    seen.text += 1;
                    shared.error(format!(
                        "a text frame {:?} ({}, {}, last id {})",
                        String::from_utf8_lossy(&payload[..payload.len().min(200)]),
                        if resumed {
                            "resumed"
                        } else {
                            "first connection"
                        },
                        match stage {
                            Stage::Hello => "before welcome",
                            Stage::Welcomed => "before ready or recovery",
                            Stage::Live => "after ready or recovery",
                        },
                        last.as_deref().unwrap_or("-")
                    ));
                }
                _ => {
                    seen.bad += 1;
                    shared.error(format!(
                        "a frame of opcode {} (fin {}): {:?} (resumed: {resumed}, last id {})",
                        f.opcode,
                        f.fin,
                        String::from_utf8_lossy(&payload[..payload.len().min(200)]),
                        last.as_deref().unwrap_or("-")
                    ));
                }
            }
            used += f.len;
        }
        buf.drain(..used);
        if !out.is_empty() {
            stream.write_all(&out).await.context("pong")?;
            out.clear();
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        tokio::select! {
            biased;
            _ = wake.notified() => {
                if shared.stop.load(Ordering::Relaxed) {
                    return Ok(End::Stop);
                }
                // An abortive close: the server sees a RST, as from a vanished client.
                abort(&stream)?;
                drop(stream);
                return Ok(End::Reset);
            }
            n = stream.read_buf(&mut buf) => {
                if n.context("read")? == 0 {
                    bail!("the server closed the connection");
                }
            }
        }
    }
}

/// Set `SO_LINGER` to 0, so that closing the socket sends a RST (and no FIN). (Tokio's
/// `set_linger` is deprecated for blocking on drop, which a zero linger never does.)
pub(crate) fn abort(stream: &TcpStream) -> Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a live `linger`.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_LINGER: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Count a bad frame; the first one any client met goes into the row's notes.
fn bad(seen: &mut Seen, shared: &Shared, why: &str, payload: &[u8], asked: &Option<String>) {
    seen.bad += 1;
    shared.error(format!(
        "{why}: {} (resumed from {})",
        String::from_utf8_lossy(&payload[..payload.len().min(200)]),
        asked.as_deref().unwrap_or("-")
    ));
}

/// One binary frame.
#[allow(clippy::too_many_arguments)]
fn on_frame(
    payload: &[u8],
    seen: &mut Seen,
    last: &mut Option<String>,
    asked: &Option<String>,
    stage: &mut Stage,
    resumed: bool,
    started: u64,
    now: u64,
    shared: &Shared,
) {
    let Ok(f) = serde_json::from_slice::<Frame>(payload) else {
        bad(seen, shared, "not JSON", payload, asked);
        return;
    };
    match (f.kind, &*stage) {
        ("welcome", Stage::Hello) if f.client_id.is_some() => *stage = Stage::Welcomed,
        ("ready", Stage::Welcomed) if !resumed => {
            let Some(p) = f.id.and_then(position) else {
                bad(seen, shared, "ready without a position", payload, asked);
                return;
            };
            if !seen.stood {
                seen.stood = true;
                seen.base = Some(p.1);
                shared.ready.fetch_add(1, Ordering::Relaxed);
            }
            *last = f.id.map(String::from);
            *stage = Stage::Live;
        }
        ("recovery", Stage::Welcomed) if resumed => {
            shared
                .resume
                .lock()
                .expect("hist")
                .record(now.saturating_sub(started));
            let (Some(id), Some(recovered)) = (f.id, f.recovered) else {
                bad(
                    seen,
                    shared,
                    "recovery without id or recovered",
                    payload,
                    asked,
                );
                return;
            };
            if recovered {
                // A recovered reader stands where it asked to resume from.
                if asked.as_deref() != Some(id) {
                    bad(
                        seen,
                        shared,
                        "a recovered resume not where it asked",
                        payload,
                        asked,
                    );
                }
            } else {
                seen.not_recovered += 1;
                let gap = match (asked.as_deref().and_then(position), position(id)) {
                    (Some((e0, o0)), Some((e1, o1))) if e0 == e1 => Some(o1.saturating_sub(o0)),
                    _ => None,
                };
                if gap.is_some_and(|g| g <= shared.history) {
                    seen.not_recovered_covered += 1;
                }
                seen.gap_from = Some(seen.top.map_or(0, |t| t + 1));
            }
            *last = Some(id.to_string());
            *stage = Stage::Live;
        }
        ("message", Stage::Live) => {
            let seq = f.data.and_then(|d| d.parse::<u32>().ok());
            let (Some(seq), Some(id), Some(CHANNEL)) = (seq, f.id, f.channel) else {
                bad(
                    seen,
                    shared,
                    "a message without a push, id or Broadcast",
                    payload,
                    asked,
                );
                return;
            };
            if seq >= shared.pushes {
                bad(seen, shared, "a push out of range", payload, asked);
                return;
            }
            // Push `seq` is the name's message `base + seq + 1`: nothing else is published to
            // it (and its history does not start again within a row).
            let follows = position(id)
                .is_some_and(|(_, o)| seen.base.map_or(true, |b| o == b + u64::from(seq) + 1));
            if !follows {
                bad(
                    seen,
                    shared,
                    "a message id that is not the push's position",
                    payload,
                    asked,
                );
            }
            seen.push(seq, shared);
            *last = Some(id.to_string());
        }
        _ => bad(seen, shared, "out of place", payload, asked),
    }
}

/// Start `n` clients; returns each one's wake-up (resets, and the end) and its task.
pub fn start(
    n: u32,
    shared: &Arc<Shared>,
) -> (Vec<Arc<Notify>>, Vec<tokio::task::JoinHandle<Seen>>) {
    let mut wakes = Vec::with_capacity(n as usize);
    let mut tasks = Vec::with_capacity(n as usize);
    for idx in 0..n {
        let wake = Arc::new(Notify::new());
        wakes.push(wake.clone());
        tasks.push(tokio::spawn(run(idx, shared.clone(), wake)));
    }
    (wakes, tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(pushes: u32) -> Shared {
        Shared::new(pushes, 100, Vec::new(), 1)
    }

    /// Feed one frame's JSON as a client at `stage` would take it.
    fn feed(
        json: &str,
        seen: &mut Seen,
        last: &mut Option<String>,
        asked: &Option<String>,
        stage: &mut Stage,
        resumed: bool,
        sh: &Shared,
    ) {
        on_frame(json.as_bytes(), seen, last, asked, stage, resumed, 0, 1, sh);
    }

    #[test]
    fn a_resumed_reader_is_checked_push_by_push() {
        let sh = shared(10);
        let mut seen = Seen::new(10);
        let mut last = None;
        let mut st = Stage::Hello;
        let none = None;
        feed(
            r#"{"type":"welcome","client_id":"1-2"}"#,
            &mut seen,
            &mut last,
            &none,
            &mut st,
            false,
            &sh,
        );
        feed(
            r#"{"type":"ready","id":"7:3"}"#,
            &mut seen,
            &mut last,
            &none,
            &mut st,
            false,
            &sh,
        );
        for (seq, off) in [(0, 4), (1, 5)] {
            let m = format!(
                r#"{{"channel":"Broadcast","data":"{seq}","id":"7:{off}","type":"message"}}"#
            );
            feed(&m, &mut seen, &mut last, &none, &mut st, false, &sh);
        }
        assert_eq!(last.as_deref(), Some("7:5"));
        assert_eq!((seen.bad, seen.dup), (0, 0));
        // Reset; the resume asks from 7:5 and is told the history no longer covers it,
        // though only 3 messages passed: not due.
        let asked = last.clone();
        let mut st = Stage::Welcomed;
        feed(
            r#"{"type":"recovery","recovered":false,"lost":["Broadcast"],"id":"7:8"}"#,
            &mut seen,
            &mut last,
            &asked,
            &mut st,
            true,
            &sh,
        );
        assert_eq!((seen.not_recovered, seen.not_recovered_covered), (1, 1));
        let m = r#"{"channel":"Broadcast","data":"5","id":"7:9","type":"message"}"#;
        feed(m, &mut seen, &mut last, &asked, &mut st, true, &sh);
        feed(m, &mut seen, &mut last, &asked, &mut st, true, &sh);
        assert_eq!(seen.dup, 1);
        let published = [true; 10];
        // 2, 3, 4 fall in the announced gap; 6..10 never came.
        assert_eq!(seen.missing(&published), (4, 3));
        // A text-like frame out of place is bad.
        feed(
            r#"{"type":"ready","id":"7:9"}"#,
            &mut seen,
            &mut last,
            &asked,
            &mut st,
            true,
            &sh,
        );
        assert_eq!(seen.bad, 1);
        assert_eq!(sh.distinct.load(Ordering::Relaxed), 3);
        // Another resume, not recovered, and nothing after it: the rest was announced.
        let asked = last.clone();
        let mut st = Stage::Welcomed;
        feed(
            r#"{"type":"recovery","recovered":false,"lost":["Broadcast"],"id":"8:1"}"#,
            &mut seen,
            &mut last,
            &asked,
            &mut st,
            true,
            &sh,
        );
        assert_eq!((seen.not_recovered, seen.not_recovered_covered), (2, 1));
        assert_eq!(seen.missing(&published), (0, 7));
    }

    #[test]
    fn resume_paths_encode_the_id() {
        assert_eq!(path(None), "/werkmann?channel=Broadcast");
        assert_eq!(
            path(Some("12:5")),
            "/werkmann?channel=Broadcast&last_event_id=12%3A5"
        );
        assert_eq!(position("12:5"), Some((12, 5)));
        assert_eq!(position("x"), None);
    }
}
