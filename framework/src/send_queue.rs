//! [`SendQueue`]: a connection's bounded send buffer, apart from the socket so that its rules
//! can be tested without one.
//!
//! The rules (Workerman's `send` and `maxSendBufferSize`): a message goes to the socket at once
//! when nothing is queued ([`Pushed::Sent`]); a partial write or a full socket queues the rest
//! ([`Pushed::Queued`]); when the queue already holds `max` bytes the message is dropped
//! ([`Pushed::Dropped`], reported to `on_error`). Reaching `max` is reported once
//! (`on_buffer_full`) until the queue is below it again; writing the queue out is reported
//! once per drain (`on_buffer_drain`). The queue is written in vectored writes of at most
//! [`MAX_IOVECS`] buffers.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};

/// Buffers in one vectored write: Linux's `IOV_MAX`.
pub(crate) const MAX_IOVECS: usize = 1024;
/// Queues this short use a small array of buffers.
const FEW_IOVECS: usize = 64;

/// What [`SendQueue::push`] did with one message.
#[derive(Debug)]
pub(crate) enum Pushed {
    /// Written to the socket in full.
    Sent,
    /// Queued (in full, or what the socket did not take).
    Queued {
        /// The queue was empty: the connection's task must be woken to write it.
        wake: bool,
        /// This message took the queue to its limit, the first time since it was last below
        /// it: `on_buffer_full` is due.
        full: bool,
    },
    /// Dropped: the queue already held its limit (`on_error`: "send buffer full and drop
    /// package").
    Dropped,
    /// The immediate write failed; nothing was queued.
    Failed(io::Error),
}

/// A connection's queue of encoded output: shared `Bytes` (a broadcast frame is one allocation
/// for every queue), their total length, and the limit-reached flag.
#[derive(Default)]
pub(crate) struct SendQueue {
    bufs: VecDeque<Bytes>,
    len: usize,
    /// Bytes at the front that may go out before the codec is open (a client handshake).
    bypass: usize,
    /// `on_buffer_full` was reported and the queue has not been below the limit since.
    full: bool,
}

impl SendQueue {
    /// Bytes queued.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes at the front that may be written before the codec is open.
    pub(crate) fn bypass(&self) -> usize {
        self.bypass
    }

    /// Offer `bytes` under the limit `max`. With `write` (the socket is open and the codec
    /// ready) and nothing queued, the bytes go to `write` first and only what it does not
    /// take is queued; `WouldBlock` queues everything.
    pub(crate) fn push(
        &mut self,
        bytes: Bytes,
        max: usize,
        write: Option<impl FnOnce(&[u8]) -> io::Result<usize>>,
    ) -> Pushed {
        let write = match write {
            Some(w) if self.len == 0 => w,
            _ => return self.enqueue(bytes, max),
        };
        match write(&bytes) {
            Ok(n) if n == bytes.len() => Pushed::Sent,
            Ok(n) => self.enqueue(bytes.slice(n..), max),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.enqueue(bytes, max),
            Err(e) => Pushed::Failed(e),
        }
    }

    /// Queue `bytes` unless `max` bytes are queued already (a deferred send, or one before
    /// the connection is open): [`Pushed::Queued`] or [`Pushed::Dropped`].
    pub(crate) fn enqueue(&mut self, bytes: Bytes, max: usize) -> Pushed {
        if self.len >= max {
            return Pushed::Dropped;
        }
        let wake = self.len == 0;
        self.push_back(bytes);
        let full = self.len >= max && !std::mem::replace(&mut self.full, true);
        Pushed::Queued { wake, full }
    }

    /// Queue `b` regardless of the limit (close frames, protocol replies: a few bytes the
    /// connection itself owes the peer).
    pub(crate) fn push_back(&mut self, b: Bytes) {
        self.len += b.len();
        self.bufs.push_back(b);
    }

    /// Put `b` ahead of everything queued (a server handshake answer).
    pub(crate) fn push_front(&mut self, b: Bytes) {
        self.len += b.len();
        self.bufs.push_front(b);
    }

    /// Put `b` ahead of everything, writable before the codec is open (a client handshake).
    pub(crate) fn push_front_bypass(&mut self, b: Bytes) {
        self.bypass += b.len();
        self.push_front(b);
    }

