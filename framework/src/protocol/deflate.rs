//! permessage-deflate (RFC 7692): the negotiation of `Sec-WebSocket-Extensions` and the
//! per-connection compressor and decompressor.
//!
//! Both contexts are made on first use (an idle connection that never sent or received a
//! compressed message holds neither), and a side that may not keep its context between
//! messages (`*_no_context_takeover`) drops it after each message.

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::ProtocolError;

/// The extension's token.
pub(crate) const NAME: &str = "permessage-deflate";
/// What a sync flush ends with; stripped from each message and added back before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The largest LZ77 window (2^15 bytes), the default of both sides.
const MAX_BITS: u8 = 15;
/// zlib's smallest window for raw deflate: a raw compressor cannot use 2^8.
const MIN_COMPRESS_BITS: u8 = 9;

/// What was agreed, seen from this side: "send" is what this side compresses, "recv" what the
/// peer compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// This side starts every message with a fresh compressor.
    pub send_no_context_takeover: bool,
    /// The window this side compresses with (9..=15).
    pub send_window_bits: u8,
    /// The peer starts every message with a fresh compressor (so may our decompressor).
    pub recv_no_context_takeover: bool,
}

/// One offer's parameters, as RFC 7692 §7.1 defines them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Server side: pick the first acceptable permessage-deflate offer among the values of the
/// request's `Sec-WebSocket-Extensions` headers. Returns what was agreed and the value of the
/// response's `Sec-WebSocket-Extensions`, or `None` (no offer, or none acceptable: the
/// extension is declined and the session runs uncompressed, RFC 7692 §5). Without
/// `context_takeover` the server compresses each message afresh and says so
/// (`server_no_context_takeover`, which a response may carry unasked, RFC 7692 §7.1.1.1).
pub(crate) fn negotiate<'a>(
    headers: impl IntoIterator<Item = &'a str>,
    context_takeover: bool,
) -> Option<(Agreed, String)> {
    for header in headers {
        for ext in split_outside_quotes(header, ',') {
            let mut parts = split_outside_quotes(ext, ';').into_iter();
            let name = parts.next().unwrap_or("").trim();
            if !name.eq_ignore_ascii_case(NAME) {
                continue;
            }
            match parse_offer(parts) {
                Ok(mut offer) => {
                    offer.server_no_context_takeover |= !context_takeover;
                    if let Some(accepted) = accept(&offer) {
                        return Some(accepted);
                    }
                    log::debug!("permessage-deflate offer {ext:?} declined: window of 2^8");
                }
                Err(why) => log::debug!("permessage-deflate offer {ext:?} declined: {why}"),
            }
        }
    }
    None
}

/// Accept `offer` (the server always agrees to what the client asks of it); `None` where zlib
/// cannot do it (`server_max_window_bits=8`).
fn accept(offer: &Offer) -> Option<(Agreed, String)> {
    let mut answer = NAME.to_owned();
    if offer.server_no_context_takeover {
        answer.push_str("; server_no_context_takeover");
    }
    if offer.client_no_context_takeover {
        answer.push_str("; client_no_context_takeover");
    }
    let send_window_bits = match offer.server_max_window_bits {
        Some(bits) if bits < MIN_COMPRESS_BITS => return None,
        Some(bits) => {
            answer.push_str(&format!("; server_max_window_bits={bits}"));
            bits
        }
        None => MAX_BITS,
    };
    Some((
        Agreed {
            send_no_context_takeover: offer.server_no_context_takeover,
            send_window_bits,
            recv_no_context_takeover: offer.client_no_context_takeover,
        },
        answer,
    ))
}

/// Parse an offer's parameters; an unknown or repeated parameter, or a bad value, declines it.
fn parse_offer<'a>(params: impl Iterator<Item = &'a str>) -> Result<Offer, String> {
    let mut offer = Offer::default();
    let mut seen: Vec<String> = Vec::new();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        let key = name.to_ascii_lowercase();
        if seen.contains(&key) {
            return Err(format!("parameter {name} given twice"));
        }
        match (key.as_str(), value) {
            ("server_no_context_takeover", None) => offer.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => offer.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => {
                offer.server_max_window_bits = Some(window_bits(&v)?)
            }
            ("client_max_window_bits", None) => offer.client_max_window_bits = Some(None),
            ("client_max_window_bits", Some(v)) => {
                offer.client_max_window_bits = Some(Some(window_bits(&v)?))
            }
            _ if name.is_empty() => return Err("empty parameter".into()),
            _ => return Err(format!("parameter {param:?} not valid in an offer")),
        }
        seen.push(key);
    }
    Ok(offer)
}

/// A window size: 8 to 15, decimal digits without a leading zero.
fn window_bits(v: &str) -> Result<u8, String> {
    match v.as_bytes() {
        [b'8'..=b'9'] | [b'1', b'0'..=b'5'] => Ok(v.parse().expect("digits")),
        _ => Err(format!("window bits {v:?} not in 8..15")),
    }
}

