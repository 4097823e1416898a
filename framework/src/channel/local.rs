//! [`LocalBroker`]: a client of a hub in this process (the embedded channel, or a channel
//! server running next to the client's worker). No socket: commands reach the hub's actor as
//! messages, and deliveries come back to an actor on the client's thread.
//!
//! The commands of one turn of the client's thread go as one message. When every one of them
//! is a publish to in-process subscribers only, the client delivers them itself, reading the
//! hub's routes (`channel::routes`): no hop to the hub's thread at all.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::broker::{Broker, BrokerEvents, Confirm, Reply};
use super::hub::{self, HubHandle, LocalCommand, LocalGone};
use super::php_serde::Key;
use super::subscriber::{LocalDelivery, LocalHandled, LocalSink};
use super::wire::{Command, Delivery, DeliveryKind};
use super::ChannelError;
use crate::callbacks::guard;
use crate::timer::Timer;

/// How long a confirmation waits for a lagging in-process subscriber to handle the event
/// before it is given anyway ("handed to", as the hub's are).
const HANDLED_WAIT: Duration = Duration::from_secs(5);

/// A client's link to an in-process hub.
pub(crate) struct LocalBroker {
    name: String,
    events: Weak<dyn BrokerEvents>,
    me: Weak<LocalBroker>,
    /// The hub, once its thread runs it.
    hub: RefCell<Option<HubHandle>>,
    /// This client's mailbox, as the hub delivers to it.
    sink: LocalSink,
    /// Where subscribers say they handled deliveries this client waits for.
    handled: Recipient<LocalHandled>,
    id: u64,
    /// Messages given to the hub that it has not finished (see `channel::routes`).
    busy: Arc<AtomicUsize>,
    closed: Cell<bool>,
    /// Commands made during this turn of the thread, sent as one message when the turn ends
    /// (a task spawned with the first of them), each with the id of the confirmation it waits
    /// for, if it does.
    outbox: RefCell<Vec<(Command, Option<i64>)>>,
    next_ack: Cell<i64>,
    confirms: RefCell<BTreeMap<i64, Confirm>>,
    /// Directory requests waiting for the hub's answer, by the same ids as confirmations.
    replies: RefCell<HashMap<i64, Reply>>,
    /// Confirmations of publishes this thread delivered itself that wait for lagging
    /// subscribers: notice token → confirmation ids; confirmation id → (notices still to
    /// come, subscribers reached).
    handled_wait: RefCell<HashMap<u64, Vec<i64>>>,
    ack_wait: RefCell<HashMap<i64, (usize, usize)>>,
    next_token: Cell<u64>,
    /// When each waiting notice is given up on, in token order; a sweep timer runs while any
    /// wait.
    wait_deadlines: RefCell<VecDeque<(u64, Instant)>>,
    sweeping: Cell<bool>,
}

