//! The callbacks of a connection: what a worker instance or an outgoing connection calls on
//! connect, message, close, errors, buffer limits and WebSocket upgrades. They live with the
//! connection because they take one (`Connection` holds its set; each takes `&Connection`).

use std::rc::Rc;

use super::{Connection, ConnectionError};
use crate::message::{Message, Request, Response};

/// A callback taking a connection.
pub type ConnFn = Rc<dyn Fn(&Connection)>;
/// `on_message`.
pub type MessageFn = Rc<dyn Fn(&Connection, Message)>;
/// `on_error`.
pub type ErrorFn = Rc<dyn Fn(&Connection, &ConnectionError)>;
/// `on_websocket_connect`: `Err(response)` refuses the upgrade with that response.
pub type HandshakeFn = Rc<dyn Fn(&Connection, &Request) -> Result<(), Response>>;

/// The callbacks of one worker instance or one outgoing connection.
#[derive(Default, Clone)]
pub struct Callbacks {
    /// A connection is established.
    pub on_connect: Option<ConnFn>,
    /// A complete message arrived.
    pub on_message: Option<MessageFn>,
    /// The connection closed.
    pub on_close: Option<ConnFn>,
    /// Connecting or sending failed.
    pub on_error: Option<ErrorFn>,
    /// The send buffer reached its limit.
    pub on_buffer_full: Option<ConnFn>,
    /// The send buffer has been written out.
    pub on_buffer_drain: Option<ConnFn>,
    /// A WebSocket upgrade request arrived (server side).
    pub on_websocket_connect: Option<HandshakeFn>,
}