    /// Call `write` once with the first `limit` bytes of the queue as slices — at most
    /// [`MAX_IOVECS`] of them — and return what it returns (the bytes it took).
    pub(crate) fn write_front(
        &self,
        limit: usize,
        write: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        // A long queue of small frames (a burst of broadcasts) goes out in few calls; a short one
        // does not pay for initialising the large array.
        if self.bufs.len() <= FEW_IOVECS {
            self.slices::<FEW_IOVECS>(limit, write)
        } else {
            self.slices::<MAX_IOVECS>(limit, write)
        }
    }

    fn slices<const N: usize>(
        &self,
        limit: usize,
        write: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); N];
        let mut n = 0;
        let mut total = 0;
        for (slot, b) in slices.iter_mut().zip(self.bufs.iter()) {
            if total >= limit {
                break;
            }
            let take = b.len().min(limit - total);
            *slot = IoSlice::new(&b[..take]);
            total += take;
            n += 1;
        }
        write(&slices[..n])
    }

    /// Forget the first `n` bytes (written).
    pub(crate) fn advance(&mut self, mut n: usize) {
        self.len -= n;
        self.bypass = self.bypass.saturating_sub(n);
        while n > 0 {
            let front = self.bufs.front_mut().expect("advance within queue");
            if n >= front.len() {
                n -= front.len();
                self.bufs.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        self.shrink_if_empty();
    }

    /// After a round of writes (`wrote`: anything was written): whether the queue has just
    /// been written out (`on_buffer_drain` is due). Below `max` the limit may be reported
    /// again.
    pub(crate) fn settle(&mut self, wrote: bool, max: usize) -> bool {
        if wrote && self.len == 0 {
            self.full = false;
            return true;
        }
        if self.len < max {
            self.full = false;
        }
        false
    }

    /// Drop everything queued.
    pub(crate) fn clear(&mut self) {
        self.bufs.clear();
        self.len = 0;
        self.bypass = 0;
        self.shrink_if_empty();
    }

    /// What was queued must not leave its queue's capacity behind on an idle connection (an
    /// event stream or WebSocket that got one queued broadcast would keep ~150 bytes for
    /// good): a written-out queue holds no allocation, and the next queued write makes one.
    fn shrink_if_empty(&mut self) {
        if self.bufs.is_empty() && self.bufs.capacity() > 0 {
            self.bufs = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the socket's `try_write`.
    type Write = fn(&[u8]) -> io::Result<usize>;

    fn b(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    /// `n` bytes under `max`, through `write` when given; the outcome in short.
    fn push(q: &mut SendQueue, n: usize, max: usize, write: Option<Write>) -> String {
        short(q.push(b(n), max, write))
    }

    fn short(pushed: Pushed) -> String {
        match pushed {
            Pushed::Sent => "sent".into(),
            Pushed::Queued { wake, full } => format!("queued wake={wake} full={full}"),
            Pushed::Dropped => "dropped".into(),
            Pushed::Failed(e) => format!("failed {:?}", e.kind()),
        }
    }

    /// Queue only (the socket is not tried).
    fn queue(q: &mut SendQueue, n: usize, max: usize) -> String {
        short(q.enqueue(b(n), max))
    }

    fn takes_all(d: &[u8]) -> io::Result<usize> {
        Ok(d.len())
    }

    #[test]
    fn what_the_socket_does_not_take_is_queued() {
        let mut q = SendQueue::default();
        assert_eq!(push(&mut q, 10, 100, Some(takes_all)), "sent");
        assert_eq!(q.len(), 0);
        // A partial write queues the rest and wakes the task.
        assert_eq!(
            push(&mut q, 10, 100, Some(|_| Ok(4))),
            "queued wake=true full=false"
        );
        assert_eq!(q.len(), 6);
        q.clear();
        assert_eq!(
            push(
                &mut q,
                10,
                100,
                Some(|_| Err(io::ErrorKind::WouldBlock.into()))
            ),
            "queued wake=true full=false"
        );
        assert_eq!(q.len(), 10);
    }

    #[test]
    fn a_written_out_queue_keeps_no_allocation() {
        let mut q = SendQueue::default();
        queue(&mut q, 5, 100);
        queue(&mut q, 5, 100);
        assert!(q.bufs.capacity() > 0);
        q.advance(7);
        assert!(q.bufs.capacity() > 0, "3 bytes still queued");
        q.advance(3);
        assert_eq!(q.bufs.capacity(), 0, "an idle connection holds nothing");
        queue(&mut q, 5, 100);
        q.clear();
        assert_eq!(q.bufs.capacity(), 0);
    }

    #[test]
    fn a_write_error_is_reported_and_nothing_queued() {
        let mut q = SendQueue::default();
        let r = push(
            &mut q,
            10,
            100,
            Some(|_| Err(io::ErrorKind::BrokenPipe.into())),
        );
        assert_eq!(r, "failed BrokenPipe");
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn behind_a_queue_a_message_is_queued_not_written() {
        let mut q = SendQueue::default();
        queue(&mut q, 5, 100);
        let r = push(
            &mut q,
            5,
            100,
            Some(|_| panic!("must not write past the queue")),
        );
        assert_eq!(r, "queued wake=false full=false");
        assert_eq!(q.len(), 10);
    }

    #[test]
    fn the_limit_drops_and_reports_full_once() {
        let mut q = SendQueue::default();
        assert_eq!(queue(&mut q, 60, 100), "queued wake=true full=false");
        // Past the limit with this one: accepted, and the limit is reported.
        assert_eq!(queue(&mut q, 60, 100), "queued wake=false full=true");
        // At the limit: dropped, written or not, and the queue does not grow.
        assert_eq!(queue(&mut q, 1, 100), "dropped");
        assert_eq!(push(&mut q, 1, 100, Some(takes_all)), "dropped");
        assert_eq!(q.len(), 120);
        // Written below the limit but not out: the limit may be reported again.
        q.advance(30);
        assert!(!q.settle(true, 100));
        assert_eq!(queue(&mut q, 20, 100), "queued wake=false full=true");
        // Below the limit again without a round of writes settling: not reported twice.
        q.advance(20);
        assert_eq!(queue(&mut q, 20, 100), "queued wake=false full=false");
    }

    #[test]
    fn drain_is_reported_once_when_written_out() {
        let mut q = SendQueue::default();
        queue(&mut q, 150, 100);
        q.advance(100);
        assert!(!q.settle(true, 100));
        q.advance(50);
        assert!(q.settle(true, 100));
        // Nothing written this round: no second drain.
        assert!(!q.settle(false, 100));
        // And the limit may be reported again after a drain.
        assert_eq!(queue(&mut q, 100, 100), "queued wake=true full=true");
    }

    #[test]
    fn vectored_writes_take_at_most_iov_max_buffers_and_the_limit() {
        let mut q = SendQueue::default();
        for _ in 0..3000 {
            queue(&mut q, 3, usize::MAX);
        }
        let mut calls = 0;
        while q.len() > 0 {
            let n = q
                .write_front(q.len(), |s| {
                    assert!(s.len() <= MAX_IOVECS, "{} buffers in one write", s.len());
                    Ok(s.iter().map(|s| s.len()).sum())
                })
                .unwrap();
            q.advance(n);
            calls += 1;
        }
        assert_eq!(calls, 3); // 1024 + 1024 + 952 buffers
                              // A byte limit cuts the last buffer short.
        queue(&mut q, 10, 100);
        queue(&mut q, 10, 100);
        let n = q
            .write_front(15, |s| Ok(s.iter().map(|s| s.len()).sum()))
            .unwrap();
        assert_eq!(n, 15);
    }

    #[test]
    fn the_bypass_prefix_is_tracked_and_written_first() {
        let mut q = SendQueue::default();
        queue(&mut q, 10, 100);
        q.push_front_bypass(Bytes::from_static(b"hello"));
        assert_eq!((q.len(), q.bypass()), (15, 5));
        let first = q
            .write_front(q.bypass(), |s| {
                assert_eq!(&*s[0], b"hello");
                Ok(s.iter().map(|s| s.len()).sum())
            })
            .unwrap();
        q.advance(first);
        assert_eq!((q.len(), q.bypass()), (10, 0));
        q.clear();
        assert_eq!(q.len(), 0);
    }
}
