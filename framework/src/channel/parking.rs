//! Parking: a worker instance without connections takes no copies of an event it hands only
//! to its connections (the push app's `Broadcast`).
//!
//! Every WebSocket instance subscribes to the broadcast event, and a publish is answered with
//! the subscribers it reached. An instance with no connection has no one to hand a broadcast
//! to, yet each one still costs the hub a write, the instance a wake-up and a decode. So once
//! an instance has had no connection for [`PARK_AFTER`], its subscription is *parked*
//! (`Command::Park`): the hub still counts it among the subscribers a publish reached — what
//! "ok" means does not change — but sends it nothing, except a *waking* publish, one that
//! every subscriber must answer (a delivery report's).
//!
//! The next connection is held back (not read, not answered) until the hub confirms the
//! subscription unparked (`Command::Unpark`, one round trip), so that the connection gets every
//! event published after its handshake, as an instance that never parked would give it. A
//! reconnect subscribes afresh, unparked. Where nothing can be parked (Redis counts only the
//! subscriptions it sends to; a PHP channel server knows no parking) this does nothing.

use std::cell::Cell;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use super::client::WeakClient;
use super::php_serde::Key;
use super::Client;
use crate::worker::instance::{Gate, InstanceInner};
use crate::{Timer, WorkerInstance};

/// How long an instance has had no connection before its subscription is parked.
pub const PARK_AFTER: Duration = Duration::from_secs(2);

/// How long a held connection waits for the hub's confirmation before it is served anyway
/// (the link is slow or failing; a reconnect subscribes afresh).
const UNPARK_LIMIT: Duration = Duration::from_secs(2);

/// How often the instance's connections are looked at.
const TICK: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Subscribed and delivered to.
    Live,
    /// Parked at the hub.
    Parked,
    /// Unparking since then; new connections are held.
    Unparking(Instant),
}

struct Parking {
    /// Itself, for the confirmation's callback.
    me: Weak<Parking>,
    client: WeakClient,
    event: Key,
    instance: Weak<InstanceInner>,
    state: Cell<State>,
    /// Since when the instance has had no connection (`None`: it has one).
    idle_since: Cell<Option<Instant>>,
    /// An unpark was not confirmed while the link stayed up (its buffer was full): sent
    /// again on the next tick.
    retry: Cell<bool>,
}

impl Client {
    /// Park this client's subscription to `event` while `instance` has no connection, and
    /// unpark it before the next one is served (see the module's text): for an event the
    /// instance only hands to its connections (not a node event of the directory, whose
    /// forwards a parked subscription does not get). Call once per instance, on its thread,
    /// after subscribing (in `on_worker_start`). Nothing changes where the backend cannot
    /// park (Redis, a PHP channel server).
    pub fn park_while_idle(&self, instance: &WorkerInstance, event: impl Into<Key>) {
        if instance.has_gate() {
            log::error!(
                "worker {} instance {}: park_while_idle called twice: the second is ignored",
                instance.name(),
                instance.id()
            );
            return;
        }
        let parking = Rc::new_cyclic(|me| Parking {
            me: me.clone(),
            client: self.downgrade(),
            event: event.into(),
            instance: Rc::downgrade(&instance.0),
            state: Cell::new(State::Live),
            idle_since: Cell::new(None),
            retry: Cell::new(false),
        });
        instance.set_gate(parking.clone());
        let p = parking.clone();
        // A reconnect subscribes afresh: nothing is parked any more.
        self.on_up_internal(move || {
            p.retry.set(false);
            p.live();
        });
        Timer::add_internal(TICK, move || parking.tick(), true);
    }
}

impl Parking {
    fn instance(&self) -> Option<WorkerInstance> {
        self.instance.upgrade().map(WorkerInstance)
    }

    /// Delivered to again: serve what was held.
    fn live(&self) {
        let was = self.state.replace(State::Live);
        if let (State::Unparking(_), Some(w)) = (was, self.instance()) {
            w.release_held();
        }
    }

    /// Ask the hub to unpark; held connections wait for its answer.
    fn unpark(&self, client: &Client) {
        let me = self.me.clone();
        client.unpark(&self.event, move |r| {
            let Some(p) = me.upgrade() else { return };
            let connected = p.client.upgrade().is_some_and(|c| c.is_connected());
            match r {
                // Not sent, and the link stays (its buffer is full): again on the next tick.
                Err(e) if connected => {
                    log::debug!("unpark of {} not confirmed: {e}; again", p.event);
                    p.retry.set(true);
                }
                // Unparked; or the link failed, and its reconnect subscribes afresh.
                _ => {
                    p.retry.set(false);
                    // Not after it parked again meanwhile (this answer was overdue).
                    if matches!(p.state.get(), State::Unparking(_)) {
                        p.live();
                    }
                }
            }
        });
    }

    /// Park once the instance has had no connection for [`PARK_AFTER`]; serve held connections
    /// whose confirmation is overdue.
    fn tick(&self) {
        let Some(w) = self.instance() else { return };
        let now = Instant::now();
        if self.retry.replace(false) {
            if let Some(client) = self.client.upgrade().filter(|c| c.is_connected()) {
                self.unpark(&client);
            }
        }
        match self.state.get() {
            State::Live if w.connection_count() == 0 => {
                let since = self.idle_since.get().unwrap_or(now);
                self.idle_since.set(Some(since));
                if now.duration_since(since) < PARK_AFTER {
                    return;
                }
                let Some(client) = self.client.upgrade() else {
                    return;
                };
                if client.park(&self.event) {
                    self.state.set(State::Parked);
                    log::info!(
                        "worker {} instance {}: no connection for {} s: its {} subscription parked",
                        w.name(),
                        w.id(),
                        PARK_AFTER.as_secs(),
                        self.event
                    );
                }
            }
            State::Live => self.idle_since.set(None),
            State::Parked => {}
            State::Unparking(since) if now.duration_since(since) >= UNPARK_LIMIT => {
                log::warn!(
                    "worker {} instance {}: {} not unparked in {} s: serving held connections",
                    w.name(),
                    w.id(),
                    self.event,
                    UNPARK_LIMIT.as_secs()
                );
                // Still asked for until the hub answers (`retry`), the connections served.
                self.live();
            }
            State::Unparking(_) => {}
        }
    }
}

impl Gate for Parking {
    fn admit(&self) -> bool {
        self.idle_since.set(None);
        match self.state.get() {
            State::Live => true,
            State::Unparking(_) => false,
            State::Parked => {
                let Some(client) = self.client.upgrade() else {
                    self.state.set(State::Live);
                    return true;
                };
                self.state.set(State::Unparking(Instant::now()));
                if let Some(w) = self.instance() {
                    log::info!(
                        "worker {} instance {}: a connection: holding new ones until {} is unparked",
                        w.name(),
                        w.id(),
                        self.event
                    );
                }
                self.unpark(&client);
                // Answered at once (the link just failed): serve it now.
                self.state.get() == State::Live
            }
        }
    }
}
