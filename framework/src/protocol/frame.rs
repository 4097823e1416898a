//! `frame://`: a 4-byte big-endian total length (header included), then the payload —
//! Workerman's Frame protocol, also the Channel's framing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Codec, Decoded, ProtocolError};
use crate::message::Message;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// The length-prefixed frame codec.
pub struct FrameCodec {
    max_package: usize,
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_package` bytes (header included).
    pub fn new(max_package: usize) -> Self {
        FrameCodec { max_package }
    }
}

/// Encode a payload as one frame.
pub fn encode(msg: &Message) -> Result<Bytes, ProtocolError> {
    encode_bytes(msg.as_bytes())
}

/// Encode raw bytes as one frame.
pub fn encode_bytes(body: &[u8]) -> Result<Bytes, ProtocolError> {
    let total = body.len() + HEADER_LEN;
    let total32 = u32::try_from(total)
        .map_err(|_| ProtocolError::Encode(format!("frame of {total} bytes is too long")))?;
    let mut out = BytesMut::with_capacity(total);
    out.put_u32(total32);
    out.extend_from_slice(body);
    Ok(out.freeze())
}

/// Peek at a complete frame: `Ok(Some(total_len))` once `buf` holds it all.
pub fn input(buf: &[u8], max_package: usize) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if total < HEADER_LEN {
        return Err(ProtocolError::invalid(format!(
            "frame length {total} is below the 4-byte header"
        )));
    }
    if total > max_package {
        return Err(ProtocolError::TooLarge {
            size: total,
            limit: max_package,
        });
    }
    Ok((buf.len() >= total).then_some(total))
}

impl Codec for FrameCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        let Some(total) = input(buf, self.max_package)? else {
            return Ok(None);
        };
        let mut frame = buf.split_to(total);
        frame.advance(HEADER_LEN);
        Ok(Some(Decoded::Message(Message::Binary(frame.freeze()))))
    }

    fn encode(&mut self, msg: Message) -> Result<Bytes, ProtocolError> {
        encode(&msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let mut c = FrameCodec::new(64);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encode_bytes(b"hello").unwrap());
        buf.extend_from_slice(&encode_bytes(b"").unwrap());
        let Some(Decoded::Message(m)) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(m.as_bytes(), b"hello");
        let Some(Decoded::Message(m)) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert!(m.is_empty());
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert!(c.decode(&mut BytesMut::from(&[0u8, 0, 0, 3][..])).is_err());
        assert!(c.decode(&mut BytesMut::from(&[0u8, 0, 1, 0][..])).is_err());
    }
}
