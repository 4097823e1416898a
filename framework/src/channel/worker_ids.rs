//! Cluster-unique worker ids, claimed through the channel itself — the same [`Client`] and
//! broker seam as every other channel use, so it works on every backend.
//!
//! Workerman's push example subscribes each process to its worker id, so two WebSocket nodes
//! that both have workers 0 and 1 would both receive a push for worker 1. Here a node claims
//! ids no other node holds before it starts.
//!
//! - On a backend with a store of its own (Redis) an id is a lease the broker takes and renews
//!   (`Leases`).
//! - Elsewhere (a werkmann channel server, Workerman's PHP one, the embedded channel) nodes
//!   agree over pub/sub on the event [`IDS_EVENT`]:
//!   1. subscribe, publish `{op: who}`; every live node answers `{op: held, ids, node}`;
//!   2. pick the lowest free ids (or the pinned ones), publish `{op: claim, ids, node}`;
//!   3. a holder answers a claim that overlaps its ids with `held`; of two simultaneous claims
//!      the smaller node id wins; the loser picks again (a pinned node stops with an error).
//!
//! The claim runs on a thread of its own, which ends before [`claim`] returns (a daemon forks
//! next: no thread of ours may hold a lock across the fork). Once the node serves,
//! [`WorkerIds::answer`] starts a thread with a client that holds the ids — answering other
//! nodes and announcing the ids, or renewing their leases — for as long as the [`WorkerIds`]
//! live. Between the two, a node that claims sees the announcement within its first round.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::broker::{ClaimDone, Options};
use super::client::{Client, WeakClient};
use crate::timer::Timer;

/// The event on which nodes agree on worker ids.
pub const IDS_EVENT: &str = "werkmann.worker_ids";
const ROUND: Duration = Duration::from_millis(300);
/// How long a claim may take once connected (rounds lost to simultaneous claims included).
const CLAIM_LIMIT: Duration = Duration::from_secs(60);

pub use super::ClaimError;

/// Ids this node holds. Call [`WorkerIds::answer`] once the node serves (after a daemon's
/// fork); the ids are given up when this is dropped.
pub struct WorkerIds {
    ids: Vec<u32>,
    holder: Mutex<Option<Holder>>,
}

/// How the ids were claimed, and the thread that holds them in this process (`pid`).
struct Holder {
    addr: String,
    options: Options,
    node: u64,
    running: Option<(u32, HolderThread)>,
}

/// A thread of its own running an actix system, where a claiming or holding client lives.
struct HolderThread {
    arbiter: actix_rt::ArbiterHandle,
    system: actix_rt::System,
    thread: std::thread::JoinHandle<()>,
}

impl HolderThread {
    fn start() -> std::io::Result<HolderThread> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("worker-ids".into())
            .spawn(move || {
                let sys = actix_rt::System::new();
                let current = actix_rt::System::current();
                let _ = tx.send((current.arbiter().clone(), current));
                let _ = sys.run();
            })?;
        let (arbiter, system) = rx
            .recv()
            .map_err(|_| std::io::Error::other("the worker-ids thread did not start"))?;
        Ok(HolderThread {
            arbiter,
            system,
            thread,
        })
    }

    fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        self.arbiter.spawn_fn(f);
    }

    /// Drop the thread's client on its own thread, stop, and wait until the thread is gone.
    fn end(self) {
        self.spawn(|| drop(HOLDING.with(|h| h.borrow_mut().take())));
        self.system.stop();
        let _ = self.thread.join();
    }
}

