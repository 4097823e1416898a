//! A resuming Server-Sent Events stream for the SSE resume row (`sse_rows.rs`), as a
//! browser's `EventSource` behaves: it follows the broadcast stream (werkmann's
//! `/sse?channel=Broadcast`, Nchan's `/ssesub/broadcast`), keeps the last `id:` it saw, and on
//! a drop order from the coordinator aborts its TCP connection (`SO_LINGER` 0: a RST) and
//! reconnects [`RECONNECT_AFTER`] later (werkmann's `retry: 1000`, as a browser waits) with
//! `Last-Event-ID` set to that id, so that it misses the pushes of that second. Pushes are `data: SEQ` (0, 1, 2, …;
//! `data: r` is a readiness push, only its id counts). It records which pushes it got (each
//! once, in order), and how long each resume took: from the reconnect's start until it holds
//! every push published before that start (the ones it missed, replayed from the server's
//! history, or at once when it missed none). werkmann's `event: recovery` with
//! `"recovered":false` is counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

use crate::clock::mono_ns;
use crate::hist::Hist;
use crate::proto::Flavor;
use crate::resumer::abort;
use crate::sse::{self, Body, Event, Events};

/// The readiness push's content.
pub const READY: &str = "r";

/// Wait after a refused or failed (re)connect before the next try.
const RETRY: Duration = Duration::from_millis(50);

/// How long a dropped stream stays away before it reconnects (an `EventSource` waits its
/// `retry:` time, werkmann's 1000 ms; drops ordered meanwhile are ignored).
pub const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// What every stream of the row shares with the coordinator.
pub struct Shared {
    /// Pushes of the row (`data: 0` … `data: pushes-1`); anything else is bad.
    pub pushes: u32,
    /// The server's stream port.
    pub target: SocketAddr,
    /// Which server.
    pub flavor: Flavor,
    /// Streams whose first connection answered with an event stream.
    pub opened: AtomicU64,
    /// Streams that stand: they have an id to resume from.
    pub stood: AtomicU64,
    /// Streams whose first connection failed for good.
    pub failed: AtomicU64,
    /// Distinct pushes received, summed over the streams.
    pub distinct: AtomicU64,
    /// Pushes answered 2xx so far (the pacer publishes one at a time, in order): a resume
    /// is done once the stream holds this many, as read when it started.
    pub published: AtomicU32,
    /// Set before the last wake-up: streams then return what they saw.
    pub stop: AtomicBool,
    /// Resume latencies (see the module's text).
    pub resume: Mutex<Hist>,
    /// The first error any stream met, for the row's notes.
    pub first_error: Mutex<Option<String>>,
    /// Connects in flight while the streams first connect.
    pub opening: Semaphore,
}

