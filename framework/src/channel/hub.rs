//! The channel hub: subscriptions (event name → subscribers), queues (name → watchers,
//! consumers ready for one item, pending items) and the directory (`channel::directory`:
//! connections, uids, groups, sessions; its operations answered in the acknowledgement and
//! forwarded as events to the workers they concern), held by an actix actor.
//!
//! The hub lives on the channel server worker's thread. TCP subscribers are connections of that
//! worker, so the hub writes to them directly (a frame encoded once per event and shared by all
//! subscribers). In-process clients on other threads reach the hub through its actor address
//! and receive deliveries as actor messages — the embedded mode, with no TCP hop.
//!
//! Cross-thread messages are batched: a client sends the commands of one turn of its thread as
//! one message, and the hub sends each in-process subscriber one message per turn of the hub's
//! thread with every event of that turn. Each message that finds a thread parked costs a
//! wake-up (an `eventfd` write and a context switch), so under load this is what keeps a
//! publish cheap.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;

use super::dir::{self, error_answer, DirOp};
use super::directory::{Announcement, DirectoryState, Forward};
use super::history::Position;
use super::php_serde::{self, Key};
use super::routes::Routes;
use super::subscriber::{LocalDelivery, LocalSink, Sink, SubscriberId, MAX_LOCAL_PENDING};
use super::wire::{encode_delivery, encode_event_at, Command, Delivery, DeliveryKind, WireName};
use crate::connection::Connection;
use crate::metrics::{HubMetrics, NodeFigures};

/// Most items a queue holds while no consumer takes them; more are dropped with a warning.
pub const MAX_QUEUE_ITEMS: usize = 1_000_000;

impl Sink {
    fn deliver(
        &self,
        id: SubscriberId,
        event: (DeliveryKind, &WireName, &Bytes, Option<Position>),
        frame: &mut Option<Bytes>,
        now: bool,
        out: &Rc<RefCell<LocalOut>>,
    ) -> bool {
        let (kind, name, data, pos) = event;
        match self {
            Sink::Tcp(conn) => {
                let f = frame.get_or_insert_with(|| match pos {
                    Some(pos) => encode_event_at(&name.raw, data, pos),
                    None => encode_delivery(kind, &name.raw, data),
                });
                let queued = conn.send_deferred(f.clone()).is_ok();
                if now && queued {
                    // An acknowledged publish: written before the turn's acknowledgements.
                    LocalOut::flush_before_acks(out, conn);
                }
                queued
            }
            Sink::Local(sink) => LocalOut::push(
                out,
                id,
                sink,
                Delivery {
                    kind,
                    channel: name.key.clone(),
                    data: data.clone(),
                    pos,
                },
            ),
        }
    }
}

/// What this turn of the hub's thread sends when it ends (a task spawned with the first of
/// it): deliveries to in-process clients, one message per client; then the acknowledgements of
/// the publishes the channel server took this turn, each after its deliveries were written to
/// the subscribers' sockets. So many acknowledged publishes read at once cost one write per
/// subscriber and one per publisher, not one each.
#[derive(Default)]
pub(crate) struct LocalOut {
    batches: Vec<(SubscriberId, LocalSink, Vec<Delivery>)>,
    /// TCP subscribers to write to before the acknowledgements, and their ids.
    flush: Vec<Connection>,
    flush_ids: HashSet<u64>,
    /// Acknowledgements to send: the publisher's connection and the encoded frame.
    acks: Vec<(Connection, Bytes)>,
    /// In-process clients whose commands this turn took: each may deliver by itself again
    /// once what the hub made of them is sent (see `channel::routes`).
    release: Vec<Arc<AtomicUsize>>,
    scheduled: bool,
    /// The routes the hub keeps for in-process publishers, and the refusal log it shares.
    routes: Arc<Routes>,
}

impl LocalOut {
    /// This turn's deliveries to in-process subscriber `id`.
    fn batch(&mut self, id: SubscriberId, sink: &LocalSink) -> &mut Vec<Delivery> {
        let i = match self.batches.iter().position(|(s, _, _)| *s == id) {
            Some(i) => i,
            None => {
                self.batches.push((id, sink.clone(), Vec::new()));
                self.batches.len() - 1
            }
        };
        &mut self.batches[i].2
    }

    fn schedule(this: &Rc<RefCell<LocalOut>>, out: &mut LocalOut) {
        if !out.scheduled {
            out.scheduled = true;
            let this = this.clone();
            actix_rt::spawn(async move { LocalOut::flush(&this) });
        }
    }

    /// Answer command `ack` of an in-process client with `data` (a confirmed publish's count,
    /// a directory operation's answer): never refused, however many wait.
    fn ack_local(
        this: &Rc<RefCell<LocalOut>>,
        id: SubscriberId,
        sink: &LocalSink,
        ack: i64,
        data: Bytes,
    ) {
        let d = Delivery {
            kind: DeliveryKind::Ack,
            channel: Key::Int(ack),
            data,
            pos: None,
        };
        let mut out = this.borrow_mut();
        out.batch(id, sink).push(d);
        LocalOut::schedule(this, &mut out);
    }

    fn flush_before_acks(this: &Rc<RefCell<LocalOut>>, conn: &Connection) {
        let mut out = this.borrow_mut();
        if out.flush_ids.insert(conn.id()) {
            out.flush.push(conn.clone());
        }
        LocalOut::schedule(this, &mut out);
    }

    /// Let an in-process client deliver by itself again once this turn's sends are out.
    fn release(this: &Rc<RefCell<LocalOut>>, busy: Arc<AtomicUsize>) {
        let mut out = this.borrow_mut();
        out.release.push(busy);
        LocalOut::schedule(this, &mut out);
    }