thread_local! {
    /// The holder thread's client.
    static HOLDING: RefCell<Option<Client>> = const { RefCell::new(None) };
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
            holder: Mutex::new(None),
        }
    }

    /// Hold the ids from now on, in this process: answer other nodes and announce the ids
    /// (or renew their leases) on a thread of its own, until dropped. Call it once the node
    /// serves — after a daemon's fork (each instance may call it; it starts once per process).
    pub fn answer(&self) {
        let mut holder = self.holder.lock().unwrap_or_else(|e| e.into_inner());
        let Some(h) = holder.as_mut() else { return };
        if h.running
            .as_ref()
            .is_some_and(|(pid, _)| *pid == std::process::id())
        {
            return;
        }
        let (addr, options, node, ids) =
            (h.addr.clone(), h.options.clone(), h.node, self.ids.clone());
        let thread = match HolderThread::start() {
            Ok(t) => t,
            Err(e) => return log::error!("worker ids: {e}; ids {ids:?} not held in this process"),
        };
        thread.spawn(move || {
            let client = match Client::connect_with(&addr, &options) {
                Ok(c) => c,
                Err(e) => return log::error!("worker ids: channel {addr}: {e}"),
            };
            let first = Rc::new(std::cell::Cell::new(true));
            let me = client.downgrade();
            client.on_connect(move || {
                if let (true, Some(me)) = (first.replace(false), me.upgrade()) {
                    hold(&me, &node_name(node), ids.clone());
                }
            });
            HOLDING.with(|h| *h.borrow_mut() = Some(client));
        });
        // A thread inherited across a fork does not run here: forget it, do not join it.
        if let Some((_, old)) = h.running.replace((std::process::id(), thread)) {
            std::mem::forget(old.thread);
        }
    }
}

impl Drop for WorkerIds {
    fn drop(&mut self) {
        let holder = self.holder.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(Holder {
            node,
            running: Some((pid, thread)),
            ..
        }) = holder
        else {
            return;
        };
        if pid != std::process::id() {
            return;
        }
        // Give the ids up (a lease is deleted at once rather than left to expire), briefly.
        let (tx, rx) = mpsc::channel();
        let (node, ids) = (node_name(node), self.ids.clone());
        thread.spawn(move || {
            let client = HOLDING.with(|c| c.borrow().clone());
            let done: Box<dyn FnOnce()> = Box::new(move || {
                let _ = tx.send(());
            });
            match client {
                Some(c) => release(&c, &node, ids, done),
                None => done(),
            }
        });
        let _ = rx.recv_timeout(Duration::from_secs(2));
        thread.end();
    }
}

/// Claim `count` ids (or exactly `pinned`) for `node` through `client`'s backend: its own
/// store where it has one (Redis leases), else by agreement over pub/sub.
fn claim_through(
    client: &Client,
    node: &str,
    count: usize,
    pinned: Option<Vec<u32>>,
    done: ClaimDone,
) {
    match client.leases() {
        Some(l) => l.claim(node, count, pinned, done),
        None => agree(client, node, count, pinned, done),
    }
}

/// Keep ids claimed before by `node` (in the process this one forked from).
fn hold(client: &Client, node: &str, ids: Vec<u32>) {
    match client.leases() {
        Some(l) => l.hold(node, ids),
        None => answer(client, node, ids, true),
    }
}

/// Give up ids where the backend stores them; `done` when that is done (at once where the
/// ids are only agreed on).
fn release(client: &Client, node: &str, ids: Vec<u32>, done: Box<dyn FnOnce()>) {
    match client.leases() {
        Some(l) => l.release(node, ids, done),
        None => done(),
    }
}

/// A node's name where a backend stores it (a lease's value).
fn node_name(node: u64) -> String {
    format!("{node:016x}")
}

