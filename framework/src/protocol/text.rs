//! `text://`: newline-delimited text, Workerman's Text protocol. A trailing `\r` is dropped.

use bytes::{Buf, Bytes, BytesMut};

use super::{Codec, Decoded, ProtocolError};
use crate::message::Message;

/// The newline-delimited text codec.
pub struct TextCodec {
    max_package: usize,
    /// Bytes of the buffer already searched for a newline.
    scanned: usize,
}

impl TextCodec {
    /// A codec refusing lines longer than `max_package` bytes.
    pub fn new(max_package: usize) -> Self {
        TextCodec {
            max_package,
            scanned: 0,
        }
    }
}

/// Encode a message as one line (a `\n` is appended).
pub fn encode(msg: &Message) -> Result<Bytes, ProtocolError> {
    let body = msg.as_bytes();
    let mut out = BytesMut::with_capacity(body.len() + 1);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\n");
    Ok(out.freeze())
}

impl Codec for TextCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        let start = self.scanned.min(buf.len());
        match buf[start..].iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let end = start + pos;
                self.scanned = 0;
                if end > self.max_package {
                    return Err(ProtocolError::TooLarge {
                        size: end,
                        limit: self.max_package,
                    });
                }
                let mut line = buf.split_to(end);
                buf.advance(1);
                if line.last() == Some(&b'\r') {
                    line.truncate(line.len() - 1);
                }
                let text =
                    String::from_utf8(line.to_vec()).map_err(|_| ProtocolError::InvalidUtf8)?;
                Ok(Some(Decoded::Message(Message::Text(text))))
            }
            None => {
                self.scanned = buf.len();
                if buf.len() > self.max_package {
                    return Err(ProtocolError::TooLarge {
                        size: buf.len(),
                        limit: self.max_package,
                    });
                }
                Ok(None)
            }
        }
    }

    fn encode(&mut self, msg: Message) -> Result<Bytes, ProtocolError> {
        encode(&msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let mut c = TextCodec::new(8);
        let mut buf = BytesMut::from(&b"ab\r\ncd\nef"[..]);
        let mut got = Vec::new();
        while let Some(Decoded::Message(m)) = c.decode(&mut buf).unwrap() {
            got.push(m.as_text().unwrap().to_string());
        }
        assert_eq!(got, ["ab", "cd"]);
        buf.extend_from_slice(b"ghijklm");
        assert!(c.decode(&mut buf).is_err());
    }
}
