//! PHP's `serialize()` format, as far as the Channel protocol needs it: find where a value ends
//! without decoding it (so a server can forward bytes untouched), decode values into
//! `serde_json::Value`, and encode `serde_json::Value` the way PHP would.
//!
//! Grammar: `N;` `b:0;` `i:-12;` `d:1.5;` `s:3:"abc";` `a:2:{KEY VALUE KEY VALUE}`
//! `O:3:"Foo":1:{KEY VALUE}` `C:3:"Foo":5:{bytes}` `E:7:"Foo:Bar";` `r:1;` `R:1;`.
//! Array keys are `i:` or `s:` values.

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

/// Deepest nesting accepted (PHP itself has no limit; this keeps the parser's stack bounded).
pub const MAX_DEPTH: usize = 128;

/// A malformed or unsupported serialized value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PHP serialize: {msg} at byte {pos}")]
pub struct PhpError {
    /// What was wrong.
    pub msg: String,
    /// Where.
    pub pos: usize,
}

fn err<T>(msg: impl Into<String>, pos: usize) -> Result<T, PhpError> {
    Err(PhpError {
        msg: msg.into(),
        pos,
    })
}

/// A cursor over serialized bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Start reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The current offset.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Whether everything was consumed.
    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), PhpError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            err(format!("expected {:?}", c as char), self.pos)
        }
    }

    /// Read up to (not including) `end`, then skip `end`.
    fn until(&mut self, end: u8) -> Result<&'a [u8], PhpError> {
        let start = self.pos;
        match self.buf[start..].iter().position(|&b| b == end) {
            Some(n) => {
                self.pos = start + n + 1;
                Ok(&self.buf[start..start + n])
            }
            None => err(format!("missing {:?}", end as char), start),
        }
    }

    fn int(&mut self, end: u8) -> Result<i64, PhpError> {
        let at = self.pos;
        let digits = self.until(end)?;
        // Fast path for the common case (lengths, list indexes): up to 18 plain digits.
        if !digits.is_empty() && digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit) {
            return Ok(digits
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0')));
        }
        let s = std::str::from_utf8(digits).map_err(|_| PhpError {
            msg: "bad integer".into(),
            pos: at,
        })?;
        s.parse::<i64>()
            .or_else(|_| err(format!("bad integer {s:?}"), at))
    }

    fn len(&mut self, end: u8) -> Result<usize, PhpError> {
        let at = self.pos;
        let n = self.int(end)?;
        if n < 0 {
            return err("negative length", at);
        }
        Ok(n as usize)
    }

    /// `LEN:"BYTES"` followed by `close` (`;` for strings, `:` for class names).
    fn quoted(&mut self, close: u8) -> Result<&'a [u8], PhpError> {
        let n = self.len(b':')?;
        self.expect(b'"')?;
        let start = self.pos;
        if self.buf.len().saturating_sub(start) < n {
            return err("string runs past the end", start);
        }
        self.pos += n;
        self.expect(b'"')?;
        self.expect(close)?;
        Ok(&self.buf[start..start + n])
    }

    /// Element count of an array or object, bounded by the bytes left (each entry needs ≥ 4).
    fn count(&mut self) -> Result<usize, PhpError> {
        let at = self.pos;
        let n = self.len(b':')?;
        if n > self.buf.len().saturating_sub(self.pos) / 4 {
            return err("element count larger than the input", at);
        }
        self.expect(b'{')?;
        Ok(n)
    }

    /// Skip one value; returns its byte range.
    pub fn skip(&mut self) -> Result<std::ops::Range<usize>, PhpError> {
        let start = self.pos;
        self.skip_depth(0)?;
        Ok(start..self.pos)
    }

    /// The type tag of the next value at nesting `depth`, and where it starts (not consumed).
    fn tag(&self, depth: usize) -> Result<(u8, usize), PhpError> {
        if depth > MAX_DEPTH {
            return err("nested too deeply", self.pos);
        }
        let at = self.pos;
        let tag = self.peek().ok_or_else(|| PhpError {
            msg: "unexpected end".into(),
            pos: at,
        })?;
        Ok((tag, at))
    }

    fn skip_depth(&mut self, depth: usize) -> Result<(), PhpError> {
        let (tag, at) = self.tag(depth)?;
        self.pos += 1;
        if tag == b'N' {
            return self.expect(b';');
        }
        self.expect(b':')?;
        match tag {
            b'b' | b'i' | b'r' | b'R' => {
                self.int(b';')?;
            }
            b'd' => {
                self.until(b';')?;
            }
            b's' | b'E' => {
                self.quoted(b';')?;
            }
            b'a' | b'O' => {
                if tag == b'O' {
                    self.quoted(b':')?; // the class name
                }
                let n = self.count()?;
                for _ in 0..n {
                    self.skip_key()?;
                    self.skip_depth(depth + 1)?;
                }
                self.expect(b'}')?;
            }
            b'C' => {
                self.quoted(b':')?;
                let n = self.len(b':')?;
                self.expect(b'{')?;
                if self.buf.len().saturating_sub(self.pos) < n {
                    return err("custom object runs past the end", self.pos);
                }
                self.pos += n;
                self.expect(b'}')?;
            }
            other => return err(format!("unknown type {:?}", other as char), at),
        }
        Ok(())
    }

    fn skip_key(&mut self) -> Result<(), PhpError> {
        match self.peek() {
            Some(b'i') | Some(b's') => self.skip_depth(0),
            _ => err("array key must be an integer or a string", self.pos),
        }
    }

    /// Read an array key without decoding it: `Some(bytes)` for a string key (`s:N:"...";`),
    /// `None` for an integer key (`i:N;`). Same errors as [`Reader::key`].
    pub fn key_raw(&mut self) -> Result<Option<&'a [u8]>, PhpError> {
        let at = self.pos;
        match self.peek() {
            Some(b'i') => {
                self.pos += 1;
                self.expect(b':')?;
                self.int(b';')?;
                Ok(None)
            }
            Some(b's') => {
                self.pos += 1;
                self.expect(b':')?;
                Ok(Some(self.quoted(b';')?))
            }
            _ => err("expected an integer or string key", at),
        }
    }

    /// Read an array key (or a channel name): `i:N;` or `s:N:"...";`, normalised as PHP
    /// normalises array keys.
    pub fn key(&mut self) -> Result<Key, PhpError> {
        let at = self.pos;
        match self.peek() {
            Some(b'i') => {
                self.pos += 1;
                self.expect(b':')?;
                Ok(Key::Int(self.int(b';')?))
            }
            Some(b's') => {
                self.pos += 1;
                self.expect(b':')?;
                let bytes = self.quoted(b';')?;
                Ok(Key::from_str_normalized(&String::from_utf8_lossy(bytes)))
            }
            _ => err("expected an integer or string key", at),
        }
    }

    /// Start an array: returns its element count (the `a:N:{` is consumed).
    pub fn array_start(&mut self) -> Result<usize, PhpError> {
        if self.peek() != Some(b'a') {
            return err("expected an array", self.pos);
        }
        self.pos += 1;
        self.expect(b':')?;
        self.count()
    }

    /// End an array (`}`).
    pub fn array_end(&mut self) -> Result<(), PhpError> {
        self.expect(b'}')
    }

    /// Decode one value into JSON terms.
    pub fn value(&mut self) -> Result<Value, PhpError> {
        self.value_depth(0)
    }

    fn value_depth(&mut self, depth: usize) -> Result<Value, PhpError> {
        let (tag, at) = self.tag(depth)?;
        if tag == b'N' {
            self.pos += 1;
            self.expect(b';')?;
            return Ok(Value::Null);
        }
        self.pos += 1;
        self.expect(b':')?;
        Ok(match tag {
            b'b' => Value::Bool(self.int(b';')? != 0),
            b'i' => Value::Number(self.int(b';')?.into()),
            b'd' => {
                let raw = self.until(b';')?;
                let s = std::str::from_utf8(raw).unwrap_or("");
                match s.parse::<f64>() {
                    Ok(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
                    Err(_) if matches!(s, "INF" | "-INF" | "NAN") => Value::Null,
                    Err(_) => return err(format!("bad float {s:?}"), at),
                }
            }
            b's' => Value::String(String::from_utf8_lossy(self.quoted(b';')?).into_owned()),
            b'E' => Value::String(String::from_utf8_lossy(self.quoted(b';')?).into_owned()),
            b'a' => {
                let n = self.count()?;
                let v = self.entries(n, depth, None)?;
                self.expect(b'}')?;
                v
            }
            b'O' => {
                let class = String::from_utf8_lossy(self.quoted(b':')?).into_owned();
                let n = self.count()?;
                let v = self.entries(n, depth, Some(class))?;
                self.expect(b'}')?;
                v
            }
            b'C' => return err("custom-serialized objects (C:) cannot be decoded", at),
            b'r' | b'R' => return err("references (r:/R:) cannot be decoded", at),
            other => return err(format!("unknown type {:?}", other as char), at),
        })
    }

    fn entries(
        &mut self,
        n: usize,
        depth: usize,
        class: Option<String>,
    ) -> Result<Value, PhpError> {
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.key()?;
            let v = self.value_depth(depth + 1)?;
            pairs.push((k, v));
        }
        let is_list = class.is_none()
            && pairs
                .iter()
                .enumerate()
                .all(|(i, (k, _))| *k == Key::Int(i as i64));
        if is_list {
            return Ok(Value::Array(pairs.into_iter().map(|(_, v)| v).collect()));
        }
        let mut map = Map::new();
        if let Some(c) = class {
            map.insert("__class".into(), Value::String(c));
        }
        let object = map.contains_key("__class");
        for (k, v) in pairs {
            let name = k.to_string();
            // An object's private and protected property names carry NUL-delimited prefixes;
            // an array's keys are kept as they are.
            let name = if object {
                name.rsplit('\0').next().unwrap_or("").to_string()
            } else {
                name
            };
            map.insert(name, v);
        }
        Ok(Value::Object(map))
    }
}

