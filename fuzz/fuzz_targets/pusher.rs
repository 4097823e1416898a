//! The Pusher side's decoders: a client's frame (any text: read or refused, never a panic; what
//! is read keeps its event, and its data's fields read back), socket ids, and the payload of a
//! channel event round-tripping through the publisher's encoding.
#![no_main]
use libfuzzer_sys::fuzz_target;
use werkmann::pusher::{event_payload, Frame, SocketId};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = Frame::parse(text) {
        let _ = f.data_field("channel");
        let _ = f.data_field("auth");
        let again = werkmann::pusher::encode(&f.event, f.channel.as_deref(), &f.data_text());
        let back = Frame::parse(&again).expect("what the server writes reads back");
        assert_eq!(back.event, f.event);
        assert_eq!(back.channel, f.channel);
    }
    if let Ok(id) = text.parse::<SocketId>() {
        assert_eq!(id.to_string().parse::<SocketId>(), Ok(id));
    }
    let _ = event_payload(None, text);
});
