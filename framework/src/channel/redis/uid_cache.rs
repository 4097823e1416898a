//! Which workers hold each uid, cached in a link for its sends to uids (Redis's
//! server-assisted client-side caching), so that the usual push — to one uid — is a plain
//! `PUBLISH` to each holding worker's node event instead of a script call.
//!
//! - **Tracking**: the link's directory connection asks `CLIENT TRACKING ON OPTIN`, and reads
//!   a uid's holders (`{werkmann:dir}:uw:UID`) after `CLIENT CACHING YES`; Redis then pushes
//!   an invalidation on that connection when they next change (a bind, an unbind, a close, a
//!   sweep — by any link), and on a flush. Redis writes it at once, as the change runs (not
//!   at the end of its event-loop pass, as `BCAST` mode does), ahead of the reply of every
//!   command it runs after the change; the connection's push handler
//!   ([`UidCache::handler`]) runs as the reply stream is read, so the invalidation is seen
//!   before those replies. Only the uids the link cached are tracked (Redis keeps a small
//!   record per key and link), and only their changes travel.
//! - **A send from the cache** publishes to the cached holders and reads the uid's holders in
//!   one `MULTI`/`EXEC`: what they were as it ran, whatever invalidations come around its
//!   reply. When no holder then was left out, the count is the connections those holders had
//!   at the workers it reached. Otherwise (a change ran before it) the send goes again through
//!   the script, to the holders it did not reach yet (none gets it twice), and counts what the
//!   holders hold then. A node reached needlessly (it held the uid before the change)
//!   delivers to no one; such a send may follow the later sends of its pipeline to other
//!   targets. The cache only saves the look-up's script call: a stale entry costs a second
//!   round trip, never a wrong count.
//! - **A pipeline with other operations than sends** runs its sends through the script: the
//!   cache hears of the pipeline's own changes only with its replies, and a cached send after
//!   such a change would go again only after the whole pipeline, behind its later changes.
//! - **A miss** sends through the script as before and reads the holders (`HGETALL`) in the
//!   same pipeline; they are cached only if no invalidation of the uid came since the miss.
//! - A lost connection, a flush or more than [`MAX_ENTRIES`] entries empty the cache; on a
//!   Redis Cluster, or a server that refuses tracking, there is none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use redis::{PushInfo, PushKind, Value as RValue};

/// The most uids cached; past it the cache starts again empty.
pub(super) const MAX_ENTRIES: usize = 100_000;

/// A uid's holders: each worker and how many of the uid's clients it holds (none with 0).
pub(super) type Holders = Arc<[(u32, u32)]>;

/// The cache of one link, shared with its connection's push handler.
#[derive(Clone)]
pub(super) struct UidCache {
    state: Arc<Mutex<State>>,
    /// The key prefix of a uid's holders: `{werkmann:dir}:uw:`.
    prefix: Arc<str>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Box<str>, Entry>,
    /// Bumped by each invalidation.
    gen: u64,
    /// Bumped when everything is dropped (a flush, a lost connection, too many entries).
    flushes: u64,
    /// Whether tracking is on for the current connection.
    live: bool,
    /// The current connection's number: pushes from an earlier one are ignored.
    conn: u64,
}

struct Entry {
    /// `None` while being read, or after an invalidation.
    holders: Option<Holders>,
    gen: u64,
}

/// What a send's look-up saw, checked again when its replies come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    gen: u64,
    flushes: u64,
}

/// A look-up's result.
pub(super) enum Look {
    /// The holders as last read (checked against the holders when the send runs).
    Hit(Holders),
    /// Not cached: read them with the send, then [`UidCache::fill`].
    Miss(Seen),
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
    /// until it tracks ([`UidCache::start`]). Its number, for its [`UidCache::handler`].
    pub(super) fn begin(&self) -> u64 {
        let mut s = self.lock();
        s.flush();
        s.live = false;
        s.conn += 1;
        s.conn
    }

    /// Connection `conn` tracks the holders now (unless another one began since).
    pub(super) fn start(&self, conn: u64) {
        let mut s = self.lock();
        if s.conn == conn {
            s.flush();
            s.live = true;
        }
    }

    /// The connection failed or is dropped: nothing cached stands.
    pub(super) fn stop(&self) {
        let mut s = self.lock();
        s.flush();
        s.live = false;
    }

    /// Whether tracking is on.
    pub(super) fn live(&self) -> bool {
        self.lock().live
    }

    /// Look `uid` up for a send.
    pub(super) fn look(&self, uid: &str) -> Look {
        let mut s = self.lock();
        if !s.live {
            return Look::Off;
        }
        let flushes = s.flushes;
        let seen = |gen| Seen { gen, flushes };
        if let Some(e) = s.entries.get(uid) {
            return match &e.holders {
                Some(h) => Look::Hit(h.clone()),
                None => Look::Miss(seen(e.gen)),
            };
        }
        if s.entries.len() >= MAX_ENTRIES {
            s.flush();
        }
        let (gen, flushes) = (s.gen, s.flushes);
        let seen = |gen| Seen { gen, flushes };
        s.entries.insert(uid.into(), Entry { holders: None, gen });
        Look::Miss(seen(gen))
    }

    /// Cache `uid`'s holders read by a send that missed with `seen`, unless they changed since.
    pub(super) fn fill(&self, uid: &str, seen: Seen, holders: Holders) {
        let mut s = self.lock();
        if !s.live || s.flushes != seen.flushes {
            return;
        }
        if let Some(e) = s.entries.get_mut(uid).filter(|e| e.gen == seen.gen) {
            e.holders = Some(holders);
        }
    }