/// An array key after PHP's normalisation: a canonical decimal string is the integer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// An integer key.
    Int(i64),
    /// Any other string.
    Str(String),
}

impl Key {
    /// PHP's rule: `"1"` is `1`, `"-5"` is `-5`; `"01"`, `"-0"`, `" 1"`, `"1.0"` stay strings.
    pub fn from_str_normalized(s: &str) -> Key {
        if is_canonical_int(s) {
            if let Ok(i) = s.parse::<i64>() {
                return Key::Int(i);
            }
        }
        Key::Str(s.to_string())
    }

    /// Serialize as a key.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            // Without `core::fmt`: ids and counts go in every acknowledgement.
            Key::Int(i) => {
                out.extend_from_slice(b"i:");
                if *i < 0 {
                    out.push(b'-');
                }
                crate::protocol::put_decimal(out, i.unsigned_abs());
                out.push(b';');
            }
            Key::Str(s) => write_str(out, s.as_bytes()),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Str(s) => f.write_str(s),
        }
    }
}

/// Whether a string key's bytes normalise to an integer key (`"12"` does, `"012"` does not):
/// [`Reader::key`] would return `Key::Int` for them.
pub fn is_int_key(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|s| is_canonical_int(s) && s.parse::<i64>().is_ok())
}

fn is_canonical_int(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" && !s.starts_with('-') || !digits.starts_with('0'))
}

