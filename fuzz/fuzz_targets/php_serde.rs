//! PHP `serialize()` decoding and the Channel messages built on it: never panic, and a value
//! that decodes re-encodes to something that decodes to the same value.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use werkmann::channel::php_serde;
use werkmann::channel::wire::{Command, Delivery};

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    let _ = Command::decode(&payload);
    let _ = Delivery::decode(&payload);
    let _ = php_serde::Reader::new(data).skip();
    if let Ok(v) = php_serde::from_slice(data) {
        let again = php_serde::to_vec(&v);
        let back = php_serde::from_slice(&again).expect("re-encoded value decodes");
        // Floats may lose their exact text form, but not their value; objects lose their class.
        if !again.contains(&b'd') {
            assert_eq!(back, v);
        }
    }
    if let Ok(cmd) = Command::decode(&payload) {
        let encoded = cmd.encode_payload();
        Command::decode(&Bytes::from(encoded)).expect("re-encoded command decodes");
    }
});