    /// Connection `conn`'s push handler: invalidations drop entries, a lost connection all
    /// of them.
    pub(super) fn handler(
        &self,
        conn: u64,
    ) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
        let cache = self.clone();
        move |push: PushInfo| {
            match push.kind {
                PushKind::Invalidate => cache.invalidate(conn, push.data.first()),
                PushKind::Disconnection => {
                    let mut s = cache.lock();
                    if s.conn == conn {
                        s.flush();
                        s.live = false;
                    }
                }
                _ => {}
            }
            Ok(())
        }
    }

    /// Connection `conn`'s invalidation of `keys` (`nil`: a flush).
    fn invalidate(&self, conn: u64, keys: Option<&RValue>) {
        let mut s = self.lock();
        if s.conn != conn {
            return;
        }
        let Some(RValue::Array(keys)) = keys else {
            s.flush();
            return;
        };
        s.gen += 1;
        let gen = s.gen;
        for k in keys {
            let uid = match k {
                RValue::BulkString(b) => std::str::from_utf8(b).ok(),
                RValue::SimpleString(t) => Some(t.as_str()),
                _ => None,
            }
            .and_then(|k| k.strip_prefix(&*self.prefix));
            if let Some(e) = uid.and_then(|u| s.entries.get_mut(u)) {
                e.holders = None;
                e.gen = gen;
            }
        }
    }
}

impl State {
    fn flush(&mut self) {
        self.entries.clear();
        self.flushes += 1;
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

    const P: &str = "{werkmann:dir}:uw:";

    fn invalidation(keys: &[&str]) -> PushInfo {
        PushInfo {
            kind: PushKind::Invalidate,
            data: vec![RValue::Array(
                keys.iter()
                    .map(|k| RValue::BulkString(k.as_bytes().to_vec()))
                    .collect(),
            )],
        }
    }

    fn disconnect() -> PushInfo {
        PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        }
    }

    fn live() -> UidCache {
        let c = UidCache::new(P);
        let conn = c.begin();
        c.start(conn);
        c
    }

    #[test]
    fn a_miss_fills_and_the_next_send_hits() {
        let c = live();
        let Look::Miss(seen) = c.look("u1") else {
            panic!("a first look misses")
        };
        c.fill("u1", seen, Arc::from([(3, 1)]));
        let Look::Hit(h) = c.look("u1") else {
            panic!("filled")
        };
        assert_eq!(&*h, &[(3, 1)]);
    }

    #[test]
    fn an_invalidation_during_a_send_or_a_read_is_noticed() {
        let c = live();
        let handler = c.handler(1);
        let Look::Miss(seen) = c.look("u1") else {
            panic!()
        };
        handler(invalidation(&["{werkmann:dir}:uw:u1"])).unwrap();
        c.fill("u1", seen, Arc::from([(3, 1)]));
        assert!(
            matches!(c.look("u1"), Look::Miss(_)),
            "a read that raced a change is not kept"
        );
        let Look::Miss(seen) = c.look("u1") else {
            panic!()
        };
        c.fill("u1", seen, Arc::from([(3, 1)]));
        assert!(matches!(c.look("u1"), Look::Hit(_)));
        handler(invalidation(&[
            "{werkmann:dir}:uw:u2",
            "{werkmann:dir}:uw:u1",
        ]))
        .unwrap();
        assert!(
            matches!(c.look("u1"), Look::Miss(_)),
            "a changed uid is read again"
        );
        c.fill("u1", seen, Arc::from([(3, 1)]));
        assert!(
            matches!(c.look("u1"), Look::Miss(_)),
            "a fill from before it is not kept"
        );
    }

    #[test]
    fn other_uids_stay_and_flushes_and_disconnects_drop_all() {
        let c = live();
        let handler = c.handler(1);
        for u in ["a", "b"] {
            let Look::Miss(seen) = c.look(u) else {
                panic!()
            };
            c.fill(u, seen, Arc::from([(1, 2)]));
        }
        let Look::Miss(seen_b) = c.look("c") else {
            panic!()
        };
        handler(invalidation(&["{werkmann:dir}:uw:a"])).unwrap();
        assert!(
            matches!(c.look("b"), Look::Hit(_)),
            "another uid's change leaves it"
        );
        c.fill("c", seen_b, Arc::from([(1, 1)]));
        assert!(
            matches!(c.look("c"), Look::Hit(_)),
            "a read that only another uid's change raced is kept"
        );
        handler(PushInfo {
            kind: PushKind::Invalidate,
            data: vec![RValue::Nil],
        })
        .unwrap();
        for u in ["b", "c"] {
            assert!(
                matches!(c.look(u), Look::Miss(_)),
                "a flush drops everything"
            );
        }
        let Look::Miss(seen) = c.look("b") else {
            panic!()
        };
        c.fill("b", seen, Arc::from([(1, 2)]));
        handler(disconnect()).unwrap();
        assert!(matches!(c.look("b"), Look::Off), "no tracking, no cache");
    }

    #[test]
    fn an_earlier_connection_is_not_heard() {
        let c = live();
        let old = c.handler(1);
        let conn = c.begin();
        c.start(conn);
        let Look::Miss(seen) = c.look("a") else {
            panic!()
        };
        c.fill("a", seen, Arc::from([(1, 1)]));
        old(invalidation(&["{werkmann:dir}:uw:a"])).unwrap();
        old(disconnect()).unwrap();
        assert!(matches!(c.look("a"), Look::Hit(..)));
        c.stop();
        assert!(matches!(c.look("a"), Look::Off));
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
