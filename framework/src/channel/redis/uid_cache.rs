//! Which workers hold each uid, cached in a link for its sends to uids (Redis's
//! server-assisted client-side caching), so that the usual push — to one uid — is a plain
//! `PUBLISH` to each holding worker's node event instead of a script call.
//!
//! - **Tracking**: the link's directory connection asks `CLIENT TRACKING ON OPTIN`, and reads
//!   a uid's holders (`{werkmann:dir}:uw:UID`) after `CLIENT CACHING YES`; Redis then pushes
//!   an invalidation on that connection when they next change (a bind, an unbind, a close, a
//!   sweep — by any link), and on a flush. Redis writes it at once, as the change runs (not
//!   at the end of its event-loop pass, as `BCAST` mode does): ahead of the reply of every
//!   command it runs after the change, behind the reply of every command it ran before.
//!   Only the uids the link cached are tracked (Redis keeps a small record per key and link),
//!   and only their changes travel.
//! - **Places**: the connection is read through a tap (`tap.rs`) that numbers the replies and
//!   gives each invalidation the number of replies before it — its place. A command answered
//!   as reply `k` ran after a change whose invalidation has place `≤ k`, before one with a
//!   later place. (The crate hands pushes to a handler as it reads them, before the task
//!   waiting for earlier replies resumes: the order they came in is lost there.)
//! - **A send from the cache** publishes to the cached holders. It was exact when no
//!   invalidation of its uid has a place up to its last publish's reply: then its count is the
//!   connections those holders have at the workers whose event had a subscriber. Otherwise (a
//!   change ran before it) the send goes again through the script, to the holders it did not
//!   reach yet (none gets it twice), and counts what the holders hold then. A node reached
//!   needlessly (it held the uid before the change) delivers to no one; such a send may follow
//!   the later sends of its pipeline to other targets. A stale entry costs a second round
//!   trip, never a wrong count.
//! - **A pipeline with other operations than sends** runs its sends through the script: a
//!   cached send after a change of the pipeline's own would be found overtaken and go again
//!   only after the whole pipeline, behind its later changes.
//! - **A miss** sends through the script as before and reads the holders (`HGETALL`) in the
//!   same pipeline; they are cached unless an invalidation of the uid has a later place than
//!   the read's reply.
//! - A lost connection, a flush (at its place) or more than [`MAX_ENTRIES`] entries (between
//!   pipelines) empty the cache; on a Redis Cluster, or a server that refuses tracking, there
//!   is none.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::Value as RValue;

/// The most uids cached; past it the cache starts again empty.
pub(super) const MAX_ENTRIES: usize = 100_000;

/// A uid's holders: each worker and how many of the uid's clients it holds (none with 0).
pub(super) type Holders = Arc<[(u32, u32)]>;

/// The cache of one link, shared with its connection's tap.
#[derive(Clone)]
pub(super) struct UidCache {
    state: Arc<Mutex<State>>,
    /// The key prefix of a uid's holders: `{werkmann:dir}:uw:`.
    prefix: Arc<str>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Box<str>, Entry>,
    /// Whether tracking is on for the current connection.
    live: bool,
    /// The current connection's number: what the tap of an earlier one reads is ignored.
    conn: u64,
    /// Replies read on the current connection so far: the place of the next command's.
    read: u64,
    /// Commands written on the current connection so far.
    written: u64,
    /// The place of the last flush Redis told of.
    flushed_at: u64,
    /// When the server last refused `CLIENT TRACKING` or `CLIENT CACHING`.
    refused_at: Option<Instant>,
}

struct Entry {
    /// The holders as last read; `None` while being read, or after an invalidation.
    filled: Option<Arc<Filled>>,
    /// The place of the uid's last invalidation (0: none).
    changed_at: u64,
}

/// A uid's holders as read, and where they stopped standing.
pub(super) struct Filled {
    /// The holders.
    pub holders: Holders,
    /// The place of the first invalidation after the read (`u64::MAX`: none yet).
    dropped_at: AtomicU64,
}

impl Filled {
    /// Whether these holders stood when the command answered as reply `at` ran.
    pub(super) fn still(&self, at: u64) -> bool {
        // Set under the state's lock by the tap, read after the reply was read: the lock
        // taken since orders the two.
        self.dropped_at.load(Ordering::Relaxed) > at
    }

    fn drop_at(&self, at: u64) {
        self.dropped_at.store(at, Ordering::Relaxed);
    }
}

