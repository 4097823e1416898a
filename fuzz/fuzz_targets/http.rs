//! The HTTP/1.1 server codec: request heads, Content-Length and chunked bodies, pipelining,
//! answered one by one. Never panic.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use werkmann::protocol::http::HttpCodec;
use werkmann::protocol::{Codec, Decoded};
use werkmann::Message;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(5).max(1) as usize;
    let mut codec = HttpCodec::new(64 * 1024);
    let mut buf = BytesMut::new();
    for chunk in data.chunks(split) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Decoded::Message(Message::Request(req)))) => {
                    let _ = req.query();
                    let _ = req.post_all();
                    let _ = req.cookie("a");
                    let _ = codec.encode(Message::from("ok"));
                }
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    let _ = codec.error_reply(&e);
                    return;
                }
            }
        }
    }
});
