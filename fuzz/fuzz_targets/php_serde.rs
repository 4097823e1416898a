//! PHP `serialize()` decoding and the Channel messages built on it (history's pages too):
//! never panic, and encoding what was decoded is stable.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use werkmann::channel::php_serde;
use werkmann::channel::wire::{Command, Delivery};

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    let _ = Command::decode(&payload);
    let _ = Delivery::decode(&payload);
    if let Ok(page) = werkmann::channel::Page::decode(&payload) {
        let again = Bytes::from(page.encode());
        assert_eq!(werkmann::channel::Page::decode(&again).expect("re-encoded page"), page);
    }
    let _ = php_serde::Reader::new(data).skip();
    if let Ok(v) = php_serde::from_slice(data) {
        // Decoding may be lossy (invalid UTF-8, repeated keys, object classes), but once
        // decoded, encoding is stable: encode(decode(encode(v))) == encode(v).
        let once = php_serde::to_vec(&v);
        let back = php_serde::from_slice(&once).expect("re-encoded value decodes");
        assert_eq!(php_serde::to_vec(&back), once);
    }
    if let Ok(cmd) = Command::decode(&payload) {
        let encoded = cmd.encode_payload();
        Command::decode(&Bytes::from(encoded)).expect("re-encoded command decodes");
    }
});