/// A look-up's result.
pub(super) enum Look {
    /// The holders as last read (a send checks [`Filled::still`] at its reply).
    Hit(Arc<Filled>),
    /// Not cached: read them with the send, then [`UidCache::fill`].
    Miss,
    /// No tracking on this connection (yet): send without the cache.
    Off,
}

impl UidCache {
    /// A cache for the uids whose holders are the keys `prefix` + uid.
    pub(super) fn new(prefix: &str) -> UidCache {
        UidCache {
            state: Arc::default(),
            prefix: Arc::from(prefix),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held left no broken invariant: go on with the data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection is being made: nothing cached so far stands, and nothing is cached
    /// until it tracks ([`UidCache::start`]). Its number, for its tap.
    pub(super) fn begin(&self) -> u64 {
        let mut s = self.lock();
        s.drop_all(0);
        s.live = false;
        s.conn += 1;
        s.read = 0;
        s.written = 0;
        s.flushed_at = 0;
        s.conn
    }

    /// Connection `conn` tracks the holders now (unless another one began, or it ended).
    pub(super) fn start(&self, conn: u64) {
        let mut s = self.lock();
        if s.conn == conn {
            s.live = true;
        }
    }

    /// The connection failed or is dropped: nothing cached stands.
    pub(super) fn stop(&self) {
        self.lock().end();
    }

    /// Connection `conn` ended, or its tap cannot read it: [`UidCache::stop`] if current.
    pub(super) fn lost(&self, conn: u64) {
        let mut s = self.lock();
        if s.conn == conn {
            s.end();
        }
    }

    /// The server refused `CLIENT TRACKING` or `CLIENT CACHING` (an older Redis, an ACL): no
    /// cache, and none tried again for a while ([`UidCache::refused_within`]).
    pub(super) fn refuse(&self) {
        let mut s = self.lock();
        s.end();
        s.refused_at = Some(Instant::now());
    }

    /// Whether the server refused tracking less than `within` ago.
    pub(super) fn refused_within(&self, within: Duration) -> bool {
        self.lock()
            .refused_at
            .is_some_and(|at| at.elapsed() < within)
    }

    /// Whether tracking is on.
    pub(super) fn live(&self) -> bool {
        self.lock().live
    }

    /// Before a pipeline on the connection: the connection's number and the place of the
    /// pipeline's first reply — `None` without tracking, or while a command written earlier
    /// is not answered yet (the places would not be known). Past [`MAX_ENTRIES`] it starts
    /// again empty (no send of an earlier pipeline is in flight).
    pub(super) fn pipeline(&self) -> Option<(u64, u64)> {
        let mut s = self.lock();
        if !s.live {
            return None;
        }
        if s.written != s.read {
            log::debug!(
                "redis: {} commands unanswered on the directory connection: no uid cache for \
                 this pipeline",
                s.written.saturating_sub(s.read)
            );
            return None;
        }
        if s.entries.len() >= MAX_ENTRIES {
            s.drop_all(0);
        }
        Some((s.conn, s.read))
    }

    /// Look `uid` up for a send.
    pub(super) fn look(&self, uid: &str) -> Look {
        let mut s = self.lock();
        if !s.live {
            return Look::Off;
        }
        if let Some(e) = s.entries.get(uid) {
            return match &e.filled {
                Some(f) => Look::Hit(f.clone()),
                None => Look::Miss,
            };
        }
        s.entries.insert(
            uid.into(),
            Entry {
                filled: None,
                changed_at: 0,
            },
        );
        Look::Miss
    }

    /// Cache `uid`'s holders read on connection `conn` (answered as reply `at`), unless a
    /// change came after the read.
    pub(super) fn fill(&self, uid: &str, conn: u64, at: u64, holders: Holders) {
        let mut s = self.lock();
        if !s.live || s.conn != conn || s.flushed_at > at {
            return;
        }
        if let Some(e) = s.entries.get_mut(uid).filter(|e| e.changed_at <= at) {
            e.filled = Some(Arc::new(Filled {
                holders,
                dropped_at: AtomicU64::new(u64::MAX),
            }));
        }
    }

    /// Connection `conn`'s tap saw `commands` written in all so far.
    pub(super) fn wrote(&self, conn: u64, commands: u64) {
        let mut s = self.lock();
        if s.conn == conn {
            s.written = commands;
        }
    }

    /// What connection `conn`'s tap read: `replies` in all so far, and the pushes among them,
    /// each with its place.
    pub(super) fn read(&self, conn: u64, replies: u64, pushes: Vec<(u64, RValue)>) {
        let mut s = self.lock();
        if s.conn != conn {
            return;
        }
        s.read = replies;
        for (at, push) in pushes {
            let RValue::Push { kind, data } = push else {
                continue;
            };
            if kind != redis::PushKind::Invalidate {
                continue;
            }
            let Some(RValue::Array(keys)) = data.first() else {
                // `nil`: a flush.
                s.flushed_at = at;
                s.drop_all(at);
                continue;
            };
            for k in keys {
                let uid = match k {
                    RValue::BulkString(b) => std::str::from_utf8(b).ok(),
                    RValue::SimpleString(t) => Some(t.as_str()),
                    _ => None,
                }
                .and_then(|k| k.strip_prefix(&*self.prefix));
                if let Some(e) = uid.and_then(|u| s.entries.get_mut(u)) {
                    if let Some(f) = e.filled.take() {
                        f.drop_at(at);
                    }
                    e.changed_at = at;
                }
            }
        }
    }
}

impl State {
    /// No tracking: nothing cached stands, and the connection's tap is no longer heard.
    fn end(&mut self) {
        self.drop_all(0);
        self.live = false;
        self.conn += 1;
    }

    /// Drop every entry; sends made from them count as overtaken at place `at`.
    fn drop_all(&mut self, at: u64) {
        for e in self.entries.values_mut() {
            if let Some(f) = e.filled.take() {
                f.drop_at(at);
            }
        }
        self.entries.clear();
    }
}

/// A uid's holders from its `HGETALL` reply (workers with a positive count; the uid's client
/// ids, fields with a `-`, are skipped).
pub(super) fn holders(reply: &RValue) -> Option<Holders> {
    let pairs: Vec<(&RValue, &RValue)> = match reply {
        RValue::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        RValue::Array(a) if a.len() % 2 == 0 => a.chunks(2).map(|p| (&p[0], &p[1])).collect(),
        _ => return None,
    };
    let num = |v: &RValue| -> Option<i64> {
        match v {
            RValue::Int(n) => Some(*n),
            RValue::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            RValue::SimpleString(s) => s.parse().ok(),
            _ => None,
        }
    };
    let client_id = |v: &RValue| match v {
        RValue::BulkString(b) => b.contains(&b'-'),
        RValue::SimpleString(s) => s.contains('-'),
        _ => false,
    };
    let mut out = Vec::with_capacity(pairs.len());
    for (w, k) in pairs.into_iter().filter(|(f, _)| !client_id(f)) {
        let (w, k) = (u32::try_from(num(w)?).ok()?, num(k)?);
        if k > 0 {
            out.push((w, u32::try_from(k).ok()?));
        }
    }
    Some(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::PushKind;

    const P: &str = "{werkmann:dir}:uw:";

    fn invalidation(keys: &[&str]) -> RValue {
        RValue::Push {
            kind: PushKind::Invalidate,
            data: vec![RValue::Array(
                keys.iter()
                    .map(|k| RValue::BulkString(k.as_bytes().to_vec()))
                    .collect(),
            )],
        }
    }

    fn flush() -> RValue {
        RValue::Push {
            kind: PushKind::Invalidate,
            data: vec![RValue::Nil],
        }
    }

    fn live() -> (UidCache, u64) {
        let c = UidCache::new(P);
        let conn = c.begin();
        c.start(conn);
        (c, conn)
    }

    fn hit(c: &UidCache, uid: &str) -> Arc<Filled> {
        match c.look(uid) {
            Look::Hit(f) => f,
            _ => panic!("{uid} is cached"),
        }
    }

    #[test]
    fn a_miss_fills_and_the_next_send_hits() {
        let (c, conn) = live();
        assert!(matches!(c.look("u1"), Look::Miss), "a first look misses");
        assert_eq!(c.pipeline(), Some((conn, 0)));
        c.wrote(conn, 4);
        assert_eq!(c.pipeline(), None, "not while commands are unanswered");
        c.fill("u1", conn, 3, Arc::from([(3, 1)]));
        c.read(conn, 4, Vec::new());
        assert_eq!(c.pipeline(), Some((conn, 4)));
        let f = hit(&c, "u1");
        assert_eq!(&*f.holders, &[(3, 1)]);
        assert!(f.still(u64::MAX - 1));
    }

    #[test]
    fn a_change_counts_by_its_place() {
        let (c, conn) = live();
        let _ = c.look("u1");
        // A change before the read's reply (place 2, the read answered as reply 2) is in it.
        c.read(conn, 3, vec![(2, invalidation(&[&format!("{P}u1")]))]);
        c.fill("u1", conn, 2, Arc::from([(3, 1)]));
        let f = hit(&c, "u1");
        // A change after the read: a send answered before it stands, one after does not.
        c.read(conn, 9, vec![(7, invalidation(&[&format!("{P}u1")]))]);
        assert!(f.still(6) && !f.still(7) && !f.still(8));
        assert!(
            matches!(c.look("u1"), Look::Miss),
            "a changed uid is read again"
        );
        // A later change leaves the first place.
        c.read(conn, 12, vec![(11, invalidation(&[&format!("{P}u1")]))]);
        assert!(!f.still(8));
        // A read answered before the last change is not kept; one after is.
        c.fill("u1", conn, 10, Arc::from([(3, 1)]));
        assert!(matches!(c.look("u1"), Look::Miss));
        c.fill("u1", conn, 11, Arc::from([(4, 1)]));
        assert_eq!(&*hit(&c, "u1").holders, &[(4, 1)]);
    }

    #[test]
    fn other_uids_stay_and_flushes_and_ends_drop_all() {
        let (c, conn) = live();
        for u in ["a", "b"] {
            let _ = c.look(u);
            c.fill(u, conn, 0, Arc::from([(1, 2)]));
        }
        let _ = c.look("c");
        c.read(conn, 5, vec![(4, invalidation(&[&format!("{P}a")]))]);
        let b = hit(&c, "b");
        assert!(b.still(100), "another uid's change leaves it");
        c.fill("c", conn, 2, Arc::from([(1, 1)]));
        assert!(
            matches!(c.look("c"), Look::Hit(_)),
            "another uid's change leaves a read too"
        );
        c.read(conn, 7, vec![(6, flush())]);
        assert!(
            b.still(5) && !b.still(6),
            "a flush drops everything at its place"
        );
        assert!(matches!(c.look("b"), Look::Miss));
        c.fill("b", conn, 5, Arc::from([(1, 2)]));
        assert!(
            matches!(c.look("b"), Look::Miss),
            "a read before a flush is not kept"
        );
        c.fill("b", conn, 6, Arc::from([(1, 2)]));
        let b = hit(&c, "b");
        c.lost(conn);
        assert!(!b.still(0), "an ended connection: nothing stands");
        assert!(matches!(c.look("b"), Look::Off), "no tracking, no cache");
        assert_eq!(c.pipeline(), None);
    }

    #[test]
    fn an_earlier_connection_is_not_heard() {
        let (c, old) = live();
        let conn = c.begin();
        c.start(conn);
        let _ = c.look("a");
        c.fill("a", old, 0, Arc::from([(1, 1)]));
        assert!(
            matches!(c.look("a"), Look::Miss),
            "a read on an earlier connection"
        );
        c.fill("a", conn, 0, Arc::from([(1, 1)]));
        c.read(old, 9, vec![(1, invalidation(&[&format!("{P}a")]))]);
        c.lost(old);
        assert!(hit(&c, "a").still(100));
        assert_eq!(c.pipeline(), Some((conn, 0)));
        c.stop();
        assert!(matches!(c.look("a"), Look::Off));
        c.start(conn);
        assert!(
            matches!(c.look("a"), Look::Off),
            "a stopped connection stays off"
        );
    }

    #[test]
    fn a_refusal_holds_for_a_while() {
        let (c, _) = live();
        let minute = Duration::from_secs(60);
        assert!(!c.refused_within(minute));
        c.refuse();
        assert!(matches!(c.look("a"), Look::Off));
        assert!(c.refused_within(minute) && !c.refused_within(Duration::ZERO));
    }

    #[test]
    fn holders_come_from_hgetall_replies() {
        let b = |s: &str| RValue::BulkString(s.as_bytes().to_vec());
        let map = RValue::Map(vec![
            (b("3-17"), b("")),
            (b("3"), b("2")),
            (b("5"), b("0")),
            (b("3-18"), b("")),
        ]);
        assert_eq!(&*holders(&map).unwrap(), &[(3, 2)]);
        let flat = RValue::Array(vec![b("7"), b("1")]);
        assert_eq!(&*holders(&flat).unwrap(), &[(7, 1)]);
        assert_eq!(&*holders(&RValue::Array(vec![])).unwrap(), &[]);
        assert!(holders(&RValue::Array(vec![b("x"), b("1")])).is_none());
    }
}
