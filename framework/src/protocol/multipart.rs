//! `multipart/form-data` request bodies (RFC 7578, RFC 2046 §5.1), parsed as their bytes
//! arrive: fields are kept in memory (counted against `max_package_size`), file parts are
//! written to temporary files piece by piece (counted against the worker's [`Uploads`]).
//!
//! Why not `multer`: it reads an async `Stream` of body chunks, while an HTTP codec is pushed
//! bytes in `decode(&mut BytesMut)` and must answer at once; driving multer would need a
//! channel and a task per upload. The grammar needed here is small: find the delimiter, read a
//! part's header block (with `httparse`), stream the part's bytes up to the next delimiter.
//!
//! Anything malformed is a 400, anything past a limit a 413; dropping the parser (an error, a
//! disconnect) deletes every temporary file it made.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use tempfile::NamedTempFile;

use super::ProtocolError;
use crate::message::upload::{UploadedFile, Uploads};

/// Largest header block of one part.
const MAX_PART_HEAD: usize = 8 * 1024;
/// What each part costs against the field budget besides its bytes (its delimiter line and
/// bookkeeping), so that a body of countless empty parts is bounded too.
const PART_OVERHEAD: usize = 128;
/// Most blanks allowed after a delimiter (RFC 2046's transport padding).
const MAX_PADDING: usize = 64;

/// The boundary of a `multipart/form-data` content type, `None` for another type; a
/// multipart type without a valid boundary is an error.
pub(crate) fn boundary(content_type: &str) -> Result<Option<String>, ProtocolError> {
    let mut params = content_type.split(';');
    let mime = params.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Ok(None);
    }
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("boundary") {
            continue;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        // bchars (RFC 2046 §5.1.1), 1 to 70 of them, not ending in a space.
        let ok = !v.is_empty()
            && v.len() <= 70
            && !v.ends_with(' ')
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b));
        if !ok {
            return Err(ProtocolError::invalid("bad multipart boundary"));
        }
        return Ok(Some(v.to_string()));
    }
    Err(ProtocolError::invalid(
        "multipart/form-data without a boundary",
    ))
}

/// Where the parser is.
enum State {
    /// Before the first delimiter (a preamble is skipped).
    Preamble,
    /// Right after a delimiter: `--` (the last) or padding and CRLF.
    AfterDelimiter,
    /// In a part's header block.
    Headers,
    /// In a part's content.
    Body,
    /// After the close delimiter: the rest is ignored.
    Epilogue,
}

/// The part being read.
enum Part {
    /// A form field, in memory.
    Field { name: String, value: Vec<u8> },
    /// A file, on its way to a temporary file.
    File {
        field: String,
        file_name: String,
        content_type: String,
        file: NamedTempFile,
        size: u64,
    },
    /// Content nobody asked for (no name, or a file input left empty): dropped.
    Skip,
}

/// An incremental `multipart/form-data` parser.
pub(crate) struct Multipart {
    /// `CRLF--boundary`.
    delim: Vec<u8>,
    state: State,
    buf: BytesMut,
    limits: Arc<Uploads>,
    /// Budget for fields (names, values, part heads), the worker's `max_package_size`.
    max_fields: usize,
    fields_size: usize,
    /// Most body bytes read in all.
    max_body: u64,
    consumed: u64,
    files_size: u64,
    part: Part,
    fields: Vec<(String, String)>,
    files: Vec<UploadedFile>,
}

/// What a finished body held.
pub(crate) struct Form {
    pub(crate) fields: Vec<(String, String)>,
    pub(crate) files: Vec<UploadedFile>,
}