impl LocalBroker {
    /// Link to the hub declared as `name`; up once its thread runs it.
    pub(crate) fn start(name: &str, events: Weak<dyn BrokerEvents>) -> Rc<dyn Broker> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let pending = Arc::new(AtomicUsize::new(0));
        let broker = Rc::new_cyclic(|me: &Weak<LocalBroker>| {
            let actor = ClientActor {
                broker: me.clone(),
                pending: pending.clone(),
            }
            .start();
            LocalBroker {
                name: name.to_string(),
                events,
                me: me.clone(),
                hub: RefCell::new(None),
                sink: LocalSink {
                    recipient: actor.clone().recipient(),
                    pending,
                },
                handled: actor.recipient(),
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                busy: Arc::new(AtomicUsize::new(0)),
                closed: Cell::new(false),
                outbox: RefCell::new(Vec::new()),
                next_ack: Cell::new(1),
                confirms: RefCell::new(BTreeMap::new()),
                replies: RefCell::new(HashMap::new()),
                handled_wait: RefCell::new(HashMap::new()),
                ack_wait: RefCell::new(HashMap::new()),
                next_token: Cell::new(0),
                wait_deadlines: RefCell::new(VecDeque::new()),
                sweeping: Cell::new(false),
            }
        });
        // Attach after the caller has set its callbacks, as a TCP connect would.
        let weak = Rc::downgrade(&broker);
        actix_rt::spawn(async move { attach(weak) });
        broker
    }

    /// Collect a command for the hub; the first of a turn schedules the flush.
    fn push_outbox(&self, cmd: Command, ack: Option<i64>) {
        let mut outbox = self.outbox.borrow_mut();
        outbox.push((cmd, ack));
        if outbox.len() == 1 {
            let weak = self.me.clone();
            actix_rt::spawn(async move {
                if let Some(b) = weak.upgrade() {
                    b.flush_outbox();
                }
            });
        }
    }

    /// Send the commands collected this turn: delivered here when every one is a publish to
    /// in-process subscribers only and the hub has sent out what it was given before (see
    /// `channel::routes`); else one message to the hub.
    fn flush_outbox(&self) {
        let cmds = std::mem::take(&mut *self.outbox.borrow_mut());
        if cmds.is_empty() {
            return;
        }
        let Some(hub) = self.hub.borrow().clone() else {
            return;
        };
        let mut done: Vec<(i64, Result<Option<usize>, ChannelError>)> = Vec::new();
        let direct = if self.busy.load(Ordering::Acquire) == 0 {
            let mut token = self.next_token.get();
            let d = hub.routes.deliver(&cmds, &self.handled, &mut token);
            self.next_token.set(token);
            d
        } else {
            None
        };
        if let Some(direct) = direct {
            let mut waits = vec![0; cmds.len()];
            for (token, of) in &direct.waits {
                let acks: Vec<i64> = of.iter().filter_map(|&i| cmds[i].1).collect();
                for &i in of {
                    waits[i] += 1;
                }
                self.wait_handled(*token, acks);
            }
            for (i, ((_, ack), n)) in cmds.iter().zip(direct.reached).enumerate() {
                match (ack, waits[i]) {
                    (Some(a), 0) => done.push((*a, Ok(Some(n)))),
                    (Some(a), w) => {
                        self.ack_wait.borrow_mut().insert(*a, (w, n));
                    }
                    (None, _) => {}
                }
            }
        } else if hub.addr.connected() {
            self.busy.fetch_add(1, Ordering::AcqRel);
            hub.addr.do_send(LocalCommand {
                id: self.id,
                sink: self.sink.clone(),
                cmds,
                busy: self.busy.clone(),
            });
        } else {
            // The hub is gone: nothing of this turn was taken.
            log::warn!(
                "channel {}: in-process hub did not take {} commands",
                self.name,
                cmds.len()
            );
            done.extend(
                cmds.into_iter()
                    .filter_map(|(_, a)| Some((a?, Err(ChannelError::Unconfirmed)))),
            );
        }
        for (a, result) in done {
            self.confirm(a, result);
        }
    }

    fn confirm(&self, ack: i64, result: Result<Option<usize>, ChannelError>) {
        let reply = self.replies.borrow_mut().remove(&ack);
        if let Some(reply) = reply {
            // A directory request the hub did not take: only failures come this way.
            let answer = result.and_then(|_| Err(ChannelError::Unconfirmed));
            guard("channel directory answer", || reply(answer));
            return;
        }
        let cb = self.confirms.borrow_mut().remove(&ack);
        if let Some(cb) = cb {
            guard("channel publish confirmation", || cb(result));
        }
    }

    /// Confirmations `acks` wait for the subscriber notice `token` (or for `HANDLED_WAIT`).
    fn wait_handled(&self, token: u64, acks: Vec<i64>) {
        if acks.is_empty() {
            return;
        }
        self.handled_wait.borrow_mut().insert(token, acks);
        self.wait_deadlines
            .borrow_mut()
            .push_back((token, Instant::now() + HANDLED_WAIT));
        if !self.sweeping.replace(true) {
            self.sweep_later();
        }
    }

    /// One timer per client, while confirmations wait: gives those waiting past their
    /// deadline (a subscriber stuck in a callback must not hold a publisher's answer forever).
    fn sweep_later(&self) {
        let weak = self.me.clone();
        Timer::once_internal(Duration::from_secs(1), move || {
            let Some(b) = weak.upgrade() else { return };
            let now = Instant::now();
            loop {
                let front = b.wait_deadlines.borrow().front().copied();
                match front {
                    Some((token, deadline)) if deadline <= now => {
                        b.wait_deadlines.borrow_mut().pop_front();
                        if b.handled_wait.borrow().contains_key(&token) {
                            log::warn!(
                                "channel {}: an in-process subscriber has not handled events \
                                 for {HANDLED_WAIT:?}; confirming them as handed over",
                                b.name
                            );
                            b.handled(token);
                        }
                    }
                    _ => break,
                }
            }
            if b.wait_deadlines.borrow().is_empty() {
                b.sweeping.set(false);
            } else {
                b.sweep_later();
            }
        });
    }

    /// A subscriber handled the deliveries of notice `token`: give the confirmations that
    /// waited for nothing else.
    fn handled(&self, token: u64) {
        let Some(acks) = self.handled_wait.borrow_mut().remove(&token) else {
            return;
        };
        {
            // Deadlines of notices already in: forget them (they come in order, mostly).
            let waiting = self.handled_wait.borrow();
            let mut deadlines = self.wait_deadlines.borrow_mut();
            while deadlines
                .front()
                .is_some_and(|(t, _)| !waiting.contains_key(t))
            {
                deadlines.pop_front();
            }
        }
        for a in acks {
            let ready = {
                let mut wait = self.ack_wait.borrow_mut();
                match wait.get_mut(&a) {
                    Some((left, _)) if *left > 1 => {
                        *left -= 1;
                        None
                    }
                    Some(_) => wait.remove(&a).map(|(_, n)| n),
                    None => None,
                }
            };
            if let Some(n) = ready {
                self.confirm(a, Ok(Some(n)));
            }
        }
    }

    /// What the hub (or a publishing thread) delivered: confirmations are this broker's,
    /// events and queue items the client's.
    fn deliver(&self, d: Delivery) {
        if d.kind == DeliveryKind::Ack {
            if let Key::Int(ack) = d.channel {
                let reply = self.replies.borrow_mut().remove(&ack);
                if let Some(reply) = reply {
                    let answer = Command::dir_json(&d.data)
                        .map_err(|e| ChannelError::Refused(format!("bad directory answer: {e}")));
                    guard("channel directory answer", || reply(answer));
                    return;
                }
                let reached = super::php_serde::from_slice(&d.data)
                    .ok()
                    .and_then(|v| v.as_u64())
                    .map(|n| n as usize);
                self.confirm(ack, Ok(reached));
            }
            return;
        }
        if let Some(events) = self.events.upgrade() {
            events.delivery(d);
        }
    }
}