/// Claim `count` cluster-unique ids through the channel at `addr` — any address
/// [`Client::connect`] takes — or exactly `pinned`, waiting up to `timeout` for the channel.
/// Call [`WorkerIds::answer`] once the node serves.
pub fn claim(
    addr: &str,
    options: &Options,
    count: usize,
    pinned: Option<Vec<u32>>,
    timeout: Duration,
) -> Result<WorkerIds, ClaimError> {
    let node: u64 = rand::random::<u64>() >> 1;
    let (tx, rx) = mpsc::channel::<Result<Vec<u32>, ClaimError>>();
    let thread = HolderThread::start().map_err(|e| ClaimError::Unreachable {
        addr: addr.to_string(),
        why: e.to_string(),
    })?;
    let (a, o) = (addr.to_string(), options.clone());
    thread.spawn(move || start_claim(a, o, node, count, pinned, timeout, tx));
    let answer = rx.recv_timeout(timeout + CLAIM_LIMIT);
    // The claiming thread ends here, whatever the answer: the ids are held by `answer`.
    thread.end();
    let ids = answer.unwrap_or_else(|_| {
        Err(ClaimError::Unreachable {
            addr: addr.to_string(),
            why: format!("no agreement within {:?}", timeout + CLAIM_LIMIT),
        })
    });
    crate::metrics::worker_id_claim(ids.is_ok());
    let ids = ids?;
    log::info!("claimed worker ids {ids:?} through channel {addr}");
    Ok(WorkerIds {
        ids,
        holder: Mutex::new(Some(Holder {
            addr: addr.to_string(),
            options: options.clone(),
            node,
            running: None,
        })),
    })
}

/// On the holder thread: connect, claim once connected, report on `tx`.
fn start_claim(
    addr: String,
    options: Options,
    node: u64,
    count: usize,
    pinned: Option<Vec<u32>>,
    timeout: Duration,
    tx: mpsc::Sender<Result<Vec<u32>, ClaimError>>,
) {
    let client = match Client::connect_with(&addr, &options) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(ClaimError::Unreachable {
                addr,
                why: e.to_string(),
            }));
            return;
        }
    };
    let report: Rc<RefCell<Option<mpsc::Sender<_>>>> = Rc::new(RefCell::new(Some(tx)));
    let (me, to) = (client.downgrade(), report.clone());
    let started = Rc::new(std::cell::Cell::new(false));
    let once = started.clone();
    client.on_connect(move || {
        let Some(me) = me.upgrade() else { return };
        if once.replace(true) {
            return;
        }
        let to = to.clone();
        let done: ClaimDone = Box::new(move |r| {
            if let Some(tx) = to.borrow_mut().take() {
                let _ = tx.send(r);
            }
        });
        claim_through(&me, &node_name(node), count, pinned.clone(), done);
    });
    Timer::once_internal(timeout, move || {
        if !started.get() {
            if let Some(tx) = report.borrow_mut().take() {
                let _ = tx.send(Err(ClaimError::Unreachable {
                    addr,
                    why: format!("not connected within {timeout:?}"),
                }));
            }
        }
    });
    HOLDING.with(|h| *h.borrow_mut() = Some(client));
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

/// Where an agreement stands.
enum Phase {
    /// Asked who holds what; collecting answers.
    Who,
    /// Claimed `want`; lost when a holder or a smaller claimer overlaps.
    Claim { want: Vec<u32>, lost: bool },
    /// Holding `ids`: answering others.
    Holding(Vec<u32>),
}

struct Agreement {
    /// Weak: the client's callbacks hold the agreement.
    client: WeakClient,
    node: u64,
    count: usize,
    pinned: Option<Vec<u32>>,
    taken: BTreeSet<u32>,
    phase: Phase,
    done: Option<ClaimDone>,
}

impl Agreement {
    fn publish(&self, v: Value) {
        let Some(client) = self.client.upgrade() else {
            return;
        };
        if let Err(e) = client.publish(IDS_EVENT, &v) {
            log::warn!("worker ids: {e}");
        }
    }

    fn held(&self) -> Value {
        match &self.phase {
            Phase::Holding(ids) => json!({"op": "held", "ids": ids, "node": self.node}),
            _ => Value::Null,
        }
    }

    /// A message on the ids event.
    fn heard(&mut self, v: Value) {
        let other = v["node"].as_u64().unwrap_or(0);
        if other == self.node {
            return;
        }
        let op = v["op"].as_str().unwrap_or("");
        let theirs = ids_of(&v);
        match &mut self.phase {
            Phase::Who => {
                if matches!(op, "held" | "claim") {
                    self.taken.extend(theirs);
                }
            }
            Phase::Claim { want, lost } => {
                let overlap = theirs.iter().any(|i| want.contains(i));
                match op {
                    "held" if overlap => *lost = true,
                    "claim" if overlap && other < self.node => *lost = true,
                    _ => {}
                }
                if matches!(op, "held" | "claim") {
                    self.taken.extend(theirs);
                }
            }
            Phase::Holding(ids) => {
                let answer = match op {
                    "who" => true,
                    "claim" => theirs.iter().any(|i| ids.contains(i)),
                    _ => false,
                };
                if answer {
                    self.publish(self.held());
                }
            }
        }
    }