impl Multipart {
    /// A parser for parts delimited by `boundary`.
    pub(crate) fn new(boundary: &str, max_fields: usize, limits: Arc<Uploads>) -> Self {
        let mut delim = b"\r\n--".to_vec();
        delim.extend_from_slice(boundary.as_bytes());
        let max_body = (max_fields as u64).saturating_add(limits.max_total_size);
        let mut buf = BytesMut::new();
        // The first delimiter may open the body: read it as if a line ended before it.
        buf.extend_from_slice(b"\r\n");
        Multipart {
            delim,
            state: State::Preamble,
            buf,
            limits,
            max_fields,
            fields_size: 0,
            max_body,
            consumed: 0,
            files_size: 0,
            part: Part::Skip,
            fields: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Most body bytes this parser accepts (fields and files together).
    pub(crate) fn max_body(&self) -> u64 {
        self.max_body
    }

    /// Parse the next bytes of the body.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<(), ProtocolError> {
        self.consumed = self.consumed.saturating_add(data.len() as u64);
        if self.consumed > self.max_body {
            return Err(too_large(self.consumed, self.max_body));
        }
        if matches!(self.state, State::Epilogue) {
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        while self.step()? {}
        Ok(())
    }

    /// The body ended: what it held, or why it was incomplete.
    pub(crate) fn finish(self) -> Result<Form, ProtocolError> {
        if !matches!(self.state, State::Epilogue) {
            return Err(ProtocolError::invalid(
                "multipart body ended before its closing delimiter",
            ));
        }
        Ok(Form {
            fields: self.fields,
            files: self.files,
        })
    }

    /// One step; `Ok(false)` when more input is needed.
    fn step(&mut self) -> Result<bool, ProtocolError> {
        match self.state {
            State::Preamble => match memchr::memmem::find(&self.buf, &self.delim) {
                Some(i) => {
                    self.buf.advance(i + self.delim.len());
                    self.state = State::AfterDelimiter;
                    Ok(true)
                }
                None => {
                    let keep = self.delim.len() - 1;
                    let drop = self.buf.len().saturating_sub(keep);
                    self.buf.advance(drop);
                    Ok(false)
                }
            },
            State::AfterDelimiter => {
                if self.buf.starts_with(b"--") {
                    self.state = State::Epilogue;
                    self.buf = BytesMut::new();
                    return Ok(false);
                }
                let pad = self
                    .buf
                    .iter()
                    .take_while(|b| **b == b' ' || **b == b'\t')
                    .count();
                if pad > MAX_PADDING {
                    return Err(ProtocolError::invalid("bad multipart delimiter line"));
                }
                if self.buf.len() < pad + 2 {
                    return Ok(false);
                }
                if &self.buf[pad..pad + 2] != b"\r\n" {
                    return Err(ProtocolError::invalid("bad multipart delimiter line"));
                }
                self.buf.advance(pad + 2);
                self.state = State::Headers;
                Ok(true)
            }
            State::Headers => {
                let Some(end) = memchr::memmem::find(&self.buf, b"\r\n\r\n") else {
                    if self.buf.len() > MAX_PART_HEAD {
                        return Err(ProtocolError::invalid("multipart part head too large"));
                    }
                    return Ok(false);
                };
                if end + 4 > MAX_PART_HEAD {
                    return Err(ProtocolError::invalid("multipart part head too large"));
                }
                let head = self.buf.split_to(end + 4);
                self.spend_fields(head.len() + PART_OVERHEAD)?;
                self.part = self.open_part(&head)?;
                self.state = State::Body;
                Ok(true)
            }
            State::Body => match memchr::memmem::find(&self.buf, &self.delim) {
                Some(i) => {
                    let content = self.buf.split_to(i);
                    self.write(&content)?;
                    self.buf.advance(self.delim.len());
                    self.close_part()?;
                    self.state = State::AfterDelimiter;
                    Ok(true)
                }
                None => {
                    // Keep what could be the start of a delimiter split across reads.
                    let keep = self.delim.len() - 1;
                    let n = self.buf.len().saturating_sub(keep);
                    if n > 0 {
                        let content = self.buf.split_to(n);
                        self.write(&content)?;
                    }
                    Ok(false)
                }
            },
            State::Epilogue => Ok(false),
        }
    }

    fn spend_fields(&mut self, n: usize) -> Result<(), ProtocolError> {
        self.fields_size = self.fields_size.saturating_add(n);
        if self.fields_size > self.max_fields {
            return Err(ProtocolError::TooLarge {
                size: self.fields_size,
                limit: self.max_fields,
            });
        }
        Ok(())
    }

    /// Read a part's header block (up to and with its blank line) and start the part.
    fn open_part(&mut self, head: &[u8]) -> Result<Part, ProtocolError> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let parsed = httparse::parse_headers(head, &mut headers)
            .map_err(|e| ProtocolError::invalid(format!("bad multipart part head: {e}")))?;
        let httparse::Status::Complete((_, headers)) = parsed else {
            return Err(ProtocolError::invalid("bad multipart part head"));
        };
        let value = |name: &str| {
            headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
        };
        let disposition = value("content-disposition")
            .ok_or_else(|| ProtocolError::invalid("multipart part without Content-Disposition"))?;
        let (kind, params) = disposition_params(&disposition)?;
        if !kind.eq_ignore_ascii_case("form-data") {
            return Err(ProtocolError::invalid(
                "multipart part is not Content-Disposition: form-data",
            ));
        }
        let param = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let Some(name) = param("name").filter(|n| !n.is_empty()) else {
            return Ok(Part::Skip);
        };
        let Some(file_name) = param("filename") else {
            return Ok(Part::Field {
                name,
                value: Vec::new(),
            });
        };
        if file_name.is_empty() {
            // A file input left empty.
            return Ok(Part::Skip);
        }
        if self.files.len() >= self.limits.max_files {
            return Err(too_large(
                self.files.len() as u64 + 1,
                self.limits.max_files as u64,
            ));
        }
        let file = tempfile::Builder::new()
            .prefix("werkmann-upload-")
            .tempfile_in(&self.limits.dir)
            .map_err(|e| {
                ProtocolError::Server(format!(
                    "cannot create an upload file in {}: {e}",
                    self.limits.dir.display()
                ))
            })?;
        Ok(Part::File {
            field: name,
            file_name,
            content_type: value("content-type")
                .unwrap_or_else(|| "application/octet-stream".to_string()),
            file,
            size: 0,
        })
    }

    /// Add content to the current part.
    fn write(&mut self, data: &[u8]) -> Result<(), ProtocolError> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.part {
            Part::Skip => Ok(()),
            Part::Field { value, .. } => {
                value.extend_from_slice(data);
                self.spend_fields(data.len())
            }
            Part::File { file, size, .. } => {
                *size += data.len() as u64;
                self.files_size += data.len() as u64;
                if *size > self.limits.max_file_size {
                    return Err(too_large(*size, self.limits.max_file_size));
                }
                if self.files_size > self.limits.max_total_size {
                    return Err(too_large(self.files_size, self.limits.max_total_size));
                }
                file.write_all(data)
                    .map_err(|e| ProtocolError::Server(format!("cannot write an upload: {e}")))
            }
        }
    }

