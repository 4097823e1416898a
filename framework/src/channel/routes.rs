//! [`Routes`]: the in-process subscribers of each event, as the hub last saw them, readable
//! from any thread — so an in-process client delivers its publishes itself.
//!
//! A publish through the hub's actor costs two thread hops: the publisher's commands to the
//! hub's thread, and (for a confirmed publish) the hub's answer back. When every subscriber of
//! an event is an in-process client, the publishing thread can read the subscribers here,
//! hand each its deliveries and know at once how many it reached: no hop at all, and the
//! confirmation is immediate. The hub stays the one place that changes subscriptions; it
//! updates a route whenever an event's subscribers change.
//!
//! What keeps the hub's guarantees:
//! - An event with a TCP subscriber goes through the hub (only its thread writes to those
//!   sockets), and so does every other command (subscriptions, queues, `publish_loop`).
//! - A turn's commands are taken either all directly or all by the hub, and a client takes
//!   nothing directly while the hub has not yet sent out what the client gave it before
//!   (`busy`): what one client publishes reaches each subscriber in the order it was
//!   published, whichever path each event took.
//! - The same bound as the hub's: a subscriber with [`MAX_LOCAL_PENDING`] deliveries waiting
//!   is refused, which the publisher's confirmation counts and [`Refusals`] logs.
//! - Kept publishes (`channel::history`) too: the hub's history is here, and a kept publish is
//!   numbered and handed to its in-process subscribers under its lock — by a publisher, or by
//!   the hub, which then sends its in-process batches at once — so each subscriber gets a
//!   name's positions in order whichever path each publish took.
//! - Back-pressure: a confirmation means "handed to the subscriber", and a publisher that got
//!   it at once could hand a slow subscriber pushes faster than it handles them (its queue,
//!   and the pushes' latency, growing up to that bound). So deliveries to a subscriber that
//!   already has [`LAGGING`] waiting carry a [`HandledNotice`], and the confirmations of the
//!   publishes among them wait until the subscriber handled them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Instant;

use actix::Recipient;

use super::history::Store;
use super::php_serde::Key;
use super::subscriber::{
    HandledNotice, LocalDelivery, LocalHandled, LocalSink, Sink, SubscriberId, MAX_LOCAL_PENDING,
};
use super::wire::{Command, Delivery, DeliveryKind};

/// Deliveries waiting at a subscriber past which confirmed publishes to it wait until it has
/// handled them.
pub const LAGGING: usize = 16;

/// What a publishing thread did with one turn's commands ([`Routes::deliver`]).
pub(crate) struct Direct {
    /// Per command: the subscribers it was handed to.
    pub reached: Vec<usize>,
    /// Deliveries to lagging subscribers that confirmations wait for: the notice's token and
    /// the commands (indices, each once) among them.
    pub waits: Vec<(u64, Vec<usize>)>,
}

/// The subscribers of one event.
#[derive(Default)]
struct Route {
    /// In-process clients, by client id.
    local: Vec<(u64, LocalSink)>,
    /// Some subscriber is a TCP connection of the hub's thread.
    tcp: bool,
    /// Parked subscriptions (`Command::Park`): counted as reached, sent nothing.
    parked: usize,
}

/// The hub's event routes, shared with the in-process clients of this process.
#[derive(Default)]
pub(crate) struct Routes {
    map: RwLock<HashMap<Key, Route>>,
    /// Deliveries refused to full in-process subscribers, by the hub and by publishers.
    pub refusals: Refusals,
    /// The hub's history (`channel::history`): a kept publish is numbered and handed to its
    /// in-process subscribers under this lock, by the hub or by a publisher, so positions
    /// reach each subscriber in order.
    history: Mutex<Store>,
}