impl Shared {
    /// Nothing seen yet.
    pub fn new(pushes: u32, target: SocketAddr, flavor: Flavor, opening: usize) -> Shared {
        Shared {
            pushes,
            target,
            flavor,
            opened: AtomicU64::new(0),
            stood: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            distinct: AtomicU64::new(0),
            published: AtomicU32::new(0),
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

/// What one stream saw over the whole row.
#[derive(Debug, Default)]
pub struct Seen {
    /// Bit `s` set: push `s` arrived.
    bits: Vec<u64>,
    /// Pushes that arrived more than once.
    pub dup: u64,
    /// Pushes that arrived after a later one (not duplicates).
    pub out_of_order: u64,
    /// Events that are not the row's (unknown data or event names, ids out of order).
    pub bad: u64,
    /// Reconnects done.
    pub reconnects: u64,
    /// Connects refused or failed, first connect and reconnects.
    pub refused: u64,
    /// Connections the server closed or broke (not dropped by the stream).
    pub dropped: u64,
    /// werkmann's `recovery` events saying `"recovered":false`.
    pub not_recovered: u64,
    /// Pushes published while the stream was away, summed over its resumes: what its
    /// resumes had to replay.
    pub missed: u64,
    /// Whether the stream stood (had an id) before the pushes began.
    pub stood: bool,
    /// The highest push received so far.
    top: Option<u32>,
    /// The first push not received yet.
    next: u32,
    /// A resume under way: (when it started, pushes published then).
    resuming: Option<(u64, u32)>,
    /// The last event id's order.
    last_order: Option<(u64, u64)>,
}

impl Seen {
    fn new(pushes: u32) -> Seen {
        Seen {
            bits: vec![0; pushes.div_ceil(64) as usize],
            ..Seen::default()
        }
    }

    fn has(&self, s: u32) -> bool {
        self.bits
            .get((s / 64) as usize)
            .is_some_and(|w| w & (1 << (s % 64)) != 0)
    }

    /// Pushes `published` says were published that this stream never got (none are due at
    /// a stream that never stood).
    pub fn missing(&self, published: u32) -> u64 {
        if !self.stood {
            return 0;
        }
        (0..published.min(self.bits.len() as u32 * 64))
            .filter(|&s| !self.has(s))
            .count() as u64
    }

    /// Record push `seq` (`shared.distinct` counts it the first time).
    fn push(&mut self, seq: u32, shared: &Shared) {
        if self.has(seq) {
            self.dup += 1;
            return;
        }
        self.bits[(seq / 64) as usize] |= 1 << (seq % 64);
        shared.distinct.fetch_add(1, Ordering::Relaxed);
        match self.top {
            Some(t) if seq < t => self.out_of_order += 1,
            _ => self.top = Some(seq),
        }
        while self.has(self.next) {
            self.next += 1;
        }
    }

    /// Pushes the resume under way (if any) already counted as missed.
    fn resuming_due(&self) -> u32 {
        self.resuming.map_or(0, |(_, due)| due)
    }

    /// A resume under way is done once every push published at its start is here.
    fn check_resumed(&mut self, now: u64, shared: &Shared) {
        if let Some((started, due)) = self.resuming {
            if self.next >= due {
                self.resuming = None;
                shared
                    .resume
                    .lock()
                    .expect("hist")
                    .record(now.saturating_sub(started));
            }
        }
    }

    /// One event of the stream; `last` is the id to resume from.
    fn on_event(&mut self, ev: Event<'_>, last: &mut Option<String>, shared: &Shared) {
        if let Some(id) = ev.id {
            if last.is_none() && !self.stood {
                self.stood = true;
                shared.stood.fetch_add(1, Ordering::Relaxed);
            }
            *last = Some(id.to_string());
        }
        match (ev.event, ev.data) {
            (Some("recovery"), Some(d)) if shared.flavor == Flavor::Sse => {
                if d.windows(17).any(|w| w == b"\"recovered\":false") {
                    self.not_recovered += 1;
                }
                return;
            }
            (None | Some("message"), Some(d)) => {
                if d == READY.as_bytes() {
                    return;
                }
                let seq = std::str::from_utf8(d)
                    .ok()
                    .and_then(|t| t.parse::<u32>().ok());
                match seq {
                    Some(s) if s < shared.pushes => self.push(s, shared),
                    _ => {
                        self.bad += 1;
                        shared.error(format!(
                            "an event not of the row: {:?}",
                            String::from_utf8_lossy(&d[..d.len().min(200)])
                        ));
                    }
                }
            }
            (None, None) => {}
            (e, _) => {
                self.bad += 1;
                shared.error(format!("an unexpected event {e:?}"));
            }
        }
        // A push's id must be after the last push's (a recovery repeats the asked id).
        if let (Some(id), Some(_)) = (ev.id, ev.data) {
            match sse::id_order(id) {
                Some(o) if self.last_order.is_some_and(|l| o <= l) => self.bad += 1,
                Some(o) => self.last_order = Some(o),
                None => self.bad += 1,
            }
        }
    }
}

/// Stream `idx`: connect, follow, obey drops until `shared.stop`, then hand back what it saw.
pub async fn run(idx: u32, shared: Arc<Shared>, wake: Arc<Notify>) -> Seen {
    let mut seen = Seen::new(shared.pushes);
    let mut last: Option<String> = None;
    let mut first = true;
    let path = sse::path(shared.flavor);
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return seen;
        }
        if !first {
            tokio::time::sleep(RECONNECT_AFTER).await;
            // A drop ordered while away is void (a stored wake-up is taken now).
            let _ = tokio::time::timeout(Duration::ZERO, wake.notified()).await;
            if shared.stop.load(Ordering::Relaxed) {
                return seen;
            }
        }
        let started = mono_ns();
        if !first {
            // A resume cut short by another drop is not counted: this one starts now.
            let due = shared.published.load(Ordering::Relaxed);
            seen.missed += u64::from(due.saturating_sub(seen.next.max(seen.resuming_due())));
            seen.resuming = Some((started, due));
        }
        let conn = if first {
            let _permit = shared.opening.acquire().await;
            sse::connect(idx, shared.target, path, None).await
        } else {
            sse::connect(idx, shared.target, path, last.as_deref()).await
        };
        let (stream, body, buf) = match conn {
            Ok(c) => c,
            Err(e) => {
                seen.refused += 1;
                shared.error(format!("stream {idx}: {e:#}"));
                if first && seen.refused >= 3 {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    return seen;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if first {
            shared.opened.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        match follow(stream, body, buf, &mut seen, &mut last, &shared, &wake).await {
            Ok(End::Dropped) => {}
            Ok(End::Stop) => return seen,
            Err(e) => {
                seen.dropped += 1;
                shared.error(format!("stream {idx}: {e:#}"));
            }
        }
        seen.reconnects += 1;
    }
}

/// Why a connection ended well.
enum End {
    /// The coordinator ordered a drop: the connection was aborted.
    Dropped,
    /// The row is over.
    Stop,
}

/// Read one connection's events until a drop order or the end; `Err` when the server
/// closed or broke it.
async fn follow(
    stream: TcpStream,
    mut body: Body,
    mut raw: Vec<u8>,
    seen: &mut Seen,
    last: &mut Option<String>,
    shared: &Shared,
    wake: &Notify,
) -> Result<End> {
    let mut stream = stream;
    let mut text = Vec::new();
    let mut events = Events::default();
    loop {
        let used = body.feed(&raw, &mut text)?;
        raw.drain(..used);
        let used = events.feed(&text, |ev| seen.on_event(ev, last, shared));
        text.drain(..used);
        seen.check_resumed(mono_ns(), shared);
        if body.ended {
            bail!("the server ended the stream");
        }
        if raw.capacity() - raw.len() < 1024 {
            raw.reserve(4096);
        }
        tokio::select! {
            biased;
            _ = wake.notified() => {
                if shared.stop.load(Ordering::Relaxed) {
                    return Ok(End::Stop);
                }
                abort(&stream)?;
                drop(stream);
                return Ok(End::Dropped);
            }
            n = stream.read_buf(&mut raw) => {
                if n.context("read")? == 0 {
                    bail!("the server closed the connection");
                }
            }
        }
    }
}

/// Start `n` streams; returns each one's wake-up (drops, and the end) and its task.
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

    fn feed(seen: &mut Seen, last: &mut Option<String>, sh: &Shared, text: &str) {
        let mut e = Events::default();
        e.feed(text.as_bytes(), |ev| seen.on_event(ev, last, sh));
    }

    #[test]
    fn a_dropped_stream_resumes_and_is_checked_push_by_push() {
        let sh = Shared::new(6, "127.0.0.1:1".parse().unwrap(), Flavor::Sse, 1);
        let mut seen = Seen::new(6);
        let mut last = None;
        // werkmann: the standing id, a readiness push, pushes 0 and 1.
        feed(&mut seen, &mut last, &sh, "id: 7:1\n\nid: 7:2\ndata: r\n\n");
        assert!(seen.stood);
        feed(
            &mut seen,
            &mut last,
            &sh,
            "id: 7:3\ndata: 0\n\nid: 7:4\ndata: 1\n\n",
        );
        assert_eq!(last.as_deref(), Some("7:4"));
        // Dropped while 2 and 3 were published; the resume replays them after `recovery`.
        seen.resuming = Some((100, 4));
        feed(
            &mut seen,
            &mut last,
            &sh,
            "id: 7:4\nevent: recovery\ndata: {\"lost\":[],\"recovered\":true}\n\n\
             id: 7:5\ndata: 2\n\n",
        );
        seen.check_resumed(150, &sh);
        assert!(seen.resuming.is_some());
        feed(&mut seen, &mut last, &sh, "id: 7:6\ndata: 3\n\n");
        seen.check_resumed(180, &sh);
        assert!(seen.resuming.is_none());
        assert_eq!(sh.resume.lock().unwrap().count(), 1);
        // A duplicate, a push out of order, an id out of order, a stray event.
        feed(&mut seen, &mut last, &sh, "id: 7:7\ndata: 3\n\n");
        feed(
            &mut seen,
            &mut last,
            &sh,
            "id: 7:8\ndata: 5\n\nid: 7:9\ndata: 4\n\n",
        );
        feed(&mut seen, &mut last, &sh, "id: 7:2\ndata: x\n\n");
        assert_eq!((seen.dup, seen.out_of_order), (1, 1));
        assert_eq!(seen.bad, 2);
        assert_eq!(seen.missing(6), 0);
        assert_eq!(sh.distinct.load(Ordering::Relaxed), 6);
        feed(
            &mut seen,
            &mut last,
            &sh,
            "id: 8:1\nevent: recovery\ndata: {\"lost\":[\"Broadcast\"],\"recovered\":false}\n\n",
        );
        assert_eq!(seen.not_recovered, 1);
    }

    #[test]
    fn missing_counts_only_streams_that_stood() {
        let sh = Shared::new(130, "127.0.0.1:1".parse().unwrap(), Flavor::NchanSse, 1);
        let mut seen = Seen::new(130);
        assert_eq!(seen.missing(100), 0);
        let mut last = None;
        feed(
            &mut seen,
            &mut last,
            &sh,
            "id: 5:0\ndata: r\n\nid: 5:1\ndata: 0\n\n",
        );
        assert_eq!(seen.missing(100), 99);
        assert_eq!(seen.next, 1);
    }
}
