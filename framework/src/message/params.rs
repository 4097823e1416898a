//! Query and form fields as PHP reads them into `$_GET` / `$_POST`: `a[]=1&a[]=2` is a list,
//! `a[x]=1` a map, `a[x][]=1` nests, and a repeated plain key keeps its last value.

/// Deepest `a[b][c]…` nesting read (PHP's `max_input_vars`-era default `max_input_nesting_level`);
/// deeper keys are dropped, as PHP drops them.
const MAX_DEPTH: usize = 64;

/// A query or form value the way PHP holds it: a string, or an ordered array whose keys are
/// `"0"`, `"1"`, … for `a[]=` entries and the given names for `a[name]=` ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// A plain value (`a=1`).
    Value(String),
    /// An array (`a[]=1`, `a[k]=1`), keys in the order first seen.
    Array(Vec<(String, Param)>),
}

impl Param {
    /// The string, if this is a plain value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Param::Value(s) => Some(s),
            Param::Array(_) => None,
        }
    }

    /// The member `key` of an array (`"0"` for the first `a[]=`).
    pub fn get(&self, key: &str) -> Option<&Param> {
        match self {
            Param::Array(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Param::Value(_) => None,
        }
    }

    /// The plain values of an array in order (`a[]=1&a[]=2` → `["1", "2"]`); a plain value is
    /// a list of one. Nested arrays are skipped.
    pub fn values(&self) -> Vec<&str> {
        match self {
            Param::Value(s) => vec![s.as_str()],
            Param::Array(items) => items.iter().filter_map(|(_, v)| v.as_str()).collect(),
        }
    }

    /// The members of an array, in order (empty for a plain value).
    pub fn entries(&self) -> &[(String, Param)] {
        match self {
            Param::Array(items) => items,
            Param::Value(_) => &[],
        }
    }

    /// Set `path` (the bracketed indexes after the top-level name) to `value` in an array,
    /// turning this into one if it is a plain value (as PHP does).
    fn set(&mut self, path: &[Option<&str>], value: String) {
        let Some((first, rest)) = path.split_first() else {
            *self = Param::Value(value);
            return;
        };
        if !matches!(self, Param::Array(_)) {
            *self = Param::Array(Vec::new());
        }
        let Param::Array(items) = self else {
            return;
        };
        let key = match first {
            Some(k) => (*k).to_string(),
            None => next_index(items).to_string(),
        };
        let slot = match items.iter().position(|(k, _)| *k == key) {
            Some(i) => &mut items[i].1,
            None => {
                items.push((key, Param::Array(Vec::new())));
                &mut items.last_mut().expect("just pushed").1
            }
        };
        slot.set(rest, value);
    }
}

/// JSON as PHP's `json_encode` writes an array: a list when its keys are `0, 1, …` in order,
/// an object otherwise; a plain value is a string.
impl serde::Serialize for Param {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Param::Value(v) => s.serialize_str(v),
            Param::Array(items)
                if items
                    .iter()
                    .enumerate()
                    .all(|(i, (k, _))| *k == i.to_string()) =>
            {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for (_, v) in items {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Param::Array(items) => {
                let mut map = s.serialize_map(Some(items.len()))?;
                for (k, v) in items {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// PHP's next free integer key of an array: one more than the largest integer key, or 0.
fn next_index(items: &[(String, Param)]) -> u64 {
    items
        .iter()
        .filter_map(|(k, _)| k.parse::<u64>().ok().filter(|_| !k.starts_with('+')))
        .map(|n| n + 1)
        .max()
        .unwrap_or(0)
}

/// Split a PHP variable name into its base and bracketed indexes (`None` for `[]`), the base's
/// `.` and blanks turned to `_` as PHP does. A `[` never closed ends the indexes and, if it
/// is the first one, becomes `_` in the base.
fn split_name(raw: &str) -> Option<(String, Vec<Option<&str>>)> {
    let raw = raw.trim_start_matches(' ');
    let (base_raw, mut rest) = match raw.find('[') {
        Some(i) if raw[i..].contains(']') => (&raw[..i], &raw[i..]),
        _ => (raw, ""),
    };
    if base_raw.is_empty() {
        return None;
    }
    let base: String = base_raw
        .chars()
        .map(|c| {
            if c == '.' || c == ' ' || c == '[' {
                '_'
            } else {
                c
            }
        })
        .collect();
    let mut path = Vec::new();
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(close) = inner.find(']') else { break };
        let index = &inner[..close];
        path.push(if index.is_empty() { None } else { Some(index) });
        if path.len() > MAX_DEPTH {
            return None;
        }
        rest = &inner[close + 1..];
    }
    Some((base, path))
}

/// Fold decoded `(name, value)` pairs into PHP's variables, in order.
pub(crate) fn collect<I, K, V>(pairs: I) -> Vec<(String, Param)>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    let mut top = Param::Array(Vec::new());
    for (name, value) in pairs {
        let Some((base, path)) = split_name(name.as_ref()) else {
            continue;
        };
        let mut full = Vec::with_capacity(path.len() + 1);
        full.push(Some(base.as_str()));
        full.extend(path);
        top.set(&full, value.into());
    }
    match top {
        Param::Array(items) => items,
        Param::Value(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Vec<(String, Param)> {
        collect(crate::message::http::parse_urlencoded(q))
    }

    fn v(s: &str) -> Param {
        Param::Value(s.into())
    }

    #[test]
    fn php_arrays() {
        let p = parse("a[]=1&a[]=2&b=x&b=y&c[k]=v&c[]=w&d[x][]=1&d[x][]=2&e.f=1&g[=2&h[a=3");
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("a").unwrap().values(), ["1", "2"]);
        assert_eq!(get("b"), Some(v("y")));
        let c = get("c").unwrap();
        assert_eq!(c.get("k"), Some(&v("v")));
        assert_eq!(c.get("0"), Some(&v("w")));
        assert_eq!(get("d").unwrap().get("x").unwrap().values(), ["1", "2"]);
        assert_eq!(get("e_f"), Some(v("1")));
        assert_eq!(get("g_"), Some(v("2")));
        assert_eq!(get("h_a"), Some(v("3")));
        let json = serde_json::to_string(&Param::Array(p)).unwrap();
        assert!(
            json.starts_with(r#"{"a":["1","2"],"b":"y","c":{"k":"v","0":"w"},"#),
            "{json}"
        );
    }

    #[test]
    fn later_plain_value_replaces_array_and_back() {
        let p = parse("a[]=1&a=2");
        assert_eq!(p, vec![("a".into(), v("2"))]);
        let p = parse("a=2&a[]=1&a[5]=x&a[]=y");
        let a = &p[0].1;
        assert_eq!(a.get("0"), Some(&v("1")));
        assert_eq!(a.get("6"), Some(&v("y")));
        assert!(parse("[x]=1&=2").is_empty());
        let deep = format!("a{}=1", "[x]".repeat(100));
        assert!(parse(&deep).is_empty());
    }
}
