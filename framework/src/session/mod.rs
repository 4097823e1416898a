//! Sessions on an `http://` worker (Workerman's `Http\Session`): the request's session is
//! loaded from its cookie before `on_message` runs, so that `req.session()` is ready there
//! and never blocks; the stores are [`FileSessionHandler`] and [`RedisSessionHandler`].
//!
//! A file handler answers at once, so `on_message` runs in the same turn as without sessions;
//! a Redis read is awaited on the instance's thread (other connections go on meanwhile) and
//! `on_message` runs when it is back. A request without a session cookie costs no store call.

mod file;
mod redis;

use std::rc::Rc;
use std::sync::Arc;

pub use self::file::FileSessionHandler;
pub use self::redis::RedisSessionHandler;
use crate::callbacks::guard;
use crate::connection::callbacks::MessageFn;
use crate::connection::Connection;
use crate::message::session::{try_now, valid_session_id, Session};
use crate::message::{Message, Response, Sessions};

/// `on_message` with the request's session loaded first.
pub(crate) fn load_then(sessions: Arc<Sessions>, on_message: MessageFn) -> MessageFn {
    Rc::new(move |conn: &Connection, msg: Message| {
        let Message::Request(mut req) = msg else {
            return on_message(conn, msg);
        };
        let Some(slot) = req.cookie_slot.clone() else {
            return on_message(conn, Message::Request(req));
        };
        let id = req.cookie(&sessions.name).filter(|id| valid_session_id(id));
        let Some(id) = id else {
            req.session = Some(Session::open(sessions.clone(), slot, None, None));
            return on_message(conn, Message::Request(req));
        };
        let read = match try_now(sessions.handler.read(&id)) {
            Ok(data) => {
                if let Some(session) = opened(&sessions, conn, slot, id, data) {
                    req.session = Some(session);
                    on_message(conn, Message::Request(req));
                }
                return;
            }
            Err(pending) => pending,
        };
        let (conn, sessions, on_message) = (conn.clone(), sessions.clone(), on_message.clone());
        actix_rt::spawn(async move {
            let data = read.await;
            if let Some(session) = opened(&sessions, &conn, slot, id, data) {
                req.session = Some(session);
                guard("on_message", || on_message(&conn, Message::Request(req)));
            }
        });
    })
}

/// The session read for `id`, or `None` after answering 500 when the store failed.
fn opened(
    sessions: &Arc<Sessions>,
    conn: &Connection,
    slot: crate::message::session::CookieSlot,
    id: String,
    data: std::io::Result<Option<Vec<u8>>>,
) -> Option<Session> {
    match data {
        Ok(Some(data)) => Some(Session::open(sessions.clone(), slot, Some(id), Some(data))),
        // Expired, or an id this server never stored (PHP's strict mode): a new session, with
        // an id of its own once one is needed, so a client cannot choose its id.
        Ok(None) => Some(Session::open(sessions.clone(), slot, None, None)),
        Err(e) => {
            log::error!("session store: {e}");
            conn.send(Response::text(500, "session store unavailable\n"));
            None
        }
    }
}
