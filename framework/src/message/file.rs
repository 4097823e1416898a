//! File responses: a [`Response`] whose body is read from a file as the connection's send
//! buffer drains (never the whole file in memory), with the headers a browser or a cache
//! needs (`Content-Type` from the extension, `Last-Modified`, `ETag`, `Accept-Ranges`) and the
//! request's conditions applied (`If-None-Match`/`If-Modified-Since` → 304, `Range` → 206,
//! an unsatisfiable range → 416).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use super::http::{Request, Response};

/// The part of a file a response sends: `len` bytes from `offset`, read when the connection
/// can take them.
#[derive(Debug, Clone)]
pub(crate) struct FileBody {
    file: Arc<File>,
    offset: u64,
    len: u64,
}

impl FileBody {
    fn new(file: File, offset: u64, len: u64) -> FileBody {
        FileBody {
            file: Arc::new(file),
            offset,
            len,
        }
    }

    /// Bytes still to send.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The next piece, at most `max` bytes (empty when all is sent). A file that became
    /// shorter than the response announced is an error: the connection must close.
    pub(crate) fn read(&mut self, max: usize) -> io::Result<Bytes> {
        let want = self.len.min(max as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut buf[got..], self.offset + got as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file is shorter than the response announced",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.offset += want as u64;
        self.len -= want as u64;
        Ok(buf.freeze())
    }
}

/// An open regular file with what its headers need.
struct Opened {
    file: File,
    size: u64,
    modified: Option<SystemTime>,
}

fn open(path: &Path) -> io::Result<Opened> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "not a regular file",
        ));
    }
    Ok(Opened {
        file,
        size: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// The `Content-Type` of a file name's extension (`application/octet-stream` when unknown;
/// text types in UTF-8).
pub(crate) fn content_type(path: &Path) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    if mime.type_() == mime_guess::mime::TEXT
        || mime.essence_str() == "application/javascript"
        || mime.essence_str() == "application/json"
    {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_string()
    }
}

/// A validator that changes whenever the file's size or modification time does.
fn etag(size: u64, modified: Option<SystemTime>) -> String {
    let secs = modified
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    format!("\"{secs:x}-{size:x}\"")
}

/// What a `Range` header asks of a file of `size` bytes (RFC 9110 §14).
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    /// The whole file (no range, or one this server does not honour: several ranges, or a
    /// malformed header, which the RFC says to ignore).
    Whole,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// A range that starts past the end, or an empty file: 416.
    Unsatisfiable,
}

fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let digits = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.is_empty(), last.is_empty()) {
        // `-N`: the last N bytes.
        (true, false) => match digits(last) {
            None => Wanted::Whole,
            Some(0) => Wanted::Unsatisfiable,
            Some(_) if size == 0 => Wanted::Unsatisfiable,
            Some(n) => Wanted::Part {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        },
        (false, _) => {
            let Some(start) = digits(first) else {
                return Wanted::Whole;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match digits(last) {
                    Some(e) if e >= start => e,
                    _ => return Wanted::Whole,
                }
            };
            if start >= size {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
        (true, true) => Wanted::Whole,
    }
}

impl Response {
    /// Send the file at `path` as the body (Workerman's `withFile($file)`): its length, its
    /// `Content-Type` from the extension unless one is set, `Last-Modified`. The file is read
    /// as the connection's send buffer drains.
    pub fn with_file(self, path: impl AsRef<Path>) -> io::Result<Response> {
        self.with_file_range(path, 0, None)
    }

    /// Send `length` bytes (`None`: to the end) of the file at `path` from `offset`
    /// (Workerman's `withFile($file, $offset, $length)`); an offset past the end sends nothing.
    pub fn with_file_range(
        mut self,
        path: impl AsRef<Path>,
        offset: u64,
        length: Option<u64>,
    ) -> io::Result<Response> {
        let path = path.as_ref();
        let o = open(path)?;
        let offset = offset.min(o.size);
        let len = length.map_or(o.size - offset, |l| l.min(o.size - offset));
        if self.header("content-type").is_none() {
            self = self.with_header("Content-Type", content_type(path));
        }
        if let Some(m) = o.modified {
            self = self.with_header("Last-Modified", httpdate::fmt_http_date(m));
        }
        self.body = Bytes::new();
        self.file = Some(FileBody::new(o.file, offset, len));
        Ok(self)
    }

    /// Answer `req` with the file at `path` as a static file server does: 200 with the file,
    /// 304 when the client's copy is current (`If-None-Match`, else `If-Modified-Since`), 206
    /// with the part a `Range` asks for (one range; `If-Range` honoured), 416 for a range past
    /// the end; 404 when there is no such file, 403 when it may not be read, 500 otherwise.
    pub fn file(req: &Request, path: impl AsRef<Path>) -> Response {
        let path = path.as_ref();
        let o = match open(path) {
            Ok(o) => o,
            Err(e) => {
                let status = match e.kind() {
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => 404,
                    io::ErrorKind::PermissionDenied => 403,
                    _ => 500,
                };
                if status == 500 {
                    log::warn!("file {}: {e}", path.display());
                }
                return Response::text(status, format!("{}\n", super::http::reason_phrase(status)));
            }
        };
        let tag = etag(o.size, o.modified);
        let modified = o.modified.map(httpdate::fmt_http_date);
        let mut resp = Response::new(200)
            .with_header("ETag", tag.clone())
            .with_header("Accept-Ranges", "bytes");
        if let Some(m) = &modified {
            resp = resp.with_header("Last-Modified", m.clone());
        }
        // Conditions (RFC 9110 §13.2.2): If-None-Match, else If-Modified-Since.
        let not_modified = match req.header("if-none-match") {
            Some(inm) => inm
                .split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == tag),
            None => match (req.header("if-modified-since"), o.modified) {
                (Some(ims), Some(m)) => httpdate::parse_http_date(ims).is_ok_and(|since| {
                    // Whole seconds: the header cannot say more.
                    let secs =
                        |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    secs(m) <= secs(since)
                }),
                _ => false,
            },
        };
        if not_modified && (req.method() == "GET" || req.method() == "HEAD") {
            resp.status = 304;
            return resp;
        }
        let range = match req.header("if-range") {
            // A range only for the copy the client has.
            Some(v) if v != tag && Some(v) != modified.as_deref() => None,
            _ => req.header("range"),
        };
        let range = if req.method() == "GET" { range } else { None };
        let mut resp = resp.with_header("Content-Type", content_type(path));
        let (start, len) = match wanted(range, o.size) {
            Wanted::Whole => (0, o.size),
            Wanted::Part { start, end } => {
                resp.status = 206;
                resp = resp.with_header("Content-Range", format!("bytes {start}-{end}/{}", o.size));
                (start, end - start + 1)
            }
            Wanted::Unsatisfiable => {
                return Response::text(416, "Range Not Satisfiable\n")
                    .with_header("Content-Range", format!("bytes */{}", o.size));
            }
        };
        resp.file = Some(FileBody::new(o.file, start, len));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_rfc_9110_reads_them() {
        use Wanted::*;
        let part = |start, end| Part { start, end };
        assert_eq!(wanted(None, 100), Whole);
        assert_eq!(wanted(Some("bytes=0-9"), 100), part(0, 9));
        assert_eq!(wanted(Some("bytes=90-"), 100), part(90, 99));
        assert_eq!(wanted(Some("bytes=90-200"), 100), part(90, 99));
        assert_eq!(wanted(Some("bytes=-10"), 100), part(90, 99));
        assert_eq!(wanted(Some("bytes=-200"), 100), part(0, 99));
        assert_eq!(wanted(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-0"), 0), Unsatisfiable);
        // Ignored, as the RFC says of what a server does not understand or honour.
        for odd in [
            "bytes=9-1",
            "bytes=a-",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(wanted(Some(odd), 100), Whole, "{odd}");
        }
    }

    #[test]
    fn types_from_extensions() {
        assert_eq!(
            content_type(Path::new("a.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(
            content_type(Path::new("a.unknown-ext")),
            "application/octet-stream"
        );
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}
