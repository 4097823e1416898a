//! Who a subscriber is and how deliveries reach it: a TCP connection of the channel server's
//! worker, or an in-process client's mailbox (an actor on the client's thread). Shared by the
//! hub, which changes subscriptions, and the routes, which publishing threads read.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use actix::prelude::*;

use super::wire::Delivery;
use crate::connection::Connection;

/// Most deliveries on their way to one in-process client (sent, not yet handled); more are
/// refused and counted as failed, as a full send buffer is for a TCP subscriber.
pub const MAX_LOCAL_PENDING: usize = 1 << 16;

/// Who a subscriber is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubscriberId {
    /// A TCP connection of the channel server worker.
    Tcp(u64),
    /// An in-process client.
    Local(u64),
}

/// Where deliveries go.
#[derive(Clone)]
pub(crate) enum Sink {
    Tcp(Connection),
    Local(LocalSink),
}

/// An in-process client's mailbox and how many deliveries are on their way to it.
#[derive(Clone)]
pub(crate) struct LocalSink {
    pub recipient: Recipient<LocalDelivery>,
    /// Deliveries sent and not yet handled by the client (it subtracts what it handled).
    pub pending: Arc<AtomicUsize>,
}

/// Deliveries to an in-process client, in order: every event of one turn of the hub's thread
/// (or of a publishing thread, see `channel::routes`), and who waits until they are handled.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LocalDelivery(pub Vec<Delivery>, pub Option<HandledNotice>);

/// A subscriber handled (or dropped) deliveries a publisher waited for: the publisher's token.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct LocalHandled(pub u64);

/// Rides with deliveries a publisher waits for, and tells it when dropped: after the
/// subscriber handled them, or when they were discarded unhandled (the subscriber went away).
pub struct HandledNotice {
    to: Recipient<LocalHandled>,
    token: u64,
}

impl HandledNotice {
    pub(crate) fn new(to: Recipient<LocalHandled>, token: u64) -> Self {
        HandledNotice { to, token }
    }
}

impl Drop for HandledNotice {
    fn drop(&mut self) {
        self.to.do_send(LocalHandled(self.token));
    }
}

/// A subscriber for unit tests: an actor that records what it is delivered.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What a [`Recorder`] got: each message's deliveries, in order.
    pub type Log = Arc<Mutex<Vec<Vec<Delivery>>>>;

    /// Records deliveries; drops each message's notice after recording it.
    pub struct Recorder(pub Log);

    impl Actor for Recorder {
        type Context = Context<Self>;
    }

    impl Handler<LocalDelivery> for Recorder {
        type Result = ();
        fn handle(&mut self, msg: LocalDelivery, _: &mut Self::Context) {
            let LocalDelivery(items, notice) = msg;
            self.0.lock().unwrap().push(items);
            drop(notice);
        }
    }

    /// A started recorder and the sink that reaches it.
    pub fn recorder() -> (LocalSink, Log) {
        let log = Log::default();
        let addr = Recorder(log.clone()).start();
        let sink = LocalSink {
            recipient: addr.recipient(),
            pending: Arc::new(AtomicUsize::new(0)),
        };
        (sink, log)
    }

    /// Every delivery of a log, flattened, as `(name, data)` strings.
    pub fn seen(log: &Log) -> Vec<(String, String)> {
        log.lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|d| {
                (
                    d.channel.to_string(),
                    String::from_utf8_lossy(&d.data).into_owned(),
                )
            })
            .collect()
    }

    /// Run the actor system until `cond` holds (at most 5 s).
    pub async fn until(cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "condition not met in 5 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}
