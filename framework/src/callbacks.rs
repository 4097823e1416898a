//! The connection callbacks and the panic guard around every user callback.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use crate::connection::{Connection, ConnectionError};
use crate::message::Message;
use crate::protocol::http::{Request, Response};

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

/// Run a user callback; a panic is caught and logged, and the worker goes on.
pub fn guard(name: &str, f: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        log::error!("panic in {name} callback: {what}");
    }
}
