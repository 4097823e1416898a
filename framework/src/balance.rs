//! Sharing new connections fairly between a supervisor's children that accept from one
//! listening socket.
//!
//! Every child waiting on the shared socket is woken by a new connection, and the one that
//! happens to run first takes it — under a burst that is mostly the same child, which then
//! holds most of the connections (and its open-file limit). So each child publishes how many
//! connections it holds in a slot of memory the supervisor shares with all of them
//! (`MAP_SHARED`, one atomic per child), and a child that holds more than the least loaded of
//! its live siblings (by a margin) lets a connection wait a moment for them before taking it
//! anyway, so a sibling that is stuck never stalls accepting.
//!
//! Only a supervisor's children pay for this (a load and a store per wake-up of the
//! acceptor); a process of its own has no shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// A slot of a child that is not running.
const ABSENT: u64 = u64::MAX;
/// How far ahead of the least loaded sibling a child may be before it waits.
const MARGIN: u64 = 16;
/// How long a child that is ahead lets a connection wait for its siblings, at most: long
/// enough for a sibling that was woken too but waits for a core (two cores, many threads).
pub(crate) const PATIENCE: Duration = Duration::from_millis(20);

/// Where an in-place reload passes the slots' memory (a descriptor number).
pub(crate) const FD_ENV: &str = "WERKMANN_BALANCE_FD";

/// The shared slots: one per child that accepts, grouped by worker, in a memory file
/// (`memfd`) that an in-place reload passes to the new binary, so the children of both
/// generations share one picture of the load.
pub(crate) struct Slots {
    base: *const AtomicU64,
    len: usize,
    fd: i32,
}

// SAFETY: the slots are atomics in a mapping that lives as long as the process (never
// unmapped); reading and writing them from any thread is what atomics are for.
unsafe impl Send for Slots {}
// SAFETY: as above.
unsafe impl Sync for Slots {}

impl Slots {
    /// `len` slots shared with every child forked after this: the ones an in-place reload
    /// passed on (`FD_ENV`) if they are as many, else new ones, all absent.
    pub fn open(len: usize) -> std::io::Result<Slots> {
        let bytes = (len.max(1) * std::mem::size_of::<AtomicU64>()).next_multiple_of(4096);
        let inherited = std::env::var(FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok());
        std::env::remove_var(FD_ENV);
        if let Some(fd) = inherited {
            // SAFETY: fstat(2) on a descriptor number fills a local struct or fails.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let same = unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_size as usize == bytes;
            if same {
                crate::listener::set_cloexec(fd, true);
                return Slots::map(fd, len, bytes, false);
            }
            // SAFETY: the descriptor was passed to this process for this and nothing else
            // uses it.
            unsafe { libc::close(fd) };
        }
        // SAFETY: memfd_create(2) with a NUL-terminated name makes a new descriptor.
        let fd = unsafe { libc::memfd_create(c"werkmann-load".as_ptr(), libc::MFD_CLOEXEC) };
        // SAFETY: ftruncate(2) sizes the new memory file.
        if fd < 0 || unsafe { libc::ftruncate(fd, bytes as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Slots::map(fd, len, bytes, true)
    }

    fn map(fd: i32, len: usize, bytes: usize, fresh: bool) -> std::io::Result<Slots> {
        // SAFETY: a shared mapping of `bytes` bytes of the memory file `fd`, which is that
        // large; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let slots = Slots {
            base: ptr.cast(),
            len,
            fd,
        };
        if fresh {
            for i in 0..len {
                slots.slot(i).store(ABSENT, Ordering::Relaxed);
            }
        }
        Ok(slots)
    }

    /// The memory file's descriptor (for an in-place reload).
    pub fn fd(&self) -> i32 {
        self.fd
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.len);
        // SAFETY: `i` is within the mapping, which holds `len` aligned AtomicU64s (page
        // aligned, zero-filled, then initialised in `new`) and is never unmapped.
        unsafe { &*self.base.add(i) }
    }

    /// The same slots, for a child (the mapping is never unmapped).
    pub fn copy(&self) -> Slots {
        Slots {
            base: self.base,
            len: self.len,
            fd: self.fd,
        }
    }

    /// Mark slot `i` absent (its child ended).
    pub fn absent(&self, i: usize) {
        self.slot(i).store(ABSENT, Ordering::Relaxed);
    }
}

/// This child's place among its worker's children.
pub(crate) struct Share {
    slots: Slots,
    /// The worker's slots.
    group: std::ops::Range<usize>,
    /// This child's.
    me: usize,
}

static SHARE: OnceLock<Share> = OnceLock::new();

/// In a child: take part in sharing with the siblings in `group` as slot `me` (once).
pub(crate) fn join(slots: Slots, group: std::ops::Range<usize>, me: usize) {
    slots.slot(me).store(0, Ordering::Relaxed);
    let _ = SHARE.set(Share { slots, group, me });
}

/// Whether this process, holding `open` connections, should let a new one wait for a less
/// loaded sibling (publishing `open` for them). `false` in a process of its own.
pub(crate) fn ahead(open: u64) -> bool {
    let Some(s) = SHARE.get() else { return false };
    s.slots.slot(s.me).store(open, Ordering::Relaxed);
    let least = s
        .group
        .clone()
        .filter(|&i| i != s.me)
        .map(|i| s.slots.slot(i).load(Ordering::Relaxed))
        .filter(|&n| n != ABSENT)
        .min();
    least.is_some_and(|least| open > least.saturating_add(MARGIN.max(least / 64)))
}

/// Whether this process takes part in sharing.
pub(crate) fn shared() -> bool {
    SHARE.get().is_some()
}
