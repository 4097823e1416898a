//! [`ConnectionOwner`]: the narrow interface through which a connection reports to whoever
//! accepted it (a worker instance), so that the connection knows nothing of instances.

use std::any::Any;
use std::rc::Rc;

use crate::metrics::{Closed, Refused};

/// What a connection tells its owner, and the one policy it asks it for. Implemented by the
/// worker instance; outgoing connections have no owner. Every call is on the owner's thread.
pub(crate) trait ConnectionOwner {
    /// A message was received on one of its connections.
    fn message_in(&self);
    /// A message was sent or queued.
    fn message_out(&self);
    /// A message was dropped (full send buffer, closed connection, failed write).
    fn send_failure(&self);
    /// A connection from `peer` was refused during its handshake (its Origin, or
    /// `on_websocket_connect` said no); the owner counts it.
    fn refused(&self, why: Refused, peer: Option<std::net::SocketAddr>);
    /// The connection `id` has closed, for `why`: forget it (before `on_close` runs).
    fn connection_closed(&self, id: u64, why: Closed);
    /// Whether a WebSocket upgrade from `origin` is allowed.
    fn origin_allowed(&self, origin: Option<&str>) -> bool;
    /// The owner as `Any`, for the instance to recognise itself (`Connection::worker`).
    fn as_any(self: Rc<Self>) -> Rc<dyn Any>;
}
