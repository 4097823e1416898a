//! The channel hub: subscriptions (event name → subscribers) and queues (name → watchers,
//! consumers ready for one item, pending items), held by an actix actor.
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

use actix::prelude::*;
use bytes::Bytes;

use super::php_serde::Key;
use super::routes::Routes;
use super::subscriber::{LocalDelivery, LocalSink, Sink, SubscriberId, MAX_LOCAL_PENDING};
use super::wire::{encode_delivery, Command, Delivery, DeliveryKind, WireName};
use crate::connection::Connection;

/// Most items a queue holds while no consumer takes them; more are dropped with a warning.
pub const MAX_QUEUE_ITEMS: usize = 1_000_000;

impl Sink {
    fn deliver(
        &self,
        id: SubscriberId,
        event: (DeliveryKind, &WireName, &Bytes),
        frame: &mut Option<Bytes>,
        now: bool,
        out: &Rc<RefCell<LocalOut>>,
    ) -> bool {
        let (kind, name, data) = event;
        match self {
            Sink::Tcp(conn) => {
                let f = frame.get_or_insert_with(|| encode_delivery(kind, &name.raw, data));
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

    /// Confirm publish `ack` to an in-process client: never refused, however many wait.
    fn ack_local(
        this: &Rc<RefCell<LocalOut>>,
        id: SubscriberId,
        sink: &LocalSink,
        ack: i64,
        reached: u64,
    ) {
        let mut count = Vec::new();
        Key::Int(reached as i64).write(&mut count);
        let d = Delivery {
            kind: DeliveryKind::Ack,
            channel: Key::Int(ack),
            data: Bytes::from(count),
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
            let event = (DeliveryKind::Queue, &name, &item);
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

/// The subscription and queue state.
pub(crate) struct HubState {
    channels: HashMap<Key, Subscribers>,
    queues: HashMap<Key, Queue>,
    subscribed: HashMap<SubscriberId, HashSet<Key>>,
    watching: HashMap<SubscriberId, HashSet<Key>>,
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
            stats: HubStats::default(),
            local_out: Rc::new(RefCell::new(local_out)),
            routes,
        }
    }
}

impl HubState {
    /// The routes this hub keeps for in-process publishers.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    /// Apply one command from subscriber `id`; returns the subscribers a publish reached (0
    /// for other commands). The deliveries of a `confirmed` publish are written to the
    /// sockets when the turn ends, before the acknowledgements ([`HubState::ack_later`]), not
    /// whenever each connection's task runs.
    pub fn apply(&mut self, id: SubscriberId, sink: &Sink, cmd: Command, confirmed: bool) -> usize {
        self.stats.commands += 1;
        let mut reached = 0;
        match cmd {
            Command::Ping | Command::Auth(_) | Command::Hello => {}
            // Directory operations: `HubState::directory` (to come).
            Command::Dir(_) => {}
            Command::Subscribe(names) => {
                for n in names {
                    let subs = self.channels.entry(n.key.clone()).or_default();
                    if !subs.list.iter().any(|(s, _)| *s == id) {
                        subs.list.push((id, sink.clone()));
                        self.routes.set(&n.key, &subs.list);
                    }
                    self.subscribed.entry(id).or_default().insert(n.key);
                }
            }
            Command::Unsubscribe(names) => {
                for n in names {
                    self.unsubscribe(id, &n.key);
                    if let Some(set) = self.subscribed.get_mut(&id) {
                        set.remove(&n.key);
                    }
                }
            }
            Command::Publish(names, data) => {
                for n in names {
                    let Some(subs) = self.channels.get(&n.key) else {
                        continue;
                    };
                    let mut frame = None;
                    for (sid, s) in &subs.list {
                        let event = (DeliveryKind::Event, &n, &data);
                        if s.deliver(*sid, event, &mut frame, confirmed, &self.local_out) {
                            self.stats.deliveries += 1;
                            reached += 1;
                        } else {
                            self.stats.failed += 1;
                        }
                    }
                }
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
                    let event = (DeliveryKind::Event, &n, &data);
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
                    let q = self.queues.entry(n.key.clone()).or_default();
                    q.name.get_or_insert(n);
                    if q.items.len() >= MAX_QUEUE_ITEMS {
                        self.stats.dropped += 1;
                        log::warn!("channel queue full ({MAX_QUEUE_ITEMS} items): item dropped");
                        continue;
                    }
                    q.items.push_back(data.clone());
                    q.dispatch(&mut self.stats, &self.local_out);
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
        reached
    }

    /// Acknowledge a publish to `conn` with `frame` once this turn's deliveries are written.
    pub fn ack_later(&self, conn: &Connection, frame: Bytes) {
        LocalOut::ack(&self.local_out, conn, frame);
    }

    fn unsubscribe(&mut self, id: SubscriberId, key: &Key) {
        if let Some(subs) = self.channels.get_mut(key) {
            subs.list.retain(|(s, _)| *s != id);
            self.routes.set(key, &subs.list);
            if subs.list.is_empty() {
                self.channels.remove(key);
            } else if subs.cursor >= subs.list.len() {
                subs.cursor = 0;
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

    /// Forget everything of a subscriber that went away.
    pub fn remove(&mut self, id: SubscriberId) {
        for key in self.subscribed.remove(&id).unwrap_or_default() {
            self.unsubscribe(id, &key);
        }
        for key in self.watching.remove(&id).unwrap_or_default() {
            self.unwatch(id, &key);
        }
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
            let reached = state.apply(id, &sink, cmd, ack.is_some());
            if let Some(ack) = ack {
                // After this turn's deliveries, in the client's next batch.
                LocalOut::ack_local(&state.local_out, id, &msg.sink, ack, reached as u64);
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
    fn apply_returns_the_subscribers_a_publish_reached() {
        actix_rt::System::new().block_on(async {
            let mut hub = HubState::default();
            let ((sa, la), (sb, lb)) = (recorder(), recorder());
            let (a, b) = (SubscriberId::Local(1), SubscriberId::Local(2));
            let (ka, kb) = (Sink::Local(sa), Sink::Local(sb));
            let sub = |ns: &[&str]| Command::Subscribe(names(ns));
            assert_eq!(hub.apply(a, &ka, sub(&["news", "1"]), false), 0);
            assert_eq!(hub.apply(b, &kb, sub(&["news"]), false), 0);
            // Subscribing twice changes nothing.
            assert_eq!(hub.apply(b, &kb, sub(&["news"]), false), 0);

            assert_eq!(hub.apply(b, &kb, publish(&["news"], "x"), false), 2);
            assert_eq!(hub.apply(b, &kb, publish(&["news", "1"], "y"), true), 3);
            assert_eq!(hub.apply(b, &kb, publish(&["nobody"], "z"), false), 0);
            until(|| seen(&la).len() == 3 && seen(&lb).len() == 2).await;
            assert_eq!(
                seen(&la),
                [("news", "x"), ("news", "y"), ("1", "y")].map(|(n, d)| (n.into(), d.into()))
            );

            // publish_loop: one subscriber each time, in turn.
            for i in 0..4 {
                let cmd = Command::PublishLoop(names(&["news"]), data(&i.to_string()));
                assert_eq!(hub.apply(a, &ka, cmd, false), 1);
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
            assert_eq!(hub.apply(b, &kb, unsub, false), 0);
            assert_eq!(hub.apply(a, &ka, publish(&["news"], "w"), false), 1);
            hub.remove(a);
            assert_eq!(hub.apply(b, &kb, publish(&["news", "1"], "v"), false), 0);
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
            let reached = hub.apply(SubscriberId::Local(2), &kb, publish(&["news"], "x"), true);
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
                assert_eq!(hub.apply(b, &kb, cmd, false), 0);
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
}