    /// Send `frame` on `conn` when this turn ends, after the deliveries made so far.
    pub(crate) fn ack(this: &Rc<RefCell<LocalOut>>, conn: &Connection, frame: Bytes) {
        let mut out = this.borrow_mut();
        out.acks.push((conn.clone(), frame));
        LocalOut::schedule(this, &mut out);
    }

    fn push(this: &Rc<RefCell<LocalOut>>, id: SubscriberId, sink: &LocalSink, d: Delivery) -> bool {
        let mut out = this.borrow_mut();
        if sink.pending.load(Ordering::Acquire) + out.batch(id, sink).len() >= MAX_LOCAL_PENDING {
            out.routes.refusals.note(id);
            return false;
        }
        out.batch(id, sink).push(d);
        LocalOut::schedule(this, &mut out);
        true
    }

    /// Send the in-process batches now (a kept publish's, under the store's lock), ahead of
    /// the turn's end; what else the turn holds goes then.
    fn send_local_now(this: &RefCell<LocalOut>) {
        let (batches, flush) = {
            let mut out = this.borrow_mut();
            if out.batches.is_empty() {
                // No in-process subscriber (a channel server's usual turn): the TCP writes
                // stay batched to the turn's end.
                return;
            }
            // The subscribers' writes go before any acknowledgement in the batches, as at the
            // end; without one they too stay batched.
            let acks = out
                .batches
                .iter()
                .any(|(_, _, items)| items.iter().any(|d| d.kind == DeliveryKind::Ack));
            let flush = match acks {
                true => {
                    out.flush_ids.clear();
                    std::mem::take(&mut out.flush)
                }
                false => Vec::new(),
            };
            (std::mem::take(&mut out.batches), flush)
        };
        for conn in flush {
            conn.flush_now();
        }
        LocalOut::send_batches(batches);
    }

    /// Hand each in-process subscriber its batch (one message each).
    fn send_batches(batches: Vec<(SubscriberId, LocalSink, Vec<Delivery>)>) {
        for (id, sink, items) in batches {
            if items.is_empty() {
                continue;
            }
            let n = items.len();
            sink.pending.fetch_add(n, Ordering::AcqRel);
            // A confirmation is never dropped, whatever the mailbox holds.
            let sent = if items.iter().any(|d| d.kind == DeliveryKind::Ack) {
                sink.recipient
                    .connected()
                    .then(|| sink.recipient.do_send(LocalDelivery(items, None)))
            } else {
                sink.recipient.try_send(LocalDelivery(items, None)).ok()
            };
            if sent.is_none() {
                sink.pending.fetch_sub(n, Ordering::AcqRel);
                log::debug!("channel: in-process subscriber {id:?} is gone: {n} deliveries lost");
            }
        }
    }

