//! The WebSocket server: handshake parsing and validation, then frames — fragments, control
//! frames, UTF-8, close codes, permessage-deflate (RSV1, inflating within the limit) — in any
//! split. Never panic.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use werkmann::protocol::websocket::WsCodec;
use werkmann::protocol::{Codec, Decoded};

const HANDSHAKE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

const HANDSHAKE_DEFLATE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

fn run(input: &[u8], split: usize, compression: bool) {
    let mut codec = WsCodec::new_server(1 << 20).with_compression(compression, true);
    let mut buf = BytesMut::new();
    for chunk in input.chunks(split.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Decoded::Handshake(req))) => {
                    let _ = codec.accept(&req, None);
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
    let _ = codec.close_frame();
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(7) as usize;
    // Arbitrary bytes as a handshake…
    run(data, split, true);
    // …and as frames after a valid one, plain and compressed.
    let mut framed = HANDSHAKE.to_vec();
    framed.extend_from_slice(data);
    run(&framed, split, false);
    let mut framed = HANDSHAKE_DEFLATE.to_vec();
    framed.extend_from_slice(data);
    run(&framed, split, true);
});
