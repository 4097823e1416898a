//! `multipart/form-data` request bodies through the HTTP codec: the first byte picks the
//! split of the input into reads and sized or chunked framing, the rest is the body under
//! boundary `b`. Never panic; and every upload's temporary file is gone once the request and
//! the codec are dropped, whatever the body did.
#![no_main]
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use werkmann::protocol::http::HttpCodec;
use werkmann::protocol::{Codec, Decoded};
use werkmann::{Message, Uploads};

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("werkmann-fuzz-multipart-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(100) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let split = usize::from(first & 0x7f).max(1);
    let mut input = Vec::new();
    if first & 0x80 == 0 {
        input.extend_from_slice(
            format!(
                "POST / HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        input.extend_from_slice(body);
    } else {
        input.extend_from_slice(
            b"POST / HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        input.extend_from_slice(&chunked(body));
    }
    let uploads = Arc::new(Uploads {
        dir: dir().clone(),
        max_file_size: 4096,
        max_total_size: 8192,
        max_files: 4,
    });
    {
        let mut codec = HttpCodec::with_uploads(2048, uploads);
        let mut buf = BytesMut::new();
        'feed: for piece in input.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(Decoded::Message(Message::Request(req)))) => {
                        let _ = req.post_params();
                        for f in req.files() {
                            let on_disk = std::fs::metadata(f.path()).map(|m| m.len()).ok();
                            assert_eq!(on_disk, Some(f.size()), "a file's size is what it holds");
                        }
                        let _ = codec.encode(Message::from("ok"));
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = codec.error_reply(&e);
                        break 'feed;
                    }
                }
            }
        }
    }
    let left = std::fs::read_dir(dir()).unwrap().count();
    assert_eq!(left, 0, "temporary files left behind");
});