    /// Send everything now: the subscribers' writes, the in-process batches, then the
    /// acknowledgements.
    pub(crate) fn flush(this: &RefCell<LocalOut>) {
        let (batches, flush, acks, release) = {
            let mut out = this.borrow_mut();
            out.scheduled = false;
            out.flush_ids.clear();
            (
                std::mem::take(&mut out.batches),
                std::mem::take(&mut out.flush),
                std::mem::take(&mut out.acks),
                std::mem::take(&mut out.release),
            )
        };
        for conn in flush {
            conn.flush_now();
        }
        LocalOut::send_batches(batches);
        let mut last: Option<Connection> = None;
        for (conn, frame) in acks {
            if last.as_ref().is_some_and(|l| l.id() != conn.id()) {
                last.take().expect("some").flush_now();
            }
            conn.send_deferred(frame);
            last = Some(conn);
        }
        if let Some(conn) = last {
            conn.flush_now();
        }
        for busy in release {
            busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[derive(Default)]
struct Subscribers {
    list: Vec<(SubscriberId, Sink)>,
    cursor: usize,
    /// Parked subscriptions ([`Command::Park`]): counted by a publish, sent only a waking one.
    parked: Vec<(SubscriberId, Sink)>,
}

impl Subscribers {
    fn has(&self, id: SubscriberId) -> bool {
        self.list.iter().chain(&self.parked).any(|(s, _)| *s == id)
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty() && self.parked.is_empty()
    }

    /// Move `id`'s subscription from `from` to `to` (parking or unparking it); whether it moved.
    fn shift(
        id: SubscriberId,
        from: &mut Vec<(SubscriberId, Sink)>,
        to: &mut Vec<(SubscriberId, Sink)>,
    ) -> bool {
        match from.iter().position(|(s, _)| *s == id) {
            Some(i) => {
                to.push(from.remove(i));
                true
            }
            None => false,
        }
    }
}

#[derive(Default)]
struct Queue {
    name: Option<WireName>,
    items: VecDeque<Bytes>,
    watchers: Vec<(SubscriberId, Sink)>,
    consumers: VecDeque<SubscriberId>,
}

impl Queue {
    fn dispatch(&mut self, stats: &mut HubStats, out: &Rc<RefCell<LocalOut>>) {
        let Some(name) = self.name.clone() else {
            return;
        };
        while !self.items.is_empty() {
            let Some(id) = self.consumers.pop_front() else {
                break;
            };
            let Some((_, sink)) = self.watchers.iter().find(|(w, _)| *w == id) else {
                continue;
            };
            let item = self.items.pop_front().expect("not empty");
            let mut frame = None;
            let event = (DeliveryKind::Queue, &name, &item, None);
            if sink.deliver(id, event, &mut frame, false, out) {
                stats.deliveries += 1;
            } else {
                // The consumer cannot take it: keep the item for the next one.
                self.items.push_front(item);
                stats.failed += 1;
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.watchers.is_empty() && self.items.is_empty()
    }
}

/// Counters of a hub.
#[derive(Debug, Default, Clone, Copy)]
pub struct HubStats {
    /// Commands handled.
    pub commands: u64,
    /// Events and queue items handed to subscribers.
    pub deliveries: u64,
    /// Deliveries a subscriber could not take (full send buffer).
    pub failed: u64,
    /// Queue items dropped because the queue was full.
    pub dropped: u64,
}

/// What a command gives back for its acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// The subscribers a publish reached (0 for commands that reach none).
    Reached(usize),
    /// A directory operation's answer (JSON, see `channel::dir`).
    Dir(Vec<u8>),
}

impl Answer {
    /// The acknowledgement's data: the count (`i:N;`), or the answer's JSON as a PHP string.
    pub fn ack_data(&self) -> Bytes {
        let mut out = Vec::with_capacity(match self {
            Answer::Reached(_) => 24,
            Answer::Dir(json) => json.len() + 16,
        });
        match self {
            Answer::Reached(n) => Key::Int(*n as i64).write(&mut out),
            Answer::Dir(json) => php_serde::write_str(&mut out, json),
        }
        Bytes::from(out)
    }

    /// The subscribers a publish reached (0 for a directory operation).
    #[cfg(test)]
    pub fn reached(&self) -> usize {
        match self {
            Answer::Reached(n) => *n,
            Answer::Dir(_) => 0,
        }
    }
}

/// Worker `w`'s node event as a key, made once per worker (at most [`NODE_KEYS`] kept).
fn node_key(keys: &RefCell<HashMap<u32, Key>>, w: u32) -> Key {
    let mut keys = keys.borrow_mut();
    if let Some(k) = keys.get(&w) {
        return k.clone();
    }
    if keys.len() >= NODE_KEYS {
        keys.clear();
    }
    let k = Key::from(dir::node_event(w));
    keys.insert(w, k.clone());
    k
}

/// Node event keys a hub keeps made (worker ids seen; a bound, not a limit).
const NODE_KEYS: usize = 65_536;

/// The subscription, queue and directory state.
pub(crate) struct HubState {
    channels: HashMap<Key, Subscribers>,
    queues: HashMap<Key, Queue>,
    subscribed: HashMap<SubscriberId, HashSet<Key>>,
    watching: HashMap<SubscriberId, HashSet<Key>>,
    /// Parked subscriptions, over every event (for the metrics).
    parked: usize,
    /// Who is connected where, with uids, groups and sessions (`channel::dir`).
    directory: DirectoryState,
    /// Each worker's node event (`dir::node_event`), made once.
    node_keys: RefCell<HashMap<u32, Key>>,
    pub stats: HubStats,
    /// Deliveries to in-process clients not yet sent.
    local_out: Rc<RefCell<LocalOut>>,
    /// Each event's subscribers, for in-process publishers (kept in step with `channels`).
    routes: Arc<Routes>,
}

impl Default for HubState {
    fn default() -> Self {
        let routes = Arc::new(Routes::default());
        let local_out = LocalOut {
            routes: routes.clone(),
            ..LocalOut::default()
        };
        HubState {
            channels: HashMap::new(),
            queues: HashMap::new(),
            subscribed: HashMap::new(),
            watching: HashMap::new(),
            parked: 0,
            directory: DirectoryState::default(),
            node_keys: RefCell::default(),
            stats: HubStats::default(),
            local_out: Rc::new(RefCell::new(local_out)),
            routes,
        }
    }
}

impl HubState {
    /// Set the hub's gauges in `m` from its state now (once a second; no cost per event);
    /// `remote` names a TCP subscriber's address.
    pub fn report(&self, m: &HubMetrics, remote: impl Fn(u64) -> Option<String>) {
        let nodes = self
            .directory
            .owners()
            .into_iter()
            .map(|(id, held)| NodeFigures {
                node: match id {
                    SubscriberId::Tcp(c) => format!("tcp {}", remote(c).unwrap_or_default()),
                    SubscriberId::Local(_) => "in-process".into(),
                },
                workers: held.iter().map(|h| h.0).collect(),
                connections: held.iter().map(|h| h.1).sum(),
            })
            .collect();
        *m.nodes.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
        m.subscribers.set(self.subscribed.len() as i64);
        m.events.set(self.channels.len() as i64);
        m.parked.set(self.parked as i64);
        m.deliveries.set(self.stats.deliveries as i64);
        let [clients, uids, groups, presence_groups, presence_members] = self.directory.sizes();
        m.clients.set(clients as i64);
        m.uids.set(uids as i64);
        m.groups.set(groups as i64);
        m.presence_groups.set(presence_groups as i64);
        m.presence_members.set(presence_members as i64);
        let (streams, events) = self.routes.history().sizes();
        m.history_streams.set(streams as i64);
        m.history_events.set(events as i64);
    }

    /// The routes this hub keeps for in-process publishers.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    /// Apply one command from subscriber `id`; returns what its acknowledgement says: the
    /// subscribers a publish reached (0 for other commands), or a directory operation's
    /// answer. The deliveries of a `confirmed` command are written to the sockets when the
    /// turn ends, before the acknowledgements ([`HubState::ack_later`]), not whenever each
    /// connection's task runs.
    pub fn apply(
        &mut self,
        id: SubscriberId,
        sink: &Sink,
        cmd: Command,
        confirmed: bool,
    ) -> Answer {
        self.stats.commands += 1;
        let mut reached = 0;
        match cmd {
            Command::Ping | Command::Auth(_) | Command::Hello => {}
            Command::Dir(data) => {
                if let Some(n) = self.uid_send(&data, confirmed) {
                    return Answer::Dir(n.to_string().into_bytes());
                }
                let answer = self.directory(id, &data, confirmed);
                return Answer::Dir(serde_json::to_vec(&answer).expect("JSON values serialize"));
            }
            Command::Subscribe(names) => {
                for n in names {
                    let subs = self.channels.entry(n.key.clone()).or_default();
                    if !subs.has(id) {
                        subs.list.push((id, sink.clone()));
                        self.routes.set(&n.key, &subs.list, subs.parked.len());
                    }
                    self.subscribed.entry(id).or_default().insert(n.key);
                }
            }
            Command::Park(names) => self.park(id, names, true),
            Command::Unpark(names) => self.park(id, names, false),
            Command::Unsubscribe(names) => {
                for n in names {
                    self.unsubscribe(id, &n.key);
                    if let Some(set) = self.subscribed.get_mut(&id) {
                        set.remove(&n.key);
                    }
                }
            }
            Command::History(name, since) => {
                let page = self.routes.history().read(&name.key, since, Instant::now());
                return Answer::Dir(page.encode());
            }
            Command::Publish(..) | Command::PublishKept(..) | Command::Waking(_) => {
                let (cmd, wake) = cmd.unwake();
                let (names, data, keep) = match cmd {
                    Command::Publish(names, data) => (names, data, None),
                    Command::PublishKept(names, data, keep) => (names, data, Some(keep)),
                    _ => return Answer::Reached(0),
                };
                let now = keep.map(|_| Instant::now());
                // A kept publish is numbered and handed to in-process subscribers under the
                // store's lock, as publishers that deliver by themselves do (`routes.rs`):
                // each subscriber gets a name's positions in order, whichever path each took.
                let routes = self.routes.clone();
                let mut store = keep.map(|_| routes.history());
                for n in names {
                    let pos = match (keep, now, store.as_mut()) {
                        (Some(keep), Some(now), Some(store)) => {
                            Some(store.append(&n.key, &data, keep, now))
                        }
                        _ => None,
                    };
                    let Some(subs) = self.channels.get(&n.key) else {
                        continue;
                    };
                    let mut frame = None;
                    let parked: &[(SubscriberId, Sink)] = match wake {
                        true => &subs.parked,
                        false => {
                            // Counted as reached: a parked subscriber has no one to hand it to.
                            reached += subs.parked.len();
                            &[]
                        }
                    };
                    for (sid, s) in subs.list.iter().chain(parked) {
                        let event = (DeliveryKind::Event, &n, &data, pos);
                        if s.deliver(*sid, event, &mut frame, confirmed, &self.local_out) {
                            self.stats.deliveries += 1;
                            reached += 1;
                        } else {
                            self.stats.failed += 1;
                        }
                    }
                }
                if store.is_some() {
                    LocalOut::send_local_now(&self.local_out);
                }
                drop(store);
            }
            Command::PublishLoop(names, data) => {
                for n in names {
                    let Some(subs) = self.channels.get_mut(&n.key) else {
                        continue;
                    };
                    if subs.list.is_empty() {
                        continue;
                    }
                    subs.cursor = (subs.cursor + 1) % subs.list.len();
                    let mut frame = None;
                    let (sid, sink) = &subs.list[subs.cursor];
                    let event = (DeliveryKind::Event, &n, &data, None);
                    if sink.deliver(*sid, event, &mut frame, confirmed, &self.local_out) {
                        self.stats.deliveries += 1;
                        reached += 1;
                    } else {
                        self.stats.failed += 1;
                    }
                }
            }
            Command::Enqueue(names, data) => {
                for n in names {
                    self.enqueue(n, data.clone());
                }
            }
            Command::Watch(names) => {
                for n in names {
                    let q = self.queues.entry(n.key.clone()).or_default();
                    q.name.get_or_insert(n.clone());
                    if !q.watchers.iter().any(|(w, _)| *w == id) {
                        q.watchers.push((id, sink.clone()));
                    }
                    self.watching.entry(id).or_default().insert(n.key);
                }
            }
            Command::Unwatch(names) => {
                for n in names {
                    self.unwatch(id, &n.key);
                    if let Some(set) = self.watching.get_mut(&id) {
                        set.remove(&n.key);
                    }
                }
            }
            Command::Reserve => {
                let watched: Vec<Key> = self
                    .watching
                    .get(&id)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                for k in watched {
                    if let Some(q) = self.queues.get_mut(&k) {
                        if !q.consumers.contains(&id) {
                            q.consumers.push_back(id);
                        }
                        q.dispatch(&mut self.stats, &self.local_out);
                    }
                }
            }
        }
        Answer::Reached(reached)
    }

    /// A directory operation from `id` (`data`: its JSON as a PHP string): applied, forwarded
    /// unchanged as an event to the node events of the workers holding its targets (or to
    /// every node), answered. A refused operation is answered `{"error": why}`; the
    /// connection stays.
    fn directory(&mut self, id: SubscriberId, data: &Bytes, confirmed: bool) -> serde_json::Value {
        let op = Command::dir_json(data)
            .map_err(|e| e.to_string())
            .and_then(|json| DirOp::from_wire(&json).map_err(|e| e.0));
        let op = match op {
            Ok(op) => op,
            Err(why) => {
                if !confirmed {
                    log::warn!("channel: directory operation from {id:?} refused: {why}");
                }
                return error_answer(&why);
            }
        };
        let channels = &self.channels;
        let node_keys = &self.node_keys;
        let subscribed = |w: u32| {
            channels
                .get(&node_key(node_keys, w))
                .is_some_and(|s| !s.is_empty())
        };
        let applied = self.directory.apply(id, &op, subscribed);
        self.announce();
        match applied.forward {
            Forward::Nowhere => {}
            Forward::Workers(workers) => {
                for w in workers {
                    self.forward(node_key(&self.node_keys, w), data, confirmed);
                }
            }
            Forward::AllNodes => self.forward(Key::from(dir::ALL_NODES), data, confirmed),
        }
        applied.answer
    }

    /// A send to one uid in the compact form (the usual push), applied as
    /// [`HubState::directory`] applies it, without an operation built and read: forwarded
    /// unchanged to the node events of the workers holding the uid; the connections reached
    /// at subscribed ones. `None`: not such a send (a malformed one included, refused there).
    fn uid_send(&mut self, data: &Bytes, confirmed: bool) -> Option<usize> {
        let json = Command::dir_json(data).ok()?;
        let send = dir::UidSend::read(&json)?.ok()?;
        let mut holders: Vec<(u32, usize)> = Vec::new();
        self.directory
            .uid_holders(send.uid, |w, count| holders.push((w, count)));
        let mut n = 0;
        for (w, count) in holders {
            let key = node_key(&self.node_keys, w);
            if self.channels.get(&key).is_some_and(|s| !s.is_empty()) {
                n += count;
            }
            self.forward(key, data, confirmed);
        }
        Some(n)
    }

    /// Deliver `data` as event `key` to its subscribers, as a publish does.
    fn forward(&mut self, key: Key, data: &Bytes, confirmed: bool) {
        let Some(subs) = self.channels.get(&key) else {
            return;
        };
        let wire = WireName::from_key(key);
        let mut frame = None;
        for (sid, s) in &subs.list {
            let event = (DeliveryKind::Event, &wire, data, None);
            if s.deliver(*sid, event, &mut frame, confirmed, &self.local_out) {
                self.stats.deliveries += 1;
            } else {
                self.stats.failed += 1;
            }
        }
    }

    /// Acknowledge a publish to `conn` with `frame` once this turn's deliveries are written.
    pub fn ack_later(&self, conn: &Connection, frame: Bytes) {
        LocalOut::ack(&self.local_out, conn, frame);
    }

    fn unsubscribe(&mut self, id: SubscriberId, key: &Key) {
        if let Some(subs) = self.channels.get_mut(key) {
            subs.list.retain(|(s, _)| *s != id);
            let before = subs.parked.len();
            subs.parked.retain(|(s, _)| *s != id);
            self.parked -= before - subs.parked.len();
            self.routes.set(key, &subs.list, subs.parked.len());
            if subs.is_empty() {
                self.channels.remove(key);
            } else if subs.cursor >= subs.list.len() {
                subs.cursor = 0;
            }
        }
    }

    /// Park `id`'s subscriptions to `names` (or unpark them): see [`Command::Park`].
    fn park(&mut self, id: SubscriberId, names: Vec<WireName>, park: bool) {
        for n in names {
            let Some(subs) = self.channels.get_mut(&n.key) else {
                continue;
            };
            let Subscribers {
                list,
                parked,
                cursor,
            } = subs;
            let moved = match park {
                true => Subscribers::shift(id, list, parked),
                false => Subscribers::shift(id, parked, list),
            };
            if moved {
                match park {
                    true => self.parked += 1,
                    false => self.parked -= 1,
                }
                if *cursor >= list.len() {
                    *cursor = 0;
                }
                self.routes.set(&n.key, list, parked.len());
            }
        }
    }

    fn unwatch(&mut self, id: SubscriberId, key: &Key) {
        if let Some(q) = self.queues.get_mut(key) {
            q.watchers.retain(|(w, _)| *w != id);
            q.consumers.retain(|c| *c != id);
            if q.is_idle() {
                self.queues.remove(key);
            }
        }
    }

    /// Forget everything of a subscriber that went away: its subscriptions, its watches,
    /// and the connections it registered in the directory.
    pub fn remove(&mut self, id: SubscriberId) {
        for key in self.subscribed.remove(&id).unwrap_or_default() {
            self.unsubscribe(id, &key);
        }
        for key in self.watching.remove(&id).unwrap_or_default() {
            self.unwatch(id, &key);
        }
        let gone = self.directory.remove_owner(id);
        if gone > 0 {
            log::info!("channel: {id:?} went away: {gone} directory clients removed");
        }
        self.announce();
    }

    /// Make what the directory announced (presence groups' comings and goings), in order.
    fn announce(&mut self) {
        for a in self.directory.take_announcements() {
            match a {
                Announcement::Publish(event, payload) => {
                    self.forward(Key::from(&*event), &Bytes::from(payload), false);
                }
                Announcement::Enqueue(queue, item) => {
                    let name = WireName::from_key(Key::from(&*queue));
                    self.enqueue(name, Bytes::from(item));
                }
            }
        }
    }

    /// Add `data` to queue `name` and hand out what its consumers can take.
    fn enqueue(&mut self, name: WireName, data: Bytes) {
        let q = self.queues.entry(name.key.clone()).or_default();
        q.name.get_or_insert(name);
        if q.items.len() >= MAX_QUEUE_ITEMS {
            self.stats.dropped += 1;
            log::warn!("channel queue full ({MAX_QUEUE_ITEMS} items): item dropped");
            return;
        }
        q.items.push_back(data);
        q.dispatch(&mut self.stats, &self.local_out);
    }
}

/// Commands from an in-process client, in order: those of one turn of its thread.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct LocalCommand {
    pub id: u64,
    pub sink: LocalSink,
    /// Each with the id of the confirmation the client waits for, if it does.
    pub cmds: Vec<(Command, Option<i64>)>,
    /// The client's count of messages the hub has not finished; the hub takes one off when
    /// this one's deliveries are sent.
    pub busy: Arc<AtomicUsize>,
}

/// An in-process client went away.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct LocalGone(pub u64);

/// The hub actor; shares its state with the TCP side on the same thread.
pub struct Hub {
    state: Rc<RefCell<HubState>>,
}

impl Hub {
    pub(crate) fn new(state: Rc<RefCell<HubState>>) -> Self {
        Hub { state }
    }
}

impl Actor for Hub {
    type Context = Context<Self>;
}

impl Handler<LocalCommand> for Hub {
    type Result = ();
    fn handle(&mut self, msg: LocalCommand, _: &mut Self::Context) {
        let id = SubscriberId::Local(msg.id);
        let sink = Sink::Local(msg.sink.clone());
        let mut state = self.state.borrow_mut();
        for (cmd, ack) in msg.cmds {
            let answer = state.apply(id, &sink, cmd, ack.is_some());
            if let Some(ack) = ack {
                // After this turn's deliveries, in the client's next batch.
                LocalOut::ack_local(&state.local_out, id, &msg.sink, ack, answer.ack_data());
            }
        }
        LocalOut::release(&state.local_out, msg.busy);
    }
}

impl Handler<LocalGone> for Hub {
    type Result = ();
    fn handle(&mut self, msg: LocalGone, _: &mut Self::Context) {
        self.state.borrow_mut().remove(SubscriberId::Local(msg.0));
    }
}

/// A running hub, as its in-process clients reach it.
#[derive(Clone)]
pub(crate) struct HubHandle {
    pub addr: Addr<Hub>,
    pub routes: Arc<Routes>,
}

/// In-process hubs by the address their server was declared with.
#[derive(Default)]
pub(crate) struct Registry {
    declared: HashSet<String>,
    running: HashMap<String, HubHandle>,
}

pub(crate) fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Declare that a hub for `name` will run in this process.
pub(crate) fn declare(name: &str) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .declared
        .insert(name.to_string());
}

/// Forget the hubs declared here but for `keep` (a supervisor's child, forked with every
/// declaration, holds only the hubs of the workers it serves).
pub(crate) fn keep_only(keep: &[&str]) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .declared
        .retain(|n| keep.contains(&n.as_str()));
}

/// Publish a running hub.
pub(crate) fn publish(name: &str, hub: HubHandle) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .running
        .insert(name.to_string(), hub);
}

