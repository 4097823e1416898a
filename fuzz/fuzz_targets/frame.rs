//! The `frame://` decoder: any bytes, in any split, decode or fail — never panic.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use werkmann::protocol::frame::FrameCodec;
use werkmann::protocol::Codec;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    let mut codec = FrameCodec::new(64 * 1024);
    let mut buf = BytesMut::new();
    for chunk in data.chunks(split) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
