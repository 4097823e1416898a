//! Where RESP3 frames end in a byte stream, read in pieces as they come: each byte once, a
//! frame's bytes kept only when asked (a push, to read whole). The tap (`tap.rs`) numbers the
//! directory connection's replies and commands with it.

/// Deepest nesting of a frame (Redis's replies nest a few levels; attributes count).
const MAX_DEPTH: usize = 32;
/// Longest header line (a simple string or error is one: Redis's are far shorter).
const MAX_LINE: usize = 64 * 1024;

/// Not RESP3 (or nested past [`MAX_DEPTH`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Malformed;

/// A whole top-level frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame {
    /// A push (`>`), its bytes (attributes before it left out).
    Push(Vec<u8>),
    /// Anything else: a reply, or a command.
    Other,
}

/// An open aggregate: elements still to come, and whether it is an attribute (which describes
/// the value after it and is not one itself).
struct Open {
    left: u64,
    attribute: bool,
}

/// The scanner's place in the stream.
#[derive(Default)]
pub(super) struct Frames {
    /// The aggregates open around the current place, innermost last.
    open: Vec<Open>,
    /// A header line read in part.
    line: Vec<u8>,
    /// A blob's bytes still to pass over, then its CRLF (`crlf`).
    body: usize,
    /// Bytes of a blob's closing CRLF still to check (2, 1 or 0).
    crlf: u8,
    /// The current top-level frame is a push: its bytes so far.
    push: Option<Vec<u8>>,
}

impl Frames {
    /// Whether the stream so far ends between frames.
    pub(super) fn between(&self) -> bool {
        self.open.is_empty()
            && self.line.is_empty()
            && self.body == 0
            && self.crlf == 0
            && self.push.is_none()
    }

    /// Read `data` (what follows the last call's), handing each frame it completes to `each`.
    pub(super) fn feed(
        &mut self,
        data: &[u8],
        mut each: impl FnMut(Frame),
    ) -> Result<(), Malformed> {
        let mut i = 0;
        while i < data.len() {
            if self.body > 0 {
                let n = self.body.min(data.len() - i);
                self.keep(&data[i..i + n]);
                self.body -= n;
                i += n;
                continue;
            }
            if self.crlf > 0 {
                let want = if self.crlf == 2 { b'\r' } else { b'\n' };
                if data[i] != want {
                    return Err(Malformed);
                }
                self.keep(&data[i..=i]);
                self.crlf -= 1;
                i += 1;
                if self.crlf == 0 {
                    self.value_done(&mut each)?;
                }
                continue;
            }
            let Some(nl) = memchr::memchr(b'\n', &data[i..]) else {
                self.line.extend_from_slice(&data[i..]);
                if self.line.len() > MAX_LINE {
                    return Err(Malformed);
                }
                break;
            };
            // The line's start came with an earlier piece, or it is all in this one.
            let mut started = std::mem::take(&mut self.line);
            let line: &[u8] = if started.is_empty() {
                &data[i..=i + nl]
            } else {
                started.extend_from_slice(&data[i..=i + nl]);
                &started
            };
            let header = Header::read(line)?;
            self.header(header, line, &mut each)?;
            started.clear();
            self.line = started;
            i += nl + 1;
        }
        Ok(())
    }

    /// Keep `bytes` if they are a push's.
    fn keep(&mut self, bytes: &[u8]) {
        if let Some(p) = &mut self.push {
            p.extend_from_slice(bytes);
        }
    }