/// A token or a quoted-string's content (RFC 7230 §3.2.6).
fn unquote(v: &str) -> Result<String, String> {
    let Some(inner) = v.strip_prefix('"') else {
        return Ok(v.to_owned());
    };
    let Some(inner) = inner.strip_suffix('"') else {
        return Err(format!("unterminated quoted value {v:?}"));
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or("dangling escape in a quoted value")?),
            '"' => return Err(format!("stray quote in {v:?}")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Split `s` at `sep` where it is not inside a quoted string.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The compressor and decompressor of one connection.
pub(crate) struct Deflate {
    agreed: Agreed,
    level: Compression,
    compress: Option<Box<Compress>>,
    decompress: Option<Box<Decompress>>,
    /// Compressed bytes of the message being inflated so far.
    msg_in: usize,
}

impl std::fmt::Debug for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflate")
            .field("agreed", &self.agreed)
            .field("compressor", &self.compress.is_some())
            .field("decompressor", &self.decompress.is_some())
            .finish()
    }
}

impl Deflate {
    /// Contexts for what was agreed; nothing is allocated until a message needs it.
    pub(crate) fn new(agreed: Agreed) -> Self {
        Deflate {
            agreed,
            level: Compression::new(6),
            compress: None,
            decompress: None,
            msg_in: 0,
        }
    }

    /// Compress one message's payload into `out` (after whatever is there), without the
    /// final `00 00 ff ff`.
    pub(crate) fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let (level, bits) = (self.level, self.agreed.send_window_bits);
        let c = self
            .compress
            .get_or_insert_with(|| Box::new(Compress::new_with_window_bits(level, false, bits)));
        let start = out.len();
        out.reserve(payload.len() / 2 + 64);
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = c.total_in();
            // A raw stream with a sync flush cannot fail.
            let _ = c.compress_vec(&payload[consumed..], out, FlushCompress::Sync);
            consumed += (c.total_in() - before) as usize;
            if consumed == payload.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() == start {
            // Nothing was flushed: an empty stored block's first byte (RFC 7692 §7.2.3.6).
            out.push(0x00);
        }
        if self.agreed.send_no_context_takeover {
            self.compress = None;
        }
    }

    /// Inflate one compressed frame's payload into `out`; `fin` ends the message (the tail
    /// is added). Fails, without growing `out` past it, once the message exceeds `limit` bytes.
    pub(crate) fn decompress(
        &mut self,
        data: &[u8],
        fin: bool,
        out: &mut BytesMut,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        let d = self
            .decompress
            .get_or_insert_with(|| Box::new(Decompress::new(false)));
        let mut ended = inflate(d, data, out, limit)?;
        self.msg_in += data.len();
        if fin {
            // An empty payload is an empty message; the tail alone would open a stored block.
            if !ended && self.msg_in > 0 {
                ended = inflate(d, &TAIL, out, limit)?;
            }
            self.msg_in = 0;
            if ended || self.agreed.recv_no_context_takeover {
                self.decompress = None;
            }
        } else if ended {
            // A final block before the message's last frame: nothing may follow it.
            self.decompress = None;
            self.msg_in = 0;
            return Err(ProtocolError::invalid(
                "compressed data after the end of the deflate stream",
            ));
        }
        Ok(())
    }

    /// Drop both contexts (the session is closing).
    pub(crate) fn release(&mut self) {
        self.compress = None;
        self.decompress = None;
    }
}

