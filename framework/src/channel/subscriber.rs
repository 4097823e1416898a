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
