//! HTTP/1.1 message framing, strictly (RFC 9112 §2, §6, §7.1): the bytes a request head may
//! hold, how long its body is, and the chunked decoder. Anything two parsers could read two
//! ways — and so a proxy in front and this server differently — is refused: a signed,
//! non-decimal or repeated-and-different `Content-Length`, `Content-Length` with
//! `Transfer-Encoding`, a transfer coding other than a final `chunked`, `Transfer-Encoding` in
//! HTTP/1.0, a bad chunk size or extension, a line not ended by CRLF, NUL or a bare CR.

use bytes::{Buf, BytesMut};

use super::ProtocolError;
use crate::message::http::Request;

/// Longest chunk-size line (with its extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLength {
    /// `Content-Length` bytes (0: no body).
    Sized(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Refuse a request head (its bytes up to and with the blank line) holding NUL, a CR not
/// followed by LF, or an LF not preceded by CR.
pub(crate) fn check_head_bytes(head: &[u8]) -> Result<(), ProtocolError> {
    for (i, &b) in head.iter().enumerate() {
        match b {
            0 => return Err(ProtocolError::invalid("NUL in the request head")),
            b'\r' if head.get(i + 1) != Some(&b'\n') => {
                return Err(ProtocolError::invalid("bare CR in the request head"))
            }
            b'\n' if i == 0 || head[i - 1] != b'\r' => {
                return Err(ProtocolError::invalid(
                    "a line of the request head not ended by CRLF",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The body's length as the head's framing fields say, or why they cannot be trusted.
pub(crate) fn body_length(req: &Request) -> Result<BodyLength, ProtocolError> {
    fn field<'a>(req: &'a Request, name: &'static str) -> impl Iterator<Item = &'a str> {
        req.headers()
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    let mut length: Option<u64> = None;
    for value in field(req, "content-length") {
        for part in value.split(',') {
            let part = part.trim_matches([' ', '\t']);
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ProtocolError::invalid(format!(
                    "Content-Length {value:?} is not a decimal number"
                )));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| ProtocolError::invalid("Content-Length out of range"))?;
            match length {
                Some(m) if m != n => {
                    return Err(ProtocolError::invalid(
                        "two different Content-Length values",
                    ))
                }
                _ => length = Some(n),
            }
        }
    }
    let mut codings = field(req, "transfer-encoding").peekable();
    if codings.peek().is_none() {
        let n = usize::try_from(length.unwrap_or(0))
            .map_err(|_| ProtocolError::invalid("Content-Length out of range"))?;
        return Ok(BodyLength::Sized(n));
    }
    if length.is_some() {
        return Err(ProtocolError::invalid(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if req.version_minor() == 0 {
        return Err(ProtocolError::invalid(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    let list: Vec<String> = codings
        .flat_map(|v| v.split(','))
        .map(|c| c.trim_matches([' ', '\t']).to_ascii_lowercase())
        .collect();
    match list.split_last() {
        Some((last, before)) if last == "chunked" => {
            if let Some(other) = before.iter().find(|c| !c.is_empty()) {
                // Understood framing, but a coding this server does not undo (RFC 9112 §6.1).
                return Err(ProtocolError::Unsupported(format!(
                    "transfer coding {other:?}"
                )));
            }
            Ok(BodyLength::Chunked)
        }
        _ => Err(ProtocolError::invalid(
            "Transfer-Encoding without chunked as its final coding",
        )),
    }
}

/// `tchar` (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A chunk-size line after its hex digits: `*( BWS ";" BWS name [ BWS "=" BWS value ] )`,
/// the value a token or a quoted string.
fn check_extensions(mut s: &[u8]) -> Result<(), ProtocolError> {
    let bad = || ProtocolError::invalid("bad chunk extension");
    let bws = |s: &mut &[u8]| {
        while let [b' ' | b'\t', rest @ ..] = *s {
            *s = rest;
        }
    };
    let token = |s: &mut &[u8]| -> Result<(), ProtocolError> {
        let n = s.iter().take_while(|b| is_tchar(**b)).count();
        if n == 0 {
            return Err(bad());
        }
        *s = &s[n..];
        Ok(())
    };
    loop {
        // Blanks only before a `;`: a size line ends right after its digits or an extension.
        let before = s.len();
        bws(&mut s);
        let [b';', rest @ ..] = s else {
            return if s.is_empty() && s.len() == before {
                Ok(())
            } else {
                Err(bad())
            };
        };
        s = rest;
        bws(&mut s);
        token(&mut s)?;
        bws(&mut s);
        if let [b'=', rest @ ..] = s {
            s = rest;
            bws(&mut s);
            if let [b'"', rest @ ..] = s {
                // quoted-string: qdtext or a backslash and one visible or blank byte.
                s = rest;
                loop {
                    match s {
                        [b'"', rest @ ..] => {
                            s = rest;
                            break;
                        }
                        [b'\\', c, rest @ ..] if *c == b'\t' || *c >= b' ' && *c != 0x7f => {
                            s = rest
                        }
                        [c, rest @ ..]
                            if *c == b'\t' || *c >= b' ' && *c != 0x7f && *c != b'\\' =>
                        {
                            s = rest
                        }
                        _ => return Err(bad()),
                    }
                }
            } else {
                token(&mut s)?;
            }
        }
    }
}

/// A trailer field line (without its CRLF): `name ":" value`, the name a token, the value
/// without control bytes but HTAB.
fn check_trailer(line: &[u8]) -> Result<(), ProtocolError> {
    let bad = || ProtocolError::invalid("bad trailer field");
    let colon = line.iter().position(|b| *b == b':').ok_or_else(bad)?;
    if colon == 0 || !line[..colon].iter().all(|b| is_tchar(*b)) {
        return Err(bad());
    }
    if line[colon + 1..]
        .iter()
        .any(|b| (*b < b' ' && *b != b'\t') || *b == 0x7f)
    {
        return Err(bad());
    }
    Ok(())
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// In a chunk's data: this many bytes to go.
    Data(usize),
    /// After a chunk's data: expecting its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until a blank one; bytes of them read so far.
    Trailers(usize),
}

/// Decodes a chunked body into `body`, as its bytes arrive.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: Chunk,
    /// Most body bytes accepted.
    max_body: usize,
    /// Most trailer bytes accepted.
    max_trailers: usize,
}

impl ChunkedDecoder {
    /// A decoder refusing bodies over `max_body` bytes and trailers over `max_trailers`.
    pub(crate) fn new(max_body: usize, max_trailers: usize) -> Self {
        ChunkedDecoder {
            state: Chunk::Size,
            max_body,
            max_trailers,
        }
    }

    /// Move what `buf` holds of the body into `body`; `Ok(true)` once the body (and its
    /// trailers) ended, `Ok(false)` when more is needed.
    pub(crate) fn decode(
        &mut self,
        buf: &mut BytesMut,
        body: &mut BytesMut,
    ) -> Result<bool, ProtocolError> {
        loop {
            match self.state {
                Chunk::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE, "chunk size line")? else {
                        return Ok(false);
                    };
                    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                    if digits == 0 || digits > 16 {
                        return Err(ProtocolError::invalid(format!(
                            "bad chunk size {:?}",
                            String::from_utf8_lossy(&line)
                        )));
                    }
                    check_extensions(&line[digits..])?;
                    let hex = std::str::from_utf8(&line[..digits]).expect("hex digits are ASCII");
                    let size = u64::from_str_radix(hex, 16)
                        .ok()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| ProtocolError::invalid("chunk size out of range"))?;
                    if size == 0 {
                        self.state = Chunk::Trailers(0);
                        continue;
                    }
                    let total = body.len().saturating_add(size);
                    if total > self.max_body {
                        return Err(ProtocolError::TooLarge {
                            size: total,
                            limit: self.max_body,
                        });
                    }
                    self.state = Chunk::Data(size);
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(false);
                    }
                    let n = left.min(buf.len());
                    body.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                    self.state = if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError::invalid("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = Chunk::Size;
                }
                Chunk::Trailers(read) => {
                    let room = self.max_trailers.saturating_sub(read);
                    let Some(line) = take_line(buf, room, "trailer section")? else {
                        return Ok(false);
                    };
                    if line.is_empty() {
                        self.state = Chunk::Size;
                        return Ok(true);
                    }
                    check_trailer(&line)?;
                    self.state = Chunk::Trailers(read + line.len() + 2);
                }
            }
        }
    }
}

/// Take one CRLF-ended line off `buf` (without the CRLF): `None` until it is all there; an
/// error for a line over `max` bytes or holding NUL, a bare CR or a bare LF. A trailer section
/// past its limit is a head too large (431), a long chunk line a bad request.
fn take_line(
    buf: &mut BytesMut,
    max: usize,
    what: &str,
) -> Result<Option<BytesMut>, ProtocolError> {
    let Some(lf) = buf.iter().position(|b| *b == b'\n') else {
        if buf.len() > max {
            return Err(too_long(what, buf.len(), max));
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(ProtocolError::invalid(format!("{what}: LF without CR")));
    }
    if lf - 1 > max {
        return Err(too_long(what, lf - 1, max));
    }
    if buf[..lf - 1].iter().any(|b| *b == b'\r' || *b == 0) {
        return Err(ProtocolError::invalid(format!("{what}: bare CR or NUL")));
    }
    let line = buf.split_to(lf + 1);
    let mut line = line;
    line.truncate(lf - 1);
    Ok(Some(line))
}

fn too_long(what: &str, size: usize, limit: usize) -> ProtocolError {
    if what == "trailer section" {
        ProtocolError::HeadTooLarge { size, limit }
    } else {
        ProtocolError::invalid(format!("{what} longer than {limit} bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Request {
        let (req, _) = super::super::http::parse_head(text.as_bytes())
            .unwrap()
            .unwrap();
        req
    }

    fn length(fields: &str) -> Result<BodyLength, ProtocolError> {
        body_length(&head(&format!(
            "POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n"
        )))
    }

    #[test]
    fn content_length_is_decimal_digits_and_one_value() {
        assert_eq!(
            length("Content-Length: 12\r\n").unwrap(),
            BodyLength::Sized(12)
        );
        assert_eq!(length("").unwrap(), BodyLength::Sized(0));
        assert_eq!(
            length("Content-Length: 5\r\nContent-Length: 5\r\n").unwrap(),
            BodyLength::Sized(5)
        );
        assert_eq!(
            length("Content-Length: 5, 5\r\n").unwrap(),
            BodyLength::Sized(5)
        );
        for bad in [
            "Content-Length: +5\r\n",
            "Content-Length: -5\r\n",
            "Content-Length: 0x5\r\n",
            "Content-Length: 5.0\r\n",
            "Content-Length: 5 5\r\n",
            "Content-Length: \r\n",
            "Content-Length: 99999999999999999999\r\n",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: 5, 6\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked, identity\r\n",
            "Transfer-Encoding: identity\r\n",
            "Transfer-Encoding: xchunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
        ] {
            assert!(
                matches!(length(bad), Err(ProtocolError::Invalid(_))),
                "{bad:?}: {:?}",
                length(bad)
            );
        }
        assert_eq!(
            length("Transfer-Encoding: chunked\r\n").unwrap(),
            BodyLength::Chunked
        );
        assert_eq!(
            length("Transfer-Encoding: Chunked\r\n").unwrap(),
            BodyLength::Chunked
        );
        assert!(matches!(
            length("Transfer-Encoding: gzip, chunked\r\n"),
            Err(ProtocolError::Unsupported(_))
        ));
        let old = head("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(body_length(&old).is_err());
    }

    #[test]
    fn head_bytes_are_crlf_lines_without_nul_or_bare_cr() {
        assert!(check_head_bytes(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\0\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET /\r HTTP/1.1\r\n\r\n",
        ] {
            assert!(check_head_bytes(bad).is_err(), "{bad:?}");
        }
    }

    fn chunked(input: &[u8]) -> Result<Option<Vec<u8>>, ProtocolError> {
        let mut d = ChunkedDecoder::new(64, 64);
        let mut buf = BytesMut::from(input);
        let mut body = BytesMut::new();
        Ok(d.decode(&mut buf, &mut body)?.then(|| body.to_vec()))
    }

    #[test]
    fn chunks_and_their_extensions_and_trailers() {
        assert_eq!(
            chunked(b"3\r\nabc\r\n2;a=b;c=\"d\\\"e\" ; f\r\nde\r\n0\r\nX-T: 1\r\n\r\n").unwrap(),
            Some(b"abcde".to_vec())
        );
        assert_eq!(
            chunked(b"A\r\n0123456789\r\n0\r\n\r\n")
                .unwrap()
                .unwrap()
                .len(),
            10
        );
        assert_eq!(chunked(b"3\r\nab").unwrap(), None);
        // Byte by byte: the same.
        let all = b"3\r\nabc\r\n0\r\nX: y\r\n\r\n";
        let mut d = ChunkedDecoder::new(64, 64);
        let (mut buf, mut body) = (BytesMut::new(), BytesMut::new());
        let mut done = false;
        for b in all {
            buf.extend_from_slice(&[*b]);
            done = d.decode(&mut buf, &mut body).unwrap();
        }
        assert!(done);
        assert_eq!(&body[..], b"abc");
        for bad in [
            &b"+3\r\nabc\r\n0\r\n\r\n"[..],
            b"-3\r\nabc\r\n0\r\n\r\n",
            b"0x3\r\nabc\r\n0\r\n\r\n",
            b" 3\r\nabc\r\n0\r\n\r\n",
            b"3 x\r\nabc\r\n0\r\n\r\n",
            b"3 \r\nabc\r\n0\r\n\r\n",
            b"3;a=b \r\nabc\r\n0\r\n\r\n",
            b"3;\r\nabc\r\n0\r\n\r\n",
            b"3;a=\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"b\r\nabc\r\n0\r\n\r\n",
            b"3;a b\r\nabc\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nX\r\n\r\n",
            b"3\r\nabc\r\n0\r\nX: a\rb\r\n\r\n",
            b"3\r\nabc\r\n0\r\n: a\r\n\r\n",
            b"11111111111111111\r\n",
            b"3\r\nabc\r\n\0\r\n\r\n",
        ] {
            assert!(chunked(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(
            chunked(b"41\r\n"),
            Err(ProtocolError::TooLarge { .. })
        ));
        assert!(matches!(
            chunked(&[&b"0\r\nX: "[..], &[b'a'; 80], b"\r\n\r\n"].concat()),
            Err(ProtocolError::HeadTooLarge { .. })
        ));
    }
}