/// Feed all of `input` to `d`, appending to `out` at most `limit` bytes in all; returns
/// whether the deflate stream ended (a final block).
fn inflate(
    d: &mut Decompress,
    input: &[u8],
    out: &mut BytesMut,
    limit: usize,
) -> Result<bool, ProtocolError> {
    let mut consumed = 0;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let (in0, out0) = (d.total_in(), d.total_out());
        let status = d
            .decompress(&input[consumed..], &mut chunk, FlushDecompress::Sync)
            .map_err(|e| ProtocolError::invalid(format!("invalid compressed data: {e}")))?;
        consumed += (d.total_in() - in0) as usize;
        let produced = (d.total_out() - out0) as usize;
        if out.len() + produced > limit {
            return Err(ProtocolError::TooLarge {
                size: out.len() + produced,
                limit,
            });
        }
        out.extend_from_slice(&chunk[..produced]);
        match status {
            Status::StreamEnd => {
                if consumed < input.len() && input[consumed..] != TAIL {
                    return Err(ProtocolError::invalid(
                        "compressed data after the end of the deflate stream",
                    ));
                }
                return Ok(true);
            }
            // All input taken and the output not full: nothing more is pending.
            _ if consumed == input.len() && produced < chunk.len() => return Ok(false),
            // No progress with input left: the stream is stuck.
            _ if produced == 0 && d.total_in() == in0 => {
                return Err(ProtocolError::invalid(
                    "compressed data the inflater cannot take",
                ))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(text: &str) -> Option<(Agreed, String)> {
        negotiate([text], true)
    }

    #[test]
    fn negotiation() {
        let (a, answer) = agreed("permessage-deflate").unwrap();
        assert_eq!(answer, "permessage-deflate");
        assert_eq!(
            a,
            Agreed {
                send_no_context_takeover: false,
                send_window_bits: 15,
                recv_no_context_takeover: false
            }
        );
        let (a, answer) = agreed(
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10; \
             server_no_context_takeover; client_no_context_takeover",
        )
        .unwrap();
        assert_eq!(
            answer,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10"
        );
        assert!(a.send_no_context_takeover && a.recv_no_context_takeover);
        assert_eq!(a.send_window_bits, 10);
        // Quoted values; case of the names.
        let (a, _) = agreed("Permessage-Deflate; server_max_window_bits=\"12\"").unwrap();
        assert_eq!(a.send_window_bits, 12);
        // Bad offers are declined, the next one is taken.
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflate; server_max_window_bits=\"1",
            "permessage-deflate; server_max_window_bits=8",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(agreed(bad), None, "{bad}");
            let (a, _) = negotiate(
                [bad, "foo, permessage-deflate; client_max_window_bits=9"],
                true,
            )
            .unwrap_or_else(|| panic!("{bad}: the second offer"));
            assert_eq!(a.send_window_bits, 15);
        }
        assert!(negotiate(
            ["permessage-deflate; server_max_window_bits=8, permessage-deflate"],
            true
        )
        .is_some());
        // Without context takeover the server says so, asked or not.
        let (a, answer) = negotiate(["permessage-deflate; client_max_window_bits"], false).unwrap();
        assert!(a.send_no_context_takeover && !a.recv_no_context_takeover);
        assert_eq!(answer, "permessage-deflate; server_no_context_takeover");
    }

    fn round_trip(a: Agreed, b: Agreed, messages: &[&[u8]]) {
        let (mut tx, mut rx) = (Deflate::new(a), Deflate::new(b));
        for m in messages {
            let mut wire = Vec::new();
            tx.compress(m, &mut wire);
            assert!(!wire.ends_with(&TAIL));
            let mut out = BytesMut::new();
            // Split the wire bytes like fragments.
            let mid = wire.len() / 2;
            rx.decompress(&wire[..mid], false, &mut out, 1 << 20)
                .unwrap();
            rx.decompress(&wire[mid..], true, &mut out, 1 << 20)
                .unwrap();
            assert_eq!(&out[..], *m);
        }
    }

    #[test]
    fn compress_and_inflate() {
        let take = Agreed {
            send_no_context_takeover: false,
            send_window_bits: 15,
            recv_no_context_takeover: false,
        };
        let big = "werkmann ".repeat(10_000);
        let msgs: [&[u8]; 4] = [
            b"hello hello hello",
            b"",
            big.as_bytes(),
            b"hello hello hello",
        ];
        round_trip(take, take, &msgs);
        let fresh = Agreed {
            send_no_context_takeover: true,
            send_window_bits: 9,
            recv_no_context_takeover: true,
        };
        round_trip(fresh, fresh, &msgs);
        // The compressor is gone after a message without context takeover.
        let mut d = Deflate::new(fresh);
        d.compress(b"abc", &mut Vec::new());
        assert!(d.compress.is_none());
        // With context takeover the second copy of a message is tiny.
        let mut d = Deflate::new(take);
        let (mut first, mut second) = (Vec::new(), Vec::new());
        d.compress(big.as_bytes(), &mut first);
        d.compress(big.as_bytes(), &mut second);
        assert!(
            second.len() < first.len(),
            "{} {}",
            second.len(),
            first.len()
        );
    }

    #[test]
    fn bomb_is_cut_at_the_limit() {
        let agreed = Agreed {
            send_no_context_takeover: false,
            send_window_bits: 15,
            recv_no_context_takeover: false,
        };
        let mut wire = Vec::new();
        Deflate::new(agreed).compress(&vec![0u8; 50 << 20], &mut wire);
        assert!(wire.len() < 100 << 10, "{}", wire.len());
        let mut out = BytesMut::new();
        let err = Deflate::new(agreed)
            .decompress(&wire, true, &mut out, 1 << 20)
            .unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge { limit, .. } if limit == 1 << 20));
        assert!(out.len() <= 1 << 20);
        // Garbage is refused.
        let err = Deflate::new(agreed)
            .decompress(&[0xff; 32], true, &mut BytesMut::new(), 1 << 20)
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Invalid(_)), "{err}");
    }
}