    fn header(
        &mut self,
        h: Header,
        line: &[u8],
        each: &mut impl FnMut(Frame),
    ) -> Result<(), Malformed> {
        if self.open.is_empty() && h.kind == b'>' {
            self.push = Some(Vec::with_capacity(64));
        }
        self.keep(line);
        match (h.kind, h.len) {
            (b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(', _) => self.value_done(each),
            // RESP2's nulls.
            (_, None) => self.value_done(each),
            (b'$' | b'!' | b'=', Some(n)) => {
                self.body = usize::try_from(n).map_err(|_| Malformed)?;
                self.crlf = 2;
                Ok(())
            }
            (b'*' | b'~' | b'>' | b'%' | b'|', Some(n)) => {
                let left = match h.kind {
                    b'%' | b'|' => n.checked_mul(2).ok_or(Malformed)?,
                    _ => n,
                };
                let attribute = h.kind == b'|';
                if left == 0 {
                    // An empty aggregate is a value; an empty attribute describes the next.
                    return match attribute {
                        true => Ok(()),
                        false => self.value_done(each),
                    };
                }
                if self.open.len() >= MAX_DEPTH {
                    return Err(Malformed);
                }
                self.open.push(Open { left, attribute });
                Ok(())
            }
            _ => Err(Malformed),
        }
    }

    /// A value ended: it counts in the aggregate around it, closing those it fills; at the
    /// top it is a frame.
    fn value_done(&mut self, each: &mut impl FnMut(Frame)) -> Result<(), Malformed> {
        loop {
            let Some(top) = self.open.last_mut() else {
                each(match self.push.take() {
                    Some(bytes) => Frame::Push(bytes),
                    None => Frame::Other,
                });
                return Ok(());
            };
            top.left -= 1;
            if top.left > 0 {
                return Ok(());
            }
            let attribute = top.attribute;
            self.open.pop();
            if attribute {
                // What it describes comes next.
                return Ok(());
            }
        }
    }
}

/// A header line: its kind and, for blobs and aggregates, the length (`None`: a null).
struct Header {
    kind: u8,
    len: Option<u64>,
}

impl Header {
    /// `line`: the kind byte, the rest, CRLF.
    fn read(line: &[u8]) -> Result<Header, Malformed> {
        let [kind, rest @ .., b'\r', b'\n'] = line else {
            return Err(Malformed);
        };
        let len = match kind {
            b'$' | b'!' | b'=' | b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n: i64 = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(Malformed)?;
                match n {
                    -1 => None,
                    n => Some(u64::try_from(n).map_err(|_| Malformed)?),
                }
            }
            _ => Some(0),
        };
        Ok(Header { kind: *kind, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames of `stream` fed whole, then byte by byte: both the same.
    fn frames(stream: &[u8]) -> Result<Vec<Frame>, Malformed> {
        let mut whole = Vec::new();
        let mut f = Frames::default();
        f.feed(stream, |x| whole.push(x))?;
        let mut bytes = Vec::new();
        let mut f = Frames::default();
        for b in stream {
            f.feed(std::slice::from_ref(b), |x| bytes.push(x))?;
        }
        assert_eq!(whole, bytes);
        Ok(whole)
    }

    #[test]
    fn frames_end_where_resp3_says() {
        use Frame::Other;
        assert_eq!(frames(b":12\r\n+OK\r\n"), Ok(vec![Other, Other]));
        assert_eq!(
            frames(b"$5\r\nhel\r\n\r\n"),
            Ok(vec![Other]),
            "a blob holds CRLF"
        );
        assert_eq!(
            frames(b"$-1\r\n*-1\r\n$0\r\n\r\n"),
            Ok(vec![Other, Other, Other])
        );
        assert_eq!(frames(b"*2\r\n:1\r\n$1\r\nx\r\n"), Ok(vec![Other]));
        assert_eq!(frames(b"%1\r\n+a\r\n*0\r\n:7\r\n"), Ok(vec![Other, Other]));
        assert_eq!(frames(b"|1\r\n+k\r\n+v\r\n:1\r\n"), Ok(vec![Other]));
        assert_eq!(
            frames(b"*2\r\n|1\r\n+k\r\n+v\r\n:1\r\n:2\r\n"),
            Ok(vec![Other]),
            "an attribute is not an element"
        );
        assert_eq!(frames(b"|0\r\n:1\r\n"), Ok(vec![Other]));
        let push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n";
        let mut s = b"|1\r\n+a\r\n+b\r\n".to_vec();
        s.extend_from_slice(push);
        assert_eq!(frames(&s), Ok(vec![Frame::Push(push.to_vec())]));
        let mut f = Frames::default();
        let mut n = 0;
        f.feed(b"*2\r\n:1\r\n", |_| n += 1).unwrap();
        assert!(n == 0 && !f.between(), "incomplete");
        f.feed(b":2\r\n", |_| n += 1).unwrap();
        assert!(n == 1 && f.between());
    }

    #[test]
    fn what_is_not_resp3_is_refused() {
        for bad in [
            &b"$2\r\nabcd"[..],
            b"?x\r\n",
            b"*x\r\n",
            b":1\n",
            b"\n",
            b"$-2\r\n",
            b"%-2\r\n",
        ] {
            assert_eq!(
                frames(bad),
                Err(Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1) + ":1\r\n";
        assert_eq!(frames(deep.as_bytes()), Err(Malformed));
        let attributes = "|1\r\n+k\r\n".repeat(MAX_DEPTH + 1) + "+v\r\n:1\r\n";
        assert_eq!(
            frames(attributes.as_bytes()),
            Err(Malformed),
            "nested attributes"
        );
        let many = "|0\r\n".repeat(100_000) + ":1\r\n";
        assert_eq!(
            frames(many.as_bytes()),
            Ok(vec![Frame::Other]),
            "no recursion"
        );
        let endless = vec![b'+'; MAX_LINE + 2];
        let mut f = Frames::default();
        assert_eq!(
            f.feed(&endless, |_| {}),
            Err(Malformed),
            "a header line without end"
        );
        let mut f = Frames::default();
        f.feed(b"$9223372036854775807\r\n", |_| {}).unwrap();
        assert!(!f.between(), "a huge blob waits, without overflow");
    }

    #[test]
    fn a_large_reply_is_read_in_one_pass() {
        // 200,000 elements fed in 1 KiB pieces: each byte looked at once.
        let mut s = b"*200000\r\n".to_vec();
        for i in 0..200_000 {
            s.extend_from_slice(format!("$7\r\n{i:07}\r\n").as_bytes());
        }
        let mut f = Frames::default();
        let mut n = 0;
        for piece in s.chunks(1024) {
            f.feed(piece, |_| n += 1).unwrap();
        }
        assert!(n == 1 && f.between());
    }
}