struct Sink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Sink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Append `n` in decimal (without `core::fmt`: this runs for every frame the server sends).
fn write_len(out: &mut Vec<u8>, n: usize) {
    crate::protocol::put_decimal(out, n as u64);
}

/// Serialize a byte string: `s:LEN:"BYTES";`.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(b"s:");
    write_len(out, s.len());
    out.extend_from_slice(b":\"");
    out.extend_from_slice(s);
    out.extend_from_slice(b"\";");
}

/// Serialize an array header `a:N:{`; the caller writes the entries and `}`.
pub fn write_array_start(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(b"a:");
    write_len(out, n);
    out.extend_from_slice(b":{");
}

/// Serialize a JSON value the way PHP's `serialize()` would serialize its PHP equivalent.
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"N;"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"b:1;" } else { b"b:0;" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(Sink(out), "i:{i};");
            } else if let Some(f) = n.as_f64() {
                write_float(out, f);
            }
        }
        Value::String(s) => write_str(out, s.as_bytes()),
        Value::Array(items) => {
            write_array_start(out, items.len());
            for (i, item) in items.iter().enumerate() {
                let _ = write!(Sink(out), "i:{i};");
                write_value(out, item);
            }
            out.push(b'}');
        }
        Value::Object(map) => {
            write_array_start(out, map.len());
            for (k, item) in map {
                Key::from_str_normalized(k).write(out);
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

fn write_float(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        out.extend_from_slice(b"d:NAN;");
    } else if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 { b"d:INF;" } else { b"d:-INF;" });
    } else {
        let _ = write!(Sink(out), "d:{f};");
    }
}

