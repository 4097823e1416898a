//! Workerman-style custom protocols: implement [`Protocol`] (`input`, `decode`, `encode`) and
//! register it under a scheme, then `Worker::new("myproto://0.0.0.0:1234")`.
//!
//! ```
//! use bytes::Bytes;
//! use werkmann::protocol::{register_protocol, Protocol, ProtocolError};
//! use werkmann::Message;
//!
//! /// Messages end with a `;`.
//! struct Semicolon;
//!
//! impl Protocol for Semicolon {
//!     fn input(&self, buf: &[u8]) -> Result<usize, ProtocolError> {
//!         Ok(buf.iter().position(|&b| b == b';').map_or(0, |p| p + 1))
//!     }
//!     fn decode(&self, package: Bytes) -> Result<Message, ProtocolError> {
//!         Ok(Message::Binary(package.slice(..package.len() - 1)))
//!     }
//!     fn encode(&self, msg: &Message) -> Result<Bytes, ProtocolError> {
//!         Ok(Bytes::from([msg.as_bytes(), b";"].concat()))
//!     }
//! }
//!
//! register_protocol("semicolon", Semicolon);
//! let worker = werkmann::Worker::new("semicolon://127.0.0.1:0").unwrap();
//! ```

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use bytes::{Bytes, BytesMut};

use super::{Codec, Decoded, ProtocolError};
use crate::message::Message;

/// A stateless protocol in Workerman's terms.
pub trait Protocol: Send + Sync + 'static {
    /// How many bytes form the next complete package at the start of `buf`; `0` while more
    /// input is needed. An error closes the connection (Workerman's `-1`).
    fn input(&self, buf: &[u8]) -> Result<usize, ProtocolError>;
    /// Turn one complete package (exactly the bytes `input` counted) into a message.
    fn decode(&self, package: Bytes) -> Result<Message, ProtocolError>;
    /// Turn a message into the bytes to send.
    fn encode(&self, msg: &Message) -> Result<Bytes, ProtocolError>;
}

fn registry() -> &'static RwLock<HashMap<String, Arc<dyn Protocol>>> {
    static REG: OnceLock<RwLock<HashMap<String, Arc<dyn Protocol>>>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

/// Make `scheme://` usable in `Worker::new` and outgoing connections.
pub fn register_protocol(scheme: &str, protocol: impl Protocol) {
    registry()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(scheme.to_ascii_lowercase(), Arc::new(protocol));
}

pub(crate) fn lookup(scheme: &str) -> Option<Arc<dyn Protocol>> {
    registry()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(scheme)
        .cloned()
}

/// Adapts a [`Protocol`] to the per-connection [`Codec`].
pub struct CustomCodec {
    proto: Arc<dyn Protocol>,
    max_package: usize,
}

impl CustomCodec {
    /// Wrap `proto`, refusing packages over `max_package` bytes.
    pub fn new(proto: Arc<dyn Protocol>, max_package: usize) -> Self {
        CustomCodec { proto, max_package }
    }
}

impl Codec for CustomCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let n = self.proto.input(buf)?;
        if n > self.max_package || (n == 0 && buf.len() > self.max_package) {
            return Err(ProtocolError::TooLarge {
                size: n.max(buf.len()),
                limit: self.max_package,
            });
        }
        if n == 0 || n > buf.len() {
            return Ok(None);
        }
        let pkg = buf.split_to(n).freeze();
        Ok(Some(Decoded::Message(self.proto.decode(pkg)?)))
    }

    fn encode(&mut self, msg: Message) -> Result<Bytes, ProtocolError> {
        self.proto.encode(&msg)
    }
}
