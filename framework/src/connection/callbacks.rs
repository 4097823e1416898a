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
/// `on_websocket_close`: the close code and reason.
pub type WsCloseFn = Rc<dyn Fn(&Connection, u16, &str)>;
/// A client's `on_websocket_connect`: the server's answer to the upgrade.
pub type ResponseFn = Rc<dyn Fn(&Connection, &Response)>;
/// `on_websocket_ping`, `on_websocket_pong`: the frame's application data.
pub type WsControlFn = Rc<dyn Fn(&Connection, &[u8])>;

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
    /// The WebSocket handshake is done (server: the `101` is queued first).
    pub on_websocket_connected: Option<ConnFn>,
    /// The WebSocket closing handshake began (the peer's close frame, or ours).
    pub on_websocket_close: Option<WsCloseFn>,
    /// A ping arrived (the pong is sent anyway).
    pub on_websocket_ping: Option<WsControlFn>,
    /// A pong arrived.
    pub on_websocket_pong: Option<WsControlFn>,
    /// Client: the server's answer to the WebSocket upgrade (before `on_connect`).
    pub on_websocket_response: Option<ResponseFn>,
}