/// Serialize a value to a new buffer.
pub fn to_vec(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(&mut out, v);
    out
}

/// Decode a complete buffer holding one value.
pub fn from_slice(buf: &[u8]) -> Result<Value, PhpError> {
    let mut r = Reader::new(buf);
    let v = r.value()?;
    if !r.at_end() {
        return err("trailing bytes", r.pos());
    }
    Ok(v)
}

/// One field of serialized data, `data[name]`, found without decoding the rest: a push event's
/// `content` read from `a:2:{s:7:"content";s:…;s:16:"to_connection_id";i:…;}` is a slice of
/// the event's bytes. Reads what decoding the whole value with [`from_slice`] and indexing it
/// would: a missing field (or data that is not an array) reads as `null`, a repeated key's
/// last value wins, and anything but a flat array with string keys is decoded whole.
///
/// ```
/// use werkmann::channel::php_serde;
///
/// let event = br#"a:2:{s:7:"content";s:5:"hello";s:16:"to_connection_id";i:7;}"#;
/// assert_eq!(php_serde::field(event, "content")?.text().as_deref(), Some("hello"));
/// assert_eq!(php_serde::field(event, "to_connection_id")?.to_u64(), Some(7));
/// assert_eq!(php_serde::field(event, "missing")?.text(), None);
/// # Ok::<(), php_serde::PhpError>(())
/// ```
pub fn field<'a>(data: &'a [u8], name: &str) -> Result<Field<'a>, PhpError> {
    if let Some(raw) = scan_field(data, name.as_bytes()) {
        return Ok(Field::Raw(raw.unwrap_or(b"N;")));
    }
    let mut value = from_slice(data)?;
    Ok(Field::Decoded(
        value.get_mut(name).map(Value::take).unwrap_or(Value::Null),
    ))
}

/// The fast path of [`field`]: `a:N:{s:…;VALUE…}` with string keys only and nothing after it;
/// `Some(None)` when the key is not there, `None` for any other shape.
fn scan_field<'a>(data: &'a [u8], name: &[u8]) -> Option<Option<&'a [u8]>> {
    let mut r = Reader::new(data);
    let n = r.array_start().ok()?;
    let mut found = None;
    for _ in 0..n {
        // An integer-like string key is an integer key to PHP: never equal to a name asked for
        // by a caller who wants a string key, and taken as any other key here.
        let key = r.key_raw().ok()??;
        let range = r.skip().ok()?;
        if key == name {
            found = Some(&data[range]);
        }
    }
    r.array_end().ok()?;
    r.at_end().then_some(found)
}

/// A field read by [`field`]: its serialized bytes, or its value when the data had to be
/// decoded whole.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    /// The field's value as serialized (`s:5:"hello";`, `i:7;`, …).
    Raw(&'a [u8]),
    /// The field's value, decoded.
    Decoded(Value),
}

