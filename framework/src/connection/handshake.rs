//! The server side of a WebSocket upgrade: the owner's Origin policy first, then the worker's
//! `on_websocket_connect`; the codec writes the answer (`101`, or the refusal) and the
//! connection either opens or closes after it.

use super::{Connection, Status};
use crate::callbacks::guard;
use crate::message::{Message, Request, Response};
use crate::metrics::Refused;

impl Connection {
    /// Answer the upgrade request `req` (a codec's `Decoded::Handshake`).
    pub(super) fn handshake(&self, req: &Request) {
        let refusal = self.refusal(req);
        if self.0.status.get() != Status::Established {
            // The callback closed the connection itself.
            return;
        }
        let answer = self
            .0
            .codec
            .borrow_mut()
            .accept(req, refusal.map(Message::from));
        match answer {
            Ok(bytes) => {
                self.0.out.borrow_mut().push_front(bytes);
                let cb = self.callbacks().borrow().on_websocket_connected.clone();
                if let Some(cb) = cb {
                    guard("on_websocket_connected", || cb(self));
                }
            }
            Err(bytes) => {
                log::info!(
                    "connection {}: WebSocket handshake refused by on_websocket_connect",
                    self.0.id
                );
                self.closed_because(crate::metrics::Closed::Server);
                let mut out = self.0.out.borrow_mut();
                out.clear();
                out.push_back(bytes);
                self.set_closing();
            }
        }
    }

    /// The response refusing `req`, if it is refused: by the owner's Origin list (a `403`,
    /// without asking the callback), or by `on_websocket_connect` returning `Err`.
    fn refusal(&self, req: &Request) -> Option<Response> {
        let origin = req.header("origin");
        if !self
            .0
            .owner
            .as_ref()
            .is_none_or(|o| o.origin_allowed(origin))
        {
            log::warn!(
                "connection {} from {:?}: Origin {origin:?} not allowed; refused",
                self.0.id,
                self.0.remote.get(),
            );
            if let Some(o) = &self.0.owner {
                o.refused(Refused::Origin, self.0.remote.get());
            }
            return Some(Response::text(403, "Origin not allowed\n"));
        }
        let cb = self.callbacks().borrow().on_websocket_connect.clone()?;
        let mut verdict = Ok(());
        guard("on_websocket_connect", || verdict = cb(self, req));
        let refusal = verdict.err();
        if let (Some(_), Some(o)) = (&refusal, &self.0.owner) {
            o.refused(Refused::Handshake, self.0.remote.get());
        }
        refusal
    }
}