    /// The end of a round: claim (again), or hold what was claimed.
    fn round_over(this: &Rc<RefCell<Agreement>>) {
        let mut a = this.borrow_mut();
        if let Phase::Claim { want, lost: false } = &a.phase {
            let ids = want.clone();
            a.phase = Phase::Holding(ids.clone());
            if let Some(done) = a.done.take() {
                drop(a);
                done(Ok(ids));
            }
            return;
        }
        if let Phase::Claim { want, lost: true } = &a.phase {
            log::info!("worker ids {want:?} are taken; choosing again");
        }
        let want: Vec<u32> = match &a.pinned {
            Some(p) => {
                let clash: Vec<u32> = p.iter().copied().filter(|i| a.taken.contains(i)).collect();
                if !clash.is_empty() {
                    if let Some(done) = a.done.take() {
                        drop(a);
                        done(Err(ClaimError::Clash(clash)));
                    }
                    return;
                }
                p.clone()
            }
            None => (0u32..)
                .filter(|i| !a.taken.contains(i))
                .take(a.count)
                .collect(),
        };
        a.publish(json!({"op": "claim", "ids": want, "node": a.node}));
        a.phase = Phase::Claim { want, lost: false };
        drop(a);
        Agreement::next_round(this);
    }

    fn next_round(this: &Rc<RefCell<Agreement>>) {
        let weak = Rc::downgrade(this);
        Timer::once_internal(ROUND, move || {
            if let Some(a) = weak.upgrade() {
                Agreement::round_over(&a);
            }
        });
    }

    /// Subscribe `client` to the ids event for this agreement; announce again on reconnect.
    fn listen(this: &Rc<RefCell<Agreement>>) {
        let Some(client) = this.borrow().client.upgrade() else {
            return;
        };
        let a = this.clone();
        client.on(IDS_EVENT, move |v| a.borrow_mut().heard(v));
        let weak = Rc::downgrade(this);
        client.on_connect(move || {
            // Claims made while this node was away see it now.
            if let Some(a) = weak.upgrade() {
                let a = a.borrow();
                if matches!(a.phase, Phase::Holding(_)) {
                    a.publish(a.held());
                }
            }
        });
    }
}

/// Agree on ids over pub/sub through `client` (connected); `done` gets them, and the client
/// keeps answering for them while it lives.
fn agree(client: &Client, node: &str, count: usize, pinned: Option<Vec<u32>>, done: ClaimDone) {
    let a = Rc::new(RefCell::new(Agreement {
        client: client.downgrade(),
        node: u64::from_str_radix(node, 16).unwrap_or(0),
        count,
        pinned,
        taken: BTreeSet::new(),
        phase: Phase::Who,
        done: Some(done),
    }));
    Agreement::listen(&a);
    let node = a.borrow().node;
    a.borrow().publish(json!({"op": "who", "node": node}));
    Agreement::next_round(&a);
}

/// Answer for `ids` held by `node` through `client` while it lives, announcing them first
/// when `announce`.
fn answer(client: &Client, node: &str, ids: Vec<u32>, announce: bool) {
    let a = Rc::new(RefCell::new(Agreement {
        client: client.downgrade(),
        node: u64::from_str_radix(node, 16).unwrap_or(0),
        count: ids.len(),
        pinned: None,
        taken: BTreeSet::new(),
        phase: Phase::Holding(ids),
        done: None,
    }));
    Agreement::listen(&a);
    if announce {
        let held = a.borrow().held();
        a.borrow().publish(held);
    }
}