    /// The current part is complete.
    fn close_part(&mut self) -> Result<(), ProtocolError> {
        match std::mem::replace(&mut self.part, Part::Skip) {
            Part::Skip => {}
            Part::Field { name, value } => self
                .fields
                .push((name, String::from_utf8_lossy(&value).into_owned())),
            Part::File {
                field,
                file_name,
                content_type,
                file,
                size,
            } => {
                let temp = file.into_temp_path();
                self.files.push(UploadedFile {
                    field,
                    file_name,
                    content_type,
                    size,
                    path: temp.to_path_buf(),
                    temp: Arc::new(Mutex::new(Some(temp))),
                });
            }
        }
        Ok(())
    }
}

fn too_large(size: u64, limit: u64) -> ProtocolError {
    ProtocolError::TooLarge {
        size: usize::try_from(size).unwrap_or(usize::MAX),
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
    }
}

/// `form-data; name="a"; filename="b.txt"` → the type and its parameters (values unquoted;
/// a backslash escapes the next character in a quoted value).
fn disposition_params(s: &str) -> Result<(String, Vec<(String, String)>), ProtocolError> {
    let bad = || ProtocolError::invalid("bad Content-Disposition in a multipart part");
    let mut rest = s;
    let kind_end = rest.find(';').unwrap_or(rest.len());
    let kind = rest[..kind_end].trim().to_string();
    rest = &rest[kind_end..];
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start();
        let Some(r) = rest.strip_prefix(';') else {
            return if rest.is_empty() {
                Ok((kind, params))
            } else {
                Err(bad())
            };
        };
        rest = r.trim_start();
        if rest.is_empty() {
            return Ok((kind, params));
        }
        let eq = rest.find('=').ok_or_else(bad)?;
        let name = rest[..eq].trim().to_string();
        if name.is_empty() || name.contains(';') {
            return Err(bad());
        }
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, e)) => v.push(e),
                        None => return Err(bad()),
                    },
                    c => v.push(c),
                }
            }
            let end = end.ok_or_else(bad)?;
            value = v;
            rest = &q[end..];
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        params.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(dir: &std::path::Path) -> Arc<Uploads> {
        Arc::new(Uploads {
            dir: dir.to_path_buf(),
            max_file_size: 100,
            max_total_size: 150,
            max_files: 2,
        })
    }

    const BODY: &[u8] = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a[]\"\r\n\r\n1\r\n\
--XyZ  \r\nContent-Disposition: form-data; name=\"f\"; filename=\"x \\\"y\\\".txt\"\r\nContent-Type: text/plain\r\n\r\nhello\n--XyZ\r\n\r\n--XyZ\r\nContent-Disposition: form-data; name=\"e\"; filename=\"\"\r\n\r\n\r\n\
--XyZ--\r\nepilogue";

    fn files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn fields_and_files_byte_by_byte() {
        let dir = tempfile::tempdir().unwrap();
        for split in [1, 3, 7, BODY.len()] {
            let mut m = Multipart::new("XyZ", 1000, limits(dir.path()));
            for piece in BODY.chunks(split) {
                m.feed(piece).unwrap();
            }
            let form = m.finish().unwrap();
            assert_eq!(form.fields, vec![("a[]".to_string(), "1".to_string())]);
            assert_eq!(form.files.len(), 1);
            let f = &form.files[0];
            assert_eq!(
                (f.field(), f.file_name(), f.content_type(), f.size()),
                ("f", "x \"y\".txt", "text/plain", 13)
            );
            assert_eq!(std::fs::read(f.path()).unwrap(), b"hello\n--XyZ\r\n");
            drop(form);
            assert_eq!(files_in(dir.path()), 0, "deleted with the request");
        }
    }

    #[test]
    fn limits_and_malformed_bodies_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let part = |name: &str, n: usize| {
            let mut p = format!(
                "--b\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\r\n"
            )
            .into_bytes();
            p.extend(std::iter::repeat_n(b'x', n));
            p.extend_from_slice(b"\r\n");
            p
        };
        let cases: Vec<(Vec<u8>, bool)> = vec![
            ([part("a", 101), b"--b--".to_vec()].concat(), true),
            (
                [part("a", 80), part("b", 80), b"--b--".to_vec()].concat(),
                true,
            ),
            (
                [part("a", 1), part("b", 1), part("c", 1), b"--b--".to_vec()].concat(),
                true,
            ),
            ([part("a", 10)].concat(), false),
            (
                b"--b\r\nX-No-Disposition: 1\r\n\r\nx\r\n--b--".to_vec(),
                false,
            ),
            (b"--bjunk\r\n".to_vec(), false),
        ];
        for (body, too_large) in cases {
            let mut m = Multipart::new("b", 1000, limits(dir.path()));
            let r = m.feed(&body).and_then(|()| m.finish().map(|_| ()));
            match r {
                Err(ProtocolError::TooLarge { .. }) => assert!(too_large),
                Err(ProtocolError::Invalid(_)) => assert!(!too_large),
                other => panic!("{other:?}"),
            }
            assert_eq!(files_in(dir.path()), 0);
        }
        // Fields count against the package limit.
        let mut m = Multipart::new("b", 200, limits(dir.path()));
        let body = b"--b\r\nContent-Disposition: form-data; name=\"v\"\r\n\r\n";
        m.feed(body).unwrap();
        assert!(matches!(
            m.feed(&[b'v'; 200]),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn boundaries() {
        assert_eq!(boundary("text/plain").unwrap(), None);
        assert_eq!(
            boundary("multipart/form-data; boundary=\"a b\"").unwrap(),
            Some("a b".into())
        );
        assert!(boundary("multipart/form-data").is_err());
        assert!(boundary("multipart/form-data; boundary=").is_err());
        assert!(boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71))).is_err());
    }
}