/// `Some(None)`: declared here but not yet running; `Some(Some(hub))`: running here;
/// `None`: not in this process.
pub(crate) fn lookup(name: &str) -> Option<Option<HubHandle>> {
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = r.running.get(name) {
        return Some(Some(a.clone()));
    }
    r.declared.contains(name).then_some(None)
}

#[cfg(test)]
mod tests {
    use super::super::subscriber::testing::{recorder, seen, until};
    use super::*;

    fn names(ns: &[&str]) -> Vec<WireName> {
        ns.iter()
            .map(|n| WireName::from_key(Key::from(*n)))
            .collect()
    }

    fn data(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    fn publish(ns: &[&str], d: &str) -> Command {
        Command::Publish(names(ns), data(d))
    }

    #[test]
    fn a_parked_subscription_is_counted_and_sent_only_waking_publishes() {
        actix_rt::System::new().block_on(async {
            let mut hub = HubState::default();
            let ((sa, la), (sb, lb)) = (recorder(), recorder());
            let (a, b) = (SubscriberId::Local(1), SubscriberId::Local(2));
            let (ka, kb) = (Sink::Local(sa), Sink::Local(sb));
            hub.apply(a, &ka, Command::Subscribe(names(&["news"])), false);
            hub.apply(b, &kb, Command::Subscribe(names(&["news"])), false);
            hub.apply(b, &kb, Command::Park(names(&["news"])), false);
            // Subscribing again does not unpark (nor add a second subscription).
            hub.apply(b, &kb, Command::Subscribe(names(&["news"])), false);
            assert_eq!(hub.parked, 1);
            let reached = |hub: &mut HubState, cmd| hub.apply(a, &ka, cmd, true).reached();
            assert_eq!(reached(&mut hub, publish(&["news"], "1")), 2, "b counted");
            let waking = Command::Waking(Box::new(publish(&["news"], "2")));
            assert_eq!(reached(&mut hub, waking), 2);
            // publish_loop skips it.
            for i in 0..2 {
                let cmd = Command::PublishLoop(names(&["news"]), data(&format!("l{i}")));
                assert_eq!(reached(&mut hub, cmd), 1);
            }
            hub.apply(b, &kb, Command::Unpark(names(&["news"])), true);
            assert_eq!(hub.parked, 0);
            assert_eq!(reached(&mut hub, publish(&["news"], "3")), 2);
            until(|| seen(&la).len() == 5 && seen(&lb).len() == 2).await;
            let got = |l| seen(l).into_iter().map(|(_, d)| d).collect::<Vec<_>>();
            assert_eq!(got(&la), ["1", "2", "l0", "l1", "3"]);
            assert_eq!(got(&lb), ["2", "3"], "only the waking publish while parked");
            // Unsubscribing a parked subscription forgets it.
            hub.apply(b, &kb, Command::Park(names(&["news"])), false);
            assert_eq!(hub.parked, 1);
            hub.apply(b, &kb, Command::Unsubscribe(names(&["news"])), false);
            assert_eq!(hub.parked, 0);
            assert_eq!(reached(&mut hub, publish(&["news"], "4")), 1);
            hub.remove(a);
            assert!(hub.channels.is_empty());
        });
    }

    #[test]
    fn apply_returns_the_subscribers_a_publish_reached() {
        actix_rt::System::new().block_on(async {
            let mut hub = HubState::default();
            let ((sa, la), (sb, lb)) = (recorder(), recorder());
            let (a, b) = (SubscriberId::Local(1), SubscriberId::Local(2));
            let (ka, kb) = (Sink::Local(sa), Sink::Local(sb));
            let sub = |ns: &[&str]| Command::Subscribe(names(ns));
            assert_eq!(hub.apply(a, &ka, sub(&["news", "1"]), false).reached(), 0);
            assert_eq!(hub.apply(b, &kb, sub(&["news"]), false).reached(), 0);
            // Subscribing twice changes nothing.
            assert_eq!(hub.apply(b, &kb, sub(&["news"]), false).reached(), 0);

            assert_eq!(
                hub.apply(b, &kb, publish(&["news"], "x"), false).reached(),
                2
            );
            assert_eq!(
                hub.apply(b, &kb, publish(&["news", "1"], "y"), true)
                    .reached(),
                3
            );
            assert_eq!(
                hub.apply(b, &kb, publish(&["nobody"], "z"), false)
                    .reached(),
                0
            );
            until(|| seen(&la).len() == 3 && seen(&lb).len() == 2).await;
            assert_eq!(
                seen(&la),
                [("news", "x"), ("news", "y"), ("1", "y")].map(|(n, d)| (n.into(), d.into()))
            );

            // publish_loop: one subscriber each time, in turn.
            for i in 0..4 {
                let cmd = Command::PublishLoop(names(&["news"]), data(&i.to_string()));
                assert_eq!(hub.apply(a, &ka, cmd, false).reached(), 1);
            }
            until(|| seen(&la).len() + seen(&lb).len() == 9).await;
            let loop_a: Vec<String> = seen(&la)[3..].iter().map(|(_, d)| d.clone()).collect();
            let loop_b: Vec<String> = seen(&lb)[2..].iter().map(|(_, d)| d.clone()).collect();
            assert_eq!(
                (loop_a.len(), loop_b.len()),
                (2, 2),
                "{loop_a:?} {loop_b:?}"
            );

            let unsub = Command::Unsubscribe(names(&["news"]));
            assert_eq!(hub.apply(b, &kb, unsub, false).reached(), 0);
            assert_eq!(
                hub.apply(a, &ka, publish(&["news"], "w"), false).reached(),
                1
            );
            hub.remove(a);
            assert_eq!(
                hub.apply(b, &kb, publish(&["news", "1"], "v"), false)
                    .reached(),
                0
            );
            assert!(hub.channels.is_empty());
            assert!(hub.subscribed.values().all(|names| names.is_empty()));
            assert_eq!(hub.stats.deliveries, 10);
        });
    }

    #[test]
    fn a_full_subscriber_is_refused_and_not_counted() {
        actix_rt::System::new().block_on(async {
            let mut hub = HubState::default();
            let ((sa, _la), (sb, lb)) = (recorder(), recorder());
            sa.pending.store(MAX_LOCAL_PENDING, Ordering::Release);
            let (ka, kb) = (Sink::Local(sa), Sink::Local(sb));
            let sub = Command::Subscribe(names(&["news"]));
            hub.apply(SubscriberId::Local(1), &ka, sub.clone(), false);
            hub.apply(SubscriberId::Local(2), &kb, sub, false);
            let reached = hub
                .apply(SubscriberId::Local(2), &kb, publish(&["news"], "x"), true)
                .reached();
            assert_eq!(reached, 1);
            assert_eq!((hub.stats.deliveries, hub.stats.failed), (1, 1));
            until(|| seen(&lb).len() == 1).await;
        });
    }

    #[test]
    fn queue_items_wait_for_a_reserve_and_go_to_one_watcher() {
        actix_rt::System::new().block_on(async {
            let mut hub = HubState::default();
            let ((sa, la), (sb, lb)) = (recorder(), recorder());
            let (a, b) = (SubscriberId::Local(1), SubscriberId::Local(2));
            let (ka, kb) = (Sink::Local(sa), Sink::Local(sb));
            for i in 0..3 {
                let cmd = Command::Enqueue(names(&["jobs"]), data(&i.to_string()));
                assert_eq!(hub.apply(b, &kb, cmd, false).reached(), 0);
            }
            hub.apply(a, &ka, Command::Watch(names(&["jobs"])), false);
            hub.apply(b, &kb, Command::Watch(names(&["jobs"])), false);
            hub.apply(a, &ka, Command::Reserve, false);
            hub.apply(b, &kb, Command::Reserve, false);
            until(|| seen(&la).len() == 1 && seen(&lb).len() == 1).await;
            assert_eq!(seen(&la), [("jobs".into(), "0".into())]);
            assert_eq!(seen(&lb), [("jobs".into(), "1".into())]);
            // A watcher that went away takes no item; the one left gets the last one.
            hub.remove(b);
            hub.apply(a, &ka, Command::Reserve, false);
            until(|| seen(&la).len() == 2).await;
            assert_eq!(seen(&la)[1], ("jobs".into(), "2".into()));
            assert!(hub.queues[&Key::from("jobs")].items.is_empty());
        });
    }

    /// A directory command with `op`'s JSON, and the PHP string its forwards carry.
    fn dir_cmd(op: serde_json::Value) -> (Command, String) {
        let cmd = Command::dir(op.to_string().as_bytes());
        let Command::Dir(data) = &cmd else {
            unreachable!()
        };
        let forwarded = String::from_utf8(data.to_vec()).unwrap();
        (cmd, forwarded)
    }

    /// The answer's JSON.
    fn answer(a: Answer) -> serde_json::Value {
        match a {
            Answer::Dir(json) => serde_json::from_slice(&json).unwrap(),
            other => panic!("not a directory answer: {other:?}"),
        }
    }

    #[test]
    fn directory_operations_go_only_to_the_workers_holding_their_targets() {
        use serde_json::json;
        actix_rt::System::new().block_on(async {
            let mut hub = HubState::default();
            // Two gateway nodes (workers 1 and 2) and an API client.
            let ((s1, l1), (s2, l2), (s3, l3)) = (recorder(), recorder(), recorder());
            let (n1, n2, api) = (
                SubscriberId::Local(1),
                SubscriberId::Local(2),
                SubscriberId::Local(3),
            );
            let (k1, k2, k3) = (Sink::Local(s1), Sink::Local(s2), Sink::Local(s3));
            let sub = |ns: &[&str]| Command::Subscribe(names(ns));
            hub.apply(n1, &k1, sub(&["werkmann.gw.1", "werkmann.gw"]), false);
            hub.apply(n2, &k2, sub(&["werkmann.gw.2", "werkmann.gw"]), false);
            let register = |ids: &[&str]| {
                let clients: Vec<_> = ids.iter().map(|c| json!({ "client_id": c })).collect();
                dir_cmd(json!({"op": "register", "clients": clients})).0
            };
            assert_eq!(
                answer(hub.apply(n1, &k1, register(&["1-1", "1-2"]), false)),
                json!(2)
            );
            assert_eq!(
                answer(hub.apply(n2, &k2, register(&["2-1"]), false)),
                json!(1)
            );
            let mut ask = |op: serde_json::Value| {
                let (cmd, fwd) = dir_cmd(op);
                (answer(hub.apply(api, &k3, cmd, true)), fwd)
            };

            // A bind goes to the client's worker only, as the command's bytes.
            let bind = |c: &str, u: &str| json!({"op": "bind_uid", "client_id": c, "uid": u});
            let (a, b1) = ask(bind("1-1", "alice"));
            assert_eq!(a, json!(1));
            let (_, b2) = ask(bind("2-1", "alice"));
            let (_, b3) = ask(bind("1-2", "bob"));
            // A uid's send: one copy per worker holding it.
            let send = |u: &str| json!({"op": "send", "target": {"to": "uids", "uids": [u]}, "data": "hi"});
            let (a, alice) = ask(send("alice"));
            assert_eq!(a, json!(2));
            let (a, bob) = ask(send("bob"));
            assert_eq!(a, json!(1));
            let (a, _) = ask(send("nobody"));
            assert_eq!(a, json!(0));
            // To all: once to every node, on the event all nodes share.
            let (a, all) = ask(json!({"op": "send", "target": {"to": "all"}, "data": "x"}));
            assert_eq!(a, json!(3));
            // Queries and refusals are answered, not forwarded.
            let (a, _) = ask(json!({"op": "get_all_client_id_count"}));
            assert_eq!(a, json!(3));
            let (a, _) = ask(json!({"op": "bind_uid", "client_id": "1-1"}));
            assert!(a["error"].as_str().unwrap().contains("uid"), "{a}");
            let bad = Command::Dir(Bytes::from_static(b"i:1;"));
            let a = answer(hub.apply(api, &k3, bad, true));
            assert!(a["error"].as_str().unwrap().contains("string"), "{a}");

            let w1 = |d: &str| ("werkmann.gw.1".to_string(), d.to_string());
            let w2 = |d: &str| ("werkmann.gw.2".to_string(), d.to_string());
            let every = |d: &str| ("werkmann.gw".to_string(), d.to_string());
            until(|| seen(&l1).len() == 5 && seen(&l2).len() == 3).await;
            assert_eq!(
                seen(&l1),
                [w1(&b1), w1(&b3), w1(&alice), w1(&bob), every(&all)]
            );
            assert_eq!(seen(&l2), [w2(&b2), w2(&alice), every(&all)]);
            // The API client subscribed to nothing: no event (its answers are the acks that
            // the hub's actor and the channel server send).
            assert!(seen(&l3).is_empty());

            // Counts include only workers whose node event has a subscriber.
            hub.apply(
                n2,
                &k2,
                Command::Unsubscribe(names(&["werkmann.gw.2"])),
                false,
            );
            let (cmd, _) = dir_cmd(send("alice"));
            assert_eq!(answer(hub.apply(api, &k3, cmd, true)), json!(1));
            // A node that goes away takes its clients with it.
            hub.remove(n1);
            let (cmd, _) = dir_cmd(json!({"op": "get_all_client_id_count"}));
            assert_eq!(answer(hub.apply(api, &k3, cmd, true)), json!(1));
            let (cmd, _) = dir_cmd(json!({"op": "get_client_id_by_uid", "uid": "alice"}));
            assert_eq!(answer(hub.apply(api, &k3, cmd, true)), json!(["2-1"]));
            assert_eq!(hub.stats.deliveries, 8 + 1);
        });
    }

    #[test]
    fn the_hub_actor_answers_each_command_by_its_id() {
        actix_rt::System::new().block_on(async {
            let state = Rc::new(RefCell::new(HubState::default()));
            let hub = Hub::new(state).start();
            let (sink, log) = recorder();
            let (count, _) = dir_cmd(serde_json::json!({"op": "get_all_client_id_count"}));
            hub.do_send(LocalCommand {
                id: 5,
                sink,
                cmds: vec![(count, Some(7)), (publish(&["x"], "i:1;"), Some(8))],
                busy: Arc::new(AtomicUsize::new(1)),
            });
            until(|| seen(&log).len() == 2).await;
            let got: Vec<Delivery> = log.lock().unwrap().concat();
            assert!(got.iter().all(|d| d.kind == DeliveryKind::Ack));
            assert_eq!(
                (&got[0].channel, &got[0].data[..]),
                (&Key::Int(7), &b"s:1:\"0\";"[..])
            );
            assert_eq!(
                (&got[1].channel, &got[1].data[..]),
                (&Key::Int(8), &b"i:0;"[..])
            );
        });
    }
}