impl Routes {
    /// The history, locked.
    pub fn history(&self) -> MutexGuard<'_, Store> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set the route of `key` to its subscribers now and how many more are parked (none:
    /// forget it). Called by the hub.
    pub fn set(&self, key: &Key, subscribers: &[(SubscriberId, Sink)], parked: usize) {
        let mut route = Route {
            parked,
            ..Route::default()
        };
        for (id, sink) in subscribers {
            match (id, sink) {
                (SubscriberId::Local(id), Sink::Local(sink)) => {
                    route.local.push((*id, sink.clone()))
                }
                _ => route.tcp = true,
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if route.local.is_empty() && !route.tcp && route.parked == 0 {
            map.remove(key);
        } else {
            map.insert(key.clone(), route);
        }
    }

    /// Deliver one turn's commands of an in-process client on the caller's thread: `None`
    /// (nothing done) unless every command is a publish whose events have only in-process
    /// subscribers; else the subscribers each command reached, and which confirmations wait
    /// for a lagging subscriber (its notice goes to `handled`, with tokens from `next_token`).
    pub fn deliver(
        &self,
        cmds: &[(Command, Option<i64>)],
        handled: &Recipient<LocalHandled>,
        next_token: &mut u64,
    ) -> Option<Direct> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut kept = false;
        for (cmd, _) in cmds {
            let names = match cmd {
                Command::Publish(names, _) => names,
                Command::PublishKept(names, _, _) => {
                    kept = true;
                    names
                }
                _ => return None,
            };
            if names.iter().any(|n| map.get(&n.key).is_some_and(|r| r.tcp)) {
                return None;
            }
        }
        // Held until the deliveries are handed over (see `history`).
        let mut store = kept.then(|| (self.history(), Instant::now()));
        // One message per subscriber, with the command each delivery belongs to.
        let mut batches: Vec<(u64, &LocalSink, Vec<Delivery>, Vec<usize>)> = Vec::new();
        let mut direct = Direct {
            reached: vec![0; cmds.len()],
            waits: Vec::new(),
        };
        for (i, (cmd, _)) in cmds.iter().enumerate() {
            let (names, data, keep) = match cmd {
                Command::Publish(names, data) => (names, data, None),
                Command::PublishKept(names, data, keep) => (names, data, Some(*keep)),
                _ => continue,
            };
            for n in names {
                let pos = match (keep, store.as_mut()) {
                    (Some(keep), Some((store, now))) => {
                        Some(store.append(&n.key, data, keep, *now))
                    }
                    _ => None,
                };
                let Some(route) = map.get(&n.key) else {
                    continue;
                };
                direct.reached[i] += route.parked;
                for (id, sink) in &route.local {
                    let b = match batches.iter().position(|b| b.0 == *id) {
                        Some(b) => b,
                        None => {
                            batches.push((*id, sink, Vec::new(), Vec::new()));
                            batches.len() - 1
                        }
                    };
                    let (_, _, items, of) = &mut batches[b];
                    if sink.pending.load(Ordering::Acquire) + items.len() >= MAX_LOCAL_PENDING {
                        self.refusals.note(SubscriberId::Local(*id));
                        continue;
                    }
                    items.push(Delivery {
                        kind: DeliveryKind::Event,
                        channel: n.key.clone(),
                        data: data.clone(),
                        pos,
                    });
                    of.push(i);
                }
            }
        }
        for (id, sink, items, mut of) in batches {
            if items.is_empty() {
                continue;
            }
            let n = items.len();
            of.dedup();
            let waiting = sink.pending.fetch_add(n, Ordering::AcqRel);
            let notice =
                (waiting >= LAGGING && of.iter().any(|&i| cmds[i].1.is_some())).then(|| {
                    *next_token += 1;
                    HandledNotice::new(handled.clone(), *next_token)
                });
            let token = notice.is_some().then_some(*next_token);
            if sink
                .recipient
                .try_send(LocalDelivery(items, notice))
                .is_ok()
            {
                for &i in &of {
                    direct.reached[i] += 1;
                }
                if let Some(token) = token {
                    direct.waits.push((token, of));
                }
            } else {
                sink.pending.fetch_sub(n, Ordering::AcqRel);
                log::debug!("channel: in-process subscriber {id} is gone: {n} deliveries lost");
            }
        }
        drop(store);
        Some(direct)
    }
}

/// Counts deliveries refused to full in-process subscribers and logs them, at most once a
/// second.
#[derive(Default)]
pub(crate) struct Refusals {
    since_warning: AtomicU64,
    warned: Mutex<Option<Instant>>,
}

impl Refusals {
    /// One delivery to `id` refused.
    pub fn note(&self, id: SubscriberId) {
        self.since_warning.fetch_add(1, Ordering::Relaxed);
        let Ok(mut warned) = self.warned.try_lock() else {
            return;
        };
        let now = Instant::now();
        if warned.is_none_or(|t| now.duration_since(t).as_secs() >= 1) {
            let n = self.since_warning.swap(0, Ordering::Relaxed);
            log::warn!(
                "channel: in-process subscriber {id:?} has {MAX_LOCAL_PENDING} deliveries \
                 waiting: {n} refused since the last warning"
            );
            *warned = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use actix::prelude::*;
    use bytes::Bytes;

    use super::super::subscriber::testing::{recorder, seen, until};
    use super::super::wire::WireName;
    use super::*;

    fn publish(n: &str, d: &str) -> Command {
        Command::Publish(
            vec![WireName::from_key(Key::from(n))],
            Bytes::from(d.to_string()),
        )
    }

    struct Notices(Arc<Mutex<Vec<u64>>>);
    impl Actor for Notices {
        type Context = Context<Self>;
    }
    impl Handler<LocalHandled> for Notices {
        type Result = ();
        fn handle(&mut self, msg: LocalHandled, _: &mut Self::Context) {
            self.0.lock().unwrap().push(msg.0);
        }
    }

    #[test]
    fn one_message_per_subscriber_in_publish_order() {
        actix_rt::System::new().block_on(async {
            let routes = Routes::default();
            let ((s, ls), (t, lt)) = (recorder(), recorder());
            let both = [
                (SubscriberId::Local(1), Sink::Local(s.clone())),
                (SubscriberId::Local(2), Sink::Local(t)),
            ];
            routes.set(&Key::from("a"), &both, 0);
            // Two more subscriptions of `b` are parked, and `p` has only a parked one: each
            // counted as reached, sent nothing.
            routes.set(&Key::from("b"), &both[..1], 2);
            routes.set(&Key::from("p"), &[], 1);
            let handled = Notices(Default::default()).start().recipient();
            let cmds = vec![
                (publish("a", "1"), None),
                (publish("b", "2"), Some(7)),
                (publish("a", "3"), None),
                (publish("none", "4"), Some(8)),
                (publish("p", "5"), Some(9)),
            ];
            let mut token = 0;
            let direct = routes
                .deliver(&cmds, &handled, &mut token)
                .expect("all local");
            assert_eq!(direct.reached, vec![2, 3, 2, 0, 1]);
            assert!(direct.waits.is_empty(), "nobody lags");
            until(|| ls.lock().unwrap().len() == 1 && lt.lock().unwrap().len() == 1).await;
            let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
                v.iter()
                    .map(|(n, d)| (n.to_string(), d.to_string()))
                    .collect()
            };
            assert_eq!(seen(&ls), pairs(&[("a", "1"), ("b", "2"), ("a", "3")]));
            assert_eq!(seen(&lt), pairs(&[("a", "1"), ("a", "3")]));
            until(|| s.pending.load(Ordering::Acquire) == 3).await;
        });
    }

    #[test]
    fn a_tcp_subscriber_or_another_command_leaves_the_turn_to_the_hub() {
        actix_rt::System::new().block_on(async {
            let routes = Routes::default();
            let (s, ls) = recorder();
            // A subscriber that is not an in-process client.
            routes.set(
                &Key::from("t"),
                &[(SubscriberId::Tcp(1), Sink::Local(s.clone()))],
                0,
            );
            routes.set(
                &Key::from("a"),
                &[(SubscriberId::Local(2), Sink::Local(s))],
                0,
            );
            let handled = Notices(Default::default()).start().recipient();
            let mut token = 0;
            let mixed = vec![(publish("a", "1"), None), (publish("t", "2"), None)];
            assert!(routes.deliver(&mixed, &handled, &mut token).is_none());
            let other = vec![(publish("a", "1"), None), (Command::Reserve, None)];
            assert!(routes.deliver(&other, &handled, &mut token).is_none());
            // A waking publish is the hub's (it alone holds the parked subscribers' sinks).
            let waking = vec![(Command::Waking(Box::new(publish("a", "1"))), None)];
            assert!(routes.deliver(&waking, &handled, &mut token).is_none());
            assert!(ls.lock().unwrap().is_empty(), "nothing delivered");
            // A route with no subscriber left is forgotten.
            routes.set(&Key::from("t"), &[], 0);
            let now = vec![(publish("t", "3"), Some(1))];
            let d = routes
                .deliver(&now, &handled, &mut token)
                .expect("no subscriber");
            assert_eq!(d.reached, vec![0]);
        });
    }

    #[test]
    fn confirmations_wait_for_a_lagging_subscriber_and_full_ones_are_refused() {
        actix_rt::System::new().block_on(async {
            let routes = Routes::default();
            let ((slow, _), (full, _)) = (recorder(), recorder());
            slow.pending.store(LAGGING, Ordering::Release);
            full.pending.store(MAX_LOCAL_PENDING, Ordering::Release);
            routes.set(
                &Key::from("a"),
                &[(SubscriberId::Local(1), Sink::Local(slow))],
                0,
            );
            routes.set(
                &Key::from("f"),
                &[(SubscriberId::Local(2), Sink::Local(full))],
                0,
            );
            let notices = Arc::new(Mutex::new(Vec::new()));
            let handled = Notices(notices.clone()).start().recipient();
            let mut token = 0;
            let cmds = vec![
                (publish("a", "1"), None),
                (publish("a", "2"), Some(1)),
                (publish("f", "3"), Some(2)),
            ];
            let d = routes.deliver(&cmds, &handled, &mut token).expect("local");
            assert_eq!(d.reached, vec![1, 1, 0], "the full subscriber is refused");
            assert_eq!(d.waits, vec![(1, vec![0, 1])]);
            // The recorder handled them: the notice comes back with its token.
            until(|| *notices.lock().unwrap() == [1]).await;
        });
    }
}