impl<'a> Field<'a> {
    /// The bytes of a string field, without decoding (`None` for other types or decoded data).
    pub fn raw_str(&self) -> Option<&'a [u8]> {
        match self {
            Field::Raw(raw) if raw.first() == Some(&b's') => Reader::new(raw).key_raw().ok()?,
            _ => None,
        }
    }

    /// The field as a JSON value (`null` when it cannot be decoded).
    pub fn value(&self) -> Value {
        match self {
            Field::Raw(raw) => from_slice(raw).unwrap_or(Value::Null),
            Field::Decoded(v) => v.clone(),
        }
    }

    /// The field as text: a string as it is (invalid UTF-8 replaced), `None` for `null`, any
    /// other value as JSON.
    pub fn text(&self) -> Option<String> {
        if let Some(s) = self.raw_str() {
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        match self.value() {
            Value::String(s) => Some(s),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// The field as an unsigned integer: an integer, or a string of one.
    pub fn to_u64(&self) -> Option<u64> {
        if let Some(s) = self.raw_str() {
            return std::str::from_utf8(s).ok()?.parse().ok();
        }
        let v = self.value();
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integer_keys_are_written_in_decimal() {
        for (k, want) in [
            (0, "i:0;"),
            (-5, "i:-5;"),
            (i64::MAX, "i:9223372036854775807;"),
            (i64::MIN, "i:-9223372036854775808;"),
        ] {
            let mut out = Vec::new();
            Key::Int(k).write(&mut out);
            assert_eq!(out, want.as_bytes());
        }
    }

    #[test]
    fn golden_scalars_and_arrays() {
        assert_eq!(to_vec(&json!(null)), b"N;");
        assert_eq!(to_vec(&json!(true)), b"b:1;");
        assert_eq!(to_vec(&json!(-7)), b"i:-7;");
        assert_eq!(to_vec(&json!(1.5)), b"d:1.5;");
        assert_eq!(to_vec(&json!("äb")), "s:3:\"äb\";".as_bytes());
        assert_eq!(to_vec(&json!(["x", 2])), b"a:2:{i:0;s:1:\"x\";i:1;i:2;}");
        assert_eq!(
            to_vec(&json!({"content": "hi", "7": 1})),
            b"a:2:{i:7;i:1;s:7:\"content\";s:2:\"hi\";}"
        );
    }

    #[test]
    fn round_trips() {
        for v in [
            json!(null),
            json!({"a": [1, 2.25, "x", {"b": null}], "c": false, "d": -9}),
            json!([]),
            json!("with \"quotes\"; and {braces}"),
        ] {
            assert_eq!(from_slice(&to_vec(&v)).unwrap(), v);
        }
    }

    #[test]
    fn keys_follow_php_normalisation() {
        assert_eq!(Key::from_str_normalized("1"), Key::Int(1));
        assert_eq!(Key::from_str_normalized("-5"), Key::Int(-5));
        assert_eq!(Key::from_str_normalized("0"), Key::Int(0));
        for s in ["01", "-0", " 1", "1.0", "", "abc", "99999999999999999999"] {
            assert_eq!(Key::from_str_normalized(s), Key::Str(s.into()), "{s:?}");
        }
    }

    #[test]
    fn integers_parse_as_rust_parses_them() {
        for s in [
            "0",
            "007",
            "123456789012345678",
            "1234567890123456789",
            "9223372036854775807",
            "9223372036854775808",
            "-5",
            "+5",
            "-",
            "",
            "1a",
        ] {
            let buf = format!("i:{s};");
            let mut r = Reader::new(buf.as_bytes());
            r.pos = 2;
            assert_eq!(r.int(b';').ok(), s.parse::<i64>().ok(), "{s:?}");
        }
    }

    #[test]
    fn lengths_and_keys_write_as_before() {
        for n in [0usize, 7, 10, 99, 100, 4096, usize::MAX] {
            let mut out = Vec::new();
            write_array_start(&mut out, n);
            assert_eq!(out, format!("a:{n}:{{").into_bytes());
        }
        let s = vec![b'x'; 1234];
        let mut out = Vec::new();
        write_str(&mut out, &s);
        assert_eq!(&out[..8], b"s:1234:\"");
        let mut r = Reader::new(br#"s:4:"type";i:12;s:2:"12";"#);
        assert_eq!(r.key_raw().unwrap(), Some(&b"type"[..]));
        assert_eq!(r.key_raw().unwrap(), None);
        assert!(is_int_key(r.key_raw().unwrap().unwrap()));
        assert!(!is_int_key(b"012") && !is_int_key(b"type") && is_int_key(b"-3"));
    }

    #[test]
    fn skip_finds_the_end_of_anything() {
        let objs: &[&[u8]] = &[
            b"O:8:\"stdClass\":1:{s:1:\"a\";i:1;}",
            b"C:11:\"ArrayObject\":21:{x:i:0;a:0:{};m:a:0:{}}",
            b"E:7:\"Foo:Bar\";",
            b"a:2:{i:0;O:1:\"X\":0:{}i:1;r:2;}",
            b"d:INF;",
        ];
        for o in objs {
            let mut buf = o.to_vec();
            buf.extend_from_slice(b"TAIL");
            let mut r = Reader::new(&buf);
            assert_eq!(
                r.skip().unwrap(),
                0..o.len(),
                "{}",
                String::from_utf8_lossy(o)
            );
        }
    }

    #[test]
    fn objects_decode_with_their_class() {
        let v = from_slice(b"O:3:\"Foo\":2:{s:1:\"a\";i:1;s:6:\"\0Foo\0b\";b:1;}").unwrap();
        assert_eq!(v, json!({"__class": "Foo", "a": 1, "b": true}));
        assert!(from_slice(b"a:1:{i:0;r:1;}").is_err());
    }

    /// Found by the fuzzer: invalid UTF-8 keys, a NUL in an array key, a repeated key.
    #[test]
    fn fuzz_regression_lossy_array_keys() {
        let input = b"a:2:{s:4:\"\x8c\x84pe\";s:5:\"evenE\";s:7:\"\x00Z\"\xef\xbf\xbd\xef\";a:2:{i:0;b:1;i:0;N;}}";
        let v = from_slice(input).unwrap();
        assert!(
            v.as_object().unwrap().contains_key("\0Z\"\u{fffd}\u{fffd}"),
            "{v}"
        );
        let once = to_vec(&v);
        assert_eq!(to_vec(&from_slice(&once).unwrap()), once);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"s:5:\"abc\";",
            b"a:99999999:{",
            b"a:1:{i:0;}",
            b"i:abc;",
            b"s:-1:\"\";",
            b"x:1;",
            b"a:1:{d:1;i:1;}",
            b"s:3:\"abc\"",
        ] {
            assert!(from_slice(bad).is_err(), "{}", String::from_utf8_lossy(bad));
            assert!(
                Reader::new(bad).skip().is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "a:1:{i:0;".repeat(1000);
        assert!(from_slice(deep.as_bytes()).is_err());
    }

    /// `data[name]` as decoding the whole value gives it, read the way `field` reads it.
    fn by_value(data: &[u8], name: &str) -> (Option<String>, Option<u64>) {
        let Ok(v) = from_slice(data) else {
            return (None, None);
        };
        let f = Field::Decoded(v[name].clone());
        (f.text(), f.to_u64())
    }

    #[test]
    fn fields_read_as_decoded() {
        let cases: Vec<&[u8]> = vec![
            br#"a:1:{s:7:"content";s:2:"hi";}"#,
            br#"a:2:{s:7:"content";s:2:"hi";s:16:"to_connection_id";i:42;}"#,
            br#"a:2:{s:16:"to_connection_id";s:2:"17";s:7:"content";i:5;}"#,
            br#"a:2:{s:7:"content";s:1:"a";s:7:"content";s:1:"b";}"#,
            br#"a:1:{s:7:"content";a:1:{i:0;b:1;}}"#,
            br#"a:1:{s:7:"content";N;}"#,
            br#"a:1:{i:0;s:7:"content";}"#,
            br#"a:1:{s:16:"to_connection_id";i:-3;}"#,
            br#"a:1:{s:16:"to_connection_id";d:1.5;}"#,
            br#"O:3:"Foo":1:{s:7:"content";s:1:"o";}"#,
            b"a:1:{s:7:\"content\";s:2:\"\xff\xfe\";}",
            b"s:7:\"content\";",
            b"i:3;",
        ];
        for data in cases {
            for name in ["content", "to_connection_id"] {
                let fast = field(data, name).map(|f| (f.text(), f.to_u64()));
                assert_eq!(
                    fast.unwrap_or((None, None)),
                    by_value(data, name),
                    "{name} of {}",
                    String::from_utf8_lossy(data)
                );
            }
        }
        let event = br#"a:1:{s:7:"content";s:3:"abc";}"#;
        assert_eq!(
            field(event, "content").unwrap(),
            Field::Raw(br#"s:3:"abc";"#)
        );
        assert!(field(b"a:1:{", "content").is_err());
    }
}