impl Broker for LocalBroker {
    fn send(&self, cmd: Command) -> Result<(), ChannelError> {
        if self.hub.borrow().is_none() || self.closed.get() {
            return Err(ChannelError::Closed);
        }
        self.push_outbox(cmd, None);
        Ok(())
    }

    fn parks(&self) -> bool {
        true
    }

    fn publish_confirmed(&self, cmd: Command, done: Confirm) {
        if self.hub.borrow().is_none() || self.closed.get() {
            return done(Err(ChannelError::Disconnected));
        }
        // The hub (or this thread) answers with the subscribers it handed the event to.
        let id = self.next_ack.get();
        self.next_ack.set(id + 1);
        self.confirms.borrow_mut().insert(id, done);
        self.push_outbox(cmd, Some(id));
    }

    fn request(&self, cmd: Command, done: Reply) {
        if self.hub.borrow().is_none() || self.closed.get() {
            return done(Err(ChannelError::Disconnected));
        }
        // The hub answers in this client's next batch, after the forwards it made.
        let id = self.next_ack.get();
        self.next_ack.set(id + 1);
        self.replies.borrow_mut().insert(id, done);
        self.push_outbox(cmd, Some(id));
    }

    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        // What this turn published still reaches the hub, before the goodbye.
        self.flush_outbox();
        if let Some(hub) = self.hub.borrow_mut().take() {
            hub.addr.do_send(LocalGone(self.id));
        }
    }
}

fn attach(weak: Weak<LocalBroker>) {
    let Some(b) = weak.upgrade() else { return };
    if b.closed.get() {
        return;
    }
    match hub::lookup(&b.name) {
        Some(Some(running)) => {
            *b.hub.borrow_mut() = Some(running);
            if let Some(events) = b.events.upgrade() {
                events.up();
            }
        }
        _ => {
            // The hub's thread has not started it yet.
            Timer::once_internal(Duration::from_millis(10), move || attach(weak));
        }
    }
}

/// Receives deliveries from an in-process hub on the client's thread.
struct ClientActor {
    broker: Weak<LocalBroker>,
    /// Deliveries on their way to this client (see `subscriber::MAX_LOCAL_PENDING`).
    pending: Arc<AtomicUsize>,
}

impl Actor for ClientActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1 << 16);
    }
}

impl Handler<LocalHandled> for ClientActor {
    type Result = ();
    fn handle(&mut self, msg: LocalHandled, _: &mut Self::Context) {
        if let Some(b) = self.broker.upgrade() {
            b.handled(msg.0);
        }
    }
}

impl Handler<LocalDelivery> for ClientActor {
    type Result = ();
    fn handle(&mut self, msg: LocalDelivery, ctx: &mut Self::Context) {
        let LocalDelivery(items, notice) = msg;
        self.pending.fetch_sub(items.len(), Ordering::AcqRel);
        match self.broker.upgrade() {
            Some(b) => {
                for d in items {
                    b.deliver(d);
                }
            }
            None => ctx.stop(),
        }
        // Handled (or dropped unhandled): the publisher waiting for it hears so now.
        drop(notice);
    }
}
