//! `tcp://`: raw bytes; whatever one read returns is one message.

use bytes::{Bytes, BytesMut};

use super::{Codec, Decoded, ProtocolError};
use crate::message::Message;

/// The raw TCP codec.
pub struct TcpCodec {
    max_package: usize,
}

impl TcpCodec {
    /// A codec that hands out at most `max_package` bytes per message.
    pub fn new(max_package: usize) -> Self {
        TcpCodec { max_package }
    }
}

/// Encode a message as raw bytes.
pub fn encode(msg: &Message) -> Result<Bytes, ProtocolError> {
    Ok(match msg {
        Message::Binary(b) => b.clone(),
        other => Bytes::copy_from_slice(other.as_bytes()),
    })
}

impl Codec for TcpCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let n = buf.len().min(self.max_package.max(1));
        Ok(Some(Decoded::Message(Message::Binary(
            buf.split_to(n).freeze(),
        ))))
    }

    fn encode(&mut self, msg: Message) -> Result<Bytes, ProtocolError> {
        match msg {
            Message::Binary(b) => Ok(b),
            Message::Text(s) => Ok(Bytes::from(s)),
            other => encode(&other),
        }
    }
}
